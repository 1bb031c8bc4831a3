//! The vault service: encrypted records and documents under the key
//! hierarchy (KMS key, scope key, record key), purpose-bound reads, masking,
//! rotation and crypto-shredding.
//!
//! What runs today is the part every service shares: the mutual-TLS port with
//! health and reflection, its own database schema with the audit outbox, and
//! delivery of its audit events (its start and stop) to the audit service.
//! Its own API is built on this foundation.
#![forbid(unsafe_code)]

use confidant_runtime::{Migrations, ServiceName};

/// This service.
pub const NAME: ServiceName = ServiceName::Vault;

/// The service's schema, per backend: so far the common tables (the audit
/// outbox) only.
pub const MIGRATIONS: Migrations = confidant_runtime::storage::COMMON_ONLY;
