//! Shared vocabulary of the media path: stream, rendition and session identifiers, the
//! packets ingest hands to a stream, and the segments the packager hands to the store.
//!
//! Identifiers are validated once, where they enter (an RTMP publish, an HTTP path), so
//! every module downstream can put them into URLs and logs without escaping.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Longest rendition or session identifier we accept.
pub const MAX_ID_LEN: usize = 64;
/// Longest stream name we accept: keys from platforms and encoders run long.
pub const MAX_STREAM_ID_LEN: usize = 128;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("identifier is empty")]
    Empty,
    #[error("identifier is longer than {0} bytes")]
    TooLong(usize),
    #[error("identifier {0:?} may only hold ASCII letters, digits, '_' and '-'")]
    BadCharacter(String),
    #[error("stream name {0:?} may only hold ASCII letters, digits, '.', '_', '~' and '-'")]
    BadStreamCharacter(String),
    #[error("stream name {0:?} may not start with '.' nor hold \"..\"")]
    Dots(String),
}

fn validate_id(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(MAX_ID_LEN));
    }
    if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(IdError::BadCharacter(raw.chars().take(MAX_ID_LEN).collect()));
    }
    Ok(())
}

/// A character a stream name may hold: RFC 3986's unreserved set, so a name goes into a
/// URL path, a log line, a file name or a cache key exactly as it is.
pub fn is_stream_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-')
}

/// Stream names: [`is_stream_char`]s, at most [`MAX_STREAM_ID_LEN`] bytes, never starting
/// with '.' and never holding "..", so no name is `.`, `..`, a hidden file or anything a
/// path resolver could read as a step up. '/' is not a stream character: a name is one
/// path element (ingest maps the slashes of `app/room/cam` keys, see ingest/key.rs).
fn validate_stream_id(raw: &str) -> Result<(), IdError> {
    let shown = || raw.chars().take(MAX_STREAM_ID_LEN).collect();
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_STREAM_ID_LEN {
        return Err(IdError::TooLong(MAX_STREAM_ID_LEN));
    }
    if !raw.chars().all(is_stream_char) {
        return Err(IdError::BadStreamCharacter(shown()));
    }
    if raw.starts_with('.') || raw.contains("..") {
        return Err(IdError::Dots(shown()));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $validate:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(raw: String) -> Result<Self, IdError> {
                $validate(&raw)?;
                Ok(Self(raw))
            }
        }

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, IdError> {
                $validate(raw)?;
                Ok(Self(raw.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A live stream's public name: the URL path element viewers use, derived from the RTMP
    /// stream key (ingest/key.rs) or mapped from it by `[ingest.keys]`.
    StreamId, validate_stream_id
);
id_type!(
    /// One Representation of a stream: a video rung (`720p`) or the audio track (`audio`).
    RenditionId, validate_id
);
id_type!(
    /// One publish of a stream. It is part of every segment URL so that a URL never names two
    /// byte strings, across republishes, restarts and failover.
    SessionId, validate_id
);

impl SessionId {
    /// A fresh session id: the wall clock in milliseconds (base 36) plus random bits, so two
    /// publishes of one key never share an id even on two nodes at the same instant.
    pub fn generate() -> Self {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let salt: u16 = rand::random();
        Self(format!("{}{:04x}", base36(millis), salt))
    }
}

fn base36(mut n: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

/// Whether a track carries pictures or sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Video,
    Audio,
}

/// A media payload from the broadcaster, already unwrapped from its FLV tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaPacket {
    /// AVCDecoderConfigurationRecord (the `codec_data` of H.264 in AVC form).
    VideoConfig(Bytes),
    /// One access unit of length-prefixed NAL units.
    Video { dts_ms: u32, cts_ms: i32, keyframe: bool, data: Bytes },
    /// AudioSpecificConfig of an AAC stream.
    AudioConfig(Bytes),
    /// One raw AAC frame.
    Audio { dts_ms: u32, data: Bytes },
}

/// A finished CMAF media segment of one rendition, as cut by the muxer.
#[derive(Debug, Clone)]
pub struct CmafSegment {
    /// Presentation start on the session's running-time clock.
    pub start_ns: u64,
    pub duration_ns: u64,
    pub bytes: Bytes,
}

/// One chunk of a CMAF media segment being encoded (low latency), as cut by the muxer.
/// Times are on the session's running-time clock.
#[derive(Debug, Clone)]
pub struct CmafChunk {
    pub segment_start_ns: u64,
    pub start_ns: u64,
    /// Where the chunk ends, when the muxer said.
    pub end_ns: Option<u64>,
    /// The segment's first chunk (a video chunk that opens with its keyframe).
    pub first: bool,
    pub bytes: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_traversal_and_odd_bytes() {
        for good in ["cam-1_A", "cam.1", "room~cam", "live_123_abcDEF", "a.b.c", "x~", "-x", &"x".repeat(128)] {
            assert!(StreamId::parse(good).is_ok(), "{good:?} must be accepted");
        }
        for bad in [
            "", ".", "..", ".hidden", "a..b", "a/b", "a\\b", "a%2Fb", "%2e%2e", "a b", "é", "a?b", "a#b", "a@b", "a:b",
            &"x".repeat(129),
        ] {
            assert!(StreamId::parse(bad).is_err(), "{bad:?} must be refused");
        }
        // Renditions and sessions keep the narrower rule.
        for bad in ["a.b", "a~b", &"x".repeat(65)] {
            assert!(RenditionId::parse(bad).is_err() && SessionId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn session_ids_are_valid_and_distinct() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert!(SessionId::parse(a.as_str()).is_ok());
    }
}
