//! The gRPC face of the vault: boundary validation, the caller's identity
//! and the identity service's decision, then [`crate::records::Vault`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use confidant_proto::audit::v1::Outcome;
use confidant_proto::vault::v1 as pb;
use confidant_proto::vault::v1::vault_service_server::VaultService;
use confidant_runtime::client::PeerChannel;
use confidant_runtime::error::Violations;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{
    self, FieldSelection, NewRecord, optional_category, optional_uuid, required_uuid,
};
use crate::error::Error;
use crate::records::{Actor, OpenedRecord, ReadIntent, Vault};
use crate::store::{RecordRow, ScopeRow, ScopeState};

/// Handlers of `confidant.vault.v1.VaultService`.
#[derive(Debug, Clone)]
pub struct VaultApi {
    vault: Arc<Vault>,
    writers: Vec<String>,
    retention: String,
    decider: Arc<confidant_runtime::decide::Decider>,
}

fn check(v: Violations) -> Result<(), Status> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(v).into())
    }
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Counts by reason, as `GetKeyStats` answers them.
fn counts<'a>(
    by_reason: impl Iterator<Item = (&'a str, u64)>,
) -> std::collections::HashMap<String, i64> {
    by_reason
        .map(|(reason, n)| (reason.to_owned(), i64::try_from(n).unwrap_or(i64::MAX)))
        .collect()
}

fn category_proto(name: &str) -> i32 {
    domain::Category::parse(name).map_or(0, |c| c.to_proto() as i32)
}

fn record_state(row: &RecordRow) -> pb::RecordState {
    if row.wrapped_key.is_none() {
        return pb::RecordState::Shredded;
    }
    match ScopeState::parse(&row.scope_state) {
        ScopeState::Active => pb::RecordState::Active,
        ScopeState::PendingDestruction => pb::RecordState::PendingDestruction,
        ScopeState::Shredded => pb::RecordState::Shredded,
    }
}

/// A record's metadata as the API shows it.
/// What a hold covers, from its request: a matter and category filter, or
/// an explicit set of scopes (not both).
pub fn hold_cover(
    v: &mut Violations,
    matter: Option<Uuid>,
    category: Option<crate::domain::Category>,
    scope_ids: &[String],
) -> crate::store::HoldCover {
    if scope_ids.is_empty() {
        return crate::store::HoldCover::Filter(matter, category);
    }
    if scope_ids.len() > 1000 {
        v.add("scope_ids", "must name at most 1,000 scopes");
    }
    if matter.is_some() || category.is_some() {
        v.add(
            "scope_ids",
            "cannot be combined with matter_id or category: a hold names scopes or filters them",
        );
    }
    crate::store::HoldCover::Scopes(
        scope_ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| required_uuid(v, &format!("scope_ids[{i}]"), id))
            .collect(),
    )
}

pub fn metadata(row: &RecordRow) -> pb::RecordMetadata {
    let (shred_time, shred_order) = match (row.shredded_at, row.scope_shredded_at) {
        (Some(at), _) => (Some(at), row.shred_order.clone()),
        (None, Some(at)) => (Some(at), row.scope_shred_order.clone()),
        (None, None) => (None, None),
    };
    pb::RecordMetadata {
        id: row.id.to_string(),
        client_id: row.client_id.to_string(),
        matter_id: row.matter_id.map(|m| m.to_string()).unwrap_or_default(),
        category: category_proto(&row.category),
        scope_id: row.scope_id.to_string(),
        field_names: row
            .field_names
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        create_time: Some(ts(row.created_at)),
        created_by: row.created_by.clone(),
        state: record_state(row) as i32,
        shred_time: shred_time.map(ts),
        shred_order: shred_order.unwrap_or_default(),
        kind: if row.is_document() {
            pb::RecordKind::Document
        } else {
            pb::RecordKind::Fields
        } as i32,
        document: row.is_document().then(|| pb::DocumentSummary {
            size_bytes: row.doc_size.unwrap_or_default(),
            sha256: row.doc_sha256.clone().unwrap_or_default(),
        }),
        original: row.original == 1,
        version: row.version,
        supersedes: row.supersedes.map(|id| id.to_string()).unwrap_or_default(),
        superseded_by: row
            .superseded_by
            .map(|id| id.to_string())
            .unwrap_or_default(),
        supersede_time: row.superseded_at.map(ts),
    }
}

fn scope_state_proto(row: &ScopeRow) -> pb::ScopeState {
    match row.state() {
        ScopeState::Active => pb::ScopeState::Active,
        ScopeState::PendingDestruction => pb::ScopeState::PendingDestruction,
        ScopeState::Shredded => pb::ScopeState::Shredded,
    }
}

fn opened(record: OpenedRecord) -> pb::GetRecordResponse {
    pb::GetRecordResponse {
        record: Some(metadata(&record.row)),
        fields: record
            .fields
            .into_iter()
            .map(|f| pb::Field {
                name: f.name,
                r#type: f.field_type.to_proto() as i32,
                value: f.value.to_string(),
                masked: f.masked,
            })
            .collect(),
        audit_event_id: record.audit_event_id,
    }
}

fn item_status(result: Result<(), Error>) -> pb::ItemStatus {
    match result {
        Ok(()) => pb::ItemStatus::default(),
        Err(Error::Invalid(v)) => pb::ItemStatus {
            code: tonic::Code::InvalidArgument as i32,
            message: "invalid item".into(),
            reason: String::new(),
            violations: v
                .as_slice()
                .iter()
                .map(|f| pb::FieldViolation {
                    field: f.field.clone(),
                    description: f.description.clone(),
                })
                .collect(),
        },
        Err(e) => {
            let reason = e.reason();
            let status = Status::from(e);
            pb::ItemStatus {
                code: status.code() as i32,
                message: status.message().to_owned(),
                reason,
                violations: Vec::new(),
            }
        }
    }
}

/// A list's page size: as every service's lists (100 unset, at most 1,000).
fn page_size(v: &mut Violations, size: i32) -> i64 {
    confidant_runtime::page::page_size(v, "page_size", size, 1000)
}

/// Decisions already made within one request, per (client, matter).
type Decisions = HashMap<(Uuid, Option<Uuid>), Result<(), (String, String)>>;

impl VaultApi {
    /// Handlers over `vault`; `writers` are the SPIFFE ids that store
    /// records without a staff token.
    pub fn new(
        vault: Arc<Vault>,
        identity: Option<PeerChannel>,
        writers: Vec<String>,
        trust_domain: &str,
        decision_ttl: Duration,
    ) -> Self {
        Self {
            vault,
            writers,
            retention: confidant_runtime::ServiceName::Retention.spiffe_id(trust_domain),
            decider: Arc::new(confidant_runtime::decide::Decider::new(
                identity,
                decision_ttl,
            )),
        }
    }

    fn actor<T>(request: &Request<T>) -> Result<Actor, Error> {
        Actor::of(request).ok_or(Error::Unauthenticated)
    }

    /// The masking rules as stored, of `role` only if given.
    async fn masking_rules(&self, role: Option<&str>) -> Result<Vec<pb::MaskingRule>, Error> {
        Ok(self
            .vault
            .store()
            .masking_rules_of(role)
            .await?
            .iter()
            .map(|(role, category, field_type, mask)| {
                crate::masking::to_proto(role, category, field_type, mask)
            })
            .collect())
    }

    async fn decide(
        &self,
        staff_id: &str,
        permission: &str,
        client_id: Uuid,
        matter_id: Option<Uuid>,
    ) -> Result<(), Error> {
        use confidant_runtime::decide::Refusal;
        match self
            .decider
            .decide(staff_id, permission, Some(client_id), matter_id)
            .await
        {
            Ok(()) => Ok(()),
            Err(Refusal::Denied { reason, message }) => Err(Error::Denied { reason, message }),
            Err(Refusal::Unavailable(status)) => Err(Error::Identity(status)),
        }
    }

    /// A decision, made once per (client, matter) within a request.
    async fn decide_cached(
        &self,
        cache: &mut Decisions,
        staff_id: &str,
        permission: &str,
        client_id: Uuid,
        matter_id: Option<Uuid>,
    ) -> Result<(), Error> {
        if let Some(known) = cache.get(&(client_id, matter_id)) {
            return known
                .clone()
                .map_err(|(reason, message)| Error::Denied { reason, message });
        }
        let result = self
            .decide(staff_id, permission, client_id, matter_id)
            .await;
        match &result {
            Ok(()) => {
                cache.insert((client_id, matter_id), Ok(()));
            }
            Err(Error::Denied { reason, message }) => {
                cache.insert(
                    (client_id, matter_id),
                    Err((reason.clone(), message.clone())),
                );
            }
            Err(_) => {}
        }
        result
    }

    /// May `actor` write into `scope`?
    async fn may_write(
        &self,
        actor: &Actor,
        cache: &mut Decisions,
        scope: &domain::ScopeRef,
    ) -> Result<(), Error> {
        match actor {
            Actor::Staff { staff_id, .. } => {
                self.decide_cached(
                    cache,
                    staff_id,
                    "client_data.write",
                    scope.client_id,
                    scope.matter_id,
                )
                .await
            }
            Actor::Service { peer } if self.writers.iter().any(|w| w == peer) => Ok(()),
            Actor::Service { .. } => Err(Error::Unauthenticated),
        }
    }

    fn is_retention(&self, actor: &Actor) -> bool {
        match actor {
            Actor::Staff { peer, .. } | Actor::Service { peer } => *peer == self.retention,
        }
    }

    /// A scope as the API shows it; counting its records is O(records), so
    /// only listings ask for it (a shred stays constant-time).
    async fn scope_proto(&self, row: &ScopeRow, count_records: bool) -> Result<pb::Scope, Error> {
        let store = self.vault.store();
        Ok(pb::Scope {
            id: row.id.to_string(),
            client_id: row.client_id.to_string(),
            matter_id: row.matter_id.map(|m| m.to_string()).unwrap_or_default(),
            category: category_proto(&row.category),
            state: scope_state_proto(row) as i32,
            create_time: Some(ts(row.created_at)),
            destroy_time: row.destroy_after.map(ts),
            shred_time: row.shredded_at.map(ts),
            shred_order: row.shred_order.clone().unwrap_or_default(),
            kms_key_id: row.kms_key_id.clone().unwrap_or_default(),
            record_count: if count_records {
                store.record_count(row.id).await?
            } else {
                0
            },
            original_count: if count_records {
                store.original_count(row.id).await?
            } else {
                0
            },
            hold_ids: store
                .holds_covering(row)
                .await?
                .into_iter()
                .map(|h| h.to_string())
                .collect(),
        })
    }

    /// Loads a record a staff member asks to read and lets it through only
    /// if identity allows it and its keys still exist; refusals are
    /// recorded in the audit log.
    async fn admit(
        &self,
        actor: &Actor,
        staff_id: &str,
        decisions: &mut Decisions,
        id: Uuid,
        intent: &ReadIntent<'_>,
    ) -> Result<RecordRow, Error> {
        let row = self.vault.load(id).await?;
        self.admit_row(actor, staff_id, decisions, row, intent)
            .await
    }

    /// [`Self::admit`] for a row already loaded.
    async fn admit_row(
        &self,
        actor: &Actor,
        staff_id: &str,
        decisions: &mut Decisions,
        row: RecordRow,
        intent: &ReadIntent<'_>,
    ) -> Result<RecordRow, Error> {
        if let Err(e) = self
            .decide_cached(
                decisions,
                staff_id,
                "client_data.read",
                row.client_id,
                row.matter_id,
            )
            .await
        {
            if let Error::Denied { reason, .. } = &e {
                self.vault
                    .record_refused_read(actor, &row, intent, Outcome::Denied, reason)
                    .await;
            }
            return Err(e);
        }
        if let Some(e) = Vault::unreadable(&row) {
            self.vault
                .record_refused_read(actor, &row, intent, Outcome::Failed, &e.reason())
                .await;
            return Err(e);
        }
        Ok(row)
    }

    /// Reads records for a staff member: each decided, refused reads
    /// recorded, the rest opened together (fail closed).
    async fn read(
        &self,
        actor: &Actor,
        ids: Vec<Result<Uuid, Violations>>,
        intent: &ReadIntent<'_>,
    ) -> Result<Vec<Result<OpenedRecord, Error>>, Error> {
        let Actor::Staff { staff_id, .. } = actor else {
            return Err(Error::Unauthenticated);
        };
        let mut decisions = Decisions::new();
        let mut slots: Vec<Option<Result<OpenedRecord, Error>>> = Vec::with_capacity(ids.len());
        let mut allowed: Vec<(usize, RecordRow)> = Vec::new();
        // Every well-formed id is looked up in one go.
        let wanted: Vec<Uuid> = ids
            .iter()
            .filter_map(|id| id.as_ref().ok().copied())
            .collect();
        let mut loaded = self.vault.load_many(&wanted).await.into_iter();
        for id in ids {
            if let Err(v) = id {
                slots.push(Some(Err(Error::Invalid(v))));
                continue;
            }
            let Some(found) = loaded.next() else {
                slots.push(Some(Err(Error::Conflict("record not read"))));
                continue;
            };
            let admitted = match found {
                Ok(row) => {
                    self.admit_row(actor, staff_id, &mut decisions, row, intent)
                        .await
                }
                Err(e) => Err(e),
            };
            let row = match admitted {
                Ok(row) => row,
                Err(e) => {
                    slots.push(Some(Err(e)));
                    continue;
                }
            };
            allowed.push((slots.len(), row));
            slots.push(None);
        }
        let (positions, rows): (Vec<usize>, Vec<RecordRow>) = allowed.into_iter().unzip();
        let opened = self.vault.open_many(actor, rows, intent).await;
        for (position, result) in positions.into_iter().zip(opened) {
            slots[position] = Some(result);
        }
        Ok(slots
            .into_iter()
            .map(|s| s.unwrap_or(Err(Error::Conflict("record not read"))))
            .collect())
    }
}

fn roles_of(actor: &Actor) -> &[String] {
    match actor {
        Actor::Staff { roles, .. } => roles,
        Actor::Service { .. } => &[],
    }
}

/// The stream of a download.
pub type DownloadStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::DownloadDocumentResponse, Status>> + Send>,
>;

enum Download {
    Info(Box<pb::DocumentInfo>, crate::documents::DocumentReader),
    Reading(crate::documents::DocumentReader),
    Done,
}

#[tonic::async_trait]
impl VaultService for VaultApi {
    type DownloadDocumentStream = DownloadStream;

    #[tracing::instrument(name = "vault.upload_document", skip_all)]
    async fn upload_document(
        &self,
        request: Request<tonic::Streaming<pb::UploadDocumentRequest>>,
    ) -> Result<Response<pb::UploadDocumentResponse>, Status> {
        use futures::StreamExt;
        let actor = Self::actor(&request)?;
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or(Error::StreamAborted)?;
        let Some(pb::upload_document_request::Part::Header(header)) = first.part else {
            let mut v = Violations::new();
            v.add("header", "the first message must carry the header");
            return Err(Error::Invalid(v).into());
        };
        let doc =
            crate::documents::NewDocument::parse(&header, self.vault.settings().max_document_bytes)
                .map_err(Error::Invalid)?;
        self.may_write(&actor, &mut Decisions::new(), &doc.scope)
            .await?;
        let chunks = stream.map(|message| match message {
            Ok(pb::UploadDocumentRequest {
                part: Some(pb::upload_document_request::Part::Chunk(bytes)),
            }) if bytes.len() <= crate::documents::MAX_CHUNK_BYTES => Ok(bytes),
            Ok(pb::UploadDocumentRequest {
                part: Some(pb::upload_document_request::Part::Chunk(_)),
            }) => {
                let mut v = Violations::new();
                v.add("chunk", "must be at most 1048576 bytes");
                Err(Error::Invalid(v))
            }
            Ok(_) => {
                let mut v = Violations::new();
                v.add("header", "only the first message carries a header");
                Err(Error::Invalid(v))
            }
            Err(_) => Err(Error::StreamAborted),
        });
        // The upload runs in a task of its own: if the client goes away and
        // this handler is dropped, the task still sees the broken stream
        // and removes what it wrote.
        let vault = self.vault.clone();
        let max = vault.settings().max_document_bytes;
        let request_id = (!header.request_id.is_empty()).then_some(header.request_id.clone());
        let row = tokio::spawn(async move {
            vault
                .upload(&actor, &doc, request_id.as_deref(), Box::pin(chunks), max)
                .await
        })
        .await
        .map_err(|_| Status::internal("the upload task failed"))??;
        tracing::info!(record_id = %row.id, size = row.doc_size.unwrap_or_default(), "document stored");
        Ok(Response::new(pb::UploadDocumentResponse {
            record: Some(metadata(&row)),
        }))
    }

    #[tracing::instrument(name = "vault.download_document", skip_all, fields(record_id = %request.get_ref().record_id))]
    async fn download_document(
        &self,
        request: Request<pb::DownloadDocumentRequest>,
    ) -> Result<Response<Self::DownloadDocumentStream>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "record_id", &req.record_id);
        let purpose = domain::purpose(&mut v, req.purpose, &req.justification);
        check(v)?;
        let (Some(id), Some(purpose)) = (id, purpose) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let Actor::Staff { staff_id, .. } = &actor else {
            return Err(Error::Unauthenticated.into());
        };
        let intent = ReadIntent {
            purpose,
            justification: &req.justification,
            roles: roles_of(&actor),
            fields: FieldSelection::All,
        };
        let row = self
            .admit(&actor, staff_id, &mut Decisions::new(), id, &intent)
            .await?;
        let reader = self.vault.open_document(&actor, row, &intent).await?;
        let info = pb::DocumentInfo {
            record: Some(metadata(&reader.row)),
            filename: reader.filename.clone(),
            media_type: reader.media_type.clone(),
            audit_event_id: reader.audit_event_id.clone(),
        };
        let stream =
            futures::stream::unfold(Download::Info(Box::new(info), reader), |state| async move {
                use pb::download_document_response::Part;
                match state {
                    Download::Info(info, reader) => Some((
                        Ok(pb::DownloadDocumentResponse {
                            part: Some(Part::Info(*info)),
                        }),
                        Download::Reading(reader),
                    )),
                    Download::Reading(mut reader) => match reader.next_segment().await {
                        Ok(Some(plain)) => Some((
                            Ok(pb::DownloadDocumentResponse {
                                part: Some(Part::Chunk(plain.to_vec())),
                            }),
                            Download::Reading(reader),
                        )),
                        Ok(None) => None,
                        Err(e) => Some((Err(Status::from(e)), Download::Done)),
                    },
                    Download::Done => None,
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(name = "vault.create_record", skip_all)]
    async fn create_record(
        &self,
        request: Request<pb::CreateRecordRequest>,
    ) -> Result<Response<pb::CreateRecordResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let record =
            match NewRecord::parse(req.record.as_ref(), self.vault.settings().limits, "record") {
                Ok(r) => Some(r),
                Err(errors) => {
                    v.extend(errors);
                    None
                }
            };
        let request_id = optional_uuid(&mut v, "request_id", &req.request_id);
        check(v)?;
        let Some(record) = record else {
            return Err(Status::internal("validated record missing"));
        };
        self.may_write(&actor, &mut Decisions::new(), &record.scope)
            .await?;
        let request_id = request_id.map(|r| r.to_string());
        let row = self
            .vault
            .create(&actor, &record, request_id.as_deref())
            .await?;
        // Every store is in the audit log already; this line is for debugging.
        tracing::debug!(record_id = %row.id, scope_id = %row.scope_id, "record stored");
        Ok(Response::new(pb::CreateRecordResponse {
            record: Some(metadata(&row)),
        }))
    }

    #[tracing::instrument(name = "vault.correct_record", skip_all, fields(record_id = %request.get_ref().record_id))]
    async fn correct_record(
        &self,
        request: Request<pb::CorrectRecordRequest>,
    ) -> Result<Response<pb::CorrectRecordResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let correction = match domain::Correction::parse(&req, self.vault.settings().limits) {
            Ok(c) => Some(c),
            Err(errors) => {
                v.extend(errors);
                None
            }
        };
        let request_id = optional_uuid(&mut v, "request_id", &req.request_id);
        check(v)?;
        let Some(correction) = correction else {
            return Err(Status::internal("validated correction missing"));
        };
        // A caller that may write nowhere learns nothing, not even whether
        // the record exists.
        if let Actor::Service { peer } = &actor
            && !self.writers.iter().any(|w| w == peer)
        {
            return Err(Error::Unauthenticated.into());
        }
        let old = self.vault.load(correction.record_id).await?;
        self.may_write(
            &actor,
            &mut Decisions::new(),
            &crate::records::scope_ref_of(&old)?,
        )
        .await?;
        let request_id = request_id.map(|r| r.to_string());
        let row = self
            .vault
            .correct(&actor, &old, &correction, request_id.as_deref())
            .await?;
        tracing::debug!(record_id = %row.id, supersedes = %old.id, "record corrected");
        Ok(Response::new(pb::CorrectRecordResponse {
            record: Some(metadata(&row)),
        }))
    }

    #[tracing::instrument(name = "vault.batch_create_records", skip_all, fields(items = request.get_ref().records.len()))]
    async fn batch_create_records(
        &self,
        request: Request<pb::BatchCreateRecordsRequest>,
    ) -> Result<Response<pb::BatchCreateRecordsResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.records.is_empty() || req.records.len() > domain::MAX_BATCH {
            v.add("records", "must hold 1 to 500 records");
        }
        check(v)?;
        let mut decisions = Decisions::new();
        let mut results = Vec::with_capacity(req.records.len());
        for (i, item) in req.records.iter().enumerate() {
            let outcome = async {
                let record = NewRecord::parse(
                    Some(item),
                    self.vault.settings().limits,
                    &format!("records[{i}]"),
                )
                .map_err(Error::Invalid)?;
                self.may_write(&actor, &mut decisions, &record.scope)
                    .await?;
                self.vault.create(&actor, &record, None).await
            }
            .await;
            results.push(match outcome {
                Ok(row) => pb::BatchCreateResult {
                    status: Some(item_status(Ok(()))),
                    record: Some(metadata(&row)),
                },
                Err(e) => pb::BatchCreateResult {
                    status: Some(item_status(Err(e))),
                    record: None,
                },
            });
        }
        Ok(Response::new(pb::BatchCreateRecordsResponse { results }))
    }

    #[tracing::instrument(name = "vault.get_record", skip_all, fields(record_id = %request.get_ref().record_id))]
    async fn get_record(
        &self,
        request: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::GetRecordResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "record_id", &req.record_id);
        let purpose = domain::purpose(&mut v, req.purpose, &req.justification);
        let fields = domain::read_mask(&mut v, req.read_mask.as_ref());
        check(v)?;
        let (Some(id), Some(purpose)) = (id, purpose) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let intent = ReadIntent {
            purpose,
            justification: &req.justification,
            roles: roles_of(&actor),
            fields,
        };
        let mut results = self.read(&actor, vec![Ok(id)], &intent).await?;
        match results.pop() {
            Some(Ok(record)) => Ok(Response::new(opened(record))),
            Some(Err(e)) => Err(e.into()),
            None => Err(Status::internal("no result")),
        }
    }

    #[tracing::instrument(name = "vault.batch_get_records", skip_all, fields(items = request.get_ref().record_ids.len()))]
    async fn batch_get_records(
        &self,
        request: Request<pb::BatchGetRecordsRequest>,
    ) -> Result<Response<pb::BatchGetRecordsResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.record_ids.is_empty() || req.record_ids.len() > domain::MAX_BATCH {
            v.add("record_ids", "must hold 1 to 500 ids");
        }
        let purpose = domain::purpose(&mut v, req.purpose, &req.justification);
        let fields = domain::read_mask(&mut v, req.read_mask.as_ref());
        check(v)?;
        let Some(purpose) = purpose else {
            return Err(Status::internal("validated request incomplete"));
        };
        let ids = req
            .record_ids
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let mut v = Violations::new();
                required_uuid(&mut v, &format!("record_ids[{i}]"), raw).ok_or(v)
            })
            .collect();
        let intent = ReadIntent {
            purpose,
            justification: &req.justification,
            roles: roles_of(&actor),
            fields,
        };
        let results = self
            .read(&actor, ids, &intent)
            .await?
            .into_iter()
            .map(|r| match r {
                Ok(record) => pb::BatchGetResult {
                    status: Some(item_status(Ok(()))),
                    record: Some(opened(record)),
                },
                Err(e) => pb::BatchGetResult {
                    status: Some(item_status(Err(e))),
                    record: None,
                },
            })
            .collect();
        Ok(Response::new(pb::BatchGetRecordsResponse { results }))
    }

    #[tracing::instrument(name = "vault.list_records", skip_all)]
    async fn list_records(
        &self,
        request: Request<pb::ListRecordsRequest>,
    ) -> Result<Response<pb::ListRecordsResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let client = required_uuid(&mut v, "client_id", &req.client_id);
        let matter = optional_uuid(&mut v, "matter_id", &req.matter_id);
        let category = optional_category(&mut v, "category", req.category);
        let limit = page_size(&mut v, req.page_size);
        let before = optional_uuid(&mut v, "page_token", &req.page_token);
        check(v)?;
        let client = client.unwrap_or_default();
        let filter = crate::store::RecordFilter {
            matter_id: matter,
            category,
            superseded: req.include_superseded,
        };
        match &actor {
            Actor::Staff { staff_id, .. } => {
                self.decide(staff_id, "client_data.read", client, matter)
                    .await?;
            }
            Actor::Service { .. } if self.is_retention(&actor) => {}
            Actor::Service { .. } => return Err(Error::Unauthenticated.into()),
        }
        let rows = self
            .vault
            .list(&actor, client, &filter, before, limit + 1)
            .await?;
        let mut more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        let mut records: Vec<pb::RecordMetadata> = rows
            .iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(metadata)
            .collect();
        // Records of many long field names make large pages.
        more |= confidant_runtime::page::fit_message(&mut records);
        let next_page_token = if more {
            records.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListRecordsResponse {
            records,
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "vault.list_scopes", skip_all)]
    async fn list_scopes(
        &self,
        request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let client = optional_uuid(&mut v, "client_id", &req.client_id);
        let matter = optional_uuid(&mut v, "matter_id", &req.matter_id);
        let state = match pb::ScopeState::try_from(req.state) {
            Ok(pb::ScopeState::Unspecified) => None,
            Ok(pb::ScopeState::Active) => Some("active"),
            Ok(pb::ScopeState::PendingDestruction) => Some("pending_destruction"),
            Ok(pb::ScopeState::Shredded) => Some("shredded"),
            Err(_) => {
                v.add("state", "is not a known scope state");
                None
            }
        };
        let limit = page_size(&mut v, req.page_size);
        let after = optional_uuid(&mut v, "page_token", &req.page_token);
        check(v)?;
        let rows = self
            .vault
            .store()
            .list_scopes(client, matter, state, after, limit + 1)
            .await
            .map_err(Error::from)?;
        let mut more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        let mut scopes = Vec::new();
        for row in rows
            .iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
        {
            scopes.push(self.scope_proto(row, true).await?);
        }
        // Scopes under many holds make large pages.
        more |= confidant_runtime::page::fit_message(&mut scopes);
        let next_page_token = if more {
            scopes.last().map(|s| s.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListScopesResponse {
            scopes,
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "vault.shred_record", skip_all, fields(record_id = %request.get_ref().record_id))]
    async fn shred_record(
        &self,
        request: Request<pb::ShredRecordRequest>,
    ) -> Result<Response<pb::ShredRecordResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "record_id", &req.record_id);
        let order = required_uuid(&mut v, "order_id", &req.order_id);
        check(v)?;
        let (Some(id), Some(order)) = (id, order) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let shred = self
            .vault
            .shred_record(&actor, id, &order.to_string())
            .await?;
        Ok(Response::new(pb::ShredRecordResponse {
            record: Some(metadata(&shred.record)),
            destroyed: shred.destroyed.iter().map(metadata).collect(),
            audit_event_ids: shred.event_ids,
        }))
    }

    #[tracing::instrument(name = "vault.get_record_versions", skip_all, fields(record_id = %request.get_ref().record_id))]
    async fn get_record_versions(
        &self,
        request: Request<pb::GetRecordVersionsRequest>,
    ) -> Result<Response<pb::GetRecordVersionsResponse>, Status> {
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "record_id", &request.get_ref().record_id);
        check(v)?;
        let Some(id) = id else {
            return Err(Status::internal("validated request incomplete"));
        };
        let (versions, legal_hold) = self.vault.history(id).await?;
        Ok(Response::new(pb::GetRecordVersionsResponse {
            versions: versions.iter().map(metadata).collect(),
            legal_hold,
        }))
    }

    #[tracing::instrument(name = "vault.shred_scope", skip_all, fields(scope_id = %request.get_ref().scope_id))]
    async fn shred_scope(
        &self,
        request: Request<pb::ShredScopeRequest>,
    ) -> Result<Response<pb::ShredScopeResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "scope_id", &req.scope_id);
        let order = required_uuid(&mut v, "order_id", &req.order_id);
        let window = match req.pending_window {
            None => None,
            Some(d) if d.seconds < 0 || d.nanos < 0 || d.seconds > 30 * 24 * 3600 => {
                v.add("pending_window", "must be between 0 and 30 days");
                None
            }
            Some(d) => Some(
                Duration::from_secs(u64::try_from(d.seconds).unwrap_or(0))
                    + Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0)),
            ),
        };
        check(v)?;
        let (Some(id), Some(order)) = (id, order) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let started = std::time::Instant::now();
        let row = self
            .vault
            .shred_scope(&actor, id, &order.to_string(), window)
            .await?;
        tracing::info!(scope_id = %id, state = ?row.state(), elapsed_ms = started.elapsed().as_millis() as u64, "scope shred ordered");
        Ok(Response::new(pb::ShredScopeResponse {
            scope: Some(self.scope_proto(&row, false).await?),
            audit_event_id: row.shred_event_id.clone().unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "vault.cancel_scope_destruction", skip_all, fields(scope_id = %request.get_ref().scope_id))]
    async fn cancel_scope_destruction(
        &self,
        request: Request<pb::CancelScopeDestructionRequest>,
    ) -> Result<Response<pb::CancelScopeDestructionResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "scope_id", &req.scope_id);
        if req.reason.trim().is_empty() || req.reason.chars().count() > 200 {
            v.add("reason", "is required, at most 200 characters");
        }
        check(v)?;
        let id = id.unwrap_or_default();
        let scope = self.vault.scope_row(id).await?;
        match &actor {
            Actor::Service { .. } if self.is_retention(&actor) => {}
            Actor::Staff { staff_id, .. } => {
                self.decide(
                    staff_id,
                    "retention.manage",
                    scope.client_id,
                    scope.matter_id,
                )
                .await?;
            }
            Actor::Service { .. } => {
                return Err(Error::Denied {
                    reason: "records_manager_required".into(),
                    message: "a records manager (or the retention service) cancels destructions"
                        .into(),
                }
                .into());
            }
        }
        let row = self
            .vault
            .cancel_destruction(&actor, id, &req.reason)
            .await?;
        Ok(Response::new(pb::CancelScopeDestructionResponse {
            scope: Some(self.scope_proto(&row, false).await?),
        }))
    }

    #[tracing::instrument(name = "vault.place_hold", skip_all, fields(hold_id = %request.get_ref().hold_id))]
    async fn place_hold(
        &self,
        request: Request<pb::PlaceHoldRequest>,
    ) -> Result<Response<pb::PlaceHoldResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let hold = required_uuid(&mut v, "hold_id", &req.hold_id);
        let client = required_uuid(&mut v, "client_id", &req.client_id);
        let matter = optional_uuid(&mut v, "matter_id", &req.matter_id);
        let category = optional_category(&mut v, "category", req.category);
        let cover = hold_cover(&mut v, matter, category, &req.scope_ids);
        check(v)?;
        let scopes = self
            .vault
            .place_hold(
                &actor,
                hold.unwrap_or_default(),
                client.unwrap_or_default(),
                cover,
            )
            .await?;
        Ok(Response::new(pb::PlaceHoldResponse {
            scope_ids: scopes.into_iter().map(|s| s.to_string()).collect(),
        }))
    }

    #[tracing::instrument(name = "vault.release_hold", skip_all, fields(hold_id = %request.get_ref().hold_id))]
    async fn release_hold(
        &self,
        request: Request<pb::ReleaseHoldRequest>,
    ) -> Result<Response<pb::ReleaseHoldResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let hold = required_uuid(&mut v, "hold_id", &req.hold_id);
        check(v)?;
        self.vault
            .release_hold(&actor, hold.unwrap_or_default())
            .await?;
        Ok(Response::new(pb::ReleaseHoldResponse {}))
    }

    #[tracing::instrument(name = "vault.release_originals", skip_all, fields(scope_id = %request.get_ref().scope_id))]
    async fn release_originals(
        &self,
        request: Request<pb::ReleaseOriginalsRequest>,
    ) -> Result<Response<pb::ReleaseOriginalsResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let scope = required_uuid(&mut v, "scope_id", &req.scope_id);
        let ret = required_uuid(&mut v, "return_id", &req.return_id);
        check(v)?;
        let released = self
            .vault
            .release_originals(&actor, scope.unwrap_or_default(), ret.unwrap_or_default())
            .await?;
        Ok(Response::new(pb::ReleaseOriginalsResponse { released }))
    }

    #[tracing::instrument(name = "vault.seal_text", skip_all)]
    async fn seal_text(
        &self,
        request: Request<pb::SealTextRequest>,
    ) -> Result<Response<pb::SealTextResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let client = required_uuid(&mut v, "client_id", &req.client_id);
        let matter = optional_uuid(&mut v, "matter_id", &req.matter_id);
        let category = domain::required_category(&mut v, "category", req.category);
        if req.text.is_empty() || req.text.chars().count() > domain::MAX_SEALED_TEXT_CHARS {
            v.add("text", "must be 1 to 4000 characters");
        }
        check(v)?;
        let (Some(client_id), Some(category)) = (client, category) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let scope = domain::ScopeRef {
            client_id,
            matter_id: matter,
            category,
        };
        let (sealed, scope_id) = self.vault.seal_text(&actor, &scope, &req.text).await?;
        Ok(Response::new(pb::SealTextResponse {
            sealed_text: sealed,
            scope_id: scope_id.to_string(),
        }))
    }

    #[tracing::instrument(name = "vault.open_sealed_text", skip_all, fields(scope_id = %request.get_ref().scope_id))]
    async fn open_sealed_text(
        &self,
        request: Request<pb::OpenSealedTextRequest>,
    ) -> Result<Response<pb::OpenSealedTextResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let scope_id = required_uuid(&mut v, "scope_id", &req.scope_id);
        if req.sealed_text.is_empty() {
            v.add("sealed_text", "is required");
        }
        check(v)?;
        let scope_id = scope_id.unwrap_or_default();
        let Actor::Staff { staff_id, .. } = &actor else {
            return Err(Error::Unauthenticated.into());
        };
        let scope = self.vault.scope_row(scope_id).await?;
        self.decide(staff_id, "audit.read", scope.client_id, scope.matter_id)
            .await?;
        let text = self
            .vault
            .open_text(&actor, scope_id, &req.sealed_text)
            .await?;
        Ok(Response::new(pb::OpenSealedTextResponse {
            text: text.to_string(),
        }))
    }

    #[tracing::instrument(name = "vault.rewrap_scope_keys", skip_all)]
    async fn rewrap_scope_keys(
        &self,
        request: Request<pb::RewrapScopeKeysRequest>,
    ) -> Result<Response<pb::RewrapScopeKeysResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let batch = match req.batch_size {
            0 => 100,
            1..=1000 => i64::from(req.batch_size),
            _ => {
                v.add("batch_size", "must be between 0 and 1000");
                100
            }
        };
        let after = confidant_runtime::page::after_id(&mut v, "page_token", &req.page_token);
        check(v)?;
        let done = self.vault.rewrap(&actor, batch, after).await?;
        Ok(Response::new(pb::RewrapScopeKeysResponse {
            rewrapped: done.rewrapped,
            remaining: done.remaining,
            active_kms_key_id: self.vault.keys().kms().active_key_id(),
            next_page_token: done
                .next
                .map(|id| confidant_runtime::page::token(&[confidant_runtime::page::Key::Uuid(id)]))
                .unwrap_or_default(),
            failures: done
                .failed
                .into_iter()
                .map(|(scope, reason)| pb::RewrapFailure {
                    scope_id: scope.to_string(),
                    reason: reason.to_owned(),
                })
                .collect(),
        }))
    }

    async fn get_key_stats(
        &self,
        _request: Request<pb::GetKeyStatsRequest>,
    ) -> Result<Response<pb::GetKeyStatsResponse>, Status> {
        let keys = self.vault.keys();
        let stats = keys.stats();
        let load = |c: &std::sync::atomic::AtomicU64| {
            i64::try_from(c.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
        };
        Ok(Response::new(pb::GetKeyStatsResponse {
            cache_hits: load(&stats.cache_hits),
            kms_decrypt_calls: load(&stats.kms_decrypt_calls),
            kms_generate_calls: load(&stats.kms_generate_calls),
            cached_keys: i64::try_from(keys.cache().len()).unwrap_or(i64::MAX),
            evictions: load(&stats.evictions),
            kms_failures: counts(stats.kms_failure_counts()),
            unreadable_records: counts(stats.unreadable_counts()),
            kms_keys: self
                .vault
                .store()
                .kms_key_usage()
                .await
                .map_err(Error::from)?
                .into_iter()
                .map(|(kms_key_id, scopes)| pb::KmsKeyUsage {
                    active: keys.kms().is_active(&kms_key_id),
                    kms_key_id,
                    scopes,
                })
                .collect(),
        }))
    }

    async fn list_masking_rules(
        &self,
        request: Request<pb::ListMaskingRulesRequest>,
    ) -> Result<Response<pb::ListMaskingRulesResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        if !req.role.is_empty() && !crate::masking::valid_role(&req.role) {
            v.add(
                "role",
                "must be empty or 1 to 64 lowercase letters, digits, '_' and '-'",
            );
        }
        check(v)?;
        let role = (!req.role.is_empty()).then_some(req.role.as_str());
        Ok(Response::new(pb::ListMaskingRulesResponse {
            rules: self.masking_rules(role).await?,
        }))
    }

    #[tracing::instrument(name = "vault.set_masking_rules", skip_all)]
    async fn set_masking_rules(
        &self,
        request: Request<pb::SetMaskingRulesRequest>,
    ) -> Result<Response<pb::SetMaskingRulesResponse>, Status> {
        let actor = Self::actor(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let rules = crate::masking::parse_rules(&req.role, &req.rules, &mut v);
        check(v)?;
        self.vault
            .set_masking_rules(&actor, &req.role, &rules)
            .await?;
        Ok(Response::new(pb::SetMaskingRulesResponse {
            rules: self.masking_rules(Some(&req.role)).await?,
        }))
    }
}
