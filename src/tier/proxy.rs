//! Cache lookup, request coalescing, the upstream fetch with failover, and the live relay
//! of answers still being produced. Handlers in mod.rs and the prefetcher come through
//! here; this file is the only place that talks to upstreams.
//!
//! Coalescing: a *flight* map (key -> shared future) gathers every concurrent miss for one
//! key behind one fetch task. The future resolves, for every waiter at once, as soon as the
//! upstream's status and headers are known ([`Answer`]); the flight stays registered until
//! its body is complete and in the cache (the task stores before it unregisters), so a
//! later miss finds one or the other and one object costs one upstream request per tier.
//! A new flight looks in the cache before going upstream (the previous one may have landed
//! between a viewer's cache miss and its joining), then stores with a plain insert: the
//! flight map already lets only one fetch per key run.
//!
//! Live relay: the live node answers a GET for a segment still being encoded at once,
//! chunked (no Content-Length), with each CMAF chunk as the muxer cuts it. Such an answer
//! (a 200 segment without a length) is relayed while it arrives: the fetch task pushes each
//! upstream chunk into a [`GrowingBody`] and every waiter, including one that joins late,
//! reads it from the first byte and then follows the live tail, so a viewer two tiers down
//! gets each chunk one relay hop per tier after the live node sends it, not a whole
//! segment later. The model is pingora's cache, which serves an object still being written
//! to its readers through a watch of the bytes written so far. Answers with a length
//! (complete segments, manifests, 404s) are read whole within the fetch budget as before:
//! manifests must be whole before they are rewritten per viewer or parsed for prefetch,
//! and a complete object gains little from a relay. The cache only ever holds complete
//! objects: a relayed body is cached when sealed, never while it grows.
//!
//! Bounds: `request_timeout` bounds the wait for an answer's head (over every upstream
//! tried), and the whole of an answer read whole; a blocking playlist reload gets
//! `BLOCKING_RELOAD_WAIT_MAX` more, the longest the live node may hold it. Failover happens only before the head:
//! once a relayed body's first byte may have reached a viewer, a failure abandons the body
//! (its readers' responses are cut off, not ended as if complete), nothing is cached and
//! the next miss asks upstream again. A relayed body is bounded by `chunk_timeout` (the
//! longest wait for its next chunk, also each reader's stall bound) and `max_body_bytes`;
//! an abandoned body is counted (`upstream_abandoned`, and the cause's counter) and logged
//! (one line a second).
//!
//! Why a flight map and not moka's waiters: (1) they queue on an async RwLock whose
//! readers wake one another in a chain, each woken task waking the next, so a hot segment's
//! waiters are released one by one from one worker; a shared future wakes them all at
//! once. On the 2-core test machine both measure the same (1,000 x 200 KB, p99 ~150-240 ms
//! after the upstream's answer, within noise); the chain is expected to matter on many
//! cores, not measured. (2) A flight is registered synchronously, so the prefetcher can
//! guarantee that a viewer who sees the new MPD joins its fetch rather than racing it.
//! (3) moka's waiters get a value only once it is stored, and a growing body is not.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use super::TierState;
use super::cache::{CachedObject, Head, ObjectKind, shared_lifetime};
use super::error::TierError;
use crate::http::{HLS_CONTENT_TYPE, IMMUTABLE, MANIFEST_CACHE, MPD_CONTENT_TYPE, SEGMENT_CONTENT_TYPE};
use crate::media::StreamId;
use crate::store::GrowingBody;
use crate::warn_limiter::WarnLimiter;

/// One object a viewer or the prefetcher wants, by its path (the same on every tier).
#[derive(Debug, Clone)]
pub(crate) struct ObjectRequest {
    pub stream: StreamId,
    /// The request path, e.g. `/live/cam/720p/abc-7.m4s`; also the cache key. A playlist
    /// request with delivery directives carries their canonical query
    /// (`?_HLS_msn=..&_HLS_part=..&_HLS_skip=YES`), so it is keyed, coalesced and forwarded
    /// upstream with it.
    pub key: Arc<str>,
    /// `Manifest` or `Segment`; `Negative` is only ever the kind of a cached 404.
    pub kind: ObjectKind,
}

impl ObjectRequest {
    /// An HLS playlist (a manifest that is not an MPD).
    fn is_playlist(&self) -> bool {
        self.key.split('?').next().is_some_and(|path| path.ends_with(".m3u8"))
    }

    /// An LL-HLS blocking playlist reload (the upstream holds it until the playlist changes).
    fn is_blocking_reload(&self) -> bool {
        self.is_playlist() && self.key.split_once('?').is_some_and(|(_, query)| query.contains("_HLS_msn="))
    }

    /// The live node's refusal of a blocking reload (400: too far ahead; 503: not there in
    /// three target durations): an answer for the viewer, not an upstream failure.
    fn is_refused_reload(&self, status: StatusCode) -> bool {
        self.is_blocking_reload() && matches!(status, StatusCode::BAD_REQUEST | StatusCode::SERVICE_UNAVAILABLE)
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

/// What a flight's waiters get as soon as the upstream has answered.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// A complete answer: from the cache, or read whole from upstream.
    Complete(Arc<CachedObject>),
    /// A 200 segment the upstream is still producing, relayed as it arrives.
    Growing(Arc<Growing>),
}

/// A relayed answer: its head, and its body as far as it has arrived.
#[derive(Debug)]
pub(crate) struct Growing {
    pub head: Head,
    pub body: Arc<GrowingBody>,
}

impl Answer {
    pub(crate) fn head(&self) -> &Head {
        match self {
            Answer::Complete(object) => &object.head,
            Answer::Growing(growing) => &growing.head,
        }
    }
}

pub(crate) type FetchResult = Result<Answer, Arc<TierError>>;
pub(crate) type Outcome = (FetchResult, CacheStatus);
/// A fetch in progress as its waiters see it: its answer's head (or error), and whether it
/// went upstream (false when the cache already held the object).
type Flight = Shared<BoxFuture<'static, (FetchResult, bool)>>;
/// Each flight with its id, so a task unregisters its own flight and never a successor.
type FlightShard = Mutex<HashMap<Arc<str>, (u64, Flight)>>;

/// Fetches in progress, sharded like the cache so one hot key's lock meets only its shard.
pub(crate) struct Flights {
    shards: Box<[FlightShard]>,
    hasher: RandomState,
    next_id: AtomicU64,
    /// One warning a second about relayed bodies abandoned mid-stream.
    abandon_log: WarnLimiter,
}

impl Flights {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_id: AtomicU64::new(0),
            abandon_log: WarnLimiter::default(),
        }
    }

    fn shard(&self, key: &str) -> &FlightShard {
        &self.shards[(self.hasher.hash_one(key) % self.shards.len() as u64) as usize]
    }

    /// How many requests wait on `key`'s flight now (the map holds one more handle), so a
    /// test can wait for its viewers to have joined instead of sleeping.
    #[cfg(test)]
    pub(crate) fn waiting(&self, key: &str) -> usize {
        self.shard(key).lock().get(key).and_then(|(_, flight)| flight.strong_count()).map_or(0, |handles| handles - 1)
    }

}

/// Removes a flight from the map when its task ends, panics included, so a later miss
/// starts a new fetch instead of joining a dead one.
struct Landing {
    flights: Arc<Flights>,
    key: Arc<str>,
    id: u64,
}

impl Landing {
    /// Unregisters this flight, if it is still the key's.
    fn unregister(&self) {
        let mut flights = self.flights.shard(&self.key).lock();
        if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.key);
        }
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// What a successful fetch brought back.
enum Fetched {
    /// Read whole: it had a Content-Length, or is not a 200 segment.
    Complete(CachedObject),
    /// A 200 segment without a length: the upstream is still producing it.
    Growing { head: Head, upstream: String, response: reqwest::Response },
}

/// One attempt's body: read whole, or left to arrive (a 200 segment without a length).
enum Payload {
    Whole(Bytes),
    Arriving(reqwest::Response),
}

impl TierState {
    /// A viewer's request: cache, else the key's flight. Counts hit / miss / coalesced.
    pub(crate) async fn lookup(&self, request: ObjectRequest) -> Outcome {
        if let Some(object) = self.cache.get(&request.key).await {
            self.metrics.hits.inc();
            return (Ok(Answer::Complete(object)), CacheStatus::Hit);
        }
        let (flight, started) = self.flight(request, Purpose::Viewer);
        let (result, fetched) = flight.await;
        let status = if started && fetched { CacheStatus::Miss } else { CacheStatus::Coalesced };
        if status == CacheStatus::Miss { self.metrics.misses.inc() } else { self.metrics.coalesced.inc() };
        (result, status)
    }

    /// The flight for `request.key`: the one in progress, or a new one (then `true`). The
    /// fetch runs in its own task: a viewer that hangs up drops only its wait (or its
    /// reader), never the fetch the others wait on. Synchronous, so a caller that returns
    /// has registered it.
    pub(crate) fn flight(&self, request: ObjectRequest, purpose: Purpose) -> (Flight, bool) {
        let mut flights = self.flights.shard(&request.key).lock();
        if let Some((_, flight)) = flights.get(&request.key) {
            return (flight.clone(), false);
        }
        let key = request.key.clone();
        let stream = request.stream.clone();
        let id = self.flights.next_id.fetch_add(1, Ordering::Relaxed);
        let landing = Landing { flights: self.flights.clone(), key: key.clone(), id };
        let (answer, answered) = oneshot::channel();
        let state = self.clone();
        tokio::spawn(async move { state.fly(request, purpose, answer, landing).await });
        let flight = async move {
            answered.await.unwrap_or_else(|_| {
                let reason = "the fetch task ended without an answer (panic or shutdown)".to_owned();
                (Err(Arc::new(TierError::Task { stream, reason })), true)
            })
        }
        .boxed()
        .shared();
        flights.insert(key, (id, flight.clone()));
        (flight, true)
    }

    /// One flight's task: answers its waiters through `answer` as soon as the head is known,
    /// then, for a relayed body, pumps it to the end. Whatever is stored is in the cache
    /// before `landing` is dropped (and the flight unregistered).
    async fn fly(&self, request: ObjectRequest, purpose: Purpose, answer: oneshot::Sender<(FetchResult, bool)>, landing: Landing) {
        // A flight that ended just before this one was registered left its object in the
        // cache (it stores before it unregisters): that, not the upstream.
        if let Some(object) = self.cache.get(&request.key).await {
            let _ = answer.send((Ok(Answer::Complete(object)), false));
            return;
        }
        let result = match self.fetch_upstream(&request, purpose == Purpose::Viewer).await {
            Ok(Fetched::Complete(object)) => Ok(Answer::Complete(self.keep(&request, purpose, object).await)),
            Ok(Fetched::Growing { head, upstream, response }) => {
                let growing = Arc::new(Growing { head, body: GrowingBody::new() });
                // Waiters that hung up meanwhile leave nothing to tell; the relay still fills
                // the cache for the next.
                let _ = answer.send((Ok(Answer::Growing(growing.clone())), true));
                self.relay(&request, purpose, &upstream, response, &growing, &landing).await;
                return;
            }
            Err(e) => Err(Arc::new(e)),
        };
        let _ = answer.send((result, true));
    }

    /// A complete answer, cached unless its upstream said not to; returned for the waiters.
    async fn keep(&self, request: &ObjectRequest, purpose: Purpose, object: CachedObject) -> Arc<CachedObject> {
        // Prefetch reads MPDs; the HLS playlists list the same segments.
        if self.config.prefetch && object.head.kind == ObjectKind::Manifest && !request.is_playlist() {
            // Before the new MPD is in the cache or with any waiter (manifests are read
            // whole), so no viewer of this tier can hold it before the prefetches of its
            // newest segments are in flight: a viewer racing a prefetch joins its flight,
            // never makes a second upstream request.
            self.prefetch_newest(&request.stream, &object.body);
        }
        let ceiling = self.cache.lifetimes().of(object.head.kind);
        let Some(lifetime) = shared_lifetime(object.head.cache_control.as_ref(), ceiling) else {
            self.metrics.not_stored.inc();
            tracing::debug!(stream = %request.stream, path = %request.key, status = object.head.status.as_u16(), "upstream said not to store; passed on uncached");
            return Arc::new(object);
        };
        let object = Arc::new(CachedObject { lifetime: Some(lifetime), ..object });
        self.cache.insert(request.key.clone(), object.clone()).await;
        if purpose == Purpose::Prefetch {
            self.metrics.prefetches.inc();
            tracing::debug!(stream = %request.stream, path = %request.key, "prefetched");
        }
        object
    }

    /// Relays a growing answer into `body` as it arrives: each chunk within `chunk_timeout`,
    /// at most `max_body_bytes` in all. Complete: sealed (its readers end) and kept. Else
    /// abandoned (its readers' responses are cut off), counted, logged, not cached.
    async fn relay(&self, request: &ObjectRequest, purpose: Purpose, upstream: &str, mut response: reqwest::Response, growing: &Growing, landing: &Landing) {
        let body = &growing.body;
        let (limit, stall) = (self.config.max_body_bytes, self.config.chunk_timeout);
        let mut total = 0u64;
        let failure = loop {
            match tokio::time::timeout(stall, response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    total += chunk.len() as u64;
                    if total > limit {
                        self.count_failure(&self.metrics.upstream_too_large);
                        break TierError::TooLarge { stream: request.stream.clone(), upstream: upstream.to_owned(), path: request.key.to_string(), limit };
                    }
                    body.push(chunk);
                }
                Ok(Ok(None)) => {
                    tracing::debug!(stream = %request.stream, upstream, path = %request.key, bytes = total, "relayed");
                    let object = CachedObject { head: growing.head.clone(), body: body.concat(), lifetime: None };
                    body.seal();
                    self.keep(request, purpose, object).await;
                    return;
                }
                Ok(Err(source)) => {
                    self.metrics.upstream_errors.inc();
                    break TierError::Transport { stream: request.stream.clone(), upstream: upstream.to_owned(), source };
                }
                Err(_) => {
                    self.count_failure(&self.metrics.upstream_timeouts);
                    break TierError::Stalled { stream: request.stream.clone(), upstream: upstream.to_owned(), path: request.key.to_string(), after: stall };
                }
            }
        };
        // Unregistered first: a viewer arriving from now on starts a new fetch instead of
        // joining a body that ends in an error.
        landing.unregister();
        body.abandon();
        self.metrics.upstream_abandoned.inc();
        if let Some(held_back) = self.flights.abandon_log.allow() {
            tracing::warn!(stream = %request.stream, upstream, path = %request.key, bytes = total, held_back, error = %failure, "relayed body abandoned mid-stream: its viewers are cut off, nothing cached");
        }
    }

    /// Tries the resolver's upstreams in order within one time budget (`request_timeout`).
    /// Every attempt but the last gets half of what is left, so one hung upstream leaves
    /// time for the next. A failed connect marks that upstream down (the node is
    /// unreachable) and moves on; a time-out or a reset moves on for this request only and
    /// leaves the node up: one slow object must not take out every stream on a healthy
    /// node (health probes decide that). An answer, even a 5xx, ends the search, since
    /// another upstream would ask the same live node.
    async fn fetch_upstream(&self, request: &ObjectRequest, cache_negative: bool) -> Result<Fetched, TierError> {
        let upstreams = self.upstream.upstreams(&request.stream);
        let extra = if request.is_blocking_reload() { super::BLOCKING_RELOAD_WAIT_MAX } else { Duration::ZERO };
        let deadline = Instant::now() + self.config.request_timeout + extra;
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

    async fn fetch_once(&self, request: &ObjectRequest, base: &str, budget: Duration, cache_negative: bool) -> Result<Fetched, TierError> {
        let url = format!("{}{}", base.trim_end_matches('/'), request.key);
        self.metrics.upstream_requests.inc();
        let limit = self.config.max_body_bytes;
        let attempt = async {
            let response = self.client.get(&url).send().await.map_err(Attempt::Http)?;
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let cache_control = response.headers().get(header::CACHE_CONTROL).cloned();
            // A 200 segment without a length is one the upstream is still producing: relayed
            // as it arrives (`relay`), not read here. A 5xx body is of no use; dropping the
            // response closes that connection.
            let payload = if status == StatusCode::OK && request.kind == ObjectKind::Segment && response.content_length().is_none() {
                Payload::Arriving(response)
            } else if status == StatusCode::OK || status == StatusCode::NOT_FOUND || request.is_refused_reload(status) {
                Payload::Whole(read_body(response, limit).await?)
            } else {
                Payload::Whole(Bytes::new())
            };
            Ok::<_, Attempt>((status, content_type, cache_control, payload))
        };
        let stream = || request.stream.clone();
        let upstream = || base.to_owned();
        let started = Instant::now();
        let answer = tokio::time::timeout(budget, attempt).await;
        self.metrics.upstream_fetch_seconds.observe(started.elapsed().as_secs_f64());
        let (status, content_type, cache_control, payload) = match answer {
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
        let body = match payload {
            Payload::Arriving(response) => {
                tracing::debug!(stream = %request.stream, upstream = %base, path = %request.key, "relaying as it arrives");
                let head = ok_head(request, content_type, cache_control);
                return Ok(Fetched::Growing { head, upstream: upstream(), response });
            }
            Payload::Whole(body) => body,
        };
        match status {
            StatusCode::OK => {
                tracing::debug!(stream = %request.stream, upstream = %base, path = %request.key, bytes = body.len(), "fetched");
                Ok(Fetched::Complete(CachedObject { head: ok_head(request, content_type, cache_control), body, lifetime: None }))
            }
            StatusCode::NOT_FOUND if cache_negative => {
                // Stored for at most negative_ttl, and not at all if the upstream says no-store
                // (`keep` decides from cache_control).
                tracing::debug!(stream = %request.stream, upstream = %base, path = %request.key, "not found upstream");
                let head = Head { kind: ObjectKind::Negative, status, content_type, cache_control };
                Ok(Fetched::Complete(CachedObject { head, body, lifetime: None }))
            }
            StatusCode::NOT_FOUND => Err(TierError::NotFound { stream: request.stream.clone(), path: request.key.to_string() }),
            refused if request.is_refused_reload(refused) => {
                // The live node's answer to this viewer's query, passed on (uncached: it
                // says no-store).
                let head = Head { kind: request.kind, status: refused, content_type, cache_control };
                Ok(Fetched::Complete(CachedObject { head, body, lifetime: None }))
            }
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

/// The head of a 200 for `request`. The live node always sends both headers; the fallbacks
/// keep a foreign upstream from producing a response without them.
fn ok_head(request: &ObjectRequest, content_type: Option<HeaderValue>, cache_control: Option<HeaderValue>) -> Head {
    let (default_type, default_cache) = match request.kind {
        ObjectKind::Manifest if request.is_playlist() => (HLS_CONTENT_TYPE, MANIFEST_CACHE),
        ObjectKind::Manifest => (MPD_CONTENT_TYPE, MANIFEST_CACHE),
        _ => (SEGMENT_CONTENT_TYPE, IMMUTABLE),
    };
    Head {
        kind: request.kind,
        status: StatusCode::OK,
        content_type: content_type.or(Some(HeaderValue::from_static(default_type))),
        cache_control: cache_control.or(Some(HeaderValue::from_static(default_cache))),
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
