//! The packager's configuration (`[package]`): segment duration, DVR window, manifest
//! timing and the byte caps per fragment and per stream, with their defaults and checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mpd::MpdTiming;
use crate::section::InvalidKey;

/// The section's table in the config file.
const SECTION: &str = "package";

pub const DEFAULT_DVR_WINDOW: Duration = Duration::from_secs(30);
pub const DEFAULT_SEGMENT_DURATION: Duration = Duration::from_secs(1);
pub const DEFAULT_PRESENTATION_DELAY: Duration = Duration::from_secs(1);
pub const DEFAULT_MANIFEST_UPDATE_PERIOD: Duration = Duration::from_secs(1);
/// A segment is finished about 0.9 to 2 s after its end (the transcoder's lag, reported as
/// `health.lag_ms`).
pub const DEFAULT_NUMBER_FORM_DELAY: Duration = Duration::from_secs(2);
/// Past the DVR-window-sized lag a player tolerates; an uplink-bound publisher that lags
/// for a few seconds keeps its Period.
pub const DEFAULT_MAX_CLOCK_DRIFT: Duration = Duration::from_secs(15);
/// A 1 s segment of the 1080p rung at 5 Mbit/s is about 640 KB, a 10 s one 6.4 MB.
pub const DEFAULT_MAX_FRAGMENT_BYTES: usize = 16 * 1024 * 1024;
/// The default ladder (10 Mbit/s with audio) fills a 30 s DVR window with about 38 MB:
/// two and a half times that leaves room for encoder overshoot and a republish's Periods.
pub const DEFAULT_MAX_STREAM_BYTES: u64 = 96 * 1024 * 1024;
/// Low-latency chunks: a third of the default 1 s segment (10 frames at 30 fps, 20 at 60,
/// 8 or 9 at 25). Not shorter: hls.js 1.7 looks a fragment up with a 0.25 s tolerance
/// (`maxFragLookUpTolerance`), so once its buffer reaches within 0.25 s of a segment's end
/// it moves on to the next segment and skips the unloaded last part there (a hole it
/// stalls at). With 200 ms parts every segment's last part lies within that tolerance and
/// hls.js stalled in most runs of the browser test; with a third of a second, in none
/// (docs/low-latency.md).
pub const DEFAULT_CHUNK_DURATION: Duration = Duration::from_millis(333);
/// How long a dropped broadcaster's stream waits for it to reconnect: encoders that
/// reconnect on their own (OBS, ffmpeg loops, hardware encoders) do so within seconds.
pub const DEFAULT_RECONNECT_WINDOW: Duration = Duration::from_secs(5);
/// How much more than the configured ladder's nominal DVR window `max_stream_bytes` must
/// hold, so that the byte cap never shortens the window of a stream that behaves.
pub const STREAM_BYTES_HEADROOM: f64 = 1.5;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackageConfig {
    /// Target duration of every DASH segment.
    #[serde(with = "humantime_serde")]
    pub segment_duration: Duration,
    /// How far back viewers can seek; older segments are evicted, and an ended stream is
    /// removed this long after its broadcaster stopped.
    #[serde(with = "humantime_serde")]
    pub dvr_window: Duration,
    /// MPD@suggestedPresentationDelay: how far behind the live edge players should sit.
    #[serde(with = "humantime_serde")]
    pub presentation_delay: Duration,
    /// MPD@minimumUpdatePeriod: how often players re-fetch the manifest to learn of new
    /// segments. Shorter means players see a new segment sooner, at one manifest request
    /// per period per viewer (edges coalesce and cache them).
    #[serde(with = "humantime_serde")]
    pub manifest_update_period: Duration,
    /// How long after its end `manifest-number.mpd` (the Number form, where players compute
    /// segment numbers from the clock) says a segment is available: at least the time the
    /// transcoder and packager take to finish one, or such players ask for it early (404).
    #[serde(with = "humantime_serde")]
    pub number_form_delay: Duration,
    /// When a stream's media falls this far behind the wall clock (a stalled uplink, a
    /// publisher that paused), the next keyframe starts a new Period anchored to now, so
    /// the MPD's live edge matches what exists again.
    #[serde(with = "humantime_serde")]
    pub max_clock_drift: Duration,
    /// How long a stream whose broadcaster dropped without unpublishing stays live (the MPD
    /// dynamic with the Period's end announced), waiting for the broadcaster to reconnect
    /// to any node; a reconnect within it continues the presentation with one new Period.
    /// Past it the stream ends as an unpublish ends it. "0s": a drop ends it at once.
    #[serde(with = "humantime_serde")]
    pub reconnect_window: Duration,
    /// How long, within `reconnect_window`, a stream whose broadcaster dropped keeps its
    /// Period going with its last keyframe's picture and silence (the stream actor's hold):
    /// a reconnect within it continues the same Period, so segments never stop and players
    /// see a frozen picture, not a Period change. Past it the Period ends as at any drop.
    /// "0s" (the default): a drop ends the Period at once.
    #[serde(with = "humantime_serde")]
    pub hold_last_frame: Duration,
    /// Largest CMAF fragment (one segment of one rendition, bytes) a muxer may produce; a
    /// larger one is refused and ends its stream (logged, counted as
    /// `rackcast_package_fragments_too_large`).
    pub max_fragment_bytes: usize,
    /// Most bytes one stream's segments may hold on this node: past it the oldest segments
    /// leave the DVR window early (logged, counted as
    /// `rackcast_package_segments_evicted_for_bytes`); the newest segment of each
    /// rendition always stays. Must hold the whole ladder's DVR window with headroom.
    pub max_stream_bytes: u64,
    /// Produce every segment as CMAF chunks of `chunk_duration` and serve a segment while
    /// it is being encoded, each chunk as it is cut (chunked transfer), through every tier.
    /// Players that follow the low-latency signals then play about a second behind live.
    /// Off: segments appear whole, once complete.
    pub low_latency: bool,
    /// Duration of one chunk with `low_latency`, rounded so that a segment is a whole number
    /// of chunks ([`PackageConfig::chunks`]; whole frames: the first frame at or after each
    /// multiple of it into the segment starts a chunk).
    #[serde(with = "humantime_serde")]
    pub chunk_duration: Duration,
}

impl PackageConfig {
    /// Bytes of a DVR window at `bits_per_second` (the whole ladder and the audio, at their
    /// nominal bitrates).
    pub fn nominal_window_bytes(&self, bits_per_second: u64) -> u64 {
        (bits_per_second as f64 / 8.0 * self.dvr_window.as_secs_f64()) as u64
    }

    /// The byte caps the packager enforces.
    pub fn byte_caps(&self) -> crate::package::ByteCaps {
        crate::package::ByteCaps { max_fragment_bytes: self.max_fragment_bytes, max_stream_bytes: self.max_stream_bytes }
    }

    /// The chunk duration when segments are produced in chunks (`low_latency`), else None:
    /// `chunk_duration` rounded so that a segment is a whole number of chunks (333 ms in a
    /// 1 s segment: a third of a second; 300 ms: a third too), so that no segment ends in a
    /// sliver of a chunk.
    pub fn chunks(&self) -> Option<Duration> {
        let per_segment = (self.segment_duration.as_secs_f64() / self.chunk_duration.as_secs_f64()).round().max(1.0);
        self.low_latency.then(|| self.segment_duration.div_f64(per_segment))
    }

    /// The manifest-wide timing the MPD renderer follows.
    pub fn mpd_timing(&self) -> MpdTiming {
        MpdTiming {
            segment_duration: self.segment_duration,
            update_period: self.manifest_update_period,
            dvr_window: self.dvr_window,
            presentation_delay: self.presentation_delay,
            number_form_delay: self.number_form_delay,
            chunk_duration: self.chunks(),
        }
    }

    /// Checks every field against the others of the section; the error names the key
    /// (`package.{key}`). `max_stream_bytes` depends on the ladder's bitrates too: src/config.rs
    /// checks it.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        let invalid = |key: &str, reason: &str| Err(InvalidKey::new(SECTION, key, reason));
        let seg = self.segment_duration;
        if seg < Duration::from_millis(500) || seg > Duration::from_secs(10) {
            return invalid("segment_duration", "must be within 500ms..=10s");
        }
        let update = self.manifest_update_period;
        if update < Duration::from_millis(100) || update > seg * 10 {
            return invalid("manifest_update_period", "must be within 100ms and ten segment durations");
        }
        if self.number_form_delay > seg * 10 {
            return invalid("number_form_delay", "must be at most ten segment durations");
        }
        if self.max_clock_drift < seg * 2 {
            return invalid("max_clock_drift", "must be at least two segment durations");
        }
        if self.reconnect_window > Duration::from_secs(600) {
            return invalid("reconnect_window", "must be at most 10 minutes");
        }
        if self.hold_last_frame > self.reconnect_window {
            return invalid("hold_last_frame", "must be at most reconnect_window");
        }
        if self.dvr_window < seg * 3 {
            return invalid("dvr_window", "must hold at least three segments");
        }
        if self.chunk_duration < Duration::from_millis(50) || self.chunk_duration * 2 > seg {
            return invalid("chunk_duration", "must be within 50ms and half a segment");
        }
        if !(1 << 20..=1 << 30).contains(&self.max_fragment_bytes) {
            return invalid("max_fragment_bytes", "must be within 1 MiB and 1 GiB");
        }
        Ok(())
    }
}

impl Default for PackageConfig {
    fn default() -> Self {
        Self {
            segment_duration: DEFAULT_SEGMENT_DURATION,
            dvr_window: DEFAULT_DVR_WINDOW,
            presentation_delay: DEFAULT_PRESENTATION_DELAY,
            manifest_update_period: DEFAULT_MANIFEST_UPDATE_PERIOD,
            number_form_delay: DEFAULT_NUMBER_FORM_DELAY,
            max_clock_drift: DEFAULT_MAX_CLOCK_DRIFT,
            reconnect_window: DEFAULT_RECONNECT_WINDOW,
            hold_last_frame: Duration::ZERO,
            max_fragment_bytes: DEFAULT_MAX_FRAGMENT_BYTES,
            max_stream_bytes: DEFAULT_MAX_STREAM_BYTES,
            low_latency: true,
            chunk_duration: DEFAULT_CHUNK_DURATION,
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_divide_the_segment_evenly() {
        let chunks = |segment_ms: u64, chunk_ms: u64, low_latency: bool| {
            let config = PackageConfig {
                segment_duration: Duration::from_millis(segment_ms),
                chunk_duration: Duration::from_millis(chunk_ms),
                low_latency,
                ..PackageConfig::default()
            };
            config.chunks().map(|c| c.as_nanos())
        };
        assert_eq!(PackageConfig::default().chunks(), Some(Duration::from_nanos(333_333_333)));
        assert_eq!(chunks(1_000, 200, true), Some(200_000_000));
        assert_eq!(chunks(1_000, 300, true), Some(333_333_333));
        assert_eq!(chunks(1_000, 450, true), Some(500_000_000));
        assert_eq!(chunks(2_000, 333, true), Some(333_333_333));
        assert_eq!(chunks(1_000, 333, false), None);
    }
}
