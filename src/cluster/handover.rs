//! The hand-over of a draining live node's streams (SIGTERM, a rolling restart). The
//! draining node says so in its health answers (membership.rs): peers take it out of the
//! ring, so publishes and relays go to the next node, while origins go on reading the
//! streams it reports. After one probe round it ends its sessions; each ended session is
//! *suspended* (package/snapshot.rs): its Period closes with its end announced and the MPD
//! stays dynamic. The broadcaster, whose connection closed, reconnects (directly or
//! through any node's relay) to the next node on the ring, which before starting its
//! session asks the draining node for the stream (`GET /cluster/handover/{stream}`, signed
//! like every `/cluster/*` request). The draining node answers once its session there has
//! ended, with the stream's whole packaged state; the new owner adopts it and begins its
//! session on the same timeline: the same availabilityStartTime, the same DVR window under
//! the same URLs, one new Period on the same segment grid. Viewers see one Period change.
//!
//! Every wait is bounded ([`EXPORT_WAIT`], [`FETCH_TIMEOUT`]); a hand-over that fails is
//! logged and counted and the new owner starts a timeline of its own (viewers then see a
//! new presentation, as after a node that died).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::Membership;
use crate::auth::peer::PeerClient;
use crate::media::StreamId;
use crate::package::Packager;
use crate::package::snapshot::SnapshotError;

/// Where a draining node serves a stream's state: `/cluster/handover/{stream}`.
pub const HANDOVER_PATH: &str = "/cluster/handover/{stream}";
/// How long the draining node waits for the stream's session there to end (its pipeline
/// drains) before answering 409.
pub const EXPORT_WAIT: Duration = Duration::from_secs(8);
/// How long the new owner waits for a hand-over in all; the publisher waits meanwhile.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the export checks whether the session ended.
const EXPORT_POLL: Duration = Duration::from_millis(20);
/// Snapshot bytes beyond the stream's byte cap that an answer may carry (the header, and
/// the segments a session completed as it ended, which the cap did not count yet).
const SNAPSHOT_SLACK_BYTES: u64 = 64 << 20;

#[derive(Debug, Default)]
pub struct HandoverMetrics {
    adopted: Counter,
    failed: Counter,
}

impl HandoverMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("handover");
        registry.register("adopted", "Streams taken over from a draining node with their timeline", self.adopted.clone());
        registry.register("failures", "Hand-overs from a draining node that failed (the stream started a timeline of its own)", self.failed.clone());
    }
}

/// The new owner's side: takes a stream over from a draining node before its session.
pub struct Handover {
    membership: Membership,
    client: PeerClient,
    packager: Arc<Packager>,
    max_bytes: usize,
    metrics: Arc<HandoverMetrics>,
}

impl Handover {
    pub fn new(membership: Membership, client: PeerClient, packager: Arc<Packager>, max_stream_bytes: u64, metrics: Arc<HandoverMetrics>) -> Self {
        let max_bytes = usize::try_from(max_stream_bytes.saturating_add(SNAPSHOT_SLACK_BYTES)).unwrap_or(usize::MAX);
        Self { membership, client, packager, max_bytes, metrics }
    }

    /// If a draining peer reports `stream`, adopts its state (see the module header).
    pub async fn adopt(&self, stream: &StreamId) {
        let view = self.membership.view();
        let Some(source) = view.handover_source(stream.as_str()) else { return };
        let (peer, http) = (source.id.clone(), source.http);
        drop(view);
        let started = Instant::now();
        let path = HANDOVER_PATH.replace("{stream}", stream.as_str());
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.client.get(&peer, http, &path, self.max_bytes)).await;
        let result = match fetched {
            Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
            Ok(Err(e)) => Err(super::membership::with_causes(&e)),
            Ok(Ok(snapshot)) => self.packager.adopt(stream, snapshot).map_err(|e| e.to_string()),
        };
        match result {
            Ok(adopted) => {
                self.metrics.adopted.inc();
                tracing::info!(
                    stream = %stream, from = %peer, periods = adopted.periods, objects = adopted.objects, bytes = adopted.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "stream taken over from a draining node: its timeline goes on here"
                );
            }
            Err(reason) => {
                self.metrics.failed.inc();
                tracing::warn!(stream = %stream, from = %peer, %reason, "hand-over from a draining node failed; the stream starts a timeline of its own");
            }
        }
    }
}

/// The draining node, after its sessions ended: waits until every stream it suspended was
/// taken by another node, then `settle` more (for the origins' probes to see the new
/// owners), no later than `deadline`. Logs the streams nobody took.
pub async fn wait_until_taken(packager: &Packager, deadline: tokio::time::Instant, settle: Duration) {
    loop {
        let waiting = packager.awaiting_hand_over();
        if waiting.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let streams: Vec<String> = waiting.iter().map(ToString::to_string).collect();
            tracing::warn!(?streams, "drain_grace over: streams not taken over by another node (their broadcasters did not reconnect)");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + settle)).await;
}

/// The draining node's side: `GET /cluster/handover/{stream}` (mount behind the peer guard).
pub fn router(packager: Arc<Packager>) -> Router {
    Router::new().route(HANDOVER_PATH, get(export)).with_state(packager)
}

async fn export(State(packager): State<Arc<Packager>>, Path(stream): Path<String>) -> Response {
    let Ok(stream) = StreamId::parse(&stream) else { return StatusCode::BAD_REQUEST.into_response() };
    let deadline = tokio::time::Instant::now() + EXPORT_WAIT;
    loop {
        match packager.export(&stream) {
            Ok(Some(snapshot)) => {
                tracing::info!(stream = %stream, bytes = snapshot.len(), "stream handed over");
                return snapshot.into_response();
            }
            Ok(None) => return StatusCode::NOT_FOUND.into_response(),
            Err(SnapshotError::InSession) if packager.hands_over() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(EXPORT_POLL).await;
            }
            Err(e) => {
                tracing::warn!(stream = %stream, "hand-over refused: {e}");
                return (StatusCode::CONFLICT, e.to_string()).into_response();
            }
        }
    }
}
