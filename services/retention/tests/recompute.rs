//! Due dates are never computed from older inputs over newer ones, on every
//! backend: a recompute that read the policies or the trigger events before
//! they changed writes nothing afterwards; recomputes racing policy
//! changes leave every scope dated by the policies that exist at the end;
//! and one client's trigger events stale only recomputes of that client.

use chrono::{DateTime, Duration, Utc};
use confidant_retention::domain::{Action, Period, Rules, Trigger};
use confidant_retention::service::{Actor, Applied, Retention, Scopes};
use confidant_retention::store::{self, RetentionStore, ScopeRow};
use confidant_runtime::testing::TestDatabase;
use confidant_vault::domain::Category;
use uuid::Uuid;

fn retention(db: &TestDatabase) -> Retention {
    Retention::new(
        RetentionStore::new(db.db.clone()),
        None,
        "confidant.local",
        2,
    )
}

fn records_manager() -> Actor {
    Actor::Staff {
        staff_id: "records-manager".into(),
        roles: vec!["retention.managers".into()],
        peer: "spiffe://confidant.local/app/records".into(),
        session: String::new(),
    }
}

fn rules(category: Category, years: u32, trigger: Trigger) -> Rules {
    Rules {
        category,
        period: Period {
            years,
            months: 0,
            days: 0,
        },
        trigger,
        action: Action::Review,
        client_notice_days: 0,
        basis: "firm retention schedule".into(),
        practice_area: None,
        jurisdiction: None,
    }
}

/// Registers `n` client-level scopes of `category` for `client`, created
/// at `created`; returns their ids.
async fn scopes(
    db: &TestDatabase,
    client: Uuid,
    category: Category,
    n: usize,
    created: DateTime<Utc>,
) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let rows = ids
        .iter()
        .map(|id| {
            store::upsert_scope(
                &ScopeRow {
                    scope_id: *id,
                    client_id: client,
                    matter_id: None,
                    category: category.as_str().to_owned(),
                    created_at: created,
                    vault_state: "active".into(),
                    due_at: None,
                    original_count: 0,
                    practice_area: None,
                    jurisdiction: None,
                    matter_known: true,
                },
                Utc::now(),
            )
        })
        .collect();
    db.db.transact(rows, &[]).await.unwrap();
    ids
}

async fn due_dates(retention: &Retention, ids: &[Uuid]) -> Vec<Option<DateTime<Utc>>> {
    let mut dates = Vec::new();
    for id in ids {
        dates.push(retention.store().scope(*id).await.unwrap().unwrap().due_at);
    }
    dates
}

async fn a_recompute_from_older_inputs_writes_nothing(db: &TestDatabase) {
    let retention = retention(db);
    let client = Uuid::now_v7();
    let created = Utc::now() - Duration::days(30);
    let contacts = scopes(db, client, Category::ContactDetails, 3, created).await;

    // A registry sync reads the inputs while there is no policy yet; then a
    // records manager creates the category's policy, which dates the scopes.
    let stale = retention
        .plan_recompute(&Scopes::Ids(contacts.clone()))
        .await
        .unwrap();
    assert_eq!(stale.len(), 3);
    let (_, dated) = retention
        .create_policy(
            &records_manager(),
            &rules(Category::ContactDetails, 1, Trigger::Creation),
        )
        .await
        .unwrap();
    assert_eq!(dated, 3);
    let year_after = due_dates(&retention, &contacts).await;
    assert!(year_after.iter().all(|d| d.is_some_and(|d| d > created)));

    // The sync's plan, which would write "no due date", now writes nothing.
    assert_eq!(
        retention.apply_recompute(stale).await.unwrap(),
        Applied::Stale
    );
    assert_eq!(due_dates(&retention, &contacts).await, year_after);

    // The same for a trigger event: a policy counting from the end of the
    // relationship dates nothing until it ends; a plan read before the end
    // was recorded cannot take the dates away again.
    let financial = scopes(db, client, Category::Financial, 2, created).await;
    retention
        .create_policy(
            &records_manager(),
            &rules(Category::Financial, 7, Trigger::RelationshipEnded),
        )
        .await
        .unwrap();
    assert_eq!(due_dates(&retention, &financial).await, vec![None, None]);
    let stale = retention
        .plan_recompute(&Scopes::Client(client))
        .await
        .unwrap();
    let ended = Utc::now() - Duration::days(1);
    let n = retention
        .record_trigger(
            &records_manager(),
            client,
            None,
            &Trigger::RelationshipEnded,
            ended,
        )
        .await
        .unwrap();
    assert_eq!(n, 5, "the client's five scopes are dated again");
    let seven_years = due_dates(&retention, &financial).await;
    assert!(seven_years.iter().all(|d| d.is_some_and(|d| d > ended)));
    assert_eq!(
        retention.apply_recompute(stale).await.unwrap(),
        Applied::Stale
    );
    assert_eq!(due_dates(&retention, &financial).await, seven_years);
    assert_eq!(due_dates(&retention, &contacts).await, year_after);

    // A plan read after the last change is written, and agrees.
    let fresh = retention
        .plan_recompute(&Scopes::Client(client))
        .await
        .unwrap();
    assert_eq!(
        retention.apply_recompute(fresh).await.unwrap(),
        Applied::Written(5)
    );
    assert_eq!(due_dates(&retention, &financial).await, seven_years);
}

async fn recomputes_racing_policy_changes_end_on_the_last_policies(db: &TestDatabase) {
    let retention = retention(db);
    let created = Utc::now() - Duration::days(30);
    // One scope for each of 100 clients, so reading the inputs takes a
    // while (the trigger events are read client by client).
    let mut all = Vec::new();
    for _ in 0..100 {
        all.extend(scopes(db, Uuid::now_v7(), Category::Financial, 1, created).await);
    }
    let (policy, _) = retention
        .create_policy(
            &records_manager(),
            &rules(Category::Financial, 1, Trigger::Creation),
        )
        .await
        .unwrap();

    // Round after round, a registry sync recomputes every scope while a
    // records manager lengthens the period by a year; once both are done,
    // every scope is due when the new period says.
    let mut wrong_rounds = 0;
    for version in 1..=15_i32 {
        let years = 1 + version.unsigned_abs();
        let sync = {
            let retention = retention.clone();
            let all = all.clone();
            tokio::spawn(async move { retention.recompute(&Scopes::Ids(all)).await })
        };
        retention
            .update_policy(
                &records_manager(),
                policy.id,
                version,
                &rules(Category::Financial, years, Trigger::Creation),
            )
            .await
            .unwrap();
        sync.await.unwrap().unwrap();
        let expected = Period {
            years,
            months: 0,
            days: 0,
        }
        .after(created)
        .unwrap();
        if due_dates(&retention, &all)
            .await
            .iter()
            .any(|d| d.map(|d| d.timestamp()) != Some(expected.timestamp()))
        {
            wrong_rounds += 1;
        }
    }
    assert_eq!(
        wrong_rounds, 0,
        "rounds that left scopes dated by an older version of the policy"
    );
}

async fn trigger_events_of_different_clients_do_not_hold_each_other_up(db: &TestDatabase) {
    let retention = retention(db);
    let created = Utc::now() - Duration::days(30);
    retention
        .create_policy(
            &records_manager(),
            &rules(Category::Financial, 7, Trigger::Named("file-closed".into())),
        )
        .await
        .unwrap();
    // A recompute of one client's scopes is stale once that client's
    // inputs change, not when another client's do.
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    scopes(db, a, Category::Financial, 2, created).await;
    scopes(db, b, Category::Financial, 2, created).await;
    let of_a = retention.plan_recompute(&Scopes::Client(a)).await.unwrap();
    let event = Trigger::Named("file-closed".into());
    retention
        .record_trigger(&records_manager(), b, None, &event, created)
        .await
        .unwrap();
    assert_eq!(
        retention.apply_recompute(of_a).await.unwrap(),
        Applied::Written(2)
    );
    let of_a = retention.plan_recompute(&Scopes::Client(a)).await.unwrap();
    retention
        .record_trigger(&records_manager(), a, None, &event, created)
        .await
        .unwrap();
    assert_eq!(
        retention.apply_recompute(of_a).await.unwrap(),
        Applied::Stale
    );

    // Sixteen firm applications record events of their own clients at the
    // same time, as a bulk import would: each recording dates its client's
    // scopes, none is refused because another client's inputs changed.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = Uuid::now_v7();
        let ids = scopes(db, client, Category::Financial, 5, created).await;
        let retention = retention.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            for i in 0..20 {
                let at = created + Duration::hours(i);
                retention
                    .record_trigger(
                        &records_manager(),
                        client,
                        None,
                        &Trigger::Named("file-closed".into()),
                        at,
                    )
                    .await
                    .unwrap();
                last = Some(at);
            }
            (ids, last.unwrap())
        }));
    }
    for task in tasks {
        let (ids, last) = task.await.unwrap();
        let expected = Period {
            years: 7,
            months: 0,
            days: 0,
        }
        .after(last);
        for due in due_dates(&retention, &ids).await {
            assert_eq!(
                due.map(|d| d.timestamp_micros()),
                expected.map(|d| d.timestamp_micros()),
                "dated from the client's latest event"
            );
        }
    }
}

confidant_runtime::backend_tests!(confidant_retention::MIGRATIONS;
    a_recompute_from_older_inputs_writes_nothing,
    recomputes_racing_policy_changes_end_on_the_last_policies,
    trigger_events_of_different_clients_do_not_hold_each_other_up,
);
