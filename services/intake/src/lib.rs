//! The intake service: versioned intake forms and privacy notices, client
//! invitations, verified submissions and consent; every answer goes straight
//! to the vault, intake keeps only metadata, record ids and the consent.
//!
//! - [`domain`]: form definitions and answers, validated at the boundary;
//! - [`store`]: notices, form versions, invitations and submissions on
//!   PostgreSQL or SQLite, each change with its audit event;
//! - [`grpc`]: the `confidant.intake.v1.IntakeService` handlers.
#![forbid(unsafe_code)]

pub mod domain;
pub mod error;
pub mod grpc;
pub mod receipts;
pub mod store;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use confidant_runtime::{Migrations, ServiceName};
use sqlx::migrate::Migrator;

/// This service.
pub const NAME: ServiceName = ServiceName::Intake;

static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");

/// The intake schema, per backend.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

/// The fully qualified name of the gRPC service.
pub const GRPC_SERVICE: &str = "confidant.intake.v1.IntakeService";

/// How often expired invitations are looked for, and notices to staff
/// that could not be sent are tried again.
const NOTICE_RETRY: Duration = Duration::from_secs(60);
/// How long after an invitation expired unanswered its maker is still told
/// (one that expired earlier, while no replica ran, is left alone).
const EXPIRY_TOLD_WITHIN: chrono::Duration = chrono::Duration::days(30);

/// Builds the intake service.
pub async fn build(
    ctx: &confidant_runtime::app::ServiceContext,
) -> anyhow::Result<confidant_runtime::app::ServiceParts> {
    use confidant_proto::intake::v1::intake_service_server::IntakeServiceServer;
    let identity = ctx.peer(ServiceName::Identity);
    let decider = Arc::new(confidant_runtime::decide::Decider::new(
        identity.clone(),
        Duration::from_millis(ctx.config.vault.decision_cache_millis),
    ));
    let tokens = identity.map(|channel| {
        confidant_runtime::auth::StaffAuth::with_live_window(
            Arc::new(confidant_runtime::auth::IdentityJwks(channel)),
            ctx.coord.clone(),
            Duration::from_millis(ctx.config.identity.session_check_cache_millis),
        )
    });
    let kms = confidant_runtime::kms::from_config(&ctx.config).await?;
    let secrets = Arc::new(
        confidant_runtime::secret_box::SecretBox::open_or_create(
            &ctx.db,
            kms.as_ref(),
            NAME,
            &ctx.config.trust_domain,
        )
        .await?,
    );
    let api = grpc::IntakeApi::new(
        store::IntakeStore::new(ctx.db.clone()),
        decider,
        tokens,
        grpc::Peers {
            identity: ctx.peer(ServiceName::Identity),
            vault: ctx.peer(ServiceName::Vault),
        },
        secrets.clone(),
        &ctx.config.trust_domain,
    );
    // Every minute, the makers of invitations that expired unanswered are
    // told, and what identity could not take at once (notices to staff,
    // clients' receipts) is sent again.
    let (notes, identity) = (
        store::IntakeStore::new(ctx.db.clone()),
        ctx.peer(ServiceName::Identity),
    );
    let notices = confidant_runtime::app::every(NOTICE_RETRY, ctx.shutdown.clone(), move || {
        let (notes, identity, secrets) = (notes.clone(), identity.clone(), secrets.clone());
        async move {
            if let Err(e) = receipts::send(
                notes.db(),
                &secrets,
                identity.clone(),
                None,
                chrono::Utc::now(),
            )
            .await
            {
                tracing::warn!(error = %e, "clients' receipts not sent yet; retried later");
            }
            if let Err(e) = notes
                .note_expired(chrono::Utc::now(), EXPIRY_TOLD_WITHIN)
                .await
            {
                tracing::warn!(error = %e, "expired invitations not told of yet; retried later");
            }
            if let Err(e) = confidant_runtime::staff_notices::drain(notes.db(), identity).await {
                tracing::warn!(error = %e, "staff not told of work waiting for them yet; retried later");
            }
        }
    });
    let notice_lag = confidant_runtime::staff_notices::report_lag(
        "intake",
        ctx.db.clone(),
        confidant_runtime::staff_notices::LAG_LOOK,
        ctx.shutdown.clone(),
    );
    let mut tasks: Vec<futures::future::BoxFuture<'static, ()>> =
        vec![Box::pin(notices), Box::pin(notice_lag)];
    if let Some(addr) = ctx.config.intake.web_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("intake.web_listen {addr}: {e}"))?;
        tracing::info!(%addr, "intake web page listening");
        tasks.push(Box::pin(web::serve(
            listener,
            ctx.tls.clone(),
            api.clone(),
            ctx.coord.clone(),
            web::WebSettings {
                requests_per_minute: ctx.config.intake.web_requests_per_minute,
                max_body_bytes: ctx.config.intake.web_max_body_bytes,
                peer: format!("{}/web", ctx.spiffe_id(NAME)),
            },
            ctx.shutdown.clone(),
        )));
    }
    Ok(confidant_runtime::app::ServiceParts {
        routes: tonic::service::Routes::new(IntakeServiceServer::new(api)),
        grpc_services: vec![GRPC_SERVICE],
        policy: confidant_runtime::peer::PeerPolicy::new(),
        tasks,
        on_stop: Vec::new(),
    })
}
