//! Detection's counting rules, on SQLite and PostgreSQL: an actor's window
//! is counted across batches, and a detector that starts late (a restart,
//! another replica taking the lease) reads the window it missed from the
//! log instead of starting from zero.

use std::sync::Arc;

use chrono::Utc;
use confidant_audit::checkpoint::Signer;
use confidant_audit::detection::{Detector, ListedOnly, alerts};
use confidant_audit::domain::validate_batch;
use confidant_audit::log::AuditLog;
use confidant_audit::store::EventStore;
use confidant_proto::audit::v1::{ActorKind, Outcome};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::portable::Statement;
use confidant_runtime::testing::TestDatabase;
use uuid::Uuid;

const TRUST: &str = "test.local";

async fn open(t: &TestDatabase) -> Arc<AuditLog> {
    let key = Signer::generate_pkcs8().unwrap().to_vec();
    Arc::new(
        AuditLog::open(
            EventStore::new(t.db.clone()),
            Signer::from_pkcs8("test.local/audit", &key).unwrap(),
            "test.local/audit",
        )
        .await
        .unwrap(),
    )
}

fn detector(t: &TestDatabase, log: &Arc<AuditLog>) -> Detector {
    Detector::new(t.db.clone(), log.clone(), Arc::new(ListedOnly), TRUST)
}

/// Reads by `actor` of one record of each of `clients`, allowed or refused.
async fn reads(log: &AuditLog, actor: &str, clients: &[Uuid], outcome: Outcome) {
    let raw: Vec<_> = clients
        .iter()
        .map(|c| {
            EventBuilder::new(ServiceName::Vault, TRUST, Action::VaultRecordRead)
                .actor(ActorKind::Staff, actor, "spiffe://test.local/firm-app")
                .resource("record", &Uuid::now_v7().to_string())
                .scope(Some(*c), None)
                .outcome(
                    outcome,
                    if outcome == Outcome::Allowed {
                        "allowed"
                    } else {
                        "not_assigned"
                    },
                )
                .build()
        })
        .collect();
    log.append(&validate_batch(&raw, "vault", Utc::now()).unwrap())
        .await
        .unwrap();
}

async fn fired(t: &TestDatabase, rule: &str) -> Vec<String> {
    alerts(&t.db, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.rule_code == rule)
        .map(|a| format!("{}: {}", a.actor_id, a.summary))
        .collect()
}

async fn counting_rules_carry_their_window_across_batches_and_detectors(t: &TestDatabase) {
    t.db.transact(
        vec![
            Statement::new(
                "UPDATE detection_rules SET threshold = 2 WHERE code = 'many-clients'",
                vec![],
            ),
            Statement::new(
                "UPDATE detection_rules SET enabled = 0 WHERE code = 'reads-off-hours'",
                vec![],
            ),
        ],
        &[],
    )
    .await
    .unwrap();
    let log = open(t).await;
    let clients: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let first = detector(t, &log);

    // Two distinct clients, read again and again, in two batches: not more
    // than the threshold.
    reads(
        &log,
        "staff-a",
        &[clients[0], clients[1], clients[0]],
        Outcome::Allowed,
    )
    .await;
    first.step().await.unwrap();
    reads(&log, "staff-a", &[clients[1], clients[0]], Outcome::Allowed).await;
    first.step().await.unwrap();
    assert!(fired(t, "many-clients").await.is_empty());

    // A detector that saw none of that (a restart, or another replica
    // taking over) counts the third client as the third.
    let second = detector(t, &log);
    reads(&log, "staff-a", &[clients[2]], Outcome::Allowed).await;
    reads(&log, "staff-b", &[clients[3]], Outcome::Allowed).await;
    second.step().await.unwrap();
    assert_eq!(
        fired(t, "many-clients").await,
        vec!["staff-a: 3 distinct clients read within 3600s"]
    );

    // Once per window: a fourth client raises nothing more.
    reads(&log, "staff-a", &[clients[3]], Outcome::Allowed).await;
    second.step().await.unwrap();
    assert_eq!(fired(t, "many-clients").await.len(), 1);

    // Refusals: three seen by the second detector, three more by the first,
    // whose memory is now stale (it missed the batches in between).
    reads(&log, "staff-c", &clients[..3], Outcome::Denied).await;
    second.step().await.unwrap();
    assert!(fired(t, "repeated-denials").await.is_empty());
    reads(&log, "staff-c", &clients[..3], Outcome::Denied).await;
    first.step().await.unwrap();
    assert_eq!(
        fired(t, "repeated-denials").await,
        vec!["staff-c: 6 refusals within 600s"]
    );
}

confidant_runtime::backend_tests!(confidant_audit::MIGRATIONS;
    counting_rules_carry_their_window_across_batches_and_detectors,
);
