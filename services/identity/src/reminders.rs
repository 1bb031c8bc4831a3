//! Reminders that keep access in order. When the confidentiality agreement
//! or the training that decisions count for a staff member lapses, every
//! read of client data is denied to them from that instant; so that this
//! never comes as a surprise in the middle of a matter, identity e-mails
//! them ahead of it (`due`) and once it has lapsed (`lapsed`). Access
//! reviews only work if reviewers know items wait for them: each reviewer
//! is told when a campaign starts (`started`) and again as its deadline
//! nears (`due`) while items still wait. Each reminder goes at most once,
//! whichever replica's sweep comes first.
//!
//! Other services' work waiting for staff comes here too ([`StaffNotice`],
//! NotifyStaff): identity knows who holds which permission and where to
//! write to them, so retention tells records managers of a staged
//! destruction, a disposal batch or an erasure waiting for them through it,
//! each recipient once per notice.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use confidant_proto::audit::v1::{ActorKind, Outcome};
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::notify::{Message, Notifier};
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Database;
use uuid::Uuid;

use crate::domain::{Attestation, Facts};
use crate::reviews::{REVIEWS_MANAGE, Reviews};
use crate::store::{Attested, Directory, KIND_NDA, StoreError};

/// Sends the reminders.
#[derive(Debug, Clone)]
pub struct Reminders {
    db: Database,
    notifier: Arc<dyn Notifier>,
    trust_domain: String,
    /// How long before a lapse the first reminder goes, and how long after
    /// it the second still does; zero: no attestation reminders.
    ahead: Duration,
    /// How long before a campaign's deadline reviewers are reminded; zero:
    /// only when it starts.
    review_ahead: Duration,
}

/// A reviewer to tell of the items of a campaign waiting for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewDue {
    /// The campaign.
    pub campaign: Uuid,
    /// Its name.
    pub name: String,
    /// Its deadline.
    pub deadline: DateTime<Utc>,
    /// The reviewer.
    pub staff_id: Uuid,
    /// Their work address.
    pub email: String,
    /// The items waiting for them.
    pub pending: usize,
    /// `started` or `due`.
    pub stage: &'static str,
}

/// One reminder to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The staff member.
    pub staff_id: Uuid,
    /// Their work address.
    pub email: String,
    /// The attestation that lapses.
    pub attestation: Uuid,
    /// [`KIND_NDA`] or the training's kind.
    pub kind: i32,
    /// Its version.
    pub version: String,
    /// When it lapses.
    pub expires: DateTime<Utc>,
    /// `due` or `lapsed`.
    pub stage: &'static str,
}

/// The claim of one message to a person (staff or client), in a table
/// whose key is `key`: `insert` takes the key's values and then `extra`'s
/// and writes the claim unless it is there; `release` takes the key's and
/// removes it.
pub(crate) struct Claim {
    pub(crate) insert: &'static str,
    pub(crate) release: &'static str,
    pub(crate) key: Vec<Value>,
    pub(crate) extra: Vec<Value>,
}

/// What became of one message to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Sent now.
    Sent,
    /// Sent before, or being sent by another replica.
    Claimed,
    /// The gateway refused it; it may be tried again.
    Failed,
}

/// What a staff notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// Scopes staged for destruction: records managers may keep one
    /// before the deadline.
    DestructionStaged,
    /// A disposal batch waits for records managers' approval.
    BatchAwaitingApproval,
    /// An erasure of one record waits for records managers' approval.
    ErasureAwaitingApproval,
    /// Due scopes holding originals are on the return-to-client list.
    ReturnsListed,
    /// A legal hold's release waits for another approval.
    HoldReleaseAwaitingApproval,
    /// A client answered an invitation: the submission waits for the
    /// review of whoever made the invitation.
    SubmissionReceived,
    /// An invitation expired unanswered; told to whoever made it.
    InvitationExpired,
    /// The last reminder of staged destructions nobody kept: the keys go
    /// at the deadline.
    DestructionDue,
}

/// The permission of records managers.
pub const RETENTION_MANAGE: &str = "retention.manage";
/// The permission of those who place legal holds and approve releases.
pub const HOLDS_MANAGE: &str = "holds.manage";

impl NoticeKind {
    /// Its name in the audit log (the event's reason) and the claims.
    pub fn name(self) -> &'static str {
        match self {
            Self::DestructionStaged => "destruction_staged",
            Self::BatchAwaitingApproval => "disposal_batch_awaiting_approval",
            Self::ErasureAwaitingApproval => "erasure_awaiting_approval",
            Self::ReturnsListed => "returns_listed",
            Self::HoldReleaseAwaitingApproval => "hold_release_awaiting_approval",
            Self::SubmissionReceived => "submission_received",
            Self::InvitationExpired => "invitation_expired",
            Self::DestructionDue => "destruction_due",
        }
    }

    /// The permission whose enabled holders it goes to, those who can act
    /// on it; none for a kind that names its one recipient.
    pub fn permission(self) -> Option<&'static str> {
        match self {
            Self::HoldReleaseAwaitingApproval => Some(HOLDS_MANAGE),
            Self::SubmissionReceived | Self::InvitationExpired => None,
            _ => Some(RETENTION_MANAGE),
        }
    }

    /// Whether it is about one thing waiting, which it names.
    pub fn names_one(self) -> bool {
        matches!(
            self,
            Self::BatchAwaitingApproval
                | Self::ErasureAwaitingApproval
                | Self::HoldReleaseAwaitingApproval
                | Self::SubmissionReceived
                | Self::InvitationExpired
        )
    }
}

/// A notice another service asked identity to send (NotifyStaff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffNotice {
    /// The asker's id of it: each recipient gets it once.
    pub id: String,
    /// What it is about.
    pub kind: NoticeKind,
    /// How many items wait.
    pub items: u32,
    /// By when to act (a staged destruction's earliest key destruction).
    pub deadline: Option<DateTime<Utc>>,
    /// The batch or erasure.
    pub reference: Option<Uuid>,
    /// Whom not to tell (who asked for it).
    pub except: Option<Uuid>,
    /// The one staff member to tell, for a kind without a permission.
    pub recipient: Option<Uuid>,
}

/// How a notice went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Noticed {
    /// The staff it is for.
    pub recipients: usize,
    /// Sent now.
    pub sent: usize,
    /// Refused by the gateway now.
    pub failed: usize,
}

impl StaffNotice {
    /// The e-mail to `address`: counts, times and retention's ids, never a
    /// client.
    pub fn message(&self, address: &str) -> Message {
        let n = self.items;
        let scopes = if n == 1 {
            "1 scope".to_owned()
        } else {
            format!("{n} scopes")
        };
        let reference = self.reference.map(|r| r.to_string()).unwrap_or_default();
        // The deadline of the kinds about staged destructions.
        let when = self.deadline.map_or_else(
            || "the end of the vault's pending window".to_owned(),
            |d| d.format("%Y-%m-%d %H:%M UTC").to_string(),
        );
        let (subject, body) = match self.kind {
            NoticeKind::DestructionStaged => (
                format!("{scopes} of client data staged for destruction: keys go from {when}"),
                format!(
                    "The retention schedule staged {scopes} of client data for destruction. \
                         Every read of {them} is refused now, and {their} keys will be destroyed \
                         from {when} on; nothing can be read back after that. To keep a scope \
                         (a legal hold is coming, the schedule does not fit it), cancel its \
                         destruction before then in your firm application (scopes pending \
                         destruction). Notice {id}.",
                    them = if n == 1 { "it" } else { "them" },
                    their = if n == 1 { "its" } else { "their" },
                    id = self.id,
                ),
            ),
            NoticeKind::DestructionDue => (
                format!("Last reminder: {scopes} of client data destroyed from {when}"),
                format!(
                    "{cap} of client data staged for destruction {are} close to {their} \
                         deadline, and no records manager has kept {them}: {their} keys will be \
                         destroyed from {when} on, and nothing can be read back after that. \
                         This is the last reminder. To keep a scope, cancel its destruction \
                         before then in your firm application (scopes pending destruction). \
                         Notice {id}.",
                    cap = scopes,
                    are = if n == 1 { "is" } else { "are" },
                    their = if n == 1 { "its" } else { "their" },
                    them = if n == 1 { "it" } else { "them" },
                    id = self.id,
                ),
            ),
            NoticeKind::BatchAwaitingApproval => (
                format!("Disposal batch waiting for your approval: {scopes}"),
                format!(
                    "A disposal batch of {scopes} of client data that the retention schedule \
                     says are due waits for records managers' approval (batch {reference}). \
                     Review it in your firm application (disposal batches); nothing in it is \
                     destroyed before enough records managers approve it."
                ),
            ),
            NoticeKind::ErasureAwaitingApproval => (
                "Erasure of a record waiting for your approval".to_owned(),
                format!(
                    "A records manager asked for the erasure of one record of client data \
                     before its schedule (erasure {reference}). It waits for another records \
                     manager's approval in your firm application (erasures); nothing is \
                     erased before then."
                ),
            ),
            NoticeKind::ReturnsListed => (
                format!("Originals to return to clients: {scopes}"),
                format!(
                    "The retention schedule says {scopes} of client data {are} due, but \
                     {they} {hold} originals that belong to the client, so nothing in {them} \
                     is destroyed: the originals go back to the client first. {cap} {are} on \
                     the return-to-client list in your firm application (returns); record how \
                     each went back (a tracking number, say), and the copies left are disposed \
                     of by the next sweep.",
                    are = if n == 1 { "is" } else { "are" },
                    they = if n == 1 { "it" } else { "they" },
                    cap = if n == 1 { "It" } else { "They" },
                    hold = if n == 1 { "holds" } else { "hold" },
                    them = if n == 1 { "it" } else { "them" },
                ),
            ),
            NoticeKind::SubmissionReceived => (
                "A client answered your intake invitation".to_owned(),
                format!(
                    "A client you invited has submitted their answers (submission \
                     {reference}). Review them in your firm application (intake \
                     submissions) and accept or reject them; the answers are read through \
                     the vault, for a purpose you name, and the read is recorded."
                ),
            ),
            NoticeKind::InvitationExpired => (
                "An intake invitation you made expired unanswered".to_owned(),
                format!(
                    "The client you invited did not answer before the invitation expired \
                     (invitation {reference}); its link no longer works. If you still need \
                     the answers, send a new invitation from your firm application (intake \
                     invitations shows where each one stands)."
                ),
            ),
            NoticeKind::HoldReleaseAwaitingApproval => (
                "Release of a legal hold waiting for your approval".to_owned(),
                format!(
                    "A staff member approved the release of a legal hold (hold {reference}). \
                     It stays in force, and nothing it covers can be destroyed, until another \
                     person approves the release in your firm application (legal holds). \
                     Approve it only once the matter that called for the hold allows."
                ),
            ),
        };
        Message {
            channel: "email".into(),
            address: address.to_owned(),
            subject,
            body,
        }
    }
}

/// id, staff, email, kind, version, completed, expires, score, pass mark.
type Row = (
    Uuid,
    Uuid,
    String,
    i32,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<i32>,
    Option<i32>,
);

impl Reminders {
    /// Reminders through `notifier`: of attestations `ahead_days` ahead,
    /// of access reviews `review_ahead_hours` before their deadline.
    pub fn new(
        db: Database,
        notifier: Arc<dyn Notifier>,
        trust_domain: &str,
        ahead_days: u64,
        review_ahead_hours: u64,
    ) -> Self {
        // At most a century.
        let hours = |h: u64| Duration::hours(i64::try_from(h.min(876_000)).unwrap_or(876_000));
        Self {
            db,
            notifier,
            trust_domain: trust_domain.to_owned(),
            ahead: hours(ahead_days.saturating_mul(24)),
            review_ahead: hours(review_ahead_hours),
        }
    }

    /// The reminders due at `now` that were not sent yet: for each enabled
    /// staff member, the agreement and the training that decisions count
    /// now, when it lapses within the window or lapsed within it.
    pub async fn due(&self, now: DateTime<Utc>) -> Result<Vec<Due>, StoreError> {
        if self.ahead.is_zero() {
            return Ok(Vec::new());
        }
        let rows: Vec<Row> = self
            .db
            .fetch_all(
                "SELECT a.id, s.id, s.email, a.kind, a.version, a.completed_at, a.expires_at, \
                 a.score, a.pass_mark FROM attestations a JOIN staff s ON s.id = a.staff_id \
                 WHERE s.disabled_at IS NULL ORDER BY s.id",
                vec![],
            )
            .await?;
        let mut by_staff: BTreeMap<(Uuid, String), Vec<Attested>> = BTreeMap::new();
        for (id, staff, email, kind, version, completed, expires, score, pass_mark) in rows {
            by_staff
                .entry((staff, email))
                .or_default()
                .push(Attested::from_row(
                    id, kind, version, completed, expires, score, pass_mark,
                ));
        }
        let sent: Vec<(Uuid, String)> = self
            .db
            .fetch_all(
                "SELECT attestation_id, stage FROM attestation_reminders WHERE sent_at > $1",
                vec![Value::Time(now - self.ahead * 2)],
            )
            .await?;
        let mut due = Vec::new();
        for ((staff_id, email), attested) in by_staff {
            let mut facts = Facts::default();
            facts.attested(&attested);
            for counted in [facts.counted_nda(now), facts.counted_training(now)]
                .into_iter()
                .flatten()
            {
                let Some(stage) = self.stage(counted, now) else {
                    continue;
                };
                if sent
                    .iter()
                    .any(|(id, s)| *id == counted.id && s.as_str() == stage)
                {
                    continue;
                }
                let Some(a) = attested.iter().find(|a| a.attestation.id == counted.id) else {
                    continue;
                };
                due.push(Due {
                    staff_id,
                    email: email.clone(),
                    attestation: counted.id,
                    kind: a.kind,
                    version: a.version.clone(),
                    expires: counted.expires,
                    stage,
                });
            }
        }
        Ok(due)
    }

    /// Which reminder an attestation that decisions count at `now` calls
    /// for, if any.
    fn stage(&self, counted: &Attestation, now: DateTime<Utc>) -> Option<&'static str> {
        if counted.expires <= now {
            (counted.expires > now - self.ahead).then_some("lapsed")
        } else {
            (counted.expires <= now + self.ahead).then_some("due")
        }
    }

    /// Sends what is due at `now`; returns how many were sent.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut sent = 0;
        for due in self.due(now).await? {
            let event = self
                .event(Action::IdentityAttestationReminded, due.stage)
                .resource("staff", &due.staff_id.to_string())
                .related([
                    ("attestation", due.attestation.to_string()),
                    ("kind", kind_name(due.kind).to_owned()),
                ])
                .build();
            let claim = Claim {
                insert: "INSERT INTO attestation_reminders (attestation_id, stage, staff_id, sent_at) \
                         SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM attestation_reminders \
                         WHERE attestation_id = $1 AND stage = $2)",
                release: "DELETE FROM attestation_reminders WHERE attestation_id = $1 AND stage = $2",
                key: vec![
                    Value::Uuid(due.attestation),
                    Value::Text(due.stage.to_owned()),
                ],
                extra: vec![Value::Uuid(due.staff_id), Value::Time(now)],
            };
            let message = Message {
                channel: "email".into(),
                address: due.email.clone(),
                subject: subject(&due).into(),
                body: body(&due),
            };
            if deliver(&self.db, self.notifier.as_ref(), claim, &message, event).await?
                == Delivery::Sent
            {
                sent += 1;
            }
        }
        for due in self.reviews_due(now).await? {
            let event = self
                .event(Action::IdentityReviewReminded, due.stage)
                .resource("review", &due.campaign.to_string())
                .related([
                    ("staff", due.staff_id.to_string()),
                    ("items", due.pending.to_string()),
                ])
                .build();
            let claim = Claim {
                insert: "INSERT INTO review_reminders (campaign_id, staff_id, stage, sent_at) \
                         SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM review_reminders \
                         WHERE campaign_id = $1 AND staff_id = $2 AND stage = $3)",
                release: "DELETE FROM review_reminders WHERE campaign_id = $1 AND staff_id = $2 AND stage = $3",
                key: vec![
                    Value::Uuid(due.campaign),
                    Value::Uuid(due.staff_id),
                    Value::Text(due.stage.to_owned()),
                ],
                extra: vec![Value::Time(now)],
            };
            if deliver(
                &self.db,
                self.notifier.as_ref(),
                claim,
                &review_message(&due),
                event,
            )
            .await?
                == Delivery::Sent
            {
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// An event of identity's own, of a reminder at `stage`.
    fn event(&self, action: Action, stage: &str) -> EventBuilder {
        let me = ServiceName::Identity.spiffe_id(&self.trust_domain);
        EventBuilder::new(ServiceName::Identity, &self.trust_domain, action)
            .actor(ActorKind::Service, &me, &me)
            .outcome(Outcome::Allowed, stage)
    }

    /// Sends `notice` by e-mail to each of its recipients (see
    /// [`NoticeKind::recipients`]) who has not had it yet, each claimed
    /// first like a reminder, so that a notice asked for again, on any
    /// replica, reaches nobody twice.
    pub async fn notify(
        &self,
        notice: &StaffNotice,
        now: DateTime<Utc>,
    ) -> Result<Noticed, StoreError> {
        let recipients: Vec<(Uuid, String)> = match (notice.kind.permission(), notice.recipient) {
            (Some(permission), _) => {
                self.db
                    .fetch_all(
                        "SELECT s.id, s.email FROM staff s WHERE s.disabled_at IS NULL AND EXISTS \
                         (SELECT 1 FROM staff_roles r JOIN role_permissions p ON p.role = r.role \
                         WHERE r.staff_id = s.id AND r.revoked_at IS NULL \
                         AND (r.expires_at IS NULL OR r.expires_at > $2) AND p.permission = $1) \
                         ORDER BY s.id",
                        vec![Value::Text(permission.to_owned()), Value::Time(now)],
                    )
                    .await?
            }
            (None, Some(staff)) => {
                self.db
                    .fetch_all(
                        "SELECT id, email FROM staff WHERE id = $1 AND disabled_at IS NULL",
                        vec![Value::Uuid(staff)],
                    )
                    .await?
            }
            (None, None) => Vec::new(),
        };
        let mut outcome = Noticed::default();
        for (staff_id, email) in recipients {
            if notice.except == Some(staff_id) {
                continue;
            }
            outcome.recipients += 1;
            let mut related = vec![
                ("notice", notice.id.clone()),
                ("items", notice.items.to_string()),
            ];
            if let Some(reference) = notice.reference {
                related.push(("reference", reference.to_string()));
            }
            let event = self
                .event(Action::IdentityStaffNotified, notice.kind.name())
                .resource("staff", &staff_id.to_string())
                .related(related)
                .build();
            let claim = Claim {
                insert: "INSERT INTO staff_notices (notice_id, staff_id, kind, sent_at) \
                         SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM staff_notices \
                         WHERE notice_id = $1 AND staff_id = $2)",
                release: "DELETE FROM staff_notices WHERE notice_id = $1 AND staff_id = $2",
                key: vec![Value::Text(notice.id.clone()), Value::Uuid(staff_id)],
                extra: vec![Value::Text(notice.kind.name().to_owned()), Value::Time(now)],
            };
            let delivery = deliver(
                &self.db,
                self.notifier.as_ref(),
                claim,
                &notice.message(&email),
                event,
            )
            .await?;
            match delivery {
                Delivery::Sent => outcome.sent += 1,
                Delivery::Failed => outcome.failed += 1,
                Delivery::Claimed => {}
            }
        }
        Ok(outcome)
    }

    /// The reviewers to tell at `now` of the items waiting for them in the
    /// campaigns still open: each reviewer of an item (as
    /// [`crate::reviews::StaffReviewer`] decides) once when it starts, and
    /// once more when its deadline is nearer than the review window, if
    /// they were told of the start in an earlier sweep.
    pub async fn reviews_due(&self, now: DateTime<Utc>) -> Result<Vec<ReviewDue>, StoreError> {
        let reviews = Reviews::new(self.db.clone(), &self.trust_domain);
        let pending = reviews.pending(Some(now)).await?;
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        // Who may review anything: holders of a role that manages reviews,
        // and responsible attorneys.
        let candidates: Vec<(Uuid, String)> = self
            .db
            .fetch_all(
                "SELECT s.id, s.email FROM staff s WHERE s.disabled_at IS NULL AND (EXISTS \
                 (SELECT 1 FROM staff_roles r JOIN role_permissions p ON p.role = r.role \
                 WHERE r.staff_id = s.id AND r.revoked_at IS NULL AND p.permission = $1) \
                 OR EXISTS (SELECT 1 FROM matters m WHERE m.responsible_attorney_id = s.id)) \
                 ORDER BY s.id",
                vec![Value::Text(REVIEWS_MANAGE.to_owned())],
            )
            .await?;
        let told: Vec<(Uuid, Uuid, String)> = self
            .db
            .fetch_all(
                "SELECT r.campaign_id, r.staff_id, r.stage FROM review_reminders r \
                 JOIN review_campaigns c ON c.id = r.campaign_id WHERE c.deadline > $1",
                vec![Value::Time(now)],
            )
            .await?;
        let was_told = |campaign: Uuid, staff: Uuid, stage: &str| {
            told.iter()
                .any(|(c, s, st)| *c == campaign && *s == staff && st == stage)
        };
        let directory = Directory::new(self.db.clone());
        let mut due = Vec::new();
        for (staff_id, email) in candidates {
            let reviewer = reviews.reviewer(&directory, staff_id).await?;
            for crate::reviews::Waiting {
                campaign,
                name,
                deadline,
                items,
            } in reviewer.waiting(&pending)
            {
                let stage = if !was_told(campaign, staff_id, "started") {
                    "started"
                } else if !self.review_ahead.is_zero()
                    && deadline - now <= self.review_ahead
                    && !was_told(campaign, staff_id, "due")
                {
                    "due"
                } else {
                    continue;
                };
                due.push(ReviewDue {
                    campaign,
                    name: name.to_owned(),
                    deadline,
                    staff_id,
                    email: email.clone(),
                    pending: items,
                    stage,
                });
            }
        }
        Ok(due)
    }

    /// Sweeps every `interval` until `shutdown`.
    pub async fn run(
        self,
        interval: std::time::Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        confidant_runtime::app::every(interval, shutdown, || async {
            if let Err(e) = self.sweep(Utc::now()).await {
                tracing::warn!(error = %e, "the attestation reminders sweep failed");
            }
        })
        .await;
    }
}

fn review_message(due: &ReviewDue) -> Message {
    let when = due.deadline.format("%Y-%m-%d %H:%M UTC");
    let items = if due.pending == 1 {
        "1 grant waits".to_owned()
    } else {
        format!("{} grants wait", due.pending)
    };
    let (subject, opening) = if due.stage == "due" {
        (
            format!("Access review \"{}\": due by {when}", due.name),
            format!(
                "The access review \"{}\" closes on {when}, and {items} for your decision.",
                due.name
            ),
        )
    } else {
        (
            format!("Access review \"{}\": {items} for your decision", due.name),
            format!(
                "An access review, \"{}\", has started: {items} for your decision by {when}.",
                due.name
            ),
        )
    };
    Message {
        channel: "email".into(),
        address: due.email.clone(),
        subject,
        body: format!(
            "{opening} Certify each grant that is still needed and revoke the others in your \
             firm application (access reviews); a revocation takes effect at once. Grants \
             left undecided are reported as overdue."
        ),
    }
}

fn kind_name(kind: i32) -> &'static str {
    if kind == KIND_NDA { "nda" } else { "training" }
}

fn what(due: &Due) -> &'static str {
    if due.kind == KIND_NDA {
        "confidentiality agreement"
    } else {
        "confidentiality training"
    }
}

fn subject(due: &Due) -> &'static str {
    match (due.stage, due.kind == KIND_NDA) {
        ("lapsed", true) => "Your confidentiality agreement has lapsed",
        ("lapsed", false) => "Your confidentiality training has lapsed",
        (_, true) => "Your confidentiality agreement lapses soon",
        (_, false) => "Your confidentiality training lapses soon",
    }
}

fn body(due: &Due) -> String {
    let when = due.expires.format("%Y-%m-%d %H:%M UTC");
    let what = what(due);
    if due.stage == "lapsed" {
        format!(
            "Your {what} (version {}) lapsed on {when}. Until a new one is recorded, \
             Confidant denies you every client's data. Please renew it with your \
             compliance team.",
            due.version
        )
    } else {
        format!(
            "Your {what} (version {}) lapses on {when}. From then on, until a new one \
             is recorded, Confidant will deny you every client's data. Please renew it \
             with your compliance team before then.",
            due.version
        )
    }
}

/// Sends `message` through `notifier` once: claims it first in `db`, so that
/// one another replica claimed (or that was sent already) is not sent twice;
/// lets the claim go when it could not be sent, for a later try; and records
/// `event` once it was sent.
pub(crate) async fn deliver(
    db: &Database,
    notifier: &dyn Notifier,
    claim: Claim,
    message: &Message,
    event: confidant_proto::audit::v1::AuditEvent,
) -> Result<Delivery, StoreError> {
    let mut values = claim.key.clone();
    values.extend(claim.extra);
    let release = Statement::new(claim.release, claim.key);
    let claimed = Statement::new(claim.insert, values).expecting(1);
    match db.transact(vec![claimed], &[]).await {
        Ok(_) => {}
        // Another replica has it, or it went already.
        Err(e @ confidant_runtime::portable::TransactError::Unmet { .. }) => {
            tracing::debug!(error = %e, "a message was claimed elsewhere");
            return Ok(Delivery::Claimed);
        }
        Err(e) if e.is_duplicate() => return Ok(Delivery::Claimed),
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = notifier.send(message).await {
        tracing::warn!(error = %e.0, subject = %message.subject, "a message was not sent");
        db.transact(vec![release], &[]).await?;
        return Ok(Delivery::Failed);
    }
    if let Err(e) = db.transact(Vec::new(), &[event]).await {
        tracing::error!(error = %e, "a message sent was not recorded in the audit log");
    }
    Ok(Delivery::Sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(kind: NoticeKind, items: u32) -> StaffNotice {
        StaffNotice {
            id: "n-1".into(),
            kind,
            items,
            deadline: DateTime::parse_from_rfc3339("2026-12-20T09:30:00Z")
                .ok()
                .map(|d| d.with_timezone(&Utc)),
            reference: Some(Uuid::nil()),
            except: None,
            recipient: None,
        }
    }

    #[test]
    fn notices_count_their_items_in_words_that_agree() {
        let one = notice(NoticeKind::ReturnsListed, 1).message("rm@firm.example");
        assert_eq!(one.subject, "Originals to return to clients: 1 scope");
        assert!(
            one.body
                .contains("1 scope of client data is due, but it holds originals")
        );
        assert!(one.body.contains("It is on the return-to-client list"));
        let many = notice(NoticeKind::ReturnsListed, 3).message("rm@firm.example");
        assert_eq!(many.subject, "Originals to return to clients: 3 scopes");
        assert!(
            many.body
                .contains("3 scopes of client data are due, but they hold originals")
        );
        assert!(many.body.contains("They are on the return-to-client list"));
        let staged = notice(NoticeKind::DestructionStaged, 2).message("rm@firm.example");
        assert_eq!(
            staged.subject,
            "2 scopes of client data staged for destruction: keys go from 2026-12-20 09:30 UTC"
        );
        assert!(staged.body.contains("Every read of them is refused now"));
        assert_eq!(staged.address, "rm@firm.example");
        let due = notice(NoticeKind::DestructionDue, 1).message("rm@firm.example");
        assert_eq!(
            due.subject,
            "Last reminder: 1 scope of client data destroyed from 2026-12-20 09:30 UTC"
        );
        assert!(
            due.body
                .contains("1 scope of client data staged for destruction is close to its deadline"),
            "{}",
            due.body
        );
        assert!(due.body.contains("kept it: its keys"), "{}", due.body);
        let due = notice(NoticeKind::DestructionDue, 2).message("rm@firm.example");
        assert!(
            due.body.contains("2 scopes of client data staged for destruction are close to their deadline, and no records manager has kept them"),
            "{}",
            due.body
        );
    }

    #[test]
    fn notices_about_one_thing_name_it() {
        for kind in [
            NoticeKind::BatchAwaitingApproval,
            NoticeKind::ErasureAwaitingApproval,
            NoticeKind::HoldReleaseAwaitingApproval,
            NoticeKind::SubmissionReceived,
            NoticeKind::InvitationExpired,
        ] {
            assert!(kind.names_one(), "{kind:?}");
            let m = notice(kind, 1).message("x@firm.example");
            assert!(
                m.body.contains(&Uuid::nil().to_string()),
                "{kind:?}: {}",
                m.body
            );
        }
        assert!(!NoticeKind::DestructionStaged.names_one());
        assert!(!NoticeKind::ReturnsListed.names_one());
        assert!(!NoticeKind::DestructionDue.names_one());
        assert_eq!(
            NoticeKind::DestructionDue.permission(),
            Some(RETENTION_MANAGE)
        );
        assert_eq!(
            NoticeKind::HoldReleaseAwaitingApproval.permission(),
            Some(HOLDS_MANAGE)
        );
        assert_eq!(NoticeKind::InvitationExpired.permission(), None);
    }
}
