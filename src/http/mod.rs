//! The viewer-facing HTTP server (axum): live manifests (MPDs and HLS playlists) and
//! segments from the local store,
//! the list of streams, and a clock for players. The same paths on every tier; caching
//! headers say what may be cached: segments forever (their URLs are never reused),
//! manifests for at most a second, a 404 for a stream this node does not have briefly, and
//! a 404 for a missing segment of a stream it has never (it may be written a moment later).
//! A segment still being encoded (low latency) is answered at once and streamed chunk by
//! chunk as the muxer cuts it (chunked transfer, no Content-Length), ending when it is
//! complete; the bytes are the same a later request gets whole, so it is as immutable.
//!
//! LL-HLS: a segment answers a `Range` request (range.rs) with 206 and those bytes: a part
//! of a growing segment once all its bytes exist (never trickled), an open-ended preload
//! hint at once, streaming from its offset as the segment grows; 416 past the end of a
//! complete one ([`complete_range`], [`growing_range`]). A media playlist with
//! `?_HLS_msn=M[&_HLS_part=P]` (path.rs) is a blocking reload: answered once the playlist
//! holds that part or later (`Store::playlist_when`), 400 more than two segments ahead,
//! 503 after three target durations; cacheable by URL for [`BLOCKING_PLAYLIST_CACHE`].
//! With `_HLS_skip=YES` (or `v2`) a media playlist is answered with its delta update
//! (`PlaylistText::delta`), counted in `rackcast_live_playlist_delta_updates_total`.
//! config.rs holds `[http]`; server.rs is the bounded accept loop every node serves
//! through (connection cap, time-outs); path.rs parses request paths; probes.rs answers
//! `/healthz` and `/ready`.

pub mod config;
pub mod path;
pub mod probes;
pub mod range;
pub mod server;

pub use server::{HttpEdgeMetrics, serve};

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::body::Body;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tower_http::cors::CorsLayer;

use crate::media::StreamId;
use crate::audience::Audience;
use crate::package::mpd::{with_clock_origin, UTC_TIMING_PATH};
use crate::store::growing::ReadError;
use crate::store::{GrowingBody, Lookup, ManifestForm, ObjectKey, Part, PlaylistLookup, PlaylistText, Store, Stored};
use range::ByteRange;
use crate::stream::StreamRegistry;

pub const MPD_CONTENT_TYPE: &str = "application/dash+xml";
pub const HLS_CONTENT_TYPE: &str = "application/vnd.apple.mpegurl";
pub const SEGMENT_CONTENT_TYPE: &str = "video/iso.segment";
/// Segments and init segments: their URLs name one byte string forever.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Manifests: players re-fetch every update period; shared caches may hold one a second.
pub const MANIFEST_CACHE: &str = "public, max-age=0, s-maxage=1";
/// A blocking playlist reload's answer (LL-HLS): it holds what its URL's query asked for
/// whenever it is served, so caches may keep it by URL; a second (the shortest `max-age`
/// there is, about five part targets) keeps a cache from serving a playlist far behind.
pub const BLOCKING_PLAYLIST_CACHE: &str = "public, max-age=1";
/// A 404 for a stream this node does not have: players must ask again, shared caches may
/// remember it briefly (a tier caps it at its `negative_ttl`), so a flood of requests for
/// an unknown stream stops at the edge. A stream that starts is visible within that cap.
pub const UNKNOWN_STREAM_CACHE: &str = "public, max-age=0, s-maxage=1";

#[derive(Clone)]
pub struct HttpState {
    pub store: Arc<Store>,
    pub registry: Arc<StreamRegistry>,
    pub metrics: Arc<LiveMetrics>,
    pub audience: Arc<Audience>,
    /// How long a request for the next media segment of a rendition waits for it to
    /// appear ([`next_segment_wait`]).
    pub next_segment_wait: std::time::Duration,
}

/// How long a request for the segment after a rendition's newest waits for it: one segment
/// duration (it is due by then, or its first chunk is), plus half of one for the
/// transcoder's jitter, but never past [`NEXT_SEGMENT_WAIT_MAX`].
pub fn next_segment_wait(segment_duration: std::time::Duration) -> std::time::Duration {
    segment_duration.mul_f64(1.5).min(NEXT_SEGMENT_WAIT_MAX)
}

/// Under a caching tier's default `request_timeout` (2 s), so that a tier's fetch of a
/// segment that does not come ends with this node's 404, not with its own time-out.
pub const NEXT_SEGMENT_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(1500);

/// The client's address, when the server recorded it (see `server.rs`).
pub type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

/// Counts a manifest or segment of `stream` served to the viewer that sent `headers`.
pub fn note_viewer(audience: &Audience, stream: &StreamId, peer: &Peer, headers: &HeaderMap, bytes: usize) {
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    audience.served(stream, peer.as_ref().map(|p| p.0.0.ip()), user_agent, bytes as u64);
}

/// What this node served from its own store (`rackcast_live_*`; lower tiers count their
/// upstream requests against these).
#[derive(Debug, Default)]
pub struct LiveMetrics {
    pub manifest_requests: Counter,
    pub object_requests: Counter,
    /// LL-HLS blocking playlist reloads answered 503: the playlist did not get there in
    /// three target durations (the stream stalled or ended).
    pub blocking_reload_timeouts: Counter,
    /// Byte-range requests of a growing segment answered 503: the bytes did not come in time.
    pub range_wait_timeouts: Counter,
    /// HLS media playlists answered with their delta update (`_HLS_skip`).
    pub playlist_delta_updates: Counter,
}

impl LiveMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("live");
        registry.register("manifest_requests", "Manifest requests this node answered from its own store", self.manifest_requests.clone());
        registry.register("object_requests", "Init and media segment requests this node answered from its own store", self.object_requests.clone());
        registry.register("blocking_reload_timeouts", "LL-HLS blocking playlist reloads answered 503 after three target durations", self.blocking_reload_timeouts.clone());
        registry.register("range_wait_timeouts", "Byte ranges of a segment being encoded answered 503: the bytes did not come in time", self.range_wait_timeouts.clone());
        registry.register("playlist_delta_updates", "HLS media playlists answered with their delta update (_HLS_skip)", self.playlist_delta_updates.clone());
    }
}

/// Longest a viewer of a segment being encoded waits for its next chunk: chunks come every
/// `package.chunk_duration`, so this means the pipeline stopped without saying so; the
/// response is cut off (not ended as if complete) and the player asks again.
pub const GROWING_STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// The HLS playlists' routes (the same on every tier; see `store::Playlist`).
pub const MULTIVARIANT_ROUTE: &str = "/live/{stream}/master.m3u8";
pub const MEDIA_PLAYLIST_ROUTE: &str = "/live/{stream}/{rendition}/media.m3u8";

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/live", get(list_streams))
        .route("/live/{stream}", get(stream_status))
        .route("/live/{stream}/uplink", get(uplink))
        .route("/live/{stream}/manifest.mpd", get(|s, p, peer, h| manifest(s, p, peer, h, ManifestForm::Timeline)))
        .route("/live/{stream}/manifest-number.mpd", get(|s, p, peer, h| manifest(s, p, peer, h, ManifestForm::Number)))
        .route("/live/{stream}/manifest-ll.mpd", get(|s, p, peer, h| manifest(s, p, peer, h, ManifestForm::LowLatency)))
        .route(MULTIVARIANT_ROUTE, get(multivariant))
        .route(MEDIA_PLAYLIST_ROUTE, get(media_playlist))
        .route("/live/{stream}/{rendition}/{file}", get(object))
        .route(UTC_TIMING_PATH, get(clock))
        .fallback(not_found)
        .layer(CorsLayer::permissive())
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], message.into()).into_response()
}

/// 404 for a stream this node does not have; see [`UNKNOWN_STREAM_CACHE`].
fn unknown_stream(stream: &StreamId) -> Response {
    let cache = HeaderValue::from_static(UNKNOWN_STREAM_CACHE);
    (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, cache)], format!("no stream {stream}\n")).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found\n")
}

/// Every stream this node serves; a stream transcoded here also says which backend and
/// device transcode it and why.
async fn list_streams(State(state): State<HttpState>) -> Response {
    let list: Vec<serde_json::Value> = state
        .store
        .streams()
        .into_iter()
        .map(|summary| {
            let transcode = state.registry.status(&summary.stream).and_then(|s| s.transcode);
            let mut entry = serde_json::to_value(&summary).unwrap_or_default();
            if let (Some(object), Some(transcode)) = (entry.as_object_mut(), transcode) {
                object.insert("transcode".into(), serde_json::to_value(transcode).unwrap_or_default());
            }
            entry
        })
        .collect();
    let mut response = Json(list).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A live stream's session, ladder plan, plan history and uplink estimate with history.
async fn stream_status(State(state): State<HttpState>, Path(stream): Path<String>) -> Response {
    let stream = match path::stream(&stream) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    match state.registry.status(&stream) {
        Some(status) => no_store(Json(serde_json::json!({ "stream": stream, "live": true, "status": status }))),
        None => error(StatusCode::NOT_FOUND, format!("stream {stream} is not being published here\n")),
    }
}

/// What the broadcaster should send: the uplink estimate and a recommended bitrate and
/// resolution, for broadcast tools that adapt their encoder.
async fn uplink(State(state): State<HttpState>, Path(stream): Path<String>) -> Response {
    let stream = match path::stream(&stream) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let Some(status) = state.registry.status(&stream) else {
        return error(StatusCode::NOT_FOUND, format!("stream {stream} is not being published here\n"));
    };
    let Some(estimate) = status.uplink else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no uplink estimate yet\n");
    };
    no_store(Json(serde_json::json!({
        "stream": stream,
        "uplink_bound": estimate.uplink_bound,
        "throughput_kbps": (estimate.throughput_bps / 1000.0).round(),
        "source_kbps": estimate.source_bitrate_bps.map(|b| (b / 1000.0).round()),
        "recommended_publish_kbps": estimate.recommended_publish_bps.map(|b| (b / 1000.0).round()),
        "recommended_height": estimate.recommended_height,
        "confidence": estimate.confidence,
        "estimate": estimate,
    })))
}

fn no_store(json: Json<serde_json::Value>) -> Response {
    let mut response = json.into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn manifest(State(state): State<HttpState>, Path(stream): Path<String>, peer: Peer, headers: HeaderMap, form: ManifestForm) -> Response {
    state.metrics.manifest_requests.inc();
    let stream = match path::stream(&stream) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // A starting stream's MPD is waited for as its next segment is (`Store::rendered_within`).
    let mpd = state.store.manifest_within(&stream, form, state.next_segment_wait).await.map(|mpd| with_clock_origin(&mpd, viewer_origin(&headers).as_deref()));
    serve_manifest(&state, &stream, mpd, MPD_CONTENT_TYPE, &peer, &headers)
}

async fn multivariant(State(state): State<HttpState>, Path(stream): Path<String>, peer: Peer, headers: HeaderMap) -> Response {
    playlist(state, &stream, None, false, peer, headers).await
}

async fn media_playlist(
    State(state): State<HttpState>,
    Path((stream, rendition)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    match path::playlist_query(query.as_deref()) {
        Ok(path::PlaylistQuery { reload: Some(reload), skip }) => blocking_playlist(state, &stream, &rendition, reload, skip, peer, headers).await,
        Ok(query) => playlist(state, &stream, Some(&rendition), query.skip, peer, headers).await,
        Err(e) => error(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// An LL-HLS blocking reload: the media playlist once it holds what `reload` asks for
/// (RFC 8216bis 6.2.5.2): 400 for a segment more than two past the playlist's last, 503
/// when it is not there within three target durations (`Store::playlist_when`). `skip`:
/// its delta update.
async fn blocking_playlist(state: HttpState, stream: &str, rendition: &str, reload: path::BlockingReload, skip: bool, peer: Peer, headers: HeaderMap) -> Response {
    state.metrics.manifest_requests.inc();
    let (stream, playlist) = match path::playlist(stream, Some(rendition)) {
        Ok(pair) => pair,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    match state.store.playlist_when(&stream, &playlist, reload.msn, reload.part).await {
        PlaylistLookup::Found(found) => {
            let text = playlist_answer(&state, found, skip);
            note_viewer(&state.audience, &stream, &peer, &headers, text.len());
            bytes_response(text, HLS_CONTENT_TYPE, BLOCKING_PLAYLIST_CACHE)
        }
        PlaylistLookup::TooFar => error(StatusCode::BAD_REQUEST, "_HLS_msn is more than two segments past the playlist's last\n"),
        PlaylistLookup::TimedOut => {
            state.metrics.blocking_reload_timeouts.inc();
            tracing::debug!(stream = %stream, ?reload, "blocking playlist reload timed out");
            error(StatusCode::SERVICE_UNAVAILABLE, "the playlist did not reach _HLS_msn/_HLS_part in three target durations\n")
        }
        PlaylistLookup::Missing => error(StatusCode::NOT_FOUND, "stream has no playable segment yet\n"),
        PlaylistLookup::UnknownStream => unknown_stream(&stream),
    }
}

/// The multivariant playlist, or the media playlist of `rendition`; one of a stream this
/// node has that is not rendered yet is waited for as the next segment is
/// (`Store::rendered_within`). `skip`: a media playlist's delta update.
async fn playlist(state: HttpState, stream: &str, rendition: Option<&str>, skip: bool, peer: Peer, headers: HeaderMap) -> Response {
    state.metrics.manifest_requests.inc();
    let (stream, playlist) = match path::playlist(stream, rendition) {
        Ok(pair) => pair,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let body = state.store.playlist_within(&stream, &playlist, state.next_segment_wait).await.map(|p| playlist_answer(&state, p, skip));
    serve_manifest(&state, &stream, body, HLS_CONTENT_TYPE, &peer, &headers)
}

/// What answers a playlist request: its delta update when `skip` asks for it and there is
/// one (counted), else the full text.
fn playlist_answer(state: &HttpState, found: PlaylistText, skip: bool) -> Bytes {
    match found.delta {
        Some(delta) if skip => {
            state.metrics.playlist_delta_updates.inc();
            delta
        }
        _ => found.text,
    }
}

/// A manifest of `stream` as found in the store: 200, or which 404.
fn serve_manifest(state: &HttpState, stream: &StreamId, body: Option<Bytes>, content_type: &'static str, peer: &Peer, headers: &HeaderMap) -> Response {
    match body {
        Some(body) => {
            note_viewer(&state.audience, stream, peer, headers, body.len());
            bytes_response(body, content_type, MANIFEST_CACHE)
        }
        // Playable in a moment: nobody may remember this answer.
        None if state.store.contains_stream(stream) => error(StatusCode::NOT_FOUND, "stream has no playable segment yet\n"),
        None => unknown_stream(stream),
    }
}

async fn object(
    State(state): State<HttpState>,
    Path((stream, rendition, file)): Path<(String, String, String)>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    state.metrics.object_requests.inc();
    let (stream, object) = match path::stream(&stream).and_then(|s| Ok((s, path::object(&rendition, &file)?))) {
        Ok(pair) => pair,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let content_type = match (object.part, object.rendition.as_str()) {
        (Part::Media(_), _) => SEGMENT_CONTENT_TYPE,
        (Part::Init, "audio") => "audio/mp4",
        (Part::Init, _) => "video/mp4",
    };
    let key = ObjectKey { rendition: object.rendition, session: object.session, part: object.part };
    let range = range::parse(headers.get(header::RANGE));
    // The next segment of a rendition is waited for (store module header); anything else
    // that is missing is answered at once.
    match state.store.object_or_next(&stream, &key, state.next_segment_wait).await {
        Lookup::Found(Stored::Complete(bytes)) => {
            let served = range.map_or(bytes.len() as u64, |r| r.end_within(bytes.len() as u64).saturating_sub(r.first()));
            note_viewer(&state.audience, &stream, &peer, &headers, served as usize);
            match range {
                Some(range) => complete_range(bytes, range, HeaderValue::from_static(content_type)),
                None => bytes_response(bytes, content_type, IMMUTABLE),
            }
        }
        Lookup::Found(Stored::Growing(body)) if range.is_some() => {
            let range = range.expect("checked");
            // A part's length; a hint's bytes are not known yet.
            note_viewer(&state.audience, &stream, &peer, &headers, range.known_len() as usize);
            let response = growing_range(body, range, HeaderValue::from_static(content_type), state.next_segment_wait, GROWING_STALL).await;
            if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                state.metrics.range_wait_timeouts.inc();
                tracing::debug!(stream = %stream, ?range, "a byte range of a growing segment did not arrive in time");
            }
            response
        }
        Lookup::Found(Stored::Growing(body)) => {
            let audience = Arc::clone(&state.audience);
            let delivered = move |bytes| note_viewer(&audience, &stream, &peer, &headers, bytes);
            let headers = [(header::CONTENT_TYPE, HeaderValue::from_static(content_type)), (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE))];
            (StatusCode::OK, headers, streamed_body(body.reader(GROWING_STALL), delivered)).into_response()
        }
        // A cached 404 would hide a segment written a moment later from every viewer behind
        // that cache for the cache's lifetime.
        Lookup::Missing => error(StatusCode::NOT_FOUND, "no such segment\n"),
        Lookup::UnknownStream => unknown_stream(&stream),
    }
}

/// A growing body as a response body, sent chunked (the live node's segments being
/// encoded, and a tier's relays). A reader's error (the body was abandoned, or stalled) is
/// returned from the stream, so hyper cuts the response off instead of ending it as if
/// complete. `delivered` is told the bytes sent when the response ends, however it ends.
pub fn streamed_body(reader: impl Stream<Item = Result<Bytes, ReadError>> + Send + 'static, delivered: impl FnOnce(usize) + Send + 'static) -> Body {
    let mut sent = Sent { bytes: 0, delivered: Some(delivered) };
    Body::from_stream(reader.inspect(move |chunk| sent.count(chunk)))
}

/// Bytes of a relayed response sent so far; reported when the response body is dropped
/// (complete, cut off, or the viewer gone).
struct Sent<F: FnOnce(usize)> {
    bytes: usize,
    delivered: Option<F>,
}

impl<F: FnOnce(usize)> Sent<F> {
    fn count(&mut self, chunk: &Result<Bytes, ReadError>) {
        if let Ok(chunk) = chunk {
            self.bytes += chunk.len();
        }
    }
}

impl<F: FnOnce(usize)> Drop for Sent<F> {
    fn drop(&mut self) {
        if let Some(delivered) = self.delivered.take() {
            delivered(self.bytes);
        }
    }
}

/// `range` of a complete object: 206 with those bytes, or 416 past its end.
pub fn complete_range(bytes: Bytes, range: ByteRange, content_type: HeaderValue) -> Response {
    let len = bytes.len() as u64;
    if range.first() >= len {
        let headers = [(header::CONTENT_RANGE, format!("bytes */{len}")), (header::CACHE_CONTROL, "no-store".into())];
        return (StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response();
    }
    let end = range.end_within(len);
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        (header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes {}-{}/{len}", range.first(), end - 1)).expect("ascii")),
    ];
    (StatusCode::PARTIAL_CONTENT, headers, bytes.slice(range.first() as usize..end as usize)).into_response()
}

/// `range` of a segment being encoded (LL-HLS parts and preload hints). A part
/// (`first-last`) is answered once all its bytes exist, whole, never trickled; a hint
/// (`first-`) once byte `first` is the next to come, streaming from there as the segment
/// grows (chunked, no `Content-Range`: its last byte is not known yet; RFC 9110 has no
/// form for that, and players that follow hints read to the end), each chunk within
/// `stall`. Either waits up to `wait`, then 503; a segment completed meanwhile answers as
/// a complete one does. Tiers answer ranges of a relayed body with it too.
pub async fn growing_range(body: Arc<GrowingBody>, range: ByteRange, content_type: HeaderValue, wait: std::time::Duration, stall: std::time::Duration) -> Response {
    let needed = match range {
        ByteRange::Closed { last, .. } => last.saturating_add(1),
        ByteRange::From(first) => first,
    };
    let arrived = body.wait_for_len(usize::try_from(needed).unwrap_or(usize::MAX), wait).await;
    match body.ended() {
        Some(crate::store::growing::End::Sealed) => return complete_range(body.concat(), range, content_type),
        Some(crate::store::growing::End::Abandoned) => return error(StatusCode::NOT_FOUND, "the segment was abandoned\n"),
        None if !arrived => return error(StatusCode::SERVICE_UNAVAILABLE, "those bytes of the segment do not exist yet\n"),
        None => {}
    }
    let first = range.first();
    match range {
        ByteRange::Closed { .. } => {
            let bytes = body.concat();
            let end = range.end_within(bytes.len() as u64);
            let headers = [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
                (header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes {first}-{}/*", end - 1)).expect("ascii")),
            ];
            (StatusCode::PARTIAL_CONTENT, headers, bytes.slice(first as usize..end as usize)).into_response()
        }
        ByteRange::From(_) => {
            let headers = [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE))];
            (StatusCode::PARTIAL_CONTENT, headers, axum::body::Body::from_stream(skip_bytes(body.reader(stall), first))).into_response()
        }
    }
}

/// `stream` without its first `skip` bytes.
fn skip_bytes<E>(stream: impl futures_util::Stream<Item = Result<Bytes, E>>, mut skip: u64) -> impl futures_util::Stream<Item = Result<Bytes, E>> {
    use futures_util::StreamExt;
    stream.filter_map(move |item| {
        let out = match item {
            Ok(mut chunk) if skip > 0 => {
                let dropped = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
                skip -= dropped as u64;
                let rest = chunk.split_off(dropped);
                (!rest.is_empty()).then_some(Ok(rest))
            }
            other => Some(other),
        };
        std::future::ready(out)
    })
}

/// `scheme://host[:port]` the viewer addressed (its Host header, and `X-Forwarded-Proto:
/// https` from a TLS terminator in front), for absolute URLs in what it is served. `None`
/// when the Host header is missing or is not a plain host name or address.
pub fn viewer_origin(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if host.is_empty() || host.len() > 255 || !host.chars().all(plain) {
        return None;
    }
    let tls = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    Some(format!("{}://{host}", if tls { "https" } else { "http" }))
}

/// xs:dateTime with milliseconds, for the MPD's UTCTiming (urn:mpeg:dash:utc:http-iso:2014).
pub async fn clock() -> Response {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain"), (header::CACHE_CONTROL, "no-store")], now).into_response()
}

fn bytes_response(body: Bytes, content_type: &'static str, cache: &'static str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type)), (header::CACHE_CONTROL, HeaderValue::from_static(cache))],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{RenditionId, SessionId};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn app() -> Router {
        let store = Arc::new(Store::new());
        let key = ObjectKey {
            rendition: RenditionId::parse("720p").unwrap(),
            session: SessionId::parse("abc").unwrap(),
            part: Part::Media(7),
        };
        store.put_object(&StreamId::parse("cam").unwrap(), key, Bytes::from_static(b"moof"));
        router(HttpState { store, registry: StreamRegistry::new(), metrics: Arc::default(), audience: Arc::default(), next_segment_wait: std::time::Duration::from_millis(100) })
    }

    fn serving(store: &Arc<Store>) -> (Router, Arc<LiveMetrics>) {
        let metrics = Arc::new(LiveMetrics::default());
        let state = HttpState { store: Arc::clone(store), registry: StreamRegistry::new(), metrics: Arc::clone(&metrics), audience: Arc::default(), next_segment_wait: std::time::Duration::from_millis(500) };
        (router(state), metrics)
    }

    async fn send(app: &Router, uri: &str, range: Option<&str>) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::get(uri);
        if let Some(range) = range {
            request = request.header(header::RANGE, range);
        }
        let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        (parts.status, parts.headers, axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default())
    }

    fn key(n: u64) -> ObjectKey {
        ObjectKey { rendition: RenditionId::parse("720p").unwrap(), session: SessionId::parse("abc").unwrap(), part: Part::Media(n) }
    }

    #[tokio::test]
    async fn byte_ranges_of_complete_and_growing_segments() {
        let store = Arc::new(Store::new());
        let cam = StreamId::parse("cam").unwrap();
        store.put_object(&cam, key(7), Bytes::from_static(b"0123456789"));
        let (app, metrics) = serving(&store);
        let (status, headers, body) = send(&app, "/live/cam/720p/abc-7.m4s", Some("bytes=2-4")).await;
        assert_eq!((status, headers[header::CONTENT_RANGE].to_str().unwrap(), &body[..]), (StatusCode::PARTIAL_CONTENT, "bytes 2-4/10", &b"234"[..]));
        assert_eq!(headers[header::CACHE_CONTROL], IMMUTABLE);
        let (status, headers, body) = send(&app, "/live/cam/720p/abc-7.m4s", Some("bytes=8-20")).await;
        assert_eq!((status, headers[header::CONTENT_RANGE].to_str().unwrap(), &body[..]), (StatusCode::PARTIAL_CONTENT, "bytes 8-9/10", &b"89"[..]));
        let (status, headers, _) = send(&app, "/live/cam/720p/abc-7.m4s", Some("bytes=10-")).await;
        assert_eq!((status, headers[header::CONTENT_RANGE].to_str().unwrap()), (StatusCode::RANGE_NOT_SATISFIABLE, "bytes */10"));

        // The next segment grows: a part is answered once all its bytes exist.
        store.append_chunk(&cam, key(8), Bytes::from_static(b"abc"));
        let (status, headers, body) = send(&app, "/live/cam/720p/abc-8.m4s", Some("bytes=0-2")).await;
        assert_eq!((status, headers[header::CONTENT_RANGE].to_str().unwrap(), &body[..]), (StatusCode::PARTIAL_CONTENT, "bytes 0-2/*", &b"abc"[..]));
        let part = tokio::spawn({
            let app = app.clone();
            async move { send(&app, "/live/cam/720p/abc-8.m4s", Some("bytes=3-5")).await }
        });
        // A hint streams from its first byte as the segment grows, to its end.
        let hint = tokio::spawn({
            let app = app.clone();
            async move { send(&app, "/live/cam/720p/abc-8.m4s", Some("bytes=1-")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(!part.is_finished(), "a part is not answered before its last byte exists");
        store.append_chunk(&cam, key(8), Bytes::from_static(b"def"));
        let (status, _, body) = part.await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::PARTIAL_CONTENT, &b"def"[..]));
        store.append_chunk(&cam, key(8), Bytes::from_static(b"gh"));
        store.put_object(&cam, key(8), Bytes::from_static(b"abcdefgh"));
        let (status, _, body) = hint.await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::PARTIAL_CONTENT, &b"bcdefgh"[..]));
        // Bytes that never come: 503 after the wait while it grows, 416 once complete.
        store.append_chunk(&cam, key(9), Bytes::from_static(b"x"));
        assert_eq!(send(&app, "/live/cam/720p/abc-9.m4s", Some("bytes=5-9")).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(metrics.range_wait_timeouts.get(), 1);
        assert_eq!(send(&app, "/live/cam/720p/abc-8.m4s", Some("bytes=8-9")).await.0, StatusCode::RANGE_NOT_SATISFIABLE);
        // A hint at the start of the next segment waits for it.
        let next = tokio::spawn({
            let app = app.clone();
            async move { send(&app, "/live/cam/720p/abc-10.m4s", Some("bytes=0-")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        store.put_object(&cam, key(9), Bytes::from_static(b"x"));
        store.append_chunk(&cam, key(10), Bytes::from_static(b"ten"));
        store.put_object(&cam, key(10), Bytes::from_static(b"ten"));
        let (status, _, body) = next.await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::PARTIAL_CONTENT, &b"ten"[..]));
    }

    #[tokio::test]
    async fn blocking_reload_waits_for_the_part_refuses_far_ahead_and_times_out() {
        use crate::store::{Playlist, PlaylistPosition, PlaylistText, StreamSummary};
        let store = Arc::new(Store::new());
        let cam = StreamId::parse("cam").unwrap();
        let publish = |text: &'static str, next_parts| {
            let position = PlaylistPosition { last_msn: 4, next_parts, ended: false, target_duration: std::time::Duration::from_millis(100), part_target: None };
            let playlists = [(Playlist::Media(RenditionId::parse("720p").unwrap()), PlaylistText { text: Bytes::from_static(text.as_bytes()), position: Some(position), delta: None })].into();
            let summary = StreamSummary { stream: cam.clone(), live: true, session: None, renditions: Vec::new() };
            store.set_manifests(&cam, [None, None, None], playlists, summary);
        };
        publish("one part", 1);
        let (app, metrics) = serving(&store);
        let url = |query: &str| format!("/live/cam/720p/media.m3u8?{query}");
        let (status, headers, body) = send(&app, &url("_HLS_msn=5&_HLS_part=0"), None).await;
        assert_eq!((status, &body[..], headers[header::CACHE_CONTROL].to_str().unwrap()), (StatusCode::OK, &b"one part"[..], BLOCKING_PLAYLIST_CACHE));
        assert_eq!(send(&app, &url("_HLS_msn=4"), None).await.0, StatusCode::OK);
        let waiting = tokio::spawn({
            let (app, url) = (app.clone(), url("_HLS_msn=5&_HLS_part=1"));
            async move { send(&app, &url, None).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        publish("two parts", 2);
        let (status, _, body) = waiting.await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"two parts"[..]));
        assert_eq!(send(&app, &url("_HLS_msn=7"), None).await.0, StatusCode::BAD_REQUEST, "three past the last");
        assert_eq!(send(&app, &url("_HLS_msn=6"), None).await.0, StatusCode::SERVICE_UNAVAILABLE, "after three target durations");
        assert_eq!(metrics.blocking_reload_timeouts.get(), 1);
        assert_eq!(send(&app, &url("_HLS_part=1"), None).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(send(&app, &url("nocache=1"), None).await.0, StatusCode::OK, "other parameters are ignored");
        assert_eq!(send(&app, "/live/nope/720p/media.m3u8?_HLS_msn=1", None).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_playlist_not_rendered_yet_is_waited_for() {
        use crate::store::{Playlist, PlaylistText, StreamSummary};
        let store = Arc::new(Store::new());
        let cam = StreamId::parse("cam").unwrap();
        // The stream has its MPD (a Period from its init segments), no playlist yet.
        let summary = || StreamSummary { stream: cam.clone(), live: true, session: None, renditions: Vec::new() };
        store.set_manifests(&cam, [Some(Bytes::from_static(b"<MPD/>")), None, None], std::collections::HashMap::new(), summary());
        let (app, _) = serving(&store);
        let waiting = tokio::spawn({
            let app = app.clone();
            async move { send(&app, "/live/cam/master.m3u8", None).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "waits for the first playlist");
        let playlists = [(Playlist::Multivariant, PlaylistText { text: Bytes::from_static(b"#EXTM3U\n"), position: None, delta: None })].into();
        store.set_manifests(&cam, [Some(Bytes::from_static(b"<MPD/>")), None, None], playlists, summary());
        let (status, _, body) = waiting.await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"#EXTM3U\n"[..]));
        // One that does not come is 404 after the wait (500 ms here).
        let started = tokio::time::Instant::now();
        let (status, _, body) = send(&app, "/live/cam/720p/media.m3u8", None).await;
        assert_eq!((status, &body[..]), (StatusCode::NOT_FOUND, &b"stream has no playable segment yet\n"[..]));
        assert!(started.elapsed() >= std::time::Duration::from_millis(500));
    }

    async fn get(uri: &str) -> Response {
        app().oneshot(Request::get(uri).header("origin", "http://player.example").body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn segments_are_immutable_and_cors_enabled() {
        let response = get("/live/cam/720p/abc-7.m4s").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], SEGMENT_CONTENT_TYPE);
        assert_eq!(response.headers()[header::CACHE_CONTROL], IMMUTABLE);
        assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[tokio::test]
    async fn status_codes_for_bad_and_missing_paths() {
        for (uri, status) in [
            ("/live/cam/720p/abc-8.m4s", StatusCode::NOT_FOUND),
            ("/live/nope/manifest.mpd", StatusCode::NOT_FOUND),
            ("/live/nope/manifest-number.mpd", StatusCode::NOT_FOUND),
            ("/live/nope/manifest-ll.mpd", StatusCode::NOT_FOUND),
            ("/live/cam/manifest-other.mpd", StatusCode::NOT_FOUND),
            ("/live/cam/720p/abc-x.m4s", StatusCode::BAD_REQUEST),
            ("/live/cam/7%20p/media.m3u8", StatusCode::BAD_REQUEST),
            ("/live/%2e%2e/manifest.mpd", StatusCode::BAD_REQUEST),
            ("/live/cam/..%2F..%2Fetc/passwd", StatusCode::BAD_REQUEST),
            ("/live/cam/720p/..%2Fabc-7.m4s", StatusCode::BAD_REQUEST),
            ("/etc/passwd", StatusCode::NOT_FOUND),
        ] {
            assert_eq!(get(uri).await.status(), status, "{uri}");
        }
    }

    #[tokio::test]
    async fn a_missing_segment_is_never_cacheable_an_unknown_stream_briefly() {
        for (uri, cache) in [
            ("/live/cam/720p/abc-8.m4s", "no-store"),
            ("/live/cam/manifest.mpd", "no-store"),
            ("/live/cam/manifest-number.mpd", "no-store"),
            ("/live/cam/master.m3u8", "no-store"),
            ("/live/cam/720p/media.m3u8", "no-store"),
            ("/live/nope/720p/abc-8.m4s", UNKNOWN_STREAM_CACHE),
            ("/live/nope/master.m3u8", UNKNOWN_STREAM_CACHE),
            ("/live/nope/720p/media.m3u8", UNKNOWN_STREAM_CACHE),
            ("/live/nope/manifest.mpd", UNKNOWN_STREAM_CACHE),
        ] {
            let response = get(uri).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(response.headers()[header::CACHE_CONTROL], cache, "{uri}");
        }
    }

    #[tokio::test]
    async fn clock_answers_iso_time() {
        let response = get("/time").await;
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(text).is_ok(), "{text}");
    }
}
