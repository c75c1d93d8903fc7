//! Who is up in the federation, learned by active health probes (like Varnish's shard
//! director or nginx's upstream checks: no consensus). The peers are the static
//! `cluster.nodes`, or the addresses `[cluster.discovery]` resolves (discovery.rs calls
//! [`Membership::set_discovered`] after every round). One probe task per peer asks
//! `GET http://{peer.http}/cluster/health` every `health_interval`; a peer goes down after
//! `fail_after` consecutive failures and comes back after `rise_after` consecutive
//! successes. Each change publishes a new immutable [`MembershipView`] on a watch channel;
//! relays, origins and edges read views and never block the probes.
//!
//! Static peers start up, so a fresh cluster routes at once instead of waiting `rise_after`
//! intervals; a peer that is really gone is out after `fail_after` probes, and a caller that
//! sees a peer fail first (a broken relay connection) marks it down at once with
//! [`Membership::mark_down`]. This node is always up in its own view: if it is dead nobody
//! reads its view.
//!
//! **Discovered peers and the ring.** The ring is keyed by node ids, as with static nodes,
//! so that a node keeps its ring position when its address changes (a Kubernetes pod that
//! comes back under its name with a new IP). A discovered address has no id until it
//! answers: its probes are signed for any node (`auth::peer::ANY_NODE`) and the answer,
//! signed by the peer under the id it names, gives the id. So a discovered peer starts
//! down and joins the view (and the ring) after `rise_after` good probes, under the id its
//! answers carry; every node that resolves the same answer and reaches the same peers
//! builds the same ring. An address that leaves the DNS answer leaves the view at once
//! (its probe task stops); one that answers with this node's own id is this node (its own
//! address in the answer) and is not probed again. Two addresses answering with one id:
//! the first keeps it, the other is not a member until its id differs.
//!
//! The health answer also says which streams the peer publishes live, so an origin can find
//! a stream that stayed on the node that took it over after its ring owner came back, and
//! whether the peer drains ([`Membership::drain`]): a draining node leaves every view's
//! ring (no publish or relay goes to it) but stays up, and origins read the streams it
//! reports until their next owner reports them (handover.rs).
//!
//! Probes and answers are signed with the relay secret (`auth::peer`): an answer that is
//! not the peer's own, for this probe, counts as a failed probe. [`MemberAddresses`] is
//! the set of members' IP addresses the peer-request guard admits, kept current here.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ring::Ring;
use crate::auth::peer::{PeerClient, PeerRequestError};
use crate::cluster::config::ClusterConfig;
use crate::cluster::config::NodeConfig;
use crate::cluster::config::Role;

/// Path every node serves its [`HealthReport`] on.
pub const HEALTH_PATH: &str = "/cluster/health";
/// Most bytes of a health answer read (stream names and tier counters: a few KiB).
const MAX_HEALTH_BYTES: usize = 1 << 20;

/// The body of a health answer: `{"id": "node-a", "streams": ["cam1", "news"]}`.
/// Unknown fields are ignored so that newer nodes can add some without failing older probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The answering node's id; a probe fails when it is not the id it asked, since the
    /// address then belongs to another node.
    pub id: String,
    /// Streams this node currently publishes live (it is their live server).
    #[serde(default)]
    pub streams: Vec<String>,
    /// The answering node's caching-tier counters, when it has a tier (opaque here: the
    /// admin API shows them, so that any node can show the whole federation's tiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<serde_json::Value>,
    /// The fingerprints of the answering node's replicated stores, space-separated, one per
    /// kind in auth/replication.rs's order (stream keys first; an older node sends only
    /// that one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<String>,
    /// The node drains (SIGTERM): it takes no new stream, and the streams it reports are
    /// waiting to be handed over (cluster/handover.rs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// What the health route serves (as JSON).
pub fn health_body(node_id: &str, streams: Vec<String>, draining: bool) -> HealthReport {
    HealthReport { id: node_id.to_owned(), streams, tier: None, keys: None, draining }
}

/// Why one probe failed. Only logged: a failure just counts towards `fail_after`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("peer {peer}: no health answer within {timeout:?}")]
    Timeout { peer: String, timeout: Duration },
    /// No answer, an error status, or an answer not signed by the peer for this probe.
    #[error("peer {peer}: health request failed")]
    Request { peer: String, source: PeerRequestError },
    #[error("peer {peer}: health body is not a health report")]
    Body { peer: String, source: serde_json::Error },
    #[error("peer {peer}: answered as node {answered:?}; its configured address reaches another node")]
    WrongNode { peer: String, answered: String },
}

/// The error and all its causes on one line: reqwest's top-level message alone hides
/// whether the peer refused, reset or never resolved.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A client fit for probes and other peer traffic: no proxy from the environment, since
/// peers are on the appliance network and an `HTTP_PROXY` meant for the outside world
/// would otherwise swallow every probe. Requests leave from `local` when given (the
/// node's HTTP address, when it listens on one): peers admit members' addresses only, so
/// a node on one of several addresses of a host must ask from that one.
pub fn peer_client(local: Option<IpAddr>) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().no_proxy().local_address(local).build()
}

/// The IP addresses of the federation's members (static nodes' `rtmp` and `http`, or the
/// discovered addresses), read by the peer-request guard on every `/cluster/*` request.
#[derive(Debug, Default)]
pub struct MemberAddresses(RwLock<HashSet<IpAddr>>);

impl MemberAddresses {
    /// The static nodes' addresses (none when discovery finds them).
    pub fn of(config: &ClusterConfig) -> Arc<Self> {
        Arc::new(Self::from(config.nodes.iter().flat_map(|n| [n.rtmp.ip(), n.http.ip()]).collect::<HashSet<_>>()))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.read().contains(&ip)
    }

    fn replace(&self, ips: HashSet<IpAddr>) {
        *self.0.write() = ips;
    }
}

impl From<HashSet<IpAddr>> for MemberAddresses {
    fn from(ips: HashSet<IpAddr>) -> Self {
        Self(RwLock::new(ips))
    }
}

/// Where a member came from: the config's `nodes`, or a DNS name of `[cluster.discovery]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Static,
    Dns(String),
}

impl std::fmt::Display for Source {
    /// `static` or `dns:NAME`, as the API and console show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Static => f.write_str("static"),
            Source::Dns(name) => write!(f, "dns:{name}"),
        }
    }
}

/// One node of a view: its id, roles and addresses, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: NodeConfig,
    pub source: Source,
}

/// An immutable snapshot of the federation: its members (this node among them), which are
/// up, and what the healthy peers publish. Cheap to share (`Arc`), built once per change.
pub struct MembershipView {
    node_id: String,
    /// Static nodes in config order, or this node then the discovered peers by id.
    members: Vec<Member>,
    /// Healthy node ids, this node always among them.
    up: BTreeSet<String>,
    /// Healthy nodes that drain (this node too, once it does): out of the ring, still
    /// serving the streams they report until those are handed over.
    draining: BTreeSet<String>,
    /// Streams each healthy peer reported in its last good probe.
    streams: BTreeMap<String, BTreeSet<String>>,
    /// Built with the view, shared with the next view while the members and the healthy
    /// set are unchanged.
    live_ring: Arc<Ring>,
}

impl MembershipView {
    /// A view of `config`'s static nodes with the given healthy nodes and reported streams
    /// (this node is always up). Membership builds views itself; this is for planners and
    /// tests that need one.
    pub fn new(
        config: Arc<ClusterConfig>,
        up: impl IntoIterator<Item = String>,
        streams: impl IntoIterator<Item = (String, Vec<String>)>,
    ) -> Self {
        let mut up: BTreeSet<String> = up.into_iter().collect();
        up.insert(config.node_id.clone());
        let streams = streams.into_iter().map(|(node, s)| (node, s.into_iter().collect())).collect();
        let members = config.nodes.iter().map(|n| Member { node: n.clone(), source: Source::Static }).collect();
        Self::build(&config, members, up, BTreeSet::new(), streams, None)
    }

    /// The same view of `config` with `draining` nodes draining.
    #[cfg(test)]
    pub fn with_draining(self, config: &ClusterConfig, draining: impl IntoIterator<Item = String>) -> Self {
        Self::build(config, self.members, self.up, draining.into_iter().collect(), self.streams, None)
    }

    fn build(
        config: &ClusterConfig,
        members: Vec<Member>,
        up: BTreeSet<String>,
        draining: BTreeSet<String>,
        streams: BTreeMap<String, BTreeSet<String>>,
        ring: Option<Arc<Ring>>,
    ) -> Self {
        let live_ring = ring.unwrap_or_else(|| {
            let live: Vec<String> = if config.federated() {
                members
                    .iter()
                    .filter(|m| up.contains(&m.node.id) && !draining.contains(&m.node.id) && m.node.roles.contains(&Role::Live))
                    .map(|m| m.node.id.clone())
                    .collect()
            } else {
                // Alone: this node has every role.
                vec![config.node_id.clone()]
            };
            Arc::new(Ring::new(live, config.vnodes))
        });
        Self { node_id: config.node_id.clone(), members, up, draining, streams, live_ring }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn is_up(&self, id: &str) -> bool {
        self.up.contains(id)
    }

    /// Whether a healthy node drains (see [`HealthReport::draining`]).
    pub fn is_draining(&self, id: &str) -> bool {
        self.draining.contains(id)
    }

    /// A draining peer that reports `stream`: the node to take the stream's timeline from
    /// before continuing it here (cluster/handover.rs).
    pub fn handover_source(&self, stream: &str) -> Option<&NodeConfig> {
        self.draining
            .iter()
            .filter(|id| **id != self.node_id && self.streams.get(*id).is_some_and(|s| s.contains(stream)))
            .find_map(|id| self.node(id))
    }

    /// A member by id, up or not (check [`Self::is_up`] before using it).
    pub fn node(&self, id: &str) -> Option<&NodeConfig> {
        self.member(id).map(|m| &m.node)
    }

    /// A member by id, with where it came from.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node.id == id)
    }

    /// Every member, up or not, in view order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The healthy members, in view order.
    pub fn healthy(&self) -> impl Iterator<Item = &NodeConfig> {
        self.members.iter().map(|m| &m.node).filter(|n| self.up.contains(&n.id))
    }

    /// Streams a healthy peer reported live in its last good probe.
    pub fn streams_of(&self, id: &str) -> Vec<String> {
        if !self.up.contains(id) {
            return Vec::new();
        }
        self.streams.get(id).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// The ring over the healthy live nodes: a stream's owner and its failover order.
    pub fn live_ring(&self) -> &Ring {
        &self.live_ring
    }

    /// Healthy origins of `region`, or every healthy origin when that region has none up,
    /// in view order. Empty when no origin is up (or the node runs alone).
    pub fn origins_for(&self, region: &str) -> Vec<&NodeConfig> {
        let origins: Vec<&NodeConfig> = self.healthy().filter(|n| n.roles.contains(&Role::Origin)).collect();
        let local: Vec<&NodeConfig> = origins.iter().copied().filter(|n| n.region == region).collect();
        if local.is_empty() { origins } else { local }
    }

    /// The healthy peer that reports `stream` live. When several do (a handover in
    /// progress), the one earliest in the stream's ring order wins, so every reader agrees.
    /// This node's own streams are not probed: callers check their local registry first.
    pub fn live_location(&self, stream: &str) -> Option<&str> {
        let reports = |node: &str| self.up.contains(node) && self.streams.get(node).is_some_and(|s| s.contains(stream));
        if let Some(node) = self.live_ring.order(stream).into_iter().find(|n| reports(n)) {
            return Some(node);
        }
        self.streams.keys().map(String::as_str).find(|n| reports(n))
    }
}

impl std::fmt::Debug for MembershipView {
    // The members and the ring's points would drown what changes between views.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipView")
            .field("node_id", &self.node_id)
            .field("up", &self.up)
            .field("draining", &self.draining)
            .field("live_ring", &self.live_ring.nodes().collect::<Vec<_>>())
            .field("streams", &self.streams)
            .finish()
    }
}

/// Consecutive-result counter of one peer. Pure, so the thresholds are tested exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerHealth {
    up: bool,
    /// Consecutive results that disagree with `up`.
    streak: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Down,
    Up,
}

impl PeerHealth {
    fn new() -> Self {
        Self { up: true, streak: 0 }
    }

    /// A discovered peer: down until `rise_after` good probes.
    fn joining() -> Self {
        Self { up: false, streak: 0 }
    }

    fn record(&mut self, ok: bool, fail_after: u32, rise_after: u32) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fail_after } else { rise_after };
        if self.streak < needed.max(1) {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(if ok { Transition::Up } else { Transition::Down })
    }

    /// Down at once; it then needs the full `rise_after` good probes to come back.
    fn mark_down(&mut self) -> bool {
        let was_up = self.up;
        self.up = false;
        self.streak = 0;
        was_up
    }
}

/// One peer, by its HTTP address. A static peer's id is known from the start; a
/// discovered one's comes from its answers.
struct PeerState {
    id: Option<String>,
    roles: Vec<Role>,
    region: String,
    rtmp: SocketAddr,
    source: Source,
    health: PeerHealth,
    streams: BTreeSet<String>,
    draining: bool,
    /// Tier counters and key store fingerprint from the last good probe (not part of
    /// views: the counters change constantly).
    tier: Option<serde_json::Value>,
    keys: Option<String>,
    /// Stops its probe task (when it leaves the DNS answer).
    stop: CancellationToken,
}

impl PeerState {
    fn member(&self, http: SocketAddr) -> Option<Member> {
        let node = NodeConfig { id: self.id.clone()?, roles: self.roles.clone(), region: self.region.clone(), rtmp: self.rtmp, http };
        Some(Member { node, source: self.source.clone() })
    }
}

/// A discovered node: its roles and the DNS name that listed it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub roles: Vec<Role>,
    pub name: String,
}

#[derive(Default)]
struct Peers {
    by_http: BTreeMap<SocketAddr, PeerState>,
    /// Addresses that answered with this node's own id.
    own: BTreeSet<SocketAddr>,
}

impl Peers {
    fn by_id(&mut self, id: &str) -> Option<&mut PeerState> {
        self.by_http.values_mut().find(|s| s.id.as_deref() == Some(id))
    }
}

struct Shared {
    config: Arc<ClusterConfig>,
    /// This node as a member (its entry, or its roles and listen addresses).
    me: Member,
    /// Every peer but this node. Views are published while this lock is held, so they go
    /// out in the order the changes happened.
    peers: Mutex<Peers>,
    tx: watch::Sender<Arc<MembershipView>>,
    addresses: Arc<MemberAddresses>,
    /// Whether the first view with discovered peers is out (static: from the start).
    settled: watch::Sender<bool>,
    /// This node drains ([`Membership::drain`]).
    draining: std::sync::atomic::AtomicBool,
    client: PeerClient,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Shared {
    fn record(&self, http: SocketAddr, result: Result<HealthReport, ProbeError>) {
        let config = &self.config;
        let mut peers = self.peers.lock();
        if let Ok(report) = &result {
            if report.id == config.node_id {
                // Our own address in the DNS answer.
                if let Some(state) = peers.by_http.remove(&http) {
                    state.stop.cancel();
                    tracing::info!(address = %http, "discovery: this node's own address");
                }
                peers.own.insert(http);
                return;
            }
            let taken = peers.by_http.iter().any(|(a, s)| *a != http && s.id.as_deref() == Some(report.id.as_str()));
            if taken {
                tracing::warn!(address = %http, id = %report.id, "discovered peer answers with the id of another member's address; not a member");
                return;
            }
        }
        let Some(state) = peers.by_http.get_mut(&http) else { return };
        let mut changed = false;
        if let Ok(report) = &result
            && state.id.as_deref() != Some(report.id.as_str())
        {
            tracing::info!(address = %http, id = %report.id, "discovered peer named itself");
            state.id = Some(report.id.clone());
            changed = true;
        }
        let peer = state.id.clone().unwrap_or_else(|| http.to_string());
        let transition = state.health.record(result.is_ok(), config.fail_after, config.rise_after);
        changed |= transition.is_some();
        match (&result, transition) {
            (Ok(report), _) => {
                state.tier = report.tier.clone();
                state.keys = report.keys.clone();
                let streams: BTreeSet<String> = report.streams.iter().cloned().collect();
                if state.streams != streams || state.draining != report.draining {
                    if report.draining && !state.draining {
                        tracing::info!(peer, streams = streams.len(), "peer drains: out of the ring; its streams wait to be handed over");
                    }
                    state.streams = streams;
                    state.draining = report.draining;
                    changed = true;
                }
                if transition == Some(Transition::Up) {
                    tracing::info!(peer, reason = %format!("{} consecutive good probes", config.rise_after), "peer up");
                }
            }
            (Err(error), Some(Transition::Down)) => {
                // A down peer publishes nothing, so readers never see its stale streams.
                state.streams.clear();
                state.draining = false;
                state.tier = None;
                state.keys = None;
                tracing::warn!(peer, reason = %with_causes(error), failures = config.fail_after, "peer down");
            }
            (Err(error), _) => tracing::debug!(peer, reason = %with_causes(error), "health probe failed"),
        }
        if changed {
            self.publish(&peers);
        }
    }

    fn mark_down(&self, peer: &str) -> bool {
        let mut peers = self.peers.lock();
        let Some(state) = peers.by_id(peer) else {
            // Unknown ids and this node itself: nothing to mark.
            tracing::debug!(peer, "mark_down ignored: not a peer");
            return false;
        };
        if !state.health.mark_down() {
            return false;
        }
        state.streams.clear();
        tracing::warn!(peer, reason = "a caller saw it fail", "peer down");
        self.publish(&peers);
        true
    }

    /// The discovered nodes are now `found` (by HTTP address): new ones start their probes
    /// (down until they answer), gone ones stop theirs and leave the view.
    fn set_discovered(self: &Arc<Self>, found: BTreeMap<SocketAddr, Found>, rtmp_port: u16) {
        let mut peers = self.peers.lock();
        let mut changed = false;
        let gone: Vec<SocketAddr> = peers.by_http.keys().filter(|a| !found.contains_key(a)).copied().collect();
        for http in gone {
            if let Some(state) = peers.by_http.remove(&http) {
                state.stop.cancel();
                tracing::info!(address = %http, id = ?state.id, "peer left the DNS answer");
                changed = true;
            }
        }
        peers.own.retain(|a| found.contains_key(a));
        for (http, found) in &found {
            if peers.own.contains(http) {
                continue;
            }
            if let Some(state) = peers.by_http.get_mut(http) {
                if state.roles != found.roles {
                    state.roles.clone_from(&found.roles);
                    changed = true;
                }
                continue;
            }
            tracing::info!(address = %http, roles = ?found.roles, name = %found.name, "peer found in DNS; probing it");
            let stop = self.shutdown.child_token();
            peers.by_http.insert(
                *http,
                PeerState {
                    id: None,
                    roles: found.roles.clone(),
                    region: super::config::DEFAULT_REGION.to_owned(),
                    rtmp: SocketAddr::new(http.ip(), rtmp_port),
                    source: Source::Dns(found.name.clone()),
                    health: PeerHealth::joining(),
                    streams: BTreeSet::new(),
                    draining: false,
                    tier: None,
                    keys: None,
                    stop: stop.clone(),
                },
            );
            self.tracker.spawn(probe_loop(Arc::clone(self), *http, None, stop));
        }
        self.addresses.replace(found.keys().map(SocketAddr::ip).collect());
        if changed || !*self.settled.borrow() {
            self.publish(&peers);
        }
        self.settled.send_replace(true);
    }

    fn publish(&self, peers: &Peers) {
        let mut members = vec![];
        let mut discovered = vec![];
        let mut up: BTreeSet<String> = BTreeSet::from([self.config.node_id.clone()]);
        let mut draining = BTreeSet::new();
        if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            draining.insert(self.config.node_id.clone());
        }
        let mut streams = BTreeMap::new();
        for (http, state) in &peers.by_http {
            let Some(member) = state.member(*http) else { continue };
            if state.health.up {
                up.insert(member.node.id.clone());
                if state.draining {
                    draining.insert(member.node.id.clone());
                }
                if !state.streams.is_empty() {
                    streams.insert(member.node.id.clone(), state.streams.clone());
                }
            }
            match member.source {
                Source::Static => members.push(member),
                Source::Dns(_) => discovered.push(member),
            }
        }
        if self.config.discovery.is_some() {
            discovered.sort_by(|a, b| a.node.id.cmp(&b.node.id));
            members = std::iter::once(self.me.clone()).chain(discovered).collect();
        } else {
            // Config order, this node in its place.
            let order: BTreeMap<&str, usize> = self.config.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
            members.push(self.me.clone());
            members.sort_by_key(|m| order.get(m.node.id.as_str()).copied().unwrap_or(usize::MAX));
        }
        // Only a change of the members or the healthy set changes the ring; stream
        // reports alone reuse it.
        let ring = {
            let previous = self.tx.borrow();
            (previous.up == up && previous.draining == draining && previous.members == members).then(|| previous.live_ring.clone())
        };
        self.tx.send_replace(Arc::new(MembershipView::build(&self.config, members, up, draining, streams, ring)));
    }
}

/// Handle on the federation's membership; clone it freely.
#[derive(Clone)]
pub struct Membership {
    shared: Arc<Shared>,
    rx: watch::Receiver<Arc<MembershipView>>,
}

/// Starts one probe task per static peer (every node of `config` but this one) on
/// `tracker`; with discovery, none until [`Membership::set_discovered`]. They stop when
/// `shutdown` fires. `me` is this node as a member (its entry, or its roles and listen
/// addresses); `addresses` is kept to the members' addresses. Call inside a Tokio runtime.
/// `client` signs the probes and checks the answers' signatures; its HTTP client should
/// not use a proxy: see [`peer_client`].
pub fn spawn(
    config: &ClusterConfig,
    me: NodeConfig,
    addresses: Arc<MemberAddresses>,
    client: PeerClient,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Membership {
    let config = Arc::new(config.clone());
    let mut peers = Peers::default();
    for node in config.nodes.iter().filter(|n| n.id != config.node_id) {
        let state = PeerState {
            id: Some(node.id.clone()),
            roles: node.roles.clone(),
            region: node.region.clone(),
            rtmp: node.rtmp,
            source: Source::Static,
            health: PeerHealth::new(),
            streams: BTreeSet::new(),
            draining: false,
            tier: None,
            keys: None,
            stop: shutdown.child_token(),
        };
        peers.by_http.insert(node.http, state);
    }
    let members: Vec<Member> = config.nodes.iter().map(|n| Member { node: n.clone(), source: Source::Static }).collect();
    let me = Member { node: me, source: Source::Static };
    let members = if members.is_empty() { vec![me.clone()] } else { members };
    let up = members.iter().map(|m| m.node.id.clone()).chain([config.node_id.clone()]).collect();
    let first = MembershipView::build(&config, members, up, BTreeSet::new(), BTreeMap::new(), None);
    let (tx, rx) = watch::channel(Arc::new(first));
    let (settled, _) = watch::channel(config.discovery.is_none());
    tracing::info!(
        node = %config.node_id,
        peers = peers.by_http.len(),
        discovery = config.discovery.is_some(),
        interval = ?config.health_interval,
        "membership probes starting"
    );
    let statics: Vec<(SocketAddr, String, CancellationToken)> =
        peers.by_http.iter().map(|(http, s)| (*http, s.id.clone().unwrap_or_default(), s.stop.clone())).collect();
    let shared = Arc::new(Shared {
        config: config.clone(),
        me,
        peers: Mutex::new(peers),
        tx,
        addresses,
        settled,
        draining: std::sync::atomic::AtomicBool::new(false),
        client,
        tracker: tracker.clone(),
        shutdown,
    });
    for (http, id, stop) in statics {
        tracker.spawn(probe_loop(shared.clone(), http, Some(id), stop));
    }
    Membership { shared, rx }
}

impl Membership {
    /// The current view.
    pub fn view(&self) -> Arc<MembershipView> {
        self.rx.borrow().clone()
    }

    /// Waits for the next view published after the last one this handle waited for.
    pub async fn changed(&mut self) {
        // Cannot fail: this handle owns the sender through `shared`.
        let _ = self.rx.changed().await;
    }

    /// A receiver of views, for `select!` loops that want the channel itself.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MembershipView>> {
        self.rx.clone()
    }

    /// Returns once the view holds what the first discovery round found (at once for
    /// static peers): the node then knows its federation and may call itself ready.
    pub async fn settled(&self) {
        let mut settled = self.shared.settled.subscribe();
        // Cannot fail: `shared` owns the sender.
        let _ = settled.wait_for(|s| *s).await;
    }

    /// The discovered nodes are now `found`, by HTTP address (discovery.rs, after each
    /// round): see the module header.
    pub fn set_discovered(&self, found: BTreeMap<SocketAddr, Found>, rtmp_port: u16) {
        self.shared.set_discovered(found, rtmp_port);
    }

    /// This node drains: it leaves its own ring (its relays go to the next node) and says
    /// so in its health answers, so peers stop placing streams on it.
    pub fn drain(&self) {
        self.shared.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.publish(&self.shared.peers.lock());
    }

    /// Whether this node drains.
    pub fn draining(&self) -> bool {
        self.shared.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Each healthy peer's tier counters from its last good probe.
    pub fn peer_tiers(&self) -> BTreeMap<String, serde_json::Value> {
        let peers = self.shared.peers.lock();
        peers.by_http.values().filter(|s| s.health.up).filter_map(|s| Some((s.id.clone()?, s.tier.clone()?))).collect()
    }

    /// Each healthy peer's key store fingerprint from its last good probe, with its HTTP address.
    pub fn peer_key_fingerprints(&self) -> Vec<(String, SocketAddr, String)> {
        let peers = self.shared.peers.lock();
        peers
            .by_http
            .iter()
            .filter(|(_, s)| s.health.up)
            .filter_map(|(http, s)| Some((s.id.clone()?, *http, s.keys.clone()?)))
            .collect()
    }

    /// Marks a peer down now, for a caller that saw it fail (a relay whose connection
    /// broke must not wait `fail_after` probe intervals). The probes bring it back after
    /// `rise_after` good answers. Returns whether the peer was up; this node and unknown
    /// ids are ignored.
    pub fn mark_down(&self, id: &str) -> bool {
        self.shared.mark_down(id)
    }
}

/// Probes the peer at `http` until `stop` fires; `id` is its id when known (static).
async fn probe_loop(shared: Arc<Shared>, http: SocketAddr, id: Option<String>, stop: CancellationToken) {
    let timeout = shared.config.health_timeout;
    let mut ticks = tokio::time::interval(shared.config.health_interval);
    // A stalled runtime must not fire a burst of probes that flips a peer on catch-up.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => break,
            result = async {
                ticks.tick().await;
                probe(&shared.client, http, id.as_deref(), timeout).await
            } => result,
        };
        shared.record(http, result);
    }
    tracing::debug!(peer = %id.as_deref().unwrap_or_default(), address = %http, "health probes stopped");
}

async fn probe(client: &PeerClient, http: SocketAddr, expected: Option<&str>, timeout: Duration) -> Result<HealthReport, ProbeError> {
    let shown = expected.map_or_else(|| http.to_string(), str::to_owned);
    let attempt = async {
        let (signer, body) = match expected {
            Some(id) => (id.to_owned(), client.get(id, http, HEALTH_PATH, MAX_HEALTH_BYTES).await),
            None => match client.get_unknown(http, HEALTH_PATH, MAX_HEALTH_BYTES).await {
                Ok((signer, body)) => (signer, Ok(body)),
                Err(e) => (String::new(), Err(e)),
            },
        };
        let body = body.map_err(|source| ProbeError::Request { peer: shown.clone(), source })?;
        let report: HealthReport =
            serde_json::from_slice(&body).map_err(|source| ProbeError::Body { peer: shown.clone(), source })?;
        // The id in the body must be the one that signed the answer.
        if report.id != signer {
            return Err(ProbeError::WrongNode { peer: shown.clone(), answered: report.id });
        }
        Ok(report)
    };
    // One deadline over connect, headers and body: a peer that trickles its answer is as
    // unhealthy as one that never answers.
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(ProbeError::Timeout { peer: shown.clone(), timeout }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::{Json, Router};

    use super::*;
    use crate::auth::peer::PeerGuard;
    use crate::cluster::config::DEFAULT_REGION;

    /// Membership of `config`'s node (its entry) with the test secret.
    fn start(config: &ClusterConfig, tracker: &TaskTracker, shutdown: &CancellationToken) -> Membership {
        let me = config.this_node().cloned().unwrap();
        spawn(config, me, MemberAddresses::of(config), client(), tracker, shutdown.clone())
    }

    #[test]
    fn health_goes_down_after_exactly_fail_after_and_up_after_rise_after() {
        let mut h = PeerHealth::new();
        assert_eq!(h.record(false, 3, 2), None);
        assert_eq!(h.record(false, 3, 2), None);
        // A success in between resets the count.
        assert_eq!(h.record(true, 3, 2), None);
        assert_eq!(h.record(false, 3, 2), None);
        assert_eq!(h.record(false, 3, 2), None);
        assert_eq!(h.record(false, 3, 2), Some(Transition::Down));
        assert_eq!(h.record(false, 3, 2), None);
        assert_eq!(h.record(true, 3, 2), None);
        assert_eq!(h.record(false, 3, 2), None);
        assert_eq!(h.record(true, 3, 2), None);
        assert_eq!(h.record(true, 3, 2), Some(Transition::Up));
        assert!(h.mark_down());
        assert!(!h.mark_down());
        assert_eq!(h.record(true, 3, 2), None);
        assert_eq!(h.record(true, 3, 2), Some(Transition::Up));
    }

    #[test]
    fn health_body_is_the_documented_json() {
        let body = serde_json::to_value(health_body("b", vec!["cam1".into(), "news".into()], false)).unwrap();
        assert_eq!(body, serde_json::json!({"id": "b", "streams": ["cam1", "news"]}));
        let bare: HealthReport = serde_json::from_str(r#"{"id": "b", "version": 2}"#).unwrap();
        assert_eq!(bare, health_body("b", Vec::new(), false));
        let draining = serde_json::to_value(health_body("b", vec!["cam1".into()], true)).unwrap();
        assert_eq!(draining, serde_json::json!({"id": "b", "streams": ["cam1"], "draining": true}));
    }

    fn node(id: &str, roles: &[Role], region: &str, http: std::net::SocketAddr) -> NodeConfig {
        NodeConfig {
            id: id.to_owned(),
            roles: roles.to_vec(),
            region: region.to_owned(),
            rtmp: "127.0.0.1:9".parse().unwrap(),
            http,
        }
    }

    fn static_config() -> Arc<ClusterConfig> {
        let addr = "127.0.0.1:9".parse().unwrap();
        Arc::new(ClusterConfig {
            node_id: "me".into(),
            nodes: vec![
                node("me", &[Role::Edge], "eu", addr),
                node("l1", &[Role::Live], "eu", addr),
                node("l2", &[Role::Live, Role::Origin], "us", addr),
                node("o-eu", &[Role::Origin], "eu", addr),
                node("o-us", &[Role::Origin], "us", addr),
            ],
            ..ClusterConfig::default()
        })
    }

    fn ids<'a>(nodes: impl IntoIterator<Item = &'a NodeConfig>) -> Vec<&'a str> {
        nodes.into_iter().map(|n| n.id.as_str()).collect()
    }

    #[test]
    fn view_helpers_see_only_healthy_nodes() {
        let config = static_config();
        let all = ["l1", "l2", "o-eu", "o-us"].map(String::from);
        let view = MembershipView::new(config.clone(), all.clone(), []);
        assert!(view.is_up("me"), "this node is always up");
        assert_eq!(view.live_ring().nodes().collect::<Vec<_>>(), ["l1", "l2"]);
        assert_eq!(ids(view.origins_for("eu")), ["o-eu"]);
        assert_eq!(ids(view.origins_for("us")), ["l2", "o-us"]);
        assert_eq!(ids(view.origins_for("mars")), ["l2", "o-eu", "o-us"], "no origin there: all of them");
        assert_eq!(view.node("o-us").map(|n| n.region.as_str()), Some("us"));
        assert!(view.node("nope").is_none());

        let view = MembershipView::new(config.clone(), ["l2", "o-us"].map(String::from), []);
        assert_eq!(view.live_ring().nodes().collect::<Vec<_>>(), ["l2"]);
        assert_eq!(ids(view.origins_for("eu")), ["l2", "o-us"], "eu's origin is down: fall back");
        assert!(!view.is_up("l1"));
        assert!(view.node("l1").is_some(), "node() looks up the config, up or not");

        let alone = MembershipView::new(Arc::new(ClusterConfig::default()), [], []);
        assert_eq!(alone.live_ring().owner("cam1"), Some("local"));
        assert!(alone.origins_for("eu").is_empty());
    }

    #[test]
    fn live_location_prefers_ring_order_and_skips_down_nodes() {
        let config = static_config();
        let streams = || [("l1".to_owned(), vec!["cam1".to_owned()]), ("l2".to_owned(), vec!["cam1".to_owned()])];
        let view = MembershipView::new(config.clone(), ["l1", "l2"].map(String::from), streams());
        assert_eq!(view.live_location("cam1"), view.live_ring().owner("cam1"));
        assert_eq!(view.live_location("other"), None);
        let view = MembershipView::new(config, ["l2"].map(String::from), streams());
        assert_eq!(view.live_location("cam1"), Some("l2"));
    }

    const SECRET: &str = "membership-test-secret-0123";

    fn client() -> PeerClient {
        PeerClient::new(peer_client(None).unwrap(), SECRET, Arc::default())
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Healthy,
        Failing,
        /// Accepts the request and never answers within any probe timeout.
        Silent,
    }

    /// A peer's health route on 127.0.0.1, switchable between answers.
    struct FakePeer {
        id: String,
        mode: Mutex<Mode>,
        streams: Mutex<Vec<String>>,
        hits: AtomicU32,
        addr: std::net::SocketAddr,
    }

    impl FakePeer {
        async fn start(id: &str) -> Arc<FakePeer> {
            Self::start_signing_with(id, SECRET).await
        }

        /// A peer that signs its answers with `secret`.
        async fn start_signing_with(id: &str, secret: &str) -> Arc<FakePeer> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let peer = Arc::new(FakePeer {
                id: id.to_owned(),
                mode: Mutex::new(Mode::Healthy),
                streams: Mutex::new(Vec::new()),
                hits: AtomicU32::new(0),
                addr: listener.local_addr().unwrap(),
            });
            // Behind the same guard as a real node's: signed probes from loopback, signed answers.
            let guard = PeerGuard::new(id, secret, Arc::new(MemberAddresses::from(HashSet::from(["127.0.0.1".parse().unwrap()]))), Arc::default());
            let router = Router::new()
                .route(HEALTH_PATH, get(fake_health))
                .route_layer(axum::middleware::from_fn_with_state(guard, crate::auth::peer::guard))
                .with_state(peer.clone());
            let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
            tokio::spawn(async move { axum::serve(listener, service).await });
            peer
        }

        fn set(&self, mode: Mode) -> u32 {
            *self.mode.lock() = mode;
            self.hits.load(Ordering::SeqCst)
        }

        fn probes_since(&self, mark: u32) -> u32 {
            self.hits.load(Ordering::SeqCst) - mark
        }
    }

    async fn fake_health(State(peer): State<Arc<FakePeer>>) -> Response {
        peer.hits.fetch_add(1, Ordering::SeqCst);
        let mode = *peer.mode.lock();
        match mode {
            Mode::Healthy => Json(health_body(&peer.id, peer.streams.lock().clone(), false)).into_response(),
            Mode::Failing => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            Mode::Silent => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::OK.into_response()
            }
        }
    }

    struct Cluster {
        membership: Membership,
        peers: BTreeMap<&'static str, Arc<FakePeer>>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    }

    /// This node "me" (edge) probing fake live peers l1, l2, l3 and origin o1, every 50 ms.
    async fn cluster() -> Cluster {
        let mut peers = BTreeMap::new();
        let mut nodes = vec![node("me", &[Role::Edge], "eu", "127.0.0.1:9".parse().unwrap())];
        for (id, role) in [("l1", Role::Live), ("l2", Role::Live), ("l3", Role::Live), ("o1", Role::Origin)] {
            let peer = FakePeer::start(id).await;
            nodes.push(node(id, &[role], "eu", peer.addr));
            peers.insert(id, peer);
        }
        let config = ClusterConfig {
            node_id: "me".into(),
            nodes,
            vnodes: 64,
            health_interval: Duration::from_millis(50),
            health_timeout: Duration::from_millis(40),
            fail_after: 2,
            rise_after: 3,
            ..ClusterConfig::default()
        };
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let membership = start(&config, &tracker, &shutdown);
        Cluster { membership, peers, tracker, shutdown }
    }

    /// Waits (3 s at most) until the view satisfies `ready`, and says what it waited for.
    async fn wait_for(membership: &mut Membership, what: &str, ready: impl Fn(&MembershipView) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !ready(&membership.view()) {
            if tokio::time::timeout_at(deadline, membership.changed()).await.is_err() {
                panic!("timed out after 3 s waiting for {what}; view: {:?}", membership.view());
            }
        }
    }

    #[tokio::test]
    async fn peer_goes_down_after_fail_after_failures_and_up_after_rise_after() {
        let mut c = cluster().await;
        let view = c.membership.view();
        for id in ["me", "l1", "l2", "l3", "o1"] {
            assert!(view.is_up(id), "{id} starts up");
        }
        let l2 = &c.peers["l2"];
        let mark = l2.set(Mode::Failing);
        wait_for(&mut c.membership, "l2 down", |v| !v.is_up("l2")).await;
        assert!(l2.probes_since(mark) >= 2, "down after {} failed probes", l2.probes_since(mark));
        assert!(!c.membership.view().live_ring().contains("l2"));
        assert!(c.membership.view().live_ring().contains("l1"));

        let mark = l2.set(Mode::Healthy);
        wait_for(&mut c.membership, "l2 up", |v| v.is_up("l2")).await;
        assert!(l2.probes_since(mark) >= 3, "up after {} good probes", l2.probes_since(mark));
        assert!(c.membership.view().live_ring().contains("l2"));
        assert!(c.membership.view().is_up("l1"), "other peers unaffected");
    }

    #[tokio::test]
    async fn peer_that_does_not_answer_in_time_goes_down() {
        let mut c = cluster().await;
        c.peers["l3"].set(Mode::Silent);
        wait_for(&mut c.membership, "silent l3 down", |v| !v.is_up("l3")).await;
        let ring = c.membership.view().live_ring().clone();
        assert_eq!(ring.nodes().collect::<Vec<_>>(), ["l1", "l2"]);
        for i in 0..200 {
            assert_ne!(ring.owner(&format!("s{i}")), Some("l3"));
        }
    }

    #[tokio::test]
    async fn mark_down_takes_effect_at_once_and_probes_bring_the_peer_back() {
        let mut c = cluster().await;
        assert!(c.membership.mark_down("l1"));
        let view = c.membership.view();
        assert!(!view.is_up("l1"), "no probe interval in between");
        assert!(!view.live_ring().contains("l1"));
        assert!(!c.membership.mark_down("l1"), "already down");
        assert!(!c.membership.mark_down("me"), "this node is always up");
        assert!(!c.membership.mark_down("stranger"));
        assert!(c.membership.view().is_up("me"));
        // l1 still answers, so rise_after good probes later it is back.
        wait_for(&mut c.membership, "l1 back up", |v| v.is_up("l1")).await;
    }

    #[tokio::test]
    async fn live_location_follows_reported_streams() {
        let mut c = cluster().await;
        *c.peers["l2"].streams.lock() = vec!["cam1".into(), "news".into()];
        wait_for(&mut c.membership, "cam1 on l2", |v| v.live_location("cam1") == Some("l2")).await;
        assert_eq!(c.membership.view().live_location("news"), Some("l2"));

        // cam1 moves to l3 (its owner came back and the broadcaster stayed on l3, say).
        *c.peers["l3"].streams.lock() = vec!["cam1".into()];
        *c.peers["l2"].streams.lock() = vec!["news".into()];
        wait_for(&mut c.membership, "cam1 on l3", |v| v.live_location("cam1") == Some("l3")).await;

        // A down node's reports no longer count.
        c.peers["l3"].set(Mode::Failing);
        wait_for(&mut c.membership, "cam1 nowhere", |v| v.live_location("cam1").is_none()).await;
        assert_eq!(c.membership.view().live_location("news"), Some("l2"));
    }

    #[tokio::test]
    async fn peer_answering_with_another_id_is_down() {
        let config = ClusterConfig {
            node_id: "me".into(),
            nodes: vec![
                node("me", &[Role::Live], "eu", "127.0.0.1:9".parse().unwrap()),
                // The address of "impostor" reaches a node that calls itself "l1".
                node("impostor", &[Role::Live], "eu", FakePeer::start("l1").await.addr),
            ],
            health_interval: Duration::from_millis(50),
            health_timeout: Duration::from_millis(40),
            ..ClusterConfig::default()
        };
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let mut membership = start(&config, &tracker, &shutdown);
        wait_for(&mut membership, "impostor down", |v| !v.is_up("impostor")).await;
        assert_eq!(membership.view().live_ring().nodes().collect::<Vec<_>>(), ["me"]);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn peer_that_does_not_share_the_secret_is_down() {
        let config = ClusterConfig {
            node_id: "me".into(),
            nodes: vec![
                node("me", &[Role::Live], "eu", "127.0.0.1:9".parse().unwrap()),
                node("l1", &[Role::Live], "eu", FakePeer::start_signing_with("l1", "not-the-federation-secret").await.addr),
            ],
            health_interval: Duration::from_millis(50),
            health_timeout: Duration::from_millis(40),
            ..ClusterConfig::default()
        };
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        // Its guard refuses our probes (401); tests/it/cluster_auth.rs has forged answers.
        let mut membership = start(&config, &tracker, &shutdown);
        wait_for(&mut membership, "l1 down", |v| !v.is_up("l1")).await;
        shutdown.cancel();
    }

    #[tokio::test]
    async fn discovered_peers_join_under_the_id_they_answer_with_and_leave_with_the_dns_answer() {
        let (l1, l2, me) = (FakePeer::start("l1").await, FakePeer::start("l2").await, FakePeer::start("me").await);
        let config = ClusterConfig {
            node_id: "me".into(),
            discovery: Some(crate::cluster::config::DiscoveryConfig { live: Some("live.test".into()), ..Default::default() }),
            health_interval: Duration::from_millis(50),
            health_timeout: Duration::from_millis(40),
            ..ClusterConfig::default()
        };
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let me_node = node("me", &[Role::Live], DEFAULT_REGION, me.addr);
        let addresses = Arc::new(MemberAddresses::default());
        let mut membership = spawn(&config, me_node, Arc::clone(&addresses), client(), &tracker, shutdown.clone());
        let live = |addrs: &[SocketAddr]| addrs.iter().map(|a| (*a, Found { roles: vec![Role::Live], name: "live.test".into() })).collect();
        membership.set_discovered(live(&[l1.addr, l2.addr, me.addr]), 1935);
        membership.settled().await;
        assert!(addresses.contains(l1.addr.ip()), "discovered addresses are members' addresses");
        wait_for(&mut membership, "l1 and l2 in the ring", |v| v.live_ring().nodes().collect::<Vec<_>>() == ["l1", "l2", "me"]).await;
        let view = membership.view();
        assert_eq!(view.member("l2").unwrap().source.to_string(), "dns:live.test");
        assert_eq!(view.node("l2").unwrap().http, l2.addr);
        assert_eq!(view.members().iter().filter(|m| m.node.id == "me").count(), 1, "its own address is this node");

        membership.set_discovered(live(&[l1.addr, me.addr]), 1935);
        let view = membership.view();
        assert!(view.node("l2").is_none(), "gone from the DNS answer: gone from the view at once");
        assert_eq!(view.live_ring().nodes().collect::<Vec<_>>(), ["l1", "me"]);
        let hits = l2.set(Mode::Healthy);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(l2.probes_since(hits) <= 1, "its probes stopped");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn probes_stop_on_shutdown() {
        let c = cluster().await;
        c.tracker.close();
        c.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(2), c.tracker.wait()).await;
        stopped.expect("probe tasks end within 2 s of shutdown");
    }
}
