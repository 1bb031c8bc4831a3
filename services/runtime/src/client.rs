//! Calling another service: a mutual-TLS channel with a client span per RPC
//! and trace context in the metadata, which presents the service's
//! certificate of the moment at each connection. Also a TLS channel to a
//! server outside the deployment, such as an OpenTelemetry collector.

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
    /// Built from files at each handshake.
    Files(ExternalTls),
}

/// TLS to a server outside the deployment, such as an OpenTelemetry
/// collector: the CA bundle its certificate must chain to and, for one that
/// asks for it, a client certificate and key. The files are read at each
/// connection, so renewed ones are used from the next one on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalTls {
    /// CA bundle, PEM.
    pub ca_file: std::path::PathBuf,
    /// Client certificate (chain) and key files, PEM.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl ExternalTls {
    /// The client configuration from the files as they are now.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, crate::tls::Error> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| crate::tls::Error::Io {
                path: path.to_owned(),
                source,
            })
        };
        let ca = read(&self.ca_file)?;
        let identity = match &self.identity {
            Some((cert, key)) => Some((read(cert)?, zeroize::Zeroizing::new(read(key)?))),
            None => None,
        };
        crate::tls::client_config(
            &ca,
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
    }
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
        let tls = self.tls.clone();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let config = match tls {
                ClientTls::Fixed(config) => config,
                ClientTls::Live(live) => live.client_config(),
                ClientTls::Files(files) => files.client_config().map_err(std::io::Error::other)?,
            };
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

/// A channel to a server outside the deployment over TLS (see
/// [`ExternalTls`]), verified as the URI's host, with no client span (an
/// exporter of spans must not make spans of its own). Connects on first
/// use; each call may take at most `timeout`.
pub fn external_channel_lazy(
    uri: &str,
    tls: ExternalTls,
    timeout: Duration,
) -> Result<Channel, Error> {
    let host = uri
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| {
            u.host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        })
        .unwrap_or_default();
    let (endpoint, connector) = channel(uri, ClientTls::Files(tls), &host)?;
    Ok(endpoint
        .timeout(timeout)
        .connect_with_connector_lazy(connector))
}
