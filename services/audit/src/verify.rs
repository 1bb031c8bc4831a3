//! Offline verification of an exported log: recompute every leaf, rebuild
//! the tree, check every checkpoint's signature against the keys trusted
//! for it and its root against the events, and name the first thing that
//! does not match.
//!
//! The keys given are trusted from the start. A change of signing key the
//! log records ([`crate::rotation`]) and the key it replaces hands over (by
//! signing the first checkpoint that covers the change) makes the new key
//! trusted for larger checkpoints, and the replaced key for none larger
//! than that handover, given or not: a key the log has let go of cannot
//! vouch for what came after. A change nobody handed over only names the
//! new key; it is trusted when given.

use crate::checkpoint::{Checkpoint, KeyHash, NoteError, Verifier, signers_of};
use crate::merkle::{Hash, Tree, leaf_hash, verify_inclusion};
use crate::rotation::{self, Replaced, Rotation};

/// One exported event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log.
    pub index: u64,
    /// Event id.
    pub event_id: String,
    /// The bytes the log committed to.
    pub event_bytes: Vec<u8>,
    /// The leaf hash recorded at append time.
    pub leaf_hash: Vec<u8>,
    /// An inclusion proof shipped with the event: `(tree size, hashes)`.
    pub proof: Option<(u64, Vec<Hash>)>,
}

/// The first problem the verifier found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// An event's bytes do not hash to its recorded leaf.
    EventAltered {
        /// Its position.
        index: u64,
        /// Its id.
        event_id: String,
    },
    /// Positions are not dense from the start of the export.
    EventMissing {
        /// The position expected.
        index: u64,
    },
    /// A checkpoint's signature does not verify.
    BadCheckpoint {
        /// Which checkpoint (0-based, in export order).
        position: usize,
        /// Why.
        reason: String,
    },
    /// The events do not produce a checkpoint's root: some event at a
    /// position below `size` and at or above `since` was altered, removed or
    /// inserted.
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
        /// The size of the last checkpoint that still matched.
        since: u64,
    },
    /// An event's shipped inclusion proof does not lead to the signed root.
    BadProof {
        /// The event's position.
        index: u64,
    },
    /// A checkpoint covers more events than the export holds.
    Incomplete {
        /// The checkpoint's size.
        size: u64,
        /// Events in the export.
        events: u64,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::EventAltered { index, event_id } => {
                write!(
                    f,
                    "event {event_id} at position {index} does not match the hash recorded when it was appended"
                )
            }
            Finding::EventMissing { index } => write!(f, "event at position {index} is missing"),
            Finding::BadCheckpoint { position, reason } => {
                write!(f, "checkpoint #{position}: {reason}")
            }
            Finding::RootMismatch { size, since } => write!(
                f,
                "the events do not match the signed checkpoint of size {size}: an event at a position in [{since}, {size}) was changed"
            ),
            Finding::BadProof { index } => {
                write!(
                    f,
                    "the inclusion proof shipped with the event at position {index} does not verify"
                )
            }
            Finding::Incomplete { size, events } => {
                write!(
                    f,
                    "a checkpoint covers {size} events but the export holds {events}"
                )
            }
        }
    }
}

/// A change of signing key the verification followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// The position of the event that records it.
    pub index: u64,
    /// The new key.
    pub key: Verifier,
    /// Whether the replaced key signed the first checkpoint covering it.
    pub handed_over: bool,
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Events checked.
    pub events: u64,
    /// Checkpoints whose signature and root verified, in the order given.
    pub checkpoints: Vec<Checkpoint>,
    /// The largest verified checkpoint size.
    pub verified_size: u64,
    /// The changes of signing key in the verified part of the log, in order.
    pub key_changes: Vec<KeyChange>,
    /// The key that signed the largest verified checkpoint: the key the
    /// log signs with now, unless the export is not the live log's.
    pub signed_by: Option<Verifier>,
    /// The first problem, if any.
    pub finding: Option<Finding>,
}

/// A key trusted for a range of checkpoint sizes.
#[derive(Debug)]
struct Trusted {
    key: Verifier,
    /// Trusted for checkpoints larger than the position of the change to it.
    from: Option<u64>,
    /// `(largest size, position of the change)`: replaced by the change at
    /// that position, trusted for no checkpoint larger than the size.
    until: Option<(u64, u64)>,
}

/// The keys trusted as the verification goes along the log.
#[derive(Debug)]
struct Keyring {
    trusted: Vec<Trusted>,
}

impl Keyring {
    fn new(given: &[Verifier]) -> Self {
        Self {
            trusted: given
                .iter()
                .map(|key| Trusted {
                    key: key.clone(),
                    from: None,
                    until: None,
                })
                .collect(),
        }
    }

    /// Whether some key trusted at some point signed `note`, by its
    /// signature lines.
    fn knows_a_signer_of(&self, note: &str) -> bool {
        let signers = signers_of(note);
        self.trusted
            .iter()
            .any(|t| signers.contains(&t.key.key_hash()))
    }

    /// The checkpoint `note` states and which trusted key vouches for it.
    fn check(&self, note: &str) -> Result<(Checkpoint, usize), String> {
        let signers = signers_of(note);
        let mut refusal = None;
        for (at, t) in self.trusted.iter().enumerate() {
            if !signers.contains(&t.key.key_hash()) {
                continue;
            }
            let hash = t.key.key_hash();
            match (t.key.verify(note), t.from, t.until) {
                (Ok(c), Some(from), _) if c.size <= from => {
                    refusal.get_or_insert(format!(
                        "signed by key {hash}, which the log took up only at position {from}"
                    ));
                }
                (Ok(c), _, Some((size, at_change))) if c.size > size => {
                    refusal.get_or_insert(format!(
                        "signed by key {hash}, which the log replaced at position {at_change}"
                    ));
                }
                (Ok(c), _, _) => return Ok((c, at)),
                (Err(e), _, _) => {
                    refusal.get_or_insert(e.to_string());
                }
            }
        }
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        let named: Vec<String> = signers.iter().map(KeyHash::to_string).collect();
        Err(if named.is_empty() {
            NoteError::Malformed("signature line").to_string()
        } else {
            format!(
                "not signed by a trusted key (signed by {})",
                named.join(", ")
            )
        })
    }

    /// Follows the changes of key recorded by `entries` (covered by a
    /// checkpoint of `size` that the key at `signer` vouched for).
    fn follow(&mut self, entries: &[Entry], size: u64, signer: usize, report: &mut Report) {
        for entry in entries {
            let Some(change) = rotation::read(entry.index, &entry.event_bytes) else {
                continue;
            };
            let replaced = change.replaced.hash();
            let handed_over = self.trusted[signer].key.key_hash() == replaced;
            for t in &mut self.trusted {
                if t.key.key_hash() == replaced && t.until.is_none() {
                    // Handed over: up to this checkpoint; otherwise up to
                    // the change.
                    let last = if handed_over { size } else { change.index };
                    t.until = Some((last, change.index));
                }
            }
            report.key_changes.push(KeyChange {
                index: change.index,
                key: change.new_key.clone(),
                handed_over,
            });
            if handed_over && !self.trusted.iter().any(|t| t.key == change.new_key) {
                self.trusted.push(Trusted {
                    key: change.new_key,
                    from: Some(change.index),
                    until: None,
                });
            }
        }
    }
}

/// Why a checkpoint signed by a key a change of key names is not trusted:
/// no trusted key handed over to it, or it is the key a change replaced.
/// Names the change and the key so that whoever trusts it can say so.
fn untrusted_change(entries: &[Entry], note: &str) -> Option<String> {
    let signers = signers_of(note);
    let changes: Vec<Rotation> = entries
        .iter()
        .filter_map(|e| rotation::read(e.index, &e.event_bytes))
        .collect();
    if let Some(change) = changes
        .iter()
        .find(|r| signers.contains(&r.new_key.key_hash()))
    {
        return Some(format!(
            "signed by key {}, which the log took up at position {} in place of key {} with no handover by a key trusted here; if you trust it, give its verifier key ({}) with --public-key",
            change.new_key.key_hash(),
            change.index,
            change.replaced.hash(),
            change.new_key.verifier_key()
        ));
    }
    let change = changes
        .iter()
        .find(|r| signers.contains(&r.replaced.hash()))?;
    Some(format!(
        "signed by key {}, which the log replaced at position {} with key {}; to verify the log from its start, give the replaced key too{}",
        change.replaced.hash(),
        change.index,
        change.new_key.key_hash(),
        match &change.replaced {
            Replaced::Key(key) => format!(" ({})", key.verifier_key()),
            Replaced::Hash(_) => String::new(),
        }
    ))
}

/// Verifies an export that starts at position 0, trusting `keys` from the
/// start (and the keys the log hands over to, see the module's notes).
pub fn verify(entries: &[Entry], notes: &[String], keys: &[Verifier]) -> Report {
    let mut report = Report::default();
    let mut tree = Tree::new();
    for entry in entries {
        if entry.index != tree.size() {
            report.finding = Some(Finding::EventMissing { index: tree.size() });
            return report;
        }
        let recorded: Option<Hash> = entry.leaf_hash.as_slice().try_into().ok();
        let computed = leaf_hash(&entry.event_bytes);
        if recorded != Some(computed) && report.finding.is_none() {
            report.finding = Some(Finding::EventAltered {
                index: entry.index,
                event_id: entry.event_id.clone(),
            });
        }
        // Build from the bytes themselves: what the checkpoints must match.
        tree.push(computed);
    }
    report.events = tree.size();
    let mut keyring = Keyring::new(keys);
    let mut followed = 0u64;
    let mut roots: Vec<(u64, Hash)> = Vec::new();
    for (position, note) in notes.iter().enumerate() {
        let (checkpoint, signer) = match keyring.check(note) {
            Ok(found) => found,
            Err(reason) => {
                let reason = if keyring.knows_a_signer_of(note) {
                    reason
                } else {
                    untrusted_change(entries, note).unwrap_or(reason)
                };
                report
                    .finding
                    .get_or_insert(Finding::BadCheckpoint { position, reason });
                return report;
            }
        };
        if checkpoint.size > tree.size() {
            report.finding.get_or_insert(Finding::Incomplete {
                size: checkpoint.size,
                events: tree.size(),
            });
            return report;
        }
        if tree.root(checkpoint.size).ok() != Some(checkpoint.root) {
            report.finding.get_or_insert(Finding::RootMismatch {
                size: checkpoint.size,
                since: report.verified_size,
            });
            return report;
        }
        if checkpoint.size > followed {
            // Events are dense from 0 here: positions index the slice.
            let newly = usize::try_from(followed).unwrap_or(usize::MAX)
                ..usize::try_from(checkpoint.size).unwrap_or(usize::MAX);
            let newly = entries.get(newly).unwrap_or_default();
            keyring.follow(newly, checkpoint.size, signer, &mut report);
            followed = checkpoint.size;
        }
        if checkpoint.size >= report.verified_size {
            report.signed_by = Some(keyring.trusted[signer].key.clone());
        }
        report.verified_size = report.verified_size.max(checkpoint.size);
        roots.push((checkpoint.size, checkpoint.root));
        report.checkpoints.push(checkpoint);
    }
    // Proofs shipped with events must lead to a root that verified.
    for entry in entries {
        let Some((size, proof)) = &entry.proof else {
            continue;
        };
        let leaf = leaf_hash(&entry.event_bytes);
        let ok = roots
            .iter()
            .filter(|(s, _)| s == size)
            .any(|(_, root)| verify_inclusion(entry.index, *size, &leaf, proof, root));
        if !ok {
            report
                .finding
                .get_or_insert(Finding::BadProof { index: entry.index });
            return report;
        }
    }
    report
}

/// Checks one event against an evidence bundle: its leaf, its inclusion
/// proof and the checkpoint's signature by one of `keys`.
pub fn verify_evidence(
    event_bytes: &[u8],
    index: u64,
    proof: &[Hash],
    note: &str,
    keys: &[Verifier],
) -> Result<(), String> {
    let checkpoint = Keyring::new(keys).check(note).map(|(c, _)| c)?;
    if crate::merkle::verify_inclusion(
        index,
        checkpoint.size,
        &leaf_hash(event_bytes),
        proof,
        &checkpoint.root,
    ) {
        Ok(())
    } else {
        Err(format!(
            "event at position {index} is not included in the checkpoint of size {}",
            checkpoint.size
        ))
    }
}
