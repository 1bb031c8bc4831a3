//! Retention's lists come in pages on every backend: read page by page
//! with any page size, the return-to-client list, the holds and the
//! disposal batches are exactly what one read of everything gives, in the
//! same order, including items whose sort keys tie but for their ids; and
//! each hold and batch on a page carries its own scopes and approvers, not
//! those of its neighbours.

use chrono::{DateTime, Duration, Utc};
use confidant_retention::store::RetentionStore;
use confidant_runtime::page::{self, After, Key, Part};
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::testing::{TestDatabase, all_pages};
use uuid::Uuid;

async fn run(db: &TestDatabase, sql: &'static str, values: Vec<Value>) {
    db.db
        .transact(vec![Statement::new(sql, values)], &[])
        .await
        .expect("insert");
}

fn at(minutes: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-07T09:00:00.123456Z")
        .unwrap()
        .with_timezone(&Utc)
        + Duration::minutes(minutes)
}

async fn the_return_list_pages_open_entries_first_then_by_due_date(db: &TestDatabase) {
    let store = RetentionStore::new(db.db.clone());
    let client = Uuid::now_v7();
    let other = Uuid::now_v7();
    // Seven entries: open and returned, several due at the same instant,
    // and one of another client.
    let entries = [
        (client, "returned", 5),
        (client, "listed", 10),
        (client, "listed", 0),
        (client, "listed", 10),
        (client, "returned", 5),
        (client, "listed", 10),
        (other, "listed", 1),
    ];
    for (owner, state, due) in entries {
        run(
            db,
            "INSERT INTO retention_returns (id, scope_id, client_id, category, original_count, due_at, state, listed_at) \
             VALUES ($1, $2, $3, 'matter_file', 1, $4, $5, $6)",
            vec![
                Value::Uuid(Uuid::now_v7()),
                Value::Uuid(Uuid::now_v7()),
                Value::Uuid(owner),
                Value::Time(at(due)),
                Value::Text(state.into()),
                Value::Time(at(-60)),
            ],
        )
        .await;
    }
    let key = |r: &confidant_retention::store::ReturnRow| {
        page::token(&[Key::Text(&r.state), Key::Time(r.due_at), Key::Uuid(r.id)])
    };
    let shape = [Part::Text, Part::Time, Part::Uuid];
    for (client_id, include_returned, expected) in [
        (Some(client), true, 6),
        (Some(client), false, 4),
        (None, true, 7),
    ] {
        let whole = store
            .returns(
                client_id,
                include_returned,
                After::parse(&mut Default::default(), "t", "", &shape).values(),
                1000,
            )
            .await
            .unwrap();
        assert_eq!(whole.len(), expected);
        let order: Vec<(String, DateTime<Utc>, Uuid)> = whole
            .iter()
            .map(|r| (r.state.clone(), r.due_at, r.id))
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "open first, earliest due first, then by id");
        for size in 1..=4 {
            let (paged, pages) = all_pages(
                size,
                &shape,
                |after, limit| {
                    let store = store.clone();
                    async move {
                        store
                            .returns(client_id, include_returned, after, limit)
                            .await
                            .unwrap()
                    }
                },
                key,
            )
            .await;
            let ids = |rows: &[confidant_retention::store::ReturnRow]| {
                rows.iter().map(|r| r.id).collect::<Vec<_>>()
            };
            assert_eq!(ids(&paged), ids(&whole), "pages of {size}");
            assert_eq!(
                pages,
                expected.div_ceil(usize::try_from(size).unwrap()).max(1)
            );
        }
    }
}

async fn holds_and_batches_page_each_with_its_own_scopes_and_approvers(db: &TestDatabase) {
    let store = RetentionStore::new(db.db.clone());
    let client = Uuid::now_v7();
    // Five holds: the second released, the third and fifth over named
    // scopes, the second and fourth with approvals of their release.
    let mut holds = Vec::new();
    for i in 0..5 {
        let id = Uuid::now_v7();
        holds.push(id);
        let released = (i == 1).then(|| at(i));
        let scoped = i32::from(i == 2 || i == 4);
        run(
            db,
            "INSERT INTO retention_holds (id, reason, client_id, placed_by, placed_at, in_vault, released_at, scoped) \
             VALUES ($1, 'litigation', $2, 'rm', $3, 1, $4, $5)",
            vec![
                Value::Uuid(id),
                Value::Uuid(client),
                Value::Time(at(i)),
                Value::OptTime(released),
                Value::Int(scoped),
            ],
        )
        .await;
        if scoped == 1 {
            for _ in 0..=i {
                run(
                    db,
                    "INSERT INTO retention_hold_scopes (hold_id, scope_id) VALUES ($1, $2)",
                    vec![Value::Uuid(id), Value::Uuid(Uuid::now_v7())],
                )
                .await;
            }
        }
        if i == 1 || i == 3 {
            for staff in ["first-rm", "second-rm"] {
                run(
                    db,
                    "INSERT INTO retention_hold_approvals (hold_id, staff_id, approved_at) VALUES ($1, $2, $3)",
                    vec![
                        Value::Uuid(id),
                        Value::Text(format!("{staff}-{i}")),
                        Value::Time(at(i)),
                    ],
                )
                .await;
            }
        }
    }
    let first = || After::parse(&mut Default::default(), "t", "", &[Part::Uuid]).values();
    for include_released in [true, false] {
        let whole = store
            .hold_page(Some(client), include_released, first(), 1000)
            .await
            .unwrap();
        let expected: Vec<Uuid> = holds
            .iter()
            .rev()
            .copied()
            .filter(|id| include_released || *id != holds[1])
            .collect();
        assert_eq!(
            whole.iter().map(|(h, _)| h.id).collect::<Vec<_>>(),
            expected
        );
        for (hold, approvers) in &whole {
            let i = holds.iter().position(|id| *id == hold.id).unwrap();
            let scopes = if i == 2 || i == 4 { i + 1 } else { 0 };
            assert_eq!(hold.scope_ids.len(), scopes, "hold {i}'s own scopes");
            let approved = if i == 1 || i == 3 {
                vec![format!("first-rm-{i}"), format!("second-rm-{i}")]
            } else {
                vec![]
            };
            assert_eq!(*approvers, approved, "hold {i}'s own approvers");
        }
        for size in 1..=3 {
            let (paged, _) = all_pages(
                size,
                &[Part::Uuid],
                |after, limit| {
                    let store = store.clone();
                    async move {
                        store
                            .hold_page(Some(client), include_released, after, limit)
                            .await
                            .unwrap()
                    }
                },
                |(h, _)| page::token(&[Key::Uuid(h.id)]),
            )
            .await;
            let view = |rows: &[(confidant_retention::store::HoldRow, Vec<String>)]| {
                rows.iter()
                    .map(|(h, a)| (h.id, h.scope_ids.clone(), a.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(view(&paged), view(&whole), "pages of {size}");
        }
    }

    // Four batches, the middle two done; each with its own disposals.
    let mut batches = Vec::new();
    for i in 0..4 {
        let id = Uuid::now_v7();
        batches.push(id);
        let state = if i == 1 || i == 2 {
            "done"
        } else {
            "awaiting_approval"
        };
        run(
            db,
            "INSERT INTO retention_batches (id, action, state, approvals_needed, created_at) VALUES ($1, 'shred', $2, 1, $3)",
            vec![Value::Uuid(id), Value::Text(state.into()), Value::Time(at(i))],
        )
        .await;
        for _ in 0..=i {
            run(
                db,
                "INSERT INTO retention_disposals (id, scope_id, batch_id, order_id, state, client_id, category, due_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'due', $5, 'matter_file', $6, $6)",
                vec![
                    Value::Uuid(Uuid::now_v7()),
                    Value::Uuid(Uuid::now_v7()),
                    Value::Uuid(id),
                    Value::Uuid(Uuid::now_v7()),
                    Value::Uuid(client),
                    Value::Time(at(i)),
                ],
            )
            .await;
        }
        if state == "done" {
            run(
                db,
                "INSERT INTO retention_batch_approvals (batch_id, staff_id, approved_at) VALUES ($1, $2, $3)",
                vec![Value::Uuid(id), Value::Text(format!("rm-{i}")), Value::Time(at(i))],
            )
            .await;
        }
    }
    for (state, expected) in [
        (None, vec![3, 2, 1, 0]),
        (Some("done"), vec![2, 1]),
        (Some("awaiting_approval"), vec![3, 0]),
    ] {
        let whole = store.batch_page(state, first(), 1000).await.unwrap();
        let view = |rows: &[(
            confidant_retention::disposal::BatchRow,
            Vec<Uuid>,
            Vec<String>,
        )]| {
            rows.iter()
                .map(|(b, s, a)| {
                    let i = batches.iter().position(|id| *id == b.id).unwrap();
                    (i, s.len(), a.clone())
                })
                .collect::<Vec<_>>()
        };
        let expected_view: Vec<(usize, usize, Vec<String>)> = expected
            .iter()
            .map(|&i| {
                let approvers = if i == 1 || i == 2 {
                    vec![format!("rm-{i}")]
                } else {
                    vec![]
                };
                (i, i + 1, approvers)
            })
            .collect();
        assert_eq!(view(&whole), expected_view, "{state:?}");
        for size in 1..=3 {
            let (paged, _) = all_pages(
                size,
                &[Part::Uuid],
                |after, limit| {
                    let store = store.clone();
                    async move { store.batch_page(state, after, limit).await.unwrap() }
                },
                |(b, ..)| page::token(&[Key::Uuid(b.id)]),
            )
            .await;
            assert_eq!(view(&paged), expected_view, "{state:?} in pages of {size}");
        }
    }
}

confidant_runtime::backend_tests!(confidant_retention::MIGRATIONS;
    the_return_list_pages_open_entries_first_then_by_due_date,
    holds_and_batches_page_each_with_its_own_scopes_and_approvers,
);
