//! The origin / edge caching tier: an axum router that serves the live node's paths
//! (`/live/{stream}/manifest.mpd`, `manifest-number.mpd` and `manifest-ll.mpd`, the HLS playlists
//! `/live/{stream}/master.m3u8` and `/live/{stream}/{rendition}/media.m3u8` (manifests too:
//! same lifetime), `/live/{stream}/{rendition}/{file}`, `/time`) from an
//! in-memory cache filled from the next tier up, with every concurrent miss for one object
//! coalesced into one upstream request (docs/design.md, Federation).
//!
//! A segment the live node is still encoding comes down chunked, one CMAF chunk at a time;
//! every tier relays it live: each waiting viewer gets the head as soon as the upstream
//! answers and each chunk as it arrives, a viewer arriving later gets what has arrived and
//! then the live tail, and the cache gets the segment once it is complete (proxy.rs; the
//! model is pingora's cache, which serves partial writes to readers through a watch of the
//! bytes written). A relay the upstream abandons cuts its viewers' responses off, so a
//! player never takes a truncated segment for a whole one. Hits on complete objects are
//! served with a Content-Length.
//!
//! LL-HLS: a playlist request with delivery directives (a blocking reload
//! `media.m3u8?_HLS_msn=..&_HLS_part=..`, a delta update `_HLS_skip=YES`; validated,
//! nothing else kept) is its own cache key with its canonical query, coalesced like any
//! miss and forwarded upstream, which holds a blocking reload; its fetch budget is `request_timeout`
//! plus [`BLOCKING_RELOAD_WAIT_MAX`], and the live node's 400/503 are passed on. A `Range`
//! request for a segment is never sent upstream: the whole segment is fetched (or relayed)
//! and cached as for any viewer, and the range served from it as the live node does.
//!
//! Who talks to it: app wiring builds a `TierState` with an `UpstreamResolver` (the cluster
//! ring: the stream's origin for an edge, the stream's live node for an origin) and serves
//! `router`. Files: cache.rs (sharded byte-bounded cache, lifetimes), proxy.rs (flights:
//! coalescing, upstream fetch, failover, live relay), prefetch.rs (newest-segment prefetch), error.rs.

pub mod cache;
pub mod error;
pub mod metrics;
pub mod prefetch;
pub mod proxy;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tower_http::cors::CorsLayer;

pub use cache::{CachedObject, Head, Lifetimes, ObjectKind, TierCache};
pub use error::TierError;
pub use metrics::{TierCounts, TierMetrics};
pub use prefetch::{NewestSegment, newest_segments};
pub use proxy::CacheStatus;

use crate::http::range::ByteRange;
use crate::http::{MEDIA_PLAYLIST_ROUTE, MULTIVARIANT_ROUTE, Peer, note_viewer, path, streamed_body};
use crate::audience::Audience;
use crate::media::StreamId;
use crate::package::mpd::{with_clock_origin, UTC_TIMING_PATH};
use crate::section::InvalidKey;
use crate::store::ManifestForm;
use prefetch::RenditionTracker;
use proxy::{Answer, Flights, ObjectRequest, Outcome};

/// Response header saying how the response was produced: hit, miss or coalesced.
pub const CACHE_STATUS_HEADER: HeaderName = HeaderName::from_static("x-cache-status");

pub const DEFAULT_CAPACITY_BYTES: u64 = 512 * 1024 * 1024;
/// Segments are immutable; an hour outlives any DVR window, and the byte bound evicts first.
pub const DEFAULT_SEGMENT_TTL: Duration = Duration::from_secs(3600);
/// Half the live node's 1 s update period, so a two-tier chain adds at most ~1 s of age.
pub const DEFAULT_MANIFEST_TTL: Duration = Duration::from_millis(500);
/// Well under one segment (1 s): a 404 is cached only for a stream the upstream does not
/// have (the live node marks a missing *segment* `no-store`), and a stream that starts, or
/// moves to another live node, must not stay invisible for long behind every tier.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_millis(200);
/// Loopback and LAN peers connect in well under a millisecond; 300 ms means the peer is gone.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// Whole budget of one fetch, over all upstreams tried: the longest a waiter can wait for
/// an answer's head (and for the whole of an answer with a length).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The live node sends a segment's CMAF chunks a chunk apart (333 ms by default; a first one
/// may take a segment duration, 1 s); 2 s without a byte means the segment will not finish.
pub const DEFAULT_CHUNK_TIMEOUT: Duration = Duration::from_secs(2);
/// What a blocking playlist reload (LL-HLS `_HLS_msn`) adds to a fetch's
/// `request_timeout`: the live node holds one up to three target durations before its 503
/// (3 s for 1 s segments, more than the default 2 s budget), and `package.segment_duration`
/// may be up to 10 s, so up to 33 s with a rounded-up target. The tier's own wait is then
/// the upstream's: it answers (the playlist, or the 503) well inside this, which only
/// bounds an upstream that hangs.
pub const BLOCKING_RELOAD_WAIT_MAX: Duration = Duration::from_secs(33);
pub const DEFAULT_PREFETCH_WINDOW: Duration = Duration::from_secs(10);
/// A 1 s segment of a 5 Mb/s top rung is ~650 KB and an MPD a few KB; 32 MiB leaves room
/// for 4K at high bitrates and longer segments, and stops a broken or hostile upstream
/// from filling memory with one answer (every waiter shares it, and the cache keeps it).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// Pooled upstream connections are dropped after this long unused: below the upstream's
/// `http.idle_timeout` (15 s by default), so a tier never sends a request on a connection
/// the upstream is closing.
pub const UPSTREAM_POOL_IDLE: Duration = Duration::from_secs(10);

/// Settings of one caching tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierConfig {
    /// Bytes of bodies (plus a small per-entry overhead) the cache may hold.
    pub capacity_bytes: u64,
    /// Number of cache shards; 0 means one per available core.
    pub shards: usize,
    /// Lifetime of init and media segments.
    #[serde(with = "humantime_serde")]
    pub segment_ttl: Duration,
    /// Lifetime of manifests.
    #[serde(with = "humantime_serde")]
    pub manifest_ttl: Duration,
    /// Longest lifetime of a remembered upstream 404 (shorter if the upstream's
    /// `Cache-Control` says so; never stored if it says `no-store`).
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// TCP connect timeout to an upstream; past it the next upstream is tried.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time for one fetch to get an answer's head, across every upstream tried (and, for an
    /// answer with a Content-Length, its whole body); then 504.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest wait for the next chunk of a body relayed while the upstream produces it (a
    /// segment still being encoded), and each viewer's wait for the next chunk of it; past
    /// it the body is abandoned, its viewers are cut off and nothing is cached.
    #[serde(with = "humantime_serde")]
    pub chunk_timeout: Duration,
    /// Largest upstream answer body in bytes; a larger one (by Content-Length, or counted
    /// as it arrives) is a 502, or cut off if it was being relayed, and is not cached.
    pub max_body_bytes: u64,
    /// Fetch the newest segments of requested renditions when a new MPD arrives.
    pub prefetch: bool,
    /// A rendition counts as requested if a viewer asked for one of its segments this recently.
    #[serde(with = "humantime_serde")]
    pub prefetch_window: Duration,
}

impl Default for TierConfig {
    fn default() -> Self {
        Self {
            capacity_bytes: DEFAULT_CAPACITY_BYTES,
            shards: 0,
            segment_ttl: DEFAULT_SEGMENT_TTL,
            manifest_ttl: DEFAULT_MANIFEST_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            chunk_timeout: DEFAULT_CHUNK_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            prefetch: false,
            prefetch_window: DEFAULT_PREFETCH_WINDOW,
        }
    }
}

impl TierConfig {
    pub fn validate(&self) -> Result<(), InvalidKey> {
        let invalid = |key, reason| Err(InvalidKey::new("tier", key, reason));
        if self.capacity_bytes < 1024 * 1024 {
            return invalid("capacity_bytes", "must be at least 1 MiB");
        }
        for (key, value) in [
            ("segment_ttl", self.segment_ttl),
            ("manifest_ttl", self.manifest_ttl),
            ("negative_ttl", self.negative_ttl),
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("chunk_timeout", self.chunk_timeout),
        ] {
            if value.is_zero() {
                return invalid(key, "must be more than zero");
            }
        }
        if self.connect_timeout > self.request_timeout {
            return invalid("connect_timeout", "must not exceed request_timeout");
        }
        if self.max_body_bytes < 64 * 1024 {
            return invalid("max_body_bytes", "must be at least 64 KiB");
        }
        Ok(())
    }

    fn lifetimes(&self) -> Lifetimes {
        Lifetimes { segment: self.segment_ttl, manifest: self.manifest_ttl, negative: self.negative_ttl }
    }
}

/// Where a stream's objects come from: base URLs (`http://127.0.0.1:PORT`) in order of
/// preference. An edge answers with the stream's origins, an origin with the stream's
/// live node and its successors on the ring.
pub trait UpstreamResolver: Send + Sync {
    fn upstreams(&self, stream: &StreamId) -> Vec<String>;
    /// A TCP connection to `base` could not be made just now (refused, unreachable, connect
    /// time-out); the resolver may mark it down at once instead of waiting for its health
    /// probe. Never called for a slow or reset answer: that is one object's failure, and a
    /// node serving every other stream must not be taken out for it.
    fn connect_failed(&self, _base: &str) {}
}

/// The same upstreams for every stream: a single origin, or a fixed list.
#[derive(Debug, Clone)]
pub struct StaticUpstreams(pub Vec<String>);

impl UpstreamResolver for StaticUpstreams {
    fn upstreams(&self, _stream: &StreamId) -> Vec<String> {
        self.0.clone()
    }
}

/// Everything a tier's handlers share. Cheap to clone.
#[derive(Clone)]
pub struct TierState {
    pub cache: TierCache,
    pub upstream: Arc<dyn UpstreamResolver>,
    pub client: reqwest::Client,
    pub metrics: Arc<TierMetrics>,
    config: Arc<TierConfig>,
    renditions: Arc<RenditionTracker>,
    flights: Arc<Flights>,
    audience: Arc<Audience>,
}

impl TierState {
    pub fn new(config: TierConfig, upstream: Arc<dyn UpstreamResolver>) -> Result<Self, TierError> {
        config.validate()?;
        let client = reqwest::Client::builder()
            // Peers are addressed directly; an environment proxy must not sit between tiers.
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(UPSTREAM_POOL_IDLE)
            .tcp_nodelay(true)
            .build()
            .map_err(TierError::Client)?;
        let cache = TierCache::new(config.capacity_bytes, config.shards, config.lifetimes());
        Ok(Self {
            flights: Arc::new(Flights::new(cache.shard_count())),
            cache,
            upstream,
            client,
            metrics: Arc::default(),
            config: Arc::new(config),
            renditions: Arc::new(RenditionTracker::new()),
            audience: Arc::default(),
        })
    }

    /// Reports this tier's viewers to `audience`.
    pub fn observed_by(mut self, audience: Arc<Audience>) -> Self {
        self.audience = audience;
        self
    }

    /// Registers this tier's metrics in the node's registry.
    pub fn register(&self, registry: &mut Registry) {
        self.metrics.register(registry, self.cache.clone());
    }

    pub fn config(&self) -> &TierConfig {
        &self.config
    }

    /// The counters and the cache's size now.
    pub fn counts(&self) -> TierCounts {
        self.metrics.counts(&self.cache)
    }
}

pub fn router(state: TierState) -> Router {
    Router::new()
        .route("/live/{stream}/manifest.mpd", get(|s, p, peer, h| manifest(s, p, peer, h, ManifestForm::Timeline)))
        .route("/live/{stream}/manifest-number.mpd", get(|s, p, peer, h| manifest(s, p, peer, h, ManifestForm::Number)))
        .route("/live/{stream}/manifest-ll.mpd", get(|s, p, peer, h| manifest(s, p, peer, h, ManifestForm::LowLatency)))
        .route(MULTIVARIANT_ROUTE, get(multivariant))
        .route(MEDIA_PLAYLIST_ROUTE, get(media_playlist))
        .route("/live/{stream}/{rendition}/{file}", get(object))
        .route(UTC_TIMING_PATH, get(crate::http::clock))
        .fallback(not_found)
        .layer(CorsLayer::permissive())
        .with_state(state)
}

async fn manifest(State(state): State<TierState>, Path(stream): Path<String>, peer: Peer, headers: HeaderMap, form: ManifestForm) -> Response {
    state.metrics.requests.inc();
    let stream = match path::stream(&stream) {
        Ok(stream) => stream,
        Err(e) => return bad_request(&state, e.into()),
    };
    let key = Arc::from(format!("/live/{stream}/{}", form.file_name()));
    // The cached MPD names the upstream's clock; this viewer asked this node.
    let origin = crate::http::viewer_origin(&headers);
    serve_manifest(state, stream, key, peer, headers, |body| with_clock_origin(body, origin.as_deref())).await
}

async fn multivariant(State(state): State<TierState>, Path(stream): Path<String>, peer: Peer, headers: HeaderMap) -> Response {
    playlist(state, &stream, None, path::PlaylistQuery::default(), peer, headers).await
}

async fn media_playlist(
    State(state): State<TierState>,
    Path((stream, rendition)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    match path::playlist_query(query.as_deref()) {
        Ok(query) => playlist(state, &stream, Some(&rendition), query, peer, headers).await,
        Err(e) => {
            state.metrics.requests.inc();
            bad_request(&state, e.into())
        }
    }
}

/// An HLS playlist: a manifest, cached and coalesced like the MPDs, served as it came. A
/// request with delivery directives (`query`: a blocking reload, a delta update) is its
/// own key, with its canonical query, fetched upstream with it: the upstream holds a
/// blocking reload until the playlist has what it asks for.
async fn playlist(state: TierState, stream: &str, rendition: Option<&str>, query: path::PlaylistQuery, peer: Peer, headers: HeaderMap) -> Response {
    state.metrics.requests.inc();
    let (stream, playlist) = match path::playlist(stream, rendition) {
        Ok(pair) => pair,
        Err(e) => return bad_request(&state, e.into()),
    };
    // Validated identifiers and numbers, so the key is the canonical path (and query).
    let query = Some(query.canonical()).filter(|q| !q.is_empty()).map(|q| format!("?{q}")).unwrap_or_default();
    let key = Arc::from(format!("/live/{stream}/{}{query}", playlist.relative_path()));
    serve_manifest(state, stream, key, peer, headers, Bytes::clone).await
}

/// The manifest at `key` through the cache, its body passed through `rewrite` for this
/// viewer when it is one.
async fn serve_manifest(
    state: TierState,
    stream: StreamId,
    key: Arc<str>,
    peer: Peer,
    headers: HeaderMap,
    rewrite: impl FnOnce(&Bytes) -> Bytes,
) -> Response {
    let outcome = state.lookup(ObjectRequest { stream: stream.clone(), key, kind: ObjectKind::Manifest }).await;
    let stall = state.config.chunk_timeout;
    respond(outcome, stall, rewrite, move |bytes| note_viewer(&state.audience, &stream, &peer, &headers, bytes))
}

async fn object(
    State(state): State<TierState>,
    Path((stream, rendition, file)): Path<(String, String, String)>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    state.metrics.requests.inc();
    let (stream, object) = match path::stream(&stream).and_then(|s| Ok((s, path::object(&rendition, &file)?))) {
        Ok(pair) => pair,
        Err(e) => return bad_request(&state, e.into()),
    };
    if state.config.prefetch {
        state.renditions.note(&stream, &object.rendition);
    }
    // Validated identifiers, so the key is the canonical path and holds no traversal.
    let key = Arc::from(format!("/live/{stream}/{rendition}/{file}"));
    let range = crate::http::range::parse(headers.get(header::RANGE));
    let outcome = state.lookup(ObjectRequest { stream: stream.clone(), key, kind: ObjectKind::Segment }).await;
    let stall = state.config.chunk_timeout;
    if let Some(range) = range {
        // A part's length; a hint's bytes are not known yet.
        note_viewer(&state.audience, &stream, &peer, &headers, range.known_len() as usize);
        return respond_range(outcome, range, stall, &state.metrics, &stream).await;
    }
    respond(outcome, stall, Bytes::clone, move |bytes| note_viewer(&state.audience, &stream, &peer, &headers, bytes))
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], "not found\n").into_response()
}

fn bad_request(state: &TierState, error: TierError) -> Response {
    state.metrics.bad_requests.inc();
    error_response(&error, None)
}

/// The answer to a lookup, with its headers and its cache status in a header. A complete
/// 200's body is passed through `rewrite` and credited to the viewer (`delivered`, with its
/// length) at once; a growing one is relayed chunk by chunk, each within `stall`, and
/// credited with the bytes sent when the response ends, however it ends.
fn respond(
    (result, status): Outcome,
    stall: Duration,
    rewrite: impl FnOnce(&Bytes) -> Bytes,
    delivered: impl FnOnce(usize) + Send + 'static,
) -> Response {
    let answer = match result {
        Ok(answer) => answer,
        Err(error) => return error_response(&error, Some(status)),
    };
    let mut response = match &answer {
        Answer::Complete(object) if object.head.status == StatusCode::OK => {
            let body = rewrite(&object.body);
            delivered(body.len());
            (StatusCode::OK, body).into_response()
        }
        Answer::Complete(object) => (object.head.status, object.body.clone()).into_response(),
        // Only 200 segments grow (proxy.rs), so there is nothing to rewrite.
        Answer::Growing(growing) => (growing.head.status, streamed_body(growing.body.reader(stall), delivered)).into_response(),
    };
    let head = answer.head();
    let headers = response.headers_mut();
    if let Some(value) = &head.content_type {
        headers.insert(header::CONTENT_TYPE, value.clone());
    }
    if let Some(value) = &head.cache_control {
        headers.insert(header::CACHE_CONTROL, value.clone());
    }
    headers.insert(CACHE_STATUS_HEADER, HeaderValue::from_static(status.as_str()));
    response
}

/// A byte range (LL-HLS parts and preload hints) of the answer to a lookup: the whole
/// object is fetched and cached as for any viewer (the range is never sent upstream), and
/// the range served from it as the live node does: from a complete object at once, from a
/// relayed body once it holds the range's bytes (waiting up to `stall`), a hint streaming
/// from its offset (`http::growing_range`).
/// One that does not arrive in time is counted and logged.
async fn respond_range((result, status): Outcome, range: ByteRange, stall: Duration, metrics: &TierMetrics, stream: &StreamId) -> Response {
    let answer = match result {
        Ok(answer) => answer,
        Err(error) => return error_response(&error, Some(status)),
    };
    let content_type = answer.head().content_type.clone().unwrap_or(HeaderValue::from_static(crate::http::SEGMENT_CONTENT_TYPE));
    let mut response = match &answer {
        Answer::Complete(object) if object.head.status == StatusCode::OK => crate::http::complete_range(object.body.clone(), range, content_type),
        Answer::Complete(object) => {
            let mut response = (object.head.status, object.body.clone()).into_response();
            if let Some(value) = &object.head.cache_control {
                response.headers_mut().insert(header::CACHE_CONTROL, value.clone());
            }
            response
        }
        Answer::Growing(growing) => {
            let response = crate::http::growing_range(Arc::clone(&growing.body), range, content_type, stall, stall).await;
            if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                metrics.range_wait_timeouts.inc();
                tracing::debug!(stream = %stream, ?range, "a byte range of a relayed segment did not arrive in time");
            }
            response
        }
    };
    response.headers_mut().insert(CACHE_STATUS_HEADER, HeaderValue::from_static(status.as_str()));
    response
}

/// The one place a `TierError` becomes a response.
fn error_response(error: &TierError, cache_status: Option<CacheStatus>) -> Response {
    let status = error.status();
    // A viewer learns what was wrong with its request; upstream addresses and causes stay
    // in this node's log (proxy.rs logs them once per fetch, not once per waiter).
    let body = if status.is_client_error() { format!("{error}\n") } else { format!("{}\n", status.canonical_reason().unwrap_or("error")) };
    let mut response = (status, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], body).into_response();
    if let Some(cache_status) = cache_status {
        response.headers_mut().insert(CACHE_STATUS_HEADER, HeaderValue::from_static(cache_status.as_str()));
    }
    response
}
