//! Serving one service's gRPC API over mutual TLS 1.3: TLS accept loop,
//! peer-identity checks, a span per RPC, a bound on calls in progress,
//! health and reflection, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::in_flight::InFlightLayer;
use crate::peer::{PeerIdentity, PeerLayer, PeerPolicy};
use crate::service_name::ServiceName;
use crate::telemetry::ServerTraceLayer;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// tonic's server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Everything needed to serve one service.
#[derive(Debug)]
pub struct GrpcServer {
    /// The service this server runs.
    pub name: ServiceName,
    /// A bound listener (bind port 0 in tests and read the address).
    pub listener: TcpListener,
    /// The service's certificate; each accepted connection takes its
    /// configuration of the moment (see [`crate::tls::live`]).
    pub tls: Arc<crate::tls::LiveTls>,
    /// The service's own gRPC services.
    pub routes: Routes,
    /// Fully qualified names of the gRPC services in `routes`, reported by
    /// the health service.
    pub grpc_services: Vec<&'static str>,
    /// Which peers may call which RPCs.
    pub policy: PeerPolicy,
    /// Whether gRPC server reflection is served.
    pub reflection: bool,
    /// Verification of staff bearer tokens.
    pub auth: Option<crate::auth::StaffAuth>,
    /// At most this many calls served at once; past it a call is refused
    /// at once (see [`crate::in_flight`]).
    pub max_in_flight: u32,
}

/// What the server knows of a connection's peer, read once when the
/// handshake completes; tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnectedPeer {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The SPIFFE id its certificate names, if any.
    pub identity: Option<PeerIdentity>,
}

/// An accepted mutual-TLS connection and the peer it proved to be.
#[derive(Debug)]
pub struct PeerStream {
    tls: TlsStream<TcpStream>,
    peer: ConnectedPeer,
}

impl PeerStream {
    fn new(tls: TlsStream<TcpStream>) -> Self {
        let (tcp, connection) = tls.get_ref();
        let peer = ConnectedPeer {
            remote_addr: tcp.peer_addr().ok(),
            identity: connection
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| crate::tls::spiffe_id(leaf.as_ref()))
                .map(PeerIdentity::new),
        };
        Self { tls, peer }
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = ConnectedPeer;

    fn connect_info(&self) -> ConnectedPeer {
        self.peer.clone()
    }
}

impl tokio::io::AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop,
/// so one slow or hostile client cannot stall the others. Failed handshakes
/// (no certificate, a certificate from another CA, not TLS 1.3) are logged
/// and dropped. `config` gives the server configuration for each new
/// connection, so a renewed certificate serves from the next handshake.
pub fn tls_incoming(
    listener: TcpListener,
    config: impl Fn() -> Arc<rustls::ServerConfig> + Send + 'static,
) -> impl futures::Stream<Item = Result<PeerStream, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let _ = stream.set_nodelay(true);
                        let acceptor = TlsAcceptor::from(config());
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let _ = tx.send(PeerStream::new(tls)).await;
                                }
                                Ok(Err(err)) => {
                                    tracing::warn!(peer.addr = %addr, error = %err, "tls handshake refused");
                                }
                                Err(_) => {
                                    tracing::warn!(peer.addr = %addr, "tls handshake timed out");
                                }
                            }
                        });
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = tx.closed() => break,
            }
        }
    });
    ReceiverStream::new(rx).map(Ok)
}

impl GrpcServer {
    /// Serves until `shutdown` resolves, then stops accepting and waits for
    /// in-flight calls. Returns the health reporter so the caller can mark
    /// the service NOT_SERVING while draining.
    pub async fn serve(
        self,
        health: (
            HealthReporter,
            tonic_health::pb::health_server::HealthServer<
                impl tonic_health::pb::health_server::Health,
            >,
        ),
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let (reporter, health_service) = health;
        for name in std::iter::once("")
            .chain(std::iter::once(self.name.as_str()))
            .chain(self.grpc_services.iter().copied())
        {
            reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }

        let mut routes = self.routes;
        routes = routes.add_service(health_service);
        if self.reflection {
            // What this port serves, and nothing it does not (every
            // service's descriptors are in the one set); the error detail
            // messages (google.rpc.BadRequest, ErrorInfo) so that a client
            // can decode the details of a refusal.
            let builder = |reflection: &str| {
                self.grpc_services
                    .iter()
                    .copied()
                    .chain([tonic_health::pb::health_server::SERVICE_NAME, reflection])
                    .fold(
                        tonic_reflection::server::Builder::configure(),
                        tonic_reflection::server::Builder::with_service_name,
                    )
                    .register_encoded_file_descriptor_set(confidant_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            };
            // v1alpha too: grpcurl and many client tools still ask for it.
            routes = routes
                .add_service(
                    builder(tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME)
                        .build_v1()?,
                )
                .add_service(
                    builder(tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME)
                        .build_v1alpha()?,
                );
        }

        let tls = self.tls;
        let incoming = tls_incoming(self.listener, move || tls.server_config());
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(
                tower::ServiceBuilder::new()
                    .layer(ServerTraceLayer)
                    .layer(InFlightLayer::new(self.name, self.max_in_flight))
                    .layer(PeerLayer::new(self.policy))
                    .layer(crate::auth::StaffAuthLayer(self.auth)),
            )
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }
}

/// A health reporter and service for one server.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}
