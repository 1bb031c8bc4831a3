//! The event store's conformance suite, on SQLite and PostgreSQL.

use chrono::Utc;
use confidant_audit::domain::{ValidEvent, validate_batch};
use confidant_audit::store::EventStore;
use confidant_proto::audit::v1::Outcome;
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, service_event};
use confidant_runtime::storage::Database;
use confidant_runtime::testing::TestDatabase;

fn events(n: usize) -> Vec<ValidEvent> {
    let raw: Vec<_> = (0..n)
        .map(|_| {
            service_event(
                ServiceName::Vault,
                "t",
                Action::ServiceStarted,
                Outcome::Allowed,
            )
        })
        .collect();
    validate_batch(&raw, "vault", Utc::now()).unwrap()
}

async fn events_get_dense_positions_in_arrival_order(t: &TestDatabase) {
    let store = EventStore::new(t.db.clone());
    let first = events(3);
    let second = events(2);
    let done = store.append(&first).await.unwrap();
    assert_eq!(
        (done.appended, done.duplicates, done.first_index),
        (3, 0, 0)
    );
    store.append(&second).await.unwrap();
    let stored = store.range(0, 100).await.unwrap();
    let idx: Vec<_> = stored.iter().map(|e| e.idx).collect();
    assert_eq!(idx, [0, 1, 2, 3, 4]);
    let ids: Vec<_> = stored.iter().map(|e| e.event_id).collect();
    let sent: Vec<_> = first.iter().chain(&second).map(|e| e.id).collect();
    assert_eq!(ids, sent);
    assert_eq!(
        stored[0].payload, first[0].payload,
        "the payload is stored byte for byte"
    );
}

async fn a_redelivered_batch_is_stored_once(t: &TestDatabase) {
    let store = EventStore::new(t.db.clone());
    let batch = events(4);
    store.append(&batch[..2]).await.unwrap();
    // The relay lost the acknowledgement and sends an overlapping batch, with
    // one event repeated inside it.
    let mut again = batch.clone();
    again.push(batch[3].clone());
    let done = store.append(&again).await.unwrap();
    assert_eq!(
        (done.appended, done.duplicates, done.first_index),
        (2, 3, 2)
    );
    assert_eq!(store.count().await.unwrap(), 4);
}

async fn stored_events_cannot_be_updated_or_deleted(t: &TestDatabase) {
    let store = EventStore::new(t.db.clone());
    store.append(&events(1)).await.unwrap();
    let (update, delete) = match &t.db {
        Database::Postgres(pool) => (
            sqlx::query("UPDATE audit_events SET action = 'service.stopped'")
                .execute(pool)
                .await
                .map(|_| ()),
            sqlx::query("DELETE FROM audit_events")
                .execute(pool)
                .await
                .map(|_| ()),
        ),
        Database::Sqlite(pool) => (
            sqlx::query("UPDATE audit_events SET action = 'service.stopped'")
                .execute(pool)
                .await
                .map(|_| ()),
            sqlx::query("DELETE FROM audit_events")
                .execute(pool)
                .await
                .map(|_| ()),
        ),
    };
    assert!(update.unwrap_err().to_string().contains("append-only"));
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    assert_eq!(store.count().await.unwrap(), 1);
}

async fn concurrent_appenders_keep_positions_dense(t: &TestDatabase) {
    // Two stores over the same database stand for two replicas.
    let a = std::sync::Arc::new(EventStore::new(t.db.clone()));
    let b = std::sync::Arc::new(EventStore::new(t.db.clone()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store.append(&events(25)).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let idx: Vec<_> = a
        .range(0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.idx)
        .collect();
    assert_eq!(idx, (0..200).collect::<Vec<i64>>());
}

fn event_about(
    client: Option<uuid::Uuid>,
    actor: &str,
    action: Action,
    outcome: Outcome,
    at: i64,
) -> ValidEvent {
    let mut e = service_event(ServiceName::Vault, "t", action, outcome);
    e.time = Some(prost_types::Timestamp {
        seconds: at,
        nanos: 0,
    });
    e.actor.as_mut().unwrap().id = actor.into();
    if let Some(c) = client {
        e.resource.as_mut().unwrap().client_id = c.to_string();
    }
    validate_batch(&[e], "vault", Utc::now()).unwrap().remove(0)
}

async fn searches_filter_and_page_newest_first(t: &TestDatabase) {
    use confidant_audit::store::EventFilter;
    let store = EventStore::new(t.db.clone());
    let (alice, bob) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let base = Utc::now().timestamp() - 1000;
    let mut batch = Vec::new();
    for i in 0..7 {
        batch.push(event_about(
            Some(alice),
            "staff-1",
            Action::ServiceStarted,
            Outcome::Allowed,
            base + i,
        ));
    }
    batch.push(event_about(
        Some(bob),
        "staff-2",
        Action::ServiceStarted,
        Outcome::Denied,
        base + 10,
    ));
    batch.push(event_about(
        None,
        "staff-1",
        Action::ServiceStopped,
        Outcome::Allowed,
        base + 20,
    ));
    store.append(&batch).await.unwrap();

    let by = |f: EventFilter| {
        let store = &store;
        async move {
            store
                .search(&EventFilter { limit: 100, ..f })
                .await
                .unwrap()
        }
    };
    let alice_events = by(EventFilter {
        client_id: Some(alice),
        ..Default::default()
    })
    .await;
    assert_eq!(alice_events.len(), 7);
    assert!(
        alice_events
            .windows(2)
            .all(|w| w[0].event.idx > w[1].event.idx),
        "newest first"
    );
    assert_eq!(
        by(EventFilter {
            actor_id: Some("staff-2".into()),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        by(EventFilter {
            outcome: Some(Outcome::Denied as i32),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        by(EventFilter {
            action: Some("service.stopped".into()),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    let window = by(EventFilter {
        start: chrono::DateTime::from_timestamp(base + 2, 0),
        end: chrono::DateTime::from_timestamp(base + 5, 0),
        ..Default::default()
    })
    .await;
    assert_eq!(window.len(), 3);

    // Paging: three at a time, continuing below the last position seen.
    let first = store
        .search(&EventFilter {
            client_id: Some(alice),
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let second = store
        .search(&EventFilter {
            client_id: Some(alice),
            limit: 3,
            before_index: Some(first.last().unwrap().event.idx),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(second.len(), 3);
    assert!(second[0].event.idx < first[2].event.idx);
}

confidant_runtime::backend_tests!(confidant_audit::MIGRATIONS;
    searches_filter_and_page_newest_first,
    events_get_dense_positions_in_arrival_order,
    a_redelivered_batch_is_stored_once,
    stored_events_cannot_be_updated_or_deleted,
    concurrent_appenders_keep_positions_dense,
);
