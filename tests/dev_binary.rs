//! `confidant dev` from the outside: a real process, real clients.
//!
//! This is the only test that uses the fixed dev ports 7101-7105.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Process, confidant, wait_serving};
use confidant_runtime::tls::TlsFiles;

const PORTS: [u16; 5] = [7101, 7102, 7103, 7104, 7105];

fn python_health_check(pki: &Path, with_cert: bool) -> (bool, String) {
    let script = common::repo_root().join("tests/clients/health_check.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg("--ca").arg(pki.join("ca.pem"));
    if with_cert {
        cmd.arg("--cert").arg(pki.join("operator.pem"));
        cmd.arg("--key").arg(pki.join("operator-key.pem"));
    }
    for port in PORTS {
        cmd.arg(format!("127.0.0.1:{port}"));
    }
    let out = cmd.output().expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// grpcurl (the README's client) with the operator certificate: whether it
/// succeeded, and what it printed. `scripts/test.sh` installs it and names
/// it in `CONFIDANT_GRPCURL`.
fn grpcurl(pki: &Path, args: &[&str]) -> (bool, String) {
    let program = std::env::var_os("CONFIDANT_GRPCURL").unwrap_or_else(|| "grpcurl".into());
    let out = Command::new(&program)
        .arg("-cacert")
        .arg(pki.join("ca.pem"))
        .arg("-cert")
        .arg(pki.join("operator.pem"))
        .arg("-key")
        .arg(pki.join("operator-key.pem"))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "grpcurl ({program:?}) runs: {e}; scripts/test.sh installs it (CONFIDANT_GRPCURL)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn audit_starts(data: &Path, source: &str) -> i64 {
    let url = format!("sqlite:{}?mode=ro", data.join("audit.db").display());
    let Ok(pool) = sqlx::SqlitePool::connect(&url).await else {
        return -1;
    };
    let n = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_events WHERE source_service = ?1 AND action = 'service.started'",
    )
    .bind(source)
    .fetch_one(&pool)
    .await
    .unwrap_or(-1);
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_all_five_services_over_mutual_tls_and_reuses_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = confidant();
    cmd.args(["dev", "--data-dir"]).arg(&data);
    let mut first = Process::spawn(cmd, dir.path().join("first.log"));

    let pki = data.join("pki");
    // The CA and operator certificate appear on first start.
    common::eventually(Duration::from_secs(30), "dev pki", || {
        let ready = pki.join("operator-key.pem").exists();
        async move { ready }
    })
    .await;
    let operator = TlsFiles {
        ca_file: pki.join("ca.pem"),
        cert_file: pki.join("operator.pem"),
        key_file: pki.join("operator-key.pem"),
    }
    .load()
    .unwrap();
    for port in PORTS {
        wait_serving(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &operator,
            Duration::from_secs(30),
            || first.log(),
        )
        .await;
    }

    // Its log, written to a file, is plain text: no terminal colour codes.
    common::eventually(Duration::from_secs(10), "the dev banner", || {
        let up = first.log().contains("confidant dev is up");
        async move { up }
    })
    .await;
    assert!(!first.log().contains('\u{1b}'), "{}", first.log());

    // A standard client (Python grpcio) with the operator certificate gets
    // SERVING from every port; without a certificate it gets nothing.
    let (ok, out) = python_health_check(&pki, true);
    assert!(ok, "grpcio health check failed:\n{out}");
    assert_eq!(out.matches("SERVING").count(), 5, "{out}");
    let (ok, out) = python_health_check(&pki, false);
    assert!(!ok, "a client without a certificate got through:\n{out}");
    assert!(!out.contains(" SERVING"), "{out}");

    // The README's grpcurl lines: health, and reflection listing what the
    // port serves (the vault's port, not the audit service's); a bad request
    // comes back with its field violations decoded.
    let (ok, out) = grpcurl(&pki, &["127.0.0.1:7105", "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("\"SERVING\""), "{out}");
    let (ok, out) = grpcurl(&pki, &["127.0.0.1:7105", "list"]);
    assert!(
        ok && out.contains("confidant.audit.v1.AuditService"),
        "{out}"
    );
    let (ok, out) = grpcurl(&pki, &["127.0.0.1:7103", "list"]);
    assert!(
        ok && out.contains("confidant.vault.v1.VaultService"),
        "{out}"
    );
    assert!(!out.contains("confidant.audit.v1.AuditService"), "{out}");
    let (ok, out) = grpcurl(
        &pki,
        &[
            "-d",
            r#"{"record_id": "not-an-id", "read_mask": {"paths": ["fields.passport_number", "surname"]}}"#,
            "127.0.0.1:7103",
            "confidant.vault.v1.VaultService/GetRecord",
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("Code: InvalidArgument"), "{out}");
    assert!(
        out.contains(r#"{"field":"record_id","description":"must be a UUID"}"#),
        "the BadRequest details are not decoded:\n{out}"
    );
    // grpcurl takes a read mask as an object of paths (not the string form
    // of protobuf's JSON mapping): the first path passes, the second lacks
    // `fields.` and is named.
    assert!(out.contains(r#""field":"read_mask.paths[1]""#), "{out}");
    assert!(!out.contains("read_mask.paths[0]"), "{out}");

    // Each service's start reached the audit log through its outbox.
    for source in ["identity", "intake", "vault", "retention"] {
        common::eventually(
            Duration::from_secs(15),
            "start events in the audit log",
            || async { audit_starts(&data, source).await == 1 },
        )
        .await;
    }

    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(pki.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let status = first.terminate(Duration::from_secs(20));
    assert!(
        status.success(),
        "dev exited with {status}:\n{}",
        first.log()
    );
    let log = first.log();
    assert!(log.contains("shutting down"), "{log}");

    // A second start reuses the CA, certificates and databases.
    let ca_before = std::fs::read(pki.join("ca.pem")).unwrap();
    let mut cmd = confidant();
    cmd.args(["dev", "--data-dir"]).arg(&data);
    let mut second = Process::spawn(cmd, dir.path().join("second.log"));
    for port in PORTS {
        wait_serving(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &operator,
            Duration::from_secs(30),
            || second.log(),
        )
        .await;
    }
    assert_eq!(
        std::fs::read(pki.join("ca.pem")).unwrap(),
        ca_before,
        "the CA was regenerated"
    );
    common::eventually(Duration::from_secs(15), "second start event", || async {
        audit_starts(&data, "vault").await == 2
    })
    .await;
    let status = second.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", second.log());
}
