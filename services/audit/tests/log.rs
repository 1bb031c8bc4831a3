//! The audit log's tamper evidence, on SQLite and PostgreSQL: checkpoints
//! commit to every event, proofs verify, and an edit made directly in the
//! database is named by the verifier and stops further signing.

use chrono::Utc;
use confidant_audit::checkpoint::{Signer, Verifier};
use confidant_audit::domain::validate_batch;
use confidant_audit::log::{AuditLog, CheckpointError, Integrity, LogError};
use confidant_audit::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use confidant_audit::rotation::{self, Replaced};
use confidant_audit::store::EventStore;
use confidant_audit::verify::{Entry, Finding, KeyChange, verify};
use confidant_proto::audit::v1::Outcome;
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, service_event};
use confidant_runtime::storage::Database;
use confidant_runtime::testing::TestDatabase;

const ORIGIN: &str = "test.local/audit";

fn key() -> Vec<u8> {
    Signer::generate_pkcs8().unwrap().to_vec()
}

async fn open(t: &TestDatabase, key: &[u8]) -> AuditLog {
    AuditLog::open(
        EventStore::new(t.db.clone()),
        Signer::from_pkcs8(ORIGIN, key).unwrap(),
        ORIGIN,
        "test.local",
    )
    .await
    .unwrap()
}

async fn append(log: &AuditLog, n: usize) -> Vec<String> {
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
    log.append(&validate_batch(&raw, "vault", Utc::now()).unwrap())
        .await
        .unwrap();
    raw.into_iter().map(|e| e.id).collect()
}

async fn open_after(t: &TestDatabase, key: &[u8], previous: &[&[u8]]) -> AuditLog {
    open(t, key).await.with_previous_keys(
        previous
            .iter()
            .map(|k| Signer::from_pkcs8(ORIGIN, k).unwrap())
            .collect(),
    )
}

fn key_of(key: &[u8]) -> Verifier {
    Signer::from_pkcs8(ORIGIN, key).unwrap().verifier()
}

fn verifier(log: &AuditLog) -> [Verifier; 1] {
    [Verifier::parse(&log.verifier_key()).unwrap()]
}

async fn export(log: &AuditLog) -> (Vec<Entry>, Vec<String>) {
    let entries = log
        .store()
        .range(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| Entry {
            index: e.idx as u64,
            event_id: e.event_id.to_string(),
            event_bytes: e.payload,
            leaf_hash: e.leaf_hash,
            proof: None,
        })
        .collect();
    let notes = log
        .store()
        .all_checkpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.signed_note)
        .collect();
    (entries, notes)
}

/// Edits a stored event the way an intruder with database access would:
/// switch off the append-only guard, then change the bytes (and, if
/// `cover_tracks`, the recorded leaf hash too).
async fn tamper(db: &Database, index: i64, cover_tracks: bool) {
    let forged = b"forged event".to_vec();
    let forged_hash = leaf_hash(&forged).to_vec();
    match db {
        Database::Postgres(pool) => {
            sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER USER")
                .execute(pool)
                .await
                .unwrap();
            let sql = if cover_tracks {
                "UPDATE audit_events SET payload = $1, leaf_hash = $2 WHERE idx = $3"
            } else {
                "UPDATE audit_events SET payload = $1 WHERE idx = $3 AND $2::bytea IS NOT NULL"
            };
            sqlx::query(sql)
                .bind(&forged)
                .bind(&forged_hash)
                .bind(index)
                .execute(pool)
                .await
                .unwrap();
        }
        Database::Sqlite(pool) => {
            sqlx::query("DROP TRIGGER audit_events_no_update")
                .execute(pool)
                .await
                .unwrap();
            let sql = if cover_tracks {
                "UPDATE audit_events SET payload = ?1, leaf_hash = ?2 WHERE idx = ?3"
            } else {
                "UPDATE audit_events SET payload = ?1 WHERE idx = ?3 AND ?2 IS NOT NULL"
            };
            sqlx::query(sql)
                .bind(&forged)
                .bind(&forged_hash)
                .bind(index)
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

async fn checkpoints_commit_to_every_event_and_proofs_verify(t: &TestDatabase) {
    let log = open(t, &key()).await;
    append(&log, 13).await;
    let first = log.issue_checkpoint().await.unwrap();
    let v = verifier(&log);
    let cp1 = v[0].verify(&first.signed_note).unwrap();
    assert_eq!((cp1.size, cp1.origin.as_str()), (13, ORIGIN));
    for index in 0..13 {
        let proof = log.inclusion_proof(index, 13).unwrap();
        let leaf = log.leaf(index).unwrap();
        assert!(
            verify_inclusion(index, 13, &leaf, &proof, &cp1.root),
            "event {index}"
        );
    }

    append(&log, 8).await;
    let second = log.issue_checkpoint().await.unwrap();
    let cp2 = v[0].verify(&second.signed_note).unwrap();
    assert_eq!(cp2.size, 21);
    let proof = log.consistency_proof(13, 21).unwrap();
    assert!(verify_consistency(13, 21, &cp1.root, &cp2.root, &proof));

    let (entries, notes) = export(&log).await;
    let report = verify(&entries, &notes, &v);
    assert_eq!(report.finding, None);
    assert_eq!(
        (
            report.events,
            report.checkpoints.len(),
            report.verified_size
        ),
        (21, 2, 21)
    );
}

async fn an_interval_without_events_still_gets_a_checkpoint(t: &TestDatabase) {
    let log = open(t, &key()).await;
    append(&log, 2).await;
    log.issue_checkpoint().await.unwrap();
    log.issue_checkpoint().await.unwrap();
    let all = log.store().all_checkpoints().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|c| c.tree_size == 2));
}

async fn an_edited_event_is_named_and_nothing_more_is_signed(t: &TestDatabase) {
    let key = key();
    let log = open(t, &key).await;
    let ids = append(&log, 10).await;
    log.issue_checkpoint().await.unwrap();
    tamper(&t.db, 6, false).await;

    let (entries, notes) = export(&log).await;
    let report = verify(&entries, &notes, &verifier(&log));
    assert_eq!(
        report.finding,
        Some(Finding::EventAltered {
            index: 6,
            event_id: ids[6].clone()
        })
    );

    // A restarted service notices too, and refuses to sign.
    let reopened = open(t, &key).await;
    assert!(matches!(
        reopened.integrity(),
        Some(Integrity::EventAltered { index: 6, .. })
    ));
    assert!(matches!(
        reopened.issue_checkpoint().await,
        Err(CheckpointError::Log(LogError::Integrity(_)))
    ));
}

async fn an_edit_that_covers_its_tracks_still_breaks_the_signed_root(t: &TestDatabase) {
    let key = key();
    let log = open(t, &key).await;
    append(&log, 5).await;
    log.issue_checkpoint().await.unwrap();
    append(&log, 5).await;
    log.issue_checkpoint().await.unwrap();
    tamper(&t.db, 7, true).await;

    let (entries, notes) = export(&log).await;
    let report = verify(&entries, &notes, &verifier(&log));
    assert_eq!(
        report.finding,
        Some(Finding::RootMismatch { size: 10, since: 5 })
    );
    let reopened = open(t, &key).await;
    assert_eq!(
        reopened.integrity(),
        Some(Integrity::CheckpointMismatch { size: 10 })
    );
    assert!(reopened.issue_checkpoint().await.is_err());
}

async fn checkpoints_from_another_key_do_not_verify(t: &TestDatabase) {
    let log = open(t, &key()).await;
    append(&log, 3).await;
    log.issue_checkpoint().await.unwrap();
    let (entries, notes) = export(&log).await;
    let stranger = Signer::from_pkcs8(ORIGIN, &key()).unwrap();
    let report = verify(
        &entries,
        &notes,
        &[Verifier::parse(&stranger.verifier_key()).unwrap()],
    );
    assert!(matches!(
        report.finding,
        Some(Finding::BadCheckpoint { position: 0, .. })
    ));
}

async fn two_replicas_appending_in_turn_agree_on_the_tree(t: &TestDatabase) {
    let key = key();
    let (a, b) = (open(t, &key).await, open(t, &key).await);
    for round in 0..4 {
        let replica = if round % 2 == 0 { &a } else { &b };
        append(replica, 3).await;
    }
    let from_a = a.issue_checkpoint().await.unwrap();
    let from_b = b.issue_checkpoint().await.unwrap();
    assert_eq!(from_a.tree_size, 12);
    assert_eq!(from_a.root_hash, from_b.root_hash);
    let (entries, notes) = export(&a).await;
    assert_eq!(verify(&entries, &notes, &verifier(&a)).finding, None);
}

async fn the_age_of_the_newest_checkpoint_is_known_to_every_replica(t: &TestDatabase) {
    let key = key();
    let (signing, other) = (open(t, &key).await, open(t, &key).await);
    // Whole seconds: the log keeps milliseconds.
    let seconds = |log: &AuditLog, at: chrono::DateTime<Utc>| log.checkpoint_age(at).num_seconds();
    // Before any checkpoint: the time since the log was opened.
    assert_eq!(
        seconds(&signing, Utc::now() + chrono::Duration::seconds(60)),
        60
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    append(&signing, 2).await;
    let signed = signing.issue_checkpoint().await.unwrap();
    let at = |s: i64| signed.issued_at + chrono::Duration::seconds(s);
    assert_eq!(seconds(&signing, at(90)), 90);
    // The replica that did not sign learns of it when it reads again.
    assert!(seconds(&other, at(90)) >= 92);
    other.refresh_checkpoint_age().await.unwrap();
    assert_eq!(seconds(&other, at(90)), 90);
    // A log that refuses to sign (it found an edited event) keeps its age
    // growing.
    tamper(&t.db, 1, false).await;
    let reopened = open(t, &key).await;
    append(&reopened, 1).await;
    assert!(reopened.issue_checkpoint().await.is_err());
    assert_eq!(seconds(&reopened, at(600)), 600);
}

async fn a_new_key_is_handed_over_by_the_old_one(t: &TestDatabase) {
    let (old_key, new_key) = (key(), key());
    let old = open(t, &old_key).await;
    append(&old, 3).await;
    old.issue_checkpoint().await.unwrap();

    // The service restarts with a new key and keeps the old one listed.
    let new = open_after(t, &new_key, &[&old_key]).await;
    append(&new, 2).await;
    let handover = new.issue_checkpoint().await.unwrap();
    assert_eq!(handover.tree_size, 6, "the change is event 5 and covered");
    assert_eq!(
        key_of(&old_key).verify(&handover.signed_note).unwrap().size,
        6
    );
    assert!(key_of(&new_key).verify(&handover.signed_note).is_err());
    let changes = new.store().key_rotations().await.unwrap();
    assert_eq!(changes.len(), 1);
    let change = rotation::read(5, &changes[0].payload).unwrap();
    assert_eq!(change.new_key, key_of(&new_key));
    assert_eq!(change.replaced, Replaced::Key(key_of(&old_key)));

    // From then on the new key signs; a restart records no second change.
    let after = new.issue_checkpoint().await.unwrap();
    assert!(key_of(&new_key).verify(&after.signed_note).is_ok());
    let restarted = open_after(t, &new_key, &[&old_key]).await;
    append(&restarted, 1).await;
    let last = restarted.issue_checkpoint().await.unwrap();
    assert!(key_of(&new_key).verify(&last.signed_note).is_ok());
    assert_eq!(restarted.store().key_rotations().await.unwrap().len(), 1);

    // A replica still on the old key signs nothing more.
    let stale = open(t, &old_key).await;
    assert!(matches!(
        stale.issue_checkpoint().await,
        Err(CheckpointError::KeyRetired { index: 5 })
    ));

    // Whoever trusts the old key follows the change through the log.
    let (entries, mut notes) = export(&restarted).await;
    let report = verify(&entries, &notes, &[key_of(&old_key)]);
    assert_eq!(report.finding, None);
    assert_eq!(report.verified_size, 7);
    assert_eq!(report.signed_by, Some(key_of(&new_key)));
    assert_eq!(
        report.key_changes,
        [KeyChange {
            index: 5,
            key: key_of(&new_key),
            handed_over: true
        }]
    );
    // The new key alone does not vouch for what the old one signed.
    let report = verify(&entries, &notes, &[key_of(&new_key)]);
    assert!(matches!(
        report.finding,
        Some(Finding::BadCheckpoint { position: 0, .. })
    ));
    // And the old key vouches for nothing larger than its handover, even
    // when given: a checkpoint it signs later is refused.
    let late = Signer::from_pkcs8(ORIGIN, &old_key)
        .unwrap()
        .sign(&key_of(&new_key).verify(&last.signed_note).unwrap());
    notes.push(late);
    let report = verify(&entries, &notes, &[key_of(&old_key), key_of(&new_key)]);
    match report.finding {
        Some(Finding::BadCheckpoint { position, reason }) => {
            assert_eq!(position, notes.len() - 1);
            assert!(reason.contains("replaced at position 5"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

async fn a_change_logged_before_a_crash_is_still_handed_over(t: &TestDatabase) {
    let (old_key, new_key) = (key(), key());
    let old = open(t, &old_key).await;
    append(&old, 2).await;
    old.issue_checkpoint().await.unwrap();
    // A replica with the new key logged the change and stopped before the
    // handover checkpoint.
    let new = open_after(t, &new_key, &[&old_key]).await;
    let change = rotation::event(
        "test.local",
        &Signer::from_pkcs8(ORIGIN, &new_key).unwrap(),
        &Replaced::Key(key_of(&old_key)),
    );
    new.append(&validate_batch(&[change], "audit", Utc::now()).unwrap())
        .await
        .unwrap();
    // The next checkpoint is still the old key's handover, and the change
    // is not logged twice.
    let handover = new.issue_checkpoint().await.unwrap();
    assert_eq!(
        key_of(&old_key).verify(&handover.signed_note).unwrap().size,
        3
    );
    assert_eq!(new.store().key_rotations().await.unwrap().len(), 1);
    let next = new.issue_checkpoint().await.unwrap();
    assert!(key_of(&new_key).verify(&next.signed_note).is_ok());
    let (entries, notes) = export(&new).await;
    assert_eq!(verify(&entries, &notes, &[key_of(&old_key)]).finding, None);
}

async fn a_change_without_the_old_key_is_recorded_but_vouched_by_nobody(t: &TestDatabase) {
    let (old_key, new_key) = (key(), key());
    let old = open(t, &old_key).await;
    append(&old, 2).await;
    old.issue_checkpoint().await.unwrap();

    // The old key is lost: the service starts with a new one alone.
    let new = open(t, &new_key).await;
    let first = new.issue_checkpoint().await.unwrap();
    assert!(key_of(&new_key).verify(&first.signed_note).is_ok());
    let changes = new.store().key_rotations().await.unwrap();
    let change = rotation::read(2, &changes[0].payload).unwrap();
    assert_eq!(change.replaced, Replaced::Hash(key_of(&old_key).key_hash()));

    let (entries, notes) = export(&new).await;
    let report = verify(&entries, &notes, &[key_of(&old_key)]);
    match &report.finding {
        Some(Finding::BadCheckpoint {
            position: 1,
            reason,
        }) => {
            assert!(reason.contains("with no handover"), "{reason}");
            assert!(
                reason.contains(&key_of(&new_key).verifier_key()),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let report = verify(&entries, &notes, &[key_of(&old_key), key_of(&new_key)]);
    assert_eq!(report.finding, None);
    assert_eq!(
        report.key_changes,
        [KeyChange {
            index: 2,
            key: key_of(&new_key),
            handed_over: false
        }]
    );
}

confidant_runtime::backend_tests!(confidant_audit::MIGRATIONS;
    two_replicas_appending_in_turn_agree_on_the_tree,
    checkpoints_commit_to_every_event_and_proofs_verify,
    an_interval_without_events_still_gets_a_checkpoint,
    an_edited_event_is_named_and_nothing_more_is_signed,
    an_edit_that_covers_its_tracks_still_breaks_the_signed_root,
    checkpoints_from_another_key_do_not_verify,
    a_new_key_is_handed_over_by_the_old_one,
    the_age_of_the_newest_checkpoint_is_known_to_every_replica,
    a_change_logged_before_a_crash_is_still_handed_over,
    a_change_without_the_old_key_is_recorded_but_vouched_by_nobody,
);
