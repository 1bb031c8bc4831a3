//! The five services of the suite and the facts every part of the runtime
//! needs about them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of Confidant's five services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceName {
    /// Staff, clients, matters, walls, attestations, tokens, the authorization decision.
    Identity,
    /// Intake forms, invitations and submissions.
    Intake,
    /// Encrypted records and documents, keys, crypto-shredding.
    Vault,
    /// Retention policies, legal holds, the disposal scheduler.
    Retention,
    /// The tamper-evident audit log.
    Audit,
}

impl ServiceName {
    /// All services, in start-up order (identity and audit first: the others call them).
    pub const ALL: [ServiceName; 5] = [
        ServiceName::Identity,
        ServiceName::Audit,
        ServiceName::Vault,
        ServiceName::Intake,
        ServiceName::Retention,
    ];

    /// The lowercase name used in flags, certificates, schemas and spans.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Identity => "identity",
            ServiceName::Intake => "intake",
            ServiceName::Vault => "vault",
            ServiceName::Retention => "retention",
            ServiceName::Audit => "audit",
        }
    }

    /// The port the service listens on in `confidant dev` (and the default
    /// port of `serve`).
    pub fn default_port(self) -> u16 {
        match self {
            ServiceName::Identity => 7101,
            ServiceName::Intake => 7102,
            ServiceName::Vault => 7103,
            ServiceName::Retention => 7104,
            ServiceName::Audit => 7105,
        }
    }

    /// The SPIFFE id that the service's certificate carries.
    pub fn spiffe_id(self, trust_domain: &str) -> String {
        spiffe_id(trust_domain, self.as_str())
    }

    /// Parses a comma-separated list such as `vault,audit`, rejecting
    /// duplicates and unknown names.
    pub fn parse_list(list: &str) -> Result<Vec<ServiceName>, UnknownService> {
        let mut out = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let name = part.parse()?;
            if !out.contains(&name) {
                out.push(name);
            }
        }
        if out.is_empty() {
            return Err(UnknownService(list.to_owned()));
        }
        Ok(out)
    }
}

/// The SPIFFE id `spiffe://<trust_domain>/<name>`.
pub fn spiffe_id(trust_domain: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/{name}")
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service name that is not one of the five.
#[derive(Debug, thiserror::Error)]
#[error("unknown service {0:?}: expected identity, intake, vault, retention or audit")]
pub struct UnknownService(pub String);

impl FromStr for ServiceName {
    type Err = UnknownService;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "identity" => Ok(ServiceName::Identity),
            "intake" => Ok(ServiceName::Intake),
            "vault" => Ok(ServiceName::Vault),
            "retention" => Ok(ServiceName::Retention),
            "audit" => Ok(ServiceName::Audit),
            other => Err(UnknownService(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_lists_parse_and_reject_unknown_names() {
        assert_eq!(
            ServiceName::parse_list("vault, audit,vault").unwrap(),
            vec![ServiceName::Vault, ServiceName::Audit]
        );
        assert!(ServiceName::parse_list("vault,billing").is_err());
        assert!(ServiceName::parse_list(" , ").is_err());
    }
}
