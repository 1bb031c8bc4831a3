//! The vault's operations, independent of gRPC: storing and reading
//! records under the key hierarchy, shredding, holds, sealing audit text and
//! rewrapping. Authorization decisions are made by the caller (the gRPC
//! layer asks identity); what is decided here is what the data and its keys
//! allow, and every access is recorded in the audit outbox in the same
//! transaction as its effect — for reads, before any plaintext is returned.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use confidant_proto::audit::v1::{AuditEvent, Outcome};
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::kms::{Error as KmsError, WrappedKey};
use confidant_runtime::portable::{Statement, TransactError};
use prost::Message;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::crypto::{FieldBinding, RecordKey, ScopeKey};
use crate::domain::{
    Category, Correction, FieldSelection, FieldType, Limits, NewRecord, Purpose, ScopeRef,
};
use crate::error::Error;
use crate::keys::{KeyError, Keyring};
use crate::masking::{Mask, MaskingRules};
use crate::store::{self, RecordRow, ScopeRow, ScopeState, VaultStore};

/// How long masking rules are used before they are read again.
const RULES_TTL: Duration = Duration::from_secs(30);

/// Who acts (shared with the other services).
pub use confidant_runtime::auth::Actor;

/// Encrypted fields as stored: one message per record.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredFields {
    #[prost(message, repeated, tag = "1")]
    fields: Vec<StoredField>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredField {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    field_type: String,
    #[prost(bytes = "vec", tag = "3")]
    sealed: Vec<u8>,
}

/// A field as read.
#[derive(Debug)]
pub struct OpenedField {
    /// Name.
    pub name: String,
    /// Type.
    pub field_type: FieldType,
    /// Value as the reader may see it.
    pub value: Zeroizing<String>,
    /// Whether it was masked.
    pub masked: bool,
}

/// A record as read.
#[derive(Debug)]
pub struct OpenedRecord {
    /// Its row.
    pub row: RecordRow,
    /// Its fields.
    pub fields: Vec<OpenedField>,
    /// The audit event that recorded the read.
    pub audit_event_id: String,
}

/// What a record's shred did.
#[derive(Debug)]
pub struct RecordShred {
    /// The tombstone of the version named.
    pub record: RecordRow,
    /// The tombstones of the versions this shred destroyed (none when all
    /// were destroyed before: a repeated order).
    pub destroyed: Vec<RecordRow>,
    /// The audit events that recorded it, one per version destroyed.
    pub event_ids: Vec<String>,
}

/// What a read is for.
#[derive(Debug, Clone)]
pub struct ReadIntent<'a> {
    /// The purpose code.
    pub purpose: Purpose,
    /// Free-text justification (sealed in the audit event).
    pub justification: &'a str,
    /// The roles whose masks apply.
    pub roles: &'a [String],
    /// The fields to read (a read mask); other fields stay sealed.
    pub fields: FieldSelection,
}

/// Settings of the vault's operations.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Field limits.
    pub limits: Limits,
    /// Largest document, in bytes.
    pub max_document_bytes: u64,
    /// Default pending window of a scope destruction.
    pub destruction_window: Duration,
    /// The trust domain, for audit events.
    pub trust_domain: String,
}

/// The vault.
pub struct Vault {
    store: VaultStore,
    keys: Keyring,
    settings: Settings,
    rules: RwLock<Option<(Instant, Arc<MaskingRules>)>>,
    reads: confidant_runtime::outbox::GroupCommit,
    writes: confidant_runtime::portable::WriteGroup,
    fetch: crate::fetch::RecordFetch,
    live_scopes: std::sync::Mutex<std::collections::HashMap<ScopeRef, Uuid>>,
    /// Where replicas tell each other of changed masking rules.
    coord: Option<confidant_runtime::coord::SharedCoordinator>,
}

/// The channel on which a replica announces that it changed masking rules
/// (the message: the role).
const RULES_CHANNEL: &str = "vault.masking_rules";

/// Most scopes remembered for writes.
const LIVE_SCOPES: usize = 10_000;

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("keys", &self.keys)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

pub(crate) fn scope_ref_of(row: &RecordRow) -> Result<ScopeRef, Error> {
    Ok(ScopeRef {
        client_id: row.client_id,
        matter_id: row.matter_id,
        category: Category::parse(&row.category).ok_or(Error::Integrity)?,
    })
}

/// A decrypted field: name, type and value (zeroized when dropped).
pub(crate) type PlainField = (String, FieldType, Zeroizing<Vec<u8>>);

/// Decrypts the selected fields of a record with its key, in the record's
/// order; the others are not opened.
pub(crate) fn decrypt_fields(
    row: &RecordRow,
    record_key: &RecordKey,
    selection: &FieldSelection,
) -> Result<Vec<PlainField>, Error> {
    let stored = StoredFields::decode(row.fields.as_slice()).map_err(|_| Error::Integrity)?;
    let mut out = Vec::with_capacity(stored.fields.len());
    for field in stored.fields {
        if !selection.includes(&field.name) {
            continue;
        }
        let field_type = FieldType::parse(&field.field_type).ok_or(Error::Integrity)?;
        let at = FieldBinding {
            record_id: row.id,
            scope_id: row.scope_id,
            key_version: row.key_version,
            name: &field.name,
            field_type: &field.field_type,
        };
        let plain = record_key.open_field(&at, &field.sealed)?;
        out.push((field.name, field_type, plain));
    }
    Ok(out)
}

/// Encrypts fields under a record key, bound to the record and scope.
pub(crate) fn encrypt_fields<'a>(
    record_id: Uuid,
    scope_id: Uuid,
    key_version: i32,
    record_key: &RecordKey,
    fields: impl Iterator<Item = (&'a str, FieldType, &'a [u8])>,
) -> Result<Vec<u8>, Error> {
    let mut stored = StoredFields::default();
    for (name, field_type, value) in fields {
        let at = FieldBinding {
            record_id,
            scope_id,
            key_version,
            name,
            field_type: field_type.as_str(),
        };
        stored.fields.push(StoredField {
            name: name.to_owned(),
            field_type: field_type.as_str().to_owned(),
            sealed: record_key.seal_field(&at, value)?,
        });
    }
    Ok(stored.encode_to_vec())
}

/// The row of a record just stored (its scope active).
fn new_record_row(encrypted: store::EncryptedRecord) -> RecordRow {
    RecordRow {
        id: encrypted.id,
        scope_id: encrypted.scope_id,
        client_id: encrypted.scope.client_id,
        matter_id: encrypted.scope.matter_id,
        category: encrypted.scope.category.as_str().to_owned(),
        key_version: encrypted.key_version,
        wrapped_key: Some(encrypted.wrapped_key),
        fields: Vec::new(),
        field_names: encrypted.field_names,
        created_at: encrypted.created_at,
        created_by: encrypted.created_by,
        shredded_at: None,
        shred_order: None,
        scope_state: "active".into(),
        scope_kms_key_id: None,
        scope_wrapped_key: None,
        scope_shredded_at: None,
        scope_shred_order: None,
        kind: "record".into(),
        upload_state: "available".into(),
        doc_size: None,
        doc_sha256: None,
        doc_segments: None,
        doc_nonce: None,
        original: i32::from(encrypted.original),
        version: 1,
        supersedes: None,
        superseded_by: None,
        superseded_at: None,
    }
}

/// The fields of a corrected record: its current fields in their order,
/// each set field replacing the one of its name (or added at the end), the
/// removed ones dropped. Removing a field the record lacks, or leaving it
/// with no fields or more than `max_fields`, is refused.
fn merged_fields(
    current: Vec<PlainField>,
    correction: &Correction,
    max_fields: usize,
) -> Result<Vec<PlainField>, Error> {
    let mut v = confidant_runtime::error::Violations::new();
    for (i, name) in correction.remove.iter().enumerate() {
        if !current.iter().any(|(n, ..)| n == name) {
            v.add(
                format!("remove_fields[{i}]"),
                "names no field of the record",
            );
        }
    }
    let mut fields: Vec<PlainField> = current
        .into_iter()
        .filter(|(name, ..)| !correction.remove.contains(name))
        .collect();
    for new in &correction.set {
        let value = Zeroizing::new(new.value.as_bytes().to_vec());
        match fields.iter_mut().find(|(name, ..)| *name == new.name) {
            Some(field) => *field = (new.name.clone(), new.field_type, value),
            None => fields.push((new.name.clone(), new.field_type, value)),
        }
    }
    if fields.is_empty() {
        v.add("remove_fields", "must leave the record at least one field");
    } else if fields.len() > max_fields {
        v.add(
            "fields",
            format!("must leave the record at most {max_fields} fields"),
        );
    }
    if v.is_empty() {
        Ok(fields)
    } else {
        Err(Error::Invalid(v))
    }
}

/// A record that can be shown: one whose upload has completed.
fn available(row: Option<RecordRow>) -> Result<RecordRow, Error> {
    row.filter(|r| r.upload_state == "available")
        .ok_or(Error::NotFound("record"))
}

fn is_shredded(row: &RecordRow) -> bool {
    row.wrapped_key.is_none() || ScopeState::parse(&row.scope_state) == ScopeState::Shredded
}

impl Vault {
    /// The vault over its store and keyring. Starts the committer of read
    /// events on the current runtime.
    pub fn new(store: VaultStore, keys: Keyring, settings: Settings) -> Self {
        let reads = confidant_runtime::outbox::GroupCommit::start(store.db().clone(), 2_000);
        let fetch = crate::fetch::RecordFetch::start(store.clone());
        let writes = confidant_runtime::portable::WriteGroup::start(store.db().clone());
        Self {
            fetch,
            writes,
            store,
            keys,
            settings,
            rules: RwLock::new(None),
            reads,
            live_scopes: std::sync::Mutex::default(),
            coord: None,
        }
    }

    /// The vault announcing the masking rule changes it makes through
    /// `coord`, for the other replicas ([`Vault::follow_rule_changes`]).
    pub fn with_coordinator(mut self, coord: confidant_runtime::coord::SharedCoordinator) -> Self {
        self.coord = Some(coord);
        self
    }

    /// Keeps this replica's copy of the masking rules in step with the
    /// changes other replicas announce, for as long as the vault exists:
    /// each announcement drops the copy, and so does every (re)subscription
    /// or loss of it (announcements may be missed meanwhile). Without a
    /// subscription the copy is read again when it is [`RULES_TTL`] old.
    pub fn follow_rule_changes(self: &Arc<Self>) {
        use confidant_runtime::coord::Heard;
        let Some(coord) = self.coord.clone() else {
            return;
        };
        confidant_runtime::coord::follow(coord, RULES_CHANNEL, self, |vault, heard| {
            vault.forget_rules();
            if heard == Heard::Lost {
                tracing::warn!(
                    "masking rule announcements lost; other replicas' changes apply within 30 s until resubscribed"
                );
            }
        });
    }

    /// Drops this replica's copy of the masking rules.
    fn forget_rules(&self) {
        if let Ok(mut guard) = self.rules.write() {
            *guard = None;
        }
    }

    /// Makes read events durable before plaintext leaves: shares the
    /// commit with concurrent reads.
    pub(crate) async fn record_reads(&self, events: Vec<AuditEvent>) -> Result<(), Error> {
        self.reads.record(events).await.map_err(Error::Audit)
    }

    /// The store.
    pub fn store(&self) -> &VaultStore {
        &self.store
    }

    /// The keyring.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn event(&self, actor: &Actor, action: Action) -> EventBuilder {
        actor.event(crate::NAME, &self.settings.trust_domain, action)
    }

    /// An event about `scope` itself, naming its client, matter and
    /// category.
    fn scope_event(&self, actor: &Actor, action: Action, scope: &ScopeRow) -> EventBuilder {
        self.event(actor, action)
            .resource("scope", &scope.id.to_string())
            .scope(Some(scope.client_id), scope.matter_id)
            .category(&scope.category)
    }

    pub(crate) async fn commit(
        &self,
        statements: Vec<Statement>,
        events: &[AuditEvent],
    ) -> Result<Vec<u64>, Error> {
        Ok(self.store.db().transact(statements, events).await?)
    }

    // ---------------------------------------------------------------- scopes

    /// The live scope of `scope` and its key, creating both on first use.
    pub async fn scope_for_write(
        &self,
        actor: &Actor,
        scope: &ScopeRef,
    ) -> Result<(ScopeRow, Arc<ScopeKey>), Error> {
        if let Some(row) = self.store.scope_by_ref(scope).await? {
            let key = self.live_key(&row).await?;
            return Ok((row, key));
        }
        let id = Uuid::now_v7();
        let (key, wrapped) = self.keys.generate(id, scope, 1).await?;
        let event = self
            .event(actor, Action::VaultScopeCreated)
            .resource("scope", &id.to_string())
            .scope(Some(scope.client_id), scope.matter_id)
            .category(scope.category.as_str())
            .build();
        // The event is only kept if this replica's row wins the race.
        let rows = self
            .store
            .db()
            .transact(
                vec![
                    VaultStore::insert_scope(
                        id,
                        scope,
                        1,
                        &wrapped.key_id,
                        &wrapped.ciphertext,
                        Utc::now(),
                    )
                    .expecting(1),
                ],
                &[event],
            )
            .await;
        match rows {
            Ok(_) => {}
            Err(TransactError::Unmet { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let row = self
            .store
            .scope_by_ref(scope)
            .await?
            .ok_or(Error::Conflict(
                "the scope changed while it was created; retry",
            ))?;
        if row.id == id {
            self.keys.remember(key.clone());
            return Ok((row, key));
        }
        let key = self.live_key(&row).await?;
        Ok((row, key))
    }

    /// A scope's row, tombstone included; `NotFound` when there is none.
    pub async fn scope_row(&self, id: Uuid) -> Result<ScopeRow, Error> {
        self.store.scope(id).await?.ok_or(Error::NotFound("scope"))
    }

    /// The key of a scope that still has one (pending destruction included),
    /// for sealing audit text about it.
    async fn scope_key_for_sealing(&self, row: &ScopeRow) -> Result<Arc<ScopeKey>, Error> {
        if row.state() == ScopeState::PendingDestruction {
            let active = ScopeRow {
                state: "active".into(),
                ..row.clone()
            };
            return self.live_key(&active).await;
        }
        self.live_key(row).await
    }

    /// The key of a live scope (refused once destruction is pending).
    async fn live_key(&self, row: &ScopeRow) -> Result<Arc<ScopeKey>, Error> {
        match row.state() {
            ScopeState::Active => {}
            ScopeState::PendingDestruction => return Err(Error::PendingDestruction),
            ScopeState::Shredded => return Err(Error::Shredded("scope")),
        }
        let (Some(kms_key_id), Some(ciphertext)) = (&row.kms_key_id, &row.wrapped_key) else {
            return Err(Error::Shredded("scope"));
        };
        let scope = row.scope_ref().ok_or(Error::Integrity)?;
        Ok(self
            .keys
            .unwrap(
                row.id,
                &scope,
                row.key_version,
                &WrappedKey {
                    key_id: kms_key_id.clone(),
                    ciphertext: ciphertext.clone(),
                },
            )
            .await?)
    }

    // --------------------------------------------------------------- records

    /// Stores a record. With a `request_id`, a retry returns the first
    /// record.
    pub async fn create(
        &self,
        actor: &Actor,
        record: &NewRecord,
        request_id: Option<&str>,
    ) -> Result<RecordRow, Error> {
        if let Some(existing) = self.stored_before(actor, request_id).await? {
            return Ok(existing);
        }
        // The scope remembered from an earlier write may have been shredded
        // since (the guarded INSERT then stores nothing): look it up afresh
        // once.
        let mut fresh = false;
        loop {
            let (scope_id, scope_key) = self.write_target(actor, &record.scope, fresh).await?;
            let id = Uuid::now_v7();
            let record_key = RecordKey::generate()?;
            let fields = encrypt_fields(
                id,
                scope_id,
                scope_key.key_version(),
                &record_key,
                record
                    .fields
                    .iter()
                    .map(|f| (f.name.as_str(), f.field_type, f.value.as_bytes())),
            )?;
            let now = Utc::now();
            let encrypted = store::EncryptedRecord {
                id,
                scope_id,
                scope: record.scope,
                key_version: scope_key.key_version(),
                wrapped_key: scope_key.wrap_record_key(id, &record_key)?,
                fields,
                field_names: record
                    .fields
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                created_at: now,
                created_by: actor.id().to_owned(),
                request_id: request_id.map(str::to_owned),
                document_nonce: None,
                original: record.original,
            };
            let event = self
                .event(actor, Action::VaultRecordCreated)
                .resource("record", &id.to_string())
                .scope(Some(record.scope.client_id), record.scope.matter_id)
                .category(record.scope.category.as_str())
                .build();
            // Shares its transaction with concurrent writes (one commit).
            match self.writes.transact(encrypted.insert(), vec![event]).await {
                Ok(_) => return Ok(new_record_row(encrypted)),
                Err(TransactError::Unmet { .. }) if !fresh => {
                    self.forget_scope(&record.scope);
                    fresh = true;
                }
                Err(TransactError::Unmet { .. }) => {
                    return Err(Error::Conflict(
                        "the scope was shredded during the write; retry",
                    ));
                }
                Err(e) if request_id.is_some() && e.is_duplicate() => {
                    return self.stored_first(actor, request_id).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Corrects `old`, a record the caller may write: stores its next
    /// version in the same scope under a new record key, with the
    /// correction's fields set, its removed fields dropped and the others
    /// carried over (decrypted and sealed again here; no plaintext leaves),
    /// and marks `old` superseded, in one transaction with the event that
    /// carries the reason sealed under the scope's key. With a `request_id`,
    /// a retry returns the version the first call stored.
    pub async fn correct(
        &self,
        actor: &Actor,
        old: &RecordRow,
        correction: &Correction,
        request_id: Option<&str>,
    ) -> Result<RecordRow, Error> {
        if let Some(existing) = self.stored_before(actor, request_id).await? {
            return Ok(existing);
        }
        Self::correctable(old, false)?;
        // The scope's key that opens the current version seals the next;
        // the guarded INSERT refuses it if the scope changed meanwhile.
        let (scope_key, current) = self.decrypt(old, &FieldSelection::All).await?;
        let fields = merged_fields(current, correction, self.settings.limits.max_fields)?;
        let id = Uuid::now_v7();
        let record_key = RecordKey::generate()?;
        let sealed = encrypt_fields(
            id,
            old.scope_id,
            scope_key.key_version(),
            &record_key,
            fields
                .iter()
                .map(|(name, field_type, value)| (name.as_str(), *field_type, value.as_slice())),
        )?;
        let encrypted = store::EncryptedRecord {
            id,
            scope_id: old.scope_id,
            scope: scope_ref_of(old)?,
            key_version: scope_key.key_version(),
            wrapped_key: scope_key.wrap_record_key(id, &record_key)?,
            fields: sealed,
            field_names: fields
                .iter()
                .map(|(name, ..)| name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            created_at: Utc::now(),
            created_by: actor.id().to_owned(),
            request_id: request_id.map(str::to_owned),
            document_nonce: None,
            original: false,
        };
        let event = self
            .event(actor, Action::VaultRecordCorrected)
            .resource("record", &id.to_string())
            .scope(Some(old.client_id), old.matter_id)
            .category(&old.category)
            .outcome(Outcome::Allowed, &format!("supersedes-{}", old.id))
            .changed_fields(
                correction
                    .set
                    .iter()
                    .map(|f| f.name.clone())
                    .chain(correction.remove.iter().cloned())
                    .collect(),
            )
            .sealed_text(
                scope_key.seal_text(&correction.reason)?,
                &old.scope_id.to_string(),
            )
            .build();
        match self
            .store
            .db()
            .transact(store::correction(old.id, &encrypted), &[event])
            .await
        {
            Ok(_) => {}
            // Corrected, shredded or staged for destruction meanwhile.
            Err(TransactError::Unmet { .. }) => {
                let now = self.load(old.id).await?;
                Self::correctable(&now, false)?;
                return Err(Error::Conflict(
                    "the record's scope changed during the correction; retry",
                ));
            }
            Err(e) if request_id.is_some() && e.is_duplicate() => {
                return self.stored_first(actor, request_id).await;
            }
            Err(e) => return Err(e.into()),
        }
        self.load(id).await
    }

    /// Whether `row` can be corrected: the current version of a readable
    /// record of fields, or with `document` of a complete document.
    pub(crate) fn correctable(row: &RecordRow, document: bool) -> Result<(), Error> {
        if row.is_document() != document {
            let mut v = confidant_runtime::error::Violations::new();
            if document {
                v.add(
                    "header.supersedes",
                    "names a record of fields: records are corrected with CorrectRecord",
                );
            } else {
                v.add(
                    "record_id",
                    "names a document: a document is corrected by uploading the new version with header.supersedes",
                );
            }
            return Err(Error::Invalid(v));
        }
        if let Some(by) = row.superseded_by {
            return Err(Error::Superseded(by));
        }
        match Self::unreadable(row) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The record `actor` stored earlier under `request_id`, if any: a
    /// retry returns it instead of storing a second copy (AIP-155).
    pub(crate) async fn stored_before(
        &self,
        actor: &Actor,
        request_id: Option<&str>,
    ) -> Result<Option<RecordRow>, Error> {
        match request_id {
            Some(rid) => Ok(self.store.record_by_request(actor.id(), rid).await?),
            None => Ok(None),
        }
    }

    /// After a write with `request_id` met the row a concurrent retry
    /// stored first: that row, or a conflict while it is not complete.
    async fn stored_first(
        &self,
        actor: &Actor,
        request_id: Option<&str>,
    ) -> Result<RecordRow, Error> {
        self.stored_before(actor, request_id)
            .await?
            .ok_or(Error::Conflict(
                "a request with this id is being stored; retry",
            ))
    }

    /// The scope a write goes to and its key: remembered from earlier
    /// writes while its key is cached, else looked up (or created).
    pub(crate) async fn write_target(
        &self,
        actor: &Actor,
        scope: &ScopeRef,
        fresh: bool,
    ) -> Result<(Uuid, Arc<ScopeKey>), Error> {
        if !fresh {
            let known = self
                .live_scopes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(scope)
                .copied();
            if let Some(id) = known
                && let Some(key) = self.keys.cache().get(id)
            {
                return Ok((id, key));
            }
        }
        let (row, key) = self.scope_for_write(actor, scope).await?;
        let mut live = self
            .live_scopes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if live.len() >= LIVE_SCOPES {
            live.clear();
        }
        live.insert(*scope, row.id);
        Ok((row.id, key))
    }

    fn forget_scope(&self, scope: &ScopeRef) {
        self.live_scopes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(scope);
    }

    /// A record's row (metadata, ciphertext and scope state); concurrent
    /// callers share one look-up.
    pub async fn load(&self, id: Uuid) -> Result<RecordRow, Error> {
        available(self.fetch.record(id).await?)
    }

    /// Single-record look-ups so far, and the groups they went out in
    /// (concurrent readers share one).
    pub fn record_lookups(&self) -> (u64, u64) {
        self.fetch.counts()
    }

    /// The rows of several records, looked up together, in the order of
    /// `ids`. If the joint look-up fails, each is looked up alone, so that
    /// each fails (or not) on its own.
    pub async fn load_many(&self, ids: &[Uuid]) -> Vec<Result<RecordRow, Error>> {
        if let [one] = ids {
            return vec![self.load(*one).await];
        }
        match self.store.records(ids, None).await {
            Ok(rows) => {
                let rows: std::collections::HashMap<Uuid, RecordRow> =
                    rows.into_iter().map(|r| (r.id, r)).collect();
                ids.iter()
                    .map(|id| available(rows.get(id).cloned()))
                    .collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, "joint record look-up failed; looking up one by one");
                let mut each = Vec::with_capacity(ids.len());
                for id in ids {
                    each.push(
                        self.store
                            .record(*id)
                            .await
                            .map_err(Error::from)
                            .and_then(available),
                    );
                }
                each
            }
        }
    }

    /// Why a record cannot be read, if it cannot.
    pub fn unreadable(row: &RecordRow) -> Option<Error> {
        if is_shredded(row) {
            return Some(Error::Shredded("record"));
        }
        match ScopeState::parse(&row.scope_state) {
            ScopeState::PendingDestruction => Some(Error::PendingDestruction),
            _ => None,
        }
    }

    pub(crate) async fn masking_rules(&self) -> Result<Arc<MaskingRules>, Error> {
        if let Ok(guard) = self.rules.read()
            && let Some((at, rules)) = guard.as_ref()
            && at.elapsed() < RULES_TTL
        {
            return Ok(rules.clone());
        }
        let rules = Arc::new(MaskingRules::from_rows(
            self.store.masking_rules_of(None).await?,
        ));
        if let Ok(mut guard) = self.rules.write() {
            *guard = Some((Instant::now(), rules.clone()));
        }
        Ok(rules)
    }

    /// Replaces `role`'s masking rules with `rules`, with its audit event,
    /// in one transaction. This replica applies them at once, and announces
    /// the change to the others; one that misses the announcement applies it
    /// when its copy is [`RULES_TTL`] old.
    pub async fn set_masking_rules(
        &self,
        actor: &Actor,
        role: &str,
        rules: &[crate::masking::Rule],
    ) -> Result<(), Error> {
        let event = self
            .event(actor, Action::VaultMaskingRulesSet)
            .resource("role", role)
            .build();
        self.commit(store::replace_masking_rules(role, rules), &[event])
            .await?;
        self.forget_rules();
        if let Some(coord) = &self.coord
            && let Err(e) = coord.publish(RULES_CHANNEL, role).await
        {
            tracing::warn!(error = %e, "masking rule change not announced; other replicas apply it within 30 s");
        }
        Ok(())
    }

    /// Decrypts the selected fields of a record in memory (nothing is
    /// returned yet); a selection naming a field the record lacks is refused
    /// before any key is touched.
    async fn decrypt(
        &self,
        row: &RecordRow,
        selection: &FieldSelection,
    ) -> Result<(Arc<ScopeKey>, Vec<PlainField>), Error> {
        let missing = selection.missing_from(row.field_names.split(','));
        if !missing.is_empty() {
            return Err(Error::Invalid(missing));
        }
        let (scope_key, record_key) = self.record_keys(row).await?;
        let fields = decrypt_fields(row, &record_key, selection)?;
        Ok((scope_key, fields))
    }

    /// The scope key and record key of a readable record.
    pub(crate) async fn record_keys(
        &self,
        row: &RecordRow,
    ) -> Result<(Arc<ScopeKey>, RecordKey), Error> {
        if let Some(e) = Self::unreadable(row) {
            return Err(e);
        }
        let scope = scope_ref_of(row)?;
        let (Some(kms_key_id), Some(scope_wrapped), Some(record_wrapped)) = (
            &row.scope_kms_key_id,
            &row.scope_wrapped_key,
            &row.wrapped_key,
        ) else {
            return Err(Error::Shredded("record"));
        };
        let scope_key = self
            .keys
            .unwrap(
                row.scope_id,
                &scope,
                row.key_version,
                &WrappedKey {
                    key_id: kms_key_id.clone(),
                    ciphertext: scope_wrapped.clone(),
                },
            )
            .await?;
        let record_key = scope_key.unwrap_record_key(row.id, record_wrapped)?;
        Ok((scope_key, record_key))
    }

    /// The event of a read of `row`: `disclosed` names the fields whose
    /// values it returns (none when it is refused).
    pub(crate) fn read_event(
        &self,
        actor: &Actor,
        row: &RecordRow,
        intent: &ReadIntent<'_>,
        sealed: Option<(Vec<u8>, Uuid)>,
        disclosed: Vec<String>,
    ) -> AuditEvent {
        let mut b = self
            .event(actor, Action::VaultRecordRead)
            .resource("record", &row.id.to_string())
            .scope(Some(row.client_id), row.matter_id)
            .category(&row.category)
            .purpose(intent.purpose.as_str())
            .disclosed_fields(disclosed);
        if let Some((text, scope_id)) = sealed {
            b = b.sealed_text(text, &scope_id.to_string());
        }
        b.build()
    }

    /// The event of a read of `row` that may find its stored data does not
    /// open, but for its outcome (see [`unreadable`]).
    pub(crate) fn unreadable_event(
        &self,
        actor: &Actor,
        row: &RecordRow,
        intent: &ReadIntent<'_>,
    ) -> EventBuilder {
        self.event(actor, Action::VaultRecordUnreadable)
            .resource("record", &row.id.to_string())
            .scope(Some(row.client_id), row.matter_id)
            .category(&row.category)
            .purpose(intent.purpose.as_str())
    }

    /// Records, if `error` says stored data did not open, a read of `row`
    /// that found so (a failure to record it is logged, not returned).
    pub(crate) async fn record_unreadable(
        &self,
        actor: &Actor,
        row: &RecordRow,
        intent: &ReadIntent<'_>,
        error: &Error,
    ) {
        let Some(event) = unreadable(
            self.keys.stats(),
            self.unreadable_event(actor, row, intent),
            error,
        ) else {
            return;
        };
        if let Err(e) = self.commit(Vec::new(), &[event]).await {
            tracing::error!(error = %e, "unreadable record not recorded");
        }
    }

    /// Reads records the caller was allowed to read: decrypts each, records
    /// one audit event per record (justification sealed under its scope
    /// key) and commits them all before any plaintext is returned. Items
    /// that cannot be read fail on their own; if the events cannot be
    /// recorded, every item fails and nothing is returned.
    pub async fn open_many(
        &self,
        actor: &Actor,
        rows: Vec<RecordRow>,
        intent: &ReadIntent<'_>,
    ) -> Vec<Result<OpenedRecord, Error>> {
        let rules = match self.masking_rules().await {
            Ok(r) => r,
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, "masking rules unavailable");
                return rows
                    .iter()
                    .map(|_| Err(Error::Conflict("masking rules unavailable")))
                    .collect();
            }
        };
        let (mut events, mut unreadable_events) = (Vec::new(), Vec::new());
        let mut results: Vec<Result<OpenedRecord, Error>> = Vec::with_capacity(rows.len());
        for row in rows {
            match self.decrypt(&row, &intent.fields).await {
                Ok((scope_key, fields)) => {
                    let sealed = if intent.justification.is_empty() {
                        None
                    } else {
                        match scope_key.seal_text(intent.justification) {
                            Ok(s) => Some((s, row.scope_id)),
                            Err(e) => {
                                results.push(Err(e.into()));
                                continue;
                            }
                        }
                    };
                    let disclosed = fields.iter().map(|(name, ..)| name.clone()).collect();
                    let event = self.read_event(actor, &row, intent, sealed, disclosed);
                    let category = Category::parse(&row.category);
                    let fields = fields
                        .into_iter()
                        .map(|(name, field_type, plain)| {
                            let mask = category
                                .map_or(Mask::Redact, |c| rules.mask(intent.roles, c, field_type));
                            let text = String::from_utf8_lossy(&plain);
                            OpenedField {
                                name,
                                field_type,
                                value: Zeroizing::new(mask.apply(&text)),
                                masked: mask != Mask::Clear,
                            }
                        })
                        .collect();
                    results.push(Ok(OpenedRecord {
                        row,
                        fields,
                        audit_event_id: event.id.clone(),
                    }));
                    events.push(event);
                }
                Err(e) => {
                    unreadable_events.extend(unreadable(
                        self.keys.stats(),
                        self.unreadable_event(actor, &row, intent),
                        &e,
                    ));
                    results.push(Err(e));
                }
            }
        }
        // Stored data that does not open (altered, moved or corrupt): on
        // the record for the security officer; nothing of it was returned.
        if !unreadable_events.is_empty()
            && let Err(e) = self.commit(Vec::new(), &unreadable_events).await
        {
            tracing::error!(error = %e, "unreadable records not recorded");
        }
        if events.is_empty() {
            return results;
        }
        // Fail closed: the events are durable (in the outbox, delivered to
        // the audit log exactly once) before any plaintext leaves.
        if let Err(e) = self.record_reads(events).await {
            tracing::error!(error = %e, "read events not recorded; no plaintext returned");
            let why = e.to_string();
            return results
                .into_iter()
                .map(|r| match r {
                    Ok(_) => Err(Error::Audit(why.clone())),
                    Err(e) => Err(e),
                })
                .collect();
        }
        results
    }

    /// Records a refused read (denied by identity, shredded, pending).
    pub async fn record_refused_read(
        &self,
        actor: &Actor,
        row: &RecordRow,
        intent: &ReadIntent<'_>,
        outcome: Outcome,
        reason: &str,
    ) {
        let mut event = self.read_event(actor, row, intent, None, Vec::new());
        event.outcome = outcome as i32;
        event.reason = reason.to_owned();
        if let Err(e) = self.commit(Vec::new(), &[event]).await {
            tracing::error!(error = %e, "refused read not recorded");
        }
    }

    /// A page of a client's record metadata (never values), for `actor`.
    /// Like a read, the listing is durably in the audit outbox before
    /// anything is returned.
    pub async fn list(
        &self,
        actor: &Actor,
        client_id: Uuid,
        filter: &store::RecordFilter,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<RecordRow>, Error> {
        let rows = self
            .store
            .list_records(client_id, filter, before, limit)
            .await?;
        let mut event = self
            .event(actor, Action::VaultRecordsListed)
            .resource("client", &client_id.to_string())
            .scope(Some(client_id), filter.matter_id);
        if let Some(category) = filter.category {
            event = event.category(category.as_str());
        }
        self.record_reads(vec![event.build()]).await?;
        Ok(rows)
    }

    // --------------------------------------------------------------- shredding

    /// Destroys a record's key, and the keys of every other version of it
    /// (those it corrected and those that corrected it): a record shredded
    /// leaves no readable copy in its history. Refused for all of them if
    /// one is an original or a hold covers the scope. One event per version
    /// destroyed.
    pub async fn shred_record(
        &self,
        actor: &Actor,
        id: Uuid,
        order: &str,
    ) -> Result<RecordShred, Error> {
        // A correction committed between the look-up and the shred adds a
        // version: the shred then writes nothing and looks again.
        for _ in 0..3 {
            let row = self.load(id).await?;
            let (current, mut live) = self.chain(&row).await?;
            live.retain(|v| !is_shredded(v));
            if live.is_empty() {
                return Ok(RecordShred {
                    record: row,
                    destroyed: Vec::new(),
                    event_ids: Vec::new(),
                });
            }
            let scope = self.scope_row(row.scope_id).await?;
            let refusal = if live.iter().any(|v| v.original == 1) {
                Some((Error::Originals, "originals"))
            } else {
                self.held(&scope).await?
            };
            if let Some((error, reason)) = refusal {
                self.refused_shred(actor, "record", id, &scope, reason)
                    .await;
                return Err(error);
            }
            let now = Utc::now();
            let events: Vec<AuditEvent> = live
                .iter()
                .map(|version| {
                    self.event(actor, Action::VaultRecordShredded)
                        .resource("record", &version.id.to_string())
                        .scope(Some(version.client_id), version.matter_id)
                        .category(&version.category)
                        .outcome(Outcome::Allowed, &format!("order-{order}"))
                        .build()
                })
                .collect();
            let mut statements = vec![store::still_current(current)];
            statements.extend(
                live.iter()
                    .map(|version| store::shred_record(version.id, order, now).expecting(1)),
            );
            match self.store.db().transact(statements, &events).await {
                Ok(_) => {
                    let mut destroyed = Vec::with_capacity(live.len());
                    for version in &live {
                        destroyed.push(self.load(version.id).await?);
                    }
                    return Ok(RecordShred {
                        record: self.load(id).await?,
                        destroyed,
                        event_ids: events.into_iter().map(|e| e.id).collect(),
                    });
                }
                // Corrected or shredded meanwhile (by another replica, or
                // with its scope), or a hold arrived after the check above.
                Err(TransactError::Unmet { .. }) => {
                    let scope = self.scope_row(row.scope_id).await?;
                    if let Some((error, reason)) = self.held(&scope).await? {
                        self.refused_shred(actor, "record", id, &scope, reason)
                            .await;
                        return Err(error);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(
            "the record kept changing during the shred; retry",
        ))
    }

    /// Every version of a record (metadata only, never values), oldest
    /// first, and whether a legal hold covers its scope: what a records
    /// manager is shown before asking retention to erase it.
    pub async fn history(&self, id: Uuid) -> Result<(Vec<RecordRow>, bool), Error> {
        let row = self.load(id).await?;
        let (_, mut versions) = self.chain(&row).await?;
        versions.sort_by_key(|v| v.version);
        let scope = self.scope_row(row.scope_id).await?;
        Ok((versions, self.held(&scope).await?.is_some()))
    }

    /// The current version of `row`'s record and all its versions (`row`
    /// included), following the chain of corrections both ways.
    async fn chain(&self, row: &RecordRow) -> Result<(Uuid, Vec<RecordRow>), Error> {
        let mut versions = vec![row.clone()];
        let mut current = row.id;
        for forward in [false, true] {
            let mut at = row.clone();
            while let Some(next) = if forward {
                at.superseded_by
            } else {
                at.supersedes
            } {
                // A chain is as long as the record's corrections; a loop
                // could only come from a corrupt database.
                if versions.iter().any(|v| v.id == next) {
                    return Err(Error::Integrity);
                }
                at = self.load(next).await?;
                versions.push(at.clone());
            }
            if forward {
                current = at.id;
            }
        }
        Ok((current, versions))
    }

    /// Whether a legal hold covers `scope`: the refusal and its reason.
    async fn held(&self, scope: &ScopeRow) -> Result<Option<(Error, &'static str)>, Error> {
        Ok(
            (scope.hold_count > 0 || !self.store.holds_covering(scope).await?.is_empty())
                .then_some((Error::Held, "legal_hold")),
        )
    }

    /// Why `scope` may not be shredded now, if it may not: a legal hold
    /// covers it, or it holds originals that go back to the client.
    async fn shred_refusal(
        &self,
        scope: &ScopeRow,
    ) -> Result<Option<(Error, &'static str)>, Error> {
        if let Some(refusal) = self.held(scope).await? {
            return Ok(Some(refusal));
        }
        Ok((self.store.original_count(scope.id).await? > 0)
            .then_some((Error::Originals, "originals")))
    }

    async fn refused_shred(
        &self,
        actor: &Actor,
        kind: &str,
        id: Uuid,
        scope: &ScopeRow,
        reason: &str,
    ) {
        let action = if kind == "record" {
            Action::VaultRecordShredded
        } else {
            Action::VaultScopeShredded
        };
        let event = self
            .event(actor, action)
            .resource(kind, &id.to_string())
            .scope(Some(scope.client_id), scope.matter_id)
            .category(&scope.category)
            .outcome(Outcome::Denied, reason)
            .build();
        if let Err(e) = self.commit(Vec::new(), &[event]).await {
            tracing::error!(error = %e, "refused shred not recorded");
        }
    }

    /// Destroys a scope key — at once, or after a pending window.
    pub async fn shred_scope(
        &self,
        actor: &Actor,
        id: Uuid,
        order: &str,
        window: Option<Duration>,
    ) -> Result<ScopeRow, Error> {
        let scope = self.scope_row(id).await?;
        if scope.state() == ScopeState::Shredded {
            return Ok(scope);
        }
        if let Some((error, reason)) = self.shred_refusal(&scope).await? {
            self.refused_shred(actor, "scope", id, &scope, reason).await;
            return Err(error);
        }
        let window = window.unwrap_or(self.settings.destruction_window);
        let now = Utc::now();
        let base = |action| {
            self.scope_event(actor, action, &scope)
                .outcome(Outcome::Allowed, &format!("order-{order}"))
        };
        let (statements, event) = if window.is_zero() {
            let event = base(Action::VaultScopeShredded).build();
            (store::shred_scope(id, order, now, &event.id), event)
        } else {
            if scope.state() == ScopeState::PendingDestruction {
                return Ok(scope);
            }
            let due = now
                + chrono::Duration::from_std(window)
                    .map_err(|_| Error::Conflict("pending window too long"))?;
            // The reason says when the key goes, so that a restore from a
            // backup taken before this can stage it again as it was.
            let event = self
                .scope_event(actor, Action::VaultScopeDestructionScheduled, &scope)
                .outcome(
                    Outcome::Allowed,
                    &format!("order-{order}_due-{}", due.timestamp()),
                )
                .build();
            (store::schedule_destruction(id, order, due), event)
        };
        match self.store.db().transact(statements, &[event]).await {
            Ok(_) => {}
            // Another replica acted first, or a hold or an original
            // arrived after the checks above.
            Err(TransactError::Unmet { .. }) => {
                let now_row = self.scope_row(id).await?;
                match now_row.state() {
                    ScopeState::Shredded => {
                        self.keys.cache().evict(id);
                        return Ok(now_row);
                    }
                    ScopeState::PendingDestruction if !window.is_zero() => return Ok(now_row),
                    _ => {}
                }
                let Some((error, reason)) = self.shred_refusal(&now_row).await? else {
                    return Err(Error::Conflict("the scope changed during the shred; retry"));
                };
                self.refused_shred(actor, "scope", id, &now_row, reason)
                    .await;
                return Err(error);
            }
            Err(e) => return Err(e.into()),
        }
        self.keys.cache().evict(id);
        self.scope_row(id).await
    }

    /// Cancels a pending destruction.
    pub async fn cancel_destruction(
        &self,
        actor: &Actor,
        id: Uuid,
        reason: &str,
    ) -> Result<ScopeRow, Error> {
        let scope = self.scope_row(id).await?;
        match scope.state() {
            ScopeState::Active => {
                return Err(Error::Conflict("the scope is not pending destruction"));
            }
            ScopeState::Shredded => return Err(Error::Shredded("scope")),
            ScopeState::PendingDestruction => {}
        }
        // The reason is free text: it travels sealed under the scope's key.
        let key = self.scope_key_for_sealing(&scope).await?;
        let event = self
            .scope_event(actor, Action::VaultScopeDestructionCancelled, &scope)
            .sealed_text(key.seal_text(reason)?, &id.to_string())
            .build();
        match self
            .store
            .db()
            .transact(vec![store::cancel_destruction(id).expecting(1)], &[event])
            .await
        {
            Ok(_) => {}
            Err(TransactError::Unmet { .. }) => {
                return Err(Error::Conflict("the destruction already took effect"));
            }
            Err(e) => return Err(e.into()),
        }
        self.scope_row(id).await
    }

    /// Carries out pending destructions that are due; returns how many.
    pub async fn destroy_due(&self, now: DateTime<Utc>) -> Result<usize, Error> {
        let actor = Actor::Service {
            peer: crate::NAME.spiffe_id(&self.settings.trust_domain),
        };
        let mut done = 0;
        for scope in self.store.due_destructions(now).await? {
            let order = scope.shred_order.clone().unwrap_or_default();
            let event = self
                .scope_event(&actor, Action::VaultScopeShredded, &scope)
                .outcome(Outcome::Allowed, &format!("order-{order}"))
                .build();
            match self
                .store
                .db()
                .transact(
                    store::shred_scope(scope.id, &order, now, &event.id),
                    &[event],
                )
                .await
            {
                Ok(_) => {
                    self.keys.cache().evict(scope.id);
                    done += 1;
                }
                Err(TransactError::Unmet { .. }) => {
                    tracing::info!(scope_id = %scope.id, "pending destruction not carried out: held or changed");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }

    // ----------------------------------------------------------------- holds

    /// Records a legal hold; pending destructions it covers are suspended.
    /// Returns the scopes it covers.
    pub async fn place_hold(
        &self,
        actor: &Actor,
        hold_id: Uuid,
        client_id: Uuid,
        cover: store::HoldCover,
    ) -> Result<Vec<Uuid>, Error> {
        let cover = match cover {
            store::HoldCover::Scopes(mut ids) => {
                ids.sort();
                ids.dedup();
                for id in &ids {
                    let scope = self.scope_row(*id).await?;
                    if scope.client_id != client_id {
                        return Err(Error::Conflict(
                            "a scope the hold names belongs to another client",
                        ));
                    }
                }
                store::HoldCover::Scopes(ids)
            }
            filter => filter,
        };
        let (matter_id, category) = match &cover {
            store::HoldCover::Filter(m, c) => (*m, *c),
            store::HoldCover::Scopes(_) => (None, None),
        };
        if let Some(existing) = self.store.hold(hold_id).await? {
            let existing_cover = if existing.scoped != 0 {
                store::HoldCover::Scopes(self.store.scopes_covered(&existing).await?)
            } else {
                store::HoldCover::Filter(
                    existing.matter_id,
                    existing.category.as_deref().and_then(Category::parse),
                )
            };
            let same = existing.client_id == client_id && existing_cover == cover;
            if !same {
                return Err(Error::Conflict("a hold with this id covers something else"));
            }
            if existing.released_at.is_some() {
                return Err(Error::Conflict("the hold was released; place a new one"));
            }
            return Ok(self.store.scopes_covered(&existing).await?);
        }
        let mut b = self
            .event(actor, Action::VaultHoldPlaced)
            .resource("hold", &hold_id.to_string())
            .scope(Some(client_id), matter_id);
        if let Some(c) = category {
            b = b.category(c.as_str());
        }
        // Each pending destruction the hold suspends is an event of its
        // own, so that the log shows why the scope is readable again.
        let mut events = vec![b.build()];
        for scope in self.pending_covered(client_id, &cover).await? {
            events.push(
                self.scope_event(actor, Action::VaultScopeDestructionSuspended, &scope)
                    .outcome(Outcome::Allowed, &format!("hold-{hold_id}"))
                    .build(),
            );
        }
        let mut statements = store::insert_hold(hold_id, client_id, &cover, actor.id(), Utc::now());
        statements.push(store::recount_holds(client_id));
        statements.push(store::suspend_destructions(client_id));
        self.commit(statements, &events).await?;
        let hold = self
            .store
            .hold(hold_id)
            .await?
            .ok_or(Error::NotFound("hold"))?;
        Ok(self.store.scopes_covered(&hold).await?)
    }

    /// The client's scopes pending destruction that `cover` covers.
    async fn pending_covered(
        &self,
        client_id: Uuid,
        cover: &store::HoldCover,
    ) -> Result<Vec<ScopeRow>, Error> {
        let mut covered = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_scopes(
                    Some(client_id),
                    None,
                    Some("pending_destruction"),
                    after,
                    1000,
                )
                .await?;
            let Some(last) = page.last() else {
                return Ok(covered);
            };
            after = Some(last.id);
            covered.extend(page.into_iter().filter(|scope| match cover {
                store::HoldCover::Scopes(ids) => ids.binary_search(&scope.id).is_ok(),
                store::HoldCover::Filter(matter, category) => {
                    matter.is_none_or(|m| scope.matter_id == Some(m))
                        && category.is_none_or(|c| scope.category == c.as_str())
                }
            }));
        }
    }

    /// Releases a legal hold.
    pub async fn release_hold(&self, actor: &Actor, hold_id: Uuid) -> Result<(), Error> {
        let hold = self
            .store
            .hold(hold_id)
            .await?
            .ok_or(Error::NotFound("hold"))?;
        if hold.released_at.is_some() {
            return Ok(());
        }
        let mut b = self
            .event(actor, Action::VaultHoldReleased)
            .resource("hold", &hold_id.to_string())
            .scope(Some(hold.client_id), hold.matter_id);
        if let Some(c) = &hold.category {
            b = b.category(c);
        }
        self.commit(
            vec![
                store::release_hold(hold_id, Utc::now()),
                store::recount_holds(hold.client_id),
            ],
            &[b.build()],
        )
        .await?;
        Ok(())
    }

    /// Records that a scope's originals went back to the client: they are
    /// no longer originals the firm holds, and the scope can be shredded on
    /// its schedule. Returns how many were released (0 when repeated).
    pub async fn release_originals(
        &self,
        actor: &Actor,
        scope_id: Uuid,
        return_id: Uuid,
    ) -> Result<i64, Error> {
        let scope = self.scope_row(scope_id).await?;
        let count = self.store.original_count(scope_id).await?;
        if count == 0 {
            return Ok(0);
        }
        let event = self
            .scope_event(actor, Action::VaultOriginalsReturned, &scope)
            .outcome(Outcome::Allowed, &format!("return-{return_id}"))
            .build();
        self.commit(vec![store::release_originals(scope_id)], &[event])
            .await?;
        Ok(count)
    }

    // ------------------------------------------------------------ sealed text

    /// Seals text for an audit event about `scope`.
    pub async fn seal_text(
        &self,
        actor: &Actor,
        scope: &ScopeRef,
        text: &str,
    ) -> Result<(Vec<u8>, Uuid), Error> {
        let (row, key) = self.scope_for_write(actor, scope).await?;
        Ok((key.seal_text(text)?, row.id))
    }

    /// Opens sealed audit text; the opening is recorded before the text is
    /// returned.
    pub async fn open_text(
        &self,
        actor: &Actor,
        scope_id: Uuid,
        sealed: &[u8],
    ) -> Result<Zeroizing<String>, Error> {
        let row = self.scope_row(scope_id).await?;
        let key = self.live_key(&row).await?;
        let text = key.open_text(sealed)?;
        let event = self
            .event(actor, Action::VaultSealedTextOpened)
            .resource("scope", &scope_id.to_string())
            .scope(Some(row.client_id), row.matter_id)
            .category(&row.category)
            .build();
        self.record_reads(vec![event]).await?;
        Ok(text)
    }

    // ----------------------------------------------------------------- rewrap

    /// Rewraps up to `batch` scope keys under the active KMS key, those
    /// after scope `after` (from the first if `None`). A key the KMS
    /// refuses to rewrap, or that does not unwrap under its scope, is
    /// listed and recorded as an audit event, and the others go on; a KMS
    /// that cannot be reached ends the call (what was rewrapped stays).
    pub async fn rewrap(
        &self,
        actor: &Actor,
        batch: i64,
        after: Option<Uuid>,
    ) -> Result<Rewrapped, Error> {
        let active = self.keys.kms().active_key_id();
        let scopes = self.store.scopes_to_rewrap(&active, after, batch).await?;
        let mut outcome = Rewrapped {
            next: if i64::try_from(scopes.len()).unwrap_or(i64::MAX) < batch {
                None
            } else {
                scopes.last().map(|s| s.id)
            },
            ..Rewrapped::default()
        };
        for scope in &scopes {
            let (Some(old), Some(ciphertext), Some(scope_ref)) = (
                scope.kms_key_id.clone(),
                scope.wrapped_key.clone(),
                scope.scope_ref(),
            ) else {
                continue;
            };
            let current = WrappedKey {
                key_id: old.clone(),
                ciphertext,
            };
            let wrapped = match self.keys.rewrap(scope.id, &scope_ref, &current).await {
                Ok(wrapped) => wrapped,
                Err(KeyError::Kms(e)) if !matches!(e, KmsError::Unavailable(_)) => {
                    let reason = crate::keys::kms_failure_reason(&e);
                    // Refused, though its own key still opens it: the KMS
                    // refuses the active key, and would refuse every other
                    // scope key too.
                    if reason == "refused" && self.keys.opens(scope.id, &scope_ref, &current).await
                    {
                        return Err(Error::ActiveKeyRefused);
                    }
                    tracing::warn!(scope_id = %scope.id, reason, "scope key not rewrapped");
                    let event = self
                        .scope_event(actor, Action::VaultScopeKeyRewrapFailed, scope)
                        .outcome(Outcome::Failed, reason)
                        .build();
                    self.commit(Vec::new(), &[event]).await?;
                    outcome.failed.push((scope.id, reason));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let rows = self
                .commit(
                    vec![store::rewrap_scope(
                        scope.id,
                        &old,
                        &wrapped.key_id,
                        &wrapped.ciphertext,
                    )],
                    &[],
                )
                .await?;
            outcome.rewrapped += i64::try_from(rows.first().copied().unwrap_or(0)).unwrap_or(0);
        }
        outcome.remaining = self.store.rewrap_remaining(&active).await?;
        if outcome.rewrapped > 0 {
            let event = self
                .event(actor, Action::VaultKeysRewrapped)
                .resource("kms_key", &active)
                .outcome(
                    Outcome::Allowed,
                    &format!(
                        "rewrapped-{}-remaining-{}",
                        outcome.rewrapped, outcome.remaining
                    ),
                )
                .build();
            self.commit(Vec::new(), &[event]).await?;
        }
        Ok(outcome)
    }
}

/// `event` (a read of a record, but for its outcome) completed with why the
/// record's stored data did not open, and counted in `stats`; `None` when
/// `error` is not about stored data.
pub(crate) fn unreadable(
    stats: &crate::keys::KeyStats,
    event: EventBuilder,
    error: &Error,
) -> Option<AuditEvent> {
    let reason = error.unreadable_reason()?;
    stats.unreadable_found(reason);
    Some(event.outcome(Outcome::Failed, reason).build())
}

/// What one call of [`Vault::rewrap`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rewrapped {
    /// Scope keys rewrapped.
    pub rewrapped: i64,
    /// Live scope keys still wrapped under another KMS key.
    pub remaining: i64,
    /// The last scope it went through, to go on after; `None` when it
    /// reached the last scope key to rewrap.
    pub next: Option<Uuid>,
    /// Scope keys it could not rewrap, and why (a reason of
    /// [`crate::keys::KMS_FAILURE_REASONS`]).
    pub failed: Vec<(Uuid, &'static str)>,
}
