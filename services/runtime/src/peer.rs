//! Who is calling: the SPIFFE identity of the peer certificate, and per-RPC
//! allow-lists of identities.
//!
//! The TLS handshake already proved that the peer holds a certificate from
//! our CA; this layer reads the identity it names and refuses RPCs the
//! identity is not allowed to call, before any handler runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The SPIFFE id of the calling peer, e.g. `spiffe://confidant.local/vault`,
/// inserted into every request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(String);

impl PeerIdentity {
    /// Wraps an id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last path segment: the service or client name.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }

    /// The identity of the peer of a tonic request, if it presented a
    /// certificate with a SPIFFE id.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<PeerIdentity> {
        request.extensions().get::<PeerIdentity>().cloned()
    }
}

/// Which peer identities may call which RPCs. Keys are full method paths
/// (`/confidant.audit.v1.AuditService/AppendEvents`) or whole services
/// (`/confidant.audit.v1.AuditService/`); the most specific rule applies. An
/// RPC that no rule names is open to every authenticated peer.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    rules: BTreeMap<String, BTreeSet<String>>,
    open: BTreeSet<String>,
}

impl PeerPolicy {
    /// No restrictions beyond holding a certificate from the CA.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restricts `path` (a method or a service prefix ending in `/`) to the
    /// given SPIFFE ids.
    pub fn allow<I, S>(mut self, path: &str, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rules
            .entry(path.to_owned())
            .or_default()
            .extend(ids.into_iter().map(Into::into));
        self
    }

    /// Opens `path` to every peer with a certificate from the CA, overriding
    /// a service-wide rule.
    pub fn open(mut self, path: &str) -> Self {
        self.open.insert(path.to_owned());
        self
    }

    /// Whether `peer` may call `path`.
    pub fn permits(&self, path: &str, peer: Option<&PeerIdentity>) -> bool {
        if self.open.contains(path) {
            return true;
        }
        let rule = self.rules.get(path).or_else(|| {
            let service_prefix = path.rfind('/').map(|i| &path[..=i])?;
            self.rules.get(service_prefix)
        });
        match rule {
            None => true,
            Some(allowed) => peer.is_some_and(|p| allowed.contains(p.as_str())),
        }
    }
}

/// Extracts the peer identity and enforces a [`PeerPolicy`].
#[derive(Debug, Clone)]
pub struct PeerLayer {
    policy: Arc<PeerPolicy>,
}

impl PeerLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: PeerPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower::Layer<S> for PeerLayer {
    type Service = PeerCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerCheck {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`PeerLayer`].
#[derive(Debug, Clone)]
pub struct PeerCheck<S> {
    inner: S,
    policy: Arc<PeerPolicy>,
}

pub(crate) fn identity_from_extensions(ext: &http::Extensions) -> Option<PeerIdentity> {
    ext.get::<crate::server::ConnectedPeer>()?.identity.clone()
}

impl<S, B> tower::Service<http::Request<B>> for PeerCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let peer = req
            .extensions()
            .get::<PeerIdentity>()
            .cloned()
            .or_else(|| identity_from_extensions(req.extensions()));
        if !self.policy.permits(req.uri().path(), peer.as_ref()) {
            tracing::warn!(
                rpc = %req.uri().path(),
                peer = peer.as_ref().map_or("none", PeerIdentity::as_str),
                "peer not allowed to call this rpc"
            );
            let status = crate::error::with_reason(
                tonic::Code::PermissionDenied,
                "peer_not_allowed",
                "this peer identity may not call this method",
            );
            return futures::future::Either::Right(std::future::ready(Ok(status.into_http())));
        }
        if let Some(peer) = peer {
            req.extensions_mut().insert(peer);
        }
        futures::future::Either::Left(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_rule_decides_and_unnamed_rpcs_are_open() {
        let policy = PeerPolicy::new()
            .allow(
                "/confidant.audit.v1.AuditService/",
                ["spiffe://t/auditor-tool"],
            )
            .allow(
                "/confidant.audit.v1.AuditService/AppendEvents",
                ["spiffe://t/vault", "spiffe://t/identity"],
            );
        let vault = PeerIdentity::new("spiffe://t/vault");
        let tool = PeerIdentity::new("spiffe://t/auditor-tool");
        assert!(policy.permits(
            "/confidant.audit.v1.AuditService/AppendEvents",
            Some(&vault)
        ));
        assert!(!policy.permits("/confidant.audit.v1.AuditService/AppendEvents", Some(&tool)));
        assert!(policy.permits("/confidant.audit.v1.AuditService/ListEvents", Some(&tool)));
        assert!(!policy.permits("/confidant.audit.v1.AuditService/ListEvents", Some(&vault)));
        assert!(!policy.permits("/confidant.audit.v1.AuditService/ListEvents", None));
        assert!(policy.permits("/grpc.health.v1.Health/Check", Some(&vault)));
        assert_eq!(vault.name(), "vault");
    }
}
