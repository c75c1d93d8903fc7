//! The ladder follows the broadcaster's measured bitrate. Real ffmpeg publishers on
//! 127.0.0.1: an encoder that drops its bitrate mid-stream (as OBS's dynamic bitrate does)
//! makes the appliance re-plan down into a new, contiguous Period; a publish through a
//! rate-limited TCP relay is flagged uplink-bound with a recommendation that fits the link,
//! while another stream on the appliance goes on unaffected.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const CONFIG: &str = "[transcode]\nx264_preset = \"ultrafast\"\n";

/// A 720p30 file whose first `first` seconds are at `high` and the rest at `low` kbit/s
/// (keyframe every second), made with ffmpeg and kept for the test's lifetime.
fn two_rate_file(dir: &Path, first: u32, high: u32, rest: u32, low: u32) -> PathBuf {
    let part = |name: &str, seconds: u32, kbps: u32, offset: u32| {
        let path = dir.join(name);
        let source = format!("testsrc2=size=1280x720:rate=30,trim=start={offset},setpts=PTS-STARTPTS");
        let status = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", &source])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args(["-t", &seconds.to_string(), "-c:v", "libx264", "-preset", "ultrafast", "-g", "30"])
            .args(["-b:v", &format!("{kbps}k"), "-maxrate", &format!("{kbps}k"), "-bufsize", &format!("{}k", kbps / 2)])
            .args(["-x264-params", "nal-hrd=cbr:force-cfr=1", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k"])
            .args(["-output_ts_offset", &offset.to_string(), "-f", "mpegts"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "ffmpeg made {name}");
        path
    };
    let a = part("high.ts", first, high, 0);
    let b = part("low.ts", rest, low, first);
    let out = dir.join("two-rate.ts");
    let mut file = std::fs::File::create(&out).unwrap();
    for p in [a, b] {
        file.write_all(&std::fs::read(p).unwrap()).unwrap();
    }
    out
}

/// ffmpeg sending a file in real time, as it is (`-re -c copy`).
fn publish_file(file: &Path, url: &str) -> std::process::Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-i"])
        .arg(file)
        .args(["-c", "copy", "-f", "flv", url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The stream's plan history while it is live (empty before and after).
fn plan_history(app: &Appliance, stream: &str) -> Vec<serde_json::Value> {
    let response = get(&app.url(&format!("/live/{stream}")));
    if response.status() != 200 {
        return Vec::new();
    }
    let status: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
    status["status"]["plan_history"].as_array().cloned().unwrap_or_default()
}

/// Presentation-time spans [start, end) of every video segment of rendition `rung` that the
/// MPD lists, across Periods.
fn spans(mpd: &dash_mpd_core::MPD, stream: &str, rung: &str) -> Vec<(String, u64, f64, f64)> {
    let mut out = Vec::new();
    for period in &mpd.periods {
        let start = period.start.unwrap_or_default().as_secs_f64();
        for rep in period.adaptations.iter().flat_map(|a| &a.representations) {
            if rep.id.as_deref() != Some(rung) {
                continue;
            }
            let pto = rep.SegmentTemplate.as_ref().and_then(|t| t.presentationTimeOffset).unwrap_or(0);
            for seg in segments(stream, rep).1 {
                let ts = seg.timescale as f64;
                let s = start + (seg.time as f64 - pto as f64) / ts;
                out.push((period.id.clone().unwrap_or_default(), seg.number, s, s + seg.duration as f64 / ts));
            }
        }
    }
    out
}

#[test]
fn an_encoder_that_drops_its_bitrate_gets_a_lower_ladder_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let file = two_rate_file(dir.path(), 10, 6000, 12, 1500);
    let app = Appliance::start(Some(CONFIG));
    let mut ffmpeg = publish_file(&file, &app.publish_url("live", "dyn"));

    // A reader following the live MPD as a player would, remembering every segment it saw.
    let mut seen: Vec<(String, u64, f64, f64)> = Vec::new();
    let mut changed_at = None;
    let mut history = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && matches!(ffmpeg.try_wait(), Ok(None)) {
        if let Some(mpd) = fetch_mpd(&app, "dyn") {
            for span in spans(&mpd, "dyn", "360p") {
                if !seen.iter().any(|s| s.0 == span.0 && s.1 == span.1) {
                    seen.push(span);
                }
            }
        }
        let now = plan_history(&app, "dyn");
        if !now.is_empty() {
            history = now;
        }
        if changed_at.is_none() && history.iter().any(|p| p["reason"].as_str().unwrap_or("").contains("moved persistently")) {
            changed_at = Some(Instant::now());
        }
        thread::sleep(Duration::from_millis(300));
    }
    let _ = ffmpeg.wait();
    println!("plan history: {}", serde_json::to_string_pretty(&history).unwrap());
    // Started with the top rungs for a 720p source at 6 Mb/s.
    let measured = history.iter().find(|p| p["reason"].as_str().unwrap().starts_with("initial")).or(history.first()).unwrap();
    assert_eq!(measured["rungs"][0].as_str().unwrap(), "720p@2800k", "{history:?}");
    // Then down to what 1.5 Mb/s carries.
    let down = history.iter().find(|p| p["reason"].as_str().unwrap().contains("moved persistently")).expect("a re-plan down");
    let top = down["rungs"][0].as_str().unwrap();
    assert!(top.starts_with("480p") || top.starts_with("360p"), "top rung after the drop: {top}");
    assert!(down["for_bps"].as_f64().unwrap() < 2_000_000.0);
    assert!(changed_at.is_some(), "the re-plan happened while the stream was live");

    // The reader saw no gap across the change: 360p (in both plans) is contiguous.
    seen.sort_by(|a, b| a.2.total_cmp(&b.2));
    let periods: std::collections::BTreeSet<_> = seen.iter().map(|s| s.0.clone()).collect();
    assert!(periods.len() >= 2, "segments from before and after the re-plan: {periods:?}");
    for pair in seen.windows(2) {
        let gap = pair[1].2 - pair[0].3;
        assert!(gap.abs() < 0.05, "gap of {gap:.3} s between {:?} and {:?}", pair[0], pair[1]);
    }

    // Segments from before and after the change decode.
    let mpd = fetch_mpd(&app, "dyn").unwrap();
    for period in [mpd.periods.first().unwrap(), mpd.periods.last().unwrap()] {
        let video = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video")).unwrap();
        let rep = &video.representations[0];
        let (init, list) = segments("dyn", rep);
        let (codec, _, height, _) = probe(&get_bytes(&app.url(&init)), &get_bytes(&app.url(&list.last().unwrap().url)));
        assert_eq!(codec, "h264");
        assert_eq!(u64::from(height), rep.height.unwrap());
    }
}

/// A TCP relay that forwards client-to-server bytes at most at `bits_per_second`.
fn rate_limited_relay(target: String, bits_per_second: f64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for client in listener.incoming().take(1) {
            let mut client = client.unwrap();
            let mut server = TcpStream::connect(&target).unwrap();
            let (mut client_back, mut server_back) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            thread::spawn(move || {
                let _ = std::io::copy(&mut server_back, &mut client_back);
            });
            let start = Instant::now();
            let mut sent = 0u64;
            let mut buf = [0u8; 4096];
            while let Ok(n) = client.read(&mut buf) {
                if n == 0 || server.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n as u64;
                let due = Duration::from_secs_f64(sent as f64 * 8.0 / bits_per_second);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
            }
        }
    });
    port
}

#[test]
fn a_slow_uplink_is_flagged_with_a_recommendation_and_other_streams_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = two_rate_file(dir.path(), 12, 6000, 1, 6000);
    let app = Appliance::start(Some(CONFIG));
    let relay = rate_limited_relay(app.rtmp.clone(), 2_000_000.0);
    let mut slow = publish_file(&file, &format!("rtmp://127.0.0.1:{relay}/live/slow"));
    let _other = Publisher::start(&app.publish_url("live", "other"), 14, "320x240");

    let flagged = wait_until("the slow stream flagged uplink-bound", Duration::from_secs(12), || {
        let response = get(&app.url("/live/slow/uplink"));
        if response.status() != 200 {
            return None;
        }
        let body: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
        (body["uplink_bound"] == true).then_some(body)
    });
    println!("uplink: {}", serde_json::to_string_pretty(&flagged).unwrap());
    let recommended = flagged["recommended_publish_kbps"].as_f64().unwrap();
    assert!(recommended <= 2_100.0, "recommends {recommended} kbit/s for a 2 Mbit/s link");
    assert!(flagged["throughput_kbps"].as_f64().unwrap() < 2_300.0);
    app.wait_for_log("uplink cannot carry its stream", Duration::from_secs(2));
    assert_eq!(app.metrics().value("rackcast_stream_uplink_bound", &[("stream", "slow")]), 1.0);

    // The other stream on the appliance is unaffected: real-time segments, not flagged.
    let other = get_json(&app.url("/live/other/uplink"));
    assert_eq!(other["uplink_bound"], false, "{other}");
    let before = fetch_mpd(&app, "other").map(|m| m.periods.iter().map(|p| p.adaptations.len()).sum::<usize>()).unwrap_or(0);
    assert!(before > 0);
    let count = |mpd: &dash_mpd_core::MPD| {
        let period = mpd.periods.last().unwrap();
        let video = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video")).unwrap();
        segments("other", &video.representations[0]).1.last().unwrap().number
    };
    let first = count(&fetch_mpd(&app, "other").unwrap());
    thread::sleep(Duration::from_secs(3));
    let later = count(&fetch_mpd(&app, "other").unwrap());
    assert!(later >= first + 2, "other stream advanced {first} -> {later} in 3 s");
    let _ = slow.kill();
    let _ = slow.wait();
}
