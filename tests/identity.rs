//! The identity service through its gRPC API, on SQLite and on PostgreSQL
//! with Redis: the directory, every denial reason of the decision, wall
//! precedence, revocation taking effect at once, bad input, and decisions
//! recorded in the audit log.

mod common;

use std::time::Duration;

use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec};
use confidant_audit::store::EventStore;
use confidant_proto::audit::v1::AuditEvent;
use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_proto::identity::v1::*;
use confidant_runtime::ServiceName;
use confidant_runtime::client::PeerChannel;
use confidant_runtime::storage::Backend;
use prost::Message;
use tonic_types::StatusExt;

type Client = IdentityServiceClient<PeerChannel>;

use common::directory::{assign, attest, cleared, decide, new_client, new_matter, staff, ts};

async fn client(data: &SandboxData, sandbox: &Sandbox, name: &str) -> Client {
    common::identity_client(data, sandbox, name).await
}

/// Waits until the audit log holds an event matching `request`.
async fn until_logged(
    data: &SandboxData,
    sandbox: &Sandbox,
    request: confidant_proto::audit::v1::ListEventsRequest,
    what: &str,
) {
    use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
    let audit = AuditServiceClient::new(
        confidant_runtime::client::connect(
            &sandbox.url(ServiceName::Audit),
            &data.client_tls("operator"),
            "localhost",
        )
        .await
        .unwrap(),
    );
    common::eventually(Duration::from_secs(20), what, || {
        let mut audit = audit.clone();
        let request = request.clone();
        async move {
            audit
                .list_events(request)
                .await
                .is_ok_and(|r| !r.into_inner().events.is_empty())
        }
    })
    .await;
}

fn reason(r: &AuthorizeResponse) -> DenialReason {
    DenialReason::try_from(r.reason).unwrap()
}

async fn every_denial_reason_and_the_path_that_grants(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut vault = client(&data, &sandbox, "vault").await;

    let client_id = new_client(&mut admin).await;
    let partner = cleared(&mut admin, "partner@firm.example", "partner").await;
    let matter = new_matter(&mut admin, &client_id, Some(&partner), "family").await;

    // Allowed: an assigned, cleared associate; the path is explained.
    let associate = cleared(&mut admin, "associate@firm.example", "associate").await;
    assign(&mut admin, &matter, &associate).await;
    let ok = decide(&mut vault, &associate, "client_data.read", &matter).await;
    assert!(ok.allowed, "{ok:?}");
    assert_eq!(ok.granted_by_role, "associate");
    assert_eq!(
        AccessPath::try_from(ok.access_path).unwrap(),
        AccessPath::Assignment
    );
    let by_partner = decide(&mut vault, &partner, "client_data.read", &matter).await;
    assert_eq!(
        AccessPath::try_from(by_partner.access_path).unwrap(),
        AccessPath::ResponsibleAttorney
    );

    // Each denial reason, each from real directory data.
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        reason(&decide(&mut vault, &unknown, "client_data.read", &matter).await),
        DenialReason::UnknownStaff
    );
    assert_eq!(
        reason(&decide(&mut vault, &associate, "client_data.read", &unknown).await),
        DenialReason::UnknownResource
    );
    assert_eq!(
        reason(&decide(&mut vault, &associate, "client_data.shred", &matter).await),
        DenialReason::NoRolePermission
    );
    let no_nda = staff(&mut admin, "new@firm.example", "associate").await;
    assert_eq!(
        reason(&decide(&mut vault, &no_nda, "client_data.read", &matter).await),
        DenialReason::NdaMissing
    );
    let lapsed = staff(&mut admin, "lapsed@firm.example", "associate").await;
    attest(&mut admin, &lapsed, AttestationKind::Nda, 400, 365, 0).await;
    assert_eq!(
        reason(&decide(&mut vault, &lapsed, "client_data.read", &matter).await),
        DenialReason::NdaExpired
    );
    attest(&mut admin, &lapsed, AttestationKind::Nda, 1, 365, 0).await;
    assert_eq!(
        reason(&decide(&mut vault, &lapsed, "client_data.read", &matter).await),
        DenialReason::TrainingMissing
    );
    attest(&mut admin, &lapsed, AttestationKind::Training, 1, 365, 50).await;
    assert_eq!(
        reason(&decide(&mut vault, &lapsed, "client_data.read", &matter).await),
        DenialReason::TrainingMissing,
        "a failed assessment does not count"
    );
    // The only passed training has expired.
    attest(&mut admin, &lapsed, AttestationKind::Training, 400, 365, 95).await;
    assert_eq!(
        reason(&decide(&mut vault, &lapsed, "client_data.read", &matter).await),
        DenialReason::TrainingExpired
    );
    let paralegal = cleared(&mut admin, "paralegal@firm.example", "paralegal").await;
    assert_eq!(
        reason(&decide(&mut vault, &paralegal, "client_data.read", &matter).await),
        DenialReason::NotAssigned
    );

    // Break-glass opens access without an assignment...
    let glass = admin
        .open_break_glass(OpenBreakGlassRequest {
            staff_id: paralegal.clone(),
            matter_id: matter.clone(),
            justification: "urgent hearing tomorrow morning, partner unreachable".into(),
            duration_minutes: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(glass.expire_time.is_some());
    let via_glass = decide(&mut vault, &paralegal, "client_data.read", &matter).await;
    assert_eq!(
        AccessPath::try_from(via_glass.access_path).unwrap(),
        AccessPath::BreakGlass
    );

    // ...but a wall beats break-glass, assignment and responsibility alike.
    admin
        .create_wall(CreateWallRequest {
            screened_staff_ids: vec![paralegal.clone(), associate.clone(), partner.clone()],
            client_ids: vec![client_id.clone()],
            matter_ids: vec![],
        })
        .await
        .unwrap();
    for who in [&paralegal, &associate, &partner] {
        assert_eq!(
            reason(&decide(&mut vault, who, "client_data.read", &matter).await),
            DenialReason::BehindWall
        );
    }

    // A revoked assignment and a disabled account take effect at once.
    let other = cleared(&mut admin, "other@firm.example", "associate").await;
    let a = assign(&mut admin, &matter, &other).await;
    assert!(
        decide(&mut vault, &other, "client_data.read", &matter)
            .await
            .allowed
    );
    let before_revocation = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    admin
        .revoke_assignment(RevokeAssignmentRequest { assignment_id: a })
        .await
        .unwrap();
    // Point in time: the decision as it stood before the revocation, and now.
    let explain = |at: Option<chrono::DateTime<chrono::Utc>>| {
        let mut admin = admin.clone();
        let matter = matter.clone();
        async move {
            admin
                .explain_matter_access(ExplainMatterAccessRequest {
                    matter_id: matter,
                    time: at.and_then(ts),
                    permission: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .entries
        }
    };
    let then = explain(Some(before_revocation)).await;
    let entry = then
        .iter()
        .find(|e| e.staff_id == other)
        .expect("the assigned associate is listed");
    assert!(entry.allowed);
    assert_eq!(
        AccessPath::try_from(entry.access_path).unwrap(),
        AccessPath::Assignment
    );
    let now = explain(None).await;
    let entry = now.iter().find(|e| e.staff_id == other).unwrap();
    assert_eq!(
        DenialReason::try_from(entry.reason).unwrap(),
        DenialReason::NotAssigned
    );
    // Everyone behind the wall is explained as such.
    let walled: Vec<_> = now
        .iter()
        .filter(|e| [&paralegal, &associate, &partner].contains(&&e.staff_id))
        .collect();
    assert_eq!(walled.len(), 3);
    assert!(
        walled
            .iter()
            .all(|e| DenialReason::try_from(e.reason).unwrap() == DenialReason::BehindWall)
    );
    assert_eq!(
        reason(&decide(&mut vault, &other, "client_data.read", &matter).await),
        DenialReason::NotAssigned
    );
    admin
        .disable_staff_member(DisableStaffMemberRequest {
            staff_id: other.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        reason(&decide(&mut vault, &other, "client_data.read", &matter).await),
        DenialReason::AccountDisabled
    );

    // Decisions reach the audit log, denials with their reason.
    let audit = common::service_db(&data, ServiceName::Audit).await;
    let store = EventStore::new(audit.clone());
    common::eventually(
        Duration::from_secs(20),
        "decisions in the audit log",
        || async {
            let events: Vec<AuditEvent> = store
                .range(0, 10_000)
                .await
                .unwrap()
                .into_iter()
                .map(|e| AuditEvent::decode(e.payload.as_slice()).unwrap())
                .collect();
            events
                .iter()
                .any(|e| e.action == "identity.authorize" && e.reason == "behind_wall")
                && events
                    .iter()
                    .any(|e| e.action == "identity.break_glass.opened")
        },
    )
    .await;
    audit.close().await;
    sandbox.stop().await;
}

async fn bad_input_is_named_and_management_is_for_admins(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let fields = |s: tonic::Status| common::violated_fields(&s);

    let err = admin
        .create_staff_member(CreateStaffMemberRequest {
            request_id: "not-a-uuid".into(),
            email: "nobody".into(),
            display_name: String::new(),
            roles: vec!["partner".into(), "wizard".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(
        fields(err),
        ["request_id", "email", "display_name", "roles[1]"]
    );

    let err = admin
        .authorize(AuthorizeRequest {
            staff_id: uuid::Uuid::now_v7().to_string(),
            permission: "client_data.read".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["matter_id"]);

    let err = admin
        .open_break_glass(OpenBreakGlassRequest {
            staff_id: uuid::Uuid::now_v7().to_string(),
            matter_id: uuid::Uuid::now_v7().to_string(),
            justification: "because".into(),
            duration_minutes: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["justification", "duration_minutes"]);

    let err = admin
        .create_matter(CreateMatterRequest {
            client_id: uuid::Uuid::now_v7().to_string(),
            practice_area: " ".into(),
            jurisdiction: "New York".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["practice_area", "jurisdiction"]);
    let err = admin
        .get_matters(GetMattersRequest {
            matter_ids: vec!["nope".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["matter_ids[0]"]);

    let err = admin
        .record_attestation(RecordAttestationRequest {
            staff_id: uuid::Uuid::now_v7().to_string(),
            kind: AttestationKind::Unspecified as i32,
            version: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["kind", "complete_time", "expire_time"]);

    // Unknown references are NOT_FOUND and change nothing.
    let err = admin
        .create_matter(CreateMatterRequest {
            request_id: String::new(),
            client_id: uuid::Uuid::now_v7().to_string(),
            responsible_attorney_id: String::new(),
            practice_area: "tax".into(),
            jurisdiction: "US-NY".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // A retried create with the same request_id returns the first result.
    let key = uuid::Uuid::now_v7().to_string();
    let first = admin
        .create_client(CreateClientRequest {
            request_id: key.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .client_id;
    let again = admin
        .create_client(CreateClientRequest { request_id: key })
        .await
        .unwrap()
        .into_inner()
        .client_id;
    assert_eq!(first, again);

    // Services may ask for decisions but not manage the directory.
    let mut vault = client(&data, &sandbox, "vault").await;
    let denied = vault
        .create_client(CreateClientRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let denied = vault
        .get_matters(GetMattersRequest {
            matter_ids: vec![uuid::Uuid::now_v7().to_string()],
        })
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        tonic::Code::PermissionDenied,
        "retention's only"
    );
    let decision = vault
        .authorize(AuthorizeRequest {
            staff_id: uuid::Uuid::now_v7().to_string(),
            permission: "audit.read".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(&decision), DenialReason::UnknownStaff);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_denial_reason_and_the_path_that_grants() {
    every_denial_reason_and_the_path_that_grants(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_denial_reason_and_the_path_that_grants() {
    every_denial_reason_and_the_path_that_grants(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_input_is_named_and_management_is_for_admins() {
    bad_input_is_named_and_management_is_for_admins(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_input_is_named_and_management_is_for_admins() {
    bad_input_is_named_and_management_is_for_admins(Backend::Postgres).await;
}

fn last_code(data: &SandboxData) -> String {
    let text = std::fs::read_to_string(data.path().join("notifications.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let body = line["body"].as_str().unwrap();
    body.split_whitespace()
        .find(|w| w.len() == 6 && w.chars().all(|c| c.is_ascii_digit()))
        .unwrap()
        .to_owned()
}

async fn clients_prove_who_they_are_with_a_one_time_code(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut intake = client(&data, &sandbox, "intake").await;
    let client_id = new_client(&mut admin).await;
    let start = |channel: ContactChannel, address: &str| StartClientVerificationRequest {
        client_id: client_id.clone(),
        channel: channel as i32,
        contact_address: address.into(),
        reference: "invitation-42".into(),
    };
    let reason_of = |s: &tonic::Status| {
        s.get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .unwrap_or_default()
    };

    let v = intake
        .start_client_verification(start(ContactChannel::Email, "jane@example.org"))
        .await
        .unwrap()
        .into_inner();
    let code = last_code(&data);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let err = intake
        .complete_client_verification(CompleteClientVerificationRequest {
            verification_id: v.verification_id.clone(),
            code: wrong.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&err), "invalid_code");
    let done = intake
        .complete_client_verification(CompleteClientVerificationRequest {
            verification_id: v.verification_id.clone(),
            code: code.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.verification_level, 1);

    // The client token verifies as a client token, bound to its purpose, and
    // is no staff token.
    let jwks = admin
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let verifier =
        confidant_runtime::auth::TokenVerifier::from_jwks(&jwks.jwks_json, &jwks.issuer).unwrap();
    let claims = verifier.verify_client(&done.client_token).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.reference.as_str(), claims.level),
        (client_id.as_str(), "invitation-42", 1)
    );
    assert!(verifier.verify(&done.client_token).is_err());

    // A code works once.
    let replay = intake
        .complete_client_verification(CompleteClientVerificationRequest {
            verification_id: v.verification_id.clone(),
            code,
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&replay), "code_used");

    // A document check raises the level.
    let staff_id = admin
        .create_staff_member(CreateStaffMemberRequest {
            request_id: String::new(),
            email: "checker@firm.example".into(),
            display_name: "Checker".into(),
            roles: vec!["paralegal".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .staff_id;
    let level = admin
        .record_identity_document_check(RecordIdentityDocumentCheckRequest {
            client_id: client_id.clone(),
            document_type: "passport".into(),
            issuing_country: "GB".into(),
            document_number: "123 456 789".into(),
            verified_by_staff_id: staff_id,
        })
        .await
        .unwrap()
        .into_inner()
        .verification_level;
    assert_eq!(level, 2);

    // Five wrong guesses spend a code, even with the right one last.
    let v = intake
        .start_client_verification(start(ContactChannel::Phone, "+44 20 7946 0000"))
        .await
        .unwrap()
        .into_inner();
    let code = last_code(&data);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        intake
            .complete_client_verification(CompleteClientVerificationRequest {
                verification_id: v.verification_id.clone(),
                code: wrong.into(),
            })
            .await
            .unwrap_err();
    }
    let spent = intake
        .complete_client_verification(CompleteClientVerificationRequest {
            verification_id: v.verification_id.clone(),
            code,
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(&spent), "invalid_code");

    // Codes are rate limited per client (two sent so far; five an hour).
    for _ in 0..3 {
        intake
            .start_client_verification(start(ContactChannel::Email, "jane@example.org"))
            .await
            .unwrap();
    }
    let limited = intake
        .start_client_verification(start(ContactChannel::Email, "jane@example.org"))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), tonic::Code::ResourceExhausted);

    // Bad input is named; staff services cannot start verifications.
    let err = intake
        .start_client_verification(StartClientVerificationRequest {
            client_id: "nope".into(),
            channel: ContactChannel::Unspecified as i32,
            contact_address: "x".into(),
            reference: String::new(),
        })
        .await
        .unwrap_err();
    let fields: Vec<_> = err
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|f| f.field.clone())
        .collect();
    assert_eq!(fields, ["client_id", "channel"]);
    let mut vault = client(&data, &sandbox, "vault").await;
    let denied = vault
        .start_client_verification(start(ContactChannel::Email, "jane@example.org"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_clients_prove_who_they_are_with_a_one_time_code() {
    clients_prove_who_they_are_with_a_one_time_code(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_clients_prove_who_they_are_with_a_one_time_code() {
    clients_prove_who_they_are_with_a_one_time_code(Backend::Postgres).await;
}

async fn access_reviews_certify_or_revoke_every_grant(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut vault = client(&data, &sandbox, "vault").await;
    let client_id = new_client(&mut admin).await;
    let matter = new_matter(&mut admin, &client_id, None, "probate").await;
    let associate = cleared(&mut admin, "reviewed@firm.example", "associate").await;
    assign(&mut admin, &matter, &associate).await;
    assert!(
        decide(&mut vault, &associate, "client_data.read", &matter)
            .await
            .allowed
    );

    let deadline = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let started = admin
        .start_access_review(StartAccessReviewRequest {
            name: "2026 Q4".into(),
            deadline: ts(deadline),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        started.item_count, 2,
        "one assignment and one role membership"
    );
    let lister = admin.clone();
    let list = |pending_only: bool| {
        let mut admin = lister.clone();
        let campaign_id = started.campaign_id.clone();
        async move {
            admin
                .list_access_review_items(ListAccessReviewItemsRequest {
                    campaign_id,
                    pending_only,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let items = list(false).await;
    // The items come in pages; every page counts the whole campaign.
    common::check_pages(0, 1, |page_size, page_token| {
        let (mut admin, campaign_id) = (admin.clone(), started.campaign_id.clone());
        async move {
            let r = admin
                .list_access_review_items(ListAccessReviewItemsRequest {
                    campaign_id,
                    page_size,
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            assert_eq!(r.pending_count, 2, "counted over the whole campaign");
            Ok((r.items, r.next_page_token))
        }
    })
    .await;
    let assignment = items
        .items
        .iter()
        .find(|i| i.kind == "assignment")
        .unwrap()
        .clone();
    let role = items
        .items
        .iter()
        .find(|i| i.kind == "role")
        .unwrap()
        .clone();
    assert_eq!(
        (assignment.subject.as_str(), role.subject.as_str()),
        (matter.as_str(), "associate")
    );

    // Revoking takes effect at once.
    admin
        .decide_access_review_item(DecideAccessReviewItemRequest {
            item_id: assignment.item_id.clone(),
            decision: ReviewDecision::Revoke as i32,
        })
        .await
        .unwrap();
    assert_eq!(
        reason(&decide(&mut vault, &associate, "client_data.read", &matter).await),
        DenialReason::NotAssigned
    );
    let again = admin
        .decide_access_review_item(DecideAccessReviewItemRequest {
            item_id: assignment.item_id.clone(),
            decision: ReviewDecision::Certify as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);
    let bad = admin
        .decide_access_review_item(DecideAccessReviewItemRequest {
            item_id: role.item_id.clone(),
            decision: ReviewDecision::Unspecified as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // The undecided role membership becomes overdue after the deadline.
    let before = list(true).await;
    assert_eq!((before.pending_count, before.overdue_count), (1, 0));
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let after = list(true).await;
    assert_eq!((after.pending_count, after.overdue_count), (1, 1));
    assert!(after.items[0].overdue);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_access_reviews_certify_or_revoke_every_grant() {
    access_reviews_certify_or_revoke_every_grant(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_access_reviews_certify_or_revoke_every_grant() {
    access_reviews_certify_or_revoke_every_grant(Backend::Postgres).await;
}

async fn staff_review_the_grants_they_are_responsible_for(backend: Backend) {
    use common::directory::{as_staff, staff_token};
    use confidant_proto::audit::v1::ListEventsRequest;
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    // Staff review through the firm's application, by their tokens.
    let mut app = client(&data, &sandbox, "firm-app").await;
    let client_id = new_client(&mut admin).await;
    let partner = cleared(&mut admin, "responsible@firm.example", "partner").await;
    let associate = cleared(&mut admin, "assistant@firm.example", "associate").await;
    let officer = cleared(&mut admin, "officer@firm.example", "security_officer").await;
    let matter = new_matter(&mut admin, &client_id, Some(&partner), "lease").await;
    assign(&mut admin, &matter, &associate).await;
    assign(&mut admin, &matter, &partner).await;
    let token = |id: &str, role: &str| staff_token(&data, id, &[role]);
    let (partner_token, associate_token, officer_token) = (
        token(&partner, "partner"),
        token(&associate, "associate"),
        token(&officer, "security_officer"),
    );

    // Only a reviews.manage holder (or an admin tool) opens a campaign.
    let start = |name: &str| StartAccessReviewRequest {
        name: name.into(),
        deadline: ts(chrono::Utc::now() + chrono::Duration::days(14)),
    };
    let refused = app
        .start_access_review(as_staff(&partner_token, start("by a partner")))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), common::error_reason(&refused).as_str()),
        (tonic::Code::PermissionDenied, "not_reviewer")
    );
    let campaign = app
        .start_access_review(as_staff(&officer_token, start("2026 Q4")))
        .await
        .unwrap()
        .into_inner()
        .campaign_id;
    let list = |token: &str| {
        let mut app = app.clone();
        let request = as_staff(
            token,
            ListAccessReviewItemsRequest {
                campaign_id: campaign.clone(),
                ..Default::default()
            },
        );
        async move {
            app.list_access_review_items(request)
                .await
                .unwrap()
                .into_inner()
        }
    };
    let everything = list(&officer_token).await.items;
    let find = |kind: &str, staff: &str| {
        everything
            .iter()
            .find(|i| i.kind == kind && i.staff_id == staff)
            .unwrap()
            .item_id
            .clone()
    };
    let associate_assignment = find("assignment", &associate);
    let partner_assignment = find("assignment", &partner);
    let associate_role = find("role", &associate);
    let officer_role = find("role", &officer);

    // The responsible partner sees the assignments to their matter but
    // their own, and the associate (responsible for nothing) sees nothing.
    let partners: Vec<String> = list(&partner_token)
        .await
        .items
        .into_iter()
        .map(|i| i.item_id)
        .collect();
    assert_eq!(partners, vec![associate_assignment.clone()]);
    assert!(list(&associate_token).await.items.is_empty());

    let verdict = |token: &str, item: &str, decision: ReviewDecision| {
        let mut app = app.clone();
        let request = as_staff(
            token,
            DecideAccessReviewItemRequest {
                item_id: item.to_owned(),
                decision: decision as i32,
            },
        );
        async move { app.decide_access_review_item(request).await }
    };
    for (token, item, reason) in [
        (&partner_token, &partner_assignment, "own_grant"),
        (&officer_token, &officer_role, "own_grant"),
        (&partner_token, &associate_role, "not_reviewer"),
        (&associate_token, &partner_assignment, "not_reviewer"),
    ] {
        let err = verdict(token, item, ReviewDecision::Certify)
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), common::error_reason(&err)),
            (tonic::Code::PermissionDenied, reason.to_owned()),
            "{item}"
        );
    }
    // A certificate without a token is not a reviewer.
    let err = app
        .clone()
        .decide_access_review_item(DecideAccessReviewItemRequest {
            item_id: associate_assignment.clone(),
            decision: ReviewDecision::Certify as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    verdict(
        &partner_token,
        &associate_assignment,
        ReviewDecision::Certify,
    )
    .await
    .unwrap();
    verdict(&officer_token, &partner_assignment, ReviewDecision::Revoke)
        .await
        .unwrap();
    let decided: Vec<(String, String)> = list(&officer_token)
        .await
        .items
        .into_iter()
        .filter(|i| !i.decided_by.is_empty())
        .map(|i| (i.item_id, i.decided_by))
        .collect();
    assert_eq!(decided.len(), 2);
    assert!(decided.contains(&(associate_assignment.clone(), partner.clone())));
    assert!(decided.contains(&(partner_assignment.clone(), officer.clone())));

    // The audit log names the reviewer, not the application.
    until_logged(
        &data,
        &sandbox,
        ListEventsRequest {
            actor_id: partner.clone(),
            action: "identity.review.decided".into(),
            ..Default::default()
        },
        "the verdict in the audit log",
    )
    .await;
    // A revocation by review is logged as the revocation it is.
    until_logged(
        &data,
        &sandbox,
        ListEventsRequest {
            actor_id: officer.clone(),
            action: "identity.assignment.revoked".into(),
            ..Default::default()
        },
        "the revoked assignment in the audit log",
    )
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_staff_review_the_grants_they_are_responsible_for() {
    staff_review_the_grants_they_are_responsible_for(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_staff_review_the_grants_they_are_responsible_for() {
    staff_review_the_grants_they_are_responsible_for(Backend::Postgres).await;
}

async fn walls_are_certified_from_the_audit_log(backend: Backend) {
    use confidant_proto::audit::v1::ListEventsRequest;
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut vault = client(&data, &sandbox, "vault").await;
    let client_id = new_client(&mut admin).await;
    let matter = new_matter(&mut admin, &client_id, None, "m&a").await;
    let associate = cleared(&mut admin, "screened@firm.example", "associate").await;
    assign(&mut admin, &matter, &associate).await;
    let before_access = chrono::Utc::now();
    assert!(
        decide(&mut vault, &associate, "client_data.read", &matter)
            .await
            .allowed
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let wall = admin
        .create_wall(CreateWallRequest {
            screened_staff_ids: vec![associate.clone()],
            client_ids: vec![],
            matter_ids: vec![matter.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .wall_id;
    let walled_from = chrono::Utc::now();
    assert_eq!(
        reason(&decide(&mut vault, &associate, "client_data.read", &matter).await),
        DenialReason::BehindWall
    );

    // Wait until the allowed decision has reached the audit log.
    until_logged(
        &data,
        &sandbox,
        ListEventsRequest {
            actor_id: associate.clone(),
            outcome: confidant_proto::audit::v1::Outcome::Denied as i32,
            ..Default::default()
        },
        "the decision in the audit log",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // a checkpoint

    // The period with the access cannot be certified...
    let err = admin
        .certify_wall(CertifyWallRequest {
            wall_id: wall.clone(),
            start_time: ts(before_access - chrono::Duration::seconds(1)),
            end_time: ts(chrono::Utc::now()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(common::error_reason(&err), "accesses_found");

    // ...the period since the wall can, and the certification verifies.
    let cert = admin
        .certify_wall(CertifyWallRequest {
            wall_id: wall.clone(),
            start_time: ts(walled_from),
            end_time: ts(chrono::Utc::now()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cert.audit_tree_size > 0);
    // Signed by the long-lived certificate key, not a token key (which
    // rotates away within hours).
    let jwks = admin
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let tokens =
        confidant_runtime::auth::TokenVerifier::from_jwks(&jwks.jwks_json, &jwks.issuer).unwrap();
    assert!(tokens.verify_document(&cert.certification_jws).is_err());
    let keys = admin
        .get_certificate_keys(GetCertificateKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let verifier =
        confidant_runtime::auth::TokenVerifier::from_jwks(&keys.jwks_json, &jwks.issuer).unwrap();
    // The key is what `confidant keys public` says to publish of the file.
    let published = common::published_key(&data.path().join("identity-certificates.key"), &[]);
    let announced: serde_json::Value = serde_json::from_str(&keys.jwks_json).unwrap();
    assert_eq!(published["jwk"], announced["keys"][0]);
    let doc = verifier.verify_document(&cert.certification_jws).unwrap();
    assert_eq!(doc["type"], "wall-certification");
    assert_eq!(doc["wall_id"], wall.as_str());
    assert_eq!(doc["successful_accesses"], 0);
    assert_eq!(doc["screened_staff"][0], associate.as_str());
    let mut tampered = cert.certification_jws.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    assert!(verifier.verify_document(&tampered).is_err());
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_walls_are_certified_from_the_audit_log() {
    walls_are_certified_from_the_audit_log(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_walls_are_certified_from_the_audit_log() {
    walls_are_certified_from_the_audit_log(Backend::Postgres).await;
}

async fn roles_lapse_at_their_expiry_and_revoke_at_once(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut audit_svc = client(&data, &sandbox, "audit").await;
    let staff_id = staff(&mut admin, "temp-auditor@firm.example", "paralegal").await;
    let can_read_log = |c: &mut Client| {
        let mut c = c.clone();
        let staff_id = staff_id.clone();
        async move {
            c.authorize(AuthorizeRequest {
                staff_id,
                permission: "audit.read".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    assert_eq!(
        reason(&can_read_log(&mut audit_svc).await),
        DenialReason::NoRolePermission
    );

    admin
        .grant_role(GrantRoleRequest {
            staff_id: staff_id.clone(),
            role: "auditor".into(),
            expire_time: ts(chrono::Utc::now() + chrono::Duration::milliseconds(1200)),
        })
        .await
        .unwrap();
    let granted = can_read_log(&mut audit_svc).await;
    assert!(granted.allowed);
    assert_eq!(granted.granted_by_role, "auditor");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        reason(&can_read_log(&mut audit_svc).await),
        DenialReason::NoRolePermission,
        "the membership lapsed by itself"
    );

    admin
        .grant_role(GrantRoleRequest {
            staff_id: staff_id.clone(),
            role: "auditor".into(),
            expire_time: None,
        })
        .await
        .unwrap();
    assert!(can_read_log(&mut audit_svc).await.allowed);
    admin
        .revoke_role(RevokeRoleRequest {
            staff_id: staff_id.clone(),
            role: "auditor".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        reason(&can_read_log(&mut audit_svc).await),
        DenialReason::NoRolePermission
    );

    let err = admin
        .grant_role(GrantRoleRequest {
            staff_id: staff_id.clone(),
            role: "wizard".into(),
            expire_time: ts(chrono::Utc::now() - chrono::Duration::hours(1)),
        })
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["role", "expire_time"]);
    let missing = admin
        .revoke_role(RevokeRoleRequest {
            staff_id,
            role: "auditor".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_roles_lapse_at_their_expiry_and_revoke_at_once() {
    roles_lapse_at_their_expiry_and_revoke_at_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_roles_lapse_at_their_expiry_and_revoke_at_once() {
    roles_lapse_at_their_expiry_and_revoke_at_once(Backend::Postgres).await;
}

async fn a_wall_exception_lets_one_through_for_one_matter_until_it_ends(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut vault = client(&data, &sandbox, "vault").await;
    let client_id = new_client(&mut admin).await;
    let matter = new_matter(&mut admin, &client_id, None, "m&a").await;
    let other_matter = new_matter(&mut admin, &client_id, None, "tax").await;
    let elsewhere = new_client(&mut admin).await;
    let elsewhere_matter = new_matter(&mut admin, &elsewhere, None, "tax").await;
    let associate = cleared(&mut admin, "screened@firm.example", "associate").await;
    let bystander = cleared(&mut admin, "other@firm.example", "associate").await;
    for m in [&matter, &other_matter] {
        assign(&mut admin, m, &associate).await;
    }
    let wall = admin
        .create_wall(CreateWallRequest {
            screened_staff_ids: vec![associate.clone()],
            client_ids: vec![client_id.clone()],
            matter_ids: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .wall_id;
    let behind = |r: &AuthorizeResponse| reason(r) == DenialReason::BehindWall;
    assert!(behind(
        &decide(&mut vault, &associate, "client_data.read", &matter).await
    ));

    let grant = |staff: &str, matter: &str, hours: i64| GrantWallExceptionRequest {
        wall_id: wall.clone(),
        staff_id: staff.into(),
        matter_id: matter.into(),
        reason: "clients' informed consent of 2026-11-20".into(),
        expire_time: ts(chrono::Utc::now() + chrono::Duration::hours(hours)),
    };
    // Bad input, field by field; only the wall's own staff and matters.
    let err = admin
        .grant_wall_exception(GrantWallExceptionRequest {
            wall_id: "wall".into(),
            staff_id: String::new(),
            matter_id: matter.clone(),
            reason: String::new(),
            expire_time: ts(chrono::Utc::now() - chrono::Duration::hours(1)),
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = err
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["wall_id", "staff_id", "reason", "expire_time"]);
    for (staff, m) in [(&bystander, &matter), (&associate, &elsewhere_matter)] {
        let err = admin
            .grant_wall_exception(grant(staff, m, 24))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    }
    // Non-admins cannot grant one.
    let err = vault
        .grant_wall_exception(grant(&associate, &matter, 24))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // Through the wall for that matter only, until revoked.
    let exception = admin
        .grant_wall_exception(grant(&associate, &matter, 24))
        .await
        .unwrap()
        .into_inner()
        .exception_id;
    assert!(
        decide(&mut vault, &associate, "client_data.read", &matter)
            .await
            .allowed
    );
    assert!(behind(
        &decide(&mut vault, &associate, "client_data.read", &other_matter).await
    ));
    admin
        .revoke_wall_exception(RevokeWallExceptionRequest {
            exception_id: exception.clone(),
        })
        .await
        .unwrap();
    assert!(behind(
        &decide(&mut vault, &associate, "client_data.read", &matter).await
    ));
    let err = admin
        .revoke_wall_exception(RevokeWallExceptionRequest {
            exception_id: exception,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_wall_exception_lets_one_through_for_one_matter_until_it_ends() {
    a_wall_exception_lets_one_through_for_one_matter_until_it_ends(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_wall_exception_lets_one_through_for_one_matter_until_it_ends() {
    a_wall_exception_lets_one_through_for_one_matter_until_it_ends(Backend::Postgres).await;
}

/// The directory from the command line: staff, client, matter, assignment,
/// an access review, unassignment, a wall, an exception and its revocation,
/// the point-in-time explanation, a wall certification, and the decision as
/// it changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_directory_from_the_command_line() {
    let data = SandboxData::new(Backend::Sqlite).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let run = |args: &[&str]| {
        common::directory_command(&data, &sandbox)
            .args(args)
            .output()
            .expect("confidant runs")
    };
    let cli = |args: &[&str]| -> serde_json::Value {
        let out = run(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {text}");
        serde_json::from_str(text.trim()).expect("one JSON line")
    };
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap().to_owned();
    let staff_id = text(
        &cli(&[
            "add-staff",
            "--email",
            "cli@firm.example",
            "--name",
            "Cli Staff",
            "--role",
            "associate",
        ]),
        "staff_id",
    );
    let completed = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let expires = (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc3339();
    cli(&[
        "attest",
        "--staff",
        &staff_id,
        "--kind",
        "nda",
        "--version",
        "2026-1",
        "--completed",
        &completed,
        "--expires",
        &expires,
    ]);
    cli(&[
        "attest",
        "--staff",
        &staff_id,
        "--kind",
        "training",
        "--version",
        "2026-1",
        "--completed",
        &completed,
        "--expires",
        &expires,
        "--score",
        "90",
        "--pass-mark",
        "80",
    ]);
    let client_id = text(&cli(&["add-client"]), "client_id");
    let matter_id = text(
        &cli(&[
            "add-matter",
            "--client",
            &client_id,
            "--area",
            "probate",
            "--jurisdiction",
            "GB",
        ]),
        "matter_id",
    );
    let decide = |expected: bool| {
        let d = cli(&[
            "decide",
            "--staff",
            &staff_id,
            "--permission",
            "client_data.read",
            "--matter",
            &matter_id,
        ]);
        assert_eq!(d["allowed"], expected, "{d}");
        d
    };
    assert_eq!(decide(false)["reason"], "DENIAL_REASON_NOT_ASSIGNED");
    cli(&[
        "break-glass",
        "--staff",
        &staff_id,
        "--matter",
        &matter_id,
        "--justification",
        "hearing at nine, partner unreachable",
        "--minutes",
        "30",
    ]);
    assert_eq!(decide(true)["access_path"], "ACCESS_PATH_BREAK_GLASS");
    cli(&["assign", "--matter", &matter_id, "--staff", &staff_id]);
    decide(true);

    // An access review: every grant is an item; revoking the assignment
    // ends it at once (the break-glass grant still stands, so the path
    // changes from the assignment back to break-glass).
    let deadline = (chrono::Utc::now() + chrono::Duration::days(7)).to_rfc3339();
    let campaign = cli(&[
        "review-start",
        "--name",
        "cli review",
        "--deadline",
        &deadline,
    ]);
    assert!(campaign["items"].as_i64().unwrap() >= 2, "{campaign}");
    let campaign_id = text(&campaign, "campaign_id");
    let items = cli(&["review-items", "--campaign", &campaign_id, "--pending"]);
    let pending = items["pending"].as_i64().unwrap();
    let ours: Vec<&serde_json::Value> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["staff_id"] == staff_id.as_str())
        .collect();
    let assignment = ours
        .iter()
        .find(|i| i["kind"] == "assignment" && i["subject"] == matter_id.as_str())
        .expect("the assignment is an item");
    let role = ours
        .iter()
        .find(|i| i["kind"] == "role" && i["subject"] == "associate")
        .expect("the role is an item");
    assert_eq!(decide(true)["access_path"], "ACCESS_PATH_ASSIGNMENT");
    cli(&[
        "review-decide",
        "--item",
        assignment["item_id"].as_str().unwrap(),
        "--decision",
        "revoke",
    ]);
    cli(&[
        "review-decide",
        "--item",
        role["item_id"].as_str().unwrap(),
        "--decision",
        "certify",
    ]);
    assert_eq!(decide(true)["access_path"], "ACCESS_PATH_BREAK_GLASS");
    let after = cli(&["review-items", "--campaign", &campaign_id]);
    assert_eq!(after["pending"].as_i64().unwrap(), pending - 2, "{after}");
    assert_eq!(after["overdue"], 0);
    let decided: Vec<&str> = after["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["staff_id"] == staff_id.as_str())
        .map(|i| i["decision"].as_str().unwrap())
        .collect();
    assert!(
        decided.contains(&"revoke") && decided.contains(&"certify"),
        "{after}"
    );
    let out = run(&["review-decide", "--item", "x", "--decision", "maybe"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("certify or revoke"));

    // Unassign ends an assignment at once.
    let assignment_id = text(
        &cli(&["assign", "--matter", &matter_id, "--staff", &staff_id]),
        "assignment_id",
    );
    assert_eq!(decide(true)["access_path"], "ACCESS_PATH_ASSIGNMENT");
    cli(&["unassign", "--assignment", &assignment_id]);
    assert_eq!(decide(true)["access_path"], "ACCESS_PATH_BREAK_GLASS");
    cli(&["assign", "--matter", &matter_id, "--staff", &staff_id]);
    // The command line gives times to the second: keep a whole second on
    // either side of the moment asked about below.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let before_wall = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let wall_id = text(
        &cli(&["add-wall", "--staff", &staff_id, "--client", &client_id]),
        "wall_id",
    );
    assert_eq!(decide(false)["reason"], "DENIAL_REASON_BEHIND_WALL");
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let exception_id = text(
        &cli(&[
            "wall-exception",
            "--wall",
            &wall_id,
            "--staff",
            &staff_id,
            "--matter",
            &matter_id,
            "--reason",
            "clients' informed consent",
            "--until",
            &until,
        ]),
        "exception_id",
    );
    assert_eq!(decide(true)["access_path"], "ACCESS_PATH_ASSIGNMENT");
    // The explanation names the exception that lets the staff member in.
    let explained = cli(&["explain", "--matter", &matter_id]);
    let entry = explained["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["staff_id"] == staff_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        entry["wall_exception_ids"],
        serde_json::json!([exception_id]),
        "{entry}"
    );
    cli(&["revoke-wall-exception", "--exception", &exception_id]);
    assert_eq!(decide(false)["reason"], "DENIAL_REASON_BEHIND_WALL");

    // Point in time: before the wall the staff member was in; now not.
    let explain = |at: Option<String>| {
        let mut args = vec!["explain".to_owned(), "--matter".into(), matter_id.clone()];
        if let Some(at) = at {
            args.extend(["--at".into(), at]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = cli(&args);
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["staff_id"] == staff_id.as_str())
            .cloned()
            .expect("the staff member is explained")
    };
    let then = explain(Some(before_wall.to_rfc3339()));
    assert_eq!(then["allowed"], true, "{then}");
    let now = explain(None);
    assert_eq!(now["allowed"], false, "{now}");
    assert_eq!(now["reason"], "DENIAL_REASON_BEHIND_WALL");

    // A certification of the wall for the time it has stood (no access
    // through it was recorded), signed by identity.
    let from = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let to = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    let cert = cli(&[
        "certify-wall",
        "--wall",
        &wall_id,
        "--from",
        &from,
        "--to",
        &to,
    ]);
    assert_eq!(
        cert["certification_jws"]
            .as_str()
            .unwrap()
            .split('.')
            .count(),
        3,
        "{cert}"
    );
    // It verifies through the service, and offline against saved keys;
    // an altered copy does not.
    let saved = tempfile::tempdir().unwrap();
    let (cert_file, keys_file, forged_file) = (
        saved.path().join("wall.json"),
        saved.path().join("keys.json"),
        saved.path().join("forged.jws"),
    );
    std::fs::write(&cert_file, cert.to_string()).unwrap();
    std::fs::write(&keys_file, cli(&["certificate-keys"]).to_string()).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let online = cli(&["verify-certification", "--file", &path(&cert_file)]);
    assert_eq!(online["certification"]["wall_id"], wall_id.as_str());
    let offline = cli(&[
        "verify-certification",
        "--file",
        &path(&cert_file),
        "--keys",
        &path(&keys_file),
    ]);
    assert_eq!(offline, online);
    // And against what `confidant keys public` printed of each key the firm
    // published (here an unrelated key too), one per line.
    let other_key = saved.path().join("other.key");
    confidant_runtime::keys::write_new_ed25519_key(&other_key).unwrap();
    let published_file = saved.path().join("published.jsonl");
    let printed = common::confidant()
        .args(["keys", "public", "--key"])
        .arg(&other_key)
        .arg("--key")
        .arg(data.path().join("identity-certificates.key"))
        .output()
        .unwrap();
    let (code, printed) = common::exit_and_output(printed);
    assert_eq!((code, printed.lines().count()), (0, 2), "{printed}");
    std::fs::write(&published_file, printed).unwrap();
    let published = cli(&[
        "verify-certification",
        "--file",
        &path(&cert_file),
        "--keys",
        &path(&published_file),
    ]);
    assert_eq!(published, online);
    std::fs::write(
        &published_file,
        format!("{}\n", common::published_key(&other_key, &[])),
    )
    .unwrap();
    let unpublished = run(&[
        "verify-certification",
        "--file",
        &path(&cert_file),
        "--keys",
        &path(&published_file),
    ]);
    assert!(!unpublished.status.success());
    let jws = cert["certification_jws"].as_str().unwrap();
    let (head, rest) = jws.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let forged_payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        serde_json::to_vec(
            &serde_json::json!({"type": "wall-certification", "successful_accesses": 0}),
        )
        .unwrap(),
    );
    std::fs::write(&forged_file, format!("{head}.{forged_payload}.{signature}")).unwrap();
    let forged = run(&[
        "verify-certification",
        "--file",
        &path(&forged_file),
        "--keys",
        &path(&keys_file),
    ]);
    assert!(!forged.status.success());
    assert!(String::from_utf8_lossy(&forged.stderr).contains("does not verify"));
    cli(&["disable-staff", "--staff", &staff_id]);
    assert_eq!(decide(false)["reason"], "DENIAL_REASON_ACCOUNT_DISABLED");
    sandbox.stop().await;
}
