//! The RTMP edge's admission layer, in front of the protocol code: a global connection
//! cap, a per-remote-address cap (federation peers exempt), and the counters of every
//! refusal and guard verdict. A refusal closes the socket before any byte is read and is
//! logged at most once a second per kind, so a flood cannot flood the log too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::MemberAddresses;
use crate::metrics::common::register_counters;
use crate::warn_limiter::WarnLimiter;

/// The RTMP edge's metrics (`rackcast_ingest_*`), registered once in the node's registry
/// ([`IngestMetrics::register`]) and recorded where each event happens.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub accepted: Counter,
    /// Connections open now.
    pub open: Gauge,
    pub refused_global: Counter,
    pub refused_per_address: Counter,
    pub handshake_timeouts: Counter,
    pub publish_timeouts: Counter,
    pub idle_timeouts: Counter,
    /// Connections closed by the chunk guard (oversized or malformed messages, AMF bombs).
    pub guard_rejections: Counter,
    pub publishes_refused: Counter,
    pub relay_refused: Counter,
    /// Publishers closed because a new publish took their silent stream over.
    pub takeovers: Counter,
    /// Connections closed for an audio message over `ingest.max_audio_message` (also
    /// counted in `guard_rejections`).
    pub audio_too_large: Counter,
    /// Connections closed because a write to the broadcaster did not complete within
    /// `ingest.write_timeout`.
    pub write_timeouts: Counter,
    /// Publishes the broadcaster ended itself (closeStream / deleteStream).
    pub unpublishes: Counter,
    refusal_warnings: WarnLimiter,
}

impl IngestMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("ingest");
        register_counters(
            registry,
            &[
                ("accepted", "RTMP connections admitted", &self.accepted),
                ("refused_global", "RTMP connections refused because ingest.max_connections were open", &self.refused_global),
                ("refused_per_address", "RTMP connections refused by ingest.max_connections_per_address", &self.refused_per_address),
                ("handshake_timeouts", "RTMP connections closed because the handshake did not complete in time", &self.handshake_timeouts),
                ("publish_timeouts", "RTMP connections closed because no publish came in time", &self.publish_timeouts),
                ("idle_timeouts", "RTMP connections closed after ingest.idle_timeout without media", &self.idle_timeouts),
                ("guard_rejections", "RTMP connections closed by the chunk guard (oversized or malformed messages)", &self.guard_rejections),
                ("publishes_refused", "Publishes refused (key, application or stream name)", &self.publishes_refused),
                ("relay_refused", "Relayed publishes refused (not from a federation node, or a bad relay token)", &self.relay_refused),
                ("takeovers", "Publishers closed because a new publish took their silent stream over", &self.takeovers),
                ("audio_too_large", "RTMP connections closed for an audio message over ingest.max_audio_message", &self.audio_too_large),
                ("write_timeouts", "RTMP connections closed because a write to the broadcaster timed out (ingest.write_timeout)", &self.write_timeouts),
                ("unpublishes", "Publishes the broadcaster ended itself", &self.unpublishes),
            ],
        );
        registry.register("open", "RTMP connections open", self.open.clone());
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} RTMP connections are open (ingest.max_connections)")]
    Global(usize),
    #[error("{0} RTMP connections are open from this address (ingest.max_connections_per_address)")]
    PerAddress(usize),
}

/// Counts open connections; see the module header.
pub struct ConnectionLimits {
    max: usize,
    max_per_address: usize,
    exempt: Arc<MemberAddresses>,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    metrics: Arc<IngestMetrics>,
}

/// Held by an admitted connection; dropping it frees its place.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    address: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max: usize, max_per_address: usize, exempt: Arc<MemberAddresses>, metrics: Arc<IngestMetrics>) -> Arc<Self> {
        Arc::new(Self { max, max_per_address, exempt, open: Mutex::new((0, HashMap::new())), metrics })
    }

    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let refusal = {
            let mut open = self.open.lock();
            let (total, per_address) = &mut *open;
            let mine = per_address.get(&address).copied().unwrap_or(0);
            if *total >= self.max {
                Some(Refusal::Global(*total))
            } else if mine >= self.max_per_address && !self.exempt.contains(address) {
                Some(Refusal::PerAddress(mine))
            } else {
                *total += 1;
                per_address.insert(address, mine + 1);
                None
            }
        };
        match refusal {
            None => {
                self.metrics.accepted.inc();
                self.metrics.open.inc();
                Ok(ConnectionPermit { limits: Arc::clone(self), address })
            }
            Some(refusal) => {
                match refusal {
                    Refusal::Global(_) => self.metrics.refused_global.inc(),
                    Refusal::PerAddress(_) => self.metrics.refused_per_address.inc(),
                };
                if let Some(held_back) = self.metrics.refusal_warnings.allow() {
                    tracing::warn!(peer = %address, held_back, "RTMP connection refused: {refusal} (at most one such line a second)");
                }
                Err(refusal)
            }
        }
    }
}

impl ConnectionPermit {
    /// Whether the connection comes from a federation node's address.
    pub fn from_federation_node(&self) -> bool {
        self.limits.exempt.contains(self.address)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        let (total, per_address) = &mut *open;
        *total -= 1;
        if let Some(n) = per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                per_address.remove(&self.address);
            }
        }
        self.limits.metrics.open.dec();
    }
}

/// A peer-supplied string as it may appear in a log line or error: at most 64 characters,
/// control characters escaped, with the full length when cut.
pub fn quote(peer_string: &str) -> String {
    const MAX: usize = 64;
    let shown: String = peer_string.chars().take(MAX).flat_map(char::escape_default).collect();
    if peer_string.chars().count() > MAX {
        format!("\"{shown}\"... ({} bytes)", peer_string.len())
    } else {
        format!("\"{shown}\"")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn caps_count_and_release() {
        let metrics = Arc::new(IngestMetrics::default());
        let peer: IpAddr = "127.0.0.2".parse().unwrap();
        let other: IpAddr = "127.0.0.3".parse().unwrap();
        let relay: IpAddr = "127.0.0.9".parse().unwrap();
        let limits = ConnectionLimits::new(4, 2, Arc::new(MemberAddresses::from(HashSet::from([relay]))), Arc::clone(&metrics));
        let a = limits.admit(peer).unwrap();
        let _b = limits.admit(peer).unwrap();
        assert_eq!(limits.admit(peer).err(), Some(Refusal::PerAddress(2)));
        let _c = limits.admit(relay).unwrap();
        let _d = limits.admit(relay).unwrap();
        assert_eq!(limits.admit(other).err(), Some(Refusal::Global(4)));
        drop(a);
        let _e = limits.admit(other).unwrap();
        let m = &metrics;
        assert_eq!((m.accepted.get(), m.open.get(), m.refused_global.get(), m.refused_per_address.get()), (5, 4, 1, 1));
    }

    #[test]
    fn quoted_peer_strings_are_cut_and_escaped() {
        assert_eq!(quote("live"), "\"live\"");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(60_000);
        let q = quote(&long);
        assert!(q.len() < 100 && q.ends_with("(60000 bytes)"), "{q}");
    }
}
