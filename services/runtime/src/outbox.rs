//! The transactional outbox of audit events and the relay that delivers it.
//!
//! A service writes an audit event into its own database in the same
//! transaction as the change the event records ([`enqueue_postgres`],
//! [`enqueue_sqlite`]), so an event exists exactly when its change does. The
//! [`Relay`] sends pending events to the audit service in batches, oldest
//! first, and removes exactly the events it sent once the audit service has
//! them (one replica at a time on PostgreSQL); the audit service
//! deduplicates by event id, so a batch re-sent after a lost acknowledgement
//! is stored once.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
use confidant_proto::audit::v1::{AppendEventsRequest, AuditEvent};
use prost::Message;
use sqlx::{PgConnection, SqliteConnection};
use uuid::Uuid;

use crate::client::PeerChannel;
use crate::storage::Database;

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event id is not a UUID.
    #[error("audit event id is not a uuid")]
    InvalidEventId,
    /// The database failed.
    #[error("outbox storage: {0}")]
    Sqlx(#[from] sqlx::Error),
}

/// The ids and encoded payloads of `events`, as the outbox stores them.
pub(crate) fn outbox_columns(events: &[AuditEvent]) -> Result<(Vec<Uuid>, Vec<Vec<u8>>), Error> {
    let ids = events
        .iter()
        .map(event_uuid)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ids, events.iter().map(Message::encode_to_vec).collect()))
}

fn event_uuid(event: &AuditEvent) -> Result<Uuid, Error> {
    Uuid::parse_str(&event.id).map_err(|_| Error::InvalidEventId)
}

/// Adds `event` to the outbox inside the caller's PostgreSQL transaction.
pub async fn enqueue_postgres(conn: &mut PgConnection, event: &AuditEvent) -> Result<(), Error> {
    sqlx::query("INSERT INTO outbox (event_id, payload, created_at) VALUES ($1, $2, $3)")
        .bind(event_uuid(event)?)
        .bind(event.encode_to_vec())
        .bind(Utc::now())
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds `events` to the outbox inside the caller's PostgreSQL transaction,
/// in order, with one statement (one round trip however many there are).
pub async fn enqueue_many_postgres(
    conn: &mut PgConnection,
    events: &[AuditEvent],
) -> Result<(), Error> {
    match events {
        [] => Ok(()),
        [one] => enqueue_postgres(conn, one).await,
        _ => {
            let (ids, payloads) = outbox_columns(events)?;
            // WITH ORDINALITY and ORDER BY keep the sequence numbers in the
            // order of the events.
            sqlx::query(
                "INSERT INTO outbox (event_id, payload, created_at) \
                 SELECT e.id, e.payload, $3 FROM UNNEST($1::uuid[], $2::bytea[]) \
                 WITH ORDINALITY AS e(id, payload, n) ORDER BY e.n",
            )
            .bind(ids)
            .bind(payloads)
            .bind(Utc::now())
            .execute(conn)
            .await?;
            Ok(())
        }
    }
}

/// Adds `event` to the outbox inside the caller's SQLite transaction.
pub async fn enqueue_sqlite(conn: &mut SqliteConnection, event: &AuditEvent) -> Result<(), Error> {
    sqlx::query("INSERT INTO outbox (event_id, payload, created_at) VALUES (?1, ?2, ?3)")
        .bind(event_uuid(event)?.to_string())
        .bind(event.encode_to_vec())
        .bind(Utc::now().to_rfc3339())
        .execute(conn)
        .await?;
    Ok(())
}

/// Records audit events for callers that must not go on until their events
/// are durable (fail-closed reads), sharing one transaction among all the
/// callers waiting at the same moment (group commit): under load many reads
/// pay for one commit, and each still returns only after its own event is
/// committed.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    gather: crate::gather::Gather<Waiter>,
}

type Waiter = (
    Vec<AuditEvent>,
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

impl GroupCommit {
    /// A committer on the current runtime. A commit carries at most
    /// `max_events` events.
    pub fn start(db: Database, max_events: usize) -> Self {
        // One connection kept per commit in flight (PostgreSQL).
        let kept = db.kept_connections(2);
        let gather = crate::gather::Gather::new(
            crate::gather::Bounds {
                max_weight: max_events,
                // A second commit gathers while the first waits for its
                // flush to disk.
                in_flight: 2,
            },
            |(events, _): &Waiter| events.len(),
            move |waiting: Vec<Waiter>| {
                let (db, kept) = (db.clone(), kept.clone());
                async move {
                    let events: Vec<AuditEvent> = waiting
                        .iter()
                        .flat_map(|(events, _)| events.iter().cloned())
                        .collect();
                    let result = commit_events(&db, kept.as_ref(), &events).await;
                    for (_, reply) in waiting {
                        let _ = reply.send(result.clone());
                    }
                }
            },
        );
        Self { gather }
    }

    /// Returns once `events` are committed to the outbox, or why they are
    /// not.
    pub async fn record(&self, events: Vec<AuditEvent>) -> Result<(), String> {
        self.gather
            .ask(events)
            .await
            .unwrap_or_else(|| Err("the audit committer stopped".to_owned()))
    }
}

/// Commits `events` with nothing else: on PostgreSQL one autocommitted
/// statement (atomic by itself: one round trip, no BEGIN and COMMIT).
/// On PostgreSQL (`kept` is there) the statement goes over a kept
/// connection; if it fails, that connection is given up and the commit
/// tried once more on a fresh one (a kept connection may have died while
/// it waited; should the first attempt have committed after all, the second
/// is refused by the outbox's unique event ids and the callers are told the
/// events were not recorded, so nothing is returned on a guess).
async fn commit_events(
    db: &Database,
    kept: Option<&crate::storage::KeptConnections>,
    events: &[AuditEvent],
) -> Result<(), String> {
    let Some(kept) = kept else {
        return db
            .transact(Vec::new(), events)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    };
    match commit_on(kept.take().await, events).await {
        Ok(()) => Ok(()),
        Err(first) => {
            tracing::warn!(error = %first, "group commit failed; trying once more on a fresh connection");
            commit_on(kept.fresh().await, events).await
        }
    }
}

/// Commits `events` over `conn`, keeping the connection if it worked.
async fn commit_on(
    conn: Result<crate::storage::Kept, sqlx::Error>,
    events: &[AuditEvent],
) -> Result<(), String> {
    let mut conn = conn.map_err(|e| e.to_string())?;
    enqueue_many_postgres(&mut conn, events)
        .await
        .map_err(|e| e.to_string())?;
    conn.keep();
    Ok(())
}

/// An event waiting for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Position in the outbox; delivery follows it.
    pub seq: i64,
    /// The event.
    pub event: AuditEvent,
    /// Earlier failed deliveries.
    pub attempts: i32,
}

/// The outbox of one service's database.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Database,
}

impl Outbox {
    /// The outbox in `db` (its table comes with the common migrations).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Adds one event in a transaction of its own, for events that record no
    /// other change (e.g. a denied read).
    pub async fn enqueue(&self, event: &AuditEvent) -> Result<(), Error> {
        match &self.db {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                enqueue_postgres(&mut tx, event).await?;
                tx.commit().await?;
            }
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                enqueue_sqlite(&mut tx, event).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The oldest `limit` undelivered events, in order. A payload that no
    /// longer decodes is skipped with an error log rather than blocking the
    /// queue forever.
    pub async fn pending(&self, limit: i64) -> Result<Vec<Pending>, Error> {
        self.pending_in(&mut Claim(None), limit).await
    }

    /// [`Outbox::pending`] inside `claim`'s transaction on PostgreSQL (the
    /// relay's one connection), through the pool otherwise.
    async fn pending_in(&self, claim: &mut Claim, limit: i64) -> Result<Vec<Pending>, Error> {
        let rows: Vec<(i64, Vec<u8>, i32)> = match &self.db {
            Database::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT seq, payload, attempts FROM outbox WHERE delivered_at IS NULL ORDER BY seq LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&mut *claim.postgres(pool).await?)
                .await?
            }
            Database::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT seq, payload, attempts FROM outbox WHERE delivered_at IS NULL ORDER BY seq LIMIT ?1",
                )
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .filter_map(|(seq, payload, attempts)| match AuditEvent::decode(payload.as_slice()) {
                Ok(event) => Some(Pending { seq, event, attempts }),
                Err(err) => {
                    tracing::error!(outbox.seq = seq, error = %err, "undecodable outbox payload skipped");
                    None
                }
            })
            .collect())
    }

    /// Removes the events at `seqs`: they are delivered (the audit log
    /// holds them now). Exactly those: on PostgreSQL a transaction that took
    /// a lower sequence number can commit after a higher one was read, so
    /// "everything up to the last one sent" could remove an event that was
    /// never sent. Removing costs the database less than marking (no new row
    /// version, no index entries) and keeps the outbox the size of its
    /// backlog.
    pub async fn remove_delivered(&self, seqs: &[i64]) -> Result<u64, Error> {
        self.remove_delivered_in(&mut Claim(None), seqs).await
    }

    /// [`Outbox::remove_delivered`] inside `claim`'s transaction on
    /// PostgreSQL, through the pool otherwise.
    async fn remove_delivered_in(&self, claim: &mut Claim, seqs: &[i64]) -> Result<u64, Error> {
        let done = match &self.db {
            Database::Postgres(pool) => {
                sqlx::query("DELETE FROM outbox WHERE delivered_at IS NULL AND seq = ANY($1)")
                    .bind(seqs)
                    .execute(&mut *claim.postgres(pool).await?)
                    .await?
                    .rows_affected()
            }
            Database::Sqlite(pool) => sqlx::query(
                "DELETE FROM outbox WHERE delivered_at IS NULL \
                 AND seq IN (SELECT value FROM json_each(?1))",
            )
            .bind(seq_list(seqs))
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(done)
    }

    /// Records a failed delivery of the events at `seqs`. `error` must be a
    /// status code or category, never a message that could quote data.
    pub async fn record_failure(&self, seqs: &[i64], error: &str) -> Result<(), Error> {
        self.record_failure_in(&mut Claim(None), seqs, error).await
    }

    /// [`Outbox::record_failure`] inside `claim`'s transaction on
    /// PostgreSQL, through the pool otherwise.
    async fn record_failure_in(
        &self,
        claim: &mut Claim,
        seqs: &[i64],
        error: &str,
    ) -> Result<(), Error> {
        match &self.db {
            Database::Postgres(pool) => {
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $1 \
                     WHERE delivered_at IS NULL AND seq = ANY($2)",
                )
                .bind(error)
                .bind(seqs)
                .execute(&mut *claim.postgres(pool).await?)
                .await?;
            }
            Database::Sqlite(pool) => {
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?1 \
                     WHERE delivered_at IS NULL AND seq IN (SELECT value FROM json_each(?2))",
                )
                .bind(error)
                .bind(seq_list(seqs))
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// On PostgreSQL, claims the delivery of this outbox for as long as the
    /// returned transaction lives (an advisory lock per schema): replicas of
    /// a service share one outbox, and one relay at a time sends it, so no
    /// batch travels twice. The relay reads and removes its batch inside that
    /// transaction, so a round takes one connection of the pool, not two.
    /// `None`: another replica is delivering. SQLite has one process, so the
    /// claim always succeeds.
    async fn claim(&self) -> Result<Option<Claim>, Error> {
        match &self.db {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let held: bool = sqlx::query_scalar(
                    "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.outbox'))",
                )
                .fetch_one(&mut *tx)
                .await?;
                Ok(held.then_some(Claim(Some(tx))))
            }
            Database::Sqlite(_) => Ok(Some(Claim(None))),
        }
    }

    /// How many events wait for delivery.
    pub async fn backlog(&self) -> Result<i64, Error> {
        let n: i64 = match &self.db {
            Database::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
                    .fetch_one(pool)
                    .await?
            }
            Database::Sqlite(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(n)
    }
}

/// A JSON array of sequence numbers (SQLite's `json_each` reads it).
fn seq_list(seqs: &[i64]) -> String {
    let items: Vec<String> = seqs.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(","))
}

/// The delivery claim of an outbox: on PostgreSQL the transaction that
/// holds its lock, in which the relay reads and removes its batch. Released
/// by [`Claim::finish`] (committing the removal) or, dropped, by rolling
/// back.
struct Claim(Option<sqlx::Transaction<'static, sqlx::Postgres>>);

/// The PostgreSQL connection an outbox statement goes over: the claim's
/// transaction during a relay round, else one from the pool.
enum PgConn<'c> {
    Claimed(&'c mut sqlx::PgConnection),
    Pooled(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl std::ops::Deref for PgConn<'_> {
    type Target = sqlx::PgConnection;
    fn deref(&self) -> &Self::Target {
        match self {
            PgConn::Claimed(conn) => conn,
            PgConn::Pooled(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for PgConn<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            PgConn::Claimed(conn) => conn,
            PgConn::Pooled(conn) => conn,
        }
    }
}

impl Claim {
    /// Where a PostgreSQL statement goes: inside the claim, or (no claim:
    /// a call outside a relay round) over a connection from `pool`.
    async fn postgres(&mut self, pool: &sqlx::PgPool) -> Result<PgConn<'_>, sqlx::Error> {
        Ok(match &mut self.0 {
            Some(tx) => PgConn::Claimed(tx),
            None => PgConn::Pooled(pool.acquire().await?),
        })
    }

    /// Commits what was done under the claim and releases it.
    async fn finish(self) -> Result<(), Error> {
        if let Some(tx) = self.0 {
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Most bytes of events one append carries: under the 4 MiB a gRPC message
/// may have, with room for the request's own framing. Events are at most
/// 64 KiB each, so a batch of large ones (long sealed justifications, holds
/// over many scopes) goes in several appends instead of being refused whole
/// at every attempt.
pub const MAX_APPEND_BYTES: usize = crate::page::MAX_PAGE_BYTES;

/// How many of `batch`, from the first, one append carries: as many as fit
/// in [`MAX_APPEND_BYTES`], and always the first.
fn fitting(batch: &[Pending]) -> usize {
    // Each event's tag and length prefix.
    crate::page::fitting(batch, MAX_APPEND_BYTES, |p| p.event.encoded_len() + 8)
}

/// Delivers a service's outbox to the audit service.
#[derive(Debug, Clone)]
pub struct Relay {
    outbox: Outbox,
    client: AuditServiceClient<PeerChannel>,
    batch_size: i64,
    idle_interval: Duration,
    linger: Duration,
    max_backoff: Duration,
    /// Events the audit log refused as invalid, by sequence number: left
    /// out of the batches until their time comes to be tried again, alone
    /// (see [`Relay::deliver_once`]).
    held: std::collections::BTreeMap<i64, HeldBack>,
    /// What the relay reports in the process's metrics.
    state: Arc<RelayState>,
}

/// An event the audit log refused, and when to offer it again.
#[derive(Debug, Clone, Copy)]
struct HeldBack {
    until: tokio::time::Instant,
    wait: Duration,
}

/// How long an event the log refused waits before it is offered again:
/// first, and at most (doubling in between).
const HELD_FIRST_WAIT: Duration = Duration::from_secs(60);
const HELD_MAX_WAIT: Duration = Duration::from_secs(3600);

/// What a relay reports: how far behind delivery is, and how many events
/// it holds back.
#[derive(Debug, Default)]
pub struct RelayState {
    /// Age of the oldest event waiting, milliseconds (0 when none waits or
    /// another replica delivers).
    lag_millis: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

impl RelayState {
    /// Age of the oldest event waiting for delivery when the relay last
    /// looked (zero when none waits, or another replica delivers).
    pub fn lag(&self) -> Duration {
        Duration::from_millis(self.lag_millis.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Events the audit log refused that the relay holds back.
    pub fn held(&self) -> u64 {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Age of the oldest audit event a service has not delivered yet, seconds,
/// by `service`: alert when it grows (the audit service unreachable, or
/// refusing).
pub const DELIVERY_LAG: &str = "confidant.audit.delivery.lag";
/// Events the audit log refused as invalid that a service holds back and
/// offers again hourly, by `service`: each needs a look (its warning names
/// the rule it broke).
pub const HELD_BACK: &str = "confidant.audit.delivery.held_back";

/// Reports `state` under `service` in the process's metrics (see
/// [`DELIVERY_LAG`] and [`HELD_BACK`]) for as long as it lives.
pub fn register_metrics(service: &'static str, state: &Arc<RelayState>) {
    let meter = opentelemetry::global::meter("confidant");
    let lag = Arc::downgrade(state);
    meter
        .f64_observable_gauge(DELIVERY_LAG)
        .with_unit("s")
        .with_description("Age of the oldest audit event not yet delivered to the log")
        .with_callback(move |o| {
            if let Some(state) = lag.upgrade() {
                o.observe(
                    state.lag().as_secs_f64(),
                    &[opentelemetry::KeyValue::new("service", service)],
                );
            }
        })
        .build();
    let held = Arc::downgrade(state);
    meter
        .u64_observable_gauge(HELD_BACK)
        .with_description("Audit events the log refused, held back and offered again")
        .with_callback(move |o| {
            if let Some(state) = held.upgrade() {
                o.observe(
                    state.held(),
                    &[opentelemetry::KeyValue::new("service", service)],
                );
            }
        })
        .build();
}

/// The events of a refused append that the audit log names as invalid: the
/// indexes of `events[i]` in its BadRequest details, with each one's
/// violations (field and rule, never a value).
fn refused_events(status: &tonic::Status) -> std::collections::BTreeMap<usize, Vec<String>> {
    use tonic_types::StatusExt as _;
    let mut refused: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
    if status.code() != tonic::Code::InvalidArgument {
        return refused;
    }
    let Some(bad) = status.get_details_bad_request() else {
        return refused;
    };
    for violation in bad.field_violations {
        let index = violation
            .field
            .strip_prefix("events[")
            .and_then(|rest| rest.split(']').next())
            .and_then(|i| i.parse::<usize>().ok());
        if let Some(index) = index {
            refused
                .entry(index)
                .or_default()
                .push(format!("{}: {}", violation.field, violation.description));
        }
    }
    refused
}

/// What one delivery round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Nothing was pending.
    Idle,
    /// This many events were delivered; `more` when the batch was cut
    /// short to fit one append, so that more are surely waiting.
    Delivered { events: usize, more: bool },
}

impl Relay {
    /// A relay from `outbox` to the audit service behind `channel`.
    pub fn new(outbox: Outbox, channel: PeerChannel) -> Self {
        Self {
            outbox,
            client: AuditServiceClient::new(channel),
            batch_size: 500,
            idle_interval: Duration::from_millis(200),
            linger: Duration::from_millis(50),
            max_backoff: Duration::from_secs(30),
            held: Default::default(),
            state: Default::default(),
        }
    }

    /// What it reports (see [`register_metrics`]).
    pub fn state(&self) -> Arc<RelayState> {
        self.state.clone()
    }

    /// Delivers at most one batch.
    ///
    /// An event the audit log refuses as invalid (a producer's fault, or a
    /// log older than the service, during an upgrade) would otherwise hold
    /// up every event behind it for good. The events the refusal names are
    /// held back instead, each with a warning naming the rule it broke and
    /// its failure recorded in the outbox; the others go on at once. A held
    /// event stays in the outbox and is offered again, alone, after a
    /// minute, then after twice as long each time, up to hourly.
    pub async fn deliver_once(&mut self) -> Result<Round, RelayError> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(mut claim) = self.outbox.claim().await? else {
            self.state.lag_millis.store(0, Relaxed);
            return Ok(Round::Idle);
        };
        let now = tokio::time::Instant::now();
        let held = self.held.len() as i64;
        let pending = self
            .outbox
            .pending_in(&mut claim, self.batch_size + held)
            .await?;
        // Forget what is no longer waiting (delivered by another replica).
        self.held
            .retain(|seq, _| pending.iter().any(|p| p.seq == *seq));
        self.state.held.store(self.held.len() as u64, Relaxed);
        self.state.lag_millis.store(
            pending
                .first()
                .map_or(0, |p| age(&p.event).as_millis() as u64),
            Relaxed,
        );
        // A held event whose time has come goes alone.
        let due = pending
            .iter()
            .position(|p| self.held.get(&p.seq).is_some_and(|h| h.until <= now));
        let mut batch: Vec<Pending> = match due {
            Some(at) => pending.into_iter().skip(at).take(1).collect(),
            None => pending
                .into_iter()
                .filter(|p| !self.held.contains_key(&p.seq))
                .take(usize::try_from(self.batch_size).unwrap_or(usize::MAX))
                .collect(),
        };
        if batch.is_empty() {
            return Ok(Round::Idle);
        }
        let fit = fitting(&batch);
        let more = fit < batch.len();
        batch.truncate(fit);
        let seqs: Vec<i64> = batch.iter().map(|p| p.seq).collect();
        let actions: Vec<String> = batch.iter().map(|p| p.event.action.clone()).collect();
        let request = AppendEventsRequest {
            events: batch.into_iter().map(|p| p.event).collect(),
        };
        let result = self.client.append_events(request).await;
        // The events a refusal names (none for any other failure).
        let refused = match &result {
            Err(status) => refused_events(status)
                .into_iter()
                .filter_map(|(i, violations)| {
                    Some((*seqs.get(i)?, actions.get(i)?.clone(), violations))
                })
                .collect(),
            Ok(_) => Vec::new(),
        };
        match result {
            Err(_) if !refused.is_empty() => {
                let named: Vec<i64> = refused.iter().map(|(seq, _, _)| *seq).collect();
                self.outbox
                    .record_failure_in(&mut claim, &named, "InvalidArgument")
                    .await?;
                claim.finish().await?;
                for (seq, action, violations) in &refused {
                    let wait = self
                        .held
                        .get(seq)
                        .map_or(HELD_FIRST_WAIT, |h| (h.wait * 2).min(HELD_MAX_WAIT));
                    if !self.held.contains_key(seq) {
                        tracing::warn!(
                            outbox.seq = seq,
                            event.action = %action,
                            violations = %violations.join("; "),
                            retry_in_s = wait.as_secs(),
                            "the audit log refused an event; it is held back and the others go on"
                        );
                    }
                    self.held.insert(
                        *seq,
                        HeldBack {
                            until: tokio::time::Instant::now() + wait,
                            wait,
                        },
                    );
                }
                self.state.held.store(self.held.len() as u64, Relaxed);
                // The rest of the batch goes in the next round, at once.
                Ok(Round::Delivered {
                    events: 0,
                    more: true,
                })
            }
            Ok(_) => {
                // Should the removal be lost (the commit fails), the batch
                // is sent again and the audit service stores it once.
                self.outbox.remove_delivered_in(&mut claim, &seqs).await?;
                claim.finish().await?;
                if due.is_some() {
                    for seq in &seqs {
                        self.held.remove(seq);
                        tracing::info!(
                            outbox.seq = seq,
                            "held-back audit event accepted by the log"
                        );
                    }
                }
                // After a held event, the batch it went before goes at once.
                Ok(Round::Delivered {
                    events: seqs.len(),
                    more: more || due.is_some(),
                })
            }
            Err(status) => {
                let code = format!("{:?}", status.code());
                self.outbox
                    .record_failure_in(&mut claim, &seqs, &code)
                    .await?;
                claim.finish().await?;
                Err(RelayError::Rejected(status.code()))
            }
        }
    }

    /// Runs until `shutdown` fires: delivers while there is work, polls when
    /// idle, backs off exponentially while the audit service is unreachable.
    /// Undelivered events stay in the outbox for the next start.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = self.idle_interval;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let wait = match self.deliver_once().await {
                Ok(Round::Delivered { events, more }) => {
                    backoff = self.idle_interval;
                    if more || events as i64 >= self.batch_size {
                        continue;
                    }
                    // A short batch: let more events gather before the next
                    // round, so that under load one round (a handful of
                    // statements here and one append in the audit log)
                    // carries many events instead of a few. The events are
                    // already durable; only their arrival in the log waits.
                    self.linger
                }
                Ok(Round::Idle) => self.idle_interval,
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "audit delivery failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.max_backoff);
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// How long ago `event` happened, by its own time.
fn age(event: &AuditEvent) -> Duration {
    event
        .time
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default()
}

/// A failed delivery round.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The outbox could not be read or updated.
    #[error(transparent)]
    Outbox(#[from] Error),
    /// The audit service refused or could not be reached.
    #[error("audit service answered {0:?}")]
    Rejected(tonic::Code),
}
