//! Typed appliance configuration. Every field has a documented, named default, so an
//! appliance with no config file runs one node with every role and the software encoder.
//! `validate()` runs at start-up and names the offending key. deploy/rackcast.toml mirrors
//! this file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::http::HttpConfig;
pub use crate::ingest::IngestConfig;
use crate::transcode::admission::OverBudget;
use crate::transcode::backend::Backend;
use crate::transcode::capability::Fallback;

pub const DEFAULT_DVR_WINDOW: Duration = Duration::from_secs(30);
pub const DEFAULT_SEGMENT_DURATION: Duration = Duration::from_secs(1);
pub const DEFAULT_PRESENTATION_DELAY: Duration = Duration::from_secs(1);
pub const DEFAULT_MANIFEST_UPDATE_PERIOD: Duration = Duration::from_secs(1);
/// A segment is finished about 0.9 to 2 s after its end (the transcoder's lag, reported as
/// `health.lag_ms`).
pub const DEFAULT_NUMBER_FORM_DELAY: Duration = Duration::from_secs(2);
/// Past the DVR-window-sized lag a player tolerates; an uplink-bound publisher that lags
/// for a few seconds keeps its Period.
pub const DEFAULT_MAX_CLOCK_DRIFT: Duration = Duration::from_secs(15);
/// A 1 s segment of the 1080p rung at 5 Mbit/s is about 640 KB, a 10 s one 6.4 MB.
pub const DEFAULT_MAX_FRAGMENT_BYTES: usize = 16 * 1024 * 1024;
/// The default ladder (10 Mbit/s with audio) fills a 30 s DVR window with about 38 MB:
/// two and a half times that leaves room for encoder overshoot and a republish's Periods.
pub const DEFAULT_MAX_STREAM_BYTES: u64 = 96 * 1024 * 1024;
/// How much more than the configured ladder's nominal DVR window `max_stream_bytes` must
/// hold, so that the byte cap never shortens the window of a stream that behaves.
pub const STREAM_BYTES_HEADROOM: f64 = 1.5;
pub const DEFAULT_X264_PRESET: &str = "veryfast";
pub const DEFAULT_AUDIO_BITRATE: u32 = 128_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterConfig,
    pub ingest: IngestConfig,
    /// The viewer-facing HTTP server and its connection limits (src/http/config.rs).
    pub http: HttpConfig,
    pub transcode: TranscodeConfig,
    pub ladder: LadderConfig,
    pub package: PackageConfig,
    /// Caching and coalescing on origin and edge nodes.
    pub tier: crate::tier::TierConfig,
    /// The data directory and the limits of publish authentication (src/auth/config.rs).
    pub auth: crate::auth::AuthConfig,
}

/// What a node does. Every node runs the same binary; roles only switch parts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes broadcasters, transcodes and packages its own streams, serves them.
    Live,
    /// Caches and coalesces for edges, fetching from each stream's live node.
    Origin,
    /// Serves viewers, caching and coalescing in front of its region's origins.
    Edge,
}

pub const DEFAULT_NODE_ID: &str = "local";
pub const DEFAULT_REGION: &str = "default";
pub const DEFAULT_VNODES: u32 = 160;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(400);
pub const DEFAULT_FAIL_AFTER: u32 = 2;
pub const DEFAULT_RISE_AFTER: u32 = 2;
pub const MIN_RELAY_SECRET_LEN: usize = 16;
/// What `rackcast config` prints in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// This node's place in a federation. With no `nodes`, the node is alone and has every
/// role. One cluster file can serve every node: each picks its own entry by `node_id`
/// (or `--node`), and takes its listen addresses and roles from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Which entry of `nodes` this process is.
    pub node_id: String,
    /// Every node of the federation, this one included.
    pub nodes: Vec<NodeConfig>,
    /// Virtual nodes per node on the consistent-hash ring.
    pub vnodes: u32,
    /// How often each peer's health is probed.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// A probe without an answer within this time counts as failed.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Consecutive failed probes that mark a peer down.
    pub fail_after: u32,
    /// Consecutive good probes that mark a peer up again.
    pub rise_after: u32,
    /// Shared secret with which nodes sign relayed publishes (app `_relay`), so that only
    /// nodes of the federation can publish without a broadcaster's stream key, and every
    /// node-to-node HTTP request and answer (`/cluster/*`, `auth/peer.rs`). Required
    /// when `nodes` is set (this or `relay_secret_file`); at least 16 characters. Never
    /// printed: `rackcast config` shows it redacted.
    pub relay_secret: String,
    /// File holding the relay secret (first line), instead of `relay_secret`.
    pub relay_secret_file: Option<std::path::PathBuf>,
}

/// One node of the federation as every other node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: String,
    pub roles: Vec<Role>,
    #[serde(default = "default_region")]
    pub region: String,
    /// RTMP address (broadcasters and relays publish here).
    pub rtmp: SocketAddr,
    /// HTTP address (viewers, lower tiers and health probes).
    pub http: SocketAddr,
}

fn default_region() -> String {
    DEFAULT_REGION.to_owned()
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: DEFAULT_NODE_ID.to_owned(),
            nodes: Vec::new(),
            vnodes: DEFAULT_VNODES,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
            fail_after: DEFAULT_FAIL_AFTER,
            rise_after: DEFAULT_RISE_AFTER,
            relay_secret: String::new(),
            relay_secret_file: None,
        }
    }
}

impl ClusterConfig {
    /// This node's entry; `None` when the node runs alone.
    pub fn this_node(&self) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == self.node_id)
    }

    /// This node's roles: its entry's, or all of them when alone.
    pub fn roles(&self) -> Vec<Role> {
        self.this_node().map(|n| n.roles.clone()).unwrap_or_else(|| vec![Role::Live, Role::Origin, Role::Edge])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TranscodeConfig {
    /// Transcode backends in order of preference: `nvenc`, `nvdec-x264` (NVIDIA decode
    /// and scaling, x264 encoding), `vaapi`, `software`. A backend left out is never used.
    #[serde(alias = "encoders")]
    pub backends: Vec<Backend>,
    /// `allow`: a stream moves to the next usable backend when one is absent or its
    /// budget is spent (logged, and shown in the stream's status); `refuse`: only the
    /// first backend, and the appliance does not start without it.
    pub fallback: Fallback,
    /// When no backend has room for a stream's whole ladder: `drop-rungs` (from the top;
    /// the lowest rung always stays) or `refuse` the stream.
    pub over_budget: OverBudget,
    /// Directory whose `<backend>.pipeline` files replace the built-in templates.
    pub pipelines_dir: Option<std::path::PathBuf>,
    /// NVENC sessions per GPU; default 8 on GeForce cards (their driver's system-wide cap),
    /// 32 on others.
    pub nvenc_sessions_per_gpu: Option<u32>,
    /// NVDEC sessions (one per stream) per GPU.
    pub nvdec_sessions_per_gpu: u32,
    /// VA-API encoder sessions per render node.
    pub vaapi_sessions: u32,
    /// Cores the CPU encoders (software and nvdec-x264) may use; default 85% of this
    /// process's share: its cgroup's CPU quota (systemd `CPUQuota=`, a container's or pod's
    /// CPU limit) or the CPUs it may run on, the smaller.
    pub cpu_budget: Option<f64>,
    /// Scale the CPU cost model by this process's measured CPU use per admitted ladder
    /// (smoothed, once the ladders have run unchanged for a few seconds); `false` keeps the
    /// model's fixed figures.
    pub calibrate_cost: bool,
    /// x264 `speed-preset` for the software backend.
    pub x264_preset: String,
    /// Bitrate of the AAC rendition when the source audio has to be re-encoded (bit/s).
    pub audio_bitrate: u32,
    /// Rung catalogue, best first. Rungs above the source's height are left out.
    pub rungs: Vec<RungConfig>,
}

/// One entry of the ladder catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RungConfig {
    /// Lines on the picture's short side (the height of a landscape picture, the width of a
    /// portrait one); the long side follows the source's aspect ratio.
    pub height: u32,
    /// Target video bitrate in kbit/s.
    pub bitrate_kbps: u32,
}

pub const DEFAULT_INITIAL_MEASUREMENT: Duration = Duration::from_secs(2);

/// How the ladder follows the broadcaster's measured bitrate (src/ladder, src/probe).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LadderConfig {
    /// How long a publish is measured before the first measured plan; segments are produced
    /// from a provisional ladder meanwhile.
    #[serde(with = "humantime_serde")]
    pub initial_measurement: Duration,
    /// Half-width of the band, as a share of the bitrate a plan was made for, inside which
    /// a changing source bitrate does not re-plan.
    pub hysteresis_ratio: f64,
    /// How long the bitrate must stay outside the band before the ladder follows.
    #[serde(with = "humantime_serde")]
    pub hysteresis_hold: Duration,
}

impl Default for LadderConfig {
    fn default() -> Self {
        Self {
            initial_measurement: DEFAULT_INITIAL_MEASUREMENT,
            hysteresis_ratio: crate::ladder::DEFAULT_HYSTERESIS_RATIO,
            hysteresis_hold: crate::ladder::DEFAULT_HYSTERESIS_HOLD,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackageConfig {
    /// Target duration of every DASH segment.
    #[serde(with = "humantime_serde")]
    pub segment_duration: Duration,
    /// How far back viewers can seek; older segments are evicted, and an ended stream is
    /// removed this long after its broadcaster stopped.
    #[serde(with = "humantime_serde")]
    pub dvr_window: Duration,
    /// MPD@suggestedPresentationDelay: how far behind the live edge players should sit.
    #[serde(with = "humantime_serde")]
    pub presentation_delay: Duration,
    /// MPD@minimumUpdatePeriod: how often players re-fetch the manifest to learn of new
    /// segments. Shorter means players see a new segment sooner, at one manifest request
    /// per period per viewer (edges coalesce and cache them).
    #[serde(with = "humantime_serde")]
    pub manifest_update_period: Duration,
    /// How long after its end `manifest-number.mpd` (the Number form, where players compute
    /// segment numbers from the clock) says a segment is available: at least the time the
    /// transcoder and packager take to finish one, or such players ask for it early (404).
    #[serde(with = "humantime_serde")]
    pub number_form_delay: Duration,
    /// When a stream's media falls this far behind the wall clock (a stalled uplink, a
    /// publisher that paused), the next keyframe starts a new Period anchored to now, so
    /// the MPD's live edge matches what exists again.
    #[serde(with = "humantime_serde")]
    pub max_clock_drift: Duration,
    /// Largest CMAF fragment (one segment of one rendition, bytes) a muxer may produce; a
    /// larger one is refused and ends its stream (logged, counted as
    /// `rackcast_package_fragments_too_large`).
    pub max_fragment_bytes: usize,
    /// Most bytes one stream's segments may hold on this node: past it the oldest segments
    /// leave the DVR window early (logged, counted as
    /// `rackcast_package_segments_evicted_for_bytes`); the newest segment of each
    /// rendition always stays. Must hold the whole ladder's DVR window with headroom.
    pub max_stream_bytes: u64,
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        Self {
            backends: vec![Backend::Software],
            fallback: Fallback::Allow,
            over_budget: OverBudget::DropRungs,
            pipelines_dir: None,
            nvenc_sessions_per_gpu: None,
            nvdec_sessions_per_gpu: 32,
            vaapi_sessions: 16,
            cpu_budget: None,
            calibrate_cost: true,
            x264_preset: DEFAULT_X264_PRESET.to_owned(),
            audio_bitrate: DEFAULT_AUDIO_BITRATE,
            rungs: default_rungs(),
        }
    }
}

/// 1080p / 720p / 480p / 360p at the bitrates common live platforms recommend for 30 fps.
pub fn default_rungs() -> Vec<RungConfig> {
    [(1080, 5000), (720, 2800), (480, 1400), (360, 800)]
        .into_iter()
        .map(|(height, bitrate_kbps)| RungConfig { height, bitrate_kbps })
        .collect()
}

impl PackageConfig {
    /// Bytes of a DVR window of every rung of the catalogue and the audio, at their nominal
    /// bitrates.
    pub fn nominal_window_bytes(&self, transcode: &TranscodeConfig) -> u64 {
        let bps: u64 = transcode.rungs.iter().map(|r| u64::from(r.bitrate_kbps) * 1000).sum::<u64>() + u64::from(transcode.audio_bitrate);
        (bps as f64 / 8.0 * self.dvr_window.as_secs_f64()) as u64
    }

    /// The byte caps the packager enforces.
    pub fn byte_caps(&self) -> crate::package::ByteCaps {
        crate::package::ByteCaps { max_fragment_bytes: self.max_fragment_bytes, max_stream_bytes: self.max_stream_bytes }
    }
}

impl Default for PackageConfig {
    fn default() -> Self {
        Self {
            segment_duration: DEFAULT_SEGMENT_DURATION,
            dvr_window: DEFAULT_DVR_WINDOW,
            presentation_delay: DEFAULT_PRESENTATION_DELAY,
            manifest_update_period: DEFAULT_MANIFEST_UPDATE_PERIOD,
            number_form_delay: DEFAULT_NUMBER_FORM_DELAY,
            max_clock_drift: DEFAULT_MAX_CLOCK_DRIFT,
            max_fragment_bytes: DEFAULT_MAX_FRAGMENT_BYTES,
            max_stream_bytes: DEFAULT_MAX_STREAM_BYTES,
        }
    }
}

/// A configuration value that cannot work, named by its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

const X264_PRESETS: &[&str] = &[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
];

impl Config {
    /// Reads a TOML file. Call `validate()` once command-line overrides are applied.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let mut config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: shown, source: Box::new(source) })?;
        if let Some(file) = &config.cluster.relay_secret_file {
            // Relative to the config file, so a config and its secret can move together.
            let file = path.parent().unwrap_or(Path::new(".")).join(file);
            let text = std::fs::read_to_string(&file)
                .map_err(|source| ConfigError::Read { path: file.display().to_string(), source })?;
            config.cluster.relay_secret = text.lines().next().unwrap_or_default().trim().to_owned();
        }
        Ok(config)
    }

    /// The configuration with every secret replaced by [`REDACTED`]: the relay secret and
    /// the stream keys (their public names stay).
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        if !config.cluster.relay_secret.is_empty() {
            config.cluster.relay_secret = REDACTED.to_owned();
        }
        if !config.auth.publish_token_secret.is_empty() {
            config.auth.publish_token_secret = REDACTED.to_owned();
        }
        // A webhook URL may carry a credential in its query.
        if let Some((base, _)) = config.auth.publish_webhook.split_once('?') {
            config.auth.publish_webhook = format!("{base}?{REDACTED}");
        }
        config.ingest.keys = config
            .ingest
            .keys
            .values()
            .enumerate()
            .map(|(i, name)| (format!("{REDACTED}-{}", i + 1), name.clone()))
            .collect();
        config
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tier.validate().map_err(|e| invalid("tier", e.to_string()))?;
        self.auth.validate().map_err(|(key, reason)| invalid(format!("auth.{key}"), reason))?;
        self.http.validate().map_err(|e| invalid(format!("http.{}", e.key), e.reason))?;
        let cluster = &self.cluster;
        if !cluster.nodes.is_empty() {
            if cluster.this_node().is_none() {
                return Err(invalid("cluster.node_id", format!("{:?} is not one of cluster.nodes", cluster.node_id)));
            }
            let mut ids = std::collections::BTreeSet::new();
            for (i, node) in cluster.nodes.iter().enumerate() {
                if !ids.insert(node.id.as_str()) {
                    return Err(invalid(format!("cluster.nodes[{i}].id"), format!("{:?} appears twice", node.id)));
                }
                if node.roles.is_empty() {
                    return Err(invalid(format!("cluster.nodes[{i}].roles"), "needs at least one role"));
                }
            }
            if cluster.relay_secret.chars().count() < MIN_RELAY_SECRET_LEN {
                return Err(invalid(
                    "cluster.relay_secret",
                    format!("a federated node needs a relay secret of at least {MIN_RELAY_SECRET_LEN} characters (relay_secret or relay_secret_file), the same on every node"),
                ));
            }
            if !cluster.nodes.iter().any(|n| n.roles.contains(&Role::Live)) {
                return Err(invalid("cluster.nodes", "needs at least one node with the live role"));
            }
        }
        if cluster.vnodes == 0 || cluster.vnodes > 4096 {
            return Err(invalid("cluster.vnodes", "must be within 1..=4096"));
        }
        if cluster.health_timeout.is_zero() || cluster.health_timeout > cluster.health_interval * 4 {
            return Err(invalid("cluster.health_timeout", "must be above zero and at most four health intervals"));
        }
        if cluster.fail_after == 0 || cluster.rise_after == 0 {
            return Err(invalid("cluster.fail_after", "fail_after and rise_after must be at least 1"));
        }
        self.ingest.validate().map_err(|(key, reason)| invalid(format!("ingest.{key}"), reason))?;
        if self.transcode.backends.is_empty() {
            return Err(invalid("transcode.backends", "needs at least one backend (nvenc, nvdec-x264, vaapi, software)"));
        }
        if self.transcode.cpu_budget.is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
            return Err(invalid("transcode.cpu_budget", "must be a number of cores above 0"));
        }
        if self.transcode.nvenc_sessions_per_gpu == Some(0) || self.transcode.nvdec_sessions_per_gpu == 0 || self.transcode.vaapi_sessions == 0 {
            return Err(invalid("transcode", "session budgets must be at least 1"));
        }
        if !X264_PRESETS.contains(&self.transcode.x264_preset.as_str()) {
            return Err(invalid("transcode.x264_preset", format!("must be one of {}", X264_PRESETS.join(", "))));
        }
        if !(32_000..=512_000).contains(&self.transcode.audio_bitrate) {
            return Err(invalid("transcode.audio_bitrate", "must be between 32000 and 512000 bit/s"));
        }
        if self.transcode.rungs.is_empty() {
            return Err(invalid("transcode.rungs", "needs at least one rung"));
        }
        for (i, rung) in self.transcode.rungs.iter().enumerate() {
            if rung.height < 90 || rung.height > 4320 || rung.height % 2 != 0 {
                return Err(invalid(format!("transcode.rungs[{i}].height"), "must be even and within 90..=4320"));
            }
            if rung.bitrate_kbps < 100 || rung.bitrate_kbps > 100_000 {
                return Err(invalid(format!("transcode.rungs[{i}].bitrate_kbps"), "must be within 100..=100000"));
            }
        }
        if !(0.05..=0.9).contains(&self.ladder.hysteresis_ratio) {
            return Err(invalid("ladder.hysteresis_ratio", "must be within 0.05..=0.9"));
        }
        let seg = self.package.segment_duration;
        if seg < Duration::from_millis(500) || seg > Duration::from_secs(10) {
            return Err(invalid("package.segment_duration", "must be within 500ms..=10s"));
        }
        let update = self.package.manifest_update_period;
        if update < Duration::from_millis(100) || update > seg * 10 {
            return Err(invalid("package.manifest_update_period", "must be within 100ms and ten segment durations"));
        }
        if self.http.request_timeout < self.tier.request_timeout {
            // A tier's handler waits up to tier.request_timeout; cutting it short would turn
            // its 502 / 504 into the edge's 503.
            return Err(invalid("http.request_timeout", "must be at least tier.request_timeout"));
        }
        if self.tier.negative_ttl >= seg {
            // A remembered 404 must not hide a stream that starts for a whole segment.
            return Err(invalid("tier.negative_ttl", "must be shorter than package.segment_duration"));
        }
        if self.package.number_form_delay > seg * 10 {
            return Err(invalid("package.number_form_delay", "must be at most ten segment durations"));
        }
        if self.package.max_clock_drift < seg * 2 {
            return Err(invalid("package.max_clock_drift", "must be at least two segment durations"));
        }
        if self.package.dvr_window < seg * 3 {
            return Err(invalid("package.dvr_window", "must hold at least three segments"));
        }
        let fragment = self.package.max_fragment_bytes;
        if !(1 << 20..=1 << 30).contains(&fragment) {
            return Err(invalid("package.max_fragment_bytes", "must be within 1 MiB and 1 GiB"));
        }
        let needed = self.package.nominal_window_bytes(&self.transcode).max(4 * fragment as u64);
        if (self.package.max_stream_bytes as f64) < needed as f64 * STREAM_BYTES_HEADROOM {
            return Err(invalid(
                "package.max_stream_bytes",
                format!(
                    "must be at least {} bytes: {STREAM_BYTES_HEADROOM} times the larger of the whole ladder's DVR window ({} bytes at the rungs' and audio's bitrates) and four max_fragment_bytes",
                    (needed as f64 * STREAM_BYTES_HEADROOM).ceil() as u64,
                    self.package.nominal_window_bytes(&self.transcode),
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn example_config_in_deploy_matches_the_struct() {
        for file in ["deploy/rackcast.toml", "deploy/federation.toml"] {
            let mut config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
            if file.contains("federation") {
                config.cluster.node_id = "edge-eu-1".into();
            }
            config.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn federated_nodes_need_a_relay_secret_and_config_output_hides_secrets() {
        let mut config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/federation.toml")).unwrap();
        config.cluster.node_id = "live-1".into();
        config.validate().unwrap();
        config.cluster.relay_secret.clear();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("cluster.relay_secret: a federated node needs a relay secret"), "{err}");

        let mut config = Config::default();
        config.cluster.relay_secret = "the-relay-secret-value".into();
        config.ingest.keys.insert("studio-key-secret".into(), "studio".into());
        let shown = toml::to_string(&config.redacted()).unwrap();
        assert!(!shown.contains("the-relay-secret-value") && !shown.contains("studio-key-secret"), "{shown}");
        assert!(shown.contains("studio"), "{shown}");
    }

    #[test]
    fn errors_name_the_key() {
        let mut config = Config::default();
        config.transcode.rungs[1].height = 721;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("transcode.rungs[1].height"), "{err}");

        let mut config = Config::default();
        config.http.request_timeout = config.tier.request_timeout / 2;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("http.request_timeout"), "{err}");

        let mut config = Config::default();
        config.http.idle_timeout = Duration::ZERO;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("http.idle_timeout"), "{err}");

        let mut config = Config::default();
        config.package.dvr_window = Duration::from_secs(120);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("package.max_stream_bytes: must be at least 227880000 bytes"), "{err}");
        config.package.max_stream_bytes = 256 << 20;
        config.validate().unwrap();
        config.package.max_fragment_bytes = 100;
        assert!(config.validate().unwrap_err().to_string().starts_with("package.max_fragment_bytes"));

        let err = toml::from_str::<Config>("[ingest]\nlisen = \"1.2.3.4:1\"").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }
}
