//! Federation: which node is a stream's live server, and who is up to take over. Owns the
//! consistent-hash ring (`ring`, pure), the peer health probes that decide its members
//! (`membership`), the DNS lookups that find them (`discovery`) and the hand-over of a
//! draining node's streams (`handover`). Ingest relays, origins and edges read
//! [`MembershipView`]s; the HTTP server serves this node's [`health_body`] on
//! [`HEALTH_PATH`] for the other nodes' probes.

pub mod config;
pub mod discovery;
pub mod handover;
pub mod membership;
pub mod placement;
pub mod ring;
pub mod upstreams;

pub use membership::{
    health_body, peer_client, spawn, HealthReport, MemberAddresses, Membership, MembershipView, ProbeError, Source, HEALTH_PATH,
};
pub use placement::ClusterPlacement;
pub use ring::Ring;
