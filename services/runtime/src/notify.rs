//! Messages to people outside the firm's systems (one-time codes, alerts)
//! through one interface. `confidant dev` writes them to a file in the data
//! directory, where a developer reads the code.

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;

/// A message that could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("notification not sent: {0}")]
pub struct SendError(pub String);

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `email` or `phone`.
    pub channel: String,
    /// Where to.
    pub address: String,
    /// Subject line (e-mail).
    pub subject: String,
    /// Text.
    pub body: String,
}

/// Sends messages.
#[async_trait]
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// Sends one message.
    async fn send(&self, message: &Message) -> Result<(), SendError>;
}

/// Appends each message as a JSON line to a file (dev and tests).
#[derive(Debug, Clone)]
pub struct FileNotifier {
    path: PathBuf,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl FileNotifier {
    /// Messages go to `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            lock: std::sync::Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

#[async_trait]
impl Notifier for FileNotifier {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let _guard = self.lock.lock().await;
        let line = serde_json::json!({
            "time": chrono::Utc::now().to_rfc3339(),
            "channel": message.channel,
            "address": message.address,
            "subject": message.subject,
            "body": message.body,
        });
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)?;
            writeln!(file, "{line}")?;
            file.sync_data()
        })
        .await
        .map_err(|e| SendError(e.to_string()))?
        .map_err(|e| SendError(e.to_string()))
    }
}

/// Posts each message as JSON to a webhook (a messaging gateway that sends
/// the e-mail or text). HTTPS with the system's roots; plain HTTP only to
/// loopback addresses.
#[derive(Clone)]
pub struct WebhookNotifier {
    url: http::Uri,
    bearer: Option<zeroize::Zeroizing<String>>,
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Whether a webhook URL is acceptable: https, or http to a loopback host.
pub fn webhook_url_allowed(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(_)) => true,
        (Some("http"), Some(host)) => {
            host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

impl WebhookNotifier {
    /// A notifier posting to `url`, with an optional bearer token.
    pub fn new(url: &str, bearer: Option<String>) -> Result<Self, SendError> {
        if !webhook_url_allowed(url) {
            return Err(SendError(
                "webhook url must be https (or http to loopback)".into(),
            ));
        }
        let url: http::Uri = url
            .parse()
            .map_err(|_| SendError("webhook url does not parse".into()))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| SendError(format!("system roots: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(Self {
            url,
            bearer: bearer.map(zeroize::Zeroizing::new),
            client,
        })
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let body = serde_json::json!({
            "channel": message.channel,
            "address": message.address,
            "subject": message.subject,
            "body": message.body,
        })
        .to_string();
        let mut request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.bearer {
            request = request.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.as_str()),
            );
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| SendError(e.to_string()))?;
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.client.request(request),
        )
        .await
        .map_err(|_| SendError("webhook timed out".into()))?
        .map_err(|e| SendError(format!("webhook: {e}")))?;
        if response.status().is_success() {
            Ok(())
        } else {
            // The status only: the gateway's body could echo the message.
            Err(SendError(format!(
                "webhook answered {}",
                response.status().as_u16()
            )))
        }
    }
}

/// The counter of messages sent and failed, by `sender` (the service),
/// `channel` and `outcome` (`sent`, `failed`): a gateway that refuses
/// messages otherwise shows only in the logs, while clients wait for codes
/// that never come. Names no address and nothing of a message.
pub const NOTIFICATIONS: &str = "confidant.notifications";

type Counts = std::collections::BTreeMap<(&'static str, String, &'static str), u64>;

fn counts() -> &'static std::sync::Mutex<Counts> {
    static COUNTS: std::sync::OnceLock<std::sync::Mutex<Counts>> = std::sync::OnceLock::new();
    COUNTS.get_or_init(|| {
        // Registered once per process, on whatever meter provider the
        // process set up before its first notifier was made.
        opentelemetry::global::meter("confidant")
            .u64_observable_counter(NOTIFICATIONS)
            .with_description(
                "Messages to people (one-time codes, staff notices, reminders, alerts), by outcome",
            )
            .with_callback(|o| {
                let counts = counts().lock().unwrap_or_else(|p| p.into_inner());
                for ((sender, channel, outcome), n) in counts.iter() {
                    o.observe(
                        *n,
                        &[
                            opentelemetry::KeyValue::new("sender", *sender),
                            opentelemetry::KeyValue::new("channel", channel.clone()),
                            opentelemetry::KeyValue::new("outcome", *outcome),
                        ],
                    );
                }
            })
            .build();
        std::sync::Mutex::new(Counts::new())
    })
}

/// How many messages `sender` sent (`sent`) or could not send (`failed`)
/// on `channel` in this process.
pub fn counted(sender: &'static str, channel: &str, outcome: &'static str) -> u64 {
    counts()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(sender, channel.to_owned(), outcome))
        .copied()
        .unwrap_or(0)
}

/// A notifier whose messages are counted in [`NOTIFICATIONS`].
#[derive(Debug)]
pub struct Metered {
    inner: std::sync::Arc<dyn Notifier>,
    sender: &'static str,
}

impl Metered {
    /// Counts what `inner` sends for `sender`. Both outcomes of every
    /// channel `sender` uses start at zero, so that an alert on failures
    /// has a series from the start.
    pub fn new(inner: std::sync::Arc<dyn Notifier>, sender: &'static str) -> Self {
        let mut counts = counts().lock().unwrap_or_else(|p| p.into_inner());
        for outcome in ["sent", "failed"] {
            counts
                .entry((sender, "email".to_owned(), outcome))
                .or_insert(0);
        }
        Self { inner, sender }
    }
}

/// The notifier a service's settings name, counted for `sender`: the
/// webhook at `webhook` (with the bearer token in `token_file`, if any),
/// else the file `file` (development); none when neither is set.
pub fn configured(
    sender: &'static str,
    webhook: Option<&str>,
    token_file: Option<&std::path::Path>,
    file: Option<&std::path::Path>,
) -> Result<Option<std::sync::Arc<dyn Notifier>>, SendError> {
    let inner: std::sync::Arc<dyn Notifier> = match (webhook, file) {
        (Some(url), _) => {
            let token = token_file
                .map(|path| {
                    std::fs::read_to_string(path)
                        .map(|t| t.trim().to_owned())
                        .map_err(|e| SendError(format!("{}: {e}", path.display())))
                })
                .transpose()?;
            std::sync::Arc::new(WebhookNotifier::new(url, token)?)
        }
        (None, Some(file)) => std::sync::Arc::new(FileNotifier::new(file)),
        (None, None) => return Ok(None),
    };
    Ok(Some(std::sync::Arc::new(Metered::new(inner, sender))))
}

#[async_trait]
impl Notifier for Metered {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let result = self.inner.send(message).await;
        let outcome = if result.is_ok() { "sent" } else { "failed" };
        *counts()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((self.sender, message.channel.clone(), outcome))
            .or_insert(0) += 1;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Refusing;

    #[async_trait]
    impl Notifier for Refusing {
        async fn send(&self, _: &Message) -> Result<(), SendError> {
            Err(SendError("gateway down".into()))
        }
    }

    #[tokio::test]
    async fn messages_are_counted_by_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let file = Metered::new(
            std::sync::Arc::new(FileNotifier::new(dir.path().join("m.jsonl"))),
            "test-file",
        );
        let down = Metered::new(std::sync::Arc::new(Refusing), "test-down");
        assert_eq!(counted("test-down", "email", "failed"), 0);
        let message = |channel: &str| Message {
            channel: channel.into(),
            address: "a@example.org".into(),
            subject: "s".into(),
            body: "b".into(),
        };
        file.send(&message("email")).await.unwrap();
        file.send(&message("phone")).await.unwrap();
        down.send(&message("email")).await.unwrap_err();
        assert_eq!(counted("test-file", "email", "sent"), 1);
        assert_eq!(counted("test-file", "phone", "sent"), 1);
        assert_eq!(counted("test-file", "email", "failed"), 0);
        assert_eq!(counted("test-down", "email", "failed"), 1);
        assert_eq!(counted("test-down", "email", "sent"), 0);
    }

    #[test]
    fn webhooks_must_be_https_except_on_loopback() {
        assert!(webhook_url_allowed("https://gateway.firm.example/send"));
        assert!(webhook_url_allowed("http://127.0.0.1:8080/send"));
        assert!(webhook_url_allowed("http://localhost/send"));
        assert!(!webhook_url_allowed("http://gateway.firm.example/send"));
        assert!(!webhook_url_allowed("ftp://x"));
        assert!(!webhook_url_allowed("not a url"));
    }
}
