//! The intake service through its gRPC API, with identity, vault and audit
//! beside it, on SQLite and on PostgreSQL with Redis and the KMS emulator:
//! privacy notices and form versions, invitations, a client verified by a
//! one-time code submitting answers that land in the vault (and nowhere
//! else), idempotent retries, every kind of bad input, and review.

mod common;

use common::directory::{as_staff, assign, cleared, new_client, new_matter, staff_token};
use common::{error_reason, violated_fields};
use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec};
use confidant_proto::audit::v1::ListEventsRequest;
use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_proto::identity::v1::{
    ClientNoticeKind, CompleteClientVerificationRequest, ContactChannel, NotifyClientRequest,
    RecordIdentityDocumentCheckRequest, StartClientVerificationRequest,
};
use confidant_proto::intake::v1 as pb;
use confidant_proto::intake::v1::intake_service_client::IntakeServiceClient;
use confidant_proto::vault::v1 as vault_pb;
use confidant_proto::vault::v1::vault_service_client::VaultServiceClient;
use confidant_runtime::ServiceName;
use confidant_runtime::client::PeerChannel;
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Backend;
use tonic::Code;

use common::channel;

fn field(
    name: &str,
    kind: pb::FieldKind,
    category: vault_pb::DataCategory,
    required: bool,
) -> pb::FormField {
    pb::FormField {
        name: name.into(),
        label: name.replace('_', " "),
        kind: kind as i32,
        required,
        sensitivity: pb::Sensitivity::Personal as i32,
        category: category as i32,
        ..Default::default()
    }
}

fn onboarding_fields() -> Vec<pb::FormField> {
    use vault_pb::DataCategory::{ContactDetails, Financial, IdentityDocument};
    let mut born = field("date_of_birth", pb::FieldKind::Date, IdentityDocument, true);
    born.max_value = "2008-12-31".into();
    let mut passport = field(
        "passport_number",
        pb::FieldKind::NationalId,
        IdentityDocument,
        true,
    );
    passport.pattern = "[A-Z0-9]{6,9}".into();
    passport.sensitivity = pb::Sensitivity::SpecialCategory as i32;
    let mut income = field("annual_income", pb::FieldKind::Number, Financial, false);
    income.min_value = "0".into();
    let mut contact_by = field("contact_by", pb::FieldKind::Choice, ContactDetails, true);
    contact_by.choices = vec!["email".into(), "post".into()];
    let mut name = field("full_name", pb::FieldKind::Text, ContactDetails, true);
    name.max_length = 100;
    let mut scan = field(
        "passport_scan",
        pb::FieldKind::File,
        IdentityDocument,
        false,
    );
    scan.media_types = vec!["application/pdf".into(), "image/png".into()];
    scan.max_file_bytes = 100_000;
    vec![
        name,
        field("email", pb::FieldKind::Email, ContactDetails, true),
        born,
        passport,
        income,
        contact_by,
        field("agree_terms", pb::FieldKind::Consent, ContactDetails, true),
        scan,
    ]
}

/// A PNG's signature and header chunk, then filler: enough for its type to
/// be recognised.
fn png(len: usize) -> Vec<u8> {
    let mut bytes = vec![
        0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D,
    ];
    bytes.extend_from_slice(b"IHDR");
    bytes.resize(len, 0x42);
    bytes
}

#[allow(clippy::too_many_arguments)]
async fn upload(
    intake: &mut IntakeServiceClient<PeerChannel>,
    secret: &str,
    token: &str,
    media_type: &str,
    declared: i64,
    content: &[u8],
    request_id: &str,
) -> Result<pb::UploadFormFileResponse, tonic::Status> {
    use pb::upload_form_file_request::Part;
    let mut messages = vec![pb::UploadFormFileRequest {
        part: Some(Part::Header(pb::UploadFormFileHeader {
            secret: secret.into(),
            client_token: token.into(),
            field: "passport_scan".into(),
            filename: "passport.png".into(),
            media_type: media_type.into(),
            size_bytes: declared,
            request_id: request_id.into(),
        })),
    }];
    for chunk in content.chunks(4096) {
        messages.push(pb::UploadFormFileRequest {
            part: Some(Part::Chunk(chunk.to_vec())),
        });
    }
    intake
        .upload_form_file(futures::stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

fn answer(field: &str, value: &str) -> pb::Answer {
    pb::Answer {
        field: field.into(),
        value: value.into(),
    }
}

fn good_answers() -> Vec<pb::Answer> {
    vec![
        answer("full_name", "Jane Quillfeather"),
        answer("email", "jane@example.org"),
        answer("date_of_birth", "1980-02-29"),
        answer("passport_number", "X1234567"),
        answer("annual_income", "52000"),
        answer("contact_by", "post"),
        answer("agree_terms", "true"),
    ]
}

/// The one-time code of the last message that carries one (notices to
/// staff, sent in the background, may come after it).
fn last_code(data: &SandboxData) -> String {
    let text = std::fs::read_to_string(data.path().join("notifications.jsonl")).unwrap();
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|line| {
            line["body"]
                .as_str()?
                .split_whitespace()
                .find(|w| w.len() == 6 && w.chars().all(|c| c.is_ascii_digit()))
                .map(str::to_owned)
        })
        .expect("a message with a one-time code")
}

/// A client token from identity's one-time code flow for `reference`.
async fn client_token(
    data: &SandboxData,
    sandbox: &Sandbox,
    client_id: &str,
    reference: &str,
) -> String {
    let mut identity = common::identity_client(data, sandbox, "intake").await;
    let started = identity
        .start_client_verification(StartClientVerificationRequest {
            client_id: client_id.into(),
            channel: ContactChannel::Email as i32,
            contact_address: "jane@example.org".into(),
            reference: reference.into(),
        })
        .await
        .unwrap()
        .into_inner();
    identity
        .complete_client_verification(CompleteClientVerificationRequest {
            verification_id: started.verification_id,
            code: last_code(data),
        })
        .await
        .unwrap()
        .into_inner()
        .client_token
}

fn submit(
    secret: &str,
    token: &str,
    answers: Vec<pb::Answer>,
    request_id: &str,
) -> pb::SubmitFormRequest {
    pb::SubmitFormRequest {
        secret: secret.into(),
        client_token: token.into(),
        form_version: 1,
        answers,
        accepted_privacy_notice_version: 1,
        request_id: request_id.into(),
    }
}

async fn clients_answer_forms_into_the_vault(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let spec = || {
        SandboxSpec::of(&[
            ServiceName::Identity,
            ServiceName::Intake,
            ServiceName::Vault,
            ServiceName::Audit,
        ])
    };
    let sandbox = Sandbox::start(&data, spec()).await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let client_id = new_client(&mut admin).await;
    let partner = cleared(&mut admin, "partner@firm.example", "partner").await;
    let matter_id = new_matter(&mut admin, &client_id, Some(&partner), "private-client").await;
    let outsider = cleared(&mut admin, "associate@firm.example", "associate").await;
    let forms_admin = cleared(&mut admin, "admin@firm.example", "firm_administrator").await;
    let paralegal = cleared(&mut admin, "paralegal@firm.example", "paralegal").await;
    assign(&mut admin, &matter_id, &paralegal).await;
    let partner_token = staff_token(&data, &partner, &["partner"]);
    let outsider_token = staff_token(&data, &outsider, &["associate"]);
    let admin_token = staff_token(&data, &forms_admin, &["firm_administrator"]);
    let mut intake = IntakeServiceClient::new(
        channel(&data, &sandbox, ServiceName::Intake, "client-portal").await,
    );

    // Privacy notices and forms are for those with forms.manage.
    let err = intake
        .publish_privacy_notice(as_staff(
            &partner_token,
            pb::PublishPrivacyNoticeRequest {
                text: "We keep your data safe.".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = intake
        .publish_privacy_notice(pb::PublishPrivacyNoticeRequest {
            text: "No token.".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let notice = intake
        .publish_privacy_notice(as_staff(
            &admin_token,
            pb::PublishPrivacyNoticeRequest {
                text: "Quill & Partners LLP processes your data to advise you.".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .notice
        .unwrap();
    assert_eq!(notice.version, 1);
    assert_eq!(notice.sha256.len(), 64);

    // A broken definition is refused with every rule it broke.
    let mut broken = onboarding_fields();
    broken[1].name = "full_name".into();
    broken[3].pattern = "([A-Z".into();
    broken[5].choices.clear();
    let err = intake
        .publish_form(as_staff(
            &admin_token,
            pb::PublishFormRequest {
                name: "New Client".into(),
                title: String::new(),
                fields: broken,
                privacy_notice_version: 7,
                required_verification_level: 3,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&err),
        [
            "name",
            "title",
            "required_verification_level",
            "privacy_notice_version",
            "fields[1].name",
            "fields[3].pattern",
            "fields[5].choices",
        ]
    );
    let publish = |title: &str| pb::PublishFormRequest {
        name: "new-client".into(),
        title: title.into(),
        fields: onboarding_fields(),
        privacy_notice_version: 1,
        required_verification_level: 1,
    };
    let v1 = intake
        .publish_form(as_staff(&admin_token, publish("New client details")))
        .await
        .unwrap()
        .into_inner()
        .form
        .unwrap();
    assert_eq!((v1.version, v1.fields.len()), (1, 8));
    let v2 = intake
        .publish_form(as_staff(&admin_token, publish("New client details (2027)")))
        .await
        .unwrap()
        .into_inner()
        .form
        .unwrap();
    assert_eq!(v2.version, 2);
    // A published version never changes, and reads back with every rule.
    let read_v1 = intake
        .get_form(as_staff(
            &partner_token,
            pb::GetFormRequest {
                name: "new-client".into(),
                version: 1,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read_v1.form.as_ref().unwrap().title, "New client details");
    assert_eq!(read_v1.form.as_ref().unwrap().fields, v1.fields);
    assert_eq!(read_v1.form.unwrap().fields[3].pattern, "[A-Z0-9]{6,9}");
    assert_eq!(read_v1.privacy_notice.unwrap().version, 1);
    let listed = intake
        .list_forms(as_staff(&partner_token, pb::ListFormsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .forms
            .iter()
            .map(|f| (f.name.as_str(), f.version))
            .collect::<Vec<_>>(),
        [("new-client", 2)]
    );

    // Invitations: staff who may write for the matter, to a form that exists.
    let invite = |form: &str, version: i32| pb::CreateInvitationRequest {
        client_id: client_id.clone(),
        matter_id: matter_id.clone(),
        form_name: form.into(),
        form_version: version,
        valid_days: 0,
        contact_channel: ContactChannel::Email as i32,
        contact_address: "jane@example.org".into(),
    };
    let err = intake
        .create_invitation(as_staff(&outsider_token, invite("new-client", 1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = intake
        .create_invitation(as_staff(&partner_token, invite("no-such-form", 0)))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["form_name"]);
    let err = intake
        .create_invitation(as_staff(&partner_token, invite("new-client", 9)))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["form_version"]);
    let mut no_contact = invite("new-client", 1);
    no_contact.contact_address = "jane at example".into();
    no_contact.valid_days = 90;
    let err = intake
        .create_invitation(as_staff(&partner_token, no_contact))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["valid_days", "contact_address"]);
    let created = intake
        .create_invitation(as_staff(&partner_token, invite("new-client", 1)))
        .await
        .unwrap()
        .into_inner();
    let invitation = created.invitation.unwrap();
    let secret = created.secret;
    assert_eq!(secret.len(), 43);
    assert_eq!(invitation.state, pb::InvitationState::Open as i32);

    // The link shows the form version and the notice, and nothing else.
    let opened = intake
        .open_invitation(pb::OpenInvitationRequest {
            secret: secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.invitation_id, invitation.id);
    assert_eq!(opened.form.unwrap().version, 1);
    assert_eq!(opened.privacy_notice.unwrap().text, notice.text);
    let err = intake
        .open_invitation(pb::OpenInvitationRequest {
            secret: "x".repeat(43),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A token verified for something else does not open this invitation.
    let other_token = client_token(&data, &sandbox, &client_id, "another-invitation").await;
    let request_id = uuid::Uuid::now_v7().to_string();
    let err = intake
        .submit_form(submit(&secret, &other_token, good_answers(), &request_id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(error_reason(&err), "client_token_invalid");
    let err = intake
        .submit_form(submit(&secret, "not.a.token", good_answers(), &request_id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The client asks for a code at the invitation's contact, and trades it
    // for a token bound to the invitation; a wrong or replayed code fails.
    let started = intake
        .start_invitation_verification(pb::StartInvitationVerificationRequest {
            secret: secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.contact_hint, "j***@example.org");
    let code = last_code(&data);
    let complete = |code: &str| pb::CompleteInvitationVerificationRequest {
        secret: secret.clone(),
        verification_id: started.verification_id.clone(),
        code: code.into(),
    };
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let err = intake
        .complete_invitation_verification(complete(wrong))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err), "invalid_code");
    let err = intake
        .complete_invitation_verification(complete("12ab"))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["code"]);
    let verified = intake
        .complete_invitation_verification(complete(&code))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.verification_level, 1);
    let err = intake
        .complete_invitation_verification(complete(&code))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "a replayed code worked: {err:?}"
    );
    let token = verified.client_token;
    // A code started for another invitation does not complete this one.
    let mut elsewhere = invite("new-client", 1);
    elsewhere.contact_address = "other@example.org".into();
    let elsewhere = intake
        .create_invitation(as_staff(&partner_token, elsewhere))
        .await
        .unwrap()
        .into_inner();
    let other_started = intake
        .start_invitation_verification(pb::StartInvitationVerificationRequest {
            secret: elsewhere.secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let err = intake
        .complete_invitation_verification(pb::CompleteInvitationVerificationRequest {
            secret: secret.clone(),
            verification_id: other_started.verification_id,
            code: last_code(&data),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Every violation at once, and nothing stored from an invalid submission.
    let mut bad = submit(
        &secret,
        &token,
        vec![
            answer("full_name", &"J".repeat(101)),
            answer("email", "jane-at-example.org"),
            answer("date_of_birth", "2012-05-01"),
            answer("passport_number", "x12"),
            answer("annual_income", "-5"),
            answer("contact_by", "carrier pigeon"),
            answer("agree_terms", "false"),
            answer("shoe_size", "9"),
        ],
        &request_id,
    );
    bad.form_version = 2;
    bad.accepted_privacy_notice_version = 0;
    let err = intake.submit_form(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&err),
        [
            "form_version",
            "accepted_privacy_notice_version",
            "answers[7].field",
            "answers[full_name]",
            "answers[email]",
            "answers[date_of_birth]",
            "answers[passport_number]",
            "answers[annual_income]",
            "answers[contact_by]",
            "answers[agree_terms]",
        ]
    );
    assert!(!err.message().contains("pigeon") && !format!("{err:?}").contains("pigeon"));
    let err = intake
        .submit_form(submit(&secret, &token, vec![], &request_id))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err).len(),
        6,
        "every required field is named"
    );
    let mut vault =
        VaultServiceClient::new(channel(&data, &sandbox, ServiceName::Vault, "firm-app").await);
    let list_records = vault_pb::ListRecordsRequest {
        client_id: client_id.clone(),
        ..Default::default()
    };
    let before = vault
        .list_records(as_staff(&partner_token, list_records.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        before.records.is_empty(),
        "an invalid submission stored records"
    );

    // Files: checked against the field's types and size, the content
    // against its declared type, streamed into the vault.
    let scan = png(20_000);
    let upload_id = uuid::Uuid::now_v7().to_string();
    for (media_type, declared, content, field) in [
        ("image/gif", 20_000, &scan[..], "header.media_type"),
        ("application/pdf", 20_000, &scan[..], "header.media_type"),
        ("image/png", 200_000, &scan[..], "header.size_bytes"),
        ("image/png", 20_000, &scan[..10_000], "header.size_bytes"),
    ] {
        let err = upload(
            &mut intake,
            &secret,
            &token,
            media_type,
            declared,
            content,
            &upload_id,
        )
        .await
        .unwrap_err();
        assert_eq!(violated_fields(&err), [field], "{media_type} {declared}");
    }
    let err = upload(
        &mut intake,
        &secret,
        "not.a.token",
        "image/png",
        20_000,
        &scan,
        &upload_id,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let uploaded = upload(
        &mut intake,
        &secret,
        &token,
        "image/png",
        20_000,
        &scan,
        &upload_id,
    )
    .await
    .unwrap();
    let digest: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &scan)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        (uploaded.size_bytes, uploaded.sha256.as_str()),
        (20_000, digest.as_str())
    );
    let again = upload(
        &mut intake,
        &secret,
        &token,
        "image/png",
        20_000,
        &scan,
        &upload_id,
    )
    .await
    .unwrap();
    assert_eq!(
        again.upload_id, uploaded.upload_id,
        "a retried upload stored twice"
    );
    let mut answers = good_answers();
    answers.push(answer("passport_scan", &uuid::Uuid::now_v7().to_string()));
    let err = intake
        .submit_form(submit(&secret, &token, answers, &request_id))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["answers[passport_scan]"]);
    let mut answers = good_answers();
    answers.push(answer("passport_scan", &uploaded.upload_id));

    // The valid submission: answers in the vault by category, consent kept.
    let submission = intake
        .submit_form(submit(&secret, &token, answers.clone(), &request_id))
        .await
        .unwrap()
        .into_inner()
        .submission
        .unwrap();
    assert_eq!(submission.state, pb::SubmissionState::Submitted as i32);
    assert_eq!(
        (submission.form_version, submission.privacy_notice_version),
        (1, 1)
    );
    let mut by_category: Vec<(i32, Vec<String>)> = submission
        .records
        .iter()
        .map(|r| (r.category, r.fields.clone()))
        .collect();
    by_category.sort();
    assert_eq!(
        by_category,
        [
            (
                vault_pb::DataCategory::IdentityDocument as i32,
                vec!["date_of_birth".to_owned(), "passport_number".to_owned()]
            ),
            (
                vault_pb::DataCategory::IdentityDocument as i32,
                vec!["passport_scan".to_owned()]
            ),
            (
                vault_pb::DataCategory::ContactDetails as i32,
                vec![
                    "full_name".to_owned(),
                    "email".to_owned(),
                    "contact_by".to_owned(),
                    "agree_terms".to_owned()
                ]
            ),
            (
                vault_pb::DataCategory::Financial as i32,
                vec!["annual_income".to_owned()]
            ),
        ]
    );
    // A retry returns the first result; another request is refused.
    let again = intake
        .submit_form(submit(&secret, &token, answers.clone(), &request_id))
        .await
        .unwrap()
        .into_inner()
        .submission
        .unwrap();
    assert_eq!(again.id, submission.id);
    assert_eq!(again.records.len(), 4);
    // The partner who made the invitation is e-mailed, once, that the
    // answers wait for their review; nobody else on the matter is.
    common::eventually(
        std::time::Duration::from_secs(10),
        "the inviter told of the submission",
        || async { !common::mails_to(&data, "partner@firm.example").is_empty() },
    )
    .await;
    let told = common::mails_to(&data, "partner@firm.example");
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].0, "A client answered your intake invitation");
    assert!(told[0].1.contains(&submission.id), "{}", told[0].1);
    assert!(common::mails_to(&data, "paralegal@firm.example").is_empty());
    // The client gets a receipt at the address they verified: when, and
    // under which reference; never an answer; once.
    let receipts = || {
        common::mails_to(&data, "jane@example.org")
            .into_iter()
            .filter(|(subject, _)| subject == "We received your answers")
            .collect::<Vec<_>>()
    };
    common::eventually(
        std::time::Duration::from_secs(10),
        "the client's receipt",
        || async { !receipts().is_empty() },
    )
    .await;
    let receipt = receipts();
    assert_eq!(receipt.len(), 1, "{receipt:?}");
    // The firm sees that it went (marked once identity has sent it).
    let receipt_time = || {
        let (mut intake, token) = (intake.clone(), partner_token.clone());
        let (client_id, matter_id, id) =
            (client_id.clone(), matter_id.clone(), submission.id.clone());
        async move {
            intake
                .list_submissions(as_staff(
                    &token,
                    pb::ListSubmissionsRequest {
                        client_id,
                        matter_id,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .submissions
                .into_iter()
                .find(|s| s.id == id)
                .and_then(|s| s.receipt_time)
        }
    };
    common::eventually(
        std::time::Duration::from_secs(10),
        "the receipt marked sent",
        || async { receipt_time().await.is_some() },
    )
    .await;
    let consent = submission.consent_time.unwrap().seconds;
    assert!(receipt_time().await.is_some_and(|t| t.seconds >= consent));
    assert!(submission.receipt_time.is_none(), "not sent when submitted");
    assert!(receipt[0].1.contains(&submission.id), "{}", receipt[0].1);
    for answer in ["Quillfeather", "X1234567", "52000", "1980-02-29"] {
        assert!(!receipt[0].1.contains(answer), "{}", receipt[0].1);
    }
    // Identity sends receipts for the intake service alone, each once, and
    // only to an address the client verified.
    let notice = NotifyClientRequest {
        notice_id: format!("receipt:{}", submission.id),
        kind: ClientNoticeKind::SubmissionReceived as i32,
        client_id: client_id.clone(),
        channel: ContactChannel::Email as i32,
        contact_address: "jane@example.org".into(),
        reference_id: submission.id.clone(),
        occur_time: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp(),
            nanos: 0,
        }),
    };
    let refused = IdentityServiceClient::new(
        channel(&data, &sandbox, ServiceName::Identity, "client-portal").await,
    )
    .notify_client(notice.clone())
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let mut identity_as_intake =
        IdentityServiceClient::new(channel(&data, &sandbox, ServiceName::Identity, "intake").await);
    let again = identity_as_intake
        .notify_client(notice.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!again.sent, "a receipt sent twice");
    let elsewhere = identity_as_intake
        .notify_client(NotifyClientRequest {
            notice_id: format!("receipt-elsewhere:{}", submission.id),
            contact_address: "someone.else@example.org".into(),
            ..notice.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (elsewhere.code(), error_reason(&elsewhere).as_str()),
        (Code::FailedPrecondition, "contact_not_verified")
    );
    let bad = identity_as_intake
        .notify_client(NotifyClientRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&bad),
        [
            "notice_id",
            "kind",
            "client_id",
            "channel",
            "contact_address",
            "reference_id",
            "occur_time"
        ]
    );
    assert_eq!(receipts().len(), 1);
    assert!(common::mails_to(&data, "someone.else@example.org").is_empty());
    let err = intake
        .submit_form(submit(
            &secret,
            &token,
            good_answers(),
            &uuid::Uuid::now_v7().to_string(),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), error_reason(&err).as_str()),
        (Code::FailedPrecondition, "already_submitted")
    );
    let err = intake
        .open_invitation(pb::OpenInvitationRequest {
            secret: secret.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err), "already_submitted");
    let after = vault
        .list_records(as_staff(&partner_token, list_records.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        after.records.len(),
        4,
        "a retry or a refused upload stored a copy"
    );

    // The partner reads the answers from the vault, for a purpose.
    let contact = submission
        .records
        .iter()
        .find(|r| r.category == vault_pb::DataCategory::ContactDetails as i32)
        .unwrap();
    let read = vault
        .get_record(as_staff(
            &partner_token,
            vault_pb::GetRecordRequest {
                record_id: contact.record_id.clone(),
                purpose: vault_pb::Purpose::LegalAdvice as i32,
                justification: "onboarding review".into(),
                read_mask: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let name = read.fields.iter().find(|f| f.name == "full_name").unwrap();
    assert_eq!(name.value, "Jane Quillfeather");

    // Intake itself holds no answer.
    let intake_db = common::service_db(&data, ServiceName::Intake).await;
    #[derive(sqlx::FromRow)]
    struct Texts {
        texts: String,
    }
    let rows: Vec<Texts> = intake_db
        .fetch_all(
            "SELECT s.form_name || '|' || s.state || '|' || COALESCE(s.decision_reason, '') || '|' || r.fields || '|' || r.category AS texts FROM intake_submissions s JOIN intake_submission_records r ON r.submission_id = s.id",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    for secret_value in [
        "Quillfeather",
        "jane@example.org",
        "X1234567",
        "52000",
        "1980-02-29",
    ] {
        assert!(
            rows.iter().all(|r| !r.texts.contains(secret_value)),
            "intake stored an answer"
        );
    }
    if backend == Backend::Sqlite {
        let path = data.database_url(ServiceName::Intake);
        let file = path
            .trim_start_matches("sqlite:")
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        for f in [file.clone(), format!("{file}-wal")] {
            if let Ok(bytes) = std::fs::read(&f) {
                for clear in [&b"Quillfeather"[..], b"jane@example.org", b"X1234567"] {
                    assert!(
                        !bytes.windows(clear.len()).any(|w| w == clear),
                        "{f} holds client data in clear"
                    );
                }
            }
        }
    }

    // Review: staff of the matter list and decide; others cannot.
    let list = |matter: &str| pb::ListSubmissionsRequest {
        client_id: client_id.clone(),
        matter_id: matter.into(),
        ..Default::default()
    };
    let err = intake
        .list_submissions(as_staff(&outsider_token, list(&matter_id)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let paralegal_token = staff_token(&data, &paralegal, &["paralegal"]);
    let listed = intake
        .list_submissions(as_staff(&paralegal_token, list(&matter_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.submissions.len(), 1);
    assert_eq!(listed.submissions[0].id, submission.id);
    // Reviewing reads the answers through the vault, as the reviewer, for a
    // purpose: the vault decides and masks.
    let review = |purpose: vault_pb::Purpose| pb::ReviewSubmissionRequest {
        submission_id: submission.id.clone(),
        purpose: purpose as i32,
        justification: "onboarding checks".into(),
    };
    let err = intake
        .review_submission(as_staff(
            &partner_token,
            review(vault_pb::Purpose::Unspecified),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["purpose"]);
    let err = intake
        .review_submission(as_staff(
            &outsider_token,
            review(vault_pb::Purpose::LegalAdvice),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let reviewed = intake
        .review_submission(as_staff(
            &partner_token,
            review(vault_pb::Purpose::LegalAdvice),
        ))
        .await
        .unwrap()
        .into_inner();
    let scan_record = submission
        .records
        .iter()
        .find(|r| r.fields == ["passport_scan"])
        .unwrap()
        .record_id
        .clone();
    let shown: Vec<(&str, &str, bool)> = reviewed
        .answers
        .iter()
        .map(|a| (a.field.as_str(), a.value.as_str(), a.masked))
        .collect();
    assert_eq!(
        shown,
        [
            ("full_name", "Jane Quillfeather", false),
            ("email", "jane@example.org", false),
            ("date_of_birth", "1980-02-29", false),
            ("passport_number", "X1234567", false),
            ("annual_income", "52000", false),
            ("contact_by", "post", false),
            ("agree_terms", "true", false),
            ("passport_scan", scan_record.as_str(), false),
        ]
    );
    assert_eq!(reviewed.answers[0].label, "full name");
    let by_paralegal = intake
        .review_submission(as_staff(
            &paralegal_token,
            review(vault_pb::Purpose::LegalAdvice),
        ))
        .await
        .unwrap()
        .into_inner();
    let passport = by_paralegal
        .answers
        .iter()
        .find(|a| a.field == "passport_number")
        .unwrap();
    assert!(
        passport.masked && passport.value != "X1234567",
        "{passport:?}"
    );

    let decide = |decision: pb::SubmissionState, reason: &str| pb::DecideSubmissionRequest {
        submission_id: submission.id.clone(),
        decision: decision as i32,
        reason: reason.into(),
    };
    let err = intake
        .decide_submission(as_staff(
            &partner_token,
            decide(pb::SubmissionState::Rejected, ""),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["reason"]);
    let err = intake
        .decide_submission(as_staff(
            &outsider_token,
            decide(pb::SubmissionState::Accepted, ""),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let decided = intake
        .decide_submission(as_staff(
            &partner_token,
            decide(pb::SubmissionState::Accepted, ""),
        ))
        .await
        .unwrap()
        .into_inner()
        .submission
        .unwrap();
    assert_eq!(decided.state, pb::SubmissionState::Accepted as i32);
    assert_eq!(decided.decided_by, partner);
    let err = intake
        .decide_submission(as_staff(
            &partner_token,
            decide(pb::SubmissionState::Rejected, "duplicate"),
        ))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err), "already_decided");

    // An expired invitation opens nothing and takes no answers.
    let expiring = intake
        .create_invitation(as_staff(&partner_token, invite("new-client", 1)))
        .await
        .unwrap()
        .into_inner();
    let expiring_id = uuid::Uuid::parse_str(&expiring.invitation.unwrap().id).unwrap();
    intake_db
        .transact(
            vec![Statement::new(
                "UPDATE intake_invitations SET expires_at = $1 WHERE id = $2",
                vec![
                    Value::Time(chrono::Utc::now() - chrono::Duration::minutes(1)),
                    Value::Uuid(expiring_id),
                ],
            )],
            &[],
        )
        .await
        .unwrap();
    let err = intake
        .open_invitation(pb::OpenInvitationRequest {
            secret: expiring.secret.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err), "invitation_expired");
    let late_token = client_token(&data, &sandbox, &client_id, &expiring_id.to_string()).await;
    let err = intake
        .submit_form(submit(
            &expiring.secret,
            &late_token,
            good_answers(),
            &uuid::Uuid::now_v7().to_string(),
        ))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err), "invitation_expired");

    // A form that demands an identity document check refuses a client whose
    // contact alone is proven, until staff record the check.
    let strict = intake
        .publish_form(as_staff(
            &admin_token,
            pb::PublishFormRequest {
                name: "source-of-funds".into(),
                title: "Source of funds".into(),
                fields: vec![field(
                    "source_of_funds",
                    pb::FieldKind::Text,
                    vault_pb::DataCategory::Financial,
                    true,
                )],
                privacy_notice_version: 1,
                required_verification_level: 2,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .form
        .unwrap();
    // (Another client: identity limits the codes sent to one client.)
    let second_client = new_client(&mut admin).await;
    let second_matter =
        new_matter(&mut admin, &second_client, Some(&partner), "private-client").await;
    let strict_invitation = intake
        .create_invitation(as_staff(
            &partner_token,
            pb::CreateInvitationRequest {
                client_id: second_client.clone(),
                matter_id: second_matter.clone(),
                ..invite(&strict.name, 1)
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let strict_id = strict_invitation.invitation.unwrap().id;
    let level_one = client_token(&data, &sandbox, &second_client, &strict_id).await;
    let strict_submit = |token: &str| pb::SubmitFormRequest {
        secret: strict_invitation.secret.clone(),
        client_token: token.into(),
        form_version: 1,
        answers: vec![answer("source_of_funds", "Sale of a house")],
        accepted_privacy_notice_version: 1,
        request_id: uuid::Uuid::now_v7().to_string(),
    };
    let err = intake
        .submit_form(strict_submit(&level_one))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), error_reason(&err).as_str()),
        (Code::PermissionDenied, "verification_level")
    );
    admin
        .record_identity_document_check(RecordIdentityDocumentCheckRequest {
            client_id: second_client.clone(),
            document_type: "passport".into(),
            issuing_country: "GB".into(),
            document_number: "X1234567".into(),
            verified_by_staff_id: partner.clone(),
        })
        .await
        .unwrap();
    let level_two = client_token(&data, &sandbox, &second_client, &strict_id).await;
    intake.submit_form(strict_submit(&level_two)).await.unwrap();
    // A second submission of that client: its submissions come in pages,
    // newest first, each with its records.
    let again_invitation = intake
        .create_invitation(as_staff(
            &partner_token,
            pb::CreateInvitationRequest {
                client_id: second_client.clone(),
                matter_id: second_matter.clone(),
                ..invite(&strict.name, 1)
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let again_id = again_invitation.invitation.unwrap().id;
    let again_token = client_token(&data, &sandbox, &second_client, &again_id).await;
    intake
        .submit_form(pb::SubmitFormRequest {
            secret: again_invitation.secret.clone(),
            ..strict_submit(&again_token)
        })
        .await
        .unwrap();
    let pages = common::check_pages(0, 1, |page_size, page_token| {
        let (mut intake, token, client_id) =
            (intake.clone(), partner_token.clone(), second_client.clone());
        async move {
            let r = intake
                .list_submissions(as_staff(
                    &token,
                    pb::ListSubmissionsRequest {
                        client_id,
                        page_size,
                        page_token,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            // By id: a receipt marked sent meanwhile changes a submission.
            let ids: Vec<String> = r.submissions.into_iter().map(|s| s.id).collect();
            Ok((ids, r.next_page_token))
        }
    })
    .await;
    assert_eq!(pages, 2);

    // The audit log has the publications, the invitation, the submission,
    // the refusals and the decision.
    let mut audit =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    common::eventually(
        std::time::Duration::from_secs(10),
        "intake events audited",
        || {
            let mut audit = audit.clone();
            async move {
                let events = audit
                    .list_events(ListEventsRequest {
                        source_service: "intake".into(),
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
                count("intake.notice.published") == 1
                    && count("intake.form.published") == 3
                    && count("intake.invitation.created") == 5
                    && count("intake.submission.received") >= 4
                    && count("intake.submission.decided") == 1
            }
        },
    )
    .await;
    // The receipt is in the log, naming the submission, never the address.
    common::eventually(
        std::time::Duration::from_secs(10),
        "the receipt audited",
        || {
            let (mut audit, client_id, id) =
                (audit.clone(), client_id.clone(), submission.id.clone());
            async move {
                let told = common::logged_events(
                    &mut audit,
                    &client_id,
                    "identity",
                    "identity.client.notified",
                )
                .await;
                told.len() == 1
                    && told[0].reason == "submission_received"
                    && told[0].related.iter().any(|r| r.id == id)
                    && !format!("{told:?}").contains("jane@example.org")
            }
        },
    )
    .await;
    let _ = &mut audit;

    // A receipt that did not go (identity's gateway away, say) goes with
    // intake's next look, here the first of a restarted replica.
    let identity_db = common::service_db(&data, ServiceName::Identity).await;
    identity_db
        .transact(
            vec![Statement::new("DELETE FROM client_notices", vec![])],
            &[],
        )
        .await
        .unwrap();
    identity_db.close().await;
    intake_db
        .transact(
            vec![Statement::new(
                "UPDATE intake_submissions SET receipt_sent_at = NULL",
                vec![],
            )],
            &[],
        )
        .await
        .unwrap();
    intake_db.close().await;
    sandbox.stop().await;
    let sandbox = Sandbox::start(&data, spec()).await;
    common::eventually(
        std::time::Duration::from_secs(20),
        "the receipt sent again",
        || async {
            receipts()
                .iter()
                .filter(|(_, body)| body.contains(&submission.id))
                .count()
                == 2
        },
    )
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_clients_answer_forms_into_the_vault() {
    clients_answer_forms_into_the_vault(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_clients_answer_forms_into_the_vault() {
    clients_answer_forms_into_the_vault(Backend::Postgres).await;
}

/// The client-facing page in headless Chromium: link, code, form, the
/// page's own checks, the server's message next to a refused field, a file,
/// and the answers in the vault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_client_completes_the_web_form_in_a_browser() {
    a_client_completes_the_web_form_in_a_browser(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_client_completes_the_web_form_in_a_browser() {
    a_client_completes_the_web_form_in_a_browser(Backend::Postgres).await;
}

async fn a_client_completes_the_web_form_in_a_browser(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let web_port = common::free_port();
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec {
            intake_web: Some(std::net::SocketAddr::from(([127, 0, 0, 1], web_port))),
            ..SandboxSpec::of(&[
                ServiceName::Identity,
                ServiceName::Intake,
                ServiceName::Vault,
                ServiceName::Audit,
            ])
        },
    )
    .await;
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let client_id = new_client(&mut admin).await;
    let partner = cleared(&mut admin, "partner@firm.example", "partner").await;
    let matter_id = new_matter(&mut admin, &client_id, Some(&partner), "private-client").await;
    let forms_admin = cleared(&mut admin, "admin@firm.example", "firm_administrator").await;
    let partner_token = staff_token(&data, &partner, &["partner"]);
    let admin_token = staff_token(&data, &forms_admin, &["firm_administrator"]);
    let mut intake = IntakeServiceClient::new(
        channel(&data, &sandbox, ServiceName::Intake, "client-portal").await,
    );
    intake
        .publish_privacy_notice(as_staff(
            &admin_token,
            pb::PublishPrivacyNoticeRequest {
                text: "Quill & Partners LLP processes your data to advise you.".into(),
            },
        ))
        .await
        .unwrap();
    intake
        .publish_form(as_staff(
            &admin_token,
            pb::PublishFormRequest {
                name: "new-client".into(),
                title: "New client details".into(),
                fields: onboarding_fields(),
                privacy_notice_version: 1,
                required_verification_level: 1,
            },
        ))
        .await
        .unwrap();
    let created = intake
        .create_invitation(as_staff(
            &partner_token,
            pb::CreateInvitationRequest {
                client_id: client_id.clone(),
                matter_id: matter_id.clone(),
                form_name: "new-client".into(),
                form_version: 0,
                valid_days: 0,
                contact_channel: ContactChannel::Email as i32,
                contact_address: "jane@example.org".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();

    let tools =
        std::env::var("CONFIDANT_TOOLS_DIR").unwrap_or_else(|_| "/var/tmp/confidant-tools".into());
    let url = format!("https://127.0.0.1:{web_port}/#k={}", created.secret);
    let mut browser = tokio::process::Command::new("node");
    browser
        .arg(common::repo_root().join("tests/web/intake_page.cjs"))
        .arg(&url)
        .arg(data.path().join("notifications.jsonl"))
        .env("NODE_PATH", format!("{tools}/node_modules"))
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), browser.output())
        .await
        .expect("the browser finished within two minutes")
        .expect("node runs (scripts/test.sh installs it, playwright-core and chromium)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let text = |k: &str| seen[k].as_str().unwrap_or_default().trim().to_owned();
    assert!(
        !text("address_after_open").contains(&created.secret),
        "{seen}"
    );
    assert_eq!(text("hint"), "We sent a code to j***@example.org.");
    assert_eq!(text("title"), "New client details");
    assert_eq!(text("typed_email_error"), "must be an e-mail address");
    assert_eq!(text("fixed_email_error"), "");
    assert_eq!(
        text("server_file_error"),
        "the content is not of the declared media type"
    );
    assert_eq!(text("file_invalid"), "true");
    assert_eq!(text("done"), "Thank you");
    assert!(
        text("done_text").contains("A receipt is on its way"),
        "{seen}"
    );
    assert!(text("csp").contains("default-src 'none'"), "{seen}");
    // The default budget is 120 requests a minute per address, and the page
    // itself used some of it.
    let limited_after = seen["rate_limited_after"].as_u64().unwrap_or(0);
    assert!((1..=120).contains(&limited_after), "{seen}");

    // What the page sent is in the vault, reviewable by the partner.
    let listed = intake
        .list_submissions(as_staff(
            &partner_token,
            pb::ListSubmissionsRequest {
                client_id: client_id.clone(),
                matter_id: matter_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.submissions.len(), 1);
    assert_eq!(listed.submissions[0].records.len(), 4);
    let reviewed = intake
        .review_submission(as_staff(
            &partner_token,
            pb::ReviewSubmissionRequest {
                submission_id: listed.submissions[0].id.clone(),
                purpose: vault_pb::Purpose::LegalAdvice as i32,
                justification: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let value = |field: &str| {
        reviewed
            .answers
            .iter()
            .find(|a| a.field == field)
            .map(|a| a.value.clone())
            .unwrap_or_default()
    };
    assert_eq!(value("full_name"), "Jane Quillfeather");
    assert_eq!(value("contact_by"), "post");
    // The receipt the page promised reached the address the client
    // confirmed, naming the submission.
    let submission_id = listed.submissions[0].id.clone();
    common::eventually(
        std::time::Duration::from_secs(10),
        "the browser client's receipt",
        || async {
            common::mails_to(&data, "jane@example.org")
                .iter()
                .any(|(subject, body)| {
                    subject == "We received your answers" && body.contains(&submission_id)
                })
        },
    )
    .await;
    sandbox.stop().await;
}

/// cert-manager renews the intake's certificate: the gRPC port and the web
/// page serve the new one within `tls_reload_seconds`, and callers go on,
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_renewed_certificate_is_served_on_the_grpc_port_and_the_web_page() {
    a_renewed_certificate_is_served_on_the_grpc_port_and_the_web_page(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_renewed_certificate_is_served_on_the_grpc_port_and_the_web_page() {
    a_renewed_certificate_is_served_on_the_grpc_port_and_the_web_page(Backend::Postgres).await;
}

async fn a_renewed_certificate_is_served_on_the_grpc_port_and_the_web_page(backend: Backend) {
    use confidant_runtime::testing::tls_handshake;
    let data = SandboxData::new(backend).await;
    let web = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec {
            intake_web: Some(web),
            settings: vec![("", "tls_reload_seconds", 1.into())],
            ..SandboxSpec::of(&[
                ServiceName::Identity,
                ServiceName::Intake,
                ServiceName::Vault,
                ServiceName::Audit,
            ])
        },
    )
    .await;
    let grpc = sandbox.addr(ServiceName::Intake);
    let portal = data.client_tls("client-portal");
    let (before, accepted) = tls_handshake(grpc, &portal).await;
    assert_eq!(accepted, Ok(()));
    assert_eq!(tls_handshake(web, &portal).await.0, before);
    let mut admin = common::identity_client(&data, &sandbox, "operator").await;
    let forms_admin = cleared(&mut admin, "admin@firm.example", "firm_administrator").await;
    let admin_token = staff_token(&data, &forms_admin, &["firm_administrator"]);
    let mut connected_before = IntakeServiceClient::new(
        channel(&data, &sandbox, ServiceName::Intake, "client-portal").await,
    );

    data.renew_certificate(ServiceName::Intake);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let renewed = loop {
        let (now, _) = tls_handshake(grpc, &portal).await;
        if now.serial != before.serial {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate is not served on the gRPC port"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(renewed.spiffe_id, before.spiffe_id);
    assert!(renewed.not_after >= before.not_after);
    assert_eq!(tls_handshake(web, &portal).await.0, renewed, "the web page");

    // A caller connecting now verifies the new certificate; one connected
    // before goes on; the intake's own calls (the decision, the audit
    // events) go on.
    for intake in [
        &mut IntakeServiceClient::new(
            channel(&data, &sandbox, ServiceName::Intake, "client-portal").await,
        ),
        &mut connected_before,
    ] {
        intake
            .publish_privacy_notice(as_staff(
                &admin_token,
                pb::PublishPrivacyNoticeRequest {
                    text: "Quill & Partners LLP processes your data to advise you.".into(),
                },
            ))
            .await
            .unwrap();
    }
    sandbox.stop().await;
}

/// The client's token for invitation `secret`, through the invitation's
/// own one-time code flow.
async fn invitation_token(
    intake: &mut IntakeServiceClient<PeerChannel>,
    data: &SandboxData,
    secret: &str,
) -> String {
    let started = intake
        .start_invitation_verification(pb::StartInvitationVerificationRequest {
            secret: secret.into(),
        })
        .await
        .unwrap()
        .into_inner();
    intake
        .complete_invitation_verification(pb::CompleteInvitationVerificationRequest {
            secret: secret.into(),
            verification_id: started.verification_id,
            code: last_code(data),
        })
        .await
        .unwrap()
        .into_inner()
        .client_token
}

/// Identity, intake, vault and audit.
fn intake_spec() -> SandboxSpec {
    SandboxSpec::of(&[
        ServiceName::Identity,
        ServiceName::Intake,
        ServiceName::Vault,
        ServiceName::Audit,
    ])
}

/// A client with two matters under a partner, an associate outside them,
/// and a published notice and form `new-client` version 1.
struct Firm {
    client_id: String,
    matter_id: String,
    other_matter: String,
    partner: String,
    partner_token: String,
    outsider_token: String,
    intake: IntakeServiceClient<PeerChannel>,
}

async fn firm_with_a_form(data: &SandboxData, sandbox: &Sandbox) -> Firm {
    let mut admin = common::identity_client(data, sandbox, "operator").await;
    let client_id = new_client(&mut admin).await;
    let partner = cleared(&mut admin, "partner@firm.example", "partner").await;
    let matter_id = new_matter(&mut admin, &client_id, Some(&partner), "private-client").await;
    let other_matter = new_matter(&mut admin, &client_id, Some(&partner), "tax").await;
    let outsider = cleared(&mut admin, "associate@firm.example", "associate").await;
    let forms_admin = cleared(&mut admin, "admin@firm.example", "firm_administrator").await;
    let partner_token = staff_token(data, &partner, &["partner"]);
    let outsider_token = staff_token(data, &outsider, &["associate"]);
    let admin_token = staff_token(data, &forms_admin, &["firm_administrator"]);
    let mut intake = IntakeServiceClient::new(
        channel(data, sandbox, ServiceName::Intake, "client-portal").await,
    );
    intake
        .publish_privacy_notice(as_staff(
            &admin_token,
            pb::PublishPrivacyNoticeRequest {
                text: "We process your data to advise you.".into(),
            },
        ))
        .await
        .unwrap();
    intake
        .publish_form(as_staff(
            &admin_token,
            pb::PublishFormRequest {
                name: "new-client".into(),
                title: "New client details".into(),
                fields: onboarding_fields(),
                privacy_notice_version: 1,
                required_verification_level: 1,
            },
        ))
        .await
        .unwrap();
    Firm {
        client_id,
        matter_id,
        other_matter,
        partner,
        partner_token,
        outsider_token,
        intake,
    }
}

/// Invites the client to answer `new-client` version 1 for `matter`, with
/// codes to `address`.
async fn invite(
    intake: &IntakeServiceClient<PeerChannel>,
    token: &str,
    client_id: &str,
    matter: &str,
    address: &str,
) -> pb::CreateInvitationResponse {
    intake
        .clone()
        .create_invitation(as_staff(
            token,
            pb::CreateInvitationRequest {
                client_id: client_id.to_owned(),
                matter_id: matter.to_owned(),
                form_name: "new-client".into(),
                form_version: 1,
                valid_days: 0,
                contact_channel: ContactChannel::Email as i32,
                contact_address: address.to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn the_firm_withdraws_an_invitation_and_sees_where_each_stands(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let mut sandbox = Sandbox::start(&data, intake_spec()).await;
    let Firm {
        client_id,
        matter_id,
        other_matter,
        partner,
        partner_token,
        outsider_token,
        mut intake,
    } = firm_with_a_form(&data, &sandbox).await;
    // Three on the matter: one answered, one sent to the wrong address,
    // one still open; and one on another matter.
    let answered = invite(
        &intake,
        &partner_token,
        &client_id,
        &matter_id,
        "jane@example.org",
    )
    .await;
    let mistaken = invite(
        &intake,
        &partner_token,
        &client_id,
        &matter_id,
        "jane@example.com",
    )
    .await;
    let open = invite(
        &intake,
        &partner_token,
        &client_id,
        &matter_id,
        "jane@example.org",
    )
    .await;
    let elsewhere = invite(
        &intake,
        &partner_token,
        &client_id,
        &other_matter,
        "jane@example.org",
    )
    .await;
    let token = invitation_token(&mut intake, &data, &answered.secret).await;
    let request_id = uuid::Uuid::now_v7().to_string();
    intake
        .submit_form(submit(
            &answered.secret,
            &token,
            good_answers(),
            &request_id,
        ))
        .await
        .unwrap();
    // Whoever got the mistaken link verified and holds a token for it.
    let stray_token = invitation_token(&mut intake, &data, &mistaken.secret).await;

    // Withdrawn: the response says so.
    let revoke = |id: &str, token: &str| {
        as_staff(
            token,
            pb::RevokeInvitationRequest {
                invitation_id: id.to_owned(),
            },
        )
    };
    let mistaken_id = mistaken.invitation.as_ref().unwrap().id.clone();
    let err = intake
        .revoke_invitation(revoke(&mistaken_id, &outsider_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let withdrawn = intake
        .revoke_invitation(revoke(&mistaken_id, &partner_token))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(withdrawn.state, pb::InvitationState::Revoked as i32);
    assert!(withdrawn.revoke_time.is_some());

    // The link, new codes and the token already given all stop working.
    let refused = |err: tonic::Status| {
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(error_reason(&err), "invitation_revoked");
    };
    refused(
        intake
            .open_invitation(pb::OpenInvitationRequest {
                secret: mistaken.secret.clone(),
            })
            .await
            .unwrap_err(),
    );
    refused(
        intake
            .start_invitation_verification(pb::StartInvitationVerificationRequest {
                secret: mistaken.secret.clone(),
            })
            .await
            .unwrap_err(),
    );
    refused(
        upload(
            &mut intake,
            &mistaken.secret,
            &stray_token,
            "image/png",
            2048,
            &png(2048),
            &uuid::Uuid::now_v7().to_string(),
        )
        .await
        .unwrap_err(),
    );
    let stray_request = uuid::Uuid::now_v7().to_string();
    refused(
        intake
            .submit_form(submit(
                &mistaken.secret,
                &stray_token,
                good_answers(),
                &stray_request,
            ))
            .await
            .unwrap_err(),
    );
    // Nothing to withdraw twice, nor once answered; bad ids are named.
    refused(
        intake
            .revoke_invitation(revoke(&mistaken_id, &partner_token))
            .await
            .unwrap_err(),
    );
    let answered_id = answered.invitation.as_ref().unwrap().id.clone();
    let err = intake
        .revoke_invitation(revoke(&answered_id, &partner_token))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err), "already_submitted");
    let err = intake
        .revoke_invitation(revoke("x", &partner_token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["invitation_id"]);
    let err = intake
        .revoke_invitation(revoke(&uuid::Uuid::now_v7().to_string(), &partner_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The invitation still open is untouched.
    intake
        .open_invitation(pb::OpenInvitationRequest {
            secret: open.secret.clone(),
        })
        .await
        .unwrap();

    // The matter's invitations, newest first, each where it stands.
    let list = |matter: &str, page_size: i32, page_token: String| {
        as_staff(
            &partner_token,
            pb::ListInvitationsRequest {
                client_id: client_id.clone(),
                matter_id: matter.to_owned(),
                page_size,
                page_token,
            },
        )
    };
    let listed = intake
        .list_invitations(list(&matter_id, 0, String::new()))
        .await
        .unwrap()
        .into_inner()
        .invitations;
    let states: Vec<(String, pb::InvitationState)> =
        listed.iter().map(|i| (i.id.clone(), i.state())).collect();
    assert_eq!(
        states,
        [
            (
                open.invitation.as_ref().unwrap().id.clone(),
                pb::InvitationState::Open
            ),
            (mistaken_id.clone(), pb::InvitationState::Revoked),
            (answered_id.clone(), pb::InvitationState::Submitted),
        ]
    );
    assert!(listed[2].submit_time.is_some() && listed[2].revoke_time.is_none());
    assert!(listed.iter().all(|i| i.create_time.is_some()));
    // All the client's, in pages.
    let everything = common::check_pages(0, 1, |size, token| {
        let mut intake = intake.clone();
        let request = list("", size, token);
        async move {
            let r = intake.list_invitations(request).await?.into_inner();
            let ids: Vec<String> = r.invitations.into_iter().map(|i| i.id).collect();
            Ok((ids, r.next_page_token))
        }
    })
    .await;
    assert_eq!(everything, 4);
    let first = intake
        .list_invitations(list("", 1, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.invitations[0].id, elsewhere.invitation.unwrap().id);
    // Only for those who may read the client's data.
    let err = intake
        .list_invitations(as_staff(
            &outsider_token,
            pb::ListInvitationsRequest {
                client_id: client_id.clone(),
                matter_id: matter_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = intake
        .list_invitations(pb::ListInvitationsRequest {
            client_id: client_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The withdrawal and the refused submission are on the record.
    let log =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    common::eventually(
        std::time::Duration::from_secs(20),
        "the withdrawal logged",
        || {
            let mut log = log.clone();
            let (client_id, mistaken_id, partner) =
                (client_id.clone(), mistaken_id.clone(), partner.clone());
            async move {
                let revoked = common::logged_events(
                    &mut log,
                    &client_id,
                    "intake",
                    "intake.invitation.revoked",
                )
                .await;
                let refused = common::logged_events(
                    &mut log,
                    &client_id,
                    "intake",
                    "intake.submission.received",
                )
                .await;
                revoked.len() == 1
                    && revoked[0]
                        .resource
                        .as_ref()
                        .is_some_and(|r| r.id == mistaken_id)
                    && revoked[0].actor.as_ref().is_some_and(|a| a.id == partner)
                    && refused.iter().any(|e| {
                        e.reason == "invitation_revoked"
                            && e.resource.as_ref().is_some_and(|r| r.id == mistaken_id)
                    })
            }
        },
    )
    .await;

    // The matter's invitations reach their expiry: the partner who made
    // them is told, once, of the one left unanswered; not of the answered
    // or the withdrawn one, nor of the other matter's, still open. (Each
    // replica looks as it starts, and every minute.)
    let open_id = open.invitation.as_ref().unwrap().id.clone();
    common::service_db(&data, ServiceName::Intake)
        .await
        .transact(
            vec![Statement::new(
                "UPDATE intake_invitations SET expires_at = $1 WHERE matter_id = $2",
                vec![
                    Value::Time(chrono::Utc::now() - chrono::Duration::minutes(1)),
                    Value::Uuid(uuid::Uuid::parse_str(&matter_id).unwrap()),
                ],
            )],
            &[],
        )
        .await
        .unwrap();
    let expired = || {
        common::mails_to(&data, "partner@firm.example")
            .into_iter()
            .filter(|(subject, _)| subject == "An intake invitation you made expired unanswered")
            .map(|(_, body)| body)
            .collect::<Vec<String>>()
    };
    assert!(expired().is_empty());
    for _ in 0..2 {
        sandbox.stop().await;
        sandbox = Sandbox::start(&data, intake_spec()).await;
        common::eventually(
            std::time::Duration::from_secs(20),
            "the maker told of the expired invitation",
            || async { !expired().is_empty() },
        )
        .await;
    }
    // The second replica's look, as it started, told nobody again.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let told = expired();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].contains(&open_id), "{}", told[0]);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_firm_withdraws_an_invitation_and_sees_where_each_stands() {
    the_firm_withdraws_an_invitation_and_sees_where_each_stands(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_firm_withdraws_an_invitation_and_sees_where_each_stands() {
    the_firm_withdraws_an_invitation_and_sees_where_each_stands(Backend::Postgres).await;
}

async fn withdrawn_invitations_stay_withdrawn_after_a_restore(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let spec = intake_spec();
    let sandbox = Sandbox::start(&data, spec.clone()).await;
    let Firm {
        client_id,
        matter_id,
        partner_token,
        mut intake,
        ..
    } = firm_with_a_form(&data, &sandbox).await;
    let address = "jane@example.org";
    // At the backup: an invitation about to be withdrawn, one about to be
    // answered, and one already withdrawn.
    let withdrawn = invite(&intake, &partner_token, &client_id, &matter_id, address).await;
    let answered = invite(&intake, &partner_token, &client_id, &matter_id, address).await;
    let withdrawn_before = invite(&intake, &partner_token, &client_id, &matter_id, address).await;
    let id_of =
        |created: &pb::CreateInvitationResponse| created.invitation.as_ref().unwrap().id.clone();
    let revoke = |created: &pb::CreateInvitationResponse| {
        as_staff(
            &partner_token,
            pb::RevokeInvitationRequest {
                invitation_id: id_of(created),
            },
        )
    };
    intake
        .revoke_invitation(revoke(&withdrawn_before))
        .await
        .unwrap();
    let backup = common::back_up(&data, ServiceName::Intake).await;

    // Since: one withdrawn, one answered, one created.
    intake.revoke_invitation(revoke(&withdrawn)).await.unwrap();
    let token = invitation_token(&mut intake, &data, &answered.secret).await;
    let submission = intake
        .submit_form(submit(
            &answered.secret,
            &token,
            good_answers(),
            &uuid::Uuid::now_v7().to_string(),
        ))
        .await
        .unwrap()
        .into_inner()
        .submission
        .unwrap();
    let created_since = invite(&intake, &partner_token, &client_id, &matter_id, address).await;
    let log =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    let last = common::logged_leaf(&log, "intake.invitation.created", &id_of(&created_since)).await;
    let (export_arg, key) = common::exported_log(&data, &sandbox, &log, last).await;
    sandbox.stop().await;

    common::restore(&data, ServiceName::Intake, &backup).await;
    let restore = || {
        common::restore_command(
            &data,
            &spec,
            &["intake", "--log", &export_arg, "--public-key", &key],
        )
    };
    let (code, out) = restore();
    assert_eq!(code, 0, "{out}");
    let results = |id: &str| common::restore_results(&out, id);
    let pair = |change: &str, result: &str| (change.to_owned(), result.to_owned());
    assert_eq!(
        results(&id_of(&withdrawn)),
        [
            pair("invite", "already_applied"),
            pair("revoke", "reapplied")
        ],
        "{out}"
    );
    assert_eq!(
        results(&id_of(&withdrawn_before)),
        [
            pair("invite", "already_applied"),
            pair("revoke", "already_applied")
        ],
        "{out}"
    );
    assert_eq!(results(&submission.id), [pair("submit", "lost")], "{out}");
    assert_eq!(
        results(&id_of(&created_since)),
        [pair("invite", "lost")],
        "{out}"
    );
    assert!(
        out.contains("\"invitations_lost\":1") && out.contains("\"submissions_lost\":1"),
        "{out}"
    );
    assert!(out.contains("invite those clients again"), "{out}");

    // The withdrawn link stays refused; the one created since is gone.
    let sandbox = Sandbox::start(&data, spec.clone()).await;
    let mut intake = IntakeServiceClient::new(
        channel(&data, &sandbox, ServiceName::Intake, "client-portal").await,
    );
    let open = |secret: &str| pb::OpenInvitationRequest {
        secret: secret.to_owned(),
    };
    let err = intake
        .open_invitation(open(&withdrawn.secret))
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err), "invitation_revoked", "{err:?}");
    let err = intake
        .open_invitation(open(&created_since.secret))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The withdrawal made again is on the record, naming the logged one.
    let log =
        AuditServiceClient::new(channel(&data, &sandbox, ServiceName::Audit, "operator").await);
    common::eventually(
        std::time::Duration::from_secs(20),
        "the withdrawal made again logged",
        || {
            let mut log = log.clone();
            let (client_id, id) = (client_id.clone(), id_of(&withdrawn));
            async move {
                common::logged_events(
                    &mut log,
                    &client_id,
                    "intake",
                    "intake.invitation_revocation.reapplied",
                )
                .await
                .iter()
                .any(|e| {
                    e.resource.as_ref().is_some_and(|r| r.id == id)
                        && e.reason.starts_with("event-")
                })
            }
        },
    )
    .await;
    sandbox.stop().await;

    // A second run changes nothing.
    let (code, out) = restore();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        common::restore_results(&out, &id_of(&withdrawn)),
        [
            pair("invite", "already_applied"),
            pair("revoke", "already_applied")
        ],
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_withdrawn_invitations_stay_withdrawn_after_a_restore() {
    withdrawn_invitations_stay_withdrawn_after_a_restore(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_withdrawn_invitations_stay_withdrawn_after_a_restore() {
    withdrawn_invitations_stay_withdrawn_after_a_restore(Backend::Postgres).await;
}
