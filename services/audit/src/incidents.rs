//! Incident response: incidents and their stages, notification obligations
//! computed from rules kept as data, the clients a compromised identity
//! reached (from the log itself), and the notifications sent.
//!
//! Every change commits together with its audit event in the audit
//! database's own outbox; [`drain_own_outbox`] appends those events to the
//! log, so an incident change and its record cannot part.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use confidant_proto::audit::v1 as pb;
use confidant_proto::audit::v1::incident_service_server::IncidentService;
use confidant_proto::audit::v1::{AuditEvent, Outcome};
use confidant_runtime::audit::Action;
use confidant_runtime::auth::Actor;
use confidant_runtime::decide::Decider;
use confidant_runtime::error::{Violations, invalid_argument, storage_status, with_reason};
use confidant_runtime::outbox::Outbox;
use confidant_runtime::page::{self, Key, Part};
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Database;
use prost::Message;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::log::AuditLog;
use crate::store::EventFilter;

/// Stages in order.
const STAGES: [(&str, pb::IncidentStage); 6] = [
    ("detection", pb::IncidentStage::Detection),
    ("containment", pb::IncidentStage::Containment),
    ("assessment", pb::IncidentStage::Assessment),
    ("notification", pb::IncidentStage::Notification),
    ("mitigation", pb::IncidentStage::Mitigation),
    ("closed", pb::IncidentStage::Closed),
];

/// Actions that read client data in clear.
const READS: [&str; 2] = ["vault.record.read", "vault.sealed_text.opened"];
/// Other accesses to client data.
const OTHER_ACCESSES: [&str; 5] = [
    "vault.record.created",
    "vault.record.corrected",
    "retention.item.checked_out",
    "retention.item.registered",
    "intake.file.uploaded",
];
/// What a compromised actor did to one client, matter and category.
struct Reached {
    reads: i64,
    others: i64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    /// The fields whose values the reads returned.
    disclosed: std::collections::BTreeSet<String>,
}

/// Most events one affected-clients search examines.
const MAX_EXAMINED: i64 = 1_000_000;

fn stage_name(stage: pb::IncidentStage) -> Option<&'static str> {
    STAGES.iter().find(|(_, s)| *s == stage).map(|(n, _)| *n)
}

fn stage_of(name: &str) -> pb::IncidentStage {
    STAGES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(pb::IncidentStage::Unspecified, |(_, s)| *s)
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn time_of(t: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
}

fn text(v: &mut Violations, field: &str, value: &str, max: usize) -> String {
    let t = value.trim();
    if t.is_empty() || t.chars().count() > max {
        v.add(field, format!("1 to {max} characters"));
    }
    t.to_owned()
}

/// What can go wrong here.
#[derive(Debug)]
enum Error {
    Invalid(Violations),
    Unauthenticated,
    Refused(confidant_runtime::decide::Refusal),
    NotFound(&'static str),
    Conflict(&'static str),
    Store(sqlx::Error),
    Audit(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Store(e)
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(v) => invalid_argument(v.as_slice()),
            Error::Unauthenticated => with_reason(
                Code::Unauthenticated,
                "staff_token_required",
                "sign in as a staff member",
            ),
            Error::Refused(confidant_runtime::decide::Refusal::Denied { reason, message }) => {
                with_reason(Code::PermissionDenied, &reason, message)
            }
            Error::Refused(confidant_runtime::decide::Refusal::Unavailable(s)) => {
                tracing::warn!(code = ?s.code(), "identity call failed");
                with_reason(
                    Code::Unavailable,
                    "identity_unavailable",
                    "the authorization decision could not be made; retry later",
                )
            }
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::Conflict(message) => with_reason(Code::FailedPrecondition, "conflict", message),
            Error::Store(e) => {
                tracing::error!(error = %e, "incident storage failed");
                storage_status(&e)
            }
            Error::Audit(e) => {
                tracing::error!(error = %e, "incident change not recorded");
                with_reason(
                    Code::Unavailable,
                    "audit_unavailable",
                    "the change could not be recorded, so it was not made; retry later",
                )
            }
        }
    }
}

fn check(v: Violations) -> Result<(), Error> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(v))
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct RuleRow {
    code: String,
    regime: String,
    recipient: String,
    trigger_kind: String,
    deadline_hours: i32,
    deadline_text: String,
    basis: String,
    jurisdiction: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct IncidentRow {
    id: Uuid,
    title: String,
    description: String,
    stage: String,
    aware_at: DateTime<Utc>,
    discovered_at: DateTime<Utc>,
    opened_by: String,
    opened_at: DateTime<Utc>,
}

/// incident, id, title, assignee, due, done.
type TaskRow = (
    Uuid,
    Uuid,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

#[derive(Debug, Clone, sqlx::FromRow)]
struct TimelineRow {
    incident_id: Uuid,
    at: DateTime<Utc>,
    staff_id: String,
    stage: Option<String>,
    note: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct NotificationRow {
    incident_id: Uuid,
    obligation_code: String,
    recipient: String,
    channel: String,
    sent_at: DateTime<Utc>,
    body: String,
    recorded_by: String,
}

/// What hangs off one incident, read for a page of them.
struct Parts {
    codes: Vec<String>,
    terms: Vec<(Uuid, i32)>,
    notifications: Vec<NotificationRow>,
    tasks: Vec<TaskRow>,
    timeline: Vec<TimelineRow>,
}

/// `id`'s rows of a page's children.
fn take<T>(children: &mut std::collections::HashMap<Uuid, Vec<T>>, id: Uuid) -> Vec<T> {
    children.remove(&id).unwrap_or_default()
}

/// The incident of `row` with its obligations at `now`; with timeline and
/// notifications when `full`.
fn incident(
    row: &IncidentRow,
    rules: &[RuleRow],
    parts: Parts,
    full: bool,
    now: DateTime<Utc>,
) -> pb::Incident {
    let Parts {
        codes,
        terms,
        notifications,
        tasks,
        timeline,
    } = parts;
    let met = |code: &str| {
        notifications
            .iter()
            .filter(|n| n.obligation_code == code)
            .map(|n| n.sent_at)
            .min()
    };
    let obligation = |code: String,
                      regime: String,
                      recipient: String,
                      due: Option<DateTime<Utc>>,
                      deadline_text: String,
                      basis: String| {
        let met_at = met(&code);
        let status = match (met_at, due) {
            (Some(_), _) => pb::ObligationStatus::Met,
            (None, Some(d)) if d < now => pb::ObligationStatus::Overdue,
            _ => pb::ObligationStatus::Pending,
        };
        pb::Obligation {
            code,
            regime,
            recipient,
            due_time: due.map(ts),
            deadline_text,
            basis,
            status: status as i32,
            met_time: met_at.map(ts),
        }
    };
    let mut obligations = Vec::new();
    for code in &codes {
        let Some(rule) = rules.iter().find(|r| r.code == *code) else {
            continue;
        };
        let from = if rule.trigger_kind == "discovery" {
            row.discovered_at
        } else {
            row.aware_at
        };
        let due = (rule.deadline_hours > 0)
            .then(|| from + chrono::Duration::hours(i64::from(rule.deadline_hours)));
        obligations.push(obligation(
            rule.code.clone(),
            rule.regime.clone(),
            rule.recipient.clone(),
            due,
            rule.deadline_text.clone(),
            rule.basis.clone(),
        ));
    }
    for (client, hours) in &terms {
        obligations.push(obligation(
            format!("client-terms:{client}"),
            "Client terms".into(),
            format!("client {client}"),
            Some(row.aware_at + chrono::Duration::hours(i64::from(*hours))),
            format!("within {hours} hours of awareness (outside-counsel guidelines)"),
            "engagement terms".into(),
        ));
    }
    obligations.sort_by_key(|o| (o.due_time.map_or(i64::MAX, |t| t.seconds), o.code.clone()));
    let timeline = timeline
        .into_iter()
        .map(|t| pb::TimelineEntry {
            time: Some(ts(t.at)),
            staff_id: t.staff_id,
            stage: t
                .stage
                .as_deref()
                .map_or(pb::IncidentStage::Unspecified, stage_of) as i32,
            note: t.note,
        })
        .collect();
    let tasks = tasks
        .into_iter()
        .map(|(_, id, title, assignee, due, done)| pb::IncidentTask {
            id: id.to_string(),
            title,
            assignee_staff_id: assignee,
            due_time: Some(ts(due)),
            done_time: done.map(ts),
            overdue: done.is_none() && due < now,
        })
        .collect();
    pb::Incident {
        tasks,
        id: row.id.to_string(),
        title: row.title.clone(),
        description: row.description.clone(),
        stage: stage_of(&row.stage) as i32,
        aware_time: Some(ts(row.aware_at)),
        discover_time: Some(ts(row.discovered_at)),
        rule_codes: codes,
        client_terms: terms
            .iter()
            .map(|(c, h)| pb::ClientTerm {
                client_id: c.to_string(),
                hours: *h,
            })
            .collect(),
        obligations,
        timeline,
        notifications: if full {
            notifications
                .into_iter()
                .map(|n| pb::Notification {
                    obligation_code: n.obligation_code,
                    recipient: n.recipient,
                    channel: n.channel,
                    sent_time: Some(ts(n.sent_at)),
                    text: n.body,
                    recorded_by: n.recorded_by,
                })
                .collect()
        } else {
            Vec::new()
        },
        opened_by: row.opened_by.clone(),
    }
}

/// Handlers of `confidant.audit.v1.IncidentService`.
#[derive(Debug, Clone)]
pub struct IncidentApi {
    db: Database,
    log: Arc<AuditLog>,
    decider: Arc<Decider>,
    trust_domain: String,
    reporter: crate::reports::Reporter,
}

/// Appends the events the audit service put in its own outbox (incident
/// changes) to the log, until shutdown. Appending is idempotent by event id,
/// so a crash between append and acknowledgement repeats nothing.
pub async fn drain_own_outbox(
    outbox: Outbox,
    log: Arc<AuditLog>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut idle = true;
        match outbox.pending(100).await {
            Ok(batch) if !batch.is_empty() => {
                idle = false;
                let seqs: Vec<i64> = batch.iter().map(|p| p.seq).collect();
                let events: Vec<AuditEvent> = batch.into_iter().map(|p| p.event).collect();
                match crate::domain::validate_batch(&events, crate::NAME.as_str(), Utc::now()) {
                    Ok(valid) => match log.append(&valid).await {
                        Ok(_) => {
                            if let Err(e) = outbox.remove_delivered(&seqs).await {
                                tracing::warn!(error = %e, "own outbox not acknowledged");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "own events not appended; retrying");
                            idle = true;
                        }
                    },
                    Err(v) => {
                        tracing::error!(violations = ?v.as_slice(), "own event invalid");
                        let _ = outbox.record_failure(&seqs, "invalid").await;
                        idle = true;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "own outbox unreadable"),
        }
        if *shutdown.borrow() {
            return;
        }
        if idle {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

impl IncidentApi {
    /// Handlers over the audit database and log; reports ask `identity`
    /// and `retention` for their figures.
    pub fn new(
        db: Database,
        log: Arc<AuditLog>,
        decider: Arc<Decider>,
        trust_domain: &str,
        identity: Option<confidant_runtime::client::PeerChannel>,
        retention: Option<confidant_runtime::client::PeerChannel>,
    ) -> Self {
        let reporter = crate::reports::Reporter {
            db: db.clone(),
            log: log.clone(),
            identity,
            retention,
        };
        Self {
            db,
            log,
            decider,
            trust_domain: trust_domain.to_owned(),
            reporter,
        }
    }

    /// The incidents a report of `[start, end)` covers, and its alerts by
    /// rule.
    async fn report_inputs(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<(Vec<pb::Incident>, Vec<(String, i64)>), Error> {
        let rows: Vec<IncidentRow> = self
            .db
            .fetch_all(
                "SELECT id, title, description, stage, aware_at, discovered_at, opened_by, opened_at FROM incidents WHERE opened_at < $2 AND (stage <> 'closed' OR opened_at >= $1) ORDER BY opened_at",
                vec![Value::Time(start), Value::Time(end)],
            )
            .await?;
        let rules = self.rules().await?;
        let incidents = self
            .incidents(&rows, &rules, false, end.min(Utc::now()))
            .await?;
        let alerts: Vec<(String, i64)> = self
            .db
            .fetch_all(
                "SELECT rule_code, COUNT(*) FROM detection_alerts WHERE fired_at >= $1 AND fired_at < $2 GROUP BY rule_code ORDER BY rule_code",
                vec![Value::Time(start), Value::Time(end)],
            )
            .await?;
        Ok((incidents, alerts))
    }

    /// Builds and keeps the scheduled report of `[start, end)` unless it
    /// exists; tells whether it built one.
    pub async fn scheduled_report(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        let me = crate::NAME.spiffe_id(&self.trust_domain);
        let existing: Option<(Uuid,)> = self
            .db
            .fetch_optional(
                "SELECT id FROM compliance_reports WHERE start_at = $1 AND end_at = $2 AND generated_by = $3",
                vec![Value::Time(start), Value::Time(end), Value::Text(me.clone())],
            )
            .await?;
        if existing.is_some() {
            return Ok(false);
        }
        let (incidents, alerts) = self
            .report_inputs(start, end)
            .await
            .map_err(|e| anyhow::anyhow!("{:?}", Status::from(e).code()))?;
        let (report, size) = self.reporter.build(start, end, incidents, alerts).await?;
        let event = confidant_runtime::audit::EventBuilder::new(
            crate::NAME,
            &self.trust_domain,
            Action::AuditReportGenerated,
        )
        .actor(confidant_proto::audit::v1::ActorKind::Service, &me, &me)
        .resource(
            "report",
            &format!("{}/{}", start.to_rfc3339(), end.to_rfc3339()),
        )
        .outcome(Outcome::Allowed, "scheduled")
        .build();
        self.reporter
            .store(start, end, &report, size, &me, event)
            .await?;
        Ok(true)
    }

    async fn reader<T>(&self, request: &Request<T>) -> Result<(Actor, String), Error> {
        let actor = Actor::of(request).ok_or(Error::Unauthenticated)?;
        let Actor::Staff { staff_id, .. } = &actor else {
            return Err(Error::Unauthenticated);
        };
        let id = staff_id.clone();
        self.decider
            .decide(&id, "audit.read", None, None)
            .await
            .map_err(Error::Refused)?;
        Ok((actor, id))
    }

    async fn officer<T>(&self, request: &Request<T>) -> Result<(Actor, String), Error> {
        let actor = Actor::of(request).ok_or(Error::Unauthenticated)?;
        let Actor::Staff { staff_id, .. } = &actor else {
            return Err(Error::Unauthenticated);
        };
        let id = staff_id.clone();
        self.decider
            .decide(&id, "incidents.manage", None, None)
            .await
            .map_err(Error::Refused)?;
        Ok((actor, id))
    }

    fn event(&self, actor: &Actor, action: Action, incident: Uuid, reason: &str) -> AuditEvent {
        actor
            .event(crate::NAME, &self.trust_domain, action)
            .resource("incident", &incident.to_string())
            .outcome(Outcome::Allowed, reason)
            .build()
    }

    async fn commit(&self, statements: Vec<Statement>, event: AuditEvent) -> Result<(), Error> {
        self.db
            .transact(statements, &[event])
            .await
            .map(|_| ())
            .map_err(|e| match e {
                confidant_runtime::portable::TransactError::Sqlx(e) => Error::Store(e),
                confidant_runtime::portable::TransactError::Unmet { .. } => {
                    Error::Conflict("the incident changed meanwhile; reload it")
                }
                other => Error::Audit(other.to_string()),
            })
    }

    async fn rules(&self) -> Result<Vec<RuleRow>, Error> {
        Ok(self
            .db
            .fetch_all(
                "SELECT code, regime, recipient, trigger_kind, deadline_hours, deadline_text, basis, jurisdiction FROM incident_rules ORDER BY jurisdiction, code",
                vec![],
            )
            .await?)
    }

    async fn row(&self, id: Uuid) -> Result<IncidentRow, Error> {
        self.db
            .fetch_optional(
                "SELECT id, title, description, stage, aware_at, discovered_at, opened_by, opened_at FROM incidents WHERE id = $1",
                vec![Value::Uuid(id)],
            )
            .await?
            .ok_or(Error::NotFound("incident"))
    }

    /// The incidents of `rows` with their obligations; with timeline and
    /// notifications when `full`. What hangs off them is read with one
    /// statement per table for all of them. `rules` are the notification
    /// rules ([`Self::rules`]), read once by the caller.
    async fn incidents(
        &self,
        rows: &[IncidentRow],
        rules: &[RuleRow],
        full: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<pb::Incident>, Error> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut codes = self
            .db
            .children::<(Uuid, String)>(
                "SELECT incident_id, rule_code FROM incident_rule_links \
                 WHERE incident_id BETWEEN $1 AND $2 ORDER BY incident_id, rule_code",
                &ids,
                |r| r.0,
            )
            .await?;
        let mut terms = self
            .db
            .children::<(Uuid, Uuid, i32)>(
                "SELECT incident_id, client_id, hours FROM incident_client_terms \
                 WHERE incident_id BETWEEN $1 AND $2 ORDER BY incident_id, client_id",
                &ids,
                |r| r.0,
            )
            .await?;
        let mut notifications = self
            .db
            .children::<NotificationRow>(
                "SELECT incident_id, obligation_code, recipient, channel, sent_at, body, recorded_by \
                 FROM incident_notifications WHERE incident_id BETWEEN $1 AND $2 ORDER BY incident_id, sent_at",
                &ids,
                |r| r.incident_id,
            )
            .await?;
        let mut tasks = self
            .db
            .children::<TaskRow>(
                "SELECT incident_id, id, title, assignee, due_at, done_at FROM incident_tasks \
                 WHERE incident_id BETWEEN $1 AND $2 ORDER BY incident_id, due_at, id",
                &ids,
                |r| r.0,
            )
            .await?;
        let mut timelines = if full {
            self.db
                .children::<TimelineRow>(
                    "SELECT incident_id, at, staff_id, stage, note FROM incident_timeline \
                     WHERE incident_id BETWEEN $1 AND $2 ORDER BY incident_id, at, id",
                    &ids,
                    |r| r.incident_id,
                )
                .await?
        } else {
            std::collections::HashMap::new()
        };
        Ok(rows
            .iter()
            .map(|row| {
                let parts = Parts {
                    codes: take(&mut codes, row.id).into_iter().map(|c| c.1).collect(),
                    terms: take(&mut terms, row.id)
                        .into_iter()
                        .map(|(_, client, hours)| (client, hours))
                        .collect(),
                    notifications: take(&mut notifications, row.id),
                    tasks: take(&mut tasks, row.id),
                    timeline: take(&mut timelines, row.id),
                };
                incident(row, rules, parts, full, now)
            })
            .collect())
    }

    async fn full(&self, id: Uuid) -> Result<pb::Incident, Error> {
        let row = self.row(id).await?;
        let mut one = self
            .incidents(
                std::slice::from_ref(&row),
                &self.rules().await?,
                true,
                Utc::now(),
            )
            .await?;
        one.pop().ok_or(Error::NotFound("incident"))
    }

    fn incident_id(raw: &str) -> Result<Uuid, Error> {
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "incident_id", raw);
        check(v)?;
        id.ok_or(Error::NotFound("incident"))
    }
}

fn report_proto(r: crate::reports::ReportRow) -> pb::ComplianceReport {
    pb::ComplianceReport {
        id: r.id.to_string(),
        start_time: Some(ts(r.start_at)),
        end_time: Some(ts(r.end_at)),
        generate_time: Some(ts(r.generated_at)),
        json: r.json,
        html: r.html,
        checkpoint_tree_size: r.tree_size,
        generated_by: r.generated_by,
    }
}

fn rule_proto(r: &crate::detection::RuleRow) -> pb::DetectionRule {
    pb::DetectionRule {
        code: r.code.clone(),
        kind: r.kind.clone(),
        description: r.description.clone(),
        threshold: r.threshold,
        window_seconds: r.window_seconds,
        action_name: r.action_name.clone().unwrap_or_default(),
        hours_start: r.hours_start,
        hours_end: r.hours_end,
        enabled: r.enabled != 0,
        opens_incident: r.opens_incident != 0,
    }
}

/// A required UUID.
fn required_uuid(v: &mut Violations, field: &str, raw: &str) -> Option<Uuid> {
    if raw.is_empty() {
        v.add(field, "is required");
        return None;
    }
    match Uuid::parse_str(raw) {
        Ok(id) => Some(id),
        Err(_) => {
            v.add(field, "must be a UUID");
            None
        }
    }
}

#[tonic::async_trait]
impl IncidentService for IncidentApi {
    async fn list_notification_rules(
        &self,
        request: Request<pb::ListNotificationRulesRequest>,
    ) -> Result<Response<pb::ListNotificationRulesResponse>, Status> {
        self.officer(&request).await?;
        let rules = self
            .rules()
            .await?
            .into_iter()
            .map(|r| pb::NotificationRule {
                code: r.code,
                regime: r.regime,
                recipient: r.recipient,
                trigger: r.trigger_kind,
                deadline_hours: r.deadline_hours,
                deadline_text: r.deadline_text,
                basis: r.basis,
                jurisdiction: r.jurisdiction,
            })
            .collect();
        Ok(Response::new(pb::ListNotificationRulesResponse { rules }))
    }

    #[tracing::instrument(name = "incident.open", skip_all)]
    async fn open_incident(
        &self,
        request: Request<pb::OpenIncidentRequest>,
    ) -> Result<Response<pb::OpenIncidentResponse>, Status> {
        let (actor, staff) = self.officer(&request).await?;
        let req = request.into_inner();
        let now = Utc::now();
        let mut v = Violations::new();
        let title = text(&mut v, "title", &req.title, 200);
        if req.description.chars().count() > 10_000 {
            v.add("description", "at most 10,000 characters");
        }
        let aware = time_of(req.aware_time);
        if aware.is_none_or(|t| t > now) {
            v.add("aware_time", "is required and not in the future");
        }
        let discovered = time_of(req.discover_time);
        if discovered.is_some_and(|t| t > now) {
            v.add("discover_time", "not in the future");
        }
        let discovered = discovered.or(aware);
        let rules = self.rules().await?;
        let mut codes: Vec<String> = Vec::new();
        for (i, code) in req.rule_codes.iter().enumerate() {
            if !rules.iter().any(|r| r.code == *code) {
                v.add(format!("rule_codes[{i}]"), "no such notification rule");
            } else if codes.contains(code) {
                v.add(format!("rule_codes[{i}]"), "named twice");
            } else {
                codes.push(code.clone());
            }
        }
        let mut terms: BTreeMap<Uuid, i32> = BTreeMap::new();
        for (i, term) in req.client_terms.iter().enumerate() {
            let client = required_uuid(
                &mut v,
                &format!("client_terms[{i}].client_id"),
                &term.client_id,
            );
            if !(1..=720).contains(&term.hours) {
                v.add(format!("client_terms[{i}].hours"), "1 to 720");
            }
            if let Some(c) = client
                && terms.insert(c, term.hours).is_some()
            {
                v.add(format!("client_terms[{i}].client_id"), "named twice");
            }
        }
        if codes.is_empty() && terms.is_empty() && v.is_empty() {
            v.add(
                "rule_codes",
                "name at least one rule or client term that applies",
            );
        }
        check(v)?;
        let (Some(aware), Some(discovered)) = (aware, discovered) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let id = Uuid::now_v7();
        let mut statements = vec![
            Statement::new(
                "INSERT INTO incidents (id, title, description, stage, aware_at, discovered_at, opened_by, opened_at) VALUES ($1, $2, $3, 'detection', $4, $5, $6, $7)",
                vec![
                    Value::Uuid(id),
                    Value::Text(title),
                    Value::Text(req.description.trim().to_owned()),
                    Value::Time(aware),
                    Value::Time(discovered),
                    Value::Text(staff.clone()),
                    Value::Time(now),
                ],
            ),
            Statement::new(
                "INSERT INTO incident_timeline (id, incident_id, at, staff_id, stage, note) VALUES ($1, $2, $3, $4, 'detection', 'opened')",
                vec![
                    Value::Uuid(Uuid::now_v7()),
                    Value::Uuid(id),
                    Value::Time(now),
                    Value::Text(staff),
                ],
            ),
        ];
        for code in codes {
            statements.push(Statement::new(
                "INSERT INTO incident_rule_links (incident_id, rule_code) VALUES ($1, $2)",
                vec![Value::Uuid(id), Value::Text(code)],
            ));
        }
        for (client, hours) in terms {
            statements.push(Statement::new(
                "INSERT INTO incident_client_terms (incident_id, client_id, hours) VALUES ($1, $2, $3)",
                vec![Value::Uuid(id), Value::Uuid(client), Value::Int(hours)],
            ));
        }
        let event = self.event(&actor, Action::AuditIncidentOpened, id, "detection");
        self.commit(statements, event).await?;
        Ok(Response::new(pb::OpenIncidentResponse {
            incident: Some(self.full(id).await?),
        }))
    }

    async fn get_incident(
        &self,
        request: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::GetIncidentResponse>, Status> {
        self.officer(&request).await?;
        let id = Self::incident_id(&request.get_ref().incident_id)?;
        Ok(Response::new(pb::GetIncidentResponse {
            incident: Some(self.full(id).await?),
        }))
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        self.officer(&request).await?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (20, 100),
            &[Part::Time, Part::Uuid],
        );
        check(v)?;
        let mut values = vec![Value::Int(i32::from(req.open_only))];
        values.extend(after.values());
        values.push(Value::BigInt(limit + 1));
        let rows: Vec<IncidentRow> = self
            .db
            .fetch_all(
                "SELECT id, title, description, stage, aware_at, discovered_at, opened_by, opened_at FROM incidents \
                 WHERE ($1 = 0 OR stage <> 'closed') AND ($2 IS NULL OR (opened_at, id) < ($2, $3)) \
                 ORDER BY opened_at DESC, id DESC LIMIT $4",
                values,
            )
            .await
            .map_err(Error::from)?;
        let (rows, next_page_token) = page::split(rows, limit, |r| {
            page::token(&[Key::Time(r.opened_at), Key::Uuid(r.id)])
        });
        let rules = self.rules().await?;
        let incidents = self.incidents(&rows, &rules, false, Utc::now()).await?;
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents,
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "incident.advance", skip_all)]
    async fn advance_incident(
        &self,
        request: Request<pb::AdvanceIncidentRequest>,
    ) -> Result<Response<pb::AdvanceIncidentResponse>, Status> {
        let (actor, staff) = self.officer(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "incident_id", &req.incident_id);
        let next = pb::IncidentStage::try_from(req.stage)
            .ok()
            .and_then(stage_name);
        if next.is_none() || req.stage == pb::IncidentStage::Detection as i32 {
            v.add("stage", "a stage after detection");
        }
        let note = text(&mut v, "note", &req.note, 10_000);
        check(v)?;
        let (Some(id), Some(next)) = (id, next) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let row = self.row(id).await?;
        let position = |name: &str| STAGES.iter().position(|(n, _)| *n == name);
        if position(next) <= position(&row.stage) {
            return Err(Error::Conflict("stages only go forward").into());
        }
        let now = Utc::now();
        let event = self.event(&actor, Action::AuditIncidentAdvanced, id, next);
        self.commit(
            vec![
                Statement::new(
                    "UPDATE incidents SET stage = $1 WHERE id = $2 AND stage = $3",
                    vec![Value::Text(next.to_owned()), Value::Uuid(id), Value::Text(row.stage.clone())],
                )
                .expecting(1),
                Statement::new(
                    "INSERT INTO incident_timeline (id, incident_id, at, staff_id, stage, note) VALUES ($1, $2, $3, $4, $5, $6)",
                    vec![
                        Value::Uuid(Uuid::now_v7()),
                        Value::Uuid(id),
                        Value::Time(now),
                        Value::Text(staff),
                        Value::OptText(Some(next.to_owned())),
                        Value::Text(note),
                    ],
                ),
            ],
            event,
        )
        .await?;
        Ok(Response::new(pb::AdvanceIncidentResponse {
            incident: Some(self.full(id).await?),
        }))
    }

    async fn add_incident_note(
        &self,
        request: Request<pb::AddIncidentNoteRequest>,
    ) -> Result<Response<pb::AddIncidentNoteResponse>, Status> {
        let (actor, staff) = self.officer(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "incident_id", &req.incident_id);
        let note = text(&mut v, "note", &req.note, 10_000);
        check(v)?;
        let Some(id) = id else {
            return Err(Status::internal("validated request incomplete"));
        };
        self.row(id).await?;
        let event = self.event(&actor, Action::AuditIncidentNoted, id, "");
        self.commit(
            vec![Statement::new(
                "INSERT INTO incident_timeline (id, incident_id, at, staff_id, stage, note) VALUES ($1, $2, $3, $4, NULL, $5)",
                vec![
                    Value::Uuid(Uuid::now_v7()),
                    Value::Uuid(id),
                    Value::Time(Utc::now()),
                    Value::Text(staff),
                    Value::Text(note),
                ],
            )],
            event,
        )
        .await?;
        Ok(Response::new(pb::AddIncidentNoteResponse {
            incident: Some(self.full(id).await?),
        }))
    }

    #[tracing::instrument(name = "incident.find_affected_clients", skip_all)]
    async fn find_affected_clients(
        &self,
        request: Request<pb::FindAffectedClientsRequest>,
    ) -> Result<Response<pb::FindAffectedClientsResponse>, Status> {
        let (actor, _) = self.officer(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let actor_id = req.actor_id.trim().to_owned();
        let peer = req.peer_identity.trim().to_owned();
        let session = req.session_id.trim().to_owned();
        let named = [&actor_id, &peer, &session]
            .iter()
            .filter(|s| !s.is_empty())
            .count();
        if named != 1 {
            v.add(
                "actor_id",
                "name one of: a staff member, a peer identity, a session",
            );
        }
        if !session.is_empty() && Uuid::parse_str(&session).is_err() {
            v.add("session_id", "must be a UUID");
        }
        if !actor_id.is_empty() && Uuid::parse_str(&actor_id).is_err() {
            v.add("actor_id", "must be a UUID");
        }
        if !peer.is_empty() && !peer.starts_with("spiffe://") {
            v.add("peer_identity", "must be a spiffe:// identity");
        }
        let start = time_of(req.start_time);
        let end = time_of(req.end_time);
        match (start, end) {
            (Some(s), Some(e)) if s < e && e - s <= chrono::Duration::days(366) => {}
            _ => v.add(
                "end_time",
                "a window with start before end, at most 366 days",
            ),
        }
        check(v)?;
        let filter = EventFilter {
            actor_id: (!actor_id.is_empty()).then(|| actor_id.clone()),
            outcome: Some(Outcome::Allowed as i32),
            start,
            end,
            limit: MAX_EXAMINED,
            ..EventFilter::default()
        };
        let found = self
            .log
            .store()
            .search(&filter)
            .await
            .map_err(Error::from)?;
        let examined = i64::try_from(found.len()).unwrap_or(i64::MAX);
        let mut tally: BTreeMap<(String, String, String), Reached> = BTreeMap::new();
        for f in found {
            let Ok(event) = AuditEvent::decode(f.event.payload.as_slice()) else {
                continue;
            };
            let by = event.actor.as_ref();
            if !peer.is_empty() && by.is_none_or(|a| a.peer_identity != peer) {
                continue;
            }
            if !session.is_empty() && by.is_none_or(|a| a.session_id != session) {
                continue;
            }
            let read = READS.contains(&event.action.as_str());
            if !read && !OTHER_ACCESSES.contains(&event.action.as_str()) {
                continue;
            }
            let Some(resource) = event.resource.as_ref().filter(|r| !r.client_id.is_empty()) else {
                continue;
            };
            let at = time_of(event.time).unwrap_or(f.recorded_at);
            let entry = tally
                .entry((
                    resource.client_id.clone(),
                    resource.matter_id.clone(),
                    resource.data_category.clone(),
                ))
                .or_insert_with(|| Reached {
                    reads: 0,
                    others: 0,
                    first: at,
                    last: at,
                    disclosed: std::collections::BTreeSet::new(),
                });
            if read {
                entry.reads += 1;
                entry.disclosed.extend(event.disclosed_fields);
            } else {
                entry.others += 1;
            }
            entry.first = entry.first.min(at);
            entry.last = entry.last.max(at);
        }
        let clients: std::collections::BTreeSet<&String> = tally.keys().map(|k| &k.0).collect();
        let client_count = i32::try_from(clients.len()).unwrap_or(i32::MAX);
        // The search itself is an access to the log worth recording.
        let searched = actor
            .event(
                crate::NAME,
                &self.trust_domain,
                Action::AuditAffectedSearched,
            )
            .resource(
                if !actor_id.is_empty() {
                    "staff"
                } else if !peer.is_empty() {
                    "peer"
                } else {
                    "session"
                },
                if !actor_id.is_empty() {
                    &actor_id
                } else if !peer.is_empty() {
                    &peer
                } else {
                    &session
                },
            )
            .outcome(Outcome::Allowed, &client_count.to_string())
            .build();
        self.commit(Vec::new(), searched).await?;
        Ok(Response::new(pb::FindAffectedClientsResponse {
            scopes: tally
                .into_iter()
                .map(|((client, matter, category), reached)| pb::AffectedScope {
                    client_id: client,
                    matter_id: matter,
                    category,
                    reads: reached.reads,
                    other_accesses: reached.others,
                    first_time: Some(ts(reached.first)),
                    last_time: Some(ts(reached.last)),
                    disclosed_fields: reached.disclosed.into_iter().collect(),
                })
                .collect(),
            client_count,
            events_examined: examined,
        }))
    }

    async fn draft_notice(
        &self,
        request: Request<pb::DraftNoticeRequest>,
    ) -> Result<Response<pb::DraftNoticeResponse>, Status> {
        self.officer(&request).await?;
        let id = Self::incident_id(&request.get_ref().incident_id)?;
        let incident = self.full(id).await?;
        let Some(obligation) = incident
            .obligations
            .iter()
            .find(|o| o.code == request.get_ref().obligation_code)
        else {
            let mut v = Violations::new();
            v.add("obligation_code", "not an obligation of this incident");
            return Err(Error::Invalid(v).into());
        };
        let when = |t: Option<prost_types::Timestamp>| {
            time_of(t).map_or_else(
                || "unknown".to_owned(),
                |t| t.format("%-d %B %Y, %H:%M UTC").to_string(),
            )
        };
        let due = obligation
            .due_time
            .map_or_else(|| obligation.deadline_text.clone(), |t| when(Some(t)));
        let text = format!(
            "To: {recipient}\n\
             Subject: Notification of a personal data incident — {title}\n\n\
             We are writing to tell you about an incident affecting personal data we hold.\n\n\
             What happened: {description}\n\
             When we became aware: {aware}\n\
             Current status: {stage}\n\n\
             What we are doing: we have contained the incident and are assessing its scope; \
             we will update you as we learn more.\n\
             What you can do: [describe the steps the recipient should take].\n\
             Contact: [name, role, telephone and e-mail of the firm's contact].\n\n\
             This notice is given under {basis} ({deadline}).\n",
            recipient = obligation.recipient,
            title = incident.title,
            description = if incident.description.is_empty() {
                "[describe]"
            } else {
                &incident.description
            },
            aware = when(incident.aware_time),
            stage = stage_name(pb::IncidentStage::try_from(incident.stage).unwrap_or_default())
                .unwrap_or("open"),
            basis = obligation.basis,
            deadline = due,
        );
        Ok(Response::new(pb::DraftNoticeResponse { text }))
    }

    #[tracing::instrument(name = "incident.record_notification", skip_all)]
    async fn record_notification(
        &self,
        request: Request<pb::RecordNotificationRequest>,
    ) -> Result<Response<pb::RecordNotificationResponse>, Status> {
        let (actor, staff) = self.officer(&request).await?;
        let req = request.into_inner();
        let now = Utc::now();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "incident_id", &req.incident_id);
        let recipient = text(&mut v, "recipient", &req.recipient, 200);
        let channel = text(&mut v, "channel", &req.channel, 50);
        let body = text(&mut v, "text", &req.text, 20_000);
        let sent = time_of(req.sent_time);
        if sent.is_none_or(|t| t > now) {
            v.add("sent_time", "is required and not in the future");
        }
        let incident = match id {
            Some(id) => Some(self.full(id).await?),
            None => None,
        };
        if let Some(incident) = &incident
            && !incident
                .obligations
                .iter()
                .any(|o| o.code == req.obligation_code)
        {
            v.add("obligation_code", "not an obligation of this incident");
        }
        check(v)?;
        let (Some(id), Some(sent)) = (id, sent) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let event = self.event(
            &actor,
            Action::AuditIncidentNotified,
            id,
            &req.obligation_code,
        );
        self.commit(
            vec![Statement::new(
                "INSERT INTO incident_notifications (id, incident_id, obligation_code, recipient, channel, sent_at, body, recorded_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                vec![
                    Value::Uuid(Uuid::now_v7()),
                    Value::Uuid(id),
                    Value::Text(req.obligation_code.clone()),
                    Value::Text(recipient),
                    Value::Text(channel),
                    Value::Time(sent),
                    Value::Text(body),
                    Value::Text(staff),
                ],
            )],
            event,
        )
        .await?;
        Ok(Response::new(pb::RecordNotificationResponse {
            incident: Some(self.full(id).await?),
        }))
    }

    async fn list_overdue_obligations(
        &self,
        request: Request<pb::ListOverdueObligationsRequest>,
    ) -> Result<Response<pb::ListOverdueObligationsResponse>, Status> {
        self.officer(&request).await?;
        let rows: Vec<IncidentRow> = self
            .db
            .fetch_all(
                "SELECT id, title, description, stage, aware_at, discovered_at, opened_by, opened_at FROM incidents WHERE stage <> 'closed'",
                vec![],
            )
            .await
            .map_err(Error::from)?;
        let mut overdue = Vec::new();
        let rules = self.rules().await?;
        for incident in self.incidents(&rows, &rules, false, Utc::now()).await? {
            for o in incident.obligations {
                if o.status == pb::ObligationStatus::Overdue as i32 {
                    overdue.push(pb::OverdueObligation {
                        incident_id: incident.id.clone(),
                        title: incident.title.clone(),
                        obligation: Some(o),
                    });
                }
            }
        }
        overdue.sort_by_key(|o| {
            o.obligation
                .as_ref()
                .and_then(|o| o.due_time)
                .map_or(0, |t| t.seconds)
        });
        Ok(Response::new(pb::ListOverdueObligationsResponse {
            obligations: overdue,
        }))
    }
    async fn list_detection_rules(
        &self,
        request: Request<pb::ListDetectionRulesRequest>,
    ) -> Result<Response<pb::ListDetectionRulesResponse>, Status> {
        self.officer(&request).await?;
        let rules = crate::detection::rules(&self.db)
            .await
            .map_err(Error::from)?
            .iter()
            .map(rule_proto)
            .collect();
        Ok(Response::new(pb::ListDetectionRulesResponse { rules }))
    }

    #[tracing::instrument(name = "incident.update_detection_rule", skip_all)]
    async fn update_detection_rule(
        &self,
        request: Request<pb::UpdateDetectionRuleRequest>,
    ) -> Result<Response<pb::UpdateDetectionRuleResponse>, Status> {
        let (actor, _) = self.officer(&request).await?;
        let rule = request.into_inner().rule.unwrap_or_default();
        let mut v = Violations::new();
        let known = crate::detection::rules(&self.db)
            .await
            .map_err(Error::from)?
            .into_iter()
            .find(|r| r.code == rule.code);
        if known.is_none() {
            v.add("rule.code", "no such detection rule");
        }
        if !(0..=1_000_000).contains(&rule.threshold) {
            v.add("rule.threshold", "0 to 1,000,000");
        }
        if !(1..=2_592_000).contains(&rule.window_seconds) {
            v.add("rule.window_seconds", "1 to 2,592,000 (30 days)");
        }
        if !(0..=23).contains(&rule.hours_start) || !(0..=24).contains(&rule.hours_end) {
            v.add("rule.hours_start", "hours 0 to 23 (end up to 24)");
        }
        check(v)?;
        let event = actor
            .event(
                crate::NAME,
                &self.trust_domain,
                Action::AuditDetectionRuleChanged,
            )
            .resource("detection_rule", &rule.code)
            .outcome(Outcome::Allowed, &rule.code)
            .build();
        self.commit(
            vec![Statement::new(
                "UPDATE detection_rules SET threshold = $1, window_seconds = $2, hours_start = $3, hours_end = $4, enabled = $5, opens_incident = $6 WHERE code = $7",
                vec![
                    Value::Int(rule.threshold),
                    Value::Int(rule.window_seconds),
                    Value::Int(rule.hours_start),
                    Value::Int(rule.hours_end),
                    Value::Int(i32::from(rule.enabled)),
                    Value::Int(i32::from(rule.opens_incident)),
                    Value::Text(rule.code.clone()),
                ],
            )
            .expecting(1)],
            event,
        )
        .await?;
        let now = crate::detection::rules(&self.db)
            .await
            .map_err(Error::from)?
            .into_iter()
            .find(|r| r.code == rule.code)
            .ok_or(Error::NotFound("detection rule"))?;
        Ok(Response::new(pb::UpdateDetectionRuleResponse {
            rule: Some(rule_proto(&now)),
        }))
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        self.officer(&request).await?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (100, 1000),
            &[Part::Time, Part::Uuid],
        );
        check(v)?;
        let rows = crate::detection::alerts(&self.db, after.values(), limit + 1)
            .await
            .map_err(Error::from)?;
        let (rows, next_page_token) = page::split(rows, limit, |a| {
            page::token(&[Key::Time(a.fired_at), Key::Uuid(a.id)])
        });
        let alerts = rows
            .into_iter()
            .map(|a| pb::Alert {
                id: a.id.to_string(),
                rule_code: a.rule_code,
                actor_id: a.actor_id,
                fire_time: Some(ts(a.fired_at)),
                event_index: a.event_idx,
                summary: a.summary,
                incident_id: a.incident_id.map(|i| i.to_string()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListAlertsResponse {
            alerts,
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "incident.generate_compliance_report", skip_all)]
    async fn generate_compliance_report(
        &self,
        request: Request<pb::GenerateComplianceReportRequest>,
    ) -> Result<Response<pb::GenerateComplianceReportResponse>, Status> {
        let (actor, staff) = self.reader(&request).await?;
        let req = request.into_inner();
        let now = Utc::now();
        let mut v = Violations::new();
        let (start, end) = (time_of(req.start_time), time_of(req.end_time));
        match (start, end) {
            (Some(s), Some(e))
                if s < e
                    && e <= now + chrono::Duration::minutes(1)
                    && e - s <= chrono::Duration::days(366) => {}
            _ => v.add(
                "end_time",
                "a period with start before end, not in the future, at most 366 days",
            ),
        }
        check(v)?;
        let (Some(start), Some(end)) = (start, end) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let (incidents, alerts) = self.report_inputs(start, end).await?;
        let (report, size) = self
            .reporter
            .build(start, end, incidents, alerts)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "compliance report not built");
                with_reason(
                    Code::Unavailable,
                    "peer_unavailable",
                    "identity or retention could not give their figures; retry later",
                )
            })?;
        let event = actor
            .event(
                crate::NAME,
                &self.trust_domain,
                Action::AuditReportGenerated,
            )
            .resource(
                "report",
                &format!("{}/{}", start.to_rfc3339(), end.to_rfc3339()),
            )
            .outcome(Outcome::Allowed, "on_demand")
            .build();
        let row = self
            .reporter
            .store(start, end, &report, size, &staff, event)
            .await
            .map_err(|e| Error::Audit(e.to_string()))?;
        Ok(Response::new(pb::GenerateComplianceReportResponse {
            report: Some(report_proto(row)),
        }))
    }

    async fn list_compliance_reports(
        &self,
        request: Request<pb::ListComplianceReportsRequest>,
    ) -> Result<Response<pb::ListComplianceReportsResponse>, Status> {
        self.reader(&request).await?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (20, 200),
            &[Part::Time, Part::Uuid],
        );
        check(v)?;
        let rows = self
            .reporter
            .list(after.values(), limit + 1)
            .await
            .map_err(Error::from)?;
        let (rows, next_page_token) = page::split(rows, limit, |r| {
            page::token(&[Key::Time(r.generated_at), Key::Uuid(r.id)])
        });
        Ok(Response::new(pb::ListComplianceReportsResponse {
            reports: rows.into_iter().map(report_proto).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "incident.add_task", skip_all)]
    async fn add_incident_task(
        &self,
        request: Request<pb::AddIncidentTaskRequest>,
    ) -> Result<Response<pb::AddIncidentTaskResponse>, Status> {
        let (actor, staff) = self.officer(&request).await?;
        let req = request.into_inner();
        let now = Utc::now();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "incident_id", &req.incident_id);
        let title = text(&mut v, "title", &req.title, 500);
        let assignee = required_uuid(&mut v, "assignee_staff_id", &req.assignee_staff_id);
        let due = time_of(req.due_time);
        if due.is_none_or(|d| d <= now) {
            v.add("due_time", "is required and in the future");
        }
        check(v)?;
        let (Some(id), Some(assignee), Some(due)) = (id, assignee, due) else {
            return Err(Status::internal("validated request incomplete"));
        };
        self.row(id).await?;
        let event = self.event(&actor, Action::AuditIncidentTaskAdded, id, "");
        self.commit(
            vec![Statement::new(
                "INSERT INTO incident_tasks (id, incident_id, title, assignee, due_at, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                vec![
                    Value::Uuid(Uuid::now_v7()),
                    Value::Uuid(id),
                    Value::Text(title),
                    Value::Text(assignee.to_string()),
                    Value::Time(due),
                    Value::Text(staff),
                    Value::Time(now),
                ],
            )],
            event,
        )
        .await?;
        Ok(Response::new(pb::AddIncidentTaskResponse {
            incident: Some(self.full(id).await?),
        }))
    }

    #[tracing::instrument(name = "incident.complete_task", skip_all)]
    async fn complete_incident_task(
        &self,
        request: Request<pb::CompleteIncidentTaskRequest>,
    ) -> Result<Response<pb::CompleteIncidentTaskResponse>, Status> {
        let (actor, _) = self.officer(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = required_uuid(&mut v, "incident_id", &req.incident_id);
        let task = required_uuid(&mut v, "task_id", &req.task_id);
        check(v)?;
        let (Some(id), Some(task)) = (id, task) else {
            return Err(Status::internal("validated request incomplete"));
        };
        let event = self.event(&actor, Action::AuditIncidentTaskDone, id, "");
        self.commit(
            vec![
                Statement::new(
                    "UPDATE incident_tasks SET done_at = $1 WHERE id = $2 AND incident_id = $3 AND done_at IS NULL",
                    vec![Value::Time(Utc::now()), Value::Uuid(task), Value::Uuid(id)],
                )
                .expecting(1),
            ],
            event,
        )
        .await
        .map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict("no such open task of this incident"),
            other => other,
        })?;
        Ok(Response::new(pb::CompleteIncidentTaskResponse {
            incident: Some(self.full(id).await?),
        }))
    }
}
