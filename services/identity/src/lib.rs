//! The identity service: staff, roles and permissions, clients, matters,
//! assignments, ethical walls, attestations (NDA, training), break-glass,
//! and the authorization decision the other services ask for.
//!
//! - [`domain`]: the decision as a pure function of facts at a point in time;
//! - [`store`]: the directory on PostgreSQL or SQLite;
//! - [`grpc`]: the `confidant.identity.v1.IdentityService` handlers.
#![forbid(unsafe_code)]

pub mod domain;

use confidant_runtime::{Migrations, ServiceName};
use sqlx::migrate::Migrator;

/// This service.
pub const NAME: ServiceName = ServiceName::Identity;

static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");

/// The identity schema, per backend.
pub const MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};
