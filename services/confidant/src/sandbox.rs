//! A test sandbox: any mix of the five services in one process, on fresh
//! SQLite files or a fresh PostgreSQL database (with Redis), with a
//! throwaway CA. Feature `testing`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use confidant_runtime::ServiceName;
use confidant_runtime::config::{self, Config, Mode};
use confidant_runtime::pki::{LeafSpec, PkiDir, issue};
use confidant_runtime::storage::Backend;
use confidant_runtime::testing::kms_endpoint;
use confidant_runtime::tls::{TlsFiles, TlsMaterial};

use crate::process::{self, MigrationPolicy, Running};

/// Where a sandbox keeps its state; survives restarts of the sandbox so a
/// test can stop a service and start it again on the same data.
#[derive(Debug)]
pub struct SandboxData {
    dir: tempfile::TempDir,
    backend: Backend,
    postgres_db: Option<String>,
    kms_key_id: Option<String>,
}

/// A new key in the test KMS; returns its id.
async fn new_kms_key() -> String {
    confidant_runtime::testing::new_kms_key(&kms_endpoint(), "confidant sandbox")
        .await
        .1
}

impl SandboxData {
    /// Fresh state on `backend`: a temp dir with a CA and, for PostgreSQL, a
    /// new database.
    pub async fn new(backend: Backend) -> Self {
        Self::create(backend, None).await
    }

    /// Fresh state for services of the same deployment as `self`: new
    /// databases, the same CA and certificates.
    pub async fn sibling(&self) -> Self {
        Self::create(self.backend, Some(self)).await
    }

    async fn create(backend: Backend, same_pki_as: Option<&SandboxData>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = dir.path().join("pki");
        if let Some(other) = same_pki_as {
            std::fs::create_dir_all(&pki).expect("pki dir");
            for entry in std::fs::read_dir(other.pki().path()).expect("pki files") {
                let entry = entry.expect("pki file");
                std::fs::copy(entry.path(), pki.join(entry.file_name())).expect("copy pki");
            }
        }
        PkiDir::new(&pki)
            .ensure_dev("confidant.local")
            .expect("pki");
        confidant_audit::write_signing_key(&dir.path().join("audit-log.key"))
            .expect("audit signing key");
        confidant_runtime::keys::write_new_ed25519_key(&dir.path().join("identity-token.key"))
            .expect("identity token key");
        confidant_runtime::keys::write_new_ed25519_key(
            &dir.path().join("identity-certificates.key"),
        )
        .expect("identity certificate key");
        confidant_runtime::keys::ensure_secret_file(&dir.path().join("identity-pepper.key"))
            .expect("pepper");
        confidant_runtime::keys::write_new_ed25519_key(
            &dir.path().join("retention-certificates.key"),
        )
        .expect("retention certificate key");
        // PostgreSQL sandboxes run as in production: Redis, and the AWS KMS
        // API (the emulator) with a key of their own.
        let kms_key_id = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                std::fs::write(dir.path().join("kms-credentials"), "testing\ntesting\n")
                    .expect("kms credentials");
                Some(new_kms_key().await)
            }
        };
        let postgres_db = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                use sqlx::Connection;
                let name = confidant_runtime::testing::unique_name("sandbox");
                let mut conn =
                    sqlx::PgConnection::connect(&confidant_runtime::testing::postgres_url())
                        .await
                        .expect("postgres reachable");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut conn)
                    .await
                    .expect("create database");
                Some(name)
            }
        };
        Self {
            dir,
            backend,
            postgres_db,
            kms_key_id,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The test KMS key of a PostgreSQL sandbox (`None`: the local KMS).
    pub fn kms_key_id(&self) -> Option<&str> {
        self.kms_key_id.as_deref()
    }

    /// Makes a new KMS key the active one, as an operator rotating keys
    /// does: a new key in the emulator, named in the configuration
    /// (PostgreSQL), or a new master key at the end of the local keyring
    /// (SQLite). Services started afterwards wrap under it; returns its id.
    pub async fn rotate_kms_key(&mut self) -> String {
        match self.backend {
            Backend::Postgres => {
                let id = new_kms_key().await;
                self.kms_key_id = Some(id.clone());
                id
            }
            Backend::Sqlite => confidant_runtime::kms::LocalKms::open(&self.local_kms_keyring())
                .expect("local keyring")
                .rotate()
                .expect("new local master key"),
        }
    }

    /// The local KMS's keyring of a SQLite sandbox.
    pub fn local_kms_keyring(&self) -> std::path::PathBuf {
        self.path().join(confidant_runtime::kms::LOCAL_KEY_FILE)
    }

    /// A staff access token signed with the sandbox's identity key, as
    /// identity issues them at sign-in (valid for ten minutes).
    pub fn staff_token(&self, staff_id: &str, roles: &[&str]) -> String {
        let keys = confidant_identity::tokens::TokenKeys::load(
            &[self.token_key_file()],
            "confidant.local",
        )
        .expect("token key");
        let now = chrono::Utc::now().timestamp();
        keys.sign(&confidant_runtime::auth::Claims {
            iss: keys.issuer().to_owned(),
            aud: confidant_runtime::auth::AUDIENCE.to_owned(),
            sub: staff_id.to_owned(),
            sid: uuid::Uuid::now_v7().to_string(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            iat: now,
            exp: now + 600,
            jti: uuid::Uuid::now_v7().to_string(),
        })
        .expect("token signs")
    }

    /// The identity service's token signing key file.
    pub fn token_key_file(&self) -> std::path::PathBuf {
        self.dir.path().join("identity-token.key")
    }

    /// The database URL of `service`.
    pub fn database_url(&self, service: ServiceName) -> String {
        match &self.postgres_db {
            None => format!(
                "sqlite:{}",
                self.dir.path().join(format!("{service}.db")).display()
            ),
            Some(db) => {
                let base = confidant_runtime::testing::postgres_url();
                let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r);
                format!("{root}/{db}")
            }
        }
    }

    /// TLS material for a client `name`, issued by the sandbox CA.
    pub fn client_tls(&self, name: &str) -> TlsMaterial {
        let pki = PkiDir::new(self.dir.path().join("pki"));
        let ca = pki.load_ca().expect("ca");
        let leaf = issue(&ca, &LeafSpec::client("confidant.local", name)).expect("client cert");
        TlsMaterial {
            ca_pem: ca.cert_pem.into_bytes(),
            cert_pem: leaf.cert_pem.into_bytes(),
            key_pem: zeroize::Zeroizing::new(leaf.key_pem.as_bytes().to_vec()),
        }
    }

    /// The TLS files of the operator client certificate.
    pub fn operator_files(&self) -> TlsFiles {
        let pki = PkiDir::new(self.dir.path().join("pki"));
        TlsFiles {
            ca_file: pki.ca_cert(),
            cert_file: pki.cert("operator"),
            key_file: pki.key("operator"),
        }
    }

    /// Issues `service` a new certificate from the sandbox CA into its
    /// files, as a renewal does (running services pick it up by their
    /// `tls_reload_seconds`).
    pub fn renew_certificate(&self, service: ServiceName) {
        self.pki()
            .renew_dev("confidant.local", service)
            .expect("renewed certificate");
    }

    fn pki(&self) -> PkiDir {
        PkiDir::new(self.dir.path().join("pki"))
    }
}

impl Drop for SandboxData {
    fn drop(&mut self) {
        let Some(name) = self.postgres_db.take() else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) =
                    sqlx::PgConnection::connect(&confidant_runtime::testing::postgres_url()).await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Running services of a sandbox.
#[derive(Debug)]
pub struct Sandbox {
    running: Running,
    /// The configuration the services run with.
    pub config: Arc<Config>,
}

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    /// The services.
    pub services: Vec<ServiceName>,
    /// Fixed listen addresses (default: 127.0.0.1, any free port).
    pub listen: BTreeMap<ServiceName, SocketAddr>,
    /// Addresses of services running in another sandbox.
    pub peers: BTreeMap<ServiceName, SocketAddr>,
    /// Database connections per service (default 4; production's is 16).
    pub max_connections: Option<u32>,
    /// Where the intake web page listens (default: no page).
    pub intake_web: Option<SocketAddr>,
    /// Settings over the defaults: (section, key, value), e.g.
    /// `("vault", "destruction_window_seconds", 2.into())`,
    /// `("services.vault", "max_in_flight", 1.into())` or
    /// `("", "tls_reload_seconds", 1.into())`.
    pub settings: Vec<(&'static str, &'static str, toml::Value)>,
}

impl SandboxSpec {
    /// Runs `services` with defaults.
    pub fn of(services: &[ServiceName]) -> Self {
        Self {
            services: services.to_vec(),
            ..Self::default()
        }
    }
}

/// The configuration of a sandbox as a TOML table, as `confidant serve
/// --config` reads it: lets a benchmark run the sandbox's services as
/// separate processes.
pub fn config_table(data: &SandboxData, spec: &SandboxSpec) -> toml::Table {
    let mut base = Config::dev_defaults(data.path());
    let table = |v: &mut toml::Table, k: &str| -> toml::Table {
        match v.remove(k) {
            Some(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        }
    };
    if data.backend == Backend::Postgres {
        // PostgreSQL runs with Redis, as in production.
        let mut redis = toml::Table::new();
        redis.insert("url".into(), confidant_runtime::testing::redis_url().into());
        redis.insert(
            "key_prefix".into(),
            format!("{}:", confidant_runtime::testing::unique_name("sandbox")).into(),
        );
        base.insert("redis".into(), toml::Value::Table(redis));
        let mut kms = toml::Table::new();
        kms.insert("provider".into(), "aws".into());
        kms.insert(
            "key_id".into(),
            data.kms_key_id.clone().unwrap_or_default().into(),
        );
        kms.insert("region".into(), "eu-west-1".into());
        kms.insert("endpoint".into(), kms_endpoint().into());
        kms.insert(
            "credentials_file".into(),
            data.path()
                .join("kms-credentials")
                .display()
                .to_string()
                .into(),
        );
        base.insert("kms".into(), toml::Value::Table(kms));
    }
    base.insert("shutdown_grace_seconds".into(), 5.into());
    let mut audit = table(&mut base, "audit");
    audit.insert("checkpoint_interval_seconds".into(), 1.into());
    base.insert("audit".into(), toml::Value::Table(audit));
    let mut intake = table(&mut base, "intake");
    match spec.intake_web {
        Some(addr) => intake.insert("web_listen".into(), addr.to_string().into()),
        None => intake.remove("web_listen"),
    };
    base.insert("intake".into(), toml::Value::Table(intake));
    let mut services = table(&mut base, "services");
    for service in ServiceName::ALL {
        let mut s = table(&mut services, service.as_str());
        let listen = spec
            .listen
            .get(&service)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        s.insert("listen".into(), listen.to_string().into());
        s.insert("database_url".into(), data.database_url(service).into());
        s.insert(
            "max_connections".into(),
            i64::from(spec.max_connections.unwrap_or(4)).into(),
        );
        services.insert(service.as_str().into(), toml::Value::Table(s));
    }
    base.insert("services".into(), toml::Value::Table(services));
    let mut peers = toml::Table::new();
    for (service, addr) in &spec.peers {
        peers.insert(service.as_str().into(), format!("https://{addr}").into());
    }
    base.insert("peers".into(), toml::Value::Table(peers));
    for (section, key, value) in &spec.settings {
        set(&mut base, section, key, value.clone());
    }
    base
}

/// Sets `key` in the table at `path` (dotted, e.g. `services.vault`; empty:
/// the top level) of `base`, making the tables on the way.
fn set(base: &mut toml::Table, path: &str, key: &str, value: toml::Value) {
    let mut t = base;
    for part in path.split('.').filter(|part| !part.is_empty()) {
        let entry = t
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(next) => t = next,
            _ => return,
        }
    }
    t.insert(key.to_owned(), value);
}

fn sandbox_config(data: &SandboxData, spec: &SandboxSpec) -> Config {
    let mut config = config::load(
        config_table(data, spec),
        None,
        &std::collections::HashMap::new(),
    )
    .expect("sandbox config");
    config.mode = Mode::Dev;
    config
}

impl Sandbox {
    /// Starts `spec` on `data`.
    pub async fn start(data: &SandboxData, spec: SandboxSpec) -> Sandbox {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = Arc::new(sandbox_config(data, &spec));
        config
            .validate(&spec.services)
            .expect("valid sandbox config");
        let running = process::start(config.clone(), &spec.services, MigrationPolicy::Apply)
            .await
            .expect("sandbox starts");
        Sandbox { running, config }
    }

    /// Where `service` listens.
    pub fn addr(&self, service: ServiceName) -> SocketAddr {
        self.running.addrs[&service]
    }

    /// The `https://` URL of `service`.
    pub fn url(&self, service: ServiceName) -> String {
        format!("https://{}", self.addr(service))
    }

    /// Stops every service gracefully.
    pub async fn stop(self) {
        self.running.shutdown(Duration::from_secs(5)).await;
    }
}
