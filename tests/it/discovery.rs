//! Peers from DNS: three live nodes and an edge on loopback aliases (127.0.0.2 ...) find
//! each other through a DNS server on loopback (support/dns.rs), form one ring that every
//! node agrees on, and follow the answer as it changes: a node dropped from it leaves
//! every ring, one added joins, and only the streams the dropped node owned change owner.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::dns::DnsServer;
use crate::support::*;

const LIVE: &str = "live.rackcast.test";
const EDGE: &str = "edge.rackcast.test";

fn config(dns: &DnsServer, rtmp: u16, http: u16) -> String {
    format!(
        r#"
[cluster]
relay_secret = "discovery-test-relay-secret"
vnodes = 64
health_interval = "200ms"
health_timeout = "150ms"

[cluster.discovery]
live = "{LIVE}"
edge = "{EDGE}"
interval = "1s"
rtmp_port = {rtmp}
http_port = {http}
resolver = "{}"

[transcode]
x264_preset = "ultrafast"
"#,
        dns.addr
    )
}

fn start(config: &str, ip: &str, id: &str, role: &str, rtmp: u16, http: u16) -> Appliance {
    let (rtmp, http) = (format!("{ip}:{rtmp}"), format!("{ip}:{http}"));
    Appliance::start_with_args(config, &["--node", id, "--role", role, "--rtmp", &rtmp, "--http", &http])
}

/// The live nodes on a node's ring, from its /api/v1/cluster.
fn ring(node: &Appliance) -> BTreeSet<String> {
    let info = get_json(&node.url("/api/v1/cluster"));
    info["ring"].as_array().unwrap().iter().map(|p| p["node"].as_str().unwrap().to_owned()).collect()
}

fn all_agree(nodes: &[&Appliance], expected: &[&str], within: Duration) -> Duration {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let started = Instant::now();
    wait_until(&format!("every node's ring = {expected:?}"), within, || nodes.iter().all(|n| ring(n) == expected).then_some(()));
    started.elapsed()
}

/// Owner of each stream name on a ring of these live nodes (the binary's own ring).
fn owners(live: &[&str], streams: &[String]) -> Vec<String> {
    let ring = rackcast::cluster::Ring::new(live.iter().map(|s| s.to_string()), 64);
    streams.iter().map(|s| ring.owner(s).unwrap().to_owned()).collect()
}

#[test]
fn nodes_found_in_dns_form_one_ring_and_follow_the_answer() {
    let dns = DnsServer::start();
    dns.set(LIVE, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    dns.set(EDGE, &["127.0.0.6"]);
    let (rtmp, http) = (free_port(), free_port());
    let config = config(&dns, rtmp, http);
    let l2 = start(&config, "127.0.0.2", "live-2", "live", rtmp, http);
    let l3 = start(&config, "127.0.0.3", "live-3", "live", rtmp, http);
    let l4 = start(&config, "127.0.0.4", "live-4", "live", rtmp, http);
    let edge = start(&config, "127.0.0.6", "edge-6", "edge", rtmp, http);
    let took = all_agree(&[&l2, &l3, &l4, &edge], &["live-2", "live-3", "live-4"], Duration::from_secs(10));
    eprintln!("ring of three formed on every node {took:?} after the last start");
    assert_eq!(get(&l2.url("/ready")).status(), 200);
    let info = get_json(&edge.url("/api/v1/cluster"));
    let l4_member = info["members"].as_array().unwrap().iter().find(|m| m["id"] == "live-4").unwrap().clone();
    assert_eq!(l4_member["source"], format!("dns:{LIVE}"), "{info}");
    assert_eq!(l4_member["http"], format!("127.0.0.4:{http}"));

    let streams: Vec<String> = (0..24).map(|i| format!("cam{i}")).collect();
    let before = owners(&["live-2", "live-3", "live-4"], &streams);

    // .4 leaves the answer: gone from every ring within one interval plus the probes.
    dns.set(LIVE, &["127.0.0.2", "127.0.0.3"]);
    let took = all_agree(&[&l2, &l3, &edge], &["live-2", "live-3"], Duration::from_secs(4));
    eprintln!("live-4 left every ring {took:?} after it left the DNS answer");
    let after = owners(&["live-2", "live-3"], &streams);
    for ((stream, was), now) in streams.iter().zip(&before).zip(&after) {
        assert!(was == "live-4" || was == now, "{stream} moved from {was} to {now} though its owner stayed");
    }
    assert!(before.iter().any(|o| o == "live-4"), "some stream was live-4's");
    drop(l4);

    // .5 joins.
    let l5 = start(&config, "127.0.0.5", "live-5", "live", rtmp, http);
    dns.set(LIVE, &["127.0.0.2", "127.0.0.3", "127.0.0.5"]);
    let took = all_agree(&[&l2, &l3, &l5, &edge], &["live-2", "live-3", "live-5"], Duration::from_secs(6));
    eprintln!("live-5 joined every ring {took:?} after it entered the DNS answer");
    let metrics = edge.metrics();
    assert_eq!(metrics.value("rackcast_cluster_discovery_addresses", &[("role", "live")]), 3.0);
}
