//! Fast decisions: the facts of a decision are cached for one second (the
//! bound on how long a change — a wall, a revoked assignment, a lapsed
//! attestation — can go unnoticed), and decision records reach the audit
//! outbox in batches instead of one write per decision.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use confidant_proto::audit::v1::AuditEvent;
use confidant_runtime::storage::Database;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::Facts;

/// How long cached facts are trusted. Half of the one-second bound on a
/// change taking effect everywhere: services that cache identity's allowed
/// decisions (the vault, retention) use the other half.
pub const FACTS_TTL: Duration = Duration::from_millis(500);
/// Most cached entries before the cache starts over.
const MAX_ENTRIES: usize = 100_000;

type Key = (Uuid, String, Option<Uuid>, Option<Uuid>);

/// Facts of recent decisions.
#[derive(Debug, Default)]
pub struct FactsCache {
    entries: Mutex<HashMap<Key, (Instant, Facts)>>,
}

impl FactsCache {
    /// Cached facts younger than [`FACTS_TTL`].
    pub fn get(
        &self,
        staff: Uuid,
        permission: &str,
        client: Option<Uuid>,
        matter: Option<Uuid>,
    ) -> Option<Facts> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&(staff, permission.to_owned(), client, matter))
            .filter(|(at, _)| at.elapsed() < FACTS_TTL)
            .map(|(_, f)| f.clone())
    }

    /// Forgets everything: this replica changed the directory. Other
    /// replicas' entries lapse within [`FACTS_TTL`].
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Remembers facts.
    pub fn put(
        &self,
        staff: Uuid,
        permission: &str,
        client: Option<Uuid>,
        matter: Option<Uuid>,
        facts: Facts,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (at, _)| at.elapsed() < FACTS_TTL);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            (staff, permission.to_owned(), client, matter),
            (Instant::now(), facts),
        );
    }
}

/// Hands decision records to a background writer.
#[derive(Debug, Clone)]
pub struct DecisionRecorder {
    tx: mpsc::Sender<AuditEvent>,
    db: Database,
}

/// Records written per transaction at most.
const BATCH: usize = 500;
/// Longest a record waits for its batch.
const LINGER: Duration = Duration::from_millis(50);

impl DecisionRecorder {
    /// A recorder and the task that writes its batches until `shutdown`,
    /// then drains what is left.
    pub fn new(
        db: Database,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(10_000);
        let writer_db = db.clone();
        let task = async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let stop = tokio::select! {
                    received = rx.recv_many(&mut batch, BATCH) => received == 0,
                    _ = shutdown.changed() => true,
                };
                if !stop {
                    // Let a batch fill for a moment under load.
                    let deadline = tokio::time::sleep(LINGER);
                    tokio::pin!(deadline);
                    while batch.len() < BATCH {
                        let room = BATCH - batch.len();
                        tokio::select! {
                            () = &mut deadline => break,
                            n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                        }
                    }
                } else {
                    rx.close();
                    while let Ok(e) = rx.try_recv() {
                        batch.push(e);
                    }
                }
                if !batch.is_empty() {
                    if let Err(err) = writer_db.transact(Vec::new(), &batch).await {
                        tracing::error!(error = %err, lost = batch.len(), "decision records not written");
                    }
                    batch.clear();
                }
                if stop {
                    return;
                }
            }
        };
        (Self { tx, db }, task)
    }

    /// Queues a record; when the queue is full, writes it at once.
    pub async fn record(&self, event: AuditEvent) -> Result<(), crate::store::StoreError> {
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(
                mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event),
            ) => {
                self.db.transact(Vec::new(), &[event]).await?;
                Ok(())
            }
        }
    }
}
