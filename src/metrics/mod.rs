//! Prometheus exposition at `GET /metrics` (OpenMetrics text, through prometheus-client).
//!
//! Two kinds of series:
//! - **Instruments** ([`Instruments`]) observed where things happen: HTTP requests by route
//!   and status (the bounded HTTP edge), segment production lag (the packager), upstream
//!   fetch latency (the caching tier), transcode failures (the stream actor).
//! - **Read at scrape time** ([`Sources`]): the counters the other modules already keep
//!   (RTMP edge, HTTP edge, caching tier, also served as JSON at `/ingest/metrics`,
//!   `/metrics/http` and `/tier/metrics`), each live stream's status (uplink estimate,
//!   rungs, lag, ingest bytes, segments), the audience ([`audience`]: viewers and delivered
//!   bytes), admission (CPU and sessions against their budgets, the calibrated cost
//!   scale) and the host (CPU, memory, load, this process's CPU share and use; per GPU
//!   utilisation, encoder and decoder load, encoder sessions, memory, temperature: `host`).
//!
//! Per-stream series exist while the stream is live on this node or, for the audience,
//! while it was watched through this node within the last minute: an ended stream's series
//! go with it.


use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;

use crate::audience::Audience;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::auth::PublishAuth;
use crate::host::HostTelemetry;
use crate::http::server::HttpStats;
use crate::ingest::limits::IngestStats;
use crate::package::Packager;
use crate::stream::StreamRegistry;
use crate::tier::TierState;

pub const METRICS_PATH: &str = "/metrics";
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `rackcast_http_requests_total`: the route pattern (a bounded set, see
/// [`route_of`]) and the status code answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub status: u16,
}

/// The instruments other modules observe into. Cheap to clone: every field is shared.
#[derive(Debug, Clone)]
pub struct Instruments {
    pub http_requests: Family<HttpLabels, Counter>,
    /// Seconds from a video segment's end (in presentation time) to when it was listed.
    pub production_lag: Histogram,
    /// Seconds an upstream fetch of the caching tier took, failures included.
    pub upstream_latency: Histogram,
    /// Streams ended by a pipeline error.
    pub transcode_failures: Counter,
}

impl Default for Instruments {
    fn default() -> Self {
        Self {
            http_requests: Family::default(),
            // 50 ms .. ~26 s.
            production_lag: Histogram::new(exponential_buckets(0.05, 2.0, 10)),
            // 1 ms .. ~4 s.
            upstream_latency: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
            transcode_failures: Counter::default(),
        }
    }
}

impl Instruments {
    /// Counts one answered HTTP request of `route` (see [`route_of`]).
    pub fn http_request(&self, route: &'static str, status: u16) {
        self.http_requests.get_or_create(&HttpLabels { route, status }).inc();
    }
}

/// Middleware: counts every answered request of the node's router by route and status.
pub async fn count_requests(State(instruments): State<Instruments>, request: Request, next: Next) -> Response {
    let route = route_of(request.uri().path());
    let response = next.run(request).await;
    instruments.http_request(route, response.status().as_u16());
    response
}

/// The route pattern a request path belongs to (`:name` for a path parameter; braces would
/// need escaping in simple exposition parsers): the label of the HTTP request counter, so
/// its cardinality stays bounded whatever clients send.
pub fn route_of(path: &str) -> &'static str {
    // Runs on every request: the path's first five elements, without allocating.
    let mut parts = [None; 5];
    for (i, part) in path.trim_start_matches('/').split('/').enumerate() {
        let Some(slot) = parts.get_mut(i) else { return "other" };
        *slot = Some(part);
    }
    match parts {
        [Some("live"), None, ..] => "/live",
        [Some("live"), Some(_), None, ..] => "/live/:stream",
        [Some("live"), Some(_), Some("manifest.mpd"), None, _] => "/live/:stream/manifest.mpd",
        [Some("live"), Some(_), Some("manifest-number.mpd"), None, _] => "/live/:stream/manifest-number.mpd",
        [Some("live"), Some(_), Some("uplink"), None, _] => "/live/:stream/uplink",
        [Some("live"), Some(_), Some(_), Some(_), None] => "/live/:stream/:rendition/:file",
        [Some("time"), None, ..] => "/time",
        [Some("metrics"), None, ..] => METRICS_PATH,
        [Some("metrics"), Some("http"), None, ..] => "/metrics/http",
        [Some("metrics"), Some("live"), None, ..] => "/metrics/live",
        [Some("ingest"), Some("metrics"), None, ..] => "/ingest/metrics",
        [Some("tier"), Some("metrics"), None, ..] => "/tier/metrics",
        [Some("cluster"), Some("health"), None, ..] => "/cluster/health",
        [Some(""), None, ..] => "/",
        [Some("console"), Some(_), ..] => "/console/:file",
        [Some("api"), Some("v1"), ..] => "/api/v1",
        _ => "other",
    }
}

/// What the scrape reads from the rest of the node.
#[derive(Clone)]
pub struct Sources {
    pub ingest: Arc<IngestStats>,
    pub http: Arc<HttpStats>,
    pub max_connections: usize,
    pub tier: Option<TierState>,
    pub streams: Arc<StreamRegistry>,
    pub packager: Arc<Packager>,
    pub audience: Arc<Audience>,
    pub auth: Arc<PublishAuth>,
    pub transcode: Arc<crate::transcode::resources::Resources>,
    pub host: Arc<HostTelemetry>,
    /// Bounds on logins (password checks at once, the failure budget); the API uses it.
    pub logins: Arc<crate::auth::login::LoginGate>,
    /// Refused node-to-node requests and answers.
    pub peers: Arc<crate::auth::peer::PeerStats>,
}

/// `GET /metrics` for this node.
pub fn router(instruments: &Instruments, sources: Sources) -> Router {
    let mut registry = Registry::with_prefix("rackcast");
    registry.register("http_requests", "HTTP requests answered, by route and status", instruments.http_requests.clone());
    registry.register(
        "segment_production_lag_seconds",
        "From a video segment's end in presentation time to when the MPD listed it",
        instruments.production_lag.clone(),
    );
    registry.register(
        "tier_upstream_fetch_seconds",
        "Upstream fetches of the caching tier, failures included",
        instruments.upstream_latency.clone(),
    );
    registry.register("transcode_failures", "Streams ended by a pipeline error", instruments.transcode_failures.clone());
    registry.register_collector(Box::new(NodeCollector { sources }));
    let registry = Arc::new(registry);
    Router::new().route(
        METRICS_PATH,
        get(move || {
            let registry = Arc::clone(&registry);
            async move { scrape(&registry) }
        }),
    )
}

fn scrape(registry: &Registry) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::error!("encoding /metrics failed: {e}");
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be encoded\n").into_response();
    }
    let headers = [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE)), (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    (headers, body).into_response()
}

/// Reads the node's state on every scrape.
struct NodeCollector {
    sources: Sources,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: `name` (without the prefix or `_total`) and its samples.
fn family(encoder: &mut DescriptorEncoder, name: &str, help: &str, kind: MetricType, samples: &[(Labels, f64)]) -> std::fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    if let [(labels, value)] = samples
        && labels.is_empty()
    {
        return sample(kind, *value, metric);
    }
    for (labels, value) in samples {
        sample(kind, *value, metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn sample(kind: MetricType, value: f64, encoder: MetricEncoder) -> std::fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(encoder),
        _ => ConstGauge::new(value).encode(encoder),
    }
}

/// The fields of a serialisable counter snapshot as `{prefix}_{field}` families: counters,
/// except the fields named in `gauges` (levels such as open connections).
fn snapshot_families(encoder: &mut DescriptorEncoder, prefix: &str, what: &str, snapshot: serde_json::Value, gauges: &[&str]) -> std::fmt::Result {
    let serde_json::Value::Object(fields) = snapshot else { return Ok(()) };
    for (field, value) in fields {
        let Some(value) = value.as_f64() else { continue };
        let kind = if gauges.contains(&field.as_str()) { MetricType::Gauge } else { MetricType::Counter };
        let help = format!("{what}: {}", field.replace('_', " "));
        family(encoder, &format!("{prefix}_{field}"), &help, kind, &[(Vec::new(), value)])?;
    }
    Ok(())
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.sources;
        snapshot_families(&mut encoder, "ingest", "RTMP edge", json(&s.ingest.snapshot()), &["open"])?;
        let limited = s.auth.rate_limited.load(std::sync::atomic::Ordering::Relaxed) as f64;
        family(&mut encoder, "ingest_publish_rate_limited", "Publish attempts refused by the per-address limit", MetricType::Counter, &[(Vec::new(), limited)])?;
        if let Some(hook) = &s.auth.webhook {
            let count = |c: &std::sync::atomic::AtomicU64| [(Vec::new(), c.load(std::sync::atomic::Ordering::Relaxed) as f64)];
            family(&mut encoder, "publish_webhook_calls", "Publish webhook requests (cached answers not counted)", MetricType::Counter, &count(&hook.calls))?;
            family(&mut encoder, "publish_webhook_refused", "Publishes the webhook refused", MetricType::Counter, &count(&hook.refused))?;
            family(&mut encoder, "publish_webhook_failures", "Webhook requests that failed or timed out (publish refused)", MetricType::Counter, &count(&hook.failures))?;
        }
        self.encode_guards(&mut encoder)?;
        snapshot_families(&mut encoder, "http_edge", "HTTP edge", json(&s.http.snapshot(s.max_connections)), &["open", "max_connections"])?;
        snapshot_families(&mut encoder, "package", "packager byte caps", json(&s.packager.stats().snapshot()), &[])?;
        if let Some(tier) = &s.tier {
            snapshot_families(&mut encoder, "tier", "caching tier", json(&tier.metrics()), &["bytes_cached", "entries", "capacity_bytes"])?;
        }
        self.encode_streams(&mut encoder)?;
        self.encode_audience(&mut encoder)?;
        self.encode_host(&mut encoder)
    }
}

impl NodeCollector {
    /// Logins and node-to-node requests refused at their limits.
    fn encode_guards(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let logins = self.sources.logins.snapshot();
        let reason = |r: &str, n: u64| (vec![("reason", r.to_owned())], n as f64);
        family(encoder, "login_failures", "Logins with a wrong username or password", Counter, &[(vec![], logins.failed as f64)])?;
        let refused = [reason("per_address", logins.refused_per_address), reason("failure_budget", logins.refused_budget), reason("busy", logins.refused_busy)];
        family(encoder, "login_refused", "Logins refused before the password was checked, by limit", Counter, &refused)?;
        family(encoder, "login_password_checks", "Password checks running (at most auth.login_hash_concurrency)", Gauge, &[(vec![], logins.hashing as f64)])?;
        let peers = self.sources.peers.snapshot();
        let refused: Vec<_> = peers.refused.iter().map(|(r, n)| reason(r, *n)).collect();
        family(encoder, "cluster_requests_refused", "Requests to /cluster/* refused: not a peer, bad signature, stale, replayed", Counter, &refused)?;
        family(encoder, "cluster_answers_refused", "Answers from peers refused (unsigned, forged, replayed, stale)", Counter, &[(vec![], peers.answers_refused as f64)])
    }

    fn encode_streams(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let s = &self.sources;
        let (mut uplink, mut rungs, mut lag, mut stalled, mut ingest, mut segments) = (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut sessions: std::collections::BTreeMap<&'static str, f64> =
            s.transcode.admission.selection().usable.iter().map(|u| (u.backend.name(), 0.0)).collect();
        for stream in s.streams.streams() {
            let Some(status) = s.streams.status(&stream) else { continue };
            let labels = || vec![("stream", stream.to_string())];
            if let Some(estimate) = &status.uplink {
                uplink.push((labels(), estimate.throughput_bps));
            }
            let planned = status.plan.as_ref().map_or(0, |p| p.rungs.len());
            let running = status.health.rung_cap.map_or(planned, |cap| cap.min(planned));
            if let Some(choice) = &status.transcode {
                *sessions.entry(choice.backend.name()).or_default() += running as f64;
            }
            rungs.push((labels(), running as f64));
            if let Some(ms) = status.health.lag_ms {
                lag.push((labels(), ms as f64 / 1000.0));
            }
            stalled.push((labels(), f64::from(u8::from(status.health.stalled))));
            ingest.push((labels(), status.ingest_bytes as f64));
            if let Some(count) = s.packager.segments_added(&stream) {
                segments.push((labels(), count as f64));
            }
        }
        use MetricType::{Counter, Gauge};
        family(encoder, "stream_uplink_bits_per_second", "The broadcaster's measured upload throughput", Gauge, &uplink)?;
        family(encoder, "stream_rungs", "Video renditions being encoded", Gauge, &rungs)?;
        family(encoder, "stream_lag_seconds", "How far the newest video segment trails real time", Gauge, &lag)?;
        family(encoder, "stream_stalled", "1 while the stream has produced no segment for 5 s", Gauge, &stalled)?;
        family(encoder, "stream_ingest_bytes", "Media bytes received from the broadcaster", Counter, &ingest)?;
        family(encoder, "stream_segments", "Media segments produced, every rendition", Counter, &segments)?;
        let failures = s.packager.failures();
        family(encoder, "mpd_render_failures", "Renders of one stream's MPD that panicked (that stream kept its last MPD)", Counter, &[(vec![], failures.render_failures as f64)])?;
        family(encoder, "package_task_restarts", "MPD renderer or sweep loops that died and were started again", Counter, &[(vec![], failures.task_restarts as f64)])?;
        let sessions: Vec<_> = sessions.into_iter().map(|(backend, n)| (vec![("backend", backend.to_owned())], n)).collect();
        family(encoder, "encoder_sessions", "Video encoders running, by backend", Gauge, &sessions)?;
        let usage = s.transcode.admission.report();
        family(encoder, "transcode_cpu_cores", "CPU cores admitted streams are counted as using (CPU encoders and decoders)", Gauge, &[(vec![], usage.cpu_cores_used)])?;
        family(encoder, "transcode_cpu_budget_cores", "CPU cores admission lets transcoding use (transcode.cpu_budget)", Gauge, &[(vec![], usage.cpu_cores_budget)])?;
        family(encoder, "transcode_cost_scale", "What the CPU cost model's figures are multiplied by, as measured on this host", Gauge, &[(vec![], usage.cost_scale)])?;
        if let Some(cores) = usage.cpu_cores_measured {
            family(encoder, "process_cpu_cores", "CPU cores this process used over the last second", Gauge, &[(vec![], cores)])?;
        }
        let device_sessions: Vec<_> = usage
            .devices
            .iter()
            .flat_map(|d| {
                let labels = |kind: &str| vec![("backend", d.backend.name().to_owned()), ("device", d.device.clone()), ("kind", kind.to_owned())];
                [(labels("encode"), f64::from(d.encoder_sessions)), (labels("decode"), f64::from(d.decoder_sessions))]
            })
            .collect();
        family(encoder, "transcode_device_sessions", "Encoder and decoder sessions admitted streams hold, by backend and device", Gauge, &device_sessions)?;
        family(encoder, "transcode_admission_refusals", "Streams refused or given fewer rungs by admission", Counter, &[(vec![("outcome", "refused".to_owned())], usage.refused as f64), (vec![("outcome", "rungs_dropped".to_owned())], usage.reduced as f64)])
    }

    fn encode_audience(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let (mut viewers, mut delivered) = (vec![], vec![]);
        for (stream, figures) in self.sources.audience.figures() {
            let labels = vec![("stream", stream.to_string())];
            viewers.push((labels.clone(), figures.viewers as f64));
            delivered.push((labels, figures.delivered_bytes as f64));
        }
        family(encoder, "stream_viewers", crate::audience::VIEWER_HELP, MetricType::Gauge, &viewers)?;
        family(encoder, "stream_delivered_bytes", "Manifest and segment bytes this node served to viewers", MetricType::Counter, &delivered)?;
        let untracked = self.sources.audience.untracked.load(std::sync::atomic::Ordering::Relaxed) as f64;
        family(encoder, "audience_untracked", "Viewers or streams not counted because a tracking bound was reached", MetricType::Counter, &[(Vec::new(), untracked)])
    }

    fn encode_host(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let host = self.sources.host.snapshot();
        use MetricType::Gauge;
        let one = |v: Option<f64>| v.map(|v| vec![(Vec::new(), v)]).unwrap_or_default();
        family(encoder, "host_cpu_usage_ratio", "CPU busy, all cores, since the previous reading (0..1)", Gauge, &one(host.cpu_usage))?;
        family(encoder, "process_cpu_share_cores", "CPU cores this process may use (its cgroup quota or affinity)", Gauge, &[(vec![], host.cpu_share.cores)])?;
        family(encoder, "host_memory_used_bytes", "Memory in use", Gauge, &one(host.memory_used_bytes.map(|b| b as f64)))?;
        family(encoder, "host_memory_total_bytes", "Memory installed", Gauge, &one(host.memory_total_bytes.map(|b| b as f64)))?;
        if let Some(load) = host.load_average {
            let samples: Vec<(Labels, f64)> =
                ["1m", "5m", "15m"].into_iter().zip(load).map(|(w, v)| (vec![("window", w.to_owned())], v)).collect();
            family(encoder, "host_load_average", "System load average", Gauge, &samples)?;
        }
        // Per GPU (absent without an NVIDIA driver); a figure the GPU does not report is skipped.
        let per_gpu = |value: &dyn Fn(&crate::host::GpuSnapshot) -> Option<f64>| -> Vec<(Labels, f64)> {
            host.gpus.iter().filter_map(|g| Some((vec![("gpu", g.index.to_string()), ("name", g.name.clone())], value(g)?))).collect()
        };
        let percent = |v: Option<u32>| v.map(|p| f64::from(p) / 100.0);
        family(encoder, "gpu_utilization_ratio", "GPU busy (0..1)", Gauge, &per_gpu(&|g| percent(g.utilization_percent)))?;
        family(encoder, "gpu_encoder_utilization_ratio", "NVENC busy (0..1)", Gauge, &per_gpu(&|g| percent(g.encoder_utilization_percent)))?;
        family(encoder, "gpu_decoder_utilization_ratio", "NVDEC busy (0..1)", Gauge, &per_gpu(&|g| percent(g.decoder_utilization_percent)))?;
        family(encoder, "gpu_encoder_sessions", "NVENC sessions open on the GPU (all processes)", Gauge, &per_gpu(&|g| g.encoder_sessions.map(f64::from)))?;
        family(encoder, "gpu_memory_used_bytes", "GPU memory in use", Gauge, &per_gpu(&|g| g.memory_used_bytes.map(|b| b as f64)))?;
        family(encoder, "gpu_memory_total_bytes", "GPU memory installed", Gauge, &per_gpu(&|g| g.memory_total_bytes.map(|b| b as f64)))?;
        family(encoder, "gpu_temperature_celsius", "GPU temperature", Gauge, &per_gpu(&|g| g.temperature_celsius.map(f64::from)))
    }
}

/// A counter snapshot as the JSON object of numbers it serialises to.
fn json(snapshot: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(snapshot).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::route_of;

    #[test]
    fn routes_are_a_bounded_set_of_patterns() {
        for (path, route) in [
            ("/live", "/live"),
            ("/live/cam", "/live/:stream"),
            ("/live/cam/manifest.mpd", "/live/:stream/manifest.mpd"),
            ("/live/cam/manifest-number.mpd", "/live/:stream/manifest-number.mpd"),
            ("/live/cam/720p/abc-7.m4s", "/live/:stream/:rendition/:file"),
            ("/live/cam/720p/abc-7.m4s/x", "other"),
            ("/live/cam/other.mpd", "other"),
            ("/metrics", "/metrics"),
            ("/cluster/health", "/cluster/health"),
            ("/etc/passwd", "other"),
            ("/", "/"),
            ("/console/app.js", "/console/:file"),
            ("/api/v1/streams/cam/kick", "/api/v1"),
        ] {
            assert_eq!(route_of(path), route, "{path}");
        }
    }
}
