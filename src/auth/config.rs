//! `[auth]`: where the appliance keeps its state (stream keys, admin users, sessions, API
//! tokens, the audit log), how hard publish and login attempts are limited, and how long
//! an admin session lasts; with their defaults and checks.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::section::InvalidKey;

/// The section's table in the config file.
const SECTION: &str = "auth";

/// Publish attempts one address may make per minute while stream keys are required, and
/// how many of them may come at once.
pub const DEFAULT_PUBLISH_ATTEMPTS_PER_MINUTE: u32 = 60;
pub const DEFAULT_PUBLISH_ATTEMPT_BURST: u32 = 20;
/// Console and API login attempts one address may make per minute, and at once.
pub const DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE: u32 = 10;
pub const DEFAULT_LOGIN_ATTEMPT_BURST: u32 = 5;
/// Failed logins per minute from all addresses together, and how many of them at once,
/// before every login is refused for a while (see `auth/login.rs`).
pub const DEFAULT_FAILED_LOGINS_PER_MINUTE: u32 = 30;
pub const DEFAULT_FAILED_LOGIN_BURST: u32 = 10;
/// The publish webhook's bound, and how long its answers are reused.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_WEBHOOK_CACHE: Duration = Duration::from_secs(10);
/// How long an admin session lasts after login.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

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
    /// File holding the publish token secret (its first line), instead of
    /// `publish_token_secret` (set one of the two); relative to the config file. Never
    /// printed: `rackcast config` shows the secret redacted.
    pub publish_token_secret_file: Option<PathBuf>,
    pub login_attempts_per_minute: u32,
    pub login_attempt_burst: u32,
    /// Failed logins per minute from all addresses together (burst `failed_login_burst`);
    /// beyond it every login is refused (429) until the budget has room again.
    pub failed_logins_per_minute: u32,
    pub failed_login_burst: u32,
    /// Password checks (argon2id, 19 MiB each) running at once; more logins wait up to a
    /// second for a slot, then get 503. 0: one per CPU core.
    pub login_hash_concurrency: u32,
    /// How long a console session lasts after login (then the admin logs in again).
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// `http://` URL asked (JSON POST) whether each accepted publish may go live; empty:
    /// none. See `auth/webhook.rs`.
    pub publish_webhook: String,
    #[serde(with = "humantime_serde")]
    pub publish_webhook_timeout: Duration,
    /// How long an answer is reused for the same stream and address (0: never).
    #[serde(with = "humantime_serde")]
    pub publish_webhook_cache: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            publish_attempts_per_minute: DEFAULT_PUBLISH_ATTEMPTS_PER_MINUTE,
            publish_attempt_burst: DEFAULT_PUBLISH_ATTEMPT_BURST,
            publish_token_secret: String::new(),
            publish_token_secret_file: None,
            login_attempts_per_minute: DEFAULT_LOGIN_ATTEMPTS_PER_MINUTE,
            login_attempt_burst: DEFAULT_LOGIN_ATTEMPT_BURST,
            failed_logins_per_minute: DEFAULT_FAILED_LOGINS_PER_MINUTE,
            failed_login_burst: DEFAULT_FAILED_LOGIN_BURST,
            login_hash_concurrency: 0,
            session_lifetime: DEFAULT_SESSION_LIFETIME,
            publish_webhook: String::new(),
            publish_webhook_timeout: DEFAULT_WEBHOOK_TIMEOUT,
            publish_webhook_cache: DEFAULT_WEBHOOK_CACHE,
        }
    }
}

impl AuthConfig {
    /// Checks every field; the error names the key (`auth.{key}`).
    pub fn validate(&self) -> Result<(), InvalidKey> {
        let invalid = |key: &str, reason: &str| Err(InvalidKey::new(SECTION, key, reason));
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must name a directory");
        }
        if !self.publish_token_secret.is_empty() && self.publish_token_secret.chars().count() < 16 {
            return invalid("publish_token_secret", "must be at least 16 characters (or empty: no publish tokens)");
        }
        if NonZeroU32::new(self.publish_attempts_per_minute).is_none() || NonZeroU32::new(self.publish_attempt_burst).is_none() {
            return invalid("publish_attempts_per_minute", "the rate and the burst must be at least 1");
        }
        if NonZeroU32::new(self.login_attempts_per_minute).is_none() || NonZeroU32::new(self.login_attempt_burst).is_none() {
            return invalid("login_attempts_per_minute", "the rate and the burst must be at least 1");
        }
        if NonZeroU32::new(self.failed_logins_per_minute).is_none() || NonZeroU32::new(self.failed_login_burst).is_none() {
            return invalid("failed_logins_per_minute", "the rate and the burst must be at least 1");
        }
        if self.login_hash_concurrency > super::login::MAX_HASH_CONCURRENCY {
            return invalid("login_hash_concurrency", "must be at most 64 (each check takes 19 MiB), or 0 for one per core");
        }
        if !self.publish_webhook.is_empty() && !self.publish_webhook.starts_with("http://") {
            return invalid("publish_webhook", "must be an http:// URL (for TLS, put a local proxy in front) or empty");
        }
        if self.publish_webhook_timeout.is_zero() || self.publish_webhook_timeout > Duration::from_secs(30) {
            return invalid("publish_webhook_timeout", "must be between 1ms and 30s");
        }
        if self.session_lifetime < Duration::from_secs(60) {
            return invalid("session_lifetime", "must be at least 1m");
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
