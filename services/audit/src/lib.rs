//! The audit service: the tamper-evident log of every access to client data.
//!
//! - [`domain`]: events as the log accepts them, checked at the boundary;
//! - [`store`]: the append-only store of events and checkpoints;
//! - [`merkle`]: the RFC 9162 tree, proofs and their verification;
//! - [`checkpoint`]: signed checkpoints (C2SP signed notes, Ed25519);
//! - [`rotation`]: changes of the checkpoint signing key, handed over in the log;
//! - [`log`]: the log that ties them together and guards its integrity;
//! - [`verify`]: offline verification of an exported log;
//! - [`grpc`]: the `confidant.audit.v1.AuditService` handlers.
//!
//! Other services deliver their events through their outboxes
//! ([`confidant_runtime::outbox`]); only their identities may append.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod detection;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod incidents;
pub mod log;
pub mod merkle;
pub mod reports;
pub mod rotation;
pub mod store;
pub mod verify;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use confidant_proto::audit::v1::Outcome;
use confidant_proto::audit::v1::audit_service_server::AuditServiceServer;
use confidant_runtime::app::{ServiceContext, ServiceParts};
use confidant_runtime::audit::{Action, service_event};
use confidant_runtime::coord::{Lease, SharedCoordinator};
use confidant_runtime::peer::PeerPolicy;
use confidant_runtime::{Migrations, ServiceName};
use sqlx::migrate::Migrator;

use crate::checkpoint::Signer;
use crate::log::AuditLog;
use crate::store::EventStore;

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

/// Incident response, served by the audit service too.
pub const INCIDENT_GRPC_SERVICE: &str = "confidant.audit.v1.IncidentService";

/// The services allowed to append events.
pub const APPENDERS: [ServiceName; 4] = [
    ServiceName::Identity,
    ServiceName::Intake,
    ServiceName::Vault,
    ServiceName::Retention,
];

/// Writes a new checkpoint signing key (Ed25519, PKCS#8 DER) to `path`,
/// readable by its owner only. Refuses to overwrite an existing key: losing
/// it would orphan every checkpoint signed so far.
pub fn write_signing_key(path: &Path) -> anyhow::Result<()> {
    confidant_runtime::keys::write_new_ed25519_key(path)
        .with_context(|| "an existing key is never overwritten".to_owned())
}

/// Loads the checkpoint signer named after the log's origin.
pub fn load_signer(path: &Path, origin: &str) -> anyhow::Result<Signer> {
    let pkcs8 = zeroize::Zeroizing::new(
        std::fs::read(path).with_context(|| format!("{}", path.display()))?,
    );
    Signer::from_pkcs8(origin, &pkcs8)
        .with_context(|| format!("{}: audit signing key", path.display()))
}

/// Builds the audit service, records its own start in the log and starts
/// the checkpointer.
pub async fn build(ctx: &ServiceContext) -> anyhow::Result<ServiceParts> {
    let key_path = ctx
        .config
        .audit
        .signing_key_file
        .clone()
        .context("audit.signing_key_file is not set")?;
    let origin = ctx.config.audit_origin();
    let signer = load_signer(&key_path, &origin)?;
    let previous = ctx
        .config
        .audit
        .previous_signing_key_files
        .iter()
        .map(|path| load_signer(path, &origin))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let log = Arc::new(
        AuditLog::open(
            EventStore::new(ctx.db.clone()),
            signer,
            &origin,
            &ctx.config.trust_domain,
        )
        .await?
        .with_previous_keys(previous),
    );

    let started = service_event(
        NAME,
        &ctx.config.trust_domain,
        Action::ServiceStarted,
        Outcome::Allowed,
    );
    let started = domain::validate_batch(&[started], NAME.as_str(), chrono::Utc::now())
        .map_err(|v| anyhow::anyhow!("own start event invalid: {:?}", v.as_slice()))?;
    log.append(&started).await?;

    let readers: Vec<String> = ctx
        .config
        .audit
        .readers
        .iter()
        .map(|name| confidant_runtime::service_name::spiffe_id(&ctx.config.trust_domain, name))
        .collect();
    // Searches are checked in the handler: staff through identity's decision,
    // machines through the readers list.
    // Identity reads the log for wall certifications.
    let mut readers_for_queries = readers.clone();
    readers_for_queries.push(ctx.spiffe_id(ServiceName::Identity));
    let policy = PeerPolicy::new()
        .allow(
            &format!("/{GRPC_SERVICE}/AppendEvents"),
            APPENDERS.iter().map(|s| ctx.spiffe_id(*s)),
        )
        .allow(&format!("/{GRPC_SERVICE}/ExportLog"), readers.clone())
        .allow(
            &format!("/{GRPC_SERVICE}/GetEvidenceBundle"),
            // Retention puts the evidence of each shred in its certificate.
            readers
                .iter()
                .cloned()
                .chain([ctx.spiffe_id(ServiceName::Retention)]),
        );

    register_metrics(&log);
    let checkpointer = run_checkpointer(
        log.clone(),
        ctx.coord.clone(),
        Duration::from_secs(ctx.config.audit.checkpoint_interval_seconds),
        ctx.config.audit.checkpoint_max_events,
        ctx.shutdown.clone(),
    );

    let trust_domain = ctx.config.trust_domain.clone();
    let stop_log = log.clone();
    let on_stop = Box::pin(async move {
        let stopped = service_event(
            NAME,
            &trust_domain,
            Action::ServiceStopped,
            Outcome::Allowed,
        );
        if let Ok(stopped) = domain::validate_batch(&[stopped], NAME.as_str(), chrono::Utc::now())
            && let Err(err) = stop_log.append(&stopped).await
        {
            tracing::error!(error = %err, "could not record the audit service's stop");
        }
    });
    let incidents = incidents::IncidentApi::new(
        ctx.db.clone(),
        log.clone(),
        Arc::new(confidant_runtime::decide::Decider::new(
            ctx.peer(ServiceName::Identity),
            Duration::from_millis(ctx.config.vault.decision_cache_millis),
        )),
        &ctx.config.trust_domain,
        ctx.peer(ServiceName::Identity),
        ctx.peer(ServiceName::Retention),
    );
    let monthly = reports::schedule(incidents.clone(), ctx.coord.clone(), ctx.shutdown.clone());
    let drain = incidents::drain_own_outbox(ctx.outbox.clone(), log.clone(), ctx.shutdown.clone());
    let audit_config = &ctx.config.audit;
    let notifier: Arc<dyn confidant_runtime::notify::Notifier> =
        match confidant_runtime::notify::configured(
            "audit",
            audit_config.alerts_webhook_url.as_deref(),
            None,
            audit_config.alerts_file.as_deref(),
        )? {
            Some(notifier) => notifier,
            None => {
                tracing::warn!(
                    "audit.alerts_webhook_url is not set: alerts are only listed through the API"
                );
                Arc::new(detection::ListedOnly)
            }
        };
    let detector = detection::run(
        detection::Detector::new(
            ctx.db.clone(),
            log.clone(),
            notifier,
            &ctx.config.trust_domain,
        ),
        ctx.coord.clone(),
        Duration::from_millis(audit_config.detection_interval_millis.max(100)),
        ctx.shutdown.clone(),
    );
    Ok(ServiceParts {
        routes: tonic::service::Routes::new(AuditServiceServer::new(grpc::AuditApi::new(
            log,
            ctx.peer(ServiceName::Identity),
            readers_for_queries,
        )))
        .add_service(
            confidant_proto::audit::v1::incident_service_server::IncidentServiceServer::new(
                incidents,
            ),
        ),
        grpc_services: vec![GRPC_SERVICE, INCIDENT_GRPC_SERVICE],
        policy,
        tasks: vec![
            Box::pin(checkpointer),
            Box::pin(drain),
            Box::pin(detector),
            Box::pin(monthly),
        ],
        on_stop: vec![on_stop],
    })
}

const LEASE: &str = "audit-checkpointer";
const LEASE_TTL: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(250);
/// How often a replica that does not sign reads when the newest checkpoint
/// was signed.
const REFRESH: Duration = Duration::from_secs(5);

/// Seconds since the newest signed checkpoint: alert when it passes a few
/// checkpoint intervals (the log stopped signing: it found an alteration,
/// the signing replica's key was replaced, or its storage fails).
pub const CHECKPOINT_AGE: &str = "confidant.audit.checkpoint.age";

/// Reports [`CHECKPOINT_AGE`] of `log` in the process's metrics for as
/// long as it lives.
fn register_metrics(log: &Arc<AuditLog>) {
    let log = Arc::downgrade(log);
    opentelemetry::global::meter("confidant")
        .f64_observable_gauge(CHECKPOINT_AGE)
        .with_unit("s")
        .with_description("Seconds since the audit log's newest signed checkpoint")
        .with_callback(move |o| {
            if let Some(log) = log.upgrade() {
                let age = log.checkpoint_age(chrono::Utc::now());
                o.observe(age.as_seconds_f64(), &[]);
            }
        })
        .build();
}

/// Signs a checkpoint every `interval`, and sooner once `max_events` arrived
/// since the last one. With several replicas, the holder of a lease does it.
async fn run_checkpointer(
    log: Arc<AuditLog>,
    coord: SharedCoordinator,
    interval: Duration,
    max_events: u64,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let holder = uuid::Uuid::new_v4().to_string();
    let mut lease: Option<(Lease, Instant)> = None;
    let mut last_issue: Option<Instant> = None;
    let mut last_refresh: Option<Instant> = None;
    let mut last_size = match log.store().latest_checkpoint().await {
        Ok(Some(c)) => u64::try_from(c.tree_size).unwrap_or(0),
        _ => 0,
    };
    loop {
        if *shutdown.borrow() {
            break;
        }
        lease = match lease.take() {
            Some((l, renewed)) if renewed.elapsed() < LEASE_TTL / 3 => Some((l, renewed)),
            Some((l, _)) => match coord.renew_lease(&l, LEASE_TTL).await {
                Ok(true) => Some((l, Instant::now())),
                _ => None,
            },
            None => match coord.acquire_lease(LEASE, &holder, LEASE_TTL).await {
                Ok(Some(l)) => Some((l, Instant::now())),
                _ => None,
            },
        };
        if lease.is_none() && last_refresh.is_none_or(|t| t.elapsed() >= REFRESH) {
            // Another replica signs: learn when it last did.
            last_refresh = Some(Instant::now());
            if let Err(err) = log.refresh_checkpoint_age().await {
                tracing::warn!(error = %err, "newest audit checkpoint not read");
            }
        }
        if lease.is_some() {
            let size = log.sync().await.unwrap_or(last_size);
            let due = last_issue.is_none_or(|t| t.elapsed() >= interval)
                || size >= last_size.saturating_add(max_events);
            if due {
                last_issue = Some(Instant::now());
                match log.issue_checkpoint().await {
                    Ok(c) => last_size = u64::try_from(c.tree_size).unwrap_or(last_size),
                    Err(err) => tracing::error!(error = %err, "audit checkpoint not signed"),
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
    if let Some((l, _)) = lease {
        let _ = coord.release_lease(&l).await;
    }
}
