//! Detection: rules kept as data, evaluated continuously over the log as it
//! grows. A rule that fires raises an alert (stored, audited, sent to the
//! notifier: a webhook in production, a file in dev) and can open an
//! incident. One replica runs the detector at a time (a lease); its cursor
//! is in the database, so a restart neither misses nor repeats events.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use confidant_proto::audit::v1::{ActorKind, AuditEvent, Outcome};
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::coord::SharedCoordinator;
use confidant_runtime::notify::{Message as Note, Notifier};
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Database;
use prost::Message;
use uuid::Uuid;

use crate::log::AuditLog;
use crate::store::EventFilter;

const LEASE: &str = "audit-detector";
const LEASE_TTL: Duration = Duration::from_secs(15);
const BATCH: i64 = 500;

/// A detection rule as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RuleRow {
    /// Code.
    pub code: String,
    /// What it looks for.
    pub kind: String,
    /// What it means.
    pub description: String,
    /// Count above which it fires (counting kinds).
    pub threshold: i32,
    /// The window counted over, and within which an actor is alerted once.
    pub window_seconds: i32,
    /// For `action` rules: the action.
    pub action_name: Option<String>,
    /// Working hours (UTC) for `off_hours`: from.
    pub hours_start: i32,
    /// ... to (exclusive).
    pub hours_end: i32,
    /// 1 when evaluated.
    pub enabled: i32,
    /// 1 when an alert opens an incident.
    pub opens_incident: i32,
}

/// An alert as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertRow {
    /// Id.
    pub id: Uuid,
    /// The rule.
    pub rule_code: String,
    /// The actor it concerns.
    pub actor_id: String,
    /// When.
    pub fired_at: DateTime<Utc>,
    /// The event that made it fire.
    pub event_idx: i64,
    /// What was seen (counts, no client data).
    pub summary: String,
    /// The incident it opened.
    pub incident_id: Option<Uuid>,
}

/// Where alerts go when no webhook is configured: nowhere but the API (and
/// a log line without client data).
#[derive(Debug)]
pub struct ListedOnly;

#[async_trait::async_trait]
impl Notifier for ListedOnly {
    async fn send(&self, message: &Note) -> Result<(), confidant_runtime::notify::SendError> {
        tracing::warn!(subject = %message.subject, "alert raised");
        Ok(())
    }
}

/// Reads the rules.
pub async fn rules(db: &Database) -> Result<Vec<RuleRow>, sqlx::Error> {
    db.fetch_all(
        "SELECT code, kind, description, threshold, window_seconds, action_name, hours_start, hours_end, enabled, opens_incident FROM detection_rules ORDER BY code",
        vec![],
    )
    .await
}

/// Alerts, newest first.
pub async fn alerts(db: &Database, limit: i32) -> Result<Vec<AlertRow>, sqlx::Error> {
    db.fetch_all(
        "SELECT id, rule_code, actor_id, fired_at, event_idx, summary, incident_id FROM detection_alerts ORDER BY fired_at DESC, id DESC LIMIT $1",
        vec![Value::Int(limit)],
    )
    .await
}

/// The detector.
#[derive(Debug)]
pub struct Detector {
    db: Database,
    log: Arc<AuditLog>,
    notifier: Arc<dyn Notifier>,
    trust_domain: String,
    retention: String,
}

const READS: [&str; 2] = ["vault.record.read", "vault.sealed_text.opened"];
const SHREDS: [&str; 2] = ["vault.scope.shredded", "vault.record.shredded"];

fn time_of(event: &AuditEvent) -> DateTime<Utc> {
    event
        .time
        .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .unwrap_or_else(Utc::now)
}

impl Detector {
    /// A detector over the audit database and log, alerting `notifier`.
    pub fn new(
        db: Database,
        log: Arc<AuditLog>,
        notifier: Arc<dyn Notifier>,
        trust_domain: &str,
    ) -> Self {
        Self {
            db,
            log,
            notifier,
            trust_domain: trust_domain.to_owned(),
            retention: confidant_runtime::ServiceName::Retention.spiffe_id(trust_domain),
        }
    }

    async fn count(
        &self,
        filter: EventFilter,
        distinct_clients: bool,
    ) -> Result<usize, sqlx::Error> {
        let found = self.log.store().search(&filter).await?;
        if !distinct_clients {
            return Ok(found.len());
        }
        let mut clients = std::collections::BTreeSet::new();
        for f in found {
            if let Ok(e) = AuditEvent::decode(f.event.payload.as_slice())
                && let Some(r) = e.resource
                && !r.client_id.is_empty()
            {
                clients.insert(r.client_id);
            }
        }
        Ok(clients.len())
    }

    /// Whether `rule` fires on `event`, with what it saw.
    async fn fires(
        &self,
        rule: &RuleRow,
        event: &AuditEvent,
    ) -> Result<Option<String>, sqlx::Error> {
        let actor = event.actor.as_ref();
        let actor_id = actor.map(|a| a.id.clone()).unwrap_or_default();
        let at = time_of(event);
        let window = chrono::Duration::seconds(i64::from(rule.window_seconds.max(1)));
        let allowed = event.outcome == Outcome::Allowed as i32;
        let denied = event.outcome == Outcome::Denied as i32;
        Ok(match rule.kind.as_str() {
            "distinct_clients" if allowed && READS.contains(&event.action.as_str()) => {
                let n = self
                    .count(
                        EventFilter {
                            actor_id: Some(actor_id),
                            action: Some(event.action.clone()),
                            outcome: Some(Outcome::Allowed as i32),
                            start: Some(at - window),
                            end: Some(at + chrono::Duration::seconds(1)),
                            limit: 100_000,
                            ..EventFilter::default()
                        },
                        true,
                    )
                    .await?;
                (n > usize::try_from(rule.threshold).unwrap_or(usize::MAX))
                    .then(|| format!("{n} distinct clients read within {}s", rule.window_seconds))
            }
            "denials" if denied => {
                let n = self
                    .count(
                        EventFilter {
                            actor_id: Some(actor_id),
                            outcome: Some(Outcome::Denied as i32),
                            start: Some(at - window),
                            end: Some(at + chrono::Duration::seconds(1)),
                            limit: 100_000,
                            ..EventFilter::default()
                        },
                        false,
                    )
                    .await?;
                (n > usize::try_from(rule.threshold).unwrap_or(usize::MAX))
                    .then(|| format!("{n} refusals within {}s", rule.window_seconds))
            }
            "walled" if denied && event.reason == "behind_wall" => {
                Some(format!("{} refused: behind an ethical wall", event.action))
            }
            "action" if rule.action_name.as_deref() == Some(event.action.as_str()) => {
                Some(format!("{} ({})", event.action, rule.description))
            }
            "off_hours" if allowed && READS.contains(&event.action.as_str()) => {
                let hour = i32::try_from(at.hour()).unwrap_or(0);
                let inside = if rule.hours_start <= rule.hours_end {
                    (rule.hours_start..rule.hours_end).contains(&hour)
                } else {
                    hour >= rule.hours_start || hour < rule.hours_end
                };
                (!inside).then(|| format!("read at {:02}:{:02} UTC", at.hour(), at.minute()))
            }
            "shred_outside_retention"
                if allowed
                    && SHREDS.contains(&event.action.as_str())
                    && actor.is_none_or(|a| a.peer_identity != self.retention) =>
            {
                Some(format!(
                    "{} by {}",
                    event.action,
                    actor.map_or("an unknown peer", |a| a.peer_identity.as_str())
                ))
            }
            _ => None,
        })
    }

    /// Whether `actor` was alerted under `rule` within its window already.
    async fn alerted(
        &self,
        rule: &RuleRow,
        actor: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let since = at - chrono::Duration::seconds(i64::from(rule.window_seconds.max(1)));
        let recent: Vec<AlertRow> = self
            .db
            .fetch_all(
                "SELECT id, rule_code, actor_id, fired_at, event_idx, summary, incident_id FROM detection_alerts WHERE rule_code = $1 AND actor_id = $2 ORDER BY fired_at DESC LIMIT 1",
                vec![Value::Text(rule.code.clone()), Value::Text(actor.to_owned())],
            )
            .await?;
        Ok(recent.first().is_some_and(|a| a.fired_at >= since))
    }

    /// Evaluates the rules over the events after the cursor; returns how
    /// many events it read.
    pub async fn step(&self) -> anyhow::Result<usize> {
        let cursor: Option<(i64,)> = self
            .db
            .fetch_optional("SELECT next_idx FROM detection_cursor WHERE id = 1", vec![])
            .await?;
        let next = cursor.map_or(0, |c| c.0);
        let events = self.log.store().range(next, BATCH).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let rules: Vec<RuleRow> = rules(&self.db)
            .await?
            .into_iter()
            .filter(|r| r.enabled != 0)
            .collect();
        let me = crate::NAME.spiffe_id(&self.trust_domain);
        let mut read = 0;
        let decoded: Vec<Option<AuditEvent>> = events
            .iter()
            .map(|e| AuditEvent::decode(e.payload.as_slice()).ok())
            .collect();
        // Counting rules look back over a window of the log, so an actor's
        // events in one batch are counted once, at the actor's last one
        // (which sees the earlier ones): one search per actor and batch,
        // not per event.
        let counted_as = |e: &AuditEvent| {
            if e.outcome == Outcome::Denied as i32 {
                Some("denials")
            } else if e.outcome == Outcome::Allowed as i32 && READS.contains(&e.action.as_str()) {
                Some("distinct_clients")
            } else {
                None
            }
        };
        let mut last_counted: std::collections::HashMap<(&str, String), usize> =
            std::collections::HashMap::new();
        for (i, event) in decoded.iter().enumerate() {
            if let Some(e) = event
                && let Some(kind) = counted_as(e)
            {
                let actor = e.actor.as_ref().map(|a| a.id.clone()).unwrap_or_default();
                last_counted.insert((kind, actor), i);
            }
        }
        for (i, (stored, event)) in events.iter().zip(decoded).enumerate() {
            read += 1;
            let Some(event) = event else {
                continue;
            };
            // The detector's own alerts and incidents are not evaluated again.
            if event.source_service == crate::NAME.as_str() {
                continue;
            }
            let actor = event
                .actor
                .as_ref()
                .map(|a| a.id.clone())
                .unwrap_or_default();
            let at = time_of(&event);
            let counted = counted_as(&event);
            for rule in &rules {
                let counting = matches!(rule.kind.as_str(), "distinct_clients" | "denials");
                let latest = counted == Some(rule.kind.as_str())
                    && last_counted.get(&(rule.kind.as_str(), actor.clone())) == Some(&i);
                if (counting && !latest) || self.alerted(rule, &actor, at).await? {
                    continue;
                }
                let Some(summary) = self.fires(rule, &event).await? else {
                    continue;
                };
                let id = Uuid::now_v7();
                let now = Utc::now();
                let incident = (rule.opens_incident != 0).then(Uuid::now_v7);
                let mut statements = vec![Statement::new(
                    "INSERT INTO detection_alerts (id, rule_code, actor_id, fired_at, event_idx, summary, incident_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    vec![
                        Value::Uuid(id),
                        Value::Text(rule.code.clone()),
                        Value::Text(actor.clone()),
                        Value::Time(now),
                        Value::BigInt(stored.idx),
                        Value::Text(summary.clone()),
                        Value::OptUuid(incident),
                    ],
                )];
                let mut audit_events = vec![
                    EventBuilder::new(crate::NAME, &self.trust_domain, Action::AuditAlertRaised)
                        .actor(ActorKind::Service, &me, &me)
                        .resource("alert", &id.to_string())
                        .outcome(Outcome::Allowed, &rule.code)
                        .build(),
                ];
                if let Some(incident) = incident {
                    statements.push(Statement::new(
                        "INSERT INTO incidents (id, title, description, stage, aware_at, discovered_at, opened_by, opened_at) VALUES ($1, $2, $3, 'detection', $4, $4, $5, $4)",
                        vec![
                            Value::Uuid(incident),
                            Value::Text(format!("Alert: {}", rule.code)),
                            Value::Text(format!("Opened by detection rule {}: {summary}.", rule.code)),
                            Value::Time(now),
                            Value::Text(me.clone()),
                        ],
                    ));
                    statements.push(Statement::new(
                        "INSERT INTO incident_timeline (id, incident_id, at, staff_id, stage, note) VALUES ($1, $2, $3, $4, 'detection', $5)",
                        vec![
                            Value::Uuid(Uuid::now_v7()),
                            Value::Uuid(incident),
                            Value::Time(now),
                            Value::Text(me.clone()),
                            Value::Text(format!("opened by alert {id}")),
                        ],
                    ));
                    audit_events.push(
                        EventBuilder::new(
                            crate::NAME,
                            &self.trust_domain,
                            Action::AuditIncidentOpened,
                        )
                        .actor(ActorKind::Service, &me, &me)
                        .resource("incident", &incident.to_string())
                        .outcome(Outcome::Allowed, "detection")
                        .build(),
                    );
                }
                self.db.transact(statements, &audit_events).await?;
                let note = Note {
                    channel: "alert".into(),
                    address: "security-officer".into(),
                    subject: format!("Confidant alert: {}", rule.code),
                    body: format!(
                        "Rule {} fired for actor {actor}: {summary}. Alert {id}{}.",
                        rule.code,
                        incident
                            .map(|i| format!("; incident {i} opened"))
                            .unwrap_or_default()
                    ),
                };
                if let Err(e) = self.notifier.send(&note).await {
                    tracing::warn!(error = %e.0, alert = %id, "alert not sent; it stays listed");
                }
            }
        }
        let advanced = next + i64::try_from(read).unwrap_or(0);
        self.db
            .transact(
                vec![Statement::new(
                    "UPDATE detection_cursor SET next_idx = $1 WHERE id = 1",
                    vec![Value::BigInt(advanced)],
                )],
                &[],
            )
            .await?;
        Ok(read)
    }
}

/// Runs the detector every `every` (sooner while there is a backlog), one
/// replica at a time, until shutdown.
pub async fn run(
    detector: Detector,
    coord: SharedCoordinator,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let holder = Uuid::new_v4().to_string();
    let mut lease = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        lease = match lease.take() {
            Some(l) => match coord.renew_lease(&l, LEASE_TTL).await {
                Ok(true) => Some(l),
                _ => None,
            },
            None => coord
                .acquire_lease(LEASE, &holder, LEASE_TTL)
                .await
                .ok()
                .flatten(),
        };
        let mut backlog = false;
        if lease.is_some() {
            match detector.step().await {
                Ok(n) => backlog = n as i64 == BATCH,
                Err(e) => tracing::warn!(error = %e, "detection step failed; retrying"),
            }
        }
        if !backlog {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
    if let Some(l) = lease {
        let _ = coord.release_lease(&l).await;
    }
}
