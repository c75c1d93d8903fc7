//! Node-to-node HTTP (`/cluster/*`: health probes, replication of stream keys and admin
//! records): who may ask, and which answers a node believes.
//!
//! - **Who may ask**: only the members' addresses (the configured nodes' `rtmp` and `http`
//!   addresses, or the addresses discovery found: [`MemberAddresses`], kept current by
//!   membership); anyone else gets 403 ([`guard`]).
//! - **Requests** carry an HMAC-SHA256, keyed with `cluster.relay_secret`, over the node
//!   they are for, the method, the path, the body, the time they were made and a random
//!   nonce ([`TIME_HEADER`], [`NONCE_HEADER`], [`SIGNATURE_HEADER`]). The receiver checks
//!   the signature in constant time, then that the time is within [`CLOCK_SKEW`] of its own
//!   clock, then that it has not seen the nonce ([`NonceCache`]: each nonce is remembered
//!   until its time falls out of the accepted window, so a replay is refused whenever it
//!   comes). A refusal is 401, logged (one line a second per reason) and counted in
//!   [`PeerStats`].
//! - **Answers** carry an HMAC over the answering node's id, the request's nonce, the
//!   status, the time and the body, so an answer is bound to the one request it answers:
//!   an old answer replayed, an answer from another node, or a body changed on the way is
//!   refused by the asking node ([`PeerClient`]), logged and counted. Every answer names
//!   its node in [`NODE_HEADER`].
//! - **A peer whose id is not known yet** (found through DNS): its health is asked with a
//!   request signed for [`ANY_NODE`], which the guard accepts on [`HEALTH_PATH`] only; the
//!   answer is checked against the id it names ([`PeerClient::get_unknown`]), so a node
//!   learns a peer's id only from an answer signed with the federation's secret.
//!
//! Requests and answers sign in separate domains, so one is never valid as the other. The
//! secret never travels. Clocks must agree within [`CLOCK_SKEW`] (run NTP). Plain HTTP: the
//! content is readable on the appliance network, but not forgeable or replayable.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sha2::Sha256;

use crate::cluster::HEALTH_PATH;
use crate::cluster::membership::MemberAddresses;
use crate::http::Peer;
use crate::metrics::common::Reason;
use crate::warn_limiter::WarnLimiter;

pub const TIME_HEADER: &str = "x-rackcast-time";
pub const NONCE_HEADER: &str = "x-rackcast-nonce";
pub const SIGNATURE_HEADER: &str = "x-rackcast-signature";
/// The answering node's id, on every signed answer.
pub const NODE_HEADER: &str = "x-rackcast-node";
/// The target a request for a node of unknown id is signed for (health probes only).
pub const ANY_NODE: &str = "";
/// How far a signed request's or answer's time may be from this node's clock, either way;
/// also how long after that time its nonce is remembered.
pub const CLOCK_SKEW: Duration = super::token::CLOCK_SKEW;
/// Random bytes in a nonce (128 bits).
pub const NONCE_BYTES: usize = 16;
/// Nonces remembered at once. Only requests with a valid signature and time get this far,
/// so only the federation's own nodes fill it: 64 nodes each sending 3 requests a second
/// to this one over the 61 s a nonce is kept is about 11,700.
pub const NONCE_CACHE_CAPACITY: u64 = 65_536;
/// Largest request body accepted (the routes are GETs).
const MAX_REQUEST_BYTES: usize = 64 << 10;

const REQUEST_DOMAIN: &[u8] = b"rackcast-peer-request\0";
const RESPONSE_DOMAIN: &[u8] = b"rackcast-peer-response\0";

type Nonce = [u8; NONCE_BYTES];

/// Why a request or an answer between nodes was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    #[error("not from a federation node's address")]
    NotPeer,
    #[error("not signed")]
    Unsigned,
    #[error("signature headers are malformed")]
    Malformed,
    #[error("signature does not match (another secret, or changed on the way)")]
    BadSignature,
    #[error("signed {0} s away from this node's clock (more than the accepted skew)")]
    Stale(u64),
    #[error("nonce already used: a replay")]
    Replayed,
    #[error("too many recent nonces to remember another")]
    NonceCacheFull,
}

impl PeerAuthError {
    /// The metric label and the log limiter's slot.
    fn reason(self) -> (&'static str, usize) {
        match self {
            PeerAuthError::NotPeer => ("not_peer", 0),
            PeerAuthError::Unsigned | PeerAuthError::Malformed | PeerAuthError::BadSignature => ("bad_signature", 1),
            PeerAuthError::Stale(_) => ("stale", 2),
            PeerAuthError::Replayed => ("replayed", 3),
            PeerAuthError::NonceCacheFull => ("nonce_cache_full", 4),
        }
    }
}

const REASONS: usize = 5;

/// Refusals of node-to-node traffic on this node (`rackcast_cluster_*`).
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Requests to `/cluster/*` refused, by [`PeerAuthError::reason`].
    refused: Family<Reason, Counter>,
    /// Answers from peers refused (unsigned, forged, replayed, stale).
    answers_refused: Counter,
    warnings: [WarnLimiter; REASONS],
    answer_warnings: WarnLimiter,
}

impl PeerStats {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("cluster");
        registry.register("requests_refused", "Requests to /cluster/* refused: not a peer, bad signature, stale, replayed", self.refused.clone());
        registry.register("answers_refused", "Answers from peers refused (unsigned, forged, replayed, stale)", self.answers_refused.clone());
    }

    fn refuse_request(&self, error: PeerAuthError, address: Option<IpAddr>, path: &str) {
        let (reason, slot) = error.reason();
        self.refused.get_or_create(&Reason { reason }).inc();
        if let Some(held_back) = self.warnings[slot].allow() {
            tracing::warn!(address = ?address, path, reason, held_back, "cluster request refused: {error} (at most one such line a second)");
        }
    }

    fn refuse_answer(&self, error: PeerAuthError, peer: &str, path: &str) {
        self.answers_refused.inc();
        if let Some(held_back) = self.answer_warnings.allow() {
            tracing::warn!(peer, path, held_back, "answer from a peer refused: {error} (at most one such line a second)");
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn hmac(secret: &str, domain: &[u8], fields: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(domain);
    for field in fields {
        // Length-prefixed, so no two different field lists sign the same bytes.
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
    mac
}

fn request_mac(secret: &str, target: &str, method: &str, path: &str, body: &[u8], time: u64, nonce: &Nonce) -> Hmac<Sha256> {
    hmac(secret, REQUEST_DOMAIN, &[target.as_bytes(), method.as_bytes(), path.as_bytes(), &time.to_be_bytes(), nonce, body])
}

fn response_mac(secret: &str, responder: &str, request_nonce: &Nonce, status: u16, body: &[u8], time: u64) -> Hmac<Sha256> {
    hmac(secret, RESPONSE_DOMAIN, &[responder.as_bytes(), request_nonce, &status.to_be_bytes(), &time.to_be_bytes(), body])
}

fn header(name: &'static str, value: String) -> (HeaderName, HeaderValue) {
    (HeaderName::from_static(name), HeaderValue::from_str(&value).expect("digits and hex are valid header values"))
}

/// A verified request's nonce and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedRequest {
    pub nonce: Nonce,
    pub time: u64,
}

/// The headers that sign a request for node `target` (`method`, `path` with its query,
/// `body`), with a fresh nonce; and that nonce, which the answer must be bound to.
pub fn sign_request(secret: &str, target: &str, method: &str, path: &str, body: &[u8]) -> (HeaderMap, Nonce) {
    let nonce: Nonce = rand::random();
    (sign_request_at(secret, target, method, path, body, unix_now(), &nonce), nonce)
}

fn sign_request_at(secret: &str, target: &str, method: &str, path: &str, body: &[u8], time: u64, nonce: &Nonce) -> HeaderMap {
    let tag = request_mac(secret, target, method, path, body, time, nonce).finalize().into_bytes();
    HeaderMap::from_iter([
        header(TIME_HEADER, time.to_string()),
        header(NONCE_HEADER, hex::encode(nonce)),
        header(SIGNATURE_HEADER, hex::encode(tag)),
    ])
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Time and tag of a signed message; `Unsigned` when the signature header is absent.
fn signature_fields(headers: &HeaderMap) -> Result<(u64, Vec<u8>), PeerAuthError> {
    let tag = text(headers, SIGNATURE_HEADER).ok_or(PeerAuthError::Unsigned)?;
    let tag = hex::decode(tag).map_err(|_| PeerAuthError::Malformed)?;
    let time = text(headers, TIME_HEADER).and_then(|t| t.parse().ok()).ok_or(PeerAuthError::Malformed)?;
    Ok((time, tag))
}

fn check_time(time: u64, now: u64) -> Result<(), PeerAuthError> {
    let off = now.abs_diff(time);
    if off > CLOCK_SKEW.as_secs() { Err(PeerAuthError::Stale(off)) } else { Ok(()) }
}

/// Checks the signature (in constant time, first) and the time of a request for this node
/// (`me`); the caller then checks that the nonce is new ([`NonceCache::first_use`]).
pub fn verify_request(secret: &str, me: &str, method: &str, path: &str, headers: &HeaderMap, body: &[u8], now: u64) -> Result<SignedRequest, PeerAuthError> {
    let (time, tag) = signature_fields(headers)?;
    let nonce: Nonce = text(headers, NONCE_HEADER)
        .and_then(|n| hex::decode(n).ok())
        .and_then(|n| n.try_into().ok())
        .ok_or(PeerAuthError::Malformed)?;
    request_mac(secret, me, method, path, body, time, &nonce).verify_slice(&tag).map_err(|_| PeerAuthError::BadSignature)?;
    check_time(time, now)?;
    Ok(SignedRequest { nonce, time })
}

/// The headers that sign this node's (`responder`'s) answer to the request with `request_nonce`.
pub fn sign_response(secret: &str, responder: &str, request_nonce: &Nonce, status: u16, body: &[u8]) -> HeaderMap {
    sign_response_at(secret, responder, request_nonce, status, body, unix_now())
}

fn sign_response_at(secret: &str, responder: &str, request_nonce: &Nonce, status: u16, body: &[u8], time: u64) -> HeaderMap {
    let tag = response_mac(secret, responder, request_nonce, status, body, time).finalize().into_bytes();
    HeaderMap::from_iter([header(TIME_HEADER, time.to_string()), header(SIGNATURE_HEADER, hex::encode(tag))])
}

/// Checks that an answer comes from `responder`, answers the request with `request_nonce`,
/// and was not changed on the way.
pub fn verify_response(secret: &str, responder: &str, request_nonce: &Nonce, status: u16, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), PeerAuthError> {
    let (time, tag) = signature_fields(headers)?;
    response_mac(secret, responder, request_nonce, status, body, time).verify_slice(&tag).map_err(|_| PeerAuthError::BadSignature)?;
    check_time(time, now)
}

/// The nonces of the signed requests accepted lately, each kept until its request's time
/// falls out of the accepted window (time + [`CLOCK_SKEW`]), so the window in which a
/// nonce is remembered is exactly the one in which its request would be accepted. Bounded
/// at [`NONCE_CACHE_CAPACITY`]: beyond it requests are refused rather than a nonce
/// forgotten early.
pub struct NonceCache {
    seen: moka::future::Cache<Nonce, u64>,
}

struct UntilOutOfWindow;

impl moka::Expiry<Nonce, u64> for UntilOutOfWindow {
    fn expire_after_create(&self, _: &Nonce, time: &u64, _: Instant) -> Option<Duration> {
        // Accepted while now <= time + skew (whole seconds): keep it until that second ends.
        Some(Duration::from_secs((time + CLOCK_SKEW.as_secs() + 1).saturating_sub(unix_now())))
    }
}

impl Default for NonceCache {
    fn default() -> Self {
        let seen = moka::future::Cache::builder()
            // Headroom over the refusal threshold, which reads an approximate count: the
            // cache itself must never evict a nonce that is still in its window.
            .max_capacity(2 * NONCE_CACHE_CAPACITY)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .expire_after(UntilOutOfWindow)
            .build();
        Self { seen }
    }
}

impl NonceCache {
    /// Ok when `nonce` (of a request signed at `time`) was not seen within its window.
    pub async fn first_use(&self, nonce: Nonce, time: u64) -> Result<(), PeerAuthError> {
        if self.seen.entry_count() >= NONCE_CACHE_CAPACITY {
            return Err(PeerAuthError::NonceCacheFull);
        }
        if self.seen.entry(nonce).or_insert(time).await.is_fresh() { Ok(()) } else { Err(PeerAuthError::Replayed) }
    }
}

/// The check in front of `/cluster/*` ([`guard`]): peers' addresses, request signatures,
/// nonces; and the signature on every answer.
pub struct PeerGuard {
    node_id: String,
    secret: String,
    peers: Arc<MemberAddresses>,
    nonces: NonceCache,
    stats: Arc<PeerStats>,
}

impl PeerGuard {
    /// For node `node_id`: its peers are the members' addresses, as they are when asked.
    pub fn new(node_id: &str, secret: &str, peers: Arc<MemberAddresses>, stats: Arc<PeerStats>) -> Arc<Self> {
        Arc::new(Self { node_id: node_id.to_owned(), secret: secret.to_owned(), peers, nonces: NonceCache::default(), stats })
    }

    fn refuse(&self, status: StatusCode, error: PeerAuthError, address: Option<IpAddr>, path: &str) -> Response {
        self.stats.refuse_request(error, address, path);
        (status, format!("cluster request refused: {error}\n")).into_response()
    }
}

/// Middleware for `/cluster/*`: see the module header.
pub async fn guard(State(guard): State<Arc<PeerGuard>>, peer: Peer, request: Request, next: Next) -> Response {
    let address = peer.map(|p| p.0.0.ip().to_canonical());
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    // No secret (a node alone) means no peer, whoever asks.
    if guard.secret.is_empty() || !address.is_some_and(|a| guard.peers.contains(a)) {
        return guard.refuse(StatusCode::FORBIDDEN, PeerAuthError::NotPeer, address, &path);
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BYTES).await else {
        return guard.refuse(StatusCode::PAYLOAD_TOO_LARGE, PeerAuthError::Malformed, address, &path);
    };
    let verify = |target: &str| verify_request(&guard.secret, target, parts.method.as_str(), &path, &parts.headers, &body, unix_now());
    let checked = match verify(&guard.node_id) {
        // A health probe from a node that does not know this one's id yet.
        Err(PeerAuthError::BadSignature) if parts.uri.path() == HEALTH_PATH => verify(ANY_NODE),
        checked => checked,
    };
    let signed = match checked {
        Ok(signed) => signed,
        Err(e) => return guard.refuse(StatusCode::UNAUTHORIZED, e, address, &path),
    };
    if let Err(e) = guard.nonces.first_use(signed.nonce, signed.time).await {
        let status = if e == PeerAuthError::NonceCacheFull { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::UNAUTHORIZED };
        return guard.refuse(status, e, address, &path);
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (mut parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(path, "reading a cluster answer to sign it: {e}");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    parts.headers.extend(sign_response(&guard.secret, &guard.node_id, &signed.nonce, parts.status.as_u16(), &body));
    if let Ok(id) = HeaderValue::from_str(&guard.node_id) {
        parts.headers.insert(NODE_HEADER, id);
    }
    Response::from_parts(parts, Body::from(body))
}

/// Why a request to a peer got no answer this node believes.
#[derive(Debug, thiserror::Error)]
pub enum PeerRequestError {
    #[error("request failed")]
    Request(#[source] reqwest::Error),
    #[error("answered HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("answer over {0} bytes")]
    TooLarge(usize),
    #[error("answer refused: {0}")]
    Refused(PeerAuthError),
}

/// Signed requests to peers, whose answers are checked ([`Self::get`]). Clone freely.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: Arc<str>,
    stats: Arc<PeerStats>,
}

impl PeerClient {
    /// `http` should not use a proxy (see `cluster::peer_client`).
    pub fn new(http: reqwest::Client, secret: &str, stats: Arc<PeerStats>) -> Self {
        Self { http, secret: secret.into(), stats }
    }

    /// `GET path` from node `peer` at `address`, signed; the body (at most `max_bytes`)
    /// once its answer's signature checks out. The caller bounds the time.
    pub async fn get(&self, peer: &str, address: SocketAddr, path: &str, max_bytes: usize) -> Result<Bytes, PeerRequestError> {
        self.fetch(Some(peer), address, path, max_bytes).await.map(|(_, body)| body)
    }

    /// `GET path` from the node at `address` whose id is not known: signed for
    /// [`ANY_NODE`] (peers accept that on [`HEALTH_PATH`] only); its id (from
    /// [`NODE_HEADER`], checked by the answer's signature) and the body.
    pub async fn get_unknown(&self, address: SocketAddr, path: &str, max_bytes: usize) -> Result<(String, Bytes), PeerRequestError> {
        self.fetch(None, address, path, max_bytes).await
    }

    async fn fetch(&self, expected: Option<&str>, address: SocketAddr, path: &str, max_bytes: usize) -> Result<(String, Bytes), PeerRequestError> {
        let (headers, nonce) = sign_request(&self.secret, expected.unwrap_or(ANY_NODE), "GET", path, b"");
        let mut response =
            self.http.get(format!("http://{address}{path}")).headers(headers).send().await.map_err(PeerRequestError::Request)?;
        let status = response.status();
        if !status.is_success() {
            return Err(PeerRequestError::Status(status));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(PeerRequestError::Request)? {
            if body.len() + chunk.len() > max_bytes {
                return Err(PeerRequestError::TooLarge(max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        let named = response.headers().get(NODE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let peer = expected.unwrap_or(named).to_owned();
        if let Err(e) = verify_response(&self.secret, &peer, &nonce, status.as_u16(), response.headers(), &body, unix_now()) {
            self.stats.refuse_answer(e, &address.to_string(), path);
            return Err(PeerRequestError::Refused(e));
        }
        Ok((peer, body.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-federation-secret-of-some-length";
    const NOW: u64 = 1_900_000_000;
    const NONCE: Nonce = [7; NONCE_BYTES];

    fn signed(target: &str, path: &str, body: &[u8], time: u64) -> HeaderMap {
        sign_request_at(SECRET, target, "GET", path, body, time, &NONCE)
    }

    #[test]
    fn a_signed_request_verifies_for_its_node_path_and_body_only() {
        let headers = signed("b", "/cluster/keys", b"", NOW);
        assert_eq!(verify_request(SECRET, "b", "GET", "/cluster/keys", &headers, b"", NOW), Ok(SignedRequest { nonce: NONCE, time: NOW }));
        assert!(!format!("{headers:?}").contains(SECRET), "the secret never travels");
        let bad = Err(PeerAuthError::BadSignature);
        assert_eq!(verify_request(SECRET, "c", "GET", "/cluster/keys", &headers, b"", NOW), bad, "signed for another node");
        assert_eq!(verify_request(SECRET, "b", "GET", "/cluster/health", &headers, b"", NOW), bad, "another path");
        assert_eq!(verify_request(SECRET, "b", "POST", "/cluster/keys", &headers, b"", NOW), bad, "another method");
        assert_eq!(verify_request(SECRET, "b", "GET", "/cluster/keys", &headers, b"x", NOW), bad, "a body added");
        assert_eq!(verify_request("another-secret-entirely-different", "b", "GET", "/cluster/keys", &headers, b"", NOW), bad);
        let mut other_nonce = headers.clone();
        other_nonce.insert(NONCE_HEADER, HeaderValue::from_str(&hex::encode([8u8; NONCE_BYTES])).unwrap());
        assert_eq!(verify_request(SECRET, "b", "GET", "/cluster/keys", &other_nonce, b"", NOW), bad, "nonce changed");
        let mut other_time = headers.clone();
        other_time.insert(TIME_HEADER, HeaderValue::from(NOW + 1));
        assert_eq!(verify_request(SECRET, "b", "GET", "/cluster/keys", &other_time, b"", NOW), bad, "time changed");
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let headers = sign_request_at(SECRET, "b", "POST", "/cluster/x", b"{\"a\":1}", NOW, &NONCE);
        assert!(verify_request(SECRET, "b", "POST", "/cluster/x", &headers, b"{\"a\":1}", NOW).is_ok());
        assert_eq!(verify_request(SECRET, "b", "POST", "/cluster/x", &headers, b"{\"a\":2}", NOW), Err(PeerAuthError::BadSignature));
    }

    #[test]
    fn an_expired_or_future_request_is_refused() {
        let skew = CLOCK_SKEW.as_secs();
        for (time, ok) in [(NOW - skew, true), (NOW + skew, true), (NOW - skew - 1, false), (NOW + skew + 5, false)] {
            let result = verify_request(SECRET, "b", "GET", "/p", &signed("b", "/p", b"", time), b"", NOW);
            assert_eq!(result.is_ok(), ok, "signed at now{:+}: {result:?}", time as i64 - NOW as i64);
        }
        let old = verify_request(SECRET, "b", "GET", "/p", &signed("b", "/p", b"", NOW - 3600), b"", NOW);
        assert_eq!(old, Err(PeerAuthError::Stale(3600)));
    }

    #[test]
    fn missing_or_malformed_headers_are_refused() {
        assert_eq!(verify_request(SECRET, "b", "GET", "/p", &HeaderMap::new(), b"", NOW), Err(PeerAuthError::Unsigned));
        let mut headers = signed("b", "/p", b"", NOW);
        headers.insert(SIGNATURE_HEADER, HeaderValue::from_static("zz"));
        assert_eq!(verify_request(SECRET, "b", "GET", "/p", &headers, b"", NOW), Err(PeerAuthError::Malformed));
        let mut headers = signed("b", "/p", b"", NOW);
        headers.remove(NONCE_HEADER);
        assert_eq!(verify_request(SECRET, "b", "GET", "/p", &headers, b"", NOW), Err(PeerAuthError::Malformed));
        let mut headers = signed("b", "/p", b"", NOW);
        headers.remove(TIME_HEADER);
        assert_eq!(verify_request(SECRET, "b", "GET", "/p", &headers, b"", NOW), Err(PeerAuthError::Malformed));
    }

    #[test]
    fn an_answer_is_bound_to_its_request_its_node_and_its_body() {
        let body = br#"{"id":"b","streams":[]}"#;
        let headers = sign_response_at(SECRET, "b", &NONCE, 200, body, NOW);
        assert_eq!(verify_response(SECRET, "b", &NONCE, 200, &headers, body, NOW), Ok(()));
        let bad = Err(PeerAuthError::BadSignature);
        assert_eq!(verify_response(SECRET, "b", &[9; NONCE_BYTES], 200, &headers, body, NOW), bad, "an old answer to another request");
        assert_eq!(verify_response(SECRET, "c", &NONCE, 200, &headers, body, NOW), bad, "from another node");
        assert_eq!(verify_response(SECRET, "b", &NONCE, 200, &headers, br#"{"id":"b","streams":["x"]}"#, NOW), bad, "body changed");
        assert_eq!(verify_response(SECRET, "b", &NONCE, 500, &headers, body, NOW), bad, "status changed");
        assert_eq!(verify_response(SECRET, "b", &NONCE, 200, &HeaderMap::new(), body, NOW), Err(PeerAuthError::Unsigned));
        let old = sign_response_at(SECRET, "b", &NONCE, 200, body, NOW - 600);
        assert_eq!(verify_response(SECRET, "b", &NONCE, 200, &old, body, NOW), Err(PeerAuthError::Stale(600)));
        // A request's signature is never an answer's (separate domains).
        let request = signed("b", "/p", body, NOW);
        assert_eq!(verify_response(SECRET, "b", &NONCE, 200, &request, body, NOW), bad);
    }

    #[tokio::test]
    async fn a_replayed_nonce_is_refused_within_its_window() {
        let cache = NonceCache::default();
        let now = unix_now();
        assert_eq!(cache.first_use(NONCE, now).await, Ok(()));
        assert_eq!(cache.first_use(NONCE, now).await, Err(PeerAuthError::Replayed));
        assert_eq!(cache.first_use([1; NONCE_BYTES], now).await, Ok(()), "another nonce");
        // Kept exactly until its request would be refused as stale.
        let keep = moka::Expiry::expire_after_create(&UntilOutOfWindow, &NONCE, &now, Instant::now()).unwrap();
        assert!(keep > CLOCK_SKEW && keep <= CLOCK_SKEW + Duration::from_secs(1), "{keep:?}");
        let old = now - CLOCK_SKEW.as_secs();
        let keep = moka::Expiry::expire_after_create(&UntilOutOfWindow, &NONCE, &old, Instant::now()).unwrap();
        assert!(keep <= Duration::from_secs(1), "{keep:?}");
    }

    #[tokio::test]
    async fn the_nonce_cache_is_bounded() {
        let cache = NonceCache::default();
        let now = unix_now();
        for i in 0..NONCE_CACHE_CAPACITY {
            let mut nonce = [0u8; NONCE_BYTES];
            nonce[..8].copy_from_slice(&i.to_be_bytes());
            cache.first_use(nonce, now).await.unwrap();
        }
        cache.seen.run_pending_tasks().await;
        assert_eq!(cache.first_use([0xff; NONCE_BYTES], now).await, Err(PeerAuthError::NonceCacheFull));
    }
}
