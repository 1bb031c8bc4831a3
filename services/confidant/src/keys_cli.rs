//! `confidant keys public`: what to publish of a signing key. And
//! `confidant keys rotate-local-kms` and `retire-local-kms`: the first and
//! last steps of a rotation of the local KMS. The rotation adds a new
//! master key; after a restart of every service and `confidant vault
//! rewrap`, the old master key wraps nothing, and the retirement makes sure
//! of that in every service's database and removes the key from the
//! keyring, for good. Each records what it does in the audit log before
//! the keyring changes.

use anyhow::Context as _;
use confidant_proto::audit::v1::Outcome;
use confidant_runtime::ServiceName;
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::config::{Config, KmsProvider};
use confidant_runtime::kms::{Kms as _, LocalKms};
use confidant_runtime::storage::{Database, PoolOptions};

use crate::process::MigrationPolicy;

/// What a signing key's holders publish so that others can check what it
/// signs, in every form Confidant names a key: the raw public key and key
/// id of retention's certificates, the verifier key of the audit log's
/// checkpoints (named after `config`'s log origin), and the JSON Web Key of
/// identity's tokens and certifications. Nothing secret is in it: the
/// private key is only read to derive the public one.
pub fn public_forms(path: &std::path::Path, config: &Config) -> anyhow::Result<serde_json::Value> {
    let certificates = confidant_retention::disposal::Signer::load(path)?;
    let log = confidant_audit::load_signer(path, &config.audit_origin())?;
    let tokens =
        confidant_identity::tokens::TokenKeys::load(&[path.to_path_buf()], &config.trust_domain)?;
    let jwks: serde_json::Value = serde_json::from_str(&tokens.jwks())?;
    Ok(serde_json::json!({
        "file": path.display().to_string(),
        "public_key": certificates.public_key(),
        "certificate_key_id": certificates.key_id(),
        "audit_verifier_key": log.verifier_key(),
        "jwk": jwks["keys"][0],
    }))
}

/// What still uses a KMS key in one service's database, for people: e.g.
/// "vault: 3 scope keys (run `confidant vault rewrap` ...)". Empty when
/// nothing does, or when the service never ran on this database (no
/// migration applied).
async fn uses_in(
    config: &Config,
    service: ServiceName,
    key_id: &str,
) -> anyhow::Result<Vec<String>> {
    let Some(url) = config
        .services
        .get(&service)
        .and_then(|s| s.database_url.clone())
    else {
        return Ok(Vec::new());
    };
    let options = PoolOptions {
        max_connections: 1,
        ..PoolOptions::default()
    };
    let db = Database::connect(&url, service.as_str(), options)
        .await
        .with_context(|| format!("{service}: cannot open its database"))?;
    let uses = uses_of(&db, service, key_id).await;
    db.close().await;
    uses
}

async fn uses_of(db: &Database, service: ServiceName, key_id: &str) -> anyhow::Result<Vec<String>> {
    if db.never_migrated().await? {
        // The service never ran here: it has wrapped nothing.
        return Ok(Vec::new());
    }
    crate::process::require_applied(db, service).await?;
    let mut uses = Vec::new();
    if confidant_runtime::secret_box::data_key_wrapped_under(db, key_id).await? {
        uses.push(format!(
            "{service}: its data key (restart {service}: it rewraps its data key under the active key as it starts)"
        ));
    }
    if service == ServiceName::Vault {
        let scopes: i64 = confidant_vault::store::VaultStore::new(db.clone())
            .kms_key_usage()
            .await?
            .into_iter()
            .filter(|(k, _)| k == key_id)
            .map(|(_, n)| n)
            .sum();
        if scopes > 0 {
            let keys = if scopes == 1 { "key" } else { "keys" };
            uses.push(format!(
                "vault: {scopes} scope {keys} (run `confidant vault rewrap` once every vault replica runs with the new key)"
            ));
        }
    }
    Ok(uses)
}

/// Puts `action` on the local KMS key `key_id` in the vault's audit outbox,
/// which the vault delivers to the audit log while it runs, or as it next
/// starts.
async fn record(config: &Config, action: Action, key_id: &str, reason: &str) -> anyhow::Result<()> {
    let db =
        crate::process::open_database(config, ServiceName::Vault, MigrationPolicy::RequireApplied)
            .await?;
    let event = EventBuilder::new(ServiceName::Vault, &config.trust_domain, action)
        .resource("kms_key", key_id)
        .outcome(Outcome::Allowed, reason)
        .build();
    let recorded = db.transact(Vec::new(), &[event]).await;
    db.close().await;
    recorded
        .with_context(|| format!("vault: {action} could not be recorded in its audit outbox"))?;
    Ok(())
}

/// The local KMS of `config`: refused for any other provider (`aws`: what
/// to do there instead) and when its keyring does not exist (this command
/// would make a new KMS, not change one).
pub(crate) fn local_kms(config: &Config, aws: &str) -> anyhow::Result<LocalKms> {
    if config.kms.provider != Some(KmsProvider::Local) {
        anyhow::bail!("kms.provider is not local: {aws}");
    }
    let path =
        confidant_runtime::kms::local_key_file(config).context("kms.local_key_file is not set")?;
    if !path.exists() {
        anyhow::bail!("{} does not exist", path.display());
    }
    Ok(LocalKms::open(&path)?)
}

/// Rotates the local KMS of `config`: a new master key becomes the active
/// one for services started afterwards; the rotation is in the audit log
/// first. What it says for people.
pub async fn rotate_local_kms(config: &Config) -> anyhow::Result<String> {
    let kms = local_kms(
        config,
        "rotate an AWS KMS key in AWS KMS (or create a new key and set kms.key_id), then restart the services",
    )?;
    let id = LocalKms::new_key_id();
    record(config, Action::VaultKmsKeyRotated, &id, "rotated").await?;
    kms.rotate_to(&id).with_context(|| {
        format!("the rotation to {id} is in the audit log but the keyring is unchanged; run the command again")
    })?;
    Ok(format!("active local KMS key: {id}"))
}

/// Retires the local KMS master key `key_id` of `config`'s keyring once no
/// service's database holds anything wrapped under it; what it says for
/// people.
pub async fn retire_local_kms(config: &Config, key_id: &str) -> anyhow::Result<String> {
    let kms = local_kms(
        config,
        "retire an AWS KMS key in AWS KMS (disable it, then schedule its deletion) \
         once `confidant vault key-stats` no longer lists it and identity and intake have logged their rewrap",
    )?;
    // An unknown or the active key is refused before any database is asked.
    kms.check_retirable(key_id)?;
    let mut uses = Vec::new();
    for service in ServiceName::ALL {
        uses.extend(uses_in(config, service, key_id).await?);
    }
    if !uses.is_empty() {
        anyhow::bail!(
            "{key_id} still wraps keys, so it stays:\n  {}",
            uses.join("\n  ")
        );
    }
    // Recorded first: nothing happens to a key unrecorded.
    record(
        config,
        Action::VaultKmsKeyRetired,
        key_id,
        "nothing_wrapped",
    )
    .await?;
    kms.retire(key_id).context(
        "the retirement is in the audit log but the keyring is unchanged; run the command again",
    )?;
    Ok(format!(
        "local KMS key {key_id} retired; active key: {}",
        kms.active_key_id()
    ))
}
