//! Where a caching tier fetches a stream from. An origin goes to the stream's live node
//! (where it lives now, else the ring's order of healthy live nodes); an edge goes to its
//! region's healthy origins, ordered by hashing the stream over them, so each origin
//! caches its share of streams and a dead origin's streams move to the next one. A fetch
//! that cannot connect marks its node down at once; a slow or broken answer does not (one
//! object's trouble is not the node's), the health probes stay the authority.

use crate::cluster::config::NodeConfig;
use crate::cluster::config::Role;
use crate::media::StreamId;
use crate::tier::UpstreamResolver;

use super::placement::live_order;
use super::{Membership, Ring};

fn base(node: &NodeConfig) -> String {
    format!("http://{}", node.http)
}

/// Upstreams of an origin: live nodes.
pub struct LiveUpstreams {
    pub membership: Membership,
}

impl UpstreamResolver for LiveUpstreams {
    fn upstreams(&self, stream: &StreamId) -> Vec<String> {
        // Never this node itself: its own streams are served from its store before the tier
        // is asked, and asking itself over HTTP would loop until the fetch budget runs out.
        let view = self.membership.view();
        live_order(&view, stream.as_str()).into_iter().filter(|n| n.id != view.node_id()).map(base).collect()
    }

    fn connect_failed(&self, base_url: &str) {
        mark_down_by_base(&self.membership, base_url);
    }
}

/// Upstreams of an edge: the origins of its region.
pub struct OriginUpstreams {
    pub membership: Membership,
    pub region: String,
    pub vnodes: u32,
}

impl UpstreamResolver for OriginUpstreams {
    fn upstreams(&self, stream: &StreamId) -> Vec<String> {
        let view = self.membership.view();
        let origins: Vec<&NodeConfig> =
            view.origins_for(&self.region).into_iter().filter(|n| n.id != view.node_id() && n.roles.contains(&Role::Origin)).collect();
        let ring = Ring::new(origins.iter().map(|n| n.id.clone()), self.vnodes);
        ring.order(stream.as_str()).into_iter().filter_map(|id| view.node(id)).map(base).collect()
    }

    fn connect_failed(&self, base_url: &str) {
        mark_down_by_base(&self.membership, base_url);
    }
}

fn mark_down_by_base(membership: &Membership, base_url: &str) {
    let id = membership.view().healthy().find(|n| base(n) == base_url).map(|n| n.id.clone());
    if let Some(id) = id
        && membership.mark_down(&id) {
            tracing::warn!(peer = %id, "peer marked down: a fetch could not connect");
        }
}
