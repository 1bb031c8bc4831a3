//! Notices to staff of work waiting for them, made by a service other than
//! identity (a disposal batch waiting for approval in retention, a client's
//! answers waiting for review in intake) and sent through identity
//! (`NotifyStaff`), which knows who should hear of it and where to write to
//! them.
//!
//! Each such service keeps an outbox, the table `staff_notice_outbox` of
//! its own schema: a notice is written in the transaction that made the
//! work ([`Notice::insert`]), so nothing is told of work that was not made
//! and no work goes untold while identity or its mail gateway is away; a
//! drain ([`drain`]) sends what waits and marks what went. Identity sends
//! each notice once to each recipient, so a notice sent again after a
//! partial failure reaches only those it missed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_proto::identity::v1::{NotifyStaffRequest, StaffNoticeKind};
use uuid::Uuid;

use crate::client::PeerChannel;
use crate::portable::{Statement, TransactError, Value};
use crate::storage::Database;

/// Unsent notices one drain sends at most (the next one sends the rest).
const DRAIN_MAX: i64 = 100;
/// How long identity may take over one notice.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One notice to write to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Its id: identity sends it once to each recipient under it.
    pub id: String,
    /// What it is about.
    pub kind: StaffNoticeKind,
    /// How many items wait.
    pub items: i64,
    /// What waits (a batch, an erasure, a hold, a submission).
    pub reference: Option<Uuid>,
    /// Whom not to tell (whoever asked for it).
    pub except: Option<Uuid>,
    /// The one staff member to tell, for the kinds about one person's work.
    pub recipient: Option<Uuid>,
}

impl Notice {
    /// A notice of one item, `reference`.
    pub fn of_one(id: String, kind: StaffNoticeKind, reference: Uuid) -> Self {
        Self {
            id,
            kind,
            items: 1,
            reference: Some(reference),
            except: None,
            recipient: None,
        }
    }

    /// A notice of one item, `reference`, to the one staff member
    /// `recipient` (the kinds about one person's work).
    pub fn to_staff(id: String, kind: StaffNoticeKind, reference: Uuid, recipient: Uuid) -> Self {
        Self {
            recipient: Some(recipient),
            ..Self::of_one(id, kind, reference)
        }
    }

    /// Statement: this notice into the outbox, unless one with its id is
    /// there already (the work was told of).
    pub fn insert(&self, now: DateTime<Utc>) -> Statement {
        Statement::new(
            "INSERT INTO staff_notice_outbox (id, kind, item_count, reference, except_staff, recipient, created_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE NOT EXISTS (SELECT 1 FROM staff_notice_outbox WHERE id = $1)",
            vec![
                Value::Text(self.id.clone()),
                Value::Text(self.kind.as_str_name().to_owned()),
                Value::BigInt(self.items),
                Value::OptUuid(self.reference),
                Value::OptUuid(self.except),
                Value::OptUuid(self.recipient),
                Value::Time(now),
            ],
        )
    }
}

/// Why a drain stopped.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// No identity service to send through.
    #[error("identity is not configured")]
    NoIdentity,
    /// The outbox could not be read or marked.
    #[error("staff notice outbox: {0}")]
    Store(#[from] sqlx::Error),
    /// Identity could not be reached or failed.
    #[error("identity: {}", .0.message())]
    Identity(tonic::Status),
    /// A notice sent could not be marked (it may be sent again, and
    /// identity then sends it to nobody twice).
    #[error("staff notice outbox: {0}")]
    Mark(String),
}

/// A notice as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: String,
    kind: String,
    item_count: i64,
    deadline: Option<DateTime<Utc>>,
    reference: Option<Uuid>,
    except_staff: Option<Uuid>,
    recipient: Option<Uuid>,
}

impl Row {
    fn request(&self) -> NotifyStaffRequest {
        let id = |u: Option<Uuid>| u.map(|u| u.to_string()).unwrap_or_default();
        NotifyStaffRequest {
            notice_id: self.id.clone(),
            kind: StaffNoticeKind::from_str_name(&self.kind).unwrap_or(StaffNoticeKind::Unspecified)
                as i32,
            item_count: i32::try_from(self.item_count).unwrap_or(i32::MAX),
            deadline: self.deadline.map(|d| prost_types::Timestamp {
                seconds: d.timestamp(),
                nanos: i32::try_from(d.timestamp_subsec_nanos()).unwrap_or(0),
            }),
            reference_id: id(self.reference),
            except_staff_id: id(self.except_staff),
            recipient_staff_id: id(self.recipient),
        }
    }
}

/// Sends the notices of `db`'s outbox not sent yet through `identity`,
/// oldest first; returns how many e-mails went. A notice identity could not
/// send to everyone stays for a later drain; identity being away stops this
/// one.
pub async fn drain(db: &Database, identity: Option<PeerChannel>) -> Result<usize, DrainError> {
    let rows: Vec<Row> = db
        .fetch_all(
            "SELECT id, kind, item_count, deadline, reference, except_staff, recipient \
             FROM staff_notice_outbox WHERE sent_at IS NULL \
             ORDER BY COALESCE(tried_at, created_at), id LIMIT $1",
            vec![Value::BigInt(DRAIN_MAX)],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut identity = IdentityServiceClient::new(identity.ok_or(DrainError::NoIdentity)?);
    let mut sent = 0;
    for row in rows {
        let mut request = tonic::Request::new(row.request());
        request.set_timeout(CALL_TIMEOUT);
        let done = match identity.notify_staff(request).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                sent += usize::try_from(answer.sent).unwrap_or(0);
                if answer.failed > 0 {
                    tracing::warn!(
                        notice = %row.id, failed = answer.failed,
                        "the mail gateway refused a notice to staff; it goes again later"
                    );
                }
                answer.failed == 0
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                // It will never be accepted: do not send it for ever.
                tracing::error!(notice = %row.id, message = %status.message(), "identity refused a notice to staff; it is dropped");
                true
            }
            Err(status) => return Err(DrainError::Identity(status)),
        };
        // Sent (or dropped); else tried, and it waits behind the others.
        let mark = if done {
            "UPDATE staff_notice_outbox SET sent_at = $2 WHERE id = $1 AND sent_at IS NULL"
        } else {
            "UPDATE staff_notice_outbox SET tried_at = $2 WHERE id = $1 AND sent_at IS NULL"
        };
        db.transact(
            vec![Statement::new(
                mark,
                vec![Value::Text(row.id.clone()), Value::Time(Utc::now())],
            )],
            &[],
        )
        .await
        .map_err(|e| match e {
            TransactError::Sqlx(e) => DrainError::Store(e),
            e => DrainError::Mark(e.to_string()),
        })?;
    }
    Ok(sent)
}

/// Sends the notices waiting now, in the background: the work that made
/// one is told at once instead of at the next drain, which retries it if
/// this fails.
pub fn drain_soon(db: Database, identity: Option<PeerChannel>) {
    tokio::spawn(async move {
        if let Err(e) = drain(&db, identity).await {
            tracing::warn!(error = %e, "staff not told of work waiting for them yet; retried later");
        }
    });
}

/// Age of the oldest notice to staff a service has not sent yet, seconds,
/// by `service` (0 when none waits): alert when it grows (identity
/// unreachable from the service or refusing it, or its mail gateway down).
pub const LAG: &str = "confidant.staff_notices.lag";

/// How often each replica looks at its outbox for [`LAG`].
pub const LAG_LOOK: Duration = Duration::from_secs(30);

/// When the oldest notice of `db`'s outbox not sent yet was written, if
/// one waits.
pub async fn oldest_unsent(db: &Database) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let oldest: Option<(DateTime<Utc>,)> = db
        .fetch_optional(
            "SELECT created_at FROM staff_notice_outbox WHERE sent_at IS NULL \
             ORDER BY created_at LIMIT 1",
            vec![],
        )
        .await?;
    Ok(oldest.map(|(at,)| at))
}

/// What the gauge [`LAG`] reports: when the oldest unsent notice was
/// written, as last seen.
#[derive(Debug, Default)]
struct Oldest(std::sync::Mutex<Option<DateTime<Utc>>>);

impl Oldest {
    fn set(&self, at: Option<DateTime<Utc>>) {
        if let Ok(mut oldest) = self.0.lock() {
            *oldest = at;
        }
    }

    /// How long it has waited by `now` (it keeps growing between looks,
    /// so a look that stops coming does not hide it).
    fn age(&self, now: DateTime<Utc>) -> Duration {
        let oldest = self.0.lock().map(|o| *o).unwrap_or_default();
        oldest
            .and_then(|at| (now - at).to_std().ok())
            .unwrap_or_default()
    }
}

/// Reports [`LAG`] for `service`'s outbox in `db`, looking at it every
/// `every` until `shutdown`. Every replica looks for itself: the drains run
/// on whichever replica made the work or holds the sweep.
pub async fn report_lag(
    service: &'static str,
    db: Database,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let oldest = std::sync::Arc::new(Oldest::default());
    let seen = std::sync::Arc::downgrade(&oldest);
    let _gauge = opentelemetry::global::meter("confidant")
        .f64_observable_gauge(LAG)
        .with_unit("s")
        .with_description("Age of the oldest notice to staff not yet sent")
        .with_callback(move |o| {
            if let Some(oldest) = seen.upgrade() {
                o.observe(
                    oldest.age(Utc::now()).as_secs_f64(),
                    &[opentelemetry::KeyValue::new("service", service)],
                );
            }
        })
        .build();
    crate::app::every(every, shutdown, || async {
        match oldest_unsent(&db).await {
            Ok(at) => oldest.set(at),
            Err(e) => tracing::warn!(error = %e, "staff notice outbox not read"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_grows_until_the_oldest_notice_goes() {
        let oldest = Oldest::default();
        let now = Utc::now();
        assert_eq!(oldest.age(now), Duration::ZERO, "none waits");
        oldest.set(Some(now - chrono::Duration::seconds(90)));
        assert_eq!(oldest.age(now), Duration::from_secs(90));
        assert_eq!(
            oldest.age(now + chrono::Duration::seconds(30)),
            Duration::from_secs(120),
            "it grows between looks"
        );
        oldest.set(None);
        assert_eq!(oldest.age(now), Duration::ZERO, "sent");
    }
}
