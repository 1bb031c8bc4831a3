//! Configuration, layered: defaults → TOML file → `CONFIDANT_` environment
//! variables → command-line flags, then validated as a whole so that every
//! problem is reported at once, each naming its setting.
//!
//! Environment variables map onto the TOML tree with `__` between levels:
//! `CONFIDANT_SERVICES__VAULT__DATABASE_URL` sets `services.vault.database_url`.
//! The environment is passed in as a map so that tests never touch the
//! process environment.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::service_name::ServiceName;
use crate::telemetry::TelemetryConfig;
use crate::tls::TlsFiles;

/// The prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "CONFIDANT_";

/// The most worker threads `worker_threads` may ask for; more is a typo,
/// not a machine.
pub const MAX_WORKER_THREADS: usize = 1024;

/// Whether the process runs with production safeguards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `confidant serve`: every safeguard on.
    #[default]
    Production,
    /// `confidant dev`: embedded defaults on one machine.
    Dev,
}

/// The whole configuration of a `confidant` process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Production or dev.
    pub mode: Mode,
    /// The SPIFFE trust domain of service identities.
    pub trust_domain: String,
    /// Directory for local state (dev databases, dev PKI, local KMS key).
    pub data_dir: Option<PathBuf>,
    /// The CA bundle that every peer certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// Settings per service.
    pub services: BTreeMap<ServiceName, ServiceConfig>,
    /// Where to reach services this process does not run, e.g.
    /// `audit = "https://confidant-audit:7105"`.
    pub peers: BTreeMap<ServiceName, String>,
    /// Redis for cache, rate limits, leases and revocation.
    pub redis: RedisConfig,
    /// Key management.
    pub kms: KmsConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// The identity service.
    pub identity: IdentityConfig,
    /// The vault.
    pub vault: VaultConfig,
    /// The retention service.
    pub retention: RetentionConfig,
    /// The intake service.
    pub intake: IntakeConfig,
    /// Whether gRPC server reflection is served.
    pub reflection: bool,
    /// How long in-flight calls may run after a shutdown signal.
    pub shutdown_grace_seconds: u64,
    /// How often each service reads its certificate, key and CA bundle
    /// files again and, if they changed (a renewal), serves and connects
    /// with the new ones from the next connection on; 0: only on SIGHUP.
    pub tls_reload_seconds: u64,
    /// A plaintext listener serving only `grpc.health.v1` (no client data,
    /// no other service), for probes that cannot present a client
    /// certificate, such as Kubernetes' native gRPC probes. Off when unset.
    pub probe_listen: Option<SocketAddr>,
    /// Threads that run the process's tasks (gRPC calls, database work,
    /// relays). Unset: one per CPU the process may use, its cgroup's CPU
    /// quota included. Fewer threads than cores hand less work between
    /// threads: on two cores shared with PostgreSQL, one thread spent about a
    /// tenth less of the vault's CPU per write at low concurrency, but under
    /// heavy concurrency the one thread became the queue.
    pub worker_threads: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Production,
            trust_domain: "confidant.local".to_owned(),
            data_dir: None,
            ca_file: None,
            services: BTreeMap::new(),
            peers: BTreeMap::new(),
            redis: RedisConfig::default(),
            kms: KmsConfig::default(),
            telemetry: TelemetryConfig::default(),
            audit: AuditConfig::default(),
            identity: IdentityConfig::default(),
            vault: VaultConfig::default(),
            retention: RetentionConfig::default(),
            intake: IntakeConfig::default(),
            reflection: true,
            shutdown_grace_seconds: 30,
            tls_reload_seconds: 60,
            probe_listen: None,
            worker_threads: None,
        }
    }
}

/// Settings of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Listen address; defaults to `0.0.0.0:<service port>`.
    pub listen: Option<SocketAddr>,
    /// `postgres://…` or `sqlite:…`.
    pub database_url: Option<String>,
    /// Upper bound of database connections.
    pub max_connections: Option<u32>,
    /// The service's certificate (with its SPIFFE id), PEM.
    pub cert_file: Option<PathBuf>,
    /// The service's private key, PEM.
    pub key_file: Option<PathBuf>,
    /// At most this many calls served at once (streams included, until
    /// their last message); past it a new call is refused at once with
    /// UNAVAILABLE, reason `overloaded`, instead of queueing. Health checks
    /// never count. Default 1000.
    pub max_in_flight: Option<u32>,
}

/// Redis settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL. Required in production.
    pub url: Option<String>,
    /// Prefix of every key, so that deployments can share a Redis.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "confidant:".to_owned(),
        }
    }
}

/// Which key management service wraps scope keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KmsProvider {
    /// AWS KMS (or an AWS-compatible endpoint).
    Aws,
    /// A master key file in the data directory: for development only.
    Local,
}

/// Key management settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KmsConfig {
    /// `aws` or `local`. Required when the vault runs.
    pub provider: Option<KmsProvider>,
    /// AWS KMS key id or ARN (or alias) that wraps scope keys.
    pub key_id: Option<String>,
    /// AWS region.
    pub region: Option<String>,
    /// Endpoint override (a VPC endpoint, or a test KMS).
    pub endpoint: Option<String>,
    /// The local provider's master key file.
    pub local_key_file: Option<PathBuf>,
    /// Must be true to use the local provider outside dev mode.
    pub allow_insecure_local: bool,
    /// Static credentials for a KMS-compatible endpoint outside AWS: a file
    /// with the access key id on its first line and the secret on its
    /// second. Unset: the default AWS credential chain (on EKS, IAM Roles
    /// for Service Accounts).
    pub credentials_file: Option<PathBuf>,
}

/// Intake settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeConfig {
    /// Where the client-facing intake web page listens (HTTPS, TLS 1.3 with
    /// the service certificate, no client certificate); unset: no page.
    pub web_listen: Option<SocketAddr>,
    /// Requests per minute one address may make to the web page (sign-in
    /// codes, uploads and submissions included).
    pub web_requests_per_minute: u32,
    /// Largest request body of the web page other than file uploads.
    pub web_max_body_bytes: usize,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            web_listen: None,
            web_requests_per_minute: 120,
            web_max_body_bytes: 256 * 1024,
        }
    }
}

/// Retention settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How many different staff members must approve a hold's release.
    pub hold_release_approvers: u32,
    /// How often the registry of vault scopes is brought up to date (and
    /// holds the vault has not confirmed are sent again).
    pub sync_interval_seconds: u64,
    /// How often the disposal sweep runs (one replica at a time).
    pub sweep_interval_seconds: u64,
    /// How many different records managers approve a disposition batch of
    /// a review policy.
    pub batch_approvers: u32,
    /// How many different records managers approve the erasure of one
    /// record (RequestErasure), the one who asked included.
    pub erasure_approvers: u32,
    /// The Ed25519 private key (PKCS#8 DER) that signs certificates of
    /// disposal; create one with `confidant keys signing`. Required where
    /// the retention service runs.
    pub signing_key_file: Option<PathBuf>,
    /// Records managers get a last reminder of a staged destruction that
    /// nobody kept this long before its key goes, if they were first told
    /// of it at least as long before (0: never; at most 30 days).
    pub destruction_reminder_seconds: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            hold_release_approvers: 2,
            sync_interval_seconds: 60,
            sweep_interval_seconds: 300,
            batch_approvers: 1,
            erasure_approvers: 2,
            signing_key_file: None,
            destruction_reminder_seconds: 24 * 3600,
        }
    }
}

/// Vault settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Client identities (names in the trust domain) that store records for
    /// clients they verified themselves, without a staff token.
    pub writers: Vec<String>,
    /// Client identities that may run key administration (rewrap, key
    /// statistics) and read and replace masking rules.
    pub admins: Vec<String>,
    /// Largest value of one field, in bytes.
    pub max_field_bytes: usize,
    /// Most fields in one record (at most 200).
    pub max_fields: usize,
    /// Largest document, in bytes.
    pub max_document_bytes: u64,
    /// How long a shredded scope stays pending destruction (reads refused,
    /// cancellable) before its key is destroyed, unless the order says
    /// otherwise. 0: at once.
    pub destruction_window_seconds: u64,
    /// How often due destructions are carried out.
    pub destruction_check_seconds: u64,
    /// Most unwrapped scope keys held in memory.
    pub key_cache_capacity: usize,
    /// Longest an unwrapped scope key stays in memory.
    pub key_cache_max_age_seconds: u64,
    /// Most uses of one unwrapped scope key before it is unwrapped again.
    pub key_cache_max_uses: u64,
    /// How long an allowed decision from identity is reused for the same
    /// staff member, permission, client and matter (denials never are).
    /// With identity's own half-second facts cache it bounds how long a
    /// revoked grant keeps working: the default keeps the total within one
    /// second. 0 asks every time.
    pub decision_cache_millis: u64,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            writers: vec!["intake".to_owned()],
            admins: vec!["operator".to_owned()],
            max_field_bytes: 1024 * 1024,
            max_fields: 200,
            max_document_bytes: 1024 * 1024 * 1024,
            destruction_window_seconds: 0,
            destruction_check_seconds: 5,
            key_cache_capacity: 10_000,
            key_cache_max_age_seconds: 300,
            key_cache_max_uses: 100_000,
            decision_cache_millis: 500,
        }
    }
}

/// Audit log settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The Ed25519 private key (PKCS#8 DER) that signs checkpoints; create
    /// one with `confidant keys signing`. Required where the audit service runs.
    pub signing_key_file: Option<PathBuf>,
    /// Keys that signed the log's checkpoints before `signing_key_file`,
    /// kept for a change of key: when the latest checkpoint is signed by one
    /// of them, the audit service records the change in the log and has that
    /// key sign the checkpoint covering it (the handover), so that verifiers
    /// trusting the old key learn the new one. Drop them once the change is
    /// logged (`audit.signing_key.rotated`).
    pub previous_signing_key_files: Vec<PathBuf>,
    /// The checkpoint origin line; defaults to `<trust_domain>/audit`.
    pub origin: Option<String>,
    /// A checkpoint is signed at least this often, even when nothing happened.
    pub checkpoint_interval_seconds: u64,
    /// ... and as soon as this many events arrived since the last one.
    pub checkpoint_max_events: u64,
    /// Client identities (names in the trust domain, e.g. `operator`) that may
    /// export the log and fetch evidence bundles.
    pub readers: Vec<String>,
    /// Where detection alerts are posted (JSON, HTTPS); unset: alerts are
    /// only listed through the API (and logged).
    pub alerts_webhook_url: Option<String>,
    /// Dev and tests: alerts appended to this file as JSON lines.
    pub alerts_file: Option<PathBuf>,
    /// How often the detection rules look at new events.
    pub detection_interval_millis: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            signing_key_file: None,
            previous_signing_key_files: Vec::new(),
            origin: None,
            checkpoint_interval_seconds: 60,
            checkpoint_max_events: 1000,
            readers: vec!["operator".to_owned()],
            alerts_webhook_url: None,
            alerts_file: None,
            detection_interval_millis: 2000,
        }
    }
}

/// Identity service settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Client identities (names in the trust domain) that may manage the
    /// directory — staff, clients, matters, walls, attestations, passwords.
    pub admins: Vec<String>,
    /// Ed25519 keys (PKCS#8 DER) for access tokens: the first signs, all
    /// verify. Rotate by putting a new key first and dropping the old one
    /// once its tokens have expired. Create one with `confidant keys signing`.
    pub token_key_files: Vec<PathBuf>,
    /// Ed25519 keys (PKCS#8 DER) that sign wall certifications, which must
    /// still verify years later: the first signs, all verify, and a retired
    /// key stays listed for as long as its certifications are kept. Kept
    /// apart from the token keys, which rotate away within hours. Create one
    /// with `confidant keys signing`.
    pub certificate_key_files: Vec<PathBuf>,
    /// Lifetime of access tokens.
    pub access_token_minutes: u64,
    /// How long every service trusts a session it found not revoked
    /// without asking the coordinator again. Identity announces each
    /// revocation (Redis pub/sub), and an announcement ends that trust at
    /// once; while a service is not subscribed it asks on every request.
    /// The window bounds how long a revoked session could keep working if an
    /// announcement were lost unnoticed. 0 asks on every request.
    pub session_check_cache_millis: u64,
    /// Longest a session lives, refreshed or not.
    pub session_hours: u64,
    /// Failed sign-ins per account before it locks for the window.
    pub max_failed_logins: u64,
    /// How long a lock lasts (and the window failures are counted in).
    pub lockout_minutes: u64,
    /// Secret key (32 bytes or more) for keyed hashes of client contact
    /// addresses, one-time codes and identity-document numbers.
    pub pepper_file: Option<PathBuf>,
    /// Where one-time codes for clients are written (dev).
    pub notifications_file: Option<PathBuf>,
    /// A messaging gateway that sends clients their one-time codes: each
    /// message is POSTed as JSON. HTTPS (plain HTTP only to loopback).
    pub notification_webhook_url: Option<String>,
    /// A file holding the bearer token for the webhook, if it needs one.
    pub notification_webhook_token_file: Option<PathBuf>,
    /// Days before the confidentiality agreement or training that
    /// decisions count for a staff member lapses that they are e-mailed to
    /// renew it (and e-mailed again once it has lapsed, within as many
    /// days); 0 sends no reminders.
    pub attestation_reminder_days: u64,
    /// How often identity looks for attestations and access reviews to
    /// remind of.
    pub attestation_reminder_interval_seconds: u64,
    /// Hours before an access review campaign's deadline that reviewers
    /// with items still waiting for them are reminded (they are told when
    /// it starts in any case); 0 sends no such reminder.
    pub review_reminder_hours: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            admins: vec!["operator".to_owned()],
            token_key_files: Vec::new(),
            certificate_key_files: Vec::new(),
            access_token_minutes: 15,
            session_check_cache_millis: 500,
            session_hours: 12,
            max_failed_logins: 5,
            lockout_minutes: 15,
            pepper_file: None,
            notifications_file: None,
            notification_webhook_url: None,
            notification_webhook_token_file: None,
            attestation_reminder_days: 30,
            attestation_reminder_interval_seconds: 3600,
            review_reminder_hours: 72,
        }
    }
}

/// One problem with the configuration, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    /// The setting, as a TOML path, e.g. `services.vault.database_url`.
    pub setting: String,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.setting, self.problem)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file or an environment variable is not valid TOML, or a value has
    /// the wrong type or an unknown key.
    #[error("{origin}: {detail}")]
    Parse {
        /// The file or variable.
        origin: String,
        /// What is wrong, naming the key.
        detail: String,
    },
    /// The merged configuration breaks rules.
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// `CONFIDANT_*` variables that are not settings: the config file's path,
/// the bootstrap password, and the test suite's servers.
fn is_not_config(key: &str) -> bool {
    key == "CONFIDANT_CONFIG"
        || key == "CONFIDANT_BOOTSTRAP_PASSWORD"
        || key.starts_with("CONFIDANT_TEST_")
}

/// Sets `path` in `table` to `value`, creating intermediate tables.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a table"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

/// Interprets an environment value: TOML scalars and arrays (`true`, `42`,
/// `0.5`, `["a","b"]`) keep their type, anything else is a string.
fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// Builds a configuration from an optional file and an environment map
/// (only `CONFIDANT_*` keys are read). `base` holds the defaults of the
/// subcommand (e.g. dev mode's).
pub fn load(
    base: toml::Table,
    file: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<Config, Error> {
    let mut table = base;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let from_file: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Parse {
            origin: path.display().to_string(),
            detail: e.message().to_owned(),
        })?;
        merge(&mut table, from_file);
    }
    let mut vars: Vec<_> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !is_not_config(k))
        .collect();
    vars.sort();
    for (key, raw) in vars {
        let path: Vec<String> = key[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        set_path(&mut table, &path, env_value(raw)).map_err(|detail| Error::Parse {
            origin: key.clone(),
            detail,
        })?;
    }
    Config::deserialize(toml::Value::Table(table)).map_err(|e| Error::Parse {
        origin: file.map_or_else(|| "configuration".to_owned(), |p| p.display().to_string()),
        detail: e.message().to_owned(),
    })
}

/// Deep-merges `overlay` into `base`.
pub fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl Config {
    /// The listen address of `service`.
    pub fn listen(&self, service: ServiceName) -> SocketAddr {
        self.services
            .get(&service)
            .and_then(|s| s.listen)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], service.default_port())))
    }

    /// The TLS files of `service`, when all three are set.
    pub fn tls_files(&self, service: ServiceName) -> Option<TlsFiles> {
        let s = self.services.get(&service)?;
        Some(TlsFiles {
            ca_file: self.ca_file.clone()?,
            cert_file: s.cert_file.clone()?,
            key_file: s.key_file.clone()?,
        })
    }

    /// Checks everything `running` needs, reporting every problem at once.
    pub fn validate(&self, running: &[ServiceName]) -> Result<(), Error> {
        let mut problems = Vec::new();
        let mut problem = |setting: String, text: &str| {
            problems.push(Problem {
                setting,
                problem: text.to_owned(),
            });
        };
        if running.is_empty() {
            problem("services".into(), "no service selected to run");
        }
        if self.trust_domain.is_empty()
            || !self
                .trust_domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            problem(
                "trust_domain".into(),
                "must be a DNS-like name (letters, digits, '.', '-')",
            );
        }
        match &self.ca_file {
            None => problem("ca_file".into(), "is required"),
            Some(p) if !p.is_file() => problem("ca_file".into(), "file does not exist"),
            Some(_) => {}
        }
        for &service in running {
            let prefix = format!("services.{service}");
            let s = self.services.get(&service).cloned().unwrap_or_default();
            match s.database_url.as_deref() {
                None => problem(format!("{prefix}.database_url"), "is required"),
                Some(url)
                    if !(url.starts_with("postgres://")
                        || url.starts_with("postgresql://")
                        || url.starts_with("sqlite:")) =>
                {
                    problem(
                        format!("{prefix}.database_url"),
                        "must start with postgres:// or sqlite:",
                    );
                }
                Some(_) => {}
            }
            for (name, value) in [("cert_file", &s.cert_file), ("key_file", &s.key_file)] {
                match value {
                    None => problem(format!("{prefix}.{name}"), "is required"),
                    Some(p) if !p.is_file() => {
                        problem(format!("{prefix}.{name}"), "file does not exist")
                    }
                    Some(_) => {}
                }
            }
            // The files it would serve with: usable, its own, valid now.
            if let Some(files) = self.tls_files(service)
                && [&files.ca_file, &files.cert_file, &files.key_file]
                    .iter()
                    .all(|p| p.is_file())
            {
                let found = match files.load() {
                    Ok(material) => crate::tls::live::problem_with(
                        &material,
                        &service.spiffe_id(&self.trust_domain),
                        chrono::Utc::now().timestamp(),
                    ),
                    Err(err) => Some(("cert_file", err.to_string())),
                };
                if let Some((file, text)) = found {
                    if file == "ca_file" {
                        problem(file.to_owned(), &text);
                    } else {
                        problem(format!("{prefix}.{file}"), &text);
                    }
                }
            }
            if s.max_in_flight == Some(0) {
                problem(format!("{prefix}.max_in_flight"), "must be at least 1");
            }
            if s.max_connections == Some(0) {
                problem(format!("{prefix}.max_connections"), "must be at least 1");
            }
            // Every service but audit delivers its audit events to audit.
            if service != ServiceName::Audit && !running.contains(&ServiceName::Audit) {
                match self.peers.get(&ServiceName::Audit) {
                    None => problem(
                        "peers.audit".into(),
                        "is required when the audit service runs elsewhere",
                    ),
                    Some(url) if !url.starts_with("https://") => {
                        problem(
                            "peers.audit".into(),
                            "must be an https:// URL (peers use mutual TLS)",
                        );
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(n) = self.worker_threads
            && !(1..=MAX_WORKER_THREADS).contains(&n)
        {
            problem(
                "worker_threads".into(),
                &format!("must be between 1 and {MAX_WORKER_THREADS}"),
            );
        }
        if self.mode == Mode::Production && self.redis.url.is_none() {
            problem(
                "redis.url".into(),
                "is required in production (rate limits, leases and revocation are shared by replicas)",
            );
        }
        if let Some(url) = &self.redis.url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            problem("redis.url".into(), "must start with redis:// or rediss://");
        }
        // The vault wraps scope keys with the KMS; identity and intake seal
        // their secrets (TOTP seeds, invitation contact addresses) with it.
        if running.contains(&ServiceName::Vault)
            || running.contains(&ServiceName::Identity)
            || running.contains(&ServiceName::Intake)
        {
            match self.kms.provider {
                None => problem(
                    "kms.provider".into(),
                    "is required where the vault or identity runs (aws or local)",
                ),
                Some(KmsProvider::Local)
                    if self.mode == Mode::Production && !self.kms.allow_insecure_local =>
                {
                    problem(
                        "kms.provider".into(),
                        "the local KMS keeps its master key on disk and is refused in production; use aws, or set kms.allow_insecure_local = true to accept the risk",
                    )
                }
                Some(KmsProvider::Local) => {
                    if self.kms.local_key_file.is_none() && self.data_dir.is_none() {
                        problem(
                            "kms.local_key_file".into(),
                            "is required for the local KMS (or set data_dir)",
                        );
                    }
                }
                Some(KmsProvider::Aws) => {
                    if self.kms.key_id.as_deref().is_none_or(str::is_empty) {
                        problem("kms.key_id".into(), "is required for the aws KMS");
                    }
                    if self.kms.region.as_deref().is_none_or(str::is_empty) {
                        problem("kms.region".into(), "is required for the aws KMS");
                    }
                    if let Some(p) = &self.kms.credentials_file
                        && !p.is_file()
                    {
                        problem("kms.credentials_file".into(), "file does not exist");
                    }
                }
            }
        }
        if running.contains(&ServiceName::Retention) {
            for (name, approvers) in [
                (
                    "hold_release_approvers",
                    self.retention.hold_release_approvers,
                ),
                ("batch_approvers", self.retention.batch_approvers),
                ("erasure_approvers", self.retention.erasure_approvers),
            ] {
                if !(1..=5).contains(&approvers) {
                    problem(format!("retention.{name}"), "must be between 1 and 5");
                }
            }
            if self.retention.sweep_interval_seconds == 0 {
                problem(
                    "retention.sweep_interval_seconds".into(),
                    "must be at least 1",
                );
            }
            if self.retention.destruction_reminder_seconds > 30 * 24 * 3600 {
                problem(
                    "retention.destruction_reminder_seconds".into(),
                    "must be at most 2592000 (30 days, the longest pending window)",
                );
            }
            match &self.retention.signing_key_file {
                None => problem(
                    "retention.signing_key_file".into(),
                    "is required where the retention service runs",
                ),
                Some(p) if !p.is_file() => {
                    problem("retention.signing_key_file".into(), "file does not exist")
                }
                Some(_) => {}
            }
            if self.retention.sync_interval_seconds == 0 {
                problem(
                    "retention.sync_interval_seconds".into(),
                    "must be at least 1",
                );
            }
        }
        if self.identity.session_check_cache_millis > 5_000 {
            problem(
                "identity.session_check_cache_millis".into(),
                "must be at most 5000: a revoked session must stop working within seconds",
            );
        }
        if running.contains(&ServiceName::Vault) {
            let v = &self.vault;
            if v.max_field_bytes == 0 || v.max_field_bytes > 3 * 1024 * 1024 {
                problem(
                    "vault.max_field_bytes".into(),
                    "must be between 1 and 3145728 (a record travels in one gRPC message)",
                );
            }
            if v.max_document_bytes == 0 || v.max_document_bytes > 64 * 1024 * 1024 * 1024 {
                problem(
                    "vault.max_document_bytes".into(),
                    "must be between 1 and 68719476736 (64 GiB)",
                );
            }
            if v.max_fields == 0 || v.max_fields > crate::audit::MAX_RECORD_FIELDS {
                problem(
                    "vault.max_fields".into(),
                    &format!(
                        "must be between 1 and {} (a read's audit event names every field it returns)",
                        crate::audit::MAX_RECORD_FIELDS
                    ),
                );
            }
            if v.destruction_window_seconds > 30 * 24 * 3600 {
                problem(
                    "vault.destruction_window_seconds".into(),
                    "must be at most 30 days",
                );
            }
            if v.destruction_check_seconds == 0 {
                problem(
                    "vault.destruction_check_seconds".into(),
                    "must be at least 1",
                );
            }
            if v.decision_cache_millis > 5_000 {
                problem(
                    "vault.decision_cache_millis".into(),
                    "must be at most 5000: a revoked grant must stop working within seconds",
                );
            }
            if v.key_cache_max_uses == 0 || v.key_cache_max_age_seconds == 0 {
                problem(
                    "vault.key_cache_max_uses".into(),
                    "the key cache needs a max age and max uses of at least 1 (capacity 0 turns it off)",
                );
            }
        }
        if running.contains(&ServiceName::Audit) {
            if let Some(url) = &self.audit.alerts_webhook_url
                && !crate::notify::webhook_url_allowed(url)
            {
                problem(
                    "audit.alerts_webhook_url".into(),
                    "must be an https:// URL (http:// only to loopback)",
                );
            }
            match &self.audit.signing_key_file {
                None => problem(
                    "audit.signing_key_file".into(),
                    "is required where the audit service runs",
                ),
                Some(p) if !p.is_file() => {
                    problem("audit.signing_key_file".into(), "file does not exist")
                }
                Some(_) => {}
            }
            for (i, p) in self.audit.previous_signing_key_files.iter().enumerate() {
                if !p.is_file() {
                    problem(
                        format!("audit.previous_signing_key_files[{i}]"),
                        "file does not exist",
                    );
                }
            }
            if self.audit.checkpoint_interval_seconds == 0 {
                problem(
                    "audit.checkpoint_interval_seconds".into(),
                    "must be at least 1",
                );
            }
            if self.audit.checkpoint_max_events == 0 {
                problem("audit.checkpoint_max_events".into(), "must be at least 1");
            }
        }
        if running.contains(&ServiceName::Identity) {
            for (name, files) in [
                ("token_key_files", &self.identity.token_key_files),
                (
                    "certificate_key_files",
                    &self.identity.certificate_key_files,
                ),
            ] {
                if files.is_empty() {
                    problem(
                        format!("identity.{name}"),
                        "must name at least one key where identity runs",
                    );
                }
                for (i, p) in files.iter().enumerate() {
                    if !p.is_file() {
                        problem(format!("identity.{name}[{i}]"), "file does not exist");
                    }
                }
            }
            match &self.identity.pepper_file {
                None => problem(
                    "identity.pepper_file".into(),
                    "is required where identity runs",
                ),
                Some(p) if !p.is_file() => {
                    problem("identity.pepper_file".into(), "file does not exist")
                }
                Some(_) => {}
            }
            match &self.identity.notification_webhook_url {
                Some(url) if !crate::notify::webhook_url_allowed(url) => problem(
                    "identity.notification_webhook_url".into(),
                    "must be an https:// URL (http:// only to loopback)",
                ),
                Some(_) => {}
                None if self.identity.notifications_file.is_none() => problem(
                    "identity.notification_webhook_url".into(),
                    "is required where identity runs (or identity.notifications_file for development)",
                ),
                None => {}
            }
            if let Some(p) = &self.identity.notification_webhook_token_file
                && !p.is_file()
            {
                problem(
                    "identity.notification_webhook_token_file".into(),
                    "file does not exist",
                );
            }
            for (name, value) in [
                ("access_token_minutes", self.identity.access_token_minutes),
                ("session_hours", self.identity.session_hours),
                ("max_failed_logins", self.identity.max_failed_logins),
                ("lockout_minutes", self.identity.lockout_minutes),
                (
                    "attestation_reminder_interval_seconds",
                    self.identity.attestation_reminder_interval_seconds,
                ),
            ] {
                if value == 0 {
                    problem(format!("identity.{name}"), "must be at least 1");
                }
            }
        }
        if !(0.0..=1.0).contains(&self.telemetry.sampling_ratio) {
            problem(
                "telemetry.sampling_ratio".into(),
                "must be between 0.0 and 1.0",
            );
        }
        let t = &self.telemetry;
        let https = t
            .otlp_endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("https://"));
        if let Some(endpoint) = &t.otlp_endpoint
            && !(endpoint.starts_with("http://") || https)
        {
            problem(
                "telemetry.otlp_endpoint".into(),
                "must be an http:// or https:// URL",
            );
        }
        if https && t.otlp_ca_file.is_none() {
            problem(
                "telemetry.otlp_ca_file".into(),
                "is required for an https:// endpoint (the collector's CA bundle)",
            );
        }
        for (name, file) in [
            ("otlp_ca_file", &t.otlp_ca_file),
            ("otlp_cert_file", &t.otlp_cert_file),
            ("otlp_key_file", &t.otlp_key_file),
        ] {
            match file {
                Some(_) if !https => problem(
                    format!("telemetry.{name}"),
                    "applies only to an https:// otlp_endpoint",
                ),
                Some(path) if !path.is_file() => {
                    problem(format!("telemetry.{name}"), "file does not exist")
                }
                _ => {}
            }
        }
        if t.otlp_cert_file.is_some() != t.otlp_key_file.is_some() {
            problem(
                "telemetry.otlp_cert_file".into(),
                "comes with telemetry.otlp_key_file (both or neither)",
            );
        }
        // The collector's files as the exporter will read them.
        if let Some(files) = t.collector_tls()
            && files.ca_file.is_file()
            && t.otlp_cert_file.as_ref().is_none_or(|p| p.is_file())
            && t.otlp_key_file.as_ref().is_none_or(|p| p.is_file())
            && let Err(err) = files.client_config()
        {
            let (file, text) = err.file_problem();
            problem(format!("telemetry.otlp_{file}"), &text);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            // A shared setting (the CA bundle) is named once.
            let mut seen = std::collections::HashSet::new();
            problems.retain(|p| seen.insert(p.clone()));
            Err(Error::Invalid(problems))
        }
    }

    /// The configuration of `confidant dev`: every service on 127.0.0.1 on
    /// its fixed port, SQLite per service, dev PKI and local KMS in
    /// `data_dir`, in-process cache.
    pub fn dev_defaults(data_dir: &Path) -> toml::Table {
        let pki = crate::pki::PkiDir::new(data_dir.join("pki"));
        let mut services = toml::Table::new();
        for service in ServiceName::ALL {
            let mut s = toml::Table::new();
            s.insert(
                "listen".into(),
                toml::Value::String(format!("127.0.0.1:{}", service.default_port())),
            );
            s.insert(
                "database_url".into(),
                toml::Value::String(format!(
                    "sqlite:{}",
                    data_dir.join(format!("{service}.db")).display()
                )),
            );
            s.insert("cert_file".into(), path_value(&pki.cert(service.as_str())));
            s.insert("key_file".into(), path_value(&pki.key(service.as_str())));
            services.insert(service.as_str().into(), toml::Value::Table(s));
        }
        let mut kms = toml::Table::new();
        kms.insert("provider".into(), toml::Value::String("local".into()));
        kms.insert(
            "local_key_file".into(),
            path_value(&data_dir.join(crate::kms::LOCAL_KEY_FILE)),
        );
        let mut telemetry = toml::Table::new();
        telemetry.insert("log_format".into(), toml::Value::String("text".into()));
        let mut audit = toml::Table::new();
        audit.insert(
            "signing_key_file".into(),
            path_value(&data_dir.join("audit-log.key")),
        );
        audit.insert(
            "alerts_file".into(),
            path_value(&data_dir.join("alerts.jsonl")),
        );
        let mut retention = toml::Table::new();
        retention.insert(
            "signing_key_file".into(),
            path_value(&data_dir.join("retention-certificates.key")),
        );
        let mut identity = toml::Table::new();
        identity.insert(
            "token_key_files".into(),
            toml::Value::Array(vec![path_value(&data_dir.join("identity-token.key"))]),
        );
        identity.insert(
            "certificate_key_files".into(),
            toml::Value::Array(vec![path_value(
                &data_dir.join("identity-certificates.key"),
            )]),
        );
        identity.insert(
            "pepper_file".into(),
            path_value(&data_dir.join("identity-pepper.key")),
        );
        identity.insert(
            "notifications_file".into(),
            path_value(&data_dir.join("notifications.jsonl")),
        );
        let mut intake = toml::Table::new();
        intake.insert(
            "web_listen".into(),
            toml::Value::String("127.0.0.1:7180".into()),
        );
        let mut t = toml::Table::new();
        t.insert("mode".into(), toml::Value::String("dev".into()));
        t.insert("data_dir".into(), path_value(data_dir));
        t.insert("ca_file".into(), path_value(&pki.ca_cert()));
        t.insert("services".into(), toml::Value::Table(services));
        t.insert("kms".into(), toml::Value::Table(kms));
        t.insert("telemetry".into(), toml::Value::Table(telemetry));
        t.insert("audit".into(), toml::Value::Table(audit));
        t.insert("identity".into(), toml::Value::Table(identity));
        t.insert("retention".into(), toml::Value::Table(retention));
        t.insert("intake".into(), toml::Value::Table(intake));
        t
    }

    /// The origin line of the audit log's checkpoints.
    pub fn audit_origin(&self) -> String {
        self.audit
            .origin
            .clone()
            .unwrap_or_else(|| format!("{}/audit", self.trust_domain))
    }
}

fn path_value(p: &Path) -> toml::Value {
    toml::Value::String(p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The production example in the README is a configuration `serve`
    /// accepts (apart from its files, which do not exist here).
    #[test]
    fn the_readme_production_example_parses_and_validates() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## Production").expect("production section")..];
        let start = section.find("```toml\n").expect("toml block") + "```toml\n".len();
        let end = start + section[start..].find("```").expect("block end");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confidant.toml");
        std::fs::write(&path, &section[start..end]).unwrap();
        let config = load(toml::Table::new(), Some(&path), &HashMap::new()).expect("parses");
        let err = config
            .validate(&[
                ServiceName::Vault,
                ServiceName::Identity,
                ServiceName::Audit,
            ])
            .unwrap_err()
            .to_string();
        for line in err.lines().skip(1) {
            assert!(
                line.contains("file does not exist")
                    || line.contains("database_url")
                    || line.contains("services."),
                "{line}"
            );
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn environment_overrides_file_and_keeps_types() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("confidant.toml");
        std::fs::write(
            &file,
            "trust_domain = \"firm.example\"\nreflection = true\n[services.vault]\ndatabase_url = \"postgres://db/one\"\n",
        )
        .unwrap();
        let config = load(
            toml::Table::new(),
            Some(&file),
            &env(&[
                (
                    "CONFIDANT_SERVICES__VAULT__DATABASE_URL",
                    "postgres://db/two",
                ),
                ("CONFIDANT_REFLECTION", "false"),
                ("CONFIDANT_TELEMETRY__SAMPLING_RATIO", "0.25"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(config.trust_domain, "firm.example");
        assert!(!config.reflection);
        assert_eq!(config.telemetry.sampling_ratio, 0.25);
        assert_eq!(
            config.services[&ServiceName::Vault].database_url.as_deref(),
            Some("postgres://db/two")
        );
    }

    #[test]
    fn worker_threads_come_from_file_or_environment_and_are_bounded() {
        let config = load(
            toml::Table::new(),
            None,
            &env(&[("CONFIDANT_WORKER_THREADS", "1")]),
        )
        .unwrap();
        assert_eq!(config.worker_threads, Some(1));
        assert_eq!(Config::default().worker_threads, None);
        // The default configuration is refused for other settings; only
        // the worker threads' own problem matters here.
        let problems = |n| {
            Config {
                worker_threads: Some(n),
                ..Config::default()
            }
            .validate(&[ServiceName::Vault])
            .unwrap_err()
            .to_string()
        };
        for bad in [0, MAX_WORKER_THREADS + 1] {
            let err = problems(bad);
            assert!(
                err.contains("worker_threads: must be between 1 and 1024"),
                "{bad}: {err}"
            );
        }
        for good in [1, MAX_WORKER_THREADS] {
            let err = problems(good);
            assert!(!err.contains("worker_threads"), "{good}: {err}");
        }
    }

    #[test]
    fn a_bound_on_calls_in_progress_comes_from_the_environment_and_is_at_least_one() {
        let config = load(
            toml::Table::new(),
            None,
            &env(&[("CONFIDANT_SERVICES__VAULT__MAX_IN_FLIGHT", "64")]),
        )
        .unwrap();
        assert_eq!(config.services[&ServiceName::Vault].max_in_flight, Some(64));
        let problems = |n| {
            let mut config = Config::default();
            config
                .services
                .entry(ServiceName::Vault)
                .or_default()
                .max_in_flight = Some(n);
            config
                .validate(&[ServiceName::Vault])
                .unwrap_err()
                .to_string()
        };
        assert!(problems(0).contains("services.vault.max_in_flight: must be at least 1"));
        assert!(!problems(1).contains("max_in_flight"));
    }

    #[test]
    fn a_record_has_at_most_as_many_fields_as_a_read_event_can_name() {
        let problems = |n| {
            let mut config = Config::default();
            config.vault.max_fields = n;
            config
                .validate(&[ServiceName::Vault])
                .unwrap_err()
                .to_string()
        };
        for bad in [0, crate::audit::MAX_RECORD_FIELDS + 1] {
            let err = problems(bad);
            assert!(
                err.contains("vault.max_fields: must be between 1 and 200"),
                "{bad}: {err}"
            );
        }
        assert!(!problems(crate::audit::MAX_RECORD_FIELDS).contains("max_fields"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = load(
            toml::Table::new(),
            None,
            &env(&[("CONFIDANT_REDIS__URLL", "redis://x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn production_refuses_missing_settings_and_names_each() {
        let config = Config::default();
        let err = config
            .validate(&[ServiceName::Vault])
            .unwrap_err()
            .to_string();
        for setting in [
            "ca_file",
            "services.vault.database_url",
            "services.vault.cert_file",
            "services.vault.key_file",
            "peers.audit",
            "redis.url",
            "kms.provider",
        ] {
            assert!(err.contains(setting), "{setting} missing from:\n{err}");
        }
        let err = config
            .validate(&[ServiceName::Audit])
            .unwrap_err()
            .to_string();
        for setting in ["audit.signing_key_file", "services.audit.database_url"] {
            assert!(err.contains(setting), "{setting} missing from:\n{err}");
        }
    }

    #[test]
    fn retention_refuses_a_reminder_longer_than_any_window() {
        let mut config = Config::default();
        config.retention.destruction_reminder_seconds = 30 * 24 * 3600 + 1;
        let err = config
            .validate(&[ServiceName::Retention])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("retention.destruction_reminder_seconds: must be at most 2592000"),
            "{err}"
        );
        config.retention.destruction_reminder_seconds = 30 * 24 * 3600;
        let err = config
            .validate(&[ServiceName::Retention])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("destruction_reminder_seconds"), "{err}");
    }

    #[test]
    fn identity_needs_its_keys_and_a_safe_way_to_reach_clients() {
        let mut config = Config::default();
        let err = config
            .validate(&[ServiceName::Identity])
            .unwrap_err()
            .to_string();
        for setting in [
            "identity.token_key_files",
            "identity.certificate_key_files",
            "identity.pepper_file",
            "identity.notification_webhook_url",
        ] {
            assert!(err.contains(setting), "{setting} missing from:\n{err}");
        }
        config.identity.notification_webhook_url = Some("http://gateway.firm.example/send".into());
        let err = config
            .validate(&[ServiceName::Identity])
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be an https:// URL"), "{err}");
        config.identity.notification_webhook_url = Some("https://gateway.firm.example/send".into());
        let err = config
            .validate(&[ServiceName::Identity])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("notification_webhook_url"), "{err}");
    }

    #[test]
    fn local_kms_needs_the_insecure_flag_outside_dev() {
        let mut config = Config {
            data_dir: Some("/tmp".into()),
            ..Config::default()
        };
        config.kms.provider = Some(KmsProvider::Local);
        let err = config
            .validate(&[ServiceName::Vault])
            .unwrap_err()
            .to_string();
        assert!(err.contains("refused in production"), "{err}");
        config.kms.allow_insecure_local = true;
        let err = config
            .validate(&[ServiceName::Vault])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("kms.provider"), "{err}");
    }

    #[test]
    fn dev_defaults_are_valid_once_certificates_exist() {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::PkiDir::new(dir.path().join("pki"))
            .ensure_dev("confidant.local")
            .unwrap();
        std::fs::write(dir.path().join("identity-pepper.key"), b"key").unwrap();
        std::fs::write(dir.path().join("identity-token.key"), b"key").unwrap();
        std::fs::write(dir.path().join("identity-certificates.key"), b"key").unwrap();
        std::fs::write(dir.path().join("audit-log.key"), b"key").unwrap();
        std::fs::write(dir.path().join("retention-certificates.key"), b"key").unwrap();
        let config = load(Config::dev_defaults(dir.path()), None, &HashMap::new()).unwrap();
        assert_eq!(config.mode, Mode::Dev);
        config.validate(&ServiceName::ALL).unwrap();
        assert_eq!(config.listen(ServiceName::Audit).port(), 7105);
    }

    #[test]
    fn a_service_must_serve_with_its_own_matching_current_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::PkiDir::new(dir.path().join("pki"));
        pki.ensure_dev("confidant.local").unwrap();
        let ca = pki.load_ca().unwrap();
        let config = load(Config::dev_defaults(dir.path()), None, &HashMap::new()).unwrap();
        let problems = |config: &Config| match config.validate(&[ServiceName::Vault]) {
            Ok(()) => String::new(),
            Err(err) => err.to_string(),
        };
        let hosts = ["localhost".to_owned()];
        let issue = |service, validity| {
            let mut spec = crate::pki::LeafSpec::service("confidant.local", service, &hosts);
            spec.validity = validity;
            crate::pki::issue(&ca, &spec).unwrap()
        };
        let vault = || {
            let s = &config.services[&ServiceName::Vault];
            (s.cert_file.clone().unwrap(), s.key_file.clone().unwrap())
        };
        let (cert, key) = vault();
        let put = |pair: &crate::pki::CertifiedKey| {
            std::fs::write(&cert, &pair.cert_pem).unwrap();
            std::fs::write(&key, pair.key_pem.as_bytes()).unwrap();
        };
        assert!(
            !problems(&config).contains("services.vault"),
            "{}",
            problems(&config)
        );

        // The audit service's certificate in the vault's place.
        put(&issue(ServiceName::Audit, time::Duration::days(1)));
        let found = problems(&config);
        assert!(
            found.contains(
                "services.vault.cert_file: names spiffe://confidant.local/audit, \
                 but this service is spiffe://confidant.local/vault"
            ),
            "{found}"
        );
        // An expired one.
        put(&issue(ServiceName::Vault, time::Duration::minutes(-1)));
        let found = problems(&config);
        assert!(
            found.contains("services.vault.cert_file: expired at "),
            "{found}"
        );
        // A renewal half done: the new certificate, the old key.
        let old_key = std::fs::read(&key).unwrap();
        put(&issue(ServiceName::Vault, time::Duration::days(1)));
        std::fs::write(&key, old_key).unwrap();
        let found = problems(&config);
        assert!(
            found.contains("services.vault.key_file: does not match the certificate"),
            "{found}"
        );
        // A bundle that holds no certificate, named once.
        put(&issue(ServiceName::Vault, time::Duration::days(1)));
        std::fs::write(config.ca_file.as_ref().unwrap(), b"not a certificate").unwrap();
        let found = config.validate(&ServiceName::ALL).unwrap_err().to_string();
        assert_eq!(found.matches("ca_file: ").count(), 1, "{found}");
    }

    #[test]
    fn an_https_collector_needs_its_ca_bundle_and_a_client_certificate_comes_whole() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("collector-ca.pem");
        let collector = crate::pki::generate_ca("collector ca").unwrap();
        std::fs::write(&ca, collector.cert_pem.as_bytes()).unwrap();
        let not_pem = dir.path().join("not-a-bundle.pem");
        std::fs::write(&not_pem, b"not a certificate").unwrap();
        let problems = |telemetry: crate::telemetry::TelemetryConfig| {
            let config = Config {
                telemetry,
                ..Config::default()
            };
            match config.validate(&[ServiceName::Audit]) {
                Ok(()) => Vec::new(),
                Err(err) => err
                    .to_string()
                    .lines()
                    .filter(|l| l.contains("telemetry."))
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            }
        };
        let https = || crate::telemetry::TelemetryConfig {
            otlp_endpoint: Some("https://otel-collector:4317".into()),
            ..Default::default()
        };
        let found = problems(https());
        assert!(
            found
                .iter()
                .any(|l| l.contains("telemetry.otlp_ca_file: is required")),
            "{found:?}"
        );
        assert!(
            problems(crate::telemetry::TelemetryConfig {
                otlp_ca_file: Some(ca.clone()),
                ..https()
            })
            .is_empty()
        );
        let found = problems(crate::telemetry::TelemetryConfig {
            otlp_endpoint: Some("http://otel-collector:4317".into()),
            otlp_ca_file: Some(ca.clone()),
            ..Default::default()
        });
        assert!(
            found
                .iter()
                .any(|l| l.contains("telemetry.otlp_ca_file: applies only to an https://")),
            "{found:?}"
        );
        let found = problems(crate::telemetry::TelemetryConfig {
            otlp_ca_file: Some(ca.clone()),
            otlp_cert_file: Some(ca.clone()),
            ..https()
        });
        assert!(
            found
                .iter()
                .any(|l| l.contains("telemetry.otlp_cert_file: comes with telemetry.otlp_key_file")),
            "{found:?}"
        );
        // A client certificate with another certificate's key.
        let leaf = |name| {
            crate::pki::issue(&collector, &crate::pki::LeafSpec::client("otel", name)).unwrap()
        };
        let (mine, other) = (leaf("confidant"), leaf("someone-else"));
        let cert = dir.path().join("client.pem");
        let key = dir.path().join("client-key.pem");
        std::fs::write(&cert, mine.cert_pem.as_bytes()).unwrap();
        std::fs::write(&key, other.key_pem.as_bytes()).unwrap();
        let with_client = || crate::telemetry::TelemetryConfig {
            otlp_ca_file: Some(ca.clone()),
            otlp_cert_file: Some(cert.clone()),
            otlp_key_file: Some(key.clone()),
            ..https()
        };
        let found = problems(with_client());
        assert!(
            found
                .iter()
                .any(|l| l.starts_with("  - telemetry.otlp_key_file: ")),
            "{found:?}"
        );
        std::fs::write(&key, mine.key_pem.as_bytes()).unwrap();
        assert!(problems(with_client()).is_empty());
        let found = problems(crate::telemetry::TelemetryConfig {
            otlp_ca_file: Some(not_pem.clone()),
            ..https()
        });
        assert!(
            found
                .iter()
                .any(|l| l.contains("telemetry.otlp_ca_file: no certificate found")),
            "{found:?}"
        );
        let found = problems(crate::telemetry::TelemetryConfig {
            otlp_ca_file: Some(dir.path().join("missing.pem")),
            ..https()
        });
        assert!(
            found
                .iter()
                .any(|l| l.contains("telemetry.otlp_ca_file: file does not exist")),
            "{found:?}"
        );
    }
}
