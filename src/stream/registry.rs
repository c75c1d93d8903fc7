//! Which streams are being published right now. A publish claims its stream id; the claim
//! is released when dropped, so a crashed session can never leave a stream locked.
//!
//! Each claim carries a [`PublisherLink`]: its publisher's connection records when media
//! last arrived and watches for a request to stop. A new publish for a stream whose
//! publisher has been silent for `ingest.takeover_after` takes it over: the old publisher
//! is asked to stop, and the new claim is made once the old one is released (its stream
//! actor has ended its session), within a bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::status::StreamStatus;
use crate::media::StreamId;

/// A relay that reconnects recognises "is already being published" in a refusal (see
/// ingest/relay.rs): keep the phrase in both errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("stream {0} is already being published")]
pub struct AlreadyPublishing(pub StreamId);

/// Why a claim that may take over was not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
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
    taken_by: Mutex<Option<SocketAddr>>,
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
            taken_by: Mutex::new(None),
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

    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Resolves when another publisher has taken the stream over; yields its address.
    pub async fn taken_over(&self) -> Option<SocketAddr> {
        self.stop.cancelled().await;
        *self.taken_by.lock()
    }

    fn take_over(&self, by: Option<SocketAddr>) {
        if !self.stop.is_cancelled() {
            *self.taken_by.lock() = by;
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
}

#[derive(Default)]
pub struct StreamRegistry {
    live: Mutex<HashMap<StreamId, Entry>>,
    next_claim: Mutex<u64>,
}

impl StreamRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Claims a stream for one publisher; a second claim fails while the first lives.
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
                Err(None) => return Err(AlreadyPublishing(stream.clone()).into()),
                Err(Some(old)) => {
                    old.take_over(Some(peer));
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

    /// A claim, or the link of a live claim that may be taken over (`Err(Some)`), or `Err(None)`.
    fn try_claim(
        self: &Arc<Self>,
        stream: &StreamId,
        peer: Option<SocketAddr>,
        takeover_after: Duration,
    ) -> Result<PublishClaim, Option<Arc<PublisherLink>>> {
        let mut live = self.live.lock();
        if let Some(entry) = live.get(stream) {
            let silent = !takeover_after.is_zero() && entry.link.silent_for() >= takeover_after;
            // A publisher already asked to stop stays silent until released.
            return Err((silent || entry.link.stop.is_cancelled() && !takeover_after.is_zero()).then(|| Arc::clone(&entry.link)));
        }
        let id = {
            let mut next = self.next_claim.lock();
            *next += 1;
            *next
        };
        let status = SharedStatus::default();
        let link = Arc::new(PublisherLink::new(peer));
        live.insert(stream.clone(), Entry { id, status: Arc::clone(&status), link: Arc::clone(&link) });
        Ok(PublishClaim { registry: Arc::clone(self), stream: stream.clone(), id, status, link })
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
            let by = link.taken_over().await;
            tokio::time::sleep(Duration::from_millis(100)).await; // the old session drains
            drop(old);
            by
        });
        let (new, takeover) = registry.claim_or_take_over(&cam, peer(2), TAKEOVER, WAIT).await.unwrap();
        assert_eq!(closing.await.unwrap(), Some(peer(2)), "the old publisher learns who took over");
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
}
