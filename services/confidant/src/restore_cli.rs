//! `confidant restore`: what to run after a database is restored from a
//! backup, so that the restore undoes nothing the audit log recorded.
//!
//! - `audit-log`: the audit service's database, restored, lacks the events
//!   appended since its backup, though checkpoints over them were signed
//!   and handed out. The events and checkpoints are put back from a
//!   verified export, at their positions, before the service starts, so
//!   new events do not take their places and fork the log.
//! - `reapply-shreds`: a backup of the vault's database holds every scope
//!   key and record key as it was then, wrapped by the KMS. Restored, it
//!   would bring back data crypto-shredded after the backup was taken: the
//!   KMS still unwraps those keys. The log records every destruction (the
//!   vault's allowed `vault.scope.shredded` and `vault.record.shredded`
//!   events), so a verified export of it says which keys must go again.
//!
//! Both use only what a signed checkpoint of the export covers, and the
//! export must verify as a whole against the log's key, so a forged or
//! edited file changes nothing.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use confidant_audit::domain::validate_event;
use confidant_audit::store::EventStore;
use confidant_proto::audit::v1::Outcome;
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::config::Config;
use confidant_runtime::error::Violations;
use confidant_runtime::portable::TransactError;
use confidant_vault::store::{self, VaultStore};
use serde_json::json;
use uuid::Uuid;

use crate::audit_cli::{VerifiedEvent, VerifiedEvents};
use crate::process::MigrationPolicy;

/// What a logged destruction destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Scope,
    Record,
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Target::Scope => "scope",
            Target::Record => "record",
        }
    }
}

/// One destruction the log records.
#[derive(Debug, Clone)]
struct Destruction {
    target: Target,
    id: Uuid,
    order: String,
    at: DateTime<Utc>,
    event_id: String,
    position: u64,
}

/// The vault's allowed destructions among `events`, in log order.
fn destructions(events: &[VerifiedEvent]) -> Vec<Destruction> {
    let mut found = Vec::new();
    for VerifiedEvent {
        index: position,
        event,
        ..
    } in events
    {
        if event.source_service != ServiceName::Vault.as_str()
            || event.outcome != Outcome::Allowed as i32
        {
            continue;
        }
        let target = match event.action.parse::<Action>() {
            Ok(Action::VaultScopeShredded) => Target::Scope,
            Ok(Action::VaultRecordShredded) => Target::Record,
            _ => continue,
        };
        let Some(resource) = &event.resource else {
            continue;
        };
        if resource.r#type != target.as_str() {
            continue;
        }
        let Ok(id) = Uuid::parse_str(&resource.id) else {
            continue;
        };
        let at = event
            .time
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
            .unwrap_or_else(Utc::now);
        found.push(Destruction {
            target,
            id,
            order: event
                .reason
                .strip_prefix("order-")
                .unwrap_or(&event.reason)
                .to_owned(),
            at,
            event_id: event.id.clone(),
            position: *position,
        });
    }
    found
}

/// What became of one destruction on this database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// The key was still there and is gone now.
    Reapplied,
    /// `--dry-run`: the key is still there.
    WouldReapply,
    /// The restored database had it destroyed already.
    AlreadyShredded,
    /// The restored database never held it (created after the backup).
    NotInDatabase,
}

impl Fate {
    fn as_str(self) -> &'static str {
        match self {
            Fate::Reapplied => "reapplied",
            Fate::WouldReapply => "would_reapply",
            Fate::AlreadyShredded => "already_shredded",
            Fate::NotInDatabase => "not_in_database",
        }
    }
}

/// Makes one destruction again if the database still holds the key.
async fn reapply(
    store: &VaultStore,
    trust_domain: &str,
    d: &Destruction,
    dry_run: bool,
) -> anyhow::Result<Fate> {
    let (statements, client_id, matter_id, category) = match d.target {
        Target::Scope => {
            let Some(scope) = store.scope(d.id).await? else {
                return Ok(Fate::NotInDatabase);
            };
            if scope.wrapped_key.is_none() {
                return Ok(Fate::AlreadyShredded);
            }
            (
                store::reapply_scope_shred(d.id, &d.order, d.at, &d.event_id),
                scope.client_id,
                scope.matter_id,
                scope.category,
            )
        }
        Target::Record => {
            let Some(record) = store.record(d.id).await? else {
                return Ok(Fate::NotInDatabase);
            };
            if record.wrapped_key.is_none() {
                return Ok(Fate::AlreadyShredded);
            }
            (
                vec![store::reapply_record_shred(d.id, &d.order, d.at)],
                record.client_id,
                record.matter_id,
                record.category,
            )
        }
    };
    if dry_run {
        return Ok(Fate::WouldReapply);
    }
    let event = EventBuilder::new(
        ServiceName::Vault,
        trust_domain,
        Action::VaultShredReapplied,
    )
    .resource(d.target.as_str(), &d.id.to_string())
    .scope(Some(client_id), matter_id)
    .category(&category)
    .outcome(Outcome::Allowed, &format!("event-{}", d.event_id))
    .build();
    match store.db().transact(statements, &[event]).await {
        Ok(_) => Ok(Fate::Reapplied),
        // Destroyed meanwhile (a running vault, or a second run).
        Err(TransactError::Unmet { .. }) => Ok(Fate::AlreadyShredded),
        Err(e) => Err(e.into()),
    }
}

/// Reapplies the destructions of the verified export `log` to the vault's
/// database of `config`; one JSON line per destruction and a summary on
/// `out`. With `dry_run`, only says what it would do.
pub async fn reapply_shreds(
    config: &Config,
    log: &Path,
    public_key: &str,
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // The log first: nothing is opened, let alone changed, for a log that
    // does not verify.
    let verified = crate::audit_cli::verified_events(log, public_key)?;
    let db =
        crate::process::open_database(config, ServiceName::Vault, MigrationPolicy::RequireApplied)
            .await?;
    let result = reapply_all(
        &VaultStore::new(db.clone()),
        &config.trust_domain,
        &verified,
        dry_run,
        out,
    )
    .await;
    db.close().await;
    result
}

async fn reapply_all(
    store: &VaultStore,
    trust_domain: &str,
    verified: &VerifiedEvents,
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let logged = destructions(&verified.events);
    let mut counts = [0u64; 4];
    for d in &logged {
        let outcome = reapply(store, trust_domain, d, dry_run)
            .await
            .with_context(|| {
                format!(
                    "{} {}: stopped; what is done stays done, and a second run goes on from there",
                    d.target.as_str(),
                    d.id
                )
            })?;
        counts[outcome as usize] += 1;
        writeln!(
            out,
            "{}",
            json!({
                "target": d.target.as_str(),
                "id": d.id,
                "result": outcome.as_str(),
                "logged_event": d.event_id,
                "log_position": d.position,
                "shredded_at": d.at.to_rfc3339(),
                "order": d.order,
            })
        )?;
    }
    writeln!(
        out,
        "{}",
        json!({
            "summary": {
                "logged_destructions": logged.len(),
                "reapplied": counts[Fate::Reapplied as usize],
                "would_reapply": counts[Fate::WouldReapply as usize],
                "already_shredded": counts[Fate::AlreadyShredded as usize],
                "not_in_database": counts[Fate::NotInDatabase as usize],
                "events_verified": verified.events.len(),
                "events_after_last_checkpoint": verified.uncovered,
            }
        })
    )?;
    if verified.uncovered > 0 {
        writeln!(
            out,
            "note: {} events after the log's last signed checkpoint were not used; \
             export the log again after its next checkpoint and run this again",
            verified.uncovered
        )?;
    }
    Ok(())
}

/// Events put back per transaction.
const RESTORE_BATCH: usize = 1000;

/// Puts back into the audit service's database, restored from a backup,
/// the events and signed checkpoints that the verified export `log` holds
/// beyond it, at the positions they had: the log is whole again and every
/// checkpoint it published still verifies, instead of new events taking
/// the lost ones' places (a fork of the log). Run it before the audit
/// service starts on the restored database. A summary on `out`; with
/// `dry_run`, only the summary (what would be put back).
pub async fn restore_audit_log(
    config: &Config,
    log: &Path,
    public_key: &str,
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let verified = crate::audit_cli::verified_events(log, public_key)?;
    let db =
        crate::process::open_database(config, ServiceName::Audit, MigrationPolicy::RequireApplied)
            .await?;
    let result = put_back(&EventStore::new(db.clone()), &verified, dry_run, out).await;
    db.close().await;
    result
}

async fn put_back(
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

#[cfg(test)]
mod tests {
    use super::*;
    use confidant_runtime::audit::EventBuilder;

    fn shred(
        action: Action,
        kind: &str,
        id: Uuid,
        outcome: Outcome,
    ) -> confidant_proto::audit::v1::AuditEvent {
        EventBuilder::new(ServiceName::Vault, "firm.example", action)
            .resource(kind, &id.to_string())
            .outcome(outcome, "order-o-1")
            .build()
    }

    #[test]
    fn only_the_vaults_allowed_destructions_count() {
        let (scope, record) = (Uuid::now_v7(), Uuid::now_v7());
        let mut held = shred(
            Action::VaultScopeShredded,
            "scope",
            Uuid::now_v7(),
            Outcome::Denied,
        );
        held.reason = "legal_hold".into();
        let mut elsewhere = shred(
            Action::VaultScopeShredded,
            "scope",
            Uuid::now_v7(),
            Outcome::Allowed,
        );
        elsewhere.source_service = "retention".into();
        let events = vec![
            (
                0,
                shred(Action::VaultScopeShredded, "scope", scope, Outcome::Allowed),
            ),
            (1, held),
            (2, elsewhere),
            (
                3,
                shred(
                    Action::VaultRecordCreated,
                    "record",
                    record,
                    Outcome::Allowed,
                ),
            ),
            (
                4,
                shred(
                    Action::VaultRecordShredded,
                    "record",
                    record,
                    Outcome::Allowed,
                ),
            ),
        ];
        let events: Vec<VerifiedEvent> = events
            .into_iter()
            .map(|(index, event)| VerifiedEvent {
                index,
                bytes: Vec::new(),
                leaf_hash: Vec::new(),
                event,
            })
            .collect();
        let found = destructions(&events);
        assert_eq!(
            found
                .iter()
                .map(|d| (d.target, d.id, d.position, d.order.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (Target::Scope, scope, 0, "o-1"),
                (Target::Record, record, 4, "o-1")
            ]
        );
    }
}
