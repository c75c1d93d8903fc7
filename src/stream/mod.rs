//! One supervisor actor per live publish. Ingest hands it packets through a bounded channel
//! (back-pressure reaches the broadcaster's TCP window); the actor plans the ladder from the
//! source's codec configuration, runs the transcode pipeline, watches its bus, and on the
//! broadcaster's end, a pipeline error or shutdown, drains the pipeline and ends the
//! session in the packager. A failing stream is torn down alone.

pub mod registry;

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
use crate::ladder::{self, LadderPlan};
use crate::media::{MediaPacket, RenditionId, SessionId, StreamId, TrackKind};
use crate::package::fragment::aac_codecs;
use crate::package::timeline::RenditionInfo;
use crate::package::Packager;
use crate::transcode::encoder::EncoderKind;
use crate::transcode::source::{self, AacConfig, AAC_LC};
use crate::transcode::spec::{AudioPlan, PipelineSpec};
use crate::transcode::{SessionOutput, SinkBinding, Transcoder};
pub use registry::{AlreadyPublishing, PublishClaim, StreamRegistry};

/// Packets a stream may have in flight from ingest before ingest waits.
const INPUT_CAPACITY: usize = 512;
/// Bytes queued in the pipeline's appsrcs above which the actor stops reading input.
const QUEUE_HIGH_WATER: u64 = 8 * 1024 * 1024;
/// A pipeline that takes no data for this long is declared stalled.
const STALL_LIMIT: Duration = Duration::from_secs(10);
/// How long the pipeline may take to flush its last segments at the end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// What every stream actor needs from the node.
#[derive(Clone)]
pub struct StreamServices {
    pub config: Arc<Config>,
    pub packager: Arc<Packager>,
    pub encoder: EncoderKind,
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
}

/// Starts the actor for a claimed stream.
pub fn spawn(claim: PublishClaim, services: StreamServices) -> StreamHandle {
    let (tx, rx) = mpsc::channel(INPUT_CAPACITY);
    let (ended_tx, ended) = EndSignal::channel();
    let stream = claim.stream().clone();
    let span = tracing::info_span!("stream", stream = %stream);
    let tracker = services.tracker.clone();
    tracker.spawn(
        async move {
            let actor = StreamActor::new(stream, services);
            let end = actor.run(rx).await;
            match &end {
                StreamEnd::Failed(reason) => tracing::error!("stream torn down: {reason}"),
                other => tracing::info!(?other, "stream session ended"),
            }
            let _ = ended_tx.send(Some(end));
            drop(claim);
        }
        .instrument(span),
    );
    StreamHandle { tx, ended }
}

struct Running {
    transcoder: Transcoder,
    session: SessionId,
    /// RTMP timestamp that maps to media time zero.
    base_ms: u32,
    bus: gst::bus::BusStream,
}

struct StreamActor {
    stream: StreamId,
    services: StreamServices,
    video_config: Option<Bytes>,
    audio_config: Option<Bytes>,
    running: Option<Running>,
}

impl StreamActor {
    fn new(stream: StreamId, services: StreamServices) -> Self {
        Self { stream, services, video_config: None, audio_config: None, running: None }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<MediaPacket>) -> StreamEnd {
        let shutdown = self.services.shutdown.clone();
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
                        break StreamEnd::Failed(reason);
                    }
                }
                _ = shutdown.cancelled() => break StreamEnd::Shutdown,
            }
        };
        let drain = matches!(end, StreamEnd::Finished | StreamEnd::Shutdown);
        self.stop_session(drain).await;
        end
    }

    async fn handle(&mut self, packet: MediaPacket) -> Result<(), String> {
        match packet {
            MediaPacket::VideoConfig(config) => {
                if self.video_config.as_ref().is_some_and(|c| c != &config) && self.running.is_some() {
                    tracing::warn!("video configuration changed mid-stream; starting a new period");
                    self.stop_session(true).await;
                }
                self.video_config = Some(config);
            }
            MediaPacket::AudioConfig(config) => {
                if self.audio_config.as_ref().is_some_and(|c| c != &config) && self.running.is_some() {
                    tracing::warn!("audio configuration changed mid-stream; starting a new period");
                    self.stop_session(true).await;
                }
                self.audio_config = Some(config);
            }
            MediaPacket::Video { dts_ms, cts_ms, keyframe, data } => {
                if self.running.is_none() {
                    if !keyframe {
                        return Ok(()); // a session starts on a keyframe
                    }
                    self.start_session(dts_ms)?;
                }
                let running = self.running.as_ref().expect("started above");
                let dts = i64::from(dts_ms.wrapping_sub(running.base_ms) as i32);
                if dts < 0 {
                    return Ok(());
                }
                let pts = (dts + i64::from(cts_ms)).max(0) as u64;
                running.transcoder.push_video(pts, dts as u64, keyframe, data).map_err(|e| e.to_string())?;
                self.wait_for_room().await?;
            }
            MediaPacket::Audio { dts_ms, data } => {
                let Some(running) = &self.running else { return Ok(()) };
                let pts = i64::from(dts_ms.wrapping_sub(running.base_ms) as i32);
                if pts >= 0 {
                    running.transcoder.push_audio(pts as u64, data).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Holds the input while the pipeline has a backlog, so back-pressure reaches ingest.
    async fn wait_for_room(&self) -> Result<(), String> {
        let Some(running) = &self.running else { return Ok(()) };
        let since = Instant::now();
        while running.transcoder.queued_bytes() > QUEUE_HIGH_WATER {
            if since.elapsed() > STALL_LIMIT {
                return Err(format!("transcoder stalled: no progress for {STALL_LIMIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    fn start_session(&mut self, base_ms: u32) -> Result<(), String> {
        let config = &self.services.config;
        let video_config = self.video_config.as_ref().ok_or("video arrived before its AVC sequence header")?;
        let format = source::video_format(video_config).map_err(|e| e.to_string())?;
        let plan = ladder::plan(format, &config.transcode.rungs);
        let audio = match &self.audio_config {
            Some(asc) => Some((AacConfig::parse(asc).map_err(|e| e.to_string())?, asc.clone())),
            None => None,
        };
        let audio_plan = match &audio {
            None => AudioPlan::None,
            Some((aac, _)) if aac.object_type == AAC_LC => AudioPlan::Copy,
            Some(_) => AudioPlan::Transcode { bitrate: config.transcode.audio_bitrate },
        };
        let session = SessionId::generate();
        tracing::info!(
            %session, width = format.width, height = format.height,
            rungs = ?plan.rungs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), audio = ?audio_plan,
            encoder = ?self.services.encoder, "session starts"
        );
        let renditions = rendition_infos(&plan, audio.as_ref().map(|(aac, _)| aac), config.transcode.audio_bitrate);
        let mut sinks: Vec<SinkBinding> = plan
            .rungs
            .iter()
            .map(|r| SinkBinding { rendition: r.id.clone(), kind: TrackKind::Video, audio_codecs: None })
            .collect();
        let mut audio_caps = None;
        if let Some((aac, asc)) = &audio {
            let object_type = if audio_plan == AudioPlan::Copy { aac.object_type } else { AAC_LC };
            sinks.push(SinkBinding { rendition: audio_rendition(), kind: TrackKind::Audio, audio_codecs: Some(aac_codecs(object_type)) });
            audio_caps = Some(
                gst::Caps::builder("audio/mpeg")
                    .field("mpegversion", 4i32)
                    .field("stream-format", "raw")
                    .field("codec_data", gst::Buffer::from_slice(asc.clone()))
                    .field("rate", aac.sample_rate as i32)
                    .field("channels", aac.channels as i32)
                    .build(),
            );
        }
        let video_caps = gst::Caps::builder("video/x-h264")
            .field("stream-format", "avc")
            .field("alignment", "au")
            .field("codec_data", gst::Buffer::from_slice(video_config.clone()))
            .build();
        let spec = PipelineSpec {
            ladder: plan,
            encoder: self.services.encoder,
            x264_preset: config.transcode.x264_preset.clone(),
            audio: audio_plan,
            segment_duration: config.package.segment_duration,
        };
        let packager = Arc::clone(&self.services.packager);
        packager.begin_session(&self.stream, &session, renditions);
        let output = SessionOutput { packager, stream: self.stream.clone(), session: session.clone() };
        let transcoder = match Transcoder::start(&spec, video_caps, audio_caps, sinks, output) {
            Ok(t) => t,
            Err(e) => {
                self.services.packager.end_session(&self.stream, &session);
                return Err(e.to_string());
            }
        };
        let bus = transcoder.bus().stream();
        self.running = Some(Running { transcoder, session, base_ms, bus });
        Ok(())
    }

    async fn stop_session(&mut self, drain: bool) {
        let Some(Running { transcoder, session, bus, .. }) = self.running.take() else { return };
        drop(bus);
        let stopped = tokio::task::spawn_blocking(move || {
            if drain { transcoder.finish(DRAIN_TIMEOUT) } else { transcoder.stop() }
        })
        .await;
        if let Err(e) = stopped {
            tracing::error!("pipeline teardown panicked: {e}");
        }
        self.services.packager.end_session(&self.stream, &session);
    }
}

fn audio_rendition() -> RenditionId {
    RenditionId::parse("audio").expect("valid id")
}

fn rendition_infos(plan: &LadderPlan, aac: Option<&AacConfig>, audio_bitrate: u32) -> Vec<RenditionInfo> {
    let mut infos: Vec<RenditionInfo> = plan
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
    if let Some(aac) = aac {
        infos.push(RenditionInfo {
            id: audio_rendition(),
            kind: TrackKind::Audio,
            // A copied track keeps the source's bitrate, which only the metadata could tell;
            // the configured AAC bitrate is the honest upper bound players need.
            bandwidth: audio_bitrate,
            width: 0,
            height: 0,
            timescale: aac.sample_rate,
            sample_rate: aac.sample_rate,
            channels: aac.channels,
        });
    }
    infos
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
