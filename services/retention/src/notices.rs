//! Notices to staff of work waiting for them: a sweep staged destructions
//! that records managers can still stop, or listed originals they must
//! return to clients; a disposal batch waits for their approval, an erasure
//! asked for by one of them waits for another's, and so does a legal hold's
//! release approved once (for those who manage holds). Without them the
//! pending window, the returns and the approvals only work for someone who
//! happens to look.
//!
//! A notice is written in the transaction that made the work (an outbox:
//! nothing is told of work that was not made, and no work goes untold when
//! identity or its mail gateway is away) and sent through identity
//! (`NotifyStaff`), which knows who the records managers are and where to
//! write to them, after each sweep and after an erasure request. Identity
//! sends each notice once to each recipient, so one sent again after a
//! partial failure reaches only those it missed.

use chrono::{DateTime, Utc};
use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_proto::identity::v1::{NotifyStaffRequest, StaffNoticeKind};
use confidant_runtime::portable::{Statement, Value};
use uuid::Uuid;

use crate::error::Error;
use crate::service::{Retention, timed};

/// Unsent notices one drain sends at most (the next one sends the rest).
const DRAIN_MAX: i64 = 100;

/// Staged destructions.
const STAGED: &str = "destruction_staged";
/// A disposal batch waiting for approval.
const BATCH: &str = "disposal_batch_awaiting_approval";
/// An erasure waiting for approval.
const ERASURE: &str = "erasure_awaiting_approval";
/// Originals to return to clients.
const RETURNS: &str = "returns_listed";
/// A hold's release waiting for approval.
const HOLD_RELEASE: &str = "hold_release_awaiting_approval";

/// Statement: the notice of disposal batch `batch` of `scopes` scopes,
/// waiting for approval.
pub fn batch_awaiting(batch: Uuid, scopes: usize, now: DateTime<Utc>) -> Statement {
    insert(
        format!("batch:{batch}"),
        BATCH,
        scopes,
        Some(batch),
        None,
        now,
    )
}

/// Statement: the notice of erasure `erasure`, waiting for approval; not
/// for `asker` (a staff id), whose request is their approval.
pub fn erasure_awaiting(erasure: Uuid, asker: &str, now: DateTime<Utc>) -> Statement {
    insert(
        format!("erasure:{erasure}"),
        ERASURE,
        1,
        Some(erasure),
        Uuid::parse_str(asker).ok(),
        now,
    )
}

/// Statement: the notice that the release of hold `hold` waits for another
/// approval; not for `approver` (a staff id), who approved it. One per
/// hold, however many approvals it takes.
pub fn hold_release_awaiting(hold: Uuid, approver: &str, now: DateTime<Utc>) -> Statement {
    insert(
        format!("hold-release:{hold}"),
        HOLD_RELEASE,
        1,
        Some(hold),
        Uuid::parse_str(approver).ok(),
        now,
    )
}

/// Statement: notice `id`, unless there is one with that id already.
fn insert(
    id: String,
    kind: &'static str,
    items: usize,
    reference: Option<Uuid>,
    except: Option<Uuid>,
    now: DateTime<Utc>,
) -> Statement {
    Statement::new(
        "INSERT INTO retention_notices (id, kind, item_count, reference, except_staff, created_at) \
         SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS (SELECT 1 FROM retention_notices WHERE id = $1)",
        vec![
            Value::Text(id),
            Value::Text(kind.to_owned()),
            Value::BigInt(i64::try_from(items).unwrap_or(i64::MAX)),
            Value::OptUuid(reference),
            Value::OptUuid(except),
            Value::Time(now),
        ],
    )
}

/// Statements: one notice of every destruction staged at the vault that no
/// notice told of yet, with the earliest key destruction as its deadline
/// (nothing when there is none). Whatever sweep staged them, and whether
/// or not it finished, each is told once.
pub fn staged(now: DateTime<Utc>) -> Vec<Statement> {
    let id = format!("staged:{}", Uuid::now_v7());
    vec![
        Statement::new(
            "UPDATE retention_disposals SET notice_id = $1 WHERE state = 'shred_ordered' \
             AND staged_until IS NOT NULL AND notice_id IS NULL",
            vec![Value::Text(id.clone())],
        ),
        Statement::new(
            "INSERT INTO retention_notices (id, kind, item_count, deadline, created_at) \
             SELECT notice_id, $2, COUNT(*), MIN(staged_until), $3 FROM retention_disposals \
             WHERE notice_id = $1 GROUP BY notice_id",
            vec![
                Value::Text(id),
                Value::Text(STAGED.to_owned()),
                Value::Time(now),
            ],
        ),
    ]
}

/// Statements: one notice of every scope on the return-to-client list that
/// no notice told of yet (nothing when there is none).
pub fn returns_listed(now: DateTime<Utc>) -> Vec<Statement> {
    let id = format!("returns:{}", Uuid::now_v7());
    vec![
        Statement::new(
            "UPDATE retention_returns SET notice_id = $1 WHERE state = 'listed' AND notice_id IS NULL",
            vec![Value::Text(id.clone())],
        ),
        Statement::new(
            "INSERT INTO retention_notices (id, kind, item_count, created_at) \
             SELECT notice_id, $2, COUNT(*), $3 FROM retention_returns WHERE notice_id = $1 \
             GROUP BY notice_id",
            vec![
                Value::Text(id),
                Value::Text(RETURNS.to_owned()),
                Value::Time(now),
            ],
        ),
    ]
}

/// A notice as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct NoticeRow {
    id: String,
    kind: String,
    item_count: i64,
    deadline: Option<DateTime<Utc>>,
    reference: Option<Uuid>,
    except_staff: Option<Uuid>,
}

impl NoticeRow {
    fn request(&self) -> NotifyStaffRequest {
        let kind = match self.kind.as_str() {
            STAGED => StaffNoticeKind::DestructionStaged,
            BATCH => StaffNoticeKind::DisposalBatchAwaitingApproval,
            ERASURE => StaffNoticeKind::ErasureAwaitingApproval,
            RETURNS => StaffNoticeKind::ReturnsListed,
            HOLD_RELEASE => StaffNoticeKind::HoldReleaseAwaitingApproval,
            _ => StaffNoticeKind::Unspecified,
        };
        NotifyStaffRequest {
            notice_id: self.id.clone(),
            kind: kind as i32,
            item_count: i32::try_from(self.item_count).unwrap_or(i32::MAX),
            deadline: self.deadline.map(|d| prost_types::Timestamp {
                seconds: d.timestamp(),
                nanos: i32::try_from(d.timestamp_subsec_nanos()).unwrap_or(0),
            }),
            reference_id: self.reference.map(|r| r.to_string()).unwrap_or_default(),
            except_staff_id: self.except_staff.map(|s| s.to_string()).unwrap_or_default(),
        }
    }
}

/// Sends the notices not sent yet through identity, oldest first; returns
/// how many e-mails went. A notice identity could not send to everyone
/// stays for the next drain; identity being away stops this one.
pub async fn drain(retention: &Retention) -> Result<usize, Error> {
    let db = retention.store().db();
    let rows: Vec<NoticeRow> = db
        .fetch_all(
            "SELECT id, kind, item_count, deadline, reference, except_staff FROM retention_notices \
             WHERE sent_at IS NULL ORDER BY created_at, id LIMIT $1",
            vec![Value::BigInt(DRAIN_MAX)],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let channel = retention
        .identity_channel()
        .ok_or(Error::Conflict("identity is not configured"))?;
    let mut identity = IdentityServiceClient::new(channel);
    let mut sent = 0;
    for row in rows {
        let done = match identity.notify_staff(timed(row.request())).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                sent += usize::try_from(answer.sent).unwrap_or(0);
                if answer.failed > 0 {
                    tracing::warn!(
                        notice = %row.id, failed = answer.failed,
                        "the mail gateway refused a notice to records managers; it goes again after the next sweep"
                    );
                }
                answer.failed == 0
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                // It will never be accepted: do not send it for ever.
                tracing::error!(notice = %row.id, message = %status.message(), "identity refused a notice to records managers; it is dropped");
                true
            }
            Err(status) => return Err(Error::Identity(status)),
        };
        if done {
            db.transact(
                vec![Statement::new(
                    "UPDATE retention_notices SET sent_at = $2 WHERE id = $1 AND sent_at IS NULL",
                    vec![Value::Text(row.id.clone()), Value::Time(Utc::now())],
                )],
                &[],
            )
            .await
            .map_err(|e| match e {
                confidant_runtime::portable::TransactError::Sqlx(e) => Error::Store(e),
                e => Error::Audit(e.to_string()),
            })?;
        }
    }
    Ok(sent)
}

/// Sends the notices waiting now, in the background: the work that made one
/// (an erasure asked for, a hold's release approved once) is told at once
/// instead of after the next sweep, which retries it if this fails.
pub fn drain_soon(retention: std::sync::Arc<Retention>) {
    tokio::spawn(async move {
        if let Err(e) = drain(&retention).await {
            tracing::warn!(error = %e, "staff not told of work waiting for them yet; retried after the next sweep");
        }
    });
}
