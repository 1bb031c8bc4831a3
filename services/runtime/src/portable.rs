//! Statements written once for both backends.
//!
//! SQL uses PostgreSQL's `$1` placeholders; for SQLite they become `?1`,
//! which SQLite reads as the same numbered parameters. Values are bound from
//! a small closed set of types that both drivers encode (UUIDs, text,
//! integers, UTC times), so one repository implementation serves both
//! backends, and a change plus its audit events commit in one transaction.

use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::AuditEvent;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::storage::Database;

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A UUID.
    Uuid(Uuid),
    /// An optional UUID.
    OptUuid(Option<Uuid>),
    /// Text.
    Text(String),
    /// Optional text.
    OptText(Option<String>),
    /// A 32-bit integer (INTEGER columns).
    Int(i32),
    /// An optional 32-bit integer.
    OptInt(Option<i32>),
    /// A UTC time.
    Time(DateTime<Utc>),
    /// An optional UTC time.
    OptTime(Option<DateTime<Utc>>),
    /// Bytes (BYTEA, BLOB).
    Bytes(Vec<u8>),
    /// Optional bytes.
    OptBytes(Option<Vec<u8>>),
    /// A 64-bit integer (BIGINT columns).
    BigInt(i64),
}

/// One statement with its values.
#[derive(Debug, Clone)]
pub struct Statement {
    sql: &'static str,
    sqlite_sql: Option<&'static str>,
    values: Vec<Value>,
    expect_rows: Option<u64>,
    batch: Option<&'static str>,
}

impl Statement {
    /// A statement; `sql` uses `$1`, `$2`… placeholders.
    pub fn new(sql: &'static str, values: Vec<Value>) -> Self {
        Self {
            sql,
            sqlite_sql: None,
            values,
            expect_rows: None,
            batch: None,
        }
    }

    /// A statement whose SQL differs by backend, e.g. a PostgreSQL row lock
    /// (`FOR SHARE`) that SQLite, whose writes are serialized, needs not.
    pub fn per_backend(postgres: &'static str, sqlite: &'static str, values: Vec<Value>) -> Self {
        Self {
            sql: postgres,
            sqlite_sql: Some(sqlite),
            values,
            expect_rows: None,
            batch: None,
        }
    }

    /// The transaction commits only if this statement affects exactly
    /// `rows` rows (a guarded UPDATE whose guard held); otherwise nothing of
    /// it is written, audit events included.
    pub fn expecting(mut self, rows: u64) -> Self {
        self.expect_rows = Some(rows);
        self
    }

    /// How PostgreSQL writes many of this statement at once: `sql` takes
    /// one array per value (`$n` holds the nth value of every write, in
    /// order; cast each, e.g. `$1::uuid[]`) and returns one row per row it
    /// writes. Concurrent writes of a statement that affects exactly one row
    /// each ([`Statement::expecting`]`(1)`) then share one statement of a
    /// fixed text instead of a `WITH` clause each, so PostgreSQL plans and
    /// starts one insert, not one per write. If it writes fewer rows than
    /// there are writes, none is kept and each runs alone.
    pub fn batched(mut self, sql: &'static str) -> Self {
        self.batch = Some(sql);
        self
    }
}

/// Values of one column across the writes of a batch.
enum Column {
    Uuid(Vec<Option<Uuid>>),
    Text(Vec<Option<String>>),
    Int(Vec<Option<i32>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Bytes(Vec<Option<Vec<u8>>>),
    BigInt(Vec<Option<i64>>),
}

impl Column {
    fn of(first: &Value) -> Self {
        match first {
            Value::Uuid(_) | Value::OptUuid(_) => Column::Uuid(Vec::new()),
            Value::Text(_) | Value::OptText(_) => Column::Text(Vec::new()),
            Value::Int(_) | Value::OptInt(_) => Column::Int(Vec::new()),
            Value::Time(_) | Value::OptTime(_) => Column::Time(Vec::new()),
            Value::Bytes(_) | Value::OptBytes(_) => Column::Bytes(Vec::new()),
            Value::BigInt(_) => Column::BigInt(Vec::new()),
        }
    }

    /// Adds `value`; false if it is of another type than the column.
    fn push(&mut self, value: &Value) -> bool {
        match (self, value) {
            (Column::Uuid(c), Value::Uuid(x)) => c.push(Some(*x)),
            (Column::Uuid(c), Value::OptUuid(x)) => c.push(*x),
            (Column::Text(c), Value::Text(x)) => c.push(Some(x.clone())),
            (Column::Text(c), Value::OptText(x)) => c.push(x.clone()),
            (Column::Int(c), Value::Int(x)) => c.push(Some(*x)),
            (Column::Int(c), Value::OptInt(x)) => c.push(*x),
            (Column::Time(c), Value::Time(x)) => c.push(Some(*x)),
            (Column::Time(c), Value::OptTime(x)) => c.push(*x),
            (Column::Bytes(c), Value::Bytes(x)) => c.push(Some(x.clone())),
            (Column::Bytes(c), Value::OptBytes(x)) => c.push(x.clone()),
            (Column::BigInt(c), Value::BigInt(x)) => c.push(Some(*x)),
            _ => return false,
        }
        true
    }
}

/// The batch form shared by every write of `writes` and their values as
/// one array per column, if they have one: two writes or more of the same
/// batch statement, each expecting one row, values of the same count and
/// types.
fn batch_of(writes: &[(&Statement, &[AuditEvent])]) -> Option<(&'static str, Vec<Column>)> {
    if writes.len() < 2 {
        return None;
    }
    let (first, _) = writes.first()?;
    let sql = first.batch?;
    let mut columns: Vec<Column> = first.values.iter().map(Column::of).collect();
    for (statement, _) in writes {
        if statement.batch != Some(sql)
            || statement.expect_rows != Some(1)
            || statement.values.len() != columns.len()
        {
            return None;
        }
        for (column, value) in columns.iter_mut().zip(&statement.values) {
            if !column.push(value) {
                return None;
            }
        }
    }
    Some((sql, columns))
}

/// SQLite's form of `sql`: `$n` placeholders become `?n` (text in quotes
/// is left as it is).
fn sqlite_sql(sql: &str) -> String {
    rewrite_placeholders(sql, '?', 0)
}

macro_rules! bind_all {
    ($query:expr, $values:expr) => {{
        let mut q = $query;
        for v in $values {
            q = match v {
                Value::Uuid(x) => q.bind(x),
                Value::OptUuid(x) => q.bind(x),
                Value::Text(x) => q.bind(x),
                Value::OptText(x) => q.bind(x),
                Value::Int(x) => q.bind(x),
                Value::OptInt(x) => q.bind(x),
                Value::Time(x) => q.bind(x),
                Value::OptTime(x) => q.bind(x),
                Value::Bytes(x) => q.bind(x),
                Value::OptBytes(x) => q.bind(x),
                Value::BigInt(x) => q.bind(x),
            };
        }
        q
    }};
}

/// A row type both drivers can decode.
pub trait PortableRow:
    for<'r> sqlx::FromRow<'r, PgRow> + for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin
{
}
impl<T> PortableRow for T where
    T: for<'r> sqlx::FromRow<'r, PgRow> + for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin
{
}

/// What a transaction can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TransactError {
    /// A statement failed.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// An audit event could not be put in the outbox.
    #[error(transparent)]
    Outbox(#[from] crate::outbox::Error),
    /// A statement's guard did not hold (it affected another number of rows
    /// than expected); the transaction was rolled back.
    #[error("statement {statement} affected {affected} rows; nothing was written")]
    Unmet {
        /// The statement's index.
        statement: usize,
        /// The rows it affected.
        affected: u64,
    },
}

impl TransactError {
    /// Whether a statement hit a unique constraint: the row exists already
    /// (a concurrent writer, a retry, a second approval by the same person).
    pub fn is_duplicate(&self) -> bool {
        matches!(self, TransactError::Sqlx(e)
            if crate::error::classify_sqlx(e) == crate::error::StorageFault::AlreadyExists)
    }
}

fn check_expected(
    statement: usize,
    expected: Option<u64>,
    affected: u64,
) -> Result<(), TransactError> {
    match expected {
        Some(n) if n != affected => Err(TransactError::Unmet {
            statement,
            affected,
        }),
        _ => Ok(()),
    }
}

/// Whether `sql` is one data-changing statement that can carry a
/// `RETURNING` clause inside a `WITH`.
fn returns_rows(sql: &str) -> bool {
    let head = sql.trim_start();
    let verb = head.get(..6).unwrap_or("").to_ascii_uppercase();
    matches!(verb.as_str(), "INSERT" | "UPDATE" | "DELETE")
        && !sql.to_ascii_uppercase().contains("RETURNING")
        && !sql.contains(';')
}

/// Whether a statement can go inside a data-modifying `WITH` (below): one
/// data-changing statement without its own `RETURNING` or dollar quoting.
fn lends_itself(statement: &Statement) -> bool {
    returns_rows(statement.sql) && !statement.sql.contains("$$")
}

/// `sql` with each placeholder `$n` moved to `$(n + offset)` (text in
/// quotes is left as it is).
fn shift_placeholders(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_owned();
    }
    rewrite_placeholders(sql, '$', offset)
}

/// `sql` with each placeholder `$n` written `{sign}{n + offset}`, text in
/// single quotes left as it is.
fn rewrite_placeholders(sql: &str, sign: char, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c != '$' || quoted {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            digits.push(d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => {
                out.push(sign);
                out.push_str(&(n + offset).to_string());
            }
            Err(_) => out.push('$'),
        }
    }
    out
}

/// SQLSTATE division_by_zero: how the single statement below refuses a
/// guard that did not hold (rolling back all of it).
const GUARD_FAILED: &str = "22012";

/// Statements and their audit events in one autocommitted PostgreSQL
/// statement (one round trip instead of BEGIN, each statement, the outbox
/// INSERT and COMMIT): each statement and the events go in through
/// data-modifying `WITH`s, and a guard that does not hold aborts the whole
/// statement, so nothing of it is written. The rows each statement
/// affected; `None` when a statement does not lend itself or a guard
/// failed (the caller then runs ordinary transactions, which report the
/// rows affected).
async fn in_one_statement<'c, E>(
    executor: E,
    writes: &[(&Statement, &[AuditEvent])],
) -> Result<Option<Vec<u64>>, TransactError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    if writes.is_empty() || !writes.iter().all(|(s, _)| lends_itself(s)) {
        return Ok(None);
    }
    let events: Vec<AuditEvent> = writes
        .iter()
        .flat_map(|(_, events)| events.iter().cloned())
        .collect();
    let (ids, payloads) = crate::outbox::outbox_columns(&events)?;
    // Either form: the writes' statements (their parameters first), the
    // outbox INSERT of the events (the three parameters after them), then
    // the rows each write affected, the events written and the guard.
    type Outcome = (Vec<i64>, i64, i32);
    let q = if let Some((batch, columns)) = batch_of(writes) {
        // One statement for every write; the guard: it wrote one row each
        // (the number of writes is the parameter after the columns).
        let n = columns.len() + 1;
        let sql = format!(
            "WITH b AS ({batch}), {} \
             SELECT ARRAY(SELECT 1::bigint FROM b), (SELECT count(*) FROM o), \
             1 / ((SELECT count(*) FROM b) = ${n})::int",
            outbox_insert(n)
        );
        let mut q = sqlx::query_as::<_, Outcome>(sqlx::AssertSqlSafe(sql));
        for column in columns {
            q = match column {
                Column::Uuid(c) => q.bind(c),
                Column::Text(c) => q.bind(c),
                Column::Int(c) => q.bind(c),
                Column::Time(c) => q.bind(c),
                Column::Bytes(c) => q.bind(c),
                Column::BigInt(c) => q.bind(c),
            };
        }
        q.bind(i64::try_from(writes.len()).unwrap_or(i64::MAX))
    } else {
        let mut sql = String::from("WITH ");
        let mut values: Vec<Value> = Vec::new();
        let (mut counts, mut guards) = (Vec::new(), Vec::new());
        for (i, (statement, _)) in writes.iter().enumerate() {
            sql.push_str(&format!(
                "s{i} AS ({} RETURNING 1), ",
                shift_placeholders(statement.sql, values.len())
            ));
            values.extend(statement.values.iter().cloned());
            counts.push(format!("(SELECT count(*) FROM s{i})"));
            if let Some(rows) = statement.expect_rows {
                guards.push(format!("(SELECT count(*) FROM s{i}) = {rows}"));
            }
        }
        let guard = if guards.is_empty() {
            "1".to_owned()
        } else {
            format!("1 / ({})::int", guards.join(" AND "))
        };
        sql.push_str(&format!(
            "{} SELECT ARRAY[{}]::bigint[], (SELECT count(*) FROM o), {guard}",
            outbox_insert(values.len()),
            counts.join(", "),
        ));
        bind_all!(
            sqlx::query_as::<_, Outcome>(sqlx::AssertSqlSafe(sql)),
            values
        )
    };
    match q
        .bind(ids)
        .bind(payloads)
        .bind(Utc::now())
        .fetch_one(executor)
        .await
    {
        Ok((rows, _, _)) => Ok(Some(
            rows.into_iter()
                .map(|r| u64::try_from(r).unwrap_or(0))
                .collect(),
        )),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(GUARD_FAILED) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The `WITH` clause `o` putting a statement's audit events in the outbox,
/// in order, after `before` parameters of the writes: their ids and
/// payloads as two arrays, then the time.
fn outbox_insert(before: usize) -> String {
    format!(
        "o AS (INSERT INTO outbox (event_id, payload, created_at) \
         SELECT e.id, e.payload, ${} FROM UNNEST(${}::uuid[], ${}::bytea[]) \
         WITH ORDINALITY AS e(id, payload, n) ORDER BY e.n RETURNING 1)",
        before + 3,
        before + 1,
        before + 2,
    )
}

impl Database {
    /// Runs a query and decodes every row.
    pub async fn fetch_all<R: PortableRow>(
        &self,
        sql: &'static str,
        values: Vec<Value>,
    ) -> Result<Vec<R>, sqlx::Error> {
        match self {
            Database::Postgres(pool) => {
                bind_all!(sqlx::query_as::<_, R>(sql), values)
                    .fetch_all(pool)
                    .await
            }
            Database::Sqlite(pool) => {
                bind_all!(
                    sqlx::query_as::<_, R>(sqlx::AssertSqlSafe(sqlite_sql(sql))),
                    values
                )
                .fetch_all(pool)
                .await
            }
        }
    }

    /// What `sql` selects for the items `ids` of one page, grouped by the
    /// item `key` names in each row: one statement for a whole page instead
    /// of one per item. `sql` takes the least and the greatest of `ids` as
    /// `$1` and `$2` (`WHERE item_id BETWEEN $1 AND $2`, ordered as each
    /// item's rows should be); rows of items in that range but not in
    /// `ids` are dropped.
    pub async fn children<R: PortableRow>(
        &self,
        sql: &'static str,
        ids: &[Uuid],
        key: impl Fn(&R) -> Uuid,
    ) -> Result<std::collections::HashMap<Uuid, Vec<R>>, sqlx::Error> {
        let mut grouped: std::collections::HashMap<Uuid, Vec<R>> =
            ids.iter().map(|id| (*id, Vec::new())).collect();
        let (Some(low), Some(high)) = (ids.iter().min(), ids.iter().max()) else {
            return Ok(grouped);
        };
        let rows: Vec<R> = self
            .fetch_all(sql, vec![Value::Uuid(*low), Value::Uuid(*high)])
            .await?;
        for row in rows {
            if let Some(group) = grouped.get_mut(&key(&row)) {
                group.push(row);
            }
        }
        Ok(grouped)
    }

    /// Runs a query and decodes the first row, if any.
    pub async fn fetch_optional<R: PortableRow>(
        &self,
        sql: &'static str,
        values: Vec<Value>,
    ) -> Result<Option<R>, sqlx::Error> {
        Ok(self.fetch_all(sql, values).await?.into_iter().next())
    }

    /// Runs `statements` and puts `events` in the outbox, all in one
    /// transaction: either everything is written or nothing. Returns the rows
    /// each statement affected.
    pub async fn transact(
        &self,
        statements: Vec<Statement>,
        events: &[AuditEvent],
    ) -> Result<Vec<u64>, TransactError> {
        let mut affected = Vec::with_capacity(statements.len());
        match self {
            Database::Postgres(pool) => {
                if let [one] = statements.as_slice()
                    && !events.is_empty()
                    && let Some(rows) = in_one_statement(pool, &[(one, events)]).await?
                {
                    return Ok(rows);
                }
                let mut tx = pool.begin().await?;
                for (i, s) in statements.into_iter().enumerate() {
                    let rows = bind_all!(sqlx::query(s.sql), s.values)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    check_expected(i, s.expect_rows, rows)?;
                    affected.push(rows);
                }
                crate::outbox::enqueue_many_postgres(&mut tx, events).await?;
                tx.commit().await?;
            }
            Database::Sqlite(pool) => {
                let mut tx = crate::storage::begin_sqlite_write(pool).await?;
                for (i, s) in statements.into_iter().enumerate() {
                    let rows = bind_all!(
                        sqlx::query(sqlx::AssertSqlSafe(sqlite_sql(
                            s.sqlite_sql.unwrap_or(s.sql)
                        ))),
                        s.values
                    )
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    check_expected(i, s.expect_rows, rows)?;
                    affected.push(rows);
                }
                for e in events {
                    crate::outbox::enqueue_sqlite(&mut tx, e).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(affected)
    }
}

/// The most a group of writes carries, in bytes of values and events. A
/// group goes to the server as one message; larger bounds measured no
/// faster here (at 16 to 32 concurrent writers the queue seldom holds more),
/// and a small bound keeps a failed group's rerun, each write alone, short.
pub const GROUP_BYTES: usize = 12 * 1024;

/// About how many bytes a write puts on the wire.
fn write_bytes(statement: &Statement, events: &[AuditEvent]) -> usize {
    use prost::Message as _;
    let values: usize = statement
        .values
        .iter()
        .map(|v| match v {
            Value::Text(x) | Value::OptText(Some(x)) => x.len() + 4,
            Value::Bytes(x) | Value::OptBytes(Some(x)) => x.len() + 4,
            _ => 20,
        })
        .sum();
    values + statement.sql.len() + events.iter().map(|e| e.encoded_len() + 24).sum::<usize>()
}

/// A write waiting for a shared transaction: its statement, its audit
/// events and where its outcome goes.
type Write = (
    (Statement, Vec<AuditEvent>),
    tokio::sync::oneshot::Sender<Result<u64, TransactError>>,
);

/// Transactions of one statement and its audit events each, from callers
/// writing at the same moment, committed together on PostgreSQL: one
/// transaction (and one flush of the log to disk) for the group instead of
/// one each, over a kept connection. Each write still succeeds or fails on
/// its own: if any write of a group fails (its guard does not hold, a
/// unique key is taken, the connection breaks), the group is rolled back
/// and every write of it runs again in a transaction of its own, so a write
/// gets exactly the outcome it would have had alone, and one that did land
/// (a commit whose answer was lost) is refused the second time by its
/// unique ids rather than written twice. A lone writer is served at once;
/// on SQLite, whose writes are serialized anyway, every write is its own
/// transaction.
#[derive(Debug, Clone)]
pub struct WriteGroup {
    db: Database,
    gather: Option<crate::gather::Gather<Write>>,
}

impl WriteGroup {
    /// A group committer on the current runtime (PostgreSQL). A group
    /// carries at most [`GROUP_BYTES`] of values and events (a larger
    /// write goes alone).
    pub fn start(db: Database) -> Self {
        let gather = db.kept_connections(2).map(|kept| {
            let db = db.clone();
            crate::gather::Gather::new(
                crate::gather::Bounds {
                    max_weight: GROUP_BYTES,
                    // A second group gathers while the first waits for its
                    // flush to disk.
                    in_flight: 2,
                },
                |((statement, events), _): &Write| write_bytes(statement, events),
                move |group: Vec<Write>| {
                    let (db, kept) = (db.clone(), kept.clone());
                    async move { write_group(&db, &kept, group).await }
                },
            )
        });
        Self { db, gather }
    }

    /// Runs `statement` and puts `events` in the outbox, in one transaction
    /// (shared with concurrent writes): either both are written or neither.
    /// Returns the rows the statement affected.
    pub async fn transact(
        &self,
        statement: Statement,
        events: Vec<AuditEvent>,
    ) -> Result<u64, TransactError> {
        let Some(gather) = &self.gather else {
            return alone(&self.db, statement, &events).await;
        };
        gather
            .ask((statement, events))
            .await
            .unwrap_or(Err(TransactError::Sqlx(sqlx::Error::WorkerCrashed)))
    }
}

/// One write in a transaction of its own.
async fn alone(
    db: &Database,
    statement: Statement,
    events: &[AuditEvent],
) -> Result<u64, TransactError> {
    Ok(db
        .transact(vec![statement], events)
        .await?
        .first()
        .copied()
        .unwrap_or(0))
}

/// Serves one group: together if every write of it succeeds, else each on
/// its own.
async fn write_group(db: &Database, kept: &crate::storage::KeptConnections, group: Vec<Write>) {
    // A lone write too goes over a kept connection (no trip through the
    // pool).
    match together(kept, &group).await {
        Ok(rows) => {
            for ((_, reply), rows) in group.into_iter().zip(rows) {
                let _ = reply.send(Ok(rows));
            }
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, writes = group.len(), "a grouped write failed; each write on its own");
        }
    }
    futures::future::join_all(
        group
            .into_iter()
            .map(|((statement, events), reply)| async move {
                let _ = reply.send(alone(db, statement, &events).await);
            }),
    )
    .await;
}

/// Every write of `group` in one statement over a kept connection; the
/// rows each statement affected. Any failure writes none of it.
async fn together(
    kept: &crate::storage::KeptConnections,
    group: &[Write],
) -> Result<Vec<u64>, TransactError> {
    let writes: Vec<(&Statement, &[AuditEvent])> = group
        .iter()
        .map(|((statement, events), _)| (statement, events.as_slice()))
        .collect();
    let mut conn = kept.take().await?;
    // `None`: a guard did not hold (or a statement does not lend itself);
    // each write then runs alone, which tells which and why.
    let affected = in_one_statement(&mut *conn, &writes)
        .await?
        .ok_or(TransactError::Unmet {
            statement: 0,
            affected: 0,
        })?;
    conn.keep();
    Ok(affected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Placeholders move past the ones before them; quoted text and a
    /// bare `$` stay as they are.
    #[test]
    fn placeholders_shift_outside_quotes() {
        assert_eq!(
            shift_placeholders("UPDATE t SET a = $1, b = '$2 x' WHERE c = $12", 3),
            "UPDATE t SET a = $4, b = '$2 x' WHERE c = $15"
        );
        assert_eq!(shift_placeholders("SELECT '$1', $1", 0), "SELECT '$1', $1");
        assert_eq!(
            shift_placeholders("SELECT 'it''s', $2, $", 1),
            "SELECT 'it''s', $3, $"
        );
        assert_eq!(
            sqlite_sql("INSERT INTO t VALUES ($1, 'costs $1', $2)"),
            "INSERT INTO t VALUES (?1, 'costs $1', ?2)"
        );
    }
}
