//! Decision latency: from cached facts (what identity and its callers serve
//! from), next to gathering the facts from the database, measured in the
//! same run. Prints a table; asserts nothing.
//!
//! `cargo bench -p confidant-identity --bench decision`

use std::time::{Duration, Instant};

use chrono::Utc;
use confidant_identity::decisions::FactsCache;
use confidant_identity::domain::decide;
use confidant_identity::store::{Directory, KIND_NDA, KIND_TRAINING, NewAttestation};
use confidant_proto::audit::v1::AuditEvent;
use confidant_runtime::storage::Backend;
use confidant_runtime::testing::TestDatabase;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

async fn row(backend: Backend) {
    let t = TestDatabase::fresh(backend, confidant_identity::MIGRATIONS).await;
    let dir = Directory::new(t.db.clone());
    let event = |_| -> AuditEvent {
        confidant_runtime::audit::service_event(
            confidant_runtime::ServiceName::Identity,
            "bench",
            confidant_runtime::audit::Action::IdentityStaffCreated,
            confidant_proto::audit::v1::Outcome::Allowed,
        )
    };
    let staff = dir
        .create_staff(
            None,
            "bench@firm.example",
            "Bench",
            &["associate".to_owned()],
            event,
        )
        .await
        .unwrap();
    let client = dir.create_client(None, event).await.unwrap();
    let matter = dir
        .create_matter(
            None,
            &confidant_identity::store::NewMatter {
                client_id: client,
                responsible: None,
                practice_area: "bench".into(),
                jurisdiction: None,
            },
            event,
        )
        .await
        .unwrap();
    for kind in [KIND_NDA, KIND_TRAINING] {
        dir.record_attestation(
            &NewAttestation {
                staff_id: staff,
                kind,
                version: "1".into(),
                completed: Utc::now() - chrono::Duration::days(1),
                expires: Utc::now() + chrono::Duration::days(300),
                score: Some(90),
                pass_mark: Some(80),
            },
            event,
        )
        .await
        .unwrap();
    }
    dir.assign(matter, staff, None, event).await.unwrap();

    let n = 2000;
    let mut uncached = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let facts = dir
            .facts(staff, "client_data.read", None, Some(matter))
            .await
            .unwrap();
        assert!(decide(&facts, "client_data.read", Utc::now()).allowed());
        uncached.push(start.elapsed());
    }
    let cache = FactsCache::default();
    cache.put(
        staff,
        "client_data.read",
        None,
        Some(matter),
        dir.facts(staff, "client_data.read", None, Some(matter))
            .await
            .unwrap(),
    );
    let mut cached = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let facts = cache
            .get(staff, "client_data.read", None, Some(matter))
            .unwrap();
        assert!(decide(&facts, "client_data.read", Utc::now()).allowed());
        cached.push(start.elapsed());
    }
    let (c50, c99) = (percentile(&mut cached, 0.5), percentile(&mut cached, 0.99));
    let (u50, u99) = (
        percentile(&mut uncached, 0.5),
        percentile(&mut uncached, 0.99),
    );
    println!(
        "| decision from cached facts, {backend:?} | p50 {:.1} µs, p99 {:.1} µs | p50 {:.0} µs, p99 {:.0} µs (facts from the database) | {:.3} | p99 < 1 ms |",
        c50.as_secs_f64() * 1e6,
        c99.as_secs_f64() * 1e6,
        u50.as_secs_f64() * 1e6,
        u99.as_secs_f64() * 1e6,
        c99.as_secs_f64() / u99.as_secs_f64(),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| measure | confidant | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    rt.block_on(row(Backend::Sqlite));
    rt.block_on(row(Backend::Postgres));
}
