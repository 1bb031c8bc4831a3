//! Test helpers shared by every crate's tests (feature `testing`): a fresh
//! database per test on either backend, Redis and PostgreSQL addresses, keys
//! in the KMS emulator, a throwaway PKI, and an OTLP receiver ([`otlp`]).
//!
//! PostgreSQL tests get a schema of their own, named uniquely and dropped
//! afterwards, so tests run in parallel and leave nothing behind. Set
//! `CONFIDANT_TEST_POSTGRES_URL` / `CONFIDANT_TEST_REDIS_URL` to use other
//! servers than the local defaults.

pub mod otlp;

use crate::kms::{AwsKms, AwsSettings};
use crate::pki::{CertifiedKey, LeafSpec, generate_ca, issue};
use crate::storage::{Backend, Database, Migrations, PoolOptions};
use crate::tls::TlsMaterial;

/// PostgreSQL server for tests.
pub fn postgres_url() -> String {
    std::env::var("CONFIDANT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Redis server for tests.
pub fn redis_url() -> String {
    std::env::var("CONFIDANT_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The AWS KMS API tests use (moto, started by `scripts/test.sh`):
/// `CONFIDANT_TEST_KMS_ENDPOINT`, by default `http://127.0.0.1:4599`.
pub fn kms_endpoint() -> String {
    std::env::var("CONFIDANT_TEST_KMS_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:4599".to_owned())
}

/// How tests reach the KMS API at `endpoint` (the emulator's region and
/// credentials), wrapping under `key_id` (empty: for administration only).
pub fn emulated_kms(endpoint: &str, key_id: &str) -> AwsSettings {
    AwsSettings {
        key_id: key_id.to_owned(),
        region: "eu-west-1".into(),
        endpoint: Some(endpoint.to_owned()),
        static_credentials: Some(("testing".into(), "testing".into())),
    }
}

/// A new key in the KMS at `endpoint`, described as `description`: a
/// provider wrapping under it, and its id.
pub async fn new_kms_key(endpoint: &str, description: &str) -> (AwsKms, String) {
    let admin = AwsKms::connect(&emulated_kms(endpoint, "")).await;
    let key_id = admin
        .client()
        .create_key()
        .description(description)
        .send()
        .await
        .expect("the kms emulator is reachable (scripts/test.sh starts it)")
        .key_metadata()
        .expect("key metadata")
        .key_id()
        .to_owned();
    (
        AwsKms::connect(&emulated_kms(endpoint, &key_id)).await,
        key_id,
    )
}

/// A unique lowercase name, e.g. for a schema or a key prefix.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Every row of a list read in pages of `size` the way the services read
/// them: `fetch(after, limit)` runs the list's statement from the position a
/// page token names ([`crate::page::After`], a key of `shape`) for one row
/// more than the page, [`crate::page::split`] cuts the page and makes the
/// next token from `key`. Checks that each token is accepted and no page is
/// larger than `size`; returns the rows and the number of pages.
pub async fn all_pages<T, F, Fut>(
    size: i64,
    shape: &[crate::page::Part],
    fetch: F,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, usize)
where
    F: Fn(Vec<crate::portable::Value>, i64) -> Fut,
    Fut: std::future::Future<Output = Vec<T>>,
{
    let mut all = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let mut v = crate::error::Violations::new();
        let after = crate::page::After::parse(&mut v, "page_token", &token, shape);
        assert!(v.is_empty(), "a token the list gave is accepted");
        let rows = fetch(after.values(), size + 1).await;
        let (rows, next) = crate::page::split(rows, size, &key);
        pages += 1;
        assert!(
            rows.len() <= usize::try_from(size).unwrap_or(0),
            "page {pages} too large"
        );
        all.extend(rows);
        if next.is_empty() {
            return (all, pages);
        }
        assert!(pages < 1000, "pages never end");
        token = next;
    }
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// The pool.
    pub db: Database,
    /// The URL it was opened with (for a second pool or a child process).
    pub url: String,
    /// The schema (PostgreSQL) the pool uses.
    pub schema: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A fresh, migrated database on `backend`.
    pub async fn fresh(backend: Backend, migrations: Migrations) -> Self {
        let schema = unique_name("t");
        let (url, dir) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite:{}", dir.path().join("test.db").display());
                (url, Some(dir))
            }
            Backend::Postgres => (postgres_url(), None),
        };
        let db = Database::connect(&url, &schema, PoolOptions::default())
            .await
            .unwrap_or_else(|e| panic!("test database on {backend:?} ({url}): {e}"));
        db.migrate(migrations).await.expect("migrations apply");
        Self {
            db,
            url,
            schema,
            _dir: dir,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.db.backend() != Backend::Postgres {
            return;
        }
        // Drop runs outside async context: drop the schema from a thread with
        // a runtime of its own.
        let schema = self.schema.clone();
        let url = self.url.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Runs each named async test function (taking a [`TestDatabase`]) against
/// SQLite and PostgreSQL: one conformance suite for every backend.
///
/// ```text
/// confidant_runtime::backend_tests!(MIGRATIONS; stores_events, dedups_events);
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($migrations:expr; $($name:ident),+ $(,)?) => {
        const BACKEND_TEST_MIGRATIONS: $crate::storage::Migrations = $migrations;
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::testing::TestDatabase::fresh($crate::storage::Backend::Sqlite, super::BACKEND_TEST_MIGRATIONS).await;
                    super::$name(&db).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::testing::TestDatabase::fresh($crate::storage::Backend::Postgres, super::BACKEND_TEST_MIGRATIONS).await;
                    super::$name(&db).await;
                }
            )+
        }
    };
}

/// A throwaway CA with service and client certificates.
#[derive(Debug)]
pub struct TestPki {
    /// The CA.
    pub ca: CertifiedKey,
    /// The trust domain of the identities.
    pub trust_domain: String,
}

impl TestPki {
    /// A new CA for trust domain `test.local`.
    pub fn new() -> Self {
        Self {
            ca: generate_ca("test ca").expect("ca"),
            trust_domain: "test.local".to_owned(),
        }
    }

    /// TLS material for `name` (a service or client), valid for localhost and 127.0.0.1.
    pub fn material(&self, name: &str) -> TlsMaterial {
        let mut spec = LeafSpec::client(&self.trust_domain, name);
        spec.dns_names = vec!["localhost".to_owned()];
        spec.ip_addresses = vec![std::net::IpAddr::from([127, 0, 0, 1])];
        let leaf = issue(&self.ca, &spec).expect("leaf");
        TlsMaterial {
            ca_pem: self.ca.cert_pem.as_bytes().to_vec(),
            cert_pem: leaf.cert_pem.as_bytes().to_vec(),
            key_pem: zeroize::Zeroizing::new(leaf.key_pem.as_bytes().to_vec()),
        }
    }

    /// The SPIFFE id of `name` in this PKI.
    pub fn id(&self, name: &str) -> String {
        crate::service_name::spiffe_id(&self.trust_domain, name)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// A TLS handshake with the server at `addr` as `client`, verifying it as
/// `localhost`: the certificate it presents, and whether it then accepted
/// the client (see [`tls_handshake_with`]).
pub async fn tls_handshake(
    addr: std::net::SocketAddr,
    client: &TlsMaterial,
) -> (crate::tls::live::CertificateFacts, Result<(), String>) {
    // No ALPN: gRPC ports and the intake web page (HTTP/1.1) both answer.
    let mut config = (*crate::tls::LiveTls::fixed(client)
        .expect("client tls")
        .client_config())
    .clone();
    config.alpn_protocols.clear();
    tls_handshake_with(addr, config)
        .await
        .expect("server certificate accepted")
}

/// A TLS handshake with the server at `addr` with `config`, verifying it
/// as `localhost`: `Err` when the handshake fails on our side; else the
/// certificate the server presented, and whether it then accepted us (with
/// TLS 1.3 the server's verdict on the client's certificate arrives after
/// the handshake, so this sends an HTTP/2 preface and waits for the
/// server's first bytes).
pub async fn tls_handshake_with(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> Result<(crate::tls::live::CertificateFacts, Result<(), String>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or("no server certificate")?
        .clone();
    let facts = crate::tls::live::CertificateFacts::from_der(presented.as_ref())
        .map_err(|e| e.to_string())?;
    let accepted = async {
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 9];
        match tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(Ok(_)) => Err("closed".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timeout".to_owned()),
        }
    }
    .await;
    Ok((facts, accepted))
}
