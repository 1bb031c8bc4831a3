//! The `confidant` process: runs any subset of the five services, and the
//! operator commands. `main.rs` only parses the command line and calls in.
#![forbid(unsafe_code)]

pub mod audit_cli;
pub mod certs;
pub mod cli;
pub mod directory_cli;
pub mod incidents_cli;
pub mod keys_cli;
pub mod process;
pub mod records_cli;
pub mod restore_cli;
#[cfg(feature = "testing")]
pub mod sandbox;
pub mod signals;
pub mod vault_cli;
