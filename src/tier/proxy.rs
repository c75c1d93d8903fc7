//! Cache lookup, request coalescing and the upstream fetch with failover. Handlers in
//! mod.rs and the prefetcher come through here; this file is the only place that talks to
//! upstreams.
//!
//! Coalescing has two layers. A *flight* map (key -> shared future) gathers every
//! concurrent miss for one key behind one fetch task and, when it ends, wakes all of them
//! at once. Behind it, the fetch task fills the cache through moka's
//! `entry().or_try_insert_with`, which closes the race between a flight ending and a late
//! miss starting a new one (that miss finds the value, not the upstream).
//!
//! Why not moka's waiters alone: (1) they queue on an async RwLock whose readers wake one
//! another in a chain, each woken task waking the next, so a hot segment's waiters are
//! released one by one from one worker; a shared future wakes them all at once. On the
//! 2-core test machine both measure the same (1,000 x 200 KB, p99 ~150-240 ms after the
//! upstream's answer, within noise); the chain is expected to matter on many cores, not
//! measured. (2) A flight is registered synchronously, so the prefetcher can guarantee
//! that a viewer who sees the new MPD joins its fetch rather than racing it.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;

use super::TierState;
use super::cache::{CachedObject, ObjectKind, shared_lifetime};
use super::error::TierError;
use crate::http::{HLS_CONTENT_TYPE, IMMUTABLE, MANIFEST_CACHE, MPD_CONTENT_TYPE, SEGMENT_CONTENT_TYPE};
use crate::media::StreamId;

/// One object a viewer or the prefetcher wants, by its path (the same on every tier).
#[derive(Debug, Clone)]
pub(crate) struct ObjectRequest {
    pub stream: StreamId,
    /// The request path, e.g. `/live/cam/720p/abc-7.m4s`; also the cache key.
    pub key: Arc<str>,
    /// `Manifest` or `Segment`; `Negative` is only ever the kind of a cached 404.
    pub kind: ObjectKind,
}

impl ObjectRequest {
    /// An HLS playlist (a manifest that is not an MPD).
    fn is_playlist(&self) -> bool {
        self.key.ends_with(".m3u8")
    }
}

/// How a response was produced, sent as `x-cache-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache without waiting.
    Hit,
    /// This request ran the upstream fetch.
    Miss,
    /// This request waited on another request's (or the prefetcher's) fetch.
    Coalesced,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
        }
    }
}

/// Who started a fetch, which decides what an upstream 404 becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A viewer: a 404 is cached briefly and served.
    Viewer,
    /// The prefetcher: a 404 is not cached, so a segment that is not there *yet* is not
    /// remembered as missing for viewers.
    Prefetch,
}

pub(crate) type FetchResult = Result<Arc<CachedObject>, Arc<TierError>>;
pub(crate) type Outcome = (FetchResult, CacheStatus);
/// A fetch in progress: its result, and whether it went upstream (false when moka already
/// held the value).
type Flight = Shared<BoxFuture<'static, (FetchResult, bool)>>;
type FlightShard = Mutex<HashMap<Arc<str>, Flight>>;

/// Fetches in progress, sharded like the cache so one hot key's lock meets only its shard.
pub(crate) struct Flights {
    shards: Box<[FlightShard]>,
    hasher: RandomState,
}

impl Flights {
    pub(crate) fn new(shards: usize) -> Self {
        Self { shards: (0..shards.max(1)).map(|_| Mutex::new(HashMap::new())).collect(), hasher: RandomState::new() }
    }

    fn shard(&self, key: &str) -> &FlightShard {
        &self.shards[(self.hasher.hash_one(key) % self.shards.len() as u64) as usize]
    }

    /// How many requests wait on `key`'s flight now (the map holds one more handle), so a
    /// test can wait for its viewers to have joined instead of sleeping.
    #[cfg(test)]
    pub(crate) fn waiting(&self, key: &str) -> usize {
        self.shard(key).lock().get(key).and_then(Shared::strong_count).map_or(0, |handles| handles - 1)
    }
}

/// Removes a flight from the map when its task ends, panics included, so a later miss
/// starts a new fetch instead of joining a dead one.
struct Landing {
    state: TierState,
    key: Arc<str>,
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.state.flights.shard(&self.key).lock().remove(&self.key);
    }
}

impl TierState {
    /// A viewer's request: cache, else the key's flight. Counts hit / miss / coalesced.
    pub(crate) async fn lookup(&self, request: ObjectRequest) -> Outcome {
        if let Some(object) = self.cache.get(&request.key).await {
            self.metrics.hits.inc();
            return (Ok(object), CacheStatus::Hit);
        }
        let (flight, started) = self.flight(request, Purpose::Viewer);
        let (result, fetched) = flight.await;
        let status = if started && fetched { CacheStatus::Miss } else { CacheStatus::Coalesced };
        if status == CacheStatus::Miss { self.metrics.misses.inc() } else { self.metrics.coalesced.inc() };
        (result, status)
    }

    /// The flight for `request.key`: the one in progress, or a new one (then `true`). The
    /// fetch runs in its own task: a viewer that hangs up drops only its wait, never the
    /// fetch the others wait on. Synchronous, so a caller that returns has registered it.
    pub(crate) fn flight(&self, request: ObjectRequest, purpose: Purpose) -> (Flight, bool) {
        let mut flights = self.flights.shard(&request.key).lock();
        if let Some(flight) = flights.get(&request.key) {
            return (flight.clone(), false);
        }
        let key = request.key.clone();
        let stream = request.stream.clone();
        let landing = Landing { state: self.clone(), key: key.clone() };
        let task = tokio::spawn(async move {
            let _landing = landing;
            _landing.state.fetch_into_cache(request, purpose).await
        });
        let flight = async move {
            task.await.unwrap_or_else(|e| (Err(Arc::new(TierError::Task { stream, reason: e.to_string() })), true))
        }
        .boxed()
        .shared();
        flights.insert(key, flight.clone());
        (flight, true)
    }

    /// Fetches into the cache through moka, so that a flight started just after another
    /// landed finds its value instead of the upstream. An answer the upstream marked as not
    /// storable reaches this flight's waiters but not the cache.
    async fn fetch_into_cache(&self, request: ObjectRequest, purpose: Purpose) -> (FetchResult, bool) {
        // moka polls the init future only when the value is absent.
        let fetched = AtomicBool::new(false);
        // moka stores whatever init returns Ok, so an answer that must not be stored leaves
        // init as an error and comes back through here.
        let not_stored = Mutex::new(None);
        let init = async {
            fetched.store(true, Ordering::Relaxed);
            let object = self.fetch_upstream(&request, purpose == Purpose::Viewer).await?;
            // Prefetch reads MPDs; the HLS playlists list the same segments.
            if self.config.prefetch && object.kind == ObjectKind::Manifest && !request.is_playlist() {
                // Before the new MPD is in the cache, so no viewer of this tier can hold it
                // before the prefetches of its newest segments are in flight: a viewer racing
                // a prefetch joins its flight, never makes a second upstream request.
                self.prefetch_newest(&request.stream, &object.body);
            }
            let ceiling = self.cache.lifetimes().of(object.kind);
            match shared_lifetime(object.cache_control.as_ref(), ceiling) {
                Some(lifetime) => Ok::<_, TierError>(Arc::new(CachedObject { lifetime: Some(lifetime), ..object })),
                None => {
                    self.metrics.not_stored.inc();
                    tracing::debug!(stream = %request.stream, path = %request.key, status = object.status.as_u16(), "upstream said not to store; passed on uncached");
                    *not_stored.lock() = Some(Arc::new(object));
                    Err(TierError::NotStored { stream: request.stream.clone(), path: request.key.to_string() })
                }
            }
        };
        let result = self.cache.shard(&request.key).entry(request.key.clone()).or_try_insert_with(init).await;
        let fetched = fetched.load(Ordering::Relaxed);
        if let Some(object) = not_stored.lock().take() {
            return (Ok(object), fetched);
        }
        if purpose == Purpose::Prefetch && fetched && result.is_ok() {
            self.metrics.prefetches.inc();
            tracing::debug!(stream = %request.stream, path = %request.key, "prefetched");
        }
        (result.map(|entry| entry.into_value()), fetched)
    }

    /// Tries the resolver's upstreams in order within one time budget (`request_timeout`).
    /// Every attempt but the last gets half of what is left, so one hung upstream leaves
    /// time for the next. A failed connect marks that upstream down (the node is
    /// unreachable) and moves on; a time-out or a reset moves on for this request only and
    /// leaves the node up: one slow object must not take out every stream on a healthy
    /// node (health probes decide that). An answer, even a 5xx, ends the search, since
    /// another upstream would ask the same live node.
    async fn fetch_upstream(&self, request: &ObjectRequest, cache_negative: bool) -> Result<CachedObject, TierError> {
        let upstreams = self.upstream.upstreams(&request.stream);
        let deadline = Instant::now() + self.config.request_timeout;
        let mut last_error = None;
        for (i, base) in upstreams.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let budget = if i + 1 < upstreams.len() { left / 2 } else { left };
            match self.fetch_once(request, base, budget, cache_negative).await {
                Ok(object) => return Ok(object),
                Err(e @ TierError::Connect { .. }) => {
                    tracing::warn!(stream = %request.stream, upstream = %base, path = %request.key, error = %e, "upstream unreachable; trying the next");
                    self.upstream.connect_failed(base);
                    last_error = Some(e);
                }
                Err(e @ (TierError::Transport { .. } | TierError::Timeout { .. })) => {
                    tracing::warn!(stream = %request.stream, upstream = %base, path = %request.key, error = %e, "upstream failed this request; trying the next, upstream stays up");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| TierError::NoUpstream { stream: request.stream.clone() }))
    }

    async fn fetch_once(&self, request: &ObjectRequest, base: &str, budget: Duration, cache_negative: bool) -> Result<CachedObject, TierError> {
        let url = format!("{}{}", base.trim_end_matches('/'), request.key);
        self.metrics.upstream_requests.inc();
        let limit = self.config.max_body_bytes;
        let attempt = async {
            let response = self.client.get(&url).send().await.map_err(Attempt::Http)?;
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let cache_control = response.headers().get(header::CACHE_CONTROL).cloned();
            // A 5xx body is of no use; dropping the response closes that connection.
            let body = if status == StatusCode::OK || status == StatusCode::NOT_FOUND { read_body(response, limit).await? } else { Bytes::new() };
            Ok::<_, Attempt>((status, content_type, cache_control, body))
        };
        let stream = || request.stream.clone();
        let upstream = || base.to_owned();
        let started = Instant::now();
        let answer = tokio::time::timeout(budget, attempt).await;
        self.metrics.upstream_fetch_seconds.observe(started.elapsed().as_secs_f64());
        let (status, content_type, cache_control, body) = match answer {
            Ok(Ok(answer)) => answer,
            Err(_) => {
                self.count_failure(&self.metrics.upstream_timeouts);
                return Err(TierError::Timeout { stream: stream(), upstream: upstream(), after: budget });
            }
            Ok(Err(Attempt::TooLarge)) => {
                self.count_failure(&self.metrics.upstream_too_large);
                tracing::warn!(stream = %request.stream, upstream = %base, path = %request.key, limit, "upstream answer too large; not cached");
                return Err(TierError::TooLarge { stream: stream(), upstream: upstream(), path: request.key.to_string(), limit });
            }
            Ok(Err(Attempt::Http(source))) if source.is_connect() => {
                self.count_failure(&self.metrics.upstream_connect_failures);
                return Err(TierError::Connect { stream: stream(), upstream: upstream(), source });
            }
            Ok(Err(Attempt::Http(source))) if source.is_timeout() => {
                self.count_failure(&self.metrics.upstream_timeouts);
                return Err(TierError::Timeout { stream: stream(), upstream: upstream(), after: budget });
            }
            Ok(Err(Attempt::Http(source))) => {
                self.metrics.upstream_errors.inc();
                return Err(TierError::Transport { stream: stream(), upstream: upstream(), source });
            }
        };
        match status {
            StatusCode::OK => {
                tracing::debug!(stream = %request.stream, upstream = %base, path = %request.key, bytes = body.len(), "fetched");
                // The live node always sends both headers; the fallbacks keep a foreign
                // upstream from producing a response without them.
                let (default_type, default_cache) = match request.kind {
                    ObjectKind::Manifest if request.is_playlist() => (HLS_CONTENT_TYPE, MANIFEST_CACHE),
                    ObjectKind::Manifest => (MPD_CONTENT_TYPE, MANIFEST_CACHE),
                    _ => (SEGMENT_CONTENT_TYPE, IMMUTABLE),
                };
                Ok(CachedObject {
                    kind: request.kind,
                    status,
                    content_type: content_type.or(Some(HeaderValue::from_static(default_type))),
                    cache_control: cache_control.or(Some(HeaderValue::from_static(default_cache))),
                    body,
                    lifetime: None,
                })
            }
            StatusCode::NOT_FOUND if cache_negative => {
                // Stored for at most negative_ttl, and not at all if the upstream says no-store
                // (fetch_into_cache decides from cache_control).
                tracing::debug!(stream = %request.stream, upstream = %base, path = %request.key, "not found upstream");
                Ok(CachedObject { kind: ObjectKind::Negative, status, content_type, cache_control, body, lifetime: None })
            }
            StatusCode::NOT_FOUND => Err(TierError::NotFound { stream: request.stream.clone(), path: request.key.to_string() }),
            other => {
                tracing::warn!(stream = %request.stream, upstream = %base, path = %request.key, status = other.as_u16(), "upstream answered an error");
                self.metrics.upstream_errors.inc();
                Err(TierError::UpstreamStatus { stream: request.stream.clone(), upstream: base.to_owned(), status: other.as_u16() })
            }
        }
    }

    /// Counts a failed attempt, in total and by kind.
    fn count_failure(&self, kind: &Counter) {
        self.metrics.upstream_errors.inc();
        kind.inc();
    }
}

/// Why one attempt produced no answer, before it becomes a `TierError` with its context.
enum Attempt {
    Http(reqwest::Error),
    TooLarge,
}

/// The body, refused as soon as it is known to exceed `limit` bytes: by its Content-Length
/// before reading, else by a running total as chunks arrive (chunked or lying upstreams),
/// so at most `limit` bytes plus one chunk are ever held.
async fn read_body(mut response: reqwest::Response, limit: u64) -> Result<Bytes, Attempt> {
    if response.content_length().is_some_and(|length| length > limit) {
        return Err(Attempt::TooLarge);
    }
    let (mut chunks, mut total) = (Vec::new(), 0u64);
    while let Some(chunk) = response.chunk().await.map_err(Attempt::Http)? {
        total += chunk.len() as u64;
        if total > limit {
            return Err(Attempt::TooLarge);
        }
        chunks.push(chunk);
    }
    // A body that arrived in one chunk is passed on without a copy.
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => chunks.concat().into(),
    })
}
