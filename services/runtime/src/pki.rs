//! Certificate authority and certificate issuance for mutual TLS.
//!
//! Production deployments usually get certificates from the platform
//! (cert-manager); `confidant certs` and `confidant dev` use this module to
//! make a CA and issue service and client certificates whose URI SAN carries
//! the SPIFFE identity `spiffe://<trust-domain>/<name>`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::service_name::{ServiceName, spiffe_id};

/// Errors of certificate generation and of the PKI directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file of the PKI directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A name is not valid in a certificate.
    #[error("invalid certificate name {0:?}")]
    InvalidName(String),
}

/// A certificate and its private key, both PEM. The key is zeroized on drop.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: Zeroizing<String>,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// The subject common name.
    pub common_name: String,
    /// The SPIFFE id put in the URI SAN.
    pub spiffe_id: String,
    /// DNS names the certificate is valid for as a server.
    pub dns_names: Vec<String>,
    /// IP addresses the certificate is valid for as a server.
    pub ip_addresses: Vec<IpAddr>,
    /// Validity from now.
    pub validity: Duration,
}

impl LeafSpec {
    /// A service certificate: usable as server and as client (services call
    /// each other), valid for the given host names and addresses.
    pub fn service(trust_domain: &str, service: ServiceName, hosts: &[String]) -> Self {
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        for host in hosts {
            match host.parse::<IpAddr>() {
                Ok(ip) => ip_addresses.push(ip),
                Err(_) => dns_names.push(host.clone()),
            }
        }
        Self {
            common_name: format!("confidant-{service}"),
            spiffe_id: service.spiffe_id(trust_domain),
            dns_names,
            ip_addresses,
            validity: Duration::days(90),
        }
    }

    /// A client certificate for an operator, a tool or a firm application.
    pub fn client(trust_domain: &str, name: &str) -> Self {
        Self {
            common_name: name.to_owned(),
            spiffe_id: spiffe_id(trust_domain, name),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            validity: Duration::days(90),
        }
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Confidant");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Generates a self-signed CA valid for ten years.
pub fn generate_ca(common_name: &str) -> Result<CertifiedKey, Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(3650);
    let cert = params.self_signed(&key)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// Issues a leaf certificate signed by `ca`, usable for both TLS server and
/// client authentication.
pub fn issue(ca: &CertifiedKey, spec: &LeafSpec) -> Result<CertifiedKey, Error> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&spec.common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let uri = spec
        .spiffe_id
        .clone()
        .try_into()
        .map_err(|_| Error::InvalidName(spec.spiffe_id.clone()))?;
    params.subject_alt_names.push(SanType::URI(uri));
    for name in &spec.dns_names {
        let dns = name
            .clone()
            .try_into()
            .map_err(|_| Error::InvalidName(name.clone()))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    for ip in &spec.ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + spec.validity;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// The file names of a PKI directory as `confidant certs` and `confidant dev`
/// lay it out.
#[derive(Debug, Clone)]
pub struct PkiDir {
    dir: PathBuf,
}

impl PkiDir {
    /// A PKI directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `ca.pem`.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `ca-key.pem`.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    /// `<name>.pem`.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// `<name>-key.pem`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }

    /// Loads the CA certificate and key.
    pub fn load_ca(&self) -> Result<CertifiedKey, Error> {
        Ok(CertifiedKey {
            cert_pem: read(&self.ca_cert())?,
            key_pem: Zeroizing::new(read(&self.ca_key())?),
        })
    }

    /// Writes a certificate and key as `<name>.pem` and `<name>-key.pem`
    /// (the key readable by its owner only).
    pub fn store(&self, name: &str, pair: &CertifiedKey) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
            path: self.dir.clone(),
            source,
        })?;
        write(&self.cert(name), pair.cert_pem.as_bytes(), 0o644)?;
        write(&self.key(name), pair.key_pem.as_bytes(), 0o600)
    }

    /// Creates the CA unless it exists; returns it.
    pub fn init_ca(&self) -> Result<CertifiedKey, Error> {
        if self.ca_cert().exists() && self.ca_key().exists() {
            return self.load_ca();
        }
        let ca = generate_ca("Confidant CA")?;
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
            path: self.dir.clone(),
            source,
        })?;
        write(&self.ca_cert(), ca.cert_pem.as_bytes(), 0o644)?;
        write(&self.ca_key(), ca.key_pem.as_bytes(), 0o600)?;
        Ok(ca)
    }

    /// Makes everything `confidant dev` needs, keeping what already exists
    /// and is still good for a week: a CA, a certificate per service valid
    /// for localhost and 127.0.0.1, and an operator client certificate. A
    /// certificate that is missing, unreadable or within a week of expiry is
    /// issued again (a data directory kept longer than a certificate lives
    /// goes on starting).
    pub fn ensure_dev(&self, trust_domain: &str) -> Result<(), Error> {
        let ca = self.init_ca()?;
        let keep =
            |name: &str| self.key(name).exists() && good_for(&self.cert(name), Duration::days(7));
        for service in ServiceName::ALL {
            if !keep(service.as_str()) {
                self.issue_dev(&ca, trust_domain, service)?;
            }
        }
        if !keep("operator") {
            let leaf = issue(&ca, &LeafSpec::client(trust_domain, "operator"))?;
            self.store("operator", &leaf)?;
        }
        Ok(())
    }

    /// Issues `service` a new dev certificate (localhost and 127.0.0.1) from
    /// this directory's CA, as a renewal does; a running service takes it
    /// up at its next look at its files.
    pub fn renew_dev(&self, trust_domain: &str, service: ServiceName) -> Result<(), Error> {
        self.issue_dev(&self.load_ca()?, trust_domain, service)
    }

    fn issue_dev(
        &self,
        ca: &CertifiedKey,
        trust_domain: &str,
        service: ServiceName,
    ) -> Result<(), Error> {
        let hosts = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let leaf = issue(ca, &LeafSpec::service(trust_domain, service, &hosts))?;
        self.store(service.as_str(), &leaf)
    }
}

/// Whether the certificate at `path` parses and stays valid for at least
/// `margin` from now.
fn good_for(path: &Path, margin: Duration) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|pem| crate::tls::live::CertificateFacts::from_pem(&pem).ok())
        .is_some_and(|facts| {
            facts.not_after > (OffsetDateTime::now_utc() + margin).unix_timestamp()
        })
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes the file aside and renames it over `path`, so that a running
/// service reading its files again (SIGHUP, `tls_reload_seconds`) sees the
/// old file or the new one, never half of one.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = path.with_file_name(format!(".{name}.new"));
    // A leftover from an interrupted write would keep its own mode.
    let _ = std::fs::remove_file(&aside);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&aside)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&aside, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(path: &Path) -> String {
        crate::tls::live::CertificateFacts::from_pem(&std::fs::read(path).unwrap())
            .unwrap()
            .serial
    }

    #[test]
    fn dev_certificates_are_kept_while_good_and_issued_again_near_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(dir.path());
        pki.ensure_dev("confidant.local").unwrap();
        let vault = pki.cert("vault");
        let before = serial(&vault);
        let audit = serial(&pki.cert("audit"));
        pki.ensure_dev("confidant.local").unwrap();
        assert_eq!(serial(&vault), before, "a good certificate is kept");

        // The vault's runs out in three days; the operator's is garbage.
        let ca = pki.load_ca().unwrap();
        let mut spec = LeafSpec::service(
            "confidant.local",
            ServiceName::Vault,
            &["localhost".to_owned()],
        );
        spec.validity = Duration::days(3);
        pki.store("vault", &issue(&ca, &spec).unwrap()).unwrap();
        std::fs::write(pki.cert("operator"), b"garbage").unwrap();
        pki.ensure_dev("confidant.local").unwrap();
        assert_ne!(serial(&vault), before);
        assert!(good_for(&vault, Duration::days(80)));
        assert!(good_for(&pki.cert("operator"), Duration::days(80)));
        assert_eq!(serial(&pki.cert("audit")), audit, "the others are kept");
    }
}
