//! A silent AAC-LC frame for a source's audio configuration: what a held stream's audio
//! carries while its broadcaster reconnects (`stream::hold`). Encoded by `avenc_aac` (the
//! same libav that decodes the video) from `audiotestsrc wave=silence` at the source's
//! rate and channel count, so its bitstream matches the configuration every player already
//! decodes with; the frame taken is one past the encoder's priming.

use bytes::Bytes;
use gst::prelude::*;
use gst_app::AppSink;

use super::TranscodeError;
use super::source::{AAC_LC, AacConfig};

/// Frames encoded; the last is taken (the first carry the encoder's priming).
const FRAMES: u32 = 8;

/// One raw AAC frame (1024 samples) of silence for `config`: AAC-LC, mono or stereo only
/// (other layouts need a channel mask the source does not state).
pub fn silent_aac_frame(config: &AacConfig) -> Result<Bytes, TranscodeError> {
    if config.object_type != AAC_LC || !(1..=2).contains(&config.channels) {
        return Err(TranscodeError::Start(format!(
            "no silence for AAC object type {} with {} channels (AAC-LC, mono or stereo only)",
            config.object_type, config.channels
        )));
    }
    super::init()?;
    let description = format!(
        "audiotestsrc wave=silence samplesperbuffer=1024 num-buffers={FRAMES} ! audio/x-raw,rate={},channels={} \
         ! avenc_aac ! audio/mpeg,mpegversion=4,stream-format=raw ! appsink name=out sync=false",
        config.sample_rate, config.channels
    );
    let pipeline = gst::parse::launch(&description)
        .map_err(|e| TranscodeError::Parse(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| TranscodeError::Parse("not a pipeline".into()))?;
    let sink = pipeline.by_name("out").and_then(|e| e.downcast::<AppSink>().ok()).ok_or_else(|| TranscodeError::NoElement("out".into()))?;
    pipeline.set_state(gst::State::Playing).map_err(|e| TranscodeError::Start(e.to_string()))?;
    let mut last = None;
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(5)) {
        last = sample.buffer().and_then(|b| b.map_readable().ok().map(|m| Bytes::copy_from_slice(&m)));
    }
    let _ = pipeline.set_state(gst::State::Null);
    last.filter(|frame| !frame.is_empty()).ok_or_else(|| TranscodeError::Start("avenc_aac produced no frame of silence".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_frame_for_lc_mono_and_stereo_only() {
        for (rate, channels) in [(48_000, 2), (44_100, 1), (22_050, 2)] {
            let frame = silent_aac_frame(&AacConfig { object_type: AAC_LC, sample_rate: rate, channels }).unwrap();
            // Silence codes in a few bytes (a frame of sound at 128 kbit/s is ~340).
            assert!((1..=64).contains(&frame.len()), "{rate} Hz x{channels}: {} bytes", frame.len());
        }
        assert!(silent_aac_frame(&AacConfig { object_type: 5, sample_rate: 48_000, channels: 2 }).is_err(), "HE-AAC");
        assert!(silent_aac_frame(&AacConfig { object_type: AAC_LC, sample_rate: 48_000, channels: 6 }).is_err(), "5.1");
    }
}
