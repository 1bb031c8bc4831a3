//! `confidant records`: the physical records register from the command line,
//! as a staff member (their access token) through a client certificate.
//! Prints one JSON object per line, for people and for scripts.

use std::io::Write;

use confidant_proto::retention::v1 as pb;
use confidant_proto::retention::v1::physical_records_service_client::PhysicalRecordsServiceClient;
use confidant_runtime::client::PeerChannel;
use serde_json::{Value as Json, json};

/// How to reach the retention service, and as whom.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The service URL.
    #[arg(long, default_value = "https://127.0.0.1:7104")]
    pub service: String,
    #[command(flatten)]
    pub credentials: crate::cli::Credentials,
    /// The staff member's access token (from identity's Login).
    #[arg(long, env = "CONFIDANT_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum RecordsCommand {
    /// List storage locations (overdue code changes first).
    Locations,
    /// Add a storage location.
    AddLocation {
        /// Site.
        #[arg(long)]
        site: String,
        /// Room.
        #[arg(long, default_value = "")]
        room: String,
        /// Cabinet, shelf or bay.
        #[arg(long, default_value = "")]
        container: String,
        /// Entries are controlled (access list, entries logged).
        #[arg(long)]
        controlled: bool,
        /// Access code change interval in days (0: no code).
        #[arg(long, default_value_t = 0)]
        code_change_days: i32,
        /// Off-site storage.
        #[arg(long)]
        off_site: bool,
    },
    /// Record that a location's access code was changed.
    CodeChanged {
        /// The location.
        #[arg(long)]
        location: String,
    },
    /// Register an item.
    Register {
        /// Label or barcode.
        #[arg(long)]
        label: String,
        /// file, box or original-document.
        #[arg(long, value_parser = ["file", "box", "original-document"])]
        kind: String,
        /// The client.
        #[arg(long)]
        client: String,
        /// The matter.
        #[arg(long, default_value = "")]
        matter: String,
        /// Data category, e.g. matter_file.
        #[arg(long, default_value = "matter_file")]
        category: String,
        /// Where it is kept.
        #[arg(long)]
        location: String,
        /// An original belonging to the client.
        #[arg(long)]
        original: bool,
    },
    /// Items of a client or matter, or at a location: where each is, who has it.
    List {
        /// The client.
        #[arg(long, default_value = "")]
        client: String,
        /// The matter.
        #[arg(long, default_value = "")]
        matter: String,
        /// The location.
        #[arg(long, default_value = "")]
        location: String,
    },
    /// Take an item out.
    CheckOut {
        /// The item.
        #[arg(long)]
        item: String,
        /// Hours until it is due back.
        #[arg(long, default_value_t = 24)]
        hours: i64,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Put an item back.
    CheckIn {
        /// The item.
        #[arg(long)]
        item: String,
        /// Where (default: its location).
        #[arg(long, default_value = "")]
        location: String,
    },
    /// Move an item to another location.
    Transfer {
        /// The item.
        #[arg(long)]
        item: String,
        /// Where to.
        #[arg(long)]
        location: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Check-outs past their due time.
    Overdue,
    /// An item's custody log.
    History {
        /// The item.
        #[arg(long)]
        item: String,
    },
    /// What falls due for destruction or return within N days.
    Due {
        /// Days ahead.
        #[arg(long, default_value_t = 0)]
        days: i64,
    },
    /// Confirm the destruction of items; prints the certificate.
    Destroy {
        /// The items (repeat).
        #[arg(long = "item", required = true)]
        items: Vec<String>,
        /// The shredding vendor's reference.
        #[arg(long)]
        vendor_reference: String,
        /// The day, YYYY-MM-DD.
        #[arg(long)]
        destroyed_on: String,
        /// The witness (staff id).
        #[arg(long)]
        witness: String,
    },
    /// Record that an original went back to its client.
    Returned {
        /// The item.
        #[arg(long)]
        item: String,
        /// How it went back.
        #[arg(long)]
        reference: String,
    },
    /// A certificate of physical disposal (body and signature).
    Certificate {
        /// The certificate id.
        #[arg(long)]
        id: String,
    },
}

/// A protobuf time as RFC 3339, or null.
pub(crate) fn timestamp(t: Option<prost_types::Timestamp>) -> Json {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map_or(Json::Null, |t| Json::String(t.to_rfc3339()))
}

fn item_json(i: &pb::Item) -> Json {
    json!({
        "id": i.id,
        "label": i.label,
        "kind": pb::ItemKind::try_from(i.kind).map_or("?", |k| k.as_str_name()),
        "client_id": i.client_id,
        "matter_id": i.matter_id,
        "original": i.original,
        "location_id": i.location_id,
        "state": pb::ItemState::try_from(i.state).map_or("?", |s| s.as_str_name()),
        "holder_staff_id": i.holder_staff_id,
        "due_back": timestamp(i.due_back_time),
        "overdue": i.overdue,
    })
}

fn location_json(l: &pb::Location) -> Json {
    json!({
        "id": l.id,
        "site": l.site,
        "room": l.room,
        "container": l.container,
        "controlled": l.controlled,
        "off_site": l.off_site,
        "code_change_due": timestamp(l.code_change_due_time),
        "code_change_overdue": l.code_change_overdue,
        "staff_with_access": l.staff_with_access,
    })
}

fn certificate_json(c: &pb::SignedCertificate) -> Json {
    json!({
        "certificate_id": c.certificate_id,
        "body": c.body,
        "signature": c.signature,
        "key_id": c.key_id,
        "public_key": c.public_key,
    })
}

/// A status as one line: the code, the message and the fields that broke a
/// rule.
pub fn describe(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let mut line = format!("{:?}: {}", status.code(), status.message());
    if let Some(bad) = status.get_error_details().bad_request() {
        for v in &bad.field_violations {
            line.push_str(&format!("; {}: {}", v.field, v.description));
        }
    }
    line
}

impl Connection {
    async fn client(&self) -> anyhow::Result<PhysicalRecordsServiceClient<PeerChannel>> {
        Ok(PhysicalRecordsServiceClient::new(
            self.credentials.channel(&self.service).await?,
        ))
    }

    fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        crate::cli::with_token(&self.token, message)
    }
}

fn category(name: &str) -> anyhow::Result<i32> {
    confidant_vault::domain::Category::parse(name)
        .map(|c| c.to_proto() as i32)
        .ok_or_else(|| anyhow::anyhow!("unknown category {name}"))
}

fn in_hours(hours: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: (chrono::Utc::now() + chrono::Duration::hours(hours)).timestamp(),
        nanos: 0,
    })
}

/// Runs one command, writing its JSON lines to `out`. A refused call is an
/// error naming the code, the message and the fields.
pub async fn run(
    conn: &Connection,
    command: RecordsCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut c = conn.client().await?;
    let fail = |s: tonic::Status| anyhow::anyhow!(describe(&s));
    let mut lines: Vec<Json> = Vec::new();
    match command {
        RecordsCommand::Locations => {
            let r = c
                .list_locations(conn.request(pb::ListLocationsRequest {})?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().locations.iter().map(location_json));
        }
        RecordsCommand::AddLocation {
            site,
            room,
            container,
            controlled,
            code_change_days,
            off_site,
        } => {
            let r = c
                .create_location(conn.request(pb::CreateLocationRequest {
                    site,
                    room,
                    container,
                    controlled,
                    code_change_days,
                    off_site,
                })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().location.as_ref().map(location_json));
        }
        RecordsCommand::CodeChanged { location } => {
            let r = c
                .record_code_change(conn.request(pb::RecordCodeChangeRequest {
                    location_id: location,
                })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().location.as_ref().map(location_json));
        }
        RecordsCommand::Register {
            label,
            kind,
            client,
            matter,
            category: cat,
            location,
            original,
        } => {
            let kind = match kind.as_str() {
                "box" => pb::ItemKind::Box,
                "original-document" => pb::ItemKind::OriginalDocument,
                _ => pb::ItemKind::File,
            };
            let r = c
                .register_item(conn.request(pb::RegisterItemRequest {
                    label,
                    kind: kind as i32,
                    client_id: client,
                    matter_id: matter,
                    category: category(&cat)?,
                    original,
                    location_id: location,
                    box_id: String::new(),
                })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().item.as_ref().map(item_json));
        }
        RecordsCommand::List {
            client,
            matter,
            location,
        } => {
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_items(conn.request(pb::ListItemsRequest {
                        client_id: client.clone(),
                        matter_id: matter.clone(),
                        location_id: location.clone(),
                        page_size: 1000,
                        page_token,
                    })?)
                    .await
                    .map_err(fail)?
                    .into_inner();
                lines.extend(r.items.iter().map(item_json));
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
        }
        RecordsCommand::CheckOut {
            item,
            hours,
            reason,
        } => {
            let r = c
                .check_out_item(conn.request(pb::CheckOutItemRequest {
                    item_id: item,
                    due_back_time: in_hours(hours),
                    reason,
                })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().item.as_ref().map(item_json));
        }
        RecordsCommand::CheckIn { item, location } => {
            let r = c
                .check_in_item(conn.request(pb::CheckInItemRequest {
                    item_id: item,
                    location_id: location,
                })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().item.as_ref().map(item_json));
        }
        RecordsCommand::Transfer {
            item,
            location,
            reason,
        } => {
            let r = c
                .transfer_item(conn.request(pb::TransferItemRequest {
                    item_id: item,
                    location_id: location,
                    reason,
                })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().item.as_ref().map(item_json));
        }
        RecordsCommand::Overdue => {
            let r = c
                .list_overdue_checkouts(conn.request(pb::ListOverdueCheckoutsRequest {})?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().items.iter().map(item_json));
        }
        RecordsCommand::History { item } => {
            let r = c
                .get_item_history(conn.request(pb::GetItemHistoryRequest { item_id: item })?)
                .await
                .map_err(fail)?
                .into_inner();
            lines.extend(r.entries.iter().map(|e| {
                json!({
                    "action": pb::CustodyAction::try_from(e.action).map_or("?", |a| a.as_str_name()),
                    "time": timestamp(e.time),
                    "staff_id": e.staff_id,
                    "location_id": e.location_id,
                    "reason": e.reason,
                })
            }));
        }
        RecordsCommand::Due { days } => {
            let r = c
                .get_disposal_lists(conn.request(pb::GetDisposalListsRequest {
                    before_time: in_hours(days * 24),
                })?)
                .await
                .map_err(fail)?
                .into_inner();
            for (list, due) in [
                ("destroy", &r.destroy),
                ("return_to_client", &r.return_to_client),
            ] {
                for d in due {
                    let mut line = d.item.as_ref().map(item_json).unwrap_or(Json::Null);
                    line["list"] = json!(list);
                    line["due"] = timestamp(d.due_time);
                    lines.push(line);
                }
            }
            lines.push(json!({ "held": r.held }));
        }
        RecordsCommand::Destroy {
            items,
            vendor_reference,
            destroyed_on,
            witness,
        } => {
            let r = c
                .confirm_destruction(conn.request(pb::ConfirmDestructionRequest {
                    item_ids: items,
                    vendor_reference,
                    destroyed_on,
                    witness_staff_id: witness,
                })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().certificate.as_ref().map(certificate_json));
        }
        RecordsCommand::Returned { item, reference } => {
            let r = c
                .record_item_returned(conn.request(pb::RecordItemReturnedRequest {
                    item_id: item,
                    reference,
                })?)
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().item.as_ref().map(item_json));
        }
        RecordsCommand::Certificate { id } => {
            let r = c
                .get_destruction_certificate(
                    conn.request(pb::GetDestructionCertificateRequest { certificate_id: id })?,
                )
                .await
                .map_err(fail)?;
            lines.extend(r.into_inner().certificate.as_ref().map(certificate_json));
        }
    }
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
