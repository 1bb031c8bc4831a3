//! Staff sign-in: passwords, TOTP enrolment, sessions with rotating refresh
//! tokens, lockout after repeated failures (shared by replicas through the
//! coordinator), and revocation that every replica sees at once.

use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::{ActorKind, AuditEvent, Outcome};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::config::IdentityConfig;
use confidant_runtime::coord::SharedCoordinator;
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Database;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::credentials;
use crate::store::StoreError;
use crate::tokens::{AUDIENCE, Claims, TokenKeys};

/// Why a sign-in step failed. Callers learn as little as possible: every
/// credential failure looks the same.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong e-mail, password or code (indistinguishable on purpose).
    #[error("invalid credentials")]
    BadCredentials,
    /// Too many failures: locked for the lockout window.
    #[error("account locked after repeated failed sign-ins")]
    Locked,
    /// The password was right but no TOTP authenticator is confirmed.
    #[error("a TOTP authenticator must be enrolled first")]
    TotpNotEnrolled,
    /// TOTP is already confirmed; enrolment is closed.
    #[error("a TOTP authenticator is already enrolled")]
    TotpAlreadyEnrolled,
    /// Password and code were right, but the password is a temporary one
    /// an administrator set: it must be changed first.
    #[error("the password must be changed before signing in")]
    PasswordChangeRequired,
    /// The session was ended, expired, or its refresh token was reused.
    #[error("session ended")]
    SessionEnded,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The coordinator failed.
    #[error("coordination: {0}")]
    Coord(#[from] confidant_runtime::coord::Error),
    /// Token signing failed.
    #[error("token: {0}")]
    Token(#[from] crate::tokens::Error),
    /// Hashing, randomness or sealing failed (never a caller's fault).
    #[error("a cryptographic operation failed")]
    Crypto,
}

impl From<sqlx::Error> for AuthError {
    fn from(e: sqlx::Error) -> Self {
        AuthError::Store(StoreError::Sqlx(e))
    }
}

impl From<confidant_runtime::portable::TransactError> for AuthError {
    fn from(e: confidant_runtime::portable::TransactError) -> Self {
        AuthError::Store(e.into())
    }
}

/// Tokens handed to a signed-in client.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Session id.
    pub session_id: Uuid,
    /// Access token (JWT).
    pub access_token: String,
    /// When it expires.
    pub access_expires: DateTime<Utc>,
    /// Refresh token (single use).
    pub refresh_token: Zeroizing<String>,
    /// When the session ends at the latest.
    pub session_expires: DateTime<Utc>,
}

pub use confidant_runtime::auth::revoked_session_key;

/// Sign-in and sessions.
pub struct Sessions {
    secrets: std::sync::Arc<confidant_runtime::secret_box::SecretBox>,
    db: Database,
    coord: SharedCoordinator,
    keys: TokenKeys,
    config: IdentityConfig,
    trust_domain: String,
    /// Where staff members' security notices go (none: not sent).
    notifier: Option<std::sync::Arc<dyn confidant_runtime::notify::Notifier>>,
}

/// A change to a staff member's sign-in that they are told of by e-mail,
/// so that one they did not make does not go unnoticed.
#[derive(Debug, Clone, Copy)]
pub enum Notice {
    /// An administrator set their password (`true`: a temporary one).
    PasswordSet(bool),
    /// They changed their password, through the application named.
    PasswordChanged,
    /// An administrator removed their authenticator.
    AuthenticatorRemoved,
    /// An administrator ended all their sessions.
    SignedOut,
    /// An administrator changed their work e-mail address.
    AddressChanged,
}

impl Notice {
    /// Subject and body of the notice, for a change made at `at` through
    /// the application (or administrator tool) named `through`.
    fn message(self, at: DateTime<Utc>, through: &str) -> (&'static str, String) {
        let when = at.format("%Y-%m-%d %H:%M UTC");
        let (subject, what) = match self {
            Notice::PasswordSet(temporary) => (
                "Your Confidant password was set by an administrator",
                format!(
                    "An administrator ({through}) set a new password for your account on {when}, \
                     and your sessions were ended.{}",
                    if temporary {
                        " It is a temporary one: you will choose your own when you next sign in."
                    } else {
                        ""
                    }
                ),
            ),
            Notice::PasswordChanged => (
                "Your Confidant password was changed",
                format!(
                    "Your password was changed on {when} through {through}, and your other \
                     sessions were ended."
                ),
            ),
            Notice::AuthenticatorRemoved => (
                "Your Confidant authenticator was removed",
                format!(
                    "An administrator ({through}) removed the authenticator of your account on \
                     {when}, and your sessions were ended. You will enrol a new one when you \
                     next sign in."
                ),
            ),
            Notice::SignedOut => (
                "You were signed out of Confidant",
                format!(
                    "An administrator ({through}) ended all your sessions on {when}. Sign in \
                     again to go on."
                ),
            ),
            Notice::AddressChanged => (
                "Your Confidant e-mail address was changed",
                format!(
                    "An administrator ({through}) changed the e-mail address of your account on \
                     {when}; you sign in with the new one. This notice goes to the old and the \
                     new address."
                ),
            ),
        };
        (
            subject,
            format!(
                "{what}\n\nIf this was not you, or not at your request, tell your firm's \
                 security officer at once."
            ),
        )
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

type CredentialRow = (
    Uuid,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<Vec<u8>>,
    Option<DateTime<Utc>>,
    Option<i32>,
    Option<i64>,
);

/// session, used at, staff, session expiry, session revocation.
type RefreshRow = (
    Uuid,
    Option<DateTime<Utc>>,
    Uuid,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

struct Account {
    staff_id: Uuid,
    disabled: bool,
    password_hash: Option<String>,
    totp_secret: Option<Zeroizing<Vec<u8>>>,
    totp_confirmed: bool,
    /// The password is a temporary one (SetPassword's `temporary`).
    must_change_password: bool,
    /// The last TOTP time step accepted.
    totp_last_step: Option<i64>,
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn new_refresh_token() -> Result<Zeroizing<String>, AuthError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| AuthError::Crypto)?;
    Ok(Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

impl Sessions {
    /// Sign-in over `db`, with token `keys`.
    pub fn new(
        db: Database,
        coord: SharedCoordinator,
        keys: TokenKeys,
        config: IdentityConfig,
        trust_domain: &str,
        secrets: std::sync::Arc<confidant_runtime::secret_box::SecretBox>,
    ) -> Self {
        Self {
            secrets,
            db,
            coord,
            keys,
            config,
            trust_domain: trust_domain.to_owned(),
            notifier: None,
        }
    }

    /// Sends staff members' security notices through `notifier`.
    pub fn with_notifier(
        mut self,
        notifier: std::sync::Arc<dyn confidant_runtime::notify::Notifier>,
    ) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Tells `staff_id` by e-mail of `notice`, made at `at` by the peer
    /// `peer`. The change is made whether or not the notice goes out: a
    /// failure is logged (without the address).
    pub async fn notify(&self, staff_id: Uuid, notice: Notice, at: DateTime<Utc>, peer: &str) {
        if self.notifier.is_none() {
            return;
        }
        let email: Option<(String,)> = match self
            .db
            .fetch_optional(
                "SELECT email FROM staff WHERE id = $1",
                vec![Value::Uuid(staff_id)],
            )
            .await
        {
            Ok(email) => email,
            Err(e) => {
                tracing::warn!(error = %e, "a staff notice was not sent: the address was not read");
                return;
            }
        };
        let Some((address,)) = email else {
            return;
        };
        self.notify_at(address, notice, at, peer).await;
    }

    /// [`Self::notify`] at `address`.
    pub async fn notify_at(&self, address: String, notice: Notice, at: DateTime<Utc>, peer: &str) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        let through = peer.rsplit('/').next().unwrap_or(peer);
        let (subject, body) = notice.message(at, through);
        let message = confidant_runtime::notify::Message {
            channel: "email".into(),
            address,
            subject: subject.into(),
            body,
        };
        if let Err(e) = notifier.send(&message).await {
            tracing::warn!(error = %e.0, ?notice, "a staff notice was not sent");
        }
    }

    /// The token keys (for the JWKS).
    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    fn event(&self, action: Action, staff: Option<Uuid>, peer: &str) -> EventBuilder {
        let id = staff
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        EventBuilder::new(ServiceName::Identity, &self.trust_domain, action)
            .actor(ActorKind::Staff, &id, peer)
            .resource("staff", &id)
    }

    async fn account(&self, email: &str) -> Result<Option<Account>, AuthError> {
        let row: Option<CredentialRow> = self
            .db
            .fetch_optional(
                "SELECT s.id, s.disabled_at, c.password_hash, c.totp_secret, c.totp_confirmed_at, \
                 c.must_change_password, c.totp_last_step \
                 FROM staff s LEFT JOIN credentials c ON c.staff_id = s.id WHERE s.email = $1",
                vec![Value::Text(email.to_lowercase())],
            )
            .await?;
        let Some((staff_id, disabled, hash, sealed, confirmed, must_change, last_step)) = row
        else {
            return Ok(None);
        };
        // TOTP seeds are stored sealed, bound to their staff member.
        let totp_secret =
            match sealed {
                Some(sealed) => Some(self.secrets.open(staff_id.as_bytes(), &sealed).map_err(
                    |e| {
                        tracing::error!(error = %e, "a stored TOTP seed does not open");
                        AuthError::Crypto
                    },
                )?),
                None => None,
            };
        Ok(Some(Account {
            staff_id,
            disabled: disabled.is_some_and(|d| d <= Utc::now()),
            password_hash: hash,
            totp_secret,
            totp_confirmed: confirmed.is_some(),
            must_change_password: must_change.unwrap_or(0) != 0,
            totp_last_step: last_step,
        }))
    }

    fn failures_key(email: &str) -> String {
        format!("login-failures:{}", email.to_lowercase())
    }

    fn lockout_window(&self) -> Duration {
        Duration::from_secs(self.config.lockout_minutes.saturating_mul(60))
    }

    async fn locked(&self, email: &str) -> Result<bool, AuthError> {
        let count = self
            .coord
            .get(&Self::failures_key(email))
            .await?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(count >= self.config.max_failed_logins)
    }

    async fn fail(
        &self,
        email: &str,
        account: Option<&Account>,
        reason: &str,
        peer: &str,
    ) -> Result<AuthError, AuthError> {
        self.coord
            .increment(&Self::failures_key(email), self.lockout_window())
            .await?;
        let event = self
            .event(
                Action::IdentityLoginFailed,
                account.map(|a| a.staff_id),
                peer,
            )
            .outcome(Outcome::Denied, reason)
            .build();
        self.db.transact(Vec::new(), &[event]).await?;
        Ok(AuthError::BadCredentials)
    }

    /// Checks e-mail and password (with lockout); returns the account.
    async fn check_password(
        &self,
        email: &str,
        password: &str,
        peer: &str,
    ) -> Result<Account, AuthError> {
        if self.locked(email).await? {
            let event = self
                .event(Action::IdentityLoginFailed, None, peer)
                .outcome(Outcome::Denied, "account_locked")
                .build();
            self.db.transact(Vec::new(), &[event]).await?;
            return Err(AuthError::Locked);
        }
        let account = self.account(email).await?;
        let hash = account
            .as_ref()
            .and_then(|a| a.password_hash.clone())
            .unwrap_or_else(|| credentials::dummy_hash().to_owned());
        // Verify even for unknown accounts, so timing does not tell.
        let matches = credentials::verify_password(password, &hash);
        match account {
            Some(a) if matches && a.password_hash.is_some() => {
                if a.disabled {
                    return Err(self.fail(email, Some(&a), "account_disabled", peer).await?);
                }
                Ok(a)
            }
            other => Err(self
                .fail(email, other.as_ref(), "bad_credentials", peer)
                .await?),
        }
    }

    /// Sets a password (`temporary`: to be changed before signing in) and
    /// ends the staff member's sessions.
    pub async fn set_password(
        &self,
        staff_id: Uuid,
        password: &str,
        temporary: bool,
        peer: &str,
    ) -> Result<(), AuthError> {
        let hash = credentials::hash_password(password).map_err(|_| AuthError::Crypto)?;
        if !self.staff_exists(staff_id).await? {
            return Err(AuthError::Store(StoreError::NotFound("staff member")));
        }
        let now = Utc::now();
        let event = self
            .event(Action::IdentityPasswordSet, Some(staff_id), peer)
            .outcome(
                Outcome::Allowed,
                if temporary { "temporary" } else { "permanent" },
            )
            .at(now)
            .build();
        self.db
            .transact(
                vec![
                    Statement::new(
                        "INSERT INTO credentials (staff_id, password_hash, password_set_at, must_change_password) \
                         VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (staff_id) DO UPDATE SET password_hash = excluded.password_hash, \
                         password_set_at = excluded.password_set_at, \
                         must_change_password = excluded.must_change_password",
                        vec![
                            Value::Uuid(staff_id),
                            Value::Text(hash),
                            Value::Time(now),
                            Value::Int(i32::from(temporary)),
                        ],
                    ),
                    sessions_ended(staff_id, "password_set", now),
                ],
                &[event],
            )
            .await?;
        self.publish_ended(staff_id, "password_set", now).await?;
        self.notify(staff_id, Notice::PasswordSet(temporary), now, peer)
            .await;
        Ok(())
    }

    /// A staff member changes their own password, proving the current one
    /// and a TOTP code: their other sessions end, and a new one opens.
    pub async fn change_password(
        &self,
        email: &str,
        current: &str,
        code: &str,
        new: &str,
        peer: &str,
    ) -> Result<Issued, AuthError> {
        let account = self.check_password(email, current, peer).await?;
        self.require_totp(&account, peer).await?;
        if !self.accept_code(&account, code).await? {
            return Err(self
                .fail(email, Some(&account), "bad_totp_code", peer)
                .await?);
        }
        self.coord.delete(&Self::failures_key(email)).await?;
        let hash = credentials::hash_password(new).map_err(|_| AuthError::Crypto)?;
        let staff_id = account.staff_id;
        let now = Utc::now();
        let changed = self
            .event(Action::IdentityPasswordChanged, Some(staff_id), peer)
            .at(now)
            .build();
        let issued = self
            .open_session(
                staff_id,
                now,
                vec![
                    Statement::new(
                        "UPDATE credentials SET password_hash = $1, password_set_at = $2, \
                         must_change_password = 0 WHERE staff_id = $3",
                        vec![Value::Text(hash), Value::Time(now), Value::Uuid(staff_id)],
                    )
                    .expecting(1),
                    sessions_ended(staff_id, "password_changed", now),
                ],
                vec![changed],
                peer,
            )
            .await?;
        self.publish_ended(staff_id, "password_changed", now)
            .await?;
        // The address they signed in with is the one the notice goes to.
        self.notify_at(email.to_lowercase(), Notice::PasswordChanged, now, peer)
            .await;
        Ok(issued)
    }

    /// An administrator removes a staff member's TOTP authenticator (a lost
    /// device): their sessions end; they enrol again with their password.
    /// `event` is the administrator's `identity.totp.reset`.
    pub async fn reset_totp(&self, staff_id: Uuid, event: AuditEvent) -> Result<(), AuthError> {
        let row: Option<(Option<Vec<u8>>,)> = self
            .db
            .fetch_optional(
                "SELECT c.totp_secret FROM staff s LEFT JOIN credentials c ON c.staff_id = s.id \
                 WHERE s.id = $1",
                vec![Value::Uuid(staff_id)],
            )
            .await?;
        match row {
            None => return Err(AuthError::Store(StoreError::NotFound("staff member"))),
            Some((None,)) => return Err(AuthError::TotpNotEnrolled),
            Some((Some(_),)) => {}
        }
        let now = Utc::now();
        let by = peer_of(&event);
        self.db
            .transact(
                vec![
                    Statement::new(
                        "UPDATE credentials SET totp_secret = NULL, totp_confirmed_at = NULL, \
                         totp_last_step = NULL WHERE staff_id = $1 AND totp_secret IS NOT NULL",
                        vec![Value::Uuid(staff_id)],
                    )
                    .expecting(1),
                    sessions_ended(staff_id, "totp_reset", now),
                ],
                &[event],
            )
            .await
            .map_err(|e| match e {
                // Reset meanwhile by another administrator.
                confidant_runtime::portable::TransactError::Unmet { .. } => {
                    AuthError::TotpNotEnrolled
                }
                other => other.into(),
            })?;
        self.publish_ended(staff_id, "totp_reset", now).await?;
        self.notify(staff_id, Notice::AuthenticatorRemoved, now, &by)
            .await;
        Ok(())
    }

    /// A page of `staff_id`'s live sessions, newest first, after the
    /// session `after` holds (none: from the newest), at most `limit`; and
    /// the last one's id if more follow. `None` if there is no such staff
    /// member.
    pub async fn live_sessions(
        &self,
        staff_id: Uuid,
        after: Vec<Value>,
        limit: i64,
    ) -> Result<Option<(Vec<LiveSession>, Option<Uuid>)>, AuthError> {
        if !self.staff_exists(staff_id).await? {
            return Ok(None);
        }
        let mut values = vec![Value::Uuid(staff_id), Value::Time(Utc::now())];
        values.extend(after);
        values.push(Value::BigInt(limit + 1));
        type Row = (
            Uuid,
            DateTime<Utc>,
            DateTime<Utc>,
            Option<String>,
            Option<DateTime<Utc>>,
        );
        let mut rows: Vec<Row> = self
            .db
            .fetch_all(
                "SELECT s.id, s.created_at, s.expires_at, s.opened_by, \
                 (SELECT r.issued_at FROM refresh_tokens r WHERE r.session_id = s.id \
                 ORDER BY r.issued_at DESC LIMIT 1) \
                 FROM sessions s WHERE s.staff_id = $1 AND s.revoked_at IS NULL \
                 AND s.expires_at > $2 AND ($3 IS NULL OR s.id < $3) ORDER BY s.id DESC LIMIT $4",
                values,
            )
            .await?;
        let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next = more.then(|| rows.last().map(|r| r.0)).flatten();
        let sessions = rows
            .into_iter()
            .map(
                |(id, created_at, expires_at, opened_by, last_issued)| LiveSession {
                    id,
                    created_at,
                    expires_at,
                    opened_by,
                    last_issued,
                },
            )
            .collect();
        Ok(Some((sessions, next)))
    }

    /// The staff member a session belongs to, if it exists.
    pub async fn holder_of(&self, session_id: Uuid) -> Result<Option<Uuid>, AuthError> {
        let row: Option<(Uuid,)> = self
            .db
            .fetch_optional(
                "SELECT staff_id FROM sessions WHERE id = $1",
                vec![Value::Uuid(session_id)],
            )
            .await?;
        Ok(row.map(|(staff,)| staff))
    }

    /// Ends every live session of `staff_id` (an administrator's
    /// `identity.staff.signed_out`, `event`); returns how many.
    pub async fn end_all(&self, staff_id: Uuid, event: AuditEvent) -> Result<u64, AuthError> {
        if !self.staff_exists(staff_id).await? {
            return Err(AuthError::Store(StoreError::NotFound("staff member")));
        }
        let now = Utc::now();
        let by = peer_of(&event);
        let ended = self
            .db
            .transact(vec![sessions_ended(staff_id, "admin", now)], &[event])
            .await?[0];
        self.publish_ended(staff_id, "admin", now).await?;
        if ended > 0 {
            self.notify(staff_id, Notice::SignedOut, now, &by).await;
        }
        Ok(ended)
    }

    async fn staff_exists(&self, staff_id: Uuid) -> Result<bool, AuthError> {
        let found: Option<(Uuid,)> = self
            .db
            .fetch_optional(
                "SELECT id FROM staff WHERE id = $1",
                vec![Value::Uuid(staff_id)],
            )
            .await?;
        Ok(found.is_some())
    }

    /// Announces the end of the sessions of `staff_id` that
    /// [`sessions_ended`] ended at `at` for `reason` (read back once
    /// committed, so that one opened meanwhile is not missed).
    pub(crate) async fn publish_ended(
        &self,
        staff_id: Uuid,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let ended: Vec<(Uuid,)> = self
            .db
            .fetch_all(
                "SELECT id FROM sessions WHERE staff_id = $1 AND revoked_at = $2 \
                 AND revoke_reason = $3",
                vec![
                    Value::Uuid(staff_id),
                    Value::Time(at),
                    Value::Text(reason.to_owned()),
                ],
            )
            .await?;
        for (session,) in ended {
            self.publish_revocation(session).await?;
        }
        Ok(())
    }

    /// Refuses (and records) a sign-in step of an account without a
    /// confirmed authenticator.
    async fn require_totp(&self, account: &Account, peer: &str) -> Result<(), AuthError> {
        if account.totp_confirmed {
            return Ok(());
        }
        let event = self
            .event(Action::IdentityLoginFailed, Some(account.staff_id), peer)
            .outcome(Outcome::Denied, "totp_not_enrolled")
            .build();
        self.db.transact(Vec::new(), &[event]).await?;
        Err(AuthError::TotpNotEnrolled)
    }

    /// Starts TOTP enrolment; returns the new secret.
    pub async fn enroll_totp(
        &self,
        email: &str,
        password: &str,
        peer: &str,
    ) -> Result<Zeroizing<Vec<u8>>, AuthError> {
        let account = self.check_password(email, password, peer).await?;
        if account.totp_confirmed {
            return Err(AuthError::TotpAlreadyEnrolled);
        }
        let secret = credentials::new_totp_secret().map_err(|_| AuthError::Crypto)?;
        // A new enrolment replaces an unconfirmed one.
        self.db
            .transact(
                vec![Statement::new(
                    "UPDATE credentials SET totp_secret = $1, totp_last_step = NULL \
                     WHERE staff_id = $2 AND totp_confirmed_at IS NULL",
                    vec![
                        Value::Bytes(
                            self.secrets
                                .seal(account.staff_id.as_bytes(), &secret)
                                .map_err(|_| AuthError::Crypto)?,
                        ),
                        Value::Uuid(account.staff_id),
                    ],
                )],
                &[],
            )
            .await?;
        Ok(secret)
    }

    /// The time step of `code` if it is a current code of the account's
    /// authenticator that was not accepted before (nor one after it).
    fn fresh_step(account: &Account, code: &str) -> Option<i32> {
        let secret = account.totp_secret.as_ref()?;
        let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
        if !credentials::check_totp(secret, code, now) {
            return None;
        }
        // The step of the matching code: try the window the check allows.
        let step = [now / 30, now / 30 - 1, now / 30 + 1]
            .into_iter()
            .find(|s| credentials::totp_code(secret, s * 30) == code)
            .unwrap_or(now / 30);
        let step = i32::try_from(step % (i32::MAX as u64)).unwrap_or(0);
        account
            .totp_last_step
            .is_none_or(|last| last < i64::from(step))
            .then_some(step)
    }

    /// Accepts a TOTP code once: the same time step never signs in twice.
    async fn accept_code(&self, account: &Account, code: &str) -> Result<bool, AuthError> {
        let Some(step) = Self::fresh_step(account, code) else {
            return Ok(false);
        };
        // Guarded again: a concurrent request may have taken the step.
        let done = self
            .db
            .transact(
                vec![Statement::new(
                    "UPDATE credentials SET totp_last_step = $1 WHERE staff_id = $2 \
                     AND (totp_last_step IS NULL OR totp_last_step < $1)",
                    vec![Value::Int(step), Value::Uuid(account.staff_id)],
                )],
                &[],
            )
            .await?;
        Ok(done[0] == 1)
    }

    /// Completes TOTP enrolment.
    pub async fn confirm_totp(
        &self,
        email: &str,
        password: &str,
        code: &str,
        peer: &str,
    ) -> Result<(), AuthError> {
        let account = self.check_password(email, password, peer).await?;
        if account.totp_confirmed {
            return Err(AuthError::TotpAlreadyEnrolled);
        }
        if !self.accept_code(&account, code).await? {
            return Err(self
                .fail(email, Some(&account), "bad_totp_code", peer)
                .await?);
        }
        let now = Utc::now();
        let event = self
            .event(Action::IdentityTotpEnrolled, Some(account.staff_id), peer)
            .at(now)
            .build();
        self.db
            .transact(
                vec![Statement::new(
                    "UPDATE credentials SET totp_confirmed_at = $1 WHERE staff_id = $2",
                    vec![Value::Time(now), Value::Uuid(account.staff_id)],
                )],
                &[event],
            )
            .await?;
        Ok(())
    }

    async fn roles(&self, staff_id: Uuid) -> Result<Vec<String>, AuthError> {
        let rows: Vec<(String,)> = self
            .db
            .fetch_all(
                "SELECT role FROM staff_roles WHERE staff_id = $1 AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > $2) ORDER BY role",
                vec![Value::Uuid(staff_id), Value::Time(Utc::now())],
            )
            .await?;
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    fn access_token(
        &self,
        staff_id: Uuid,
        session_id: Uuid,
        roles: Vec<String>,
    ) -> Result<(String, DateTime<Utc>), AuthError> {
        let now = Utc::now();
        let expires = now
            + chrono::Duration::minutes(
                i64::try_from(self.config.access_token_minutes).unwrap_or(15),
            );
        let claims = Claims {
            iss: self.keys.issuer().to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: staff_id.to_string(),
            sid: session_id.to_string(),
            roles,
            iat: now.timestamp(),
            exp: expires.timestamp(),
            jti: Uuid::now_v7().to_string(),
        };
        Ok((self.keys.sign(&claims)?, expires))
    }

    /// Signs in with password and TOTP.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        code: &str,
        peer: &str,
    ) -> Result<Issued, AuthError> {
        let account = self.check_password(email, password, peer).await?;
        self.require_totp(&account, peer).await?;
        if account.must_change_password {
            // The code is checked but not spent: the application passes it
            // on to ChangePassword.
            if Self::fresh_step(&account, code).is_none() {
                return Err(self
                    .fail(email, Some(&account), "bad_totp_code", peer)
                    .await?);
            }
            let event = self
                .event(Action::IdentityLoginFailed, Some(account.staff_id), peer)
                .outcome(Outcome::Denied, "password_change_required")
                .build();
            self.db.transact(Vec::new(), &[event]).await?;
            return Err(AuthError::PasswordChangeRequired);
        }
        if !self.accept_code(&account, code).await? {
            return Err(self
                .fail(email, Some(&account), "bad_totp_code", peer)
                .await?);
        }
        self.coord.delete(&Self::failures_key(email)).await?;
        self.open_session(account.staff_id, Utc::now(), Vec::new(), Vec::new(), peer)
            .await
    }

    /// Opens a session for `staff_id` (`identity.login.succeeded`) in one
    /// transaction with `before` and `events`, and issues its tokens.
    async fn open_session(
        &self,
        staff_id: Uuid,
        now: DateTime<Utc>,
        mut before: Vec<Statement>,
        mut events: Vec<AuditEvent>,
        peer: &str,
    ) -> Result<Issued, AuthError> {
        let session_id = Uuid::now_v7();
        let session_expires =
            now + chrono::Duration::hours(i64::try_from(self.config.session_hours).unwrap_or(12));
        let refresh = new_refresh_token()?;
        events.push(
            self.event(Action::IdentityLoginSucceeded, Some(staff_id), peer)
                .at(now)
                .build(),
        );
        before.extend([
            Statement::new(
                "INSERT INTO sessions (id, staff_id, created_at, expires_at, opened_by) \
                 VALUES ($1, $2, $3, $4, $5)",
                vec![
                    Value::Uuid(session_id),
                    Value::Uuid(staff_id),
                    Value::Time(now),
                    Value::Time(session_expires),
                    Value::Text(peer.to_owned()),
                ],
            ),
            refresh_insert(&refresh, session_id, now),
        ]);
        self.db.transact(before, &events).await?;
        let (access_token, access_expires) =
            self.access_token(staff_id, session_id, self.roles(staff_id).await?)?;
        Ok(Issued {
            session_id,
            access_token,
            access_expires,
            refresh_token: refresh,
            session_expires,
        })
    }

    /// Exchanges a refresh token; a reused one ends its session.
    pub async fn refresh(&self, token: &str, peer: &str) -> Result<Issued, AuthError> {
        let hash = sha256(token.as_bytes());
        let row: Option<RefreshRow> = self
            .db
            .fetch_optional(
                "SELECT r.session_id, r.used_at, s.staff_id, s.expires_at, s.revoked_at FROM refresh_tokens r \
                 JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = $1",
                vec![Value::Bytes(hash.clone())],
            )
            .await?;
        let Some((session_id, used, staff_id, expires, revoked)) = row else {
            return Err(AuthError::SessionEnded);
        };
        let now = Utc::now();
        if used.is_some() {
            // Somebody holds an old token: end the session for everyone.
            self.revoke(session_id, "refresh_token_reuse", Some(staff_id), peer)
                .await?;
            return Err(AuthError::SessionEnded);
        }
        if revoked.is_some() || expires <= now {
            return Err(AuthError::SessionEnded);
        }
        let disabled: Option<(Option<DateTime<Utc>>,)> = self
            .db
            .fetch_optional(
                "SELECT disabled_at FROM staff WHERE id = $1",
                vec![Value::Uuid(staff_id)],
            )
            .await?;
        if disabled.and_then(|(d,)| d).is_some_and(|d| d <= now) {
            self.revoke(session_id, crate::store::DISABLED, Some(staff_id), peer)
                .await?;
            return Err(AuthError::SessionEnded);
        }
        // Spend the presented token and issue the next in one transaction.
        // Only the request that flips `used_at` may go on; if a concurrent
        // duplicate got there first, the session ends below, which also
        // strands the token inserted here.
        let next = new_refresh_token()?;
        let marked = self
            .db
            .transact(
                vec![
                    Statement::new(
                        "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
                        vec![Value::Time(now), Value::Bytes(hash.clone())],
                    ),
                    refresh_insert(&next, session_id, now),
                ],
                &[],
            )
            .await?[0];
        if marked != 1 {
            // A concurrent refresh used it first: treat as reuse.
            self.revoke(session_id, "refresh_token_reuse", Some(staff_id), peer)
                .await?;
            return Err(AuthError::SessionEnded);
        }
        let (access_token, access_expires) =
            self.access_token(staff_id, session_id, self.roles(staff_id).await?)?;
        Ok(Issued {
            session_id,
            access_token,
            access_expires,
            refresh_token: next,
            session_expires: expires,
        })
    }

    async fn publish_revocation(&self, session_id: Uuid) -> Result<(), AuthError> {
        // Access tokens live at most this long; after that the mark can go.
        let ttl = Duration::from_secs(
            self.config
                .access_token_minutes
                .saturating_mul(60)
                .saturating_add(60),
        );
        confidant_runtime::auth::revoke_session(self.coord.as_ref(), &session_id.to_string(), ttl)
            .await?;
        Ok(())
    }

    /// Ends a session now, on every replica.
    pub async fn revoke(
        &self,
        session_id: Uuid,
        reason: &str,
        staff: Option<Uuid>,
        peer: &str,
    ) -> Result<(), AuthError> {
        let event: AuditEvent = self
            .event(Action::IdentitySessionRevoked, staff, peer)
            .resource("session", &session_id.to_string())
            .outcome(Outcome::Allowed, reason)
            .build();
        let done = self
            .db
            .transact(
                vec![crate::store::session_ended(session_id, reason, Utc::now())],
                &[event],
            )
            .await?;
        if done[0] == 0 {
            let exists: Option<(Uuid,)> = self
                .db
                .fetch_optional(
                    "SELECT id FROM sessions WHERE id = $1",
                    vec![Value::Uuid(session_id)],
                )
                .await?;
            if exists.is_none() {
                return Err(AuthError::Store(StoreError::NotFound("session")));
            }
        }
        self.publish_revocation(session_id).await
    }
}

/// The peer (SPIFFE id) an event's actor came through.
fn peer_of(event: &AuditEvent) -> String {
    event
        .actor
        .as_ref()
        .map(|a| a.peer_identity.clone())
        .unwrap_or_default()
}

/// A live session as administrators see it (never its tokens).
#[derive(Debug, Clone)]
pub struct LiveSession {
    /// Session id.
    pub id: Uuid,
    /// When it opened.
    pub created_at: DateTime<Utc>,
    /// When it ends at the latest.
    pub expires_at: DateTime<Utc>,
    /// The SPIFFE id of the application it opened through, if recorded.
    pub opened_by: Option<String>,
    /// When its tokens were last issued.
    pub last_issued: Option<DateTime<Utc>>,
}

/// Statement: every live session of `staff_id` ends, for `reason`.
pub(crate) fn sessions_ended(staff_id: Uuid, reason: &str, now: DateTime<Utc>) -> Statement {
    Statement::new(
        "UPDATE sessions SET revoked_at = $1, revoke_reason = $2 \
         WHERE staff_id = $3 AND revoked_at IS NULL",
        vec![
            Value::Time(now),
            Value::Text(reason.to_owned()),
            Value::Uuid(staff_id),
        ],
    )
}

fn refresh_insert(token: &str, session_id: Uuid, now: DateTime<Utc>) -> Statement {
    Statement::new(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES ($1, $2, $3)",
        vec![
            Value::Bytes(sha256(token.as_bytes())),
            Value::Uuid(session_id),
            Value::Time(now),
        ],
    )
}
