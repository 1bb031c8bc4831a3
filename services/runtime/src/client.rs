//! Calling another service: a mutual-TLS channel with a client span per RPC
//! and trace context in the metadata.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::telemetry::{ClientTrace, ClientTraceLayer};
use crate::tls::TlsMaterial;

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
}

fn endpoint(uri: &str, tls: &TlsMaterial, server_name: &str) -> Result<Endpoint, Error> {
    let err = |source| Error::Transport {
        uri: uri.to_owned(),
        source,
    };
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem[..]))
        .domain_name(server_name);
    Ok(Endpoint::from_shared(uri.to_owned())
        .map_err(err)?
        .tls_config(config)
        .map_err(err)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// A channel that connects on first use and reconnects after failures, so a
/// service can start before its peers.
pub fn connect_lazy(uri: &str, tls: &TlsMaterial, server_name: &str) -> Result<PeerChannel, Error> {
    let channel = endpoint(uri, tls, server_name)?.connect_lazy();
    Ok(tower::Layer::layer(&ClientTraceLayer, channel))
}

/// A channel connected now (fails if the peer is unreachable).
pub async fn connect(
    uri: &str,
    tls: &TlsMaterial,
    server_name: &str,
) -> Result<PeerChannel, Error> {
    let channel = endpoint(uri, tls, server_name)?
        .connect()
        .await
        .map_err(|source| Error::Transport {
            uri: uri.to_owned(),
            source,
        })?;
    Ok(tower::Layer::layer(&ClientTraceLayer, channel))
}
