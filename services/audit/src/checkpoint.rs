//! Signed checkpoints in the C2SP signed-note checkpoint format:
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 root hash>
//! time <unix seconds>
//!
//! — <key name> <base64(key hash || Ed25519 signature)>
//! ```
//!
//! The `time` extension line makes a checkpoint of an unchanged tree a new
//! statement: "at this time the log held exactly these events". Verifier
//! keys use the note format `<name>+<hex key hash>+<base64(0x01 || key)>`.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::merkle::Hash;

/// The signature-type byte of Ed25519 in signed notes.
const ED25519_TYPE: u8 = 0x01;

/// A tree head: what a checkpoint states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name, e.g. `confidant.local/audit`.
    pub origin: String,
    /// Number of events.
    pub size: u64,
    /// Root hash of those events.
    pub root: Hash,
    /// When it was issued (unix seconds).
    pub time: i64,
}

impl Checkpoint {
    /// The signed text: every line ends with a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntime {}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root),
            self.time
        )
    }

    fn parse_body(body: &str) -> Result<Self, NoteError> {
        let mut lines = body.lines();
        let origin = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or(NoteError::Malformed("origin"))?;
        let size = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or(NoteError::Malformed("tree size"))?;
        let root: Hash = lines
            .next()
            .and_then(|l| STANDARD.decode(l).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or(NoteError::Malformed("root hash"))?;
        let time = lines
            .find_map(|l| l.strip_prefix("time "))
            .and_then(|t| t.parse().ok())
            .ok_or(NoteError::Malformed("time"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            time,
        })
    }
}

/// Why a note does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A part of the note or key is missing or unreadable.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// No signature by this key.
    #[error("no signature by {0}")]
    NotSigned(String),
    /// A signature by this key that does not verify.
    #[error("signature by {0} does not verify")]
    BadSignature(String),
}

fn key_hash(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ED25519_TYPE]);
    ctx.update(public_key);
    let digest = ctx.finish();
    let mut out = [0u8; 4];
    out.copy_from_slice(&digest.as_ref()[..4]);
    out
}

/// Signs checkpoints with the log's Ed25519 key.
#[derive(Debug)]
pub struct Signer {
    name: String,
    key: Ed25519KeyPair,
    hash: [u8; 4],
}

/// Errors of the signing key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file is not an Ed25519 PKCS#8 key.
    #[error("not an Ed25519 PKCS#8 private key")]
    Invalid,
    /// Key generation failed.
    #[error("key generation failed")]
    Generate,
}

impl Signer {
    /// A new private key, PKCS#8 DER (zeroized on drop).
    pub fn generate_pkcs8() -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        Ok(zeroize::Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// A signer named `name` (the note key name, usually the origin).
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| KeyError::Invalid)?;
        let hash = key_hash(name, key.public_key().as_ref());
        Ok(Self {
            name: name.to_owned(),
            key,
            hash,
        })
    }

    /// The signed note of `checkpoint`.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let signature = self.key.sign(body.as_bytes());
        let mut blob = self.hash.to_vec();
        blob.extend_from_slice(signature.as_ref());
        format!("{body}\n\u{2014} {} {}\n", self.name, STANDARD.encode(blob))
    }

    /// The 4-byte key hash that names this key in signature lines.
    pub fn key_hash(&self) -> KeyHash {
        KeyHash(self.hash)
    }

    /// The verifier of this key.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            name: self.name.clone(),
            hash: self.hash,
            public_key: self.key.public_key().as_ref().to_vec(),
        }
    }

    /// The verifier key others use to check this log's checkpoints.
    pub fn verifier_key(&self) -> String {
        self.verifier().verifier_key()
    }
}

/// The 4-byte hash that names a key in a note's signature lines (C2SP
/// signed notes: the first bytes of SHA-256 of the key's name and type and
/// public key). Shown as 8 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 4]);

impl std::fmt::Display for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for KeyHash {
    type Err = NoteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut hash = [0u8; 4];
        hex::decode_to_slice(s, &mut hash).map_err(|_| NoteError::Malformed("key hash"))?;
        Ok(Self(hash))
    }
}

/// The key hashes of a note's signature lines, in order (unverified: which
/// keys the note says signed it). Empty for a malformed note.
pub fn signers_of(note: &str) -> Vec<KeyHash> {
    let Some(split) = note.find("\n\n") else {
        return Vec::new();
    };
    note[split + 2..]
        .lines()
        .filter_map(|line| line.strip_prefix("\u{2014} "))
        .filter_map(|rest| rest.split_once(' '))
        .filter_map(|(_, blob)| STANDARD.decode(blob).ok())
        .filter_map(|blob| blob.get(..4).and_then(|h| h.try_into().ok()))
        .map(KeyHash)
        .collect()
}

/// Checks checkpoints against a log's verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    hash: [u8; 4],
    public_key: Vec<u8>,
}

impl Verifier {
    /// Parses `<name>+<hex key hash>+<base64(0x01 || key)>`.
    pub fn parse(verifier_key: &str) -> Result<Self, NoteError> {
        let mut parts = verifier_key.trim().splitn(3, '+');
        let (Some(name), Some(hash_hex), Some(key_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::Malformed("verifier key"));
        };
        let key = STANDARD
            .decode(key_b64)
            .map_err(|_| NoteError::Malformed("verifier key"))?;
        let (&kind, public_key) = key
            .split_first()
            .ok_or(NoteError::Malformed("verifier key"))?;
        if kind != ED25519_TYPE || public_key.len() != 32 || hash_hex.len() != 8 {
            return Err(NoteError::Malformed("verifier key"));
        }
        let mut hash = [0u8; 4];
        hex::decode_to_slice(hash_hex, &mut hash)
            .map_err(|_| NoteError::Malformed("verifier key"))?;
        if hash != key_hash(name, public_key) {
            return Err(NoteError::Malformed("verifier key hash"));
        }
        Ok(Self {
            name: name.to_owned(),
            hash,
            public_key: public_key.to_vec(),
        })
    }

    /// The 4-byte key hash that names this key in signature lines.
    pub fn key_hash(&self) -> KeyHash {
        KeyHash(self.hash)
    }

    /// The verifier key in note format, as [`Signer::verifier_key`] gives it.
    pub fn verifier_key(&self) -> String {
        let mut key = vec![ED25519_TYPE];
        key.extend_from_slice(&self.public_key);
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.hash),
            STANDARD.encode(key)
        )
    }

    /// Verifies a signed note and returns the checkpoint it states.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let split = note.find("\n\n").ok_or(NoteError::Malformed("note"))?;
        let (body, signatures) = (&note[..=split], &note[split + 2..]);
        let mut found = false;
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(NoteError::Malformed("signature line"));
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed("signature line"));
            };
            let blob = STANDARD
                .decode(blob)
                .map_err(|_| NoteError::Malformed("signature"))?;
            if name != self.name || blob.len() < 4 || blob[..4] != self.hash {
                continue;
            }
            found = true;
            UnparsedPublicKey::new(&ED25519, &self.public_key)
                .verify(body.as_bytes(), &blob[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
        }
        if !found {
            return Err(NoteError::NotSigned(self.name.clone()));
        }
        Checkpoint::parse_body(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str) -> Signer {
        Signer::from_pkcs8(name, &Signer::generate_pkcs8().unwrap()).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "firm.example/audit".into(),
            size: 42,
            root: crate::merkle::leaf_hash(b"x"),
            time: 1_790_000_000,
        }
    }

    #[test]
    fn a_signed_checkpoint_verifies_with_the_logs_key() {
        let s = signer("firm.example/audit");
        let note = s.sign(&checkpoint());
        assert!(note.starts_with("firm.example/audit\n42\n"));
        assert!(note.contains("\n\n\u{2014} firm.example/audit "));
        let v = Verifier::parse(&s.verifier_key()).unwrap();
        assert_eq!(v.verify(&note).unwrap(), checkpoint());
    }

    #[test]
    fn an_edited_checkpoint_or_another_key_is_refused() {
        let s = signer("firm.example/audit");
        let note = s.sign(&checkpoint());
        let v = Verifier::parse(&s.verifier_key()).unwrap();
        let edited = note.replacen("\n42\n", "\n41\n", 1);
        assert_eq!(
            v.verify(&edited),
            Err(NoteError::BadSignature("firm.example/audit".into()))
        );

        let impostor = signer("firm.example/audit");
        let forged = impostor.sign(&checkpoint());
        assert_eq!(
            v.verify(&forged),
            Err(NoteError::NotSigned("firm.example/audit".into()))
        );
    }

    #[test]
    fn verifier_keys_must_be_well_formed() {
        assert!(Verifier::parse("name+0000+AAAA").is_err());
        let s = signer("log");
        let key = s.verifier_key();
        let tampered = key.replacen("log+", "other+", 1);
        assert!(Verifier::parse(&tampered).is_err());
    }
}
