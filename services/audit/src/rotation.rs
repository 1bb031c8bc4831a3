//! Changes of the key that signs the log's checkpoints.
//!
//! When the audit service first signs with a new key, it appends an
//! `audit.signing_key.rotated` event naming the new verifier key and the key
//! it replaces, and the first checkpoint covering that event is signed by
//! the replaced key when the service still holds it
//! (`audit.previous_signing_key_files`): the handover. A verifier that
//! trusts the old key learns the new one from the log itself, under a
//! signature it already trusts, and the old key may sign nothing larger
//! afterwards. Without the old key (lost or compromised) the change is still
//! recorded, but nothing vouches for it: verifiers must be given the new key.

use confidant_proto::audit::v1::{AuditEvent, Outcome, RelatedResource};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, related_named, service_event};
use prost::Message;

use crate::checkpoint::{KeyHash, Signer, Verifier};

/// `related` type of the new key (its verifier key in note format).
const NEW_KEY: &str = "verifier_key";
/// `related` type of the replaced key, when the service held it.
const PREVIOUS_KEY: &str = "previous_verifier_key";
/// `related` type of the replaced key's hash, when it did not.
const PREVIOUS_HASH: &str = "previous_key_hash";

/// The key a rotation replaces, as far as the service knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// The whole verifier key: the service holds the private key.
    Key(Verifier),
    /// Only the hash the latest checkpoint's signature line names.
    Hash(KeyHash),
}

impl Replaced {
    /// The replaced key's hash.
    pub fn hash(&self) -> KeyHash {
        match self {
            Replaced::Key(key) => key.key_hash(),
            Replaced::Hash(hash) => *hash,
        }
    }
}

/// A change of signing key the log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The event's position in the log.
    pub index: u64,
    /// The key that signs from here on.
    pub new_key: Verifier,
    /// The key it replaces.
    pub replaced: Replaced,
}

/// The event that records a change from `replaced` to `new`.
pub fn event(trust_domain: &str, new: &Signer, replaced: &Replaced) -> AuditEvent {
    let mut event = service_event(
        ServiceName::Audit,
        trust_domain,
        Action::AuditSigningKeyRotated,
        Outcome::Allowed,
    );
    let related = |r#type: &str, id: String| RelatedResource {
        r#type: r#type.to_owned(),
        id,
    };
    event.related = vec![
        related(NEW_KEY, new.verifier_key()),
        match replaced {
            Replaced::Key(key) => related(PREVIOUS_KEY, key.verifier_key()),
            Replaced::Hash(hash) => related(PREVIOUS_HASH, hash.to_string()),
        },
    ];
    event
}

/// The rotation recorded by the event at `index`, if it records one. Only
/// the audit service's own events count (the log refuses the action from
/// any other service); reading the bytes is skipped unless they hold the
/// action's name, so that a verifier reads a million events at the cost of
/// a byte search each.
pub fn read(index: u64, bytes: &[u8]) -> Option<Rotation> {
    let action = Action::AuditSigningKeyRotated.as_str();
    memchr::memmem::find(bytes, action.as_bytes())?;
    let event = AuditEvent::decode(bytes).ok()?;
    if event.action != action || event.source_service != ServiceName::Audit.as_str() {
        return None;
    }
    let new_key = Verifier::parse(related_named(&event.related, NEW_KEY)?).ok()?;
    let replaced = match related_named(&event.related, PREVIOUS_KEY) {
        Some(key) => Replaced::Key(Verifier::parse(key).ok()?),
        None => Replaced::Hash(related_named(&event.related, PREVIOUS_HASH)?.parse().ok()?),
    };
    Some(Rotation {
        index,
        new_key,
        replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::from_pkcs8("firm.example/audit", &Signer::generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn a_rotation_event_reads_back() {
        let (old, new) = (signer(), signer());
        let held = event("firm.example", &new, &Replaced::Key(old.verifier()));
        let read_back = read(7, &held.encode_to_vec()).unwrap();
        assert_eq!(read_back.index, 7);
        assert_eq!(read_back.new_key, new.verifier());
        assert_eq!(read_back.replaced, Replaced::Key(old.verifier()));

        let lost = event("firm.example", &new, &Replaced::Hash(old.key_hash()));
        let read_back = read(8, &lost.encode_to_vec()).unwrap();
        assert_eq!(read_back.replaced.hash(), old.key_hash());
    }

    #[test]
    fn other_events_and_other_services_record_no_rotation() {
        let started = service_event(
            ServiceName::Audit,
            "firm.example",
            Action::ServiceStarted,
            Outcome::Allowed,
        );
        assert_eq!(read(0, &started.encode_to_vec()), None);
        let mut forged = event("firm.example", &signer(), &Replaced::Hash(KeyHash([1; 4])));
        forged.source_service = "vault".into();
        assert_eq!(read(0, &forged.encode_to_vec()), None);
    }
}
