//! LL-HLS on the live node, from the same chunks as low-latency DASH: the media playlist
//! lists each segment's parts as byte ranges of it (strict grammar, part target over every
//! part, sequence numbers and parts the same on every reload), a blocking reload for the
//! next part answers with a playlist that has it, one three segments ahead is refused, a
//! part fetched with `Range` while its segment grows is that slice of the complete
//! segment, a preload hint streams the rest of the segment from its offset, and ffprobe
//! decodes the rendition through its media playlist (a plain HLS client ignores the tags).
//! Each playlist reports the other renditions' last parts, which their playlists hold.
//! Once the stream is older than the skip boundary, a delta update (`_HLS_skip=YES`) lists
//! the full playlist's newest segments and skips the older ones. The first multivariant
//! playlist, asked for from the publish on, offers the video and the audio together.

use std::collections::HashMap;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::hls::{MediaPlaylist, PartLine, parse_media_of};
use crate::support::{Appliance, Publisher, get, get_bytes, one_ladder_at_a_time, output_within, wait_until};

const STREAM: &str = "llhlscam";
const CONFIG: &str = "[transcode]\nx264_preset = \"ultrafast\"\n[package]\nlow_latency = true\n";
const RENDITION: &str = "360p";
/// What the node answers a blocking reload with (`http::BLOCKING_PLAYLIST_CACHE`).
const BLOCKING_CACHE: &str = "public, max-age=1";

fn playlist_path(query: &str) -> String {
    format!("/live/{STREAM}/{RENDITION}/media.m3u8{query}")
}

/// The part after the newest one `playlist` lists: (msn, part index).
fn next_part(playlist: &MediaPlaylist) -> (u64, u64) {
    let last_segment = playlist.segments.last().unwrap().sequence;
    match playlist.parts.last() {
        Some(part) if part.msn > last_segment => (part.msn, part.index + 1),
        _ => (last_segment + 1, 0),
    }
}

fn range(url: &str, first: u64, last: Option<u64>) -> reqwest::blocking::Response {
    let value = format!("bytes={first}-{}", last.map(|l| l.to_string()).unwrap_or_default());
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    client.get(url).header("range", value).send().unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[test]
fn ll_hls_parts_hints_and_blocking_reload() {
    let _ladder = one_ladder_at_a_time();
    let app = Appliance::start(Some(CONFIG));
    let _publisher = Publisher::start(&app.publish_url("live", STREAM), 30, "640x360");
    // The first multivariant playlist a player can get, asked for from the publish on (a
    // request waits for it while the stream starts), offers the video with the audio group:
    // never the audio alone a moment before the video (hls.js reads it once).
    let master = wait_until("the multivariant playlist", Duration::from_secs(25), || {
        let response = get(&app.url(&format!("/live/{STREAM}/master.m3u8")));
        (response.status() == 200).then(|| response.text().unwrap())
    });
    let variants: Vec<&str> = master.lines().filter(|l| l.starts_with("#EXT-X-STREAM-INF:")).collect();
    assert!(master.contains("#EXT-X-MEDIA:TYPE=AUDIO,") && !variants.is_empty(), "{master}");
    assert!(variants.iter().all(|v| v.contains(",RESOLUTION=") && v.contains("AUDIO=\"audio\"")), "{master}");
    let plain = || {
        let response = get(&app.url(&playlist_path("")));
        (response.status() == 200).then(|| parse_media_of(STREAM, &response.text().unwrap(), RENDITION))
    };
    let first = wait_until("3 segments and parts in the 360p playlist", Duration::from_secs(25), || plain().filter(|m| m.segments.len() >= 3 && !m.parts.is_empty()));
    let part_target = first.part_target.expect("EXT-X-PART-INF");
    assert!(part_target >= 0.333, "the part target covers package.chunk_duration: {part_target}");
    let control = first.server_control.clone().expect("EXT-X-SERVER-CONTROL");
    let attribute = |name: &str| -> f64 {
        let value = control.split(',').find_map(|a| a.strip_prefix(name)?.strip_prefix('='));
        value.unwrap_or_else(|| panic!("{name} in {control}")).parse().unwrap()
    };
    assert!(control.starts_with("CAN-BLOCK-RELOAD=YES,"), "{control}");
    let hold_back = attribute("PART-HOLD-BACK");
    assert!(hold_back >= 3.0 * part_target - 0.001, "{control} with PART-TARGET={part_target}");
    let skip_until = attribute("CAN-SKIP-UNTIL");
    assert!(skip_until >= 6.0 * first.target as f64, "{control}: the skip boundary is at least six target durations");
    let audio = get(&app.url(&format!("/live/{STREAM}/audio/media.m3u8"))).text().unwrap();
    assert!(!parse_media_of(STREAM, &audio, "audio").parts.is_empty(), "{audio}");
    // The playlist reports the other renditions' last parts; a blocking reload of each for
    // its reported part answers at once with a playlist that lists it.
    let audio_playlist = format!("/live/{STREAM}/audio/media.m3u8");
    assert!(first.reports.iter().any(|r| r.playlist == audio_playlist), "{:?}", first.reports);
    for report in &first.reports {
        let part = report.last_part.expect("renditions with parts report their last");
        let response = get(&app.url(&format!("{}?_HLS_msn={}&_HLS_part={part}", report.playlist, report.last_msn)));
        assert_eq!(response.status(), 200, "{report:?}");
        let rendition = report.playlist.rsplit('/').nth(1).unwrap();
        let other = parse_media_of(STREAM, &response.text().unwrap(), rendition);
        assert!(other.parts.iter().any(|p| p.msn == report.last_msn && p.index == part) || other.segments.last().unwrap().sequence > report.last_msn, "{report:?}");
    }

    // Follow the live edge by blocking reloads, part by part; fetch each new part at once.
    let mut sequences: HashMap<String, u64> = HashMap::new();
    let mut parts: HashMap<(u64, u64), (PartLine, Vec<u8>)> = HashMap::new();
    let mut playlist = first;
    let mut waits = Vec::new();
    for _ in 0..15 {
        for segment in &playlist.segments {
            assert_eq!(*sequences.entry(segment.url.clone()).or_insert(segment.sequence), segment.sequence, "{} renumbered", segment.url);
        }
        for part in &playlist.parts {
            if let Some(segment) = playlist.segments.iter().find(|s| s.sequence == part.msn) {
                assert_eq!(segment.url, part.url, "part {}.{} names its segment", part.msn, part.index);
            }
            if let Some((known, _)) = parts.get(&(part.msn, part.index)) {
                assert_eq!((&known.url, known.offset, known.length), (&part.url, part.offset, part.length), "part {}.{} changed", part.msn, part.index);
                continue;
            }
            let response = range(&app.url(&part.url), part.offset, Some(part.offset + part.length - 1));
            assert_eq!(response.status(), 206, "part {}.{} of {}", part.msn, part.index, part.url);
            let bytes = response.bytes().unwrap().to_vec();
            assert_eq!(bytes.len() as u64, part.length);
            parts.insert((part.msn, part.index), (part.clone(), bytes));
        }
        let (msn, index) = next_part(&playlist);
        if let Some((hint_url, start)) = &playlist.hint {
            let expected = playlist.parts.last().filter(|p| p.msn == msn).map_or(0, |p| p.offset + p.length);
            assert_eq!(*start, expected, "the hint names the next part's first byte");
            assert!(hint_url.ends_with(".m4s"));
        }
        let started = Instant::now();
        let response = get(&app.url(&playlist_path(&format!("?_HLS_msn={msn}&_HLS_part={index}"))));
        let waited = started.elapsed();
        assert_eq!(response.status(), 200, "blocking reload for {msn}.{index}");
        assert_eq!(response.headers()["cache-control"], BLOCKING_CACHE);
        let next = parse_media_of(STREAM, &response.text().unwrap(), RENDITION);
        let has = next.parts.iter().any(|p| p.msn == msn && p.index == index) || next.segments.last().unwrap().sequence >= msn;
        assert!(has, "the answer to {msn}.{index} holds it");
        assert!(waited < Duration::from_secs(3 * next.target), "answered within three target durations: {waited:?}");
        waits.push(waited);
        playlist = next;
    }
    waits.sort();
    println!("blocking reloads for the next part: median {:?}, max {:?} (part target {part_target} s)", waits[waits.len() / 2], waits.last().unwrap());

    // A preload hint streams the rest of its segment from its offset.
    let (hint_url, start) = playlist.hint.clone().expect("a live playlist has a hint");
    let hinted = range(&app.url(&hint_url), start, None);
    // 416 only when the part listed last was its segment's last (complete since).
    assert!(matches!(hinted.status().as_u16(), 206 | 416), "{hint_url} from {start}: {}", hinted.status());
    let hinted = (hinted.status() == 206).then(|| hinted.bytes().unwrap().to_vec());
    let far = playlist.segments.last().unwrap().sequence + 3;
    assert_eq!(get(&app.url(&playlist_path(&format!("?_HLS_msn={far}")))).status(), 400, "three segments past the last");

    // Every part is the slice of its complete segment.
    thread::sleep(Duration::from_millis(1500));
    let mut segments: HashMap<String, Vec<u8>> = HashMap::new();
    let complete = |url: &String| get_bytes(&app.url(url));
    for (part, bytes) in parts.values() {
        let segment = segments.entry(part.url.clone()).or_insert_with_key(complete);
        let slice = &segment[part.offset as usize..(part.offset + part.length) as usize];
        assert!(slice == &bytes[..], "part {}.{} of {} differs from the complete segment", part.msn, part.index, part.url);
    }
    let segment = segments.entry(hint_url.clone()).or_insert_with_key(complete);
    match hinted {
        Some(hinted) => assert!(segment[start as usize..] == hinted[..], "the hinted bytes of {hint_url} from {start}"),
        None => assert_eq!(segment.len() as u64, start, "416 for a hint at the end of {hint_url}"),
    }
    println!("{} parts of {} segments compared", parts.len(), segments.len());

    // Delta updates: once the playlist is older than the skip boundary, `_HLS_skip=YES`
    // answers with its segments older than it skipped; what it lists is the full
    // playlist's, and the last segment it skipped reaches past the boundary.
    let delta = wait_until("a delta update that skips segments", Duration::from_secs(20), || {
        let delta = parse_media_of(STREAM, &get(&app.url(&playlist_path("?_HLS_skip=YES"))).text().unwrap(), RENDITION);
        (delta.skipped > 0).then_some(delta)
    });
    let full = plain().expect("the full playlist");
    assert_eq!(full.skipped, 0);
    let in_full = |sequence: u64| full.segments.iter().find(|s| s.sequence == sequence).unwrap_or_else(|| panic!("{sequence} in the full playlist"));
    for segment in &delta.segments {
        let same = in_full(segment.sequence);
        assert_eq!((&same.url, same.seconds, &same.map), (&segment.url, segment.seconds, &segment.map), "segment {}", segment.sequence);
    }
    let listed: f64 = delta.segments.iter().map(|s| s.seconds).sum();
    let last_skipped = in_full(delta.segments[0].sequence - 1).seconds;
    // EXTINF has milliseconds, rounded: half of one per segment either way.
    let rounding = 0.0005 * (delta.segments.len() + 1) as f64;
    assert!(listed <= skip_until + rounding && listed + last_skipped > skip_until - rounding, "{listed} s listed, {last_skipped} s before: {delta:?}");
    let (msn, index) = next_part(&delta);
    let blocking = get(&app.url(&playlist_path(&format!("?_HLS_msn={msn}&_HLS_part={index}&_HLS_skip=YES"))));
    assert_eq!(blocking.status(), 200);
    assert!(parse_media_of(STREAM, &blocking.text().unwrap(), RENDITION).skipped > 0, "a blocking reload's delta update");
    assert_eq!(get(&app.url(&playlist_path("?_HLS_skip=NO"))).status(), 400);
    println!("delta update: {} segments skipped, {} listed ({listed:.3} s, CAN-SKIP-UNTIL={skip_until})", delta.skipped, delta.segments.len());

    // A plain HLS client plays the LL playlist.
    let probe = output_within(Command::new("ffprobe").args(["-v", "error"]).arg(app.url(&playlist_path(""))), Duration::from_secs(20));
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
}
