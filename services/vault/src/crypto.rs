//! The vault's cryptography, all from aws-lc-rs: AES-256-GCM for fields,
//! for record keys under their scope key and for sealed audit text, with
//! HKDF-SHA256 separating the scope key's two uses.
//!
//! Every ciphertext is bound by associated data to where it belongs (record
//! id, field name and type, scope id, key version), so a ciphertext copied
//! to another record, field or scope fails to open rather than decrypting
//! under the wrong name.

use aead_stream::aead as stream_aead;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use confidant_runtime::kms::SecretKey;
use uuid::Uuid;
use zeroize::Zeroizing;

/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// Sealed audit text starts with this, so its format can change later.
const SEALED_TEXT_MAGIC: &[u8; 3] = b"st1";

/// Why a crypto operation failed. Carries nothing of the data or keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A ciphertext does not open under this key and associated data:
    /// wrong key, moved, or tampered.
    #[error("ciphertext does not open under this key and binding")]
    Open,
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
}

fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CryptoError::Random)?;
    Ok(out)
}

/// Length-prefixed concatenation: no two different lists encode alike.
fn binding(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for part in parts {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey, CryptoError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| CryptoError::Open)
}

/// `nonce || ciphertext || tag`.
fn seal(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce: [u8; NONCE_LEN] = random()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| CryptoError::Open)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Open);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
    let mut buf = Zeroizing::new(body.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| CryptoError::Open)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// A scope key in clear, with the two keys derived from it: one wraps
/// record keys, one seals audit text. Dropping it zeroizes the key bytes
/// (aws-lc clears its own key schedules when they are freed).
pub struct ScopeKey {
    scope_id: Uuid,
    key_version: i32,
    wrap: LessSafeKey,
    text: LessSafeKey,
}

impl std::fmt::Debug for ScopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeKey")
            .field("scope_id", &self.scope_id)
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

fn derive(key: &SecretKey, info: &[u8]) -> Result<LessSafeKey, CryptoError> {
    let mut out = Zeroizing::new([0u8; 32]);
    Salt::new(HKDF_SHA256, b"confidant.vault.scope-key")
        .extract(key.expose())
        .expand(&[info], HKDF_SHA256)
        .and_then(|okm| okm.fill(out.as_mut()))
        .map_err(|_| CryptoError::Open)?;
    aead_key(out.as_ref())
}

impl ScopeKey {
    /// The scope key of `scope_id` at `key_version`, from the KMS's
    /// plaintext data key.
    pub fn new(scope_id: Uuid, key_version: i32, key: &SecretKey) -> Result<Self, CryptoError> {
        Ok(Self {
            scope_id,
            key_version,
            wrap: derive(key, b"record-key-wrap.v1")?,
            text: derive(key, b"sealed-text.v1")?,
        })
    }

    /// The scope this key belongs to.
    pub fn scope_id(&self) -> Uuid {
        self.scope_id
    }

    /// The scope key's version.
    pub fn key_version(&self) -> i32 {
        self.key_version
    }

    fn record_binding(&self, record_id: Uuid) -> Vec<u8> {
        binding(&[
            b"confidant.vault.record-key.v1",
            record_id.as_bytes(),
            self.scope_id.as_bytes(),
            &self.key_version.to_be_bytes(),
        ])
    }

    /// Wraps a record's key for storage.
    pub fn wrap_record_key(
        &self,
        record_id: Uuid,
        key: &RecordKey,
    ) -> Result<Vec<u8>, CryptoError> {
        seal(
            &self.wrap,
            &self.record_binding(record_id),
            key.bytes.as_ref(),
        )
    }

    /// Unwraps a record's key.
    pub fn unwrap_record_key(
        &self,
        record_id: Uuid,
        wrapped: &[u8],
    ) -> Result<RecordKey, CryptoError> {
        let plain = open(&self.wrap, &self.record_binding(record_id), wrapped)?;
        let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| CryptoError::Open)?;
        Ok(RecordKey {
            bytes: Zeroizing::new(bytes),
            key: aead_key(&bytes)?,
        })
    }

    /// Seals free text for an audit event about this scope.
    pub fn seal_text(&self, text: &str) -> Result<Vec<u8>, CryptoError> {
        let aad = binding(&[b"confidant.vault.sealed-text.v1", self.scope_id.as_bytes()]);
        let mut out = SEALED_TEXT_MAGIC.to_vec();
        out.extend_from_slice(&seal(&self.text, &aad, text.as_bytes())?);
        Ok(out)
    }

    /// Opens text sealed by [`ScopeKey::seal_text`].
    pub fn open_text(&self, sealed: &[u8]) -> Result<Zeroizing<String>, CryptoError> {
        let body = sealed
            .strip_prefix(SEALED_TEXT_MAGIC)
            .ok_or(CryptoError::Open)?;
        let aad = binding(&[b"confidant.vault.sealed-text.v1", self.scope_id.as_bytes()]);
        let plain = open(&self.text, &aad, body)?;
        let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Open)?;
        Ok(Zeroizing::new(text.to_owned()))
    }
}

/// A record's own key, in clear only while the record is written or read.
pub struct RecordKey {
    bytes: Zeroizing<[u8; 32]>,
    key: LessSafeKey,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKey(..)")
    }
}

/// Where a field's ciphertext belongs.
#[derive(Debug, Clone, Copy)]
pub struct FieldBinding<'a> {
    /// The record.
    pub record_id: Uuid,
    /// The scope.
    pub scope_id: Uuid,
    /// The scope key version.
    pub key_version: i32,
    /// The field's name.
    pub name: &'a str,
    /// The field's type (its stored name).
    pub field_type: &'a str,
}

impl FieldBinding<'_> {
    fn aad(&self) -> Vec<u8> {
        binding(&[
            b"confidant.vault.field.v1",
            self.record_id.as_bytes(),
            self.name.as_bytes(),
            self.field_type.as_bytes(),
            self.scope_id.as_bytes(),
            &self.key_version.to_be_bytes(),
        ])
    }
}

impl RecordKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        let bytes = Zeroizing::new(random::<32>()?);
        let key = aead_key(bytes.as_ref())?;
        Ok(Self { bytes, key })
    }

    /// Encrypts a field's value.
    pub fn seal_field(&self, at: &FieldBinding<'_>, value: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal(&self.key, &at.aad(), value)
    }

    /// Decrypts a field's value.
    pub fn open_field(
        &self,
        at: &FieldBinding<'_>,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open(&self.key, &at.aad(), sealed)
    }
}

/// Documents are encrypted in segments of this many plaintext bytes.
pub const SEGMENT_BYTES: usize = 64 * 1024;
/// The random part of a document's STREAM nonce (12-byte GCM nonce minus
/// the 4-byte counter and the 1-byte last-segment flag).
pub const STREAM_PREFIX_LEN: usize = 7;

/// AES-256-GCM from aws-lc-rs, the same as every other sealed value,
/// behind RustCrypto's AEAD traits so that `aead-stream`'s STREAM
/// construction can drive it.
struct StreamCipher(LessSafeKey);

impl stream_aead::AeadCore for StreamCipher {
    type NonceSize = stream_aead::consts::U12;
    type TagSize = stream_aead::consts::U16;
    const TAG_POSITION: stream_aead::TagPosition = stream_aead::TagPosition::Postfix;
}

impl stream_aead::AeadInOut for StreamCipher {
    fn encrypt_inout_detached(
        &self,
        nonce: &stream_aead::Nonce<Self>,
        associated_data: &[u8],
        buffer: stream_aead::inout::InOutBuf<'_, '_, u8>,
    ) -> stream_aead::Result<stream_aead::Tag<Self>> {
        let nonce =
            Nonce::try_assume_unique_for_key(nonce.as_slice()).map_err(|_| stream_aead::Error)?;
        let tag = self
            .0
            .seal_in_place_separate_tag(
                nonce,
                Aad::from(associated_data),
                buffer.into_out_with_copied_in(),
            )
            .map_err(|_| stream_aead::Error)?;
        stream_aead::Tag::<Self>::try_from(tag.as_ref()).map_err(|_| stream_aead::Error)
    }

    fn decrypt_inout_detached(
        &self,
        nonce: &stream_aead::Nonce<Self>,
        associated_data: &[u8],
        buffer: stream_aead::inout::InOutBuf<'_, '_, u8>,
        tag: &stream_aead::Tag<Self>,
    ) -> stream_aead::Result<()> {
        let nonce =
            Nonce::try_assume_unique_for_key(nonce.as_slice()).map_err(|_| stream_aead::Error)?;
        self.0
            .open_in_place_separate_tag(
                nonce,
                Aad::from(associated_data),
                tag.as_slice(),
                buffer.into_out_with_copied_in(),
            )
            .map(|_| ())
            .map_err(|_| stream_aead::Error)
    }
}

/// Where a document's segments belong.
#[derive(Debug, Clone, Copy)]
pub struct DocumentBinding {
    /// The record.
    pub record_id: Uuid,
    /// The scope.
    pub scope_id: Uuid,
    /// The scope key version.
    pub key_version: i32,
}

impl DocumentBinding {
    fn aad(&self) -> Vec<u8> {
        binding(&[
            b"confidant.vault.document.v1",
            self.record_id.as_bytes(),
            self.scope_id.as_bytes(),
            &self.key_version.to_be_bytes(),
        ])
    }
}

/// Seals a document segment by segment with the STREAM construction
/// (RustCrypto `aead-stream`, 32-bit big-endian counter and a last-segment
/// flag in the nonce): a dropped, reordered or truncated segment fails to
/// open.
pub struct SegmentSealer {
    stream: aead_stream::EncryptorBE32<StreamCipher>,
    aad: Vec<u8>,
}

impl std::fmt::Debug for SegmentSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SegmentSealer(..)")
    }
}

impl SegmentSealer {
    /// Seals a segment that is not the last.
    pub fn seal_next(&mut self, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        use stream_aead::Payload;
        self.stream
            .encrypt_next(Payload {
                msg: plain,
                aad: &self.aad,
            })
            .map_err(|_| CryptoError::Open)
    }

    /// Seals the last segment (possibly empty).
    pub fn seal_last(self, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        use stream_aead::Payload;
        self.stream
            .encrypt_last(Payload {
                msg: plain,
                aad: &self.aad,
            })
            .map_err(|_| CryptoError::Open)
    }
}

/// Opens a document's segments in order.
pub struct SegmentOpener {
    stream: aead_stream::DecryptorBE32<StreamCipher>,
    aad: Vec<u8>,
}

impl std::fmt::Debug for SegmentOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SegmentOpener(..)")
    }
}

impl SegmentOpener {
    /// Opens the next segment, which must not be the last.
    pub fn open_next(&mut self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use stream_aead::Payload;
        self.stream
            .decrypt_next(Payload {
                msg: sealed,
                aad: &self.aad,
            })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }

    /// Opens the last segment.
    pub fn open_last(self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use stream_aead::Payload;
        self.stream
            .decrypt_last(Payload {
                msg: sealed,
                aad: &self.aad,
            })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }
}

impl RecordKey {
    /// The document key: derived from the record key, so that segment
    /// nonces never share a key with field nonces.
    fn stream_cipher(&self) -> Result<StreamCipher, CryptoError> {
        let mut out = Zeroizing::new([0u8; 32]);
        Salt::new(HKDF_SHA256, b"confidant.vault.record-key")
            .extract(self.bytes.as_ref())
            .expand(&[b"document-stream.v1"], HKDF_SHA256)
            .and_then(|okm| okm.fill(out.as_mut()))
            .map_err(|_| CryptoError::Open)?;
        Ok(StreamCipher(aead_key(out.as_ref())?))
    }

    /// A sealer for a new document, with its random nonce prefix (stored
    /// with the document).
    pub fn document_sealer(
        &self,
        at: &DocumentBinding,
    ) -> Result<(SegmentSealer, [u8; STREAM_PREFIX_LEN]), CryptoError> {
        let prefix: [u8; STREAM_PREFIX_LEN] = random()?;
        Ok((self.sealer_with_prefix(at, &prefix)?, prefix))
    }

    fn sealer_with_prefix(
        &self,
        at: &DocumentBinding,
        prefix: &[u8; STREAM_PREFIX_LEN],
    ) -> Result<SegmentSealer, CryptoError> {
        let stream =
            aead_stream::EncryptorBE32::from_aead(self.stream_cipher()?, &(*prefix).into());
        Ok(SegmentSealer {
            stream,
            aad: at.aad(),
        })
    }

    /// An opener for a stored document.
    pub fn document_opener(
        &self,
        at: &DocumentBinding,
        prefix: &[u8],
    ) -> Result<SegmentOpener, CryptoError> {
        let prefix: [u8; STREAM_PREFIX_LEN] = prefix.try_into().map_err(|_| CryptoError::Open)?;
        let stream = aead_stream::DecryptorBE32::from_aead(self.stream_cipher()?, &prefix.into());
        Ok(SegmentOpener {
            stream,
            aad: at.aad(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope_key(id: Uuid) -> ScopeKey {
        let key = SecretKey::from_slice(&random::<32>().unwrap()).unwrap();
        ScopeKey::new(id, 1, &key).unwrap()
    }

    fn at<'a>(record_id: Uuid, scope_id: Uuid, name: &'a str) -> FieldBinding<'a> {
        FieldBinding {
            record_id,
            scope_id,
            key_version: 1,
            name,
            field_type: "text",
        }
    }

    #[test]
    fn a_field_opens_only_where_it_was_sealed() {
        let (record, other_record, scope) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let key = RecordKey::generate().unwrap();
        let sealed = key
            .seal_field(&at(record, scope, "surname"), b"Okafor")
            .unwrap();
        assert_eq!(
            key.open_field(&at(record, scope, "surname"), &sealed)
                .unwrap()
                .as_slice(),
            b"Okafor"
        );
        // Moved to another field, record or scope, or its type relabelled.
        assert_eq!(
            key.open_field(&at(record, scope, "given_name"), &sealed),
            Err(CryptoError::Open)
        );
        assert_eq!(
            key.open_field(&at(other_record, scope, "surname"), &sealed),
            Err(CryptoError::Open)
        );
        assert_eq!(
            key.open_field(&at(record, Uuid::now_v7(), "surname"), &sealed),
            Err(CryptoError::Open)
        );
        let mut relabelled = at(record, scope, "surname");
        relabelled.field_type = "email";
        assert_eq!(key.open_field(&relabelled, &sealed), Err(CryptoError::Open));
        let mut newer = at(record, scope, "surname");
        newer.key_version = 2;
        assert_eq!(key.open_field(&newer, &sealed), Err(CryptoError::Open));
        // Tampered, truncated.
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN] ^= 1;
        assert_eq!(
            key.open_field(&at(record, scope, "surname"), &tampered),
            Err(CryptoError::Open)
        );
        assert_eq!(
            key.open_field(&at(record, scope, "surname"), &sealed[..10]),
            Err(CryptoError::Open)
        );
        // Another record's key.
        let other = RecordKey::generate().unwrap();
        assert_eq!(
            other.open_field(&at(record, scope, "surname"), &sealed),
            Err(CryptoError::Open)
        );
    }

    #[test]
    fn a_record_key_unwraps_only_under_its_scope_for_its_record() {
        let scope = scope_key(Uuid::now_v7());
        let record = Uuid::now_v7();
        let key = RecordKey::generate().unwrap();
        let wrapped = scope.wrap_record_key(record, &key).unwrap();
        assert_eq!(wrapped.len(), NONCE_LEN + 32 + TAG_LEN);
        let back = scope.unwrap_record_key(record, &wrapped).unwrap();
        assert_eq!(back.bytes.as_ref(), key.bytes.as_ref());
        assert!(scope.unwrap_record_key(Uuid::now_v7(), &wrapped).is_err());
        assert!(
            scope_key(scope.scope_id())
                .unwrap_record_key(record, &wrapped)
                .is_err()
        );
    }

    #[test]
    fn a_document_opens_only_whole_and_in_order() {
        let key = RecordKey::generate().unwrap();
        let at = DocumentBinding {
            record_id: Uuid::now_v7(),
            scope_id: Uuid::now_v7(),
            key_version: 1,
        };
        let (mut sealer, prefix) = key.document_sealer(&at).unwrap();
        let segments = [
            sealer.seal_next(b"first").unwrap(),
            sealer.seal_next(b"second").unwrap(),
            sealer.seal_last(b"last").unwrap(),
        ];
        let open_all = |order: &[usize], last: usize| -> Result<Vec<u8>, CryptoError> {
            let mut opener = key.document_opener(&at, &prefix)?;
            let mut out = Vec::new();
            for i in order {
                out.extend_from_slice(&opener.open_next(&segments[*i])?);
            }
            out.extend_from_slice(&opener.open_last(&segments[last])?);
            Ok(out)
        };
        assert_eq!(open_all(&[0, 1], 2).unwrap(), b"firstsecondlast");
        assert!(open_all(&[1, 0], 2).is_err(), "reordered");
        assert!(
            open_all(&[0], 1).is_err(),
            "truncated: a middle segment posing as the last"
        );
        assert!(
            open_all(&[0, 2], 1).is_err(),
            "the last segment posing as a middle one"
        );
        let elsewhere = DocumentBinding {
            record_id: Uuid::now_v7(),
            ..at
        };
        let mut moved = key.document_opener(&elsewhere, &prefix).unwrap();
        assert!(
            moved.open_next(&segments[0]).is_err(),
            "moved to another record"
        );
        assert!(key.document_opener(&at, &prefix[..6]).is_err());
    }

    /// Documents stored by earlier releases must keep opening: the
    /// segments' format at rest (key derivation, nonce layout, binding) is
    /// pinned by known bytes, whatever crate implements the construction.
    #[test]
    fn document_segments_keep_their_format_at_rest() {
        let bytes = [7u8; 32];
        let key = RecordKey {
            bytes: Zeroizing::new(bytes),
            key: aead_key(&bytes).unwrap(),
        };
        let at = DocumentBinding {
            record_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            scope_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002),
            key_version: 3,
        };
        let prefix = [1, 2, 3, 4, 5, 6, 7];
        let mut sealer = key.sealer_with_prefix(&at, &prefix).unwrap();
        let sealed = [
            sealer.seal_next(b"first").unwrap(),
            sealer.seal_next(b"second").unwrap(),
            sealer.seal_last(b"last").unwrap(),
        ];
        assert_eq!(sealed.each_ref().map(hex::encode), KNOWN_SEGMENTS);
        let mut opener = key.document_opener(&at, &prefix).unwrap();
        assert_eq!(opener.open_next(&sealed[0]).unwrap().as_slice(), b"first");
        assert_eq!(opener.open_next(&sealed[1]).unwrap().as_slice(), b"second");
        assert_eq!(opener.open_last(&sealed[2]).unwrap().as_slice(), b"last");
    }

    #[test]
    fn sealed_text_opens_only_under_its_scope_key() {
        let scope = scope_key(Uuid::now_v7());
        let sealed = scope
            .seal_text("client asked for a copy of the will")
            .unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"client"));
        assert_eq!(
            scope.open_text(&sealed).unwrap().as_str(),
            "client asked for a copy of the will"
        );
        assert!(scope_key(scope.scope_id()).open_text(&sealed).is_err());
        assert!(scope_key(Uuid::now_v7()).open_text(&sealed).is_err());
    }

    /// Sealed by the release that first stored documents (RustCrypto's
    /// aes-gcm 0.10 and its `aead::stream`).
    const KNOWN_SEGMENTS: [&str; 3] = [
        "a37268d2fb2ce5996ece6d4573343eabdb5a106af1",
        "4f66e531c86c28fc6c4f57892adc8e24613e54b6a30d",
        "fb23e963a54c1e4f7e3058a7beca5cca5663b18b",
    ];
}
