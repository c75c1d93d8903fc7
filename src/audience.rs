//! Who watches what through this node: per stream, the distinct viewers seen recently and
//! the bytes served. Fed by the viewer-facing handlers (live node and caching tier), read by
//! `/metrics` and the admin API; a module of its own so that http, tier and metrics all
//! use it without importing each other.
//!
//! A **viewer** is a distinct (client address, User-Agent) pair that fetched the stream's
//! manifest or a segment from this node within the last [`VIEWER_WINDOW`]. Behind a proxy
//! or NAT several people count as one; through a federation each edge counts the viewers
//! it serves and the live node counts the edges, so sum edges' figures, not the live node's.
//!
//! Bounded: at most [`MAX_STREAMS`] streams and [`MAX_VIEWERS_PER_STREAM`] viewers each
//! are tracked (past that, new ones are not counted, and the overflow is counted); a stream
//! nobody fetched for two windows is forgotten, so its series disappear.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::media::StreamId;

pub const VIEWER_WINDOW: Duration = Duration::from_secs(30);
pub const MAX_STREAMS: usize = 10_000;
pub const MAX_VIEWERS_PER_STREAM: usize = 100_000;
pub const VIEWER_HELP: &str = "Distinct (client address, User-Agent) pairs that fetched the stream from this node in the last 30 s";

#[derive(Debug)]
struct StreamAudience {
    /// Viewer key -> when last seen.
    viewers: HashMap<u64, Instant>,
    delivered_bytes: u64,
    last_seen: Instant,
}

/// One stream's figures at a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudienceFigures {
    pub viewers: usize,
    pub delivered_bytes: u64,
}

#[derive(Debug, Default)]
pub struct Audience {
    streams: Mutex<HashMap<StreamId, StreamAudience>>,
    /// Viewers or streams not tracked because a bound was reached.
    pub untracked: Counter,
}

impl Audience {
    /// Registers the overflow counter; the per-stream figures are read at each scrape
    /// ([`Audience::figures`]).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("audience_untracked", "Viewers or streams not counted because a tracking bound was reached", self.untracked.clone());
    }

    /// A viewer fetched `bytes` of `stream` (a manifest or a segment).
    pub fn served(&self, stream: &StreamId, client: Option<IpAddr>, user_agent: Option<&str>, bytes: u64) {
        self.served_at(stream, client, user_agent, bytes, Instant::now());
    }

    fn served_at(&self, stream: &StreamId, client: Option<IpAddr>, user_agent: Option<&str>, bytes: u64, now: Instant) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (client, user_agent).hash(&mut hasher);
        let key = hasher.finish();
        let mut streams = self.streams.lock();
        if !streams.contains_key(stream) && streams.len() >= MAX_STREAMS {
            self.untracked.inc();
            return;
        }
        let entry = streams
            .entry(stream.clone())
            .or_insert_with(|| StreamAudience { viewers: HashMap::new(), delivered_bytes: 0, last_seen: now });
        entry.last_seen = now;
        entry.delivered_bytes += bytes;
        if entry.viewers.len() >= MAX_VIEWERS_PER_STREAM && !entry.viewers.contains_key(&key) {
            entry.viewers.retain(|_, seen| now.duration_since(*seen) <= VIEWER_WINDOW);
            if entry.viewers.len() >= MAX_VIEWERS_PER_STREAM {
                self.untracked.inc();
                return;
            }
        }
        entry.viewers.insert(key, now);
    }

    /// Every tracked stream's figures; forgets viewers out of the window and streams
    /// nobody fetched for two windows.
    pub fn figures(&self) -> Vec<(StreamId, AudienceFigures)> {
        self.figures_at(Instant::now())
    }

    fn figures_at(&self, now: Instant) -> Vec<(StreamId, AudienceFigures)> {
        let mut streams = self.streams.lock();
        streams.retain(|_, s| now.duration_since(s.last_seen) <= VIEWER_WINDOW * 2);
        let mut out: Vec<_> = streams
            .iter_mut()
            .map(|(id, s)| {
                s.viewers.retain(|_, seen| now.duration_since(*seen) <= VIEWER_WINDOW);
                (id.clone(), AudienceFigures { viewers: s.viewers.len(), delivered_bytes: s.delivered_bytes })
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_are_distinct_clients_within_the_window_and_idle_streams_are_forgotten() {
        let audience = Audience::default();
        let cam = StreamId::parse("cam").unwrap();
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        audience.served_at(&cam, Some(a), Some("dash.js"), 100, t0);
        audience.served_at(&cam, Some(a), Some("dash.js"), 50, t0 + Duration::from_secs(1));
        audience.served_at(&cam, Some(a), Some("ffmpeg"), 10, t0 + Duration::from_secs(2));
        audience.served_at(&cam, Some(b), Some("dash.js"), 10, t0 + Duration::from_secs(3));
        let figures = audience.figures_at(t0 + Duration::from_secs(4));
        assert_eq!(figures, [(cam.clone(), AudienceFigures { viewers: 3, delivered_bytes: 170 })]);
        // 31 s after its last fetch a viewer no longer counts; the bytes stay counted.
        let figures = audience.figures_at(t0 + Duration::from_secs(33));
        assert_eq!(figures[0].1, AudienceFigures { viewers: 1, delivered_bytes: 170 });
        // Two windows without a fetch: the stream and its series go.
        assert!(audience.figures_at(t0 + Duration::from_secs(64)).is_empty());
    }
}
