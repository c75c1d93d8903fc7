//! Admission on this 2-core machine: 720p publishes beyond the CPU budget get fewer rungs
//! (from the top) and then a refusal with its reason, while the admitted streams keep real
//! time; an ended stream gives its cores back, and a reduced stream takes its whole ladder
//! back.

use std::time::{Duration, Instant};

use crate::support::*;

/// One 720p30 ultrafast ladder (720p/480p/360p) is counted as about 0.52 cores and its
/// 360p rung alone as 0.21: this budget takes one whole ladder, then one rung, then nothing.
/// The rungs' bitrates sit under the publishers' 2.5 Mbit/s, so measuring the uplink keeps
/// the ladder as it is. The model's figures stay fixed (no calibration on this host), so
/// the arithmetic is what is tested.
const CONFIG: &str = "[transcode]\nx264_preset = \"ultrafast\"\ncpu_budget = 0.8\ncalibrate_cost = false\n\
    [[transcode.rungs]]\nheight = 720\nbitrate_kbps = 1500\n\
    [[transcode.rungs]]\nheight = 480\nbitrate_kbps = 800\n\
    [[transcode.rungs]]\nheight = 360\nbitrate_kbps = 400\n";

fn status(app: &Appliance, stream: &str) -> Option<serde_json::Value> {
    let response = get(&app.url(&format!("/live/{stream}")));
    (response.status() == 200).then(|| response.json::<serde_json::Value>().unwrap()["status"].clone())
}

/// The stream's status once its transcode choice is known.
fn admitted(app: &Appliance, stream: &str) -> serde_json::Value {
    wait_until(&format!("{stream} admitted"), Duration::from_secs(30), || status(app, stream).filter(|s| !s["transcode"].is_null()))
}

fn rungs(status: &serde_json::Value) -> usize {
    status["plan"]["rungs"].as_array().map_or(0, |r| r.len())
}

/// Segments (every rendition) of each listed stream, from the admin API.
fn segments(app: &Appliance) -> std::collections::HashMap<String, u64> {
    let list = get_json(&app.url("/api/v1/streams"));
    list.as_array().unwrap().iter().map(|s| (s["stream"].as_str().unwrap().to_owned(), s["segments"].as_u64().unwrap())).collect()
}

#[test]
fn streams_beyond_the_cpu_budget_get_fewer_rungs_then_a_refusal_and_the_admitted_keep_real_time() {
    let _host = host_to_itself();
    let app = Appliance::start(Some(CONFIG));
    let node = get_json(&app.url("/api/v1/node"));
    assert_eq!(node["transcode_usage"]["cpu_cores_budget"].as_f64(), Some(0.8), "{node}");

    // The first stream gets its whole ladder.
    let first = Publisher::start(&app.publish_url("live", "first"), 60, "1280x720");
    let a = admitted(&app, "first");
    assert_eq!(rungs(&a), 3, "{a}");
    assert_eq!(a["transcode"]["backend"], "software");
    assert!(a["transcode"]["why"].as_str().unwrap().contains("first usable backend"), "{a}");
    let one_ladder = a["transcode"]["cpu_cores"].as_f64().unwrap();
    assert!((0.3..0.8).contains(&one_ladder), "{a}");

    // The second gets what is left: its lowest rung, with the reason in its status and
    // in GET /live.
    let second = Publisher::start(&app.publish_url("live", "second"), 60, "1280x720");
    let b = admitted(&app, "second");
    assert_eq!(b["plan"]["rungs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect::<Vec<_>>(), ["360p"], "{b}");
    let why = b["transcode"]["why"].as_str().unwrap();
    assert!(why.contains("lowest 1 of 3 rungs") && why.contains("CPU budget of 0.80 cores"), "{why}");
    assert!(b["health"]["recent"].as_array().unwrap().iter().any(|e| e["what"].as_str().unwrap().contains("rungs 720p, 480p dropped")), "{b}");
    let live = get_json(&app.url("/live"));
    let listed = live.as_array().unwrap().iter().find(|s| s["stream"] == "second").expect("second in GET /live");
    assert_eq!(listed["transcode"]["backend"], "software", "{listed}");

    // The third is refused, and says why.
    let mut third = Publisher::start(&app.publish_url("live", "third"), 60, "1280x720");
    app.wait_for_log("admission refused the stream: no backend has room even for the lowest rung", Duration::from_secs(30));
    let refused_at = Instant::now();
    while third.is_running() && refused_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!third.is_running(), "the refused publisher is disconnected");
    assert!(status(&app, "third").is_none_or(|s| s["transcode"].is_null()), "a refused stream is not transcoded");

    // The admitted ones keep real time: a segment per second per rendition, small lag.
    let before = segments(&app);
    let window = Duration::from_secs(8);
    std::thread::sleep(window);
    let after = segments(&app);
    for (stream, renditions) in [("first", 4), ("second", 2)] {
        let made = after[stream] - before[stream];
        let expected = renditions * (window.as_secs() - 2);
        assert!(made >= expected, "{stream}: {made} segments in {window:?}, expected at least {expected} ({renditions} renditions)");
        let lag = status(&app, stream).unwrap()["health"]["lag_ms"].as_u64().unwrap();
        assert!(lag < 3_000, "{stream} lags {lag} ms");
    }
    let metrics = reqwest::blocking::get(app.url("/metrics")).unwrap().text().unwrap();
    assert!(metrics.contains("rackcast_transcode_admission_refusals_total{outcome=\"refused\"} 1"), "{metrics}");
    assert!(metrics.contains("rackcast_transcode_admission_refusals_total{outcome=\"rungs_dropped\"} 1"), "{metrics}");

    // An ended stream gives its cores back.
    let used = || get_json(&app.url("/api/v1/node"))["transcode_usage"]["cpu_cores_used"].as_f64().unwrap();
    assert!(used() > one_ladder, "both streams are counted");
    drop(first);
    // ...and the reduced stream takes its whole ladder back at a keyframe.
    let regained = wait_until("the second stream's whole ladder", Duration::from_secs(20), || status(&app, "second").filter(|s| rungs(s) == 3));
    assert_eq!(regained["plan_history"].as_array().unwrap().last().unwrap()["reason"], "budget has room again", "{regained}");
    assert!(regained["transcode"]["why"].as_str().unwrap().contains("first usable backend"), "{regained}");
    drop(second);
}
