//! `/metrics` against a known publish and a known set of viewer requests, parsed as a
//! Prometheus server parses it (prometheus-parse): the stream's series match its status,
//! request and byte counts match exactly what the test fetched, viewers are the distinct
//! clients it used, and the stream's series go when it ends.

use std::time::Duration;

use crate::support::*;

const STREAM: &str = "metered";
const CONFIG: &str = "[transcode]\nx264_preset = \"ultrafast\"\n";

fn route<'a>(pattern: &'a str, status: &'a str) -> [(&'static str, &'a str); 2] {
    [("route", pattern), ("status", status)]
}

fn fetch_as(url: &str, user_agent: &str) -> usize {
    let client = reqwest::blocking::Client::builder().user_agent(user_agent).timeout(Duration::from_secs(5)).build().unwrap();
    let response = client.get(url).send().unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    response.bytes().unwrap().len()
}

#[test]
fn metrics_reflect_a_known_publish_and_known_viewers_and_end_with_the_stream() {
    let _one = one_ladder_at_a_time();
    let app = Appliance::start(Some(CONFIG));
    let publisher = Publisher::start(&app.publish_url("live", STREAM), 40, "640x360");
    let mpd = wait_until("three listed video segments", Duration::from_secs(30), || {
        let mpd = fetch_mpd(&app, STREAM)?;
        let video = mpd.periods.last()?.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video"))?;
        (segments(STREAM, &video.representations[0]).1.len() >= 3).then_some(mpd)
    });

    let before = app.metrics();
    assert!(before.content_type.starts_with("application/openmetrics-text"), "{}", before.content_type);
    let mpd_route = "/live/:stream/manifest.mpd";
    let number_route = "/live/:stream/manifest-number.mpd";
    let segment_route = "/live/:stream/:rendition/:file";
    let count = |m: &Metrics, r: &str| m.get("rackcast_http_requests_total", &route(r, "200")).unwrap_or(0.0);

    // Known viewers: "a" reads the Timeline MPD three times and two segments, "b" the Number
    // MPD once; a missing segment is a 404.
    let video = mpd.periods.last().unwrap().adaptations.iter().find(|a| a.contentType.as_deref() == Some("video")).unwrap();
    let (_, list) = segments(STREAM, &video.representations[0]);
    let mut delivered = 0;
    for _ in 0..3 {
        delivered += fetch_as(&app.url(&format!("/live/{STREAM}/manifest.mpd")), "viewer-a");
    }
    for seg in &list[..2] {
        delivered += fetch_as(&app.url(&seg.url), "viewer-a");
    }
    delivered += fetch_as(&app.url(&format!("/live/{STREAM}/manifest-number.mpd")), "viewer-b");
    let missing = list[0].url.replace(&format!("-{}.m4s", list[0].number), "-999999.m4s");
    assert_eq!(get(&app.url(&missing)).status(), 404);

    let after = app.metrics();
    let stream = [("stream", STREAM)];
    assert_eq!(count(&after, mpd_route) - count(&before, mpd_route), 3.0);
    assert_eq!(count(&after, number_route) - count(&before, number_route), 1.0);
    assert_eq!(count(&after, segment_route) - count(&before, segment_route), 2.0);
    let not_found = |m: &Metrics| m.get("rackcast_http_requests_total", &route(segment_route, "404")).unwrap_or(0.0);
    assert_eq!(not_found(&after) - not_found(&before), 1.0);
    let bytes = |m: &Metrics| m.value("rackcast_stream_delivered_bytes_total", &stream);
    assert_eq!(bytes(&after) - bytes(&before), delivered as f64, "delivered bytes are what the viewers fetched");
    // "a", "b", and the test's own MPD polls (no User-Agent) before.
    assert_eq!(after.value("rackcast_stream_viewers", &stream), 3.0);

    // The stream's series agree with its status.
    let status = get_json(&app.url(&format!("/live/{STREAM}")));
    let rungs = status["status"]["plan"]["rungs"].as_array().expect("a ladder plan").len() as f64;
    assert_eq!(after.value("rackcast_stream_rungs", &stream), rungs);
    assert_eq!(after.value("rackcast_encoder_sessions", &[("backend", "software")]), rungs);
    assert!(after.value("rackcast_transcode_cpu_cores", &[]) > 0.0);
    assert!(after.value("rackcast_transcode_cpu_budget_cores", &[]) >= after.value("rackcast_transcode_cpu_cores", &[]));
    let ingest = |m: &Metrics| m.value("rackcast_stream_ingest_bytes_total", &stream);
    std::thread::sleep(Duration::from_millis(500));
    let later = app.metrics();
    assert!(ingest(&later) > ingest(&before) && ingest(&before) > 10_000.0, "ingest bytes grow: {} then {}", ingest(&before), ingest(&later));
    assert!(after.value("rackcast_stream_segments_total", &stream) >= 3.0 * (rungs + 1.0));
    assert!(after.get("rackcast_stream_uplink_bits_per_second", &stream).is_some_and(|bps| bps > 0.0));
    let lag_count = after.value("rackcast_segment_production_lag_seconds_count", &[]);
    let lag_sum = after.value("rackcast_segment_production_lag_seconds_sum", &[]);
    assert!(lag_count >= 3.0 && lag_sum / lag_count < 5.0, "production lag: {lag_count} segments, mean {} s", lag_sum / lag_count);
    // The node's other counters fold in, and the host is described.
    assert!(after.value("rackcast_ingest_accepted_total", &[]) >= 1.0);
    assert!(after.value("rackcast_http_edge_open", &[]) >= 1.0);
    assert!(after.value("rackcast_host_memory_total_bytes", &[]) > 0.0);
    assert!(after.get("rackcast_host_load_average", &[("window", "1m")]).is_some());
    assert_eq!(after.value("rackcast_transcode_failures_total", &[]), 0.0);
    // Every series the shipped Grafana dashboard plots exists (the caching tier's only on
    // origin and edge nodes: the federation test checks those).
    for name in dashboard_series().into_iter().filter(|n| !n.starts_with("rackcast_tier_")) {
        assert!(after.has_series(&name), "the dashboard plots {name}, which /metrics lacks");
    }

    // The stream ends: its live series go at once; its audience stays a while.
    signal(publisher.pid(), "INT");
    publisher.wait(Duration::from_secs(10));
    wait_until("the stream's live series to go", Duration::from_secs(15), || {
        let m = app.metrics();
        m.get("rackcast_stream_rungs", &stream).is_none().then_some(())
    });
    let ended = app.metrics();
    assert!(ended.get("rackcast_stream_ingest_bytes_total", &stream).is_none());
    assert_eq!(ended.value("rackcast_encoder_sessions", &[("backend", "software")]), 0.0);
    assert_eq!(ended.value("rackcast_transcode_cpu_cores", &[]), 0.0, "an ended stream gives its cores back");
}
