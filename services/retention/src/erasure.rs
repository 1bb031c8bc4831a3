//! The erasure of one record before its schedule: a client's request to
//! erase, data collected in error. A records manager asks, others approve
//! (four eyes by default), the vault destroys the key of every version of
//! the record, and a signed certificate of erasure follows once the audit
//! log holds the shred.
//!
//! Each erasure is a persisted state machine
//! (awaiting_approval → ordered → shredded → certified, or cancelled before
//! the vault destroyed anything), so work cut short is finished by the next
//! sweep: the vault order carries the erasure's order id, and a shred of a
//! shredded record is a no-op there.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::Outcome;
use confidant_proto::vault::v1 as vault_pb;
use confidant_runtime::audit::{Action as AuditAction, EventBuilder};
use confidant_runtime::portable::{Statement, TransactError, Value};
use uuid::Uuid;

use crate::disposal::{Signer, shred_evidence};
use crate::error::Error;
use crate::service::{Actor, Retention, timed};

/// How long an ordered erasure is left to the approval that ordered it
/// before a sweep orders it again (the vault could not be reached, or the
/// replica stopped).
const RETRY_AFTER: chrono::Duration = chrono::Duration::seconds(30);

/// Why one record is erased before its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The client asked for it to be erased.
    ClientRequest,
    /// It should never have been collected.
    CollectedInError,
    /// It is no longer needed for its purpose.
    NoLongerNeeded,
    /// A court or regulator ordered it.
    LegalOrder,
}

impl Basis {
    /// Every basis.
    pub const ALL: [Basis; 4] = [
        Basis::ClientRequest,
        Basis::CollectedInError,
        Basis::NoLongerNeeded,
        Basis::LegalOrder,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::ClientRequest => "client_request",
            Basis::CollectedInError => "collected_in_error",
            Basis::NoLongerNeeded => "no_longer_needed",
            Basis::LegalOrder => "legal_order",
        }
    }

    /// From a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == name)
    }
}

/// The longest reference of an erasure request, in characters.
pub const MAX_REFERENCE_CHARS: usize = 200;

/// An erasure as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ErasureRow {
    /// Id.
    pub id: Uuid,
    /// The record named in the request.
    pub record_id: Uuid,
    /// The record's first version.
    pub chain_id: Uuid,
    /// Every version when asked for (JSON array of ids).
    pub version_ids: String,
    /// The record's scope.
    pub scope_id: Uuid,
    /// Its client.
    pub client_id: Uuid,
    /// Its matter.
    pub matter_id: Option<Uuid>,
    /// Its category.
    pub category: String,
    /// `fields` or `document`.
    pub kind: String,
    /// Why ([`Basis`]).
    pub basis: String,
    /// The firm's reference.
    pub reference: String,
    /// State name.
    pub state: String,
    /// Approvals needed in all.
    pub approvals_needed: i32,
    /// Who asked.
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
    /// The order id the vault is given.
    pub order_id: Uuid,
    /// When the vault destroyed the keys.
    pub shredded_at: Option<DateTime<Utc>>,
    /// The versions the vault destroyed (JSON array of ids).
    pub destroyed_ids: Option<String>,
    /// The vault's audit events of the shred (JSON array of ids).
    pub shred_event_ids: Option<String>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// The asker's idempotency key.
    pub request_id: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Its certificate of erasure, once issued.
    pub certificate_id: Option<Uuid>,
}

impl ErasureRow {
    /// The version ids when asked for.
    pub fn versions(&self) -> Vec<String> {
        ids(Some(&self.version_ids))
    }
}

/// A JSON array of ids as stored (empty if absent or malformed).
fn ids(json: Option<&String>) -> Vec<String> {
    json.and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

/// The query of erasures with `$tail` (a WHERE clause and order).
macro_rules! erasures_where {
    ($tail:literal) => {
        concat!(
            "SELECT id, record_id, chain_id, version_ids, scope_id, client_id, matter_id, category, kind, \
             basis, reference, state, approvals_needed, requested_by, requested_at, order_id, shredded_at, \
             destroyed_ids, shred_event_ids, cancel_reason, request_id, updated_at, \
             (SELECT c.id FROM retention_erasure_certificates c WHERE c.erasure_id = retention_erasures.id) \
             AS certificate_id FROM retention_erasures ",
            $tail
        )
    };
}

/// Statement: erasure `id` moves from state `from` to `to` (unmet if it is
/// not in `from`).
fn set_state(id: Uuid, from: &'static str, to: &'static str) -> Statement {
    crate::store::state_change(
        "UPDATE retention_erasures SET state = $3, updated_at = $4 WHERE id = $1 AND state = $2",
        id,
        from,
        to,
    )
}

/// Statement: erasure `id`, in state `from`, is cancelled for `reason`.
fn cancelled(id: Uuid, from: &'static str, reason: &'static str) -> Statement {
    Statement::new(
        "UPDATE retention_erasures SET state = 'cancelled', cancel_reason = $3, updated_at = $4 \
         WHERE id = $1 AND state = $2",
        vec![
            Value::Uuid(id),
            Value::Text(from.to_owned()),
            Value::Text(reason.to_owned()),
            Value::Time(Utc::now()),
        ],
    )
    .expecting(1)
}

/// Statement: `staff` approved erasure `id`.
fn approval(id: Uuid, staff: &str, at: DateTime<Utc>) -> Statement {
    Statement::new(
        "INSERT INTO retention_erasure_approvals (erasure_id, staff_id, approved_at) VALUES ($1, $2, $3)",
        vec![
            Value::Uuid(id),
            Value::Text(staff.to_owned()),
            Value::Time(at),
        ],
    )
}

/// What the vault did with an erasure's order.
enum Shred {
    /// The keys are destroyed: when, the versions, the vault's events.
    Done(DateTime<Utc>, Vec<String>, Vec<String>),
    /// Refused: a legal hold covers the scope, or an original.
    Refused(&'static str),
}

/// The reason of a vault's FAILED_PRECONDITION (its ErrorInfo), if it is
/// one retention acts on: `legal_hold` or `originals`.
pub(crate) fn vault_refusal(status: &tonic::Status) -> Option<&'static str> {
    use tonic_types::StatusExt;
    if status.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    match status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.as_str())
    {
        Some("legal_hold") => Some("legal_hold"),
        Some("originals") => Some("originals"),
        _ => None,
    }
}

/// 1 if a sweep's step on `row` was done, 0 if not (logged when it failed:
/// a later sweep tries again).
fn counted(row: &ErasureRow, step: &str, done: Result<bool, Error>) -> usize {
    match done {
        Ok(done) => usize::from(done),
        Err(e) => {
            tracing::warn!(erasure = %row.id, step, error = %e, "erasure step not done yet");
            0
        }
    }
}

/// Erasures of single records: requests, approvals, the vault's orders and
/// the certificates.
#[derive(Debug)]
pub struct Erasures {
    retention: Arc<Retention>,
    signer: Arc<Signer>,
    approvers: usize,
}

impl Erasures {
    /// Erasures that need `approvers` different records managers.
    pub fn new(retention: Arc<Retention>, signer: Arc<Signer>, approvers: usize) -> Self {
        Self {
            retention,
            signer,
            approvers: approvers.max(1),
        }
    }

    fn about(event: EventBuilder, row: &ErasureRow) -> EventBuilder {
        event
            .resource("erasure", &row.id.to_string())
            .scope(Some(row.client_id), row.matter_id)
            .category(&row.category)
    }

    /// Commits; `Ok(false)` when a guard was unmet (the erasure moved on).
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
            Err(TransactError::Unmet { .. }) => Ok(false),
            Err(e) if e.is_duplicate() => {
                Err(Error::Conflict("an erasure of this record is open already"))
            }
            Err(TransactError::Sqlx(e)) => Err(Error::Store(e)),
            Err(e) => Err(Error::Audit(e.to_string())),
        }
    }

    /// Asks for the erasure of the record `record_id` (any version): the
    /// vault says what the record is, and a record shredded already, an
    /// original or a held one is refused. The asker's approval counts; with
    /// one approval needed it is ordered at once. With `request_id`, a retry
    /// returns the erasure the first request opened.
    pub async fn request(
        &self,
        actor: &Actor,
        record_id: Uuid,
        basis: Basis,
        reference: &str,
        request_id: Option<Uuid>,
    ) -> Result<ErasureRow, Error> {
        let request_id = request_id.map(|r| r.to_string());
        if let Some(first) = self.requested_before(actor, request_id.as_deref()).await? {
            return Self::same_record(first, record_id);
        }
        let mut row = self.prepare(actor, record_id, basis, reference).await?;
        row.request_id = request_id;
        match self.open(actor, &row).await {
            // A concurrent retry with the same key opened it first.
            Err(Error::Conflict(_)) if row.request_id.is_some() => {
                match self
                    .requested_before(actor, row.request_id.as_deref())
                    .await?
                {
                    Some(first) => Self::same_record(first, record_id),
                    None => Err(Error::Conflict("an erasure of this record is open already")),
                }
            }
            Err(e) => Err(e),
            Ok(()) => self
                .erasure(row.id)
                .await?
                .ok_or(Error::NotFound("erasure")),
        }
    }

    /// The erasure `actor` opened with `request_id`, if any.
    async fn requested_before(
        &self,
        actor: &Actor,
        request_id: Option<&str>,
    ) -> Result<Option<ErasureRow>, Error> {
        let Some(request_id) = request_id else {
            return Ok(None);
        };
        Ok(self
            .retention
            .store()
            .db()
            .fetch_optional(
                erasures_where!("WHERE requested_by = $1 AND request_id = $2"),
                vec![
                    Value::Text(actor.id().to_owned()),
                    Value::Text(request_id.to_owned()),
                ],
            )
            .await?)
    }

    /// `first`, when a retry names the record it was opened for.
    fn same_record(first: ErasureRow, record_id: Uuid) -> Result<ErasureRow, Error> {
        if first.record_id == record_id {
            Ok(first)
        } else {
            Err(Error::Conflict(
                "this request_id opened the erasure of another record",
            ))
        }
    }

    /// The erasure asked for, not stored yet.
    async fn prepare(
        &self,
        actor: &Actor,
        record_id: Uuid,
        basis: Basis,
        reference: &str,
    ) -> Result<ErasureRow, Error> {
        let answer = self
            .retention
            .vault_client()?
            .get_record_versions(timed(vault_pb::GetRecordVersionsRequest {
                record_id: record_id.to_string(),
            }))
            .await;
        let history = match answer {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Err(Error::NotFound("record"));
            }
            Err(status) => return Err(Error::VaultUnavailable(status.message().to_owned())),
        };
        let versions = history.versions;
        let (Some(first), Some(named)) = (
            versions.first(),
            versions.iter().find(|v| v.id == record_id.to_string()),
        ) else {
            return Err(Error::NotFound("record"));
        };
        let live: Vec<&vault_pb::RecordMetadata> = versions
            .iter()
            .filter(|v| v.state() != vault_pb::RecordState::Shredded)
            .collect();
        let refusal = if live.is_empty() {
            Some(Error::Refused {
                reason: "shredded",
                message: "the record is shredded already",
            })
        } else if live.iter().any(|v| v.original) {
            Some(Error::Refused {
                reason: "originals",
                message: "the record is an original that belongs to the client: the vault keeps it until its return is recorded",
            })
        } else if history.legal_hold {
            Some(Error::Refused {
                reason: "legal_hold",
                message: "a legal hold covers the record: it cannot be erased until the hold is released",
            })
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.refused(actor, named, &refusal).await;
            return Err(refusal);
        }
        let uuid = |s: &str| {
            Uuid::parse_str(s)
                .map_err(|_| Error::VaultUnavailable("the vault answered a malformed id".into()))
        };
        let category = confidant_vault::domain::Category::from_proto(named.category)
            .ok_or_else(|| Error::VaultUnavailable("the vault answered no category".into()))?;
        let now = Utc::now();
        let complete = self.approvers <= 1;
        let row = ErasureRow {
            id: Uuid::now_v7(),
            record_id,
            chain_id: uuid(&first.id)?,
            version_ids: serde_json::to_string(
                &versions.iter().map(|v| v.id.clone()).collect::<Vec<_>>(),
            )
            .unwrap_or_else(|_| "[]".into()),
            scope_id: uuid(&named.scope_id)?,
            client_id: uuid(&named.client_id)?,
            matter_id: if named.matter_id.is_empty() {
                None
            } else {
                Some(uuid(&named.matter_id)?)
            },
            category: category.as_str().to_owned(),
            kind: if named.kind() == vault_pb::RecordKind::Document {
                "document".into()
            } else {
                "fields".into()
            },
            basis: basis.as_str().to_owned(),
            reference: reference.to_owned(),
            state: if complete {
                "ordered"
            } else {
                "awaiting_approval"
            }
            .to_owned(),
            approvals_needed: i32::try_from(self.approvers).unwrap_or(i32::MAX),
            requested_by: actor.id().to_owned(),
            requested_at: now,
            order_id: Uuid::now_v7(),
            shredded_at: None,
            destroyed_ids: None,
            shred_event_ids: None,
            cancel_reason: None,
            request_id: None,
            updated_at: now,
            certificate_id: None,
        };
        Ok(row)
    }

    /// Records a request refused up front (its reason), about the record
    /// named; a refusal that cannot be recorded is logged, and refused all
    /// the same.
    async fn refused(&self, actor: &Actor, named: &vault_pb::RecordMetadata, refusal: &Error) {
        let Error::Refused { reason, .. } = refusal else {
            return;
        };
        let category = confidant_vault::domain::Category::from_proto(named.category)
            .map_or("", |c| c.as_str());
        let event = self
            .retention
            .actor_event(actor, AuditAction::RetentionErasureRequested)
            .resource("record", &named.id)
            .scope(
                Uuid::parse_str(&named.client_id).ok(),
                Uuid::parse_str(&named.matter_id).ok(),
            )
            .category(category)
            .outcome(Outcome::Denied, reason)
            .build();
        if let Err(e) = self.commit(Vec::new(), &[event]).await {
            tracing::error!(error = %e, "refused erasure request not recorded");
        }
    }

    /// Stores an erasure asked for, with its asker's approval; orders it
    /// when that approval is enough.
    async fn open(&self, actor: &Actor, row: &ErasureRow) -> Result<(), Error> {
        let now = row.requested_at;
        let basis = row.basis.clone();
        let insert = Statement::new(
            "INSERT INTO retention_erasures (id, record_id, chain_id, version_ids, scope_id, client_id, matter_id, \
             category, kind, basis, reference, state, approvals_needed, requested_by, requested_at, order_id, updated_at, \
             request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
            vec![
                Value::Uuid(row.id),
                Value::Uuid(row.record_id),
                Value::Uuid(row.chain_id),
                Value::Text(row.version_ids.clone()),
                Value::Uuid(row.scope_id),
                Value::Uuid(row.client_id),
                Value::OptUuid(row.matter_id),
                Value::Text(row.category.clone()),
                Value::Text(row.kind.clone()),
                Value::Text(row.basis.clone()),
                Value::Text(row.reference.clone()),
                Value::Text(row.state.clone()),
                Value::Int(row.approvals_needed),
                Value::Text(row.requested_by.clone()),
                Value::Time(now),
                Value::Uuid(row.order_id),
                Value::Time(now),
                Value::OptText(row.request_id.clone()),
            ],
        );
        let event = Self::about(
            self.retention
                .actor_event(actor, AuditAction::RetentionErasureRequested),
            row,
        )
        .outcome(Outcome::Allowed, &basis)
        .build();
        let mut statements = vec![insert, approval(row.id, actor.id(), now)];
        let awaiting = row.state == "awaiting_approval";
        if awaiting {
            statements.push(crate::notices::erasure_awaiting(row.id, actor.id(), now));
        }
        self.commit(statements, &[event]).await?;
        if row.state == "ordered" {
            self.order(row).await;
        }
        if awaiting {
            crate::notices::drain_soon(self.retention.clone());
        }
        Ok(())
    }

    /// One approval; the last one needed orders the vault to shred. Returns
    /// the erasure and the approvals still needed.
    pub async fn approve(&self, actor: &Actor, id: Uuid) -> Result<(ErasureRow, usize), Error> {
        let row = self.erasure(id).await?.ok_or(Error::NotFound("erasure"))?;
        if row.state != "awaiting_approval" {
            return Err(Error::Conflict("the erasure is not awaiting approval"));
        }
        let approvers = self.approvers(id).await?;
        if approvers.iter().any(|a| a == actor.id()) {
            return Err(Error::Conflict(
                "you approved this erasure already: another records manager must",
            ));
        }
        let needed = usize::try_from(row.approvals_needed).unwrap_or(1);
        let complete = approvers.len() + 1 >= needed;
        let mut statements = vec![
            approval(id, actor.id(), Utc::now()),
            // Still awaiting approval: not withdrawn meanwhile.
            Statement::new(
                "UPDATE retention_erasures SET updated_at = $2 WHERE id = $1 AND state = 'awaiting_approval'",
                vec![Value::Uuid(id), Value::Time(Utc::now())],
            )
            .expecting(1),
        ];
        if complete {
            statements.push(set_state(id, "awaiting_approval", "ordered"));
        }
        let event = Self::about(
            self.retention
                .actor_event(actor, AuditAction::RetentionErasureApproved),
            &row,
        )
        .outcome(Outcome::Allowed, if complete { "ordered" } else { "" })
        .build();
        match self.commit(statements, &[event]).await {
            Ok(true) => {}
            Ok(false) => return Err(Error::Conflict("the erasure is not awaiting approval")),
            Err(Error::Conflict(_)) => {
                return Err(Error::Conflict(
                    "you approved this erasure already: another records manager must",
                ));
            }
            Err(e) => return Err(e),
        }
        if complete {
            self.order(&row).await;
        }
        let row = self.erasure(id).await?.ok_or(Error::NotFound("erasure"))?;
        Ok((row, needed.saturating_sub(approvers.len() + 1)))
    }

    /// Withdraws an erasure still awaiting approval.
    pub async fn cancel(&self, actor: &Actor, id: Uuid) -> Result<ErasureRow, Error> {
        let row = self.erasure(id).await?.ok_or(Error::NotFound("erasure"))?;
        let event = Self::about(
            self.retention
                .actor_event(actor, AuditAction::RetentionErasureCancelled),
            &row,
        )
        .outcome(Outcome::Allowed, "withdrawn")
        .build();
        if !self
            .commit(
                vec![cancelled(id, "awaiting_approval", "withdrawn")],
                &[event],
            )
            .await?
        {
            return Err(Error::Conflict(
                "only an erasure awaiting approval can be withdrawn",
            ));
        }
        self.erasure(id).await?.ok_or(Error::NotFound("erasure"))
    }

    /// Orders the vault to shred an ordered erasure's record and records
    /// the answer. A vault that cannot be reached leaves it ordered for a
    /// later sweep; so the caller is not failed by it.
    async fn order(&self, row: &ErasureRow) {
        if let Err(e) = self.carry_out(row).await {
            tracing::warn!(erasure = %row.id, error = %e, "erasure not carried out yet; a later sweep retries");
        }
    }

    /// Whether the vault confirmed the shred (false: refused, or another
    /// replica recorded it first).
    async fn carry_out(&self, row: &ErasureRow) -> Result<bool, Error> {
        let answer = self
            .retention
            .vault_client()?
            .shred_record(timed(vault_pb::ShredRecordRequest {
                record_id: row.record_id.to_string(),
                order_id: row.order_id.to_string(),
            }))
            .await;
        let shred = match answer {
            Ok(response) => {
                let response = response.into_inner();
                let at = response
                    .record
                    .and_then(|r| r.shred_time)
                    .and_then(|t| std::time::SystemTime::try_from(t).ok())
                    .map_or_else(Utc::now, DateTime::from);
                Shred::Done(
                    at,
                    response.destroyed.into_iter().map(|r| r.id).collect(),
                    response.audit_event_ids,
                )
            }
            Err(status) => match vault_refusal(&status) {
                Some(reason) => Shred::Refused(reason),
                None => return Err(Error::VaultUnavailable(status.message().to_owned())),
            },
        };
        match shred {
            Shred::Done(at, destroyed, events) => {
                let event = Self::about(
                    self.retention
                        .service_event(AuditAction::RetentionErasureShredded),
                    row,
                )
                .outcome(Outcome::Allowed, &format!("order-{}", row.order_id))
                .build();
                let json =
                    |ids: &[String]| serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
                self.commit(
                    vec![
                        Statement::new(
                            "UPDATE retention_erasures SET state = 'shredded', shredded_at = $2, destroyed_ids = $3, \
                             shred_event_ids = $4, updated_at = $5 WHERE id = $1 AND state = 'ordered'",
                            vec![
                                Value::Uuid(row.id),
                                Value::Time(at),
                                Value::Text(json(&destroyed)),
                                Value::Text(json(&events)),
                                Value::Time(Utc::now()),
                            ],
                        )
                        .expecting(1),
                    ],
                    &[event],
                )
                .await
            }
            Shred::Refused(reason) => {
                let event = Self::about(
                    self.retention
                        .service_event(AuditAction::RetentionErasureCancelled),
                    row,
                )
                .outcome(Outcome::Denied, reason)
                .build();
                self.commit(vec![cancelled(row.id, "ordered", reason)], &[event])
                    .await?;
                Ok(false)
            }
        }
    }

    /// Signs and stores the certificate of a shredded erasure once the
    /// audit log holds every shred event; whether it was issued.
    async fn certify(&self, row: &ErasureRow) -> Result<bool, Error> {
        let mut evidence = Vec::new();
        for event_id in ids(row.shred_event_ids.as_ref()) {
            match shred_evidence(&self.retention, &event_id).await? {
                Some(e) => evidence.push(e),
                None => return Ok(false),
            }
        }
        let approvers = self.approvers(row.id).await?;
        let destroyed = ids(row.destroyed_ids.as_ref());
        let id = Uuid::now_v7();
        let now = Utc::now();
        let body = serde_json::json!({
            "type": "confidant.certificate-of-erasure.v1",
            "certificate_id": id.to_string(),
            "issuer": crate::NAME.spiffe_id(self.retention.trust_domain()),
            "issued_at": now.to_rfc3339(),
            "erased": {
                "record_id": row.record_id.to_string(),
                "version_ids": row.versions(),
                "destroyed_by_this_order": destroyed,
                "scope_id": row.scope_id.to_string(),
                "client_id": row.client_id.to_string(),
                "matter_id": row.matter_id.map(|m| m.to_string()),
                "category": row.category,
                "kind": row.kind,
                "method": "crypto-shredding: the vault destroyed the key of every version of the record; \
                           its scope key and the client's other records remain",
            },
            "key_destroyed_at": row.shredded_at.map(|t| t.to_rfc3339()),
            "basis": row.basis,
            "reference": row.reference,
            "requested_by": row.requested_by,
            "requested_at": row.requested_at.to_rfc3339(),
            "approved_by": approvers,
            "erasure_id": row.id.to_string(),
            "vault_order_id": row.order_id.to_string(),
            "audit_evidence": evidence,
        })
        .to_string();
        let event = self
            .retention
            .service_event(AuditAction::RetentionCertificateIssued)
            .resource("certificate", &id.to_string())
            .scope(Some(row.client_id), row.matter_id)
            .category(&row.category)
            .outcome(Outcome::Allowed, &format!("erasure-{}", row.id))
            .build();
        self.commit(
            vec![
                set_state(row.id, "shredded", "certified"),
                self.signer.certificate(
                    "INSERT INTO retention_erasure_certificates (id, erasure_id, body, signature, key_id, created_at, public_key) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    id,
                    row.id,
                    body,
                    now,
                ),
            ],
            &[event],
        )
        .await
    }

    /// A sweep's share: orders again the erasures whose order did not get
    /// through, and certifies the shredded ones the audit log now holds.
    /// Returns (erasures shredded, certificates issued).
    pub async fn advance(&self) -> Result<(usize, usize), Error> {
        let db = self.retention.store().db();
        let stale: Vec<ErasureRow> = db
            .fetch_all(
                erasures_where!(
                    "WHERE state = 'ordered' AND updated_at < $1 ORDER BY id LIMIT 100"
                ),
                vec![Value::Time(Utc::now() - RETRY_AFTER)],
            )
            .await?;
        // One erasure that cannot go ahead now (the vault or the audit log
        // unreachable) neither stops the others nor the sweep's disposals.
        let mut shredded = 0;
        for row in &stale {
            shredded += counted(row, "carried out", self.carry_out(row).await);
        }
        let waiting: Vec<ErasureRow> = db
            .fetch_all(
                erasures_where!("WHERE state = 'shredded' ORDER BY id LIMIT 100"),
                vec![],
            )
            .await?;
        let mut certified = 0;
        for row in &waiting {
            certified += counted(row, "certified", self.certify(row).await);
        }
        Ok((shredded, certified))
    }

    /// An erasure.
    pub async fn erasure(&self, id: Uuid) -> Result<Option<ErasureRow>, Error> {
        Ok(self
            .retention
            .store()
            .db()
            .fetch_optional(erasures_where!("WHERE id = $1"), vec![Value::Uuid(id)])
            .await?)
    }

    /// A page of erasures, newest first: at most `limit` older than the one
    /// `after` names, optionally of one client and in one state; each with
    /// its approvers, the asker first.
    pub async fn list(
        &self,
        client: Option<Uuid>,
        state: Option<&'static str>,
        after: Vec<Value>,
        limit: i64,
    ) -> Result<Vec<(ErasureRow, Vec<String>)>, Error> {
        let store = self.retention.store();
        let mut values = vec![
            Value::OptUuid(client),
            Value::OptText(state.map(str::to_owned)),
        ];
        values.extend(after);
        values.push(Value::BigInt(limit));
        let rows: Vec<ErasureRow> = store
            .db()
            .fetch_all(
                erasures_where!(
                    "WHERE ($1 IS NULL OR client_id = $1) AND ($2 IS NULL OR state = $2) \
                     AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
                ),
                values,
            )
            .await?;
        let ids: Vec<Uuid> = rows.iter().map(|e| e.id).collect();
        let mut approvers = store
            .children::<String>(
                "SELECT erasure_id, staff_id FROM retention_erasure_approvals WHERE erasure_id BETWEEN $1 AND $2 \
                 ORDER BY erasure_id, approved_at, staff_id",
                &ids,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let approvers = approvers.remove(&row.id).unwrap_or_default();
                (row, approvers)
            })
            .collect())
    }

    /// Who approved an erasure, the asker first.
    pub async fn approvers(&self, id: Uuid) -> Result<Vec<String>, Error> {
        Ok(self
            .retention
            .store()
            .staff_ids(
                "SELECT staff_id FROM retention_erasure_approvals WHERE erasure_id = $1 ORDER BY approved_at, staff_id",
                id,
            )
            .await?)
    }

    /// The certificate of an erasure.
    pub async fn certificate(
        &self,
        erasure_id: Uuid,
    ) -> Result<Option<crate::store::StoredCertificate>, Error> {
        Ok(self
            .retention
            .store()
            .certificate(
                "SELECT id, body, signature, key_id, public_key FROM retention_erasure_certificates WHERE erasure_id = $1",
                erasure_id,
            )
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_basis_keeps_its_stored_name() {
        for basis in Basis::ALL {
            assert_eq!(Basis::parse(basis.as_str()), Some(basis));
        }
        assert_eq!(Basis::parse("whim"), None);
    }

    #[test]
    fn stored_id_lists_read_back_and_malformed_ones_read_empty() {
        assert_eq!(
            ids(Some(&r#"["a","b"]"#.to_owned())),
            vec!["a".to_owned(), "b".to_owned()]
        );
        assert!(ids(Some(&"not json".to_owned())).is_empty());
        assert!(ids(None).is_empty());
    }
}
