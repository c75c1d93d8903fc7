//! Reassembles cmafmux output into whole objects. cmafmux pushes an init segment (a buffer
//! flagged HEADER|DISCONT, once), then for every fragment a header buffer (HEADER without
//! DELTA_UNIT: its pts/duration are the fragment's timing) followed by sample data, the last
//! buffer flagged MARKER. Pure: it sees flags and bytes, not GStreamer types.
//!
//! An object is never assembled beyond a byte cap (`package.max_fragment_bytes`): the
//! buffer that would cross it drops what was gathered and is an error, and the rest of
//! that fragment is discarded up to the next fragment header.

use bytes::{Bytes, BytesMut};

use crate::media::CmafSegment;

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

/// A complete object out of the muxer.
#[derive(Debug, Clone)]
pub enum MuxerOutput {
    Init(Bytes),
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

#[derive(Debug)]
pub struct FragmentAssembler {
    init_seen: bool,
    current: Option<(u64, u64, BytesMut)>,
    /// The largest object assembled.
    limit: usize,
    /// The current fragment went over `limit`: its remaining buffers are dropped.
    discarding: bool,
}

impl FragmentAssembler {
    /// `limit`: the largest object (init or fragment) it assembles, in bytes.
    pub fn new(limit: usize) -> Self {
        Self { init_seen: false, current: None, limit, discarding: false }
    }

    fn too_large(&mut self) -> FragmentError {
        self.current = None;
        self.discarding = true;
        FragmentError::TooLarge { limit: self.limit }
    }

    /// Feeds one buffer; returns an object when one completes.
    pub fn push(&mut self, meta: ChunkMeta, data: &[u8]) -> Result<Option<MuxerOutput>, FragmentError> {
        if meta.header && meta.discont && !self.init_seen {
            self.init_seen = true;
            if data.len() > self.limit {
                return Err(FragmentError::TooLarge { limit: self.limit });
            }
            return Ok(Some(MuxerOutput::Init(Bytes::copy_from_slice(data))));
        }
        if meta.header && !meta.delta_unit {
            let start = meta.pts_ns.ok_or(FragmentError::Untimed)?;
            self.discarding = false;
            if data.len() > self.limit {
                return Err(self.too_large());
            }
            self.current = Some((start, meta.duration_ns.unwrap_or(0), BytesMut::from(data)));
        } else if self.discarding {
            return Ok(None);
        } else {
            let (_, _, bytes) = self.current.as_mut().ok_or(FragmentError::DataWithoutHeader)?;
            if bytes.len() + data.len() > self.limit {
                return Err(self.too_large());
            }
            bytes.extend_from_slice(data);
        }
        if meta.marker {
            let (start_ns, duration_ns, bytes) = self.current.take().ok_or(FragmentError::DataWithoutHeader)?;
            return Ok(Some(MuxerOutput::Segment(CmafSegment { start_ns, duration_ns, bytes: bytes.freeze() })));
        }
        Ok(None)
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

    #[test]
    fn init_then_fragments() {
        let mut asm = FragmentAssembler::new(1 << 20);
        assert!(matches!(asm.push(meta(true, false, true, false, Some(0)), b"ftyp").unwrap(), Some(MuxerOutput::Init(b)) if &b[..] == b"ftyp"));
        assert!(asm.push(meta(true, false, false, false, Some(0)), b"moof").unwrap().is_none());
        assert!(asm.push(meta(false, true, false, false, Some(0)), b"mdat").unwrap().is_none());
        match asm.push(meta(false, true, false, true, Some(33)), b"tail").unwrap() {
            Some(MuxerOutput::Segment(seg)) => {
                assert_eq!(&seg.bytes[..], b"moofmdattail");
                assert_eq!((seg.start_ns, seg.duration_ns), (0, 1_000));
            }
            other => panic!("{other:?}"),
        }
        // A header that is also the marker (a one-buffer fragment).
        assert!(matches!(asm.push(meta(true, false, false, true, Some(5)), b"x").unwrap(), Some(MuxerOutput::Segment(s)) if s.start_ns == 5));
    }

    #[test]
    fn a_fragment_over_the_cap_is_dropped_and_the_next_one_assembles() {
        let mut asm = FragmentAssembler::new(10);
        asm.push(meta(true, false, true, false, Some(0)), b"ftyp").unwrap();
        asm.push(meta(true, false, false, false, Some(0)), b"moof").unwrap();
        asm.push(meta(false, true, false, false, Some(0)), b"mdat").unwrap();
        // 12 bytes would be gathered: refused, and what was gathered is dropped at once.
        assert_eq!(asm.push(meta(false, true, false, false, Some(0)), b"tail").unwrap_err(), FragmentError::TooLarge { limit: 10 });
        assert!(asm.current.is_none());
        // The rest of that fragment, its marker included, is discarded quietly.
        assert!(asm.push(meta(false, true, false, false, None), &[0; 1000]).unwrap().is_none());
        assert!(asm.push(meta(false, true, false, true, None), b"end").unwrap().is_none());
        // The next fragment is assembled again.
        asm.push(meta(true, false, false, false, Some(1_000)), b"moof").unwrap();
        assert!(matches!(asm.push(meta(false, true, false, true, None), b"mdat").unwrap(), Some(MuxerOutput::Segment(s)) if &s.bytes[..] == b"moofmdat"));
        // A single buffer over the cap.
        assert!(asm.push(meta(true, false, false, true, Some(2_000)), &[0; 11]).is_err());
    }

    #[test]
    fn data_before_a_header_is_an_error() {
        let mut asm = FragmentAssembler::new(1 << 20);
        assert_eq!(asm.push(meta(false, true, false, false, None), b"x").unwrap_err(), FragmentError::DataWithoutHeader);
    }

    #[test]
    fn codecs_from_avcc() {
        let init = [b"....avcC".as_slice(), &[1, 0x64, 0x00, 0x1f, 0xff]].concat();
        assert_eq!(avc_codecs(&init).as_deref(), Some("avc1.64001F"));
        assert_eq!(avc_codecs(b"no box here"), None);
    }
}
