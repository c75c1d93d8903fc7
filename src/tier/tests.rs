//! Tier tests over real HTTP on 127.0.0.1: an axum "upstream" that counts requests per path
//! and can delay, fail or 404; the tier router on another port; a reqwest client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::*;
use crate::http::{HLS_CONTENT_TYPE, IMMUTABLE, MANIFEST_CACHE, MPD_CONTENT_TYPE, SEGMENT_CONTENT_TYPE};

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Held by each test that runs 1,000 viewers, so two never share the cores: one's figures
/// (and the relative bounds some assert) would measure the other.
static THOUSAND_VIEWERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Default)]
struct UpstreamState {
    objects: Mutex<HashMap<String, Bytes>>,
    delays: Mutex<HashMap<String, Duration>>,
    /// When set, every request is answered with this status.
    fail: Mutex<Option<StatusCode>>,
    counts: Mutex<HashMap<String, u64>>,
    /// After its delay, a request for a gated path also waits for the gate to open.
    gates: Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    /// When each path was last answered.
    answered: Mutex<HashMap<String, Instant>>,
    /// Cache-Control of 404s; `no-store` (what the live node sends for a missing segment)
    /// when unset.
    not_found_cache: Mutex<Option<&'static str>>,
    /// Paths whose bodies are sent chunked, without a Content-Length.
    chunked: Mutex<std::collections::HashSet<String>>,
    /// Paths answered at once, 200 and chunked, with what the test feeds (one request
    /// each): the live node's answer for a segment still being encoded.
    live: Mutex<HashMap<String, mpsc::Receiver<Result<Bytes, std::io::Error>>>>,
}

/// The test's end of a live answer: each `send` is one chunk on the wire; `break_off`
/// aborts the response (no terminating chunk); dropping it ends the body.
struct Feed(mpsc::Sender<Result<Bytes, std::io::Error>>);

impl Feed {
    async fn send(&self, chunk: &Bytes) {
        self.0.send(Ok(chunk.clone())).await.expect("the upstream reads its feed");
    }
    async fn break_off(self) {
        let _ = self.0.send(Err(std::io::Error::other("encoder gone"))).await;
    }
}

struct Upstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
}

impl Upstream {
    async fn start() -> Self {
        let state = Arc::new(UpstreamState::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(upstream_handler).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn put(&self, path: &str, body: impl Into<Bytes>) {
        self.state.objects.lock().insert(path.to_owned(), body.into());
    }
    fn delay(&self, path: &str, delay: Duration) {
        self.state.delays.lock().insert(path.to_owned(), delay);
    }
    fn fail_with(&self, status: Option<StatusCode>) {
        *self.state.fail.lock() = status;
    }
    /// Holds answers for `path` until the returned sender sends `true`.
    fn gate(&self, path: &str) -> tokio::sync::watch::Sender<bool> {
        let (open, gate) = tokio::sync::watch::channel(false);
        self.state.gates.lock().insert(path.to_owned(), gate);
        open
    }
    fn answered(&self, path: &str) -> Option<Instant> {
        self.state.answered.lock().get(path).copied()
    }
    fn count(&self, path: &str) -> u64 {
        self.state.counts.lock().get(path).copied().unwrap_or(0)
    }
    fn not_found_cache(&self, value: &'static str) {
        *self.state.not_found_cache.lock() = Some(value);
    }
    fn chunked(&self, path: &str) {
        self.state.chunked.lock().insert(path.to_owned());
    }
    fn live(&self, path: &str) -> Feed {
        let (feed, chunks) = mpsc::channel(16);
        self.state.live.lock().insert(path.to_owned(), chunks);
        Feed(feed)
    }
}

async fn upstream_handler(State(state): State<Arc<UpstreamState>>, uri: Uri) -> Response {
    let path = uri.path().to_owned();
    *state.counts.lock().entry(path.clone()).or_default() += 1;
    let delay = state.delays.lock().get(&path).copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let gate = state.gates.lock().get(&path).cloned();
    if let Some(mut gate) = gate {
        let _ = gate.wait_for(|open| *open).await;
    }
    state.answered.lock().insert(path.clone(), Instant::now());
    let feed = state.live.lock().remove(&path);
    if let Some(mut feed) = feed {
        let body = axum::body::Body::from_stream(futures_util::stream::poll_fn(move |cx| feed.poll_recv(cx)));
        return (StatusCode::OK, [(header::CONTENT_TYPE, SEGMENT_CONTENT_TYPE), (header::CACHE_CONTROL, IMMUTABLE)], body).into_response();
    }
    if let Some(status) = *state.fail.lock() {
        return (status, "upstream failure\n").into_response();
    }
    let body = state.objects.lock().get(&path).cloned();
    if let Some(body) = body.clone().filter(|_| state.chunked.lock().contains(&path)) {
        let chunks: Vec<Result<Bytes, std::io::Error>> = body.chunks(16 * 1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
        return (StatusCode::OK, [(header::CONTENT_TYPE, SEGMENT_CONTENT_TYPE), (header::CACHE_CONTROL, IMMUTABLE)], body).into_response();
    }
    let not_found_cache = state.not_found_cache.lock().unwrap_or("no-store");
    match body {
        Some(body) if path.ends_with(".mpd") => {
            (StatusCode::OK, [(header::CONTENT_TYPE, MPD_CONTENT_TYPE), (header::CACHE_CONTROL, MANIFEST_CACHE)], body).into_response()
        }
        Some(body) if path.ends_with(".m3u8") => {
            (StatusCode::OK, [(header::CONTENT_TYPE, HLS_CONTENT_TYPE), (header::CACHE_CONTROL, MANIFEST_CACHE)], body).into_response()
        }
        Some(body) => (StatusCode::OK, [(header::CONTENT_TYPE, SEGMENT_CONTENT_TYPE), (header::CACHE_CONTROL, IMMUTABLE)], body).into_response(),
        None => (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, not_found_cache)], "no such object\n").into_response(),
    }
}

/// Accepts TCP connections and never answers.
async fn hung_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

/// Accepts TCP connections, reads the request and hangs up without answering: a broken
/// connection after a successful connect.
async fn resetting_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
            });
        }
    });
    format!("http://{addr}")
}

/// A port with nothing listening: connections are refused.
fn closed_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[derive(Default)]
struct RecordingResolver {
    upstreams: Vec<String>,
    failed: Mutex<Vec<String>>,
}

impl UpstreamResolver for RecordingResolver {
    fn upstreams(&self, _stream: &StreamId) -> Vec<String> {
        self.upstreams.clone()
    }
    fn connect_failed(&self, base: &str) {
        self.failed.lock().push(base.to_owned());
    }
}

async fn start_tier_with(config: TierConfig, resolver: Arc<dyn UpstreamResolver>) -> (TierState, String) {
    let state = TierState::new(config, resolver).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, format!("http://{addr}"))
}

async fn start_tier(config: TierConfig, upstreams: Vec<String>) -> (TierState, String) {
    start_tier_with(config, Arc::new(StaticUpstreams(upstreams))).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(usize::MAX).build().unwrap()
}

struct Got {
    status: StatusCode,
    cache: String,
    body: Bytes,
}

async fn get(client: &reqwest::Client, url: &str) -> Got {
    let response = client.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let cache = response.headers().get("x-cache-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = response.bytes().await.unwrap_or_else(|e| panic!("body of {url}: {e}"));
    Got { status, cache, body }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, future).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

struct Viewer {
    status: StatusCode,
    cache: String,
    same_bytes: bool,
    /// Response head received, last byte received.
    head: Instant,
    done: Instant,
}

/// `viewers` concurrent GETs of `url`, each checking the body against `expected` chunk by
/// chunk as it arrives (collecting 1,000 copies of 200 KB would make the test client, not
/// the tier, the cost being measured).
async fn burst(client: &reqwest::Client, url: &str, expected: &Bytes, viewers: usize) -> Vec<Viewer> {
    let tasks: Vec<_> = (0..viewers)
        .map(|_| {
            let (client, url, expected) = (client.clone(), url.to_owned(), expected.clone());
            tokio::spawn(async move {
                let mut response = client.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
                let head = Instant::now();
                let cache = response.headers().get("x-cache-status").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let (mut offset, mut same) = (0, true);
                while let Some(chunk) = response.chunk().await.unwrap_or_else(|e| panic!("body of {url}: {e}")) {
                    same &= expected.get(offset..offset + chunk.len()) == Some(&chunk[..]);
                    offset += chunk.len();
                }
                Viewer { status: response.status(), cache, same_bytes: same && offset == expected.len(), head, done: Instant::now() }
            })
        })
        .collect();
    within("a burst of viewers", join_all(tasks)).await.into_iter().map(|r| r.expect("viewer task")).collect()
}

/// p50, p99 and max of `times` since `since`.
fn spread(times: impl Iterator<Item = Instant>, since: Instant) -> [Duration; 3] {
    let mut sorted: Vec<Duration> = times.map(|t| t.saturating_duration_since(since)).collect();
    sorted.sort();
    [percentile(&sorted, 0.5), percentile(&sorted, 0.99), sorted[sorted.len() - 1]]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_misses_make_one_upstream_request() {
    let _alone = THOUSAND_VIEWERS.lock().await;
    const VIEWERS: usize = 1000;
    const DELAY: Duration = Duration::from_millis(300);
    let upstream = Upstream::start().await;
    let path = "/live/cam/720p/abc-1.m4s";
    let body = Bytes::from((0..200 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    upstream.put(path, body.clone());
    upstream.delay(path, DELAY);
    let (tier, base) = start_tier(TierConfig::default(), vec![upstream.base()]).await;
    let client = client();
    let url = format!("{base}{path}");

    // Open the viewers' connections and grow their TCP windows first (a fresh loopback
    // socket starts with a 16 KB send buffer): the figure wanted is the cache's, not that of
    // 1,000 handshakes and slow starts on two cores.
    let warm = "/live/cam/720p/abc-0.m4s";
    upstream.put(warm, body.clone());
    burst(&client, &format!("{base}{warm}"), &body, VIEWERS).await;
    let counters_before = tier.counts();

    // All 1,000 must be waiting before the upstream answers (else late ones are honest
    // hits): the upstream holds its answer for DELAY and until the tier has counted them.
    let open = upstream.gate(path);
    let burst_start = Instant::now();
    let viewers = tokio::spawn({
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move { burst(&client, &url, &body, VIEWERS).await }
    });
    within("1,000 requests waiting on the flight", async {
        while tier.flights.waiting(path) < VIEWERS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    open.send_replace(true);
    let coalesced = within("1,000 viewers", viewers).await.expect("viewers");
    let answered = upstream.answered(path).expect("upstream answered");
    assert!(coalesced.iter().all(|v| v.status == StatusCode::OK && v.same_bytes), "every viewer gets 200 and the same bytes");
    let mut statuses: HashMap<&str, usize> = HashMap::new();
    for viewer in &coalesced {
        *statuses.entry(viewer.cache.as_str()).or_default() += 1;
    }
    assert_eq!(upstream.count(path), 1, "one upstream request for 1,000 viewers");
    assert_eq!(statuses.get("miss"), Some(&1), "{statuses:?}");
    assert_eq!(statuses.get("coalesced"), Some(&(VIEWERS - 1)), "{statuses:?}");
    let metrics = tier.counts();
    let delta = |now: u64, before: u64| now - before;
    assert_eq!(
        (
            delta(metrics.upstream_requests, counters_before.upstream_requests),
            delta(metrics.misses, counters_before.misses),
            delta(metrics.coalesced, counters_before.coalesced)
        ),
        (1, 1, VIEWERS as u64 - 1)
    );

    // The same burst again, now all hits: the cost of moving 1,000 x 200 KB through
    // loopback on these cores (client included), with no coalescing involved.
    let hits_start = Instant::now();
    let hits = burst(&client, &url, &body, VIEWERS).await;
    assert!(hits.iter().all(|v| v.status == StatusCode::OK && v.same_bytes && v.cache == "hit"));
    assert_eq!(upstream.count(path), 1);

    let [head50, head99, _] = spread(coalesced.iter().map(|v| v.head), answered);
    let [done50, done99, done_max] = spread(coalesced.iter().map(|v| v.done), answered);
    let [hit50, hit99, hit_max] = spread(hits.iter().map(|v| v.done), hits_start);
    println!(
        "{VIEWERS} viewers x 200 KB, upstream answer held {:.1?}. Coalesced, after the upstream's answer: head p50 {head50:.1?} p99 {head99:.1?}; \
         last byte p50 {done50:.1?} p99 {done99:.1?} max {done_max:.1?}. Same burst as hits: last byte p50 {hit50:.1?} p99 {hit99:.1?} max {hit_max:.1?}",
        answered - burst_start
    );
    // Waiters are woken together, not polled: past the upstream's answer they take about
    // what serving the same burst from cache takes, at the median and at p99 (bounds
    // relative to the hits measured in the same run, so they hold on a fast or a slow,
    // busy machine; polling would put the median near half the poll interval).
    assert!(done50 < hit50 * 2 + Duration::from_millis(50), "coalesced p50 {done50:?} after the answer vs hits p50 {hit50:?}");
    assert!(done99 < hit99 * 2 + Duration::from_millis(100), "coalesced p99 {done99:?} after the answer vs hits p99 {hit99:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_reaches_every_waiter_and_is_not_cached() {
    const WAITERS: usize = 100;
    let upstream = Upstream::start().await;
    let path = "/live/cam/720p/abc-2.m4s";
    upstream.put(path, "bytes");
    upstream.delay(path, Duration::from_millis(200));
    upstream.fail_with(Some(StatusCode::INTERNAL_SERVER_ERROR));
    let (tier, base) = start_tier(TierConfig::default(), vec![upstream.base()]).await;
    let client = client();
    let url = format!("{base}{path}");

    let t0 = Instant::now();
    let tasks: Vec<_> = (0..WAITERS)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { (get(&client, &url).await, t0.elapsed()) })
        })
        .collect();
    let results: Vec<_> = within("waiters", join_all(tasks)).await.into_iter().map(Result::unwrap).collect();
    let mut done: Vec<Duration> = results.iter().map(|(_, t)| *t).collect();
    done.sort();
    let spread = done[WAITERS - 1] - done[0];
    println!("upstream 500 to {WAITERS} waiters: first answer at {:?}, last at {:?}", done[0], done[WAITERS - 1]);
    assert!(results.iter().all(|(got, _)| got.status == StatusCode::BAD_GATEWAY));
    assert_eq!(results.iter().filter(|(got, _)| got.cache == "miss").count(), 1);
    assert_eq!(upstream.count(path), 1);
    assert!(spread < Duration::from_millis(150), "waiters answered together, spread {spread:?}");

    let next = get(&client, &url).await;
    assert_eq!((next.status, next.cache.as_str()), (StatusCode::BAD_GATEWAY, "miss"));
    assert_eq!(upstream.count(path), 2, "an error is not cached");
    assert_eq!(tier.counts().upstream_errors, 2);

    upstream.fail_with(None);
    upstream.delay(path, Duration::ZERO);
    let healed = get(&client, &url).await;
    assert_eq!((healed.status, healed.body.as_ref()), (StatusCode::OK, b"bytes".as_ref()));
}

#[tokio::test]
async fn upstream_404_is_cached_briefly() {
    let upstream = Upstream::start().await;
    // What the live node sends for a stream it does not have.
    upstream.not_found_cache(crate::http::UNKNOWN_STREAM_CACHE);
    let config = TierConfig { negative_ttl: Duration::from_millis(300), ..TierConfig::default() };
    let (_tier, base) = start_tier(config, vec![upstream.base()]).await;
    let client = client();
    let path = "/live/ghost/manifest.mpd";
    let url = format!("{base}{path}");

    let first = get(&client, &url).await;
    assert_eq!((first.status, first.cache.as_str()), (StatusCode::NOT_FOUND, "miss"));
    let second = get(&client, &url).await;
    assert_eq!((second.status, second.cache.as_str()), (StatusCode::NOT_FOUND, "hit"));
    assert_eq!(upstream.count(path), 1);

    tokio::time::sleep(Duration::from_millis(400)).await;
    let third = get(&client, &url).await;
    assert_eq!((third.status, third.cache.as_str()), (StatusCode::NOT_FOUND, "miss"));
    assert_eq!(upstream.count(path), 2);
}

#[tokio::test]
async fn dead_upstreams_fail_fast_and_fail_over() {
    let timeout = Duration::from_millis(500);
    let config = TierConfig { request_timeout: timeout, ..TierConfig::default() };
    let client = client();
    let path = "/live/cam/720p/abc-3.m4s";

    let (_tier, base) = start_tier(config.clone(), vec![hung_upstream().await]).await;
    let t0 = Instant::now();
    let hung = get(&client, &format!("{base}{path}")).await;
    let hung_after = t0.elapsed();
    println!("hung upstream: {} after {hung_after:?} (budget {timeout:?})", hung.status);
    assert_eq!(hung.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(hung_after >= timeout && hung_after < timeout + Duration::from_millis(400), "{hung_after:?}");

    let (_tier, base) = start_tier(config.clone(), vec![closed_upstream()]).await;
    let t0 = Instant::now();
    let refused = get(&client, &format!("{base}{path}")).await;
    let refused_after = t0.elapsed();
    println!("closed upstream port: {} after {refused_after:?}", refused.status);
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert!(refused_after < Duration::from_millis(200), "{refused_after:?}");

    let upstream = Upstream::start().await;
    upstream.put(path, "from the second");
    let dead = closed_upstream();
    let resolver = Arc::new(RecordingResolver { upstreams: vec![dead.clone(), upstream.base()], ..Default::default() });
    let (tier, base) = start_tier_with(config, resolver.clone()).await;
    let t0 = Instant::now();
    let served = get(&client, &format!("{base}{path}")).await;
    println!("first upstream dead, second alive: {} after {:?}", served.status, t0.elapsed());
    assert_eq!((served.status, served.body.as_ref()), (StatusCode::OK, b"from the second".as_ref()));
    assert_eq!(*resolver.failed.lock(), vec![dead]);
    assert_eq!(tier.counts().upstream_requests, 2);
}

#[tokio::test]
async fn manifests_expire_segments_stay_and_bytes_are_bounded() {
    let upstream = Upstream::start().await;
    let (mpd, segment) = ("/live/cam/manifest.mpd", "/live/cam/720p/abc-4.m4s");
    upstream.put(mpd, "<MPD/>");
    upstream.put(segment, "segment");
    let config = TierConfig { manifest_ttl: Duration::from_millis(200), ..TierConfig::default() };
    let (_tier, base) = start_tier(config, vec![upstream.base()]).await;
    let client = client();

    let first = get(&client, &format!("{base}{mpd}")).await;
    assert_eq!(first.cache, "miss");
    assert_eq!(get(&client, &format!("{base}{mpd}")).await.cache, "hit");
    assert_eq!(get(&client, &format!("{base}{segment}")).await.cache, "miss");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&client, &format!("{base}{mpd}")).await.cache, "miss", "manifest expired");
    assert_eq!(get(&client, &format!("{base}{segment}")).await.cache, "hit", "segment did not");
    assert_eq!((upstream.count(mpd), upstream.count(segment)), (2, 1));

    let lifetimes = Lifetimes { segment: DEFAULT_SEGMENT_TTL, manifest: DEFAULT_MANIFEST_TTL, negative: DEFAULT_NEGATIVE_TTL };
    let cache = TierCache::new(1024 * 1024, 2, lifetimes);
    let body = Bytes::from(vec![7u8; 64 * 1024]);
    for n in 0..100 {
        let head = Head { kind: ObjectKind::Segment, status: StatusCode::OK, content_type: None, cache_control: None };
        let object = CachedObject { head, body: body.clone(), lifetime: None };
        cache.insert(Arc::from(format!("/live/cam/720p/abc-{n}.m4s")), Arc::new(object)).await;
    }
    cache.run_pending_tasks().await;
    println!("byte bound {} B: {} B held in {} entries after inserting 100 x 64 KiB", cache.capacity(), cache.weighted_size(), cache.entry_count());
    assert!(cache.weighted_size() <= cache.capacity());
    assert!(cache.entry_count() > 0 && cache.entry_count() < 100);
    assert!(cache.contains("/live/cam/720p/abc-99.m4s"), "LRU keeps the newest segment");
}

#[tokio::test]
async fn hls_playlists_are_coalesced_manifests() {
    let upstream = Upstream::start().await;
    let (master, media) = ("/live/cam/master.m3u8", "/live/cam/720p/media.m3u8");
    upstream.put(master, "#EXTM3U\n");
    upstream.put(media, "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:4\n");
    upstream.delay(media, Duration::from_millis(100));
    let config = TierConfig { manifest_ttl: Duration::from_millis(200), prefetch: true, ..TierConfig::default() };
    let (_tier, base) = start_tier(config, vec![upstream.base()]).await;
    let client = client();

    // Concurrent misses for a media playlist make one upstream request.
    let url = format!("{base}{media}");
    let answers = join_all((0..10).map(|_| get(&client, &url))).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK && a.body.as_ref() == b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:4\n"));
    assert_eq!(upstream.count(media), 1);
    let response = client.get(format!("{base}{master}")).send().await.unwrap();
    assert_eq!(response.headers()[header::CONTENT_TYPE], HLS_CONTENT_TYPE);
    assert_eq!(response.headers()[header::CACHE_CONTROL], MANIFEST_CACHE);
    assert_eq!(get(&client, &format!("{base}{master}")).await.cache, "hit");
    // A manifest's lifetime, not a segment's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&client, &format!("{base}{master}")).await.cache, "miss", "playlist expired");
    assert_eq!(get(&client, &format!("{base}/live/cam/7%20p/media.m3u8")).await.status, StatusCode::BAD_REQUEST);
}

fn mpd_listing(last: u64) -> String {
    let reps = ["720p", "audio"]
        .iter()
        .map(|id| {
            format!(
                r#"<AdaptationSet id="{id}"><Representation id="{id}" bandwidth="1000000"><SegmentTemplate timescale="1000" initialization="$RepresentationID$/init-abc.mp4" media="$RepresentationID$/abc-$Number$.m4s" startNumber="1"><SegmentTimeline><S t="0" d="1000" r="{}"/></SegmentTimeline></SegmentTemplate></Representation></AdaptationSet>"#,
                last - 1
            )
        })
        .collect::<String>();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" profiles="urn:mpeg:dash:profile:isoff-live:2011" minBufferTime="PT1S" availabilityStartTime="2026-01-01T00:00:00Z"><Period id="abc" start="PT0S">{reps}</Period></MPD>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_fetches_the_newest_requested_segment_once() {
    let upstream = Upstream::start().await;
    let mpd = "/live/cam/manifest.mpd";
    let seg = |rendition: &str, n: u64| format!("/live/cam/{rendition}/abc-{n}.m4s");
    for n in 1..=7 {
        upstream.put(&seg("720p", n), format!("video {n}"));
        upstream.put(&seg("audio", n), format!("audio {n}"));
    }
    let config = TierConfig { prefetch: true, manifest_ttl: Duration::from_millis(100), ..TierConfig::default() };
    let (tier, base) = start_tier(config, vec![upstream.base()]).await;
    let client = client();

    // A player reads the MPD first: the tier learns which renditions upstream lists.
    upstream.put(mpd, mpd_listing(5));
    assert_eq!(get(&client, &format!("{base}{mpd}")).await.status, StatusCode::OK);
    assert_eq!(get(&client, &format!("{base}{}", seg("720p", 5))).await.cache, "miss");
    tokio::time::sleep(Duration::from_millis(150)).await;

    // A new MPD listing segment 6: the tier fetches 720p/6 (requested rendition) by itself.
    upstream.put(mpd, mpd_listing(6));
    assert_eq!(get(&client, &format!("{base}{mpd}")).await.status, StatusCode::OK);
    let key = seg("720p", 6);
    let t0 = Instant::now();
    while !tier.cache.contains(&key) {
        assert!(t0.elapsed() < Duration::from_secs(2), "prefetched {key} within 2 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let viewer = get(&client, &format!("{base}{key}")).await;
    assert_eq!((viewer.status, viewer.cache.as_str(), viewer.body.as_ref()), (StatusCode::OK, "hit", b"video 6".as_ref()));
    assert_eq!(upstream.count(&key), 1);
    assert_eq!(upstream.count(&seg("audio", 6)), 0, "audio was not requested by viewers");

    // A viewer racing the prefetch of a slow segment 7 waits on it instead of fetching too.
    let key = seg("720p", 7);
    upstream.delay(&key, Duration::from_millis(300));
    upstream.put(mpd, mpd_listing(7));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let manifest = get(&client, &format!("{base}{mpd}")).await;
    assert_eq!((manifest.status, manifest.cache.as_str()), (StatusCode::OK, "miss"));
    let viewer = get(&client, &format!("{base}{key}")).await;
    assert_eq!((viewer.status, viewer.cache.as_str(), viewer.body.as_ref()), (StatusCode::OK, "coalesced", b"video 7".as_ref()));
    assert_eq!(upstream.count(&key), 1);
    assert_eq!(tier.counts().prefetches, 2);
}

#[tokio::test]
async fn bad_paths_clock_and_counts() {
    let upstream = Upstream::start().await;
    let (tier, base) = start_tier(TierConfig::default(), vec![upstream.base()]).await;
    let client = client();
    for (path, status) in [
        ("/live/cam/720p/abc-x.m4s", StatusCode::BAD_REQUEST),
        ("/live/a..b/manifest.mpd", StatusCode::BAD_REQUEST),
        ("/live/cam/..%2F..%2Fetc/passwd", StatusCode::BAD_REQUEST),
        ("/live/cam/720p/..%2Fabc-7.m4s", StatusCode::BAD_REQUEST),
        ("/etc/passwd", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(get(&client, &format!("{base}{path}")).await.status, status, "{path}");
    }
    assert_eq!(upstream.state.counts.lock().len(), 0, "nothing malformed went upstream");

    let clock = client.get(format!("{base}/time")).header("origin", "http://player.example").send().await.unwrap();
    assert_eq!(clock.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(chrono::DateTime::parse_from_rfc3339(&clock.text().await.unwrap()).is_ok());

    let counts = tier.counts();
    assert_eq!((counts.requests, counts.bad_requests, counts.upstream_requests), (4, 4, 0));
}

#[tokio::test]
async fn a_no_store_404_is_passed_on_not_cached() {
    let upstream = Upstream::start().await;
    let (tier, base) = start_tier(TierConfig::default(), vec![upstream.base()]).await;
    let client = client();
    // The live node's answer for the newest segment asked for a moment too early.
    let path = "/live/cam/720p/abc-9.m4s";
    let url = format!("{base}{path}");

    let first = get(&client, &url).await;
    assert_eq!((first.status, first.body.as_ref()), (StatusCode::NOT_FOUND, b"no such object\n".as_ref()));
    assert_eq!(first.cache, "miss");
    let second = get(&client, &url).await;
    assert_eq!((second.status, second.cache.as_str()), (StatusCode::NOT_FOUND, "miss"), "not served from the cache");
    assert_eq!(upstream.count(path), 2, "the second request went upstream again");

    // The segment is written: the very next poll gets it.
    upstream.put(path, "segment 9");
    let third = get(&client, &url).await;
    assert_eq!((third.status, third.body.as_ref()), (StatusCode::OK, b"segment 9".as_ref()));
    let metrics = tier.counts();
    assert_eq!((metrics.not_stored, metrics.upstream_errors), (2, 0));
}

#[tokio::test]
async fn a_negative_answer_lives_no_longer_than_its_upstream_allows() {
    let upstream = Upstream::start().await;
    upstream.not_found_cache("public, max-age=0, s-maxage=1");
    // negative_ttl above the upstream's s-maxage: the upstream's 1 s wins.
    let config = TierConfig { negative_ttl: Duration::from_secs(5), ..TierConfig::default() };
    let (_tier, base) = start_tier(config, vec![upstream.base()]).await;
    let client = client();
    let path = "/live/ghost/manifest.mpd";
    let url = format!("{base}{path}");
    assert_eq!(get(&client, &url).await.cache, "miss");
    assert_eq!(get(&client, &url).await.cache, "hit");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(&client, &url).await.cache, "miss", "expired after the upstream's s-maxage, not negative_ttl");
    assert_eq!(upstream.count(path), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_reset_object_fails_over_for_that_request_only() {
    let slow = Upstream::start().await;
    let spare = Upstream::start().await;
    let (stuck, other) = ("/live/cam/720p/abc-5.m4s", "/live/news/720p/xyz-5.m4s");
    slow.put(stuck, "late");
    slow.delay(stuck, Duration::from_secs(3));
    slow.put(other, "other stream");
    spare.put(stuck, "from the spare");
    let resolver = Arc::new(RecordingResolver { upstreams: vec![slow.base(), spare.base()], ..Default::default() });
    let config = TierConfig { request_timeout: Duration::from_millis(800), ..TierConfig::default() };
    let (tier, base) = start_tier_with(config.clone(), resolver.clone()).await;
    let client = client();

    // The first upstream gets half the budget, then the request moves to the spare.
    let t0 = Instant::now();
    let served = get(&client, &format!("{base}{stuck}")).await;
    let took = t0.elapsed();
    println!("slow object: {} from the spare after {took:?}", served.status);
    assert_eq!((served.status, served.body.as_ref()), (StatusCode::OK, b"from the spare".as_ref()));
    assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(800), "{took:?}");
    assert!(resolver.failed.lock().is_empty(), "a slow object does not mark its upstream down");
    let metrics = tier.counts();
    assert_eq!((metrics.upstream_timeouts, metrics.upstream_connect_failures), (1, 0));

    // Another stream's object on the same upstream is served from it at once.
    let t0 = Instant::now();
    let unaffected = get(&client, &format!("{base}{other}")).await;
    assert_eq!((unaffected.status, unaffected.body.as_ref()), (StatusCode::OK, b"other stream".as_ref()));
    assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    assert_eq!(slow.count(other), 1);

    // A reset after connecting: the same, failed over and the node left up.
    let resolver = Arc::new(RecordingResolver { upstreams: vec![resetting_upstream().await, spare.base()], ..Default::default() });
    let (tier, base) = start_tier_with(config, resolver.clone()).await;
    let served = get(&client, &format!("{base}{stuck}")).await;
    assert_eq!((served.status, served.body.as_ref()), (StatusCode::OK, b"from the spare".as_ref()));
    assert!(resolver.failed.lock().is_empty(), "a reset does not mark its upstream down");
    let metrics = tier.counts();
    assert_eq!((metrics.upstream_errors, metrics.upstream_connect_failures), (1, 0));
}

#[tokio::test]
async fn an_oversize_answer_is_a_502_and_not_cached() {
    const LIMIT: u64 = 64 * 1024;
    let upstream = Upstream::start().await;
    // A chunked manifest is read whole, so it is refused by its running total before any
    // viewer sees it; a chunked segment is relayed (a_relayed_body_over_the_limit_is_cut_off).
    let (declared, chunked, fits) = ("/live/cam/720p/abc-1.m4s", "/live/cam/manifest.mpd", "/live/cam/720p/abc-3.m4s");
    upstream.put(declared, vec![1u8; LIMIT as usize + 1]);
    upstream.put(chunked, vec![2u8; 3 * LIMIT as usize]);
    upstream.chunked(chunked);
    upstream.put(fits, vec![3u8; LIMIT as usize]);
    upstream.chunked(fits);
    let config = TierConfig { max_body_bytes: LIMIT, ..TierConfig::default() };
    let (tier, base) = start_tier(config, vec![upstream.base()]).await;
    let client = client();

    for path in [declared, chunked] {
        for _ in 0..2 {
            let got = get(&client, &format!("{base}{path}")).await;
            assert_eq!((got.status, got.cache.as_str()), (StatusCode::BAD_GATEWAY, "miss"), "{path}");
        }
        assert_eq!(upstream.count(path), 2, "{path}: the oversize answer was not cached");
    }
    let got = get(&client, &format!("{base}{fits}")).await;
    assert_eq!((got.status, got.body.len() as u64), (StatusCode::OK, LIMIT), "a relayed body of exactly the limit passes");
    let metrics = tier.counts();
    assert_eq!((metrics.upstream_too_large, metrics.upstream_errors), (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_records_only_what_upstream_lists_and_caps_its_mpd() {
    let upstream = Upstream::start().await;
    let mpd = "/live/cam/manifest.mpd";
    let cam = StreamId::parse("cam").unwrap();
    let config = TierConfig { prefetch: true, manifest_ttl: Duration::from_millis(100), ..TierConfig::default() };
    let (tier, base) = start_tier(config, vec![upstream.base()]).await;
    let client = client();

    // Viewers' requests before any MPD, and for renditions upstream does not list, record nothing.
    upstream.put("/live/cam/720p/abc-5.m4s", "video 5");
    get(&client, &format!("{base}/live/cam/720p/abc-5.m4s")).await;
    assert!(tier.renditions.tracked(&cam).is_empty(), "no MPD yet: nothing recorded");
    upstream.put(mpd, mpd_listing(5));
    assert_eq!(get(&client, &format!("{base}{mpd}")).await.status, StatusCode::OK);
    for made_up in 0..50 {
        let got = get(&client, &format!("{base}/live/cam/made-up-{made_up}/abc-5.m4s")).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND);
    }
    get(&client, &format!("{base}/live/cam/720p/abc-5.m4s")).await;
    assert_eq!(tier.renditions.tracked(&cam), ["720p", "audio"], "only what upstream's MPD lists");
    assert_eq!(tier.renditions.recent(&cam, Duration::from_secs(10)), ["720p"]);

    // An upstream MPD with a repeat count near i64::MAX and a gigabyte-wide %0Nd: served as
    // it is, promptly, with no prefetch, and counted.
    let hostile = r#"<?xml version="1.0" encoding="UTF-8"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" profiles="urn:mpeg:dash:profile:isoff-live:2011" minBufferTime="PT1S" availabilityStartTime="2026-01-01T00:00:00Z"><Period id="abc" start="PT0S">
<AdaptationSet id="0"><Representation id="720p" bandwidth="1000000"><SegmentTemplate timescale="1000" media="$RepresentationID$/abc-$Number$.m4s" startNumber="1"><SegmentTimeline><S t="0" d="1000" r="9223372036854775806"/></SegmentTimeline></SegmentTemplate></Representation></AdaptationSet>
<AdaptationSet id="1"><Representation id="audio" bandwidth="1000000"><SegmentTemplate timescale="1000" media="$RepresentationID$/abc-$Number%01000000000d$.m4s" startNumber="1"><SegmentTimeline><S t="0" d="1000"/></SegmentTimeline></SegmentTemplate></Representation></AdaptationSet>
</Period></MPD>"#;
    get(&client, &format!("{base}/live/cam/audio/abc-5.m4s")).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    upstream.put(mpd, hostile);
    let requests_before = upstream.state.counts.lock().values().sum::<u64>();
    let manifest = within("the hostile MPD's answer", get(&client, &format!("{base}{mpd}"))).await;
    assert_eq!((manifest.status, manifest.body.as_ref()), (StatusCode::OK, hostile.as_bytes()));
    assert_eq!(tier.counts().prefetch_limited, 2, "one repeat count and one width over their caps");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(upstream.state.counts.lock().values().sum::<u64>(), requests_before + 1, "only the MPD was fetched");
    assert_eq!(tier.counts().prefetches, 0);
}

/// One viewer of a relayed segment, reading as the bytes arrive.
struct LiveViewer {
    /// Bytes received so far.
    progress: watch::Receiver<usize>,
    done: tokio::task::JoinHandle<Relayed>,
}

/// What a viewer of a relayed segment got.
#[derive(Debug)]
struct Relayed {
    status: StatusCode,
    cache: String,
    content_length: Option<String>,
    body: Vec<u8>,
    /// The body ended with an error (cut off), not as complete.
    cut_off: bool,
    /// When the end of each chunk boundary in `marks` arrived.
    reached: Vec<Instant>,
}

impl LiveViewer {
    /// A GET of `url`; `marks` are byte offsets whose arrival times are recorded.
    fn start(client: &reqwest::Client, url: &str, marks: Vec<usize>) -> Self {
        let (progress_tx, progress) = watch::channel(0);
        let (client, url) = (client.clone(), url.to_owned());
        let done = tokio::spawn(async move {
            let mut response = client.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let header = |name| response.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_owned);
            let (cache, content_length) = (header(CACHE_STATUS_HEADER).unwrap_or_default(), header(header::CONTENT_LENGTH));
            let status = response.status();
            let (mut body, mut reached) = (Vec::new(), Vec::new());
            let cut_off = loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        body.extend_from_slice(&chunk);
                        let now = Instant::now();
                        while marks.get(reached.len()).is_some_and(|&mark| body.len() >= mark) {
                            reached.push(now);
                        }
                        progress_tx.send_replace(body.len());
                    }
                    Ok(None) => break false,
                    Err(_) => break true,
                }
            };
            Relayed { status, cache, content_length, body, cut_off, reached }
        });
        Self { progress, done }
    }

    async fn result(self) -> Relayed {
        within("a viewer's response", self.done).await.expect("viewer task")
    }
}

/// Waits until every viewer has received at least `bytes`.
async fn all_reached(viewers: &mut [LiveViewer], bytes: usize) {
    within("viewers to receive the chunks sent", async {
        for viewer in viewers.iter_mut() {
            viewer.progress.wait_for(|&got| got >= bytes).await.expect("viewer alive");
        }
    })
    .await;
}

/// Starts `count` viewers of `path` and holds the upstream's answer until all of them wait
/// on the tier's flight, so every one is a miss or coalesced, never a hit.
async fn viewers_waiting(tier: &TierState, upstream: &Upstream, base: &str, path: &str, count: usize, marks: &[usize]) -> Vec<LiveViewer> {
    viewers_waiting_on(&client(), tier, upstream, base, path, count, marks).await
}

async fn viewers_waiting_on(
    client: &reqwest::Client,
    tier: &TierState,
    upstream: &Upstream,
    base: &str,
    path: &str,
    count: usize,
    marks: &[usize],
) -> Vec<LiveViewer> {
    let open = upstream.gate(path);
    let viewers: Vec<LiveViewer> = (0..count).map(|_| LiveViewer::start(client, &format!("{base}{path}"), marks.to_vec())).collect();
    within("the viewers to wait on the flight", async {
        while tier.flights.waiting(path) < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    open.send_replace(true);
    viewers
}

/// `count` chunks of `size` bytes, each distinct.
fn cmaf_chunks(count: usize, size: usize) -> Vec<Bytes> {
    (0..count).map(|n| Bytes::from((0..size).map(|i| ((i * 7 + n * 31) % 251) as u8).collect::<Vec<u8>>())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_segment_is_relayed_chunk_by_chunk_to_every_viewer() {
    const VIEWERS: usize = 50;
    const CHUNK: usize = 8 * 1024;
    let upstream = Upstream::start().await;
    let path = "/live/cam/720p/abc-1.m4s";
    let feed = upstream.live(path);
    let (tier, base) = start_tier(TierConfig::default(), vec![upstream.base()]).await;
    let chunks = cmaf_chunks(5, CHUNK);
    let whole: Vec<u8> = chunks.concat();

    let mut viewers = viewers_waiting(&tier, &upstream, &base, path, VIEWERS, &[]).await;
    // Each chunk reaches every viewer before the upstream sends the next: nothing waits for
    // the whole segment.
    for (n, chunk) in chunks[..3].iter().enumerate() {
        feed.send(chunk).await;
        all_reached(&mut viewers, (n + 1) * CHUNK).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A viewer arriving now gets the three chunks at once, then the live tail.
    let late = LiveViewer::start(&client(), &format!("{base}{path}"), Vec::new());
    viewers.push(late);
    all_reached(&mut viewers, 3 * CHUNK).await;
    for chunk in &chunks[3..] {
        feed.send(chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(feed);

    let mut statuses: HashMap<String, usize> = HashMap::new();
    for viewer in viewers {
        let got = viewer.result().await;
        assert_eq!((got.status, got.cut_off, got.content_length.as_deref()), (StatusCode::OK, false, None), "relayed chunked, ended complete");
        assert!(got.body == whole, "every viewer gets exactly the segment");
        *statuses.entry(got.cache).or_default() += 1;
    }
    assert_eq!(statuses.get("miss"), Some(&1), "{statuses:?}");
    assert_eq!(statuses.get("coalesced"), Some(&VIEWERS), "the late viewer joined the same flight: {statuses:?}");
    assert_eq!(upstream.count(path), 1, "one upstream request for every viewer");

    // Complete, it is in the cache: a hit, with its length.
    let hit = client().get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(hit.headers()[header::CONTENT_LENGTH], whole.len().to_string().as_str());
    assert_eq!(hit.headers()[CACHE_STATUS_HEADER], "hit");
    assert_eq!(hit.headers()[header::CONTENT_TYPE], SEGMENT_CONTENT_TYPE);
    assert!(hit.bytes().await.unwrap() == whole);
    assert_eq!(upstream.count(path), 1);
    let counts = tier.counts();
    assert_eq!((counts.misses, counts.coalesced, counts.hits, counts.upstream_abandoned), (1, VIEWERS as u64, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_breaks_off_mid_body_cuts_its_viewers_off() {
    let upstream = Upstream::start().await;
    let path = "/live/cam/720p/abc-2.m4s";
    let feed = upstream.live(path);
    let (tier, base) = start_tier(TierConfig::default(), vec![upstream.base()]).await;
    let chunk = cmaf_chunks(1, 4096).remove(0);

    let mut viewers = viewers_waiting(&tier, &upstream, &base, path, 10, &[]).await;
    feed.send(&chunk).await;
    all_reached(&mut viewers, chunk.len()).await;
    feed.break_off().await;
    for viewer in viewers {
        let got = viewer.result().await;
        assert_eq!((got.status, got.cut_off, got.body.len()), (StatusCode::OK, true, chunk.len()), "cut off after the first chunk, not ended as complete");
    }
    let counts = tier.counts();
    assert_eq!((counts.upstream_abandoned, counts.upstream_errors), (1, 1));
    assert!(!tier.cache.contains(path), "nothing cached");

    // The next request goes upstream again (here the segment is complete by now).
    upstream.put(path, "segment 2");
    let again = get(&client(), &format!("{base}{path}")).await;
    assert_eq!((again.status, again.cache.as_str(), again.body.as_ref()), (StatusCode::OK, "miss", b"segment 2".as_ref()));
    assert_eq!(upstream.count(path), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_body_over_the_limit_is_cut_off() {
    const LIMIT: usize = 64 * 1024;
    let upstream = Upstream::start().await;
    let path = "/live/cam/720p/abc-3.m4s";
    let feed = upstream.live(path);
    let config = TierConfig { max_body_bytes: LIMIT as u64, ..TierConfig::default() };
    let (tier, base) = start_tier(config, vec![upstream.base()]).await;
    let chunks = cmaf_chunks(2, 40 * 1024);

    let mut viewers = viewers_waiting(&tier, &upstream, &base, path, 5, &[]).await;
    feed.send(&chunks[0]).await;
    all_reached(&mut viewers, chunks[0].len()).await;
    // 80 KiB in all: over the limit in the middle of the body.
    feed.send(&chunks[1]).await;
    for viewer in viewers {
        let got = viewer.result().await;
        assert_eq!((got.status, got.cut_off, got.body.len()), (StatusCode::OK, true, chunks[0].len()), "cut off, the chunk over the limit not relayed");
    }
    drop(feed);
    let counts = tier.counts();
    assert_eq!((counts.upstream_abandoned, counts.upstream_too_large, counts.upstream_errors), (1, 1, 1));
    assert!(!tier.cache.contains(path), "nothing cached");
    upstream.put(path, "fits");
    assert_eq!(get(&client(), &format!("{base}{path}")).await.cache, "miss");
    assert_eq!(upstream.count(path), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_mid_body_is_abandoned() {
    let upstream = Upstream::start().await;
    let path = "/live/cam/720p/abc-4.m4s";
    let feed = upstream.live(path);
    let chunk_timeout = Duration::from_millis(300);
    let config = TierConfig { chunk_timeout, ..TierConfig::default() };
    let (tier, base) = start_tier(config, vec![upstream.base()]).await;
    let chunk = cmaf_chunks(1, 4096).remove(0);

    let mut viewers = viewers_waiting(&tier, &upstream, &base, path, 5, &[]).await;
    feed.send(&chunk).await;
    all_reached(&mut viewers, chunk.len()).await;
    // The feed stays open and sends nothing more.
    for viewer in viewers {
        let got = viewer.result().await;
        assert_eq!((got.status, got.cut_off, got.body.len()), (StatusCode::OK, true, chunk.len()));
    }
    let counts = tier.counts();
    assert_eq!((counts.upstream_abandoned, counts.upstream_timeouts, counts.upstream_errors), (1, 1, 1));
    assert!(!tier.cache.contains(path), "nothing cached");
    drop(feed);
}

/// A measurement, not a test of speed: prints how long each relayed chunk takes from the
/// upstream handing it to its HTTP server to each of 1,000 concurrent viewers having it:
/// the upstream-to-tier hop (one connection), the relay and the tier-to-viewer hop, on
/// loopback, every party on this machine's cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delay_to_a_thousand_viewers_measured() {
    let _alone = THOUSAND_VIEWERS.lock().await;
    const VIEWERS: usize = 1000;
    const CHUNKS: usize = 5;
    const CHUNK: usize = 16 * 1024;
    let upstream = Upstream::start().await;
    let path = "/live/cam/720p/abc-5.m4s";
    let feed = upstream.live(path);
    let (tier, base) = start_tier(TierConfig::default(), vec![upstream.base()]).await;
    let chunks = cmaf_chunks(CHUNKS, CHUNK);
    let marks: Vec<usize> = (1..=CHUNKS).map(|n| n * CHUNK).collect();
    // Open the viewers' connections first: the figure wanted is the relay's, not that of
    // 1,000 handshakes.
    let client = client();
    let warm = "/live/cam/720p/abc-0.m4s";
    upstream.put(warm, chunks[0].clone());
    burst(&client, &format!("{base}{warm}"), &chunks[0], VIEWERS).await;
    let coalesced_before = tier.counts().coalesced;

    let mut viewers = viewers_waiting_on(&client, &tier, &upstream, &base, path, VIEWERS, &marks).await;
    // The viewers have their heads before the first chunk is sent.
    within("the viewers' heads", async {
        while tier.counts().coalesced - coalesced_before < VIEWERS as u64 - 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut sent = Vec::new();
    for (n, chunk) in chunks.iter().enumerate() {
        sent.push(Instant::now());
        feed.send(chunk).await;
        all_reached(&mut viewers, (n + 1) * CHUNK).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(feed);
    let (mut first, mut later) = (Vec::new(), Vec::new());
    for viewer in viewers {
        let got = viewer.result().await;
        assert!(got.status == StatusCode::OK && !got.cut_off && got.body.len() == CHUNKS * CHUNK);
        for (n, (reached, sent)) in got.reached.iter().zip(&sent).enumerate() {
            let delay = reached.saturating_duration_since(*sent);
            if n == 0 { first.push(delay) } else { later.push(delay) }
        }
    }
    first.sort();
    later.sort();
    println!(
        "MEASUREMENT relay to {VIEWERS} viewers, {CHUNKS} chunks x {} KiB, upstream sends the chunk -> viewer has it: \
         first chunk p50 {:.1?} p99 {:.1?}; later chunks p50 {:.1?} p99 {:.1?} max {:.1?}",
        CHUNK / 1024,
        percentile(&first, 0.5),
        percentile(&first, 0.99),
        percentile(&later, 0.5),
        percentile(&later, 0.99),
        later[later.len() - 1]
    );
    assert_eq!(upstream.count(path), 1);
}

/// The live node's own router over `store`, on a port: the upstream LL-HLS tests need.
async fn live_node(store: &Arc<crate::store::Store>) -> (String, Arc<crate::http::LiveMetrics>) {
    let metrics = Arc::new(crate::http::LiveMetrics::default());
    let state = crate::http::HttpState {
        store: Arc::clone(store),
        registry: crate::stream::StreamRegistry::new(),
        metrics: Arc::clone(&metrics),
        audience: Arc::default(),
        next_segment_wait: Duration::from_millis(500),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = crate::http::router(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reloads_reach_upstream_coalesced_past_the_request_timeout() {
    use crate::store::{Playlist, PlaylistPosition, PlaylistText, Store, StreamSummary};
    let store = Arc::new(Store::new());
    let cam = StreamId::parse("cam").unwrap();
    let publish = |text: &'static str, last_msn| {
        let position = PlaylistPosition { last_msn, next_parts: 0, ended: false, target_duration: Duration::from_secs(1), part_target: None };
        let playlists = [(Playlist::Media(crate::media::RenditionId::parse("720p").unwrap()), PlaylistText { text: Bytes::from_static(text.as_bytes()), position: Some(position), delta: Some(Bytes::from(format!("{text} delta"))) })].into();
        let summary = StreamSummary { stream: cam.clone(), live: true, session: None, renditions: Vec::new() };
        store.set_manifests(&cam, [None, None, None], playlists, summary);
    };
    publish("four", 4);
    let (upstream, live) = live_node(&store).await;
    let (_tier, base) = start_tier(TierConfig::default(), vec![upstream]).await;
    let client = client();
    let url = |query: &str| format!("{base}/live/cam/720p/media.m3u8{query}");

    // Ten viewers block on the next segment; the live node holds one request past the
    // tier's 2 s request_timeout, and answers them all when the playlist has it.
    let started = Instant::now();
    let waiting: Vec<_> = (0..10).map(|_| tokio::spawn({
        let (client, url) = (client.clone(), url("?_HLS_part=0&_HLS_msn=5"));
        async move { get(&client, &url).await }
    })).collect();
    tokio::time::sleep(DEFAULT_REQUEST_TIMEOUT + Duration::from_millis(300)).await;
    publish("five", 5);
    let answers = within("the blocking reloads", join_all(waiting)).await;
    println!("blocking reload through the tier answered after {:?}", started.elapsed());
    assert!(answers.iter().all(|a| matches!(a, Ok(g) if g.status == StatusCode::OK && g.body.as_ref() == b"five")));
    assert_eq!(live.manifest_requests.get(), 1, "one upstream request for ten viewers");
    let caches: Vec<&str> = answers.iter().map(|a| a.as_ref().unwrap().cache.as_str()).collect();
    assert_eq!(caches.iter().filter(|c| **c == "miss").count(), 1, "{caches:?}");

    // Refusals pass through uncached; other parameters never reach upstream.
    assert_eq!(get(&client, &url("?_HLS_msn=9")).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&client, &url("?_HLS_msn=9")).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(live.manifest_requests.get(), 3);
    for bad in ["?_HLS_part=1", "?_HLS_msn=five"] {
        assert_eq!(get(&client, &url(bad)).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(live.manifest_requests.get(), 3);
    // Without a blocking-reload query (other parameters are ignored), the plain playlist.
    assert_eq!(get(&client, &url("")).await.body.as_ref(), b"five");
    assert_eq!(get(&client, &url("?nocache=42")).await.body.as_ref(), b"five");
    // A delta update is a key of its own, asked upstream with its directive; the plain
    // playlist stays the full one.
    assert_eq!(get(&client, &url("?_HLS_skip=YES")).await.body.as_ref(), b"five delta");
    assert_eq!(get(&client, &url("?_HLS_skip=v2&_HLS_msn=5")).await.body.as_ref(), b"five delta");
    assert_eq!(get(&client, &url("")).await.body.as_ref(), b"five");
    assert_eq!(get(&client, &url("?_HLS_skip=NO")).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_ranges_are_served_from_the_cached_or_relayed_segment() {
    use crate::store::{ObjectKey, Part, Store};
    let store = Arc::new(Store::new());
    let cam = StreamId::parse("cam").unwrap();
    let key = |n| ObjectKey { rendition: crate::media::RenditionId::parse("720p").unwrap(), session: crate::media::SessionId::parse("abc").unwrap(), part: Part::Media(n) };
    store.put_object(&cam, key(7), Bytes::from_static(b"0123456789"));
    let (upstream, live) = live_node(&store).await;
    let (_tier, base) = start_tier(TierConfig::default(), vec![upstream]).await;
    let client = client();
    let ranged = |path: &str, range: &'static str| {
        let request = client.get(format!("{base}/live/cam/720p/{path}")).header(header::RANGE, range);
        async move {
            let response = request.send().await.unwrap();
            let (status, content_range) = (response.status(), response.headers().get(header::CONTENT_RANGE).map(|v| v.to_str().unwrap().to_owned()));
            (status, content_range, response.bytes().await.unwrap())
        }
    };
    let (status, content_range, body) = ranged("abc-7.m4s", "bytes=2-4").await;
    assert_eq!((status, content_range.as_deref(), body.as_ref()), (StatusCode::PARTIAL_CONTENT, Some("bytes 2-4/10"), &b"234"[..]));
    assert_eq!(ranged("abc-7.m4s", "bytes=10-").await.0, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(ranged("abc-7.m4s", "bytes=7-").await.2.as_ref(), b"789");
    assert_eq!(live.object_requests.get(), 1, "the whole segment fetched once, then cached");

    // A growing segment: a part once its bytes have been relayed, a hint to the end.
    store.append_chunk(&cam, key(8), Bytes::from_static(b"abc"));
    let part = tokio::spawn(ranged("abc-8.m4s", "bytes=3-5"));
    let hint = tokio::spawn(ranged("abc-8.m4s", "bytes=3-"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!part.is_finished(), "a part is not answered before its last byte arrives");
    store.append_chunk(&cam, key(8), Bytes::from_static(b"def"));
    let (status, _, body) = within("the part", part).await.unwrap();
    assert_eq!((status, body.as_ref()), (StatusCode::PARTIAL_CONTENT, &b"def"[..]));
    store.append_chunk(&cam, key(8), Bytes::from_static(b"gh"));
    store.put_object(&cam, key(8), Bytes::from_static(b"abcdefgh"));
    let (status, _, body) = within("the hint", hint).await.unwrap();
    assert_eq!((status, body.as_ref()), (StatusCode::PARTIAL_CONTENT, &b"defgh"[..]));
    assert_eq!(live.object_requests.get(), 2, "one relay for both");
}
