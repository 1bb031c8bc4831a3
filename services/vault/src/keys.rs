//! Scope keys: generated and unwrapped by the KMS, kept in clear only in a
//! bounded cache (size, age and use limits; evicted keys are zeroized when
//! the last read using them ends), so that reading many records of one
//! scope costs one KMS call rather than one per record.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use confidant_runtime::kms::{EncryptionContext, Kms, WrappedKey};
use uuid::Uuid;

use crate::crypto::ScopeKey;
use crate::domain::ScopeRef;

/// Cache limits.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Most keys held (0 turns the cache off).
    pub capacity: usize,
    /// Longest a key is held.
    pub max_age: Duration,
    /// Most reads served by one unwrapped key.
    pub max_uses: u64,
}

struct Cached {
    key: Arc<ScopeKey>,
    loaded: Instant,
    uses: u64,
}

/// Counters of key use, served by `GetKeyStats`.
#[derive(Debug, Default)]
pub struct KeyStats {
    /// Keys served from the cache.
    pub cache_hits: AtomicU64,
    /// KMS Decrypt calls.
    pub kms_decrypt_calls: AtomicU64,
    /// KMS GenerateDataKey calls.
    pub kms_generate_calls: AtomicU64,
    /// Keys dropped from the cache.
    pub evictions: AtomicU64,
    /// Failed KMS calls, by reason (in the order of [`KMS_FAILURE_REASONS`]).
    pub kms_failures: [AtomicU64; 4],
    /// Reads that found stored data that does not open, by reason (in the
    /// order of [`UNREADABLE_REASONS`]).
    pub unreadable: [AtomicU64; 2],
}

/// Why stored data did not open, as [`KeyStats::unreadable`] counts it:
/// `integrity` (a ciphertext fails to authenticate where it is stored) and
/// `key_unwrap_failed` (a wrapped key does not unwrap where it is stored).
pub const UNREADABLE_REASONS: [&str; 2] = ["integrity", "key_unwrap_failed"];

/// Why a KMS call failed, as [`KeyStats::kms_failures`] counts it:
/// `unavailable` (unreachable, throttled), `refused` (access denied; the key
/// disabled, pending deletion or unknown), `unwrap_failed` (a wrapped key
/// that does not unwrap under its scope's context: moved or altered; or
/// key material of the wrong size) and `other`.
pub const KMS_FAILURE_REASONS: [&str; 4] = ["unavailable", "refused", "unwrap_failed", "other"];

/// Where a failed KMS call counts in [`KMS_FAILURE_REASONS`].
fn failure_index(error: &confidant_runtime::kms::Error) -> usize {
    use confidant_runtime::kms::Error as E;
    match error {
        E::Unavailable(_) => 0,
        E::AccessDenied(_) | E::KeyNotUsable(_) => 1,
        E::InvalidCiphertext | E::InvalidKeyMaterial => 2,
        E::Keyring(_) | E::Other(_) => 3,
    }
}

/// Why a KMS call failed, as [`KMS_FAILURE_REASONS`] names it.
pub fn kms_failure_reason(error: &confidant_runtime::kms::Error) -> &'static str {
    KMS_FAILURE_REASONS[failure_index(error)]
}

impl KeyStats {
    /// Counts a failed KMS call.
    pub fn kms_failed(&self, error: &confidant_runtime::kms::Error) {
        self.kms_failures[failure_index(error)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a read that found stored data that does not open, for
    /// `reason` (one of [`UNREADABLE_REASONS`]).
    pub fn unreadable_found(&self, reason: &str) {
        if let Some(i) = UNREADABLE_REASONS.iter().position(|r| *r == reason) {
            self.unreadable[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads that found stored data that does not open, by reason.
    pub fn unreadable_counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        by_reason(&UNREADABLE_REASONS, &self.unreadable)
    }

    /// Failed KMS calls so far, by reason.
    pub fn kms_failure_counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        by_reason(&KMS_FAILURE_REASONS, &self.kms_failures)
    }
}

/// Each of `reasons` with its count in `counters`.
fn by_reason<'a>(
    reasons: &'a [&'static str],
    counters: &'a [AtomicU64],
) -> impl Iterator<Item = (&'static str, u64)> + 'a {
    reasons
        .iter()
        .zip(counters)
        .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
}

/// The unwrapped scope keys of this replica.
pub struct KeyCache {
    entries: Mutex<HashMap<Uuid, Cached>>,
    limits: CacheLimits,
    stats: Arc<KeyStats>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("limits", &self.limits)
            .field("len", &self.len())
            .finish()
    }
}

impl KeyCache {
    /// An empty cache.
    pub fn new(limits: CacheLimits, stats: Arc<KeyStats>) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            limits,
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Cached>> {
        // A panic while holding the lock cannot leave a half-updated entry
        // (each update is a single insert or remove), so go on.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key of `scope_id`, if held and within its limits.
    pub fn get(&self, scope_id: Uuid) -> Option<Arc<ScopeKey>> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&scope_id)?;
        if entry.loaded.elapsed() >= self.limits.max_age || entry.uses >= self.limits.max_uses {
            entries.remove(&scope_id);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        entry.uses += 1;
        self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.key.clone())
    }

    /// Holds `key`, making room by dropping the oldest key when full.
    pub fn insert(&self, key: Arc<ScopeKey>) {
        if self.limits.capacity == 0 {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.limits.capacity && !entries.contains_key(&key.scope_id()) {
            let expired: Vec<Uuid> = entries
                .iter()
                .filter(|(_, c)| c.loaded.elapsed() >= self.limits.max_age)
                .map(|(id, _)| *id)
                .collect();
            let mut dropped = expired.len() as u64;
            for id in expired {
                entries.remove(&id);
            }
            if entries.len() >= self.limits.capacity
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, c)| c.loaded)
                    .map(|(id, _)| *id)
            {
                entries.remove(&oldest);
                dropped += 1;
            }
            self.stats.evictions.fetch_add(dropped, Ordering::Relaxed);
        }
        entries.insert(
            key.scope_id(),
            Cached {
                key,
                loaded: Instant::now(),
                uses: 1,
            },
        );
    }

    /// Drops the key of `scope_id` (after a shred).
    pub fn evict(&self, scope_id: Uuid) {
        if self.lock().remove(&scope_id).is_some() {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The KMS encryption context of a scope key: unwrapping needs the same
/// scope, client, matter and category, so a wrapped key copied to another
/// scope's row does not unwrap.
pub fn context(scope_id: Uuid, scope: &ScopeRef) -> EncryptionContext {
    EncryptionContext::new()
        .with("confidant:scope", &scope_id.to_string())
        .with("confidant:client", &scope.client_id.to_string())
        .with(
            "confidant:matter",
            &scope.matter_id.map(|m| m.to_string()).unwrap_or_default(),
        )
        .with("confidant:category", scope.category.as_str())
}

/// Why a scope key is not available.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The KMS failed or refused.
    #[error(transparent)]
    Kms(#[from] confidant_runtime::kms::Error),
    /// The key material does not fit.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

/// Scope keys through the KMS and the cache.
pub struct Keyring {
    kms: Arc<dyn Kms>,
    cache: KeyCache,
    stats: Arc<KeyStats>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("kms", &self.kms)
            .field("cache", &self.cache)
            .finish()
    }
}

impl Keyring {
    /// A keyring over `kms`.
    pub fn new(kms: Arc<dyn Kms>, limits: CacheLimits) -> Self {
        let stats = Arc::new(KeyStats::default());
        Self {
            kms,
            cache: KeyCache::new(limits, stats.clone()),
            stats,
        }
    }

    /// The KMS.
    pub fn kms(&self) -> &Arc<dyn Kms> {
        &self.kms
    }

    /// The counters.
    pub fn stats(&self) -> &KeyStats {
        &self.stats
    }

    /// The counters, shared (for metric callbacks).
    pub fn shared_stats(&self) -> Arc<KeyStats> {
        self.stats.clone()
    }

    /// The cache.
    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// A fresh scope key from the KMS: in clear (cached) and wrapped.
    pub async fn generate(
        &self,
        scope_id: Uuid,
        scope: &ScopeRef,
        key_version: i32,
    ) -> Result<(Arc<ScopeKey>, WrappedKey), KeyError> {
        self.stats
            .kms_generate_calls
            .fetch_add(1, Ordering::Relaxed);
        let fresh = self
            .kms
            .generate_data_key(&context(scope_id, scope))
            .await
            .inspect_err(|e| self.stats.kms_failed(e))?;
        let key = Arc::new(ScopeKey::new(scope_id, key_version, &fresh.plaintext)?);
        Ok((key, fresh.wrapped))
    }

    /// Scope key `scope_id`, wrapped as `wrapped`, wrapped again under the
    /// KMS's active key by the KMS (the rewrap job; with AWS KMS the key
    /// never leaves it in clear).
    pub async fn rewrap(
        &self,
        scope_id: Uuid,
        scope: &ScopeRef,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, KeyError> {
        Ok(self
            .kms
            .rewrap(wrapped, &context(scope_id, scope), None)
            .await
            .inspect_err(|e| self.stats.kms_failed(e))?)
    }

    /// Whether the KMS still opens `wrapped` under the key that wrapped it
    /// (the key in clear is dropped, zeroized, at once): after a refused
    /// [`Keyring::rewrap`], tells a refusal of the old key from one of the
    /// active key.
    pub async fn opens(&self, scope_id: Uuid, scope: &ScopeRef, wrapped: &WrappedKey) -> bool {
        self.stats.kms_decrypt_calls.fetch_add(1, Ordering::Relaxed);
        match self.kms.decrypt(wrapped, &context(scope_id, scope)).await {
            Ok(_) => true,
            Err(e) => {
                self.stats.kms_failed(&e);
                false
            }
        }
    }

    /// Puts a key generated by [`Keyring::generate`] in the cache once it
    /// is stored.
    pub fn remember(&self, key: Arc<ScopeKey>) {
        self.cache.insert(key);
    }

    /// The scope key in clear: from the cache, or unwrapped by the KMS.
    pub async fn unwrap(
        &self,
        scope_id: Uuid,
        scope: &ScopeRef,
        key_version: i32,
        wrapped: &WrappedKey,
    ) -> Result<Arc<ScopeKey>, KeyError> {
        if let Some(key) = self.cache.get(scope_id)
            && key.key_version() == key_version
        {
            return Ok(key);
        }
        self.stats.kms_decrypt_calls.fetch_add(1, Ordering::Relaxed);
        let plain = self
            .kms
            .decrypt(wrapped, &context(scope_id, scope))
            .await
            .inspect_err(|e| self.stats.kms_failed(e))?;
        let key = Arc::new(ScopeKey::new(scope_id, key_version, &plain)?);
        self.cache.insert(key.clone());
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confidant_runtime::kms::SecretKey;

    fn key(id: Uuid) -> Arc<ScopeKey> {
        Arc::new(ScopeKey::new(id, 1, &SecretKey::from_slice(&[7u8; 32]).unwrap()).unwrap())
    }

    fn cache(capacity: usize, max_age: Duration, max_uses: u64) -> KeyCache {
        KeyCache::new(
            CacheLimits {
                capacity,
                max_age,
                max_uses,
            },
            Arc::new(KeyStats::default()),
        )
    }

    #[tokio::test]
    async fn failed_kms_calls_are_counted_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let kms: Arc<dyn Kms> =
            Arc::new(confidant_runtime::kms::LocalKms::open(&dir.path().join("kms.key")).unwrap());
        let keyring = Keyring::new(
            kms,
            CacheLimits {
                capacity: 0,
                max_age: Duration::from_secs(60),
                max_uses: 1000,
            },
        );
        let scope = ScopeRef {
            client_id: Uuid::now_v7(),
            matter_id: None,
            category: crate::domain::Category::Financial,
        };
        let (id, other) = (Uuid::now_v7(), Uuid::now_v7());
        let (_, wrapped) = keyring.generate(id, &scope, 1).await.unwrap();
        let counts = |k: &Keyring| k.stats().kms_failure_counts().collect::<Vec<_>>();
        assert!(counts(&keyring).iter().all(|(_, n)| *n == 0));
        keyring.unwrap(id, &scope, 1, &wrapped).await.unwrap();
        // A wrapped key moved to another scope does not unwrap.
        assert!(keyring.unwrap(other, &scope, 1, &wrapped).await.is_err());
        assert!(keyring.unwrap(other, &scope, 1, &wrapped).await.is_err());
        assert_eq!(
            counts(&keyring),
            [
                ("unavailable", 0),
                ("refused", 0),
                ("unwrap_failed", 2),
                ("other", 0)
            ]
        );
    }

    #[test]
    fn a_key_serves_at_most_its_uses() {
        let c = cache(10, Duration::from_secs(60), 3);
        let id = Uuid::now_v7();
        c.insert(key(id));
        assert!(c.get(id).is_some());
        assert!(c.get(id).is_some());
        assert!(c.get(id).is_none(), "the insert counted as the first use");
        assert!(c.is_empty());
        assert_eq!(c.stats.cache_hits.load(Ordering::Relaxed), 2);
        assert_eq!(c.stats.evictions.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_key_expires_with_age() {
        let c = cache(10, Duration::from_millis(30), 1000);
        let id = Uuid::now_v7();
        c.insert(key(id));
        assert!(c.get(id).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get(id).is_none());
    }

    #[test]
    fn a_full_cache_drops_its_oldest_key() {
        let c = cache(2, Duration::from_secs(60), 1000);
        let (a, b, d) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        c.insert(key(a));
        std::thread::sleep(Duration::from_millis(2));
        c.insert(key(b));
        c.insert(key(d));
        assert_eq!(c.len(), 2);
        assert!(c.get(a).is_none());
        assert!(c.get(b).is_some() && c.get(d).is_some());
        c.evict(b);
        assert!(c.get(b).is_none());
    }

    #[test]
    fn capacity_zero_turns_the_cache_off() {
        let c = cache(0, Duration::from_secs(60), 1000);
        let id = Uuid::now_v7();
        c.insert(key(id));
        assert!(c.get(id).is_none());
    }
}
