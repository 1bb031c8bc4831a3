//! Record look-ups shared among concurrent readers.
//!
//! Every read starts by loading its record's row. Under load many readers
//! wait at the same moment, each for one row; the fetcher takes whoever is
//! waiting and loads all their rows with one statement, so that the
//! database sees one round trip for a group of reads instead of one per
//! read. A look-up still starts only after its reader asked (nothing is
//! served from a copy kept from earlier), so a reader sees a shred or a
//! pending destruction committed before it asked, exactly as a look-up of
//! its own would. A lone reader's look-up goes out after one turn of the
//! scheduler, with any reader that asked in that turn.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::store::{RecordRow, StoreResult, VaultStore};

/// Most ids one statement asks for.
const MAX_IDS: usize = 256;

/// Statements in flight at once: while they run, the next readers gather
/// into the following group.
const IN_FLIGHT: usize = 2;

/// What a waiting reader is sent: its row (or that there is none), or
/// `Err(())` when the group's statement failed and the reader should look
/// its row up alone (and so see its own error).
type Answer = Result<Option<RecordRow>, ()>;

/// Loads records by id for concurrent readers, one statement per group.
#[derive(Debug, Clone)]
pub struct RecordFetch {
    gather: confidant_runtime::gather::Gather<(Uuid, oneshot::Sender<Answer>)>,
    store: VaultStore,
    counts: Arc<Counts>,
}

/// How many look-ups were asked for and in how many groups they went out.
#[derive(Debug, Default)]
struct Counts {
    asked: AtomicU64,
    groups: AtomicU64,
}

impl RecordFetch {
    /// A fetcher on the current runtime.
    pub fn start(store: VaultStore) -> Self {
        let counts = Arc::new(Counts::default());
        let (worker, counted) = (store.clone(), counts.clone());
        let kept = store.db().kept_connections(IN_FLIGHT);
        let gather = confidant_runtime::gather::Gather::new(
            confidant_runtime::gather::Bounds {
                max_weight: MAX_IDS,
                in_flight: IN_FLIGHT,
            },
            |_| 1,
            move |group: Vec<(Uuid, oneshot::Sender<Answer>)>| {
                counted
                    .asked
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                counted.groups.fetch_add(1, Ordering::Relaxed);
                let (store, kept) = (worker.clone(), kept.clone());
                async move { answer(&store, kept.as_ref(), group).await }
            },
        );
        Self {
            gather,
            store,
            counts,
        }
    }

    /// Look-ups asked for so far, and the groups (statements) they went
    /// out in.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.asked.load(Ordering::Relaxed),
            self.counts.groups.load(Ordering::Relaxed),
        )
    }

    /// The row of record `id`, if there is one.
    pub async fn record(&self, id: Uuid) -> StoreResult<Option<RecordRow>> {
        if let Some(Ok(row)) = self.gather.ask(id).await {
            return Ok(row);
        }
        self.store.record(id).await
    }
}

async fn answer(
    store: &VaultStore,
    kept: Option<&confidant_runtime::storage::KeptConnections>,
    group: Vec<(Uuid, oneshot::Sender<Answer>)>,
) {
    let mut ids: Vec<Uuid> = group.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    match store.records(&ids, kept).await {
        Ok(rows) => {
            let rows: HashMap<Uuid, RecordRow> = rows.into_iter().map(|r| (r.id, r)).collect();
            for (id, reply) in group {
                let _ = reply.send(Ok(rows.get(&id).cloned()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, ids = ids.len(), "grouped record look-up failed; each reader looks up alone");
            for (_, reply) in group {
                let _ = reply.send(Err(()));
            }
        }
    }
}
