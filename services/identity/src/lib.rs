//! The identity service: staff, roles and permissions, clients, matters,
//! assignments, ethical walls, attestations (NDA, training), break-glass,
//! and the authorization decision the other services ask for.
//!
//! - [`domain`]: the decision as a pure function of facts at a point in time;
//! - [`store`]: the directory on PostgreSQL or SQLite;
//! - [`grpc`]: the `confidant.identity.v1.IdentityService` handlers.
#![forbid(unsafe_code)]

pub mod credentials;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod sessions;
pub mod store;
pub mod tokens;

use confidant_runtime::{Migrations, ServiceName};
use sqlx::migrate::Migrator;

/// This service.
pub const NAME: ServiceName = ServiceName::Identity;

static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");

/// The identity schema, per backend.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

/// The fully qualified name of the gRPC service.
pub const GRPC_SERVICE: &str = "confidant.identity.v1.IdentityService";

/// The services that ask for decisions.
pub const DECISION_CALLERS: [ServiceName; 4] = [
    ServiceName::Intake,
    ServiceName::Vault,
    ServiceName::Retention,
    ServiceName::Audit,
];

/// Builds the identity service.
pub async fn build(
    ctx: &confidant_runtime::app::ServiceContext,
) -> anyhow::Result<confidant_runtime::app::ServiceParts> {
    use confidant_proto::identity::v1::identity_service_server::IdentityServiceServer;
    let admins: Vec<String> = ctx
        .config
        .identity
        .admins
        .iter()
        .map(|name| confidant_runtime::service_name::spiffe_id(&ctx.config.trust_domain, name))
        .collect();
    let mut deciders: Vec<String> = DECISION_CALLERS.iter().map(|s| ctx.spiffe_id(*s)).collect();
    deciders.extend(admins.iter().cloned());
    // Directory management is for admins; Authorize for the services; the
    // sign-in methods for every certified client (the firm's applications).
    let mut policy = confidant_runtime::peer::PeerPolicy::new()
        .allow(&format!("/{GRPC_SERVICE}/"), admins.clone())
        .allow(&format!("/{GRPC_SERVICE}/Authorize"), deciders);
    for open in [
        "EnrollTotp",
        "ConfirmTotp",
        "Login",
        "RefreshSession",
        "RevokeSession",
        "GetJwks",
    ] {
        policy = policy.open(&format!("/{GRPC_SERVICE}/{open}"));
    }
    let keys = tokens::TokenKeys::load(
        &ctx.config.identity.token_key_files,
        &ctx.config.trust_domain,
    )?;
    let sessions = std::sync::Arc::new(sessions::Sessions::new(
        ctx.db.clone(),
        ctx.coord.clone(),
        keys,
        ctx.config.identity.clone(),
        &ctx.config.trust_domain,
    ));
    let api = grpc::IdentityApi::new(
        store::Directory::new(ctx.db.clone()),
        &ctx.config.trust_domain,
        sessions,
        admins,
    )?;
    Ok(confidant_runtime::app::ServiceParts {
        routes: tonic::service::Routes::new(IdentityServiceServer::new(api)),
        grpc_services: vec![GRPC_SERVICE],
        policy,
        tasks: Vec::new(),
        on_stop: Vec::new(),
    })
}
