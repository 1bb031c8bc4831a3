//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

pub mod directory;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use confidant_runtime::tls::TlsMaterial;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The `confidant` binary cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_confidant")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A command for the binary with a clean `CONFIDANT_*` environment.
pub fn confidant() -> Command {
    let mut cmd = Command::new(binary());
    for (key, _) in std::env::vars() {
        if key.starts_with("CONFIDANT_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A child process killed when dropped, its output in a log file.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn confidant");
        Self { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "confidant did not stop within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The health status of the server at `addr`, called with `tls`.
pub async fn health(addr: SocketAddr, tls: &TlsMaterial) -> Result<i32, tonic::Status> {
    let channel = confidant_runtime::client::connect(&format!("https://{addr}"), tls, "localhost")
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status)
}

/// Waits (bounded) until the server at `addr` reports SERVING.
pub async fn wait_serving(
    addr: SocketAddr,
    tls: &TlsMaterial,
    within: Duration,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    loop {
        if matches!(health(addr, tls).await, Ok(1)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} not SERVING within {within:?}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `confidant keys public --key <key> <extra…>` says to publish of a
/// signing key (it must succeed).
pub fn published_key(key: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let out = confidant()
        .args(["keys", "public", "--key"])
        .arg(key)
        .args(extra)
        .output()
        .expect("confidant runs");
    let (code, out) = exit_and_output(out);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(out.trim()).expect("one JSON object")
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct free ports on 127.0.0.1: all `N` sockets are held open
/// together while the ports are picked (picked one at a time, the kernel
/// may hand out the same port twice).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    held.map(|l| l.local_addr().expect("addr").port())
}

/// Polls `check` (bounded) until it returns true.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A list read whole in pages of `size` (AIP-158), through `fetch(size,
/// page_token) -> (items, next_page_token)`: no page is larger than
/// `size`, only the last has no next token, and the pages together are
/// what one listing of everything (`fetch(0 or a large size, "")`) gives,
/// in the same order. Also checks that a token the list never gave is
/// refused as INVALID_ARGUMENT naming `page_token`, and a negative size as
/// naming `page_size`. Returns the number of pages.
pub async fn check_pages<T, F, Fut>(whole: i32, size: i32, mut fetch: F) -> usize
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut(i32, String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let (everything, next) = fetch(whole, String::new()).await.expect("whole list");
    assert!(next.is_empty(), "one listing holds everything");
    assert!(
        everything.len() > usize::try_from(size).unwrap_or(0),
        "{} items cannot show pages of {size}",
        everything.len()
    );
    let mut paged = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let (items, next) = fetch(size, token).await.expect("a page");
        pages += 1;
        assert!(
            items.len() <= usize::try_from(size).unwrap_or(0),
            "page {pages} too large"
        );
        paged.extend(items);
        if next.is_empty() {
            break;
        }
        assert!(pages < 1000, "pages never end");
        token = next;
    }
    assert_eq!(paged, everything, "the pages together are the whole list");
    let bad = fetch(size, "bm90IGEgdG9rZW4".into())
        .await
        .expect_err("a made-up page token");
    assert_eq!(violated_fields(&bad), ["page_token"]);
    let bad = fetch(-1, String::new())
        .await
        .expect_err("a negative page size");
    assert_eq!(violated_fields(&bad), ["page_size"]);
    pages
}

/// The `google.rpc.ErrorInfo` reason of a status, empty when there is none.
pub fn error_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// The fields named by an INVALID_ARGUMENT status's BadRequest details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

/// The subjects and bodies of the e-mails identity sent to `address`
/// (through the sandbox's notifications file), in order.
pub fn mails_to(data: &confidant::sandbox::SandboxData, address: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(data.path().join("notifications.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["address"] == address)
        .map(|m| {
            let text = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
            (text("subject"), text("body"))
        })
        .collect()
}

/// A mutual-TLS channel to `service` with the certificate of `name` from the
/// sandbox CA.
pub async fn channel(
    data: &confidant::sandbox::SandboxData,
    sandbox: &confidant::sandbox::Sandbox,
    service: confidant_runtime::ServiceName,
    name: &str,
) -> confidant_runtime::client::PeerChannel {
    confidant_runtime::client::connect(&sandbox.url(service), &data.client_tls(name), "localhost")
        .await
        .expect("reachable")
}

/// An identity client with the certificate of `name` from the sandbox CA.
pub async fn identity_client(
    data: &confidant::sandbox::SandboxData,
    sandbox: &confidant::sandbox::Sandbox,
    name: &str,
) -> confidant_proto::identity::v1::identity_service_client::IdentityServiceClient<
    confidant_runtime::client::PeerChannel,
> {
    let tls = data.client_tls(name);
    confidant_proto::identity::v1::identity_service_client::IdentityServiceClient::new(
        confidant_runtime::client::connect(
            &sandbox.url(confidant_runtime::ServiceName::Identity),
            &tls,
            "localhost",
        )
        .await
        .expect("identity reachable"),
    )
}

/// Runs `confidant audit <args>` against the audit service at `url` with
/// the operator certificate; returns the exit code and the output.
pub fn audit_cli(
    data: &confidant::sandbox::SandboxData,
    url: &str,
    args: &[&str],
) -> (i32, String) {
    let tls = data.operator_files();
    let mut cmd = confidant();
    cmd.args(["audit"]).args(args);
    let connects = !matches!(args.first(), Some(&"verify-evidence")) && !args.contains(&"--file");
    if connects {
        cmd.arg("--service").arg(url);
        cmd.arg("--ca")
            .arg(&tls.ca_file)
            .arg("--cert")
            .arg(&tls.cert_file)
            .arg("--key")
            .arg(&tls.key_file);
    }
    exit_and_output(cmd.output().expect("confidant runs"))
}

/// `confidant directory` against the sandbox's identity service with the
/// operator certificate, its command still to be added.
pub fn directory_command(
    data: &confidant::sandbox::SandboxData,
    sandbox: &confidant::sandbox::Sandbox,
) -> std::process::Command {
    let tls = data.operator_files();
    let mut cmd = confidant();
    cmd.arg("directory")
        .arg("--service")
        .arg(sandbox.url(confidant_runtime::ServiceName::Identity))
        .arg("--ca")
        .arg(&tls.ca_file)
        .arg("--cert")
        .arg(&tls.cert_file)
        .arg("--key")
        .arg(&tls.key_file);
    cmd
}

/// [`directory_command`] with `args`; its standard output, once it has
/// succeeded.
pub fn directory_cli(
    data: &confidant::sandbox::SandboxData,
    sandbox: &confidant::sandbox::Sandbox,
    args: &[&str],
) -> String {
    let out = directory_command(data, sandbox)
        .args(args)
        .output()
        .expect("confidant runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stores a one-field note for `client_id` (and `matter_id`, if not empty)
/// in the vault through `vault`; returns the scope it went to.
pub async fn store_note(
    vault: &mut confidant_proto::vault::v1::vault_service_client::VaultServiceClient<
        confidant_runtime::client::PeerChannel,
    >,
    client_id: &str,
    matter_id: &str,
    category: confidant_proto::vault::v1::DataCategory,
) -> String {
    store_record(vault, client_id, matter_id, category, false)
        .await
        .scope_id
}

/// Each scope of `client_id` as the vault lists it (a first page, enough
/// for a test's client), by id.
pub async fn vault_scopes(
    vault: &confidant_proto::vault::v1::vault_service_client::VaultServiceClient<
        confidant_runtime::client::PeerChannel,
    >,
    client_id: &str,
) -> std::collections::BTreeMap<String, confidant_proto::vault::v1::Scope> {
    vault
        .clone()
        .list_scopes(confidant_proto::vault::v1::ListScopesRequest {
            client_id: client_id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("scopes listed")
        .into_inner()
        .scopes
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect()
}

/// Stores a one-field note, marked as an original that belongs to the
/// client if `original`; returns its metadata.
pub async fn store_record(
    vault: &mut confidant_proto::vault::v1::vault_service_client::VaultServiceClient<
        confidant_runtime::client::PeerChannel,
    >,
    client_id: &str,
    matter_id: &str,
    category: confidant_proto::vault::v1::DataCategory,
    original: bool,
) -> confidant_proto::vault::v1::RecordMetadata {
    use confidant_proto::vault::v1 as pb;
    vault
        .create_record(pb::CreateRecordRequest {
            record: Some(pb::NewRecord {
                client_id: client_id.into(),
                matter_id: matter_id.into(),
                category: category as i32,
                fields: vec![field("note", pb::FieldType::Text, "kept until due")],
                original,
            }),
            request_id: String::new(),
        })
        .await
        .expect("record stored")
        .into_inner()
        .record
        .expect("record")
}

/// The messages of an UploadDocument call: `header`, then `content` in
/// chunks.
pub fn upload_messages(
    header: confidant_proto::vault::v1::DocumentHeader,
    content: &[u8],
) -> Vec<confidant_proto::vault::v1::UploadDocumentRequest> {
    use confidant_proto::vault::v1::UploadDocumentRequest;
    use confidant_proto::vault::v1::upload_document_request::Part;
    let mut messages = vec![UploadDocumentRequest {
        part: Some(Part::Header(header)),
    }];
    for chunk in content.chunks(200_000) {
        messages.push(UploadDocumentRequest {
            part: Some(Part::Chunk(chunk.to_vec())),
        });
    }
    messages
}

/// A field of a record to store.
pub fn field(
    name: &str,
    t: confidant_proto::vault::v1::FieldType,
    value: &str,
) -> confidant_proto::vault::v1::Field {
    confidant_proto::vault::v1::Field {
        name: name.into(),
        r#type: t as i32,
        value: value.into(),
        masked: false,
    }
}

/// Stores `record` for the staff member whose access token is `token`;
/// returns its id.
pub async fn store_as(
    vault: &mut confidant_proto::vault::v1::vault_service_client::VaultServiceClient<
        confidant_runtime::client::PeerChannel,
    >,
    token: &str,
    record: confidant_proto::vault::v1::NewRecord,
) -> String {
    stored_as(vault, token, record).await.id
}

/// Stores `record` for the staff member whose access token is `token`;
/// returns its metadata.
pub async fn stored_as(
    vault: &mut confidant_proto::vault::v1::vault_service_client::VaultServiceClient<
        confidant_runtime::client::PeerChannel,
    >,
    token: &str,
    record: confidant_proto::vault::v1::NewRecord,
) -> confidant_proto::vault::v1::RecordMetadata {
    vault
        .create_record(directory::as_staff(
            token,
            confidant_proto::vault::v1::CreateRecordRequest {
                record: Some(record),
                request_id: String::new(),
            },
        ))
        .await
        .expect("record stored")
        .into_inner()
        .record
        .expect("record")
}

/// The database of `service` in a sandbox's data (its PostgreSQL schema or
/// its SQLite file), opened as the service opens it, for a test that looks
/// at what was stored.
pub async fn service_db(
    data: &confidant::sandbox::SandboxData,
    service: confidant_runtime::ServiceName,
) -> confidant_runtime::storage::Database {
    confidant_runtime::storage::Database::connect(
        &data.database_url(service),
        service.as_str(),
        confidant_runtime::storage::PoolOptions::default(),
    )
    .await
    .expect("the service's database")
}

/// A backup of `service`'s database, taken while it runs, as an operator
/// takes one: `VACUUM INTO` a file (SQLite), `pg_dump` of its schema
/// (PostgreSQL).
pub async fn back_up(
    data: &confidant::sandbox::SandboxData,
    service: confidant_runtime::ServiceName,
) -> PathBuf {
    let url = data.database_url(service);
    match data.backend() {
        confidant_runtime::storage::Backend::Sqlite => {
            use sqlx::Connection;
            let file = data.path().join(format!("{service}-backup.db"));
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query("VACUUM INTO ?")
                .bind(file.display().to_string())
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            file
        }
        confidant_runtime::storage::Backend::Postgres => {
            let file = data.path().join(format!("{service}-backup.dump"));
            let out = Command::new("pg_dump")
                .arg("--format=custom")
                .arg(format!("--schema={service}"))
                .arg("--file")
                .arg(&file)
                .arg(&url)
                .output()
                .expect("pg_dump runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            file
        }
    }
}

/// Puts `backup` back as `service`'s database, with the service stopped:
/// the file replaces the database (SQLite); the schema is dropped and
/// `pg_restore`d (PostgreSQL).
pub async fn restore(
    data: &confidant::sandbox::SandboxData,
    service: confidant_runtime::ServiceName,
    backup: &Path,
) {
    let url = data.database_url(service);
    match data.backend() {
        confidant_runtime::storage::Backend::Sqlite => {
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(data.path().join(format!("{service}.db{suffix}")));
            }
            std::fs::copy(backup, data.path().join(format!("{service}.db"))).unwrap();
        }
        confidant_runtime::storage::Backend::Postgres => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA \"{service}\" CASCADE"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
            conn.close().await.unwrap();
            let out = Command::new("pg_restore")
                .arg("--dbname")
                .arg(&url)
                .arg(backup)
                .output()
                .expect("pg_restore runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `confidant restore <args> --config <the configuration of `spec` on
/// `data`>`: exit code and output.
pub fn restore_command(
    data: &confidant::sandbox::SandboxData,
    spec: &confidant::sandbox::SandboxSpec,
    args: &[&str],
) -> (i32, String) {
    let file = data.path().join("restore.toml");
    let config = confidant::sandbox::config_table(data, spec);
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    exit_and_output(
        confidant()
            .arg("restore")
            .args(args)
            .arg("--config")
            .arg(&file)
            .output()
            .expect("confidant runs"),
    )
}

/// A finished command's exit code (-1 for a signal) and its standard
/// output followed by its standard error.
pub fn exit_and_output(out: std::process::Output) -> (i32, String) {
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Waits up to 20 s for the audit log's latest checkpoint to cover more
/// than `size` events; its size and root.
pub async fn checkpoint_beyond(
    audit: &confidant_proto::audit::v1::audit_service_client::AuditServiceClient<
        confidant_runtime::client::PeerChannel,
    >,
    size: i64,
) -> (i64, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let latest = audit
            .clone()
            .get_checkpoint(confidant_proto::audit::v1::GetCheckpointRequest { tree_size: 0 })
            .await
            .ok()
            .and_then(|r| r.into_inner().checkpoint);
        if let Some(c) = latest.filter(|c| c.tree_size > size) {
            return (c.tree_size, c.root_hash);
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of more than {size} events within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Exports the sandbox's audit log with `confidant audit export` once a
/// signed checkpoint covers the event at `leaf`; returns the export's path
/// (as an argument) and the log's verifier key.
pub async fn exported_log(
    data: &confidant::sandbox::SandboxData,
    sandbox: &confidant::sandbox::Sandbox,
    log: &confidant_proto::audit::v1::audit_service_client::AuditServiceClient<
        confidant_runtime::client::PeerChannel,
    >,
    leaf: i64,
) -> (String, String) {
    checkpoint_beyond(log, leaf).await;
    let key = log
        .clone()
        .get_log_info(confidant_proto::audit::v1::GetLogInfoRequest {})
        .await
        .expect("log info")
        .into_inner()
        .verifier_key;
    let export = data.path().join("log.jsonl").display().to_string();
    let (code, out) = audit_cli(
        data,
        &sandbox.url(confidant_runtime::ServiceName::Audit),
        &["export", "--out", &export],
    );
    assert_eq!(code, 0, "{out}");
    (export, key)
}

/// The log position of the event of `action` about resource `id`, once the
/// audit log holds it (waiting up to 20 seconds).
pub async fn logged_leaf(
    log: &confidant_proto::audit::v1::audit_service_client::AuditServiceClient<
        confidant_runtime::client::PeerChannel,
    >,
    action: &str,
    id: &str,
) -> i64 {
    let find = || {
        let (mut log, action, id) = (log.clone(), action.to_owned(), id.to_owned());
        async move {
            logged_page(&mut log, "", "", &action)
                .await
                .iter()
                .find(|e| {
                    e.event
                        .as_ref()
                        .and_then(|e| e.resource.as_ref())
                        .is_some_and(|r| r.id == id)
                })
                .map(|e| e.leaf_index)
        }
    };
    eventually(Duration::from_secs(20), action, || {
        let found = find();
        async move { found.await.is_some() }
    })
    .await;
    find().await.expect("logged")
}

/// The (`change`, `result`) of each line of a `confidant restore` output/// The (`change`, `result`) of each line of a `confidant restore` output
/// about `id` (every line's, if `id` is empty).
pub fn restore_results(out: &str, id: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("summary").is_none() && (id.is_empty() || v["id"] == id))
        .map(|v| {
            (
                v["change"].as_str().unwrap_or_default().to_owned(),
                v["result"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The verifier key of a log that is not the sandbox's: a fresh signing
/// key under the same name.
pub fn other_log_key() -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.key");
    confidant_audit::write_signing_key(&path).unwrap();
    confidant_audit::checkpoint::Signer::from_pkcs8(
        "confidant.local/audit",
        &std::fs::read(&path).unwrap(),
    )
    .unwrap()
    .verifier_key()
}

/// The events about `client_id` that `source` logged as `action` (each
/// filter unless empty; one page of up to 1,000).
pub async fn logged_events(
    audit: &mut confidant_proto::audit::v1::audit_service_client::AuditServiceClient<
        confidant_runtime::client::PeerChannel,
    >,
    client_id: &str,
    source: &str,
    action: &str,
) -> Vec<confidant_proto::audit::v1::AuditEvent> {
    logged_page(audit, client_id, source, action)
        .await
        .into_iter()
        .filter_map(|e| e.event)
        .collect()
}

/// [`logged_events`] with their positions in the log.
async fn logged_page(
    audit: &mut confidant_proto::audit::v1::audit_service_client::AuditServiceClient<
        confidant_runtime::client::PeerChannel,
    >,
    client_id: &str,
    source: &str,
    action: &str,
) -> Vec<confidant_proto::audit::v1::LoggedEvent> {
    audit
        .list_events(confidant_proto::audit::v1::ListEventsRequest {
            client_id: client_id.into(),
            action: action.into(),
            source_service: source.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("events listed")
        .into_inner()
        .events
}

/// Every item of a paged list: `fetch(page_token)` returns a page's item
/// ids and its next page token (empty on the last). Returns the ids in
/// order and how many pages it took.
pub async fn all_pages<F, Fut>(mut fetch: F) -> (Vec<String>, usize)
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = (Vec<String>, String)>,
{
    let (mut ids, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let (page, next) = fetch(token).await;
        pages += 1;
        ids.extend(page);
        if next.is_empty() {
            return (ids, pages);
        }
        token = next;
    }
}
