//! The KMS conformance suite, run against the local keyring and against an
//! AWS KMS API server (moto, started by scripts/test.sh).

use std::sync::Arc;

use confidant_runtime::testing::{emulated_kms, kms_endpoint, new_kms_key};
use confidant_vault::kms::{
    AwsKms, AwsSettings, DataKey, EncryptionContext, Error, Kms, LocalKms, WrappedKey,
};

async fn aws_with_new_key() -> (Arc<dyn Kms>, AwsKms, String) {
    let admin = AwsKms::connect(&emulated_kms(&kms_endpoint(), "")).await;
    let (kms, key_id) = new_kms_key(&kms_endpoint(), "confidant test").await;
    (Arc::new(kms), admin, key_id)
}

fn scope(id: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with("confidant:scope", id)
        .with("confidant:purpose", "scope-key")
}

async fn a_data_key_unwraps_only_with_its_own_context(kms: Arc<dyn Kms>) {
    let key = kms.generate_data_key(&scope("a")).await.unwrap();
    assert_ne!(
        key.wrapped.ciphertext.as_slice(),
        key.plaintext.expose().as_slice()
    );
    let again = kms.decrypt(&key.wrapped, &scope("a")).await.unwrap();
    assert_eq!(again.expose(), key.plaintext.expose());

    // The same wrapped key presented as another scope's does not unwrap.
    assert!(matches!(
        kms.decrypt(&key.wrapped, &scope("b")).await,
        Err(Error::InvalidCiphertext)
    ));
    // Nor does a tampered one.
    let mut tampered = key.wrapped.clone();
    let last = tampered.ciphertext.len() - 1;
    tampered.ciphertext[last] ^= 1;
    assert!(kms.decrypt(&tampered, &scope("a")).await.is_err());
}

async fn every_data_key_is_fresh(kms: Arc<dyn Kms>) {
    let a = kms.generate_data_key(&scope("a")).await.unwrap();
    let b = kms.generate_data_key(&scope("a")).await.unwrap();
    assert_ne!(a.plaintext.expose(), b.plaintext.expose());
    assert_ne!(a.wrapped.ciphertext, b.wrapped.ciphertext);
}

macro_rules! kms_tests {
    ($($name:ident),+ $(,)?) => {
        mod local_provider {
            $( #[tokio::test] async fn $name() {
                let dir = tempfile::tempdir().unwrap();
                let kms = confidant_vault::kms::LocalKms::open(&dir.path().join("kms.keys")).unwrap();
                super::$name(std::sync::Arc::new(kms)).await
            } )+
        }
        mod aws_provider {
            $( #[tokio::test] async fn $name() { super::$name(super::aws_with_new_key().await.0).await } )+
        }
    };
}

kms_tests!(
    a_data_key_unwraps_only_with_its_own_context,
    every_data_key_is_fresh
);

#[tokio::test]
async fn aws_rewrap_moves_a_key_to_the_new_kms_key_without_changing_it() {
    let (kms, admin, _) = aws_with_new_key().await;
    let key = kms.generate_data_key(&scope("a")).await.unwrap();
    let new_key = admin.client().create_key().send().await.unwrap();
    let new_id = new_key.key_metadata().unwrap().key_id().to_owned();
    let moved = kms
        .rewrap(&key.wrapped, &scope("a"), Some(&new_id))
        .await
        .unwrap();
    assert!(
        moved.key_id.contains(&new_id),
        "{} should name {new_id}",
        moved.key_id
    );
    assert_eq!(
        kms.decrypt(&moved, &scope("a")).await.unwrap().expose(),
        key.plaintext.expose()
    );
}

/// A local keyring in a fresh directory, rotated once: a data key made
/// under its first key, and the same key rewrapped under the second. The
/// directory lasts as long as the value.
struct Rotated {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    kms: LocalKms,
    old: DataKey,
    moved: WrappedKey,
    first: String,
    second: String,
}

async fn rotated_local_keyring() -> Rotated {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.keys");
    let kms = LocalKms::open(&path).unwrap();
    let old = kms.generate_data_key(&scope("a")).await.unwrap();
    let first = kms.active_key_id();
    let second = kms.rotate().unwrap();
    let moved = kms.rewrap(&old.wrapped, &scope("a"), None).await.unwrap();
    Rotated {
        _dir: dir,
        path,
        kms,
        old,
        moved,
        first,
        second,
    }
}

/// The keyring file is for its owner only.
fn assert_owner_only(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn local_rotation_keeps_old_keys_unwrapping_and_survives_reopening() {
    let r = rotated_local_keyring().await;
    assert_ne!(r.first, r.second);
    assert_eq!(r.moved.key_id, r.second);

    let reopened = LocalKms::open(&r.path).unwrap();
    assert_eq!(reopened.active_key_id(), r.second);
    for wrapped in [&r.old.wrapped, &r.moved] {
        assert_eq!(
            reopened
                .decrypt(wrapped, &scope("a"))
                .await
                .unwrap()
                .expose(),
            r.old.plaintext.expose()
        );
    }
    assert_owner_only(&r.path);
}

#[tokio::test]
async fn a_rotation_to_a_named_key_refuses_an_id_the_keyring_cannot_hold() {
    let r = rotated_local_keyring().await;
    // An id already there (which would make two keys one), empty, or with
    // a space (the keyring's separator) is refused, and nothing changes.
    for id in [r.first.as_str(), r.second.as_str(), "", "local- x"] {
        assert!(
            matches!(r.kms.rotate_to(id), Err(Error::Keyring(_))),
            "{id:?} accepted"
        );
    }
    let third = LocalKms::new_key_id();
    assert!(third.starts_with("local-") && third != r.second);
    r.kms.rotate_to(&third).unwrap();
    let reopened = LocalKms::open(&r.path).unwrap();
    assert_eq!(
        reopened.key_ids().unwrap(),
        [r.first.as_str(), r.second.as_str(), third.as_str()]
    );
    assert_eq!(reopened.active_key_id(), third);
}

#[tokio::test]
async fn a_retired_local_key_is_gone_for_good_and_the_active_one_stays() {
    let r = rotated_local_keyring().await;
    assert!(
        matches!(r.kms.retire(&r.second), Err(Error::Keyring(_))),
        "the active key stays"
    );
    assert!(matches!(
        r.kms.retire("local-none"),
        Err(Error::KeyNotUsable(_))
    ));
    assert_eq!(
        r.kms.key_ids().unwrap(),
        [r.first.as_str(), r.second.as_str()]
    );
    r.kms.retire(&r.first).unwrap();

    // Neither this keyring nor the file opened afresh unwraps under the
    // retired key; what was rewrapped still opens.
    let reopened = LocalKms::open(&r.path).unwrap();
    for keyring in [&r.kms, &reopened] {
        assert_eq!(keyring.key_ids().unwrap(), [r.second.as_str()]);
        assert!(matches!(
            keyring.decrypt(&r.old.wrapped, &scope("a")).await,
            Err(Error::KeyNotUsable(_))
        ));
        assert_eq!(
            keyring
                .decrypt(&r.moved, &scope("a"))
                .await
                .unwrap()
                .expose(),
            r.old.plaintext.expose()
        );
    }
    assert!(!std::fs::read_to_string(&r.path).unwrap().contains(&r.first));
    assert_owner_only(&r.path);
}

#[tokio::test]
async fn an_unreachable_kms_is_reported_as_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kms = AwsKms::connect(&AwsSettings {
        key_id: "alias/none".into(),
        region: "eu-west-1".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        static_credentials: Some(("testing".into(), "testing".into())),
    })
    .await;
    assert!(matches!(
        kms.generate_data_key(&scope("a")).await,
        Err(Error::Unavailable(_))
    ));
}
