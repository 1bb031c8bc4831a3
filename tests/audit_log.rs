//! The audit log from the outside: signed checkpoints, proofs, export and
//! evidence through the real CLI, and an edit made directly in the database
//! named by `confidant audit verify`. On SQLite and on PostgreSQL.

mod common;

use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec};
use confidant_audit::checkpoint::Verifier;
use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
use confidant_proto::audit::v1::{
    AppendEventsRequest, ExportLogRequest, GetCheckpointRequest, GetConsistencyProofRequest,
    GetInclusionProofRequest, GetLogInfoRequest, ListClientAccessHistoryRequest, ListEventsRequest,
    Outcome,
};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, service_event};
use confidant_runtime::client::PeerChannel;
use confidant_runtime::storage::{Backend, Database};
use tonic_types::StatusExt;

fn cli(data: &SandboxData, url: &str, args: &[&str]) -> (i32, String) {
    common::audit_cli(data, url, args)
}

async fn client(data: &SandboxData, url: &str, name: &str) -> AuditServiceClient<PeerChannel> {
    let tls = data.client_tls(name);
    AuditServiceClient::new(
        confidant_runtime::client::connect(url, &tls, "localhost")
            .await
            .unwrap(),
    )
}

async fn tamper_first_vault_event(data: &SandboxData) -> String {
    let db = common::service_db(data, ServiceName::Audit).await;
    let id = match &db {
        Database::Postgres(pool) => {
            let id: uuid::Uuid = sqlx::query_scalar(
                "SELECT event_id FROM audit_events WHERE source_service = 'vault' ORDER BY idx LIMIT 1",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER USER")
                .execute(pool)
                .await
                .unwrap();
            sqlx::query("UPDATE audit_events SET payload = 'forged'::bytea WHERE event_id = $1")
                .bind(id)
                .execute(pool)
                .await
                .unwrap();
            id.to_string()
        }
        Database::Sqlite(pool) => {
            let id: String = sqlx::query_scalar(
                "SELECT event_id FROM audit_events WHERE source_service = 'vault' ORDER BY idx LIMIT 1",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            sqlx::query("DROP TRIGGER audit_events_no_update")
                .execute(pool)
                .await
                .unwrap();
            sqlx::query("UPDATE audit_events SET payload = X'666f72676564' WHERE event_id = ?1")
                .bind(&id)
                .execute(pool)
                .await
                .unwrap();
            id
        }
    };
    db.close().await;
    id
}

async fn the_log_proves_itself_and_names_an_edited_event(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Audit, ServiceName::Vault]),
    )
    .await;
    let url = sandbox.url(ServiceName::Audit);
    let mut operator = client(&data, &url, "operator").await;
    let key = operator
        .get_log_info(GetLogInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .verifier_key;

    // Wait for a checkpoint that covers the vault's start.
    common::checkpoint_beyond(&operator, 1).await;

    let (code, out) = cli(&data, &url, &["verify", "--public-key", &key]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK"), "{out}");

    // Export to a file and verify it offline.
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("log.jsonl");
    let (code, out) = cli(&data, &url, &["export", "--out", export.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(text.contains("\"action\":\"service.started\""), "{text}");
    let (code, out) = cli(
        &data,
        &url,
        &[
            "verify",
            "--file",
            export.to_str().unwrap(),
            "--public-key",
            &key,
        ],
    );
    assert_eq!(code, 0, "{out}");

    // An evidence bundle for the vault's start verifies offline; an edited
    // one does not.
    let vault_event = text
        .lines()
        .find(|l| l.contains("\"source_service\":\"vault\""))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["event_id"].as_str().map(str::to_owned))
        .expect("vault event in export");
    let bundle = dir.path().join("bundle.json");
    let (code, out) = cli(
        &data,
        &url,
        &[
            "evidence",
            "--event-id",
            &vault_event,
            "--out",
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(
        &data,
        &url,
        &[
            "verify-evidence",
            "--file",
            bundle.to_str().unwrap(),
            "--public-key",
            &key,
        ],
    );
    assert_eq!(code, 0, "{out}");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap();
    doc["index"] = serde_json::json!(doc["index"].as_u64().unwrap() + 1);
    std::fs::write(&bundle, doc.to_string()).unwrap();
    let (code, out) = cli(
        &data,
        &url,
        &[
            "verify-evidence",
            "--file",
            bundle.to_str().unwrap(),
            "--public-key",
            &key,
        ],
    );
    assert_eq!(code, 65, "{out}");

    // Someone with database access edits the vault's event.
    let edited = tamper_first_vault_event(&data).await;
    let (code, out) = cli(&data, &url, &["verify", "--public-key", &key]);
    assert_eq!(code, 65, "{out}");
    assert!(
        out.contains(&edited),
        "the verifier did not name {edited}:\n{out}"
    );
    sandbox.stop().await;
}

async fn proof_requests_are_checked_and_exports_are_for_readers_only(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(&data, SandboxSpec::of(&[ServiceName::Audit])).await;
    let url = sandbox.url(ServiceName::Audit);
    let mut operator = client(&data, &url, "operator").await;

    let err = operator
        .get_inclusion_proof(GetInclusionProofRequest {
            event_id: "nope".into(),
            leaf_index: -1,
            tree_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let details = err.get_error_details();
    let fields: Vec<_> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|f| f.field.clone())
        .collect();
    assert_eq!(fields, ["event_id", "leaf_index"]);

    let err = operator
        .get_consistency_proof(GetConsistencyProofRequest {
            first_tree_size: 5,
            second_tree_size: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let err = operator
        .get_inclusion_proof(GetInclusionProofRequest {
            event_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err.code(), tonic::Code::NotFound), "{err:?}");

    let denied = client(&data, &url, "vault")
        .await
        .export_log(ExportLogRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    sandbox.stop().await;
}

async fn a_clients_access_history_is_searchable_and_shows_no_internals(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(&data, SandboxSpec::of(&[ServiceName::Audit])).await;
    let url = sandbox.url(ServiceName::Audit);
    let client_id = uuid::Uuid::new_v4().to_string();
    let events: Vec<_> = (0..5)
        .map(|i| {
            let mut e = service_event(
                ServiceName::Vault,
                "confidant.local",
                Action::ServiceStarted,
                Outcome::Allowed,
            );
            let r = e.resource.as_mut().unwrap();
            r.client_id = client_id.clone();
            r.data_category = "contact-details".into();
            e.purpose = if i % 2 == 0 {
                "legal-advice"
            } else {
                "billing"
            }
            .into();
            if i == 4 {
                e.action = Action::VaultRecordRead.as_str().into();
                e.disclosed_fields = vec!["email".into()];
            }
            e
        })
        .collect();
    client(&data, &url, "vault")
        .await
        .append_events(AppendEventsRequest {
            events: events.clone(),
        })
        .await
        .unwrap();

    let mut operator = client(&data, &url, "operator").await;
    let first = operator
        .list_client_access_history(ListClientAccessHistoryRequest {
            client_id: client_id.clone(),
            page_size: 3,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.accesses.len(), 3);
    assert_eq!(first.accesses[0].event_id, events[4].id, "newest first");
    assert_eq!(first.accesses[0].purpose, "legal-advice");
    assert_eq!(first.accesses[0].data_category, "contact-details");
    // The client sees which of their fields a read returned.
    assert_eq!(first.accesses[0].disclosed_fields, ["email"]);
    assert!(first.accesses[1].disclosed_fields.is_empty());
    assert!(
        first
            .accesses
            .iter()
            .all(|a| a.actor.as_ref().is_some_and(|a| a.peer_identity.is_empty()))
    );
    let second = operator
        .list_client_access_history(ListClientAccessHistoryRequest {
            client_id: client_id.clone(),
            page_size: 3,
            page_token: first.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.accesses.len(), 2);
    assert!(second.next_page_token.is_empty());

    let by_purpose = operator
        .list_events(ListEventsRequest {
            client_id: client_id.clone(),
            source_service: "vault".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_purpose.events.len(), 5);

    let err = operator
        .list_events(ListEventsRequest {
            client_id: "x".into(),
            action: "vault.record.peek".into(),
            page_token: "garbage".into(),
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let details = err.get_error_details();
    let fields: Vec<_> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|f| f.field.clone())
        .collect();
    assert_eq!(fields, ["client_id", "action", "page_token", "page_size"]);

    // A service identity is not an audit reader.
    let denied = client(&data, &url, "intake")
        .await
        .list_client_access_history(ListClientAccessHistoryRequest {
            client_id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    sandbox.stop().await;
}

async fn verifier_key(operator: &mut AuditServiceClient<PeerChannel>) -> String {
    operator
        .get_log_info(GetLogInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .verifier_key
}

/// Waits for a checkpoint signed by `key` and returns its size.
async fn checkpoint_signed_by(operator: &AuditServiceClient<PeerChannel>, key: &str) -> i64 {
    let key = Verifier::parse(key).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let latest = operator
            .clone()
            .get_checkpoint(GetCheckpointRequest { tree_size: 0 })
            .await
            .ok()
            .and_then(|r| r.into_inner().checkpoint);
        if let Some(c) = latest.filter(|c| key.verify(&c.signed_note).is_ok()) {
            return c.tree_size;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint signed by the new key within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn a_new_signing_key_is_handed_over_in_the_log(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let spec = || SandboxSpec::of(&[ServiceName::Audit]);
    let with_key = |key: &std::path::Path, previous: &[&std::path::Path]| {
        let mut spec = spec();
        spec.settings.push((
            "audit",
            "signing_key_file",
            key.display().to_string().into(),
        ));
        spec.settings.push((
            "audit",
            "previous_signing_key_files",
            toml::Value::Array(
                previous
                    .iter()
                    .map(|p| p.display().to_string().into())
                    .collect(),
            ),
        ));
        spec
    };
    let sandbox = Sandbox::start(&data, spec()).await;
    let url = sandbox.url(ServiceName::Audit);
    let mut operator = client(&data, &url, "operator").await;
    let first_key = verifier_key(&mut operator).await;
    common::checkpoint_beyond(&operator, 0).await;
    sandbox.stop().await;

    // The operator makes a new key and keeps the old one listed.
    let old_file = data.path().join("audit-log.key");
    let new_file = data.path().join("audit-2027.key");
    confidant_audit::write_signing_key(&new_file).unwrap();
    let sandbox = Sandbox::start(&data, with_key(&new_file, &[&old_file])).await;
    let url = sandbox.url(ServiceName::Audit);
    let mut operator = client(&data, &url, "operator").await;
    let second_key = verifier_key(&mut operator).await;
    assert_ne!(second_key, first_key);
    checkpoint_signed_by(&operator, &second_key).await;

    // Whoever holds the first key follows the change through the log.
    let (code, out) = cli(&data, &url, &["verify", "--public-key", &first_key]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("changed at position")
            && out.contains(&second_key)
            && out.contains("handed over by the key it replaced"),
        "{out}"
    );
    // The new key alone does not vouch for what the old one signed.
    let (code, out) = cli(&data, &url, &["verify", "--public-key", &second_key]);
    assert_eq!(code, 65, "{out}");
    assert!(
        out.contains("checkpoint #0")
            && out.contains("give the replaced key too")
            && out.contains(&first_key),
        "{out}"
    );
    let (code, out) = cli(
        &data,
        &url,
        &[
            "verify",
            "--public-key",
            &second_key,
            "--public-key",
            &first_key,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "newest verified checkpoint is signed by {second_key}"
        )),
        "{out}"
    );
    // Without a key, the keys the log names itself (its current one and
    // those its change names) check its consistency, and say so.
    let (code, out) = cli(&data, &url, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("proves consistency but not authenticity"),
        "{out}"
    );

    // An event logged now proves itself under the new key.
    let id = append_for(&data, &url, &uuid::Uuid::now_v7().to_string(), 1)
        .await
        .remove(0);
    let size = operator_size(&mut operator).await;
    common::checkpoint_beyond(&operator, size - 1).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("evidence.json");
    let (code, out) = cli(
        &data,
        &url,
        &[
            "evidence",
            "--event-id",
            &id,
            "--out",
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let bundle = bundle.to_str().unwrap();
    let (code, out) = cli(
        &data,
        &url,
        &[
            "verify-evidence",
            "--file",
            bundle,
            "--public-key",
            &first_key,
        ],
    );
    assert_eq!(code, 65, "{out}");
    let (code, out) = cli(
        &data,
        &url,
        &[
            "verify-evidence",
            "--file",
            bundle,
            "--public-key",
            &first_key,
            "--public-key",
            &second_key,
        ],
    );
    assert_eq!(code, 0, "{out}");
    sandbox.stop().await;

    // The second key is lost: the service starts with a third alone. The
    // change is logged, but nothing the first key trusts vouches for it.
    let third_file = data.path().join("audit-2028.key");
    confidant_audit::write_signing_key(&third_file).unwrap();
    let sandbox = Sandbox::start(&data, with_key(&third_file, &[])).await;
    let url = sandbox.url(ServiceName::Audit);
    let mut operator = client(&data, &url, "operator").await;
    let third_key = verifier_key(&mut operator).await;
    checkpoint_signed_by(&operator, &third_key).await;
    let (code, out) = cli(&data, &url, &["verify", "--public-key", &first_key]);
    assert_eq!(code, 65, "{out}");
    assert!(
        out.contains("with no handover") && out.contains(&third_key),
        "{out}"
    );
    let (code, out) = cli(
        &data,
        &url,
        &[
            "verify",
            "--public-key",
            &first_key,
            "--public-key",
            &third_key,
        ],
    );
    assert_eq!(code, 0, "{out}");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_clients_access_history_is_searchable_and_shows_no_internals() {
    a_clients_access_history_is_searchable_and_shows_no_internals(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_clients_access_history_is_searchable_and_shows_no_internals() {
    a_clients_access_history_is_searchable_and_shows_no_internals(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_log_proves_itself_and_names_an_edited_event() {
    the_log_proves_itself_and_names_an_edited_event(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_log_proves_itself_and_names_an_edited_event() {
    the_log_proves_itself_and_names_an_edited_event(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_proof_requests_are_checked_and_exports_are_for_readers_only() {
    proof_requests_are_checked_and_exports_are_for_readers_only(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_proof_requests_are_checked_and_exports_are_for_readers_only() {
    proof_requests_are_checked_and_exports_are_for_readers_only(Backend::Postgres).await;
}

/// Appends `n` events about `client_id` as the vault would; their ids.
async fn append_for(data: &SandboxData, url: &str, client_id: &str, n: usize) -> Vec<String> {
    let events: Vec<_> = (0..n)
        .map(|_| {
            let mut e = service_event(
                ServiceName::Vault,
                "confidant.local",
                Action::VaultRecordRead,
                Outcome::Allowed,
            );
            e.resource.as_mut().unwrap().client_id = client_id.to_owned();
            e
        })
        .collect();
    client(data, url, "vault")
        .await
        .append_events(AppendEventsRequest {
            events: events.clone(),
        })
        .await
        .unwrap();
    events.into_iter().map(|e| e.id).collect()
}

/// The ids of the logged events about `client_id`.
async fn logged_for(
    operator: &mut AuditServiceClient<PeerChannel>,
    client_id: &str,
) -> Vec<String> {
    let mut ids: Vec<String> = operator
        .list_events(ListEventsRequest {
            client_id: client_id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter_map(|e| e.event.map(|e| e.id))
        .collect();
    ids.sort();
    ids
}

async fn a_restored_log_gets_back_what_it_lost_and_stays_one_log(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let spec = || SandboxSpec::of(&[ServiceName::Audit, ServiceName::Vault]);
    let sandbox = Sandbox::start(&data, spec()).await;
    let url = sandbox.url(ServiceName::Audit);
    let mut operator = client(&data, &url, "operator").await;
    let key = operator
        .get_log_info(GetLogInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .verifier_key;
    let client_id = uuid::Uuid::now_v7().to_string();
    let mut before = append_for(&data, &url, &client_id, 3).await;
    common::checkpoint_beyond(&operator, 0).await;
    let backup = common::back_up(&data, ServiceName::Audit).await;

    // After the backup: more events, a checkpoint over them handed out,
    // and the log exported off site.
    let lost = append_for(&data, &url, &client_id, 4).await;
    let size_now = operator_size(&mut operator).await;
    let (handed_out, root) = common::checkpoint_beyond(&operator, size_now - 1).await;
    let export = data.path().join("log.jsonl");
    let export_arg = export.display().to_string();
    let (code, out) = cli(&data, &url, &["export", "--out", &export_arg]);
    assert_eq!(code, 0, "{out}");
    sandbox.stop().await;

    // The audit database is restored: the events since the backup are gone
    // from it. They are put back before the service starts…
    common::restore(&data, ServiceName::Audit, &backup).await;
    let restore = |args: &[&str]| {
        let mut all = vec!["audit-log"];
        all.extend_from_slice(args);
        common::restore_command(&data, &spec(), &all)
    };
    let summary_of = |out: &str| -> serde_json::Value {
        out.lines()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .expect("a summary")["summary"]
            .clone()
    };
    // A dry run says what it would put back, and writes nothing.
    let size_restored = common::service_db(&data, ServiceName::Audit)
        .await
        .fetch_all::<(i64,)>("SELECT idx FROM audit_events ORDER BY idx", vec![])
        .await
        .unwrap();
    let (code, out) = restore(&["--log", &export_arg, "--public-key", &key, "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    let would = summary_of(&out);
    assert_eq!(would["dry_run"], true, "{out}");
    assert!(would["events_put_back"].as_u64().unwrap() >= 4, "{out}");
    let unchanged = common::service_db(&data, ServiceName::Audit)
        .await
        .fetch_all::<(i64,)>("SELECT idx FROM audit_events ORDER BY idx", vec![])
        .await
        .unwrap();
    assert_eq!(unchanged, size_restored);
    let (code, out) = restore(&["--log", &export_arg, "--public-key", &key]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        summary_of(&out)["events_put_back"],
        would["events_put_back"]
    );
    let summary: serde_json::Value = out
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .expect("a summary");
    let put_back = summary["summary"]["events_put_back"].as_u64().unwrap();
    assert!(put_back >= 4, "{out}");
    // …and a second run finds nothing missing.
    let (code, out) = restore(&["--log", &export_arg, "--public-key", &key]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"events_put_back\":0"), "{out}");

    // The service starts on a log that holds every lost event where it was,
    // and the checkpoint it handed out before the restore still holds.
    let sandbox = Sandbox::start(&data, spec()).await;
    let url = sandbox.url(ServiceName::Audit);
    let mut operator = client(&data, &url, "operator").await;
    before.extend(lost);
    before.sort();
    assert_eq!(logged_for(&mut operator, &client_id).await, before);
    let same = operator
        .get_checkpoint(GetCheckpointRequest {
            tree_size: handed_out,
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoint
        .unwrap();
    assert_eq!(same.root_hash, root);
    // New events go on after them, and the whole log verifies, old
    // checkpoints and new.
    let later = append_for(&data, &url, &client_id, 2).await;
    let size_now = operator_size(&mut operator).await;
    common::checkpoint_beyond(&operator, size_now - 1).await;
    assert!(later.iter().all(|id| before.binary_search(id).is_err()));
    let (code, out) = cli(&data, &url, &["verify", "--public-key", &key]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK"), "{out}");
    sandbox.stop().await;

    // The export under another log's key does not verify; put into
    // another log's database, it is refused, and nothing is written.
    let (code, out) = restore(&[
        "--log",
        &export_arg,
        "--public-key",
        &common::other_log_key(),
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("does not verify"), "{out}");
    let elsewhere = data.sibling().await;
    Sandbox::start(&elsewhere, spec()).await.stop().await;
    let size_there = common::service_db(&elsewhere, ServiceName::Audit)
        .await
        .fetch_all::<(i64,)>("SELECT idx FROM audit_events ORDER BY idx", vec![])
        .await
        .unwrap();
    assert!(!size_there.is_empty());
    let (code, out) = common::restore_command(
        &elsewhere,
        &spec(),
        &["audit-log", "--log", &export_arg, "--public-key", &key],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("differ at position 0"), "{out}");
    let after = common::service_db(&elsewhere, ServiceName::Audit)
        .await
        .fetch_all::<(i64,)>("SELECT idx FROM audit_events ORDER BY idx", vec![])
        .await
        .unwrap();
    assert_eq!(after, size_there);
}

/// The log's size as the service reports it.
async fn operator_size(operator: &mut AuditServiceClient<PeerChannel>) -> i64 {
    operator
        .get_log_info(GetLogInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .tree_size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_new_signing_key_is_handed_over_in_the_log() {
    a_new_signing_key_is_handed_over_in_the_log(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_new_signing_key_is_handed_over_in_the_log() {
    a_new_signing_key_is_handed_over_in_the_log(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_restored_log_gets_back_what_it_lost_and_stays_one_log() {
    a_restored_log_gets_back_what_it_lost_and_stays_one_log(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_restored_log_gets_back_what_it_lost_and_stays_one_log() {
    a_restored_log_gets_back_what_it_lost_and_stays_one_log(Backend::Postgres).await;
}
