//! The packager: takes the objects the muxers cut for every rendition of a session, keeps
//! each stream's segment timeline (Periods, DVR window), writes segments into the store and
//! then the manifests that name them: the MPDs (mpd.rs) and the HLS playlists (hls.rs),
//! rendered together from the one timeline. One `Packager` serves every stream on the node.
//!
//! Each stream's timeline has its own lock. Segments arrive on GStreamer's streaming
//! threads, one per rendition, nearly together: they only store the object, extend the
//! timeline and mark the stream dirty. The renderer task ([`Packager::run_renderer`])
//! renders each dirty stream's MPD once per change, off the streaming threads, after a
//! short coalescing pause that gathers a segment's renditions into one render. A chunk
//! (low latency) changes only the HLS playlists, which list parts: it re-renders those
//! alone. Session starts and ends, which viewers must see at once, render inline.
//!
//! Bytes are bounded as well as time ([`ByteCaps`]): a muxer's fragment over
//! `package.max_fragment_bytes` is refused by the assembler and ends its stream; a stream
//! whose stored objects pass `package.max_stream_bytes` has its DVR window shortened from
//! the old end (the oldest segments, any rendition or Period, go first; the newest segment
//! of each live rendition always stays, so the MPD never empties and the live edge goes
//! on). Both are logged (at most one line a second) and counted ([`PackageMetrics`]).
//!
//! One renderer and one sweep serve every stream, so neither may be stopped by one stream:
//! each stream's render (and sweep step) runs under `catch_unwind`. A panic there is
//! logged with the stream (at most one line a second), counted
//! (`rackcast_mpd_render_failures_total`) and leaves that stream's MPD at its last version
//! while the other streams keep updating; the stream's next change tries again. Should a
//! loop die anyway, [`Packager::run`] logs it, counts it (`rackcast_package_task_restarts_total`)
//! and starts it again after [`RESTART_DELAY`].
//!
//! # What players need from the MPD
//!
//! Measured with the player matrix in tests/it/players.rs (Debian 12 versions) and read from
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
//! - **Known player limits** (Debian 12 versions; the player matrix does not run these
//!   checks for these players, `CANNOT_PASS` in tests/it/players.rs):
//!   - ffmpeg 5.1 (dashdec) cannot follow a live Period change: its refresh fails when the
//!     Representation count changes and it asks for numbers past the old Period's end.
//!   - GStreamer 1.22.0 `playbin` (dashdemux) stays in the first Period of a live MPD,
//!     asking for the number after its end, or reaches the next one and fails to
//!     negotiate the new ladder's caps.
//!   - GStreamer 1.22.0 `playbin3` (dashdemux2) buffers 30 s before it plays (DASH gives it
//!     no recommended threshold) and starts a segment or two further back; across a
//!     Period change it asserts on the manifest update and stays in the old Period. The
//!     matrix checks it only for errors and failed requests, and only without a Period
//!     change.
//!   - VLC 3.0 starts at least 6 s behind live, reports its own buffering adjustments as
//!     errors, and never leaves the first Period of a live MPD.
//!   - streamlink 5.2 reads only the first Period, so its playback ends there.
//!
//!   So a re-plan or a republish ends their DASH playback in all of them but dash.js and
//!   Shaka. On HLS (`master.m3u8`, a Period change is a discontinuity and a dropped rung
//!   goes on with a stand-in, see the hls module) ffmpeg, GStreamer `playbin3`
//!   (hlsdemux2), VLC and hls.js play on across it; ffmpeg 5.1 warns "DTS out of order"
//!   once there (it keeps its timestamps across a discontinuity, and a new Period's media
//!   starts at 0), and VLC 3.0 starts at least 6 s behind live there too.


pub mod config;
pub mod hls;
pub mod mpd;
pub mod snapshot;
pub mod timeline;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::media::{CmafChunk, CmafSegment, RenditionId, SessionId, StreamId, TrackKind};
use crate::store::{ManifestForm, ObjectKey, Part, Store, StreamSummary};
use crate::warn_limiter::WarnLimiter;
use mpd::MpdTiming;
use timeline::{PartTiming, RenditionInfo, StreamTimeline};

/// How long the renderer waits after a change for the other renditions' segments.
const RENDER_COALESCE: Duration = Duration::from_millis(5);
/// How often the sweep evicts what left the DVR window and forgets ended streams.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Pause before a renderer or sweep loop that died is started again.
pub const RESTART_DELAY: Duration = Duration::from_millis(100);

type SharedTimeline = Arc<Mutex<StreamTimeline>>;

/// The byte bounds of what the packager assembles and keeps (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteCaps {
    /// The largest object a muxer may produce.
    pub max_fragment_bytes: usize,
    /// The most bytes one stream's objects may hold in the store.
    pub max_stream_bytes: u64,
}

impl ByteCaps {
    /// No bound (`rackcast transcode` of a file keeps every segment).
    pub const UNLIMITED: ByteCaps = ByteCaps { max_fragment_bytes: usize::MAX, max_stream_bytes: u64::MAX };
}

/// The packager's metrics, registered once per node ([`PackageMetrics::register`]).
#[derive(Debug)]
pub struct PackageMetrics {
    /// Fragments refused over `package.max_fragment_bytes` (each ended its stream).
    pub fragments_too_large: Counter,
    /// Segments dropped from a DVR window by `package.max_stream_bytes`.
    pub segments_evicted_for_bytes: Counter,
    /// Renders and sweep steps of one stream that panicked (each left that stream's MPD as
    /// it was).
    pub render_failures: Counter,
    /// Renderer or sweep loops that died and were started again.
    pub task_restarts: Counter,
    /// Seconds from a video segment's end (presentation time) to its listing.
    pub production_lag: Histogram,
}

impl Default for PackageMetrics {
    fn default() -> Self {
        Self {
            fragments_too_large: Counter::default(),
            segments_evicted_for_bytes: Counter::default(),
            render_failures: Counter::default(),
            task_restarts: Counter::default(),
            // 50 ms .. ~26 s.
            production_lag: Histogram::new(exponential_buckets(0.05, 2.0, 10)),
        }
    }
}

impl PackageMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("package_fragments_too_large", "Fragments refused over package.max_fragment_bytes (each ended its stream)", self.fragments_too_large.clone());
        registry.register("package_segments_evicted_for_bytes", "Segments dropped from a DVR window by package.max_stream_bytes", self.segments_evicted_for_bytes.clone());
        registry.register("mpd_render_failures", "Renders of one stream's MPD that panicked (that stream kept its last MPD)", self.render_failures.clone());
        registry.register("package_task_restarts", "MPD renderer or sweep loops that died and were started again", self.task_restarts.clone());
        registry.register("segment_production_lag_seconds", "From a video segment's end in presentation time to when the MPD listed it", self.production_lag.clone());
    }
}

pub struct Packager {
    store: Arc<Store>,
    timing: MpdTiming,
    timelines: RwLock<HashMap<StreamId, SharedTimeline>>,
    /// Streams whose manifests are older than their timeline: `true` when the timeline
    /// changed (every manifest is rendered), `false` when only parts of a segment being
    /// encoded were added (only the HLS playlists list those; the MPDs stay as they are).
    dirty: Mutex<HashMap<StreamId, bool>>,
    wake: Notify,
    caps: ByteCaps,
    /// How long a suspended session waits for its broadcaster (`package.reconnect_window`).
    reconnect_window: Duration,
    metrics: PackageMetrics,
    /// One render failure logged a second, whatever the number of streams failing.
    failure_log: WarnLimiter,
    fragment_warnings: WarnLimiter,
    eviction_warnings: WarnLimiter,
    /// The node drains: sessions that end are suspended for a hand-over (snapshot.rs).
    hand_over: AtomicBool,
    /// Streams exported to the node that continues them.
    handed_over: Mutex<HashSet<StreamId>>,
    #[cfg(test)]
    hooks: tests::Hooks,
}

impl Packager {
    pub fn new(store: Arc<Store>, timing: MpdTiming) -> Self {
        Self {
            store,
            timing,
            timelines: RwLock::new(HashMap::new()),
            dirty: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            caps: ByteCaps::UNLIMITED,
            reconnect_window: config::DEFAULT_RECONNECT_WINDOW,
            metrics: PackageMetrics::default(),
            failure_log: WarnLimiter::default(),
            fragment_warnings: WarnLimiter::default(),
            eviction_warnings: WarnLimiter::default(),
            hand_over: AtomicBool::new(false),
            handed_over: Mutex::new(HashSet::new()),
            #[cfg(test)]
            hooks: tests::Hooks::default(),
        }
    }

    /// Bounds what the packager assembles and keeps (unbounded without).
    pub fn with_byte_caps(mut self, caps: ByteCaps) -> Self {
        self.caps = caps;
        self
    }

    /// How long a stream whose broadcaster dropped waits for it to reconnect.
    pub fn with_reconnect_window(mut self, window: Duration) -> Self {
        self.reconnect_window = window;
        self
    }

    /// The largest object a muxer may produce (`package.max_fragment_bytes`).
    pub fn max_fragment_bytes(&self) -> usize {
        self.caps.max_fragment_bytes
    }

    pub fn metrics(&self) -> &PackageMetrics {
        &self.metrics
    }

    /// A muxer produced an object over the fragment cap: counted and logged (at most once a
    /// second); the caller ends the stream.
    pub fn fragment_too_large(&self, stream: &StreamId, rendition: &RenditionId) {
        self.metrics.fragments_too_large.inc();
        if let Some(held_back) = self.fragment_warnings.allow() {
            tracing::error!(
                stream = %stream, rendition = %rendition, held_back,
                limit = self.caps.max_fragment_bytes, "fragment over package.max_fragment_bytes refused; the stream ends"
            );
        }
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
        // Only the newest Period's session can still have segments growing: each earlier
        // one was completed when the Period after it began.
        if let Some(previous) = tl.periods.last().map(|p| p.session.clone()).filter(|p| p != session) {
            self.complete_growing(&mut tl, &previous, now);
        }
        // Anything else still growing will never be complete.
        self.store.abandon_growing(stream, |other| other != session);
        let period_start = tl.begin_period(session.clone(), renditions, start, now);
        self.contained(stream, "rendering the MPD", || self.evict_and_publish(&mut tl, now));
        period_start
    }

    pub fn add_init(&self, stream: &StreamId, session: &SessionId, rendition: &RenditionId, bytes: Bytes, codecs: String) {
        let Some(timeline) = self.timeline(stream) else { return };
        let key = ObjectKey { rendition: rendition.clone(), session: session.clone(), part: Part::Init };
        self.store.put_object(stream, key, bytes);
        timeline.lock().set_codecs(session, rendition, codecs, SystemTime::now());
        self.mark_dirty(stream);
    }

    /// A chunk of the rendition's segment being encoded (low latency): appended to the
    /// segment's growing object, under the number the segment will have once complete, and
    /// listed as a part of it (HLS). Chunks come in order, and every chunk of a segment
    /// before the segment itself. `independent`: it decodes without the chunks before it.
    pub fn add_chunk(&self, stream: &StreamId, session: &SessionId, rendition: &RenditionId, chunk: CmafChunk, independent: bool) -> Option<u64> {
        let timeline = self.timeline(stream)?;
        let mut tl = timeline.lock();
        let part = PartTiming { segment_start_ns: chunk.segment_start_ns, start_ns: chunk.start_ns, end_ns: chunk.end_ns, length: chunk.bytes.len() as u64, independent };
        let number = tl.add_part(session, rendition, part)?;
        // In the store before any playlist can name it (the renderer needs this lock).
        let key = ObjectKey { rendition: rendition.clone(), session: session.clone(), part: Part::Media(number) };
        self.store.append_chunk(stream, key, chunk.bytes);
        drop(tl);
        self.mark_parts_dirty(stream);
        Some(number)
    }

    /// Stores a finished segment and publishes it in the manifest; returns its number.
    pub fn add_segment(&self, stream: &StreamId, session: &SessionId, rendition: &RenditionId, segment: CmafSegment) -> Option<u64> {
        let timeline = self.timeline(stream)?;
        let mut tl = timeline.lock();
        let now = SystemTime::now();
        let number = tl.add_segment(session, rendition, segment.start_ns, segment.duration_ns, now)?;
        let period = tl.periods.iter().rev().find(|p| &p.session == session);
        if let Some(period) = period.filter(|p| p.track(rendition).is_some_and(|t| t.info.kind == TrackKind::Video)) {
            let media_end = Duration::from_nanos(segment.start_ns.saturating_add(segment.duration_ns));
            if let Some(end) = period.start.checked_add(media_end).and_then(|end| tl.availability_start.checked_add(end)) {
                self.metrics.production_lag.observe(now.duration_since(end).unwrap_or_default().as_secs_f64());
            }
        }
        // The object is stored before any MPD can name it (the renderer needs this lock).
        let key = ObjectKey { rendition: rendition.clone(), session: session.clone(), part: Part::Media(number) };
        self.store.put_object(stream, key, segment.bytes);
        self.enforce_byte_cap(&mut tl, now);
        drop(tl);
        self.mark_dirty(stream);
        Some(number)
    }

    /// Drops the stream's oldest segments while its objects hold more than
    /// `package.max_stream_bytes` (see the module header); counted and logged.
    fn enforce_byte_cap(&self, tl: &mut StreamTimeline, now: SystemTime) {
        let cap = self.caps.max_stream_bytes;
        let mut dropped = 0u64;
        while self.store.stream_bytes(&tl.stream) > cap {
            let evicted = tl.evict_oldest(now);
            if evicted.is_empty() {
                break; // only the live edge is left: never dropped
            }
            for gone in &evicted {
                self.store.remove_objects(&tl.stream, &gone.session, &gone.rendition, gone.number.map(Part::Media));
            }
            dropped += evicted.iter().filter(|e| e.number.is_some()).count() as u64;
        }
        if dropped == 0 {
            return;
        }
        self.metrics.segments_evicted_for_bytes.inc_by(dropped);
        if let Some(held_back) = self.eviction_warnings.allow() {
            tracing::warn!(
                stream = %tl.stream, dropped, held_back, cap,
                "stream over package.max_stream_bytes: its oldest segments left the DVR window early"
            );
        }
    }

    /// Segments added to the stream since it appeared (every rendition), while it is known.
    /// Whether the stream is live here (in a session, or suspended between two).
    pub fn is_live(&self, stream: &StreamId) -> bool {
        self.timeline(stream).is_some_and(|tl| tl.lock().is_live())
    }

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

    /// Where the newest Period's media ends, after availabilityStartTime and as a wall-clock
    /// time: where a session that continues it without a gap starts.
    pub fn media_end_at(&self, stream: &StreamId) -> Option<(Duration, SystemTime)> {
        let timeline = self.timeline(stream)?;
        let tl = timeline.lock();
        let end = tl.media_end()?;
        Some((end, tl.availability_start.checked_add(end)?))
    }

    fn mark_dirty(&self, stream: &StreamId) {
        self.dirty.lock().insert(stream.clone(), true);
        self.wake.notify_one();
    }

    /// Only a part was added: the playlists are rendered again, not the MPDs (module
    /// header). Five parts a second per rendition would otherwise re-render every MPD.
    fn mark_parts_dirty(&self, stream: &StreamId) {
        self.dirty.lock().entry(stream.clone()).or_insert(false);
        self.wake.notify_one();
    }

    /// The renderer ([`Self::run_renderer`]) and the sweep (every [`SWEEP_INTERVAL`]) until
    /// shutdown, each started again if it dies. Spawned once per node.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let (renderer, sweeper) = (Arc::clone(&self), Arc::clone(&self));
        let render = self.supervise("MPD renderer", &shutdown, move |stop| {
            let packager = Arc::clone(&renderer);
            async move { packager.run_renderer(stop).await }
        });
        let sweep = self.supervise("packager sweep", &shutdown, move |stop| {
            let packager = Arc::clone(&sweeper);
            async move { packager.run_sweep(SWEEP_INTERVAL, stop).await }
        });
        tokio::join!(render, sweep);
    }

    /// Runs the task `start` makes until it returns (at shutdown); one that panicked is
    /// logged, counted and started again after [`RESTART_DELAY`].
    async fn supervise<F, T>(&self, name: &'static str, shutdown: &CancellationToken, start: F)
    where
        F: Fn(CancellationToken) -> T,
        T: Future<Output = ()> + Send + 'static,
    {
        loop {
            match tokio::spawn(start(shutdown.clone())).await {
                Err(e) if e.is_panic() => {
                    self.metrics.task_restarts.inc();
                    tracing::error!(task = name, "{name} died: {}; starting it again", panic_message(e.into_panic().as_ref()));
                }
                // Returned (shutdown) or cancelled (the runtime is going).
                _ => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(RESTART_DELAY) => {}
                _ = shutdown.cancelled() => return,
            }
            // Changes marked while it was down are rendered at once.
            self.wake.notify_one();
        }
    }

    /// Renders the MPD of every stream whose timeline changed, once per change, until
    /// shutdown. A stream whose render panics does not stop the others (module header).
    pub async fn run_renderer(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            tokio::time::sleep(RENDER_COALESCE).await;
            #[cfg(test)]
            self.hooks.before_loop_step();
            let dirty: Vec<(StreamId, bool)> = self.dirty.lock().drain().collect();
            let now = SystemTime::now();
            for (stream, timeline_changed) in dirty {
                let Some(timeline) = self.timeline(&stream) else { continue };
                if timeline_changed {
                    self.contained(&stream, "rendering the MPD", || self.evict_and_publish(&mut timeline.lock(), now));
                } else {
                    self.contained(&stream, "rendering the playlists", || self.publish_playlists(&timeline.lock()));
                }
            }
        }
    }

    /// [`Self::sweep`] every `every` until shutdown.
    pub async fn run_sweep(&self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(),
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Runs `work` for one stream; a panic in it is logged, counted and goes no further.
    fn contained(&self, stream: &StreamId, what: &str, work: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(work)) {
            self.metrics.render_failures.inc();
            if let Some(held_back) = self.failure_log.allow() {
                tracing::error!(
                    stream = %stream, held_back,
                    "{what} panicked: {}; this stream's MPD stays as it was, other streams are not affected",
                    panic_message(panic.as_ref())
                );
            }
        }
    }

    /// The session's broadcaster unpublished: the MPD turns static until the next publish;
    /// or, while this node hands its streams over, the session is suspended.
    pub fn end_session(&self, stream: &StreamId, session: &SessionId) {
        self.close_session(stream, session, self.hands_over());
    }

    /// The session's broadcaster dropped without unpublishing (or this node hands the
    /// stream over): the MPD stays dynamic with the Period's end announced, so viewers wait
    /// for the next Period, for `package.reconnect_window` (then it ends as
    /// [`Self::end_session`] would) or until another node takes the stream over.
    pub fn suspend_session(&self, stream: &StreamId, session: &SessionId) {
        self.close_session(stream, session, self.hands_over() || !self.reconnect_window.is_zero());
    }

    fn close_session(&self, stream: &StreamId, session: &SessionId, suspend: bool) {
        let Some(timeline) = self.timeline(stream) else { return };
        let now = SystemTime::now();
        let mut tl = timeline.lock();
        self.complete_growing(&mut tl, session, now);
        if suspend {
            tl.suspend_session(session, now);
        } else {
            tl.end_session(session, now);
        }
        self.contained(stream, "rendering the MPD", || self.evict_and_publish(&mut tl, now));
    }

    /// The segments `session` was still encoding when it ended are completed from their
    /// chunks (see [`StreamTimeline::complete_growing`]); any other it left growing is
    /// abandoned.
    fn complete_growing(&self, tl: &mut StreamTimeline, session: &SessionId, now: SystemTime) {
        for (rendition, number) in tl.complete_growing(session, now) {
            tracing::debug!(stream = %tl.stream, %session, %rendition, number, "segment completed from the chunks it had when its session ended");
            self.store.complete_growing(&tl.stream, ObjectKey { rendition, session: session.clone(), part: Part::Media(number) });
        }
        self.store.abandon_growing(&tl.stream, |other| other == session);
    }

    /// Periodic housekeeping: evicts segments out of the DVR window and forgets streams that
    /// ended longer than a window ago.
    pub fn sweep(&self) {
        let now = SystemTime::now();
        let timelines: Vec<(StreamId, SharedTimeline)> = self.timelines.read().iter().map(|(s, t)| (s.clone(), Arc::clone(t))).collect();
        for (stream, timeline) in timelines {
            self.contained(&stream, "sweeping the stream", || {
                let mut tl = timeline.lock();
                if !self.hands_over() && tl.suspended_for(now).is_some_and(|d| d >= self.reconnect_window) {
                    tracing::info!(stream = %stream, "no reconnect within package.reconnect_window ({:?}) of the dropped connection; the stream ends", self.reconnect_window);
                    tl.end_suspended(now);
                    self.publish(&tl);
                    return;
                }
                if tl.expired(self.timing.dvr_window, now) {
                    tracing::info!(stream = %stream, "stream ended a DVR window ago; removed");
                    self.timelines.write().remove(&stream);
                    self.store.remove_stream(&stream);
                    return;
                }
                // Housekeeping renders only when the window moved: the MPD is otherwise unchanged.
                if self.evict(&mut tl, now) {
                    self.publish(&tl);
                }
            });
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

    /// Renders the timeline's HLS playlists into the store, leaving its MPDs as they are.
    fn publish_playlists(&self, tl: &StreamTimeline) {
        self.store.set_playlists(&tl.stream, hls::render(tl, self.timing.chunk_duration));
    }

    /// Renders the timeline's manifests into the store.
    fn publish(&self, tl: &StreamTimeline) {
        #[cfg(test)]
        self.hooks.before_render(&tl.stream);
        let manifests = ManifestForm::ALL.map(|form| mpd::render(tl, &self.timing, form).map(Bytes::from));
        let playlists = hls::render(tl, self.timing.chunk_duration);
        let current = tl.periods.last();
        let summary = StreamSummary {
            stream: tl.stream.clone(),
            live: tl.is_live(),
            session: current.map(|p| p.session.clone()),
            renditions: current.map(|p| p.tracks.iter().map(|t| t.info.id.clone()).collect()).unwrap_or_default(),
        };
        self.store.set_manifests(&tl.stream, manifests, playlists, summary);
    }
}

/// What a caught panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::store::Playlist;

    /// Test-only faults: a stream whose render panics, and one death of the renderer loop.
    #[derive(Default)]
    pub(super) struct Hooks {
        panic_render: Mutex<Option<StreamId>>,
        panic_loop_once: AtomicBool,
    }

    impl Hooks {
        pub(super) fn before_render(&self, stream: &StreamId) {
            if self.panic_render.lock().as_ref() == Some(stream) {
                panic!("test hook: rendering {stream} panics");
            }
        }

        pub(super) fn before_loop_step(&self) {
            if self.panic_loop_once.swap(false, Ordering::SeqCst) {
                panic!("test hook: the renderer loop dies");
            }
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    fn packager() -> Arc<Packager> {
        Arc::new(Packager::new(Arc::new(Store::new()), mpd::tests::TIMING))
    }

    fn video() -> RenditionInfo {
        timeline::tests::video("720p")
    }

    /// Segments the stream's Timeline MPD lists (0 while it has none).
    fn listed(p: &Packager, stream: &StreamId) -> usize {
        p.store.manifest(stream, ManifestForm::Timeline).map_or(0, |m| String::from_utf8_lossy(&m).matches("<S ").count())
    }

    async fn wait_listed(p: &Packager, stream: &StreamId, segments: usize) {
        let deadline = Instant::now() + WAIT;
        while listed(p, stream) < segments {
            assert!(Instant::now() < deadline, "{stream}'s MPD did not list {segments} segments within {WAIT:?} (lists {})", listed(p, stream));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn segment(p: &Packager, stream: &StreamId, session: &SessionId, n: u64) {
        let segment = CmafSegment { start_ns: n * 1_000_000_000, duration_ns: 1_000_000_000, bytes: Bytes::from_static(b"moof") };
        assert!(p.add_segment(stream, session, &video().id, segment).is_some());
    }

    #[tokio::test]
    async fn a_stream_whose_render_panics_leaves_the_others_updating() {
        let p = packager();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(Arc::clone(&p).run(shutdown.clone()));
        let (bad, good) = (StreamId::parse("bad").unwrap(), StreamId::parse("good").unwrap());
        let session = SessionId::parse("s1").unwrap();
        for stream in [&bad, &good] {
            p.begin_session(stream, &session, vec![video()], None);
            p.add_init(stream, &session, &video().id, Bytes::from_static(b"moov"), "avc1.4D401F".into());
            segment(&p, stream, &session, 0);
            wait_listed(&p, stream, 1).await;
        }

        // From now on every render of `bad` panics.
        *p.hooks.panic_render.lock() = Some(bad.clone());
        let frozen = p.store.manifest(&bad, ManifestForm::Timeline);
        for n in 1..4 {
            segment(&p, &bad, &session, n);
            segment(&p, &good, &session, n);
            wait_listed(&p, &good, n as usize + 1).await;
        }
        assert!(p.metrics().render_failures.get() >= 1, "the panics were counted: {:?}", p.metrics());
        assert_eq!(p.store.manifest(&bad, ManifestForm::Timeline), frozen, "the failing stream keeps its last MPD");
        assert_eq!(p.metrics().task_restarts.get(), 0, "contained: the renderer loop never died");

        // The loop itself dies once: it is started again and renders what changed meanwhile.
        p.hooks.panic_loop_once.store(true, Ordering::SeqCst);
        segment(&p, &good, &session, 4);
        wait_listed(&p, &good, 5).await;
        assert_eq!(p.metrics().task_restarts.get(), 1, "the renderer was restarted once");
        segment(&p, &good, &session, 5);
        wait_listed(&p, &good, 6).await;

        // Once the fault is gone, the stream's next change renders it again.
        *p.hooks.panic_render.lock() = None;
        segment(&p, &bad, &session, 4);
        wait_listed(&p, &bad, 5).await;

        shutdown.cancel();
        tokio::time::timeout(WAIT, running).await.expect("the packager's tasks end at shutdown").unwrap();
    }

    /// A session replaced (a re-plan whose drain timed out) or ended in the middle of a
    /// segment: the segment is completed from the chunks it had, so the next Period's first
    /// segment never takes a number LL-HLS players already saw parts of.
    #[test]
    fn a_dropped_broadcasters_stream_waits_the_reconnect_window_then_ends() {
        let dynamic = |p: &Packager, stream: &StreamId| {
            let mpd = p.store.manifest(stream, ManifestForm::Timeline).unwrap();
            String::from_utf8_lossy(&mpd).contains(r#"type="dynamic""#)
        };
        let session = SessionId::parse("s1").unwrap();
        for (window, live_after_drop) in [(Duration::from_secs(60), true), (Duration::ZERO, false)] {
            let p = Packager::new(Arc::new(Store::new()), mpd::tests::TIMING).with_reconnect_window(window);
            let stream = StreamId::parse("cam").unwrap();
            p.begin_session(&stream, &session, vec![video()], None);
            p.add_init(&stream, &session, &video().id, Bytes::from_static(b"moov"), "avc1.4D401F".into());
            segment(&p, &stream, &session, 0);
            p.suspend_session(&stream, &session);
            p.sweep();
            assert_eq!(dynamic(&p, &stream), live_after_drop, "reconnect window {window:?}");
            if live_after_drop {
                // Past the window, the sweep ends it.
                p.timeline(&stream).unwrap().lock().suspended_at = Some(SystemTime::now() - window);
                p.sweep();
                assert!(!dynamic(&p, &stream), "ended once the window passed");
            }
        }
    }

    #[test]
    fn a_session_ended_mid_segment_completes_it_from_its_chunks() {
        let timing = MpdTiming { chunk_duration: Some(Duration::from_millis(200)), ..mpd::tests::TIMING };
        let p = Packager::new(Arc::new(Store::new()), timing);
        let (stream, first, second) = (StreamId::parse("cam").unwrap(), SessionId::parse("s1").unwrap(), SessionId::parse("s2").unwrap());
        let rendition = video().id;
        let start = p.begin_session(&stream, &first, vec![video()], None);
        p.add_init(&stream, &first, &rendition, Bytes::from_static(b"init"), "avc1.64001F".into());
        segment(&p, &stream, &first, 0);
        let chunk = |start_ms: u64, bytes: &'static [u8]| CmafChunk {
            segment_start_ns: 1_000_000_000,
            start_ns: start_ms * 1_000_000,
            end_ns: Some((start_ms + 200) * 1_000_000),
            first: start_ms == 1000,
            bytes: Bytes::from_static(bytes),
        };
        let growing = p.add_chunk(&stream, &first, &rendition, chunk(1000, b"chunk-a"), true).unwrap();
        assert_eq!(p.add_chunk(&stream, &first, &rendition, chunk(1200, b"chunk-b"), false), Some(growing));
        let media = Playlist::Media(rendition.clone());
        p.publish(&p.timeline(&stream).unwrap().lock());
        let before = String::from_utf8(p.store.playlist(&stream, &media).unwrap().text.to_vec()).unwrap();
        assert!(before.contains(&format!("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"s1-{growing}.m4s\",BYTERANGE-START=14")), "{before}");

        // The next session starts where the first one's media ended.
        p.begin_session(&stream, &second, vec![video()], Some(start + Duration::from_millis(1400)));
        let key = |session: &SessionId, number| ObjectKey { rendition: rendition.clone(), session: session.clone(), part: Part::Media(number) };
        assert_eq!(p.store.object(&stream, &key(&first, growing)).as_deref(), Some(&b"chunk-achunk-b"[..]), "stored whole, from its chunks");
        p.add_init(&stream, &second, &rendition, Bytes::from_static(b"init"), "avc1.64001F".into());
        let next = p.add_segment(&stream, &second, &rendition, CmafSegment { start_ns: 0, duration_ns: 1_000_000_000, bytes: Bytes::from_static(b"moof") }).unwrap();
        // Numbers are on the grid from availabilityStartTime: the new Period starts inside
        // the second the completed segment began, so its first segment has the same number
        // (another session's URL); the HLS sequence numbers below go on.
        assert_eq!(next, growing);
        p.publish(&p.timeline(&stream).unwrap().lock());
        let after = String::from_utf8(p.store.playlist(&stream, &media).unwrap().text.to_vec()).unwrap();
        // The completed segment keeps its sequence number (media sequence 0: the first
        // segment listed is 0, the completed one 1, the new Period's first 2).
        let uris: Vec<&str> = after.lines().filter(|l| l.ends_with(".m4s") && !l.starts_with('#')).collect();
        assert_eq!(uris, [format!("s1-{}.m4s", growing - 1), format!("s1-{growing}.m4s"), format!("s2-{next}.m4s")], "{after}");
        assert!(after.contains("#EXTINF:0.400,\ns1-"), "the completed segment lasts as long as its chunks: {after}");
        assert!(after.contains("#EXT-X-MEDIA-SEQUENCE:0\n"), "{after}");

        // The same when the stream ends mid-segment.
        p.add_chunk(&stream, &second, &rendition, CmafChunk { segment_start_ns: 1_000_000_000, start_ns: 1_000_000_000, end_ns: Some(1_200_000_000), first: true, bytes: Bytes::from_static(b"tail") }, true);
        p.end_session(&stream, &second);
        assert_eq!(p.store.object(&stream, &key(&second, next + 1)).as_deref(), Some(&b"tail"[..]));
        assert!(p.store.object_keys(&stream).iter().all(|k| p.store.object(&stream, k).is_some()), "nothing left growing");
    }
}

#[cfg(test)]
mod byte_cap_tests {
    use super::*;
    use crate::media::TrackKind;

    fn packager(caps: ByteCaps) -> Packager {
        let timing = MpdTiming { dvr_window: Duration::from_secs(3600), ..mpd::tests::TIMING };
        Packager::new(Arc::new(Store::new()), timing).with_byte_caps(caps)
    }

    fn rendition(id: &str, kind: TrackKind) -> RenditionInfo {
        RenditionInfo {
            id: RenditionId::parse(id).unwrap(),
            kind,
            bandwidth: 1_000_000,
            width: 640,
            height: 360,
            timescale: if kind == TrackKind::Video { 90_000 } else { 48_000 },
            sample_rate: 48_000,
            channels: 2,
        }
    }

    fn segment(index: u64, bytes: usize) -> CmafSegment {
        CmafSegment { start_ns: index * 1_000_000_000, duration_ns: 1_000_000_000, bytes: Bytes::from(vec![0; bytes]) }
    }

    fn listed(p: &Packager, stream: &StreamId, id: &str) -> Vec<u64> {
        let tl = p.timeline(stream).unwrap();
        let tl = tl.lock();
        tl.periods.iter().flat_map(|p| p.tracks.iter().filter(|t| t.info.id.as_str() == id)).flat_map(|t| t.segments.iter().map(|s| s.number)).collect()
    }

    #[test]
    fn a_stream_over_its_byte_cap_loses_its_oldest_segments_and_keeps_its_live_edge() {
        let p = packager(ByteCaps { max_fragment_bytes: 1 << 20, max_stream_bytes: 9_000 });
        let (stream, other) = (StreamId::parse("cam").unwrap(), StreamId::parse("other").unwrap());
        let session = SessionId::parse("s1").unwrap();
        let (video, audio) = (RenditionId::parse("360p").unwrap(), RenditionId::parse("audio").unwrap());
        for s in [&stream, &other] {
            p.begin_session(s, &session, vec![rendition("360p", TrackKind::Video), rendition("audio", TrackKind::Audio)], None);
        }
        p.add_init(&stream, &session, &video, Bytes::from(vec![0; 500]), "avc1.64001F".into());
        // 1 KB a segment per rendition: under the cap, nothing goes.
        for i in 0..4 {
            p.add_segment(&stream, &session, &video, segment(i, 1000));
            p.add_segment(&stream, &session, &audio, segment(i, 1000));
            p.add_segment(&other, &session, &video, segment(i, 1000));
        }
        assert_eq!(p.store.stream_bytes(&stream), 8_500);
        assert_eq!(p.metrics().segments_evicted_for_bytes.get(), 0);
        // Two more of each: the oldest leave until the stream is under 9,000 bytes again.
        for i in 4..6 {
            p.add_segment(&stream, &session, &video, segment(i, 1000));
            p.add_segment(&stream, &session, &audio, segment(i, 1000));
        }
        assert_eq!(p.store.stream_bytes(&stream), 8_500);
        assert_eq!(listed(&p, &stream, "360p"), [3, 4, 5, 6]);
        assert_eq!(listed(&p, &stream, "audio"), [3, 4, 5, 6]);
        assert_eq!(p.metrics().segments_evicted_for_bytes.get(), 4);
        // Gone from the store too, the init segment stays; the other stream is untouched.
        let key = |number| ObjectKey { rendition: video.clone(), session: session.clone(), part: Part::Media(number) };
        assert!(p.store.object(&stream, &key(2)).is_none() && p.store.object(&stream, &key(3)).is_some());
        assert!(p.store.object(&stream, &ObjectKey { rendition: video.clone(), session: session.clone(), part: Part::Init }).is_some());
        assert_eq!(listed(&p, &other, "360p"), [1, 2, 3, 4]);
        // The rendered MPD lists only what is stored.
        p.publish(&p.timeline(&stream).unwrap().lock());
        let mpd = String::from_utf8(p.store.manifest(&stream, ManifestForm::Timeline).unwrap().to_vec()).unwrap();
        assert!(mpd.contains("startNumber=\"3\""), "{mpd}");

        // Segments each larger than the cap: the newest of each rendition still stays.
        p.add_segment(&stream, &session, &video, segment(6, 20_000));
        p.add_segment(&stream, &session, &audio, segment(6, 20_000));
        assert_eq!(listed(&p, &stream, "360p"), [7]);
        assert_eq!(listed(&p, &stream, "audio"), [7]);
        assert_eq!(p.store.stream_bytes(&stream), 40_500);
    }
}
