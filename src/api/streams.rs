//! `/api/v1/streams`: the streams live on this node (summary and detail: ladder, plan
//! history, uplink estimate and history, backend, segment production, viewers), and the
//! admin's levers: kick the publisher (it may reconnect), stop the stream (kick, then
//! refuse its publishes for a while), resume it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::access::Principal;
use super::{ApiError, ApiResult, ApiState, ErrorBody};
use crate::media::StreamId;
use crate::audience::AudienceFigures;
use crate::stream::status::StreamStatus;

/// Longest an admin's stop may hold a stream.
pub const MAX_STOP: Duration = Duration::from_secs(7 * 24 * 3600);
/// A stop's hold when the request names none.
pub const DEFAULT_STOP: Duration = Duration::from_secs(300);

#[derive(Serialize, ToSchema)]
pub struct StreamSummary {
    pub stream: String,
    /// `{rendition}@{kbps}k` of every rung produced now.
    pub rungs: Vec<String>,
    /// Source picture size.
    pub source: Option<(u32, u32)>,
    /// The broadcaster's measured upload throughput.
    pub uplink_kbps: Option<f64>,
    pub ingest_bytes: u64,
    /// Distinct (address, User-Agent) pairs that fetched from this node in the last 30 s.
    pub viewers: usize,
    pub delivered_bytes: u64,
    pub segments: u64,
    /// How far the newest video segment trails the input.
    pub lag_ms: Option<u64>,
    pub stalled: bool,
    /// The transcode backend of the session (none for audio only).
    pub backend: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StreamDetail {
    #[serde(flatten)]
    pub summary: StreamSummary,
    /// Session, plan and plan history, uplink estimate and history, health counters and
    /// the recent faults (`health.recent`: stalls, timestamp jumps, re-anchors, shed rungs).
    #[schema(value_type = Object)]
    pub status: StreamStatus,
}

/// Every stream's audience, read once per answer (the tracker walks all streams).
fn audiences(api: &ApiState) -> HashMap<StreamId, AudienceFigures> {
    api.sources.audience.figures().into_iter().collect()
}

fn summary(api: &ApiState, stream: &StreamId, status: &StreamStatus, audiences: &HashMap<StreamId, AudienceFigures>) -> StreamSummary {
    let sources = &api.sources;
    let audience = audiences.get(stream);
    StreamSummary {
        stream: stream.to_string(),
        rungs: status.plan.as_ref().map(crate::stream::status::describe).unwrap_or_default(),
        source: status.source,
        uplink_kbps: status.uplink.as_ref().map(|u| (u.throughput_bps / 1000.0).round()),
        ingest_bytes: status.ingest_bytes,
        viewers: audience.as_ref().map_or(0, |a| a.viewers),
        delivered_bytes: audience.as_ref().map_or(0, |a| a.delivered_bytes),
        segments: sources.packager.segments_added(stream).unwrap_or(0),
        lag_ms: status.health.lag_ms,
        stalled: status.health.stalled,
        backend: status.transcode.as_ref().map(|t| t.backend.name().to_owned()),
    }
}

fn stream_id(raw: &str) -> ApiResult<StreamId> {
    crate::http::path::stream(raw).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

fn not_live(stream: &StreamId) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("stream {stream} is not being published on this node"))
}

#[utoipa::path(get, path = "/api/v1/streams", tag = "streams",
    responses((status = 200, description = "OK", body = Vec<StreamSummary>), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody)))]
pub async fn list(State(api): State<Arc<ApiState>>) -> Json<Vec<StreamSummary>> {
    let registry = &api.sources.streams;
    let audiences = audiences(&api);
    Json(registry.streams().iter().filter_map(|s| Some(summary(&api, s, &registry.status(s)?, &audiences))).collect())
}

#[utoipa::path(get, path = "/api/v1/streams/{stream}", tag = "streams",
    params(("stream" = String, Path)),
    responses((status = 200, description = "OK", body = StreamDetail), (status = 400, description = "Bad request: the message says what is wrong", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn detail(State(api): State<Arc<ApiState>>, Path(stream): Path<String>) -> ApiResult<Json<StreamDetail>> {
    let stream = stream_id(&stream)?;
    let status = api.sources.streams.status(&stream).ok_or_else(|| not_live(&stream))?;
    Ok(Json(StreamDetail { summary: summary(&api, &stream, &status, &audiences(&api)), status }))
}

#[derive(Serialize, ToSchema)]
pub struct Done {
    pub stream: String,
    /// What happened, for a human.
    pub result: String,
}

#[utoipa::path(post, path = "/api/v1/streams/{stream}/kick", tag = "streams",
    params(("stream" = String, Path)),
    responses((status = 200, body = Done, description = "The publisher was disconnected; it may publish again"),
        (status = 404, description = "Not found", body = ErrorBody), (status = 403, description = "Not allowed: read-only token, CSRF token missing, cross-origin, or not loopback before an admin exists", body = ErrorBody)))]
pub async fn kick(State(api): State<Arc<ApiState>>, Extension(who): Extension<Principal>, Path(stream): Path<String>) -> ApiResult<Json<Done>> {
    let stream = stream_id(&stream)?;
    if !api.sources.streams.kick(&stream) {
        api.audit(&who, "stream.kick", stream.as_str(), "refused: not live here").await;
        return Err(not_live(&stream));
    }
    api.audit(&who, "stream.kick", stream.as_str(), "ok").await;
    Ok(Json(Done { stream: stream.to_string(), result: "publisher disconnected".into() }))
}

#[derive(Deserialize, ToSchema, Default)]
pub struct StopRequest {
    /// How long new publishes of the stream are refused (default 300, at most 604800).
    pub hold_seconds: Option<u64>,
}

#[utoipa::path(post, path = "/api/v1/streams/{stream}/stop", tag = "streams",
    params(("stream" = String, Path)), request_body = StopRequest,
    responses((status = 200, body = Done, description = "Stopped: its publisher (if any) was disconnected and new publishes are refused for the hold"),
        (status = 400, description = "Bad request: the message says what is wrong", body = ErrorBody), (status = 403, description = "Not allowed: read-only token, CSRF token missing, cross-origin, or not loopback before an admin exists", body = ErrorBody), (status = 503, description = "The store or a limit refuses for now", body = ErrorBody)))]
pub async fn stop(
    State(api): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(stream): Path<String>,
    Json(request): Json<StopRequest>,
) -> ApiResult<Json<Done>> {
    let stream = stream_id(&stream)?;
    let hold = request.hold_seconds.map_or(DEFAULT_STOP, Duration::from_secs);
    if hold.is_zero() || hold > MAX_STOP {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("hold_seconds must be 1 to {}", MAX_STOP.as_secs())));
    }
    let was_live = match api.sources.streams.stop(&stream, hold) {
        Ok(was_live) => was_live,
        Err(max) => {
            api.audit(&who, "stream.stop", stream.as_str(), "refused: too many streams stopped").await;
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{max} streams are stopped already; resume some first")));
        }
    };
    let result = format!("{} publishes refused for {} s", if was_live { "publisher disconnected;" } else { "not live;" }, hold.as_secs());
    api.audit(&who, "stream.stop", stream.as_str(), &format!("ok: {result}")).await;
    Ok(Json(Done { stream: stream.to_string(), result }))
}

#[utoipa::path(delete, path = "/api/v1/streams/{stream}/stop", tag = "streams",
    params(("stream" = String, Path)),
    responses((status = 200, body = Done, description = "Publishes of the stream are accepted again"), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn resume(State(api): State<Arc<ApiState>>, Extension(who): Extension<Principal>, Path(stream): Path<String>) -> ApiResult<Json<Done>> {
    let stream = stream_id(&stream)?;
    if !api.sources.streams.resume(&stream) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("stream {stream} is not stopped")));
    }
    api.audit(&who, "stream.resume", stream.as_str(), "ok").await;
    Ok(Json(Done { stream: stream.to_string(), result: "publishes accepted again".into() }))
}
