//! Sweep scale, run by `scripts/bench.sh`: 1,000,000 scopes on PostgreSQL of
//! which 10,000 are due. Measures the sweep's selection of due scopes (the
//! due-date index) against one sequential pass over the same table in the
//! same run, and a whole planning sweep (selection, hold check, 10,000
//! disposals written in batches). Prints table rows; asserts nothing about
//! time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use confidant_retention::disposal::{Disposer, Signer};
use confidant_retention::domain::{Action, Period, Rules, Trigger};
use confidant_retention::service::Retention;
use confidant_retention::store::{self, RetentionStore};
use confidant_runtime::storage::{Backend, Database};
use confidant_runtime::testing::TestDatabase;
use confidant_vault::domain::Category;

const SCOPES: i64 = 1_000_000;
const DUE: i64 = 10_000;

fn best<T>(runs: &mut Vec<Duration>, started: Instant, value: T) -> T {
    runs.push(started.elapsed());
    value
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let db = TestDatabase::fresh(Backend::Postgres, confidant_retention::MIGRATIONS).await;
    let Database::Postgres(pool) = &db.db else {
        return;
    };
    sqlx::query(
        "INSERT INTO retention_scopes (scope_id, client_id, matter_id, category, created_at, vault_state, due_at, synced_at) \
         SELECT gen_random_uuid(), gen_random_uuid(), NULL, 'contact_details', now() - interval '7 years', 'active', \
         CASE WHEN g <= $2 THEN now() - interval '1 day' ELSE now() + (1 + g % 3650) * interval '1 day' END, now() \
         FROM generate_series(1, $1) g",
    )
    .bind(SCOPES)
    .bind(DUE)
    .execute(pool)
    .await
    .expect("scopes");
    sqlx::query("ANALYZE retention_scopes")
        .execute(pool)
        .await
        .expect("analyze");
    let retention_store = RetentionStore::new(db.db.clone());

    let now = chrono::Utc::now();
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let due = best(
            &mut ours,
            started,
            retention_store.due_untaken(now, 50_000).await.expect("due"),
        );
        assert_eq!(due.len() as i64, DUE);
        let started = Instant::now();
        let all: (i64,) = best(
            &mut base,
            started,
            sqlx::query_as("SELECT COUNT(*) FROM retention_scopes WHERE category <> ''")
                .fetch_one(pool)
                .await
                .expect("scan"),
        );
        assert_eq!(all.0, SCOPES);
    }
    let (ours, base) = (*ours.iter().min().unwrap(), *base.iter().min().unwrap());
    println!(
        "| retention sweep selection: 10,000 due of 1,000,000 scopes, PostgreSQL | {:.1} ms | {:.1} ms (one sequential pass over the scopes) | {:.2} | seconds, not minutes |",
        ours.as_secs_f64() * 1000.0,
        base.as_secs_f64() * 1000.0,
        ours.as_secs_f64() / base.as_secs_f64()
    );

    // A whole planning sweep: a review policy, so the disposals wait for
    // approval and no vault is needed.
    let rules = Rules {
        category: Category::ContactDetails,
        period: Period {
            years: 0,
            months: 0,
            days: 0,
        },
        trigger: Trigger::Creation,
        action: Action::Review,
        client_notice_days: 0,
        basis: "bench".into(),
        practice_area: None,
        jurisdiction: None,
    };
    db.db
        .transact(
            vec![store::insert_policy(
                uuid::Uuid::now_v7(),
                1,
                &rules,
                "bench",
                now,
            )],
            &[],
        )
        .await
        .expect("policy");
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("k");
    confidant_runtime::keys::write_new_ed25519_key(&key).expect("key");
    let disposer = Disposer::new(
        Arc::new(Retention::new(retention_store, None, "confidant.local", 2)),
        Arc::new(confidant_runtime::coord::InProcess::new()),
        Signer::load(&key).expect("signer"),
        1,
    );
    let started = Instant::now();
    let report = disposer.sweep().await.expect("sweep").expect("lease");
    let elapsed = started.elapsed();
    assert_eq!(report.batches_created, 10);
    println!(
        "| retention sweep planning: 10,000 due scopes into 10 batches, PostgreSQL | {:.2} s | {:.1} ms (selection alone) | {:.0} | seconds |",
        elapsed.as_secs_f64(),
        ours.as_secs_f64() * 1000.0,
        elapsed.as_secs_f64() / ours.as_secs_f64()
    );
}
