//! The caching tier's metrics (`rackcast_tier_*`): request and upstream counters and the
//! upstream fetch time (to the answer's head for a relayed body), recorded by the handlers (mod.rs), the flights (proxy.rs) and the
//! prefetcher; the cache's size, read when scraped. [`TierCounts`] is the same figures as
//! one value, for the admin API and the health answers peers read.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use super::cache::TierCache;
use crate::metrics::common::register_counters;

/// Recorded where each event happens; registered once per node ([`TierMetrics::register`]).
#[derive(Debug)]
pub struct TierMetrics {
    pub requests: Counter,
    pub hits: Counter,
    pub misses: Counter,
    pub coalesced: Counter,
    pub bad_requests: Counter,
    /// Byte ranges of a relayed segment answered 503: the bytes did not arrive in time.
    pub range_wait_timeouts: Counter,
    /// HTTP requests sent upstream, one per attempt (a failover is two).
    pub upstream_requests: Counter,
    /// Attempts that failed: refused, reset, timed out, too large, or answered other than
    /// 200 / 404.
    pub upstream_errors: Counter,
    /// Of those, attempts that could not connect (the only ones that mark a node down).
    pub upstream_connect_failures: Counter,
    /// Of those, attempts that ran out of time (the node stays up; the request fails over).
    pub upstream_timeouts: Counter,
    /// Of those, answers larger than `max_body_bytes`.
    pub upstream_too_large: Counter,
    /// Relayed bodies (answers still being produced upstream) abandoned mid-stream: the
    /// upstream broke off, stalled past `chunk_timeout` or went over `max_body_bytes`
    /// (those also count above). Their viewers were cut off; nothing was cached.
    pub upstream_abandoned: Counter,
    /// Answers passed on without being cached because the upstream's Cache-Control said so.
    pub not_stored: Counter,
    /// Segments fetched by the prefetcher (not by a viewer).
    pub prefetches: Counter,
    /// Upstream MPDs (or their Representations) the prefetcher skipped at one of its
    /// bounds (prefetch.rs).
    pub prefetch_limited: Counter,
    /// Seconds an upstream fetch took, failures included (to the head for a relayed body).
    pub upstream_fetch_seconds: Histogram,
}

impl Default for TierMetrics {
    fn default() -> Self {
        Self {
            requests: Counter::default(),
            hits: Counter::default(),
            misses: Counter::default(),
            coalesced: Counter::default(),
            bad_requests: Counter::default(),
            range_wait_timeouts: Counter::default(),
            upstream_requests: Counter::default(),
            upstream_errors: Counter::default(),
            upstream_connect_failures: Counter::default(),
            upstream_timeouts: Counter::default(),
            upstream_too_large: Counter::default(),
            upstream_abandoned: Counter::default(),
            not_stored: Counter::default(),
            prefetches: Counter::default(),
            prefetch_limited: Counter::default(),
            // 1 ms .. ~4 s.
            upstream_fetch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
        }
    }
}

impl TierMetrics {
    /// Registers the counters, the fetch time and `cache`'s size.
    pub fn register(&self, registry: &mut Registry, cache: TierCache) {
        let registry = registry.sub_registry_with_prefix("tier");
        register_counters(
            registry,
            &[
                ("requests", "Viewer requests the caching tier answered", &self.requests),
                ("hits", "Requests answered from the cache", &self.hits),
                ("misses", "Requests that fetched from upstream", &self.misses),
                ("coalesced", "Requests that waited on another request's upstream fetch", &self.coalesced),
                ("bad_requests", "Requests with a malformed path", &self.bad_requests),
                ("range_wait_timeouts", "Byte ranges of a relayed segment answered 503: the bytes did not arrive in time", &self.range_wait_timeouts),
                ("upstream_requests", "HTTP requests sent upstream, one per attempt", &self.upstream_requests),
                ("upstream_errors", "Upstream attempts that failed (refused, reset, timed out, too large, or an unexpected status)", &self.upstream_errors),
                ("upstream_connect_failures", "Upstream attempts that could not connect (they mark the node down)", &self.upstream_connect_failures),
                ("upstream_timeouts", "Upstream attempts that ran out of time (the request fails over)", &self.upstream_timeouts),
                ("upstream_too_large", "Upstream answers larger than tier.max_body_bytes", &self.upstream_too_large),
                ("upstream_abandoned", "Relayed upstream bodies abandoned mid-stream (broken off, stalled or too large); viewers cut off, nothing cached", &self.upstream_abandoned),
                ("not_stored", "Answers passed on without being cached because the upstream's Cache-Control said so", &self.not_stored),
                ("prefetches", "Segments fetched by the prefetcher", &self.prefetches),
                ("prefetch_limited", "Upstream MPDs or Representations the prefetcher skipped at one of its bounds", &self.prefetch_limited),
            ],
        );
        registry.register("upstream_fetch_seconds", "Upstream fetches of the caching tier, failures included", self.upstream_fetch_seconds.clone());
        registry.register_collector(Box::new(CacheSize(cache)));
    }

    /// The figures now, with `cache`'s size.
    pub fn counts(&self, cache: &TierCache) -> TierCounts {
        TierCounts {
            requests: self.requests.get(),
            hits: self.hits.get(),
            misses: self.misses.get(),
            coalesced: self.coalesced.get(),
            bad_requests: self.bad_requests.get(),
            upstream_requests: self.upstream_requests.get(),
            upstream_errors: self.upstream_errors.get(),
            upstream_connect_failures: self.upstream_connect_failures.get(),
            upstream_timeouts: self.upstream_timeouts.get(),
            upstream_too_large: self.upstream_too_large.get(),
            upstream_abandoned: self.upstream_abandoned.get(),
            not_stored: self.not_stored.get(),
            prefetches: self.prefetches.get(),
            prefetch_limited: self.prefetch_limited.get(),
            bytes_cached: cache.weighted_size(),
            entries: cache.entry_count(),
            capacity_bytes: cache.capacity(),
        }
    }
}

/// [`TierMetrics`] read at one moment, with the cache's size: what `GET /api/v1/tiers`
/// and the tier's health answers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierCounts {
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub bad_requests: u64,
    pub upstream_requests: u64,
    pub upstream_errors: u64,
    pub upstream_connect_failures: u64,
    pub upstream_timeouts: u64,
    pub upstream_too_large: u64,
    /// Older peers do not report it.
    #[serde(default)]
    pub upstream_abandoned: u64,
    pub not_stored: u64,
    pub prefetches: u64,
    #[serde(default)]
    pub prefetch_limited: u64,
    /// Weighted bytes held (bodies plus per-entry overhead); moka updates it lazily.
    pub bytes_cached: u64,
    pub entries: u64,
    pub capacity_bytes: u64,
}

/// The cache's size as gauges, read on every scrape.
struct CacheSize(TierCache);

impl fmt::Debug for CacheSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheSize")
    }
}

impl Collector for CacheSize {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let cache = &self.0;
        for (name, help, value) in [
            ("bytes_cached", "Bytes the cache holds (bodies plus per-entry overhead; updated lazily)", cache.weighted_size()),
            ("entries", "Objects the cache holds", cache.entry_count()),
            ("capacity_bytes", "Bytes the cache may hold (tier.capacity_bytes)", cache.capacity()),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric)?;
        }
        Ok(())
    }
}
