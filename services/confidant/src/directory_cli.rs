//! `confidant directory`: the identity directory from the command line, with
//! an administrator's certificate (an identity on `identity.admins`): staff,
//! roles, clients, matters, assignments, walls and their exceptions,
//! attestations, access reviews, wall certifications, the point-in-time
//! explanation and the authorization decision. One JSON object per line.

use std::io::Write;

use confidant_proto::identity::v1 as pb;
use confidant_proto::identity::v1::identity_service_client::IdentityServiceClient;
use confidant_runtime::client::PeerChannel;
use serde_json::json;

/// How to reach the identity service.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The service URL.
    #[arg(long, default_value = "https://127.0.0.1:7101")]
    pub service: String,
    #[command(flatten)]
    pub credentials: crate::cli::Credentials,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum DirectoryCommand {
    /// Add a staff member with roles.
    AddStaff {
        /// Work e-mail.
        #[arg(long)]
        email: String,
        /// Name shown to colleagues.
        #[arg(long)]
        name: String,
        /// A role (repeat), e.g. partner, paralegal, records_manager.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// List staff members by e-mail address, one line each: id, name,
    /// roles, whether disabled, and where their sign-in stands.
    Staff {
        /// Only those who hold this role now.
        #[arg(long)]
        role: Option<String>,
        /// Disabled staff members too.
        #[arg(long)]
        include_disabled: bool,
        /// Only those whose sign-in stands so (e.g. totp-pending: never
        /// finished setting up; locked: locked by a restore).
        #[arg(long, value_parser = ["no-password", "totp-pending", "ready", "locked", "password-change-required"])]
        sign_in: Option<String>,
        /// Only those whose e-mail address or name contains this text
        /// (either case).
        #[arg(long)]
        query: Option<String>,
    },
    /// Disable a staff member (sessions end, decisions deny).
    DisableStaff {
        /// The staff member.
        #[arg(long)]
        staff: String,
    },
    /// Change a staff member's work e-mail address (their sign-in name) or
    /// displayed name; they are told at the old and the new address.
    UpdateStaff {
        /// The staff member.
        #[arg(long)]
        staff: String,
        /// The new work e-mail address.
        #[arg(long)]
        email: Option<String>,
        /// The new name shown to colleagues.
        #[arg(long)]
        name: Option<String>,
    },
    /// Enable a disabled staff member again: their roles, assignments and
    /// attestations count again as they stand; they sign in anew.
    EnableStaff {
        /// The staff member.
        #[arg(long)]
        staff: String,
    },
    /// Set a staff member's password (their sessions end), read from
    /// CONFIDANT_STAFF_PASSWORD or standard input, never from the command
    /// line.
    SetPassword {
        /// The staff member.
        #[arg(long)]
        staff: String,
        /// A temporary password, handed to them: they must change it
        /// (ChangePassword, through the firm's application) to sign in.
        #[arg(long)]
        temporary: bool,
    },
    /// Remove a staff member's TOTP authenticator (a lost or replaced
    /// device): their sessions end, and they enrol a new one with their
    /// password before they can sign in again.
    ResetTotp {
        /// The staff member.
        #[arg(long)]
        staff: String,
    },
    /// List a staff member's live sessions, newest first, one line each:
    /// when each opened, through which application, when its tokens were
    /// last issued and when it ends.
    Sessions {
        /// The staff member.
        #[arg(long)]
        staff: String,
    },
    /// End every live session of a staff member at once (a lost laptop, a
    /// suspected compromise); their credentials and access stay.
    SignOut {
        /// The staff member.
        #[arg(long)]
        staff: String,
    },
    /// Give a staff member a role, until an optional expiry (RFC 3339).
    GrantRole {
        /// The staff member.
        #[arg(long)]
        staff: String,
        /// The role.
        #[arg(long)]
        role: String,
        /// When it lapses.
        #[arg(long)]
        until: Option<String>,
    },
    /// Take a role away.
    RevokeRole {
        /// The staff member.
        #[arg(long)]
        staff: String,
        /// The role.
        #[arg(long)]
        role: String,
    },
    /// Register a client.
    AddClient,
    /// Open a matter for a client.
    AddMatter {
        /// The client.
        #[arg(long)]
        client: String,
        /// Practice area, e.g. conveyancing.
        #[arg(long)]
        area: String,
        /// The responsible attorney (staff id).
        #[arg(long, default_value = "")]
        attorney: String,
        /// ISO 3166 jurisdiction, e.g. GB or US-NY.
        #[arg(long, default_value = "")]
        jurisdiction: String,
    },
    /// Close a matter (retention counts from it).
    CloseMatter {
        /// The matter.
        #[arg(long)]
        matter: String,
    },
    /// Assign a staff member to a matter.
    Assign {
        /// The matter.
        #[arg(long)]
        matter: String,
        /// The staff member.
        #[arg(long)]
        staff: String,
    },
    /// Put up an ethical wall.
    AddWall {
        /// A screened staff member (repeat).
        #[arg(long = "staff")]
        staff: Vec<String>,
        /// A client screened off (repeat).
        #[arg(long = "client")]
        clients: Vec<String>,
        /// A matter screened off (repeat).
        #[arg(long = "matter")]
        matters: Vec<String>,
    },
    /// Let a screened staff member through a wall for one matter.
    WallException {
        /// The wall.
        #[arg(long)]
        wall: String,
        /// The staff member.
        #[arg(long)]
        staff: String,
        /// The matter.
        #[arg(long)]
        matter: String,
        /// Why (no client data).
        #[arg(long)]
        reason: String,
        /// When it lapses (RFC 3339).
        #[arg(long)]
        until: String,
    },
    /// Record a signed NDA or completed training.
    Attest {
        /// The staff member.
        #[arg(long)]
        staff: String,
        /// nda or training.
        #[arg(long, value_parser = ["nda", "training"])]
        kind: String,
        /// The version of the agreement or course.
        #[arg(long)]
        version: String,
        /// When it was completed (RFC 3339).
        #[arg(long)]
        completed: String,
        /// When it expires (RFC 3339).
        #[arg(long)]
        expires: String,
        /// Training: the score.
        #[arg(long, default_value_t = 0)]
        score: i32,
        /// Training: the pass mark.
        #[arg(long, default_value_t = 0)]
        pass_mark: i32,
    },
    /// Open emergency access to a matter (time-limited, alerts the
    /// security officer).
    BreakGlass {
        /// The staff member.
        #[arg(long)]
        staff: String,
        /// The matter.
        #[arg(long)]
        matter: String,
        /// Why.
        #[arg(long)]
        justification: String,
        /// For how long, in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: i32,
    },
    /// End an assignment at once.
    Unassign {
        /// The assignment.
        #[arg(long)]
        assignment: String,
    },
    /// End a wall exception at once.
    RevokeWallException {
        /// The exception.
        #[arg(long)]
        exception: String,
    },
    /// Who could reach a matter at a moment, and why (point in time).
    Explain {
        /// The matter.
        #[arg(long)]
        matter: String,
        /// The moment (RFC 3339); now when left out.
        #[arg(long)]
        at: Option<String>,
        /// The permission; client_data.read when left out.
        #[arg(long, default_value = "")]
        permission: String,
    },
    /// Start an access review: every assignment and role membership becomes
    /// an item to certify or revoke before the deadline.
    ReviewStart {
        /// A name, e.g. "2026 Q4 review".
        #[arg(long)]
        name: String,
        /// When every item must be decided by (RFC 3339).
        #[arg(long)]
        deadline: String,
    },
    /// The items of an access review, with pending and overdue counts.
    ReviewItems {
        /// The campaign.
        #[arg(long)]
        campaign: String,
        /// Only items not yet decided.
        #[arg(long)]
        pending: bool,
    },
    /// Certify or revoke one grant of an access review (a revocation takes
    /// effect at once).
    ReviewDecide {
        /// The item.
        #[arg(long)]
        item: String,
        /// certify or revoke.
        #[arg(long)]
        decision: String,
    },
    /// A signed certification that a wall held for a period, backed by the
    /// audit log.
    CertifyWall {
        /// The wall.
        #[arg(long)]
        wall: String,
        /// Start of the period (RFC 3339, inclusive).
        #[arg(long)]
        from: String,
        /// End of the period (RFC 3339, exclusive, not in the future).
        #[arg(long)]
        to: String,
    },
    /// The keys that verify wall certifications (a JSON Web Key Set): save
    /// them with the certifications to verify those later without the
    /// service.
    CertificateKeys,
    /// Check a wall certification's signature and print what it certifies;
    /// exits non-zero when it does not verify.
    VerifyCertification {
        /// The certification: the JWS, or the JSON `certify-wall` printed.
        #[arg(long)]
        file: std::path::PathBuf,
        /// Verify offline against these saved keys (`certificate-keys`), or
        /// the published ones (`confidant keys public` of each, one per
        /// line), instead of asking the identity service.
        #[arg(long)]
        keys: Option<std::path::PathBuf>,
    },
    /// Ask the authorization decision.
    Decide {
        /// The staff member.
        #[arg(long)]
        staff: String,
        /// The permission, e.g. client_data.read.
        #[arg(long)]
        permission: String,
        /// The matter.
        #[arg(long, default_value = "")]
        matter: String,
        /// The client.
        #[arg(long, default_value = "")]
        client: String,
    },
}

fn time(raw: &str) -> anyhow::Result<prost_types::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(raw)
        .map_err(|_| anyhow::anyhow!("{raw}: expected an RFC 3339 time"))?;
    Ok(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

async fn certificate_keys(
    c: &mut IdentityServiceClient<PeerChannel>,
) -> Result<String, tonic::Status> {
    Ok(c.get_certificate_keys(pb::GetCertificateKeysRequest {})
        .await?
        .into_inner()
        .jwks_json)
}

/// The keys in `path` as a JSON Web Key Set: the file is one (as
/// `certificate-keys` prints it), or holds what `confidant keys public`
/// printed for each key the firm published, one object per line, whose
/// `jwk`s it gathers.
fn read_keys(path: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let published: Vec<serde_json::Value> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    if !published.is_empty() && published.iter().all(|p| p.get("jwk").is_some()) {
        let keys: Vec<&serde_json::Value> = published.iter().map(|p| &p["jwk"]).collect();
        return Ok(json!({ "keys": keys }).to_string());
    }
    Ok(text)
}

/// The payload of the certification in `file` if it verifies under `jwks`.
fn verify_certification(file: &std::path::Path, jwks: &str) -> anyhow::Result<serde_json::Value> {
    let raw =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let raw = raw.trim();
    let jws = match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(v) => v["certification_jws"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("{}: no certification_jws in it", file.display()))?,
        Err(_) => raw.to_owned(),
    };
    let verifier = confidant_runtime::auth::TokenVerifier::from_jwks(jwks, "")
        .map_err(|_| anyhow::anyhow!("the keys are not a JSON Web Key Set of Ed25519 keys"))?;
    let payload = verifier
        .verify_document(&jws)
        .map_err(|_| anyhow::anyhow!("the certification does not verify against these keys"))?;
    Ok(json!({ "verified": true, "certification": payload }))
}

impl Connection {
    async fn client(&self) -> anyhow::Result<IdentityServiceClient<PeerChannel>> {
        Ok(IdentityServiceClient::new(
            self.credentials.channel(&self.service).await?,
        ))
    }
}

/// The password `set-password` sets: CONFIDANT_STAFF_PASSWORD, or the first
/// line of standard input.
fn staff_password() -> anyhow::Result<zeroize::Zeroizing<String>> {
    if let Ok(password) = std::env::var("CONFIDANT_STAFF_PASSWORD") {
        return Ok(zeroize::Zeroizing::new(password));
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| anyhow::anyhow!("could not read the password from standard input: {e}"))?;
    Ok(zeroize::Zeroizing::new(
        line.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

/// Runs one command, writing its JSON line to `out`.
pub async fn run(
    conn: &Connection,
    command: DirectoryCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let fail = |s: tonic::Status| anyhow::anyhow!(crate::records_cli::describe(&s));
    // Offline verification needs no connection.
    if let DirectoryCommand::VerifyCertification {
        file,
        keys: Some(keys),
    } = &command
    {
        let line = verify_certification(file, &read_keys(keys)?)?;
        writeln!(out, "{line}")?;
        return Ok(());
    }
    let mut c = conn.client().await?;
    let line = match command {
        DirectoryCommand::AddStaff { email, name, roles } => {
            let r = c
                .create_staff_member(pb::CreateStaffMemberRequest {
                    request_id: String::new(),
                    email,
                    display_name: name,
                    roles,
                })
                .await
                .map_err(fail)?
                .into_inner();
            json!({ "staff_id": r.staff_id })
        }
        DirectoryCommand::Staff {
            role,
            include_disabled,
            sign_in,
            query,
        } => {
            // The state's proto name, from the flag's spelling.
            let sign_in = sign_in.map_or(0, |s| {
                pb::SignInState::from_str_name(&format!(
                    "SIGN_IN_STATE_{}",
                    s.to_uppercase().replace('-', "_")
                ))
                .map_or(0, |state| state as i32)
            });
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_staff_members(pb::ListStaffMembersRequest {
                        role: role.clone().unwrap_or_default(),
                        include_disabled,
                        page_size: 1000,
                        page_token,
                        sign_in,
                        query: query.clone().unwrap_or_default(),
                    })
                    .await
                    .map_err(fail)?
                    .into_inner();
                for s in r.staff {
                    let roles: Vec<serde_json::Value> = s
                        .roles
                        .into_iter()
                        .map(|r| {
                            json!({
                                "role": r.role,
                                "until": crate::records_cli::timestamp(r.expire_time),
                            })
                        })
                        .collect();
                    let line = json!({
                        "staff_id": s.staff_id,
                        "email": s.email,
                        "name": s.display_name,
                        "roles": roles,
                        "created": crate::records_cli::timestamp(s.create_time),
                        "disabled": crate::records_cli::timestamp(s.disable_time),
                        "sign_in": pb::SignInState::try_from(s.sign_in)
                            .map_or("?", |state| state.as_str_name()),
                    });
                    writeln!(out, "{line}")?;
                }
                if r.next_page_token.is_empty() {
                    return Ok(());
                }
                page_token = r.next_page_token;
            }
        }
        DirectoryCommand::DisableStaff { staff } => {
            c.disable_staff_member(pb::DisableStaffMemberRequest {
                staff_id: staff.clone(),
            })
            .await
            .map_err(fail)?;
            json!({ "disabled": staff })
        }
        DirectoryCommand::UpdateStaff { staff, email, name } => {
            c.update_staff_member(pb::UpdateStaffMemberRequest {
                staff_id: staff.clone(),
                email: email.unwrap_or_default(),
                display_name: name.unwrap_or_default(),
            })
            .await
            .map_err(fail)?;
            json!({ "updated": staff })
        }
        DirectoryCommand::EnableStaff { staff } => {
            c.enable_staff_member(pb::EnableStaffMemberRequest {
                staff_id: staff.clone(),
            })
            .await
            .map_err(fail)?;
            json!({ "enabled": staff })
        }
        DirectoryCommand::SetPassword { staff, temporary } => {
            let password = staff_password()?;
            c.set_password(pb::SetPasswordRequest {
                staff_id: staff.clone(),
                password: password.to_string(),
                temporary,
            })
            .await
            .map_err(fail)?;
            json!({ "password_set": staff, "temporary": temporary })
        }
        DirectoryCommand::ResetTotp { staff } => {
            c.reset_totp(pb::ResetTotpRequest {
                staff_id: staff.clone(),
            })
            .await
            .map_err(fail)?;
            json!({ "totp_reset": staff })
        }
        DirectoryCommand::Sessions { staff } => {
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_staff_sessions(pb::ListStaffSessionsRequest {
                        staff_id: staff.clone(),
                        page_size: 1000,
                        page_token,
                    })
                    .await
                    .map_err(fail)?
                    .into_inner();
                for s in r.sessions {
                    let line = json!({
                        "session_id": s.session_id,
                        "opened": crate::records_cli::timestamp(s.create_time),
                        "opened_through": s.opened_through,
                        "last_refresh": crate::records_cli::timestamp(s.last_refresh_time),
                        "expires": crate::records_cli::timestamp(s.expire_time),
                    });
                    writeln!(out, "{line}")?;
                }
                if r.next_page_token.is_empty() {
                    return Ok(());
                }
                page_token = r.next_page_token;
            }
        }
        DirectoryCommand::SignOut { staff } => {
            let r = c
                .revoke_staff_sessions(pb::RevokeStaffSessionsRequest {
                    staff_id: staff.clone(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            json!({ "staff_id": staff, "sessions_ended": r.sessions_ended })
        }
        DirectoryCommand::GrantRole { staff, role, until } => {
            let expire_time = until.as_deref().map(time).transpose()?;
            c.grant_role(pb::GrantRoleRequest {
                staff_id: staff.clone(),
                role: role.clone(),
                expire_time,
            })
            .await
            .map_err(fail)?;
            json!({ "granted": role, "staff_id": staff })
        }
        DirectoryCommand::RevokeRole { staff, role } => {
            c.revoke_role(pb::RevokeRoleRequest {
                staff_id: staff.clone(),
                role: role.clone(),
            })
            .await
            .map_err(fail)?;
            json!({ "revoked": role, "staff_id": staff })
        }
        DirectoryCommand::AddClient => {
            let r = c
                .create_client(pb::CreateClientRequest::default())
                .await
                .map_err(fail)?
                .into_inner();
            json!({ "client_id": r.client_id })
        }
        DirectoryCommand::AddMatter {
            client,
            area,
            attorney,
            jurisdiction,
        } => {
            let r = c
                .create_matter(pb::CreateMatterRequest {
                    request_id: String::new(),
                    client_id: client,
                    responsible_attorney_id: attorney,
                    practice_area: area,
                    jurisdiction,
                })
                .await
                .map_err(fail)?
                .into_inner();
            json!({ "matter_id": r.matter_id })
        }
        DirectoryCommand::CloseMatter { matter } => {
            c.close_matter(pb::CloseMatterRequest {
                matter_id: matter.clone(),
            })
            .await
            .map_err(fail)?;
            json!({ "closed": matter })
        }
        DirectoryCommand::Assign { matter, staff } => {
            let r = c
                .assign_staff(pb::AssignStaffRequest {
                    matter_id: matter,
                    staff_id: staff,
                    expire_time: None,
                })
                .await
                .map_err(fail)?
                .into_inner();
            json!({ "assignment_id": r.assignment_id })
        }
        DirectoryCommand::AddWall {
            staff,
            clients,
            matters,
        } => {
            let r = c
                .create_wall(pb::CreateWallRequest {
                    screened_staff_ids: staff,
                    client_ids: clients,
                    matter_ids: matters,
                })
                .await
                .map_err(fail)?
                .into_inner();
            json!({ "wall_id": r.wall_id })
        }
        DirectoryCommand::WallException {
            wall,
            staff,
            matter,
            reason,
            until,
        } => {
            let r = c
                .grant_wall_exception(pb::GrantWallExceptionRequest {
                    wall_id: wall,
                    staff_id: staff,
                    matter_id: matter,
                    reason,
                    expire_time: Some(time(&until)?),
                })
                .await
                .map_err(fail)?
                .into_inner();
            json!({ "exception_id": r.exception_id })
        }
        DirectoryCommand::Attest {
            staff,
            kind,
            version,
            completed,
            expires,
            score,
            pass_mark,
        } => {
            let kind = if kind == "nda" {
                pb::AttestationKind::Nda
            } else {
                pb::AttestationKind::Training
            };
            let r = c
                .record_attestation(pb::RecordAttestationRequest {
                    staff_id: staff,
                    kind: kind as i32,
                    version,
                    complete_time: Some(time(&completed)?),
                    expire_time: Some(time(&expires)?),
                    score,
                    pass_mark,
                })
                .await
                .map_err(fail)?
                .into_inner();
            json!({ "attestation_id": r.attestation_id })
        }
        DirectoryCommand::BreakGlass {
            staff,
            matter,
            justification,
            minutes,
        } => {
            let r = c
                .open_break_glass(pb::OpenBreakGlassRequest {
                    staff_id: staff,
                    matter_id: matter,
                    justification,
                    duration_minutes: minutes,
                })
                .await
                .map_err(fail)?
                .into_inner();
            json!({ "break_glass_id": r.break_glass_id, "expires": r.expire_time.map(|t| t.seconds) })
        }
        DirectoryCommand::Unassign { assignment } => {
            c.revoke_assignment(pb::RevokeAssignmentRequest {
                assignment_id: assignment.clone(),
            })
            .await
            .map_err(fail)?;
            json!({ "revoked_assignment": assignment })
        }
        DirectoryCommand::RevokeWallException { exception } => {
            c.revoke_wall_exception(pb::RevokeWallExceptionRequest {
                exception_id: exception.clone(),
            })
            .await
            .map_err(fail)?;
            json!({ "revoked_exception": exception })
        }
        DirectoryCommand::Explain {
            matter,
            at,
            permission,
        } => {
            let r = c
                .explain_matter_access(pb::ExplainMatterAccessRequest {
                    matter_id: matter,
                    time: at.as_deref().map(time).transpose()?,
                    permission,
                })
                .await
                .map_err(fail)?
                .into_inner();
            let entries: Vec<_> = r
                .entries
                .iter()
                .map(|e| {
                    json!({
                        "staff_id": e.staff_id,
                        "allowed": e.allowed,
                        "reason": pb::DenialReason::try_from(e.reason).map_or("?", |d| d.as_str_name()),
                        "granted_by_role": e.granted_by_role,
                        "access_path": pb::AccessPath::try_from(e.access_path).map_or("?", |p| p.as_str_name()),
                        "wall_exception_ids": e.wall_exception_ids,
                    })
                })
                .collect();
            json!({ "entries": entries })
        }
        DirectoryCommand::ReviewStart { name, deadline } => {
            let r = c
                .start_access_review(pb::StartAccessReviewRequest {
                    name,
                    deadline: Some(time(&deadline)?),
                })
                .await
                .map_err(fail)?
                .into_inner();
            json!({ "campaign_id": r.campaign_id, "items": r.item_count })
        }
        DirectoryCommand::ReviewItems { campaign, pending } => {
            // Every page of the campaign's items.
            let mut all = Vec::new();
            let mut page_token = String::new();
            let r = loop {
                let r = c
                    .list_access_review_items(pb::ListAccessReviewItemsRequest {
                        campaign_id: campaign.clone(),
                        pending_only: pending,
                        page_size: 1000,
                        page_token,
                    })
                    .await
                    .map_err(fail)?
                    .into_inner();
                all.extend(r.items.iter().cloned());
                if r.next_page_token.is_empty() {
                    break r;
                }
                page_token = r.next_page_token;
            };
            let items: Vec<_> = all
                .iter()
                .map(|i| {
                    json!({
                        "item_id": i.item_id,
                        "kind": i.kind,
                        "staff_id": i.staff_id,
                        "subject": i.subject,
                        "decision": match pb::ReviewDecision::try_from(i.decision) {
                            Ok(pb::ReviewDecision::Certify) => "certify",
                            Ok(pb::ReviewDecision::Revoke) => "revoke",
                            _ => "pending",
                        },
                        "overdue": i.overdue,
                        "decided_by": i.decided_by,
                    })
                })
                .collect();
            json!({
                "items": items,
                "pending": r.pending_count,
                "overdue": r.overdue_count,
                "deadline": r.deadline.map(|t| t.seconds),
            })
        }
        DirectoryCommand::ReviewDecide { item, decision } => {
            let verdict = match decision.as_str() {
                "certify" => pb::ReviewDecision::Certify,
                "revoke" => pb::ReviewDecision::Revoke,
                other => anyhow::bail!("--decision {other}: expected certify or revoke"),
            };
            c.decide_access_review_item(pb::DecideAccessReviewItemRequest {
                item_id: item.clone(),
                decision: verdict as i32,
            })
            .await
            .map_err(fail)?;
            json!({ "item_id": item, "decision": decision })
        }
        DirectoryCommand::CertifyWall { wall, from, to } => {
            let r = c
                .certify_wall(pb::CertifyWallRequest {
                    wall_id: wall,
                    start_time: Some(time(&from)?),
                    end_time: Some(time(&to)?),
                })
                .await
                .map_err(fail)?
                .into_inner();
            json!({
                "certification_jws": r.certification_jws,
                "audit_tree_size": r.audit_tree_size,
            })
        }
        DirectoryCommand::CertificateKeys => {
            let jwks = certificate_keys(&mut c).await.map_err(fail)?;
            serde_json::from_str(&jwks)?
        }
        DirectoryCommand::VerifyCertification { file, keys } => {
            let jwks = match keys {
                Some(path) => read_keys(&path)?,
                None => certificate_keys(&mut c).await.map_err(fail)?,
            };
            verify_certification(&file, &jwks)?
        }
        DirectoryCommand::Decide {
            staff,
            permission,
            matter,
            client,
        } => {
            let r = c
                .authorize(pb::AuthorizeRequest {
                    staff_id: staff,
                    permission,
                    client_id: client,
                    matter_id: matter,
                })
                .await
                .map_err(fail)?
                .into_inner();
            json!({
                "allowed": r.allowed,
                "reason": pb::DenialReason::try_from(r.reason).map_or("?", |d| d.as_str_name()),
                "access_path": pb::AccessPath::try_from(r.access_path).map_or("?", |p| p.as_str_name()),
            })
        }
    };
    writeln!(out, "{line}")?;
    Ok(())
}
