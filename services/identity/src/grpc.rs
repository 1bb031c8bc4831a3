//! The gRPC face of the identity service: boundary validation, then the
//! directory, each change with its audit event.

use chrono::{DateTime, Duration, Utc};
use confidant_proto::audit::v1::{ActorKind, Outcome};
use confidant_proto::identity::v1::identity_service_server::IdentityService;
use confidant_proto::identity::v1::*;
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder, MAX_RELATED};
use confidant_runtime::auth::Actor;
use confidant_runtime::error::Violations;
use confidant_runtime::page::{self, Key};
use confidant_runtime::peer::PeerIdentity;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::decide;
use crate::error::Error;
use crate::sessions::Notice;
use crate::store::{Directory, KIND_NDA, KIND_TRAINING, NewAttestation, WallException};

/// Handlers of `confidant.identity.v1.IdentityService`.
#[derive(Debug, Clone)]
pub struct IdentityApi {
    directory: Directory,
    trust_domain: String,
    sessions: std::sync::Arc<crate::sessions::Sessions>,
    verifier: crate::tokens::TokenVerifier,
    admins: Vec<String>,
    clients: std::sync::Arc<crate::clients::ClientVerification>,
    facts: std::sync::Arc<crate::decisions::FactsCache>,
    recorder: crate::decisions::DecisionRecorder,
    /// The audit service, for wall certifications.
    pub audit: Option<confidant_runtime::client::PeerChannel>,
    /// The long-lived keys that sign wall certifications.
    pub certificate_keys: Option<std::sync::Arc<crate::tokens::TokenKeys>>,
    /// The retention service, told when a matter closes (a retention
    /// trigger).
    pub retention: Option<confidant_runtime::client::PeerChannel>,
    /// Tells reviewers of a campaign as soon as it starts.
    pub reminders: Option<crate::reminders::Reminders>,
}

impl IdentityApi {
    /// Handlers over `directory`.
    pub fn new(
        directory: Directory,
        trust_domain: &str,
        sessions: std::sync::Arc<crate::sessions::Sessions>,
        admins: Vec<String>,
        clients: std::sync::Arc<crate::clients::ClientVerification>,
        recorder: crate::decisions::DecisionRecorder,
    ) -> Result<Self, crate::tokens::Error> {
        let keys = sessions.keys();
        let verifier = crate::tokens::TokenVerifier::from_jwks(&keys.jwks(), keys.issuer())?;
        Ok(Self {
            directory,
            trust_domain: trust_domain.to_owned(),
            sessions,
            verifier,
            admins,
            clients,
            facts: std::sync::Arc::default(),
            recorder,
            audit: None,
            certificate_keys: None,
            retention: None,
            reminders: None,
        })
    }

    fn certificate_keys(&self) -> Result<&crate::tokens::TokenKeys, Status> {
        self.certificate_keys
            .as_deref()
            .ok_or_else(|| Status::failed_precondition("no certificate key is configured"))
    }

    fn reviews(&self) -> crate::reviews::Reviews {
        crate::reviews::Reviews::new(self.directory.database().clone(), &self.trust_domain)
    }

    /// An event of `action` by the calling peer (an admin tool or service).
    fn by_caller(
        &self,
        caller: &PeerIdentity,
        action: Action,
        kind: &str,
        id: Uuid,
    ) -> EventBuilder {
        self.as_caller(caller, action)
            .resource(kind, &id.to_string())
    }

    /// The one id a request names, in `field` (its `value`), and the
    /// caller's event of `action` about it as a resource of `kind`, to
    /// record with the change.
    fn about<T>(
        &self,
        request: &Request<T>,
        (field, value): (&str, &str),
        action: Action,
        kind: &str,
    ) -> Result<(Uuid, EventBuilder), Error> {
        let caller = caller(request)?;
        let mut v = Violations::new();
        let id = uuid(&mut v, field, value);
        check(v)?;
        let id = id.unwrap_or_default();
        Ok((id, self.by_caller(&caller, action, kind, id)))
    }

    /// An event of `action` by `caller` (an admin tool or a service).
    fn as_caller(&self, caller: &PeerIdentity, action: Action) -> EventBuilder {
        EventBuilder::new(ServiceName::Identity, &self.trust_domain, action).actor(
            ActorKind::Service,
            caller.name(),
            caller.as_str(),
        )
    }
}

/// Who is reviewing access, and so which review items they may decide.
enum Reviewer {
    /// An admin tool (its certificate): every item.
    Admin(Actor),
    /// A staff member by token (see [`crate::reviews::StaffReviewer`]).
    Staff {
        actor: Actor,
        reviewer: crate::reviews::StaffReviewer,
    },
}

impl Reviewer {
    fn actor(&self) -> &Actor {
        match self {
            Reviewer::Admin(actor) | Reviewer::Staff { actor, .. } => actor,
        }
    }

    fn manages(&self) -> bool {
        match self {
            Reviewer::Admin(_) => true,
            Reviewer::Staff { reviewer, .. } => reviewer.manages,
        }
    }

    /// Whether it may decide `item`, and if not why.
    fn may_decide(&self, item: &crate::reviews::Item) -> Result<(), Error> {
        match self {
            Reviewer::Admin(_) => Ok(()),
            Reviewer::Staff { reviewer, .. } => reviewer
                .may_decide(item)
                .map_err(|(reason, why)| Error::Refused(reason, why)),
        }
    }
}

impl IdentityApi {
    /// The reviewer a request comes from: an admin certificate, or a staff
    /// token (through any certified application).
    async fn reviewer<T>(&self, request: &Request<T>) -> Result<Reviewer, Error> {
        let actor = Actor::of(request).ok_or(Error::NoIdentity)?;
        match &actor {
            Actor::Staff { staff_id, .. } => {
                let id = Uuid::parse_str(staff_id).map_err(|_| {
                    Error::Refused("not_reviewer", "the token names no staff member")
                })?;
                let reviewer = self.reviews().reviewer(&self.directory, id).await?;
                Ok(Reviewer::Staff { actor, reviewer })
            }
            Actor::Service { peer } if self.admins.iter().any(|a| a == peer) => {
                Ok(Reviewer::Admin(actor))
            }
            Actor::Service { .. } => Err(Error::Refused(
                "not_reviewer",
                "access reviews take an admin certificate or a staff reviewer's token",
            )),
        }
    }
}

/// A staff member as the directory lists them, with the roles they hold.
fn summary(
    s: &crate::store::StaffListing,
    roles: Vec<(String, Option<DateTime<Utc>>)>,
) -> StaffMemberSummary {
    StaffMemberSummary {
        staff_id: s.id.to_string(),
        email: s.email.clone(),
        display_name: s.display_name.clone(),
        roles: roles
            .into_iter()
            .map(|(role, expires)| StaffRole {
                role,
                expire_time: expires.map(proto_time),
            })
            .collect(),
        create_time: Some(proto_time(s.created_at)),
        disable_time: s.disabled_at.map(proto_time),
        sign_in: s.sign_in as i32,
    }
}

/// A live session as listed, `current` when it is the caller's own.
fn staff_session(s: crate::sessions::LiveSession, current: bool) -> StaffSession {
    StaffSession {
        session_id: s.id.to_string(),
        create_time: Some(proto_time(s.created_at)),
        last_refresh_time: s.last_issued.map(proto_time),
        expire_time: Some(proto_time(s.expires_at)),
        opened_through: s.opened_by.unwrap_or_default(),
        current,
    }
}

/// The staff member whose token came with the request, and the session of
/// that token: the methods about oneself take no other caller.
fn token_holder<T>(request: &Request<T>) -> Result<(Uuid, String), Error> {
    match Actor::of(request) {
        Some(Actor::Staff {
            staff_id, session, ..
        }) => Uuid::parse_str(&staff_id)
            .map(|id| (id, session))
            .map_err(|_| Error::NoStaffToken),
        Some(Actor::Service { .. }) => Err(Error::NoStaffToken),
        None => Err(Error::NoIdentity),
    }
}

/// The permission whose decisions the methods about oneself report.
const CLIENT_DATA_READ: &str = "client_data.read";

fn tokens(issued: crate::sessions::Issued) -> SessionTokens {
    SessionTokens {
        session_id: issued.session_id.to_string(),
        access_token: issued.access_token,
        access_token_expire_time: Some(proto_time(issued.access_expires)),
        refresh_token: issued.refresh_token.to_string(),
        session_expire_time: Some(proto_time(issued.session_expires)),
    }
}

/// An e-mail address and the password in `password_field`, as presented
/// to sign in.
fn credentials(v: &mut Violations, email: &str, password_field: &str, password: &str) {
    if email.is_empty() {
        v.add("email", "is required");
    } else if email.len() > 254 {
        v.add("email", "must be at most 254 characters");
    }
    if password.is_empty() {
        v.add(password_field, "is required");
    } else if password.chars().count() > crate::credentials::MAX_PASSWORD {
        v.add(password_field, "is too long");
    }
}

fn totp_code(v: &mut Violations, field: &str, code: &str) {
    if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
        v.add(field, "must be 6 digits");
    }
}

fn caller<T>(request: &Request<T>) -> Result<PeerIdentity, Error> {
    PeerIdentity::of(request).ok_or(Error::NoIdentity)
}

fn uuid(v: &mut Violations, field: &str, value: &str) -> Option<Uuid> {
    if value.is_empty() {
        v.add(field, "is required");
        return None;
    }
    let parsed = Uuid::parse_str(value).ok();
    if parsed.is_none() {
        v.add(field, "must be a UUID");
    }
    parsed
}

fn optional_uuid(v: &mut Violations, field: &str, value: &str) -> Option<Uuid> {
    if value.is_empty() {
        None
    } else {
        uuid(v, field, value)
    }
}

fn time(
    v: &mut Violations,
    field: &str,
    ts: Option<&prost_types::Timestamp>,
    required: bool,
) -> Option<DateTime<Utc>> {
    let Some(ts) = ts else {
        if required {
            v.add(field, "is required");
        }
        return None;
    };
    let parsed = DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(u32::MAX));
    if parsed.is_none() {
        v.add(field, "must be a valid timestamp");
    }
    parsed
}

fn text(v: &mut Violations, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        v.add(field, "is required");
    } else if value.chars().count() > max {
        v.add(field, format!("must be at most {max} characters"));
    } else if value.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
    }
}

fn check(v: Violations) -> Result<(), Error> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(v))
    }
}

fn proto_time(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Longest break-glass grant.
const MAX_BREAK_GLASS_MINUTES: i32 = 480;

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    #[tracing::instrument(name = "identity.create_staff_member", skip_all)]
    async fn create_staff_member(
        &self,
        request: Request<CreateStaffMemberRequest>,
    ) -> Result<Response<CreateStaffMemberResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let request_id = optional_uuid(&mut v, "request_id", &req.request_id);
        text(&mut v, "email", &req.email, 254);
        if !req.email.is_empty() && !req.email.contains('@') {
            v.add("email", "must be an e-mail address");
        }
        text(&mut v, "display_name", &req.display_name, 200);
        if req.roles.is_empty() {
            v.add("roles", "must name at least one role");
        }
        let known = self.directory.known_roles().await.map_err(Error::from)?;
        for (i, role) in req.roles.iter().enumerate() {
            if !known.contains(role) {
                v.add(format!("roles[{i}]"), "is not a known role");
            }
        }
        check(v)?;
        let id = self
            .directory
            .create_staff(
                request_id,
                &req.email.to_lowercase(),
                &req.display_name,
                &req.roles,
                |id| {
                    self.by_caller(&caller, Action::IdentityStaffCreated, "staff", id)
                        .build()
                },
            )
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(CreateStaffMemberResponse {
            staff_id: id.to_string(),
        }))
    }

    #[tracing::instrument(name = "identity.disable_staff_member", skip_all)]
    async fn disable_staff_member(
        &self,
        request: Request<DisableStaffMemberRequest>,
    ) -> Result<Response<DisableStaffMemberResponse>, Status> {
        let (id, event) = self.about(
            &request,
            ("staff_id", &request.get_ref().staff_id),
            Action::IdentityStaffDisabled,
            "staff",
        )?;
        let now = Utc::now();
        let event = event.at(now).build();
        self.directory
            .disable_staff(id, now, event)
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        self.sessions
            .publish_ended(id, crate::store::DISABLED, now)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(DisableStaffMemberResponse {}))
    }

    #[tracing::instrument(name = "identity.enable_staff_member", skip_all)]
    async fn enable_staff_member(
        &self,
        request: Request<EnableStaffMemberRequest>,
    ) -> Result<Response<EnableStaffMemberResponse>, Status> {
        let (id, event) = self.about(
            &request,
            ("staff_id", &request.get_ref().staff_id),
            Action::IdentityStaffEnabled,
            "staff",
        )?;
        let event = event.build();
        self.directory
            .enable_staff(id, event)
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(EnableStaffMemberResponse {}))
    }

    #[tracing::instrument(name = "identity.update_staff_member", skip_all)]
    async fn update_staff_member(
        &self,
        request: Request<UpdateStaffMemberRequest>,
    ) -> Result<Response<UpdateStaffMemberResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = uuid(&mut v, "staff_id", &req.staff_id);
        let email = req.email.trim().to_lowercase();
        let name = req.display_name.trim();
        if email.len() > 254 {
            v.add("email", "must be at most 254 characters");
        } else if !email.is_empty() && !email.contains('@') {
            v.add("email", "must be an e-mail address");
        }
        if name.chars().count() > 200 {
            v.add("display_name", "must be at most 200 characters");
        }
        if email.is_empty() && name.is_empty() {
            v.add(
                "email",
                "an e-mail address or a display_name to change to is required",
            );
        }
        check(v)?;
        let id = id.unwrap_or_default();
        let email = (!email.is_empty()).then_some(email);
        let name = (!name.is_empty()).then_some(name);
        let fields = [("email", email.is_some()), ("display_name", name.is_some())]
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(field, _)| ("field", field.to_owned()));
        let now = Utc::now();
        let event = self
            .by_caller(&caller, Action::IdentityStaffUpdated, "staff", id)
            .related(fields)
            .at(now)
            .build();
        let old = self
            .directory
            .update_staff(id, (email.as_deref(), name), now, event)
            .await
            .map_err(Error::from)?;
        if let Some(new) = email.filter(|new| *new != old) {
            for address in [old, new] {
                self.sessions
                    .notify_at(address, Notice::AddressChanged, now, caller.as_str())
                    .await;
            }
        }
        Ok(Response::new(UpdateStaffMemberResponse {}))
    }

    #[tracing::instrument(name = "identity.list_staff_members", skip_all)]
    async fn list_staff_members(
        &self,
        request: Request<ListStaffMembersRequest>,
    ) -> Result<Response<ListStaffMembersResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let role = req.role.trim();
        if role.chars().count() > 64 {
            v.add("role", "at most 64 characters");
        }
        let query = req.query.trim();
        if query.chars().count() > 254 {
            v.add("query", "at most 254 characters");
        }
        let sign_in = match SignInState::try_from(req.sign_in) {
            Ok(SignInState::Unspecified) => None,
            Ok(state) => Some(state),
            Err(_) => {
                v.add("sign_in", "must be a SignInState");
                None
            }
        };
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (100, 1000),
            &[page::Part::Text],
        );
        check(v)?;
        let role = (!role.is_empty()).then_some(role);
        let filter = crate::store::StaffFilter {
            role,
            include_disabled: req.include_disabled,
            only: None,
            sign_in,
            containing: (!query.is_empty()).then_some(query),
        };
        let (listed, next) = self
            .directory
            .staff_page(&filter, after.values(), limit)
            .await
            .map_err(Error::from)?;
        // Who looked at the directory, and for what, before anything is
        // returned.
        let event = self
            .as_caller(&caller, Action::IdentityStaffListed)
            .resource("staff", "directory")
            .related(
                role.map(|r| ("role", r.to_owned()))
                    .into_iter()
                    .chain(sign_in.map(|s| ("sign_in", s.as_str_name().to_owned())))
                    .chain((!query.is_empty()).then(|| ("query", query.to_owned()))),
            )
            .build();
        self.directory.record(event).await.map_err(Error::from)?;
        let now = Utc::now();
        let staff = listed
            .iter()
            .filter_map(|s| {
                let roles = s.live_roles(now);
                role.is_none_or(|r| roles.iter().any(|(held, _)| held == r))
                    .then_some((s, roles))
            })
            .map(|(s, roles)| summary(s, roles))
            .collect();
        Ok(Response::new(ListStaffMembersResponse {
            staff,
            next_page_token: next
                .map(|email| page::token(&[Key::Text(&email)]))
                .unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "identity.create_client", skip_all)]
    async fn create_client(
        &self,
        request: Request<CreateClientRequest>,
    ) -> Result<Response<CreateClientResponse>, Status> {
        let caller = caller(&request)?;
        let mut v = Violations::new();
        let request_id = optional_uuid(&mut v, "request_id", &request.get_ref().request_id);
        check(v)?;
        let id = self
            .directory
            .create_client(request_id, |id| {
                self.by_caller(&caller, Action::IdentityClientCreated, "client", id)
                    .scope(Some(id), None)
                    .build()
            })
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(CreateClientResponse {
            client_id: id.to_string(),
        }))
    }

    #[tracing::instrument(name = "identity.create_matter", skip_all)]
    async fn create_matter(
        &self,
        request: Request<CreateMatterRequest>,
    ) -> Result<Response<CreateMatterResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let request_id = optional_uuid(&mut v, "request_id", &req.request_id);
        let client = uuid(&mut v, "client_id", &req.client_id);
        let attorney = optional_uuid(
            &mut v,
            "responsible_attorney_id",
            &req.responsible_attorney_id,
        );
        text(
            &mut v,
            "practice_area",
            &req.practice_area,
            confidant_runtime::matter::PRACTICE_AREA_MAX,
        );
        let jurisdiction =
            confidant_runtime::matter::jurisdiction(&mut v, "jurisdiction", &req.jurisdiction);
        check(v)?;
        let client = client.unwrap_or_default();
        let matter = crate::store::NewMatter {
            client_id: client,
            responsible: attorney,
            practice_area: req.practice_area.trim().to_owned(),
            jurisdiction,
        };
        // The event names the classification, so that a restore can open
        // the matter again as it was.
        let related = matter.related();
        let id = self
            .directory
            .create_matter(request_id, &matter, |id| {
                self.by_caller(&caller, Action::IdentityMatterCreated, "matter", id)
                    .scope(Some(client), Some(id))
                    .related(related)
                    .build()
            })
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(CreateMatterResponse {
            matter_id: id.to_string(),
        }))
    }

    #[tracing::instrument(name = "identity.get_matters", skip_all)]
    async fn get_matters(
        &self,
        request: Request<GetMattersRequest>,
    ) -> Result<Response<GetMattersResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.matter_ids.is_empty() || req.matter_ids.len() > 1000 {
            v.add("matter_ids", "must name 1 to 1,000 matters");
        }
        let ids: Vec<Uuid> = req
            .matter_ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| uuid(&mut v, &format!("matter_ids[{i}]"), id))
            .collect();
        check(v)?;
        let matters = self
            .directory
            .matters(&ids)
            .await
            .map_err(Error::from)?
            .into_iter()
            .map(|m| MatterSummary {
                matter_id: m.id.to_string(),
                client_id: m.client_id.to_string(),
                practice_area: m.practice_area,
                jurisdiction: m.jurisdiction.unwrap_or_default(),
                open_time: Some(proto_time(m.opened_at)),
                close_time: m.closed_at.map(proto_time),
            })
            .collect();
        Ok(Response::new(GetMattersResponse { matters }))
    }

    #[tracing::instrument(name = "identity.close_matter", skip_all)]
    async fn close_matter(
        &self,
        request: Request<CloseMatterRequest>,
    ) -> Result<Response<CloseMatterResponse>, Status> {
        let (id, event) = self.about(
            &request,
            ("matter_id", &request.get_ref().matter_id),
            Action::IdentityMatterClosed,
            "matter",
        )?;
        let event = event.scope(None, Some(id)).build();
        let closed = self
            .directory
            .close_matter(id, event)
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        if let (Some(channel), Some(client)) = (
            self.retention.clone(),
            self.directory
                .matter_client(id)
                .await
                .map_err(Error::from)?,
        ) {
            tokio::spawn(tell_retention(channel, client, id, closed));
        }
        Ok(Response::new(CloseMatterResponse {
            close_time: Some(proto_time(closed)),
        }))
    }

    #[tracing::instrument(name = "identity.assign_staff", skip_all)]
    async fn assign_staff(
        &self,
        request: Request<AssignStaffRequest>,
    ) -> Result<Response<AssignStaffResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let matter = uuid(&mut v, "matter_id", &req.matter_id);
        let staff = uuid(&mut v, "staff_id", &req.staff_id);
        let expires = time(&mut v, "expire_time", req.expire_time.as_ref(), false);
        if expires.is_some_and(|e| e <= Utc::now()) {
            v.add("expire_time", "must lie in the future");
        }
        check(v)?;
        let (matter, staff) = (matter.unwrap_or_default(), staff.unwrap_or_default());
        // The event names whom and until when, so that a restore can make
        // the assignment again.
        let related = crate::store::Grant { staff, expires }.related();
        let id = self
            .directory
            .assign(matter, staff, expires, |id| {
                self.by_caller(&caller, Action::IdentityAssignmentGranted, "assignment", id)
                    .scope(None, Some(matter))
                    .related(related)
                    .build()
            })
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(AssignStaffResponse {
            assignment_id: id.to_string(),
        }))
    }

    #[tracing::instrument(name = "identity.revoke_assignment", skip_all)]
    async fn revoke_assignment(
        &self,
        request: Request<RevokeAssignmentRequest>,
    ) -> Result<Response<RevokeAssignmentResponse>, Status> {
        let (id, event) = self.about(
            &request,
            ("assignment_id", &request.get_ref().assignment_id),
            Action::IdentityAssignmentRevoked,
            "assignment",
        )?;
        let event = event.build();
        self.directory
            .revoke_assignment(id, event)
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(RevokeAssignmentResponse {}))
    }

    #[tracing::instrument(name = "identity.create_wall", skip_all)]
    async fn create_wall(
        &self,
        request: Request<CreateWallRequest>,
    ) -> Result<Response<CreateWallResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let ids = |v: &mut Violations, field: &str, list: &[String]| -> Vec<Uuid> {
            list.iter()
                .enumerate()
                .filter_map(|(i, s)| uuid(v, &format!("{field}[{i}]"), s))
                .collect()
        };
        let staff = ids(&mut v, "screened_staff_ids", &req.screened_staff_ids);
        let clients = ids(&mut v, "client_ids", &req.client_ids);
        let matters = ids(&mut v, "matter_ids", &req.matter_ids);
        if req.screened_staff_ids.is_empty() {
            v.add("screened_staff_ids", "must name at least one staff member");
        }
        if req.client_ids.is_empty() && req.matter_ids.is_empty() {
            v.add(
                "client_ids",
                "a wall must screen off at least one client or matter",
            );
        }
        // The wall's audit event names each of them, so that a restore can
        // put it up again.
        let named = req.screened_staff_ids.len() + req.client_ids.len() + req.matter_ids.len();
        if named > MAX_RELATED {
            v.add(
                "screened_staff_ids",
                format!(
                    "a wall names at most {MAX_RELATED} staff members, clients and matters together"
                ),
            );
        }
        check(v)?;
        let wall = crate::store::WallMembers {
            staff,
            clients,
            matters,
        };
        let related = wall.related();
        let id = self
            .directory
            .create_wall(&wall, |id| {
                self.by_caller(&caller, Action::IdentityWallCreated, "wall", id)
                    .related(related)
                    .build()
            })
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(CreateWallResponse {
            wall_id: id.to_string(),
        }))
    }

    #[tracing::instrument(name = "identity.grant_wall_exception", skip_all)]
    async fn grant_wall_exception(
        &self,
        request: Request<GrantWallExceptionRequest>,
    ) -> Result<Response<GrantWallExceptionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let wall = uuid(&mut v, "wall_id", &req.wall_id);
        let staff = uuid(&mut v, "staff_id", &req.staff_id);
        let matter = uuid(&mut v, "matter_id", &req.matter_id);
        text(&mut v, "reason", &req.reason, 1_000);
        let now = Utc::now();
        let expires = req
            .expire_time
            .and_then(|t| DateTime::from_timestamp(t.seconds, 0));
        if expires.is_none_or(|e| e <= now || e > now + Duration::days(366)) {
            v.add("expire_time", "in the future, at most a year ahead");
        }
        check(v)?;
        let (Some(wall), Some(staff), Some(matter), Some(expires)) = (wall, staff, matter, expires)
        else {
            return Err(Status::internal("validated request incomplete"));
        };
        let exception = WallException {
            wall,
            staff,
            matter,
            expires,
        };
        let id = self
            .directory
            .grant_wall_exception(&exception, req.reason.trim(), caller.as_str(), |id| {
                self.by_caller(
                    &caller,
                    Action::IdentityWallExceptionGranted,
                    "wall_exception",
                    id,
                )
                .related(exception.related())
                .build()
            })
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(GrantWallExceptionResponse {
            exception_id: id.to_string(),
        }))
    }

    #[tracing::instrument(name = "identity.revoke_wall_exception", skip_all)]
    async fn revoke_wall_exception(
        &self,
        request: Request<RevokeWallExceptionRequest>,
    ) -> Result<Response<RevokeWallExceptionResponse>, Status> {
        let caller = caller(&request)?;
        let mut v = Violations::new();
        let id = uuid(&mut v, "exception_id", &request.get_ref().exception_id);
        check(v)?;
        let Some(id) = id else {
            return Err(Status::internal("validated request incomplete"));
        };
        self.directory
            .revoke_wall_exception(id, |id| {
                self.by_caller(
                    &caller,
                    Action::IdentityWallExceptionRevoked,
                    "wall_exception",
                    id,
                )
                .build()
            })
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(RevokeWallExceptionResponse {}))
    }

    #[tracing::instrument(name = "identity.record_attestation", skip_all)]
    async fn record_attestation(
        &self,
        request: Request<RecordAttestationRequest>,
    ) -> Result<Response<RecordAttestationResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let staff = uuid(&mut v, "staff_id", &req.staff_id);
        let kind = match AttestationKind::try_from(req.kind) {
            Ok(AttestationKind::Nda) => KIND_NDA,
            Ok(AttestationKind::Training) => KIND_TRAINING,
            _ => {
                v.add("kind", "must be NDA or TRAINING");
                0
            }
        };
        text(&mut v, "version", &req.version, 64);
        let completed = time(&mut v, "complete_time", req.complete_time.as_ref(), true);
        let expires = time(&mut v, "expire_time", req.expire_time.as_ref(), true);
        if let (Some(c), Some(e)) = (completed, expires)
            && e <= c
        {
            v.add("expire_time", "must be after complete_time");
        }
        if completed.is_some_and(|c| c > Utc::now() + Duration::minutes(5)) {
            v.add("complete_time", "must not lie in the future");
        }
        let (score, pass_mark) = if kind == KIND_TRAINING {
            for (field, value) in [("score", req.score), ("pass_mark", req.pass_mark)] {
                if !(0..=100).contains(&value) {
                    v.add(field, "must be between 0 and 100");
                }
            }
            (Some(req.score), Some(req.pass_mark))
        } else {
            (None, None)
        };
        check(v)?;
        let attestation = NewAttestation {
            staff_id: staff.unwrap_or_default(),
            kind,
            version: req.version,
            completed: completed.unwrap_or_default(),
            expires: expires.unwrap_or_default(),
            score,
            pass_mark,
        };
        let id = self
            .directory
            .record_attestation(&attestation, |id| {
                self.by_caller(
                    &caller,
                    Action::IdentityAttestationRecorded,
                    "attestation",
                    id,
                )
                .related(attestation.related())
                .build()
            })
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(RecordAttestationResponse {
            attestation_id: id.to_string(),
        }))
    }

    #[tracing::instrument(name = "identity.open_break_glass", skip_all)]
    async fn open_break_glass(
        &self,
        request: Request<OpenBreakGlassRequest>,
    ) -> Result<Response<OpenBreakGlassResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let staff = uuid(&mut v, "staff_id", &req.staff_id);
        let matter = uuid(&mut v, "matter_id", &req.matter_id);
        text(&mut v, "justification", &req.justification, 2000);
        if req.justification.trim().chars().count() < 20 {
            v.add(
                "justification",
                "must explain the emergency in at least 20 characters",
            );
        }
        if !(1..=MAX_BREAK_GLASS_MINUTES).contains(&req.duration_minutes) {
            v.add(
                "duration_minutes",
                format!("must be between 1 and {MAX_BREAK_GLASS_MINUTES}"),
            );
        }
        check(v)?;
        let (staff, matter) = (staff.unwrap_or_default(), matter.unwrap_or_default());
        // To the microsecond, as the database keeps it: the time answered
        // is the one every later read shows.
        let expires = chrono::SubsecRound::trunc_subsecs(
            Utc::now() + Duration::minutes(i64::from(req.duration_minutes)),
            6,
        );
        // The justification stays in the identity database for the security
        // officer's review; the audit event records the grant, not the text.
        let id = self
            .directory
            .open_break_glass(staff, matter, &req.justification, expires, |id| {
                EventBuilder::new(
                    ServiceName::Identity,
                    &self.trust_domain,
                    Action::IdentityBreakGlassOpened,
                )
                .actor(ActorKind::Staff, &staff.to_string(), caller.as_str())
                .resource("break_glass", &id.to_string())
                .scope(None, Some(matter))
                .build()
            })
            .await
            .map_err(Error::from)?;
        tracing::warn!(
            break_glass_id = %id,
            staff_id = %staff,
            matter_id = %matter,
            "break-glass access opened; the security officer must review it"
        );
        self.facts.clear();
        Ok(Response::new(OpenBreakGlassResponse {
            break_glass_id: id.to_string(),
            expire_time: Some(proto_time(expires)),
        }))
    }

    #[tracing::instrument(name = "identity.authorize", skip_all, fields(permission = %request.get_ref().permission))]
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let staff = uuid(&mut v, "staff_id", &req.staff_id);
        let client = optional_uuid(&mut v, "client_id", &req.client_id);
        let matter = optional_uuid(&mut v, "matter_id", &req.matter_id);
        let well_formed = !req.permission.is_empty()
            && req.permission.len() <= 64
            && req
                .permission
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_');
        if !well_formed {
            v.add(
                "permission",
                "must be a permission name such as client_data.read",
            );
        }
        if crate::domain::is_client_scoped(&req.permission) && client.is_none() && matter.is_none()
        {
            v.add(
                "matter_id",
                "a client data permission needs a client_id or matter_id",
            );
        }
        check(v)?;
        let staff = staff.unwrap_or_default();
        let facts = match self.facts.get(staff, &req.permission, client, matter) {
            Some(cached) => cached,
            None => {
                let fresh = self
                    .directory
                    .facts(staff, &req.permission, client, matter)
                    .await
                    .map_err(Error::from)?;
                self.facts
                    .put(staff, &req.permission, client, matter, fresh.clone());
                fresh
            }
        };
        let decision = decide(&facts, &req.permission, Utc::now());
        let outcome = if decision.allowed() {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        let event = EventBuilder::new(
            ServiceName::Identity,
            &self.trust_domain,
            Action::IdentityAuthorize,
        )
        .actor(ActorKind::Staff, &staff.to_string(), caller.as_str())
        .resource("decision", &req.permission)
        .scope(client, matter)
        .outcome(outcome, decision.reason_code())
        .build();
        let decision_id = event.id.clone();
        // Records go to the outbox in batches; when the queue is full this
        // writes synchronously, and a decision that cannot be recorded is not
        // given.
        self.recorder.record(event).await.map_err(Error::from)?;
        Ok(Response::new(AuthorizeResponse {
            allowed: decision.allowed(),
            reason: decision.reason as i32,
            granted_by_role: decision.role.unwrap_or_default(),
            access_path: decision.path as i32,
            decision_id,
        }))
    }

    #[tracing::instrument(name = "identity.set_password", skip_all)]
    async fn set_password(
        &self,
        request: Request<SetPasswordRequest>,
    ) -> Result<Response<SetPasswordResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let staff = uuid(&mut v, "staff_id", &req.staff_id);
        if let Some(rule) = crate::credentials::password_rule_broken(&req.password) {
            v.add("password", rule);
        }
        check(v)?;
        self.sessions
            .set_password(
                staff.unwrap_or_default(),
                &req.password,
                req.temporary,
                caller.as_str(),
            )
            .await
            .map_err(Error::from)?;
        Ok(Response::new(SetPasswordResponse {}))
    }

    #[tracing::instrument(name = "identity.change_password", skip_all)]
    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        credentials(
            &mut v,
            &req.email,
            "current_password",
            &req.current_password,
        );
        totp_code(&mut v, "totp_code", &req.totp_code);
        if let Some(rule) = crate::credentials::password_rule_broken(&req.new_password) {
            v.add("new_password", rule);
        } else if req.new_password == req.current_password {
            v.add("new_password", "must differ from the current password");
        }
        check(v)?;
        let issued = self
            .sessions
            .change_password(
                &req.email,
                &req.current_password,
                &req.totp_code,
                &req.new_password,
                caller.as_str(),
            )
            .await
            .map_err(Error::from)?;
        Ok(Response::new(ChangePasswordResponse {
            tokens: Some(tokens(issued)),
        }))
    }

    #[tracing::instrument(name = "identity.reset_totp", skip_all)]
    async fn reset_totp(
        &self,
        request: Request<ResetTotpRequest>,
    ) -> Result<Response<ResetTotpResponse>, Status> {
        let (staff, event) = self.about(
            &request,
            ("staff_id", &request.get_ref().staff_id),
            Action::IdentityTotpReset,
            "staff",
        )?;
        let event = event.build();
        self.sessions
            .reset_totp(staff, event)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(ResetTotpResponse {}))
    }

    #[tracing::instrument(name = "identity.enroll_totp", skip_all)]
    async fn enroll_totp(
        &self,
        request: Request<EnrollTotpRequest>,
    ) -> Result<Response<EnrollTotpResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        credentials(&mut v, &req.email, "password", &req.password);
        check(v)?;
        let secret = self
            .sessions
            .enroll_totp(&req.email, &req.password, caller.as_str())
            .await
            .map_err(Error::from)?;
        let encoded = crate::credentials::base32(&secret);
        let issuer = format!("Confidant ({})", self.trust_domain);
        let uri = format!(
            "otpauth://totp/{}:{}?secret={encoded}&issuer={}&algorithm=SHA1&digits=6&period=30",
            issuer.replace(' ', "%20"),
            req.email.to_lowercase(),
            issuer.replace(' ', "%20")
        );
        Ok(Response::new(EnrollTotpResponse {
            secret_base32: encoded,
            otpauth_uri: uri,
        }))
    }

    #[tracing::instrument(name = "identity.confirm_totp", skip_all)]
    async fn confirm_totp(
        &self,
        request: Request<ConfirmTotpRequest>,
    ) -> Result<Response<ConfirmTotpResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        credentials(&mut v, &req.email, "password", &req.password);
        totp_code(&mut v, "code", &req.code);
        check(v)?;
        self.sessions
            .confirm_totp(&req.email, &req.password, &req.code, caller.as_str())
            .await
            .map_err(Error::from)?;
        Ok(Response::new(ConfirmTotpResponse {}))
    }

    #[tracing::instrument(name = "identity.login", skip_all)]
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        credentials(&mut v, &req.email, "password", &req.password);
        totp_code(&mut v, "totp_code", &req.totp_code);
        check(v)?;
        let issued = self
            .sessions
            .login(&req.email, &req.password, &req.totp_code, caller.as_str())
            .await
            .map_err(Error::from)?;
        Ok(Response::new(LoginResponse {
            tokens: Some(tokens(issued)),
        }))
    }

    #[tracing::instrument(name = "identity.refresh_session", skip_all)]
    async fn refresh_session(
        &self,
        request: Request<RefreshSessionRequest>,
    ) -> Result<Response<RefreshSessionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.refresh_token.is_empty() || req.refresh_token.len() > 128 {
            v.add(
                "refresh_token",
                "must be a refresh token from Login or RefreshSession",
            );
        }
        check(v)?;
        let issued = self
            .sessions
            .refresh(&req.refresh_token, caller.as_str())
            .await
            .map_err(Error::from)?;
        Ok(Response::new(RefreshSessionResponse {
            tokens: Some(tokens(issued)),
        }))
    }

    #[tracing::instrument(name = "identity.revoke_session", skip_all)]
    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        let caller = caller(&request)?;
        let token_staff = token_holder(&request).ok().map(|(staff, _)| staff);
        // The session's own holder (logout) or an administrator.
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| self.verifier.verify(t).ok());
        let req = request.into_inner();
        let mut v = Violations::new();
        let session = uuid(&mut v, "session_id", &req.session_id);
        check(v)?;
        let session = session.unwrap_or_default();
        // A staff member whose live token the layer verified may end any
        // of their own sessions.
        let holder = match token_staff {
            Some(staff) => self
                .sessions
                .holder_of(session)
                .await
                .map_err(Error::from)?
                .filter(|holder| *holder == staff),
            None => None,
        };
        let (reason, staff) = match bearer {
            Some(claims) if claims.sid == session.to_string() => {
                ("logout", Uuid::parse_str(&claims.sub).ok())
            }
            // Another of their own sessions (a device they left signed in).
            Some(_) if holder.is_some() => ("holder", holder),
            _ if self.admins.iter().any(|a| a == caller.as_str()) => ("admin", None),
            _ => {
                return Err(confidant_runtime::error::with_reason(
                    tonic::Code::PermissionDenied,
                    "not_session_holder",
                    "only the session's holder or an administrator may end it",
                ));
            }
        };
        self.sessions
            .revoke(session, reason, staff, caller.as_str())
            .await
            .map_err(Error::from)?;
        Ok(Response::new(RevokeSessionResponse {}))
    }

    #[tracing::instrument(name = "identity.list_staff_sessions", skip_all)]
    async fn list_staff_sessions(
        &self,
        request: Request<ListStaffSessionsRequest>,
    ) -> Result<Response<ListStaffSessionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let staff = uuid(&mut v, "staff_id", &req.staff_id);
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (100, 1000),
            &[page::Part::Uuid],
        );
        check(v)?;
        let staff = staff.unwrap_or_default();
        let (sessions, next) = self
            .sessions
            .live_sessions(staff, after.values(), limit)
            .await
            .map_err(Error::from)?
            .ok_or(Error::Store(crate::store::StoreError::NotFound(
                "staff member",
            )))?;
        // Who looked at whose sign-ins, before anything is returned.
        let event = self
            .by_caller(&caller, Action::IdentityStaffSessionsListed, "staff", staff)
            .build();
        self.directory.record(event).await.map_err(Error::from)?;
        Ok(Response::new(ListStaffSessionsResponse {
            sessions: sessions
                .into_iter()
                .map(|s| staff_session(s, false))
                .collect(),
            next_page_token: next
                .map(|id| page::token(&[Key::Uuid(id)]))
                .unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "identity.get_my_account", skip_all)]
    async fn get_my_account(
        &self,
        request: Request<GetMyAccountRequest>,
    ) -> Result<Response<GetMyAccountResponse>, Status> {
        let (staff, session) = token_holder(&request)?;
        let now = Utc::now();
        let listing = self
            .directory
            .staff_member(staff)
            .await
            .map_err(Error::from)?
            .ok_or(Error::NoStaffToken)?;
        let attestations = self
            .directory
            .attestations(staff)
            .await
            .map_err(Error::from)?;
        let mut facts = self
            .directory
            .facts(staff, CLIENT_DATA_READ, None, None)
            .await
            .map_err(Error::from)?;
        facts.attested(&attestations);
        // The agreement and training decisions count, as recorded.
        let counted = [
            (facts.counted_nda(now), AttestationKind::Nda),
            (facts.counted_training(now), AttestationKind::Training),
        ]
        .into_iter()
        .filter_map(|(counted, kind)| {
            let a = attestations
                .iter()
                .find(|a| Some(a.attestation.id) == counted.map(|c| c.id))?;
            Some(AttestationStatus {
                kind: kind as i32,
                version: a.version.clone(),
                complete_time: Some(proto_time(a.attestation.completed)),
                expire_time: Some(proto_time(a.attestation.expires)),
            })
        })
        .collect();
        let walls = self
            .directory
            .walls_screening(staff, now)
            .await
            .map_err(Error::from)?
            .into_iter()
            .map(|w| ScreeningWall {
                wall_id: w.id.to_string(),
                create_time: Some(proto_time(w.created_at)),
                client_ids: w.clients.iter().map(Uuid::to_string).collect(),
                matter_ids: w.matters.iter().map(Uuid::to_string).collect(),
                exceptions: w
                    .passages
                    .into_iter()
                    .map(|(id, matter, expires)| WallPassage {
                        exception_id: id.to_string(),
                        matter_id: matter.to_string(),
                        expire_time: Some(proto_time(expires)),
                    })
                    .collect(),
            })
            .collect();
        // The review items waiting for them, as ListAccessReviewItems shows
        // them to them.
        let reviews = self.reviews();
        let reviewer = reviews
            .reviewer(&self.directory, staff)
            .await
            .map_err(Error::from)?;
        let pending = reviews.pending(None).await.map_err(Error::from)?;
        let reviews: Vec<ReviewWork> = reviewer
            .waiting(&pending)
            .into_iter()
            .map(|w| ReviewWork {
                campaign_id: w.campaign.to_string(),
                name: w.name.to_owned(),
                deadline: Some(proto_time(w.deadline)),
                pending_items: i32::try_from(w.items).unwrap_or(i32::MAX),
                overdue: w.deadline < now,
            })
            .collect();
        let (sessions, _) = self
            .sessions
            .live_sessions(
                staff,
                vec![confidant_runtime::portable::Value::OptUuid(None)],
                100,
            )
            .await
            .map_err(Error::from)?
            .unwrap_or_default();
        Ok(Response::new(GetMyAccountResponse {
            staff: Some(summary(&listing, listing.live_roles(now))),
            attestations: counted,
            client_data_blocked_by: facts.blocked_everywhere(CLIENT_DATA_READ, now) as i32,
            walls,
            sessions: sessions
                .into_iter()
                .map(|s| {
                    let current = s.id.to_string() == session;
                    staff_session(s, current)
                })
                .collect(),
            reviews,
        }))
    }

    #[tracing::instrument(name = "identity.list_my_matters", skip_all)]
    async fn list_my_matters(
        &self,
        request: Request<ListMyMattersRequest>,
    ) -> Result<Response<ListMyMattersResponse>, Status> {
        let (staff, _) = token_holder(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let (limit, after) = page::requested(
            &mut v,
            req.page_size,
            &req.page_token,
            (50, 200),
            &[page::Part::Uuid],
        );
        check(v)?;
        let now = Utc::now();
        let (ways, next) = self
            .directory
            .ways_in(staff, now, after.values(), limit)
            .await
            .map_err(Error::from)?;
        let mut matters = Vec::with_capacity(ways.len());
        for (matter, client, closed, practice_area) in ways {
            // What Authorize would find and decide for a read of it now.
            let facts = self
                .directory
                .facts(staff, CLIENT_DATA_READ, Some(client), Some(matter))
                .await
                .map_err(Error::from)?;
            let (path, lapses) = facts.way_in(now).unwrap_or((AccessPath::Unspecified, None));
            matters.push(MyMatter {
                matter_id: matter.to_string(),
                client_id: client.to_string(),
                access_path: path as i32,
                access_expire_time: lapses.map(proto_time),
                read_denied: decide(&facts, CLIENT_DATA_READ, now).reason as i32,
                close_time: closed.map(proto_time),
                practice_area,
            });
        }
        Ok(Response::new(ListMyMattersResponse {
            matters,
            next_page_token: next
                .map(|id| page::token(&[Key::Uuid(id)]))
                .unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "identity.revoke_staff_sessions", skip_all)]
    async fn revoke_staff_sessions(
        &self,
        request: Request<RevokeStaffSessionsRequest>,
    ) -> Result<Response<RevokeStaffSessionsResponse>, Status> {
        let (staff, event) = self.about(
            &request,
            ("staff_id", &request.get_ref().staff_id),
            Action::IdentityStaffSignedOut,
            "staff",
        )?;
        let event = event.build();
        let ended = self
            .sessions
            .end_all(staff, event)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(RevokeStaffSessionsResponse {
            sessions_ended: i32::try_from(ended).unwrap_or(i32::MAX),
        }))
    }

    #[tracing::instrument(name = "identity.get_jwks", skip_all)]
    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        let keys = self.sessions.keys();
        Ok(Response::new(GetJwksResponse {
            jwks_json: keys.jwks(),
            issuer: keys.issuer().to_owned(),
        }))
    }

    #[tracing::instrument(name = "identity.get_certificate_keys", skip_all)]
    async fn get_certificate_keys(
        &self,
        _request: Request<GetCertificateKeysRequest>,
    ) -> Result<Response<GetCertificateKeysResponse>, Status> {
        Ok(Response::new(GetCertificateKeysResponse {
            jwks_json: self.certificate_keys()?.jwks(),
        }))
    }

    #[tracing::instrument(name = "identity.explain_matter_access", skip_all)]
    async fn explain_matter_access(
        &self,
        request: Request<ExplainMatterAccessRequest>,
    ) -> Result<Response<ExplainMatterAccessResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let matter = uuid(&mut v, "matter_id", &req.matter_id);
        let at = time(&mut v, "time", req.time.as_ref(), false).unwrap_or_else(Utc::now);
        let permission = if req.permission.is_empty() {
            "client_data.read".to_owned()
        } else {
            req.permission.clone()
        };
        if !crate::domain::is_client_scoped(&permission) {
            v.add(
                "permission",
                "must be a client data permission such as client_data.read",
            );
        }
        check(v)?;
        let matter = matter.unwrap_or_default();
        if !self
            .directory
            .matter_exists(matter)
            .await
            .map_err(Error::from)?
        {
            return Err(Error::Store(crate::store::StoreError::NotFound("matter")).into());
        }
        let mut entries = Vec::new();
        for staff in self
            .directory
            .matter_candidates(matter)
            .await
            .map_err(Error::from)?
        {
            let facts = self
                .directory
                .facts(staff, &permission, None, Some(matter))
                .await
                .map_err(Error::from)?;
            let d = decide(&facts, &permission, at);
            entries.push(AccessExplanation {
                staff_id: staff.to_string(),
                allowed: d.allowed(),
                reason: d.reason as i32,
                granted_by_role: d.role.unwrap_or_default(),
                access_path: d.path as i32,
                wall_exception_ids: d.through_exceptions.iter().map(Uuid::to_string).collect(),
            });
        }
        Ok(Response::new(ExplainMatterAccessResponse { entries }))
    }

    #[tracing::instrument(name = "identity.start_client_verification", skip_all)]
    async fn start_client_verification(
        &self,
        request: Request<StartClientVerificationRequest>,
    ) -> Result<Response<StartClientVerificationResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let client = uuid(&mut v, "client_id", &req.client_id);
        let address = req.contact_address.trim();
        match ContactChannel::try_from(req.channel) {
            Ok(ContactChannel::Email) => {
                if !(address.contains('@')
                    && address.len() <= 254
                    && !address.chars().any(char::is_whitespace))
                {
                    v.add("contact_address", "must be an e-mail address");
                }
            }
            Ok(ContactChannel::Phone) => {
                let digits = address.chars().filter(char::is_ascii_digit).count();
                let allowed = address
                    .chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')'));
                if !(allowed && (7..=15).contains(&digits)) {
                    v.add("contact_address", "must be a phone number (E.164 digits)");
                }
            }
            _ => v.add("channel", "must be EMAIL or PHONE"),
        }
        if req.reference.len() > 128 || req.reference.chars().any(char::is_control) {
            v.add("reference", "must be at most 128 printable characters");
        }
        check(v)?;
        let (id, expires) = self
            .clients
            .start(
                client.unwrap_or_default(),
                req.channel,
                address,
                &req.reference,
                caller.as_str(),
            )
            .await
            .map_err(Error::from)?;
        Ok(Response::new(StartClientVerificationResponse {
            verification_id: id.to_string(),
            expire_time: Some(proto_time(expires)),
        }))
    }

    #[tracing::instrument(name = "identity.complete_client_verification", skip_all)]
    async fn complete_client_verification(
        &self,
        request: Request<CompleteClientVerificationRequest>,
    ) -> Result<Response<CompleteClientVerificationResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = uuid(&mut v, "verification_id", &req.verification_id);
        if req.code.len() != 6 || !req.code.chars().all(|c| c.is_ascii_digit()) {
            v.add("code", "must be 6 digits");
        }
        check(v)?;
        let (token, expires, level) = self
            .clients
            .complete(id.unwrap_or_default(), &req.code, caller.as_str())
            .await
            .map_err(Error::from)?;
        Ok(Response::new(CompleteClientVerificationResponse {
            client_token: token,
            expire_time: Some(proto_time(expires)),
            verification_level: level,
        }))
    }

    #[tracing::instrument(name = "identity.record_identity_document_check", skip_all)]
    async fn record_identity_document_check(
        &self,
        request: Request<RecordIdentityDocumentCheckRequest>,
    ) -> Result<Response<RecordIdentityDocumentCheckResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let client = uuid(&mut v, "client_id", &req.client_id);
        let staff = uuid(&mut v, "verified_by_staff_id", &req.verified_by_staff_id);
        if !matches!(
            req.document_type.as_str(),
            "passport" | "national-id" | "driving-licence" | "residence-permit"
        ) {
            v.add(
                "document_type",
                "must be passport, national-id, driving-licence or residence-permit",
            );
        }
        if !(req.issuing_country.len() == 2
            && req.issuing_country.chars().all(|c| c.is_ascii_uppercase()))
        {
            v.add(
                "issuing_country",
                "must be an ISO 3166-1 alpha-2 code such as GB",
            );
        }
        let alnum = req
            .document_number
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .count();
        if !(4..=32).contains(&alnum) {
            v.add("document_number", "must have 4 to 32 letters and digits");
        }
        check(v)?;
        let level = self
            .clients
            .record_document_check(
                client.unwrap_or_default(),
                &req.document_type,
                &req.issuing_country,
                &req.document_number,
                staff.unwrap_or_default(),
                caller.as_str(),
            )
            .await
            .map_err(Error::from)?;
        Ok(Response::new(RecordIdentityDocumentCheckResponse {
            verification_level: level,
        }))
    }

    #[tracing::instrument(name = "identity.start_access_review", skip_all)]
    async fn start_access_review(
        &self,
        request: Request<StartAccessReviewRequest>,
    ) -> Result<Response<StartAccessReviewResponse>, Status> {
        let reviewer = self.reviewer(&request).await?;
        if !reviewer.manages() {
            return Err(Error::Refused(
                "not_reviewer",
                "starting an access review needs reviews.manage",
            )
            .into());
        }
        let req = request.into_inner();
        let mut v = Violations::new();
        text(&mut v, "name", &req.name, 200);
        let deadline = time(&mut v, "deadline", req.deadline.as_ref(), true);
        if deadline.is_some_and(|d| d <= Utc::now()) {
            v.add("deadline", "must lie in the future");
        }
        check(v)?;
        let (id, count) = self
            .reviews()
            .start(&req.name, deadline.unwrap_or_default(), reviewer.actor())
            .await
            .map_err(Error::from)?;
        // Its reviewers are told now, not at the next sweep.
        if let Some(reminders) = self.reminders.clone() {
            tokio::spawn(async move {
                if let Err(e) = reminders.sweep(Utc::now()).await {
                    tracing::warn!(error = %e, "reviewers of a new campaign were not told");
                }
            });
        }
        Ok(Response::new(StartAccessReviewResponse {
            campaign_id: id.to_string(),
            item_count: i32::try_from(count).unwrap_or(i32::MAX),
        }))
    }

    #[tracing::instrument(name = "identity.list_access_review_items", skip_all)]
    async fn list_access_review_items(
        &self,
        request: Request<ListAccessReviewItemsRequest>,
    ) -> Result<Response<ListAccessReviewItemsResponse>, Status> {
        let reviewer = self.reviewer(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = uuid(&mut v, "campaign_id", &req.campaign_id);
        let limit = page::page_size(&mut v, "page_size", req.page_size, 1000);
        let after = page::after_id(&mut v, "page_token", &req.page_token);
        check(v)?;
        let campaign = self
            .reviews()
            .campaign(id.unwrap_or_default())
            .await
            .map_err(Error::from)?;
        let late = Utc::now() > campaign.deadline;
        // Reviewers of part of the campaign see their part (the counts are
        // of all of it, whichever page this is).
        let visible: Vec<crate::reviews::Item> = campaign
            .items
            .into_iter()
            .filter(|i| reviewer.manages() || reviewer.may_decide(i).is_ok())
            .collect();
        let pending = visible.iter().filter(|i| i.decision.is_none()).count();
        // Items come by id; a page starts after the last item of the one before.
        let wanted: Vec<crate::reviews::Item> = visible
            .into_iter()
            .filter(|i| !req.pending_only || i.decision.is_none())
            .filter(|i| after.is_none_or(|after| i.id > after))
            .take(usize::try_from(limit + 1).unwrap_or(usize::MAX))
            .collect();
        let (wanted, next_page_token) =
            page::split(wanted, limit, |i| page::token(&[Key::Uuid(i.id)]));
        let items = wanted
            .into_iter()
            .map(|i| AccessReviewItem {
                item_id: i.id.to_string(),
                kind: i.kind,
                staff_id: i.staff_id.to_string(),
                subject: i.subject,
                decision: match i.decision {
                    Some(crate::reviews::CERTIFY) => ReviewDecision::Certify as i32,
                    Some(crate::reviews::REVOKE) => ReviewDecision::Revoke as i32,
                    _ => ReviewDecision::Unspecified as i32,
                },
                overdue: late && i.decision.is_none(),
                decided_by: i.decided_by.unwrap_or_default(),
            })
            .collect();
        let pending = i32::try_from(pending).unwrap_or(i32::MAX);
        Ok(Response::new(ListAccessReviewItemsResponse {
            items,
            next_page_token,
            pending_count: pending,
            overdue_count: if late { pending } else { 0 },
            deadline: Some(proto_time(campaign.deadline)),
        }))
    }

    #[tracing::instrument(name = "identity.decide_access_review_item", skip_all)]
    async fn decide_access_review_item(
        &self,
        request: Request<DecideAccessReviewItemRequest>,
    ) -> Result<Response<DecideAccessReviewItemResponse>, Status> {
        let reviewer = self.reviewer(&request).await?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let item = uuid(&mut v, "item_id", &req.item_id);
        let decision = match ReviewDecision::try_from(req.decision) {
            Ok(ReviewDecision::Certify) => crate::reviews::CERTIFY,
            Ok(ReviewDecision::Revoke) => crate::reviews::REVOKE,
            _ => {
                v.add("decision", "must be CERTIFY or REVOKE");
                0
            }
        };
        check(v)?;
        let reviews = self.reviews();
        let item = reviews
            .item(item.unwrap_or_default())
            .await
            .map_err(Error::from)?;
        reviewer.may_decide(&item)?;
        reviews
            .decide(&item, decision, reviewer.actor())
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(DecideAccessReviewItemResponse {}))
    }

    #[tracing::instrument(name = "identity.certify_wall", skip_all)]
    async fn certify_wall(
        &self,
        request: Request<CertifyWallRequest>,
    ) -> Result<Response<CertifyWallResponse>, Status> {
        use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
        use confidant_proto::audit::v1::{GetCheckpointRequest, ListEventsRequest};
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let wall = uuid(&mut v, "wall_id", &req.wall_id);
        let start = time(&mut v, "start_time", req.start_time.as_ref(), true);
        let end = time(&mut v, "end_time", req.end_time.as_ref(), true);
        if let (Some(s), Some(e)) = (start, end)
            && s >= e
        {
            v.add("end_time", "must be after start_time");
        }
        if end.is_some_and(|e| e > Utc::now()) {
            v.add("end_time", "must not lie in the future");
        }
        check(v)?;
        let (wall, start, end) = (
            wall.unwrap_or_default(),
            start.unwrap_or_default(),
            end.unwrap_or_default(),
        );
        let (staff, clients, matters) = self.directory.wall(wall).await.map_err(Error::from)?;
        let channel = self
            .audit
            .clone()
            .ok_or_else(|| Status::unavailable("the audit service is not configured"))?;
        let mut audit = AuditServiceClient::new(channel);
        let targets: Vec<(String, String)> = clients
            .iter()
            .map(|c| (c.to_string(), String::new()))
            .chain(matters.iter().map(|m| (String::new(), m.to_string())))
            .collect();
        let mut found: Vec<String> = Vec::new();
        for s in &staff {
            for (client_id, matter_id) in &targets {
                let mut page_token = String::new();
                loop {
                    let page = audit
                        .list_events(ListEventsRequest {
                            actor_id: s.to_string(),
                            client_id: client_id.clone(),
                            matter_id: matter_id.clone(),
                            outcome: confidant_proto::audit::v1::Outcome::Allowed as i32,
                            start_time: Some(proto_time(start)),
                            end_time: Some(proto_time(end)),
                            page_size: 1000,
                            page_token,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    found.extend(
                        page.events
                            .into_iter()
                            .filter_map(|e| e.event.map(|e| e.id)),
                    );
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
            }
        }
        let outcome = if found.is_empty() {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        let event = self
            .by_caller(&caller, Action::IdentityWallCertified, "wall", wall)
            .outcome(
                outcome,
                if found.is_empty() {
                    ""
                } else {
                    "accesses_found"
                },
            )
            .build();
        self.directory.record(event).await.map_err(Error::from)?;
        if !found.is_empty() {
            return Err(confidant_runtime::error::with_reason(
                tonic::Code::FailedPrecondition,
                "accesses_found",
                format!(
                    "{} successful accesses by screened staff in the period (first event {})",
                    found.len(),
                    found[0]
                ),
            ));
        }
        let checkpoint = audit
            .get_checkpoint(GetCheckpointRequest { tree_size: 0 })
            .await?
            .into_inner()
            .checkpoint
            .ok_or_else(|| Status::unavailable("the audit log has no checkpoint yet"))?;
        let now = Utc::now();
        let document = serde_json::json!({
            "type": "wall-certification",
            "iss": self.sessions.keys().issuer(),
            "wall_id": wall.to_string(),
            "period_start": start.to_rfc3339(),
            "period_end": end.to_rfc3339(),
            "screened_staff": staff.iter().map(Uuid::to_string).collect::<Vec<_>>(),
            "screened_clients": clients.iter().map(Uuid::to_string).collect::<Vec<_>>(),
            "screened_matters": matters.iter().map(Uuid::to_string).collect::<Vec<_>>(),
            "successful_accesses": 0,
            "audit_checkpoint": {
                "tree_size": checkpoint.tree_size,
                "root_hash": checkpoint.root_hash.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "signed_note": checkpoint.signed_note,
            },
            "iat": now.timestamp(),
        });
        let jws = self
            .certificate_keys()?
            .sign_any(&document)
            .map_err(|_| Status::internal("could not sign the certification"))?;
        Ok(Response::new(CertifyWallResponse {
            certification_jws: jws,
            audit_tree_size: checkpoint.tree_size,
        }))
    }

    #[tracing::instrument(name = "identity.grant_role", skip_all)]
    async fn grant_role(
        &self,
        request: Request<GrantRoleRequest>,
    ) -> Result<Response<GrantRoleResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let staff = uuid(&mut v, "staff_id", &req.staff_id);
        let known = self.directory.known_roles().await.map_err(Error::from)?;
        if !known.contains(&req.role) {
            v.add("role", "is not a known role");
        }
        let expires = time(&mut v, "expire_time", req.expire_time.as_ref(), false);
        if expires.is_some_and(|e| e <= Utc::now()) {
            v.add("expire_time", "must lie in the future");
        }
        check(v)?;
        let staff = staff.unwrap_or_default();
        let now = Utc::now();
        let event = EventBuilder::new(
            ServiceName::Identity,
            &self.trust_domain,
            Action::IdentityRoleGranted,
        )
        .at(now)
        .actor(ActorKind::Service, caller.name(), caller.as_str())
        .resource("role", &req.role)
        .related(crate::store::Grant { staff, expires }.related())
        .outcome(Outcome::Allowed, &format!("staff-{staff}"))
        .build();
        self.directory
            .grant_role(staff, &req.role, now, expires, event)
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(GrantRoleResponse {}))
    }

    #[tracing::instrument(name = "identity.revoke_role", skip_all)]
    async fn revoke_role(
        &self,
        request: Request<RevokeRoleRequest>,
    ) -> Result<Response<RevokeRoleResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let staff = uuid(&mut v, "staff_id", &req.staff_id);
        if req.role.is_empty() {
            v.add("role", "is required");
        }
        check(v)?;
        let event = EventBuilder::new(
            ServiceName::Identity,
            &self.trust_domain,
            Action::IdentityRoleRevoked,
        )
        .actor(ActorKind::Service, caller.name(), caller.as_str())
        .resource("role", &req.role)
        .outcome(
            Outcome::Allowed,
            &format!("staff-{}", staff.unwrap_or_default()),
        )
        .build();
        self.directory
            .revoke_role(staff.unwrap_or_default(), &req.role, event)
            .await
            .map_err(Error::from)?;
        self.facts.clear();
        Ok(Response::new(RevokeRoleResponse {}))
    }
    async fn get_compliance_facts(
        &self,
        request: Request<GetComplianceFactsRequest>,
    ) -> Result<Response<GetComplianceFactsResponse>, Status> {
        let req = request.into_inner();
        let as_of = req
            .as_of_time
            .and_then(|t| DateTime::from_timestamp(t.seconds, 0))
            .unwrap_or_else(Utc::now);
        let mut v = Violations::new();
        let days = match req.expiring_within_days {
            0 => 30,
            d if (1..=366).contains(&d) => d,
            _ => {
                v.add("expiring_within_days", "1 to 366 (0: 30)");
                30
            }
        };
        check(v)?;
        let horizon = as_of + Duration::days(i64::from(days));
        let mut attestations = Vec::new();
        for (kind, proto_kind) in [
            (KIND_NDA, AttestationKind::Nda),
            (KIND_TRAINING, AttestationKind::Training),
        ] {
            let rows = self
                .directory
                .attestation_coverage(kind)
                .await
                .map_err(Error::from)?;
            let mut coverage = AttestationCoverage {
                kind: proto_kind as i32,
                ..Default::default()
            };
            let mut seen = std::collections::BTreeSet::new();
            for (staff, expires, score, pass_mark) in rows {
                // Newest attestation first: the first row per staff decides.
                if !seen.insert(staff) {
                    continue;
                }
                coverage.staff += 1;
                let passed = match (score, pass_mark) {
                    (Some(s), Some(p)) => s >= p,
                    _ => true,
                };
                match expires {
                    Some(e) if e > as_of && passed => {
                        coverage.covered += 1;
                        if e <= horizon {
                            coverage.expiring += 1;
                        }
                    }
                    _ => {
                        coverage.missing += 1;
                        coverage.missing_staff_ids.push(staff.to_string());
                    }
                }
            }
            attestations.push(coverage);
        }
        let reviews = self
            .directory
            .review_progress()
            .await
            .map_err(Error::from)?
            .into_iter()
            .map(|(id, name, deadline, items, decided)| ReviewCampaignFacts {
                campaign_id: id.to_string(),
                name,
                deadline_time: Some(proto_time(deadline)),
                items: i32::try_from(items).unwrap_or(i32::MAX),
                decided: i32::try_from(decided).unwrap_or(i32::MAX),
                overdue: deadline < as_of && decided < items,
            })
            .collect();
        Ok(Response::new(GetComplianceFactsResponse {
            attestations,
            reviews,
        }))
    }

    #[tracing::instrument(name = "identity.notify_staff", skip_all)]
    async fn notify_staff(
        &self,
        request: Request<NotifyStaffRequest>,
    ) -> Result<Response<NotifyStaffResponse>, Status> {
        let notice = staff_notice(request.into_inner())?;
        let reminders = self
            .reminders
            .as_ref()
            .ok_or_else(|| Status::unavailable("staff notices are not configured"))?;
        let noticed = reminders
            .notify(&notice, Utc::now())
            .await
            .map_err(Error::from)?;
        let n = |x: usize| i32::try_from(x).unwrap_or(i32::MAX);
        Ok(Response::new(NotifyStaffResponse {
            recipients: n(noticed.recipients),
            sent: n(noticed.sent),
            failed: n(noticed.failed),
        }))
    }

    #[tracing::instrument(name = "identity.notify_client", skip_all)]
    async fn notify_client(
        &self,
        request: Request<NotifyClientRequest>,
    ) -> Result<Response<NotifyClientResponse>, Status> {
        let caller = caller(&request)?;
        let notice = client_notice(request.into_inner())?;
        let sent = self
            .clients
            .notify(&notice, caller.as_str())
            .await
            .map_err(Error::from)?;
        Ok(Response::new(NotifyClientResponse { sent }))
    }
}

/// A NotifyClient request checked: every broken rule named.
fn client_notice(req: NotifyClientRequest) -> Result<crate::clients::ClientNotice, Error> {
    let mut v = Violations::new();
    notice_id(&mut v, &req.notice_id);
    if ClientNoticeKind::try_from(req.kind) != Ok(ClientNoticeKind::SubmissionReceived) {
        v.add("kind", "must be a known kind of notice");
    }
    let client = uuid(&mut v, "client_id", &req.client_id);
    let channel = ContactChannel::try_from(req.channel);
    if !matches!(channel, Ok(ContactChannel::Email | ContactChannel::Phone)) {
        v.add("channel", "must be EMAIL or PHONE");
    }
    let address = zeroize::Zeroizing::new(req.contact_address);
    if address.trim().is_empty() || address.len() > 254 {
        v.add("contact_address", "must be 1 to 254 characters");
    }
    let reference = uuid(&mut v, "reference_id", &req.reference_id);
    let at = time(&mut v, "occur_time", req.occur_time.as_ref(), true);
    check(v)?;
    Ok(crate::clients::ClientNotice {
        id: req.notice_id,
        client: client.unwrap_or_default(),
        channel: req.channel,
        address,
        reference: reference.unwrap_or_default(),
        at: at.unwrap_or_default(),
    })
}

/// Checks a caller's id of a notice.
fn notice_id(v: &mut Violations, id: &str) {
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        v.add(
            "notice_id",
            "must be 1 to 128 letters, digits, '.', '_', ':' or '-'",
        );
    }
}

/// A NotifyStaff request checked: every broken rule named.
fn staff_notice(req: NotifyStaffRequest) -> Result<crate::reminders::StaffNotice, Error> {
    use crate::reminders::NoticeKind;
    let mut v = Violations::new();
    notice_id(&mut v, &req.notice_id);
    let kind = match StaffNoticeKind::try_from(req.kind) {
        Ok(StaffNoticeKind::DestructionStaged) => Some(NoticeKind::DestructionStaged),
        Ok(StaffNoticeKind::DisposalBatchAwaitingApproval) => {
            Some(NoticeKind::BatchAwaitingApproval)
        }
        Ok(StaffNoticeKind::ErasureAwaitingApproval) => Some(NoticeKind::ErasureAwaitingApproval),
        Ok(StaffNoticeKind::ReturnsListed) => Some(NoticeKind::ReturnsListed),
        Ok(StaffNoticeKind::HoldReleaseAwaitingApproval) => {
            Some(NoticeKind::HoldReleaseAwaitingApproval)
        }
        Ok(StaffNoticeKind::SubmissionReceived) => Some(NoticeKind::SubmissionReceived),
        Ok(StaffNoticeKind::InvitationExpired) => Some(NoticeKind::InvitationExpired),
        Ok(StaffNoticeKind::DestructionDue) => Some(NoticeKind::DestructionDue),
        Ok(StaffNoticeKind::Unspecified) | Err(_) => {
            v.add("kind", "must be a known kind of notice");
            None
        }
    };
    if req.item_count < 1 {
        v.add("item_count", "must be at least 1");
    }
    let staged = matches!(
        kind,
        Some(NoticeKind::DestructionStaged | NoticeKind::DestructionDue)
    );
    let deadline = time(&mut v, "deadline", req.deadline.as_ref(), staged);
    if !staged && deadline.is_some() {
        v.add(
            "deadline",
            "is only for DESTRUCTION_STAGED and DESTRUCTION_DUE",
        );
    }
    let reference = match kind {
        Some(kind) if kind.names_one() => uuid(&mut v, "reference_id", &req.reference_id),
        _ => {
            if !req.reference_id.is_empty() {
                v.add(
                    "reference_id",
                    "is only for the kinds about one thing: a batch, erasure, hold, submission or invitation",
                );
            }
            None
        }
    };
    let except = optional_uuid(&mut v, "except_staff_id", &req.except_staff_id);
    let recipient = match kind {
        Some(kind) if kind.permission().is_none() => {
            uuid(&mut v, "recipient_staff_id", &req.recipient_staff_id)
        }
        _ => {
            if !req.recipient_staff_id.is_empty() {
                v.add(
                    "recipient_staff_id",
                    "is only for the kinds about an invitation: the others go to a permission's holders",
                );
            }
            None
        }
    };
    check(v)?;
    Ok(crate::reminders::StaffNotice {
        id: req.notice_id,
        kind: kind.unwrap_or(NoticeKind::DestructionStaged),
        items: u32::try_from(req.item_count).unwrap_or(1),
        deadline,
        reference,
        except,
        recipient,
    })
}

/// Tells retention that a matter closed (its retention periods may count from
/// it), retrying a few times. If retention cannot be reached the closing is
/// still in the directory and the audit log, and a records manager can record
/// the trigger; until then the matter's data is kept (the safe side).
async fn tell_retention(
    channel: confidant_runtime::client::PeerChannel,
    client: Uuid,
    matter: Uuid,
    closed: DateTime<Utc>,
) {
    use confidant_proto::retention::v1::retention_service_client::RetentionServiceClient;
    use confidant_proto::retention::v1::{RecordTriggerEventRequest, Trigger};
    let mut wait = std::time::Duration::from_secs(1);
    for attempt in 1..=4 {
        let mut request = tonic::Request::new(RecordTriggerEventRequest {
            client_id: client.to_string(),
            matter_id: matter.to_string(),
            trigger: Trigger::MatterClosed as i32,
            event_name: String::new(),
            occur_time: Some(proto_time(closed)),
        });
        request.set_timeout(std::time::Duration::from_secs(10));
        match RetentionServiceClient::new(channel.clone())
            .record_trigger_event(request)
            .await
        {
            Ok(_) => return,
            Err(status) if attempt < 4 => {
                tracing::info!(code = ?status.code(), attempt, "retention not told of a matter closing yet; retrying");
                tokio::time::sleep(wait).await;
                wait *= 4;
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), matter_id = %matter, "retention was not told of a matter closing; record the trigger there");
            }
        }
    }
}
