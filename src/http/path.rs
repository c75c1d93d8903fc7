//! Parsing of viewer request paths into store addresses. Pure; every element is validated
//! as an identifier, so no form of traversal or encoding trick reaches the store. Also a
//! media playlist's query: the LL-HLS delivery directives (a blocking reload, `_HLS_msn`
//! and `_HLS_part`; a delta update, `_HLS_skip`), the one query any path acts on. Other
//! parameters (a player's cache-buster, a token for a CDN in front) are ignored: a tier
//! keys its cache by the canonical directives alone, so that key space stays bounded.

use crate::media::{IdError, RenditionId, SessionId, StreamId};
use crate::store::{Part, Playlist};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPath {
    pub rendition: RenditionId,
    pub session: SessionId,
    pub part: Part,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("bad identifier: {0}")]
    Id(#[from] IdError),
    #[error("{0:?} is neither init-{{session}}.mp4 nor {{session}}-{{number}}.m4s")]
    FileName(String),
    #[error("bad playlist query {0:?}: _HLS_msn=N (optionally with _HLS_part=N) and _HLS_skip=YES or v2, each at most once")]
    Query(String),
}

/// An LL-HLS blocking playlist reload: answer once the playlist holds segment `msn` (part
/// `part` of it) or later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockingReload {
    pub msn: u64,
    pub part: Option<u64>,
}

/// What a media playlist's query asks for: a blocking reload, a delta update
/// (`_HLS_skip=YES`, or `v2`, the same here: rackcast writes no date ranges), both or none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlaylistQuery {
    pub reload: Option<BlockingReload>,
    pub skip: bool,
}

impl PlaylistQuery {
    /// The query that asks for it, in one canonical form (a tier's cache key and upstream
    /// request): empty for a plain request.
    pub fn canonical(&self) -> String {
        let mut directives = Vec::new();
        if let Some(reload) = self.reload {
            directives.push(format!("_HLS_msn={}", reload.msn));
            if let Some(part) = reload.part {
                directives.push(format!("_HLS_part={part}"));
            }
        }
        if self.skip {
            directives.push("_HLS_skip=YES".to_owned());
        }
        directives.join("&")
    }
}

/// A media playlist's query: its delivery directives (other parameters are ignored).
pub fn playlist_query(query: Option<&str>) -> Result<PlaylistQuery, PathError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else { return Ok(PlaylistQuery::default()) };
    let bad = || PathError::Query(query.chars().take(80).collect());
    let number = |value: &str| match value.len() {
        1..=19 if value.bytes().all(|b| b.is_ascii_digit()) => value.parse::<u64>().map_err(|_| bad()),
        _ => Err(bad()),
    };
    let (mut msn, mut part, mut skip) = (None, None, None);
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let seen = match name {
            "_HLS_msn" => msn.replace(number(value)?).is_some(),
            "_HLS_part" => part.replace(number(value)?).is_some(),
            "_HLS_skip" if matches!(value, "YES" | "v2") => skip.replace(()).is_some(),
            "_HLS_skip" => return Err(bad()),
            _ => continue,
        };
        if seen {
            return Err(bad());
        }
    }
    let reload = match (msn, part) {
        (Some(msn), part) => Some(BlockingReload { msn, part }),
        (None, Some(_)) => return Err(bad()),
        (None, None) => None,
    };
    Ok(PlaylistQuery { reload, skip: skip.is_some() })
}

pub fn stream(raw: &str) -> Result<StreamId, PathError> {
    Ok(StreamId::parse(raw)?)
}

/// `{stream}`, and `{rendition}` for a media playlist (the multivariant without).
pub fn playlist(stream: &str, rendition: Option<&str>) -> Result<(StreamId, Playlist), PathError> {
    let playlist = match rendition {
        Some(rendition) => Playlist::Media(RenditionId::parse(rendition)?),
        None => Playlist::Multivariant,
    };
    Ok((StreamId::parse(stream)?, playlist))
}

/// `{rendition}` and `init-{session}.mp4` or `{session}-{number}.m4s`.
pub fn object(rendition: &str, file: &str) -> Result<ObjectPath, PathError> {
    let rendition = RenditionId::parse(rendition)?;
    let bad = || PathError::FileName(file.chars().take(80).collect());
    if let Some(session) = file.strip_prefix("init-").and_then(|f| f.strip_suffix(".mp4")) {
        return Ok(ObjectPath { rendition, session: SessionId::parse(session)?, part: Part::Init });
    }
    let stem = file.strip_suffix(".m4s").ok_or_else(bad)?;
    let (session, number) = stem.rsplit_once('-').ok_or_else(bad)?;
    if number.is_empty() || number.len() > 19 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let number = number.parse().map_err(|_| bad())?;
    Ok(ObjectPath { rendition, session: SessionId::parse(session)?, part: Part::Media(number) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delivery_directive_queries() {
        let parse = |q| playlist_query(Some(q));
        assert_eq!(playlist_query(None), Ok(PlaylistQuery::default()));
        assert_eq!(parse(""), Ok(PlaylistQuery::default()));
        assert_eq!(parse("_HLS_msn=12").unwrap().reload, Some(BlockingReload { msn: 12, part: None }));
        let both = parse("_HLS_part=3&_HLS_msn=12").unwrap();
        assert_eq!((both.reload, both.canonical().as_str()), (Some(BlockingReload { msn: 12, part: Some(3) }), "_HLS_msn=12&_HLS_part=3"));
        let delta = parse("_HLS_skip=YES").unwrap();
        assert_eq!((delta.reload, delta.skip, delta.canonical().as_str()), (None, true, "_HLS_skip=YES"));
        assert_eq!(parse("_HLS_skip=v2&_HLS_part=0&_HLS_msn=7").unwrap().canonical(), "_HLS_msn=7&_HLS_part=0&_HLS_skip=YES");
        for bad in ["_HLS_part=1", "_HLS_msn=-1", "_HLS_msn=1&_HLS_msn=2", "_HLS_msn", "_HLS_msn=99999999999999999999", "_HLS_msn=+1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        for bad in ["_HLS_skip=NO", "_HLS_skip", "_HLS_skip=YES&_HLS_skip=YES", "_HLS_skip=yes"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        // Other parameters are ignored, so the canonical query (a tier's key) stays bounded.
        assert_eq!(parse("t=5&_HLS_msn=1").unwrap().canonical(), "_HLS_msn=1");
        assert_eq!(parse("nocache=123&token"), Ok(PlaylistQuery::default()));
    }

    #[test]
    fn init_and_media_names() {
        let p = object("720p", "init-abc123.mp4").unwrap();
        assert_eq!((p.rendition.as_str(), p.session.as_str(), p.part), ("720p", "abc123", Part::Init));
        let p = object("audio", "abc-12.m4s").unwrap();
        assert_eq!((p.session.as_str(), p.part), ("abc", Part::Media(12)));
    }

    #[test]
    fn refuses_malformed_and_traversal() {
        for (rendition, file) in [
            ("..", "init-a.mp4"),
            ("720p", "init-.mp4"),
            ("720p", "init-a/../b.mp4"),
            ("720p", "a-1.mp4"),
            ("720p", "a-.m4s"),
            ("720p", "a-+1.m4s"),
            ("720p", "a-99999999999999999999.m4s"),
            ("720p", "12.m4s"),
            ("720p", "..-1.m4s"),
            ("7 20p", "a-1.m4s"),
        ] {
            assert!(object(rendition, file).is_err(), "{rendition}/{file}");
        }
        assert!(stream("..").is_err());
        assert!(stream("%2e%2e").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(rendition in ".{0,20}", file in ".{0,40}") {
            let _ = object(&rendition, &file);
        }
    }
}
