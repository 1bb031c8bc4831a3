//! The outbox conformance suite, run against SQLite and PostgreSQL.

use confidant_proto::audit::v1::{Actor, ActorKind, AuditEvent, Outcome};
use confidant_runtime::outbox::{Outbox, enqueue_postgres, enqueue_sqlite};
use confidant_runtime::storage::{COMMON_ONLY, Database};
use confidant_runtime::testing::TestDatabase;

fn event(action: &str) -> AuditEvent {
    AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        source_service: "vault".into(),
        actor: Some(Actor {
            kind: ActorKind::Service as i32,
            id: "vault".into(),
            ..Default::default()
        }),
        action: action.into(),
        outcome: Outcome::Allowed as i32,
        ..Default::default()
    }
}

async fn pending_events_come_back_in_order_until_delivered(t: &TestDatabase) {
    let outbox = Outbox::new(t.db.clone());
    let events: Vec<_> = (0..5).map(|i| event(&format!("test.step{i}"))).collect();
    for e in &events {
        outbox.enqueue(e).await.unwrap();
    }
    let pending = outbox.pending(3).await.unwrap();
    let actions: Vec<_> = pending.iter().map(|p| p.event.action.as_str()).collect();
    assert_eq!(actions, ["test.step0", "test.step1", "test.step2"]);
    assert_eq!(pending[0].event, events[0], "payload round-trips");

    assert_eq!(
        outbox
            .remove_delivered(&[pending[0].seq, pending[1].seq, pending[2].seq])
            .await
            .unwrap(),
        3
    );
    assert_eq!(outbox.backlog().await.unwrap(), 2);
    let rest = outbox.pending(10).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].event.action, "test.step3");
}

async fn events_committed_together_keep_their_order(t: &TestDatabase) {
    let outbox = Outbox::new(t.db.clone());
    let events: Vec<_> = (0..40).map(|i| event(&format!("test.batch{i}"))).collect();
    t.db.transact(Vec::new(), &events[..1]).await.unwrap();
    t.db.transact(Vec::new(), &events[1..]).await.unwrap();
    let pending = outbox.pending(100).await.unwrap();
    assert_eq!(
        pending.iter().map(|p| p.event.clone()).collect::<Vec<_>>(),
        events,
        "every event, once, in the order given"
    );
    assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
    // One bad id refuses the whole batch: nothing of it is written.
    let mut bad: Vec<_> = (0..3).map(|i| event(&format!("test.bad{i}"))).collect();
    bad[2].id = "not-a-uuid".into();
    assert!(t.db.transact(Vec::new(), &bad).await.is_err());
    assert_eq!(outbox.backlog().await.unwrap(), 40);
}

async fn delivered_events_leave_the_outbox_and_pending_ones_stay(t: &TestDatabase) {
    let outbox = Outbox::new(t.db.clone());
    for i in 0..4 {
        outbox.enqueue(&event(&format!("test.p{i}"))).await.unwrap();
    }
    let pending = outbox.pending(10).await.unwrap();
    assert_eq!(
        outbox
            .remove_delivered(&[pending[0].seq, pending[1].seq])
            .await
            .unwrap(),
        2
    );
    // Removing them again (a repeated acknowledgement) touches nothing.
    assert_eq!(outbox.remove_delivered(&[pending[0].seq]).await.unwrap(), 0);
    let rest = outbox.pending(10).await.unwrap();
    assert_eq!(
        rest.iter()
            .map(|p| p.event.action.as_str())
            .collect::<Vec<_>>(),
        ["test.p2", "test.p3"],
        "undelivered events stay"
    );
    let left: Vec<(i64,)> =
        t.db.fetch_all("SELECT seq FROM outbox", vec![])
            .await
            .unwrap();
    assert_eq!(left.len(), 2, "delivered events are gone, not kept");
}

async fn failures_are_counted_and_events_stay_pending(t: &TestDatabase) {
    let outbox = Outbox::new(t.db.clone());
    outbox.enqueue(&event("test.a")).await.unwrap();
    let seq = outbox.pending(1).await.unwrap()[0].seq;
    outbox.record_failure(&[seq], "Unavailable").await.unwrap();
    outbox.record_failure(&[seq], "Unavailable").await.unwrap();
    let again = outbox.pending(1).await.unwrap();
    assert_eq!(again[0].attempts, 2);
    assert_eq!(outbox.backlog().await.unwrap(), 1);
}

async fn an_event_exists_only_if_its_transaction_commits(t: &TestDatabase) {
    let outbox = Outbox::new(t.db.clone());
    let rolled_back = event("test.rolled_back");
    let committed = event("test.committed");
    match &t.db {
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            enqueue_postgres(&mut tx, &rolled_back).await.unwrap();
            tx.rollback().await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            enqueue_postgres(&mut tx, &committed).await.unwrap();
            tx.commit().await.unwrap();
        }
        Database::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            enqueue_sqlite(&mut tx, &rolled_back).await.unwrap();
            tx.rollback().await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            enqueue_sqlite(&mut tx, &committed).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
    let pending = outbox.pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].event.action, "test.committed");
}

/// An event whose transaction took its sequence number first but commits
/// after a later one was delivered is still delivered: acknowledging a batch
/// marks exactly the events sent.
async fn an_event_committed_late_is_not_skipped(t: &TestDatabase) {
    let Database::Postgres(pool) = &t.db else {
        return; // SQLite has one writer at a time: commits follow the sequence.
    };
    let outbox = Outbox::new(t.db.clone());
    let slow = event("test.slow");
    let fast = event("test.fast");
    let mut slow_tx = pool.begin().await.unwrap();
    enqueue_postgres(&mut slow_tx, &slow).await.unwrap();
    outbox.enqueue(&fast).await.unwrap();
    let first = outbox.pending(10).await.unwrap();
    assert_eq!(first.len(), 1, "the slow transaction is not visible yet");
    assert_eq!(first[0].event, fast);
    assert_eq!(outbox.remove_delivered(&[first[0].seq]).await.unwrap(), 1);
    slow_tx.commit().await.unwrap();
    let rest = outbox.pending(10).await.unwrap();
    assert_eq!(rest.len(), 1, "the late event still waits for delivery");
    assert_eq!(rest[0].event, slow);
    assert!(
        rest[0].seq < first[0].seq,
        "it took the lower sequence number"
    );
}

async fn the_same_event_cannot_be_enqueued_twice(t: &TestDatabase) {
    let outbox = Outbox::new(t.db.clone());
    let e = event("test.once");
    outbox.enqueue(&e).await.unwrap();
    assert!(outbox.enqueue(&e).await.is_err());
    assert_eq!(outbox.backlog().await.unwrap(), 1);
}

async fn malformed_event_ids_are_refused(t: &TestDatabase) {
    let outbox = Outbox::new(t.db.clone());
    let mut e = event("test.bad");
    e.id = "not-a-uuid".into();
    assert!(matches!(
        outbox.enqueue(&e).await,
        Err(confidant_runtime::outbox::Error::InvalidEventId)
    ));
    assert_eq!(outbox.backlog().await.unwrap(), 0);
}

/// A statement and its audit events commit together or not at all: a
/// guard that does not hold (too few rows, or too many) writes neither the
/// statement's changes nor the events, and says how many rows it found.
async fn a_statement_and_its_events_commit_together_or_not_at_all(t: &TestDatabase) {
    use confidant_runtime::portable::{Statement, TransactError, Value};
    const CREATE: &str = "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)";
    match &t.db {
        Database::Postgres(pool) => {
            sqlx::query(CREATE).execute(pool).await.unwrap();
        }
        Database::Sqlite(pool) => {
            sqlx::query(CREATE).execute(pool).await.unwrap();
        }
    }
    let put = |k: &str, v: i32| {
        Statement::new(
            "INSERT INTO kv (k, v) VALUES ($1, $2)",
            vec![Value::Text(k.into()), Value::Int(v)],
        )
    };
    let bump = |from: i32, to: i32| {
        Statement::new(
            "UPDATE kv SET v = $1 WHERE v = $2",
            vec![Value::Int(to), Value::Int(from)],
        )
        .expecting(1)
    };
    let written = [
        event("test.put"),
        event("test.bumped"),
        event("test.second"),
    ];
    t.db.transact(vec![put("a", 1)], &written[..1])
        .await
        .unwrap();
    assert_eq!(
        t.db.transact(vec![bump(1, 2)], &written[1..])
            .await
            .unwrap(),
        vec![1]
    );
    // The guard finds no row: nothing written.
    let none = t.db.transact(vec![bump(1, 5)], &[event("test.lost")]).await;
    assert!(
        matches!(
            none,
            Err(TransactError::Unmet {
                statement: 0,
                affected: 0
            })
        ),
        "{none:?}"
    );
    // The guard finds three rows: rolled back, values unchanged.
    t.db.transact(vec![put("b", 2)], &[]).await.unwrap();
    t.db.transact(vec![put("c", 2)], &[]).await.unwrap();
    let many = t.db.transact(vec![bump(2, 9)], &[event("test.lost")]).await;
    assert!(
        matches!(
            many,
            Err(TransactError::Unmet {
                statement: 0,
                affected: 3
            })
        ),
        "{many:?}"
    );
    let nines: Vec<(String,)> =
        t.db.fetch_all("SELECT k FROM kv WHERE v = $1", vec![Value::Int(9)])
            .await
            .unwrap();
    assert!(nines.is_empty(), "the refused update was rolled back");
    // A statement that fails writes no event.
    let duplicate =
        t.db.transact(vec![put("a", 7)], &[event("test.lost")])
            .await;
    assert!(duplicate.is_err_and(|e| e.is_duplicate()));
    let pending = Outbox::new(t.db.clone()).pending(100).await.unwrap();
    assert_eq!(
        pending.iter().map(|p| p.event.clone()).collect::<Vec<_>>(),
        written,
        "exactly the events of what was written, in order"
    );
}

/// Every write of `writes` at once through `group`, each with its event.
async fn write_all(
    group: &confidant_runtime::portable::WriteGroup,
    writes: &[(confidant_runtime::portable::Statement, AuditEvent)],
) -> Vec<Result<u64, confidant_runtime::portable::TransactError>> {
    futures::future::join_all(
        writes
            .iter()
            .map(|(s, e)| group.transact(s.clone(), vec![e.clone()])),
    )
    .await
}

/// The outbox holds exactly the events named by `landed`, once each.
async fn assert_outbox_holds(t: &TestDatabase, mut landed: Vec<String>) {
    let mut stored: Vec<String> = Outbox::new(t.db.clone())
        .pending(100)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.event.action)
        .collect();
    stored.sort();
    landed.sort();
    assert_eq!(
        stored, landed,
        "exactly the events of the writes that landed, once"
    );
}

/// Writes made at the same moment share commits (fewer transactions than
/// writes on PostgreSQL), and each still gets the outcome it would have
/// had alone: a duplicate key or a guard that does not hold fails that
/// write only, writing neither its row nor its event, while the others of
/// its group land with theirs.
async fn concurrent_writes_share_commits_and_each_keeps_its_own_outcome(t: &TestDatabase) {
    use confidant_runtime::portable::{Statement, TransactError, Value, WriteGroup};
    // Quoted text with a `$` in it stays as it is when the statement joins
    // a group.
    const CREATE: &str =
        "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL, note TEXT NOT NULL)";
    match &t.db {
        Database::Postgres(pool) => {
            sqlx::query(CREATE).execute(pool).await.unwrap();
        }
        Database::Sqlite(pool) => {
            sqlx::query(CREATE).execute(pool).await.unwrap();
        }
    }
    let put = |k: &str, v: i32| {
        Statement::new(
            "INSERT INTO kv (k, v, note) VALUES ($1, $2, 'costs $1')",
            vec![Value::Text(k.into()), Value::Int(v)],
        )
    };
    let bump = |from: i32, to: i32| {
        Statement::new(
            "UPDATE kv SET v = $1 WHERE v = $2",
            vec![Value::Int(to), Value::Int(from)],
        )
        .expecting(1)
    };
    let writes = WriteGroup::start(t.db.clone());
    let first: Vec<(Statement, AuditEvent)> = (0..30)
        .map(|i| (put(&format!("k{i}"), i), event(&format!("test.put{i}"))))
        .collect();
    let results = write_all(&writes, &first).await;
    assert!(results.iter().all(|r| matches!(r, Ok(1))), "{results:?}");
    if let Database::Postgres(pool) = &t.db {
        // Rows written by one transaction share its id.
        let (transactions,): (i64,) =
            sqlx::query_as("SELECT count(DISTINCT xmin::text) FROM outbox")
                .fetch_one(pool)
                .await
                .unwrap();
        assert!(transactions < 15, "30 writes took {transactions} commits");
    }
    // Good and bad writes at once.
    let mixed: Vec<(Statement, AuditEvent)> = vec![
        (put("m0", 100), event("test.m0")),
        (put("k3", 7), event("test.lost")),
        (bump(5, 500), event("test.bumped")),
        (bump(999, 1), event("test.lost")),
        (put("m1", 101), event("test.m1")),
        (put("k4", 7), event("test.lost")),
        (put("m2", 102), event("test.m2")),
    ];
    let results = write_all(&writes, &mixed).await;
    assert!(matches!(results[0], Ok(1)), "{:?}", results[0]);
    assert!(
        matches!(&results[1], Err(e) if e.is_duplicate()),
        "{:?}",
        results[1]
    );
    assert!(matches!(results[2], Ok(1)), "{:?}", results[2]);
    assert!(
        matches!(
            results[3],
            Err(TransactError::Unmet {
                statement: 0,
                affected: 0
            })
        ),
        "{:?}",
        results[3]
    );
    assert!(matches!(results[4], Ok(1)), "{:?}", results[4]);
    assert!(
        matches!(&results[5], Err(e) if e.is_duplicate()),
        "{:?}",
        results[5]
    );
    assert!(matches!(results[6], Ok(1)), "{:?}", results[6]);
    let rows: Vec<(String, i32, String)> =
        t.db.fetch_all("SELECT k, v, note FROM kv ORDER BY v", vec![])
            .await
            .unwrap();
    assert_eq!(rows.len(), 33, "30 + 3 new keys, no duplicate");
    assert!(rows.iter().all(|(_, _, note)| note == "costs $1"));
    let value = |k: &str| rows.iter().find(|(key, _, _)| key == k).map(|(_, v, _)| *v);
    assert_eq!(
        value("k3"),
        Some(3),
        "the refused duplicate changed nothing"
    );
    assert_eq!(value("k5"), Some(500), "the bump landed");
    assert_eq!(value("m2"), Some(102));
    let landed = first
        .iter()
        .map(|(_, e)| e.action.clone())
        .chain(["test.m0", "test.bumped", "test.m1", "test.m2"].map(String::from))
        .collect();
    assert_outbox_holds(t, landed).await;
}

/// Writes with a batch form share one statement on PostgreSQL: every row
/// and event of a group lands in one commit; a write whose guard fails (its
/// parent row is closed) or whose key is taken gets its own outcome, and
/// the others of its batch still land with their events; a group that
/// also holds another statement goes the general way. SQLite runs each
/// write alone and gives the same outcomes.
async fn batched_writes_share_one_statement_and_each_keeps_its_own_outcome(t: &TestDatabase) {
    use confidant_runtime::portable::{Statement, TransactError, Value, WriteGroup};
    t.db.transact(
        vec![
            Statement::new(
                "CREATE TABLE shelf (id TEXT PRIMARY KEY, open INTEGER NOT NULL)",
                vec![],
            ),
            Statement::per_backend(
                "CREATE TABLE item (id TEXT PRIMARY KEY, shelf TEXT NOT NULL, size BIGINT, body BYTEA, at TEXT, via TEXT)",
                "CREATE TABLE item (id TEXT PRIMARY KEY, shelf TEXT NOT NULL, size BIGINT, body BLOB, at TEXT, via TEXT)",
                vec![],
            ),
            Statement::new("INSERT INTO shelf (id, open) VALUES ('a', 1)", vec![]),
            Statement::new("INSERT INTO shelf (id, open) VALUES ('shut', 0)", vec![]),
        ],
        &[],
    )
    .await
    .unwrap();
    // The single form writes 'one' in `via`, the batch form 'batch'; the
    // two write the same values otherwise.
    let put = |id: &str, shelf: &str, size: i64, body: Option<&[u8]>| {
        (
            Statement::new(
                "INSERT INTO item (id, shelf, size, body, at, via) SELECT $1, $2, $3, $4, $5, 'one' FROM shelf WHERE id = $2 AND open = 1",
                vec![
                    Value::Text(id.into()),
                    Value::Text(shelf.into()),
                    Value::BigInt(size),
                    Value::OptBytes(body.map(<[u8]>::to_vec)),
                    Value::OptText(Some(format!("{id} at $1"))),
                ],
            )
            .expecting(1)
            .batched(
                "INSERT INTO item (id, shelf, size, body, at, via) \
                 SELECT v.id, v.shelf, v.size, v.body, v.at, 'batch' \
                 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bytea[], $5::text[]) AS v(id, shelf, size, body, at) \
                 JOIN shelf s ON s.id = v.shelf AND s.open = 1 RETURNING 1",
            ),
            event(&format!("test.{id}")),
        )
    };
    let writes = WriteGroup::start(t.db.clone());
    let good: Vec<_> = (0..24)
        .map(|i| put(&format!("i{i}"), "a", i, Some(&[i as u8; 3])))
        .collect();
    let results = write_all(&writes, &good).await;
    assert!(results.iter().all(|r| matches!(r, Ok(1))), "{results:?}");
    if let Database::Postgres(pool) = &t.db {
        let (transactions,): (i64,) = sqlx::query_as("SELECT count(DISTINCT xmin::text) FROM item")
            .fetch_one(pool)
            .await
            .unwrap();
        assert!(transactions < 12, "24 writes took {transactions} commits");
        // Writers served alone take the single form; the rest go in
        // batches (how many are alone depends on timing, not on the code).
        let (batched,): (i64,) = sqlx::query_as("SELECT count(*) FROM item WHERE via = 'batch'")
            .fetch_one(pool)
            .await
            .unwrap();
        assert!(batched >= 12, "{batched} of 24 writes went in batches");
    }
    // In each rush the first two writers are served at once, each alone
    // (two groups in flight); the rest wait and go as one group: on
    // PostgreSQL a batch holding the failing write, or, in the last rush,
    // a group with a write of another statement.
    let refused = |r: &Result<u64, TransactError>| match r {
        Err(TransactError::Unmet { affected: 0, .. }) => "guard",
        Err(e) if e.is_duplicate() => "duplicate",
        Ok(1) => "landed",
        _ => "other",
    };
    for (rush, expected) in [
        (
            vec![
                put("m0", "a", 0, None),
                put("m1", "a", 1, None),
                put("m2", "shut", 2, None),
                put("m3", "a", 3, Some(b"x")),
            ],
            ["landed", "landed", "guard", "landed"],
        ),
        (
            vec![
                put("m4", "a", 4, None),
                put("m5", "a", 5, None),
                put("i3", "a", 9, None),
                put("m6", "a", 6, None),
            ],
            ["landed", "landed", "duplicate", "landed"],
        ),
        (
            vec![
                put("m7", "a", 7, None),
                put("m8", "a", 8, None),
                put("m9", "a", 9, None),
                (
                    Statement::new(
                        "INSERT INTO item (id, shelf) SELECT $1, $2 FROM shelf WHERE id = $2",
                        vec![Value::Text("m10".into()), Value::Text("a".into())],
                    )
                    .expecting(1),
                    event("test.m10"),
                ),
            ],
            ["landed", "landed", "landed", "landed"],
        ),
    ] {
        let results = write_all(&writes, &rush).await;
        let outcomes: Vec<&str> = results.iter().map(refused).collect();
        assert_eq!(outcomes, expected, "{results:?}");
    }
    type Item = (String, Option<i64>, Option<Vec<u8>>, Option<String>);
    let rows: Vec<Item> =
        t.db.fetch_all("SELECT id, size, body, at FROM item ORDER BY id", vec![])
            .await
            .unwrap();
    assert_eq!(rows.len(), 24 + 10, "nothing of the refused writes");
    let row = |id: &str| rows.iter().find(|r| r.0 == id).cloned();
    assert_eq!(
        row("i3"),
        Some((
            "i3".into(),
            Some(3),
            Some(vec![3; 3]),
            Some("i3 at $1".into())
        )),
        "the refused duplicate changed nothing; values and NULLs land as given"
    );
    assert_eq!(
        row("m0"),
        Some(("m0".into(), Some(0), None, Some("m0 at $1".into())))
    );
    assert_eq!(row("m3").and_then(|r| r.2), Some(b"x".to_vec()));
    assert_eq!(row("m2"), None, "a closed shelf takes nothing");
    let landed = good
        .iter()
        .map(|(_, e)| e.action.clone())
        .chain((0..=10).filter(|n| *n != 2).map(|n| format!("test.m{n}")))
        .collect();
    assert_outbox_holds(t, landed).await;
}

confidant_runtime::backend_tests!(COMMON_ONLY;
    batched_writes_share_one_statement_and_each_keeps_its_own_outcome,
    concurrent_writes_share_commits_and_each_keeps_its_own_outcome,
    a_statement_and_its_events_commit_together_or_not_at_all,
    pending_events_come_back_in_order_until_delivered,
    events_committed_together_keep_their_order,
    delivered_events_leave_the_outbox_and_pending_ones_stay,
    failures_are_counted_and_events_stay_pending,
    an_event_exists_only_if_its_transaction_commits,
    the_same_event_cannot_be_enqueued_twice,
    an_event_committed_late_is_not_skipped,
    malformed_event_ids_are_refused,
);

/// The server process behind a kept connection, and the connection.
async fn backend_pid(
    mut conn: confidant_runtime::storage::Kept,
) -> (i32, confidant_runtime::storage::Kept) {
    let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    (pid, conn)
}

/// A hot path's kept connection is used again as it was (the same server
/// process, no trip through the pool) while other work uses the pool, and
/// the group commit records every waiting caller's events exactly once over
/// its kept connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_are_reused_and_stay_out_of_the_pool() {
    use confidant_runtime::storage::{Backend, KeptConnections};
    let t = TestDatabase::fresh(Backend::Postgres, COMMON_ONLY).await;
    let Database::Postgres(pool) = &t.db else {
        panic!("a PostgreSQL test database");
    };
    let kept = KeptConnections::new(pool.clone(), 1);
    let (first, conn) = backend_pid(kept.take().await.unwrap()).await;
    conn.keep();
    // Meanwhile the pool hands out other connections: the kept one is not
    // among them.
    let (other,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_ne!(other, first, "a kept connection stays out of the pool");
    for _ in 0..3 {
        let (again, conn) = backend_pid(kept.take().await.unwrap()).await;
        assert_eq!(again, first, "the kept connection is used again");
        conn.keep();
    }
    // Concurrent callers of the group commit each see their own events
    // committed.
    let commit = confidant_runtime::outbox::GroupCommit::start(t.db.clone(), 100);
    let batches: Vec<Vec<AuditEvent>> = (0..20)
        .map(|i| vec![event(&format!("test.read{i}"))])
        .collect();
    let results = futures::future::join_all(batches.iter().map(|b| commit.record(b.clone()))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let pending = Outbox::new(t.db.clone()).pending(100).await.unwrap();
    let mut stored: Vec<String> = pending.into_iter().map(|p| p.event.id).collect();
    let mut sent: Vec<String> = batches.iter().flatten().map(|e| e.id.clone()).collect();
    stored.sort();
    sent.sort();
    assert_eq!(stored, sent, "every event committed exactly once");
}

/// A service's hot paths together never keep the whole pool: with four
/// connections and three hot paths each asking to keep two (the vault's
/// read events, look-ups and writes), each keeps one, and other work (the
/// outbox relay, every other statement) still gets a connection at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_paths_leave_connections_in_a_small_pool() {
    use confidant_runtime::storage::{Backend, KeptConnections, PoolOptions};
    let t = TestDatabase::fresh(Backend::Postgres, COMMON_ONLY).await;
    let small = Database::connect(
        &t.url,
        &t.schema,
        PoolOptions {
            max_connections: 4,
            acquire_timeout: std::time::Duration::from_secs(2),
        },
    )
    .await
    .unwrap();
    let Database::Postgres(pool) = &small else {
        panic!("a PostgreSQL test database");
    };
    let mut hot_paths = Vec::new();
    for _ in 0..3 {
        let hot = KeptConnections::new(pool.clone(), 2);
        // Two at once (two groups in flight), both kept if allowed.
        let (a, b) = (hot.take().await.unwrap(), hot.take().await.unwrap());
        let (first, a) = backend_pid(a).await;
        a.keep();
        b.keep();
        // The hot path lives on, keeping what it kept.
        hot_paths.push((hot, first));
    }
    let free = pool.acquire().await;
    assert!(
        free.is_ok(),
        "the pool still serves other work: {:?}",
        free.err()
    );
    // Each hot path kept one connection: its first, used again.
    for (hot, first) in &hot_paths {
        let (again, _) = backend_pid(hot.take().await.unwrap()).await;
        assert_eq!(again, *first, "each hot path keeps one connection");
    }
}
