//! A service's sealed secrets (identity's TOTP seeds, intake's invitation
//! contacts) across a KMS key rotation, on SQLite and PostgreSQL, with the
//! local KMS.

use confidant_runtime::ServiceName;
use confidant_runtime::kms::{Kms, LocalKms};
use confidant_runtime::outbox::Outbox;
use confidant_runtime::secret_box::SecretBox;
use confidant_runtime::storage::COMMON_ONLY;
use confidant_runtime::testing::TestDatabase;

const SEED: &[u8] = b"JBSWY3DPEHPK3PXP";

async fn open(t: &TestDatabase, kms: &LocalKms) -> SecretBox {
    SecretBox::open_or_create(&t.db, kms, ServiceName::Identity, "confidant.local")
        .await
        .unwrap()
}

/// The KMS key the stored data key is wrapped under.
async fn wrapped_under(t: &TestDatabase) -> String {
    let (key_id,): (String,) =
        t.db.fetch_optional("SELECT key_id FROM service_data_keys WHERE id = 1", vec![])
            .await
            .unwrap()
            .unwrap();
    key_id
}

/// The actions of the audit events waiting in the outbox, with reasons.
async fn queued(t: &TestDatabase) -> Vec<(String, String)> {
    Outbox::new(t.db.clone())
        .pending(100)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.event.action, p.event.reason))
        .collect()
}

async fn sealed_secrets_survive_a_kms_key_rotation(t: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("kms-master.key");
    let kms = LocalKms::open(&keyring).unwrap();
    let first = kms.active_key_id();
    let sealed = open(t, &kms).await.seal(b"staff-1", SEED).unwrap();
    assert!(
        open(t, &kms).await.open(b"staff-2", &sealed).is_err(),
        "bound to its owner"
    );
    // Reopened under the same KMS key: nothing moves.
    assert_eq!(
        &*open(t, &kms).await.open(b"staff-1", &sealed).unwrap(),
        SEED
    );
    assert_eq!(wrapped_under(t).await, first);
    assert!(queued(t).await.is_empty());

    // After a rotation the data key moves to the new KMS key at the next
    // start, once, with an audit event; it is the same key, so what was
    // sealed before still opens.
    let second = kms.rotate().unwrap();
    assert_eq!(
        &*open(t, &kms).await.open(b"staff-1", &sealed).unwrap(),
        SEED
    );
    assert_eq!(wrapped_under(t).await, second);
    open(t, &kms).await;
    assert_eq!(
        queued(t).await,
        [(
            "service.data_key.rewrapped".to_owned(),
            "kms_key_rotated".to_owned()
        )]
    );

    // So the old KMS key can be retired.
    let kept: String = std::fs::read_to_string(&keyring)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with(&format!("{first} ")))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&keyring, kept).unwrap();
    let retired = LocalKms::open(&keyring).unwrap();
    assert_eq!(
        &*open(t, &retired).await.open(b"staff-1", &sealed).unwrap(),
        SEED
    );
}

confidant_runtime::backend_tests!(COMMON_ONLY;
    sealed_secrets_survive_a_kms_key_rotation,
);
