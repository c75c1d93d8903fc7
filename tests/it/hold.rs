//! A broadcaster whose connection drops, on a node with `package.hold_last_frame`: the
//! stream holds its Period with the last keyframe's picture and silence (segments keep
//! coming, and they decode), the broadcaster's reconnect continues the same Period (one
//! Period throughout, numbering and media time contiguous, no HLS discontinuity), and past
//! the hold the Period ends where the held media ends.

use std::time::Duration;

use crate::support::*;

const STREAM: &str = "holdcam";
const HOLD: Duration = Duration::from_secs(4);
const CONFIG: &str = "[transcode]\nx264_preset = \"ultrafast\"\n[package]\nhold_last_frame = \"4s\"\n";

/// The newest video segment the MPD lists: its number, and the Period's id.
fn newest(mpd: &dash_mpd_core::MPD) -> Option<(u64, String)> {
    let period = mpd.periods.last()?;
    let video = period.adaptations.iter().find(|a| a.contentType.as_deref() == Some("video"))?;
    let (_, list) = segments(STREAM, video.representations.first()?);
    Some((list.last()?.number, period.id.clone()?))
}

#[test]
fn a_dropped_broadcaster_is_held_and_its_reconnect_continues_the_period() {
    let _ladder = one_ladder_at_a_time();
    let app = Appliance::start(Some(CONFIG));
    let url = app.publish_url("live", STREAM);
    let publisher = Publisher::start(&url, 120, "640x360");
    let (before_drop, period) = wait_until("4 segments", Duration::from_secs(30), || newest(&fetch_mpd(&app, STREAM)?).filter(|(n, _)| *n >= 4));

    // The connection drops without an unpublish (ffmpeg killed): segments go on.
    drop(publisher);
    let (held, held_period) = wait_until("segments while the broadcaster is away", Duration::from_secs(10), || {
        newest(&fetch_mpd(&app, STREAM)?).filter(|(n, _)| *n >= before_drop + 2)
    });
    assert_eq!(held_period, period, "the held segments are in the same Period");
    let metrics = Metrics::scrape(&app.url(""));
    assert_eq!(metrics.count("rackcast_stream_holds_total"), 1);
    // A segment made while held decodes: a whole second of the held picture, and silence.
    let mpd = fetch_mpd(&app, STREAM).unwrap();
    for adaptation in &mpd.periods[0].adaptations {
        let representation = adaptation.representations.first().unwrap();
        let (init, list) = segments(STREAM, representation);
        let segment = list.iter().find(|s| s.number == held).unwrap();
        let (codec, _, _, frames) = probe(&get_bytes(&app.url(&init)), &get_bytes(&app.url(&segment.url)));
        let seconds = segment.duration as f64 / segment.timescale as f64;
        assert!((0.9..=1.1).contains(&seconds), "held segment {held} of {codec} lasts {seconds} s");
        if codec == "h264" {
            assert!(frames.len() >= 28, "held segment {held}: {} frames", frames.len());
            assert!(frames[0].1, "held segment {held} starts with a keyframe");
        }
    }

    // The broadcaster reconnects (its timestamps start from zero again): the same Period.
    let again = Publisher::start(&url, 120, "640x360");
    wait_until("segments after the reconnect", Duration::from_secs(20), || {
        newest(&fetch_mpd(&app, STREAM)?).filter(|(n, _)| *n >= held + 4)
    });
    let metrics = Metrics::scrape(&app.url(""));
    assert_eq!(metrics.count("rackcast_stream_resumed_holds_total"), 1, "the reconnect resumed the held stream");
    let mpd = fetch_mpd(&app, STREAM).unwrap();
    assert_eq!(mpd.periods.len(), 1, "one Period across the drop and the reconnect");
    assert_eq!(mpd.periods[0].id.as_deref(), Some(period.as_str()));
    for adaptation in &mpd.periods[0].adaptations {
        let representation = adaptation.representations.first().unwrap();
        let (_, list) = segments(STREAM, representation);
        for pair in list.windows(2) {
            assert_eq!(pair[1].number, pair[0].number + 1, "contiguous numbering: {:?}", adaptation.contentType);
            assert_eq!(pair[1].time, pair[0].time + pair[0].duration, "no gap in the media: {:?} at {}", adaptation.contentType, pair[1].number);
        }
        for segment in &list {
            let seconds = segment.duration as f64 / segment.timescale as f64;
            assert!((0.9..=1.1).contains(&seconds), "{:?} segment {} lasts {seconds} s", adaptation.contentType, segment.number);
        }
    }
    // The audio after the reconnect is the broadcaster's tone again, not the held silence.
    let audio = mpd.periods[0].adaptations.iter().find(|a| a.contentType.as_deref() == Some("audio")).unwrap();
    let (_, list) = segments(STREAM, &audio.representations[0]);
    let size = |number: u64| get_bytes(&app.url(&list.iter().find(|s| s.number == number).unwrap().url)).len();
    let (silent, tone) = (size(held), size(list.last().unwrap().number));
    println!("audio segment {held} (held): {silent} bytes; {} (after the reconnect): {tone} bytes", list.last().unwrap().number);
    assert!(tone > 3 * silent, "held silence {silent} bytes, the broadcaster's audio {tone} bytes");
    let playlist = get(&app.url(&format!("/live/{STREAM}/audio/media.m3u8"))).text().unwrap();
    assert!(!playlist.lines().any(|l| l == "#EXT-X-DISCONTINUITY"), "no discontinuity:\n{playlist}");

    // Dropped again and not back: past the hold, the Period ends after the held media.
    let (before_second_drop, _) = newest(&fetch_mpd(&app, STREAM).unwrap()).unwrap();
    drop(again);
    let ended = wait_until("the Period's end after the hold", HOLD + Duration::from_secs(15), || {
        let mpd = fetch_mpd(&app, STREAM)?;
        (mpd.periods[0].duration.is_some() || mpd.mpdtype.as_deref() == Some("static")).then_some(mpd)
    });
    let (last, _) = newest(&ended).unwrap();
    assert!(last >= before_second_drop + 3, "held segments before the end: {before_second_drop} when dropped, {last} at the end");
    let metrics = Metrics::scrape(&app.url(""));
    assert_eq!((metrics.count("rackcast_stream_holds_total"), metrics.count("rackcast_stream_resumed_holds_total")), (2, 1));
}
