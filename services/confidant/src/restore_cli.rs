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

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use confidant_audit::domain::validate_event;
use confidant_audit::store::EventStore;
use confidant_identity::restore::{self as identity_restore, Revocation};
use confidant_identity::store::{Grant, NewAttestation, NewMatter, WallException, WallMembers};
use confidant_intake::store::IntakeStore;
use confidant_proto::audit::v1::{ActorKind, AuditEvent, Outcome, Resource};
use confidant_retention::domain::Rules;
use confidant_retention::restore::{self as retention_restore, Movement};
use confidant_retention::store::{
    self as retention_store, HoldRow, RecordedTrigger, RetentionStore,
};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::config::Config;
use confidant_runtime::error::Violations;
use confidant_runtime::kms::same_key;
use confidant_runtime::portable::{Statement, TransactError};
use confidant_runtime::storage::Database;
use confidant_vault::store::{self as vault_store, ScopeState, VaultStore};
use serde_json::json;
use uuid::Uuid;

use crate::audit_cli::{VerifiedEvent, VerifiedEvents};
use crate::process::MigrationPolicy;

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

/// What a logged change concerns.
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

/// What the log says was done to a key or a scope, and is to be done again
/// on a database restored from a backup taken before it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// The key was destroyed, by this disposal order.
    Shred { order: String },
    /// The scope became pending destruction, by this order, until `due`,
    /// and still was at the end of the log.
    Schedule { order: String, due: DateTime<Utc> },
    /// The scope's pending destruction was cancelled, or suspended by a
    /// legal hold.
    Cancel,
    /// The scope's originals went back to the client: those stored before
    /// the return are originals no longer.
    ReturnOriginals,
    /// The record is the version that corrected record `supersedes`. Its
    /// ciphertext is not in the log: if the restored database lacks it, it
    /// is lost and the corrected version is current again.
    Correct { supersedes: Uuid },
}

impl Change {
    fn as_str(&self) -> &'static str {
        match self {
            Change::Shred { .. } => "shred",
            Change::Schedule { .. } => "schedule",
            Change::Cancel => "cancel",
            Change::ReturnOriginals => "return_originals",
            Change::Correct { .. } => "correct",
        }
    }

    /// The audit action that records its reapplication; none for a
    /// correction, which cannot be made again.
    fn reapplied(&self) -> Option<Action> {
        match self {
            Change::Shred { .. } => Some(Action::VaultShredReapplied),
            Change::Schedule { .. } => Some(Action::VaultScheduleReapplied),
            Change::Cancel => Some(Action::VaultCancellationReapplied),
            Change::ReturnOriginals => Some(Action::VaultOriginalsReturnReapplied),
            Change::Correct { .. } => None,
        }
    }
}

/// One change the log records.
#[derive(Debug, Clone)]
struct Logged {
    target: Target,
    id: Uuid,
    change: Change,
    at: DateTime<Utc>,
    event_id: String,
    position: u64,
}

/// The changes the vault's allowed events among `events` call for, in log
/// order: every destruction of a record; and for each scope the last word
/// of the log on its key — destroyed, pending destruction (with its due
/// time: the event's, or for an event that does not carry one its time
/// plus `default_window`), or no longer pending (cancelled, or suspended by
/// a legal hold); every return of a scope's originals; and every
/// correction.
fn logged_changes(events: &[VerifiedEvent], default_window: chrono::Duration) -> Vec<Logged> {
    // A slot per change; a scope's earlier words on its key are emptied by
    // its last.
    let mut changes: Vec<Option<Logged>> = Vec::new();
    // Per scope, the slot of the log's last word on its key.
    let mut last_word: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    for Allowed {
        position,
        event,
        action,
        resource,
        at,
    } in allowed(events, ServiceName::Vault)
    {
        let order = || {
            let reason = event.reason.strip_prefix("order-").unwrap_or(&event.reason);
            reason.split("_due-").next().unwrap_or(reason).to_owned()
        };
        let (target, change) = match action {
            Action::VaultRecordShredded => (Target::Record, Change::Shred { order: order() }),
            Action::VaultScopeShredded => (Target::Scope, Change::Shred { order: order() }),
            Action::VaultScopeDestructionScheduled => {
                let due = event
                    .reason
                    .split_once("_due-")
                    .and_then(|(_, due)| due.parse::<i64>().ok())
                    .and_then(|due| DateTime::from_timestamp(due, 0))
                    .unwrap_or(at + default_window);
                (
                    Target::Scope,
                    Change::Schedule {
                        order: order(),
                        due,
                    },
                )
            }
            Action::VaultScopeDestructionCancelled | Action::VaultScopeDestructionSuspended => {
                (Target::Scope, Change::Cancel)
            }
            Action::VaultOriginalsReturned => (Target::Scope, Change::ReturnOriginals),
            Action::VaultRecordCorrected => {
                let Some(supersedes) = event
                    .reason
                    .strip_prefix("supersedes-")
                    .and_then(|id| Uuid::parse_str(id).ok())
                else {
                    continue;
                };
                (Target::Record, Change::Correct { supersedes })
            }
            _ => continue,
        };
        // A document's correction names it as a document.
        let document = matches!(change, Change::Correct { .. }) && resource.r#type == "document";
        if resource.r#type != target.as_str() && !document {
            continue;
        }
        let Ok(id) = Uuid::parse_str(&resource.id) else {
            continue;
        };
        let on_key = target == Target::Scope && change != Change::ReturnOriginals;
        changes.push(Some(Logged {
            target,
            id,
            change,
            at,
            event_id: event.id.clone(),
            position,
        }));
        if on_key && let Some(earlier) = last_word.insert(id, changes.len() - 1) {
            changes[earlier] = None;
        }
    }
    changes.into_iter().flatten().collect()
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

/// Makes one logged change again if the database does not show it.
async fn reapply(
    store: &VaultStore,
    trust_domain: &str,
    c: &Logged,
    dry_run: bool,
) -> anyhow::Result<Fate> {
    let (statements, client_id, matter_id, category) = if c.target == Target::Record {
        let Some(record) = store.record(c.id).await? else {
            if let Change::Correct { supersedes } = &c.change
                && store.record(*supersedes).await?.is_some()
            {
                return Ok(Fate::Lost);
            }
            return Ok(Fate::NotInDatabase);
        };
        let Change::Shred { order } = &c.change else {
            return Ok(Fate::AlreadyApplied);
        };
        if record.wrapped_key.is_none() {
            return Ok(Fate::AlreadyApplied);
        }
        (
            vec![vault_store::reapply_record_shred(c.id, order, c.at)],
            record.client_id,
            record.matter_id,
            record.category,
        )
    } else {
        let Some(scope) = store.scope(c.id).await? else {
            return Ok(Fate::NotInDatabase);
        };
        let state = scope.state();
        let statements = match &c.change {
            // Only records are corrected.
            Change::Correct { .. } => return Ok(Fate::NotInDatabase),
            Change::Shred { .. } | Change::Schedule { .. } if state == ScopeState::Shredded => {
                return Ok(Fate::AlreadyApplied);
            }
            Change::Shred { order } => {
                vault_store::reapply_scope_shred(c.id, order, c.at, &c.event_id)
            }
            Change::Schedule { order, .. }
                if state == ScopeState::PendingDestruction
                    && scope.shred_order.as_deref() == Some(order.as_str()) =>
            {
                return Ok(Fate::AlreadyApplied);
            }
            Change::Schedule { order, due } => vault_store::reapply_schedule(c.id, order, *due),
            Change::Cancel if state != ScopeState::PendingDestruction => {
                return Ok(Fate::AlreadyApplied);
            }
            Change::Cancel => vec![vault_store::cancel_destruction(c.id).expecting(1)],
            Change::ReturnOriginals => {
                let stored_before: Vec<Statement> = store
                    .originals(c.id)
                    .await?
                    .into_iter()
                    .filter(|(_, created)| *created <= c.at)
                    .map(|(id, _)| vault_store::release_original(id).expecting(1))
                    .collect();
                if stored_before.is_empty() {
                    return Ok(Fate::AlreadyApplied);
                }
                stored_before
            }
        };
        (statements, scope.client_id, scope.matter_id, scope.category)
    };
    let Some(action) = c.change.reapplied() else {
        return Ok(Fate::AlreadyApplied);
    };
    if dry_run {
        return Ok(Fate::WouldReapply);
    }
    let event = EventBuilder::new(ServiceName::Vault, trust_domain, action)
        .resource(c.target.as_str(), &c.id.to_string())
        .scope(Some(client_id), matter_id)
        .category(&category)
        .outcome(Outcome::Allowed, &format!("event-{}", c.event_id))
        .build();
    match store.db().transact(statements, &[event]).await {
        Ok(_) => Ok(Fate::Reapplied),
        // Changed meanwhile (a running vault, or a second run).
        Err(TransactError::Unmet { .. }) => Ok(Fate::AlreadyApplied),
        Err(e) => Err(e.into()),
    }
}

/// The KMS key the vault wraps new scope keys under, as its configuration
/// names it: `kms.key_id`, or the newest key of the local keyring (read,
/// never created); `None` when it cannot tell.
fn active_kms_key(config: &Config) -> Option<String> {
    use confidant_runtime::config::KmsProvider;
    match config.kms.provider {
        Some(KmsProvider::Aws) => config.kms.key_id.clone(),
        Some(KmsProvider::Local) => crate::keys_cli::local_kms(config, "")
            .ok()
            .map(|kms| confidant_runtime::kms::Kms::active_key_id(&kms)),
        None => None,
    }
}

/// The KMS keys other than `active` that wrap live scope keys in the
/// restored database (the backup predates a rotation, or its rewrap), with
/// how many, and whether the log shows the key retired since.
async fn keys_to_rewrap(
    store: &VaultStore,
    active: &str,
    events: &[VerifiedEvent],
) -> anyhow::Result<Vec<(String, i64, bool)>> {
    let retired: Vec<&str> = allowed(events, ServiceName::Vault)
        .filter(|a| a.action == Action::VaultKmsKeyRetired)
        .map(|a| a.resource.id.as_str())
        .collect();
    Ok(store
        .kms_key_usage()
        .await?
        .into_iter()
        .filter(|(key, _)| !same_key(key, active))
        .map(|(key, scopes)| {
            let gone = retired.iter().any(|r| same_key(&key, r));
            (key, scopes, gone)
        })
        .collect())
}

async fn reapply_all(
    store: &VaultStore,
    trust_domain: &str,
    verified: &VerifiedEvents,
    (default_window, active): (chrono::Duration, Option<&str>),
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut report = Report::new(out);
    for c in logged_changes(&verified.events, default_window) {
        let line = Line {
            target: c.target.as_str(),
            id: c.id.to_string(),
            change: c.change.as_str(),
            event_id: c.event_id.clone(),
            position: c.position,
            at: c.at,
        };
        let fate = reapply(store, trust_domain, &c, dry_run)
            .await
            .with_context(|| line.stopped())?;
        let extra = match &c.change {
            Change::Shred { order } => json!({ "order": order }),
            Change::Schedule { order, due } => {
                json!({ "order": order, "due": due.to_rfc3339() })
            }
            Change::Correct { supersedes } => json!({ "supersedes": supersedes }),
            Change::Cancel | Change::ReturnOriginals => json!({}),
        };
        report.line(&line, fate, extra)?;
    }
    let lost = report.count(Fate::Lost);
    let mut notes = if lost > 0 {
        vec![format!(
            "{lost} corrections made after the backup are lost (their new versions were only in \
             the lost database), and the versions they corrected are current again: correct \
             each again (CorrectRecord, or for a document an upload naming it in `supersedes`)"
        )]
    } else {
        Vec::new()
    };
    let to_rewrap = match active {
        Some(active) => keys_to_rewrap(store, active, &verified.events).await?,
        None => Vec::new(),
    };
    if !to_rewrap.is_empty() {
        let scopes: i64 = to_rewrap.iter().map(|(_, n, _)| n).sum();
        notes.push(format!(
            "{scopes} scope keys are wrapped under KMS keys other than the active one, as they \
             were when the backup was taken: once the vault runs, rewrap them (confidant vault \
             rewrap) before those keys are retired"
        ));
        for (key, _, _) in to_rewrap.iter().filter(|(_, _, retired)| *retired) {
            notes.push(format!(
                "KMS key {key} was retired after the backup: enable it again for the rewrap (an \
                 AWS key: enable it, or cancel its deletion; a local key retired with \
                 retire-local-kms is gone, and the scopes under it cannot be read)"
            ));
        }
    }
    let keys: Vec<serde_json::Value> = to_rewrap
        .iter()
        .map(|(key, scopes, retired)| {
            json!({ "kms_key_id": key, "scopes": scopes, "retired_since_backup": retired })
        })
        .collect();
    report.finish(
        verified,
        json!({ "corrections_lost": lost, "kms_keys_to_rewrap": keys }),
        &notes,
    )
}

/// A logged change of a staff member's sign-in credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    /// Their password was set, by an administrator or by themselves.
    Password,
    /// They confirmed a TOTP authenticator.
    Totp,
    /// An administrator removed their TOTP authenticator.
    TotpRemoved,
}

impl Credential {
    /// Whether a later change of `other` supersedes this one: TOTP
    /// enrolments and removals follow one another.
    fn same_factor(self, other: Credential) -> bool {
        (self == Credential::Password) == (other == Credential::Password)
    }
}

/// What the log says was done in identity since a backup, to be made again
/// on its restored database (or reported lost, where its event does not say
/// enough).
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdentityChange {
    /// Access taken away (by hand or by an access review): made again.
    Revoke(Revocation),
    /// A disabled staff member was enabled again.
    Enable(Uuid),
    /// A staff member's e-mail address or name was changed: the log does
    /// not say to what (lost, unless the database shows it).
    Profile(Uuid),
    /// A sign-in credential of the staff member's was set or removed: if
    /// the restored database holds older credentials, they are locked.
    SignIn { staff: Uuid, change: Credential },
    /// A client was registered.
    Client(Uuid),
    /// Staff member `grant.staff` was assigned to `matter` (`grant` is
    /// `None` when its event was logged before grant events named whom:
    /// then it is lost).
    Assign {
        id: Uuid,
        matter: Uuid,
        grant: Option<Grant>,
    },
    /// `staff` was given `role` (`grant` as for an assignment).
    GrantRole {
        staff: Uuid,
        role: String,
        grant: Option<Grant>,
    },
    /// A matter was opened, for `client`, classified as `opened` names it
    /// (`None` when its event was logged before matter events named their
    /// classification: then it is lost).
    Matter {
        id: Uuid,
        client: Uuid,
        opened: Option<NewMatter>,
    },
    /// A wall was put up, screening these (nobody, when its event was
    /// logged before walls named their members: then it is lost).
    Wall { id: Uuid, members: WallMembers },
    /// A screened staff member was let through a wall for a matter, by
    /// `granted_by` (`exception` is `None` when its event was logged before
    /// exception events named wall, staff member, matter and expiry: then
    /// it is lost).
    Except {
        id: Uuid,
        exception: Option<WallException>,
        granted_by: String,
    },
    /// An NDA or training was attested (`None` when its event was logged
    /// before attestation events named what was attested: then it is
    /// lost).
    Attest {
        id: Uuid,
        attestation: Option<NewAttestation>,
    },
}

impl IdentityChange {
    /// The staff member a disabling or enabling concerns.
    fn enablement(&self) -> Option<Uuid> {
        match self {
            IdentityChange::Revoke(Revocation::StaffDisabled(staff))
            | IdentityChange::Enable(staff) => Some(*staff),
            _ => None,
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

impl ReportedChange for IdentityChange {
    fn as_str(&self) -> &'static str {
        match self {
            IdentityChange::Revoke(_) => "revoke",
            IdentityChange::Enable(_) => "enable",
            IdentityChange::Profile(_) => "update_staff",
            IdentityChange::SignIn { .. } => "reset_sign_in",
            IdentityChange::Client(_) => "client",
            IdentityChange::Assign { .. } => "assign",
            IdentityChange::GrantRole { .. } => "grant_role",
            IdentityChange::Matter { .. } => "matter",
            IdentityChange::Wall { .. } => "wall",
            IdentityChange::Except { .. } => "except",
            IdentityChange::Attest { .. } => "attest",
        }
    }

    fn target(&self) -> (&'static str, String) {
        match self {
            IdentityChange::Revoke(r) => r.resource(),
            IdentityChange::Enable(id) | IdentityChange::Profile(id) => ("staff", id.to_string()),
            IdentityChange::SignIn { staff, .. } => ("staff", staff.to_string()),
            IdentityChange::Client(id) => ("client", id.to_string()),
            IdentityChange::Assign { id, .. } => ("assignment", id.to_string()),
            IdentityChange::GrantRole { staff, role, .. } => {
                ("staff_role", format!("{staff}/{role}"))
            }
            IdentityChange::Matter { id, .. } => ("matter", id.to_string()),
            IdentityChange::Wall { id, .. } => ("wall", id.to_string()),
            IdentityChange::Except { id, .. } => ("wall_exception", id.to_string()),
            IdentityChange::Attest { id, .. } => ("attestation", id.to_string()),
        }
    }
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

/// The staff member a role event names in its reason (`staff-` and the id).
fn staff_in_reason(event: &AuditEvent) -> Option<Uuid> {
    event
        .reason
        .strip_prefix("staff-")
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// The identity service's allowed events among `events` that call for a
/// change, in log order; of the sign-in changes only each staff member's
/// last of each kind.
fn identity_changes(events: &[VerifiedEvent]) -> Vec<LoggedChange<IdentityChange>> {
    let mut changes: Vec<LoggedChange<IdentityChange>> = Vec::new();
    for Allowed {
        position,
        event,
        action,
        resource,
        at,
    } in allowed(events, ServiceName::Identity)
    {
        let id = Uuid::parse_str(&resource.id).ok();
        let change = match (action, id) {
            (Action::IdentityStaffDisabled, Some(id)) => {
                IdentityChange::Revoke(Revocation::StaffDisabled(id))
            }
            (Action::IdentityStaffEnabled, Some(id)) => IdentityChange::Enable(id),
            (Action::IdentityStaffUpdated, Some(id)) => IdentityChange::Profile(id),
            (Action::IdentityAssignmentRevoked, Some(id)) => {
                IdentityChange::Revoke(Revocation::Assignment(id))
            }
            (Action::IdentityWallExceptionRevoked, Some(id)) => {
                IdentityChange::Revoke(Revocation::WallException(id))
            }
            (Action::IdentityMatterClosed, Some(id)) => {
                IdentityChange::Revoke(Revocation::MatterClosed(id))
            }
            (Action::IdentityRoleRevoked, _) => {
                let Some(staff) = staff_in_reason(event) else {
                    continue;
                };
                IdentityChange::Revoke(Revocation::Role {
                    staff,
                    role: resource.id.clone(),
                })
            }
            (Action::IdentityPasswordSet | Action::IdentityPasswordChanged, Some(staff)) => {
                IdentityChange::SignIn {
                    staff,
                    change: Credential::Password,
                }
            }
            (Action::IdentityTotpEnrolled, Some(staff)) => IdentityChange::SignIn {
                staff,
                change: Credential::Totp,
            },
            (Action::IdentityTotpReset, Some(staff)) => IdentityChange::SignIn {
                staff,
                change: Credential::TotpRemoved,
            },
            (Action::IdentityClientCreated, Some(id)) => IdentityChange::Client(id),
            (Action::IdentityAssignmentGranted, Some(id)) => {
                let Ok(matter) = Uuid::parse_str(&resource.matter_id) else {
                    continue;
                };
                IdentityChange::Assign {
                    id,
                    matter,
                    grant: Grant::from_related(&event.related),
                }
            }
            (Action::IdentityRoleGranted, _) => {
                let Some(staff) = staff_in_reason(event) else {
                    continue;
                };
                IdentityChange::GrantRole {
                    staff,
                    role: resource.id.clone(),
                    grant: Grant::from_related(&event.related).filter(|g| g.staff == staff),
                }
            }
            (Action::IdentityMatterCreated, Some(id)) => {
                let Ok(client) = Uuid::parse_str(&resource.client_id) else {
                    continue;
                };
                IdentityChange::Matter {
                    id,
                    client,
                    opened: NewMatter::from_related(client, &event.related),
                }
            }
            (Action::IdentityWallCreated, Some(id)) => IdentityChange::Wall {
                id,
                members: WallMembers::from_related(&event.related),
            },
            (Action::IdentityWallExceptionGranted, Some(id)) => IdentityChange::Except {
                id,
                exception: WallException::from_related(&event.related),
                granted_by: event
                    .actor
                    .as_ref()
                    .map(|a| a.peer_identity.clone())
                    .unwrap_or_default(),
            },
            (Action::IdentityAttestationRecorded, Some(id)) => IdentityChange::Attest {
                id,
                attestation: NewAttestation::from_related(&event.related),
            },
            _ => continue,
        };
        // Only the last of a staff member's disablings and enablings counts.
        if let Some(staff) = change.enablement() {
            changes.retain(|c| c.change.enablement() != Some(staff));
        }
        // Only the last change of each credential counts.
        if let IdentityChange::SignIn { staff, change } = change {
            changes.retain(|c| {
                !matches!(c.change, IdentityChange::SignIn { staff: s, change: earlier }
                    if s == staff && earlier.same_factor(change))
            });
        }
        changes.push(LoggedChange {
            change,
            at,
            event_id: event.id.clone(),
            position,
        });
    }
    changes
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

/// Makes one logged identity change again if the database does not show it;
/// returns its fate and the fields its report line adds.
async fn reapply_identity(
    db: &Database,
    trust_domain: &str,
    c: &LoggedChange<IdentityChange>,
    dry_run: bool,
) -> anyhow::Result<(Fate, serde_json::Value)> {
    let mut related = Vec::new();
    let mut scope = None;
    let mut extra = json!({});
    let directory = confidant_identity::store::Directory::new(db.clone());
    let (statements, action) = match &c.change {
        IdentityChange::Client(id) => {
            if directory.client_exists(*id).await? {
                return Ok((Fate::AlreadyApplied, extra));
            }
            scope = Some((Some(*id), None));
            (
                vec![confidant_identity::store::client_created(*id, c.at)],
                Action::IdentityClientReapplied,
            )
        }
        IdentityChange::Assign { id, matter, grant } => {
            if directory.assignment_exists(*id).await? {
                return Ok((Fate::AlreadyApplied, extra));
            }
            let Some(grant) = grant else {
                return Ok((Fate::Lost, extra));
            };
            if !directory.matter_exists(*matter).await?
                || !directory.staff_exists(grant.staff).await?
            {
                return Ok((Fate::NotInDatabase, extra));
            }
            scope = Some((None, Some(*matter)));
            related = grant.related();
            (
                vec![grant.assignment(*id, *matter, c.at)],
                Action::IdentityGrantReapplied,
            )
        }
        IdentityChange::GrantRole { staff, role, grant } => {
            if identity_restore::role_granted_at(db, *staff, role, c.at).await? {
                return Ok((Fate::AlreadyApplied, extra));
            }
            let Some(grant) = grant else {
                return Ok((Fate::Lost, extra));
            };
            if !directory.staff_exists(*staff).await? {
                return Ok((Fate::NotInDatabase, extra));
            }
            related = grant.related();
            (
                vec![confidant_identity::store::role_granted(
                    *staff,
                    role,
                    c.at,
                    grant.expires,
                )],
                Action::IdentityGrantReapplied,
            )
        }
        IdentityChange::Matter { id, client, opened } => {
            if directory.matter_exists(*id).await? {
                return Ok((Fate::AlreadyApplied, extra));
            }
            let Some(opened) = opened else {
                return Ok((Fate::Lost, extra));
            };
            if !directory.client_exists(*client).await? {
                return Ok((Fate::NotInDatabase, extra));
            }
            let mut opened = opened.clone();
            if let Some(attorney) = opened.responsible
                && !directory.staff_exists(attorney).await?
            {
                // Created after the backup too: the matter opens without
                // one; someone is assigned instead.
                extra = not_in_database(vec![("staff", attorney.to_string())]);
                opened.responsible = None;
            }
            scope = Some((Some(*client), Some(*id)));
            related = opened.related();
            (
                vec![opened.opened(*id, c.at)],
                Action::IdentityMatterReapplied,
            )
        }
        IdentityChange::Wall { id, members } => {
            if directory.wall_exists(*id).await? {
                return Ok((Fate::AlreadyApplied, extra));
            }
            if members.is_empty() {
                return Ok((Fate::Lost, extra));
            }
            let (held, missing) = members.held_in(&directory).await?;
            if !missing.is_empty() {
                // Created after the backup too: none of them can act, or be
                // reached, until made again, and then under new ids.
                extra = not_in_database(missing.related());
            }
            if !held.screens() {
                return Ok((Fate::NotInDatabase, extra));
            }
            related = held.related();
            (held.put_up(*id, c.at), Action::IdentityWallReapplied)
        }
        IdentityChange::Except {
            id,
            exception,
            granted_by,
        } => {
            if directory.wall_exception_exists(*id).await? {
                return Ok((Fate::AlreadyApplied, extra));
            }
            let Some(exception) = exception else {
                return Ok((Fate::Lost, extra));
            };
            let missing = exception.missing_from(&directory).await?;
            if !missing.is_empty() {
                // Made after the backup too (and not made again, or made
                // again under a new id): the exception lets no one through.
                return Ok((Fate::NotInDatabase, not_in_database(missing)));
            }
            related = exception.related();
            let reason = format!(
                "granted again by `confidant restore identity` from audit event {}: the \
                 reason given is not in the log",
                c.event_id
            );
            (
                vec![exception.granted(*id, c.at, &reason, granted_by)],
                Action::IdentityWallExceptionReapplied,
            )
        }
        IdentityChange::Attest { id, attestation } => {
            if directory.attestation_exists(*id).await? {
                return Ok((Fate::AlreadyApplied, extra));
            }
            let Some(attestation) = attestation else {
                return Ok((Fate::Lost, extra));
            };
            if !directory.staff_exists(attestation.staff_id).await? {
                return Ok((Fate::NotInDatabase, extra));
            }
            related = attestation.related();
            (
                vec![attestation.recorded(*id, c.at)],
                Action::IdentityAttestationReapplied,
            )
        }
        IdentityChange::SignIn { staff, change } => {
            let Some((hash, password_at, totp_at)) =
                identity_restore::sign_in_set(db, *staff).await?
            else {
                return Ok((Fate::NotInDatabase, extra));
            };
            // Set, or set again by an administrator, since the logged
            // change: the row carries the event's time (to the
            // microsecond PostgreSQL keeps).
            let leeway = chrono::Duration::milliseconds(1);
            let held_since = |t: DateTime<Utc>| t + leeway >= c.at;
            // A removal holds while no authenticator, or one confirmed
            // since, is on the row.
            let current = hash == identity_restore::LOCKED_HASH
                || held_since(password_at)
                || match change {
                    Credential::Password => false,
                    Credential::Totp => totp_at.is_some_and(held_since),
                    Credential::TotpRemoved => totp_at.is_none_or(held_since),
                };
            if current {
                return Ok((Fate::AlreadyApplied, extra));
            }
            (
                vec![identity_restore::lock_sign_in(*staff)],
                Action::IdentitySignInReset,
            )
        }
        IdentityChange::Profile(staff) => {
            if !directory.staff_exists(*staff).await? {
                return Ok((Fate::NotInDatabase, extra));
            }
            // The row carries the time of its last change, the event's own.
            let leeway = chrono::Duration::milliseconds(1);
            let changed = directory.staff_updated_at(*staff).await?;
            return Ok((
                if changed.is_some_and(|t| t + leeway >= c.at) {
                    Fate::AlreadyApplied
                } else {
                    Fate::Lost
                },
                extra,
            ));
        }
        IdentityChange::Enable(staff) => {
            match Revocation::StaffDisabled(*staff).in_force(db).await? {
                None => return Ok((Fate::NotInDatabase, extra)),
                Some(true) => return Ok((Fate::AlreadyApplied, extra)),
                Some(false) => {}
            }
            (
                vec![confidant_identity::store::staff_enabled(*staff).expecting(1)],
                Action::IdentityStaffEnabledReapplied,
            )
        }
        IdentityChange::Revoke(revocation) => {
            match revocation.in_force(db).await? {
                None => return Ok((Fate::NotInDatabase, extra)),
                Some(false) => return Ok((Fate::AlreadyApplied, extra)),
                Some(true) => {}
            }
            (
                vec![revocation.statement(c.at)],
                Action::IdentityRevocationReapplied,
            )
        }
    };
    if dry_run {
        return Ok((Fate::WouldReapply, extra));
    }
    let (kind, id) = c.change.target();
    let mut event = EventBuilder::new(ServiceName::Identity, trust_domain, action)
        .resource(kind, &id)
        .related(related)
        .outcome(Outcome::Allowed, &format!("event-{}", c.event_id));
    if let Some((client, matter)) = scope {
        event = event.scope(client, matter);
    }
    let event = event.build();
    let fate = match db.transact(statements, &[event]).await {
        Ok(_) => Fate::Reapplied,
        Err(TransactError::Unmet { .. }) => Fate::AlreadyApplied,
        Err(e) => return Err(e.into()),
    };
    Ok((fate, extra))
}

/// Sessions ended per transaction.
const SESSION_BATCH: i64 = 500;

/// Ends every session the restored database shows live: their refresh
/// tokens may have been used, or the sessions ended, after the backup.
/// Returns how many (with `dry_run`, how many it would end).
async fn end_live_sessions(
    db: &Database,
    trust_domain: &str,
    dry_run: bool,
) -> anyhow::Result<u64> {
    if dry_run {
        return Ok(identity_restore::live_sessions(db, i64::MAX).await?.len() as u64);
    }
    let mut ended = 0;
    loop {
        let sessions = identity_restore::live_sessions(db, SESSION_BATCH).await?;
        if sessions.is_empty() {
            return Ok(ended);
        }
        let now = Utc::now();
        let mut statements = Vec::with_capacity(sessions.len());
        let mut events = Vec::with_capacity(sessions.len());
        for (session, _staff) in &sessions {
            statements.push(confidant_identity::store::session_ended(
                *session, "restore", now,
            ));
            events.push(
                EventBuilder::new(
                    ServiceName::Identity,
                    trust_domain,
                    Action::IdentitySessionRevoked,
                )
                .resource("session", &session.to_string())
                .outcome(Outcome::Allowed, "restore")
                .build(),
            );
        }
        db.transact(statements, &events).await?;
        ended += sessions.len() as u64;
    }
}

async fn reapply_identity_all(
    db: &Database,
    trust_domain: &str,
    verified: &VerifiedEvents,
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut report = Report::new(out);
    let (mut walls_lost, mut matters_lost, mut grants_lost) = (0u64, 0u64, 0u64);
    let (mut attestations_lost, mut exceptions_lost, mut locked) = (0u64, 0u64, 0u64);
    let mut profiles_lost = 0u64;
    for c in identity_changes(&verified.events) {
        let line = c.line();
        let (fate, extra) = reapply_identity(db, trust_domain, &c, dry_run)
            .await
            .with_context(|| line.stopped())?;
        if matches!(c.change, IdentityChange::SignIn { .. })
            && matches!(fate, Fate::Reapplied | Fate::WouldReapply)
        {
            locked += 1;
        }
        if fate == Fate::Lost {
            match c.change {
                IdentityChange::Matter { .. } => matters_lost += 1,
                IdentityChange::Assign { .. } | IdentityChange::GrantRole { .. } => {
                    grants_lost += 1;
                }
                IdentityChange::Attest { .. } => attestations_lost += 1,
                IdentityChange::Except { .. } => exceptions_lost += 1,
                IdentityChange::Profile(_) => profiles_lost += 1,
                _ => walls_lost += 1,
            }
        }
        report.line(&line, fate, extra)?;
    }
    let sessions = end_live_sessions(db, trust_domain, dry_run).await?;
    let mut notes = Vec::new();
    if walls_lost > 0 {
        notes.push(format!(
            "{walls_lost} walls put up after the backup are not in the restored database, and \
             their events, logged before walls named their members, do not say whom they screen \
             from what: put them up again (CreateWall) before staff sign in"
        ));
    }
    if matters_lost > 0 {
        notes.push(format!(
            "{matters_lost} matters opened after the backup are not in the restored database, \
             and their events, logged before matter events named their classification, do not \
             say how they were classified: the vault's data under them stays, but no one is \
             allowed to it until they are in the directory again"
        ));
    }
    if grants_lost > 0 {
        notes.push(format!(
            "{grants_lost} assignments and roles granted after the backup are not in the restored \
             database, and their events, logged before grant events named whom and until when, \
             cannot make them again: grant them anew"
        ));
    }
    if attestations_lost > 0 {
        notes.push(format!(
            "{attestations_lost} NDA and training attestations recorded after the backup are not \
             in the restored database, and their events, logged before attestation events named \
             what was attested, cannot record them again: until they are recorded anew \
             (RecordAttestation), the staff concerned are refused client data"
        ));
    }
    if locked > 0 {
        notes.push(format!(
            "{locked} staff members' sign-in {} locked (their password or TOTP changed after the \
             backup): an administrator sets a new password (SetPassword), then they enrol TOTP \
             again; `confidant directory staff` lists them as SIGN_IN_STATE_LOCKED until then",
            if dry_run { "would be" } else { "is" }
        ));
    }
    if profiles_lost > 0 {
        notes.push(format!(
            "{profiles_lost} staff members' e-mail address or name changed after the backup, and \
             the log does not say to what (it names no e-mail address, on purpose): change them \
             again (UpdateStaffMember, `confidant directory update-staff`); until then they sign \
             in with their old address"
        ));
    }
    if exceptions_lost > 0 {
        notes.push(format!(
            "{exceptions_lost} wall exceptions granted after the backup are not in the restored \
             database, and their events, logged before exception events named whom they let \
             through for what, cannot grant them again: the staff concerned stay behind the \
             wall until granted anew (GrantWallException)"
        ));
    }
    report.finish(
        verified,
        json!({
            "walls_lost": walls_lost,
            "wall_exceptions_lost": exceptions_lost,
            "staff_updates_lost": profiles_lost,
            "attestations_lost": attestations_lost,
            "matters_lost": matters_lost,
            "grants_lost": grants_lost,
            "sessions_ended": if dry_run { 0 } else { sessions },
            "sessions_to_end": if dry_run { sessions } else { 0 },
        }),
        &notes,
    )
}

/// What the log records of intake since a backup that its restored
/// database may lack.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IntakeChange {
    /// An invitation was withdrawn, by `by`: withdrawn again.
    Withdraw { id: Uuid, by: String },
    /// An invitation was created: its secret's hash was only in the lost
    /// database, so its link cannot work again (lost).
    Invite(Uuid),
    /// A client's answers were submitted: they are in the vault, but the
    /// submission that refers to them was only in the lost database (lost).
    Submit(Uuid),
}

impl ReportedChange for IntakeChange {
    fn as_str(&self) -> &'static str {
        match self {
            IntakeChange::Withdraw { .. } => "revoke",
            IntakeChange::Invite(_) => "invite",
            IntakeChange::Submit(_) => "submit",
        }
    }

    fn target(&self) -> (&'static str, String) {
        match self {
            IntakeChange::Withdraw { id, .. } | IntakeChange::Invite(id) => {
                ("invitation", id.to_string())
            }
            IntakeChange::Submit(id) => ("submission", id.to_string()),
        }
    }
}

/// Intake's changes in the log, in log order.
fn intake_changes(events: &[VerifiedEvent]) -> Vec<LoggedChange<IntakeChange>> {
    allowed(events, ServiceName::Intake)
        .filter_map(|e| {
            let id = Uuid::parse_str(&e.resource.id).ok()?;
            let change = match e.action {
                Action::IntakeInvitationRevoked => IntakeChange::Withdraw {
                    id,
                    by: actor_id(e.event),
                },
                Action::IntakeInvitationCreated => IntakeChange::Invite(id),
                Action::IntakeSubmissionReceived => IntakeChange::Submit(id),
                _ => return None,
            };
            Some(LoggedChange {
                change,
                at: e.at,
                event_id: e.event.id.clone(),
                position: e.position,
            })
        })
        .collect()
}

/// Makes one logged intake change again on `store`'s database, or says
/// what became of it.
async fn reapply_intake(
    store: &IntakeStore,
    trust_domain: &str,
    c: &LoggedChange<IntakeChange>,
    dry_run: bool,
) -> anyhow::Result<Fate> {
    let (id, by) = match &c.change {
        IntakeChange::Invite(id) => {
            return Ok(if store.invitation(*id).await?.is_some() {
                Fate::AlreadyApplied
            } else {
                Fate::Lost
            });
        }
        IntakeChange::Submit(id) => {
            return Ok(if store.submission(*id).await?.is_some() {
                Fate::AlreadyApplied
            } else {
                Fate::Lost
            });
        }
        IntakeChange::Withdraw { id, by } => (*id, by),
    };
    let Some(invitation) = store.invitation(id).await? else {
        return Ok(Fate::NotInDatabase);
    };
    if invitation.revoked_at.is_some() || invitation.submitted_at.is_some() {
        return Ok(Fate::AlreadyApplied);
    }
    if dry_run {
        return Ok(Fate::WouldReapply);
    }
    let me = ServiceName::Intake.spiffe_id(trust_domain);
    let event = EventBuilder::new(
        ServiceName::Intake,
        trust_domain,
        Action::IntakeInvitationRevocationReapplied,
    )
    .actor(ActorKind::Service, &me, &me)
    .resource("invitation", &id.to_string())
    .scope(Some(invitation.client_id), Some(invitation.matter_id))
    .outcome(Outcome::Allowed, &format!("event-{}", c.event_id))
    .build();
    store
        .db()
        .transact(
            vec![confidant_intake::store::invitation_revoked(id, by, c.at)],
            &[event],
        )
        .await?;
    Ok(Fate::Reapplied)
}

async fn reapply_intake_all(
    db: &Database,
    trust_domain: &str,
    verified: &VerifiedEvents,
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let store = IntakeStore::new(db.clone());
    let mut report = Report::new(out);
    let (mut invitations_lost, mut submissions_lost) = (0u64, 0u64);
    for c in intake_changes(&verified.events) {
        let line = c.line();
        let fate = reapply_intake(&store, trust_domain, &c, dry_run)
            .await
            .with_context(|| line.stopped())?;
        match (fate, &c.change) {
            (Fate::Lost, IntakeChange::Invite(_)) => invitations_lost += 1,
            (Fate::Lost, IntakeChange::Submit(_)) => submissions_lost += 1,
            _ => {}
        }
        report.line(&line, fate, json!({}))?;
    }
    let mut notes = Vec::new();
    if invitations_lost > 0 {
        notes.push(format!(
            "{invitations_lost} invitations created after the backup are not in the restored \
             database: their links no longer work (clients are told the invitation is not \
             found); invite those clients again"
        ));
    }
    if submissions_lost > 0 {
        notes.push(format!(
            "{submissions_lost} forms submitted after the backup are not in the restored database: \
             the answers they stored stay in the vault (the submission's audit event names the \
             client and matter), but intake no longer lists them for review; ask those clients \
             to submit again, or read the records in the vault"
        ));
    }
    report.finish(
        verified,
        json!({
            "invitations_lost": invitations_lost,
            "submissions_lost": submissions_lost,
        }),
        &notes,
    )
}

/// An event of the retention service's own, recording what a restore
/// did to its database.
fn retention_restored(trust_domain: &str, action: Action) -> EventBuilder {
    let me = ServiceName::Retention.spiffe_id(trust_domain);
    EventBuilder::new(ServiceName::Retention, trust_domain, action).actor(
        ActorKind::Service,
        &me,
        &me,
    )
}

/// What the log records of retention since a backup that its restored
/// database may lack.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RetentionChange {
    /// A legal hold placed and not released by the end of the log: placed
    /// again if the database lacks it. A hold over named scopes comes back
    /// over the `scopes` its event names; one logged before holds named
    /// their scopes (`scoped`, naming none) over all its client's scopes.
    Hold {
        id: Uuid,
        client_id: Uuid,
        matter_id: Option<Uuid>,
        category: Option<String>,
        scopes: Vec<Uuid>,
        placed_by: String,
    },
    /// A hold released: if the database still shows it in force, it stays
    /// so until released again (the safe side).
    Release(Uuid),
    /// A policy created or changed (to this version), by `by`: made again
    /// if the database holds an older version or none (`rules` is `None`
    /// when its event was logged before policy events named their rules:
    /// then it is lost).
    Policy {
        id: Uuid,
        version: i32,
        rules: Option<Rules>,
        by: String,
    },
    /// A trigger event recorded for this client and matter: recorded again
    /// if the database lacks it (`recorded` is `None` when its event was
    /// logged before trigger events named it and its date: then it is
    /// lost).
    Trigger {
        client_id: String,
        matter_id: Option<Uuid>,
        recorded: Option<RecordedTrigger>,
        recorded_by: String,
    },
    /// A certificate issued (of disposal, or of a record's erasure).
    Certificate(Uuid),
    /// The erasure of one record asked for: not in a database restored
    /// from before it, it must be asked for again (`confidant restore
    /// vault` makes again the shreds the vault had made).
    Erasure(Uuid),
    /// A physical item moved (or was registered), by staff member `staff`:
    /// made again on the register if its custody log lacks it.
    Item {
        id: Uuid,
        movement: Movement,
        staff: String,
    },
    /// A storage location created (its event names no site or room: one
    /// the database lacks is lost).
    Location(Uuid),
}

impl RetentionChange {
    /// Whether it concerns the register of physical records, not the
    /// disposal schedule.
    fn is_physical(&self) -> bool {
        matches!(
            self,
            RetentionChange::Item { .. } | RetentionChange::Location(_)
        )
    }
}

impl ReportedChange for RetentionChange {
    fn as_str(&self) -> &'static str {
        match self {
            RetentionChange::Hold { .. } => "place_hold",
            RetentionChange::Release(_) => "release_hold",
            RetentionChange::Policy { .. } => "policy",
            RetentionChange::Trigger { .. } => "trigger",
            RetentionChange::Certificate(_) => "certificate",
            RetentionChange::Erasure(_) => "erasure",
            RetentionChange::Item { movement, .. } => match movement {
                Movement::Registered => "register",
                Movement::CheckedOut { .. } => "check_out",
                Movement::CheckedIn { .. } => "check_in",
                Movement::Transferred { .. } => "transfer",
                Movement::Returned => "return",
                Movement::Destroyed { .. } => "destroy",
            },
            RetentionChange::Location(_) => "location",
        }
    }

    fn target(&self) -> (&'static str, String) {
        match self {
            RetentionChange::Hold { id, .. } | RetentionChange::Release(id) => {
                ("hold", id.to_string())
            }
            RetentionChange::Policy { id, .. } => ("policy", id.to_string()),
            RetentionChange::Certificate(id) => ("certificate", id.to_string()),
            RetentionChange::Erasure(id) => ("erasure", id.to_string()),
            RetentionChange::Item { id, .. } => ("item", id.to_string()),
            RetentionChange::Location(id) => ("location", id.to_string()),
            RetentionChange::Trigger {
                client_id,
                recorded,
                ..
            } => (
                "trigger",
                recorded
                    .as_ref()
                    .map_or_else(|| client_id.clone(), |r| r.id.to_string()),
            ),
        }
    }
}

/// The retention service's allowed events among `events` that may be
/// missing from a restored database, in log order; a hold placed and
/// released within the log is neither placed nor released again.
fn retention_changes(events: &[VerifiedEvent]) -> Vec<LoggedChange<RetentionChange>> {
    let mut changes: Vec<LoggedChange<RetentionChange>> = Vec::new();
    for Allowed {
        position,
        event,
        action,
        resource,
        at,
    } in allowed(events, ServiceName::Retention)
    {
        let id = Uuid::parse_str(&resource.id).ok();
        let change = match (action, id) {
            (Action::RetentionHoldPlaced, Some(id)) => {
                let Ok(client_id) = Uuid::parse_str(&resource.client_id) else {
                    continue;
                };
                let scoped = event.reason == "scoped";
                RetentionChange::Hold {
                    id,
                    client_id,
                    matter_id: Uuid::parse_str(&resource.matter_id)
                        .ok()
                        .filter(|_| !scoped),
                    category: (!scoped && !resource.data_category.is_empty())
                        .then(|| resource.data_category.clone()),
                    scopes: event
                        .related
                        .iter()
                        .filter(|r| scoped && r.r#type == "scope")
                        .filter_map(|r| Uuid::parse_str(&r.id).ok())
                        .collect(),
                    placed_by: actor_id(event),
                }
            }
            (Action::RetentionHoldReleased, Some(id)) => {
                let before = changes.len();
                changes.retain(|c| !matches!(c.change, RetentionChange::Hold { id: placed, .. } if placed == id));
                if changes.len() < before {
                    continue;
                }
                RetentionChange::Release(id)
            }
            (Action::RetentionPolicyCreated | Action::RetentionPolicyUpdated, Some(id)) => {
                RetentionChange::Policy {
                    id,
                    version: if action == Action::RetentionPolicyCreated {
                        1
                    } else {
                        event
                            .reason
                            .strip_prefix("version-")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(i32::MAX)
                    },
                    rules: Rules::from_related(&resource.data_category, &event.related),
                    by: actor_id(event),
                }
            }
            (Action::RetentionTriggerRecorded, _) => RetentionChange::Trigger {
                client_id: resource.client_id.clone(),
                matter_id: Uuid::parse_str(&resource.matter_id).ok(),
                recorded: RecordedTrigger::from_related(&event.reason, &event.related),
                recorded_by: actor_id(event),
            },
            (Action::RetentionCertificateIssued, Some(id)) => RetentionChange::Certificate(id),
            (Action::RetentionErasureRequested, Some(id)) => RetentionChange::Erasure(id),
            (Action::RetentionLocationCreated, Some(id)) => RetentionChange::Location(id),
            (
                Action::RetentionItemRegistered
                | Action::RetentionItemCheckedOut
                | Action::RetentionItemCheckedIn
                | Action::RetentionItemTransferred
                | Action::RetentionItemReturned
                | Action::RetentionItemDestroyed,
                Some(id),
            ) => {
                let named =
                    |kind: &str| confidant_runtime::audit::related_named(&event.related, kind);
                let location = named("location").and_then(|l| Uuid::parse_str(l).ok());
                RetentionChange::Item {
                    id,
                    movement: match action {
                        Action::RetentionItemRegistered => Movement::Registered,
                        Action::RetentionItemCheckedOut => Movement::CheckedOut {
                            due_back: named("due_back_at")
                                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                                .map(|t| t.with_timezone(&Utc)),
                        },
                        Action::RetentionItemCheckedIn => Movement::CheckedIn { location },
                        Action::RetentionItemTransferred => Movement::Transferred { location },
                        Action::RetentionItemReturned => Movement::Returned,
                        _ => Movement::Destroyed {
                            certificate: Uuid::parse_str(&event.reason).ok(),
                        },
                    },
                    staff: actor_id(event),
                }
            }
            _ => continue,
        };
        changes.push(LoggedChange {
            change,
            at,
            event_id: event.id.clone(),
            position,
        });
    }
    changes
}

/// What the restored database shows of one logged retention change; holds
/// it lacks are placed again (unless `dry_run`).
async fn reapply_retention(
    store: &RetentionStore,
    trust_domain: &str,
    c: &LoggedChange<RetentionChange>,
    newest_trigger: Option<DateTime<Utc>>,
    dry_run: bool,
    extra: &mut serde_json::Value,
) -> anyhow::Result<Fate> {
    let db = store.db();
    let held = match &c.change {
        RetentionChange::Hold { id, .. } | RetentionChange::Release(id) => store.hold(*id).await?,
        _ => None,
    };
    Ok(match &c.change {
        RetentionChange::Hold {
            id,
            client_id,
            matter_id,
            category,
            scopes,
            placed_by,
        } => {
            if held.is_some() {
                return Ok(Fate::AlreadyApplied);
            }
            if dry_run {
                return Ok(Fate::WouldReapply);
            }
            let hold = HoldRow {
                id: *id,
                reason: "placed again from the audit log after a restore; the original \
                         reason is with whoever placed it"
                    .into(),
                client_id: *client_id,
                matter_id: *matter_id,
                category: category.clone(),
                placed_by: placed_by.clone(),
                placed_at: c.at,
                in_vault: 0,
                released_at: None,
                scoped: i32::from(!scopes.is_empty()),
                scope_ids: scopes.clone(),
            };
            let mut event = retention_restored(trust_domain, Action::RetentionHoldRestored)
                .resource("hold", &id.to_string())
                .scope(Some(*client_id), *matter_id)
                .related(scopes.iter().map(|scope| ("scope", scope.to_string())))
                .outcome(Outcome::Allowed, &format!("event-{}", c.event_id));
            if let Some(category) = category {
                event = event.category(category);
            }
            db.transact(retention_store::insert_hold(&hold), &[event.build()])
                .await?;
            Fate::Reapplied
        }
        RetentionChange::Release(_) => match held {
            Some(h) if h.released_at.is_none() => Fate::Lost,
            Some(_) => Fate::AlreadyApplied,
            None => Fate::NotInDatabase,
        },
        RetentionChange::Policy {
            id,
            version,
            rules,
            by,
        } => {
            if store
                .policy(*id)
                .await?
                .is_some_and(|held| held.version >= *version)
            {
                return Ok(Fate::AlreadyApplied);
            }
            let Some(rules) = rules else {
                return Ok(Fate::Lost);
            };
            if dry_run {
                return Ok(Fate::WouldReapply);
            }
            let event = retention_restored(trust_domain, Action::RetentionPolicyRestored)
                .resource("policy", &id.to_string())
                .category(rules.category.as_str())
                .related(rules.related())
                .outcome(Outcome::Allowed, &format!("event-{}", c.event_id))
                .build();
            let statements = vec![
                retention_store::insert_policy(*id, *version, rules, by, c.at),
                retention_store::policies_changed(),
            ];
            match db.transact(statements, &[event]).await {
                Ok(_) => Fate::Reapplied,
                // Another policy holds its category, practice area and
                // jurisdiction in this database: it is to be re-entered.
                Err(e) if e.is_duplicate() => Fate::Lost,
                Err(e) => return Err(e.into()),
            }
        }
        RetentionChange::Trigger {
            client_id,
            matter_id,
            recorded: Some(recorded),
            recorded_by,
        } => {
            if retention_restore::trigger_exists(db, recorded.id).await? {
                return Ok(Fate::AlreadyApplied);
            }
            let Ok(client) = Uuid::parse_str(client_id) else {
                return Ok(Fate::Lost);
            };
            if dry_run {
                return Ok(Fate::WouldReapply);
            }
            let event = retention_restored(trust_domain, Action::RetentionTriggerRestored)
                .resource("trigger", &recorded.id.to_string())
                .scope(Some(client), *matter_id)
                .related(recorded.related())
                .outcome(Outcome::Allowed, &format!("event-{}", c.event_id))
                .build();
            db.transact(
                vec![
                    retention_store::insert_trigger(
                        recorded,
                        client,
                        *matter_id,
                        recorded_by,
                        c.at,
                    ),
                    retention_store::client_inputs_changed(client),
                ],
                &[event],
            )
            .await?;
            Fate::Reapplied
        }
        RetentionChange::Trigger { recorded: None, .. } => {
            if newest_trigger.is_some_and(|newest| c.at <= newest) {
                Fate::AlreadyApplied
            } else {
                Fate::Lost
            }
        }
        RetentionChange::Certificate(id) => {
            if retention_restore::certificate_exists(db, *id).await? {
                Fate::AlreadyApplied
            } else {
                Fate::Lost
            }
        }
        RetentionChange::Erasure(id) => {
            if retention_restore::erasure_exists(db, *id).await? {
                Fate::AlreadyApplied
            } else {
                Fate::Lost
            }
        }
        RetentionChange::Location(id) => {
            if retention_restore::location_exists(db, *id).await? {
                Fate::AlreadyApplied
            } else {
                Fate::Lost
            }
        }
        RetentionChange::Item {
            id,
            movement,
            staff,
        } => {
            let scope = retention_restore::item_scope(db, *id).await?;
            let Some(action) = movement.custody_action() else {
                // A registration: there, or lost.
                return Ok(if scope.is_some() {
                    Fate::AlreadyApplied
                } else {
                    Fate::Lost
                });
            };
            let Some((client, matter)) = scope else {
                return Ok(Fate::NotInDatabase);
            };
            if retention_restore::item_moved(db, *id, action, c.at).await? {
                return Ok(Fate::AlreadyApplied);
            }
            let mut location = movement.location();
            if let Some(l) = location
                && !retention_restore::location_exists(db, l).await?
            {
                // Created after the backup too: the item stays where the
                // register has it.
                *extra = not_in_database(vec![("location", l.to_string())]);
                location = None;
            }
            if dry_run {
                return Ok(Fate::WouldReapply);
            }
            let note = format!(
                "made again by `confidant restore retention` from audit event {}",
                c.event_id
            );
            let mut related = vec![("movement", action.to_owned())];
            related.extend(location.map(|l| ("location", l.to_string())));
            if let Movement::Destroyed {
                certificate: Some(certificate),
            } = movement
            {
                related.push(("certificate", certificate.to_string()));
            }
            let event = retention_restored(trust_domain, Action::RetentionItemRestored)
                .resource("item", &id.to_string())
                .scope(Some(client), matter)
                .related(related)
                .outcome(Outcome::Allowed, &format!("event-{}", c.event_id))
                .build();
            match db
                .transact(
                    movement.made_again(*id, c.at, staff, location, &note),
                    &[event],
                )
                .await
            {
                Ok(_) => Fate::Reapplied,
                Err(TransactError::Unmet { .. }) => Fate::NotInDatabase,
                Err(e) => return Err(e.into()),
            }
        }
    })
}

async fn reapply_retention_all(
    store: &RetentionStore,
    trust_domain: &str,
    verified: &VerifiedEvents,
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let newest_trigger = retention_restore::newest_trigger(store.db()).await?;
    let mut report = Report::new(out);
    let (mut erasures_lost, mut register_lost, mut pause) = (0u64, 0u64, false);
    for c in retention_changes(&verified.events) {
        let line = c.line();
        let mut extra = json!({});
        let fate = reapply_retention(store, trust_domain, &c, newest_trigger, dry_run, &mut extra)
            .await
            .with_context(|| line.stopped())?;
        // Disposals pause for any change of the schedule lost or made again;
        // a lost erasure is none (it needs asking again), nor is the
        // register of paper.
        match (fate, &c.change) {
            (Fate::Lost, RetentionChange::Erasure(_)) => erasures_lost += 1,
            (Fate::Lost, change) if change.is_physical() => register_lost += 1,
            (_, change) if change.is_physical() => {}
            (Fate::Lost | Fate::Reapplied | Fate::WouldReapply, _) => pause = true,
            _ => {}
        }
        report.line(&line, fate, extra)?;
    }
    let lost = report.count(Fate::Lost);
    if pause && !dry_run && !store.paused().await? {
        let event = retention_restored(trust_domain, Action::RetentionDisposalsPaused)
            .resource("disposals", "all")
            .outcome(Outcome::Allowed, "restore")
            .build();
        store
            .db()
            .transact(
                vec![retention_store::pause("restore", Utc::now())],
                &[event],
            )
            .await?;
    }
    let mut notes = if pause {
        vec![format!(
            "disposals {} paused: check the schedule, re-enter the policies and trigger events \
             listed `lost`, release again the holds listed `lost` if they are to go, then resume \
             disposals (ResumeDisposals, a records manager)",
            if dry_run { "would be" } else { "are" }
        )]
    } else {
        Vec::new()
    };
    if erasures_lost > 0 {
        notes.push(
            "erasures listed `lost` were asked for after the backup: ask again for each that the \
             vault has not carried out (RequestErasure; `confidant restore vault` makes again the \
             shreds the vault had made), and keep the certificates listed `lost` from their \
             earlier copies"
                .to_owned(),
        );
    }
    if register_lost > 0 {
        notes.push(format!(
            "{register_lost} physical items and storage locations registered after the backup are \
             not in the restored register, and their events do not name their labels or places: \
             register them again (CreateLocation, RegisterItem)"
        ));
    }
    report.finish(
        verified,
        json!({
            "lost": lost,
            "erasures_lost": erasures_lost,
            "register_lost": register_lost,
            "disposals_paused": pause,
        }),
        &notes,
    )
}

/// Events put back per transaction.
const RESTORE_BATCH: usize = 1000;

/// Puts back into the audit service's database, restored from a backup,
/// the events and signed checkpoints that the verified export holds beyond
/// it, at the positions they had: the log is whole again and every
/// checkpoint it published still verifies, instead of new events taking
/// the lost ones' places (a fork of the log). Run it before the audit
/// service starts on the restored database. A summary on `out`; with
/// `dry_run`, only the summary (what would be put back).
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

    fn vault_event(
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

    fn summary(changes: &[Logged]) -> Vec<(Target, Uuid, Change, u64)> {
        changes
            .iter()
            .map(|c| (c.target, c.id, c.change.clone(), c.position))
            .collect()
    }

    #[test]
    fn only_the_vaults_allowed_destructions_count() {
        let (scope, record) = (Uuid::now_v7(), Uuid::now_v7());
        let mut held = vault_event(
            Action::VaultScopeShredded,
            "scope",
            Uuid::now_v7(),
            Outcome::Denied,
        );
        held.reason = "legal_hold".into();
        let mut elsewhere = vault_event(
            Action::VaultScopeShredded,
            "scope",
            Uuid::now_v7(),
            Outcome::Allowed,
        );
        elsewhere.source_service = "retention".into();
        let events = verified(vec![
            vault_event(Action::VaultScopeShredded, "scope", scope, Outcome::Allowed),
            held,
            elsewhere,
            vault_event(
                Action::VaultRecordCreated,
                "record",
                record,
                Outcome::Allowed,
            ),
            vault_event(
                Action::VaultRecordShredded,
                "record",
                record,
                Outcome::Allowed,
            ),
        ]);
        let shred = Change::Shred {
            order: "o-1".into(),
        };
        assert_eq!(
            summary(&logged_changes(&events, chrono::Duration::zero())),
            vec![
                (Target::Scope, scope, shred.clone(), 0),
                (Target::Record, record, shred, 4)
            ]
        );
    }

    #[test]
    fn corrections_of_records_and_documents_are_listed() {
        let (old, new, old_doc, new_doc) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let corrected = |kind: &str, id: Uuid, reason: String| {
            let mut e = vault_event(Action::VaultRecordCorrected, kind, id, Outcome::Allowed);
            e.reason = reason;
            e
        };
        let events = verified(vec![
            corrected("record", new, format!("supersedes-{old}")),
            corrected("document", new_doc, format!("supersedes-{old_doc}")),
            corrected("record", Uuid::now_v7(), "supersedes-nonsense".into()),
        ]);
        assert_eq!(
            summary(&logged_changes(&events, chrono::Duration::zero())),
            vec![
                (Target::Record, new, Change::Correct { supersedes: old }, 0),
                (
                    Target::Record,
                    new_doc,
                    Change::Correct {
                        supersedes: old_doc
                    },
                    1
                ),
            ]
        );
    }

    #[test]
    fn a_scope_ends_as_the_log_last_left_it() {
        let client = Uuid::now_v7();
        let matter = Uuid::now_v7();
        let other = Uuid::now_v7();
        let in_matter = |action, id: Uuid| {
            EventBuilder::new(ServiceName::Vault, "firm.example", action)
                .resource("scope", &id.to_string())
                .scope(Some(client), Some(matter))
                .category("matter-file")
                .outcome(Outcome::Allowed, "order-o-2_due-1800000000")
                .build()
        };
        let (cancelled, suspended, staged, uncovered, shredded) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let mut old_style = in_matter(Action::VaultScopeDestructionScheduled, uncovered);
        old_style.reason = "order-o-3".into();
        old_style.time = Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        });
        let events = verified(vec![
            // 0, 1: staged, then cancelled.
            in_matter(Action::VaultScopeDestructionScheduled, cancelled),
            in_matter(Action::VaultScopeDestructionCancelled, cancelled),
            // 2: staged, then (3) another scope's destruction is
            // suspended, and (4) its own.
            in_matter(Action::VaultScopeDestructionScheduled, suspended),
            in_matter(Action::VaultScopeDestructionSuspended, other),
            in_matter(Action::VaultScopeDestructionSuspended, suspended),
            // 5: staged after the hold, and still pending at the end.
            in_matter(Action::VaultScopeDestructionScheduled, staged),
            // 6: an older event without its due time.
            old_style,
            // 7, 8: staged, then destroyed when the window ended.
            in_matter(Action::VaultScopeDestructionScheduled, shredded),
            in_matter(Action::VaultScopeShredded, shredded),
            // 9: a return of originals.
            in_matter(Action::VaultOriginalsReturned, staged),
        ]);
        let changes = logged_changes(&events, chrono::Duration::seconds(60));
        let due = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(
            summary(&changes),
            vec![
                (Target::Scope, cancelled, Change::Cancel, 1),
                (Target::Scope, other, Change::Cancel, 3),
                (Target::Scope, suspended, Change::Cancel, 4),
                (
                    Target::Scope,
                    staged,
                    Change::Schedule {
                        order: "o-2".into(),
                        due
                    },
                    5
                ),
                (
                    Target::Scope,
                    uncovered,
                    Change::Schedule {
                        order: "o-3".into(),
                        due: DateTime::from_timestamp(1_700_000_060, 0).unwrap()
                    },
                    6
                ),
                (
                    Target::Scope,
                    shredded,
                    Change::Shred {
                        order: "o-2".into()
                    },
                    8
                ),
                (Target::Scope, staged, Change::ReturnOriginals, 9),
            ]
        );
    }

    #[test]
    fn identity_takes_revocations_and_each_staff_members_last_sign_in_change() {
        let identity = |action, kind: &str, id: &str, reason: &str| {
            EventBuilder::new(ServiceName::Identity, "firm.example", action)
                .resource(kind, id)
                .outcome(Outcome::Allowed, reason)
                .build()
        };
        let (staff, item, wall) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (named_wall, matter) = (Uuid::now_v7(), Uuid::now_v7());
        let (client, classified) = (Uuid::now_v7(), Uuid::now_v7());
        let opened = NewMatter {
            client_id: client,
            responsible: Some(staff),
            practice_area: "Family & Children".into(),
            jurisdiction: None,
        };
        let until_then = Grant {
            staff,
            expires: Some(DateTime::from_timestamp(1_900_000_000, 123_456_000).unwrap()),
        };
        let for_good = Grant {
            staff,
            expires: None,
        };
        let training = NewAttestation {
            staff_id: staff,
            kind: confidant_identity::store::KIND_TRAINING,
            version: "Privilege & conduct 2026".into(),
            completed: DateTime::from_timestamp(1_800_000_000, 5_000).unwrap(),
            expires: DateTime::from_timestamp(1_830_000_000, 0).unwrap(),
            score: Some(91),
            pass_mark: Some(80),
        };
        let let_through = WallException {
            wall: named_wall,
            staff,
            matter: classified,
            expires: DateTime::from_timestamp(1_850_000_000, 250_000_000).unwrap(),
        };
        let grantor = "spiffe://firm.example/admin/operator";
        let events = verified(vec![
            identity(Action::IdentityPasswordSet, "staff", &staff.to_string(), ""),
            identity(
                Action::IdentityRoleRevoked,
                "role",
                "associate",
                &format!("staff-{staff}"),
            ),
            // An older role event that does not name the staff member.
            identity(Action::IdentityRoleRevoked, "role", "partner", ""),
            identity(
                Action::IdentityReviewDecided,
                "review_item",
                &item.to_string(),
                "certify",
            ),
            identity(
                Action::IdentityReviewDecided,
                "review_item",
                &item.to_string(),
                "revoke",
            ),
            identity(Action::IdentityPasswordSet, "staff", &staff.to_string(), ""),
            identity(
                Action::IdentityTotpEnrolled,
                "staff",
                &staff.to_string(),
                "",
            ),
            // A wall logged before walls named their members, and one after.
            identity(Action::IdentityWallCreated, "wall", &wall.to_string(), ""),
            EventBuilder::new(
                ServiceName::Identity,
                "firm.example",
                Action::IdentityWallCreated,
            )
            .resource("wall", &named_wall.to_string())
            .related([
                ("staff", staff.to_string()),
                ("matter", matter.to_string()),
                ("matter", "not-a-uuid".to_owned()),
            ])
            .build(),
            identity(
                Action::IdentityAssignmentGranted,
                "assignment",
                &item.to_string(),
                "",
            ),
            identity(
                Action::IdentityClientCreated,
                "client",
                &client.to_string(),
                "",
            ),
            // A matter logged before matter events named their
            // classification, and one after.
            EventBuilder::new(
                ServiceName::Identity,
                "firm.example",
                Action::IdentityMatterCreated,
            )
            .resource("matter", &matter.to_string())
            .scope(Some(client), Some(matter))
            .build(),
            EventBuilder::new(
                ServiceName::Identity,
                "firm.example",
                Action::IdentityMatterCreated,
            )
            .resource("matter", &classified.to_string())
            .scope(Some(client), Some(classified))
            .related(opened.related())
            .build(),
            // Grants that name whom and until when.
            EventBuilder::new(
                ServiceName::Identity,
                "firm.example",
                Action::IdentityAssignmentGranted,
            )
            .resource("assignment", &item.to_string())
            .scope(None, Some(classified))
            .related(until_then.related())
            .build(),
            EventBuilder::new(
                ServiceName::Identity,
                "firm.example",
                Action::IdentityRoleGranted,
            )
            .resource("role", "auditor")
            .related(for_good.related())
            .outcome(Outcome::Allowed, &format!("staff-{staff}"))
            .build(),
            // An attestation logged before attestation events named what
            // was attested, and one after.
            identity(
                Action::IdentityAttestationRecorded,
                "attestation",
                &wall.to_string(),
                "",
            ),
            EventBuilder::new(
                ServiceName::Identity,
                "firm.example",
                Action::IdentityAttestationRecorded,
            )
            .resource("attestation", &item.to_string())
            .related(training.related())
            .build(),
            // A wall exception logged before exception events named whom
            // for what, and one after, by an admin tool.
            identity(
                Action::IdentityWallExceptionGranted,
                "wall_exception",
                &wall.to_string(),
                "",
            ),
            EventBuilder::new(
                ServiceName::Identity,
                "firm.example",
                Action::IdentityWallExceptionGranted,
            )
            .actor(ActorKind::Service, "operator", grantor)
            .resource("wall_exception", &item.to_string())
            .related(let_through.related())
            .build(),
            // The staff member changed their own password, and lost their
            // authenticator: each supersedes the sign-in change before it.
            identity(
                Action::IdentityPasswordChanged,
                "staff",
                &staff.to_string(),
                "",
            ),
            identity(Action::IdentityTotpReset, "staff", &staff.to_string(), ""),
            // Disabled, and enabled again: only the enabling counts.
            identity(
                Action::IdentityStaffDisabled,
                "staff",
                &staff.to_string(),
                "",
            ),
            identity(
                Action::IdentityStaffEnabled,
                "staff",
                &staff.to_string(),
                "",
            ),
        ]);
        let changes: Vec<(IdentityChange, u64)> = identity_changes(&events)
            .into_iter()
            .map(|c| (c.change, c.position))
            .collect();
        assert_eq!(
            changes,
            vec![
                (
                    IdentityChange::Revoke(Revocation::Role {
                        staff,
                        role: "associate".into()
                    }),
                    1
                ),
                (
                    IdentityChange::Wall {
                        id: wall,
                        members: WallMembers::default()
                    },
                    7
                ),
                (
                    IdentityChange::Wall {
                        id: named_wall,
                        members: WallMembers {
                            staff: vec![staff],
                            clients: vec![],
                            matters: vec![matter],
                        }
                    },
                    8
                ),
                (IdentityChange::Client(client), 10),
                (
                    IdentityChange::Matter {
                        id: matter,
                        client,
                        opened: None
                    },
                    11
                ),
                (
                    IdentityChange::Matter {
                        id: classified,
                        client,
                        opened: Some(opened)
                    },
                    12
                ),
                (
                    IdentityChange::Assign {
                        id: item,
                        matter: classified,
                        grant: Some(until_then)
                    },
                    13
                ),
                (
                    IdentityChange::GrantRole {
                        staff,
                        role: "auditor".into(),
                        grant: Some(for_good)
                    },
                    14
                ),
                (
                    IdentityChange::Attest {
                        id: wall,
                        attestation: None
                    },
                    15
                ),
                (
                    IdentityChange::Attest {
                        id: item,
                        attestation: Some(training)
                    },
                    16
                ),
                (
                    IdentityChange::Except {
                        id: wall,
                        exception: None,
                        granted_by: "spiffe://firm.example/identity".into(),
                    },
                    17
                ),
                (
                    IdentityChange::Except {
                        id: item,
                        exception: Some(let_through),
                        granted_by: grantor.to_owned(),
                    },
                    18
                ),
                (
                    IdentityChange::SignIn {
                        staff,
                        change: Credential::Password
                    },
                    19
                ),
                (
                    IdentityChange::SignIn {
                        staff,
                        change: Credential::TotpRemoved
                    },
                    20
                ),
                (IdentityChange::Enable(staff), 22),
            ]
        );
    }

    #[test]
    fn retention_replaces_only_holds_still_in_force_at_the_end_of_the_log() {
        let client = Uuid::now_v7();
        let hold = |action, id: Uuid, reason: &str| {
            EventBuilder::new(ServiceName::Retention, "firm.example", action)
                .resource("hold", &id.to_string())
                .scope(Some(client), Some(Uuid::now_v7()))
                .category("financial")
                .outcome(Outcome::Allowed, reason)
                .build()
        };
        let (kept, gone, scoped, earlier) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let (policy, erasure) = (Uuid::now_v7(), Uuid::now_v7());
        let (named, named_scopes) = (Uuid::now_v7(), [Uuid::now_v7(), Uuid::now_v7()]);
        let notice = RecordedTrigger {
            id: Uuid::now_v7(),
            trigger: confidant_retention::domain::Trigger::Named("client_notice".into()),
            occurred_at: DateTime::from_timestamp(1_800_000_000, 5_000).unwrap(),
        };
        let trigger = |related: Vec<(&'static str, String)>| {
            EventBuilder::new(
                ServiceName::Retention,
                "firm.example",
                Action::RetentionTriggerRecorded,
            )
            .resource("trigger", "named_event")
            .scope(Some(client), None)
            .related(related)
            .outcome(Outcome::Allowed, "named_event")
            .build()
        };
        let events = verified(vec![
            hold(Action::RetentionHoldPlaced, kept, ""),
            hold(Action::RetentionHoldPlaced, gone, ""),
            hold(Action::RetentionHoldReleased, gone, ""),
            // Logged before holds named their scopes, and after.
            hold(Action::RetentionHoldPlaced, scoped, "scoped"),
            EventBuilder::new(
                ServiceName::Retention,
                "firm.example",
                Action::RetentionHoldPlaced,
            )
            .resource("hold", &named.to_string())
            .scope(Some(client), None)
            .related(named_scopes.iter().map(|s| ("scope", s.to_string())))
            .outcome(Outcome::Allowed, "scoped")
            .build(),
            hold(Action::RetentionHoldReleased, earlier, ""),
            EventBuilder::new(
                ServiceName::Retention,
                "firm.example",
                Action::RetentionPolicyUpdated,
            )
            .resource("policy", &policy.to_string())
            .outcome(Outcome::Allowed, "version-3")
            .build(),
            EventBuilder::new(
                ServiceName::Retention,
                "firm.example",
                Action::RetentionErasureRequested,
            )
            .resource("erasure", &erasure.to_string())
            .scope(Some(client), None)
            .outcome(Outcome::Allowed, "client_request")
            .build(),
            // A trigger event logged before trigger events named their
            // dates, and one after.
            trigger(vec![]),
            trigger(notice.related()),
        ]);
        let changes: Vec<(RetentionChange, u64)> = retention_changes(&events)
            .into_iter()
            .map(|c| (c.change, c.position))
            .collect();
        let over = |id: Uuid, narrowed: bool, scopes: &[Uuid]| RetentionChange::Hold {
            id,
            client_id: client,
            matter_id: None,
            category: narrowed.then(|| "financial".to_owned()),
            scopes: scopes.to_vec(),
            placed_by: "retention".to_owned(),
        };
        let placed = |id: Uuid, narrowed: bool| over(id, narrowed, &[]);
        let mut changes = changes;
        // The matter is random per event: compare the rest.
        for (change, _) in &mut changes {
            if let RetentionChange::Hold {
                matter_id,
                placed_by,
                ..
            } = change
            {
                *matter_id = None;
                "retention".clone_into(placed_by);
            }
        }
        assert_eq!(
            changes,
            vec![
                (placed(kept, true), 0),
                (placed(scoped, false), 3),
                (over(named, false, &named_scopes), 4),
                (RetentionChange::Release(earlier), 5),
                (
                    RetentionChange::Policy {
                        id: policy,
                        version: 3,
                        rules: None,
                        by: "retention".into(),
                    },
                    6
                ),
                (RetentionChange::Erasure(erasure), 7),
                (
                    RetentionChange::Trigger {
                        client_id: client.to_string(),
                        matter_id: None,
                        recorded: None,
                        recorded_by: "retention".into(),
                    },
                    8
                ),
                (
                    RetentionChange::Trigger {
                        client_id: client.to_string(),
                        matter_id: None,
                        recorded: Some(notice),
                        recorded_by: "retention".into(),
                    },
                    9
                ),
            ]
        );
    }
}
