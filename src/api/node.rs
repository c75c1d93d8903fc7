//! `/api/v1/node`, `/config`, `/cluster`, `/cluster/ring/{stream}`, `/tiers`: this node
//! (version, roles, uptime, host, encoder backends), its config with secrets redacted, the
//! federation as this node sees it (members, health, who holds which stream, the ring) and
//! its caching tier's counters.

use crate::cluster::Source;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, ApiResult, ApiState, ErrorBody};
use crate::cluster::Ring;
use crate::cluster::config::Role;
use crate::host::HostSnapshot;
use crate::media::StreamId;
use crate::tier::TierCounts;

#[derive(Serialize, ToSchema)]
pub struct NodeInfo {
    pub id: String,
    pub version: String,
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<Role>,
    pub uptime_seconds: u64,
    pub federated: bool,
    /// The usable transcode backends in preference order (`nvenc`, `nvdec-x264`, `vaapi`,
    /// `software`): a stream takes the first with room for its ladder.
    pub backends: Vec<String>,
    /// Configured backends that cannot run here, each with the reason.
    pub backends_skipped: Vec<String>,
    /// Sessions and CPU cores admitted streams hold, against their budgets.
    pub transcode_usage: crate::transcode::admission::UsageReport,
    /// True while no stream key is in force: anyone who reaches the RTMP port may publish.
    pub publishing_open: bool,
    pub live_streams: usize,
    /// The RTMP port broadcasters publish to.
    pub rtmp_port: u16,
    /// CPU, memory, load and GPUs (with the reason when none is present).
    pub host: HostSnapshot,
}

#[utoipa::path(get, path = "/api/v1/node", tag = "node",
    responses((status = 200, description = "OK", body = NodeInfo), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody), (status = 403, description = "Not allowed: read-only token, CSRF token missing, cross-origin, or not loopback before an admin exists", body = ErrorBody)))]
pub async fn node(State(api): State<Arc<ApiState>>) -> ApiResult<Json<NodeInfo>> {
    let sources = &api.sources;
    Ok(Json(NodeInfo {
        id: api.config.cluster.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        roles: api.config.cluster.roles(),
        uptime_seconds: api.started.elapsed().as_secs(),
        federated: api.membership.is_some(),
        backends: sources.transcode.admission.selection().usable.iter().map(|u| u.backend.name().to_owned()).collect(),
        backends_skipped: sources.transcode.admission.selection().skipped.clone(),
        transcode_usage: sources.transcode.admission.report(),
        publishing_open: sources.auth.is_open().await?,
        live_streams: sources.streams.count(),
        rtmp_port: api.config.ingest.listen.port(),
        host: sources.host.snapshot(),
    }))
}

#[utoipa::path(get, path = "/api/v1/config", tag = "node",
    responses((status = 200, description = "The effective configuration, secrets redacted", body = Object), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody)))]
pub async fn config(State(api): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(api.config.redacted()).unwrap_or_default())
}

#[derive(Serialize, ToSchema)]
pub struct ClusterInfo {
    /// The node answering.
    pub node_id: String,
    /// False when this node runs alone (no `cluster.nodes`).
    pub federated: bool,
    pub vnodes: u32,
    pub members: Vec<Member>,
    /// The live ring's points, clockwise: where each healthy live node's vnodes sit.
    pub ring: Vec<RingPoint>,
    /// Every stream some member reports live, where it lands and who serves it.
    pub placements: Vec<RingPlacement>,
}

#[derive(Serialize, ToSchema)]
pub struct RingPoint {
    pub node: String,
    /// Position on the ring as a fraction of a turn, 0 <= at < 1.
    pub at: f64,
}

fn turn(position: u64) -> f64 {
    position as f64 / 18_446_744_073_709_551_616.0
}

#[derive(Serialize, ToSchema)]
pub struct Member {
    pub id: String,
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<Role>,
    pub region: String,
    pub rtmp: String,
    pub http: String,
    /// Where this node learned of it: `static` (cluster.nodes) or `dns:NAME`
    /// (cluster.discovery).
    pub source: String,
    /// Healthy as this node's probes see it (this node always is).
    pub up: bool,
    /// Draining (SIGTERM): out of the ring, handing its streams over.
    pub draining: bool,
    /// Streams it is the live server of (its last health answer; this node's own live list).
    pub streams: Vec<String>,
    /// Its caching tier's counters (from its last health answer), when it has a tier.
    #[schema(value_type = Option<Object>)]
    pub tier: Option<serde_json::Value>,
    /// (hits + coalesced) / requests of that tier, when it has served requests.
    pub tier_hit_ratio: Option<f64>,
}

fn hit_ratio(counters: &serde_json::Value) -> Option<f64> {
    let n = |field: &str| counters.get(field).and_then(serde_json::Value::as_u64).unwrap_or(0) as f64;
    (n("requests") > 0.0).then(|| (n("hits") + n("coalesced")) / n("requests"))
}

#[utoipa::path(get, path = "/api/v1/cluster", tag = "node",
    responses((status = 200, description = "OK", body = ClusterInfo), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody)))]
pub async fn cluster(State(api): State<Arc<ApiState>>) -> Json<ClusterInfo> {
    let cluster = &api.config.cluster;
    let own: Vec<String> = api.sources.streams.streams().iter().map(|s| s.to_string()).collect();
    let own_tier = api.sources.tier.as_ref().and_then(|t| serde_json::to_value(t.counts()).ok());
    let members = match &api.membership {
        None => vec![Member {
            id: cluster.node_id.clone(),
            roles: cluster.roles(),
            region: crate::cluster::config::DEFAULT_REGION.to_owned(),
            rtmp: api.config.ingest.listen.to_string(),
            http: api.config.http.listen.to_string(),
            source: Source::Static.to_string(),
            up: true,
            draining: false,
            streams: own,
            tier_hit_ratio: own_tier.as_ref().and_then(hit_ratio),
            tier: own_tier,
        }],
        Some(membership) => {
            let view = membership.view();
            let mut tiers = membership.peer_tiers();
            view.members()
                .iter()
                .map(|m| {
                    let n = &m.node;
                    let tier = if n.id == cluster.node_id { own_tier.clone() } else { tiers.remove(&n.id) };
                    Member {
                        id: n.id.clone(),
                        roles: n.roles.clone(),
                        region: n.region.clone(),
                        rtmp: n.rtmp.to_string(),
                        http: n.http.to_string(),
                        source: m.source.to_string(),
                        up: view.is_up(&n.id),
                        draining: view.is_draining(&n.id),
                        streams: if n.id == cluster.node_id { own.clone() } else { view.streams_of(&n.id) },
                        tier_hit_ratio: tier.as_ref().and_then(hit_ratio),
                        tier,
                    }
                })
                .collect()
        }
    };
    let streams: std::collections::BTreeSet<String> = members.iter().flat_map(|m| m.streams.iter().cloned()).collect();
    let placements = streams.iter().filter_map(|s| StreamId::parse(s).ok()).map(|s| placement(&api, &s)).collect();
    let ring = match &api.membership {
        Some(m) => m.view().live_ring().points().map(|(p, node)| RingPoint { node: node.to_owned(), at: turn(p) }).collect(),
        None => vec![RingPoint { node: cluster.node_id.clone(), at: 0.0 }],
    };
    Json(ClusterInfo { node_id: cluster.node_id.clone(), federated: api.membership.is_some(), vnodes: cluster.vnodes, members, ring, placements })
}

#[derive(Serialize, ToSchema)]
pub struct RingPlacement {
    pub stream: String,
    /// Where the stream id lands, as a fraction of a turn.
    pub at: f64,
    /// The live node that serves the stream now (the first healthy one in `order`).
    pub owner: Option<String>,
    /// Every healthy live node in failover order.
    pub order: Vec<String>,
    /// The node that reports it live, when one does (during a handover it may differ from the owner).
    pub live_on: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/cluster/ring/{stream}", tag = "node",
    params(("stream" = String, Path, description = "Any stream id, live or not")),
    responses((status = 200, description = "OK", body = RingPlacement), (status = 400, description = "Bad request: the message says what is wrong", body = ErrorBody), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody)))]
pub async fn ring(State(api): State<Arc<ApiState>>, Path(stream): Path<String>) -> ApiResult<Json<RingPlacement>> {
    let stream = crate::http::path::stream(&stream).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(placement(&api, &stream)))
}

fn placement(api: &ApiState, stream: &StreamId) -> RingPlacement {
    let local = api.sources.streams.is_live(stream);
    let here = api.config.cluster.node_id.clone();
    let at = turn(Ring::position(stream.as_str()));
    match &api.membership {
        None => RingPlacement { stream: stream.to_string(), at, owner: Some(here.clone()), order: vec![here.clone()], live_on: local.then_some(here) },
        Some(membership) => {
            let view = membership.view();
            let order: Vec<String> = view.live_ring().order(stream.as_str()).into_iter().map(str::to_owned).collect();
            let live_on = if local { Some(here) } else { view.live_location(stream.as_str()).map(str::to_owned) };
            RingPlacement { stream: stream.to_string(), at, owner: order.first().cloned(), order, live_on }
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TierInfo {
    /// `origin` or `edge`.
    pub role: String,
    #[schema(value_type = Object)]
    pub counters: TierCounts,
    /// (hits + coalesced) / requests, when there were requests.
    pub hit_ratio: Option<f64>,
}

#[utoipa::path(get, path = "/api/v1/tiers", tag = "node",
    responses((status = 200, description = "OK", body = TierInfo), (status = 404, body = ErrorBody, description = "This node has no caching tier"), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody)))]
pub async fn tiers(State(api): State<Arc<ApiState>>) -> ApiResult<Json<TierInfo>> {
    let Some(tier) = &api.sources.tier else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "this node has no caching tier (it is neither origin nor edge)"));
    };
    let counters = tier.counts();
    let roles = api.config.cluster.roles();
    let role = if roles.contains(&Role::Origin) { "origin" } else { "edge" };
    let hit_ratio = (counters.requests > 0).then(|| (counters.hits + counters.coalesced) as f64 / counters.requests as f64);
    Ok(Json(TierInfo { role: role.to_owned(), counters, hit_ratio }))
}
