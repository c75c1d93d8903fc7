//! Which streams are being published right now. A publish claims its stream id; the claim
//! is released when dropped, so a crashed session can never leave a stream locked.
//!
//! Each claim carries a [`PublisherLink`]: its publisher's connection records when media
//! last arrived and watches for a request to stop. A new publish for a stream whose
//! publisher has been silent for `ingest.takeover_after` takes it over: the old publisher
//! is asked to stop, and the new claim is made once the old one is released (its stream
//! actor has ended its session), within a bound. A stream whose broadcaster dropped and
//! whose actor holds its Period (`hold.rs`) keeps its claim: the next publish of it resumes
//! that actor ([`StreamRegistry::resume_held`]) instead of claiming.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::handle::StreamHandle;
use super::hold::Held;
use super::status::StreamStatus;
use crate::media::StreamId;

/// A relay that reconnects recognises "is already being published" in a refusal (see
/// ingest/relay.rs): keep the phrase in both errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("stream {0} is already being published")]
pub struct AlreadyPublishing(pub StreamId);

/// Why a publisher's connection is asked to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A new publish from this address took the stream over.
    TakenOver(Option<SocketAddr>),
    /// An admin disconnected the publisher (it may publish again).
    Kicked,
    /// An admin stopped the stream: new publishes are refused for a while.
    Stopped,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::TakenOver(by) => {
                let by = by.map_or_else(|| "?".to_owned(), |a| a.to_string());
                write!(f, "taken over by a new publish from {by} after sending no media for ingest.takeover_after")
            }
            StopReason::Kicked => f.write_str("disconnected by an admin"),
            StopReason::Stopped => f.write_str("stream stopped by an admin"),
        }
    }
}

/// Most streams held stopped at once; a stop beyond it is refused (and says so).
pub const MAX_STOPPED: usize = 10_000;

/// Why a claim that may take over was not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    /// An admin stopped the stream; publishes are refused until then.
    #[error("stream {0} was stopped by an admin; it may be published again in {1} s")]
    Stopped(StreamId, u64),
    /// The current publisher is alive (or takeover is off).
    #[error(transparent)]
    Busy(#[from] AlreadyPublishing),
    /// The silent publisher was asked to stop but its session did not end in time.
    #[error("stream {0} is already being published: its silent publisher was asked to stop but has not closed within {1:?}; retry")]
    StillClosing(StreamId, Duration),
}

/// A stream's status, shared by its ingest connection, its actor and HTTP.
pub type SharedStatus = Arc<Mutex<StreamStatus>>;

/// The registry's view of one claim's publisher, shared with its ingest connection.
#[derive(Debug)]
pub struct PublisherLink {
    /// The publisher's remote address (a broadcaster, or the node relaying it).
    peer: Option<SocketAddr>,
    epoch: Instant,
    /// Milliseconds after `epoch` at which media last arrived (or the claim was made).
    last_media_ms: AtomicU64,
    /// The connection is waiting for us (back-pressure), not for its publisher.
    busy: AtomicBool,
    /// Cancelled when another publisher takes the stream over.
    stop: CancellationToken,
    reason: Mutex<Option<StopReason>>,
    /// Cancelled when the claim is dropped.
    released: CancellationToken,
}

impl PublisherLink {
    fn new(peer: Option<SocketAddr>) -> Self {
        Self {
            peer,
            epoch: Instant::now(),
            last_media_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            stop: CancellationToken::new(),
            reason: Mutex::new(None),
            released: CancellationToken::new(),
        }
    }

    /// Records that media arrived from the publisher now.
    pub fn media_arrived(&self) {
        self.last_media_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Marks the connection as waiting on the stream (its publisher is not silent, we are
    /// not reading) until the guard is dropped.
    pub fn busy(&self) -> BusyGuard<'_> {
        self.busy.store(true, Ordering::Relaxed);
        BusyGuard(self)
    }

    /// How long the publisher has sent no media; zero while we hold it back.
    pub fn silent_for(&self) -> Duration {
        if self.busy.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_media_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Resolves once the claim is dropped (its session has ended).
    pub async fn released(&self) {
        self.released.cancelled().await
    }

    /// Resolves when the publisher's connection should close, with the reason.
    pub async fn stopped(&self) -> StopReason {
        self.stop.cancelled().await;
        self.reason.lock().clone().unwrap_or(StopReason::Kicked)
    }

    /// Whether the connection was asked to close (taken over, kicked, stopped).
    pub fn asked_to_stop(&self) -> bool {
        self.stop.is_cancelled()
    }

    fn ask_to_stop(&self, reason: StopReason) {
        let mut current = self.reason.lock();
        if current.is_none() {
            *current = Some(reason);
            self.stop.cancel();
        }
    }
}

/// See [`PublisherLink::busy`].
pub struct BusyGuard<'a>(&'a PublisherLink);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.media_arrived();
        self.0.busy.store(false, Ordering::Relaxed);
    }
}

/// A stream taken over from a silent publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    /// The previous publisher's remote address.
    pub previous: Option<SocketAddr>,
    /// How long it had sent no media.
    pub silent_for: Duration,
    /// How long its session took to end.
    pub waited: Duration,
}

struct Entry {
    id: u64,
    status: SharedStatus,
    link: Arc<PublisherLink>,
    /// Set while the actor holds the stream for its dropped broadcaster.
    held: Option<Held>,
}

#[derive(Default)]
pub struct StreamRegistry {
    live: Mutex<HashMap<StreamId, Entry>>,
    next_claim: Mutex<u64>,
    /// Streams an admin stopped, until when their publishes are refused.
    stopped: Mutex<HashMap<StreamId, Instant>>,
}

impl StreamRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Claims a stream for one publisher; a second claim fails while the first lives.
    #[cfg(test)]
    pub fn claim(self: &Arc<Self>, stream: &StreamId) -> Result<PublishClaim, AlreadyPublishing> {
        self.try_claim(stream, None, Duration::ZERO).map_err(|_| AlreadyPublishing(stream.clone()))
    }

    /// Claims a stream for the publisher at `peer`. While another claim lives, it fails,
    /// unless that claim's publisher has sent no media for `takeover_after` (not zero): it
    /// is then asked to stop, and the claim is made as soon as the old one is released, or
    /// fails after `wait`.
    pub async fn claim_or_take_over(
        self: &Arc<Self>,
        stream: &StreamId,
        peer: SocketAddr,
        takeover_after: Duration,
        wait: Duration,
    ) -> Result<(PublishClaim, Option<Takeover>), ClaimError> {
        let started = tokio::time::Instant::now();
        let mut takeover: Option<Takeover> = None;
        loop {
            let released = match self.try_claim(stream, Some(peer), takeover_after) {
                Ok(claim) => {
                    if let Some(t) = takeover.as_mut() {
                        t.waited = started.elapsed();
                    }
                    return Ok((claim, takeover));
                }
                Err(Err(refusal)) => return Err(refusal),
                Err(Ok(None)) => return Err(AlreadyPublishing(stream.clone()).into()),
                Err(Ok(Some(old))) => {
                    old.ask_to_stop(StopReason::TakenOver(Some(peer)));
                    // The first silent publisher is the one taken over; should another claim
                    // slip in meanwhile, it is fresh and refuses us above.
                    takeover.get_or_insert(Takeover { previous: old.peer, silent_for: old.silent_for(), waited: Duration::ZERO });
                    old.released.clone()
                }
            };
            tokio::select! {
                _ = released.cancelled() => {}
                _ = tokio::time::sleep_until(started + wait) => return Err(ClaimError::StillClosing(stream.clone(), wait)),
            }
        }
    }

    /// A claim, or the link of a live claim that may be taken over (`Err(Ok(Some))`), or
    /// `Err(Ok(None))` while another publisher holds it, or why the stream refuses publishes.
    fn try_claim(
        self: &Arc<Self>,
        stream: &StreamId,
        peer: Option<SocketAddr>,
        takeover_after: Duration,
    ) -> Result<PublishClaim, Result<Option<Arc<PublisherLink>>, ClaimError>> {
        if let Some(left) = self.stopped_for(stream) {
            return Err(Err(ClaimError::Stopped(stream.clone(), left.as_secs().max(1))));
        }
        let mut live = self.live.lock();
        if let Some(entry) = live.get(stream) {
            let silent = !takeover_after.is_zero() && entry.link.silent_for() >= takeover_after;
            // A publisher already asked to stop stays silent until released.
            return Err(Ok((silent || entry.link.stop.is_cancelled() && !takeover_after.is_zero()).then(|| Arc::clone(&entry.link))));
        }
        let id = {
            let mut next = self.next_claim.lock();
            *next += 1;
            *next
        };
        let status = SharedStatus::default();
        let link = Arc::new(PublisherLink::new(peer));
        live.insert(stream.clone(), Entry { id, status: Arc::clone(&status), link: Arc::clone(&link), held: None });
        Ok(PublishClaim { registry: Arc::clone(self), stream: stream.clone(), id, status, link })
    }

    /// A reconnected broadcaster's way into its held stream (`hold.rs`): a handle that feeds
    /// the same actor, and the claim's link, or `None` when the stream is not held here.
    pub fn resume_held(&self, stream: &StreamId) -> Option<(StreamHandle, Arc<PublisherLink>)> {
        if self.stopped_for(stream).is_some() {
            return None;
        }
        let mut live = self.live.lock();
        let entry = live.get_mut(stream).filter(|e| !e.link.asked_to_stop())?;
        let handle = super::hold::attach(entry.held.take()?, Arc::clone(&entry.status))?;
        entry.link.media_arrived();
        Some((handle, Arc::clone(&entry.link)))
    }

    /// [`resume_held`](Self::resume_held) once the stream is held, waiting up to `wait`
    /// while it is live here (its publisher may be about to drop into a hold).
    pub async fn resume_when_held(&self, stream: &StreamId, wait: Duration) -> Option<(StreamHandle, Arc<PublisherLink>)> {
        const POLL: Duration = Duration::from_millis(50);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(resumed) = self.resume_held(stream) {
                return Some(resumed);
            }
            if !self.is_live(stream) || tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A copy of a live stream's status.
    pub fn status(&self, stream: &StreamId) -> Option<StreamStatus> {
        self.live.lock().get(stream).map(|entry| entry.status.lock().clone())
    }

    pub fn is_live(&self, stream: &StreamId) -> bool {
        self.live.lock().contains_key(stream)
    }

    /// Streams published on this node now, sorted.
    pub fn streams(&self) -> Vec<StreamId> {
        let mut list: Vec<StreamId> = self.live.lock().keys().cloned().collect();
        list.sort();
        list
    }

    /// Every live stream with its admission order (claim id) and status.
    pub fn admitted(&self) -> Vec<(u64, StreamId, SharedStatus)> {
        self.live.lock().iter().map(|(stream, entry)| (entry.id, stream.clone(), Arc::clone(&entry.status))).collect()
    }

    pub fn count(&self) -> usize {
        self.live.lock().len()
    }

    /// Asks the publisher of `stream` to disconnect (it may publish again); false when the
    /// stream is not live here.
    pub fn kick(&self, stream: &StreamId) -> bool {
        self.live.lock().get(stream).map(|entry| entry.link.ask_to_stop(StopReason::Kicked)).is_some()
    }

    /// Disconnects the publisher of `stream`, if any, and refuses publishes of it for
    /// `hold`. Returns whether a publisher was live; `Err` when [`MAX_STOPPED`] streams are
    /// held stopped already.
    pub fn stop(&self, stream: &StreamId, hold: Duration) -> Result<bool, usize> {
        {
            let mut stopped = self.stopped.lock();
            let now = Instant::now();
            stopped.retain(|_, until| *until > now);
            if stopped.len() >= MAX_STOPPED && !stopped.contains_key(stream) {
                return Err(MAX_STOPPED);
            }
            stopped.insert(stream.clone(), now + hold);
        }
        Ok(self.live.lock().get(stream).map(|entry| entry.link.ask_to_stop(StopReason::Stopped)).is_some())
    }

    /// Lifts an admin's stop; false when the stream was not stopped.
    pub fn resume(&self, stream: &StreamId) -> bool {
        self.stopped.lock().remove(stream).is_some_and(|until| until > Instant::now())
    }

    /// How long publishes of `stream` are still refused by an admin's stop.
    pub fn stopped_for(&self, stream: &StreamId) -> Option<Duration> {
        let until = *self.stopped.lock().get(stream)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// Proof that this publisher owns its stream id; dropping it frees the id.
pub struct PublishClaim {
    registry: Arc<StreamRegistry>,
    stream: StreamId,
    id: u64,
    status: SharedStatus,
    link: Arc<PublisherLink>,
}

impl PublishClaim {
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    pub fn status(&self) -> &SharedStatus {
        &self.status
    }

    /// The link its publisher's connection keeps (media arrivals, takeover requests).
    pub fn link(&self) -> &Arc<PublisherLink> {
        &self.link
    }

    /// Lets the next publish of the stream resume its actor through `held` (or, `None`,
    /// no longer).
    pub(super) fn set_held(&self, held: Option<Held>) {
        if let Some(entry) = self.registry.live.lock().get_mut(&self.stream).filter(|e| e.id == self.id) {
            entry.held = held;
        }
    }
}

impl Drop for PublishClaim {
    fn drop(&mut self) {
        let mut live = self.registry.live.lock();
        if live.get(&self.stream).is_some_and(|entry| entry.id == self.id) {
            live.remove(&self.stream);
        }
        drop(live);
        self.link.released.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_publisher_per_stream_and_release_on_drop() {
        let registry = StreamRegistry::new();
        let cam = StreamId::parse("cam").unwrap();
        let claim = registry.claim(&cam).unwrap();
        assert_eq!(registry.claim(&cam).err(), Some(AlreadyPublishing(cam.clone())));
        assert!(registry.claim(&StreamId::parse("other").unwrap()).is_ok());
        drop(claim);
        assert!(!registry.is_live(&cam));
        assert!(registry.claim(&cam).is_ok());
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const TAKEOVER: Duration = Duration::from_millis(150);
    const WAIT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn a_live_publisher_is_kept_and_a_silent_one_is_taken_over() {
        let registry = StreamRegistry::new();
        let cam = StreamId::parse("cam").unwrap();
        let (old, none) = registry.claim_or_take_over(&cam, peer(1), TAKEOVER, WAIT).await.unwrap();
        assert!(none.is_none());
        // Media keeps arriving: refused, however often asked.
        for _ in 0..4 {
            tokio::time::sleep(TAKEOVER / 2).await;
            old.link().media_arrived();
            let refused = registry.claim_or_take_over(&cam, peer(2), TAKEOVER, WAIT).await.err();
            assert_eq!(refused, Some(ClaimError::Busy(AlreadyPublishing(cam.clone()))));
        }
        // Held back by us (back-pressure) for longer than the limit: still alive.
        {
            let _busy = old.link().busy();
            tokio::time::sleep(TAKEOVER * 2).await;
            assert!(registry.claim_or_take_over(&cam, peer(2), TAKEOVER, WAIT).await.is_err());
        }
        assert!(registry.claim_or_take_over(&cam, peer(2), TAKEOVER, WAIT).await.is_err(), "the hold counts as media");
        // Silent: the old publisher is asked to stop; the new claim waits for its release.
        tokio::time::sleep(TAKEOVER + Duration::from_millis(20)).await;
        let link = Arc::clone(old.link());
        let closing = tokio::spawn(async move {
            let by = link.stopped().await;
            tokio::time::sleep(Duration::from_millis(100)).await; // the old session drains
            drop(old);
            by
        });
        let (new, takeover) = registry.claim_or_take_over(&cam, peer(2), TAKEOVER, WAIT).await.unwrap();
        assert_eq!(closing.await.unwrap(), StopReason::TakenOver(Some(peer(2))), "the old publisher learns who took over");
        let takeover = takeover.expect("a takeover");
        assert_eq!(takeover.previous, Some(peer(1)));
        assert!(takeover.silent_for >= TAKEOVER && takeover.waited >= Duration::from_millis(100), "{takeover:?}");
        assert!(registry.is_live(&cam) && registry.count() == 1);
        // The new publisher has its own grace: a third publish right away is refused.
        assert!(registry.claim_or_take_over(&cam, peer(3), TAKEOVER, WAIT).await.is_err());
        drop(new);
        assert!(!registry.is_live(&cam));
    }

    #[tokio::test]
    async fn takeover_off_or_an_old_session_that_never_ends() {
        let registry = StreamRegistry::new();
        let cam = StreamId::parse("cam").unwrap();
        let (old, _) = registry.claim_or_take_over(&cam, peer(1), TAKEOVER, WAIT).await.unwrap();
        tokio::time::sleep(TAKEOVER * 2).await;
        assert!(matches!(registry.claim_or_take_over(&cam, peer(2), Duration::ZERO, WAIT).await, Err(ClaimError::Busy(_))));
        assert!(registry.claim(&cam).is_err(), "a plain claim never takes over");
        let started = Instant::now();
        let wait = Duration::from_millis(200);
        let result = registry.claim_or_take_over(&cam, peer(2), TAKEOVER, wait).await;
        assert_eq!(result.err(), Some(ClaimError::StillClosing(cam.clone(), wait)));
        assert!(started.elapsed() >= wait && started.elapsed() < wait * 5);
        assert!(old.link().stop.is_cancelled(), "the old publisher was asked to stop");
    }

    #[tokio::test]
    async fn an_admin_kicks_a_publisher_or_stops_a_stream_for_a_while() {
        let registry = StreamRegistry::new();
        let cam = StreamId::parse("cam").unwrap();
        let claim = registry.claim(&cam).unwrap();
        assert!(registry.kick(&cam));
        assert_eq!(claim.link().stopped().await, StopReason::Kicked);
        drop(claim);
        assert!(!registry.kick(&cam), "not live");

        let claim = registry.claim(&cam).unwrap();
        assert_eq!(registry.stop(&cam, Duration::from_secs(60)), Ok(true));
        assert_eq!(claim.link().stopped().await, StopReason::Stopped);
        drop(claim);
        let refused = registry.claim_or_take_over(&cam, peer(1), Duration::from_secs(5), Duration::from_secs(1)).await.err().unwrap();
        assert!(matches!(refused, ClaimError::Stopped(_, 60) | ClaimError::Stopped(_, 59)), "{refused:?}");
        assert!(registry.claim(&cam).is_err());
        assert!(registry.resume(&cam));
        assert!(registry.claim(&cam).is_ok(), "publishable again");
    }
}
