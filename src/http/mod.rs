//! The viewer-facing HTTP server (axum): live manifests (MPDs and HLS playlists) and
//! segments from the local store,
//! the list of streams, and a clock for players. The same paths on every tier; caching
//! headers say what may be cached: segments forever (their URLs are never reused),
//! manifests for at most a second, a 404 for a stream this node does not have briefly, and
//! a 404 for a missing segment of a stream it has never (it may be written a moment later).
//! A segment still being encoded (low latency) is answered at once and streamed chunk by
//! chunk as the muxer cuts it (chunked transfer, no Content-Length), ending when it is
//! complete; the bytes are the same a later request gets whole, so it is as immutable.
//! config.rs holds `[http]`; server.rs is the bounded accept loop every node serves
//! through (connection cap, time-outs); path.rs parses request paths.

pub mod config;
pub mod path;
pub mod server;

pub use server::{HttpEdgeMetrics, serve};

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tower_http::cors::CorsLayer;

use crate::media::StreamId;
use crate::audience::Audience;
use crate::package::mpd::{with_clock_origin, UTC_TIMING_PATH};
use crate::store::{Lookup, ManifestForm, ObjectKey, Part, Store, Stored};
use crate::stream::StreamRegistry;

pub const MPD_CONTENT_TYPE: &str = "application/dash+xml";
pub const HLS_CONTENT_TYPE: &str = "application/vnd.apple.mpegurl";
pub const SEGMENT_CONTENT_TYPE: &str = "video/iso.segment";
/// Segments and init segments: their URLs name one byte string forever.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Manifests: players re-fetch every update period; shared caches may hold one a second.
pub const MANIFEST_CACHE: &str = "public, max-age=0, s-maxage=1";
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
}

impl LiveMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("live");
        registry.register("manifest_requests", "Manifest requests this node answered from its own store", self.manifest_requests.clone());
        registry.register("object_requests", "Init and media segment requests this node answered from its own store", self.object_requests.clone());
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
    let mpd = state.store.manifest(&stream, form).map(|mpd| with_clock_origin(&mpd, viewer_origin(&headers).as_deref()));
    serve_manifest(&state, &stream, mpd, MPD_CONTENT_TYPE, &peer, &headers)
}

async fn multivariant(State(state): State<HttpState>, Path(stream): Path<String>, peer: Peer, headers: HeaderMap) -> Response {
    playlist(state, &stream, None, peer, headers)
}

async fn media_playlist(State(state): State<HttpState>, Path((stream, rendition)): Path<(String, String)>, peer: Peer, headers: HeaderMap) -> Response {
    playlist(state, &stream, Some(&rendition), peer, headers)
}

/// The multivariant playlist, or the media playlist of `rendition`.
fn playlist(state: HttpState, stream: &str, rendition: Option<&str>, peer: Peer, headers: HeaderMap) -> Response {
    state.metrics.manifest_requests.inc();
    let (stream, playlist) = match path::playlist(stream, rendition) {
        Ok(pair) => pair,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let body = state.store.playlist(&stream, &playlist).map(|p| p.text);
    serve_manifest(&state, &stream, body, HLS_CONTENT_TYPE, &peer, &headers)
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
    // The next segment of a rendition is waited for (store module header); anything else
    // that is missing is answered at once.
    match state.store.object_or_next(&stream, &key, state.next_segment_wait).await {
        Lookup::Found(Stored::Complete(bytes)) => {
            note_viewer(&state.audience, &stream, &peer, &headers, bytes.len());
            bytes_response(bytes, content_type, IMMUTABLE)
        }
        Lookup::Found(Stored::Growing(body)) => {
            // Counted with what it holds now; the rest follows within the segment.
            note_viewer(&state.audience, &stream, &peer, &headers, body.len());
            let headers = [(header::CONTENT_TYPE, HeaderValue::from_static(content_type)), (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE))];
            (StatusCode::OK, headers, axum::body::Body::from_stream(body.reader(GROWING_STALL))).into_response()
        }
        // A cached 404 would hide a segment written a moment later from every viewer behind
        // that cache for the cache's lifetime.
        Lookup::Missing => error(StatusCode::NOT_FOUND, "no such segment\n"),
        Lookup::UnknownStream => unknown_stream(&stream),
    }
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
