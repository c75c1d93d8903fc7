//! The in-memory segment store: every stream's current manifests (the MPDs and the HLS
//! playlists) and the bytes of its init
//! and media segments, addressed exactly as the URL paths address them. The packager writes
//! (objects first, then the manifest that names them); HTTP handlers only read. Each stream
//! has its own lock: one stream's writes never wait on another's, and the map's own lock
//! is held only to find or add a stream. Each stream counts the bytes it holds: the
//! packager keeps that under `package.max_stream_bytes` by dropping the oldest segments of
//! its DVR window (the store itself holds whatever it is given and never chooses).
//!
//! A segment still being encoded (low latency) is a [`GrowingBody`] under the key it will
//! have once complete: the packager appends each chunk as the muxer cuts it, and
//! [`Store::put_object`] replaces it with the complete bytes and seals it, so a reader that
//! started on the growing body finishes with the same bytes a later reader gets whole. A
//! growing body is bounded by the muxer's fragment cap, not counted in the stream's bytes,
//! and abandoned (its readers cut off) when its session ends or its rendition is evicted.
//!
//! A reader may wait for the **next** media segment of a rendition, the one after the
//! newest the store has, growing or complete ([`Store::object_or_next`]): players that
//! derive segment numbers from the clock, or read faster than real time, ask for it just
//! before its first chunk exists. Each stream wakes its waiters when a segment appears (a
//! `Notify`, outside the lock); a waiter holds no lock and nothing another reader needs,
//! and gives up at its deadline. Anything further ahead is answered "missing" at once, so
//! no client can park requests on future numbers.
//!
//! Media playlists are kept with their [`PlaylistPosition`] (the newest segment and part
//! they list), so that an LL-HLS blocking reload ([`Store::playlist_when`]) waits for the
//! one that holds what it asked for: each stream wakes its playlist waiters whenever the
//! packager publishes (a second `Notify`, outside the lock), and a waiter holds no lock
//! and gives up at its deadline. A request more than two segments ahead is refused at
//! once (RFC 8216bis 6.2.5.2), so no client can park requests far ahead either.

pub mod growing;

pub use growing::GrowingBody;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::media::{RenditionId, SessionId, StreamId};

/// Which object of a rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Part {
    Init,
    Media(u64),
}

/// Address of one immutable object inside a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ObjectKey {
    pub rendition: RenditionId,
    pub session: SessionId,
    pub part: Part,
}

/// The three forms of a live stream's manifest, each at its own path. They name the same
/// segments under the same URLs; see the package module for which player needs which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestForm {
    /// `manifest.mpd`: a SegmentTimeline of the real segment times.
    Timeline,
    /// `manifest-number.mpd`: SegmentTemplate@duration and `$Number$`, no timeline.
    Number,
    /// `manifest-ll.mpd`: low-latency DASH, segments fetched while they are encoded (the
    /// Timeline form's document when `package.low_latency` is off).
    LowLatency,
}

impl ManifestForm {
    pub const ALL: [ManifestForm; 3] = [ManifestForm::Timeline, ManifestForm::Number, ManifestForm::LowLatency];

    pub fn file_name(self) -> &'static str {
        match self {
            ManifestForm::Timeline => "manifest.mpd",
            ManifestForm::Number => "manifest-number.mpd",
            ManifestForm::LowLatency => "manifest-ll.mpd",
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

/// What a media playlist lists at its live edge, in its own numbering (media sequence
/// numbers and part indexes): what a blocking reload waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaylistPosition {
    /// The media sequence number of the last complete segment listed.
    pub last_msn: u64,
    /// Parts listed of the segment after it (being encoded; 0 when none is listed).
    pub next_parts: u64,
    /// `EXT-X-ENDLIST`: nothing more will be listed.
    pub ended: bool,
    /// `EXT-X-TARGETDURATION` (a blocking reload waits at most three).
    pub target_duration: std::time::Duration,
    /// `EXT-X-PART-INF:PART-TARGET`, with low latency.
    pub part_target: Option<std::time::Duration>,
}

impl PlaylistPosition {
    /// Whether the playlist holds segment `msn` (complete), or part `part` of it, or
    /// anything later (RFC 8216bis 6.2.5.2).
    pub fn holds(&self, msn: u64, part: Option<u64>) -> bool {
        if self.ended || self.last_msn >= msn {
            return true;
        }
        part.is_some_and(|part| self.last_msn.checked_add(1) == Some(msn) && self.next_parts > part)
    }
}

/// A rendered playlist: its text, and for a media playlist what it lists at its live edge
/// and its delta update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaylistText {
    pub text: Bytes,
    pub position: Option<PlaylistPosition>,
    /// The same playlist with its older segments skipped (`EXT-X-SKIP`), for a request with
    /// `_HLS_skip=YES`; `None` when it skips none (the full text answers then).
    pub delta: Option<Bytes>,
}


/// What [`Store::playlist_when`] found.
#[derive(Debug, Clone)]
pub enum PlaylistLookup {
    Found(PlaylistText),
    /// The request is more than two segments past the playlist's last (answer 400).
    TooFar,
    /// Not there within three target durations (answer 503).
    TimedOut,
    /// The stream exists; the playlist does not.
    Missing,
    UnknownStream,
}

/// An object as the store holds it.
#[derive(Debug, Clone)]
pub enum Stored {
    Complete(Bytes),
    /// A segment being encoded: read it as it grows.
    Growing(Arc<GrowingBody>),
}

/// What [`Store::object_or_next`] found.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Stored),
    /// The stream exists; the object does not (or did not appear in time).
    Missing,
    UnknownStream,
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
    manifests: [Option<Bytes>; 3],
    /// The stream's HLS playlists: the multivariant and one per rendition in the timeline.
    playlists: HashMap<Playlist, PlaylistText>,
    /// Woken whenever the packager publishes the stream's playlists.
    published: Arc<Notify>,
    summary: Option<StreamSummary>,
    objects: HashMap<ObjectKey, Bytes>,
    /// The bytes of every object in `objects`.
    bytes: u64,
    /// Segments being encoded, each under the key it will have once complete.
    growing: HashMap<ObjectKey, Arc<GrowingBody>>,
    /// The newest media segment number of each (session, rendition), growing or complete.
    newest: HashMap<(SessionId, RenditionId), u64>,
    /// Woken whenever a media segment of the stream appears.
    arrived: Arc<Notify>,
}

impl StreamObjects {
    fn lookup(&self, key: &ObjectKey) -> Option<Stored> {
        match self.objects.get(key) {
            Some(bytes) => Some(Stored::Complete(bytes.clone())),
            None => self.growing.get(key).cloned().map(Stored::Growing),
        }
    }

    /// A media segment appeared under `key`: the newest of its rendition, maybe.
    fn appeared(&mut self, key: &ObjectKey) {
        let Part::Media(number) = key.part else { return };
        let newest = self.newest.entry((key.session.clone(), key.rendition.clone())).or_insert(number);
        *newest = (*newest).max(number);
        self.arrived.notify_waiters();
    }

    /// Whether `key` is the media segment right after the newest of its rendition.
    fn is_next(&self, key: &ObjectKey) -> bool {
        let Part::Media(number) = key.part else { return false };
        self.newest.get(&(key.session.clone(), key.rendition.clone())).is_some_and(|newest| newest.checked_add(1) == Some(number))
    }

    fn remove(&mut self, key: &ObjectKey) {
        if let Some(gone) = self.objects.remove(key) {
            self.bytes -= gone.len() as u64;
        }
        if let Some(gone) = self.growing.remove(key) {
            gone.abandon();
        }
    }
}

impl Drop for StreamObjects {
    fn drop(&mut self) {
        for body in self.growing.values() {
            body.abandon();
        }
    }
}

#[derive(Default)]
pub struct Store {
    streams: RwLock<HashMap<StreamId, Arc<RwLock<StreamObjects>>>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream's entry, created when missing.
    fn entry(&self, stream: &StreamId) -> Arc<RwLock<StreamObjects>> {
        if let Some(entry) = self.streams.read().get(stream) {
            return Arc::clone(entry);
        }
        Arc::clone(self.streams.write().entry(stream.clone()).or_default())
    }

    fn existing(&self, stream: &StreamId) -> Option<Arc<RwLock<StreamObjects>>> {
        self.streams.read().get(stream).cloned()
    }

    /// Stores a complete object; a growing body under its key is sealed and replaced.
    pub fn put_object(&self, stream: &StreamId, key: ObjectKey, bytes: Bytes) {
        let entry = self.entry(stream);
        let mut entry = entry.write();
        entry.bytes += bytes.len() as u64;
        if let Some(growing) = entry.growing.remove(&key) {
            growing.seal();
        }
        entry.appeared(&key);
        if let Some(replaced) = entry.objects.insert(key, bytes) {
            entry.bytes -= replaced.len() as u64;
        }
    }

    /// Appends a chunk to the segment being encoded under `key`, which starts growing with
    /// its first chunk.
    pub fn append_chunk(&self, stream: &StreamId, key: ObjectKey, chunk: Bytes) {
        let entry = self.entry(stream);
        let mut entry = entry.write();
        if let Some(body) = entry.growing.get(&key) {
            body.push(chunk);
            return;
        }
        let body = GrowingBody::new();
        body.push(chunk);
        entry.appeared(&key);
        entry.growing.insert(key, body);
    }

    /// Completes the segment growing under `key` with the chunks it has (its session ended
    /// before the muxer cut the rest): stored whole, its readers end as after a seal.
    pub fn complete_growing(&self, stream: &StreamId, key: ObjectKey) {
        let Some(entry) = self.existing(stream) else { return };
        let body = entry.read().growing.get(&key).cloned();
        if let Some(body) = body {
            self.put_object(stream, key, body.concat());
        }
    }

    /// Abandons the growing segments of the sessions `ended` picks (a session that ended,
    /// or was replaced, will not complete them).
    pub fn abandon_growing(&self, stream: &StreamId, ended: impl Fn(&SessionId) -> bool) {
        let Some(entry) = self.existing(stream) else { return };
        entry.write().growing.retain(|key, body| {
            let abandoned = ended(&key.session);
            if abandoned {
                body.abandon();
            }
            !abandoned
        });
    }

    /// Removes a media object, or every object of a (session, rendition) when `part` is None.
    pub fn remove_objects(&self, stream: &StreamId, session: &SessionId, rendition: &RenditionId, part: Option<Part>) {
        let Some(entry) = self.existing(stream) else { return };
        let mut entry = entry.write();
        match part {
            Some(part) => entry.remove(&ObjectKey { rendition: rendition.clone(), session: session.clone(), part }),
            None => {
                let gone: Vec<ObjectKey> =
                    entry.objects.keys().chain(entry.growing.keys()).filter(|k| &k.session == session && &k.rendition == rendition).cloned().collect();
                for key in &gone {
                    entry.remove(key);
                }
                entry.newest.remove(&(session.clone(), rendition.clone()));
            }
        }
    }

    /// The bytes of every object the stream holds (init and media segments).
    pub fn stream_bytes(&self, stream: &StreamId) -> u64 {
        self.existing(stream).map_or(0, |e| e.read().bytes)
    }

    /// Replaces the stream's manifests, one per [`ManifestForm`] (in `ManifestForm::ALL`
    /// order), its HLS playlists and its summary.
    pub fn set_manifests(&self, stream: &StreamId, manifests: [Option<Bytes>; 3], playlists: HashMap<Playlist, PlaylistText>, summary: StreamSummary) {
        let entry = self.entry(stream);
        let mut entry = entry.write();
        entry.manifests = manifests;
        entry.playlists = playlists;
        entry.summary = Some(summary);
        entry.published.notify_waiters();
    }

    /// Replaces the stream's HLS playlists only (a part was added; the MPDs are unchanged).
    pub fn set_playlists(&self, stream: &StreamId, playlists: HashMap<Playlist, PlaylistText>) {
        let entry = self.entry(stream);
        let mut entry = entry.write();
        entry.playlists = playlists;
        entry.published.notify_waiters();
    }

    pub fn remove_stream(&self, stream: &StreamId) {
        self.streams.write().remove(stream);
    }

    pub fn manifest(&self, stream: &StreamId, form: ManifestForm) -> Option<Bytes> {
        self.existing(stream)?.read().manifests[form.index()].clone()
    }

    /// The manifest of a stream this node has, waiting up to `wait` for it to be rendered:
    /// `None` when the stream is unknown or it did not come.
    pub async fn manifest_within(&self, stream: &StreamId, form: ManifestForm, wait: std::time::Duration) -> Option<Bytes> {
        self.rendered_within(stream, wait, |objects| objects.manifests[form.index()].clone()).await
    }

    pub fn playlist(&self, stream: &StreamId, playlist: &Playlist) -> Option<PlaylistText> {
        self.existing(stream)?.read().playlists.get(playlist).cloned()
    }

    /// The playlist of a stream this node has, waiting up to `wait` for it to be rendered:
    /// `None` when the stream is unknown or it did not come.
    pub async fn playlist_within(&self, stream: &StreamId, playlist: &Playlist, wait: std::time::Duration) -> Option<PlaylistText> {
        self.rendered_within(stream, wait, |objects| objects.playlists.get(playlist).cloned()).await
    }

    /// What `read` finds of a stream this node has, waiting up to `wait` for a rendering
    /// that has it. A starting stream gets its manifests and playlists only once it has a
    /// complete segment, the low-latency MPD a second later (the mpd module), and a player
    /// that asks earlier (one that opened the stream as it started) gets them a moment
    /// later instead of a 404, which hls.js does not retry.
    async fn rendered_within<T>(&self, stream: &StreamId, wait: std::time::Duration, read: impl Fn(&StreamObjects) -> Option<T>) -> Option<T> {
        let entry = self.existing(stream)?;
        let published = Arc::clone(&entry.read().published);
        let deadline = tokio::time::Instant::now() + wait;
        decided_by(&published, deadline, || read(&entry.read())).await
    }

    /// A blocking reload (module header): the playlist once it holds segment `msn` (part
    /// `part` of it) or later, waiting up to three of its target durations.
    pub async fn playlist_when(&self, stream: &StreamId, playlist: &Playlist, msn: u64, part: Option<u64>) -> PlaylistLookup {
        let Some(entry) = self.existing(stream) else { return PlaylistLookup::UnknownStream };
        let (published, wait) = {
            let objects = entry.read();
            let Some(found) = objects.playlists.get(playlist) else { return PlaylistLookup::Missing };
            (Arc::clone(&objects.published), found.position.map_or(std::time::Duration::ZERO, |p| p.target_duration * 3))
        };
        let deadline = tokio::time::Instant::now() + wait;
        let decided = decided_by(&published, deadline, || {
            let objects = entry.read();
            let Some(found) = objects.playlists.get(playlist) else { return Some(PlaylistLookup::Missing) };
            match found.position {
                Some(position) if !position.holds(msn, part) => (msn > position.last_msn.saturating_add(2)).then_some(PlaylistLookup::TooFar),
                _ => Some(PlaylistLookup::Found(found.clone())),
            }
        });
        decided.await.unwrap_or(PlaylistLookup::TimedOut)
    }

    /// A complete object.
    pub fn object(&self, stream: &StreamId, key: &ObjectKey) -> Option<Bytes> {
        self.existing(stream)?.read().objects.get(key).cloned()
    }

    /// A complete object, else a segment being encoded under that key; the next media
    /// segment of a rendition (module header) is waited for, up to `wait`.
    pub async fn object_or_next(&self, stream: &StreamId, key: &ObjectKey, wait: std::time::Duration) -> Lookup {
        let Some(entry) = self.existing(stream) else { return Lookup::UnknownStream };
        let deadline = tokio::time::Instant::now() + wait;
        let arrived = Arc::clone(&entry.read().arrived);
        let decided = decided_by(&arrived, deadline, || {
            let objects = entry.read();
            match objects.lookup(key) {
                Some(found) => Some(Lookup::Found(found)),
                None => (!objects.is_next(key)).then_some(Lookup::Missing),
            }
        });
        decided.await.unwrap_or(Lookup::Missing)
    }

    /// The keys of every object the stream holds.
    pub fn object_keys(&self, stream: &StreamId) -> Vec<ObjectKey> {
        self.existing(stream).map(|e| e.read().objects.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn contains_stream(&self, stream: &StreamId) -> bool {
        self.streams.read().contains_key(stream)
    }

    pub fn streams(&self) -> Vec<StreamSummary> {
        let entries: Vec<_> = self.streams.read().values().cloned().collect();
        let mut list: Vec<_> = entries.iter().filter_map(|s| s.read().summary.clone()).collect();
        list.sort_by(|a, b| a.stream.cmp(&b.stream));
        list
    }
}

/// Runs `check` now and again each time `signal` is notified, until it decides (`Some`) or
/// `deadline` passes (`None`). The notification is registered before each check, so a
/// change between the check and the wait still wakes it.
async fn decided_by<T>(signal: &Notify, deadline: tokio::time::Instant, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        let changed = signal.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(decided) = check() {
            return Some(decided);
        }
        tokio::time::timeout_at(deadline, changed).await.ok()?;
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
    async fn only_the_next_segment_of_a_rendition_is_waited_for() {
        let store = Arc::new(Store::new());
        let (cam, nobody) = (StreamId::parse("cam").unwrap(), StreamId::parse("nobody").unwrap());
        let key = |part| ObjectKey { rendition: RenditionId::parse("720p").unwrap(), session: SessionId::parse("s1").unwrap(), part };
        let wait = std::time::Duration::from_secs(5);
        assert!(matches!(store.object_or_next(&nobody, &key(Part::Media(1)), wait).await, Lookup::UnknownStream));
        store.put_object(&cam, key(Part::Init), Bytes::from_static(b"init"));
        // No media yet: nothing is "next", so nothing waits.
        assert!(matches!(store.object_or_next(&cam, &key(Part::Media(1)), wait).await, Lookup::Missing));
        store.put_object(&cam, key(Part::Media(7)), Bytes::from_static(b"seven"));
        assert!(matches!(store.object_or_next(&cam, &key(Part::Media(7)), wait).await, Lookup::Found(Stored::Complete(_))));
        // Two ahead: refused at once.
        let started = std::time::Instant::now();
        assert!(matches!(store.object_or_next(&cam, &key(Part::Media(9)), wait).await, Lookup::Missing));
        assert!(started.elapsed() < wait);
        // The next one waits for its first chunk.
        let writer = Arc::clone(&store);
        let (c, k) = (cam.clone(), key(Part::Media(8)));
        let first_chunk = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            writer.append_chunk(&c, k, Bytes::from_static(b"chunk"));
        });
        assert!(matches!(store.object_or_next(&cam, &key(Part::Media(8)), wait).await, Lookup::Found(Stored::Growing(_))));
        first_chunk.await.unwrap();
        // And gives up at its deadline.
        assert!(matches!(store.object_or_next(&cam, &key(Part::Media(9)), std::time::Duration::from_millis(20)).await, Lookup::Missing));
    }

    /// What the store holds under `key`, growing or complete, without waiting.
    fn stored(store: &Store, stream: &StreamId, key: &ObjectKey) -> Option<Stored> {
        store.existing(stream)?.read().lookup(key)
    }

    #[test]
    fn a_growing_segment_is_sealed_when_stored_whole_and_abandoned_with_its_session() {
        let store = Store::new();
        let cam = StreamId::parse("cam").unwrap();
        let (old, new) = (SessionId::parse("s1").unwrap(), SessionId::parse("s2").unwrap());
        let key = |session: &SessionId, n| ObjectKey { rendition: RenditionId::parse("720p").unwrap(), session: session.clone(), part: Part::Media(n) };
        store.append_chunk(&cam, key(&old, 4), Bytes::from_static(b"moof1"));
        store.append_chunk(&cam, key(&old, 4), Bytes::from_static(b"moof2"));
        let Some(Stored::Growing(body)) = stored(&store, &cam, &key(&old, 4)) else { panic!("not growing") };
        assert_eq!((body.concat(), store.object(&cam, &key(&old, 4)), store.stream_bytes(&cam)), (Bytes::from_static(b"moof1moof2"), None, 0));
        store.put_object(&cam, key(&old, 4), body.concat());
        assert_eq!(body.ended(), Some(growing::End::Sealed));
        assert!(matches!(stored(&store, &cam, &key(&old, 4)), Some(Stored::Complete(b)) if b == "moof1moof2"));
        // The next segments of both sessions grow; the old session ends.
        store.append_chunk(&cam, key(&old, 5), Bytes::from_static(b"x"));
        store.append_chunk(&cam, key(&new, 1), Bytes::from_static(b"y"));
        let Some(Stored::Growing(left)) = stored(&store, &cam, &key(&old, 5)) else { panic!() };
        store.abandon_growing(&cam, |session| session != &new);
        assert_eq!(left.ended(), Some(growing::End::Abandoned));
        assert!(stored(&store, &cam, &key(&old, 5)).is_none());
        let Some(Stored::Growing(current)) = stored(&store, &cam, &key(&new, 1)) else { panic!() };
        store.remove_stream(&cam);
        assert_eq!(current.ended(), Some(growing::End::Abandoned), "a removed stream cuts its readers off");
    }
}
