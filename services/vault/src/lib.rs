//! The vault service: encrypted records and documents under the key
//! hierarchy (KMS key, scope key, record key), purpose-bound reads, masking,
//! rotation and crypto-shredding.
//!
//! What runs today is the part every service shares — the mutual-TLS port
//! with health and reflection, its own schema with the audit outbox, and
//! delivery of its audit events — plus the root of the key hierarchy:
//! [`kms`], the KMS providers (AWS KMS and a local keyring for development)
//! behind one interface. Records, documents and shredding are built on these.
#![forbid(unsafe_code)]

/// The KMS providers live in the shared runtime (identity seals its secrets
/// with them too); the vault builds its key hierarchy on them.
pub use confidant_runtime::kms;

use confidant_runtime::{Migrations, ServiceName};

/// This service.
pub const NAME: ServiceName = ServiceName::Vault;

/// The service's schema, per backend: so far the common tables (the audit
/// outbox) only.
pub const MIGRATIONS: Migrations = confidant_runtime::storage::COMMON_ONLY;
