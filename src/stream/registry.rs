//! Which streams are being published right now. A publish claims its stream id; the claim
//! is released when dropped, so a crashed session can never leave a stream locked.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::status::StreamStatus;
use crate::media::StreamId;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("stream {0} is already being published")]
pub struct AlreadyPublishing(pub StreamId);

/// A stream's status, shared by its ingest connection, its actor and HTTP.
pub type SharedStatus = Arc<Mutex<StreamStatus>>;

#[derive(Default)]
pub struct StreamRegistry {
    live: Mutex<HashMap<StreamId, (u64, SharedStatus)>>,
    next_claim: Mutex<u64>,
}

impl StreamRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Claims a stream for one publisher; a second claim fails while the first lives.
    pub fn claim(self: &Arc<Self>, stream: &StreamId) -> Result<PublishClaim, AlreadyPublishing> {
        let mut live = self.live.lock();
        if live.contains_key(stream) {
            return Err(AlreadyPublishing(stream.clone()));
        }
        let id = {
            let mut next = self.next_claim.lock();
            *next += 1;
            *next
        };
        let status = SharedStatus::default();
        live.insert(stream.clone(), (id, Arc::clone(&status)));
        Ok(PublishClaim { registry: Arc::clone(self), stream: stream.clone(), id, status })
    }

    /// A copy of a live stream's status.
    pub fn status(&self, stream: &StreamId) -> Option<StreamStatus> {
        self.live.lock().get(stream).map(|(_, status)| status.lock().clone())
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
        self.live.lock().iter().map(|(stream, (id, status))| (*id, stream.clone(), Arc::clone(status))).collect()
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
}

impl PublishClaim {
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    pub fn status(&self) -> &SharedStatus {
        &self.status
    }
}

impl Drop for PublishClaim {
    fn drop(&mut self) {
        let mut live = self.registry.live.lock();
        if live.get(&self.stream).is_some_and(|(id, _)| *id == self.id) {
            live.remove(&self.stream);
        }
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
}
