//! Intake's tables on PostgreSQL or SQLite, through the runtime's portable
//! statements: every change commits together with its audit events.

use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::AuditEvent;
use confidant_runtime::portable::{Statement, TransactError, Value};
use confidant_runtime::storage::Database;
use uuid::Uuid;

/// Query results.
pub type StoreResult<T> = Result<T, sqlx::Error>;

/// A privacy notice version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NoticeRow {
    /// Version.
    pub version: i32,
    /// Text.
    pub body: String,
    /// SHA-256 of the text, hex.
    pub sha256: String,
    /// When.
    pub published_at: DateTime<Utc>,
    /// By whom.
    pub published_by: String,
}

/// A form version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FormRow {
    /// Name.
    pub name: String,
    /// Version.
    pub version: i32,
    /// Title.
    pub title: String,
    /// Fields (JSON, `FormDefinition::to_json`).
    pub fields: String,
    /// Notice version to accept.
    pub privacy_notice_version: i32,
    /// Verification level demanded.
    pub required_verification_level: i32,
    /// When.
    pub published_at: DateTime<Utc>,
    /// By whom.
    pub published_by: String,
}

/// An invitation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InvitationRow {
    /// Id.
    pub id: Uuid,
    /// Client.
    pub client_id: Uuid,
    /// Matter.
    pub matter_id: Uuid,
    /// Form.
    pub form_name: String,
    /// Version.
    pub form_version: i32,
    /// By whom.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Until when.
    pub expires_at: DateTime<Utc>,
    /// When answered.
    pub submitted_at: Option<DateTime<Utc>>,
    /// Where codes go: email or phone.
    pub contact_channel: String,
    /// The address, sealed (bound to the invitation id).
    pub contact_sealed: Option<Vec<u8>>,
    /// When the firm withdrew it.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Statement: invitation `id` is withdrawn at `at` by `by`; unmet unless it
/// was open (neither answered nor withdrawn).
pub fn invitation_revoked(id: Uuid, by: &str, at: DateTime<Utc>) -> Statement {
    Statement::new(
        "UPDATE intake_invitations SET revoked_at = $1, revoked_by = $2 \
         WHERE id = $3 AND revoked_at IS NULL AND submitted_at IS NULL",
        vec![Value::Time(at), Value::Text(by.to_owned()), Value::Uuid(id)],
    )
    .expecting(1)
}

/// A submission.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SubmissionRow {
    /// Id.
    pub id: Uuid,
    /// The invitation answered.
    pub invitation_id: Uuid,
    /// Idempotency key of the submitting request.
    pub request_id: Uuid,
    /// Client.
    pub client_id: Uuid,
    /// Matter.
    pub matter_id: Uuid,
    /// Form.
    pub form_name: String,
    /// Version.
    pub form_version: i32,
    /// Notice accepted.
    pub privacy_notice_version: i32,
    /// Its digest.
    pub privacy_notice_sha256: String,
    /// When accepted.
    pub consent_at: DateTime<Utc>,
    /// submitted, accepted or rejected.
    pub state: String,
    /// Decided by.
    pub decided_by: Option<String>,
    /// Decided when.
    pub decided_at: Option<DateTime<Utc>>,
    /// Why.
    pub decision_reason: Option<String>,
    /// When the client's receipt went, if it has.
    pub receipt_sent_at: Option<DateTime<Utc>>,
}

/// A vault record holding some of a submission's answers.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SubmissionRecordRow {
    /// The submission.
    pub submission_id: Uuid,
    /// The vault record.
    pub record_id: Uuid,
    /// Its category.
    pub category: String,
    /// Field names, comma-separated.
    pub fields: String,
}

/// A file uploaded for a file field.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UploadRow {
    /// Upload id (the file field's answer).
    pub id: Uuid,
    /// The invitation.
    pub invitation_id: Uuid,
    /// The field.
    pub field: String,
    /// The vault document.
    pub record_id: Uuid,
    /// Idempotency key.
    pub request_id: Uuid,
    /// Media type declared and checked.
    pub media_type: String,
    /// Size.
    pub size_bytes: i64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Intake's repository.
#[derive(Debug, Clone)]
pub struct IntakeStore {
    db: Database,
}

impl IntakeStore {
    /// Over `db` (migrated).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The newest privacy notice version, if any.
    pub async fn latest_notice(&self) -> StoreResult<Option<NoticeRow>> {
        self.db
            .fetch_optional(
                "SELECT version, body, sha256, published_at, published_by FROM intake_privacy_notices ORDER BY version DESC LIMIT 1",
                vec![],
            )
            .await
    }

    /// A privacy notice version.
    pub async fn notice(&self, version: i32) -> StoreResult<Option<NoticeRow>> {
        self.db
            .fetch_optional(
                "SELECT version, body, sha256, published_at, published_by FROM intake_privacy_notices WHERE version = $1",
                vec![Value::Int(version)],
            )
            .await
    }

    /// Inserts a notice version; fails as a duplicate when another writer
    /// took the version number.
    pub async fn insert_notice(
        &self,
        row: &NoticeRow,
        event: &AuditEvent,
    ) -> Result<(), TransactError> {
        self.db
            .transact(
                vec![Statement::new(
                    "INSERT INTO intake_privacy_notices (version, body, sha256, published_at, published_by) VALUES ($1, $2, $3, $4, $5)",
                    vec![
                        Value::Int(row.version),
                        Value::Text(row.body.clone()),
                        Value::Text(row.sha256.clone()),
                        Value::Time(row.published_at),
                        Value::Text(row.published_by.clone()),
                    ],
                )],
                std::slice::from_ref(event),
            )
            .await
            .map(|_| ())
    }

    /// A form version; the latest when `version` is 0.
    pub async fn form(&self, name: &str, version: i32) -> StoreResult<Option<FormRow>> {
        if version == 0 {
            self.db
                .fetch_optional(
                    "SELECT name, version, title, fields, privacy_notice_version, required_verification_level, published_at, published_by FROM intake_form_versions WHERE name = $1 ORDER BY version DESC LIMIT 1",
                    vec![Value::Text(name.to_owned())],
                )
                .await
        } else {
            self.db
                .fetch_optional(
                    "SELECT name, version, title, fields, privacy_notice_version, required_verification_level, published_at, published_by FROM intake_form_versions WHERE name = $1 AND version = $2",
                    vec![Value::Text(name.to_owned()), Value::Int(version)],
                )
                .await
        }
    }

    /// The latest version of every form.
    pub async fn latest_forms(&self) -> StoreResult<Vec<FormRow>> {
        self.db
            .fetch_all(
                "SELECT f.name, f.version, f.title, f.fields, f.privacy_notice_version, f.required_verification_level, f.published_at, f.published_by FROM intake_form_versions f WHERE f.version = (SELECT MAX(g.version) FROM intake_form_versions g WHERE g.name = f.name) ORDER BY f.name",
                vec![],
            )
            .await
    }

    /// Inserts a form version; a duplicate when the number was taken.
    pub async fn insert_form(
        &self,
        row: &FormRow,
        event: &AuditEvent,
    ) -> Result<(), TransactError> {
        self.db
            .transact(
                vec![Statement::new(
                    "INSERT INTO intake_form_versions (name, version, title, fields, privacy_notice_version, required_verification_level, published_at, published_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    vec![
                        Value::Text(row.name.clone()),
                        Value::Int(row.version),
                        Value::Text(row.title.clone()),
                        Value::Text(row.fields.clone()),
                        Value::Int(row.privacy_notice_version),
                        Value::Int(row.required_verification_level),
                        Value::Time(row.published_at),
                        Value::Text(row.published_by.clone()),
                    ],
                )],
                std::slice::from_ref(event),
            )
            .await
            .map(|_| ())
    }

    /// Inserts an invitation with the hash of its secret.
    pub async fn insert_invitation(
        &self,
        row: &InvitationRow,
        secret_hash: &[u8],
        event: &AuditEvent,
    ) -> Result<(), TransactError> {
        self.db
            .transact(
                vec![Statement::new(
                    "INSERT INTO intake_invitations (id, secret_hash, client_id, matter_id, form_name, form_version, created_by, created_at, expires_at, contact_channel, contact_sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    vec![
                        Value::Uuid(row.id),
                        Value::Bytes(secret_hash.to_vec()),
                        Value::Uuid(row.client_id),
                        Value::Uuid(row.matter_id),
                        Value::Text(row.form_name.clone()),
                        Value::Int(row.form_version),
                        Value::Text(row.created_by.clone()),
                        Value::Time(row.created_at),
                        Value::Time(row.expires_at),
                        Value::Text(row.contact_channel.clone()),
                        Value::OptBytes(row.contact_sealed.clone()),
                    ],
                )],
                std::slice::from_ref(event),
            )
            .await
            .map(|_| ())
    }

    /// The invitation whose secret hashes to `secret_hash`.
    pub async fn invitation_by_secret(
        &self,
        secret_hash: &[u8],
    ) -> StoreResult<Option<InvitationRow>> {
        self.db
            .fetch_optional(
                "SELECT id, client_id, matter_id, form_name, form_version, created_by, created_at, expires_at, submitted_at, contact_channel, contact_sealed, revoked_at FROM intake_invitations WHERE secret_hash = $1",
                vec![Value::Bytes(secret_hash.to_vec())],
            )
            .await
    }

    /// An invitation by id.
    pub async fn invitation(&self, id: Uuid) -> StoreResult<Option<InvitationRow>> {
        self.db
            .fetch_optional(
                "SELECT id, client_id, matter_id, form_name, form_version, created_by, created_at, expires_at, submitted_at, contact_channel, contact_sealed, revoked_at FROM intake_invitations WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await
    }

    /// A page of the invitations of a client (and matter), newest first:
    /// at most `limit` after the one `after` names (its id).
    pub async fn invitations(
        &self,
        client_id: Uuid,
        matter_id: Option<Uuid>,
        after: Vec<Value>,
        limit: i64,
    ) -> StoreResult<Vec<InvitationRow>> {
        let mut values = vec![Value::Uuid(client_id), Value::OptUuid(matter_id)];
        values.extend(after);
        values.push(Value::BigInt(limit));
        self.db
            .fetch_all(
                "SELECT id, client_id, matter_id, form_name, form_version, created_by, created_at, expires_at, submitted_at, contact_channel, contact_sealed, revoked_at FROM intake_invitations \
                 WHERE client_id = $1 AND ($2 IS NULL OR matter_id = $2) AND ($3 IS NULL OR id < $3) \
                 ORDER BY id DESC LIMIT $4",
                values,
            )
            .await
    }

    /// Withdraws invitation `id` at `at`, by `by`, if it is still open
    /// (neither answered nor withdrawn): whether it was.
    pub async fn revoke_invitation(
        &self,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        event: &AuditEvent,
    ) -> Result<bool, TransactError> {
        let done = self
            .db
            .transact(
                vec![invitation_revoked(id, by, at)],
                std::slice::from_ref(event),
            )
            .await;
        match done {
            Ok(_) => Ok(true),
            Err(TransactError::Unmet { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The submission answering an invitation, if any.
    pub async fn submission_for(&self, invitation_id: Uuid) -> StoreResult<Option<SubmissionRow>> {
        self.db
            .fetch_optional(
                "SELECT id, invitation_id, request_id, client_id, matter_id, form_name, form_version, privacy_notice_version, privacy_notice_sha256, consent_at, state, decided_by, decided_at, decision_reason, receipt_sent_at FROM intake_submissions WHERE invitation_id = $1",
                vec![Value::Uuid(invitation_id)],
            )
            .await
    }

    /// A submission by id.
    pub async fn submission(&self, id: Uuid) -> StoreResult<Option<SubmissionRow>> {
        self.db
            .fetch_optional(
                "SELECT id, invitation_id, request_id, client_id, matter_id, form_name, form_version, privacy_notice_version, privacy_notice_sha256, consent_at, state, decided_by, decided_at, decision_reason, receipt_sent_at FROM intake_submissions WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await
    }

    /// A page of the submissions of a client (and matter), newest first: at
    /// most `limit` after the one `after` names (its consent time and id).
    pub async fn submissions(
        &self,
        client_id: Uuid,
        matter_id: Option<Uuid>,
        after: Vec<Value>,
        limit: i64,
    ) -> StoreResult<Vec<SubmissionRow>> {
        let mut values = vec![Value::Uuid(client_id), Value::OptUuid(matter_id)];
        values.extend(after);
        values.push(Value::BigInt(limit));
        self.db
            .fetch_all(
                "SELECT id, invitation_id, request_id, client_id, matter_id, form_name, form_version, privacy_notice_version, privacy_notice_sha256, consent_at, state, decided_by, decided_at, decision_reason, receipt_sent_at FROM intake_submissions \
                 WHERE client_id = $1 AND ($2 IS NULL OR matter_id = $2) AND ($3 IS NULL OR (consent_at, id) < ($3, $4)) \
                 ORDER BY consent_at DESC, id DESC LIMIT $5",
                values,
            )
            .await
    }

    /// The vault records of the submissions `ids` of one page of a client's
    /// submissions, by submission: one statement for the page instead of one
    /// per submission (it reads the client's submissions whose ids lie from
    /// the least to the greatest of `ids`, and keeps the page's).
    pub async fn records_of(
        &self,
        client_id: Uuid,
        ids: &[Uuid],
    ) -> StoreResult<std::collections::HashMap<Uuid, Vec<SubmissionRecordRow>>> {
        let mut grouped: std::collections::HashMap<Uuid, Vec<SubmissionRecordRow>> =
            ids.iter().map(|id| (*id, Vec::new())).collect();
        let (Some(low), Some(high)) = (ids.iter().min(), ids.iter().max()) else {
            return Ok(grouped);
        };
        let rows: Vec<SubmissionRecordRow> = self
            .db
            .fetch_all(
                "SELECT r.submission_id, r.record_id, r.category, r.fields FROM intake_submission_records r \
                 JOIN intake_submissions s ON s.id = r.submission_id \
                 WHERE s.client_id = $1 AND r.submission_id BETWEEN $2 AND $3 \
                 ORDER BY r.submission_id, r.category, r.record_id",
                vec![Value::Uuid(client_id), Value::Uuid(*low), Value::Uuid(*high)],
            )
            .await?;
        for row in rows {
            if let Some(records) = grouped.get_mut(&row.submission_id) {
                records.push(row);
            }
        }
        Ok(grouped)
    }

    /// The vault records of a submission.
    pub async fn records(&self, submission_id: Uuid) -> StoreResult<Vec<SubmissionRecordRow>> {
        self.db
            .fetch_all(
                "SELECT submission_id, record_id, category, fields FROM intake_submission_records WHERE submission_id = $1 ORDER BY category, record_id",
                vec![Value::Uuid(submission_id)],
            )
            .await
    }

    /// The upload of an invitation by idempotency key.
    pub async fn upload_by_request(
        &self,
        invitation_id: Uuid,
        request_id: Uuid,
    ) -> StoreResult<Option<UploadRow>> {
        self.db
            .fetch_optional(
                "SELECT id, invitation_id, field, record_id, request_id, media_type, size_bytes, sha256, created_at FROM intake_uploads WHERE invitation_id = $1 AND request_id = $2",
                vec![Value::Uuid(invitation_id), Value::Uuid(request_id)],
            )
            .await
    }

    /// The uploads of an invitation.
    pub async fn uploads(&self, invitation_id: Uuid) -> StoreResult<Vec<UploadRow>> {
        self.db
            .fetch_all(
                "SELECT id, invitation_id, field, record_id, request_id, media_type, size_bytes, sha256, created_at FROM intake_uploads WHERE invitation_id = $1",
                vec![Value::Uuid(invitation_id)],
            )
            .await
    }

    /// Records an upload with its audit event.
    pub async fn insert_upload(
        &self,
        row: &UploadRow,
        event: &AuditEvent,
    ) -> Result<(), TransactError> {
        self.db
            .transact(
                vec![Statement::new(
                    "INSERT INTO intake_uploads (id, invitation_id, field, record_id, request_id, media_type, size_bytes, sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    vec![
                        Value::Uuid(row.id),
                        Value::Uuid(row.invitation_id),
                        Value::Text(row.field.clone()),
                        Value::Uuid(row.record_id),
                        Value::Uuid(row.request_id),
                        Value::Text(row.media_type.clone()),
                        Value::BigInt(row.size_bytes),
                        Value::Text(row.sha256.clone()),
                        Value::Time(row.created_at),
                    ],
                )],
                std::slice::from_ref(event),
            )
            .await
            .map(|_| ())
    }

    /// Tells the makers of invitations that expired unanswered (and were not
    /// withdrawn) within `within` before `now` that they did, each once: a
    /// staff notice goes into the outbox in the transaction that marks the
    /// invitation told. An invitation made by a service, not a staff member,
    /// is only marked. Returns how many notices were written.
    pub async fn note_expired(
        &self,
        now: DateTime<Utc>,
        within: chrono::Duration,
    ) -> Result<usize, TransactError> {
        use confidant_proto::identity::v1::StaffNoticeKind;
        use confidant_runtime::staff_notices::Notice;
        let rows: Vec<(Uuid, String)> = self
            .db
            .fetch_all(
                "SELECT id, created_by FROM intake_invitations WHERE submitted_at IS NULL \
                 AND expiry_told_at IS NULL AND revoked_at IS NULL AND expires_at <= $1 \
                 AND expires_at > $2 ORDER BY expires_at LIMIT 500",
                vec![Value::Time(now), Value::Time(now - within)],
            )
            .await?;
        let mut told = 0;
        for (id, maker) in rows {
            let mut statements = vec![
                Statement::new(
                    "UPDATE intake_invitations SET expiry_told_at = $2 WHERE id = $1 \
                     AND expiry_told_at IS NULL AND submitted_at IS NULL",
                    vec![Value::Uuid(id), Value::Time(now)],
                )
                .expecting(1),
            ];
            let maker = Uuid::parse_str(&maker).ok();
            if let Some(maker) = maker {
                statements.push(
                    Notice::to_staff(
                        format!("invitation-expired:{id}"),
                        StaffNoticeKind::InvitationExpired,
                        id,
                        maker,
                    )
                    .insert(now),
                );
            }
            match self.db.transact(statements, &[]).await {
                Ok(_) => told += usize::from(maker.is_some()),
                // Another replica told of it first.
                Err(TransactError::Unmet { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(told)
    }

    /// Records a submission, its vault records and the invitation answered,
    /// with its audit event and the `notice` to its inviter, if any; a
    /// duplicate when the invitation was answered meanwhile.
    pub async fn insert_submission(
        &self,
        row: &SubmissionRow,
        records: &[SubmissionRecordRow],
        event: &AuditEvent,
        notice: Option<Statement>,
    ) -> Result<(), TransactError> {
        let mut statements = vec![
            Statement::new(
                "INSERT INTO intake_submissions (id, invitation_id, request_id, client_id, matter_id, form_name, form_version, privacy_notice_version, privacy_notice_sha256, consent_at, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                vec![
                    Value::Uuid(row.id),
                    Value::Uuid(row.invitation_id),
                    Value::Uuid(row.request_id),
                    Value::Uuid(row.client_id),
                    Value::Uuid(row.matter_id),
                    Value::Text(row.form_name.clone()),
                    Value::Int(row.form_version),
                    Value::Int(row.privacy_notice_version),
                    Value::Text(row.privacy_notice_sha256.clone()),
                    Value::Time(row.consent_at),
                    Value::Text(row.state.clone()),
                ],
            ),
            Statement::new(
                "UPDATE intake_invitations SET submitted_at = $1 WHERE id = $2 AND submitted_at IS NULL",
                vec![Value::Time(row.consent_at), Value::Uuid(row.invitation_id)],
            )
            .expecting(1),
        ];
        for r in records {
            statements.push(Statement::new(
                "INSERT INTO intake_submission_records (submission_id, record_id, category, fields) VALUES ($1, $2, $3, $4)",
                vec![
                    Value::Uuid(r.submission_id),
                    Value::Uuid(r.record_id),
                    Value::Text(r.category.clone()),
                    Value::Text(r.fields.clone()),
                ],
            ));
        }
        statements.extend(notice);
        self.db
            .transact(statements, std::slice::from_ref(event))
            .await
            .map(|_| ())
    }

    /// Decides a submission still waiting for review; `Unmet` when it was
    /// decided already.
    pub async fn decide(
        &self,
        id: Uuid,
        state: &str,
        by: &str,
        at: DateTime<Utc>,
        reason: Option<&str>,
        event: &AuditEvent,
    ) -> Result<(), TransactError> {
        self.db
            .transact(
                vec![Statement::new(
                    "UPDATE intake_submissions SET state = $1, decided_by = $2, decided_at = $3, decision_reason = $4 WHERE id = $5 AND state = 'submitted'",
                    vec![
                        Value::Text(state.to_owned()),
                        Value::Text(by.to_owned()),
                        Value::Time(at),
                        Value::OptText(reason.map(str::to_owned)),
                        Value::Uuid(id),
                    ],
                )
                .expecting(1)],
                std::slice::from_ref(event),
            )
            .await
            .map(|_| ())
    }
}
