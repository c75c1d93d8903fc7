//! RTMP ingest: the listener and one task per connection around rml_rtmp's `ServerSession`.
//! The session adapter does no I/O; this module owns the socket, the time-outs and the
//! publish rules (application name, stream keys, one publisher per stream), and forwards
//! FLV payloads to the stream's actor. A bad connection is logged and dropped alone.

pub mod flv;
pub mod relay;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::Instrument;

use crate::media::{MediaPacket, StreamId};
use crate::probe::{ProbeConfig, UplinkEstimate, UplinkProbe};
use std::time::{Duration, Instant};
use crate::stream::{self, StreamHandle, StreamRegistry, StreamServices};
use relay::{Placement, RelayHandle, Route, RELAY_APP};

/// Why a connection was closed by us.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("no data for {0:?}")]
    Idle(std::time::Duration),
    #[error("RTMP protocol error: {0}")]
    Protocol(String),
    #[error("application {0:?} refused (this server serves {1:?})")]
    WrongApp(String, String),
    #[error("publish refused: {0}")]
    PublishRefused(String),
    #[error("stream ended: {0:?}")]
    StreamEnded(stream::StreamEnd),
    #[error("unsupported media: {0}")]
    Media(#[from] flv::FlvError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Accepts RTMP connections until shutdown.
pub async fn serve(listener: TcpListener, registry: Arc<StreamRegistry>, placement: Arc<dyn Placement>, services: StreamServices) {
    let shutdown = services.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("RTMP accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let span = tracing::info_span!("rtmp", %peer, stream = tracing::field::Empty);
        let connection = Connection {
            socket,
            peer,
            registry: Arc::clone(&registry),
            placement: Arc::clone(&placement),
            services: services.clone(),
            from_relay: false,
            publishing: None,
        };
        services.tracker.spawn(
            async move {
                match connection.run().await {
                    Ok(()) => tracing::info!("connection closed"),
                    Err(e) => tracing::warn!("connection dropped: {e}"),
                }
            }
            .instrument(span),
        );
    }
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
    warned_audio: bool,
    uplink: UplinkWatch,
}

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
    fn new(catalogue: Vec<crate::config::RungConfig>) -> Self {
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
    /// The peer is another node relaying a publish it took.
    from_relay: bool,
    publishing: Option<Publishing>,
}

impl Connection {
    async fn run(mut self) -> Result<(), IngestError> {
        let config = Arc::clone(&self.services.config);
        let handshake_timeout = config.ingest.handshake_timeout;
        let leftover = timeout(handshake_timeout, self.handshake())
            .await
            .map_err(|_| IngestError::HandshakeTimeout(handshake_timeout))??;
        tracing::debug!(peer = %self.peer, "handshake complete");
        let (mut session, initial) = ServerSession::new(ServerSessionConfig::new()).map_err(|e| IngestError::Protocol(e.to_string()))?;
        self.apply(&mut session, initial).await?;
        if !leftover.is_empty() {
            let results = session.handle_input(&leftover).map_err(|e| IngestError::Protocol(e.to_string()))?;
            self.apply(&mut session, results).await?;
        }
        let idle = config.ingest.idle_timeout;
        let mut buf = vec![0u8; 64 * 1024];
        let shutdown = self.services.shutdown.clone();
        loop {
            let read = tokio::select! {
                read = timeout(idle, self.socket.read(&mut buf)) => read.map_err(|_| IngestError::Idle(idle))??,
                end = ended(&mut self.publishing) => return Err(IngestError::StreamEnded(end)),
                _ = shutdown.cancelled() => return Ok(()),
            };
            if read == 0 {
                return Ok(());
            }
            if let Some(p) = self.publishing.as_mut() {
                p.uplink.probe.on_bytes(p.uplink.started.elapsed(), read);
            }
            let results = session.handle_input(&buf[..read]).map_err(|e| IngestError::Protocol(e.to_string()))?;
            self.apply(&mut session, results).await?;
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
                ServerSessionResult::OutboundResponse(packet) => self.socket.write_all(&packet.bytes).await?,
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
                self.from_relay = app_name == RELAY_APP && !self.services.config.cluster.nodes.is_empty();
                if app_name != expected && !self.from_relay {
                    let results = session
                        .reject_request(request_id, "NetConnection.Connect.Rejected", &format!("unknown application {app_name:?}"))
                        .map_err(protocol)?;
                    self.flush(results).await?;
                    return Err(IngestError::WrongApp(app_name, expected));
                }
                session.accept_request(request_id).map_err(protocol)
            }
            ServerSessionEvent::PublishStreamRequested { request_id, stream_key, .. } => {
                match self.start_publish(&stream_key) {
                    Ok(publishing) => {
                        tracing::Span::current().record("stream", publishing.stream.as_str());
                        tracing::info!(stream = %publishing.stream, "publish accepted");
                        self.publishing = Some(publishing);
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
                if let Some(Publishing { sink: Sink::Relay(relay), .. }) = &self.publishing {
                    relay.send_metadata(metadata.clone()).await.map_err(IngestError::StreamEnded)?;
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
                    tracing::info!(stream = %publishing.stream, "broadcaster unpublished");
                }
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    async fn flush(&mut self, results: Vec<ServerSessionResult>) -> Result<(), IngestError> {
        for result in results {
            if let ServerSessionResult::OutboundResponse(packet) = result {
                self.socket.write_all(&packet.bytes).await?;
            }
        }
        self.socket.flush().await?;
        Ok(())
    }

    /// Applies the publish rules, then transcodes here or relays to the stream's owner.
    fn start_publish(&mut self, stream_key: &str) -> Result<Publishing, String> {
        if self.publishing.is_some() {
            return Err("this connection is already publishing".into());
        }
        let name = if self.from_relay {
            let (name, secret) = relay::parse_relay_key(stream_key);
            if secret != self.placement.relay_secret() {
                return Err("relay secret does not match".into());
            }
            name
        } else {
            let keys = &self.services.config.ingest.keys;
            if keys.is_empty() {
                stream_key
            } else {
                keys.get(stream_key).map(String::as_str).ok_or_else(|| "stream key not recognised".to_owned())?
            }
        };
        let stream = StreamId::parse(name).map_err(|e| format!("invalid stream key: {e}"))?;
        // A relayed publish is always ours: the relaying node already chose us.
        let route = if self.from_relay { Route::Local } else { self.placement.route(&stream) };
        let uplink = UplinkWatch::new(self.services.config.transcode.rungs.clone());
        Ok(match route {
            Route::Local => {
                let claim = self.registry.claim(&stream).map_err(|e| e.to_string())?;
                Publishing { stream, sink: Sink::Local(stream::spawn(claim, self.services.clone())), warned_audio: false, uplink }
            }
            // The owner enforces one publisher per stream; a relay holds no claim here, so
            // that this node can still become the owner and take its own relay.
            Route::Relay(_) => {
                let handle = relay::spawn(
                    stream.clone(),
                    Arc::clone(&self.placement),
                    &self.services.tracker,
                    self.services.shutdown.clone(),
                );
                Publishing { stream, sink: Sink::Relay(handle), warned_audio: false, uplink }
            }
            Route::Unavailable(reason) => return Err(format!("no live node can take the stream: {reason}")),
        })
    }

    fn observe_media(&mut self, timestamp: u32, bytes: usize, video: bool) {
        let Some(p) = self.publishing.as_mut() else { return };
        p.uplink.probe.on_media(p.uplink.started.elapsed(), timestamp, bytes, video);
        if let Some(estimate) = p.uplink.due()
            && let Sink::Local(handle) = &p.sink {
                handle.report_uplink(estimate, p.uplink.probe.history());
            }
    }

    async fn forward(&mut self, packet: MediaPacket) -> Result<(), IngestError> {
        let Some(publishing) = &self.publishing else { return Ok(()) };
        let sent = match &publishing.sink {
            Sink::Local(handle) => handle.send(packet).await,
            Sink::Relay(handle) => handle.send(packet).await,
        };
        sent.map_err(IngestError::StreamEnded)
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

/// Resolves when the publishing stream's actor has ended; pending while not publishing.
async fn ended(publishing: &mut Option<Publishing>) -> stream::StreamEnd {
    match publishing.as_mut().map(|p| &mut p.sink) {
        Some(Sink::Local(handle)) => handle.ended().await,
        Some(Sink::Relay(handle)) => handle.ended().await,
        None => std::future::pending().await,
    }
}
