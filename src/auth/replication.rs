//! Stream keys across a federation: every node answers health probes with its key
//! store's fingerprint ([`KeyStore::fingerprint`]); when a peer's differs from ours, we
//! read its records from [`KEYS_PATH`] and merge them ([`KeyStore::merge`]: union of
//! keys, revocations win). Each node pulls, so a key made or revoked on any node (API,
//! console or CLI) reaches every healthy node within a few health intervals, and a node
//! that was down catches up when it returns. Records carry digests, never secrets, and
//! the route answers only requests signed with the federation's relay secret
//! ([`token::Purpose::Cluster`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::keys::{KeyRecord, KeyStore};
use super::token::{self, Purpose};

/// Where a node serves its key records to its peers.
pub const KEYS_PATH: &str = "/cluster/keys";
/// How often fingerprints are compared.
const INTERVAL: Duration = Duration::from_secs(1);
/// Bound of one pull.
const PULL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of records accepted from one peer (about 150 bytes a key).
const MAX_RECORDS_BYTES: usize = 32 << 20;
/// What the signed request names.
const SUBJECT: &str = "stream-keys";

/// `GET /cluster/keys`: this node's key records, for a request signed with the relay secret.
pub async fn serve(store: &Arc<KeyStore>, secret: &str, headers: &HeaderMap) -> Response {
    let signed = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match signed.map(|t| token::verify(Purpose::Cluster, t, secret)) {
        Some(Ok(SUBJECT)) => {}
        _ => return (StatusCode::FORBIDDEN, "a signed cluster request is required\n").into_response(),
    }
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
pub async fn run(store: Arc<KeyStore>, peers: impl Fn() -> Vec<PeerKeys>, secret: String, client: reqwest::Client, shutdown: CancellationToken) {
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
            match pull(&client, &peer, &secret).await {
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

async fn pull(client: &reqwest::Client, peer: &PeerKeys, secret: &str) -> Result<Vec<KeyRecord>, String> {
    let signed = token::sign(Purpose::Cluster, SUBJECT, secret, token::RELAY_LIFETIME);
    let request = client.get(format!("http://{}{KEYS_PATH}", peer.http)).bearer_auth(signed).timeout(PULL_TIMEOUT);
    let mut response = request.send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_RECORDS_BYTES {
            return Err(format!("more than {MAX_RECORDS_BYTES} bytes of records"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}
