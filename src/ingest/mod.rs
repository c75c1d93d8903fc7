//! RTMP ingest: the listener and one task per connection around rml_rtmp's `ServerSession`.
//! The session adapter does no I/O; this module owns the socket, the limits in front of the
//! protocol code (limits.rs: connection caps; guard.rs: message sizes and AMF depth, checked
//! before rml_rtmp sees a byte; handshake, publish, idle and write deadlines), the publish rules
//! (application name, stream keys and their public names (key.rs), one publisher per
//! stream with takeover from a silent one, signed relays from federation peers only), and
//! forwards FLV payloads to the stream's actor. A bad connection is logged, counted and
//! dropped alone. A connection may unpublish (closeStream / deleteStream) and publish
//! again: the publish deadline runs only while it is not publishing.

pub mod config;
pub mod flv;
#[cfg(test)]
mod fuzz;
pub mod guard;
pub mod key;
pub mod limits;
pub mod relay;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cluster::MemberAddresses;
use crate::auth::token::{self, Purpose};
use crate::auth::{PublishAuth, Refusal};
use crate::media::{MediaPacket, StreamId};
use crate::probe::{ProbeConfig, UplinkEstimate, UplinkProbe};
use std::time::{Duration, Instant};
use crate::stream::registry::{ClaimError, PublisherLink};
use crate::stream::{self, StreamHandle, StreamRegistry, StreamServices};
use guard::{ChunkGuard, GuardError};
use limits::{quote, ConnectionLimits, ConnectionPermit, IngestMetrics};
use relay::{Placement, RelayHandle, Route, RELAY_APP};

/// Read buffer of a connection that is not publishing yet (commands are small).
const SETUP_READ_BUFFER: usize = 4 * 1024;
/// Read buffer of a publishing connection.
const MEDIA_READ_BUFFER: usize = 64 * 1024;
/// How long a publish that takes a stream over waits for the old session to end (its
/// drain: the pipeline flushes what it has, which an idle pipeline does in well under a
/// second); past it the publish is refused and the encoder retries.
const TAKEOVER_WAIT: Duration = Duration::from_secs(4);

/// Why a connection was closed by us.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("no data for {0:?}")]
    Idle(std::time::Duration),
    #[error("not publishing {0:?} after connecting")]
    PublishTimeout(std::time::Duration),
    #[error("the broadcaster took no data for {0:?} (ingest.write_timeout)")]
    WriteTimeout(std::time::Duration),
    #[error("refused by the chunk guard: {0}")]
    Guard(#[from] GuardError),
    #[error("RTMP protocol error: {0}")]
    Protocol(String),
    #[error("application {0} refused (this server serves {1:?})")]
    WrongApp(String, String),
    #[error("relay connection from {0}, which is not a federation node")]
    RelayFromStranger(IpAddr),
    #[error("publish refused: {0}")]
    PublishRefused(String),
    #[error("stream ended: {0:?}")]
    StreamEnded(stream::StreamEnd),
    #[error("{0}")]
    Stopped(crate::stream::registry::StopReason),
    #[error("unsupported media: {0}")]
    Media(#[from] flv::FlvError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Accepts RTMP connections until shutdown, admitting each through the connection limits.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<StreamRegistry>,
    placement: Arc<dyn Placement>,
    services: StreamServices,
    metrics: Arc<IngestMetrics>,
    auth: Arc<PublishAuth>,
    members: Arc<MemberAddresses>,
) {
    let shutdown = services.shutdown.clone();
    let ingest = &services.config.ingest;
    let limits = ConnectionLimits::new(ingest.max_connections, ingest.max_connections_per_address, members, Arc::clone(&metrics));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors, most likely: wait instead of spinning.
                tracing::warn!("RTMP accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limits.admit(peer.ip()) else {
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let span = tracing::info_span!("rtmp", %peer, stream = tracing::field::Empty);
        let connection = Connection {
            socket,
            peer,
            registry: Arc::clone(&registry),
            placement: Arc::clone(&placement),
            services: services.clone(),
            metrics: Arc::clone(&metrics),
            auth: Arc::clone(&auth),
            permit,
            from_relay: false,
            app_instance: None,
            publishing: None,
            publish_deadline: None,
            published: false,
            unpublished: None,
        };
        let metrics = Arc::clone(&metrics);
        services.tracker.spawn(
            async move {
                match connection.run().await {
                    Ok(()) => tracing::info!("connection closed"),
                    Err(e) => {
                        count(&metrics, &e);
                        tracing::warn!("connection dropped: {e}");
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Counts why a connection was dropped.
fn count(metrics: &IngestMetrics, error: &IngestError) {
    let counter = match error {
        IngestError::HandshakeTimeout(_) => &metrics.handshake_timeouts,
        IngestError::PublishTimeout(_) => &metrics.publish_timeouts,
        IngestError::Idle(_) => &metrics.idle_timeouts,
        IngestError::WriteTimeout(_) => &metrics.write_timeouts,
        IngestError::Guard(GuardError::AudioTooLarge { .. }) => {
            metrics.audio_too_large.inc();
            &metrics.guard_rejections
        }
        IngestError::Guard(_) => &metrics.guard_rejections,
        IngestError::RelayFromStranger(_) => &metrics.relay_refused,
        IngestError::PublishRefused(_) | IngestError::WrongApp(..) => &metrics.publishes_refused,
        _ => return,
    };
    counter.inc();
}

/// Where a publishing connection's packets go.
enum Sink {
    /// Transcoded on this node.
    Local(StreamHandle),
    /// Relayed to the stream's owner.
    Relay(RelayHandle),
}

struct Publishing {
    stream: StreamId,
    sink: Sink,
    /// The claim's link to the registry, when this node holds the claim.
    link: Option<Arc<PublisherLink>>,
    warned_audio: bool,
    uplink: UplinkWatch,
    /// The stream's codec configurations and last keyframe, for a drain's hand-over.
    picture: LastPicture,
}

/// What a stream transcoded here last showed: the codec configurations and the newest
/// keyframe (shared bytes: keeping them costs nothing).
#[derive(Default)]
struct LastPicture {
    video_config: Option<Bytes>,
    audio_config: Option<Bytes>,
    keyframe: Option<Bytes>,
}

impl LastPicture {
    fn note(&mut self, packet: &MediaPacket) {
        match packet {
            MediaPacket::VideoConfig(config) => self.video_config = Some(config.clone()),
            MediaPacket::AudioConfig(config) => self.audio_config = Some(config.clone()),
            MediaPacket::Video { keyframe: true, data, .. } => self.keyframe = Some(data.clone()),
            _ => {}
        }
    }
}

/// How long a hand-over relay stays connected after its last packet, so the new owner has
/// read it before the connection closes.
const HAND_OVER_LINGER: Duration = Duration::from_millis(200);
/// The `encoder` a hand-over relay's metadata names: the new owner (taking it only from a
/// relay, that is from a node of the federation) continues the adopted timeline without
/// a gap (`stream::hold`).
const HAND_OVER_ENCODER: &str = "rackcast hand-over";

/// The broadcaster's uplink as this connection sees it: fed with every read and media
/// message, reported to the stream every [`UPLINK_REPORT_EVERY`].
struct UplinkWatch {
    probe: UplinkProbe,
    started: Instant,
    last_report: Instant,
    bound: bool,
}

const UPLINK_REPORT_EVERY: Duration = Duration::from_millis(500);

impl UplinkWatch {
    fn new(catalogue: Vec<crate::ladder::config::RungConfig>) -> Self {
        let now = Instant::now();
        Self { probe: UplinkProbe::new(ProbeConfig::default(), catalogue), started: now, last_report: now, bound: false }
    }

    /// The estimate, when a report is due.
    fn due(&mut self) -> Option<UplinkEstimate> {
        if self.last_report.elapsed() < UPLINK_REPORT_EVERY {
            return None;
        }
        self.last_report = Instant::now();
        let estimate = self.probe.estimate(self.started.elapsed());
        if estimate.uplink_bound != self.bound {
            self.bound = estimate.uplink_bound;
            let recommended_kbps = estimate.recommended_publish_bps.map(|b| (b / 1000.0).round());
            if self.bound {
                tracing::warn!(
                    throughput_kbps = (estimate.throughput_bps / 1000.0).round(), ?recommended_kbps,
                    recommended_height = ?estimate.recommended_height,
                    "broadcaster's uplink cannot carry its stream (media falls behind real time)"
                );
            } else {
                tracing::info!("broadcaster's uplink keeps up again");
            }
        }
        Some(estimate)
    }
}

struct Connection {
    socket: TcpStream,
    peer: SocketAddr,
    registry: Arc<StreamRegistry>,
    placement: Arc<dyn Placement>,
    services: StreamServices,
    metrics: Arc<IngestMetrics>,
    auth: Arc<PublishAuth>,
    /// Its place under the connection limits; also says whether the peer is a node.
    permit: ConnectionPermit,
    /// The peer is another node relaying a publish it took.
    from_relay: bool,
    /// What followed the application in the URL's path (`room` of app `live/room`): the
    /// first elements of the stream key.
    app_instance: Option<String>,
    publishing: Option<Publishing>,
    /// While not publishing: when the connection is closed unless it publishes. Set at
    /// accept and again at an unpublish; cleared when a publish starts.
    publish_deadline: Option<tokio::time::Instant>,
    /// A publish has started on this connection (its deadline then is not a time-out).
    published: bool,
    /// The stream this connection last unpublished and its claim's link: a new publish of
    /// the same stream waits for that session to end first.
    unpublished: Option<(StreamId, Arc<PublisherLink>)>,
}

impl Connection {
    async fn run(mut self) -> Result<(), IngestError> {
        let config = Arc::clone(&self.services.config);
        let publish_timeout = config.ingest.publish_timeout;
        self.publish_deadline = Some(tokio::time::Instant::now() + publish_timeout);
        let handshake_timeout = config.ingest.handshake_timeout;
        let leftover = timeout(handshake_timeout, self.handshake())
            .await
            .map_err(|_| IngestError::HandshakeTimeout(handshake_timeout))??;
        tracing::debug!(peer = %self.peer, "handshake complete");
        let mut guard = ChunkGuard::new(config.ingest.max_media_message).with_audio_limit(config.ingest.max_audio_message);
        let (mut session, initial) = ServerSession::new(ServerSessionConfig::new()).map_err(|e| IngestError::Protocol(e.to_string()))?;
        self.apply(&mut session, initial).await?;
        if !leftover.is_empty() {
            guard.inspect(&leftover)?;
            let results = session.handle_input(&leftover).map_err(|e| IngestError::Protocol(e.to_string()))?;
            self.apply(&mut session, results).await?;
        }
        let idle = config.ingest.idle_timeout;
        let mut buf = vec![0u8; SETUP_READ_BUFFER];
        let shutdown = self.services.shutdown.clone();
        loop {
            let link = self.publishing.as_ref().and_then(|p| p.link.clone());
            let read = tokio::select! {
                read = timeout(idle, self.socket.read(&mut buf)) => read.map_err(|_| IngestError::Idle(idle))??,
                end = ended(&mut self.publishing) => return Err(IngestError::StreamEnded(end)),
                reason = stopped(link.as_deref()) => return Err(IngestError::Stopped(reason)),
                _ = until(self.publish_deadline) => {
                    if self.published {
                        tracing::info!("no new publish within {publish_timeout:?} of the unpublish; closing");
                        return Ok(());
                    }
                    return Err(IngestError::PublishTimeout(publish_timeout));
                }
                _ = shutdown.cancelled() => {
                    self.hand_over_picture();
                    return Ok(());
                }
            };
            if read == 0 {
                return Ok(());
            }
            guard.inspect(&buf[..read])?;
            if let Some(p) = self.publishing.as_mut() {
                p.uplink.probe.on_bytes(p.uplink.started.elapsed(), read);
            }
            let results = session.handle_input(&buf[..read]).map_err(|e| IngestError::Protocol(e.to_string()))?;
            self.apply(&mut session, results).await?;
            if self.publishing.is_some() && buf.len() < MEDIA_READ_BUFFER {
                buf.resize(MEDIA_READ_BUFFER, 0);
            }
        }
    }

    async fn handshake(&mut self) -> Result<Vec<u8>, IngestError> {
        let mut handshake = Handshake::new(PeerType::Server);
        let mut buf = [0u8; 4096];
        loop {
            let n = self.socket.read(&mut buf).await?;
            if n == 0 {
                return Err(IngestError::Handshake("peer closed during the handshake".into()));
            }
            match handshake.process_bytes(&buf[..n]).map_err(|e| IngestError::Handshake(format!("{e:?}")))? {
                HandshakeProcessResult::InProgress { response_bytes } => self.socket.write_all(&response_bytes).await?,
                HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                    self.socket.write_all(&response_bytes).await?;
                    return Ok(remaining_bytes);
                }
            }
        }
    }

    /// Writes responses and reacts to events, in order.
    async fn apply(&mut self, session: &mut ServerSession, results: Vec<ServerSessionResult>) -> Result<(), IngestError> {
        let mut queue = std::collections::VecDeque::from(results);
        while let Some(result) = queue.pop_front() {
            match result {
                ServerSessionResult::OutboundResponse(packet) => self.write(&packet.bytes).await?,
                ServerSessionResult::RaisedEvent(event) => {
                    let more = self.on_event(session, event).await?;
                    queue.extend(more);
                }
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    async fn on_event(&mut self, session: &mut ServerSession, event: ServerSessionEvent) -> Result<Vec<ServerSessionResult>, IngestError> {
        let protocol = |e: rml_rtmp::sessions::ServerSessionError| IngestError::Protocol(e.to_string());
        match event {
            ServerSessionEvent::ConnectionRequested { request_id, app_name } => {
                let expected = self.services.config.ingest.app.clone();
                self.from_relay = app_name == RELAY_APP && self.services.config.cluster.federated();
                if self.from_relay && !self.permit.from_federation_node() {
                    let results = session
                        .reject_request(request_id, "NetConnection.Connect.Rejected", "relays are accepted from federation nodes only")
                        .map_err(protocol)?;
                    self.flush(results).await?;
                    return Err(IngestError::RelayFromStranger(self.peer.ip()));
                }
                // `rtmp://host/live/room/cam` arrives as app `live/room`, key `cam` (ffmpeg,
                // librtmp): the instance is part of the key.
                let instance = app_name.strip_prefix(expected.as_str()).and_then(|rest| rest.strip_prefix('/'));
                if app_name != expected && instance.is_none() && !self.from_relay {
                    let results = session
                        .reject_request(request_id, "NetConnection.Connect.Rejected", "unknown application")
                        .map_err(protocol)?;
                    self.flush(results).await?;
                    return Err(IngestError::WrongApp(quote(&app_name), expected));
                }
                self.app_instance = instance.map(|i| i.trim_end_matches('/').to_owned()).filter(|i| !i.is_empty());
                session.accept_request(request_id).map_err(protocol)
            }
            ServerSessionEvent::PublishStreamRequested { request_id, stream_key, .. } => {
                match self.start_publish(&stream_key).await {
                    Ok(publishing) => {
                        tracing::Span::current().record("stream", publishing.stream.as_str());
                        tracing::info!(stream = %publishing.stream, "publish accepted");
                        self.publishing = Some(publishing);
                        self.publish_deadline = None;
                        self.published = true;
                        session.accept_request(request_id).map_err(protocol)
                    }
                    Err(reason) => {
                        let results = session.reject_request(request_id, "NetStream.Publish.BadName", &reason).map_err(protocol)?;
                        self.flush(results).await?;
                        Err(IngestError::PublishRefused(reason))
                    }
                }
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                if let Some(p) = self.publishing.as_mut() {
                    let kbps = |v: Option<u32>| v.filter(|k| *k > 0).map(f64::from);
                    p.uplink.probe.on_metadata(kbps(metadata.video_bitrate_kbps), kbps(metadata.audio_bitrate_kbps));
                }
                match &self.publishing {
                    Some(Publishing { sink: Sink::Relay(relay), .. }) => {
                        relay.send_metadata(metadata.clone()).await.map_err(IngestError::StreamEnded)?;
                    }
                    Some(Publishing { sink: Sink::Local(stream), .. }) => {
                        if let Some(fps) = metadata.video_frame_rate {
                            stream.report_metadata_frame_rate(f64::from(fps));
                        }
                        if self.from_relay && metadata.encoder.as_deref() == Some(HAND_OVER_ENCODER) {
                            stream.mark_hand_over();
                        }
                    }
                    None => {}
                }
                tracing::info!(
                    width = ?metadata.video_width, height = ?metadata.video_height, fps = ?metadata.video_frame_rate,
                    video_kbps = ?metadata.video_bitrate_kbps, audio_kbps = ?metadata.audio_bitrate_kbps,
                    encoder = ?metadata.encoder, "broadcaster metadata"
                );
                Ok(Vec::new())
            }
            ServerSessionEvent::VideoDataReceived { data, timestamp, .. } => {
                self.observe_media(timestamp.value, data.len(), true);
                if let Some(packet) = flv::parse_video(timestamp.value, &data)? {
                    self.forward(packet).await?;
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::AudioDataReceived { data, timestamp, .. } => {
                self.observe_media(timestamp.value, data.len(), false);
                self.forward_audio(timestamp.value, &data).await?;
                Ok(Vec::new())
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                if let Some(publishing) = self.publishing.take() {
                    match &publishing.sink {
                        Sink::Local(handle) => handle.unpublish(),
                        Sink::Relay(handle) => handle.unpublish(),
                    }
                    self.metrics.unpublishes.inc();
                    tracing::info!(stream = %publishing.stream, "broadcaster unpublished");
                    // Dropping the sink ends the session; the connection may publish again.
                    self.publish_deadline = Some(tokio::time::Instant::now() + self.services.config.ingest.publish_timeout);
                    self.unpublished = publishing.link.clone().map(|link| (publishing.stream.clone(), link));
                }
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    async fn flush(&mut self, results: Vec<ServerSessionResult>) -> Result<(), IngestError> {
        for result in results {
            if let ServerSessionResult::OutboundResponse(packet) = result {
                self.write(&packet.bytes).await?;
            }
        }
        Ok(())
    }

    /// Writes all of `bytes` to the broadcaster within `ingest.write_timeout`.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), IngestError> {
        let limit = self.services.config.ingest.write_timeout;
        timeout(limit, self.socket.write_all(bytes)).await.map_err(|_| IngestError::WriteTimeout(limit))??;
        Ok(())
    }

    /// Applies the publish rules, then transcodes here or relays to the stream's owner.
    /// Refusals never name the key: with `[ingest.keys]` it is a secret.
    async fn start_publish(&mut self, stream_key: &str) -> Result<Publishing, String> {
        if self.publishing.is_some() {
            return Err("this connection is already publishing".into());
        }
        let ingest = &self.services.config.ingest;
        let stream = if self.from_relay {
            let name = token::verify(Purpose::Relay, stream_key, self.placement.relay_secret()).map_err(|e| {
                self.metrics.relay_refused.inc();
                format!("relayed publish refused: relay {e}")
            })?;
            StreamId::parse(name).map_err(|e| format!("invalid relayed stream name: {e}"))?
        } else {
            // The `?query` is never part of the public name (it is what publish
            // authentication will read); see key.rs for the rest.
            let full;
            let name = match &self.app_instance {
                Some(instance) => {
                    full = format!("{instance}/{stream_key}");
                    full.as_str()
                }
                None => stream_key,
            };
            let stream = self.auth.resolve(name, self.peer.ip()).await.map_err(|e| match e {
                Refusal::Key(e @ key::KeyError::Unknown) => e.to_string(),
                Refusal::Key(e) => format!("invalid stream key: {e}"),
                Refusal::RateLimited | Refusal::Token(_) => e.to_string(),
                Refusal::Store(ref store) => {
                    tracing::error!("the stream key store failed: {store}");
                    e.to_string()
                }
            })?;
            self.auth.admit(&stream, self.peer.ip()).await.map_err(|e| e.to_string())?;
            stream
        };
        // A relayed publish is always ours: the relaying node already chose us.
        let route = if self.from_relay { Route::Local } else { self.placement.route(&stream) };
        // The uplink is measured from when this node starts reading the publisher.
        let rungs = self.services.config.transcode.rungs.clone();
        let uplink = move || UplinkWatch::new(rungs);
        Ok(match route {
            Route::Local => {
                // This connection's own previous session of the stream is still draining.
                if let Some((_, link)) = self.unpublished.take().filter(|(previous, _)| *previous == stream)
                    && timeout(TAKEOVER_WAIT, link.released()).await.is_err()
                {
                    tracing::warn!(stream = %stream, "the previous session of this connection did not end within {TAKEOVER_WAIT:?}");
                }
                let (peer, rungs) = (self.peer, self.services.config.transcode.rungs.clone());
                let resumed = |(handle, link)| {
                    tracing::info!(stream = %stream, %peer, "the publish resumes the held stream");
                    Publishing { stream: stream.clone(), sink: Sink::Local(handle), link: Some(link), warned_audio: false, uplink: UplinkWatch::new(rungs), picture: LastPicture::default() }
                };
                // A stream held for its dropped broadcaster: this publish continues its Period.
                if let Some(held) = self.registry.resume_held(&stream) {
                    return Ok(resumed(held));
                }
                let (claim, takeover) = match self.registry.claim_or_take_over(&stream, self.peer, ingest.takeover_after, TAKEOVER_WAIT).await {
                    Ok(claimed) => claimed,
                    // Its publisher may be about to drop into a hold (a draining node's
                    // hand-over relay closes a moment after its last packet): with holds
                    // on, the publish waits a while for that before it is refused.
                    Err(busy @ ClaimError::Busy(_)) if !self.services.config.package.hold_last_frame.is_zero() => {
                        return self.registry.resume_when_held(&stream, TAKEOVER_WAIT).await.map(resumed).ok_or_else(|| busy.to_string());
                    }
                    Err(e) => return Err(e.to_string()),
                };
                if let Some(t) = takeover {
                    self.metrics.takeovers.inc();
                    tracing::warn!(
                        stream = %stream,
                        previous = %t.previous.map_or_else(|| "?".to_owned(), |a| a.to_string()),
                        peer = %self.peer,
                        silent_ms = t.silent_for.as_millis() as u64,
                        closed_in_ms = t.waited.as_millis() as u64,
                        "publisher taken over: the previous one sent no media for ingest.takeover_after; closed it"
                    );
                }
                // Holding the claim: a draining node that had the stream hands it over first.
                self.placement.adopt(&stream).await;
                let link = Some(Arc::clone(claim.link()));
                Publishing { stream, sink: Sink::Local(stream::spawn(claim, self.services.clone())), link, warned_audio: false, uplink: uplink(), picture: LastPicture::default() }
            }
            // The owner enforces one publisher per stream; a relay holds no claim here, so
            // that this node can still become the owner and take its own relay.
            Route::Relay(_) => {
                let handle = relay::spawn(
                    stream.clone(),
                    Arc::clone(&self.placement),
                    ingest.takeover_after,
                    &self.services.tracker,
                    self.services.shutdown.clone(),
                );
                Publishing { stream, sink: Sink::Relay(handle), link: None, warned_audio: false, uplink: uplink(), picture: LastPicture::default() }
            }
            Route::Unavailable(reason) => return Err(format!("no live node can take the stream: {reason}")),
        })
    }

    fn observe_media(&mut self, timestamp: u32, bytes: usize, video: bool) {
        let Some(p) = self.publishing.as_mut() else { return };
        if let Some(link) = &p.link {
            link.media_arrived();
        }
        p.uplink.probe.on_media(p.uplink.started.elapsed(), timestamp, bytes, video);
        if let Some(estimate) = p.uplink.due()
            && let Sink::Local(handle) = &p.sink {
                handle.report_uplink(estimate, p.uplink.probe.history());
            }
    }

    async fn forward(&mut self, packet: MediaPacket) -> Result<(), IngestError> {
        let Some(publishing) = &mut self.publishing else { return Ok(()) };
        // While the stream holds us back, the publisher is not silent: we are not reading.
        let _busy = publishing.link.as_deref().map(PublisherLink::busy);
        let sent = match &publishing.sink {
            Sink::Local(handle) => {
                publishing.picture.note(&packet);
                handle.send(packet).await
            }
            Sink::Relay(handle) => handle.send(packet).await,
        };
        sent.map_err(IngestError::StreamEnded)
    }

    /// A draining node's last act for a stream it transcoded, when streams are held
    /// (`package.hold_last_frame`): its codec configurations and last keyframe, relayed to
    /// the stream's next owner, which adopts the stream (its timeline, from this node) and
    /// holds that picture until the broadcaster, whose connection closes here, reconnects
    /// to it. The new owner's segments so start at once instead of after the reconnect.
    fn hand_over_picture(&mut self) {
        let Some(publishing) = self.publishing.take() else { return };
        let LastPicture { video_config: Some(video_config), audio_config, keyframe: Some(keyframe) } = publishing.picture else { return };
        let config = &self.services.config;
        // Only where the stream moves on: a draining node of a federation.
        if config.package.hold_last_frame.is_zero() || !matches!(self.placement.route(&publishing.stream), Route::Relay(_)) {
            return;
        }
        let stream = publishing.stream;
        tracing::info!(stream = %stream, "draining: the stream's last picture goes to its next owner, which holds it until the broadcaster reconnects");
        // Its own token: this node's shutdown has begun, and the drain waits for the tracker.
        let relay = relay::spawn(stream, Arc::clone(&self.placement), config.ingest.takeover_after, &self.services.tracker, CancellationToken::new());
        self.services.tracker.spawn(async move {
            let mut marker = rml_rtmp::sessions::StreamMetadata::new();
            marker.encoder = Some(HAND_OVER_ENCODER.to_owned());
            if relay.send_metadata(marker).await.is_err() {
                return;
            }
            let packets = [Some(MediaPacket::VideoConfig(video_config)), audio_config.map(MediaPacket::AudioConfig), Some(MediaPacket::Video { dts_ms: 0, cts_ms: 0, keyframe: true, data: keyframe })];
            for packet in packets.into_iter().flatten() {
                if relay.send(packet).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(HAND_OVER_LINGER).await;
            // Dropped without an unpublish: the owner holds the stream.
        });
    }

    /// Audio in a codec we cannot take is dropped with one warning: the video goes on.
    async fn forward_audio(&mut self, timestamp: u32, data: &Bytes) -> Result<(), IngestError> {
        match flv::parse_audio(timestamp, data) {
            Ok(Some(packet)) => self.forward(packet).await,
            Ok(None) => Ok(()),
            Err(e) => {
                if let Some(publishing) = self.publishing.as_mut().filter(|p| !p.warned_audio) {
                    publishing.warned_audio = true;
                    tracing::warn!(stream = %publishing.stream, "audio dropped: {e}");
                }
                Ok(())
            }
        }
    }
}

/// Resolves when the publisher is asked to close (a takeover, an admin); pending while
/// not publishing or while this node holds no claim for it.
async fn stopped(link: Option<&PublisherLink>) -> crate::stream::registry::StopReason {
    match link {
        Some(link) => link.stopped().await,
        None => std::future::pending().await,
    }
}

/// Resolves at `deadline`; pending without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the publishing stream's actor has ended; pending while not publishing.
async fn ended(publishing: &mut Option<Publishing>) -> stream::StreamEnd {
    match publishing.as_mut().map(|p| &mut p.sink) {
        Some(Sink::Local(handle)) => handle.ended().await,
        Some(Sink::Relay(handle)) => handle.ended().await,
        None => std::future::pending().await,
    }
}
