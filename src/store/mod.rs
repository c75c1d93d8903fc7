//! The in-memory segment store: every stream's current manifests (the MPDs and the HLS
//! playlists) and the bytes of its init
//! and media segments, addressed exactly as the URL paths address them. The packager writes
//! (objects first, then the manifest that names them); HTTP handlers only read. Each stream
//! has its own lock: one stream's writes never wait on another's, and the map's own lock
//! is held only to find or add a stream. Each stream counts the bytes it holds: the
//! packager keeps that under `package.max_stream_bytes` by dropping the oldest segments of
//! its DVR window (the store itself holds whatever it is given and never chooses).
//!
//! A reader may wait for the **next** media segment of a rendition, the one after the
//! newest stored ([`Store::object_or_next`]): players that derive segment numbers from the
//! clock, or read faster than real time, ask for it just before it is written. Each stream
//! wakes its waiters when an object arrives (a `Notify`, outside the lock); a waiter holds
//! no lock and nothing another reader needs, and gives up at its deadline. Anything
//! further ahead is answered "missing" at once, so no client can park requests on future
//! numbers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::media::{RenditionId, SessionId, StreamId};

/// Which object of a rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Init,
    Media(u64),
}

/// Address of one immutable object inside a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub rendition: RenditionId,
    pub session: SessionId,
    pub part: Part,
}

/// The two forms of a live stream's manifest, each at its own path. They list the same
/// segments under the same URLs; see the package module for which player needs which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestForm {
    /// `manifest.mpd`: a SegmentTimeline of the real segment times.
    Timeline,
    /// `manifest-number.mpd`: SegmentTemplate@duration and `$Number$`, no timeline.
    Number,
}

impl ManifestForm {
    pub const ALL: [ManifestForm; 2] = [ManifestForm::Timeline, ManifestForm::Number];

    pub fn file_name(self) -> &'static str {
        match self {
            ManifestForm::Timeline => "manifest.mpd",
            ManifestForm::Number => "manifest-number.mpd",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An HLS playlist of a live stream (rendered by `package::hls` from the same timeline as
/// the MPDs, naming the same segment objects).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Playlist {
    /// `master.m3u8`: the renditions and their media playlists.
    Multivariant,
    /// `{rendition}/media.m3u8`: one rendition's segments.
    Media(RenditionId),
}

impl Playlist {
    /// The multivariant playlist's file name, under `/live/{stream}/`.
    pub const MULTIVARIANT_FILE: &'static str = "master.m3u8";
    /// A media playlist's file name, under `/live/{stream}/{rendition}/`.
    pub const MEDIA_FILE: &'static str = "media.m3u8";

    /// The playlist's path under `/live/{stream}/` (the multivariant names the media
    /// playlists by it).
    pub fn relative_path(&self) -> String {
        match self {
            Playlist::Multivariant => Self::MULTIVARIANT_FILE.to_owned(),
            Playlist::Media(rendition) => format!("{rendition}/{}", Self::MEDIA_FILE),
        }
    }
}

/// What `GET /live` shows of a stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StreamSummary {
    pub stream: StreamId,
    pub live: bool,
    /// The newest publish session.
    pub session: Option<SessionId>,
    pub renditions: Vec<RenditionId>,
}

#[derive(Default)]
struct StreamObjects {
    manifests: [Option<Bytes>; 2],
    /// The stream's HLS playlists: the multivariant and one per rendition in the timeline.
    playlists: HashMap<Playlist, Bytes>,
    summary: Option<StreamSummary>,
    objects: HashMap<ObjectKey, Bytes>,
    /// The bytes of every object in `objects`.
    bytes: u64,
    /// The newest media segment number stored of each (session, rendition).
    newest: HashMap<(SessionId, RenditionId), u64>,
}

impl StreamObjects {
    fn remove(&mut self, key: &ObjectKey) {
        if let Some(gone) = self.objects.remove(key) {
            self.bytes -= gone.len() as u64;
        }
    }

    /// Whether `key` is the media segment right after the newest stored of its rendition.
    fn is_next(&self, key: &ObjectKey) -> bool {
        let Part::Media(number) = key.part else { return false };
        self.newest.get(&(key.session.clone(), key.rendition.clone())).is_some_and(|newest| newest.checked_add(1) == Some(number))
    }
}

#[derive(Default)]
struct StreamEntry {
    objects: RwLock<StreamObjects>,
    /// Woken whenever an object of the stream is stored.
    arrived: Notify,
}

/// What [`Store::object_or_next`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Bytes),
    /// The stream exists; the object does not (or did not arrive in time).
    Missing,
    UnknownStream,
}

#[derive(Default)]
pub struct Store {
    streams: RwLock<HashMap<StreamId, Arc<StreamEntry>>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream's entry, created when missing.
    fn entry(&self, stream: &StreamId) -> Arc<StreamEntry> {
        if let Some(entry) = self.streams.read().get(stream) {
            return Arc::clone(entry);
        }
        Arc::clone(self.streams.write().entry(stream.clone()).or_default())
    }

    fn existing(&self, stream: &StreamId) -> Option<Arc<StreamEntry>> {
        self.streams.read().get(stream).cloned()
    }

    pub fn put_object(&self, stream: &StreamId, key: ObjectKey, bytes: Bytes) {
        let entry = self.entry(stream);
        {
            let mut objects = entry.objects.write();
            objects.bytes += bytes.len() as u64;
            if let Part::Media(number) = key.part {
                let newest = objects.newest.entry((key.session.clone(), key.rendition.clone())).or_insert(number);
                *newest = (*newest).max(number);
            }
            if let Some(replaced) = objects.objects.insert(key, bytes) {
                objects.bytes -= replaced.len() as u64;
            }
        }
        entry.arrived.notify_waiters();
    }

    /// Removes a media object, or every object of a (session, rendition) when `part` is None.
    pub fn remove_objects(&self, stream: &StreamId, session: &SessionId, rendition: &RenditionId, part: Option<Part>) {
        let Some(entry) = self.existing(stream) else { return };
        let mut entry = entry.objects.write();
        match part {
            Some(part) => entry.remove(&ObjectKey { rendition: rendition.clone(), session: session.clone(), part }),
            None => {
                let gone: Vec<ObjectKey> = entry.objects.keys().filter(|k| &k.session == session && &k.rendition == rendition).cloned().collect();
                for key in &gone {
                    entry.remove(key);
                }
                entry.newest.remove(&(session.clone(), rendition.clone()));
            }
        }
    }

    /// The bytes of every object the stream holds (init and media segments).
    pub fn stream_bytes(&self, stream: &StreamId) -> u64 {
        self.existing(stream).map_or(0, |e| e.objects.read().bytes)
    }

    /// Replaces the stream's manifests, one per [`ManifestForm`] (in `ManifestForm::ALL`
    /// order), its HLS playlists and its summary.
    pub fn set_manifests(&self, stream: &StreamId, manifests: [Option<Bytes>; 2], playlists: HashMap<Playlist, Bytes>, summary: StreamSummary) {
        let entry = self.entry(stream);
        let mut entry = entry.objects.write();
        entry.manifests = manifests;
        entry.playlists = playlists;
        entry.summary = Some(summary);
    }

    pub fn remove_stream(&self, stream: &StreamId) {
        self.streams.write().remove(stream);
    }

    pub fn manifest(&self, stream: &StreamId, form: ManifestForm) -> Option<Bytes> {
        self.existing(stream)?.objects.read().manifests[form.index()].clone()
    }

    pub fn playlist(&self, stream: &StreamId, playlist: &Playlist) -> Option<Bytes> {
        self.existing(stream)?.objects.read().playlists.get(playlist).cloned()
    }

    pub fn object(&self, stream: &StreamId, key: &ObjectKey) -> Option<Bytes> {
        self.existing(stream)?.objects.read().objects.get(key).cloned()
    }

    /// The object, or, when it is the next media segment of its rendition (see the module
    /// header), the object once it arrives within `wait`.
    pub async fn object_or_next(&self, stream: &StreamId, key: &ObjectKey, wait: std::time::Duration) -> Lookup {
        let Some(entry) = self.existing(stream) else { return Lookup::UnknownStream };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so an object stored in between still wakes it.
            let arrived = entry.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let objects = entry.objects.read();
                if let Some(bytes) = objects.objects.get(key) {
                    return Lookup::Found(bytes.clone());
                }
                if !objects.is_next(key) {
                    return Lookup::Missing;
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Lookup::Missing;
            }
        }
    }

    /// The keys of every object the stream holds.
    pub fn object_keys(&self, stream: &StreamId) -> Vec<ObjectKey> {
        self.existing(stream).map(|e| e.objects.read().objects.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn contains_stream(&self, stream: &StreamId) -> bool {
        self.streams.read().contains_key(stream)
    }

    pub fn streams(&self) -> Vec<StreamSummary> {
        let entries: Vec<_> = self.streams.read().values().cloned().collect();
        let mut list: Vec<_> = entries.iter().filter_map(|s| s.objects.read().summary.clone()).collect();
        list.sort_by(|a, b| a.stream.cmp(&b.stream));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_counts_the_bytes_it_holds() {
        let store = Store::new();
        let (cam, other) = (StreamId::parse("cam").unwrap(), StreamId::parse("other").unwrap());
        let (s, r) = (SessionId::parse("s1").unwrap(), RenditionId::parse("720p").unwrap());
        let key = |part| ObjectKey { rendition: r.clone(), session: s.clone(), part };
        store.put_object(&cam, key(Part::Init), Bytes::from(vec![0; 100]));
        for n in 1..=3 {
            store.put_object(&cam, key(Part::Media(n)), Bytes::from(vec![0; 1000]));
        }
        store.put_object(&other, key(Part::Media(1)), Bytes::from(vec![0; 7]));
        assert_eq!((store.stream_bytes(&cam), store.stream_bytes(&other)), (3100, 7));
        // Replacing an object counts the new one only.
        store.put_object(&cam, key(Part::Media(3)), Bytes::from(vec![0; 10]));
        assert_eq!(store.stream_bytes(&cam), 2110);
        store.remove_objects(&cam, &s, &r, Some(Part::Media(1)));
        store.remove_objects(&cam, &s, &r, Some(Part::Media(1)));
        assert_eq!(store.stream_bytes(&cam), 1110);
        store.remove_objects(&cam, &s, &r, None);
        assert_eq!(store.stream_bytes(&cam), 0);
        assert_eq!(store.stream_bytes(&StreamId::parse("nobody").unwrap()), 0);
    }

    #[tokio::test]
    async fn only_the_next_segment_is_waited_for() {
        let store = Arc::new(Store::new());
        let cam = StreamId::parse("cam").unwrap();
        let (s, r) = (SessionId::parse("s1").unwrap(), RenditionId::parse("720p").unwrap());
        let key = |part| ObjectKey { rendition: r.clone(), session: s.clone(), part };
        let wait = std::time::Duration::from_secs(5);
        let nobody = StreamId::parse("nobody").unwrap();
        assert_eq!(store.object_or_next(&nobody, &key(Part::Media(1)), wait).await, Lookup::UnknownStream);
        store.put_object(&cam, key(Part::Init), Bytes::from_static(b"init"));
        // No media yet: nothing is "next", so nothing waits.
        assert_eq!(store.object_or_next(&cam, &key(Part::Media(1)), wait).await, Lookup::Missing);
        store.put_object(&cam, key(Part::Media(7)), Bytes::from_static(b"seven"));
        assert_eq!(store.object_or_next(&cam, &key(Part::Media(7)), wait).await, Lookup::Found(Bytes::from_static(b"seven")));

        // Two ahead, another session or the init segment: answered at once.
        let started = tokio::time::Instant::now();
        assert_eq!(store.object_or_next(&cam, &key(Part::Media(9)), wait).await, Lookup::Missing);
        let other = ObjectKey { rendition: r.clone(), session: SessionId::parse("s2").unwrap(), part: Part::Media(8) };
        assert_eq!(store.object_or_next(&cam, &other, wait).await, Lookup::Missing);
        assert!(started.elapsed() < wait, "none of them waited");

        // The next one waits and gets the segment when it is stored.
        let waiter = tokio::spawn({
            let (store, cam, eight) = (Arc::clone(&store), cam.clone(), key(Part::Media(8)));
            async move { store.object_or_next(&cam, &eight, wait).await }
        });
        tokio::task::yield_now().await;
        store.put_object(&cam, key(Part::Media(8)), Bytes::from_static(b"eight"));
        assert_eq!(waiter.await.unwrap(), Lookup::Found(Bytes::from_static(b"eight")));

        // Not stored within the wait: missing.
        assert_eq!(store.object_or_next(&cam, &key(Part::Media(9)), std::time::Duration::from_millis(50)).await, Lookup::Missing);
        // The rendition's objects removed: nothing is next any more.
        store.remove_objects(&cam, &s, &r, None);
        assert_eq!(store.object_or_next(&cam, &key(Part::Media(9)), wait).await, Lookup::Missing);
    }
}
