//! The identity service: staff, roles and permissions, clients, matters,
//! assignments, ethical walls, attestations (NDA, training), break-glass,
//! and the authorization decision the other services ask for.
//!
//! - [`domain`]: the decision as a pure function of facts at a point in time;
//! - [`store`]: the directory on PostgreSQL or SQLite;
//! - [`grpc`]: the `confidant.identity.v1.IdentityService` handlers.
#![forbid(unsafe_code)]

pub mod clients;
pub mod credentials;
pub mod decisions;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod reminders;
pub mod restore;
pub mod reviews;
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
    // Intake runs clients' verification; admins may too (support desk).
    let mut verifiers = vec![ctx.spiffe_id(ServiceName::Intake)];
    verifiers.extend(admins.iter().cloned());
    deciders.extend(admins.iter().cloned());
    // Directory management is for admins; Authorize for the services; the
    // sign-in methods for every certified client (the firm's applications).
    let mut policy = confidant_runtime::peer::PeerPolicy::new()
        .allow(&format!("/{GRPC_SERVICE}/"), admins.clone())
        .allow(&format!("/{GRPC_SERVICE}/Authorize"), deciders)
        .allow(
            &format!("/{GRPC_SERVICE}/GetMatters"),
            std::iter::once(ctx.spiffe_id(ServiceName::Retention)).chain(admins.iter().cloned()),
        )
        .allow(
            &format!("/{GRPC_SERVICE}/NotifyStaff"),
            [
                ctx.spiffe_id(ServiceName::Retention),
                ctx.spiffe_id(ServiceName::Intake),
            ],
        )
        .allow(
            &format!("/{GRPC_SERVICE}/NotifyClient"),
            [ctx.spiffe_id(ServiceName::Intake)],
        )
        .allow(
            &format!("/{GRPC_SERVICE}/GetComplianceFacts"),
            std::iter::once(ctx.spiffe_id(ServiceName::Audit)).chain(admins.iter().cloned()),
        )
        .allow(
            &format!("/{GRPC_SERVICE}/StartClientVerification"),
            verifiers.clone(),
        )
        .allow(
            &format!("/{GRPC_SERVICE}/CompleteClientVerification"),
            verifiers,
        );
    // Access reviews check their callers themselves: an admin certificate,
    // or a staff token with the right to review (see `reviews`); the
    // methods about oneself take a staff token and answer about its holder.
    for open in [
        "StartAccessReview",
        "ListAccessReviewItems",
        "DecideAccessReviewItem",
        "EnrollTotp",
        "ChangePassword",
        "ConfirmTotp",
        "Login",
        "RefreshSession",
        "RevokeSession",
        "GetMyAccount",
        "ListMyMatters",
        "GetJwks",
        "GetCertificateKeys",
    ] {
        policy = policy.open(&format!("/{GRPC_SERVICE}/{open}"));
    }
    let keys = tokens::TokenKeys::load(
        &ctx.config.identity.token_key_files,
        &ctx.config.trust_domain,
    )?;
    let kms = confidant_runtime::kms::from_config(&ctx.config).await?;
    let secret_box = std::sync::Arc::new(
        confidant_runtime::secret_box::SecretBox::open_or_create(
            &ctx.db,
            kms.as_ref(),
            ServiceName::Identity,
            &ctx.config.trust_domain,
        )
        .await?,
    );
    let identity = &ctx.config.identity;
    let notifier = confidant_runtime::notify::configured(
        "identity",
        identity.notification_webhook_url.as_deref(),
        identity.notification_webhook_token_file.as_deref(),
        identity.notifications_file.as_deref(),
    )?
    .ok_or_else(|| anyhow::anyhow!("identity.notification_webhook_url is not set"))?;
    let sessions = std::sync::Arc::new(
        sessions::Sessions::new(
            ctx.db.clone(),
            ctx.coord.clone(),
            keys,
            ctx.config.identity.clone(),
            &ctx.config.trust_domain,
            secret_box,
        )
        .with_notifier(notifier.clone()),
    );
    let pepper_path = ctx
        .config
        .identity
        .pepper_file
        .clone()
        .ok_or_else(|| anyhow::anyhow!("identity.pepper_file is not set"))?;
    let pepper = zeroize::Zeroizing::new(std::fs::read(&pepper_path)?);
    if pepper.len() < 32 {
        anyhow::bail!("identity.pepper_file must hold at least 32 bytes");
    }
    let reminders = reminders::Reminders::new(
        ctx.db.clone(),
        notifier.clone(),
        &ctx.config.trust_domain,
        identity.attestation_reminder_days,
        identity.review_reminder_hours,
    );
    let clients = std::sync::Arc::new(clients::ClientVerification::new(
        ctx.db.clone(),
        ctx.coord.clone(),
        notifier,
        &pepper,
        sessions.clone(),
        &ctx.config.trust_domain,
    ));
    let (recorder, recorder_task) =
        decisions::DecisionRecorder::new(ctx.db.clone(), ctx.shutdown.clone());
    let mut api = grpc::IdentityApi::new(
        store::Directory::new(ctx.db.clone()),
        &ctx.config.trust_domain,
        sessions,
        admins,
        clients,
        recorder,
    )?;
    api.reminders = Some(reminders.clone());
    api.audit = ctx.peer(ServiceName::Audit);
    api.certificate_keys = Some(std::sync::Arc::new(tokens::TokenKeys::load(
        &ctx.config.identity.certificate_key_files,
        &ctx.config.trust_domain,
    )?));
    api.retention = ctx.peer(ServiceName::Retention);
    let mut tasks: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
        vec![Box::pin(recorder_task)];
    tasks.push(Box::pin(reminders.run(
        std::time::Duration::from_secs(identity.attestation_reminder_interval_seconds),
        ctx.shutdown.clone(),
    )));
    Ok(confidant_runtime::app::ServiceParts {
        routes: tonic::service::Routes::new(IdentityServiceServer::new(api)),
        grpc_services: vec![GRPC_SERVICE],
        policy,
        tasks,
        on_stop: Vec::new(),
    })
}

/// Why bootstrapping refused.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A firm administrator exists already: use the API.
    #[error("a firm administrator exists already; manage staff through the API")]
    AdminExists,
    /// The password breaks the policy.
    #[error("password {0}")]
    Password(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Creates the first firm administrator, with a password, straight in the
/// identity database: the one account that needs no other account. Refused
/// once any firm administrator exists. The administrator then enrolls TOTP
/// like everyone else.
pub async fn bootstrap_admin(
    db: &confidant_runtime::storage::Database,
    trust_domain: &str,
    email: &str,
    display_name: &str,
    password: &str,
) -> Result<uuid::Uuid, BootstrapError> {
    use confidant_runtime::portable::{Statement, Value};
    if let Some(rule) = credentials::password_rule_broken(password) {
        return Err(BootstrapError::Password(rule));
    }
    let existing: Vec<(uuid::Uuid,)> = db
        .fetch_all(
            "SELECT staff_id FROM staff_roles WHERE role = 'firm_administrator' AND revoked_at IS NULL",
            vec![],
        )
        .await
        .map_err(store::StoreError::from)?;
    if !existing.is_empty() {
        return Err(BootstrapError::AdminExists);
    }
    let hash = credentials::hash_password(password).map_err(BootstrapError::Password)?;
    let id = uuid::Uuid::now_v7();
    let now = chrono::Utc::now();
    let event = confidant_runtime::audit::EventBuilder::new(
        NAME,
        trust_domain,
        confidant_runtime::audit::Action::IdentityAdminBootstrapped,
    )
    .actor(
        confidant_proto::audit::v1::ActorKind::Service,
        "confidant-cli",
        "",
    )
    .resource("staff", &id.to_string())
    .build();
    db.transact(
        vec![
            Statement::new(
                "INSERT INTO staff (id, email, display_name, created_at) VALUES ($1, $2, $3, $4)",
                vec![
                    Value::Uuid(id),
                    Value::Text(email.to_lowercase()),
                    Value::Text(display_name.to_owned()),
                    Value::Time(now),
                ],
            ),
            Statement::new(
                "INSERT INTO staff_roles (staff_id, role, granted_at) VALUES ($1, 'firm_administrator', $2)",
                vec![Value::Uuid(id), Value::Time(now)],
            ),
            Statement::new(
                "INSERT INTO credentials (staff_id, password_hash, password_set_at) VALUES ($1, $2, $3)",
                vec![Value::Uuid(id), Value::Text(hash), Value::Time(now)],
            ),
        ],
        &[event],
    )
    .await
    .map_err(store::StoreError::from)?;
    Ok(id)
}
