//! The bounded HTTP edge: the accept loop every node serves HTTP through (app.rs), whatever
//! its roles. Owns the limits of the viewer-facing side as one layer in front of the
//! routers: the connection cap (a semaphore; a connection over it is closed at accept),
//! one watchdog per connection (header-read and idle time-outs), the request time-out,
//! hyper's HTTP/1.1 settings (header size), graceful shutdown, and the edge's metrics
//! ([`HttpEdgeMetrics`]). Handlers never see any of it.
//!
//! Why not `axum::serve`: it exposes none of hyper's settings and has no connection cap.
//! Why a watchdog rather than hyper's `header_read_timeout`: hyper (1.12) starts that timer
//! when a connection goes idle, not at the first byte of a head, so one setting would be
//! both the keep-alive time-out and the slowloris bound; here each has its own. Why
//! HTTP/1.1 only: viewers reach us over plain HTTP, where browsers and players never use
//! h2c, and tier peers (reqwest without its http2 feature) speak HTTP/1.1; every limit here
//! is shaped for it.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::config::{HttpConfig, MIN_HEADER_BYTES};
use crate::metrics::common::register_counters;
use crate::warn_limiter::WarnLimiter;

/// After shutdown is requested, connections get this long to finish their responses before
/// they are dropped. The app stops HTTP last, after its `cluster.drain_grace`, so that
/// `/ready` answers 503 (and streams are still served) while the node drains.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (typically out of file descriptors), so the loop does not
/// spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The edge's metrics (`rackcast_http_edge_*`), registered once in the node's registry
/// ([`HttpEdgeMetrics::register`]); the warnings of each limit are rate limited beside them.
#[derive(Debug, Default)]
pub struct HttpEdgeMetrics {
    pub accepted: Counter,
    /// Connections open now.
    pub open: Gauge,
    /// `http.max_connections`, set when serving starts.
    pub max_connections: Gauge,
    /// Closed at accept because `max_connections` were open.
    pub refused: Counter,
    /// Closed because a request head did not arrive within `header_read_timeout`.
    pub header_timeouts: Counter,
    /// Closed after `idle_timeout` without a request in progress or a byte moved.
    pub idle_closed: Counter,
    pub requests: Counter,
    /// Handlers that ran past `request_timeout` (answered 503).
    pub request_timeouts: Counter,
    /// Malformed or oversized request heads (hyper answered 400 / 431 and closed).
    pub bad_requests: Counter,
    pub accept_errors: Counter,
    warn_refused: WarnLimiter,
    warn_header: WarnLimiter,
    warn_request: WarnLimiter,
    warn_accept: WarnLimiter,
}

impl HttpEdgeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("http_edge");
        register_counters(
            registry,
            &[
                ("accepted", "HTTP connections accepted", &self.accepted),
                ("refused", "HTTP connections closed at accept because http.max_connections were open", &self.refused),
                ("header_timeouts", "HTTP connections closed because a request head did not arrive within http.header_read_timeout", &self.header_timeouts),
                ("idle_closed", "HTTP connections closed after http.idle_timeout without a request or a byte moved", &self.idle_closed),
                ("requests", "HTTP requests received", &self.requests),
                ("request_timeouts", "HTTP requests answered 503 after http.request_timeout", &self.request_timeouts),
                ("bad_requests", "Malformed or oversized HTTP request heads (answered 400 or 431, connection closed)", &self.bad_requests),
                ("accept_errors", "Failed accepts (typically out of file descriptors)", &self.accept_errors),
            ],
        );
        registry.register("open", "HTTP connections open", self.open.clone());
        registry.register("max_connections", "HTTP connections allowed at once (http.max_connections)", self.max_connections.clone());
    }
}

/// The time-outs one connection's watchdog enforces.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header: Duration,
    request: Duration,
    idle: Duration,
}

/// Everything a connection task needs; cloned per connection.
#[derive(Clone)]
struct Shared {
    router: Router,
    builder: http1::Builder,
    limits: Limits,
    metrics: Arc<HttpEdgeMetrics>,
    shutdown: CancellationToken,
    /// Cancelled when the drain grace is over: connections still open are dropped.
    force: CancellationToken,
}

/// Serves `router` on `listener` within `config`'s limits until `shutdown` is cancelled;
/// then stops accepting, lets open connections finish their responses (idle ones close at
/// once) for up to [`DRAIN_GRACE`], and returns.
pub async fn serve(listener: TcpListener, router: Router, config: HttpConfig, metrics: Arc<HttpEdgeMetrics>, shutdown: CancellationToken) {
    let mut builder = http1::Builder::new();
    builder
        .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BYTES))
        .max_header_size(config.max_header_bytes)
        .keep_alive(true);
    let shared = Shared {
        router,
        builder,
        limits: Limits { header: config.header_read_timeout, request: config.request_timeout, idle: config.idle_timeout },
        metrics: Arc::clone(&metrics),
        shutdown: shutdown.clone(),
        force: CancellationToken::new(),
    };
    metrics.max_connections.set(i64::try_from(config.max_connections).unwrap_or(i64::MAX));
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                metrics.accept_errors.inc();
                if let Some(held) = metrics.warn_accept.allow() {
                    tracing::warn!(error = %e, held_back = held, "HTTP accept failed");
                }
                // Aborted handshakes are the client's business; anything else (EMFILE,
                // ENOBUFS) lasts a while, so back off instead of spinning on it.
                if !matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics.refused.inc();
            if let Some(held) = metrics.warn_refused.allow() {
                tracing::warn!(%peer, max_connections = config.max_connections, held_back = held, "HTTP connection refused: at the connection cap");
            }
            // Closed without reading: a client over the cap gets no slot, not even for a 503.
            drop(stream);
            continue;
        };
        metrics.accepted.inc();
        metrics.open.inc();
        // Small responses (MPDs, the clock) go out at once instead of waiting for an ACK.
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(stream, peer, permit, shared.clone()));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_GRACE, connections.wait()).await.is_err() {
        tracing::warn!(open = metrics.open.get(), "HTTP connections still open after {DRAIN_GRACE:?}; dropping them");
        shared.force.cancel();
        connections.wait().await;
    }
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Header,
    Idle,
}

/// Holds a connection's slot: gives the permit back and lowers the open gauge however the
/// connection task ends, a panic included.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<HttpEdgeMetrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit, shared: Shared) {
    let _slot = Slot { _permit: permit, metrics: Arc::clone(&shared.metrics) };
    let watch = Arc::new(Watch::new());
    let io = TokioIo::new(Watched { inner: stream, watch: Arc::clone(&watch) });
    let service = {
        let (watch, router, metrics, limit) = (Arc::clone(&watch), shared.router.clone(), Arc::clone(&shared.metrics), shared.limits.request);
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            metrics.requests.inc();
            // Handlers that need the client's address take `ConnectInfo<SocketAddr>`.
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            let handler = HandlerGuard::start(Arc::clone(&watch));
            let path = request.uri().path().to_owned();
            let response = router.clone().oneshot(request);
            let metrics = Arc::clone(&metrics);
            async move {
                let _handler = handler;
                match tokio::time::timeout(limit, response).await {
                    Ok(Ok(response)) => Ok::<_, Infallible>(response),
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        metrics.request_timeouts.inc();
                        if let Some(held) = metrics.warn_request.allow() {
                            tracing::warn!(%peer, path, timeout = ?limit, held_back = held, "HTTP request timed out");
                        }
                        Ok((StatusCode::SERVICE_UNAVAILABLE, [(header::CACHE_CONTROL, "no-store")], "request timed out\n").into_response())
                    }
                }
            }
        })
    };
    let conn = shared.builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = watch.deadline(&shared.limits);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.is_parse() || e.is_parse_too_large() {
                        shared.metrics.bad_requests.inc();
                    }
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            _ = shared.shutdown.cancelled(), if !draining => {
                // Idle connections close now; one mid-response finishes it first.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = shared.force.cancelled() => break,
            _ = watch.changed.notified() => {}
            _ = tokio::time::sleep_until(deadline) => match watch.expired(&shared.limits) {
                Some(Expired::Header) => {
                    shared.metrics.header_timeouts.inc();
                    if let Some(held) = shared.metrics.warn_header.allow() {
                        tracing::warn!(%peer, timeout = ?shared.limits.header, held_back = held, "HTTP connection closed: request head not received in time");
                    }
                    break;
                }
                Some(Expired::Idle) => {
                    shared.metrics.idle_closed.inc();
                    tracing::debug!(%peer, "HTTP connection closed: idle");
                    break;
                }
                None => {}
            },
        }
    }
    // Returning drops the hyper connection, which closes the socket, then the slot.
}

/// What one connection is doing, as its I/O and its handlers report it; the connection's
/// watchdog reads it. Times are milliseconds since the connection was accepted.
struct Watch {
    base: Instant,
    /// Last time a byte was read or written.
    last_io: AtomicU64,
    /// When the first byte of a request head arrived, plus one; 0 while no head is in
    /// progress.
    head_since: AtomicU64,
    /// Handlers running (head received, response not yet produced).
    handlers: AtomicU32,
    /// Wakes the watchdog when its deadline may have moved earlier.
    changed: Notify,
}

impl Watch {
    fn new() -> Self {
        Self { base: Instant::now(), last_io: AtomicU64::new(0), head_since: AtomicU64::new(0), handlers: AtomicU32::new(0), changed: Notify::new() }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    fn read(&self) {
        self.read_at(self.now());
    }

    fn read_at(&self, now: u64) {
        self.last_io.store(now, Ordering::Relaxed);
        // Bytes with no handler running start (or continue) a request head. Bytes read
        // while a handler runs are a pipelined head; it starts being timed once the handler
        // is done and the client sends more, or falls under the idle rule if it sends none.
        if self.handlers.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(now + 1, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    /// A complete request head reached a handler.
    fn handler_started(&self) {
        self.head_since.store(0, Ordering::Relaxed);
        self.handlers.fetch_add(1, Ordering::Relaxed);
    }

    /// The handler produced its response (or was dropped); idle time counts from here.
    fn handler_done_at(&self, now: u64) {
        self.last_io.store(now, Ordering::Relaxed);
        self.handlers.fetch_sub(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// When the watchdog should look again.
    fn deadline(&self, limits: &Limits) -> Instant {
        self.base + Duration::from_millis(self.deadline_at(self.now(), limits))
    }

    fn deadline_at(&self, now: u64, limits: &Limits) -> u64 {
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            return head - 1 + millis(limits.header);
        }
        if self.handlers.load(Ordering::Relaxed) > 0 {
            // The request time-out bounds a handler, and its end wakes the watchdog.
            return now + millis(limits.idle);
        }
        self.last_io.load(Ordering::Relaxed) + millis(limits.idle)
    }

    fn expired(&self, limits: &Limits) -> Option<Expired> {
        self.expired_at(self.now(), limits)
    }

    fn expired_at(&self, now: u64, limits: &Limits) -> Option<Expired> {
        let head = self.head_since.load(Ordering::Relaxed);
        if head != 0 {
            return (now >= head - 1 + millis(limits.header)).then_some(Expired::Header);
        }
        let idle = self.handlers.load(Ordering::Relaxed) == 0 && now >= self.last_io.load(Ordering::Relaxed) + millis(limits.idle);
        idle.then_some(Expired::Idle)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

/// Marks a handler running from the complete request head until its response is produced
/// (or the request is dropped).
struct HandlerGuard(Arc<Watch>);

impl HandlerGuard {
    fn start(watch: Arc<Watch>) -> Self {
        watch.handler_started();
        Self(watch)
    }
}

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        self.0.handler_done_at(self.0.now());
    }
}

/// A socket that reports its reads and writes to the connection's [`Watch`].
struct Watched {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.wrote();
        }
        result
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.wrote();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;


    async fn raw(addr: SocketAddr, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await.expect("an answer within 5 s");
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn slow_handlers_get_503_long_heads_431_and_shutdown_returns() {
        let router = Router::new()
            .route("/slow", axum::routing::get(|| async { tokio::time::sleep(Duration::from_secs(10)).await }))
            .route("/fast", axum::routing::get(|| async { "fast" }));
        let config = HttpConfig { request_timeout: Duration::from_millis(300), max_header_bytes: MIN_HEADER_BYTES, ..HttpConfig::default() };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(HttpEdgeMetrics::default());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, config, Arc::clone(&metrics), shutdown.clone()));

        let t0 = std::time::Instant::now();
        let slow = raw(addr, "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(slow.starts_with("HTTP/1.1 503"), "{slow}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(metrics.request_timeouts.get(), 1);

        let long = format!("GET /fast HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n", "a".repeat(2 * MIN_HEADER_BYTES));
        let answer = raw(addr, &long).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        assert_eq!(metrics.bad_requests.get(), 1);

        let fast = raw(addr, "GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(fast.starts_with("HTTP/1.1 200") && fast.ends_with("fast"), "{fast}");

        // An idle keep-alive connection does not hold shutdown up.
        let _idle = TcpStream::connect(addr).await.unwrap();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), server).await.expect("serve returns soon after shutdown").unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
    }

    #[tokio::test]
    async fn heads_are_timed_from_their_first_byte_and_idleness_from_the_last_response() {
        let limits = Limits { header: Duration::from_secs(2), request: Duration::from_secs(30), idle: Duration::from_secs(5) };
        let watch = Watch::new();
        assert_eq!(watch.deadline_at(0, &limits), 5000, "a silent new connection is idle from accept");
        assert_eq!(watch.expired_at(4999, &limits), None);
        assert_eq!(watch.expired_at(5000, &limits), Some(Expired::Idle));

        let watch = Watch::new();
        watch.read_at(1000);
        assert_eq!(watch.deadline_at(1000, &limits), 3000, "the head's deadline runs from its first byte");
        watch.read_at(2500);
        assert_eq!(watch.expired_at(2999, &limits), None, "more bytes do not extend it");
        assert_eq!(watch.expired_at(3000, &limits), Some(Expired::Header));

        let watch = Watch::new();
        watch.read_at(100);
        watch.handler_started();
        assert_eq!(watch.expired_at(60_000, &limits), None, "a running handler is neither a slow head nor idle");
        assert_eq!(watch.deadline_at(60_000, &limits), 65_000);
        watch.handler_done_at(60_000);
        assert_eq!(watch.expired_at(64_999, &limits), None);
        assert_eq!(watch.expired_at(65_000, &limits), Some(Expired::Idle));
        watch.read_at(64_000);
        assert_eq!(watch.deadline_at(64_000, &limits), 66_000, "the next head is timed again");
    }
}
