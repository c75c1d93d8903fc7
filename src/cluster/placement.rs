//! Where a publish goes in the federation. A stream that is already live on a healthy node
//! stays there (no flapping when an old owner comes back); otherwise its owner is the first
//! healthy live node clockwise on the ring. Ingest asks this for every publish; relays ask
//! again when their owner fails.

use crate::cluster::config::Role;
use crate::ingest::relay::{Placement, RelayTarget, Route};
use crate::media::StreamId;

use super::{Membership, MembershipView};
use crate::cluster::config::NodeConfig;

/// Healthy live nodes for a stream, best first: the node it is live on now (if any), then
/// the ring's order. Used by ingest placement and by origins looking for the stream.
pub fn live_order<'a>(view: &'a MembershipView, stream: &str) -> Vec<&'a NodeConfig> {
    let mut ids: Vec<&str> = view.live_location(stream).into_iter().collect();
    for id in view.live_ring().order(stream) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids.into_iter().filter_map(|id| view.node(id)).filter(|n| n.roles.contains(&Role::Live)).collect()
}

pub struct ClusterPlacement {
    membership: Membership,
    relay_secret: String,
}

impl ClusterPlacement {
    pub fn new(membership: Membership, relay_secret: String) -> Self {
        Self { membership, relay_secret }
    }

    /// Live nodes for a stream as relay targets, best first.
    pub fn owners(&self, stream: &StreamId) -> Vec<RelayTarget> {
        let view = self.membership.view();
        live_order(&view, stream.as_str()).into_iter().map(|n| RelayTarget { node: n.id.clone(), rtmp: n.rtmp }).collect()
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::config::ClusterConfig;

    fn config() -> Arc<ClusterConfig> {
        let node = |id: &str, role: Role, port: u16| NodeConfig {
            id: id.into(),
            roles: vec![role],
            region: "eu".into(),
            rtmp: format!("127.0.0.1:{port}").parse().unwrap(),
            http: format!("127.0.0.1:{}", port + 1000).parse().unwrap(),
        };
        Arc::new(ClusterConfig {
            node_id: "edge".into(),
            nodes: vec![node("a", Role::Live, 1), node("b", Role::Live, 2), node("c", Role::Live, 3), node("edge", Role::Edge, 4)],
            ..ClusterConfig::default()
        })
    }

    fn ids<'a>(nodes: &[&'a NodeConfig]) -> Vec<&'a str> {
        nodes.iter().map(|n| n.id.as_str()).collect()
    }

    #[test]
    fn the_ring_orders_healthy_live_nodes_and_a_live_stream_stays_put() {
        let config = config();
        let all = MembershipView::new(Arc::clone(&config), ["a", "b", "c"].map(String::from), []);
        let order = ids(&live_order(&all, "cam"));
        assert_eq!(order.len(), 3, "every live node, never the edge: {order:?}");
        // The owner dies: the rest keep their order.
        let without = MembershipView::new(Arc::clone(&config), order[1..].iter().map(|s| s.to_string()), []);
        assert_eq!(ids(&live_order(&without, "cam")), order[1..]);
        // The stream is live on the third choice (it moved there earlier): it stays there.
        let moved = MembershipView::new(config, ["a", "b", "c"].map(String::from), [(order[2].to_string(), vec!["cam".to_string()])]);
        assert_eq!(ids(&live_order(&moved, "cam"))[0], order[2]);
    }
}
