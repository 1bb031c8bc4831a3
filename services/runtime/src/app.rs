//! What a service gets from the process that runs it, and what it gives
//! back: the seam between the binary and the service crates.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use tonic::service::Routes;

use crate::client::PeerChannel;
use crate::config::Config;
use crate::coord::SharedCoordinator;
use crate::outbox::Outbox;
use crate::peer::PeerPolicy;
use crate::service_name::ServiceName;
use crate::storage::Database;

/// Everything a service needs to build its handlers.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// Which service this is.
    pub name: ServiceName,
    /// The validated configuration of the process.
    pub config: Arc<Config>,
    /// The service's own database (migrated).
    pub db: Database,
    /// Cache, counters and leases.
    pub coord: SharedCoordinator,
    /// The service's audit outbox.
    pub outbox: Outbox,
    /// Channels to the other services (mutual TLS, traced), connected lazily.
    pub peers: BTreeMap<ServiceName, PeerChannel>,
    /// The service's certificate, key and CA bundle, following their files.
    pub tls: Arc<crate::tls::LiveTls>,
    /// Becomes true when the process begins to shut down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl ServiceContext {
    /// The SPIFFE id of `service` in this deployment's trust domain.
    pub fn spiffe_id(&self, service: ServiceName) -> String {
        service.spiffe_id(&self.config.trust_domain)
    }

    /// The channel to `service`.
    pub fn peer(&self, service: ServiceName) -> Option<PeerChannel> {
        self.peers.get(&service).cloned()
    }
}

/// What a service hands to the process: its gRPC services, who may call
/// them, and background tasks that run until shutdown.
#[derive(Default)]
pub struct ServiceParts {
    /// The gRPC services.
    pub routes: Routes,
    /// Their fully qualified names, for the health service.
    pub grpc_services: Vec<&'static str>,
    /// Peer allow-lists.
    pub policy: PeerPolicy,
    /// Tasks that run while the service runs and end at shutdown.
    pub tasks: Vec<BoxFuture<'static, ()>>,
    /// Work done once after the server has drained (e.g. recording the stop).
    pub on_stop: Vec<BoxFuture<'static, ()>>,
}

impl std::fmt::Debug for ServiceParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceParts")
            .field("grpc_services", &self.grpc_services)
            .field("policy", &self.policy)
            .field("tasks", &self.tasks.len())
            .field("on_stop", &self.on_stop.len())
            .finish_non_exhaustive()
    }
}

/// A service's background work: runs `step` every `every`, the first time
/// at once, until `shutdown` says stop (a step under way finishes first).
/// A step that overruns delays the next instead of bunching them up.
pub async fn every<F, Fut>(
    every: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => step().await,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}
