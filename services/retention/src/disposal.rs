//! The disposal sweep: due scopes become disposition batches, approved
//! batches become shred orders to the vault, confirmed shreds become signed
//! certificates of disposal.
//!
//! Each scope's disposal is a persisted state machine
//! (due → approved → shred_ordered → shred_confirmed → certified, or
//! cancelled while a hold covers it), so a sweep that stops at any point is
//! finished by the next one: the vault order carries the disposal's order id
//! and a shred of a shredded scope is a no-op there, so nothing is shredded
//! twice, and holds are checked here and enforced again by the vault.
//! One replica sweeps at a time (a lease in the coordinator). Fencing comes
//! from the database itself: a sweep that holds the lease first claims the
//! next epoch of the `retention_fence` row, and every one of its
//! transactions checks that the epoch is still its own, so a leader that
//! stalled and lost its lease cannot write once a later leader claimed the
//! next epoch — and a coordinator that lost its state (a Redis flush resets
//! its lease counter) cannot lock the sweep out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::Outcome;
use confidant_proto::vault::v1 as vault_pb;
use confidant_proto::vault::v1::vault_service_client::VaultServiceClient;
use confidant_runtime::audit::{Action as AuditAction, EventBuilder};
use confidant_runtime::coord::{Lease, SharedCoordinator};
use confidant_runtime::portable::{Statement, TransactError, Value};
use uuid::Uuid;

use crate::domain::Action;
use crate::error::Error;
use crate::service::{Actor, Retention};
use crate::store::{HoldRow, PolicyRow, ReturnRow, StoredCertificate};

/// The sweep lease's name.
const LEASE: &str = "retention-sweep";
/// How long a sweep may hold the lease without renewing it: a sweeper that
/// dies leaves the work to another replica after this.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often a running sweep renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// Scopes per batch.
const BATCH_MAX: usize = 1_000;
/// Due scopes one sweep plans (the next sweep takes the rest).
const PLAN_MAX: i64 = 50_000;
/// Pages of the vault's pending scopes a listing of pending destructions
/// reads at most (1,000 each) to leave out what is no longer pending.
const PENDING_ASKED_MAX: usize = 50;
/// The named trigger event that records a notice to the client.
pub const CLIENT_NOTICE_EVENT: &str = "client_notice";

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Batches created.
    pub batches_created: usize,
    /// Shreds the vault confirmed.
    pub shredded: usize,
    /// Certificates issued.
    pub certified: usize,
    /// Disposals cancelled: a hold covers the scope, or a records manager
    /// cancelled its staged destruction at the vault.
    pub cancelled: usize,
    /// Disposals the vault holds pending destruction (its configured
    /// window), staged by this sweep or still waiting.
    pub pending: usize,
    /// Due scopes whose client notice is missing or too recent.
    pub awaiting_notice: usize,
    /// Due scopes put on the return-to-client list (they hold originals).
    pub listed_for_return: usize,
    /// Paused since a restore: no disposal was done (erasures of single
    /// records, approved one by one, still are).
    pub paused: bool,
    /// Erasures of single records the vault confirmed.
    pub erased: usize,
    /// E-mails to records managers sent after the sweep
    /// ([`crate::notices`]).
    pub notified: usize,
}

/// What the vault did with a shred order.
enum ShredAnswer {
    /// The key is destroyed (when, and the vault's audit event).
    Done(DateTime<Utc>, Option<String>),
    /// Staged: the key goes when the vault's pending window ends (then),
    /// unless a records manager cancels the destruction first.
    Pending(DateTime<Utc>),
    /// Refused: a legal hold covers the scope.
    Held,
    /// Refused: the scope holds originals that belong to the client.
    Originals,
}

/// Statement: put a due scope on the return-to-client list (`entry`, in
/// state listed), unless an open entry exists (then it is unmet).
fn list_for_return(entry: &ReturnRow) -> Statement {
    Statement::new(
        "INSERT INTO retention_returns (id, scope_id, client_id, matter_id, category, original_count, due_at, \
         policy_id, policy_version, state, listed_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, 'listed', $10 \
         WHERE NOT EXISTS (SELECT 1 FROM retention_returns WHERE scope_id = $2 AND state = 'listed')",
        vec![
            Value::Uuid(entry.id),
            Value::Uuid(entry.scope_id),
            Value::Uuid(entry.client_id),
            Value::OptUuid(entry.matter_id),
            Value::Text(entry.category.clone()),
            Value::BigInt(entry.original_count),
            Value::Time(entry.due_at),
            Value::OptUuid(entry.policy_id),
            Value::OptInt(entry.policy_version),
            Value::Time(entry.listed_at),
        ],
    )
    .expecting(1)
}

/// A new entry of the return-to-client list.
fn listed(
    scope: (Uuid, Uuid, Option<Uuid>, &str),
    original_count: i64,
    due_at: DateTime<Utc>,
    policy: Option<(Uuid, i32)>,
) -> ReturnRow {
    let (scope_id, client_id, matter_id, category) = scope;
    ReturnRow {
        id: Uuid::now_v7(),
        scope_id,
        client_id,
        matter_id,
        category: category.to_owned(),
        original_count,
        due_at,
        policy_id: policy.map(|p| p.0),
        policy_version: policy.map(|p| p.1),
        state: "listed".into(),
        listed_at: Utc::now(),
        returned_at: None,
        returned_by: None,
        reference: None,
    }
}

/// Signs certificates of disposal.
pub struct Signer {
    key: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// From a PKCS#8 Ed25519 key file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let der = zeroize::Zeroizing::new(std::fs::read(path)?);
        let key = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 key", path.display()))?;
        let key_id = raw_key_id(key.public_key().as_ref());
        Ok(Self { key, key_id })
    }

    /// The key id: the first 8 bytes of SHA-256 of the public key, in hex.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The raw public key, base64.
    pub fn public_key(&self) -> String {
        B64.encode(self.key.public_key().as_ref())
    }

    /// The signature of `body`, base64.
    pub fn sign(&self, body: &str) -> String {
        B64.encode(self.key.sign(body.as_bytes()).as_ref())
    }

    /// Signs `body` and returns the statement that stores it as certificate
    /// `id` about `subject` at `at`: `sql` inserts (id, subject, body,
    /// signature, key id, time, public key) into a certificates table.
    pub fn certificate(
        &self,
        sql: &'static str,
        id: Uuid,
        subject: Uuid,
        body: String,
        at: DateTime<Utc>,
    ) -> Statement {
        let signature = self.sign(&body);
        Statement::new(
            sql,
            vec![
                Value::Uuid(id),
                Value::Uuid(subject),
                Value::Text(body),
                Value::Text(signature),
                Value::Text(self.key_id.clone()),
                Value::Time(at),
                Value::Text(self.public_key()),
            ],
        )
    }

    /// The public key to name for a stored certificate signed by `key_id`:
    /// the one stored with it, else this key's if it signed it, else none
    /// (empty: a certificate from before certificates kept their key, by a
    /// key no longer configured; its key id still names it).
    pub fn public_key_of(&self, key_id: &str, stored: Option<String>) -> String {
        stored.unwrap_or_else(|| {
            if key_id == self.key_id {
                self.public_key()
            } else {
                String::new()
            }
        })
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The key id certificates name for a raw Ed25519 public key (base64): the
/// first 8 bytes of its SHA-256, in hex. None if it is not base64.
pub fn key_id_of(public_key: &str) -> Option<String> {
    B64.decode(public_key.trim())
        .ok()
        .map(|key| raw_key_id(&key))
}

fn raw_key_id(public_key: &[u8]) -> String {
    hex_prefix(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key).as_ref())
}

/// Verifies a certificate's signature with a raw Ed25519 public key
/// (base64); returns the parsed body.
pub fn verify_certificate(
    body: &str,
    signature: &str,
    public_key: &str,
) -> Result<serde_json::Value, String> {
    let key = B64
        .decode(public_key.trim())
        .map_err(|_| "the public key is not base64".to_owned())?;
    let sig = B64
        .decode(signature.trim())
        .map_err(|_| "the signature is not base64".to_owned())?;
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &key)
        .verify(body.as_bytes(), &sig)
        .map_err(|_| "the signature does not match the body and key".to_owned())?;
    serde_json::from_str(body).map_err(|_| "the body is not JSON".to_owned())
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct DisposalRow {
    id: Uuid,
    scope_id: Uuid,
    batch_id: Uuid,
    order_id: Uuid,
    state: String,
    client_id: Uuid,
    matter_id: Option<Uuid>,
    category: String,
    policy_id: Option<Uuid>,
    policy_version: Option<i32>,
    due_at: DateTime<Utc>,
    record_count: Option<i64>,
    shredded_at: Option<DateTime<Utc>>,
    shred_event_id: Option<String>,
    staged_until: Option<DateTime<Utc>>,
}

/// A disposal whose destruction the vault holds pending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pending {
    /// The disposal.
    pub id: Uuid,
    /// Its scope.
    pub scope_id: Uuid,
    /// The scope's client.
    pub client_id: Uuid,
    /// Its matter.
    pub matter_id: Option<Uuid>,
    /// Its category.
    pub category: String,
    /// The batch that ordered it.
    pub batch_id: Uuid,
    /// When the vault destroys the key.
    pub staged_until: DateTime<Utc>,
    /// When it fell due.
    pub due_at: DateTime<Utc>,
}

/// A batch as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    /// Id.
    pub id: Uuid,
    /// Action name.
    pub action: String,
    /// State name.
    pub state: String,
    /// Approvals needed.
    pub approvals_needed: i32,
    /// When made.
    pub created_at: DateTime<Utc>,
}

/// Statement: the sweep's epoch is still the latest claimed (unmet once a
/// later sweep claimed one).
fn fence(epoch: u64) -> Statement {
    Statement::new(
        "UPDATE retention_fence SET token = token WHERE id = 1 AND token = $1",
        vec![Value::BigInt(i64::try_from(epoch).unwrap_or(i64::MAX))],
    )
    .expecting(1)
}

fn set_state(id: Uuid, from: &'static str, to: &'static str) -> Statement {
    crate::store::state_change(
        "UPDATE retention_disposals SET state = $3, updated_at = $4 WHERE id = $1 AND state = $2",
        id,
        from,
        to,
    )
}

/// Statement: why disposal `id` was cancelled.
fn cancel_reason(id: Uuid, reason: &'static str) -> Statement {
    Statement::new(
        "UPDATE retention_disposals SET cancel_reason = $2 WHERE id = $1",
        vec![Value::Uuid(id), Value::Text(reason.to_owned())],
    )
}

/// The disposal sweep and batch approvals.
#[derive(Debug)]
pub struct Disposer {
    retention: Arc<Retention>,
    coord: SharedCoordinator,
    holder: String,
    signer: Arc<Signer>,
    batch_approvers: usize,
    erasures: crate::erasure::Erasures,
    /// How long before a staged destruction its last reminder goes; none
    /// when zero.
    reminder: chrono::Duration,
}

impl Disposer {
    /// A disposer for this replica; `signer` may be shared (physical
    /// records sign their certificates with the same key).
    pub fn new(
        retention: Arc<Retention>,
        coord: SharedCoordinator,
        signer: impl Into<Arc<Signer>>,
        batch_approvers: usize,
    ) -> Self {
        let signer = signer.into();
        Self {
            erasures: crate::erasure::Erasures::new(retention.clone(), signer.clone(), 2),
            retention,
            coord,
            holder: format!("retention-{}", Uuid::now_v7()),
            signer,
            batch_approvers,
            reminder: chrono::Duration::days(1),
        }
    }

    /// Erasures of one record need `approvers` different records managers
    /// (2 unless set).
    #[must_use]
    pub fn with_erasure_approvers(mut self, approvers: usize) -> Self {
        self.erasures =
            crate::erasure::Erasures::new(self.retention.clone(), self.signer.clone(), approvers);
        self
    }

    /// Records managers get a last reminder of a staged destruction
    /// nobody kept when less than `before` remains, if they were first told
    /// of it at least as long before (a day unless set; zero: never).
    #[must_use]
    pub fn with_destruction_reminder(mut self, before: std::time::Duration) -> Self {
        self.reminder = chrono::Duration::from_std(before).unwrap_or(chrono::Duration::zero());
        self
    }

    /// Erasures of single records.
    pub fn erasures(&self) -> &crate::erasure::Erasures {
        &self.erasures
    }

    /// The signer.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    fn event(&self, action: AuditAction) -> EventBuilder {
        self.retention.service_event(action)
    }

    async fn commit(
        &self,
        statements: Vec<Statement>,
        events: &[confidant_proto::audit::v1::AuditEvent],
    ) -> Result<bool, Error> {
        match self
            .retention
            .store()
            .db()
            .transact(statements, events)
            .await
        {
            Ok(_) => Ok(true),
            // The fence (a later leader) or a state guard (already moved on).
            Err(TransactError::Unmet { statement: 0, .. }) => Err(Error::Conflict(
                "another replica leads the sweep now; this one stops",
            )),
            Err(TransactError::Unmet { .. }) => Ok(false),
            Err(TransactError::Sqlx(e)) => Err(Error::Store(e)),
            Err(e) => Err(Error::Audit(e.to_string())),
        }
    }

    /// Runs one sweep if no other replica is running one; `None` if one is.
    pub async fn sweep(&self) -> Result<Option<SweepReport>, Error> {
        let lease = self
            .coord
            .acquire_lease(LEASE, &self.holder, LEASE_TTL)
            .await
            .map_err(|e| Error::VaultUnavailable(format!("coordination: {e}")))?;
        let Some(lease) = lease else {
            return Ok(None);
        };
        let result = match self.claim_epoch().await {
            Ok(epoch) => self.run(epoch, Some(&lease)).await,
            Err(e) => Err(e),
        };
        let _ = self.coord.release_lease(&lease).await;
        // Records managers are told of what waits for them, whatever became
        // of the sweep: what it left undone is told by a later one.
        let notified = match crate::notices::drain(&self.retention).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "records managers not told of work waiting for them yet; retried after the next sweep");
                0
            }
        };
        result.map(|report| Some(SweepReport { notified, ..report }))
    }

    /// Claims the next fencing epoch: from now on only a sweep under this
    /// epoch can write. Called by a sweep that holds the lease.
    pub async fn claim_epoch(&self) -> Result<u64, Error> {
        let row: Option<(i64,)> = self
            .retention
            .store()
            .db()
            .fetch_optional(
                "UPDATE retention_fence SET token = token + 1 WHERE id = 1 RETURNING token",
                vec![],
            )
            .await?;
        row.and_then(|(t,)| u64::try_from(t).ok())
            .ok_or(Error::Conflict("the fencing row is missing"))
    }

    /// One sweep under fencing epoch `epoch`, without a lease (tests of
    /// fencing: a stale epoch is refused at its first write).
    pub async fn sweep_with_epoch(&self, epoch: u64) -> Result<SweepReport, Error> {
        self.run(epoch, None).await
    }

    async fn run(&self, token: u64, lease: Option<&Lease>) -> Result<SweepReport, Error> {
        tracing::debug!(epoch = token, "disposal sweep starts");
        let (erased, erasures_certified) = self.erasures.advance().await?;
        if self.retention.store().paused().await? {
            tracing::info!("disposals paused since a restore; ResumeDisposals lets them run");
            return Ok(SweepReport {
                paused: true,
                erased,
                certified: erasures_certified,
                ..SweepReport::default()
            });
        }
        let mut report = SweepReport {
            erased,
            certified: erasures_certified,
            ..SweepReport::default()
        };
        let mut keeper = Keeper {
            coord: &self.coord,
            lease,
            renewed: std::time::Instant::now(),
        };
        self.plan(token, &mut report).await?;
        keeper.keep().await?;
        self.execute(token, &mut report, &mut keeper).await?;
        // One notice of every destruction staged and not told of yet, one
        // last reminder of those whose keys go soon, and one of the
        // originals listed for return.
        let now = Utc::now();
        let due = self.due_unkept(now).await;
        let mut statements = vec![fence(token)];
        statements.extend(crate::notices::staged(now));
        statements.extend(crate::notices::staged_due(&due, now));
        statements.extend(crate::notices::returns_listed(now));
        self.commit(statements, &[]).await?;
        self.close_batches(token).await?;
        Ok(report)
    }

    /// The staged disposals whose last reminder is due (see
    /// [`crate::notices::due_unreminded`]) and whose scope the vault still
    /// holds pending: a records manager may have kept one since the sweep
    /// last looked. None when reminders are off, or when the vault cannot
    /// say (the next sweep reminds of them).
    async fn due_unkept(&self, now: DateTime<Utc>) -> Vec<Uuid> {
        if self.reminder <= chrono::Duration::zero() {
            return Vec::new();
        }
        let due = match crate::notices::due_unreminded(&self.retention, now, self.reminder).await {
            Ok(due) if !due.is_empty() => due,
            Ok(_) => return Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "staged destructions not reminded of yet; retried at the next sweep");
                return Vec::new();
            }
        };
        match self.vault_pending().await {
            Ok(held) => due
                .into_iter()
                .filter(|(_, scope)| {
                    held.as_ref()
                        .is_none_or(|held| held.contains(&scope.to_string()))
                })
                .map(|(disposal, _)| disposal)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "staged destructions not reminded of yet; retried at the next sweep");
                Vec::new()
            }
        }
    }

    /// Due scopes without a disposal, not held, with their client notice
    /// given: into batches, one per action.
    async fn plan(&self, token: u64, report: &mut SweepReport) -> Result<(), Error> {
        let store = self.retention.store();
        let now = Utc::now();
        let due = store.due_untaken(now, PLAN_MAX).await?;
        if due.is_empty() {
            return Ok(());
        }
        let holds = store.live_holds().await?;
        let policies = crate::store::LivePolicies::new(store.live_policies().await?);
        let mut by_action: HashMap<&'static str, Vec<(crate::store::ScopeRow, &PolicyRow)>> =
            HashMap::new();
        let mut notices: HashMap<Uuid, Vec<crate::store::TriggerRow>> = HashMap::new();
        for scope in due {
            if holds.iter().any(|h| {
                h.covers(
                    scope.scope_id,
                    scope.client_id,
                    scope.matter_id,
                    &scope.category,
                )
            }) {
                continue;
            }
            let Some((policy, rules)) = policies.for_scope(&scope) else {
                continue;
            };
            if scope.original_count > 0 {
                if self
                    .list_return(token, &scope, Some((policy.id, policy.version)))
                    .await?
                {
                    report.listed_for_return += 1;
                }
                continue;
            }
            if rules.client_notice_days > 0 {
                let triggers = match notices.entry(scope.client_id) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(store.trigger_facts(scope.client_id).await?)
                    }
                };
                let notice_by = now - chrono::Duration::days(i64::from(rules.client_notice_days));
                let noticed = triggers.iter().any(|(matter, kind, name, at)| {
                    kind == "named_event"
                        && name.as_deref() == Some(CLIENT_NOTICE_EVENT)
                        && (matter.is_none() || *matter == scope.matter_id)
                        && *at <= notice_by
                });
                if !noticed {
                    report.awaiting_notice += 1;
                    continue;
                }
            }
            by_action
                .entry(rules.action.as_str())
                .or_default()
                .push((scope, policy));
        }
        for (action, scopes) in by_action {
            for chunk in scopes.chunks(BATCH_MAX) {
                let batch = Uuid::now_v7();
                let review = action == Action::Review.as_str();
                let needed = if review { self.batch_approvers } else { 0 };
                let mut statements = vec![
                    fence(token),
                    Statement::new(
                        "INSERT INTO retention_batches (id, action, state, approvals_needed, created_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                        vec![
                            Value::Uuid(batch),
                            Value::Text(action.to_owned()),
                            Value::Text(
                                if review {
                                    "awaiting_approval"
                                } else {
                                    "approved"
                                }
                                .to_owned(),
                            ),
                            Value::Int(i32::try_from(needed).unwrap_or(i32::MAX)),
                            Value::Time(now),
                        ],
                    ),
                ];
                for (scope, policy) in chunk {
                    statements.push(Statement::new(
                        "INSERT INTO retention_disposals (id, scope_id, batch_id, order_id, state, client_id, matter_id, \
                         category, policy_id, policy_version, due_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                        vec![
                            Value::Uuid(Uuid::now_v7()),
                            Value::Uuid(scope.scope_id),
                            Value::Uuid(batch),
                            Value::Uuid(Uuid::now_v7()),
                            Value::Text(if review { "due" } else { "approved" }.to_owned()),
                            Value::Uuid(scope.client_id),
                            Value::OptUuid(scope.matter_id),
                            Value::Text(scope.category.clone()),
                            Value::Uuid(policy.id),
                            Value::Int(policy.version),
                            Value::Time(scope.due_at.unwrap_or(now)),
                            Value::Time(now),
                        ],
                    ));
                }
                if review {
                    statements.push(crate::notices::batch_awaiting(batch, chunk.len(), now));
                }
                let event = self
                    .event(AuditAction::RetentionBatchCreated)
                    .resource("disposal_batch", &batch.to_string())
                    .outcome(Outcome::Allowed, action)
                    .build();
                if self.commit(statements, &[event]).await? {
                    report.batches_created += 1;
                }
            }
        }
        Ok(())
    }

    /// Carries approved disposals through the vault to their certificates.
    async fn execute(
        &self,
        token: u64,
        report: &mut SweepReport,
        keeper: &mut Keeper<'_>,
    ) -> Result<(), Error> {
        let store = self.retention.store();
        let rows: Vec<DisposalRow> = store
            .db()
            .fetch_all(
                "SELECT id, scope_id, batch_id, order_id, state, client_id, matter_id, category, policy_id, \
                 policy_version, due_at, record_count, shredded_at, shred_event_id, staged_until \
                 FROM retention_disposals WHERE state IN ('approved', 'shred_ordered', 'shred_confirmed') \
                 AND (staged_until IS NULL OR staged_until <= $1) ORDER BY id LIMIT 1000",
                vec![Value::Time(Utc::now())],
            )
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let holds = store.live_holds().await?;
        for row in rows {
            keeper.keep().await?;
            let mut row = row;
            if row.state == "approved" {
                if held(&holds, &row) {
                    if self.cancel(token, &row, "approved", "legal_hold").await? {
                        report.cancelled += 1;
                    }
                    continue;
                }
                let count = self.record_count(&row).await?;
                let statements = vec![
                    fence(token),
                    set_state(row.id, "approved", "shred_ordered"),
                    Statement::new(
                        "UPDATE retention_disposals SET record_count = $2 WHERE id = $1",
                        vec![Value::Uuid(row.id), Value::BigInt(count)],
                    ),
                ];
                if !self.commit(statements, &[]).await? {
                    continue;
                }
                row.state = "shred_ordered".into();
                row.record_count = Some(count);
            }
            if row.state == "shred_ordered" && row.staged_until.is_some() {
                // The vault held the destruction pending until now: see
                // what became of it before anything else is asked of it (a
                // new order would stage a cancelled destruction again).
                match self.vault_scope(&row).await?.map(|s| s.state()) {
                    Some(vault_pb::ScopeState::Shredded) => {}
                    Some(vault_pb::ScopeState::PendingDestruction) | None => {
                        report.pending += 1;
                        continue;
                    }
                    Some(_) => {
                        // Readable again: a hold suspended the destruction,
                        // or a records manager cancelled it.
                        let reason = if held(&holds, &row) {
                            "legal_hold"
                        } else {
                            "destruction_cancelled"
                        };
                        if self.cancel(token, &row, "shred_ordered", reason).await? {
                            report.cancelled += 1;
                        }
                        continue;
                    }
                }
            }
            if row.state == "shred_ordered" {
                match self.order_shred(&row).await? {
                    ShredAnswer::Done(shredded_at, event_id) => {
                        let event = self
                            .event(AuditAction::RetentionDisposalShredded)
                            .resource("scope", &row.scope_id.to_string())
                            .scope(Some(row.client_id), row.matter_id)
                            .category(&row.category)
                            .outcome(Outcome::Allowed, &format!("order-{}", row.order_id))
                            .build();
                        let statements = vec![
                            fence(token),
                            set_state(row.id, "shred_ordered", "shred_confirmed"),
                            Statement::new(
                                "UPDATE retention_disposals SET shredded_at = $2, shred_event_id = $3 WHERE id = $1",
                                vec![
                                    Value::Uuid(row.id),
                                    Value::Time(shredded_at),
                                    Value::OptText(event_id.clone()),
                                ],
                            ),
                            Statement::new(
                                "UPDATE retention_scopes SET vault_state = 'shredded' WHERE scope_id = $1",
                                vec![Value::Uuid(row.scope_id)],
                            ),
                        ];
                        if !self.commit(statements, &[event]).await? {
                            continue;
                        }
                        report.shredded += 1;
                        row.state = "shred_confirmed".into();
                        row.shredded_at = Some(shredded_at);
                        row.shred_event_id = event_id;
                    }
                    ShredAnswer::Pending(until) => {
                        if row.staged_until.is_none() {
                            self.commit(
                                vec![
                                    fence(token),
                                    Statement::new(
                                        "UPDATE retention_disposals SET staged_until = $2, updated_at = $3 \
                                         WHERE id = $1 AND state = 'shred_ordered'",
                                        vec![
                                            Value::Uuid(row.id),
                                            Value::Time(until),
                                            Value::Time(Utc::now()),
                                        ],
                                    )
                                    .expecting(1),
                                ],
                                &[],
                            )
                            .await?;
                        }
                        report.pending += 1;
                        continue;
                    }
                    ShredAnswer::Held => {
                        if self
                            .cancel(token, &row, "shred_ordered", "legal_hold")
                            .await?
                        {
                            report.cancelled += 1;
                        }
                        continue;
                    }
                    ShredAnswer::Originals => {
                        if self.cancel_for_return(token, &row).await? {
                            report.cancelled += 1;
                            report.listed_for_return += 1;
                        }
                        continue;
                    }
                }
            }
            if row.state == "shred_confirmed" && self.certify(token, &row).await? {
                report.certified += 1;
            }
        }
        Ok(())
    }

    /// Disposals whose destruction a sweep staged, as the sweeps last saw
    /// them: at most `limit` after the one `after` names (its key
    /// destruction time and id), the soonest first.
    pub async fn pending(&self, after: Vec<Value>, limit: i64) -> Result<Vec<Pending>, Error> {
        let mut values = after;
        values.push(Value::BigInt(limit));
        Ok(self
            .retention
            .store()
            .db()
            .fetch_all(
                "SELECT id, scope_id, client_id, matter_id, category, batch_id, staged_until, due_at \
                 FROM retention_disposals WHERE state = 'shred_ordered' AND staged_until IS NOT NULL \
                 AND ($1 IS NULL OR (staged_until, id) > ($1, $2)) ORDER BY staged_until, id LIMIT $3",
                values,
            )
            .await?)
    }

    /// The scopes the vault holds pending destruction now (a records
    /// manager may have kept one, or its key gone, since the last sweep);
    /// none when there are more than [`PENDING_ASKED_MAX`] pages of them.
    pub async fn vault_pending(&self) -> Result<Option<std::collections::HashSet<String>>, Error> {
        let mut ids = std::collections::HashSet::new();
        let mut page_token = String::new();
        for _ in 0..PENDING_ASKED_MAX {
            let page = self
                .retention
                .scopes_page(vault_pb::ListScopesRequest {
                    state: vault_pb::ScopeState::PendingDestruction as i32,
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await?;
            ids.extend(page.scopes.into_iter().map(|s| s.id));
            if page.next_page_token.is_empty() {
                return Ok(Some(ids));
            }
            page_token = page.next_page_token;
        }
        Ok(None)
    }

    /// Cancels a disposal for `reason` (`legal_hold`, or
    /// `destruction_cancelled`: a records manager kept the scope, which is
    /// then not planned again until its due date moves).
    async fn cancel(
        &self,
        token: u64,
        row: &DisposalRow,
        from: &'static str,
        reason: &'static str,
    ) -> Result<bool, Error> {
        let (statements, event) = self.cancellation(token, row, from, reason);
        self.commit(statements, &[event]).await
    }

    /// The statements and event that cancel a disposal (from state `from`)
    /// for `reason`.
    fn cancellation(
        &self,
        token: u64,
        row: &DisposalRow,
        from: &'static str,
        reason: &'static str,
    ) -> (Vec<Statement>, confidant_proto::audit::v1::AuditEvent) {
        let event = self
            .event(AuditAction::RetentionDisposalCancelled)
            .resource("scope", &row.scope_id.to_string())
            .scope(Some(row.client_id), row.matter_id)
            .category(&row.category)
            .outcome(Outcome::Denied, reason)
            .build();
        let statements = vec![
            fence(token),
            set_state(row.id, from, "cancelled"),
            cancel_reason(row.id, reason),
        ];
        (statements, event)
    }

    /// Lists a due scope for return to the client (it holds originals).
    async fn list_return(
        &self,
        token: u64,
        scope: &crate::store::ScopeRow,
        policy: Option<(Uuid, i32)>,
    ) -> Result<bool, Error> {
        let entry = listed(
            (
                scope.scope_id,
                scope.client_id,
                scope.matter_id,
                &scope.category,
            ),
            scope.original_count,
            scope.due_at.unwrap_or_else(Utc::now),
            policy,
        );
        let event = self
            .event(AuditAction::RetentionReturnListed)
            .resource("return", &entry.id.to_string())
            .scope(Some(scope.client_id), scope.matter_id)
            .category(&scope.category)
            .build();
        self.commit(vec![fence(token), list_for_return(&entry)], &[event])
            .await
    }

    /// The vault refused a shred because the scope holds originals (added
    /// after the registry last saw it): the disposal is cancelled and the
    /// scope listed for return instead, in one transaction.
    async fn cancel_for_return(&self, token: u64, row: &DisposalRow) -> Result<bool, Error> {
        let originals = self
            .vault_scope(row)
            .await?
            .map_or(1, |s| s.original_count.max(1));
        let entry = listed(
            (row.scope_id, row.client_id, row.matter_id, &row.category),
            originals,
            row.due_at,
            row.policy_id.zip(row.policy_version),
        );
        let (mut statements, cancelled) =
            self.cancellation(token, row, "shred_ordered", "originals");
        statements.push(list_for_return(&entry));
        let event = self
            .event(AuditAction::RetentionReturnListed)
            .resource("return", &entry.id.to_string())
            .scope(Some(row.client_id), row.matter_id)
            .category(&row.category)
            .build();
        self.commit(statements, &[cancelled, event]).await
    }

    fn vault(&self) -> Result<VaultServiceClient<confidant_runtime::client::PeerChannel>, Error> {
        self.retention.vault_client()
    }

    /// How many records the scope holds, for the certificate.
    async fn record_count(&self, row: &DisposalRow) -> Result<i64, Error> {
        Ok(self.vault_scope(row).await?.map_or(0, |s| s.record_count))
    }

    /// The scope as the vault lists it now.
    async fn vault_scope(&self, row: &DisposalRow) -> Result<Option<vault_pb::Scope>, Error> {
        let id = row.scope_id.to_string();
        let mut page_token = String::new();
        loop {
            let page = self
                .retention
                .scopes_page(vault_pb::ListScopesRequest {
                    client_id: row.client_id.to_string(),
                    matter_id: row.matter_id.map(|m| m.to_string()).unwrap_or_default(),
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await?;
            if let Some(scope) = page.scopes.into_iter().find(|s| s.id == id) {
                return Ok(Some(scope));
            }
            if page.next_page_token.is_empty() {
                return Ok(None);
            }
            page_token = page.next_page_token;
        }
    }

    /// Orders the shred: done (when the key was destroyed), staged (the
    /// vault's configured pending window, `vault.destruction_window_seconds`,
    /// during which a records manager can cancel it), or refused because a
    /// hold covers the scope or it holds originals. The order id makes a
    /// repeated order (after a crash) a no-op at the vault.
    async fn order_shred(&self, row: &DisposalRow) -> Result<ShredAnswer, Error> {
        let answer = self
            .vault()?
            .shred_scope(crate::service::timed(vault_pb::ShredScopeRequest {
                scope_id: row.scope_id.to_string(),
                order_id: row.order_id.to_string(),
                pending_window: None,
            }))
            .await;
        let time = |t: Option<prost_types::Timestamp>| {
            t.and_then(|t| std::time::SystemTime::try_from(t).ok())
                .map_or_else(Utc::now, DateTime::from)
        };
        match answer {
            Ok(response) => {
                let response = response.into_inner();
                let scope = response.scope.unwrap_or_default();
                if scope.state() == vault_pb::ScopeState::PendingDestruction {
                    return Ok(ShredAnswer::Pending(time(scope.destroy_time)));
                }
                let at = time(scope.shred_time);
                let event =
                    (!response.audit_event_id.is_empty()).then_some(response.audit_event_id);
                Ok(ShredAnswer::Done(at, event))
            }
            Err(status) => match crate::erasure::vault_refusal(&status) {
                Some("legal_hold") => Ok(ShredAnswer::Held),
                Some(_) => Ok(ShredAnswer::Originals),
                None => Err(Error::VaultUnavailable(status.message().to_owned())),
            },
        }
    }

    /// The audit log's evidence of a disposal's shred ([`shred_evidence`]);
    /// `Null` when the vault reported no event.
    async fn disposal_evidence(
        &self,
        row: &DisposalRow,
    ) -> Result<Option<serde_json::Value>, Error> {
        match &row.shred_event_id {
            Some(event_id) => shred_evidence(&self.retention, event_id).await,
            None => Ok(Some(serde_json::Value::Null)),
        }
    }

    /// Lets sweeps run again after a restore paused them; whether they were
    /// paused.
    pub async fn resume(&self, actor: &Actor) -> Result<bool, Error> {
        let event = actor
            .event(
                crate::NAME,
                self.retention.trust_domain(),
                AuditAction::RetentionDisposalsResumed,
            )
            .resource("disposals", "all")
            .build();
        match self
            .retention
            .store()
            .db()
            .transact(vec![crate::store::resume().expecting(1)], &[event])
            .await
        {
            Ok(_) => Ok(true),
            Err(TransactError::Unmet { .. }) => Ok(false),
            Err(TransactError::Sqlx(e)) => Err(Error::Store(e)),
            Err(e) => Err(Error::Audit(e.to_string())),
        }
    }

    /// Signs and stores the certificate of a confirmed shred, once the
    /// audit log's evidence of the shred is available.
    async fn certify(&self, token: u64, row: &DisposalRow) -> Result<bool, Error> {
        let Some(evidence) = self.disposal_evidence(row).await? else {
            return Ok(false);
        };
        let store = self.retention.store();
        let policy = match row.policy_id {
            Some(id) => {
                store
                    .policy_version(id, row.policy_version.unwrap_or(0))
                    .await?
            }
            None => None,
        };
        let approvers = self.approvers(row.batch_id).await?;
        let id = Uuid::now_v7();
        let now = Utc::now();
        let body = serde_json::json!({
            "type": "confidant.certificate-of-disposal.v1",
            "certificate_id": id.to_string(),
            "issuer": crate::NAME.spiffe_id(self.retention.trust_domain()),
            "issued_at": now.to_rfc3339(),
            "destroyed": {
                "scope_id": row.scope_id.to_string(),
                "client_id": row.client_id.to_string(),
                "matter_id": row.matter_id.map(|m| m.to_string()),
                "category": row.category,
                "record_count": row.record_count.unwrap_or(0),
                "method": "crypto-shredding: the scope key was destroyed in the vault",
            },
            "key_destroyed_at": row.shredded_at.map(|t| t.to_rfc3339()),
            "policy": policy.as_ref().map(|p| serde_json::json!({
                "policy_id": p.id.to_string(),
                "version": p.version,
                "basis": p.basis,
                "action": p.action,
                "practice_area": p.practice_area,
                "jurisdiction": p.jurisdiction,
            })),
            "due_at": row.due_at.to_rfc3339(),
            "disposition_batch": row.batch_id.to_string(),
            "vault_order_id": row.order_id.to_string(),
            "approved_by": approvers,
            "audit_evidence": evidence,
        })
        .to_string();
        let event = self
            .event(AuditAction::RetentionCertificateIssued)
            .resource("certificate", &id.to_string())
            .scope(Some(row.client_id), row.matter_id)
            .category(&row.category)
            .build();
        self.commit(
            vec![
                fence(token),
                set_state(row.id, "shred_confirmed", "certified"),
                self.signer.certificate(
                    "INSERT INTO retention_certificates (id, scope_id, body, signature, key_id, created_at, public_key) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    id,
                    row.scope_id,
                    body,
                    now,
                ),
            ],
            &[event],
        )
        .await
    }

    /// Batches whose disposals are all certified or cancelled are done.
    async fn close_batches(&self, token: u64) -> Result<(), Error> {
        self.commit(
            vec![
                fence(token),
                Statement::new(
                    "UPDATE retention_batches SET state = 'done' WHERE state = 'approved' AND NOT EXISTS \
                     (SELECT 1 FROM retention_disposals d WHERE d.batch_id = retention_batches.id \
                      AND d.state NOT IN ('certified', 'cancelled'))",
                    vec![],
                ),
            ],
            &[],
        )
        .await
        .map(|_| ())
    }

    /// One approval of a batch; once enough different records managers
    /// approved it, its disposals are approved (the next sweep carries them
    /// out). Returns the batch and the approvals still needed.
    pub async fn approve_batch(
        &self,
        actor: &Actor,
        batch_id: Uuid,
    ) -> Result<(BatchRow, usize), Error> {
        let store = self.retention.store();
        let batch = self
            .batch(batch_id)
            .await?
            .ok_or(Error::NotFound("batch"))?;
        if batch.state != "awaiting_approval" {
            return Err(Error::Conflict("the batch is not awaiting approval"));
        }
        let approvers = self.approvers(batch_id).await?;
        if approvers.iter().any(|a| a == actor.id()) {
            return Err(Error::Conflict(
                "you approved this batch already: another records manager must",
            ));
        }
        let needed = usize::try_from(batch.approvals_needed).unwrap_or(1);
        let mut statements = vec![Statement::new(
            "INSERT INTO retention_batch_approvals (batch_id, staff_id, approved_at) VALUES ($1, $2, $3)",
            vec![
                Value::Uuid(batch_id),
                Value::Text(actor.id().to_owned()),
                Value::Time(Utc::now()),
            ],
        )];
        let complete = approvers.len() + 1 >= needed;
        if complete {
            statements.push(
                Statement::new(
                    "UPDATE retention_batches SET state = 'approved' WHERE id = $1 AND state = 'awaiting_approval'",
                    vec![Value::Uuid(batch_id)],
                )
                .expecting(1),
            );
            statements.push(Statement::new(
                "UPDATE retention_disposals SET state = 'approved', updated_at = $2 WHERE batch_id = $1 AND state = 'due'",
                vec![Value::Uuid(batch_id), Value::Time(Utc::now())],
            ));
        }
        let event = self
            .retention
            .actor_event(actor, AuditAction::RetentionBatchApproved)
            .resource("disposal_batch", &batch_id.to_string())
            .build();
        match store.db().transact(statements, &[event]).await {
            Ok(_) => {}
            Err(TransactError::Unmet { .. }) => {
                return Err(Error::Conflict("the batch is not awaiting approval"));
            }
            Err(e) if e.is_duplicate() => {
                return Err(Error::Conflict(
                    "you approved this batch already: another records manager must",
                ));
            }
            Err(TransactError::Sqlx(e)) => return Err(Error::Store(e)),
            Err(e) => return Err(Error::Audit(e.to_string())),
        }
        let batch = self
            .batch(batch_id)
            .await?
            .ok_or(Error::NotFound("batch"))?;
        Ok((batch, needed.saturating_sub(approvers.len() + 1)))
    }

    /// A batch.
    pub async fn batch(&self, id: Uuid) -> Result<Option<BatchRow>, Error> {
        Ok(self
            .retention
            .store()
            .db()
            .fetch_optional(
                "SELECT id, action, state, approvals_needed, created_at FROM retention_batches WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await?)
    }

    /// Who approved a batch.
    pub async fn approvers(&self, batch_id: Uuid) -> Result<Vec<String>, Error> {
        Ok(self
            .retention
            .store()
            .staff_ids(
                "SELECT staff_id FROM retention_batch_approvals WHERE batch_id = $1 ORDER BY approved_at",
                batch_id,
            )
            .await?)
    }

    /// The scopes of a batch.
    pub async fn batch_scopes(&self, batch_id: Uuid) -> Result<Vec<Uuid>, Error> {
        Ok(self
            .retention
            .store()
            .db()
            .fetch_all::<(Uuid,)>(
                "SELECT scope_id FROM retention_disposals WHERE batch_id = $1 ORDER BY scope_id",
                vec![Value::Uuid(batch_id)],
            )
            .await?
            .into_iter()
            .map(|r| r.0)
            .collect())
    }

    /// The certificate of a scope.
    pub async fn certificate(&self, scope_id: Uuid) -> Result<Option<StoredCertificate>, Error> {
        Ok(self
            .retention
            .store()
            .certificate(
                "SELECT id, body, signature, key_id, public_key FROM retention_certificates WHERE scope_id = $1",
                scope_id,
            )
            .await?)
    }
}

/// The signed audit checkpoint that contains a shred's audit event, with
/// its inclusion proof; `None` until the event is delivered to the log and a
/// checkpoint covers it (the certificate waits for a later sweep).
pub(crate) async fn shred_evidence(
    retention: &Retention,
    event_id: &str,
) -> Result<Option<serde_json::Value>, Error> {
    use confidant_proto::audit::v1::GetEvidenceBundleRequest;
    use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
    let channel = retention
        .audit_channel()
        .ok_or_else(|| Error::VaultUnavailable("the audit service is not configured".into()))?;
    match AuditServiceClient::new(channel)
        .get_evidence_bundle(crate::service::timed(GetEvidenceBundleRequest {
            event_id: event_id.to_owned(),
        }))
        .await
    {
        Ok(response) => {
            let bundle = response.into_inner().bundle.unwrap_or_default();
            let checkpoint = bundle.checkpoint.unwrap_or_default();
            let proof = bundle.proof.unwrap_or_default();
            Ok(Some(serde_json::json!({
                "event_id": event_id,
                "leaf_index": proof.leaf_index,
                "tree_size": checkpoint.tree_size,
                "checkpoint": checkpoint.signed_note,
                "inclusion_proof": proof.hashes.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
                "log_verifier_key": bundle.verifier_key,
            })))
        }
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(Error::VaultUnavailable(format!(
            "audit: {}",
            status.message()
        ))),
    }
}

/// Renews the sweep's lease while it runs; stops the sweep if it was lost.
struct Keeper<'a> {
    coord: &'a SharedCoordinator,
    lease: Option<&'a Lease>,
    renewed: std::time::Instant,
}

impl Keeper<'_> {
    async fn keep(&mut self) -> Result<(), Error> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        if self.renewed.elapsed() < RENEW_EVERY {
            return Ok(());
        }
        let held = self
            .coord
            .renew_lease(lease, LEASE_TTL)
            .await
            .map_err(|e| Error::VaultUnavailable(format!("coordination: {e}")))?;
        if !held {
            return Err(Error::Conflict(
                "the sweep lease was lost; another replica sweeps now",
            ));
        }
        self.renewed = std::time::Instant::now();
        Ok(())
    }
}

fn held(holds: &[HoldRow], row: &DisposalRow) -> bool {
    holds
        .iter()
        .any(|h| h.covers(row.scope_id, row.client_id, row.matter_id, &row.category))
}

/// Runs the sweep on an interval until shutdown.
pub async fn sweep_task(
    disposer: Arc<Disposer>,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    confidant_runtime::app::every(every, shutdown, || async {
        match disposer.sweep().await {
            Ok(Some(r)) if r != SweepReport::default() => tracing::info!(
                batches = r.batches_created,
                shredded = r.shredded,
                certified = r.certified,
                cancelled = r.cancelled,
                awaiting_notice = r.awaiting_notice,
                listed_for_return = r.listed_for_return,
                notified = r.notified,
                "disposal sweep"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "disposal sweep stopped; the next one resumes"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_verifies_only_unchanged_and_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        confidant_runtime::keys::write_new_ed25519_key(&path).unwrap();
        let signer = Signer::load(&path).unwrap();
        let body = r#"{"destroyed":{"record_count":3}}"#;
        let sig = signer.sign(body);
        let parsed = verify_certificate(body, &sig, &signer.public_key()).unwrap();
        assert_eq!(parsed["destroyed"]["record_count"], 3);
        assert!(verify_certificate(&body.replace('3', "4"), &sig, &signer.public_key()).is_err());
        let other = dir.path().join("other");
        confidant_runtime::keys::write_new_ed25519_key(&other).unwrap();
        let stranger = Signer::load(&other).unwrap();
        assert!(verify_certificate(body, &sig, &stranger.public_key()).is_err());
        assert_eq!(signer.key_id().len(), 16);
    }
}
