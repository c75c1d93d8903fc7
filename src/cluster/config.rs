//! The federation's configuration (`[cluster]`): this node's id, every node's roles,
//! region and addresses (a static `nodes` list, or `[cluster.discovery]`: peers from DNS),
//! the ring's virtual nodes, health probing, the relay secret and the drain, with their
//! defaults and checks. Read by membership, discovery, placement, the peer-request signing
//! and the app's wiring.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::section::InvalidKey;

/// The section's table in the config file.
const SECTION: &str = "cluster";

/// What a node does. Every node runs the same binary; roles only switch parts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes broadcasters, transcodes and packages its own streams, serves them.
    Live,
    /// Caches and coalesces for edges, fetching from each stream's live node.
    Origin,
    /// Serves viewers, caching and coalescing in front of its region's origins.
    Edge,
}

impl Role {
    /// Its name in configs, flags and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Origin => "origin",
            Role::Edge => "edge",
        }
    }
}

pub const DEFAULT_NODE_ID: &str = "local";
pub const DEFAULT_REGION: &str = "default";
pub const DEFAULT_VNODES: u32 = 160;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(400);
pub const DEFAULT_FAIL_AFTER: u32 = 2;
pub const DEFAULT_RISE_AFTER: u32 = 2;
pub const MIN_RELAY_SECRET_LEN: usize = 16;
/// How long a stopping node waits for its streams and tasks to finish.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Longest `drain_grace` (an orchestrator's own grace must exceed it).
pub const MAX_DRAIN_GRACE: Duration = Duration::from_secs(600);
/// Most virtual nodes per node on the ring.
pub const MAX_VNODES: u32 = 4096;
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest re-resolve interval (each round's lookups are bounded by it).
pub const MIN_DISCOVERY_INTERVAL: Duration = Duration::from_millis(200);
pub const DEFAULT_RTMP_PORT: u16 = 1935;
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// This node's place in a federation. With no `nodes`, the node is alone and has every
/// role. One cluster file can serve every node: each picks its own entry by `node_id`
/// (or `--node`), and takes its listen addresses and roles from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Which entry of `nodes` this process is.
    pub node_id: String,
    /// Every node of the federation, this one included.
    pub nodes: Vec<NodeConfig>,
    /// Virtual nodes per node on the consistent-hash ring.
    pub vnodes: u32,
    /// How often each peer's health is probed.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// A probe without an answer within this time counts as failed.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Consecutive failed probes that mark a peer down.
    pub fail_after: u32,
    /// Consecutive good probes that mark a peer up again.
    pub rise_after: u32,
    /// Shared secret with which nodes sign relayed publishes (app `_relay`), so that only
    /// nodes of the federation can publish without a broadcaster's stream key, and every
    /// node-to-node HTTP request and answer (`/cluster/*`, `auth/peer.rs`). Required
    /// when `nodes` is set (this or `relay_secret_file`); at least 16 characters. Never
    /// printed: `rackcast config` shows it redacted.
    pub relay_secret: String,
    /// File holding the relay secret (first line), instead of `relay_secret`.
    pub relay_secret_file: Option<std::path::PathBuf>,
    /// On SIGTERM (or Ctrl-C) the node answers 503 on `/ready` at once, then waits at most
    /// this long for its streams to drain their pipelines and its tasks to end; then its
    /// HTTP side closes (5 s more at most for responses in progress) and it exits. Set an
    /// orchestrator's kill grace above this plus 5 s.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Peers from DNS instead of `nodes` (the two are exclusive). Absent: no discovery.
    pub discovery: Option<DiscoveryConfig>,
    /// This node's roles from the command line (`rackcast run --role`), over its entry's;
    /// empty: none given. Not a config key.
    #[serde(skip)]
    pub role_override: Vec<Role>,
}

/// `[cluster.discovery]`: the federation's nodes are the addresses some DNS names resolve
/// to, one name per role (every A and AAAA record of `live` is a live node, and so on),
/// re-resolved every `interval`. A node's id is its hostname unless `cluster.node_id` is
/// set; each peer's id comes from its own health answer (cluster/discovery.rs). Every
/// discovered node is in region `default`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// DNS name of the live nodes (e.g. a headless Service); absent: none.
    pub live: Option<String>,
    /// DNS name of the origins; absent: none.
    pub origin: Option<String>,
    /// DNS name of the edges; absent: none.
    pub edge: Option<String>,
    /// How often the names are resolved again; also the bound on one round of lookups.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Every discovered node's RTMP port.
    pub rtmp_port: u16,
    /// Every discovered node's HTTP port.
    pub http_port: u16,
    /// DNS server to ask, `ip:port`; absent: the system's resolver config (/etc/resolv.conf).
    pub resolver: Option<SocketAddr>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            live: None,
            origin: None,
            edge: None,
            interval: DEFAULT_DISCOVERY_INTERVAL,
            rtmp_port: DEFAULT_RTMP_PORT,
            http_port: DEFAULT_HTTP_PORT,
            resolver: None,
        }
    }
}

impl DiscoveryConfig {
    /// The names to resolve, with the role of the nodes each one lists.
    pub fn names(&self) -> Vec<(Role, &str)> {
        [(Role::Live, &self.live), (Role::Origin, &self.origin), (Role::Edge, &self.edge)]
            .into_iter()
            .filter_map(|(role, name)| Some((role, name.as_deref()?)))
            .collect()
    }

    /// The addresses of a node found at `ip`.
    pub fn addresses(&self, ip: IpAddr) -> (SocketAddr, SocketAddr) {
        (SocketAddr::new(ip, self.rtmp_port), SocketAddr::new(ip, self.http_port))
    }
}

/// One node of the federation as every other node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: String,
    pub roles: Vec<Role>,
    #[serde(default = "default_region")]
    pub region: String,
    /// RTMP address (broadcasters and relays publish here).
    pub rtmp: SocketAddr,
    /// HTTP address (viewers, lower tiers and health probes).
    pub http: SocketAddr,
}

fn default_region() -> String {
    DEFAULT_REGION.to_owned()
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: DEFAULT_NODE_ID.to_owned(),
            nodes: Vec::new(),
            vnodes: DEFAULT_VNODES,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
            fail_after: DEFAULT_FAIL_AFTER,
            rise_after: DEFAULT_RISE_AFTER,
            relay_secret: String::new(),
            relay_secret_file: None,
            drain_grace: DEFAULT_DRAIN_GRACE,
            discovery: None,
            role_override: Vec::new(),
        }
    }
}

impl ClusterConfig {
    /// Whether this node has peers (static or discovered), rather than running alone.
    pub fn federated(&self) -> bool {
        !self.nodes.is_empty() || self.discovery.is_some()
    }

    /// This node's entry; `None` when the node runs alone.
    pub fn this_node(&self) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == self.node_id)
    }

    /// This node's roles: `--role`'s, else its entry's, else all of them.
    pub fn roles(&self) -> Vec<Role> {
        if !self.role_override.is_empty() {
            return self.role_override.clone();
        }
        self.this_node().map(|n| n.roles.clone()).unwrap_or_else(|| vec![Role::Live, Role::Origin, Role::Edge])
    }

    /// Gives this node `roles` (`rackcast run --role`), over its entry's in `nodes` too,
    /// so that its own view of the federation agrees with what it runs.
    pub fn set_roles(&mut self, roles: &[Role]) {
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        if let Some(entry) = self.nodes.iter_mut().find(|n| n.id == self.node_id) {
            entry.roles.clone_from(&roles);
        }
        self.role_override = roles;
    }

    fn validate_relay_secret(&self) -> Result<(), InvalidKey> {
        if self.relay_secret.chars().count() < MIN_RELAY_SECRET_LEN {
            return Err(InvalidKey::new(
                SECTION,
                "relay_secret",
                format!("a federated node needs a relay secret of at least {MIN_RELAY_SECRET_LEN} characters (relay_secret or relay_secret_file), the same on every node"),
            ));
        }
        Ok(())
    }

    /// Checks every field; the error names the key (`cluster.{key}`). A federation (any
    /// `nodes`) must name this node, list each node once with a role, have a live node and
    /// a relay secret.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        let invalid = |key: &str, reason: &str| Err(InvalidKey::new(SECTION, key, reason));
        if self.discovery.is_some() && !self.nodes.is_empty() {
            return invalid("discovery", "set either cluster.nodes or cluster.discovery, not both");
        }
        if !self.nodes.is_empty() {
            if self.this_node().is_none() {
                return invalid("node_id", &format!("{:?} is not one of cluster.nodes", self.node_id));
            }
            let mut ids = std::collections::BTreeSet::new();
            for (i, node) in self.nodes.iter().enumerate() {
                if !ids.insert(node.id.as_str()) {
                    return invalid(&format!("nodes[{i}].id"), &format!("{:?} appears twice", node.id));
                }
                if node.roles.is_empty() {
                    return invalid(&format!("nodes[{i}].roles"), "needs at least one role");
                }
            }
            self.validate_relay_secret()?;
            if !self.nodes.iter().any(|n| n.roles.contains(&Role::Live)) {
                return invalid("nodes", "needs at least one node with the live role");
            }
        }
        if let Some(discovery) = &self.discovery {
            let key = |k: &str| format!("discovery.{k}");
            if discovery.names().is_empty() {
                return invalid(&key("live"), "discovery needs at least one name (live, origin or edge)");
            }
            if discovery.live.is_none() {
                return invalid(&key("live"), "a federation needs its live nodes' name");
            }
            for (role, name) in discovery.names() {
                if name.is_empty() || name.len() > 253 || name.contains(char::is_whitespace) {
                    return invalid(&key(role.name()), &format!("{name:?} is not a DNS name"));
                }
            }
            if discovery.interval < MIN_DISCOVERY_INTERVAL {
                return invalid(&key("interval"), &format!("must be at least {}", humantime::format_duration(MIN_DISCOVERY_INTERVAL)));
            }
            if discovery.rtmp_port == 0 || discovery.http_port == 0 {
                return invalid(&key("http_port"), "rtmp_port and http_port must be above 0");
            }
            if self.node_id.is_empty() {
                return invalid("node_id", "must not be empty");
            }
            self.validate_relay_secret()?;
        }
        if self.vnodes == 0 || self.vnodes > MAX_VNODES {
            return invalid("vnodes", &format!("must be within 1..={MAX_VNODES}"));
        }
        if self.health_timeout.is_zero() || self.health_timeout > self.health_interval * 4 {
            return invalid("health_timeout", "must be above zero and at most four health intervals");
        }
        if self.drain_grace.is_zero() || self.drain_grace > MAX_DRAIN_GRACE {
            return invalid("drain_grace", &format!("must be above zero and at most {}", humantime::format_duration(MAX_DRAIN_GRACE)));
        }
        if self.fail_after == 0 || self.rise_after == 0 {
            return invalid("fail_after", "fail_after and rise_after must be at least 1");
        }
        Ok(())
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn discovering() -> ClusterConfig {
        ClusterConfig {
            node_id: "rackcast-live-0".into(),
            relay_secret: "a-relay-secret-0123456".into(),
            discovery: Some(DiscoveryConfig { live: Some("rackcast-live.rackcast.svc.cluster.local".into()), ..DiscoveryConfig::default() }),
            ..ClusterConfig::default()
        }
    }

    #[test]
    fn discovery_parses_its_keys_and_checks_them_by_name() {
        let text = "[discovery]\nlive = \"l.example\"\nedge = \"e.example\"\ninterval = \"2s\"\nrtmp_port = 1936\nhttp_port = 8081\nresolver = \"127.0.0.1:5353\"\n";
        let config: ClusterConfig = toml::from_str(text).unwrap();
        let discovery = config.discovery.as_ref().unwrap();
        assert_eq!(discovery.names(), [(Role::Live, "l.example"), (Role::Edge, "e.example")]);
        assert_eq!(discovery.interval, Duration::from_secs(2));
        assert_eq!(discovery.addresses("10.0.0.7".parse().unwrap()), ("10.0.0.7:1936".parse().unwrap(), "10.0.0.7:8081".parse().unwrap()));
        assert_eq!(discovery.resolver, Some("127.0.0.1:5353".parse().unwrap()));
        let defaults: DiscoveryConfig = toml::from_str("").unwrap();
        assert_eq!((defaults.interval, defaults.rtmp_port, defaults.http_port), (DEFAULT_DISCOVERY_INTERVAL, 1935, 8080));
        assert!(toml::from_str::<ClusterConfig>("[discovery]\nlive_name = \"x\"\n").unwrap_err().to_string().contains("live_name"));

        discovering().validate().unwrap();
        let err = |config: ClusterConfig| config.validate().unwrap_err().to_string();
        let mut c = discovering();
        c.discovery.as_mut().unwrap().interval = Duration::from_millis(10);
        assert!(err(c).starts_with("cluster.discovery.interval:"));
        let mut c = discovering();
        c.discovery.as_mut().unwrap().live = None;
        assert!(err(c).starts_with("cluster.discovery.live:"));
        let mut c = discovering();
        c.discovery.as_mut().unwrap().edge = Some("two words".into());
        assert!(err(c).starts_with("cluster.discovery.edge:"));
        let mut c = discovering();
        c.relay_secret.clear();
        assert!(err(c).starts_with("cluster.relay_secret:"));
        let mut c = discovering();
        c.nodes.push(NodeConfig { id: "a".into(), roles: vec![Role::Live], region: DEFAULT_REGION.into(), rtmp: "127.0.0.1:1".parse().unwrap(), http: "127.0.0.1:2".parse().unwrap() });
        assert!(err(c).starts_with("cluster.discovery: set either"));
    }

    #[test]
    fn drain_grace_is_checked_by_name() {
        let mut c = ClusterConfig { drain_grace: Duration::ZERO, ..ClusterConfig::default() };
        assert!(c.validate().unwrap_err().to_string().starts_with("cluster.drain_grace:"));
        c.drain_grace = Duration::from_secs(30);
        c.validate().unwrap();
    }
}
