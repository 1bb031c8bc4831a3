//! Detection's counting rules, on SQLite and PostgreSQL: an actor's window
//! is counted across batches, and a detector that starts late (a restart,
//! another replica taking the lease) reads the window it missed from the
//! log instead of starting from zero. Alerts are listed in pages, newest
//! first, whatever page size, alerts fired at the same instant included.

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
use confidant_runtime::page::{self, After, Key, Part};
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::testing::{TestDatabase, all_pages};
use uuid::Uuid;

const TRUST: &str = "test.local";

async fn open(t: &TestDatabase) -> Arc<AuditLog> {
    let key = Signer::generate_pkcs8().unwrap().to_vec();
    Arc::new(
        AuditLog::open(
            EventStore::new(t.db.clone()),
            Signer::from_pkcs8("test.local/audit", &key).unwrap(),
            "test.local/audit",
            TRUST,
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
    alerts(&t.db, first_page(), 100)
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

fn first_page() -> Vec<Value> {
    After::parse(
        &mut Default::default(),
        "page_token",
        "",
        &[Part::Time, Part::Uuid],
    )
    .values()
}

async fn alerts_page_newest_first_with_ties_kept_apart(t: &TestDatabase) {
    // Seven alerts, four of them fired at the same instant.
    let base = Utc::now();
    for i in 0..7i64 {
        let fired = base + chrono::Duration::seconds(if i < 4 { 0 } else { i });
        t.db.transact(
            vec![Statement::new(
                "INSERT INTO detection_alerts (id, rule_code, actor_id, fired_at, event_idx, summary) \
                 VALUES ($1, 'denials', $2, $3, $4, 'denied 5 times')",
                vec![
                    Value::Uuid(Uuid::now_v7()),
                    Value::Text(format!("actor-{i}")),
                    Value::Time(fired),
                    Value::BigInt(i),
                ],
            )],
            &[],
        )
        .await
        .unwrap();
    }
    let whole = alerts(&t.db, first_page(), 100).await.unwrap();
    let order: Vec<_> = whole.iter().map(|a| (a.fired_at, a.id)).collect();
    let mut newest_first = order.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, newest_first);
    assert_eq!(whole.len(), 7);
    for size in 1..=4 {
        let (rows, _) = all_pages(
            size,
            &[Part::Time, Part::Uuid],
            |after, limit| async move { alerts(&t.db, after, limit).await.unwrap() },
            |a| page::token(&[Key::Time(a.fired_at), Key::Uuid(a.id)]),
        )
        .await;
        let seen: Vec<Uuid> = rows.into_iter().map(|a| a.id).collect();
        assert_eq!(
            seen,
            whole.iter().map(|a| a.id).collect::<Vec<_>>(),
            "pages of {size}"
        );
    }
}

confidant_runtime::backend_tests!(confidant_audit::MIGRATIONS;
    counting_rules_carry_their_window_across_batches_and_detectors,
    alerts_page_newest_first_with_ties_kept_apart,
);
