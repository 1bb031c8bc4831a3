//! `confidant restore vault`: destructions, staged destructions, their
//! cancellations, returns of originals and corrections that the log
//! records since the backup.

use std::io::Write;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::Outcome;
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::config::Config;
use confidant_runtime::kms::same_key;
use confidant_runtime::portable::{Statement, TransactError};
use confidant_vault::store::{self as vault_store, ScopeState, VaultStore};
use serde_json::json;
use uuid::Uuid;

use super::{Allowed, Fate, Line, Report, allowed};
use crate::audit_cli::{VerifiedEvent, VerifiedEvents};

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
pub(super) fn active_kms_key(config: &Config) -> Option<String> {
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

pub(super) async fn reapply_all(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore_cli::verified;
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
}
