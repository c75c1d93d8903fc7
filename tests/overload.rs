//! More 720p ladders than two cores can carry: the appliance notices (pipeline output
//! trailing input while the CPU is saturated), sheds the top rungs of the most recently
//! admitted streams, says so in the log and the status, and the first stream keeps one
//! segment a second with its audio and video in step.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Segments listed for the stream's video (first Representation) and audio, summed over
/// Periods.
fn listed(app: &Appliance, stream: &str) -> (usize, usize) {
    let Some(mpd) = fetch_mpd(app, stream) else { return (0, 0) };
    let mut counts = (0, 0);
    for period in &mpd.periods {
        for set in &period.adaptations {
            let Some(rep) = set.representations.first() else { continue };
            let n = segments(stream, rep).1.len();
            match set.contentType.as_deref() {
                Some("video") => counts.0 += n,
                Some("audio") => counts.1 += n,
                _ => {}
            }
        }
    }
    counts
}

fn newest_video_number(app: &Appliance, stream: &str) -> u64 {
    let Some(mpd) = fetch_mpd(app, stream) else { return 0 };
    mpd.periods
        .iter()
        .flat_map(|p| &p.adaptations)
        .filter(|a| a.contentType.as_deref() == Some("video"))
        .filter_map(|a| segments(stream, a.representations.first()?).1.last().map(|s| s.number))
        .sum()
}

fn publish_copy(clip: &std::path::Path, url: &str, seconds: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i"])
        .arg(clip)
        .args(["-t", &seconds.to_string(), "-c", "copy", "-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn overload_sheds_the_newest_streams_and_the_first_keeps_real_time() {
    // One 720p clip, published four times with -c copy (publishers cost next to nothing).
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("720p.flv");
    let made = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "10"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p", "-b:v", "2500k"])
        .args(["-c:a", "aac", "-b:a", "128k", "-f", "flv"])
        .arg(&clip)
        .status()
        .unwrap();
    assert!(made.success());

    // Admission would give the second and third streams fewer rungs up front (its cost
    // model counts a 720p veryfast ladder as 0.86 cores); opened wide here, it admits every
    // ladder, as when the model underestimates a busy source, and the run-time controller
    // is what is under test.
    let app = Appliance::start(Some("[transcode]\ncpu_budget = 16.0\n"));
    // Four 720p ladders (three rungs each) need about 2.8 cores here (0.7 each since the
    // decoder threads and the scalers stopped converting colours; three were 3.3 before).
    let names = ["first", "second", "third", "fourth"];
    let mut publishers = Vec::new();
    for name in names {
        publishers.push(publish_copy(&clip, &app.publish_url("live", name), 60));
        // Admission order is publish order.
        wait_until("the stream's first segments", Duration::from_secs(20), || (listed(&app, name).0 > 0).then_some(()));
    }
    app.wait_for_log("host overloaded", Duration::from_secs(30));
    let first_shed = app.logs().lines().find(|l| l.contains("host overloaded")).unwrap().to_owned();
    assert!(first_shed.contains("stream=fourth"), "the newest stream sheds first: {first_shed}");

    // Let the shedding settle and the backlogs drain, then the first stream must keep real
    // time for 10 s.
    std::thread::sleep(Duration::from_secs(20));
    let start = newest_video_number(&app, "first");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let produced = newest_video_number(&app, "first") - start;
    let elapsed = t0.elapsed().as_secs_f64();
    let (video, audio) = listed(&app, "first");
    let health: Vec<serde_json::Value> = names.iter().map(|n| get_json(&app.url(&format!("/live/{n}")))["status"]["health"].clone()).collect();
    eprintln!("first stream: {produced} video segments in {elapsed:.1} s; listed video {video}, audio {audio}; health {health:?}");
    let shed: Vec<u64> = health.iter().map(|h| h["shed"].as_u64().unwrap()).collect();
    assert!(shed[3] >= 1 && shed[0] <= 1, "newest streams shed first, the oldest at most one rung: {shed:?}");
    assert!(health[0]["rung_cap"].as_u64().is_none_or(|cap| cap >= 2), "the oldest stream keeps more than its lowest rung: {health:?}");
    assert!(produced as f64 >= elapsed - 2.0, "first stream produced {produced} segments in {elapsed:.1} s");
    assert!(video.abs_diff(audio) <= 3, "audio and video in step: {video} video vs {audio} audio segments");
    for mut p in publishers {
        let _ = p.kill();
        let _ = p.wait();
    }
    assert!(!app.logs().contains("did not drain"), "a pipeline lost its tail at teardown");
}
