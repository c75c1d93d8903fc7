//! Hostile RTMP peers against the real binary while a real ffmpeg stream is live: an AMF
//! bomb in `connect`, a 60 KB application name, twenty connections announcing 16 MB
//! messages, a connection that never publishes, and a flood of idle connections. The
//! appliance stays up, memory stays bounded, every refusal is counted, and the live
//! stream loses no segment.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::rtmp::*;
use crate::support::*;

const CONFIG: &str = r#"
[ingest]
publish_timeout = "3s"
idle_timeout = "10s"
"#;

/// The flood comes from another loopback address, as another host's would.
const ATTACKER: &str = "127.0.0.2";

fn video_numbers(app: &Appliance, stream: &str) -> Vec<u64> {
    let Some(mpd) = fetch_mpd(app, stream) else { return Vec::new() };
    let period = mpd.periods.last().unwrap();
    let Some(video) = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video")) else {
        return Vec::new();
    };
    segments(stream, &video.representations[0]).1.iter().map(|s| s.number).collect()
}

/// An RTMP edge counter (`rackcast_ingest_{name}_total`).
fn ingest_counter(app: &Appliance, name: &str) -> u64 {
    app.metrics().count(&format!("rackcast_ingest_{name}_total"))
}

#[test]
fn hostile_peers_are_refused_and_the_live_stream_goes_on() {
    let app = Appliance::start(Some(CONFIG));
    let _main = Publisher::start(&app.publish_url("live", "main"), 40, "640x360");
    wait_until("main stream segments", Duration::from_secs(20), || (video_numbers(&app, "main").len() >= 2).then_some(()));
    let rss_before = app.rss_kib();
    let (attacks_started, first_numbers) = (Instant::now(), video_numbers(&app, "main"));

    // 1. connect whose command object nests 10,000 levels (about 40 KB): refused by the
    //    guard before rml_amf0 recurses; the process lives.
    let mut bomb = connect_from(ATTACKER, &app.rtmp).unwrap();
    handshake(&mut bomb).unwrap();
    bomb.write_all(&connect_command("live", 10_000)).unwrap();
    assert!(closed_within(&mut bomb, Duration::from_secs(2)), "AMF bomb connection closed");
    app.wait_for_log("AMF value nested deeper than 32 levels", Duration::from_secs(2));

    // 2. A 60 KB application name: refused, and the log quotes at most 64 characters of it.
    let mut long = connect_from(ATTACKER, &app.rtmp).unwrap();
    handshake(&mut long).unwrap();
    long.write_all(&connect_command(&"x".repeat(60_000), 1)).unwrap();
    assert!(closed_within(&mut long, Duration::from_secs(2)), "long app name connection closed");
    app.wait_for_log("(60000 bytes) refused", Duration::from_secs(2));
    assert!(!app.logs().contains(&"x".repeat(100)), "a log line echoes the 60 KB name");

    // 3. Twenty connections each announcing an almost-16 MB video message before publishing.
    let mut big = Vec::new();
    for _ in 0..20 {
        let mut s = connect_from(ATTACKER, &app.rtmp).unwrap();
        handshake(&mut s).unwrap();
        s.write_all(&[0x06, 0, 0, 0, 0xff, 0xff, 0xf0, 9, 1, 0, 0, 0]).unwrap();
        let _ = s.write_all(&vec![0x17; 64 * 1024]);
        big.push(s);
    }
    for s in &mut big {
        assert!(closed_within(s, Duration::from_secs(2)), "16 MB announcement closed");
    }
    app.wait_for_log("announced 16777200 bytes; the limit is 65536", Duration::from_secs(2));
    let rss_crash = app.rss_kib();
    eprintln!("RSS {} MiB before the attacks, {} MiB after the bomb, the long name and 20 x 16 MB", rss_before / 1024, rss_crash / 1024);
    assert!(rss_crash.saturating_sub(rss_before) < 30 * 1024, "RSS grew by {} KiB", rss_crash - rss_before);

    // 4. A connection that connects, then only pings: closed at the publish deadline (3 s).
    let mut lurker = connect_from(ATTACKER, &app.rtmp).unwrap();
    let started = Instant::now();
    handshake(&mut lurker).unwrap();
    lurker.write_all(&connect_command("live", 1)).unwrap();
    let closed = loop {
        // Window acknowledgement size: a harmless control message that keeps it from idling.
        if lurker.write_all(&chunks(2, 5, 0, &2_500_000u32.to_be_bytes())).is_err() || closed_within(&mut lurker, Duration::from_millis(500)) {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(8), "the lurker was never closed");
    };
    assert!(closed >= Duration::from_millis(2800) && closed < Duration::from_secs(5), "lurker closed after {closed:?}");
    app.wait_for_log("not publishing 3s after connecting", Duration::from_secs(2));

    // 5. 2,000 connections from one address that complete the handshake and idle: the
    //    per-address cap admits 32 and refuses the rest at accept (counted, not logged each).
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..2000 {
        match connect_from(ATTACKER, &app.rtmp).and_then(|mut s| handshake(&mut s).map(|_| s)) {
            Ok(s) => idle.push(s),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(idle.len(), 32, "admitted idle connections");
    assert_eq!(refused, 1968);
    let rss_flood = app.rss_kib();
    eprintln!("RSS {} MiB with 2,000 idle connections attempted", rss_flood / 1024);
    assert!(rss_flood.saturating_sub(rss_before) < 50 * 1024, "RSS grew by {} KiB", rss_flood - rss_before);
    // A real broadcaster from another address publishes meanwhile.
    let _second = Publisher::start(&app.publish_url("live", "second"), 15, "320x240");
    wait_until("segments of a stream published during the flood", Duration::from_secs(20), || {
        (video_numbers(&app, "second").len() >= 2).then_some(())
    });
    let refused = ingest_counter(&app, "refused_per_address");
    assert!(refused >= 1968, "{refused} connections refused per address");
    let rejected = ingest_counter(&app, "guard_rejections");
    assert!(rejected >= 21, "{rejected} guard rejections");
    let timeouts = ingest_counter(&app, "publish_timeouts");
    assert!(timeouts >= 1, "{timeouts} publish time-outs");
    drop(idle);

    // The live stream went on: numbered without a hole, every listed segment served.
    // About one segment a second throughout the attacks.
    let numbers = video_numbers(&app, "main");
    let produced = numbers.last().unwrap() - first_numbers.last().unwrap();
    let elapsed = attacks_started.elapsed().as_secs();
    assert!(produced + 2 >= elapsed, "{produced} segments in {elapsed} s of attacks: {numbers:?}");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "no segment lost: {numbers:?}");
    let mpd = fetch_mpd(&app, "main").unwrap();
    for rep in mpd.periods.last().unwrap().adaptations.iter().flat_map(|a| &a.representations) {
        for seg in segments("main", rep).1 {
            assert_eq!(get(&app.url(&seg.url)).status(), 200, "{} still served", seg.url);
        }
    }
    assert_eq!(app.terminate(Duration::from_secs(15)).code(), Some(0));
}

#[test]
fn relays_need_a_signed_key_from_a_federation_node() {
    let (rtmp, http) = (free_port(), free_port());
    let cluster = |secret: &str| {
        format!(
            "[cluster]\nnode_id = \"live-1\"\n{secret}\n[[cluster.nodes]]\nid = \"live-1\"\nroles = [\"live\", \"origin\", \"edge\"]\nrtmp = \"127.0.0.1:{rtmp}\"\nhttp = \"127.0.0.1:{http}\"\n"
        )
    };

    // Without a secret a federated node does not start, and says why.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, cluster("")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rackcast")).args(["run", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster.relay_secret: a federated node needs a relay secret"), "{stderr}");

    // `rackcast config` never prints the secret.
    let secret = "relay-secret-for-this-test-42";
    std::fs::write(&path, cluster(&format!("relay_secret = \"{secret}\""))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rackcast")).args(["config", "--config"]).arg(&path).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !shown.contains(secret) && shown.contains("<redacted>"), "{shown}");

    let app = Appliance::start_node(&cluster(&format!("relay_secret = \"{secret}\"")), "live-1");
    let _cam = Publisher::start(&app.publish_url("live", "cam"), 30, "320x240");
    wait_until("cam segments", Duration::from_secs(20), || (video_numbers(&app, "cam").len() >= 2).then_some(()));

    // From a peer address, but without a token, and with a forged one.
    let (status, _) = Publisher::start(&app.publish_url("_relay", "cam"), 3, "320x240").wait(Duration::from_secs(15));
    assert!(!status.success());
    app.wait_for_log("relayed publish refused: relay key carries no token", Duration::from_secs(5));
    let forged = format!("cam?exp=4000000000&sig={}", "ab".repeat(16));
    let (status, _) = Publisher::start(&app.publish_url("_relay", &forged), 3, "320x240").wait(Duration::from_secs(15));
    assert!(!status.success());
    app.wait_for_log("relayed publish refused: relay token signature does not match", Duration::from_secs(5));

    // From an address that is not a node's: refused at connect.
    let mut stranger = connect_from("127.0.0.3", &app.rtmp).unwrap();
    handshake(&mut stranger).unwrap();
    stranger.write_all(&connect_command("_relay", 1)).unwrap();
    assert!(closed_within(&mut stranger, Duration::from_secs(2)));
    app.wait_for_log("relay connection from 127.0.0.3, which is not a federation node", Duration::from_secs(2));
    assert!(!app.logs().contains(secret), "the secret appears in the log");
    assert_eq!(ingest_counter(&app, "relay_refused"), 3);

    // The real stream of that name went on untouched.
    let before = video_numbers(&app, "cam");
    let after = wait_until("cam to advance", Duration::from_secs(10), || {
        let now = video_numbers(&app, "cam");
        (now.last() > before.last()).then_some(now)
    });
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "no segment lost: {after:?}");
}
