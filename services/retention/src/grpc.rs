//! The gRPC face of the retention service: boundary validation, the
//! caller's identity and permission, then [`crate::service::Retention`].

use std::sync::Arc;

use chrono::{DateTime, Utc};
use confidant_proto::retention::v1 as pb;
use confidant_proto::retention::v1::retention_service_server::RetentionService;
use confidant_runtime::auth::StaffPrincipal;
use confidant_runtime::decide::Decider;
use confidant_runtime::error::Violations;
use confidant_runtime::page::{self, Key, Part};
use confidant_runtime::peer::PeerIdentity;
use confidant_runtime::portable::Value;
use confidant_vault::domain::{Category, optional_category, optional_uuid, required_uuid};
use tonic::{Request, Response, Status};

use crate::domain::{Rules, Trigger};
use crate::erasure::{Basis, ErasureRow};
use crate::error::Error;
use crate::service::{Actor, Retention};
use crate::store::{HoldRow, PolicyRow, ReturnRow};

/// Handlers of `confidant.retention.v1.RetentionService`.
#[derive(Debug, Clone)]
pub struct RetentionApi {
    retention: Arc<Retention>,
    disposer: Arc<crate::disposal::Disposer>,
    decider: Arc<Decider>,
    identity_peer: String,
}

fn check(v: Violations) -> Result<(), Status> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(v).into())
    }
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn category_proto(name: &str) -> i32 {
    Category::parse(name).map_or(0, |c| c.to_proto() as i32)
}

fn policy_proto(row: &PolicyRow) -> pb::Policy {
    let rules = row.rules();
    pb::Policy {
        id: row.id.to_string(),
        version: row.version,
        rules: rules.map(|r| pb::PolicyRules {
            category: r.category.to_proto() as i32,
            period: Some(pb::Period {
                years: i32::try_from(r.period.years).unwrap_or(0),
                months: i32::try_from(r.period.months).unwrap_or(0),
                days: i32::try_from(r.period.days).unwrap_or(0),
            }),
            trigger: r.trigger.to_proto() as i32,
            trigger_event_name: match &r.trigger {
                Trigger::Named(n) => n.clone(),
                _ => String::new(),
            },
            action: match r.action {
                crate::domain::Action::Shred => pb::DisposalAction::Shred,
                crate::domain::Action::Review => pb::DisposalAction::Review,
            } as i32,
            client_notice_days: i32::try_from(r.client_notice_days).unwrap_or(0),
            basis: r.basis,
            practice_area: r.practice_area.unwrap_or_default(),
            jurisdiction: r.jurisdiction.unwrap_or_default(),
        }),
        create_time: Some(ts(row.created_at)),
        created_by: row.created_by.clone(),
    }
}

fn batch_state(name: &str) -> pb::BatchState {
    match name {
        "awaiting_approval" => pb::BatchState::AwaitingApproval,
        "approved" => pb::BatchState::Approved,
        "done" => pb::BatchState::Done,
        _ => pb::BatchState::Unspecified,
    }
}

fn batch_proto(
    row: &crate::disposal::BatchRow,
    scopes: Vec<uuid::Uuid>,
    approvers: Vec<String>,
) -> pb::DisposalBatch {
    pb::DisposalBatch {
        id: row.id.to_string(),
        state: batch_state(&row.state) as i32,
        action: match row.action.as_str() {
            "shred" => pb::DisposalAction::Shred,
            "review" => pb::DisposalAction::Review,
            _ => pb::DisposalAction::Unspecified,
        } as i32,
        scope_ids: scopes.into_iter().map(|s| s.to_string()).collect(),
        approvals_needed: row.approvals_needed,
        approvers,
        create_time: Some(ts(row.created_at)),
    }
}

/// Each erasure state as stored, and in the API.
const ERASURE_STATES: [(&str, pb::ErasureState); 5] = [
    ("awaiting_approval", pb::ErasureState::AwaitingApproval),
    ("ordered", pb::ErasureState::Ordered),
    ("shredded", pb::ErasureState::Shredded),
    ("certified", pb::ErasureState::Certified),
    ("cancelled", pb::ErasureState::Cancelled),
];

fn erasure_state(name: &str) -> pb::ErasureState {
    ERASURE_STATES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(pb::ErasureState::Unspecified, |(_, s)| *s)
}

fn erasure_basis(basis: Basis) -> pb::ErasureBasis {
    match basis {
        Basis::ClientRequest => pb::ErasureBasis::ClientRequest,
        Basis::CollectedInError => pb::ErasureBasis::CollectedInError,
        Basis::NoLongerNeeded => pb::ErasureBasis::NoLongerNeeded,
        Basis::LegalOrder => pb::ErasureBasis::LegalOrder,
    }
}

fn erasure_proto(row: &ErasureRow, approvers: Vec<String>) -> pb::Erasure {
    use confidant_proto::vault::v1::RecordKind;
    pb::Erasure {
        id: row.id.to_string(),
        record_id: row.record_id.to_string(),
        version_ids: row.versions(),
        scope_id: row.scope_id.to_string(),
        client_id: row.client_id.to_string(),
        matter_id: row.matter_id.map(|m| m.to_string()).unwrap_or_default(),
        category: category_proto(&row.category),
        kind: if row.kind == "document" {
            RecordKind::Document
        } else {
            RecordKind::Fields
        } as i32,
        basis: Basis::parse(&row.basis).map_or(0, |b| erasure_basis(b) as i32),
        reference: row.reference.clone(),
        state: erasure_state(&row.state) as i32,
        requested_by: row.requested_by.clone(),
        request_time: Some(ts(row.requested_at)),
        approvals_needed: row.approvals_needed,
        approvers,
        shred_time: row.shredded_at.map(ts),
        cancel_reason: row.cancel_reason.clone().unwrap_or_default(),
        certificate_id: row
            .certificate_id
            .map(|c| c.to_string())
            .unwrap_or_default(),
    }
}

fn hold_proto(row: &HoldRow, approvers: Vec<String>) -> pb::Hold {
    pb::Hold {
        id: row.id.to_string(),
        reason: row.reason.clone(),
        client_id: row.client_id.to_string(),
        matter_id: row.matter_id.map(|m| m.to_string()).unwrap_or_default(),
        category: row.category.as_deref().map_or(0, category_proto),
        placed_by: row.placed_by.clone(),
        place_time: Some(ts(row.placed_at)),
        release_approvers: approvers,
        release_time: row.released_at.map(ts),
        in_vault: row.in_vault != 0,
        scope_ids: row.scope_ids.iter().map(|s| s.to_string()).collect(),
    }
}

fn return_proto(row: &ReturnRow) -> pb::ReturnEntry {
    pb::ReturnEntry {
        id: row.id.to_string(),
        scope_id: row.scope_id.to_string(),
        client_id: row.client_id.to_string(),
        matter_id: row.matter_id.map(|m| m.to_string()).unwrap_or_default(),
        category: category_proto(&row.category),
        original_count: row.original_count,
        due_time: Some(ts(row.due_at)),
        policy_id: row.policy_id.map(|p| p.to_string()).unwrap_or_default(),
        policy_version: row.policy_version.unwrap_or_default(),
        state: match row.state.as_str() {
            "listed" => pb::ReturnState::Listed,
            "returned" => pb::ReturnState::Returned,
            _ => pb::ReturnState::Unspecified,
        } as i32,
        list_time: Some(ts(row.listed_at)),
        return_time: row.returned_at.map(ts),
        returned_by: row.returned_by.clone().unwrap_or_default(),
        reference: row.reference.clone().unwrap_or_default(),
    }
}

impl RetentionApi {
    /// Handlers over `retention`, asking `decider` for permissions.
    pub fn new(
        retention: Arc<Retention>,
        disposer: Arc<crate::disposal::Disposer>,
        decider: Arc<Decider>,
        trust_domain: &str,
    ) -> Self {
        Self {
            retention,
            disposer,
            decider,
            identity_peer: confidant_runtime::ServiceName::Identity.spiffe_id(trust_domain),
        }
    }

    /// The staff member calling, with `permission` (firm-wide).
    async fn staff_with<T>(&self, request: &Request<T>, permission: &str) -> Result<Actor, Error> {
        let actor = Actor::of(request).ok_or(Error::Unauthenticated)?;
        let Actor::Staff { staff_id, .. } = &actor else {
            return Err(Error::Unauthenticated);
        };
        self.decider
            .decide(staff_id, permission, None, None)
            .await?;
        Ok(actor)
    }

    /// An erasure as answered: with its approvers and certificate.
    async fn erasure_answer(&self, row: &ErasureRow) -> Result<pb::Erasure, Error> {
        Ok(erasure_proto(
            row,
            self.disposer.erasures().approvers(row.id).await?,
        ))
    }

    /// The erasure id a request names.
    fn erasure_id(erasure_id: &str) -> Result<uuid::Uuid, Error> {
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "erasure_id", erasure_id);
        match id {
            Some(id) if v.is_empty() => Ok(id),
            _ => Err(Error::Invalid(v)),
        }
    }
}

#[tonic::async_trait]
impl RetentionService for RetentionApi {
    #[tracing::instrument(name = "retention.create_policy", skip_all)]
    async fn create_policy(
        &self,
        request: Request<pb::CreatePolicyRequest>,
    ) -> Result<Response<pb::CreatePolicyResponse>, Status> {
        let actor = self.staff_with(&request, "retention.manage").await?;
        let rules =
            Rules::parse(request.get_ref().rules.as_ref(), "rules").map_err(Error::Invalid)?;
        let (row, n) = self.retention.create_policy(&actor, &rules).await?;
        Ok(Response::new(pb::CreatePolicyResponse {
            policy: Some(policy_proto(&row)),
            scopes_recomputed: i64::try_from(n).unwrap_or(i64::MAX),
        }))
    }

    #[tracing::instrument(name = "retention.update_policy", skip_all)]
    async fn update_policy(
        &self,
        request: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::UpdatePolicyResponse>, Status> {
        let actor = self.staff_with(&request, "retention.manage").await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "policy_id", &req.policy_id);
        if req.version < 1 {
            v.add("version", "must be the version being changed (1 or more)");
        }
        let rules = match Rules::parse(req.rules.as_ref(), "rules") {
            Ok(r) => Some(r),
            Err(e) => {
                v.extend(e);
                None
            }
        };
        check(v)?;
        let (Some(id), Some(rules)) = (id, rules) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let (row, n) = self
            .retention
            .update_policy(&actor, id, req.version, &rules)
            .await?;
        Ok(Response::new(pb::UpdatePolicyResponse {
            policy: Some(policy_proto(&row)),
            scopes_recomputed: i64::try_from(n).unwrap_or(i64::MAX),
        }))
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        self.staff_with(&request, "retention.manage").await?;
        let rows = self
            .retention
            .store()
            .live_policies()
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: rows.iter().map(policy_proto).collect(),
        }))
    }

    #[tracing::instrument(name = "retention.record_trigger_event", skip_all)]
    async fn record_trigger_event(
        &self,
        request: Request<pb::RecordTriggerEventRequest>,
    ) -> Result<Response<pb::RecordTriggerEventResponse>, Status> {
        // Identity reports matter closings itself; staff need the permission.
        let from_identity = PeerIdentity::of(&request)
            .is_some_and(|p| p.as_str() == self.identity_peer)
            && StaffPrincipal::of(&request).is_none();
        let actor = if from_identity {
            Actor::Service {
                peer: self.identity_peer.clone(),
            }
        } else {
            self.staff_with(&request, "retention.manage").await?
        };
        let req = request.into_inner();
        let mut v = Violations::new();
        let client = required_uuid(&mut v, "client_id", &req.client_id);
        let matter = optional_uuid(&mut v, "matter_id", &req.matter_id);
        let trigger = match pb::Trigger::try_from(req.trigger) {
            Ok(pb::Trigger::MatterClosed) => {
                if matter.is_none() && v.is_empty() {
                    v.add("matter_id", "is required for a matter closing");
                }
                Some(Trigger::MatterClosed)
            }
            Ok(pb::Trigger::RelationshipEnded) => Some(Trigger::RelationshipEnded),
            Ok(pb::Trigger::NamedEvent) => {
                let ok = !req.event_name.is_empty()
                    && req.event_name.len() <= 64
                    && req
                        .event_name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !ok {
                    v.add(
                        "event_name",
                        "must be 1 to 64 lowercase letters, digits or '_'",
                    );
                }
                Some(Trigger::Named(req.event_name.clone()))
            }
            _ => {
                v.add(
                    "trigger",
                    "must be TRIGGER_MATTER_CLOSED, TRIGGER_RELATIONSHIP_ENDED or TRIGGER_NAMED_EVENT",
                );
                None
            }
        };
        let occurred = req
            .occur_time
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)));
        match occurred {
            None => v.add("occur_time", "is required"),
            Some(t) if t > Utc::now() + chrono::Duration::minutes(5) => {
                v.add("occur_time", "must not lie in the future")
            }
            Some(_) => {}
        }
        check(v)?;
        let (Some(client), Some(trigger), Some(occurred)) = (client, trigger, occurred) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let n = self
            .retention
            .record_trigger(&actor, client, matter, &trigger, occurred)
            .await?;
        Ok(Response::new(pb::RecordTriggerEventResponse {
            scopes_recomputed: i64::try_from(n).unwrap_or(i64::MAX),
        }))
    }

    #[tracing::instrument(name = "retention.place_hold", skip_all)]
    async fn place_hold(
        &self,
        request: Request<pb::PlaceHoldRequest>,
    ) -> Result<Response<pb::PlaceHoldResponse>, Status> {
        let actor = self.staff_with(&request, "holds.manage").await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.reason.trim().is_empty() || req.reason.chars().count() > 500 {
            v.add("reason", "is required, at most 500 characters");
        }
        let client = required_uuid(&mut v, "client_id", &req.client_id);
        let matter = optional_uuid(&mut v, "matter_id", &req.matter_id);
        let category = optional_category(&mut v, "category", req.category);
        let cover = confidant_vault::grpc::hold_cover(&mut v, matter, category, &req.scope_ids);
        check(v)?;
        let Some(client) = client else {
            return Err(Status::internal("validated request incomplete"));
        };
        let hold = self
            .retention
            .place_hold(&actor, req.reason.trim(), client, cover)
            .await?;
        Ok(Response::new(pb::PlaceHoldResponse {
            hold: Some(hold_proto(&hold, Vec::new())),
        }))
    }

    #[tracing::instrument(name = "retention.approve_hold_release", skip_all, fields(hold_id = %request.get_ref().hold_id))]
    async fn approve_hold_release(
        &self,
        request: Request<pb::ApproveHoldReleaseRequest>,
    ) -> Result<Response<pb::ApproveHoldReleaseResponse>, Status> {
        let actor = self.staff_with(&request, "holds.manage").await?;
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "hold_id", &request.get_ref().hold_id);
        check(v)?;
        let id = id.unwrap_or_default();
        let (hold, needed) = self.retention.approve_release(&actor, id).await?;
        if needed > 0 {
            crate::notices::drain_soon(self.retention.clone());
        }
        let approvers = self
            .retention
            .store()
            .approvers(id)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ApproveHoldReleaseResponse {
            hold: Some(hold_proto(&hold, approvers)),
            approvals_needed: i32::try_from(needed).unwrap_or(i32::MAX),
        }))
    }

    async fn list_holds(
        &self,
        request: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        self.staff_with(&request, "holds.manage").await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let client = optional_uuid(&mut v, "client_id", &req.client_id);
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (100, 500),
            &[Part::Uuid],
        );
        check(v)?;
        let rows = self
            .retention
            .store()
            .hold_page(client, req.include_released, after.values(), limit + 1)
            .await
            .map_err(Error::from)?;
        let (rows, next_page_token) =
            page::split(rows, limit, |(hold, _)| page::token(&[Key::Uuid(hold.id)]));
        Ok(Response::new(pb::ListHoldsResponse {
            holds: rows
                .iter()
                .map(|(hold, approvers)| hold_proto(hold, approvers.clone()))
                .collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "retention.sync_scopes", skip_all)]
    async fn sync_scopes(
        &self,
        request: Request<pb::SyncScopesRequest>,
    ) -> Result<Response<pb::SyncScopesResponse>, Status> {
        self.staff_with(&request, "retention.manage").await?;
        let (added, known) = self.retention.sync().await?;
        Ok(Response::new(pb::SyncScopesResponse {
            scopes_added: i64::try_from(added).unwrap_or(i64::MAX),
            scopes_known: known,
        }))
    }

    #[tracing::instrument(name = "retention.get_due_report", skip_all)]
    async fn get_due_report(
        &self,
        request: Request<pb::GetDueReportRequest>,
    ) -> Result<Response<pb::GetDueReportResponse>, Status> {
        self.staff_with(&request, "retention.manage").await?;
        let days = request.get_ref().within_days;
        let mut v = Violations::new();
        if !(1..=3650).contains(&days) {
            v.add("within_days", "must be between 1 and 3650");
        }
        check(v)?;
        let now = Utc::now();
        let groups = self
            .retention
            .due_report(now + chrono::Duration::days(i64::from(days)))
            .await?;
        Ok(Response::new(pb::GetDueReportResponse {
            groups: groups
                .into_iter()
                .map(|g| pb::DueGroup {
                    category: category_proto(&g.category),
                    client_id: g.client_id.to_string(),
                    matter_id: g.matter_id.map(|m| m.to_string()).unwrap_or_default(),
                    scopes: g.scopes,
                    first_due_time: Some(ts(g.first_due)),
                    held: g.held,
                    action: match g.action {
                        Some(crate::domain::Action::Shred) => pb::DisposalAction::Shred,
                        Some(crate::domain::Action::Review) => pb::DisposalAction::Review,
                        None => pb::DisposalAction::Unspecified,
                    } as i32,
                })
                .collect(),
            report_time: Some(ts(now)),
            disposals_paused: self
                .retention
                .store()
                .paused()
                .await
                .map_err(Error::Store)?,
        }))
    }

    #[tracing::instrument(name = "retention.list_pending_destructions", skip_all)]
    async fn list_pending_destructions(
        &self,
        request: Request<pb::ListPendingDestructionsRequest>,
    ) -> Result<Response<pb::ListPendingDestructionsResponse>, Status> {
        self.staff_with(&request, "retention.manage").await?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (100, 500),
            &[Part::Time, Part::Uuid],
        );
        check(v)?;
        let rows = self.disposer.pending(after.values(), limit + 1).await?;
        // The page and its token follow the sweeps' rows; what the vault no
        // longer holds pending (kept, or its key gone) is left out of it.
        let (rows, next_page_token) = page::split(rows, limit, |row| {
            page::token(&[Key::Time(row.staged_until), Key::Uuid(row.id)])
        });
        let held = if rows.is_empty() {
            None
        } else {
            self.disposer.vault_pending().await?
        };
        Ok(Response::new(pb::ListPendingDestructionsResponse {
            destructions: rows
                .into_iter()
                .filter(|row| {
                    held.as_ref()
                        .is_none_or(|held| held.contains(&row.scope_id.to_string()))
                })
                .map(|row| pb::PendingDestruction {
                    scope_id: row.scope_id.to_string(),
                    client_id: row.client_id.to_string(),
                    matter_id: row.matter_id.map(|m| m.to_string()).unwrap_or_default(),
                    category: category_proto(&row.category),
                    batch_id: row.batch_id.to_string(),
                    destroy_time: Some(ts(row.staged_until)),
                    due_time: Some(ts(row.due_at)),
                })
                .collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "retention.run_sweep", skip_all)]
    async fn run_sweep(
        &self,
        request: Request<pb::RunSweepRequest>,
    ) -> Result<Response<pb::RunSweepResponse>, Status> {
        self.staff_with(&request, "retention.manage").await?;
        let report = self.disposer.sweep().await?;
        let n = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
        Ok(Response::new(match report {
            None => pb::RunSweepResponse::default(),
            Some(r) => pb::RunSweepResponse {
                ran: true,
                batches_created: n(r.batches_created),
                scopes_shredded: n(r.shredded),
                certificates_issued: n(r.certified),
                disposals_cancelled: n(r.cancelled),
                disposals_pending: n(r.pending),
                awaiting_client_notice: n(r.awaiting_notice),
                listed_for_return: n(r.listed_for_return),
                paused: r.paused,
                records_erased: n(r.erased),
                staff_notices_sent: n(r.notified),
            },
        }))
    }

    #[tracing::instrument(name = "retention.resume_disposals", skip_all)]
    async fn resume_disposals(
        &self,
        request: Request<pb::ResumeDisposalsRequest>,
    ) -> Result<Response<pb::ResumeDisposalsResponse>, Status> {
        let actor = self.staff_with(&request, "retention.manage").await?;
        let was_paused = self.disposer.resume(&actor).await?;
        Ok(Response::new(pb::ResumeDisposalsResponse { was_paused }))
    }

    async fn list_disposal_batches(
        &self,
        request: Request<pb::ListDisposalBatchesRequest>,
    ) -> Result<Response<pb::ListDisposalBatchesResponse>, Status> {
        self.staff_with(&request, "retention.manage").await?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let state = match pb::BatchState::try_from(req.state) {
            Ok(pb::BatchState::Unspecified) => None,
            Ok(pb::BatchState::AwaitingApproval) => Some("awaiting_approval"),
            Ok(pb::BatchState::Approved) => Some("approved"),
            Ok(pb::BatchState::Done) => Some("done"),
            Err(_) => {
                v.add("state", "is not a known batch state");
                None
            }
        };
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (20, 50),
            &[Part::Uuid],
        );
        check(v)?;
        let rows = self
            .retention
            .store()
            .batch_page(state, after.values(), limit + 1)
            .await
            .map_err(Error::from)?;
        let (rows, next_page_token) =
            page::split(rows, limit, |(row, ..)| page::token(&[Key::Uuid(row.id)]));
        Ok(Response::new(pb::ListDisposalBatchesResponse {
            batches: rows
                .into_iter()
                .map(|(row, scopes, approvers)| batch_proto(&row, scopes, approvers))
                .collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "retention.approve_disposal_batch", skip_all, fields(batch_id = %request.get_ref().batch_id))]
    async fn approve_disposal_batch(
        &self,
        request: Request<pb::ApproveDisposalBatchRequest>,
    ) -> Result<Response<pb::ApproveDisposalBatchResponse>, Status> {
        let actor = self.staff_with(&request, "retention.manage").await?;
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "batch_id", &request.get_ref().batch_id);
        check(v)?;
        let id = id.unwrap_or_default();
        let (row, needed) = self.disposer.approve_batch(&actor, id).await?;
        let scopes = self.disposer.batch_scopes(id).await?;
        let approvers = self.disposer.approvers(id).await?;
        Ok(Response::new(pb::ApproveDisposalBatchResponse {
            batch: Some(batch_proto(&row, scopes, approvers)),
            approvals_needed: i32::try_from(needed).unwrap_or(i32::MAX),
        }))
    }

    #[tracing::instrument(name = "retention.list_returns", skip_all)]
    async fn list_returns(
        &self,
        request: Request<pb::ListReturnsRequest>,
    ) -> Result<Response<pb::ListReturnsResponse>, Status> {
        self.staff_with(&request, "retention.manage").await?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let client = optional_uuid(&mut v, "client_id", &req.client_id);
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (100, 1000),
            &[Part::Text, Part::Time, Part::Uuid],
        );
        check(v)?;
        let rows = self
            .retention
            .store()
            .returns(client, req.include_returned, after.values(), limit + 1)
            .await
            .map_err(Error::from)?;
        let (rows, next_page_token) = page::split(rows, limit, |r| {
            page::token(&[Key::Text(&r.state), Key::Time(r.due_at), Key::Uuid(r.id)])
        });
        Ok(Response::new(pb::ListReturnsResponse {
            returns: rows.iter().map(return_proto).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "retention.record_return", skip_all, fields(return_id = %request.get_ref().return_id))]
    async fn record_return(
        &self,
        request: Request<pb::RecordReturnRequest>,
    ) -> Result<Response<pb::RecordReturnResponse>, Status> {
        let actor = self.staff_with(&request, "retention.manage").await?;
        let Actor::Staff { staff_id, .. } = &actor else {
            return Err(Error::Unauthenticated.into());
        };
        let req = request.get_ref();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "return_id", &req.return_id);
        let reference = req.reference.trim();
        if reference.is_empty() || reference.chars().count() > 200 {
            v.add("reference", "is required, at most 200 characters");
        }
        check(v)?;
        let id = id.unwrap_or_default();
        let entry = self
            .retention
            .store()
            .return_entry(id)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NotFound("return"))?;
        // Permission for this client's matter: walls and assignments count.
        self.decider
            .decide(
                staff_id,
                "retention.manage",
                Some(entry.client_id),
                entry.matter_id,
            )
            .await
            .map_err(Error::from)?;
        let row = self.retention.record_return(&actor, id, reference).await?;
        Ok(Response::new(pb::RecordReturnResponse {
            entry: Some(return_proto(&row)),
        }))
    }

    async fn get_certificate(
        &self,
        request: Request<pb::GetCertificateRequest>,
    ) -> Result<Response<pb::GetCertificateResponse>, Status> {
        if self.staff_with(&request, "retention.manage").await.is_err() {
            self.staff_with(&request, "audit.read").await?;
        }
        let req = request.get_ref();
        let mut v = Violations::new();
        let found = match (req.scope_id.is_empty(), req.erasure_id.is_empty()) {
            (false, false) | (true, true) => {
                v.add("scope_id", "exactly one of scope_id and erasure_id");
                None
            }
            (false, true) => match required_uuid(&mut v, "scope_id", &req.scope_id) {
                Some(scope) => Some(self.disposer.certificate(scope).await?),
                None => None,
            },
            (true, false) => match required_uuid(&mut v, "erasure_id", &req.erasure_id) {
                Some(erasure) => Some(self.disposer.erasures().certificate(erasure).await?),
                None => None,
            },
        };
        check(v)?;
        let (id, body, signature, key_id, public_key) =
            found.flatten().ok_or(Error::NotFound("certificate"))?;
        Ok(Response::new(pb::GetCertificateResponse {
            certificate: Some(pb::Certificate {
                id: id.to_string(),
                body,
                signature,
                public_key: self.disposer.signer().public_key_of(&key_id, public_key),
                key_id,
            }),
        }))
    }

    async fn get_compliance_facts(
        &self,
        request: Request<pb::GetComplianceFactsRequest>,
    ) -> Result<Response<pb::GetComplianceFactsResponse>, Status> {
        // The audit service builds reports; records managers may look too.
        let audit_peer =
            confidant_runtime::ServiceName::Audit.spiffe_id(self.retention.trust_domain());
        let from_audit = PeerIdentity::of(&request).is_some_and(|p| p.as_str() == audit_peer)
            && StaffPrincipal::of(&request).is_none();
        if !from_audit {
            self.staff_with(&request, "retention.manage").await?;
        }
        let req = request.into_inner();
        let time = |t: Option<prost_types::Timestamp>| {
            t.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, 0))
        };
        let mut v = Violations::new();
        let (start, end) = (time(req.start_time), time(req.end_time));
        let (Some(start), Some(end)) = (start, end) else {
            v.add("end_time", "a period with a start and an end");
            return Err(Error::Invalid(v).into());
        };
        if start >= end {
            v.add("end_time", "must be after start_time");
        }
        check(v)?;
        let db = self.retention.store().db();
        let period = || vec![Value::Time(start), Value::Time(end)];
        let mut certificates = Vec::new();
        for (sql, kind) in [
            (
                "SELECT id, created_at FROM retention_certificates WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at",
                "crypto-shredding",
            ),
            (
                "SELECT id, created_at FROM retention_erasure_certificates WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at",
                "record-erasure",
            ),
            (
                "SELECT id, created_at FROM physical_certificates WHERE created_at >= $1 AND created_at < $2 ORDER BY created_at",
                "physical",
            ),
        ] {
            let rows: Vec<(uuid::Uuid, DateTime<Utc>)> =
                db.fetch_all(sql, period()).await.map_err(Error::from)?;
            certificates.extend(rows.into_iter().map(|(id, at)| pb::CertificateFacts {
                certificate_id: id.to_string(),
                kind: kind.into(),
                issue_time: Some(ts(at)),
            }));
        }
        let count = |sql: &'static str, values: Vec<Value>| async move {
            let row: Option<(i64,)> = db.fetch_optional(sql, values).await?;
            Ok::<i32, sqlx::Error>(row.map_or(0, |r| i32::try_from(r.0).unwrap_or(i32::MAX)))
        };
        let active_holds = count(
            "SELECT COUNT(*) FROM retention_holds WHERE placed_at < $1 AND (released_at IS NULL OR released_at >= $1)",
            vec![Value::Time(end)],
        )
        .await
        .map_err(Error::from)?;
        let holds_placed = count(
            "SELECT COUNT(*) FROM retention_holds WHERE placed_at >= $1 AND placed_at < $2",
            period(),
        )
        .await
        .map_err(Error::from)?;
        let holds_released = count(
            "SELECT COUNT(*) FROM retention_holds WHERE released_at >= $1 AND released_at < $2",
            period(),
        )
        .await
        .map_err(Error::from)?;
        let scopes_overdue = count(
            "SELECT COUNT(*) FROM retention_scopes WHERE due_at IS NOT NULL AND due_at < $1 AND vault_state <> 'shredded'",
            vec![Value::Time(Utc::now())],
        )
        .await
        .map_err(Error::from)?;
        let items_destroyed = count(
            "SELECT COUNT(*) FROM physical_custody WHERE action = 'destroyed' AND at >= $1 AND at < $2",
            period(),
        )
        .await
        .map_err(Error::from)?;
        let live_policies = i32::try_from(
            self.retention
                .store()
                .live_policies()
                .await
                .map_err(Error::from)?
                .len(),
        )
        .unwrap_or(i32::MAX);
        Ok(Response::new(pb::GetComplianceFactsResponse {
            certificates,
            active_holds,
            holds_placed,
            holds_released,
            live_policies,
            scopes_overdue,
            items_destroyed,
        }))
    }

    #[tracing::instrument(name = "retention.request_erasure", skip_all, fields(record_id = %request.get_ref().record_id))]
    async fn request_erasure(
        &self,
        request: Request<pb::RequestErasureRequest>,
    ) -> Result<Response<pb::RequestErasureResponse>, Status> {
        let actor = self.staff_with(&request, "retention.manage").await?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let record = required_uuid(&mut v, "record_id", &req.record_id);
        let basis = match pb::ErasureBasis::try_from(req.basis) {
            Ok(pb::ErasureBasis::Unspecified) | Err(_) => {
                v.add(
                    "basis",
                    "is required: client request, collected in error, no longer needed or legal order",
                );
                None
            }
            Ok(b) => Basis::ALL.into_iter().find(|x| erasure_basis(*x) == b),
        };
        let reference = req.reference.trim();
        if reference.is_empty() || reference.chars().count() > crate::erasure::MAX_REFERENCE_CHARS {
            v.add("reference", "is required, at most 200 characters");
        } else if reference.chars().any(char::is_control) {
            v.add("reference", "must not contain control characters");
        }
        let request_id = optional_uuid(&mut v, "request_id", &req.request_id);
        check(v)?;
        let (Some(record), Some(basis)) = (record, basis) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let row = self
            .disposer
            .erasures()
            .request(&actor, record, basis, reference, request_id)
            .await?;
        Ok(Response::new(pb::RequestErasureResponse {
            erasure: Some(self.erasure_answer(&row).await?),
        }))
    }

    #[tracing::instrument(name = "retention.approve_erasure", skip_all, fields(erasure_id = %request.get_ref().erasure_id))]
    async fn approve_erasure(
        &self,
        request: Request<pb::ApproveErasureRequest>,
    ) -> Result<Response<pb::ApproveErasureResponse>, Status> {
        let actor = self.staff_with(&request, "retention.manage").await?;
        let id = Self::erasure_id(&request.get_ref().erasure_id)?;
        let (row, needed) = self.disposer.erasures().approve(&actor, id).await?;
        Ok(Response::new(pb::ApproveErasureResponse {
            erasure: Some(self.erasure_answer(&row).await?),
            approvals_needed: i32::try_from(needed).unwrap_or(i32::MAX),
        }))
    }

    #[tracing::instrument(name = "retention.cancel_erasure", skip_all, fields(erasure_id = %request.get_ref().erasure_id))]
    async fn cancel_erasure(
        &self,
        request: Request<pb::CancelErasureRequest>,
    ) -> Result<Response<pb::CancelErasureResponse>, Status> {
        let actor = self.staff_with(&request, "retention.manage").await?;
        let id = Self::erasure_id(&request.get_ref().erasure_id)?;
        let row = self.disposer.erasures().cancel(&actor, id).await?;
        Ok(Response::new(pb::CancelErasureResponse {
            erasure: Some(self.erasure_answer(&row).await?),
        }))
    }

    #[tracing::instrument(name = "retention.list_erasures", skip_all)]
    async fn list_erasures(
        &self,
        request: Request<pb::ListErasuresRequest>,
    ) -> Result<Response<pb::ListErasuresResponse>, Status> {
        self.staff_with(&request, "retention.manage").await?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let client = optional_uuid(&mut v, "client_id", &req.client_id);
        let state = match pb::ErasureState::try_from(req.state) {
            Ok(pb::ErasureState::Unspecified) => None,
            Ok(wanted) => ERASURE_STATES
                .iter()
                .find(|(_, s)| *s == wanted)
                .map(|(name, _)| *name),
            Err(_) => {
                v.add("state", "must be a known erasure state");
                None
            }
        };
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (100, 500),
            &[Part::Uuid],
        );
        check(v)?;
        let rows = self
            .disposer
            .erasures()
            .list(client, state, after.values(), limit + 1)
            .await?;
        let (rows, next_page_token) =
            page::split(rows, limit, |(row, _)| page::token(&[Key::Uuid(row.id)]));
        Ok(Response::new(pb::ListErasuresResponse {
            erasures: rows
                .into_iter()
                .map(|(row, approvers)| erasure_proto(&row, approvers))
                .collect(),
            next_page_token,
        }))
    }
}
