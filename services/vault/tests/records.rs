//! The vault's operations on every backend: SQLite with the local KMS, and
//! PostgreSQL with the AWS KMS API (moto, started by scripts/test.sh).
//! Stored data is checked in the raw tables.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;

use confidant_proto::vault::v1 as pb;
use confidant_runtime::kms::{AwsKms, Kms, LocalKms, WrappedKey};
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Backend;
use confidant_runtime::testing::{TestDatabase, emulated_kms, kms_endpoint, new_kms_key};
use confidant_vault::crypto::ScopeKey;
use confidant_vault::domain::{Category, FieldSelection, Limits, NewRecord, Purpose};
use confidant_vault::error::Error;
use confidant_vault::keys::{CacheLimits, Keyring};
use confidant_vault::records::{Actor, ReadIntent, Rewrapped, Settings, Vault};
use confidant_vault::store::{HoldCover, VaultStore};
use uuid::Uuid;

async fn aws_kms(endpoint: &str) -> AwsKms {
    new_kms_key(endpoint, "confidant test").await.0
}

/// The KMS a backend's tests use: local for SQLite (as in dev), the AWS API
/// for PostgreSQL (as in production).
async fn kms_for(db: &TestDatabase, dir: &std::path::Path) -> Arc<dyn Kms> {
    match db.db.backend() {
        Backend::Sqlite => Arc::new(LocalKms::open(&dir.join("kms.keys")).unwrap()),
        Backend::Postgres => Arc::new(aws_kms(&kms_endpoint()).await),
    }
}

fn vault_with(db: &TestDatabase, kms: Arc<dyn Kms>, limits: CacheLimits) -> Vault {
    Vault::new(
        VaultStore::new(db.db.clone()),
        Keyring::new(kms, limits),
        Settings {
            limits: Limits {
                max_field_bytes: 64 * 1024,
                max_fields: 50,
            },
            max_document_bytes: 8 * 1024 * 1024,
            destruction_window: Duration::ZERO,
            trust_domain: "confidant.local".into(),
        },
    )
}

const CACHE: CacheLimits = CacheLimits {
    capacity: 100,
    max_age: Duration::from_secs(300),
    max_uses: 100_000,
};

fn partner() -> Actor {
    Actor::Staff {
        staff_id: Uuid::now_v7().to_string(),
        roles: vec!["partner".into()],
        peer: "spiffe://confidant.local/firm-app".into(),
        session: String::new(),
    }
}

fn retention() -> Actor {
    Actor::Service {
        peer: "spiffe://confidant.local/retention".into(),
    }
}

fn record(
    client: Uuid,
    matter: Option<Uuid>,
    category: pb::DataCategory,
    fields: &[(&str, pb::FieldType, &str)],
) -> NewRecord {
    let proto = pb::NewRecord {
        client_id: client.to_string(),
        matter_id: matter.map(|m| m.to_string()).unwrap_or_default(),
        category: category as i32,
        fields: fields
            .iter()
            .map(|(n, t, v)| pb::Field {
                name: (*n).into(),
                r#type: *t as i32,
                value: (*v).into(),
                masked: false,
            })
            .collect(),
        original: false,
    };
    NewRecord::parse(
        Some(&proto),
        Limits {
            max_field_bytes: 64 * 1024,
            max_fields: 50,
        },
        "record",
    )
    .unwrap()
}

fn passport(client: Uuid, matter: Option<Uuid>, number: &str) -> NewRecord {
    record(
        client,
        matter,
        pb::DataCategory::IdentityDocument,
        &[
            ("surname", pb::FieldType::Text, "Okafor"),
            ("passport_number", pb::FieldType::NationalId, number),
        ],
    )
}

fn intent<'a>(roles: &'a [String], justification: &'a str) -> ReadIntent<'a> {
    ReadIntent {
        purpose: Purpose::LegalAdvice,
        justification,
        roles,
        fields: FieldSelection::All,
    }
}

async fn read_one(
    vault: &Vault,
    actor: &Actor,
    id: Uuid,
    roles: &[String],
) -> Result<Vec<(String, String, bool)>, Error> {
    let row = vault.load(id).await?;
    let mut results = vault
        .open_many(actor, vec![row], &intent(roles, "reviewing the file"))
        .await;
    let opened = results.pop().expect("one result")?;
    Ok(opened
        .fields
        .into_iter()
        .map(|f| (f.name, f.value.to_string(), f.masked))
        .collect())
}

/// The stored (encrypted) fields of record `id`, as the raw database holds them.
async fn stored_fields(db: &TestDatabase, id: Uuid) -> Vec<u8> {
    let (fields,): (Vec<u8>,) = db
        .db
        .fetch_optional(
            "SELECT fields FROM vault_records WHERE id = $1",
            vec![confidant_runtime::portable::Value::Uuid(id)],
        )
        .await
        .unwrap()
        .expect("the record is stored");
    fields
}

/// Overwrites the stored fields of record `id` behind the vault's back.
async fn overwrite_fields(db: &TestDatabase, id: Uuid, fields: Vec<u8>) {
    db.db
        .transact(
            vec![confidant_runtime::portable::Statement::new(
                "UPDATE vault_records SET fields = $1 WHERE id = $2",
                vec![
                    confidant_runtime::portable::Value::Bytes(fields),
                    confidant_runtime::portable::Value::Uuid(id),
                ],
            )],
            &[],
        )
        .await
        .unwrap();
}

/// Every BLOB stored in the vault's tables (scope keys, record keys,
/// fields), as the raw database holds them.
async fn stored_blobs(db: &TestDatabase) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let scopes: Vec<(Option<Vec<u8>>,)> = db
        .db
        .fetch_all("SELECT wrapped_key FROM vault_scopes", vec![])
        .await
        .unwrap();
    out.extend(scopes.into_iter().filter_map(|r| r.0));
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = db
        .db
        .fetch_all("SELECT wrapped_key, fields FROM vault_records", vec![])
        .await
        .unwrap();
    for (k, f) in records {
        out.extend(k);
        out.push(f);
    }
    out
}

async fn records_are_encrypted_at_rest_and_bound_to_their_place(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_with(db, kms_for(db, dir.path()).await, CACHE);
    let actor = partner();
    let client = Uuid::now_v7();
    let matter = Some(Uuid::now_v7());
    let a = vault
        .create(&actor, &passport(client, matter, "P1234567"), None)
        .await
        .unwrap();
    let b = vault
        .create(&actor, &passport(client, matter, "P7654321"), None)
        .await
        .unwrap();
    assert_eq!(
        a.scope_id, b.scope_id,
        "one scope per client, matter and category"
    );

    // Nothing in clear at rest.
    for blob in stored_blobs(db).await {
        for needle in [b"Okafor".as_slice(), b"P1234567", b"P7654321"] {
            assert!(
                !blob.windows(needle.len()).any(|w| w == needle),
                "plaintext at rest"
            );
        }
    }

    let partner_roles = vec!["partner".to_owned()];
    let fields = read_one(&vault, &actor, a.id, &partner_roles)
        .await
        .unwrap();
    assert_eq!(
        fields,
        [
            ("surname".to_owned(), "Okafor".to_owned(), false),
            ("passport_number".to_owned(), "P1234567".to_owned(), false)
        ]
    );
    // Masks by role, from the rules table.
    let paralegal = read_one(&vault, &actor, a.id, &["paralegal".to_owned()])
        .await
        .unwrap();
    assert_eq!(
        paralegal[1],
        ("passport_number".into(), "****4567".into(), true)
    );
    let assistant = read_one(&vault, &actor, a.id, &["legal_assistant".to_owned()])
        .await
        .unwrap();
    assert!(
        assistant
            .iter()
            .all(|(_, v, masked)| v == "[redacted]" && *masked)
    );

    // A's ciphertext copied over B's does not open as B.
    overwrite_fields(db, b.id, stored_fields(db, a.id).await).await;
    assert!(matches!(
        read_one(&vault, &actor, b.id, &partner_roles).await,
        Err(Error::Integrity)
    ));

    // A retried create with its request id returns the first record.
    let request = Uuid::now_v7().to_string();
    let first = vault
        .create(&actor, &passport(client, None, "X9999999"), Some(&request))
        .await
        .unwrap();
    let again = vault
        .create(&actor, &passport(client, None, "X9999999"), Some(&request))
        .await
        .unwrap();
    assert_eq!(first.id, again.id);
    let count: Vec<(Uuid,)> = db
        .db
        .fetch_all(
            "SELECT id FROM vault_records WHERE request_id = $1",
            vec![confidant_runtime::portable::Value::Text(request)],
        )
        .await
        .unwrap();
    assert_eq!(count.len(), 1);
}

/// A vault (its local KMS under `dir`) holding one passport, stored by a
/// partner.
async fn a_stored_passport(
    db: &TestDatabase,
    dir: &std::path::Path,
) -> (Vault, Actor, confidant_vault::store::RecordRow) {
    let vault = vault_with(db, kms_for(db, dir).await, CACHE);
    let actor = partner();
    let stored = vault
        .create(&actor, &passport(Uuid::now_v7(), None, "P1234567"), None)
        .await
        .unwrap();
    (vault, actor, stored)
}

async fn a_read_whose_audit_event_cannot_be_recorded_returns_nothing(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let (vault, actor, stored) = a_stored_passport(db, dir.path()).await;
    let roles = vec!["partner".to_owned()];
    assert!(read_one(&vault, &actor, stored.id, &roles).await.is_ok());

    // The outbox is gone: the event cannot be made durable, so the read
    // fails and no field leaves the vault.
    db.db
        .transact(
            vec![confidant_runtime::portable::Statement::new(
                "DROP TABLE outbox",
                vec![],
            )],
            &[],
        )
        .await
        .unwrap();
    let row = vault.load(stored.id).await.unwrap();
    let results = vault
        .open_many(&actor, vec![row], &intent(&roles, ""))
        .await;
    assert_eq!(results.len(), 1);
    assert!(
        matches!(&results[0], Err(Error::Audit(_))),
        "{:?}",
        results[0]
    );
}

/// The stored form of a record's fields, as the vault writes it (one
/// message per record), so that the test can spoil one field's ciphertext.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredFields {
    #[prost(message, repeated, tag = "1")]
    fields: Vec<StoredField>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredField {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    field_type: String,
    #[prost(bytes = "vec", tag = "3")]
    sealed: Vec<u8>,
}

/// The events about `resource` (a record or scope) queued for the audit
/// log, oldest first.
async fn queued_events(
    db: &TestDatabase,
    resource: Uuid,
) -> Vec<confidant_proto::audit::v1::AuditEvent> {
    confidant_runtime::outbox::Outbox::new(db.db.clone())
        .pending(10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.event)
        .filter(|e| {
            e.resource
                .as_ref()
                .is_some_and(|r| r.id == resource.to_string())
        })
        .collect()
}

/// The fields each committed read event of `record` says it disclosed.
async fn disclosed(db: &TestDatabase, record: Uuid) -> Vec<Vec<String>> {
    queued_events(db, record)
        .await
        .into_iter()
        .filter(|e| e.action == "vault.record.read")
        .map(|e| e.disclosed_fields)
        .collect()
}

async fn a_read_mask_opens_only_the_named_fields_and_the_event_names_them(db: &TestDatabase) {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let (vault, actor, stored) = a_stored_passport(db, dir.path()).await;
    let roles = vec!["partner".to_owned()];
    let read = |fields: FieldSelection| {
        let vault = &vault;
        let actor = &actor;
        let roles = &roles;
        async move {
            let row = vault.load(stored.id).await?;
            let intent = ReadIntent {
                fields,
                ..intent(roles, "")
            };
            let opened = vault
                .open_many(actor, vec![row], &intent)
                .await
                .pop()
                .expect("one result")?;
            Ok::<_, Error>(
                opened
                    .fields
                    .into_iter()
                    .map(|f| (f.name, f.value.to_string()))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let number = FieldSelection::Only(vec!["passport_number".into()]);

    assert_eq!(
        read(FieldSelection::All).await.unwrap(),
        [
            ("surname".to_owned(), "Okafor".to_owned()),
            ("passport_number".to_owned(), "P1234567".to_owned())
        ]
    );
    assert_eq!(
        read(number.clone()).await.unwrap(),
        [("passport_number".to_owned(), "P1234567".to_owned())]
    );
    // The log says exactly what each read disclosed.
    assert_eq!(
        disclosed(db, stored.id).await,
        [
            vec!["surname".to_owned(), "passport_number".to_owned()],
            vec!["passport_number".to_owned()]
        ]
    );

    // A field the record lacks: refused before any key is touched, and no
    // read is recorded, for nothing was read.
    let Err(Error::Invalid(v)) = read(FieldSelection::Only(vec![
        "passport_number".into(),
        "email".into(),
    ]))
    .await
    else {
        panic!("a mask naming a missing field is refused");
    };
    let named: Vec<&str> = v.as_slice().iter().map(|f| f.field.as_str()).collect();
    assert_eq!(named, ["read_mask.paths[1]"]);
    assert_eq!(disclosed(db, stored.id).await.len(), 2);

    // The fields left out are not even opened: with the surname's
    // ciphertext spoiled, a read of everything fails, a read of the
    // passport number alone still succeeds.
    let mut fields = StoredFields::decode(stored_fields(db, stored.id).await.as_slice()).unwrap();
    assert_eq!(fields.fields[0].name, "surname");
    let last = fields.fields[0].sealed.len() - 1;
    fields.fields[0].sealed[last] ^= 1;
    overwrite_fields(db, stored.id, fields.encode_to_vec()).await;
    assert!(matches!(
        read(FieldSelection::All).await,
        Err(Error::Integrity)
    ));
    assert_eq!(
        read(number).await.unwrap(),
        [("passport_number".to_owned(), "P1234567".to_owned())]
    );
    // The record that did not open is on its way to the audit log, once,
    // for the security officer: nothing of it was returned.
    let unreadable: Vec<(i32, String)> = queued_events(db, stored.id)
        .await
        .into_iter()
        .filter(|e| e.action == "vault.record.unreadable")
        .map(|e| (e.outcome, e.reason))
        .collect();
    assert_eq!(
        unreadable,
        [(
            confidant_proto::audit::v1::Outcome::Failed as i32,
            "integrity".to_owned()
        )]
    );
}

async fn ten_thousand_reads_of_one_scope_cost_a_handful_of_kms_calls(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_with(db, kms_for(db, dir.path()).await, CACHE);
    let actor = partner();
    let client = Uuid::now_v7();
    let mut rows = Vec::new();
    for i in 0..500 {
        let r = vault
            .create(&actor, &passport(client, None, &format!("P{i:07}")), None)
            .await
            .unwrap();
        rows.push(r.id);
    }
    // A fresh replica: cold cache.
    let kms = vault.keys().kms().clone();
    let reader = vault_with(db, kms, CACHE);
    let roles = vec!["partner".to_owned()];
    for _ in 0..20 {
        let mut batch = Vec::new();
        for id in &rows {
            batch.push(reader.load(*id).await.unwrap());
        }
        let results = reader.open_many(&actor, batch, &intent(&roles, "")).await;
        assert!(results.iter().all(Result::is_ok));
    }
    let stats = reader.keys().stats();
    let calls = stats.kms_decrypt_calls.load(Ordering::Relaxed);
    assert_eq!(calls, 1, "10,000 reads of one scope, one unwrap");
    assert_eq!(stats.cache_hits.load(Ordering::Relaxed), 9_999);

    // With the cache off, every read is a KMS call: the cache is what saves them.
    let uncached = vault_with(
        db,
        vault.keys().kms().clone(),
        CacheLimits {
            capacity: 0,
            ..CACHE
        },
    );
    let batch = vec![
        reader.load(rows[0]).await.unwrap(),
        reader.load(rows[1]).await.unwrap(),
    ];
    let _ = uncached.open_many(&actor, batch, &intent(&roles, "")).await;
    assert_eq!(
        uncached
            .keys()
            .stats()
            .kms_decrypt_calls
            .load(Ordering::Relaxed),
        2
    );
}

async fn a_shredded_scope_is_unreadable_and_no_stored_key_opens_it(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let kms = kms_for(db, dir.path()).await;
    let vault = vault_with(db, kms.clone(), CACHE);
    let actor = partner();
    let client = Uuid::now_v7();
    let doomed: Vec<Uuid> = {
        let mut ids = Vec::new();
        for n in ["P0000001", "P0000002", "P0000003"] {
            ids.push(
                vault
                    .create(&actor, &passport(client, None, n), None)
                    .await
                    .unwrap()
                    .id,
            );
        }
        ids
    };
    let kept = vault
        .create(
            &actor,
            &record(
                client,
                None,
                pb::DataCategory::ContactDetails,
                &[("email", pb::FieldType::Email, "a@b.org")],
            ),
            None,
        )
        .await
        .unwrap();
    let doomed_row = vault.load(doomed[0]).await.unwrap();
    let roles = vec!["partner".to_owned()];
    assert!(read_one(&vault, &actor, doomed[0], &roles).await.is_ok());

    let order = Uuid::now_v7().to_string();
    let scope = vault
        .shred_scope(&retention(), doomed_row.scope_id, &order, None)
        .await
        .unwrap();
    assert_eq!(scope.state, "shredded");
    assert_eq!(scope.wrapped_key, None);
    assert_eq!(scope.kms_key_id, None);
    assert_eq!(scope.shred_order.as_deref(), Some(order.as_str()));

    // Every record of the scope reads as shredded — not missing, not garbage —
    // even on this replica, whose cache held the key.
    for id in &doomed {
        assert!(matches!(
            read_one(&vault, &actor, *id, &roles).await,
            Err(Error::Shredded(_))
        ));
        let row = vault.load(*id).await.unwrap();
        assert!(Vault::unreadable(&row).is_some());
    }
    assert!(
        read_one(&vault, &actor, kept.id, &roles).await.is_ok(),
        "other scopes live on"
    );
    // Shredding again is a no-op; new data of the triple gets a new scope.
    let again = vault
        .shred_scope(&retention(), doomed_row.scope_id, &order, None)
        .await
        .unwrap();
    assert_eq!(again.shredded_at, scope.shredded_at);
    let fresh = vault
        .create(&actor, &passport(client, None, "P0000004"), None)
        .await
        .unwrap();
    assert_ne!(fresh.scope_id, doomed_row.scope_id);
    // Another replica that wrote to the scope before it was shredded (and
    // still holds its key) does not write into the shredded scope either.
    let other = vault_with(db, kms.clone(), CACHE);
    let other_client = Uuid::now_v7();
    let before = other
        .create(&actor, &passport(other_client, None, "P0000005"), None)
        .await
        .unwrap();
    vault
        .shred_scope(&retention(), before.scope_id, &order, None)
        .await
        .unwrap();
    let after = other
        .create(&actor, &passport(other_client, None, "P0000006"), None)
        .await
        .unwrap();
    assert_ne!(after.scope_id, before.scope_id);
    assert!(read_one(&other, &actor, after.id, &roles).await.is_ok());

    // The proof: every key the database still holds — each live scope key
    // unwrapped through the KMS, and every stored blob taken as a key —
    // fails to unwrap the shredded records' keys.
    // Every scope row, read raw.
    let all: Vec<confidant_vault::store::ScopeRow> = db
        .db
        .fetch_all(
            "SELECT id, client_id, matter_id, category, key_version, kms_key_id, wrapped_key, state, \
             hold_count, destroy_after, shred_order, shredded_at, created_at, shred_event_id FROM vault_scopes",
            vec![],
        )
        .await
        .unwrap();
    let live: Vec<_> = all.iter().filter(|s| s.wrapped_key.is_some()).collect();
    assert_eq!(live.len(), 3, "the contact scope and the two fresh scopes");
    let mut candidates = Vec::new();
    for scope in live {
        let plain = kms
            .decrypt(
                &WrappedKey {
                    key_id: scope.kms_key_id.clone().unwrap(),
                    ciphertext: scope.wrapped_key.clone().unwrap(),
                },
                &confidant_vault::keys::context(scope.id, &scope.scope_ref().unwrap()),
            )
            .await
            .unwrap();
        candidates.push(plain);
    }
    for blob in stored_blobs(db).await {
        for chunk in blob.chunks(32).filter(|c| c.len() == 32) {
            candidates.push(confidant_runtime::kms::SecretKey::from_slice(chunk).unwrap());
        }
    }
    let remaining: Vec<(Uuid, Option<Vec<u8>>)> = db
        .db
        .fetch_all(
            "SELECT id, wrapped_key FROM vault_records WHERE scope_id = $1",
            vec![confidant_runtime::portable::Value::Uuid(
                doomed_row.scope_id,
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        remaining.len(),
        3,
        "the ciphertext stays; only keys are destroyed"
    );
    for (record_id, wrapped) in remaining {
        let wrapped = wrapped.expect("record keys stay wrapped under the destroyed scope key");
        for candidate in &candidates {
            let as_scope_key = ScopeKey::new(doomed_row.scope_id, 1, candidate).unwrap();
            assert!(as_scope_key.unwrap_record_key(record_id, &wrapped).is_err());
        }
    }
}

async fn holds_stop_shredding_and_staged_destruction_can_be_cancelled(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_with(db, kms_for(db, dir.path()).await, CACHE);
    let actor = partner();
    let client = Uuid::now_v7();
    let matter = Uuid::now_v7();
    let r = vault
        .create(&actor, &passport(client, Some(matter), "P1111111"), None)
        .await
        .unwrap();
    let roles = vec!["partner".to_owned()];
    let order = Uuid::now_v7().to_string();

    // A hold on the client's matter covers the scope: no shred, no record shred.
    let hold = Uuid::now_v7();
    let covered = vault
        .place_hold(
            &retention(),
            hold,
            client,
            HoldCover::Filter(Some(matter), None),
        )
        .await
        .unwrap();
    assert_eq!(covered, [r.scope_id]);
    assert!(matches!(
        vault
            .shred_scope(&retention(), r.scope_id, &order, None)
            .await,
        Err(Error::Held)
    ));
    assert!(matches!(
        vault.shred_record(&retention(), r.id, &order).await,
        Err(Error::Held)
    ));
    // Each refusal is on its way to the audit log, with its reason.
    assert_eq!(
        refused_shreds(db, r.scope_id).await,
        [("vault.scope.shredded".to_owned(), "legal_hold".to_owned())]
    );
    assert_eq!(
        refused_shreds(db, r.id).await,
        [("vault.record.shredded".to_owned(), "legal_hold".to_owned())]
    );
    // A scope created under an existing hold is held too.
    let later = vault
        .create(
            &actor,
            &record(
                client,
                Some(matter),
                pb::DataCategory::Financial,
                &[(
                    "iban",
                    pb::FieldType::AccountNumber,
                    "GB29NWBK60161331926819",
                )],
            ),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        vault
            .shred_scope(&retention(), later.scope_id, &order, None)
            .await,
        Err(Error::Held)
    ));
    vault.release_hold(&retention(), hold).await.unwrap();

    // A hold that names scopes covers exactly those, not the client's others.
    let named = Uuid::now_v7();
    let covered = vault
        .place_hold(
            &retention(),
            named,
            client,
            HoldCover::Scopes(vec![later.scope_id, later.scope_id]),
        )
        .await
        .unwrap();
    assert_eq!(covered, [later.scope_id]);
    assert!(matches!(
        vault
            .shred_scope(&retention(), later.scope_id, &order, None)
            .await,
        Err(Error::Held)
    ));
    let hold_count = |id| {
        let store = vault.store().clone();
        async move { store.scope(id).await.unwrap().unwrap().hold_count }
    };
    assert_eq!(hold_count(later.scope_id).await, 1);
    assert_eq!(hold_count(r.scope_id).await, 0, "not named, not held");
    // The same hold id cannot name other scopes; another client's scope
    // cannot be named.
    assert!(matches!(
        vault
            .place_hold(
                &retention(),
                named,
                client,
                HoldCover::Scopes(vec![r.scope_id])
            )
            .await,
        Err(Error::Conflict(_))
    ));
    let stranger = vault
        .create(&actor, &passport(Uuid::now_v7(), None, "P9999999"), None)
        .await
        .unwrap();
    assert!(matches!(
        vault
            .place_hold(
                &retention(),
                Uuid::now_v7(),
                client,
                HoldCover::Scopes(vec![stranger.scope_id])
            )
            .await,
        Err(Error::Conflict(_))
    ));
    vault.release_hold(&retention(), named).await.unwrap();
    assert_eq!(hold_count(later.scope_id).await, 0);

    // Staged: pending destruction refuses reads and writes, and cancels.
    let pending = vault
        .shred_scope(
            &retention(),
            r.scope_id,
            &order,
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(pending.state, "pending_destruction");
    assert!(pending.wrapped_key.is_some(), "the key survives the window");
    assert!(matches!(
        read_one(&vault, &actor, r.id, &roles).await,
        Err(Error::PendingDestruction)
    ));
    assert!(matches!(
        vault
            .create(&actor, &passport(client, Some(matter), "P2222222"), None)
            .await,
        Err(Error::PendingDestruction)
    ));
    // Not yet due: nothing destroyed.
    assert_eq!(vault.destroy_due(chrono::Utc::now()).await.unwrap(), 0);
    let active = vault
        .cancel_destruction(&actor, r.scope_id, "client instructed us again")
        .await
        .unwrap();
    assert_eq!(active.state, "active");
    assert!(read_one(&vault, &actor, r.id, &roles).await.is_ok());

    // A hold placed during the window suspends the destruction.
    vault
        .shred_scope(
            &retention(),
            r.scope_id,
            &order,
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let second = Uuid::now_v7();
    vault
        .place_hold(
            &retention(),
            second,
            client,
            HoldCover::Filter(None, Some(Category::IdentityDocument)),
        )
        .await
        .unwrap();
    let scope = vault.store().scope(r.scope_id).await.unwrap().unwrap();
    assert_eq!(scope.state, "active");
    vault.release_hold(&retention(), second).await.unwrap();

    // When the window ends, the key is destroyed.
    vault
        .shred_scope(
            &retention(),
            r.scope_id,
            &order,
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let destroyed = vault
        .destroy_due(chrono::Utc::now() + chrono::Duration::seconds(2))
        .await
        .unwrap();
    assert_eq!(destroyed, 1);
    assert!(matches!(
        read_one(&vault, &actor, r.id, &roles).await,
        Err(Error::Shredded(_))
    ));
    assert!(matches!(
        vault
            .cancel_destruction(&actor, r.scope_id, "too late")
            .await,
        Err(Error::Shredded(_))
    ));

    // One record's key alone.
    let one = vault
        .create(&actor, &passport(client, None, "P3333333"), None)
        .await
        .unwrap();
    let two = vault
        .create(&actor, &passport(client, None, "P4444444"), None)
        .await
        .unwrap();
    let shred = vault
        .shred_record(&retention(), one.id, &order)
        .await
        .unwrap();
    assert_eq!(shred.destroyed.len(), 1);
    assert_eq!(shred.event_ids.len(), 1);
    let tomb = shred.record;
    assert!(tomb.wrapped_key.is_none() && tomb.shredded_at.is_some());
    assert!(matches!(
        read_one(&vault, &actor, one.id, &roles).await,
        Err(Error::Shredded(_))
    ));
    assert!(read_one(&vault, &actor, two.id, &roles).await.is_ok());
    let again = vault
        .shred_record(&retention(), one.id, &order)
        .await
        .unwrap();
    assert_eq!(again.record.shredded_at, tomb.shredded_at, "shredded once");
    assert!(again.destroyed.is_empty() && again.event_ids.is_empty());

    // An original goes back to the client: neither it nor its scope is
    // shredded, and each refusal is recorded.
    let mut will = passport(client, None, "P5555555");
    will.original = true;
    let will = vault.create(&actor, &will, None).await.unwrap();
    assert!(matches!(
        vault.shred_record(&retention(), will.id, &order).await,
        Err(Error::Originals)
    ));
    for window in [None, Some(Duration::from_secs(3600))] {
        assert!(matches!(
            vault
                .shred_scope(&retention(), will.scope_id, &order, window)
                .await,
            Err(Error::Originals)
        ));
    }
    assert!(read_one(&vault, &actor, will.id, &roles).await.is_ok());
    assert_eq!(
        refused_shreds(db, will.id).await,
        [("vault.record.shredded".to_owned(), "originals".to_owned())]
    );
    assert_eq!(
        refused_shreds(db, will.scope_id).await,
        vec![("vault.scope.shredded".to_owned(), "originals".to_owned()); 2]
    );
}

/// The refused shreds of `resource` (a record or scope) queued for the
/// audit log: their actions and reasons.
async fn refused_shreds(db: &TestDatabase, resource: Uuid) -> Vec<(String, String)> {
    queued_events(db, resource)
        .await
        .into_iter()
        .filter(|e| e.outcome == confidant_proto::audit::v1::Outcome::Denied as i32)
        .map(|e| (e.action, e.reason))
        .collect()
}

async fn sealed_text_dies_with_its_scope(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_with(db, kms_for(db, dir.path()).await, CACHE);
    let scope = confidant_vault::domain::ScopeRef {
        client_id: Uuid::now_v7(),
        matter_id: None,
        category: Category::PrivilegedCommunication,
    };
    let identity = Actor::Service {
        peer: "spiffe://confidant.local/identity".into(),
    };
    let (sealed, scope_id) = vault
        .seal_text(&identity, &scope, "break-glass: partner in hospital")
        .await
        .unwrap();
    let reader = partner();
    assert_eq!(
        vault
            .open_text(&reader, scope_id, &sealed)
            .await
            .unwrap()
            .as_str(),
        "break-glass: partner in hospital"
    );
    vault
        .shred_scope(&retention(), scope_id, &Uuid::now_v7().to_string(), None)
        .await
        .unwrap();
    assert!(matches!(
        vault.open_text(&reader, scope_id, &sealed).await,
        Err(Error::Shredded(_))
    ));
}

async fn a_due_destruction_is_not_held_up_by_a_thousand_not_yet_due(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_with(db, kms_for(db, dir.path()).await, CACHE);
    let actor = partner();
    let now = chrono::Utc::now();
    // A retention sweep staged a thousand scopes for destruction in a
    // month (scopes made before the one below, so first in id order).
    let month = now + chrono::Duration::days(30);
    let staged: Vec<Statement> = (0..1000)
        .map(|i| {
            let (id, client) = (Uuid::now_v7(), Uuid::now_v7());
            Statement::new(
                "INSERT INTO vault_scopes (id, scope_name, client_id, matter_id, category, \
                 key_version, kms_key_id, wrapped_key, state, destroy_after, shred_order, \
                 created_at) VALUES ($1, $2, $3, NULL, 'contact_details', 1, 'k', $4, \
                 'pending_destruction', $5, 'sweep', $6)",
                vec![
                    Value::Uuid(id),
                    Value::Text(format!("{client}/-/contact_details/{i}")),
                    Value::Uuid(client),
                    Value::Bytes(vec![1; 32]),
                    Value::Time(month),
                    Value::Time(now),
                ],
            )
        })
        .collect();
    db.db.transact(staged, &[]).await.unwrap();
    // Then a scope is staged with a window of a second.
    let r = vault
        .create(&actor, &passport(Uuid::now_v7(), None, "P7777777"), None)
        .await
        .unwrap();
    vault
        .shred_scope(
            &retention(),
            r.scope_id,
            &Uuid::now_v7().to_string(),
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    // Once it is due it is destroyed, and only it.
    let later = chrono::Utc::now() + chrono::Duration::seconds(2);
    assert_eq!(vault.destroy_due(later).await.unwrap(), 1);
    let scope = vault.store().scope(r.scope_id).await.unwrap().unwrap();
    assert_eq!(scope.state, "shredded");
    let (pending,): (i64,) = db
        .db
        .fetch_optional(
            "SELECT COUNT(*) FROM vault_scopes WHERE state = 'pending_destruction'",
            vec![],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending, 1000);
}

async fn rewrap_moves_scope_keys_to_the_new_kms_key_without_touching_records(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let actor = partner();
    let client = Uuid::now_v7();
    let roles = vec!["partner".to_owned()];
    // Scopes wrapped under the first key.
    let (first, second): (Arc<dyn Kms>, Arc<dyn Kms>) = match db.db.backend() {
        Backend::Sqlite => {
            let path = dir.path().join("kms.keys");
            let before = Arc::new(LocalKms::open(&path).unwrap());
            let after = LocalKms::open(&path).unwrap();
            (before, Arc::new(after))
        }
        Backend::Postgres => (
            Arc::new(aws_kms(&kms_endpoint()).await),
            Arc::new(aws_kms(&kms_endpoint()).await),
        ),
    };
    let old = vault_with(db, first.clone(), CACHE);
    let mut ids = Vec::new();
    for category in [
        pb::DataCategory::IdentityDocument,
        pb::DataCategory::Health,
        pb::DataCategory::Financial,
    ] {
        let r = old
            .create(
                &actor,
                &record(
                    client,
                    None,
                    category,
                    &[("note", pb::FieldType::Text, "kept")],
                ),
                None,
            )
            .await
            .unwrap();
        ids.push(r.id);
    }
    let fields_before: Vec<(Vec<u8>, Option<Vec<u8>>)> = db
        .db
        .fetch_all(
            "SELECT fields, wrapped_key FROM vault_records ORDER BY id",
            vec![],
        )
        .await
        .unwrap();
    // The new key becomes active.
    if db.db.backend() == Backend::Sqlite {
        LocalKms::open(&dir.path().join("kms.keys"))
            .unwrap()
            .rotate()
            .unwrap();
    }
    let second: Arc<dyn Kms> = match db.db.backend() {
        Backend::Sqlite => Arc::new(LocalKms::open(&dir.path().join("kms.keys")).unwrap()),
        Backend::Postgres => second,
    };
    let active = second.active_key_id();
    let new = vault_with(db, second, CACHE);
    // Which KMS keys still wrap live scopes: the old one, for all three.
    let usage = || async { new.store().kms_key_usage().await.unwrap() };
    let before = usage().await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].1, 3);
    assert!(!new.keys().kms().is_active(&before[0].0));
    // The first scope's wrapped key is replaced by the second's (moved, or
    // altered): it cannot be rewrapped, and does not hold up the others.
    let wrapped_now = || async {
        let rows: Vec<(Uuid, Vec<u8>)> = db
            .db
            .fetch_all(
                "SELECT id, wrapped_key FROM vault_scopes ORDER BY id",
                vec![],
            )
            .await
            .unwrap();
        rows
    };
    let scopes = wrapped_now().await;
    assert_eq!(scopes.len(), 3);
    let set_wrapped = |scope: Uuid, wrapped: Vec<u8>| async move {
        let set = Statement::new(
            "UPDATE vault_scopes SET wrapped_key = $1 WHERE id = $2",
            vec![Value::Bytes(wrapped), Value::Uuid(scope)],
        );
        db.db.transact(vec![set], &[]).await.unwrap();
    };
    set_wrapped(scopes[0].0, scopes[1].1.clone()).await;
    let failures = || {
        new.keys()
            .stats()
            .kms_failure_counts()
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>()
    };
    assert_eq!(failures(), []);
    let first = new.rewrap(&actor, 2, None).await.unwrap();
    assert_eq!(
        (first.rewrapped, first.remaining, first.next),
        (1, 2, Some(scopes[1].0)),
        "resumable in batches"
    );
    assert_eq!(first.failed, [(scopes[0].0, "unwrap_failed")]);
    assert_eq!(failures(), [("unwrap_failed", 1)]);
    let midway = usage().await;
    assert_eq!(midway.iter().map(|(_, n)| n).sum::<i64>(), 3);
    assert!(midway.contains(&(before[0].0.clone(), 2)), "{midway:?}");
    // The next batch goes on after it, to the end.
    let rest = new.rewrap(&actor, 2, first.next).await.unwrap();
    assert_eq!((rest.rewrapped, rest.remaining, rest.next), (1, 1, None));
    assert_eq!(rest.failed, []);
    // Put right, it moves too.
    set_wrapped(scopes[0].0, scopes[0].1.clone()).await;
    let last = new.rewrap(&actor, 2, None).await.unwrap();
    assert_eq!((last.rewrapped, last.remaining, last.next), (1, 0, None));
    assert_eq!(
        new.rewrap(&actor, 2, None).await.unwrap(),
        Rewrapped::default()
    );
    // A KMS that refuses the active key (here one it does not know; a
    // disabled key, or one the vault may not use, alike) would refuse every
    // scope key: the call stops at the first, which its own key still
    // opens, and changes nothing. (The local keyring cannot refuse its
    // active key.)
    if db.db.backend() == Backend::Postgres {
        let unknown = Uuid::new_v4().to_string();
        let refusing = vault_with(
            db,
            Arc::new(AwsKms::connect(&emulated_kms(&kms_endpoint(), &unknown)).await),
            CACHE,
        );
        let before = wrapped_now().await;
        assert!(matches!(
            refusing.rewrap(&actor, 100, None).await,
            Err(Error::ActiveKeyRefused)
        ));
        assert_eq!(wrapped_now().await, before);
        let counts: Vec<_> = refusing.keys().stats().kms_failure_counts().collect();
        assert!(counts.contains(&("refused", 1)), "{counts:?}");
    }
    // The old key wraps nothing live any more: it can be retired.
    let after = usage().await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].1, 3);
    assert!(new.keys().kms().is_active(&after[0].0));
    let key_ids: Vec<(String,)> = db
        .db
        .fetch_all("SELECT kms_key_id FROM vault_scopes", vec![])
        .await
        .unwrap();
    assert!(
        key_ids
            .iter()
            .all(|(k,)| k == &active || k.ends_with(&format!("/{active}"))),
        "{key_ids:?} vs {active}"
    );
    let fields_after: Vec<(Vec<u8>, Option<Vec<u8>>)> = db
        .db
        .fetch_all(
            "SELECT fields, wrapped_key FROM vault_records ORDER BY id",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fields_before, fields_after, "no record was re-encrypted");
    for id in ids {
        let fields = read_one(&new, &actor, id, &roles).await.unwrap();
        assert_eq!(fields[0].1, "kept");
    }
}

fn chunks(
    content: &[u8],
    size: usize,
) -> impl futures::Stream<Item = Result<Vec<u8>, Error>> + Unpin + use<> {
    let parts: Vec<Result<Vec<u8>, Error>> = content.chunks(size).map(|c| Ok(c.to_vec())).collect();
    futures::stream::iter(parts)
}

async fn download(vault: &Vault, id: Uuid, roles: &[String]) -> Result<(String, Vec<u8>), Error> {
    let row = vault.load(id).await?;
    if let Some(e) = Vault::unreadable(&row) {
        return Err(e);
    }
    let mut reader = vault
        .open_document(&partner(), row, &intent(roles, "reading the will"))
        .await?;
    let mut out = Vec::new();
    while let Some(segment) = reader.next_segment().await? {
        out.extend_from_slice(&segment);
    }
    Ok((reader.filename.clone(), out))
}

/// Every stored record's id and every document segment's (record, number),
/// in order.
async fn stored_rows(db: &TestDatabase) -> (Vec<(Uuid,)>, Vec<(Uuid, i32)>) {
    let records = db
        .db
        .fetch_all("SELECT id FROM vault_records ORDER BY id", vec![])
        .await
        .unwrap();
    let segments = db
        .db
        .fetch_all(
            "SELECT record_id, seq FROM vault_document_segments ORDER BY record_id, seq",
            vec![],
        )
        .await
        .unwrap();
    (records, segments)
}

async fn segment_rows(db: &TestDatabase, id: Uuid) -> Vec<(i32, Vec<u8>)> {
    db.db
        .fetch_all(
            "SELECT seq, ciphertext FROM vault_document_segments WHERE record_id = $1 ORDER BY seq",
            vec![confidant_runtime::portable::Value::Uuid(id)],
        )
        .await
        .unwrap()
}

async fn documents_stream_in_and_out_whole_or_not_at_all(db: &TestDatabase) {
    use confidant_runtime::portable::{Statement, Value};
    use confidant_vault::documents::NewDocument;
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_with(db, kms_for(db, dir.path()).await, CACHE);
    let actor = partner();
    let roles = vec!["partner".to_owned()];
    let client_id = Uuid::now_v7();
    let doc = |size: usize| NewDocument {
        scope: confidant_vault::domain::ScopeRef {
            client_id,
            matter_id: None,
            category: Category::IdentityDocument,
        },
        filename: "passport-scan.pdf".into(),
        media_type: "application/pdf".into(),
        size: size as u64,
        sha256: None,
        supersedes: None,
    };
    // Three full 64 KiB segments and a partial one, sent in odd-sized chunks.
    let content: Vec<u8> = (0..3 * 65_536 + 12_345)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let row = vault
        .upload(
            &actor,
            &doc(content.len()),
            None,
            chunks(&content, 50_000),
            8 << 20,
        )
        .await
        .unwrap();
    assert!(row.is_document());
    assert_eq!(row.doc_size, Some(content.len() as i64));
    assert_eq!(row.doc_segments, Some(4));
    assert_eq!(
        row.doc_sha256.as_deref(),
        Some(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &content).as_ref())
    );
    let stored = segment_rows(db, row.id).await;
    assert_eq!(stored.len(), 4);
    for (_, ciphertext) in &stored {
        assert!(
            !ciphertext.windows(64).any(|w| w == &content[..64]),
            "plaintext at rest"
        );
    }
    let (filename, back) = download(&vault, row.id, &roles).await.unwrap();
    assert_eq!(filename, "passport-scan.pdf");
    assert_eq!(back, content);
    // Roles whose mask is not clear do not download.
    assert!(matches!(
        download(&vault, row.id, &["legal_assistant".to_owned()]).await,
        Err(Error::Denied { .. })
    ));
    // An empty document is one empty, final segment.
    let empty = vault
        .upload(&actor, &doc(0), None, chunks(&[], 1), 8 << 20)
        .await
        .unwrap();
    assert_eq!((empty.doc_size, empty.doc_segments), (Some(0), Some(1)));
    assert!(
        download(&vault, empty.id, &roles)
            .await
            .unwrap()
            .1
            .is_empty()
    );

    let before = stored_rows(db).await;
    // A stream that stops mid-upload leaves nothing behind.
    let mut parts: Vec<Result<Vec<u8>, Error>> =
        content.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    parts.truncate(2);
    parts.push(Err(Error::StreamAborted));
    let stopped = vault
        .upload(
            &actor,
            &doc(content.len()),
            None,
            futures::stream::iter(parts),
            8 << 20,
        )
        .await;
    assert!(matches!(stopped, Err(Error::StreamAborted)));
    // So does one that ends cleanly but short of its declared size (a client
    // that gave up and closed its stream)...
    let short = vault
        .upload(
            &actor,
            &doc(content.len()),
            None,
            chunks(&content[..100_000], 30_000),
            8 << 20,
        )
        .await;
    assert!(matches!(short, Err(Error::StreamAborted)));
    // ...one whose content does not match its declared digest...
    let mut wrong_digest = doc(content.len());
    wrong_digest.sha256 = Some(vec![0; 32]);
    let mismatch = vault
        .upload(
            &actor,
            &wrong_digest,
            None,
            chunks(&content, 65_536),
            8 << 20,
        )
        .await;
    assert!(matches!(mismatch, Err(Error::Invalid(_))));
    // ...and one over the size limit.
    let too_big = vault
        .upload(
            &actor,
            &doc(content.len()),
            None,
            chunks(&content, 65_536),
            100_000,
        )
        .await;
    assert!(matches!(too_big, Err(Error::Invalid(_))));
    assert_eq!(stored_rows(db).await, before);

    // A process that stops mid-upload leaves an invisible row that the
    // sweeper removes.
    let head: Vec<Result<Vec<u8>, Error>> = vec![Ok(content[..100_000].to_vec())];
    let never_ends = futures::stream::iter(head).chain(futures::stream::pending());
    let uploading = tokio::time::timeout(
        Duration::from_millis(500),
        vault.upload(
            &actor,
            &doc(content.len()),
            None,
            Box::pin(never_ends),
            8 << 20,
        ),
    )
    .await;
    assert!(uploading.is_err(), "the upload was still running");
    let orphans: Vec<(Uuid,)> = db
        .db
        .fetch_all(
            "SELECT id FROM vault_records WHERE upload_state = 'uploading'",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(orphans.len(), 1);
    assert!(
        matches!(vault.load(orphans[0].0).await, Err(Error::NotFound(_))),
        "not visible"
    );
    assert_eq!(
        vault
            .sweep_abandoned_uploads(chrono::Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        vault
            .sweep_abandoned_uploads(chrono::Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    assert!(segment_rows(db, orphans[0].0).await.is_empty());

    // Reordered segments do not open.
    let swap = |a: Vec<u8>, b: Vec<u8>| {
        vec![
            Statement::new(
                "UPDATE vault_document_segments SET ciphertext = $1 WHERE record_id = $2 AND seq = 0",
                vec![Value::Bytes(b), Value::Uuid(row.id)],
            ),
            Statement::new(
                "UPDATE vault_document_segments SET ciphertext = $1 WHERE record_id = $2 AND seq = 1",
                vec![Value::Bytes(a), Value::Uuid(row.id)],
            ),
        ]
    };
    db.db
        .transact(swap(stored[0].1.clone(), stored[1].1.clone()), &[])
        .await
        .unwrap();
    assert!(matches!(
        download(&vault, row.id, &roles).await,
        Err(Error::Integrity)
    ));
    // The download that found it is on its way to the audit log, once.
    let unreadable = || async {
        queued_events(db, row.id)
            .await
            .into_iter()
            .filter(|e| e.action == "vault.record.unreadable")
            .map(|e| e.reason)
            .collect::<Vec<_>>()
    };
    assert_eq!(unreadable().await, ["integrity"]);
    db.db
        .transact(swap(stored[1].1.clone(), stored[0].1.clone()), &[])
        .await
        .unwrap();
    assert_eq!(download(&vault, row.id, &roles).await.unwrap().1, content);
    assert_eq!(unreadable().await.len(), 1);
    // The content must hash to the digest recorded for it: a digest changed
    // afterwards fails the download at its end.
    let set_digest = |digest: Vec<u8>| {
        vec![Statement::new(
            "UPDATE vault_records SET doc_sha256 = $1 WHERE id = $2",
            vec![Value::Bytes(digest), Value::Uuid(row.id)],
        )]
    };
    db.db.transact(set_digest(vec![0; 32]), &[]).await.unwrap();
    assert!(matches!(
        download(&vault, row.id, &roles).await,
        Err(Error::Integrity)
    ));
    db.db
        .transact(set_digest(row.doc_sha256.clone().unwrap()), &[])
        .await
        .unwrap();
    assert_eq!(download(&vault, row.id, &roles).await.unwrap().1, content);
    // A truncated document does not open, even with its count adjusted.
    db.db
        .transact(
            vec![
                Statement::new(
                    "DELETE FROM vault_document_segments WHERE record_id = $1 AND seq = 3",
                    vec![Value::Uuid(row.id)],
                ),
                Statement::new(
                    "UPDATE vault_records SET doc_segments = 3 WHERE id = $1",
                    vec![Value::Uuid(row.id)],
                ),
            ],
            &[],
        )
        .await
        .unwrap();
    assert!(matches!(
        download(&vault, row.id, &roles).await,
        Err(Error::Integrity)
    ));

    // A shredded scope takes its documents with it.
    vault
        .shred_scope(
            &retention(),
            row.scope_id,
            &Uuid::now_v7().to_string(),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        download(&vault, empty.id, &roles).await,
        Err(Error::Shredded(_))
    ));
}

/// A vault on `db` (keys under `dir`) holding `count` passports of one new
/// client, numbered `prefix` and their index, stored by a partner; with
/// the client and the records' ids in order.
async fn vault_of_passports(
    db: &TestDatabase,
    dir: &std::path::Path,
    prefix: &str,
    count: usize,
) -> (Vault, Uuid, Vec<Uuid>) {
    let vault = vault_with(db, kms_for(db, dir).await, CACHE);
    let client = Uuid::now_v7();
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let record = passport(client, None, &format!("{prefix}{n:07}"));
        ids.push(vault.create(&partner(), &record, None).await.unwrap().id);
    }
    (vault, client, ids)
}

/// Readers waiting at the same moment share one look-up of their records,
/// and each still gets exactly its own row as it stands when it asked: a
/// record shredded before reads as shredded, a missing id as not found,
/// the same id twice as itself twice. A batch read looks its records up in
/// one go with the same answers.
async fn concurrent_readers_share_look_ups_and_each_gets_its_own_record(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let (vault, client, ids) = vault_of_passports(db, dir.path(), "P", 40).await;
    let actor = partner();
    let order = Uuid::now_v7().to_string();
    vault
        .shred_record(&retention(), ids[7], &order)
        .await
        .unwrap();
    let missing = Uuid::now_v7();
    let (asked_before, groups_before) = vault.record_lookups();

    // 64 readers at once: every record, some twice, and one unknown id.
    let mut wanted: Vec<Uuid> = ids.clone();
    wanted.extend(ids.iter().take(23).copied());
    wanted.push(missing);
    let rows = futures::future::join_all(wanted.iter().map(|id| vault.load(*id))).await;
    let (asked, groups) = vault.record_lookups();
    assert_eq!(asked - asked_before, 64);
    // How the look-ups fall into groups depends on when each statement
    // finishes relative to the readers still arriving (a busy machine
    // deschedules either); one statement per reader would be 64.
    assert!(
        groups - groups_before <= 32,
        "64 concurrent look-ups went out in {} statements",
        groups - groups_before
    );
    for (id, row) in wanted.iter().zip(&rows) {
        if *id == missing {
            assert!(matches!(row, Err(Error::NotFound("record"))));
            continue;
        }
        let row = row.as_ref().expect("a stored record is found");
        assert_eq!(row.id, *id);
        assert_eq!(row.client_id, client);
        assert_eq!(Vault::unreadable(row).is_some(), *id == ids[7]);
    }
    // Each row opens to its own passport number.
    let roles = vec!["partner".to_owned()];
    for (n, id) in ids.iter().enumerate().filter(|(n, _)| *n != 7).take(5) {
        let fields = read_one(&vault, &actor, *id, &roles).await.unwrap();
        assert!(
            fields
                .iter()
                .any(|(_, value, _)| *value == format!("P{n:07}")),
            "record {n} opens to its own fields"
        );
    }

    // A batch look-up, in the order asked, with the same answers.
    let batch = vec![ids[3], missing, ids[7], ids[3]];
    let rows = vault.load_many(&batch).await;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].as_ref().unwrap().id, ids[3]);
    assert!(matches!(rows[1], Err(Error::NotFound("record"))));
    assert!(Vault::unreadable(rows[2].as_ref().unwrap()).is_some());
    assert_eq!(rows[3].as_ref().unwrap().id, ids[3]);
}

/// A look-up of records finds exactly the ones asked for, whatever their
/// number: one id, lists padded to a prepared length (3, 5, 17 ids), the
/// longest list (256), more than a list carries (257, 300), ids unknown or
/// asked twice, none at all.
async fn look_ups_of_any_size_find_exactly_their_records(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let (vault, _, ids) = vault_of_passports(db, dir.path(), "L", 300).await;
    for size in [0usize, 1, 2, 3, 5, 17, 256, 257, 300] {
        // Every third id asked for is unknown; from five ids on, the last
        // asks again for the first.
        let mut wanted: Vec<Uuid> = (0..size)
            .map(|n| if n % 3 == 2 { Uuid::now_v7() } else { ids[n] })
            .collect();
        if size >= 5 {
            wanted[size - 1] = ids[0];
        }
        let mut found: Vec<Uuid> = vault
            .store()
            .records(&wanted, None)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.id)
            .collect();
        found.sort_unstable();
        found.dedup();
        let mut expected: Vec<Uuid> = wanted
            .iter()
            .filter(|id| ids.contains(id))
            .copied()
            .collect();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(found, expected, "a look-up of {} ids", wanted.len());
    }
}

/// Concurrent writers share commits on PostgreSQL (one array-valued INSERT
/// per group, records of different scopes and with or without a matter in
/// the same group), and every record lands whole and opens to its own
/// fields. SQLite serializes writes and gives the same records.
async fn concurrent_writers_share_commits_and_each_record_lands_whole(db: &TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let kms = kms_for(db, dir.path()).await;
    let vault = vault_with(db, kms, CACHE);
    let actor = partner();
    let (client, matter) = (Uuid::now_v7(), Uuid::now_v7());
    // The two scopes exist before the rush (a scope's first write makes
    // its key).
    vault
        .create(&actor, &passport(client, None, "first"), None)
        .await
        .unwrap();
    vault
        .create(&actor, &passport(client, Some(matter), "first"), None)
        .await
        .unwrap();
    let numbers: Vec<String> = (0..40).map(|n| format!("C{n:07}")).collect();
    let created = futures::future::join_all(numbers.iter().enumerate().map(|(n, number)| {
        let (vault, actor) = (&vault, &actor);
        async move {
            let matter = (n % 3 == 0).then_some(matter);
            vault
                .create(actor, &passport(client, matter, number), None)
                .await
        }
    }))
    .await;
    let ids: Vec<Uuid> = created
        .into_iter()
        .map(|r| r.expect("each concurrent write lands").id)
        .collect();
    if let confidant_runtime::storage::Database::Postgres(pool) = &db.db {
        let (transactions,): (i64,) = sqlx::query_as(
            "SELECT count(DISTINCT xmin::text) FROM vault_records WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await
        .unwrap();
        assert!(
            transactions <= 20,
            "40 concurrent writes took {transactions} commits"
        );
    }
    let roles = vec!["partner".to_owned()];
    for (n, id) in ids.iter().enumerate() {
        let row = vault.load(*id).await.unwrap();
        assert_eq!(row.matter_id, (n % 3 == 0).then_some(matter), "record {n}");
        let fields = read_one(&vault, &actor, *id, &roles).await.unwrap();
        assert!(
            fields.iter().any(|(_, value, _)| *value == numbers[n]),
            "record {n} opens to its own fields"
        );
    }
}

/// A record lands only in an active scope at the scope's key version: its
/// guarded INSERT (on PostgreSQL the only thing tying a record to its
/// scope; there is no foreign key) stores nothing, and puts none of its
/// audit events in the outbox, for a scope that does not exist, a stale key
/// version, a scope pending destruction or a shredded one, alone or sharing
/// a commit with a write that does land.
async fn a_record_lands_only_in_an_active_scope_at_its_key_version(db: &TestDatabase) {
    use confidant_proto::audit::v1::AuditEvent;
    use confidant_runtime::portable::{TransactError, WriteGroup};
    use confidant_vault::store::EncryptedRecord;

    let dir = tempfile::tempdir().unwrap();
    let vault = vault_with(db, kms_for(db, dir.path()).await, CACHE);
    let actor = partner();
    let order = Uuid::now_v7().to_string();
    // Three scopes of one client: one stays active, one is staged for
    // destruction, one is shredded.
    let client = Uuid::now_v7();
    let scopes: Vec<_> = [None, Some(Uuid::now_v7()), Some(Uuid::now_v7())]
        .into_iter()
        .map(|matter| passport(client, matter, "P0000001"))
        .collect();
    let mut rows = Vec::new();
    for s in &scopes {
        rows.push(vault.create(&actor, s, None).await.unwrap());
    }
    vault
        .shred_scope(
            &retention(),
            rows[1].scope_id,
            &order,
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    vault
        .shred_scope(&retention(), rows[2].scope_id, &order, None)
        .await
        .unwrap();
    let attempt = |n: usize, scope_id: Uuid, key_version: i32| EncryptedRecord {
        id: Uuid::now_v7(),
        scope_id,
        scope: scopes[n].scope,
        key_version,
        wrapped_key: vec![7; 60],
        fields: vec![9; 64],
        field_names: "surname".to_owned(),
        created_at: chrono::Utc::now(),
        created_by: "staff-guard".to_owned(),
        request_id: None,
        document_nonce: None,
        original: false,
    };
    let event = || AuditEvent {
        id: Uuid::now_v7().to_string(),
        ..Default::default()
    };
    let active = (rows[0].scope_id, rows[0].key_version);
    let refused = [
        (
            "a scope that does not exist",
            attempt(0, Uuid::now_v7(), active.1),
        ),
        ("a stale key version", attempt(0, active.0, active.1 + 1)),
        (
            "a scope pending destruction",
            attempt(1, rows[1].scope_id, rows[1].key_version),
        ),
        (
            "a shredded scope",
            attempt(2, rows[2].scope_id, rows[2].key_version),
        ),
    ];
    let group = WriteGroup::start(db.db.clone());
    let (mut refused_events, mut landed_events) = (Vec::new(), Vec::new());
    for (case, record) in &refused {
        // Alone, without and with an audit event (two different statements
        // on PostgreSQL).
        let alone = db.db.transact(vec![record.insert()], &[]).await;
        assert!(
            matches!(alone, Err(TransactError::Unmet { .. })),
            "{case}: {alone:?}"
        );
        let with_event = event();
        refused_events.push(with_event.id.clone());
        let alone = db.db.transact(vec![record.insert()], &[with_event]).await;
        assert!(
            matches!(alone, Err(TransactError::Unmet { .. })),
            "{case}: {alone:?}"
        );
        // Asked together with a write into the active scope: that one
        // lands, this one does not.
        let good = attempt(0, active.0, active.1);
        let (bad_event, good_event) = (event(), event());
        refused_events.push(bad_event.id.clone());
        landed_events.push(good_event.id.clone());
        let (bad, landed) = futures::join!(
            group.transact(record.insert(), vec![bad_event]),
            group.transact(good.insert(), vec![good_event]),
        );
        assert!(
            matches!(bad, Err(TransactError::Unmet { .. })),
            "{case}: {bad:?}"
        );
        assert_eq!(landed.unwrap(), 1, "{case}: the write beside it lands");
        assert_eq!(vault.load(good.id).await.unwrap().scope_id, active.0);
        assert!(
            matches!(vault.load(record.id).await, Err(Error::NotFound(_))),
            "{case}: nothing stored"
        );
    }
    let pending = confidant_runtime::outbox::Outbox::new(db.db.clone())
        .pending(10_000)
        .await
        .unwrap();
    let queued: Vec<&String> = pending.iter().map(|p| &p.event.id).collect();
    assert!(
        landed_events.iter().all(|id| queued.contains(&id)),
        "each write that landed queued its audit event"
    );
    assert!(
        refused_events.iter().all(|id| !queued.contains(&id)),
        "no refused write left an audit event behind"
    );
}

/// Replicas share their masking rule changes: a change made through one is
/// in force at the others at once when they share a coordinator (Redis with
/// PostgreSQL, the process's own with SQLite), not when their copies of the
/// rules expire; a replica that hears nothing keeps its copy until then.
async fn a_masking_rule_change_reaches_every_replica_at_once(db: &TestDatabase) {
    use confidant_runtime::coord::{InProcess, Redis, SharedCoordinator};
    use confidant_vault::masking::{Mask, Rule};
    let coord: SharedCoordinator = match db.db.backend() {
        Backend::Sqlite => Arc::new(InProcess::new()),
        Backend::Postgres => Arc::new(
            Redis::connect(
                &confidant_runtime::testing::redis_url(),
                &format!("{}:", confidant_runtime::testing::unique_name("rules")),
            )
            .await
            .unwrap(),
        ),
    };
    let dir = tempfile::tempdir().unwrap();
    let kms = kms_for(db, dir.path()).await;
    let replica = || Arc::new(vault_with(db, kms.clone(), CACHE).with_coordinator(coord.clone()));
    let (changing, other) = (replica(), replica());
    changing.follow_rule_changes();
    other.follow_rule_changes();
    let unannounced = vault_with(db, kms.clone(), CACHE);
    let actor = partner();
    let stored = changing
        .create(&actor, &passport(Uuid::now_v7(), None, "P1234567"), None)
        .await
        .unwrap();
    let paralegal = vec!["paralegal".to_owned()];
    let passport_number = |fields: Vec<(String, String, bool)>| fields[1].1.clone();
    // Every replica reads (and keeps) the rules as they are.
    for vault in [&*changing, &*other, &unannounced] {
        let fields = read_one(vault, &actor, stored.id, &paralegal)
            .await
            .unwrap();
        assert_eq!(passport_number(fields), "****4567");
    }
    // Paralegals no longer see identity documents. The other replica
    // subscribes in the background: the change is made again until it has
    // heard of it, well within the copies' 30 seconds.
    let rules = [
        Rule {
            category: "*".into(),
            field_type: "*".into(),
            mask: Mask::Clear,
        },
        Rule {
            category: "identity_document".into(),
            field_type: "*".into(),
            mask: Mask::Redact,
        },
    ];
    let started = std::time::Instant::now();
    loop {
        changing
            .set_masking_rules(&retention(), "paralegal", &rules)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fields = read_one(&other, &actor, stored.id, &paralegal)
            .await
            .unwrap();
        if passport_number(fields) == "[redacted]" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the other replica did not hear of the change"
        );
    }
    let fields = read_one(&changing, &actor, stored.id, &paralegal)
        .await
        .unwrap();
    assert_eq!(passport_number(fields), "[redacted]");
    // Without the announcements a replica keeps its copy until it expires.
    let fields = read_one(&unannounced, &actor, stored.id, &paralegal)
        .await
        .unwrap();
    assert_eq!(passport_number(fields), "****4567");
}

/// Polls `pool` until a backend waits for a lock that the backend `pid`
/// holds: the waiter's pid, or `None` if nothing waits within ten seconds.
async fn waiter_on(pool: &sqlx::PgPool, pid: i32) -> Option<i32> {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let waiter: Option<(i32,)> = sqlx::query_as(
            "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)) LIMIT 1",
        )
        .bind(pid)
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some((waiter,)) = waiter {
            return Some(waiter);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// An original stored while its scope is being shredded keeps the scope
/// (PostgreSQL, where writes run side by side; SQLite runs one at a time).
/// The shred's check for originals must see a write that had already
/// share-locked the scope when the shred began: before the shred settled
/// such writes first, it found no original, waited for the write's lock,
/// and then destroyed the scope with the new original in it.
#[tokio::test]
async fn postgres_an_original_stored_during_a_shred_keeps_its_scope() {
    let db = TestDatabase::fresh(Backend::Postgres, confidant_vault::MIGRATIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(vault_with(&db, kms_for(&db, dir.path()).await, CACHE));
    // Shredded at once, and staged for destruction.
    for window in [None, Some(Duration::from_secs(3600))] {
        an_original_stored_during_a_shred_keeps_its_scope(&db, &vault, window).await;
    }
}

async fn an_original_stored_during_a_shred_keeps_its_scope(
    db: &TestDatabase,
    vault: &Arc<Vault>,
    window: Option<Duration>,
) {
    let confidant_runtime::storage::Database::Postgres(pool) = &db.db else {
        unreachable!("a PostgreSQL test database")
    };
    let actor = partner();
    let client = Uuid::now_v7();
    let first = vault
        .create(&actor, &passport(client, None, "P0000001"), None)
        .await
        .unwrap();

    // Another transaction holds the request id the original will use, so
    // the original's INSERT, once it has share-locked the scope row,
    // waits on the unique index until that transaction ends.
    let mut blocker = pool.begin().await.unwrap();
    let (blocker_pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TEMP TABLE held ON COMMIT DROP AS SELECT * FROM vault_records WHERE id = $1",
    )
    .bind(first.id)
    .execute(&mut *blocker)
    .await
    .unwrap();
    sqlx::query("UPDATE held SET id = $1, created_by = $2, request_id = 'race-1'")
        .bind(Uuid::now_v7())
        .bind(actor.id())
        .execute(&mut *blocker)
        .await
        .unwrap();
    sqlx::query("INSERT INTO vault_records SELECT * FROM held")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let mut will = passport(client, None, "P0000002");
    will.original = true;
    let storing = tokio::spawn({
        let (vault, actor) = (vault.clone(), actor.clone());
        async move { vault.create(&actor, &will, Some("race-1")).await }
    });
    let writer = waiter_on(pool, blocker_pid).await;
    let shredding = tokio::spawn({
        let (vault, scope_id) = (vault.clone(), first.scope_id);
        let order = Uuid::now_v7().to_string();
        async move {
            vault
                .shred_scope(&retention(), scope_id, &order, window)
                .await
        }
    });
    // The shred gets under way, held by the original's write.
    let shred_waits = match writer {
        Some(writer_pid) => waiter_on(pool, writer_pid).await.is_some(),
        None => false,
    };
    // Ended before any assertion, so that a failure does not leave the
    // write waiting.
    blocker.rollback().await.unwrap();
    assert!(
        writer.is_some() && shred_waits,
        "the original's write waits for the request id ({writer:?}), and the shred for the write"
    );
    let stored = storing.await.unwrap().expect("the original is stored");
    assert_eq!(
        stored.scope_id, first.scope_id,
        "into the scope being shredded"
    );
    let shred = shredding.await.unwrap();
    assert!(
        matches!(shred, Err(Error::Originals)),
        "{window:?}: the shred must see the original: {shred:?}"
    );
    let scope = vault.store().scope(first.scope_id).await.unwrap().unwrap();
    assert_eq!(scope.state, "active");
    assert!(scope.wrapped_key.is_some());
}

confidant_runtime::backend_tests!(confidant_vault::MIGRATIONS;
    a_masking_rule_change_reaches_every_replica_at_once,
    a_record_lands_only_in_an_active_scope_at_its_key_version,
    look_ups_of_any_size_find_exactly_their_records,
    concurrent_writers_share_commits_and_each_record_lands_whole,
    concurrent_readers_share_look_ups_and_each_gets_its_own_record,
    documents_stream_in_and_out_whole_or_not_at_all,
    records_are_encrypted_at_rest_and_bound_to_their_place,
    a_read_whose_audit_event_cannot_be_recorded_returns_nothing,
    a_read_mask_opens_only_the_named_fields_and_the_event_names_them,
    ten_thousand_reads_of_one_scope_cost_a_handful_of_kms_calls,
    a_shredded_scope_is_unreadable_and_no_stored_key_opens_it,
    holds_stop_shredding_and_staged_destruction_can_be_cancelled,
    sealed_text_dies_with_its_scope,
    a_due_destruction_is_not_held_up_by_a_thousand_not_yet_due,
    rewrap_moves_scope_keys_to_the_new_kms_key_without_touching_records,
);
