//! Directory helpers for end-to-end tests: staff, clients, matters and
//! assignments through the identity API (as an administrator).

use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_proto::identity::v1::*;
use confidant_runtime::client::PeerChannel;

/// An identity client.
pub type Client = IdentityServiceClient<PeerChannel>;

/// A protobuf timestamp.
pub fn ts(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    })
}

/// A staff member with one role.
pub async fn staff(c: &mut Client, email: &str, role: &str) -> String {
    c.create_staff_member(CreateStaffMemberRequest {
        request_id: String::new(),
        email: email.into(),
        display_name: email.into(),
        roles: vec![role.into()],
    })
    .await
    .unwrap()
    .into_inner()
    .staff_id
}

/// Records an NDA or training attestation completed `days_ago`; returns
/// its id.
pub async fn attest(
    c: &mut Client,
    staff_id: &str,
    kind: AttestationKind,
    days_ago: i64,
    valid_days: i64,
    score: i32,
) -> String {
    let now = chrono::Utc::now();
    c.record_attestation(RecordAttestationRequest {
        staff_id: staff_id.into(),
        kind: kind as i32,
        version: "2026-1".into(),
        complete_time: ts(now - chrono::Duration::days(days_ago)),
        expire_time: ts(now - chrono::Duration::days(days_ago) + chrono::Duration::days(valid_days)),
        score,
        pass_mark: 80,
    })
    .await
    .unwrap()
    .into_inner()
    .attestation_id
}

/// A staff member with a current NDA and passed training.
pub async fn cleared(c: &mut Client, email: &str, role: &str) -> String {
    let id = staff(c, email, role).await;
    attest(c, &id, AttestationKind::Nda, 10, 365, 0).await;
    attest(c, &id, AttestationKind::Training, 10, 365, 90).await;
    id
}

/// Asks for a decision on a matter.
pub async fn decide(
    c: &mut Client,
    staff_id: &str,
    permission: &str,
    matter_id: &str,
) -> AuthorizeResponse {
    c.authorize(AuthorizeRequest {
        staff_id: staff_id.into(),
        permission: permission.into(),
        client_id: String::new(),
        matter_id: matter_id.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// Registers a client.
pub async fn new_client(admin: &mut Client) -> String {
    admin
        .create_client(CreateClientRequest::default())
        .await
        .unwrap()
        .into_inner()
        .client_id
}

/// Opens a matter for a client.
pub async fn new_matter(
    admin: &mut Client,
    client_id: &str,
    attorney: Option<&str>,
    area: &str,
) -> String {
    new_matter_in(admin, client_id, attorney, area, "").await
}

/// Opens a matter for a client under a jurisdiction (ISO 3166, or empty).
pub async fn new_matter_in(
    admin: &mut Client,
    client_id: &str,
    attorney: Option<&str>,
    area: &str,
    jurisdiction: &str,
) -> String {
    admin
        .create_matter(CreateMatterRequest {
            request_id: String::new(),
            client_id: client_id.into(),
            responsible_attorney_id: attorney.unwrap_or_default().into(),
            practice_area: area.into(),
            jurisdiction: jurisdiction.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .matter_id
}

/// Assigns a staff member to a matter.
pub async fn assign(admin: &mut Client, matter_id: &str, staff_id: &str) -> String {
    admin
        .assign_staff(AssignStaffRequest {
            matter_id: matter_id.into(),
            staff_id: staff_id.into(),
            expire_time: None,
        })
        .await
        .unwrap()
        .into_inner()
        .assignment_id
}

/// A signed staff access token, as identity issues them at sign-in.
pub fn staff_token(
    data: &confidant::sandbox::SandboxData,
    staff_id: &str,
    roles: &[&str],
) -> String {
    data.staff_token(staff_id, roles)
}

/// A request carrying a staff member's bearer token.
pub fn as_staff<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}
