//! The gRPC face of the audit service.

use std::sync::Arc;

use chrono::Utc;
use confidant_proto::audit::v1::audit_service_server::AuditService;
use confidant_proto::audit::v1::{AppendEventsRequest, AppendEventsResponse};
use confidant_runtime::peer::PeerIdentity;
use tonic::{Request, Response, Status};

use crate::domain::validate_batch;
use crate::error::Error;
use crate::store::EventStore;

/// Handlers of `confidant.audit.v1.AuditService`.
#[derive(Debug, Clone)]
pub struct AuditApi {
    store: Arc<EventStore>,
}

impl AuditApi {
    /// Handlers over `store`.
    pub fn new(store: Arc<EventStore>) -> Self {
        Self { store }
    }
}

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
        let done = self.store.append(&events).await.map_err(Error::from)?;
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
}
