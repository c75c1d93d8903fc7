//! Publisher quirks with real ffmpeg broadcasters: stream keys with a dot, slashes (the
//! `rtmp://host/live/room/cam` form, where ffmpeg sends app `live/room`) and a query string
//! publish under safe public names; a configured key with odd characters never shows; and
//! a publisher whose link dies without closing (SIGSTOP: the socket stays open) is taken
//! over by a new publish of the same key in under 2 s, also when both are relayed to the
//! stream's owner by another node. An encoder that unpublishes and publishes again on the
//! same connection gets its second publish, and the unpublish is no publish time-out.

use std::time::{Duration, Instant};

use dash_mpd_core::MPD;
use crate::support::flv::{self, ScriptedPublisher};
use crate::support::*;

/// The stream's MPD once it is live in a Period other than `not`, with at least `count`
/// video segments and an audio segment; with that Period's id.
fn live_period(app: &Appliance, stream: &str, count: usize, not: Option<&str>) -> Option<(MPD, String)> {
    let mpd = fetch_mpd(app, stream)?;
    let period = mpd.periods.last()?;
    let id = period.id.clone()?;
    if mpd.mpdtype.as_deref() != Some("dynamic") || Some(id.as_str()) == not {
        return None;
    }
    let listed = |kind: &str, n: usize| {
        period
            .adaptations
            .iter()
            .find(|a| a.contentType.as_deref() == Some(kind))
            .is_some_and(|a| a.representations.iter().all(|r| segments(stream, r).1.len() >= n))
    };
    (listed("video", count) && listed("audio", 1)).then(|| (mpd.clone(), id))
}

/// The last Period's rungs are those of a 640x360 source, and the newest segment of every
/// Representation decodes at the size its MPD entry says.
fn assert_rungs_decode(app: &Appliance, stream: &str, mpd: &MPD) {
    let period = mpd.periods.last().unwrap();
    let video = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video")).unwrap();
    let rungs: Vec<(String, u64, u64)> =
        video.representations.iter().map(|r| (r.id.clone().unwrap(), r.width.unwrap(), r.height.unwrap())).collect();
    assert_eq!(rungs, [("360p".to_owned(), 640, 360)], "{stream}: every rung up to the 360p source");
    let audio = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("audio")).unwrap();
    for rep in video.representations.iter().chain(&audio.representations) {
        let (init, list) = segments(stream, rep);
        let newest = list.last().unwrap();
        assert!(init.starts_with(&format!("/live/{stream}/")) && newest.url.starts_with(&format!("/live/{stream}/")));
        let (codec, width, height, frames) = probe(&get_bytes(&app.url(&init)), &get_bytes(&app.url(&newest.url)));
        if rep.id.as_deref() == Some("audio") {
            assert_eq!(codec, "aac", "{stream}");
        } else {
            assert_eq!(codec, "h264", "{stream}");
            assert_eq!((u64::from(width), u64::from(height)), (rep.width.unwrap(), rep.height.unwrap()), "{stream}: decoded size");
            assert!(frames.first().is_some_and(|f| f.1), "{stream}: segment {} starts on a keyframe", newest.number);
        }
    }
}

#[test]
fn keys_with_a_dot_a_slash_and_a_query_publish_under_safe_names() {
    let started = Instant::now();
    let app = Appliance::start(None);
    // (URL path after the host, public name). ffmpeg sends the second as app `live/room`,
    // key `cam`; the third as app `live/studio`, key `floor.2/cam?token=...`.
    let cases = [
        ("live/cam.1", "cam.1"),
        ("live/room/cam", "room~cam"),
        ("live/studio/floor.2/cam?token=s3cr3t-t0ken", "studio~floor.2~cam"),
    ];
    let publishers: Vec<Publisher> =
        cases.iter().map(|(path, _)| Publisher::start(&format!("rtmp://{}/{path}", app.rtmp), 14, "640x360")).collect();
    for (path, name) in cases {
        let (mpd, _) = wait_until(&format!("{name} live (published as {path})"), Duration::from_secs(30), || {
            live_period(&app, name, 2, None)
        });
        assert_rungs_decode(&app, name, &mpd);
        let status = get_json(&app.url(&format!("/live/{name}")));
        assert_eq!(status["stream"], name);
        assert_eq!(status["live"], true);
    }
    // The same names percent-encoded in a viewer's URL.
    assert_eq!(get(&app.url("/live/room%7Ecam/manifest.mpd")).status(), 200);
    let listed = get(&app.url("/live")).text().unwrap();
    for (_, name) in cases {
        assert!(listed.contains(&format!("\"{name}\"")), "{listed}");
    }
    assert!(!listed.contains("t0ken") && !app.logs().contains("t0ken"), "the query never shows");

    // Keys that would step out of their URL element are refused, saying why.
    for (path, why) in [
        ("live/../etc", "invalid stream key: stream key has a path element that starts with '.'"),
        ("live/a..b", "invalid stream key: stream key holds \"..\""),
    ] {
        let url = format!("rtmp://{}/{path}", app.rtmp);
        let (status, _) = Publisher::start(&url, 2, "320x240").wait(Duration::from_secs(15));
        assert!(!status.success(), "{path} must be refused");
        app.wait_for_log(&format!("publish refused: {why}"), Duration::from_secs(5));
    }
    for path in ["/live/..%2Fetc/manifest.mpd", "/live/.hidden/manifest.mpd", "/live/a..b/manifest.mpd", "/live/a%2Fb/manifest.mpd"] {
        assert_eq!(get(&app.url(path)).status(), 400, "{path}");
    }
    drop(publishers);
    eprintln!("keys test: {:.1} s", started.elapsed().as_secs_f64());
}

/// `ingest.takeover_after` in this file's configs: how long a publisher must have sent
/// nothing before a new publish of its key takes it over.
const TAKEOVER_AFTER: Duration = Duration::from_secs(1);

/// Waits until `app` has received no media of `stream` for `quiet` (the media bytes in its
/// status unchanged that long): the publisher is silent as the appliance sees it.
fn wait_silent(app: &Appliance, stream: &str, quiet: Duration) {
    let received = || get_json(&app.url(&format!("/live/{stream}")))["status"]["ingest_bytes"].as_u64();
    let (mut last, mut since) = (received(), Instant::now());
    wait_until(&format!("no media of {stream} arriving for {quiet:?}"), quiet + Duration::from_secs(10), || {
        let now = received();
        if now != last {
            (last, since) = (now, Instant::now());
        }
        (since.elapsed() >= quiet).then_some(())
    });
}

/// The configured key: a slash (URL form `live/team/...`), a dot, '@', '=' and '+'.
const SECRET_KEY: &str = "team/s3cr3t.k3y@x=y+z";
const CONFIG: &str = r#"
[ingest]
takeover_after = "1s"

[ingest.keys]
"team/s3cr3t.k3y@x=y+z" = "phone.1"
"#;
const STREAM: &str = "phone.1";

#[test]
fn a_silent_publisher_is_taken_over_by_a_new_publish_of_its_key() {
    let started = Instant::now();
    let app = Appliance::start(Some(CONFIG));
    let url = app.publish_url("live", &format!("{SECRET_KEY}?token=t0ken"));
    let first = Publisher::start(&url, 60, "640x360");
    let (_, first_session) = wait_until("the first publish live", Duration::from_secs(30), || live_period(&app, STREAM, 2, None));

    // While it sends media, a second publish of the key is refused.
    let (status, _) = Publisher::start(&url, 3, "320x240").wait(Duration::from_secs(15));
    assert!(!status.success(), "a second publisher must be refused while the first sends");
    app.wait_for_log(&format!("publish refused: stream {STREAM} is already being published"), Duration::from_secs(5));

    // The first one's link dies without closing: stopped, its socket stays open.
    signal(first.pid(), "STOP");
    let stopped = Instant::now();
    wait_silent(&app, STREAM, TAKEOVER_AFTER);
    let second_started = Instant::now();
    let second = Publisher::start(&url, 60, "640x360");
    app.wait_for_log("publisher taken over", Duration::from_secs(5));
    let accepted = second_started.elapsed();
    let since_stop = stopped.elapsed();
    assert!(accepted < Duration::from_secs(2), "publish accepted {accepted:?} after the second ffmpeg started");
    let (mpd, second_session) = wait_until("live again in a new Period", Duration::from_secs(20), || {
        live_period(&app, STREAM, 1, Some(&first_session))
    });
    let live_again = second_started.elapsed();
    eprintln!(
        "takeover: publish accepted {:.2} s after the second ffmpeg started ({:.2} s after SIGSTOP), first new segment listed after {:.2} s",
        accepted.as_secs_f64(),
        since_stop.as_secs_f64(),
        live_again.as_secs_f64()
    );
    assert!(mpd.periods.iter().any(|p| p.id.as_deref() == Some(first_session.as_str())), "the old Period stays listed");
    assert_rungs_decode(&app, STREAM, &mpd);
    let status = get_json(&app.url(&format!("/live/{STREAM}")));
    assert_eq!(status["status"]["session"], second_session.as_str(), "{status}");
    let logs = app.logs();
    let line = logs.lines().find(|l| l.contains("publisher taken over")).unwrap();
    assert!(line.contains("WARN") && line.contains("previous=127.0.0.1:") && line.contains("peer=127.0.0.1:"), "{line}");
    assert!(logs.contains("connection dropped: taken over by a new publish from 127.0.0.1:"), "the old connection says why");
    assert_eq!(app.metrics().count("rackcast_ingest_takeovers_total"), 1);

    // The stopped ffmpeg wakes up to a closed connection and exits; nothing else changes.
    signal(first.pid(), "CONT");
    let (status, _) = first.wait(Duration::from_secs(15));
    assert!(!status.success(), "the taken-over ffmpeg finds its connection closed");
    let before = segments(STREAM, live_video_rep(&mpd)).1.last().unwrap().number;
    let mpd = wait_until("the new session to go on", Duration::from_secs(10), || {
        let (mpd, session) = live_period(&app, STREAM, 1, None)?;
        let newest = segments(STREAM, live_video_rep(&mpd)).1.last()?.number;
        (session == second_session && newest >= before + 2).then_some(mpd)
    });
    assert_rungs_decode(&app, STREAM, &mpd);
    assert_eq!(app.metrics().count("rackcast_ingest_takeovers_total"), 1);

    // The key (a secret) and its query appear nowhere: logs, MPD, status, lists, metrics.
    let mut shown = app.logs();
    for path in [format!("/live/{STREAM}/manifest.mpd"), format!("/live/{STREAM}"), "/live".into(), "/metrics".into()] {
        shown += &get(&app.url(&path)).text().unwrap();
    }
    for secret in ["s3cr3t", "t0ken"] {
        assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
    }
    drop(second);
    eprintln!("takeover test: {:.1} s", started.elapsed().as_secs_f64());
}

/// Two live nodes; a broadcaster on live-a whose stream live-b owns is relayed there. Its
/// link dies; it reconnects to live-a, whose new relay takes the silent old relay's stream
/// over on live-b. The old relay, whose broadcaster is silent, gives up at its refused
/// reconnect; the old broadcaster's connection is closed.
#[test]
fn a_relayed_publish_takes_over_a_silent_relay_at_the_owner() {
    let started = Instant::now();
    let ports: Vec<(u16, u16)> = (0..2).map(|_| (free_port(), free_port())).collect();
    let mut config = String::from(
        "[cluster]\nhealth_interval = \"200ms\"\nhealth_timeout = \"150ms\"\nrelay_secret = \"quirks-test-secret-0123456\"\n\n[ingest]\ntakeover_after = \"1s\"\n",
    );
    for (id, (rtmp, http)) in ["live-a", "live-b"].iter().zip(&ports) {
        config += &format!("\n[[cluster.nodes]]\nid = \"{id}\"\nroles = [\"live\"]\nrtmp = \"127.0.0.1:{rtmp}\"\nhttp = \"127.0.0.1:{http}\"\n");
    }
    let a = Appliance::start_node(&config, "live-a");
    let b = Appliance::start_node(&config, "live-b");
    for (_, http) in &ports {
        wait_serving(&format!("127.0.0.1:{http}"), Duration::from_secs(10));
    }
    let ring = rackcast::cluster::Ring::new(["live-a".to_owned(), "live-b".to_owned()], 160);
    let stream = (0..).map(|i| format!("van.{i}")).find(|s| ring.owner(s) == Some("live-b")).unwrap();
    let url = format!("rtmp://127.0.0.1:{}/live/{stream}", ports[0].0);
    let first = Publisher::start(&url, 60, "640x360");
    let (_, first_session) = wait_until("the relayed stream live on its owner", Duration::from_secs(30), || {
        live_period(&b, &stream, 2, None)
    });
    a.wait_for_log("relaying to owner", Duration::from_secs(1));

    signal(first.pid(), "STOP");
    wait_silent(&b, &stream, TAKEOVER_AFTER);
    let second_started = Instant::now();
    let second = Publisher::start(&url, 60, "640x360");
    b.wait_for_log("publisher taken over", Duration::from_secs(5));
    let accepted = second_started.elapsed();
    let (mpd, _) = wait_until("live again on the owner in a new Period", Duration::from_secs(20), || {
        live_period(&b, &stream, 1, Some(&first_session))
    });
    eprintln!(
        "relayed takeover: accepted on the owner {:.2} s after the second ffmpeg started, live again after {:.2} s",
        accepted.as_secs_f64(),
        second_started.elapsed().as_secs_f64()
    );
    assert!(accepted < Duration::from_secs(2), "relayed publish accepted {accepted:?} after the second ffmpeg started");
    assert_rungs_decode(&b, &stream, &mpd);
    assert_eq!(Metrics::scrape(&format!("http://127.0.0.1:{}", ports[1].1)).count("rackcast_ingest_takeovers_total"), 1);
    // The old relay's reconnect is refused (the new relay sends), and it gives up: its
    // broadcaster's connection on live-a is closed.
    a.wait_for_log("relay gave up", Duration::from_secs(10));
    signal(first.pid(), "CONT");
    let (status, _) = first.wait(Duration::from_secs(15));
    assert!(!status.success(), "the stopped broadcaster's connection was closed");
    let newest = |mpd: &MPD| segments(&stream, live_video_rep(mpd)).1.last().unwrap().number;
    let before = newest(&mpd);
    wait_until("the new relayed session to go on", Duration::from_secs(10), || {
        live_period(&b, &stream, 1, Some(&first_session)).filter(|(m, _)| newest(m) >= before + 2)
    });
    assert_eq!(Metrics::scrape(&format!("http://127.0.0.1:{}", ports[1].1)).count("rackcast_ingest_takeovers_total"), 1);
    drop(second);
    eprintln!("relayed takeover test: {:.1} s", started.elapsed().as_secs_f64());
}

fn live_video_rep(mpd: &MPD) -> &dash_mpd_core::Representation {
    let period = mpd.periods.last().unwrap();
    &period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video")).unwrap().representations[0]
}

/// Shorter than one publish, so the deadline set at connect has passed at the unpublish.
const REPUBLISH_CONFIG: &str = "[ingest]\npublish_timeout = \"2s\"\n";

#[test]
fn an_encoder_unpublishes_and_publishes_again_on_the_same_connection() {
    let started = Instant::now();
    let app = Appliance::start(Some(REPUBLISH_CONFIG));
    let counter = |name: &str| app.metrics().count(&format!("rackcast_ingest_{name}_total"));
    let clip = flv::make("320x240", 6);
    let mut publisher = ScriptedPublisher::connect(&app.rtmp, "live", "again");
    publisher.play(&clip, 0).unwrap();
    let (_, first) = wait_until("the first publish live", Duration::from_secs(8), || live_period(&app, "again", 2, None));

    // deleteStream, then a new publish of the same key on the same connection.
    publisher.unpublish();
    wait_until("the unpublish counted", Duration::from_secs(5), || (counter("unpublishes") == 1).then_some(()));
    publisher.republish("again");
    publisher.play(&clip, 0).unwrap();
    wait_until("the second publish live in a new Period", Duration::from_secs(8), || live_period(&app, "again", 2, Some(&first)));
    assert_eq!(counter("publish_timeouts"), 0, "an unpublish is no publish time-out");

    // Unpublished and silent: closed publish_timeout later, as a normal close.
    publisher.unpublish();
    assert!(publisher.closed_by_server(Duration::from_secs(5)), "closed when no publish followed the unpublish");
    app.wait_for_log("no new publish within 2s of the unpublish; closing", Duration::from_secs(2));
    assert_eq!((counter("unpublishes"), counter("publish_timeouts")), (2, 0));
    assert!(!app.logs().contains("not publishing 2s after connecting"), "logged as a publish time-out");
    eprintln!("republish test: {:.1} s", started.elapsed().as_secs_f64());
}
