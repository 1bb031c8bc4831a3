//! The event store's conformance suite, on SQLite and PostgreSQL.

use chrono::Utc;
use confidant_audit::domain::{ValidEvent, validate_batch};
use confidant_audit::store::{Appended, EventStore};
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
    assert_eq!(
        store.append(&first).await.unwrap(),
        Appended {
            appended: 3,
            duplicates: 0
        }
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
    assert_eq!(
        store.append(&again).await.unwrap(),
        Appended {
            appended: 2,
            duplicates: 3
        }
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

confidant_runtime::backend_tests!(confidant_audit::MIGRATIONS;
    events_get_dense_positions_in_arrival_order,
    a_redelivered_batch_is_stored_once,
    stored_events_cannot_be_updated_or_deleted,
    concurrent_appenders_keep_positions_dense,
);
