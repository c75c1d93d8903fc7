//! The `Range` request header of a segment request, as LL-HLS players send it: one range,
//! `bytes=first-last` for a part (`EXT-X-PART` BYTERANGE) or `bytes=first-` for a preload
//! hint (`BYTERANGE-START` without a length). Pure. Anything else (several ranges, a
//! suffix range, a malformed header) is ignored as RFC 9110 14.2 allows: the whole object
//! is served.

use axum::http::HeaderValue;

/// One requested byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-last`, both included.
    Closed { first: u64, last: u64 },
    /// `first-`: to the end, however far it grows.
    From(u64),
}

impl ByteRange {
    pub fn first(self) -> u64 {
        match self {
            ByteRange::Closed { first, .. } | ByteRange::From(first) => first,
        }
    }

    /// The bytes a closed range asks for; 0 for an open one (not known until it ends).
    pub fn known_len(self) -> u64 {
        match self {
            ByteRange::Closed { first, last } => last - first + 1,
            ByteRange::From(_) => 0,
        }
    }

    /// The byte after the range within an object of `len` bytes (the range is clipped to it).
    pub fn end_within(self, len: u64) -> u64 {
        match self {
            ByteRange::Closed { last, .. } => last.saturating_add(1).min(len),
            ByteRange::From(_) => len,
        }
    }
}

/// The range a `Range` header asks for, or `None` to serve the whole object.
pub fn parse(header: Option<&HeaderValue>) -> Option<ByteRange> {
    let spec = header?.to_str().ok()?.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.trim().split_once('-')?;
    let number = |s: &str| if !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    let first = number(first)?;
    if last.is_empty() {
        return Some(ByteRange::From(first));
    }
    let last = number(last)?;
    (last >= first).then_some(ByteRange::Closed { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str) -> Option<ByteRange> {
        parse(Some(&HeaderValue::from_str(value).unwrap()))
    }

    #[test]
    fn parts_and_hints_parse_anything_else_is_ignored() {
        assert_eq!(range("bytes=100-199"), Some(ByteRange::Closed { first: 100, last: 199 }));
        assert_eq!(range("bytes=0-0"), Some(ByteRange::Closed { first: 0, last: 0 }));
        assert_eq!(range("bytes=4096-"), Some(ByteRange::From(4096)));
        for ignored in ["bytes=-500", "bytes=5-4", "bytes=0-1,5-9", "items=0-1", "bytes=a-b", "bytes=", "bytes=99999999999999999999-"] {
            assert_eq!(range(ignored), None, "{ignored}");
        }
        assert_eq!(parse(None), None);
        assert_eq!(ByteRange::Closed { first: 10, last: 99 }.end_within(50), 50);
        assert_eq!(ByteRange::From(10).end_within(50), 50);
    }
}
