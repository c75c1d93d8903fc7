//! Typed appliance configuration. Every field has a documented, named default, so an
//! appliance with no config file runs one node with every role and the software encoder.
//! Each section's type, defaults, documentation and `validate()` live in the module that
//! owns it (`cluster/config.rs`, `ingest/config.rs`, `http/config.rs`, `transcode/config.rs`,
//! `ladder/config.rs`, `package/config.rs`, `tier`, `auth/config.rs`); this file assembles
//! them, reads the file, and at start-up runs each section's checks and then the few that
//! span sections ([`Config::validate`]). Every error names the offending key
//! (`crate::section::InvalidKey`). Only the wiring (app.rs, main.rs) and the admin API,
//! which serves the whole effective config, import this file. deploy/rackcast.toml mirrors
//! the sections.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::auth::config::AuthConfig;
use crate::cluster::config::ClusterConfig;
use crate::http::config::HttpConfig;
use crate::ingest::config::IngestConfig;
use crate::ladder::config::LadderConfig;
use crate::package::config::{PackageConfig, STREAM_BYTES_HEADROOM};
use crate::section::InvalidKey;
use crate::tier::TierConfig;
use crate::transcode::config::TranscodeConfig;

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
    #[error(transparent)]
    Invalid(#[from] InvalidKey),
}

/// The first line of a secret file (trimmed), relative to the config file at `config` so
/// that a config and its secrets can move together.
fn read_secret(config: &Path, file: &Path) -> Result<String, ConfigError> {
    let file = config.parent().unwrap_or(Path::new(".")).join(file);
    let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read { path: file.display().to_string(), source })?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

impl Config {
    /// Reads a TOML file. Call `validate()` once command-line overrides are applied.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let mut config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: shown, source: Box::new(source) })?;
        if let Some(file) = &config.cluster.relay_secret_file {
            config.cluster.relay_secret = read_secret(path, file)?;
        }
        if let Some(file) = &config.auth.publish_token_secret_file {
            if !config.auth.publish_token_secret.is_empty() {
                return Err(InvalidKey::new("auth", "publish_token_secret_file", "set either publish_token_secret or publish_token_secret_file, not both").into());
            }
            config.auth.publish_token_secret = read_secret(path, file)?;
            if config.auth.publish_token_secret.is_empty() {
                return Err(InvalidKey::new("auth", "publish_token_secret_file", format!("the first line of {} is empty", file.display())).into());
            }
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

    /// Each section's own checks, then the checks that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tier.validate()?;
        self.auth.validate()?;
        self.http.validate()?;
        self.cluster.validate()?;
        self.ingest.validate()?;
        self.transcode.validate()?;
        self.ladder.validate()?;
        self.package.validate()?;
        Ok(self.validate_across_sections()?)
    }

    /// The checks no one section can make, each relating a key to another section's.
    fn validate_across_sections(&self) -> Result<(), InvalidKey> {
        // http x tier: a tier's handler waits up to tier.request_timeout; cutting it short
        // would turn its 502 / 504 into the edge's 503.
        if self.http.request_timeout < self.tier.request_timeout {
            return Err(InvalidKey::new("http", "request_timeout", "must be at least tier.request_timeout"));
        }
        // tier x package: a remembered 404 must not hide a stream that starts for a whole
        // segment.
        if self.tier.negative_ttl >= self.package.segment_duration {
            return Err(InvalidKey::new("tier", "negative_ttl", "must be shorter than package.segment_duration"));
        }
        // package x transcode: the byte cap must hold the whole ladder's DVR window at the
        // rungs' and the audio's bitrates, so that it never shortens the window of a stream
        // that behaves.
        let package = &self.package;
        let window = package.nominal_window_bytes(self.transcode.nominal_bits_per_second());
        let needed = window.max(4 * package.max_fragment_bytes as u64);
        if (package.max_stream_bytes as f64) < needed as f64 * STREAM_BYTES_HEADROOM {
            return Err(InvalidKey::new(
                "package",
                "max_stream_bytes",
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
    use std::time::Duration;

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
    fn secret_files_give_their_first_line_and_the_token_secret_is_set_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "publish-token-secret-0123\nignored\n").unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let load = |text: &str| {
            let path = dir.path().join("rackcast.toml");
            std::fs::write(&path, text).unwrap();
            Config::load(&path)
        };
        let config = load("[auth]\npublish_token_secret_file = \"token\"\n").unwrap();
        assert_eq!(config.auth.publish_token_secret, "publish-token-secret-0123");
        config.validate().unwrap();
        let shown = toml::to_string(&config.redacted()).unwrap();
        assert!(!shown.contains("publish-token-secret-0123"), "{shown}");

        let both = "[auth]\npublish_token_secret = \"inline-secret-0123456\"\npublish_token_secret_file = \"token\"\n";
        let err = load(both).unwrap_err().to_string();
        assert!(err.starts_with("auth.publish_token_secret_file: set either"), "{err}");
        let err = load("[auth]\npublish_token_secret_file = \"empty\"\n").unwrap_err().to_string();
        assert!(err.starts_with("auth.publish_token_secret_file: the first line"), "{err}");
        let err = load("[auth]\npublish_token_secret_file = \"missing\"\n").unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
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
        config.tier.chunk_timeout = Duration::ZERO;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("tier.chunk_timeout"), "{err}");

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
