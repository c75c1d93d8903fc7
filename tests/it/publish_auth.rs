//! Publish authentication against the real binary, with ffmpeg publishers and
//! `rackcast keys` run while the appliance runs: a key publishes its stream under the public
//! name; a wrong key and a revoked one are refused with the reason logged beside the
//! address; revoking the key of a live stream leaves that stream playing; the secrets
//! appear in no log line, MPD, API answer or metric; attempts from one address are limited;
//! the publish webhook admits, refuses with its reason (remembered for a while) and, when
//! it does not answer, refuses.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const CONFIG: &str = "[transcode]\nx264_preset = \"ultrafast\"\n";

/// `rackcast keys ARGS` on the appliance's data directory; its standard output.
fn keys(app: &Appliance, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_rackcast")).arg("keys").args(args).arg("--data-dir").arg(app.data_dir()).output().unwrap();
    assert!(output.status.success(), "rackcast keys {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// (id, secret) of a new key for `stream`.
fn add_key(app: &Appliance, stream: &str) -> (String, String) {
    let out = keys(app, &["add", stream]);
    let field = |name: &str| out.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("no {name} in {out}")).trim().to_owned();
    (field("id"), field("key"))
}

fn newest_video_number(app: &Appliance, stream: &str) -> Option<u64> {
    let mpd = fetch_mpd(app, stream)?;
    let video = mpd.periods.last()?.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video"))?.clone();
    Some(segments(stream, &video.representations[0]).1.last()?.number)
}

fn refused(app: &Appliance, key: &str) -> String {
    let (status, stderr) = Publisher::start(&app.publish_url("live", key), 5, "320x180").wait(Duration::from_secs(20));
    assert!(!status.success(), "a publish with key {key:?} was accepted");
    stderr
}

#[test]
fn stream_keys_publish_their_streams_and_nothing_else_gets_in() {
    let _one = one_ladder_at_a_time();
    let app = Appliance::start(Some(CONFIG));
    app.wait_for_log("publishing is open", Duration::from_secs(5));
    let (_, studio) = add_key(&app, "studio");
    let (other_id, other) = add_key(&app, "other");
    assert!(keys(&app, &["list"]).lines().filter(|l| l.contains("studio") || l.contains("other")).count() == 2);

    // Each key publishes its own stream, under the public name.
    let _studio = Publisher::start(&app.publish_url("live", &format!("{studio}?via=obs")), 60, "320x180");
    let _other = Publisher::start(&app.publish_url("live", &other), 60, "320x180");
    for stream in ["studio", "other"] {
        wait_until(&format!("{stream} live"), Duration::from_secs(30), || newest_video_number(&app, stream));
    }

    // A wrong key, and an open-style name, are refused; the log names the address.
    refused(&app, "rk_0000000000000000000000000000000000000000");
    refused(&app, "studio");
    app.wait_for_log("publish refused: stream key not recognised", Duration::from_secs(5));
    assert!(app.logs().lines().any(|l| l.contains("stream key not recognised") && l.contains("peer=127.0.0.1:")), "the refusal names the address");

    // The live stream's key is revoked: it goes on; its key no longer publishes.
    keys(&app, &["revoke", &other_id]);
    let before = newest_video_number(&app, "other").unwrap();
    wait_until("the revoked key's live stream going on", Duration::from_secs(10), || {
        newest_video_number(&app, "other").filter(|n| *n >= before + 2)
    });
    refused(&app, &other);
    assert!(newest_video_number(&app, "studio").is_some(), "the other stream plays on");

    // No secret anywhere a viewer, an admin or a log reader looks.
    let mut seen = app.logs();
    for path in [
        "/live",
        "/live/studio",
        "/live/other",
        "/live/studio/manifest.mpd",
        "/live/other/manifest-number.mpd",
        "/metrics",
        // The admin API (loopback, no admin user yet).
        "/api/v1/keys",
        "/api/v1/streams",
        "/api/v1/streams/studio",
        "/api/v1/audit",
        "/api/v1/config",
        "/api/v1/node",
    ] {
        let response = get(&app.url(path));
        assert_eq!(response.status(), 200, "{path}");
        seen.push_str(&response.text().unwrap());
    }
    // Segment URLs are in the MPDs read above; the API lists both keys, by id only.
    assert!(seen.contains(&other_id));
    for secret in [&studio, &other] {
        assert!(!seen.contains(secret.as_str()), "a stream key leaked");
        assert!(!seen.contains(&secret[3..20]), "part of a stream key leaked");
    }
}

#[test]
fn publish_attempts_from_one_address_are_limited() {
    let config = "[ingest.keys]\n\"right-key\" = \"cam\"\n[auth]\npublish_attempts_per_minute = 6\npublish_attempt_burst = 3\n";
    let app = Appliance::start(Some(config));
    for _ in 0..3 {
        refused(&app, "wrong-key");
    }
    // The burst is spent: even the right key waits, and the log says why.
    refused(&app, "right-key");
    app.wait_for_log("too many publish attempts from this address", Duration::from_secs(5));
    let metrics = get(&app.url("/metrics")).text().unwrap();
    let limited = metrics.lines().find_map(|l| l.strip_prefix("rackcast_ingest_publish_rate_limited_total ")).map(|v| v.parse::<f64>().unwrap());
    assert_eq!(limited, Some(1.0), "the refusal is counted");
}

#[test]
fn signed_publish_keys_publish_their_stream_until_they_expire() {
    let _one = one_ladder_at_a_time();
    let config = format!("{CONFIG}[auth]\npublish_token_secret = \"a-publish-token-secret-for-tests\"\n");
    let app = Appliance::start(Some(&config));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rackcast.toml");
    std::fs::write(&path, &config).unwrap();
    let token = |stream: &str, valid: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_rackcast")).args(["token", stream, "--valid", valid, "--config"]).arg(&path).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let short = token("robot", "1s");
    let key = token("robot", "10m");
    assert!(key.starts_with("robot?exp=") && key.len() < 100, "{key}");

    let _publisher = Publisher::start(&app.publish_url("live", &key), 30, "320x180");
    wait_until("the token's stream live", Duration::from_secs(30), || newest_video_number(&app, "robot"));
    // The name without a token, a token for another name, an expired token: refused.
    refused(&app, "robot2");
    refused(&app, &key.replacen("robot", "robot2", 1));
    std::thread::sleep(Duration::from_millis(2100));
    refused(&app, &short);
    app.wait_for_log("publish token refused: token expired", Duration::from_secs(5));
    app.wait_for_log("publish token refused: token signature does not match", Duration::from_secs(5));
    assert!(!app.logs().contains("sig="), "the signature stays out of the log");
}

/// A one-thread HTTP service on 127.0.0.1 standing in for an admin's publish webhook: it
/// refuses the stream "blocked" with a reason and admits the rest; records every body.
fn webhook_service() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/on_publish?token=hook-credential", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&bodies);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let body = String::from_utf8_lossy(&body).into_owned();
            let answer = if body.contains("\"stream\":\"blocked\"") {
                let reason = r#"{"reason":"blocked is not on air today"}"#;
                format!("HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reason}", reason.len())
            } else {
                "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_owned()
            };
            seen.lock().unwrap().push(body);
            let _ = (&stream).write_all(answer.as_bytes());
        }
    });
    (url, bodies)
}

#[test]
fn the_publish_webhook_admits_refuses_with_its_reason_and_fails_closed() {
    let _one = one_ladder_at_a_time();
    let (url, bodies) = webhook_service();
    let config = format!("{CONFIG}[auth]\npublish_webhook = \"{url}\"\npublish_webhook_timeout = \"1s\"\npublish_webhook_cache = \"30s\"\n");
    let app = Appliance::start(Some(&config));
    let (_, key) = add_key(&app, "onair");
    let (_, blocked_key) = add_key(&app, "blocked");

    let _onair = Publisher::start(&app.publish_url("live", &key), 30, "320x180");
    wait_until("the admitted stream live", Duration::from_secs(30), || newest_video_number(&app, "onair"));
    refused(&app, &blocked_key);
    app.wait_for_log("the publish webhook refused: blocked is not on air today", Duration::from_secs(5));
    assert!(app.logs().lines().any(|l| l.contains("not on air today") && l.contains("peer=127.0.0.1:")), "the refusal names the address");
    // The answer is remembered: a second attempt does not ask again.
    refused(&app, &blocked_key);
    let bodies = bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2, "one request per (stream, address): {bodies:?}");
    let first: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!((first["action"].as_str(), first["stream"].as_str(), first["address"].as_str()), (Some("publish"), Some("onair"), Some("127.0.0.1")));
    assert!(bodies.iter().all(|b| !b.contains("rk_")), "the key is never sent");
    // The webhook's credential stays out of the config the API shows.
    let shown = get(&app.url("/api/v1/config")).text().unwrap();
    assert!(!shown.contains("hook-credential") && shown.contains("on_publish"), "{shown}");
    let metrics = get(&app.url("/metrics")).text().unwrap();
    assert!(metrics.contains("rackcast_publish_webhook_refused_total 1"), "{metrics}");

    // A webhook that does not answer refuses every new publish.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = Appliance::start(Some(&format!("[auth]\npublish_webhook = \"http://{closed}/hook\"\npublish_webhook_timeout = \"500ms\"\n")));
    refused(&down, "cam");
    down.wait_for_log("the publish webhook did not answer (connection failed)", Duration::from_secs(5));
}
