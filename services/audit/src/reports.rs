//! The compliance report for a period: NDA and training coverage and access
//! reviews (from identity), retention and disposals with certificate ids and
//! legal holds (from retention), incidents with their notification status
//! and alerts (from here), and the signed checkpoint the report covers. As
//! JSON and as a printable HTML document; on demand, and monthly for the
//! previous calendar month.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use confidant_proto::audit::v1 as pb;
use confidant_proto::identity::v1 as identity_pb;
use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_proto::retention::v1 as retention_pb;
use confidant_proto::retention::v1::retention_service_client::RetentionServiceClient;
use confidant_runtime::client::PeerChannel;
use confidant_runtime::coord::SharedCoordinator;
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Database;
use serde_json::{Value as Json, json};
use uuid::Uuid;

use crate::log::AuditLog;

/// A report as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReportRow {
    /// Id.
    pub id: Uuid,
    /// Period start.
    pub start_at: DateTime<Utc>,
    /// Period end.
    pub end_at: DateTime<Utc>,
    /// Built when.
    pub generated_at: DateTime<Utc>,
    /// By whom.
    pub generated_by: String,
    /// JSON.
    pub json: String,
    /// HTML.
    pub html: String,
    /// Checkpoint covered.
    pub tree_size: i64,
}

/// What building a report needs.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// The audit database.
    pub db: Database,
    /// The log.
    pub log: Arc<AuditLog>,
    /// Identity.
    pub identity: Option<PeerChannel>,
    /// Retention.
    pub retention: Option<PeerChannel>,
}

fn ts(t: Option<prost_types::Timestamp>) -> Json {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, 0))
        .map_or(Json::Null, |t| Json::String(t.to_rfc3339()))
}

fn proto(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Reporter {
    /// Builds the report for `[start, end)`; `incidents` are the incidents
    /// open in or at the end of the period, as the API shows them.
    pub async fn build(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        incidents: Vec<pb::Incident>,
        alerts: Vec<(String, i64)>,
    ) -> anyhow::Result<(Json, i64)> {
        let identity = self
            .identity
            .clone()
            .ok_or_else(|| anyhow::anyhow!("identity is not configured"))?;
        let facts = IdentityServiceClient::new(identity)
            .get_compliance_facts(identity_pb::GetComplianceFactsRequest {
                as_of_time: Some(proto(end)),
                expiring_within_days: 30,
            })
            .await
            .map_err(|s| anyhow::anyhow!("identity: {:?}", s.code()))?
            .into_inner();
        let retention = self
            .retention
            .clone()
            .ok_or_else(|| anyhow::anyhow!("retention is not configured"))?;
        let kept = RetentionServiceClient::new(retention)
            .get_compliance_facts(retention_pb::GetComplianceFactsRequest {
                start_time: Some(proto(start)),
                end_time: Some(proto(end)),
            })
            .await
            .map_err(|s| anyhow::anyhow!("retention: {:?}", s.code()))?
            .into_inner();
        let checkpoint = self.log.store().latest_checkpoint().await?;
        let tree_size = checkpoint.as_ref().map_or(0, |c| c.tree_size);
        let report = json!({
            "type": "confidant.compliance-report.v1",
            "period": { "start": start.to_rfc3339(), "end": end.to_rfc3339() },
            "generated_at": Utc::now().to_rfc3339(),
            "staff_attestations": facts.attestations.iter().map(|a| json!({
                "kind": identity_pb::AttestationKind::try_from(a.kind).map_or("?", |k| k.as_str_name()),
                "staff": a.staff,
                "covered": a.covered,
                "expiring_within_30_days": a.expiring,
                "missing": a.missing,
                "missing_staff_ids": a.missing_staff_ids,
            })).collect::<Vec<_>>(),
            "access_reviews": facts.reviews.iter().map(|r| json!({
                "campaign_id": r.campaign_id,
                "name": r.name,
                "deadline": ts(r.deadline_time),
                "items": r.items,
                "decided": r.decided,
                "overdue": r.overdue,
            })).collect::<Vec<_>>(),
            "retention": {
                "live_policies": kept.live_policies,
                "scopes_overdue": kept.scopes_overdue,
                "active_holds": kept.active_holds,
                "holds_placed": kept.holds_placed,
                "holds_released": kept.holds_released,
                "physical_items_destroyed": kept.items_destroyed,
                "certificates": kept.certificates.iter().map(|c| json!({
                    "certificate_id": c.certificate_id,
                    "kind": c.kind,
                    "issued_at": ts(c.issue_time),
                })).collect::<Vec<_>>(),
            },
            "incidents": incidents.iter().map(|i| json!({
                "incident_id": i.id,
                "title": i.title,
                "stage": pb::IncidentStage::try_from(i.stage).map_or("?", |s| s.as_str_name()),
                "aware_at": ts(i.aware_time),
                "obligations": i.obligations.iter().map(|o| json!({
                    "code": o.code,
                    "recipient": o.recipient,
                    "due": ts(o.due_time),
                    "status": pb::ObligationStatus::try_from(o.status).map_or("?", |s| s.as_str_name()),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "alerts": alerts.iter().map(|(rule, n)| json!({ "rule": rule, "count": n })).collect::<Vec<_>>(),
            "audit_checkpoint": checkpoint.as_ref().map(|c| json!({
                "tree_size": c.tree_size,
                "root_hash": hex::encode(&c.root_hash),
                "issued_at": c.issued_at.to_rfc3339(),
                "signed_note": c.signed_note,
            })),
        });
        Ok((report, tree_size))
    }

    /// Stores a built report.
    pub async fn store(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        report: &Json,
        tree_size: i64,
        by: &str,
        event: confidant_proto::audit::v1::AuditEvent,
    ) -> anyhow::Result<ReportRow> {
        let row = ReportRow {
            id: Uuid::now_v7(),
            start_at: start,
            end_at: end,
            generated_at: Utc::now(),
            generated_by: by.to_owned(),
            json: serde_json::to_string_pretty(report)?,
            html: html(report),
            tree_size,
        };
        self.db
            .transact(
                vec![Statement::new(
                    "INSERT INTO compliance_reports (id, start_at, end_at, generated_at, generated_by, json, html, tree_size) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    vec![
                        Value::Uuid(row.id),
                        Value::Time(row.start_at),
                        Value::Time(row.end_at),
                        Value::Time(row.generated_at),
                        Value::Text(row.generated_by.clone()),
                        Value::Text(row.json.clone()),
                        Value::Text(row.html.clone()),
                        Value::BigInt(row.tree_size),
                    ],
                )],
                &[event],
            )
            .await?;
        Ok(row)
    }

    /// A page of the reports kept, newest first: at most `limit` after the
    /// one `after` names (its generation time and id).
    pub async fn list(&self, after: Vec<Value>, limit: i64) -> Result<Vec<ReportRow>, sqlx::Error> {
        let mut values = after;
        values.push(Value::BigInt(limit));
        self.db
            .fetch_all(
                "SELECT id, start_at, end_at, generated_at, generated_by, json, html, tree_size FROM compliance_reports \
                 WHERE ($1 IS NULL OR (generated_at, id) < ($1, $2)) ORDER BY generated_at DESC, id DESC LIMIT $3",
                values,
            )
            .await
    }
}

fn cell(v: &Json) -> String {
    match v {
        Json::String(s) => esc(s),
        Json::Null => "—".into(),
        Json::Array(items) => esc(&items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", ")),
        other => esc(&other.to_string()),
    }
}

fn table(rows: &[Json], columns: &[(&str, &str)]) -> String {
    if rows.is_empty() {
        return "<p>None.</p>\n".into();
    }
    let mut out = String::from("<table>\n<thead><tr>");
    for (_, title) in columns {
        out.push_str(&format!("<th scope=\"col\">{}</th>", esc(title)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for (key, _) in columns {
            out.push_str(&format!("<td>{}</td>", cell(&row[*key])));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// The printable HTML document of a report.
pub fn html(r: &Json) -> String {
    let list = |key: &str| r[key].as_array().cloned().unwrap_or_default();
    let retention = &r["retention"];
    let incidents: Vec<Json> = list("incidents")
        .into_iter()
        .map(|i| {
            let overdue = i["obligations"]
                .as_array()
                .map_or(0, |o| o.iter().filter(|o| o["status"] == "OBLIGATION_STATUS_OVERDUE").count());
            let met = i["obligations"]
                .as_array()
                .map_or(0, |o| o.iter().filter(|o| o["status"] == "OBLIGATION_STATUS_MET").count());
            json!({ "title": i["title"], "stage": i["stage"], "aware_at": i["aware_at"], "met": met, "overdue": overdue })
        })
        .collect();
    let checkpoint = &r["audit_checkpoint"];
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Compliance report {start} – {end}</title>\n\
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}}table{{border-collapse:collapse;width:100%;margin-bottom:1rem}}\
th,td{{border:1px solid #999;padding:.3rem .5rem;text-align:left;vertical-align:top}}h2{{margin-top:2rem}}\
@media print{{body{{margin:0}}h2{{break-after:avoid}}table{{break-inside:auto}}}}</style>\n</head>\n<body>\n\
<h1>Compliance report</h1>\n<p>Period: {start} to {end}. Generated {generated}.</p>\n\
<h2>Confidentiality agreements and training</h2>\n{attestations}\
<h2>Access reviews</h2>\n{reviews}\
<h2>Retention and disposal</h2>\n<p>Live policies: {policies}. Vault scopes past their due date: {overdue}. \
Legal holds active at period end: {holds} (placed {placed}, released {released}). Physical items destroyed: {destroyed}.</p>\n\
<h3>Certificates of disposal issued</h3>\n{certificates}\
<h2>Incidents</h2>\n{incidents}\
<h2>Alerts</h2>\n{alerts}\
<h2>Audit log</h2>\n<p>This report covers the audit log up to the signed checkpoint of {size} events, root hash <code>{root}</code>, issued {issued}.</p>\n\
</body>\n</html>\n",
        start = cell(&r["period"]["start"]),
        end = cell(&r["period"]["end"]),
        generated = cell(&r["generated_at"]),
        attestations = table(
            &list("staff_attestations"),
            &[
                ("kind", "Kind"),
                ("staff", "Active staff"),
                ("covered", "Covered"),
                ("expiring_within_30_days", "Expiring in 30 days"),
                ("missing", "Missing or expired")
            ],
        ),
        reviews = table(
            &list("access_reviews"),
            &[
                ("name", "Campaign"),
                ("deadline", "Deadline"),
                ("items", "Grants"),
                ("decided", "Decided"),
                ("overdue", "Overdue")
            ],
        ),
        policies = cell(&retention["live_policies"]),
        overdue = cell(&retention["scopes_overdue"]),
        holds = cell(&retention["active_holds"]),
        placed = cell(&retention["holds_placed"]),
        released = cell(&retention["holds_released"]),
        destroyed = cell(&retention["physical_items_destroyed"]),
        certificates = table(
            &retention["certificates"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            &[
                ("certificate_id", "Certificate"),
                ("kind", "Kind"),
                ("issued_at", "Issued")
            ],
        ),
        incidents = table(
            &incidents,
            &[
                ("title", "Incident"),
                ("stage", "Stage"),
                ("aware_at", "Aware"),
                ("met", "Obligations met"),
                ("overdue", "Obligations overdue")
            ],
        ),
        alerts = table(&list("alerts"), &[("rule", "Rule"), ("count", "Alerts")]),
        size = cell(&checkpoint["tree_size"]),
        root = cell(&checkpoint["root_hash"]),
        issued = cell(&checkpoint["issued_at"]),
    )
}

/// The previous calendar month of `now`: `[first day, first day of this
/// month)`.
pub fn previous_month(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let this = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now);
    let (y, m) = if now.month() == 1 {
        (now.year() - 1, 12)
    } else {
        (now.year(), now.month() - 1)
    };
    let previous = Utc
        .with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .unwrap_or(this);
    (previous, this)
}

/// Builds the report of the previous month once it is over, one replica at
/// a time; checks hourly.
pub async fn schedule(
    api: crate::incidents::IncidentApi,
    coord: SharedCoordinator,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let holder = Uuid::new_v4().to_string();
    loop {
        if let Ok(Some(lease)) = coord
            .acquire_lease("audit-monthly-report", &holder, Duration::from_secs(300))
            .await
        {
            let (start, end) = previous_month(Utc::now());
            match api.scheduled_report(start, end).await {
                Ok(true) => tracing::info!(%start, %end, "monthly compliance report built"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "monthly compliance report not built; retrying")
                }
            }
            let _ = coord.release_lease(&lease).await;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_month_spans_year_ends() {
        let (s, e) = previous_month(Utc.with_ymd_and_hms(2027, 1, 15, 9, 0, 0).unwrap());
        assert_eq!(s, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
        assert_eq!(e, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
    }

    #[test]
    fn html_escapes_what_it_prints() {
        let doc = html(&json!({
            "period": { "start": "a", "end": "b" },
            "incidents": [{ "title": "<script>x</script>", "stage": "S", "aware_at": null, "obligations": [] }],
        }));
        assert!(doc.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(!doc.contains("<script>"));
    }
}
