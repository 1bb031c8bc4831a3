//! The vault's tables on PostgreSQL or SQLite, through the portable
//! statements of the runtime: one implementation, both backends.

use chrono::{DateTime, Utc};
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Database;
use uuid::Uuid;

use crate::domain::{Category, ScopeRef};

/// What a query can fail with.
pub type StoreResult<T> = Result<T, sqlx::Error>;

/// The state of a scope key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeState {
    /// In use.
    Active,
    /// Reads refused, destruction due at `destroy_after`.
    PendingDestruction,
    /// The key is gone.
    Shredded,
}

impl ScopeState {
    /// From the stored name (unknown names read as shredded: refuse).
    pub fn parse(s: &str) -> Self {
        match s {
            "active" => Self::Active,
            "pending_destruction" => Self::PendingDestruction,
            _ => Self::Shredded,
        }
    }
}

/// A scope row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScopeRow {
    /// Id.
    pub id: Uuid,
    /// Client.
    pub client_id: Uuid,
    /// Matter.
    pub matter_id: Option<Uuid>,
    /// Category name.
    pub category: String,
    /// Scope key version.
    pub key_version: i32,
    /// KMS key that wraps it.
    pub kms_key_id: Option<String>,
    /// The wrapped key.
    pub wrapped_key: Option<Vec<u8>>,
    /// State name.
    pub state: String,
    /// Covering holds.
    pub hold_count: i32,
    /// When a pending destruction is due.
    pub destroy_after: Option<DateTime<Utc>>,
    /// The order that shredded it.
    pub shred_order: Option<String>,
    /// When it was shredded.
    pub shredded_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The audit event that recorded its shred.
    pub shred_event_id: Option<String>,
}

impl ScopeRow {
    /// Its state.
    pub fn state(&self) -> ScopeState {
        ScopeState::parse(&self.state)
    }

    /// Its client, matter and category (`None` if the stored category is
    /// unknown to this version).
    pub fn scope_ref(&self) -> Option<ScopeRef> {
        Some(ScopeRef {
            client_id: self.client_id,
            matter_id: self.matter_id,
            category: Category::parse(&self.category)?,
        })
    }
}

/// A record row joined with the state and key of its scope.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecordRow {
    /// Id.
    pub id: Uuid,
    /// Scope.
    pub scope_id: Uuid,
    /// Client.
    pub client_id: Uuid,
    /// Matter.
    pub matter_id: Option<Uuid>,
    /// Category name.
    pub category: String,
    /// Scope key version the record key is wrapped under.
    pub key_version: i32,
    /// The record key wrapped by the scope key (NULL once shredded).
    pub wrapped_key: Option<Vec<u8>>,
    /// The encrypted fields.
    pub fields: Vec<u8>,
    /// Comma-separated field names.
    pub field_names: String,
    /// When stored.
    pub created_at: DateTime<Utc>,
    /// By whom.
    pub created_by: String,
    /// When the record key was destroyed.
    pub shredded_at: Option<DateTime<Utc>>,
    /// The order that destroyed it.
    pub shred_order: Option<String>,
    /// The scope's state name.
    pub scope_state: String,
    /// The scope's KMS key.
    pub scope_kms_key_id: Option<String>,
    /// The scope's wrapped key.
    pub scope_wrapped_key: Option<Vec<u8>>,
    /// When the scope was shredded.
    pub scope_shredded_at: Option<DateTime<Utc>>,
    /// The order that shredded the scope.
    pub scope_shred_order: Option<String>,
    /// `record` or `document`.
    pub kind: String,
    /// `uploading` or `available`.
    pub upload_state: String,
    /// A document's size in bytes.
    pub doc_size: Option<i64>,
    /// The SHA-256 of a document's plaintext.
    pub doc_sha256: Option<Vec<u8>>,
    /// A document's segment count.
    pub doc_segments: Option<i32>,
    /// A document's STREAM nonce prefix.
    pub doc_nonce: Option<Vec<u8>>,
    /// 1 for an original that belongs to the client, 2 once it was
    /// returned to them, 0 otherwise.
    pub original: i32,
    /// The record's version: 1, one more with each correction.
    pub version: i32,
    /// The version this one corrected.
    pub supersedes: Option<Uuid>,
    /// The version that corrected this one.
    pub superseded_by: Option<Uuid>,
    /// When it was corrected.
    pub superseded_at: Option<DateTime<Utc>>,
}

impl RecordRow {
    /// Whether this is a document.
    pub fn is_document(&self) -> bool {
        self.kind == "document"
    }
}

macro_rules! record_select {
    ($tail:literal) => {
        concat!(
            "SELECT r.id, r.scope_id, r.client_id, r.matter_id, r.category, r.key_version, r.wrapped_key, \
             r.fields, r.field_names, r.created_at, r.created_by, r.shredded_at, r.shred_order, \
             s.state AS scope_state, s.kms_key_id AS scope_kms_key_id, s.wrapped_key AS scope_wrapped_key, \
             s.shredded_at AS scope_shredded_at, s.shred_order AS scope_shred_order, \
             r.kind, r.upload_state, r.doc_size, r.doc_sha256, r.doc_segments, r.doc_nonce, r.original, \
             r.version, r.supersedes, r.superseded_by, r.superseded_at \
             FROM vault_records r JOIN vault_scopes s ON s.id = r.scope_id ",
            $tail
        )
    };
}

macro_rules! scope_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, client_id, matter_id, category, key_version, kms_key_id, wrapped_key, state, \
             hold_count, destroy_after, shred_order, shredded_at, created_at, shred_event_id FROM vault_scopes ",
            $tail
        )
    };
}

/// Most ids [`records_by_ids`] asks for as a list of parameters.
const MOST_LISTED_IDS: usize = 256;

/// The look-up of the records with `ids` (PostgreSQL). PostgreSQL plans
/// `r.id = ANY($1)` afresh on every call (a plan for the array it is given
/// always looks cheaper than a generic one), and planning costs several
/// times what the look-up does; `r.id IN ($1, ..., $n)` keeps one generic
/// plan per n. So up to 256 ids go as such a list, its length rounded up to
/// a power of two (the last id repeated, which matches nothing more) so
/// that each connection prepares at most nine of them; more go by `ANY`.
fn records_by_ids(
    ids: &[Uuid],
) -> sqlx::query::QueryAs<'_, sqlx::Postgres, RecordRow, sqlx::postgres::PgArguments> {
    static LISTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        std::iter::successors(Some(1usize), |n| Some(n * 2))
            .take_while(|n| *n <= MOST_LISTED_IDS)
            .map(|n| {
                let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
                format!(
                    "{}WHERE r.id IN ({})",
                    record_select!(""),
                    params.join(", ")
                )
            })
            .collect()
    });
    let Some(last) = ids.last().filter(|_| ids.len() <= MOST_LISTED_IDS) else {
        return sqlx::query_as(record_select!("WHERE r.id = ANY($1)")).bind(ids);
    };
    let size = ids.len().next_power_of_two();
    let lists: &'static [String] = &LISTS;
    let mut statement = sqlx::query_as(lists[size.trailing_zeros() as usize].as_str());
    for id in ids
        .iter()
        .chain(std::iter::repeat_n(last, size - ids.len()))
    {
        statement = statement.bind(*id);
    }
    statement
}

/// Which of a client's records a listing shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordFilter {
    /// Only this matter's.
    pub matter_id: Option<Uuid>,
    /// Only this category's.
    pub category: Option<Category>,
    /// Versions that a correction superseded too.
    pub superseded: bool,
}

/// Statement: version `old` (a record of `kind`, `record` or `document`) is
/// superseded by `new`, only while it is still current, readable and
/// complete; expect 1 row, else nothing of the correction is written.
fn supersede(old: Uuid, new: Uuid, kind: &str, at: DateTime<Utc>) -> Statement {
    Statement::new(
        "UPDATE vault_records SET superseded_by = $2, superseded_at = $3 \
         WHERE id = $1 AND superseded_by IS NULL AND wrapped_key IS NOT NULL \
         AND kind = $4 AND upload_state = 'available'",
        vec![
            Value::Uuid(old),
            Value::Uuid(new),
            Value::Time(at),
            Value::Text(kind.to_owned()),
        ],
    )
    .expecting(1)
}

/// Statement: version `new` takes its place after `old` in the chain: its
/// version number and whether it is an original follow `old`.
fn follow(new: Uuid, old: Uuid) -> Statement {
    Statement::new(
        "UPDATE vault_records SET supersedes = $2, \
         version = (SELECT o.version + 1 FROM vault_records o WHERE o.id = $2), \
         original = (SELECT o.original FROM vault_records o WHERE o.id = $2) \
         WHERE id = $1",
        vec![Value::Uuid(new), Value::Uuid(old)],
    )
    .expecting(1)
}

/// Statement: record `id` is still its record's current version (none
/// corrected it); expect 1 row. On PostgreSQL it also locks the row, so a
/// correction waits for the transaction this guards.
pub fn still_current(id: Uuid) -> Statement {
    Statement::new(
        "UPDATE vault_records SET superseded_at = NULL WHERE id = $1 AND superseded_by IS NULL",
        vec![Value::Uuid(id)],
    )
    .expecting(1)
}

/// The statements of a record's correction, in one transaction with its
/// event: the corrected version is marked superseded (only while it is
/// current; else nothing is written), its next version goes in under the
/// same scope (the guarded INSERT of [`EncryptedRecord::insert`]) and
/// follows it in the chain.
pub fn correction(old: Uuid, new: &EncryptedRecord) -> Vec<Statement> {
    vec![
        supersede(old, new.id, "record", new.created_at),
        new.insert(),
        follow(new.id, old),
    ]
}

/// The statements that make the completed upload `new` the next version of
/// document `old` (with [`complete_upload`], in its transaction).
pub fn document_correction(old: Uuid, new: Uuid, at: DateTime<Utc>) -> Vec<Statement> {
    vec![supersede(old, new, "document", at), follow(new, old)]
}

/// A record to insert, already encrypted.
#[derive(Debug, Clone)]
pub struct EncryptedRecord {
    /// Id.
    pub id: Uuid,
    /// Scope.
    pub scope_id: Uuid,
    /// Client, matter, category.
    pub scope: ScopeRef,
    /// Scope key version.
    pub key_version: i32,
    /// Wrapped record key.
    pub wrapped_key: Vec<u8>,
    /// Encoded encrypted fields.
    pub fields: Vec<u8>,
    /// Field names, comma-separated.
    pub field_names: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// By whom.
    pub created_by: String,
    /// Idempotency key.
    pub request_id: Option<String>,
    /// For a document being uploaded: its STREAM nonce prefix.
    pub document_nonce: Option<Vec<u8>>,
    /// An original that belongs to the client.
    pub original: bool,
}

macro_rules! guarded_record_insert {
    ($lock:literal) => {
        concat!(
            "INSERT INTO vault_records (id, scope_id, client_id, matter_id, category, key_version, wrapped_key, \
             fields, field_names, created_at, created_by, request_id, kind, upload_state, doc_nonce, original) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16 \
             FROM vault_scopes WHERE id = $2 AND state = 'active' AND key_version = $6",
            $lock
        )
    };
}

/// The guarded INSERT of many records at once (PostgreSQL): one array per
/// value of [`EncryptedRecord::insert`], in its order; a record lands only
/// while its scope is active at its key version, the scope row share-locked
/// as in the single form.
const BATCHED_RECORD_INSERT: &str = "INSERT INTO vault_records (id, scope_id, client_id, matter_id, category, key_version, wrapped_key, \
     fields, field_names, created_at, created_by, request_id, kind, upload_state, doc_nonce, original) \
     SELECT v.id, v.scope_id, v.client_id, v.matter_id, v.category, v.key_version, v.wrapped_key, \
     v.fields, v.field_names, v.created_at, v.created_by, v.request_id, v.kind, v.upload_state, v.doc_nonce, v.original \
     FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::int[], $7::bytea[], \
     $8::bytea[], $9::text[], $10::timestamptz[], $11::text[], $12::text[], $13::text[], $14::text[], $15::bytea[], $16::int[]) \
     AS v(id, scope_id, client_id, matter_id, category, key_version, wrapped_key, \
     fields, field_names, created_at, created_by, request_id, kind, upload_state, doc_nonce, original) \
     JOIN vault_scopes s ON s.id = v.scope_id AND s.state = 'active' AND s.key_version = v.key_version \
     FOR SHARE OF s \
     RETURNING 1";

impl EncryptedRecord {
    /// The INSERT, only while its scope is active (on PostgreSQL the scope
    /// row is share-locked, so a concurrent shred waits for this write and
    /// a write never lands in a scope shredded under it). Expect 1 row.
    pub fn insert(&self) -> Statement {
        Statement::per_backend(
            guarded_record_insert!(" FOR SHARE"),
            guarded_record_insert!(""),
            self.values(),
        )
        .expecting(1)
        .batched(BATCHED_RECORD_INSERT)
    }

    fn values(&self) -> Vec<Value> {
        vec![
            Value::Uuid(self.id),
            Value::Uuid(self.scope_id),
            Value::Uuid(self.scope.client_id),
            Value::OptUuid(self.scope.matter_id),
            Value::Text(self.scope.category.as_str().to_owned()),
            Value::Int(self.key_version),
            Value::Bytes(self.wrapped_key.clone()),
            Value::Bytes(self.fields.clone()),
            Value::Text(self.field_names.clone()),
            Value::Time(self.created_at),
            Value::Text(self.created_by.clone()),
            Value::OptText(self.request_id.clone()),
            Value::Text(
                if self.document_nonce.is_some() {
                    "document"
                } else {
                    "record"
                }
                .to_owned(),
            ),
            Value::Text(
                if self.document_nonce.is_some() {
                    "uploading"
                } else {
                    "available"
                }
                .to_owned(),
            ),
            Value::OptBytes(self.document_nonce.clone()),
            Value::Int(i32::from(self.original)),
        ]
    }
}

/// The vault's storage.
#[derive(Debug, Clone)]
pub struct VaultStore {
    db: Database,
}

impl VaultStore {
    /// Over `db` (migrated).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The scope of a (client, matter, category), if it exists.
    pub async fn scope_by_ref(&self, scope: &ScopeRef) -> StoreResult<Option<ScopeRow>> {
        self.db
            .fetch_optional(
                scope_select!("WHERE scope_name = $1 AND state <> 'shredded'"),
                vec![Value::Text(scope.name())],
            )
            .await
    }

    /// A scope by id.
    pub async fn scope(&self, id: Uuid) -> StoreResult<Option<ScopeRow>> {
        self.db
            .fetch_optional(scope_select!("WHERE id = $1"), vec![Value::Uuid(id)])
            .await
    }

    /// The statement that creates a scope unless one of the same name
    /// exists (replicas race; the loser reads the winner's row).
    pub fn insert_scope(
        id: Uuid,
        scope: &ScopeRef,
        key_version: i32,
        kms_key_id: &str,
        wrapped: &[u8],
        now: DateTime<Utc>,
    ) -> Statement {
        Statement::new(
            "INSERT INTO vault_scopes (id, scope_name, client_id, matter_id, category, key_version, kms_key_id, \
             wrapped_key, state, hold_count, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'active', \
             (SELECT COUNT(*) FROM vault_holds h WHERE h.released_at IS NULL AND h.client_id = $3 AND h.scoped = 0 \
              AND (h.matter_id IS NULL OR h.matter_id = $4) AND (h.category IS NULL OR h.category = $5)), $9) \
             ON CONFLICT (scope_name) WHERE state <> 'shredded' DO NOTHING",
            vec![
                Value::Uuid(id),
                Value::Text(scope.name()),
                Value::Uuid(scope.client_id),
                Value::OptUuid(scope.matter_id),
                Value::Text(scope.category.as_str().to_owned()),
                Value::Int(key_version),
                Value::Text(kms_key_id.to_owned()),
                Value::Bytes(wrapped.to_vec()),
                Value::Time(now),
            ],
        )
    }

    /// A record with its scope's state and key.
    pub async fn record(&self, id: Uuid) -> StoreResult<Option<RecordRow>> {
        self.db
            .fetch_optional(record_select!("WHERE r.id = $1"), vec![Value::Uuid(id)])
            .await
    }

    /// The records with these ids, in no particular order; ids that match
    /// nothing are left out. One statement on PostgreSQL however many ids
    /// there are, over a connection of `kept` when given (kept again if the
    /// statement succeeds), else from the pool; on SQLite, whose statements
    /// run in this process, one look-up each.
    pub async fn records(
        &self,
        ids: &[Uuid],
        kept: Option<&confidant_runtime::storage::KeptConnections>,
    ) -> StoreResult<Vec<RecordRow>> {
        match (&self.db, kept) {
            (Database::Postgres(_), Some(kept)) => {
                let mut conn = kept.take().await?;
                let rows = records_by_ids(ids).fetch_all(&mut *conn).await?;
                conn.keep();
                Ok(rows)
            }
            (Database::Postgres(pool), None) => records_by_ids(ids).fetch_all(pool).await,
            (Database::Sqlite(_), _) => {
                let mut rows = Vec::with_capacity(ids.len());
                for id in ids {
                    rows.extend(self.record(*id).await?);
                }
                Ok(rows)
            }
        }
    }

    /// The record a caller stored with `request_id`, if any.
    pub async fn record_by_request(
        &self,
        created_by: &str,
        request_id: &str,
    ) -> StoreResult<Option<RecordRow>> {
        self.db
            .fetch_optional(
                record_select!(
                    "WHERE r.created_by = $1 AND r.request_id = $2 AND r.upload_state = 'available'"
                ),
                vec![
                    Value::Text(created_by.to_owned()),
                    Value::Text(request_id.to_owned()),
                ],
            )
            .await
    }

    /// A page of a client's records, newest first: the current versions,
    /// or every version with `superseded`.
    pub async fn list_records(
        &self,
        client_id: Uuid,
        filter: &RecordFilter,
        before: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<RecordRow>> {
        self.db
            .fetch_all(
                record_select!(
                    "WHERE r.client_id = $1 AND r.upload_state = 'available' AND ($2 IS NULL OR r.matter_id = $2) \
                     AND ($3 IS NULL OR r.category = $3) AND ($4 IS NULL OR r.id < $4) \
                     AND ($6 = 1 OR r.superseded_by IS NULL) \
                     ORDER BY r.id DESC LIMIT $5"
                ),
                vec![
                    Value::Uuid(client_id),
                    Value::OptUuid(filter.matter_id),
                    Value::OptText(filter.category.map(|c| c.as_str().to_owned())),
                    Value::OptUuid(before),
                    Value::BigInt(limit),
                    Value::Int(i32::from(filter.superseded)),
                ],
            )
            .await
    }

    /// A page of scopes, oldest first.
    pub async fn list_scopes(
        &self,
        client_id: Option<Uuid>,
        matter_id: Option<Uuid>,
        state: Option<&'static str>,
        after: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<ScopeRow>> {
        self.db
            .fetch_all(
                scope_select!(
                    "WHERE ($1 IS NULL OR client_id = $1) AND ($2 IS NULL OR matter_id = $2) \
                     AND ($3 IS NULL OR state = $3) AND ($4 IS NULL OR id > $4) \
                     ORDER BY id LIMIT $5"
                ),
                vec![
                    Value::OptUuid(client_id),
                    Value::OptUuid(matter_id),
                    Value::OptText(state.map(str::to_owned)),
                    Value::OptUuid(after),
                    Value::BigInt(limit),
                ],
            )
            .await
    }

    /// The KMS keys that wrap live scope keys, with how many each.
    pub async fn kms_key_usage(&self) -> StoreResult<Vec<(String, i64)>> {
        self.db
            .fetch_all(
                "SELECT kms_key_id, COUNT(*) FROM vault_scopes \
                 WHERE state <> 'shredded' AND kms_key_id IS NOT NULL GROUP BY kms_key_id ORDER BY kms_key_id",
                vec![],
            )
            .await
    }

    /// Originals that belong to the client in a scope.
    pub async fn original_count(&self, scope_id: Uuid) -> StoreResult<i64> {
        let row: Option<(i64,)> = self
            .db
            .fetch_optional(
                "SELECT COUNT(*) FROM vault_records WHERE scope_id = $1 AND original = 1",
                vec![Value::Uuid(scope_id)],
            )
            .await?;
        Ok(row.map_or(0, |r| r.0))
    }

    /// The originals a scope holds that belong to the client (ids and when
    /// each was stored).
    pub async fn originals(&self, scope_id: Uuid) -> StoreResult<Vec<(Uuid, DateTime<Utc>)>> {
        self.db
            .fetch_all(
                "SELECT id, created_at FROM vault_records WHERE scope_id = $1 AND original = 1 ORDER BY id",
                vec![Value::Uuid(scope_id)],
            )
            .await
    }

    /// Records in a scope.
    pub async fn record_count(&self, scope_id: Uuid) -> StoreResult<i64> {
        let row: Option<(i64,)> = self
            .db
            .fetch_optional(
                "SELECT COUNT(*) FROM vault_records WHERE scope_id = $1",
                vec![Value::Uuid(scope_id)],
            )
            .await?;
        Ok(row.map_or(0, |r| r.0))
    }

    /// The live holds that cover a scope.
    pub async fn holds_covering(&self, scope: &ScopeRow) -> StoreResult<Vec<Uuid>> {
        let rows: Vec<(Uuid,)> = self
            .db
            .fetch_all(
                "SELECT hold_id FROM vault_holds h WHERE released_at IS NULL AND client_id = $1 AND ( \
                   (scoped = 0 AND (matter_id IS NULL OR matter_id = $2) AND (category IS NULL OR category = $3)) \
                   OR (scoped = 1 AND EXISTS (SELECT 1 FROM vault_hold_scopes hs \
                     WHERE hs.hold_id = h.hold_id AND hs.scope_id = $4))) \
                 ORDER BY hold_id",
                vec![
                    Value::Uuid(scope.client_id),
                    Value::OptUuid(scope.matter_id),
                    Value::Text(scope.category.clone()),
                    Value::Uuid(scope.id),
                ],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Scopes whose pending destruction is due.
    pub async fn due_destructions(&self, now: DateTime<Utc>) -> StoreResult<Vec<ScopeRow>> {
        let pending: Vec<ScopeRow> = self
            .db
            .fetch_all(
                // Earliest due first, so that those due are never held up
                // behind a thousand that are not (SQLite's times are text,
                // RFC 3339 in UTC as sqlx writes them: they sort in time
                // order).
                scope_select!(
                    "WHERE state = 'pending_destruction' ORDER BY destroy_after, id LIMIT 1000"
                ),
                vec![],
            )
            .await?;
        // Compared here rather than in SQL: SQLite stores times as text.
        Ok(pending
            .into_iter()
            .filter(|s| s.destroy_after.is_some_and(|d| d <= now))
            .collect())
    }

    /// Live scope keys wrapped under a KMS key other than `active` (a key
    /// id or ARN; a stored ARN ending in `/<active>` is the same key), in
    /// id order, after scope `after` if given.
    pub async fn scopes_to_rewrap(
        &self,
        active: &str,
        after: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<ScopeRow>> {
        self.db
            .fetch_all(
                scope_select!(
                    "WHERE state <> 'shredded' AND kms_key_id <> $1 AND kms_key_id NOT LIKE $2 \
                     AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4"
                ),
                vec![
                    Value::Text(active.to_owned()),
                    Value::Text(format!("%/{active}")),
                    Value::OptUuid(after),
                    Value::BigInt(limit),
                ],
            )
            .await
    }

    /// How many live scope keys are wrapped under another KMS key.
    pub async fn rewrap_remaining(&self, active: &str) -> StoreResult<i64> {
        let row: Option<(i64,)> = self
            .db
            .fetch_optional(
                "SELECT COUNT(*) FROM vault_scopes WHERE state <> 'shredded' AND kms_key_id <> $1 \
                 AND kms_key_id NOT LIKE $2",
                vec![
                    Value::Text(active.to_owned()),
                    Value::Text(format!("%/{active}")),
                ],
            )
            .await?;
        Ok(row.map_or(0, |r| r.0))
    }

    /// The masking rules, of `role` only if given: (role, category, field
    /// type, mask), in that order.
    pub async fn masking_rules_of(
        &self,
        role: Option<&str>,
    ) -> StoreResult<Vec<(String, String, String, String)>> {
        self.db
            .fetch_all(
                "SELECT role, category, field_type, mask FROM vault_masking_rules \
                 WHERE $1 IS NULL OR role = $1 ORDER BY role, category, field_type",
                vec![Value::OptText(role.map(str::to_owned))],
            )
            .await
    }
}

/// Statements: `role`'s masking rules become `rules`.
pub fn replace_masking_rules(role: &str, rules: &[crate::masking::Rule]) -> Vec<Statement> {
    let mut statements = vec![Statement::new(
        "DELETE FROM vault_masking_rules WHERE role = $1",
        vec![Value::Text(role.to_owned())],
    )];
    statements.extend(rules.iter().map(|r| {
        Statement::new(
            "INSERT INTO vault_masking_rules (role, category, field_type, mask) VALUES ($1, $2, $3, $4)",
            vec![
                Value::Text(role.to_owned()),
                Value::Text(r.category.clone()),
                Value::Text(r.field_type.clone()),
                Value::Text(r.mask.as_str().to_owned()),
            ],
        )
    }));
    statements
}

/// Statement: a scope's originals were returned to the client (2: returned).
pub fn release_originals(scope_id: Uuid) -> Statement {
    Statement::new(
        "UPDATE vault_records SET original = 2 WHERE scope_id = $1 AND original = 1",
        vec![Value::Uuid(scope_id)],
    )
}

/// Statement: this original was returned to the client, as the audit log
/// records (a return made again on a restored database).
pub fn release_original(record_id: Uuid) -> Statement {
    Statement::new(
        "UPDATE vault_records SET original = 2 WHERE id = $1 AND original = 1",
        vec![Value::Uuid(record_id)],
    )
}

/// SQL: a live hold `h` covers the scope row `vault_scopes` — by client,
/// matter and category, or (a scoped hold) by naming it.
macro_rules! hold_covers_scope {
    () => {
        "h.released_at IS NULL AND h.client_id = vault_scopes.client_id AND ( \
           (h.scoped = 0 AND (h.matter_id IS NULL OR h.matter_id = vault_scopes.matter_id) \
             AND (h.category IS NULL OR h.category = vault_scopes.category)) \
           OR (h.scoped = 1 AND EXISTS (SELECT 1 FROM vault_hold_scopes hs \
             WHERE hs.hold_id = h.hold_id AND hs.scope_id = vault_scopes.id)))"
    };
}

/// SQL: no legal hold covers the scope (`vault_scopes`): none counted on
/// its row, and none in force that names it or its client, matter and
/// category (a hold placed while the scope was being created).
macro_rules! not_held {
    () => {
        concat!(
            "vault_scopes.hold_count = 0 AND NOT EXISTS (SELECT 1 FROM vault_holds h WHERE ",
            hold_covers_scope!(),
            ")"
        )
    };
}

/// SQL: the scope (`vault_scopes`) holds no originals (records that go
/// back to the client rather than be shredded).
macro_rules! holds_no_originals {
    () => {
        "NOT EXISTS (SELECT 1 FROM vault_records r WHERE r.scope_id = vault_scopes.id AND r.original = 1)"
    };
}

/// Statement, first in a transaction that shreds a scope or schedules its
/// destruction: waits for the record writes under way in the scope (on
/// PostgreSQL the scope row locked `FOR UPDATE`, which their share locks
/// hold off) and makes later ones wait for this transaction. The next
/// statement, under a snapshot taken after that, then sees every record
/// those writes stored, an original among them; a write that waited finds
/// the scope changed and stores nothing. SQLite runs one write at a time.
fn settle_writes_to_scope(id: Uuid) -> Statement {
    Statement::per_backend(
        "SELECT 1 FROM vault_scopes WHERE id = $1 FOR UPDATE",
        "SELECT 1 FROM vault_scopes WHERE id = $1",
        vec![Value::Uuid(id)],
    )
}

/// SQL: the scope `$1` becomes shredded (key gone, tombstone: when `$2`,
/// by which order `$3`, which audit event `$4`) unless it is already, and
/// if `$guard` (more conditions) holds.
macro_rules! shred_scope_sql {
    ($guard:expr) => {
        concat!(
            "UPDATE vault_scopes SET state = 'shredded', wrapped_key = NULL, kms_key_id = NULL, \
             shredded_at = $2, shred_order = $3, destroy_after = NULL, shred_event_id = $4 \
             WHERE id = $1 AND state <> 'shredded'",
            $guard
        )
    };
}

/// Statements: the scope shred `sql` ([`shred_scope_sql`]), once the writes
/// under way in the scope are settled; the transaction is unmet unless it
/// changes the scope.
fn scope_shred(
    sql: &'static str,
    id: Uuid,
    order: &str,
    at: DateTime<Utc>,
    event_id: &str,
) -> Vec<Statement> {
    vec![
        settle_writes_to_scope(id),
        Statement::new(
            sql,
            vec![
                Value::Uuid(id),
                Value::Time(at),
                Value::Text(order.to_owned()),
                Value::Text(event_id.to_owned()),
            ],
        )
        .expecting(1),
    ]
}

/// Statements: a scope becomes shredded (key gone) if no hold covers it
/// and it holds no originals, once the writes under way in it are settled;
/// the transaction is unmet otherwise. Constant time: one row, whatever
/// the number of records.
pub fn shred_scope(id: Uuid, order: &str, now: DateTime<Utc>, event_id: &str) -> Vec<Statement> {
    let sql = shred_scope_sql!(concat!(
        " AND ",
        not_held!(),
        " AND ",
        holds_no_originals!()
    ));
    scope_shred(sql, id, order, now, event_id)
}

/// Statements: a scope's destruction that the audit log records is made
/// again on a database restored from a backup taken before it: the key goes
/// whatever holds or originals the restored rows show, since the logged
/// shred proves that none stopped it then. Unmet when the scope is already
/// shredded.
pub fn reapply_scope_shred(
    id: Uuid,
    order: &str,
    at: DateTime<Utc>,
    event_id: &str,
) -> Vec<Statement> {
    scope_shred(shred_scope_sql!(""), id, order, at, event_id)
}

/// SQL: the scope `$1` becomes pending destruction until `$2`, by order
/// `$3`, where `$guard` (its conditions) holds.
macro_rules! schedule_sql {
    ($guard:expr) => {
        concat!(
            "UPDATE vault_scopes SET state = 'pending_destruction', destroy_after = $2, shred_order = $3 \
             WHERE id = $1 AND ",
            $guard
        )
    };
}

/// Statements: the scheduling `sql` ([`schedule_sql`]), once the writes
/// under way in the scope are settled; the transaction is unmet unless it
/// changes the scope.
fn scope_schedule(sql: &'static str, id: Uuid, order: &str, due: DateTime<Utc>) -> Vec<Statement> {
    vec![
        settle_writes_to_scope(id),
        Statement::new(
            sql,
            vec![
                Value::Uuid(id),
                Value::Time(due),
                Value::Text(order.to_owned()),
            ],
        )
        .expecting(1),
    ]
}

/// Statements: a scope becomes pending destruction if no hold covers it
/// and it holds no originals, once the writes under way in it are settled;
/// the transaction is unmet otherwise.
pub fn schedule_destruction(id: Uuid, order: &str, due: DateTime<Utc>) -> Vec<Statement> {
    let sql = schedule_sql!(concat!(
        "state = 'active' AND ",
        not_held!(),
        " AND ",
        holds_no_originals!()
    ));
    scope_schedule(sql, id, order, due)
}

/// Statements: a scope's pending destruction that the audit log records
/// (by order `order`, due at `due`) is made again on a database restored
/// from a backup taken before it, whatever holds or originals the restored
/// rows show (the logged scheduling proves none stopped it then; a
/// suspension by a hold since is in the log too, and is replayed after
/// it). Unmet when the scope is shredded.
pub fn reapply_schedule(id: Uuid, order: &str, due: DateTime<Utc>) -> Vec<Statement> {
    scope_schedule(schedule_sql!("state <> 'shredded'"), id, order, due)
}

/// Statement: a pending destruction is cancelled.
pub fn cancel_destruction(id: Uuid) -> Statement {
    Statement::new(
        "UPDATE vault_scopes SET state = 'active', destroy_after = NULL, shred_order = NULL \
         WHERE id = $1 AND state = 'pending_destruction'",
        vec![Value::Uuid(id)],
    )
}

/// SQL: the key of record `$1` is destroyed (tombstone: when `$2`, by
/// which order `$3`) unless it is already, and if `$guard` (more
/// conditions) holds.
macro_rules! shred_record_sql {
    ($guard:expr) => {
        concat!(
            "UPDATE vault_records SET wrapped_key = NULL, shredded_at = $2, shred_order = $3 \
             WHERE id = $1 AND wrapped_key IS NOT NULL",
            $guard
        )
    };
}

/// Statement: the record shred `sql` ([`shred_record_sql`]).
fn record_shred(sql: &'static str, id: Uuid, order: &str, at: DateTime<Utc>) -> Statement {
    Statement::new(
        sql,
        vec![
            Value::Uuid(id),
            Value::Time(at),
            Value::Text(order.to_owned()),
        ],
    )
}

/// Statement: one record key is destroyed, unless the record is an original
/// or a hold covers its scope.
pub fn shred_record(id: Uuid, order: &str, now: DateTime<Utc>) -> Statement {
    let sql = shred_record_sql!(concat!(
        " AND original = 0 AND EXISTS (SELECT 1 FROM vault_scopes \
         WHERE vault_scopes.id = vault_records.scope_id AND ",
        not_held!(),
        ")"
    ));
    record_shred(sql, id, order, now)
}

/// Statement: a record's destruction that the audit log records is made
/// again on a database restored from a backup taken before it (see
/// [`reapply_scope_shred`]). Unmet when the record's key is already gone.
pub fn reapply_record_shred(id: Uuid, order: &str, at: DateTime<Utc>) -> Statement {
    record_shred(shred_record_sql!(""), id, order, at).expecting(1)
}

/// What a hold covers: scopes of a client, narrowed by matter and
/// category, or an explicit set of the client's scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldCover {
    /// The client's scopes, of this matter and category if given.
    Filter(Option<Uuid>, Option<Category>),
    /// Exactly these scopes (sorted, without repeats).
    Scopes(Vec<Uuid>),
}

/// Statements: a hold is recorded (idempotent), with its scopes if it
/// names them.
pub fn insert_hold(
    hold_id: Uuid,
    client_id: Uuid,
    cover: &HoldCover,
    by: &str,
    now: DateTime<Utc>,
) -> Vec<Statement> {
    let (matter_id, category, scopes) = match cover {
        HoldCover::Filter(m, c) => (*m, *c, &[][..]),
        HoldCover::Scopes(s) => (None, None, &s[..]),
    };
    let mut statements = vec![Statement::new(
        "INSERT INTO vault_holds (hold_id, client_id, matter_id, category, placed_at, placed_by, scoped) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (hold_id) DO NOTHING",
        vec![
            Value::Uuid(hold_id),
            Value::Uuid(client_id),
            Value::OptUuid(matter_id),
            Value::OptText(category.map(|c| c.as_str().to_owned())),
            Value::Time(now),
            Value::Text(by.to_owned()),
            Value::Int(i32::from(matches!(cover, HoldCover::Scopes(_)))),
        ],
    )];
    statements.extend(scopes.iter().map(|scope| {
        Statement::new(
            "INSERT INTO vault_hold_scopes (hold_id, scope_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            vec![Value::Uuid(hold_id), Value::Uuid(*scope)],
        )
    }));
    statements
}

/// Statement: a hold is released.
pub fn release_hold(hold_id: Uuid, now: DateTime<Utc>) -> Statement {
    Statement::new(
        "UPDATE vault_holds SET released_at = $2 WHERE hold_id = $1 AND released_at IS NULL",
        vec![Value::Uuid(hold_id), Value::Time(now)],
    )
}

/// Statement: a pending destruction that a new hold covers is suspended.
pub fn suspend_destructions(client_id: Uuid) -> Statement {
    Statement::new(
        "UPDATE vault_scopes SET state = 'active', destroy_after = NULL, shred_order = NULL \
         WHERE client_id = $1 AND state = 'pending_destruction' AND hold_count > 0",
        vec![Value::Uuid(client_id)],
    )
}

/// Statement: the hold counts of a client's scopes are recomputed (after a
/// hold is placed or released). Locks the rows, so a concurrent shred waits
/// and then sees the new count.
pub fn recount_holds(client_id: Uuid) -> Statement {
    Statement::new(
        concat!(
            "UPDATE vault_scopes SET hold_count = (SELECT COUNT(*) FROM vault_holds h WHERE ",
            hold_covers_scope!(),
            ") WHERE client_id = $1"
        ),
        vec![Value::Uuid(client_id)],
    )
}

/// Statement: a scope key is rewrapped (only if it is still the one read).
pub fn rewrap_scope(id: Uuid, old_kms_key: &str, new_kms_key: &str, wrapped: &[u8]) -> Statement {
    Statement::new(
        "UPDATE vault_scopes SET kms_key_id = $3, wrapped_key = $4 \
         WHERE id = $1 AND kms_key_id = $2 AND state <> 'shredded'",
        vec![
            Value::Uuid(id),
            Value::Text(old_kms_key.to_owned()),
            Value::Text(new_kms_key.to_owned()),
            Value::Bytes(wrapped.to_vec()),
        ],
    )
}

/// A hold row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HoldRow {
    /// Id.
    pub hold_id: Uuid,
    /// Client.
    pub client_id: Uuid,
    /// Matter.
    pub matter_id: Option<Uuid>,
    /// Category.
    pub category: Option<String>,
    /// When released.
    pub released_at: Option<DateTime<Utc>>,
    /// 1 when it names its scopes.
    pub scoped: i32,
}

impl VaultStore {
    /// A hold.
    pub async fn hold(&self, id: Uuid) -> StoreResult<Option<HoldRow>> {
        self.db
            .fetch_optional(
                "SELECT hold_id, client_id, matter_id, category, released_at, scoped FROM vault_holds WHERE hold_id = $1",
                vec![Value::Uuid(id)],
            )
            .await
    }

    /// The ids of the scopes a hold covers.
    pub async fn scopes_covered(&self, hold: &HoldRow) -> StoreResult<Vec<Uuid>> {
        if hold.scoped != 0 {
            let rows: Vec<(Uuid,)> = self
                .db
                .fetch_all(
                    "SELECT scope_id FROM vault_hold_scopes WHERE hold_id = $1 ORDER BY scope_id",
                    vec![Value::Uuid(hold.hold_id)],
                )
                .await?;
            return Ok(rows.into_iter().map(|r| r.0).collect());
        }
        let rows: Vec<(Uuid,)> = self
            .db
            .fetch_all(
                "SELECT id FROM vault_scopes WHERE client_id = $1 AND ($2 IS NULL OR matter_id = $2) \
                 AND ($3 IS NULL OR category = $3) ORDER BY id",
                vec![
                    Value::Uuid(hold.client_id),
                    Value::OptUuid(hold.matter_id),
                    Value::OptText(hold.category.clone()),
                ],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

/// Statement: one encrypted document segment.
pub fn insert_segment(record_id: Uuid, seq: i32, ciphertext: Vec<u8>) -> Statement {
    Statement::new(
        "INSERT INTO vault_document_segments (record_id, seq, ciphertext) VALUES ($1, $2, $3)",
        vec![
            Value::Uuid(record_id),
            Value::Int(seq),
            Value::Bytes(ciphertext),
        ],
    )
}

/// Statement: an uploaded document becomes visible, with its size, digest
/// and segment count.
pub fn complete_upload(record_id: Uuid, size: i64, sha256: Vec<u8>, segments: i32) -> Statement {
    macro_rules! complete {
        ($lock:literal) => {
            concat!(
                "UPDATE vault_records SET upload_state = 'available', doc_size = $2, doc_sha256 = $3, doc_segments = $4 \
                 WHERE id = $1 AND upload_state = 'uploading' AND EXISTS (SELECT 1 FROM vault_scopes s \
                 WHERE s.id = vault_records.scope_id AND s.state = 'active'",
                $lock,
                ")"
            )
        };
    }
    Statement::per_backend(
        complete!(" FOR SHARE"),
        complete!(""),
        vec![
            Value::Uuid(record_id),
            Value::BigInt(size),
            Value::Bytes(sha256),
            Value::Int(segments),
        ],
    )
}

/// Statements: an unfinished upload is removed, segments first.
pub fn discard_upload(record_id: Uuid) -> Vec<Statement> {
    vec![
        Statement::new(
            "DELETE FROM vault_document_segments WHERE record_id = $1",
            vec![Value::Uuid(record_id)],
        ),
        Statement::new(
            "DELETE FROM vault_records WHERE id = $1 AND upload_state = 'uploading'",
            vec![Value::Uuid(record_id)],
        ),
    ]
}

impl VaultStore {
    /// Up to `limit` segments of a document from `from` on, in order.
    pub async fn segments(
        &self,
        record_id: Uuid,
        from: i32,
        limit: i64,
    ) -> StoreResult<Vec<(i32, Vec<u8>)>> {
        self.db
            .fetch_all(
                "SELECT seq, ciphertext FROM vault_document_segments WHERE record_id = $1 AND seq >= $2 \
                 ORDER BY seq LIMIT $3",
                vec![Value::Uuid(record_id), Value::Int(from), Value::BigInt(limit)],
            )
            .await
    }

    /// Uploads started before `before` and never completed (the process
    /// that received them stopped).
    pub async fn abandoned_uploads(&self, before: DateTime<Utc>) -> StoreResult<Vec<Uuid>> {
        let rows: Vec<(Uuid, DateTime<Utc>)> = self
            .db
            .fetch_all(
                "SELECT id, created_at FROM vault_records WHERE upload_state = 'uploading' ORDER BY id LIMIT 1000",
                vec![],
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, at)| *at < before)
            .map(|(id, _)| id)
            .collect())
    }
}
