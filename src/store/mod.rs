//! The in-memory segment store: every stream's current manifest and the bytes of its init
//! and media segments, addressed exactly as the URL paths address them. The packager writes
//! (objects first, then the manifest that names them); HTTP handlers only read.

use std::collections::HashMap;

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
    manifest: Option<Bytes>,
    summary: Option<StreamSummary>,
    objects: HashMap<ObjectKey, Bytes>,
}

#[derive(Default)]
pub struct Store {
    streams: RwLock<HashMap<StreamId, StreamObjects>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put_object(&self, stream: &StreamId, key: ObjectKey, bytes: Bytes) {
        self.streams.write().entry(stream.clone()).or_default().objects.insert(key, bytes);
    }

    /// Removes a media object, or every object of a (session, rendition) when `part` is None.
    pub fn remove_objects(&self, stream: &StreamId, session: &SessionId, rendition: &RenditionId, part: Option<Part>) {
        let mut streams = self.streams.write();
        let Some(entry) = streams.get_mut(stream) else { return };
        match part {
            Some(part) => {
                entry.objects.remove(&ObjectKey { rendition: rendition.clone(), session: session.clone(), part });
            }
            None => entry.objects.retain(|k, _| !(&k.session == session && &k.rendition == rendition)),
        }
    }

    pub fn set_manifest(&self, stream: &StreamId, manifest: Option<Bytes>, summary: StreamSummary) {
        let mut streams = self.streams.write();
        let entry = streams.entry(stream.clone()).or_default();
        entry.manifest = manifest;
        entry.summary = Some(summary);
    }

    pub fn remove_stream(&self, stream: &StreamId) {
        self.streams.write().remove(stream);
    }

    pub fn manifest(&self, stream: &StreamId) -> Option<Bytes> {
        self.streams.read().get(stream)?.manifest.clone()
    }

    pub fn object(&self, stream: &StreamId, key: &ObjectKey) -> Option<Bytes> {
        self.streams.read().get(stream)?.objects.get(key).cloned()
    }

    pub fn contains_stream(&self, stream: &StreamId) -> bool {
        self.streams.read().contains_key(stream)
    }

    pub fn streams(&self) -> Vec<StreamSummary> {
        let mut list: Vec<_> = self.streams.read().values().filter_map(|s| s.summary.clone()).collect();
        list.sort_by(|a, b| a.stream.cmp(&b.stream));
        list
    }
}
