//! `confidant restore retention`: legal holds placed since the backup come
//! back; what the log cannot rebuild is listed, and disposals pause.

use std::io::Write;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::{ActorKind, Outcome};
use confidant_retention::domain::Rules;
use confidant_retention::restore::{self as retention_restore, Movement};
use confidant_retention::store::{
    self as retention_store, HoldRow, RecordedTrigger, RetentionStore,
};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::portable::TransactError;
use serde_json::json;
use uuid::Uuid;

use super::{
    Allowed, Fate, LoggedChange, Report, ReportedChange, actor_id, allowed, not_in_database,
};
use crate::audit_cli::{VerifiedEvent, VerifiedEvents};

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

pub(super) async fn reapply_retention_all(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore_cli::verified;
    use confidant_runtime::audit::EventBuilder;

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
