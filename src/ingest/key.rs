//! Stream keys as encoders send them, and the public stream name each one maps to.
//!
//! The public name goes into viewer URLs (`/live/{stream}/manifest.mpd`), segment paths,
//! cache keys and logs, so it is a [`StreamId`]: RFC 3986 unreserved characters only, at
//! most 128 bytes, no leading '.', no "..". A key is the publish name, joined behind the
//! application instance when the URL had one (`rtmp://host/live/room/cam`: ffmpeg and
//! librtmp send app `live/room`, key `cam`; ingest passes `room/cam` here). Then:
//!
//! 1. `?query` is cut off: it is for publish authentication, never part of a name.
//! 2. While keys are required (`[ingest.keys]` or the key store; `crate::auth` decides),
//!    the key must be one of them (looked up as sent, then percent-decoded); its name is
//!    the one it maps to. The key is a secret: no error, log line, URL or status names it.
//! 3. Otherwise the key is percent-decoded and is itself the name: split at '/' into
//!    elements, each non-empty and not starting with '.', joined with '~' (`room/cam` is
//!    `room~cam`); '@', '=' and '+' (in user-style and base64 keys) become '-'. Any other
//!    character outside the name's set is refused with the character named. The mapping is
//!    not one-to-one (`room/cam` and `room~cam` are one stream), which costs nothing: without
//!    configured keys anyone may publish any name anyway.

use std::collections::BTreeMap;

use crate::media::{is_stream_char, IdError, StreamId, MAX_STREAM_ID_LEN};

/// What replaces '/' between the elements of an `app/room/cam` key.
pub const SEPARATOR: char = '~';

/// Why a key has no stream. No variant carries the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("stream key is empty")]
    Empty,
    #[error("stream key holds a malformed percent escape")]
    BadEscape,
    #[error("stream key is not UTF-8 once percent-decoded")]
    NotUtf8,
    #[error("stream key has an empty path element (\"//\", or a leading or trailing '/')")]
    EmptyElement,
    #[error("stream key has a path element that starts with '.'")]
    DotElement,
    #[error("stream key holds \"..\"")]
    DoubleDot,
    #[error(
        "stream key holds {0:?}, which no stream name carries (letters, digits, '.', '_', '~', '-'; \
         '/' becomes '~', '@', '=' and '+' become '-'); map such a key to a name in [ingest.keys]"
    )]
    BadCharacter(char),
    #[error("stream key makes a stream name longer than {MAX_STREAM_ID_LEN} bytes")]
    TooLong,
    #[error("stream key not recognised")]
    Unknown,
}

/// The key of a publish name and its query string, if it has one.
pub fn split_query(name: &str) -> (&str, Option<&str>) {
    match name.split_once('?') {
        Some((key, query)) => (key, Some(query)),
        None => (name, None),
    }
}

/// `%XX` escapes decoded; anything else kept as it is.
pub fn percent_decode(key: &str) -> Result<String, KeyError> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(KeyError::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| KeyError::BadEscape)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(KeyError::BadEscape);
            }
            out.push(u8::from_str_radix(hex, 16).map_err(|_| KeyError::BadEscape)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| KeyError::NotUtf8)
}

/// The public name of a key (without its query) when no keys are configured.
pub fn open_name(key: &str) -> Result<StreamId, KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    let decoded = percent_decode(key)?;
    let mut name = String::with_capacity(decoded.len());
    for (i, element) in decoded.split('/').enumerate() {
        if element.is_empty() {
            return Err(if decoded.is_empty() { KeyError::Empty } else { KeyError::EmptyElement });
        }
        if element.starts_with('.') {
            return Err(KeyError::DotElement);
        }
        if i > 0 {
            name.push(SEPARATOR);
        }
        for c in element.chars() {
            match c {
                '@' | '=' | '+' => name.push('-'),
                c if is_stream_char(c) => name.push(c),
                c => return Err(KeyError::BadCharacter(c)),
            }
        }
        if name.len() > MAX_STREAM_ID_LEN {
            return Err(KeyError::TooLong);
        }
    }
    StreamId::parse(&name).map_err(|e| match e {
        IdError::Empty => KeyError::Empty,
        IdError::TooLong(_) => KeyError::TooLong,
        // Every character was checked above; what is left is "..".
        _ => KeyError::DoubleDot,
    })
}

/// The stream a publish name (`key` or `key?query`) publishes: the configured name of its
/// key, or with no keys configured, the key's own name ([`open_name`]).
pub fn resolve(name: &str, keys: &BTreeMap<String, String>) -> Result<StreamId, KeyError> {
    let (key, _query) = split_query(name);
    if keys.is_empty() {
        return open_name(key);
    }
    let configured = keys.get(key).or_else(|| percent_decode(key).ok().and_then(|k| keys.get(&k)));
    // Configured names were validated at start-up; a bad one refuses like an unknown key.
    configured.and_then(|name| StreamId::parse(name).ok()).ok_or(KeyError::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open(key: &str) -> Result<String, KeyError> {
        resolve(key, &BTreeMap::new()).map(|s| s.to_string())
    }

    #[test]
    fn keys_encoders_send_map_to_names() {
        for (key, name) in [
            ("cam", "cam"),
            ("live_123_abcDEF", "live_123_abcDEF"),
            ("cam.1", "cam.1"),
            ("cam-1", "cam-1"),
            ("room/cam", "room~cam"),
            ("a/b/c", "a~b~c"),
            ("x~y", "x~y"),
            ("user@studio", "user-studio"),
            ("key=val", "key-val"),
            ("ab+cd==", "ab-cd--"),
            ("cam%2E1", "cam.1"),
            ("room%2Fcam", "room~cam"),
            ("phone?token=s3cr3t&x=/../", "phone"),
            ("cam.1?", "cam.1"),
            ("v1.2.3", "v1.2.3"),
        ] {
            assert_eq!(open(key).as_deref(), Ok(name), "{key:?}");
        }
        assert_eq!(open(&"x".repeat(128)).unwrap().len(), 128);
    }

    #[test]
    fn traversal_empty_elements_and_odd_bytes_are_refused() {
        for (key, error) in [
            ("", KeyError::Empty),
            ("?token=1", KeyError::Empty),
            ("..", KeyError::DotElement),
            (".", KeyError::DotElement),
            (".hidden", KeyError::DotElement),
            ("../etc/passwd", KeyError::DotElement),
            ("room/../cam", KeyError::DotElement),
            ("room/./cam", KeyError::DotElement),
            ("%2e%2e", KeyError::DotElement),
            ("%2E%2E%2Fetc", KeyError::DotElement),
            ("a..b", KeyError::DoubleDot),
            ("a//b", KeyError::EmptyElement),
            ("/cam", KeyError::EmptyElement),
            ("cam/", KeyError::EmptyElement),
            ("/", KeyError::EmptyElement),
            ("cam%", KeyError::BadEscape),
            ("cam%2", KeyError::BadEscape),
            ("cam%zz", KeyError::BadEscape),
            ("cam%ff", KeyError::NotUtf8),
            ("a b", KeyError::BadCharacter(' ')),
            ("a\\b", KeyError::BadCharacter('\\')),
            ("a%00b", KeyError::BadCharacter('\0')),
            ("a%5Cb", KeyError::BadCharacter('\\')),
            ("a:b", KeyError::BadCharacter(':')),
            ("mp4:cam", KeyError::BadCharacter(':')),
            ("a#b", KeyError::BadCharacter('#')),
            ("caméra", KeyError::BadCharacter('é')),
        ] {
            assert_eq!(open(key), Err(error), "{key:?}");
        }
        assert_eq!(open(&"x".repeat(129)), Err(KeyError::TooLong));
        assert_eq!(open(&format!("{}/{}", "x".repeat(64), "y".repeat(64))), Err(KeyError::TooLong));
    }

    #[test]
    fn configured_keys_map_to_their_names_and_nothing_else() {
        let keys: BTreeMap<String, String> = [
            ("s3cr3t.key/with@odd=chars+", "studio"),
            ("room/cam", "room-cam"),
            ("plain", "plain-name"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let name = |key: &str| resolve(key, &keys).map(|s| s.to_string());
        assert_eq!(name("s3cr3t.key/with@odd=chars+").as_deref(), Ok("studio"));
        assert_eq!(name("s3cr3t.key/with@odd=chars+?token=1").as_deref(), Ok("studio"));
        assert_eq!(name("s3cr3t.key%2Fwith%40odd%3Dchars%2B").as_deref(), Ok("studio"), "percent-encoded key");
        assert_eq!(name("room/cam").as_deref(), Ok("room-cam"));
        assert_eq!(name("plain?x=y").as_deref(), Ok("plain-name"));
        // Names are never keys: publishing under a public name (or an open-mode name) fails.
        for key in ["studio", "room~cam", "room-cam", "plain-name", "PLAIN", "", "plain/", "../plain"] {
            assert_eq!(name(key), Err(KeyError::Unknown), "{key:?}");
        }
    }

    proptest! {
        /// Whatever an encoder sends, a name is a valid StreamId that cannot step out of
        /// its URL element, or the key is refused.
        #[test]
        fn any_key_yields_a_safe_name_or_a_refusal(key in "[a-zA-Z0-9./%~_@=+?:# \\\\-]{0,140}|.{0,40}") {
            if let Ok(name) = resolve(&key, &BTreeMap::new()) {
                let name = name.as_str();
                prop_assert!(StreamId::parse(name).is_ok());
                prop_assert!(!name.is_empty() && name.len() <= MAX_STREAM_ID_LEN);
                prop_assert!(!name.starts_with('.') && !name.contains(".."), "{name:?}");
                prop_assert!(name.chars().all(is_stream_char), "{name:?}");
            }
        }

        /// Keys made of name characters and '/' map element by element.
        #[test]
        fn slash_keys_join_their_elements(elements in proptest::collection::vec("[a-zA-Z0-9_~-][a-zA-Z0-9._~-]{0,12}", 1..5)) {
            let key = elements.join("/");
            let expected = elements.join("~");
            match resolve(&key, &BTreeMap::new()) {
                Ok(name) => prop_assert_eq!(name.as_str(), expected.as_str()),
                Err(e) => prop_assert_eq!(e, KeyError::DoubleDot, "{:?}", key),
            }
        }

        /// With configured keys, a publish gets a configured name or "not recognised", and
        /// no refusal ever names the key.
        #[test]
        fn configured_keys_never_leak(secret in "[a-zA-Z0-9./@=+~_-]{6,40}", sent in "[a-zA-Z0-9./@=+~_%?-]{0,40}") {
            let keys = BTreeMap::from([(format!("K3Y{secret}"), "studio".to_owned())]);
            for publish in [format!("K3Y{secret}"), format!("K3Y{secret}?t=1"), sent.clone()] {
                match resolve(&publish, &keys) {
                    Ok(name) => prop_assert_eq!(name.as_str(), "studio"),
                    Err(e) => {
                        prop_assert_eq!(&e, &KeyError::Unknown);
                        prop_assert!(!e.to_string().contains(&secret));
                    }
                }
            }
        }
    }
}
