//! The RTMP chunk-stream guard: every byte a connection sends passes through it before
//! rml_rtmp sees it. rml_rtmp 0.8 trusts its peer: it reserves whatever message length a
//! chunk header announces (up to 16 MiB), and rml_amf0 decodes AMF objects recursively, so
//! one `connect` nested 10,000 levels deep overflows the worker's stack and aborts the
//! process. The guard follows the chunk stream exactly as rml_rtmp's deserializer does
//! (same header forms, one shared payload accumulator, extended timestamps, peer chunk
//! size) and refuses the connection before rml_rtmp would allocate or recurse:
//!
//! - a message announced larger than its class allows (commands and data: 64 KiB; audio
//!   and video: 64 KiB until the connection has asked to publish, then the configured cap);
//!   audio above its own, much smaller cap, which no AAC or Opus frame reaches (a publisher
//!   padding its audio would otherwise push megabytes a second past the video's pacing);
//! - AMF nested deeper than [`MAX_AMF_DEPTH`] in any command or data message;
//! - a command or data message with fewer values than its form has: rml_rtmp 0.8 indexes
//!   them without checking and panics (`drain(..3)` on any command, `remove(0)` twice on
//!   `publish`'s arguments, once on `play`'s, `data[0]` / `remove(1)` on `@setDataFrame`);
//! - a chunk size outside 1..=16 MiB, an extended timestamp that would underflow, a message
//!   length that shrinks below the bytes already received, a chunk on a stream never opened;
//! - more than [`PRE_PUBLISH_BUDGET`] bytes before the peer asks to publish.
//!
//! Pure: bytes in, a verdict out, no I/O. It keeps the first [`MAX_COMMAND_MESSAGE`] bytes
//! of every message, media included (a copy of up to 64 KiB per audio or video message,
//! dropped when the message is complete), and never more than that at once.

use std::collections::HashMap;

/// Longest command or data message (connect, publish, onMetaData, ...): ffmpeg and OBS send
/// a few hundred bytes.
pub const MAX_COMMAND_MESSAGE: u32 = 64 * 1024;
/// Deepest AMF nesting accepted; real clients send 2 (an object inside a command).
pub const MAX_AMF_DEPTH: usize = 32;
/// Bytes a connection may send before it asks to publish (connect, createStream, publish
/// and the control messages around them take about 1 KiB).
pub const PRE_PUBLISH_BUDGET: u64 = 256 * 1024;
/// Largest chunk size a peer may set (the protocol allows 2^31 - 1; no message is longer
/// than 2^24 - 1).
pub const MAX_CHUNK_SIZE: u32 = 0xFF_FFFF;
/// Chunk streams a peer may open (ffmpeg and OBS use 3 to 6).
pub const MAX_CHUNK_STREAMS: usize = 64;

const INITIAL_CHUNK_SIZE: u32 = 128;
const EXTENDED_TIMESTAMP: u32 = 0xFF_FFFF;
const TYPE_SET_CHUNK_SIZE: u8 = 1;
const TYPE_AUDIO: u8 = 8;
const TYPE_VIDEO: u8 = 9;
const TYPE_AMF3_DATA: u8 = 15;
const TYPE_AMF3_COMMAND: u8 = 17;
const TYPE_AMF0_DATA: u8 = 18;
const TYPE_AMF0_COMMAND: u8 = 20;

/// Why the guard refused a connection. The text is safe to log: it quotes no peer bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("message of type {type_id} announced {len} bytes; the limit is {limit}")]
    MessageTooLarge { type_id: u8, len: u32, limit: u32 },
    #[error("audio message of {len} bytes: no AAC or Opus frame is that large (limit {limit}, ingest.max_audio_message)")]
    AudioTooLarge { len: u32, limit: u32 },
    #[error("AMF value nested deeper than {MAX_AMF_DEPTH} levels in a message of type {type_id}")]
    AmfTooDeep { type_id: u8 },
    #[error("{kind} message of {values} AMF values is shorter than its form ({needed} values)")]
    ShortMessage { kind: &'static str, values: usize, needed: usize },
    #[error("peer set chunk size {0}; accepted 1..={MAX_CHUNK_SIZE}")]
    BadChunkSize(u32),
    #[error("chunk on stream {0} continues a message that was never started")]
    NoPreviousChunk(u32),
    #[error("peer opened more than {MAX_CHUNK_STREAMS} chunk streams")]
    TooManyChunkStreams,
    #[error("extended timestamp {0} is below the 24-bit escape value")]
    BadExtendedTimestamp(u32),
    #[error("message length {len} is below the {received} bytes already received")]
    LengthShrank { len: u32, received: u32 },
    #[error("a message of {len} bytes started inside another one ({received} bytes received)")]
    Interleaved { len: u32, received: u32 },
    #[error("sent {0} bytes without asking to publish (limit {PRE_PUBLISH_BUDGET})")]
    PrePublishBudget(u64),
}

/// The last header seen on one chunk stream, as the deserializer keeps it.
#[derive(Debug, Clone, Copy, Default)]
struct PreviousHeader {
    message_length: u32,
    type_id: u8,
    /// The 24-bit timestamp field as sent: 0xFFFFFF means extended timestamps follow,
    /// also on the chunks that continue the message with a bare (type 3) header.
    timestamp_field: u32,
}

/// Where the parser stands.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Collecting a chunk header.
    Header,
    /// Skipping or keeping `left` payload bytes of the current chunk.
    Payload { csid: u32, left: u32 },
}

/// Follows one connection's chunk stream; see the module header.
#[derive(Debug)]
pub struct ChunkGuard {
    media_limit: u32,
    audio_limit: u32,
    chunk_size: u32,
    stage: Stage,
    /// A chunk header split across reads (at most 18 bytes).
    partial_header: Vec<u8>,
    headers: HashMap<u32, PreviousHeader>,
    /// Bytes of the message being assembled (rml_rtmp keeps one accumulator for every
    /// chunk stream, so the guard does too).
    received: u32,
    /// Its first [`MAX_COMMAND_MESSAGE`] bytes, whatever its type, kept to inspect AMF and
    /// chunk sizes before rml_rtmp does.
    body: Vec<u8>,
    publish_requested: bool,
    total_bytes: u64,
}

impl ChunkGuard {
    /// `media_limit`: the largest audio or video message accepted once publishing.
    pub fn new(media_limit: u32) -> Self {
        Self {
            media_limit,
            audio_limit: media_limit,
            chunk_size: INITIAL_CHUNK_SIZE,
            stage: Stage::Header,
            partial_header: Vec::with_capacity(18),
            headers: HashMap::new(),
            received: 0,
            body: Vec::new(),
            publish_requested: false,
            total_bytes: 0,
        }
    }

    /// `limit`: the largest audio message accepted (at most the media limit applies).
    pub fn with_audio_limit(mut self, limit: u32) -> Self {
        self.audio_limit = limit;
        self
    }

    /// Whether the peer has sent a `publish` command.
    pub fn publish_requested(&self) -> bool {
        self.publish_requested
    }

    /// Inspects the next bytes of the connection (after the handshake). `Ok` means rml_rtmp
    /// may be given them; after an `Err` the connection must be closed.
    pub fn inspect(&mut self, mut input: &[u8]) -> Result<(), GuardError> {
        self.total_bytes += input.len() as u64;
        if !self.publish_requested && self.total_bytes > PRE_PUBLISH_BUDGET {
            return Err(GuardError::PrePublishBudget(self.total_bytes));
        }
        while !input.is_empty() {
            match self.stage {
                Stage::Header => input = self.header(input)?,
                Stage::Payload { csid, left } => {
                    let take = (left as usize).min(input.len());
                    self.payload(&input[..take]);
                    input = &input[take..];
                    let left = left - take as u32;
                    self.stage = Stage::Payload { csid, left };
                    if left == 0 {
                        self.end_chunk(csid)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Parses a chunk header from the partial bytes and `input`; returns the input left.
    fn header<'a>(&mut self, input: &'a [u8]) -> Result<&'a [u8], GuardError> {
        let had = self.partial_header.len();
        let take = (18 - had).min(input.len());
        let mut window = [0u8; 18];
        window[..had].copy_from_slice(&self.partial_header);
        window[had..had + take].copy_from_slice(&input[..take]);
        match self.parse_header(&window[..had + take])? {
            None => {
                self.partial_header.extend_from_slice(&input[..take]);
                Ok(&input[take..])
            }
            Some(used) => {
                self.partial_header.clear();
                Ok(&input[used - had..])
            }
        }
    }

    /// `Ok(None)`: not enough bytes yet. `Ok(Some(n))`: a header of `n` bytes was applied.
    fn parse_header(&mut self, b: &[u8]) -> Result<Option<usize>, GuardError> {
        let Some(&first) = b.first() else { return Ok(None) };
        let format = first >> 6;
        let (csid, mut at) = match first & 0x3f {
            0 if b.len() >= 2 => (u32::from(b[1]) + 64, 2),
            1 if b.len() >= 3 => (u32::from(b[2]) * 256 + u32::from(b[1]) + 64, 3),
            0 | 1 => return Ok(None),
            id => (u32::from(id), 1),
        };
        let message_header = [11, 7, 3, 0][usize::from(format)];
        if b.len() < at + message_header {
            return Ok(None);
        }
        let previous = match format {
            0 => PreviousHeader::default(),
            _ => *self.headers.get(&csid).ok_or(GuardError::NoPreviousChunk(csid))?,
        };
        let mut header = previous;
        if format <= 2 {
            header.timestamp_field = u24(&b[at..]);
        }
        if format <= 1 {
            header.message_length = u24(&b[at + 3..]);
            header.type_id = b[at + 6];
        }
        at += message_header;
        if header.timestamp_field >= EXTENDED_TIMESTAMP {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let extended = u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            // rml_rtmp subtracts the escape value from the extended delta of a non-type-0
            // header: an extended value below it would underflow.
            if format != 0 && extended < EXTENDED_TIMESTAMP {
                return Err(GuardError::BadExtendedTimestamp(extended));
            }
            at += 4;
        }
        if !self.headers.contains_key(&csid) && self.headers.len() >= MAX_CHUNK_STREAMS {
            return Err(GuardError::TooManyChunkStreams);
        }
        if header.message_length < self.received {
            return Err(GuardError::LengthShrank { len: header.message_length, received: self.received });
        }
        let limit = self.limit(header.type_id);
        if header.message_length > limit {
            return Err(GuardError::MessageTooLarge { type_id: header.type_id, len: header.message_length, limit });
        }
        if header.type_id == TYPE_AUDIO && header.message_length > self.audio_limit {
            return Err(GuardError::AudioTooLarge { len: header.message_length, limit: self.audio_limit });
        }
        self.headers.insert(csid, header);
        // The payload length of this chunk, exactly as rml_rtmp computes it.
        let remaining = header.message_length - self.received;
        let left = if header.message_length > self.chunk_size { remaining.min(self.chunk_size) } else { header.message_length };
        // A short message started in the middle of another one: rml_rtmp would append it to
        // the accumulator, overshoot the length and never complete a message again.
        if self.received + left > header.message_length {
            return Err(GuardError::Interleaved { len: header.message_length, received: self.received });
        }
        self.stage = Stage::Payload { csid, left };
        if left == 0 {
            self.end_chunk(csid)?;
        }
        Ok(Some(at))
    }

    fn limit(&self, type_id: u8) -> u32 {
        match type_id {
            TYPE_AUDIO | TYPE_VIDEO if self.publish_requested => self.media_limit,
            _ => MAX_COMMAND_MESSAGE,
        }
    }

    fn payload(&mut self, bytes: &[u8]) {
        self.received += bytes.len() as u32;
        let room = (MAX_COMMAND_MESSAGE as usize).saturating_sub(self.body.len());
        self.body.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// A chunk's payload is complete: the message may be too.
    fn end_chunk(&mut self, csid: u32) -> Result<(), GuardError> {
        self.stage = Stage::Header;
        let header = self.headers[&csid];
        if self.received < header.message_length {
            return Ok(());
        }
        self.received = 0;
        let body = std::mem::take(&mut self.body);
        match header.type_id {
            TYPE_SET_CHUNK_SIZE if body.len() >= 4 => {
                let size = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                if size == 0 || size > MAX_CHUNK_SIZE {
                    return Err(GuardError::BadChunkSize(size));
                }
                self.chunk_size = size;
            }
            TYPE_AMF0_DATA | TYPE_AMF3_DATA | TYPE_AMF0_COMMAND | TYPE_AMF3_COMMAND => {
                // rml_rtmp drops one leading zero byte of an AMF3-flagged command.
                let amf = match (header.type_id, body.first()) {
                    (TYPE_AMF3_COMMAND, Some(0)) => &body[1..],
                    _ => &body[..],
                };
                let shape = amf0_shape(amf, MAX_AMF_DEPTH).ok_or(GuardError::AmfTooDeep { type_id: header.type_id })?;
                let command = matches!(header.type_id, TYPE_AMF0_COMMAND | TYPE_AMF3_COMMAND);
                let (kind, needed) = match command {
                    true if starts_with_string(amf, "publish") => ("publish", 5),
                    true if starts_with_string(amf, "play") => ("play", 4),
                    true => ("command", 3),
                    false if starts_with_string(amf, "@setDataFrame") => ("@setDataFrame", 3),
                    false => ("data", 0),
                };
                if shape.values < needed {
                    return Err(GuardError::ShortMessage { kind, values: shape.values, needed });
                }
                if kind == "publish" {
                    self.publish_requested = true;
                }
            }
            _ => {}
        }
        // Keep the allocation for the next command; media bodies never grow it past the cap.
        self.body = body;
        self.body.clear();
        Ok(())
    }
}

fn u24(b: &[u8]) -> u32 {
    u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2])
}

/// Whether an AMF0 message starts with the string `name` (a command's or data's name).
fn starts_with_string(amf: &[u8], name: &str) -> bool {
    amf.len() >= 3 + name.len()
        && amf[0] == 0x02
        && usize::from(u16::from_be_bytes([amf[1], amf[2]])) == name.len()
        && &amf[3..3 + name.len()] == name.as_bytes()
}

/// What the walk of an AMF0 message found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmfShape {
    /// The deepest nesting reached.
    pub depth: usize,
    /// Complete top-level values before the message (or the walk) ended.
    pub values: usize,
}

/// Walks `bytes` along the grammar of rml_amf0's recursive decoder, iteratively; `None`
/// once the nesting exceeds `limit`. Malformed input ends the walk where the decoder
/// stops with an error (a short string read is tolerated by the decoder and counted
/// here as the end, which only makes the value count stricter).
pub fn amf0_shape(bytes: &[u8], limit: usize) -> Option<AmfShape> {
    enum Frame {
        Object,
        Array { left: u32 },
    }
    let mut at = 0usize;
    let mut stack: Vec<Frame> = Vec::new();
    let mut deepest = 0usize;
    let mut values = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let slice = bytes.get(*at..*at + n)?;
        *at += n;
        Some(slice)
    };
    loop {
        // Read the marker of the next value, or close containers, per the frame on top.
        let marker = match stack.last_mut() {
            None => match take(&mut at, 1) {
                None | Some([0x09]) => return Some(AmfShape { depth: deepest, values }),
                Some(m) => m[0],
            },
            Some(Frame::Object) => {
                let Some(label) = take(&mut at, 2) else { return Some(AmfShape { depth: deepest, values }) };
                let label = usize::from(u16::from_be_bytes([label[0], label[1]]));
                if label == 0 {
                    // Empty label: the object ends (or the decoder errors).
                    stack.pop();
                    values += usize::from(stack.is_empty());
                    if take(&mut at, 1) != Some(&[0x09]) {
                        return Some(AmfShape { depth: deepest, values });
                    }
                    continue;
                }
                // A short label read is tolerated by the decoder; the value read then fails.
                if take(&mut at, label).is_none() {
                    return Some(AmfShape { depth: deepest, values });
                }
                match take(&mut at, 1) {
                    None | Some([0x09]) => return Some(AmfShape { depth: deepest, values }),
                    Some(m) => m[0],
                }
            }
            Some(Frame::Array { left }) => {
                if *left == 0 {
                    stack.pop();
                    values += usize::from(stack.is_empty());
                    continue;
                }
                *left -= 1;
                match take(&mut at, 1) {
                    None | Some([0x09]) => {
                        stack.pop();
                        values += usize::from(stack.is_empty());
                        continue;
                    }
                    Some(m) => m[0],
                }
            }
        };
        let scalar = match marker {
            0x00 => 8,
            0x01 => 1,
            0x05 | 0x06 => 0,
            0x02 => match take(&mut at, 2) {
                Some(len) => usize::from(u16::from_be_bytes([len[0], len[1]])),
                None => return Some(AmfShape { depth: deepest, values }),
            },
            0x03 => {
                stack.push(Frame::Object);
                0
            }
            0x08 => {
                if take(&mut at, 4).is_none() {
                    return Some(AmfShape { depth: deepest, values });
                }
                stack.push(Frame::Object);
                0
            }
            0x0a => {
                let Some(count) = take(&mut at, 4) else { return Some(AmfShape { depth: deepest, values }) };
                stack.push(Frame::Array { left: u32::from_be_bytes([count[0], count[1], count[2], count[3]]) });
                0
            }
            _ => return Some(AmfShape { depth: deepest, values }),
        };
        deepest = deepest.max(stack.len());
        if deepest > limit {
            return None;
        }
        // A string shorter than announced ends the message: the decoder reads what is there.
        if take(&mut at, scalar).is_none() {
            return Some(AmfShape { depth: deepest, values });
        }
        if stack.is_empty() {
            values += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A type-0 chunk header followed by the payload split at `chunk` bytes with type-3
    /// headers, as an encoder writes it.
    pub(crate) fn chunked(csid: u8, type_id: u8, payload: &[u8], chunk: usize) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![csid, 0, 0, 0, (len >> 16) as u8, (len >> 8) as u8, len as u8, type_id, 1, 0, 0, 0];
        for (i, piece) in payload.chunks(chunk.max(1)).enumerate() {
            if i > 0 {
                out.push(0xC0 | csid);
            }
            out.extend_from_slice(piece);
        }
        out
    }

    fn amf_string(s: &str) -> Vec<u8> {
        let mut v = vec![0x02];
        v.extend_from_slice(&(s.len() as u16).to_be_bytes());
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn nested_objects(levels: usize) -> Vec<u8> {
        let mut v = amf_string("connect");
        v.extend_from_slice(&[0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
        for _ in 0..levels {
            v.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
        }
        v.push(0x05);
        for _ in 0..levels {
            v.extend_from_slice(&[0x00, 0x00, 0x09]);
        }
        v
    }

    #[test]
    fn a_deeply_nested_connect_is_refused_before_decoding() {
        let mut guard = ChunkGuard::new(8 << 20);
        // About 50 KB: 10,000 strict arrays of one element each, as in the reported crash.
        let mut bomb = amf_string("connect");
        bomb.extend_from_slice(&[0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
        for _ in 0..10_000 {
            bomb.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        bomb.push(0x05);
        let err = guard.inspect(&chunked(3, TYPE_AMF0_COMMAND, &bomb, 128)).unwrap_err();
        assert_eq!(err, GuardError::AmfTooDeep { type_id: TYPE_AMF0_COMMAND });
    }

    #[test]
    fn nesting_within_the_limit_passes_and_matches_the_decoder() {
        let bytes = nested_objects(MAX_AMF_DEPTH);
        assert_eq!(amf0_shape(&bytes, MAX_AMF_DEPTH), Some(AmfShape { depth: MAX_AMF_DEPTH, values: 3 }));
        let decoded = rml_rtmp::rml_amf0::deserialize(&mut std::io::Cursor::new(&bytes)).unwrap();
        assert_eq!(decoded.len(), 3);
        let mut arrays = amf_string("x");
        for _ in 0..40 {
            arrays.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        assert_eq!(amf0_shape(&arrays, MAX_AMF_DEPTH), None);
    }

    #[test]
    fn large_announcements_are_refused_before_publish_and_allowed_after() {
        let mut guard = ChunkGuard::new(8 << 20);
        // Video announced at almost 16 MiB before any publish: refused on the header alone.
        let header = [3u8, 0, 0, 0, 0xff, 0xff, 0xf0, TYPE_VIDEO, 1, 0, 0, 0];
        assert!(matches!(guard.inspect(&header), Err(GuardError::MessageTooLarge { len: 0xfffff0, .. })));

        let mut guard = ChunkGuard::new(8 << 20);
        let mut publish = amf_string("publish");
        publish.extend_from_slice(&[0x00, 0x40, 0x10, 0, 0, 0, 0, 0, 0, 0x05]);
        publish.extend_from_slice(&amf_string("key"));
        publish.extend_from_slice(&amf_string("live"));
        guard.inspect(&chunked(8, TYPE_AMF0_COMMAND, &publish, 128)).unwrap();
        assert!(guard.publish_requested());
        guard.inspect(&chunked(6, TYPE_VIDEO, &vec![0x17; 1 << 20], 4096)).unwrap_err(); // chunk size still 128
        let mut guard2 = ChunkGuard::new(8 << 20);
        guard2.inspect(&chunked(2, TYPE_SET_CHUNK_SIZE, &4096u32.to_be_bytes(), 128)).unwrap();
        guard2.inspect(&chunked(8, TYPE_AMF0_COMMAND, &publish, 4096)).unwrap();
        guard2.inspect(&chunked(6, TYPE_VIDEO, &vec![0x17; 1 << 20], 4096)).unwrap();
        let too_big = [6u8, 0, 0, 0, 0x90, 0, 0, TYPE_VIDEO, 1, 0, 0, 0];
        assert!(matches!(guard2.inspect(&too_big), Err(GuardError::MessageTooLarge { .. })));
    }

    #[test]
    fn audio_over_its_own_cap_is_refused_on_the_header_video_of_that_size_is_not() {
        let mut guard = ChunkGuard::new(8 << 20).with_audio_limit(32 * 1024);
        let mut publish = amf_string("publish");
        publish.extend_from_slice(&[0x00, 0x40, 0x10, 0, 0, 0, 0, 0, 0, 0x05]);
        publish.extend_from_slice(&amf_string("key"));
        publish.extend_from_slice(&amf_string("live"));
        guard.inspect(&chunked(8, TYPE_AMF0_COMMAND, &publish, 128)).unwrap();
        guard.inspect(&chunked(2, TYPE_SET_CHUNK_SIZE, &4096u32.to_be_bytes(), 128)).unwrap();
        // A real AAC frame and one at the cap pass; video of 256 KiB passes.
        guard.inspect(&chunked(4, TYPE_AUDIO, &[0xaf; 400], 4096)).unwrap();
        guard.inspect(&chunked(4, TYPE_AUDIO, &vec![0xaf; 32 * 1024], 4096)).unwrap();
        guard.inspect(&chunked(6, TYPE_VIDEO, &vec![0x17; 256 * 1024], 4096)).unwrap();
        // 256 KiB of audio: refused as soon as its header announces it.
        let header = [4u8, 0, 0, 0, 0x04, 0x00, 0x00, TYPE_AUDIO, 1, 0, 0, 0];
        let err = guard.inspect(&header).unwrap_err();
        assert_eq!(err, GuardError::AudioTooLarge { len: 256 * 1024, limit: 32 * 1024 });
        assert!(err.to_string().contains("ingest.max_audio_message"), "{err}");
    }

    #[test]
    fn bytes_split_anywhere_give_the_same_verdict() {
        let mut stream = chunked(2, TYPE_SET_CHUNK_SIZE, &4096u32.to_be_bytes(), 128);
        stream.extend(chunked(3, TYPE_AMF0_COMMAND, &nested_objects(3), 128));
        stream.extend(chunked(3, TYPE_AMF0_COMMAND, &nested_objects(100), 4096));
        for split in 1..stream.len() {
            let mut guard = ChunkGuard::new(1 << 20);
            let verdict = guard.inspect(&stream[..split]).and_then(|_| guard.inspect(&stream[split..]));
            assert_eq!(verdict, Err(GuardError::AmfTooDeep { type_id: TYPE_AMF0_COMMAND }), "split at {split}");
        }
    }

    #[test]
    fn a_command_of_fewer_than_three_values_is_refused() {
        // rml_rtmp 0.8 would panic in `drain(..3)` on it.
        let mut guard = ChunkGuard::new(1 << 20);
        let short = [amf_string("connect"), vec![0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]].concat();
        let refused = |guard: &mut ChunkGuard, type_id, body: &[u8]| guard.inspect(&chunked(3, type_id, body, 128));
        assert_eq!(
            refused(&mut guard, TYPE_AMF0_COMMAND, &short),
            Err(GuardError::ShortMessage { kind: "command", values: 2, needed: 3 })
        );
        let mut guard = ChunkGuard::new(1 << 20);
        let ok = [short, vec![0x03, 0, 0, 0x09]].concat();
        assert_eq!(refused(&mut guard, TYPE_AMF0_COMMAND, &ok), Ok(()));
        // publish without its mode, @setDataFrame without its object.
        let publish = [amf_string("publish"), vec![0x00, 0x40, 0x10, 0, 0, 0, 0, 0, 0, 0x05], amf_string("key")].concat();
        assert_eq!(
            refused(&mut ChunkGuard::new(1 << 20), TYPE_AMF0_COMMAND, &publish),
            Err(GuardError::ShortMessage { kind: "publish", values: 4, needed: 5 })
        );
        let metadata = [amf_string("@setDataFrame"), amf_string("onMetaData")].concat();
        assert_eq!(
            refused(&mut ChunkGuard::new(1 << 20), TYPE_AMF0_DATA, &metadata),
            Err(GuardError::ShortMessage { kind: "@setDataFrame", values: 2, needed: 3 })
        );
    }

    #[test]
    fn protocol_abuse_is_named() {
        let mut guard = ChunkGuard::new(1 << 20);
        assert_eq!(guard.inspect(&[0xC5]), Err(GuardError::NoPreviousChunk(5)));
        let mut guard = ChunkGuard::new(1 << 20);
        assert_eq!(guard.inspect(&chunked(2, TYPE_SET_CHUNK_SIZE, &0u32.to_be_bytes(), 128)), Err(GuardError::BadChunkSize(0)));
        let mut guard = ChunkGuard::new(1 << 20);
        let mut split = chunked(3, TYPE_AMF0_COMMAND, &[0x05; 200], 128);
        split.truncate(12 + 128);
        let mut shorter = split.clone();
        split.extend(chunked(4, TYPE_AMF0_COMMAND, &[0x05; 128], 128));
        assert_eq!(guard.inspect(&split), Err(GuardError::Interleaved { len: 128, received: 128 }));
        let mut guard = ChunkGuard::new(1 << 20);
        shorter.extend(chunked(4, TYPE_AMF0_COMMAND, &[0x05; 100], 128));
        assert_eq!(guard.inspect(&shorter), Err(GuardError::LengthShrank { len: 100, received: 128 }));
        let mut guard = ChunkGuard::new(1 << 20);
        let mut garbage = Vec::new();
        while garbage.len() as u64 <= PRE_PUBLISH_BUDGET {
            garbage.extend(chunked(4, 4, &[0, 3, 0, 0, 0, 0], 128));
        }
        assert!(matches!(guard.inspect(&garbage), Err(GuardError::PrePublishBudget(_))));
    }
}
