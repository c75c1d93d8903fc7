//! What the uplink probe reports: one `UplinkEstimate` per question, and the once-a-second
//! `ProbeSample` history the stats route serialises to JSON. Plain data; the arithmetic lives
//! in `probe/mod.rs`.

use crate::ladder::config::RungConfig;

/// The probe's view of one publish at one instant. Rates are bit/s. `None` means "not
/// measured yet" (too little time or media in the window), never zero.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UplinkEstimate {
    /// Sustained arrival rate of the connection's bytes (RTMP framing included): bytes
    /// received over the sliding window's length.
    pub throughput_bps: f64,
    /// How far `throughput_bps` can be trusted, 0..=1: grows with the time observed and the
    /// number of reads, falls when arrivals in the window are bursty or stalled.
    pub confidence: f64,
    /// What the broadcaster's encoder produces: media payload over the MEDIA time it spans.
    pub source_bitrate_bps: Option<f64>,
    /// The video part of `source_bitrate_bps` (what ladder rungs are compared with).
    pub source_video_bps: Option<f64>,
    /// The audio part of `source_bitrate_bps`.
    pub source_audio_bps: Option<f64>,
    /// What onMetaData claims (video + audio). A hint: the encoder may not honour it.
    pub metadata_bps: Option<f64>,
    /// Media time advanced per wall second over the window. About 1.0 when the uplink keeps
    /// up; a sustained value below 1.0 means media falls further behind real time.
    pub media_rate: Option<f64>,
    /// How far media progression lags wall time, beyond the smallest lag seen this publish
    /// (the lag of a connection with an empty send queue).
    pub backlog_ms: u64,
    /// The backlog's trend over the window: milliseconds gained per wall second.
    pub backlog_growth_ms_per_s: Option<f64>,
    /// Media is falling behind right now (window `media_rate` under the threshold, or a large
    /// backlog that is not draining).
    pub lagging: bool,
    /// `lagging` has held at every second of the hold period: the uplink cannot carry what
    /// the encoder produces.
    pub uplink_bound: bool,
    /// What the broadcaster should send (see the policy in `probe/mod.rs`).
    pub recommended_publish_bps: Option<f64>,
    /// The tallest catalogue rung whose video bitrate plus the source's audio fits
    /// `recommended_publish_bps`; `None` when nothing fits or nothing is known.
    pub recommended_height: Option<u32>,
}

/// One entry of the probe's history: the estimate as it stood at `at_ms` after the publish
/// began.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProbeSample {
    pub at_ms: u64,
    #[serde(flatten)]
    pub estimate: UplinkEstimate,
}

/// The tallest rung of `catalogue` whose video bitrate, plus `audio_bps` for the sound that
/// travels with it, fits in `publish_bps`. `None` when not even the smallest rung fits: the
/// caller decides whether to suggest it anyway.
pub fn recommended_height(publish_bps: f64, audio_bps: f64, catalogue: &[RungConfig]) -> Option<u32> {
    catalogue
        .iter()
        .filter(|r| f64::from(r.bitrate_kbps) * 1000.0 + audio_bps <= publish_bps)
        .map(|r| r.height)
        .max()
}
