//! Where a publish goes in the federation. A stream that is already live on a healthy node
//! stays there (no flapping when an old owner comes back); otherwise its owner is the first
//! healthy live node clockwise on the ring. A draining node takes no publish: its streams
//! go to the next node, which first takes their timelines over (handover.rs). Ingest asks
//! this for every publish; relays ask again when their owner fails.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::cluster::config::Role;
use crate::ingest::relay::{Placement, RelayTarget, Route};
use crate::media::StreamId;
use crate::package::Packager;

use super::handover::Handover;
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
    handover: Arc<Handover>,
    /// This node's streams: peers' views do not list them.
    packager: Arc<Packager>,
}

impl ClusterPlacement {
    pub fn new(membership: Membership, relay_secret: String, handover: Arc<Handover>, packager: Arc<Packager>) -> Self {
        Self { membership, relay_secret, handover, packager }
    }

    /// Live nodes that take publishes for a stream, as relay targets, best first.
    pub fn owners(&self, stream: &StreamId) -> Vec<RelayTarget> {
        let view = self.membership.view();
        publish_order(&view, stream.as_str()).into_iter().map(|n| RelayTarget { node: n.id.clone(), rtmp: n.rtmp }).collect()
    }
}

/// [`live_order`] without draining nodes: where a publish may go.
fn publish_order<'a>(view: &'a MembershipView, stream: &str) -> Vec<&'a NodeConfig> {
    live_order(view, stream).into_iter().filter(|n| !view.is_draining(&n.id)).collect()
}

impl Placement for ClusterPlacement {
    fn route(&self, stream: &StreamId) -> Route {
        // Live here, or suspended waiting for its broadcaster to reconnect: it stays here.
        if self.packager.is_live(stream) && !self.membership.draining() {
            return Route::Local;
        }
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

    fn adopt<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, ()> {
        Box::pin(self.handover.adopt(stream))
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
        let moved = MembershipView::new(Arc::clone(&config), ["a", "b", "c"].map(String::from), [(order[2].to_string(), vec!["cam".to_string()])]);
        assert_eq!(ids(&live_order(&moved, "cam"))[0], order[2]);
    }

    #[test]
    fn a_draining_node_takes_no_publish_and_its_streams_are_read_from_it_until_they_move() {
        let config = config();
        let all = MembershipView::new(Arc::clone(&config), ["a", "b", "c"].map(String::from), []);
        let order = ids(&live_order(&all, "cam")).into_iter().map(String::from).collect::<Vec<_>>();
        // The owner drains while the stream is live on it.
        let holding = MembershipView::new(Arc::clone(&config), ["a", "b", "c"].map(String::from), [(order[0].clone(), vec!["cam".to_string()])])
            .with_draining(&config, [order[0].clone()]);
        assert_eq!(ids(&publish_order(&holding, "cam")), order[1..], "publishes go to the next node");
        assert_eq!(ids(&live_order(&holding, "cam"))[0], order[0], "origins read from the draining node");
        assert_eq!(holding.handover_source("cam").map(|n| n.id.as_str()), Some(order[0].as_str()));
        assert_eq!(holding.handover_source("other"), None);
        assert!(!holding.live_ring().nodes().any(|n| n == order[0]), "out of the ring");
        // The next node took it over: origins read from it.
        let reports = [(order[0].clone(), vec!["cam".to_string()]), (order[1].clone(), vec!["cam".to_string()])];
        let moved = MembershipView::new(Arc::clone(&config), ["a", "b", "c"].map(String::from), reports).with_draining(&config, [order[0].clone()]);
        assert_eq!(ids(&live_order(&moved, "cam"))[0], order[1]);
        assert_eq!(ids(&publish_order(&moved, "cam"))[0], order[1]);
    }
}
