//! Clients proving who they are: a one-time code sent over a contact
//! channel, exchanged for a short-lived client token; and identity-document
//! checks recorded by staff. Addresses, codes and document numbers are kept
//! only as keyed hashes.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::{ActorKind, Outcome};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::auth::{CLIENT_AUDIENCE, ClientClaims};
use confidant_runtime::coord::SharedCoordinator;
use confidant_runtime::notify::{Message, Notifier};
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Database;
use uuid::Uuid;

use crate::reminders::{Claim, Delivery, deliver};
use crate::store::StoreError;
use crate::tokens::TokenKeys;

/// The one kind of notice to clients: their intake answers arrived.
pub const NOTICE_SUBMISSION_RECEIVED: &str = "submission_received";

/// A notice to a client another service asked for (NotifyClient).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientNotice {
    /// The asker's id of it: it is sent once under it.
    pub id: String,
    /// The client.
    pub client: Uuid,
    /// The contact channel (1 e-mail, 2 phone).
    pub channel: i32,
    /// The contact address, which the client must have verified.
    pub address: zeroize::Zeroizing<String>,
    /// What it is about (a submission).
    pub reference: Uuid,
    /// When it happened.
    pub at: DateTime<Utc>,
}

impl std::fmt::Debug for ClientNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientNotice")
            .field("id", &self.id)
            .field("client", &self.client)
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

/// How long a one-time code lives.
pub const CODE_MINUTES: i64 = 10;
/// Wrong codes allowed per verification.
pub const MAX_ATTEMPTS: i32 = 5;
/// Verifications a client may start per hour.
pub const MAX_STARTS_PER_HOUR: u64 = 5;
/// How long a client token lives.
pub const CLIENT_TOKEN_MINUTES: i64 = 30;

/// Why a client verification step failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No such client.
    #[error("client not found")]
    UnknownClient,
    /// Too many verifications started recently.
    #[error("too many codes requested; try again later")]
    RateLimited,
    /// Wrong code, unknown verification, or out of attempts.
    #[error("invalid code")]
    InvalidCode,
    /// The code expired.
    #[error("the code has expired")]
    Expired,
    /// The code was used already.
    #[error("the code was used already")]
    Used,
    /// The notifier failed.
    #[error("could not send the code")]
    NotSent,
    /// A notice's contact address is not one the client verified.
    #[error("the client has not verified this contact address")]
    ContactNotVerified,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Coordination failed.
    #[error("coordination: {0}")]
    Coord(#[from] confidant_runtime::coord::Error),
}

impl From<sqlx::Error> for ClientError {
    fn from(e: sqlx::Error) -> Self {
        ClientError::Store(StoreError::Sqlx(e))
    }
}

impl From<confidant_runtime::portable::TransactError> for ClientError {
    fn from(e: confidant_runtime::portable::TransactError) -> Self {
        ClientError::Store(e.into())
    }
}

/// Client verification.
pub struct ClientVerification {
    db: Database,
    coord: SharedCoordinator,
    notifier: Arc<dyn Notifier>,
    pepper: hmac::Key,
    keys: Arc<crate::sessions::Sessions>,
    trust_domain: String,
}

impl std::fmt::Debug for ClientVerification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerification").finish_non_exhaustive()
    }
}

/// Verification id, client, reference, code hash, expiry, attempts, completion.
type VerificationRow = (
    Uuid,
    String,
    Vec<u8>,
    DateTime<Utc>,
    i32,
    Option<DateTime<Utc>>,
);

fn random_code() -> Result<String, ClientError> {
    let rng = SystemRandom::new();
    loop {
        let mut bytes = [0u8; 4];
        rng.fill(&mut bytes).map_err(|_| ClientError::NotSent)?;
        let n = u32::from_be_bytes(bytes);
        // Reject the top sliver so every code is equally likely.
        if n < 4_294_000_000 {
            return Ok(format!("{:06}", n % 1_000_000));
        }
    }
}

impl ClientVerification {
    /// Verification with a pepper (at least 32 bytes) for keyed hashes.
    pub fn new(
        db: Database,
        coord: SharedCoordinator,
        notifier: Arc<dyn Notifier>,
        pepper: &[u8],
        keys: Arc<crate::sessions::Sessions>,
        trust_domain: &str,
    ) -> Self {
        Self {
            db,
            coord,
            notifier,
            pepper: hmac::Key::new(hmac::HMAC_SHA256, pepper),
            keys,
            trust_domain: trust_domain.to_owned(),
        }
    }

    fn keyed(&self, parts: &[&[u8]]) -> Vec<u8> {
        hmac::sign(&self.pepper, &length_prefixed(parts))
            .as_ref()
            .to_vec()
    }

    fn event(&self, action: Action, client: Uuid, peer: &str) -> EventBuilder {
        EventBuilder::new(ServiceName::Identity, &self.trust_domain, action)
            .actor(ActorKind::Client, &client.to_string(), peer)
            .resource("client", &client.to_string())
            .scope(Some(client), None)
    }

    fn token_keys(&self) -> &TokenKeys {
        self.keys.keys()
    }

    /// Sends a code; returns the verification id and when the code expires.
    pub async fn start(
        &self,
        client: Uuid,
        channel: i32,
        address: &str,
        reference: &str,
        peer: &str,
    ) -> Result<(Uuid, DateTime<Utc>), ClientError> {
        let exists: Option<(Uuid,)> = self
            .db
            .fetch_optional(
                "SELECT id FROM clients WHERE id = $1",
                vec![Value::Uuid(client)],
            )
            .await?;
        if exists.is_none() {
            return Err(ClientError::UnknownClient);
        }
        let started = self
            .coord
            .increment(
                &format!("client-verification:{client}"),
                Duration::from_secs(3600),
            )
            .await?;
        if started > MAX_STARTS_PER_HOUR {
            return Err(ClientError::RateLimited);
        }
        let id = Uuid::now_v7();
        let code = zeroize::Zeroizing::new(random_code()?);
        let now = Utc::now();
        let expires = now + chrono::Duration::minutes(CODE_MINUTES);
        let event = self
            .event(Action::IdentityClientVerificationStarted, client, peer)
            .build();
        self.db
            .transact(
                vec![Statement::new(
                    "INSERT INTO client_verifications (id, client_id, channel, contact_hash, reference, code_hash, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    vec![
                        Value::Uuid(id),
                        Value::Uuid(client),
                        Value::Int(channel),
                        Value::Bytes(self.keyed(&[address.trim().to_lowercase().as_bytes()])),
                        Value::Text(reference.to_owned()),
                        Value::Bytes(self.keyed(&[id.as_bytes(), code.as_bytes()])),
                        Value::Time(now),
                        Value::Time(expires),
                    ],
                )],
                &[event],
            )
            .await?;
        let message = Message {
            channel: if channel == 2 { "phone" } else { "email" }.to_owned(),
            address: address.trim().to_owned(),
            subject: "Your verification code".to_owned(),
            body: format!(
                "Your code is {} . It expires in {CODE_MINUTES} minutes. If you did not ask for it, ignore this message.",
                code.as_str()
            ),
        };
        self.notifier.send(&message).await.map_err(|e| {
            tracing::warn!(error = %e, "client code not sent");
            ClientError::NotSent
        })?;
        Ok((id, expires))
    }

    /// Sends `notice` to its client, once under its id, if its address is
    /// one the client proved control of with a code; true when this call
    /// sent it, false when it went before (or another replica sends it).
    pub async fn notify(&self, notice: &ClientNotice, peer: &str) -> Result<bool, ClientError> {
        let address = notice.address.trim();
        let verified: Option<(Uuid,)> = self
            .db
            .fetch_optional(
                "SELECT id FROM client_verifications WHERE client_id = $1 AND channel = $2 \
                 AND contact_hash = $3 AND completed_at IS NOT NULL LIMIT 1",
                vec![
                    Value::Uuid(notice.client),
                    Value::Int(notice.channel),
                    Value::Bytes(self.keyed(&[address.to_lowercase().as_bytes()])),
                ],
            )
            .await?;
        if verified.is_none() {
            return Err(ClientError::ContactNotVerified);
        }
        let claim = Claim {
            insert: "INSERT INTO client_notices (notice_id, client_id, kind, sent_at) \
                     SELECT $1, $2, $3, $4 WHERE NOT EXISTS \
                     (SELECT 1 FROM client_notices WHERE notice_id = $1)",
            release: "DELETE FROM client_notices WHERE notice_id = $1",
            key: vec![Value::Text(notice.id.clone())],
            extra: vec![
                Value::Uuid(notice.client),
                Value::Text(NOTICE_SUBMISSION_RECEIVED.to_owned()),
                Value::Time(Utc::now()),
            ],
        };
        let message = Message {
            channel: if notice.channel == 2 {
                "phone"
            } else {
                "email"
            }
            .to_owned(),
            address: address.to_owned(),
            subject: "We received your answers".to_owned(),
            body: format!(
                "The firm received the answers you submitted on {} (reference {}). Nothing \
                 more is needed from you for now. If you did not submit them, contact the \
                 firm at once.",
                notice.at.format("%Y-%m-%d %H:%M UTC"),
                notice.reference,
            ),
        };
        let event = EventBuilder::new(
            ServiceName::Identity,
            &self.trust_domain,
            Action::IdentityClientNotified,
        )
        .actor(ActorKind::Service, peer, peer)
        .resource("client", &notice.client.to_string())
        .scope(Some(notice.client), None)
        .outcome(Outcome::Allowed, NOTICE_SUBMISSION_RECEIVED)
        .related([
            ("notice", notice.id.clone()),
            ("reference", notice.reference.to_string()),
        ])
        .build();
        match deliver(&self.db, self.notifier.as_ref(), claim, &message, event).await? {
            Delivery::Sent => Ok(true),
            Delivery::Claimed => Ok(false),
            Delivery::Failed => Err(ClientError::NotSent),
        }
    }

    /// Exchanges a code for a client token; returns it, its expiry and the
    /// client's verification level.
    pub async fn complete(
        &self,
        id: Uuid,
        code: &str,
        peer: &str,
    ) -> Result<(String, DateTime<Utc>, i32), ClientError> {
        let row: Option<VerificationRow> = self
            .db
            .fetch_optional(
                "SELECT client_id, reference, code_hash, expires_at, attempts, completed_at FROM client_verifications WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await?;
        let Some((client, reference, code_hash, expires, _, completed)) = row else {
            return Err(ClientError::InvalidCode);
        };
        let now = Utc::now();
        if completed.is_some() {
            return Err(ClientError::Used);
        }
        if expires <= now {
            return Err(ClientError::Expired);
        }
        // Count the attempt first, so parallel guesses cannot exceed the limit.
        let counted = self
            .db
            .transact(
                vec![Statement::new(
                    "UPDATE client_verifications SET attempts = attempts + 1 \
                     WHERE id = $1 AND attempts < $2 AND completed_at IS NULL",
                    vec![Value::Uuid(id), Value::Int(MAX_ATTEMPTS)],
                )],
                &[],
            )
            .await?[0];
        let matches = hmac::verify(
            &self.pepper,
            &length_prefixed(&[id.as_bytes(), code.as_bytes()]),
            &code_hash,
        )
        .is_ok();
        if counted != 1 || !matches {
            let event = self
                .event(Action::IdentityClientVerified, client, peer)
                .outcome(
                    Outcome::Denied,
                    if counted != 1 {
                        "too_many_attempts"
                    } else {
                        "wrong_code"
                    },
                )
                .build();
            self.db.transact(Vec::new(), &[event]).await?;
            return Err(ClientError::InvalidCode);
        }
        let event = self
            .event(Action::IdentityClientVerified, client, peer)
            .build();
        let done = self
            .db
            .transact(
                vec![
                    Statement::new(
                        "UPDATE client_verifications SET completed_at = $1 WHERE id = $2 AND completed_at IS NULL",
                        vec![Value::Time(now), Value::Uuid(id)],
                    ),
                    Statement::new(
                        "UPDATE clients SET verification_level = 1 WHERE id = $1 AND verification_level < 1",
                        vec![Value::Uuid(client)],
                    ),
                ],
                &[event],
            )
            .await?;
        if done[0] != 1 {
            return Err(ClientError::Used);
        }
        let level = self.level(client).await?;
        let token_expires = now + chrono::Duration::minutes(CLIENT_TOKEN_MINUTES);
        let claims = ClientClaims {
            iss: self.token_keys().issuer().to_owned(),
            aud: CLIENT_AUDIENCE.to_owned(),
            sub: client.to_string(),
            reference,
            level,
            iat: now.timestamp(),
            exp: token_expires.timestamp(),
            jti: Uuid::now_v7().to_string(),
        };
        let token = self
            .token_keys()
            .sign_any(&claims)
            .map_err(|_| ClientError::NotSent)?;
        Ok((token, token_expires, level))
    }

    async fn level(&self, client: Uuid) -> Result<i32, ClientError> {
        let row: Option<(i32,)> = self
            .db
            .fetch_optional(
                "SELECT verification_level FROM clients WHERE id = $1",
                vec![Value::Uuid(client)],
            )
            .await?;
        row.map(|(l,)| l).ok_or(ClientError::UnknownClient)
    }

    /// Records a document check; returns the client's level (2).
    pub async fn record_document_check(
        &self,
        client: Uuid,
        document_type: &str,
        country: &str,
        number: &str,
        staff: Uuid,
        peer: &str,
    ) -> Result<i32, ClientError> {
        self.level(client).await?;
        let known: Option<(Uuid,)> = self
            .db
            .fetch_optional(
                "SELECT id FROM staff WHERE id = $1",
                vec![Value::Uuid(staff)],
            )
            .await?;
        if known.is_none() {
            return Err(ClientError::Store(StoreError::NotFound("staff member")));
        }
        let normalised: String = number
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_uppercase();
        let event = EventBuilder::new(
            ServiceName::Identity,
            &self.trust_domain,
            Action::IdentityDocumentChecked,
        )
        .actor(ActorKind::Staff, &staff.to_string(), peer)
        .resource("client", &client.to_string())
        .scope(Some(client), None)
        .build();
        self.db
            .transact(
                vec![
                    Statement::new(
                        "INSERT INTO identity_document_checks (id, client_id, document_type, issuing_country, number_hash, verified_by, verified_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        vec![
                            Value::Uuid(Uuid::now_v7()),
                            Value::Uuid(client),
                            Value::Text(document_type.to_owned()),
                            Value::Text(country.to_owned()),
                            Value::Bytes(self.keyed(&[country.as_bytes(), normalised.as_bytes()])),
                            Value::Uuid(staff),
                            Value::Time(Utc::now()),
                        ],
                    ),
                    Statement::new(
                        "UPDATE clients SET verification_level = 2 WHERE id = $1",
                        vec![Value::Uuid(client)],
                    ),
                ],
                &[event],
            )
            .await?;
        self.level(client).await
    }
}

/// The message [`ClientVerification::keyed`] authenticates.
fn length_prefixed(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}
