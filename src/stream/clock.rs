//! Media time of one publish session, from the broadcaster's 32-bit RTMP timestamps. Pure.
//!
//! RTMP timestamps are 32-bit milliseconds, and encoders wrap them at 2^32 or (ffmpeg's FLV
//! muxer) at 2^31, or restart them at zero when they reconnect their source. The clock
//! follows video decode timestamps as signed 32-bit steps accumulated into 64 bits, so a
//! wrap at 2^32 passes unnoticed; a step backwards or forwards by more than a few seconds
//! (a wrap at 2^31, a restart, a jump) is a discontinuity, which the stream actor answers
//! with a new Period that starts where the old media ended. Audio is placed against the
//! video clock without moving it; an audio-only source drives the clock with its audio.
//!
//! The clock also says how media time relates to the wall clock: the session's media zero
//! is anchored to an instant, so a publisher that sends faster than real time can be
//! paced, and one that fell far behind (a stalled link) can be re-anchored.

use std::time::{Duration, Instant};

/// A video step backwards beyond this is a discontinuity (B-frame reordering moves decode
/// time backwards by at most a few frames, never by a second).
pub const MAX_BACKWARD_MS: i64 = 1_000;
/// A video step forwards beyond this is a discontinuity (no encoder leaves five seconds
/// between two frames of a live stream; a paused source resumes with a new keyframe).
pub const MAX_FORWARD_MS: i64 = 5_000;
/// Frame duration assumed before two frames have been seen.
const DEFAULT_FRAME_MS: i64 = 33;

/// Where a packet lands on the session's media timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Milliseconds after the session's first keyframe.
    At(u64),
    /// Before the session's start (late audio, reordered frames around the first keyframe).
    Before,
    /// The timestamp jumped: `media_end_ms` is where the session's media ends.
    Discontinuity { media_end_ms: u64, step_ms: i64 },
}

#[derive(Debug, Clone)]
pub struct MediaClock {
    last_raw: u32,
    media_ms: i64,
    frame_ms: i64,
    /// The instant media time zero corresponds to.
    anchor: Instant,
}

impl MediaClock {
    /// A session starting at the keyframe stamped `base_raw`, whose media zero is `anchor`.
    pub fn new(base_raw: u32, anchor: Instant) -> Self {
        Self { last_raw: base_raw, media_ms: 0, frame_ms: DEFAULT_FRAME_MS, anchor }
    }

    /// Places a packet of the track that drives the clock (video, or audio for an
    /// audio-only source) by its decode timestamp, and advances the clock.
    pub fn advance(&mut self, raw: u32) -> Placement {
        let step = i64::from(raw.wrapping_sub(self.last_raw) as i32);
        if !(-MAX_BACKWARD_MS..=MAX_FORWARD_MS).contains(&step) {
            return Placement::Discontinuity { media_end_ms: self.media_end_ms(), step_ms: step };
        }
        if step > 0 {
            self.frame_ms = step;
        }
        self.last_raw = raw;
        self.media_ms += step;
        self.place(self.media_ms)
    }

    /// Places an audio packet against the video clock without moving it. Audio far from the
    /// video (across a discontinuity the video has not reached yet) is `Before`: dropped,
    /// never misplaced.
    pub fn audio(&self, raw: u32) -> Placement {
        let step = i64::from(raw.wrapping_sub(self.last_raw) as i32);
        if !(-MAX_FORWARD_MS..=MAX_FORWARD_MS).contains(&step) {
            return Placement::Before;
        }
        self.place(self.media_ms + step)
    }

    fn place(&self, media_ms: i64) -> Placement {
        if media_ms < 0 { Placement::Before } else { Placement::At(media_ms as u64) }
    }

    /// Where the media so far ends: the last frame plus one frame duration.
    pub fn media_end_ms(&self) -> u64 {
        (self.media_ms + self.frame_ms).max(0) as u64
    }

    /// The instant media time zero corresponds to.
    pub fn anchor(&self) -> Instant {
        self.anchor
    }

    /// How far media time is ahead of the wall clock (negative: behind).
    pub fn lead(&self, now: Instant) -> i64 {
        let wall = now.saturating_duration_since(self.anchor).as_millis() as i64;
        self.media_ms - wall
    }

    /// The anchor of a session that continues this one's media at `media_ms`.
    pub fn continuation_anchor(&self, media_ms: u64) -> Instant {
        self.anchor + Duration::from_millis(media_ms)
    }

    /// One frame of the source, as its timestamps step (at least a millisecond).
    pub fn frame(&self) -> Duration {
        Duration::from_millis(self.frame_ms.max(1) as u64)
    }

    /// Places a frame made here (a held picture while the broadcaster is away) one frame
    /// after the last, and advances the clock.
    pub fn fill(&mut self) -> u64 {
        self.media_ms += self.frame_ms;
        self.media_ms.max(0) as u64
    }

    /// A broadcaster that reconnected: its frame stamped `raw` (a keyframe) continues the
    /// media one frame after the last, whatever its timestamps restarted from; its audio is
    /// placed against it from then on.
    pub fn rebase(&mut self, raw: u32) {
        self.last_raw = raw.wrapping_sub(self.frame_ms as u32);
    }
}

/// The source's video frame rate, from the decode timestamps of its latest frames (RTMP
/// carries none reliably; the metadata's is the broadcaster's word). Admission costs a
/// ladder by it and the VA-API template sets its IDR interval from it.
#[derive(Debug, Default)]
pub struct FrameRate {
    dts_ms: std::collections::VecDeque<u32>,
}

impl FrameRate {
    const KEPT: usize = 61;

    pub fn observe(&mut self, dts_ms: u32) {
        if self.dts_ms.back().is_some_and(|last| dts_ms.wrapping_sub(*last) as i32 <= 0) {
            // Out of order or a restart: measure afresh.
            self.dts_ms.clear();
        }
        if self.dts_ms.len() == Self::KEPT {
            self.dts_ms.pop_front();
        }
        self.dts_ms.push_back(dts_ms);
    }

    /// Frames per second over the kept frames, once there are ten.
    pub fn fps(&self) -> Option<f64> {
        let (first, last) = (self.dts_ms.front()?, self.dts_ms.back()?);
        let span_ms = last.wrapping_sub(*first);
        (self.dts_ms.len() >= 10 && span_ms > 0).then(|| ((self.dts_ms.len() - 1) as f64 * 1000.0 / f64::from(span_ms)).clamp(1.0, 240.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_rate_from_decode_timestamps() {
        let mut rate = FrameRate::default();
        assert_eq!(rate.fps(), None);
        // 29.97 fps as RTMP's milliseconds round it: 33, 33, 34, ...
        for i in 0..100u32 {
            rate.observe(i * 1001 / 30);
        }
        assert!((rate.fps().unwrap() - 29.97).abs() < 0.05, "{:?}", rate.fps());
        for i in 0..5u32 {
            rate.observe(i * 16);
        }
        assert_eq!(rate.fps(), None, "a restart measures afresh");
        for i in 5..30u32 {
            rate.observe(i * 1000 / 60);
        }
        assert!((rate.fps().unwrap() - 60.0).abs() < 1.0, "{:?}", rate.fps());
    }

    fn clock(base: u32) -> MediaClock {
        MediaClock::new(base, Instant::now())
    }

    #[test]
    fn steady_frames_accumulate_and_a_wrap_at_2_pow_32_passes() {
        let mut c = clock(u32::MAX - 50);
        assert_eq!(c.advance(u32::MAX - 50), Placement::At(0));
        assert_eq!(c.advance(u32::MAX - 17), Placement::At(33));
        assert_eq!(c.advance(15), Placement::At(66), "2^32 wrap is one ordinary step");
        assert_eq!(c.advance(48), Placement::At(99));
        assert_eq!(c.audio(40), Placement::At(91));
    }

    #[test]
    fn ffmpegs_wrap_at_2_pow_31_is_a_discontinuity_where_the_media_ended() {
        let base = 2_147_466_352u32;
        let mut c = clock(base);
        let mut raw = base;
        for _ in 0..500 {
            assert!(matches!(c.advance(raw), Placement::At(_)));
            raw += 33;
        }
        let end = c.media_end_ms();
        assert_eq!(end, 500 * 33);
        match c.advance(5) {
            Placement::Discontinuity { media_end_ms, step_ms } => {
                assert_eq!(media_end_ms, end);
                assert!(step_ms < -2_000_000_000, "{step_ms}");
            }
            other => panic!("{other:?}"),
        }
        // Audio already across the jump is not placed on the old timeline.
        assert_eq!(c.audio(20), Placement::Before);
    }

    #[test]
    fn restarts_and_forward_jumps_are_discontinuities_small_reorders_are_not() {
        let mut c = clock(90_000);
        c.advance(90_000);
        c.advance(90_033);
        assert_eq!(c.advance(90_000), Placement::At(0), "a reordered frame stays on the timeline");
        assert!(matches!(c.advance(0), Placement::Discontinuity { .. }), "timestamps restarted");
        assert!(matches!(c.advance(90_033 + 6_000), Placement::Discontinuity { .. }), "six-second jump");
        assert_eq!(c.audio(89_000), Placement::Before, "audio before the first keyframe");
    }

    #[test]
    fn held_frames_and_a_reconnect_continue_the_media() {
        let mut c = clock(5_000);
        for i in 0..=30u32 {
            c.advance(5_000 + i * 40);
        }
        assert_eq!(c.media_end_ms(), 1_240);
        // Held frames while the broadcaster is away, one frame apart.
        assert_eq!((c.fill(), c.fill()), (1_240, 1_280));
        // It reconnects with timestamps from zero: its keyframe follows the held frames.
        c.rebase(0);
        assert_eq!(c.advance(0), Placement::At(1_320));
        assert_eq!(c.audio(20), Placement::At(1_340));
        assert_eq!(c.advance(40), Placement::At(1_360));
    }

    #[test]
    fn lead_compares_media_with_the_wall_clock() {
        let start = Instant::now();
        let mut c = MediaClock::new(0, start);
        for i in 0..=90u32 {
            c.advance(i * 33);
        }
        assert_eq!(c.lead(start), 2970);
        assert_eq!(c.lead(start + Duration::from_secs(10)), 2970 - 10_000);
        assert_eq!(c.continuation_anchor(c.media_end_ms()), start + Duration::from_millis(3003));
    }
}
