//! The audit log: the event store plus the Merkle tree over it and the
//! signed checkpoints that commit to the tree.
//!
//! The tree is rebuilt from the stored events when the service starts,
//! recomputing every leaf hash from the stored bytes, and kept in step with
//! the store afterwards (other replicas' appends included). A stored event
//! that no longer matches its recorded hash, or events that no longer match
//! a signed checkpoint, put the log in a broken state in which it refuses to
//! sign anything further: it never signs a checkpoint inconsistent with an
//! earlier one.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::checkpoint::{Checkpoint, KeyHash, Signer, signers_of};
use crate::domain::{ValidEvent, validate_batch};
use crate::merkle::{Hash, ProofError, Tree, leaf_hash};
use crate::rotation::{self, Replaced, Rotation};
use crate::store::{Appended, EventStore, StoredCheckpoint};

/// Evidence that the stored log was altered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Integrity {
    /// A stored event's bytes no longer hash to the leaf recorded at append.
    #[error("event {event_id} at position {index} was altered after it was appended")]
    EventAltered {
        /// Its position.
        index: u64,
        /// Its id.
        event_id: Uuid,
    },
    /// The stored events no longer produce a signed checkpoint's root.
    #[error("the stored events no longer match the signed checkpoint of size {size}")]
    CheckpointMismatch {
        /// The checkpoint's size.
        size: u64,
    },
    /// Fewer events are stored than a signed checkpoint covers.
    #[error("a signed checkpoint covers {size} events but only {found} are stored")]
    EventsMissing {
        /// The checkpoint's size.
        size: u64,
        /// Events found.
        found: u64,
    },
}

/// Failures of log operations.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The store failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// The log was altered; it signs nothing more.
    #[error("audit log integrity: {0}")]
    Integrity(Integrity),
    /// A proof was asked for sizes the log cannot answer.
    #[error(transparent)]
    Proof(#[from] ProofError),
}

/// Why a checkpoint was not signed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The log failed (storage, integrity).
    #[error(transparent)]
    Log(#[from] LogError),
    /// This replica's signing key no longer signs the log: the log records
    /// its replacement (another replica started with the new key).
    #[error(
        "this replica's signing key was replaced at position {index} of the log; restart it with audit.signing_key_file set to the log's current key"
    )]
    KeyRetired {
        /// The position of the change that replaced it.
        index: u64,
    },
    /// The log's own record of a change of key was refused by its rules.
    #[error("the audit service's own event is invalid: {0}")]
    OwnEvent(String),
}

impl From<sqlx::Error> for CheckpointError {
    fn from(err: sqlx::Error) -> Self {
        Self::Log(err.into())
    }
}

impl From<ProofError> for CheckpointError {
    fn from(err: ProofError) -> Self {
        Self::Log(err.into())
    }
}

/// The audit log of one replica.
#[derive(Debug)]
pub struct AuditLog {
    store: EventStore,
    tree: RwLock<Tree>,
    sync_lock: tokio::sync::Mutex<()>,
    signer: Signer,
    previous: Vec<Signer>,
    origin: String,
    trust_domain: String,
    broken: Mutex<Option<Integrity>>,
    /// When the newest signed checkpoint this replica knows of was issued
    /// (unix milliseconds; 0: none yet).
    newest_checkpoint_millis: AtomicI64,
    opened_at: DateTime<Utc>,
}

const SYNC_BATCH: i64 = 10_000;

fn to_hash(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

impl AuditLog {
    /// Opens the log over `store`: rebuilds the tree from every stored event
    /// and checks it against the latest signed checkpoint. `signer` signs
    /// its checkpoints; `trust_domain` names the audit service in the
    /// events it records itself.
    pub async fn open(
        store: EventStore,
        signer: Signer,
        origin: &str,
        trust_domain: &str,
    ) -> Result<Self, sqlx::Error> {
        let log = Self {
            store,
            tree: RwLock::new(Tree::new()),
            sync_lock: tokio::sync::Mutex::new(()),
            signer,
            previous: Vec::new(),
            origin: origin.to_owned(),
            trust_domain: trust_domain.to_owned(),
            broken: Mutex::new(None),
            newest_checkpoint_millis: AtomicI64::new(0),
            opened_at: Utc::now(),
        };
        log.sync().await?;
        if let Some(latest) = log.store.latest_checkpoint().await? {
            log.check_against(&latest);
            log.saw_checkpoint(latest.issued_at);
        }
        if let Some(problem) = log.integrity() {
            tracing::error!(problem = %problem, "audit log integrity check failed; no checkpoint will be signed");
        }
        Ok(log)
    }

    /// Keys that signed the log's checkpoints before `signer`: when the
    /// latest checkpoint is signed by one of them, the next checkpoint is
    /// too, covering the recorded change to `signer` (the handover; see
    /// [`rotation`]).
    pub fn with_previous_keys(mut self, previous: Vec<Signer>) -> Self {
        self.previous = previous;
        self
    }

    /// The store underneath.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The origin line of checkpoints.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The key that verifies this log's checkpoints.
    pub fn verifier_key(&self) -> String {
        self.signer.verifier_key()
    }

    /// The key (this replica's or a previous one it holds) that signed
    /// `note`; this replica's when it holds none of its signers.
    pub fn verifier_key_of(&self, note: &str) -> String {
        signers_of(note)
            .into_iter()
            .find_map(|hash| self.held(hash))
            .unwrap_or(&self.signer)
            .verifier_key()
    }

    /// How long ago, at `now`, the newest signed checkpoint this replica
    /// knows of was issued; before any, how long ago the log was opened.
    /// It grows while nothing is signed: the log found an alteration, this
    /// replica's key was replaced, or storage fails.
    pub fn checkpoint_age(&self, now: DateTime<Utc>) -> chrono::Duration {
        let newest = match self.newest_checkpoint_millis.load(Ordering::Relaxed) {
            0 => None,
            millis => DateTime::from_timestamp_millis(millis),
        }
        .unwrap_or(self.opened_at);
        (now - newest).max(chrono::Duration::zero())
    }

    /// Reads the newest signed checkpoint again (one signed by another
    /// replica), for [`Self::checkpoint_age`].
    pub async fn refresh_checkpoint_age(&self) -> Result<(), sqlx::Error> {
        if let Some(latest) = self.store.latest_checkpoint().await? {
            self.saw_checkpoint(latest.issued_at);
        }
        Ok(())
    }

    fn saw_checkpoint(&self, issued_at: DateTime<Utc>) {
        self.newest_checkpoint_millis
            .fetch_max(issued_at.timestamp_millis(), Ordering::Relaxed);
    }

    /// The first integrity problem found, if any.
    pub fn integrity(&self) -> Option<Integrity> {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn mark_broken(&self, problem: Integrity) {
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        if broken.is_none() {
            tracing::error!(problem = %problem, "audit log integrity violated");
            *broken = Some(problem);
        }
    }

    fn read_tree(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of events in the tree.
    pub fn size(&self) -> u64 {
        self.read_tree().size()
    }

    fn check_against(&self, checkpoint: &StoredCheckpoint) {
        let size = u64::try_from(checkpoint.tree_size).unwrap_or(0);
        let tree = self.read_tree();
        if size > tree.size() {
            let found = tree.size();
            drop(tree);
            self.mark_broken(Integrity::EventsMissing { size, found });
            return;
        }
        let matches = tree
            .root(size)
            .ok()
            .zip(to_hash(&checkpoint.root_hash))
            .is_some_and(|(a, b)| a == b);
        drop(tree);
        if !matches {
            self.mark_broken(Integrity::CheckpointMismatch { size });
        }
    }

    /// Brings the tree up to the store, verifying each new event's bytes
    /// against its recorded leaf hash. Returns the tree size.
    pub async fn sync(&self) -> Result<u64, sqlx::Error> {
        let _guard = self.sync_lock.lock().await;
        self.sync_locked().await
    }

    async fn sync_locked(&self) -> Result<u64, sqlx::Error> {
        loop {
            let from = self.size();
            let rows = self
                .store
                .range(i64::try_from(from).unwrap_or(i64::MAX), SYNC_BATCH)
                .await?;
            if rows.is_empty() {
                return Ok(from);
            }
            let mut tree = self.tree.write().unwrap_or_else(|p| p.into_inner());
            for row in rows {
                let index = tree.size();
                if u64::try_from(row.idx).ok() != Some(index) {
                    // A gap: positions are dense, so an event was removed.
                    drop(tree);
                    self.mark_broken(Integrity::EventsMissing {
                        size: index + 1,
                        found: index,
                    });
                    return Ok(index);
                }
                let computed = leaf_hash(&row.payload);
                let recorded = to_hash(&row.leaf_hash).unwrap_or([0; 32]);
                if computed != recorded {
                    self.mark_broken(Integrity::EventAltered {
                        index,
                        event_id: row.event_id,
                    });
                }
                // The recorded hash is what checkpoints committed to; keep
                // it so proofs of other events stay valid.
                tree.push(recorded);
            }
        }
    }

    /// Appends events and brings the tree up to date.
    pub async fn append(&self, events: &[ValidEvent]) -> Result<Appended, LogError> {
        let done = self.store.append(events).await?;
        let _guard = self.sync_lock.lock().await;
        let contiguous = u64::try_from(done.first_index).is_ok_and(|first| first == self.size());
        if contiguous {
            // Nobody else appended in between: the new leaves are ours.
            let mut tree = self.tree.write().unwrap_or_else(|p| p.into_inner());
            for leaf in &done.leaves {
                tree.push(*leaf);
            }
        } else {
            self.sync_locked().await?;
        }
        Ok(done)
    }

    /// Signs and stores a checkpoint of the whole log as it is now. When
    /// this replica's key is new to the log, it first records the change and
    /// signs this checkpoint with the replaced key if it holds it.
    pub async fn issue_checkpoint(&self) -> Result<StoredCheckpoint, CheckpointError> {
        let latest = self.store.latest_checkpoint().await?;
        let signer = self.signer_for_next(latest.as_ref()).await?;
        let size = self.sync().await?;
        if let Some(previous) = &latest {
            self.check_against(previous);
        }
        if let Some(problem) = self.integrity() {
            return Err(LogError::Integrity(problem).into());
        }
        let root = self.read_tree().root(size)?;
        let now = Utc::now();
        let note = signer.sign(&Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
            time: now.timestamp(),
        });
        let tree_size = i64::try_from(size).unwrap_or(i64::MAX);
        self.store
            .insert_checkpoint(tree_size, &root, &note, now)
            .await?;
        self.saw_checkpoint(now);
        tracing::info!(tree_size = size, key = %signer.key_hash(), "audit checkpoint signed");
        Ok(StoredCheckpoint {
            tree_size,
            root_hash: root.to_vec(),
            signed_note: note,
            issued_at: now,
        })
    }

    /// The key that signs the next checkpoint. The log's current key is the
    /// one its last recorded change names, or (before any change) the one
    /// that signed the latest checkpoint. This replica's own key when it is
    /// the current one, except that the first checkpoint covering the change
    /// to it is signed by the replaced key, if held. A key the log has
    /// replaced signs nothing. A key new to the log is recorded as the
    /// current one first.
    async fn signer_for_next(
        &self,
        latest: Option<&StoredCheckpoint>,
    ) -> Result<&Signer, CheckpointError> {
        let own = self.signer.key_hash();
        let rotations: Vec<Rotation> = self
            .store
            .key_rotations()
            .await?
            .into_iter()
            .filter_map(|e| rotation::read(u64::try_from(e.idx).ok()?, &e.payload))
            .collect();
        let current = rotations
            .last()
            .map(|r| r.new_key.key_hash())
            .or_else(|| latest.and_then(|c| signers_of(&c.signed_note).first().copied()));
        let Some(current) = current else {
            return Ok(&self.signer);
        };
        if current == own {
            let covered = |r: &Rotation| {
                latest.is_some_and(|c| u64::try_from(c.tree_size).unwrap_or(0) > r.index)
            };
            return Ok(match rotations.last() {
                Some(last) if !covered(last) => {
                    self.held(last.replaced.hash()).unwrap_or(&self.signer)
                }
                _ => &self.signer,
            });
        }
        // Replaced already: by the change that names it as replaced, or by
        // the one after the change to it.
        if let Some(at) = rotations
            .iter()
            .rposition(|r| r.replaced.hash() == own || r.new_key.key_hash() == own)
        {
            let by = if rotations[at].new_key.key_hash() == own {
                rotations.get(at + 1)
            } else {
                rotations.get(at)
            };
            return Err(CheckpointError::KeyRetired {
                index: by.map_or(0, |r| r.index),
            });
        }
        let held = self.held(current);
        let replaced = match held {
            Some(key) => Replaced::Key(key.verifier()),
            None => Replaced::Hash(current),
        };
        let event = rotation::event(&self.trust_domain, &self.signer, &replaced);
        let valid = validate_batch(&[event], "audit", Utc::now())
            .map_err(|v| CheckpointError::OwnEvent(format!("{:?}", v.as_slice())))?;
        self.append(&valid).await?;
        match held {
            Some(key) => {
                tracing::warn!(
                    replaced = %current,
                    key = %own,
                    "audit signing key changed; the replaced key signs the handover checkpoint"
                );
                Ok(key)
            }
            None => {
                tracing::error!(
                    replaced = %current,
                    key = %own,
                    "audit signing key changed without a handover (the replaced key is not in audit.previous_signing_key_files): verifiers that trust only the replaced key will refuse checkpoints from here on; give them the new verifier key"
                );
                Ok(&self.signer)
            }
        }
    }

    /// The previous key with `hash`, if this replica holds it.
    fn held(&self, hash: KeyHash) -> Option<&Signer> {
        self.previous.iter().find(|key| key.key_hash() == hash)
    }

    /// The leaf hash of the event at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.read_tree().leaf(index)
    }

    /// The inclusion proof of leaf `index` in the tree of `size`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.read_tree().inclusion_proof(index, size)
    }

    /// The consistency proof between two sizes.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, ProofError> {
        self.read_tree().consistency_proof(first, second)
    }
}
