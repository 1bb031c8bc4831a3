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
use confidant_proto::vault::v1::DataCategory;
use confidant_runtime::ServiceName;
use confidant_runtime::client::PeerChannel;
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::{Backend, Database, PoolOptions};
use tonic::Code;

async fn channel(
    data: &SandboxData,
    sandbox: &Sandbox,
    service: ServiceName,
    name: &str,
) -> PeerChannel {
    confidant_runtime::client::connect(&sandbox.url(service), &data.client_tls(name), "localhost")
        .await
        .expect("reachable")
}

fn due_in(hours: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: (chrono::Utc::now() + chrono::Duration::hours(hours)).timestamp(),
        nanos: 0,
    })
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
    let retention_db = Database::connect(
        &data.database_url(ServiceName::Retention),
        "retention",
        PoolOptions::default(),
    )
    .await
    .unwrap();
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
                location_id: String::new(),
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
    let err = records
        .list_items(as_staff(&manager_token, pb::ListItemsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["client_id"]);

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
                    && count("retention.item.checked_out", Outcome::Allowed as i32) == 1
                    && count("retention.item.checked_out", Outcome::Denied as i32) == 1
                    && count("retention.item.checked_in", Outcome::Allowed as i32) == 1
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
