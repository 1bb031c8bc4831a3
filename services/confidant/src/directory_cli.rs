//! `confidant directory`: the identity directory from the command line, with
//! an administrator's certificate (an identity on `identity.admins`): staff,
//! roles, clients, matters, assignments, walls and their exceptions,
//! attestations, and the authorization decision. One JSON object per line.

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
    /// Disable a staff member (sessions end, decisions deny).
    DisableStaff {
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

impl Connection {
    async fn client(&self) -> anyhow::Result<IdentityServiceClient<PeerChannel>> {
        Ok(IdentityServiceClient::new(
            self.credentials.channel(&self.service).await?,
        ))
    }
}

/// Runs one command, writing its JSON line to `out`.
pub async fn run(
    conn: &Connection,
    command: DirectoryCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut c = conn.client().await?;
    let fail = |s: tonic::Status| anyhow::anyhow!(crate::records_cli::describe(&s));
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
        DirectoryCommand::DisableStaff { staff } => {
            c.disable_staff_member(pb::DisableStaffMemberRequest {
                staff_id: staff.clone(),
            })
            .await
            .map_err(fail)?;
            json!({ "disabled": staff })
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
