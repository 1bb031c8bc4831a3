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
}

impl Statement {
    /// A statement; `sql` uses `$1`, `$2`… placeholders.
    pub fn new(sql: &'static str, values: Vec<Value>) -> Self {
        Self {
            sql,
            sqlite_sql: None,
            values,
            expect_rows: None,
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
        }
    }

    /// The transaction commits only if this statement affects exactly
    /// `rows` rows (a guarded UPDATE whose guard held); otherwise nothing of
    /// it is written, audit events included.
    pub fn expecting(mut self, rows: u64) -> Self {
        self.expect_rows = Some(rows);
        self
    }
}

fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
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

/// SQLSTATE division_by_zero: how the single statement below refuses a
/// guard that did not hold (rolling back all of it).
const GUARD_FAILED: &str = "22012";

/// A single statement and its audit events in one autocommitted PostgreSQL
/// statement (one round trip instead of BEGIN, statement, outbox INSERT,
/// COMMIT): the events go in through a data-modifying `WITH`, and a guard
/// that does not hold aborts the whole statement, so nothing of it is
/// written. `None` when the statement does not lend itself (or its guard
/// failed: the caller then runs the ordinary transaction, which reports
/// the rows it affected).
async fn one_round_trip(
    pool: &sqlx::PgPool,
    statement: &Statement,
    events: &[AuditEvent],
) -> Result<Option<u64>, TransactError> {
    if events.is_empty() || !returns_rows(statement.sql) {
        return Ok(None);
    }
    let (ids, payloads) = crate::outbox::outbox_columns(events)?;
    let n = statement.values.len();
    let guard = match statement.expect_rows {
        Some(_) => format!("1 / (((SELECT count(*) FROM s) = ${})::int)", n + 4),
        None => "1".to_owned(),
    };
    let sql = format!(
        "WITH s AS ({} RETURNING 1), \
         o AS (INSERT INTO outbox (event_id, payload, created_at) \
               SELECT e.id, e.payload, ${} FROM UNNEST(${}::uuid[], ${}::bytea[]) \
               WITH ORDINALITY AS e(id, payload, n) ORDER BY e.n RETURNING 1) \
         SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM o), {guard}",
        statement.sql,
        n + 3,
        n + 1,
        n + 2,
    );
    let mut q = bind_all!(
        sqlx::query_as::<_, (i64, i64, i32)>(sqlx::AssertSqlSafe(sql)),
        statement.values.clone()
    )
    .bind(ids)
    .bind(payloads)
    .bind(Utc::now());
    if let Some(rows) = statement.expect_rows {
        q = q.bind(i64::try_from(rows).unwrap_or(i64::MAX));
    }
    match q.fetch_one(pool).await {
        Ok((rows, _, _)) => Ok(Some(u64::try_from(rows).unwrap_or(0))),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(GUARD_FAILED) => Ok(None),
        Err(e) => Err(e.into()),
    }
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
                    && let Some(rows) = one_round_trip(pool, one, events).await?
                {
                    return Ok(vec![rows]);
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
