//! A stream actor's pipeline sessions: starting one on a keyframe (or on audio, for an
//! audio-only source) with its admitted ladder and a new Period, cutting a Period
//! mid-stream so the next continues exactly where it ended, and stopping (draining) one.

use std::sync::Arc;
use std::time::{Duration, Instant};


use crate::ladder::{self, LadderPlan, PlanInput};
use crate::media::SessionId;
use crate::transcode::capability::Device;
use crate::transcode::source::{self, AacConfig};
use crate::transcode::spec::PipelineSpec;
use crate::transcode::{SessionIo, SessionOutput, Transcoder};
use super::actor::{PendingPlan, Resume, Running, StreamActor};
use super::clock::MediaClock;
use super::status::{self, PlanChange, TranscodeChoice};

/// How long the pipeline may take to flush its last segments at the end, beyond its lag.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// The most backlog a drain waits for (the shutdown grace is 10 s in all).
const MAX_DRAIN_BACKLOG: Duration = Duration::from_secs(5);

impl StreamActor {
    /// Stops the pipeline mid-stream. With `media_end_ms`, the next session's Period starts
    /// exactly where this one's media ended (a re-plan, a timestamp discontinuity), so a
    /// player following the MPD sees no gap; without, it starts when it starts (a codec
    /// change). The Period stays open until the next one begins or the stream ends.
    pub(super) async fn cut_period(&mut self, media_end_ms: Option<u64>, reason: &str) {
        let Some(running) = &self.running else { return };
        let resume = media_end_ms.map(|ms| Resume {
            period_start: Some(running.period_start + Duration::from_millis(ms)),
            anchor: running.clock.continuation_anchor(ms),
        });
        // Keep the ladder across a cut of the same source (a plan waiting for a keyframe
        // wins); a codec change re-plans from the new source.
        let pending = match (self.pending.take(), &resume) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => Some(PendingPlan { plan: running.plan.clone(), reason: reason.to_owned(), for_bps: None }),
            (None, None) => None,
        };
        if let Some(session) = self.stop_pipeline(true).await {
            self.unclosed = Some(session);
        }
        self.pending = pending;
        self.resume = resume;
    }

    /// Starts a session at the packet stamped `base_ms`: on a video keyframe, or without
    /// video (`with_video` false) on an audio frame of an audio-only source.
    pub(super) async fn start_session(&mut self, base_ms: u32, with_video: bool) -> Result<(), String> {
        let pending = self.pending.take();
        let resume = self.resume.take();
        self.audio_without_video = None;
        let period_start = resume.as_ref().and_then(|r| r.period_start);
        let anchor = resume.map_or_else(Instant::now, |r| r.anchor);
        let config = Arc::clone(&self.services.config);
        let mut format = None;
        let mut video_caps = None;
        let (mut plan, reason, for_bps) = if !with_video {
            (LadderPlan { rungs: Vec::new() }, "audio-only source".to_owned(), None)
        } else {
            let video_config = self.video_config.as_ref().ok_or("video arrived before its AVC sequence header")?;
            let source = source::video_format(video_config).map_err(|e| e.to_string())?;
            format = Some(source);
            video_caps = Some(crate::transcode::avc_caps(video_config));
            match pending {
                Some(p) => (p.plan, p.reason, p.for_bps),
                None => {
                    // Provisional until the first measurement: the catalogue under the budget.
                    let input = PlanInput { source, delivered_bps: None, catalogue: &config.transcode.rungs, max_rungs: self.max_rungs() };
                    (ladder::plan_for(&input), "provisional (not measured yet)".to_owned(), None)
                }
            }
        };
        let fps = self.source_fps();
        let grant = format.map(|source| self.admit(source, &mut plan, fps)).transpose()?;
        self.source = format;
        let audio = match &self.audio_config {
            Some(asc) => Some((AacConfig::parse(asc).map_err(|e| e.to_string())?, asc.clone())),
            None => None,
        };
        let io = SessionIo::new(&plan, audio.as_ref().map(|(aac, asc)| (aac, &asc[..])), config.transcode.audio_bitrate);
        let session = SessionId::generate();
        tracing::info!(
            %session, width = format.map(|f| f.width), height = format.map(|f| f.height),
            rungs = ?plan.rungs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), audio = ?io.audio_plan,
            backend = ?grant.as_ref().map(|g| g.backend.name()), "session starts"
        );
        let change = PlanChange {
            at_ms: self.started.elapsed().as_millis() as u64,
            session: session.clone(),
            reason,
            for_bps,
            rungs: status::describe(&plan),
        };
        let resources = &self.services.transcode;
        let backend = grant.as_ref().map_or(resources.first(), |g| g.backend);
        let spec = PipelineSpec {
            ladder: plan.clone(),
            template: resources.template(backend).clone(),
            device: grant.as_ref().map_or(Device::Cpu, |g| g.device.clone()),
            x264_preset: config.transcode.x264_preset.clone(),
            decode_threads: resources.decode_threads,
            fps,
            source_height: format.map_or(0, |f| f.height),
            audio: io.audio_plan,
            segment_duration: config.package.segment_duration,
            chunk_duration: config.package.chunks(),
        };
        let (renditions, sinks, audio_caps) = (io.renditions, io.sinks, io.audio_caps);
        let packager = Arc::clone(&self.services.packager);
        let period_start = packager.begin_session(&self.stream, &session, renditions, period_start);
        // The new Period closed the one a cut left open.
        self.unclosed = None;
        let output = SessionOutput { packager, stream: self.stream.clone(), session: session.clone() };
        // Parsing and starting a pipeline blocks (plugin loading, state changes): off the runtime.
        let span = tracing::Span::current();
        let started = tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            Transcoder::start(&spec, video_caps, audio_caps, sinks, output)
        })
        .await
        .unwrap_or_else(|e| Err(crate::transcode::TranscodeError::Start(format!("pipeline start panicked: {e}"))));
        let transcoder = match started {
            Ok(t) => t,
            Err(e) => {
                self.services.packager.end_session(&self.stream, &session);
                return Err(e.to_string());
            }
        };
        let bus = transcoder.bus().stream();
        {
            let mut status = self.status.lock();
            status.source = format.map(|f| (f.width, f.height));
            status.record_plan(change, plan.clone());
            status.transcode = grant.as_ref().map(|g| TranscodeChoice {
                backend: g.backend,
                device: g.device.to_string(),
                why: g.why.clone(),
                cpu_cores: g.cpu_cores,
                fps,
            });
        }
        self.running = Some(Running {
            transcoder,
            grant,
            session,
            clock: MediaClock::new(base_ms, anchor),
            bus,
            plan,
            period_start,
            audio_only: !with_video,
        });
        Ok(())
    }

    /// Stops the pipeline (draining its last segments when asked) and returns its session.
    /// The Period stays open: the caller either starts the next one or ends the session.
    pub(super) async fn stop_pipeline(&mut self, drain: bool) -> Option<SessionId> {
        // A backlog (a host that fell behind) takes its own media time to flush.
        let drain_timeout = DRAIN_TIMEOUT + self.pipeline_lag().unwrap_or_default().min(MAX_DRAIN_BACKLOG);
        let Running { transcoder, session, bus, grant, .. } = self.running.take()?;
        drop(bus);
        // Nothing is held without a pipeline to hold.
        self.hold = None;
        self.resuming = false;
        self.latest_video_pts_ms = 0;
        // A plan waiting for a keyframe was made for this pipeline's source; a switch has
        // already taken it, and after a source change it no longer applies.
        self.pending = None;
        let stopped = tokio::task::spawn_blocking(move || {
            if drain { transcoder.finish(drain_timeout) } else { transcoder.stop() }
        })
        .await;
        if let Err(e) = stopped {
            tracing::error!("pipeline teardown panicked: {e}");
        }
        // The pipeline is gone: its sessions and cores are free for the next one.
        drop(grant);
        Some(session)
    }
}
