//! The retention service through its gRPC API with identity, vault and audit
//! beside it, on SQLite and on PostgreSQL with Redis and the KMS emulator:
//! policies and their versions, legal triggers, the scope registry and the
//! due report, and legal holds that the vault enforces, released only by two
//! different approvers.

mod common;

use std::time::Duration;

use common::directory::{
    as_staff, assign, cleared, new_client, new_matter, new_matter_in, staff_token,
};
use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec};
use confidant_proto::audit::v1::ListEventsRequest;
use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
use confidant_proto::identity::v1 as identity_pb;
use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_proto::retention::v1 as pb;
use confidant_proto::retention::v1::retention_service_client::RetentionServiceClient;
use confidant_proto::vault::v1 as vault_pb;
use confidant_proto::vault::v1::vault_service_client::VaultServiceClient;
use confidant_runtime::ServiceName;
use confidant_runtime::client::PeerChannel;
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Backend;

use common::channel;

fn rules(
    category: vault_pb::DataCategory,
    period: (i32, i32, i32),
    trigger: pb::Trigger,
    action: pb::DisposalAction,
) -> pb::PolicyRules {
    pb::PolicyRules {
        category: category as i32,
        period: Some(pb::Period {
            years: period.0,
            months: period.1,
            days: period.2,
        }),
        trigger: trigger as i32,
        trigger_event_name: String::new(),
        action: action as i32,
        client_notice_days: 0,
        basis: "firm schedule 2026, section 4".into(),
        practice_area: String::new(),
        jurisdiction: String::new(),
    }
}

/// CreatePolicy as the staff member whose token is `token`: the policy, or
/// the refusal.
async fn create_policy(
    retention: &mut RetentionServiceClient<PeerChannel>,
    token: &str,
    rules: pb::PolicyRules,
) -> Result<pb::Policy, tonic::Status> {
    retention
        .create_policy(as_staff(
            token,
            pb::CreatePolicyRequest { rules: Some(rules) },
        ))
        .await
        .map(|r| r.into_inner().policy.expect("the policy"))
}

/// Policies under which the scopes of each category fall due at once, for
/// its action; then the scope registry synced.
async fn due_at_once(
    retention: &mut RetentionServiceClient<PeerChannel>,
    token: &str,
    policies: &[(vault_pb::DataCategory, pb::DisposalAction)],
) {
    for (category, action) in policies {
        create_policy(
            retention,
            token,
            rules(*category, (0, 0, 0), pb::Trigger::Creation, *action),
        )
        .await
        .unwrap();
    }
    retention
        .sync_scopes(as_staff(token, pb::SyncScopesRequest {}))
        .await
        .unwrap();
}

/// The disposal batches waiting for approval (one page).
async fn awaiting_approval(
    retention: &RetentionServiceClient<PeerChannel>,
    token: &str,
) -> Vec<pb::DisposalBatch> {
    retention
        .clone()
        .list_disposal_batches(as_staff(
            token,
            pb::ListDisposalBatchesRequest {
                state: pb::BatchState::AwaitingApproval as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .batches
}

/// Runs a sweep as the staff member whose token is `token`.
async fn run_sweep(
    retention: &RetentionServiceClient<PeerChannel>,
    token: &str,
) -> pb::RunSweepResponse {
    retention
        .clone()
        .run_sweep(as_staff(token, pb::RunSweepRequest {}))
        .await
        .unwrap()
        .into_inner()
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    common::directory::ts(t)
}

async fn report(
    retention: &mut RetentionServiceClient<PeerChannel>,
    token: &str,
    days: i32,
) -> Vec<pb::DueGroup> {
    retention
        .get_due_report(as_staff(
            token,
            pb::GetDueReportRequest { within_days: days },
        ))
        .await
        .unwrap()
        .into_inner()
        .groups
}

async fn policies_triggers_and_holds_decide_what_falls_due(backend: Backend) {
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
    let matter_id = new_matter(&mut admin, &client_id, Some(&partner), "conveyancing").await;
    let manager = cleared(&mut admin, "records@firm.example", "records_manager").await;
    let second_manager = cleared(&mut admin, "records2@firm.example", "records_manager").await;
    let associate = cleared(&mut admin, "associate@firm.example", "associate").await;
    assign(&mut admin, &matter_id, &associate).await;
    let manager_token = staff_token(&data, &manager, &["records_manager"]);
    let second_token = staff_token(&data, &second_manager, &["records_manager"]);
    let associate_token = staff_token(&data, &associate, &["associate"]);

    // Client data in two scopes: the matter file, and client-level contacts.
    let mut vault =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "intake").await);
    let mut scope_of = std::collections::HashMap::new();
    for (matter, category) in [
        (matter_id.as_str(), vault_pb::DataCategory::MatterFile),
        ("", vault_pb::DataCategory::ContactDetails),
    ] {
        let scope = common::store_note(&mut vault, &client_id, matter, category).await;
        scope_of.insert(category as i32, scope);
    }

    let mut retention = RetentionServiceClient::new(
        channel(&data, &sandbox, ServiceName::Retention, "firm-app").await,
    );

    // Bad rules are named field by field; only records managers manage policies.
    let err = create_policy(
        &mut retention,
        &manager_token,
        pb::PolicyRules {
            category: 99,
            period: Some(pb::Period {
                years: -6,
                months: 0,
                days: 0,
            }),
            trigger: 0,
            trigger_event_name: String::new(),
            action: pb::DisposalAction::Shred as i32,
            client_notice_days: 0,
            basis: String::new(),
            practice_area: String::new(),
            jurisdiction: "Narnia".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        common::violated_fields(&err),
        [
            "rules.category",
            "rules.period.years",
            "rules.trigger",
            "rules.basis",
            "rules.jurisdiction"
        ]
    );
    let refused = create_policy(
        &mut retention,
        &associate_token,
        rules(
            vault_pb::DataCategory::MatterFile,
            (6, 0, 0),
            pb::Trigger::MatterClosed,
            pb::DisposalAction::Review,
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let no_token = retention
        .list_policies(pb::ListPoliciesRequest {})
        .await
        .unwrap_err();
    assert_eq!(no_token.code(), tonic::Code::Unauthenticated);

    // Matter files: six years after the matter closes, then review.
    // Contact details: thirty days after they were collected, then shred.
    let matter_policy = create_policy(
        &mut retention,
        &manager_token,
        rules(
            vault_pb::DataCategory::MatterFile,
            (6, 0, 0),
            pb::Trigger::MatterClosed,
            pb::DisposalAction::Review,
        ),
    )
    .await
    .unwrap();
    assert_eq!(matter_policy.version, 1);
    create_policy(
        &mut retention,
        &manager_token,
        rules(
            vault_pb::DataCategory::ContactDetails,
            (0, 0, 30),
            pb::Trigger::Creation,
            pb::DisposalAction::Shred,
        ),
    )
    .await
    .unwrap();
    let twice = create_policy(
        &mut retention,
        &manager_token,
        rules(
            vault_pb::DataCategory::ContactDetails,
            (1, 0, 0),
            pb::Trigger::Creation,
            pb::DisposalAction::Shred,
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);

    let synced = retention
        .sync_scopes(as_staff(&manager_token, pb::SyncScopesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((synced.scopes_added, synced.scopes_known), (2, 2));

    // The contacts fall due in thirty days; the open matter's file never yet.
    let due = report(&mut retention, &manager_token, 60).await;
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(
        due[0].category,
        vault_pb::DataCategory::ContactDetails as i32
    );
    assert_eq!(due[0].action, pb::DisposalAction::Shred as i32);
    assert!(report(&mut retention, &manager_token, 20).await.is_empty());

    // The matter closed six years and ten days ago: its file is due now.
    let closed = chrono::Utc::now() - chrono::Duration::days(6 * 365 + 12);
    let changed = retention
        .record_trigger_event(as_staff(
            &manager_token,
            pb::RecordTriggerEventRequest {
                client_id: client_id.clone(),
                matter_id: matter_id.clone(),
                trigger: pb::Trigger::MatterClosed as i32,
                event_name: String::new(),
                occur_time: ts(closed),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.scopes_recomputed, 2);
    let due = report(&mut retention, &manager_token, 1).await;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].category, vault_pb::DataCategory::MatterFile as i32);
    assert_eq!(due[0].matter_id, matter_id);
    assert_eq!(due[0].action, pb::DisposalAction::Review as i32);
    assert!(!due[0].held);
    let future = retention
        .record_trigger_event(as_staff(
            &manager_token,
            pb::RecordTriggerEventRequest {
                client_id: client_id.clone(),
                matter_id: String::new(),
                trigger: pb::Trigger::MatterClosed as i32,
                event_name: String::new(),
                occur_time: ts(chrono::Utc::now() + chrono::Duration::days(3)),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        common::violated_fields(&future),
        ["matter_id", "occur_time"]
    );

    // Seven years instead: a new version, and the file is not due any more.
    let update = |version: i32| pb::UpdatePolicyRequest {
        policy_id: matter_policy.id.clone(),
        version,
        rules: Some(rules(
            vault_pb::DataCategory::MatterFile,
            (7, 0, 0),
            pb::Trigger::MatterClosed,
            pb::DisposalAction::Review,
        )),
    };
    let v2 = retention
        .update_policy(as_staff(&manager_token, update(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.policy.unwrap().version, 2);
    assert_eq!(v2.scopes_recomputed, 1);
    assert!(report(&mut retention, &manager_token, 1).await.is_empty());
    let stale = retention
        .update_policy(as_staff(&manager_token, update(1)))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);

    // A legal hold on the matter: the vault refuses to shred its scope, even
    // when asked directly by the retention service's own identity.
    let hold = retention
        .place_hold(as_staff(
            &manager_token,
            pb::PlaceHoldRequest {
                reason: "litigation: boundary dispute".into(),
                client_id: client_id.clone(),
                matter_id: matter_id.clone(),
                category: 0,
                scope_ids: Vec::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap();
    assert!(hold.in_vault);
    let mut vault_as_retention =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "retention").await);
    let shred = vault_pb::ShredScopeRequest {
        scope_id: scope_of[&(vault_pb::DataCategory::MatterFile as i32)].clone(),
        order_id: uuid::Uuid::now_v7().to_string(),
        pending_window: None,
    };
    let held = vault_as_retention
        .shred_scope(shred.clone())
        .await
        .unwrap_err();
    assert_eq!(common::error_reason(&held), "legal_hold");
    // The report shows it held (a year from now, under the new version).
    let due = report(&mut retention, &manager_token, 400).await;
    let file = due
        .iter()
        .find(|g| g.category == vault_pb::DataCategory::MatterFile as i32)
        .unwrap();
    assert!(file.held);

    // Release takes two different records managers.
    let approve = pb::ApproveHoldReleaseRequest {
        hold_id: hold.id.clone(),
    };
    let first = retention
        .approve_hold_release(as_staff(&manager_token, approve.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.approvals_needed, 1);
    assert!(first.hold.unwrap().release_time.is_none());
    // Those who may approve it too (holds.manage: the other records manager
    // and the partner) are e-mailed at once that it waits; the approver
    // and the associate are not.
    let release_notice = |address: &str| {
        common::mails_to(&data, address)
            .into_iter()
            .filter(|(subject, _)| subject == "Release of a legal hold waiting for your approval")
            .map(|(_, body)| body)
            .collect::<Vec<String>>()
    };
    common::eventually(
        Duration::from_secs(10),
        "the other approvers told",
        || async {
            !release_notice("records2@firm.example").is_empty()
                && !release_notice("partner@firm.example").is_empty()
        },
    )
    .await;
    for other in ["records2@firm.example", "partner@firm.example"] {
        let told = release_notice(other);
        assert_eq!(told.len(), 1, "{other}: {told:?}");
        assert!(told[0].contains(&hold.id), "{}", told[0]);
    }
    assert!(common::mails_to(&data, "records@firm.example").is_empty());
    assert!(common::mails_to(&data, "associate@firm.example").is_empty());
    let again = retention
        .approve_hold_release(as_staff(&manager_token, approve.clone()))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        vault_as_retention
            .shred_scope(shred.clone())
            .await
            .unwrap_err()
            .code(),
        tonic::Code::FailedPrecondition,
        "still held after one approval"
    );
    let released = retention
        .approve_hold_release(as_staff(&second_token, approve.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.approvals_needed, 0);
    assert!(released.hold.unwrap().release_time.is_some());
    // Released: nobody is told again.
    assert_eq!(release_notice("partner@firm.example").len(), 1);
    let after = retention
        .approve_hold_release(as_staff(&second_token, approve))
        .await
        .unwrap_err();
    assert_eq!(after.code(), tonic::Code::FailedPrecondition);
    let unknown = retention
        .approve_hold_release(as_staff(
            &manager_token,
            pb::ApproveHoldReleaseRequest {
                hold_id: uuid::Uuid::now_v7().to_string(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    vault_as_retention.shred_scope(shred).await.unwrap();
    let listed = retention
        .list_holds(as_staff(
            &manager_token,
            pb::ListHoldsRequest {
                client_id: client_id.clone(),
                include_released: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .holds;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].release_approvers,
        [manager.clone(), second_manager.clone()]
    );

    // A hold over a set of scopes covers exactly those: the contacts, not
    // the client's financial records stored since.
    let contacts = scope_of[&(vault_pb::DataCategory::ContactDetails as i32)].clone();
    let money = common::store_note(
        &mut vault,
        &client_id,
        "",
        vault_pb::DataCategory::Financial,
    )
    .await;
    let scoped = |ids: Vec<String>, matter: &str| pb::PlaceHoldRequest {
        reason: "regulator's request: contact records".into(),
        client_id: client_id.clone(),
        matter_id: matter.into(),
        category: 0,
        scope_ids: ids,
    };
    let mixed = retention
        .place_hold(as_staff(
            &manager_token,
            scoped(vec![contacts.clone(), "nope".into()], &matter_id),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        common::violated_fields(&mixed),
        ["scope_ids", "scope_ids[1]"]
    );
    let unsynced = retention
        .place_hold(as_staff(&manager_token, scoped(vec![money.clone()], "")))
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&unsynced), ["scope_ids[0]"]);
    let set_hold = retention
        .place_hold(as_staff(&manager_token, scoped(vec![contacts.clone()], "")))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap();
    assert!(set_hold.in_vault);
    assert_eq!(set_hold.scope_ids, std::slice::from_ref(&contacts));
    // The client's holds, released ones too, come in pages, each hold with
    // its scopes and its release's approvers; without released ones, the
    // live hold alone.
    let pages = common::check_pages(0, 1, |page_size, page_token| {
        let (mut retention, token, client_id) =
            (retention.clone(), manager_token.clone(), client_id.clone());
        async move {
            let r = retention
                .list_holds(as_staff(
                    &token,
                    pb::ListHoldsRequest {
                        client_id,
                        include_released: true,
                        page_size,
                        page_token,
                    },
                ))
                .await?
                .into_inner();
            Ok((r.holds, r.next_page_token))
        }
    })
    .await;
    assert_eq!(pages, 2);
    let live = retention
        .list_holds(as_staff(
            &manager_token,
            pb::ListHoldsRequest {
                client_id: client_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .holds;
    assert_eq!(live, std::slice::from_ref(&set_hold));
    let refused = vault_as_retention
        .shred_scope(vault_pb::ShredScopeRequest {
            scope_id: contacts.clone(),
            order_id: uuid::Uuid::now_v7().to_string(),
            pending_window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(common::error_reason(&refused), "legal_hold");
    vault_as_retention
        .shred_scope(vault_pb::ShredScopeRequest {
            scope_id: money,
            order_id: uuid::Uuid::now_v7().to_string(),
            pending_window: None,
        })
        .await
        .expect("a scope the hold does not name is not held");
    let due = report(&mut retention, &manager_token, 3650).await;
    let contact_group = due
        .iter()
        .find(|g| g.category == vault_pb::DataCategory::ContactDetails as i32)
        .unwrap();
    assert!(contact_group.held);

    // Identity tells retention when the matter closes: the file's seven
    // years now count from today.
    admin
        .close_matter(confidant_proto::identity::v1::CloseMatterRequest {
            matter_id: matter_id.clone(),
        })
        .await
        .unwrap();
    common::eventually(
        Duration::from_secs(10),
        "the closing to move the due date",
        || {
            let (mut retention, token) = (retention.clone(), manager_token.clone());
            async move {
                !report(&mut retention, &token, 400)
                    .await
                    .iter()
                    .any(|g| g.category == vault_pb::DataCategory::MatterFile as i32)
            }
        },
    )
    .await;

    // Every change is in the audit log.
    let log =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    common::eventually(
        Duration::from_secs(20),
        "retention events in the log",
        || {
            let mut log = log.clone();
            async move {
                let events = log
                    .list_events(ListEventsRequest {
                        source_service: "retention".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .events;
                let actions: std::collections::BTreeSet<String> = events
                    .into_iter()
                    .filter_map(|e| e.event.map(|e| e.action))
                    .collect();
                [
                    "retention.policy.created",
                    "retention.policy.updated",
                    "retention.trigger.recorded",
                    "retention.hold.placed",
                    "retention.hold.release_approved",
                    "retention.hold.released",
                ]
                .iter()
                .all(|a| actions.contains(*a))
            }
        },
    )
    .await;
    sandbox.stop().await;
}

/// The services a disposal test runs: identity, the vault, retention and
/// the audit log, with `settings` over the defaults.
fn disposal_spec(settings: Vec<(&'static str, &'static str, toml::Value)>) -> SandboxSpec {
    SandboxSpec {
        settings,
        ..SandboxSpec::of(&[
            ServiceName::Identity,
            ServiceName::Vault,
            ServiceName::Retention,
            ServiceName::Audit,
        ])
    }
}

/// A client with a matter, a records manager and the clients a disposal
/// test drives.
struct DisposalFirm {
    client_id: String,
    matter_id: String,
    /// The matter's partner.
    partner: String,
    manager: String,
    /// The records manager's access token.
    token: String,
    /// The vault, as intake (stores notes).
    vault: VaultServiceClient<PeerChannel>,
    /// Retention, as the firm's application.
    retention: RetentionServiceClient<PeerChannel>,
}

impl DisposalFirm {
    async fn new(data: &SandboxData, sandbox: &Sandbox) -> Self {
        let mut admin = common::identity_client(data, sandbox, "operator").await;
        let client_id = new_client(&mut admin).await;
        let partner = cleared(&mut admin, "partner@firm.example", "partner").await;
        let matter_id = new_matter(&mut admin, &client_id, Some(&partner), "probate").await;
        let manager = cleared(&mut admin, "records@firm.example", "records_manager").await;
        Self {
            token: staff_token(data, &manager, &["records_manager"]),
            client_id,
            matter_id,
            partner,
            manager,
            vault: VaultServiceClient::new(
                channel(data, sandbox, ServiceName::Vault, "intake").await,
            ),
            retention: RetentionServiceClient::new(
                channel(data, sandbox, ServiceName::Retention, "firm-app").await,
            ),
        }
    }

    /// Runs a sweep as the records manager.
    async fn sweep(&self) -> pb::RunSweepResponse {
        run_sweep(&self.retention, &self.token).await
    }
}

async fn due_scopes_are_shredded_through_approved_batches_and_certified(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(&data, disposal_spec(Vec::new())).await;
    let firm = DisposalFirm::new(&data, &sandbox).await;
    let (client_id, matter_id, manager, token) = (
        firm.client_id.clone(),
        firm.matter_id.clone(),
        firm.manager.clone(),
        firm.token.clone(),
    );
    let mut vault = firm.vault.clone();
    let file_scope = common::store_note(
        &mut vault,
        &client_id,
        &matter_id,
        vault_pb::DataCategory::MatterFile,
    )
    .await;
    common::store_note(
        &mut vault,
        &client_id,
        &matter_id,
        vault_pb::DataCategory::MatterFile,
    )
    .await;
    let contact_scope = common::store_note(
        &mut vault,
        &client_id,
        "",
        vault_pb::DataCategory::ContactDetails,
    )
    .await;
    let money_scope = common::store_note(
        &mut vault,
        &client_id,
        "",
        vault_pb::DataCategory::Financial,
    )
    .await;

    let mut retention = firm.retention.clone();
    // Everything is due at once: the matter file after review, the contacts
    // only once the client was told two weeks ahead, the financial records
    // at once — but a hold covers those.
    let mut contacts = rules(
        vault_pb::DataCategory::ContactDetails,
        (0, 0, 0),
        pb::Trigger::Creation,
        pb::DisposalAction::Shred,
    );
    contacts.client_notice_days = 14;
    for r in [
        rules(
            vault_pb::DataCategory::MatterFile,
            (0, 0, 0),
            pb::Trigger::Creation,
            pb::DisposalAction::Review,
        ),
        contacts,
        rules(
            vault_pb::DataCategory::Financial,
            (0, 0, 0),
            pb::Trigger::Creation,
            pb::DisposalAction::Shred,
        ),
    ] {
        create_policy(&mut retention, &token, r).await.unwrap();
    }
    retention
        .place_hold(as_staff(
            &token,
            pb::PlaceHoldRequest {
                reason: "tax investigation".into(),
                client_id: client_id.clone(),
                matter_id: String::new(),
                category: vault_pb::DataCategory::Financial as i32,
                scope_ids: Vec::new(),
            },
        ))
        .await
        .unwrap();
    retention
        .sync_scopes(as_staff(&token, pb::SyncScopesRequest {}))
        .await
        .unwrap();

    let sweep = |retention: &mut RetentionServiceClient<PeerChannel>| {
        let mut retention = retention.clone();
        let token = token.clone();
        async move {
            retention
                .run_sweep(as_staff(&token, pb::RunSweepRequest {}))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = sweep(&mut retention).await;
    assert!(first.ran);
    assert_eq!(first.batches_created, 1, "{first:?}");
    assert_eq!(first.awaiting_client_notice, 1);
    assert_eq!(first.scopes_shredded, 0);
    // The records manager is e-mailed that the batch waits for them.
    assert_eq!(first.staff_notices_sent, 1, "{first:?}");

    // The client was told three weeks ago: the contacts go at once.
    retention
        .record_trigger_event(as_staff(
            &token,
            pb::RecordTriggerEventRequest {
                client_id: client_id.clone(),
                matter_id: String::new(),
                trigger: pb::Trigger::NamedEvent as i32,
                event_name: "client_notice".into(),
                occur_time: ts(chrono::Utc::now() - chrono::Duration::days(21)),
            },
        ))
        .await
        .unwrap();
    let second = sweep(&mut retention).await;
    assert_eq!(
        (second.batches_created, second.scopes_shredded),
        (1, 1),
        "{second:?}"
    );
    // The certificate waits for the audit log to hold a signed checkpoint
    // that contains the shred; the next sweeps issue it.
    let (client, client_token) = (retention.clone(), token.clone());
    let certified = move |scope: String| {
        let (retention, token) = (client.clone(), client_token.clone());
        move || {
            let (mut retention, token, scope) = (retention.clone(), token.clone(), scope.clone());
            async move {
                retention
                    .run_sweep(as_staff(&token, pb::RunSweepRequest {}))
                    .await
                    .unwrap();
                retention
                    .get_certificate(as_staff(
                        &token,
                        pb::GetCertificateRequest {
                            scope_id: scope,
                            ..Default::default()
                        },
                    ))
                    .await
                    .is_ok()
            }
        }
    };
    common::eventually(
        Duration::from_secs(20),
        "the contacts' certificate",
        certified(contact_scope.clone()),
    )
    .await;

    // The matter file waits for a records manager's approval, once.
    let waiting = awaiting_approval(&retention, &token).await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].scope_ids, std::slice::from_ref(&file_scope));
    // Told once, over every sweep since, and only the records manager.
    let told = common::mails_to(&data, "records@firm.example");
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(
        told[0].0,
        "Disposal batch waiting for your approval: 1 scope"
    );
    assert!(told[0].1.contains(&waiting[0].id), "{}", told[0].1);
    assert!(common::mails_to(&data, "partner@firm.example").is_empty());
    let approve = pb::ApproveDisposalBatchRequest {
        batch_id: waiting[0].id.clone(),
    };
    let approved = retention
        .approve_disposal_batch(as_staff(&token, approve.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.approvals_needed, 0);
    assert_eq!(approved.batch.unwrap().state(), pb::BatchState::Approved);
    let twice = retention
        .approve_disposal_batch(as_staff(&token, approve))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);
    let unknown = retention
        .approve_disposal_batch(as_staff(
            &token,
            pb::ApproveDisposalBatchRequest {
                batch_id: uuid::Uuid::now_v7().to_string(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let third = sweep(&mut retention).await;
    assert_eq!(third.scopes_shredded, 1, "{third:?}");
    common::eventually(
        Duration::from_secs(20),
        "the matter file's certificate",
        certified(file_scope.clone()),
    )
    .await;
    assert_eq!(
        sweep(&mut retention).await.scopes_shredded,
        0,
        "nothing is shredded twice"
    );
    // The batches come in pages, newest first, each with its scopes and
    // approvers: the matter file's batch names its records manager.
    common::check_pages(0, 1, |page_size, page_token| {
        let (mut retention, token) = (retention.clone(), token.clone());
        async move {
            let r = retention
                .list_disposal_batches(as_staff(
                    &token,
                    pb::ListDisposalBatchesRequest {
                        page_size,
                        page_token,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            Ok((r.batches, r.next_page_token))
        }
    })
    .await;
    let done = retention
        .list_disposal_batches(as_staff(
            &token,
            pb::ListDisposalBatchesRequest {
                state: pb::BatchState::Done as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .batches;
    let file_batch = done
        .iter()
        .find(|b| b.scope_ids == [file_scope.clone()])
        .expect("the matter file's batch is done");
    assert_eq!(file_batch.approvers.len(), 1, "{file_batch:?}");

    // The vault: both scopes shredded, the held one untouched.
    let mut vault_as_retention =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "retention").await);
    let scopes = vault_as_retention
        .list_scopes(vault_pb::ListScopesRequest {
            client_id: client_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .scopes;
    let state_of = |id: &str| scopes.iter().find(|s| s.id == id).unwrap().state();
    assert_eq!(state_of(&file_scope), vault_pb::ScopeState::Shredded);
    assert_eq!(state_of(&contact_scope), vault_pb::ScopeState::Shredded);
    assert_eq!(state_of(&money_scope), vault_pb::ScopeState::Active);

    // The certificate says what went, under which policy, approved by whom,
    // and verifies offline; an edited one does not.
    let certificate = retention
        .get_certificate(as_staff(
            &token,
            pb::GetCertificateRequest {
                scope_id: file_scope.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&certificate.body).unwrap();
    assert_eq!(body["destroyed"]["scope_id"], file_scope.as_str());
    assert_eq!(body["destroyed"]["record_count"], 2);
    assert_eq!(body["destroyed"]["matter_id"], matter_id.as_str());
    assert_eq!(body["policy"]["version"], 1);
    assert_eq!(body["approved_by"], serde_json::json!([manager]));
    assert!(body["key_destroyed_at"].is_string());
    // The audit log's signed checkpoint that contains the shred.
    let evidence = &body["audit_evidence"];
    assert!(evidence["event_id"].is_string());
    assert!(evidence["tree_size"].as_i64().unwrap() > evidence["leaf_index"].as_i64().unwrap());
    assert!(
        evidence["checkpoint"]
            .as_str()
            .unwrap()
            .starts_with("confidant.local/audit\n"),
        "{evidence}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("certificate.json");
    let write = |body: &str| {
        std::fs::write(
            &file,
            serde_json::json!({ "body": body, "signature": certificate.signature }).to_string(),
        )
        .unwrap();
    };
    // `verify-certificate` of the file with these public keys.
    let verify_with = |keys: &[&str]| {
        let mut cmd = common::confidant();
        cmd.args(["retention", "verify-certificate", "--file"])
            .arg(&file);
        for key in keys {
            cmd.args(["--public-key", key]);
        }
        common::exit_and_output(cmd.output().unwrap())
    };
    let verify = || verify_with(&[&certificate.public_key]);
    write(&certificate.body);
    let (code, out) = verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK"), "{out}");
    write(
        &certificate
            .body
            .replace("\"record_count\":2", "\"record_count\":1"),
    );
    let (code, out) = verify();
    assert_eq!(code, 65, "{out}");
    let none = retention
        .get_certificate(as_staff(
            &token,
            pb::GetCertificateRequest {
                scope_id: money_scope.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::NotFound);
    sandbox.stop().await;

    // Retention's signing key changes: the certificate still names the key
    // that signed it, and still verifies with it.
    let new_key = data.path().join("retention-certificates-2027.key");
    confidant_runtime::keys::write_new_ed25519_key(&new_key).unwrap();
    let sandbox = Sandbox::start(
        &data,
        disposal_spec(vec![(
            "retention",
            "signing_key_file",
            new_key.display().to_string().into(),
        )]),
    )
    .await;
    let mut retention = RetentionServiceClient::new(
        channel(&data, &sandbox, ServiceName::Retention, "firm-app").await,
    );
    let again = retention
        .get_certificate(as_staff(
            &token,
            pb::GetCertificateRequest {
                scope_id: file_scope.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    assert_eq!(again.key_id, certificate.key_id);
    assert_eq!(again.public_key, certificate.public_key);
    write(&certificate.body);
    let (code, out) = verify();
    assert_eq!(code, 0, "{out}");
    // A records officer holding every key retention published checks it
    // with all of them: it verifies, naming the key that signed it; the
    // new key alone does not verify it.
    let new_public = common::published_key(&new_key, &[])["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, out) = verify_with(&[&new_public, &certificate.public_key]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK"), "{out}");
    assert!(
        out.contains(&format!("signed by key {}", certificate.key_id)),
        "{out}"
    );
    let (code, out) = verify_with(&[&new_public]);
    assert_eq!(code, 65, "{out}");
    assert!(out.starts_with("FAILED"), "{out}");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_due_scopes_are_shredded_through_approved_batches_and_certified() {
    due_scopes_are_shredded_through_approved_batches_and_certified(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_due_scopes_are_shredded_through_approved_batches_and_certified() {
    due_scopes_are_shredded_through_approved_batches_and_certified(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_policies_triggers_and_holds_decide_what_falls_due() {
    policies_triggers_and_holds_decide_what_falls_due(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_policies_triggers_and_holds_decide_what_falls_due() {
    policies_triggers_and_holds_decide_what_falls_due(Backend::Postgres).await;
}

/// Originals (a will, a deed) are never shredded by the schedule: their due
/// scope goes onto the return-to-client list, the vault refuses a direct
/// shred, and once a records manager records the return the scope's copies
/// are shredded and certified like any other.
async fn originals_go_back_to_the_client_instead_of_the_shredder(backend: Backend) {
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
    let matter_id = new_matter(&mut admin, &client_id, Some(&partner), "estate").await;
    let manager = cleared(&mut admin, "records@firm.example", "records_manager").await;
    let token = staff_token(&data, &manager, &["records_manager"]);
    let partner_token = staff_token(&data, &partner, &["partner"]);

    let mut vault =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "intake").await);
    let will = common::store_record(
        &mut vault,
        &client_id,
        &matter_id,
        vault_pb::DataCategory::MatterFile,
        true,
    )
    .await;
    assert!(will.original);
    let file_scope = will.scope_id.clone();
    let copy = common::store_record(
        &mut vault,
        &client_id,
        &matter_id,
        vault_pb::DataCategory::MatterFile,
        false,
    )
    .await;
    assert_eq!(copy.scope_id, file_scope);
    assert!(!copy.original);

    let mut retention = RetentionServiceClient::new(
        channel(&data, &sandbox, ServiceName::Retention, "firm-app").await,
    );
    due_at_once(
        &mut retention,
        &token,
        &[(
            vault_pb::DataCategory::MatterFile,
            pb::DisposalAction::Shred,
        )],
    )
    .await;
    let sweep = |retention: &RetentionServiceClient<PeerChannel>| {
        let mut retention = retention.clone();
        let token = token.clone();
        async move {
            retention
                .run_sweep(as_staff(&token, pb::RunSweepRequest {}))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = sweep(&retention).await;
    assert_eq!(
        (
            first.listed_for_return,
            first.batches_created,
            first.scopes_shredded
        ),
        (1, 0, 0),
        "{first:?}"
    );
    assert_eq!(sweep(&retention).await.listed_for_return, 0, "listed once");
    // The records manager is e-mailed that originals wait to go back, once;
    // the partner is not.
    let told = common::mails_to(&data, "records@firm.example");
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].0, "Originals to return to clients: 1 scope");
    assert!(told[0].1.contains("return-to-client list"), "{}", told[0].1);
    assert!(common::mails_to(&data, "partner@firm.example").is_empty());

    // The vault refuses to shred the originals even when asked directly.
    let mut vault_as_retention =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "retention").await);
    let refused = vault_as_retention
        .shred_scope(vault_pb::ShredScopeRequest {
            scope_id: file_scope.clone(),
            order_id: uuid::Uuid::now_v7().to_string(),
            pending_window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(common::error_reason(&refused), "originals");
    let refused = vault_as_retention
        .shred_record(vault_pb::ShredRecordRequest {
            record_id: will.id.clone(),
            order_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(common::error_reason(&refused), "originals");
    let scope_now = |vault: &VaultServiceClient<PeerChannel>| {
        let (mut vault, client_id, scope) = (vault.clone(), client_id.clone(), file_scope.clone());
        async move {
            vault
                .list_scopes(vault_pb::ListScopesRequest {
                    client_id,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .scopes
                .into_iter()
                .find(|s| s.id == scope)
                .unwrap()
        }
    };
    let listed_scope = scope_now(&vault_as_retention).await;
    assert_eq!(listed_scope.state(), vault_pb::ScopeState::Active);
    assert_eq!(
        (listed_scope.record_count, listed_scope.original_count),
        (2, 1)
    );

    // The return-to-client list.
    let list = retention
        .list_returns(as_staff(&token, pb::ListReturnsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .returns;
    assert_eq!(list.len(), 1, "{list:?}");
    let entry = &list[0];
    assert_eq!(entry.scope_id, file_scope);
    assert_eq!(entry.matter_id, matter_id);
    assert_eq!(entry.original_count, 1);
    assert_eq!(entry.state(), pb::ReturnState::Listed);

    // Recording the return: a reference is required, and only a records
    // manager records it.
    let bad = retention
        .record_return(as_staff(
            &token,
            pb::RecordReturnRequest {
                return_id: "not-a-uuid".into(),
                reference: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        common::violated_fields(&bad),
        ["return_id".to_owned(), "reference".to_owned()]
    );
    let record = pb::RecordReturnRequest {
        return_id: entry.id.clone(),
        reference: "Royal Mail special delivery AB123456789GB".into(),
    };
    let denied = retention
        .record_return(as_staff(&partner_token, record.clone()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        sweep(&retention).await.scopes_shredded,
        0,
        "nothing goes while the originals are here"
    );
    let returned = retention
        .record_return(as_staff(&token, record.clone()))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(returned.state(), pb::ReturnState::Returned);
    assert_eq!(returned.returned_by, manager);
    assert_eq!(returned.reference, record.reference);
    let again = retention
        .record_return(as_staff(&token, record))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(again.return_time, returned.return_time, "recorded once");
    assert_eq!(scope_now(&vault_as_retention).await.original_count, 0);
    assert!(
        retention
            .list_returns(as_staff(&token, pb::ListReturnsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .returns
            .is_empty()
    );
    let history = retention
        .list_returns(as_staff(
            &token,
            pb::ListReturnsRequest {
                client_id: client_id.clone(),
                include_returned: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .returns;
    assert_eq!(history.len(), 1);

    // The copies left follow the schedule now.
    let after = sweep(&retention).await;
    assert_eq!(
        (after.listed_for_return, after.scopes_shredded),
        (0, 1),
        "{after:?}"
    );
    assert_eq!(
        scope_now(&vault_as_retention).await.state(),
        vault_pb::ScopeState::Shredded
    );

    // The audit log tells the story.
    let audit =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    common::eventually(Duration::from_secs(20), "the return's events", || {
        let (mut audit, client_id) = (audit.clone(), client_id.clone());
        async move {
            let actions: std::collections::BTreeSet<String> = audit
                .list_events(ListEventsRequest {
                    client_id,
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .events
                .into_iter()
                .filter_map(|e| e.event.map(|e| e.action))
                .collect();
            [
                "retention.return.listed",
                "retention.return.recorded",
                "vault.originals.returned",
            ]
            .iter()
            .all(|a| actions.contains(*a))
        }
    })
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_originals_go_back_to_the_client_instead_of_the_shredder() {
    originals_go_back_to_the_client_instead_of_the_shredder(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_originals_go_back_to_the_client_instead_of_the_shredder() {
    originals_go_back_to_the_client_instead_of_the_shredder(Backend::Postgres).await;
}

/// A category's policy can be narrowed to a practice area, a jurisdiction
/// or both; the most specific that fits a scope's matter governs it, as
/// identity describes the matter. A matter closing identity never reported
/// is found on the next sync.
async fn policies_follow_the_matters_practice_area_and_jurisdiction(backend: Backend) {
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
    let manager = cleared(&mut admin, "records@firm.example", "records_manager").await;
    let token = staff_token(&data, &manager, &["records_manager"]);
    let ny_probate = new_matter_in(&mut admin, &client_id, None, "Probate", "us-ny").await;
    let ca_probate = new_matter_in(&mut admin, &client_id, None, "probate", "US-CA").await;
    let gb_tax = new_matter_in(&mut admin, &client_id, None, "tax", "GB-ENG").await;
    let family = new_matter(&mut admin, &client_id, None, "family").await;
    let quiet = new_matter(&mut admin, &client_id, None, "family").await;

    let mut vault =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "intake").await);
    for matter in [&ny_probate, &ca_probate, &gb_tax, &family] {
        common::store_note(
            &mut vault,
            &client_id,
            matter,
            vault_pb::DataCategory::MatterFile,
        )
        .await;
    }
    common::store_note(
        &mut vault,
        &client_id,
        &quiet,
        vault_pb::DataCategory::Financial,
    )
    .await;

    let mut retention = RetentionServiceClient::new(
        channel(&data, &sandbox, ServiceName::Retention, "firm-app").await,
    );
    let class = |years: i32, area: &str, place: &str| {
        let mut r = rules(
            vault_pb::DataCategory::MatterFile,
            (years, 0, 0),
            pb::Trigger::Creation,
            pb::DisposalAction::Review,
        );
        r.practice_area = area.into();
        r.jurisdiction = place.into();
        r
    };
    let mut created = Vec::new();
    for r in [
        class(9, "", ""),
        class(7, "", "US"),
        class(0, "probate", "US-NY"),
        class(3, "Tax", ""),
        rules(
            vault_pb::DataCategory::Financial,
            (0, 0, 0),
            pb::Trigger::MatterClosed,
            pb::DisposalAction::Review,
        ),
    ] {
        let policy = create_policy(&mut retention, &token, r).await.unwrap();
        created.push(policy);
    }
    assert_eq!(created[3].rules.as_ref().unwrap().practice_area, "tax");
    // One policy per category, practice area and jurisdiction.
    let twice = create_policy(&mut retention, &token, class(1, "PROBATE", "us-ny"))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition, "{twice:?}");
    // Whom a policy covers is fixed for its life.
    let moved = retention
        .update_policy(as_staff(
            &token,
            pb::UpdatePolicyRequest {
                policy_id: created[1].id.clone(),
                version: 1,
                rules: Some(class(7, "", "US-TX")),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&moved), ["rules.practice_area"]);
    let listed = retention
        .list_policies(as_staff(&token, pb::ListPoliciesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .policies;
    assert_eq!(listed.len(), 5);

    retention
        .sync_scopes(as_staff(&token, pb::SyncScopesRequest {}))
        .await
        .unwrap();
    let due_matters = |groups: Vec<pb::DueGroup>| {
        let mut matters: Vec<String> = groups.into_iter().map(|g| g.matter_id).collect();
        matters.sort();
        matters
    };
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<_>>()
    };
    // New York probate: at once; California probate: the US policy (7
    // years); English tax: the tax policy (3 years); family: the plain one
    // (9 years).
    assert_eq!(
        due_matters(report(&mut retention, &token, 1).await),
        sorted(vec![&ny_probate])
    );
    assert_eq!(
        due_matters(report(&mut retention, &token, 4 * 365).await),
        sorted(vec![&ny_probate, &gb_tax])
    );
    assert_eq!(
        due_matters(report(&mut retention, &token, 8 * 365).await),
        sorted(vec![&ny_probate, &gb_tax, &ca_probate])
    );
    assert_eq!(
        due_matters(report(&mut retention, &token, 3650).await),
        sorted(vec![&ny_probate, &gb_tax, &ca_probate, &family])
    );

    // Identity closed a matter but retention never heard of it (a crash
    // between the two): the next sync asks identity and records it.
    let identity_db = common::service_db(&data, ServiceName::Identity).await;
    identity_db
        .transact(
            vec![
                Statement::new(
                    "UPDATE matters SET closed_at = $1 WHERE id = $2",
                    vec![
                        Value::Time(chrono::Utc::now()),
                        Value::Uuid(quiet.parse().unwrap()),
                    ],
                )
                .expecting(1),
            ],
            &[],
        )
        .await
        .unwrap();
    retention
        .sync_scopes(as_staff(&token, pb::SyncScopesRequest {}))
        .await
        .unwrap();
    let now_due = report(&mut retention, &token, 1).await;
    assert!(
        now_due
            .iter()
            .any(|g| g.matter_id == quiet && g.category() == vault_pb::DataCategory::Financial),
        "{now_due:?}"
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_policies_follow_the_matters_practice_area_and_jurisdiction() {
    policies_follow_the_matters_practice_area_and_jurisdiction(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_policies_follow_the_matters_practice_area_and_jurisdiction() {
    policies_follow_the_matters_practice_area_and_jurisdiction(Backend::Postgres).await;
}

/// The holds the vault says cover each of `client_id`'s scopes, by scope.
async fn vault_holds(
    vault: &VaultServiceClient<PeerChannel>,
    client_id: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    common::vault_scopes(vault, client_id)
        .await
        .into_iter()
        .map(|(id, s)| (id, s.hold_ids))
        .collect()
}

async fn holds_reach_a_vault_restored_from_before_them(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let spec = || {
        SandboxSpec::of(&[
            ServiceName::Identity,
            ServiceName::Vault,
            ServiceName::Retention,
            ServiceName::Audit,
        ])
    };
    let sandbox = Sandbox::start(&data, spec()).await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let client_id = new_client(&mut admin).await;
    let partner = cleared(&mut admin, "partner@firm.example", "partner").await;
    let matter_id = new_matter(&mut admin, &client_id, Some(&partner), "litigation").await;
    let manager = cleared(&mut admin, "records@firm.example", "records_manager").await;
    let second = cleared(&mut admin, "records2@firm.example", "records_manager").await;
    let manager_token = staff_token(&data, &manager, &["records_manager"]);
    let second_token = staff_token(&data, &second, &["records_manager"]);
    let mut vault =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "intake").await);
    let file = common::store_note(
        &mut vault,
        &client_id,
        &matter_id,
        vault_pb::DataCategory::MatterFile,
    )
    .await;
    let contacts = common::store_note(
        &mut vault,
        &client_id,
        "",
        vault_pb::DataCategory::ContactDetails,
    )
    .await;
    let mut retention = RetentionServiceClient::new(
        channel(&data, &sandbox, ServiceName::Retention, "firm-app").await,
    );
    retention
        .sync_scopes(as_staff(&manager_token, pb::SyncScopesRequest {}))
        .await
        .unwrap();
    let hold = |matter: &str, category: vault_pb::DataCategory| pb::PlaceHoldRequest {
        reason: "litigation".into(),
        client_id: client_id.clone(),
        matter_id: matter.into(),
        category: category as i32,
        scope_ids: Vec::new(),
    };
    // A hold on the matter file, in the vault when its backup is taken…
    let on_file = retention
        .place_hold(as_staff(
            &manager_token,
            hold(&matter_id, vault_pb::DataCategory::Unspecified),
        ))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap()
        .id;
    let backup = common::back_up(&data, ServiceName::Vault).await;
    // …released afterwards, and a hold on the contacts placed afterwards.
    for token in [&manager_token, &second_token] {
        retention
            .approve_hold_release(as_staff(
                token,
                pb::ApproveHoldReleaseRequest {
                    hold_id: on_file.clone(),
                },
            ))
            .await
            .unwrap();
    }
    let on_contacts = retention
        .place_hold(as_staff(
            &manager_token,
            hold("", vault_pb::DataCategory::ContactDetails),
        ))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap()
        .id;
    let as_retention =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "retention").await);
    let expected = std::collections::BTreeMap::from([
        (file.clone(), Vec::new()),
        (contacts.clone(), vec![on_contacts.clone()]),
    ]);
    assert_eq!(vault_holds(&as_retention, &client_id).await, expected);
    sandbox.stop().await;

    // The vault's database is restored from the backup: it enforces the
    // released hold and knows nothing of the contacts' hold (seen before
    // retention runs again).
    common::restore(&data, ServiceName::Vault, &backup).await;
    let without_retention = Sandbox::start(
        &data,
        SandboxSpec::of(&[
            ServiceName::Identity,
            ServiceName::Vault,
            ServiceName::Audit,
        ]),
    )
    .await;
    let as_retention = VaultServiceClient::new(
        channel(&data, &without_retention, ServiceName::Vault, "retention").await,
    );
    assert_eq!(
        vault_holds(&as_retention, &client_id).await,
        std::collections::BTreeMap::from([
            (file.clone(), vec![on_file.clone()]),
            (contacts.clone(), Vec::new()),
        ])
    );
    without_retention.stop().await;

    // Retention's next sync puts the vault right, and the vault refuses to
    // shred the contacts again.
    let sandbox = Sandbox::start(&data, spec()).await;
    let as_retention =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "retention").await);
    let mut retention = RetentionServiceClient::new(
        channel(&data, &sandbox, ServiceName::Retention, "firm-app").await,
    );
    retention
        .sync_scopes(as_staff(&manager_token, pb::SyncScopesRequest {}))
        .await
        .unwrap();
    assert_eq!(vault_holds(&as_retention, &client_id).await, expected);
    let refused = as_retention
        .clone()
        .shred_scope(vault_pb::ShredScopeRequest {
            scope_id: contacts.clone(),
            order_id: uuid::Uuid::now_v7().to_string(),
            pending_window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(common::error_reason(&refused), "legal_hold");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_holds_reach_a_vault_restored_from_before_them() {
    holds_reach_a_vault_restored_from_before_them(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_holds_reach_a_vault_restored_from_before_them() {
    holds_reach_a_vault_restored_from_before_them(Backend::Postgres).await;
}

/// Each scope of `client_id` and its state, as the vault lists them.
async fn vault_states(
    vault: &VaultServiceClient<PeerChannel>,
    client_id: &str,
) -> std::collections::BTreeMap<String, vault_pb::ScopeState> {
    common::vault_scopes(vault, client_id)
        .await
        .into_iter()
        .map(|(id, s)| (id, s.state()))
        .collect()
}

async fn staged_disposals_wait_out_the_vaults_window_and_a_records_manager_can_keep_a_scope(
    backend: Backend,
) {
    let data = SandboxData::new(backend).await;
    // The vault stages every destruction for ten seconds; records managers
    // get a last reminder six seconds before a key goes.
    let sandbox = Sandbox::start(
        &data,
        disposal_spec(vec![
            ("vault", "destruction_window_seconds", 10.into()),
            ("vault", "destruction_check_seconds", 1.into()),
            ("retention", "destruction_reminder_seconds", 6.into()),
        ]),
    )
    .await;
    let firm = DisposalFirm::new(&data, &sandbox).await;
    let (client_id, matter_id, token) = (
        firm.client_id.clone(),
        firm.matter_id.clone(),
        firm.token.clone(),
    );
    let mut vault = firm.vault.clone();
    let file_scope = common::store_note(
        &mut vault,
        &client_id,
        &matter_id,
        vault_pb::DataCategory::MatterFile,
    )
    .await;
    let contact_scope = common::store_note(
        &mut vault,
        &client_id,
        "",
        vault_pb::DataCategory::ContactDetails,
    )
    .await;
    let mut retention = firm.retention.clone();
    due_at_once(
        &mut retention,
        &token,
        &[
            (
                vault_pb::DataCategory::MatterFile,
                pb::DisposalAction::Shred,
            ),
            (
                vault_pb::DataCategory::ContactDetails,
                pb::DisposalAction::Shred,
            ),
        ],
    )
    .await;
    let vault_as_retention =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "retention").await);

    // Both scopes are due: the sweep orders both shreds, and the vault
    // stages them (reads refused) instead of destroying the keys at once.
    let first = firm.sweep().await;
    assert_eq!(
        (
            first.batches_created,
            first.scopes_shredded,
            first.disposals_pending,
            first.staff_notices_sent,
        ),
        (1, 0, 2, 1),
        "{first:?}"
    );
    // The records manager is e-mailed at once that both are staged, and
    // until when they can keep one.
    let told = common::mails_to(&data, "records@firm.example");
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0]
            .0
            .starts_with("2 scopes of client data staged for destruction: keys go from "),
        "{}",
        told[0].0
    );
    let staged_at = std::time::Instant::now();
    let window_end = chrono::Utc::now() + chrono::Duration::seconds(10);
    assert!(
        [window_end, window_end - chrono::Duration::seconds(60)]
            .iter()
            .any(|t| told[0]
                .0
                .ends_with(&t.format("%Y-%m-%d %H:%M UTC").to_string())),
        "{}",
        told[0].0
    );
    assert!(told[0].1.contains("cancel its"), "{}", told[0].1);
    assert!(common::mails_to(&data, "partner@firm.example").is_empty());
    // The records manager's application lists them, the soonest first, with
    // when each key goes; in pages.
    let pending = |token: &str, page_size: i32, page_token: String| {
        let (mut retention, token) = (firm.retention.clone(), token.to_owned());
        async move {
            retention
                .list_pending_destructions(as_staff(
                    &token,
                    pb::ListPendingDestructionsRequest {
                        page_size,
                        page_token,
                    },
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let listed = pending(&token, 0, String::new())
        .await
        .unwrap()
        .destructions;
    let mut scopes: Vec<&str> = listed.iter().map(|d| d.scope_id.as_str()).collect();
    scopes.sort_unstable();
    let mut expected = [file_scope.as_str(), contact_scope.as_str()];
    expected.sort_unstable();
    assert_eq!(scopes, expected);
    let first_key = listed[0].destroy_time.as_ref().unwrap();
    assert!(
        told[0].0.ends_with(
            &chrono::DateTime::from_timestamp(first_key.seconds, 0)
                .unwrap()
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        )
    );
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].destroy_time.as_ref().unwrap().seconds
                <= w[1].destroy_time.as_ref().unwrap().seconds)
    );
    assert!(
        listed
            .iter()
            .all(|d| d.client_id == client_id && !d.batch_id.is_empty() && d.due_time.is_some())
    );
    let file = listed.iter().find(|d| d.scope_id == file_scope).unwrap();
    assert_eq!(
        (file.matter_id.as_str(), file.category()),
        (matter_id.as_str(), vault_pb::DataCategory::MatterFile)
    );
    common::check_pages(2, 1, |size, page_token| {
        let page = pending(&token, size, page_token);
        async move {
            let r = page.await?;
            let ids: Vec<String> = r.destructions.into_iter().map(|d| d.scope_id).collect();
            Ok((ids, r.next_page_token))
        }
    })
    .await;
    let partner_token = staff_token(&data, &firm.partner, &["partner"]);
    let refused = pending(&partner_token, 0, String::new()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let states = vault_states(&vault_as_retention, &client_id).await;
    assert_eq!(
        states[&file_scope],
        vault_pb::ScopeState::PendingDestruction
    );
    assert_eq!(
        states[&contact_scope],
        vault_pb::ScopeState::PendingDestruction
    );

    // The keys go within six seconds now, but the first notice is not six
    // seconds old: no reminder yet (a window shorter than the reminder's
    // lead is told of once).
    tokio::time::sleep(Duration::from_millis(4500).saturating_sub(staged_at.elapsed())).await;
    assert_eq!(firm.sweep().await.staff_notices_sent, 0);
    assert_eq!(common::mails_to(&data, "records@firm.example").len(), 1);

    // Within the window a records manager keeps the contacts.
    let mut app =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "firm-app").await);
    app.cancel_scope_destruction(as_staff(
        &token,
        vault_pb::CancelScopeDestructionRequest {
            scope_id: contact_scope.clone(),
            reason: "client asked us to keep the file open".into(),
        },
    ))
    .await
    .unwrap();
    // It leaves the list at once; the matter file stays on it.
    let left: Vec<String> = pending(&token, 0, String::new())
        .await
        .unwrap()
        .destructions
        .into_iter()
        .map(|d| d.scope_id)
        .collect();
    assert_eq!(left, std::slice::from_ref(&file_scope));

    // Once the window is over the vault destroys the matter file's key,
    // and the sweeps confirm and certify it; the kept disposal is cancelled.
    // Before it goes, the records manager gets one last reminder, of the
    // matter file alone.
    let (mut cancelled, mut shredded) = (0, 0);
    let mut shredded_when_reminded = None;
    let started = std::time::Instant::now();
    loop {
        let r = firm.sweep().await;
        cancelled += r.disposals_cancelled;
        shredded += r.scopes_shredded;
        if shredded_when_reminded.is_none()
            && common::mails_to(&data, "records@firm.example").len() > 1
        {
            shredded_when_reminded = Some(shredded);
        }
        let certificate = retention
            .get_certificate(as_staff(
                &token,
                pb::GetCertificateRequest {
                    scope_id: file_scope.clone(),
                    ..Default::default()
                },
            ))
            .await;
        if let (Ok(certificate), true) = (certificate, cancelled > 0) {
            let body: serde_json::Value =
                serde_json::from_str(&certificate.into_inner().certificate.unwrap().body).unwrap();
            assert_eq!(body["destroyed"]["scope_id"], file_scope.as_str());
            assert!(body["audit_evidence"]["event_id"].is_string(), "{body}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no certificate and cancellation after 30 s (cancelled {cancelled}, shredded {shredded})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!((cancelled, shredded), (1, 1));
    assert_eq!(
        shredded_when_reminded,
        Some(0),
        "reminded before the key went"
    );
    // Every later sweep saw them staged, and none told of them again; none
    // is pending now.
    let told = common::mails_to(&data, "records@firm.example");
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(
        told[1]
            .0
            .starts_with("Last reminder: 1 scope of client data destroyed from "),
        "{}",
        told[1].0
    );
    assert!(
        told[1].0.ends_with(&told[0].0[told[0].0.len() - 20..]),
        "the same deadline: {} / {}",
        told[1].0,
        told[0].0
    );
    assert!(common::mails_to(&data, "partner@firm.example").is_empty());
    assert!(
        pending(&token, 0, String::new())
            .await
            .unwrap()
            .destructions
            .is_empty()
    );
    let states = vault_states(&vault_as_retention, &client_id).await;
    assert_eq!(states[&file_scope], vault_pb::ScopeState::Shredded);
    assert_eq!(states[&contact_scope], vault_pb::ScopeState::Active);

    // The kept scope is not planned again while its due date stands: later
    // sweeps leave it readable.
    for _ in 0..2 {
        let r = firm.sweep().await;
        assert_eq!(
            (r.batches_created, r.disposals_pending, r.scopes_shredded),
            (0, 0, 0),
            "{r:?}"
        );
    }
    let states = vault_states(&vault_as_retention, &client_id).await;
    assert_eq!(states[&contact_scope], vault_pb::ScopeState::Active);
    // The log says why the disposal stopped.
    let log =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    common::eventually(
        Duration::from_secs(20),
        "the kept scope's cancelled disposal in the log",
        || {
            let (mut log, contact_scope) = (log.clone(), contact_scope.clone());
            async move {
                log.list_events(ListEventsRequest {
                    source_service: "retention".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .events
                .into_iter()
                .filter_map(|e| e.event)
                .any(|e| {
                    e.action == "retention.disposal.cancelled"
                        && e.reason == "destruction_cancelled"
                        && e.resource.is_some_and(|r| r.id == contact_scope)
                })
            }
        },
    )
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_staged_disposals_wait_out_the_vaults_window_and_a_records_manager_can_keep_a_scope()
{
    staged_disposals_wait_out_the_vaults_window_and_a_records_manager_can_keep_a_scope(
        Backend::Sqlite,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_staged_disposals_wait_out_the_vaults_window_and_a_records_manager_can_keep_a_scope()
 {
    staged_disposals_wait_out_the_vaults_window_and_a_records_manager_can_keep_a_scope(
        Backend::Postgres,
    )
    .await;
}

async fn holds_placed_after_a_backup_come_back_and_disposals_wait_after_its_restore(
    backend: Backend,
) {
    let data = SandboxData::new(backend).await;
    let spec = disposal_spec(Vec::new());
    let sandbox = Sandbox::start(&data, spec.clone()).await;
    let firm = DisposalFirm::new(&data, &sandbox).await;
    let (client_id, token) = (firm.client_id.clone(), firm.token.clone());
    let mut vault = firm.vault.clone();
    let contacts = common::store_note(
        &mut vault,
        &client_id,
        "",
        vault_pb::DataCategory::ContactDetails,
    )
    .await;
    let mut retention = firm.retention.clone();
    // The contacts fall due at once; no sweep has run yet.
    let policy = create_policy(
        &mut retention,
        &token,
        rules(
            vault_pb::DataCategory::ContactDetails,
            (0, 0, 0),
            pb::Trigger::Creation,
            pb::DisposalAction::Shred,
        ),
    )
    .await
    .unwrap();
    retention
        .sync_scopes(as_staff(&token, pb::SyncScopesRequest {}))
        .await
        .unwrap();
    let money = common::store_record(
        &mut vault,
        &client_id,
        "",
        vault_pb::DataCategory::Financial,
        false,
    )
    .await;
    retention
        .sync_scopes(as_staff(&token, pb::SyncScopesRequest {}))
        .await
        .unwrap();
    let retention_backup = common::back_up(&data, ServiceName::Retention).await;
    let vault_backup = common::back_up(&data, ServiceName::Vault).await;

    // After the backups: the erasure of a record asked for, a legal hold
    // over the client's contacts, a new version of the policy and a trigger
    // event.
    let erasure = ask_erasure(
        &retention,
        &token,
        &money.id,
        pb::ErasureBasis::ClientRequest,
    )
    .await
    .unwrap()
    .id;
    let hold = retention
        .place_hold(as_staff(
            &token,
            pb::PlaceHoldRequest {
                reason: "litigation: Okafor v Example Ltd".into(),
                client_id: client_id.clone(),
                matter_id: String::new(),
                category: vault_pb::DataCategory::ContactDetails as i32,
                scope_ids: Vec::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap()
        .id;
    // And a hold over one named scope: the financial one.
    let scoped_hold = retention
        .place_hold(as_staff(
            &token,
            pb::PlaceHoldRequest {
                reason: "regulator's inquiry".into(),
                client_id: client_id.clone(),
                matter_id: String::new(),
                category: 0,
                scope_ids: vec![money.scope_id.clone()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap()
        .id;
    let mut longer = rules(
        vault_pb::DataCategory::ContactDetails,
        (6, 0, 0),
        pb::Trigger::Creation,
        pb::DisposalAction::Shred,
    );
    longer.basis = "firm schedule 2026, section 5".into();
    retention
        .update_policy(as_staff(
            &token,
            pb::UpdatePolicyRequest {
                policy_id: policy.id.clone(),
                version: 1,
                rules: Some(longer),
            },
        ))
        .await
        .unwrap();
    retention
        .record_trigger_event(as_staff(
            &token,
            pb::RecordTriggerEventRequest {
                client_id: client_id.clone(),
                matter_id: String::new(),
                trigger: pb::Trigger::NamedEvent as i32,
                event_name: "client_notice".into(),
                occur_time: ts(chrono::Utc::now()),
            },
        ))
        .await
        .unwrap();

    // The log, exported once a signed checkpoint covers all of it.
    let log =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    let last_retention_event = || {
        let mut log = log.clone();
        async move {
            let events = log
                .list_events(ListEventsRequest {
                    source_service: "retention".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .events;
            events
                .iter()
                .any(|e| {
                    e.event
                        .as_ref()
                        .is_some_and(|e| e.action == "retention.trigger.recorded")
                })
                .then(|| events.iter().map(|e| e.leaf_index).max().unwrap_or(0))
        }
    };
    common::eventually(
        Duration::from_secs(20),
        "the trigger event in the log",
        || {
            let last = last_retention_event();
            async move { last.await.is_some() }
        },
    )
    .await;
    let (export_arg, key) =
        common::exported_log(&data, &sandbox, &log, last_retention_event().await.unwrap()).await;
    sandbox.stop().await;

    // Both databases come back from before the hold.
    common::restore(&data, ServiceName::Retention, &retention_backup).await;
    common::restore(&data, ServiceName::Vault, &vault_backup).await;
    let restore = |what: &str| {
        common::restore_command(
            &data,
            &spec,
            &[what, "--log", &export_arg, "--public-key", &key],
        )
    };
    let (code, out) = restore("vault");
    assert_eq!(code, 0, "{out}");
    let (code, out) = restore("retention");
    assert_eq!(code, 0, "{out}");
    for placed in [&hold, &scoped_hold] {
        assert_eq!(
            results_of(&out, "place_hold", placed),
            ["reapplied"],
            "{out}"
        );
    }
    // The policy's new version is made again from the rules its event
    // names.
    assert_eq!(
        results_of(&out, "policy", &policy.id),
        ["already_applied", "reapplied"],
        "{out}"
    );
    // The trigger event is recorded again, as it was.
    assert_eq!(results_of(&out, "trigger", ""), ["reapplied"], "{out}");
    let retention_db = common::service_db(&data, ServiceName::Retention).await;
    let triggers: Vec<(String, Option<String>, uuid::Uuid)> = retention_db
        .fetch_all(
            "SELECT kind, event_name, client_id FROM retention_triggers",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        triggers,
        [(
            "named_event".to_owned(),
            Some("client_notice".to_owned()),
            client_id.parse().unwrap()
        )]
    );
    retention_db.close().await;
    assert!(out.contains("\"disposals_paused\":true"), "{out}");
    // The erasure asked for since is lost with the database: it is to be
    // asked for again.
    assert_eq!(results_of(&out, "erasure", &erasure), ["lost"], "{out}");
    assert!(out.contains("\"erasures_lost\":1"), "{out}");
    assert!(out.contains("erasures listed `lost`"), "{out}");

    let sandbox = Sandbox::start(&data, spec.clone()).await;
    let retention = RetentionServiceClient::new(
        channel(&data, &sandbox, ServiceName::Retention, "firm-app").await,
    );
    let sweep = || {
        let (mut retention, token) = (retention.clone(), token.clone());
        async move {
            retention
                .run_sweep(as_staff(&token, pb::RunSweepRequest {}))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let live = retention
        .clone()
        .list_policies(as_staff(&token, pb::ListPoliciesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .policies;
    let back = live.iter().find(|p| p.id == policy.id).unwrap();
    let rules = back.rules.clone().unwrap();
    assert_eq!(back.version, 2);
    assert_eq!(rules.period.unwrap().years, 6);
    assert_eq!(rules.basis, "firm schedule 2026, section 5");
    // Paused: the due contacts wait, and the due report says why.
    let paused = sweep().await;
    assert!(paused.ran && paused.paused, "{paused:?}");
    assert_eq!(paused.batches_created, 0);
    let due_report_paused = || {
        let (mut retention, token) = (retention.clone(), token.clone());
        async move {
            retention
                .get_due_report(as_staff(&token, pb::GetDueReportRequest { within_days: 1 }))
                .await
                .unwrap()
                .into_inner()
                .disposals_paused
        }
    };
    assert!(due_report_paused().await);
    // The hold is back in the vault too.
    retention
        .clone()
        .sync_scopes(as_staff(&token, pb::SyncScopesRequest {}))
        .await
        .unwrap();
    let as_retention =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "retention").await);
    // Each over what it covered: the scoped one over the financial scope
    // alone, not over every scope of the client.
    let holds = vault_holds(&as_retention, &client_id).await;
    assert_eq!(holds[&contacts], std::slice::from_ref(&hold), "{holds:?}");
    assert_eq!(
        holds[&money.scope_id],
        std::slice::from_ref(&scoped_hold),
        "{holds:?}"
    );
    let placed_again = retention
        .clone()
        .list_holds(as_staff(
            &token,
            pb::ListHoldsRequest {
                client_id: client_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .holds
        .into_iter()
        .find(|h| h.id == scoped_hold)
        .unwrap();
    assert_eq!(
        placed_again.scope_ids,
        std::slice::from_ref(&money.scope_id)
    );
    // A records manager resumes; the held contacts stay.
    let resume = || {
        let (mut retention, token) = (retention.clone(), token.clone());
        async move {
            retention
                .resume_disposals(as_staff(&token, pb::ResumeDisposalsRequest {}))
                .await
                .unwrap()
                .into_inner()
                .was_paused
        }
    };
    assert!(resume().await);
    assert!(!resume().await);
    assert!(!due_report_paused().await);
    let resumed = sweep().await;
    assert!(!resumed.paused, "{resumed:?}");
    assert_eq!(resumed.scopes_shredded, 0, "{resumed:?}");
    assert_eq!(
        vault_states(&as_retention, &client_id).await[&contacts],
        vault_pb::ScopeState::Active
    );
    sandbox.stop().await;

    // A second run places nothing twice.
    let (code, out) = restore("retention");
    assert_eq!(code, 0, "{out}");
    for placed in [&hold, &scoped_hold] {
        assert_eq!(
            results_of(&out, "place_hold", placed),
            ["already_applied"],
            "{out}"
        );
    }
    assert_eq!(
        results_of(&out, "trigger", ""),
        ["already_applied"],
        "{out}"
    );
    assert_eq!(
        results_of(&out, "policy", &policy.id),
        ["already_applied", "already_applied"],
        "{out}"
    );
}

/// The `result` of each line of a `confidant restore` output about
/// `change` (and `id`, unless empty).
fn results_of(out: &str, change: &str, id: &str) -> Vec<String> {
    common::restore_results(out, id)
        .into_iter()
        .filter(|(c, _)| c == change)
        .map(|(_, result)| result)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_holds_placed_after_a_backup_come_back_and_disposals_wait_after_its_restore() {
    holds_placed_after_a_backup_come_back_and_disposals_wait_after_its_restore(Backend::Sqlite)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_holds_placed_after_a_backup_come_back_and_disposals_wait_after_its_restore() {
    holds_placed_after_a_backup_come_back_and_disposals_wait_after_its_restore(Backend::Postgres)
        .await;
}

/// The retention service's view of a record's versions in the vault.
async fn record_states(
    vault: &VaultServiceClient<PeerChannel>,
    record_id: &str,
) -> Vec<vault_pb::RecordState> {
    vault
        .clone()
        .get_record_versions(vault_pb::GetRecordVersionsRequest {
            record_id: record_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions
        .iter()
        .map(|v| v.state())
        .collect()
}

/// RequestErasure of `record_id` for `basis`, as the staff member whose
/// token is `token`.
async fn ask_erasure(
    retention: &RetentionServiceClient<PeerChannel>,
    token: &str,
    record_id: &str,
    basis: pb::ErasureBasis,
) -> Result<pb::Erasure, tonic::Status> {
    retention
        .clone()
        .request_erasure(as_staff(
            token,
            pb::RequestErasureRequest {
                record_id: record_id.to_owned(),
                basis: basis as i32,
                reference: "DSAR-2026-0042".into(),
                request_id: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner().erasure.expect("the erasure"))
}

async fn one_record_is_erased_on_request_with_two_approvals_and_certified(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(&data, disposal_spec(Vec::new())).await;
    let firm = DisposalFirm::new(&data, &sandbox).await;
    let (client_id, matter_id, token) = (
        firm.client_id.clone(),
        firm.matter_id.clone(),
        firm.token.clone(),
    );
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let second = cleared(&mut admin, "records2@firm.example", "records_manager").await;
    let second_token = staff_token(&data, &second, &["records_manager"]);
    let partner_token = staff_token(&data, &firm.partner, &["partner"]);
    let mut retention = firm.retention.clone();
    let mut vault = firm.vault.clone();
    let mut app =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "firm-app").await);
    let vault_as_retention =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "retention").await);

    // A passport copy taken in error, corrected once since: two versions.
    let first = common::store_record(
        &mut vault,
        &client_id,
        &matter_id,
        vault_pb::DataCategory::IdentityDocument,
        false,
    )
    .await;
    let corrected = app
        .correct_record(as_staff(
            &partner_token,
            vault_pb::CorrectRecordRequest {
                record_id: first.id.clone(),
                fields: vec![common::field(
                    "note",
                    vault_pb::FieldType::Text,
                    "corrected",
                )],
                reason: "typo".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    // Another record of the same scope, which must stay.
    let kept = common::store_record(
        &mut vault,
        &client_id,
        &matter_id,
        vault_pb::DataCategory::IdentityDocument,
        false,
    )
    .await;
    assert_eq!(kept.scope_id, first.scope_id);
    let listed = |retention: &RetentionServiceClient<PeerChannel>, state: pb::ErasureState| {
        let (mut retention, token, client_id) =
            (retention.clone(), token.clone(), client_id.clone());
        async move {
            retention
                .list_erasures(as_staff(
                    &token,
                    pb::ListErasuresRequest {
                        client_id,
                        state: state as i32,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .erasures
        }
    };

    // Bad requests name every broken rule and store nothing.
    let bad = retention
        .request_erasure(as_staff(
            &token,
            pb::RequestErasureRequest {
                record_id: "not-a-uuid".into(),
                basis: 0,
                reference: " ".into(),
                request_id: "nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        common::violated_fields(&bad),
        ["record_id", "basis", "reference", "request_id"]
    );
    let unknown = ask_erasure(
        &retention,
        &token,
        &uuid::Uuid::now_v7().to_string(),
        pb::ErasureBasis::ClientRequest,
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    // Staff without retention.manage may not ask.
    let denied = ask_erasure(
        &retention,
        &partner_token,
        &first.id,
        pb::ErasureBasis::ClientRequest,
    )
    .await
    .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        listed(&retention, pb::ErasureState::Unspecified)
            .await
            .is_empty()
    );

    // Asked for by naming the old version: both versions are in it, and
    // nothing is erased until a second records manager approves.
    let asked = ask_erasure(
        &retention,
        &token,
        &first.id,
        pb::ErasureBasis::CollectedInError,
    )
    .await
    .unwrap();
    assert_eq!(asked.state(), pb::ErasureState::AwaitingApproval);
    assert_eq!(asked.version_ids, [first.id.clone(), corrected.id.clone()]);
    assert_eq!(
        (asked.approvals_needed, asked.approvers.clone()),
        (2, vec![firm.manager.clone()])
    );
    assert_eq!(
        (
            asked.client_id.as_str(),
            asked.matter_id.as_str(),
            asked.scope_id.as_str()
        ),
        (
            client_id.as_str(),
            matter_id.as_str(),
            first.scope_id.as_str()
        )
    );
    assert_eq!(asked.category(), vault_pb::DataCategory::IdentityDocument);
    assert_eq!(
        record_states(&vault_as_retention, &first.id).await,
        [vault_pb::RecordState::Active, vault_pb::RecordState::Active]
    );
    // One erasure per record at a time, whichever version is named.
    let again = ask_erasure(
        &retention,
        &second_token,
        &corrected.id,
        pb::ErasureBasis::ClientRequest,
    )
    .await
    .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    // The asker cannot be the second pair of eyes.
    let approver = retention.clone();
    let approve = |t: &str, id: &str| {
        let (mut retention, t, id) = (approver.clone(), t.to_owned(), id.to_owned());
        async move {
            retention
                .approve_erasure(as_staff(&t, pb::ApproveErasureRequest { erasure_id: id }))
                .await
                .map(|r| r.into_inner())
        }
    };
    let own = approve(&token, &asked.id).await.unwrap_err();
    assert_eq!(own.code(), tonic::Code::FailedPrecondition);
    // The other records manager is e-mailed at once that it waits for
    // them; the asker, whose request was their approval, is not.
    common::eventually(
        Duration::from_secs(10),
        "the second records manager told",
        || async { !common::mails_to(&data, "records2@firm.example").is_empty() },
    )
    .await;
    let told = common::mails_to(&data, "records2@firm.example");
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].0, "Erasure of a record waiting for your approval");
    assert!(told[0].1.contains(&asked.id), "{}", told[0].1);
    assert!(common::mails_to(&data, "records@firm.example").is_empty());
    let by_partner = approve(&partner_token, &asked.id).await.unwrap_err();
    assert_eq!(by_partner.code(), tonic::Code::PermissionDenied);

    // The second approval erases every version at once; the other record
    // of the scope stays readable.
    let approved = approve(&second_token, &asked.id).await.unwrap();
    assert_eq!(approved.approvals_needed, 0);
    let erasure = approved.erasure.unwrap();
    assert_eq!(erasure.state(), pb::ErasureState::Shredded, "{erasure:?}");
    assert!(erasure.shred_time.is_some());
    assert_eq!(erasure.approvers, [firm.manager.clone(), second.clone()]);
    assert_eq!(
        record_states(&vault_as_retention, &corrected.id).await,
        [
            vault_pb::RecordState::Shredded,
            vault_pb::RecordState::Shredded
        ]
    );
    let read = |id: &str| {
        let (mut app, t, id) = (app.clone(), partner_token.clone(), id.to_owned());
        async move {
            app.get_record(as_staff(
                &t,
                vault_pb::GetRecordRequest {
                    record_id: id,
                    purpose: vault_pb::Purpose::LegalAdvice as i32,
                    justification: "erasure check".into(),
                    ..Default::default()
                },
            ))
            .await
        }
    };
    for id in [&first.id, &corrected.id] {
        let gone = read(id).await.unwrap_err();
        assert_eq!(common::error_reason(&gone), "shredded", "{id}");
    }
    assert!(read(&kept.id).await.is_ok());
    let twice = approve(&second_token, &asked.id).await.unwrap_err();
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);
    // Erased already: nothing to ask for.
    let shredded = ask_erasure(
        &retention,
        &token,
        &first.id,
        pb::ErasureBasis::ClientRequest,
    )
    .await
    .unwrap_err();
    assert_eq!(shredded.code(), tonic::Code::FailedPrecondition);

    // The certificate follows once the audit log's checkpoint holds both
    // shreds; it says what went, why and on whose approval, and verifies
    // offline.
    let reader = retention.clone();
    let certificate = |id: String| {
        let (mut retention, token) = (reader.clone(), token.clone());
        async move {
            retention
                .get_certificate(as_staff(
                    &token,
                    pb::GetCertificateRequest {
                        scope_id: String::new(),
                        erasure_id: id,
                    },
                ))
                .await
        }
    };
    common::eventually(Duration::from_secs(20), "the erasure's certificate", || {
        let (certificate, id) = (certificate, asked.id.clone());
        let sweep = firm.sweep();
        async move {
            sweep.await;
            certificate(id).await.is_ok()
        }
    })
    .await;
    let cert = certificate(asked.id.clone())
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&cert.body).unwrap();
    assert_eq!(body["type"], "confidant.certificate-of-erasure.v1");
    assert_eq!(body["erased"]["record_id"], first.id.as_str());
    assert_eq!(
        body["erased"]["version_ids"],
        serde_json::json!([first.id, corrected.id])
    );
    assert_eq!(body["erased"]["category"], "identity_document");
    assert_eq!(body["basis"], "collected_in_error");
    assert_eq!(body["reference"], "DSAR-2026-0042");
    assert_eq!(
        body["approved_by"],
        serde_json::json!([firm.manager, second])
    );
    let evidence = body["audit_evidence"].as_array().unwrap();
    assert_eq!(evidence.len(), 2, "one shred event per version");
    for e in evidence {
        assert!(
            e["tree_size"].as_i64().unwrap() > e["leaf_index"].as_i64().unwrap(),
            "{e}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("erasure.json");
    std::fs::write(
        &file,
        serde_json::json!({ "body": cert.body, "signature": cert.signature }).to_string(),
    )
    .unwrap();
    let out = common::confidant()
        .args(["retention", "verify-certificate", "--file"])
        .arg(&file)
        .args(["--public-key", &cert.public_key])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{printed}");
    assert!(
        printed.starts_with("OK") && printed.contains(&first.id) && printed.contains("2 versions"),
        "{printed}"
    );
    let certified = listed(&retention, pb::ErasureState::Certified).await;
    assert_eq!(certified.len(), 1);
    assert_eq!(certified[0].certificate_id, cert.id);
    let facts = retention
        .get_compliance_facts(as_staff(
            &token,
            pb::GetComplianceFactsRequest {
                start_time: ts(chrono::Utc::now() - chrono::Duration::hours(1)),
                end_time: ts(chrono::Utc::now() + chrono::Duration::hours(1)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        facts
            .certificates
            .iter()
            .any(|c| c.certificate_id == cert.id && c.kind == "record-erasure"),
        "{facts:?}"
    );
    let both = certificate(String::new()).await.unwrap_err();
    assert_eq!(common::violated_fields(&both), ["scope_id"]);

    // A request can be withdrawn before its approval; then nothing goes. A
    // retry with the same idempotency key returns the same erasure.
    let keyed = |record_id: &str, key: &str| {
        let (mut retention, token) = (reader.clone(), token.clone());
        let request = pb::RequestErasureRequest {
            record_id: record_id.to_owned(),
            basis: pb::ErasureBasis::NoLongerNeeded as i32,
            reference: "DSAR-2026-0043".into(),
            request_id: key.to_owned(),
        };
        async move {
            retention
                .request_erasure(as_staff(&token, request))
                .await
                .map(|r| r.into_inner().erasure.unwrap())
        }
    };
    let key = uuid::Uuid::now_v7().to_string();
    let withdrawn = keyed(&kept.id, &key).await.unwrap();
    assert_eq!(keyed(&kept.id, &key).await.unwrap().id, withdrawn.id);
    let misused = keyed(&first.id, &key).await.unwrap_err();
    assert_eq!(misused.code(), tonic::Code::FailedPrecondition);
    let cancelled = retention
        .cancel_erasure(as_staff(
            &second_token,
            pb::CancelErasureRequest {
                erasure_id: withdrawn.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .erasure
        .unwrap();
    assert_eq!(
        (cancelled.state(), cancelled.cancel_reason.as_str()),
        (pb::ErasureState::Cancelled, "withdrawn")
    );
    let late = approve(&second_token, &withdrawn.id).await.unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
    let retried = keyed(&kept.id, &key).await.unwrap();
    assert_eq!(
        (retried.state(), retried.id),
        (pb::ErasureState::Cancelled, withdrawn.id.clone())
    );
    assert!(read(&kept.id).await.is_ok());

    // Originals and held records are refused up front; a hold placed while
    // an erasure waits cancels it at the vault.
    let will = common::store_record(
        &mut vault,
        &client_id,
        "",
        vault_pb::DataCategory::MatterFile,
        true,
    )
    .await;
    let original = ask_erasure(
        &retention,
        &token,
        &will.id,
        pb::ErasureBasis::ClientRequest,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (original.code(), common::error_reason(&original)),
        (tonic::Code::FailedPrecondition, "originals".to_owned())
    );
    let contact = common::store_record(
        &mut vault,
        &client_id,
        "",
        vault_pb::DataCategory::ContactDetails,
        false,
    )
    .await;
    let waiting = ask_erasure(
        &retention,
        &token,
        &contact.id,
        pb::ErasureBasis::ClientRequest,
    )
    .await
    .unwrap();
    let hold = retention
        .place_hold(as_staff(
            &token,
            pb::PlaceHoldRequest {
                reason: "litigation: Smith v Jones".into(),
                client_id: client_id.clone(),
                category: vault_pb::DataCategory::ContactDetails as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap();
    assert!(hold.in_vault);
    let held = approve(&second_token, &waiting.id)
        .await
        .unwrap()
        .erasure
        .unwrap();
    assert_eq!(
        (held.state(), held.cancel_reason.as_str()),
        (pb::ErasureState::Cancelled, "legal_hold")
    );
    assert_eq!(
        record_states(&vault_as_retention, &contact.id).await,
        [vault_pb::RecordState::Active]
    );
    let refused = ask_erasure(
        &retention,
        &token,
        &contact.id,
        pb::ErasureBasis::ClientRequest,
    )
    .await
    .unwrap_err();
    assert_eq!(common::error_reason(&refused), "legal_hold");

    // An approval whose order to the vault never got through (the replica
    // stopped right after it committed): the next sweep carries it out.
    let note = common::store_record(
        &mut vault,
        &client_id,
        &matter_id,
        vault_pb::DataCategory::MatterFile,
        false,
    )
    .await;
    let stranded = ask_erasure(&retention, &token, &note.id, pb::ErasureBasis::LegalOrder)
        .await
        .unwrap();
    let retention_db = common::service_db(&data, ServiceName::Retention).await;
    let stranded_id: uuid::Uuid = stranded.id.parse().unwrap();
    retention_db
        .transact(
            vec![
                Statement::new(
                    "INSERT INTO retention_erasure_approvals (erasure_id, staff_id, approved_at) VALUES ($1, $2, $3)",
                    vec![
                        Value::Uuid(stranded_id),
                        Value::Text(second.clone()),
                        Value::Time(chrono::Utc::now()),
                    ],
                ),
                Statement::new(
                    "UPDATE retention_erasures SET state = 'ordered', updated_at = $2 WHERE id = $1",
                    vec![
                        Value::Uuid(stranded_id),
                        Value::Time(chrono::Utc::now() - chrono::Duration::minutes(5)),
                    ],
                )
                .expecting(1),
            ],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        record_states(&vault_as_retention, &note.id).await,
        [vault_pb::RecordState::Active]
    );
    let swept = firm.sweep().await;
    assert_eq!(swept.records_erased, 1, "{swept:?}");
    assert_eq!(
        record_states(&vault_as_retention, &note.id).await,
        [vault_pb::RecordState::Shredded]
    );
    assert_eq!(firm.sweep().await.records_erased, 0, "carried out once");

    // The list pages newest first: page by page, the same erasures as in one.
    let all = listed(&retention, pb::ErasureState::Unspecified).await;
    assert_eq!(all.len(), 4);
    let mut paged = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = retention
            .list_erasures(as_staff(
                &token,
                pb::ListErasuresRequest {
                    client_id: client_id.clone(),
                    page_size: 3,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.erasures.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(paged, all.iter().map(|e| e.id.clone()).collect::<Vec<_>>());

    // The audit log tells the story.
    let audit =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    let refused_records = [contact.id.clone(), will.id.clone(), first.id.clone()];
    common::eventually(Duration::from_secs(20), "the erasures' events", || {
        let (mut audit, client_id) = (audit.clone(), client_id.clone());
        let [held_id, original_id, shredded_id] = refused_records.clone();
        async move {
            let events = common::logged_events(&mut audit, &client_id, "", "").await;
            let count = |action: &str| events.iter().filter(|e| e.action == action).count();
            // The three requests refused up front are recorded as denied,
            // each with its reason, about the record.
            let mut refused: Vec<(&str, &str)> = events
                .iter()
                .filter(|e| {
                    e.action == "retention.erasure.requested"
                        && e.outcome() == confidant_proto::audit::v1::Outcome::Denied
                })
                .map(|e| {
                    (
                        e.reason.as_str(),
                        e.resource.as_ref().map_or("", |r| r.id.as_str()),
                    )
                })
                .collect();
            refused.sort_unstable();
            refused
                == [
                    ("legal_hold", held_id.as_str()),
                    ("originals", original_id.as_str()),
                    ("shredded", shredded_id.as_str()),
                ]
                && count("retention.erasure.requested") == 7
                && count("retention.erasure.approved") == 2
                && count("retention.erasure.shredded") == 2
                && count("retention.erasure.cancelled") == 2
                && count("vault.record.shredded") == 4
        }
    })
    .await;
    sandbox.stop().await;
}

/// A document (a scan, a letter) is erased like a record: every version
/// of it, uploaded as corrections, at once; downloads of each are refused
/// as shredded; the certificate names it as a document.
async fn a_document_is_erased_with_all_its_versions(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(&data, disposal_spec(Vec::new())).await;
    let firm = DisposalFirm::new(&data, &sandbox).await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let second = cleared(&mut admin, "records2@firm.example", "records_manager").await;
    let second_token = staff_token(&data, &second, &["records_manager"]);
    let partner_token = staff_token(&data, &firm.partner, &["partner"]);
    let app =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "firm-app").await);
    let vault_as_retention =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "retention").await);

    // A passport scan of the wrong person, rescanned once: two versions,
    // and a second document of the scope that stays.
    let header = |supersedes: &str| vault_pb::DocumentHeader {
        client_id: firm.client_id.clone(),
        matter_id: firm.matter_id.clone(),
        category: vault_pb::DataCategory::IdentityDocument as i32,
        filename: "passport.pdf".into(),
        media_type: "application/pdf".into(),
        size_bytes: 150_000,
        supersedes: supersedes.to_owned(),
        reason: if supersedes.is_empty() {
            String::new()
        } else {
            "rescanned".into()
        },
        ..Default::default()
    };
    let content: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let upload = |supersedes: &str| {
        let messages = common::upload_messages(header(supersedes), &content);
        let (mut app, token) = (app.clone(), partner_token.clone());
        async move {
            app.upload_document(as_staff(&token, futures::stream::iter(messages)))
                .await
                .unwrap()
                .into_inner()
                .record
                .unwrap()
        }
    };
    let scan = upload("").await;
    let rescan = upload(&scan.id).await;
    let kept = upload("").await;
    assert_eq!(rescan.kind(), vault_pb::RecordKind::Document);
    let download = |id: &str| {
        let (mut app, token, id) = (app.clone(), partner_token.clone(), id.to_owned());
        async move {
            let mut stream = app
                .download_document(as_staff(
                    &token,
                    vault_pb::DownloadDocumentRequest {
                        record_id: id,
                        purpose: vault_pb::Purpose::LegalAdvice as i32,
                        justification: String::new(),
                    },
                ))
                .await?
                .into_inner();
            let mut received = 0;
            while let Some(message) = stream.message().await? {
                if let Some(vault_pb::download_document_response::Part::Chunk(c)) = message.part {
                    received += c.len();
                }
            }
            Ok::<usize, tonic::Status>(received)
        }
    };
    assert_eq!(download(&scan.id).await.unwrap(), content.len());

    let asked = ask_erasure(
        &firm.retention,
        &firm.token,
        &rescan.id,
        pb::ErasureBasis::CollectedInError,
    )
    .await
    .unwrap();
    assert_eq!(asked.version_ids, [scan.id.clone(), rescan.id.clone()]);
    assert_eq!(asked.kind(), vault_pb::RecordKind::Document);
    assert_eq!(
        download(&rescan.id).await.unwrap(),
        content.len(),
        "nothing goes before the approval"
    );
    let approved = firm
        .retention
        .clone()
        .approve_erasure(as_staff(
            &second_token,
            pb::ApproveErasureRequest {
                erasure_id: asked.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .erasure
        .unwrap();
    assert_eq!(approved.state(), pb::ErasureState::Shredded, "{approved:?}");
    assert_eq!(
        record_states(&vault_as_retention, &scan.id).await,
        [
            vault_pb::RecordState::Shredded,
            vault_pb::RecordState::Shredded
        ]
    );
    for id in [&scan.id, &rescan.id] {
        let gone = download(id).await.unwrap_err();
        assert_eq!(common::error_reason(&gone), "shredded", "{id}");
    }
    assert_eq!(download(&kept.id).await.unwrap(), content.len());

    // Its certificate names a document.
    let certificate = || {
        let (mut retention, token, id) =
            (firm.retention.clone(), firm.token.clone(), asked.id.clone());
        async move {
            retention
                .get_certificate(as_staff(
                    &token,
                    pb::GetCertificateRequest {
                        scope_id: String::new(),
                        erasure_id: id,
                    },
                ))
                .await
        }
    };
    common::eventually(Duration::from_secs(20), "the erasure's certificate", || {
        let sweep = firm.sweep();
        async move {
            sweep.await;
            certificate().await.is_ok()
        }
    })
    .await;
    let cert = certificate()
        .await
        .unwrap()
        .into_inner()
        .certificate
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&cert.body).unwrap();
    assert_eq!(body["erased"]["kind"], "document", "{body}");
    assert_eq!(
        body["erased"]["version_ids"],
        serde_json::json!([scan.id, rescan.id])
    );
    assert_eq!(body["audit_evidence"].as_array().unwrap().len(), 2);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_document_is_erased_with_all_its_versions() {
    a_document_is_erased_with_all_its_versions(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_document_is_erased_with_all_its_versions() {
    a_document_is_erased_with_all_its_versions(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_record_is_erased_on_request_with_two_approvals_and_certified() {
    one_record_is_erased_on_request_with_two_approvals_and_certified(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_record_is_erased_on_request_with_two_approvals_and_certified() {
    one_record_is_erased_on_request_with_two_approvals_and_certified(Backend::Postgres).await;
}

/// Records managers hear of a disposal batch waiting for them even when the
/// mail gateway was down when the sweep made it: the notice waits in
/// retention's outbox and goes, once, after a sweep once the gateway is
/// back. Identity takes notices from the retention service only, and names
/// every rule a notice broke.
async fn records_managers_hear_of_a_waiting_batch_once_the_gateway_is_back(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let gateway = format!("http://127.0.0.1:{}/mail", common::free_port());
    let sandbox = Sandbox::start(
        &data,
        disposal_spec(vec![(
            "identity",
            "notification_webhook_url",
            gateway.as_str().into(),
        )]),
    )
    .await;
    let firm = DisposalFirm::new(&data, &sandbox).await;
    let token = firm.token.clone();
    let mut vault = firm.vault.clone();
    common::store_note(
        &mut vault,
        &firm.client_id,
        &firm.matter_id,
        vault_pb::DataCategory::MatterFile,
    )
    .await;
    let mut retention = firm.retention.clone();
    due_at_once(
        &mut retention,
        &token,
        &[(
            vault_pb::DataCategory::MatterFile,
            pb::DisposalAction::Review,
        )],
    )
    .await;
    // The gateway refuses: nothing is sent, by this sweep or the next.
    let first = firm.sweep().await;
    assert_eq!(
        (first.batches_created, first.staff_notices_sent),
        (1, 0),
        "{first:?}"
    );
    assert_eq!(firm.sweep().await.staff_notices_sent, 0);
    assert!(common::mails_to(&data, "records@firm.example").is_empty());
    // It waits, unsent, marked as tried, so that it goes behind notices
    // that have not failed.
    let waiting: Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> =
        common::service_db(&data, ServiceName::Retention)
            .await
            .fetch_all(
                "SELECT kind, tried_at FROM staff_notice_outbox WHERE sent_at IS NULL",
                vec![],
            )
            .await
            .unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(
        waiting[0].0,
        "STAFF_NOTICE_KIND_DISPOSAL_BATCH_AWAITING_APPROVAL"
    );
    assert!(waiting[0].1.is_some(), "{waiting:?}");
    // The gauge operators alert on sees it waiting.
    let retention_db = common::service_db(&data, ServiceName::Retention).await;
    let oldest = confidant_runtime::staff_notices::oldest_unsent(&retention_db)
        .await
        .unwrap();
    assert!(
        oldest.is_some_and(|at| at <= chrono::Utc::now()),
        "{oldest:?}"
    );

    // Only the retention service may ask identity to notify staff, and a
    // notice that breaks a rule is refused with every broken rule named.
    let notice = identity_pb::NotifyStaffRequest {
        notice_id: "batch:test".into(),
        kind: identity_pb::StaffNoticeKind::DisposalBatchAwaitingApproval as i32,
        item_count: 1,
        deadline: None,
        reference_id: uuid::Uuid::now_v7().to_string(),
        except_staff_id: String::new(),
        recipient_staff_id: String::new(),
    };
    let refused = IdentityServiceClient::new(
        channel(&data, &sandbox, ServiceName::Identity, "firm-app").await,
    )
    .notify_staff(notice.clone())
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let mut identity = IdentityServiceClient::new(
        channel(&data, &sandbox, ServiceName::Identity, "retention").await,
    );
    let bad = identity
        .notify_staff(identity_pb::NotifyStaffRequest {
            notice_id: "batch: one".into(),
            kind: 0,
            item_count: 0,
            deadline: None,
            reference_id: "batch-1".into(),
            except_staff_id: "someone".into(),
            recipient_staff_id: "someone else".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        common::violated_fields(&bad),
        [
            "notice_id",
            "kind",
            "item_count",
            "reference_id",
            "except_staff_id",
            "recipient_staff_id"
        ]
    );
    // A notice of a submission names its one recipient; the others do not.
    let nobody = identity
        .notify_staff(identity_pb::NotifyStaffRequest {
            kind: identity_pb::StaffNoticeKind::SubmissionReceived as i32,
            ..notice.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&nobody), ["recipient_staff_id"]);
    let named = identity
        .notify_staff(identity_pb::NotifyStaffRequest {
            recipient_staff_id: firm.manager.clone(),
            ..notice.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&named), ["recipient_staff_id"]);
    let staged_without_deadline = identity
        .notify_staff(identity_pb::NotifyStaffRequest {
            kind: identity_pb::StaffNoticeKind::DestructionStaged as i32,
            ..notice.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(
        common::violated_fields(&staged_without_deadline),
        ["deadline", "reference_id"]
    );
    let due_without_deadline = identity
        .notify_staff(identity_pb::NotifyStaffRequest {
            kind: identity_pb::StaffNoticeKind::DestructionDue as i32,
            ..notice.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(
        common::violated_fields(&due_without_deadline),
        ["deadline", "reference_id"]
    );
    sandbox.stop().await;

    // The gateway is back: the next sweep (the one every replica starts
    // with) sends the notice, naming the batch, and no later one sends it
    // again.
    let sandbox = Sandbox::start(&data, disposal_spec(Vec::new())).await;
    let retention = RetentionServiceClient::new(
        channel(&data, &sandbox, ServiceName::Retention, "firm-app").await,
    );
    common::eventually(
        Duration::from_secs(20),
        "the notice sent once the gateway is back",
        || async { !common::mails_to(&data, "records@firm.example").is_empty() },
    )
    .await;
    for _ in 0..2 {
        let later = run_sweep(&retention, &token).await;
        assert_eq!(
            (later.batches_created, later.staff_notices_sent),
            (0, 0),
            "{later:?}"
        );
    }
    let batch = awaiting_approval(&retention, &token).await.remove(0).id;
    // Identity itself sends a notice to nobody twice, whoever asks again.
    let again = IdentityServiceClient::new(
        channel(&data, &sandbox, ServiceName::Identity, "retention").await,
    )
    .notify_staff(identity_pb::NotifyStaffRequest {
        notice_id: format!("batch:{batch}"),
        reference_id: batch.clone(),
        ..notice
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        (again.recipients, again.sent, again.failed),
        (1, 0, 0),
        "{again:?}"
    );
    let told = common::mails_to(&data, "records@firm.example");
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(
        told[0].0,
        "Disposal batch waiting for your approval: 1 scope"
    );
    assert!(told[0].1.contains(&batch), "{}", told[0].1);
    assert!(common::mails_to(&data, "partner@firm.example").is_empty());
    // Nothing waits any more.
    assert_eq!(
        confidant_runtime::staff_notices::oldest_unsent(&retention_db)
            .await
            .unwrap(),
        None
    );
    // The e-mail is in the audit log, naming its recipient and the batch.
    let log =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    let manager = firm.manager.clone();
    common::eventually(Duration::from_secs(20), "the notice in the log", || {
        let (mut log, manager, batch) = (log.clone(), manager.clone(), batch.clone());
        async move {
            let told =
                common::logged_events(&mut log, "", "identity", "identity.staff.notified").await;
            told.len() == 1
                && told.iter().all(|e| {
                    e.reason == "disposal_batch_awaiting_approval"
                        && e.resource.as_ref().is_some_and(|r| r.id == manager)
                        && e.related
                            .iter()
                            .any(|r| r.r#type == "reference" && r.id == batch)
                })
        }
    })
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_records_managers_hear_of_a_waiting_batch_once_the_gateway_is_back() {
    records_managers_hear_of_a_waiting_batch_once_the_gateway_is_back(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_records_managers_hear_of_a_waiting_batch_once_the_gateway_is_back() {
    records_managers_hear_of_a_waiting_batch_once_the_gateway_is_back(Backend::Postgres).await;
}
