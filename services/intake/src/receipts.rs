//! Receipts to clients: once a client's answers are stored, the client is
//! told that the firm received them, when, and under which reference (never
//! the answers), at the contact the invitation went to and the client
//! proved control of. A client who did not submit them learns at once that
//! someone did in their name.
//!
//! Identity sends it (`NotifyClient`: it holds the gateway and checks that
//! the address is one the client verified) once per submission. A receipt
//! identity could not send is sent again by the next look (every minute),
//! for a day; `intake_submissions.receipt_sent_at` marks each that went.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_proto::identity::v1::{ClientNoticeKind, ContactChannel, NotifyClientRequest};
use confidant_runtime::client::PeerChannel;
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::secret_box::SecretBox;
use confidant_runtime::storage::Database;
use uuid::Uuid;

/// How long after a submission its receipt is still sent.
pub const SENT_WITHIN: chrono::Duration = chrono::Duration::days(1);
/// How long identity may take over one receipt.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A submission whose receipt has not gone.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Unsent {
    id: Uuid,
    client_id: Uuid,
    invitation_id: Uuid,
    submitted_at: DateTime<Utc>,
    contact_channel: String,
    contact_sealed: Vec<u8>,
}

/// Why receipts were not sent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No identity service to send through.
    #[error("identity is not configured")]
    NoIdentity,
    /// The submissions could not be read or marked.
    #[error("receipts: {0}")]
    Store(String),
    /// Identity could not be reached or failed.
    #[error("identity: {}", .0.message())]
    Identity(tonic::Status),
}

/// Sends the receipts of the submissions since `now - SENT_WITHIN` (or of
/// `only` that one) that have not gone; returns how many went.
pub async fn send(
    db: &Database,
    secrets: &SecretBox,
    identity: Option<PeerChannel>,
    only: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<usize, Error> {
    let rows: Vec<Unsent> = db
        .fetch_all(
            "SELECT s.id, s.client_id, i.id AS invitation_id, i.submitted_at, i.contact_channel, \
             i.contact_sealed FROM intake_submissions s \
             JOIN intake_invitations i ON i.id = s.invitation_id \
             WHERE s.receipt_sent_at IS NULL AND i.contact_sealed IS NOT NULL \
             AND i.submitted_at > $1 AND ($2 IS NULL OR s.id = $2) \
             ORDER BY i.submitted_at LIMIT 100",
            vec![Value::Time(now - SENT_WITHIN), Value::OptUuid(only)],
        )
        .await
        .map_err(|e| Error::Store(e.to_string()))?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut identity = IdentityServiceClient::new(identity.ok_or(Error::NoIdentity)?);
    let mut sent = 0;
    for row in rows {
        let Ok(address) = secrets.open(row.invitation_id.as_bytes(), &row.contact_sealed) else {
            tracing::error!(submission = %row.id, "the invitation's contact does not open; no receipt");
            mark(db, row.id, now).await?;
            continue;
        };
        let channel = if row.contact_channel == "phone" {
            ContactChannel::Phone
        } else {
            ContactChannel::Email
        };
        let mut request = tonic::Request::new(NotifyClientRequest {
            notice_id: format!("receipt:{}", row.id),
            kind: ClientNoticeKind::SubmissionReceived as i32,
            client_id: row.client_id.to_string(),
            channel: channel as i32,
            contact_address: String::from_utf8_lossy(&address).into_owned(),
            reference_id: row.id.to_string(),
            occur_time: Some(prost_types::Timestamp {
                seconds: row.submitted_at.timestamp(),
                nanos: 0,
            }),
        });
        request.set_timeout(CALL_TIMEOUT);
        match identity.notify_client(request).await {
            Ok(answer) => sent += usize::from(answer.into_inner().sent),
            // It will never be accepted: do not send it for ever.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                ) =>
            {
                tracing::error!(submission = %row.id, message = %status.message(), "identity refused a client's receipt; it is dropped");
            }
            Err(status) => return Err(Error::Identity(status)),
        }
        mark(db, row.id, now).await?;
    }
    Ok(sent)
}

/// Marks the receipt of submission `id` as gone.
async fn mark(db: &Database, id: Uuid, now: DateTime<Utc>) -> Result<(), Error> {
    db.transact(
        vec![Statement::new(
            "UPDATE intake_submissions SET receipt_sent_at = $2 WHERE id = $1",
            vec![Value::Uuid(id), Value::Time(now)],
        )],
        &[],
    )
    .await
    .map(|_| ())
    .map_err(|e| Error::Store(e.to_string()))
}

/// Sends submission `id`'s receipt now, in the background (the minute's
/// look sends it if this fails).
pub fn send_soon(db: Database, secrets: Arc<SecretBox>, identity: Option<PeerChannel>, id: Uuid) {
    tokio::spawn(async move {
        if let Err(e) = send(&db, &secrets, identity, Some(id), Utc::now()).await {
            tracing::warn!(error = %e, "client's receipt not sent yet; retried within a minute");
        }
    });
}
