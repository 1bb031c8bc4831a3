//! Incident response through the audit service's IncidentService, on data
//! the vault produced, on SQLite and on PostgreSQL with Redis and the KMS
//! emulator: obligations under several regimes with their deadlines, the
//! clients a compromised account reached (from the log), drafts and
//! recorded notifications, the stages, bad input and who may do it.

mod common;

use common::directory::{as_staff, assign, cleared, new_client, new_matter, staff_token};
use common::{error_reason, violated_fields};
use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec};
use confidant_proto::audit::v1 as pb;
use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
use confidant_proto::audit::v1::incident_service_client::IncidentServiceClient;
use confidant_proto::vault::v1 as vault_pb;
use confidant_proto::vault::v1::vault_service_client::VaultServiceClient;
use confidant_runtime::ServiceName;
use confidant_runtime::storage::Backend;
use tonic::Code;

use common::channel;

fn at(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    common::directory::ts(t)
}

async fn a_breach_from_detection_to_notification(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[
            ServiceName::Identity,
            ServiceName::Vault,
            ServiceName::Retention,
            ServiceName::Audit,
        ]),
    )
    .await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let client_a = new_client(&mut admin).await;
    let client_b = new_client(&mut admin).await;
    let partner = cleared(&mut admin, "partner@firm.example", "partner").await;
    let matter_a = new_matter(&mut admin, &client_a, Some(&partner), "private-client").await;
    let matter_b = new_matter(&mut admin, &client_b, Some(&partner), "tax").await;
    let officer = cleared(&mut admin, "security@firm.example", "security_officer").await;
    let associate = cleared(&mut admin, "associate@firm.example", "associate").await;
    assign(&mut admin, &matter_a, &associate).await;
    let partner_token = staff_token(&data, &partner, &["partner"]);
    let officer_token = staff_token(&data, &officer, &["security_officer"]);

    // The vault produces the data: records written by intake, read by the
    // partner whose account is later found compromised.
    let mut writer =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "intake").await);
    let mut reader =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "firm-app").await);
    let window_start = chrono::Utc::now() - chrono::Duration::minutes(5);
    let mut reads = Vec::new();
    for (client, matter, category) in [
        (
            &client_a,
            &matter_a,
            vault_pb::DataCategory::IdentityDocument,
        ),
        (
            &client_a,
            &matter_a,
            vault_pb::DataCategory::IdentityDocument,
        ),
        (&client_a, &matter_a, vault_pb::DataCategory::Financial),
        (&client_b, &matter_b, vault_pb::DataCategory::ContactDetails),
    ] {
        let record = common::store_record(&mut writer, client, matter, category, false).await;
        reads.push(record.id);
    }
    for id in &reads {
        reader
            .get_record(as_staff(
                &partner_token,
                vault_pb::GetRecordRequest {
                    record_id: id.clone(),
                    purpose: vault_pb::Purpose::LegalAdvice as i32,
                    justification: String::new(),
                    read_mask: None,
                },
            ))
            .await
            .unwrap();
    }
    let window_end = chrono::Utc::now() + chrono::Duration::minutes(5);

    let mut incidents =
        IncidentServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "firm-app").await);

    // Only the security officer's role may run incidents.
    let err = incidents
        .list_notification_rules(as_staff(
            &partner_token,
            pb::ListNotificationRulesRequest {},
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let rules = incidents
        .list_notification_rules(as_staff(
            &officer_token,
            pb::ListNotificationRulesRequest {},
        ))
        .await
        .unwrap()
        .into_inner()
        .rules;
    let gdpr = rules.iter().find(|r| r.code == "gdpr-authority").unwrap();
    assert_eq!(
        (gdpr.deadline_hours, gdpr.basis.as_str()),
        (72, "GDPR Art. 33(1)")
    );

    // The compromised account's reach, from the log (once the vault's
    // events have been delivered to it).
    let audit =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    common::eventually(
        std::time::Duration::from_secs(10),
        "vault reads delivered",
        || {
            let mut audit = audit.clone();
            let partner = partner.clone();
            async move {
                audit
                    .list_events(pb::ListEventsRequest {
                        actor_id: partner,
                        action: "vault.record.read".into(),
                        page_size: 100,
                        ..Default::default()
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().events.len() == 4)
            }
        },
    )
    .await;
    let affected = incidents
        .find_affected_clients(as_staff(
            &officer_token,
            pb::FindAffectedClientsRequest {
                session_id: String::new(),
                actor_id: partner.clone(),
                peer_identity: String::new(),
                start_time: at(window_start),
                end_time: at(window_end),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(affected.client_count, 2);
    let mut seen: Vec<(String, String, String, i64)> = affected
        .scopes
        .iter()
        .map(|s| {
            (
                s.client_id.clone(),
                s.matter_id.clone(),
                s.category.clone(),
                s.reads,
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (
            client_a.clone(),
            matter_a.clone(),
            "identity_document".to_owned(),
            2,
        ),
        (
            client_a.clone(),
            matter_a.clone(),
            "financial".to_owned(),
            1,
        ),
        (
            client_b.clone(),
            matter_b.clone(),
            "contact_details".to_owned(),
            1,
        ),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    // Each read's event named the fields it returned: the notice can say
    // what kind of data was seen.
    assert!(
        affected
            .scopes
            .iter()
            .all(|s| s.disclosed_fields == ["note"]),
        "{:?}",
        affected.scopes
    );
    // A stolen session: the partner's token's session reached the same
    // clients; another session of the partner reached none.
    let session_of = |token: &str| {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        claims["sid"].as_str().unwrap().to_owned()
    };
    for (token, clients) in [
        (partner_token.clone(), 2),
        (staff_token(&data, &partner, &["partner"]), 0),
    ] {
        let by_session = incidents
            .find_affected_clients(as_staff(
                &officer_token,
                pb::FindAffectedClientsRequest {
                    session_id: session_of(&token),
                    actor_id: String::new(),
                    peer_identity: String::new(),
                    start_time: at(window_start),
                    end_time: at(window_end),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_session.client_count, clients);
    }
    // A service identity: what the intake certificate wrote.
    let by_intake = incidents
        .find_affected_clients(as_staff(
            &officer_token,
            pb::FindAffectedClientsRequest {
                session_id: String::new(),
                actor_id: String::new(),
                peer_identity: ServiceName::Intake.spiffe_id(&sandbox.config.trust_domain),
                start_time: at(window_start),
                end_time: at(window_end),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        by_intake
            .scopes
            .iter()
            .map(|s| s.other_accesses)
            .sum::<i64>(),
        4
    );
    assert!(
        by_intake
            .scopes
            .iter()
            .all(|s| s.reads == 0 && s.disclosed_fields.is_empty())
    );
    // Someone who touched nothing reached no one.
    let none = incidents
        .find_affected_clients(as_staff(
            &officer_token,
            pb::FindAffectedClientsRequest {
                session_id: String::new(),
                actor_id: associate.clone(),
                peer_identity: String::new(),
                start_time: at(window_start),
                end_time: at(window_end),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.client_count, 0);
    let err = incidents
        .find_affected_clients(as_staff(
            &officer_token,
            pb::FindAffectedClientsRequest {
                session_id: String::new(),
                actor_id: partner.clone(),
                peer_identity: "intake".into(),
                start_time: at(window_end),
                end_time: at(window_start),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        ["actor_id", "peer_identity", "end_time"]
    );

    // Opening: every rule named, bad input refused field by field.
    let aware = chrono::Utc::now() - chrono::Duration::hours(80);
    let err = incidents
        .open_incident(as_staff(
            &officer_token,
            pb::OpenIncidentRequest {
                title: String::new(),
                description: String::new(),
                aware_time: at(chrono::Utc::now() + chrono::Duration::hours(1)),
                discover_time: None,
                rule_codes: vec!["gdpr-authority".into(), "mars-privacy-act".into()],
                client_terms: vec![pb::ClientTerm {
                    client_id: client_a.clone(),
                    hours: 0,
                }],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        [
            "title",
            "aware_time",
            "rule_codes[1]",
            "client_terms[0].hours"
        ]
    );
    let incident = incidents
        .open_incident(as_staff(
            &officer_token,
            pb::OpenIncidentRequest {
                title: "Partner account used from an unknown device".into(),
                description: "A partner's session was used from an unrecognised network.".into(),
                aware_time: at(aware),
                discover_time: at(aware - chrono::Duration::hours(4)),
                rule_codes: vec![
                    "gdpr-authority".into(),
                    "gdpr-data-subjects".into(),
                    "us-co-residents".into(),
                    "clients-professional-conduct".into(),
                ],
                client_terms: vec![pb::ClientTerm {
                    client_id: client_a.clone(),
                    hours: 24,
                }],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(incident.stage, pb::IncidentStage::Detection as i32);
    let status = |i: &pb::Incident, code: &str| {
        i.obligations
            .iter()
            .find(|o| o.code == code)
            .map(|o| (o.status, o.due_time.map(|t| t.seconds)))
            .unwrap()
    };
    let client_terms = format!("client-terms:{client_a}");
    assert_eq!(
        status(&incident, "gdpr-authority"),
        (
            pb::ObligationStatus::Overdue as i32,
            Some((aware + chrono::Duration::hours(72)).timestamp())
        )
    );
    assert_eq!(
        status(&incident, &client_terms),
        (
            pb::ObligationStatus::Overdue as i32,
            Some((aware + chrono::Duration::hours(24)).timestamp())
        )
    );
    assert_eq!(
        status(&incident, "us-co-residents"),
        (
            pb::ObligationStatus::Pending as i32,
            Some((aware + chrono::Duration::days(30)).timestamp())
        )
    );
    assert_eq!(
        status(&incident, "gdpr-data-subjects"),
        (pb::ObligationStatus::Pending as i32, None)
    );
    let overdue = incidents
        .list_overdue_obligations(as_staff(
            &officer_token,
            pb::ListOverdueObligationsRequest {},
        ))
        .await
        .unwrap()
        .into_inner()
        .obligations;
    let codes: Vec<String> = overdue
        .iter()
        .map(|o| o.obligation.as_ref().unwrap().code.clone())
        .collect();
    assert_eq!(
        codes,
        [client_terms.clone(), "gdpr-authority".to_owned()],
        "most overdue first"
    );

    // A draft from the facts; the notification recorded meets the duty.
    let draft = incidents
        .draft_notice(as_staff(
            &officer_token,
            pb::DraftNoticeRequest {
                incident_id: incident.id.clone(),
                obligation_code: "gdpr-authority".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .text;
    assert!(draft.contains("the lead supervisory authority"), "{draft}");
    assert!(draft.contains("GDPR Art. 33(1)"), "{draft}");
    assert!(
        draft.contains("Partner account used from an unknown device"),
        "{draft}"
    );
    let err = incidents
        .draft_notice(as_staff(
            &officer_token,
            pb::DraftNoticeRequest {
                incident_id: incident.id.clone(),
                obligation_code: "hipaa-individuals".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["obligation_code"]);
    let notified = incidents
        .record_notification(as_staff(
            &officer_token,
            pb::RecordNotificationRequest {
                incident_id: incident.id.clone(),
                obligation_code: "gdpr-authority".into(),
                recipient: "Data Protection Commission".into(),
                channel: "portal".into(),
                sent_time: at(chrono::Utc::now() - chrono::Duration::minutes(1)),
                text: draft.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert_eq!(
        status(&notified, "gdpr-authority").0,
        pb::ObligationStatus::Met as i32
    );
    assert_eq!(notified.notifications.len(), 1);
    let overdue = incidents
        .list_overdue_obligations(as_staff(
            &officer_token,
            pb::ListOverdueObligationsRequest {},
        ))
        .await
        .unwrap()
        .into_inner()
        .obligations;
    assert_eq!(overdue.len(), 1);

    // The same from the command line.
    let cli = |args: &[&str]| {
        let tls = data.operator_files();
        let out = common::confidant()
            .arg("incidents")
            .arg("--service")
            .arg(sandbox.url(ServiceName::Audit))
            .arg("--ca")
            .arg(&tls.ca_file)
            .arg("--cert")
            .arg(&tls.cert_file)
            .arg("--key")
            .arg(&tls.key_file)
            .args(["--token", &officer_token])
            .args(args)
            .output()
            .expect("confidant runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = cli(&["overdue"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&client_terms) && !out.contains("gdpr-authority"),
        "{out}"
    );
    let (code, out) = cli(&[
        "affected",
        "--actor",
        &partner,
        "--from",
        &window_start.to_rfc3339(),
        "--to",
        &window_end.to_rfc3339(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"clients\":2"), "{out}");
    let html = data.path().join("report.html");
    let (code, out) = cli(&[
        "report",
        "--from",
        &window_start.to_rfc3339(),
        "--to",
        &(chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc3339(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("confidant.compliance-report.v1"), "{out}");
    assert!(
        std::fs::read_to_string(&html)
            .unwrap()
            .contains("<h1>Compliance report</h1>")
    );
    let (code, out) = cli(&["open", "--title", "", "--rule", "no-such-rule"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("rule_codes[0]: no such notification rule"),
        "{out}"
    );

    // Tasks: what, who, by when; done once.
    let err = incidents
        .add_incident_task(as_staff(
            &officer_token,
            pb::AddIncidentTaskRequest {
                incident_id: incident.id.clone(),
                title: String::new(),
                assignee_staff_id: "someone".into(),
                due_time: at(chrono::Utc::now() - chrono::Duration::hours(1)),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        ["title", "assignee_staff_id", "due_time"]
    );
    let with_task = incidents
        .add_incident_task(as_staff(
            &officer_token,
            pb::AddIncidentTaskRequest {
                incident_id: incident.id.clone(),
                title: "Reset the partner's credentials and revoke sessions".into(),
                assignee_staff_id: officer.clone(),
                due_time: at(chrono::Utc::now() + chrono::Duration::hours(2)),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    let task = with_task.tasks[0].clone();
    assert!(task.done_time.is_none() && !task.overdue);
    let complete = pb::CompleteIncidentTaskRequest {
        incident_id: incident.id.clone(),
        task_id: task.id.clone(),
    };
    let done = incidents
        .complete_incident_task(as_staff(&officer_token, complete.clone()))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    assert!(done.tasks[0].done_time.is_some());
    let err = incidents
        .complete_incident_task(as_staff(&officer_token, complete))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A second incident: in a page of incidents each shows its own rules,
    // client terms, obligations and tasks, as reading it alone does.
    let other = incidents
        .open_incident(as_staff(
            &officer_token,
            pb::OpenIncidentRequest {
                title: "Laptop lost in transit".into(),
                description: "An associate's laptop did not arrive.".into(),
                aware_time: at(aware),
                discover_time: None,
                rule_codes: vec!["us-co-residents".into()],
                client_terms: vec![pb::ClientTerm {
                    client_id: client_b.clone(),
                    hours: 240,
                }],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    let listed = incidents
        .list_incidents(as_staff(
            &officer_token,
            pb::ListIncidentsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert_eq!(listed.len(), 2);
    for item in &listed {
        let alone = incidents
            .get_incident(as_staff(
                &officer_token,
                pb::GetIncidentRequest {
                    incident_id: item.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .incident
            .unwrap();
        assert_eq!(
            (
                &item.rule_codes,
                &item.client_terms,
                &item.obligations,
                &item.tasks
            ),
            (
                &alone.rule_codes,
                &alone.client_terms,
                &alone.obligations,
                &alone.tasks
            ),
            "{}",
            item.title
        );
    }
    let listed_other = listed.iter().find(|i| i.id == other.id).unwrap();
    assert_eq!(listed_other.rule_codes, ["us-co-residents"]);
    assert!(listed_other.tasks.is_empty());
    assert_eq!(
        listed
            .iter()
            .find(|i| i.id == incident.id)
            .unwrap()
            .tasks
            .len(),
        1
    );

    // Stages go forward only, each one on the timeline.
    let advance = |stage: pb::IncidentStage| pb::AdvanceIncidentRequest {
        incident_id: incident.id.clone(),
        stage: stage as i32,
        note: "sessions revoked, password reset".into(),
    };
    incidents
        .advance_incident(as_staff(
            &officer_token,
            advance(pb::IncidentStage::Containment),
        ))
        .await
        .unwrap();
    let err = incidents
        .advance_incident(as_staff(
            &officer_token,
            advance(pb::IncidentStage::Containment),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), error_reason(&err).as_str()),
        (Code::FailedPrecondition, "conflict")
    );
    let err = incidents
        .advance_incident(as_staff(
            &officer_token,
            advance(pb::IncidentStage::Detection),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["stage"]);
    incidents
        .add_incident_note(as_staff(
            &officer_token,
            pb::AddIncidentNoteRequest {
                incident_id: incident.id.clone(),
                note: "forensics engaged".into(),
            },
        ))
        .await
        .unwrap();
    let moved = incidents
        .advance_incident(as_staff(
            &officer_token,
            advance(pb::IncidentStage::Notification),
        ))
        .await
        .unwrap()
        .into_inner()
        .incident
        .unwrap();
    let timeline: Vec<(i32, String)> = moved
        .timeline
        .iter()
        .map(|t| (t.stage, t.staff_id.clone()))
        .collect();
    assert_eq!(
        timeline,
        [
            (pb::IncidentStage::Detection as i32, officer.clone()),
            (pb::IncidentStage::Containment as i32, officer.clone()),
            (pb::IncidentStage::Unspecified as i32, officer.clone()),
            (pb::IncidentStage::Notification as i32, officer.clone()),
        ]
    );

    // The compliance report for the period, as JSON and printable HTML,
    // covering a signed checkpoint; the previous month's is built on its own.
    let period = pb::GenerateComplianceReportRequest {
        start_time: at(chrono::Utc::now() - chrono::Duration::hours(1)),
        end_time: at(chrono::Utc::now() + chrono::Duration::seconds(30)),
    };
    let err = incidents
        .generate_compliance_report(as_staff(&partner_token, period))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = incidents
        .generate_compliance_report(as_staff(
            &officer_token,
            pb::GenerateComplianceReportRequest {
                start_time: period.end_time,
                end_time: period.start_time,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["end_time"]);
    let report = incidents
        .generate_compliance_report(as_staff(&officer_token, period))
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&report.json).unwrap();
    assert_eq!(
        json["incidents"][0]["title"],
        "Partner account used from an unknown device"
    );
    let nda = &json["staff_attestations"][0];
    assert_eq!(nda["kind"], "ATTESTATION_KIND_NDA");
    assert_eq!(
        nda["covered"], nda["staff"],
        "every cleared member has an NDA"
    );
    assert!(nda["staff"].as_i64().unwrap() >= 3);
    assert_eq!(json["retention"]["active_holds"], 0);
    assert!(json["audit_checkpoint"]["tree_size"].as_i64().unwrap() > 0);
    assert_eq!(
        json["audit_checkpoint"]["tree_size"].as_i64().unwrap(),
        report.checkpoint_tree_size
    );
    assert!(report.html.starts_with("<!doctype html>"));
    assert!(
        report
            .html
            .contains("Partner account used from an unknown device")
    );
    assert!(report.html.contains("Certificates of disposal issued"));
    let last_month_start = {
        use chrono::{Datelike, TimeZone};
        let now = chrono::Utc::now();
        let (y, m) = if now.month() == 1 {
            (now.year() - 1, 12)
        } else {
            (now.year(), now.month() - 1)
        };
        chrono::Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).unwrap()
    };
    let audit_identity = ServiceName::Audit.spiffe_id(&sandbox.config.trust_domain);
    common::eventually(
        std::time::Duration::from_secs(10),
        "the monthly report",
        || {
            let mut incidents = incidents.clone();
            let token = officer_token.clone();
            let audit_identity = audit_identity.clone();
            async move {
                incidents
                    .list_compliance_reports(as_staff(
                        &token,
                        pb::ListComplianceReportsRequest {
                            page_size: 10,
                            ..Default::default()
                        },
                    ))
                    .await
                    .is_ok_and(|r| {
                        r.into_inner().reports.iter().any(|r| {
                            r.generated_by == audit_identity
                                && r.start_time
                                    .is_some_and(|t| t.seconds == last_month_start.timestamp())
                        })
                    })
            }
        },
    )
    .await;
    // The reports (this one and last month's) come in pages, newest first.
    common::check_pages(0, 1, |page_size, page_token| {
        let (mut incidents, token) = (incidents.clone(), officer_token.clone());
        async move {
            let r = incidents
                .list_compliance_reports(as_staff(
                    &token,
                    pb::ListComplianceReportsRequest {
                        page_size,
                        page_token,
                    },
                ))
                .await?
                .into_inner();
            let ids: Vec<String> = r.reports.into_iter().map(|r| r.id).collect();
            Ok((ids, r.next_page_token))
        }
    })
    .await;

    // Every step is in the tamper-evident log.
    common::eventually(
        std::time::Duration::from_secs(10),
        "incident steps audited",
        || {
            let mut audit = audit.clone();
            async move {
                let events = audit
                    .list_events(pb::ListEventsRequest {
                        source_service: "audit".into(),
                        page_size: 1000,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().events)
                    .unwrap_or_default();
                let count = |action: &str| {
                    events
                        .iter()
                        .filter(|e| e.event.as_ref().is_some_and(|e| e.action == action))
                        .count()
                };
                count("audit.incident.opened") == 2
                    && count("audit.incident.advanced") == 2
                    && count("audit.incident.noted") == 1
                    && count("audit.incident.notified") == 1
                    && count("audit.incident.affected_searched") == 6
            }
        },
    )
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_breach_from_detection_to_notification() {
    a_breach_from_detection_to_notification(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_breach_from_detection_to_notification() {
    a_breach_from_detection_to_notification(Backend::Postgres).await;
}

async fn rules_over_the_event_stream_raise_alerts(backend: Backend) {
    use confidant_proto::identity::v1::{CreateWallRequest, OpenBreakGlassRequest};
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[
            ServiceName::Identity,
            ServiceName::Vault,
            ServiceName::Audit,
        ]),
    )
    .await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let client_a = new_client(&mut admin).await;
    let client_b = new_client(&mut admin).await;
    let partner = cleared(&mut admin, "partner@firm.example", "partner").await;
    let matter_a = new_matter(&mut admin, &client_a, Some(&partner), "private-client").await;
    let matter_b = new_matter(&mut admin, &client_b, Some(&partner), "tax").await;
    let walled = cleared(&mut admin, "walled@firm.example", "associate").await;
    assign(&mut admin, &matter_a, &walled).await;
    admin
        .create_wall(CreateWallRequest {
            screened_staff_ids: vec![walled.clone()],
            client_ids: vec![client_a.clone()],
            matter_ids: vec![],
        })
        .await
        .unwrap();
    let paralegal = cleared(&mut admin, "paralegal@firm.example", "paralegal").await;
    let officer = cleared(&mut admin, "security@firm.example", "security_officer").await;
    let partner_token = staff_token(&data, &partner, &["partner"]);
    let walled_token = staff_token(&data, &walled, &["associate"]);
    let officer_token = staff_token(&data, &officer, &["security_officer"]);
    let mut incidents =
        IncidentServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "firm-app").await);

    // The officer tunes the rules: one client is enough for the test, and
    // every hour is outside working hours.
    let rules = incidents
        .list_detection_rules(as_staff(&officer_token, pb::ListDetectionRulesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(rules.len(), 9);
    let rule = |code: &str| rules.iter().find(|r| r.code == code).unwrap().clone();
    let err = incidents
        .update_detection_rule(as_staff(
            &officer_token,
            pb::UpdateDetectionRuleRequest {
                rule: Some(pb::DetectionRule {
                    code: "no-such-rule".into(),
                    threshold: -1,
                    window_seconds: 0,
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        ["rule.code", "rule.threshold", "rule.window_seconds"]
    );
    let err = incidents
        .update_detection_rule(as_staff(
            &partner_token,
            pb::UpdateDetectionRuleRequest {
                rule: Some(rule("many-clients")),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    for (code, threshold, start, end) in [("many-clients", 1, 0, 0), ("reads-off-hours", 0, 0, 0)] {
        incidents
            .update_detection_rule(as_staff(
                &officer_token,
                pb::UpdateDetectionRuleRequest {
                    rule: Some(pb::DetectionRule {
                        threshold,
                        hours_start: start,
                        hours_end: end,
                        ..rule(code)
                    }),
                },
            ))
            .await
            .unwrap();
    }

    // What happens: the partner reads two clients' data; the walled
    // associate tries client A; a paralegal breaks the glass; and a shred
    // arrives in the log from someone other than retention.
    let mut writer =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "intake").await);
    let mut reader =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "firm-app").await);
    let read = |id: String| vault_pb::GetRecordRequest {
        record_id: id,
        purpose: vault_pb::Purpose::LegalAdvice as i32,
        justification: String::new(),
        read_mask: None,
    };
    let a = common::store_record(
        &mut writer,
        &client_a,
        &matter_a,
        vault_pb::DataCategory::Financial,
        false,
    )
    .await;
    let b = common::store_record(
        &mut writer,
        &client_b,
        &matter_b,
        vault_pb::DataCategory::Financial,
        false,
    )
    .await;
    for id in [&a.id, &b.id] {
        reader
            .get_record(as_staff(&partner_token, read(id.clone())))
            .await
            .unwrap();
    }
    let err = reader
        .get_record(as_staff(&walled_token, read(a.id.clone())))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err), "behind_wall");
    admin
        .open_break_glass(OpenBreakGlassRequest {
            staff_id: paralegal.clone(),
            matter_id: matter_b.clone(),
            justification: "urgent hearing tomorrow morning, partner unreachable".into(),
            duration_minutes: 30,
        })
        .await
        .unwrap();
    let stranger = ServiceName::Vault
        .spiffe_id(&sandbox.config.trust_domain)
        .replace("/vault", "/firm-app");
    let shred = pb::AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        time: at(chrono::Utc::now()),
        source_service: "vault".into(),
        actor: Some(pb::Actor {
            kind: pb::ActorKind::Service as i32,
            id: stranger.clone(),
            roles: vec![],
            peer_identity: stranger.clone(),
            session_id: String::new(),
        }),
        action: "vault.scope.shredded".into(),
        resource: Some(pb::Resource {
            r#type: "scope".into(),
            id: uuid::Uuid::now_v7().to_string(),
            client_id: client_b.clone(),
            matter_id: matter_b.clone(),
            data_category: "financial".into(),
        }),
        outcome: pb::Outcome::Allowed as i32,
        ..Default::default()
    };
    // A scope key the vault could not rewrap: its stored key does not open
    // under its scope.
    let operator = ServiceName::Vault
        .spiffe_id(&sandbox.config.trust_domain)
        .replace("/vault", "/operator");
    let not_rewrapped = pb::AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        action: "vault.scope_key.rewrap_failed".into(),
        actor: Some(pb::Actor {
            kind: pb::ActorKind::Service as i32,
            id: operator.clone(),
            roles: vec![],
            peer_identity: operator.clone(),
            session_id: String::new(),
        }),
        outcome: pb::Outcome::Failed as i32,
        reason: "unwrap_failed".into(),
        ..shred.clone()
    };
    // A record that did not open where it is stored.
    let unreadable = pb::AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        action: "vault.record.unreadable".into(),
        resource: Some(pb::Resource {
            r#type: "record".into(),
            id: uuid::Uuid::now_v7().to_string(),
            client_id: client_b.clone(),
            matter_id: matter_b.clone(),
            data_category: "financial".into(),
        }),
        reason: "integrity".into(),
        ..not_rewrapped.clone()
    };
    AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "vault").await)
        .append_events(pb::AppendEventsRequest {
            events: vec![shred, not_rewrapped, unreadable.clone()],
        })
        .await
        .unwrap();
    // An administrator removed a staff member's authenticator.
    let authenticator_removed = pb::AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        source_service: "identity".into(),
        action: "identity.totp.reset".into(),
        resource: Some(pb::Resource {
            r#type: "staff".into(),
            id: paralegal.clone(),
            ..Default::default()
        }),
        outcome: pb::Outcome::Allowed as i32,
        reason: String::new(),
        ..unreadable
    };
    AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "identity").await)
        .append_events(pb::AppendEventsRequest {
            events: vec![authenticator_removed],
        })
        .await
        .unwrap();

    // Each rule fires once for its actor; two of them opened incidents.
    common::eventually(std::time::Duration::from_secs(20), "alerts raised", || {
        let mut incidents = incidents.clone();
        let token = officer_token.clone();
        async move {
            let alerts = incidents
                .list_alerts(as_staff(
                    &token,
                    pb::ListAlertsRequest {
                        page_size: 100,
                        ..Default::default()
                    },
                ))
                .await
                .map(|r| r.into_inner().alerts)
                .unwrap_or_default();
            let mut fired: Vec<&str> = alerts.iter().map(|a| a.rule_code.as_str()).collect();
            fired.sort_unstable();
            fired.dedup();
            fired
                == [
                    "authenticator-removed",
                    "break-glass",
                    "many-clients",
                    "reads-off-hours",
                    "scope-key-not-rewrapped",
                    "shred-outside-retention",
                    "stored-data-unreadable",
                    "walled-access",
                ]
        }
    })
    .await;
    let alerts = incidents
        .list_alerts(as_staff(
            &officer_token,
            pb::ListAlertsRequest {
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .alerts;
    // Alerts come in pages, newest first.
    common::check_pages(0, 2, |page_size, page_token| {
        let (mut incidents, token) = (incidents.clone(), officer_token.clone());
        async move {
            let r = incidents
                .list_alerts(as_staff(
                    &token,
                    pb::ListAlertsRequest {
                        page_size,
                        page_token,
                    },
                ))
                .await?
                .into_inner();
            Ok((r.alerts, r.next_page_token))
        }
    })
    .await;
    let of = |code: &str| {
        alerts
            .iter()
            .filter(|a| a.rule_code == code)
            .collect::<Vec<_>>()
    };
    assert_eq!(of("many-clients").len(), 1, "alerted once per window");
    assert_eq!(of("many-clients")[0].actor_id, partner);
    assert_eq!(of("walled-access")[0].actor_id, walled);
    assert_eq!(of("shred-outside-retention")[0].actor_id, stranger);
    assert_eq!(of("scope-key-not-rewrapped")[0].actor_id, operator);
    assert!(of("scope-key-not-rewrapped")[0].incident_id.is_empty());
    assert_eq!(of("stored-data-unreadable")[0].actor_id, operator);
    assert_eq!(of("authenticator-removed")[0].actor_id, operator);
    assert!(of("authenticator-removed")[0].incident_id.is_empty());
    assert!(!of("break-glass")[0].incident_id.is_empty());
    assert!(of("walled-access")[0].incident_id.is_empty());
    assert!(
        alerts
            .iter()
            .all(|a| !a.summary.contains(&client_a) && !a.summary.contains(&client_b)),
        "an alert carries client data"
    );
    let opened = incidents
        .list_incidents(as_staff(
            &officer_token,
            pb::ListIncidentsRequest {
                open_only: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .incidents;
    // Incidents come in pages, newest first.
    common::check_pages(0, 1, |page_size, page_token| {
        let (mut incidents, token) = (incidents.clone(), officer_token.clone());
        async move {
            let r = incidents
                .list_incidents(as_staff(
                    &token,
                    pb::ListIncidentsRequest {
                        open_only: true,
                        page_size,
                        page_token,
                    },
                ))
                .await?
                .into_inner();
            let ids: Vec<String> = r.incidents.into_iter().map(|i| i.id).collect();
            Ok((ids, r.next_page_token))
        }
    })
    .await;
    let mut titles: Vec<&str> = opened.iter().map(|i| i.title.as_str()).collect();
    titles.sort_unstable();
    assert_eq!(
        titles,
        ["Alert: break-glass", "Alert: shred-outside-retention"]
    );
    // The notifier (a file in dev) got them.
    let sent = std::fs::read_to_string(data.path().join("alerts.jsonl")).unwrap();
    assert!(sent.contains("Confidant alert: walled-access"), "{sent}");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rules_over_the_event_stream_raise_alerts() {
    rules_over_the_event_stream_raise_alerts(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rules_over_the_event_stream_raise_alerts() {
    rules_over_the_event_stream_raise_alerts(Backend::Postgres).await;
}
