//! The federation's configuration (`[cluster]`): this node's id, every node's roles,
//! region and addresses, the ring's virtual nodes, health probing and the relay secret,
//! with their defaults and checks. Read by membership, placement, the peer-request signing
//! and the app's wiring.

use std::net::SocketAddr;
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

pub const DEFAULT_NODE_ID: &str = "local";
pub const DEFAULT_REGION: &str = "default";
pub const DEFAULT_VNODES: u32 = 160;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(400);
pub const DEFAULT_FAIL_AFTER: u32 = 2;
pub const DEFAULT_RISE_AFTER: u32 = 2;
pub const MIN_RELAY_SECRET_LEN: usize = 16;
/// Most virtual nodes per node on the ring.
pub const MAX_VNODES: u32 = 4096;

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
        }
    }
}

impl ClusterConfig {
    /// This node's entry; `None` when the node runs alone.
    pub fn this_node(&self) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == self.node_id)
    }

    /// This node's roles: its entry's, or all of them when alone.
    pub fn roles(&self) -> Vec<Role> {
        self.this_node().map(|n| n.roles.clone()).unwrap_or_else(|| vec![Role::Live, Role::Origin, Role::Edge])
    }

    /// Checks every field; the error names the key (`cluster.{key}`). A federation (any
    /// `nodes`) must name this node, list each node once with a role, have a live node and
    /// a relay secret.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        let invalid = |key: &str, reason: &str| Err(InvalidKey::new(SECTION, key, reason));
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
            if self.relay_secret.chars().count() < MIN_RELAY_SECRET_LEN {
                return invalid(
                    "relay_secret",
                    &format!("a federated node needs a relay secret of at least {MIN_RELAY_SECRET_LEN} characters (relay_secret or relay_secret_file), the same on every node"),
                );
            }
            if !self.nodes.iter().any(|n| n.roles.contains(&Role::Live)) {
                return invalid("nodes", "needs at least one node with the live role");
            }
        }
        if self.vnodes == 0 || self.vnodes > MAX_VNODES {
            return invalid("vnodes", &format!("must be within 1..={MAX_VNODES}"));
        }
        if self.health_timeout.is_zero() || self.health_timeout > self.health_interval * 4 {
            return invalid("health_timeout", "must be above zero and at most four health intervals");
        }
        if self.fail_after == 0 || self.rise_after == 0 {
            return invalid("fail_after", "fail_after and rise_after must be at least 1");
        }
        Ok(())
    }
}

