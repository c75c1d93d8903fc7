//! Ingest settings: where broadcasters connect, the publish rules and the limits that keep
//! the RTMP edge bounded (connections, time-outs, message sizes).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::media::StreamId;
use crate::section::InvalidKey;

/// The section's table in the config file.
const SECTION: &str = "ingest";

pub const DEFAULT_RTMP_LISTEN: &str = "0.0.0.0:1935";
pub const DEFAULT_RTMP_APP: &str = "live";
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Encoders publish within a second of connecting; ten leave room for a slow link.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// At about 20 KiB per idle connection, 1,000 connections stay within 20 MiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Enough for a studio's encoders behind one NAT address; federation peers are exempt.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 32;
/// A 4K keyframe at 50 Mbit/s is about 3 MB; RTMP's own ceiling is 16 MiB.
pub const DEFAULT_MAX_MEDIA_MESSAGE: u32 = 8 * 1024 * 1024;
/// An AAC frame is at most 6144 bits per channel (6 KiB for 7.1); an Opus packet at most
/// 120 ms at 510 kbit/s (under 8 KiB). Four times the larger leaves room for odd encoders.
pub const DEFAULT_MAX_AUDIO_MESSAGE: u32 = 32 * 1024;
/// Smallest `max_audio_message` accepted: a 7.1 AAC frame must fit.
pub const MIN_AUDIO_MESSAGE: u32 = 8 * 1024;
/// A broadcaster that takes none of our replies (acknowledgements, status) for this long
/// is gone or hostile (the relay's write limit is the same).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A live encoder sends media many times a second; three silent seconds mean its link is
/// gone, long before `idle_timeout` would say so.
pub const DEFAULT_TAKEOVER_AFTER: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Address the RTMP listener binds.
    pub listen: SocketAddr,
    /// RTMP application name broadcasters publish to (`rtmp://host/{app}/{key}`).
    pub app: String,
    /// A connection must finish the RTMP handshake within this time.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long (before or during a publish) is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection that has not started publishing this long after it was accepted is
    /// closed, whatever it sends meanwhile.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// RTMP connections open at once, publishing or not; more are refused at accept.
    pub max_connections: usize,
    /// RTMP connections open at once from one remote address (federation peers exempt).
    pub max_connections_per_address: usize,
    /// Largest audio or video message (bytes) a publishing connection may announce; before
    /// it publishes, and for commands at any time, the limit is 64 KiB.
    pub max_media_message: u32,
    /// Largest audio message (bytes) a publishing connection may send; no AAC or Opus frame
    /// comes near the default. A larger one closes the connection (logged, counted as
    /// `audio_too_large`).
    pub max_audio_message: u32,
    /// A write to a broadcaster's socket that does not complete within this time closes
    /// the connection (counted as `write_timeouts`).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// A new publish for a stream whose publisher has sent no media for this long takes
    /// the stream over at once: the old connection is closed, the new one starts a new
    /// Period (a phone that lost its link reconnects without waiting for `idle_timeout`).
    /// A publish for a stream whose publisher sent media more recently is refused. Zero:
    /// never take over.
    #[serde(with = "humantime_serde")]
    pub takeover_after: Duration,
    /// Stream keys a broadcaster may publish with, each mapped to the public stream name
    /// viewers use (keys may hold any character but '?'; the query after it is not part of
    /// the key). Empty: any key is accepted and is itself the stream name, mapped as
    /// ingest/key.rs says (`room/cam` publishes `room~cam`).
    pub keys: BTreeMap<String, String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_RTMP_LISTEN.parse().expect("valid default"),
            app: DEFAULT_RTMP_APP.to_owned(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_media_message: DEFAULT_MAX_MEDIA_MESSAGE,
            max_audio_message: DEFAULT_MAX_AUDIO_MESSAGE,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            takeover_after: DEFAULT_TAKEOVER_AFTER,
            keys: BTreeMap::new(),
        }
    }
}

impl IngestConfig {
    /// Checks every field; the error names the key (`ingest.{key}`).
    pub fn validate(&self) -> Result<(), InvalidKey> {
        let invalid = |key: &str, reason: &str| Err(InvalidKey::new(SECTION, key, reason));
        if self.app.is_empty() || self.app.contains('/') {
            return invalid("app", "must be a non-empty name without '/'");
        }
        for (key, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("publish_timeout", self.publish_timeout),
            ("write_timeout", self.write_timeout),
        ] {
            if value.is_zero() {
                return invalid(key, "must be above zero");
            }
        }
        if self.max_connections == 0 || self.max_connections_per_address == 0 {
            return invalid("max_connections", "max_connections and max_connections_per_address must be at least 1");
        }
        if !(64 * 1024..=0xFF_FFFF).contains(&self.max_media_message) {
            return invalid("max_media_message", "must be within 64 KiB and 16 MiB - 1");
        }
        if !(MIN_AUDIO_MESSAGE..=self.max_media_message).contains(&self.max_audio_message) {
            return invalid("max_audio_message", "must be within 8 KiB and max_media_message");
        }
        // The key itself is a secret: the error names only the public stream name.
        for (key, stream) in &self.keys {
            StreamId::parse(stream).map_err(|e| InvalidKey::new(SECTION, "keys", format!("public name {stream:?}: {e}")))?;
            if key.is_empty() || key.contains('?') {
                return invalid("keys", &format!("the key of {stream:?} must be non-empty and hold no '?' (a query is never part of a key)"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takeover_after_defaults_to_three_seconds_and_reads_humantime() {
        assert_eq!(IngestConfig::default().takeover_after, Duration::from_secs(3));
        let config: IngestConfig = toml::from_str("takeover_after = \"1s 500ms\"").unwrap();
        assert_eq!(config.takeover_after, Duration::from_millis(1500));
        let off: IngestConfig = toml::from_str("takeover_after = \"0s\"").unwrap();
        assert!(off.takeover_after.is_zero());
        off.validate().unwrap();
    }

    #[test]
    fn audio_cap_defaults_below_any_padding_and_is_checked() {
        let config = IngestConfig::default();
        assert_eq!(config.max_audio_message, 32 * 1024);
        assert_eq!(config.write_timeout, Duration::from_secs(5));
        let small: IngestConfig = toml::from_str("max_audio_message = 4096").unwrap();
        assert_eq!(small.validate().unwrap_err().key, "max_audio_message");
        let zero: IngestConfig = toml::from_str("write_timeout = \"0s\"").unwrap();
        assert_eq!(zero.validate().unwrap_err().key, "write_timeout");
    }

    #[test]
    fn configured_keys_take_odd_characters_but_no_query_and_errors_hide_them() {
        let mut config: IngestConfig =
            toml::from_str("[keys]\n\"live_123_abc.DEF/room@x=y+z~\" = \"studio.1\"\n\"room/cam\" = \"room~cam\"\n").unwrap();
        config.validate().unwrap();
        config.keys.insert("s3cr3t?token=1".into(), "other".into());
        let InvalidKey { key, reason, .. } = config.validate().unwrap_err();
        assert_eq!(key, "keys");
        assert!(reason.contains("\"other\"") && !reason.contains("s3cr3t"), "{reason}");
        config.keys.clear();
        config.keys.insert("s3cr3t".into(), "../up".into());
        let reason = config.validate().unwrap_err().reason;
        assert!(!reason.contains("s3cr3t"), "{reason}");
    }
}
