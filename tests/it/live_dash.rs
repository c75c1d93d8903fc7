//! End to end on one appliance: ffmpeg publishes RTMP, the live MPD and every
//! Representation's segments are checked and decoded, then the broadcaster stops and
//! publishes again under the same key.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const STREAM: &str = "studio-a";

/// Waits for a live MPD whose every Representation lists at least `count` segments.
fn wait_for_segments(app: &Appliance, count: usize, within: Duration) -> dash_mpd_core::MPD {
    wait_until(&format!("a live MPD with {count} segments in every Representation"), within, || {
        let mpd = fetch_mpd(app, STREAM)?;
        let period = mpd.periods.last()?;
        let reps: Vec<_> = period.adaptations.iter().flat_map(|a| &a.representations).collect();
        let ready = reps.len() == 4 && reps.iter().all(|r| segments(STREAM, r).1.len() >= count);
        (ready && mpd.mpdtype.as_deref() == Some("dynamic")).then_some(mpd)
    })
}

#[test]
fn publish_play_stop_and_republish() {
    let _ladder = one_ladder_at_a_time();
    let app = Appliance::start(None);
    let publisher = Publisher::start(&app.publish_url("live", STREAM), 12, "1280x720");

    let mpd = wait_for_segments(&app, 6, Duration::from_secs(25));

    // Manifest-wide fields of a live presentation.
    assert_eq!(mpd.mpdtype.as_deref(), Some("dynamic"));
    assert!(mpd.availabilityStartTime.is_some() && mpd.publishTime.is_some());
    assert_eq!(mpd.minimumUpdatePeriod, Some(Duration::from_secs(1)));
    assert_eq!(mpd.timeShiftBufferDepth, Some(Duration::from_secs(30)));
    assert!(mpd.suggestedPresentationDelay.is_some_and(|d| d <= Duration::from_millis(2500)));
    assert!(mpd.minBufferTime.is_some());
    assert_eq!(mpd.periods.len(), 1);
    let period = &mpd.periods[0];
    let session = period.id.clone().unwrap();
    assert_eq!(period.adaptations.len(), 2, "one video and one audio AdaptationSet");

    // Video: every rung up to the 720p source, never above it.
    let video = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video")).unwrap();
    let mut rungs: Vec<(String, u64, u64)> = Vec::new();
    for rep in &video.representations {
        assert!(rep.codecs.as_deref().unwrap().starts_with("avc1.64"), "{:?}", rep.codecs);
        assert!(rep.bandwidth.unwrap() >= 500_000);
        rungs.push((rep.id.clone().unwrap(), rep.width.unwrap(), rep.height.unwrap()));
    }
    assert_eq!(
        rungs,
        [("720p".into(), 1280, 720), ("480p".into(), 854, 480), ("360p".into(), 640, 360)]
    );
    let audio = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("audio")).unwrap();
    assert_eq!(audio.representations.len(), 1);
    assert_eq!(audio.representations[0].codecs.as_deref(), Some("mp4a.40.2"));

    // Every Representation: init + 5 contiguous media segments decode, ~1 s each.
    let mut keyframes: HashMap<u64, Vec<(String, f64)>> = HashMap::new();
    let mut first_urls = Vec::new();
    for rep in video.representations.iter().chain(&audio.representations) {
        let id = rep.id.clone().unwrap();
        let (init_url, list) = segments(STREAM, rep);
        assert!(init_url.contains(&session) && list[0].url.contains(&session), "URLs carry the session id");
        let init = get_bytes(&app.url(&init_url));
        let recent = &list[list.len() - 5..];
        for pair in recent.windows(2) {
            assert_eq!(pair[1].number, pair[0].number + 1, "{id}: contiguous numbering");
            assert_eq!(pair[1].time, pair[0].time + pair[0].duration, "{id}: no gap in the timeline");
        }
        for seg in recent {
            let seconds = seg.duration as f64 / seg.timescale as f64;
            assert!((0.9..=1.1).contains(&seconds), "{id} segment {} lasts {seconds} s", seg.number);
            let (codec, width, height, frames) = probe(&init, &get_bytes(&app.url(&seg.url)));
            if id == "audio" {
                assert_eq!(codec, "aac");
                continue;
            }
            assert_eq!(codec, "h264");
            let expected = rungs.iter().find(|r| r.0 == id).unwrap();
            assert_eq!((u64::from(width), u64::from(height)), (expected.1, expected.2), "{id} decodes at its size");
            assert!(frames.len() >= 28, "{id} segment {} has {} frames", seg.number, frames.len());
            let (pts, key) = frames[0];
            assert!(key, "{id} segment {} starts with a keyframe", seg.number);
            assert_eq!(frames.iter().filter(|f| f.1).count(), 1, "{id} segment {}: one keyframe", seg.number);
            keyframes.entry(seg.number).or_default().push((id.clone(), pts));
            let start = seg.time as f64 / seg.timescale as f64;
            assert!((pts - start).abs() < 0.002, "{id} segment {}: MPD says {start} s, media says {pts} s", seg.number);
        }
        first_urls.push(app.url(&recent[0].url));
    }
    // Audio segment N covers the same second as video segment N: it starts within one AAC
    // frame (1024 samples) of it.
    let (_, video_list) = segments(STREAM, &video.representations[0]);
    let (_, audio_list) = segments(STREAM, &audio.representations[0]);
    let mut compared = 0;
    for a in audio_list.iter().filter(|a| a.number > 1) {
        let Some(v) = video_list.iter().find(|v| v.number == a.number) else { continue };
        let (a_start, v_start) = (a.time as f64 / a.timescale as f64, v.time as f64 / v.timescale as f64);
        assert!((a_start - v_start).abs() <= 1024.0 / 48_000.0, "segment {}: audio starts at {a_start} s, video at {v_start} s", a.number);
        compared += 1;
    }
    assert!(compared >= 4, "audio and video segments compared: {compared}");

    // Keyframes aligned: segment N starts at the same media time, on an exact second, in every rung.
    let aligned: Vec<_> = keyframes.iter().filter(|(_, v)| v.len() == 3).collect();
    assert!(aligned.len() >= 3, "segments common to all rungs: {keyframes:?}");
    for (number, starts) in aligned {
        assert!(starts.iter().all(|s| (s.1 - starts[0].1).abs() < 1e-6), "segment {number}: {starts:?}");
        assert!((starts[0].1 - starts[0].1.round()).abs() < 0.002, "segment {number} starts on a second: {starts:?}");
    }

    // The broadcaster stops: the MPD turns static.
    let (status, stderr) = publisher.wait(Duration::from_secs(30));
    assert!(status.success(), "ffmpeg failed: {stderr}");
    let ended = wait_until("a static MPD after the publisher stopped", Duration::from_secs(10), || {
        fetch_mpd(&app, STREAM).filter(|m| m.mpdtype.as_deref() == Some("static"))
    });
    assert!(ended.mediaPresentationDuration.is_some_and(|d| d >= Duration::from_secs(8)));
    assert!(ended.minimumUpdatePeriod.is_none());
    let list: serde_json::Value = serde_json::from_str(&get(&app.url("/live")).text().unwrap()).unwrap();
    assert_eq!(list[0]["stream"], STREAM);
    assert_eq!(list[0]["live"], false);

    // Republish under the same key: a new Period with new URLs; old URLs keep their bytes.
    let old_bytes: Vec<Vec<u8>> = first_urls.iter().map(|u| get_bytes(u)).collect();
    let again = Publisher::start(&app.publish_url("live", STREAM), 5, "1280x720");
    let mpd = wait_until("a live MPD with a new Period", Duration::from_secs(20), || {
        fetch_mpd(&app, STREAM).filter(|m| {
            m.mpdtype.as_deref() == Some("dynamic")
                && m.periods.last().and_then(|p| p.id.clone()).is_some_and(|id| id != session)
                && m.periods.last().is_some_and(|p| p.adaptations.len() == 2)
        })
    });
    let new_period = mpd.periods.last().unwrap();
    let new_session = new_period.id.clone().unwrap();
    for rep in new_period.adaptations.iter().flat_map(|a| &a.representations) {
        let (init_url, list) = segments(STREAM, rep);
        assert!(init_url.contains(&new_session) && !init_url.contains(&session));
        assert!(list.iter().all(|s| s.url.contains(&new_session)));
    }
    for (url, bytes) in first_urls.iter().zip(&old_bytes) {
        assert_eq!(&get_bytes(url), bytes, "{url} still names the same bytes");
    }
    let (status, stderr) = again.wait(Duration::from_secs(20));
    assert!(status.success(), "second ffmpeg failed: {stderr}");
    let status = app.terminate(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
}

#[test]
fn aac_other_than_lc_is_transcoded_to_lc() {
    let app = Appliance::start(None);
    let _publisher = Publisher::start_with_audio(&app.publish_url("live", "main-profile"), 8, "320x240", "aac_main");
    let mpd = wait_until("the audio rendition", Duration::from_secs(20), || {
        let mpd = fetch_mpd(&app, "main-profile")?;
        let audio = mpd.periods.last()?.adaptations.iter().find(|a| a.contentType.as_deref() == Some("audio"))?.clone();
        (segments("main-profile", &audio.representations[0]).1.len() >= 2).then_some(mpd)
    });
    let audio = mpd.periods.last().unwrap().adaptations.iter().find(|a| a.contentType.as_deref() == Some("audio")).unwrap();
    let rep = &audio.representations[0];
    assert_eq!(rep.codecs.as_deref(), Some("mp4a.40.2"), "re-encoded as AAC-LC");
    let (init, list) = segments("main-profile", rep);
    let (codec, ..) = probe(&get_bytes(&app.url(&init)), &get_bytes(&app.url(&list[1].url)));
    assert_eq!(codec, "aac");
    app.wait_for_log("audio=Transcode", Duration::from_secs(1));
}

/// The stream's first Period once `count` segments of its every Representation are listed.
fn wait_for_period(app: &Appliance, stream: &str, count: usize) -> dash_mpd_core::Period {
    wait_until(&format!("{stream}: {count} segments in every Representation"), Duration::from_secs(25), || {
        let period = fetch_mpd(app, stream)?.periods.first()?.clone();
        let reps: Vec<_> = period.adaptations.iter().flat_map(|a| &a.representations).collect();
        (!reps.is_empty() && reps.iter().all(|r| segments(stream, r).1.len() >= count)).then_some(period)
    })
}

#[test]
fn an_audio_only_publish_gets_an_audio_only_mpd() {
    let app = Appliance::start(None);
    let publisher = Publisher::audio_only(&app.publish_url("live", "radio"), 7);
    let period = wait_for_period(&app, "radio", 3);
    assert_eq!(period.adaptations.len(), 1, "one AdaptationSet: {period:?}");
    let audio = &period.adaptations[0];
    assert_eq!(audio.contentType.as_deref(), Some("audio"));
    let rep = &audio.representations[0];
    assert_eq!(rep.codecs.as_deref(), Some("mp4a.40.2"));
    let (init, list) = segments("radio", rep);
    let init = get_bytes(&app.url(&init));
    for seg in &list[1..3] {
        let (codec, ..) = probe(&init, &get_bytes(&app.url(&seg.url)));
        assert_eq!(codec, "aac");
        // Cut on the segment grid: within one AAC frame of a whole second.
        let start = seg.time as f64 / seg.timescale as f64;
        assert!((start - start.round()).abs() <= 1024.0 / 48_000.0, "segment {} starts at {start} s", seg.number);
    }
    let status = get_json(&app.url("/live/radio"));
    assert_eq!(status["live"], true, "{status}");
    let (exit, stderr) = publisher.wait(Duration::from_secs(20));
    assert!(exit.success(), "ffmpeg failed: {stderr}");
}

#[test]
fn portrait_sources_get_rungs_by_their_short_side() {
    let _ladder = one_ladder_at_a_time();
    let app = Appliance::start(None);
    // 10 frames a second keeps a 1080x1920 source and its four rungs affordable here.
    // Constant bitrates high enough for each ladder's top rung, so the measured plan keeps
    // the provisional one.
    let cases: [(&str, &str, &str, &[(&str, u64, u64)]); 2] = [
        ("phone", "720x1280", "2500k", &[("720p", 720, 1280), ("480p", 480, 854), ("360p", 360, 640)]),
        ("tall", "1080x1920", "5000k", &[("1080p", 1080, 1920), ("720p", 720, 1280), ("480p", 480, 854), ("360p", 360, 640)]),
    ];
    for (stream, size, bitrate, expected) in cases {
        let source = format!("testsrc2=size={size}:rate=10");
        let publisher = Publisher::with_args(
            &app.publish_url("live", stream),
            &[
                "-re", "-f", "lavfi", "-i", &source, "-t", "7", "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-pix_fmt", "yuv420p",
                "-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate, "-bufsize", bitrate, "-x264-params", "nal-hrd=cbr",
            ],
        );
        let period = wait_for_period(&app, stream, 2);
        let video = &period.adaptations[0];
        let rungs: Vec<(&str, u64, u64)> =
            video.representations.iter().map(|r| (r.id.as_deref().unwrap(), r.width.unwrap(), r.height.unwrap())).collect();
        assert_eq!(rungs, expected, "{stream} ({size})");
        assert_eq!(video.par.as_deref(), Some("9:16"));
        for rep in &video.representations {
            let (init, list) = segments(stream, rep);
            let (codec, width, height, frames) = probe(&get_bytes(&app.url(&init)), &get_bytes(&app.url(&list[1].url)));
            assert_eq!((codec.as_str(), u64::from(width), u64::from(height)), ("h264", rep.width.unwrap(), rep.height.unwrap()));
            assert!(frames.len() >= 9, "{stream}/{:?}: {} frames", rep.id, frames.len());
        }
        let (exit, stderr) = publisher.wait(Duration::from_secs(25));
        assert!(exit.success(), "ffmpeg failed: {stderr}");
    }
    // The provisional ladder was already right: the first measurement re-planned nothing.
    // (A host too loaded to keep up may still shed rungs; that is a different re-plan.)
    assert!(!app.logs().contains("re-plan at the next keyframe reason=initial measurement"), "{}", app.logs());
}

const READER_STREAM: &str = "recorded";
/// A 4 s DVR window, so the stream is older than it well before the reader starts.
const READER_CONFIG: &str = "[transcode]\nx264_preset = \"ultrafast\"\n[package]\ndvr_window = \"4s\"\n";

/// 404s answered for segments so far.
fn segment_404s(app: &Appliance) -> f64 {
    app.metrics().get("rackcast_http_requests_total", &[("route", "/live/:stream/:rendition/:file"), ("status", "404")]).unwrap_or(0.0)
}

/// ffmpeg without `-re` (as `ffmpeg -i URL -c copy out.mp4` records or restreams) reads
/// faster than real time and asks for the next segment before it is written: the server
/// waits for that segment instead of answering 404, so the recording holds the 20 s asked
/// for; a segment further ahead is still refused at once.
#[test]
fn ffmpeg_records_a_live_stream_older_than_its_dvr_window_without_a_404() {
    let app = Appliance::start(Some(READER_CONFIG));
    let _publisher = Publisher::start(&app.publish_url("live", READER_STREAM), 60, "640x360");
    let period = wait_until("a stream older than its 4 s DVR window", Duration::from_secs(30), || {
        let period = fetch_mpd(&app, READER_STREAM)?.periods.last()?.clone();
        let video = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video"))?;
        (segments(READER_STREAM, &video.representations[0]).1.first()?.number > 4).then_some(period)
    });

    // Further ahead than the next segment (the store may be a segment ahead of the MPD
    // read here): 404 at once, no request parked on a future number.
    let video = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video")).unwrap();
    let (_, listed) = segments(READER_STREAM, &video.representations[0]);
    let newest = listed.last().unwrap();
    let ahead = newest.url.replace(&format!("-{}.m4s", newest.number), &format!("-{}.m4s", newest.number + 4));
    let asked = std::time::Instant::now();
    assert_eq!(get(&app.url(&ahead)).status(), 404, "{ahead}");
    assert!(asked.elapsed() < Duration::from_millis(500), "a segment four ahead was refused after {:?}", asked.elapsed());

    let before = segment_404s(&app);
    let out = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
    let url = app.url(&format!("/live/{READER_STREAM}/manifest-number.mpd"));
    let mut recorder = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", &url, "-t", "20", "-c", "copy"])
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // 20 s of media read in real time, and time to start; a reader stuck on 404s never ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = recorder.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = recorder.kill();
            let _ = recorder.wait();
            panic!("ffmpeg had not recorded 20 s after 60 s (stuck on missing segments?)");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "ffmpeg exited with {status}");
    assert_eq!(segment_404s(&app) - before, 0.0, "no segment request of the recording was answered 404");

    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries", "stream=nb_read_packets:format=duration", "-of", "default=nw=1"])
        .arg(out.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&probe.stdout);
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix('=')?.parse::<f64>().ok());
    let (frames, duration) = (field("nb_read_packets").unwrap_or(0.0), field("duration").unwrap_or(0.0));
    println!("recorded {duration:.2} s, {frames} video frames");
    assert!((19.0..=21.0).contains(&duration), "the recording holds {duration} s, not the 20 s asked for ({text})");
    assert!(frames >= 19.0 * 30.0, "{frames} video frames in 20 s at 30 fps");
}
