//! Peers from DNS (`[cluster.discovery]`): resolves each role's name every `interval`
//! through hickory-resolver (the system's resolver config, /etc/resolv.conf, or the
//! configured `resolver` server), and hands membership the nodes found, by HTTP address
//! ([`Membership::set_discovered`]); membership probes them and learns their ids from their
//! health answers (see membership.rs for how every node builds the same ring).
//!
//! Each lookup is bounded by `interval` (and the resolver's own time-out). A name that
//! fails to resolve (time-out, server failure, no such name, no records) keeps its last
//! answer, which is logged and counted (`rackcast_cluster_discovery_failures_total{role}`):
//! DNS trouble never empties the ring; the health probes still take dead peers out. A name
//! that never resolved contributes nothing, and is retried every round, so a node starts
//! whatever the DNS says. The answers are not cached beyond one round.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::config::{DiscoveryConfig, Role};
use super::membership::{Found, Membership};
use crate::warn_limiter::WarnLimiter;

/// Longest wait for one DNS answer (the round as a whole is bounded by `interval`).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

/// `rackcast_cluster_discovery_*`.
#[derive(Debug, Default)]
pub struct DiscoveryMetrics {
    /// Lookups that failed (the name's last answer was kept), by role.
    failures: Family<RoleLabel, Counter>,
    /// Addresses in each role's current answer.
    addresses: Family<RoleLabel, Gauge>,
    warn: WarnLimiter,
}

impl DiscoveryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("cluster");
        registry.register("discovery_failures", "DNS lookups of [cluster.discovery] names that failed (the last answer was kept), by role", self.failures.clone());
        registry.register("discovery_addresses", "Addresses in the current answer of each [cluster.discovery] name, by role", self.addresses.clone());
    }
}

/// Why the resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the DNS resolver for cluster.discovery: {0}")]
pub struct ResolverError(String);

/// The resolver: `config.resolver` alone when set, else the system's configuration.
fn resolver(config: &DiscoveryConfig) -> Result<TokioResolver, ResolverError> {
    let mut builder = match config.resolver {
        Some(server) => {
            let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
            for connection in &mut name_server.connections {
                connection.port = server.port();
            }
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(vec![name_server]), TokioRuntimeProvider::default())
        }
        None => TokioResolver::builder_tokio().map_err(|e| ResolverError(e.to_string()))?,
    };
    let options = builder.options_mut();
    options.timeout = LOOKUP_TIMEOUT.min(config.interval);
    // Every round asks again: a cached answer would hide a node that left.
    options.cache_size = 0;
    options.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(|e| ResolverError(e.to_string()))
}

/// Resolves the names every `config.interval` until `shutdown`, handing each round's
/// nodes to `membership`. The first round runs at once.
pub async fn run(config: DiscoveryConfig, membership: Membership, metrics: std::sync::Arc<DiscoveryMetrics>, shutdown: CancellationToken) {
    let resolver = match resolver(&config) {
        Ok(resolver) => resolver,
        Err(e) => {
            // Without a resolver no peer is ever found; the node still serves alone.
            tracing::error!("{e}; no peer will be discovered");
            membership.set_discovered(BTreeMap::new(), config.rtmp_port);
            return;
        }
    };
    let mut last: BTreeMap<Role, BTreeSet<IpAddr>> = BTreeMap::new();
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        for (role, name) in config.names() {
            let label = RoleLabel { role: role.name() };
            let answer = tokio::time::timeout(config.interval, resolver.lookup_ip(name)).await;
            match answer {
                Ok(Ok(lookup)) => {
                    let ips: BTreeSet<IpAddr> = lookup.iter().map(|ip| ip.to_canonical()).collect();
                    if last.get(&role) != Some(&ips) {
                        tracing::info!(role = role.name(), name, addresses = ?ips, "discovery answer changed");
                    }
                    metrics.addresses.get_or_create(&label).set(i64::try_from(ips.len()).unwrap_or(i64::MAX));
                    last.insert(role, ips);
                }
                failed => {
                    metrics.failures.get_or_create(&label).inc();
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", config.interval),
                    };
                    if let Some(held_back) = metrics.warn.allow() {
                        tracing::warn!(role = role.name(), name, held_back, kept = ?last.get(&role), "discovery lookup failed ({why}); keeping the last answer");
                    }
                }
            }
        }
        membership.set_discovered(found(&config, &last), config.rtmp_port);
    }
}

/// The nodes of the current answers by HTTP address: an address under several names has
/// each of their roles, and the first name (live, origin, edge) as its source.
fn found(config: &DiscoveryConfig, answers: &BTreeMap<Role, BTreeSet<IpAddr>>) -> BTreeMap<SocketAddr, Found> {
    let mut nodes: BTreeMap<SocketAddr, Found> = BTreeMap::new();
    for (role, name) in config.names() {
        for ip in answers.get(&role).into_iter().flatten() {
            let (_, http) = config.addresses(*ip);
            let node = nodes.entry(http).or_insert_with(|| Found { roles: Vec::new(), name: name.to_owned() });
            node.roles.push(role);
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_under_two_names_has_both_roles_and_the_first_name() {
        let config = DiscoveryConfig { live: Some("l".into()), origin: Some("o".into()), http_port: 81, ..DiscoveryConfig::default() };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let answers = BTreeMap::from([(Role::Live, BTreeSet::from([ip("10.0.0.1"), ip("10.0.0.2")])), (Role::Origin, BTreeSet::from([ip("10.0.0.2")]))]);
        let nodes = found(&config, &answers);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[&"10.0.0.1:81".parse().unwrap()], Found { roles: vec![Role::Live], name: "l".into() });
        assert_eq!(nodes[&"10.0.0.2:81".parse().unwrap()], Found { roles: vec![Role::Live, Role::Origin], name: "l".into() });
    }
}
