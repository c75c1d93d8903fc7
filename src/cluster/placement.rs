//! Where a publish goes in the federation. A stream that is already live on a healthy node
//! stays there (no flapping when an old owner comes back); otherwise its owner is the first
//! healthy live node clockwise on the ring. Ingest asks this for every publish; relays ask
//! again when their owner fails.

use crate::config::Role;
use crate::ingest::relay::{Placement, RelayTarget, Route};
use crate::media::StreamId;

use super::Membership;

pub struct ClusterPlacement {
    membership: Membership,
    relay_secret: String,
}

impl ClusterPlacement {
    pub fn new(membership: Membership, relay_secret: String) -> Self {
        Self { membership, relay_secret }
    }

    /// Live nodes for a stream, best first: where it lives now, then the ring's order.
    pub fn owners(&self, stream: &StreamId) -> Vec<RelayTarget> {
        let view = self.membership.view();
        let mut ids: Vec<&str> = view.live_location(stream.as_str()).into_iter().collect();
        for id in view.live_ring().order(stream.as_str()) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids.into_iter()
            .filter_map(|id| view.node(id))
            .filter(|n| n.roles.contains(&Role::Live))
            .map(|n| RelayTarget { node: n.id.clone(), rtmp: n.rtmp })
            .collect()
    }
}

impl Placement for ClusterPlacement {
    fn route(&self, stream: &StreamId) -> Route {
        let owners = self.owners(stream);
        match owners.first() {
            None => Route::Unavailable("every live node is down".into()),
            Some(first) if first.node == self.membership.view().node_id() => Route::Local,
            Some(_) => Route::Relay(owners),
        }
    }

    fn self_target(&self) -> Option<RelayTarget> {
        let view = self.membership.view();
        let node = view.node(view.node_id())?;
        node.roles.contains(&Role::Live).then(|| RelayTarget { node: node.id.clone(), rtmp: node.rtmp })
    }

    fn peer_failed(&self, node: &str) {
        if self.membership.mark_down(node) {
            tracing::warn!(peer = node, "peer marked down after a relay failure");
        }
    }

    fn relay_secret(&self) -> &str {
        &self.relay_secret
    }
}
