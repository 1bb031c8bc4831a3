//! Audit events travel from each service's outbox to the audit log over
//! mutual TLS: nothing lost while the audit service is down, nothing twice,
//! and only service identities may append. Run on SQLite and on PostgreSQL
//! with Redis.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec};
use confidant_audit::store::EventStore;
use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
use confidant_proto::audit::v1::{AppendEventsRequest, AuditEvent, ListEventsRequest, Outcome};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, service_event};
use confidant_runtime::outbox::Outbox;
use confidant_runtime::storage::Backend;
use prost::Message;
use tonic_types::StatusExt;

async fn logged(store: &EventStore) -> Vec<AuditEvent> {
    store
        .range(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| AuditEvent::decode(e.payload.as_slice()).unwrap())
        .collect()
}

async fn events_survive_an_audit_outage_and_arrive_exactly_once(backend: Backend) {
    let audit_data = SandboxData::new(backend).await;
    let vault_data = audit_data.sibling().await;
    let audit = Sandbox::start(&audit_data, SandboxSpec::of(&[ServiceName::Audit])).await;
    let audit_addr = audit.addr(ServiceName::Audit);
    let mut spec = SandboxSpec::of(&[ServiceName::Vault]);
    spec.peers.insert(ServiceName::Audit, audit_addr);
    let vault = Sandbox::start(&vault_data, spec).await;

    let audit_db = common::service_db(&audit_data, ServiceName::Audit).await;
    let store = EventStore::new(audit_db.clone());
    common::eventually(
        Duration::from_secs(15),
        "the vault's start event",
        || async {
            logged(&store)
                .await
                .iter()
                .any(|e| e.source_service == "vault")
        },
    )
    .await;

    // The audit service goes down; the vault keeps recording.
    audit.stop().await;
    let outbox = Outbox::new(common::service_db(&vault_data, ServiceName::Vault).await);
    // Each carries 15 KiB of sealed text (a long justification): the
    // backlog is more than one gRPC message may hold, so it must go in
    // several appends.
    let mut expected = Vec::new();
    for _ in 0..300 {
        let mut event = service_event(
            ServiceName::Vault,
            "confidant.local",
            Action::ServiceStarted,
            Outcome::Allowed,
        );
        event.sealed_text = vec![7; 15 * 1024];
        event.sealed_scope_id = uuid::Uuid::now_v7().to_string();
        expected.push(event.id.clone());
        outbox.enqueue(&event).await.unwrap();
    }
    // Let the relay fail a few times against the closed port.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        outbox.backlog().await.unwrap() >= 300,
        "events were lost while audit was down"
    );

    // Audit comes back on the same address and data.
    let mut spec = SandboxSpec::of(&[ServiceName::Audit]);
    spec.listen.insert(ServiceName::Audit, audit_addr);
    let audit = Sandbox::start(&audit_data, spec).await;
    common::eventually(Duration::from_secs(30), "the backlog to drain", || async {
        outbox.backlog().await.unwrap() == 0
    })
    .await;

    let events = logged(&store).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        *counts.entry(e.id.as_str()).or_default() += 1;
    }
    assert!(
        counts.values().all(|n| *n == 1),
        "an event was stored twice"
    );
    let vault_ids: Vec<&str> = events
        .iter()
        .filter(|e| e.source_service == "vault")
        .map(|e| e.id.as_str())
        .collect();
    let delivered: Vec<&str> = vault_ids
        .iter()
        .copied()
        .filter(|id| expected.iter().any(|e| e == id))
        .collect();
    assert_eq!(
        delivered,
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "in order, all of them"
    );

    // A reader asking for a page of all of them (more than a gRPC client
    // takes in one message by default) gets a shorter page and a token for
    // the rest.
    let reader = AuditServiceClient::new(
        common::channel(&audit_data, &audit, ServiceName::Audit, "operator").await,
    );
    let (listed, pages) = common::all_pages(|page_token| {
        let mut reader = reader.clone();
        async move {
            let page = reader
                .list_events(ListEventsRequest {
                    source_service: "vault".into(),
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await
                .expect("a page within the message limit")
                .into_inner();
            let ids = page
                .events
                .into_iter()
                .filter_map(|e| e.event)
                .map(|e| e.id);
            (ids.collect(), page.next_page_token)
        }
    })
    .await;
    assert!(pages >= 2, "{pages} pages");
    let unique: std::collections::HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "an event listed twice");
    assert!(
        expected.iter().all(|id| unique.contains(id)),
        "every event listed"
    );

    vault.stop().await;
    audit.stop().await;
    audit_db.close().await;
}

async fn an_event_the_log_refuses_is_held_back_and_the_others_go_on(backend: Backend) {
    let audit_data = SandboxData::new(backend).await;
    let vault_data = audit_data.sibling().await;
    let audit = Sandbox::start(&audit_data, SandboxSpec::of(&[ServiceName::Audit])).await;
    let mut spec = SandboxSpec::of(&[ServiceName::Vault]);
    spec.peers
        .insert(ServiceName::Audit, audit.addr(ServiceName::Audit));
    let vault = Sandbox::start(&vault_data, spec).await;
    let outbox = Outbox::new(common::service_db(&vault_data, ServiceName::Vault).await);

    // An event of an action this log does not know (as from a service newer
    // than the log, or a fault), between two it accepts.
    let event = || {
        service_event(
            ServiceName::Vault,
            "confidant.local",
            Action::ServiceStarted,
            Outcome::Allowed,
        )
    };
    let (before, mut refused, after) = (event(), event(), event());
    refused.action = "vault.record.peeked".into();
    for e in [&before, &refused, &after] {
        outbox.enqueue(e).await.unwrap();
    }

    // The others reach the log; the refused one waits in the outbox, its
    // failure recorded.
    let audit_db = common::service_db(&audit_data, ServiceName::Audit).await;
    let store = EventStore::new(audit_db.clone());
    common::eventually(Duration::from_secs(15), "the events around it", || async {
        let ids: Vec<String> = logged(&store).await.into_iter().map(|e| e.id).collect();
        ids.contains(&before.id) && ids.contains(&after.id)
    })
    .await;
    common::eventually(Duration::from_secs(15), "only it left", || async {
        outbox.backlog().await.unwrap() == 1
    })
    .await;
    let waiting = outbox.pending(10).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].event.id, refused.id);
    assert!(waiting[0].attempts >= 1, "{:?}", waiting[0].attempts);
    assert!(
        !logged(&store).await.iter().any(|e| e.id == refused.id),
        "the log took it"
    );

    vault.stop().await;
    audit.stop().await;
    audit_db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_event_the_log_refuses_is_held_back_and_the_others_go_on() {
    an_event_the_log_refuses_is_held_back_and_the_others_go_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_event_the_log_refuses_is_held_back_and_the_others_go_on() {
    an_event_the_log_refuses_is_held_back_and_the_others_go_on(Backend::Postgres).await;
}

async fn only_services_may_append_and_bad_events_are_named(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(&data, SandboxSpec::of(&[ServiceName::Audit])).await;
    let url = sandbox.url(ServiceName::Audit);
    let client = |name: &str| {
        let tls = data.client_tls(name);
        let url = url.clone();
        async move {
            AuditServiceClient::new(
                confidant_runtime::client::connect(&url, &tls, "localhost")
                    .await
                    .unwrap(),
            )
        }
    };
    let good = service_event(
        ServiceName::Intake,
        "confidant.local",
        Action::ServiceStarted,
        Outcome::Allowed,
    );

    // An operator certificate is not a service identity on the allow-list.
    let denied = client("operator")
        .await
        .append_events(AppendEventsRequest {
            events: vec![good.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // The intake service may append its own events, once.
    let mut intake = client("intake").await;
    let first = intake
        .append_events(AppendEventsRequest {
            events: vec![good.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.appended_count, first.duplicate_count), (1, 0));
    let again = intake
        .append_events(AppendEventsRequest {
            events: vec![good.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.appended_count, again.duplicate_count), (0, 1));

    // ...but not in another service's name, and not malformed ones; a bad
    // batch stores nothing.
    let mut forged = service_event(
        ServiceName::Vault,
        "confidant.local",
        Action::ServiceStarted,
        Outcome::Allowed,
    );
    forged.id = "123".into();
    forged.action = "vault.record.peek".into();
    let fresh = service_event(
        ServiceName::Intake,
        "confidant.local",
        Action::ServiceStopped,
        Outcome::Allowed,
    );
    let status = intake
        .append_events(AppendEventsRequest {
            events: vec![fresh.clone(), forged],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let details = status.get_error_details();
    let fields: Vec<_> = details
        .bad_request()
        .expect("bad request details")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(
        fields,
        [
            "events[1].id",
            "events[1].source_service",
            "events[1].action"
        ]
    );

    let store = EventStore::new(common::service_db(&data, ServiceName::Audit).await);
    assert!(
        !logged(&store).await.iter().any(|e| e.id == fresh.id),
        "part of a refused batch was stored"
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_events_survive_an_audit_outage_and_arrive_exactly_once() {
    events_survive_an_audit_outage_and_arrive_exactly_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_events_survive_an_audit_outage_and_arrive_exactly_once() {
    events_survive_an_audit_outage_and_arrive_exactly_once(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_only_services_may_append_and_bad_events_are_named() {
    only_services_may_append_and_bad_events_are_named(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_only_services_may_append_and_bad_events_are_named() {
    only_services_may_append_and_bad_events_are_named(Backend::Postgres).await;
}
