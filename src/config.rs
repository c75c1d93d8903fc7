//! Typed appliance configuration. Every field has a documented, named default, so an
//! appliance with no config file runs one node with every role and the software encoder.
//! Each section's type, defaults and documentation live in the module that owns it
//! (`cluster/config.rs`, `ingest/config.rs`, `http/config.rs`, `transcode/config.rs`,
//! `ladder/config.rs`, `package/config.rs`, `tier`, `auth/config.rs`); this file assembles
//! them, reads the file and runs `validate()` at start-up, which names the offending key.
//! deploy/rackcast.toml mirrors the sections.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::cluster::config::{ClusterConfig, Role, MIN_RELAY_SECRET_LEN};
use crate::http::HttpConfig;
use crate::ingest::IngestConfig;
use crate::ladder::config::LadderConfig;
use crate::package::config::{PackageConfig, STREAM_BYTES_HEADROOM};
use crate::tier::TierConfig;
use crate::transcode::config::{TranscodeConfig, X264_PRESETS};

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
    pub tier: TierConfig,
    /// The data directory and the limits of publish authentication (src/auth/config.rs).
    pub auth: AuthConfig,
}

/// What `rackcast config` prints in place of a secret.
pub const REDACTED: &str = "<redacted>";

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
        let window = self.package.nominal_window_bytes(self.transcode.nominal_bits_per_second());
        let needed = window.max(4 * fragment as u64);
        if (self.package.max_stream_bytes as f64) < needed as f64 * STREAM_BYTES_HEADROOM {
            return Err(invalid(
                "package.max_stream_bytes",
                format!(
                    "must be at least {} bytes: {STREAM_BYTES_HEADROOM} times the larger of the whole ladder's DVR window ({} bytes at the rungs' and audio's bitrates) and four max_fragment_bytes",
                    (needed as f64 * STREAM_BYTES_HEADROOM).ceil() as u64,
                    window,
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
