//! [`Transcoder`]: one running GStreamer pipeline per session, built from its backend's
//! template: starting it (elements checked, boundaries and sinks attached), pushing the
//! stream actor's packets into its appsrcs with their back-pressure signal, retuning
//! bitrates, and draining or stopping it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gst::prelude::*;
use gst_app::{AppSink, AppSrc};

use crate::media::{RenditionId, TrackKind};
use super::TranscodeError;
use super::boundaries::{cut_audio_segments, force_keyframes_at_boundaries, split_video_fragments, Boundaries};
use super::io::{SessionOutput, SinkBinding};
use super::sink::attach_sink;
use super::spec::{self, PipelineSpec, AUDIO_SINK, AUDIO_SRC, VIDEO_SRC};

/// Tags a frame with the wall-clock time it arrived (a `timestamp/x-unix` reference
/// timestamp). It travels with the frame through decode, scale and encode, and the muxer
/// writes it as the `prft` box of the chunk the frame starts: players can tell how far
/// behind the broadcaster they play.
fn mark_ingest_time(buffer: &mut gst::BufferRef) {
    static UNIX: std::sync::OnceLock<gst::Caps> = std::sync::OnceLock::new();
    let caps = UNIX.get_or_init(|| gst::Caps::builder("timestamp/x-unix").build());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    gst::ReferenceTimestampMeta::add(buffer, caps, gst::ClockTime::from_nseconds(now.as_nanos() as u64), gst::ClockTime::NONE);
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
            cut_audio_segments(&pipeline, spec.segment_duration, spec.chunk_duration, video, Arc::clone(&audio_cuts))?;
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
            let cuts = match binding.kind {
                TrackKind::Video => {
                    split_video_fragments(&pipeline, &spec::video_mux_name(binding.rendition.as_str()), spec.segment_duration, spec.chunk_duration, Arc::clone(&boundaries))?;
                    &boundaries
                }
                TrackKind::Audio => &audio_cuts,
            };
            attach_sink(&sink, binding, output.clone(), Arc::clone(cuts), spec.chunk_duration.is_some());
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
            mark_ingest_time(buffer);
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
        mark_ingest_time(frame);
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

