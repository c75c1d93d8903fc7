//! Media time against the real binary: a Period that was opened is always ended (a codec
//! change followed by a disconnect), timestamps that restart or wrap at 2^31 ms start a
//! new Period where the old media ended instead of freezing the stream, and a publisher
//! that sends faster than real time is paced to real time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::flv::{self, ScriptedPublisher};
use crate::support::*;

/// (Period start in s, first video Representation's segments) for every Period.
fn periods(app: &Appliance, stream: &str) -> Vec<(f64, Vec<SegmentRef>)> {
    let Some(mpd) = fetch_mpd(app, stream) else { return Vec::new() };
    mpd.periods
        .iter()
        .filter_map(|p| {
            let video = p.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video"))?;
            let start = p.start.map_or(0.0, |d| d.as_secs_f64());
            Some((start, segments(stream, video.representations.first()?).1))
        })
        .collect()
}

fn end_of(period: &(f64, Vec<SegmentRef>)) -> f64 {
    let last = period.1.last().unwrap();
    period.0 + (last.time + last.duration) as f64 / last.timescale as f64
}

#[test]
fn a_codec_change_then_a_disconnect_ends_the_period_and_the_stream_is_removed() {
    let app = Appliance::start(Some("[package]\ndvr_window = \"3s\"\n"));
    let first = flv::make("640x360", 3);
    let second = flv::make("320x240", 2);
    let mut publisher = ScriptedPublisher::connect(&app.rtmp, "live", "switch");
    publisher.play(&first, 0).unwrap();
    wait_until("segments of the first source", Duration::from_secs(10), || (!periods(&app, "switch").is_empty()).then_some(()));
    // The new source's codec configuration only, then the link drops.
    let end = first.last().unwrap().ts + 33;
    for tag in second.iter().take_while(|t| t.data.get(1) == Some(&0)) {
        publisher.send(tag, end).unwrap();
    }
    app.wait_for_log("video configuration changed mid-stream", Duration::from_secs(5));
    drop(publisher);
    wait_until("a static MPD after the disconnect", Duration::from_secs(10), || {
        fetch_mpd(&app, "switch").filter(|m| m.mpdtype.as_deref() == Some("static"))
    });
    wait_until("the stream's removal one DVR window later", Duration::from_secs(10), || {
        (get(&app.url("/live/switch/manifest.mpd")).status() == 404).then_some(())
    });
}

#[test]
fn a_source_that_rotates_and_resizes_mid_stream_keeps_playing() {
    let app = Appliance::start(None);
    // Landscape, then the phone turns (portrait), then an unusual small size: each a new
    // codec configuration on one connection, timestamps running on.
    let clips = [("640x360", (640, 360)), ("360x640", (360, 640)), ("426x240", (426, 240))];
    let mut publisher = ScriptedPublisher::connect(&app.rtmp, "live", "turn");
    let mut offset = 0;
    for (size, _) in &clips {
        let tags = flv::make(size, 3);
        publisher.play(&tags, offset).unwrap();
        offset += tags.last().unwrap().ts + 33;
    }
    let mpd = wait_until("a Period for each source shape", Duration::from_secs(15), || {
        let mpd = fetch_mpd(&app, "turn")?;
        let ready = mpd.periods.len() == 3
            && mpd.periods[2].adaptations.iter().flat_map(|a| &a.representations).all(|r| !segments("turn", r).1.is_empty());
        ready.then_some(mpd)
    });
    for (period, (size, (width, height))) in mpd.periods.iter().zip(clips) {
        let video = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video")).unwrap();
        // The top rung is the source's own size (never upscaled), in its orientation.
        let top = &video.representations[0];
        assert_eq!((top.width, top.height), (Some(width), Some(height)), "{size}: {:?}", top.id);
        let (init, list) = segments("turn", top);
        let (codec, w, h, frames) = probe(&get_bytes(&app.url(&init)), &get_bytes(&app.url(&list[0].url)));
        assert_eq!((codec.as_str(), u64::from(w), u64::from(h)), ("h264", width, height), "{size} decodes at its size");
        assert!(!frames.is_empty());
    }
    // Presentation time never goes back across the Periods.
    let starts: Vec<Duration> = mpd.periods.iter().map(|p| p.start.unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
}

#[test]
fn timestamps_that_restart_start_a_contiguous_period_without_a_stall() {
    let app = Appliance::start(None);
    let clip = flv::make("320x240", 4);
    let mut publisher = ScriptedPublisher::connect(&app.rtmp, "live", "restart");
    publisher.play(&clip, 0).unwrap();
    // The encoder restarts: the same clip again from timestamp zero.
    publisher.play(&clip, 0).unwrap();
    let list = wait_until("a second Period with segments", Duration::from_secs(10), || {
        let list = periods(&app, "restart");
        (list.len() >= 2 && list[1].1.len() >= 2).then_some(list)
    });
    app.wait_for_log("broadcaster's timestamps jumped", Duration::from_secs(2));
    let gap = list[1].0 - end_of(&list[0]);
    assert!(gap.abs() < 0.1, "second Period starts {gap:.3} s after the first one's media ends");
    let status = get_json(&app.url("/live/restart"));
    assert_eq!(status["status"]["health"]["discontinuities"], 1, "{status}");
    // The admin API says when and what, in the stream's recent faults.
    let detail = get_json(&app.url("/api/v1/streams/restart"));
    let recent = detail["status"]["health"]["recent"].as_array().unwrap();
    assert!(recent.iter().any(|e| e["what"].as_str().unwrap().contains("timestamps jumped")), "{detail}");
    // Segments of both Periods decode.
    for (_, segs) in &list {
        let seg = &segs[0];
        let init = seg.url.rsplit_once('/').unwrap().0.to_owned() + "/";
        let session = seg.url.rsplit('/').next().unwrap().split('-').next().unwrap();
        let init = get_bytes(&app.url(&format!("{init}init-{session}.mp4")));
        let (codec, _, _, frames) = probe(&init, &get_bytes(&app.url(&seg.url)));
        assert_eq!(codec, "h264");
        assert!(!frames.is_empty());
    }
}

#[test]
fn ffmpegs_wrap_at_2_pow_31_ms_does_not_freeze_the_stream() {
    let app = Appliance::start(None);
    // ffmpeg's FLV timestamps start at 2147466352 ms here and jump to 5 after about 17 s.
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "24"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-output_ts_offset", "4294950", "-f", "flv", &app.publish_url("live", "wrap")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Follow the total number of listed video segments; the longest wait for a new one is
    // the viewer-visible freeze.
    let started = Instant::now();
    let (mut last_total, mut last_change, mut longest) = (0, Instant::now(), Duration::ZERO);
    while started.elapsed() < Duration::from_secs(24) {
        let total: u64 = periods(&app, "wrap").iter().map(|(_, s)| s.last().map_or(0, |l| l.number)).sum();
        if total != last_total {
            if last_total > 0 {
                longest = longest.max(last_change.elapsed());
            }
            last_total = total;
            last_change = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    let list = periods(&app, "wrap");
    eprintln!("2^31 wrap: {} Periods, longest wait for a new video segment {longest:?}", list.len());
    assert!(list.len() >= 2, "a new Period after the jump: {} Period(s)", list.len());
    assert!(list.last().unwrap().1.len() >= 3, "segments after the jump");
    assert!(longest < Duration::from_secs(3), "the stream froze for {longest:?}");
    let gap = list[1].0 - end_of(&list[0]);
    assert!(gap.abs() < 0.1, "the Period after the jump starts {gap:.3} s after the media before it");
}

#[test]
fn a_publisher_faster_than_real_time_is_paced() {
    let app = Appliance::start(None);
    let started = Instant::now();
    // No -re: ffmpeg encodes 12 s of 240p far faster than real time.
    let ffmpeg = Publisher::start_unpaced(&app.publish_url("live", "fast"), 12, "320x240");
    app.wait_for_log("broadcaster sends faster than real time; pacing it", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(5).saturating_sub(started.elapsed()));
    let listed: usize = periods(&app, "fast").iter().map(|(_, s)| s.len()).sum();
    assert!(listed <= 8, "{listed} segments listed after 5 s of wall time");
    let status = get_json(&app.url("/live/fast"));
    assert_eq!(status["status"]["health"]["paced"], true, "{status}");
    // ffmpeg may be done long before (socket and channel buffers hold the rest); the stream
    // ends once its media has been taken in at real time.
    let (status, _) = ffmpeg.wait(Duration::from_secs(30));
    assert!(status.success());
    wait_until("the stream's end", Duration::from_secs(20), || {
        fetch_mpd(&app, "fast").filter(|m| m.mpdtype.as_deref() == Some("static"))
    });
    assert!(started.elapsed() >= Duration::from_secs(9), "12 s of media went in within {:?}", started.elapsed());
}

#[test]
fn a_connected_publisher_that_produces_nothing_is_reported_as_stalled() {
    let app = Appliance::start(Some("[ingest]\nidle_timeout = \"60s\"\n"));
    let clip = flv::make("320x240", 4);
    let mut publisher = ScriptedPublisher::connect(&app.rtmp, "live", "quiet");
    publisher.play(&clip, 0).unwrap();
    wait_until("segments", Duration::from_secs(10), || (!periods(&app, "quiet").is_empty()).then_some(()));
    // The connection stays open and silent (within the idle time-out).
    app.wait_for_log("no segment produced while the broadcaster is connected", Duration::from_secs(8));
    let response = get(&app.url("/live/quiet"));
    assert_eq!(response.status(), 200, "{}\n{}", response.text().unwrap(), app.logs());
    let status = get_json(&app.url("/live/quiet"));
    assert_eq!(status["status"]["health"]["stalled"], true, "{status}");
    assert_eq!(status["status"]["health"]["stalls"], 1, "{status}");
    drop(publisher);
}

#[test]
fn a_listed_segment_never_changes_and_the_video_timeline_is_contiguous() {
    let app = Appliance::start(None);
    let _publisher = Publisher::start(&app.publish_url("live", "steady"), 10, "320x240");
    let mut listed: std::collections::HashMap<(String, String, u64), (u64, u64)> = Default::default();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(9) {
        if let Some(mpd) = fetch_mpd(&app, "steady") {
            for period in &mpd.periods {
                for set in &period.adaptations {
                    for rep in &set.representations {
                        let list = segments("steady", rep).1;
                        for pair in list.windows(2).filter(|_| set.contentType.as_deref() == Some("video")) {
                            assert_eq!(pair[0].time + pair[0].duration, pair[1].time, "video timeline has a gap or overlap: {pair:?}");
                        }
                        for seg in list {
                            let key = (period.id.clone().unwrap_or_default(), rep.id.clone().unwrap_or_default(), seg.number);
                            let first = *listed.entry(key.clone()).or_insert((seg.time, seg.duration));
                            assert_eq!(first, (seg.time, seg.duration), "segment {key:?} was listed as (t, d) = {first:?}, now {:?}", (seg.time, seg.duration));
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(listed.len() >= 10, "segments seen: {}", listed.len());
}
