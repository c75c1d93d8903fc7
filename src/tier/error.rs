//! The caching tier's one error type, and the one place where an error becomes an HTTP
//! status. Upstream failures reach every coalesced waiter as the same `Arc<TierError>`.

use std::time::Duration;

use axum::http::StatusCode;

use crate::http::path::PathError;
use crate::media::StreamId;

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// Downstream: the viewer asked for a path no tier serves.
    #[error("bad request path: {0}")]
    BadPath(#[from] PathError),
    /// Upstream: the object does not exist there. Only raised where a 404 must not be cached
    /// (prefetch); a viewer's 404 is a cached negative entry, not an error.
    #[error("stream {stream}: {path} not found upstream")]
    NotFound { stream: StreamId, path: String },
    /// Internal: the resolver named no upstream for the stream.
    #[error("stream {stream}: no upstream to fetch from")]
    NoUpstream { stream: StreamId },
    /// Upstream: no TCP connection (refused, unreachable, connect time-out). The only fetch
    /// failure that may mark a node down: the node, not one object, is unreachable.
    #[error("stream {stream}: cannot connect to upstream {upstream}: {source}")]
    Connect {
        stream: StreamId,
        upstream: String,
        #[source]
        source: reqwest::Error,
    },
    /// Upstream: connected, then the connection was reset or the body broke off.
    #[error("stream {stream}: upstream {upstream} failed: {source}")]
    Transport {
        stream: StreamId,
        upstream: String,
        #[source]
        source: reqwest::Error,
    },
    /// Upstream: no complete answer within the fetch budget.
    #[error("stream {stream}: upstream {upstream} gave no answer within {after:?}")]
    Timeout { stream: StreamId, upstream: String, after: Duration },
    /// Upstream: a relayed body (one still being produced) stopped arriving for
    /// `tier.chunk_timeout`. Its viewers already had the head; they are cut off.
    #[error("stream {stream}: upstream {upstream} sent nothing more of {path} for {after:?}")]
    Stalled { stream: StreamId, upstream: String, path: String, after: Duration },
    /// Upstream: the answer's body is larger than `tier.max_body_bytes` (by its
    /// Content-Length or as it arrived).
    #[error("stream {stream}: upstream {upstream} sent more than {limit} bytes for {path}")]
    TooLarge { stream: StreamId, upstream: String, path: String, limit: u64 },
    /// Internal marker, never sent: the upstream's answer must not be cached (its
    /// Cache-Control says so). Its waiters get the answer itself, not this error.
    #[error("stream {stream}: the answer for {path} may not be stored")]
    NotStored { stream: StreamId, path: String },
    /// Upstream: it answered with a status other than 200 or 404.
    #[error("stream {stream}: upstream {upstream} answered {status}")]
    UpstreamStatus { stream: StreamId, upstream: String, status: u16 },
    /// Internal: the HTTP client could not be built.
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Internal: a fetch task died (panic or runtime shutdown).
    #[error("stream {stream}: fetch task failed: {reason}")]
    Task { stream: StreamId, reason: String },
    /// Start-up: a config value that cannot work, named by its key.
    #[error(transparent)]
    Config(#[from] crate::section::InvalidKey),
}

impl TierError {
    /// The status a viewer (or the next tier down) sees for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            TierError::BadPath(_) => StatusCode::BAD_REQUEST,
            TierError::NotFound { .. } | TierError::NotStored { .. } => StatusCode::NOT_FOUND,
            TierError::Timeout { .. } | TierError::Stalled { .. } => StatusCode::GATEWAY_TIMEOUT,
            TierError::NoUpstream { .. }
            | TierError::Connect { .. }
            | TierError::Transport { .. }
            | TierError::TooLarge { .. }
            | TierError::UpstreamStatus { .. } => StatusCode::BAD_GATEWAY,
            TierError::Client(_) | TierError::Task { .. } | TierError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether asking again (here, or at the next upstream) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TierError::Connect { .. }
                | TierError::Transport { .. }
                | TierError::Timeout { .. }
                | TierError::Stalled { .. }
                | TierError::UpstreamStatus { .. }
                | TierError::Task { .. }
        )
    }
}
