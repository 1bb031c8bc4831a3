//! The vocabulary of the audit log, shared by the services that record
//! events and the audit service that accepts them: an event whose action is
//! not in this catalogue is refused, so auditors work with a fixed, documented
//! set of verbs.

use std::fmt;
use std::str::FromStr;

use confidant_proto::audit::v1::{Actor, ActorKind, AuditEvent, Outcome, Resource};

use crate::service_name::ServiceName;

macro_rules! actions {
    ($($variant:ident => $name:literal, $doc:literal;)+) => {
        /// An audited action.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action {
            $(#[doc = $doc] $variant,)+
        }

        impl Action {
            /// Every action, in catalogue order.
            pub const ALL: &'static [Action] = &[$(Action::$variant,)+];

            /// The dotted name stored in events, e.g. `service.started`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Action::$variant => $name,)+
                }
            }
        }

        impl FromStr for Action {
            type Err = UnknownAction;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(Action::$variant),)+
                    _ => Err(UnknownAction),
                }
            }
        }
    };
}

actions! {
    ServiceStarted => "service.started", "A service process started serving (resource: the service).";
    ServiceStopped => "service.stopped", "A service process stopped serving after a shutdown signal.";
    IdentityAuthorize => "identity.authorize", "An authorization decision (outcome allowed or denied, with its reason).";
    IdentityStaffCreated => "identity.staff.created", "A staff account was created.";
    IdentityStaffDisabled => "identity.staff.disabled", "A staff account was disabled.";
    IdentityClientCreated => "identity.client.created", "A client was registered.";
    IdentityMatterCreated => "identity.matter.created", "A matter was opened.";
    IdentityMatterClosed => "identity.matter.closed", "A matter was closed.";
    IdentityAssignmentGranted => "identity.assignment.granted", "A staff member was assigned to a matter.";
    IdentityAssignmentRevoked => "identity.assignment.revoked", "An assignment was revoked.";
    IdentityWallCreated => "identity.wall.created", "An ethical wall was put up.";
    IdentityAttestationRecorded => "identity.attestation.recorded", "An NDA or training attestation was recorded.";
    IdentityBreakGlassOpened => "identity.break_glass.opened", "Emergency access to a matter was opened (alerts the security officer).";
    IdentityLoginSucceeded => "identity.login.succeeded", "A staff member signed in (password and TOTP).";
    IdentityLoginFailed => "identity.login.failed", "A sign-in failed (reason: bad_credentials, account_locked, totp_not_enrolled, account_disabled).";
    IdentityPasswordSet => "identity.password.set", "A staff member's password was set; their sessions ended.";
    IdentityTotpEnrolled => "identity.totp.enrolled", "A staff member confirmed a TOTP authenticator.";
    IdentitySessionRevoked => "identity.session.revoked", "A session was ended (reason: logout, admin, refresh_token_reuse, password_set).";
    IdentityAdminBootstrapped => "identity.admin.bootstrapped", "The first firm administrator was created from the command line.";
    IdentityClientVerificationStarted => "identity.client_verification.started", "A one-time code was sent to a client.";
    IdentityClientVerified => "identity.client_verification.completed", "A client proved control of a contact channel (outcome denied: wrong or expired code).";
    IdentityDocumentChecked => "identity.document.checked", "Staff recorded a check of a client's identity document.";
    IdentityReviewStarted => "identity.review.started", "An access review campaign was opened.";
    IdentityReviewDecided => "identity.review.decided", "A grant under review was certified or revoked (reason: certify, revoke).";
    IdentityRoleGranted => "identity.role.granted", "A staff member was given a role (resource id: the role).";
    IdentityRoleRevoked => "identity.role.revoked", "A role was taken from a staff member (resource id: the role).";
    IdentityWallCertified => "identity.wall.certified", "A wall was certified for a period from the audit log (outcome denied: accesses found).";
}

/// An action name that is not in the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit action")]
pub struct UnknownAction;

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event recorded by `service` about itself (start, stop, scheduled
/// work), with a fresh UUIDv7 id, the current time and trace id.
pub fn service_event(
    service: ServiceName,
    trust_domain: &str,
    action: Action,
    outcome: Outcome,
) -> AuditEvent {
    let now = std::time::SystemTime::now();
    AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        time: Some(prost_types::Timestamp::from(now)),
        source_service: service.as_str().to_owned(),
        actor: Some(Actor {
            kind: ActorKind::Service as i32,
            id: service.as_str().to_owned(),
            roles: Vec::new(),
            peer_identity: service.spiffe_id(trust_domain),
        }),
        action: action.as_str().to_owned(),
        resource: Some(Resource {
            r#type: "service".to_owned(),
            id: service.as_str().to_owned(),
            ..Resource::default()
        }),
        outcome: outcome as i32,
        trace_id: crate::telemetry::current_trace_id(),
        ..AuditEvent::default()
    }
}

/// Builds an audit event step by step; starts as an allowed action by the
/// producing service itself, at the current time and trace.
#[derive(Debug, Clone)]
pub struct EventBuilder(AuditEvent);

impl EventBuilder {
    /// An event of `action` produced by `service`.
    pub fn new(service: ServiceName, trust_domain: &str, action: Action) -> Self {
        Self(service_event(
            service,
            trust_domain,
            action,
            Outcome::Allowed,
        ))
    }

    /// Who acted.
    pub fn actor(mut self, kind: ActorKind, id: &str, peer_identity: &str) -> Self {
        self.0.actor = Some(Actor {
            kind: kind as i32,
            id: id.to_owned(),
            roles: Vec::new(),
            peer_identity: peer_identity.to_owned(),
        });
        self
    }

    /// What it concerned.
    pub fn resource(mut self, kind: &str, id: &str) -> Self {
        self.0.resource = Some(Resource {
            r#type: kind.to_owned(),
            id: id.to_owned(),
            ..Resource::default()
        });
        self
    }

    /// The client and matter concerned.
    pub fn scope(mut self, client_id: Option<uuid::Uuid>, matter_id: Option<uuid::Uuid>) -> Self {
        let r = self.0.resource.get_or_insert_with(Resource::default);
        r.client_id = client_id.map(|c| c.to_string()).unwrap_or_default();
        r.matter_id = matter_id.map(|m| m.to_string()).unwrap_or_default();
        self
    }

    /// The outcome and its reason code.
    pub fn outcome(mut self, outcome: Outcome, reason: &str) -> Self {
        self.0.outcome = outcome as i32;
        self.0.reason = reason.to_owned();
        self
    }

    /// The event.
    pub fn build(self) -> AuditEvent {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_round_trips_through_its_name() {
        for action in Action::ALL {
            assert_eq!(action.as_str().parse::<Action>(), Ok(*action));
        }
        assert_eq!("vault.record.peek".parse::<Action>(), Err(UnknownAction));
    }
}
