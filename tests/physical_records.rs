//! Physical records through the retention service's PhysicalRecordsService,
//! with identity and audit beside it, on SQLite and on PostgreSQL with
//! Redis: storage locations and their controls, the register, custody under
//! the same decision as digital reads (walls included), overdue check-outs,
//! transfers off site, the custody log, and bad input.

mod common;

use common::directory::{as_staff, assign, cleared, new_client, new_matter, staff_token};
use common::{error_reason, violated_fields};
use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec};
use confidant_proto::audit::v1::ListEventsRequest;
use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
use confidant_proto::identity::v1::CreateWallRequest;
use confidant_proto::retention::v1 as pb;
use confidant_proto::retention::v1::physical_records_service_client::PhysicalRecordsServiceClient;
use confidant_proto::retention::v1::retention_service_client::RetentionServiceClient;
use confidant_proto::vault::v1::DataCategory;
use confidant_runtime::ServiceName;
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Backend;
use tonic::Code;

use common::channel;

/// `confidant records …` against the sandbox, as the holder of `token`.
fn records_cli(data: &SandboxData, sandbox: &Sandbox, token: &str, args: &[&str]) -> (i32, String) {
    let tls = data.operator_files();
    let out = common::confidant()
        .arg("records")
        .arg("--service")
        .arg(sandbox.url(ServiceName::Retention))
        .arg("--ca")
        .arg(&tls.ca_file)
        .arg("--cert")
        .arg(&tls.cert_file)
        .arg("--key")
        .arg(&tls.key_file)
        .args(["--token", token])
        .args(args)
        .output()
        .expect("confidant runs");
    common::exit_and_output(out)
}

/// The destruction and return lists, as the holder of `token` sees them.
async fn disposal_lists(
    records: &mut PhysicalRecordsServiceClient<confidant_runtime::client::PeerChannel>,
    token: &str,
) -> pb::GetDisposalListsResponse {
    records
        .get_disposal_lists(as_staff(token, pb::GetDisposalListsRequest::default()))
        .await
        .unwrap()
        .into_inner()
}

fn due_in(hours: i64) -> Option<prost_types::Timestamp> {
    common::directory::ts(chrono::Utc::now() + chrono::Duration::hours(hours))
}

async fn paper_under_the_same_rules_as_data(backend: Backend) {
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
    let client_id = new_client(&mut admin).await;
    let other_client = new_client(&mut admin).await;
    let partner = cleared(&mut admin, "partner@firm.example", "partner").await;
    let matter_id = new_matter(&mut admin, &client_id, Some(&partner), "private-client").await;
    let associate = cleared(&mut admin, "associate@firm.example", "associate").await;
    assign(&mut admin, &matter_id, &associate).await;
    let walled = cleared(&mut admin, "walled@firm.example", "associate").await;
    assign(&mut admin, &matter_id, &walled).await;
    admin
        .create_wall(CreateWallRequest {
            screened_staff_ids: vec![walled.clone()],
            client_ids: vec![client_id.clone()],
            matter_ids: vec![],
        })
        .await
        .unwrap();
    let manager = cleared(&mut admin, "records@firm.example", "records_manager").await;
    let partner_token = staff_token(&data, &partner, &["partner"]);
    let associate_token = staff_token(&data, &associate, &["associate"]);
    let walled_token = staff_token(&data, &walled, &["associate"]);
    let manager_token = staff_token(&data, &manager, &["records_manager"]);
    let mut records = PhysicalRecordsServiceClient::new(
        channel(&data, &sandbox, ServiceName::Retention, "firm-app").await,
    );

    // Locations: records managers only, every rule named.
    let room = |site: &str, container: &str, controlled: bool, days: i32, off_site: bool| {
        pb::CreateLocationRequest {
            site: site.into(),
            room: if off_site {
                String::new()
            } else {
                "Records room 2".into()
            },
            container: container.into(),
            controlled,
            code_change_days: days,
            off_site,
        }
    };
    let err = records
        .create_location(as_staff(
            &partner_token,
            room("London", "Cabinet A", true, 90, false),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = records
        .create_location(as_staff(
            &manager_token,
            room(" ", "Cabinet A", true, -1, false),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["site", "code_change_days"]);
    let cabinet = records
        .create_location(as_staff(
            &manager_token,
            room("London", "Cabinet A", true, 90, false),
        ))
        .await
        .unwrap()
        .into_inner()
        .location
        .unwrap();
    assert!(cabinet.controlled && !cabinet.code_change_overdue);
    let err = records
        .create_location(as_staff(
            &manager_token,
            room("London", "Cabinet A", true, 90, false),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["container"]);
    let off_site = records
        .create_location(as_staff(
            &manager_token,
            room("Park Royal store", "", false, 0, true),
        ))
        .await
        .unwrap()
        .into_inner()
        .location
        .unwrap();

    // The register: who may write for the matter registers its paper.
    let register = |label: &str, kind: pb::ItemKind, location: &str| pb::RegisterItemRequest {
        label: label.into(),
        kind: kind as i32,
        client_id: client_id.clone(),
        matter_id: matter_id.clone(),
        category: DataCategory::MatterFile as i32,
        original: false,
        location_id: location.into(),
        box_id: String::new(),
    };
    let unknown = uuid::Uuid::now_v7().to_string();
    let err = records
        .register_item(as_staff(
            &partner_token,
            register("F-0001", pb::ItemKind::File, &unknown),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["location_id"]);
    let mut bad = register("", pb::ItemKind::Unspecified, &cabinet.id);
    bad.category = 0;
    let err = records
        .register_item(as_staff(&partner_token, bad))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["label", "kind", "category"]);
    let err = records
        .register_item(as_staff(
            &manager_token,
            register("F-0001", pb::ItemKind::File, &cabinet.id),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "records managers do not write client data"
    );
    let file = records
        .register_item(as_staff(
            &partner_token,
            register("F-0001", pb::ItemKind::File, &cabinet.id),
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(file.state, pb::ItemState::In as i32);
    let err = records
        .register_item(as_staff(
            &partner_token,
            register("F-0001", pb::ItemKind::File, &cabinet.id),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["label"]);
    let will = records
        .register_item(as_staff(
            &partner_token,
            register("W-0001", pb::ItemKind::OriginalDocument, &cabinet.id),
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert!(will.original, "an original document is always the client's");
    // A box of another client cannot take this client's file.
    let mut other_box = register("B-0009", pb::ItemKind::Box, &cabinet.id);
    other_box.client_id = other_client.clone();
    other_box.matter_id = String::new();
    let admin_box = cleared(&mut admin, "boxes@firm.example", "partner").await;
    let other_matter = new_matter(&mut admin, &other_client, Some(&admin_box), "tax").await;
    other_box.matter_id = other_matter;
    let other_box = records
        .register_item(as_staff(
            &staff_token(&data, &admin_box, &["partner"]),
            other_box,
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    let mut boxed = register("F-0002", pb::ItemKind::File, &cabinet.id);
    boxed.box_id = other_box.id.clone();
    let err = records
        .register_item(as_staff(&partner_token, boxed))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["box_id"]);

    // Custody: the same decision as reading the matter's data.
    let check_out = |item: &str, hours: i64| pb::CheckOutItemRequest {
        item_id: item.into(),
        due_back_time: due_in(hours),
        reason: "completion meeting".into(),
    };
    let err = records
        .check_out_item(as_staff(&walled_token, check_out(&file.id, 24)))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), error_reason(&err).as_str()),
        (Code::PermissionDenied, "behind_wall")
    );
    let err = records
        .check_out_item(as_staff(&partner_token, check_out(&file.id, -1)))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["due_back_time"]);
    let out = records
        .check_out_item(as_staff(&partner_token, check_out(&file.id, 24)))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(
        (out.state, out.holder_staff_id.as_str()),
        (pb::ItemState::CheckedOut as i32, partner.as_str())
    );
    let err = records
        .check_out_item(as_staff(&associate_token, check_out(&file.id, 24)))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "an item that is out went out twice"
    );
    let err = records
        .transfer_item(as_staff(
            &manager_token,
            pb::TransferItemRequest {
                item_id: file.id.clone(),
                location_id: off_site.id.clone(),
                reason: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Overdue check-outs are reported.
    let retention_db = common::service_db(&data, ServiceName::Retention).await;
    let overdue = records
        .list_overdue_checkouts(as_staff(&manager_token, pb::ListOverdueCheckoutsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(overdue.items.is_empty());
    retention_db
        .transact(
            vec![Statement::new(
                "UPDATE physical_items SET due_back_at = $1 WHERE id = $2",
                vec![
                    Value::Time(chrono::Utc::now() - chrono::Duration::days(2)),
                    Value::Uuid(uuid::Uuid::parse_str(&file.id).unwrap()),
                ],
            )],
            &[],
        )
        .await
        .unwrap();
    let overdue = records
        .list_overdue_checkouts(as_staff(&manager_token, pb::ListOverdueCheckoutsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overdue.items.len(), 1);
    assert!(overdue.items[0].overdue && overdue.items[0].id == file.id);
    let err = records
        .list_overdue_checkouts(as_staff(&partner_token, pb::ListOverdueCheckoutsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Back in, then off site; the log has every step.
    let err = records
        .check_in_item(as_staff(
            &associate_token,
            pb::CheckInItemRequest {
                item_id: file.id.clone(),
                location_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "only the holder or a records manager"
    );
    records
        .check_in_item(as_staff(
            &partner_token,
            pb::CheckInItemRequest {
                item_id: file.id.clone(),
                location_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let moved = records
        .transfer_item(as_staff(
            &manager_token,
            pb::TransferItemRequest {
                item_id: file.id.clone(),
                location_id: off_site.id.clone(),
                reason: "closed files to off-site storage".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(moved.location_id, off_site.id);
    let history = records
        .get_item_history(as_staff(
            &associate_token,
            pb::GetItemHistoryRequest {
                item_id: file.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let steps: Vec<(i32, String)> = history
        .entries
        .iter()
        .map(|e| (e.action, e.staff_id.clone()))
        .collect();
    assert_eq!(
        steps,
        [
            (pb::CustodyAction::Registered as i32, partner.clone()),
            (pb::CustodyAction::CheckedOut as i32, partner.clone()),
            (pb::CustodyAction::CheckedIn as i32, partner.clone()),
            (pb::CustodyAction::Transferred as i32, manager.clone()),
        ]
    );
    assert_eq!(history.entries[3].location_id, off_site.id);
    let err = records
        .get_item_history(as_staff(
            &walled_token,
            pb::GetItemHistoryRequest {
                item_id: file.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Where everything of the client is, and what a location holds.
    let items = records
        .list_items(as_staff(
            &associate_token,
            pb::ListItemsRequest {
                client_id: client_id.clone(),
                matter_id: matter_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    let placed: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.label.as_str(), i.location_id.as_str()))
        .collect();
    assert_eq!(
        placed,
        [
            ("F-0001", off_site.id.as_str()),
            ("W-0001", cabinet.id.as_str())
        ]
    );
    let in_cabinet = records
        .list_items(as_staff(
            &manager_token,
            pb::ListItemsRequest {
                location_id: cabinet.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(in_cabinet.len(), 2, "the will and the other client's box");
    // Both lists come in pages, by label.
    for (token, client, matter, location) in [
        (&associate_token, &client_id, &matter_id, ""),
        (
            &manager_token,
            &String::new(),
            &String::new(),
            cabinet.id.as_str(),
        ),
    ] {
        common::check_pages(0, 1, |page_size, page_token| {
            let (mut records, token) = (records.clone(), token.clone());
            let request = pb::ListItemsRequest {
                client_id: client.clone(),
                matter_id: matter.clone(),
                location_id: location.to_owned(),
                page_size,
                page_token,
            };
            async move {
                let r = records
                    .list_items(as_staff(&token, request))
                    .await?
                    .into_inner();
                Ok((r.items, r.next_page_token))
            }
        })
        .await;
    }
    let err = records
        .list_items(as_staff(&manager_token, pb::ListItemsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["client_id"]);

    // The same through the command line.
    let (code, out) = records_cli(
        &data,
        &sandbox,
        &associate_token,
        &["list", "--client", &client_id, "--matter", &matter_id],
    );
    assert_eq!(code, 0, "{out}");
    let listed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{out}");
    assert_eq!(listed[0]["label"], "F-0001");
    assert_eq!(listed[0]["location_id"], off_site.id.as_str());
    let (code, out) = records_cli(
        &data,
        &sandbox,
        &walled_token,
        &["check-out", "--item", &will.id],
    );
    assert_ne!(code, 0);
    assert!(out.contains("PermissionDenied"), "{out}");
    let (code, out) = records_cli(
        &data,
        &sandbox,
        &partner_token,
        &[
            "register",
            "--label",
            "F-0099",
            "--kind",
            "file",
            "--client",
            &client_id,
            "--matter",
            &matter_id,
            "--location",
            &unknown,
        ],
    );
    assert_ne!(code, 0);
    assert!(out.contains("location_id: no such location"), "{out}");
    let (code, out) = records_cli(
        &data,
        &sandbox,
        &associate_token,
        &["check-out", "--item", &will.id, "--hours", "4"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ITEM_STATE_CHECKED_OUT"), "{out}");
    let (code, out) = records_cli(
        &data,
        &sandbox,
        &associate_token,
        &["check-in", "--item", &will.id],
    );
    assert_eq!(code, 0, "{out}");

    // Controlled rooms: entries only for staff given access, all logged;
    // codes changed on time.
    let entry = |who: &str| pb::RecordEntryRequest {
        location_id: cabinet.id.clone(),
        staff_id: who.into(),
    };
    let err = records
        .record_entry(as_staff(&partner_token, entry("")))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err), "no_location_access");
    records
        .set_location_access(as_staff(
            &manager_token,
            pb::SetLocationAccessRequest {
                location_id: cabinet.id.clone(),
                staff_id: partner.clone(),
                allowed: true,
            },
        ))
        .await
        .unwrap();
    records
        .record_entry(as_staff(&partner_token, entry("")))
        .await
        .unwrap();
    retention_db
        .transact(
            vec![Statement::new(
                "UPDATE physical_locations SET code_changed_at = $1 WHERE id = $2",
                vec![
                    Value::Time(chrono::Utc::now() - chrono::Duration::days(91)),
                    Value::Uuid(uuid::Uuid::parse_str(&cabinet.id).unwrap()),
                ],
            )],
            &[],
        )
        .await
        .unwrap();
    let locations = records
        .list_locations(as_staff(&manager_token, pb::ListLocationsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .locations;
    assert_eq!(
        locations[0].id, cabinet.id,
        "overdue code changes come first"
    );
    assert!(locations[0].code_change_overdue);
    assert_eq!(
        locations[0].staff_with_access,
        std::slice::from_ref(&partner)
    );
    let changed = records
        .record_code_change(as_staff(
            &manager_token,
            pb::RecordCodeChangeRequest {
                location_id: cabinet.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .location
        .unwrap();
    assert!(!changed.code_change_overdue);
    let err = records
        .record_code_change(as_staff(
            &manager_token,
            pb::RecordCodeChangeRequest {
                location_id: off_site.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "no code to change");

    // Every movement is in the audit log, refusals included.
    let audit =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    common::eventually(
        std::time::Duration::from_secs(10),
        "custody audited",
        || {
            let mut audit = audit.clone();
            async move {
                let events = audit
                    .list_events(ListEventsRequest {
                        source_service: "retention".into(),
                        page_size: 1000,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().events)
                    .unwrap_or_default();
                let count = |action: &str, outcome: i32| {
                    events
                        .iter()
                        .filter_map(|e| e.event.as_ref())
                        .filter(|e| e.action == action && e.outcome == outcome)
                        .count()
                };
                use confidant_proto::audit::v1::Outcome;
                count("retention.item.registered", Outcome::Allowed as i32) == 3
                    && count("retention.item.checked_out", Outcome::Allowed as i32) == 2
                    && count("retention.item.checked_out", Outcome::Denied as i32) == 2
                    && count("retention.item.checked_in", Outcome::Allowed as i32) == 2
                    && count("retention.item.transferred", Outcome::Allowed as i32) == 1
                    && count("retention.location.entered", Outcome::Denied as i32) == 1
                    && count("retention.location.entered", Outcome::Allowed as i32) == 1
                    && count("retention.location.code_changed", Outcome::Allowed as i32) == 1
            }
        },
    )
    .await;
    retention_db.close().await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_paper_under_the_same_rules_as_data() {
    paper_under_the_same_rules_as_data(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_paper_under_the_same_rules_as_data() {
    paper_under_the_same_rules_as_data(Backend::Postgres).await;
}

async fn due_paper_is_destroyed_or_returned_with_a_certificate(backend: Backend) {
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
    let client_id = new_client(&mut admin).await;
    let partner = cleared(&mut admin, "partner@firm.example", "partner").await;
    let closed_matter = new_matter(&mut admin, &client_id, Some(&partner), "conveyancing").await;
    let held_matter = new_matter(&mut admin, &client_id, Some(&partner), "litigation").await;
    let manager = cleared(&mut admin, "records@firm.example", "records_manager").await;
    let partner_token = staff_token(&data, &partner, &["partner"]);
    let manager_token = staff_token(&data, &manager, &["records_manager"]);
    let channel_to_retention = channel(&data, &sandbox, ServiceName::Retention, "firm-app").await;
    let mut records = PhysicalRecordsServiceClient::new(channel_to_retention.clone());
    let mut retention = RetentionServiceClient::new(channel_to_retention);

    // Matter files: six years after the matter closes, then shredded.
    retention
        .create_policy(as_staff(
            &manager_token,
            pb::CreatePolicyRequest {
                rules: Some(pb::PolicyRules {
                    category: DataCategory::MatterFile as i32,
                    period: Some(pb::Period {
                        years: 6,
                        months: 0,
                        days: 0,
                    }),
                    trigger: pb::Trigger::MatterClosed as i32,
                    trigger_event_name: String::new(),
                    action: pb::DisposalAction::Shred as i32,
                    client_notice_days: 0,
                    basis: "firm schedule 2026, section 4".into(),
                    practice_area: String::new(),
                    jurisdiction: String::new(),
                }),
            },
        ))
        .await
        .unwrap();
    let cabinet = records
        .create_location(as_staff(
            &manager_token,
            pb::CreateLocationRequest {
                site: "London".into(),
                room: "Records room 1".into(),
                container: "Bay 4".into(),
                controlled: false,
                code_change_days: 0,
                off_site: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .location
        .unwrap();
    let off_site = records
        .create_location(as_staff(
            &manager_token,
            pb::CreateLocationRequest {
                site: "Iron Mountain".into(),
                room: "Vault 7".into(),
                container: "Shelf 2".into(),
                controlled: false,
                code_change_days: 0,
                off_site: true,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .location
        .unwrap();
    let register = |label: &str, kind: pb::ItemKind, matter: &str| pb::RegisterItemRequest {
        label: label.into(),
        kind: kind as i32,
        client_id: client_id.clone(),
        matter_id: matter.into(),
        category: DataCategory::MatterFile as i32,
        original: false,
        location_id: cabinet.id.clone(),
        box_id: String::new(),
    };
    let item = |label: &str, kind: pb::ItemKind, matter: &str| {
        let request = as_staff(&partner_token, register(label, kind, matter));
        let mut records = records.clone();
        async move {
            records
                .register_item(request)
                .await
                .unwrap()
                .into_inner()
                .item
                .unwrap()
        }
    };
    let file = item("F-1", pb::ItemKind::File, &closed_matter).await;
    let second_file = item("F-5", pb::ItemKind::File, &closed_matter).await;
    let will = item("W-1", pb::ItemKind::OriginalDocument, &closed_matter).await;
    let held = item("F-2", pb::ItemKind::File, &held_matter).await;
    let client_level = item("F-3", pb::ItemKind::File, "").await;

    // Retention learns the matters, both closed seven years ago; a hold
    // covers one of them.
    retention
        .sync_scopes(as_staff(&manager_token, pb::SyncScopesRequest {}))
        .await
        .unwrap();
    let seven_years_ago = chrono::Utc::now() - chrono::Duration::days(7 * 366);
    for matter in [&closed_matter, &held_matter] {
        retention
            .record_trigger_event(as_staff(
                &manager_token,
                pb::RecordTriggerEventRequest {
                    client_id: client_id.clone(),
                    matter_id: matter.clone(),
                    trigger: pb::Trigger::MatterClosed as i32,
                    event_name: String::new(),
                    occur_time: Some(prost_types::Timestamp {
                        seconds: seven_years_ago.timestamp(),
                        nanos: 0,
                    }),
                },
            ))
            .await
            .unwrap();
    }
    retention
        .place_hold(as_staff(
            &manager_token,
            pb::PlaceHoldRequest {
                reason: "Smith v Jones, disclosure".into(),
                client_id: client_id.clone(),
                matter_id: held_matter.clone(),
                category: 0,
                scope_ids: vec![],
            },
        ))
        .await
        .unwrap();

    // The lists: the file to destroy, the will to return, the held file
    // counted but left off.
    let lists = disposal_lists(&mut records, &manager_token).await;
    let labels = |due: &[pb::DueItem]| -> Vec<String> {
        due.iter()
            .map(|d| d.item.as_ref().unwrap().label.clone())
            .collect()
    };
    let mut due = labels(&lists.destroy);
    due.sort();
    assert_eq!(due, ["F-1", "F-5"]);
    assert_eq!(labels(&lists.return_to_client), ["W-1"]);
    assert_eq!(lists.held, 1);
    let err = records
        .get_disposal_lists(as_staff(
            &partner_token,
            pb::GetDisposalListsRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Destruction is confirmed with the vendor's reference, the date and a
    // witness, and refused whole for anything that may not go.
    let confirm = |ids: &[&str], witness: &str| pb::ConfirmDestructionRequest {
        item_ids: ids.iter().map(|s| s.to_string()).collect(),
        vendor_reference: "SHRED-2026-00417".into(),
        destroyed_on: chrono::Utc::now().date_naive().to_string(),
        witness_staff_id: witness.into(),
    };
    let err = records
        .confirm_destruction(as_staff(
            &manager_token,
            pb::ConfirmDestructionRequest {
                item_ids: vec![],
                vendor_reference: String::new(),
                destroyed_on: "2999-01-01".into(),
                witness_staff_id: manager.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        [
            "item_ids",
            "vendor_reference",
            "destroyed_on",
            "witness_staff_id"
        ]
    );
    for (ids, reason) in [
        (vec![file.id.as_str(), held.id.as_str()], "held"),
        (vec![will.id.as_str()], "originals"),
        (vec![client_level.id.as_str()], "not_due"),
    ] {
        let err = records
            .confirm_destruction(as_staff(&manager_token, confirm(&ids, &partner)))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), error_reason(&err).as_str()),
            (Code::PermissionDenied, reason)
        );
    }
    records
        .check_out_item(as_staff(
            &partner_token,
            pb::CheckOutItemRequest {
                item_id: file.id.clone(),
                due_back_time: due_in(2),
                reason: String::new(),
            },
        ))
        .await
        .unwrap();
    let err = records
        .confirm_destruction(as_staff(&manager_token, confirm(&[&file.id], &partner)))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err), "checked_out");
    records
        .check_in_item(as_staff(
            &partner_token,
            pb::CheckInItemRequest {
                item_id: file.id.clone(),
                location_id: String::new(),
            },
        ))
        .await
        .unwrap();
    let destroyed = records
        .confirm_destruction(as_staff(&manager_token, confirm(&[&file.id], &partner)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(destroyed.items[0].state, pb::ItemState::Destroyed as i32);
    let certificate = destroyed.certificate.unwrap();
    let body: serde_json::Value = serde_json::from_str(&certificate.body).unwrap();
    assert_eq!(body["destroyed_items"][0]["label"], "F-1");
    assert_eq!(body["vendor_reference"], "SHRED-2026-00417");
    assert_eq!(body["witness_staff_id"], partner.as_str());
    let err = records
        .confirm_destruction(as_staff(&manager_token, confirm(&[&file.id], &partner)))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err), "gone", "destroyed twice");

    // The certificate verifies offline against retention's key, and not
    // once edited.
    let stored = records
        .get_destruction_certificate(as_staff(
            &manager_token,
            pb::GetDestructionCertificateRequest {
                certificate_id: certificate.certificate_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    assert_eq!(stored.body, certificate.body);
    // It names the key that signed it: retention's, as `confidant keys
    // public` tells the key's holders to publish it.
    let published = common::published_key(&data.path().join("retention-certificates.key"), &[]);
    let public_key = published["public_key"].as_str().unwrap().to_owned();
    assert_eq!(published["certificate_key_id"], certificate.key_id.as_str());
    assert_eq!(certificate.public_key, public_key);
    assert_eq!(
        (&stored.key_id, &stored.public_key),
        (&certificate.key_id, &public_key)
    );
    let dir = tempfile::tempdir().unwrap();
    let verify = |body: &str| {
        let file = dir.path().join("certificate.json");
        std::fs::write(
            &file,
            serde_json::json!({ "body": body, "signature": certificate.signature }).to_string(),
        )
        .unwrap();
        let out = common::confidant()
            .args(["retention", "verify-certificate", "--file"])
            .arg(&file)
            .args(["--public-key", &public_key])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = verify(&certificate.body);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("F-1"), "{out}");
    let (code, _) = verify(
        &certificate
            .body
            .replace("SHRED-2026-00417", "SHRED-2026-00418"),
    );
    assert_eq!(code, Some(65));

    // The will goes back to the client; a file cannot be "returned".
    let returned = records
        .record_item_returned(as_staff(
            &manager_token,
            pb::RecordItemReturnedRequest {
                item_id: will.id.clone(),
                reference: "collected in person".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(returned.state, pb::ItemState::Returned as i32);
    let err = records
        .record_item_returned(as_staff(
            &manager_token,
            pb::RecordItemReturnedRequest {
                item_id: client_level.id.clone(),
                reference: "courier".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Retention's database is backed up here. After it, the second file is
    // destroyed, the held file checked out, the client's file sent off
    // site, and a new file registered.
    let backup = common::back_up(&data, ServiceName::Retention).await;
    let first_file = file.id.clone();
    let second_certificate = records
        .confirm_destruction(as_staff(
            &manager_token,
            confirm(&[&second_file.id], &partner),
        ))
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap()
        .certificate_id;
    let due_back = due_in(48);
    records
        .check_out_item(as_staff(
            &partner_token,
            pb::CheckOutItemRequest {
                item_id: held.id.clone(),
                due_back_time: due_back,
                reason: "disclosure review".into(),
            },
        ))
        .await
        .unwrap();
    records
        .transfer_item(as_staff(
            &manager_token,
            pb::TransferItemRequest {
                item_id: client_level.id.clone(),
                location_id: off_site.id.clone(),
                reason: "archived".into(),
            },
        ))
        .await
        .unwrap();
    let newcomer = records
        .register_item(as_staff(
            &partner_token,
            register("F-4", pb::ItemKind::File, ""),
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    let lists = disposal_lists(&mut records, &manager_token).await;
    assert!(lists.destroy.is_empty() && lists.return_to_client.is_empty());
    let history = records
        .get_item_history(as_staff(
            &partner_token,
            pb::GetItemHistoryRequest {
                item_id: file.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let last = history.entries.last().unwrap();
    assert_eq!(
        (last.action, last.reason.as_str(), last.staff_id.as_str()),
        (
            pb::CustodyAction::Destroyed as i32,
            "SHRED-2026-00417",
            manager.as_str()
        )
    );
    sandbox.stop().await;

    // Retention's signing key changes: the certificate still names the key
    // that signed it, and what `confidant records certificate` prints is a
    // file `verify-certificate` accepts with the key it names.
    let new_key = data.path().join("retention-certificates-2027.key");
    confidant_runtime::keys::write_new_ed25519_key(&new_key).unwrap();
    let spec = SandboxSpec {
        settings: vec![(
            "retention",
            "signing_key_file",
            new_key.display().to_string().into(),
        )],
        ..SandboxSpec::of(&[
            ServiceName::Identity,
            ServiceName::Vault,
            ServiceName::Retention,
            ServiceName::Audit,
        ])
    };
    let sandbox = Sandbox::start(&data, spec.clone()).await;
    let (code, out) = records_cli(
        &data,
        &sandbox,
        &manager_token,
        &["certificate", "--id", &certificate.certificate_id],
    );
    assert_eq!(code, 0, "{out}");
    let printed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(printed["key_id"], certificate.key_id.as_str());
    assert_eq!(printed["public_key"], public_key.as_str(), "{out}");
    let file = dir.path().join("printed.json");
    std::fs::write(&file, out.trim()).unwrap();
    let verified = common::confidant()
        .args(["retention", "verify-certificate", "--file"])
        .arg(&file)
        .args(["--public-key", printed["public_key"].as_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );

    // Retention's database is restored from the backup: the register
    // would show the second file held and on the destruction list, the
    // held file in its place and the client's file on site. The log's
    // movements since are made again.
    let log =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    let leaf = common::logged_leaf(&log, "retention.item.registered", &newcomer.id).await;
    let (export, key) = common::exported_log(&data, &sandbox, &log, leaf).await;
    sandbox.stop().await;
    common::restore(&data, ServiceName::Retention, &backup).await;
    let restore = || {
        common::restore_command(
            &data,
            &spec,
            &["retention", "--log", &export, "--public-key", &key],
        )
    };
    let (code, out) = restore();
    assert_eq!(code, 0, "{out}");
    let fates = |id: &str| common::restore_results(&out, id);
    let one = |change: &str, result: &str| vec![(change.to_owned(), result.to_owned())];
    // Registered before the backup, moved after it.
    let moved = |change: &str| {
        vec![
            ("register".to_owned(), "already_applied".to_owned()),
            (change.to_owned(), "reapplied".to_owned()),
        ]
    };
    assert_eq!(fates(&second_file.id), moved("destroy"), "{out}");
    assert_eq!(fates(&held.id), moved("check_out"), "{out}");
    assert_eq!(fates(&client_level.id), moved("transfer"), "{out}");
    assert_eq!(fates(&newcomer.id), one("register", "lost"), "{out}");
    // What the backup holds already is left as it is, its certificate of
    // physical disposal included; the one issued since is lost.
    assert_eq!(
        fates(&first_file),
        [
            ("register", "already_applied"),
            ("check_out", "already_applied"),
            ("check_in", "already_applied"),
            ("destroy", "already_applied"),
        ]
        .map(|(c, r)| (c.to_owned(), r.to_owned())),
        "{out}"
    );
    assert_eq!(
        fates(&certificate.certificate_id),
        one("certificate", "already_applied"),
        "{out}"
    );
    assert_eq!(
        fates(&second_certificate),
        one("certificate", "lost"),
        "{out}"
    );
    assert_eq!(fates(&off_site.id), one("location", "already_applied"));
    assert!(out.contains("register them again"), "{out}");

    let sandbox = Sandbox::start(&data, spec.clone()).await;
    let mut records = PhysicalRecordsServiceClient::new(
        channel(&data, &sandbox, ServiceName::Retention, "firm-app").await,
    );
    let lists = disposal_lists(&mut records, &manager_token).await;
    assert!(lists.destroy.is_empty(), "{:?}", lists.destroy);
    let register = records
        .list_items(as_staff(
            &partner_token,
            pb::ListItemsRequest {
                client_id: client_id.clone(),
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    let find = |id: &str| register.iter().find(|i| i.id == id).cloned();
    assert!(find(&newcomer.id).is_none());
    let destroyed = find(&second_file.id).unwrap();
    assert_eq!(destroyed.state, pb::ItemState::Destroyed as i32);
    let out_with = find(&held.id).unwrap();
    assert_eq!(
        (
            out_with.state,
            out_with.holder_staff_id.as_str(),
            out_with.due_back_time.map(|t| t.seconds)
        ),
        (
            pb::ItemState::CheckedOut as i32,
            partner.as_str(),
            due_back.map(|t| t.seconds)
        )
    );
    assert_eq!(find(&client_level.id).unwrap().location_id, off_site.id);
    let history = records
        .get_item_history(as_staff(
            &partner_token,
            pb::GetItemHistoryRequest {
                item_id: second_file.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let last = history.entries.last().unwrap();
    assert_eq!(
        (last.action, last.staff_id.as_str()),
        (pb::CustodyAction::Destroyed as i32, manager.as_str())
    );
    assert!(
        last.reason.contains("confidant restore retention"),
        "{last:?}"
    );
    sandbox.stop().await;

    // Run again, it changes nothing more.
    let (code, out) = restore();
    assert_eq!(code, 0, "{out}");
    for id in [&second_file.id, &held.id, &client_level.id] {
        let again = common::restore_results(&out, id);
        assert!(
            again.iter().all(|(_, r)| r == "already_applied"),
            "{id}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_due_paper_is_destroyed_or_returned_with_a_certificate() {
    due_paper_is_destroyed_or_returned_with_a_certificate(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_due_paper_is_destroyed_or_returned_with_a_certificate() {
    due_paper_is_destroyed_or_returned_with_a_certificate(Backend::Postgres).await;
}
