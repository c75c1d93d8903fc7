//! The RTMP edge's admission layer, in front of the protocol code: a global connection
//! cap, a per-remote-address cap (federation peers exempt), and the counters of every
//! refusal and guard verdict. A refusal closes the socket before any byte is read and is
//! logged at most once a second per kind, so a flood cannot flood the log too.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::warn_limiter::WarnLimiter;

/// Counters of the RTMP edge, served as JSON by the node's metrics routes.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub refused_global: AtomicU64,
    pub refused_per_address: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub publish_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    /// Connections closed by the chunk guard (oversized or malformed messages, AMF bombs).
    pub guard_rejections: AtomicU64,
    pub publishes_refused: AtomicU64,
    pub relay_refused: AtomicU64,
    /// Publishers closed because a new publish took their silent stream over.
    pub takeovers: AtomicU64,
    /// Connections closed for an audio message over `ingest.max_audio_message` (also
    /// counted in `guard_rejections`).
    pub audio_too_large: AtomicU64,
    /// Connections closed because a write to the broadcaster did not complete within
    /// `ingest.write_timeout`.
    pub write_timeouts: AtomicU64,
    /// Publishes the broadcaster ended itself (closeStream / deleteStream).
    pub unpublishes: AtomicU64,
    refusal_warnings: WarnLimiter,
}

#[derive(Debug, Serialize)]
pub struct IngestStatsSnapshot {
    pub accepted: u64,
    pub open: u64,
    pub refused_global: u64,
    pub refused_per_address: u64,
    pub handshake_timeouts: u64,
    pub publish_timeouts: u64,
    pub idle_timeouts: u64,
    pub guard_rejections: u64,
    pub publishes_refused: u64,
    pub relay_refused: u64,
    pub takeovers: u64,
    pub audio_too_large: u64,
    pub write_timeouts: u64,
    pub unpublishes: u64,
}

impl IngestStats {
    pub fn snapshot(&self) -> IngestStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IngestStatsSnapshot {
            accepted: get(&self.accepted),
            open: get(&self.open),
            refused_global: get(&self.refused_global),
            refused_per_address: get(&self.refused_per_address),
            handshake_timeouts: get(&self.handshake_timeouts),
            publish_timeouts: get(&self.publish_timeouts),
            idle_timeouts: get(&self.idle_timeouts),
            guard_rejections: get(&self.guard_rejections),
            publishes_refused: get(&self.publishes_refused),
            relay_refused: get(&self.relay_refused),
            takeovers: get(&self.takeovers),
            audio_too_large: get(&self.audio_too_large),
            write_timeouts: get(&self.write_timeouts),
            unpublishes: get(&self.unpublishes),
        }
    }
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
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
    exempt: HashSet<IpAddr>,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    stats: Arc<IngestStats>,
}

/// Held by an admitted connection; dropping it frees its place.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    address: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max: usize, max_per_address: usize, exempt: HashSet<IpAddr>, stats: Arc<IngestStats>) -> Arc<Self> {
        Arc::new(Self { max, max_per_address, exempt, open: Mutex::new((0, HashMap::new())), stats })
    }

    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let refusal = {
            let mut open = self.open.lock();
            let (total, per_address) = &mut *open;
            let mine = per_address.get(&address).copied().unwrap_or(0);
            if *total >= self.max {
                Some(Refusal::Global(*total))
            } else if mine >= self.max_per_address && !self.exempt.contains(&address) {
                Some(Refusal::PerAddress(mine))
            } else {
                *total += 1;
                per_address.insert(address, mine + 1);
                None
            }
        };
        match refusal {
            None => {
                inc(&self.stats.accepted);
                self.stats.open.fetch_add(1, Ordering::Relaxed);
                Ok(ConnectionPermit { limits: Arc::clone(self), address })
            }
            Some(refusal) => {
                inc(match refusal {
                    Refusal::Global(_) => &self.stats.refused_global,
                    Refusal::PerAddress(_) => &self.stats.refused_per_address,
                });
                if let Some(held_back) = self.stats.refusal_warnings.allow() {
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
        self.limits.exempt.contains(&self.address)
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
        self.limits.stats.open.fetch_sub(1, Ordering::Relaxed);
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
    use super::*;

    #[test]
    fn caps_count_and_release() {
        let stats = Arc::new(IngestStats::default());
        let peer: IpAddr = "127.0.0.2".parse().unwrap();
        let other: IpAddr = "127.0.0.3".parse().unwrap();
        let relay: IpAddr = "127.0.0.9".parse().unwrap();
        let limits = ConnectionLimits::new(4, 2, HashSet::from([relay]), Arc::clone(&stats));
        let a = limits.admit(peer).unwrap();
        let _b = limits.admit(peer).unwrap();
        assert_eq!(limits.admit(peer).err(), Some(Refusal::PerAddress(2)));
        let _c = limits.admit(relay).unwrap();
        let _d = limits.admit(relay).unwrap();
        assert_eq!(limits.admit(other).err(), Some(Refusal::Global(4)));
        drop(a);
        let _e = limits.admit(other).unwrap();
        let s = stats.snapshot();
        assert_eq!((s.accepted, s.open, s.refused_global, s.refused_per_address), (5, 4, 1, 1));
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
