//! Rust types and gRPC stubs generated from `proto/confidant/**.proto`.
//!
//! Each package of the contract is a module here, e.g. `confidant.audit.v1`
//! is [`audit::v1`].
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `confidant.audit.v1`: the audit log.
pub mod audit {
    pub mod v1 {
        tonic::include_proto!("confidant.audit.v1");
    }
}

/// `confidant.identity.v1`: who everyone is, and the authorization decision.
pub mod identity {
    pub mod v1 {
        tonic::include_proto!("confidant.identity.v1");
    }
}

/// `confidant.intake.v1`: forms, invitations, submissions and consent.
pub mod intake {
    pub mod v1 {
        tonic::include_proto!("confidant.intake.v1");
    }
}

/// `confidant.retention.v1`: retention policies, legal holds, due dates.
pub mod retention {
    pub mod v1 {
        tonic::include_proto!("confidant.retention.v1");
    }
}

/// `confidant.vault.v1`: encrypted client data and its keys.
pub mod vault {
    pub mod v1 {
        tonic::include_proto!("confidant.vault.v1");
    }
}

/// The encoded `FileDescriptorSet` of the whole contract, served by gRPC
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/confidant_descriptor.bin"));
