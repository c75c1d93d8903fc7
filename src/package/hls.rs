//! HLS rendering: a pure function from a stream's timeline to its playlists (RFC 8216,
//! version 7 for fMP4), next to the MPDs of mpd.rs and naming the same objects, so a
//! segment is packaged once and served to DASH and HLS players alike. The packager renders
//! them on every change, with the MPDs, into the store ([`Playlist`]).
//!
//! - **Multivariant** (`/live/{stream}/master.m3u8`): one `EXT-X-STREAM-INF` per video
//!   rendition with the audio as its own rendition group (`AUDIO="audio"`), or the audio
//!   alone for an audio-only source. It lists the renditions of the newest Period that has
//!   a playable one: a re-plan or republish changes what it offers. A Period is offered
//!   once all its renditions are playable (`Period::is_offered`), never the audio alone a
//!   moment before the video: a player reads the multivariant once.
//! - **Media** (`/live/{stream}/{rendition}/media.m3u8`): the rendition's segments in the
//!   DVR window, every Period that has the rendition, each Period opened by
//!   `EXT-X-DISCONTINUITY` (but the first listed), its own `EXT-X-MAP` (the session's init
//!   segment) and `EXT-X-PROGRAM-DATE-TIME` (availabilityStartTime + the Period's start +
//!   the segment's media time: the wall clock the MPD's timeline gives the same segment).
//!   URIs are relative: `init-{session}.mp4` and `{session}-{number}.m4s`, the MPD's.
//!
//! Numbering: segment numbers cannot be media sequence numbers. They jump where a Period
//! starts later on the grid, and a re-plan's first number can repeat the previous Period's
//! last, while HLS numbers the listed segments one after another. So the media sequence of
//! the first listed segment is the count of the rendition's segments evicted since the
//! stream appeared, and the discontinuity sequence the count of its Periods evicted
//! (`timeline::Dropped`); the window only ever loses segments from its front, so every segment keeps
//! its sequence numbers across reloads and Period changes.
//!
//! A rendition missing from a later Period (a re-plan or a republish dropped its rung) goes
//! on in that Period with a stand-in (`StreamTimeline::carrier`: the tallest video rung not
//! taller than it, else the shortest; the audio), behind the discontinuity, its URIs
//! `../{stand-in}/...`: an HLS player follows one media playlist and does not reload the
//! multivariant, so without a stand-in it would stop where a DASH player moves on to the
//! new Period's Representations. The multivariant offers new players only the newest
//! Period's renditions. The stand-in's evicted segments count for the playlists it stands
//! in for, so their sequence numbers hold. A rendition gets `EXT-X-ENDLIST` only when the
//! newest Period has nothing of its kind. An ended stream's playlists get no
//! `EXT-X-ENDLIST`: broadcasters reconnect, and a player that keeps reloading follows the
//! republish across its discontinuity (where a DASH player stops at the static MPD); once
//! the stream is forgotten (a DVR window after its end) they answer 404.
//!
//! **LL-HLS** (RFC 8216bis, with `package.low_latency`: the packager passes the chunk
//! duration). Each CMAF chunk the muxer cuts is a part (`timeline::PartEntry`): a byte
//! range of its segment's one URL, so parts and segments are the same stored bytes and a
//! plain HLS player, which ignores the LL tags, plays the same playlist.
//!
//! - `EXT-X-PART:DURATION=..,URI="{session}-{n}.m4s",BYTERANGE="len@offset"` (with
//!   `INDEPENDENT=YES` on a part that starts with a keyframe, or audio) for every part of
//!   the complete segments that start within the last six target durations, before each
//!   segment's `EXTINF`; then the segment being encoded, listed by its parts only (after
//!   the last complete segment), until it is complete. Parts of a segment are numbered
//!   from 0 in order, so (media sequence, part index) names one part on every reload.
//! - `EXT-X-PRELOAD-HINT:TYPE=PART,URI=..,BYTERANGE-START=` the next part's first byte:
//!   the end of the growing segment's parts, or 0 of the next segment (a new Period's
//!   first segment, before it is complete, is only hinted: its parts come once it is
//!   listed). No length: the live node streams an open-ended range as the segment grows
//!   (http module). Once the stream ended, neither parts nor a hint: hls.js 1.7 takes the
//!   last segment of a playlist with parts that ends on a URI for the segment being
//!   encoded, and stops with a playlist error when a later playlist gives its sequence
//!   number to the next segment (the re-plan and republish of the player test).
//! - `EXT-X-PART-INF:PART-TARGET=`: parts are whole frames on a `chunk_duration` grid
//!   (the first frame at or after each multiple of it starts a part), so a part can last
//!   up to a frame longer (360 ms at 25 fps on a grid of thirds of a second), and the last part of a
//!   segment ends where the keyframe of the next one falls. The target is therefore the
//!   configured chunk duration or the longest part any listed track has had
//!   (`Track::longest_part`, in exact timescale ticks), whichever is longer, rounded up to
//!   the millisecond: every listed part is within it. It rises only when a longer part
//!   appears, which the first segment's parts (listed before any playlist exists) settle.
//! - `EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=` three part targets (the
//!   spec asks for at least two and recommends three; `PART_HOLD_BACK_TARGETS`),
//!   `CAN-SKIP-UNTIL=` six target durations (the spec's least).
//! - Delta updates (RFC 8216bis 6.2.5.1): beside each media playlist its delta, which a
//!   request with `_HLS_skip=YES` gets (`PlaylistText::delta`). The segments that start
//!   more than `CAN-SKIP-UNTIL` before the end of the last one are replaced by
//!   `EXT-X-SKIP:SKIPPED-SEGMENTS=n`, with their tags (a Period's discontinuity, map and
//!   date included); the first segment listed gets its Period's `EXT-X-MAP` and its own
//!   `EXT-X-PROGRAM-DATE-TIME` again. The media and discontinuity sequence numbers are the
//!   full playlist's. With the default 30 s DVR window a reload lists about 6 s of
//!   segments instead of 30; in bytes it saves about a quarter (3.1 KB to 2.3 KB for a
//!   360p playlist), as the parts of the last six target durations, which it keeps, are
//!   most of a low-latency playlist.
//! - `EXT-X-VERSION` stays 7: byte ranges need 4 and fMP4's `EXT-X-MAP` 6; the LL tags
//!   need no higher version. A delta update is version 9 (`EXT-X-SKIP`).
//! - `EXT-X-RENDITION-REPORT:URI="../{other}/media.m3u8",LAST-MSN=..,LAST-PART=..` at the
//!   end, one for each other rendition the multivariant offers: its last part as rendered
//!   in the same pass, so every report names a part its playlist lists. A player switching
//!   rendition (hls.js, Safari) asks the new playlist for the part after it with a blocking
//!   reload instead of loading it twice (RFC 8216bis 4.4.5.4, 6.2.5.2).
//!
//! Each media playlist comes with its [`PlaylistPosition`] (the last complete segment's
//! media sequence number, the parts of the next), which the store keeps beside the text
//! for blocking reloads (`_HLS_msn`/`_HLS_part`, the http module).

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use super::timeline::{Period, SegmentEntry, StreamTimeline, Track, media_duration};
use crate::media::{RenditionId, TrackKind};
pub use crate::store::{Playlist, PlaylistPosition, PlaylistText};

/// fMP4 segments (`EXT-X-MAP` in a media playlist without I-frames only) need version 6;
/// 7 is what Apple's tools write for CMAF.
const VERSION: u32 = 7;
/// `PART-HOLD-BACK` in part targets: the spec's minimum is two and it recommends at least
/// three. hls.js aims at exactly this latency: three parts of a third of a second (the
/// default chunk) hold it about 2.2 to 2.9 s behind live on the 2-core test machine,
/// without a stall (with 200 ms parts, neither three nor five kept it from stalling:
/// `package::config::DEFAULT_CHUNK_DURATION` says why).
const PART_HOLD_BACK_TARGETS: u32 = 3;
/// Complete segments whose parts are listed: those within this many target durations of
/// the end (`timeline::PARTS_KEPT` keeps enough for 1 s segments). RFC 8216bis 4.4.4.9
/// asks for at least three. hls.js 1.7 loads parts only while its buffer reaches past the
/// first listed part; behind that it loads whole segments, and where it switched from
/// parts to whole segments in the middle of one it skipped that segment's remaining parts
/// (a hole it stalls at: seen in the audio of the low-latency browser test). Six keep a
/// player that fell a few seconds behind on parts.
const PARTS_LISTED_TARGETS: u64 = 6;
/// The audio rendition group's id.
const AUDIO_GROUP: &str = "audio";
/// `CAN-SKIP-UNTIL` in target durations: the spec's minimum (RFC 8216bis 4.4.3.8). A delta
/// update lists the segments that start within it of the playlist's end.
const SKIP_BOUNDARY_TARGETS: u64 = 6;
/// A playlist with `EXT-X-SKIP` needs version 9.
const DELTA_VERSION: u32 = 9;

/// Every playlist of the stream, or none while no rendition is playable yet. `chunk`: the
/// part duration with low latency (`MpdTiming::chunk_duration`); LL-HLS tags with it.
pub fn render(timeline: &StreamTimeline, chunk: Option<Duration>) -> HashMap<Playlist, PlaylistText> {
    let mut playlists = HashMap::new();
    let Some(offered) = offered_period(timeline) else { return playlists };
    playlists.insert(Playlist::Multivariant, PlaylistText { text: Bytes::from(multivariant(offered)), position: None, delta: None });
    // Every rendition the stream has had: one a re-plan dropped goes on with a stand-in.
    let mut renditions: Vec<&RenditionId> = timeline.seen.keys().collect();
    renditions.sort();
    let media: Vec<(&RenditionId, MediaPlaylist)> = renditions.into_iter().filter_map(|id| Some((id, media_playlist(timeline, id, chunk)?))).collect();
    // Each live low-latency playlist reports where the multivariant's other renditions are.
    let edges: Vec<(&RenditionId, LiveEdge)> = media.iter().filter_map(|(id, m)| Some((*id, m.live_edge?))).collect();
    let offered: Vec<&RenditionId> = offered.tracks.iter().filter(|t| t.is_playable()).map(|t| &t.info.id).collect();
    for (id, MediaPlaylist { mut text, mut delta, position, live_edge }) in media {
        if live_edge.is_some() {
            let mut reports = String::new();
            for (other, edge) in edges.iter().filter(|(other, _)| *other != id && offered.contains(other)) {
                let _ = write!(reports, "#EXT-X-RENDITION-REPORT:URI=\"../{}\",LAST-MSN={}", Playlist::Media((*other).clone()).relative_path(), edge.last_msn);
                if let Some(part) = edge.last_part {
                    let _ = write!(reports, ",LAST-PART={part}");
                }
                reports.push('\n');
            }
            text.push_str(&reports);
            if let Some(delta) = delta.as_mut() {
                delta.push_str(&reports);
            }
        }
        let text = PlaylistText { text: Bytes::from(text), position: Some(position), delta: delta.map(Bytes::from) };
        playlists.insert(Playlist::Media(id.clone()), text);
    }
    playlists
}

/// The newest Period with a playable rendition that may be offered
/// ([`Period::is_offered`]: every rendition playable, or one given up on): what the
/// multivariant offers.
fn offered_period(timeline: &StreamTimeline) -> Option<&Period> {
    timeline.periods.iter().rev().find(|p| p.is_offered(Track::is_playable) && p.tracks.iter().any(Track::is_playable))
}

/// The multivariant playlist over `period` (`offered_period`).
fn multivariant(period: &Period) -> String {
    let playable = |kind| period.tracks.iter().filter(move |t| t.info.kind == kind && t.is_playable());
    let mut out = format!("#EXTM3U\n#EXT-X-VERSION:{VERSION}\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    let audio: Vec<&Track> = playable(TrackKind::Audio).collect();
    let video: Vec<&Track> = playable(TrackKind::Video).collect();
    if video.is_empty() {
        for track in audio {
            stream_inf(&mut out, track, None);
        }
        return out;
    }
    for (index, track) in audio.iter().enumerate() {
        let default = if index == 0 { "YES" } else { "NO" };
        let _ = writeln!(
            out,
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{AUDIO_GROUP}\",NAME=\"{id}\",DEFAULT={default},AUTOSELECT=YES,CHANNELS=\"{channels}\",URI=\"{uri}\"",
            id = track.info.id,
            channels = track.info.channels,
            uri = Playlist::Media(track.info.id.clone()).relative_path(),
        );
    }
    // Every variant plays with the group's richest audio.
    let audio = audio.into_iter().max_by_key(|t| t.info.bandwidth);
    for track in video {
        stream_inf(&mut out, track, audio);
    }
    out
}

/// One variant: `track`, with `audio` as its audio group when it has one.
fn stream_inf(out: &mut String, track: &Track, audio: Option<&Track>) {
    let info = &track.info;
    let bandwidth = u64::from(info.bandwidth) + audio.map_or(0, |a| u64::from(a.info.bandwidth));
    let codecs: Vec<&str> = [Some(track), audio].into_iter().flatten().filter_map(|t| t.codecs.as_deref()).collect();
    let _ = write!(out, "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS=\"{}\"", codecs.join(","));
    if info.kind == TrackKind::Video {
        let _ = write!(out, ",RESOLUTION={}x{}", info.width, info.height);
    }
    if audio.is_some() {
        let _ = write!(out, ",AUDIO=\"{AUDIO_GROUP}\"");
    }
    let _ = writeln!(out, "\n{}", Playlist::Media(info.id.clone()).relative_path());
}

/// A media playlist as `media_playlist` renders it, before the rendition reports.
struct MediaPlaylist {
    text: String,
    /// Its delta update (`_HLS_skip=YES`), when it has segments to skip.
    delta: Option<String>,
    position: PlaylistPosition,
    /// Its last part while it is live with low latency: what the other playlists report.
    live_edge: Option<LiveEdge>,
}

/// The last part a live media playlist lists (`EXT-X-RENDITION-REPORT`'s `LAST-MSN` and
/// `LAST-PART`: the media sequence number and index of the last part, or of the last
/// segment where none of its parts is listed).
#[derive(Debug, Clone, Copy)]
struct LiveEdge {
    last_msn: u64,
    last_part: Option<u64>,
}

/// The media playlist of `rendition`, or `None` when no Period holds a segment of it.
/// `chunk`: the configured part duration with low latency (module header, LL-HLS).
fn media_playlist(timeline: &StreamTimeline, rendition: &RenditionId, chunk: Option<Duration>) -> Option<MediaPlaylist> {
    let listed: Vec<(&Period, &Track)> = (0..timeline.periods.len())
        .filter_map(|i| timeline.carrier(i, rendition).filter(|t| !t.segments.is_empty()).map(|t| (&timeline.periods[i], t)))
        .collect();
    if listed.is_empty() {
        return None;
    }
    let seconds = |ticks: u64, track: &Track| media_duration(ticks, track.info.timescale).unwrap_or_default();
    // No listed EXTINF, rounded to the nearest second, may exceed the target duration.
    let longest = listed.iter().flat_map(|(_, t)| t.segments.iter().map(|s| seconds(s.duration, t))).max().unwrap_or_default();
    let target = rounded_secs(longest).max(timeline.segment_duration.as_secs() + u64::from(timeline.segment_duration.subsec_nanos() > 0));
    let dropped = timeline.dropped.get(rendition).copied().unwrap_or_default();
    let ended = timeline.periods.len().checked_sub(1).is_some_and(|last| timeline.carrier(last, rendition).is_none());
    // Low latency: the part target covers the configured chunk and every part the listed
    // tracks have had, rounded up to the millisecond.
    let part_target = chunk.map(|chunk| {
        let longest = listed.iter().map(|(_, t)| seconds(t.longest_part, t)).max().unwrap_or_default().max(chunk);
        Duration::from_millis(u64::try_from(longest.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
    });

    // The header after the version, which a delta update raises.
    let mut header = format!("#EXT-X-TARGETDURATION:{target}\n");
    // Delta updates with low latency: the segments starting more than the skip boundary
    // before the playlist's end are skipped (counted by durations, so a gap between
    // Periods only skips fewer).
    let skip_boundary = Duration::from_secs(target * SKIP_BOUNDARY_TARGETS);
    let mut skipped = 0;
    if let Some(part_target) = part_target {
        let _ = writeln!(
            header,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={},CAN-SKIP-UNTIL={}\n#EXT-X-PART-INF:PART-TARGET={}",
            millis(part_target * PART_HOLD_BACK_TARGETS),
            millis(skip_boundary),
            millis(part_target)
        );
        let mut within = Duration::ZERO;
        let kept = listed
            .iter()
            .rev()
            .flat_map(|(_, t)| t.segments.iter().rev().map(|s| seconds(s.duration, t)))
            .take_while(|d| {
                within += *d;
                within <= skip_boundary
            })
            .count();
        skipped = listed.iter().map(|(_, t)| t.segments.len()).sum::<usize>() - kept;
    }
    let _ = writeln!(header, "#EXT-X-MEDIA-SEQUENCE:{}\n#EXT-X-DISCONTINUITY-SEQUENCE:{}", dropped.segments, dropped.periods);
    let mut out = format!("#EXTM3U\n#EXT-X-VERSION:{VERSION}\n{header}");
    // Where the delta update's listing starts in `out`, and the tags it repeats there
    // (the Period's map and the first segment's date, written before a skipped segment).
    let mut delta_from = None::<(usize, String)>;
    let mut segment_index = 0;
    // Parts only while the stream is live: a player has no use for them afterwards, and
    // hls.js 1.7 misreads a playlist with parts that ends on a segment's URI (it takes that
    // segment for the one being encoded, and stops with a playlist error when the next
    // playlist gives its number to the republish's first segment).
    let list_parts = part_target.is_some() && timeline.is_live();
    let mut listed_segments = 0u64;
    for (index, (period, track)) in listed.iter().enumerate() {
        let (dir, session) = (stand_in_dir(track, rendition), period.session.as_str());
        let map_and_date = |segment: &SegmentEntry| {
            let mut tags = format!("#EXT-X-MAP:URI=\"{dir}init-{session}.mp4\"\n");
            let wall = timeline.availability_start.checked_add(period.start).and_then(|t| t.checked_add(seconds(segment.time, track)));
            if let Some(wall) = wall.and_then(date_time) {
                let _ = writeln!(tags, "#EXT-X-PROGRAM-DATE-TIME:{}", wall.to_rfc3339_opts(SecondsFormat::Millis, true));
            }
            tags
        };
        if skipped > 0 && segment_index == skipped {
            delta_from = Some((out.len(), String::new()));
        }
        if index > 0 {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        out.push_str(&map_and_date(track.segments.front().expect("listed tracks have segments")));
        // Parts of the segments that start within the last PARTS_LISTED_TARGETS target durations.
        let recent = recent_segments(track, Duration::from_secs(target * PARTS_LISTED_TARGETS));
        for (n, segment) in track.segments.iter().enumerate() {
            if skipped > 0 && segment_index == skipped && n > 0 {
                delta_from = Some((out.len(), map_and_date(segment)));
            }
            segment_index += 1;
            if list_parts && n >= track.segments.len() - recent {
                write_parts(&mut out, track, &dir, session, segment.number);
            }
            let _ = writeln!(out, "#EXTINF:{:.3},\n{dir}{session}-{}.m4s", seconds(segment.duration, track).as_secs_f64(), segment.number);
        }
        listed_segments += track.segments.len() as u64;
    }
    let last_msn = (dropped.segments + listed_segments).saturating_sub(1);
    // The last listed segment's number and its track.
    let (newest_period, newest_track) = listed.last().expect("not empty");
    let newest = newest_track.segments.back().expect("listed tracks have segments").number;
    let mut next_parts = 0;
    if ended {
        out.push_str("#EXT-X-ENDLIST\n");
    } else if list_parts {
        // The live edge: the segment being encoded, listed by its parts, and a hint for the
        // part after them. Only after the live Period's own segments: a new Period's first
        // segment is listed once it is complete, and until then only hinted (its first
        // byte), so that the playlist never ends on a URI (see `list_parts`).
        let live = timeline.periods.last().is_some_and(|p| p.session == newest_period.session);
        let live_period = timeline.periods.len() - 1;
        if !live && let Some(next) = timeline.carrier(live_period, rendition) {
            let (dir, session) = (stand_in_dir(next, rendition), timeline.periods[live_period].session.as_str());
            let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{dir}{session}-{}.m4s\",BYTERANGE-START=0", next.next_segment_number());
        } else if live {
            let (dir, session) = (stand_in_dir(newest_track, rendition), newest_period.session.as_str());
            let growing = newest_track.parts.back().filter(|p| p.number == newest + 1 && !p.complete);
            let (number, offset) = match growing {
                Some(segment) => {
                    write_parts(&mut out, newest_track, &dir, session, segment.number);
                    next_parts = segment.parts.len() as u64;
                    (segment.number, segment.parts.last().map_or(0, |p| p.offset + p.length))
                }
                None => (newest + 1, 0),
            };
            let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{dir}{session}-{number}.m4s\",BYTERANGE-START={offset}");
        }
    }
    let live_edge = (list_parts && !ended).then(|| {
        if next_parts > 0 {
            return LiveEdge { last_msn: last_msn + 1, last_part: Some(next_parts - 1) };
        }
        let parts = newest_track.parts.iter().find(|p| p.number == newest).map_or(0, |p| p.parts.len() as u64);
        LiveEdge { last_msn, last_part: parts.checked_sub(1) }
    });
    let position = PlaylistPosition {
        last_msn,
        next_parts,
        ended,
        target_duration: Duration::from_secs(target),
        part_target,
    };
    let delta = delta_from.map(|(from, tags)| format!("#EXTM3U\n#EXT-X-VERSION:{DELTA_VERSION}\n{header}#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}\n{tags}{}", &out[from..]));
    Some(MediaPlaylist { text: out, delta, position, live_edge })
}

/// How many of `track`'s newest segments start within `span` of its last segment's end.
fn recent_segments(track: &Track, span: Duration) -> usize {
    let mut covered = Duration::ZERO;
    let mut count = 0;
    for segment in track.segments.iter().rev() {
        if covered >= span {
            break;
        }
        covered += media_duration(segment.duration, track.info.timescale).unwrap_or_default();
        count += 1;
    }
    count
}

/// Where `track`'s objects are from `rendition`'s playlist: beside it, or the stand-in's
/// directory (`../{id}/`) when `track` carries the playlist in a Period without it.
fn stand_in_dir(track: &Track, rendition: &RenditionId) -> String {
    if &track.info.id == rendition { String::new() } else { format!("../{}/", track.info.id) }
}

/// The `EXT-X-PART` lines of segment `number` of `track` (its objects under `dir`), for the
/// parts the track kept.
fn write_parts(out: &mut String, track: &Track, dir: &str, session: &str, number: u64) {
    let Some(segment) = track.parts.iter().find(|p| p.number == number) else { return };
    for part in &segment.parts {
        let duration = media_duration(part.duration, track.info.timescale).unwrap_or_default();
        let independent = if part.independent { ",INDEPENDENT=YES" } else { "" };
        let _ = writeln!(
            out,
            "#EXT-X-PART:DURATION={:.3},URI=\"{dir}{session}-{number}.m4s\",BYTERANGE=\"{}@{}\"{independent}",
            duration.as_secs_f64(),
            part.length,
            part.offset
        );
    }
}

/// Seconds with three decimals (milliseconds are exact: the part target is whole ms).
fn millis(duration: Duration) -> String {
    format!("{}.{:03}", duration.as_secs(), duration.subsec_millis())
}

/// Whole seconds, rounded to the nearest (RFC 8216's rule for EXTINF against the target).
fn rounded_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() >= 500_000_000)
}

/// The wall clock as a UTC date, `None` past what a date can hold.
fn date_time(t: SystemTime) -> Option<DateTime<Utc>> {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    DateTime::from_timestamp(i64::try_from(since.as_secs()).ok()?, since.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{SessionId, StreamId};
    use crate::package::timeline::{PartTiming, RenditionInfo};

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_000 + ms)
    }

    fn info(id: &str, kind: TrackKind, bandwidth: u32) -> RenditionInfo {
        let video = kind == TrackKind::Video;
        RenditionInfo {
            id: RenditionId::parse(id).unwrap(),
            kind,
            bandwidth,
            width: if video { 1280 } else { 0 },
            height: if video { 720 } else { 0 },
            timescale: if video { 90_000 } else { 48_000 },
            sample_rate: 48_000,
            channels: 2,
        }
    }

    fn id(id: &str) -> RenditionId {
        RenditionId::parse(id).unwrap()
    }

    /// A session of `renditions` starting at `at_ms`, with `segments` 1 s segments.
    fn session(tl: &mut StreamTimeline, name: &str, renditions: &[(&str, TrackKind)], at_ms: u64, segments: u64) -> SessionId {
        let s = SessionId::parse(name).unwrap();
        let infos = renditions.iter().map(|(r, k)| info(r, *k, if *k == TrackKind::Video { 2_000_000 } else { 128_000 })).collect();
        tl.begin_period(s.clone(), infos, None, at(at_ms));
        for (r, kind) in renditions {
            let codecs = if *kind == TrackKind::Video { "avc1.64001F" } else { "mp4a.40.2" };
            tl.set_codecs(&s, &id(r), codecs.into(), at(at_ms));
            for i in 0..segments {
                tl.add_segment(&s, &id(r), i * 1_000_000_000, 1_000_000_000, at(at_ms + 1000 * (i + 1)));
            }
        }
        s
    }

    /// The playlists' texts, without low latency.
    fn texts(tl: &StreamTimeline) -> HashMap<Playlist, String> {
        render(tl, None).into_iter().map(|(p, t)| (p, String::from_utf8(t.text.to_vec()).unwrap())).collect()
    }

    fn lines(text: &str, prefix: &str) -> Vec<String> {
        text.lines().filter(|l| l.starts_with(prefix)).map(|l| l[prefix.len()..].to_owned()).collect()
    }

    #[test]
    fn nothing_playable_renders_nothing() {
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        assert!(texts(&tl).is_empty());
        session(&mut tl, "s1", &[("720p", TrackKind::Video)], 0, 0);
        assert!(texts(&tl).is_empty());
    }

    #[test]
    fn multivariant_offers_each_video_rendition_with_the_audio_group() {
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        session(&mut tl, "s1", &[("720p", TrackKind::Video), ("360p", TrackKind::Video), ("audio", TrackKind::Audio)], 0, 2);
        let playlists = texts(&tl);
        assert_eq!(playlists.len(), 4, "the multivariant and three media playlists");
        let master = &playlists[&Playlist::Multivariant];
        assert!(master.starts_with("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n"), "{master}");
        assert_eq!(
            lines(master, "#EXT-X-MEDIA:"),
            ["TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"audio\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"audio/media.m3u8\""]
        );
        assert_eq!(
            lines(master, "#EXT-X-STREAM-INF:"),
            [
                "BANDWIDTH=2128000,CODECS=\"avc1.64001F,mp4a.40.2\",RESOLUTION=1280x720,AUDIO=\"audio\"",
                "BANDWIDTH=2128000,CODECS=\"avc1.64001F,mp4a.40.2\",RESOLUTION=1280x720,AUDIO=\"audio\"",
            ]
        );
        assert_eq!(lines(master, "720p/"), ["media.m3u8"]);
        assert_eq!(lines(master, "360p/"), ["media.m3u8"]);

        // An audio-only source: the audio is the one variant.
        let mut radio = StreamTimeline::new(StreamId::parse("radio").unwrap(), Duration::from_secs(1), at(0));
        session(&mut radio, "s1", &[("audio", TrackKind::Audio)], 0, 2);
        let master = &texts(&radio)[&Playlist::Multivariant];
        assert_eq!(lines(master, "#EXT-X-STREAM-INF:"), ["BANDWIDTH=128000,CODECS=\"mp4a.40.2\""]);
        assert!(!master.contains("#EXT-X-MEDIA:"), "{master}");
        assert_eq!(lines(master, "audio/"), ["media.m3u8"]);
    }

    #[test]
    fn the_multivariant_waits_for_every_rendition_of_its_period() {
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        let s = session(&mut tl, "s1", &[("360p", TrackKind::Video), ("audio", TrackKind::Audio)], 0, 0);
        let variants = |tl: &StreamTimeline| texts(tl).get(&Playlist::Multivariant).map(|m| lines(m, "#EXT-X-STREAM-INF:"));
        // The audio's first segment a moment before the video's: no multivariant yet (hls.js,
        // offered the audio alone, played sound and never a picture).
        tl.add_segment(&s, &id("audio"), 0, 1_000_000_000, at(1000));
        assert_eq!(variants(&tl), None);
        tl.add_segment(&s, &id("360p"), 0, 1_000_000_000, at(1010));
        assert_eq!(variants(&tl), Some(vec!["BANDWIDTH=2128000,CODECS=\"avc1.64001F,mp4a.40.2\",RESOLUTION=1280x720,AUDIO=\"audio\"".to_owned()]));

        // A re-plan: the previous Period stays offered until the new one's renditions all play.
        let next = session(&mut tl, "s2", &[("720p", TrackKind::Video), ("360p", TrackKind::Video), ("audio", TrackKind::Audio)], 1010, 0);
        for rendition in ["360p", "audio"] {
            tl.add_segment(&next, &id(rendition), 0, 1_000_000_000, at(2000));
        }
        assert_eq!(variants(&tl).map(|v| v.len()), Some(1));
        // A rendition with nothing after two segments of the others has failed: offered without it.
        for rendition in ["360p", "audio"] {
            tl.add_segment(&next, &id(rendition), 1_000_000_000, 1_000_000_000, at(3000));
        }
        assert_eq!(lines(&texts(&tl)[&Playlist::Multivariant], "360p/"), ["media.m3u8"]);
        assert_eq!(variants(&tl).map(|v| v.len()), Some(1), "the new Period's 360p alone");
        assert!(!texts(&tl)[&Playlist::Multivariant].contains("720p"));
    }

    #[test]
    fn media_playlist_names_the_mpds_objects_with_wall_clock_times() {
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        session(&mut tl, "abc", &[("720p", TrackKind::Video), ("audio", TrackKind::Audio)], 0, 3);
        let playlists = texts(&tl);
        let video = &playlists[&Playlist::Media(id("720p"))];
        let expected = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-DISCONTINUITY-SEQUENCE:0\n\
            #EXT-X-MAP:URI=\"init-abc.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:2027-01-15T08:00:00.000Z\n\
            #EXTINF:1.000,\nabc-1.m4s\n#EXTINF:1.000,\nabc-2.m4s\n#EXTINF:1.000,\nabc-3.m4s\n";
        assert_eq!(video, expected);
        assert_eq!(date_time(at(0)).unwrap().to_rfc3339_opts(SecondsFormat::Millis, true), "2027-01-15T08:00:00.000Z");

        // A longer segment raises the target duration to its rounded length.
        let s = tl.periods[0].session.clone();
        tl.add_segment(&s, &id("720p"), 3_000_000_000, 1_600_000_000, at(5000));
        let video = &texts(&tl)[&Playlist::Media(id("720p"))];
        assert_eq!(lines(video, "#EXT-X-TARGETDURATION:"), ["2"]);
        assert_eq!(lines(video, "#EXTINF:").last().unwrap(), "1.600,");

        // Ended: the playlists wait for a republish.
        tl.end_session(&s, at(6000));
        assert!(texts(&tl).values().all(|m| !m.contains("#EXT-X-ENDLIST")));
    }

    #[test]
    fn periods_are_discontinuities_and_sequences_survive_eviction() {
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        let s1 = session(&mut tl, "s1", &[("720p", TrackKind::Video), ("480p", TrackKind::Video)], 0, 3);
        tl.end_session(&s1, at(3000));
        // A republish 5.5 s in, without the 480p rung: its numbers start at 7 on the grid.
        session(&mut tl, "s2", &[("720p", TrackKind::Video)], 5500, 3);
        let playlists = texts(&tl);
        let video = &playlists[&Playlist::Media(id("720p"))];
        assert_eq!(lines(video, "#EXT-X-MAP:URI="), ["\"init-s1.mp4\"", "\"init-s2.mp4\""]);
        assert_eq!(video.matches("#EXT-X-DISCONTINUITY\n").count(), 1);
        assert_eq!(
            lines(video, "#EXT-X-PROGRAM-DATE-TIME:"),
            ["2027-01-15T08:00:00.000Z", "2027-01-15T08:00:06.000Z"],
            "the second Period starts on the grid at 6 s"
        );
        let uris: Vec<&str> = video.lines().filter(|l| l.ends_with(".m4s")).collect();
        assert_eq!(uris, ["s1-1.m4s", "s1-2.m4s", "s1-3.m4s", "s2-7.m4s", "s2-8.m4s", "s2-9.m4s"]);
        assert!(!video.contains("#EXT-X-ENDLIST"));
        // 480p is not in the newest Period: the multivariant drops it, and its playlist
        // goes on through the discontinuity with the stand-in (720p, the only video).
        let dropped_rung = &playlists[&Playlist::Media(id("480p"))];
        let uris: Vec<&str> = dropped_rung.lines().filter(|l| l.ends_with(".m4s")).collect();
        assert_eq!(uris, ["s1-1.m4s", "s1-2.m4s", "s1-3.m4s", "../720p/s2-7.m4s", "../720p/s2-8.m4s", "../720p/s2-9.m4s"]);
        assert_eq!(lines(dropped_rung, "#EXT-X-MAP:URI="), ["\"init-s1.mp4\"", "\"../720p/init-s2.mp4\""]);
        assert!(!dropped_rung.contains("#EXT-X-ENDLIST"));
        assert!(!playlists[&Playlist::Multivariant].contains("480p"));

        // The window moves past the first Period's first two segments, then all of it.
        let evicted = tl.evict(Duration::from_secs(30), at(32_500));
        assert_eq!(evicted.len(), 4);
        let video = &texts(&tl)[&Playlist::Media(id("720p"))];
        assert_eq!(lines(video, "#EXT-X-MEDIA-SEQUENCE:"), ["2"]);
        assert_eq!(lines(video, "#EXT-X-DISCONTINUITY-SEQUENCE:"), ["0"]);
        assert!(video.contains("#EXT-X-PROGRAM-DATE-TIME:2027-01-15T08:00:02.000Z\n#EXTINF:1.000,\ns1-3.m4s"), "{video}");
        assert_eq!(lines(&texts(&tl)[&Playlist::Media(id("480p"))], "#EXT-X-MEDIA-SEQUENCE:"), ["2"]);
        tl.evict(Duration::from_secs(30), at(33_500));
        let playlists = texts(&tl);
        let video = &playlists[&Playlist::Media(id("720p"))];
        assert_eq!(lines(video, "#EXT-X-MEDIA-SEQUENCE:"), ["3"], "s2-7 keeps the sequence number 3 it had");
        assert_eq!(lines(video, "#EXT-X-DISCONTINUITY-SEQUENCE:"), ["1"], "the discontinuity left with the Period");
        assert!(!video.contains("#EXT-X-DISCONTINUITY\n"));
        assert_eq!(lines(video, "#EXT-X-MAP:URI="), ["\"init-s2.mp4\""]);
        // The stand-in's segments keep their sequence numbers in the dropped rung's playlist
        // once its own Period has left the window too.
        let dropped_rung = &playlists[&Playlist::Media(id("480p"))];
        assert_eq!(lines(dropped_rung, "#EXT-X-MEDIA-SEQUENCE:"), ["3"]);
        assert_eq!(lines(dropped_rung, "#EXT-X-DISCONTINUITY-SEQUENCE:"), ["1"]);
        assert_eq!(dropped_rung.lines().filter(|l| l.ends_with(".m4s")).collect::<Vec<_>>(), ["../720p/s2-7.m4s", "../720p/s2-8.m4s", "../720p/s2-9.m4s"]);
        // One more segment of the stand-in leaves: both playlists move on by one.
        let playlists = {
            tl.evict(Duration::from_secs(30), at(37_500));
            texts(&tl)
        };
        assert_eq!(lines(&playlists[&Playlist::Media(id("720p"))], "#EXT-X-MEDIA-SEQUENCE:"), ["4"]);
        assert_eq!(lines(&playlists[&Playlist::Media(id("480p"))], "#EXT-X-MEDIA-SEQUENCE:"), ["4"]);
    }

    #[test]
    fn a_dropped_rung_goes_on_with_the_tallest_rung_not_taller() {
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        let rungs = |heights: &[u32]| -> Vec<RenditionInfo> {
            heights.iter().map(|h| RenditionInfo { height: *h, ..info(&format!("{h}p"), TrackKind::Video, 1_000_000) }).chain([info("audio", TrackKind::Audio, 128_000)]).collect()
        };
        let s1 = SessionId::parse("s1").unwrap();
        tl.begin_period(s1.clone(), rungs(&[720, 480, 240]), None, at(0));
        let s2 = SessionId::parse("s2").unwrap();
        // A re-plan keeps 360p and 240p (a rung the first plan did not have).
        tl.begin_period(s2.clone(), rungs(&[360, 240]), Some(Duration::from_secs(3)), at(3000));
        let carrier = |r: &str| tl.carrier(1, &id(r)).map(|t| t.info.id.to_string());
        assert_eq!(carrier("720p").as_deref(), Some("360p"));
        assert_eq!(carrier("480p").as_deref(), Some("360p"));
        assert_eq!(carrier("240p").as_deref(), Some("240p"));
        assert_eq!(carrier("audio").as_deref(), Some("audio"));
        // 360p appeared only in the second Period: nothing carries it in the first.
        assert!(tl.carrier(0, &id("360p")).is_none());
        // A rung taller than every later one is carried by the shortest.
        let s3 = SessionId::parse("s3").unwrap();
        tl.begin_period(s3, rungs(&[1080]), Some(Duration::from_secs(6)), at(6000));
        assert_eq!(tl.carrier(2, &id("240p")).map(|t| t.info.id.to_string()).as_deref(), Some("1080p"));
    }

    /// Adds the parts of a 1 s segment (`cuts` in ms into it, 24 fps frames: parts a frame
    /// longer than 200 ms), part `k` `100 + k` bytes long.
    fn add_parts(tl: &mut StreamTimeline, s: &SessionId, r: &RenditionId, segment: u64, parts: std::ops::Range<usize>) {
        const CUTS: [u64; 6] = [0, 208_333_333, 416_666_667, 625_000_000, 833_333_333, 1_000_000_000];
        let start = segment * 1_000_000_000;
        for k in parts {
            let part = PartTiming { segment_start_ns: start, start_ns: start + CUTS[k], end_ns: Some(start + CUTS[k + 1]), length: 100 + k as u64, independent: k == 0 };
            tl.add_part(s, r, part).unwrap();
        }
    }

    #[test]
    fn low_latency_lists_parts_a_preload_hint_and_blocking_reload() {
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        let s = session(&mut tl, "abc", &[("720p", TrackKind::Video)], 0, 0);
        let r = id("720p");
        for segment in 0..8 {
            add_parts(&mut tl, &s, &r, segment, 0..5);
            tl.add_segment(&s, &r, segment * 1_000_000_000, 1_000_000_000, at(1000 * (segment + 1)));
        }
        add_parts(&mut tl, &s, &r, 8, 0..2);
        let chunk = Some(Duration::from_millis(200));
        let rendered = &render(&tl, chunk)[&Playlist::Media(r.clone())];
        let video = std::str::from_utf8(&rendered.text).unwrap();
        // Parts are whole frames: a 208.333 ms part sets a part target rounded up.
        assert!(video.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.627,CAN-SKIP-UNTIL=6.000\n#EXT-X-PART-INF:PART-TARGET=0.209\n"), "{video}");
        let parts = lines(video, "#EXT-X-PART:");
        for part in &parts {
            let duration: f64 = part.strip_prefix("DURATION=").unwrap().split(',').next().unwrap().parse().unwrap();
            assert!(duration <= 0.209, "{part}");
        }
        // The last six target durations' segments (3 to 8) and the growing 9, in order.
        let uris: Vec<&str> = parts.iter().map(|p| p.split("URI=\"").nth(1).unwrap().split('"').next().unwrap()).collect();
        let listed = (3..=8).flat_map(|n| std::iter::repeat_n(format!("abc-{n}.m4s"), 5)).chain(std::iter::repeat_n(String::from("abc-9.m4s"), 2));
        assert_eq!(uris, listed.collect::<Vec<_>>());
        assert_eq!(parts[0], "DURATION=0.208,URI=\"abc-3.m4s\",BYTERANGE=\"100@0\",INDEPENDENT=YES");
        assert_eq!(parts[1], "DURATION=0.208,URI=\"abc-3.m4s\",BYTERANGE=\"101@100\"");
        assert_eq!(parts[4], "DURATION=0.167,URI=\"abc-3.m4s\",BYTERANGE=\"104@406\"");
        // Parts before their segment; the growing one after the last segment, then the hint.
        assert!(video.contains("BYTERANGE=\"104@406\"\n#EXTINF:1.000,\nabc-3.m4s\n"), "{video}");
        assert!(video.ends_with(
            "abc-8.m4s\n#EXT-X-PART:DURATION=0.208,URI=\"abc-9.m4s\",BYTERANGE=\"100@0\",INDEPENDENT=YES\n\
             #EXT-X-PART:DURATION=0.208,URI=\"abc-9.m4s\",BYTERANGE=\"101@100\"\n\
             #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"abc-9.m4s\",BYTERANGE-START=201\n"
        ), "{video}");
        let position = rendered.position.unwrap();
        assert_eq!((position.last_msn, position.next_parts, position.part_target), (7, 2, Some(Duration::from_millis(209))));
        assert!(position.holds(7, None) && position.holds(8, Some(1)) && position.holds(6, Some(9)));
        assert!(!position.holds(8, None) && !position.holds(8, Some(2)) && !position.holds(9, Some(0)));

        // Complete: the hint names the start of the next segment.
        add_parts(&mut tl, &s, &r, 8, 2..5);
        tl.add_segment(&s, &r, 8_000_000_000, 1_000_000_000, at(9000));
        let rendered = &render(&tl, chunk)[&Playlist::Media(r.clone())];
        let video = std::str::from_utf8(&rendered.text).unwrap();
        assert!(video.ends_with("abc-9.m4s\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"abc-10.m4s\",BYTERANGE-START=0\n"), "{video}");
        assert_eq!(lines(video, "#EXT-X-PART:").len(), 30, "segments 4 to 9");
        assert_eq!((rendered.position.unwrap().last_msn, rendered.position.unwrap().next_parts), (8, 0));

        // Without low latency the playlist is plain.
        assert!(!texts(&tl)[&Playlist::Media(r.clone())].contains("#EXT-X-PART"));

        // A new Period before its first segment is complete: its first byte is hinted, so
        // the playlist never ends on a URI while it has parts (hls.js 1.7 would take that
        // segment for the one being encoded).
        let next = session(&mut tl, "def", &[("720p", TrackKind::Video)], 9_000, 0);
        add_parts(&mut tl, &next, &r, 0, 0..2);
        let video = String::from_utf8(render(&tl, chunk)[&Playlist::Media(r.clone())].text.to_vec()).unwrap();
        assert!(video.ends_with("abc-9.m4s\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"def-10.m4s\",BYTERANGE-START=0\n"), "{video}");
        assert_eq!(lines(&video, "#EXT-X-PART:").len(), 30, "the old Period's parts");

        // An ended stream lists no parts and no hint.
        tl.end_session(&next, at(10_000));
        let video = String::from_utf8(render(&tl, chunk)[&Playlist::Media(r)].text.to_vec()).unwrap();
        assert!(!video.contains("PRELOAD-HINT") && !video.contains("#EXT-X-PART:") && video.ends_with("abc-9.m4s\n"), "{video}");
    }

    #[test]
    fn each_live_playlist_reports_the_last_part_of_the_other_renditions() {
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        let renditions = [("720p", TrackKind::Video), ("360p", TrackKind::Video), ("audio", TrackKind::Audio)];
        let s = session(&mut tl, "abc", &renditions, 0, 0);
        for (r, _) in renditions {
            for segment in 0..3 {
                add_parts(&mut tl, &s, &id(r), segment, 0..5);
                tl.add_segment(&s, &id(r), segment * 1_000_000_000, 1_000_000_000, at(1000 * (segment + 1)));
            }
        }
        // 720p has two parts of segment 3; 360p and the audio none yet.
        add_parts(&mut tl, &s, &id("720p"), 3, 0..2);
        let rendered = render(&tl, Some(Duration::from_millis(200)));
        let text = |r: &str| String::from_utf8(rendered[&Playlist::Media(id(r))].text.to_vec()).unwrap();
        assert_eq!(
            lines(&text("360p"), "#EXT-X-RENDITION-REPORT:"),
            ["URI=\"../720p/media.m3u8\",LAST-MSN=3,LAST-PART=1", "URI=\"../audio/media.m3u8\",LAST-MSN=2,LAST-PART=4"]
        );
        assert_eq!(
            lines(&text("720p"), "#EXT-X-RENDITION-REPORT:"),
            ["URI=\"../360p/media.m3u8\",LAST-MSN=2,LAST-PART=4", "URI=\"../audio/media.m3u8\",LAST-MSN=2,LAST-PART=4"]
        );
        assert!(text("audio").ends_with("BYTERANGE-START=0\n#EXT-X-RENDITION-REPORT:URI=\"../360p/media.m3u8\",LAST-MSN=2,LAST-PART=4\n\
             #EXT-X-RENDITION-REPORT:URI=\"../720p/media.m3u8\",LAST-MSN=3,LAST-PART=1\n"), "{}", text("audio"));
        // Each report names the last part its playlist holds: a blocking reload for it
        // answers at once, one for the part after it waits.
        let position = |r: &str| rendered[&Playlist::Media(id(r))].position.unwrap();
        assert!(position("720p").holds(3, Some(1)) && !position("720p").holds(3, Some(2)));
        assert!(position("360p").holds(2, Some(4)) && !position("360p").holds(3, Some(0)));

        // A playlist reports only what the multivariant offers: 360p dropped by a re-plan
        // goes on with a stand-in, and nobody reports it.
        let next = session(&mut tl, "def", &[("720p", TrackKind::Video), ("audio", TrackKind::Audio)], 4_000, 1);
        add_parts(&mut tl, &next, &id("720p"), 1, 0..1);
        let rendered = render(&tl, Some(Duration::from_millis(200)));
        let reports = |r: &str| lines(std::str::from_utf8(&rendered[&Playlist::Media(id(r))].text).unwrap(), "#EXT-X-RENDITION-REPORT:");
        assert!(reports("720p").iter().all(|r| r.starts_with("URI=\"../audio/")), "{:?}", reports("720p"));
        assert_eq!(reports("360p").len(), 2, "the stand-in's playlist reports both offered renditions");

        // Without low latency, or once the stream ended: no reports.
        assert!(texts(&tl).values().all(|t| !t.contains("RENDITION-REPORT")));
        tl.end_session(&next, at(6_000));
        assert!(render(&tl, Some(Duration::from_millis(200))).values().all(|t| !std::str::from_utf8(&t.text).unwrap().contains("RENDITION-REPORT")));
    }

    #[test]
    fn a_delta_update_skips_the_segments_older_than_the_skip_boundary() {
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        let renditions = [("720p", TrackKind::Video), ("audio", TrackKind::Audio)];
        session(&mut tl, "abc", &renditions, 0, 10);
        let def = session(&mut tl, "def", &renditions, 10_000, 4);
        let chunk = Some(Duration::from_millis(200));
        let rendered = render(&tl, chunk);
        let full = String::from_utf8(rendered[&Playlist::Media(id("720p"))].text.to_vec()).unwrap();
        let delta = String::from_utf8(rendered[&Playlist::Media(id("720p"))].delta.clone().expect("a delta update").to_vec()).unwrap();
        assert!(full.contains("PART-HOLD-BACK=0.600,CAN-SKIP-UNTIL=6.000\n"), "{full}");
        // 14 segments of 1 s: the last six start within 6 s of the end (abc-9, abc-10 and
        // def-11 to def-14); the eight before are skipped, the Periods' boundary listed.
        let date = |ms| date_time(at(ms)).unwrap().to_rfc3339_opts(SecondsFormat::Millis, true);
        let kept = format!("#EXT-X-SKIP:SKIPPED-SEGMENTS=8\n#EXT-X-MAP:URI=\"init-abc.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:1.000,\nabc-9.m4s\n", date(8000));
        let (head, listed) = delta.split_once(&kept).unwrap_or_else(|| panic!("{delta}"));
        let full_head = full.split("#EXT-X-MAP").next().unwrap();
        assert_eq!(head, full_head.replace("#EXT-X-VERSION:7\n", "#EXT-X-VERSION:9\n"), "the full playlist's header, version 9");
        // The rest, the reports included, is the full playlist's from the same segment.
        assert!(full.ends_with(&format!("#EXTINF:1.000,\nabc-9.m4s\n{listed}")), "{full}\n{delta}");
        assert!(listed.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-def.mp4\"\n") && listed.contains("#EXT-X-RENDITION-REPORT:URI=\"../audio/"), "{delta}");
        // Skipped plus listed are the full playlist's segments.
        let uris = |text: &str| text.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect::<Vec<_>>();
        let (all, tail) = (uris(&full), uris(&delta));
        assert_eq!((all.len(), &all[8..]), (14, &tail[..]));

        // The skip boundary at the new Period's start: its discontinuity, map and date are
        // listed once.
        for (r, _) in renditions {
            for i in 4..6 {
                tl.add_segment(&def, &id(r), i * 1_000_000_000, 1_000_000_000, at(11_000 + 1000 * i));
            }
        }
        let rendered = render(&tl, chunk);
        let delta = String::from_utf8(rendered[&Playlist::Media(id("720p"))].delta.clone().unwrap().to_vec()).unwrap();
        assert!(delta.contains(&format!("#EXT-X-SKIP:SKIPPED-SEGMENTS=10\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-def.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:1.000,\ndef-11.m4s\n", date(10_000))), "{delta}");
        assert_eq!(lines(&delta, "#EXT-X-MAP").len(), 1, "{delta}");
        // The audio's delta too; none without low latency, or with nothing to skip.
        assert!(rendered[&Playlist::Media(id("audio"))].delta.as_ref().is_some_and(|d| d.starts_with(b"#EXTM3U\n#EXT-X-VERSION:9\n")));
        assert!(render(&tl, None).values().all(|p| p.delta.is_none()));
        let mut young = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        session(&mut young, "abc", &renditions, 0, 6);
        assert!(render(&young, chunk).values().all(|p| p.delta.is_none()), "six segments are all within the boundary");
    }

    #[test]
    fn zero_timescales_and_huge_times_do_not_panic() {
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        let s = SessionId::parse("s1").unwrap();
        let mut silent = info("audio", TrackKind::Audio, 1);
        silent.timescale = 0;
        let mut huge = info("huge", TrackKind::Video, 1);
        huge.timescale = u32::MAX;
        tl.begin_period(s.clone(), vec![silent, huge], None, at(0));
        for r in ["audio", "huge"] {
            tl.set_codecs(&s, &id(r), "x".into(), at(0));
            for (start, duration) in [(0, 1_000_000_000), (u64::MAX - 5, u64::MAX), (u64::MAX, 0)] {
                tl.add_segment(&s, &id(r), start, duration, at(1));
            }
        }
        assert_eq!(texts(&tl).len(), 3);
    }
}
