//! Transcoding with GStreamer: one pipeline per publish session, built from the backend
//! templates in pipelines/ (`backend`), on a backend and device chosen per stream
//! (`capability` probes the host, `admission` counts sessions and cores, `resources` ties
//! them together at start-up). Packets from the stream actor enter through appsrcs; every rendition's
//! cmafmux output leaves through an appsink whose callback hands whole init and media
//! segments to the packager. Bus errors surface to the stream actor, which tears the
//! session down; other streams never share a pipeline with it.

pub mod admission;
pub mod backend;
pub mod capability;
pub mod file;
#[cfg(feature = "nvenc-sdk")]
pub mod nvenc_sdk;
pub mod resources;
pub mod source;
pub mod spec;

use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::Bytes;
use gst::prelude::*;
use gst_app::{AppSink, AppSrc};

use crate::media::{RenditionId, SessionId, StreamId, TrackKind};
use crate::package::fragment::{aac_codecs, avc_codecs, ChunkMeta, FragmentAssembler, FragmentError, MuxerOutput};
use crate::package::timeline::RenditionInfo;
use crate::package::Packager;
use spec::{PipelineSpec, AUDIO_MUX, AUDIO_SINK, AUDIO_SRC, VIDEO_SPLIT, VIDEO_SRC};

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("GStreamer failed to initialise: {0}")]
    Init(String),
    #[error("pipeline template: {0}")]
    Template(#[from] backend::TemplateError),
    #[error("GStreamer element(s) missing: {0} (install the plugin packages: deploy/install-deps.sh)")]
    MissingElements(String),
    #[error("pipeline does not parse: {0}")]
    Parse(String),
    #[error("pipeline has no element named {0}")]
    NoElement(String),
    #[error("pipeline refused to start: {0}")]
    Start(String),
    #[error("pipeline stopped accepting data: {0}")]
    Push(String),
}

static INIT: Once = Once::new();

/// Initialises GStreamer once per process, registers the fMP4 muxers and routes
/// GStreamer's warnings and errors into `tracing`.
pub fn init() -> Result<(), TranscodeError> {
    gst::init().map_err(|e| TranscodeError::Init(e.to_string()))?;
    let mut result = Ok(());
    INIT.call_once(|| {
        result = gstfmp4::plugin_register_static().map_err(|e| TranscodeError::Init(e.to_string()));
        gst::log::remove_default_log_function();
        if std::env::var_os("GST_DEBUG").is_none() {
            gst::log::set_default_threshold(gst::DebugLevel::Warning);
        }
        gst::log::add_log_function(|category, level, file, function, line, object, message| {
            let object = object.map(|o| o.to_string()).unwrap_or_default();
            let text = message.get().map(|m| m.to_string()).unwrap_or_default();
            match level {
                gst::DebugLevel::Error => {
                    tracing::error!(target: "gstreamer", category = category.name(), %object, "{text} ({file}:{line} {function})")
                }
                gst::DebugLevel::Warning => {
                    tracing::warn!(target: "gstreamer", category = category.name(), %object, "{text} ({file}:{line} {function})")
                }
                _ => tracing::info!(target: "gstreamer", category = category.name(), %object, "{text}"),
            }
        });
    });
    result
}

/// Where a session's muxed objects go.
#[derive(Clone)]
pub struct SessionOutput {
    pub packager: Arc<Packager>,
    pub stream: StreamId,
    pub session: SessionId,
}

/// A rendition's appsink and how to name its codec.
pub struct SinkBinding {
    pub rendition: RenditionId,
    pub kind: TrackKind,
    /// For audio the codecs string is known up front; video reads it from the init segment.
    pub audio_codecs: Option<String>,
}

/// What a session's pipeline takes in and gives out, from its ladder plan and the source's
/// audio configuration: shared by live sessions and `rackcast transcode`.
pub struct SessionIo {
    pub audio_plan: spec::AudioPlan,
    pub renditions: Vec<RenditionInfo>,
    pub sinks: Vec<SinkBinding>,
    pub audio_caps: Option<gst::Caps>,
}

/// The rendition id of the audio track.
pub fn audio_rendition() -> RenditionId {
    RenditionId::parse("audio").expect("valid id")
}

/// The appsrc caps of an AVC source, from its AVCDecoderConfigurationRecord.
pub fn avc_caps(avcc: &[u8]) -> gst::Caps {
    gst::Caps::builder("video/x-h264")
        .field("stream-format", "avc")
        .field("alignment", "au")
        .field("codec_data", gst::Buffer::from_slice(avcc.to_vec()))
        .build()
}

impl SessionIo {
    /// `audio`: the source's AAC configuration and its raw AudioSpecificConfig. AAC-LC is
    /// copied; other profiles are re-encoded to AAC-LC at `audio_bitrate`.
    pub fn new(plan: &crate::ladder::LadderPlan, audio: Option<(&source::AacConfig, &[u8])>, audio_bitrate: u32) -> Self {
        let audio_plan = match &audio {
            None => spec::AudioPlan::None,
            Some((aac, _)) if aac.object_type == source::AAC_LC => spec::AudioPlan::Copy,
            Some(_) => spec::AudioPlan::Transcode { bitrate: audio_bitrate },
        };
        let mut renditions: Vec<RenditionInfo> = plan
            .rungs
            .iter()
            .map(|r| RenditionInfo {
                id: r.id.clone(),
                kind: TrackKind::Video,
                bandwidth: r.bitrate_kbps * 1000,
                width: r.width,
                height: r.height,
                timescale: 90_000,
                sample_rate: 0,
                channels: 0,
            })
            .collect();
        let mut sinks: Vec<SinkBinding> =
            plan.rungs.iter().map(|r| SinkBinding { rendition: r.id.clone(), kind: TrackKind::Video, audio_codecs: None }).collect();
        let mut audio_caps = None;
        if let Some((aac, asc)) = audio {
            renditions.push(RenditionInfo {
                id: audio_rendition(),
                kind: TrackKind::Audio,
                // A copied track keeps the source's bitrate, which only the metadata could
                // tell; the configured AAC bitrate is the honest upper bound players need.
                bandwidth: audio_bitrate,
                width: 0,
                height: 0,
                timescale: aac.sample_rate,
                sample_rate: aac.sample_rate,
                channels: aac.channels,
            });
            let object_type = if audio_plan == spec::AudioPlan::Copy { aac.object_type } else { source::AAC_LC };
            sinks.push(SinkBinding { rendition: audio_rendition(), kind: TrackKind::Audio, audio_codecs: Some(aac_codecs(object_type)) });
            audio_caps = Some(
                gst::Caps::builder("audio/mpeg")
                    .field("mpegversion", 4i32)
                    .field("stream-format", "raw")
                    .field("codec_data", gst::Buffer::from_slice(asc.to_vec()))
                    .field("rate", aac.sample_rate as i32)
                    .field("channels", aac.channels as i32)
                    .build(),
            );
        }
        Self { audio_plan, renditions, sinks, audio_caps }
    }
}

/// A running pipeline for one session. Clones are handles to the same pipeline (for a
/// blocking call on another thread).
#[derive(Clone)]
pub struct Transcoder {
    pipeline: gst::Pipeline,
    video_src: Option<AppSrc>,
    audio_src: Option<AppSrc>,
    /// How long one AAC frame (1024 samples) of the source lasts.
    audio_frame: Option<gst::ClockTime>,
    /// Woken when an appsrc asks for data (its queue fell below half its bound).
    room: Arc<tokio::sync::Notify>,
    /// The video's segment boundaries (ended on stop, so no audio thread waits on them).
    boundaries: Arc<Boundaries>,
}

impl Transcoder {
    /// Starts the pipeline of `spec`: `video_caps` when it has video (a ladder),
    /// `audio_caps` when the source has audio.
    pub fn start(
        spec: &PipelineSpec,
        video_caps: Option<gst::Caps>,
        audio_caps: Option<gst::Caps>,
        sinks: Vec<SinkBinding>,
        output: SessionOutput,
    ) -> Result<Self, TranscodeError> {
        let description = spec.describe()?;
        tracing::debug!(%description, "launching pipeline");
        let mut context = gst::ParseContext::new();
        let element = gst::parse::launch_full(&description, Some(&mut context), gst::ParseFlags::FATAL_ERRORS).map_err(|e| {
            let missing = context.missing_elements();
            if missing.is_empty() {
                TranscodeError::Parse(e.to_string())
            } else {
                TranscodeError::MissingElements(missing.join(", "))
            }
        })?;
        let pipeline = element.downcast::<gst::Pipeline>().map_err(|_| TranscodeError::Parse("not a pipeline".into()))?;
        let appsrc = |name: &str| -> Result<AppSrc, TranscodeError> {
            pipeline
                .by_name(name)
                .and_then(|e| e.downcast::<AppSrc>().ok())
                .ok_or_else(|| TranscodeError::NoElement(name.to_owned()))
        };
        let with_caps = |name: &str, caps: Option<gst::Caps>| -> Result<Option<AppSrc>, TranscodeError> {
            let Some(caps) = caps else { return Ok(None) };
            let src = appsrc(name)?;
            src.set_caps(Some(&caps));
            Ok(Some(src))
        };
        let video_src = with_caps(VIDEO_SRC, video_caps.filter(|_| spec.has_video()))?;
        let audio_frame = audio_caps
            .as_ref()
            .and_then(|c| c.structure(0)?.get::<i32>("rate").ok())
            .filter(|rate| *rate > 0)
            .map(|rate| gst::ClockTime::from_nseconds(1024 * 1_000_000_000 / rate as u64));
        let audio_src = with_caps(AUDIO_SRC, audio_caps)?;
        if video_src.is_none() && audio_src.is_none() {
            return Err(TranscodeError::NoElement("an input (no video, no audio)".into()));
        }
        let room = Arc::new(tokio::sync::Notify::new());
        // Either input asking for data may be the one the actor waits on.
        for src in video_src.iter().chain(&audio_src) {
            let waker = Arc::clone(&room);
            src.set_callbacks(gst_app::AppSrcCallbacks::builder().need_data(move |_, _| waker.notify_waiters()).build());
        }
        let boundaries = Arc::new(Boundaries::default());
        let audio_cuts = Arc::new(Boundaries::default());
        if video_src.is_some() {
            force_keyframes_at_boundaries(&pipeline, spec.segment_duration, Arc::clone(&boundaries))?;
        }
        if audio_src.is_some() {
            let video = video_src.as_ref().map(|_| Arc::clone(&boundaries));
            cut_audio_segments(&pipeline, spec.segment_duration, video, Arc::clone(&audio_cuts))?;
        }
        for binding in sinks {
            let name = match binding.kind {
                TrackKind::Video => spec::video_sink_name(binding.rendition.as_str()),
                TrackKind::Audio => AUDIO_SINK.to_owned(),
            };
            let sink = pipeline
                .by_name(&name)
                .and_then(|e| e.downcast::<AppSink>().ok())
                .ok_or_else(|| TranscodeError::NoElement(name.clone()))?;
            let cuts = if binding.kind == TrackKind::Video { &boundaries } else { &audio_cuts };
            attach_sink(&sink, binding, output.clone(), Arc::clone(cuts));
        }
        pipeline.set_state(gst::State::Playing).map_err(|e| TranscodeError::Start(e.to_string()))?;
        Ok(Self { pipeline, video_src, audio_src, audio_frame, room, boundaries })
    }

    pub fn bus(&self) -> gst::Bus {
        self.pipeline.bus().expect("a pipeline has a bus")
    }

    /// Changes a running rung's encoder bitrate in place (x264enc, nvh264enc and vah264enc
    /// all accept a new `bitrate` while playing).
    pub fn set_bitrate(&self, rendition: &RenditionId, kbps: u32) -> Result<(), TranscodeError> {
        let name = format!("enc_{rendition}");
        let encoder = self.pipeline.by_name(&name).ok_or(TranscodeError::NoElement(name))?;
        encoder.set_property_from_str("bitrate", &kbps.to_string());
        Ok(())
    }

    /// Woken when the video appsrc next asks for data. Create the `notified()` future before
    /// checking `input_full`, so that a wake-up between the two is not lost.
    pub fn room(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.room)
    }

    /// Whether an input's queue is at either of its bounds: the paced appsrc's (see
    /// `VIDEO_QUEUE_TIME`; an audio-only source's audio has the video's time bound and the
    /// audio's byte bound), or the audio's beside the video (`AUDIO_QUEUE_TIME`).
    pub fn input_full(&self) -> bool {
        let over = |src: &AppSrc, time: Duration, bytes: u64| {
            src.current_level_time().is_some_and(|t| u128::from(t.nseconds()) >= time.as_nanos()) || src.current_level_bytes() >= bytes
        };
        let audio_time = if self.video_src.is_some() { spec::AUDIO_QUEUE_TIME } else { spec::VIDEO_QUEUE_TIME };
        self.video_src.as_ref().is_some_and(|v| over(v, spec::VIDEO_QUEUE_TIME, spec::VIDEO_QUEUE_BYTES))
            || self.audio_src.as_ref().is_some_and(|a| over(a, audio_time, spec::AUDIO_QUEUE_BYTES))
    }

    /// Pushes one video access unit; without a video branch (an audio-only session) it is
    /// dropped.
    pub fn push_video(&self, pts_ms: u64, dts_ms: u64, keyframe: bool, data: Bytes) -> Result<(), TranscodeError> {
        let Some(src) = &self.video_src else { return Ok(()) };
        let mut buffer = gst::Buffer::from_slice(data);
        {
            let buffer = buffer.get_mut().expect("fresh buffer is writable");
            buffer.set_pts(gst::ClockTime::from_mseconds(pts_ms));
            buffer.set_dts(gst::ClockTime::from_mseconds(dts_ms));
            if !keyframe {
                buffer.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        src.push_buffer(buffer).map(|_| ()).map_err(|e| TranscodeError::Push(format!("video: {e:?}")))
    }

    /// Pushes a demuxed buffer as it is (`rackcast transcode`: timestamps in nanoseconds).
    pub fn push_buffer(&self, kind: TrackKind, buffer: gst::Buffer) -> Result<(), TranscodeError> {
        let src = match kind {
            TrackKind::Video => &self.video_src,
            TrackKind::Audio => &self.audio_src,
        };
        let Some(src) = src else { return Ok(()) };
        src.push_buffer(buffer).map(|_| ()).map_err(|e| TranscodeError::Push(format!("{kind:?}: {e:?}")))
    }

    /// Ends one input (`rackcast transcode` at the end of the file's track).
    pub fn end_input(&self, kind: TrackKind) {
        let src = match kind {
            TrackKind::Video => &self.video_src,
            TrackKind::Audio => &self.audio_src,
        };
        if let Some(src) = src {
            let _ = src.end_of_stream();
        }
    }

    /// Pushes one AAC frame (1024 samples); without an audio branch the frame is dropped.
    pub fn push_audio(&self, pts_ms: u64, data: Bytes) -> Result<(), TranscodeError> {
        let Some(src) = &self.audio_src else { return Ok(()) };
        let mut buffer = gst::Buffer::from_slice(data);
        let frame = buffer.get_mut().expect("fresh buffer is writable");
        frame.set_pts(gst::ClockTime::from_mseconds(pts_ms));
        // Its duration, so that the muxer knows where the last frame of a stream ends.
        frame.set_duration(self.audio_frame);
        src.push_buffer(buffer).map(|_| ()).map_err(|e| TranscodeError::Push(format!("audio: {e:?}")))
    }

    /// Ends the session: EOS flushes the muxers' last partial segments (bounded wait),
    /// then the pipeline goes to Null. Blocking; call from a blocking thread.
    pub fn finish(self, drain_timeout: Duration) {
        for src in self.video_src.iter().chain(&self.audio_src) {
            let _ = src.end_of_stream();
        }
        let bus = self.bus();
        let waited = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(drain_timeout.as_nanos() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        if waited.is_none() {
            tracing::warn!("pipeline did not drain within {drain_timeout:?}; last partial segment dropped");
        }
        self.stop();
    }

    /// Stops at once, dropping whatever is in flight.
    pub fn stop(self) {
        self.boundaries.end();
        if let Err(e) = self.pipeline.set_state(gst::State::Null) {
            tracing::error!("pipeline did not stop cleanly: {e}");
        }
    }
}

/// Decides which decoded frames must be keyframes: the first frame at or after every
/// segment boundary. Deciding once, before the tee, gives every rung its keyframes on the
/// same frames, so segment N of every rung starts at the same media time.
#[derive(Debug)]
pub struct KeyframeSchedule {
    interval_ns: u64,
    next_ns: u64,
}

impl KeyframeSchedule {
    pub fn new(interval: Duration) -> Self {
        Self { interval_ns: interval.as_nanos() as u64, next_ns: 0 }
    }

    /// True when the frame at `pts_ns` (running time) must be a keyframe.
    pub fn is_boundary(&mut self, pts_ns: u64) -> bool {
        if pts_ns < self.next_ns {
            return false;
        }
        self.next_ns = (pts_ns / self.interval_ns + 1) * self.interval_ns;
        true
    }
}

/// The running times at which one rendition kind's segments start, decided upstream of its
/// muxers: the video's as the keyframe schedule chose them, the audio's as `AudioCuts` did.
/// A segment's duration is the distance to the next boundary: the muxer can only estimate
/// its last frame's duration, and a duration listed in the MPD must never change once a
/// player may have read it. The audio waits on the video's for the boundary it must cut at.
#[derive(Debug, Default)]
struct Boundaries {
    list: std::sync::Mutex<BoundaryList>,
    recorded: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct BoundaryList {
    times: std::collections::VecDeque<u64>,
    /// No boundary will follow (the video ended, or the pipeline stops).
    ended: bool,
}

impl Boundaries {
    /// Boundaries kept: far more than the segments between the decoder and the muxers.
    const KEPT: usize = 64;

    fn record(&self, pts_ns: u64) {
        if let Ok(mut list) = self.list.lock() {
            if list.times.len() == Self::KEPT {
                list.times.pop_front();
            }
            list.times.push_back(pts_ns);
        }
        self.recorded.notify_all();
    }

    fn end(&self) {
        if let Ok(mut list) = self.list.lock() {
            list.ended = true;
        }
        self.recorded.notify_all();
    }

    /// The first boundary after a segment that starts at `start_ns` (half a millisecond of
    /// tolerance for the muxer's rounding).
    fn after(&self, start_ns: u64) -> Option<u64> {
        self.list.lock().ok()?.times.iter().copied().find(|b| *b > start_ns + 500_000)
    }

    /// The first boundary at or after `at_ns`, waiting up to `timeout` for the video to
    /// reach it.
    fn wait_at_or_after(&self, at_ns: u64, timeout: Duration) -> Decision {
        let deadline = std::time::Instant::now() + timeout;
        let Ok(mut list) = self.list.lock() else { return Decision::Ended };
        loop {
            if let Some(boundary) = list.times.iter().copied().find(|b| *b >= at_ns) {
                return Decision::At(boundary);
            }
            if list.ended {
                return Decision::Ended;
            }
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else { return Decision::TimedOut };
            list = match self.recorded.wait_timeout(list, left) {
                Ok((list, _)) => list,
                Err(_) => return Decision::Ended,
            };
        }
    }
}

/// What the audio learns about the video's next boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// The video segment starts here.
    At(u64),
    /// The video has not got there in time.
    TimedOut,
    /// The video ended before it: the audio that is left belongs to its last segment.
    Ended,
}

/// Longest the audio waits for the video to decide a segment boundary: the video's input
/// queue holds up to a second of media, and decoding takes its own time. Past it the audio
/// cuts on the segment grid, where the video's boundary almost always is.
const VIDEO_DECISION_WAIT: Duration = Duration::from_secs(2);

/// Decides where audio segments start: before the first audio frame whose middle is at or
/// after the start of the video segment with the same number, so that audio segment N
/// starts within half an audio frame of video segment N. (The muxer's own schedule would
/// drift: AAC frames are 1024 samples, and it fills a fragment with the frames that end
/// before its target.) Pure: the video boundary comes from the caller.
#[derive(Debug)]
struct AudioCuts {
    interval_ns: u64,
    /// The grid time of the next video boundary (video boundaries are the first frames at
    /// or after each multiple of the interval).
    next_grid_ns: u64,
    /// The video boundary of `next_grid_ns`, once known.
    target_ns: Option<u64>,
}

impl AudioCuts {
    fn new(interval: Duration) -> Self {
        let interval_ns = interval.as_nanos() as u64;
        Self { interval_ns, next_grid_ns: interval_ns, target_ns: None }
    }

    /// True when the audio frame `[start_ns, start_ns + duration_ns)` opens a new segment.
    /// `boundary(grid)` gives the video boundary at or after `grid`, or `None` when no video
    /// segment will start there; it is asked only when a frame reaches that grid time.
    fn opens_segment(&mut self, start_ns: u64, duration_ns: u64, boundary: impl FnOnce(u64) -> Option<u64>) -> bool {
        let middle = start_ns + duration_ns / 2;
        if middle < self.next_grid_ns {
            return false;
        }
        let grid = self.next_grid_ns;
        let target = match self.target_ns {
            Some(target) => target,
            None => match boundary(grid) {
                Some(target) => *self.target_ns.insert(target),
                None => return false,
            },
        };
        if middle < target {
            return false;
        }
        self.next_grid_ns = (target / self.interval_ns + 1) * self.interval_ns;
        self.target_ns = None;
        true
    }
}

/// Asks the audio muxer (in manual-split mode) to start a new fragment before every audio
/// frame that `AudioCuts` picks: a split-now event travels in order with the audio, just
/// ahead of that frame. Without video (`video` is `None`) the cuts follow the segment grid.
/// Every cut is recorded in `cuts`: an audio segment's listed duration runs to the next.
fn cut_audio_segments(
    pipeline: &gst::Pipeline,
    interval: Duration,
    video: Option<Arc<Boundaries>>,
    cuts_made: Arc<Boundaries>,
) -> Result<(), TranscodeError> {
    let mux = pipeline.by_name(AUDIO_MUX).ok_or_else(|| TranscodeError::NoElement(AUDIO_MUX.into()))?;
    let pad = mux
        .sink_pads()
        .first()
        .and_then(|sink| sink.peer())
        .ok_or_else(|| TranscodeError::NoElement(format!("{AUDIO_MUX}'s upstream pad")))?;
    let cuts = std::sync::Mutex::new(AudioCuts::new(interval));
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
        let Some(pts) = buffer.pts() else { return gst::PadProbeReturn::Ok };
        let running_time = running_time(pad, pts);
        // AAC-LC at 48 kHz when the parser left no duration.
        let duration = buffer.duration().map_or(21_333_333, |d| d.nseconds());
        let opens = cuts.lock().is_ok_and(|mut cuts| {
            cuts.opens_segment(running_time.nseconds(), duration, |grid| match video.as_ref().map(|b| b.wait_at_or_after(grid, VIDEO_DECISION_WAIT)) {
                None | Some(Decision::TimedOut) => Some(grid),
                Some(Decision::At(boundary)) => Some(boundary),
                Some(Decision::Ended) => None,
            })
        });
        if opens {
            cuts_made.record(running_time.nseconds());
            let split = gst::event::CustomDownstream::builder(gst::Structure::builder("FMP4MuxSplitNow").field("chunk", false).build()).build();
            if !pad.push_event(split) {
                tracing::warn!("audio segment cut at {running_time} was not delivered");
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// `pts` on the running-time clock of the segment that `pad` carries.
fn running_time(pad: &gst::Pad, pts: gst::ClockTime) -> gst::ClockTime {
    pad.sticky_event::<gst::event::Segment>(0)
        .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().and_then(|s| s.to_running_time(pts)))
        .unwrap_or(pts)
}

/// Sends a downstream force-key-unit event ahead of every boundary frame leaving the
/// decode chain for the tee (whatever the backend's chain is); the event travels in order
/// with the frame down every branch.
fn force_keyframes_at_boundaries(pipeline: &gst::Pipeline, interval: Duration, boundaries: Arc<Boundaries>) -> Result<(), TranscodeError> {
    let tee = pipeline.by_name(VIDEO_SPLIT).ok_or_else(|| TranscodeError::NoElement(VIDEO_SPLIT.into()))?;
    let pad = tee
        .static_pad("sink")
        .and_then(|sink| sink.peer())
        .ok_or_else(|| TranscodeError::NoElement(format!("the decode chain's pad linked to {VIDEO_SPLIT}")))?;
    let schedule = std::sync::Mutex::new(KeyframeSchedule::new(interval));
    let ended = Arc::clone(&boundaries);
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::EventView::Eos(_)) = info.event().map(|e| e.view()) {
            ended.end();
        }
        gst::PadProbeReturn::Ok
    });
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else { return gst::PadProbeReturn::Ok };
        let boundary = schedule.lock().map(|mut s| s.is_boundary(pts.nseconds())).unwrap_or(false);
        if boundary {
            boundaries.record(pts.nseconds());
            // No running time: "key unit as soon as possible", i.e. on the frame that follows
            // this serialized event. (GStreamer 1.22's encoder base class compares running
            // times offset by 1000 h against the event's, and drops timed requests.)
            let event = gst_video::DownstreamForceKeyUnitEvent::builder()
                .timestamp(pts)
                .running_time(gst::ClockTime::NONE)
                .all_headers(true)
                .build();
            if !pad.push_event(event) {
                tracing::warn!("keyframe request at {pts} was not delivered");
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// `boundaries`: where the rendition's segments start, as decided upstream of its muxer
/// (the keyframe schedule for video, the audio cuts for audio).
fn attach_sink(sink: &AppSink, binding: SinkBinding, output: SessionOutput, boundaries: Arc<Boundaries>) {
    let span = tracing::Span::current();
    let mut assembler = FragmentAssembler::new(output.packager.max_fragment_bytes());
    let SinkBinding { rendition, kind, audio_codecs } = binding;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let _guard = span.enter();
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                // Encoders offset their timestamps (x264 starts at 1000 h): the timeline
                // uses running time, as the muxer's tfdt does.
                let segment = sample.segment().and_then(|s| s.downcast_ref::<gst::ClockTime>()).cloned();
                let mut handle = |buffer: &gst::BufferRef| -> Result<(), gst::FlowError> {
                    let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                    let flags = buffer.flags();
                    let meta = ChunkMeta {
                        header: flags.contains(gst::BufferFlags::HEADER),
                        delta_unit: flags.contains(gst::BufferFlags::DELTA_UNIT),
                        discont: flags.contains(gst::BufferFlags::DISCONT),
                        marker: flags.contains(gst::BufferFlags::MARKER),
                        pts_ns: buffer
                            .pts()
                            .map(|pts| segment.as_ref().and_then(|s| s.to_running_time(pts)).unwrap_or(pts).nseconds()),
                        duration_ns: buffer.duration().map(|t| t.nseconds()),
                    };
                    match assembler.push(meta, &map) {
                        Ok(Some(MuxerOutput::Init(bytes))) => {
                            let codecs = match kind {
                                TrackKind::Video => avc_codecs(&bytes),
                                TrackKind::Audio => audio_codecs.clone(),
                            };
                            let Some(codecs) = codecs else {
                                tracing::error!(rendition = %rendition, "init segment has no codec configuration");
                                return Err(gst::FlowError::Error);
                            };
                            output.packager.add_init(&output.stream, &output.session, &rendition, bytes, codecs);
                        }
                        Ok(Some(MuxerOutput::Segment(mut segment))) => {
                            // The next segment's start was decided before the muxer could cut
                            // this one; the muxer only estimates its last frame's duration.
                            if let Some(end) = boundaries.after(segment.start_ns) {
                                segment.duration_ns = end - segment.start_ns;
                            }
                            let (start, duration) = (segment.start_ns, segment.duration_ns);
                            let number = output.packager.add_segment(&output.stream, &output.session, &rendition, segment);
                            tracing::trace!(rendition = %rendition, ?number, start, duration, "segment");
                        }
                        Ok(None) => {}
                        Err(FragmentError::TooLarge { .. }) => {
                            // Logged and counted by the packager; the error ends the stream.
                            output.packager.fragment_too_large(&output.stream, &rendition);
                            return Err(gst::FlowError::Error);
                        }
                        Err(e) => {
                            tracing::error!(rendition = %rendition, "muxer output out of order: {e}");
                            return Err(gst::FlowError::Error);
                        }
                    }
                    Ok(())
                };
                if let Some(list) = sample.buffer_list() {
                    for buffer in list.iter() {
                        handle(buffer)?;
                    }
                } else if let Some(buffer) = sample.buffer() {
                    handle(buffer)?;
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_fall_on_the_first_frame_of_each_second() {
        let mut schedule = KeyframeSchedule::new(Duration::from_secs(1));
        let frame_ms = [0u64, 33, 967, 1000, 1033, 1999, 2034, 2067, 4100, 4133];
        let forced: Vec<u64> = frame_ms.into_iter().filter(|ms| schedule.is_boundary(ms * 1_000_000)).collect();
        // 2034 stands in for a dropped 2000; 4100 for a gap that skipped a whole second.
        assert_eq!(forced, [0, 1000, 2034, 4100]);
    }

    #[test]
    fn audio_segments_start_within_half_a_frame_of_the_video_segments() {
        const FRAME_NS: u64 = 1024 * 1_000_000_000 / 48_000;
        let video_ms = [1000u64, 2034, 3000, 5100];
        let mut cuts = AudioCuts::new(Duration::from_secs(1));
        let mut asked = Vec::new();
        let mut starts = Vec::new();
        for k in 0..330u64 {
            let start = k * FRAME_NS;
            let opens = cuts.opens_segment(start, FRAME_NS, |grid| {
                asked.push(grid / 1_000_000);
                video_ms.iter().map(|ms| ms * 1_000_000).find(|b| *b >= grid)
            });
            if opens {
                starts.push(start);
            }
        }
        // The video is asked once per boundary, only when the audio reaches its grid time;
        // past the video's end (no boundary at 6 s) the audio stays in its last segment.
        assert_eq!(&asked[..5], [1000, 2000, 3000, 4000, 6000]);
        assert!(asked[5..].iter().all(|grid| *grid == 6000));
        assert_eq!(starts.len(), 4);
        for (audio, video_ms) in starts.iter().zip(video_ms) {
            let gap = audio.abs_diff(video_ms * 1_000_000);
            assert!(gap <= FRAME_NS / 2, "audio cut at {audio} ns, video at {video_ms} ms");
        }
    }

    #[test]
    fn audio_waits_for_the_video_boundary_and_falls_back_to_the_grid() {
        let boundaries = Arc::new(Boundaries::default());
        let recorder = Arc::clone(&boundaries);
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            recorder.record(1_033_000_000);
        });
        assert_eq!(boundaries.wait_at_or_after(1_000_000_000, Duration::from_secs(5)), Decision::At(1_033_000_000));
        late.join().unwrap();
        assert_eq!(boundaries.wait_at_or_after(2_000_000_000, Duration::from_millis(20)), Decision::TimedOut);
        boundaries.end();
        let started = std::time::Instant::now();
        assert_eq!(boundaries.wait_at_or_after(2_000_000_000, Duration::from_secs(5)), Decision::Ended);
        assert!(started.elapsed() < Duration::from_secs(1), "an ended video does not keep the audio waiting");
    }
}
