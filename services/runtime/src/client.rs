//! Calling another service: a mutual-TLS channel with a client span per RPC
//! and trace context in the metadata.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::telemetry::{ClientTrace, ClientTraceLayer};
use crate::tls::{LiveTls, TlsMaterial};

/// A channel to a peer service, traced. Generated clients take it as their
/// transport: `AuditServiceClient::new(channel)`.
pub type PeerChannel = ClientTrace<Channel>;

/// Errors of building a channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL or TLS settings are invalid.
    #[error("channel to {uri}: {source}")]
    Transport {
        /// The peer's URL.
        uri: String,
        /// What went wrong.
        source: tonic::transport::Error,
    },
    /// The TLS material is unusable.
    #[error("channel to {uri}: {source}")]
    Tls {
        /// The peer's URL.
        uri: String,
        /// What went wrong.
        source: crate::tls::Error,
    },
    /// The server name is not a DNS name or an IP address.
    #[error("channel to {uri}: {name:?} is not a server name")]
    ServerName {
        /// The peer's URL.
        uri: String,
        /// The name.
        name: String,
    },
}

/// Where a connection takes its TLS client configuration from.
#[derive(Clone)]
enum ClientTls {
    /// Built once.
    Fixed(Arc<rustls::ClientConfig>),
    /// The service's current one at each handshake, so that a reconnection
    /// presents a renewed certificate and trusts a renewed bundle.
    Live(Arc<LiveTls>),
}

/// Opens TCP and then TLS 1.3 to the URI's host and port, verifying the
/// server as `server_name` (tonic's own TLS reads its configuration once).
#[derive(Clone)]
struct TlsConnector {
    tls: ClientTls,
    server_name: ServerName<'static>,
}

type Connecting = Pin<
    Box<
        dyn Future<
                Output = Result<
                    TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                    std::io::Error,
                >,
            > + Send,
    >,
>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = match &self.tls {
            ClientTls::Fixed(config) => config.clone(),
            ClientTls::Live(live) => live.client_config(),
        };
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
                .ok_or_else(|| std::io::Error::other("the peer's URL has no host"))?;
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

fn channel(
    uri: &str,
    tls: ClientTls,
    server_name: &str,
) -> Result<(Endpoint, TlsConnector), Error> {
    let server_name =
        ServerName::try_from(server_name.to_owned()).map_err(|_| Error::ServerName {
            uri: uri.to_owned(),
            name: server_name.to_owned(),
        })?;
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|source| Error::Transport {
            uri: uri.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    Ok((endpoint, TlsConnector { tls, server_name }))
}

/// A channel that connects on first use and reconnects after failures, so a
/// service can start before its peers.
/// Each connection it opens takes `tls`'s configuration of the moment.
pub fn connect_lazy(
    uri: &str,
    tls: &Arc<LiveTls>,
    server_name: &str,
) -> Result<PeerChannel, Error> {
    let (endpoint, connector) = channel(uri, ClientTls::Live(tls.clone()), server_name)?;
    let channel = endpoint.connect_with_connector_lazy(connector);
    Ok(tower::Layer::layer(&ClientTraceLayer, channel))
}

/// A channel connected now (fails if the peer is unreachable).
pub async fn connect(
    uri: &str,
    tls: &TlsMaterial,
    server_name: &str,
) -> Result<PeerChannel, Error> {
    let config = tls.client_config().map_err(|source| Error::Tls {
        uri: uri.to_owned(),
        source,
    })?;
    let (endpoint, connector) = channel(uri, ClientTls::Fixed(config), server_name)?;
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| Error::Transport {
            uri: uri.to_owned(),
            source,
        })?;
    Ok(tower::Layer::layer(&ClientTraceLayer, channel))
}
