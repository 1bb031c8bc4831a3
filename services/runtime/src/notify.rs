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
