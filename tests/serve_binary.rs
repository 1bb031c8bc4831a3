//! `confidant serve`, `migrate` and `certs` from the outside: production
//! mode on PostgreSQL and Redis, and the refusals that protect it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{Process, confidant, free_ports, wait_serving};
use confidant_runtime::tls::TlsFiles;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = confidant();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("confidant runs");
    common::exit_and_output(out)
}

#[test]
fn serve_refuses_an_incomplete_configuration_naming_every_setting() {
    let (code, out) = run(&["serve", "--services", "vault"], &[]);
    assert_eq!(code, 64, "{out}");
    for setting in [
        "ca_file",
        "services.vault.database_url",
        "services.vault.cert_file",
        "services.vault.key_file",
        "peers.audit",
        "redis.url",
        "kms.provider",
    ] {
        assert!(out.contains(setting), "{setting} not named in:\n{out}");
    }
}

#[test]
fn serve_refuses_unknown_services_and_unknown_settings() {
    let (code, out) = run(&["serve", "--services", "vault,billing"], &[]);
    assert_ne!(code, 0);
    assert!(out.contains("billing"), "{out}");

    let (code, out) = run(
        &["serve", "--services", "audit"],
        &[("CONFIDANT_REDIS__ADDRESS", "redis://127.0.0.1")],
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("address"), "{out}");
}

fn write_certs(dir: &Path) {
    let d = dir.to_str().unwrap();
    assert_eq!(run(&["certs", "init", "--dir", d], &[]).0, 0);
    for name in ["audit", "vault"] {
        let (code, out) = run(
            &[
                "certs",
                "issue",
                "--dir",
                d,
                "--name",
                name,
                "--host",
                "localhost",
                "--host",
                "127.0.0.1",
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains(&format!("spiffe://confidant.local/{name}")),
            "{out}"
        );
    }
    let (code, out) = run(&["certs", "issue", "--dir", d, "--name", "operator"], &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn serve_refuses_the_local_kms_without_the_insecure_flag() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    write_certs(&pki);
    let p = |name: &str| pki.join(name).display().to_string();
    let config = dir.path().join("confidant.toml");
    std::fs::write(
        &config,
        format!(
            "ca_file = \"{}\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"\n[kms]\nprovider = \"local\"\nlocal_key_file = \"{}\"\n\
             [peers]\naudit = \"https://127.0.0.1:7105\"\n[services.vault]\ndatabase_url = \"postgres://x@127.0.0.1/x\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            p("ca.pem"),
            dir.path().join("kms.key").display(),
            p("vault.pem"),
            p("vault-key.pem"),
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let (code, out) = run(&["serve", "--services", "vault", "--config", cfg], &[]);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("kms.provider") && out.contains("refused in production"),
        "{out}"
    );
}

/// The serving process's `worker_threads`: a count that no machine here has
/// as cores, so the default (one per core) cannot pass for it.
const WORKERS: usize = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_services_run_on_postgres_and_redis_once_migrated() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let data =
        confidant::sandbox::SandboxData::new(confidant_runtime::storage::Backend::Postgres).await;
    let database_url = data.database_url(confidant_runtime::ServiceName::Audit);
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    write_certs(&pki);
    let p = |name: &str| pki.join(name).display().to_string();
    let [audit_port, vault_port, probe_port] = free_ports();
    let audit_key = dir.path().join("audit.key");
    let key_arg = audit_key.to_str().unwrap();
    let (code, out) = run(&["keys", "signing", "--out", key_arg], &[]);
    assert_eq!(code, 0, "{out}");
    let written = std::fs::read(&audit_key).unwrap();
    let (code, out) = run(&["audit", "keygen", "--out", key_arg], &[]);
    assert_ne!(code, 0, "an existing signing key was overwritten: {out}");
    let (code, out) = run(&["keys", "signing", "--out", key_arg], &[]);
    assert_ne!(code, 0, "an existing signing key was overwritten: {out}");
    assert_eq!(std::fs::read(&audit_key).unwrap(), written);
    let pepper = dir.path().join("pepper");
    let pepper_arg = pepper.to_str().unwrap();
    let (code, out) = run(&["keys", "secret", "--out", pepper_arg], &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read(&pepper).unwrap().len(), 32);
    let (code, out) = run(&["keys", "secret", "--out", pepper_arg], &[]);
    assert_ne!(code, 0, "an existing secret was overwritten: {out}");
    let config = dir.path().join("confidant.toml");
    std::fs::write(
        &config,
        format!(
            "ca_file = \"{ca}\"\nshutdown_grace_seconds = 5\ntls_reload_seconds = 0\nprobe_listen = \"127.0.0.1:{probe_port}\"\n\
             worker_threads = {WORKERS}\n\
             [redis]\nurl = \"{redis}\"\nkey_prefix = \"{prefix}:\"\n\
             [kms]\nprovider = \"local\"\nallow_insecure_local = true\nlocal_key_file = \"{kms}\"\n\
             [telemetry]\nlog_format = \"json\"\n\
             [audit]\nsigning_key_file = \"{audit_key}\"\norigin = \"firm.example/audit\"\n\
             [services.audit]\nlisten = \"127.0.0.1:{audit_port}\"\ndatabase_url = \"{db}\"\ncert_file = \"{ac}\"\nkey_file = \"{ak}\"\n\
             [services.vault]\nlisten = \"127.0.0.1:{vault_port}\"\ndatabase_url = \"{db}\"\ncert_file = \"{vc}\"\nkey_file = \"{vk}\"\n",
            ca = p("ca.pem"),
            redis = confidant_runtime::testing::redis_url(),
            prefix = confidant_runtime::testing::unique_name("serve"),
            kms = dir.path().join("kms.key").display(),
            audit_key = audit_key.display(),
            db = database_url,
            ac = p("audit.pem"),
            ak = p("audit-key.pem"),
            vc = p("vault.pem"),
            vk = p("vault-key.pem"),
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();

    // The configuration check accepts it without touching a database, and
    // names what is missing for a service it does not configure.
    let (code, out) = run(
        &[
            "serve",
            "--services",
            "audit,vault",
            "--config",
            cfg,
            "--check-config",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("configuration accepted for audit,vault"),
        "{out}"
    );
    let (code, out) = run(
        &[
            "serve",
            "--services",
            "retention",
            "--config",
            cfg,
            "--check-config",
        ],
        &[],
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("services.retention.database_url"), "{out}");

    // A schema that is behind is refused.
    let (code, out) = run(
        &["serve", "--services", "audit,vault", "--config", cfg],
        &[],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("confidant migrate"), "{out}");

    // `migrate` brings both schemas up to date; a second run is a no-op.
    for _ in 0..2 {
        let (code, out) = run(&["migrate", "--config", cfg], &[]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("audit: migrations applied") && out.contains("vault: migrations applied"),
            "{out}"
        );
    }

    let mut cmd = confidant();
    cmd.args(["serve", "--services", "audit,vault", "--config", cfg]);
    let mut server = Process::spawn(cmd, dir.path().join("serve.log"));
    let operator = TlsFiles {
        ca_file: pki.join("ca.pem"),
        cert_file: pki.join("operator.pem"),
        key_file: pki.join("operator-key.pem"),
    }
    .load()
    .unwrap();
    for port in [audit_port, vault_port] {
        wait_serving(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &operator,
            Duration::from_secs(30),
            || server.log(),
        )
        .await;
    }
    // What `keys public` says to publish of the audit key, named after the
    // configuration's log origin, is the verifier key the log announces.
    let announced = confidant_proto::audit::v1::audit_service_client::AuditServiceClient::new(
        confidant_runtime::client::connect(
            &format!("https://127.0.0.1:{audit_port}"),
            &operator,
            "localhost",
        )
        .await
        .unwrap(),
    )
    .get_log_info(confidant_proto::audit::v1::GetLogInfoRequest {})
    .await
    .unwrap()
    .into_inner()
    .verifier_key;
    assert!(announced.starts_with("firm.example/audit+"), "{announced}");
    let published = common::published_key(&audit_key, &["--config", cfg]);
    assert_eq!(published["audit_verifier_key"], announced.as_str());
    // Without the configuration, the built-in origin names another key.
    assert_ne!(
        common::published_key(&audit_key, &[])["audit_verifier_key"],
        announced.as_str()
    );
    // Nothing secret: the private key's seed (PKCS#8 bytes 16..48) appears
    // in none of the encodings it prints keys in.
    let printed = published.to_string();
    let seed = &written[16..48];
    {
        use base64::Engine as _;
        for encoded in [
            base64::engine::general_purpose::STANDARD.encode(seed),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed),
            hex::encode(seed),
        ] {
            assert!(!printed.contains(&encoded), "{printed}");
        }
    }

    // Probes without a client certificate reach health, and nothing else.
    let probe = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{probe_port}"))
        .unwrap()
        .connect()
        .await
        .expect("the probe listener answers in plaintext");
    for service in ["", "audit", "vault"] {
        let status = tonic_health::pb::health_client::HealthClient::new(probe.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 1, "{service:?} not SERVING on the probe port");
    }
    let refused = confidant_proto::vault::v1::vault_service_client::VaultServiceClient::new(probe)
        .list_scopes(confidant_proto::vault::v1::ListScopesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);

    // The vault's start travelled through its outbox into the audit log on
    // PostgreSQL.
    let audit_db = confidant_runtime::storage::Database::connect(
        &database_url,
        "audit",
        confidant_runtime::storage::PoolOptions::default(),
    )
    .await
    .unwrap();
    let confidant_runtime::storage::Database::Postgres(pool) = &audit_db else {
        panic!("expected postgres");
    };
    common::eventually(
        Duration::from_secs(15),
        "vault start event in the audit log",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM audit_events WHERE source_service = 'vault'",
            )
            .fetch_one(pool)
            .await
            .unwrap_or(0)
                == 1
        },
    )
    .await;
    audit_db.close().await;

    // A renewed certificate is served after SIGHUP, without a restart.
    let vault_addr = SocketAddr::from(([127, 0, 0, 1], vault_port));
    let (before, accepted) = confidant_runtime::testing::tls_handshake(vault_addr, &operator).await;
    assert_eq!(accepted, Ok(()));
    let (code, out) = run(
        &[
            "certs",
            "issue",
            "--dir",
            pki.to_str().unwrap(),
            "--name",
            "vault",
            "--host",
            "localhost",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    // Files changed but no signal yet (tls_reload_seconds = 0): unchanged.
    assert_eq!(
        confidant_runtime::testing::tls_handshake(vault_addr, &operator)
            .await
            .0
            .serial,
        before.serial
    );
    let pid = server.child.id().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut renewed = before.clone();
    for _ in 0..100 {
        renewed = confidant_runtime::testing::tls_handshake(vault_addr, &operator)
            .await
            .0;
        if renewed.serial != before.serial {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(renewed.serial, before.serial, "{}", server.log());
    assert_eq!(renewed.spiffe_id, before.spiffe_id);
    wait_serving(vault_addr, &operator, Duration::from_secs(10), || {
        server.log()
    })
    .await;
    let status = server.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", server.log());
    // Production logs are JSON lines carrying trace ids.
    let log = server.log();
    let logged = |message: &str| -> serde_json::Value {
        let line = log
            .lines()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("no {message:?} logged:\n{log}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
    };
    let appended = logged("audit events appended");
    assert_eq!(
        appended["trace_id"].as_str().map(str::len),
        Some(32),
        "{appended}"
    );
    let replaced = logged("tls certificate replaced from its files");
    assert_eq!(replaced["service"], "vault", "{replaced}");
    assert_eq!(replaced["serial"], renewed.serial.as_str(), "{replaced}");
    // The process ran its tasks on the threads the configuration asked for,
    // not one per core.
    let started = logged("runtime started");
    assert_eq!(
        started["worker_threads"].as_u64(),
        Some(WORKERS as u64),
        "{started}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_administrator_is_bootstrapped_once_without_any_account() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let args = [
        "admin",
        "bootstrap",
        "--data-dir",
        d,
        "--email",
        "Admin@Firm.Example",
        "--display-name",
        "First Admin",
    ];
    let (code, out) = run(&args, &[("CONFIDANT_BOOTSTRAP_PASSWORD", "short")]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("at least 12"), "{out}");

    let (code, out) = run(
        &args,
        &[("CONFIDANT_BOOTSTRAP_PASSWORD", "a long enough passphrase")],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(
        &args,
        &[("CONFIDANT_BOOTSTRAP_PASSWORD", "a long enough passphrase")],
    );
    assert_ne!(code, 0, "a second bootstrap succeeded: {out}");
    assert!(out.contains("exists already"), "{out}");

    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite:{}?mode=ro",
        data.join("identity.db").display()
    ))
    .await
    .unwrap();
    let (email, hash): (String, String) = sqlx::query_as(
        "SELECT s.email, c.password_hash FROM staff s JOIN staff_roles r ON r.staff_id = s.id \
         JOIN credentials c ON c.staff_id = s.id WHERE r.role = 'firm_administrator'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(email, "admin@firm.example");
    assert!(
        hash.starts_with("$argon2id$"),
        "the password is stored hashed"
    );
    assert!(!hash.contains("passphrase"));
}
