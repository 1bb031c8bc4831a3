//! What the operator commands share: the client certificate a command
//! connects with, and the staff token it acts with.

use std::path::PathBuf;

use confidant_runtime::client::PeerChannel;
use confidant_runtime::tls::TlsFiles;

/// The client certificate a command connects with (the dev PKI's operator
/// by default).
#[derive(Debug, clap::Args)]
pub struct Credentials {
    /// CA bundle.
    #[arg(long, default_value = ".confidant/pki/ca.pem")]
    pub ca: PathBuf,
    /// Client certificate.
    #[arg(long, default_value = ".confidant/pki/operator.pem")]
    pub cert: PathBuf,
    /// Client key.
    #[arg(long, default_value = ".confidant/pki/operator-key.pem")]
    pub key: PathBuf,
    /// The name the service's certificate is checked against (default: the
    /// URL's host).
    #[arg(long)]
    pub server_name: Option<String>,
}

impl Credentials {
    /// A mutual-TLS channel to `service`.
    pub async fn channel(&self, service: &str) -> anyhow::Result<PeerChannel> {
        let tls = TlsFiles {
            ca_file: self.ca.clone(),
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
        }
        .load()?;
        let host = self
            .server_name
            .clone()
            .unwrap_or_else(|| crate::process::host_of(service));
        Ok(confidant_runtime::client::connect(service, &tls, &host).await?)
    }
}

/// `message` as a request carrying a staff member's access token.
pub fn with_token<T>(token: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| anyhow::anyhow!("the token is not a valid header value"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}
