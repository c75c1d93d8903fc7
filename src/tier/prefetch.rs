//! Prefetch of the newest segments: when the tier fetches a new MPD, it fetches, through
//! the same flights as viewers, the newest segment of each Representation that
//! viewers of the stream asked for recently. The segment is then usually in the cache (or
//! in flight) when the viewers' players ask, which cuts one upstream round trip out of
//! their time to first byte at the live edge.
//!
//! Owns the per-stream record of requested renditions and the pure MPD arithmetic.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dash_mpd_core as dash;
use parking_lot::RwLock;

use super::cache::ObjectKind;
use super::TierState;
use super::proxy::{ObjectRequest, Purpose};
use crate::http::path;
use crate::media::{RenditionId, StreamId};

/// Beyond this many tracked streams, streams idle for `FORGET_AFTER` are dropped.
const MAX_TRACKED_STREAMS: usize = 4096;
const FORGET_AFTER: Duration = Duration::from_secs(120);

/// Which renditions of which streams viewers requested, and when (milliseconds since the
/// tracker was made). The hot path (a viewer's segment request) takes read locks only.
pub(crate) struct RenditionTracker {
    epoch: Instant,
    streams: RwLock<HashMap<StreamId, Arc<StreamRenditions>>>,
}

#[derive(Default)]
struct StreamRenditions {
    last_seen: AtomicU64,
    renditions: RwLock<HashMap<RenditionId, AtomicU64>>,
}

impl RenditionTracker {
    pub(crate) fn new() -> Self {
        Self { epoch: Instant::now(), streams: RwLock::new(HashMap::new()) }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn note(&self, stream: &StreamId, rendition: &RenditionId) {
        let now = self.now_ms();
        let existing = self.streams.read().get(stream).cloned();
        let entry = match existing {
            Some(entry) => entry,
            None => {
                let mut streams = self.streams.write();
                if streams.len() >= MAX_TRACKED_STREAMS {
                    let horizon = now.saturating_sub(FORGET_AFTER.as_millis() as u64);
                    streams.retain(|_, s| s.last_seen.load(Ordering::Relaxed) >= horizon);
                }
                streams.entry(stream.clone()).or_default().clone()
            }
        };
        entry.last_seen.store(now, Ordering::Relaxed);
        if let Some(seen) = entry.renditions.read().get(rendition) {
            seen.store(now, Ordering::Relaxed);
            return;
        }
        entry.renditions.write().entry(rendition.clone()).or_insert_with(|| AtomicU64::new(now)).store(now, Ordering::Relaxed);
    }

    /// Renditions of `stream` requested within `window`.
    pub(crate) fn recent(&self, stream: &StreamId, window: Duration) -> Vec<String> {
        let Some(entry) = self.streams.read().get(stream).cloned() else { return Vec::new() };
        let horizon = self.now_ms().saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        let renditions = entry.renditions.read();
        renditions.iter().filter(|(_, seen)| seen.load(Ordering::Relaxed) >= horizon).map(|(id, _)| id.as_str().to_owned()).collect()
    }
}

/// The newest segment of one Representation: its id and its URL relative to the MPD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewestSegment {
    pub representation: String,
    pub url: String,
}

/// The newest listed media segment of each Representation of the MPD's last Period. Only
/// SegmentTemplate with SegmentTimeline (`manifest.mpd`) is understood; other addressing,
/// such as `manifest-number.mpd`'s, yields nothing, so the viewers of that form are served
/// by the coalesced misses alone.
pub fn newest_segments(mpd: &dash::MPD) -> Vec<NewestSegment> {
    let Some(period) = mpd.periods.last() else { return Vec::new() };
    let mut out = Vec::new();
    for adaptation in &period.adaptations {
        for rep in &adaptation.representations {
            let Some(id) = rep.id.as_deref() else { continue };
            // Attributes inherit Representation -> AdaptationSet -> Period, per attribute.
            let levels = [rep.SegmentTemplate.as_ref(), adaptation.SegmentTemplate.as_ref(), period.SegmentTemplate.as_ref()];
            let Some(media) = levels.iter().flatten().find_map(|t| t.media.as_deref()) else { continue };
            let Some(timeline) = levels.iter().flatten().find_map(|t| t.SegmentTimeline.as_ref()) else { continue };
            let start_number = levels.iter().flatten().find_map(|t| t.startNumber).unwrap_or(1);
            let Some((count, last_time)) = timeline_end(&timeline.segments) else { continue };
            let number = start_number + count - 1;
            if let Some(url) = expand(media, id, number, last_time, rep.bandwidth) {
                out.push(NewestSegment { representation: id.to_owned(), url });
            }
        }
    }
    out
}

/// Number of segments a SegmentTimeline lists and the start time of the last one.
fn timeline_end(segments: &[dash::S]) -> Option<(u64, u64)> {
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
        for _ in 0..=repeats {
            last = Some(time);
            time = time.saturating_add(s.d);
            count += 1;
        }
    }
    last.map(|t| (count, t))
}

/// Expands a SegmentTemplate@media string (ISO/IEC 23009-1 5.3.9.4.4); `None` for an
/// identifier it does not know.
fn expand(template: &str, representation: &str, number: u64, time: u64, bandwidth: Option<u64>) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut parts = template.split('$');
    out.push_str(parts.next()?);
    while let Some(identifier) = parts.next() {
        // An identifier must be closed by a second '$'.
        let literal = parts.next()?;
        let (name, format) = match identifier.split_once('%') {
            Some((name, format)) => (name, Some(format)),
            None => (identifier, None),
        };
        let width = match format {
            None => 0,
            Some(f) => f.strip_prefix('0').and_then(|f| f.strip_suffix('d')).and_then(|w| w.parse::<usize>().ok())?,
        };
        match name {
            "" => out.push('$'),
            "RepresentationID" if format.is_none() => out.push_str(representation),
            "Number" => out.push_str(&format!("{number:0width$}")),
            "Time" => out.push_str(&format!("{time:0width$}")),
            "Bandwidth" => out.push_str(&format!("{:0width$}", bandwidth?)),
            _ => return None,
        }
        out.push_str(literal);
    }
    Some(out)
}

/// Largest MPD the prefetcher parses.
const MAX_PARSED_MPD: usize = 256 * 1024;

impl TierState {
    /// Starts a flight for the newest segment of each recently requested rendition listed
    /// in `mpd`. Returns once they are registered; the fetches run on their own.
    pub(crate) fn prefetch_newest(&self, stream: &StreamId, mpd: &Bytes) {
        let wanted = self.renditions.recent(stream, self.config.prefetch_window);
        if wanted.is_empty() {
            return;
        }
        // A live MPD over a 30 s window is a few KiB; an upstream that sends far more is not
        // parsed (bounded work per manifest, whatever an upstream sends).
        if mpd.len() > MAX_PARSED_MPD {
            tracing::warn!(stream = %stream, bytes = mpd.len(), "MPD larger than {MAX_PARSED_MPD} bytes; no prefetch");
            return;
        }
        let parsed = match std::str::from_utf8(mpd).map_err(|e| e.to_string()).and_then(|xml| dash::parse(xml).map_err(|e| e.to_string())) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::debug!(stream = %stream, error = %e, "MPD not parsed; no prefetch");
                return;
            }
        };
        for newest in newest_segments(&parsed) {
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
        assert_eq!(expand("$RepresentationID$/abc-$Number$.m4s", "720p", 8, 0, None).as_deref(), Some("720p/abc-8.m4s"));
        assert_eq!(expand("$RepresentationID$/$Number%05d$-$Time$.m4s", "a", 8, 900, None).as_deref(), Some("a/00008-900.m4s"));
        assert_eq!(expand("x$$y-$Bandwidth$", "a", 1, 0, Some(5)).as_deref(), Some("x$y-5"));
        assert_eq!(expand("$Unknown$", "a", 1, 0, None), None);
        assert_eq!(expand("$Number", "a", 1, 0, None), None);
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
