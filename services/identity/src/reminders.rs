//! Reminders before access lapses: when the confidentiality agreement or
//! the training that decisions count for a staff member lapses, every read
//! of client data is denied to them from that instant. So that this never
//! comes as a surprise in the middle of a matter, identity e-mails them
//! ahead of it (`due`) and once it has lapsed (`lapsed`), each at most once
//! per attestation, whichever replica's sweep comes first.

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
use crate::store::{Attested, KIND_NDA, StoreError};

/// Sends the reminders.
#[derive(Debug, Clone)]
pub struct Reminders {
    db: Database,
    notifier: Arc<dyn Notifier>,
    trust_domain: String,
    /// How long before a lapse the first reminder goes, and how long after
    /// it the second still does.
    ahead: Duration,
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
    /// Reminders `ahead_days` ahead through `notifier`.
    pub fn new(
        db: Database,
        notifier: Arc<dyn Notifier>,
        trust_domain: &str,
        ahead_days: u64,
    ) -> Self {
        Self {
            db,
            notifier,
            trust_domain: trust_domain.to_owned(),
            // At most a century.
            ahead: Duration::days(i64::try_from(ahead_days.min(36_500)).unwrap_or(36_500)),
        }
    }

    /// The reminders due at `now` that were not sent yet: for each enabled
    /// staff member, the agreement and the training that decisions count
    /// now, when it lapses within the window or lapsed within it.
    pub async fn due(&self, now: DateTime<Utc>) -> Result<Vec<Due>, StoreError> {
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

    /// Sends what is due at `now`; returns how many were sent. Each is
    /// claimed first, so that a reminder another replica claimed is not
    /// sent twice; one that could not be sent is let go again, for the next
    /// sweep, and one sent is then recorded in the audit log.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut sent = 0;
        let me = ServiceName::Identity.spiffe_id(&self.trust_domain);
        for due in self.due(now).await? {
            let event = EventBuilder::new(
                ServiceName::Identity,
                &self.trust_domain,
                Action::IdentityAttestationReminded,
            )
            .actor(ActorKind::Service, &me, &me)
            .resource("staff", &due.staff_id.to_string())
            .related([
                ("attestation", due.attestation.to_string()),
                ("kind", kind_name(due.kind).to_owned()),
            ])
            .outcome(Outcome::Allowed, due.stage)
            .build();
            let claim = Statement::new(
                "INSERT INTO attestation_reminders (attestation_id, stage, staff_id, sent_at) \
                 SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM attestation_reminders \
                 WHERE attestation_id = $1 AND stage = $2)",
                vec![
                    Value::Uuid(due.attestation),
                    Value::Text(due.stage.to_owned()),
                    Value::Uuid(due.staff_id),
                    Value::Time(now),
                ],
            )
            .expecting(1);
            match self.db.transact(vec![claim], &[]).await {
                Ok(_) => {}
                // Another replica has it.
                Err(e @ confidant_runtime::portable::TransactError::Unmet { .. }) => {
                    tracing::debug!(error = %e, "a reminder was claimed elsewhere");
                    continue;
                }
                Err(e) if e.is_duplicate() => continue,
                Err(e) => return Err(e.into()),
            }
            let message = Message {
                channel: "email".into(),
                address: due.email.clone(),
                subject: subject(&due).into(),
                body: body(&due),
            };
            if let Err(e) = self.notifier.send(&message).await {
                tracing::warn!(error = %e.0, stage = due.stage, "a reminder was not sent");
                self.db
                    .transact(
                        vec![Statement::new(
                            "DELETE FROM attestation_reminders WHERE attestation_id = $1 AND stage = $2",
                            vec![
                                Value::Uuid(due.attestation),
                                Value::Text(due.stage.to_owned()),
                            ],
                        )],
                        &[],
                    )
                    .await?;
                continue;
            }
            if let Err(e) = self.db.transact(Vec::new(), &[event]).await {
                tracing::error!(error = %e, "a reminder sent was not recorded in the audit log");
            }
            sent += 1;
        }
        Ok(sent)
    }

    /// Sweeps every `interval` until `shutdown`.
    pub async fn run(
        self,
        interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.sweep(Utc::now()).await {
                tracing::warn!(error = %e, "the attestation reminders sweep failed");
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
        }
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
