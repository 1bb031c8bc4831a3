//! The vault service: client data stored only encrypted, under the key
//! hierarchy KMS key → scope key (client, matter, category) → record key →
//! fields; purpose-bound reads decided by identity and recorded in the audit
//! log before any plaintext leaves; masking by role; crypto-shredding of a
//! record or a whole scope in constant time, refused under a legal hold and
//! optionally staged; rewrapping of scope keys under a new KMS key.
//!
//! - [`domain`]: categories, field types, purposes, validated records;
//! - [`crypto`]: AES-256-GCM with bindings, HKDF-separated scope key uses;
//! - [`keys`]: scope keys through the KMS and a bounded cache;
//! - [`store`]: the tables, on PostgreSQL or SQLite;
//! - [`masking`]: masks by role, from data;
//! - [`records`]: the operations, with their audit events;
//! - [`grpc`]: the `confidant.vault.v1.VaultService` handlers.
#![forbid(unsafe_code)]

pub mod crypto;
pub mod documents;
pub mod domain;
pub mod error;
pub mod fetch;
pub mod grpc;
pub mod keys;
pub mod masking;
pub mod metrics;
pub mod records;
pub mod store;

/// The KMS providers live in the shared runtime (identity seals its secrets
/// with them too); the vault builds its key hierarchy on them.
pub use confidant_runtime::kms;

use std::sync::Arc;
use std::time::Duration;

use confidant_runtime::{Migrations, ServiceName};
use sqlx::migrate::Migrator;

/// This service.
pub const NAME: ServiceName = ServiceName::Vault;

static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");

/// The vault schema, per backend.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

/// The fully qualified name of the gRPC service.
pub const GRPC_SERVICE: &str = "confidant.vault.v1.VaultService";

/// The vault's operations as configured for `ctx`.
pub fn vault(
    ctx: &confidant_runtime::app::ServiceContext,
    kms: Arc<dyn kms::Kms>,
) -> records::Vault {
    let v = &ctx.config.vault;
    records::Vault::new(
        store::VaultStore::new(ctx.db.clone()),
        keys::Keyring::new(
            kms,
            keys::CacheLimits {
                capacity: v.key_cache_capacity,
                max_age: Duration::from_secs(v.key_cache_max_age_seconds),
                max_uses: v.key_cache_max_uses,
            },
        ),
        records::Settings {
            limits: domain::Limits {
                max_field_bytes: v.max_field_bytes,
                max_fields: v.max_fields,
            },
            max_document_bytes: v.max_document_bytes,
            destruction_window: Duration::from_secs(v.destruction_window_seconds),
            trust_domain: ctx.config.trust_domain.clone(),
        },
    )
}

/// Builds the vault service.
pub async fn build(
    ctx: &confidant_runtime::app::ServiceContext,
) -> anyhow::Result<confidant_runtime::app::ServiceParts> {
    use confidant_proto::vault::v1::vault_service_server::VaultServiceServer;
    let config = &ctx.config;
    let names = |list: &[String]| -> Vec<String> {
        list.iter()
            .map(|n| confidant_runtime::service_name::spiffe_id(&config.trust_domain, n))
            .collect()
    };
    let writers = names(&config.vault.writers);
    let admins = names(&config.vault.admins);
    let retention = vec![ctx.spiffe_id(ServiceName::Retention)];
    let sealers: Vec<String> = ServiceName::ALL
        .iter()
        .filter(|s| **s != NAME)
        .map(|s| ctx.spiffe_id(*s))
        .collect();
    let policy = confidant_runtime::peer::PeerPolicy::new()
        .allow(&format!("/{GRPC_SERVICE}/ShredRecord"), retention.clone())
        .allow(
            &format!("/{GRPC_SERVICE}/GetRecordVersions"),
            retention.clone(),
        )
        .allow(&format!("/{GRPC_SERVICE}/ShredScope"), retention.clone())
        .allow(&format!("/{GRPC_SERVICE}/PlaceHold"), retention.clone())
        .allow(&format!("/{GRPC_SERVICE}/ReleaseHold"), retention.clone())
        .allow(
            &format!("/{GRPC_SERVICE}/ReleaseOriginals"),
            retention.clone(),
        )
        .allow(
            &format!("/{GRPC_SERVICE}/ListScopes"),
            retention.iter().chain(admins.iter()).cloned(),
        )
        .allow(&format!("/{GRPC_SERVICE}/SealText"), sealers)
        .allow(&format!("/{GRPC_SERVICE}/RewrapScopeKeys"), admins.clone())
        .allow(&format!("/{GRPC_SERVICE}/GetKeyStats"), admins.clone())
        .allow(&format!("/{GRPC_SERVICE}/ListMaskingRules"), admins.clone())
        .allow(&format!("/{GRPC_SERVICE}/SetMaskingRules"), admins);
    let kms = kms::from_config(config).await?;
    let vault = Arc::new(vault(ctx, kms).with_coordinator(ctx.coord.clone()));
    vault.follow_rule_changes();
    metrics::register(&vault.keys().shared_stats());
    let api = grpc::VaultApi::new(
        vault.clone(),
        ctx.peer(ServiceName::Identity),
        writers,
        &config.trust_domain,
        Duration::from_millis(config.vault.decision_cache_millis),
    );
    let every = Duration::from_secs(config.vault.destruction_check_seconds.max(1));
    let destroyer = destruction_task(vault, every, ctx.shutdown.clone());
    Ok(confidant_runtime::app::ServiceParts {
        routes: tonic::service::Routes::new(VaultServiceServer::new(api)),
        grpc_services: vec![GRPC_SERVICE],
        policy,
        tasks: vec![Box::pin(destroyer)],
        on_stop: Vec::new(),
    })
}

/// Carries out pending destructions when their window ends, and removes
/// abandoned uploads, until shutdown.
pub async fn destruction_task(
    vault: Arc<records::Vault>,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    confidant_runtime::app::every(every, shutdown, || async {
        match vault.destroy_due(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(scopes = n, "pending destructions carried out"),
            Err(e) => tracing::warn!(error = %e, "pending destructions not carried out; retrying"),
        }
        // Uploads whose process stopped mid-stream: a day is longer than any
        // upload within the size limit takes.
        match vault
            .sweep_abandoned_uploads(chrono::Utc::now() - chrono::Duration::hours(24))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "abandoned uploads removed"),
            Err(e) => tracing::warn!(error = %e, "abandoned uploads not removed; retrying"),
        }
    })
    .await;
}
