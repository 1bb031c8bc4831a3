//! Cache and coordination: TTL keys, rate-limit counters and leases with
//! fencing tokens, behind one small interface with a Redis implementation
//! (shared by replicas) and an in-process one (`confidant dev`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

/// Errors of the coordination backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A held lease. `token` is a fencing token: it grows with every acquisition
/// of the same lease name, so a stalled former holder's writes can be refused
/// by comparing tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lease name, e.g. `retention-sweep`.
    pub name: String,
    /// Who holds it (a replica id).
    pub holder: String,
    /// The fencing token of this acquisition.
    pub token: u64,
}

/// TTL keys, counters and leases.
#[async_trait]
pub trait Coordinator: Send + Sync + fmt::Debug {
    /// Stores `value` under `key` for `ttl`.
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), Error>;
    /// Stores `value` unless `key` exists; tells whether it stored.
    async fn put_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, Error>;
    /// The value of `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error>;
    /// The values of `keys` in their order, read in one step (one round
    /// trip to Redis).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error>;
    /// Removes `key`; tells whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, Error>;
    /// Adds one to the counter `key` and returns the new count. The counter
    /// lives for `window` from its first increment (fixed-window rate limit).
    async fn increment(&self, key: &str, window: Duration) -> Result<u64, Error>;
    /// Takes the lease `name` for `holder` if nobody holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, Error>;
    /// Extends a lease still held by this acquisition; false if it was lost.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, Error>;
    /// Gives a lease back; false if it was no longer held by this acquisition.
    async fn release_lease(&self, lease: &Lease) -> Result<bool, Error>;
    /// Whether `lease` is the current holder of its name (a fencing check
    /// before acting).
    async fn holds(&self, lease: &Lease) -> Result<bool, Error>;
    /// Announces `message` to whoever is subscribed to `channel` now (at
    /// most once each: a subscriber that is not connected misses it).
    async fn publish(&self, channel: &str, message: &str) -> Result<(), Error> {
        let _ = (channel, message);
        Ok(())
    }
    /// Subscribes to `channel` and returns once the subscription is in
    /// place; `None` when this backend has no subscriptions. The stream ends
    /// when the subscription is lost, after which messages may have been
    /// missed.
    async fn subscribe(&self, channel: &str) -> Result<Option<Notices>, Error> {
        let _ = channel;
        Ok(None)
    }
}

/// The messages of a subscription, in the order they were published.
pub type Notices = futures::stream::BoxStream<'static, String>;

/// What a follower of a channel hears ([`follow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard<'a> {
    /// The subscription is in place (again): messages published while it
    /// was not may have been missed.
    Subscribed,
    /// A message.
    Notice(&'a str),
    /// The subscription was lost; a new one is being sought.
    Lost,
}

/// Keeps `target` subscribed to `channel` for as long as it exists,
/// resubscribing after a loss (waiting 0.1 s, doubling up to 5 s), and tells
/// it what it hears. Returns at once when `coord` announces nothing.
pub fn follow<T, F>(coord: SharedCoordinator, channel: &'static str, target: &Arc<T>, hear: F)
where
    T: Send + Sync + 'static,
    F: Fn(&T, Heard<'_>) + Send + 'static,
{
    use futures::StreamExt;
    let target = Arc::downgrade(target);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match coord.subscribe(channel).await {
                Ok(Some(mut notices)) => {
                    backoff = Duration::from_millis(100);
                    let Some(t) = target.upgrade() else {
                        return;
                    };
                    hear(&t, Heard::Subscribed);
                    drop(t);
                    while let Some(notice) = notices.next().await {
                        let Some(t) = target.upgrade() else {
                            return;
                        };
                        hear(&t, Heard::Notice(&notice));
                    }
                    let Some(t) = target.upgrade() else {
                        return;
                    };
                    hear(&t, Heard::Lost);
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, channel, "cannot subscribe");
                }
            }
            if target.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

/// Most messages an in-process subscriber may fall behind by before its
/// subscription ends (and it must assume it missed some).
const CHANNEL_BACKLOG: usize = 1024;

/// Shared handle to a coordinator.
pub type SharedCoordinator = Arc<dyn Coordinator>;

// ---------------------------------------------------------------------------
// In-process

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Instant,
}

#[derive(Debug, Default)]
struct MemoryState {
    entries: HashMap<String, Entry>,
    fences: HashMap<String, u64>,
}

impl MemoryState {
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.entries.get(key).is_some_and(|e| e.expires <= now) {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }
}

/// The in-process coordinator for a single process (`confidant dev`).
#[derive(Debug, Default, Clone)]
pub struct InProcess {
    state: Arc<Mutex<MemoryState>>,
    channels: Arc<Mutex<HashMap<String, tokio::sync::broadcast::Sender<String>>>>,
}

impl InProcess {
    /// An empty coordinator.
    pub fn new() -> Self {
        Self::default()
    }

    fn channel(&self, name: &str) -> tokio::sync::broadcast::Sender<String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(name.to_owned())
            .or_insert_with(|| tokio::sync::broadcast::channel(CHANNEL_BACKLOG).0)
            .clone()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState, Instant) -> T) -> T {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way that matters more than losing the cache, so recover the guard.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard, Instant::now())
    }
}

fn lease_key(name: &str) -> String {
    format!("lease:{name}")
}

fn lease_value(lease: &Lease) -> Vec<u8> {
    format!("{}:{}", lease.holder, lease.token).into_bytes()
}

#[async_trait]
impl Coordinator for InProcess {
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), Error> {
        self.with(|s, now| {
            s.entries.insert(
                key.to_owned(),
                Entry {
                    value: value.to_vec(),
                    expires: now + ttl,
                },
            );
        });
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, Error> {
        Ok(self.with(|s, now| {
            if s.live(key, now).is_some() {
                return false;
            }
            s.entries.insert(
                key.to_owned(),
                Entry {
                    value: value.to_vec(),
                    expires: now + ttl,
                },
            );
            true
        }))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.with(|s, now| s.live(key, now).map(|e| e.value.clone())))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        Ok(self.with(|s, now| {
            keys.iter()
                .map(|key| s.live(key, now).map(|e| e.value.clone()))
                .collect()
        }))
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        Ok(self.with(|s, now| s.live(key, now).is_some() && s.entries.remove(key).is_some()))
    }

    async fn increment(&self, key: &str, window: Duration) -> Result<u64, Error> {
        Ok(self.with(|s, now| {
            if let Some(entry) = s.live(key, now) {
                let n = decode_count(&entry.value) + 1;
                entry.value = n.to_string().into_bytes();
                n
            } else {
                s.entries.insert(
                    key.to_owned(),
                    Entry {
                        value: b"1".to_vec(),
                        expires: now + window,
                    },
                );
                1
            }
        }))
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, Error> {
        Ok(self.with(|s, now| {
            let key = lease_key(name);
            if s.live(&key, now).is_some() {
                return None;
            }
            let fence = s.fences.entry(name.to_owned()).or_insert(0);
            *fence += 1;
            let lease = Lease {
                name: name.to_owned(),
                holder: holder.to_owned(),
                token: *fence,
            };
            s.entries.insert(
                key,
                Entry {
                    value: lease_value(&lease),
                    expires: now + ttl,
                },
            );
            Some(lease)
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, Error> {
        Ok(
            self.with(|s, now| match s.live(&lease_key(&lease.name), now) {
                Some(entry) if entry.value == lease_value(lease) => {
                    entry.expires = now + ttl;
                    true
                }
                _ => false,
            }),
        )
    }

    async fn release_lease(&self, lease: &Lease) -> Result<bool, Error> {
        Ok(self.with(|s, now| {
            let key = lease_key(&lease.name);
            match s.live(&key, now) {
                Some(entry) if entry.value == lease_value(lease) => {
                    s.entries.remove(&key);
                    true
                }
                _ => false,
            }
        }))
    }

    async fn holds(&self, lease: &Lease) -> Result<bool, Error> {
        Ok(self.with(|s, now| {
            s.live(&lease_key(&lease.name), now)
                .is_some_and(|e| e.value == lease_value(lease))
        }))
    }

    async fn publish(&self, channel: &str, message: &str) -> Result<(), Error> {
        // Nobody listening is not an error: there is nobody to tell.
        let _ = self.channel(channel).send(message.to_owned());
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<Option<Notices>, Error> {
        use futures::StreamExt;
        let rx = self.channel(channel).subscribe();
        // A subscriber that fell behind has lost messages: its stream ends.
        let notices = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.ok().map(|message| (message, rx))
        });
        Ok(Some(notices.boxed()))
    }
}

fn decode_count(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Redis

/// The Redis coordinator, shared by every replica. Keys are prefixed so that
/// several deployments (or tests) can share one Redis.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return token
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

const INCREMENT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Redis {
    /// Connects to `url` (`redis://` or `rediss://`), prefixing every key.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, Error> {
        Self::connect_with(
            redis::IntoConnectionInfo::into_connection_info(url)?,
            prefix,
        )
        .await
    }

    /// As [`Redis::connect`], with connection settings built in code.
    pub async fn connect_with(info: redis::ConnectionInfo, prefix: &str) -> Result<Self, Error> {
        let client = redis::Client::open(info)?;
        let conn = client.get_connection_manager().await?;
        Ok(Self {
            client,
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl Coordinator for Redis {
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, Error> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(self.key(key))
            .query_async(&mut conn)
            .await?)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut mget = redis::cmd("MGET");
        for key in keys {
            mget.arg(self.key(key));
        }
        Ok(mget.query_async(&mut conn).await?)
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let mut conn = self.conn.clone();
        let n: u64 = redis::cmd("DEL")
            .arg(self.key(key))
            .query_async(&mut conn)
            .await?;
        Ok(n > 0)
    }

    async fn increment(&self, key: &str, window: Duration) -> Result<u64, Error> {
        let mut conn = self.conn.clone();
        Ok(redis::Script::new(INCREMENT)
            .key(self.key(key))
            .arg(millis(window))
            .invoke_async(&mut conn)
            .await?)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, Error> {
        let mut conn = self.conn.clone();
        let token: u64 = redis::Script::new(ACQUIRE)
            .key(self.key(&lease_key(name)))
            .key(self.key(&format!("fence:{name}")))
            .arg(holder)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok((token > 0).then(|| Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            token,
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, Error> {
        let mut conn = self.conn.clone();
        let n: u64 = redis::Script::new(RENEW)
            .key(self.key(&lease_key(&lease.name)))
            .arg(lease_value(lease))
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok(n > 0)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<bool, Error> {
        let mut conn = self.conn.clone();
        let n: u64 = redis::Script::new(RELEASE)
            .key(self.key(&lease_key(&lease.name)))
            .arg(lease_value(lease))
            .invoke_async(&mut conn)
            .await?;
        Ok(n > 0)
    }

    async fn holds(&self, lease: &Lease) -> Result<bool, Error> {
        Ok(self.get(&lease_key(&lease.name)).await?.as_deref()
            == Some(lease_value(lease).as_slice()))
    }

    async fn publish(&self, channel: &str, message: &str) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        redis::cmd("PUBLISH")
            .arg(self.key(channel))
            .arg(message)
            .query_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<Option<Notices>, Error> {
        use futures::StreamExt;
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.key(channel)).await?;
        let notices = pubsub
            .into_on_message()
            .map(|msg| String::from_utf8_lossy(msg.get_payload_bytes()).into_owned());
        Ok(Some(notices.boxed()))
    }
}
