//! Audit log load harness: append throughput with the tree maintained,
//! inclusion-proof latency and full verification time, each next to a
//! baseline measured in the same run. Prints a table; asserts nothing.
//!
//! `cargo bench -p confidant-audit --bench audit_log` (scripts/bench-audit.sh).
//! Needs PostgreSQL for the PostgreSQL rows (CONFIDANT_TEST_POSTGRES_URL).

use std::time::{Duration, Instant};

use chrono::Utc;
use confidant_audit::checkpoint::{Signer, Verifier};
use confidant_audit::domain::{ValidEvent, validate_batch};
use confidant_audit::log::AuditLog;
use confidant_audit::merkle::{Tree, leaf_hash, verify_inclusion};
use confidant_audit::store::EventStore;
use confidant_audit::verify::{Entry, verify};
use confidant_proto::audit::v1::Outcome;
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, service_event};
use confidant_runtime::storage::{Backend, Database};
use confidant_runtime::testing::TestDatabase;

const BATCH: usize = 500;
const APPEND_EVENTS: usize = 20_000;
const VERIFY_EVENTS: u64 = 1_000_000;

fn batch() -> Vec<ValidEvent> {
    let raw: Vec<_> = (0..BATCH)
        .map(|_| {
            let mut e = service_event(
                ServiceName::Vault,
                "bench",
                Action::ServiceStarted,
                Outcome::Allowed,
            );
            e.resource.as_mut().unwrap().client_id = uuid::Uuid::new_v4().to_string();
            e
        })
        .collect();
    validate_batch(&raw, "vault", Utc::now()).unwrap()
}

/// Plain INSERTs of the same bytes, same batches, one transaction per batch.
async fn baseline_append(db: &Database, batches: &[Vec<ValidEvent>]) -> Duration {
    match db {
        Database::Postgres(pool) => {
            sqlx::query("CREATE TABLE bench_plain (id UUID PRIMARY KEY, payload BYTEA NOT NULL)")
                .execute(pool)
                .await
                .unwrap();
        }
        Database::Sqlite(pool) => {
            sqlx::query("CREATE TABLE bench_plain (id TEXT PRIMARY KEY, payload BLOB NOT NULL)")
                .execute(pool)
                .await
                .unwrap();
        }
    }
    let start = Instant::now();
    for b in batches {
        match db {
            Database::Postgres(pool) => {
                let ids: Vec<uuid::Uuid> = b.iter().map(|e| e.id).collect();
                let payloads: Vec<Vec<u8>> = b.iter().map(|e| e.payload.clone()).collect();
                sqlx::query("INSERT INTO bench_plain (id, payload) SELECT * FROM UNNEST($1::uuid[], $2::bytea[])")
                    .bind(&ids)
                    .bind(&payloads)
                    .execute(pool)
                    .await
                    .unwrap();
            }
            Database::Sqlite(pool) => {
                let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO bench_plain (id, payload) ",
                );
                q.push_values(b, |mut row, e| {
                    row.push_bind(e.id.to_string()).push_bind(e.payload.clone());
                });
                q.build().execute(pool).await.unwrap();
            }
        }
    }
    start.elapsed()
}

async fn append_row(backend: Backend) -> Option<(String, f64, f64)> {
    let t = std::panic::AssertUnwindSafe(TestDatabase::fresh(backend, confidant_audit::MIGRATIONS));
    let t = match futures::FutureExt::catch_unwind(t).await {
        Ok(t) => t,
        Err(_) => {
            eprintln!("{backend:?} unavailable; skipping its rows");
            return None;
        }
    };
    let batches: Vec<_> = (0..APPEND_EVENTS / BATCH).map(|_| batch()).collect();
    let signer = Signer::from_pkcs8("bench/audit", &Signer::generate_pkcs8().unwrap()).unwrap();
    let log = AuditLog::open(
        EventStore::new(t.db.clone()),
        signer,
        "bench/audit",
        "bench",
    )
    .await
    .unwrap();
    let start = Instant::now();
    for b in &batches {
        log.append(b).await.unwrap();
    }
    let ours = start.elapsed();
    let plain = baseline_append(&t.db, &batches).await;
    let rate = |d: Duration| APPEND_EVENTS as f64 / d.as_secs_f64();
    Some((format!("{backend:?}"), rate(ours), rate(plain)))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "audit log benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!("| measure | confidant | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if let Some((name, ours, plain)) = rt.block_on(append_row(backend)) {
            println!(
                "| append, batches of {BATCH}, tree maintained, {name} | {ours:.0} events/s | {plain:.0} events/s (plain INSERT) | {:.2} | ≥ 20,000 events/s |",
                ours / plain
            );
        }
    }

    // A 1,000,000-event tree, built from realistic event bytes.
    let payload = batch().remove(0).payload;
    let entries: Vec<Entry> = (0..VERIFY_EVENTS)
        .map(|i| {
            let mut bytes = payload.clone();
            bytes.extend_from_slice(&i.to_be_bytes());
            let hash = leaf_hash(&bytes).to_vec();
            Entry {
                index: i,
                event_id: String::new(),
                event_bytes: bytes,
                leaf_hash: hash,
                proof: None,
            }
        })
        .collect();
    let mut tree = Tree::new();
    let start = Instant::now();
    for e in &entries {
        tree.push(leaf_hash(&e.event_bytes));
    }
    let build = start.elapsed();

    // Proof latency against a 1M tree, and the baseline of hashing one leaf.
    let root = tree.root(VERIFY_EVENTS).unwrap();
    let n = 10_000u64;
    let start = Instant::now();
    for i in 0..n {
        let index = (i * 7919) % VERIFY_EVENTS;
        let proof = tree.inclusion_proof(index, VERIFY_EVENTS).unwrap();
        assert!(verify_inclusion(
            index,
            VERIFY_EVENTS,
            &tree.leaf(index).unwrap(),
            &proof,
            &root
        ));
    }
    let per_proof = start.elapsed() / u32::try_from(n).unwrap();
    let start = Instant::now();
    for i in 0..n {
        std::hint::black_box(leaf_hash(&entries[i as usize].event_bytes));
    }
    let per_hash = start.elapsed() / u32::try_from(n).unwrap();
    println!(
        "| inclusion proof + check, 1M-event tree | {:.1} µs | {:.2} µs (one leaf hash) | {:.0} | < 1 ms |",
        per_proof.as_secs_f64() * 1e6,
        per_hash.as_secs_f64() * 1e6,
        per_proof.as_secs_f64() / per_hash.as_secs_f64()
    );

    // Full verification of a 1M-event export with a checkpoint, against the
    // baseline of only hashing the same bytes.
    let signer = Signer::from_pkcs8("bench/audit", &Signer::generate_pkcs8().unwrap()).unwrap();
    let note = signer.sign(&confidant_audit::checkpoint::Checkpoint {
        origin: "bench/audit".into(),
        size: VERIFY_EVENTS,
        root,
        time: 0,
    });
    let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
    let start = Instant::now();
    let report = verify(&entries, &[note], &[verifier]);
    let verify_time = start.elapsed();
    assert!(report.finding.is_none());
    println!(
        "| verify 1,000,000 events + checkpoint | {:.2} s | {:.2} s (tree build only) | {:.2} | < 10 s |",
        verify_time.as_secs_f64(),
        build.as_secs_f64(),
        verify_time.as_secs_f64() / build.as_secs_f64()
    );
}
