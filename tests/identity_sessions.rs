//! Staff sign-in through the identity API, on SQLite (in-process
//! coordination) and on PostgreSQL with Redis: password and TOTP, tokens
//! that verify from the JWKS, refresh rotation with reuse detection, logout,
//! lockout, and bad input.

mod common;

use confidant::sandbox::{Sandbox, SandboxData, SandboxSpec};
use confidant_identity::credentials::totp_code;
use confidant_identity::tokens::TokenVerifier;
use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_proto::identity::v1::*;
use confidant_runtime::ServiceName;
use confidant_runtime::client::PeerChannel;
use confidant_runtime::storage::Backend;

type Client = IdentityServiceClient<PeerChannel>;

async fn client(data: &SandboxData, sandbox: &Sandbox, name: &str) -> Client {
    common::identity_client(data, sandbox, name).await
}

fn reason(status: &tonic::Status) -> String {
    common::error_reason(status)
}

fn base32_decode(s: &str) -> Vec<u8> {
    base32::decode(base32::Alphabet::Rfc4648 { padding: false }, s).unwrap()
}

fn code_at(secret: &[u8], offset_steps: i64) -> String {
    let now = chrono::Utc::now().timestamp() + offset_steps * 30;
    totp_code(secret, u64::try_from(now).unwrap())
}

const PASSWORD: &str = "a long enough passphrase";

/// A staff member with a password and a confirmed authenticator; returns
/// (staff id, TOTP secret, the code that confirmed it).
async fn enrolled(admin: &mut Client, app: &mut Client, email: &str) -> (String, Vec<u8>, String) {
    let staff_id = admin
        .create_staff_member(CreateStaffMemberRequest {
            request_id: String::new(),
            email: email.into(),
            display_name: "A. Lawyer".into(),
            roles: vec!["associate".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .staff_id;
    admin
        .set_password(SetPasswordRequest {
            staff_id: staff_id.clone(),
            password: PASSWORD.into(),
            temporary: false,
        })
        .await
        .unwrap();

    // Without an authenticator, sign-in stops after the password.
    let err = app
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
            totp_code: "000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "totp_not_enrolled");

    let enrolment = app
        .enroll_totp(EnrollTotpRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(enrolment.otpauth_uri.starts_with("otpauth://totp/"));
    let secret = base32_decode(&enrolment.secret_base32);
    let code = code_at(&secret, 0);
    app.confirm_totp(ConfirmTotpRequest {
        email: email.into(),
        password: PASSWORD.into(),
        code: code.clone(),
    })
    .await
    .unwrap();
    (staff_id, secret, code)
}

async fn sign_in_with_password_and_totp_then_rotate_and_end_sessions(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut app = client(&data, &sandbox, "client-portal").await;
    let email = "associate@firm.example";
    let (staff_id, secret, used_code) = enrolled(&mut admin, &mut app, email).await;

    // The TOTP seed is stored sealed under the KMS-wrapped data key.
    let db = confidant_runtime::storage::Database::connect(
        &data.database_url(ServiceName::Identity),
        "identity",
        confidant_runtime::storage::PoolOptions::default(),
    )
    .await
    .unwrap();
    let (stored,): (Vec<u8>,) = db
        .fetch_optional(
            "SELECT totp_secret FROM credentials WHERE staff_id = $1",
            vec![confidant_runtime::portable::Value::Uuid(
                staff_id.parse().unwrap(),
            )],
        )
        .await
        .unwrap()
        .unwrap();
    assert!(stored.len() > secret.len());
    assert!(
        !stored.windows(secret.len()).any(|w| w == secret.as_slice()),
        "the seed is stored in clear"
    );
    db.close().await;

    // The code that confirmed enrolment cannot sign in again (single use);
    // the next step's code can.
    let replay = app
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
            totp_code: used_code,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&replay), "bad_credentials");
    let tokens = app
        .login(LoginRequest {
            email: "Associate@Firm.Example".into(),
            password: PASSWORD.into(),
            totp_code: code_at(&secret, 1),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();

    // The access token verifies from the published JWKS.
    let jwks = app.get_jwks(GetJwksRequest {}).await.unwrap().into_inner();
    let verifier = TokenVerifier::from_jwks(&jwks.jwks_json, &jwks.issuer).unwrap();
    let claims = verifier.verify(&tokens.access_token).unwrap();
    assert_eq!(claims.sub, staff_id);
    assert_eq!(claims.sid, tokens.session_id);
    assert_eq!(claims.roles, ["associate"]);

    // Refresh tokens rotate; presenting a used one ends the session.
    let second = app
        .refresh_session(RefreshSessionRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_ne!(second.refresh_token, tokens.refresh_token);
    assert_eq!(second.session_id, tokens.session_id);
    let reuse = app
        .refresh_session(RefreshSessionRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&reuse), "session_ended");
    let after = app
        .refresh_session(RefreshSessionRequest {
            refresh_token: second.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        reason(&after),
        "session_ended",
        "the whole session ended, not just the old token"
    );

    // Logout: the holder of a session ends it with its access token; another
    // client cannot end someone else's session.
    // (A code works once, so a second staff member signs in here rather
    // than waiting for the next 30-second step.)
    let partner = "partner@firm.example";
    let (_, partner_secret, _) = enrolled(&mut admin, &mut app, partner).await;
    let third = app
        .login(LoginRequest {
            email: partner.into(),
            password: PASSWORD.into(),
            totp_code: code_at(&partner_secret, 1),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let denied = app
        .revoke_session(RevokeSessionRequest {
            session_id: third.session_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let mut logout = tonic::Request::new(RevokeSessionRequest {
        session_id: third.session_id.clone(),
    });
    logout.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", third.access_token).parse().unwrap(),
    );
    app.revoke_session(logout).await.unwrap();
    let ended = app
        .refresh_session(RefreshSessionRequest {
            refresh_token: third.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&ended), "session_ended");
    sandbox.stop().await;
}

async fn repeated_failures_lock_the_account_and_bad_input_is_named(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut app = client(&data, &sandbox, "client-portal").await;
    let email = "paralegal@firm.example";
    let (_, secret, _) = enrolled(&mut admin, &mut app, email).await;

    for _ in 0..5 {
        let err = app
            .login(LoginRequest {
                email: email.into(),
                password: "wrong password entirely".into(),
                totp_code: code_at(&secret, 1),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&err), "bad_credentials");
    }
    let locked = app
        .login(LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
            totp_code: code_at(&secret, 1),
        })
        .await
        .unwrap_err();
    assert_eq!(locked.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason(&locked), "account_locked");

    // An unknown account fails exactly like a wrong password.
    let unknown = app
        .login(LoginRequest {
            email: "nobody@firm.example".into(),
            password: PASSWORD.into(),
            totp_code: "123456".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&unknown), "bad_credentials");

    let fields = |s: tonic::Status| common::violated_fields(&s);
    let err = admin
        .set_password(SetPasswordRequest {
            staff_id: "x".into(),
            password: "short".into(),
            temporary: false,
        })
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["staff_id", "password"]);
    let err = app
        .login(LoginRequest {
            email: String::new(),
            password: String::new(),
            totp_code: "12".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(err), ["email", "password", "totp_code"]);

    // Passwords are set by administrators only.
    let err = app
        .set_password(SetPasswordRequest {
            staff_id: uuid::Uuid::now_v7().to_string(),
            password: PASSWORD.into(),
            temporary: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    sandbox.stop().await;
}

/// Creates a staff member of `role`, signs in, returns the access token and session.
async fn signed_in(admin: &mut Client, app: &mut Client, email: &str, role: &str) -> SessionTokens {
    let staff_id = admin
        .create_staff_member(CreateStaffMemberRequest {
            request_id: String::new(),
            email: email.into(),
            display_name: "S. Officer".into(),
            roles: vec![role.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .staff_id;
    admin
        .set_password(SetPasswordRequest {
            staff_id,
            password: PASSWORD.into(),
            temporary: false,
        })
        .await
        .unwrap();
    let enrolment = app
        .enroll_totp(EnrollTotpRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let secret = base32_decode(&enrolment.secret_base32);
    app.confirm_totp(ConfirmTotpRequest {
        email: email.into(),
        password: PASSWORD.into(),
        code: code_at(&secret, 0),
    })
    .await
    .unwrap();
    app.login(LoginRequest {
        email: email.into(),
        password: PASSWORD.into(),
        totp_code: code_at(&secret, 1),
    })
    .await
    .unwrap()
    .into_inner()
    .tokens
    .unwrap()
}

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn staff_tokens_open_the_audit_log_to_security_officers_only(backend: Backend) {
    use confidant_proto::audit::v1::ListEventsRequest;
    use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut app = client(&data, &sandbox, "client-portal").await;
    let officer = signed_in(
        &mut admin,
        &mut app,
        "officer@firm.example",
        "security_officer",
    )
    .await;
    let associate = signed_in(&mut admin, &mut app, "associate@firm.example", "associate").await;

    // The firm's application holds no reader identity of its own; the staff
    // member's token decides.
    let tls = data.client_tls("client-portal");
    let mut audit = AuditServiceClient::new(
        confidant_runtime::client::connect(&sandbox.url(ServiceName::Audit), &tls, "localhost")
            .await
            .unwrap(),
    );
    // (Sign-in events travel through identity's outbox; give them a moment.)
    let mut seen = false;
    for _ in 0..100 {
        let page = audit
            .list_events(with_bearer(
                ListEventsRequest::default(),
                &officer.access_token,
            ))
            .await
            .unwrap()
            .into_inner();
        seen = page.events.iter().any(|e| {
            e.event
                .as_ref()
                .is_some_and(|e| e.action == "identity.login.succeeded")
        });
        if seen {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen, "the officer sees the sign-in events");

    let denied = audit
        .list_events(with_bearer(
            ListEventsRequest::default(),
            &associate.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason(&denied), "no_role_permission");

    let anonymous = audit
        .list_events(ListEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(reason(&anonymous), "audit_reader_required");

    let forged = audit
        .list_events(with_bearer(
            ListEventsRequest::default(),
            "eyJhbGciOiJFZERTQSJ9.e30.AAAA",
        ))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated);

    // Once the officer signs out, the same token stops working everywhere.
    // The audit service trusted the session it had just found live; the
    // revocation announcement ends that trust as soon as it is delivered
    // (the test allows for delivery, far less than the configured window).
    app.revoke_session(with_bearer(
        RevokeSessionRequest {
            session_id: officer.session_id.clone(),
        },
        &officer.access_token,
    ))
    .await
    .unwrap();
    let mut refused = None;
    for _ in 0..50 {
        match audit
            .list_events(with_bearer(
                ListEventsRequest::default(),
                &officer.access_token,
            ))
            .await
        {
            Err(status) => {
                refused = Some(status);
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
    let revoked = refused.expect("the revoked session is refused");
    assert_eq!(revoked.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason(&revoked), "session_revoked");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_staff_tokens_open_the_audit_log_to_security_officers_only() {
    staff_tokens_open_the_audit_log_to_security_officers_only(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_staff_tokens_open_the_audit_log_to_security_officers_only() {
    staff_tokens_open_the_audit_log_to_security_officers_only(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sign_in_with_password_and_totp_then_rotate_and_end_sessions() {
    sign_in_with_password_and_totp_then_rotate_and_end_sessions(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sign_in_with_password_and_totp_then_rotate_and_end_sessions() {
    sign_in_with_password_and_totp_then_rotate_and_end_sessions(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_repeated_failures_lock_the_account_and_bad_input_is_named() {
    repeated_failures_lock_the_account_and_bad_input_is_named(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_repeated_failures_lock_the_account_and_bad_input_is_named() {
    repeated_failures_lock_the_account_and_bad_input_is_named(Backend::Postgres).await;
}

async fn access_taken_away_after_a_backup_stays_away_after_its_restore(backend: Backend) {
    use common::directory::{assign, cleared, decide, new_client, new_matter, new_matter_in};

    let data = SandboxData::new(backend).await;
    let spec = SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]);
    let sandbox = Sandbox::start(&data, spec.clone()).await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut app = client(&data, &sandbox, "client-portal").await;
    let mut vault = client(&data, &sandbox, "vault").await;

    // Before the backup: a signed-in session, three cleared associates on
    // a matter, a fourth staff member behind nothing yet, and a password.
    let session = signed_in(&mut admin, &mut app, "signed.in@firm.example", "associate").await;
    let client_id = new_client(&mut admin).await;
    let matter = new_matter(&mut admin, &client_id, None, "probate").await;
    let leaver = cleared(&mut admin, "leaver@firm.example", "associate").await;
    assign(&mut admin, &matter, &leaver).await;
    let reassigned = cleared(&mut admin, "reassigned@firm.example", "associate").await;
    let assignment = assign(&mut admin, &matter, &reassigned).await;
    let demoted = cleared(&mut admin, "demoted@firm.example", "associate").await;
    assign(&mut admin, &matter, &demoted).await;
    let walled = cleared(&mut admin, "walled@firm.example", "associate").await;
    assign(&mut admin, &matter, &walled).await;
    // A second matter of the client's, on which the walled associate will
    // be let through the wall.
    let excepted = new_matter(&mut admin, &client_id, None, "probate").await;
    assign(&mut admin, &excepted, &walled).await;
    let rotated = common::directory::staff(&mut admin, "rotated@firm.example", "associate").await;
    let attorney = cleared(&mut admin, "attorney@firm.example", "partner").await;
    let late_joiner = cleared(&mut admin, "late.joiner@firm.example", "associate").await;
    // On the matter, but not cleared until after the backup.
    let trainee = common::directory::staff(&mut admin, "trainee@firm.example", "associate").await;
    assign(&mut admin, &matter, &trainee).await;
    for staff in [&rotated, &walled] {
        admin
            .set_password(SetPasswordRequest {
                staff_id: staff.clone(),
                password: PASSWORD.into(),
                temporary: false,
            })
            .await
            .unwrap();
    }
    for staff in [&leaver, &reassigned, &demoted, &walled] {
        assert!(
            decide(&mut vault, staff, "client_data.read", &matter)
                .await
                .allowed
        );
    }
    // On leave at the backup, back since; and away and back since.
    let returner = cleared(&mut admin, "returner@firm.example", "associate").await;
    assign(&mut admin, &matter, &returner).await;
    let away_and_back = cleared(&mut admin, "away.and.back@firm.example", "associate").await;
    assign(&mut admin, &matter, &away_and_back).await;
    let staff_request = |staff: &str| DisableStaffMemberRequest {
        staff_id: staff.to_owned(),
    };
    admin
        .disable_staff_member(staff_request(&returner))
        .await
        .unwrap();
    // Two authenticators: one lost after the backup, one replaced before.
    let (lost_device, ..) = enrolled(&mut admin, &mut app, "lost.device@firm.example").await;
    let (replaced_device, ..) =
        enrolled(&mut admin, &mut app, "replaced.device@firm.example").await;
    let reset = |staff: &str| ResetTotpRequest {
        staff_id: staff.to_owned(),
    };
    admin.reset_totp(reset(&replaced_device)).await.unwrap();
    // A name changed before the backup; the attorney's after it.
    let rename = |staff: &str, name: &str| UpdateStaffMemberRequest {
        staff_id: staff.to_owned(),
        display_name: name.to_owned(),
        ..Default::default()
    };
    admin
        .update_staff_member(rename(&reassigned, "R. Assigned"))
        .await
        .unwrap();
    let backup = common::back_up(&data, ServiceName::Identity).await;
    admin
        .update_staff_member(rename(&attorney, "A. Torney KC"))
        .await
        .unwrap();

    // After it, access is taken away in every way the directory knows, and
    // a wall goes up, screening a staff member the backup holds and one it
    // does not.
    admin
        .disable_staff_member(DisableStaffMemberRequest {
            staff_id: leaver.clone(),
        })
        .await
        .unwrap();
    admin
        .revoke_assignment(RevokeAssignmentRequest {
            assignment_id: assignment.clone(),
        })
        .await
        .unwrap();
    admin
        .revoke_role(RevokeRoleRequest {
            staff_id: demoted.clone(),
            role: "associate".into(),
        })
        .await
        .unwrap();
    admin
        .set_password(SetPasswordRequest {
            staff_id: rotated.clone(),
            password: "a new and different passphrase".into(),
            temporary: false,
        })
        .await
        .unwrap();
    admin.reset_totp(reset(&lost_device)).await.unwrap();
    let enable = |staff: &str| EnableStaffMemberRequest {
        staff_id: staff.to_owned(),
    };
    admin.enable_staff_member(enable(&returner)).await.unwrap();
    admin
        .disable_staff_member(staff_request(&away_and_back))
        .await
        .unwrap();
    admin
        .enable_staff_member(enable(&away_and_back))
        .await
        .unwrap();
    let newcomer = cleared(&mut admin, "newcomer@firm.example", "associate").await;
    // A client taken on, and two matters opened for it: one under the
    // attorney, one under the newcomer, whom the backup does not hold.
    let new_client_id = new_client(&mut admin).await;
    let opened = new_matter_in(
        &mut admin,
        &new_client_id,
        Some(&attorney),
        "Family & Children",
        "GB-SCT",
    )
    .await;
    let opened_by_newcomer = new_matter(&mut admin, &new_client_id, Some(&newcomer), "tax").await;
    admin
        .close_matter(CloseMatterRequest {
            matter_id: opened_by_newcomer.clone(),
        })
        .await
        .unwrap();
    // Access given: an assignment for a month, a role, and an assignment
    // of the newcomer.
    let until = chrono::Utc::now() + chrono::Duration::days(30);
    let late_assignment = admin
        .assign_staff(AssignStaffRequest {
            matter_id: matter.clone(),
            staff_id: late_joiner.clone(),
            expire_time: Some(prost_types::Timestamp {
                seconds: until.timestamp(),
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .assignment_id;
    admin
        .grant_role(GrantRoleRequest {
            staff_id: late_joiner.clone(),
            role: "auditor".into(),
            expire_time: None,
        })
        .await
        .unwrap();
    let newcomer_assignment = assign(&mut admin, &matter, &newcomer).await;
    // The trainee signs the NDA and passes the training.
    let mut trainee_attestations = Vec::new();
    for (kind, score) in [(AttestationKind::Nda, 0), (AttestationKind::Training, 95)] {
        trainee_attestations
            .push(common::directory::attest(&mut admin, &trainee, kind, 1, 365, score).await);
    }
    assert!(
        decide(&mut vault, &trainee, "client_data.read", &matter)
            .await
            .allowed
    );
    let wall = admin
        .create_wall(CreateWallRequest {
            screened_staff_ids: vec![walled.clone(), newcomer.clone()],
            client_ids: vec![client_id.clone()],
            matter_ids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .wall_id;
    // Through it: the walled associate on the second matter; on the first
    // too, but not for long; and the newcomer.
    let except = |staff: &str, matter: &str| {
        let request = GrantWallExceptionRequest {
            wall_id: wall.clone(),
            staff_id: staff.to_owned(),
            matter_id: matter.to_owned(),
            reason: "clients' informed consent of 2026-11-20".into(),
            expire_time: Some(prost_types::Timestamp {
                seconds: until.timestamp(),
                nanos: 0,
            }),
        };
        let mut admin = admin.clone();
        async move {
            admin
                .grant_wall_exception(request)
                .await
                .unwrap()
                .into_inner()
                .exception_id
        }
    };
    let exception = except(&walled, &excepted).await;
    let short_lived = except(&walled, &matter).await;
    let newcomer_exception = except(&newcomer, &matter).await;
    admin
        .revoke_wall_exception(RevokeWallExceptionRequest {
            exception_id: short_lived.clone(),
        })
        .await
        .unwrap();
    assert!(
        decide(&mut vault, &walled, "client_data.read", &excepted)
            .await
            .allowed
    );

    // The log, exported once a signed checkpoint covers all of it.
    let log = audit_log(&data, &sandbox).await;
    // The last change made: the short-lived exception's end.
    let last = common::logged_leaf(&log, "identity.wall.exception_revoked", &short_lived).await;
    let (export_arg, key) = common::exported_log(&data, &sandbox, &log, last).await;
    sandbox.stop().await;

    // Identity's database is restored, and the command runs before
    // identity starts on it.
    common::restore(&data, ServiceName::Identity, &backup).await;
    let restore = || {
        common::restore_command(
            &data,
            &spec,
            &["identity", "--log", &export_arg, "--public-key", &key],
        )
    };
    let (code, out) = restore();
    assert_eq!(code, 0, "{out}");
    let done = |change: &str| vec![(change.to_owned(), "reapplied".to_owned())];
    // The report's line about `id`.
    let line = |id: &str| -> serde_json::Value {
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["id"] == id)
            .unwrap()
    };
    assert_eq!(
        common::restore_results(&out, &leaver),
        done("revoke"),
        "{out}"
    );
    // Enabled since the backup, which holds them disabled; disabled and
    // enabled since, which comes to nothing.
    assert_eq!(
        common::restore_results(&out, &returner),
        done("enable"),
        "{out}"
    );
    assert_eq!(
        common::restore_results(&out, &away_and_back),
        vec![("enable".to_owned(), "already_applied".to_owned())],
        "{out}"
    );
    // Granted before the backup, which holds it; revoked after.
    assert_eq!(
        common::restore_results(&out, &assignment),
        vec![
            ("assign".to_owned(), "already_applied".to_owned()),
            ("revoke".to_owned(), "reapplied".to_owned())
        ]
    );
    assert_eq!(
        common::restore_results(&out, &format!("{demoted}/associate")),
        done("revoke")
    );
    assert_eq!(
        common::restore_results(&out, &rotated),
        done("reset_sign_in")
    );
    // A password set before the backup is the one the backup holds.
    assert_eq!(
        common::restore_results(&out, &walled),
        vec![("reset_sign_in".to_owned(), "already_applied".to_owned())]
    );
    // A name changed before the backup is in it; the one changed since is
    // lost (the log does not say to what).
    assert_eq!(
        common::restore_results(&out, &reassigned),
        vec![("update_staff".to_owned(), "already_applied".to_owned())],
        "{out}"
    );
    assert_eq!(
        common::restore_results(&out, &attorney),
        vec![("update_staff".to_owned(), "lost".to_owned())],
        "{out}"
    );
    assert!(
        out.contains("\"staff_updates_lost\":1") && out.contains("update-staff"),
        "{out}"
    );
    // The backup holds the authenticator lost since (and the password set
    // before it), but not the one removed before it.
    let sign_in_results = |results: [&str; 2]| {
        results
            .map(|r| ("reset_sign_in".to_owned(), r.to_owned()))
            .to_vec()
    };
    assert_eq!(
        common::restore_results(&out, &lost_device),
        sign_in_results(["already_applied", "reapplied"]),
        "{out}"
    );
    assert_eq!(
        common::restore_results(&out, &replaced_device),
        sign_in_results(["already_applied", "already_applied"]),
        "{out}"
    );
    // The client and its matters are back, with their ids and
    // classification, and the closing of the one closed since.
    assert_eq!(
        common::restore_results(&out, &new_client_id),
        done("client")
    );
    assert_eq!(
        common::restore_results(&out, &opened),
        done("matter"),
        "{out}"
    );
    assert_eq!(
        common::restore_results(&out, &opened_by_newcomer),
        vec![
            ("matter".to_owned(), "reapplied".to_owned()),
            ("revoke".to_owned(), "reapplied".to_owned())
        ],
        "{out}"
    );
    // The access given since is given again, but to no one the database
    // does not hold.
    assert_eq!(
        common::restore_results(&out, &late_assignment),
        done("assign"),
        "{out}"
    );
    assert_eq!(
        common::restore_results(&out, &format!("{late_joiner}/auditor")),
        done("grant_role"),
        "{out}"
    );
    assert_eq!(
        common::restore_results(&out, &newcomer_assignment),
        vec![("assign".to_owned(), "not_in_database".to_owned())],
        "{out}"
    );
    // The trainee's NDA and training are on record again.
    for id in &trainee_attestations {
        assert_eq!(common::restore_results(&out, id), done("attest"), "{out}");
    }
    // The wall is up again, over whom the restored database holds; the
    // line names the one it does not.
    assert_eq!(common::restore_results(&out, &wall), done("wall"), "{out}");
    assert_eq!(
        line(&wall)["not_in_database"],
        serde_json::json!([{ "type": "staff", "id": newcomer }]),
        "{out}"
    );
    assert!(!out.contains("put them up again"), "{out}");
    assert!(
        out.contains("2 staff members' sign-in is locked") && out.contains("directory staff"),
        "{out}"
    );
    // The exceptions granted through it since are granted again, and the
    // one revoked since is revoked again; the newcomer's names the
    // newcomer, whom the database does not hold.
    assert_eq!(
        common::restore_results(&out, &exception),
        done("except"),
        "{out}"
    );
    assert_eq!(
        common::restore_results(&out, &short_lived),
        vec![
            ("except".to_owned(), "reapplied".to_owned()),
            ("revoke".to_owned(), "reapplied".to_owned())
        ],
        "{out}"
    );
    assert_eq!(
        common::restore_results(&out, &newcomer_exception),
        vec![("except".to_owned(), "not_in_database".to_owned())],
        "{out}"
    );
    assert_eq!(
        line(&newcomer_exception)["not_in_database"],
        serde_json::json!([{ "type": "staff", "id": newcomer }]),
        "{out}"
    );
    let summary: serde_json::Value = out
        .lines()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.get("summary").is_some())
        })
        .unwrap();
    assert!(
        summary["summary"]["sessions_ended"].as_u64().unwrap() >= 1,
        "{out}"
    );

    let sandbox = Sandbox::start(&data, spec.clone()).await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut app = client(&data, &sandbox, "client-portal").await;
    let mut vault = client(&data, &sandbox, "vault").await;
    // Nobody regains what was taken away.
    let denial = |r: AuthorizeResponse| DenialReason::try_from(r.reason).unwrap();
    let leaver_now = decide(&mut vault, &leaver, "client_data.read", &matter).await;
    assert!(!leaver_now.allowed);
    assert_eq!(denial(leaver_now), DenialReason::AccountDisabled);
    let reassigned_now = decide(&mut vault, &reassigned, "client_data.read", &matter).await;
    assert_eq!(denial(reassigned_now), DenialReason::NotAssigned);
    let demoted_now = decide(&mut vault, &demoted, "client_data.read", &matter).await;
    assert!(!demoted_now.allowed, "{demoted_now:?}");
    let late_now = decide(&mut vault, &late_joiner, "client_data.read", &matter).await;
    assert!(late_now.allowed, "{late_now:?}");
    for back in [&returner, &away_and_back] {
        let back_now = decide(&mut vault, back, "client_data.read", &matter).await;
        assert!(back_now.allowed, "{back_now:?}");
    }
    let trainee_now = decide(&mut vault, &trainee, "client_data.read", &matter).await;
    assert!(trainee_now.allowed, "{trainee_now:?}");
    // The attorney is again responsible for the matter opened since, and
    // it is classified as it was.
    assert!(
        decide(&mut vault, &attorney, "client_data.read", &opened)
            .await
            .allowed
    );
    let matters = admin
        .get_matters(GetMattersRequest {
            matter_ids: vec![opened.clone(), opened_by_newcomer.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .matters;
    assert_eq!(matters.len(), 2, "{matters:?}");
    let back = |id: &str| matters.iter().find(|m| m.matter_id == id).unwrap();
    assert_eq!(back(&opened).client_id, new_client_id);
    assert_eq!(back(&opened).practice_area, "Family & Children");
    assert_eq!(back(&opened).jurisdiction, "GB-SCT");
    assert!(back(&opened).close_time.is_none());
    assert!(back(&opened_by_newcomer).close_time.is_some());
    // Nor does the wall come down: the screened associate stays behind it.
    let walled_now = decide(&mut vault, &walled, "client_data.read", &matter).await;
    assert!(!walled_now.allowed, "{walled_now:?}");
    assert_eq!(denial(walled_now), DenialReason::BehindWall);
    // Except where an exception granted since lets them through.
    let through = decide(&mut vault, &walled, "client_data.read", &excepted).await;
    assert!(through.allowed, "{through:?}");
    let explained = admin
        .explain_matter_access(ExplainMatterAccessRequest {
            matter_id: excepted.clone(),
            time: None,
            permission: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let walled_entry = explained.iter().find(|e| e.staff_id == walled).unwrap();
    assert_eq!(walled_entry.wall_exception_ids, vec![exception.clone()]);
    // The session open at the backup is over.
    let refreshed = app
        .refresh_session(RefreshSessionRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refreshed.code(), tonic::Code::Unauthenticated);
    // The directory shows whose sign-in the restore locked.
    for locked in [&rotated, &lost_device] {
        assert_eq!(sign_in_state(&mut admin, locked).await, SignInState::Locked);
    }
    assert_eq!(
        sign_in_state(&mut admin, &replaced_device).await,
        SignInState::TotpPending
    );
    // The password the backup held no longer works; a new one from an
    // administrator does.
    let old = app
        .enroll_totp(EnrollTotpRequest {
            email: "rotated@firm.example".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&old), "bad_credentials");
    admin
        .set_password(SetPasswordRequest {
            staff_id: rotated.clone(),
            password: "an administrator's reset".into(),
            temporary: false,
        })
        .await
        .unwrap();
    app.enroll_totp(EnrollTotpRequest {
        email: "rotated@firm.example".into(),
        password: "an administrator's reset".into(),
    })
    .await
    .unwrap();
    sandbox.stop().await;

    // A second run changes nothing more: the reset password stays.
    let (code, out) = restore();
    assert_eq!(code, 0, "{out}");
    for id in [
        leaver.clone(),
        returner.clone(),
        away_and_back.clone(),
        assignment.clone(),
        format!("{demoted}/associate"),
        rotated.clone(),
        lost_device.clone(),
        wall.clone(),
        late_assignment.clone(),
        format!("{late_joiner}/auditor"),
        new_client_id.clone(),
        opened.clone(),
        trainee_attestations[0].clone(),
        trainee_attestations[1].clone(),
        exception.clone(),
        short_lived.clone(),
    ] {
        let again = common::restore_results(&out, &id);
        assert!(
            !again.is_empty() && again.iter().all(|(_, r)| r == "already_applied"),
            "{id}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_access_taken_away_after_a_backup_stays_away_after_its_restore() {
    access_taken_away_after_a_backup_stays_away_after_its_restore(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_access_taken_away_after_a_backup_stays_away_after_its_restore() {
    access_taken_away_after_a_backup_stays_away_after_its_restore(Backend::Postgres).await;
}

async fn admins_list_staff_with_their_roles_and_sign_in(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut app = client(&data, &sandbox, "client-portal").await;
    // Four staff members at four stages: signed in with TOTP, a password
    // only, nothing yet (with a role for a month), and gone.
    signed_in(&mut admin, &mut app, "carol.ready@firm.example", "partner").await;
    let pending =
        common::directory::staff(&mut admin, "bob.pending@firm.example", "paralegal").await;
    admin
        .set_password(SetPasswordRequest {
            staff_id: pending.clone(),
            password: PASSWORD.into(),
            temporary: false,
        })
        .await
        .unwrap();
    let newcomer =
        common::directory::staff(&mut admin, "alice.new@firm.example", "paralegal").await;
    let month = chrono::Utc::now() + chrono::Duration::days(30);
    admin
        .grant_role(GrantRoleRequest {
            staff_id: newcomer.clone(),
            role: "auditor".into(),
            expire_time: Some(prost_types::Timestamp {
                seconds: month.timestamp(),
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    let leaver = common::directory::staff(&mut admin, "dan.leaver@firm.example", "associate").await;
    admin
        .disable_staff_member(DisableStaffMemberRequest {
            staff_id: leaver.clone(),
        })
        .await
        .unwrap();

    let list = |role: &str, include_disabled: bool| {
        let (mut admin, role) = (admin.clone(), role.to_owned());
        async move {
            admin
                .list_staff_members(ListStaffMembersRequest {
                    role,
                    include_disabled,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .staff
        }
    };
    let ours = |staff: Vec<StaffMemberSummary>| -> Vec<StaffMemberSummary> {
        staff
            .into_iter()
            .filter(|s| s.email.ends_with("@firm.example"))
            .collect()
    };
    // By address, the disabled left out.
    let enabled = ours(list("", false).await);
    let emails: Vec<&str> = enabled.iter().map(|s| s.email.as_str()).collect();
    assert_eq!(
        emails,
        [
            "alice.new@firm.example",
            "bob.pending@firm.example",
            "carol.ready@firm.example"
        ]
    );
    let sign_in: Vec<SignInState> = enabled.iter().map(|s| s.sign_in()).collect();
    assert_eq!(
        sign_in,
        [
            SignInState::NoPassword,
            SignInState::TotpPending,
            SignInState::Ready
        ]
    );
    assert_eq!(enabled[0].staff_id, newcomer);
    let roles: Vec<(&str, Option<i64>)> = enabled[0]
        .roles
        .iter()
        .map(|r| (r.role.as_str(), r.expire_time.map(|t| t.seconds)))
        .collect();
    assert_eq!(
        roles,
        [("auditor", Some(month.timestamp())), ("paralegal", None)]
    );
    assert!(enabled.iter().all(|s| s.disable_time.is_none()));
    // By role, and with the disabled.
    let paralegals: Vec<String> = ours(list("paralegal", false).await)
        .into_iter()
        .map(|s| s.staff_id)
        .collect();
    assert_eq!(paralegals, [newcomer.clone(), pending.clone()]);
    let everyone = ours(list("", true).await);
    let gone = everyone.iter().find(|s| s.staff_id == leaver).unwrap();
    assert!(gone.disable_time.is_some());
    assert_eq!(everyone.len(), 4);
    // The ids of our staff a listing holds.
    let ids_of = |request: ListStaffMembersRequest| {
        let mut admin = admin.clone();
        async move {
            let listed = admin
                .list_staff_members(request)
                .await
                .unwrap()
                .into_inner()
                .staff;
            ours(listed)
                .into_iter()
                .map(|s| s.staff_id)
                .collect::<Vec<String>>()
        }
    };
    // By where their sign-in stands: who never finished setting up.
    let stage = |state: SignInState, include_disabled: bool| {
        ids_of(ListStaffMembersRequest {
            include_disabled,
            sign_in: state as i32,
            ..Default::default()
        })
    };
    assert_eq!(
        stage(SignInState::TotpPending, false).await,
        std::slice::from_ref(&pending)
    );
    assert_eq!(
        stage(SignInState::NoPassword, true).await,
        [newcomer.clone(), leaver.clone()]
    );
    assert_eq!(stage(SignInState::Ready, false).await.len(), 1);
    assert!(stage(SignInState::Locked, true).await.is_empty());
    // By part of the address or name, in either case; LIKE's own
    // characters match only themselves.
    let found = |query: &str| {
        ids_of(ListStaffMembersRequest {
            include_disabled: true,
            query: query.to_owned(),
            ..Default::default()
        })
    };
    assert_eq!(found("BOB.P").await, std::slice::from_ref(&pending));
    assert_eq!(found("LEAVER@").await, std::slice::from_ref(&leaver));
    assert_eq!(found("firm.example").await.len(), 4);
    assert!(found("%").await.is_empty());
    assert!(found("bob_pending").await.is_empty());
    assert!(found("nobody").await.is_empty());
    assert_eq!(found("s. OFF").await.len(), 1, "by displayed name");
    // In pages.
    common::check_pages(0, 1, |page_size, page_token| {
        let mut admin = admin.clone();
        async move {
            let r = admin
                .list_staff_members(ListStaffMembersRequest {
                    include_disabled: true,
                    page_size,
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let ids: Vec<String> = r.staff.into_iter().map(|s| s.staff_id).collect();
            Ok((ids, r.next_page_token))
        }
    })
    .await;
    // Admins only; a role name out of bounds is named.
    let refused = app
        .list_staff_members(ListStaffMembersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let err = admin
        .list_staff_members(ListStaffMembersRequest {
            role: "r".repeat(65),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["role"]);
    let err = admin
        .list_staff_members(ListStaffMembersRequest {
            sign_in: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["sign_in"]);
    // Every listing is in the audit log, with the role asked for.
    let log = audit_log(&data, &sandbox).await;
    common::eventually(
        std::time::Duration::from_secs(20),
        "the listings logged",
        || {
            let mut log = log.clone();
            async move {
                let listed =
                    common::logged_events(&mut log, "", "identity", "identity.staff.listed").await;
                listed.len() >= 9
                    && listed.iter().any(|e| {
                        confidant_runtime::audit::related_named(&e.related, "role")
                            == Some("paralegal")
                    })
                    && listed.iter().any(|e| {
                        confidant_runtime::audit::related_named(&e.related, "sign_in")
                            == Some("SIGN_IN_STATE_TOTP_PENDING")
                    })
            }
        },
    )
    .await;

    // `confidant directory staff` prints them, one line each.
    let out = common::directory_cli(&data, &sandbox, &["staff", "--role", "paralegal"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| {
            v["email"]
                .as_str()
                .is_some_and(|e| e.ends_with("@firm.example"))
        })
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[1]["staff_id"], pending.as_str());
    assert_eq!(lines[1]["sign_in"], "SIGN_IN_STATE_TOTP_PENDING");
    assert_eq!(lines[1]["roles"][0]["role"], "paralegal");
    let out = common::directory_cli(
        &data,
        &sandbox,
        &["staff", "--sign-in", "no-password", "--include-disabled"],
    );
    let ids: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| {
            v["email"]
                .as_str()
                .is_some_and(|e| e.ends_with("@firm.example"))
        })
        .map(|v| v["staff_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [newcomer.clone(), leaver.clone()], "{out}");
    let out = common::directory_cli(
        &data,
        &sandbox,
        &["staff", "--query", "DAN.", "--include-disabled"],
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains(&leaver), "{out}");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_admins_list_staff_with_their_roles_and_sign_in() {
    admins_list_staff_with_their_roles_and_sign_in(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_admins_list_staff_with_their_roles_and_sign_in() {
    admins_list_staff_with_their_roles_and_sign_in(Backend::Postgres).await;
}

/// Waits, if need be, until at least three seconds remain of the current
/// 30-second TOTP step, and returns it: the codes of the step before, this
/// one and the next are then all accepted while a test spends them in that
/// order (those of this step and the next for 30 seconds more).
async fn steady_step() -> i64 {
    let into = chrono::Utc::now().timestamp().rem_euclid(30);
    if into >= 27 {
        let left = u64::try_from(30 - into).unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(left + 1)).await;
    }
    chrono::Utc::now().timestamp().div_euclid(30)
}

/// Enrols an authenticator for `email` with `password`, confirming it
/// with the code of the step before a [`steady_step`]; returns its secret
/// and that step (whose code, and the next one's, are still unspent).
async fn enrolled_in_step(app: &mut Client, email: &str, password: &str) -> (Vec<u8>, i64) {
    let step = steady_step().await;
    let enrolment = app
        .enroll_totp(EnrollTotpRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let secret = base32_decode(&enrolment.secret_base32);
    app.confirm_totp(ConfirmTotpRequest {
        email: email.into(),
        password: password.into(),
        code: code_of(&secret, step - 1),
    })
    .await
    .unwrap();
    (secret, step)
}

/// Staff member `staff` (address `email`) given [`PASSWORD`] and an
/// authenticator, then signed in through each of `apps` (at most two) in
/// turn, with the codes of consecutive steps; their tokens, in that order.
async fn signed_in_through(
    admin: &mut Client,
    apps: &mut [&mut Client],
    staff: &str,
    email: &str,
) -> Vec<SessionTokens> {
    admin
        .set_password(SetPasswordRequest {
            staff_id: staff.to_owned(),
            password: PASSWORD.into(),
            temporary: false,
        })
        .await
        .unwrap();
    let (secret, step) = enrolled_in_step(apps[0], email, PASSWORD).await;
    let mut tokens = Vec::new();
    for (app, step) in apps.iter_mut().zip(step..) {
        let signed = app
            .login(LoginRequest {
                email: email.into(),
                password: PASSWORD.into(),
                totp_code: code_of(&secret, step),
            })
            .await
            .unwrap();
        tokens.push(signed.into_inner().tokens.unwrap());
    }
    tokens
}

type AuditLog = confidant_proto::audit::v1::audit_service_client::AuditServiceClient<PeerChannel>;

/// The audit log, read with the operator's certificate.
async fn audit_log(data: &SandboxData, sandbox: &Sandbox) -> AuditLog {
    AuditLog::new(common::channel(data, sandbox, ServiceName::Audit, "operator").await)
}

/// The events of `action` that identity logged about staff member `staff`
/// (one page of up to 1,000).
async fn logged_about(
    log: &AuditLog,
    action: &str,
    staff: &str,
) -> Vec<confidant_proto::audit::v1::AuditEvent> {
    common::logged_events(&mut log.clone(), "", "identity", action)
        .await
        .into_iter()
        .filter(|e| e.resource.as_ref().is_some_and(|r| r.id == staff))
        .collect()
}

/// `call(client, staff id)`, an administrator's method about one staff
/// member: about nobody it is NOT_FOUND, about a malformed id it names
/// `staff_id`, and from an application's certificate (not an
/// administrator's) it is PERMISSION_DENIED.
async fn refused_but_to_admins_about_someone<F, Fut>(
    admin: &Client,
    app: &Client,
    staff: &str,
    call: F,
) where
    F: Fn(Client, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let nobody = call(admin.clone(), uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(nobody.unwrap_err().code(), tonic::Code::NotFound);
    let malformed = call(admin.clone(), "x".into()).await;
    assert_eq!(
        common::violated_fields(&malformed.unwrap_err()),
        ["staff_id"]
    );
    let stranger = call(app.clone(), staff.to_owned()).await;
    assert_eq!(stranger.unwrap_err().code(), tonic::Code::PermissionDenied);
}

/// How many of `events` the operator's administrator certificate made.
fn by_operator(events: Vec<confidant_proto::audit::v1::AuditEvent>) -> usize {
    events
        .iter()
        .filter(|e| e.actor.as_ref().is_some_and(|a| a.id == "operator"))
        .count()
}

/// The code of TOTP time step `step`.
fn code_of(secret: &[u8], step: i64) -> String {
    totp_code(secret, u64::try_from(step * 30).unwrap())
}

/// Where `staff`'s sign-in stands, as the directory lists it.
/// Where a staff member's sign-in stands, as the directory lists it; a
/// listing of that state alone holds them too.
async fn sign_in_state(admin: &mut Client, staff: &str) -> SignInState {
    let listed = |state: SignInState| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_staff_members(ListStaffMembersRequest {
                    sign_in: state as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .staff
        }
    };
    let state = listed(SignInState::Unspecified)
        .await
        .into_iter()
        .find(|s| s.staff_id == staff)
        .unwrap()
        .sign_in();
    let alike = listed(state).await;
    assert!(alike.iter().all(|s| s.sign_in() == state));
    assert!(alike.iter().any(|s| s.staff_id == staff), "{state:?}");
    state
}

async fn staff_change_their_password_and_admins_reset_lost_authenticators(backend: Backend) {
    const TEMPORARY: &str = "handed out at the desk";
    const CHOSEN: &str = "one only I know of";
    const LATER: &str = "changed again a month on";
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut app = client(&data, &sandbox, "client-portal").await;
    let email = "counsel@firm.example";
    let staff = common::directory::staff(&mut admin, email, "associate").await;

    // A newcomer's temporary password, set with the command line: enough
    // to enrol an authenticator, not to sign in.
    let out = common::directory_command(&data, &sandbox)
        .args(["set-password", "--staff", &staff, "--temporary"])
        .env("CONFIDANT_STAFF_PASSWORD", TEMPORARY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["password_set"], staff.as_str());
    assert_eq!(line["temporary"], true);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(TEMPORARY));
    let (secret, step) = enrolled_in_step(&mut app, email, TEMPORARY).await;
    assert_eq!(
        sign_in_state(&mut admin, &staff).await,
        SignInState::PasswordChangeRequired
    );
    let sign_in = |password: &str, code: String| LoginRequest {
        email: email.into(),
        password: password.into(),
        totp_code: code,
    };
    let refused = app
        .login(sign_in(TEMPORARY, code_of(&secret, step)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&refused), "password_change_required");
    // A spent code is refused, temporary password or not.
    let wrong = app
        .login(sign_in(TEMPORARY, code_of(&secret, step - 1)))
        .await;
    assert_eq!(reason(&wrong.unwrap_err()), "bad_credentials");

    // The change: bad input is named; a wrong current password fails as a
    // sign-in does.
    let change = |current: &str, code: String, new: &str| ChangePasswordRequest {
        email: email.into(),
        current_password: current.into(),
        totp_code: code,
        new_password: new.into(),
    };
    let err = app
        .change_password(change(TEMPORARY, "12".into(), "short"))
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["totp_code", "new_password"]);
    let err = app
        .change_password(change(TEMPORARY, code_of(&secret, step), TEMPORARY))
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["new_password"]);
    let err = app
        .change_password(change(
            "not the password at all",
            code_of(&secret, step),
            CHOSEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "bad_credentials");
    // The code the refused sign-in checked was not spent: the change takes
    // it, and opens a session.
    let first = app
        .change_password(change(TEMPORARY, code_of(&secret, step), CHOSEN))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_eq!(sign_in_state(&mut admin, &staff).await, SignInState::Ready);
    let jwks = app.get_jwks(GetJwksRequest {}).await.unwrap().into_inner();
    let verifier = TokenVerifier::from_jwks(&jwks.jwks_json, &jwks.issuer).unwrap();
    assert_eq!(verifier.verify(&first.access_token).unwrap().sub, staff);
    let old = app
        .login(sign_in(TEMPORARY, code_of(&secret, step + 1)))
        .await;
    assert_eq!(reason(&old.unwrap_err()), "bad_credentials");
    // Now spent, the code changes nothing more.
    let replay = app
        .change_password(change(CHOSEN, code_of(&secret, step), LATER))
        .await
        .unwrap_err();
    assert_eq!(reason(&replay), "bad_credentials");
    // A later change ends the sessions before it.
    let second = app
        .change_password(change(CHOSEN, code_of(&secret, step + 1), LATER))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_ne!(second.session_id, first.session_id);
    let refresh = |tokens: &SessionTokens| RefreshSessionRequest {
        refresh_token: tokens.refresh_token.clone(),
    };
    let ended = app.refresh_session(refresh(&first)).await.unwrap_err();
    assert_eq!(reason(&ended), "session_ended");
    // Its access token is refused by every service at once; the new one
    // is a live session (an associate's: the audit log is not theirs).
    let audit = confidant_proto::audit::v1::audit_service_client::AuditServiceClient::new(
        common::channel(&data, &sandbox, ServiceName::Audit, "client-portal").await,
    );
    let audit_answer = |tokens: &SessionTokens| {
        let request = with_bearer(
            confidant_proto::audit::v1::ListEventsRequest::default(),
            &tokens.access_token,
        );
        let mut audit = audit.clone();
        async move { reason(&audit.list_events(request).await.unwrap_err()) }
    };
    assert_eq!(audit_answer(&first).await, "session_revoked");
    assert_eq!(audit_answer(&second).await, "no_role_permission");
    let second = app
        .refresh_session(refresh(&second))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();

    // The authenticator is lost: an administrator removes it, which ends
    // the staff member's sessions.
    let out = common::directory_cli(&data, &sandbox, &["reset-totp", "--staff", &staff]);
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["totp_reset"], staff.as_str());
    let ended = app.refresh_session(refresh(&second)).await.unwrap_err();
    assert_eq!(reason(&ended), "session_ended");
    assert_eq!(audit_answer(&second).await, "session_revoked");
    assert_eq!(
        sign_in_state(&mut admin, &staff).await,
        SignInState::TotpPending
    );
    let lost = app.login(sign_in(LATER, code_of(&secret, step + 1))).await;
    assert_eq!(reason(&lost.unwrap_err()), "totp_not_enrolled");
    let lost = app
        .change_password(change(LATER, code_of(&secret, step + 1), CHOSEN))
        .await;
    assert_eq!(reason(&lost.unwrap_err()), "totp_not_enrolled");
    // They enrol a new one with their password; the old one's codes are
    // worth nothing.
    let renewed = app
        .enroll_totp(EnrollTotpRequest {
            email: email.into(),
            password: LATER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let renewed = base32_decode(&renewed.secret_base32);
    assert_ne!(renewed, secret);
    app.confirm_totp(ConfirmTotpRequest {
        email: email.into(),
        password: LATER.into(),
        code: code_of(&renewed, step),
    })
    .await
    .unwrap();
    let stale = app.login(sign_in(LATER, code_of(&secret, step + 1))).await;
    assert_eq!(reason(&stale.unwrap_err()), "bad_credentials");
    app.login(sign_in(LATER, code_of(&renewed, step + 1)))
        .await
        .unwrap();

    // Removing an authenticator nobody enrolled, or of nobody, is refused;
    // so is anyone but an administrator.
    let newcomer = common::directory::staff(&mut admin, "newcomer@firm.example", "associate").await;
    let reset = |staff_id: &str| ResetTotpRequest {
        staff_id: staff_id.into(),
    };
    let none = admin.reset_totp(reset(&newcomer)).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&none), "totp_not_enrolled");
    refused_but_to_admins_about_someone(&admin, &app, &staff, |mut c, staff_id| async move {
        c.reset_totp(ResetTotpRequest { staff_id })
            .await
            .map(|_| ())
    })
    .await;

    // The staff member was told of each change by e-mail, with where it
    // came from, and never a password.
    let notices = common::mails_to(&data, email);
    let subjects: Vec<&str> = notices.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "Your Confidant password was set by an administrator",
            "Your Confidant password was changed",
            "Your Confidant password was changed",
            "Your Confidant authenticator was removed",
        ]
    );
    assert!(notices[0].1.contains("temporary") && notices[0].1.contains("(operator)"));
    assert!(
        notices[1].1.contains("through client-portal"),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .all(|(_, body)| body.contains("security officer")
                && [TEMPORARY, CHOSEN, LATER].iter().all(|p| !body.contains(p)))
    );

    // Each step is on the record: who set what, who changed it, who took
    // the authenticator away.
    let log = audit_log(&data, &sandbox).await;
    common::eventually(
        std::time::Duration::from_secs(20),
        "the credential changes logged",
        || {
            let (log, staff) = (log.clone(), staff.clone());
            async move {
                let set = logged_about(&log, "identity.password.set", &staff).await;
                let changed = logged_about(&log, "identity.password.changed", &staff).await;
                let reset = logged_about(&log, "identity.totp.reset", &staff).await;
                let refused = logged_about(&log, "identity.login.failed", &staff).await;
                set.len() == 1
                    && set[0].reason == "temporary"
                    && changed.len() == 2
                    && changed
                        .iter()
                        .all(|e| e.actor.as_ref().is_some_and(|a| a.id == staff))
                    && reset.len() == 1
                    && by_operator(reset) == 1
                    && refused
                        .iter()
                        .any(|e| e.reason == "password_change_required")
            }
        },
    )
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_staff_change_their_password_and_admins_reset_lost_authenticators() {
    staff_change_their_password_and_admins_reset_lost_authenticators(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_staff_change_their_password_and_admins_reset_lost_authenticators() {
    staff_change_their_password_and_admins_reset_lost_authenticators(Backend::Postgres).await;
}

async fn admins_see_and_end_a_staff_members_sessions(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut portal = client(&data, &sandbox, "client-portal").await;
    let mut documents = client(&data, &sandbox, "document-system").await;
    let email = "traveller@firm.example";
    let staff = common::directory::staff(&mut admin, email, "associate").await;
    let bystander = common::directory::staff(&mut admin, "desk@firm.example", "associate").await;
    // Signed in through two applications; the first session's tokens
    // are refreshed once.
    let [first, second]: [SessionTokens; 2] = signed_in_through(
        &mut admin,
        &mut [&mut portal, &mut documents],
        &staff,
        email,
    )
    .await
    .try_into()
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let first = portal
        .refresh_session(RefreshSessionRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();

    // The administrator sees both, newest first, with where they came from.
    let list = |staff_id: &str, page_size: i32, page_token: String| ListStaffSessionsRequest {
        staff_id: staff_id.to_owned(),
        page_size,
        page_token,
    };
    let sessions = admin
        .list_staff_sessions(list(&staff, 0, String::new()))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let ids: Vec<&str> = sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, [second.session_id.as_str(), first.session_id.as_str()]);
    assert!(
        sessions[0].opened_through.ends_with("/document-system"),
        "{sessions:?}"
    );
    assert!(
        sessions[1].opened_through.ends_with("/client-portal"),
        "{sessions:?}"
    );
    let seconds = |t: &Option<prost_types::Timestamp>| {
        let t = t.as_ref().unwrap();
        t.seconds as f64 + f64::from(t.nanos) / 1e9
    };
    assert!(seconds(&sessions[1].last_refresh_time) > seconds(&sessions[1].create_time));
    assert!(seconds(&sessions[0].expire_time) > seconds(&sessions[0].create_time) + 3600.0);
    common::check_pages(0, 1, |size, token| {
        let mut admin = admin.clone();
        let request = list(&staff, size, token);
        async move {
            let r = admin.list_staff_sessions(request).await?.into_inner();
            let ids: Vec<String> = r.sessions.into_iter().map(|s| s.session_id).collect();
            Ok((ids, r.next_page_token))
        }
    })
    .await;
    let none = admin
        .list_staff_sessions(list(&bystander, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(none.sessions.is_empty() && none.next_page_token.is_empty());
    // The command line lists them too.
    let out = common::directory_cli(&data, &sandbox, &["sessions", "--staff", &staff]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["session_id"], second.session_id.as_str());
    assert!(!out.contains(&first.access_token) && !out.contains(&first.refresh_token));

    // Signed out everywhere at once: neither session refreshes, and the
    // services refuse their access tokens.
    let out = common::directory_cli(&data, &sandbox, &["sign-out", "--staff", &staff]);
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["sessions_ended"], 2, "{out}");
    for (app, tokens) in [(&mut portal, &first), (&mut documents, &second)] {
        let ended = app
            .refresh_session(RefreshSessionRequest {
                refresh_token: tokens.refresh_token.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&ended), "session_ended");
    }
    let mut audit = confidant_proto::audit::v1::audit_service_client::AuditServiceClient::new(
        common::channel(&data, &sandbox, ServiceName::Audit, "client-portal").await,
    );
    let refused = audit
        .list_events(with_bearer(
            confidant_proto::audit::v1::ListEventsRequest::default(),
            &second.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "session_revoked");
    let listed = admin
        .list_staff_sessions(list(&staff, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.sessions.is_empty(), "{listed:?}");
    let again = admin
        .revoke_staff_sessions(RevokeStaffSessionsRequest {
            staff_id: staff.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.sessions_ended, 0);
    // They were told once: the second sign-out ended nothing.
    let signed_out: Vec<String> = common::mails_to(&data, email)
        .into_iter()
        .map(|(subject, _)| subject)
        .filter(|s| s.contains("signed out"))
        .collect();
    assert_eq!(signed_out, ["You were signed out of Confidant"]);
    // Their credentials stay: they can sign in again.
    assert_eq!(sign_in_state(&mut admin, &staff).await, SignInState::Ready);

    // Nobody, a malformed id, and anyone but an administrator are refused.
    refused_but_to_admins_about_someone(&admin, &portal, &staff, |mut c, staff_id| async move {
        c.list_staff_sessions(ListStaffSessionsRequest {
            staff_id,
            ..Default::default()
        })
        .await
        .map(|_| ())
    })
    .await;
    refused_but_to_admins_about_someone(&admin, &portal, &staff, |mut c, staff_id| async move {
        c.revoke_staff_sessions(RevokeStaffSessionsRequest { staff_id })
            .await
            .map(|_| ())
    })
    .await;

    // Who looked at the sessions, and who ended them, is on the record.
    let log = audit_log(&data, &sandbox).await;
    common::eventually(
        std::time::Duration::from_secs(20),
        "the listings and the sign-out logged",
        || {
            let (log, staff) = (log.clone(), staff.clone());
            async move {
                let listed =
                    by_operator(logged_about(&log, "identity.staff.sessions_listed", &staff).await);
                let signed_out =
                    by_operator(logged_about(&log, "identity.staff.signed_out", &staff).await);
                listed >= 5 && signed_out == 2
            }
        },
    )
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_admins_see_and_end_a_staff_members_sessions() {
    admins_see_and_end_a_staff_members_sessions(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_admins_see_and_end_a_staff_members_sessions() {
    admins_see_and_end_a_staff_members_sessions(Backend::Postgres).await;
}

async fn a_disabled_staff_member_is_signed_out_at_once_and_can_come_back(backend: Backend) {
    use confidant_proto::audit::v1::ListEventsRequest;
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut app = client(&data, &sandbox, "client-portal").await;
    let email = "officer@firm.example";
    let officer = common::directory::staff(&mut admin, email, "security_officer").await;
    admin
        .set_password(SetPasswordRequest {
            staff_id: officer.clone(),
            password: PASSWORD.into(),
            temporary: false,
        })
        .await
        .unwrap();
    let (secret, step) = enrolled_in_step(&mut app, email, PASSWORD).await;
    let sign_in = |code: String| LoginRequest {
        email: email.into(),
        password: PASSWORD.into(),
        totp_code: code,
    };
    let before = app
        .login(sign_in(code_of(&secret, step)))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    // The officer reads the audit log with their token.
    let audit = confidant_proto::audit::v1::audit_service_client::AuditServiceClient::new(
        common::channel(&data, &sandbox, ServiceName::Audit, "client-portal").await,
    );
    let read = |tokens: &SessionTokens| {
        let request = with_bearer(ListEventsRequest::default(), &tokens.access_token);
        let mut audit = audit.clone();
        async move { audit.list_events(request).await.map(|_| ()) }
    };
    read(&before).await.unwrap();

    // Disabled: the session ends at once, everywhere, and no sign-in works.
    common::directory_cli(&data, &sandbox, &["disable-staff", "--staff", &officer]);
    assert_eq!(reason(&read(&before).await.unwrap_err()), "session_revoked");
    let refresh = |tokens: &SessionTokens| RefreshSessionRequest {
        refresh_token: tokens.refresh_token.clone(),
    };
    let ended = app.refresh_session(refresh(&before)).await.unwrap_err();
    assert_eq!(reason(&ended), "session_ended");
    let refused = app
        .login(sign_in(code_of(&secret, step + 1)))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "bad_credentials");

    // Back from leave: enabled, they sign in anew and read again; the
    // session the disabling ended stays ended.
    let out = common::directory_cli(&data, &sandbox, &["enable-staff", "--staff", &officer]);
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["enabled"], officer.as_str());
    let ended = app.refresh_session(refresh(&before)).await.unwrap_err();
    assert_eq!(reason(&ended), "session_ended");
    assert_eq!(reason(&read(&before).await.unwrap_err()), "session_revoked");
    let after = app
        .login(sign_in(code_of(&secret, step + 1)))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    read(&after).await.unwrap();
    assert_eq!(
        sign_in_state(&mut admin, &officer).await,
        SignInState::Ready
    );

    // Nobody, a malformed id, and anyone but an administrator are refused.
    refused_but_to_admins_about_someone(&admin, &app, &officer, |mut c, staff_id| async move {
        c.enable_staff_member(EnableStaffMemberRequest { staff_id })
            .await
            .map(|_| ())
    })
    .await;

    // Both are on the record, by the administrator.
    let log = audit_log(&data, &sandbox).await;
    common::eventually(
        std::time::Duration::from_secs(20),
        "the disabling and enabling logged",
        || {
            let (log, officer) = (log.clone(), officer.clone());
            async move {
                let mut by_admin = 0;
                for action in ["identity.staff.disabled", "identity.staff.enabled"] {
                    by_admin += by_operator(logged_about(&log, action, &officer).await);
                }
                by_admin == 2
            }
        },
    )
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_disabled_staff_member_is_signed_out_at_once_and_can_come_back() {
    a_disabled_staff_member_is_signed_out_at_once_and_can_come_back(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_disabled_staff_member_is_signed_out_at_once_and_can_come_back() {
    a_disabled_staff_member_is_signed_out_at_once_and_can_come_back(Backend::Postgres).await;
}

async fn admins_change_a_staff_members_address_and_name(backend: Backend) {
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut app = client(&data, &sandbox, "client-portal").await;
    let (old, new) = ("j.smith@firm.example", "j.jones@firm.example");
    let staff = common::directory::staff(&mut admin, old, "associate").await;
    let colleague =
        common::directory::staff(&mut admin, "colleague@firm.example", "associate").await;
    admin
        .set_password(SetPasswordRequest {
            staff_id: staff.clone(),
            password: PASSWORD.into(),
            temporary: false,
        })
        .await
        .unwrap();
    let (secret, step) = enrolled_in_step(&mut app, old, PASSWORD).await;
    let sign_in = |email: &str, code: String| LoginRequest {
        email: email.into(),
        password: PASSWORD.into(),
        totp_code: code,
    };
    let before = app
        .login(sign_in(old, code_of(&secret, step)))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();

    // Married, renamed: the administrator changes address and name.
    let out = common::directory_cli(
        &data,
        &sandbox,
        &[
            "update-staff",
            "--staff",
            &staff,
            "--email",
            "J.Jones@Firm.Example",
            "--name",
            "J. Jones",
        ],
    );
    assert!(out.contains(&staff), "{out}");
    let listed = admin
        .list_staff_members(ListStaffMembersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .staff
        .into_iter()
        .find(|s| s.staff_id == staff)
        .unwrap();
    assert_eq!(
        (listed.email.as_str(), listed.display_name.as_str()),
        (new, "J. Jones")
    );
    // They sign in with the new address only; their session goes on.
    let refused = app
        .login(sign_in(old, code_of(&secret, step + 1)))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "bad_credentials");
    app.login(sign_in(new, code_of(&secret, step + 1)))
        .await
        .unwrap();
    app.refresh_session(RefreshSessionRequest {
        refresh_token: before.refresh_token.clone(),
    })
    .await
    .unwrap();
    // Told at both addresses.
    for address in [old, new] {
        let subjects: Vec<String> = common::mails_to(&data, address)
            .into_iter()
            .map(|(subject, _)| subject)
            .filter(|s| s.contains("e-mail address"))
            .collect();
        assert_eq!(
            subjects,
            ["Your Confidant e-mail address was changed"],
            "{address}"
        );
    }

    // An address someone else has, or nothing to change, is refused.
    let update = |staff_id: &str, email: &str, display_name: &str| UpdateStaffMemberRequest {
        staff_id: staff_id.into(),
        email: email.into(),
        display_name: display_name.into(),
    };
    let taken = admin
        .update_staff_member(update(&colleague, new, ""))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), tonic::Code::AlreadyExists, "{taken:?}");
    let err = admin
        .update_staff_member(update(&colleague, "", ""))
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["email"]);
    let err = admin
        .update_staff_member(update(&colleague, "not an address", &"n".repeat(201)))
        .await
        .unwrap_err();
    assert_eq!(common::violated_fields(&err), ["email", "display_name"]);
    refused_but_to_admins_about_someone(&admin, &app, &staff, |mut c, staff_id| async move {
        c.update_staff_member(UpdateStaffMemberRequest {
            staff_id,
            display_name: "Someone Else".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
    })
    .await;

    // On the record, naming what changed but not to what.
    let log = audit_log(&data, &sandbox).await;
    common::eventually(
        std::time::Duration::from_secs(20),
        "the change logged",
        || {
            let (log, staff) = (log.clone(), staff.clone());
            async move {
                let updated = logged_about(&log, "identity.staff.updated", &staff).await;
                updated.len() == 1 && by_operator(updated.clone()) == 1 && {
                    let fields: Vec<&str> = updated[0]
                        .related
                        .iter()
                        .filter(|r| r.r#type == "field")
                        .map(|r| r.id.as_str())
                        .collect();
                    let text = format!("{:?}", updated[0]);
                    fields == ["email", "display_name"]
                        && !text.contains("jones")
                        && !text.contains("Jones")
                }
            }
        },
    )
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_admins_change_a_staff_members_address_and_name() {
    admins_change_a_staff_members_address_and_name(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_admins_change_a_staff_members_address_and_name() {
    admins_change_a_staff_members_address_and_name(Backend::Postgres).await;
}

/// `message` with the access token of `token` (a signed-in session).
fn bearing<T>(token: &SessionTokens, message: T) -> tonic::Request<T> {
    with_bearer(message, &token.access_token)
}

async fn staff_see_their_own_account_matters_and_sessions(backend: Backend) {
    use common::directory::{assign, attest, new_client, new_matter, staff, ts};
    let data = SandboxData::new(backend).await;
    let sandbox = Sandbox::start(
        &data,
        SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit]),
    )
    .await;
    let mut admin = client(&data, &sandbox, "operator").await;
    let mut portal = client(&data, &sandbox, "client-portal").await;
    let mut documents = client(&data, &sandbox, "document-system").await;
    let email = "associate@firm.example";
    let me = staff(&mut admin, email, "associate").await;
    let colleague = staff(&mut admin, "colleague@firm.example", "associate").await;
    let [mine, laptop]: [SessionTokens; 2] =
        signed_in_through(&mut admin, &mut [&mut portal, &mut documents], &me, email)
            .await
            .try_into()
            .unwrap();
    let account = |portal: Client, token: SessionTokens| async move {
        portal
            .clone()
            .get_my_account(bearing(&token, GetMyAccountRequest {}))
            .await
            .map(tonic::Response::into_inner)
    };

    // Without an agreement on record, nothing of any client's is readable.
    let fresh = account(portal.clone(), mine.clone()).await.unwrap();
    let summary = fresh.staff.clone().unwrap();
    assert_eq!(
        (summary.staff_id.as_str(), summary.email.as_str()),
        (me.as_str(), email)
    );
    assert_eq!(summary.roles[0].role, "associate");
    assert_eq!(summary.sign_in(), SignInState::Ready);
    assert!(fresh.attestations.is_empty());
    assert_eq!(fresh.client_data_blocked_by(), DenialReason::NdaMissing);

    // An agreement, a passed training that has lapsed and a newer failed
    // one: the lapsed one counts, and stops every read.
    attest(&mut admin, &me, AttestationKind::Nda, 10, 365, 0).await;
    attest(&mut admin, &me, AttestationKind::Training, 400, 365, 90).await;
    attest(&mut admin, &me, AttestationKind::Training, 5, 365, 40).await;
    let blocked = account(portal.clone(), mine.clone()).await.unwrap();
    assert_eq!(
        blocked.client_data_blocked_by(),
        DenialReason::TrainingExpired
    );
    let kinds: Vec<AttestationKind> = blocked.attestations.iter().map(|a| a.kind()).collect();
    assert_eq!(kinds, [AttestationKind::Nda, AttestationKind::Training]);
    let training = &blocked.attestations[1];
    let lapsed_at = training.expire_time.unwrap();
    assert!(lapsed_at.seconds < chrono::Utc::now().timestamp());
    assert_eq!(training.version, "2026-1");
    attest(&mut admin, &me, AttestationKind::Training, 1, 365, 95).await;
    let cleared = account(portal.clone(), mine.clone()).await.unwrap();
    assert_eq!(cleared.client_data_blocked_by(), DenialReason::Unspecified);
    assert!(cleared.attestations[1].expire_time.unwrap().seconds > lapsed_at.seconds);

    // Ways into matters: an assignment until a date, responsibility, open
    // emergency access, an assignment behind a wall and one through the
    // wall by an exception; a revoked assignment and a colleague's matter
    // are none of theirs.
    let firm = new_client(&mut admin).await;
    let until = chrono::Utc::now() + chrono::Duration::days(30);
    let assigned = new_matter(&mut admin, &firm, None, "tax").await;
    admin
        .assign_staff(AssignStaffRequest {
            matter_id: assigned.clone(),
            staff_id: me.clone(),
            expire_time: ts(until),
        })
        .await
        .unwrap();
    let responsible = new_matter(&mut admin, &firm, Some(&me), "tax").await;
    let urgent = new_matter(&mut admin, &firm, None, "tax").await;
    let emergency = admin
        .open_break_glass(OpenBreakGlassRequest {
            staff_id: me.clone(),
            matter_id: urgent.clone(),
            justification: "court deadline tonight".into(),
            duration_minutes: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let revoked = new_matter(&mut admin, &firm, None, "tax").await;
    let gone = assign(&mut admin, &revoked, &me).await;
    admin
        .revoke_assignment(RevokeAssignmentRequest {
            assignment_id: gone,
        })
        .await
        .unwrap();
    let theirs = new_matter(&mut admin, &firm, Some(&colleague), "tax").await;
    let rival = new_client(&mut admin).await;
    let screened = new_matter(&mut admin, &rival, None, "litigation").await;
    let consented = new_matter(&mut admin, &rival, None, "litigation").await;
    assign(&mut admin, &screened, &me).await;
    assign(&mut admin, &consented, &me).await;
    let wall = admin
        .create_wall(CreateWallRequest {
            screened_staff_ids: vec![me.clone()],
            client_ids: vec![rival.clone()],
            matter_ids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .wall_id;
    let passage_until = chrono::Utc::now() + chrono::Duration::days(7);
    let passage = admin
        .grant_wall_exception(GrantWallExceptionRequest {
            wall_id: wall.clone(),
            staff_id: me.clone(),
            matter_id: consented.clone(),
            reason: "both clients consented in writing".into(),
            expire_time: ts(passage_until),
        })
        .await
        .unwrap()
        .into_inner()
        .exception_id;
    admin
        .close_matter(CloseMatterRequest {
            matter_id: responsible.clone(),
        })
        .await
        .unwrap();

    let listed = |size: i32, page_token: String| {
        let portal = portal.clone();
        let mine = mine.clone();
        async move {
            portal
                .clone()
                .list_my_matters(bearing(
                    &mine,
                    ListMyMattersRequest {
                        page_size: size,
                        page_token,
                    },
                ))
                .await
                .map(|r| {
                    let r = r.into_inner();
                    (r.matters, r.next_page_token)
                })
        }
    };
    let (matters, _) = listed(0, String::new()).await.unwrap();
    let mut expected = vec![
        assigned.clone(),
        responsible.clone(),
        urgent.clone(),
        screened.clone(),
        consented.clone(),
    ];
    expected.sort();
    let ids: Vec<&str> = matters.iter().map(|m| m.matter_id.as_str()).collect();
    assert_eq!(ids, expected, "by matter id, theirs only");
    assert!(!ids.contains(&theirs.as_str()) && !ids.contains(&revoked.as_str()));
    let of = |id: &str| matters.iter().find(|m| m.matter_id == id).unwrap().clone();
    let near = |t: Option<prost_types::Timestamp>, want: chrono::DateTime<chrono::Utc>| {
        (t.unwrap().seconds - want.timestamp()).abs() <= 1
    };
    let a = of(&assigned);
    assert_eq!(
        (a.client_id.as_str(), a.access_path()),
        (firm.as_str(), AccessPath::Assignment)
    );
    assert_eq!(of(&screened).practice_area, "litigation");
    assert!(near(a.access_expire_time, until));
    let r = of(&responsible);
    assert_eq!(r.access_path(), AccessPath::ResponsibleAttorney);
    assert!(r.access_expire_time.is_none() && r.close_time.is_some());
    assert!(a.close_time.is_none());
    let u = of(&urgent);
    assert_eq!(u.access_path(), AccessPath::BreakGlass);
    assert_eq!(u.access_expire_time, emergency.expire_time);
    let s = of(&screened);
    assert_eq!(
        (s.access_path(), s.read_denied()),
        (AccessPath::Assignment, DenialReason::BehindWall)
    );
    assert!(s.access_expire_time.is_none());
    assert_eq!(of(&consented).read_denied(), DenialReason::Unspecified);
    // Each says what Authorize decides.
    for m in &matters {
        let decided =
            common::directory::decide(&mut admin, &me, "client_data.read", &m.matter_id).await;
        assert_eq!(decided.reason(), m.read_denied(), "{}", m.matter_id);
    }
    common::check_pages(0, 2, listed).await;

    // The wall that screens them, with the way through it.
    let now = account(portal.clone(), mine.clone()).await.unwrap();
    assert_eq!(now.walls.len(), 1);
    let w = &now.walls[0];
    assert_eq!(
        (w.wall_id.as_str(), w.client_ids.clone(), w.matter_ids.len()),
        (wall.as_str(), vec![rival.clone()], 0)
    );
    assert_eq!(w.exceptions.len(), 1);
    assert_eq!(
        (
            w.exceptions[0].exception_id.as_str(),
            w.exceptions[0].matter_id.as_str()
        ),
        (passage.as_str(), consented.as_str())
    );
    assert!(near(w.exceptions[0].expire_time, passage_until));

    // An access review: as responsible attorney they review the
    // colleague's assignment to their matter (not their own grants).
    assert!(now.reviews.is_empty());
    let mine_to_review = new_matter(&mut admin, &firm, Some(&me), "tax").await;
    assign(&mut admin, &mine_to_review, &colleague).await;
    let deadline = chrono::Utc::now() + chrono::Duration::days(14);
    let campaign = admin
        .start_access_review(StartAccessReviewRequest {
            name: "2026 Q4".into(),
            deadline: ts(deadline),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign_id;
    let reviewing = account(portal.clone(), mine.clone()).await.unwrap();
    let work: Vec<(&str, &str, i32, bool)> = reviewing
        .reviews
        .iter()
        .map(|r| {
            (
                r.campaign_id.as_str(),
                r.name.as_str(),
                r.pending_items,
                r.overdue,
            )
        })
        .collect();
    assert_eq!(work, [(campaign.as_str(), "2026 Q4", 1, false)]);
    assert!(near(reviewing.reviews[0].deadline, deadline));
    // They were told by e-mail when it started; the colleague, with
    // nothing to review, was not.
    common::eventually(
        std::time::Duration::from_secs(10),
        "the reviewer told",
        || async {
            common::mails_to(&data, email).iter().any(|(subject, _)| {
                subject == "Access review \"2026 Q4\": 1 grant waits for your decision"
            })
        },
    )
    .await;
    assert!(
        common::mails_to(&data, "colleague@firm.example")
            .iter()
            .all(|(subject, _)| !subject.starts_with("Access review"))
    );
    let items = portal
        .list_access_review_items(bearing(
            &mine,
            ListAccessReviewItemsRequest {
                campaign_id: campaign.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), 1);
    portal
        .decide_access_review_item(bearing(
            &mine,
            DecideAccessReviewItemRequest {
                item_id: items[0].item_id.clone(),
                decision: ReviewDecision::Certify as i32,
            },
        ))
        .await
        .unwrap();
    let reviewed = account(portal.clone(), mine.clone()).await.unwrap();
    assert!(reviewed.reviews.is_empty());

    // Their two sessions, newest first, this one marked; they end the
    // laptop's from the portal.
    let sessions: Vec<(String, bool, String)> = now
        .sessions
        .iter()
        .map(|s| (s.session_id.clone(), s.current, s.opened_through.clone()))
        .collect();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].0, laptop.session_id);
    assert!(!sessions[0].1 && sessions[1].1);
    assert_eq!(sessions[1].0, mine.session_id);
    assert!(sessions[0].2.ends_with("/document-system"));
    // A colleague's token cannot end it.
    let theirs_tokens = signed_in_through(
        &mut admin,
        &mut [&mut portal],
        &colleague,
        "colleague@firm.example",
    )
    .await
    .remove(0);
    let end = |session: &str| RevokeSessionRequest {
        session_id: session.to_owned(),
    };
    let refused = portal
        .revoke_session(bearing(&theirs_tokens, end(&laptop.session_id)))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "not_session_holder");
    portal
        .revoke_session(bearing(&mine, end(&laptop.session_id)))
        .await
        .unwrap();
    let err = documents
        .refresh_session(RefreshSessionRequest {
            refresh_token: laptop.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let after = account(portal.clone(), mine.clone()).await.unwrap();
    assert_eq!(after.sessions.len(), 1);
    assert!(after.sessions[0].current);

    // Only a staff token's holder is answered.
    for err in [
        admin
            .get_my_account(GetMyAccountRequest {})
            .await
            .unwrap_err(),
        admin
            .list_my_matters(ListMyMattersRequest::default())
            .await
            .unwrap_err(),
        account(portal.clone(), laptop.clone()).await.unwrap_err(),
    ] {
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    }
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_staff_see_their_own_account_matters_and_sessions() {
    staff_see_their_own_account_matters_and_sessions(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_staff_see_their_own_account_matters_and_sessions() {
    staff_see_their_own_account_matters_and_sessions(Backend::Postgres).await;
}

async fn staff_are_reminded_before_their_agreement_or_training_lapses(backend: Backend) {
    use common::directory::{attest, cleared, staff};
    use confidant_proto::identity::v1::AttestationKind::{Nda, Training};
    let data = SandboxData::new(backend).await;
    // The firm's records first, with attestation reminders off, so that no
    // sweep sees them half made.
    let quiet = SandboxSpec {
        settings: vec![("identity", "attestation_reminder_days", 0.into())],
        ..SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit])
    };
    let sandbox = Sandbox::start(&data, quiet).await;
    let mut admin = client(&data, &sandbox, "operator").await;
    // An agreement lapsing in five days.
    let soon = staff(&mut admin, "soon@firm.example", "associate").await;
    attest(&mut admin, &soon, Nda, 360, 365, 0).await;
    attest(&mut admin, &soon, Training, 10, 365, 90).await;
    // A passed training that lapsed two days ago; a newer one failed.
    let lapsed = staff(&mut admin, "lapsed@firm.example", "associate").await;
    attest(&mut admin, &lapsed, Nda, 10, 365, 0).await;
    attest(&mut admin, &lapsed, Training, 367, 365, 95).await;
    attest(&mut admin, &lapsed, Training, 3, 365, 20).await;
    // Renewed in time: the new agreement counts, not the old one.
    let renewed = staff(&mut admin, "renewed@firm.example", "associate").await;
    attest(&mut admin, &renewed, Nda, 360, 365, 0).await;
    attest(&mut admin, &renewed, Nda, 1, 365, 0).await;
    attest(&mut admin, &renewed, Training, 10, 365, 90).await;
    // Nothing near; long lapsed (told at the time); gone.
    cleared(&mut admin, "settled@firm.example", "associate").await;
    let forgotten = staff(&mut admin, "forgotten@firm.example", "associate").await;
    attest(&mut admin, &forgotten, Nda, 500, 365, 0).await;
    let gone = staff(&mut admin, "gone@firm.example", "associate").await;
    attest(&mut admin, &gone, Nda, 360, 365, 0).await;
    admin
        .disable_staff_member(DisableStaffMemberRequest {
            staff_id: gone.clone(),
        })
        .await
        .unwrap();
    // An access review closing in two days: the responsible attorney
    // reviews an assignment to their matter, and is told at once that it
    // started.
    let attorney = staff(&mut admin, "attorney@firm.example", "partner").await;
    let firm = common::directory::new_client(&mut admin).await;
    let matter = common::directory::new_matter(&mut admin, &firm, Some(&attorney), "tax").await;
    common::directory::assign(&mut admin, &matter, &soon).await;
    let campaign = admin
        .start_access_review(StartAccessReviewRequest {
            name: "year end".into(),
            deadline: common::directory::ts(chrono::Utc::now() + chrono::Duration::days(2)),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign_id;
    let review_notices = || {
        common::mails_to(&data, "attorney@firm.example")
            .into_iter()
            .map(|(subject, _)| subject)
            .collect::<Vec<String>>()
    };
    common::eventually(
        std::time::Duration::from_secs(10),
        "the reviewer told of the start",
        || async { review_notices().len() == 1 },
    )
    .await;
    sandbox.stop().await;

    // Reminders on (30 days ahead, the default), swept every second; while
    // the mail gateway is down none goes, and none is logged.
    let sweeping = SandboxSpec {
        settings: vec![(
            "identity",
            "attestation_reminder_interval_seconds",
            1.into(),
        )],
        ..SandboxSpec::of(&[ServiceName::Identity, ServiceName::Audit])
    };
    let mut down = sweeping.clone();
    let gateway = format!("http://127.0.0.1:{}/mail", common::free_port());
    down.settings.push((
        "identity",
        "notification_webhook_url",
        gateway.as_str().into(),
    ));
    let failed_before = confidant_runtime::notify::counted("identity", "email", "failed");
    let sandbox = Sandbox::start(&data, down).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(common::mails_to(&data, "soon@firm.example").is_empty());
    // Each refusal is counted for the metrics (the chart alerts on them).
    assert!(confidant_runtime::notify::counted("identity", "email", "failed") > failed_before);
    let log = audit_log(&data, &sandbox).await;
    assert!(
        logged_about(&log, "identity.attestation.reminded", &soon)
            .await
            .is_empty()
    );
    sandbox.stop().await;

    // Once it is back, each goes once.
    let sandbox = Sandbox::start(&data, sweeping).await;
    common::eventually(
        std::time::Duration::from_secs(20),
        "the reminders sent",
        || async {
            !common::mails_to(&data, "soon@firm.example").is_empty()
                && !common::mails_to(&data, "lapsed@firm.example").is_empty()
                && review_notices().len() == 2
        },
    )
    .await;
    // Later sweeps send nothing more.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let to_soon = common::mails_to(&data, "soon@firm.example");
    assert_eq!(to_soon.len(), 1, "{to_soon:?}");
    assert_eq!(to_soon[0].0, "Your confidentiality agreement lapses soon");
    let lapse = (chrono::Utc::now() + chrono::Duration::days(5))
        .format("%Y-%m-%d")
        .to_string();
    assert!(to_soon[0].1.contains(&lapse), "{}", to_soon[0].1);
    assert!(to_soon[0].1.contains("version 2026-1"));
    let to_lapsed = common::mails_to(&data, "lapsed@firm.example");
    assert_eq!(to_lapsed.len(), 1, "{to_lapsed:?}");
    assert_eq!(to_lapsed[0].0, "Your confidentiality training has lapsed");
    // The reviewer, told of the start before, is reminded of the deadline
    // once.
    let deadline_note = review_notices();
    assert_eq!(deadline_note.len(), 2, "{deadline_note:?}");
    assert_eq!(
        deadline_note[0],
        "Access review \"year end\": 1 grant waits for your decision"
    );
    assert!(deadline_note[1].starts_with("Access review \"year end\": due by "));
    for quiet in [
        "renewed@firm.example",
        "settled@firm.example",
        "forgotten@firm.example",
        "gone@firm.example",
    ] {
        assert!(common::mails_to(&data, quiet).is_empty(), "{quiet}");
    }

    // Each is in the audit log, with its stage.
    let log = audit_log(&data, &sandbox).await;
    common::eventually(
        std::time::Duration::from_secs(20),
        "the reminders logged",
        || {
            let log = log.clone();
            let (soon, lapsed, campaign) = (soon.clone(), lapsed.clone(), campaign.clone());
            async move {
                let due = logged_about(&log, "identity.attestation.reminded", &soon).await;
                let late = logged_about(&log, "identity.attestation.reminded", &lapsed).await;
                let reviewed: Vec<String> =
                    logged_about(&log, "identity.review.reminded", &campaign)
                        .await
                        .into_iter()
                        .map(|e| e.reason)
                        .collect();
                let mut reviewed = reviewed;
                reviewed.sort();
                reviewed == ["due", "started"]
                    && due.len() == 1
                    && due[0].reason == "due"
                    && confidant_runtime::audit::related_named(&due[0].related, "kind")
                        == Some("nda")
                    && late.len() == 1
                    && late[0].reason == "lapsed"
            }
        },
    )
    .await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_staff_are_reminded_before_their_agreement_or_training_lapses() {
    staff_are_reminded_before_their_agreement_or_training_lapses(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_staff_are_reminded_before_their_agreement_or_training_lapses() {
    staff_are_reminded_before_their_agreement_or_training_lapses(Backend::Postgres).await;
}
