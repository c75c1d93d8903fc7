//! MPD rendering: a pure function from a stream's timeline to its manifest.
//!
//! Live streams get a `dynamic` MPD in two forms ([`ManifestForm`]) that list the same
//! segments under the same URLs. The Timeline form's SegmentTimeline carries the muxers'
//! real segment times (audio segments are not exactly 1 s: AAC frames are 1024 samples).
//! The Number form has no timeline: `SegmentTemplate@duration` and each Period's
//! `startNumber` let a player compute the newest segment's number from the clock, which the
//! grid numbering of the timeline guarantees (see `Period::first_number`). Each publish
//! session is a Period whose segment URLs carry the session id, so a URL never names two
//! byte strings. An ended stream becomes `static`, rebased to start at zero, and is the
//! same document in both forms.
//!
//! # Low latency (`package.low_latency`)
//!
//! Segments are then served while they are encoded, chunk by chunk, and a third form,
//! `manifest-ll.mpd` (for dash.js and Shaka), is a low-latency MPD after the DASH-IF
//! low-latency guidelines (without low latency it is the Timeline form's document):
//!
//! - **`$Number$` with `SegmentTemplate@duration`**, not a SegmentTimeline. A timeline can
//!   only list a segment once its duration is known, i.e. once it is complete; a player
//!   that must fetch a segment while it is encoded has to learn of it from the clock. So
//!   the MPD changes only at Period changes, and a player never waits on an MPD update to
//!   find the next segment (DVB-DASH recommends the same for low latency). Numbers are on
//!   the grid from availabilityStartTime, as in the Number form.
//! - **`availabilityTimeOffset` = segment duration − chunk duration** with
//!   `availabilityTimeComplete="false"`: segment N may be requested once its first chunk
//!   exists, and arrives as it is encoded. A request just before that waits for it on the
//!   live node (`store::Store::object_or_next`) instead of a 404.
//! - **`ServiceDescription`**: the latency to hold (target one segment plus one chunk,
//!   within half and three times that) and the playback rates (0.96..1.04) a player may use
//!   to hold it; dash.js switches its low-latency mode on from these signals, Shaka from
//!   `availabilityTimeOffset`. `suggestedPresentationDelay` is zero: Shaka adds it to the
//!   target (measured: 1.9 s behind live with 1 s, 1.1 s with zero; dash.js 1.2 s either
//!   way).
//! - **`ProducerReferenceTime`** per AdaptationSet: presentation time 0 of the Period is
//!   the wall-clock time its session's media started at ingest (availabilityStartTime plus
//!   Period@start), so players measure latency against the broadcaster's clock.
//! - **Not before the window holds [`LOW_LATENCY_START_WINDOW`] and two chunks of media.**
//!   Shaka Player (5.2) starts a live stream by seeking its video element to the live
//!   edge, but gives the element a seekable range only once its window is longer than one
//!   second; on a younger stream (its window is the stream's age less one chunk) the
//!   element ignores the seek, and Shaka, still waiting for the `seeking` event, takes its
//!   start time for the playhead for good: it stops fetching once it has buffered its
//!   goal (10 s) past that start, while the video plays on to the end of what it has. The
//!   form is withheld (a request waits for it, `store::Store::manifest_within`) the
//!   second or two a new stream takes to get there; the two chunks are a margin for the
//!   player's clock and the encoder's delay. Media time decides it, not the wall clock.
//!
//! The other two forms are unchanged: the Timeline form lists complete segments, the
//! Number form still announces them `number_form_delay` late, so players reading those
//! keep fetching complete segments.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use dash_mpd_core as dash;

use super::timeline::{Period, StreamTimeline, Track, media_duration};
use crate::media::TrackKind;
pub use crate::store::ManifestForm;

/// Manifest-wide timing, from the package config.
#[derive(Debug, Clone, Copy)]
pub struct MpdTiming {
    pub segment_duration: Duration,
    /// MPD@minimumUpdatePeriod: how often players re-fetch the manifest.
    pub update_period: Duration,
    pub dvr_window: Duration,
    pub presentation_delay: Duration,
    /// How long after its end the Number form says a segment is available: the time the
    /// transcoder and packager take, so that clock-driven players never ask early.
    pub number_form_delay: Duration,
    /// Low latency: segments are served while encoded, in chunks of this duration; the
    /// Timeline form becomes the low-latency MPD (module header).
    pub chunk_duration: Option<Duration>,
}

/// How a Period's segments are addressed in one rendering.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Addressing {
    /// Every segment listed with its real time and duration.
    Timeline,
    /// `$Number$` from the clock, announced this late.
    Number { delay: Duration },
    /// `$Number$` from the clock, each segment available once its first chunk is.
    LowLatency { chunk: Duration },
}

impl Addressing {
    /// True when a Representation lists `track`. The low-latency form lists it as soon as
    /// its init segment exists: its players fetch each segment from its first chunk on, and
    /// a new Period listed only once a segment is complete leaves them a second to
    /// extrapolate the Period before it (asking for segments of a session that has ended).
    /// The others list it once it has a segment.
    fn lists(self, track: &Track) -> bool {
        match self {
            Addressing::LowLatency { .. } => track.codecs.is_some(),
            _ => track.is_playable(),
        }
    }
}

/// The shortest window the low-latency form is offered with, plus two chunks (module header).
const LOW_LATENCY_START_WINDOW: Duration = Duration::from_secs(1);

/// ServiceDescription's playback rates: ±4 %, the DASH-IF reference player's default.
const PLAYBACK_RATE: (f64, f64) = (0.96, 1.04);

const PROFILES: &str = "urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019";
const AUDIO_CHANNELS_SCHEME: &str = "urn:mpeg:dash:23003:3:audio_channel_configuration:2011";
/// Clock source for players: `GET /time` answers with xs:dateTime. The stored MPD names it
/// by path; every node that serves the MPD makes it absolute for the host the viewer asked
/// ([`with_clock_origin`]), because some players resolve it against nothing.
pub const UTC_TIMING_SCHEME: &str = "urn:mpeg:dash:utc:http-iso:2014";
pub const UTC_TIMING_PATH: &str = "/time";
/// Namespace prefixes the MPD library always declares on the root element. Nothing here
/// uses them, and players that sniff the first bytes of the document (GStreamer's type
/// finder reads a bounded prefix) stop recognising it as an MPD behind a long root tag.
const UNUSED_PREFIXES: [&str; 7] = ["xsi", "cenc", "mspr", "xlink", "scte35", "dvb", "scte214"];

/// Init segment URL template of a session, relative to the MPD.
pub fn init_template(session: &str) -> String {
    format!("$RepresentationID$/init-{session}.mp4")
}

/// Media segment URL template of a session, relative to the MPD.
pub fn media_template(session: &str) -> String {
    format!("$RepresentationID$/{session}-$Number$.m4s")
}

fn utc(t: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(t)
}

/// Renders the manifest in `form`, or `None` while no rendition is playable yet.
pub fn render(timeline: &StreamTimeline, timing: &MpdTiming, form: ManifestForm) -> Option<String> {
    let live = timeline.is_live();
    // Only a live presentation is addressed by the clock; a static one lists its segments.
    let addressing = match (live, form, timing.chunk_duration) {
        (false, ..) => Addressing::Timeline,
        (true, ManifestForm::Timeline, _) | (true, ManifestForm::LowLatency, None) => Addressing::Timeline,
        (true, ManifestForm::LowLatency, Some(chunk)) => Addressing::LowLatency { chunk },
        (true, ManifestForm::Number, _) => Addressing::Number { delay: timing.number_form_delay },
    };
    // A static presentation starts at its first retained media; a dynamic one keeps every
    // Period@start fixed across updates, as players require.
    let offsets: Vec<Duration> = timeline.periods.iter().map(|p| if live { Duration::ZERO } else { first_media_offset(p) }).collect();
    let base = timeline.periods.first().zip(offsets.first()).map(|(p, o)| p.start.saturating_add(*o)).filter(|_| !live).unwrap_or_default();

    let mut periods = Vec::new();
    let mut end = Duration::ZERO;
    for (period, offset) in timeline.periods.iter().zip(&offsets) {
        // A Period not offered yet (a track still without its init segment or segment)
        // can only be the newest: it is left out until it is.
        if !period.is_offered(|t| addressing.lists(t)) {
            continue;
        }
        let mut adaptations = adaptation_sets(period, *offset, addressing, timeline.segment_duration);
        if let Addressing::LowLatency { .. } = addressing {
            let media_start = timeline.availability_start + period.start;
            for set in &mut adaptations {
                set.ProducerReferenceTime = vec![producer_reference_time(media_start)];
            }
        }
        if adaptations.is_empty() {
            continue;
        }
        let start = period.start.saturating_add(*offset).saturating_sub(base);
        end = start.saturating_add(period.duration.unwrap_or_default().saturating_sub(*offset));
        periods.push(dash::Period {
            id: Some(period.session.to_string()),
            start: Some(start),
            // A closed Period lasts as far as every track's segments reach
            // (`Period::numbered_end`). A player that numbers segments from the clock
            // (`$Number$` forms) counts them from this: without it, it takes the Period
            // to run until the next one starts and asks for segments in between that
            // were never made (a re-plan whose old pipeline could not drain all it had);
            // with the longest track's end, for a segment of the shorter ones that does
            // not exist (audio ran 5 ms past the video's last segment: dash.js and Shaka
            // asked for the video's next number, 404). Players jump the gap to the next
            // Period.
            duration: period.duration.and_then(|_| period.numbered_end(timeline.segment_duration)).map(|d| d.saturating_sub(*offset)),
            adaptations,
            ..Default::default()
        });
    }
    let window_start = periods.first()?.start.unwrap_or_default();
    if let Addressing::LowLatency { chunk } = addressing {
        let reached = timeline.periods.iter().rev().find_map(|p| p.start.checked_add(p.numbered_end(timeline.segment_duration)?));
        if reached.is_none_or(|end| end.saturating_sub(window_start) < LOW_LATENCY_START_WINDOW + chunk * 2) {
            return None;
        }
    }

    let mut mpd = dash::MPD {
        xmlns: Some("urn:mpeg:dash:schema:mpd:2011".into()),
        profiles: Some(PROFILES.into()),
        minBufferTime: Some(timing.segment_duration),
        maxSegmentDuration: Some(longest_segment(timeline).max(timing.segment_duration)),
        publishTime: Some(utc(timeline.published)),
        periods,
        ..Default::default()
    };
    if live {
        mpd.mpdtype = Some("dynamic".into());
        let delay = match addressing {
            Addressing::Number { delay } => delay,
            _ => Duration::ZERO,
        };
        mpd.availabilityStartTime = Some(utc(timeline.availability_start + delay));
        mpd.minimumUpdatePeriod = Some(timing.update_period);
        mpd.timeShiftBufferDepth = Some(timing.dvr_window);
        mpd.suggestedPresentationDelay = Some(timing.presentation_delay);
        if let Addressing::LowLatency { chunk } = addressing {
            mpd.ServiceDescription = vec![service_description(timing.segment_duration + chunk)];
            // The ServiceDescription says how far behind to play; Shaka would add this
            // delay on top of it.
            mpd.suggestedPresentationDelay = Some(Duration::ZERO);
        }
        mpd.UTCTiming = vec![dash::UTCTiming {
            schemeIdUri: UTC_TIMING_SCHEME.into(),
            value: Some(UTC_TIMING_PATH.into()),
            ..Default::default()
        }];
    } else {
        mpd.mpdtype = Some("static".into());
        mpd.mediaPresentationDuration = Some(end);
    }
    Some(format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}", without_unused_namespaces(&mpd.to_string())))
}

/// The latency a low-latency player should hold (`target`), and how it may get there.
fn service_description(target: Duration) -> dash::ServiceDescription {
    let ms = |d: Duration| d.as_millis() as f64;
    dash::ServiceDescription {
        id: Some("0".into()),
        Latency: vec![dash::Latency { target: Some(ms(target)), min: Some(ms(target / 2)), max: Some(ms(target * 3)), referenceId: Some("0".into()) }],
        PlaybackRate: vec![dash::PlaybackRate { min: Some(PLAYBACK_RATE.0), max: Some(PLAYBACK_RATE.1) }],
        ..Default::default()
    }
}

/// Presentation time 0 of a Period (no presentationTimeOffset in live Periods) is the wall
/// clock at `media_start`, by the same clock as the MPD's UTCTiming.
fn producer_reference_time(media_start: SystemTime) -> dash::ProducerReferenceTime {
    dash::ProducerReferenceTime {
        id: Some("0".into()),
        presentationTime: Some(0),
        prtType: Some("encoder".into()),
        wallClockTime: Some(utc(media_start)),
        UTCTiming: Some(dash::UTCTiming { schemeIdUri: UTC_TIMING_SCHEME.into(), value: Some(UTC_TIMING_PATH.into()), ..Default::default() }),
        ..Default::default()
    }
}

/// Drops the root element's declarations of namespace prefixes the document never uses.
fn without_unused_namespaces(xml: &str) -> String {
    let root_end = xml.find('>').unwrap_or(0);
    let (root, body) = xml.split_at(root_end);
    let mut root = root.to_owned();
    for prefix in UNUSED_PREFIXES {
        let declaration = format!(" xmlns:{prefix}=\"");
        let Some(start) = root.find(&declaration) else { continue };
        if body.contains(&format!("{prefix}:")) {
            continue;
        }
        let value_start = start + declaration.len();
        let Some(value_len) = root[value_start..].find('"') else { continue };
        root.replace_range(start..value_start + value_len + 1, "");
    }
    root + body
}

/// The MPD as served to one viewer: its UTCTiming clock URLs (the MPD's, and those inside
/// ProducerReferenceTime) made absolute for `origin` (`http://host:port`, already validated
/// by the caller). A tier passes its own origin, so the URL it received from upstream is
/// replaced as well. `None` leaves the document as is.
pub fn with_clock_origin(mpd: &bytes::Bytes, origin: Option<&str>) -> bytes::Bytes {
    let (Some(origin), Ok(text)) = (origin, std::str::from_utf8(mpd)) else { return mpd.clone() };
    let element = format!("<UTCTiming schemeIdUri=\"{UTC_TIMING_SCHEME}\" value=\"");
    let mut out = String::with_capacity(text.len() + 2 * origin.len());
    let mut rest = text;
    while let Some(start) = rest.find(&element).map(|i| i + element.len()) {
        let Some(len) = rest[start..].find('"') else { break };
        let value = &rest[start..start + len];
        let path_at = value.find("://").and_then(|i| value[i + 3..].find('/').map(|p| i + 3 + p)).unwrap_or(0);
        out.push_str(&rest[..start]);
        out.push_str(origin);
        out.push_str(&value[path_at..]);
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    bytes::Bytes::from(out)
}

/// The longest listed segment, rounded up to the millisecond. Players start this far (plus
/// the presentation delay) behind the newest segment, so it must be the real figure.
fn longest_segment(timeline: &StreamTimeline) -> Duration {
    let millis = timeline
        .periods
        .iter()
        .flat_map(|p| &p.tracks)
        .flat_map(|t| t.segments.iter().map(|s| s.duration.saturating_mul(1000).div_ceil(u64::from(t.info.timescale).max(1))))
        .max()
        .unwrap_or_default();
    Duration::from_millis(millis)
}

/// Where the oldest retained media of a Period starts, from its start.
fn first_media_offset(period: &Period) -> Duration {
    period
        .tracks
        .iter()
        .filter_map(|t| t.segments.front().and_then(|s| media_duration(s.time, t.info.timescale)))
        .reduce(Duration::min)
        .unwrap_or_default()
}

fn adaptation_sets(period: &Period, offset: Duration, addressing: Addressing, segment_duration: Duration) -> Vec<dash::AdaptationSet> {
    let mut sets = Vec::new();
    for (index, kind) in [TrackKind::Video, TrackKind::Audio].into_iter().enumerate() {
        let tracks: Vec<&Track> = period.tracks.iter().filter(|t| t.info.kind == kind && addressing.lists(t)).collect();
        if tracks.is_empty() {
            continue;
        }
        let representations = tracks
            .iter()
            .map(|t| {
                let template = match addressing {
                    Addressing::Timeline => timeline_template(t, period.session.as_str(), offset),
                    Addressing::Number { .. } => number_template(t, period, segment_duration),
                    Addressing::LowLatency { chunk } => dash::SegmentTemplate {
                        // In whole milliseconds, rounded down: never before the first chunk.
                        availabilityTimeOffset: Some(segment_duration.saturating_sub(chunk).as_millis() as f64 / 1000.0),
                        ..number_template(t, period, segment_duration)
                    },
                };
                representation(t, template)
            })
            .collect();
        let mut set = dash::AdaptationSet {
            id: Some(index.to_string()),
            segmentAlignment: Some(true),
            startWithSAP: Some(1),
            representations,
            ..Default::default()
        };
        match kind {
            TrackKind::Video => {
                set.contentType = Some("video".into());
                set.mimeType = Some("video/mp4".into());
                set.par = Some(aspect_ratio(tracks[0].info.width, tracks[0].info.height));
                set.maxWidth = tracks.iter().map(|t| u64::from(t.info.width)).max();
                set.maxHeight = tracks.iter().map(|t| u64::from(t.info.height)).max();
            }
            TrackKind::Audio => {
                set.contentType = Some("audio".into());
                set.mimeType = Some("audio/mp4".into());
            }
        }
        sets.push(set);
    }
    sets
}

fn aspect_ratio(width: u32, height: u32) -> String {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let g = gcd(width, height).max(1);
    format!("{}:{}", width / g, height / g)
}

/// The Timeline form: every listed segment's real start and duration.
fn timeline_template(track: &Track, session: &str, offset: Duration) -> dash::SegmentTemplate {
    let scale = u64::from(track.info.timescale);
    let pto = (offset.as_secs_f64() * scale as f64).round() as u64;
    let timeline = dash::SegmentTimeline {
        segments: track.segments.iter().map(|s| dash::S { t: Some(s.time), d: s.duration, ..Default::default() }).collect(),
    };
    dash::SegmentTemplate {
        timescale: Some(scale),
        initialization: Some(init_template(session)),
        media: Some(media_template(session)),
        startNumber: track.segments.front().map(|s| s.number),
        presentationTimeOffset: (pto > 0).then_some(pto),
        SegmentTimeline: Some(timeline),
        ..Default::default()
    }
}

/// The Number form (live only): the nominal duration and the Period's first number; the
/// player derives which segments exist from the clock and timeShiftBufferDepth.
fn number_template(track: &Track, period: &Period, segment_duration: Duration) -> dash::SegmentTemplate {
    let scale = u64::from(track.info.timescale);
    let session = period.session.as_str();
    dash::SegmentTemplate {
        timescale: Some(scale),
        duration: Some((segment_duration.as_secs_f64() * scale as f64).round()),
        initialization: Some(init_template(session)),
        media: Some(media_template(session)),
        startNumber: Some(period.first_number),
        // Segments are only ever served complete, and only after the announced availability
        // (number_form_delay after their end); VLC 3.0 computes its start from the clock
        // only when this says they may be fetched earlier, and otherwise starts ~20 s back.
        availabilityTimeComplete: Some(false),
        ..Default::default()
    }
}

fn representation(track: &Track, template: dash::SegmentTemplate) -> dash::Representation {
    let info = &track.info;
    let mut rep = dash::Representation {
        id: Some(info.id.to_string()),
        bandwidth: Some(u64::from(info.bandwidth)),
        codecs: track.codecs.clone(),
        SegmentTemplate: Some(template),
        ..Default::default()
    };
    match info.kind {
        TrackKind::Video => {
            rep.width = Some(u64::from(info.width));
            rep.height = Some(u64::from(info.height));
            rep.sar = Some("1:1".into());
        }
        TrackKind::Audio => {
            rep.audioSamplingRate = Some(info.sample_rate.to_string());
            rep.AudioChannelConfiguration = vec![dash::AudioChannelConfiguration {
                schemeIdUri: AUDIO_CHANNELS_SCHEME.into(),
                value: Some(info.channels.to_string()),
                ..Default::default()
            }];
        }
    }
    rep
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::media::{RenditionId, SessionId, StreamId};
    use crate::package::timeline::RenditionInfo;

    /// The package tests' manifest timing: 1 s segments and updates, a 30 s DVR window.
    pub(in crate::package) const TIMING: MpdTiming = MpdTiming {
        segment_duration: Duration::from_secs(1),
        update_period: Duration::from_secs(1),
        dvr_window: Duration::from_secs(30),
        presentation_delay: Duration::from_secs(1),
        number_form_delay: Duration::from_secs(2),
        chunk_duration: None,
    };

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_000 + ms)
    }

    fn info(id: &str, kind: TrackKind) -> RenditionInfo {
        RenditionInfo {
            id: RenditionId::parse(id).unwrap(),
            kind,
            bandwidth: 1_000_000,
            width: if kind == TrackKind::Video { 1280 } else { 0 },
            height: if kind == TrackKind::Video { 720 } else { 0 },
            timescale: if kind == TrackKind::Video { 90_000 } else { 48_000 },
            sample_rate: 48_000,
            channels: 2,
        }
    }

    fn timeline() -> (StreamTimeline, SessionId) {
        let s = SessionId::parse("abc123").unwrap();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s.clone(), vec![info("720p", TrackKind::Video), info("audio", TrackKind::Audio)], None, at(0));
        let (v, a) = (RenditionId::parse("720p").unwrap(), RenditionId::parse("audio").unwrap());
        tl.set_codecs(&s, &v, "avc1.4D401F".into(), at(10));
        tl.set_codecs(&s, &a, "mp4a.40.2".into(), at(10));
        for i in 0..3u64 {
            tl.add_segment(&s, &v, i * 1_000_000_000, 1_000_000_000, at(1000 * (i + 1)));
            tl.add_segment(&s, &a, i * 960_000_000, 960_000_000, at(1000 * (i + 1)));
        }
        (tl, s)
    }

    #[test]
    fn nothing_playable_renders_nothing() {
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        assert!(render(&tl, &TIMING, ManifestForm::Timeline).is_none());
        tl.begin_period(SessionId::parse("s").unwrap(), vec![info("720p", TrackKind::Video)], None, at(0));
        assert!(render(&tl, &TIMING, ManifestForm::Timeline).is_none());
    }

    #[test]
    fn a_period_is_listed_once_every_track_is() {
        let s = SessionId::parse("abc123").unwrap();
        let (v, a) = (RenditionId::parse("720p").unwrap(), RenditionId::parse("audio").unwrap());
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s.clone(), vec![info("720p", TrackKind::Video), info("audio", TrackKind::Audio)], None, at(0));
        let low_latency = MpdTiming { chunk_duration: Some(Duration::from_nanos(333_333_333)), ..TIMING };
        let sets = |tl: &StreamTimeline, timing: &MpdTiming, form| {
            render(tl, timing, form).map(|xml| dash::parse(&xml).unwrap().periods.iter().map(|p| p.adaptations.len()).collect::<Vec<_>>())
        };
        // The audio's init segment and first segment before the video's: nothing yet, in
        // any form (a player would take the stream for audio only).
        tl.set_codecs(&s, &a, "mp4a.40.2".into(), at(10));
        assert_eq!(sets(&tl, &low_latency, ManifestForm::LowLatency), None);
        tl.add_segment(&s, &a, 0, 960_000_000, at(1000));
        assert_eq!(sets(&tl, &TIMING, ManifestForm::Timeline), None);
        // The video's init segment: the low-latency form would list both, once the stream
        // is old enough for it (`a_new_stream_gets_the_low_latency_form_once_its_window_is_long_enough`);
        // the others wait for the video's segment.
        tl.set_codecs(&s, &v, "avc1.4D401F".into(), at(1010));
        assert_eq!(sets(&tl, &TIMING, ManifestForm::Number), None);
        tl.add_segment(&s, &v, 0, 1_000_000_000, at(1020));
        assert_eq!(sets(&tl, &TIMING, ManifestForm::Number), Some(vec![2]));
        tl.add_segment(&s, &a, 960_000_000, 1_024_000_000, at(2000));
        assert_eq!(sets(&tl, &low_latency, ManifestForm::LowLatency), None, "the video is still 1 s in");
        tl.add_segment(&s, &v, 1_000_000_000, 1_000_000_000, at(2010));
        assert_eq!(sets(&tl, &low_latency, ManifestForm::LowLatency), Some(vec![2]));

        // A track that never comes: the Period is listed without it once another has two segments.
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s.clone(), vec![info("720p", TrackKind::Video), info("audio", TrackKind::Audio)], None, at(0));
        tl.set_codecs(&s, &a, "mp4a.40.2".into(), at(10));
        tl.add_segment(&s, &a, 0, 960_000_000, at(1000));
        assert_eq!(sets(&tl, &TIMING, ManifestForm::Timeline), None);
        tl.add_segment(&s, &a, 960_000_000, 960_000_000, at(2000));
        assert_eq!(sets(&tl, &TIMING, ManifestForm::Timeline), Some(vec![1]));
        assert_eq!(sets(&tl, &low_latency, ManifestForm::LowLatency), Some(vec![1]));
    }

    #[test]
    fn a_new_stream_gets_the_low_latency_form_once_its_window_is_long_enough() {
        let low_latency = MpdTiming { chunk_duration: Some(Duration::from_nanos(333_333_333)), ..TIMING };
        let periods = |tl: &StreamTimeline| render(tl, &low_latency, ManifestForm::LowLatency).map(|xml| dash::parse(&xml).unwrap().periods.len());
        let s = SessionId::parse("abc123").unwrap();
        let v = RenditionId::parse("720p").unwrap();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s.clone(), vec![info("720p", TrackKind::Video)], None, at(0));
        tl.set_codecs(&s, &v, "avc1.4D401F".into(), at(10));
        // One second of media: a window Shaka could not start in (1 s and two chunks needed).
        tl.add_segment(&s, &v, 0, 1_000_000_000, at(1000));
        assert_eq!(periods(&tl), None);
        assert!(render(&tl, &low_latency, ManifestForm::Timeline).is_some(), "the other forms list the segment");
        tl.add_segment(&s, &v, 1_000_000_000, 1_000_000_000, at(2000));
        assert_eq!(periods(&tl), Some(1));

        // A republish starts a Period with no media yet: the window is the old Period's too,
        // and the new Period is listed from its init segment as before.
        tl.end_session(&s, at(2100));
        let s2 = SessionId::parse("def456").unwrap();
        tl.begin_period(s2.clone(), vec![info("720p", TrackKind::Video)], None, at(2200));
        tl.set_codecs(&s2, &v, "avc1.4D401F".into(), at(2300));
        assert_eq!(periods(&tl), Some(2));
    }

    #[test]
    fn live_mpd_round_trips_with_real_segment_times() {
        let (tl, _) = timeline();
        let xml = render(&tl, &TIMING, ManifestForm::Timeline).unwrap();
        let mpd = dash::parse(&xml).expect(&xml);
        assert_eq!(mpd.mpdtype.as_deref(), Some("dynamic"));
        assert_eq!(mpd.availabilityStartTime, Some(utc(at(0))));
        assert_eq!(mpd.minimumUpdatePeriod, Some(Duration::from_secs(1)));
        assert_eq!(mpd.timeShiftBufferDepth, Some(Duration::from_secs(30)));
        assert_eq!(mpd.suggestedPresentationDelay, Some(Duration::from_secs(1)));
        assert_eq!(mpd.maxSegmentDuration, Some(Duration::from_secs(1)), "the longest listed segment");
        let period = &mpd.periods[0];
        assert_eq!(period.id.as_deref(), Some("abc123"));
        let video = &period.adaptations[0].representations[0];
        assert_eq!((video.width, video.height, video.codecs.as_deref()), (Some(1280), Some(720), Some("avc1.4D401F")));
        let template = video.SegmentTemplate.as_ref().unwrap();
        assert_eq!(template.media.as_deref(), Some("$RepresentationID$/abc123-$Number$.m4s"));
        assert_eq!(template.startNumber, Some(1));
        let times: Vec<_> = template.SegmentTimeline.as_ref().unwrap().segments.iter().map(|s| (s.t, s.d)).collect();
        assert_eq!(times, [(Some(0), 90_000), (Some(90_000), 90_000), (Some(180_000), 90_000)]);
        let audio = &period.adaptations[1].representations[0];
        let atimes: Vec<_> = audio.SegmentTemplate.as_ref().unwrap().SegmentTimeline.as_ref().unwrap().segments.iter().map(|s| s.d).collect();
        assert_eq!(atimes, [46_080, 46_080, 46_080]);
        assert_eq!(audio.AudioChannelConfiguration[0].value.as_deref(), Some("2"));
        assert_eq!(mpd.UTCTiming[0].value.as_deref(), Some("/time"));
    }

    #[test]
    fn max_segment_duration_is_the_longest_listed_segment() {
        let (mut tl, s) = timeline();
        let v = RenditionId::parse("720p").unwrap();
        tl.add_segment(&s, &v, 3_000_000_000, 1_034_000_000, at(4000));
        let mpd = dash::parse(&render(&tl, &TIMING, ManifestForm::Timeline).unwrap()).unwrap();
        assert_eq!(mpd.maxSegmentDuration, Some(Duration::from_millis(1034)));
    }

    #[test]
    fn root_tag_declares_only_the_dash_namespace() {
        let (tl, _) = timeline();
        let xml = render(&tl, &TIMING, ManifestForm::Timeline).unwrap();
        let root = &xml[xml.find("<MPD").unwrap()..];
        let root = &root[..root.find('>').unwrap()];
        assert_eq!(root.matches("xmlns").count(), 1, "{root}");
        assert!(root.contains("xmlns=\"urn:mpeg:dash:schema:mpd:2011\""), "{root}");
        // GStreamer's type finder must see the MPD root well inside its first bytes.
        assert!(xml.find("<MPD").unwrap() < 64 && root.len() < 512, "{} bytes: {root}", root.len());
        dash::parse(&xml).unwrap();
    }

    #[test]
    fn clock_url_is_made_absolute_for_the_viewers_host() {
        let (tl, _) = timeline();
        let xml = render(&tl, &TIMING, ManifestForm::Timeline).unwrap();
        let xml = bytes::Bytes::from(xml);
        let served = with_clock_origin(&xml, Some("http://edge.example:8080"));
        let mpd = dash::parse(std::str::from_utf8(&served).unwrap()).unwrap();
        assert_eq!(mpd.UTCTiming[0].value.as_deref(), Some("http://edge.example:8080/time"));
        // A tier re-serving an upstream's MPD puts its own origin in place of the upstream's.
        let again = with_clock_origin(&served, Some("http://[::1]:9000"));
        let mpd = dash::parse(std::str::from_utf8(&again).unwrap()).unwrap();
        assert_eq!(mpd.UTCTiming[0].value.as_deref(), Some("http://[::1]:9000/time"));
        assert_eq!(served.len() - xml.len(), "http://edge.example:8080".len());
        assert_eq!(with_clock_origin(&xml, None), xml);
    }

    #[test]
    fn number_form_lets_the_clock_name_the_segments() {
        let (mut tl, s) = timeline();
        let xml = render(&tl, &TIMING, ManifestForm::Number).unwrap();
        assert!(!xml.contains("SegmentTimeline"), "{xml}");
        assert!(xml.contains(" duration=\"90000\""), "an integer duration, as the schema wants: {xml}");
        let mpd = dash::parse(&xml).expect(&xml);
        assert_eq!(mpd.mpdtype.as_deref(), Some("dynamic"));
        assert_eq!(mpd.availabilityStartTime, Some(utc(at(2000))), "a segment is available number_form_delay after its end");
        let template = |mpd: &dash::MPD, period: usize, set: usize| mpd.periods[period].adaptations[set].representations[0].SegmentTemplate.clone().unwrap();
        let video = template(&mpd, 0, 0);
        assert_eq!((video.timescale, video.duration, video.startNumber), (Some(90_000), Some(90_000.0), Some(1)));
        assert_eq!(video.media.as_deref(), Some("$RepresentationID$/abc123-$Number$.m4s"));
        let audio = template(&mpd, 0, 1);
        assert_eq!((audio.timescale, audio.duration, audio.startNumber), (Some(48_000), Some(48_000.0), Some(1)));

        // A republish 4.5 s in: its Period starts on the grid at 5 s and numbers from 6,
        // the numbers its segments get in the store.
        tl.end_session(&s, at(3000));
        let s2 = SessionId::parse("def456").unwrap();
        let v = RenditionId::parse("720p").unwrap();
        tl.begin_period(s2.clone(), vec![info("720p", TrackKind::Video)], None, at(4500));
        tl.set_codecs(&s2, &v, "avc1.4D401F".into(), at(4600));
        assert_eq!(tl.add_segment(&s2, &v, 0, 1_000_000_000, at(6000)), Some(6));
        let mpd = dash::parse(&render(&tl, &TIMING, ManifestForm::Number).unwrap()).unwrap();
        assert_eq!(mpd.periods[1].start, Some(Duration::from_secs(5)));
        assert_eq!(template(&mpd, 1, 0).startNumber, Some(6));
        // The Timeline form lists the same segment under the same number.
        let timeline_form = dash::parse(&render(&tl, &TIMING, ManifestForm::Timeline).unwrap()).unwrap();
        assert_eq!(template(&timeline_form, 1, 0).startNumber, Some(6));

        // An ended stream lists its segments in either form.
        tl.end_session(&s2, at(7000));
        assert_eq!(render(&tl, &TIMING, ManifestForm::Number), render(&tl, &TIMING, ManifestForm::Timeline));
    }

    #[test]
    fn the_low_latency_form_is_a_chunked_number_form() {
        let (tl, _) = timeline();
        // The default chunk: a third of the segment.
        let low_latency = MpdTiming { chunk_duration: Some(Duration::from_nanos(333_333_333)), ..TIMING };
        let xml = render(&tl, &low_latency, ManifestForm::LowLatency).unwrap();
        assert!(!xml.contains("SegmentTimeline"), "{xml}");
        let mpd = dash::parse(&xml).expect(&xml);
        assert_eq!(mpd.availabilityStartTime, Some(utc(at(0))), "no announcement delay: {xml}");
        for (set, timescale) in [(0, 90_000), (1, 48_000)] {
            let adaptation = &mpd.periods[0].adaptations[set];
            let template = adaptation.representations[0].SegmentTemplate.clone().unwrap();
            assert_eq!((template.duration, template.startNumber), (Some(f64::from(timescale)), Some(1)));
            // Requested once the first chunk exists (333 ms in), delivered as it is encoded.
            assert_eq!((template.availabilityTimeOffset, template.availabilityTimeComplete), (Some(0.666), Some(false)));
            let prt = &adaptation.ProducerReferenceTime[0];
            assert_eq!((prt.presentationTime, prt.wallClockTime), (Some(0), Some(utc(at(0)))), "Period start is the ingest wall clock");
        }
        assert_eq!(mpd.suggestedPresentationDelay, Some(Duration::ZERO), "the ServiceDescription decides the delay");
        let service = &mpd.ServiceDescription[0];
        assert_eq!((service.Latency[0].target, service.Latency[0].min, service.Latency[0].max), (Some(1333.0), Some(666.0), Some(3999.0)));
        assert_eq!((service.PlaybackRate[0].min, service.PlaybackRate[0].max), (Some(0.96), Some(1.04)));
        // Every clock URL is made absolute, the ProducerReferenceTime's too.
        let served = with_clock_origin(&bytes::Bytes::from(xml.clone()), Some("http://edge.example"));
        let served = std::str::from_utf8(&served).unwrap();
        assert_eq!(served.matches("value=\"http://edge.example/time\"").count(), 3, "{served}");
        // The other forms are unchanged; without low latency the form is the Timeline's.
        for form in [ManifestForm::Number, ManifestForm::Timeline] {
            assert_eq!(render(&tl, &low_latency, form), render(&tl, &TIMING, form));
        }
        assert_eq!(render(&tl, &TIMING, ManifestForm::LowLatency), render(&tl, &TIMING, ManifestForm::Timeline));

        // A closed Period lasts as far as every track reaches (the audio's 2.88 s, not the
        // video's 3 s), so a player counting segments from its duration asks for none that
        // a track lacks; the next Period starts where the longest ended.
        let mut tl = tl;
        let (next, video) = (SessionId::parse("def456").unwrap(), RenditionId::parse("720p").unwrap());
        tl.begin_period(next.clone(), vec![info("720p", TrackKind::Video)], Some(Duration::from_secs(3)), at(3500));
        tl.set_codecs(&next, &video, "avc1.4D401F".into(), at(3500));
        tl.add_segment(&next, &video, 0, 1_000_000_000, at(4500));
        let mpd = dash::parse(&render(&tl, &low_latency, ManifestForm::LowLatency).unwrap()).unwrap();
        let periods: Vec<_> = mpd.periods.iter().map(|p| (p.start, p.duration)).collect();
        assert_eq!(periods[0], (Some(Duration::ZERO), Some(Duration::from_millis(2880))));
        assert_eq!(periods.get(1).map(|p| p.0), Some(Some(Duration::from_secs(3))));
    }

    #[test]
    fn ended_mpd_is_static_and_rebased() {
        let (mut tl, s) = timeline();
        tl.periods[0].tracks[0].segments.pop_front();
        tl.periods[0].tracks[1].segments.pop_front();
        tl.end_session(&s, at(4000));
        let mpd = dash::parse(&render(&tl, &TIMING, ManifestForm::Timeline).unwrap()).unwrap();
        assert_eq!(mpd.mpdtype.as_deref(), Some("static"));
        assert!(mpd.minimumUpdatePeriod.is_none());
        assert_eq!(mpd.periods[0].start, Some(Duration::ZERO));
        assert_eq!(mpd.mediaPresentationDuration, Some(Duration::from_millis(2040)));
        let template = mpd.periods[0].adaptations[1].representations[0].SegmentTemplate.clone().unwrap();
        assert_eq!(template.presentationTimeOffset, Some(46_080));
    }
}
