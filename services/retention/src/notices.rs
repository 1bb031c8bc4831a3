//! Notices to staff of work waiting for them: a sweep staged destructions
//! that records managers can still stop (and, shortly before the keys of
//! those nobody kept go, a last reminder), or listed originals they must
//! return to clients; a disposal batch waits for their approval, an erasure
//! asked for by one of them waits for another's, and so does a legal hold's
//! release approved once (for those who manage holds). Without them the
//! pending window, the returns and the approvals only work for someone who
//! happens to look.
//!
//! Each notice goes into the outbox ([`confidant_runtime::staff_notices`])
//! in the transaction that made the work, and is sent through identity
//! after each sweep, and at once for an erasure or a release.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use confidant_proto::identity::v1::StaffNoticeKind;
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::staff_notices::{self, DrainError, Notice};
use uuid::Uuid;

use crate::error::Error;
use crate::service::Retention;

/// Statement: the notice of disposal batch `batch` of `scopes` scopes,
/// waiting for approval.
pub fn batch_awaiting(batch: Uuid, scopes: usize, now: DateTime<Utc>) -> Statement {
    Notice {
        items: i64::try_from(scopes).unwrap_or(i64::MAX),
        ..Notice::of_one(
            format!("batch:{batch}"),
            StaffNoticeKind::DisposalBatchAwaitingApproval,
            batch,
        )
    }
    .insert(now)
}

/// Statement: the notice of erasure `erasure`, waiting for approval; not
/// for `asker` (a staff id), whose request is their approval.
pub fn erasure_awaiting(erasure: Uuid, asker: &str, now: DateTime<Utc>) -> Statement {
    Notice {
        except: Uuid::parse_str(asker).ok(),
        ..Notice::of_one(
            format!("erasure:{erasure}"),
            StaffNoticeKind::ErasureAwaitingApproval,
            erasure,
        )
    }
    .insert(now)
}

/// Statement: the notice that the release of hold `hold` waits for another
/// approval; not for `approver` (a staff id), who approved it. One per
/// hold, however many approvals it takes.
pub fn hold_release_awaiting(hold: Uuid, approver: &str, now: DateTime<Utc>) -> Statement {
    Notice {
        except: Uuid::parse_str(approver).ok(),
        ..Notice::of_one(
            format!("hold-release:{hold}"),
            StaffNoticeKind::HoldReleaseAwaitingApproval,
            hold,
        )
    }
    .insert(now)
}

/// Statements: one notice of every destruction staged at the vault that no
/// notice told of yet, with the earliest key destruction as its deadline
/// (nothing when there is none). Whatever sweep staged them, and whether
/// or not it finished, each is told once.
pub fn staged(now: DateTime<Utc>) -> Vec<Statement> {
    told_once(
        "staged",
        StaffNoticeKind::DestructionStaged,
        "UPDATE retention_disposals SET notice_id = $1 WHERE state = 'shred_ordered' \
         AND staged_until IS NOT NULL AND notice_id IS NULL",
        "INSERT INTO staff_notice_outbox (id, kind, item_count, deadline, created_at) \
         SELECT notice_id, $2, COUNT(*), MIN(staged_until), $3 FROM retention_disposals \
         WHERE notice_id = $1 GROUP BY notice_id",
        now,
    )
}

/// The disposals still staged whose key goes within `before` (after
/// `now`), whose first notice went at least `before` ago (so that a window
/// shorter than that is told of once), and that no reminder told of yet:
/// (disposal, scope), at most 1,000.
pub async fn due_unreminded(
    retention: &Retention,
    now: DateTime<Utc>,
    before: chrono::Duration,
) -> Result<Vec<(Uuid, Uuid)>, Error> {
    Ok(retention
        .store()
        .db()
        .fetch_all(
            "SELECT id, scope_id FROM retention_disposals WHERE state = 'shred_ordered' \
             AND staged_until IS NOT NULL AND reminder_notice_id IS NULL \
             AND staged_until > $1 AND staged_until <= $2 \
             AND EXISTS (SELECT 1 FROM staff_notice_outbox o \
                         WHERE o.id = retention_disposals.notice_id AND o.created_at <= $3) \
             ORDER BY staged_until, id LIMIT 1000",
            vec![
                Value::Time(now),
                Value::Time(now + before),
                Value::Time(now - before),
            ],
        )
        .await?)
}

/// Statements: one last reminder of `disposals` (still staged, and kept by
/// nobody: see [`due_unreminded`]), each reminded of once, with the
/// earliest key destruction as its deadline; nothing when none is left.
pub fn staged_due(disposals: &[Uuid], now: DateTime<Utc>) -> Vec<Statement> {
    if disposals.is_empty() {
        return Vec::new();
    }
    let id = format!("due:{}", Uuid::now_v7());
    let mut statements: Vec<Statement> = disposals
        .iter()
        .map(|disposal| {
            Statement::new(
                "UPDATE retention_disposals SET reminder_notice_id = $1 \
                 WHERE id = $2 AND reminder_notice_id IS NULL",
                vec![Value::Text(id.clone()), Value::Uuid(*disposal)],
            )
        })
        .collect();
    statements.push(Statement::new(
        "INSERT INTO staff_notice_outbox (id, kind, item_count, deadline, created_at) \
         SELECT reminder_notice_id, $2, COUNT(*), MIN(staged_until), $3 FROM retention_disposals \
         WHERE reminder_notice_id = $1 GROUP BY reminder_notice_id",
        vec![
            Value::Text(id),
            Value::Text(StaffNoticeKind::DestructionDue.as_str_name().to_owned()),
            Value::Time(now),
        ],
    ));
    statements
}

/// Statements: one notice of every scope on the return-to-client list that
/// no notice told of yet (nothing when there is none).
pub fn returns_listed(now: DateTime<Utc>) -> Vec<Statement> {
    told_once(
        "returns",
        StaffNoticeKind::ReturnsListed,
        "UPDATE retention_returns SET notice_id = $1 WHERE state = 'listed' AND notice_id IS NULL",
        "INSERT INTO staff_notice_outbox (id, kind, item_count, created_at) \
         SELECT notice_id, $2, COUNT(*), $3 FROM retention_returns WHERE notice_id = $1 \
         GROUP BY notice_id",
        now,
    )
}

/// Statements: `mark` gives the rows no notice told of yet a new notice's
/// id (`$1`); `insert` writes that notice of `kind` (`$2`, at `$3`) over
/// the rows it marked, if any.
fn told_once(
    prefix: &str,
    kind: StaffNoticeKind,
    mark: &'static str,
    insert: &'static str,
    now: DateTime<Utc>,
) -> Vec<Statement> {
    let id = format!("{prefix}:{}", Uuid::now_v7());
    vec![
        Statement::new(mark, vec![Value::Text(id.clone())]),
        Statement::new(
            insert,
            vec![
                Value::Text(id),
                Value::Text(kind.as_str_name().to_owned()),
                Value::Time(now),
            ],
        ),
    ]
}

/// Sends the notices not sent yet through identity; how many e-mails went.
pub async fn drain(retention: &Retention) -> Result<usize, Error> {
    staff_notices::drain(retention.store().db(), retention.identity_channel())
        .await
        .map_err(|e| match e {
            DrainError::NoIdentity => Error::Conflict("identity is not configured"),
            DrainError::Store(e) => Error::Store(e),
            DrainError::Identity(status) => Error::Identity(status),
            DrainError::Mark(e) => Error::Audit(e),
        })
}

/// Sends the notices waiting now, in the background.
pub fn drain_soon(retention: Arc<Retention>) {
    staff_notices::drain_soon(retention.store().db().clone(), retention.identity_channel());
}
