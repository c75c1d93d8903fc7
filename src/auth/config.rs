//! `[auth]`: where the appliance keeps its state (stream keys) and how hard publish
//! attempts are limited while keys are required.

use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Publish attempts one address may make per minute while stream keys are required, and
/// how many of them may come at once.
pub const DEFAULT_PUBLISH_ATTEMPTS_PER_MINUTE: u32 = 60;
pub const DEFAULT_PUBLISH_ATTEMPT_BURST: u32 = 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The appliance's own state (the stream key store, `rackcast.sqlite3`). Defaults to
    /// systemd's `$STATE_DIRECTORY`, else `$XDG_DATA_HOME/rackcast`, else
    /// `~/.local/share/rackcast`; `rackcast run --data-dir` overrides it.
    pub data_dir: PathBuf,
    pub publish_attempts_per_minute: u32,
    pub publish_attempt_burst: u32,
    /// Secret for signed, expiring publish keys (`rackcast token STREAM`), at least 16
    /// characters; empty: no publish tokens. Setting it requires a key or token for
    /// every publish.
    pub publish_token_secret: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            publish_attempts_per_minute: DEFAULT_PUBLISH_ATTEMPTS_PER_MINUTE,
            publish_attempt_burst: DEFAULT_PUBLISH_ATTEMPT_BURST,
            publish_token_secret: String::new(),
        }
    }
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, reason: &str| Err((key.to_owned(), reason.to_owned()));
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must name a directory");
        }
        if !self.publish_token_secret.is_empty() && self.publish_token_secret.chars().count() < 16 {
            return invalid("publish_token_secret", "must be at least 16 characters (or empty: no publish tokens)");
        }
        if NonZeroU32::new(self.publish_attempts_per_minute).is_none() || NonZeroU32::new(self.publish_attempt_burst).is_none() {
            return invalid("publish_attempts_per_minute", "the rate and the burst must be at least 1");
        }
        Ok(())
    }
}

fn default_data_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("STATE_DIRECTORY")
        .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("rackcast")))
        .or_else(|| var("HOME").map(|h| h.join(".local/share/rackcast")))
        .unwrap_or_else(|| PathBuf::from("rackcast-data"))
}
