//! The audit service: the append-only log of every access to client data.
//!
//! - [`domain`]: events as the log accepts them, checked at the boundary;
//! - [`store`]: the append-only store on PostgreSQL or SQLite;
//! - [`grpc`]: the `confidant.audit.v1.AuditService` handlers.
//!
//! Other services deliver their events through their outboxes
//! ([`confidant_runtime::outbox`]); only their identities may append.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod merkle;
pub mod store;

use std::sync::Arc;

use confidant_proto::audit::v1::Outcome;
use confidant_proto::audit::v1::audit_service_server::AuditServiceServer;
use confidant_runtime::app::{ServiceContext, ServiceParts};
use confidant_runtime::audit::{Action, service_event};
use confidant_runtime::peer::PeerPolicy;
use confidant_runtime::{Migrations, ServiceName};
use sqlx::migrate::Migrator;

/// This service.
pub const NAME: ServiceName = ServiceName::Audit;

static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");

/// The audit schema, per backend.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

/// The fully qualified name of the gRPC service.
pub const GRPC_SERVICE: &str = "confidant.audit.v1.AuditService";

/// The services allowed to append events.
pub const APPENDERS: [ServiceName; 4] = [
    ServiceName::Identity,
    ServiceName::Intake,
    ServiceName::Vault,
    ServiceName::Retention,
];

/// Builds the audit service and records its own start in the log.
pub async fn build(ctx: &ServiceContext) -> anyhow::Result<ServiceParts> {
    let store = Arc::new(store::EventStore::new(ctx.db.clone()));
    let started = service_event(
        NAME,
        &ctx.config.trust_domain,
        Action::ServiceStarted,
        Outcome::Allowed,
    );
    let started = domain::validate_batch(&[started], NAME.as_str(), chrono::Utc::now())
        .map_err(|v| anyhow::anyhow!("own start event invalid: {:?}", v.as_slice()))?;
    store.append(&started).await?;

    let policy = PeerPolicy::new().allow(
        &format!("/{GRPC_SERVICE}/AppendEvents"),
        APPENDERS.iter().map(|s| ctx.spiffe_id(*s)),
    );
    let trust_domain = ctx.config.trust_domain.clone();
    let stop_store = store.clone();
    let on_stop = Box::pin(async move {
        let stopped = service_event(
            NAME,
            &trust_domain,
            Action::ServiceStopped,
            Outcome::Allowed,
        );
        if let Ok(stopped) = domain::validate_batch(&[stopped], NAME.as_str(), chrono::Utc::now())
            && let Err(err) = stop_store.append(&stopped).await
        {
            tracing::error!(error = %err, "could not record the audit service's stop");
        }
    });
    Ok(ServiceParts {
        routes: tonic::service::Routes::new(AuditServiceServer::new(grpc::AuditApi::new(store))),
        grpc_services: vec![GRPC_SERVICE],
        policy,
        tasks: Vec::new(),
        on_stop: vec![on_stop],
    })
}
