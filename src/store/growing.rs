//! A body that grows chunk by chunk while it is produced and is then sealed: a segment
//! being encoded (the packager appends each CMAF chunk as the muxer cuts it), or an
//! in-progress segment a tier relays from upstream. Any number of readers follow it: each
//! gets what has arrived so far, then every later chunk as it is appended, and the end.
//!
//! The writer never waits on a reader: appending takes a short lock to push one `Bytes`
//! (a reference count, no copy) and bumps a `watch` channel; each reader keeps its own
//! cursor and clones chunks out under the same short lock. A slow viewer holds only its
//! cursor, never a lock or buffer another needs. The bytes held are bounded by the writer
//! (the assembler's `package.max_fragment_bytes`, a tier's `max_body_bytes`).
//!
//! A body ends sealed (complete: its chunks concatenated are the object, byte for byte) or
//! abandoned (the pipeline stopped, the upstream failed): a reader then gets an error, so
//! an HTTP response is cut off instead of ending as if complete. A reader also gives up,
//! with an error, when nothing arrives for `stall` (a writer that hangs).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use parking_lot::Mutex;
use tokio::sync::watch;

/// How a growing body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Complete: every byte is there.
    Sealed,
    /// Will never be complete.
    Abandoned,
}

/// Why a reader stopped before the end of a sealed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("the object was abandoned before it was complete")]
    Abandoned,
    #[error("no data arrived for {0:?}")]
    Stalled(Duration),
}

/// What readers are told: how many chunks exist, and whether more will come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    chunks: usize,
    end: Option<End>,
}

#[derive(Debug)]
pub struct GrowingBody {
    chunks: Mutex<Vec<Bytes>>,
    progress: watch::Sender<Progress>,
}

impl Default for GrowingBody {
    fn default() -> Self {
        Self { chunks: Mutex::new(Vec::new()), progress: watch::Sender::new(Progress::default()) }
    }
}

impl GrowingBody {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Appends one chunk; ignored once the body has ended.
    pub fn push(&self, chunk: Bytes) {
        let mut chunks = self.chunks.lock();
        if self.progress.borrow().end.is_some() || chunk.is_empty() {
            return;
        }
        chunks.push(chunk);
        let count = chunks.len();
        drop(chunks);
        self.progress.send_modify(|p| p.chunks = count);
    }

    /// The body is complete: readers finish with what they have read. (Its bytes, for a
    /// store or cache that keeps them whole: [`Self::concat`].)
    pub fn seal(&self) {
        self.end(End::Sealed);
    }

    /// The body will never be complete: readers end with [`ReadError::Abandoned`].
    pub fn abandon(&self) {
        self.end(End::Abandoned);
    }

    fn end(&self, end: End) {
        self.progress.send_modify(|p| {
            p.end.get_or_insert(end);
        });
    }

    /// How it ended, if it has.
    pub fn ended(&self) -> Option<End> {
        self.progress.borrow().end
    }

    /// The bytes appended so far.
    fn len(&self) -> usize {
        self.chunks.lock().iter().map(Bytes::len).sum()
    }

    /// Every chunk so far, concatenated.
    pub fn concat(&self) -> Bytes {
        let chunks = self.chunks.lock();
        match chunks.len() {
            1 => chunks[0].clone(),
            _ => {
                let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                for chunk in chunks.iter() {
                    all.extend_from_slice(chunk);
                }
                all.freeze()
            }
        }
    }

    /// Waits, up to `wait`, until the body holds at least `len` bytes or has ended; true
    /// when either happened.
    pub async fn wait_for_len(&self, len: usize, wait: Duration) -> bool {
        let mut progress = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Marked seen before the check, so an append in between wakes the wait below.
            let ended = progress.borrow_and_update().end.is_some();
            if ended || self.len() >= len {
                return true;
            }
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self`: never dropped while borrowed.
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// The chunks from index `from` on, and whether the body has ended (then no more come).
    fn chunks_from(&self, from: usize) -> (Vec<Bytes>, Option<End>) {
        let chunks = self.chunks.lock();
        let end = self.progress.borrow().end;
        (chunks.get(from..).map(<[Bytes]>::to_vec).unwrap_or_default(), end)
    }

    /// A reader from the first byte: what has arrived, then each chunk as it comes, then
    /// the end (`Err` when abandoned, or when nothing arrived for `stall`).
    pub fn reader(self: &Arc<Self>, stall: Duration) -> impl Stream<Item = Result<Bytes, ReadError>> + Send + 'static {
        let body = Arc::clone(self);
        let progress = self.progress.subscribe();
        futures_util::stream::unfold((body, 0usize, Vec::<Bytes>::new().into_iter(), false), move |(body, mut cursor, mut pending, done)| {
            let mut progress = progress.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    if let Some(chunk) = pending.next() {
                        return Some((Ok(chunk), (body, cursor, pending, false)));
                    }
                    // Mark the current version seen before reading, so an append between the
                    // read and the wait below wakes the wait.
                    progress.borrow_and_update();
                    let (chunks, end) = body.chunks_from(cursor);
                    if !chunks.is_empty() {
                        cursor += chunks.len();
                        pending = chunks.into_iter();
                        continue;
                    }
                    match end {
                        Some(End::Sealed) => return None,
                        Some(End::Abandoned) => return Some((Err(ReadError::Abandoned), (body, cursor, pending, true))),
                        None => {}
                    }
                    match tokio::time::timeout(stall, progress.changed()).await {
                        Ok(Ok(())) => {}
                        // The writer is gone without ending the body.
                        Ok(Err(_)) => return Some((Err(ReadError::Abandoned), (body, cursor, pending, true))),
                        Err(_) => return Some((Err(ReadError::Stalled(stall)), (body, cursor, pending, true))),
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    const STALL: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn readers_get_what_arrived_then_the_live_tail_then_the_end() {
        let body = GrowingBody::new();
        body.push(Bytes::from_static(b"styp"));
        let mut early = Box::pin(body.reader(STALL));
        assert_eq!(early.next().await.unwrap().unwrap(), "styp");
        // Waits for the next chunk.
        let next = tokio::spawn(async move {
            let chunk = early.next().await.unwrap().unwrap();
            (chunk, early)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!next.is_finished(), "a reader waits for the next chunk");
        body.push(Bytes::from_static(b"moof"));
        let (chunk, mut early) = next.await.unwrap();
        assert_eq!(chunk, "moof");
        body.push(Bytes::from_static(b"mdat"));
        // A late reader gets everything so far at once.
        let late: Vec<Bytes> = body.reader(STALL).take(3).map(Result::unwrap).collect().await;
        assert_eq!(late, ["styp", "moof", "mdat"]);
        assert_eq!(body.concat(), "stypmoofmdat");
        body.seal();
        assert_eq!(early.next().await.unwrap().unwrap(), "mdat");
        assert!(early.next().await.is_none(), "a sealed body ends its readers");
        // Pushes after the end are ignored.
        body.push(Bytes::from_static(b"more"));
        assert_eq!(body.concat(), "stypmoofmdat");
    }

    #[tokio::test]
    async fn waiting_for_bytes_ends_when_they_arrive_the_body_ends_or_time_is_up() {
        let body = GrowingBody::new();
        body.push(Bytes::from_static(b"styp"));
        assert!(body.wait_for_len(4, STALL).await);
        assert!(!body.wait_for_len(5, Duration::from_millis(20)).await);
        let writer = Arc::clone(&body);
        let pushed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.push(Bytes::from_static(b"moof"));
        });
        assert!(body.wait_for_len(8, STALL).await);
        pushed.await.unwrap();
        body.seal();
        assert!(body.wait_for_len(100, STALL).await, "an ended body answers at once");
    }

    #[tokio::test]
    async fn an_abandoned_or_stalled_body_ends_its_readers_with_an_error() {
        let body = GrowingBody::new();
        body.push(Bytes::from_static(b"moof"));
        let mut reader = Box::pin(body.reader(STALL));
        assert!(reader.next().await.unwrap().is_ok());
        body.abandon();
        assert_eq!(reader.next().await.unwrap().unwrap_err(), ReadError::Abandoned);
        assert!(reader.next().await.is_none());
        assert_eq!(body.ended(), Some(End::Abandoned));

        let hung = GrowingBody::new();
        let stall = Duration::from_millis(30);
        let mut reader = Box::pin(hung.reader(stall));
        assert_eq!(reader.next().await.unwrap().unwrap_err(), ReadError::Stalled(stall));
    }
}
