//! The tier's object store: sharded moka caches keyed by request path, bounded in bytes,
//! with a lifetime per kind of object. The fetch logic (proxy.rs) and the prefetcher are
//! its only writers; it knows nothing of HTTP clients or upstreams.
//!
//! Why sharded: every viewer request touches the cache, and with one map all cores would
//! meet on the same internal locks and eviction queue; N independent caches chosen by key
//! hash keep a hot segment's waiters on one shard and everything else elsewhere.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use bytes::Bytes;
use moka::Expiry;
use moka::future::Cache;
use moka::policy::EvictionPolicy;

/// Bytes charged per entry on top of its body: key, headers, moka's node and the Arc.
/// Keeps a flood of tiny negative entries from looking free.
pub const ENTRY_OVERHEAD: u64 = 256;

/// What an entry is, which decides how long it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// An MPD: changes every segment, so it lives for `manifest_ttl`.
    Manifest,
    /// An init or media segment: its URL names one byte string forever (docs/design.md,
    /// Paths), so only the byte bound or `segment_ttl` removes it.
    Segment,
    /// An upstream 404, remembered briefly so a flood for an unknown stream stays here.
    Negative,
}

/// An upstream answer's status and the headers a tier passes on: known as soon as the
/// upstream answers, before its body is complete.
#[derive(Debug, Clone)]
pub struct Head {
    pub kind: ObjectKind,
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub cache_control: Option<HeaderValue>,
}

/// One complete upstream answer (200 or 404), shared by every response that serves it.
/// Only complete answers are ever cached; one still arriving lives in its flight (proxy.rs).
#[derive(Debug, Clone)]
pub struct CachedObject {
    pub head: Head,
    pub body: Bytes,
    /// A lifetime shorter than its kind's, from the upstream's `Cache-Control`.
    pub lifetime: Option<Duration>,
}

impl CachedObject {
    fn weight(&self, key: &str) -> u32 {
        let bytes = self.body.len() as u64 + key.len() as u64 + ENTRY_OVERHEAD;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// Lifetimes per kind.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub segment: Duration,
    pub manifest: Duration,
    pub negative: Duration,
}

impl Lifetimes {
    pub fn of(&self, kind: ObjectKind) -> Duration {
        match kind {
            ObjectKind::Segment => self.segment,
            ObjectKind::Manifest => self.manifest,
            ObjectKind::Negative => self.negative,
        }
    }

    /// How long `object` lives: its kind's lifetime, or less if its upstream said so.
    pub fn of_object(&self, object: &CachedObject) -> Duration {
        let kind = self.of(object.head.kind);
        object.lifetime.map_or(kind, |upstream| upstream.min(kind))
    }
}

/// How long a shared cache may keep an answer carrying `cache_control`, at most `ceiling`;
/// `None` when it must not be stored at all. `no-store`, `private` and `no-cache` (we do not
/// revalidate) forbid storing; `s-maxage` (meant for shared caches) overrides `max-age`;
/// a lifetime of zero forbids storing. Unparsable values are ignored, so a foreign upstream
/// with odd headers falls back to the tier's own lifetimes (RFC 9111 5.2).
pub fn shared_lifetime(cache_control: Option<&HeaderValue>, ceiling: Duration) -> Option<Duration> {
    let Some(text) = cache_control.and_then(|v| v.to_str().ok()) else { return Some(ceiling) };
    let (mut max_age, mut s_maxage) = (None, None);
    for directive in text.split(',') {
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        let seconds = || value.and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
        match name.to_ascii_lowercase().as_str() {
            "no-store" | "private" | "no-cache" => return None,
            "max-age" => max_age = seconds().or(max_age),
            "s-maxage" => s_maxage = seconds().or(s_maxage),
            _ => {}
        }
    }
    let lifetime = s_maxage.or(max_age).map_or(ceiling, |upstream| upstream.min(ceiling));
    (!lifetime.is_zero()).then_some(lifetime)
}

struct KindExpiry(Lifetimes);

impl Expiry<Arc<str>, Arc<CachedObject>> for KindExpiry {
    fn expire_after_create(&self, _key: &Arc<str>, value: &Arc<CachedObject>, _created_at: Instant) -> Option<Duration> {
        Some(self.0.of_object(value))
    }

    /// A replaced entry (a manifest re-fetched, a 404 that now exists) starts a fresh life.
    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        value: &Arc<CachedObject>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.0.of_object(value))
    }
}

type Shard = Cache<Arc<str>, Arc<CachedObject>>;

/// Cheap to clone: clones share the shards.
#[derive(Clone)]
pub struct TierCache {
    shards: Arc<[Shard]>,
    hasher: RandomState,
    capacity: u64,
    lifetimes: Lifetimes,
}

impl TierCache {
    /// `capacity_bytes` is split evenly over `shards` (0 means one per available core).
    pub fn new(capacity_bytes: u64, shards: usize, lifetimes: Lifetimes) -> Self {
        let count = if shards == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { shards };
        let per_shard = (capacity_bytes / count as u64).max(1);
        let shards = (0..count)
            .map(|_| {
                Cache::builder()
                    .max_capacity(per_shard)
                    .weigher(|key: &Arc<str>, value: &Arc<CachedObject>| value.weight(key))
                    // Live viewers want the newest segments; TinyLFU's admission filter would
                    // keep old popular segments and refuse the new one that everyone is about
                    // to ask for. Recency is the right signal here.
                    .eviction_policy(EvictionPolicy::lru())
                    .expire_after(KindExpiry(lifetimes))
                    .build()
            })
            .collect();
        Self { shards, hasher: RandomState::new(), capacity: per_shard * count as u64, lifetimes }
    }

    fn shard(&self, key: &str) -> &Shard {
        let index = self.hasher.hash_one(key) % self.shards.len() as u64;
        &self.shards[index as usize]
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The byte bound actually enforced (the configured one rounded down to whole shards).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    pub async fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.shard(key).get(key).await
    }

    pub fn contains(&self, key: &str) -> bool {
        self.shard(key).contains_key(key)
    }

    /// Stores a complete answer (proxy.rs calls it before the answer's flight ends, so a
    /// later miss finds one or the other).
    pub(crate) async fn insert(&self, key: Arc<str>, object: Arc<CachedObject>) {
        self.shard(&key).insert(key, object).await;
    }

    /// Weighted bytes held (bodies plus overhead). moka updates it lazily; call
    /// `run_pending_tasks` first for an exact figure.
    pub fn weighted_size(&self) -> u64 {
        self.shards.iter().map(Shard::weighted_size).sum()
    }

    pub fn entry_count(&self) -> u64 {
        self.shards.iter().map(Shard::entry_count).sum()
    }

    /// Applies pending evictions and expirations now (moka batches them).
    #[cfg(test)]
    pub async fn run_pending_tasks(&self) {
        for shard in self.shards.iter() {
            shard.run_pending_tasks().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_cache_control_caps_or_forbids_storing() {
        let ceiling = Duration::from_millis(200);
        let lifetime = |value: &str| shared_lifetime(Some(&HeaderValue::from_str(value).unwrap()), ceiling);
        assert_eq!(shared_lifetime(None, ceiling), Some(ceiling));
        assert_eq!(lifetime("no-store"), None);
        assert_eq!(lifetime("public, No-Store"), None);
        assert_eq!(lifetime("private, max-age=60"), None);
        assert_eq!(lifetime("no-cache"), None);
        assert_eq!(lifetime("max-age=0"), None, "zero means do not keep");
        assert_eq!(lifetime("public, max-age=0, s-maxage=1"), Some(ceiling), "s-maxage wins for a shared cache; capped");
        assert_eq!(lifetime("public, max-age=31536000, immutable"), Some(ceiling));
        assert_eq!(lifetime("max-age=\"abc\""), Some(ceiling), "unparsable: ignored");
        assert_eq!(shared_lifetime(Some(&HeaderValue::from_static("s-maxage=1")), Duration::from_secs(5)), Some(Duration::from_secs(1)));
    }
}
