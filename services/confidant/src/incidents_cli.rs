//! `confidant incidents`: incident response from the command line, as the
//! security officer (their access token) through a client certificate.
//! Prints one JSON object per line.

use std::io::Write;
use std::path::PathBuf;

use confidant_proto::audit::v1 as pb;
use confidant_proto::audit::v1::incident_service_client::IncidentServiceClient;
use confidant_runtime::client::PeerChannel;
use serde_json::{Value as Json, json};

/// How to reach the audit service, and as whom.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The service URL.
    #[arg(long, default_value = "https://127.0.0.1:7105")]
    pub service: String,
    #[command(flatten)]
    pub credentials: crate::cli::Credentials,
    /// The staff member's access token (from identity's Login).
    #[arg(long, env = "CONFIDANT_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum IncidentsCommand {
    /// The notification rules.
    Rules,
    /// Open an incident.
    Open {
        /// Title.
        #[arg(long)]
        title: String,
        /// What happened (no client data).
        #[arg(long, default_value = "")]
        description: String,
        /// When the firm became aware (RFC 3339; default now).
        #[arg(long)]
        aware: Option<String>,
        /// A notification rule that applies (repeat).
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    /// Incidents (open ones with --open).
    List {
        /// Only those not closed.
        #[arg(long)]
        open: bool,
    },
    /// One incident: obligations, timeline, notifications.
    Show {
        /// The incident.
        #[arg(long)]
        id: String,
    },
    /// Move an incident to a later stage.
    Advance {
        /// The incident.
        #[arg(long)]
        id: String,
        /// containment, assessment, notification, mitigation or closed.
        #[arg(long, value_parser = ["containment", "assessment", "notification", "mitigation", "closed"])]
        stage: String,
        /// What was done.
        #[arg(long)]
        note: String,
    },
    /// Clients, matters and categories a staff member or identity reached.
    Affected {
        /// The staff member.
        #[arg(long, default_value = "")]
        actor: String,
        /// Or the service identity (spiffe://…).
        #[arg(long, default_value = "")]
        peer: String,
        /// Or a staff session (its id).
        #[arg(long, default_value = "")]
        session: String,
        /// Window start (RFC 3339).
        #[arg(long)]
        from: String,
        /// Window end (RFC 3339).
        #[arg(long)]
        to: String,
    },
    /// A draft notice for one obligation.
    Draft {
        /// The incident.
        #[arg(long)]
        id: String,
        /// The obligation's code.
        #[arg(long)]
        obligation: String,
    },
    /// Obligations past their deadline.
    Overdue,
    /// The newest 100 alerts raised by the detection rules.
    Alerts,
    /// Build the compliance report for a period; writes its HTML to a file
    /// when asked, prints its JSON.
    Report {
        /// Period start (RFC 3339).
        #[arg(long)]
        from: String,
        /// Period end (RFC 3339).
        #[arg(long)]
        to: String,
        /// Where to write the printable HTML document.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

fn time(raw: &str) -> anyhow::Result<prost_types::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(raw)
        .map_err(|_| anyhow::anyhow!("{raw}: expected an RFC 3339 time"))?;
    Ok(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

fn when(t: Option<prost_types::Timestamp>) -> Json {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map_or(Json::Null, |t| Json::String(t.to_rfc3339()))
}

fn obligation_json(o: &pb::Obligation) -> Json {
    json!({
        "code": o.code,
        "recipient": o.recipient,
        "due": when(o.due_time),
        "deadline": o.deadline_text,
        "basis": o.basis,
        "status": pb::ObligationStatus::try_from(o.status).map_or("?", |s| s.as_str_name()),
    })
}

fn incident_json(i: &pb::Incident) -> Json {
    json!({
        "id": i.id,
        "title": i.title,
        "stage": pb::IncidentStage::try_from(i.stage).map_or("?", |s| s.as_str_name()),
        "aware": when(i.aware_time),
        "obligations": i.obligations.iter().map(obligation_json).collect::<Vec<_>>(),
        "timeline": i.timeline.iter().map(|t| json!({
            "time": when(t.time),
            "staff_id": t.staff_id,
            "stage": pb::IncidentStage::try_from(t.stage).map_or("?", |s| s.as_str_name()),
            "note": t.note,
        })).collect::<Vec<_>>(),
    })
}

impl Connection {
    async fn client(&self) -> anyhow::Result<IncidentServiceClient<PeerChannel>> {
        Ok(IncidentServiceClient::new(
            self.credentials.channel(&self.service).await?,
        ))
    }

    fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        crate::cli::with_token(&self.token, message)
    }
}

/// Runs one command, writing its JSON lines to `out`.
pub async fn run(
    conn: &Connection,
    command: IncidentsCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut c = conn.client().await?;
    let fail = |s: tonic::Status| anyhow::anyhow!(crate::records_cli::describe(&s));
    let mut lines: Vec<Json> = Vec::new();
    match command {
        IncidentsCommand::Rules => {
            let r = c
                .list_notification_rules(conn.request(pb::ListNotificationRulesRequest {})?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().rules.iter().map(|r| {
                json!({ "code": r.code, "regime": r.regime, "recipient": r.recipient,
                        "deadline_hours": r.deadline_hours, "deadline": r.deadline_text, "basis": r.basis })
            }));
        }
        IncidentsCommand::Open {
            title,
            description,
            aware,
            rules,
        } => {
            let aware = match aware {
                Some(raw) => time(&raw)?,
                None => prost_types::Timestamp {
                    seconds: chrono::Utc::now().timestamp(),
                    nanos: 0,
                },
            };
            let r = c
                .open_incident(conn.request(pb::OpenIncidentRequest {
                    title,
                    description,
                    aware_time: Some(aware),
                    discover_time: None,
                    rule_codes: rules,
                    client_terms: vec![],
                })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().incident.as_ref().map(incident_json));
        }
        IncidentsCommand::List { open } => {
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_incidents(conn.request(pb::ListIncidentsRequest {
                        open_only: open,
                        page_size: 100,
                        page_token,
                    })?)
                    .await
                    .map_err(fail)?
                    .into_inner();
                lines.extend(r.incidents.iter().map(incident_json));
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
        }
        IncidentsCommand::Show { id } => {
            let r = c
                .get_incident(conn.request(pb::GetIncidentRequest { incident_id: id })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().incident.as_ref().map(incident_json));
        }
        IncidentsCommand::Advance { id, stage, note } => {
            let stage = match stage.as_str() {
                "containment" => pb::IncidentStage::Containment,
                "assessment" => pb::IncidentStage::Assessment,
                "notification" => pb::IncidentStage::Notification,
                "mitigation" => pb::IncidentStage::Mitigation,
                _ => pb::IncidentStage::Closed,
            };
            let r = c
                .advance_incident(conn.request(pb::AdvanceIncidentRequest {
                    incident_id: id,
                    stage: stage as i32,
                    note,
                })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().incident.as_ref().map(incident_json));
        }
        IncidentsCommand::Affected {
            actor,
            peer,
            session,
            from,
            to,
        } => {
            let r = c
                .find_affected_clients(conn.request(pb::FindAffectedClientsRequest {
                    actor_id: actor,
                    peer_identity: peer,
                    session_id: session,
                    start_time: Some(time(&from)?),
                    end_time: Some(time(&to)?),
                })?)
                .await
                .map_err(fail)?
                .into_inner();
            lines.extend(r.scopes.iter().map(|s| {
                json!({ "client_id": s.client_id, "matter_id": s.matter_id, "category": s.category,
                        "reads": s.reads, "other_accesses": s.other_accesses,
                        "first": when(s.first_time), "last": when(s.last_time) })
            }));
            lines.push(json!({ "clients": r.client_count, "events_examined": r.events_examined }));
        }
        IncidentsCommand::Draft { id, obligation } => {
            let r = c
                .draft_notice(conn.request(pb::DraftNoticeRequest {
                    incident_id: id,
                    obligation_code: obligation,
                })?)
                .await
                .map_err(fail)?;
            lines.push(json!({ "draft": r.into_inner().text }));
        }
        IncidentsCommand::Overdue => {
            let r = c
                .list_overdue_obligations(conn.request(pb::ListOverdueObligationsRequest {})?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().obligations.iter().map(|o| {
                let mut line = o
                    .obligation
                    .as_ref()
                    .map(obligation_json)
                    .unwrap_or(Json::Null);
                line["incident_id"] = json!(o.incident_id);
                line["title"] = json!(o.title);
                line
            }));
        }
        IncidentsCommand::Alerts => {
            let r = c
                .list_alerts(conn.request(pb::ListAlertsRequest {
                    page_size: 100,
                    page_token: String::new(),
                })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().alerts.iter().map(|a| {
                json!({ "id": a.id, "rule": a.rule_code, "actor_id": a.actor_id,
                        "time": when(a.fire_time), "summary": a.summary, "incident_id": a.incident_id })
            }));
        }
        IncidentsCommand::Report { from, to, html } => {
            let r = c
                .generate_compliance_report(conn.request(pb::GenerateComplianceReportRequest {
                    start_time: Some(time(&from)?),
                    end_time: Some(time(&to)?),
                })?)
                .await
                .map_err(fail)?
                .into_inner()
                .report
                .ok_or_else(|| anyhow::anyhow!("no report in the response"))?;
            if let Some(path) = html {
                std::fs::write(&path, &r.html)?;
            }
            lines.push(serde_json::from_str(&r.json)?);
        }
    }
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
