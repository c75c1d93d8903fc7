//! Prometheus exposition at `GET /metrics` (OpenMetrics text, through prometheus-client),
//! from the one registry each node builds at start (app.rs).
//!
//! Every module owns its metrics and registers them in that registry: the RTMP edge
//! (`IngestMetrics`), the HTTP edge (`HttpEdgeMetrics`), the live node's store
//! (`LiveMetrics`), the caching tier (`TierMetrics`), the packager (`PackageMetrics`),
//! publish checks, logins and node-to-node refusals (auth), the audience's overflow, and
//! here the HTTP requests by route and status ([`HttpRequests`]). They are recorded where
//! things happen; nothing keeps a second copy.
//!
//! What is state rather than events is read at scrape time ([`Sources`]): each live
//! stream's status (uplink estimate, rungs, lag, ingest bytes, segments), the audience
//! (viewers and delivered bytes), admission (CPU and sessions against their budgets, the
//! calibrated cost scale) and the host (CPU, memory, load, this process's CPU share and
//! use; per GPU utilisation, encoder and decoder load, encoder sessions, memory,
//! temperature: `host`).
//!
//! Per-stream series exist while the stream is live on this node or, for the audience,
//! while it was watched through this node within the last minute: an ended stream's series
//! go with it.

pub mod common;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::audience::Audience;
use crate::auth::PublishAuth;
use crate::host::HostTelemetry;
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

/// `rackcast_http_requests_total`: every answered request of the node's router, by route
/// pattern and status. Cheap to clone: clones share the family.
#[derive(Debug, Clone, Default)]
pub struct HttpRequests(Family<HttpLabels, Counter>);

impl HttpRequests {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("http_requests", "HTTP requests answered, by route and status", self.0.clone());
    }

    /// Counts one answered HTTP request of `route` (see [`route_of`]).
    pub fn count(&self, route: &'static str, status: u16) {
        self.0.get_or_create(&HttpLabels { route, status }).inc();
    }
}

/// Middleware: counts every answered request of the node's router by route and status.
pub async fn count_requests(State(requests): State<HttpRequests>, request: Request, next: Next) -> Response {
    let route = route_of(request.uri().path());
    let response = next.run(request).await;
    requests.count(route, response.status().as_u16());
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
        [Some("live"), Some(_), Some("manifest-ll.mpd"), None, _] => "/live/:stream/manifest-ll.mpd",
        [Some("live"), Some(_), Some("uplink"), None, _] => "/live/:stream/uplink",
        [Some("live"), Some(_), Some("master.m3u8"), None, _] => "/live/:stream/master.m3u8",
        [Some("live"), Some(_), Some(_), Some("media.m3u8"), None] => "/live/:stream/:rendition/media.m3u8",
        [Some("live"), Some(_), Some(_), Some(_), None] => "/live/:stream/:rendition/:file",
        [Some("time"), None, ..] => "/time",
        [Some("metrics"), None, ..] => METRICS_PATH,
        [Some("cluster"), Some("health"), None, ..] => "/cluster/health",
        [Some("healthz"), None, ..] => "/healthz",
        [Some("ready"), None, ..] => "/ready",
        [Some(""), None, ..] => "/",
        [Some("console"), Some(_), ..] => "/console/:file",
        [Some("api"), Some("v1"), ..] => "/api/v1",
        _ => "other",
    }
}

/// The node's state the scrape reads (and the admin API with it).
#[derive(Clone)]
pub struct Sources {
    pub tier: Option<TierState>,
    pub streams: Arc<StreamRegistry>,
    pub packager: Arc<Packager>,
    pub audience: Arc<Audience>,
    pub auth: Arc<PublishAuth>,
    pub transcode: Arc<crate::transcode::resources::Resources>,
    pub host: Arc<HostTelemetry>,
    /// Bounds on logins (password checks at once, the failure budget); the API uses it.
    pub logins: Arc<crate::auth::login::LoginGate>,
}

/// `GET /metrics` for this node: `registry` with what every module registered, and the
/// state read at scrape time from `sources`.
pub fn router(mut registry: Registry, sources: Sources) -> Router {
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

/// Labels of the per-stream series.
#[derive(Debug, Clone, EncodeLabelSet)]
struct StreamLabel {
    stream: String,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct BackendLabel {
    backend: &'static str,
}

/// Sessions admitted streams hold on one device of one backend, by `kind` (encode, decode).
#[derive(Debug, Clone, EncodeLabelSet)]
struct DeviceSessionLabels {
    backend: &'static str,
    device: String,
    kind: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct WindowLabel {
    window: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct GpuLabels {
    gpu: String,
    name: String,
}

/// Writes one labelled metric family, `name` without the prefix or `_total` (nothing when
/// it has no samples).
fn family<L: EncodeLabelSet>(encoder: &mut DescriptorEncoder, name: &str, help: &str, kind: MetricType, samples: &[(L, f64)]) -> std::fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        sample(kind, *value, metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes one unlabelled metric.
fn single(encoder: &mut DescriptorEncoder, name: &str, help: &str, kind: MetricType, value: f64) -> std::fmt::Result {
    sample(kind, value, encoder.encode_descriptor(name, help, None, kind)?)
}

fn sample(kind: MetricType, value: f64, encoder: MetricEncoder) -> std::fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(encoder),
        _ => ConstGauge::new(value).encode(encoder),
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        self.encode_streams(&mut encoder)?;
        self.encode_audience(&mut encoder)?;
        self.encode_host(&mut encoder)
    }
}

impl NodeCollector {
    fn encode_streams(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let s = &self.sources;
        let (mut uplink, mut source, mut uplink_bound, mut plans) = (vec![], vec![], vec![], vec![]);
        let (mut rungs, mut lag, mut stalled, mut ingest, mut segments) = (vec![], vec![], vec![], vec![], vec![]);
        let mut sessions: std::collections::BTreeMap<&'static str, f64> =
            s.transcode.admission.selection().usable.iter().map(|u| (u.backend.name(), 0.0)).collect();
        for stream in s.streams.streams() {
            let Some(status) = s.streams.status(&stream) else { continue };
            let labels = || StreamLabel { stream: stream.to_string() };
            if let Some(estimate) = &status.uplink {
                uplink.push((labels(), estimate.throughput_bps));
                uplink_bound.push((labels(), f64::from(u8::from(estimate.uplink_bound))));
                if let Some(bps) = estimate.source_bitrate_bps {
                    source.push((labels(), bps));
                }
            }
            plans.push((labels(), status.plans as f64));
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
        family(encoder, "stream_source_bits_per_second", "The bitrate the broadcaster sends at, as measured", Gauge, &source)?;
        family(encoder, "stream_uplink_bound", "1 while the broadcaster's uplink cannot carry its stream", Gauge, &uplink_bound)?;
        family(encoder, "stream_plan_changes", "Ladder plans the stream has had", Counter, &plans)?;
        family(encoder, "stream_rungs", "Video renditions being encoded", Gauge, &rungs)?;
        family(encoder, "stream_lag_seconds", "How far the newest video segment trails real time", Gauge, &lag)?;
        family(encoder, "stream_stalled", "1 while the stream has produced no segment for 5 s", Gauge, &stalled)?;
        family(encoder, "stream_ingest_bytes", "Media bytes received from the broadcaster", Counter, &ingest)?;
        family(encoder, "stream_segments", "Media segments produced, every rendition", Counter, &segments)?;
        let sessions: Vec<_> = sessions.into_iter().map(|(backend, n)| (BackendLabel { backend }, n)).collect();
        family(encoder, "encoder_sessions", "Video encoders running, by backend", Gauge, &sessions)?;
        let usage = s.transcode.admission.report();
        single(encoder, "transcode_cpu_cores", "CPU cores admitted streams are counted as using (CPU encoders and decoders)", Gauge, usage.cpu_cores_used)?;
        single(encoder, "transcode_cpu_budget_cores", "CPU cores admission lets transcoding use (transcode.cpu_budget)", Gauge, usage.cpu_cores_budget)?;
        single(encoder, "transcode_cost_scale", "What the CPU cost model's figures are multiplied by, as measured on this host", Gauge, usage.cost_scale)?;
        if let Some(cores) = usage.cpu_cores_measured {
            single(encoder, "process_cpu_cores", "CPU cores this process used over the last second", Gauge, cores)?;
        }
        let device_sessions: Vec<_> = usage
            .devices
            .iter()
            .flat_map(|d| {
                let labels = |kind| DeviceSessionLabels { backend: d.backend.name(), device: d.device.clone(), kind };
                [(labels("encode"), f64::from(d.encoder_sessions)), (labels("decode"), f64::from(d.decoder_sessions))]
            })
            .collect();
        family(encoder, "transcode_device_sessions", "Encoder and decoder sessions admitted streams hold, by backend and device", Gauge, &device_sessions)?;
        family(encoder, "transcode_admission_refusals", "Streams refused or given fewer rungs by admission", Counter, &[(OutcomeLabel { outcome: "refused" }, usage.refused as f64), (OutcomeLabel { outcome: "rungs_dropped" }, usage.reduced as f64)])
    }

    fn encode_audience(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let (mut viewers, mut delivered) = (vec![], vec![]);
        for (stream, figures) in self.sources.audience.figures() {
            let labels = StreamLabel { stream: stream.to_string() };
            viewers.push((labels.clone(), figures.viewers as f64));
            delivered.push((labels, figures.delivered_bytes as f64));
        }
        family(encoder, "stream_viewers", crate::audience::VIEWER_HELP, MetricType::Gauge, &viewers)?;
        family(encoder, "stream_delivered_bytes", "Manifest and segment bytes this node served to viewers", MetricType::Counter, &delivered)
    }

    fn encode_host(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let host = self.sources.host.snapshot();
        use MetricType::Gauge;
                if let Some(busy) = host.cpu_usage {
            single(encoder, "host_cpu_usage_ratio", "CPU busy, all cores, since the previous reading (0..1)", Gauge, busy)?;
        }
        single(encoder, "process_cpu_share_cores", "CPU cores this process may use (its cgroup quota or affinity)", Gauge, host.cpu_share.cores)?;
        if let Some(bytes) = host.memory_used_bytes {
            single(encoder, "host_memory_used_bytes", "Memory in use", Gauge, bytes as f64)?;
        }
        if let Some(bytes) = host.memory_total_bytes {
            single(encoder, "host_memory_total_bytes", "Memory installed", Gauge, bytes as f64)?;
        }
        if let Some(load) = host.load_average {
            let samples: Vec<_> = ["1m", "5m", "15m"].into_iter().zip(load).map(|(window, v)| (WindowLabel { window }, v)).collect();
            family(encoder, "host_load_average", "System load average", Gauge, &samples)?;
        }
        // Per GPU (absent without an NVIDIA driver); a figure the GPU does not report is skipped.
        let per_gpu = |value: &dyn Fn(&crate::host::GpuSnapshot) -> Option<f64>| -> Vec<(GpuLabels, f64)> {
            host.gpus.iter().filter_map(|g| Some((GpuLabels { gpu: g.index.to_string(), name: g.name.clone() }, value(g)?))).collect()
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
            ("/live/cam/manifest-ll.mpd", "/live/:stream/manifest-ll.mpd"),
            ("/live/cam/720p/abc-7.m4s", "/live/:stream/:rendition/:file"),
            ("/live/cam/master.m3u8", "/live/:stream/master.m3u8"),
            ("/live/cam/720p/media.m3u8", "/live/:stream/:rendition/media.m3u8"),
            ("/live/cam/index.m3u8", "other"),
            ("/live/cam/720p/abc-7.m4s/x", "other"),
            ("/live/cam/other.mpd", "other"),
            ("/metrics", "/metrics"),
            ("/cluster/health", "/cluster/health"),
            ("/healthz", "/healthz"),
            ("/ready", "/ready"),
            ("/etc/passwd", "other"),
            ("/", "/"),
            ("/console/app.js", "/console/:file"),
            ("/api/v1/streams/cam/kick", "/api/v1"),
        ] {
            assert_eq!(route_of(path), route, "{path}");
        }
    }
}
