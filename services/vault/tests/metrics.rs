//! The vault's key metrics reach an OTLP collector: KMS calls by operation
//! and data-key cache hits, with no client data in any attribute.
//!
//! This file holds a single test: it installs the process-wide telemetry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use confidant_proto::vault::v1 as pb;
use confidant_runtime::kms::LocalKms;
use confidant_runtime::portable::{Statement, Value as Bound};
use confidant_runtime::storage::Backend;
use confidant_runtime::telemetry::TelemetryConfig;
use confidant_runtime::testing::TestDatabase;
use confidant_runtime::testing::otlp::Collector;
use confidant_vault::domain::{FieldSelection, Limits, NewRecord, Purpose};
use confidant_vault::keys::{CacheLimits, Keyring};
use confidant_vault::records::{Actor, ReadIntent, Settings, Vault};
use confidant_vault::store::VaultStore;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use uuid::Uuid;

const SECRET: &str = "P7654321";

/// The latest value of every data point of `name`, with its attributes.
fn points(collector: &Collector, name: &str) -> Vec<(Vec<(String, String)>, i64)> {
    let exports = collector.received().metrics;
    let mut latest = Vec::new();
    for export in exports.iter() {
        for rm in &export.resource_metrics {
            for sm in &rm.scope_metrics {
                for metric in sm.metrics.iter().filter(|m| m.name == name) {
                    let Some(Data::Sum(sum)) = &metric.data else {
                        continue;
                    };
                    latest = sum
                        .data_points
                        .iter()
                        .map(|p| {
                            let attributes = p
                                .attributes
                                .iter()
                                .map(|kv| {
                                    let value =
                                        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                            Some(Value::StringValue(s)) => s.clone(),
                                            other => format!("{other:?}"),
                                        };
                                    (kv.key.clone(), value)
                                })
                                .collect();
                            let value = match p.value {
                                Some(number_data_point::Value::AsInt(i)) => i,
                                Some(number_data_point::Value::AsDouble(d)) => d as i64,
                                None => 0,
                            };
                            (attributes, value)
                        })
                        .collect();
                }
            }
        }
    }
    latest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_metrics_reach_the_collector_without_client_data() {
    let collector = Collector::default();
    let addr = collector.listen_plain().await;
    let guard = confidant_runtime::telemetry::init(
        "confidant-vault-test",
        &TelemetryConfig {
            otlp_endpoint: Some(format!("http://{addr}")),
            // Only the explicit flush below exports.
            metrics_interval_seconds: 3600,
            ..TelemetryConfig::default()
        },
    )
    .unwrap();

    let db = TestDatabase::fresh(Backend::Sqlite, confidant_vault::MIGRATIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(LocalKms::open(&dir.path().join("kms.keys")).unwrap());
    let vault = Vault::new(
        VaultStore::new(db.db.clone()),
        Keyring::new(
            kms,
            CacheLimits {
                capacity: 10,
                max_age: Duration::from_secs(300),
                max_uses: 1000,
            },
        ),
        Settings {
            limits: Limits {
                max_field_bytes: 1024,
                max_fields: 10,
            },
            max_document_bytes: 1024,
            destruction_window: Duration::ZERO,
            trust_domain: "confidant.local".into(),
        },
    );
    confidant_vault::metrics::register(&vault.keys().shared_stats());

    let client = Uuid::now_v7();
    let actor = Actor::Staff {
        staff_id: Uuid::now_v7().to_string(),
        roles: vec!["partner".into()],
        peer: "spiffe://confidant.local/firm-app".into(),
        session: String::new(),
    };
    let record = NewRecord::parse(
        Some(&pb::NewRecord {
            client_id: client.to_string(),
            matter_id: String::new(),
            category: pb::DataCategory::IdentityDocument as i32,
            fields: vec![pb::Field {
                name: "passport_number".into(),
                r#type: pb::FieldType::NationalId as i32,
                value: SECRET.into(),
                masked: false,
            }],
            original: false,
        }),
        Limits {
            max_field_bytes: 1024,
            max_fields: 10,
        },
        "record",
    )
    .unwrap();
    let stored = vault.create(&actor, &record, None).await.unwrap();
    let roles = vec!["partner".to_owned()];
    for _ in 0..3 {
        let row = vault.load(stored.id).await.unwrap();
        let opened = vault
            .open_many(
                &actor,
                vec![row],
                &ReadIntent {
                    purpose: Purpose::LegalAdvice,
                    justification: "checking the file",
                    roles: &roles,
                    fields: FieldSelection::All,
                },
            )
            .await
            .pop()
            .unwrap()
            .unwrap();
        assert_eq!(opened.fields[0].value.to_string(), SECRET);
    }
    // Its stored ciphertext altered, the record does not open: counted.
    let (mut fields,): (Vec<u8>,) = db
        .db
        .fetch_optional(
            "SELECT fields FROM vault_records WHERE id = $1",
            vec![Bound::Uuid(stored.id)],
        )
        .await
        .unwrap()
        .unwrap();
    let last = fields.len() - 1;
    fields[last] ^= 1;
    db.db
        .transact(
            vec![Statement::new(
                "UPDATE vault_records SET fields = $1 WHERE id = $2",
                vec![Bound::Bytes(fields), Bound::Uuid(stored.id)],
            )],
            &[],
        )
        .await
        .unwrap();
    let row = vault.load(stored.id).await.unwrap();
    let failed = vault
        .open_many(
            &actor,
            vec![row],
            &ReadIntent {
                purpose: Purpose::LegalAdvice,
                justification: "",
                roles: &roles,
                fields: FieldSelection::All,
            },
        )
        .await
        .pop()
        .unwrap();
    assert!(failed.is_err());

    guard.flush();
    let deadline = Instant::now() + Duration::from_secs(20);
    while points(&collector, confidant_vault::metrics::KMS_CALLS).is_empty() {
        assert!(Instant::now() < deadline, "no metrics arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
        guard.flush();
    }
    let calls = points(&collector, confidant_vault::metrics::KMS_CALLS);
    let generated = calls
        .iter()
        .find(|(a, _)| a.contains(&("operation".into(), "generate_data_key".into())))
        .map(|(_, v)| *v);
    assert_eq!(generated, Some(1), "{calls:?}");
    let hits = points(&collector, confidant_vault::metrics::CACHE_HITS);
    assert!(hits.iter().any(|(_, v)| *v >= 3), "{hits:?}");
    let unreadable = points(&collector, confidant_vault::metrics::UNREADABLE);
    let by_reason = |reason: &str| {
        unreadable
            .iter()
            .find(|(a, _)| a.contains(&("reason".into(), reason.into())))
            .map(|(_, v)| *v)
    };
    assert_eq!(
        (by_reason("integrity"), by_reason("key_unwrap_failed")),
        (Some(1), Some(0)),
        "{unreadable:?}"
    );

    // Nothing about the client or the data in any attribute.
    let exports = collector.text();
    assert!(!exports.contains(SECRET));
    assert!(!exports.contains(&client.to_string()));
    assert!(!exports.contains(&stored.scope_id.to_string()));
}
