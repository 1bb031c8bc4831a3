//! The vault when the KMS goes away: a KMS API server of the test's own
//! (moto) is stopped mid-test. Writes that need the KMS fail with
//! UNAVAILABLE and write nothing; keys already in the cache keep serving
//! reads; a replica with a cold cache cannot read.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use confidant_proto::vault::v1 as pb;
use confidant_runtime::kms::Kms;
use confidant_runtime::storage::Backend;
use confidant_runtime::testing::{TestDatabase, new_kms_key};
use confidant_vault::domain::{FieldSelection, Limits, NewRecord, Purpose};
use confidant_vault::error::Error;
use confidant_vault::keys::{CacheLimits, Keyring};
use confidant_vault::records::{Actor, ReadIntent, Settings, Vault};
use confidant_vault::store::VaultStore;
use uuid::Uuid;

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_moto() -> (Moto, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server on PATH (scripts/test.sh installs moto[server])");
    let moto = Moto(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (moto, format!("http://127.0.0.1:{port}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("moto_server did not start");
}

async fn kms(endpoint: &str) -> Arc<dyn Kms> {
    Arc::new(new_kms_key(endpoint, "confidant test").await.0)
}

fn vault(db: &TestDatabase, kms: Arc<dyn Kms>) -> Vault {
    vault_keeping_keys(db, kms, Duration::from_secs(300))
}

/// A vault whose cached scope keys expire after `max_age`.
fn vault_keeping_keys(db: &TestDatabase, kms: Arc<dyn Kms>, max_age: Duration) -> Vault {
    Vault::new(
        VaultStore::new(db.db.clone()),
        Keyring::new(
            kms,
            CacheLimits {
                capacity: 100,
                max_age,
                max_uses: 1000,
            },
        ),
        Settings {
            limits: Limits {
                max_field_bytes: 1024,
                max_fields: 10,
            },
            max_document_bytes: 8 * 1024 * 1024,
            destruction_window: Duration::ZERO,
            trust_domain: "confidant.local".into(),
        },
    )
}

fn note(client: Uuid, category: pb::DataCategory) -> NewRecord {
    NewRecord::parse(
        Some(&pb::NewRecord {
            client_id: client.to_string(),
            matter_id: String::new(),
            category: category as i32,
            fields: vec![pb::Field {
                name: "note".into(),
                r#type: pb::FieldType::Text as i32,
                value: "called about the lease".into(),
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
    .unwrap()
}

async fn read(vault: &Vault, actor: &Actor, id: Uuid) -> Result<String, Error> {
    let row = vault.load(id).await?;
    let roles = vec!["partner".to_owned()];
    let intent = ReadIntent {
        purpose: Purpose::LegalAdvice,
        justification: "",
        roles: &roles,
        fields: FieldSelection::All,
    };
    let mut results = vault.open_many(actor, vec![row], &intent).await;
    Ok(results.pop().unwrap()?.fields[0].value.to_string())
}

/// The vault's failed KMS calls so far, by reason (unavailable, refused,
/// unwrap failed, other).
fn failures(vault: &Vault) -> Vec<u64> {
    let counts: Vec<(&str, u64)> = vault.keys().stats().kms_failure_counts().collect();
    assert_eq!(
        counts.iter().map(|(reason, _)| *reason).collect::<Vec<_>>(),
        ["unavailable", "refused", "unwrap_failed", "other"]
    );
    counts.into_iter().map(|(_, n)| n).collect()
}

async fn the_vault_rides_out_a_kms_outage(backend: Backend) {
    let db = TestDatabase::fresh(backend, confidant_vault::MIGRATIONS).await;
    let (moto, endpoint) = start_moto().await;
    let kms = kms(&endpoint).await;
    let warm = vault(&db, kms.clone());
    let keep = Duration::from_secs(3);
    let brief = vault_keeping_keys(&db, kms.clone(), keep);
    let actor = Actor::Staff {
        staff_id: Uuid::now_v7().to_string(),
        roles: vec!["partner".into()],
        peer: "spiffe://confidant.local/firm-app".into(),
        session: String::new(),
    };
    let client = Uuid::now_v7();
    let stored = warm
        .create(&actor, &note(client, pb::DataCategory::MatterFile), None)
        .await
        .unwrap();
    assert_eq!(
        read(&warm, &actor, stored.id).await.unwrap(),
        "called about the lease"
    );

    let loaded = std::time::Instant::now();
    assert_eq!(
        read(&brief, &actor, stored.id).await.unwrap(),
        "called about the lease"
    );

    drop(moto);

    // A key cached for a short time serves reads until it expires; then
    // the next read needs the KMS.
    assert_eq!(
        read(&brief, &actor, stored.id).await.unwrap(),
        "called about the lease"
    );
    tokio::time::sleep(
        (loaded + keep + Duration::from_millis(100))
            .saturating_duration_since(std::time::Instant::now()),
    )
    .await;
    let err = read(&brief, &actor, stored.id).await.unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
    // Each failed KMS call is counted as the KMS being unavailable.
    assert_eq!(failures(&warm), [0, 0, 0, 0]);
    assert_eq!(failures(&brief), [1, 0, 0, 0]);

    // Cached keys still serve reads, and writes into a known scope.
    assert_eq!(
        read(&warm, &actor, stored.id).await.unwrap(),
        "called about the lease"
    );
    warm.create(&actor, &note(client, pb::DataCategory::MatterFile), None)
        .await
        .unwrap();

    // A new scope needs the KMS: UNAVAILABLE, and nothing is written.
    let err = warm
        .create(&actor, &note(client, pb::DataCategory::Health), None)
        .await
        .unwrap_err();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(failures(&warm), [1, 0, 0, 0]);
    let scopes: Vec<(Uuid,)> = db
        .db
        .fetch_all(
            "SELECT id FROM vault_scopes WHERE category = 'health'",
            vec![],
        )
        .await
        .unwrap();
    assert!(scopes.is_empty());
    let records: Vec<(Uuid,)> = db
        .db
        .fetch_all("SELECT id FROM vault_records", vec![])
        .await
        .unwrap();
    assert_eq!(records.len(), 2);

    // A replica with a cold cache cannot unwrap: UNAVAILABLE, no data.
    let cold = vault(&db, kms);
    let err = read(&cold, &actor, stored.id).await.unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_vault_rides_out_a_kms_outage() {
    the_vault_rides_out_a_kms_outage(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_vault_rides_out_a_kms_outage() {
    the_vault_rides_out_a_kms_outage(Backend::Postgres).await;
}
