//! Several real rackcast processes on 127.0.0.1 with one shared cluster config: two live
//! nodes, two origins and an edge. A broadcaster publishes to the node that does not own
//! its stream; viewers play from the edge; 1,000 concurrent viewers of a fresh segment
//! cost one request per tier; the owner is killed mid-stream and the stream resumes on the
//! next node; an origin is killed and the edge moves to the other one. Stream keys made or
//! revoked on one node reach the others.

use std::time::{Duration, Instant};

use rackcast::cluster::Ring;
use crate::support::*;

fn cluster_config(nodes: &[ClusterNode]) -> String {
    let mut text = String::from(
        "[cluster]\nhealth_interval = \"200ms\"\nhealth_timeout = \"150ms\"\nfail_after = 2\nrise_after = 2\nrelay_secret = \"federation-test-secret-0123\"\n",
    );
    for n in nodes {
        text += &n.toml();
    }
    text
}

/// Starts every node of `config` and waits until each answers its health route.
fn start_cluster(config: &str, nodes: &[ClusterNode]) -> Vec<Appliance> {
    let running: Vec<Appliance> = nodes.iter().map(|n| Appliance::start_node(config, n.id)).collect();
    for n in nodes {
        wait_serving(&format!("127.0.0.1:{}", n.http), Duration::from_secs(10));
    }
    running
}

/// The first video Representation of the last Period, once video is listed.
fn video_rep(mpd: &dash_mpd_core::MPD) -> Option<dash_mpd_core::Representation> {
    let period = mpd.periods.last()?;
    let video = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video"))?;
    video.representations.first().cloned()
}

/// An unlabelled counter of the node at `base`.
fn metric(base: &str, name: &str) -> u64 {
    Metrics::scrape(base).count(name)
}

#[test]
fn federation_relays_caches_coalesces_and_fails_over() {
    let node = ClusterNode::new;
    let nodes = [
        node("live-a", r#"["live"]"#),
        node("live-b", r#"["live"]"#),
        node("origin-1", r#"["origin"]"#),
        node("origin-2", r#"["origin"]"#),
        node("edge-1", r#"["edge"]"#),
    ];
    let config = cluster_config(&nodes);
    let mut running: Vec<Option<Appliance>> = start_cluster(&config, &nodes).into_iter().map(Some).collect();
    let http = |i: usize| format!("http://127.0.0.1:{}", nodes[i].http);

    // A stream owned by live-b, published to live-a: live-a relays it.
    let ring = Ring::new(["live-a".to_owned(), "live-b".to_owned()], 160);
    let stream = (0..).map(|i| format!("cam{i}")).find(|s| ring.owner(s) == Some("live-b")).unwrap();
    let publisher = Publisher::start(&format!("rtmp://127.0.0.1:{}/live/{stream}", nodes[0].rtmp), 60, "640x360");
    // A second broadcaster publishes straight to the owner; it will have to reconnect.
    let direct = (0..).map(|i| format!("news{i}")).find(|s| ring.owner(s) == Some("live-b")).unwrap();
    let direct_publisher = Publisher::start(&format!("rtmp://127.0.0.1:{}/live/{direct}", nodes[1].rtmp), 60, "320x240");
    let edge_mpd = format!("{}/live/{stream}/manifest.mpd", http(4));
    let live_b_mpd = format!("{}/live/{stream}/manifest.mpd", http(1));
    wait_until("the owner's MPD", Duration::from_secs(20), || (get(&live_b_mpd).status() == 200).then_some(()));
    assert_eq!(get(&format!("{}/live/{stream}/manifest.mpd", http(0))).status(), 404, "the relaying node does not transcode");
    let mpd = wait_until("video at the edge", Duration::from_secs(20), || {
        let response = get(&edge_mpd);
        let mpd = (response.status() == 200).then(|| dash_mpd_core::parse(&response.text().unwrap()).unwrap())?;
        video_rep(&mpd).filter(|r| segments(&stream, r).1.len() >= 2)?;
        Some(mpd)
    });
    let rep = video_rep(&mpd).unwrap();
    let (init_url, list) = segments(&stream, &rep);
    let init = get_bytes(&format!("{}{init_url}", http(4)));
    let (codec, width, height, _) = probe(&init, &get_bytes(&format!("{}{}", http(4), list.last().unwrap().url)));
    assert_eq!((codec.as_str(), width, height), ("h264", 640, 360), "decodable through edge and origin");

    // 1,000 concurrent viewers of a fresh segment: one request per tier.
    let last = list.last().unwrap().number;
    let fresh = wait_until("a segment nobody has requested", Duration::from_secs(10), || {
        let owner = dash_mpd_core::parse(&get(&live_b_mpd).text().unwrap()).unwrap();
        let rep = video_rep(&owner)?;
        segments(&stream, &rep).1.into_iter().find(|s| s.number > last + 1)
    });
    let origin = (2..4)
        .find(|&i| metric(&http(i), "rackcast_tier_requests_total") > 0)
        .expect("one origin served the edge");
    let live_before = metric(&http(1), "rackcast_live_object_requests_total");
    let origin_before = metric(&http(origin), "rackcast_tier_upstream_requests_total");
    let edge_before = metric(&http(4), "rackcast_tier_upstream_requests_total");
    let url = format!("{}{}", http(4), fresh.url);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let statuses: Vec<(u16, String, usize)> = runtime.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(1024).timeout(Duration::from_secs(10)).build().unwrap();
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let response = client.get(&url).send().await.unwrap();
                    let status = response.status().as_u16();
                    let cache = response.headers().get("x-cache-status").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                    (status, cache, response.bytes().await.unwrap().len())
                })
            })
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    });
    assert!(statuses.iter().all(|s| s.0 == 200 && s.2 == statuses[0].2), "every viewer got the segment");
    let misses = statuses.iter().filter(|s| s.1 == "miss").count();
    assert_eq!(misses, 1, "exactly one viewer request went upstream");
    assert_eq!(metric(&http(4), "rackcast_tier_upstream_requests_total") - edge_before, 1, "edge -> origin");
    assert_eq!(metric(&http(origin), "rackcast_tier_upstream_requests_total") - origin_before, 1, "origin -> live");
    assert_eq!(metric(&http(1), "rackcast_live_object_requests_total") - live_before, 1, "live served it once");
    // The edge's /metrics says the same as its JSON counters, and counts its one viewer (the
    // same address and no User-Agent for every request here).
    let edge_requests = metric(&http(4), "rackcast_tier_requests_total");
    let edge = Metrics::scrape(&http(4));
    assert!(edge.count("rackcast_tier_coalesced_total") + edge.count("rackcast_tier_hits_total") >= 999);
    assert!(edge.count("rackcast_tier_upstream_fetch_seconds_count") >= 1);
    assert_eq!(edge.value("rackcast_stream_viewers", &[("stream", &stream)]), 1.0);
    for name in dashboard_series().into_iter().filter(|n| n.starts_with("rackcast_tier_")) {
        assert!(edge.has_series(&name), "the dashboard plots {name}, which the edge's /metrics lacks");
    }
    // The admin API of any node shows the whole federation: a live node sees the edge's
    // and the origins' tier counters (from their health answers) and where the stream is.
    let tiers = get_json(&format!("{}/api/v1/tiers", http(4)));
    assert_eq!((tiers["role"].as_str(), tiers["counters"]["requests"].as_u64()), (Some("edge"), Some(edge_requests)));
    let seen_from_live_a = wait_until("the edge's tier counters at live-a", Duration::from_secs(5), || {
        let cluster = get_json(&format!("{}/api/v1/cluster", http(0)));
        let edge = cluster["members"].as_array()?.iter().find(|m| m["id"] == "edge-1")?.clone();
        (edge["tier"]["requests"].as_u64()? >= edge_requests).then_some(cluster)
    });
    let edge = seen_from_live_a["members"].as_array().unwrap().iter().find(|m| m["id"] == "edge-1").unwrap();
    assert!(edge["tier_hit_ratio"].as_f64().unwrap() > 0.9, "{edge}");
    assert!(seen_from_live_a["members"].as_array().unwrap().iter().all(|m| m["up"] == true));
    let placed = seen_from_live_a["placements"].as_array().unwrap().iter().find(|p| p["stream"] == stream.as_str()).unwrap();
    assert_eq!((placed["owner"].as_str(), placed["live_on"].as_str()), (Some("live-b"), Some("live-b")));
    assert_eq!(seen_from_live_a["ring"].as_array().unwrap().len(), 2 * 160, "160 points per live node");

    // The owner dies mid-stream: live-a's relay moves the stream to the next node (itself).
    let old_period = mpd.periods.last().unwrap().id.clone().unwrap();
    let killed = Instant::now();
    signal(running[1].as_ref().unwrap().pid(), "KILL");
    drop(running[1].take());
    let (new_period, new_segment) = wait_until("new segments at the edge after failover", Duration::from_secs(20), || {
        let response = get(&edge_mpd);
        if response.status() != 200 {
            return None;
        }
        let mpd = dash_mpd_core::parse(&response.text().unwrap()).ok()?;
        let period = mpd.periods.last()?;
        let id = period.id.clone()?;
        if id == old_period {
            return None;
        }
        let rep = video_rep(&mpd)?;
        let (init, list) = segments(&stream, &rep);
        Some((id, (init, list.last()?.clone())))
    });
    let gap = killed.elapsed();
    println!("failover: new segments visible at the edge {:.2} s after SIGKILL of the owner", gap.as_secs_f64());
    assert!(gap < Duration::from_secs(12), "failover gap {gap:?}");
    assert_ne!(new_period, old_period, "a new session: no URL reused");
    let (codec, ..) = probe(&get_bytes(&format!("{}{}", http(4), new_segment.0)), &get_bytes(&format!("{}{}", http(4), new_segment.1.url)));
    assert_eq!(codec, "h264");
    assert!(running[0].as_ref().unwrap().logs().contains("relay connection lost"));

    // The broadcaster that was connected to the dead owner reconnects through another node
    // (an edge's RTMP port) and lands on the same new owner.
    drop(direct_publisher);
    let _reconnected = Publisher::start(&format!("rtmp://127.0.0.1:{}/live/{direct}", nodes[4].rtmp), 60, "320x240");
    wait_until("the reconnected stream on the new owner", Duration::from_secs(20), || {
        (get(&format!("{}/live/{direct}/manifest.mpd", http(0))).status() == 200).then_some(())
    });

    // The old owner comes back: streams that moved stay where they are (no flapping), also
    // for a while after every other node sees it up again.
    running[1] = Some(Appliance::start_node(&config, "live-b"));
    wait_serving(&format!("127.0.0.1:{}", nodes[1].http), Duration::from_secs(10));
    wait_until("live-b up again at every other node", Duration::from_secs(10), || {
        (0..nodes.len()).filter(|&i| i != 1).all(|i| {
            get_json(&format!("{}/api/v1/cluster", http(i)))["members"].as_array().is_some_and(|members| {
                members.iter().any(|m| m["id"] == "live-b" && m["up"] == true)
            })
        })
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(get(&live_b_mpd).status(), 404, "the stream did not move back to live-b");
    let still = dash_mpd_core::parse(&get(&edge_mpd).text().unwrap()).unwrap();
    assert_eq!(still.periods.last().unwrap().id.as_deref(), Some(new_period.as_str()), "same session at the edge");

    // The origin the edge uses dies: the edge moves to the other origin.
    signal(running[origin].as_ref().unwrap().pid(), "KILL");
    drop(running[origin].take());
    let other = if origin == 2 { 3 } else { 2 };
    let before = metric(&http(other), "rackcast_tier_upstream_requests_total");
    let moved = Instant::now();
    wait_until("the edge serving through the other origin", Duration::from_secs(10), || {
        let ok = get(&edge_mpd).status() == 200;
        (ok && metric(&http(other), "rackcast_tier_upstream_requests_total") > before).then_some(())
    });
    println!("origin failover: edge served through the other origin {:.2} s after SIGKILL", moved.elapsed().as_secs_f64());
    drop(publisher);
}

/// One stream's failures on its owner (a refused relay, a pipeline that cannot start, a
/// viewer asking for a segment before it exists) stay with that stream: a second stream on
/// the same owner, watched through an edge, sees no error and no gap, and no node ever
/// marks the owner down.
#[test]
fn one_streams_failures_stay_in_its_scope() {
    let node = ClusterNode::new;
    let nodes = [
        node("live-a", r#"["live"]"#),
        node("live-b", r#"["live"]"#),
        node("origin-1", r#"["origin"]"#),
        node("edge-1", r#"["edge"]"#),
    ];
    let running = start_cluster(&cluster_config(&nodes), &nodes);
    let http = |i: usize| format!("http://127.0.0.1:{}", nodes[i].http);
    let rtmp = |i: usize| format!("127.0.0.1:{}", nodes[i].rtmp);
    // A node's first probes can race a peer that has bound its port but is still starting;
    // what is under test is what the failures below do, so from the moment every node
    // sees every peer up, only the logs written after it count.
    for i in 0..nodes.len() {
        wait_until(&format!("{} sees every peer up", nodes[i].id), Duration::from_secs(20), || {
            let members = get_json(&format!("{}/api/v1/cluster", http(i)))["members"].clone();
            members.as_array().filter(|m| m.len() + 1 >= nodes.len() && m.iter().all(|p| p["up"] == true)).map(drop)
        });
    }
    let settled: Vec<usize> = running.iter().map(|node| node.logs().len()).collect();
    let ring = Ring::new(["live-a".to_owned(), "live-b".to_owned()], 160);
    let mut owned_by_b = (0..).map(|i| format!("s{i}")).filter(|s| ring.owner(s) == Some("live-b"));
    let (watched, other, broken) = (owned_by_b.next().unwrap(), owned_by_b.next().unwrap(), owned_by_b.next().unwrap());
    let _watched_publisher = Publisher::start(&format!("rtmp://{}/live/{watched}", rtmp(1)), 40, "320x240");
    let _other_publisher = Publisher::start(&format!("rtmp://{}/live/{other}", rtmp(1)), 40, "320x240");

    // A viewer through the edge: every MPD and every newly listed video segment must be 200.
    let edge_mpd = format!("{}/live/{watched}/manifest.mpd", http(3));
    wait_until("the watched stream at the edge", Duration::from_secs(20), || {
        let response = get(&edge_mpd);
        let mpd = (response.status() == 200).then(|| dash_mpd_core::parse(&response.text().unwrap()).unwrap())?;
        video_rep(&mpd).filter(|r| segments(&watched, r).1.len() >= 2)
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let viewer = {
        let (stop, edge_mpd, base, watched) = (stop.clone(), edge_mpd.clone(), http(3), watched.clone());
        std::thread::spawn(move || {
            let (mut errors, mut seen, mut longest, mut last_new) = (Vec::new(), 0u64, Duration::ZERO, Instant::now());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = get(&edge_mpd);
                if response.status() != 200 {
                    errors.push(format!("MPD {}", response.status()));
                } else if let Some(rep) = video_rep(&dash_mpd_core::parse(&response.text().unwrap()).unwrap()) {
                    let fresh: Vec<_> = segments(&watched, &rep).1.into_iter().filter(|s| s.number > seen).collect();
                    for seg in fresh {
                        let status = get(&format!("{base}{}", seg.url)).status();
                        if status != 200 {
                            errors.push(format!("{} {status}", seg.url));
                        }
                        seen = seg.number;
                        longest = longest.max(last_new.elapsed());
                        last_new = Instant::now();
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (errors, longest)
        })
    };

    // 1. A relay the owner refuses: `other` is already published on live-b, so the copy
    //    that live-a relays is refused; live-a gives that broadcaster up, nothing else.
    let (status, _) = Publisher::start(&format!("rtmp://{}/live/{other}", rtmp(0)), 10, "320x240").wait(Duration::from_secs(20));
    assert!(!status.success(), "the duplicate publish through live-a fails:\n{}", running[0].logs());
    running[0].wait_for_log("relay gave up", Duration::from_secs(10));

    // 2. A stream whose pipeline cannot start on the owner (its AVC configuration is garbage).
    let mut scripted = crate::support::flv::ScriptedPublisher::connect(&rtmp(1), "live", &broken);
    let garbage = crate::support::flv::Tag { kind: 9, ts: 0, data: bytes::Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]) };
    let keyframe = crate::support::flv::Tag { kind: 9, ts: 0, data: bytes::Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]) };
    let _ = scripted.send(&garbage, 0).and_then(|_| scripted.send(&keyframe, 0));
    running[1].wait_for_log("stream torn down: AVC decoder configuration is invalid", Duration::from_secs(10));

    // 3. A viewer asks the edge for a segment long before it exists (the next one would be
    //    waited for): the live node's 404 is no-store, so the edge does not keep it and
    //    serves the segment once it is there.
    let rep = video_rep(&dash_mpd_core::parse(&get(&edge_mpd).text().unwrap()).unwrap()).unwrap();
    let newest = segments(&watched, &rep).1.last().unwrap().clone();
    let future = newest.url.replace(&format!("-{}.m4s", newest.number), &format!("-{}.m4s", newest.number + 4));
    assert_eq!(get(&format!("{}{future}", http(3))).status(), 404, "not produced yet");
    wait_until("the early segment served once it exists", Duration::from_secs(8), || {
        (get(&format!("{}{future}", http(3))).status() == 200).then_some(())
    });

    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (errors, longest) = viewer.join().unwrap();
    assert!(errors.is_empty(), "the watched stream's viewer saw errors: {errors:?}");
    assert!(longest < Duration::from_millis(2500), "the watched stream had a gap of {longest:?}");
    for (i, app) in running.iter().enumerate() {
        let logs = app.logs()[settled[i]..].to_owned();
        assert!(!logs.lines().any(|l| l.contains("peer down") || l.contains("marked down")), "{} marked a peer down:\n{logs}", nodes[i].id);
    }
}

#[test]
fn stream_keys_made_or_revoked_on_one_node_apply_on_every_node() {
    let node = ClusterNode::new;
    let nodes = [node("live-a", r#"["live"]"#), node("live-b", r#"["live"]"#)];
    let running = start_cluster(&cluster_config(&nodes), &nodes);
    let http = |i: usize| format!("http://127.0.0.1:{}", nodes[i].http);
    let client = client();
    let listed = |i: usize| get_json(&format!("{}/api/v1/keys", http(i)));

    // Made through live-a's API (loopback, no admin user yet): live-b learns it. A second
    // key stays in force throughout, so publishing never falls back to open.
    let make = |stream: &str| -> serde_json::Value {
        client.post(format!("{}/api/v1/keys", http(0))).json(&serde_json::json!({ "stream": stream })).send().unwrap().json().unwrap()
    };
    make("keeper");
    let made = make("studio");
    let (id, key) = (made["id"].as_str().unwrap().to_owned(), made["key"].as_str().unwrap().to_owned());
    let started = Instant::now();
    wait_until("the key at live-b", Duration::from_secs(10), || {
        listed(1).as_array()?.iter().any(|k| k["id"] == id.as_str() && k["revoked_at"].is_null()).then_some(())
    });
    eprintln!("key replicated in {:?}", started.elapsed());

    // It publishes through live-b (which takes the publish, then serves or relays it).
    let ring = Ring::new(["live-a".to_owned(), "live-b".to_owned()], 160);
    let owner = if ring.owner("studio") == Some("live-a") { 0 } else { 1 };
    let publisher = Publisher::start(&format!("rtmp://127.0.0.1:{}/live/{key}", nodes[1].rtmp), 30, "320x180");
    wait_until("studio live on its owner", Duration::from_secs(30), || {
        (get(&format!("{}/live/studio/manifest.mpd", http(owner))).status() == 200).then_some(())
    });
    drop(publisher);

    // Revoked through live-b: live-a refuses it too.
    assert_eq!(client.delete(format!("{}/api/v1/keys/{id}", http(1))).send().unwrap().status(), 204);
    wait_until("the revocation at live-a", Duration::from_secs(10), || {
        listed(0).as_array()?.iter().any(|k| k["id"] == id.as_str() && !k["revoked_at"].is_null()).then_some(())
    });
    let (status, _) = Publisher::start(&format!("rtmp://127.0.0.1:{}/live/{key}", nodes[0].rtmp), 5, "320x180").wait(Duration::from_secs(20));
    assert!(!status.success(), "a key revoked on live-b is refused at live-a");

    // The records route answers peers' signed requests only (tests/it/cluster_auth.rs has
    // the rest), and carries digests, never the key.
    assert_eq!(get(&format!("{}/cluster/keys", http(0))).status(), 401, "unsigned, from a peer's address");
    for app in &running {
        assert!(!app.logs().contains(&key), "the key is in a log");
    }
}
