//! The transcode pipeline of one session as a gst-launch description: a pure function of
//! the ladder plan, the backend's template and the audio plan, so it can be unit-tested and
//! logged. Video is decoded once (the template's decode section) and split with a tee;
//! every rung scales and encodes (its scale and encode sections) and muxes into its own
//! cmafmux (CMAF takes one track per muxer) and appsink.

use std::time::Duration;

use super::backend::{source_colorimetry, Template, TemplateError, TemplateVars};
use super::capability::Device;
use crate::ladder::LadderPlan;

/// What happens to the source audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioPlan {
    /// No audio in the source.
    None,
    /// AAC-LC: repackaged as it is.
    Copy,
    /// Other AAC profiles: decoded and re-encoded to AAC-LC at this bitrate (bit/s).
    Transcode { bitrate: u32 },
}

#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub ladder: LadderPlan,
    /// The backend's chain, and the device it runs on.
    pub template: Template,
    pub device: Device,
    pub x264_preset: String,
    /// Software decoder threads (`{decode_threads}`).
    pub decode_threads: u32,
    /// The source's frame rate, for `{keyint_frames}` (frames per segment).
    pub fps: f64,
    /// The source's picture height, for `{colorimetry}`.
    pub source_height: u32,
    pub audio: AudioPlan,
    pub segment_duration: Duration,
    /// Low latency: every segment is cut into chunks of this duration.
    pub chunk_duration: Option<Duration>,
}

pub const VIDEO_SRC: &str = "video_src";
pub const AUDIO_SRC: &str = "audio_src";
pub const AUDIO_SINK: &str = "sink_audio";
/// The audio muxer: told the video's segment boundaries, so audio segment N covers the
/// same media time as video segment N (within one audio frame).
pub const AUDIO_MUX: &str = "mux_audio";
/// The tee that splits the decoded video into the rungs: keyframes are forced at its input.
pub const VIDEO_SPLIT: &str = "video_split";
/// Bounds of the video appsrc's queue: past either the stream actor stops taking input (and
/// the broadcaster's TCP window closes); below half of them the appsrc asks for more. In
/// media time, so that a pipeline that cannot keep up holds at most a second of backlog
/// (the rest waits in the broadcaster, where it shows as media behind real time) instead
/// of tens of seconds at a low bitrate.
pub const VIDEO_QUEUE_TIME: std::time::Duration = std::time::Duration::from_secs(1);
pub const VIDEO_QUEUE_BYTES: u64 = 8 * 1024 * 1024;
/// Bounds of the audio appsrc's queue in a stream with video, past either of which the
/// stream actor stops taking input as it does for video. Longer in time than the video's:
/// the audio muxer may wait up to two seconds for the video to decide a segment boundary,
/// and audio must not hold the video's input back meanwhile. Real AAC (512 kbit/s at most)
/// fills 2 s with 128 KB; padded audio reaches the byte bound first.
pub const AUDIO_QUEUE_TIME: std::time::Duration = std::time::Duration::from_secs(2);
pub const AUDIO_QUEUE_BYTES: u64 = 1024 * 1024;
/// The audio appsrc's own bound, twice the actor's: the actor waits below it, so it is
/// reached only if that wait were skipped; past it new audio is dropped (`leaky-type`),
/// never queued without limit.
pub const AUDIO_QUEUE_HARD_FACTOR: u64 = 2;

pub fn video_sink_name(rendition: &str) -> String {
    format!("sink_{rendition}")
}

/// A video rung's muxer: cut by split-now events (`boundaries::split_video_fragments`).
pub fn video_mux_name(rendition: &str) -> String {
    format!("mux_{rendition}")
}

impl PipelineSpec {
    /// True when the source has video (an audio-only source, as radio stations send, has
    /// an empty ladder).
    pub fn has_video(&self) -> bool {
        !self.ladder.rungs.is_empty()
    }

    pub fn describe(&self) -> Result<String, TemplateError> {
        // Keyframes are forced upstream of the tee at segment boundaries (see
        // `KeyframeSchedule`), so the muxers must not ask each encoder on their own; they
        // cut fragments and chunks only where split-now events say (`boundaries`). In that
        // mode the durations only set the latency the muxer reports.
        let durations = match self.chunk_duration {
            Some(chunk) => format!("fragment-duration={} chunk-duration={}", self.segment_duration.as_nanos(), chunk.as_nanos()),
            None => format!("fragment-duration={}", self.segment_duration.as_nanos()),
        };
        let mux = |name: &str| format!("cmafmux name={name} manual-split=true {durations} send-force-keyunit=false");
        let sink = |name: &str| format!("appsink name={name} sync=false async=false buffer-list=true");
        let queue_ns = VIDEO_QUEUE_TIME.as_nanos();
        let (device, gpu) = self.device.template_values();
        let vars = |name: String, width: u32, height: u32, bitrate_kbps: u32| TemplateVars {
            device: device.clone(),
            gpu,
            decode_threads: self.decode_threads,
            width,
            height,
            name,
            bitrate_kbps,
            preset: self.x264_preset.clone(),
            keyint_frames: (self.fps * self.segment_duration.as_secs_f64()).round().clamp(1.0, 1024.0) as u32,
            colorimetry: source_colorimetry(self.source_height).to_owned(),
        };
        let mut parts = Vec::new();
        if let Some(top) = self.ladder.rungs.first() {
            let decode = self.template.render(&vars(String::new(), top.width, top.height, top.bitrate_kbps))?.decode;
            parts.push(format!(
                "appsrc name={VIDEO_SRC} format=time max-bytes={VIDEO_QUEUE_BYTES} max-time={queue_ns} min-percent=50 ! h264parse ! {decode} ! tee name={VIDEO_SPLIT}"
            ));
        }
        for rung in &self.ladder.rungs {
            let chain = self.template.render(&vars(format!("enc_{}", rung.id), rung.width, rung.height, rung.bitrate_kbps))?;
            parts.push(format!(
                "{VIDEO_SPLIT}. ! queue max-size-buffers=30 max-size-bytes=0 max-size-time=0 ! {scale} ! {encode} ! h264parse \
                 ! video/x-h264,stream-format=avc,alignment=au ! {mux} ! {sink}",
                scale = chain.scale,
                encode = chain.encode,
                mux = mux(&video_mux_name(rung.id.as_str())),
                sink = sink(&video_sink_name(rung.id.as_str())),
            ));
        }
        let audio_chain = match self.audio {
            AudioPlan::None => None,
            AudioPlan::Copy => Some("aacparse".to_owned()),
            AudioPlan::Transcode { bitrate } => Some(format!(
                "aacparse ! avdec_aac ! audioconvert ! audioresample ! avenc_aac bitrate={bitrate} ! aacparse"
            )),
        };
        if let Some(chain) = audio_chain {
            // The audio muxer cuts where the video's segments start, or on the segment grid
            // without video (split-now events, see `transcode::AudioCuts`), not on its own
            // schedule, which drifts.
            let (max_bytes, max_ns) = (AUDIO_QUEUE_BYTES * AUDIO_QUEUE_HARD_FACTOR, AUDIO_QUEUE_TIME.as_nanos() * u128::from(AUDIO_QUEUE_HARD_FACTOR));
            parts.push(format!(
                "appsrc name={AUDIO_SRC} format=time max-bytes={max_bytes} max-time={max_ns} min-percent=50 leaky-type=upstream ! {chain} \
                 ! {} ! {}",
                mux(AUDIO_MUX),
                sink(AUDIO_SINK)
            ));
        }
        Ok(parts.join("  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::config::default_rungs;
    use crate::ladder::{plan, SourceFormat};
    use crate::transcode::backend::Backend;

    fn spec(audio: AudioPlan) -> PipelineSpec {
        PipelineSpec {
            ladder: plan(SourceFormat { width: 1280, height: 720 }, &default_rungs()),
            template: Template::embedded(Backend::Software),
            device: Device::Cpu,
            x264_preset: "veryfast".into(),
            decode_threads: 2,
            fps: 30.0,
            source_height: 720,
            audio,
            segment_duration: Duration::from_secs(1),
            chunk_duration: Some(Duration::from_millis(200)),
        }
    }

    #[test]
    fn one_muxer_and_sink_per_rendition() {
        let text = spec(AudioPlan::Copy).describe().unwrap();
        let muxers = "manual-split=true fragment-duration=1000000000 chunk-duration=200000000 send-force-keyunit=false";
        for name in ["mux_720p", "mux_480p", "mux_360p", "mux_audio"] {
            assert!(text.contains(&format!("cmafmux name={name} {muxers}")), "{name} in {text}");
        }
        assert_eq!(text.matches("avdec_h264").count(), 1, "decode once");
        assert_eq!(text.matches("videoconvertscale").count(), 3, "one scale-and-convert pass per rung");
        for name in ["sink_720p", "sink_480p", "sink_360p", "sink_audio"] {
            assert!(text.contains(&format!("name={name} ")), "{name} in {text}");
        }
        assert!(text.contains("width=854,height=480"));
        assert!(!spec(AudioPlan::None).describe().unwrap().contains(AUDIO_SRC));
        assert!(spec(AudioPlan::Transcode { bitrate: 128000 }).describe().unwrap().contains("avenc_aac bitrate=128000"));
    }

    #[test]
    fn audio_only_sources_get_an_audio_pipeline_on_the_segment_schedule() {
        let mut spec = spec(AudioPlan::Copy);
        spec.ladder.rungs.clear();
        let text = spec.describe().unwrap();
        assert!(!text.contains(VIDEO_SRC) && !text.contains("avdec_h264"), "{text}");
        assert!(text.contains("cmafmux name=mux_audio manual-split=true"), "{text}");
        super::super::init().unwrap();
        gst::parse::launch(&text).unwrap();
    }

    #[test]
    fn description_parses_in_gstreamer() {
        super::super::init().unwrap();
        for audio in [AudioPlan::Copy, AudioPlan::Transcode { bitrate: 96000 }] {
            gst::parse::launch(&spec(audio).describe().unwrap()).unwrap();
        }
    }
}
