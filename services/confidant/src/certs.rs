//! `confidant certs`: a CA and certificates for services and clients.

use std::path::Path;

use anyhow::Context as _;
use confidant_runtime::ServiceName;
use confidant_runtime::pki::{LeafSpec, PkiDir, issue};

/// Creates the CA in `dir` unless one exists.
pub fn init(dir: &Path) -> anyhow::Result<()> {
    let pki = PkiDir::new(dir);
    let existed = pki.ca_cert().exists();
    pki.init_ca().context("cannot create the CA")?;
    if existed {
        println!("CA already exists: {}", pki.ca_cert().display());
    } else {
        println!(
            "CA written: {} (key: {})",
            pki.ca_cert().display(),
            pki.ca_key().display()
        );
    }
    Ok(())
}

/// Issues a certificate for `name` signed by the CA in `dir`. A service name
/// gets a service certificate valid for `hosts`; any other name a client
/// certificate (an operator, a tool, a firm application).
pub fn issue_cert(
    dir: &Path,
    name: &str,
    trust_domain: &str,
    hosts: &[String],
    days: u32,
) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        anyhow::bail!("--name must use letters, digits, '-' and '_' only");
    }
    let pki = PkiDir::new(dir);
    let ca = pki.load_ca().with_context(|| {
        format!(
            "no CA in {} (run `confidant certs init` first)",
            dir.display()
        )
    })?;
    let mut spec = match name.parse::<ServiceName>() {
        Ok(service) => {
            if hosts.is_empty() {
                anyhow::bail!("a service certificate needs at least one --host");
            }
            LeafSpec::service(trust_domain, service, hosts)
        }
        Err(_) => LeafSpec::client(trust_domain, name),
    };
    spec.validity = time::Duration::days(i64::from(days));
    let leaf = issue(&ca, &spec)?;
    pki.store(name, &leaf)?;
    println!(
        "{} written: {} (key: {}), identity {}",
        name,
        pki.cert(name).display(),
        pki.key(name).display(),
        spec.spiffe_id
    );
    Ok(())
}
