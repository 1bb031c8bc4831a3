//! `confidant restore reapply-shreds`: after the vault's database is
//! restored from a backup, the destructions made since that backup are
//! made again, from the audit log.
//!
//! A backup of the vault's database holds every scope key and record key
//! as it was then, wrapped by the KMS. Restored, it would bring back data
//! that was crypto-shredded after the backup was taken: the KMS still
//! unwraps those keys. The audit log records every destruction (the
//! vault's `vault.scope.shredded` and `vault.record.shredded` events,
//! allowed), so a verified export of it says exactly which keys must go
//! again. Only events a signed checkpoint covers are used, and the export
//! must verify as a whole against the log's key, so a forged or edited
//! file changes nothing.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::{AuditEvent, Outcome};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::config::Config;
use confidant_runtime::portable::TransactError;
use confidant_vault::store::{self, VaultStore};
use serde_json::json;
use uuid::Uuid;

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
fn destructions(events: &[(u64, AuditEvent)]) -> Vec<Destruction> {
    let mut found = Vec::new();
    for (position, event) in events {
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
    let logged = destructions(&verified.events);
    let db =
        crate::process::open_database(config, ServiceName::Vault, MigrationPolicy::RequireApplied)
            .await?;
    let store = VaultStore::new(db.clone());
    let mut counts = [0u64; 4];
    let mut failure = None;
    for d in &logged {
        let outcome = match reapply(&store, &config.trust_domain, d, dry_run).await {
            Ok(o) => o,
            Err(e) => {
                failure = Some(e.context(format!("{} {}", d.target.as_str(), d.id)));
                break;
            }
        };
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
    db.close().await;
    if let Some(e) = failure {
        return Err(e)
            .context("stopped; what is done stays done, and a second run goes on from there");
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

#[cfg(test)]
mod tests {
    use super::*;
    use confidant_runtime::audit::EventBuilder;

    fn shred(action: Action, kind: &str, id: Uuid, outcome: Outcome) -> AuditEvent {
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
