//! Stream keys across a federation: every node answers health probes with its key
//! store's fingerprint ([`KeyStore::fingerprint`]); when a peer's differs from ours, we
//! read its records from [`KEYS_PATH`] and merge them ([`KeyStore::merge`]: union of
//! keys, revocations win). Each node pulls, so a key made or revoked on any node (API,
//! console or CLI) reaches every healthy node within a few health intervals, and a node
//! that was down catches up when it returns. Records carry digests, never secrets. The
//! route answers only peers' signed requests, and records are merged only from an answer
//! signed by the peer asked, for that request ([`super::peer`]), so nobody between two
//! nodes can read, replay or inject keys or revocations.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::keys::{KeyRecord, KeyStore};
use super::peer::PeerClient;

/// Where a node serves its key records to its peers.
pub const KEYS_PATH: &str = "/cluster/keys";
/// How often fingerprints are compared.
const INTERVAL: Duration = Duration::from_secs(1);
/// Bound of one pull.
const PULL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of records accepted from one peer (about 150 bytes a key).
const MAX_RECORDS_BYTES: usize = 32 << 20;

/// `GET /cluster/keys`: this node's key records (behind `peer::guard`, which lets only
/// peers' signed requests through and signs the answer).
pub async fn serve(store: &Arc<KeyStore>) -> Response {
    match super::db::blocking(store, KeyStore::export).await {
        Ok(records) => Json(records).into_response(),
        Err(e) => {
            tracing::error!("exporting stream keys for a peer: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "the key store cannot be read\n").into_response()
        }
    }
}

/// A peer to compare with: its id, its HTTP address and its last reported fingerprint.
pub struct PeerKeys {
    pub id: String,
    pub http: std::net::SocketAddr,
    pub fingerprint: String,
}

/// Compares fingerprints every second and pulls from peers that differ, until `shutdown`.
pub async fn run(store: Arc<KeyStore>, peers: impl Fn() -> Vec<PeerKeys>, client: PeerClient, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for peer in peers() {
            let ours = match super::db::blocking(&store, KeyStore::fingerprint).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!("reading the key store's fingerprint: {e}");
                    break;
                }
            };
            if peer.fingerprint == ours {
                continue;
            }
            match pull(&client, &peer).await {
                Ok(records) => match super::db::blocking(&store, move |store| store.merge(&records)).await {
                    Ok(0) => {}
                    Ok(changed) => tracing::info!(peer = %peer.id, changed, "stream keys merged from a peer"),
                    Err(e) => tracing::error!(peer = %peer.id, "merging a peer's stream keys: {e}"),
                },
                Err(e) => tracing::warn!(peer = %peer.id, "reading a peer's stream keys failed: {e}"),
            }
        }
    }
}

async fn pull(client: &PeerClient, peer: &PeerKeys) -> Result<Vec<KeyRecord>, String> {
    let body = tokio::time::timeout(PULL_TIMEOUT, client.get(&peer.id, peer.http, KEYS_PATH, MAX_RECORDS_BYTES))
        .await
        .map_err(|_| format!("no answer within {PULL_TIMEOUT:?}"))?
        .map_err(|e| crate::cluster::membership::with_causes(&e))?;
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

