//! `confidant`: one binary for the five services and the operator tools.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use confidant::process::{self, MigrationPolicy};
use confidant::{certs, signals};
use confidant_runtime::ServiceName;
use confidant_runtime::config::{self, Config};
use confidant_runtime::pki::PkiDir;

// Under load the services allocate and free many small buffers per request
// (frames, headers, rows, messages); glibc malloc spent a sixth of the
// vault's CPU on it. mimalloc's thread-local free lists cost far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration the process refuses (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code after a second signal cut the drain short.
const EXIT_INTERRUPTED: u8 = 130;

/// Confidant: client data held the way a law firm's policy promises.
#[derive(Debug, Parser)]
#[command(name = "confidant", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run all five services in one process on embedded defaults: SQLite per
    /// service, in-process cache, local KMS and a dev CA in the data
    /// directory; listening on 127.0.0.1:7101-7105, the intake web page on
    /// https://127.0.0.1:7180.
    Dev {
        /// Where databases, certificates and keys live; reused on the next start.
        #[arg(long, default_value = ".confidant")]
        data_dir: PathBuf,
    },
    /// Run services in production mode, configured by a file and/or
    /// CONFIDANT_* environment variables (`__` separates levels, e.g.
    /// CONFIDANT_SERVICES__VAULT__DATABASE_URL).
    Serve {
        /// Comma-separated services to run, e.g. `vault,audit`.
        #[arg(long, value_parser = parse_services)]
        services: ServiceList,
        /// TOML configuration file.
        #[arg(long, env = "CONFIDANT_CONFIG")]
        config: Option<PathBuf>,
        /// Apply pending database migrations before serving (otherwise a
        /// schema that is behind is refused; see `confidant migrate`).
        #[arg(long)]
        migrate: bool,
        /// Check the configuration (every setting and named file) and exit:
        /// 0 when it would start, 64 with one line per problem.
        #[arg(long)]
        check_config: bool,
    },
    /// Apply database migrations of the given services (default: every
    /// service with a database_url) and exit.
    Migrate {
        /// Comma-separated services; default all configured.
        #[arg(long, value_parser = parse_services)]
        services: Option<ServiceList>,
        /// TOML configuration file.
        #[arg(long, env = "CONFIDANT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Create a CA and issue service and client certificates for mutual TLS.
    Certs {
        #[command(subcommand)]
        action: CertsCommand,
    },
    /// The audit log: signing key, export, offline verification, evidence.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Create the key files a production deployment mounts (never
    /// overwrites an existing file); rotate and retire the local KMS's
    /// master keys (development).
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Administration that needs no account.
    Admin {
        #[command(subcommand)]
        action: AdminCommand,
    },
    /// The identity directory: staff, roles, clients, matters, assignments,
    /// walls and exceptions, and the decision, with an administrator's
    /// certificate.
    Directory {
        #[command(flatten)]
        conn: confidant::directory_cli::Connection,
        #[command(subcommand)]
        action: confidant::directory_cli::DirectoryCommand,
    },
    /// Incident response: incidents, obligations, affected clients, alerts,
    /// as the security officer (--token or CONFIDANT_TOKEN).
    Incidents {
        #[command(flatten)]
        conn: confidant::incidents_cli::Connection,
        #[command(subcommand)]
        action: confidant::incidents_cli::IncidentsCommand,
    },
    /// Physical records: locations, the register, custody, disposal lists
    /// and certificates, as a staff member (--token or CONFIDANT_TOKEN).
    Records {
        #[command(flatten)]
        conn: confidant::records_cli::Connection,
        #[command(subcommand)]
        action: confidant::records_cli::RecordsCommand,
    },
    /// The vault's key and masking administration, with an administrator's
    /// certificate (vault.admins): KMS key usage, the rewrap after a KMS key
    /// rotation, masking rules.
    Vault {
        #[command(flatten)]
        conn: confidant::vault_cli::Connection,
        #[command(subcommand)]
        action: confidant::vault_cli::VaultCommand,
    },
    /// Retention: offline verification of certificates of disposal.
    Retention {
        #[command(subcommand)]
        action: RetentionCommand,
    },
    /// After a database restore: make again what the audit log says
    /// happened since the backup.
    Restore {
        #[command(subcommand)]
        action: RestoreCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RestoreCommand {
    /// Put back the events and checkpoints a restored audit log lost.
    ///
    /// After the audit service's database is restored from a backup, and
    /// before the service starts on it: put back the events and signed
    /// checkpoints it lost, from a verified export of the log (`confidant
    /// audit export`, the copy kept off site), at the positions they had,
    /// so that every checkpoint the log handed out still verifies. Uses
    /// only the events the export's signed checkpoints cover; refused,
    /// with nothing written, when the export does not verify or the
    /// restored log is not its beginning. Safe to run again.
    AuditLog(RestoreArgs),
    /// Make again the destructions, stagings, cancellations and returns
    /// of originals a restored vault lacks.
    ///
    /// After the vault's database is restored from a backup, and before
    /// the vault starts on it: make again what the audit log records since
    /// the backup. Every scope key and record key the log shows destroyed
    /// is destroyed again (the backup still holds it, and the KMS would
    /// still unwrap it); a scope whose destruction the log shows pending at
    /// its end is staged again with its due time; a pending destruction the
    /// log shows cancelled, or suspended by a legal hold, is cancelled
    /// again (else it would be carried out when the vault starts);
    /// originals the log shows returned to the client are released again. Reads a verified export of the log (`confidant audit export`,
    /// from the live audit service or the copy kept off site) and uses only
    /// the events its signed checkpoints cover; a log that does not verify
    /// changes nothing. One JSON line per logged change (`reapplied`,
    /// `already_applied`, `not_in_database`), then a summary; each
    /// reapplied one is an audit event naming the logged one. Safe to run
    /// again.
    #[command(alias = "reapply-shreds")]
    Vault(RestoreArgs),
    /// Take away again the access a restored identity database gives back.
    ///
    /// After identity's database is restored from a backup, and before
    /// identity starts on it: take away again every access the audit log
    /// shows taken away since the backup (staff disabled; assignments,
    /// roles and wall exceptions revoked, by hand or by an access review;
    /// matters closed), and enable again staff enabled after their last
    /// disabling; register and open again the clients and matters, put up
    /// the walls and grant the assignments, roles, wall exceptions and
    /// attestations the log names since; lock the sign-in of staff whose
    /// password or TOTP changed since (the backup holds the old ones: an
    /// administrator sets a new password, then they enrol TOTP again), and
    /// end every session (their refresh tokens may have turned since).
    /// What the log names too little of to make again (events logged by
    /// older versions) is listed as `lost`. Same export, output and
    /// guarantees as `vault`; each change is an audit event. Safe to run
    /// again.
    Identity(RestoreArgs),
    /// Place again the legal holds a restored retention database lost, and
    /// pause disposals.
    ///
    /// After retention's database is restored from a backup: place again
    /// every legal hold the audit log shows placed, and not released,
    /// since the backup (the vault gets it at retention's next sync; a hold
    /// over named scopes comes back over all its client's scopes), and
    /// list what the log cannot rebuild (`lost`): policies created or
    /// changed, trigger events recorded and certificates issued since,
    /// and holds released since (they stay in force until released
    /// again). When anything is, disposals pause until a records manager
    /// has re-entered the schedule and resumes them (ResumeDisposals).
    /// Same export, output and guarantees as `vault`. Safe to run again.
    Retention(RestoreArgs),
    /// Withdraw again the invitations a restored intake database holds
    /// open, and list what it lost.
    ///
    /// After intake's database is restored from a backup, and before intake
    /// starts on it: every invitation the audit log shows withdrawn since
    /// the backup (RevokeInvitation) is withdrawn again, so that its link
    /// and its client's tokens stay refused. Invitations created and forms
    /// submitted since are listed as `lost`: the links no longer work, and
    /// the answers stay in the vault without intake's submission. Same
    /// export, output and guarantees as `vault`. Safe to run again.
    Intake(RestoreArgs),
}

/// What both restore commands read.
#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The export of the audit log (JSON Lines, with its checkpoints).
    #[arg(long)]
    log: PathBuf,
    /// The log's verifier key, as `GetLogInfo` gave it when the log was set
    /// up (never the one the export names); repeat it to trust several (a
    /// key the log changed to without a handover).
    #[arg(long, required = true)]
    public_key: Vec<String>,
    /// Only say what would change, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// TOML configuration file (or --data-dir).
    #[arg(long, env = "CONFIDANT_CONFIG")]
    config: Option<PathBuf>,
    /// Use the `confidant dev` data directory instead of a config file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// Verify a certificate of disposal offline: a JSON file with `body`
    /// and `signature` (as GetCertificate returns them) against the
    /// retention service's public key. Exit code 65 if it does not verify.
    VerifyCertificate {
        /// The certificate file.
        #[arg(long)]
        file: PathBuf,
        /// A public key retention signed with (raw Ed25519, base64, as
        /// `confidant keys public` prints it). Repeat it with every key you
        /// published over the years: the certificate verifies if one of
        /// them signed it, and the output names which.
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// A new Ed25519 signing key (PKCS#8 DER, mode 0600): identity's token
    /// keys, retention's certificate key, audit's checkpoint key.
    Signing {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
    },
    /// What to publish of a signing key (one JSON object per key, one per
    /// line; nothing secret):
    /// `public_key` and `certificate_key_id` (retention's certificates:
    /// `retention verify-certificate --public-key`), `audit_verifier_key`
    /// (the audit log's checkpoints: `audit verify --public-key`; named
    /// after the configuration's log origin) and `jwk` (identity's tokens
    /// and certifications). Publish it where those who check can read it
    /// and the key's holders cannot edit it.
    Public {
        /// A signing key file (PKCS#8, as `keys signing` wrote it); repeat
        /// it for several keys (e.g. every certificate key still listed).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// TOML configuration file, for the log origin and trust domain
        /// (default: the built-in ones and CONFIDANT_* variables).
        #[arg(long, env = "CONFIDANT_CONFIG")]
        config: Option<PathBuf>,
        /// Use the `confidant dev` data directory's configuration instead.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// 32 random bytes (mode 0600): identity's pepper for keyed hashes.
    Secret {
        /// Where to write the secret.
        #[arg(long)]
        out: PathBuf,
    },
    /// Rotate the local KMS (development): a new master key at the end of
    /// its keyring becomes the active one for services started afterwards;
    /// older keys stay to unwrap what they wrapped. Then restart the
    /// services and run `confidant vault rewrap`.
    /// The keyring is the configuration's; the rotation is recorded in the
    /// audit log (`vault.kms_key.rotated`) before the keyring changes.
    RotateLocalKms {
        /// TOML configuration file (or --data-dir).
        #[arg(long, env = "CONFIDANT_CONFIG")]
        config: Option<PathBuf>,
        /// Use the `confidant dev` data directory instead of a config file.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Retire an old master key of the local KMS (development), after the
    /// rotation: once every service has restarted and `confidant vault
    /// rewrap` has moved every scope key. Refused, naming what and where,
    /// while any service's database still holds a key wrapped under it; the
    /// active key is refused too. The keyring is the configuration's.
    RetireLocalKms {
        /// The master key to remove (`local-…`, as the rotation named it).
        #[arg(long)]
        key_id: String,
        /// TOML configuration file (or --data-dir).
        #[arg(long, env = "CONFIDANT_CONFIG")]
        config: Option<PathBuf>,
        /// Use the `confidant dev` data directory instead of a config file.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create the first firm administrator in the identity database. The
    /// password is read from CONFIDANT_BOOTSTRAP_PASSWORD or standard input,
    /// never from the command line. Refused once an administrator exists.
    Bootstrap {
        /// The administrator's work e-mail.
        #[arg(long)]
        email: String,
        /// The name shown to colleagues.
        #[arg(long)]
        display_name: String,
        /// TOML configuration file (or --data-dir).
        #[arg(long, env = "CONFIDANT_CONFIG")]
        config: Option<PathBuf>,
        /// Use the `confidant dev` data directory instead of a config file.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Create the Ed25519 key that signs checkpoints (never overwrites).
    Keygen {
        /// Where to write the key (PKCS#8 DER, mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Export events and checkpoints as JSON Lines (for SIEMs and auditors).
    Export {
        #[command(flatten)]
        conn: confidant::audit_cli::Connection,
        /// First position, inclusive.
        #[arg(long, default_value_t = 0)]
        start: i64,
        /// Last position, exclusive (0: the end of the log).
        #[arg(long, default_value_t = 0)]
        end: i64,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify the whole log: recompute the tree, check every checkpoint's
    /// signature and root, and name the first event that does not match.
    /// Reads an export file, or the live service.
    Verify {
        #[command(flatten)]
        conn: confidant::audit_cli::Connection,
        /// An export file; when absent, the service is asked.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The log's verifier key (from `GetLogInfo` when the log was set
        /// up); the keys the log hands over to are followed. Repeat it to
        /// trust several (a key the log changed to without a handover).
        #[arg(long)]
        public_key: Vec<String>,
    },
    /// Fetch the evidence bundle of one event (JSON).
    Evidence {
        #[command(flatten)]
        conn: confidant::audit_cli::Connection,
        /// The event id.
        #[arg(long)]
        event_id: String,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an evidence bundle offline.
    VerifyEvidence {
        /// The bundle file.
        #[arg(long)]
        file: PathBuf,
        /// The log's verifier key; repeat it to accept any of several (the
        /// keys before and after a change of key).
        #[arg(long)]
        public_key: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a CA (ca.pem, ca-key.pem) in the directory unless one exists.
    Init {
        /// Certificate directory.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
    /// Issue <name>.pem and <name>-key.pem. A service name (identity, intake,
    /// vault, retention, audit) gets a service certificate for the given
    /// hosts; any other name a client certificate. Both carry the identity
    /// spiffe://<trust-domain>/<name>.
    Issue {
        /// Certificate directory holding the CA.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Service or client name.
        #[arg(long)]
        name: String,
        /// DNS name or IP address the service is reached at (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// SPIFFE trust domain.
        #[arg(long, default_value = "confidant.local")]
        trust_domain: String,
        /// Validity in days.
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
}

/// A comma-separated list of services.
#[derive(Debug, Clone)]
struct ServiceList(Vec<ServiceName>);

fn parse_services(s: &str) -> Result<ServiceList, String> {
    ServiceName::parse_list(s)
        .map(ServiceList)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    // One crypto provider for every TLS stack in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Certs { action } => {
            let result = match action {
                CertsCommand::Init { dir } => certs::init(&dir),
                CertsCommand::Issue {
                    dir,
                    name,
                    hosts,
                    trust_domain,
                    days,
                } => certs::issue_cert(&dir, &name, &trust_domain, &hosts, days),
            };
            report(result)
        }
        Command::Audit { action } => audit(action),
        Command::Keys { action } => report(keys(action, &env)),
        Command::Directory { conn, action } => block_on(async move {
            let mut stdout = std::io::stdout();
            report(confidant::directory_cli::run(&conn, action, &mut stdout).await)
        }),
        Command::Incidents { conn, action } => block_on(async move {
            let mut stdout = std::io::stdout();
            report(confidant::incidents_cli::run(&conn, action, &mut stdout).await)
        }),
        Command::Records { conn, action } => block_on(async move {
            let mut stdout = std::io::stdout();
            report(confidant::records_cli::run(&conn, action, &mut stdout).await)
        }),
        Command::Vault { conn, action } => block_on(async move {
            let mut stdout = std::io::stdout();
            report(confidant::vault_cli::run(&conn, action, &mut stdout).await)
        }),
        Command::Retention {
            action: RetentionCommand::VerifyCertificate { file, public_keys },
        } => verdict(verify_certificate(&file, &public_keys)),
        Command::Restore { action } => restore(action, &env),
        Command::Admin {
            action:
                AdminCommand::Bootstrap {
                    email,
                    display_name,
                    config,
                    data_dir,
                },
        } => {
            let config = match chosen_config(config, data_dir, &env) {
                Ok(c) => c,
                Err(err) => return config_error(&err),
            };
            let password = match env.get("CONFIDANT_BOOTSTRAP_PASSWORD") {
                Some(p) => zeroize::Zeroizing::new(p.clone()),
                None => {
                    let mut line = zeroize::Zeroizing::new(String::new());
                    if std::io::stdin().read_line(&mut line).is_err() {
                        return config_error("could not read the password from standard input");
                    }
                    zeroize::Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned())
                }
            };
            report(runtime().and_then(|rt| {
                rt.block_on(async {
                    let db = process::open_database(&config, ServiceName::Identity, MigrationPolicy::Apply).await?;
                    let id = confidant_identity::bootstrap_admin(
                        &db,
                        &config.trust_domain,
                        &email,
                        &display_name,
                        &password,
                    )
                    .await?;
                    db.close().await;
                    println!("firm administrator {id} created; enroll TOTP next (EnrollTotp, ConfirmTotp)");
                    Ok(())
                })
            }))
        }
        Command::Dev { data_dir } => {
            let data_dir = match std::path::absolute(&data_dir) {
                Ok(dir) => dir,
                Err(err) => return config_error(&format!("--data-dir: {err}")),
            };
            match dev_config(&data_dir, &env) {
                Ok(config) => run(config, ServiceName::ALL.to_vec(), MigrationPolicy::Apply),
                Err(err) => config_error(&err),
            }
        }
        Command::Serve {
            services,
            config,
            migrate,
            check_config,
        } => {
            let services = services.0;
            let config = match load(config.as_deref(), &env).and_then(|c| {
                c.validate(&services).map_err(|e| e.to_string())?;
                Ok(c)
            }) {
                Ok(c) => c,
                Err(err) => return config_error(&err),
            };
            if check_config {
                println!("configuration accepted for {}", services_label(&services));
                return ExitCode::SUCCESS;
            }
            let policy = if migrate {
                MigrationPolicy::Apply
            } else {
                MigrationPolicy::RequireApplied
            };
            run(config, services, policy)
        }
        Command::Migrate { services, config } => {
            let config = match load(config.as_deref(), &env) {
                Ok(c) => c,
                Err(err) => return config_error(&err),
            };
            let services = services.map(|l| l.0).unwrap_or_else(|| {
                ServiceName::ALL
                    .into_iter()
                    .filter(|s| {
                        config
                            .services
                            .get(s)
                            .is_some_and(|c| c.database_url.is_some())
                    })
                    .collect()
            });
            if services.is_empty() {
                return config_error("services: no service has a database_url to migrate");
            }
            report(runtime().and_then(|rt| {
                rt.block_on(async {
                    for service in services {
                        let db = process::open_database(&config, service, MigrationPolicy::Apply)
                            .await?;
                        db.close().await;
                        println!("{service}: migrations applied");
                    }
                    Ok(())
                })
            }))
        }
    }
}

/// Exit code when a verification finds a problem (EX_DATAERR).
const EXIT_VERIFY_FAILED: u8 = 65;

fn output(path: Option<&Path>) -> anyhow::Result<Box<dyn std::io::Write>> {
    Ok(match path {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => Box::new(std::io::stdout()),
    })
}

/// Verifies a certificate file against any of `public_keys`; prints what it
/// certifies and which key signed it.
fn verify_certificate(file: &std::path::Path, public_keys: &[String]) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(file)?;
    let certificate: serde_json::Value = serde_json::from_str(&text)?;
    let (Some(body), Some(signature)) = (
        certificate.get("body").and_then(|b| b.as_str()),
        certificate.get("signature").and_then(|s| s.as_str()),
    ) else {
        anyhow::bail!(
            "{}: expected an object with body and signature",
            file.display()
        );
    };
    let mut refusals = Vec::new();
    for (i, key) in public_keys.iter().enumerate() {
        match confidant_retention::disposal::verify_certificate(body, signature, key) {
            Ok(parsed) => {
                let said = certified(Ok(parsed));
                if let Some(key_id) = confidant_retention::disposal::key_id_of(key) {
                    println!("signed by key {key_id}");
                }
                return said;
            }
            Err(why) if public_keys.len() == 1 => refusals.push(why),
            Err(why) => refusals.push(format!("public key {}: {why}", i + 1)),
        }
    }
    certified(Err(refusals.join("; ")))
}

/// Prints what a verified certificate certifies, or why it failed.
fn certified(verified: Result<serde_json::Value, String>) -> anyhow::Result<bool> {
    match verified {
        Ok(parsed) if parsed["destroyed_items"].is_array() => {
            let items: Vec<String> = parsed["destroyed_items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    format!(
                        "{} ({})",
                        i["label"].as_str().unwrap_or("?"),
                        i["category"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            println!(
                "OK: certificate {} — physical items {} destroyed on {} (vendor reference {}, witness {})",
                parsed["certificate_id"].as_str().unwrap_or("?"),
                items.join(", "),
                parsed["destroyed_on"].as_str().unwrap_or("?"),
                parsed["vendor_reference"].as_str().unwrap_or("?"),
                parsed["witness_staff_id"].as_str().unwrap_or("?"),
            );
            Ok(true)
        }
        Ok(parsed) if parsed["erased"].is_object() => {
            let erased = &parsed["erased"];
            println!(
                "OK: certificate {} — record {} ({}, {} versions) erased at {} ({}, reference {})",
                parsed["certificate_id"].as_str().unwrap_or("?"),
                erased["record_id"].as_str().unwrap_or("?"),
                erased["category"].as_str().unwrap_or("?"),
                erased["version_ids"].as_array().map_or(0, Vec::len),
                parsed["key_destroyed_at"].as_str().unwrap_or("?"),
                parsed["basis"].as_str().unwrap_or("?"),
                parsed["reference"].as_str().unwrap_or("?"),
            );
            Ok(true)
        }
        Ok(parsed) => {
            let destroyed = &parsed["destroyed"];
            println!(
                "OK: certificate {} — scope {} ({}, {} records) destroyed at {}",
                parsed["certificate_id"].as_str().unwrap_or("?"),
                destroyed["scope_id"].as_str().unwrap_or("?"),
                destroyed["category"].as_str().unwrap_or("?"),
                destroyed["record_count"],
                parsed["key_destroyed_at"].as_str().unwrap_or("?"),
            );
            Ok(true)
        }
        Err(why) => {
            println!("FAILED: {why}");
            Ok(false)
        }
    }
}

fn verdict(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_VERIFY_FAILED),
        Err(err) => report(Err(err)),
    }
}

fn block_on<F: std::future::Future<Output = ExitCode>>(future: F) -> ExitCode {
    match runtime() {
        Ok(rt) => rt.block_on(future),
        Err(err) => report(Err(err)),
    }
}

fn audit(action: AuditCommand) -> ExitCode {
    use confidant::audit_cli;
    let mut stdout = std::io::stdout();
    match action {
        AuditCommand::Keygen { out } => {
            report(confidant_audit::write_signing_key(&out).map(|()| {
                println!("audit signing key written: {}", out.display());
            }))
        }
        AuditCommand::VerifyEvidence { file, public_key } => verdict(
            audit_cli::verify_evidence_file(&file, &public_key, &mut stdout),
        ),
        AuditCommand::Verify {
            file: Some(file),
            public_key,
            ..
        } => verdict(audit_cli::verify_file(&file, &public_key, &mut stdout)),
        AuditCommand::Verify {
            conn,
            public_key,
            file: None,
        } => block_on(async move {
            verdict(audit_cli::verify_service(&conn, &public_key, &mut stdout).await)
        }),
        AuditCommand::Export {
            conn,
            start,
            end,
            out,
        } => block_on(async move {
            report(
                async {
                    let mut sink = output(out.as_deref())?;
                    let n = audit_cli::export(&conn, start, end, &mut sink).await?;
                    sink.flush()?;
                    eprintln!("{n} events exported");
                    Ok(())
                }
                .await,
            )
        }),
        AuditCommand::Evidence {
            conn,
            event_id,
            out,
        } => block_on(async move {
            report(
                async {
                    let mut sink = output(out.as_deref())?;
                    audit_cli::evidence(&conn, &event_id, &mut sink).await?;
                    sink.flush()?;
                    Ok(())
                }
                .await,
            )
        }),
    }
}

fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, String> {
    config::load(toml::Table::new(), file, env).map_err(|e| e.to_string())
}

/// The configuration of `--config`, or of the dev data directory of
/// `--data-dir`, for commands that work on a deployment's files.
fn chosen_config(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    env: &HashMap<String, String>,
) -> Result<Config, String> {
    match (config, data_dir) {
        (Some(file), _) => load(Some(&file), env),
        (None, Some(dir)) => std::path::absolute(&dir)
            .map_err(|e| e.to_string())
            .and_then(|d| dev_config(&d, env)),
        (None, None) => Err("pass --config or --data-dir".to_owned()),
    }
}

fn dev_config(data_dir: &Path, env: &HashMap<String, String>) -> Result<Config, String> {
    // Databases, keys and certificates live here: owner only.
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let created = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir);
        created
            .and_then(|()| {
                std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| format!("--data-dir {}: {e}", data_dir.display()))?;
    }
    let config =
        config::load(Config::dev_defaults(data_dir), None, env).map_err(|e| e.to_string())?;
    PkiDir::new(data_dir.join("pki"))
        .ensure_dev(&config.trust_domain)
        .map_err(|e| format!("dev certificates in {}: {e}", data_dir.display()))?;
    if let Some(key) = &config.audit.signing_key_file
        && !key.exists()
    {
        confidant_audit::write_signing_key(key).map_err(|e| format!("audit signing key: {e:#}"))?;
    }
    if let Some(key) = &config.retention.signing_key_file
        && !key.exists()
    {
        confidant_runtime::keys::write_new_ed25519_key(key)
            .map_err(|e| format!("retention certificate key: {e}"))?;
    }
    if let Some(pepper) = &config.identity.pepper_file {
        confidant_runtime::keys::ensure_secret_file(pepper)
            .map_err(|e| format!("identity pepper: {e}"))?;
    }
    for key in config
        .identity
        .token_key_files
        .iter()
        .chain(&config.identity.certificate_key_files)
    {
        if !key.exists() {
            confidant_runtime::keys::write_new_ed25519_key(key)
                .map_err(|e| format!("identity key: {e}"))?;
        }
    }
    config
        .validate(&ServiceName::ALL)
        .map_err(|e| e.to_string())?;
    Ok(config)
}

fn config_error(message: &str) -> ExitCode {
    eprintln!("confidant: {message}");
    ExitCode::from(EXIT_CONFIG)
}

fn services_label(services: &[ServiceName]) -> String {
    services
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn keys(action: KeysCommand, env: &HashMap<String, String>) -> anyhow::Result<()> {
    use confidant_runtime::keys;
    match action {
        KeysCommand::Signing { out } => {
            keys::write_new_ed25519_key(&out)?;
            println!(
                "Ed25519 signing key written: {}\nwhat to publish of it: confidant keys public --key {}",
                out.display(),
                out.display()
            );
        }
        KeysCommand::Public {
            keys,
            config,
            data_dir,
        } => {
            let config = match (config, data_dir) {
                (None, None) => load(None, env),
                (config, data_dir) => chosen_config(config, data_dir, env),
            }
            .map_err(anyhow::Error::msg)?;
            for key in keys {
                let forms = confidant::keys_cli::public_forms(&key, &config)
                    .with_context(|| format!("--key {}", key.display()))?;
                println!("{forms}");
            }
        }
        KeysCommand::Secret { out } => {
            if !keys::ensure_secret_file(&out)? {
                anyhow::bail!("{} exists; it is never overwritten", out.display());
            }
            println!("secret written: {}", out.display());
        }
        KeysCommand::RotateLocalKms { config, data_dir } => {
            let config = chosen_config(config, data_dir, env).map_err(anyhow::Error::msg)?;
            let said = runtime()?.block_on(confidant::keys_cli::rotate_local_kms(&config))?;
            println!("{said}");
        }
        KeysCommand::RetireLocalKms {
            key_id,
            config,
            data_dir,
        } => {
            let config = chosen_config(config, data_dir, env).map_err(anyhow::Error::msg)?;
            let said =
                runtime()?.block_on(confidant::keys_cli::retire_local_kms(&config, &key_id))?;
            println!("{said}");
        }
    }
    Ok(())
}

fn restore(action: RestoreCommand, env: &HashMap<String, String>) -> ExitCode {
    use confidant::restore_cli::What;
    let (what, args) = match &action {
        RestoreCommand::AuditLog(args) => (What::AuditLog, args),
        RestoreCommand::Vault(args) => (What::Vault, args),
        RestoreCommand::Identity(args) => (What::Identity, args),
        RestoreCommand::Retention(args) => (What::Retention, args),
        RestoreCommand::Intake(args) => (What::Intake, args),
    };
    let config = match chosen_config(args.config.clone(), args.data_dir.clone(), env) {
        Ok(c) => c,
        Err(err) => return config_error(&err),
    };
    report(runtime().and_then(|rt| {
        rt.block_on(confidant::restore_cli::restore(
            what,
            &config,
            &args.log,
            &args.public_key,
            args.dry_run,
            &mut std::io::stdout(),
        ))
    }))
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("confidant: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

/// A runtime with `workers` threads, or one per CPU the process may use.
fn runtime_with(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    Ok(builder.enable_all().build()?)
}

fn run(config: Config, services: Vec<ServiceName>, policy: MigrationPolicy) -> ExitCode {
    let rt = match runtime_with(config.worker_threads) {
        Ok(rt) => rt,
        Err(err) => return report(Err(err)),
    };
    rt.block_on(async move {
        let telemetry_name = match services.as_slice() {
            [one] => format!("confidant-{one}"),
            _ => "confidant".to_owned(),
        };
        let telemetry = match confidant_runtime::telemetry::init(&telemetry_name, &config.telemetry) {
            Ok(guard) => guard,
            Err(err) => return config_error(&err.to_string()),
        };
        tracing::info!(
            worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            "runtime started"
        );
        let grace = Duration::from_secs(config.shutdown_grace_seconds);
        let dev_pki = (config.mode == config::Mode::Dev)
            .then(|| config.data_dir.clone().map(|d| PkiDir::new(d.join("pki"))))
            .flatten();
        let mut running = match process::start(Arc::new(config), &services, policy).await {
            Ok(running) => running,
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "start-up failed");
                return report(Err(err));
            }
        };
        if let Some(pki) = dev_pki {
            let ports: Vec<String> = running.addrs.iter().map(|(s, a)| format!("{s}={a}")).collect();
            tracing::info!(
                services = ports.join(" "),
                ca = %pki.ca_cert().display(),
                operator_cert = %pki.cert("operator").display(),
                operator_key = %pki.key("operator").display(),
                "confidant dev is up"
            );
        }
        let mut code = ExitCode::SUCCESS;
        let shutdown = signals::shutdown_signal();
        tokio::pin!(shutdown);
        let mut hangups = signals::Hangups::install();
        let tls_reload = running.tls_reload();
        loop {
            tokio::select! {
                signal = &mut shutdown => {
                    tracing::info!(signal, "shutting down");
                    break;
                }
                service = running.failed() => {
                    tracing::error!(service = %service, "a service stopped unexpectedly; shutting down");
                    code = ExitCode::FAILURE;
                    break;
                }
                () = hangups.recv() => {
                    tracing::info!("SIGHUP: reading the certificate, key and CA bundle files again");
                    tls_reload.send_modify(|n| *n += 1);
                }
            }
        }
        tokio::select! {
            () = running.shutdown(grace) => {}
            signal = signals::shutdown_signal() => {
                tracing::warn!(signal, "second signal: exiting without draining");
                telemetry.flush();
                return ExitCode::from(EXIT_INTERRUPTED);
            }
        }
        telemetry.shutdown();
        code
    })
}
