//! The stream actor: [`spawn`] starts it for a claimed stream and returns ingest's handle;
//! its state, its `select!` loop over ingest's packets, the pipeline's
//! bus, uplink estimates, a health tick and shutdown, and what each packet does (clock
//! placement, Period cuts on discontinuities and codec changes, pacing, back-pressure).
//! Plan policy lives in `plan.rs`, the pipeline session's lifecycle in `session.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use gst::prelude::*;
use tracing::Instrument;

use crate::ladder::{Hysteresis, LadderPlan, Replanner, SourceFormat};
use crate::media::{MediaPacket, SessionId, StreamId};
use crate::transcode::Transcoder;
use crate::transcode::admission::Grant;
use super::clock::{FrameRate, MediaClock, Placement};
use super::handle::{EndSignal, Input, StreamEnd, StreamHandle, StreamServices};
use super::hold::{Hold, HoldEvent};
use super::registry::{PublishClaim, SharedStatus};

/// Safety-net re-check of the input queue while waiting for the appsrc's need-data.
const ROOM_RECHECK: Duration = Duration::from_millis(200);
/// A pipeline that takes no data for this long is declared stalled.
const STALL_LIMIT: Duration = Duration::from_secs(10);
/// Media may run this far ahead of the wall clock before the publisher is paced (an
/// encoder's start-up burst stays under it; ffmpeg without `-re` does not).
const MAX_LEAD: Duration = Duration::from_secs(2);
/// A publish that produces no segment for this long is reported as stalled...
const STALL_REPORT: Duration = Duration::from_secs(5);
/// ...and ended after this long.
const STALL_END: Duration = Duration::from_secs(30);
/// A stream whose pipeline held its input back this recently is `held_back`: longer than
/// the uplink probe takes to call a connection uplink-bound (4 s).
const HELD_BACK_HOLD: Duration = Duration::from_secs(5);
/// How often the actor checks its stream's health.
const HEALTH_TICK: Duration = Duration::from_secs(1);
/// Audio for this long (media time) with no AVC sequence header before it starts an
/// audio-only session (encoders send both sequence headers before any media).
const AUDIO_ONLY_AFTER_MS: i32 = 1_000;

/// Starts the actor for a claimed stream.
pub fn spawn(claim: PublishClaim, services: StreamServices) -> StreamHandle {
    let (ended_tx, ended) = EndSignal::channel();
    let (handle, input) = StreamHandle::connect(Arc::clone(claim.status()), ended.clone());
    let stream = claim.stream().clone();
    // Its own root: the actor outlives the connection that started it (a hold resumes it
    // from another).
    let span = tracing::info_span!(parent: None, "stream", stream = %stream);
    let tracker = services.tracker.clone();
    let status = Arc::clone(claim.status());
    tracker.spawn(
        async move {
            let actor = StreamActor::new(stream, services, status);
            let end = actor.run(input, &claim, &ended).await;
            match &end {
                StreamEnd::Failed(reason) => tracing::error!("stream torn down: {reason}"),
                other => tracing::info!(?other, "stream session ended"),
            }
            let _ = ended_tx.send(Some(end));
            drop(claim);
        }
        .instrument(span),
    );
    handle
}

pub(super) struct Running {
    pub(super) transcoder: Transcoder,
    /// The backend, device and budget share this session holds (released when dropped).
    pub(super) grant: Option<Grant>,
    pub(super) session: SessionId,
    /// Media time of the session, from the broadcaster's timestamps.
    pub(super) clock: MediaClock,
    pub(super) bus: gst::bus::BusStream,
    pub(super) plan: LadderPlan,
    /// The Period's start after availabilityStartTime.
    pub(super) period_start: Duration,
    /// No video: the audio drives the clock and paces the input.
    pub(super) audio_only: bool,
}

/// Where the next session continues after a Period was cut mid-stream.
pub(super) struct Resume {
    /// Its Period's start after availabilityStartTime (`None`: now, re-anchored).
    pub(super) period_start: Option<Duration>,
    /// The instant its media zero corresponds to.
    pub(super) anchor: Instant,
}

/// A plan waiting for the next source keyframe.
pub(super) struct PendingPlan {
    pub(super) plan: LadderPlan,
    pub(super) reason: String,
    pub(super) for_bps: Option<f64>,
}

pub(super) struct StreamActor {
    pub(super) stream: StreamId,
    pub(super) services: StreamServices,
    pub(super) status: SharedStatus,
    pub(super) video_config: Option<Bytes>,
    pub(super) audio_config: Option<Bytes>,
    pub(super) running: Option<Running>,
    pub(super) source: Option<SourceFormat>,
    pub(super) replanner: Replanner,
    /// The first measured plan has been made (after `initial_measurement`).
    pub(super) measured: bool,
    pub(super) pending: Option<PendingPlan>,
    /// How the next session continues the one cut before it.
    pub(super) resume: Option<Resume>,
    /// A Period stopped mid-stream (codec change, discontinuity) that no new Period has
    /// closed yet: ended with the stream if nothing follows it.
    pub(super) unclosed: Option<SessionId>,
    /// Timestamp of the first audio frame that arrived with no session and no video
    /// configuration: the start of a possible audio-only source.
    pub(super) audio_without_video: Option<u32>,
    pub(super) started: Instant,
    /// The source's measured frame rate.
    pub(super) frame_rate: FrameRate,
    /// How many rungs admission gave the session, when fewer than planned (until the
    /// budgets have room for more).
    pub(super) admitted_rungs: Option<usize>,
    /// When the pipeline last held the input back (its queue full): ingest then reads the
    /// broadcaster's socket slower, which the uplink probe cannot tell from a slow uplink.
    pub(super) held_back_at: Option<Instant>,
    /// When the lag was last published: also while the actor waits for room, since an
    /// overloaded pipeline keeps it there for most of the time between health ticks.
    pub(super) lag_published_at: Instant,
    /// The source's last keyframe (what a hold repeats), the latest presentation time of
    /// its video so far (B-frames put it past the last frame's decode time), and its last
    /// audio frame's time.
    pub(super) last_keyframe: Option<Bytes>,
    pub(super) latest_video_pts_ms: u64,
    pub(super) last_audio_ms: Option<u64>,
    /// The broadcaster dropped and the stream holds its Period (`hold.rs`).
    pub(super) hold: Option<Hold>,
    /// A broadcaster reconnected to the hold: its first keyframe continues the media.
    pub(super) resuming: bool,
    /// Where the held audio ended: the reconnected broadcaster's audio starts there.
    pub(super) held_audio_end_ms: Option<u64>,
    /// The current connection's mark of a draining node's hand-over picture (`hold.rs`),
    /// read when a session starts.
    pub(super) hand_over: Arc<AtomicBool>,
}

impl StreamActor {
    pub(super) fn new(stream: StreamId, services: StreamServices, status: SharedStatus) -> Self {
        let ladder = &services.config.ladder;
        let replanner = Replanner::new(Hysteresis { ratio: ladder.hysteresis_ratio, hold: ladder.hysteresis_hold });
        Self {
            stream,
            services,
            status,
            video_config: None,
            audio_config: None,
            running: None,
            source: None,
            replanner,
            measured: false,
            pending: None,
            resume: None,
            unclosed: None,
            audio_without_video: None,
            started: Instant::now(),
            frame_rate: FrameRate::default(),
            admitted_rungs: None,
            held_back_at: None,
            lag_published_at: Instant::now(),
            last_keyframe: None,
            latest_video_pts_ms: 0,
            last_audio_ms: None,
            hold: None,
            resuming: false,
            held_audio_end_ms: None,
            hand_over: Arc::default(),
        }
    }

    /// Runs the stream from its broadcaster's connection (`input`) until it ends; `claim`
    /// and `ended` let a hold take the broadcaster's next connection (`hold.rs`).
    pub(super) async fn run(mut self, input: Input, claim: &PublishClaim, ended: &EndSignal) -> StreamEnd {
        let shutdown = self.services.shutdown.clone();
        let mut health = tokio::time::interval(HEALTH_TICK);
        // The broadcaster's connection: none while a hold waits for it to reconnect.
        self.hand_over = Arc::clone(&input.hand_over);
        let mut input = Some(input);
        let end = loop {
            let (running, hold) = (&mut self.running, &mut self.hold);
            let bus_message = async {
                match running.as_mut() {
                    Some(running) => running.bus.next().await,
                    None => std::future::pending().await,
                }
            };
            let held = async {
                match hold.as_mut() {
                    Some(hold) => hold.next().await,
                    None => std::future::pending().await,
                }
            };
            let (packets, uplink) = match input.as_mut() {
                Some(connection) => (Some(&mut connection.packets), Some(&mut connection.uplink)),
                None => (None, None),
            };
            let packet = async {
                match packets {
                    Some(packets) => packets.recv().await,
                    None => std::future::pending().await,
                }
            };
            let uplink_changed = async {
                match uplink {
                    Some(uplink) => uplink.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                packet = packet => match packet {
                    None => {
                        let connection = input.take().expect("the packets came from a connection");
                        if connection.unpublished.load(Ordering::SeqCst) {
                            break StreamEnd::Finished;
                        }
                        if !self.begin_hold(claim, ended).await {
                            break StreamEnd::Dropped;
                        }
                    }
                    Some(packet) => {
                        if let Err(reason) = self.handle(packet).await {
                            break StreamEnd::Failed(reason);
                        }
                    }
                },
                Some(message) = bus_message => {
                    if let Some(reason) = bus_failure(&message) {
                        self.services.transcode_failures.inc();
                        break StreamEnd::Failed(reason);
                    }
                }
                event = held => match event {
                    HoldEvent::Resumed(connection) => {
                        self.hand_over = Arc::clone(&connection.hand_over);
                        input = Some(connection);
                        self.resume_hold();
                    }
                    HoldEvent::Fill => {
                        if let Err(reason) = self.fill().await {
                            break StreamEnd::Failed(reason);
                        }
                    }
                    HoldEvent::Expired => {
                        self.end_hold(claim);
                        if input.is_none() {
                            tracing::info!("the broadcaster did not reconnect within package.hold_last_frame; the Period ends where the held picture ends");
                            break StreamEnd::Dropped;
                        }
                    }
                },
                Ok(()) = uplink_changed => {
                    let estimate = input.as_mut().and_then(|connection| connection.uplink.borrow_and_update().clone());
                    if let Some(estimate) = estimate {
                        self.consider(&estimate);
                        let mut status = self.status.lock();
                        status.uplink = Some(estimate);
                    }
                }
                _ = health.tick() => {
                    if let Err(reason) = self.check_progress() {
                        break StreamEnd::Failed(reason);
                    }
                }
                _ = shutdown.cancelled() => break StreamEnd::Shutdown,
            }
        };
        let drain = matches!(end, StreamEnd::Finished | StreamEnd::Dropped | StreamEnd::Shutdown);
        // Every Period that was opened is ended, also one cut before a failed restart; a
        // dropped broadcaster's is suspended, waiting for it to reconnect.
        let session = self.stop_pipeline(drain).await.or(self.unclosed.take());
        if let Some(session) = session {
            if end == StreamEnd::Dropped {
                self.services.packager.suspend_session(&self.stream, &session);
            } else {
                self.services.packager.end_session(&self.stream, &session);
            }
        }
        end
    }

    pub(super) async fn handle(&mut self, packet: MediaPacket) -> Result<(), String> {
        if let MediaPacket::Video { data, .. } | MediaPacket::Audio { data, .. } = &packet {
            self.status.lock().ingest_bytes += data.len() as u64;
        }
        match packet {
            MediaPacket::VideoConfig(config) => {
                if self.running.as_ref().is_some_and(|r| r.audio_only) {
                    tracing::warn!("video appeared in an audio-only stream; starting a new period with video");
                    self.cut_period(None, "video appeared").await;
                } else if self.video_config.as_ref().is_some_and(|c| c != &config) && self.running.is_some() {
                    tracing::warn!("video configuration changed mid-stream; starting a new period");
                    self.cut_period(None, "video configuration changed").await;
                    self.source = None;
                }
                self.video_config = Some(config);
            }
            MediaPacket::AudioConfig(config) => {
                if self.audio_config.as_ref().is_some_and(|c| c != &config) && self.running.is_some() {
                    tracing::warn!("audio configuration changed mid-stream; starting a new period");
                    self.cut_period(None, "audio configuration changed").await;
                }
                self.audio_config = Some(config);
            }
            MediaPacket::Video { dts_ms, cts_ms, keyframe, data } => {
                self.frame_rate.observe(dts_ms);
                if self.resuming {
                    if !keyframe {
                        return Ok(()); // the reconnected broadcaster's media starts on a keyframe
                    }
                    self.resuming = false;
                    if let Some(running) = self.running.as_mut() {
                        running.clock.rebase(dts_ms);
                    }
                    self.held_audio_end_ms = self.hold.take().and_then(|hold| hold.audio_end_ms());
                }
                if self.running.as_ref().is_some_and(|r| r.audio_only) {
                    return Ok(()); // no video configuration: nothing could decode it
                }
                let mut placed = None;
                if let Some(running) = self.running.as_mut() {
                    match running.clock.advance(dts_ms) {
                        Placement::At(ms) => placed = Some(ms),
                        Placement::Before => return Ok(()),
                        Placement::Discontinuity { media_end_ms, step_ms } => {
                            tracing::warn!(
                                step_ms, media_end_ms,
                                "broadcaster's timestamps jumped; the Period ends where its media ended and a new one starts at the next keyframe"
                            );
                            {
                                let mut status = self.status.lock();
                                status.health.discontinuities += 1;
                                status.health.note(format!("video timestamps jumped by {step_ms} ms: new Period"));
                            }
                            self.cut_period(Some(media_end_ms), "timestamp discontinuity").await;
                        }
                    }
                }
                if keyframe && let Some(at_ms) = placed {
                    let behind = -self.running.as_ref().map_or(0, |r| r.clock.lead(Instant::now()));
                    let max_drift = self.services.config.package.max_clock_drift;
                    if behind > max_drift.as_millis() as i64 {
                        tracing::warn!(behind_ms = behind, "media fell behind the wall clock by more than {max_drift:?}; re-anchoring with a new Period");
                        {
                            let mut status = self.status.lock();
                            status.health.reanchors += 1;
                            status.health.note(format!("media {behind} ms behind the wall clock: re-anchored with a new Period"));
                        }
                        self.cut_period(Some(at_ms), "re-anchored to the wall clock").await;
                        self.resume = None;
                        placed = None;
                    } else if self.pending.is_some() {
                        // A new plan takes effect here, exactly where the old Period ends.
                        self.cut_period(Some(at_ms), "re-plan").await;
                        placed = None;
                    }
                }
                if self.running.is_none() {
                    if !keyframe {
                        return Ok(()); // a session starts on a keyframe
                    }
                    if self.resume.is_none() && self.hand_over.load(Ordering::SeqCst) {
                        self.resume = self.hand_over_continuation();
                    }
                    self.start_session(dts_ms, true).await?;
                    placed = Some(0);
                }
                let running = self.running.as_ref().expect("started above");
                let dts = placed.expect("placed or started above");
                let pts = (dts as i64 + i64::from(cts_ms)).max(0) as u64;
                if keyframe {
                    self.last_keyframe = Some(data.clone());
                }
                self.latest_video_pts_ms = self.latest_video_pts_ms.max(pts);
                running.transcoder.push_video(pts, dts, keyframe, data).map_err(|e| e.to_string())?;
                self.pace().await;
                self.wait_for_room().await?;
            }
            MediaPacket::Audio { dts_ms, data } => {
                if self.running.is_none() && self.video_config.is_none() && self.audio_config.is_some() {
                    let first = *self.audio_without_video.get_or_insert(dts_ms);
                    // A Period cut mid-stream continues at once.
                    if self.resume.is_some() || dts_ms.wrapping_sub(first) as i32 >= AUDIO_ONLY_AFTER_MS {
                        self.start_session(dts_ms, false).await?;
                    }
                }
                let Some(running) = self.running.as_mut() else { return Ok(()) };
                if !running.audio_only {
                    if self.resuming {
                        return Ok(()); // placed once the reconnected broadcaster's keyframe is
                    }
                    // Beside video, audio is paced and held back like video: its own queue
                    // bound stops the input, so audio sent faster than the pipeline takes
                    // it waits in the broadcaster, not here.
                    if let Placement::At(pts) = running.clock.audio(dts_ms) {
                        // After a hold, audio starts where the held silence ended.
                        if self.held_audio_end_ms.is_some_and(|end| pts < end) {
                            return Ok(());
                        }
                        self.held_audio_end_ms = None;
                        self.last_audio_ms = Some(pts);
                        running.transcoder.push_audio(pts, data).map_err(|e| e.to_string())?;
                        self.pace().await;
                        self.wait_for_room().await?;
                    }
                    return Ok(());
                }
                match running.clock.advance(dts_ms) {
                    Placement::At(pts) => {
                        running.transcoder.push_audio(pts, data).map_err(|e| e.to_string())?;
                        self.pace().await;
                        self.wait_for_room().await?;
                    }
                    Placement::Before => {}
                    Placement::Discontinuity { media_end_ms, step_ms } => {
                        tracing::warn!(step_ms, media_end_ms, "broadcaster's timestamps jumped; the Period ends where its media ended");
                        {
                            let mut status = self.status.lock();
                            status.health.discontinuities += 1;
                            status.health.note(format!("audio timestamps jumped by {step_ms} ms: new Period"));
                        }
                        self.cut_period(Some(media_end_ms), "timestamp discontinuity").await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Holds a publisher that sends faster than real time to real time (plus [`MAX_LEAD`]):
    /// the wait reaches its TCP window, so memory and the DVR window stay bounded.
    pub(super) async fn pace(&mut self) {
        let Some(running) = &self.running else { return };
        let lead = Duration::from_millis(running.clock.lead(Instant::now()).max(0) as u64);
        if lead <= MAX_LEAD {
            return;
        }
        let newly = {
            let mut status = self.status.lock();
            !std::mem::replace(&mut status.health.paced, true)
        };
        if newly {
            tracing::warn!(lead_ms = lead.as_millis() as u64, "broadcaster sends faster than real time; pacing it to real time");
        }
        tokio::time::sleep(lead - MAX_LEAD).await;
    }

    /// How far the pipeline's output (its newest video segment) trails real time: about one
    /// segment plus the encoder's latency when it keeps up (see `overload`).
    pub(super) fn pipeline_lag(&self) -> Option<Duration> {
        let running = self.running.as_ref()?;
        let output = self.services.packager.media_end(&self.stream).filter(|end| *end >= running.period_start);
        let produced = output.map_or(Duration::ZERO, |end| end - running.period_start);
        Some(running.clock.anchor().elapsed().saturating_sub(produced))
    }

    /// Publishes the pipeline's lag (and whether it holds the input back) in the stream's
    /// status, for the API and the overload controller.
    fn publish_lag(&mut self) {
        let lag = self.pipeline_lag();
        let held_back = self.held_back_at.is_some_and(|t| t.elapsed() < HELD_BACK_HOLD);
        let mut status = self.status.lock();
        status.health.lag_ms = lag.map(|l| l.as_millis() as u64);
        status.health.held_back = held_back;
        drop(status);
        self.lag_published_at = Instant::now();
    }

    /// Reports a publish that produces no segment, and ends it past [`STALL_END`]; measures
    /// the pipeline's lag and applies the overload controller's rung cap.
    pub(super) fn check_progress(&mut self) -> Result<(), String> {
        self.publish_lag();
        self.apply_rung_cap();
        let last = self.services.packager.last_segment_at(&self.stream);
        let since = last.and_then(|t| t.elapsed().ok()).map_or(self.started.elapsed(), |s| s.min(self.started.elapsed()));
        let mut status = self.status.lock();
        if since > STALL_END {
            return Err(format!("no segment produced for {:?} while the broadcaster is connected", since.as_secs()));
        }
        let stalled = since > STALL_REPORT;
        if stalled != status.health.stalled {
            status.health.stalled = stalled;
            if stalled {
                status.health.stalls += 1;
                status.health.note(format!("no segment for {} s while the broadcaster is connected", since.as_secs()));
                tracing::warn!(since_s = since.as_secs(), "no segment produced while the broadcaster is connected");
            } else {
                status.health.note("segments are produced again");
                tracing::info!("segments are produced again");
            }
        }
        Ok(())
    }

    /// Holds the input while the pipeline has a backlog (video's or audio's), so
    /// back-pressure reaches ingest; the appsrcs' need-data signal says when there is room again (with a slow
    /// re-check as a safety net, should a level cross its bound without a signal).
    pub(super) async fn wait_for_room(&mut self) -> Result<(), String> {
        let Some(running) = &self.running else { return Ok(()) };
        let room = running.transcoder.room();
        let deadline = tokio::time::Instant::now() + STALL_LIMIT;
        loop {
            let asked = room.notified();
            tokio::pin!(asked);
            asked.as_mut().enable();
            let Some(running) = &self.running else { return Ok(()) };
            if !running.transcoder.input_full() {
                return Ok(());
            }
            self.held_back_at = Some(Instant::now());
            if self.lag_published_at.elapsed() >= HEALTH_TICK {
                self.publish_lag();
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("transcoder stalled: no progress for {STALL_LIMIT:?}"));
            }
            tokio::select! {
                _ = asked => {}
                _ = tokio::time::sleep(ROOM_RECHECK) => {}
            }
        }
    }
}

/// An error or warning on the bus that should end the session, as text.
fn bus_failure(message: &gst::Message) -> Option<String> {
    match message.view() {
        gst::MessageView::Error(err) => Some(format!(
            "pipeline error from {}: {} ({})",
            err.src().map(|s| s.path_string().to_string()).unwrap_or_default(),
            err.error(),
            err.debug().map(|d| d.to_string()).unwrap_or_default()
        )),
        gst::MessageView::Eos(_) => Some("pipeline ended unexpectedly".into()),
        _ => None,
    }
}
