//! One supervisor actor per live publish. Ingest hands it packets through a bounded channel
//! (back-pressure reaches the broadcaster's TCP window) and uplink estimates through a watch
//! channel. The actor starts on a provisional ladder, re-plans from the measured source
//! bitrate after a short measurement and whenever it moves persistently (hysteresis), runs
//! the transcode pipeline, watches its bus, and on the broadcaster's end, a pipeline error
//! or shutdown, drains the pipeline and ends the session in the packager. A new plan takes
//! effect on the next source keyframe as a new Period that starts exactly where the last
//! one ended. A failing stream is torn down alone.

pub mod clock;
pub mod overload;
pub mod registry;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use gst::prelude::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use clock::{FrameRate, MediaClock, Placement};
use crate::ladder::{self, Hysteresis, LadderPlan, PlanInput, Replanner, SourceFormat};
use crate::probe::UplinkEstimate;
use crate::media::{MediaPacket, SessionId, StreamId};
use crate::package::Packager;
use crate::transcode::admission::{Grant, Request};
use crate::transcode::capability::Device;
use crate::transcode::resources::Resources;
use crate::transcode::source::{self, AacConfig};
use crate::transcode::spec::PipelineSpec;
use crate::transcode::{SessionIo, SessionOutput, Transcoder};
pub use registry::{AlreadyPublishing, PublishClaim, SharedStatus, StreamRegistry};
use status::{PlanChange, TranscodeChoice};

/// Packets a stream may have in flight from ingest before ingest waits.
const INPUT_CAPACITY: usize = 512;
/// Safety-net re-check of the input queue while waiting for the appsrc's need-data.
const ROOM_RECHECK: Duration = Duration::from_millis(200);
/// A pipeline that takes no data for this long is declared stalled.
const STALL_LIMIT: Duration = Duration::from_secs(10);
/// How long the pipeline may take to flush its last segments at the end, beyond its lag.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// The most backlog a drain waits for (the shutdown grace is 10 s in all).
const MAX_DRAIN_BACKLOG: Duration = Duration::from_secs(5);
/// Renditions x264 can run for one stream on this class of machine.
const X264_MAX_RUNGS: usize = 4;
/// Frame rate assumed for admission before the source's has been measured, when the
/// broadcaster's metadata does not state one.
const ASSUMED_FPS: f64 = 30.0;
/// An estimate with less confidence than this does not change the ladder.
const MIN_CONFIDENCE: f64 = 0.5;
/// Media may run this far ahead of the wall clock before the publisher is paced (an
/// encoder's start-up burst stays under it; ffmpeg without `-re` does not).
const MAX_LEAD: Duration = Duration::from_secs(2);
/// A publish that produces no segment for this long is reported as stalled...
const STALL_REPORT: Duration = Duration::from_secs(5);
/// ...and ended after this long.
const STALL_END: Duration = Duration::from_secs(30);
/// How often the actor checks its stream's health.
const HEALTH_TICK: Duration = Duration::from_secs(1);
/// Audio for this long (media time) with no AVC sequence header before it starts an
/// audio-only session (encoders send both sequence headers before any media).
const AUDIO_ONLY_AFTER_MS: i32 = 1_000;

/// What every stream actor needs from the node.
#[derive(Clone)]
pub struct StreamServices {
    pub config: Arc<Config>,
    pub packager: Arc<Packager>,
    pub transcode: Arc<Resources>,
    pub instruments: crate::metrics::Instruments,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

/// Why a stream's session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The broadcaster unpublished or disconnected.
    Finished,
    /// The pipeline failed; the text says why.
    Failed(String),
    /// The appliance is shutting down.
    Shutdown,
}

/// How a task that carries a publish (stream actor or relay) reports its end to ingest.
#[derive(Clone)]
pub struct EndSignal(tokio::sync::watch::Receiver<Option<StreamEnd>>);

impl EndSignal {
    /// A sender to report the end with, and the signal ingest waits on.
    pub fn channel() -> (tokio::sync::watch::Sender<Option<StreamEnd>>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (tx, Self(rx))
    }

    /// The end, if the task has ended (a dropped sender counts as shutdown).
    pub fn now(&self) -> StreamEnd {
        self.0.borrow().clone().unwrap_or(StreamEnd::Shutdown)
    }

    /// Resolves when the task has ended.
    pub async fn wait(&mut self) -> StreamEnd {
        loop {
            if let Some(end) = self.0.borrow().clone() {
                return end;
            }
            if self.0.changed().await.is_err() {
                return StreamEnd::Shutdown;
            }
        }
    }
}

/// Ingest's side of a stream actor. Dropping it ends the session.
pub struct StreamHandle {
    tx: mpsc::Sender<MediaPacket>,
    uplink: tokio::sync::watch::Sender<Option<UplinkEstimate>>,
    status: SharedStatus,
    ended: EndSignal,
}

impl StreamHandle {
    /// Sends a packet, waiting while the transcoder is behind. Fails once the actor is gone.
    pub async fn send(&self, packet: MediaPacket) -> Result<(), StreamEnd> {
        self.tx.send(packet).await.map_err(|_| self.ended.now())
    }

    /// Resolves when the actor has ended (for an error, before ingest sends again).
    pub async fn ended(&mut self) -> StreamEnd {
        self.ended.wait().await
    }

    /// The frame rate the broadcaster's metadata states (`onMetaData` framerate): what
    /// admission counts a ladder with until the actor has measured the source's own.
    pub fn report_metadata_frame_rate(&self, fps: f64) {
        if (1.0..=240.0).contains(&fps) {
            self.status.lock().metadata_fps = Some(fps);
        }
    }

    /// Hands the actor the latest uplink estimate (only the newest one matters) and
    /// publishes the probe's history in the stream's status.
    pub fn report_uplink(&self, estimate: UplinkEstimate, history: &[crate::probe::ProbeSample]) {
        self.status.lock().uplink_history = history.to_vec();
        let _ = self.uplink.send(Some(estimate));
    }
}

/// Starts the actor for a claimed stream.
pub fn spawn(claim: PublishClaim, services: StreamServices) -> StreamHandle {
    let (tx, rx) = mpsc::channel(INPUT_CAPACITY);
    let (ended_tx, ended) = EndSignal::channel();
    let (uplink, uplink_rx) = tokio::sync::watch::channel(None);
    let stream = claim.stream().clone();
    let span = tracing::info_span!("stream", stream = %stream);
    let tracker = services.tracker.clone();
    let status = Arc::clone(claim.status());
    let handle_status = Arc::clone(&status);
    tracker.spawn(
        async move {
            let actor = StreamActor::new(stream, services, status);
            let end = actor.run(rx, uplink_rx).await;
            match &end {
                StreamEnd::Failed(reason) => tracing::error!("stream torn down: {reason}"),
                other => tracing::info!(?other, "stream session ended"),
            }
            let _ = ended_tx.send(Some(end));
            drop(claim);
        }
        .instrument(span),
    );
    StreamHandle { tx, uplink, status: handle_status, ended }
}

struct Running {
    transcoder: Transcoder,
    /// The backend, device and budget share this session holds (released when dropped).
    grant: Option<Grant>,
    session: SessionId,
    /// Media time of the session, from the broadcaster's timestamps.
    clock: MediaClock,
    bus: gst::bus::BusStream,
    plan: LadderPlan,
    /// The Period's start after availabilityStartTime.
    period_start: Duration,
    /// No video: the audio drives the clock and paces the input.
    audio_only: bool,
}

/// Where the next session continues after a Period was cut mid-stream.
struct Resume {
    /// Its Period's start after availabilityStartTime (`None`: now, re-anchored).
    period_start: Option<Duration>,
    /// The instant its media zero corresponds to.
    anchor: Instant,
}

/// A plan waiting for the next source keyframe.
struct PendingPlan {
    plan: LadderPlan,
    reason: String,
    for_bps: Option<f64>,
}

struct StreamActor {
    stream: StreamId,
    services: StreamServices,
    status: SharedStatus,
    video_config: Option<Bytes>,
    audio_config: Option<Bytes>,
    running: Option<Running>,
    source: Option<SourceFormat>,
    replanner: Replanner,
    /// The first measured plan has been made (after `initial_measurement`).
    measured: bool,
    pending: Option<PendingPlan>,
    /// How the next session continues the one cut before it.
    resume: Option<Resume>,
    /// A Period stopped mid-stream (codec change, discontinuity) that no new Period has
    /// closed yet: ended with the stream if nothing follows it.
    unclosed: Option<SessionId>,
    /// Timestamp of the first audio frame that arrived with no session and no video
    /// configuration: the start of a possible audio-only source.
    audio_without_video: Option<u32>,
    started: Instant,
    /// The source's measured frame rate.
    frame_rate: FrameRate,
    /// How many rungs admission gave the session, when fewer than planned (until the
    /// budgets have room for more).
    admitted_rungs: Option<usize>,
}

impl StreamActor {
    fn new(stream: StreamId, services: StreamServices, status: SharedStatus) -> Self {
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
        }
    }

    fn max_rungs(&self) -> usize {
        let budget = if self.services.transcode.first().encodes_on_cpu() { X264_MAX_RUNGS } else { self.services.config.transcode.rungs.len() };
        self.status.lock().health.rung_cap.map_or(budget, |cap| budget.min(cap))
    }

    /// Decides whether the latest estimate changes the ladder; a change waits for a keyframe.
    fn consider(&mut self, estimate: &UplinkEstimate) {
        let Some(running) = &self.running else { return };
        let Some(source) = self.source else { return };
        let ladder = &self.services.config.ladder;
        // What the ladder must fit under: the encoder's video bitrate, or what the uplink
        // actually carries when it cannot keep up.
        let mut delivered = estimate.source_video_bps;
        if estimate.uplink_bound {
            let carried = estimate.throughput_bps - estimate.source_audio_bps.unwrap_or(0.0);
            delivered = Some(delivered.map_or(carried, |d| d.min(carried)));
        }
        let Some(delivered) = delivered.filter(|d| *d > 0.0) else { return };
        if estimate.confidence < MIN_CONFIDENCE {
            return;
        }
        let mut candidate = ladder::plan_for(&PlanInput {
            source,
            delivered_bps: Some(delivered),
            catalogue: &self.services.config.transcode.rungs,
            max_rungs: self.max_rungs(),
        });
        // Admission gave this stream only its lowest rungs. Once the budgets have room for
        // the whole candidate (another stream ended), it re-plans to it at the next
        // keyframe; until then plans keep to the admitted rungs (asking for more would
        // re-plan, be cut back again, and re-plan forever).
        if let Some(cap) = self.admitted_rungs.filter(|cap| candidate.rungs.len() > *cap) {
            let request = Request::for_plan(source, self.source_fps(), &candidate, &self.services.config.transcode.x264_preset);
            let room = running.grant.as_ref().is_some_and(|grant| self.services.transcode.admission.has_room_instead(grant, &request));
            if room && self.pending.is_none() {
                tracing::info!(rungs = ?status::describe(&candidate), "the backends' budgets have room for the whole ladder again: re-plan at the next keyframe");
                self.admitted_rungs = None;
                self.pending = Some(PendingPlan { plan: candidate, reason: "budget has room again".to_owned(), for_bps: Some(delivered) });
                return;
            }
            candidate.rungs.drain(..candidate.rungs.len() - cap);
        }
        let elapsed = self.started.elapsed();
        let decision = if !self.measured {
            if elapsed < ladder.initial_measurement {
                return;
            }
            self.measured = true;
            self.replanner.set_planned_for(delivered);
            (candidate != running.plan).then(|| (candidate, "initial measurement".to_owned()))
        } else {
            self.replanner
                .observe(elapsed, &running.plan, &candidate, delivered)
                .map(|plan| (plan, "source bitrate moved persistently".to_owned()))
        };
        let Some((plan, reason)) = decision else { return };
        let same_rungs = plan.rungs.iter().map(|r| &r.id).eq(running.plan.rungs.iter().map(|r| &r.id));
        if same_rungs {
            self.retune(plan, reason, delivered);
        } else {
            tracing::info!(
                %reason, delivered_kbps = (delivered / 1000.0).round(), rungs = ?status::describe(&plan),
                "re-plan at the next keyframe"
            );
            self.pending = Some(PendingPlan { plan, reason, for_bps: Some(delivered) });
        }
    }

    /// Same renditions, new bitrates: the encoders take them in place, no new Period.
    fn retune(&mut self, plan: LadderPlan, reason: String, delivered: f64) {
        let Some(running) = self.running.as_mut() else { return };
        // A property change waits for the encoder's lock (a frame being encoded): not on a
        // runtime worker.
        let transcoder = running.transcoder.clone();
        let rates: Vec<_> = plan.rungs.iter().map(|r| (r.id.clone(), r.bitrate_kbps)).collect();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            for (rendition, kbps) in rates {
                if let Err(e) = transcoder.set_bitrate(&rendition, kbps) {
                    tracing::error!(%rendition, "bitrate change failed: {e}");
                }
            }
        });
        tracing::info!(%reason, delivered_kbps = (delivered / 1000.0).round(), rungs = ?status::describe(&plan), "bitrates retuned in place");
        let change = PlanChange {
            at_ms: self.started.elapsed().as_millis() as u64,
            session: running.session.clone(),
            reason: format!("{reason} (bitrates retuned in place)"),
            for_bps: Some(delivered),
            rungs: status::describe(&plan),
        };
        running.plan = plan.clone();
        self.status.lock().record_plan(change, plan);
    }

    async fn run(mut self, mut rx: mpsc::Receiver<MediaPacket>, mut uplink: tokio::sync::watch::Receiver<Option<UplinkEstimate>>) -> StreamEnd {
        let shutdown = self.services.shutdown.clone();
        let mut health = tokio::time::interval(HEALTH_TICK);
        let end = loop {
            let bus_message = async {
                match self.running.as_mut() {
                    Some(running) => running.bus.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                packet = rx.recv() => match packet {
                    None => break StreamEnd::Finished,
                    Some(packet) => {
                        if let Err(reason) = self.handle(packet).await {
                            break StreamEnd::Failed(reason);
                        }
                    }
                },
                Some(message) = bus_message => {
                    if let Some(reason) = bus_failure(&message) {
                        self.services.instruments.transcode_failures.inc();
                        break StreamEnd::Failed(reason);
                    }
                }
                Ok(()) = uplink.changed() => {
                    let estimate = uplink.borrow_and_update().clone();
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
        let drain = matches!(end, StreamEnd::Finished | StreamEnd::Shutdown);
        // Every Period that was opened is ended, also one cut before a failed restart.
        let session = self.stop_pipeline(drain).await.or(self.unclosed.take());
        if let Some(session) = session {
            self.services.packager.end_session(&self.stream, &session);
        }
        end
    }

    async fn handle(&mut self, packet: MediaPacket) -> Result<(), String> {
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
                    self.start_session(dts_ms, true).await?;
                    placed = Some(0);
                }
                let running = self.running.as_ref().expect("started above");
                let dts = placed.expect("placed or started above");
                let pts = (dts as i64 + i64::from(cts_ms)).max(0) as u64;
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
                    // Beside video, audio is paced and held back like video: its own queue
                    // bound stops the input, so audio sent faster than the pipeline takes
                    // it waits in the broadcaster, not here.
                    if let Placement::At(pts) = running.clock.audio(dts_ms) {
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
    async fn pace(&mut self) {
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
    fn pipeline_lag(&self) -> Option<Duration> {
        let running = self.running.as_ref()?;
        let output = self.services.packager.media_end(&self.stream).filter(|end| *end >= running.period_start);
        let produced = output.map_or(Duration::ZERO, |end| end - running.period_start);
        Some(running.clock.anchor().elapsed().saturating_sub(produced))
    }

    /// Applies a rung cap the overload controller set: the top rungs go at the next keyframe.
    fn apply_rung_cap(&mut self) {
        let Some(running) = &self.running else { return };
        let Some(cap) = self.status.lock().health.rung_cap else { return };
        if running.plan.rungs.len() <= cap || self.pending.is_some() {
            return;
        }
        let mut plan = running.plan.clone();
        let shed: Vec<String> = plan.rungs.drain(..plan.rungs.len() - cap).map(|r| r.id.to_string()).collect();
        tracing::warn!(?shed, rungs = ?status::describe(&plan), "host overloaded: shedding the top rung(s) at the next keyframe");
        self.pending = Some(PendingPlan { plan, reason: format!("host overloaded: shed {}", shed.join(", ")), for_bps: None });
    }

    /// Reports a publish that produces no segment, and ends it past [`STALL_END`]; measures
    /// the pipeline's lag and applies the overload controller's rung cap.
    fn check_progress(&mut self) -> Result<(), String> {
        let lag = self.pipeline_lag();
        self.status.lock().health.lag_ms = lag.map(|l| l.as_millis() as u64);
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
    async fn wait_for_room(&self) -> Result<(), String> {
        let Some(running) = &self.running else { return Ok(()) };
        let room = running.transcoder.room();
        let deadline = tokio::time::Instant::now() + STALL_LIMIT;
        loop {
            let asked = room.notified();
            tokio::pin!(asked);
            asked.as_mut().enable();
            if !running.transcoder.input_full() {
                return Ok(());
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

    /// Stops the pipeline mid-stream. With `media_end_ms`, the next session's Period starts
    /// exactly where this one's media ended (a re-plan, a timestamp discontinuity), so a
    /// player following the MPD sees no gap; without, it starts when it starts (a codec
    /// change). The Period stays open until the next one begins or the stream ends.
    async fn cut_period(&mut self, media_end_ms: Option<u64>, reason: &str) {
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
    async fn start_session(&mut self, base_ms: u32, with_video: bool) -> Result<(), String> {
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

    /// The source's frame rate: measured, else the broadcaster's metadata's, else assumed.
    fn source_fps(&self) -> f64 {
        self.frame_rate.fps().or(self.status.lock().metadata_fps).unwrap_or(ASSUMED_FPS)
    }

    /// Counts the session's ladder against the node's backends: admitted whole, with its
    /// top rungs dropped from `plan`, or refused (the error says why).
    fn admit(&mut self, source: SourceFormat, plan: &mut LadderPlan, fps: f64) -> Result<Grant, String> {
        let request = Request::for_plan(source, fps, plan, &self.services.config.transcode.x264_preset);
        let grant = self.services.transcode.admission.admit(&request).map_err(|why| {
            self.status.lock().health.note(format!("refused: {why}"));
            format!("admission refused the stream: {why}")
        })?;
        self.admitted_rungs = (grant.rungs < plan.rungs.len()).then_some(grant.rungs);
        if grant.rungs < plan.rungs.len() {
            let dropped: Vec<String> = plan.rungs.drain(..plan.rungs.len() - grant.rungs).map(|r| r.id.to_string()).collect();
            tracing::warn!(?dropped, why = %grant.why, "rungs dropped: the backends' budgets have no room for the whole ladder");
            self.status.lock().health.note(format!("rungs {} dropped: {}", dropped.join(", "), grant.why));
        }
        tracing::info!(backend = %grant.backend, device = %grant.device, why = %grant.why, cpu_cores = grant.cpu_cores, "transcode backend chosen");
        Ok(grant)
    }

    /// Stops the pipeline (draining its last segments when asked) and returns its session.
    /// The Period stays open: the caller either starts the next one or ends the session.
    async fn stop_pipeline(&mut self, drain: bool) -> Option<SessionId> {
        // A backlog (a host that fell behind) takes its own media time to flush.
        let drain_timeout = DRAIN_TIMEOUT + self.pipeline_lag().unwrap_or_default().min(MAX_DRAIN_BACKLOG);
        let Running { transcoder, session, bus, grant, .. } = self.running.take()?;
        drop(bus);
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
