//! The shared runtime of Confidant's services: mutual TLS, telemetry,
//! storage, cache and coordination, error mapping, the audit outbox, and
//! the lifecycle of a process.
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod client;
pub mod config;
pub mod coord;
pub mod decide;
pub mod error;
pub mod gather;
pub mod in_flight;
pub mod keys;
pub mod kms;
pub mod matter;
pub mod notify;
pub mod outbox;
pub mod page;
pub mod peer;
pub mod pki;
pub mod portable;
pub mod secret_box;
pub mod server;
pub mod service_name;
pub mod staff_notices;
pub mod storage;
pub use storage::Migrations;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

pub use service_name::ServiceName;
