//! Publishers that pad their audio, against the real binary over loopback RTMP while a real
//! ffmpeg stream is live. 256 KB audio messages (AAC frames are under 8 KB) are refused at
//! the chunk guard: the connection is cut, counted and logged, memory stays flat and the
//! other stream loses no segment. Audio padded to just under the audio cap is taken, but
//! the packager's byte caps bound it: a stream whose segments pass
//! `package.max_stream_bytes` loses its oldest segments (counted, live edge kept), and one
//! whose audio fragments pass `package.max_fragment_bytes` is ended alone.

use std::time::{Duration, Instant};

use bytes::Bytes;
use crate::support::flv::{self, ScriptedPublisher, Tag};
use crate::support::*;

/// The listed video segment numbers of the stream's last Period.
fn video_numbers(app: &Appliance, stream: &str) -> Vec<u64> {
    let Some(mpd) = fetch_mpd(app, stream) else { return Vec::new() };
    let Some(period) = mpd.periods.last() else { return Vec::new() };
    let Some(video) = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video")) else {
        return Vec::new();
    };
    segments(stream, &video.representations[0]).1.iter().map(|s| s.number).collect()
}

/// `tags` with every AAC frame (not the sequence header) padded with zeros to `size` bytes.
fn padded(tags: &[Tag], size: usize) -> Vec<Tag> {
    tags.iter()
        .map(|tag| {
            let mut tag = tag.clone();
            if tag.kind == 8 && tag.data.get(1) == Some(&1) && tag.data.len() < size {
                let mut data = tag.data.to_vec();
                data.resize(size, 0);
                tag.data = Bytes::from(data);
            }
            tag
        })
        .collect()
}

fn ingest_counter(app: &Appliance, name: &str) -> u64 {
    app.metrics().count(&format!("rackcast_ingest_{name}_total"))
}

/// Numbered without a hole, and the newest listed segment served.
fn assert_no_gap(app: &Appliance, stream: &str, numbers: &[u64]) {
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{stream}: no segment lost: {numbers:?}");
    let mpd = fetch_mpd(app, stream).unwrap();
    for rep in mpd.periods.last().unwrap().adaptations.iter().flat_map(|a| &a.representations) {
        let newest = segments(stream, rep).1.last().cloned().unwrap();
        assert_eq!(get(&app.url(&newest.url)).status(), 200, "{} served", newest.url);
    }
}

#[test]
fn audio_of_256_kb_is_cut_at_the_guard_and_another_stream_goes_on() {
    const HOSTILE_FOR: Duration = Duration::from_secs(20);
    let app = Appliance::start(None);
    let _main = Publisher::start(&app.publish_url("live", "main"), 45, "320x240");
    wait_until("main stream segments", Duration::from_secs(25), || (video_numbers(&app, "main").len() >= 2).then_some(()));
    let first = video_numbers(&app, "main");
    let rss_before = app.rss_kib();

    // A broadcaster that pads every AAC frame to 256 KB at the normal frame rate, and
    // reconnects (as encoders do) each time it is cut, for 20 s.
    let clip = padded(&flv::make("320x240", 3), 256 * 1024);
    let started = Instant::now();
    let mut attempts = 0u64;
    while started.elapsed() < HOSTILE_FOR {
        attempts += 1;
        let mut hostile = ScriptedPublisher::connect(&app.rtmp, "live", &format!("padded-{attempts}"));
        // Cut at the first padded frame: a send fails, or the server closes the socket.
        let sent_all = hostile.play(&clip, 0).is_ok();
        assert!(hostile.closed_by_server(Duration::from_secs(2)), "attempt {attempts}: the connection was not cut (sent all: {sent_all})");
        // An encoder's reconnect back-off (each attempt starts a pipeline before it is cut).
        std::thread::sleep(Duration::from_secs(1));
        if attempts % 5 == 0 {
            eprintln!("after {attempts} attempts: RSS {} MiB", app.rss_kib() / 1024);
        }
    }
    app.wait_for_log("audio message of 262144 bytes: no AAC or Opus frame is that large", Duration::from_secs(2));
    let cut = ingest_counter(&app, "audio_too_large");
    assert_eq!(cut, attempts, "every attempt cut and counted");
    assert!(ingest_counter(&app, "guard_rejections") >= attempts);
    let rss_after = app.rss_kib();
    eprintln!("{attempts} attempts of 256 KB audio in {HOSTILE_FOR:?}: RSS {} MiB before, {} MiB after", rss_before / 1024, rss_after / 1024);
    assert!(rss_after.saturating_sub(rss_before) < 50 * 1024, "RSS grew by {} KiB", rss_after - rss_before);

    // The main stream went on throughout: no hole, about a segment a second.
    let numbers = video_numbers(&app, "main");
    let produced = numbers.last().unwrap() - first.last().unwrap();
    assert!(produced + 3 >= HOSTILE_FOR.as_secs(), "{produced} segments in {HOSTILE_FOR:?}: {numbers:?}");
    assert_no_gap(&app, "main", &numbers);
    assert_eq!(app.terminate(Duration::from_secs(15)).code(), Some(0));
}

/// One video rung, a small DVR byte budget: 6 MiB per stream, 1 MiB per fragment.
const CAPS: &str = r#"
[transcode]
x264_preset = "ultrafast"
rungs = [{ height = 240, bitrate_kbps = 300 }]

[package]
max_fragment_bytes = 1048576
max_stream_bytes = 6291456
"#;

#[test]
fn padded_audio_under_the_cap_is_bounded_by_the_stream_and_fragment_caps() {
    let app = Appliance::start(Some(CAPS));
    let _main = Publisher::start(&app.publish_url("live", "main"), 45, "320x240");
    wait_until("main stream segments", Duration::from_secs(25), || (video_numbers(&app, "main").len() >= 2).then_some(()));
    let first = video_numbers(&app, "main");
    let rss_before = app.rss_kib();
    let clip = flv::make("320x240", 16);

    // 16 KB frames at 47 a second: about 750 KB of audio a segment, under the fragment cap;
    // a 30 s DVR window of them (22 MB) is over the stream cap, so the oldest go early.
    let evicting = std::thread::spawn({
        let (rtmp, clip) = (app.rtmp.clone(), padded(&clip, 16 * 1024));
        move || {
            let mut publisher = ScriptedPublisher::connect(&rtmp, "live", "padded-16k");
            publisher.play(&clip, 0)
        }
    });
    // 30 KB frames: 1.4 MB a segment, over the fragment cap: that stream alone is ended.
    let mut cut = ScriptedPublisher::connect(&app.rtmp, "live", "padded-30k");
    let _ = cut.play(&padded(&clip[..clip.len() / 2], 30 * 1024), 0);
    app.wait_for_log("fragment over package.max_fragment_bytes refused; the stream ends", Duration::from_secs(10));
    assert!(cut.closed_by_server(Duration::from_secs(10)), "the stream over the fragment cap was ended");
    evicting.join().unwrap().expect("the stream under the fragment cap is never cut");

    app.wait_for_log("stream over package.max_stream_bytes: its oldest segments left the DVR window early", Duration::from_secs(5));
    let evicted = app.metrics().value("rackcast_package_segments_evicted_for_bytes_total", &[]);
    let too_large = app.metrics().value("rackcast_package_fragments_too_large_total", &[]);
    eprintln!("segments evicted for bytes: {evicted}, fragments refused: {too_large}");
    assert!(evicted >= 1.0 && too_large >= 1.0);
    // The window the byte cap left: well under 16 s of its segments.
    let kept = video_numbers(&app, "padded-16k");
    assert!(!kept.is_empty() && kept.len() < 12, "padded-16k lists {kept:?}");
    let rss_after = app.rss_kib();
    eprintln!("RSS {} MiB before, {} MiB after", rss_before / 1024, rss_after / 1024);
    assert!(rss_after.saturating_sub(rss_before) < 50 * 1024, "RSS grew by {} KiB", rss_after - rss_before);

    // The main stream never noticed.
    let numbers = video_numbers(&app, "main");
    assert!(numbers.last() > first.last(), "main advanced: {numbers:?}");
    assert_no_gap(&app, "main", &numbers);
    assert_eq!(app.terminate(Duration::from_secs(15)).code(), Some(0));
}
