//! The segment timeline of one stream: Periods (one per publish session), their renditions
//! and the segments each holds inside the DVR window. Pure data: the packager mutates it as
//! the muxers cut segments, the MPD and HLS renderers read it.
//!
//! Media times are ticks of a track's timescale; they become `Duration`s in integers
//! ([`media_duration`]) and are added with checked arithmetic, so no time a muxer or a
//! broadcaster's configuration produces (a zero timescale, a tick count near `u64::MAX`)
//! can panic here: the renderer and the sweep serve every stream on the node.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use crate::media::{RenditionId, SessionId, StreamId, TrackKind};

/// What the MPD says about one Representation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RenditionInfo {
    pub id: RenditionId,
    pub kind: TrackKind,
    /// Bits per second, as promised in the MPD.
    pub bandwidth: u32,
    /// Video: picture size.
    pub width: u32,
    pub height: u32,
    /// Ticks per second of the segment timeline (90 kHz video, the sample rate for audio).
    pub timescale: u32,
    /// Audio only: sampling rate and channel count.
    pub sample_rate: u32,
    pub channels: u32,
}

/// One segment as the timeline knows it (its bytes live in the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentEntry {
    pub number: u64,
    /// Start in timescale ticks since the Period start.
    pub time: u64,
    pub duration: u64,
}

/// One chunk of a segment as LL-HLS lists it: an `EXT-X-PART`, a byte range of the
/// segment's object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartEntry {
    /// In timescale ticks.
    pub duration: u64,
    pub offset: u64,
    pub length: u64,
    /// Decodes without the parts before it (a keyframe first, or audio).
    pub independent: bool,
}

/// The parts of one recent segment (growing or complete).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentParts {
    pub number: u64,
    /// Where the segment starts (ticks after the Period start).
    pub start: u64,
    pub parts: Vec<PartEntry>,
    /// The segment is complete (listed in `segments`): no part will follow.
    pub complete: bool,
}

/// A chunk as the packager hands it to the timeline (running time, nanoseconds).
#[derive(Debug, Clone, Copy)]
pub struct PartTiming {
    pub segment_start_ns: u64,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub length: u64,
    pub independent: bool,
}

/// Segments whose parts a track keeps: LL-HLS lists parts of the segments within the last
/// six target durations (`hls::PARTS_LISTED_TARGETS`), and of the one being encoded.
pub const PARTS_KEPT: usize = 8;

/// How far after the previous Period's segments a re-plan's Period may start and still
/// be joined to them ([`StreamTimeline::begin_period`]): a frame and a half at 30 fps.
pub const PERIOD_JOIN: Duration = Duration::from_millis(50);

/// Complete segments a Period's furthest track may have while another track is still not
/// ready before players are offered the Period without it ([`Period::is_offered`]): every
/// rung and the audio cut their first segment within a frame or two of each other, so a
/// track that has nothing after two segments of another has failed (or lags so far behind,
/// on an overloaded host, that players are better off without it in that Period's offer).
const OFFER_WITHOUT_LATE_TRACK: usize = 2;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Track {
    pub info: RenditionInfo,
    /// RFC 6381 codecs string, known once the init segment is out.
    pub codecs: Option<String>,
    pub segments: VecDeque<SegmentEntry>,
    /// With low latency: the parts of the newest segments ([`PARTS_KEPT`]), the one being
    /// encoded last while it grows.
    pub parts: VecDeque<SegmentParts>,
    /// The longest part the track has had (ticks): LL-HLS's part target covers it.
    pub longest_part: u64,
    next_number: u64,
}

/// `ticks` of `timescale` ticks a second as a `Duration`, computed in integers (exact to the
/// nanosecond, never infinite or NaN); `None` for a zero timescale. The AAC parser refuses
/// sample rates (an audio track's timescale) outside 7,350..=96,000 Hz, so `None` means a
/// bug upstream; [`StreamTimeline::begin_period`] logs such a track.
pub fn media_duration(ticks: u64, timescale: u32) -> Option<Duration> {
    let scale = u64::from(timescale);
    if scale == 0 {
        return None;
    }
    // The remainder is below the timescale (< 2^32), so its nanoseconds fit a u64.
    let nanos = (ticks % scale) * 1_000_000_000 / scale;
    Some(Duration::new(ticks / scale, nanos as u32))
}

impl Track {
    /// The last segment's end after the Period start; `None` without segments or timescale.
    fn end(&self) -> Option<Duration> {
        let last = self.segments.back()?;
        media_duration(last.time.saturating_add(last.duration), self.info.timescale)
    }

    /// True when players can use this track: an init segment and at least one segment.
    pub fn is_playable(&self) -> bool {
        self.codecs.is_some() && !self.segments.is_empty()
    }

    /// Nanoseconds of running time as ticks of the track's timescale.
    fn ticks(&self, ns: u64) -> u64 {
        u64::try_from(u128::from(ns) * u128::from(self.info.timescale) / 1_000_000_000).unwrap_or(u64::MAX)
    }

    /// Appends the segment from `time` to `end` (ticks) under the next number, which is
    /// returned; the parts listed for it are complete.
    fn push_segment(&mut self, time: u64, end: u64) -> u64 {
        // Derive each duration from the next start so the timeline has no rounding gaps.
        if let Some(prev) = self.segments.back_mut()
            && time > prev.time {
                prev.duration = time - prev.time;
            }
        let number = self.next_number;
        self.next_number += 1;
        self.segments.push_back(SegmentEntry { number, time, duration: end.saturating_sub(time).max(1) });
        if let Some(parts) = self.parts.back_mut().filter(|s| s.number == number) {
            parts.complete = true;
        }
        number
    }

    /// The number the segment being encoded (or the next one) will have.
    pub fn next_segment_number(&self) -> u64 {
        self.next_number
    }

    /// The segment being encoded, listed by its parts and not complete.
    fn growing(&self) -> Option<&SegmentParts> {
        self.parts.back().filter(|p| p.number == self.next_number && !p.complete && !p.parts.is_empty())
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Period {
    pub session: SessionId,
    /// Start relative to the stream's availabilityStartTime.
    pub start: Duration,
    /// The number of the Period's first segment. Segments are numbered on one grid counted
    /// from availabilityStartTime across Periods (segment n ends near n segment durations
    /// after it), so a player that derives a number from the clock finds it in any Period.
    pub first_number: u64,
    pub tracks: Vec<Track>,
    /// Set once the session has ended.
    pub duration: Option<Duration>,
}

impl Period {
    pub fn track(&self, id: &RenditionId) -> Option<&Track> {
        self.tracks.iter().find(|t| &t.info.id == id)
    }

    /// True once players may be offered the Period: every track is `ready` (what a
    /// manifest needs to list it), or the Period has ended, or one track already has
    /// [`OFFER_WITHOUT_LATE_TRACK`] segments (one still not ready then has failed). A
    /// player may take the tracks a Period first offers it and never the ones that appear
    /// later: hls.js reads the multivariant playlist once (offered the audio a moment
    /// before the video, it played sound and no picture); the MPD holds a Period back the
    /// same way, so no DASH player is asked to take an AdaptationSet added to a Period it
    /// already has. Media time decides it, not the wall clock.
    pub fn is_offered(&self, ready: impl Fn(&Track) -> bool) -> bool {
        self.duration.is_some() || self.tracks.iter().all(ready) || self.tracks.iter().any(|t| t.segments.len() >= OFFER_WITHOUT_LATE_TRACK)
    }

    /// How far the Period reaches for a player that numbers its segments from the clock
    /// (`ceil(duration / segment duration)` segments): as far as every track's media
    /// reaches, and no further than the segments every track has (a track can end a
    /// fraction of a millisecond past its last segment's nominal end, which would count
    /// one segment more). After the Period start; `None` without segments.
    pub fn numbered_end(&self, segment_duration: Duration) -> Option<Duration> {
        let tracks = self.tracks.iter().filter(|t| !t.segments.is_empty());
        let media = tracks.clone().filter_map(Track::end).min()?;
        let segments = tracks.filter_map(|t| t.segments.back()).map(|s| (s.number + 1).saturating_sub(self.first_number)).min()?;
        Some(media.min(segment_duration.saturating_mul(u32::try_from(segments).unwrap_or(u32::MAX))))
    }
}

/// A segment the timeline dropped; the packager deletes its bytes from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub session: SessionId,
    pub rendition: RenditionId,
    pub number: Option<u64>,
}

/// What one rendition has lost from the front of the window since the stream appeared,
/// every Period together: HLS numbers a media playlist's segments and discontinuities by
/// these counts (see the hls module).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dropped {
    /// Segments evicted.
    pub segments: u64,
    /// Periods whose last segment of the rendition was evicted.
    pub periods: u64,
}

impl Dropped {
    /// Counts one evicted segment of a track that `emptied` or not.
    fn note(&mut self, emptied: bool) {
        self.segments += 1;
        self.periods += u64::from(emptied);
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StreamTimeline {
    pub stream: StreamId,
    pub availability_start: SystemTime,
    /// The target segment duration: the grid that Period starts and segment numbers follow.
    pub segment_duration: Duration,
    pub periods: Vec<Period>,
    /// When the last session ended, while no session is live.
    pub ended_at: Option<SystemTime>,
    /// When the last session was suspended, while the stream waits for its next one.
    pub suspended_at: Option<SystemTime>,
    /// Last change, for MPD@publishTime.
    pub published: SystemTime,
    /// When the last segment was added (the stream's sign of life).
    pub last_segment_at: Option<SystemTime>,
    /// Segments added since the stream appeared, every rendition and Period.
    pub segments_added: u64,
    /// Per rendition (bounded by the renditions the stream's ladders had), what left the
    /// window.
    pub dropped: HashMap<RenditionId, Dropped>,
    /// Every rendition the stream has had (bounded the same way): a rendition's HLS media
    /// playlist goes on through Periods without it ([`StreamTimeline::carrier`]).
    pub seen: HashMap<RenditionId, RenditionInfo>,
}

impl StreamTimeline {
    pub fn new(stream: StreamId, segment_duration: Duration, now: SystemTime) -> Self {
        assert!(!segment_duration.is_zero(), "segment duration must be positive");
        Self { stream, availability_start: now, segment_duration, periods: Vec::new(), ended_at: None, suspended_at: None, published: now, last_segment_at: None, segments_added: 0, dropped: HashMap::new(), seen: HashMap::new() }
    }

    /// Opens a Period for a new session, closing the one before it. A re-plan passes
    /// `start`, the end of the previous Period, so that the two are contiguous. A new publish
    /// (`None`) starts now, rounded up onto the segment grid, so that its segments end on
    /// whole segment durations after availabilityStartTime as the Number form promises.
    /// Never before the previous Period's end: a publisher that ran ahead of the clock and
    /// was taken over (or reconnected at once) leaves media past "now", and presentation
    /// time must not go back. Except that a re-plan starting within [`PERIOD_JOIN`] after
    /// the end of the segments every track of the previous Period has
    /// ([`Period::numbered_end`]) starts right there: the cut is at a source keyframe a few
    /// milliseconds off the segment grid, and dash.js and Shaka, which end a Period where
    /// the next one starts, would otherwise count one more `$Number$` segment in it (a
    /// 404) for that sliver. The previous Period's longer tracks lose those milliseconds.
    pub fn begin_period(&mut self, session: SessionId, renditions: Vec<RenditionInfo>, start: Option<Duration>, now: SystemTime) -> Duration {
        self.close_current(now);
        let previous = self.periods.last();
        let previous_end = previous.and_then(|p| p.duration.map(|d| p.start.saturating_add(d)));
        let numbered_end = previous.and_then(|p| p.numbered_end(self.segment_duration).map(|end| p.start.saturating_add(end)));
        let start = match start {
            Some(start) if numbered_end.is_some_and(|end| start >= end && start - end <= PERIOD_JOIN) => numbered_end.expect("checked"),
            Some(start) => previous_end.map_or(start, |end| start.max(end)),
            None => {
                let now = now.duration_since(self.availability_start).unwrap_or_default();
                self.on_grid(previous_end.map_or(now, |end| now.max(end)))
            }
        };
        let first_number = u64::try_from(start.as_nanos() / self.segment_duration.as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        for info in renditions.iter().filter(|r| r.timescale == 0) {
            tracing::error!(stream = %self.stream, rendition = %info.id, "rendition with a zero timescale: its segments have no times");
        }
        for info in &renditions {
            self.seen.insert(info.id.clone(), info.clone());
        }
        let tracks = renditions
            .into_iter()
            .map(|info| Track { info, codecs: None, segments: VecDeque::new(), parts: VecDeque::new(), longest_part: 0, next_number: first_number })
            .collect();
        self.periods.push(Period { session, start, first_number, tracks, duration: None });
        self.ended_at = None;
        self.suspended_at = None;
        self.published = now;
        start
    }

    /// The track that carries `rendition`'s HLS media playlist in Period `index`: its own;
    /// or, in a Period made without it (a re-plan dropped the rung) after it appeared, a
    /// stand-in of its kind: the tallest video track not taller than it, else the shortest;
    /// the first audio track. A player that follows the playlist goes on through the
    /// discontinuity into what the stream now has, as a DASH player moves to the new
    /// Period's Representations. `None` before the rendition appeared, or in a Period
    /// without its kind.
    pub fn carrier(&self, index: usize, rendition: &RenditionId) -> Option<&Track> {
        let period = self.periods.get(index)?;
        if let Some(own) = period.track(rendition) {
            return Some(own);
        }
        let info = self.seen.get(rendition)?;
        let appeared = self.dropped.contains_key(rendition) || self.periods[..index].iter().any(|p| p.track(rendition).is_some());
        if !appeared {
            return None;
        }
        let mut same_kind = period.tracks.iter().filter(|t| t.info.kind == info.kind);
        match info.kind {
            TrackKind::Video => {
                let not_taller = same_kind.clone().filter(|t| t.info.height <= info.height).max_by_key(|t| t.info.height);
                not_taller.or_else(|| same_kind.min_by_key(|t| t.info.height))
            }
            TrackKind::Audio => same_kind.next(),
        }
    }

    /// For Period `index`: the renditions each of its tracks stands in for (by track id),
    /// whose playlists lose a segment when that track does.
    fn stand_ins(&self, index: usize) -> HashMap<RenditionId, Vec<RenditionId>> {
        let mut riders: HashMap<RenditionId, Vec<RenditionId>> = HashMap::new();
        let Some(period) = self.periods.get(index) else { return riders };
        for rendition in self.seen.keys().filter(|r| period.track(r).is_none()) {
            if let Some(track) = self.carrier(index, rendition) {
                riders.entry(track.info.id.clone()).or_default().push(rendition.clone());
            }
        }
        riders
    }

    /// Counts a segment of track `id` evicted (its track `emptied` or not) for its own
    /// playlist and the playlists it stands in for (`riders`).
    fn note_dropped(&mut self, id: &RenditionId, riders: &HashMap<RenditionId, Vec<RenditionId>>, emptied: bool) {
        self.dropped.entry(id.clone()).or_default().note(emptied);
        for rider in riders.get(id).into_iter().flatten() {
            self.dropped.entry(rider.clone()).or_default().note(emptied);
        }
    }

    /// `at`, rounded up to a whole number of segment durations.
    fn on_grid(&self, at: Duration) -> Duration {
        let step = self.segment_duration.as_nanos();
        let nanos = at.as_nanos().div_ceil(step).saturating_mul(step);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Closes the open Period, if any; true if one was.
    fn close_current(&mut self, now: SystemTime) -> bool {
        let Some(period) = self.periods.last_mut().filter(|p| p.duration.is_none()) else { return false };
        // The Period lasts as long as its longest track, so players can play it out.
        let media = period.tracks.iter().filter_map(Track::end).max().unwrap_or_default();
        period.duration = Some(media);
        self.published = now;
        true
    }

    /// The broadcaster stopped: the presentation becomes static until a new session.
    pub fn end_session(&mut self, session: &SessionId, now: SystemTime) {
        if self.periods.last().is_some_and(|p| &p.session == session) && self.close_current(now) {
            self.ended_at = Some(now);
        }
    }

    /// The session ended but the stream is expected to go on: its broadcaster dropped and
    /// may reconnect, or a drain hands it to another node (cluster/handover.rs). Its Period
    /// closes, announcing where it ends, and the presentation stays dynamic, waiting for
    /// the next Period (until [`Self::end_suspended`]).
    pub fn suspend_session(&mut self, session: &SessionId, now: SystemTime) {
        if self.periods.last().is_some_and(|p| &p.session == session) && self.close_current(now) && self.ended_at.is_none() {
            self.suspended_at = Some(now);
        }
    }

    /// How long ago the stream was suspended, while it is.
    pub fn suspended_for(&self, now: SystemTime) -> Option<Duration> {
        self.suspended_at.map(|at| now.duration_since(at).unwrap_or_default())
    }

    /// A suspended stream that nobody continued ends now.
    pub fn end_suspended(&mut self, now: SystemTime) {
        if self.suspended_at.take().is_some() {
            self.ended_at = Some(now);
            self.published = now;
        }
    }

    /// Between sessions: the last Period is closed (the stream ended, or was suspended).
    pub fn between_sessions(&self) -> bool {
        self.periods.last().is_none_or(|p| p.duration.is_some())
    }

    fn track_mut(&mut self, session: &SessionId, rendition: &RenditionId) -> Option<&mut Track> {
        self.periods
            .iter_mut()
            .rev()
            .find(|p| &p.session == session)?
            .tracks
            .iter_mut()
            .find(|t| &t.info.id == rendition)
    }

    pub fn set_codecs(&mut self, session: &SessionId, rendition: &RenditionId, codecs: String, now: SystemTime) {
        if let Some(track) = self.track_mut(session, rendition) {
            track.codecs = Some(codecs);
            self.published = now;
        }
    }

    /// Appends a segment cut at `start_ns` (session running time) and returns its number,
    /// or `None` when the session or rendition is unknown.
    pub fn add_segment(
        &mut self,
        session: &SessionId,
        rendition: &RenditionId,
        start_ns: u64,
        duration_ns: u64,
        now: SystemTime,
    ) -> Option<u64> {
        let track = self.track_mut(session, rendition)?;
        let (time, end) = (track.ticks(start_ns), track.ticks(start_ns.saturating_add(duration_ns)));
        let number = track.push_segment(time, end);
        self.segment_added(now);
        Some(number)
    }

    fn segment_added(&mut self, now: SystemTime) {
        self.published = now;
        self.last_segment_at = Some(now);
        self.segments_added += 1;
    }

    /// The session ended (its pipeline stopped, or another session replaced it) before the
    /// segments it was encoding were complete: each is made complete from the parts it has,
    /// which LL-HLS players have already been given under its number; a new Period's first
    /// segment taking that number instead would be a different segment under the same
    /// sequence number. Returns the (rendition, number) of each segment completed.
    pub fn complete_growing(&mut self, session: &SessionId, now: SystemTime) -> Vec<(RenditionId, u64)> {
        let Some(period) = self.periods.iter_mut().rev().find(|p| &p.session == session) else { return Vec::new() };
        let mut completed = Vec::new();
        for track in &mut period.tracks {
            let Some(growing) = track.growing() else { continue };
            let (start, duration) = (growing.start, growing.parts.iter().map(|p| p.duration).sum::<u64>());
            completed.push((track.info.id.clone(), track.push_segment(start, start.saturating_add(duration))));
        }
        for _ in &completed {
            self.segment_added(now);
        }
        completed
    }

    /// A chunk of the rendition's segment being encoded: a part of the segment that will get
    /// the next number, which is returned.
    pub fn add_part(&mut self, session: &SessionId, rendition: &RenditionId, part: PartTiming) -> Option<u64> {
        let track = self.track_mut(session, rendition)?;
        let number = track.next_number;
        let start = track.ticks(part.segment_start_ns);
        let end = track.ticks(part.end_ns.unwrap_or(part.start_ns).max(part.start_ns));
        if track.parts.back().is_none_or(|s| s.number != number) {
            track.parts.push_back(SegmentParts { number, start, parts: Vec::new(), complete: false });
            while track.parts.len() > PARTS_KEPT {
                track.parts.pop_front();
            }
        }
        let segment = track.parts.back_mut()?;
        let offset = segment.parts.last().map_or(0, |p| p.offset + p.length);
        // A part's duration runs from the segment's start through its end, less the parts
        // before it, so the parts add up to the segment without rounding gaps.
        let before: u64 = segment.parts.iter().map(|p| p.duration).sum();
        let duration = end.saturating_sub(start).saturating_sub(before).max(1);
        segment.parts.push(PartEntry { duration, offset, length: part.length, independent: part.independent });
        track.longest_part = track.longest_part.max(duration);
        Some(number)
    }

    /// Drops what fell out of the DVR window: segments whose end is older than `window`
    /// before `now`, or more than `window` of media behind the newest segment (a publisher
    /// ahead of the clock cannot grow the window), and then Periods with nothing left
    /// (never the live one).
    pub fn evict(&mut self, window: Duration, now: SystemTime) -> Vec<Evicted> {
        let ast = self.availability_start;
        let newest = self
            .periods
            .iter()
            .flat_map(|p| p.tracks.iter().filter_map(move |t| t.end().and_then(|end| p.start.checked_add(end))))
            .max();
        let by_clock = now.checked_sub(window);
        let by_media = newest.and_then(|end| ast.checked_add(end)?.checked_sub(window));
        let Some(horizon) = by_clock.max(by_media) else { return Vec::new() };
        let mut evicted = Vec::new();
        let live_index = self.periods.len().checked_sub(1).filter(|_| self.ended_at.is_none());
        let mut notes = Vec::new();
        for (index, period) in self.periods.iter_mut().enumerate() {
            let period_start = ast.checked_add(period.start);
            for track in &mut period.tracks {
                while let Some(first) = track.segments.front() {
                    // A segment without a time the clock can hold (no timescale, or past the
                    // year 292 billion) goes: the window stays bounded whatever it says.
                    let end = media_duration(first.time.saturating_add(first.duration), track.info.timescale)
                        .and_then(|end| period_start?.checked_add(end));
                    // Keep the newest segment of a live track so the MPD never goes empty.
                    if end.is_some_and(|end| end >= horizon) || (Some(index) == live_index && track.segments.len() == 1) {
                        break;
                    }
                    evicted.push(Evicted {
                        session: period.session.clone(),
                        rendition: track.info.id.clone(),
                        number: Some(first.number),
                    });
                    track.segments.pop_front();
                    notes.push((index, track.info.id.clone(), track.segments.is_empty()));
                }
            }
        }
        // Only segments left above (no track or Period is gone yet), so the stand-ins are
        // as before; worked out only when something was evicted (this runs on every render).
        if !notes.is_empty() {
            let riders: Vec<_> = (0..self.periods.len()).map(|index| self.stand_ins(index)).collect();
            for (index, id, emptied) in notes {
                self.note_dropped(&id, &riders[index], emptied);
            }
        }
        let before = self.periods.len();
        let mut index = 0;
        self.periods.retain(|period| {
            let keep = Some(index) == live_index || period.tracks.iter().any(|t| !t.segments.is_empty());
            index += 1;
            if !keep {
                for track in &period.tracks {
                    evicted.push(Evicted { session: period.session.clone(), rendition: track.info.id.clone(), number: None });
                }
            }
            keep
        });
        if !evicted.is_empty() || self.periods.len() != before {
            self.published = now;
        }
        evicted
    }

    /// Drops the segment that ends first, whatever its Period or rendition (the byte cap's
    /// eviction: the oldest go first, so the window shrinks from its old end as it does by
    /// time), and then a Period left with nothing (never the live one). Never the newest
    /// segment of a live track, so the MPD never goes empty. Empty when nothing may go.
    pub fn evict_oldest(&mut self, now: SystemTime) -> Vec<Evicted> {
        let live_index = self.periods.len().checked_sub(1).filter(|_| self.ended_at.is_none());
        let oldest = self
            .periods
            .iter()
            .enumerate()
            .flat_map(|(p, period)| period.tracks.iter().enumerate().map(move |(t, track)| (p, t, period, track)))
            .filter(|(p, _, _, track)| track.segments.len() > usize::from(Some(*p) == live_index))
            .filter_map(|(p, t, period, track)| {
                let first = track.segments.front()?;
                let end = period.start + Duration::from_secs_f64((first.time + first.duration) as f64 / f64::from(track.info.timescale));
                Some((end, p, t))
            })
            .min();
        let Some((_, p, t)) = oldest else { return Vec::new() };
        let riders = self.stand_ins(p);
        let track = &mut self.periods[p].tracks[t];
        let first = track.segments.pop_front().expect("chosen for its first segment");
        let (id, emptied) = (track.info.id.clone(), track.segments.is_empty());
        self.note_dropped(&id, &riders, emptied);
        let mut evicted = vec![Evicted { session: self.periods[p].session.clone(), rendition: id, number: Some(first.number) }];
        self.published = now;
        if Some(p) != live_index && self.periods[p].tracks.iter().all(|t| t.segments.is_empty()) {
            let gone = self.periods.remove(p);
            evicted.extend(gone.tracks.iter().map(|t| Evicted { session: gone.session.clone(), rendition: t.info.id.clone(), number: None }));
        }
        evicted
    }

    /// True when the stream has been over for longer than the window: time to forget it.
    /// (A suspended stream ends first: the packager's sweep ends it after its reconnect
    /// window.)
    pub fn expired(&self, window: Duration, now: SystemTime) -> bool {
        self.ended_at.is_some_and(|ended| now.duration_since(ended).unwrap_or_default() > window)
    }

    /// Where the newest Period's media ends after availabilityStartTime: its video
    /// segments' end, or its audio's for an audio-only source.
    pub fn media_end(&self) -> Option<Duration> {
        let period = self.periods.last()?;
        let kind = if period.tracks.iter().any(|t| t.info.kind == TrackKind::Video) { TrackKind::Video } else { TrackKind::Audio };
        let end = period.tracks.iter().filter(|t| t.info.kind == kind).filter_map(Track::end).max()?;
        period.start.checked_add(end)
    }

    pub fn is_live(&self) -> bool {
        self.ended_at.is_none() && !self.periods.is_empty()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn video(id: &str) -> RenditionInfo {
        RenditionInfo {
            id: RenditionId::parse(id).unwrap(),
            kind: TrackKind::Video,
            bandwidth: 2_800_000,
            width: 1280,
            height: 720,
            timescale: 90_000,
            sample_rate: 0,
            channels: 0,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn durations_follow_the_next_start_and_numbers_count_up() {
        let s = SessionId::parse("s1").unwrap();
        let r = RenditionId::parse("720p").unwrap();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s.clone(), vec![video("720p")], None, at(0));
        assert_eq!(tl.add_segment(&s, &r, 0, 999_999_999, at(1)), Some(1));
        assert_eq!(tl.add_segment(&s, &r, 1_000_000_000, 1_000_000_000, at(2)), Some(2));
        let segs: Vec<_> = tl.periods[0].tracks[0].segments.iter().copied().collect();
        assert_eq!(segs[0], SegmentEntry { number: 1, time: 0, duration: 90_000 });
        assert_eq!(segs[1], SegmentEntry { number: 2, time: 90_000, duration: 90_000 });
        assert_eq!(tl.add_segment(&s, &RenditionId::parse("nope").unwrap(), 0, 1, at(2)), None);
    }

    #[test]
    fn evicting_the_oldest_crosses_periods_and_renditions_but_keeps_the_live_edge() {
        let (s1, s2) = (SessionId::parse("s1").unwrap(), SessionId::parse("s2").unwrap());
        let (v, a) = (RenditionId::parse("720p").unwrap(), RenditionId::parse("audio").unwrap());
        let audio = RenditionInfo { id: a.clone(), kind: TrackKind::Audio, timescale: 48_000, ..video("audio") };
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s1.clone(), vec![video("720p")], None, at(0));
        tl.add_segment(&s1, &v, 0, 1_000_000_000, at(1));
        tl.add_segment(&s1, &v, 1_000_000_000, 1_000_000_000, at(2));
        // A republish: the second Period starts at 2 s, with audio.
        tl.begin_period(s2.clone(), vec![video("720p"), audio], None, at(2));
        for i in 0..3u64 {
            tl.add_segment(&s2, &v, i * 1_000_000_000, 1_000_000_000, at(3 + i));
            tl.add_segment(&s2, &a, i * 1_000_000_000 + 10_000_000, 1_000_000_000, at(3 + i));
        }
        let numbers = |e: Vec<Evicted>| e.into_iter().map(|e| (e.session.to_string(), e.rendition.to_string(), e.number)).collect::<Vec<_>>();
        assert_eq!(numbers(tl.evict_oldest(at(6))), [("s1".into(), "720p".into(), Some(1))]);
        // The ended Period's last segment goes, and the Period with it (its init too).
        assert_eq!(numbers(tl.evict_oldest(at(6))), [("s1".into(), "720p".into(), Some(2)), ("s1".into(), "720p".into(), None)]);
        assert_eq!(tl.periods.len(), 1);
        // Then the live Period's oldest, video before the audio that ends 10 ms later.
        assert_eq!(numbers(tl.evict_oldest(at(6))), [("s2".into(), "720p".into(), Some(3))]);
        assert_eq!(numbers(tl.evict_oldest(at(6))), [("s2".into(), "audio".into(), Some(3))]);
        for _ in 0..2 {
            assert_eq!(tl.evict_oldest(at(6)).len(), 1);
        }
        // The newest segment of each live track stays.
        assert!(tl.evict_oldest(at(6)).is_empty());
        assert!(tl.periods[0].tracks.iter().all(|t| t.segments.len() == 1 && t.segments[0].number == 5));
    }

    #[test]
    fn eviction_keeps_the_window_and_ending_closes_the_period() {
        let s = SessionId::parse("s1").unwrap();
        let r = RenditionId::parse("720p").unwrap();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s.clone(), vec![video("720p")], None, at(0));
        for i in 0..40u64 {
            tl.add_segment(&s, &r, i * 1_000_000_000, 1_000_000_000, at(i + 1));
        }
        let evicted = tl.evict(Duration::from_secs(30), at(40));
        // Segment n ends n seconds in; the window keeps those ending at 10 s or later.
        assert_eq!(evicted.len(), 9);
        assert_eq!(evicted[0].number, Some(1));
        assert_eq!(tl.periods[0].tracks[0].segments.front().unwrap().number, 10);

        tl.end_session(&s, at(41));
        assert!(!tl.is_live());
        assert_eq!(tl.periods[0].duration, Some(Duration::from_secs(40)));
        assert!(!tl.expired(Duration::from_secs(30), at(60)));
        assert!(tl.expired(Duration::from_secs(30), at(72)));
    }

    #[test]
    fn a_suspended_session_keeps_the_stream_live_with_its_period_closed_until_it_ends() {
        let s = SessionId::parse("s1").unwrap();
        let r = RenditionId::parse("720p").unwrap();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s.clone(), vec![video("720p")], None, at(0));
        tl.add_segment(&s, &r, 0, 1_000_000_000, at(1));
        assert_eq!(tl.suspended_for(at(1)), None, "in session");
        tl.suspend_session(&s, at(2));
        assert!(tl.is_live() && tl.between_sessions());
        assert_eq!(tl.periods[0].duration, Some(Duration::from_secs(1)), "the Period's end is announced");
        assert_eq!(tl.suspended_for(at(5)), Some(Duration::from_secs(3)));
        // Nobody continued it: it ends, and is forgotten a window after its suspension.
        tl.end_suspended(at(7));
        assert!(!tl.is_live());
        assert_eq!(tl.suspended_for(at(8)), None);
        assert!(tl.expired(Duration::from_secs(30), at(38)));
    }

    #[test]
    fn media_ahead_of_the_clock_does_not_grow_the_window() {
        let s = SessionId::parse("s1").unwrap();
        let r = RenditionId::parse("720p").unwrap();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s.clone(), vec![video("720p")], None, at(0));
        // 60 s of media within the first 5 s of wall time.
        for i in 0..60u64 {
            tl.add_segment(&s, &r, i * 1_000_000_000, 1_000_000_000, at(5));
        }
        tl.evict(Duration::from_secs(30), at(5));
        let first = tl.periods[0].tracks[0].segments.front().unwrap().number;
        assert_eq!(first, 30, "30 s of media behind the newest segment stay");
    }

    #[test]
    fn a_new_period_never_starts_before_the_previous_one_ended() {
        let (s1, s2) = (SessionId::parse("s1").unwrap(), SessionId::parse("s2").unwrap());
        let r = RenditionId::parse("720p").unwrap();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s1.clone(), vec![video("720p")], None, at(0));
        // Four seconds of media in the first two seconds of wall time (a publisher ahead of
        // the clock), then a new publish takes over at 2 s.
        for i in 0..4u64 {
            tl.add_segment(&s1, &r, i * 1_000_000_000, 1_000_000_000, at(2));
        }
        assert_eq!(tl.begin_period(s2, vec![video("720p")], None, at(2)), Duration::from_secs(4));
        assert_eq!(tl.periods[1].start, Duration::from_secs(4));
    }

    #[test]
    fn periods_start_on_the_grid_and_numbers_count_from_availability_start() {
        let (s1, s2, s3) = (SessionId::parse("s1").unwrap(), SessionId::parse("s2").unwrap(), SessionId::parse("s3").unwrap());
        let r = RenditionId::parse("720p").unwrap();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s1.clone(), vec![video("720p")], None, at(0));
        for i in 0..3u64 {
            assert_eq!(tl.add_segment(&s1, &r, i * 1_000_000_000, 1_000_000_000, at(i + 1)), Some(i + 1));
        }
        tl.end_session(&s1, at(3));
        // A republish 7.4 s in starts on the next whole second, and its segments carry on
        // the numbers a clock-driven player computes: the one ending at 9 s is number 9.
        let at_7_4 = at(7) + Duration::from_millis(400);
        assert_eq!(tl.begin_period(s2.clone(), vec![video("720p")], None, at_7_4), Duration::from_secs(8));
        assert_eq!(tl.periods[1].first_number, 9);
        assert_eq!(tl.add_segment(&s2, &r, 0, 1_000_000_000, at(9)), Some(9));
        assert_eq!(tl.add_segment(&s2, &r, 1_000_000_000, 500_000_000, at(10)), Some(10));
        // A re-plan continues exactly where the last Period's media ended, off the grid.
        let end = Duration::from_millis(9_500);
        assert_eq!(tl.begin_period(s3, vec![video("720p")], Some(end), at(10)), end);
        assert_eq!(tl.periods[2].first_number, 10);
    }

    #[test]
    fn media_durations_are_exact_and_never_panic() {
        assert_eq!(media_duration(3 * 90_000 + 45_000, 90_000), Some(Duration::from_millis(3_500)));
        assert_eq!(media_duration(1024, 48_000), Some(Duration::from_nanos(21_333_333)));
        assert_eq!(media_duration(u64::MAX, 1), Some(Duration::from_secs(u64::MAX)));
        assert!(media_duration(u64::MAX, u32::MAX).is_some());
        assert_eq!(media_duration(90_000, 0), None, "a zero timescale has no durations");
    }

    #[test]
    fn zero_timescales_and_huge_times_do_not_panic() {
        use crate::package::mpd::{self, ManifestForm};
        let s = SessionId::parse("s1").unwrap();
        let mut silent = video("audio");
        (silent.kind, silent.timescale) = (TrackKind::Audio, 0);
        let mut fine = video("huge");
        fine.timescale = u32::MAX;
        let ids: Vec<RenditionId> = ["720p", "audio", "huge"].iter().map(|r| RenditionId::parse(r).unwrap()).collect();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s.clone(), vec![video("720p"), silent, fine], None, at(0));
        for id in &ids {
            tl.set_codecs(&s, id, "avc1.4D401F".into(), at(0));
            for (start, duration) in [(0, 1_000_000_000), (u64::MAX - 5, u64::MAX), (u64::MAX, 0)] {
                assert!(tl.add_segment(&s, id, start, duration, at(1)).is_some());
            }
        }
        let timing = mpd::MpdTiming { chunk_duration: Some(Duration::from_millis(200)), ..mpd::tests::TIMING };
        let render = |tl: &StreamTimeline| ManifestForm::ALL.map(|form| mpd::render(tl, &timing, form).is_some());
        assert_eq!(render(&tl), [true; 3]);
        tl.media_end();
        tl.evict(Duration::from_secs(30), at(100));
        tl.end_session(&s, at(101));
        assert!(tl.periods[0].duration.is_some());
        render(&tl);
        // A republish after such a Period starts somewhere, and the stream still ages out.
        let s2 = SessionId::parse("s2").unwrap();
        tl.begin_period(s2.clone(), vec![video("720p")], None, at(102));
        tl.end_session(&s2, at(103));
        render(&tl);
        tl.evict(Duration::from_secs(30), at(200));
        assert!(tl.expired(Duration::from_secs(30), at(200)));
    }

    #[test]
    fn a_republish_opens_a_new_period_and_the_old_one_ages_out() {
        let (s1, s2) = (SessionId::parse("s1").unwrap(), SessionId::parse("s2").unwrap());
        let r = RenditionId::parse("720p").unwrap();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s1.clone(), vec![video("720p")], None, at(0));
        tl.add_segment(&s1, &r, 0, 1_000_000_000, at(1));
        tl.end_session(&s1, at(2));
        tl.begin_period(s2.clone(), vec![video("720p")], None, at(5));
        assert!(tl.is_live());
        assert_eq!(tl.periods[1].start, Duration::from_secs(5));
        tl.add_segment(&s2, &r, 0, 1_000_000_000, at(6));
        let evicted = tl.evict(Duration::from_secs(30), at(40));
        assert!(evicted.iter().any(|e| e.session == s1 && e.number == Some(1)));
        assert!(evicted.iter().any(|e| e.session == s1 && e.number.is_none()), "the old period goes, with its init");
        assert_eq!(tl.periods.len(), 1);
        assert_eq!(tl.periods[0].session, s2);
    }

    #[test]
    fn a_periods_numbered_end_counts_only_segments_every_track_has() {
        let s = SessionId::parse("s1").unwrap();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s.clone(), vec![video("720p"), video("360p")], None, at(0));
        let (tall, short) = (RenditionId::parse("720p").unwrap(), RenditionId::parse("360p").unwrap());
        const MS: u64 = 1_000_000;
        for i in 0..3 {
            tl.add_segment(&s, &tall, i * 1000 * MS, 1000 * MS, at(1000));
        }
        // 360p's last segment ends 0.3 ms past 3 s: still three segments, not four.
        tl.add_segment(&s, &short, 0, 1000 * MS, at(1000));
        tl.add_segment(&s, &short, 1000 * MS, 2000 * MS + 300_000, at(1000));
        let period = &tl.periods[0];
        assert_eq!(period.numbered_end(Duration::from_secs(1)), Some(Duration::from_secs(2)), "360p has two segments");
        tl.add_segment(&s, &short, 2000 * MS, 1000 * MS + 300_000, at(1000));
        assert_eq!(tl.periods[0].numbered_end(Duration::from_secs(1)), Some(Duration::from_secs(3)));
        // A partial last segment in every track counts.
        tl.add_segment(&s, &tall, 3000 * MS, 400 * MS, at(1000));
        tl.add_segment(&s, &short, 3000 * MS, 500 * MS, at(1000));
        assert_eq!(tl.periods[0].numbered_end(Duration::from_secs(1)), Some(Duration::from_millis(3400)));

        // A re-plan cut 20 ms after those segments starts right where they end; one cut
        // further away where it was cut, never before the longest track's end.
        let joined = SessionId::parse("s2").unwrap();
        assert_eq!(tl.begin_period(joined.clone(), vec![video("720p")], Some(Duration::from_millis(3420)), at(4000)), Duration::from_millis(3400));
        tl.add_segment(&joined, &tall, 0, 1000 * MS, at(5000));
        let apart = SessionId::parse("s3").unwrap();
        assert_eq!(tl.begin_period(apart, vec![video("720p")], Some(Duration::from_millis(4600)), at(5000)), Duration::from_millis(4600));
    }

    #[test]
    fn parts_are_byte_ranges_that_add_up_to_their_segment() {
        let s = SessionId::parse("s1").unwrap();
        let id = RenditionId::parse("720p").unwrap();
        let mut tl = StreamTimeline::new(StreamId::parse("cam").unwrap(), Duration::from_secs(1), at(0));
        tl.begin_period(s.clone(), vec![video("720p")], None, at(0));
        const MS: u64 = 1_000_000;
        let part = |segment: u64, start: u64, end: u64, length: u64| PartTiming {
            segment_start_ns: segment * MS,
            start_ns: start * MS,
            end_ns: Some(end * MS),
            length,
            independent: start == segment,
        };
        for segment in 0..10u64 {
            let base = segment * 1000;
            for (i, (start, end)) in [(0, 200), (200, 400), (400, 600), (600, 800), (800, 1000)].into_iter().enumerate() {
                assert_eq!(tl.add_part(&s, &id, part(base, base + start, base + end, 100 + i as u64)), Some(segment + 1));
            }
            let track = &tl.periods[0].tracks[0];
            assert!(!track.parts.back().unwrap().complete, "growing until the segment is added");
            assert_eq!(tl.add_segment(&s, &id, base * MS, 1000 * MS, at(base + 1000)), Some(segment + 1));
        }
        let track = &tl.periods[0].tracks[0];
        // The newest PARTS_KEPT segments' parts are kept, complete.
        assert_eq!(track.parts.iter().map(|p| (p.number, p.complete)).collect::<Vec<_>>(), (3..=10).map(|n| (n, true)).collect::<Vec<_>>());
        let newest = &track.parts.back().unwrap().parts;
        assert_eq!(newest.iter().map(|p| (p.duration, p.offset, p.length, p.independent)).collect::<Vec<_>>(), [
            (18_000, 0, 100, true),
            (18_000, 100, 101, false),
            (18_000, 201, 102, false),
            (18_000, 303, 103, false),
            (18_000, 406, 104, false),
        ]);
    }

}
