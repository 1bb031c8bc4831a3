//! Mutual TLS 1.3 with rustls: server and client configurations, and the
//! SPIFFE identity carried in a peer certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

pub mod live;
pub use live::LiveTls;

/// Errors while loading certificates or building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{what}: {detail}")]
    Pem {
        /// Which file or object.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl Error {
    /// Which of the three files of a TLS identity is at fault, as its
    /// setting's last part (`ca_file`, `cert_file`, `key_file`), and what is
    /// wrong with it: for the configuration check's problems.
    pub fn file_problem(self) -> (&'static str, String) {
        match self {
            Error::Pem { what, detail } => (
                match what.as_str() {
                    "ca bundle" => "ca_file",
                    "private key" => "key_file",
                    _ => "cert_file",
                },
                detail,
            ),
            Error::Rustls(rustls::Error::InconsistentKeys(_)) => {
                ("key_file", "does not match the certificate".to_owned())
            }
            other => ("cert_file", other.to_string()),
        }
    }
}

/// The three PEM files of a TLS identity: trusted CA, own certificate chain,
/// own private key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsFiles {
    /// CA bundle that peers' certificates must chain to.
    pub ca_file: PathBuf,
    /// This party's certificate (chain), PEM.
    pub cert_file: PathBuf,
    /// This party's private key, PEM.
    pub key_file: PathBuf,
}

/// A loaded TLS identity: PEM bytes, the key zeroized on drop.
#[derive(Clone)]
pub struct TlsMaterial {
    /// CA bundle, PEM.
    pub ca_pem: Vec<u8>,
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// Reads the three files.
    pub fn load(&self) -> Result<TlsMaterial, Error> {
        Ok(TlsMaterial {
            ca_pem: read(&self.ca_file)?,
            cert_pem: read(&self.cert_file)?,
            key_pem: Zeroizing::new(read(&self.key_file)?),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// The crypto provider of every TLS connection Confidant makes (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            what: what.to_owned(),
            detail: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    // The parser's error never quotes key material.
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::Pem {
        what: "private key".to_owned(),
        detail: e.to_string(),
    })
}

fn roots(ca_pem: &[u8]) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem, "ca bundle")? {
        roots.add(cert)?;
    }
    Ok(roots)
}

impl TlsMaterial {
    /// Server side: TLS 1.3 only, a client certificate chaining to the CA is
    /// required, ALPN h2 (gRPC).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&self.ca_pem)?),
            provider.clone(),
        )
        .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs(&self.cert_pem, "certificate")?,
                private_key(&self.key_pem)?,
            )?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// Server side without client authentication (for public listeners such
    /// as the intake web page): TLS 1.3 only.
    pub fn public_server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                certs(&self.cert_pem, "certificate")?,
                private_key(&self.key_pem)?,
            )?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Client side: TLS 1.3 only, the server must chain to the CA, our
    /// certificate is presented, ALPN h2.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        client_config(&self.ca_pem, Some((&self.cert_pem, &self.key_pem)))
    }
}

/// A client configuration: TLS 1.3 only, the server must chain to
/// `ca_pem`, `identity` (certificate chain and key, PEM) presented when the
/// server asks, ALPN h2.
pub fn client_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => {
            builder.with_client_auth_cert(certs(cert_pem, "certificate")?, private_key(key_pem)?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The first `spiffe://` URI SAN of a DER certificate.
pub fn spiffe_id(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    spiffe_id_of(&cert)
}

fn spiffe_id_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{LeafSpec, generate_ca, issue};
    use crate::service_name::ServiceName;

    fn material(ca: &crate::pki::CertifiedKey, leaf: &crate::pki::CertifiedKey) -> TlsMaterial {
        TlsMaterial {
            ca_pem: ca.cert_pem.as_bytes().to_vec(),
            cert_pem: leaf.cert_pem.as_bytes().to_vec(),
            key_pem: Zeroizing::new(leaf.key_pem.as_bytes().to_vec()),
        }
    }

    #[test]
    fn service_certificates_carry_their_spiffe_identity() {
        let ca = generate_ca("test ca").unwrap();
        let leaf = issue(
            &ca,
            &LeafSpec::service("firm.example", ServiceName::Vault, &["localhost".into()]),
        )
        .unwrap();
        let m = material(&ca, &leaf);
        assert_eq!(
            live::CertificateFacts::from_pem(&m.cert_pem)
                .unwrap()
                .spiffe_id
                .as_deref(),
            Some("spiffe://firm.example/vault")
        );
        m.server_config().unwrap();
        m.client_config().unwrap();
    }

    #[test]
    fn garbage_pem_is_refused_with_the_file_named() {
        let m = TlsMaterial {
            ca_pem: b"not a pem".to_vec(),
            cert_pem: Vec::new(),
            key_pem: Zeroizing::new(Vec::new()),
        };
        let err = m.server_config().unwrap_err().to_string();
        assert!(err.contains("ca bundle"), "{err}");
    }
}
