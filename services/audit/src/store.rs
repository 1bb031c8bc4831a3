//! The append-only event and checkpoint store, on PostgreSQL or SQLite.

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use confidant_runtime::storage::Database;
use uuid::Uuid;

use crate::domain::ValidEvent;
use crate::merkle::{Hash, leaf_hash};

/// Key of the PostgreSQL advisory lock that serialises appends across
/// replicas, so that log positions stay dense and ordered.
const APPEND_LOCK_KEY: i64 = 0x0c0f_1da0_0a0d_0001;

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Appended {
    /// Events stored now.
    pub appended: usize,
    /// Events that were already in the log (or repeated within the batch).
    pub duplicates: usize,
    /// The position of the first event stored now.
    pub first_index: i64,
    /// The leaf hashes of the events stored now, in order.
    pub leaves: Vec<Hash>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the log, from 0.
    pub idx: i64,
    /// Event id.
    pub event_id: Uuid,
    /// The event as received (protobuf): the bytes the log commits to.
    pub payload: Vec<u8>,
    /// The leaf hash recorded at append time.
    pub leaf_hash: Vec<u8>,
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Number of events it covers.
    pub tree_size: i64,
    /// Their root hash.
    pub root_hash: Vec<u8>,
    /// The signed note.
    pub signed_note: String,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
}

/// The audit log's storage.
#[derive(Debug)]
pub struct EventStore {
    db: Database,
    // SQLite allows one writer; PostgreSQL replicas also take an advisory
    // lock. Within a process this mutex keeps appenders from contending.
    append_lock: tokio::sync::Mutex<()>,
}

fn sqlite_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_sqlite_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map_or(DateTime::<Utc>::MIN_UTC, |t| t.with_timezone(&Utc))
}

type EventRow = (i64, Uuid, Vec<u8>, Vec<u8>);
type SqliteEventRow = (i64, String, Vec<u8>, Vec<u8>);
type PgFoundRow = (i64, Uuid, Vec<u8>, Vec<u8>, DateTime<Utc>);
type SqliteFoundRow = (i64, String, Vec<u8>, Vec<u8>, String);

fn from_sqlite_rows(rows: Vec<SqliteEventRow>) -> Vec<StoredEvent> {
    rows.into_iter()
        .filter_map(|(idx, id, payload, leaf_hash)| {
            Some(StoredEvent {
                idx,
                event_id: Uuid::parse_str(&id).ok()?,
                payload,
                leaf_hash,
            })
        })
        .collect()
}

fn from_pg_rows(rows: Vec<EventRow>) -> Vec<StoredEvent> {
    rows.into_iter()
        .map(|(idx, event_id, payload, leaf_hash)| StoredEvent {
            idx,
            event_id,
            payload,
            leaf_hash,
        })
        .collect()
}

const CHECKPOINT_COLUMNS: &str = "tree_size, root_hash, signed_note, issued_at";

impl EventStore {
    /// The store in `db` (migrated with [`crate::MIGRATIONS`]).
    pub fn new(db: Database) -> Self {
        Self {
            db,
            append_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Appends `events` in order, all or nothing, skipping ids already in the
    /// log. One multi-row INSERT per batch.
    pub async fn append(&self, events: &[ValidEvent]) -> Result<Appended, sqlx::Error> {
        Ok(self.append_where(events, None).await?.unwrap_or_default())
    }

    /// Appends `events` at position `first` exactly, in order and all or
    /// nothing, as a restore puts back the events a database lost: false
    /// (nothing written) unless the log holds exactly `first` events and
    /// none of these ids.
    pub async fn append_at(&self, first: i64, events: &[ValidEvent]) -> Result<bool, sqlx::Error> {
        Ok(self.append_where(events, Some(first)).await?.is_some())
    }

    /// The append: anywhere after the log's end, skipping ids already in
    /// it (`at` is `None`); or exactly at position `at`, all of them, or
    /// nothing (`None` returned).
    async fn append_where(
        &self,
        events: &[ValidEvent],
        at: Option<i64>,
    ) -> Result<Option<Appended>, sqlx::Error> {
        let _guard = self.append_lock.lock().await;
        let now = Utc::now();
        // The events to insert at `first`, unless `at` cannot be met.
        let placed = |existing: &HashSet<Uuid>, first: i64| match at {
            None => Some(fresh_events(events, existing)),
            Some(at) if at == first && existing.is_empty() => Some(events.iter().collect()),
            Some(_) => None,
        };
        let (fresh, first_index) = match &self.db {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(APPEND_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
                let existing: HashSet<Uuid> = sqlx::query_scalar::<_, Uuid>(
                    "SELECT event_id FROM audit_events WHERE event_id = ANY($1)",
                )
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
                let first: i64 =
                    sqlx::query_scalar("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_events")
                        .fetch_one(&mut *tx)
                        .await?;
                let Some(fresh) = placed(&existing, first) else {
                    return Ok(None);
                };
                insert_pg(&mut tx, first, &fresh, now).await?;
                tx.commit().await?;
                (fresh, first)
            }
            Database::Sqlite(pool) => {
                let mut tx = confidant_runtime::storage::begin_sqlite_write(pool).await?;
                let mut query = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "SELECT event_id FROM audit_events WHERE event_id IN (",
                );
                let mut list = query.separated(", ");
                for e in events {
                    list.push_bind(e.id.to_string());
                }
                list.push_unseparated(")");
                let existing: HashSet<Uuid> = query
                    .build_query_scalar::<String>()
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .filter_map(|s| Uuid::parse_str(s).ok())
                    .collect();
                let first: i64 =
                    sqlx::query_scalar("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_events")
                        .fetch_one(&mut *tx)
                        .await?;
                let Some(fresh) = placed(&existing, first) else {
                    return Ok(None);
                };
                insert_sqlite(&mut tx, first, &fresh, now).await?;
                tx.commit().await?;
                (fresh, first)
            }
        };
        Ok(Some(Appended {
            appended: fresh.len(),
            duplicates: events.len() - fresh.len(),
            first_index,
            leaves: fresh.iter().map(|e| leaf_hash(&e.payload)).collect(),
        }))
    }

    /// Number of events in the log.
    pub async fn count(&self) -> Result<i64, sqlx::Error> {
        match &self.db {
            Database::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
                    .fetch_one(pool)
                    .await
            }
            Database::Sqlite(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
                    .fetch_one(pool)
                    .await
            }
        }
    }

    /// Events from position `from` on, in log order, at most `limit`.
    pub async fn range(&self, from: i64, limit: i64) -> Result<Vec<StoredEvent>, sqlx::Error> {
        const SQL_PG: &str = "SELECT idx, event_id, payload, leaf_hash FROM audit_events WHERE idx >= $1 ORDER BY idx LIMIT $2";
        const SQL_LITE: &str = "SELECT idx, event_id, payload, leaf_hash FROM audit_events WHERE idx >= ?1 ORDER BY idx LIMIT ?2";
        Ok(match &self.db {
            Database::Postgres(pool) => from_pg_rows(
                sqlx::query_as(SQL_PG)
                    .bind(from)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?,
            ),
            Database::Sqlite(pool) => from_sqlite_rows(
                sqlx::query_as(SQL_LITE)
                    .bind(from)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?,
            ),
        })
    }

    /// Every change of the checkpoint signing key the log records
    /// (`audit.signing_key.rotated`), in log order. The action is written
    /// into the statement so that the partial index on it serves.
    pub async fn key_rotations(&self) -> Result<Vec<StoredEvent>, sqlx::Error> {
        const SQL: &str = "SELECT idx, event_id, payload, leaf_hash FROM audit_events WHERE action = 'audit.signing_key.rotated' ORDER BY idx";
        Ok(match &self.db {
            Database::Postgres(pool) => from_pg_rows(sqlx::query_as(SQL).fetch_all(pool).await?),
            Database::Sqlite(pool) => from_sqlite_rows(sqlx::query_as(SQL).fetch_all(pool).await?),
        })
    }

    /// The event with id `event_id`.
    pub async fn find(&self, event_id: Uuid) -> Result<Option<StoredEvent>, sqlx::Error> {
        Ok(match &self.db {
            Database::Postgres(pool) => from_pg_rows(
                sqlx::query_as("SELECT idx, event_id, payload, leaf_hash FROM audit_events WHERE event_id = $1")
                    .bind(event_id)
                    .fetch_all(pool)
                    .await?,
            ),
            Database::Sqlite(pool) => from_sqlite_rows(
                sqlx::query_as("SELECT idx, event_id, payload, leaf_hash FROM audit_events WHERE event_id = ?1")
                    .bind(event_id.to_string())
                    .fetch_all(pool)
                    .await?,
            ),
        }
        .pop())
    }

    /// Records a signed checkpoint.
    pub async fn insert_checkpoint(
        &self,
        tree_size: i64,
        root: &Hash,
        signed_note: &str,
        issued_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        match &self.db {
            Database::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (tree_size, root_hash, signed_note, issued_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(tree_size)
                .bind(root.as_slice())
                .bind(signed_note)
                .bind(issued_at)
                .execute(pool)
                .await?;
            }
            Database::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (tree_size, root_hash, signed_note, issued_at) VALUES (?1, ?2, ?3, ?4)",
                )
                .bind(tree_size)
                .bind(root.as_slice())
                .bind(signed_note)
                .bind(sqlite_time(issued_at))
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Checkpoints matching `condition` (a fixed SQL fragment) with one
    /// integer parameter, newest first, at most `limit`.
    async fn checkpoints_where(
        &self,
        condition: &str,
        param: i64,
        limit: i64,
    ) -> Result<Vec<StoredCheckpoint>, sqlx::Error> {
        Ok(match &self.db {
            Database::Postgres(pool) => {
                let sql = format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE {} ORDER BY id DESC LIMIT $2",
                    condition.replace('?', "$1")
                );
                let rows: Vec<(i64, Vec<u8>, String, DateTime<Utc>)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(param)
                        .bind(limit)
                        .fetch_all(pool)
                        .await?;
                rows.into_iter()
                    .map(
                        |(tree_size, root_hash, signed_note, issued_at)| StoredCheckpoint {
                            tree_size,
                            root_hash,
                            signed_note,
                            issued_at,
                        },
                    )
                    .collect()
            }
            Database::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE {} ORDER BY id DESC LIMIT ?2",
                    condition.replace('?', "?1")
                );
                let rows: Vec<(i64, Vec<u8>, String, String)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(param)
                        .bind(limit)
                        .fetch_all(pool)
                        .await?;
                rows.into_iter()
                    .map(
                        |(tree_size, root_hash, signed_note, issued_at)| StoredCheckpoint {
                            tree_size,
                            root_hash,
                            signed_note,
                            issued_at: parse_sqlite_time(&issued_at),
                        },
                    )
                    .collect()
            }
        })
    }

    /// The newest checkpoint.
    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, sqlx::Error> {
        Ok(self.checkpoints_where("tree_size >= ?", 0, 1).await?.pop())
    }

    /// The newest checkpoint of exactly `tree_size` events.
    pub async fn checkpoint_of_size(
        &self,
        tree_size: i64,
    ) -> Result<Option<StoredCheckpoint>, sqlx::Error> {
        Ok(self
            .checkpoints_where("tree_size = ?", tree_size, 1)
            .await?
            .pop())
    }

    /// Every checkpoint, oldest first.
    pub async fn all_checkpoints(&self) -> Result<Vec<StoredCheckpoint>, sqlx::Error> {
        let mut all = self
            .checkpoints_where("tree_size >= ?", 0, i64::MAX)
            .await?;
        all.reverse();
        Ok(all)
    }
}

/// A search of the log. `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Actor id.
    pub actor_id: Option<String>,
    /// Client concerned.
    pub client_id: Option<Uuid>,
    /// Matter concerned.
    pub matter_id: Option<Uuid>,
    /// Action name.
    pub action: Option<String>,
    /// Outcome (protobuf enum value).
    pub outcome: Option<i32>,
    /// Producing service.
    pub source_service: Option<String>,
    /// At or after.
    pub start: Option<DateTime<Utc>>,
    /// Before.
    pub end: Option<DateTime<Utc>>,
    /// Only positions below this (pagination, newest first).
    pub before_index: Option<i64>,
    /// Most rows.
    pub limit: i64,
}

enum Param {
    Text(String),
    Int(i64),
    Time(DateTime<Utc>),
}

impl EventFilter {
    fn conditions(&self) -> Vec<(&'static str, Param)> {
        let mut c = Vec::new();
        if let Some(v) = &self.actor_id {
            c.push(("actor_id = ", Param::Text(v.clone())));
        }
        if let Some(v) = self.client_id {
            c.push(("client_id = ", Param::Text(v.to_string())));
        }
        if let Some(v) = self.matter_id {
            c.push(("matter_id = ", Param::Text(v.to_string())));
        }
        if let Some(v) = &self.action {
            c.push(("action = ", Param::Text(v.clone())));
        }
        if let Some(v) = self.outcome {
            c.push(("outcome = ", Param::Int(i64::from(v))));
        }
        if let Some(v) = &self.source_service {
            c.push(("source_service = ", Param::Text(v.clone())));
        }
        if let Some(v) = self.start {
            c.push(("occurred_at >= ", Param::Time(v)));
        }
        if let Some(v) = self.end {
            c.push(("occurred_at < ", Param::Time(v)));
        }
        if let Some(v) = self.before_index {
            c.push(("idx < ", Param::Int(v)));
        }
        c
    }
}

/// A stored event with the time the log recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The event.
    pub event: StoredEvent,
    /// When it was stored.
    pub recorded_at: DateTime<Utc>,
}

impl EventFilter {
    fn postgres_query(&self, select: &str) -> sqlx::QueryBuilder<sqlx::Postgres> {
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(select);
        for (sql, param) in self.conditions() {
            q.push(" AND ").push(sql);
            match param {
                // Outcomes are SMALLINT in PostgreSQL.
                Param::Int(v) if sql.starts_with("outcome") => {
                    q.push_bind(i16::try_from(v).unwrap_or(-1))
                }
                Param::Int(v) => q.push_bind(v),
                Param::Text(v) => q.push_bind(v),
                Param::Time(v) => q.push_bind(v),
            };
        }
        q.push(" ORDER BY idx DESC LIMIT ").push_bind(self.limit);
        q
    }

    fn sqlite_query(&self, select: &str) -> sqlx::QueryBuilder<sqlx::Sqlite> {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(select);
        for (sql, param) in self.conditions() {
            q.push(" AND ").push(sql);
            match param {
                Param::Int(v) => q.push_bind(v),
                Param::Text(v) => q.push_bind(v),
                Param::Time(v) => q.push_bind(sqlite_time(v)),
            };
        }
        q.push(" ORDER BY idx DESC LIMIT ").push_bind(self.limit);
        q
    }
}

/// When an event happened and which client it concerned: what a detection
/// window needs of it, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    /// The client concerned, if any.
    pub client_id: Option<String>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

impl EventStore {
    /// Events matching `filter`, newest first.
    pub async fn search(&self, filter: &EventFilter) -> Result<Vec<Found>, sqlx::Error> {
        const SELECT: &str =
            "SELECT idx, event_id, payload, leaf_hash, recorded_at FROM audit_events WHERE 1 = 1";
        match &self.db {
            Database::Postgres(pool) => {
                let rows: Vec<PgFoundRow> = filter
                    .postgres_query(SELECT)
                    .build_query_as()
                    .fetch_all(pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(idx, event_id, payload, leaf_hash, recorded_at)| Found {
                        event: StoredEvent {
                            idx,
                            event_id,
                            payload,
                            leaf_hash,
                        },
                        recorded_at,
                    })
                    .collect())
            }
            Database::Sqlite(pool) => {
                let rows: Vec<SqliteFoundRow> = filter
                    .sqlite_query(SELECT)
                    .build_query_as()
                    .fetch_all(pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(idx, id, payload, leaf_hash, recorded_at)| {
                        Some(Found {
                            event: StoredEvent {
                                idx,
                                event_id: Uuid::parse_str(&id).ok()?,
                                payload,
                                leaf_hash,
                            },
                            recorded_at: parse_sqlite_time(&recorded_at),
                        })
                    })
                    .collect())
            }
        }
    }

    /// When the events matching `filter` happened and whom they concerned,
    /// newest first (the indexed columns only; no payload is read).
    pub async fn occurrences(&self, filter: &EventFilter) -> Result<Vec<Occurrence>, sqlx::Error> {
        const SELECT: &str = "SELECT client_id, occurred_at FROM audit_events WHERE 1 = 1";
        Ok(match &self.db {
            Database::Postgres(pool) => filter
                .postgres_query(SELECT)
                .build_query_as::<(Option<String>, DateTime<Utc>)>()
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|(client_id, occurred_at)| Occurrence {
                    client_id,
                    occurred_at,
                })
                .collect(),
            Database::Sqlite(pool) => filter
                .sqlite_query(SELECT)
                .build_query_as::<(Option<String>, String)>()
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|(client_id, at)| Occurrence {
                    client_id,
                    occurred_at: parse_sqlite_time(&at),
                })
                .collect(),
        })
    }
}

/// The events of a batch that are neither in the log nor repeated earlier in
/// the batch.
/// Inserts `events` at positions `first`, `first + 1`, … (PostgreSQL).
async fn insert_pg(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    first: i64,
    events: &[&ValidEvent],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO audit_events (idx, event_id, source_service, occurred_at, recorded_at, action, \
         actor_kind, actor_id, client_id, matter_id, outcome, payload, leaf_hash) \
         SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::timestamptz[], \
         $5::timestamptz[], $6::text[], $7::int2[], $8::text[], $9::text[], $10::text[], \
         $11::int2[], $12::bytea[], $13::bytea[])",
    )
    .bind((first..first + n).collect::<Vec<i64>>())
    .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.source_service.clone()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(vec![now; events.len()])
    .bind(events.iter().map(|e| e.action.as_str().to_owned()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.actor_kind as i16).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.actor_id.clone()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.client_id.map(|id| id.to_string())).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.matter_id.map(|id| id.to_string())).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.outcome as i16).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| leaf_hash(&e.payload).to_vec()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts `events` at positions `first`, `first + 1`, … (SQLite).
async fn insert_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    first: i64,
    events: &[&ValidEvent],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO audit_events (idx, event_id, source_service, occurred_at, recorded_at, action, \
         actor_kind, actor_id, client_id, matter_id, outcome, payload, leaf_hash) ",
    );
    let recorded = sqlite_time(now);
    let mut idx = first;
    insert.push_values(events, |mut row, e| {
        row.push_bind(idx)
            .push_bind(e.id.to_string())
            .push_bind(e.source_service.clone())
            .push_bind(sqlite_time(e.occurred_at))
            .push_bind(recorded.clone())
            .push_bind(e.action.as_str())
            .push_bind(e.actor_kind as i32)
            .push_bind(e.actor_id.clone())
            .push_bind(e.client_id.map(|id| id.to_string()))
            .push_bind(e.matter_id.map(|id| id.to_string()))
            .push_bind(e.outcome as i32)
            .push_bind(e.payload.clone())
            .push_bind(leaf_hash(&e.payload).to_vec());
        idx += 1;
    });
    insert.build().execute(&mut **tx).await?;
    Ok(())
}

fn fresh_events<'a>(events: &'a [ValidEvent], existing: &HashSet<Uuid>) -> Vec<&'a ValidEvent> {
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|e| !existing.contains(&e.id) && seen.insert(e.id))
        .collect()
}
