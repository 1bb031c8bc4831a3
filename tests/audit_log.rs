//! The audit log from the outside: signed checkpoints, proofs, export and
//! evidence through the real CLI, and an edit made directly in the database
//! named by `confidant audit verify`. On SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec};
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
    common::eventually(
        Duration::from_secs(20),
        "a checkpoint covering two events",
        || {
            let mut c = operator.clone();
            async move {
                c.get_checkpoint(GetCheckpointRequest { tree_size: 0 })
                    .await
                    .is_ok_and(|r| r.into_inner().checkpoint.is_some_and(|c| c.tree_size >= 2))
            }
        },
    )
    .await;

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
