//! `confidant restore intake`: invitations withdrawn since the backup are
//! withdrawn again; invitations and submissions made since are listed.

use std::io::Write;

use anyhow::Context as _;
use confidant_intake::store::IntakeStore;
use confidant_proto::audit::v1::{ActorKind, Outcome};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::storage::Database;
use serde_json::json;
use uuid::Uuid;

use super::{Fate, LoggedChange, Report, ReportedChange, actor_id, allowed};
use crate::audit_cli::{VerifiedEvent, VerifiedEvents};

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

pub(super) async fn reapply_intake_all(
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
