//! The in-memory segment store: every stream's current manifests (the MPDs and the HLS
//! playlists) and the bytes of its init
//! and media segments, addressed exactly as the URL paths address them. The packager writes
//! (objects first, then the manifest that names them); HTTP handlers only read. Each stream
//! has its own lock: one stream's writes never wait on another's, and the map's own lock
//! is held only to find or add a stream. Each stream counts the bytes it holds: the
//! packager keeps that under `package.max_stream_bytes` by dropping the oldest segments of
//! its DVR window (the store itself holds whatever it is given and never chooses).

pub mod growing;

pub use growing::GrowingBody;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

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
}

impl StreamObjects {
    fn remove(&mut self, key: &ObjectKey) {
        if let Some(gone) = self.objects.remove(key) {
            self.bytes -= gone.len() as u64;
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

    pub fn put_object(&self, stream: &StreamId, key: ObjectKey, bytes: Bytes) {
        let entry = self.entry(stream);
        let mut entry = entry.write();
        entry.bytes += bytes.len() as u64;
        if let Some(replaced) = entry.objects.insert(key, bytes) {
            entry.bytes -= replaced.len() as u64;
        }
    }

    /// Removes a media object, or every object of a (session, rendition) when `part` is None.
    pub fn remove_objects(&self, stream: &StreamId, session: &SessionId, rendition: &RenditionId, part: Option<Part>) {
        let Some(entry) = self.existing(stream) else { return };
        let mut entry = entry.write();
        match part {
            Some(part) => entry.remove(&ObjectKey { rendition: rendition.clone(), session: session.clone(), part }),
            None => {
                let gone: Vec<ObjectKey> = entry.objects.keys().filter(|k| &k.session == session && &k.rendition == rendition).cloned().collect();
                for key in &gone {
                    entry.remove(key);
                }
            }
        }
    }

    /// The bytes of every object the stream holds (init and media segments).
    pub fn stream_bytes(&self, stream: &StreamId) -> u64 {
        self.existing(stream).map_or(0, |e| e.read().bytes)
    }

    /// Replaces the stream's manifests, one per [`ManifestForm`] (in `ManifestForm::ALL`
    /// order), its HLS playlists and its summary.
    pub fn set_manifests(&self, stream: &StreamId, manifests: [Option<Bytes>; 2], playlists: HashMap<Playlist, Bytes>, summary: StreamSummary) {
        let entry = self.entry(stream);
        let mut entry = entry.write();
        entry.manifests = manifests;
        entry.playlists = playlists;
        entry.summary = Some(summary);
    }

    pub fn remove_stream(&self, stream: &StreamId) {
        self.streams.write().remove(stream);
    }

    pub fn manifest(&self, stream: &StreamId, form: ManifestForm) -> Option<Bytes> {
        self.existing(stream)?.read().manifests[form.index()].clone()
    }

    pub fn playlist(&self, stream: &StreamId, playlist: &Playlist) -> Option<Bytes> {
        self.existing(stream)?.read().playlists.get(playlist).cloned()
    }

    pub fn object(&self, stream: &StreamId, key: &ObjectKey) -> Option<Bytes> {
        self.existing(stream)?.read().objects.get(key).cloned()
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
}
