//! The vocabulary of the audit log, shared by the services that record
//! events and the audit service that accepts them: an event whose action is
//! not in this catalogue is refused, so auditors work with a fixed, documented
//! set of verbs.

use std::fmt;
use std::str::FromStr;

use confidant_proto::audit::v1::{
    Actor, ActorKind, AuditEvent, Outcome, RelatedResource, Resource,
};

use crate::service_name::ServiceName;

/// Most fields a record may have (`vault.max_fields` is capped here), and so
/// most field names a read's event lists in `disclosed_fields`: 200 names of
/// at most 64 characters stay well inside the audit log's 64 KiB per event.
pub const MAX_RECORD_FIELDS: usize = 200;

/// Most further resources an event names in `related` (a wall's screened
/// staff, clients and matters together; a hold's named scopes): 1,000 UUIDs
/// with their types take under 48 KiB of the audit log's 64 KiB per event.
pub const MAX_RELATED: usize = 1000;

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
    ServiceDataKeyRewrapped => "service.data_key.rewrapped", "A service's own data key (identity's TOTP seeds, intake's invitation contacts) was rewrapped under the active KMS key after a rotation (resource: the service; reason: kms_key_rotated).";
    IdentityAuthorize => "identity.authorize", "An authorization decision (outcome allowed or denied, with its reason).";
    IdentityStaffCreated => "identity.staff.created", "A staff account was created.";
    IdentityStaffDisabled => "identity.staff.disabled", "A staff account was disabled; its sessions ended.";
    IdentityStaffUpdated => "identity.staff.updated", "An administrator changed a staff member's work e-mail address or displayed name (resource: the staff member; related: `field` `email` and/or `display_name`, never the values).";
    IdentityStaffEnabled => "identity.staff.enabled", "A disabled staff account was enabled again (resource: the staff member).";
    IdentityStaffListed => "identity.staff.listed", "An administrator listed staff members: e-mail addresses, names, roles and sign-in states (resource: `staff` `directory`; related: the role asked for, if any).";
    IdentityClientCreated => "identity.client.created", "A client was registered.";
    IdentityMatterCreated => "identity.matter.created", "A matter was opened (resource: the matter, with its client; related: its practice area, and its responsible attorney and jurisdiction if it has them).";
    IdentityMatterClosed => "identity.matter.closed", "A matter was closed.";
    IdentityAssignmentGranted => "identity.assignment.granted", "A staff member was assigned to a matter (resource: the assignment, with its matter; related: the staff member, and the expiry if it has one).";
    IdentityAssignmentRevoked => "identity.assignment.revoked", "An assignment was revoked.";
    IdentityWallCreated => "identity.wall.created", "An ethical wall was put up (resource: the wall; related: each staff member it screens, and each client and matter it screens them from).";
    IdentityWallExceptionGranted => "identity.wall.exception_granted", "A screened staff member was let through a wall for one matter, until an expiry (resource: the exception; related: the wall, the staff member, the matter and the expiry; the reason given is not logged).";
    IdentityWallExceptionRevoked => "identity.wall.exception_revoked", "A wall exception was ended.";
    IdentityAttestationRecorded => "identity.attestation.recorded", "An NDA or training attestation was recorded (related: the staff member, its kind, version, completion and expiry, a training's score and pass mark).";
    IdentityAttestationReminded => "identity.attestation.reminded", "Identity sent a staff member an e-mail (once it was sent) that the agreement or training decisions count for them lapses soon (reason: due) or has lapsed (reason: lapsed), since from then on every read of client data is denied to them (resource: the staff member; related: the attestation and its kind).";
    IdentityBreakGlassOpened => "identity.break_glass.opened", "Emergency access to a matter was opened (alerts the security officer).";
    IdentityLoginSucceeded => "identity.login.succeeded", "A staff member signed in (password and TOTP).";
    IdentityLoginFailed => "identity.login.failed", "A sign-in, or another step that checks a staff member's password (TOTP enrolment, a password change), failed (reason: bad_credentials, bad_totp_code, account_locked, totp_not_enrolled, account_disabled; password_change_required: both were right, but the password is a temporary one).";
    IdentityPasswordSet => "identity.password.set", "An administrator set a staff member's password; their sessions ended (reason: `temporary` for a password they must change before signing in, else `permanent`).";
    IdentityPasswordChanged => "identity.password.changed", "A staff member changed their own password, proving the old one and a TOTP code; their other sessions ended and a new one opened.";
    IdentityTotpEnrolled => "identity.totp.enrolled", "A staff member confirmed a TOTP authenticator.";
    IdentityTotpReset => "identity.totp.reset", "An administrator removed a staff member's TOTP authenticator (a lost or replaced device); their sessions ended until they enrol a new one (resource: the staff member).";
    IdentityStaffSessionsListed => "identity.staff.sessions_listed", "An administrator listed a staff member's live sessions: when and through which application each opened (resource: the staff member).";
    IdentityStaffSignedOut => "identity.staff.signed_out", "An administrator ended every live session of a staff member at once (resource: the staff member); their credentials and access stay as they were.";
    IdentitySessionRevoked => "identity.session.revoked", "A session was ended (reason: logout; holder: the staff member ended another of their own sessions; admin, refresh_token_reuse, password_set, restore).";
    IdentityAdminBootstrapped => "identity.admin.bootstrapped", "The first firm administrator was created from the command line.";
    IdentityClientVerificationStarted => "identity.client_verification.started", "A one-time code was sent to a client.";
    IdentityClientNotified => "identity.client.notified", "Identity sent a client a notice another service asked for, once it was sent, to a contact the client had verified (reason: submission_received; resource: the client; related: the notice's id and its reference, such as the submission).";
    IdentityClientVerified => "identity.client_verification.completed", "A client proved control of a contact channel (outcome denied: wrong or expired code).";
    IdentityDocumentChecked => "identity.document.checked", "Staff recorded a check of a client's identity document.";
    IdentityReviewStarted => "identity.review.started", "An access review campaign was opened.";
    IdentityReviewReminded => "identity.review.reminded", "Identity sent a reviewer an e-mail (once it was sent) that items of an access review campaign wait for their decision (reason: started, or due as its deadline nears; resource: the campaign; related: the reviewer and how many items).";
    IdentityStaffNotified => "identity.staff.notified", "Identity sent a staff member an e-mail (once it was sent) of work another service said waits for them (reason: destruction_staged, destruction_due, returns_listed, disposal_batch_awaiting_approval, erasure_awaiting_approval, hold_release_awaiting_approval, submission_received or invitation_expired; resource: the staff member; related: the notice's id, how many items, and the batch, erasure, hold, submission or invitation as `reference`).";
    IdentityReviewDecided => "identity.review.decided", "A grant under review was certified or revoked (reason: certify, revoke).";
    IdentityRoleGranted => "identity.role.granted", "A staff member was given a role (resource id: the role; reason: `staff-` and the staff member's id; related: the staff member, and the expiry if it has one).";
    IdentityRoleRevoked => "identity.role.revoked", "A role was taken from a staff member (resource id: the role; reason: `staff-` and the staff member's id).";
    IdentityClientReapplied => "identity.client.reapplied", "A client the audit log shows registered was registered again, with its logged id and time, on an identity database restored from a backup taken before it (resource: the client; reason: `event-` and the logged event's id; `confidant restore identity`).";
    IdentityMatterReapplied => "identity.matter.reapplied", "A matter the audit log shows opened was opened again, with its logged id, time, client and classification, on an identity database restored from a backup taken before it (resource: the matter, with its client; related: as the logged event's; reason: `event-` and the logged event's id; `confidant restore identity`).";
    IdentityAttestationReapplied => "identity.attestation.reapplied", "An NDA or training attestation the audit log records was recorded again, under its logged id and with its logged terms, on an identity database restored from a backup taken before it (resource: the attestation; related: as the logged event's; reason: `event-` and the logged event's id; `confidant restore identity`).";
    IdentityGrantReapplied => "identity.grant.reapplied", "An assignment or a role the audit log shows granted was granted again, with its logged time and expiry, on an identity database restored from a backup taken before it (resource: the assignment, or the staff member's role as `staff_role`; related: as the logged event's; reason: `event-` and the logged event's id; `confidant restore identity`).";
    IdentityWallReapplied => "identity.wall.reapplied", "A wall the audit log records was put up again on an identity database restored from a backup taken before it, with its logged id and time, screening those its logged event names that the database holds (resource: the wall; related: whom it screens from what; reason: `event-` and the logged event's id; `confidant restore identity`).";
    IdentityWallExceptionReapplied => "identity.wall_exception.reapplied", "A wall exception the audit log shows granted was granted again, under its logged id, with its logged time, grantor and expiry, on an identity database restored from a backup taken before it; its reason, which the log does not hold, names the logged event instead (resource: the exception; related: as the logged event's; reason: `event-` and the logged event's id; `confidant restore identity`).";
    IdentityStaffEnabledReapplied => "identity.staff_enabled.reapplied", "A staff member the audit log shows enabled again after being disabled was enabled again on an identity database restored from a backup that holds them disabled (resource: the staff member; reason: `event-` and the logged event's id; `confidant restore identity`).";
    IdentityRevocationReapplied => "identity.revocation.reapplied", "A revocation the audit log records (a staff member disabled, an assignment, role or wall exception revoked, a matter closed) was made again on an identity database restored from a backup taken before it (resource: what it revoked; reason: `event-` and the logged event's id; `confidant restore identity`).";
    IdentitySignInReset => "identity.sign_in.reset", "A staff member's password and TOTP were made unusable because the audit log shows them changed after the backup the identity database was restored from; an administrator sets a new password and the staff member enrols TOTP again (resource: the staff member; reason: `event-` and the logged change's id; `confidant restore identity`).";
    VaultRecordCreated => "vault.record.created", "A record was stored (resource: the record, with its client, matter and category).";
    VaultRecordCorrected => "vault.record.corrected", "A record or document was corrected: its next version was stored (CorrectRecord, or an upload naming the document it supersedes) and the version it replaces kept as superseded history (resource: the new version, with its client, matter and category; reason: `supersedes-` and the replaced version's id; changed_fields: the fields a record's correction set or removed; the correction's reason sealed under the scope's key).";
    VaultRecordsListed => "vault.records.listed", "A client's record metadata (never values) was listed, of a matter or category if the event names one.";
    VaultRecordRead => "vault.record.read", "Client data was read in clear, for the event's purpose (outcome denied: the reason; justification sealed).";
    VaultRecordShredded => "vault.record.shredded", "A record key was destroyed.";
    VaultScopeCreated => "vault.scope.created", "A scope key was generated by the KMS.";
    VaultScopeDestructionScheduled => "vault.scope.destruction_scheduled", "A scope became pending destruction (reads refused; reason: the order and when the key goes, `order-<order id>_due-<Unix seconds>`).";
    VaultScopeDestructionCancelled => "vault.scope.destruction_cancelled", "A pending destruction was cancelled; the scope is readable again.";
    VaultScopeDestructionSuspended => "vault.scope.destruction_suspended", "A pending destruction was suspended because a legal hold now covers the scope; the scope is readable again (reason: `hold-` and the hold's id).";
    VaultScopeShredded => "vault.scope.shredded", "A scope key was destroyed: every record of the scope is unreadable (outcome denied: a legal hold).";
    VaultHoldPlaced => "vault.hold.placed", "A legal hold now stops the shredding of the scopes it covers.";
    VaultHoldReleased => "vault.hold.released", "A legal hold was released.";
    VaultOriginalsReturned => "vault.originals.returned", "A scope's originals were returned to the client; the scope follows its schedule again (reason: the return).";
    VaultSealedTextOpened => "vault.sealed_text.opened", "Sealed free text of an audit event was read.";
    VaultRecordUnreadable => "vault.record.unreadable", "A record asked for did not open: its stored ciphertext or wrapped key fails to authenticate where it is stored (altered, moved or corrupt in the database); nothing of it was returned (resource: the record, with its client, matter and category; purpose: the read's; outcome failed; reason: `integrity` or `key_unwrap_failed`).";
    VaultKeysRewrapped => "vault.keys.rewrapped", "Scope keys were rewrapped under the active KMS key.";
    VaultScopeKeyRewrapFailed => "vault.scope_key.rewrap_failed", "A scope key could not be rewrapped under the active KMS key, and stays under its old one (resource: the scope, with its client, matter and category; outcome failed; reason: `refused`, `unwrap_failed` or `other`; `RewrapScopeKeys`).";
    VaultKmsKeyRotated => "vault.kms_key.rotated", "A new master key of the local KMS became the active one for services started afterwards (resource: the new key's id; `confidant keys rotate-local-kms`).";
    VaultKmsKeyRetired => "vault.kms_key.retired", "A master key of the local KMS was removed from its keyring for good, nothing being wrapped under it any more (resource: the key's id; `confidant keys retire-local-kms`).";
    VaultShredReapplied => "vault.shred.reapplied", "A destruction the audit log records was made again on a vault database restored from a backup taken before it (resource: the scope or record; reason: `event-` and the logged destruction's event id; `confidant restore vault`).";
    VaultScheduleReapplied => "vault.schedule.reapplied", "A pending destruction the audit log records, still pending at the end of the log, was staged again on a vault database restored from a backup taken before it (resource: the scope; reason: `event-` and the logged scheduling's event id; `confidant restore vault`).";
    VaultCancellationReapplied => "vault.cancellation.reapplied", "A pending destruction that the audit log shows cancelled (or suspended by a legal hold placed afterwards) was cancelled again on a vault database restored from a backup taken before that (resource: the scope; reason: `event-` and the logged cancellation's or hold's event id; `confidant restore vault`).";
    VaultOriginalsReturnReapplied => "vault.originals_return.reapplied", "A return of originals to the client that the audit log records was made again on a vault database restored from a backup taken before it, for the originals stored before the return (resource: the scope; reason: `event-` and the logged return's event id; `confidant restore vault`).";
    VaultMaskingRulesSet => "vault.masking_rules.set", "A role's masking rules were replaced (resource: the role).";
    AuditSigningKeyRotated => "audit.signing_key.rotated", "The key that signs the log's checkpoints changed (resource: the audit service; related: the new key as `verifier_key`, the key it replaces as `previous_verifier_key` or, when that key was not at hand, its hash as `previous_key_hash`). The first checkpoint covering it is signed by the replaced key when it was at hand: a verifier that trusts the old key learns the new one from the log.";
    AuditAlertRaised => "audit.alert.raised", "A detection rule fired (reason: the rule).";
    AuditDetectionRuleChanged => "audit.detection_rule.changed", "A detection rule was changed (reason: the rule).";
    AuditReportGenerated => "audit.report.generated", "A compliance report was built (resource: the report; reason: on_demand or scheduled).";
    AuditIncidentOpened => "audit.incident.opened", "An incident was opened (reason: its stage).";
    AuditIncidentAdvanced => "audit.incident.advanced", "An incident moved to its next stage (reason: the stage).";
    AuditIncidentNoted => "audit.incident.noted", "A note was added to an incident's timeline.";
    AuditIncidentTaskAdded => "audit.incident.task_added", "A task was added to an incident.";
    AuditIncidentTaskDone => "audit.incident.task_done", "An incident task was marked done.";
    AuditIncidentNotified => "audit.incident.notified", "A notification for an incident obligation was recorded (reason: the obligation).";
    AuditAffectedSearched => "audit.incident.affected_searched", "The log was searched for the clients a compromised identity reached (reason: the number of clients).";
    IntakeNoticePublished => "intake.notice.published", "A version of the privacy notice was published (resource id: the version).";
    IntakeFormPublished => "intake.form.published", "A form version was published (resource id: name and version).";
    IntakeInvitationCreated => "intake.invitation.created", "A client was invited to answer a form for a matter.";
    IntakeInvitationRevocationReapplied => "intake.invitation_revocation.reapplied", "An invitation the audit log shows withdrawn was withdrawn again on an intake database restored from a backup that holds it open (resource: the invitation, with its client and matter; reason: `event-` and the logged event's id; `confidant restore intake`).";
    IntakeInvitationRevoked => "intake.invitation.revoked", "A staff member withdrew an invitation before it was answered: its link and client tokens stop working (resource: the invitation, with its client and matter).";
    IntakeFileUploaded => "intake.file.uploaded", "A client uploaded a file for a form's file field; it is in the vault (resource: the upload).";
    IntakeSubmissionReceived => "intake.submission.received", "A client's answers were stored in the vault and their consent recorded (outcome denied: the reason a submission was refused).";
    IntakeSubmissionDecided => "intake.submission.decided", "Staff accepted or rejected a submission (reason: accepted or rejected).";
    RetentionPolicyCreated => "retention.policy.created", "A retention policy was created (resource: the policy, with its category; related: its rules: period, trigger, action, notice, basis, practice area and jurisdiction).";
    RetentionPolicyUpdated => "retention.policy.updated", "A retention policy changed: a new version (reason: the version; related: its rules, as for a creation).";
    RetentionPolicyRestored => "retention.policy.restored", "A policy version the audit log records after the backup the retention database was restored from was made again, with its logged rules, author and time (resource: the policy; reason: `event-` and the logged event's id; `confidant restore retention`).";
    RetentionTriggerRecorded => "retention.trigger.recorded", "An event a retention period counts from was recorded (reason: its kind; related: its id as `trigger`, when it happened as `occurred_at`, a named event's `event_name`).";
    RetentionHoldPlaced => "retention.hold.placed", "A legal hold was placed (resource: the hold, with its client, matter and category; reason: `scoped` for a hold over named scopes, each named in related; its reason stays in retention).";
    RetentionHoldReleaseApproved => "retention.hold.release_approved", "A staff member approved the release of a legal hold.";
    RetentionHoldReleased => "retention.hold.released", "A legal hold was released after its approvals.";
    RetentionTriggerRestored => "retention.trigger.restored", "A trigger event the audit log shows recorded after the backup the retention database was restored from was recorded again, with its logged id, kind and time (resource: the trigger, with its client and matter; related: as the logged event's; reason: `event-` and the logged event's id; `confidant restore retention`).";
    RetentionHoldRestored => "retention.hold.restored", "A legal hold the audit log shows placed, and not released, after the backup the retention database was restored from was placed again, over the scopes its logged event names if it named any (resource: the hold; reason: `event-` and the logged placing's id; `confidant restore retention`).";
    RetentionDisposalsPaused => "retention.disposals.paused", "Disposal sweeps were paused because the restored retention database lacks schedule changes the audit log records (reason: restore; `confidant restore retention`).";
    RetentionDisposalsResumed => "retention.disposals.resumed", "A records manager let disposal sweeps run again after a restore paused them.";
    RetentionBatchCreated => "retention.batch.created", "A sweep put due scopes in a disposition batch (reason: the policy action, shred or review).";
    RetentionBatchApproved => "retention.batch.approved", "A records manager approved a disposition batch.";
    RetentionDisposalShredded => "retention.disposal.shredded", "The vault confirmed the shred a disposal ordered (reason: the order).";
    RetentionDisposalCancelled => "retention.disposal.cancelled", "A disposal was cancelled (reason: legal_hold, a hold covers its scope; originals, it holds originals and is listed for return; destruction_cancelled, a records manager cancelled its staged destruction at the vault).";
    RetentionReturnListed => "retention.return.listed", "A due scope holding originals was put on the return-to-client list instead of being shredded.";
    RetentionReturnRecorded => "retention.return.recorded", "A records manager recorded that a scope's originals went back to the client.";
    RetentionLocationCreated => "retention.location.created", "A storage location for physical records was added.";
    RetentionLocationCodeChanged => "retention.location.code_changed", "A storage location's access code was changed.";
    RetentionLocationAccessChanged => "retention.location.access_changed", "A staff member was let into a controlled location, or taken off it (reason: granted or revoked).";
    RetentionLocationEntered => "retention.location.entered", "An entry into a controlled location (outcome denied: the staff member has no access).";
    RetentionItemRegistered => "retention.item.registered", "A physical item (file, box, original document) was registered.";
    RetentionItemCheckedOut => "retention.item.checked_out", "A physical item was handed to a staff member (actor: the staff member; related: when it is due back as `due_back_at`; outcome denied: the decision's reason).";
    RetentionItemCheckedIn => "retention.item.checked_in", "A physical item was put back (related: where, as `location`).";
    RetentionItemTransferred => "retention.item.transferred", "A physical item moved to another location, e.g. off-site storage (related: where to, as `location`; reason: `off_site` for an off-site location).";
    RetentionItemDestroyed => "retention.item.destroyed", "A physical item was destroyed by the shredding vendor (reason: the certificate of disposal).";
    RetentionItemReturned => "retention.item.returned", "An original went back to its client.";
    RetentionItemRestored => "retention.item.restored", "A movement of a physical item the audit log records after the backup the retention database was restored from (a check-out, check-in, transfer, return or destruction) was made again on the restored register, with its logged time and staff member, and in its custody log (resource: the item, with its client and matter; related: the movement as `movement`, and what its event names; reason: `event-` and the logged event's id; `confidant restore retention`).";
    RetentionCertificateIssued => "retention.certificate.issued", "A signed certificate was issued: of disposal for a shredded scope (resource: certificate), or of erasure for an erased record (resource: certificate; reason: `erasure-` and the erasure's id).";
    RetentionErasureRequested => "retention.erasure.requested", "A records manager asked for one record to be erased before its schedule (resource: the erasure; reason: its basis, e.g. client_request; the record's client, matter and category). Outcome denied: refused up front (resource: the record; reason: shredded, originals or legal_hold).";
    RetentionErasureApproved => "retention.erasure.approved", "A records manager approved the erasure of one record (reason: `ordered` for the approval that completed it).";
    RetentionErasureCancelled => "retention.erasure.cancelled", "The erasure of one record was cancelled (reason: withdrawn, by a records manager; legal_hold or originals, the vault refused).";
    RetentionErasureShredded => "retention.erasure.shredded", "The vault confirmed the erasure of one record: every version's key destroyed (reason: the order).";
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
            session_id: String::new(),
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

/// The id or code `related` names under `kind` (the first, if several).
pub fn related_named<'a>(related: &'a [RelatedResource], kind: &str) -> Option<&'a str> {
    related
        .iter()
        .find(|r| r.r#type == kind)
        .map(|r| r.id.as_str())
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

    /// When the action happened, if not now: the time a row the same
    /// transaction writes carries, so that the two compare exactly.
    pub fn at(mut self, time: chrono::DateTime<chrono::Utc>) -> Self {
        self.0.time = Some(std::time::SystemTime::from(time).into());
        self
    }

    /// Who acted.
    pub fn actor(mut self, kind: ActorKind, id: &str, peer_identity: &str) -> Self {
        self.0.actor = Some(Actor {
            kind: kind as i32,
            id: id.to_owned(),
            roles: Vec::new(),
            peer_identity: peer_identity.to_owned(),
            session_id: String::new(),
        });
        self
    }

    /// The staff session the actor acted under.
    pub fn session(mut self, session_id: &str) -> Self {
        if let Some(actor) = self.0.actor.as_mut() {
            actor.session_id = session_id.to_owned();
        }
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

    /// The data category of the resource.
    pub fn category(mut self, category: &str) -> Self {
        let r = self.0.resource.get_or_insert_with(Resource::default);
        r.data_category = category.to_owned();
        self
    }

    /// The roles the actor acted in.
    pub fn roles(mut self, roles: &[String]) -> Self {
        if let Some(actor) = self.0.actor.as_mut() {
            actor.roles = roles.to_vec();
        }
        self
    }

    /// The purpose the actor gave.
    pub fn purpose(mut self, purpose: &str) -> Self {
        self.0.purpose = purpose.to_owned();
        self
    }

    /// Free text sealed by the vault under the key of `scope_id`.
    pub fn sealed_text(mut self, sealed: Vec<u8>, scope_id: &str) -> Self {
        self.0.sealed_text = sealed;
        self.0.sealed_scope_id = scope_id.to_owned();
        self
    }

    /// The names of the record fields whose values a read returned.
    pub fn disclosed_fields(mut self, names: Vec<String>) -> Self {
        self.0.disclosed_fields = names;
        self
    }

    /// The fields a correction set or removed (names only).
    pub fn changed_fields(mut self, names: Vec<String>) -> Self {
        self.0.changed_fields = names;
        self
    }

    /// Further resources the action concerned, as `(type, id)` pairs (see
    /// [`MAX_RELATED`]).
    pub fn related<K: Into<String>, I: Into<String>>(
        mut self,
        related: impl IntoIterator<Item = (K, I)>,
    ) -> Self {
        self.0.related = related
            .into_iter()
            .map(|(kind, id)| RelatedResource {
                r#type: kind.into(),
                id: id.into(),
            })
            .collect();
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
