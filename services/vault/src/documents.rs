//! Documents: streamed in, encrypted in 64 KiB STREAM segments as they
//! arrive, visible only once complete; streamed out segment by segment after
//! the download is recorded. Neither direction holds a whole file in memory.

use std::collections::VecDeque;

use aws_lc_rs::digest;
use chrono::Utc;
use futures::{Stream, StreamExt};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::crypto::{DocumentBinding, RecordKey, SEGMENT_BYTES, SegmentOpener};
use crate::domain::{FieldSelection, FieldType, ScopeRef};
use crate::error::Error;
use crate::masking::Mask;
use crate::records::{Actor, ReadIntent, Vault, decrypt_fields, encrypt_fields};
use crate::store::{self, RecordRow};
use confidant_runtime::audit::{Action, EventBuilder};
use confidant_runtime::error::Violations;

/// Segments written per transaction while uploading.
const SEGMENTS_PER_WRITE: usize = 16;
/// Segments read per query while downloading.
const SEGMENTS_PER_READ: i64 = 16;
/// Largest chunk a client may send in one message.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// A validated upload header.
#[derive(Debug, Clone)]
pub struct NewDocument {
    /// Its scope.
    pub scope: ScopeRef,
    /// The file name.
    pub filename: String,
    /// The media type.
    pub media_type: String,
    /// The size the client declared: the upload completes only at exactly
    /// this many bytes.
    pub size: u64,
    /// The digest the client declared, if any.
    pub sha256: Option<Vec<u8>>,
    /// The document version this one corrects, and why.
    pub supersedes: Option<(Uuid, String)>,
}

fn valid_filename(name: &str) -> bool {
    let chars = name.chars().count();
    (1..=255).contains(&chars)
        && !name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
        && name != "."
        && name != ".."
}

fn valid_media_type(media_type: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
    };
    media_type
        .split_once('/')
        .is_some_and(|(t, sub)| token(t) && token(sub))
}

impl NewDocument {
    /// Validates an upload header; every violation named under `header`.
    pub fn parse(
        header: &confidant_proto::vault::v1::DocumentHeader,
        max_bytes: u64,
    ) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let client_id = crate::domain::required_uuid(&mut v, "header.client_id", &header.client_id);
        let matter_id = crate::domain::optional_uuid(&mut v, "header.matter_id", &header.matter_id);
        let category = crate::domain::required_category(&mut v, "header.category", header.category);
        if !valid_filename(&header.filename) {
            v.add(
                "header.filename",
                "must be 1 to 255 characters without '/', '\\' or control characters",
            );
        }
        if !valid_media_type(&header.media_type) {
            v.add(
                "header.media_type",
                "must be a media type such as application/pdf",
            );
        }
        crate::domain::optional_uuid(&mut v, "header.request_id", &header.request_id);
        let size = u64::try_from(header.size_bytes)
            .ok()
            .filter(|s| *s <= max_bytes);
        if size.is_none() {
            v.add(
                "header.size_bytes",
                format!("must be between 0 and {max_bytes} (vault.max_document_bytes)"),
            );
        }
        if !header.sha256.is_empty() && header.sha256.len() != 32 {
            v.add("header.sha256", "must be 32 bytes (SHA-256) when given");
        }
        let supersedes =
            crate::domain::optional_uuid(&mut v, "header.supersedes", &header.supersedes);
        let reason = header.reason.trim();
        if header.supersedes.is_empty() {
            if !reason.is_empty() {
                v.add("header.reason", "is given only with header.supersedes");
            }
        } else if reason.is_empty() {
            v.add(
                "header.reason",
                "is required with header.supersedes: say why the document is replaced",
            );
        } else if reason.chars().count() > crate::domain::MAX_JUSTIFICATION_CHARS {
            v.add("header.reason", "must be at most 1000 characters");
        }
        match (client_id, category, size, v.is_empty()) {
            (Some(client_id), Some(category), Some(size), true) => Ok(Self {
                scope: ScopeRef {
                    client_id,
                    matter_id,
                    category,
                },
                filename: header.filename.clone(),
                media_type: header.media_type.clone(),
                size,
                sha256: (!header.sha256.is_empty()).then(|| header.sha256.clone()),
                supersedes: supersedes.map(|id| (id, reason.to_owned())),
            }),
            _ => Err(v),
        }
    }
}

/// An opened document being read out.
pub struct DocumentReader {
    store: crate::store::VaultStore,
    /// The document's row.
    pub row: RecordRow,
    /// Its file name.
    pub filename: String,
    /// Its media type.
    pub media_type: String,
    /// The audit event that recorded the download.
    pub audit_event_id: String,
    opener: Option<SegmentOpener>,
    buffered: VecDeque<(i32, Vec<u8>)>,
    next: i32,
    segments: i32,
    hasher: digest::Context,
    /// The event recording that the document did not open, but for its
    /// outcome; taken when it is recorded.
    unreadable: Option<EventBuilder>,
    stats: std::sync::Arc<crate::keys::KeyStats>,
}

impl std::fmt::Debug for DocumentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentReader")
            .field("record_id", &self.row.id)
            .field("next", &self.next)
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

impl DocumentReader {
    /// The next plaintext segment; `None` after the last, once the digest
    /// has been checked against the one recorded at upload. A segment that
    /// does not open, or one missing, out of place or altered, is recorded
    /// as an audit event (`vault.record.unreadable`), once.
    pub async fn next_segment(&mut self) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
        let result = self.open_next().await;
        if let Err(e) = &result
            && e.unreadable_reason().is_some()
            && let Some(event) = self.unreadable.take()
            && let Some(event) = crate::records::unreadable(&self.stats, event, e)
            && let Err(e) = self.store.db().transact(Vec::new(), &[event]).await
        {
            tracing::error!(error = %e, "unreadable document not recorded");
        }
        result
    }

    async fn open_next(&mut self) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
        if self.next >= self.segments {
            return Ok(None);
        }
        if self.buffered.is_empty() {
            let page = self
                .store
                .segments(self.row.id, self.next, SEGMENTS_PER_READ)
                .await?;
            self.buffered.extend(page);
        }
        // A missing or out-of-place segment is a truncated or reordered
        // document.
        let Some((seq, sealed)) = self.buffered.pop_front() else {
            return Err(Error::Integrity);
        };
        if seq != self.next {
            return Err(Error::Integrity);
        }
        let last = self.next + 1 == self.segments;
        let plain = if last {
            self.opener
                .take()
                .ok_or(Error::Integrity)?
                .open_last(&sealed)?
        } else {
            self.opener
                .as_mut()
                .ok_or(Error::Integrity)?
                .open_next(&sealed)?
        };
        self.hasher.update(&plain);
        self.next += 1;
        if last {
            let digest = self.hasher.clone().finish();
            if self.row.doc_sha256.as_deref() != Some(digest.as_ref()) {
                return Err(Error::Integrity);
            }
        }
        Ok(Some(plain))
    }
}

impl Vault {
    /// Stores a document from a stream of chunks. Nothing becomes visible
    /// unless the whole stream arrives; on any failure what was written is
    /// removed.
    pub async fn upload<S>(
        &self,
        actor: &Actor,
        doc: &NewDocument,
        request_id: Option<&str>,
        mut chunks: S,
        max_bytes: u64,
    ) -> Result<RecordRow, Error>
    where
        S: Stream<Item = Result<Vec<u8>, Error>> + Unpin,
    {
        if let Some(existing) = self.stored_before(actor, request_id).await? {
            return Ok(existing);
        }
        if let Some((old, _)) = &doc.supersedes {
            self.replaceable(*old, doc).await?;
        }
        let (scope_row, scope_key) = self.scope_for_write(actor, &doc.scope).await?;
        let sealed_reason = match &doc.supersedes {
            Some((_, reason)) => Some(scope_key.seal_text(reason)?),
            None => None,
        };
        let id = Uuid::now_v7();
        let record_key = RecordKey::generate()?;
        let at = DocumentBinding {
            record_id: id,
            scope_id: scope_row.id,
            key_version: scope_key.key_version(),
        };
        let (sealer, prefix) = record_key.document_sealer(&at)?;
        let fields = encrypt_fields(
            id,
            scope_row.id,
            scope_key.key_version(),
            &record_key,
            [
                ("filename", FieldType::Text, doc.filename.as_bytes()),
                ("media_type", FieldType::Text, doc.media_type.as_bytes()),
            ]
            .into_iter(),
        )?;
        let encrypted = store::EncryptedRecord {
            id,
            scope_id: scope_row.id,
            scope: doc.scope,
            key_version: scope_key.key_version(),
            wrapped_key: scope_key.wrap_record_key(id, &record_key)?,
            fields,
            field_names: "filename,media_type".into(),
            created_at: Utc::now(),
            created_by: actor.id().to_owned(),
            request_id: request_id.map(str::to_owned),
            document_nonce: Some(prefix.to_vec()),
            original: false,
        };
        self.commit(vec![encrypted.insert()], &[]).await?;

        let written = async {
            let mut sealer = Some(sealer);
            let mut pending: Zeroizing<Vec<u8>> =
                Zeroizing::new(Vec::with_capacity(2 * SEGMENT_BYTES));
            let mut batch = Vec::with_capacity(SEGMENTS_PER_WRITE);
            let mut hasher = digest::Context::new(&digest::SHA256);
            let mut size: u64 = 0;
            let mut seq: i32 = 0;
            while let Some(chunk) = chunks.next().await {
                let chunk = Zeroizing::new(chunk?);
                size += chunk.len() as u64;
                if size > max_bytes.min(doc.size) {
                    let mut v = Violations::new();
                    v.add(
                        "chunk",
                        format!(
                            "the content is longer than header.size_bytes ({}) or vault.max_document_bytes ({max_bytes})",
                            doc.size
                        ),
                    );
                    return Err(Error::Invalid(v));
                }
                hasher.update(&chunk);
                pending.extend_from_slice(&chunk);
                // Keep back at least one byte past a full segment, so the
                // last segment is sealed as the last.
                while pending.len() > SEGMENT_BYTES {
                    let rest = Zeroizing::new(pending.split_off(SEGMENT_BYTES));
                    let sealed = sealer
                        .as_mut()
                        .ok_or(Error::Integrity)?
                        .seal_next(&pending)?;
                    *pending = rest.to_vec();
                    batch.push(store::insert_segment(id, seq, sealed));
                    seq = seq.checked_add(1).ok_or(Error::Integrity)?;
                    if batch.len() == SEGMENTS_PER_WRITE {
                        self.commit(std::mem::take(&mut batch), &[]).await?;
                    }
                }
            }
            // A stream that ends short of the declared size was cut off.
            if size != doc.size {
                return Err(Error::StreamAborted);
            }
            let sealed = sealer.take().ok_or(Error::Integrity)?.seal_last(&pending)?;
            batch.push(store::insert_segment(id, seq, sealed));
            self.commit(batch, &[]).await?;
            let digest = hasher.finish();
            if doc.sha256.as_deref().is_some_and(|d| d != digest.as_ref()) {
                let mut v = Violations::new();
                v.add("header.sha256", "does not match the content received");
                return Err(Error::Invalid(v));
            }
            Ok::<_, Error>((size, digest.as_ref().to_vec(), seq + 1))
        }
        .await;

        let outcome = match written {
            Ok((size, sha256, segments)) => {
                let mut event = self
                    .event(
                        actor,
                        if doc.supersedes.is_some() {
                            Action::VaultRecordCorrected
                        } else {
                            Action::VaultRecordCreated
                        },
                    )
                    .resource("document", &id.to_string())
                    .scope(Some(doc.scope.client_id), doc.scope.matter_id)
                    .category(doc.scope.category.as_str());
                let mut statements = vec![
                    store::complete_upload(
                        id,
                        i64::try_from(size).unwrap_or(i64::MAX),
                        sha256,
                        segments,
                    )
                    .expecting(1),
                ];
                if let (Some((old, _)), Some(sealed)) = (&doc.supersedes, sealed_reason) {
                    event = event
                        .outcome(
                            confidant_proto::audit::v1::Outcome::Allowed,
                            &format!("supersedes-{old}"),
                        )
                        .sealed_text(sealed, &scope_row.id.to_string());
                    statements.extend(store::document_correction(*old, id, Utc::now()));
                }
                let committed = self.commit(statements, &[event.build()]).await;
                match (&committed, &doc.supersedes) {
                    // The version it replaces was corrected, shredded or
                    // staged for destruction while the bytes arrived.
                    (Err(Error::Conflict(_)), Some((old, _))) => {
                        self.replaceable(*old, doc).await.and(Err(Error::Conflict(
                            "the scope changed during the upload; retry",
                        )))
                    }
                    _ => committed,
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            if let Err(cleanup) = self.commit(store::discard_upload(id), &[]).await {
                tracing::warn!(record_id = %id, error = %cleanup, "unfinished upload left for the sweeper");
            }
            return Err(e);
        }
        self.load(id).await
    }

    /// Whether document `old` can be replaced by `doc`: the current version
    /// of a complete, readable document of the same client, matter and
    /// category. A document elsewhere is refused as one that does not
    /// exist, so an upload learns nothing of other scopes.
    async fn replaceable(&self, old: Uuid, doc: &NewDocument) -> Result<(), Error> {
        let elsewhere = || {
            let mut v = Violations::new();
            v.add(
                "header.supersedes",
                "must name a document of the same client, matter and category",
            );
            Error::Invalid(v)
        };
        let row = match self.load(old).await {
            Ok(row) => row,
            Err(Error::NotFound(_)) => return Err(elsewhere()),
            Err(e) => return Err(e),
        };
        if crate::records::scope_ref_of(&row)? != doc.scope {
            return Err(elsewhere());
        }
        Self::correctable(&row, true)
    }

    /// Opens a document for reading after it was allowed: checks the
    /// reader's mask, decrypts its name, records the download durably (fail
    /// closed) and returns a reader of its segments.
    pub async fn open_document(
        &self,
        actor: &Actor,
        row: RecordRow,
        intent: &ReadIntent<'_>,
    ) -> Result<DocumentReader, Error> {
        if !row.is_document() {
            return Err(Error::Conflict("the record is not a document"));
        }
        let category = crate::domain::Category::parse(&row.category).ok_or(Error::Integrity)?;
        if self
            .masking_rules()
            .await?
            .document_mask(intent.roles, category)
            != Mask::Clear
        {
            return Err(Error::Denied {
                reason: "masked_for_role".into(),
                message: "the reader's roles do not see documents of this category".into(),
            });
        }
        let opened = async {
            let (scope_key, record_key) = self.record_keys(&row).await?;
            let fields = decrypt_fields(&row, &record_key, &FieldSelection::All)?;
            Ok::<_, Error>((scope_key, record_key, fields))
        };
        let (scope_key, record_key, fields) = match opened.await {
            Ok(opened) => opened,
            Err(e) => {
                self.record_unreadable(actor, &row, intent, &e).await;
                return Err(e);
            }
        };
        let mut filename = String::new();
        let mut media_type = String::new();
        for (name, _, value) in fields {
            let text = String::from_utf8_lossy(&value).into_owned();
            match name.as_str() {
                "filename" => filename = text,
                "media_type" => media_type = text,
                _ => {}
            }
        }
        let prefix = row.doc_nonce.clone().ok_or(Error::Integrity)?;
        let opener = record_key.document_opener(
            &DocumentBinding {
                record_id: row.id,
                scope_id: row.scope_id,
                key_version: row.key_version,
            },
            &prefix,
        )?;
        let sealed = if intent.justification.is_empty() {
            None
        } else {
            Some((scope_key.seal_text(intent.justification)?, row.scope_id))
        };
        let event = self.read_event(actor, &row, intent, sealed, Vec::new());
        let audit_event_id = event.id.clone();
        self.record_reads(vec![event]).await?;
        let segments = row.doc_segments.ok_or(Error::Integrity)?;
        Ok(DocumentReader {
            unreadable: Some(self.unreadable_event(actor, &row, intent)),
            stats: self.keys().shared_stats(),
            store: self.store().clone(),
            row,
            filename,
            media_type,
            audit_event_id,
            opener: Some(opener),
            buffered: VecDeque::new(),
            next: 0,
            segments,
            hasher: digest::Context::new(&digest::SHA256),
        })
    }

    /// Removes uploads that never completed and started before `before`
    /// (their process stopped mid-stream); returns how many.
    pub async fn sweep_abandoned_uploads(
        &self,
        before: chrono::DateTime<Utc>,
    ) -> Result<usize, Error> {
        let ids = self.store().abandoned_uploads(before).await?;
        for id in &ids {
            self.commit(store::discard_upload(*id), &[]).await?;
        }
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_every_broken_rule() {
        let header = confidant_proto::vault::v1::DocumentHeader {
            client_id: String::new(),
            matter_id: "x".into(),
            category: 0,
            filename: "../etc/passwd".into(),
            media_type: "pdf".into(),
            request_id: "nope".into(),
            size_bytes: 2048,
            sha256: vec![1, 2, 3],
            supersedes: "nope".into(),
            reason: " ".into(),
        };
        let err = NewDocument::parse(&header, 1024).unwrap_err();
        let fields: Vec<_> = err.as_slice().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "header.client_id",
                "header.matter_id",
                "header.category",
                "header.filename",
                "header.media_type",
                "header.request_id",
                "header.size_bytes",
                "header.sha256",
                "header.supersedes",
                "header.reason"
            ]
        );
        assert!(valid_filename("Engagement letter (signed).pdf"));
        assert!(valid_media_type(
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        ));
    }
}
