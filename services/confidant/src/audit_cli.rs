//! `confidant audit`: export the log, verify it offline, and produce or check
//! evidence bundles for single events.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use confidant_audit::checkpoint::{Checkpoint, Verifier};
use confidant_audit::rotation::{self, Replaced};
use confidant_audit::verify::{Entry, Report, verify, verify_evidence};
use confidant_proto::audit::v1::audit_service_client::AuditServiceClient;
use confidant_proto::audit::v1::export_log_response::Item;
use confidant_proto::audit::v1::{
    ActorKind, AuditEvent, ExportLogRequest, GetEvidenceBundleRequest, GetLogInfoRequest, Outcome,
};
use confidant_runtime::client::PeerChannel;
use confidant_runtime::tls::TlsFiles;
use prost::Message;
use serde_json::{Value, json};

/// How to reach the audit service.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The audit service URL.
    #[arg(long, default_value = "https://127.0.0.1:7105")]
    pub service: String,
    /// CA bundle.
    #[arg(long, default_value = ".confidant/pki/ca.pem")]
    pub ca: PathBuf,
    /// Client certificate (an identity on the audit readers list).
    #[arg(long, default_value = ".confidant/pki/operator.pem")]
    pub cert: PathBuf,
    /// Client key.
    #[arg(long, default_value = ".confidant/pki/operator-key.pem")]
    pub key: PathBuf,
    /// The name the service's certificate is checked against (default: the URL's host).
    #[arg(long)]
    pub server_name: Option<String>,
}

impl Connection {
    async fn client(&self) -> anyhow::Result<AuditServiceClient<PeerChannel>> {
        let tls = TlsFiles {
            ca_file: self.ca.clone(),
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
        }
        .load()?;
        let host = self
            .server_name
            .clone()
            .unwrap_or_else(|| crate::process::host_of(&self.service));
        let channel = confidant_runtime::client::connect(&self.service, &tls, &host).await?;
        Ok(AuditServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
    }
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

/// A SIEM-friendly view of an event (no sealed text, only whether there is one).
fn event_json(bytes: &[u8]) -> Value {
    let Ok(e) = AuditEvent::decode(bytes) else {
        return Value::Null;
    };
    let time = e
        .time
        .as_ref()
        .and_then(|t| {
            chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        })
        .map(|t| t.to_rfc3339());
    let actor = e.actor.unwrap_or_default();
    let resource = e.resource.unwrap_or_default();
    json!({
        "time": time,
        "source_service": e.source_service,
        "actor": {
            "kind": ActorKind::try_from(actor.kind).map(|k| k.as_str_name()).unwrap_or("UNKNOWN"),
            "id": actor.id,
            "roles": actor.roles,
            "peer_identity": actor.peer_identity,
        },
        "action": e.action,
        "resource": {
            "type": resource.r#type,
            "id": resource.id,
            "client_id": resource.client_id,
            "matter_id": resource.matter_id,
            "data_category": resource.data_category,
        },
        "purpose": e.purpose,
        "outcome": Outcome::try_from(e.outcome).map(|o| o.as_str_name()).unwrap_or("UNKNOWN"),
        "reason": e.reason,
        "trace_id": e.trace_id,
        "sealed_text": !e.sealed_text.is_empty(),
        "disclosed_fields": e.disclosed_fields,
        "changed_fields": e.changed_fields,
        "related": e
            .related
            .iter()
            .map(|r| json!({ "type": r.r#type, "id": r.id }))
            .collect::<Vec<_>>(),
    })
}

/// Streams the log (or a range) from the service as JSON Lines.
pub async fn export(
    conn: &Connection,
    start: i64,
    end: i64,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let mut client = conn.client().await?;
    let info = client
        .get_log_info(GetLogInfoRequest {})
        .await?
        .into_inner();
    writeln!(
        out,
        "{}",
        json!({"type": "log", "origin": info.origin, "verifier_key": info.verifier_key})
    )?;
    let mut stream = client
        .export_log(ExportLogRequest {
            start_index: start,
            end_index: end,
            include_proofs: true,
        })
        .await?
        .into_inner();
    let mut events = 0;
    while let Some(item) = stream.message().await? {
        let line = match item.item {
            Some(Item::Event(e)) => {
                events += 1;
                let proof = e.inclusion_proof.as_ref().map(|p| {
                    json!({
                        "tree_size": p.tree_size,
                        "hashes": p.hashes.iter().map(|h| hex(h)).collect::<Vec<_>>(),
                    })
                });
                json!({
                    "type": "event",
                    "index": e.leaf_index,
                    "event_id": e.event_id,
                    "leaf_hash": hex(&e.leaf_hash),
                    "event_bytes": STANDARD.encode(&e.event_bytes),
                    "event": event_json(&e.event_bytes),
                    "inclusion_proof": proof,
                })
            }
            Some(Item::Checkpoint(c)) => json!({
                "type": "checkpoint",
                "tree_size": c.tree_size,
                "root_hash": hex(&c.root_hash),
                "signed_note": c.signed_note,
            }),
            None => continue,
        };
        writeln!(out, "{line}")?;
    }
    Ok(events)
}

/// A parsed export.
struct Export {
    verifier_key: Option<String>,
    entries: Vec<Entry>,
    notes: Vec<String>,
}

fn parse_export(reader: impl BufRead) -> anyhow::Result<Export> {
    let mut export = Export {
        verifier_key: None,
        entries: Vec::new(),
        notes: Vec::new(),
    };
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("line {}: not JSON", n + 1))?;
        let bad = || anyhow::anyhow!("line {}: malformed {}", n + 1, v["type"]);
        match v["type"].as_str() {
            Some("log") => export.verifier_key = v["verifier_key"].as_str().map(str::to_owned),
            Some("event") => export.entries.push(Entry {
                index: v["index"].as_u64().ok_or_else(bad)?,
                event_id: v["event_id"].as_str().unwrap_or_default().to_owned(),
                event_bytes: STANDARD
                    .decode(v["event_bytes"].as_str().ok_or_else(bad)?)
                    .map_err(|_| bad())?,
                leaf_hash: unhex(v["leaf_hash"].as_str().ok_or_else(bad)?).ok_or_else(bad)?,
                proof: match &v["inclusion_proof"] {
                    Value::Null => None,
                    p => Some((
                        p["tree_size"].as_u64().ok_or_else(bad)?,
                        p["hashes"]
                            .as_array()
                            .ok_or_else(bad)?
                            .iter()
                            .map(|h| h.as_str().and_then(unhex).and_then(|b| b.try_into().ok()))
                            .collect::<Option<Vec<[u8; 32]>>>()
                            .ok_or_else(bad)?,
                    )),
                },
            }),
            Some("checkpoint") => export
                .notes
                .push(v["signed_note"].as_str().ok_or_else(bad)?.to_owned()),
            _ => return Err(bad()),
        }
    }
    Ok(export)
}

/// Parses the verifier keys given with `--public-key`.
fn given_keys(keys: &[String]) -> anyhow::Result<Vec<Verifier>> {
    keys.iter()
        .map(|key| Verifier::parse(key).map_err(|e| anyhow::anyhow!("--public-key {key}: {e}")))
        .collect()
}

/// The keys trusted from the start: those given (trusted), or else those
/// the log names itself, its current one and every one its changes of key
/// name (that proves consistency only; said so in the output).
fn trusted_keys(
    given: &[String],
    named_by_log: Option<String>,
    entries: &[Entry],
    out: &mut dyn Write,
) -> anyhow::Result<Vec<Verifier>> {
    if !given.is_empty() {
        return given_keys(given);
    }
    writeln!(
        out,
        "warning: no --public-key given; using the keys the log itself names, which proves consistency but not authenticity"
    )?;
    let mut keys = vec![
        Verifier::parse(&named_by_log.context("no verifier key: pass --public-key")?)
            .map_err(|e| anyhow::anyhow!("the log's verifier key: {e}"))?,
    ];
    for change in entries
        .iter()
        .filter_map(|e| rotation::read(e.index, &e.event_bytes))
    {
        let replaced = match change.replaced {
            Replaced::Key(key) => Some(key),
            Replaced::Hash(_) => None,
        };
        for key in replaced.into_iter().chain([change.new_key]) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

fn print_report(report: &Report, out: &mut dyn Write) -> anyhow::Result<bool> {
    for change in &report.key_changes {
        writeln!(
            out,
            "the log's signing key changed at position {} to {} ({})",
            change.index,
            change.key.verifier_key(),
            if change.handed_over {
                "handed over by the key it replaced"
            } else {
                "without a handover by the key it replaced"
            }
        )?;
    }
    writeln!(
        out,
        "{} events, {} checkpoints verified, verified tree size {}",
        report.events,
        report.checkpoints.len(),
        report.verified_size
    )?;
    if let Some(key) = &report.signed_by {
        writeln!(
            out,
            "the newest verified checkpoint is signed by {}",
            key.verifier_key()
        )?;
    }
    match &report.finding {
        None if report.events > report.verified_size => {
            // The live log signs its newest events at its next checkpoint:
            // normal, but nothing vouches for them yet, so say so.
            let events = |n: u64| match n {
                1 => "1 event".to_owned(),
                n => format!("{n} events"),
            };
            writeln!(
                out,
                "OK: every checkpoint verifies, and the {} they cover",
                events(report.verified_size)
            )?;
            writeln!(
                out,
                "not yet covered: {} from position {} on; no signed checkpoint vouches for them yet (the log signs one every audit.checkpoint_interval_seconds): verify again, or export again, after it",
                events(report.events - report.verified_size),
                report.verified_size
            )?;
            Ok(true)
        }
        None => {
            writeln!(out, "OK: every event and checkpoint verifies")?;
            Ok(true)
        }
        Some(finding) => {
            writeln!(out, "FAILED: {finding}")?;
            Ok(false)
        }
    }
}

/// Verifies an export file; true when it verifies.
pub fn verify_file(
    path: &Path,
    public_keys: &[String],
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    verify_export(
        &parse_export(std::io::BufReader::new(file))?,
        public_keys,
        out,
    )
}

/// Verifies a parsed export against `public_keys` (or the keys it names)
/// and prints the report; true when it verifies.
fn verify_export(
    export: &Export,
    public_keys: &[String],
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let keys = trusted_keys(
        public_keys,
        export.verifier_key.clone(),
        &export.entries,
        out,
    )?;
    print_report(&verify(&export.entries, &export.notes, &keys), out)
}

/// One event of a verified export.
#[derive(Debug)]
pub struct VerifiedEvent {
    /// Its position in the log.
    pub index: u64,
    /// The bytes the log committed to.
    pub bytes: Vec<u8>,
    /// Their leaf hash, as the export records it and verification
    /// recomputed it.
    pub leaf_hash: Vec<u8>,
    /// The event they encode.
    pub event: AuditEvent,
}

/// What an export file that verifies against `public_keys` vouches for: the
/// events a signed checkpoint covers, in log order, and the checkpoints.
/// Events after the last checkpoint are counted in `uncovered`, not
/// returned: nothing vouches for them yet.
#[derive(Debug)]
pub struct VerifiedEvents {
    /// The covered events, from position 0.
    pub events: Vec<VerifiedEvent>,
    /// Each checkpoint, with its signed note, smallest first.
    pub checkpoints: Vec<(Checkpoint, String)>,
    /// Events after the last signed checkpoint.
    pub uncovered: u64,
}

/// Reads and verifies an export file (a key must be given: the log's own
/// keys prove nothing); refused, naming the finding, unless every event and
/// checkpoint verifies.
pub fn verified_events(path: &Path, public_keys: &[String]) -> anyhow::Result<VerifiedEvents> {
    anyhow::ensure!(
        !public_keys.is_empty(),
        "--public-key: the log's verifier key is required"
    );
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let export = parse_export(std::io::BufReader::new(file))
        .with_context(|| format!("{}", path.display()))?;
    let report = verify(&export.entries, &export.notes, &given_keys(public_keys)?);
    if let Some(finding) = &report.finding {
        anyhow::bail!("{}: the log does not verify: {finding}", path.display());
    }
    let mut events = Vec::new();
    for entry in export.entries {
        if entry.index >= report.verified_size {
            break;
        }
        let event = AuditEvent::decode(entry.event_bytes.as_slice()).with_context(|| {
            format!(
                "{}: the event at position {} is not an audit event",
                path.display(),
                entry.index
            )
        })?;
        events.push(VerifiedEvent {
            index: entry.index,
            bytes: entry.event_bytes,
            leaf_hash: entry.leaf_hash,
            event,
        });
    }
    // Without a finding, every note verified, in the order given.
    let mut checkpoints: Vec<(Checkpoint, String)> =
        report.checkpoints.into_iter().zip(export.notes).collect();
    checkpoints.sort_by_key(|(c, _)| c.size);
    Ok(VerifiedEvents {
        events,
        checkpoints,
        uncovered: report.events - report.verified_size,
    })
}

/// Exports the whole log from the service and verifies it; true when it
/// verifies.
pub async fn verify_service(
    conn: &Connection,
    public_keys: &[String],
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let mut buffer = Vec::new();
    export(conn, 0, 0, &mut buffer).await?;
    verify_export(&parse_export(buffer.as_slice())?, public_keys, out)
}

/// Fetches the evidence bundle of one event as JSON.
pub async fn evidence(
    conn: &Connection,
    event_id: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let bundle = conn
        .client()
        .await?
        .get_evidence_bundle(GetEvidenceBundleRequest {
            event_id: event_id.to_owned(),
        })
        .await?
        .into_inner()
        .bundle
        .context("empty bundle")?;
    let event = bundle.event.context("bundle without event")?;
    let checkpoint = bundle.checkpoint.context("bundle without checkpoint")?;
    let proof = bundle.proof.context("bundle without proof")?;
    let doc = json!({
        "event_id": event.event_id,
        "index": event.leaf_index,
        "event_bytes": STANDARD.encode(&event.event_bytes),
        "event": event_json(&event.event_bytes),
        "tree_size": checkpoint.tree_size,
        "signed_note": checkpoint.signed_note,
        "inclusion_proof": proof.hashes.iter().map(|h| hex(h)).collect::<Vec<_>>(),
        "verifier_key": bundle.verifier_key,
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

/// Checks an evidence bundle offline against any of `public_keys` (or,
/// without them, the key the bundle names); true when it verifies.
pub fn verify_evidence_file(
    path: &Path,
    public_keys: &[String],
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let v: Value = serde_json::from_str(&text).context("not a JSON evidence bundle")?;
    let bytes = STANDARD
        .decode(v["event_bytes"].as_str().context("event_bytes")?)
        .context("event_bytes")?;
    let index = v["index"].as_u64().context("index")?;
    let proof: Vec<[u8; 32]> = v["inclusion_proof"]
        .as_array()
        .context("inclusion_proof")?
        .iter()
        .map(|h| h.as_str().and_then(unhex).and_then(|b| b.try_into().ok()))
        .collect::<Option<_>>()
        .context("inclusion_proof")?;
    let keys = trusted_keys(
        public_keys,
        v["verifier_key"].as_str().map(str::to_owned),
        &[],
        out,
    )?;
    match verify_evidence(
        &bytes,
        index,
        &proof,
        v["signed_note"].as_str().context("signed_note")?,
        &keys,
    ) {
        Ok(()) => {
            writeln!(
                out,
                "OK: event {} is in the signed log at position {index}",
                v["event_id"]
            )?;
            Ok(true)
        }
        Err(e) => {
            writeln!(out, "FAILED: {e}")?;
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(report: &Report) -> (bool, String) {
        let mut out = Vec::new();
        let ok = print_report(report, &mut out).unwrap();
        (ok, String::from_utf8(out).unwrap())
    }

    #[test]
    fn events_no_checkpoint_covers_yet_are_named_not_vouched_for() {
        let (ok, out) = printed(&Report {
            events: 7,
            verified_size: 1,
            ..Report::default()
        });
        assert!(ok, "{out}");
        assert!(
            out.contains("OK: every checkpoint verifies, and the 1 event they cover"),
            "{out}"
        );
        assert!(
            out.contains("not yet covered: 6 events from position 1 on"),
            "{out}"
        );
        assert!(!out.contains("every event and checkpoint"), "{out}");
        let (ok, out) = printed(&Report {
            events: 7,
            verified_size: 7,
            ..Report::default()
        });
        assert!(ok, "{out}");
        assert!(
            out.contains("OK: every event and checkpoint verifies"),
            "{out}"
        );
        assert!(!out.contains("not yet covered"), "{out}");
    }
}
