//! The packager: takes the objects the muxers cut for every rendition of a session, keeps
//! each stream's segment timeline (Periods, DVR window), writes segments into the store and
//! then the manifest that names them. One `Packager` serves every stream on the node.

pub mod fragment;
pub mod mpd;
pub mod timeline;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::Arc;

use crate::media::{CmafSegment, RenditionId, SessionId, StreamId};
use crate::store::{ObjectKey, Part, Store, StreamSummary};
use mpd::MpdTiming;
use timeline::{RenditionInfo, StreamTimeline};

pub struct Packager {
    store: Arc<Store>,
    timing: MpdTiming,
    timelines: Mutex<HashMap<StreamId, StreamTimeline>>,
}

impl Packager {
    pub fn new(store: Arc<Store>, timing: MpdTiming) -> Self {
        Self { store, timing, timelines: Mutex::new(HashMap::new()) }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A session starts: a new Period (the stream is created if it is new), at `start` after
    /// the stream's availabilityStartTime or now. Returns the Period's start.
    pub fn begin_session(&self, stream: &StreamId, session: &SessionId, renditions: Vec<RenditionInfo>, start: Option<Duration>) -> Duration {
        let now = SystemTime::now();
        let mut period_start = Duration::ZERO;
        self.update(stream, |tl| period_start = tl.begin_period(session.clone(), renditions, start, now));
        period_start
    }

    pub fn add_init(&self, stream: &StreamId, session: &SessionId, rendition: &RenditionId, bytes: Bytes, codecs: String) {
        let key = ObjectKey { rendition: rendition.clone(), session: session.clone(), part: Part::Init };
        self.store.put_object(stream, key, bytes);
        self.update(stream, |tl| tl.set_codecs(session, rendition, codecs, SystemTime::now()));
    }

    /// Stores a finished segment and publishes it in the manifest; returns its number.
    pub fn add_segment(&self, stream: &StreamId, session: &SessionId, rendition: &RenditionId, segment: CmafSegment) -> Option<u64> {
        let mut timelines = self.timelines.lock();
        let tl = timelines.get_mut(stream)?;
        let now = SystemTime::now();
        let number = tl.add_segment(session, rendition, segment.start_ns, segment.duration_ns, now)?;
        let key = ObjectKey { rendition: rendition.clone(), session: session.clone(), part: Part::Media(number) };
        self.store.put_object(stream, key, segment.bytes);
        self.evict_and_publish(tl, now);
        Some(number)
    }

    /// When the stream's last segment was added, if it has one.
    pub fn last_segment_at(&self, stream: &StreamId) -> Option<SystemTime> {
        self.timelines.lock().get(stream).and_then(|tl| tl.last_segment_at)
    }

    /// The session's broadcaster is gone: the MPD turns static until the next publish.
    pub fn end_session(&self, stream: &StreamId, session: &SessionId) {
        self.update(stream, |tl| tl.end_session(session, SystemTime::now()));
    }

    /// Periodic housekeeping: evicts segments out of the DVR window and forgets streams that
    /// ended longer than a window ago.
    pub fn sweep(&self) {
        let now = SystemTime::now();
        let mut timelines = self.timelines.lock();
        timelines.retain(|stream, tl| {
            if tl.expired(self.timing.dvr_window, now) {
                tracing::info!(stream = %stream, "stream ended a DVR window ago; removed");
                self.store.remove_stream(stream);
                return false;
            }
            // Housekeeping renders only when the window moved: the MPD is otherwise unchanged.
            if self.evict(tl, now) {
                self.publish(tl);
            }
            true
        });
    }

    fn update(&self, stream: &StreamId, change: impl FnOnce(&mut StreamTimeline)) {
        let now = SystemTime::now();
        let mut timelines = self.timelines.lock();
        let tl = timelines.entry(stream.clone()).or_insert_with(|| StreamTimeline::new(stream.clone(), now));
        change(tl);
        self.evict_and_publish(tl, now);
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

    /// Renders the timeline's manifest into the store.
    fn publish(&self, tl: &StreamTimeline) {
        let manifest = mpd::render(tl, &self.timing).map(Bytes::from);
        let current = tl.periods.last();
        let summary = StreamSummary {
            stream: tl.stream.clone(),
            live: tl.is_live(),
            session: current.map(|p| p.session.clone()),
            renditions: current.map(|p| p.tracks.iter().map(|t| t.info.id.clone()).collect()).unwrap_or_default(),
        };
        self.store.set_manifest(&tl.stream, manifest, summary);
    }
}
