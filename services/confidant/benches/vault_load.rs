//! Load harness for the vault, run by `scripts/bench.sh`: the suite on
//! PostgreSQL, Redis and the KMS emulator (identity, vault and audit in one
//! process, as the sandbox runs them), driven over mutual-TLS gRPC at two
//! concurrency levels, each figure next to a baseline measured in the same
//! run on the same database:
//!
//! - writes of 1 KiB records vs plain sqlx INSERTs of the same bytes;
//! - reads (decided by identity, audited before returning, decrypted) vs
//!   plain SELECTs by primary key;
//! - KMS calls per 10,000 reads of one scope;
//! - crypto-shred time for scopes of 1, 1,000 and 100,000 records;
//! - field encryption vs raw AES-256-GCM, and document streaming in GB/s.
//!
//! Prints table rows `| measure | confidant | baseline | ratio | target |`.
//! Not a test: nothing here asserts a time.

// The end-to-end tests' directory helpers (not all of them are used here).
#[path = "../../../tests/common/directory.rs"]
#[allow(dead_code)]
mod directory;

use std::sync::Arc;
use std::time::{Duration, Instant};

use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec};
use confidant_proto::vault::v1 as pb;
use confidant_proto::vault::v1::vault_service_client::VaultServiceClient;
use confidant_runtime::ServiceName;
use confidant_runtime::client::PeerChannel;
use confidant_runtime::storage::{Backend, Database, PoolOptions};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

type Vault = VaultServiceClient<PeerChannel>;

const BODY: usize = 1024;

struct Run {
    ops_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration) -> Run {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Run {
        ops_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Runs `per_task` operations in each of `concurrency` tasks; `op(task, i)`.
async fn drive<F, Fut>(concurrency: usize, per_task: usize, op: F) -> Run
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let s = Instant::now();
                op(t, i).await;
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("bench task"));
    }
    summarize(all, started.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn row(measure: &str, ours: &Run, base: &Run, target: &str) {
    println!(
        "| {measure} | {:.0} ops/s (p50 {}, p99 {}) | {:.0} ops/s (p50 {}, p99 {}) | {:.2} | {target} |",
        ours.ops_per_s,
        ms(ours.p50),
        ms(ours.p99),
        base.ops_per_s,
        ms(base.p50),
        ms(base.p99),
        ours.ops_per_s / base.ops_per_s
    );
}

async fn client(data: &SandboxData, sandbox: &Sandbox, name: &str) -> Vault {
    VaultServiceClient::new(
        confidant_runtime::client::connect(
            &sandbox.url(ServiceName::Vault),
            &data.client_tls(name),
            "localhost",
        )
        .await
        .expect("vault reachable"),
    )
}

fn record(client_id: &str, matter_id: &str, category: pb::DataCategory) -> pb::NewRecord {
    pb::NewRecord {
        client_id: client_id.into(),
        matter_id: matter_id.into(),
        category: category as i32,
        fields: vec![pb::Field {
            name: "note".into(),
            r#type: pb::FieldType::Text as i32,
            value: "x".repeat(BODY),
            masked: false,
        }],
        original: false,
    }
}

fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    directory::as_staff(token, message)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let data = SandboxData::new(Backend::Postgres).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec {
            // The production pool size, and the baseline's.
            max_connections: Some(16),
            ..SandboxSpec::of(&[
                ServiceName::Identity,
                ServiceName::Vault,
                ServiceName::Audit,
            ])
        },
    )
    .await;
    let mut admin =
        confidant_proto::identity::v1::identity_service_client::IdentityServiceClient::new(
            confidant_runtime::client::connect(
                &sandbox.url(ServiceName::Identity),
                &data.client_tls("operator"),
                "localhost",
            )
            .await
            .expect("identity reachable"),
        );
    let client_id = directory::new_client(&mut admin).await;
    let partner = directory::cleared(&mut admin, "partner@bench.example", "partner").await;
    let matter_id = directory::new_matter(&mut admin, &client_id, Some(&partner), "bench").await;
    let token = Arc::new(data.staff_token(&partner, &["partner"]));
    let writer = client(&data, &sandbox, "intake").await;
    let reader = client(&data, &sandbox, "firm-app").await;

    // The baseline: a plain table in the same PostgreSQL database.
    let url = data.database_url(ServiceName::Vault);
    let plain = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .expect("postgres");
    sqlx::query("CREATE TABLE bench_plain (id UUID PRIMARY KEY, body BYTEA NOT NULL)")
        .execute(&plain)
        .await
        .expect("baseline table");

    for concurrency in [1usize, 16] {
        let per_task = if concurrency == 1 { 500 } else { 150 };
        let ids: Arc<Vec<Uuid>> = Arc::new(
            (0..concurrency * per_task)
                .map(|_| Uuid::now_v7())
                .collect(),
        );
        let body = Arc::new(vec![7u8; BODY]);
        let base_write = {
            let (plain, ids, body) = (plain.clone(), ids.clone(), body.clone());
            drive(concurrency, per_task, move |t, i| {
                let (plain, id, body) = (plain.clone(), ids[t * per_task + i], body.clone());
                async move {
                    sqlx::query("INSERT INTO bench_plain (id, body) VALUES ($1, $2)")
                        .bind(id)
                        .bind(body.as_slice())
                        .execute(&plain)
                        .await
                        .expect("insert");
                }
            })
            .await
        };
        let stored: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let vault_write = {
            let (writer, client_id, matter_id, stored) = (
                writer.clone(),
                client_id.clone(),
                matter_id.clone(),
                stored.clone(),
            );
            drive(concurrency, per_task, move |_, _| {
                let (mut writer, stored) = (writer.clone(), stored.clone());
                let r = record(&client_id, &matter_id, pb::DataCategory::MatterFile);
                async move {
                    let id = writer
                        .create_record(pb::CreateRecordRequest {
                            record: Some(r),
                            request_id: String::new(),
                        })
                        .await
                        .expect("create")
                        .into_inner()
                        .record
                        .expect("record")
                        .id;
                    stored.lock().expect("ids").push(id);
                }
            })
            .await
        };
        row(
            &format!("vault write 1 KiB over mTLS gRPC, PostgreSQL, concurrency {concurrency}"),
            &vault_write,
            &base_write,
            "≥ 0.5 of plain INSERT",
        );
        let base_read = {
            let (plain, ids) = (plain.clone(), ids.clone());
            drive(concurrency, per_task, move |t, i| {
                let (plain, id) = (plain.clone(), ids[(t * per_task + i * 7) % ids.len()]);
                async move {
                    let _: (Vec<u8>,) =
                        sqlx::query_as("SELECT body FROM bench_plain WHERE id = $1")
                            .bind(id)
                            .fetch_one(&plain)
                            .await
                            .expect("select");
                }
            })
            .await
        };
        let stored = Arc::new(stored.lock().expect("ids").clone());
        let vault_read = {
            let (reader, token, stored) = (reader.clone(), token.clone(), stored.clone());
            drive(concurrency, per_task, move |t, i| {
                let (mut reader, token) = (reader.clone(), token.clone());
                let id = stored[(t * per_task + i * 7) % stored.len()].clone();
                async move {
                    reader
                        .get_record(with_token(
                            &token,
                            pb::GetRecordRequest {
                                record_id: id,
                                purpose: pb::Purpose::LegalAdvice as i32,
                                justification: String::new(),
                            },
                        ))
                        .await
                        .expect("read");
                }
            })
            .await
        };
        row(
            &format!(
                "vault read 1 KiB (decided, audited, decrypted), PostgreSQL, concurrency {concurrency}"
            ),
            &vault_read,
            &base_read,
            "≥ 0.5 of plain SELECT",
        );
    }

    // Where the time goes: the mutual-TLS gRPC round trip alone (an RPC
    // that touches no database), at the same concurrency.
    for concurrency in [1usize, 16] {
        let per_task = if concurrency == 1 { 500 } else { 150 };
        let operator = client(&data, &sandbox, "operator").await;
        let transport = drive(concurrency, per_task, move |_, _| {
            let mut operator = operator.clone();
            async move {
                operator
                    .get_key_stats(pb::GetKeyStatsRequest {})
                    .await
                    .expect("stats");
            }
        })
        .await;
        println!(
            "| for reference: mTLS gRPC round trip, no database, concurrency {concurrency} | {:.0} ops/s (p50 {}, p99 {}) | | | |",
            transport.ops_per_s,
            ms(transport.p50),
            ms(transport.p99)
        );
    }

    kms_calls_per_10k_reads(&data, &sandbox, &reader, &token, &client_id, &matter_id).await;
    shred_is_flat(&data, &sandbox, &writer).await;
    crypto_rows();
    sandbox.stop().await;
}

async fn kms_calls_per_10k_reads(
    data: &SandboxData,
    sandbox: &Sandbox,
    reader: &Vault,
    token: &str,
    client_id: &str,
    matter_id: &str,
) {
    let mut operator = client(data, sandbox, "operator").await;
    let mut writer = client(data, sandbox, "intake").await;
    // A scope of its own: the partner's matter, another category.
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(
            writer
                .create_record(pb::CreateRecordRequest {
                    record: Some(record(client_id, matter_id, pb::DataCategory::Financial)),
                    request_id: String::new(),
                })
                .await
                .expect("create")
                .into_inner()
                .record
                .expect("record")
                .id,
        );
    }
    let before = operator
        .get_key_stats(pb::GetKeyStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let started = Instant::now();
    let mut reads = 0;
    while reads < 10_000 {
        let batch: Vec<String> = (0..500).map(|i| ids[i % ids.len()].clone()).collect();
        let out = reader
            .clone()
            .batch_get_records(with_token(
                token,
                pb::BatchGetRecordsRequest {
                    record_ids: batch,
                    purpose: pb::Purpose::Billing as i32,
                    justification: String::new(),
                },
            ))
            .await
            .expect("batch read")
            .into_inner();
        assert!(
            out.results
                .iter()
                .all(|r| r.status.as_ref().is_some_and(|s| s.code == 0)),
            "{:?}",
            out.results.first()
        );
        reads += 500;
    }
    let after = operator
        .get_key_stats(pb::GetKeyStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let calls = after.kms_decrypt_calls - before.kms_decrypt_calls;
    println!(
        "| KMS calls per 10,000 reads of one scope (batches of 500) | {calls} calls, {:.0} reads/s | 10,000 calls (one per read, no cache) | {:.4} | ≤ 10 calls |",
        10_000.0 / started.elapsed().as_secs_f64(),
        calls as f64 / 10_000.0
    );
}

async fn shred_is_flat(data: &SandboxData, sandbox: &Sandbox, writer: &Vault) {
    let mut retention = client(data, sandbox, "retention").await;
    let db = Database::connect(
        &data.database_url(ServiceName::Vault),
        "vault",
        PoolOptions::default(),
    )
    .await
    .expect("vault database");
    let Database::Postgres(pool) = &db else {
        return;
    };
    let mut timings = Vec::new();
    for size in [1i64, 1_000, 100_000] {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let scope_client = Uuid::now_v7().to_string();
            let first = writer
                .clone()
                .create_record(pb::CreateRecordRequest {
                    record: Some(record(&scope_client, "", pb::DataCategory::Health)),
                    request_id: String::new(),
                })
                .await
                .expect("create")
                .into_inner()
                .record
                .expect("record");
            if size > 1 {
                sqlx::query(
                    "INSERT INTO vault_records (id, scope_id, client_id, matter_id, category, key_version, wrapped_key, \
                     fields, field_names, created_at, created_by, kind, upload_state) \
                     SELECT gen_random_uuid(), scope_id, client_id, matter_id, category, key_version, wrapped_key, \
                     fields, field_names, created_at, created_by, kind, upload_state \
                     FROM vault_records, generate_series(2, $2) WHERE id = $1",
                )
                .bind(Uuid::parse_str(&first.id).expect("uuid"))
                .bind(size)
                .execute(pool)
                .await
                .expect("fill scope");
            }
            let started = Instant::now();
            let shredded = retention
                .shred_scope(pb::ShredScopeRequest {
                    scope_id: first.scope_id.clone(),
                    order_id: Uuid::now_v7().to_string(),
                    pending_window: None,
                })
                .await
                .expect("shred")
                .into_inner()
                .scope
                .expect("scope");
            let elapsed = started.elapsed();
            assert_eq!(shredded.state(), pb::ScopeState::Shredded);
            best = best.min(elapsed);
        }
        timings.push((size, best));
    }
    let one = timings[0].1;
    for (size, t) in &timings {
        println!(
            "| crypto-shred a scope of {size} records (ShredScope over gRPC) | {} | {} (scope of 1) | {:.2} | flat |",
            ms(*t),
            ms(one),
            t.as_secs_f64() / one.as_secs_f64()
        );
    }
}

fn crypto_rows() {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use confidant_vault::crypto::{DocumentBinding, FieldBinding, RecordKey};
    for size in [64 * 1024usize, 1024 * 1024] {
        let value = vec![42u8; size];
        let key = RecordKey::generate().expect("key");
        let at = FieldBinding {
            record_id: Uuid::now_v7(),
            scope_id: Uuid::now_v7(),
            key_version: 1,
            name: "body",
            field_type: "text",
        };
        let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9u8; 32]).expect("key"));
        let rounds = (256 * 1024 * 1024 / size).max(16);
        // Alternate the two, five times each, and keep each one's best: the
        // machine runs other work, and one short pass is noise.
        let mut ours = Duration::MAX;
        let mut base = Duration::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(key.seal_field(&at, &value).expect("seal"));
            }
            ours = ours.min(started.elapsed());
            let started = Instant::now();
            for i in 0..rounds {
                let mut buf = Vec::with_capacity(value.len() + 16);
                buf.extend_from_slice(&value);
                let mut nonce = [0u8; 12];
                nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
                raw.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut buf,
                )
                .expect("raw seal");
                std::hint::black_box(buf);
            }
            base = base.min(started.elapsed());
        }
        let gbs = |d: Duration| (rounds * size) as f64 / d.as_secs_f64() / 1e9;
        println!(
            "| field encryption, {} KiB values | {:.2} GB/s | {:.2} GB/s (raw AES-256-GCM, same bytes) | {:.2} | ≥ 0.8 |",
            size / 1024,
            gbs(ours),
            gbs(base),
            base.as_secs_f64() / ours.as_secs_f64()
        );
    }
    // Documents: 256 MiB through the STREAM sealer, 64 KiB segments.
    let key = RecordKey::generate().expect("key");
    let at = DocumentBinding {
        record_id: Uuid::now_v7(),
        scope_id: Uuid::now_v7(),
        key_version: 1,
    };
    let segment = vec![1u8; 64 * 1024];
    let segments = 4096;
    let (mut sealer, _) = key.document_sealer(&at).expect("sealer");
    let started = Instant::now();
    for _ in 0..segments - 1 {
        std::hint::black_box(sealer.seal_next(&segment).expect("seal"));
    }
    std::hint::black_box(sealer.seal_last(&segment).expect("seal"));
    let ours = started.elapsed();
    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9u8; 32]).expect("key"));
    let started = Instant::now();
    for i in 0..segments {
        let mut buf = segment.clone();
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        raw.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .expect("raw seal");
        std::hint::black_box(buf);
    }
    let base = started.elapsed();
    let gbs = |d: Duration| (segments * segment.len()) as f64 / d.as_secs_f64() / 1e9;
    println!(
        "| document streaming encryption (STREAM, 64 KiB segments) | {:.2} GB/s | {:.2} GB/s (raw AES-256-GCM, same segments) | {:.2} | report |",
        gbs(ours),
        gbs(base),
        base.as_secs_f64() / ours.as_secs_f64()
    );
}
