//! The retention service: retention policies with legal triggers, legal
//! holds carried to the vault, and the due date of every vault scope.
//!
//! - [`domain`]: rules validated at the boundary, and the due date of a
//!   scope as a pure function of its policy and recorded events;
//! - [`store`]: policies (versioned), trigger events, the scope registry,
//!   holds and their release approvals, on PostgreSQL or SQLite;
//! - [`service`]: the operations with their audit events;
//! - [`grpc`]: the `confidant.retention.v1.RetentionService` handlers.
//!
//! The disposal scheduler, disposition batches and certificates of disposal
//! build on these.
#![forbid(unsafe_code)]

pub mod disposal;
pub mod domain;
pub mod erasure;
pub mod error;
pub mod grpc;
pub mod notices;
pub mod physical;
pub mod restore;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use confidant_runtime::{Migrations, ServiceName};
use sqlx::migrate::Migrator;

/// This service.
pub const NAME: ServiceName = ServiceName::Retention;

static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");

/// The retention schema, per backend.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

/// The fully qualified name of the gRPC service.
pub const GRPC_SERVICE: &str = "confidant.retention.v1.RetentionService";

/// The physical records register, served by the retention service too.
pub const PHYSICAL_GRPC_SERVICE: &str = "confidant.retention.v1.PhysicalRecordsService";

/// Builds the retention service.
pub async fn build(
    ctx: &confidant_runtime::app::ServiceContext,
) -> anyhow::Result<confidant_runtime::app::ServiceParts> {
    use confidant_proto::retention::v1::retention_service_server::RetentionServiceServer;
    let config = &ctx.config.retention;
    let retention = Arc::new(
        service::Retention::new(
            store::RetentionStore::new(ctx.db.clone()),
            ctx.peer(ServiceName::Vault),
            &ctx.config.trust_domain,
            usize::try_from(config.hold_release_approvers).unwrap_or(2),
        )
        .with_audit(ctx.peer(ServiceName::Audit))
        .with_identity(ctx.peer(ServiceName::Identity)),
    );
    let decider = Arc::new(confidant_runtime::decide::Decider::new(
        ctx.peer(ServiceName::Identity),
        Duration::from_millis(ctx.config.vault.decision_cache_millis),
    ));
    let key_file = config
        .signing_key_file
        .clone()
        .ok_or_else(|| anyhow::anyhow!("retention.signing_key_file is not set"))?;
    let signer = Arc::new(disposal::Signer::load(&key_file)?);
    let disposer = Arc::new(
        disposal::Disposer::new(
            retention.clone(),
            ctx.coord.clone(),
            signer.clone(),
            usize::try_from(config.batch_approvers).unwrap_or(1),
        )
        .with_erasure_approvers(usize::try_from(config.erasure_approvers).unwrap_or(2))
        .with_destruction_reminder(Duration::from_secs(config.destruction_reminder_seconds)),
    );
    let api = grpc::RetentionApi::new(
        retention.clone(),
        disposer.clone(),
        decider.clone(),
        &ctx.config.trust_domain,
    );
    let sync = sync_task(
        retention,
        Duration::from_secs(config.sync_interval_seconds.max(1)),
        ctx.shutdown.clone(),
    );
    let sweep = disposal::sweep_task(
        disposer,
        Duration::from_secs(config.sweep_interval_seconds.max(1)),
        ctx.shutdown.clone(),
    );
    let notice_lag = confidant_runtime::staff_notices::report_lag(
        "retention",
        ctx.db.clone(),
        confidant_runtime::staff_notices::LAG_LOOK,
        ctx.shutdown.clone(),
    );
    let physical = physical::PhysicalApi::new(
        physical::PhysicalStore::new(ctx.db.clone()),
        store::RetentionStore::new(ctx.db.clone()),
        decider,
        signer,
        &ctx.config.trust_domain,
    );
    Ok(confidant_runtime::app::ServiceParts {
        routes: tonic::service::Routes::new(RetentionServiceServer::new(api)).add_service(
            confidant_proto::retention::v1::physical_records_service_server::PhysicalRecordsServiceServer::new(
                physical,
            ),
        ),
        grpc_services: vec![GRPC_SERVICE, PHYSICAL_GRPC_SERVICE],
        policy: confidant_runtime::peer::PeerPolicy::new(),
        tasks: vec![Box::pin(sync), Box::pin(sweep), Box::pin(notice_lag)],
        on_stop: Vec::new(),
    })
}

/// Brings the scope registry up to date on an interval (and sends holds the
/// vault has not confirmed), until shutdown.
pub async fn sync_task(
    retention: Arc<service::Retention>,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    confidant_runtime::app::every(every, shutdown, || async {
        match retention.sync().await {
            Ok((0, _)) => {}
            Ok((added, known)) => tracing::info!(added, known, "scope registry synced"),
            Err(e) => tracing::warn!(error = %e, "scope registry not synced; retrying"),
        }
    })
    .await;
}
