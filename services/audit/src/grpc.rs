//! The gRPC face of the audit service.

use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use confidant_proto::audit::v1::audit_service_server::AuditService;
use confidant_proto::audit::v1::export_log_response::Item;
use confidant_proto::audit::v1::{
    AppendEventsRequest, AppendEventsResponse, Checkpoint, ConsistencyProof, EvidenceBundle,
    ExportLogRequest, ExportLogResponse, ExportedEvent, GetCheckpointRequest,
    GetCheckpointResponse, GetConsistencyProofRequest, GetConsistencyProofResponse,
    GetEvidenceBundleRequest, GetEvidenceBundleResponse, GetInclusionProofRequest,
    GetInclusionProofResponse, GetLogInfoRequest, GetLogInfoResponse, InclusionProof,
    ListClientAccessHistoryRequest, ListClientAccessHistoryResponse, ListEventsRequest,
    ListEventsResponse, LoggedEvent,
};
use confidant_runtime::error::Violations;
use confidant_runtime::peer::PeerIdentity;
use futures::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::validate_batch;
use crate::error::Error;
use crate::log::AuditLog;
use crate::store::{EventFilter, Found, StoredCheckpoint, StoredEvent};

/// Handlers of `confidant.audit.v1.AuditService`.
#[derive(Debug, Clone)]
pub struct AuditApi {
    log: Arc<AuditLog>,
    identity: Option<confidant_runtime::client::PeerChannel>,
    readers: Vec<String>,
}

impl AuditApi {
    /// Handlers over `log`.
    pub fn new(
        log: Arc<AuditLog>,
        identity: Option<confidant_runtime::client::PeerChannel>,
        readers: Vec<String>,
    ) -> Self {
        Self {
            log,
            identity,
            readers,
        }
    }

    /// Reading the log needs either a staff member whose identity decision
    /// for `audit.read` allows it (security officers, auditors), or a machine
    /// identity on the readers list (SIEM exporters).
    async fn may_read<T>(&self, request: &Request<T>) -> Result<(), Status> {
        use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
        use confidant_proto::identity::v1::{AuthorizeRequest, DenialReason};
        if let Some(staff) = confidant_runtime::auth::StaffPrincipal::of(request) {
            let channel = self
                .identity
                .clone()
                .ok_or_else(|| Status::unavailable("the identity service is not configured"))?;
            let decision = IdentityServiceClient::new(channel)
                .authorize(AuthorizeRequest {
                    staff_id: staff.staff_id,
                    permission: "audit.read".into(),
                    client_id: String::new(),
                    matter_id: String::new(),
                })
                .await?
                .into_inner();
            if decision.allowed {
                return Ok(());
            }
            let reason = DenialReason::try_from(decision.reason)
                .map(|r| {
                    r.as_str_name()
                        .trim_start_matches("DENIAL_REASON_")
                        .to_lowercase()
                })
                .unwrap_or_else(|_| "denied".to_owned());
            return Err(confidant_runtime::error::with_reason(
                tonic::Code::PermissionDenied,
                &reason,
                "not allowed to read the audit log",
            ));
        }
        let peer = PeerIdentity::of(request).ok_or(Error::NoIdentity)?;
        if self.readers.iter().any(|r| r == peer.as_str()) {
            Ok(())
        } else {
            Err(confidant_runtime::error::with_reason(
                tonic::Code::PermissionDenied,
                "audit_reader_required",
                "sign in as a security officer or auditor, or use an audit reader identity",
            ))
        }
    }

    async fn checkpoint_for(&self, tree_size: i64) -> Result<StoredCheckpoint, Error> {
        let found = if tree_size == 0 {
            self.log.store().latest_checkpoint().await?
        } else {
            self.log.store().checkpoint_of_size(tree_size).await?
        };
        found.ok_or(Error::NotFound("no signed checkpoint of that tree size"))
    }
}

fn to_proto(c: &StoredCheckpoint) -> Checkpoint {
    Checkpoint {
        tree_size: c.tree_size,
        root_hash: c.root_hash.clone(),
        signed_note: c.signed_note.clone(),
        issue_time: Some(prost_types::Timestamp {
            seconds: c.issued_at.timestamp(),
            nanos: i32::try_from(c.issued_at.timestamp_subsec_nanos()).unwrap_or(0),
        }),
    }
}

fn exported(e: StoredEvent) -> ExportedEvent {
    ExportedEvent {
        leaf_index: e.idx,
        event_id: e.event_id.to_string(),
        event_bytes: e.payload,
        leaf_hash: e.leaf_hash,
        inclusion_proof: None,
    }
}

fn non_negative(v: &mut Violations, field: &str, value: i64) -> u64 {
    u64::try_from(value).unwrap_or_else(|_| {
        v.add(field, "must not be negative");
        0
    })
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportLogResponse, Status>> + Send + 'static>>;

/// Events fetched per page of an export.
const EXPORT_PAGE: i64 = 1000;

#[tonic::async_trait]
impl AuditService for AuditApi {
    #[tracing::instrument(name = "audit.append_events", skip_all, fields(events = request.get_ref().events.len()))]
    async fn append_events(
        &self,
        request: Request<AppendEventsRequest>,
    ) -> Result<Response<AppendEventsResponse>, Status> {
        let caller = PeerIdentity::of(&request).ok_or(Error::NoIdentity)?;
        let events = validate_batch(&request.get_ref().events, caller.name(), Utc::now())
            .map_err(Error::Invalid)?;
        let done = self.log.append(&events).await.map_err(Error::from)?;
        tracing::info!(
            source = caller.name(),
            appended = done.appended,
            duplicates = done.duplicates,
            "audit events appended"
        );
        Ok(Response::new(AppendEventsResponse {
            appended_count: i32::try_from(done.appended).unwrap_or(i32::MAX),
            duplicate_count: i32::try_from(done.duplicates).unwrap_or(i32::MAX),
        }))
    }

    #[tracing::instrument(name = "audit.get_log_info", skip_all)]
    async fn get_log_info(
        &self,
        _request: Request<GetLogInfoRequest>,
    ) -> Result<Response<GetLogInfoResponse>, Status> {
        let size = self.log.sync().await.map_err(Error::from)?;
        Ok(Response::new(GetLogInfoResponse {
            origin: self.log.origin().to_owned(),
            verifier_key: self.log.verifier_key(),
            tree_size: i64::try_from(size).unwrap_or(i64::MAX),
        }))
    }

    #[tracing::instrument(name = "audit.get_checkpoint", skip_all, fields(tree_size = request.get_ref().tree_size))]
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<GetCheckpointResponse>, Status> {
        let mut v = Violations::new();
        non_negative(&mut v, "tree_size", request.get_ref().tree_size);
        v.into_result().map_err(|e| Error::Invalid(violations(e)))?;
        let checkpoint = self.checkpoint_for(request.get_ref().tree_size).await?;
        Ok(Response::new(GetCheckpointResponse {
            checkpoint: Some(to_proto(&checkpoint)),
        }))
    }

    #[tracing::instrument(name = "audit.get_inclusion_proof", skip_all)]
    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<GetInclusionProofResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let event_id = if req.event_id.is_empty() {
            None
        } else {
            match Uuid::parse_str(&req.event_id) {
                Ok(id) => Some(id),
                Err(_) => {
                    v.add("event_id", "must be a UUID");
                    None
                }
            }
        };
        let leaf_index = non_negative(&mut v, "leaf_index", req.leaf_index);
        non_negative(&mut v, "tree_size", req.tree_size);
        v.into_result().map_err(|e| Error::Invalid(violations(e)))?;
        let index = match event_id {
            Some(id) => {
                let event = self
                    .log
                    .store()
                    .find(id)
                    .await
                    .map_err(Error::from)?
                    .ok_or(Error::NotFound("no event with that id"))?;
                u64::try_from(event.idx).unwrap_or(0)
            }
            None => leaf_index,
        };
        let checkpoint = self.checkpoint_for(req.tree_size).await?;
        let size = u64::try_from(checkpoint.tree_size).unwrap_or(0);
        self.log.sync().await.map_err(Error::from)?;
        let hashes = self
            .log
            .inclusion_proof(index, size)
            .map_err(Error::Proof)?;
        Ok(Response::new(GetInclusionProofResponse {
            proof: Some(InclusionProof {
                leaf_index: i64::try_from(index).unwrap_or(i64::MAX),
                tree_size: checkpoint.tree_size,
                leaf_hash: self.log.leaf(index).map(|h| h.to_vec()).unwrap_or_default(),
                hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
            }),
        }))
    }

    #[tracing::instrument(name = "audit.get_consistency_proof", skip_all)]
    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<GetConsistencyProofResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let first = non_negative(&mut v, "first_tree_size", req.first_tree_size);
        let second = non_negative(&mut v, "second_tree_size", req.second_tree_size);
        if first > second {
            v.add("first_tree_size", "must not exceed second_tree_size");
        }
        v.into_result().map_err(|e| Error::Invalid(violations(e)))?;
        self.log.sync().await.map_err(Error::from)?;
        let hashes = self
            .log
            .consistency_proof(first, second)
            .map_err(Error::Proof)?;
        Ok(Response::new(GetConsistencyProofResponse {
            proof: Some(ConsistencyProof {
                first_tree_size: req.first_tree_size,
                second_tree_size: req.second_tree_size,
                hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
            }),
        }))
    }

    type ExportLogStream = ExportStream;

    #[tracing::instrument(name = "audit.export_log", skip_all)]
    async fn export_log(
        &self,
        request: Request<ExportLogRequest>,
    ) -> Result<Response<Self::ExportLogStream>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let start = non_negative(&mut v, "start_index", req.start_index);
        let end = non_negative(&mut v, "end_index", req.end_index);
        if end != 0 && end < start {
            v.add("end_index", "must not be below start_index");
        }
        v.into_result().map_err(|e| Error::Invalid(violations(e)))?;
        let size = self.log.sync().await.map_err(Error::from)?;
        let end = if end == 0 { size } else { end.min(size) };
        let checkpoints = self
            .log
            .store()
            .all_checkpoints()
            .await
            .map_err(Error::from)?;
        // Proofs are against the latest checkpoint at the start of the export.
        let proof_size = if req.include_proofs {
            checkpoints
                .last()
                .and_then(|c| u64::try_from(c.tree_size).ok())
        } else {
            None
        };
        let log = self.log.clone();
        let stream = async_stream(log, start, end, checkpoints, proof_size);
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(name = "audit.list_events", skip_all)]
    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        self.may_read(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let filter = EventFilter {
            actor_id: (!req.actor_id.is_empty()).then(|| req.actor_id.clone()),
            client_id: optional_uuid(&mut v, "client_id", &req.client_id),
            matter_id: optional_uuid(&mut v, "matter_id", &req.matter_id),
            action: if req.action.is_empty() {
                None
            } else if req
                .action
                .parse::<confidant_runtime::audit::Action>()
                .is_err()
            {
                v.add("action", "is not a known audit action");
                None
            } else {
                Some(req.action.clone())
            },
            outcome: match confidant_proto::audit::v1::Outcome::try_from(req.outcome) {
                Ok(confidant_proto::audit::v1::Outcome::Unspecified) => None,
                Ok(o) => Some(o as i32),
                Err(_) => {
                    v.add("outcome", "is not a known outcome");
                    None
                }
            },
            source_service: (!req.source_service.is_empty()).then(|| req.source_service.clone()),
            start: timestamp(&mut v, "start_time", req.start_time.as_ref()),
            end: timestamp(&mut v, "end_time", req.end_time.as_ref()),
            before_index: decode_token(&mut v, "page_token", &req.page_token),
            limit: 0,
        };
        if let (Some(s), Some(e)) = (filter.start, filter.end)
            && s >= e
        {
            v.add("end_time", "must be after start_time");
        }
        let limit = page_size(&mut v, "page_size", req.page_size);
        if !v.is_empty() {
            return Err(Error::Invalid(v).into());
        }
        let (found, next_page_token) = page(&self.log, filter, limit).await?;
        let events = found
            .iter()
            .map(|f| LoggedEvent {
                leaf_index: f.event.idx,
                event: decode_event(f),
                record_time: Some(proto_time(f.recorded_at)),
            })
            .collect();
        Ok(Response::new(ListEventsResponse {
            events,
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "audit.list_client_access_history", skip_all)]
    async fn list_client_access_history(
        &self,
        request: Request<ListClientAccessHistoryRequest>,
    ) -> Result<Response<ListClientAccessHistoryResponse>, Status> {
        self.may_read(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let client_id = optional_uuid(&mut v, "client_id", &req.client_id);
        if req.client_id.is_empty() {
            v.add("client_id", "is required");
        }
        let limit = page_size(&mut v, "page_size", req.page_size);
        let before_index = decode_token(&mut v, "page_token", &req.page_token);
        if !v.is_empty() {
            return Err(Error::Invalid(v).into());
        }
        let filter = EventFilter {
            client_id,
            before_index,
            ..EventFilter::default()
        };
        let (found, next_page_token) = page(&self.log, filter, limit).await?;
        let accesses = found
            .iter()
            .filter_map(|f| {
                let e = decode_event(f)?;
                let resource = e.resource.unwrap_or_default();
                Some(confidant_proto::audit::v1::ClientAccess {
                    time: e.time,
                    // What the client may see of the actor: who, not from where.
                    actor: e.actor.map(|a| confidant_proto::audit::v1::Actor {
                        kind: a.kind,
                        id: a.id,
                        roles: a.roles,
                        peer_identity: String::new(),
                        session_id: String::new(),
                    }),
                    action: e.action,
                    data_category: resource.data_category,
                    matter_id: resource.matter_id,
                    purpose: e.purpose,
                    outcome: e.outcome,
                    event_id: e.id,
                    disclosed_fields: e.disclosed_fields,
                    changed_fields: e.changed_fields,
                })
            })
            .collect();
        Ok(Response::new(ListClientAccessHistoryResponse {
            accesses,
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "audit.get_evidence_bundle", skip_all)]
    async fn get_evidence_bundle(
        &self,
        request: Request<GetEvidenceBundleRequest>,
    ) -> Result<Response<GetEvidenceBundleResponse>, Status> {
        let mut v = Violations::new();
        let id = Uuid::parse_str(&request.get_ref().event_id).ok();
        if id.is_none() {
            v.add("event_id", "must be a UUID");
        }
        v.into_result().map_err(|e| Error::Invalid(violations(e)))?;
        let event = self
            .log
            .store()
            .find(id.unwrap_or_default())
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("no event with that id"))?;
        let checkpoint = self.checkpoint_for(0).await?;
        if checkpoint.tree_size <= event.idx {
            return Err(
                Error::NotFound("the event is not yet covered by a signed checkpoint").into(),
            );
        }
        self.log.sync().await.map_err(Error::from)?;
        let index = u64::try_from(event.idx).unwrap_or(0);
        let hashes = self
            .log
            .inclusion_proof(index, u64::try_from(checkpoint.tree_size).unwrap_or(0))
            .map_err(Error::Proof)?;
        let proof = InclusionProof {
            leaf_index: event.idx,
            tree_size: checkpoint.tree_size,
            leaf_hash: event.leaf_hash.clone(),
            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
        };
        Ok(Response::new(GetEvidenceBundleResponse {
            bundle: Some(EvidenceBundle {
                event: Some(exported(event)),
                checkpoint: Some(to_proto(&checkpoint)),
                proof: Some(proof),
                verifier_key: self.log.verifier_key_of(&checkpoint.signed_note),
            }),
        }))
    }
}

/// The largest page.
const MAX_PAGE: i64 = 1000;

fn page_size(v: &mut Violations, field: &str, size: i32) -> i64 {
    confidant_runtime::page::page_size(v, field, size, MAX_PAGE)
}

/// Page tokens are opaque to clients: base64 of the position to continue below.
fn encode_token(before_index: i64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1:{before_index}"))
}

fn decode_token(v: &mut Violations, field: &str, token: &str) -> Option<i64> {
    use base64::Engine as _;
    if token.is_empty() {
        return None;
    }
    let parsed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("v1:").and_then(|n| n.parse::<i64>().ok()));
    if parsed.is_none() {
        v.add(field, "is not a page token from this API");
    }
    parsed
}

fn optional_uuid(v: &mut Violations, field: &str, value: &str) -> Option<Uuid> {
    if value.is_empty() {
        return None;
    }
    let parsed = Uuid::parse_str(value).ok();
    if parsed.is_none() {
        v.add(field, "must be a UUID");
    }
    parsed
}

fn timestamp(
    v: &mut Violations,
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Option<chrono::DateTime<Utc>> {
    let ts = ts?;
    let parsed =
        chrono::DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(u32::MAX));
    if parsed.is_none() {
        v.add(field, "must be a valid timestamp");
    }
    parsed
}

fn proto_time(t: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Runs a search one page at a time: returns the page and the next token.
async fn page(
    log: &AuditLog,
    mut filter: EventFilter,
    limit: i64,
) -> Result<(Vec<Found>, String), Error> {
    filter.limit = limit + 1;
    let mut found = log.store().search(&filter).await?;
    // A page of large events (long sealed texts) ends early: each takes its
    // payload and room for the rest of its entry.
    let fit =
        confidant_runtime::page::fitting(&found, confidant_runtime::page::MAX_PAGE_BYTES, |f| {
            f.event.payload.len() + 256
        });
    let keep = fit.min(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = if found.len() > keep {
        found.truncate(keep);
        found
            .last()
            .map(|f| encode_token(f.event.idx))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok((found, next))
}

fn decode_event(found: &Found) -> Option<confidant_proto::audit::v1::AuditEvent> {
    use prost::Message as _;
    confidant_proto::audit::v1::AuditEvent::decode(found.event.payload.as_slice()).ok()
}

fn violations(list: Vec<confidant_runtime::error::FieldViolation>) -> Violations {
    let mut v = Violations::new();
    for f in list {
        v.add(f.field, f.description);
    }
    v
}

/// Streams events `[start, end)` page by page, each checkpoint right after
/// the last event it covers.
fn async_stream(
    log: Arc<AuditLog>,
    start: u64,
    end: u64,
    checkpoints: Vec<StoredCheckpoint>,
    proof_size: Option<u64>,
) -> impl Stream<Item = Result<ExportLogResponse, Status>> + Send + 'static {
    let state = (
        log,
        i64::try_from(start).unwrap_or(i64::MAX),
        checkpoints.into_iter().peekable(),
        Vec::new(),
    );
    let end = i64::try_from(end).unwrap_or(i64::MAX);
    futures::stream::unfold(
        state,
        move |(log, next, mut cps, mut buffered): (_, i64, _, Vec<ExportLogResponse>)| async move {
            if let Some(item) = buffered.pop() {
                return Some((Ok(item), (log, next, cps, buffered)));
            }
            // Checkpoints covering exactly the events sent so far come first.
            if let Some(cp) = cps.next_if(|c: &StoredCheckpoint| c.tree_size <= next) {
                let item = ExportLogResponse {
                    item: Some(Item::Checkpoint(to_proto(&cp))),
                };
                return Some((Ok(item), (log, next, cps, buffered)));
            }
            if next >= end {
                return None;
            }
            let page = match log.store().range(next, EXPORT_PAGE.min(end - next)).await {
                Ok(page) => page,
                Err(e) => {
                    return Some((Err(Status::from(Error::from(e))), (log, end, cps, buffered)));
                }
            };
            let last = page.last().map(|e| e.idx)?;
            // Reverse so that pop() yields in order.
            buffered = page
                .into_iter()
                .rev()
                .map(|e| {
                    let index = u64::try_from(e.idx).unwrap_or(u64::MAX);
                    let proof = proof_size.filter(|size| index < *size).and_then(|size| {
                        let hashes = log.inclusion_proof(index, size).ok()?;
                        Some(InclusionProof {
                            leaf_index: e.idx,
                            tree_size: i64::try_from(size).unwrap_or(i64::MAX),
                            leaf_hash: e.leaf_hash.clone(),
                            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
                        })
                    });
                    let mut event = exported(e);
                    event.inclusion_proof = proof;
                    ExportLogResponse {
                        item: Some(Item::Event(event)),
                    }
                })
                .collect();
            let first = buffered.pop()?;
            Some((Ok(first), (log, last + 1, cps, buffered)))
        },
    )
}
