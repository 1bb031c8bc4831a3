//! Offline verification of an exported log: recompute every leaf, rebuild
//! the tree, check every checkpoint's signature against the log's key and
//! its root against the events, and name the first thing that does not
//! match.

use crate::checkpoint::{Checkpoint, Verifier};
use crate::merkle::{Hash, Tree, leaf_hash, verify_inclusion};

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

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Events checked.
    pub events: u64,
    /// Checkpoints whose signature and root verified, in the order given.
    pub checkpoints: Vec<Checkpoint>,
    /// The largest verified checkpoint size.
    pub verified_size: u64,
    /// The first problem, if any.
    pub finding: Option<Finding>,
}

/// Verifies an export that starts at position 0.
pub fn verify(entries: &[Entry], notes: &[String], verifier: &Verifier) -> Report {
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
    let mut roots: Vec<(u64, Hash)> = Vec::new();
    for (position, note) in notes.iter().enumerate() {
        let checkpoint = match verifier.verify(note) {
            Ok(c) => c,
            Err(e) => {
                report.finding.get_or_insert(Finding::BadCheckpoint {
                    position,
                    reason: e.to_string(),
                });
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
/// proof and the checkpoint's signature.
pub fn verify_evidence(
    event_bytes: &[u8],
    index: u64,
    proof: &[Hash],
    note: &str,
    verifier: &Verifier,
) -> Result<(), String> {
    let checkpoint = verifier.verify(note).map_err(|e| e.to_string())?;
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
