//! What a federation shares of its state, and how: stream keys ([`KeyStore`]) and the admin
//! side's users, API tokens and console sessions ([`AdminStore`]), each a kind of
//! [`Replicated`] records. Every node answers health probes with its [`Replicas`]'
//! fingerprint: each kind's, in order, space-separated. When a peer's fingerprint of a
//! kind differs from ours, we read its records of that kind from the kind's route
//! ([`KEYS_PATH`], [`ADMIN_PATH`]) and merge them by the kind's rules (keys: union,
//! revocations win; admin records: see `admin.rs`). Each node pulls, so what is made,
//! revoked, deleted or logged out on any node (API, console or CLI) reaches every healthy
//! node within a few health intervals, and a node that was down catches up when it
//! returns. A peer that reports fewer kinds (an older version, during a rolling upgrade)
//! is not asked for the others.
//!
//! Records carry digests and password hashes, never secrets. The routes answer only
//! peers' signed requests, and records are merged only from an answer signed by the peer
//! asked, for that request ([`super::peer`]), so nobody between two nodes can read, replay
//! or inject records. A pull is bounded in time ([`PULL_TIMEOUT`]) and size
//! ([`MAX_RECORDS_BYTES`]), store work in time ([`STORE_TIMEOUT`]); every failure is
//! logged and counted (`rackcast_auth_replication_failures_total{kind}`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

use super::admin::{AdminRecords, AdminStore};
use super::db::{self, StoreError};
use super::keys::{KeyRecord, KeyStore};
use super::peer::PeerClient;

/// Where a node serves its stream key records to its peers.
pub const KEYS_PATH: &str = "/cluster/keys";
/// Where a node serves its users, API tokens and sessions to its peers.
pub const ADMIN_PATH: &str = "/cluster/admin";
/// How often fingerprints are compared.
const INTERVAL: Duration = Duration::from_secs(1);
/// Bound of one pull.
const PULL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of one fingerprint or merge on the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of records accepted from one peer in one pull (about 150 bytes a key, 300 a
/// session).
const MAX_RECORDS_BYTES: usize = 32 << 20;

/// A store whose records a federation shares.
pub trait Replicated: Send + Sync + 'static {
    type Records: Serialize + DeserializeOwned + Send + 'static;
    /// The `kind` label of its metrics.
    const KIND: &'static str;
    /// What the log calls its records.
    const WHAT: &'static str;
    /// The route that serves them to peers.
    const PATH: &'static str;
    fn export(&self) -> Result<Self::Records, StoreError>;
    /// Equal on two stores that hold the same records.
    fn fingerprint(&self) -> Result<String, StoreError>;
    /// Merges a peer's records; how many rows changed.
    fn merge(&self, records: &Self::Records) -> Result<usize, StoreError>;
}

impl Replicated for KeyStore {
    type Records = Vec<KeyRecord>;
    const KIND: &'static str = "keys";
    const WHAT: &'static str = "stream keys";
    const PATH: &'static str = KEYS_PATH;
    fn export(&self) -> Result<Self::Records, StoreError> {
        KeyStore::export(self)
    }
    fn fingerprint(&self) -> Result<String, StoreError> {
        KeyStore::fingerprint(self)
    }
    fn merge(&self, records: &Self::Records) -> Result<usize, StoreError> {
        KeyStore::merge(self, records)
    }
}

impl Replicated for AdminStore {
    type Records = AdminRecords;
    const KIND: &'static str = "admin";
    const WHAT: &'static str = "admin users, tokens and sessions";
    const PATH: &'static str = ADMIN_PATH;
    fn export(&self) -> Result<Self::Records, StoreError> {
        AdminStore::export(self)
    }
    fn fingerprint(&self) -> Result<String, StoreError> {
        AdminStore::fingerprint(self)
    }
    fn merge(&self, records: &Self::Records) -> Result<usize, StoreError> {
        AdminStore::merge(self, records)
    }
}

/// A digest of record lines (each as a store writes it): 128 bits of SHA-256, hex.
pub fn fingerprint(lines: impl Iterator<Item = String>) -> String {
    let mut hash = sha2::Sha256::new();
    for line in lines {
        hash.update(line.as_bytes());
        hash.update(b"\n");
    }
    hex::encode(&hash.finalize()[..16])
}

/// Every kind of replicated store of a node, in the order their fingerprints are reported.
pub struct Replicas {
    pub keys: Arc<KeyStore>,
    pub admin: Arc<AdminStore>,
    /// Each kind's fingerprint, space-separated, as [`run`] last read them.
    reported: parking_lot::Mutex<Option<String>>,
}

impl Replicas {
    pub fn new(keys: Arc<KeyStore>, admin: Arc<AdminStore>) -> Self {
        Self { keys, admin, reported: parking_lot::Mutex::new(None) }
    }

    /// What a health answer reports: each kind's fingerprint, space-separated, as the
    /// replication loop last read them (None before its first read, or when one failed).
    /// Exporting the stores costs as much as the records they hold: read once a tick
    /// however many peers probe, and never in a health answer, which a slow store would
    /// hold past the probes' time-out.
    pub fn reported(&self) -> Option<String> {
        self.reported.lock().clone()
    }
}

/// `GET` of a kind's route: this node's records (behind `peer::guard`, which lets only
/// peers' signed requests through and signs the answer).
pub async fn serve<S: Replicated>(store: &Arc<S>) -> Response {
    match db::blocking(store, S::export).await {
        Ok(records) => Json(records).into_response(),
        Err(e) => {
            tracing::error!(kind = S::KIND, "exporting {} for a peer: {e}", S::WHAT);
            (StatusCode::SERVICE_UNAVAILABLE, "the store cannot be read\n").into_response()
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

/// Replication on this node, by kind (`rackcast_auth_replication_*`).
#[derive(Debug, Default)]
pub struct ReplicationMetrics {
    /// Pulls, merges and fingerprints that failed or timed out.
    failures: Family<Kind, Counter>,
    /// Rows changed by merges.
    merged: Family<Kind, Counter>,
}

impl ReplicationMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("auth_replication");
        registry.register("failures", "Replication pulls, merges and fingerprints that failed or timed out, by kind", self.failures.clone());
        registry.register("merged_rows", "Rows changed by merging peers' records, by kind", self.merged.clone());
    }

    fn fail(&self, kind: &'static str) {
        self.failures.get_or_create(&Kind { kind }).inc();
    }
}

/// A peer to compare with: its id, its HTTP address and its last reported fingerprint.
pub struct ReplicaPeer {
    pub id: String,
    pub http: SocketAddr,
    pub fingerprint: String,
}

/// Compares fingerprints every [`INTERVAL`] and pulls, kind by kind, from peers that
/// differ, until `shutdown`.
pub async fn run(
    replicas: Arc<Replicas>,
    peers: impl Fn() -> Vec<ReplicaPeer>,
    client: PeerClient,
    metrics: Arc<ReplicationMetrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        // Our fingerprint of each kind, read once a tick and again only after a merge
        // changed the store (not once per peer: each read exports the whole store).
        let (mut keys, mut admin) = (None, None);
        for peer in peers() {
            let mut theirs = peer.fingerprint.split(' ');
            sync(&replicas.keys, &mut keys, theirs.next(), &peer, &client, &metrics).await;
            sync(&replicas.admin, &mut admin, theirs.next(), &peer, &client, &metrics).await;
        }
        read_fingerprint(&replicas.keys, &mut keys, &metrics).await;
        read_fingerprint(&replicas.admin, &mut admin, &metrics).await;
        *replicas.reported.lock() = keys.zip(admin).map(|(keys, admin)| format!("{keys} {admin}"));
    }
}

/// Reads `store`'s fingerprint into `ours` unless known; false when that failed (logged
/// and counted).
async fn read_fingerprint<S: Replicated>(store: &Arc<S>, ours: &mut Option<String>, metrics: &ReplicationMetrics) -> bool {
    if ours.is_some() {
        return true;
    }
    match on_store(store, S::fingerprint).await {
        Ok(fingerprint) => {
            *ours = Some(fingerprint);
            true
        }
        Err(e) => {
            metrics.fail(S::KIND);
            tracing::error!(kind = S::KIND, "reading the fingerprint of {}: {e}", S::WHAT);
            false
        }
    }
}

/// Brings `store` level with `peer` for one kind, given the peer's fingerprint of it
/// (`None`: the peer does not replicate this kind). `ours`: the store's fingerprint, read
/// here when unknown and forgotten when a merge changed the store.
async fn sync<S: Replicated>(
    store: &Arc<S>,
    ours: &mut Option<String>,
    theirs: Option<&str>,
    peer: &ReplicaPeer,
    client: &PeerClient,
    metrics: &ReplicationMetrics,
) {
    let Some(theirs) = theirs else { return };
    if !read_fingerprint(store, ours, metrics).await {
        return;
    }
    if ours.as_deref() == Some(theirs) {
        return;
    }
    let records = match pull::<S>(client, peer).await {
        Ok(records) => records,
        Err(e) => {
            metrics.fail(S::KIND);
            tracing::warn!(peer = %peer.id, kind = S::KIND, "reading a peer's {} failed: {e}", S::WHAT);
            return;
        }
    };
    match on_store(store, move |store| store.merge(&records)).await {
        Ok(0) => {}
        Ok(changed) => {
            *ours = None;
            metrics.merged.get_or_create(&Kind { kind: S::KIND }).inc_by(changed as u64);
            tracing::info!(peer = %peer.id, kind = S::KIND, changed, "{} merged from a peer", S::WHAT);
        }
        Err(e) => {
            metrics.fail(S::KIND);
            tracing::error!(peer = %peer.id, kind = S::KIND, "merging a peer's {}: {e}", S::WHAT);
        }
    }
}

/// `work` on the blocking pool, waited for at most [`STORE_TIMEOUT`] (work past it still
/// finishes, under the store's lock).
async fn on_store<S: Replicated, T: Send + 'static>(store: &Arc<S>, work: impl FnOnce(&S) -> Result<T, StoreError> + Send + 'static) -> Result<T, String> {
    bounded(STORE_TIMEOUT, db::blocking(store, work)).await?.map_err(|e| e.to_string())
}

async fn bounded<T>(limit: Duration, work: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(limit, work).await.map_err(|_| format!("no result within {limit:?}"))
}

async fn pull<S: Replicated>(client: &PeerClient, peer: &ReplicaPeer) -> Result<S::Records, String> {
    let body = bounded(PULL_TIMEOUT, client.get(&peer.id, peer.http, S::PATH, MAX_RECORDS_BYTES))
        .await?
        .map_err(|e| crate::cluster::membership::with_causes(&e))?;
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}
