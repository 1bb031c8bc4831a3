//! Running a set of services in one process: bind, connect, migrate, build,
//! serve, and drain on shutdown. `confidant dev`, `confidant serve` and the
//! test sandbox all go through [`start`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use confidant_proto::audit::v1::Outcome;
use confidant_runtime::app::{ServiceContext, ServiceParts};
use confidant_runtime::audit::{Action, service_event};
use confidant_runtime::client::{self, PeerChannel};
use confidant_runtime::config::Config;
use confidant_runtime::coord::{InProcess, Redis, SharedCoordinator};
use confidant_runtime::outbox::{Outbox, Relay};
use confidant_runtime::server::GrpcServer;
use confidant_runtime::storage::{Database, PoolOptions};
use confidant_runtime::tls::LiveTls;
use confidant_runtime::{Migrations, ServiceName};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;

/// How a process treats database migrations at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationPolicy {
    /// Apply them (dev mode, tests, `serve --migrate`).
    Apply,
    /// Refuse to start unless `confidant migrate` already applied them.
    RequireApplied,
}

/// The schema of each service.
pub fn migrations(service: ServiceName) -> Migrations {
    match service {
        ServiceName::Identity => confidant_identity::MIGRATIONS,
        ServiceName::Intake => confidant_intake::MIGRATIONS,
        ServiceName::Vault => confidant_vault::MIGRATIONS,
        ServiceName::Retention => confidant_retention::MIGRATIONS,
        ServiceName::Audit => confidant_audit::MIGRATIONS,
    }
}

async fn build(service: ServiceName, ctx: &ServiceContext) -> anyhow::Result<ServiceParts> {
    match service {
        ServiceName::Audit => confidant_audit::build(ctx).await,
        ServiceName::Identity => confidant_identity::build(ctx).await,
        ServiceName::Vault => confidant_vault::build(ctx).await,
        ServiceName::Retention => confidant_retention::build(ctx).await,
        ServiceName::Intake => confidant_intake::build(ctx).await,
    }
}

/// Opens (and, by policy, migrates) the database of `service`.
pub async fn open_database(
    config: &Config,
    service: ServiceName,
    policy: MigrationPolicy,
) -> anyhow::Result<Database> {
    let settings = config.services.get(&service).cloned().unwrap_or_default();
    let url = settings
        .database_url
        .with_context(|| format!("services.{service}.database_url is not set"))?;
    let mut options = PoolOptions::default();
    if let Some(max) = settings.max_connections {
        options.max_connections = max;
    }
    let db = Database::connect(&url, service.as_str(), options)
        .await
        .with_context(|| format!("{service}: cannot open its database"))?;
    match policy {
        MigrationPolicy::Apply => db
            .migrate(migrations(service))
            .await
            .with_context(|| format!("{service}: migrations failed"))?,
        MigrationPolicy::RequireApplied => require_applied(&db, service).await?,
    }
    Ok(db)
}

/// Refuses a database of `service` whose schema `confidant migrate` has
/// not brought up to date.
pub async fn require_applied(db: &Database, service: ServiceName) -> anyhow::Result<()> {
    let pending = db.unapplied_migrations(migrations(service)).await?;
    if !pending.is_empty() {
        anyhow::bail!(
            "{service}: the database schema is behind ({} migrations pending); run `confidant migrate` first",
            pending.len()
        );
    }
    Ok(())
}

/// A running set of services.
pub struct Running {
    /// Where each service listens.
    pub addrs: BTreeMap<ServiceName, SocketAddr>,
    shutdown: watch::Sender<bool>,
    servers: Vec<(ServiceName, JoinHandle<anyhow::Result<()>>)>,
    reporters: Vec<HealthReporter>,
    background: Vec<JoinHandle<()>>,
    on_stop: Vec<futures::future::BoxFuture<'static, ()>>,
    databases: Vec<Database>,
    exited: tokio::sync::mpsc::UnboundedReceiver<ServiceName>,
    tls_reload: watch::Sender<u64>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

fn peer_url(addr: SocketAddr) -> String {
    // A service bound to every interface is reached over loopback.
    let host = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    format!("https://{}", SocketAddr::new(host, addr.port()))
}

/// The host part of a URL, for TLS server-name checks.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_owned();
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_owned()
}

/// Starts `services`: binds every listener first (so co-located services can
/// reach each other), then opens databases, builds and serves each service.
pub async fn start(
    config: Arc<Config>,
    services: &[ServiceName],
    policy: MigrationPolicy,
) -> anyhow::Result<Running> {
    let mut listeners = BTreeMap::new();
    for &service in services {
        let addr = config.listen(service);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("{service}: cannot listen on {addr}"))?;
        listeners.insert(service, listener);
    }
    let addrs: BTreeMap<_, _> = listeners
        .iter()
        .map(|(s, l)| Ok((*s, l.local_addr()?)))
        .collect::<std::io::Result<_>>()?;
    let mut urls: BTreeMap<ServiceName, String> = config.peers.clone();
    for (service, addr) in &addrs {
        urls.insert(*service, peer_url(*addr));
    }

    let coord: SharedCoordinator = match &config.redis.url {
        Some(url) => Arc::new(
            Redis::connect(url, &config.redis.key_prefix)
                .await
                .context("cannot connect to redis")?,
        ),
        None => Arc::new(InProcess::new()),
    };

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (exited_tx, exited) = tokio::sync::mpsc::unbounded_channel();
    let mut running = Running {
        addrs: addrs.clone(),
        shutdown,
        servers: Vec::new(),
        reporters: Vec::new(),
        background: Vec::new(),
        on_stop: Vec::new(),
        databases: Vec::new(),
        exited,
        tls_reload: watch::channel(0).0,
    };

    for &service in services {
        let tls_files = config
            .tls_files(service)
            .with_context(|| format!("{service}: tls files are not configured"))?;
        let tls = LiveTls::open(tls_files).with_context(|| format!("{service}: tls"))?;
        confidant_runtime::tls::live::register_metrics(service.as_str(), &tls);
        running.background.push(tokio::spawn(tls.clone().follow(
            service.as_str(),
            (config.tls_reload_seconds > 0).then(|| Duration::from_secs(config.tls_reload_seconds)),
            running.tls_reload.subscribe(),
            shutdown_rx.clone(),
        )));
        let db = open_database(&config, service, policy).await?;
        running.databases.push(db.clone());

        let mut peers: BTreeMap<ServiceName, PeerChannel> = BTreeMap::new();
        for (peer, url) in &urls {
            if *peer != service {
                peers.insert(*peer, client::connect_lazy(url, &tls, &host_of(url))?);
            }
        }
        // Staff tokens verify against identity's keys, fetched over mTLS
        // (identity asks itself over loopback).
        let auth =
            match urls.get(&ServiceName::Identity) {
                Some(url) => Some(confidant_runtime::auth::StaffAuth::with_live_window(
                    std::sync::Arc::new(confidant_runtime::auth::IdentityJwks(
                        client::connect_lazy(url, &tls, &host_of(url))?,
                    )),
                    coord.clone(),
                    Duration::from_millis(config.identity.session_check_cache_millis),
                )),
                None => None,
            };
        let outbox = Outbox::new(db.clone());
        let ctx = ServiceContext {
            name: service,
            config: config.clone(),
            db: db.clone(),
            coord: coord.clone(),
            outbox: outbox.clone(),
            peers,
            tls: tls.clone(),
            shutdown: shutdown_rx.clone(),
        };
        let mut parts = build(service, &ctx)
            .await
            .with_context(|| format!("{service}: start-up failed"))?;

        if service != ServiceName::Audit {
            // Record the start in the same database the relay drains, then
            // deliver it (and everything else) to the audit service.
            outbox
                .enqueue(&service_event(
                    service,
                    &config.trust_domain,
                    Action::ServiceStarted,
                    Outcome::Allowed,
                ))
                .await?;
            let audit = ctx
                .peer(ServiceName::Audit)
                .context("no address for the audit service (peers.audit)")?;
            let relay = Relay::new(outbox.clone(), audit);
            confidant_runtime::outbox::register_metrics(service.as_str(), &relay.state());
            parts.tasks.push(Box::pin(relay.run(shutdown_rx.clone())));
            let trust_domain = config.trust_domain.clone();
            parts.on_stop.push(Box::pin(async move {
                let stopped = service_event(
                    service,
                    &trust_domain,
                    Action::ServiceStopped,
                    Outcome::Allowed,
                );
                if let Err(err) = outbox.enqueue(&stopped).await {
                    tracing::error!(service = %service, error = %err, "could not record the stop");
                }
            }));
        }

        for task in parts.tasks {
            running.background.push(tokio::spawn(task));
        }
        running.on_stop.extend(parts.on_stop);

        let (reporter, health_service) = confidant_runtime::server::health();
        running.reporters.push(reporter.clone());
        let listener = listeners.remove(&service).context("listener vanished")?;
        let server = GrpcServer {
            name: service,
            listener,
            tls: tls.clone(),
            routes: parts.routes,
            grpc_services: parts.grpc_services,
            policy: parts.policy,
            reflection: config.reflection,
            auth,
            max_in_flight: config
                .services
                .get(&service)
                .and_then(|s| s.max_in_flight)
                .unwrap_or(confidant_runtime::in_flight::DEFAULT_MAX_IN_FLIGHT),
        };
        let mut stop = shutdown_rx.clone();
        let exited_tx = exited_tx.clone();
        let handle = tokio::spawn(async move {
            let result = server
                .serve((reporter, health_service), async move {
                    let _ = stop.wait_for(|v| *v).await;
                })
                .await
                .map_err(anyhow::Error::from);
            let _ = exited_tx.send(service);
            result
        });
        tracing::info!(service = %service, addr = %addrs[&service], "service listening");
        running.servers.push((service, handle));
    }
    if let Some(addr) = config.probe_listen {
        let (reporter, health_service) = confidant_runtime::server::health();
        for service in services {
            reporter
                .set_service_status(service.as_str(), tonic_health::ServingStatus::Serving)
                .await;
        }
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        running.reporters.push(reporter);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("probe_listen: cannot listen on {addr}"))?;
        let mut stop = shutdown_rx.clone();
        running.background.push(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = stop.wait_for(|v| *v).await;
                    },
                )
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "probe listener failed");
            }
        }));
        tracing::info!(%addr, "probe listener (grpc.health.v1 only, plaintext)");
    }
    Ok(running)
}

impl Running {
    /// Bumping it (`send_modify`) makes every service look at its
    /// certificate, key and CA bundle files now (SIGHUP), as it does every
    /// `tls_reload_seconds`.
    pub fn tls_reload(&self) -> watch::Sender<u64> {
        self.tls_reload.clone()
    }

    /// Marks every service NOT_SERVING, stops accepting, lets in-flight calls
    /// finish for up to `grace`, records the stops, closes the databases.
    pub async fn shutdown(self, grace: Duration) {
        for reporter in &self.reporters {
            reporter.set_not_serving::<tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>>().await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
        let _ = self.shutdown.send(true);
        let drain = async {
            for (service, handle) in self.servers {
                match handle.await {
                    Ok(Ok(())) => tracing::info!(service = %service, "service stopped"),
                    Ok(Err(err)) => {
                        tracing::error!(service = %service, error = %err, "service failed")
                    }
                    Err(err) => {
                        tracing::error!(service = %service, error = %err, "service task panicked")
                    }
                }
            }
            for task in self.background {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "in-flight calls did not finish in time"
            );
        }
        for stop in self.on_stop {
            stop.await;
        }
        for db in self.databases {
            db.close().await;
        }
    }

    /// Resolves when a server stops without being asked to (a failure).
    pub async fn failed(&mut self) -> ServiceName {
        match self.exited.recv().await {
            Some(service) => service,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_hosts_come_from_urls() {
        assert_eq!(
            host_of("https://confidant-audit.firm.svc:7105"),
            "confidant-audit.firm.svc"
        );
        assert_eq!(host_of("https://127.0.0.1:7105/"), "127.0.0.1");
        assert_eq!(host_of("https://[::1]:7105"), "::1");
        assert_eq!(
            peer_url("0.0.0.0:7105".parse().unwrap()),
            "https://127.0.0.1:7105"
        );
    }
}
