//! A stream's packaged state as one byte string, for the hand-over of a draining live
//! node (cluster/handover.rs): the timeline (availabilityStartTime, Periods, segments, what
//! left the window) and every object the store holds for it. The node that continues the
//! stream adopts it before its session starts, so it serves the same DVR window under the
//! same URLs and numbers its segments on the same grid: viewers see one Period change.
//!
//! Only a stream between sessions is exported (its last Period closed, nothing growing),
//! so the snapshot is complete and never changes after it is taken.
//!
//! Wire format: a 4-byte big-endian length, a JSON header of that length (the timeline,
//! then each object's key and length in order), then the objects' bytes back to back.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Packager;
use super::timeline::StreamTimeline;
use crate::media::StreamId;
use crate::store::ObjectKey;

/// Largest header read (a timeline of a few hundred segments is tens of KiB).
const MAX_HEADER_BYTES: usize = 4 << 20;

#[derive(Serialize, Deserialize)]
struct Header {
    timeline: StreamTimeline,
    objects: Vec<(ObjectKey, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the stream has a session here")]
    InSession,
    #[error("this node is not draining: its streams are its own")]
    NotDraining,
    #[error("snapshot truncated")]
    Truncated,
    #[error("snapshot header over {MAX_HEADER_BYTES} bytes")]
    HeaderTooLarge,
    #[error("snapshot header: {0}")]
    Header(#[from] serde_json::Error),
    #[error("snapshot of stream {found}, not {expected}")]
    WrongStream { expected: StreamId, found: StreamId },
    #[error("{0} bytes after the last object")]
    TrailingBytes(usize),
}

/// What an adoption brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    pub periods: usize,
    pub objects: usize,
    pub bytes: u64,
}

impl Packager {
    /// From now on a session that ends is suspended, not ended (its MPD stays dynamic with
    /// the Period's end announced): this node drains and its streams go on elsewhere.
    pub fn hand_over_on_end(&self) {
        self.hand_over.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn hands_over(&self) -> bool {
        self.hand_over.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The stream's state for another node, once it is between sessions and while this
    /// node drains (a node that is not draining keeps its streams, suspended ones too);
    /// `None` for a stream this node does not hold. Remembered as handed over
    /// ([`Self::awaiting_hand_over`]), so the set is bounded by the streams held at the drain.
    pub fn export(&self, stream: &StreamId) -> Result<Option<Bytes>, SnapshotError> {
        let Some(timeline) = self.timeline(stream) else { return Ok(None) };
        let tl = timeline.lock();
        if !tl.between_sessions() {
            return Err(SnapshotError::InSession);
        }
        if !self.hands_over() {
            return Err(SnapshotError::NotDraining);
        }
        let mut objects = Vec::new();
        let mut bodies = Vec::new();
        for key in self.store.object_keys(stream) {
            if let Some(bytes) = self.store.object(stream, &key) {
                objects.push((key, bytes.len() as u64));
                bodies.push(bytes);
            }
        }
        let header = serde_json::to_vec(&Header { timeline: tl.clone(), objects })?;
        drop(tl);
        let mut out = BytesMut::with_capacity(4 + header.len() + bodies.iter().map(Bytes::len).sum::<usize>());
        out.put_u32(u32::try_from(header.len()).map_err(|_| SnapshotError::HeaderTooLarge)?);
        out.put_slice(&header);
        for body in bodies {
            out.put_slice(&body);
        }
        self.handed_over.lock().insert(stream.clone());
        Ok(Some(out.freeze()))
    }

    /// Streams suspended here that no node has taken yet.
    pub fn awaiting_hand_over(&self) -> Vec<StreamId> {
        let handed_over = self.handed_over.lock();
        self.timelines
            .read()
            .iter()
            .filter(|(stream, tl)| !handed_over.contains(*stream) && {
                let tl = tl.lock();
                tl.suspended_at.is_some()
            })
            .map(|(stream, _)| stream.clone())
            .collect()
    }

    /// Takes over `stream` from a snapshot another node exported, before this node's
    /// session of it begins: its objects go into the store and its timeline replaces any
    /// this node had (an old, ended one). Refused while this node has a session of it.
    pub fn adopt(&self, stream: &StreamId, mut snapshot: Bytes) -> Result<Adopted, SnapshotError> {
        if snapshot.len() < 4 {
            return Err(SnapshotError::Truncated);
        }
        let header_len = snapshot.get_u32() as usize;
        if header_len > MAX_HEADER_BYTES {
            return Err(SnapshotError::HeaderTooLarge);
        }
        if snapshot.len() < header_len {
            return Err(SnapshotError::Truncated);
        }
        let header: Header = serde_json::from_slice(&snapshot.split_to(header_len))?;
        if &header.timeline.stream != stream {
            return Err(SnapshotError::WrongStream { expected: stream.clone(), found: header.timeline.stream });
        }
        let mut objects = Vec::with_capacity(header.objects.len());
        for (key, len) in header.objects {
            let len = usize::try_from(len).ok().filter(|&l| l <= snapshot.len()).ok_or(SnapshotError::Truncated)?;
            objects.push((key, snapshot.split_to(len)));
        }
        if !snapshot.is_empty() {
            return Err(SnapshotError::TrailingBytes(snapshot.len()));
        }
        let mut timelines = self.timelines.write();
        if timelines.get(stream).is_some_and(|tl| !tl.lock().between_sessions()) {
            return Err(SnapshotError::InSession);
        }
        let adopted = Adopted {
            periods: header.timeline.periods.len(),
            objects: objects.len(),
            bytes: objects.iter().map(|(_, b)| b.len() as u64).sum(),
        };
        self.store.remove_stream(stream);
        for (key, bytes) in objects {
            self.store.put_object(stream, key, bytes);
        }
        let timeline = Arc::new(Mutex::new(header.timeline));
        timelines.insert(stream.clone(), Arc::clone(&timeline));
        drop(timelines);
        let mut tl = timeline.lock();
        let now = SystemTime::now();
        self.contained(stream, "rendering the MPD", || self.evict_and_publish(&mut tl, now));
        Ok(adopted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{CmafSegment, SessionId};
    use crate::package::timeline::RenditionInfo;
    use crate::package::{mpd, timeline};
    use crate::store::{ManifestForm, Part, Store};

    fn packager() -> (Arc<Store>, Packager) {
        let store = Arc::new(Store::new());
        (Arc::clone(&store), Packager::new(store, mpd::tests::TIMING))
    }

    fn video() -> RenditionInfo {
        timeline::tests::video("720p")
    }

    fn publish(p: &Packager, stream: &StreamId, session: &SessionId, segments: u64) {
        p.begin_session(stream, session, vec![video()], None);
        p.add_init(stream, session, &video().id, Bytes::from_static(b"init"), "avc1.64001f".into());
        for n in 0..segments {
            let segment = CmafSegment { start_ns: n * 1_000_000_000, duration_ns: 1_000_000_000, bytes: Bytes::from(vec![n as u8; 100]) };
            p.add_segment(stream, session, &video().id, segment);
        }
    }

    #[test]
    fn a_suspended_stream_moves_with_its_window_and_goes_on_on_the_same_grid() {
        let (_, draining) = packager();
        let stream = StreamId::parse("cam").unwrap();
        let old = SessionId::parse("s1").unwrap();
        publish(&draining, &stream, &old, 3);
        assert!(matches!(draining.export(&stream), Err(SnapshotError::InSession)), "a live session is not exported");
        draining.hand_over_on_end();
        draining.end_session(&stream, &old);
        assert_eq!(draining.awaiting_hand_over(), vec![stream.clone()]);
        let mpd = String::from_utf8(draining.store.manifest(&stream, ManifestForm::Timeline).unwrap().to_vec()).unwrap();
        assert!(mpd.contains(r#"type="dynamic""#), "a suspended stream stays live: {mpd}");
        let snapshot = draining.export(&stream).unwrap().unwrap();
        assert!(draining.awaiting_hand_over().is_empty());

        let (store, next) = packager();
        let adopted = next.adopt(&stream, snapshot.clone()).unwrap();
        assert_eq!((adopted.periods, adopted.objects), (1, 4), "the init and three segments");
        let key = |n| ObjectKey { rendition: video().id, session: old.clone(), part: Part::Media(n) };
        let first = draining.timeline(&stream).unwrap().lock().periods[0].first_number;
        assert_eq!(store.object(&stream, &key(first + 2)).as_deref(), Some(&[2u8; 100][..]));
        // The new session continues the timeline: same availabilityStartTime, a second Period
        // starting no earlier than the first one's end, numbered on the same grid.
        let new = SessionId::parse("s2").unwrap();
        next.begin_session(&stream, &new, vec![video()], None);
        let (before, after) = (draining.timeline(&stream).unwrap().lock().clone(), next.timeline(&stream).unwrap().lock().clone());
        assert_eq!(after.availability_start, before.availability_start);
        assert_eq!(after.periods.len(), 2);
        let end = after.periods[0].start + after.periods[0].duration.unwrap();
        assert!(after.periods[1].start >= end);
        // Segment n ends n segment durations after availabilityStartTime.
        let grid = after.periods[1].start.as_nanos() / after.segment_duration.as_nanos();
        assert_eq!(u128::from(after.periods[1].first_number), grid + 1, "numbers on the grid from availabilityStartTime");
        // While it has a session, nothing replaces it.
        assert!(matches!(next.adopt(&stream, snapshot), Err(SnapshotError::InSession)));
    }

    #[test]
    fn a_damaged_snapshot_is_refused_whole() {
        let (_, draining) = packager();
        let stream = StreamId::parse("cam").unwrap();
        let session = SessionId::parse("s1").unwrap();
        publish(&draining, &stream, &session, 2);
        draining.hand_over_on_end();
        draining.end_session(&stream, &session);
        let snapshot = draining.export(&stream).unwrap().unwrap();
        let (store, next) = packager();
        assert!(matches!(next.adopt(&stream, snapshot.slice(..snapshot.len() - 1)), Err(SnapshotError::Truncated)));
        let mut longer = snapshot.to_vec();
        longer.push(0);
        assert!(matches!(next.adopt(&stream, longer.into()), Err(SnapshotError::TrailingBytes(1))));
        let other = StreamId::parse("other").unwrap();
        assert!(matches!(next.adopt(&other, snapshot), Err(SnapshotError::WrongStream { .. })));
        assert!(!store.contains_stream(&stream) && !store.contains_stream(&other), "nothing half-adopted");
    }
}
