//! `confidant restore audit-log`: the events and checkpoints a restored
//! audit database lacks, put back from a verified export.

use std::io::Write;

use chrono::{DateTime, Utc};
use confidant_audit::domain::validate_event;
use confidant_audit::store::EventStore;
use confidant_runtime::error::Violations;
use serde_json::json;

use crate::audit_cli::VerifiedEvents;

/// Events put back per transaction.
const RESTORE_BATCH: usize = 1000;

/// Puts back into the audit service's database, restored from a backup,
/// the events and signed checkpoints that the verified export holds beyond
/// it, at the positions they had: the log is whole again and every
/// checkpoint it published still verifies, instead of new events taking
/// the lost ones' places (a fork of the log). Run it before the audit
/// service starts on the restored database. A summary on `out`; with
/// `dry_run`, only the summary (what would be put back).
pub(super) async fn put_back(
    store: &EventStore,
    verified: &VerifiedEvents,
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let covered = verified.events.len();
    let held = usize::try_from(store.count().await?).unwrap_or(0);
    // What the restored database holds must be the start of the exported
    // log, event for event.
    let shared = held.min(covered);
    let mut at = 0;
    while at < shared {
        let rows = store
            .range(
                i64::try_from(at).unwrap_or(i64::MAX),
                i64::try_from((shared - at).min(10_000)).unwrap_or(i64::MAX),
            )
            .await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            if usize::try_from(row.idx).ok() != Some(at) {
                anyhow::bail!(
                    "the restored log has no event at position {at}; nothing was put back"
                );
            }
            if row.leaf_hash != verified.events[at].leaf_hash {
                anyhow::bail!(
                    "the restored log and the export differ at position {at}: they are not the \
                     same log, one of them was altered, or the audit service appended new events \
                     to the restored database before this ran; nothing was put back"
                );
            }
            at += 1;
        }
    }
    let mut put = 0;
    if dry_run {
        put = covered.saturating_sub(held);
    } else if held < covered {
        let now = Utc::now();
        for chunk in verified.events[held..].chunks(RESTORE_BATCH) {
            let mut batch = Vec::with_capacity(chunk.len());
            for e in chunk {
                let mut v = Violations::new();
                let prefix = format!("event at position {}", e.index);
                let Some(mut valid) =
                    validate_event(&e.event, &e.event.source_service, now, &prefix, &mut v)
                else {
                    let problems: Vec<String> = v
                        .as_slice()
                        .iter()
                        .map(|f| format!("{}: {}", f.field, f.description))
                        .collect();
                    anyhow::bail!("{} (put back before it: {put})", problems.join("; "));
                };
                // The bytes the log committed to, whatever a new encoding
                // of them would be.
                valid.payload.clone_from(&e.bytes);
                batch.push(valid);
            }
            let first = chunk.first().map_or(0, |e| e.index);
            let first = i64::try_from(first).unwrap_or(i64::MAX);
            if !store.append_at(first, &batch).await? {
                anyhow::bail!(
                    "the audit log changed while events were put back (stop the audit service \
                     first); put back: {put}, and a second run goes on from there"
                );
            }
            put += batch.len();
        }
    }
    let size = held.max(covered);
    let latest = store.latest_checkpoint().await?.map_or(0, |c| c.tree_size);
    let mut checkpoints = 0;
    for (checkpoint, note) in &verified.checkpoints {
        let Ok(tree_size) = i64::try_from(checkpoint.size) else {
            continue;
        };
        if tree_size <= latest || usize::try_from(tree_size).map_or(true, |s| s > size) {
            continue;
        }
        if !dry_run {
            let issued = DateTime::from_timestamp(checkpoint.time, 0).unwrap_or_else(Utc::now);
            store
                .insert_checkpoint(tree_size, &checkpoint.root, note, issued)
                .await?;
        }
        checkpoints += 1;
    }
    writeln!(
        out,
        "{}",
        json!({
            "summary": {
                "dry_run": dry_run,
                "log_size_before": held,
                "events_put_back": put,
                "checkpoints_put_back": checkpoints,
                "log_size": size,
                "events_after_last_checkpoint": verified.uncovered,
            }
        })
    )?;
    if verified.uncovered > 0 {
        writeln!(
            out,
            "note: {} events after the export's last signed checkpoint were not put back: \
             nothing vouches for them",
            verified.uncovered
        )?;
    }
    Ok(())
}
