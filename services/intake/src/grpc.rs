//! The gRPC face of the intake service: boundary validation, the caller's
//! identity and permission, the vault writes and the store.

use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use confidant_proto::audit::v1::{ActorKind, Outcome};
use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_proto::identity::v1::{
    CompleteClientVerificationRequest, ContactChannel, StartClientVerificationRequest,
};
use confidant_proto::intake::v1 as pb;
use confidant_proto::intake::v1::intake_service_server::IntakeService;
use confidant_proto::vault::v1 as vault_pb;
use confidant_proto::vault::v1::vault_service_client::VaultServiceClient;
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::auth::{Actor, StaffAuth};
use confidant_runtime::client::PeerChannel;
use confidant_runtime::decide::Decider;
use confidant_runtime::error::Violations;
use confidant_runtime::page::{self, Key, Part};
use confidant_runtime::peer::PeerIdentity;
use confidant_runtime::secret_box::SecretBox;
use confidant_vault::domain::{Category, required_uuid};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::domain::{FormDefinition, MAX_NOTICE, MAX_TITLE, notice_digest, valid_form_name};
use crate::error::Error;
use crate::store::{
    FormRow, IntakeStore, InvitationRow, NoticeRow, SubmissionRecordRow, SubmissionRow, UploadRow,
};

/// Default lifetime of an invitation, in days.
pub const DEFAULT_INVITATION_DAYS: i32 = 7;
/// Longest lifetime of an invitation, in days.
pub const MAX_INVITATION_DAYS: i32 = 30;

/// Handlers of `confidant.intake.v1.IntakeService`.
#[derive(Debug, Clone)]
pub struct IntakeApi {
    store: IntakeStore,
    decider: Arc<Decider>,
    tokens: Option<StaffAuth>,
    peers: Peers,
    secrets: Arc<SecretBox>,
    trust_domain: String,
}

/// The services intake calls.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Identity: one-time codes and client tokens.
    pub identity: Option<PeerChannel>,
    /// The vault: where answers go.
    pub vault: Option<PeerChannel>,
}

/// Checks a contact address for its channel (as identity will).
fn check_contact(v: &mut Violations, channel: i32, address: &str) -> Option<&'static str> {
    match ContactChannel::try_from(channel) {
        Ok(ContactChannel::Email) => {
            if !(address.contains('@')
                && address.len() <= 254
                && !address.chars().any(char::is_whitespace))
            {
                v.add("contact_address", "must be an e-mail address");
            }
            Some("email")
        }
        Ok(ContactChannel::Phone) => {
            let digits = address.chars().filter(char::is_ascii_digit).count();
            let allowed = address
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')'));
            if !(allowed && (7..=15).contains(&digits)) {
                v.add("contact_address", "must be a phone number (E.164 digits)");
            }
            Some("phone")
        }
        _ => {
            v.add(
                "contact_channel",
                "CONTACT_CHANNEL_EMAIL or CONTACT_CHANNEL_PHONE",
            );
            None
        }
    }
}

/// Where a code went, masked: the first letter and the domain of an
/// e-mail address, the last four digits of a number.
pub fn contact_hint(channel: &str, address: &str) -> String {
    if channel == "phone" {
        let digits: String = address.chars().filter(char::is_ascii_digit).collect();
        let tail = &digits[digits.len().saturating_sub(4)..];
        format!("***{tail}")
    } else {
        match address.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            None => "***".into(),
        }
    }
}

/// Identity's answer to a client's verification step: its refusals (wrong or
/// expired code, too many attempts) reach the client as they are; anything
/// else is identity being unavailable.
fn identity_refusal(status: Status) -> Status {
    match status.code() {
        Code::InvalidArgument
        | Code::Unauthenticated
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::NotFound => status,
        code => Error::Peer {
            service: "identity",
            detail: format!("{code:?}"),
        }
        .into(),
    }
}

fn check(v: Violations) -> Result<(), Error> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(v))
    }
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// SHA-256 of an invitation secret: what intake keeps of it.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

fn new_secret() -> Result<String, Error> {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Aborted("no randomness for the invitation secret"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The vault request id of one category of a submission: derived from the
/// submission's own idempotency key, so a retry after a crash finds the
/// records the first attempt stored instead of storing them twice.
fn record_request_id(request_id: Uuid, category: Category) -> Uuid {
    let mut input = request_id.as_bytes().to_vec();
    input.extend_from_slice(category.as_str().as_bytes());
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// How many leading bytes of an upload are looked at to tell its type.
const SNIFF_BYTES: usize = 8192;

/// Whether the first bytes of a file are of the declared media type: its
/// magic number where the type has one, else (text types) valid UTF-8.
pub fn content_matches(declared: &str, head: &[u8]) -> bool {
    match infer::get(head) {
        Some(kind) => kind.mime_type() == declared,
        None => {
            declared.starts_with("text/")
                && match std::str::from_utf8(head) {
                    Ok(_) => true,
                    // Cut inside a character at the end of the sample.
                    Err(e) => e.error_len().is_none(),
                }
                && !head.contains(&0)
        }
    }
}

/// Forwards an upload to the vault's stream: the header, then the client's
/// chunks, once the first bytes show the declared type. Refuses (and so
/// leaves the vault's stream short) on a type mismatch, an oversize chunk,
/// more or fewer bytes than declared.
async fn forward_upload<S>(
    stream: &mut S,
    tx: &tokio::sync::mpsc::Sender<vault_pb::UploadDocumentRequest>,
    header: vault_pb::DocumentHeader,
    media_type: &str,
    size: u64,
) -> Result<(), Error>
where
    S: tokio_stream::Stream<Item = Result<pb::UploadFormFileRequest, Status>> + Unpin + Send,
{
    use tokio_stream::StreamExt as _;
    use vault_pb::upload_document_request::Part;
    let closed = || Error::Peer {
        service: "vault",
        detail: "upload stream closed".into(),
    };
    let invalid = |field: &str, rule: String| {
        let mut v = Violations::new();
        v.add(field, rule);
        Error::Invalid(v)
    };
    let send = |part| vault_pb::UploadDocumentRequest { part: Some(part) };
    tx.send(send(Part::Header(header)))
        .await
        .map_err(|_| closed())?;
    let mut head: Vec<u8> = Vec::new();
    let mut sniffed = false;
    let mut received: u64 = 0;
    loop {
        let message = stream.next().await.transpose().map_err(|s| Error::Peer {
            service: "client",
            detail: format!("{:?}", s.code()),
        })?;
        let chunk = match message.and_then(|m| m.part) {
            Some(pb::upload_form_file_request::Part::Chunk(c)) => Some(c),
            Some(pb::upload_form_file_request::Part::Header(_)) => {
                return Err(invalid(
                    "header",
                    "only the first message carries a header".into(),
                ));
            }
            None => None,
        };
        if let Some(c) = &chunk {
            if c.len() > 1024 * 1024 {
                return Err(invalid("chunk", "at most 1 MiB per message".into()));
            }
            received += c.len() as u64;
            if received > size {
                return Err(invalid(
                    "header.size_bytes",
                    "more bytes arrived than declared".into(),
                ));
            }
        }
        let end = chunk.is_none();
        let mut out = Vec::new();
        if sniffed {
            out = chunk.unwrap_or_default();
        } else {
            head.extend(chunk.unwrap_or_default());
            if head.len() >= SNIFF_BYTES || end {
                if !content_matches(media_type, &head) {
                    return Err(invalid(
                        "header.media_type",
                        "the content is not of the declared media type".into(),
                    ));
                }
                sniffed = true;
                out = std::mem::take(&mut head);
            }
        }
        if !out.is_empty() {
            tx.send(send(Part::Chunk(out)))
                .await
                .map_err(|_| closed())?;
        }
        if end {
            break;
        }
    }
    if received != size {
        return Err(invalid(
            "header.size_bytes",
            format!("the stream ended after {received} of {size} bytes"),
        ));
    }
    Ok(())
}

fn notice_proto(row: &NoticeRow) -> pb::PrivacyNotice {
    pb::PrivacyNotice {
        version: row.version,
        text: row.body.clone(),
        sha256: row.sha256.clone(),
        publish_time: Some(ts(row.published_at)),
    }
}

fn form_proto(row: &FormRow) -> Result<pb::Form, Error> {
    let def = definition(row)?;
    Ok(pb::Form {
        name: row.name.clone(),
        version: row.version,
        title: row.title.clone(),
        fields: def.to_proto(),
        privacy_notice_version: row.privacy_notice_version,
        required_verification_level: row.required_verification_level,
        publish_time: Some(ts(row.published_at)),
        published_by: row.published_by.clone(),
    })
}

fn definition(row: &FormRow) -> Result<FormDefinition, Error> {
    FormDefinition::from_json(&row.fields).ok_or(Error::Precondition {
        reason: "unreadable_form",
        message: "the stored form version is not readable by this release",
    })
}

fn invitation_proto(row: &InvitationRow, now: DateTime<Utc>) -> pb::Invitation {
    let state = if row.submitted_at.is_some() {
        pb::InvitationState::Submitted
    } else if row.revoked_at.is_some() {
        pb::InvitationState::Revoked
    } else if now >= row.expires_at {
        pb::InvitationState::Expired
    } else {
        pb::InvitationState::Open
    };
    pb::Invitation {
        id: row.id.to_string(),
        client_id: row.client_id.to_string(),
        matter_id: row.matter_id.to_string(),
        form_name: row.form_name.clone(),
        form_version: row.form_version,
        expire_time: Some(ts(row.expires_at)),
        state: state as i32,
        created_by: row.created_by.clone(),
        create_time: Some(ts(row.created_at)),
        submit_time: row.submitted_at.map(ts),
        revoke_time: row.revoked_at.map(ts),
    }
}

/// Refused: the firm withdrew the invitation.
const REVOKED: Error = Error::Precondition {
    reason: "invitation_revoked",
    message: "this invitation was withdrawn by the firm; ask the firm for a new one",
};

fn state_proto(state: &str) -> pb::SubmissionState {
    match state {
        "accepted" => pb::SubmissionState::Accepted,
        "rejected" => pb::SubmissionState::Rejected,
        _ => pb::SubmissionState::Submitted,
    }
}

fn submission_proto(row: &SubmissionRow, records: &[SubmissionRecordRow]) -> pb::Submission {
    pb::Submission {
        id: row.id.to_string(),
        invitation_id: row.invitation_id.to_string(),
        client_id: row.client_id.to_string(),
        matter_id: row.matter_id.to_string(),
        form_name: row.form_name.clone(),
        form_version: row.form_version,
        privacy_notice_version: row.privacy_notice_version,
        consent_time: Some(ts(row.consent_at)),
        records: records
            .iter()
            .map(|r| pb::StoredRecord {
                record_id: r.record_id.to_string(),
                category: Category::parse(&r.category)
                    .map_or(vault_pb::DataCategory::Unspecified, Category::to_proto)
                    as i32,
                fields: r.fields.split(',').map(str::to_owned).collect(),
            })
            .collect(),
        state: state_proto(&row.state) as i32,
        decided_by: row.decided_by.clone().unwrap_or_default(),
        decide_time: row.decided_at.map(ts),
        decision_reason: row.decision_reason.clone().unwrap_or_default(),
        receipt_time: row.receipt_sent_at.map(ts),
    }
}

impl IntakeApi {
    /// Handlers over `store`; `tokens` verifies client tokens against
    /// identity's keys, `secrets` seals contact addresses.
    pub fn new(
        store: IntakeStore,
        decider: Arc<Decider>,
        tokens: Option<StaffAuth>,
        peers: Peers,
        secrets: Arc<SecretBox>,
        trust_domain: &str,
    ) -> Self {
        Self {
            store,
            decider,
            tokens,
            peers,
            secrets,
            trust_domain: trust_domain.to_owned(),
        }
    }

    fn identity(&self) -> Result<IdentityServiceClient<PeerChannel>, Error> {
        self.peers
            .identity
            .clone()
            .map(IdentityServiceClient::new)
            .ok_or(Error::Peer {
                service: "identity",
                detail: "not configured".into(),
            })
    }

    /// The invitation a secret opens, if it can still be answered.
    async fn open_for_answers(&self, secret: &str) -> Result<InvitationRow, Error> {
        let invitation = self.invitation(secret).await?;
        if invitation.submitted_at.is_some() {
            return Err(Error::Precondition {
                reason: "already_submitted",
                message: "this invitation has been answered",
            });
        }
        if invitation.revoked_at.is_some() {
            return Err(REVOKED);
        }
        if Utc::now() >= invitation.expires_at {
            return Err(Error::Precondition {
                reason: "invitation_expired",
                message: "this invitation has expired; ask the firm for a new one",
            });
        }
        Ok(invitation)
    }

    fn event(&self, actor: &Actor, action: Action) -> EventBuilder {
        actor.event(ServiceName::Intake, &self.trust_domain, action)
    }

    /// The staff member calling.
    fn staff<T>(request: &Request<T>) -> Result<(Actor, String), Error> {
        let actor = Actor::of(request).ok_or(Error::Unauthenticated)?;
        match &actor {
            Actor::Staff { staff_id, .. } => {
                let id = staff_id.clone();
                Ok((actor, id))
            }
            Actor::Service { .. } => Err(Error::Unauthenticated),
        }
    }

    /// A list's client, optional matter and page (`shape` the key of its
    /// token), once the staff member calling is allowed to read that
    /// client's (or matter's) data.
    async fn readable_page<T>(
        &self,
        request: &Request<T>,
        (client_id, matter_id): (&str, &str),
        (page_size, page_token): (i32, &str),
        shape: &[Part],
    ) -> Result<(Uuid, Option<Uuid>, i64, page::After), Error> {
        Self::staff(request)?;
        let mut v = Violations::new();
        let client = required_uuid(&mut v, "client_id", client_id);
        let matter = confidant_vault::domain::optional_uuid(&mut v, "matter_id", matter_id);
        let (limit, after) = page::requested(&mut v, page_size, page_token, (50, 200), shape);
        check(v)?;
        let client = client.unwrap_or_default();
        self.staff_with(request, "client_data.read", Some(client), matter)
            .await?;
        Ok((client, matter, limit, after))
    }

    /// The staff member calling, allowed to write `client`'s data on
    /// `matter`, and their event of `action` about the `kind` `id` there.
    async fn writer_about<T>(
        &self,
        request: &Request<T>,
        (client, matter): (Uuid, Uuid),
        action: Action,
        (kind, id): (&str, Uuid),
    ) -> Result<(Actor, EventBuilder), Error> {
        let actor = self
            .staff_with(request, "client_data.write", Some(client), Some(matter))
            .await?;
        let event = self
            .event(&actor, action)
            .resource(kind, &id.to_string())
            .scope(Some(client), Some(matter));
        Ok((actor, event))
    }

    /// The staff member calling, with `permission` (on the client or
    /// matter, when given).
    async fn staff_with<T>(
        &self,
        request: &Request<T>,
        permission: &str,
        client: Option<Uuid>,
        matter: Option<Uuid>,
    ) -> Result<Actor, Error> {
        let (actor, staff_id) = Self::staff(request)?;
        self.decider
            .decide(&staff_id, permission, client, matter)
            .await?;
        Ok(actor)
    }

    async fn submission_with_records(&self, row: SubmissionRow) -> Result<pb::Submission, Error> {
        let records = self.store.records(row.id).await?;
        Ok(submission_proto(&row, &records))
    }

    /// The invitation a secret opens, refused when unknown.
    async fn invitation(&self, secret: &str) -> Result<InvitationRow, Error> {
        if secret.is_empty() || secret.len() > 128 {
            let mut v = Violations::new();
            v.add("secret", "is required: the invitation link's secret");
            return Err(Error::Invalid(v));
        }
        self.store
            .invitation_by_secret(&secret_hash(secret))
            .await?
            .ok_or(Error::NotFound("invitation"))
    }

    /// Records a refused submission attempt (no answers, no client data).
    async fn refused(&self, peer: &str, invitation: &InvitationRow, reason: &str) {
        let event = EventBuilder::new(
            ServiceName::Intake,
            &self.trust_domain,
            Action::IntakeSubmissionReceived,
        )
        .actor(ActorKind::Client, &invitation.client_id.to_string(), peer)
        .resource("invitation", &invitation.id.to_string())
        .scope(Some(invitation.client_id), Some(invitation.matter_id))
        .outcome(Outcome::Denied, reason)
        .build();
        if let Err(e) = self.store.db().transact(vec![], &[event]).await {
            tracing::warn!(error = %e, "refused submission not recorded");
        }
    }

    /// The client of `invitation`, proven by a client token bound to it.
    async fn client_of(
        &self,
        peer: &str,
        invitation: &InvitationRow,
        token: &str,
    ) -> Result<confidant_runtime::auth::ClientClaims, Error> {
        let tokens = self.tokens.as_ref().ok_or(Error::Peer {
            service: "identity",
            detail: "not configured".into(),
        })?;
        let claims = match tokens.authenticate_client(token).await {
            Ok(c) => c,
            Err(confidant_runtime::auth::AuthFailure::Unavailable) => {
                return Err(Error::Peer {
                    service: "identity",
                    detail: "keys unavailable".into(),
                });
            }
            Err(_) => {
                self.refused(peer, invitation, "client_token_invalid").await;
                return Err(Error::ClientUnauthenticated);
            }
        };
        if claims.sub != invitation.client_id.to_string()
            || claims.reference != invitation.id.to_string()
        {
            self.refused(peer, invitation, "client_token_other_invitation")
                .await;
            return Err(Error::ClientUnauthenticated);
        }
        Ok(claims)
    }

    /// Receives a file for a file field (after its header) and streams it
    /// into the vault: the core of UploadFormFile and of the web page's
    /// upload.
    pub async fn upload_file<S>(
        &self,
        peer: &str,
        header: pb::UploadFormFileHeader,
        stream: &mut S,
    ) -> Result<pb::UploadFormFileResponse, Status>
    where
        S: tokio_stream::Stream<Item = Result<pb::UploadFormFileRequest, Status>> + Unpin + Send,
    {
        let mut v = Violations::new();
        let request_id = required_uuid(&mut v, "header.request_id", &header.request_id);
        let filename_ok = !header.filename.is_empty()
            && header.filename.chars().count() <= 255
            && !header
                .filename
                .chars()
                .any(|c| c.is_control() || c == '/' || c == '\\');
        if !filename_ok {
            v.add(
                "header.filename",
                "1 to 255 characters, no path separators or control characters",
            );
        }
        let invitation = self.open_for_answers(&header.secret).await?;
        check(v)?;
        let Some(request_id) = request_id else {
            return Err(Status::internal("validated request incomplete"));
        };
        self.client_of(peer, &invitation, &header.client_token)
            .await?;
        if let Some(done) = self
            .store
            .upload_by_request(invitation.id, request_id)
            .await
            .map_err(Error::from)?
        {
            return Ok(pb::UploadFormFileResponse {
                upload_id: done.id.to_string(),
                size_bytes: done.size_bytes,
                sha256: done.sha256,
            });
        }
        let form = self
            .store
            .form(&invitation.form_name, invitation.form_version)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("form version"))?;
        let def = definition(&form)?;
        let mut v = Violations::new();
        let Some(field) = def
            .fields
            .iter()
            .find(|f| f.name == header.field && f.kind == crate::domain::Kind::File)
        else {
            v.add("header.field", "not a file field of this form version");
            return Err(Error::Invalid(v).into());
        };
        if !field.media_types.contains(&header.media_type) {
            v.add(
                "header.media_type",
                format!("must be one of: {}", field.media_types.join(", ")),
            );
        }
        let size = u64::try_from(header.size_bytes).unwrap_or(0);
        if size == 0 || size > field.max_file_bytes {
            v.add(
                "header.size_bytes",
                format!("1 to {} bytes", field.max_file_bytes),
            );
        }
        check(v)?;

        // Stream into the vault as it arrives; the content's type is checked
        // on its first bytes before anything is forwarded. Dropping the
        // sender early ends the vault's stream short, and it stores nothing.
        let channel = self.peers.vault.clone().ok_or(Error::Peer {
            service: "vault",
            detail: "not configured".into(),
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel::<vault_pb::UploadDocumentRequest>(4);
        let upload = tokio::spawn(async move {
            VaultServiceClient::new(channel)
                .upload_document(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        let vault_header = vault_pb::DocumentHeader {
            client_id: invitation.client_id.to_string(),
            matter_id: invitation.matter_id.to_string(),
            category: field.category.to_proto() as i32,
            filename: header.filename.clone(),
            media_type: header.media_type.clone(),
            request_id: record_request_id(request_id, field.category).to_string(),
            size_bytes: header.size_bytes,
            sha256: Vec::new(),
            supersedes: String::new(),
            reason: String::new(),
        };
        let streamed = forward_upload(stream, &tx, vault_header, &header.media_type, size).await;
        drop(tx);
        if let Err(e) = streamed {
            upload.abort();
            return Err(e.into());
        }
        let stored = upload
            .await
            .map_err(|_| Error::Peer {
                service: "vault",
                detail: "upload task failed".into(),
            })?
            .map_err(|s| match s.code() {
                Code::InvalidArgument | Code::FailedPrecondition | Code::ResourceExhausted => s,
                code => Error::Peer {
                    service: "vault",
                    detail: format!("{code:?}"),
                }
                .into(),
            })?
            .into_inner()
            .record
            .ok_or(Error::Peer {
                service: "vault",
                detail: "no record in the response".into(),
            })?;
        let record_id = Uuid::parse_str(&stored.id).map_err(|_| Error::Peer {
            service: "vault",
            detail: "bad record id".into(),
        })?;
        let sha256: String = stored
            .document
            .as_ref()
            .map(|d| d.sha256.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default();
        let row = UploadRow {
            id: Uuid::now_v7(),
            invitation_id: invitation.id,
            field: field.name.clone(),
            record_id,
            request_id,
            media_type: header.media_type.clone(),
            size_bytes: header.size_bytes,
            sha256,
            created_at: Utc::now(),
        };
        let event = EventBuilder::new(
            ServiceName::Intake,
            &self.trust_domain,
            Action::IntakeFileUploaded,
        )
        .actor(ActorKind::Client, &invitation.client_id.to_string(), peer)
        .resource("upload", &row.id.to_string())
        .scope(Some(invitation.client_id), Some(invitation.matter_id))
        .category(field.category.as_str())
        .outcome(Outcome::Allowed, "")
        .build();
        match self.store.insert_upload(&row, &event).await {
            Ok(()) => Ok(pb::UploadFormFileResponse {
                upload_id: row.id.to_string(),
                size_bytes: row.size_bytes,
                sha256: row.sha256,
            }),
            Err(e) if e.is_duplicate() => {
                // A concurrent retry recorded it first.
                let done = self
                    .store
                    .upload_by_request(invitation.id, request_id)
                    .await
                    .map_err(Error::from)?
                    .ok_or(Error::Aborted("the upload was being recorded; retry"))?;
                Ok(pb::UploadFormFileResponse {
                    upload_id: done.id.to_string(),
                    size_bytes: done.size_bytes,
                    sha256: done.sha256,
                })
            }
            Err(e) => Err(Error::from(e).into()),
        }
    }

    /// Checks and stores a submission: the core of SubmitForm and of the
    /// web page's submit.
    pub async fn submit(
        &self,
        peer: &str,
        req: pb::SubmitFormRequest,
    ) -> Result<pb::SubmitFormResponse, Status> {
        let mut v = Violations::new();
        let request_id = required_uuid(&mut v, "request_id", &req.request_id);
        if req.client_token.is_empty() {
            v.add(
                "client_token",
                "is required: the token of the client's verification",
            );
        }
        let invitation = self.invitation(&req.secret).await?;
        check(v)?;
        let Some(request_id) = request_id else {
            return Err(Status::internal("validated request incomplete"));
        };

        // A retry of a stored submission gets the first result.
        if let Some(existing) = self
            .store
            .submission_for(invitation.id)
            .await
            .map_err(Error::from)?
        {
            if existing.request_id == request_id {
                let submission = self.submission_with_records(existing).await?;
                return Ok(pb::SubmitFormResponse {
                    submission: Some(submission),
                });
            }
            return Err(Error::Precondition {
                reason: "already_submitted",
                message: "this invitation has been answered",
            }
            .into());
        }
        let now = Utc::now();
        if invitation.revoked_at.is_some() {
            self.refused(peer, &invitation, "invitation_revoked").await;
            return Err(REVOKED.into());
        }
        if now >= invitation.expires_at {
            self.refused(peer, &invitation, "invitation_expired").await;
            return Err(Error::Precondition {
                reason: "invitation_expired",
                message: "this invitation has expired; ask the firm for a new one",
            }
            .into());
        }

        // The client proved control of a contact channel for this invitation.
        let claims = self.client_of(peer, &invitation, &req.client_token).await?;
        let form = self
            .store
            .form(&invitation.form_name, invitation.form_version)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("form version"))?;
        if claims.level < form.required_verification_level {
            self.refused(peer, &invitation, "verification_level").await;
            return Err(Error::Denied {
                reason: "verification_level".into(),
                message: "this form needs an identity document check first".into(),
            }
            .into());
        }

        // Every violation at once; nothing is stored from an invalid one.
        let def = definition(&form)?;
        let mut v = Violations::new();
        if req.form_version != invitation.form_version {
            v.add(
                "form_version",
                format!(
                    "must be the invitation's version ({})",
                    invitation.form_version
                ),
            );
        }
        if req.accepted_privacy_notice_version != form.privacy_notice_version {
            v.add(
                "accepted_privacy_notice_version",
                format!(
                    "the client must accept privacy notice version {}",
                    form.privacy_notice_version
                ),
            );
        }
        let checked = def.check_answers(&req.answers, &mut v);
        // Each file answer names an upload made for this invitation and field.
        let uploads = self
            .store
            .uploads(invitation.id)
            .await
            .map_err(Error::from)?;
        let mut files = Vec::with_capacity(checked.files.len());
        for (field, upload_id) in &checked.files {
            match uploads
                .iter()
                .find(|u| u.id == *upload_id && u.field == field.name)
            {
                Some(u) => files.push((field.category, field.name.clone(), u.record_id)),
                None => v.add(
                    format!("answers[{}]", field.name),
                    "must be the upload id of a file uploaded for this field",
                ),
            }
        }
        check(v)?;
        let notice = self
            .store
            .notice(form.privacy_notice_version)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("privacy notice"))?;

        let mut stored = self
            .store_answers(&invitation, request_id, checked.groups)
            .await?;
        stored.extend(
            files
                .into_iter()
                .map(|(category, name, record_id)| (record_id, category, vec![name])),
        );
        let row = SubmissionRow {
            id: Uuid::now_v7(),
            invitation_id: invitation.id,
            request_id,
            client_id: invitation.client_id,
            matter_id: invitation.matter_id,
            form_name: form.name.clone(),
            form_version: form.version,
            privacy_notice_version: notice.version,
            privacy_notice_sha256: notice.sha256.clone(),
            consent_at: now,
            state: "submitted".into(),
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            receipt_sent_at: None,
        };
        let records: Vec<SubmissionRecordRow> = stored
            .iter()
            .map(|(record_id, category, names)| SubmissionRecordRow {
                submission_id: row.id,
                record_id: *record_id,
                category: category.as_str().to_owned(),
                fields: names.join(","),
            })
            .collect();
        let event = EventBuilder::new(
            ServiceName::Intake,
            &self.trust_domain,
            Action::IntakeSubmissionReceived,
        )
        .actor(ActorKind::Client, &invitation.client_id.to_string(), peer)
        .resource("submission", &row.id.to_string())
        .scope(Some(invitation.client_id), Some(invitation.matter_id))
        .outcome(Outcome::Allowed, "")
        .build();
        // Whoever made the invitation (a staff member) is told that the
        // answers wait for their review.
        let notice = Uuid::parse_str(&invitation.created_by).ok().map(|inviter| {
            confidant_runtime::staff_notices::Notice::to_staff(
                format!("submission:{}", row.id),
                confidant_proto::identity::v1::StaffNoticeKind::SubmissionReceived,
                row.id,
                inviter,
            )
            .insert(now)
        });
        let told = notice.is_some();
        match self
            .store
            .insert_submission(&row, &records, &event, notice)
            .await
        {
            Ok(()) => {
                if told {
                    confidant_runtime::staff_notices::drain_soon(
                        self.store.db().clone(),
                        self.peers.identity.clone(),
                    );
                }
                crate::receipts::send_soon(
                    self.store.db().clone(),
                    self.secrets.clone(),
                    self.peers.identity.clone(),
                    row.id,
                );
                Ok(pb::SubmitFormResponse {
                    submission: Some(submission_proto(&row, &records)),
                })
            }
            Err(e) => {
                // A concurrent retry of the same request won the race.
                if let Some(existing) = self
                    .store
                    .submission_for(invitation.id)
                    .await
                    .map_err(Error::from)?
                    && existing.request_id == request_id
                {
                    let submission = self.submission_with_records(existing).await?;
                    return Ok(pb::SubmitFormResponse {
                        submission: Some(submission),
                    });
                }
                if e.is_duplicate()
                    || matches!(e, confidant_runtime::portable::TransactError::Unmet { .. })
                {
                    // Withdrawn meanwhile, or answered by another request.
                    if self
                        .store
                        .invitation(invitation.id)
                        .await
                        .map_err(Error::from)?
                        .is_some_and(|i| i.revoked_at.is_some())
                    {
                        return Err(REVOKED.into());
                    }
                    return Err(Error::Precondition {
                        reason: "already_submitted",
                        message: "this invitation has been answered",
                    }
                    .into());
                }
                Err(Error::from(e).into())
            }
        }
    }

    async fn store_answers(
        &self,
        invitation: &InvitationRow,
        request_id: Uuid,
        groups: Vec<(Category, Vec<(&crate::domain::Field, String)>)>,
    ) -> Result<Vec<(Uuid, Category, Vec<String>)>, Error> {
        let channel = self.peers.vault.clone().ok_or(Error::Peer {
            service: "vault",
            detail: "not configured".into(),
        })?;
        let mut vault = VaultServiceClient::new(channel);
        let mut stored = Vec::with_capacity(groups.len());
        for (category, answers) in groups {
            let names: Vec<String> = answers.iter().map(|(f, _)| f.name.clone()).collect();
            let record = vault_pb::NewRecord {
                client_id: invitation.client_id.to_string(),
                matter_id: invitation.matter_id.to_string(),
                category: category.to_proto() as i32,
                fields: answers
                    .into_iter()
                    .map(|(f, value)| vault_pb::Field {
                        name: f.name.clone(),
                        r#type: f.kind.vault_type() as i32,
                        value,
                        masked: false,
                    })
                    .collect(),
                original: false,
            };
            let response = vault
                .create_record(vault_pb::CreateRecordRequest {
                    record: Some(record),
                    request_id: record_request_id(request_id, category).to_string(),
                })
                .await
                .map_err(|s| Error::Peer {
                    service: "vault",
                    detail: format!("{:?}", s.code()),
                })?
                .into_inner();
            let id = response
                .record
                .and_then(|r| Uuid::parse_str(&r.id).ok())
                .ok_or(Error::Peer {
                    service: "vault",
                    detail: "no record id in the response".into(),
                })?;
            stored.push((id, category, names));
        }
        Ok(stored)
    }
}

#[tonic::async_trait]
impl IntakeService for IntakeApi {
    #[tracing::instrument(name = "intake.publish_privacy_notice", skip_all)]
    async fn publish_privacy_notice(
        &self,
        request: Request<pb::PublishPrivacyNoticeRequest>,
    ) -> Result<Response<pb::PublishPrivacyNoticeResponse>, Status> {
        let actor = self
            .staff_with(&request, "forms.manage", None, None)
            .await?;
        let text = request.into_inner().text;
        let mut v = Violations::new();
        let chars = text.chars().count();
        if text.trim().is_empty() || chars > MAX_NOTICE {
            v.add("text", format!("1 to {MAX_NOTICE} characters"));
        }
        check(v)?;
        for _ in 0..3 {
            let version = self
                .store
                .latest_notice()
                .await
                .map_err(Error::from)?
                .map_or(1, |n| n.version + 1);
            let row = NoticeRow {
                version,
                sha256: notice_digest(&text),
                body: text.clone(),
                published_at: Utc::now(),
                published_by: actor.id().to_owned(),
            };
            let event = self
                .event(&actor, Action::IntakeNoticePublished)
                .resource("privacy_notice", &version.to_string())
                .outcome(Outcome::Allowed, "")
                .build();
            match self.store.insert_notice(&row, &event).await {
                Ok(()) => {
                    return Ok(Response::new(pb::PublishPrivacyNoticeResponse {
                        notice: Some(notice_proto(&row)),
                    }));
                }
                Err(e) if e.is_duplicate() => continue,
                Err(e) => return Err(Error::from(e).into()),
            }
        }
        Err(Error::Aborted("another notice was being published; retry").into())
    }

    #[tracing::instrument(name = "intake.publish_form", skip_all)]
    async fn publish_form(
        &self,
        request: Request<pb::PublishFormRequest>,
    ) -> Result<Response<pb::PublishFormResponse>, Status> {
        let actor = self
            .staff_with(&request, "forms.manage", None, None)
            .await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        if !valid_form_name(&req.name) {
            v.add(
                "name",
                "lowercase letters, digits and dashes, starting with a letter, at most 64",
            );
        }
        let title = req.title.trim();
        if title.is_empty() || title.chars().count() > MAX_TITLE {
            v.add("title", format!("1 to {MAX_TITLE} characters"));
        }
        if !(1..=2).contains(&req.required_verification_level) {
            v.add(
                "required_verification_level",
                "1 (contact proven) or 2 (identity document checked too)",
            );
        }
        let notice = if req.privacy_notice_version < 1 {
            v.add("privacy_notice_version", "is required (1 or more)");
            None
        } else {
            let n = self
                .store
                .notice(req.privacy_notice_version)
                .await
                .map_err(Error::from)?;
            if n.is_none() {
                v.add("privacy_notice_version", "no such privacy notice version");
            }
            n
        };
        let def = FormDefinition::parse(&req.fields, "fields", &mut v);
        check(v)?;
        let (Some(def), Some(notice)) = (def, notice) else {
            return Err(Status::internal("validated request incomplete"));
        };
        for _ in 0..3 {
            let version = self
                .store
                .form(&req.name, 0)
                .await
                .map_err(Error::from)?
                .map_or(1, |f| f.version + 1);
            let row = FormRow {
                name: req.name.clone(),
                version,
                title: title.to_owned(),
                fields: def.to_json(),
                privacy_notice_version: notice.version,
                required_verification_level: req.required_verification_level,
                published_at: Utc::now(),
                published_by: actor.id().to_owned(),
            };
            let event = self
                .event(&actor, Action::IntakeFormPublished)
                .resource("form", &format!("{}/{}", row.name, row.version))
                .outcome(Outcome::Allowed, "")
                .build();
            match self.store.insert_form(&row, &event).await {
                Ok(()) => {
                    return Ok(Response::new(pb::PublishFormResponse {
                        form: Some(form_proto(&row)?),
                    }));
                }
                Err(e) if e.is_duplicate() => continue,
                Err(e) => return Err(Error::from(e).into()),
            }
        }
        Err(Error::Aborted("another version of the form was being published; retry").into())
    }

    async fn get_form(
        &self,
        request: Request<pb::GetFormRequest>,
    ) -> Result<Response<pb::GetFormResponse>, Status> {
        Self::staff(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        if !valid_form_name(&req.name) {
            v.add("name", "must be a form name");
        }
        if req.version < 0 {
            v.add("version", "0 (the latest) or a version number");
        }
        check(v)?;
        let form = self
            .store
            .form(&req.name, req.version)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("form version"))?;
        let notice = self
            .store
            .notice(form.privacy_notice_version)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::GetFormResponse {
            form: Some(form_proto(&form)?),
            privacy_notice: notice.as_ref().map(notice_proto),
        }))
    }

    async fn list_forms(
        &self,
        request: Request<pb::ListFormsRequest>,
    ) -> Result<Response<pb::ListFormsResponse>, Status> {
        Self::staff(&request)?;
        let rows = self.store.latest_forms().await.map_err(Error::from)?;
        let forms = rows.iter().map(form_proto).collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(pb::ListFormsResponse { forms }))
    }

    #[tracing::instrument(name = "intake.create_invitation", skip_all)]
    async fn create_invitation(
        &self,
        request: Request<pb::CreateInvitationRequest>,
    ) -> Result<Response<pb::CreateInvitationResponse>, Status> {
        Self::staff(&request)?;
        let req = request.get_ref().clone();
        let mut v = Violations::new();
        let client = required_uuid(&mut v, "client_id", &req.client_id);
        let matter = required_uuid(&mut v, "matter_id", &req.matter_id);
        let days = match req.valid_days {
            0 => DEFAULT_INVITATION_DAYS,
            d if (1..=MAX_INVITATION_DAYS).contains(&d) => d,
            _ => {
                v.add(
                    "valid_days",
                    format!("1 to {MAX_INVITATION_DAYS} (0: {DEFAULT_INVITATION_DAYS})"),
                );
                DEFAULT_INVITATION_DAYS
            }
        };
        let address = req.contact_address.trim().to_owned();
        let channel = check_contact(&mut v, req.contact_channel, &address);
        let mut form = None;
        if !valid_form_name(&req.form_name) {
            v.add("form_name", "must be a form name");
        } else if req.form_version < 0 {
            v.add("form_version", "0 (the latest) or a version number");
        } else {
            form = self
                .store
                .form(&req.form_name, req.form_version)
                .await
                .map_err(Error::from)?;
            if form.is_none() {
                if req.form_version == 0
                    || self
                        .store
                        .form(&req.form_name, 0)
                        .await
                        .map_err(Error::from)?
                        .is_none()
                {
                    v.add("form_name", "no published form of this name");
                } else {
                    v.add("form_version", "no such version of the form");
                }
            }
        }
        check(v)?;
        let (Some(client), Some(matter), Some(form), Some(channel)) =
            (client, matter, form, channel)
        else {
            return Err(Status::internal("validated request incomplete"));
        };
        let actor = self
            .staff_with(&request, "client_data.write", Some(client), Some(matter))
            .await?;
        let secret = new_secret()?;
        let now = Utc::now();
        let id = Uuid::now_v7();
        let sealed = self
            .secrets
            .seal(id.as_bytes(), address.as_bytes())
            .map_err(|_| Error::Aborted("the contact address could not be sealed"))?;
        let row = InvitationRow {
            id,
            client_id: client,
            matter_id: matter,
            form_name: form.name.clone(),
            form_version: form.version,
            created_by: actor.id().to_owned(),
            created_at: now,
            expires_at: now + Duration::days(i64::from(days)),
            submitted_at: None,
            contact_channel: channel.to_owned(),
            contact_sealed: Some(sealed),
            revoked_at: None,
        };
        let event = self
            .event(&actor, Action::IntakeInvitationCreated)
            .resource("invitation", &row.id.to_string())
            .scope(Some(client), Some(matter))
            .outcome(Outcome::Allowed, "")
            .build();
        self.store
            .insert_invitation(&row, &secret_hash(&secret), &event)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::CreateInvitationResponse {
            invitation: Some(invitation_proto(&row, now)),
            secret,
        }))
    }

    async fn open_invitation(
        &self,
        request: Request<pb::OpenInvitationRequest>,
    ) -> Result<Response<pb::OpenInvitationResponse>, Status> {
        let invitation = self.open_for_answers(&request.get_ref().secret).await?;
        let form = self
            .store
            .form(&invitation.form_name, invitation.form_version)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("form version"))?;
        let notice = self
            .store
            .notice(form.privacy_notice_version)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::OpenInvitationResponse {
            invitation_id: invitation.id.to_string(),
            form: Some(form_proto(&form)?),
            privacy_notice: notice.as_ref().map(notice_proto),
            expire_time: Some(ts(invitation.expires_at)),
        }))
    }

    #[tracing::instrument(name = "intake.start_invitation_verification", skip_all)]
    async fn start_invitation_verification(
        &self,
        request: Request<pb::StartInvitationVerificationRequest>,
    ) -> Result<Response<pb::StartInvitationVerificationResponse>, Status> {
        let invitation = self.open_for_answers(&request.get_ref().secret).await?;
        let sealed = invitation.contact_sealed.as_deref().ok_or(Error::Precondition {
            reason: "no_contact",
            message: "this invitation has no contact to send a code to; ask the firm for a new one",
        })?;
        let address = self
            .secrets
            .open(invitation.id.as_bytes(), sealed)
            .map_err(|_| Error::Aborted("the invitation's contact could not be opened"))?;
        let address = zeroize::Zeroizing::new(String::from_utf8_lossy(&address).into_owned());
        let channel = if invitation.contact_channel == "phone" {
            ContactChannel::Phone
        } else {
            ContactChannel::Email
        };
        let started = self
            .identity()?
            .start_client_verification(StartClientVerificationRequest {
                client_id: invitation.client_id.to_string(),
                channel: channel as i32,
                contact_address: address.to_string(),
                reference: invitation.id.to_string(),
            })
            .await
            .map_err(identity_refusal)?
            .into_inner();
        Ok(Response::new(pb::StartInvitationVerificationResponse {
            verification_id: started.verification_id,
            expire_time: started.expire_time,
            contact_hint: contact_hint(&invitation.contact_channel, &address),
        }))
    }

    #[tracing::instrument(name = "intake.complete_invitation_verification", skip_all)]
    async fn complete_invitation_verification(
        &self,
        request: Request<pb::CompleteInvitationVerificationRequest>,
    ) -> Result<Response<pb::CompleteInvitationVerificationResponse>, Status> {
        let req = request.into_inner();
        let invitation = self.open_for_answers(&req.secret).await?;
        let mut v = Violations::new();
        required_uuid(&mut v, "verification_id", &req.verification_id);
        if req.code.len() != 6 || !req.code.chars().all(|c| c.is_ascii_digit()) {
            v.add("code", "must be the 6 digits of the code");
        }
        check(v)?;
        let done = self
            .identity()?
            .complete_client_verification(CompleteClientVerificationRequest {
                verification_id: req.verification_id,
                code: req.code,
            })
            .await
            .map_err(identity_refusal)?
            .into_inner();
        // The verification must be this invitation's, for this client.
        let tokens = self.tokens.as_ref().ok_or(Error::Peer {
            service: "identity",
            detail: "not configured".into(),
        })?;
        let claims = tokens
            .authenticate_client(&done.client_token)
            .await
            .map_err(|_| Error::ClientUnauthenticated)?;
        if claims.sub != invitation.client_id.to_string()
            || claims.reference != invitation.id.to_string()
        {
            return Err(Error::ClientUnauthenticated.into());
        }
        Ok(Response::new(pb::CompleteInvitationVerificationResponse {
            client_token: done.client_token,
            expire_time: done.expire_time,
            verification_level: done.verification_level,
        }))
    }

    #[tracing::instrument(name = "intake.upload_form_file", skip_all)]
    async fn upload_form_file(
        &self,
        request: Request<tonic::Streaming<pb::UploadFormFileRequest>>,
    ) -> Result<Response<pb::UploadFormFileResponse>, Status> {
        let peer = PeerIdentity::of(&request)
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let mut stream = request.into_inner();
        let first = stream.message().await?.and_then(|m| m.part);
        let Some(pb::upload_form_file_request::Part::Header(header)) = first else {
            let mut v = Violations::new();
            v.add("header", "the first message must carry the header");
            return Err(Error::Invalid(v).into());
        };
        self.upload_file(&peer, header, &mut stream)
            .await
            .map(Response::new)
    }

    #[tracing::instrument(name = "intake.submit_form", skip_all)]
    async fn submit_form(
        &self,
        request: Request<pb::SubmitFormRequest>,
    ) -> Result<Response<pb::SubmitFormResponse>, Status> {
        let peer = PeerIdentity::of(&request)
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        self.submit(&peer, request.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_submissions(
        &self,
        request: Request<pb::ListSubmissionsRequest>,
    ) -> Result<Response<pb::ListSubmissionsResponse>, Status> {
        let req = request.get_ref();
        let (client, matter, limit, after) = self
            .readable_page(
                &request,
                (&req.client_id, &req.matter_id),
                (req.page_size, &req.page_token),
                &[Part::Time, Part::Uuid],
            )
            .await?;
        let rows = self
            .store
            .submissions(client, matter, after.values(), limit + 1)
            .await
            .map_err(Error::from)?;
        let (rows, next_page_token) = page::split(rows, limit, |r| {
            page::token(&[Key::Time(r.consent_at), Key::Uuid(r.id)])
        });
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut records = self
            .store
            .records_of(client, &ids)
            .await
            .map_err(Error::from)?;
        let submissions = rows
            .iter()
            .map(|row| submission_proto(row, &records.remove(&row.id).unwrap_or_default()))
            .collect();
        Ok(Response::new(pb::ListSubmissionsResponse {
            submissions,
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "intake.list_invitations", skip_all)]
    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        let req = request.get_ref();
        let (client, matter, limit, after) = self
            .readable_page(
                &request,
                (&req.client_id, &req.matter_id),
                (req.page_size, &req.page_token),
                &[Part::Uuid],
            )
            .await?;
        let rows = self
            .store
            .invitations(client, matter, after.values(), limit + 1)
            .await
            .map_err(Error::from)?;
        let (rows, next_page_token) = page::split(rows, limit, |r| page::token(&[Key::Uuid(r.id)]));
        let now = Utc::now();
        Ok(Response::new(pb::ListInvitationsResponse {
            invitations: rows.iter().map(|r| invitation_proto(r, now)).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "intake.revoke_invitation", skip_all)]
    async fn revoke_invitation(
        &self,
        request: Request<pb::RevokeInvitationRequest>,
    ) -> Result<Response<pb::RevokeInvitationResponse>, Status> {
        Self::staff(&request)?;
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "invitation_id", &request.get_ref().invitation_id);
        check(v)?;
        let Some(id) = id else {
            return Err(Status::internal("validated request incomplete"));
        };
        let invitation = self
            .store
            .invitation(id)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("invitation"))?;
        let (actor, event) = self
            .writer_about(
                &request,
                (invitation.client_id, invitation.matter_id),
                Action::IntakeInvitationRevoked,
                ("invitation", id),
            )
            .await?;
        let now = Utc::now();
        let event = event.at(now).build();
        let revoked = self
            .store
            .revoke_invitation(id, actor.id(), now, &event)
            .await
            .map_err(Error::from)?;
        if !revoked {
            // Answered or withdrawn since it was read: say which.
            let answered = self
                .store
                .invitation(id)
                .await
                .map_err(Error::from)?
                .is_some_and(|i| i.submitted_at.is_some());
            return Err(if answered {
                Error::Precondition {
                    reason: "already_submitted",
                    message: "this invitation has been answered; its submission can be rejected",
                }
            } else {
                Error::Precondition {
                    reason: "invitation_revoked",
                    message: "this invitation was withdrawn already",
                }
            }
            .into());
        }
        // The guarded update held: the row is the one read, now withdrawn.
        let withdrawn = InvitationRow {
            revoked_at: Some(now),
            ..invitation
        };
        Ok(Response::new(pb::RevokeInvitationResponse {
            invitation: Some(invitation_proto(&withdrawn, now)),
        }))
    }

    #[tracing::instrument(name = "intake.review_submission", skip_all)]
    async fn review_submission(
        &self,
        request: Request<pb::ReviewSubmissionRequest>,
    ) -> Result<Response<pb::ReviewSubmissionResponse>, Status> {
        Self::staff(&request)?;
        let authorization = request.metadata().get("authorization").cloned();
        let req = request.get_ref().clone();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "submission_id", &req.submission_id);
        if confidant_vault::domain::Purpose::from_proto(req.purpose).is_none() {
            v.add("purpose", "must be set to a purpose");
        }
        if req.justification.chars().count() > 1_000 {
            v.add("justification", "at most 1,000 characters");
        }
        check(v)?;
        let Some(id) = id else {
            return Err(Status::internal("validated request incomplete"));
        };
        let row = self
            .store
            .submission(id)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("submission"))?;
        self.staff_with(
            &request,
            "client_data.read",
            Some(row.client_id),
            Some(row.matter_id),
        )
        .await?;
        let form = self
            .store
            .form(&row.form_name, row.form_version)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("form version"))?;
        let def = definition(&form)?;
        let all_records = self.store.records(row.id).await.map_err(Error::from)?;
        let channel = self.peers.vault.clone().ok_or(Error::Peer {
            service: "vault",
            detail: "not configured".into(),
        })?;
        // Uploaded files are documents: the answer is the vault record to
        // download; the other records are read.
        let is_file = |r: &SubmissionRecordRow| {
            def.fields
                .iter()
                .any(|f| f.kind == crate::domain::Kind::File && f.name == r.fields)
        };
        let (files, records): (Vec<&SubmissionRecordRow>, Vec<&SubmissionRecordRow>) =
            all_records.iter().partition(|r| is_file(r));
        // The vault reads as the reviewer: their token goes with the call.
        let mut vault_request = Request::new(vault_pb::BatchGetRecordsRequest {
            record_ids: records.iter().map(|r| r.record_id.to_string()).collect(),
            purpose: req.purpose,
            justification: req.justification.clone(),
            read_mask: None,
        });
        if let Some(value) = authorization {
            vault_request.metadata_mut().insert("authorization", value);
        }
        let results = VaultServiceClient::new(channel)
            .batch_get_records(vault_request)
            .await
            .map_err(|s| match s.code() {
                Code::PermissionDenied | Code::Unauthenticated | Code::FailedPrecondition => s,
                code => Error::Peer {
                    service: "vault",
                    detail: format!("{code:?}"),
                }
                .into(),
            })?
            .into_inner()
            .results;
        // Field name -> (value, masked, category, unavailable reason).
        let mut seen: Vec<(String, String, bool, i32, String)> = files
            .iter()
            .map(|r| {
                let category = Category::parse(&r.category)
                    .map_or(vault_pb::DataCategory::Unspecified, Category::to_proto)
                    as i32;
                (
                    r.fields.clone(),
                    r.record_id.to_string(),
                    false,
                    category,
                    String::new(),
                )
            })
            .collect();
        for (record, result) in records.iter().zip(results) {
            let category = Category::parse(&record.category)
                .map_or(vault_pb::DataCategory::Unspecified, Category::to_proto)
                as i32;
            let status = result.status.unwrap_or_default();
            match result.record {
                Some(read) if status.code == 0 => {
                    for f in read.fields {
                        seen.push((f.name, f.value, f.masked, category, String::new()));
                    }
                }
                _ => {
                    let reason = if status.reason.is_empty() {
                        "unavailable".to_owned()
                    } else {
                        status.reason
                    };
                    for name in record.fields.split(',') {
                        seen.push((
                            name.to_owned(),
                            String::new(),
                            false,
                            category,
                            reason.clone(),
                        ));
                    }
                }
            }
        }
        let answers = def
            .fields
            .iter()
            .filter_map(|f| {
                let (_, value, masked, category, reason) =
                    seen.iter().find(|(name, ..)| *name == f.name)?;
                Some(pb::ReviewedAnswer {
                    field: f.name.clone(),
                    label: f.label.clone(),
                    value: value.clone(),
                    masked: *masked,
                    category: *category,
                    unavailable_reason: reason.clone(),
                })
            })
            .collect();
        Ok(Response::new(pb::ReviewSubmissionResponse {
            submission: Some(submission_proto(&row, &all_records)),
            answers,
        }))
    }

    #[tracing::instrument(name = "intake.decide_submission", skip_all)]
    async fn decide_submission(
        &self,
        request: Request<pb::DecideSubmissionRequest>,
    ) -> Result<Response<pb::DecideSubmissionResponse>, Status> {
        Self::staff(&request)?;
        let req = request.get_ref().clone();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "submission_id", &req.submission_id);
        let state = match pb::SubmissionState::try_from(req.decision) {
            Ok(pb::SubmissionState::Accepted) => "accepted",
            Ok(pb::SubmissionState::Rejected) => {
                if req.reason.trim().is_empty() {
                    v.add("reason", "is required for a rejection");
                }
                "rejected"
            }
            _ => {
                v.add(
                    "decision",
                    "SUBMISSION_STATE_ACCEPTED or SUBMISSION_STATE_REJECTED",
                );
                ""
            }
        };
        if req.reason.chars().count() > 1_000 {
            v.add("reason", "at most 1,000 characters");
        }
        check(v)?;
        let Some(id) = id else {
            return Err(Status::internal("validated request incomplete"));
        };
        let row = self
            .store
            .submission(id)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("submission"))?;
        let (actor, event) = self
            .writer_about(
                &request,
                (row.client_id, row.matter_id),
                Action::IntakeSubmissionDecided,
                ("submission", row.id),
            )
            .await?;
        let now = Utc::now();
        let reason = req.reason.trim();
        let event = event.outcome(Outcome::Allowed, state).build();
        match self
            .store
            .decide(
                row.id,
                state,
                actor.id(),
                now,
                (!reason.is_empty()).then_some(reason),
                &event,
            )
            .await
        {
            Ok(()) => {}
            Err(confidant_runtime::portable::TransactError::Unmet { .. }) => {
                return Err(Error::Precondition {
                    reason: "already_decided",
                    message: "this submission has been decided",
                }
                .into());
            }
            Err(e) => return Err(Error::from(e).into()),
        }
        let row = self
            .store
            .submission(id)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("submission"))?;
        Ok(Response::new(pb::DecideSubmissionResponse {
            submission: Some(self.submission_with_records(row).await?),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_must_be_of_its_declared_type() {
        assert!(content_matches("application/pdf", b"%PDF-1.7\n%\xe2\xe3"));
        assert!(!content_matches("image/png", b"%PDF-1.7\n"));
        assert!(content_matches("text/plain", "Grüße".as_bytes()));
        // A sample cut inside a character is still text; a NUL is not.
        assert!(content_matches("text/csv", &"a,ü".as_bytes()[..4]));
        assert!(!content_matches("text/plain", b"MZ\0\0binary"));
        assert!(!content_matches("application/pdf", b"just words"));
    }

    #[test]
    fn hints_show_where_a_code_went_without_the_address() {
        assert_eq!(
            contact_hint("email", "jane@example.org"),
            "j***@example.org"
        );
        assert_eq!(contact_hint("phone", "+44 20 7946 0958"), "***0958");
    }
}
