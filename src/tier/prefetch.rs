//! Prefetch of the newest segments: when the tier fetches a new MPD, it fetches, through
//! the same flights as viewers, the newest segment of each Representation that
//! viewers of the stream asked for recently. The segment is then usually in the cache (or
//! in flight) when the viewers' players ask, which cuts one upstream round trip out of
//! their time to first byte at the live edge.
//!
//! Owns the per-stream record of requested renditions and the pure MPD arithmetic.
//!
//! Bounded by what upstream confirmed: a stream is tracked once an upstream MPD for it was
//! parsed, and only the Representations that MPD's last Period lists (at most
//! [`MAX_LISTED_RENDITIONS`]) are recorded when viewers ask for them; a viewer's request
//! for anything else records nothing. The upstream's MPD is bounded too: one over
//! [`MAX_PARSED_MPD`] bytes is not parsed, an `S@r` over [`MAX_TIMELINE_REPEAT`] or a
//! `%0Nd` width over [`MAX_TEMPLATE_WIDTH`] skips that Representation's prefetch, and the
//! repeat count is never looped over. Each is logged (one line a second) and counted
//! (`rackcast_tier_prefetch_limited_total`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dash_mpd_core as dash;
use parking_lot::RwLock;

use super::cache::ObjectKind;
use super::proxy::{ObjectRequest, Purpose};
use super::TierState;
use crate::http::path;
use crate::media::{RenditionId, StreamId};
use crate::warn_limiter::WarnLimiter;

/// Beyond this many tracked streams, streams idle for `FORGET_AFTER` are dropped; while
/// that leaves none to drop, a new stream is not tracked (and not prefetched).
const MAX_TRACKED_STREAMS: usize = 4096;
const FORGET_AFTER: Duration = Duration::from_secs(120);
/// Most Representations recorded per stream: rackcast's ladders have at most a handful of
/// rungs and one audio track. Beyond it, the MPD's other Representations are not prefetched.
pub const MAX_LISTED_RENDITIONS: usize = 32;
/// Largest `S@r` (repeat count) followed. A 30 s DVR window of 1 s segments has r < 30; a
/// day of 1 s segments is 86,400. A larger one skips the Representation's prefetch.
pub const MAX_TIMELINE_REPEAT: u64 = 100_000;
/// Widest `%0Nd` in a SegmentTemplate@media: a u64 has at most 20 digits. A wider one skips
/// the Representation's prefetch (an upstream could otherwise have each URL padded to
/// gigabytes).
pub const MAX_TEMPLATE_WIDTH: usize = 20;

/// Which renditions of which streams viewers requested, and when (milliseconds since the
/// tracker was made, plus one; 0: never). Only streams and renditions an upstream MPD
/// listed are held ([`Self::listed`]); the hot path (a viewer's segment request) takes read
/// locks only and never allocates.
pub(crate) struct RenditionTracker {
    epoch: Instant,
    streams: RwLock<HashMap<StreamId, Arc<StreamRenditions>>>,
    /// One warning a second about upstream MPDs beyond the bounds.
    limit_log: WarnLimiter,
}

#[derive(Default)]
struct StreamRenditions {
    last_seen: AtomicU64,
    renditions: RwLock<HashMap<RenditionId, AtomicU64>>,
}

impl RenditionTracker {
    pub(crate) fn new() -> Self {
        Self { epoch: Instant::now(), streams: RwLock::new(HashMap::new()), limit_log: WarnLimiter::default() }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Records that `upstream`'s MPD of `stream` lists these Representations (the first
    /// [`MAX_LISTED_RENDITIONS`] valid ids): from now on, viewers' requests for them are
    /// noted; renditions no longer listed are forgotten. Returns how many ids were
    /// dropped at the bound; `None` when the stream cannot be tracked (too many streams).
    pub(crate) fn listed<'a>(&self, stream: &StreamId, ids: impl Iterator<Item = &'a str>) -> Option<usize> {
        let now = self.now_ms();
        let existing = self.streams.read().get(stream).cloned();
        let entry = match existing {
            Some(entry) => entry,
            None => {
                let mut streams = self.streams.write();
                if streams.len() >= MAX_TRACKED_STREAMS {
                    let horizon = now.saturating_sub(FORGET_AFTER.as_millis() as u64);
                    streams.retain(|_, s| s.last_seen.load(Ordering::Relaxed) >= horizon);
                    if streams.len() >= MAX_TRACKED_STREAMS {
                        return None;
                    }
                }
                streams.entry(stream.clone()).or_default().clone()
            }
        };
        entry.last_seen.store(now, Ordering::Relaxed);
        let mut wanted: Vec<RenditionId> = Vec::new();
        let mut dropped = 0;
        for id in ids.filter_map(|id| RenditionId::parse(id).ok()) {
            if wanted.contains(&id) {
                continue;
            }
            if wanted.len() == MAX_LISTED_RENDITIONS {
                dropped += 1;
                continue;
            }
            wanted.push(id);
        }
        let unchanged = {
            let renditions = entry.renditions.read();
            renditions.len() == wanted.len() && wanted.iter().all(|id| renditions.contains_key(id))
        };
        if !unchanged {
            let mut renditions = entry.renditions.write();
            renditions.retain(|id, _| wanted.contains(id));
            for id in wanted {
                renditions.entry(id).or_insert_with(|| AtomicU64::new(0));
            }
        }
        Some(dropped)
    }

    /// A viewer asked for a segment of `rendition`: recorded when upstream's MPD lists it.
    pub(crate) fn note(&self, stream: &StreamId, rendition: &RenditionId) {
        let Some(entry) = self.streams.read().get(stream).cloned() else { return };
        if let Some(seen) = entry.renditions.read().get(rendition) {
            let now = self.now_ms();
            seen.store(now, Ordering::Relaxed);
            entry.last_seen.store(now, Ordering::Relaxed);
        }
    }

    /// Renditions of `stream` requested within `window`.
    pub(crate) fn recent(&self, stream: &StreamId, window: Duration) -> Vec<String> {
        let Some(entry) = self.streams.read().get(stream).cloned() else { return Vec::new() };
        let horizon = self.now_ms().saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX)).max(1);
        let renditions = entry.renditions.read();
        renditions.iter().filter(|(_, seen)| seen.load(Ordering::Relaxed) >= horizon).map(|(id, _)| id.as_str().to_owned()).collect()
    }

    /// Every rendition recorded for `stream` (requested or not), for tests.
    #[cfg(test)]
    pub(crate) fn tracked(&self, stream: &StreamId) -> Vec<String> {
        let Some(entry) = self.streams.read().get(stream).cloned() else { return Vec::new() };
        let mut ids: Vec<String> = entry.renditions.read().keys().map(|id| id.as_str().to_owned()).collect();
        ids.sort();
        ids
    }
}

/// The newest segment of one Representation: its id and its URL relative to the MPD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewestSegment {
    pub representation: String,
    pub url: String,
}

/// What the prefetcher reads from an MPD's last Period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Every Representation id, in document order.
    pub representations: Vec<String>,
    /// The newest segment of each Representation whose addressing was understood.
    pub newest: Vec<NewestSegment>,
    /// Representations skipped because the MPD went beyond a bound (module header).
    pub over_limits: Vec<(String, Limit)>,
}

/// A bound of the prefetcher an upstream MPD went beyond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Limit {
    #[error("S@r {0} is over {MAX_TIMELINE_REPEAT}")]
    Repeat(u64),
    #[error("%0{0}d is wider than {MAX_TEMPLATE_WIDTH} digits")]
    Width(usize),
    #[error("segment number or time overflows")]
    Overflow,
}

/// Why no newest segment came out of a Representation.
enum Skip {
    /// Addressing the prefetcher does not understand (no harm: no prefetch).
    Unsupported,
    Limit(Limit),
}

impl From<Limit> for Skip {
    fn from(limit: Limit) -> Self {
        Skip::Limit(limit)
    }
}

/// The newest listed media segment of each Representation of the MPD's last Period. Only
/// SegmentTemplate with SegmentTimeline (`manifest.mpd`) is understood; other addressing,
/// such as `manifest-number.mpd`'s, yields nothing, so the viewers of that form are served
/// by the coalesced misses alone.
pub fn newest_segments(mpd: &dash::MPD) -> Vec<NewestSegment> {
    listing(mpd).newest
}

/// The Representations of the MPD's last Period and their newest segments.
pub fn listing(mpd: &dash::MPD) -> Listing {
    let mut out = Listing::default();
    let Some(period) = mpd.periods.last() else { return out };
    for adaptation in &period.adaptations {
        for rep in &adaptation.representations {
            let Some(id) = rep.id.as_deref() else { continue };
            out.representations.push(id.to_owned());
            // Attributes inherit Representation -> AdaptationSet -> Period, per attribute.
            let levels = [rep.SegmentTemplate.as_ref(), adaptation.SegmentTemplate.as_ref(), period.SegmentTemplate.as_ref()];
            let newest = || -> Result<NewestSegment, Skip> {
                let media = levels.iter().flatten().find_map(|t| t.media.as_deref()).ok_or(Skip::Unsupported)?;
                let timeline = levels.iter().flatten().find_map(|t| t.SegmentTimeline.as_ref()).ok_or(Skip::Unsupported)?;
                let start_number = levels.iter().flatten().find_map(|t| t.startNumber).unwrap_or(1);
                let (count, last_time) = timeline_end(&timeline.segments)?.ok_or(Skip::Unsupported)?;
                let number = start_number.checked_add(count - 1).ok_or(Limit::Overflow)?;
                let url = expand(media, id, number, last_time, rep.bandwidth)?;
                Ok(NewestSegment { representation: id.to_owned(), url })
            };
            match newest() {
                Ok(newest) => out.newest.push(newest),
                Err(Skip::Unsupported) => {}
                Err(Skip::Limit(limit)) => out.over_limits.push((id.to_owned(), limit)),
            }
        }
    }
    out
}

/// Number of segments a SegmentTimeline lists and the start time of the last one, in
/// arithmetic (an S's repeats are never looped over); `Ok(None)` for an empty timeline.
fn timeline_end(segments: &[dash::S]) -> Result<Option<(u64, u64)>, Limit> {
    let mut count = 0u64;
    let mut time = 0u64;
    let mut last = None;
    for s in segments {
        if let Some(t) = s.t {
            time = t;
        }
        // r = -1 ("until the next S or the Period end") cannot be counted from the MPD alone;
        // counting it once errs towards an older segment, which is merely less useful.
        let repeats = u64::try_from(s.r.unwrap_or(0)).unwrap_or(0);
        if repeats > MAX_TIMELINE_REPEAT {
            return Err(Limit::Repeat(repeats));
        }
        // The last of the S's 1 + r segments starts r durations after its first.
        let start = s.d.checked_mul(repeats).and_then(|span| time.checked_add(span)).ok_or(Limit::Overflow)?;
        last = Some(start);
        time = start.saturating_add(s.d);
        count = count.checked_add(repeats + 1).ok_or(Limit::Overflow)?;
    }
    Ok(last.map(|t| (count, t)))
}

/// Expands a SegmentTemplate@media string (ISO/IEC 23009-1 5.3.9.4.4); unsupported for an
/// identifier it does not know, over a limit for a `%0Nd` wider than [`MAX_TEMPLATE_WIDTH`].
fn expand(template: &str, representation: &str, number: u64, time: u64, bandwidth: Option<u64>) -> Result<String, Skip> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut parts = template.split('$');
    out.push_str(parts.next().ok_or(Skip::Unsupported)?);
    while let Some(identifier) = parts.next() {
        // An identifier must be closed by a second '$'.
        let literal = parts.next().ok_or(Skip::Unsupported)?;
        let (name, format) = match identifier.split_once('%') {
            Some((name, format)) => (name, Some(format)),
            None => (identifier, None),
        };
        let width = match format {
            None => 0,
            Some(f) => f.strip_prefix('0').and_then(|f| f.strip_suffix('d')).and_then(|w| w.parse::<usize>().ok()).ok_or(Skip::Unsupported)?,
        };
        if width > MAX_TEMPLATE_WIDTH {
            return Err(Limit::Width(width).into());
        }
        match name {
            "" => out.push('$'),
            "RepresentationID" if format.is_none() => out.push_str(representation),
            "Number" => out.push_str(&format!("{number:0width$}")),
            "Time" => out.push_str(&format!("{time:0width$}")),
            "Bandwidth" => out.push_str(&format!("{:0width$}", bandwidth.ok_or(Skip::Unsupported)?)),
            _ => return Err(Skip::Unsupported),
        }
        out.push_str(literal);
    }
    Ok(out)
}

/// Largest MPD the prefetcher parses.
const MAX_PARSED_MPD: usize = 256 * 1024;

impl TierState {
    /// A limit of the prefetcher was hit for `stream`: counted, and logged once a second.
    fn prefetch_limited(&self, stream: &StreamId, what: std::fmt::Arguments<'_>) {
        self.metrics.prefetch_limited.inc();
        if let Some(held_back) = self.renditions.limit_log.allow() {
            tracing::warn!(stream = %stream, held_back, "prefetch bound: {what}");
        }
    }

    /// Records the Representations an upstream MPD of `stream` lists ([`RenditionTracker::listed`])
    /// and starts a flight for the newest segment of each recently requested one. Returns
    /// once they are registered; the fetches run on their own.
    pub(crate) fn prefetch_newest(&self, stream: &StreamId, mpd: &Bytes) {
        // A live MPD over a 30 s window is a few KiB; an upstream that sends far more is not
        // parsed (bounded work per manifest, whatever an upstream sends).
        if mpd.len() > MAX_PARSED_MPD {
            self.prefetch_limited(stream, format_args!("MPD of {} bytes is larger than {MAX_PARSED_MPD}; no prefetch", mpd.len()));
            return;
        }
        let parsed = match std::str::from_utf8(mpd).map_err(|e| e.to_string()).and_then(|xml| dash::parse(xml).map_err(|e| e.to_string())) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::debug!(stream = %stream, error = %e, "MPD not parsed; no prefetch");
                return;
            }
        };
        let listing = listing(&parsed);
        match self.renditions.listed(stream, listing.representations.iter().map(String::as_str)) {
            None => {
                self.prefetch_limited(stream, format_args!("{MAX_TRACKED_STREAMS} streams tracked already; not tracked"));
                return;
            }
            Some(0) => {}
            Some(dropped) => self.prefetch_limited(stream, format_args!("{dropped} Representations beyond {MAX_LISTED_RENDITIONS} not tracked")),
        }
        for (representation, limit) in &listing.over_limits {
            self.prefetch_limited(stream, format_args!("Representation {representation:?}: {limit}; no prefetch"));
        }
        let wanted = self.renditions.recent(stream, self.config.prefetch_window);
        for newest in listing.newest {
            if !wanted.contains(&newest.representation) {
                continue;
            }
            // The MPD came from upstream: its URLs pass the same validation as a viewer's.
            let valid = newest.url.split_once('/').is_some_and(|(rendition, file)| path::object(rendition, file).is_ok());
            if !valid {
                tracing::debug!(stream = %stream, url = %newest.url, "segment URL is not a tier path; no prefetch");
                continue;
            }
            let key: Arc<str> = Arc::from(format!("/live/{stream}/{}", newest.url));
            if self.cache.contains(&key) {
                continue;
            }
            // The flight's task runs whether or not anyone awaits it.
            let _ = self.flight(ObjectRequest { stream: stream.clone(), key, kind: ObjectKind::Segment }, Purpose::Prefetch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_templates() {
        let expand = |t: &str, r: &str, n: u64, time: u64, b: Option<u64>| expand(t, r, n, time, b).ok();
        assert_eq!(expand("$RepresentationID$/abc-$Number$.m4s", "720p", 8, 0, None).as_deref(), Some("720p/abc-8.m4s"));
        assert_eq!(expand("$RepresentationID$/$Number%05d$-$Time$.m4s", "a", 8, 900, None).as_deref(), Some("a/00008-900.m4s"));
        assert_eq!(expand("x$$y-$Bandwidth$", "a", 1, 0, Some(5)).as_deref(), Some("x$y-5"));
        assert_eq!(expand("$Unknown$", "a", 1, 0, None), None);
        assert_eq!(expand("$Number", "a", 1, 0, None), None);
        assert_eq!(expand("$Number%020d$", "a", 1, 0, None).map(|u| u.len()), Some(MAX_TEMPLATE_WIDTH));
    }

    #[test]
    fn widths_and_repeats_beyond_the_caps_skip_the_representation() {
        assert!(matches!(super::expand("$Number%021d$", "a", 1, 0, None), Err(Skip::Limit(Limit::Width(21)))));
        assert!(matches!(super::expand("$Time%01000000000000d$", "a", 1, 0, None), Err(Skip::Limit(Limit::Width(_)))));
        let s = |t: Option<u64>, d: u64, r: i64| dash::S { t, d, r: Some(r), ..Default::default() };
        assert_eq!(timeline_end(&[s(Some(0), 1000, MAX_TIMELINE_REPEAT as i64)]), Ok(Some((MAX_TIMELINE_REPEAT + 1, MAX_TIMELINE_REPEAT * 1000))));
        assert_eq!(timeline_end(&[s(Some(0), 1000, i64::MAX)]), Err(Limit::Repeat(i64::MAX as u64)));
        assert_eq!(timeline_end(&[s(Some(u64::MAX - 10), 1000, 5)]), Err(Limit::Overflow));
        assert_eq!(timeline_end(&[s(Some(7), 1000, -1), s(None, 500, 0)]), Ok(Some((2, 1007))), "r=-1 counts once");
        assert_eq!(timeline_end(&[]), Ok(None));

        let xml = |width: &str, r: &str| format!(r#"<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" minBufferTime="PT1S"><Period id="s1" start="PT0S"><AdaptationSet id="0">
<Representation id="wide" bandwidth="1"><SegmentTemplate media="$RepresentationID$/abc-$Number%0{width}d$.m4s"><SegmentTimeline><S t="0" d="1"/></SegmentTimeline></SegmentTemplate></Representation>
<Representation id="long" bandwidth="1"><SegmentTemplate media="$RepresentationID$/abc-$Number$.m4s"><SegmentTimeline><S t="0" d="1" r="{r}"/></SegmentTimeline></SegmentTemplate></Representation>
</AdaptationSet></Period></MPD>"#);
        let capped = listing(&dash::parse(&xml("999999999999", "9223372036854775807")).unwrap());
        assert_eq!(capped.representations, ["wide", "long"]);
        assert!(capped.newest.is_empty());
        assert_eq!(capped.over_limits.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["wide", "long"]);
        let fine = listing(&dash::parse(&xml("3", "2")).unwrap());
        assert_eq!(fine.newest.iter().map(|n| n.url.as_str()).collect::<Vec<_>>(), ["wide/abc-001.m4s", "long/abc-3.m4s"]);
        assert!(fine.over_limits.is_empty());
    }

    #[test]
    fn only_renditions_upstream_lists_are_recorded() {
        let tracker = RenditionTracker::new();
        let cam = StreamId::parse("cam").unwrap();
        let id = |s: &str| RenditionId::parse(s).unwrap();
        let window = Duration::from_secs(10);
        // Before any MPD: nothing is recorded, whatever viewers ask.
        tracker.note(&cam, &id("720p"));
        assert!(tracker.recent(&cam, window).is_empty() && tracker.tracked(&cam).is_empty());

        assert_eq!(tracker.listed(&cam, ["720p", "audio", "720p", "../x"].into_iter()), Some(0));
        assert_eq!(tracker.tracked(&cam), ["720p", "audio"], "duplicates and invalid ids are not recorded");
        assert!(tracker.recent(&cam, window).is_empty(), "listed, not yet requested");
        for junk in 0..1000 {
            tracker.note(&cam, &id(&format!("junk{junk}")));
        }
        tracker.note(&cam, &id("720p"));
        assert_eq!(tracker.recent(&cam, window), ["720p"]);
        assert_eq!(tracker.tracked(&cam), ["720p", "audio"], "ids upstream does not list are not recorded");

        // A new listing replaces the old one; what it no longer lists is forgotten.
        assert_eq!(tracker.listed(&cam, ["480p"].into_iter()), Some(0));
        assert_eq!(tracker.tracked(&cam), ["480p"]);
        let many: Vec<String> = (0..MAX_LISTED_RENDITIONS + 5).map(|i| format!("r{i}")).collect();
        assert_eq!(tracker.listed(&cam, many.iter().map(String::as_str)), Some(5));
        assert_eq!(tracker.tracked(&cam).len(), MAX_LISTED_RENDITIONS);
    }

    #[test]
    fn newest_follows_start_number_and_repeats() {
        let xml = r#"<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" profiles="urn:mpeg:dash:profile:isoff-live:2011" minBufferTime="PT1S">
<Period id="s1" start="PT0S"><AdaptationSet id="0" contentType="video">
<Representation id="720p" bandwidth="3000000"><SegmentTemplate timescale="90000" initialization="$RepresentationID$/init-abc.mp4" media="$RepresentationID$/abc-$Number$.m4s" startNumber="5"><SegmentTimeline><S t="0" d="90000" r="2"/><S d="45000"/></SegmentTimeline></SegmentTemplate></Representation>
</AdaptationSet></Period></MPD>"#;
        let mpd = dash::parse(xml).unwrap();
        assert_eq!(newest_segments(&mpd), vec![NewestSegment { representation: "720p".into(), url: "720p/abc-8.m4s".into() }]);
    }
}
