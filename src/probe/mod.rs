//! The uplink probe: estimates, for one publish, what the broadcaster's connection sustains
//! and what its encoder produces, so rackcast can tell the broadcaster what to send and the
//! ladder planner what it can build. Pure: ingest feeds it (`on_bytes` for every socket read
//! of the publishing connection, `on_media` for every audio/video message, `on_metadata` from
//! onMetaData) with the time since the publish started; the stream actor, the replanner and
//! the stats route ask `estimate(now)` and `history()`. No I/O and no clock, so a recorded
//! or synthetic trace replays to the same numbers every time.
//!
//! Measurement. Arrivals are summed into fixed buckets (100 ms) and read through a sliding
//! window (3 s): `throughput_bps` is the bytes in the window over the window's length, so a
//! burst of reads raises it only by what the burst adds to the window, never to its peak.
//! The oldest bucket is prorated where the window cuts it. Media time is the highest
//! unwrapped RTMP timestamp seen; `media_rate` is media time gained over wall time in the
//! window, `source_bitrate_bps` is media payload over media time gained.
//!
//! Confidence = time observed / window (capped at 1) x reads in window / 10 (capped at 1)
//! x sqrt(regularity), where regularity = mean^2 / mean-of-squares of the bytes per full
//! bucket in the window: 1 for steady arrivals, the duty cycle for on/off bursts, falling
//! towards 0 through a stall.
//!
//! Uplink-bound. The window is `lagging` when `media_rate` < 0.95, or when the backlog
//! exceeds 2 s and is not draining (`media_rate` < 0.99; the slack tolerates encoder clock
//! drift). `uplink_bound` needs `lagging` now and at every whole second of the last 4 s, so
//! a stall shorter than the hold that the connection then catches up on is not flagged.
//!
//! Recommendation policy (`recommended_publish_bps`):
//! - uplink-bound: 85% of the measured throughput. The link is saturated, so throughput is
//!   its capacity; the 15% margin absorbs keyframe bursts and cross traffic.
//! - otherwise: min(source bitrate, throughput); the measured source bitrate, or onMetaData's
//!   claim while no media has been measured. The link is not saturated, so throughput only
//!   shows what the encoder sends, and the probe cannot see spare capacity above it.
//! - `None` while nothing has arrived, or no source bitrate is known and the link is not bound.
//!   `recommended_height` is the tallest catalogue rung whose bitrate plus the source's
//!   audio fits the recommendation.

mod types;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trace;

use std::collections::VecDeque;
use std::time::Duration;

use crate::ladder::config::RungConfig;

pub use types::{ProbeSample, UplinkEstimate, recommended_height};

/// Length of the sliding window every rate is measured over.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3);
/// Granularity of the arrival record; also what the regularity measure looks at.
pub const DEFAULT_BUCKET: Duration = Duration::from_millis(100);
/// A window `media_rate` under this is lagging.
pub const DEFAULT_LAG_THRESHOLD: f64 = 0.95;
/// A backlog above this, not draining, is lagging even at a `media_rate` near 1.
pub const DEFAULT_BACKLOG_LIMIT: Duration = Duration::from_secs(2);
/// How long lagging must persist before the publish counts as uplink-bound.
pub const DEFAULT_BOUND_HOLD: Duration = Duration::from_secs(4);
/// Share of a saturated link's throughput recommended to the broadcaster.
pub const DEFAULT_HEADROOM: f64 = 0.85;
/// Reads in the window at which the read count stops limiting confidence.
pub const DEFAULT_MIN_READS: u32 = 10;
/// History length, one sample per second.
pub const DEFAULT_HISTORY_LEN: usize = 60;

/// Spacing of history samples.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Media must have been arriving this long before a `media_rate` means anything.
const MIN_MEDIA_OBSERVED: Duration = Duration::from_secs(1);
/// The window must span this much media time before payload over media time is a bitrate.
const MIN_MEDIA_SPAN_MS: f64 = 500.0;
/// A timestamp step larger than this is a discontinuity (an encoder restart, a broken
/// relay), not progress: it is absorbed instead of counting as media time.
const MAX_TS_STEP_MS: i64 = 10_000;
/// With a backlog over the limit, media still counts as lagging under this rate.
const CREEP_THRESHOLD: f64 = 0.99;

/// Tunables of the probe. The defaults are the named constants above.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProbeConfig {
    pub window: Duration,
    pub bucket: Duration,
    pub lag_threshold: f64,
    pub backlog_limit: Duration,
    pub bound_hold: Duration,
    pub headroom: f64,
    pub min_reads: u32,
    pub history_len: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            bucket: DEFAULT_BUCKET,
            lag_threshold: DEFAULT_LAG_THRESHOLD,
            backlog_limit: DEFAULT_BACKLOG_LIMIT,
            bound_hold: DEFAULT_BOUND_HOLD,
            headroom: DEFAULT_HEADROOM,
            min_reads: DEFAULT_MIN_READS,
            history_len: DEFAULT_HISTORY_LEN,
        }
    }
}

/// Arrivals within one bucket of wall time. Buckets are kept contiguous (gaps are filled
/// with empty ones) so that a window lookup is an index computation.
#[derive(Debug, Clone)]
struct Bucket {
    index: u64,
    wire_bytes: u64,
    reads: u32,
    video_bytes: u64,
    audio_bytes: u64,
    /// Media time (unwrapped ms) reached before this bucket began; `None` before any media.
    media_hi_before: Option<i64>,
}

/// RTMP timestamps made monotone: 32-bit wrap undone, discontinuities absorbed.
#[derive(Debug, Clone, Default)]
struct MediaClock {
    /// The last raw timestamp and its unwrapped value, the reference for the next one.
    /// Audio and video interleave slightly out of order, so this is not the maximum.
    last: Option<(u32, i64)>,
    /// Highest unwrapped timestamp: how far media has progressed.
    hi: Option<i64>,
    /// Arrival time of the first message.
    first_at: Option<Duration>,
    /// Unwrapped timestamp of the first message.
    first_ts: i64,
    /// Smallest (arrival ms - media ms) seen: the lag with an empty send queue.
    min_lag_ms: i64,
}

impl MediaClock {
    fn observe(&mut self, at: Duration, ts: u32) {
        let ext = match self.last {
            None => i64::from(ts),
            Some((raw, ext)) => {
                // Reinterpreting the wrapped difference as i32 undoes the 32-bit wrap and keeps
                // small backward steps (interleaved tracks) negative.
                let step = i64::from(ts.wrapping_sub(raw) as i32);
                if step.abs() > MAX_TS_STEP_MS { self.hi.unwrap_or(ext) } else { ext + step }
            }
        };
        self.last = Some((ts, ext));
        let lag = millis(at) - ext;
        if self.first_at.is_none() {
            self.first_at = Some(at);
            self.first_ts = ext;
            self.min_lag_ms = lag;
        }
        self.min_lag_ms = self.min_lag_ms.min(lag);
        self.hi = Some(self.hi.map_or(ext, |hi| hi.max(ext)));
    }
}

/// Sums over the window ending at some `now`.
#[derive(Debug, Default)]
struct WindowSums {
    /// Wall time the byte sums cover.
    span: Duration,
    wire_bytes: f64,
    reads: f64,
    video_bytes: f64,
    audio_bytes: f64,
    /// Media time at the window's start (interpolated), or `None` when media began inside it.
    media_start: Option<f64>,
    /// mean^2 / mean-of-squares of bytes per full bucket; 0 with no data.
    regularity: f64,
}

/// The uplink estimator of one publish.
#[derive(Debug, Clone)]
pub struct UplinkProbe {
    config: ProbeConfig,
    catalogue: Vec<RungConfig>,
    buckets: VecDeque<Bucket>,
    first_byte_at: Option<Duration>,
    /// Latest event time; time never runs backwards inside the probe.
    last_event_at: Duration,
    media: MediaClock,
    metadata_video_bps: Option<f64>,
    metadata_audio_bps: Option<f64>,
    history: Vec<ProbeSample>,
    /// The next whole second to record in the history. Always at or after `last_event_at`, so
    /// the state describes every instant from `last_event_at` up to it.
    next_sample_at: Duration,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn positive(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite() && *v > 0.0)
}

impl UplinkProbe {
    /// A probe for a publish that starts now (time zero). `catalogue` is the rung catalogue
    /// recommendations are expressed in. Out-of-range tunables are clamped: the bucket to at
    /// least 1 ms, the window to at least one bucket, the hold to what the history can hold.
    pub fn new(mut config: ProbeConfig, catalogue: Vec<RungConfig>) -> Self {
        config.bucket = config.bucket.max(Duration::from_millis(1));
        config.window = config.window.max(config.bucket);
        config.history_len = config.history_len.max(1);
        let history_span = SAMPLE_INTERVAL * u32::try_from(config.history_len).unwrap_or(u32::MAX);
        config.bound_hold = config.bound_hold.min(history_span);
        Self {
            config,
            catalogue,
            buckets: VecDeque::new(),
            first_byte_at: None,
            last_event_at: Duration::ZERO,
            media: MediaClock::default(),
            metadata_video_bps: None,
            metadata_audio_bps: None,
            history: Vec::new(),
            next_sample_at: Duration::ZERO,
        }
    }

    /// One socket read of `bytes` from the publishing connection.
    pub fn on_bytes(&mut self, at: Duration, bytes: usize) {
        let at = self.advance(at);
        self.first_byte_at.get_or_insert(at);
        let bucket = self.bucket_at(at);
        bucket.wire_bytes += bytes as u64;
        bucket.reads += 1;
    }

    /// One audio or video message with its RTMP timestamp and payload size.
    pub fn on_media(&mut self, at: Duration, media_ts_ms: u32, payload_bytes: usize, is_video: bool) {
        let at = self.advance(at);
        // The bucket records the media time reached before it, so it must exist before this
        // message moves the media clock.
        let bucket = self.bucket_at(at);
        if is_video {
            bucket.video_bytes += payload_bytes as u64;
        } else {
            bucket.audio_bytes += payload_bytes as u64;
        }
        self.media.observe(at, media_ts_ms);
    }

    /// onMetaData's `videodatarate` / `audiodatarate` (kbit/s). A later call replaces the hint.
    pub fn on_metadata(&mut self, video_kbps: Option<f64>, audio_kbps: Option<f64>) {
        self.metadata_video_bps = positive(video_kbps).map(|k| k * 1000.0);
        self.metadata_audio_bps = positive(audio_kbps).map(|k| k * 1000.0);
    }

    /// The last `history_len` estimates, one per whole second, oldest first. A second is
    /// recorded once an event after it arrives.
    pub fn history(&self) -> &[ProbeSample] {
        &self.history
    }

    /// The estimate at `now` (time since the publish started). `now` earlier than the latest
    /// event is read as that event's time.
    pub fn estimate(&self, now: Duration) -> UplinkEstimate {
        let now = now.max(self.last_event_at);
        let mut estimate = self.measure(now);
        estimate.uplink_bound = estimate.lagging && self.lagged_throughout(now);
        let source = estimate.source_bitrate_bps.or(estimate.metadata_bps);
        estimate.recommended_publish_bps = if estimate.throughput_bps <= 0.0 {
            None
        } else if estimate.uplink_bound {
            Some(self.config.headroom * estimate.throughput_bps)
        } else {
            source.map(|s| s.min(estimate.throughput_bps))
        };
        let audio = estimate.source_audio_bps.or(self.metadata_audio_bps).unwrap_or(0.0);
        estimate.recommended_height =
            estimate.recommended_publish_bps.and_then(|bps| recommended_height(bps, audio, &self.catalogue));
        estimate
    }

    /// Moves the probe's time to `at` (never backwards), recording the history samples of the
    /// whole seconds passed before it. Returns the time the event is booked at.
    fn advance(&mut self, at: Duration) -> Duration {
        let at = at.max(self.last_event_at);
        let keep = self.config.history_len as u64;
        while self.next_sample_at < at {
            let behind = (at - self.next_sample_at).as_secs();
            if behind > keep {
                // Seconds older than the history can hold would be dropped at once.
                self.next_sample_at += Duration::from_secs(behind - keep);
                continue;
            }
            let t = self.next_sample_at;
            let estimate = self.estimate(t);
            self.history.push(ProbeSample { at_ms: millis(t).unsigned_abs(), estimate });
            if self.history.len() > self.config.history_len {
                self.history.remove(0);
            }
            self.next_sample_at += SAMPLE_INTERVAL;
        }
        self.last_event_at = at;
        at
    }

    fn bucket_index(&self, at: Duration) -> u64 {
        u64::try_from(at.as_nanos() / self.config.bucket.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Buckets a window needs: the ones it covers plus the one before, whose media mark is
    /// the window's media baseline.
    fn buckets_kept(&self) -> u64 {
        u64::try_from(self.config.window.as_nanos().div_ceil(self.config.bucket.as_nanos()))
            .unwrap_or(u64::MAX)
            .saturating_add(2)
    }

    /// The bucket `at` falls in, creating it (and empty ones over any gap) as needed.
    fn bucket_at(&mut self, at: Duration) -> &mut Bucket {
        let index = self.bucket_index(at);
        let kept = self.buckets_kept();
        let hi = self.media.hi;
        let next = self.buckets.back().map_or(index, |b| b.index + 1);
        // Empty buckets older than the window would be trimmed straight away.
        for i in next.max(index.saturating_sub(kept - 1))..=index {
            self.buckets.push_back(Bucket {
                index: i,
                wire_bytes: 0,
                reads: 0,
                video_bytes: 0,
                audio_bytes: 0,
                media_hi_before: hi,
            });
        }
        while self.buckets.len() as u64 > kept {
            self.buckets.pop_front();
        }
        // Time never runs backwards (`advance`), so `index` is the newest bucket, just made or
        // already there.
        self.buckets.back_mut().expect("a bucket was pushed or already existed")
    }

    fn bucket(&self, index: u64) -> Option<&Bucket> {
        let front = self.buckets.front()?.index;
        let offset = usize::try_from(index.checked_sub(front)?).ok()?;
        self.buckets.get(offset)
    }

    /// Media time reached before bucket `index` began.
    fn media_hi_before(&self, index: u64) -> Option<i64> {
        match self.buckets.back() {
            Some(back) if index > back.index => self.media.hi,
            _ => self.bucket(index).and_then(|b| b.media_hi_before),
        }
    }

    fn window_sums(&self, now: Duration) -> WindowSums {
        let Some(first_byte_at) = self.first_byte_at else {
            return WindowSums::default();
        };
        let bucket_ns = self.config.bucket.as_nanos();
        let window_start = now.saturating_sub(self.config.window);
        let start_index = self.bucket_index(window_start);
        let now_index = self.bucket_index(now);
        // Share of the oldest bucket inside the window; before the first byte the whole
        // record is inside it.
        let (span, head_share) = if window_start <= first_byte_at {
            ((now - first_byte_at).max(self.config.bucket), 1.0)
        } else {
            let into = window_start.as_nanos() % bucket_ns;
            (self.config.window, 1.0 - into as f64 / bucket_ns as f64)
        };
        let mut sums = WindowSums { span, ..WindowSums::default() };
        for index in start_index..=now_index {
            let Some(b) = self.bucket(index) else { continue };
            let share = if index == start_index { head_share } else { 1.0 };
            sums.wire_bytes += share * b.wire_bytes as f64;
            sums.reads += share * f64::from(b.reads);
            sums.video_bytes += share * b.video_bytes as f64;
            sums.audio_bytes += share * b.audio_bytes as f64;
        }
        sums.media_start = match (self.media_hi_before(start_index), self.media_hi_before(start_index + 1)) {
            (Some(a), Some(b)) => Some(a as f64 + (1.0 - head_share) * (b - a) as f64),
            _ => None,
        };
        // Regularity over the buckets wholly inside both the window and the observation.
        let (mut sum, mut sum_sq, mut n) = (0.0, 0.0, 0.0);
        for index in (start_index + 1).max(self.bucket_index(first_byte_at))..now_index {
            let bytes = self.bucket(index).map_or(0.0, |b| b.wire_bytes as f64);
            sum += bytes;
            sum_sq += bytes * bytes;
            n += 1.0;
        }
        sums.regularity = if sum > 0.0 { sum * sum / (n * sum_sq) } else { 0.0 };
        sums
    }

    /// Everything but the parts that need history (`uplink_bound`) or policy
    /// (recommendations).
    fn measure(&self, now: Duration) -> UplinkEstimate {
        let sums = self.window_sums(now);
        let secs = sums.span.as_secs_f64();
        let throughput_bps = if secs > 0.0 { sums.wire_bytes * 8.0 / secs } else { 0.0 };
        let confidence = match self.first_byte_at {
            None => 0.0,
            Some(first) => {
                let observed = ((now - first).as_secs_f64() / self.config.window.as_secs_f64()).min(1.0);
                let reads = (sums.reads / f64::from(self.config.min_reads.max(1))).min(1.0);
                observed * reads * sums.regularity.sqrt()
            }
        };

        let mut estimate = UplinkEstimate {
            throughput_bps,
            confidence,
            source_bitrate_bps: None,
            source_video_bps: None,
            source_audio_bps: None,
            metadata_bps: match (self.metadata_video_bps, self.metadata_audio_bps) {
                (None, None) => None,
                (v, a) => Some(v.unwrap_or(0.0) + a.unwrap_or(0.0)),
            },
            media_rate: None,
            backlog_ms: 0,
            backlog_growth_ms_per_s: None,
            lagging: false,
            uplink_bound: false,
            recommended_publish_bps: None,
            recommended_height: None,
        };
        let (Some(hi), Some(first_at)) = (self.media.hi, self.media.first_at) else {
            return estimate;
        };
        estimate.backlog_ms = (millis(now) - hi - self.media.min_lag_ms).max(0).unsigned_abs();
        // Media that began inside the window is measured from its first message.
        let (media_start, wall_start) = match sums.media_start {
            Some(start) => (start, now.saturating_sub(self.config.window)),
            None => (self.media.first_ts as f64, first_at),
        };
        let media_ms = hi as f64 - media_start;
        let wall_ms = (now - wall_start).as_secs_f64() * 1000.0;
        if media_ms >= MIN_MEDIA_SPAN_MS {
            let per_ms_to_bps = 8.0 * 1000.0 / media_ms;
            estimate.source_video_bps = Some(sums.video_bytes * per_ms_to_bps);
            estimate.source_audio_bps = Some(sums.audio_bytes * per_ms_to_bps);
            estimate.source_bitrate_bps = Some((sums.video_bytes + sums.audio_bytes) * per_ms_to_bps);
        }
        if now.saturating_sub(first_at) >= MIN_MEDIA_OBSERVED && wall_ms > 0.0 {
            let rate = media_ms.max(0.0) / wall_ms;
            estimate.media_rate = Some(rate);
            estimate.backlog_growth_ms_per_s = Some((1.0 - rate) * 1000.0);
            let backlog_limit = u64::try_from(self.config.backlog_limit.as_millis()).unwrap_or(u64::MAX);
            estimate.lagging = rate < self.config.lag_threshold
                || (estimate.backlog_ms > backlog_limit && rate < CREEP_THRESHOLD);
        }
        estimate
    }

    /// Whether the window was lagging at every whole second of the hold before `now`.
    fn lagged_throughout(&self, now: Duration) -> bool {
        let hold = self.config.bound_hold;
        let Some(from) = now.checked_sub(hold) else {
            return false;
        };
        let mut second = Duration::from_secs(from.as_secs());
        if second < from {
            second += SAMPLE_INTERVAL;
        }
        while second < now {
            if !self.lagging_at(second) {
                return false;
            }
            second += SAMPLE_INTERVAL;
        }
        true
    }

    fn lagging_at(&self, t: Duration) -> bool {
        if t >= self.next_sample_at {
            // Not sampled yet: nothing has arrived since `t`, so the state still describes it.
            return self.measure(t).lagging;
        }
        let at_ms = millis(t).unsigned_abs();
        self.history.iter().rev().find(|s| s.at_ms == at_ms).is_some_and(|s| s.estimate.lagging)
    }
}
