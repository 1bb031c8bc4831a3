//! `confidant restore identity`: revocations, sign-in changes, and the
//! clients, matters, walls, roles and attestations that the log records
//! since the backup; every live session ends.

use std::io::Write;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use confidant_identity::restore::{self as identity_restore, Revocation};
use confidant_identity::store::{Grant, NewAttestation, NewMatter, WallException, WallMembers};
use confidant_proto::audit::v1::{AuditEvent, Outcome};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::portable::TransactError;
use confidant_runtime::storage::Database;
use serde_json::json;
use uuid::Uuid;

use super::{Allowed, Fate, LoggedChange, Report, ReportedChange, allowed, not_in_database};
use crate::audit_cli::{VerifiedEvent, VerifiedEvents};

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

pub(super) async fn reapply_identity_all(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore_cli::verified;
    use confidant_proto::audit::v1::ActorKind;
    use confidant_runtime::audit::EventBuilder;

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
}
