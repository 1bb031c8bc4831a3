//! `confidant restore`: what to run after a database is restored from a
//! backup, so that the restore undoes nothing the audit log recorded.
//!
//! - `audit-log`: the audit service's database, restored, lacks the events
//!   appended since its backup, though checkpoints over them were signed
//!   and handed out. The events and checkpoints are put back from a
//!   verified export, at their positions, before the service starts, so
//!   new events do not take their places and fork the log.
//! - `vault`: a backup of the vault's database holds every scope key and
//!   record key as it was then, wrapped by the KMS. Restored, it would
//!   bring back data crypto-shredded after the backup was taken: the KMS
//!   still unwraps those keys. It would also carry out, as the vault
//!   starts, a pending destruction cancelled since, and forget one staged
//!   since or a return of originals. The log records each of these (the
//!   vault's allowed events), so a verified export of it says what to make
//!   again.
//!
//! - `identity`: a restored identity database gives back access taken away
//!   since its backup, revives sessions and brings back old credentials.
//!   Every revocation the log records is made again (and an enabling of a
//!   staff member after their last disabling); clients, matters and
//!   walls created since are created again (their events name a matter's
//!   classification and whom a wall screens from what), so that the
//!   vault's data under them is reachable and screened as before;
//!   sign-ins whose credentials changed since are locked, and every
//!   session ends.
//! - `retention`: a restored retention database (and a vault restored
//!   from the same backup) has lost the legal holds placed since, and its
//!   next sweep could destroy held data. The holds come back from the log;
//!   what the log cannot rebuild is listed, and disposals pause until a
//!   records manager has re-entered it.
//!
//! All use only what a signed checkpoint of the export covers, and the
//! export must verify as a whole against the log's key, so a forged or
//! edited file changes nothing.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use confidant_audit::store::EventStore;
use confidant_proto::audit::v1::{AuditEvent, Outcome, Resource};
use confidant_retention::store::RetentionStore;
use confidant_runtime::ServiceName;
use confidant_runtime::audit::Action;
use confidant_runtime::config::Config;
use confidant_vault::store::VaultStore;
use serde_json::json;

use crate::audit_cli::{VerifiedEvent, VerifiedEvents};
use crate::process::MigrationPolicy;

mod audit_log;
mod identity;
mod intake;
mod retention;
mod vault;

use audit_log::put_back;
use identity::reapply_identity_all;
use intake::reapply_intake_all;
use retention::reapply_retention_all;
use vault::{active_kms_key, reapply_all};

/// What to bring in line with the log after a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// The audit log itself: its lost events and checkpoints.
    AuditLog,
    /// The vault: destructions, staged destructions, returns of originals.
    Vault,
    /// Identity: revocations, sign-ins, sessions.
    Identity,
    /// Retention: legal holds, and a pause while the schedule is re-entered.
    Retention,
    /// Intake: withdrawn invitations; what it lost is listed.
    Intake,
}

/// Brings the database `what` of `config`, restored from a backup, in line
/// with the verified export `log` (see [`What`]): the log is read and
/// verified against `public_keys` before the database is opened, so a log
/// that does not verify changes nothing. One JSON line per logged change
/// and a summary on `out`; with `dry_run`, only says what it would do.
pub async fn restore(
    what: What,
    config: &Config,
    log: &Path,
    public_keys: &[String],
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let verified = crate::audit_cli::verified_events(log, public_keys)?;
    let service = match what {
        What::AuditLog => ServiceName::Audit,
        What::Vault => ServiceName::Vault,
        What::Identity => ServiceName::Identity,
        What::Retention => ServiceName::Retention,
        What::Intake => ServiceName::Intake,
    };
    let db =
        crate::process::open_database(config, service, MigrationPolicy::RequireApplied).await?;
    let trust_domain = &config.trust_domain;
    let result = match what {
        What::AuditLog => put_back(&EventStore::new(db.clone()), &verified, dry_run, out).await,
        What::Vault => {
            let window = chrono::Duration::seconds(
                i64::try_from(config.vault.destruction_window_seconds).unwrap_or(0),
            );
            let store = VaultStore::new(db.clone());
            let active = active_kms_key(config);
            reapply_all(
                &store,
                trust_domain,
                &verified,
                (window, active.as_deref()),
                dry_run,
                out,
            )
            .await
        }
        What::Identity => reapply_identity_all(&db, trust_domain, &verified, dry_run, out).await,
        What::Retention => {
            let store = RetentionStore::new(db.clone());
            reapply_retention_all(&store, trust_domain, &verified, dry_run, out).await
        }
        What::Intake => reapply_intake_all(&db, trust_domain, &verified, dry_run, out).await,
    };
    db.close().await;
    result
}

/// An allowed event of one service among the verified ones.
struct Allowed<'a> {
    position: u64,
    event: &'a AuditEvent,
    action: Action,
    resource: &'a Resource,
    at: DateTime<Utc>,
}

/// `service`'s allowed events among `events` with an action this version
/// knows and a resource, in log order.
fn allowed(events: &[VerifiedEvent], service: ServiceName) -> impl Iterator<Item = Allowed<'_>> {
    events.iter().filter_map(move |e| {
        let event = &e.event;
        if event.source_service != service.as_str() || event.outcome != Outcome::Allowed as i32 {
            return None;
        }
        Some(Allowed {
            position: e.index,
            event,
            action: event.action.parse().ok()?,
            resource: event.resource.as_ref()?,
            at: event
                .time
                .and_then(|t| std::time::SystemTime::try_from(t).ok())
                .map_or_else(Utc::now, DateTime::from),
        })
    })
}

/// One logged change as the commands report it.
struct Line {
    target: &'static str,
    id: String,
    change: &'static str,
    event_id: String,
    position: u64,
    at: DateTime<Utc>,
}

impl Line {
    /// Why a run stopped at it.
    fn stopped(&self) -> String {
        format!(
            "{} {} ({}): stopped; what is done stays done, and a second run goes on from there",
            self.target, self.id, self.change
        )
    }
}

/// The fates of the logged changes, written as they come.
struct Report<'a> {
    out: &'a mut dyn Write,
    counts: [u64; 5],
    lines: usize,
}

impl<'a> Report<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Self {
            out,
            counts: [0; 5],
            lines: 0,
        }
    }

    fn count(&self, fate: Fate) -> u64 {
        self.counts[fate as usize]
    }

    /// Writes one change's line, with `extra` fields.
    fn line(&mut self, line: &Line, fate: Fate, extra: serde_json::Value) -> anyhow::Result<()> {
        self.counts[fate as usize] += 1;
        self.lines += 1;
        let mut value = json!({
            "target": line.target,
            "id": line.id,
            "change": line.change,
            "result": fate.as_str(),
            "logged_event": line.event_id,
            "log_position": line.position,
            "logged_at": line.at.to_rfc3339(),
        });
        if let (Some(value), serde_json::Value::Object(extra)) = (value.as_object_mut(), extra) {
            value.extend(extra);
        }
        writeln!(self.out, "{value}")?;
        Ok(())
    }

    /// Writes the summary (the counts, `extra` fields) and the `notes`.
    fn finish(
        self,
        verified: &VerifiedEvents,
        extra: serde_json::Value,
        notes: &[String],
    ) -> anyhow::Result<()> {
        let mut summary = json!({
            "logged_changes": self.lines,
            "reapplied": self.count(Fate::Reapplied),
            "would_reapply": self.count(Fate::WouldReapply),
            "already_applied": self.count(Fate::AlreadyApplied),
            "not_in_database": self.count(Fate::NotInDatabase),
            "events_verified": verified.events.len(),
            "events_after_last_checkpoint": verified.uncovered,
        });
        if let (Some(summary), serde_json::Value::Object(extra)) = (summary.as_object_mut(), extra)
        {
            summary.extend(extra);
        }
        writeln!(self.out, "{}", json!({ "summary": summary }))?;
        for note in notes {
            writeln!(self.out, "note: {note}")?;
        }
        if verified.uncovered > 0 {
            writeln!(
                self.out,
                "note: {} events after the log's last signed checkpoint were not used; \
                 export the log again after its next checkpoint and run this again",
                verified.uncovered
            )?;
        }
        Ok(())
    }
}

/// What became of one logged change on this database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Made again.
    Reapplied,
    /// `--dry-run`: it would be made again.
    WouldReapply,
    /// The restored database shows it already.
    AlreadyApplied,
    /// The restored database never held the scope or record (created
    /// after the backup).
    NotInDatabase,
    /// Created after the backup and not in the restored database, and the
    /// log does not say enough to make it again (a wall, a record's
    /// corrected version).
    Lost,
}

impl Fate {
    fn as_str(self) -> &'static str {
        match self {
            Fate::Reapplied => "reapplied",
            Fate::WouldReapply => "would_reapply",
            Fate::AlreadyApplied => "already_applied",
            Fate::NotInDatabase => "not_in_database",
            Fate::Lost => "lost",
        }
    }
}

/// A change of identity's or retention's that the log records, as its
/// line in the report names it.
trait ReportedChange {
    /// The change's name in the report.
    fn as_str(&self) -> &'static str;
    /// What it concerns: a kind and an id.
    fn target(&self) -> (&'static str, String);
}

/// One change the log records (identity's or retention's): what, when,
/// and the event that records it.
#[derive(Debug, Clone)]
struct LoggedChange<C> {
    change: C,
    at: DateTime<Utc>,
    event_id: String,
    position: u64,
}

impl<C: ReportedChange> LoggedChange<C> {
    /// Its line in the report.
    fn line(&self) -> Line {
        let (target, id) = self.change.target();
        Line {
            target,
            id,
            change: self.change.as_str(),
            event_id: self.event_id.clone(),
            position: self.position,
            at: self.at,
        }
    }
}

/// Who acted, as an event names them (a staff id, a service's name).
fn actor_id(event: &AuditEvent) -> String {
    event
        .actor
        .as_ref()
        .map(|a| a.id.clone())
        .unwrap_or_default()
}

/// A report line's field naming what a change concerned that the restored
/// database does not hold.
fn not_in_database(missing: Vec<(&'static str, String)>) -> serde_json::Value {
    let missing: Vec<_> = missing
        .into_iter()
        .map(|(kind, id)| json!({ "type": kind, "id": id }))
        .collect();
    json!({ "not_in_database": missing })
}

/// The events of a log as an export that verified would give them.
#[cfg(test)]
fn verified(events: Vec<confidant_proto::audit::v1::AuditEvent>) -> Vec<VerifiedEvent> {
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| VerifiedEvent {
            index: index as u64,
            bytes: Vec::new(),
            leaf_hash: Vec::new(),
            event,
        })
        .collect()
}
