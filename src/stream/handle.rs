//! Ingest's side of a stream: the services every actor gets (with the config sections
//! streams and ingest read), the handle ingest sends packets and uplink estimates through (a bounded channel: back-pressure reaches the
//! broadcaster's TCP window), and the end signal ingest and the relay wait on. The actor
//! behind a handle is started by `actor::spawn`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::config::ClusterConfig;
use crate::ingest::config::IngestConfig;
use crate::ladder::config::LadderConfig;
use crate::media::MediaPacket;
use crate::package::config::PackageConfig;
use crate::package::Packager;
use crate::probe::UplinkEstimate;
use crate::transcode::config::TranscodeConfig;
use crate::transcode::resources::Resources;
use super::registry::SharedStatus;

/// The config sections a stream actor and an ingest connection read, copied from the
/// node's config by the wiring (app.rs).
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The federation's nodes: ingest takes relayed publishes from them, outside the
    /// per-address connection limit.
    pub cluster: ClusterConfig,
    pub ingest: IngestConfig,
    pub transcode: TranscodeConfig,
    pub ladder: LadderConfig,
    pub package: PackageConfig,
}

/// What every stream actor needs from the node.
#[derive(Clone)]
pub struct StreamServices {
    pub config: Arc<StreamConfig>,
    pub packager: Arc<Packager>,
    pub transcode: Arc<Resources>,
    /// Streams ended by a pipeline error (`rackcast_transcode_failures_total`).
    pub transcode_failures: prometheus_client::metrics::counter::Counter,
    /// Streams held through a dropped broadcaster's absence, and those it came back to
    /// within the hold (`package.hold_last_frame`).
    pub holds: prometheus_client::metrics::counter::Counter,
    pub resumed_holds: prometheus_client::metrics::counter::Counter,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

impl StreamServices {
    /// Registers the stream actors' metrics in the node's registry.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("transcode_failures", "Streams ended by a pipeline error", self.transcode_failures.clone());
        registry.register("stream_holds", "Streams that held their last picture when their broadcaster dropped", self.holds.clone());
        registry.register("stream_resumed_holds", "Held streams whose broadcaster reconnected within the hold: the same Period went on", self.resumed_holds.clone());
    }
}

/// Why a stream's session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The broadcaster unpublished.
    Finished,
    /// The broadcaster's connection ended without an unpublish (a network drop, a relaying
    /// node that shut down): it may reconnect, so the stream stays live a while
    /// (`package.reconnect_window`).
    Dropped,
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

/// Packets a stream may have in flight from ingest before ingest waits.
const INPUT_CAPACITY: usize = 512;

/// The actor's side of one broadcaster's connection: its packets, its uplink estimates,
/// and whether it unpublished before it ended.
pub(super) struct Input {
    pub packets: mpsc::Receiver<MediaPacket>,
    pub uplink: tokio::sync::watch::Receiver<Option<UplinkEstimate>>,
    pub unpublished: Arc<AtomicBool>,
    /// Set before its first packet when it is a draining node's hand-over picture.
    pub hand_over: Arc<AtomicBool>,
}

/// Ingest's side of a stream actor. Dropping it ends the session (or, for a broadcaster
/// that dropped, starts the actor's hold: `hold.rs`).
pub struct StreamHandle {
    pub(super) tx: mpsc::Sender<MediaPacket>,
    /// Set before the handle is dropped when the broadcaster unpublished.
    pub(super) unpublished: Arc<AtomicBool>,
    pub(super) hand_over: Arc<AtomicBool>,
    pub(super) uplink: tokio::sync::watch::Sender<Option<UplinkEstimate>>,
    pub(super) status: SharedStatus,
    pub(super) ended: EndSignal,
}

impl StreamHandle {
    /// A connection to the actor whose status is `status` and whose end is `ended`: the
    /// handle for ingest and the input for the actor.
    pub(super) fn connect(status: SharedStatus, ended: EndSignal) -> (Self, Input) {
        let (tx, packets) = mpsc::channel(INPUT_CAPACITY);
        let (uplink, uplink_rx) = tokio::sync::watch::channel(None);
        let (unpublished, hand_over) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let input = Input { packets, uplink: uplink_rx, unpublished: Arc::clone(&unpublished), hand_over: Arc::clone(&hand_over) };
        (Self { tx, unpublished, hand_over, uplink, status, ended }, input)
    }

    /// The publish is a draining node's hand-over picture (`ingest::HAND_OVER_ENCODER`):
    /// its session continues the adopted timeline where its media ended (`hold.rs`).
    pub fn mark_hand_over(&self) {
        self.hand_over.store(true, Ordering::SeqCst);
    }

    /// The broadcaster unpublished: dropping the handle then ends the stream for good
    /// (otherwise the end counts as a dropped connection, [`StreamEnd::Dropped`]).
    pub fn unpublish(&self) {
        self.unpublished.store(true, Ordering::SeqCst);
    }
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

