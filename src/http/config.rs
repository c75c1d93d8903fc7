//! The HTTP edge's settings: where the viewer-facing server listens and the bounds every
//! connection lives within (connection cap, header-read, request and idle time-outs, header
//! size), with their defaults and checks. Owned here so the server module owns its config;
//! src/config.rs only composes it as `[http]`. The limits are enforced by `server.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::section::InvalidKey;

/// The section's table in the config file.
const SECTION: &str = "http";

pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";
/// Open connections beyond this are closed at accept. 10,000 viewers per appliance is well
/// above what one node's uplink serves at DASH bitrates, and each connection costs a file
/// descriptor (the systemd unit sets `LimitNOFILE` far higher) and ~10 KiB of buffers.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// A request head (request line and headers) must arrive within this time of its first
/// byte. Real clients send it in one packet; 5 s leaves room for a bad mobile link and
/// stops a slowloris client, which trickles bytes to keep a connection slot forever.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A handler must answer within this time. Live handlers answer from memory; a tier's
/// handler waits at most `tier.request_timeout` (2 s) for its upstream. 30 s is a backstop
/// for a bug, not a latency target.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with no request in progress and no byte moved for this long is closed.
/// Players poll the MPD every update period (1 s) and fetch a 1 s segment per rendition
/// every second, so an active player is never idle for more than a couple of seconds; a
/// connection silent for 15 s belongs to a paused or departed player and only holds a slot.
/// Tier clients drop pooled connections after 10 s (`tier::UPSTREAM_POOL_IDLE`), below
/// this, so a tier never sends a request on a connection this server is closing.
/// This also closes a connection whose client stopped reading a response.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest request head (request line and headers). Viewer requests are a short path and a
/// few headers; browsers with cookies stay well under 8 KiB (nginx's default buffer).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// hyper's minimum read buffer; the header limit cannot go below it.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// The viewer-facing HTTP server (`[http]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the viewer-facing HTTP server binds.
    pub listen: SocketAddr,
    /// Most connections open at once; the next one is closed at accept, logged (at most one
    /// warning a second) and counted (`rackcast_http_edge_*` in `/metrics`).
    pub max_connections: usize,
    /// Time from the first byte of a request head to its end; past it the connection is
    /// closed (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a handler may take to produce a response; past it the client gets 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A connection with no request in progress and no byte sent or received for this
    /// long is closed: idle keep-alive connections, connections that never send a request,
    /// and clients that stopped reading their response.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest request head in bytes; a longer one is answered 431 and the connection closed.
    pub max_header_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_HTTP_LISTEN.parse().expect("valid default"),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

impl HttpConfig {
    /// Checks every field; the error names the key (`http.{key}`).
    pub fn validate(&self) -> Result<(), InvalidKey> {
        let invalid = |key: &str, reason: &str| Err(InvalidKey::new(SECTION, key, reason));
        if !(1..=1_000_000).contains(&self.max_connections) {
            return invalid("max_connections", "must be within 1..=1000000");
        }
        for (key, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("request_timeout", self.request_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value < Duration::from_millis(100) || value > Duration::from_secs(3600) {
                return invalid(key, "must be within 100ms..=1h");
            }
        }
        if !(MIN_HEADER_BYTES..=1024 * 1024).contains(&self.max_header_bytes) {
            return invalid("max_header_bytes", "must be within 8192..=1048576");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        HttpConfig::default().validate().unwrap();
        let config = HttpConfig { header_read_timeout: Duration::ZERO, ..HttpConfig::default() };
        assert_eq!(config.validate().unwrap_err().to_string(), "http.header_read_timeout: must be within 100ms..=1h");
        let config = HttpConfig { max_connections: 0, ..HttpConfig::default() };
        assert_eq!(config.validate().unwrap_err().key, "max_connections");
        let config = HttpConfig { max_header_bytes: 100, ..HttpConfig::default() };
        assert_eq!(config.validate().unwrap_err().key, "max_header_bytes");
    }
}
