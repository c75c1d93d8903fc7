//! Helpers for the player matrix (tests/it/players.rs): a recording HTTP proxy between each
//! player and a node, a page server for the browser players, player processes with
//! time-stamped output, and an MPD watcher that checks the manifest's shape on every poll.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 server (keep-alive aware) shared by the proxy and the page server.

pub struct Request {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn keep_alive(&self) -> bool {
        let connection = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.version == "HTTP/1.0" { connection.contains("keep-alive") } else { !connection.contains("close") }
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self { status, headers: vec![("content-type".into(), content_type.into())], body: body.into() }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if !line.trim().is_empty() {
            break; // tolerate stray CRLF between requests
        }
    }
    let mut parts = line.split_whitespace();
    let (method, target, version) = (parts.next()?.to_owned(), parts.next()?.to_owned(), parts.next().unwrap_or("HTTP/1.0").to_owned());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut request = Request { method, target, version, headers, body: Vec::new() };
    if let Some(n) = request.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut body = vec![0; n];
        reader.read_exact(&mut body).ok()?;
        request.body = body;
    }
    Some(request)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        404 => "Not Found",
        502 => "Bad Gateway",
        _ => "Status",
    }
}

const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length"];

fn write_response(stream: &mut TcpStream, request: &Request, response: &Response, keep_alive: bool) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, reason(response.status));
    let mut upstream_length = None;
    for (k, v) in &response.headers {
        if k.eq_ignore_ascii_case("content-length") {
            upstream_length = Some(v.clone());
        }
        if !HOP_BY_HOP.contains(&k.to_ascii_lowercase().as_str()) {
            head += &format!("{k}: {v}\r\n");
        }
    }
    let head_only = request.method == "HEAD";
    let length = if head_only { upstream_length.unwrap_or_else(|| "0".into()) } else { response.body.len().to_string() };
    head += &format!("content-length: {length}\r\nconnection: {}\r\n\r\n", if keep_alive { "keep-alive" } else { "close" });
    stream.write_all(head.as_bytes())?;
    if !head_only && response.status != 204 && response.status != 304 {
        stream.write_all(&response.body)?;
    }
    stream.flush()
}

type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Serves `handler` on a free loopback port, one thread per connection; returns the port.
fn serve(handler: Handler) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let handler = Arc::clone(&handler);
            thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                while let Some(request) = read_request(&mut reader) {
                    let response = handler(&request);
                    let keep_alive = request.keep_alive();
                    if write_response(&mut writer, &request, &response, keep_alive).is_err() || !keep_alive {
                        break;
                    }
                }
            });
        }
    });
    port
}

// ---------------------------------------------------------------------------------------
// The recording proxy.

/// One request a player made through a proxy.
#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The MPD's text, for a 200 answer to a `.mpd` request.
    pub mpd: Option<String>,
    /// The playlist's text, for a 200 answer to a `.m3u8` request.
    pub playlist: Option<String>,
}

/// A media segment request: `/live/{stream}/{rendition}/{session}-{n}.m4s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPath {
    pub rendition: String,
    pub session: String,
    pub number: u64,
}

pub fn parse_segment_path(path: &str) -> Option<SegmentPath> {
    let path = path.split('?').next()?;
    let mut parts = path.trim_start_matches('/').split('/');
    if parts.next()? != "live" {
        return None;
    }
    let (_stream, rendition, file) = (parts.next()?, parts.next()?, parts.next()?);
    let stem = file.strip_suffix(".m4s")?;
    let (session, number) = stem.rsplit_once('-')?;
    Some(SegmentPath { rendition: rendition.to_owned(), session: session.to_owned(), number: number.parse().ok()? })
}

/// An HTTP/1.1 proxy on a loopback port in front of `upstream` (host:port) that records
/// every request. The client's Host header is passed on, so absolute URLs the node builds
/// from it point back at the proxy. Accept-Encoding is not passed on (the recorded MPDs
/// must be text); redirects are passed back to the client. With RACKCAST_PLAYERS_MPD_FILTER
/// set, every MPD is piped through that shell command before the player gets it.
pub struct RecordingProxy {
    pub port: u16,
    hits: Arc<Mutex<Vec<Hit>>>,
}

/// Pipes `body` through `sh -c filter` (RACKCAST_PLAYERS_MPD_FILTER: try another MPD form
/// on every player without changing the appliance).
fn run_filter(filter: &str, body: &[u8]) -> Vec<u8> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(filter)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the MPD filter starts");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the MPD filter {filter:?} failed");
    out.stdout
}

impl RecordingProxy {
    pub fn start(upstream: &str) -> Self {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let client = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let (sink, upstream) = (Arc::clone(&hits), upstream.to_owned());
        let filter = std::env::var("RACKCAST_PLAYERS_MPD_FILTER").ok().filter(|f| !f.is_empty());
        let port = serve(Arc::new(move |request: &Request| {
            let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::GET);
            let mut builder = client.request(method, format!("http://{upstream}{}", request.target));
            for (k, v) in &request.headers {
                let lower = k.to_ascii_lowercase();
                if !HOP_BY_HOP.contains(&lower.as_str()) && lower != "accept-encoding" {
                    builder = builder.header(k.as_str(), v.as_str());
                }
            }
            let response = match builder.body(request.body.clone()).send() {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let headers =
                        r.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
                    let body = r.bytes().map(|b| b.to_vec()).unwrap_or_default();
                    Response { status, headers, body }
                }
                Err(e) => Response::new(502, "text/plain", format!("proxy: {e}")),
            };
            let path = request.target.split('?').next().unwrap_or("").to_owned();
            let mut response = response;
            let is_mpd = path.ends_with(".mpd") && response.status == 200 && request.method == "GET";
            if let (true, Some(filter)) = (is_mpd, &filter) {
                response.body = run_filter(filter, &response.body);
            }
            let mpd = is_mpd.then(|| String::from_utf8_lossy(&response.body).into_owned());
            let is_playlist = path.ends_with(".m3u8") && response.status == 200 && request.method == "GET";
            let playlist = is_playlist.then(|| String::from_utf8_lossy(&response.body).into_owned());
            sink.lock().unwrap().push(Hit { at: Instant::now(), method: request.method.clone(), path, status: response.status, mpd, playlist });
            response
        }));
        Self { port, hits }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------
// The page server for the browser players.

/// One report a browser page posted.
#[derive(Debug, Clone)]
pub struct Report {
    pub at: Instant,
    pub value: serde_json::Value,
}

/// Serves tests/players/player.html and the npm modules under tests/players/node_modules,
/// and collects what the page POSTs to /report. Any other path is a 404, recorded too.
pub struct PageServer {
    pub port: u16,
    reports: Arc<Mutex<Vec<Report>>>,
    pub misses: Arc<Mutex<Vec<String>>>,
}

pub fn players_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/players")
}

impl PageServer {
    pub fn start() -> Self {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let misses = Arc::new(Mutex::new(Vec::new()));
        let (sink, missed) = (Arc::clone(&reports), Arc::clone(&misses));
        let dir = players_dir();
        let port = serve(Arc::new(move |request: &Request| {
            let path = request.target.split('?').next().unwrap_or("");
            if request.method == "POST" && path == "/report" {
                if let Ok(value) = serde_json::from_slice(&request.body) {
                    sink.lock().unwrap().push(Report { at: Instant::now(), value });
                }
                return Response::new(204, "text/plain", Vec::new());
            }
            let file = match path {
                "/player.html" => Some(dir.join("player.html")),
                _ => path
                    .strip_prefix("/lib/dashjs/")
                    .map(|f| dir.join("node_modules/dashjs/dist/modern/umd").join(f))
                    .or_else(|| path.strip_prefix("/lib/shaka/").map(|f| dir.join("node_modules/shaka-player/dist").join(f)))
                    .or_else(|| path.strip_prefix("/lib/hlsjs/").map(|f| dir.join("node_modules/hls.js/dist").join(f))),
            };
            let kind = if path.ends_with(".html") { "text/html" } else { "text/javascript" };
            match file.filter(|_| !path.contains("..")).and_then(|f| std::fs::read(f).ok()) {
                Some(body) => Response::new(200, kind, body),
                None => {
                    missed.lock().unwrap().push(format!("{} {}", request.method, request.target));
                    Response::new(404, "text/plain", "not found")
                }
            }
        }));
        Self { port, reports, misses }
    }

    pub fn reports(&self) -> Vec<Report> {
        self.reports.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------
// Player processes.

/// A player (one process, or a pipeline of processes), in its own process group, with
/// every output line time-stamped.
pub struct PlayerProcess {
    pub name: String,
    children: Vec<Child>,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    pub stopped: Option<Instant>,
}

fn capture(pipe: impl Read + Send + 'static, lines: &Arc<Mutex<Vec<(Instant, String)>>>) {
    let sink = Arc::clone(lines);
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
            // ffmpeg ends progress lines with \r; keep each as its own line
            for part in String::from_utf8_lossy(&buf).split('\r') {
                let part = part.trim_end();
                if !part.is_empty() {
                    sink.lock().unwrap().push((Instant::now(), part.to_owned()));
                }
            }
            buf.clear();
        }
    });
}

/// Headless Chromium on `url` with its own `profile`, autoplay allowed, and
/// `resolver_rules` (`--host-resolver-rules`: which names reach 127.0.0.1).
pub fn headless_chromium(program: &str, profile: &std::path::Path, resolver_rules: &str, url: &str) -> Command {
    let mut browser = player_command(program);
    browser
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .args(["--autoplay-policy=no-user-gesture-required", "--window-size=1000,600"])
        .arg(format!("--host-resolver-rules={resolver_rules}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url);
    browser
}

/// Environment every player gets: no proxy between it and 127.0.0.1.
pub fn player_command(program: &str) -> Command {
    let mut command = Command::new(program);
    for var in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"] {
        command.env_remove(var);
    }
    command.env("no_proxy", "127.0.0.1,localhost").env("NO_PROXY", "127.0.0.1,localhost");
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
}

impl PlayerProcess {
    /// Starts `commands` as a pipeline: each one's stdout feeds the next one's stdin; the
    /// last one's stdout and every stderr are captured.
    pub fn start(name: &str, commands: Vec<Command>) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut children: Vec<Child> = Vec::new();
        let count = commands.len();
        for (i, mut command) in commands.into_iter().enumerate() {
            let stdin = match children.last_mut() {
                Some(previous) => Stdio::from(previous.stdout.take().unwrap()),
                None => Stdio::null(),
            };
            let mut child = command
                .stdin(stdin)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{name}: cannot start {command:?}: {e}"));
            capture(child.stderr.take().unwrap(), &lines);
            if i + 1 == count {
                capture(child.stdout.take().unwrap(), &lines);
            }
            children.push(child);
        }
        Self { name: name.to_owned(), children, lines, stopped: None }
    }

    /// SIGINT to each process group, then SIGKILL to what is left after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.stopped = Some(Instant::now());
        for child in &self.children {
            let _ = Command::new("kill").args(["-INT", "--", &format!("-{}", child.id())]).status();
        }
        let deadline = Instant::now() + grace;
        for child in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
                let _ = child.wait();
            }
        }
        thread::sleep(Duration::from_millis(100));
    }

    /// Lines printed before the player was stopped (what it printed while being shut down
    /// is not its fault).
    pub fn lines(&self) -> Vec<String> {
        let until = self.stopped.unwrap_or_else(Instant::now);
        self.lines.lock().unwrap().iter().filter(|(at, _)| *at <= until).map(|(_, l)| l.clone()).collect()
    }

    pub fn all_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().map(|(_, l)| l.clone()).collect()
    }
}

impl Drop for PlayerProcess {
    fn drop(&mut self) {
        if self.children.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) {
            self.stop(Duration::from_secs(1));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The MPD watcher.

/// One Representation's listed segments in one poll.
#[derive(Debug, Clone)]
pub struct RepListing {
    pub period: String,
    /// Period@start, in seconds.
    pub period_start: f64,
    /// MPD@availabilityStartTime, in seconds since the epoch.
    pub ast: Option<f64>,
    pub id: String,
    pub video: bool,
    pub timescale: u64,
    pub pto: u64,
    /// (number, t, d)
    pub segments: Vec<(u64, u64, u64)>,
}

/// Parses an MPD into every Representation's listing (the raw S@t are kept: a gap shows).
/// A SegmentTemplate@duration without a timeline lists what is available by the clock.
pub fn listings(text: &str) -> Result<Vec<RepListing>, String> {
    let mpd = dash_mpd_core::parse(text).map_err(|e| format!("{e:?}"))?;
    let ast = mpd.availabilityStartTime.map(|t| t.timestamp_millis() as f64 / 1000.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let depth = mpd.timeShiftBufferDepth.map(|d| d.as_secs_f64());
    let mut out = Vec::new();
    for (index, period) in mpd.periods.iter().enumerate() {
        let next_start = mpd.periods.get(index + 1).and_then(|p| p.start).map(|d| d.as_secs_f64());
        for set in &period.adaptations {
            let video = set.contentType.as_deref() == Some("video")
                || set.mimeType.as_deref().is_some_and(|m| m.starts_with("video"));
            for rep in &set.representations {
                let template = rep.SegmentTemplate.as_ref().or(set.SegmentTemplate.as_ref());
                let Some(template) = template else { continue };
                let timescale = template.timescale.unwrap_or(1);
                let mut number = template.startNumber.unwrap_or(1);
                let mut segments = Vec::new();
                if let Some(timeline) = &template.SegmentTimeline {
                    let mut time = 0;
                    for s in &timeline.segments {
                        if let Some(t) = s.t {
                            time = t;
                        }
                        for _ in 0..=s.r.unwrap_or(0).max(0) {
                            segments.push((number, time, s.d));
                            number += 1;
                            time += s.d;
                        }
                    }
                } else if let (Some(d), Some(ast)) = (template.duration.filter(|d| *d > 0.0), ast) {
                    // @duration + $Number$: what is available now, by the wall clock (the
                    // Period ends where the next one starts), within timeShiftBufferDepth.
                    let start = period.start.unwrap_or_default().as_secs_f64();
                    let seconds = d / timescale as f64;
                    let edge = (now - ast).min(next_start.unwrap_or(f64::MAX)) - start;
                    let complete = (edge / seconds).floor().max(0.0) as u64;
                    let oldest = depth.map_or(0, |w| ((now - ast - w - start) / seconds).floor().max(0.0) as u64);
                    let pto = template.presentationTimeOffset.unwrap_or(0);
                    for k in oldest..complete {
                        segments.push((number + k, pto + (k as f64 * d) as u64, d as u64));
                    }
                }
                out.push(RepListing {
                    period: period.id.clone().unwrap_or_default(),
                    period_start: period.start.unwrap_or_default().as_secs_f64(),
                    ast,
                    id: rep.id.clone().unwrap_or_default(),
                    video,
                    timescale,
                    pto: template.presentationTimeOffset.unwrap_or(0),
                    segments,
                });
            }
        }
    }
    Ok(out)
}

/// Checks one MPD on its own: every SegmentTimeline contiguous, audio and video segment N
/// starting within one AAC frame (1024 samples at 48 kHz) of each other.
pub fn shape_problems(reps: &[RepListing]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for rep in reps {
        for pair in rep.segments.windows(2) {
            let ((n0, t0, d0), (n1, t1, _)) = (pair[0], pair[1]);
            if t1 != t0 + d0 {
                problems.push((
                    format!("timeline gap/overlap in {}", rep.id),
                    format!(
                        "Period {} Representation {}: S #{n1} t={t1} but #{n0} ends at t+d={} ({:+.1} ms)",
                        rep.period,
                        rep.id,
                        t0 + d0,
                        (t1 as f64 - (t0 + d0) as f64) * 1000.0 / rep.timescale as f64
                    ),
                ));
            }
        }
    }
    const FRAME: f64 = 1024.0 / 48_000.0;
    for audio in reps.iter().filter(|r| !r.video) {
        for video in reps.iter().filter(|r| r.video && r.period == audio.period) {
            let starts: HashMap<u64, f64> = video
                .segments
                .iter()
                .map(|&(n, t, _)| (n, (t as f64 - video.pto as f64) / video.timescale as f64))
                .collect();
            for &(n, t, _) in &audio.segments {
                let Some(v) = starts.get(&n) else { continue };
                let a = (t as f64 - audio.pto as f64) / audio.timescale as f64;
                if (a - v).abs() > FRAME + 1e-6 {
                    problems.push((
                        format!("audio/video misaligned ({} vs {})", audio.id, video.id),
                        format!(
                            "Period {}: segment {n} starts at {v:.4} s in {} and {a:.4} s in {}: {:.1} ms apart (limit {:.1} ms)",
                            audio.period,
                            video.id,
                            audio.id,
                            (a - v).abs() * 1000.0,
                            FRAME * 1000.0
                        ),
                    ));
                }
            }
        }
    }
    problems
}

/// Problems found on the polls, grouped by kind: (count, first few examples).
#[derive(Debug, Default, Clone)]
pub struct Problems(pub BTreeMap<String, (usize, Vec<String>)>);

impl Problems {
    pub fn add(&mut self, kind: String, example: String) {
        let entry = self.0.entry(kind).or_default();
        entry.0 += 1;
        if entry.1.len() < 3 && !entry.1.contains(&example) {
            entry.1.push(example);
        }
    }
}

/// What the watcher saw in one poll: the newest listed segment number per
/// (session, rendition).
#[derive(Debug, Clone)]
pub struct Poll {
    pub at: Instant,
    pub newest: HashMap<(String, String), u64>,
    pub periods: Vec<String>,
}

/// Polls `mpd_url` every 250 ms, checks every poll (see `shape_problems`) and across polls
/// (no listed segment's (number, t, d) ever changes), and keeps each poll's live edge.
pub struct MpdWatcher {
    pub name: String,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<WatchState>>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Default)]
struct WatchState {
    polls: Vec<Poll>,
    problems: Problems,
    seen: HashMap<(String, String, u64), (u64, u64)>,
    texts: HashSet<String>,
    /// For each video segment that appeared after the first poll: when it was first seen
    /// minus when the MPD says it became available (AST + Period@start + its end).
    lags: Vec<f64>,
}

impl MpdWatcher {
    pub fn start(name: &str, mpd_url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(WatchState::default()));
        let (flag, shared, label) = (Arc::clone(&stop), Arc::clone(&state), name.to_owned());
        let thread = thread::spawn(move || {
            let client = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
            while !flag.load(Ordering::Relaxed) {
                let text = client.get(&mpd_url).send().ok().filter(|r| r.status() == 200).and_then(|r| r.text().ok());
                if let Some(text) = text {
                    let at = Instant::now();
                    let mut state = shared.lock().unwrap();
                    state.check(&label, at, &text);
                }
                thread::sleep(Duration::from_millis(250));
            }
        });
        Self { name: name.to_owned(), stop, state, thread: Some(thread) }
    }

    /// The newest number listed for (session, rendition) at `at` (the last poll before it).
    pub fn newest_at(&self, at: Instant, session: &str, rendition: &str) -> Option<u64> {
        let state = self.state.lock().unwrap();
        state
            .polls
            .iter()
            .rev()
            .find(|p| p.at <= at)
            .and_then(|p| p.newest.get(&(session.to_owned(), rendition.to_owned())).copied())
    }

    pub fn polls(&self) -> Vec<Poll> {
        self.state.lock().unwrap().polls.clone()
    }

    pub fn problems(&self) -> Problems {
        self.state.lock().unwrap().problems.clone()
    }

    /// (min, max) of how late new video segments were listed after their MPD availability
    /// time, in seconds (negative: listed before it).
    pub fn listing_lag(&self) -> Option<(f64, f64)> {
        let state = self.state.lock().unwrap();
        let lags = &state.lags;
        (!lags.is_empty()).then(|| (lags.iter().copied().fold(f64::MAX, f64::min), lags.iter().copied().fold(f64::MIN, f64::max)))
    }

    pub fn texts(&self) -> Vec<String> {
        self.state.lock().unwrap().texts.iter().cloned().collect()
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl WatchState {
    fn check(&mut self, label: &str, at: Instant, text: &str) {
        self.texts.insert(text.to_owned());
        let reps = match listings(text) {
            Ok(r) => r,
            Err(e) => {
                self.problems.add(format!("{label}: MPD does not parse"), e);
                return;
            }
        };
        for (kind, example) in shape_problems(&reps) {
            self.problems.add(format!("{label}: {kind}"), example);
        }
        let mut newest = HashMap::new();
        for rep in &reps {
            for &(n, t, d) in &rep.segments {
                let key = (rep.period.clone(), rep.id.clone(), n);
                match self.seen.get(&key) {
                    Some(&(t0, d0)) if (t0, d0) != (t, d) => {
                        // Counted once per change: the new value is the one compared next.
                        self.problems.add(
                            format!("{label}: listed segment changed in {}", rep.id),
                            format!("Period {} Representation {} segment {n}: was (t={t0}, d={d0}), now (t={t}, d={d})", rep.period, rep.id),
                        );
                        self.seen.insert(key, (t, d));
                    }
                    Some(_) => {}
                    None => {
                        self.seen.insert(key, (t, d));
                        if let (Some(ast), true, false) = (rep.ast, rep.video, self.polls.is_empty()) {
                            let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
                            let end = (t + d) as f64 / rep.timescale as f64 - rep.pto as f64 / rep.timescale as f64;
                            self.lags.push(wall - (ast + rep.period_start + end));
                        }
                    }
                }
            }
            if let Some(&(n, _, _)) = rep.segments.last() {
                newest.insert((rep.period.clone(), rep.id.clone()), n);
            }
        }
        let mut periods: Vec<String> = reps.iter().map(|r| r.period.clone()).collect();
        periods.dedup();
        self.polls.push(Poll { at, newest, periods });
    }
}

impl Drop for MpdWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Validates every distinct MPD text against `xsd` with xmllint, in batches; returns one
/// line per MPD that does not validate (with xmllint's first complaints).
pub fn schema_failures(xsd: &std::path::Path, texts: &[String]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let path = dir.path().join(format!("mpd-{i:04}.xml"));
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    let mut failures = Vec::new();
    for chunk in files.chunks(200) {
        let output = Command::new("xmllint").arg("--nonet").arg("--noout").arg("--schema").arg(xsd).args(chunk).output().expect("xmllint runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for file in chunk {
            let name = file.to_str().unwrap();
            let complaints: Vec<&str> =
                stderr.lines().filter(|l| l.starts_with(name) && !l.ends_with("validates")).take(3).collect();
            if !complaints.is_empty() {
                failures.push(complaints.join(" | ").replace(&format!("{}/", dir.path().display()), ""));
            }
        }
    }
    failures
}
