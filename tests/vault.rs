//! The vault through its gRPC API with identity and audit beside it, on
//! SQLite with the local KMS and on PostgreSQL with Redis and the AWS KMS
//! API: reads decided by identity and named by purpose, masking by role,
//! bad input named field by field, only retention shredding, legal holds,
//! staged destruction, sealed audit text that dies with its scope while
//! the log still verifies, and KMS key rotation.

mod common;

use std::time::Duration;

use common::directory::{Client, as_staff, assign, cleared, new_client, new_matter, staff_token};
use common::{field, store_as, stored_as};
use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec, config_table};
use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
use confidant_proto::audit::v1::{AuditEvent, GetLogInfoRequest, ListEventsRequest, Outcome};
use confidant_proto::vault::v1 as pb;
use confidant_proto::vault::v1::vault_service_client::VaultServiceClient;
use confidant_runtime::ServiceName;
use confidant_runtime::client::PeerChannel;
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Backend;

type Vault = VaultServiceClient<PeerChannel>;

async fn vault(data: &SandboxData, sandbox: &Sandbox, name: &str) -> Vault {
    VaultServiceClient::new(
        confidant_runtime::client::connect(
            &sandbox.url(ServiceName::Vault),
            &data.client_tls(name),
            "localhost",
        )
        .await
        .expect("vault reachable"),
    )
}

async fn audit(data: &SandboxData, sandbox: &Sandbox) -> AuditServiceClient<PeerChannel> {
    AuditServiceClient::new(
        confidant_runtime::client::connect(
            &sandbox.url(ServiceName::Audit),
            &data.client_tls("operator"),
            "localhost",
        )
        .await
        .expect("audit reachable"),
    )
}

fn passport(client_id: &str, matter_id: &str) -> pb::NewRecord {
    pb::NewRecord {
        client_id: client_id.into(),
        matter_id: matter_id.into(),
        category: pb::DataCategory::IdentityDocument as i32,
        fields: vec![
            field("surname", pb::FieldType::Text, "Okafor"),
            field("passport_number", pb::FieldType::NationalId, "P1234567"),
        ],
        original: false,
    }
}

fn contact(client_id: &str, matter_id: &str) -> pb::NewRecord {
    pb::NewRecord {
        client_id: client_id.into(),
        matter_id: matter_id.into(),
        category: pb::DataCategory::ContactDetails as i32,
        fields: vec![field("email", pb::FieldType::Email, "a.okafor@example.org")],
        original: false,
    }
}

fn get(record_id: &str, justification: &str) -> pb::GetRecordRequest {
    pb::GetRecordRequest {
        record_id: record_id.into(),
        purpose: pb::Purpose::LegalAdvice as i32,
        justification: justification.into(),
        read_mask: None,
    }
}

fn values(r: &pb::GetRecordResponse) -> Vec<(String, String, bool)> {
    r.fields
        .iter()
        .map(|f| (f.name.clone(), f.value.clone(), f.masked))
        .collect()
}

/// A matter with a responsible partner and cleared, assigned staff.
struct Firm {
    client_id: String,
    matter_id: String,
    partner: String,
    paralegal: String,
    paralegal_assignment: String,
    assistant: String,
    outsider: String,
}

async fn firm(admin: &mut Client) -> Firm {
    let client_id = new_client(admin).await;
    let partner = cleared(admin, "partner@firm.example", "partner").await;
    let matter_id = new_matter(admin, &client_id, Some(&partner), "probate").await;
    let paralegal = cleared(admin, "paralegal@firm.example", "paralegal").await;
    let paralegal_assignment = assign(admin, &matter_id, &paralegal).await;
    let assistant = cleared(admin, "assistant@firm.example", "legal_assistant").await;
    assign(admin, &matter_id, &assistant).await;
    let outsider = cleared(admin, "outsider@firm.example", "associate").await;
    Firm {
        client_id,
        matter_id,
        partner,
        paralegal,
        paralegal_assignment,
        assistant,
        outsider,
    }
}

/// Identity, the vault and audit.
const SUITE: [ServiceName; 3] = [
    ServiceName::Identity,
    ServiceName::Vault,
    ServiceName::Audit,
];

/// `services` started on `data`, with a firm in the directory.
async fn start_with_firm(data: &SandboxData, services: &[ServiceName]) -> (Sandbox, Firm) {
    let sandbox = Sandbox::start(data, SandboxSpec::of(services)).await;
    let mut admin = common::identity_client(data, &sandbox, "operator").await;
    let f = firm(&mut admin).await;
    (sandbox, f)
}

/// `confidant keys retire-local-kms` for `key_id`, with the sandbox's
/// configuration as its file.
/// `confidant keys <args> --config <the sandbox's configuration>`.
fn keys_command(data: &SandboxData, args: &[&str]) -> std::process::Output {
    let file = data.path().join("keys.toml");
    let config = config_table(data, &SandboxSpec::of(&SUITE));
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    common::confidant()
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(&file)
        .output()
        .expect("confidant runs")
}

fn retire_local_kms(data: &SandboxData, key_id: &str) -> std::process::Output {
    keys_command(data, &["retire-local-kms", "--key-id", key_id])
}

async fn vault_events(
    audit: &mut AuditServiceClient<PeerChannel>,
    client_id: &str,
    action: &str,
) -> Vec<AuditEvent> {
    common::logged_events(audit, client_id, "vault", action).await
}

/// The vault's `action` events about `client_id`, once the log holds at
/// least `count` of them.
async fn vault_events_at_least(
    audit: &mut AuditServiceClient<PeerChannel>,
    client_id: &str,
    action: &str,
    count: usize,
) -> Vec<AuditEvent> {
    common::eventually(Duration::from_secs(20), action, || {
        let mut audit = audit.clone();
        async move { vault_events(&mut audit, client_id, action).await.len() >= count }
    })
    .await;
    vault_events(audit, client_id, action).await
}

async fn client_data_is_read_only_for_a_purpose_by_those_the_decision_allows(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let (sandbox, f) = start_with_firm(&data, &SUITE).await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let mut app = vault(&data, &sandbox, "firm-app").await;
    let partner = staff_token(&data, &f.partner, &["partner"]);

    // Writes: staff with client_data.write for the matter.
    let stored = stored_as(&mut app, &partner, passport(&f.client_id, &f.matter_id)).await;
    assert_eq!(stored.field_names, ["surname", "passport_number"]);
    assert_eq!(stored.state(), pb::RecordState::Active);
    let email = stored_as(&mut app, &partner, contact(&f.client_id, &f.matter_id)).await;
    // Without a token, only the configured writers (intake) store records.
    let anonymous = app
        .create_record(pb::CreateRecordRequest {
            record: Some(contact(&f.client_id, "")),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    assert_eq!(common::error_reason(&anonymous), "staff_token_required");
    assert!(anonymous.message().contains("written by"), "{anonymous:?}");
    let mut intake = vault(&data, &sandbox, "intake").await;
    intake
        .create_record(pb::CreateRecordRequest {
            record: Some(contact(&f.client_id, "")),
            request_id: String::new(),
        })
        .await
        .unwrap();
    // An idempotent retry returns the first record.
    let request_id = uuid::Uuid::now_v7().to_string();
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            intake
                .create_record(pb::CreateRecordRequest {
                    record: Some(contact(&f.client_id, "")),
                    request_id: request_id.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .record
                .unwrap()
                .id,
        );
    }
    assert_eq!(ids[0], ids[1]);

    // Reads: the partner sees everything, for a purpose.
    let read = app
        .get_record(as_staff(
            &partner,
            get(&stored.id, "preparing the grant of probate"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        values(&read),
        [
            ("surname".to_owned(), "Okafor".to_owned(), false),
            ("passport_number".to_owned(), "P1234567".to_owned(), false)
        ]
    );
    assert!(!read.audit_event_id.is_empty());
    // A paralegal sees the last four of the passport number.
    let paralegal = staff_token(&data, &f.paralegal, &["paralegal"]);
    let masked = app
        .get_record(as_staff(&paralegal, get(&stored.id, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(masked.fields[1].value, "****4567");
    assert!(masked.fields[1].masked && !masked.fields[0].masked);
    // A legal assistant sees contact details only.
    let assistant = staff_token(&data, &f.assistant, &["legal_assistant"]);
    let redacted = app
        .get_record(as_staff(&assistant, get(&stored.id, "")))
        .await
        .unwrap()
        .into_inner();
    assert!(
        redacted
            .fields
            .iter()
            .all(|f| f.masked && f.value == "[redacted]")
    );
    let contact_read = app
        .get_record(as_staff(&assistant, get(&email.id, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(contact_read.fields[0].value, "a.okafor@example.org");
    // Someone not on the matter is refused, with the decision's reason.
    let outsider = staff_token(&data, &f.outsider, &["associate"]);
    let denied = app
        .get_record(as_staff(&outsider, get(&stored.id, "")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(common::error_reason(&denied), "not_assigned");
    // A service without a staff token reads nothing.
    let no_person = intake.get_record(get(&stored.id, "")).await.unwrap_err();
    assert_eq!(no_person.code(), tonic::Code::Unauthenticated);
    assert_eq!(common::error_reason(&no_person), "staff_token_required");

    // Bad input: every broken rule named.
    let err = app
        .get_record(as_staff(
            &partner,
            pb::GetRecordRequest {
                record_id: "not-a-uuid".into(),
                purpose: 0,
                justification: String::new(),
                read_mask: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["record_id", "purpose"]);
    let err = app
        .create_record(as_staff(
            &partner,
            pb::CreateRecordRequest {
                record: Some(pb::NewRecord {
                    client_id: f.client_id.clone(),
                    matter_id: "nope".into(),
                    category: 77,
                    fields: vec![
                        field("note", pb::FieldType::Text, &"x".repeat(1024 * 1024 + 1)),
                        field("dob", pb::FieldType::Date, "yesterday"),
                    ],
                    original: false,
                }),
                request_id: "again-nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        common::violated_fields(&err),
        [
            "record.matter_id",
            "record.category",
            "record.fields[0].value",
            "record.fields[1].value",
            "request_id"
        ]
    );
    // Fields each within their limit but together past the 4 MiB a gRPC
    // message carries: the transport refuses the call, naming the limit.
    let too_large = app
        .create_record(as_staff(
            &partner,
            pb::CreateRecordRequest {
                record: Some(pb::NewRecord {
                    client_id: f.client_id.clone(),
                    matter_id: f.matter_id.clone(),
                    category: pb::DataCategory::MatterFile as i32,
                    fields: (0..5)
                        .map(|i| {
                            field(
                                &format!("part_{i}"),
                                pb::FieldType::Text,
                                &"x".repeat(1024 * 1024),
                            )
                        })
                        .collect(),
                    original: false,
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(too_large.code(), tonic::Code::OutOfRange, "{too_large:?}");
    assert!(too_large.message().contains("4194304"), "{too_large:?}");
    let unknown = app
        .get_record(as_staff(
            &partner,
            get(&uuid::Uuid::now_v7().to_string(), ""),
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Batches: each item on its own.
    let batch = app
        .batch_create_records(as_staff(
            &partner,
            pb::BatchCreateRecordsRequest {
                records: vec![
                    contact(&f.client_id, &f.matter_id),
                    pb::NewRecord {
                        category: 0,
                        ..contact(&f.client_id, &f.matter_id)
                    },
                ],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = batch.results[0].status.clone().unwrap();
    let second = batch.results[1].status.clone().unwrap();
    assert_eq!(first.code, 0);
    assert_eq!(second.code, tonic::Code::InvalidArgument as i32);
    assert_eq!(second.violations[0].field, "records[1].category");
    let fresh = batch.results[0].record.clone().unwrap().id;
    let many = app
        .batch_get_records(as_staff(
            &paralegal,
            pb::BatchGetRecordsRequest {
                record_ids: vec![
                    stored.id.clone(),
                    "bad".into(),
                    uuid::Uuid::now_v7().to_string(),
                    fresh,
                ],
                purpose: pb::Purpose::Billing as i32,
                justification: String::new(),
                read_mask: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = many
        .results
        .iter()
        .map(|r| r.status.clone().unwrap().code)
        .collect();
    assert_eq!(
        codes,
        [
            0,
            tonic::Code::InvalidArgument as i32,
            tonic::Code::NotFound as i32,
            0
        ]
    );
    assert_eq!(
        many.results[0].record.clone().unwrap().fields[1].value,
        "****4567"
    );
    // Each item is decided for its own matter: the client's other matter,
    // which the paralegal is not on, stays closed within the same batch.
    let other_matter = new_matter(&mut admin, &f.client_id, Some(&f.partner), "tax").await;
    let elsewhere = store_as(&mut app, &partner, passport(&f.client_id, &other_matter)).await;
    let mixed = app
        .batch_get_records(as_staff(
            &paralegal,
            pb::BatchGetRecordsRequest {
                record_ids: vec![stored.id.clone(), elsewhere],
                purpose: pb::Purpose::Billing as i32,
                justification: String::new(),
                read_mask: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<(i32, String, bool)> = mixed
        .results
        .iter()
        .map(|r| {
            let status = r.status.clone().unwrap();
            (status.code, status.reason, r.record.is_some())
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (0, String::new(), true),
            (
                tonic::Code::PermissionDenied as i32,
                "not_assigned".to_owned(),
                false
            )
        ]
    );

    // Taking the paralegal off the matter stops their reads within the
    // decision caches' bound (identity's facts and the vault's allowed
    // decisions, half a second each).
    admin
        .revoke_assignment(confidant_proto::identity::v1::RevokeAssignmentRequest {
            assignment_id: f.paralegal_assignment.clone(),
        })
        .await
        .unwrap();
    common::eventually(
        Duration::from_secs(5),
        "the revocation to take effect",
        || {
            let mut app = app.clone();
            let (token, id) = (paralegal.clone(), stored.id.clone());
            async move {
                app.get_record(as_staff(&token, get(&id, "")))
                    .await
                    .is_err_and(|e| common::error_reason(&e) == "not_assigned")
            }
        },
    )
    .await;

    // Listing shows metadata, never values.
    let listed = app
        .list_records(as_staff(
            &partner,
            pb::ListRecordsRequest {
                client_id: f.client_id.clone(),
                matter_id: f.matter_id.clone(),
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.records.len(), 2);
    assert!(!listed.next_page_token.is_empty());
    let rest = app
        .list_records(as_staff(
            &partner,
            pb::ListRecordsRequest {
                client_id: f.client_id.clone(),
                matter_id: f.matter_id.clone(),
                page_size: 2,
                page_token: listed.next_page_token.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.records.len(), 1);
    assert!(rest.next_page_token.is_empty());
    // A size past the maximum is lowered to it; a negative one or a
    // made-up token is refused.
    common::check_pages(5000, 2, |page_size, page_token| {
        let (mut app, token) = (app.clone(), partner.clone());
        let request = pb::ListRecordsRequest {
            client_id: f.client_id.clone(),
            matter_id: f.matter_id.clone(),
            page_size,
            page_token,
            ..Default::default()
        };
        async move {
            let r = app
                .list_records(as_staff(&token, request))
                .await?
                .into_inner();
            Ok((r.records, r.next_page_token))
        }
    })
    .await;
    // Only those the decision lets read the client's data list it.
    let list = pb::ListRecordsRequest {
        client_id: f.client_id.clone(),
        ..Default::default()
    };
    let refused = app
        .list_records(as_staff(&outsider, list.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), common::error_reason(&refused).as_str()),
        (tonic::Code::PermissionDenied, "not_assigned")
    );
    let no_person = intake.list_records(list).await.unwrap_err();
    assert_eq!(no_person.code(), tonic::Code::Unauthenticated);

    // Every read and refusal is in the audit log, with its purpose; the
    // justification travels sealed, never in clear.
    let mut log = audit(&data, &sandbox).await;
    let reads = vault_events_at_least(&mut log, &f.client_id, "vault.record.read", 7).await;
    let by_partner = reads
        .iter()
        .find(|e| e.id == read.audit_event_id)
        .expect("the partner's read is logged under the id the vault returned");
    assert_eq!(by_partner.purpose, "legal_advice");
    assert_eq!(by_partner.actor.clone().unwrap().roles, ["partner"]);
    assert_eq!(
        by_partner.resource.clone().unwrap().data_category,
        "identity_document"
    );
    assert!(!by_partner.sealed_text.is_empty());
    assert!(!String::from_utf8_lossy(&by_partner.sealed_text).contains("probate"));
    let refusal = reads
        .iter()
        .find(|e| {
            e.outcome == Outcome::Denied as i32
                && e.actor.as_ref().is_some_and(|a| a.id == f.outsider)
        })
        .expect("the outsider's refused read is logged");
    assert_eq!(refusal.reason, "not_assigned");
    // So is each listing, by whom and of which matter.
    common::eventually(Duration::from_secs(20), "the listings logged", || {
        let mut log = log.clone();
        let (client_id, partner, matter) =
            (f.client_id.clone(), f.partner.clone(), f.matter_id.clone());
        async move {
            let listed = vault_events(&mut log, &client_id, "vault.records.listed").await;
            listed
                .iter()
                .filter(|e| {
                    e.actor.as_ref().is_some_and(|a| a.id == partner)
                        && e.resource.as_ref().is_some_and(|r| r.matter_id == matter)
                })
                .count()
                == 5 // two pages, then the whole list and two pages again
        }
    })
    .await;

    // A burst of reads by someone with no decision yet asks identity once:
    // one decision in the audit log, not one per read.
    let associate = cleared(&mut admin, "associate@firm.example", "associate").await;
    assign(&mut admin, &f.matter_id, &associate).await;
    let token = staff_token(&data, &associate, &["associate"]);
    let burst = futures::future::join_all((0..12).map(|_| {
        let mut app = app.clone();
        let request = as_staff(&token, get(&stored.id, "checking the passport"));
        async move { app.get_record(request).await }
    }))
    .await;
    assert!(burst.iter().all(Result::is_ok), "{burst:?}");
    let decisions = || {
        let mut log = log.clone();
        let (client_id, associate) = (f.client_id.clone(), associate.clone());
        async move {
            common::logged_events(&mut log, &client_id, "identity", "identity.authorize")
                .await
                .iter()
                .filter(|e| e.actor.as_ref().is_some_and(|a| a.id == associate))
                .count()
        }
    };
    common::eventually(
        Duration::from_secs(20),
        "the decision in the audit log",
        || {
            let count = decisions();
            async move { count.await > 0 }
        },
    )
    .await;
    // Identity records its decisions in batches: a second one would have
    // travelled with the first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(decisions().await, 1, "12 concurrent reads, one decision");
    sandbox.stop().await;
}

async fn only_retention_shreds_and_sealed_text_dies_with_its_scope_while_the_log_verifies(
    backend: Backend,
) {
    let data = SandboxData::new(backend).await;
    let (sandbox, f) = start_with_firm(&data, &SUITE).await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let officer = cleared(&mut admin, "security@firm.example", "security_officer").await;
    let records_manager = cleared(&mut admin, "records@firm.example", "records_manager").await;
    let mut app = vault(&data, &sandbox, "firm-app").await;
    let mut retention = vault(&data, &sandbox, "retention").await;
    let partner = staff_token(&data, &f.partner, &["partner"]);

    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(stored_as(&mut app, &partner, passport(&f.client_id, &f.matter_id)).await);
    }
    let scope_id = ids[0].scope_id.clone();
    let read = app
        .get_record(as_staff(
            &partner,
            get(&ids[0].id, "client asked about the estate"),
        ))
        .await
        .unwrap()
        .into_inner();

    // The read's sealed justification opens for a security officer.
    let mut log = audit(&data, &sandbox).await;
    let event_id = read.audit_event_id.clone();
    common::eventually(Duration::from_secs(20), "the read in the audit log", || {
        let mut log = log.clone();
        let (client_id, event_id) = (f.client_id.clone(), event_id.clone());
        async move {
            vault_events(&mut log, &client_id, "vault.record.read")
                .await
                .iter()
                .any(|e| e.id == event_id)
        }
    })
    .await;
    let event = vault_events(&mut log, &f.client_id, "vault.record.read")
        .await
        .into_iter()
        .find(|e| e.id == read.audit_event_id)
        .unwrap();
    assert_eq!(event.sealed_scope_id, scope_id);
    let open = pb::OpenSealedTextRequest {
        sealed_text: event.sealed_text.clone(),
        scope_id: scope_id.clone(),
    };
    let officer_token = staff_token(&data, &officer, &["security_officer"]);
    let text = app
        .open_sealed_text(as_staff(&officer_token, open.clone()))
        .await
        .unwrap()
        .into_inner()
        .text;
    assert_eq!(text, "client asked about the estate");
    let nosy = app
        .open_sealed_text(as_staff(&partner, open.clone()))
        .await
        .unwrap_err();
    assert_eq!(nosy.code(), tonic::Code::PermissionDenied);

    // Only the retention service may shred.
    let order = uuid::Uuid::now_v7().to_string();
    let shred = pb::ShredScopeRequest {
        scope_id: scope_id.clone(),
        order_id: order.clone(),
        pending_window: None,
    };
    let refused = app
        .shred_scope(as_staff(&partner, shred.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // Not while a legal hold covers the scope.
    let hold = uuid::Uuid::now_v7().to_string();
    let covered = retention
        .place_hold(pb::PlaceHoldRequest {
            hold_id: hold.clone(),
            client_id: f.client_id.clone(),
            matter_id: f.matter_id.clone(),
            category: 0,
            scope_ids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(covered.scope_ids, std::slice::from_ref(&scope_id));
    let held = retention.shred_scope(shred.clone()).await.unwrap_err();
    assert_eq!(held.code(), tonic::Code::FailedPrecondition);
    assert_eq!(common::error_reason(&held), "legal_hold");
    retention
        .release_hold(pb::ReleaseHoldRequest { hold_id: hold })
        .await
        .unwrap();

    // Staged: pending destruction refuses reads until a records manager
    // cancels it.
    let pending = retention
        .shred_scope(pb::ShredScopeRequest {
            pending_window: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..shred.clone()
        })
        .await
        .unwrap()
        .into_inner()
        .scope
        .unwrap();
    assert_eq!(pending.state(), pb::ScopeState::PendingDestruction);
    let refused = app
        .get_record(as_staff(&partner, get(&ids[1].id, "")))
        .await
        .unwrap_err();
    assert_eq!(common::error_reason(&refused), "pending_destruction");
    let cancel = pb::CancelScopeDestructionRequest {
        scope_id: scope_id.clone(),
        reason: "matter reopened".into(),
    };
    let not_theirs = app
        .cancel_scope_destruction(as_staff(&partner, cancel.clone()))
        .await
        .unwrap_err();
    assert_eq!(not_theirs.code(), tonic::Code::PermissionDenied);
    let manager = staff_token(&data, &records_manager, &["records_manager"]);
    app.cancel_scope_destruction(as_staff(&manager, cancel))
        .await
        .unwrap();
    app.get_record(as_staff(&partner, get(&ids[1].id, "")))
        .await
        .unwrap();

    // Shredded: every record reads as shredded, the tombstone stays.
    let shredded = retention
        .shred_scope(shred)
        .await
        .unwrap()
        .into_inner()
        .scope
        .unwrap();
    assert_eq!(shredded.state(), pb::ScopeState::Shredded);
    assert_eq!(shredded.shred_order, order);
    let listed_scopes = retention
        .list_scopes(pb::ListScopesRequest {
            client_id: f.client_id.clone(),
            state: pb::ScopeState::Shredded as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .scopes;
    assert_eq!(listed_scopes.len(), 1);
    assert_eq!(listed_scopes[0].record_count, 3);
    assert!(shredded.kms_key_id.is_empty());
    for r in &ids {
        let gone = app
            .get_record(as_staff(&partner, get(&r.id, "")))
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::FailedPrecondition);
        assert_eq!(common::error_reason(&gone), "shredded");
    }
    let listed = app
        .list_records(as_staff(
            &partner,
            pb::ListRecordsRequest {
                client_id: f.client_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .records
            .iter()
            .all(|r| r.state() == pb::RecordState::Shredded && r.shred_order == order)
    );

    // The sealed justification is now unreadable…
    let dead = app
        .open_sealed_text(as_staff(&officer_token, open))
        .await
        .unwrap_err();
    assert_eq!(common::error_reason(&dead), "shredded");

    // …and the audit log still verifies, the event with it.
    let url = sandbox.url(ServiceName::Audit);
    let key = log
        .get_log_info(GetLogInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .verifier_key;
    let mut shred_leaf = None;
    for _ in 0..200 {
        let logged = log
            .list_events(ListEventsRequest {
                client_id: f.client_id.clone(),
                action: "vault.scope.shredded".into(),
                outcome: Outcome::Allowed as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        if let Some(e) = logged.first() {
            shred_leaf = Some(e.leaf_index);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shred_leaf = shred_leaf.expect("the shred reaches the audit log");
    common::checkpoint_beyond(&log, shred_leaf).await;
    let (code, out) = common::audit_cli(&data, &url, &["verify", "--public-key", &key]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK"), "{out}");
    let still_there = vault_events(&mut log, &f.client_id, "vault.record.read").await;
    assert!(
        still_there
            .iter()
            .any(|e| e.id == read.audit_event_id && e.sealed_text == event.sealed_text)
    );
    sandbox.stop().await;
}

/// Waits (bounded) until the vault holds an upload in progress.
async fn upload_begun(db: &confidant_runtime::storage::Database) {
    common::eventually(Duration::from_secs(10), "the upload in progress", || {
        let db = db.clone();
        async move {
            let rows: Vec<(uuid::Uuid,)> = db
                .fetch_all(
                    "SELECT id FROM vault_records WHERE upload_state = 'uploading'",
                    vec![],
                )
                .await
                .unwrap();
            !rows.is_empty()
        }
    })
    .await;
}

async fn documents_stream_through_the_api_and_a_cancelled_upload_leaves_nothing(backend: Backend) {
    use pb::download_document_response::Part;
    let data = SandboxData::new(backend).await;
    let (sandbox, f) = start_with_firm(&data, &SUITE).await;
    let mut app = vault(&data, &sandbox, "firm-app").await;
    let partner = staff_token(&data, &f.partner, &["partner"]);
    let header = pb::DocumentHeader {
        client_id: f.client_id.clone(),
        matter_id: f.matter_id.clone(),
        category: pb::DataCategory::MatterFile as i32,
        filename: "Last will and testament.pdf".into(),
        media_type: "application/pdf".into(),
        request_id: String::new(),
        size_bytes: 2_500_000,
        sha256: Vec::new(),
        supersedes: String::new(),
        reason: String::new(),
    };
    let content: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
    let stored = app
        .upload_document(as_staff(
            &partner,
            futures::stream::iter(common::upload_messages(header.clone(), &content)),
        ))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(stored.kind(), pb::RecordKind::Document);
    assert_eq!(stored.field_names, ["filename", "media_type"]);
    let summary = stored.document.clone().unwrap();
    assert_eq!(summary.size_bytes, content.len() as i64);

    let mut download = app
        .download_document(as_staff(
            &partner,
            pb::DownloadDocumentRequest {
                record_id: stored.id.clone(),
                purpose: pb::Purpose::LegalAdvice as i32,
                justification: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(Part::Info(info)) = download.message().await.unwrap().and_then(|m| m.part) else {
        panic!("the details come first");
    };
    assert_eq!(info.filename, "Last will and testament.pdf");
    assert_eq!(info.media_type, "application/pdf");
    assert!(!info.audit_event_id.is_empty());
    let mut back = Vec::new();
    while let Some(message) = download.message().await.unwrap() {
        let Some(Part::Chunk(chunk)) = message.part else {
            panic!("only chunks follow the details");
        };
        assert!(chunk.len() <= 64 * 1024);
        back.extend_from_slice(&chunk);
    }
    assert_eq!(back, content);
    // Someone off the matter downloads nothing; nor does a legal assistant
    // on it, who sees identity documents masked.
    let outsider = staff_token(&data, &f.outsider, &["associate"]);
    let assistant = staff_token(&data, &f.assistant, &["legal_assistant"]);
    for (token, reason) in [(&outsider, "not_assigned"), (&assistant, "masked_for_role")] {
        let refused = app
            .download_document(as_staff(
                token,
                pb::DownloadDocumentRequest {
                    record_id: stored.id.clone(),
                    purpose: pb::Purpose::LegalAdvice as i32,
                    justification: String::new(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (refused.code(), common::error_reason(&refused).as_str()),
            (tonic::Code::PermissionDenied, reason)
        );
    }
    // A stream without a header first is refused by field.
    let headless = app
        .upload_document(as_staff(
            &partner,
            futures::stream::iter(
                common::upload_messages(header.clone(), &content)
                    .into_iter()
                    .skip(1),
            ),
        ))
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&headless), ["header"]);

    // The client gives up mid-upload: nothing becomes visible, nothing stays.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadDocumentRequest>(4);
    let mut cancelled_app = app.clone();
    let token = partner.clone();
    let upload = tokio::spawn(async move {
        cancelled_app
            .upload_document(as_staff(
                &token,
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .await
    });
    for message in common::upload_messages(header.clone(), &content)
        .into_iter()
        .take(4)
    {
        tx.send(message).await.unwrap();
    }
    let db = common::service_db(&data, ServiceName::Vault).await;
    upload_begun(&db).await;
    upload.abort();
    drop(tx);
    common::eventually(Duration::from_secs(10), "the cancelled upload removed", || {
        let db = db.clone();
        async move {
            let rows: Vec<(uuid::Uuid,)> = db
                .fetch_all("SELECT id FROM vault_records WHERE upload_state = 'uploading'", vec![])
                .await
                .unwrap();
            let segments: Vec<(i32,)> = db
                .fetch_all(
                    "SELECT s.seq FROM vault_document_segments s LEFT JOIN vault_records r ON r.id = s.record_id \
                     WHERE r.id IS NULL OR r.upload_state = 'uploading'",
                    vec![],
                )
                .await
                .unwrap();
            rows.is_empty() && segments.is_empty()
        }
    })
    .await;
    let listed = app
        .list_records(as_staff(
            &partner,
            pb::ListRecordsRequest {
                client_id: f.client_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.records.len(), 1, "only the completed document");
    sandbox.stop().await;
}

/// Which of `keys` (the rotation's old and new KMS key) `stored` names:
/// the same id, or an ARN ending in it (AWS answers with ARNs).
fn which_key(stored: &str, keys: &[(&'static str, &str)]) -> &'static str {
    keys.iter()
        .find(|(_, id)| stored == *id || stored.ends_with(&format!("/{id}")))
        .map_or("another key", |(name, _)| *name)
}

/// Each KMS key that wraps live scope keys (named by `keys`), with how many
/// and whether it is the active one, as `GetKeyStats` tells an operator.
async fn kms_keys(
    operator: &mut Vault,
    keys: &[(&'static str, &str)],
) -> Vec<(&'static str, i64, bool)> {
    let mut usage: Vec<(&'static str, i64, bool)> = operator
        .get_key_stats(pb::GetKeyStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .kms_keys
        .into_iter()
        .map(|k| (which_key(&k.kms_key_id, keys), k.scopes, k.active))
        .collect();
    usage.sort();
    usage
}

/// The KMS key (named by `keys`) that wraps the data key of `service`
/// (identity's TOTP seeds, intake's invitation contacts).
async fn data_key_wrapped_by(
    data: &SandboxData,
    service: ServiceName,
    keys: &[(&'static str, &str)],
) -> &'static str {
    let (key_id,): (String,) = common::service_db(data, service)
        .await
        .fetch_optional("SELECT key_id FROM service_data_keys WHERE id = 1", vec![])
        .await
        .unwrap()
        .expect("the service's data key");
    which_key(&key_id, keys)
}

/// A rewrap of two scope keys, after those `page_token` stopped at.
fn rewrap(page_token: &str) -> pb::RewrapScopeKeysRequest {
    pb::RewrapScopeKeysRequest {
        batch_size: 2,
        page_token: page_token.into(),
    }
}

/// The vault's scopes and their wrapped keys, in id order.
async fn wrapped_scope_keys(data: &SandboxData) -> Vec<(uuid::Uuid, Vec<u8>)> {
    common::service_db(data, ServiceName::Vault)
        .await
        .fetch_all(
            "SELECT id, wrapped_key FROM vault_scopes ORDER BY id",
            vec![],
        )
        .await
        .unwrap()
}

/// Puts `wrapped` in scope `scope`'s row, as if moved there or altered.
async fn set_wrapped_key(data: &SandboxData, scope: uuid::Uuid, wrapped: &[u8]) {
    let set = Statement::new(
        "UPDATE vault_scopes SET wrapped_key = $1 WHERE id = $2",
        vec![Value::Bytes(wrapped.to_vec()), Value::Uuid(scope)],
    );
    common::service_db(data, ServiceName::Vault)
        .await
        .transact(vec![set], &[])
        .await
        .unwrap();
}

/// Every record's stored key and ciphertext, in id order.
async fn stored_records(data: &SandboxData) -> Vec<(uuid::Uuid, Vec<u8>, Vec<u8>)> {
    common::service_db(data, ServiceName::Vault)
        .await
        .fetch_all(
            "SELECT id, wrapped_key, fields FROM vault_records ORDER BY id",
            vec![],
        )
        .await
        .unwrap()
}

async fn kms_keys_rotate_through_the_api_without_touching_records(backend: Backend) {
    let mut data = SandboxData::new(backend).await;
    let services = [
        ServiceName::Identity,
        ServiceName::Intake,
        ServiceName::Vault,
        ServiceName::Audit,
    ];
    let (sandbox, f) = start_with_firm(&data, &services).await;
    let partner = staff_token(&data, &f.partner, &["partner"]);
    let mut app = vault(&data, &sandbox, "firm-app").await;
    let mut operator = vault(&data, &sandbox, "operator").await;
    // Three scopes: identity documents, contact details, financial.
    let mut ids = Vec::new();
    for record in [
        passport(&f.client_id, &f.matter_id),
        contact(&f.client_id, &f.matter_id),
        pb::NewRecord {
            client_id: f.client_id.clone(),
            matter_id: f.matter_id.clone(),
            category: pb::DataCategory::Financial as i32,
            fields: vec![field(
                "iban",
                pb::FieldType::AccountNumber,
                "GB29NWBK60161331926819",
            )],
            original: false,
        },
    ] {
        ids.push(store_as(&mut app, &partner, record).await);
    }
    let read_all = |mut app: Vault| {
        let (ids, partner) = (ids.clone(), partner.clone());
        async move {
            let mut all = Vec::new();
            for id in ids {
                let r = app
                    .get_record(as_staff(&partner, get(&id, "")))
                    .await
                    .unwrap()
                    .into_inner();
                all.extend(values(&r));
            }
            all
        }
    };
    let plain = read_all(app.clone()).await;
    assert_eq!(plain.len(), 4);
    let old = operator
        .get_key_stats(pb::GetKeyStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .kms_keys;
    assert_eq!(old.len(), 1, "{old:?}");
    let old = old[0].kms_key_id.clone();
    let keys = [("old", old.as_str())];
    assert_eq!(kms_keys(&mut operator, &keys).await, [("old", 3, true)]);

    // Rewrapping and key statistics are for the vault's admins only, and
    // a batch size out of range is named.
    for denied in [
        app.rewrap_scope_keys(rewrap("")).await.unwrap_err(),
        app.get_key_stats(pb::GetKeyStatsRequest {})
            .await
            .unwrap_err(),
    ] {
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    }
    let err = operator
        .rewrap_scope_keys(pb::RewrapScopeKeysRequest {
            batch_size: 5000,
            page_token: "not a token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["batch_size", "page_token"]);
    // Under the same key there is nothing to do.
    let idle = operator
        .rewrap_scope_keys(rewrap(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((idle.rewrapped, idle.remaining), (0, 0));
    assert_eq!(idle.next_page_token, "");
    let before = stored_records(&data).await;
    sandbox.stop().await;
    // The vault's database is backed up before the rotation.
    let backup = common::back_up(&data, ServiceName::Vault).await;

    // The operator makes a new KMS key the active one and restarts.
    let new = data.rotate_kms_key().await;
    let keys = [("old", old.as_str()), ("new", new.as_str())];
    assert_eq!(which_key(&new, &keys), "new");
    for service in [ServiceName::Identity, ServiceName::Intake] {
        assert_eq!(data_key_wrapped_by(&data, service, &keys).await, "old");
    }
    let sandbox = Sandbox::start(&data, SandboxSpec::of(&services)).await;
    let mut operator = vault(&data, &sandbox, "operator").await;
    assert_eq!(
        kms_keys(&mut operator, &keys).await,
        [("old", 3, false)],
        "no scope key is under the new key yet"
    );
    // Identity and intake moved their own data keys as they started, and
    // said so in the audit log.
    for service in [ServiceName::Identity, ServiceName::Intake] {
        assert_eq!(data_key_wrapped_by(&data, service, &keys).await, "new");
    }
    let log = audit(&data, &sandbox).await;
    common::eventually(
        Duration::from_secs(20),
        "the data key rewraps logged",
        || {
            let mut log = log.clone();
            async move {
                let mut sources: Vec<String> =
                    common::logged_events(&mut log, "", "", "service.data_key.rewrapped")
                        .await
                        .into_iter()
                        .map(|e| e.source_service)
                        .collect();
                sources.sort();
                sources == ["identity", "intake"]
            }
        },
    )
    .await;
    // The first scope's wrapped key has been replaced by the second's
    // (moved, or altered in the database): it cannot be rewrapped, and does
    // not hold up the others.
    let scopes = wrapped_scope_keys(&data).await;
    assert_eq!(scopes.len(), 3);
    set_wrapped_key(&data, scopes[0].0, &scopes[1].1).await;
    // Progress is visible after each batch, with what could not move...
    let first = operator
        .rewrap_scope_keys(rewrap(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            first.rewrapped,
            first.remaining,
            which_key(&first.active_kms_key_id, &keys)
        ),
        (1, 2, "new")
    );
    assert_eq!(
        first.failures,
        [pb::RewrapFailure {
            scope_id: scopes[0].0.to_string(),
            reason: "unwrap_failed".into(),
        }]
    );
    assert_ne!(first.next_page_token, "");
    assert_eq!(
        kms_keys(&mut operator, &keys).await,
        [("new", 1, true), ("old", 2, false)]
    );
    sandbox.stop().await;
    // ...and the job goes on where it stopped, after a restart, to the end
    // of the scope keys to rewrap.
    let sandbox = Sandbox::start(&data, SandboxSpec::of(&services)).await;
    let mut operator = vault(&data, &sandbox, "operator").await;
    let rest = operator
        .rewrap_scope_keys(rewrap(&first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rest.rewrapped, rest.remaining), (1, 1));
    assert_eq!(
        (rest.next_page_token.as_str(), rest.failures.len()),
        ("", 0)
    );
    // The scope key that could not move is in the audit log, with why.
    let log = audit(&data, &sandbox).await;
    common::eventually(Duration::from_secs(20), "the failed rewrap logged", || {
        let (mut log, scope) = (log.clone(), scopes[0].0.to_string());
        async move {
            let failed =
                common::logged_events(&mut log, "", "vault", "vault.scope_key.rewrap_failed").await;
            failed.len() == 1
                && failed[0].resource.as_ref().is_some_and(|r| r.id == scope)
                && failed[0].outcome == Outcome::Failed as i32
                && failed[0].reason == "unwrap_failed"
        }
    })
    .await;
    // Put right, it moves too.
    set_wrapped_key(&data, scopes[0].0, &scopes[0].1).await;
    let last = operator
        .rewrap_scope_keys(rewrap(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((last.rewrapped, last.remaining), (1, 0));
    assert_eq!(kms_keys(&mut operator, &keys).await, [("new", 3, true)]);
    // No record was decrypted or rewritten: record keys and ciphertexts
    // are as they were.
    assert_eq!(stored_records(&data).await, before);
    sandbox.stop().await;

    // The old key can be retired. `confidant keys retire-local-kms` takes
    // it out of the local keyring; AWS keys are retired in AWS KMS, which
    // the command says. The emulator does not enforce a key's state, so
    // there the scopes' own rows show that nothing is wrapped under it any
    // more.
    let retired = retire_local_kms(&data, &old);
    let said = String::from_utf8_lossy(&retired.stdout).into_owned()
        + &String::from_utf8_lossy(&retired.stderr);
    match backend {
        Backend::Sqlite => {
            assert!(retired.status.success(), "{said}");
            let keyring = std::fs::read_to_string(data.local_kms_keyring()).unwrap();
            assert!(!keyring.contains(&old), "{keyring}");
        }
        Backend::Postgres => {
            assert!(!retired.status.success(), "{said}");
            assert!(said.contains("retire an AWS KMS key in AWS KMS"), "{said}");
            let rotated = keys_command(&data, &["rotate-local-kms"]);
            let said = String::from_utf8_lossy(&rotated.stderr).into_owned();
            assert!(
                !rotated.status.success() && said.contains("rotate an AWS KMS key in AWS KMS"),
                "{said}"
            );
            let wrapped_by: Vec<(String,)> = common::service_db(&data, ServiceName::Vault)
                .await
                .fetch_all(
                    "SELECT kms_key_id FROM vault_scopes WHERE state <> 'shredded'",
                    vec![],
                )
                .await
                .unwrap();
            assert!(
                wrapped_by.len() == 3 && wrapped_by.iter().all(|(k,)| which_key(k, &keys) == "new"),
                "{wrapped_by:?}"
            );
        }
    }
    // A fresh process (no cached key) reads every record as before.
    let sandbox = Sandbox::start(&data, SandboxSpec::of(&services)).await;
    let app = vault(&data, &sandbox, "firm-app").await;
    assert_eq!(read_all(app).await, plain);

    // Restored from the backup taken before the rotation, the vault's
    // scope keys are under the old key again: the restore says so, and
    // (the local keyring's) that the log shows the key retired since.
    let log = audit(&data, &sandbox).await;
    let leaf = match backend {
        Backend::Sqlite => common::logged_leaf(&log, "vault.kms_key.retired", &old).await,
        Backend::Postgres => {
            common::logged_leaf(&log, "vault.keys.rewrapped", &last.active_kms_key_id).await
        }
    };
    let (export, key) = common::exported_log(&data, &sandbox, &log, leaf).await;
    sandbox.stop().await;
    common::restore(&data, ServiceName::Vault, &backup).await;
    let (code, out) = common::restore_command(
        &data,
        &SandboxSpec::of(&services),
        &["vault", "--log", &export, "--public-key", &key],
    );
    assert_eq!(code, 0, "{out}");
    let summary: serde_json::Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("summary").is_some())
        .unwrap();
    let to_rewrap = summary["summary"]["kms_keys_to_rewrap"].as_array().unwrap();
    assert_eq!(to_rewrap.len(), 1, "{out}");
    assert_eq!(
        which_key(to_rewrap[0]["kms_key_id"].as_str().unwrap(), &keys),
        "old"
    );
    assert_eq!(to_rewrap[0]["scopes"], 3);
    assert_eq!(
        to_rewrap[0]["retired_since_backup"],
        backend == Backend::Sqlite,
        "{out}"
    );
    assert!(out.contains("rewrap them"), "{out}");
}

/// A masking rule of the API: (role, category, field type, mask).
fn rule(role: &str, category: &str, field_type: &str, mask: pb::Mask) -> pb::MaskingRule {
    pb::MaskingRule {
        role: role.into(),
        category: category.into(),
        field_type: field_type.into(),
        mask: mask as i32,
    }
}

/// `rules` as (role, category, field type, mask), sorted.
fn rule_rows(rules: Vec<pb::MaskingRule>) -> Vec<(String, String, String, pb::Mask)> {
    let mut rows: Vec<_> = rules
        .into_iter()
        .map(|r| {
            let mask = r.mask();
            (r.role, r.category, r.field_type, mask)
        })
        .collect();
    rows.sort();
    rows
}

async fn masking_rules_are_data_that_admins_change_on_the_record(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let (sandbox, f) = start_with_firm(&data, &SUITE).await;
    let partner = staff_token(&data, &f.partner, &["partner"]);
    let paralegal = staff_token(&data, &f.paralegal, &["paralegal"]);
    let mut app = vault(&data, &sandbox, "firm-app").await;
    let mut operator = vault(&data, &sandbox, "operator").await;
    let passport_id = store_as(&mut app, &partner, passport(&f.client_id, &f.matter_id)).await;
    let contact_id = store_as(&mut app, &partner, contact(&f.client_id, &f.matter_id)).await;
    let reader = (app.clone(), paralegal.clone());
    let read_as_paralegal = move |id: String| {
        let (mut app, paralegal) = reader.clone();
        async move {
            let read = app
                .get_record(as_staff(&paralegal, get(&id, "")))
                .await
                .unwrap()
                .into_inner();
            values(&read)
        }
    };
    let row = |role: &str, category: &str, field_type: &str, mask| {
        (
            role.to_owned(),
            category.to_owned(),
            field_type.to_owned(),
            mask,
        )
    };

    // The rules the vault starts with: a paralegal sees the last four of
    // national ids and account numbers.
    let listed = operator
        .list_masking_rules(pb::ListMaskingRulesRequest {
            role: "paralegal".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(
        rule_rows(listed),
        [
            row("paralegal", "*", "*", pb::Mask::Clear),
            row("paralegal", "*", "account_number", pb::Mask::LastFour),
            row("paralegal", "*", "national_id", pb::Mask::LastFour),
        ]
    );
    assert_eq!(
        read_as_paralegal(passport_id.clone()).await[1],
        ("passport_number".to_owned(), "****4567".to_owned(), true)
    );

    // Only the vault's admins see or change them; bad rules are named.
    let set = |role: &str, rules: Vec<pb::MaskingRule>| pb::SetMaskingRulesRequest {
        role: role.into(),
        rules,
    };
    for denied in [
        app.list_masking_rules(pb::ListMaskingRulesRequest::default())
            .await
            .unwrap_err(),
        app.set_masking_rules(set("paralegal", vec![]))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    }
    let err = operator
        .set_masking_rules(set(
            "Para Legal",
            vec![
                rule("", "gossip", "*", pb::Mask::Clear),
                rule("", "*", "*", pb::Mask::Unspecified),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        common::violated_fields(&err),
        ["role", "rules[0].category", "rules[1].mask"]
    );

    // Paralegals stop seeing identity documents at all, at once.
    let now = operator
        .set_masking_rules(set(
            "paralegal",
            vec![
                rule("", "*", "*", pb::Mask::Clear),
                rule("paralegal", "identity_document", "*", pb::Mask::Redact),
            ],
        ))
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(
        rule_rows(now),
        [
            row("paralegal", "*", "*", pb::Mask::Clear),
            row("paralegal", "identity_document", "*", pb::Mask::Redact),
        ]
    );
    assert_eq!(
        read_as_paralegal(passport_id.clone()).await,
        [
            ("surname".to_owned(), "[redacted]".to_owned(), true),
            ("passport_number".to_owned(), "[redacted]".to_owned(), true)
        ]
    );
    assert_eq!(
        read_as_paralegal(contact_id.clone()).await,
        [("email".to_owned(), "a.okafor@example.org".to_owned(), false)]
    );
    // A role without rules sees nothing in clear.
    operator
        .set_masking_rules(set("paralegal", vec![]))
        .await
        .unwrap();
    assert_eq!(
        read_as_paralegal(contact_id).await,
        [("email".to_owned(), "[redacted]".to_owned(), true)]
    );
    // The partner's rules were not touched.
    let partners = operator
        .list_masking_rules(pb::ListMaskingRulesRequest {
            role: "partner".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(
        rule_rows(partners),
        [row("partner", "*", "*", pb::Mask::Clear)]
    );

    // Each change is in the audit log, by the admin, naming the role.
    let log = audit(&data, &sandbox).await;
    common::eventually(Duration::from_secs(20), "the rule changes logged", || {
        let mut log = log.clone();
        async move {
            let changes: Vec<(String, String)> =
                common::logged_events(&mut log, "", "vault", "vault.masking_rules.set")
                    .await
                    .into_iter()
                    .map(|e| {
                        (
                            e.actor.map(|a| a.id).unwrap_or_default(),
                            e.resource.map(|r| r.id).unwrap_or_default(),
                        )
                    })
                    .collect();
            changes.len() == 2
                && changes
                    .iter()
                    .all(|(actor, role)| actor.contains("operator") && role == "paralegal")
        }
    })
    .await;
    sandbox.stop().await;
}

/// A rotation of the local KMS and the vault's administration from the
/// command line: key usage, the rewrap, masking rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keys_and_masking_from_the_command_line() {
    let data = SandboxData::new(Backend::Sqlite).await;
    let (sandbox, f) = start_with_firm(&data, &SUITE).await;
    let partner = staff_token(&data, &f.partner, &["partner"]);
    let mut app = vault(&data, &sandbox, "firm-app").await;
    let mut stored = Vec::new();
    for record in [
        passport(&f.client_id, &f.matter_id),
        contact(&f.client_id, &f.matter_id),
    ] {
        stored.push(store_as(&mut app, &partner, record).await);
    }
    sandbox.stop().await;

    let run = |args: &[&str]| {
        common::confidant()
            .args(args)
            .output()
            .expect("confidant runs")
    };
    let keyring = data.local_kms_keyring();
    let old = std::fs::read_to_string(&keyring)
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the first key's id")
        .to_owned();
    let rotated = keys_command(&data, &["rotate-local-kms"]);
    let said = String::from_utf8_lossy(&rotated.stdout).into_owned();
    assert!(rotated.status.success(), "{said}");
    let new = said
        .trim()
        .strip_prefix("active local KMS key: ")
        .expect("the new key named")
        .to_owned();
    let ids: Vec<String> = std::fs::read_to_string(&keyring)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(
        ids,
        [old.clone(), new.clone()],
        "the new key is the last, active one"
    );
    let elsewhere = data.path().join("no-keyring");
    let missing = run(&[
        "keys",
        "rotate-local-kms",
        "--data-dir",
        elsewhere.to_str().unwrap(),
    ]);
    assert!(
        !missing.status.success()
            && !elsewhere
                .join(confidant_runtime::kms::LOCAL_KEY_FILE)
                .exists(),
        "a missing keyring is not created"
    );
    // The old key cannot be retired while anything is wrapped under it:
    // identity's data key until identity restarts, the vault's scope keys
    // until the rewrap. Nor can the active key, or a key that is not there.
    let refused = |key_id: &str| {
        let out = retire_local_kms(&data, key_id);
        assert!(!out.status.success(), "{key_id} retired");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let still_used = refused(&old);
    assert!(
        still_used.contains("identity: its data key") && still_used.contains("vault: 2 scope keys"),
        "{still_used}"
    );
    assert!(refused(&new).contains("is the active key"));
    assert!(refused("local-none").contains("no local key local-none"));

    let sandbox = Sandbox::start(&data, SandboxSpec::of(&SUITE)).await;
    let tls = data.operator_files();
    let url = sandbox.url(ServiceName::Vault);
    let vault_cli = |args: &[&str]| {
        let mut all = vec!["vault", "--service", &url];
        let files = [
            ("--ca", tls.ca_file.to_str().unwrap()),
            ("--cert", tls.cert_file.to_str().unwrap()),
            ("--key", tls.key_file.to_str().unwrap()),
        ];
        for (flag, path) in &files {
            all.extend([*flag, *path]);
        }
        all.extend(args);
        run(&all)
    };
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = vault_cli(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {text}");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("JSON lines"))
            .collect()
    };
    let usage = |stats: &serde_json::Value| -> Vec<(String, i64, bool)> {
        let mut keys: Vec<_> = stats["kms_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["kms_key_id"].as_str().unwrap().to_owned(),
                    k["scopes"].as_i64().unwrap(),
                    k["active"].as_bool().unwrap(),
                )
            })
            .collect();
        keys.sort_by_key(|k| k.2);
        keys
    };
    let before = usage(&lines(&["key-stats"])[0]);
    assert_eq!(before.len(), 1);
    assert_eq!((before[0].1, before[0].2), (2, false), "{before:?}");
    let progress = |batches: &[serde_json::Value]| -> Vec<(i64, i64, usize)> {
        batches
            .iter()
            .map(|b| {
                (
                    b["rewrapped"].as_i64().unwrap(),
                    b["remaining"].as_i64().unwrap(),
                    b["failures"].as_array().unwrap().len(),
                )
            })
            .collect()
    };
    // With the first scope's wrapped key replaced by the second's, one
    // scope key per batch: the first cannot move, the second does, and
    // the command fails once it has gone through them, naming the first.
    let scopes = wrapped_scope_keys(&data).await;
    assert_eq!(scopes.len(), 2);
    set_wrapped_key(&data, scopes[0].0, &scopes[1].1).await;
    let stuck = vault_cli(&["rewrap", "--batch-size", "1"]);
    assert!(!stuck.status.success());
    let batches: Vec<serde_json::Value> = String::from_utf8_lossy(&stuck.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    // (The last call finds nothing after the second: the pass is over.)
    assert_eq!(progress(&batches), [(0, 2, 1), (1, 1, 0), (0, 1, 0)]);
    assert_eq!(
        batches[0]["failures"],
        serde_json::json!([{ "scope_id": scopes[0].0, "reason": "unwrap_failed" }])
    );
    let said = String::from_utf8_lossy(&stuck.stderr);
    assert!(said.contains("1 of them could not be rewrapped"), "{said}");
    // Meanwhile a record under that scope does not open (this replica has
    // no key of it cached): DATA_LOSS, nothing returned, counted.
    let mut app = vault(&data, &sandbox, "firm-app").await;
    let lost = app
        .get_record(as_staff(&partner, get(&stored[0], "")))
        .await
        .unwrap_err();
    assert_eq!(
        (lost.code(), common::error_reason(&lost).as_str()),
        (tonic::Code::DataLoss, "key_unwrap_failed")
    );
    // Put right, it moves; run again, the command goes on to the end.
    set_wrapped_key(&data, scopes[0].0, &scopes[0].1).await;
    let batches = lines(&["rewrap", "--batch-size", "1"]);
    assert_eq!(progress(&batches), [(1, 0, 0)]);
    assert_eq!(batches[0]["active_kms_key_id"], new.as_str());
    let after = &lines(&["key-stats"])[0];
    assert_eq!(usage(after), [(new.clone(), 2, true)]);
    // Every reason a KMS call can fail for is listed; the rewrap and the
    // read that failed are counted, and the read as a record that did not
    // open.
    assert_eq!(
        after["kms_failures"],
        serde_json::json!({ "unavailable": 0, "refused": 0, "unwrap_failed": 2, "other": 0 }),
        "{after}"
    );
    assert_eq!(
        after["unreadable_records"],
        serde_json::json!({ "integrity": 0, "key_unwrap_failed": 1 }),
        "{after}"
    );
    // Now nothing is wrapped under the old key: it is retired, for good.
    let retired = retire_local_kms(&data, &old);
    assert!(retired.status.success(), "{retired:?}");
    assert_eq!(
        String::from_utf8_lossy(&retired.stdout).trim(),
        format!("local KMS key {old} retired; active key: {new}")
    );
    let kept = std::fs::read_to_string(&keyring).unwrap();
    assert!(!kept.contains(&old) && kept.contains(&new), "{kept}");
    // The rotation and the retirement, and only they (not the refused
    // attempts), are in the audit log, naming their keys.
    let log = audit(&data, &sandbox).await;
    common::eventually(
        Duration::from_secs(20),
        "the rotation and the retirement logged",
        || {
            let (mut log, old, new) = (log.clone(), old.clone(), new.clone());
            async move {
                let mut keys = Vec::new();
                for action in ["vault.kms_key.rotated", "vault.kms_key.retired"] {
                    keys.push(
                        common::logged_events(&mut log, "", "vault", action)
                            .await
                            .into_iter()
                            .filter_map(|e| e.resource.map(|r| (r.r#type, r.id)))
                            .collect::<Vec<_>>(),
                    );
                }
                keys == [[("kms_key".to_owned(), new)], [("kms_key".to_owned(), old)]]
            }
        },
    )
    .await;
    // Run again, it has nothing to do: one line, nothing moved or left.
    let again = lines(&["rewrap"]);
    assert_eq!(again.len(), 1);
    assert_eq!(
        (
            again[0]["rewrapped"].as_i64(),
            again[0]["remaining"].as_i64()
        ),
        (Some(0), Some(0))
    );

    // Masking rules, listed and replaced.
    let assistant = lines(&["masking-rules", "--role", "legal_assistant"]);
    assert_eq!(assistant.len(), 2, "{assistant:?}");
    let now = lines(&[
        "set-masking-rules",
        "--role",
        "legal_assistant",
        "--rule",
        "*:*:redact",
        "--rule",
        "contact_details:email:last4",
    ]);
    let mut rules: Vec<String> = now
        .iter()
        .map(|r| {
            format!(
                "{}:{}:{}",
                r["category"].as_str().unwrap(),
                r["field_type"].as_str().unwrap(),
                r["mask"].as_str().unwrap()
            )
        })
        .collect();
    rules.sort();
    assert_eq!(rules, ["*:*:redact", "contact_details:email:last4"]);
    // Refused with the vault's reasons, or before connecting.
    let bad = vault_cli(&[
        "set-masking-rules",
        "--role",
        "legal_assistant",
        "--rule",
        "gossip:*:clear",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("rules[0].category"));
    let malformed = vault_cli(&["set-masking-rules", "--role", "x", "--rule", "*:*"]);
    assert!(!malformed.status.success());
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("category:field_type:mask"));
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_masking_rules_are_data_that_admins_change_on_the_record() {
    masking_rules_are_data_that_admins_change_on_the_record(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_masking_rules_are_data_that_admins_change_on_the_record() {
    masking_rules_are_data_that_admins_change_on_the_record(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kms_keys_rotate_through_the_api_without_touching_records() {
    kms_keys_rotate_through_the_api_without_touching_records(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kms_keys_rotate_through_the_api_without_touching_records() {
    kms_keys_rotate_through_the_api_without_touching_records(Backend::Postgres).await;
}

/// A vault at its limit of calls in progress (`services.vault.max_in_flight`,
/// 1 here) refuses a new call at once as UNAVAILABLE, reason `overloaded`,
/// with a retry delay, instead of queueing it; health checks are still
/// answered; an upload holds its place until it is stored, a download
/// until its last segment has gone; then calls are served again.
async fn a_vault_at_its_limit_refuses_new_calls_at_once_and_still_answers_probes(backend: Backend) {
    use tonic_types::StatusExt;
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec {
            settings: vec![("services.vault", "max_in_flight", 1.into())],
            ..SandboxSpec::of(&SUITE)
        },
    )
    .await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let f = firm(&mut admin).await;
    let app = vault(&data, &sandbox, "firm-app").await;
    let partner = staff_token(&data, &f.partner, &["partner"]);
    let list = || {
        let (mut app, token, client_id) = (app.clone(), partner.clone(), f.client_id.clone());
        async move {
            app.list_records(as_staff(
                &token,
                pb::ListRecordsRequest {
                    client_id,
                    ..Default::default()
                },
            ))
            .await
            .map(|r| r.into_inner().records.len())
        }
    };
    let assert_refused = |refused: tonic::Status| {
        assert_eq!(
            (refused.code(), common::error_reason(&refused).as_str()),
            (tonic::Code::Unavailable, "overloaded"),
            "{refused:?}"
        );
        assert_eq!(
            refused
                .get_error_details()
                .retry_info()
                .and_then(|r| r.retry_delay),
            Some(Duration::from_secs(1))
        );
    };
    assert_eq!(list().await.unwrap(), 0);

    // An upload in progress takes the one place.
    let header = pb::DocumentHeader {
        client_id: f.client_id.clone(),
        matter_id: f.matter_id.clone(),
        category: pb::DataCategory::MatterFile as i32,
        filename: "bundle.pdf".into(),
        media_type: "application/pdf".into(),
        size_bytes: 2_500_000,
        ..Default::default()
    };
    let content: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
    let mut messages = common::upload_messages(header, &content).into_iter();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadDocumentRequest>(4);
    let upload = {
        let (mut app, token) = (app.clone(), partner.clone());
        tokio::spawn(async move {
            app.upload_document(as_staff(
                &token,
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .await
        })
    };
    for message in messages.by_ref().take(2) {
        tx.send(message).await.unwrap();
    }
    let db = common::service_db(&data, ServiceName::Vault).await;
    upload_begun(&db).await;
    assert_refused(list().await.unwrap_err());
    // The orchestrator's probe is still answered.
    let status = common::health(
        sandbox.addr(ServiceName::Vault),
        &data.client_tls("operator"),
    )
    .await
    .unwrap();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    for message in messages {
        tx.send(message).await.unwrap();
    }
    drop(tx);
    let stored = upload.await.unwrap().unwrap().into_inner().record.unwrap();
    assert_eq!(
        list().await.unwrap(),
        1,
        "served again once the upload is stored"
    );

    // A download keeps its place until its last segment has gone.
    let mut download = app
        .clone()
        .download_document(as_staff(
            &partner,
            pb::DownloadDocumentRequest {
                record_id: stored.id.clone(),
                purpose: pb::Purpose::LegalAdvice as i32,
                justification: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(download.message().await.unwrap().is_some());
    assert_refused(list().await.unwrap_err());
    let mut received = 0;
    while let Some(message) = download.message().await.unwrap() {
        if let Some(pb::download_document_response::Part::Chunk(chunk)) = message.part {
            received += chunk.len();
        }
    }
    assert!(received > 0);
    common::eventually(Duration::from_secs(10), "calls served again", || {
        let list = list();
        async move { list.await.is_ok() }
    })
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_vault_at_its_limit_refuses_new_calls_at_once_and_still_answers_probes() {
    a_vault_at_its_limit_refuses_new_calls_at_once_and_still_answers_probes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_vault_at_its_limit_refuses_new_calls_at_once_and_still_answers_probes() {
    a_vault_at_its_limit_refuses_new_calls_at_once_and_still_answers_probes(Backend::Postgres)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_documents_stream_through_the_api_and_a_cancelled_upload_leaves_nothing() {
    documents_stream_through_the_api_and_a_cancelled_upload_leaves_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_documents_stream_through_the_api_and_a_cancelled_upload_leaves_nothing() {
    documents_stream_through_the_api_and_a_cancelled_upload_leaves_nothing(Backend::Postgres).await;
}

async fn many_records_with_many_fields_list_in_pages_within_the_message_limit(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let (sandbox, f) = start_with_firm(&data, &SUITE).await;
    let mut app = vault(&data, &sandbox, "firm-app").await;
    let partner = staff_token(&data, &f.partner, &["partner"]);
    // 400 records of 200 fields with names of 64 characters: their
    // metadata alone is more than a gRPC message holds by default.
    let fields: Vec<pb::Field> = (0..200)
        .map(|i| {
            field(
                &format!("{}_{i:03}", "n".repeat(60)),
                pb::FieldType::Text,
                "x",
            )
        })
        .collect();
    let mut stored = std::collections::HashSet::new();
    for _ in 0..4 {
        let records = (0..100)
            .map(|_| pb::NewRecord {
                client_id: f.client_id.clone(),
                matter_id: f.matter_id.clone(),
                category: pb::DataCategory::ContactDetails as i32,
                fields: fields.clone(),
                original: false,
            })
            .collect();
        let batch = app
            .batch_create_records(as_staff(
                &partner,
                pb::BatchCreateRecordsRequest { records },
            ))
            .await
            .unwrap()
            .into_inner();
        for result in batch.results {
            assert_eq!(result.status.unwrap().code, 0);
            stored.insert(result.record.unwrap().id);
        }
    }

    // Asked for all of them at once, the vault answers in pages that fit.
    let (listed, pages) = common::all_pages(|page_token| {
        let (mut app, partner) = (app.clone(), partner.clone());
        let client_id = f.client_id.clone();
        async move {
            let page = app
                .list_records(as_staff(
                    &partner,
                    pb::ListRecordsRequest {
                        client_id,
                        page_size: 1000,
                        page_token,
                        ..Default::default()
                    },
                ))
                .await
                .expect("a page within the message limit")
                .into_inner();
            let ids = page.records.into_iter().map(|r| r.id).collect();
            (ids, page.next_page_token)
        }
    })
    .await;
    assert!(pages >= 2, "{pages} pages");
    let unique: std::collections::HashSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "a record listed twice");
    assert_eq!(unique, stored, "every record listed");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_many_records_with_many_fields_list_in_pages_within_the_message_limit() {
    many_records_with_many_fields_list_in_pages_within_the_message_limit(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_many_records_with_many_fields_list_in_pages_within_the_message_limit() {
    many_records_with_many_fields_list_in_pages_within_the_message_limit(Backend::Postgres).await;
}

fn read_mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn a_read_mask_returns_only_the_named_fields_and_the_log_names_them(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let (sandbox, f) = start_with_firm(&data, &SUITE).await;
    let mut app = vault(&data, &sandbox, "firm-app").await;
    let partner = staff_token(&data, &f.partner, &["partner"]);
    let paralegal = staff_token(&data, &f.paralegal, &["paralegal"]);
    let outsider = staff_token(&data, &f.outsider, &["associate"]);
    let stored = stored_as(&mut app, &partner, passport(&f.client_id, &f.matter_id)).await;
    let email = stored_as(&mut app, &partner, contact(&f.client_id, &f.matter_id)).await;
    let masked = |id: &str, paths: &[&str]| pb::GetRecordRequest {
        read_mask: read_mask(paths),
        ..get(id, "")
    };

    // The paralegal asks for the passport number alone: it comes masked as
    // the role requires, the surname not at all; the metadata still lists
    // every field the record has.
    let number = app
        .get_record(as_staff(
            &paralegal,
            masked(&stored.id, &["fields.passport_number"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        values(&number),
        [("passport_number".into(), "****4567".into(), true)]
    );
    assert_eq!(
        number.record.clone().unwrap().field_names,
        ["surname", "passport_number"]
    );
    // `*` reads every field.
    let everything = app
        .get_record(as_staff(&partner, masked(&stored.id, &["*"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everything.fields.len(), 2);

    // Bad paths are named, and nothing is read.
    let err = app
        .get_record(as_staff(
            &partner,
            masked(&stored.id, &["surname", "fields.surname", "fields.surname"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        common::violated_fields(&err),
        ["read_mask.paths[0]", "read_mask.paths[2]"]
    );
    // A field the record lacks is named too, but only to a reader the
    // decision allows: anyone else learns nothing of the record's fields.
    let err = app
        .get_record(as_staff(&partner, masked(&stored.id, &["fields.email"])))
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["read_mask.paths[0]"]);
    let err = app
        .get_record(as_staff(&outsider, masked(&stored.id, &["fields.email"])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // In a batch, each record on its own.
    let batch = app
        .batch_get_records(as_staff(
            &partner,
            pb::BatchGetRecordsRequest {
                record_ids: vec![stored.id.clone(), email.id.clone()],
                purpose: pb::Purpose::ClientRequest as i32,
                justification: String::new(),
                read_mask: read_mask(&["fields.email"]),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let lacking = batch.results[0].status.clone().unwrap();
    assert_eq!(lacking.code, tonic::Code::InvalidArgument as i32);
    assert_eq!(lacking.violations[0].field, "read_mask.paths[0]");
    assert!(batch.results[0].record.is_none());
    let found = batch.results[1].record.clone().unwrap();
    assert_eq!(
        values(&found),
        [("email".into(), "a.okafor@example.org".into(), false)]
    );

    // The log names exactly the fields each read disclosed; the refused
    // reads disclosed none, and a mask the record could not satisfy left no
    // read at all.
    let mut log = audit(&data, &sandbox).await;
    let reads = vault_events_at_least(&mut log, &f.client_id, "vault.record.read", 4).await;
    let disclosed = |id: &str| {
        reads
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.disclosed_fields.clone())
            .expect("the read is logged under the id the vault returned")
    };
    assert_eq!(disclosed(&number.audit_event_id), ["passport_number"]);
    assert_eq!(
        disclosed(&everything.audit_event_id),
        ["surname", "passport_number"]
    );
    assert_eq!(disclosed(&found.audit_event_id), ["email"]);
    let outcomes: Vec<(i32, usize)> = reads
        .iter()
        .map(|e| (e.outcome, e.disclosed_fields.len()))
        .collect();
    assert_eq!(
        outcomes.len(),
        4,
        "three reads and one refusal: {outcomes:?}"
    );
    assert!(outcomes.contains(&(Outcome::Denied as i32, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_read_mask_returns_only_the_named_fields_and_the_log_names_them() {
    a_read_mask_returns_only_the_named_fields_and_the_log_names_them(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_read_mask_returns_only_the_named_fields_and_the_log_names_them() {
    a_read_mask_returns_only_the_named_fields_and_the_log_names_them(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_client_data_is_read_only_for_a_purpose_by_those_the_decision_allows() {
    client_data_is_read_only_for_a_purpose_by_those_the_decision_allows(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_client_data_is_read_only_for_a_purpose_by_those_the_decision_allows() {
    client_data_is_read_only_for_a_purpose_by_those_the_decision_allows(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_only_retention_shreds_and_sealed_text_dies_with_its_scope_while_the_log_verifies() {
    only_retention_shreds_and_sealed_text_dies_with_its_scope_while_the_log_verifies(
        Backend::Sqlite,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_only_retention_shreds_and_sealed_text_dies_with_its_scope_while_the_log_verifies()
{
    only_retention_shreds_and_sealed_text_dies_with_its_scope_while_the_log_verifies(
        Backend::Postgres,
    )
    .await;
}

/// `confidant restore vault <args> --config <the sandbox's
/// configuration>`: exit code and output.
fn restore_vault(data: &SandboxData, args: &[&str]) -> (i32, String) {
    let mut all = vec!["vault"];
    all.extend_from_slice(args);
    common::restore_command(data, &SandboxSpec::of(&SUITE), &all)
}

/// The `result` of each line about `id` in the command's output.
fn results_for(out: &str, id: &str) -> Vec<String> {
    common::restore_results(out, id)
        .into_iter()
        .map(|(_, result)| result)
        .collect()
}

/// The export `from` with the event `event_id` rewritten to name `new_id`
/// as its resource, its leaf hash recomputed to match: a forger's copy.
fn forged_export(from: &std::path::Path, event_id: &str, new_id: &str) -> std::path::PathBuf {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use prost::Message as _;
    let mut lines = Vec::new();
    for line in std::fs::read_to_string(from).unwrap().lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] == "event" && v["event_id"] == event_id {
            let bytes = STANDARD.decode(v["event_bytes"].as_str().unwrap()).unwrap();
            let mut event = AuditEvent::decode(bytes.as_slice()).unwrap();
            event.resource.as_mut().unwrap().id = new_id.to_owned();
            let bytes = event.encode_to_vec();
            v["event_bytes"] = STANDARD.encode(&bytes).into();
            v["leaf_hash"] = hex::encode(confidant_audit::merkle::leaf_hash(&bytes)).into();
        }
        lines.push(v.to_string());
    }
    let to = from.with_extension("forged.jsonl");
    std::fs::write(&to, lines.join("\n") + "\n").unwrap();
    to
}

async fn shreds_made_after_a_backup_are_made_again_after_its_restore(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let (sandbox, f) = start_with_firm(&data, &SUITE).await;
    let mut app = vault(&data, &sandbox, "firm-app").await;
    let mut retention = vault(&data, &sandbox, "retention").await;
    let mut log = audit(&data, &sandbox).await;
    let partner = staff_token(&data, &f.partner, &["partner"]);
    let passport_record = stored_as(&mut app, &partner, passport(&f.client_id, &f.matter_id)).await;
    let email = stored_as(&mut app, &partner, contact(&f.client_id, &f.matter_id)).await;
    let kept = stored_as(&mut app, &partner, contact(&f.client_id, &f.matter_id)).await;
    let backup = common::back_up(&data, ServiceName::Vault).await;
    // After the backup, a record is corrected too.
    let kept_v2 = correct(
        &mut app,
        &partner,
        correction(
            &kept.id,
            vec![field("email", pb::FieldType::Email, "okafor@example.org")],
            &[],
        ),
    )
    .await
    .unwrap();

    // After the backup, retention shreds the passport's scope and the
    // e-mail record; the other contact record stays.
    let order = uuid::Uuid::now_v7().to_string();
    retention
        .shred_scope(pb::ShredScopeRequest {
            scope_id: passport_record.scope_id.clone(),
            order_id: order.clone(),
            pending_window: None,
        })
        .await
        .unwrap();
    retention
        .shred_record(pb::ShredRecordRequest {
            record_id: email.id.clone(),
            order_id: order.clone(),
        })
        .await
        .unwrap();
    let read = |app: &Vault, id: &str| {
        let (mut app, request) = (app.clone(), as_staff(&partner, get(id, "")));
        async move { app.get_record(request).await.map(|r| r.into_inner()) }
    };
    for id in [&passport_record.id, &email.id] {
        let gone = read(&app, id).await.unwrap_err();
        assert_eq!(common::error_reason(&gone), "shredded");
    }

    // The log, exported once a signed checkpoint covers both shreds.
    let scope_shred = vault_events_at_least(&mut log, &f.client_id, "vault.scope.shredded", 1)
        .await
        .remove(0);
    let record_shred = vault_events_at_least(&mut log, &f.client_id, "vault.record.shredded", 1)
        .await
        .remove(0);
    let corrected = vault_events_at_least(&mut log, &f.client_id, "vault.record.corrected", 1)
        .await
        .remove(0);
    let mut last = 0;
    for event_id in [&scope_shred.id, &record_shred.id, &corrected.id] {
        let logged = log
            .list_events(ListEventsRequest {
                client_id: f.client_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        let at = logged
            .iter()
            .find(|e| e.event.as_ref().is_some_and(|e| &e.id == event_id))
            .expect("the shred is in the log")
            .leaf_index;
        last = last.max(at);
    }
    let (export_arg, key) = common::exported_log(&data, &sandbox, &log, last).await;
    let export = std::path::PathBuf::from(&export_arg);
    sandbox.stop().await;

    // The vault's database is restored: the shredded data is back, its
    // keys unwrapped by the KMS as before.
    common::restore(&data, ServiceName::Vault, &backup).await;
    let sandbox = Sandbox::start(&data, SandboxSpec::of(&SUITE)).await;
    let app = vault(&data, &sandbox, "firm-app").await;
    let mut log = audit(&data, &sandbox).await;
    let back = read(&app, &passport_record.id).await.unwrap();
    assert!(values(&back).iter().any(|(_, v, _)| v == "P1234567"));
    read(&app, &email.id).await.unwrap();

    // A forged export (the e-mail's shred turned into one of the kept
    // record, leaf hash and all) does not verify, and changes nothing.
    let forged = forged_export(&export, &record_shred.id, &kept.id);
    let forged_arg = forged.display().to_string();
    let (code, out) = restore_vault(&data, &["--log", &forged_arg, "--public-key", &key]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("does not verify"), "{out}");
    // So does the real export under another key.
    let other_key = common::other_log_key();
    let (code, out) = restore_vault(&data, &["--log", &export_arg, "--public-key", &other_key]);
    assert_ne!(code, 0, "{out}");
    // A dry run says what it would do, and does nothing.
    let (code, out) = restore_vault(
        &data,
        &["--log", &export_arg, "--public-key", &key, "--dry-run"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        results_for(&out, &passport_record.scope_id),
        ["would_reapply"]
    );
    assert_eq!(results_for(&out, &email.id), ["would_reapply"]);
    // The correction cannot be made again: its version is lost, and the
    // corrected one is current again.
    assert_eq!(results_for(&out, &kept_v2.id), ["lost"]);
    assert!(out.contains("\"corrections_lost\":1"), "{out}");
    assert!(
        out.contains("note: 1 corrections made after the backup are lost"),
        "{out}"
    );
    for id in [&passport_record.id, &email.id, &kept.id] {
        read(&app, id).await.unwrap();
    }

    // The real run destroys both keys again, and only those.
    let (code, out) = restore_vault(&data, &["--log", &export_arg, "--public-key", &key]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(results_for(&out, &passport_record.scope_id), ["reapplied"]);
    assert_eq!(results_for(&out, &email.id), ["reapplied"]);
    assert!(results_for(&out, &kept.id).is_empty(), "{out}");
    for id in [&passport_record.id, &email.id] {
        let gone = read(&app, id).await.unwrap_err();
        assert_eq!(gone.code(), tonic::Code::FailedPrecondition);
        assert_eq!(common::error_reason(&gone), "shredded");
    }
    let kept_read = read(&app, &kept.id).await.unwrap();
    assert!(
        values(&kept_read)
            .iter()
            .any(|(_, v, _)| v == "a.okafor@example.org")
    );
    // The restored rows hold no key, and the tombstone names the logged
    // shred, as if the restore had never happened.
    let db = common::service_db(&data, ServiceName::Vault).await;
    let (scope_key, scope_event): (Option<Vec<u8>>, Option<String>) = db
        .fetch_optional(
            "SELECT wrapped_key, shred_event_id FROM vault_scopes WHERE id = $1",
            vec![confidant_runtime::portable::Value::Uuid(
                passport_record.scope_id.parse().unwrap(),
            )],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (scope_key, scope_event),
        (None, Some(scope_shred.id.clone()))
    );
    let (record_key,): (Option<Vec<u8>>,) = db
        .fetch_optional(
            "SELECT wrapped_key FROM vault_records WHERE id = $1",
            vec![confidant_runtime::portable::Value::Uuid(
                email.id.parse().unwrap(),
            )],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record_key, None);
    db.close().await;

    // A second run finds nothing left to do.
    let (code, out) = restore_vault(&data, &["--log", &export_arg, "--public-key", &key]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        results_for(&out, &passport_record.scope_id),
        ["already_applied"]
    );
    assert_eq!(results_for(&out, &email.id), ["already_applied"]);

    // Each reapplication is in the log, naming the destruction it repeats.
    let reapplied = vault_events_at_least(&mut log, &f.client_id, "vault.shred.reapplied", 2).await;
    let mut named: Vec<(String, String)> = reapplied
        .iter()
        .map(|e| (e.resource.clone().unwrap_or_default().id, e.reason.clone()))
        .collect();
    named.sort();
    let mut expected = vec![
        (
            passport_record.scope_id.clone(),
            format!("event-{}", scope_shred.id),
        ),
        (email.id.clone(), format!("event-{}", record_shred.id)),
    ];
    expected.sort();
    assert_eq!(named, expected);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_shreds_made_after_a_backup_are_made_again_after_its_restore() {
    shreds_made_after_a_backup_are_made_again_after_its_restore(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_shreds_made_after_a_backup_are_made_again_after_its_restore() {
    shreds_made_after_a_backup_are_made_again_after_its_restore(Backend::Postgres).await;
}

/// Stages the destruction of `scope_id` for `seconds`; returns when the key
/// is due to go.
async fn staged(retention: &mut Vault, scope_id: &str, seconds: i64) -> prost_types::Timestamp {
    retention
        .shred_scope(pb::ShredScopeRequest {
            scope_id: scope_id.to_owned(),
            order_id: uuid::Uuid::now_v7().to_string(),
            pending_window: Some(prost_types::Duration { seconds, nanos: 0 }),
        })
        .await
        .unwrap()
        .into_inner()
        .scope
        .unwrap()
        .destroy_time
        .unwrap()
}

async fn pending_destructions_and_returns_made_after_a_backup_are_made_again_after_its_restore(
    backend: Backend,
) {
    let data = SandboxData::new(backend).await;
    // The vault looks for due destructions every second.
    let spec = SandboxSpec {
        settings: vec![("vault", "destruction_check_seconds", 1.into())],
        ..SandboxSpec::of(&SUITE)
    };
    let sandbox = Sandbox::start(&data, spec.clone()).await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let f = firm(&mut admin).await;
    let mut intake = vault(&data, &sandbox, "intake").await;
    let mut retention = vault(&data, &sandbox, "retention").await;
    let noter = intake.clone();
    let note = |matter: &'static str, category| {
        let (mut intake, client, matter) = (
            noter.clone(),
            f.client_id.clone(),
            if matter.is_empty() {
                String::new()
            } else {
                f.matter_id.clone()
            },
        );
        async move { common::store_note(&mut intake, &client, &matter, category).await }
    };
    // Staged before the backup, cancelled after it.
    let kept = note("matter", pb::DataCategory::MatterFile).await;
    // Staged after the backup, still pending at the end of the log.
    let staged_later = note("", pb::DataCategory::ContactDetails).await;
    // Staged before the backup, suspended by a hold placed after it.
    let suspended = note("", pb::DataCategory::Financial).await;
    // Originals returned to the client after the backup.
    let returned = common::store_record(
        &mut intake,
        &f.client_id,
        &f.matter_id,
        pb::DataCategory::IdentityDocument,
        true,
    )
    .await
    .scope_id;
    // Originals returned before the backup, and a new one stored after
    // that return: it stays an original.
    let newer = common::store_record(
        &mut intake,
        &f.client_id,
        "",
        pb::DataCategory::IdentityDocument,
        true,
    )
    .await
    .scope_id;
    let releaser = retention.clone();
    let release = |scope_id: &str| {
        let (mut retention, scope_id) = (releaser.clone(), scope_id.to_owned());
        async move {
            retention
                .release_originals(pb::ReleaseOriginalsRequest {
                    scope_id,
                    return_id: uuid::Uuid::now_v7().to_string(),
                })
                .await
                .unwrap()
                .into_inner()
                .released
        }
    };
    assert_eq!(release(&newer).await, 1);
    common::store_record(
        &mut intake,
        &f.client_id,
        "",
        pb::DataCategory::IdentityDocument,
        true,
    )
    .await;
    let kept_due = staged(&mut retention, &kept, 8).await;
    staged(&mut retention, &suspended, 3600).await;
    let backup = common::back_up(&data, ServiceName::Vault).await;

    retention
        .cancel_scope_destruction(pb::CancelScopeDestructionRequest {
            scope_id: kept.clone(),
            reason: "the client reopened the matter".into(),
        })
        .await
        .unwrap();
    let later_due = staged(&mut retention, &staged_later, 3600).await;
    // A hold that names another scope leaves that destruction pending; one
    // on the financial records suspends theirs.
    retention
        .place_hold(pb::PlaceHoldRequest {
            hold_id: uuid::Uuid::now_v7().to_string(),
            client_id: f.client_id.clone(),
            matter_id: String::new(),
            category: 0,
            scope_ids: vec![returned.clone()],
        })
        .await
        .unwrap();
    let hold_id = uuid::Uuid::now_v7().to_string();
    retention
        .place_hold(pb::PlaceHoldRequest {
            hold_id: hold_id.clone(),
            client_id: f.client_id.clone(),
            matter_id: String::new(),
            category: pb::DataCategory::Financial as i32,
            scope_ids: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(release(&returned).await, 1);
    let before = common::vault_scopes(&retention, &f.client_id).await;
    assert_eq!(before[&kept].state(), pb::ScopeState::Active);
    assert_eq!(before[&suspended].state(), pb::ScopeState::Active);
    assert_eq!(
        before[&staged_later].state(),
        pb::ScopeState::PendingDestruction
    );

    // The log, exported once a signed checkpoint covers all of it. It
    // says which hold suspended which destruction.
    let log = audit(&data, &sandbox).await;
    let mut log_events = log.clone();
    let suspensions = vault_events_at_least(
        &mut log_events,
        &f.client_id,
        "vault.scope.destruction_suspended",
        1,
    )
    .await;
    assert_eq!(
        suspensions
            .iter()
            .map(|e| (e.resource.clone().unwrap_or_default().id, e.reason.clone()))
            .collect::<Vec<_>>(),
        [(suspended.clone(), format!("hold-{hold_id}"))]
    );
    vault_events_at_least(&mut log_events, &f.client_id, "vault.originals.returned", 2).await;
    let last = log
        .clone()
        .list_events(ListEventsRequest {
            client_id: f.client_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .iter()
        .map(|e| e.leaf_index)
        .max()
        .unwrap();
    let (export_arg, key) = common::exported_log(&data, &sandbox, &log, last).await;
    sandbox.stop().await;

    // The vault's database is restored, and the command runs before the
    // vault starts on it.
    common::restore(&data, ServiceName::Vault, &backup).await;
    let (code, out) = restore_vault(&data, &["--log", &export_arg, "--public-key", &key]);
    assert_eq!(code, 0, "{out}");
    let change_of = |id: &str| common::restore_results(&out, id);
    let pair = |change: &str, result: &str| vec![(change.to_owned(), result.to_owned())];
    assert_eq!(change_of(&kept), pair("cancel", "reapplied"), "{out}");
    assert_eq!(change_of(&staged_later), pair("schedule", "reapplied"));
    assert_eq!(change_of(&suspended), pair("cancel", "reapplied"));
    assert_eq!(change_of(&returned), pair("return_originals", "reapplied"));
    assert_eq!(
        change_of(&newer),
        pair("return_originals", "already_applied")
    );

    // The vault starts: the destruction cancelled after the backup is not
    // carried out, though its window ended while the vault was down.
    let sandbox = Sandbox::start(&data, spec).await;
    let retention = vault(&data, &sandbox, "retention").await;
    let wait = kept_due.seconds + 3 - chrono::Utc::now().timestamp();
    if wait > 0 {
        tokio::time::sleep(Duration::from_secs(wait.unsigned_abs())).await;
    }
    let after = common::vault_scopes(&retention, &f.client_id).await;
    assert_eq!(after[&kept].state(), pb::ScopeState::Active);
    assert!(!after[&kept].kms_key_id.is_empty());
    // The destruction staged after the backup is pending again, due when
    // it was.
    assert_eq!(
        after[&staged_later].state(),
        pb::ScopeState::PendingDestruction
    );
    assert_eq!(
        after[&staged_later]
            .destroy_time
            .as_ref()
            .map(|t| t.seconds),
        Some(later_due.seconds)
    );
    assert_eq!(after[&suspended].state(), pb::ScopeState::Active);
    assert_eq!(after[&returned].original_count, 0);
    assert_eq!(after[&newer].original_count, 1);

    // Each reapplication is in the log; a second run finds nothing to do.
    let mut log = audit(&data, &sandbox).await;
    vault_events_at_least(&mut log, &f.client_id, "vault.cancellation.reapplied", 2).await;
    vault_events_at_least(&mut log, &f.client_id, "vault.schedule.reapplied", 1).await;
    vault_events_at_least(
        &mut log,
        &f.client_id,
        "vault.originals_return.reapplied",
        1,
    )
    .await;
    sandbox.stop().await;
    let (code, out) = restore_vault(&data, &["--log", &export_arg, "--public-key", &key]);
    assert_eq!(code, 0, "{out}");
    for id in [&kept, &staged_later, &suspended, &returned, &newer] {
        let again = common::restore_results(&out, id);
        assert!(
            !again.is_empty() && again.iter().all(|(_, r)| r == "already_applied"),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pending_destructions_and_returns_made_after_a_backup_are_made_again_after_its_restore()
 {
    pending_destructions_and_returns_made_after_a_backup_are_made_again_after_its_restore(
        Backend::Sqlite,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pending_destructions_and_returns_made_after_a_backup_are_made_again_after_its_restore()
 {
    pending_destructions_and_returns_made_after_a_backup_are_made_again_after_its_restore(
        Backend::Postgres,
    )
    .await;
}

fn correction(
    record_id: &str,
    fields: Vec<pb::Field>,
    remove: &[&str],
) -> pb::CorrectRecordRequest {
    pb::CorrectRecordRequest {
        record_id: record_id.into(),
        fields,
        remove_fields: remove.iter().map(|s| (*s).to_owned()).collect(),
        reason: "client wrote on 3 March: name misspelt at intake".into(),
        request_id: String::new(),
    }
}

/// CorrectRecord as the staff member whose token is `token`: the new
/// version's metadata, or the refusal.
async fn correct(
    app: &mut Vault,
    token: &str,
    request: pb::CorrectRecordRequest,
) -> Result<pb::RecordMetadata, tonic::Status> {
    app.correct_record(as_staff(token, request))
        .await
        .map(|r| r.into_inner().record.expect("the new version"))
}

/// UploadDocument as the staff member whose token is `token`.
async fn upload(
    app: &mut Vault,
    token: &str,
    messages: Vec<pb::UploadDocumentRequest>,
) -> Result<pb::RecordMetadata, tonic::Status> {
    app.upload_document(as_staff(token, futures::stream::iter(messages)))
        .await
        .map(|r| r.into_inner().record.expect("the document"))
}

async fn listed(app: &mut Vault, token: &str, client_id: &str, all: bool) -> Vec<(String, i32)> {
    app.list_records(as_staff(
        token,
        pb::ListRecordsRequest {
            client_id: client_id.into(),
            include_superseded: all,
            ..Default::default()
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .records
    .into_iter()
    .map(|r| (r.id, r.version))
    .collect()
}

async fn corrections_store_a_new_version_and_keep_the_old_one_as_history(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let (sandbox, f) = start_with_firm(&data, &SUITE).await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let officer = cleared(&mut admin, "security@firm.example", "security_officer").await;
    let mut app = vault(&data, &sandbox, "firm-app").await;
    let partner = staff_token(&data, &f.partner, &["partner"]);
    let paralegal = staff_token(&data, &f.paralegal, &["paralegal"]);
    let outsider = staff_token(&data, &f.outsider, &["associate"]);
    let first = stored_as(&mut app, &partner, passport(&f.client_id, &f.matter_id)).await;
    let other = stored_as(&mut app, &partner, contact(&f.client_id, &f.matter_id)).await;

    // The paralegal, who sees passport numbers masked, corrects the surname:
    // the number is carried over intact inside the vault.
    let second = correct(
        &mut app,
        &paralegal,
        correction(
            &first.id,
            vec![field("surname", pb::FieldType::Text, "Okafor-Bello")],
            &[],
        ),
    )
    .await
    .unwrap();
    assert_ne!(second.id, first.id);
    assert_eq!(
        (
            second.version,
            second.supersedes.as_str(),
            second.scope_id.as_str()
        ),
        (2, first.id.as_str(), first.scope_id.as_str())
    );
    assert_eq!(second.field_names, ["surname", "passport_number"]);
    assert_eq!(second.created_by, f.paralegal);
    let now = app
        .get_record(as_staff(&partner, get(&second.id, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        values(&now),
        [
            ("surname".into(), "Okafor-Bello".into(), false),
            ("passport_number".into(), "P1234567".into(), false)
        ]
    );
    // The corrected version stays readable as history, and says what
    // replaced it.
    let then = app
        .get_record(as_staff(&partner, get(&first.id, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(values(&then)[0], ("surname".into(), "Okafor".into(), false));
    let then = then.record.unwrap();
    assert_eq!(
        (then.version, then.superseded_by.as_str()),
        (1, second.id.as_str())
    );
    assert!(then.supersede_time.is_some());
    assert_eq!(then.state, pb::RecordState::Active as i32);

    // Only the current version can be corrected; the refusal names it.
    let stale = correct(
        &mut app,
        &partner,
        correction(
            &first.id,
            vec![field("surname", pb::FieldType::Text, "Bello")],
            &[],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
    assert_eq!(common::error_reason(&stale), "superseded");
    {
        use tonic_types::StatusExt;
        let info = stale.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.metadata["superseded_by"], second.id);
    }

    // Bad corrections name every broken rule and store nothing.
    let mut bad = correction(
        &second.id,
        vec![
            field("passport_number", pb::FieldType::NationalId, "P7654321"),
            field("Bad Name", pb::FieldType::Text, "x"),
        ],
        &["passport_number", "passport_number"],
    );
    bad.reason = "  ".into();
    let err = correct(&mut app, &partner, bad).await.unwrap_err();
    assert_eq!(
        common::violated_fields(&err),
        [
            "fields[1].name",
            "remove_fields[0]",
            "remove_fields[1]",
            "reason"
        ]
    );
    let err = correct(
        &mut app,
        &partner,
        correction(&second.id, Vec::new(), &["middle_name"]),
    )
    .await
    .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["remove_fields[0]"]);
    let err = correct(
        &mut app,
        &partner,
        correction(&second.id, Vec::new(), &["surname", "passport_number"]),
    )
    .await
    .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["remove_fields"]);
    // Someone the decision does not allow learns nothing and changes nothing.
    let err = correct(
        &mut app,
        &outsider,
        correction(&second.id, Vec::new(), &["no_such_field"]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // Nor does an application without a staff token, whether the record
    // exists or not.
    for id in [second.id.clone(), uuid::Uuid::now_v7().to_string()] {
        let err = app
            .correct_record(correction(&id, Vec::new(), &["surname"]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    assert_eq!(
        listed(&mut app, &partner, &f.client_id, true).await,
        [
            (second.id.clone(), 2),
            (other.id.clone(), 1),
            (first.id.clone(), 1)
        ]
    );

    // Fields are removed and added; a retry with the same request id returns
    // the version the first call stored.
    let mut third = correction(
        &second.id,
        vec![field("expiry_date", pb::FieldType::Date, "2031-11-30")],
        &["surname"],
    );
    third.request_id = uuid::Uuid::now_v7().to_string();
    let stored = correct(&mut app, &partner, third.clone()).await.unwrap();
    let again = correct(&mut app, &partner, third).await.unwrap();
    assert_eq!(again.id, stored.id);
    assert_eq!(stored.version, 3);
    assert_eq!(stored.field_names, ["passport_number", "expiry_date"]);

    // Two corrections of the same version at once: one wins, the other is
    // refused, and the history never forks.
    let race = |name: &'static str| {
        let mut app = app.clone();
        let token = partner.clone();
        let id = stored.id.clone();
        async move {
            let note = vec![field("note", pb::FieldType::Text, name)];
            correct(&mut app, &token, correction(&id, note, &[])).await
        }
    };
    let (a, b) = tokio::join!(race("a"), race("b"));
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        other => panic!("exactly one correction wins: {other:?}"),
    };
    assert_eq!(lost.code(), tonic::Code::FailedPrecondition);
    assert_eq!(won.version, 4);
    // Listings show current versions unless asked for the history.
    assert_eq!(
        listed(&mut app, &partner, &f.client_id, false).await,
        [(won.id.clone(), 4), (other.id.clone(), 1)]
    );
    assert_eq!(
        listed(&mut app, &partner, &f.client_id, true).await.len(),
        5
    );

    // A document is corrected by uploading its new version, which names the
    // one it replaces; the old one stays downloadable as history.
    let letter = |content: &'static [u8], supersedes: &str, reason: &str| {
        common::upload_messages(
            pb::DocumentHeader {
                client_id: f.client_id.clone(),
                matter_id: f.matter_id.clone(),
                category: pb::DataCategory::MatterFile as i32,
                filename: "engagement letter.pdf".into(),
                media_type: "application/pdf".into(),
                size_bytes: content.len() as i64,
                supersedes: supersedes.into(),
                reason: reason.into(),
                ..Default::default()
            },
            content,
        )
    };
    let doc = upload(&mut app, &partner, letter(b"unsigned", "", ""))
        .await
        .unwrap();
    let err = correct(
        &mut app,
        &partner,
        correction(
            &doc.id,
            vec![field("filename", pb::FieldType::Text, "x.pdf")],
            &[],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["record_id"]);
    let signed = upload(
        &mut app,
        &partner,
        letter(
            b"signed by the client",
            &doc.id,
            "the signed copy came back",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        (signed.version, signed.supersedes.as_str()),
        (2, doc.id.as_str())
    );
    let download = |id: &str| {
        let mut app = app.clone();
        let token = partner.clone();
        let id = id.to_owned();
        async move {
            let mut stream = app
                .download_document(as_staff(
                    &token,
                    pb::DownloadDocumentRequest {
                        record_id: id,
                        purpose: pb::Purpose::LegalAdvice as i32,
                        justification: String::new(),
                    },
                ))
                .await?
                .into_inner();
            let mut bytes = Vec::new();
            let mut head = None;
            while let Some(message) = stream.message().await? {
                match message.part {
                    Some(pb::download_document_response::Part::Chunk(chunk)) => bytes.extend(chunk),
                    Some(pb::download_document_response::Part::Info(i)) => head = i.record,
                    None => {}
                }
            }
            Ok::<_, tonic::Status>((head.unwrap(), bytes))
        }
    };
    let (old_letter, old_bytes) = download(&doc.id).await.unwrap();
    assert_eq!(old_bytes, b"unsigned");
    assert_eq!(old_letter.superseded_by, signed.id);
    assert_eq!(
        download(&signed.id).await.unwrap().1,
        b"signed by the client"
    );
    // Only the current version is replaced, by a document of its own scope,
    // for a reason.
    let err = upload(&mut app, &partner, letter(b"again", &doc.id, "again"))
        .await
        .unwrap_err();
    assert_eq!(common::error_reason(&err), "superseded");
    let err = upload(&mut app, &partner, letter(b"again", &other.id, "wrong one"))
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["header.supersedes"]);
    let err = upload(&mut app, &partner, letter(b"again", &signed.id, " "))
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["header.reason"]);

    // Each correction is in the log, naming the version it replaced, its
    // reason sealed under the scope's key; the refused ones left nothing.
    let mut log = audit(&data, &sandbox).await;
    let mut events =
        vault_events_at_least(&mut log, &f.client_id, "vault.record.corrected", 4).await;
    events.reverse(); // oldest first
    let replaced: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.resource.clone().unwrap().id, e.reason.clone()))
        .collect();
    assert_eq!(
        replaced,
        [
            (second.id.clone(), format!("supersedes-{}", first.id)),
            (stored.id.clone(), format!("supersedes-{}", second.id)),
            (won.id.clone(), format!("supersedes-{}", stored.id)),
            (signed.id.clone(), format!("supersedes-{}", doc.id)),
        ]
    );
    assert_eq!(events[0].actor.clone().unwrap().id, f.paralegal);
    // They name the fields each set or removed, never a value.
    let changed: Vec<Vec<String>> = events.iter().map(|e| e.changed_fields.clone()).collect();
    assert_eq!(
        changed,
        [
            vec!["surname".to_owned()],
            vec!["expiry_date".to_owned(), "surname".to_owned()],
            vec!["note".to_owned()],
            Vec::new(),
        ]
    );
    let officer_token = staff_token(&data, &officer, &["security_officer"]);
    let reason = app
        .open_sealed_text(as_staff(
            &officer_token,
            pb::OpenSealedTextRequest {
                sealed_text: events[0].sealed_text.clone(),
                scope_id: events[0].sealed_scope_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .text;
    assert_eq!(reason, "client wrote on 3 March: name misspelt at intake");

    // Shredding the record destroys every version of it: no copy stays
    // readable in its history, and each destruction is logged.
    let mut retention = vault(&data, &sandbox, "retention").await;
    retention
        .shred_record(pb::ShredRecordRequest {
            record_id: stored.id.clone(),
            order_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap();
    for id in [&first.id, &second.id, &stored.id, &won.id] {
        let err = app
            .get_record(as_staff(&partner, get(id, "")))
            .await
            .unwrap_err();
        assert_eq!(common::error_reason(&err), "shredded", "version {id}");
    }
    app.get_record(as_staff(&partner, get(&other.id, "")))
        .await
        .expect("another record is untouched");
    let err = correct(
        &mut app,
        &partner,
        correction(&won.id, Vec::new(), &["note"]),
    )
    .await
    .unwrap_err();
    assert_eq!(common::error_reason(&err), "shredded");
    let shredded = vault_events_at_least(&mut log, &f.client_id, "vault.record.shredded", 4).await;
    let mut ids: Vec<String> = shredded
        .iter()
        .map(|e| e.resource.clone().unwrap().id)
        .collect();
    ids.sort();
    let mut versions = vec![first.id, second.id, stored.id, won.id];
    versions.sort();
    assert_eq!(ids, versions);
    // In storage, no version keeps a record key: its fields can never be
    // opened again.
    let db = common::service_db(&data, ServiceName::Vault).await;
    for id in &versions {
        let (key,): (Option<Vec<u8>>,) = db
            .fetch_optional(
                "SELECT wrapped_key FROM vault_records WHERE id = $1",
                vec![confidant_runtime::portable::Value::Uuid(
                    id.parse().unwrap(),
                )],
            )
            .await
            .unwrap()
            .expect("the version's tombstone stays");
        assert_eq!(key, None, "version {id}");
    }
    db.close().await;

    // A correction racing a shred never leaves a version readable after
    // the shred succeeded.
    for round in 0..8 {
        let record = stored_as(&mut app, &partner, contact(&f.client_id, &f.matter_id)).await;
        let (mut writer, mut shredder) = (app.clone(), retention.clone());
        let email = vec![field("email", pb::FieldType::Email, "new@example.org")];
        let (corrected, shred) = tokio::join!(
            correct(&mut writer, &partner, correction(&record.id, email, &[])),
            shredder.shred_record(pb::ShredRecordRequest {
                record_id: record.id.clone(),
                order_id: uuid::Uuid::now_v7().to_string(),
            })
        );
        shred.expect("the shred goes through");
        let mut versions = vec![record.id.clone()];
        versions.extend(corrected.ok().map(|v| v.id));
        for id in &versions {
            let err = app
                .get_record(as_staff(&partner, get(id, "")))
                .await
                .unwrap_err();
            assert_eq!(
                common::error_reason(&err),
                "shredded",
                "round {round}, {id}"
            );
        }
    }

    // A corrected original stays an original, and no version of it is
    // shredded.
    let will = stored_as(
        &mut app,
        &partner,
        pb::NewRecord {
            original: true,
            ..contact(&f.client_id, &f.matter_id)
        },
    )
    .await;
    let corrected = correct(
        &mut app,
        &partner,
        correction(
            &will.id,
            vec![field("email", pb::FieldType::Email, "okafor@example.org")],
            &[],
        ),
    )
    .await
    .unwrap();
    assert!(corrected.original);
    for id in [&will.id, &corrected.id] {
        let err = retention
            .shred_record(pb::ShredRecordRequest {
                record_id: id.clone(),
                order_id: uuid::Uuid::now_v7().to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(common::error_reason(&err), "originals", "version {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_corrections_store_a_new_version_and_keep_the_old_one_as_history() {
    corrections_store_a_new_version_and_keep_the_old_one_as_history(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_corrections_store_a_new_version_and_keep_the_old_one_as_history() {
    corrections_store_a_new_version_and_keep_the_old_one_as_history(Backend::Postgres).await;
}
