//! The packager: takes the objects the muxers cut for every rendition of a session, keeps
//! each stream's segment timeline (Periods, DVR window), writes segments into the store and
//! then the manifest that names them. One `Packager` serves every stream on the node.
//!
//! Each stream's timeline has its own lock. Segments arrive on GStreamer's streaming
//! threads, one per rendition, nearly together: they only store the object, extend the
//! timeline and mark the stream dirty. The renderer task ([`Packager::run_renderer`])
//! renders each dirty stream's MPD once per change, off the streaming threads, after a
//! short coalescing pause that gathers a segment's renditions into one render. Session
//! starts and ends, which viewers must see at once, render inline.
//!
//! # What players need from the MPD
//!
//! Measured with the player matrix in tests/players.rs (Debian 12 versions) and read from
//! the players' sources. No single form serves every player, so each live stream has two
//! (`mpd::ManifestForm`), listing the same segments under the same URLs:
//!
//! - **`manifest.mpd`, SegmentTimeline**, for dash.js and Shaka: the real segment times,
//!   so they never ask for a segment before it is listed, whatever the transcoder's lag.
//! - **`manifest-number.mpd`, SegmentTemplate@duration and `$Number$`**, for ffmpeg,
//!   GStreamer, VLC and streamlink, which compute the newest segment from the clock.
//!   ffmpeg 5.1 starts 60 s before a SegmentTimeline's end and re-reads from the oldest
//!   segment on every refresh; dashdemux 1.22.0 mis-seeks on a sliding timeline (it adds
//!   the first segment's start to the repeat index). The form relies on segment numbers
//!   on one grid from availabilityStartTime (`timeline::Period::first_number`, new
//!   publishes start on the grid) and states availability `number_form_delay` late, so
//!   a clock-driven player never asks for a segment still being encoded. It carries
//!   `availabilityTimeComplete="false"`: VLC 3.0 computes its start from the clock only
//!   then, and otherwise starts about 20 s back, before the DVR window.
//!
//! Both forms:
//!
//! - **Root tag short, one namespace.** GStreamer 1.22.0's type finder reads 512 bytes and
//!   must see `<MPD ...>` close inside them, or it calls the document `application/xml`
//!   (the MPD library declares six unused namespace prefixes; they are removed).
//! - **An absolute clock URL.** dashdemux/dashdemux2 use UTCTiming's value verbatim, so a
//!   relative `/time` fails; each node makes it absolute for the Host the viewer asked
//!   (`mpd::with_clock_origin`). http-iso is the scheme GStreamer, dash.js and Shaka share;
//!   ffmpeg, VLC and streamlink ignore UTCTiming and use the local clock.
//! - **A timeline never rewritten, audio on the video's boundaries.** Shaka and dash.js
//!   key their buffers by (number, t); a listed t or d that changes, or audio segment N
//!   covering a different second than video segment N, makes them re-fetch or stall.
//! - **The real `maxSegmentDuration`.** Shaka starts maxSegmentDuration +
//!   suggestedPresentationDelay behind the newest segment.
//! - **Known player limits:** ffmpeg 5.1, dashdemux and dashdemux2 1.22.0, VLC 3.0 and
//!   streamlink 5.2 never leave the first Period of a live MPD, so a re-plan or a
//!   republish ends their playback; VLC 3.0 stays at least 6 s behind live; dashdemux2
//!   1.22.0 buffers 30 s before it plays (DASH gives it no recommended threshold).

pub mod fragment;
pub mod mpd;
pub mod timeline;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::media::{CmafSegment, RenditionId, SessionId, StreamId, TrackKind};
use crate::store::{ManifestForm, ObjectKey, Part, Store, StreamSummary};
use mpd::MpdTiming;
use timeline::{RenditionInfo, StreamTimeline};

/// How long the renderer waits after a change for the other renditions' segments.
const RENDER_COALESCE: Duration = Duration::from_millis(5);

type SharedTimeline = Arc<Mutex<StreamTimeline>>;

pub struct Packager {
    store: Arc<Store>,
    timing: MpdTiming,
    /// Seconds from a video segment's end (presentation time) to its listing.
    production_lag: Histogram,
    timelines: RwLock<HashMap<StreamId, SharedTimeline>>,
    /// Streams whose MPD is older than their timeline.
    dirty: Mutex<HashSet<StreamId>>,
    wake: Notify,
}

impl Packager {
    pub fn new(store: Arc<Store>, timing: MpdTiming, production_lag: Histogram) -> Self {
        Self { store, timing, production_lag, timelines: RwLock::new(HashMap::new()), dirty: Mutex::new(HashSet::new()), wake: Notify::new() }
    }

    fn timeline(&self, stream: &StreamId) -> Option<SharedTimeline> {
        self.timelines.read().get(stream).cloned()
    }

    /// A session starts: a new Period (the stream is created if it is new), at `start` after
    /// the stream's availabilityStartTime or now. Returns the Period's start.
    pub fn begin_session(&self, stream: &StreamId, session: &SessionId, renditions: Vec<RenditionInfo>, start: Option<Duration>) -> Duration {
        let now = SystemTime::now();
        let timeline = match self.timeline(stream) {
            Some(tl) => tl,
            None => Arc::clone(
                self.timelines.write().entry(stream.clone()).or_insert_with(|| Arc::new(Mutex::new(StreamTimeline::new(stream.clone(), self.timing.segment_duration, now)))),
            ),
        };
        let mut tl = timeline.lock();
        let period_start = tl.begin_period(session.clone(), renditions, start, now);
        self.evict_and_publish(&mut tl, now);
        period_start
    }

    pub fn add_init(&self, stream: &StreamId, session: &SessionId, rendition: &RenditionId, bytes: Bytes, codecs: String) {
        let Some(timeline) = self.timeline(stream) else { return };
        let key = ObjectKey { rendition: rendition.clone(), session: session.clone(), part: Part::Init };
        self.store.put_object(stream, key, bytes);
        timeline.lock().set_codecs(session, rendition, codecs, SystemTime::now());
        self.mark_dirty(stream);
    }

    /// Stores a finished segment and publishes it in the manifest; returns its number.
    pub fn add_segment(&self, stream: &StreamId, session: &SessionId, rendition: &RenditionId, segment: CmafSegment) -> Option<u64> {
        let timeline = self.timeline(stream)?;
        let mut tl = timeline.lock();
        let now = SystemTime::now();
        let number = tl.add_segment(session, rendition, segment.start_ns, segment.duration_ns, now)?;
        let period = tl.periods.iter().rev().find(|p| &p.session == session);
        if let Some(period) = period.filter(|p| p.track(rendition).is_some_and(|t| t.info.kind == TrackKind::Video)) {
            let end = tl.availability_start + period.start + Duration::from_nanos(segment.start_ns + segment.duration_ns);
            self.production_lag.observe(now.duration_since(end).unwrap_or_default().as_secs_f64());
        }
        // The object is stored before any MPD can name it (the renderer needs this lock).
        let key = ObjectKey { rendition: rendition.clone(), session: session.clone(), part: Part::Media(number) };
        self.store.put_object(stream, key, segment.bytes);
        drop(tl);
        self.mark_dirty(stream);
        Some(number)
    }

    /// Segments added to the stream since it appeared (every rendition), while it is known.
    pub fn segments_added(&self, stream: &StreamId) -> Option<u64> {
        Some(self.timeline(stream)?.lock().segments_added)
    }

    /// When the stream's last segment was added, if it has one.
    pub fn last_segment_at(&self, stream: &StreamId) -> Option<SystemTime> {
        self.timeline(stream)?.lock().last_segment_at
    }

    /// Where the stream's newest segment ends (video's, or audio's without video), after
    /// availabilityStartTime.
    pub fn media_end(&self, stream: &StreamId) -> Option<Duration> {
        self.timeline(stream)?.lock().media_end()
    }

    fn mark_dirty(&self, stream: &StreamId) {
        self.dirty.lock().insert(stream.clone());
        self.wake.notify_one();
    }

    /// Renders the MPD of every stream whose timeline changed, once per change, until
    /// shutdown. Spawned once per node.
    pub async fn run_renderer(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            tokio::time::sleep(RENDER_COALESCE).await;
            let dirty: Vec<StreamId> = self.dirty.lock().drain().collect();
            let now = SystemTime::now();
            for stream in dirty {
                if let Some(timeline) = self.timeline(&stream) {
                    self.evict_and_publish(&mut timeline.lock(), now);
                }
            }
        }
    }

    /// The session's broadcaster is gone: the MPD turns static until the next publish.
    pub fn end_session(&self, stream: &StreamId, session: &SessionId) {
        let Some(timeline) = self.timeline(stream) else { return };
        let now = SystemTime::now();
        let mut tl = timeline.lock();
        tl.end_session(session, now);
        self.evict_and_publish(&mut tl, now);
    }

    /// Periodic housekeeping: evicts segments out of the DVR window and forgets streams that
    /// ended longer than a window ago.
    pub fn sweep(&self) {
        let now = SystemTime::now();
        let timelines: Vec<(StreamId, SharedTimeline)> = self.timelines.read().iter().map(|(s, t)| (s.clone(), Arc::clone(t))).collect();
        for (stream, timeline) in timelines {
            let mut tl = timeline.lock();
            if tl.expired(self.timing.dvr_window, now) {
                tracing::info!(stream = %stream, "stream ended a DVR window ago; removed");
                self.timelines.write().remove(&stream);
                self.store.remove_stream(&stream);
                continue;
            }
            // Housekeeping renders only when the window moved: the MPD is otherwise unchanged.
            if self.evict(&mut tl, now) {
                self.publish(&tl);
            }
        }
    }

    fn evict_and_publish(&self, tl: &mut StreamTimeline, now: SystemTime) {
        self.evict(tl, now);
        self.publish(tl);
    }

    /// Drops what left the DVR window from the timeline and the store; true if anything did.
    fn evict(&self, tl: &mut StreamTimeline, now: SystemTime) -> bool {
        let evicted = tl.evict(self.timing.dvr_window, now);
        for gone in &evicted {
            self.store.remove_objects(&tl.stream, &gone.session, &gone.rendition, gone.number.map(Part::Media));
        }
        !evicted.is_empty()
    }

    /// Renders the timeline's manifests into the store.
    fn publish(&self, tl: &StreamTimeline) {
        let manifests = ManifestForm::ALL.map(|form| mpd::render(tl, &self.timing, form).map(Bytes::from));
        let current = tl.periods.last();
        let summary = StreamSummary {
            stream: tl.stream.clone(),
            live: tl.is_live(),
            session: current.map(|p| p.session.clone()),
            renditions: current.map(|p| p.tracks.iter().map(|t| t.info.id.clone()).collect()).unwrap_or_default(),
        };
        self.store.set_manifests(&tl.stream, manifests, summary);
    }
}
