//! Certificates that follow their files: a service picks up a renewed
//! certificate, key or CA bundle without a restart.
//!
//! cert-manager renews a certificate ahead of its expiry and Kubernetes
//! updates the mounted secret in place; a process that read its files once
//! at start would keep presenting the old certificate until it expired and
//! every peer refused it. [`LiveTls`] holds the TLS configurations built
//! from one reading of the files and replaces them, whole, when the files
//! change: each new connection (accepted or made) takes the configuration
//! current at its handshake; connections already open keep theirs.
//!
//! A reading is checked before it replaces anything: the three files must
//! parse, the key must match the certificate, the certificate must be
//! valid now and name the same SPIFFE identity as the running one (a
//! service does not change who it is under its peers' feet). A reading that
//! fails is refused and logged, and the service goes on with what it has;
//! a half-written secret (certificate new, key still old) is refused the
//! same way and picked up whole at the next look.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::{Error, TlsFiles, TlsMaterial};

/// The ALPN protocols of the public (web) server configuration.
const WEB_ALPN: &[&[u8]] = &[b"http/1.1"];

/// What identifies a certificate in logs and metrics (nothing secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// Its serial number, hex.
    pub serial: String,
    /// Start of its validity, Unix seconds.
    pub not_before: i64,
    /// End of its validity, Unix seconds.
    pub not_after: i64,
    /// Its SPIFFE id, if it carries one.
    pub spiffe_id: Option<String>,
}

impl CertificateFacts {
    /// The facts of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::Pem {
            what: "certificate".to_owned(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            spiffe_id: super::spiffe_id_of(&cert),
        })
    }

    /// The facts of the first certificate of a PEM chain.
    pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        let chain = super::certs(pem, "certificate")?;
        Self::from_der(chain.first().map(|c| c.as_ref()).unwrap_or_default())
    }
}

/// The configurations built from one reading of the files.
struct Generation {
    material: TlsMaterial,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    web: Arc<rustls::ServerConfig>,
    facts: CertificateFacts,
}

impl Generation {
    fn build(material: TlsMaterial) -> Result<Self, Error> {
        Ok(Self {
            server: material.server_config()?,
            client: material.client_config()?,
            web: material.public_server_config(WEB_ALPN)?,
            facts: CertificateFacts::from_pem(&material.cert_pem)?,
            material,
        })
    }
}

/// Why a new reading of the files was not put in service.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A file is unreadable, or holds no usable certificate or key, or the
    /// key does not match the certificate.
    #[error(transparent)]
    Unusable(#[from] Error),
    /// The certificate names another identity than the service's.
    #[error("names {found}, but this service is {expected}")]
    OtherIdentity {
        /// The service's SPIFFE id.
        expected: String,
        /// The certificate's (`no SPIFFE id` when it carries none).
        found: String,
    },
    /// The certificate has expired.
    #[error("expired at {}", rfc3339(*not_after))]
    Expired {
        /// End of its validity, Unix seconds.
        not_after: i64,
    },
    /// The certificate is not valid yet.
    #[error("is not valid until {}", rfc3339(*not_before))]
    NotYetValid {
        /// Start of its validity, Unix seconds.
        not_before: i64,
    },
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
}

/// What a look at the files did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files are as they were (or there are no files to follow).
    Unchanged,
    /// The files changed and their new reading is in service.
    Replaced(CertificateFacts),
}

/// A service's TLS identity, following its files (see the module docs).
pub struct LiveTls {
    files: Option<TlsFiles>,
    current: RwLock<Arc<Generation>>,
    /// Why the last reading was refused, so that the same bad files are
    /// reported once, not at every look.
    last_refused: Mutex<Option<String>>,
    refusals: std::sync::atomic::AtomicU64,
    replacements: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls")
            .field("files", &self.files)
            .field("certificate", &self.certificate())
            .finish_non_exhaustive()
    }
}

impl LiveTls {
    /// Reads `files` and builds the configurations; [`Self::reload`] reads
    /// them again.
    pub fn open(files: TlsFiles) -> Result<Arc<Self>, Error> {
        let generation = Generation::build(files.load()?)?;
        Ok(Self::with(Some(files), generation))
    }

    /// Configurations from `material` that never change (clients that run
    /// briefly, such as the command line, and tests).
    pub fn fixed(material: &TlsMaterial) -> Result<Arc<Self>, Error> {
        Ok(Self::with(None, Generation::build(material.clone())?))
    }

    fn with(files: Option<TlsFiles>, generation: Generation) -> Arc<Self> {
        Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(generation)),
            last_refused: Mutex::new(None),
            refusals: Default::default(),
            replacements: Default::default(),
        })
    }

    fn generation(&self) -> Arc<Generation> {
        // A poisoned lock still holds a complete generation: it is only
        // ever replaced whole.
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The mutual-TLS server configuration for the next accepted connection.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.generation().server.clone()
    }

    /// The mutual-TLS client configuration for the next connection made.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.generation().client.clone()
    }

    /// The server configuration without client certificates, HTTP/1.1 (the
    /// intake web page), for the next accepted connection.
    pub fn web_config(&self) -> Arc<rustls::ServerConfig> {
        self.generation().web.clone()
    }

    /// The certificate currently in service.
    pub fn certificate(&self) -> CertificateFacts {
        self.generation().facts.clone()
    }

    /// How many readings were refused, and how many replaced the one in
    /// service, since start.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.refusals.load(Relaxed), self.replacements.load(Relaxed))
    }

    /// Reads the files again and, if they changed and pass the checks in
    /// the module docs, puts them in service.
    pub fn reload(&self) -> Result<Reloaded, Refused> {
        self.look().0
    }

    /// [`Self::reload`], and whether a refusal is news (not the same as
    /// the last look's).
    fn look(&self) -> (Result<Reloaded, Refused>, bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(files) = &self.files else {
            return (Ok(Reloaded::Unchanged), false);
        };
        let looked = files.load().map_err(Refused::from).and_then(|material| {
            let running = self.generation();
            if same(&material, &running.material) {
                return Ok(None);
            }
            let next = Generation::build(material)?;
            let now = chrono::Utc::now().timestamp();
            verdict(&next.facts, running.facts.spiffe_id.as_deref(), now)?;
            Ok(Some(next))
        });
        let mut last = self
            .last_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match looked {
            Ok(None) => {
                *last = None;
                (Ok(Reloaded::Unchanged), false)
            }
            Ok(Some(next)) => {
                *last = None;
                let facts = next.facts.clone();
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
                self.replacements.fetch_add(1, Relaxed);
                (Ok(Reloaded::Replaced(facts)), false)
            }
            Err(refused) => {
                self.refusals.fetch_add(1, Relaxed);
                let why = refused.to_string();
                let news = last.as_deref() != Some(why.as_str());
                *last = Some(why);
                (Err(refused), news)
            }
        }
    }

    /// Looks at the files every `every` (never when `None`) and whenever
    /// `now` changes (SIGHUP; one that arrives during a look is not lost),
    /// until `shutdown` turns true. Logs each replacement, and each refusal
    /// once per distinct reading.
    pub async fn follow(
        self: Arc<Self>,
        service: &'static str,
        every: Option<Duration>,
        mut now: tokio::sync::watch::Receiver<u64>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.files.is_none() {
            return;
        }
        let mut ticks = every.map(|every| {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            tokio::select! {
                () = async {
                    match ticks.as_mut() {
                        Some(ticks) => { ticks.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
                () = async {
                    if now.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let this = self.clone();
            // File reads and key parsing are blocking work.
            match tokio::task::spawn_blocking(move || this.look()).await {
                Ok((Ok(Reloaded::Replaced(facts)), _)) => tracing::info!(
                    service,
                    serial = %facts.serial,
                    not_after = facts.not_after,
                    "tls certificate replaced from its files"
                ),
                Ok((Ok(Reloaded::Unchanged), _)) | Ok((Err(_), false)) => {}
                Ok((Err(refused), true)) => tracing::warn!(
                    service,
                    error = %refused,
                    "tls files refused; still serving the previous certificate"
                ),
                Err(err) => tracing::warn!(service, error = %err, "tls reload task failed"),
            }
        }
    }
}

/// Which of a service's three TLS files is wrong, and how: the start-up
/// check (`confidant serve --check-config`) of the files a service would
/// serve with, by the rules a reload follows. `None` when they would do:
/// they parse, the key matches the certificate, the certificate names
/// `expected_id` and is valid at `now` (Unix seconds).
pub fn problem_with(
    material: &TlsMaterial,
    expected_id: &str,
    now: i64,
) -> Option<(&'static str, String)> {
    let generation = match Generation::build(material.clone()) {
        Ok(generation) => generation,
        Err(err) => return Some(err.file_problem()),
    };
    verdict(&generation.facts, Some(expected_id), now)
        .err()
        .map(|refused| ("cert_file", refused.to_string()))
}

fn same(a: &TlsMaterial, b: &TlsMaterial) -> bool {
    a.ca_pem == b.ca_pem && a.cert_pem == b.cert_pem && *a.key_pem == *b.key_pem
}

/// Whether a certificate may serve: it names `expected` (when the service
/// has an identity) and is valid at `now`.
fn verdict(facts: &CertificateFacts, expected: Option<&str>, now: i64) -> Result<(), Refused> {
    if let Some(expected) = expected
        && facts.spiffe_id.as_deref() != Some(expected)
    {
        return Err(Refused::OtherIdentity {
            expected: expected.to_owned(),
            found: facts
                .spiffe_id
                .clone()
                .unwrap_or_else(|| "no SPIFFE id".to_owned()),
        });
    }
    if now > facts.not_after {
        return Err(Refused::Expired {
            not_after: facts.not_after,
        });
    }
    if now < facts.not_before {
        return Err(Refused::NotYetValid {
            not_before: facts.not_before,
        });
    }
    Ok(())
}

/// The end of validity of the certificate each service serves, Unix
/// seconds, by `service`: alert on it before it comes (a renewal that
/// stalled, files a service refused).
pub const CERTIFICATE_EXPIRY: &str = "confidant.tls.certificate.expiry";
/// Readings of the TLS files that replaced the certificate in service or
/// were refused, by `service` and `result` (`replaced`, `refused`).
pub const RELOADS: &str = "confidant.tls.reloads";

/// Reports `tls` under `service` in the process's metrics (see
/// [`CERTIFICATE_EXPIRY`] and [`RELOADS`]) for as long as it lives.
pub fn register_metrics(service: &'static str, tls: &Arc<LiveTls>) {
    let meter = opentelemetry::global::meter("confidant");
    let attributes = [opentelemetry::KeyValue::new("service", service)];
    let expiry = Arc::downgrade(tls);
    meter
        .i64_observable_gauge(CERTIFICATE_EXPIRY)
        .with_unit("s")
        .with_description("End of validity of the certificate in service, Unix seconds")
        .with_callback(move |o| {
            if let Some(tls) = expiry.upgrade() {
                o.observe(tls.certificate().not_after, &attributes);
            }
        })
        .build();
    let reloads = Arc::downgrade(tls);
    meter
        .u64_observable_counter(RELOADS)
        .with_description("Readings of the TLS files that replaced the certificate or were refused")
        .with_callback(move |o| {
            if let Some(tls) = reloads.upgrade() {
                let (refused, replaced) = tls.counts();
                for (result, n) in [("replaced", replaced), ("refused", refused)] {
                    o.observe(
                        n,
                        &[
                            opentelemetry::KeyValue::new("service", service),
                            opentelemetry::KeyValue::new("result", result),
                        ],
                    );
                }
            }
        })
        .build();
}
