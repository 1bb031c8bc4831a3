//! Detection: rules kept as data, evaluated continuously over the log as it
//! grows. A rule that fires raises an alert (stored, audited, sent to the
//! notifier: a webhook in production, a file in dev) and can open an
//! incident. One replica runs the detector at a time (a lease); its cursor
//! is in the database, so a restart neither misses nor repeats events.

use std::collections::{HashMap, VecDeque};
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

/// How much older than the newest event seen an event may arrive (through a
/// service's outbox) and still be counted in full by the counting rules.
const LATE: chrono::Duration = chrono::Duration::minutes(10);

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

/// A page of alerts, newest first: at most `limit` after the one `after`
/// names (its firing time and id).
pub async fn alerts(
    db: &Database,
    after: Vec<Value>,
    limit: i64,
) -> Result<Vec<AlertRow>, sqlx::Error> {
    let mut values = after;
    values.push(Value::BigInt(limit));
    db.fetch_all(
        "SELECT id, rule_code, actor_id, fired_at, event_idx, summary, incident_id FROM detection_alerts \
         WHERE ($1 IS NULL OR (fired_at, id) < ($1, $2)) ORDER BY fired_at DESC, id DESC LIMIT $3",
        values,
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
    windows: tokio::sync::Mutex<Windows>,
}

/// What the counting rules have seen of the log, kept between steps so that
/// each event is counted once as it passes, instead of every actor's window
/// being searched again for every batch. It is valid only while this
/// detector has seen every event before `through`; otherwise (another
/// replica held the lease meanwhile, a restart, a rule's window grew) it is
/// dropped and each actor's window is read again from the log the first
/// time that actor appears.
#[derive(Debug, Default)]
struct Windows {
    /// The log position the windows are complete up to (exclusive).
    through: Option<i64>,
    /// The longest window of the counting rules, in seconds.
    span: i64,
    /// Per actor and read action: each client read, and when last.
    reads: HashMap<(String, String), HashMap<String, DateTime<Utc>>>,
    /// Per actor: when each refusal happened, oldest first.
    denials: HashMap<String, VecDeque<DateTime<Utc>>>,
    /// Per rule and actor: when the latest alert was raised, if ever.
    alerted: HashMap<(String, String), Option<DateTime<Utc>>>,
    /// The newest event time seen.
    newest: Option<DateTime<Utc>>,
}

impl Windows {
    /// Forgets what lies outside every window (allowing for late events).
    fn prune(&mut self) {
        let Some(newest) = self.newest else {
            return;
        };
        let horizon = newest - chrono::Duration::seconds(self.span) - LATE;
        for clients in self.reads.values_mut() {
            clients.retain(|_, at| *at >= horizon);
        }
        for times in self.denials.values_mut() {
            while times.front().is_some_and(|at| *at < horizon) {
                times.pop_front();
            }
        }
    }
}

/// A client id as the log's `client_id` column holds it.
fn canonical_client(id: &str) -> String {
    Uuid::parse_str(id).map_or_else(|_| id.to_owned(), |u| u.to_string())
}

const READS: [&str; 2] = ["vault.record.read", "vault.sealed_text.opened"];

/// The counting rule kind an event counts towards, if any.
fn counted_as(e: &AuditEvent) -> Option<&'static str> {
    if e.outcome == Outcome::Denied as i32 {
        Some("denials")
    } else if e.outcome == Outcome::Allowed as i32 && READS.contains(&e.action.as_str()) {
        Some("distinct_clients")
    } else {
        None
    }
}
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
            windows: tokio::sync::Mutex::new(Windows::default()),
        }
    }

    /// Counts `event` into its window, reading the actor's window from the
    /// log first if this detector has not seen the actor yet (`before`: the
    /// first position of the batch; `since`: the oldest time any window of
    /// the batch reaches back to).
    async fn observe(
        &self,
        windows: &mut Windows,
        event: &AuditEvent,
        before: i64,
        since: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let actor = event
            .actor
            .as_ref()
            .map(|a| a.id.clone())
            .unwrap_or_default();
        let at = time_of(event);
        windows.newest = Some(windows.newest.map_or(at, |n| n.max(at)));
        let filter = |action: Option<String>, outcome: Outcome| EventFilter {
            actor_id: Some(actor.clone()),
            action,
            outcome: Some(outcome as i32),
            start: Some(since),
            before_index: Some(before),
            limit: 100_000,
            ..EventFilter::default()
        };
        match counted_as(event) {
            Some("denials") => {
                if !windows.denials.contains_key(&actor) {
                    let mut seen: Vec<DateTime<Utc>> = self
                        .log
                        .store()
                        .occurrences(&filter(None, Outcome::Denied))
                        .await?
                        .into_iter()
                        .map(|o| o.occurred_at)
                        .collect();
                    seen.sort();
                    windows.denials.insert(actor.clone(), seen.into());
                }
                if let Some(times) = windows.denials.get_mut(&actor) {
                    times.push_back(at);
                }
            }
            Some(_) => {
                let key = (actor.clone(), event.action.clone());
                if !windows.reads.contains_key(&key) {
                    let mut clients: HashMap<String, DateTime<Utc>> = HashMap::new();
                    for o in self
                        .log
                        .store()
                        .occurrences(&filter(Some(event.action.clone()), Outcome::Allowed))
                        .await?
                    {
                        if let Some(client) = o.client_id {
                            let last = clients.entry(client).or_insert(o.occurred_at);
                            *last = (*last).max(o.occurred_at);
                        }
                    }
                    windows.reads.insert(key.clone(), clients);
                }
                if let Some(client) = event
                    .resource
                    .as_ref()
                    .map(|r| r.client_id.as_str())
                    .filter(|c| !c.is_empty())
                    && let Some(clients) = windows.reads.get_mut(&key)
                {
                    let last = clients.entry(canonical_client(client)).or_insert(at);
                    *last = (*last).max(at);
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Whether `rule` fires on `event`, with what it saw (`windows` holds
    /// every event up to this one).
    fn fires(&self, rule: &RuleRow, event: &AuditEvent, windows: &Windows) -> Option<String> {
        let actor = event.actor.as_ref();
        let actor_id = actor.map(|a| a.id.clone()).unwrap_or_default();
        let at = time_of(event);
        let window = chrono::Duration::seconds(i64::from(rule.window_seconds.max(1)));
        let allowed = event.outcome == Outcome::Allowed as i32;
        let denied = event.outcome == Outcome::Denied as i32;
        let from = at - window;
        match rule.kind.as_str() {
            "distinct_clients" if allowed && READS.contains(&event.action.as_str()) => {
                let n = windows
                    .reads
                    .get(&(actor_id, event.action.clone()))
                    .map_or(0, |clients| {
                        clients.values().filter(|t| **t >= from).count()
                    });
                (n > usize::try_from(rule.threshold).unwrap_or(usize::MAX))
                    .then(|| format!("{n} distinct clients read within {}s", rule.window_seconds))
            }
            "denials" if denied => {
                let n = windows
                    .denials
                    .get(&actor_id)
                    .map_or(0, |times| times.iter().filter(|t| **t >= from).count());
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
        }
    }

    /// Whether `actor` was alerted under `rule` within its window already.
    async fn alerted(
        &self,
        windows: &mut Windows,
        rule: &RuleRow,
        actor: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let since = at - chrono::Duration::seconds(i64::from(rule.window_seconds.max(1)));
        let key = (rule.code.clone(), actor.to_owned());
        let latest = match windows.alerted.get(&key) {
            Some(latest) => *latest,
            None => {
                let recent: Vec<AlertRow> = self
                    .db
                    .fetch_all(
                        "SELECT id, rule_code, actor_id, fired_at, event_idx, summary, incident_id FROM detection_alerts WHERE rule_code = $1 AND actor_id = $2 ORDER BY fired_at DESC LIMIT 1",
                        vec![Value::Text(rule.code.clone()), Value::Text(actor.to_owned())],
                    )
                    .await?;
                let latest = recent.first().map(|a| a.fired_at);
                windows.alerted.insert(key, latest);
                latest
            }
        };
        Ok(latest.is_some_and(|fired| fired >= since))
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
        let span = rules
            .iter()
            .filter(|r| matches!(r.kind.as_str(), "distinct_clients" | "denials"))
            .map(|r| i64::from(r.window_seconds.max(1)))
            .max()
            .unwrap_or(1);
        let mut windows = self.windows.lock().await;
        if windows.through != Some(next) || windows.span < span {
            *windows = Windows {
                span,
                ..Windows::default()
            };
        }
        // Until this batch is done the windows are not complete up to any
        // position: a failure part way drops them.
        windows.through = None;
        let before = events.first().map_or(next, |e| e.idx);
        let since = decoded
            .iter()
            .flatten()
            .map(time_of)
            .min()
            .unwrap_or_else(Utc::now)
            - chrono::Duration::seconds(span)
            - LATE;
        // Every event goes into its window, but the counting rules are
        // evaluated at an actor's last event of the batch (whose window holds
        // the earlier ones): one count per actor and batch, not per event.
        let mut last_counted: HashMap<(&str, String), usize> = HashMap::new();
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
            self.observe(&mut windows, &event, before, since).await?;
            for rule in &rules {
                let counting = matches!(rule.kind.as_str(), "distinct_clients" | "denials");
                let latest = counted == Some(rule.kind.as_str())
                    && last_counted.get(&(rule.kind.as_str(), actor.clone())) == Some(&i);
                if counting && !latest {
                    continue;
                }
                let Some(summary) = self.fires(rule, &event, &windows) else {
                    continue;
                };
                if self.alerted(&mut windows, rule, &actor, at).await? {
                    continue;
                }
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
                windows
                    .alerted
                    .insert((rule.code.clone(), actor.clone()), Some(now));
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
        windows.through = Some(advanced);
        windows.prune();
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
