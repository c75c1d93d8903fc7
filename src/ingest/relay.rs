//! Relaying a publish to the stream's owner. A node that takes a broadcaster for a stream
//! it does not own republishes every packet over RTMP to the owner (app [`RELAY_APP`]).
//! When the owner's connection breaks, the relay marks it failed, reconnects to the next
//! node in the placement's order, re-sends the codec configuration and resumes at the next
//! keyframe: the broadcaster's own connection is never touched. An owner that refuses a
//! reconnect may still hold the relay's old, silent connection: while the broadcaster
//! still sends, the refusal is retried until the owner's `ingest.takeover_after` has let
//! the new connection take the old one over. (A relay whose broadcaster went silent and
//! whose connection the owner closed was itself taken over: its refused reconnect ends it.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::flv;
use crate::auth::token::{self, Purpose, RELAY_LIFETIME};
use crate::media::{MediaPacket, StreamId};
use crate::stream::{EndSignal, StreamEnd};

/// RTMP application name on which nodes accept relayed publishes.
pub const RELAY_APP: &str = "_relay";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const SETUP_TIMEOUT: Duration = Duration::from_secs(3);
/// An owner that takes none of our bytes for this long (stopped, or its link silently
/// dead with the socket open) has lost this connection; the relay reconnects.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a relay keeps trying other nodes before it gives the broadcaster up.
const FAILOVER_BUDGET: Duration = Duration::from_secs(15);
const INPUT_CAPACITY: usize = 512;
/// A relay connection that lasted this long resets the back-off.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// Lost connections in a row after which the relay gives the broadcaster up.
const MAX_LOSSES: u32 = 6;
/// Pause between reconnects the owner refused.
const REFUSED_RETRY: Duration = Duration::from_millis(500);

/// Wait before reconnecting after the `losses`-th lost connection: 0.2 s doubling to 5 s.
fn backoff(losses: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(losses.min(6))).min(Duration::from_secs(5))
}

/// A node a relay may publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTarget {
    pub node: String,
    pub rtmp: SocketAddr,
}

/// Where a publish goes, as the federation sees it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node owns the stream: transcode here.
    Local,
    /// Another node owns it: relay there, falling back along the list.
    Relay(Vec<RelayTarget>),
    /// No live node is up.
    Unavailable(String),
}

/// Stream placement, implemented by the cluster (a single node always answers `Local`).
pub trait Placement: Send + Sync {
    fn route(&self, stream: &StreamId) -> Route;
    /// This node as a relay target, when it has the live role (a relay whose owner died
    /// may find that this node is the new owner: it then relays to itself).
    fn self_target(&self) -> Option<RelayTarget>;
    /// A relay saw `node` fail; placement should stop choosing it until probes say otherwise.
    fn peer_failed(&self, node: &str);
    /// Secret with which relayed publishes are signed (see `auth::token`).
    fn relay_secret(&self) -> &str;
    /// Called before this node starts a session of `stream`: a draining node that held it
    /// hands its timeline over first (`cluster::handover`), so the stream goes on here on
    /// the same segment grid. Bounded; on failure the session starts a timeline of its own.
    fn adopt<'a>(&'a self, _stream: &'a StreamId) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// The placement of a node that runs alone.
pub struct Standalone;

impl Placement for Standalone {
    fn route(&self, _: &StreamId) -> Route {
        Route::Local
    }
    fn self_target(&self) -> Option<RelayTarget> {
        None
    }
    fn peer_failed(&self, _: &str) {}
    fn relay_secret(&self) -> &str {
        ""
    }
}

enum RelayInput {
    Metadata(StreamMetadata),
    Packet(MediaPacket),
    /// The broadcaster unpublished: the owner is told so. A relay whose input just ends
    /// (the broadcaster dropped) closes its connection without it, and the owner keeps the
    /// stream live for a reconnect.
    Unpublish,
}

/// Ingest's side of a relay.
pub struct RelayHandle {
    tx: mpsc::Sender<RelayInput>,
    ended: EndSignal,
}

impl RelayHandle {
    pub async fn send(&self, packet: MediaPacket) -> Result<(), StreamEnd> {
        self.tx.send(RelayInput::Packet(packet)).await.map_err(|_| self.ended.now())
    }

    pub async fn send_metadata(&self, metadata: StreamMetadata) -> Result<(), StreamEnd> {
        self.tx.send(RelayInput::Metadata(metadata)).await.map_err(|_| self.ended.now())
    }

    pub async fn ended(&mut self) -> StreamEnd {
        self.ended.wait().await
    }

    /// The broadcaster unpublished (then drop the handle).
    pub fn unpublish(&self) {
        // A full queue drops it: the owner then sees a dropped connection, which ends the
        // stream a reconnect window later instead of at once.
        let _ = self.tx.try_send(RelayInput::Unpublish);
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    /// The TCP connection could not be made: the only relay failure that marks a node down.
    #[error("{node}: connect failed: {reason}")]
    Connect { node: String, reason: String },
    #[error("{node}: {reason}")]
    Peer { node: String, reason: String },
    #[error("{node} refused the publish: {code}")]
    Refused { node: String, code: String },
}

/// Starts relaying `stream`. `takeover_after` is the owner's `ingest.takeover_after` (one
/// config for the federation): how long a reconnect may find the stream still held by this
/// relay's previous connection.
pub fn spawn(
    stream: StreamId,
    placement: Arc<dyn Placement>,
    takeover_after: Duration,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> RelayHandle {
    let (tx, rx) = mpsc::channel(INPUT_CAPACITY);
    let (ended_tx, ended) = EndSignal::channel();
    let span = tracing::info_span!("relay", stream = %stream);
    tracker.spawn(
        async move {
            let end = Relay { stream, placement, takeover_after, config: None, audio: None, metadata: None }.run(rx, shutdown).await;
            match &end {
                StreamEnd::Failed(reason) => tracing::error!("relay gave up: {reason}"),
                other => tracing::info!(?other, "relay ended"),
            }
            let _ = ended_tx.send(Some(end));
        }
        .instrument(span),
    );
    RelayHandle { tx, ended }
}

struct Relay {
    stream: StreamId,
    placement: Arc<dyn Placement>,
    takeover_after: Duration,
    /// Codec configuration and metadata, re-sent to every new owner.
    config: Option<MediaPacket>,
    audio: Option<MediaPacket>,
    metadata: Option<StreamMetadata>,
}

struct Upstream {
    node: String,
    socket: TcpStream,
    session: ClientSession,
    /// After a reconnect the new owner must start on a keyframe.
    awaiting_keyframe: bool,
}

impl Relay {
    async fn run(mut self, mut rx: mpsc::Receiver<RelayInput>, shutdown: CancellationToken) -> StreamEnd {
        let mut upstream: Option<Upstream> = None;
        let mut buf = vec![0u8; 16 * 1024];
        // Connections of this stream lost in a row: each waits longer before reconnecting.
        let mut losses = 0u32;
        let mut connected_at = Instant::now();
        // When the broadcaster last handed us something.
        let mut last_input = Instant::now();
        loop {
            if upstream.is_none() {
                // A reconnect may find our old connection still holding the stream at the
                // owner until it is taken over (not a first connect: that refusal is final).
                let broadcaster_alive = last_input.elapsed() < self.takeover_after;
                if losses > 0 {
                    let wait = backoff(losses);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return StreamEnd::Shutdown,
                    }
                }
                let retry_refusals = if losses > 0 && broadcaster_alive {
                    self.takeover_after + SETUP_TIMEOUT * 2
                } else {
                    Duration::ZERO
                };
                match self.connect_with_failover(&shutdown, retry_refusals).await {
                    Ok(up) => {
                        upstream = Some(up);
                        connected_at = Instant::now();
                    }
                    Err(end) => return end,
                }
            }
            let up = upstream.as_mut().expect("connected above");
            let failure = tokio::select! {
                input = rx.recv() => match input {
                    Some(RelayInput::Unpublish) => {
                        if let Ok(results) = up.session.stop_publishing() {
                            if let Err(e) = write_results(&mut up.socket, results).await {
                                tracing::debug!(node = %up.node, "unpublish not delivered: {e}");
                            }
                        }
                        return StreamEnd::Finished;
                    }
                    None => return StreamEnd::Dropped,
                    Some(input) => {
                        last_input = Instant::now();
                        self.forward(up, input).await.err()
                    }
                },
                read = up.socket.read(&mut buf) => match read {
                    Ok(0) => Some("owner closed the connection".to_owned()),
                    Err(e) => Some(e.to_string()),
                    Ok(n) => match up.session.handle_input(&buf[..n]) {
                        Ok(results) => write_results(&mut up.socket, results).await.err(),
                        Err(e) => Some(format!("{e:?}")),
                    },
                },
                _ = shutdown.cancelled() => return StreamEnd::Shutdown,
            };
            if let Some(reason) = failure {
                // This stream's connection, not the node: only a failed connect (or the
                // health probes) may mark the node down, so its other streams go on.
                if connected_at.elapsed() > STABLE_CONNECTION {
                    losses = 0;
                }
                losses += 1;
                if losses > MAX_LOSSES {
                    return StreamEnd::Failed(format!("{}: connection lost {losses} times in a row: {reason}", up.node));
                }
                tracing::warn!(node = %up.node, attempt = losses, "relay connection lost: {reason}; reconnecting in {:?}", backoff(losses));
                upstream = None;
            }
        }
    }

    async fn forward(&mut self, up: &mut Upstream, input: RelayInput) -> Result<(), String> {
        let result = match input {
            // Handled by the caller.
            RelayInput::Unpublish => return Ok(()),
            RelayInput::Metadata(metadata) => {
                let r = up.session.publish_metadata(&metadata);
                self.metadata = Some(metadata);
                r
            }
            RelayInput::Packet(packet) => {
                match &packet {
                    MediaPacket::VideoConfig(_) => self.config = Some(packet.clone()),
                    MediaPacket::AudioConfig(_) => self.audio = Some(packet.clone()),
                    MediaPacket::Video { keyframe, .. } => {
                        if up.awaiting_keyframe && !keyframe {
                            return Ok(());
                        }
                        up.awaiting_keyframe = false;
                    }
                    MediaPacket::Audio { .. } if up.awaiting_keyframe => return Ok(()),
                    MediaPacket::Audio { .. } => {}
                }
                publish_packet(&mut up.session, &packet)
            }
        };
        match result {
            Ok(ClientSessionResult::OutboundResponse(packet)) => write_within(&mut up.socket, &packet.bytes, WRITE_TIMEOUT).await,
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    /// Connects to the first reachable node of the current route, within the budget; a
    /// refusal is retried for `retry_refusals`.
    async fn connect_with_failover(&mut self, shutdown: &CancellationToken, retry_refusals: Duration) -> Result<Upstream, StreamEnd> {
        let started = Instant::now();
        loop {
            let mut pause = Duration::from_millis(200);
            // The broadcaster stays connected here whatever happens: when this node is the
            // new owner the relay publishes to itself over loopback.
            let targets = match self.placement.route(&self.stream) {
                Route::Relay(targets) => targets,
                Route::Local => self.placement.self_target().into_iter().collect(),
                Route::Unavailable(_) => Vec::new(),
            };
            for target in targets {
                match self.connect(&target).await {
                    Ok(up) => return Ok(up),
                    Err(e @ RelayError::Connect { .. }) => {
                        tracing::warn!("relay target unreachable: {e}");
                        self.placement.peer_failed(&target.node);
                    }
                    Err(e @ RelayError::Refused { .. }) if e.is_busy() && started.elapsed() < retry_refusals => {
                        tracing::warn!("{e}; it may still hold our previous connection until ingest.takeover_after: retrying");
                        pause = REFUSED_RETRY;
                        break;
                    }
                    // The node is up and answered: a refusal, or a set-up it broke off, is
                    // this stream's problem. Going to the next node would publish the same
                    // stream twice; the broadcaster is given up and may reconnect.
                    Err(e) => return Err(StreamEnd::Failed(format!("relay set-up failed: {e}"))),
                }
            }
            if started.elapsed() > FAILOVER_BUDGET {
                return Err(StreamEnd::Failed(format!("no live node reachable within {FAILOVER_BUDGET:?}")));
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return Err(StreamEnd::Shutdown),
            }
        }
    }

    async fn connect(&self, target: &RelayTarget) -> Result<Upstream, RelayError> {
        let peer = |reason: String| RelayError::Peer { node: target.node.clone(), reason };
        let connect = |reason: String| RelayError::Connect { node: target.node.clone(), reason };
        let mut socket = timeout(CONNECT_TIMEOUT, TcpStream::connect(target.rtmp))
            .await
            .map_err(|_| connect("timed out".into()))?
            .map_err(|e| connect(e.to_string()))?;
        let _ = socket.set_nodelay(true);
        let session = timeout(SETUP_TIMEOUT, self.setup(&mut socket, target))
            .await
            .map_err(|_| peer("RTMP set-up timed out".into()))??;
        tracing::info!(node = %target.node, addr = %target.rtmp, "relaying to owner");
        let mut up = Upstream { node: target.node.clone(), socket, session, awaiting_keyframe: true };
        // The new owner needs the metadata and codec configuration before any frame.
        let mut replay = Vec::new();
        if let Some(metadata) = &self.metadata {
            replay.push(up.session.publish_metadata(metadata));
        }
        for packet in [&self.config, &self.audio].into_iter().flatten() {
            replay.push(publish_packet(&mut up.session, packet));
        }
        for result in replay {
            if let Ok(ClientSessionResult::OutboundResponse(p)) = result {
                write_within(&mut up.socket, &p.bytes, WRITE_TIMEOUT).await.map_err(peer)?;
            }
        }
        Ok(up)
    }

    async fn setup(&self, socket: &mut TcpStream, target: &RelayTarget) -> Result<ClientSession, RelayError> {
        let peer = |reason: String| RelayError::Peer { node: target.node.clone(), reason };
        let mut handshake = Handshake::new(PeerType::Client);
        let p0p1 = handshake.generate_outbound_p0_and_p1().map_err(|e| peer(format!("{e:?}")))?;
        socket.write_all(&p0p1).await.map_err(|e| peer(e.to_string()))?;
        let mut buf = vec![0u8; 8192];
        let leftover = loop {
            let n = socket.read(&mut buf).await.map_err(|e| peer(e.to_string()))?;
            if n == 0 {
                return Err(peer("closed during the handshake".into()));
            }
            match handshake.process_bytes(&buf[..n]).map_err(|e| peer(format!("{e:?}")))? {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    socket.write_all(&response_bytes).await.map_err(|e| peer(e.to_string()))?
                }
                HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                    socket.write_all(&response_bytes).await.map_err(|e| peer(e.to_string()))?;
                    break remaining_bytes;
                }
            }
        };
        let (mut session, initial) = ClientSession::new(ClientSessionConfig::new()).map_err(|e| peer(format!("{e:?}")))?;
        write_results(socket, initial).await.map_err(|e| peer(e.to_string()))?;
        let connect = session.request_connection(RELAY_APP.to_owned()).map_err(|e| peer(format!("{e:?}")))?;
        write_results(socket, vec![connect]).await.map_err(|e| peer(e.to_string()))?;
        let mut pending = leftover;
        let mut publishing_requested = false;
        loop {
            if !pending.is_empty() {
                let results = session.handle_input(&pending).map_err(|e| peer(format!("{e:?}")))?;
                pending.clear();
                for result in results {
                    match result {
                        ClientSessionResult::OutboundResponse(p) => socket.write_all(&p.bytes).await.map_err(|e| peer(e.to_string()))?,
                        ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestAccepted) if !publishing_requested => {
                            publishing_requested = true;
                            let key = token::sign(Purpose::Relay, self.stream.as_str(), self.placement.relay_secret(), RELAY_LIFETIME);
                            let publish = session.request_publishing(key, PublishRequestType::Live).map_err(|e| peer(format!("{e:?}")))?;
                            write_results(socket, vec![publish]).await.map_err(|e| peer(e.to_string()))?;
                        }
                        ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestRejected { description }) => {
                            return Err(RelayError::Refused { node: target.node.clone(), code: description });
                        }
                        ClientSessionResult::RaisedEvent(ClientSessionEvent::PublishRequestAccepted) => return Ok(session),
                        ClientSessionResult::RaisedEvent(ClientSessionEvent::UnhandleableOnStatusCode { code }) => {
                            return Err(RelayError::Refused { node: target.node.clone(), code });
                        }
                        // A refused publish comes back as an `_error` for the publish command's
                        // transaction 0, which rml_rtmp's client does not track.
                        ClientSessionResult::RaisedEvent(ClientSessionEvent::UnknownTransactionResultReceived { additional_values, .. })
                            if publishing_requested =>
                        {
                            if let Some(code) = refusal(&additional_values) {
                                return Err(RelayError::Refused { node: target.node.clone(), code });
                            }
                        }
                        _ => {}
                    }
                }
            }
            let n = socket.read(&mut buf).await.map_err(|e| peer(e.to_string()))?;
            if n == 0 {
                return Err(peer("closed during set-up".into()));
            }
            pending.extend_from_slice(&buf[..n]);
        }
    }
}

/// `code: description` of an `_error` status object, if `values` holds one.
fn refusal(values: &[rml_rtmp::rml_amf0::Amf0Value]) -> Option<String> {
    use rml_rtmp::rml_amf0::Amf0Value;
    let Some(Amf0Value::Object(status)) = values.first() else { return None };
    let text = |key: &str| match status.get(key) {
        Some(Amf0Value::Utf8String(s)) => s.as_str(),
        _ => "",
    };
    matches!(text("level"), "_error" | "error").then(|| format!("{}: {}", text("code"), text("description")))
}

impl RelayError {
    /// The owner refused because the stream is being published there (possibly by this
    /// relay's own previous connection, until it is taken over).
    fn is_busy(&self) -> bool {
        matches!(self, RelayError::Refused { code, .. } if code.contains("is already being published"))
    }
}

fn publish_packet(session: &mut ClientSession, packet: &MediaPacket) -> Result<ClientSessionResult, rml_rtmp::sessions::ClientSessionError> {
    let (body, video) = flv::encode(packet);
    let timestamp = RtmpTimestamp::new(flv::timestamp(packet));
    if video {
        session.publish_video_data(body, timestamp, false)
    } else {
        session.publish_audio_data(body, timestamp, false)
    }
}

async fn write_results(socket: &mut TcpStream, results: Vec<ClientSessionResult>) -> Result<(), String> {
    for result in results {
        if let ClientSessionResult::OutboundResponse(packet) = result {
            write_within(socket, &packet.bytes, WRITE_TIMEOUT).await?;
        }
    }
    Ok(())
}

/// Writes all of `bytes`, or fails when the peer has not taken them within `limit`.
async fn write_within(socket: &mut TcpStream, bytes: &[u8], limit: Duration) -> Result<(), String> {
    match timeout(limit, socket.write_all(bytes)).await {
        Ok(written) => written.map_err(|e| e.to_string()),
        Err(_) => Err(format!("owner took no data for {limit:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::rml_amf0::Amf0Value;

    #[tokio::test]
    async fn a_peer_that_stops_reading_fails_the_write_within_its_limit() {
        // A peer that accepts and never reads: once both socket buffers are full, the write
        // blocks, as towards a stopped owner.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut socket = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (_silent, _) = listener.accept().await.unwrap();
        let chunk = vec![0u8; 1 << 20];
        let started = Instant::now();
        let mut outcome = Ok(());
        for _ in 0..64 {
            outcome = write_within(&mut socket, &chunk, Duration::from_millis(300)).await;
            if outcome.is_err() {
                break;
            }
        }
        assert!(outcome.as_ref().is_err_and(|e| e.contains("took no data")), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
    }

    fn status(level: &str, code: &str, description: &str) -> Vec<Amf0Value> {
        let text = |s: &str| Amf0Value::Utf8String(s.to_owned());
        vec![Amf0Value::Object(
            [("level", text(level)), ("code", text(code)), ("description", text(description))]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )]
    }

    #[test]
    fn a_refused_publish_is_read_and_only_a_busy_stream_is_retried() {
        let busy = refusal(&status("_error", "NetStream.Publish.BadName", "stream cam is already being published")).unwrap();
        assert_eq!(busy, "NetStream.Publish.BadName: stream cam is already being published");
        assert!(RelayError::Refused { node: "b".into(), code: busy }.is_busy());
        let token = refusal(&status("_error", "NetStream.Publish.BadName", "relayed publish refused: relay token expired 3 s ago")).unwrap();
        assert!(!RelayError::Refused { node: "b".into(), code: token }.is_busy());
        assert_eq!(refusal(&status("status", "NetStream.Publish.Start", "")), None);
        assert_eq!(refusal(&[Amf0Value::Null]), None);
        assert_eq!(refusal(&[]), None);
        assert!(!RelayError::Connect { node: "b".into(), reason: "is already being published".into() }.is_busy());
    }
}
