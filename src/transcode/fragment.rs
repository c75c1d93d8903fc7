//! Reassembles cmafmux output into whole objects. cmafmux pushes an init segment (a buffer
//! flagged HEADER|DISCONT, once), then for every fragment a header buffer (HEADER without
//! DELTA_UNIT: its pts/duration are the fragment's timing) followed by sample data, the last
//! buffer flagged MARKER. Pure: it sees flags and bytes, not GStreamer types.
//!
//! With chunks (a muxer cut by `FMP4MuxSplitNow { chunk: true }`, see docs/low-latency.md),
//! a fragment arrives as several chunks: the first opens with a fragment header, each
//! further one with a chunk header (HEADER|DELTA_UNIT), and every chunk ends with MARKER.
//! Each chunk is passed on as it completes (its MARKER), for the segment being served while
//! it grows; the fragment as a whole is complete at the MARKER of the chunk that reaches the
//! segment's end as decided upstream (`segment_end`), else at the next fragment header,
//! else at [`FragmentAssembler::finish`] (end of stream).
//!
//! An object is never assembled beyond a byte cap (`package.max_fragment_bytes`): the
//! buffer that would cross it drops what was gathered and is an error, and the rest of
//! that fragment is discarded up to the next fragment header.

use bytes::{Bytes, BytesMut};

use crate::media::{CmafChunk, CmafSegment};

/// The flags and timing of one muxer output buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkMeta {
    pub header: bool,
    pub delta_unit: bool,
    pub discont: bool,
    pub marker: bool,
    pub pts_ns: Option<u64>,
    pub duration_ns: Option<u64>,
}

/// A complete object, or a complete chunk of one, out of the muxer.
#[derive(Debug, Clone)]
pub enum MuxerOutput {
    Init(Bytes),
    /// One chunk of a segment (only when chunked); the chunks of a segment, concatenated,
    /// are its `Segment` bytes.
    Chunk(CmafChunk),
    Segment(CmafSegment),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FragmentError {
    #[error("fragment data arrived before any fragment header")]
    DataWithoutHeader,
    #[error("fragment header carries no timestamp")]
    Untimed,
    #[error("fragment larger than {limit} bytes (package.max_fragment_bytes)")]
    TooLarge { limit: usize },
}

/// The fragment being assembled.
#[derive(Debug)]
struct Open {
    start_ns: u64,
    duration_ns: u64,
    bytes: BytesMut,
    /// Where the current chunk ends (its header's pts + duration), when known.
    chunk_end_ns: Option<u64>,
    /// Where the current chunk starts in `bytes`, and in running time.
    chunk_from: usize,
    chunk_start_ns: u64,
}

impl Open {
    fn segment(self) -> MuxerOutput {
        MuxerOutput::Segment(CmafSegment { start_ns: self.start_ns, duration_ns: self.duration_ns, bytes: self.bytes.freeze() })
    }
}

#[derive(Debug)]
pub struct FragmentAssembler {
    init_seen: bool,
    /// The muxer cuts fragments into chunks: a MARKER ends a chunk, not the fragment.
    chunked: bool,
    current: Option<Open>,
    /// The largest object assembled.
    limit: usize,
    /// The current fragment went over `limit`: its remaining buffers are dropped.
    discarding: bool,
}

impl FragmentAssembler {
    /// `limit`: the largest object (init or fragment) it assembles, in bytes.
    pub fn new(limit: usize) -> Self {
        Self { init_seen: false, chunked: false, current: None, limit, discarding: false }
    }

    /// For a muxer that cuts its fragments into chunks (see the module header).
    pub fn chunked(limit: usize) -> Self {
        Self { chunked: true, ..Self::new(limit) }
    }

    /// End of stream: the fragment still open, if any (a chunked muxer's last one).
    pub fn finish(&mut self) -> Option<MuxerOutput> {
        self.current.take().map(Open::segment)
    }

    fn too_large(&mut self) -> FragmentError {
        self.current = None;
        self.discarding = true;
        FragmentError::TooLarge { limit: self.limit }
    }

    /// Feeds one buffer; returns what it completes, in order: the init segment, a
    /// fragment that ended where this one begins, a chunk (when chunked), a fragment.
    /// `segment_end` gives, for a fragment's start, where its segment ends as decided
    /// upstream, when that is known (used only when chunked).
    pub fn push(&mut self, meta: ChunkMeta, data: &[u8], segment_end: impl FnOnce(u64) -> Option<u64>) -> Result<Vec<MuxerOutput>, FragmentError> {
        if meta.header && meta.discont && !self.init_seen {
            self.init_seen = true;
            if data.len() > self.limit {
                return Err(FragmentError::TooLarge { limit: self.limit });
            }
            return Ok(vec![MuxerOutput::Init(Bytes::copy_from_slice(data))]);
        }
        let chunk_end = |meta: &ChunkMeta| Some(meta.pts_ns? + meta.duration_ns?);
        let mut completed = None;
        if meta.header && !meta.delta_unit {
            let start = meta.pts_ns.ok_or(FragmentError::Untimed)?;
            // A chunked fragment whose end was not known upstream ends where the next begins.
            completed = self.current.take().map(Open::segment);
            self.discarding = false;
            if data.len() > self.limit {
                return Err(self.too_large());
            }
            let duration_ns = meta.duration_ns.unwrap_or(0);
            self.current = Some(Open { start_ns: start, duration_ns, bytes: BytesMut::from(data), chunk_end_ns: chunk_end(&meta), chunk_from: 0, chunk_start_ns: start });
        } else if self.discarding {
            return Ok(Vec::new());
        } else {
            let open = self.current.as_mut().ok_or(FragmentError::DataWithoutHeader)?;
            if open.bytes.len() + data.len() > self.limit {
                return Err(self.too_large());
            }
            open.bytes.extend_from_slice(data);
            if meta.header {
                // A chunk header: the fragment grows by this chunk.
                open.chunk_from = open.bytes.len() - data.len();
                open.chunk_start_ns = meta.pts_ns.unwrap_or(open.chunk_start_ns);
                open.chunk_end_ns = chunk_end(&meta);
                if let Some(end) = open.chunk_end_ns {
                    open.duration_ns = end.saturating_sub(open.start_ns);
                }
            }
        }
        let mut outputs: Vec<MuxerOutput> = completed.into_iter().collect();
        if meta.marker {
            let open = self.current.as_ref().ok_or(FragmentError::DataWithoutHeader)?;
            if self.chunked {
                outputs.push(MuxerOutput::Chunk(CmafChunk {
                    segment_start_ns: open.start_ns,
                    start_ns: open.chunk_start_ns,
                    end_ns: open.chunk_end_ns,
                    first: open.chunk_from == 0,
                    bytes: Bytes::copy_from_slice(&open.bytes[open.chunk_from..]),
                }));
            }
            let reaches_end = || match (segment_end(open.start_ns), open.chunk_end_ns) {
                // Chunk ends are whole frames: within a millisecond is the boundary itself.
                (Some(end), Some(chunk_end)) => chunk_end + 1_000_000 >= end,
                _ => false,
            };
            if !self.chunked || reaches_end() {
                outputs.extend(self.current.take().map(Open::segment));
            }
        }
        Ok(outputs)
    }
}

/// RFC 6381 codecs string of an H.264 track, from the avcC box of its init segment.
pub fn avc_codecs(init: &[u8]) -> Option<String> {
    let at = init.windows(4).position(|w| w == b"avcC")?;
    let record = init.get(at + 4..at + 8)?;
    Some(format!("avc1.{:02X}{:02X}{:02X}", record[1], record[2], record[3]))
}

/// RFC 6381 codecs string of an AAC track from its AudioSpecificConfig.
pub fn aac_codecs(object_type: u8) -> String {
    format!("mp4a.40.{object_type}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(header: bool, delta_unit: bool, discont: bool, marker: bool, pts: Option<u64>) -> ChunkMeta {
        ChunkMeta { header, delta_unit, discont, marker, pts_ns: pts, duration_ns: Some(1_000) }
    }

    impl FragmentAssembler {
        /// Unchunked: at most one output a buffer.
        fn push_simple(&mut self, meta: ChunkMeta, data: &[u8]) -> Result<Option<MuxerOutput>, FragmentError> {
            let mut outputs = self.push(meta, data, |_| None)?;
            assert!(outputs.len() <= 1, "{outputs:?}");
            Ok(outputs.pop())
        }
    }

    /// The chunks among `outputs`, and the segment that ends them, if any.
    fn chunks_and_segment(outputs: Vec<MuxerOutput>) -> (Vec<Bytes>, Option<CmafSegment>) {
        let (mut chunks, mut segment) = (Vec::new(), None);
        for output in outputs {
            match output {
                MuxerOutput::Chunk(chunk) => chunks.push(chunk.bytes),
                MuxerOutput::Segment(s) => segment = Some(s),
                MuxerOutput::Init(_) => panic!("init segment out of place"),
            }
        }
        (chunks, segment)
    }

    /// A header (fragment or chunk) at `pts` lasting `duration`.
    fn header(fragment: bool, pts: u64, duration: u64) -> ChunkMeta {
        ChunkMeta { header: true, delta_unit: !fragment, discont: false, marker: false, pts_ns: Some(pts), duration_ns: Some(duration) }
    }

    fn samples(marker: bool) -> ChunkMeta {
        ChunkMeta { header: false, delta_unit: true, discont: false, marker, pts_ns: None, duration_ns: None }
    }

    fn segment_of(output: Option<MuxerOutput>) -> CmafSegment {
        match output {
            Some(MuxerOutput::Segment(segment)) => segment,
            other => panic!("expected a segment, got {other:?}"),
        }
    }

    #[test]
    fn chunked_fragments_pass_on_each_chunk_and_complete_at_the_boundary() {
        const MS: u64 = 1_000_000;
        let mut asm = FragmentAssembler::chunked(1 << 20);
        let boundary = |start: u64| Some(start + 1_000 * MS);
        assert!(matches!(&asm.push(meta(true, false, true, false, Some(0)), b"ftyp", boundary).unwrap()[..], [MuxerOutput::Init(_)]));
        // Four chunks of 267, 233, 267, 233 ms (whole frames): each passed on at its marker,
        // only the last completes the segment.
        let mut at = 0;
        let mut segment = None;
        for (i, length) in [267 * MS, 233 * MS, 267 * MS, 233 * MS].into_iter().enumerate() {
            assert!(segment.is_none(), "completed after chunk {i}");
            assert!(asm.push(header(i == 0, at, length), b"H", boundary).unwrap().is_empty());
            assert!(asm.push(samples(false), b"s", boundary).unwrap().is_empty());
            let outputs = asm.push(samples(true), b"t", boundary).unwrap();
            let MuxerOutput::Chunk(chunk) = &outputs[0] else { panic!("a chunk first: {outputs:?}") };
            assert_eq!((chunk.start_ns, chunk.end_ns, chunk.first), (at, Some(at + length), i == 0), "chunk {i}");
            let (chunks, completed) = chunks_and_segment(outputs);
            assert_eq!(chunks, ["Hst"], "chunk {i}");
            segment = completed;
            at += length;
        }
        let first = segment.unwrap();
        assert_eq!((&first.bytes[..], first.start_ns, first.duration_ns), (&b"HstHstHstHst"[..], 0, 1_000 * MS));

        // The boundary not known: the segment ends where the next fragment begins, and the
        // last one at the end of the stream.
        asm.push(header(true, at, 500 * MS), b"A", |_| None).unwrap();
        assert_eq!(chunks_and_segment(asm.push(samples(true), b"a", |_| None).unwrap()).0, ["Aa"]);
        assert!(asm.push(header(false, at + 500 * MS, 500 * MS), b"B", |_| None).unwrap().is_empty());
        assert_eq!(chunks_and_segment(asm.push(samples(true), b"b", |_| None).unwrap()).0, ["Bb"]);
        let (chunks, second) = chunks_and_segment(asm.push(header(true, at + 1_000 * MS, 300 * MS), b"C", |_| None).unwrap());
        let second = second.unwrap();
        assert!(chunks.is_empty());
        assert_eq!((&second.bytes[..], second.start_ns, second.duration_ns), (&b"AaBb"[..], at, 1_000 * MS));
        let MuxerOutput::Chunk(chunk) = asm.push(samples(true), b"c", |_| None).unwrap().remove(0) else { panic!("a chunk") };
        assert_eq!((chunk.segment_start_ns, chunk.start_ns, chunk.end_ns, chunk.first), (at + 1_000 * MS, at + 1_000 * MS, Some(at + 1_300 * MS), true));
        let last = segment_of(asm.finish());
        assert_eq!((&last.bytes[..], last.duration_ns), (&b"Cc"[..], 300 * MS));
        assert!(asm.finish().is_none());
    }

    #[test]
    fn init_then_fragments() {
        let mut asm = FragmentAssembler::new(1 << 20);
        assert!(matches!(asm.push_simple(meta(true, false, true, false, Some(0)), b"ftyp").unwrap(), Some(MuxerOutput::Init(b)) if &b[..] == b"ftyp"));
        assert!(asm.push_simple(meta(true, false, false, false, Some(0)), b"moof").unwrap().is_none());
        assert!(asm.push_simple(meta(false, true, false, false, Some(0)), b"mdat").unwrap().is_none());
        match asm.push_simple(meta(false, true, false, true, Some(33)), b"tail").unwrap() {
            Some(MuxerOutput::Segment(seg)) => {
                assert_eq!(&seg.bytes[..], b"moofmdattail");
                assert_eq!((seg.start_ns, seg.duration_ns), (0, 1_000));
            }
            other => panic!("{other:?}"),
        }
        // A header that is also the marker (a one-buffer fragment).
        assert!(matches!(asm.push_simple(meta(true, false, false, true, Some(5)), b"x").unwrap(), Some(MuxerOutput::Segment(s)) if s.start_ns == 5));
    }

    #[test]
    fn a_fragment_over_the_cap_is_dropped_and_the_next_one_assembles() {
        let mut asm = FragmentAssembler::new(10);
        asm.push_simple(meta(true, false, true, false, Some(0)), b"ftyp").unwrap();
        asm.push_simple(meta(true, false, false, false, Some(0)), b"moof").unwrap();
        asm.push_simple(meta(false, true, false, false, Some(0)), b"mdat").unwrap();
        // 12 bytes would be gathered: refused, and what was gathered is dropped at once.
        assert_eq!(asm.push_simple(meta(false, true, false, false, Some(0)), b"tail").unwrap_err(), FragmentError::TooLarge { limit: 10 });
        assert!(asm.current.is_none());
        // The rest of that fragment, its marker included, is discarded quietly.
        assert!(asm.push_simple(meta(false, true, false, false, None), &[0; 1000]).unwrap().is_none());
        assert!(asm.push_simple(meta(false, true, false, true, None), b"end").unwrap().is_none());
        // The next fragment is assembled again.
        asm.push_simple(meta(true, false, false, false, Some(1_000)), b"moof").unwrap();
        assert!(matches!(asm.push_simple(meta(false, true, false, true, None), b"mdat").unwrap(), Some(MuxerOutput::Segment(s)) if &s.bytes[..] == b"moofmdat"));
        // A single buffer over the cap.
        assert!(asm.push_simple(meta(true, false, false, true, Some(2_000)), &[0; 11]).is_err());
    }

    #[test]
    fn data_before_a_header_is_an_error() {
        let mut asm = FragmentAssembler::new(1 << 20);
        assert_eq!(asm.push_simple(meta(false, true, false, false, None), b"x").unwrap_err(), FragmentError::DataWithoutHeader);
    }

    #[test]
    fn codecs_from_avcc() {
        let init = [b"....avcC".as_slice(), &[1, 0x64, 0x00, 0x1f, 0xff]].concat();
        assert_eq!(avc_codecs(&init).as_deref(), Some("avc1.64001F"));
        assert_eq!(avc_codecs(b"no box here"), None);
    }
}
