//! HLS from the DASH packaging: the multivariant and media playlists name the very segment
//! objects the MPD names, number them contiguously across reloads, carry wall-clock times,
//! decode through ffprobe, and ffmpeg's HLS reader follows a republish across its
//! discontinuity. Parsed with a small strict reader of the tags rackcast writes (the
//! LL-HLS ones too: ll_hls.rs shares it).

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::support::{Appliance, Publisher, collect_stderr, fetch_mpd, get, get_bytes, one_ladder_at_a_time, output_within, segments, wait_until};

const STREAM: &str = "hlscam";
const CONFIG: &str = "[transcode]\nx264_preset = \"ultrafast\"\n";

/// One media segment of a media playlist.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub sequence: u64,
    pub discontinuity_sequence: u64,
    /// Path under the stream's base (`720p/abc-7.m4s` resolved to `/live/...`).
    pub url: String,
    pub map: String,
    pub seconds: f64,
    pub date: Option<SystemTime>,
}

/// One LL-HLS part (`EXT-X-PART`): a byte range of its segment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PartLine {
    /// The media sequence number of its segment, and its index in it.
    pub msn: u64,
    pub index: u64,
    pub url: String,
    pub seconds: f64,
    pub offset: u64,
    pub length: u64,
    pub independent: bool,
}

/// An LL-HLS rendition report (`EXT-X-RENDITION-REPORT`): another rendition's playlist
/// (its path) and the last part it lists.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RenditionReport {
    pub playlist: String,
    pub last_msn: u64,
    pub last_part: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct MediaPlaylist {
    pub target: u64,
    pub segments: Vec<Segment>,
    pub discontinuities: usize,
    pub ended: bool,
    /// LL-HLS: `EXT-X-SERVER-CONTROL`'s attributes, the part target, the parts (of complete
    /// segments and of the one being encoded, last) and the preload hint (URL, start).
    pub server_control: Option<String>,
    pub part_target: Option<f64>,
    pub parts: Vec<PartLine>,
    pub hint: Option<(String, u64)>,
    pub reports: Vec<RenditionReport>,
    /// A delta update's `EXT-X-SKIP:SKIPPED-SEGMENTS` (0 in a full playlist). The first
    /// listed segment's sequence counts them; its discontinuity sequence cannot (the
    /// skipped segments' discontinuities are not listed).
    pub skipped: u64,
}

/// The attributes of a tag, `NAME=value` (quotes removed), in order.
fn attributes(list: &str) -> Vec<(&str, &str)> {
    list.split(',').map(|a| a.split_once('=').unwrap_or_else(|| panic!("attribute without a value: {a:?} in {list:?}"))).map(|(k, v)| (k, v.trim_matches('"'))).collect()
}

/// Parses a media playlist at `/live/{STREAM}/{rendition}/media.m3u8`.
fn parse_media(text: &str, rendition: &str) -> MediaPlaylist {
    parse_media_of(STREAM, text, rendition)
}

/// Parses a media playlist at `/live/{stream}/{rendition}/media.m3u8`; panics on anything
/// outside RFC 8216bis's grammar for the tags it knows, a segment without EXTINF or MAP, a
/// part longer than the part target, or parts whose byte ranges do not follow each other
/// from the start of their segment.
pub(crate) fn parse_media_of(stream: &str, text: &str, rendition: &str) -> MediaPlaylist {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("#EXTM3U"), "{text}");
    let base = format!("/live/{stream}/{rendition}/");
    let (mut target, mut sequence, mut discontinuity_sequence) = (None, None, 0);
    let (mut map, mut seconds, mut date) = (None::<String>, None::<f64>, None);
    let (mut segments, mut discontinuities, mut ended) = (Vec::new(), 0, false);
    let (mut server_control, mut part_target, mut parts, mut hint) = (None, None::<f64>, Vec::<PartLine>::new(), None);
    let mut reports = Vec::new();
    let (mut version, mut skipped) = (None, 0);
    // Parts of the segment not listed yet (the next URI line, or the one being encoded).
    let mut pending = 0u64;
    let number = |v: &str| v.parse::<u64>().unwrap_or_else(|_| panic!("not a decimal-integer: {v:?} in\n{text}"));
    for line in lines {
        if let Some(v) = line.strip_prefix("#EXT-X-SERVER-CONTROL:") {
            server_control = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART-INF:PART-TARGET=") {
            part_target = Some(v.parse().unwrap_or_else(|_| panic!("PART-TARGET {v:?}")));
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
            let attrs = attributes(v);
            let get = |name: &str| attrs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            let part_seconds: f64 = get("DURATION").expect("DURATION").parse().unwrap();
            let target = part_target.expect("EXT-X-PART-INF before the parts");
            assert!(part_seconds <= target, "a part of {part_seconds} s over PART-TARGET {target}:\n{text}");
            let (length, offset) = get("BYTERANGE").expect("BYTERANGE").split_once('@').expect("len@offset");
            let url = base.clone() + get("URI").expect("URI");
            let expected_offset = parts.last().filter(|p| pending > 0 && p.url == url).map_or(0, |p| p.offset + p.length);
            let offset = number(offset);
            assert_eq!(offset, expected_offset, "parts follow each other in their segment:\n{text}");
            let independent = match get("INDEPENDENT") {
                None => false,
                Some("YES") => true,
                Some(other) => panic!("INDEPENDENT={other}"),
            };
            assert!(attrs.iter().all(|(k, _)| ["DURATION", "URI", "BYTERANGE", "INDEPENDENT"].contains(k)), "{line}");
            let msn = *sequence.as_ref().expect("EXT-X-MEDIA-SEQUENCE before the parts");
            parts.push(PartLine { msn, index: pending, url, seconds: part_seconds, offset, length: number(length), independent });
            pending += 1;
        } else if let Some(v) = line.strip_prefix("#EXT-X-PRELOAD-HINT:") {
            let attrs = attributes(v);
            assert_eq!(attrs.len(), 3, "{line}");
            assert_eq!(attrs[0], ("TYPE", "PART"), "{line}");
            let (("URI", uri), ("BYTERANGE-START", start)) = (attrs[1], attrs[2]) else { panic!("{line}") };
            hint = Some((base.clone() + uri, number(start)));
        } else if let Some(v) = line.strip_prefix("#EXT-X-RENDITION-REPORT:") {
            let attrs = attributes(v);
            let get = |name: &str| attrs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            assert!(attrs.iter().all(|(k, _)| ["URI", "LAST-MSN", "LAST-PART"].contains(k)), "{line}");
            let uri = get("URI").unwrap_or_else(|| panic!("URI in {line}"));
            let other = uri.strip_prefix("../").and_then(|u| u.strip_suffix("/media.m3u8")).unwrap_or_else(|| panic!("{line}"));
            assert_ne!(other, rendition, "a playlist reports the other renditions:\n{text}");
            let last_msn = number(get("LAST-MSN").unwrap_or_else(|| panic!("LAST-MSN in {line}")));
            reports.push(RenditionReport { playlist: format!("/live/{stream}/{other}/media.m3u8"), last_msn, last_part: get("LAST-PART").map(number) });
        } else if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            target = Some(number(v));
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            sequence = Some(number(v));
        } else if let Some(v) = line.strip_prefix("#EXT-X-DISCONTINUITY-SEQUENCE:") {
            discontinuity_sequence = number(v);
        } else if let Some(v) = line.strip_prefix("#EXT-X-VERSION:") {
            version = Some(number(v));
        } else if let Some(v) = line.strip_prefix("#EXT-X-SKIP:SKIPPED-SEGMENTS=") {
            assert!(segments.is_empty() && parts.is_empty() && skipped == 0, "EXT-X-SKIP once, before the segments:\n{text}");
            skipped = number(v);
            assert!(skipped > 0, "{line}");
            *sequence.as_mut().expect("EXT-X-MEDIA-SEQUENCE before EXT-X-SKIP") += skipped;
        } else if line == "#EXT-X-DISCONTINUITY" {
            assert!(!segments.is_empty() || skipped > 0, "a discontinuity before the first segment:\n{text}");
            discontinuities += 1;
            discontinuity_sequence += 1;
        } else if let Some(v) = line.strip_prefix("#EXT-X-MAP:URI=") {
            map = Some(base.clone() + v.trim_matches('"'));
        } else if let Some(v) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            let t = chrono::DateTime::parse_from_rfc3339(v).unwrap_or_else(|e| panic!("{v}: {e}"));
            date = Some(SystemTime::from(t));
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            let v = v.strip_suffix(',').unwrap_or_else(|| panic!("EXTINF without a comma: {line}"));
            seconds = Some(v.parse().unwrap_or_else(|_| panic!("EXTINF {v:?}")));
        } else if line == "#EXT-X-ENDLIST" {
            ended = true;
        } else if line.starts_with('#') {
            panic!("unexpected tag {line:?} in\n{text}");
        } else {
            assert!(hint.is_none() && reports.is_empty(), "a segment after the preload hint or a rendition report:\n{text}");
            let url = base.clone() + line;
            if pending > 0 {
                assert_eq!(parts.last().unwrap().url, url, "parts of another segment before {line}:\n{text}");
                pending = 0;
            }
            let sequence = sequence.as_mut().expect("EXT-X-MEDIA-SEQUENCE before the segments");
            let previous_date = segments.last().and_then(|s: &Segment| s.date.map(|d| d + Duration::from_secs_f64(s.seconds)));
            segments.push(Segment {
                sequence: *sequence,
                discontinuity_sequence,
                url,
                map: map.clone().expect("EXT-X-MAP before the first segment"),
                seconds: seconds.take().expect("EXTINF before each segment"),
                // A segment without its own date follows the one before it.
                date: date.take().or(previous_date),
            });
            *sequence += 1;
        }
    }
    // Version 7 (fMP4, byte ranges); 9 for a delta update (RFC 8216bis 4.4.5.2).
    assert_eq!(version, Some(if skipped > 0 { 9 } else { 7 }), "EXT-X-VERSION:\n{text}");
    MediaPlaylist { target: target.expect("EXT-X-TARGETDURATION"), segments, discontinuities, ended, server_control, part_target, parts, hint, reports, skipped }
}

fn fetch_text(app: &Appliance, path: &str) -> Option<String> {
    let response = get(&app.url(path));
    if response.status() != 200 {
        return None;
    }
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/vnd.apple.mpegurl", "{path}");
    assert_eq!(response.headers()["cache-control"], "public, max-age=0, s-maxage=1", "{path}");
    Some(response.text().unwrap())
}

fn media(app: &Appliance, rendition: &str) -> Option<MediaPlaylist> {
    fetch_text(app, &format!("/live/{STREAM}/{rendition}/media.m3u8")).map(|text| parse_media(&text, rendition))
}

/// A child process killed when dropped, with its stderr collected.
struct Reader {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Reader {
    fn start(program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = collect_stderr(&mut child);
        Self { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The media segments ffmpeg opened, by session id (`Opening '.../{session}-{n}.m4s'`).
fn sessions_opened(stderr: &str) -> BTreeSet<String> {
    stderr
        .lines()
        .filter_map(|l| l.split("Opening '").nth(1)?.split('\'').next())
        .filter(|url| url.ends_with(".m4s"))
        .filter_map(|url| url.rsplit('/').next()?.rsplit_once('-').map(|(session, _)| session.to_owned()))
        .collect()
}

#[test]
fn hls_names_the_dash_segments_and_follows_a_republish() {
    let _ladder = one_ladder_at_a_time();
    let app = Appliance::start(Some(CONFIG));
    let url = app.publish_url("live", STREAM);
    let first = Publisher::start(&url, 10, "640x360");

    // The multivariant: each video rendition with the audio group.
    let playlist = |r: &str| media(&app, r).filter(|m| m.segments.len() >= 4);
    wait_until("4 segments in the 360p media playlist", Duration::from_secs(25), || playlist("360p"));
    let master = fetch_text(&app, &format!("/live/{STREAM}/master.m3u8")).unwrap();
    assert!(master.starts_with("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n"), "{master}");
    // The test tone is mono.
    assert!(master.contains("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"audio\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"1\",URI=\"audio/media.m3u8\"\n"), "{master}");
    let variants: Vec<(&str, &str)> = master.lines().zip(master.lines().skip(1)).filter(|(tag, _)| tag.starts_with("#EXT-X-STREAM-INF:")).collect();
    assert_eq!(variants.len(), 1, "one rung at a 360p source: {master}");
    let (inf, uri) = variants[0];
    assert!(inf.contains("CODECS=\"avc1.") && inf.contains(",mp4a.40.2\"") && inf.contains("RESOLUTION=640x360") && inf.contains("AUDIO=\"audio\""), "{inf}");
    assert_eq!(uri, "360p/media.m3u8");

    // Each media playlist lists the MPD's segments: same URLs, same durations, same init.
    let mpd = fetch_mpd(&app, STREAM).unwrap();
    let now = SystemTime::now();
    let mut before: HashMap<String, MediaPlaylist> = HashMap::new();
    for rep in mpd.periods.last().unwrap().adaptations.iter().flat_map(|a| &a.representations) {
        let rendition = rep.id.clone().unwrap();
        let (init, dash) = segments(STREAM, rep);
        let hls = media(&app, &rendition).unwrap();
        assert!(!hls.ended && hls.discontinuities == 0);
        let by_url: HashMap<&str, f64> = dash.iter().map(|s| (s.url.as_str(), s.duration as f64 / s.timescale as f64)).collect();
        for segment in &hls.segments {
            assert_eq!(segment.map, init, "{rendition}: the MPD's init segment");
            assert!((segment.seconds.round() as u64) <= hls.target, "{rendition}: EXTINF {} over TARGETDURATION {}", segment.seconds, hls.target);
            if let Some(seconds) = by_url.get(segment.url.as_str()) {
                assert!((seconds - segment.seconds).abs() < 0.001, "{rendition} {}: EXTINF {} vs the MPD's {seconds}", segment.url, segment.seconds);
            }
            assert!(!get_bytes(&app.url(&segment.url)).is_empty());
        }
        let listed_by_both = hls.segments.iter().filter(|s| by_url.contains_key(s.url.as_str())).count();
        assert!(listed_by_both + 2 >= hls.segments.len(), "{rendition}: the MPD lists the playlist's segments");
        let total: f64 = hls.segments.iter().map(|s| s.seconds).sum();
        assert!((total - hls.segments.len() as f64).abs() < 0.2 * hls.segments.len() as f64, "{rendition}: {total} s in {} segments", hls.segments.len());
        // The newest segment ended a moment ago, by its wall-clock date.
        let last = hls.segments.last().unwrap();
        let end = last.date.expect("a date on every segment") + Duration::from_secs_f64(last.seconds);
        let age = now.duration_since(end).unwrap_or_else(|e| panic!("{rendition}: the newest segment ends {:?} in the future", e.duration()));
        assert!(age < Duration::from_secs(5), "{rendition}: the newest segment ended {age:?} ago");
        before.insert(rendition, hls);
    }
    assert_eq!(before.len(), 2, "360p and audio");

    // ffprobe plays the stream through the multivariant.
    let probe = output_within(
        Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0"])
            .arg(app.url(&format!("/live/{STREAM}/master.m3u8"))),
        Duration::from_secs(20),
    );
    let streams = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success() && streams.contains("h264,640,360") && streams.contains("aac"), "{streams}\n{}", String::from_utf8_lossy(&probe.stderr));

    // ffmpeg reads the video playlist from here on, through the republish.
    let media_url = app.url(&format!("/live/{STREAM}/360p/media.m3u8"));
    let reader = Reader::start("ffmpeg", &["-hide_banner", "-loglevel", "verbose", "-i", &media_url, "-t", "30", "-c", "copy", "-f", "null", "-"]);

    // The same segment keeps its media sequence number on every reload.
    let after = playlist("360p").unwrap();
    let sequences = |m: &MediaPlaylist| m.segments.iter().map(|s| (s.url.clone(), s.sequence)).collect::<HashMap<_, _>>();
    let (old, new) = (sequences(&before["360p"]), sequences(&after));
    assert!(old.iter().filter(|(url, _)| new.contains_key(*url)).all(|(url, n)| new[url] == *n), "{old:?} vs {new:?}");
    assert!(after.segments.last().unwrap().sequence >= before["360p"].segments.last().unwrap().sequence);

    // The broadcaster stops and publishes again under the same key: a new Period.
    let (status, log) = first.wait(Duration::from_secs(20));
    assert!(status.success(), "{log}");
    let session_of = |m: &MediaPlaylist| m.segments.last().unwrap().url.rsplit('/').next().unwrap().rsplit_once('-').unwrap().0.to_owned();
    let first_session = session_of(&playlist("360p").unwrap());
    let _second = Publisher::start(&url, 12, "640x360");
    let crossed = wait_until("the republish in the 360p media playlist", Duration::from_secs(20), || {
        media(&app, "360p").filter(|m| m.discontinuities == 1 && session_of(m) != first_session && m.segments.last().unwrap().map.contains(&session_of(m)))
    });
    let maps: BTreeSet<&str> = crossed.segments.iter().map(|s| s.map.as_str()).collect();
    assert_eq!(maps.len(), 2, "a new EXT-X-MAP after the discontinuity");
    let sessions: Vec<String> = crossed.segments.iter().map(|s| s.url.rsplit('/').next().unwrap().rsplit_once('-').unwrap().0.to_owned()).collect();
    let boundary = sessions.iter().position(|s| *s != first_session).unwrap();
    let (last_old, first_new) = (&crossed.segments[boundary - 1], &crossed.segments[boundary]);
    assert_eq!(first_new.sequence, last_old.sequence + 1, "media sequence numbers go on across the Period change");
    assert_eq!(first_new.discontinuity_sequence, last_old.discontinuity_sequence + 1);
    assert!(first_new.date.is_some() && first_new.date >= last_old.date, "a date after the discontinuity");
    for segment in &crossed.segments {
        if let Some(seq) = old.get(&segment.url) {
            assert_eq!(segment.sequence, *seq, "{} renumbered across the Period change", segment.url);
        }
    }

    // ffmpeg went on into the new session's segments.
    let second_session = sessions.last().unwrap().clone();
    let started = Instant::now();
    while !sessions_opened(&reader.stderr()).contains(&second_session) {
        assert!(started.elapsed() < Duration::from_secs(20), "ffmpeg did not read session {second_session}'s segments:\n{}", reader.stderr());
        thread::sleep(Duration::from_millis(200));
    }
    assert!(sessions_opened(&reader.stderr()).contains(&first_session), "{}", reader.stderr());
}
