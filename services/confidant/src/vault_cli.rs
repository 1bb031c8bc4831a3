//! `confidant vault`: the vault's key and masking administration from the
//! command line, with an administrator's certificate (an identity on
//! `vault.admins`): KMS key usage and cache counters, the rewrap after a KMS
//! key rotation, and the masking rules. One JSON object per line.

use std::io::Write;

use confidant_proto::vault::v1 as pb;
use confidant_proto::vault::v1::vault_service_client::VaultServiceClient;
use confidant_runtime::client::PeerChannel;
use confidant_vault::masking::Mask;
use serde_json::{Value as Json, json};

/// How to reach the vault.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The service URL.
    #[arg(long, default_value = "https://127.0.0.1:7103")]
    pub service: String,
    #[command(flatten)]
    pub credentials: crate::cli::Credentials,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum VaultCommand {
    /// The KMS keys that wrap live scope keys (a key no longer listed can be
    /// retired after a rotation), and this replica's cache and KMS counters.
    KeyStats,
    /// After a KMS key rotation: rewrap scope keys under the active KMS key,
    /// batch after batch, until none remains (one line per batch, listing
    /// the keys that could not be rewrapped and why; if any, it fails once
    /// it has gone through all the others). Records are not touched;
    /// stopped, it resumes where it was when run again.
    Rewrap {
        /// Scope keys per call (1 to 1,000).
        #[arg(long, default_value_t = 100)]
        batch_size: i32,
    },
    /// The masking rules, one line each.
    MaskingRules {
        /// Only this role's.
        #[arg(long, default_value = "")]
        role: String,
    },
    /// Replace one role's masking rules (audited); prints the role's rules
    /// now. Without any --rule the role sees nothing in clear.
    SetMaskingRules {
        /// The role, e.g. paralegal.
        #[arg(long)]
        role: String,
        /// A rule `category:field_type:mask` (repeat): a category's name or
        /// `*`; a field type's name, `document` or `*`; `clear`, `last4` or
        /// `redact`. E.g. `identity_document:national_id:last4`.
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
}

impl Connection {
    async fn client(&self) -> anyhow::Result<VaultServiceClient<PeerChannel>> {
        Ok(VaultServiceClient::new(
            self.credentials.channel(&self.service).await?,
        ))
    }
}

/// A rule from `category:field_type:mask`; the vault checks the names.
fn parse_rule(text: &str) -> anyhow::Result<pb::MaskingRule> {
    let parts: Vec<&str> = text.split(':').collect();
    let [category, field_type, mask] = parts[..] else {
        anyhow::bail!("--rule {text:?}: expected category:field_type:mask");
    };
    let Some(mask) = Mask::parse(mask) else {
        anyhow::bail!("--rule {text:?}: the mask {mask:?} is not clear, last4 or redact");
    };
    Ok(pb::MaskingRule {
        role: String::new(),
        category: category.to_owned(),
        field_type: field_type.to_owned(),
        mask: mask.to_proto() as i32,
    })
}

/// One JSON line per rule.
fn write_rules(out: &mut impl Write, rules: &[pb::MaskingRule]) -> anyhow::Result<()> {
    for rule in rules {
        let line = json!({
            "role": rule.role,
            "category": rule.category,
            "field_type": rule.field_type,
            "mask": Mask::from_proto(rule.mask).map_or("unspecified", Mask::as_str),
        });
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Runs one command, writing its JSON lines to `out`.
pub async fn run(
    conn: &Connection,
    command: VaultCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let fail = |s: tonic::Status| anyhow::anyhow!(crate::records_cli::describe(&s));
    // Rules are checked before connecting.
    let new_rules = match &command {
        VaultCommand::SetMaskingRules { rules, .. } => rules
            .iter()
            .map(|r| parse_rule(r))
            .collect::<anyhow::Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    let mut c = conn.client().await?;
    match command {
        VaultCommand::KeyStats => {
            let s = c
                .get_key_stats(pb::GetKeyStatsRequest {})
                .await
                .map_err(fail)?
                .into_inner();
            let keys: Vec<Json> = s
                .kms_keys
                .iter()
                .map(|k| json!({ "kms_key_id": k.kms_key_id, "scopes": k.scopes, "active": k.active }))
                .collect();
            writeln!(
                out,
                "{}",
                json!({
                    "kms_keys": keys,
                    "cache_hits": s.cache_hits,
                    "kms_decrypt_calls": s.kms_decrypt_calls,
                    "kms_generate_calls": s.kms_generate_calls,
                    "cached_keys": s.cached_keys,
                    "evictions": s.evictions,
                    "kms_failures": s.kms_failures,
                    "unreadable_records": s.unreadable_records,
                })
            )?;
        }
        VaultCommand::Rewrap { batch_size } => {
            // One pass goes through every scope key to rewrap, a batch a
            // call; a key that cannot be rewrapped is listed and passed
            // over, and fails the command once the pass is over.
            let (mut page_token, mut before) = (String::new(), i64::MAX);
            let (mut moved, mut failed) = (0i64, 0usize);
            loop {
                let r = c
                    .rewrap_scope_keys(pb::RewrapScopeKeysRequest {
                        batch_size,
                        page_token,
                    })
                    .await
                    .map_err(fail)?
                    .into_inner();
                let failures: Vec<Json> = r
                    .failures
                    .iter()
                    .map(|f| json!({ "scope_id": f.scope_id, "reason": f.reason }))
                    .collect();
                writeln!(
                    out,
                    "{}",
                    json!({
                        "rewrapped": r.rewrapped,
                        "remaining": r.remaining,
                        "active_kms_key_id": r.active_kms_key_id,
                        "failures": failures,
                    })
                )?;
                out.flush()?;
                if r.remaining == 0 {
                    break;
                }
                moved += r.rewrapped;
                failed += r.failures.len();
                page_token = r.next_page_token;
                if !page_token.is_empty() {
                    continue;
                }
                // The pass is over.
                if failed > 0 {
                    anyhow::bail!(
                        "{} scope keys remain under another KMS key; {failed} of them could not be \
                         rewrapped (listed above, each also in the audit log as \
                         vault.scope_key.rewrap_failed): the old KMS key cannot be retired yet",
                        r.remaining
                    );
                }
                // Keys that do not move would otherwise be asked for forever
                // (another replica's progress counts as progress).
                if moved == 0 && r.remaining >= before {
                    anyhow::bail!(
                        "{} scope keys remain but none moved in a whole pass; see the vault's log",
                        r.remaining
                    );
                }
                (before, moved) = (r.remaining, 0);
            }
        }
        VaultCommand::MaskingRules { role } => {
            let rules = c
                .list_masking_rules(pb::ListMaskingRulesRequest { role })
                .await
                .map_err(fail)?
                .into_inner()
                .rules;
            write_rules(out, &rules)?;
        }
        VaultCommand::SetMaskingRules { role, .. } => {
            let rules = c
                .set_masking_rules(pb::SetMaskingRulesRequest {
                    role,
                    rules: new_rules,
                })
                .await
                .map_err(fail)?
                .into_inner()
                .rules;
            write_rules(out, &rules)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_read_as_category_type_and_mask() {
        let r = parse_rule("identity_document:national_id:last4").unwrap();
        assert_eq!(
            (r.category.as_str(), r.field_type.as_str(), r.mask()),
            ("identity_document", "national_id", pb::Mask::LastFour)
        );
        assert_eq!(parse_rule("*:*:redact").unwrap().mask(), pb::Mask::Redact);
        assert!(parse_rule("*:*").is_err());
        assert!(parse_rule("*:*:clear:extra").is_err());
        assert!(parse_rule("*:*:hidden").is_err());
    }
}
