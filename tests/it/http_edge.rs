//! The bounded HTTP edge, against the real binary on 127.0.0.1: a slowloris client is
//! closed at the header-read time-out, and SIGTERM with such clients connected still exits
//! 0 at once; 2,000 idle connections do not slow a request down, connections over the cap
//! are closed at accept and counted, and the idle ones are closed at the idle time-out.
//! No publisher is needed: `/time` and `/metrics` are served without a stream.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Long enough that opening 2,000 connections and checking the cap (3-4 s on a loaded
/// 2-core machine) ends before the first of them goes idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
const IDLE_CONNECTIONS: usize = 2000;
const MAX_CONNECTIONS: usize = 2050;
/// Connections opened once the idle ones are held: 50 fit under the cap, 10 do not.
const EXTRA_CONNECTIONS: usize = 60;

fn config() -> String {
    format!(
        "[http]\nheader_read_timeout = \"{}s\"\nidle_timeout = \"{}s\"\nmax_connections = {MAX_CONNECTIONS}\n",
        HEADER_TIMEOUT.as_secs(),
        IDLE_TIMEOUT.as_secs()
    )
}

/// One GET on a fresh connection (`Connection: close`, so the server does not keep it):
/// status and body. A connection the server closes without an answer is an error.
fn raw_get(addr: &str, path: &str) -> io::Result<(u16, String)> {
    let mut socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(socket, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    socket.read_to_string(&mut text)?;
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok());
    let status = status.ok_or_else(|| io::Error::other(format!("no HTTP answer: {text:?}")))?;
    Ok((status, text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()))
}

/// `/metrics`, retried while the server refuses the connection (at its cap); returns the
/// scrape and how many attempts were refused.
fn metrics(app: &Appliance) -> (Metrics, u64) {
    let mut refused = 0;
    let body = wait_until("an answer from /metrics", Duration::from_secs(10), || match raw_get(&app.http, "/metrics") {
        Ok((200, body)) => Some(body),
        Ok((status, body)) => panic!("/metrics answered {status}: {body}"),
        Err(_) => {
            refused += 1;
            None
        }
    });
    (Metrics::parse(&body), refused)
}

/// The HTTP edge's counter `rackcast_http_edge_{name}_total`, or its gauge of that name.
fn counter(metrics: &Metrics, name: &str) -> u64 {
    let series = format!("rackcast_http_edge_{name}");
    metrics.get(&format!("{series}_total"), &[]).or_else(|| metrics.get(&series, &[])).unwrap_or_else(|| panic!("/metrics has no {series}")) as u64
}

/// Whether the server has closed `socket` (which must be non-blocking): end of stream or a
/// reset. The server sends nothing on these connections, so data is a test failure.
fn closed_by_server(mut socket: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match socket.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("server sent {n} bytes on a connection that sent no request: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Soft limit on open files of this process (the appliance inherits it).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_slowloris_client_is_closed_at_the_header_read_timeout() {
    let app = Appliance::start(Some(&config()));
    let mut socket = TcpStream::connect(&app.http).unwrap();
    // A head that would take a minute at one byte a second.
    let head = format!("GET /time HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n", app.http, "z".repeat(40));
    let limit = HEADER_TIMEOUT + Duration::from_secs(2);
    let first_byte = Instant::now();
    let mut buf = [0u8; 256];
    let closed_after = 'trickle: {
        for (i, byte) in head.bytes().enumerate() {
            if socket.write_all(&[byte]).is_err() {
                break 'trickle first_byte.elapsed();
            }
            let next = first_byte + Duration::from_secs(i as u64 + 1);
            while let Some(wait) = next.checked_duration_since(Instant::now()).filter(|w| !w.is_zero()) {
                socket.set_read_timeout(Some(wait)).unwrap();
                match socket.read(&mut buf) {
                    Ok(0) => break 'trickle first_byte.elapsed(),
                    Ok(n) => panic!("answer to a partial head: {:?}", String::from_utf8_lossy(&buf[..n])),
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                    Err(_) => break 'trickle first_byte.elapsed(),
                }
            }
            assert!(first_byte.elapsed() < limit, "slowloris still connected {limit:?} after its first byte");
        }
        panic!("the whole head was sent");
    };
    println!("slowloris (1 byte/s) closed {closed_after:.2?} after its first byte (header_read_timeout {HEADER_TIMEOUT:?})");
    assert!(closed_after >= HEADER_TIMEOUT - Duration::from_millis(50), "closed before the time-out: {closed_after:?}");
    assert!(closed_after <= limit, "closed after {closed_after:?}");
    let (counters, _) = metrics(&app);
    assert_eq!(counter(&counters, "header_timeouts"), 1);
    app.wait_for_log("request head not received in time", Duration::from_secs(2));

    // A normal client is served as before.
    assert_eq!(get(&app.url("/time")).status(), 200);

    // SIGTERM with an idle connection and a half-sent head open: still exits 0, at once.
    let _idle = TcpStream::connect(&app.http).unwrap();
    let mut half = TcpStream::connect(&app.http).unwrap();
    half.write_all(b"GET /time HTTP/1.1\r\nHo").unwrap();
    let asked = Instant::now();
    let status = app.terminate(Duration::from_secs(8));
    println!("exit after SIGTERM with 2 client connections open: {:.2?}", asked.elapsed());
    assert_eq!(status.code(), Some(0));
}

#[test]
fn idle_connections_are_capped_closed_when_idle_and_do_not_slow_requests() {
    let needed = (IDLE_CONNECTIONS + EXTRA_CONNECTIONS + 200) as u64;
    match open_files_limit() {
        Some(limit) if limit >= needed => {}
        other => {
            not_run(&format!("needs an open-files limit of at least {needed} (ulimit -n), have {other:?}"));
            return;
        }
    }
    // 2,000 connections must be accepted and the cap checked inside the 8 s idle time-out,
    // and /time answered within a second: the test measures the host (in one clean-clone
    // run, beside the player matrix, the server had not accepted them all before the
    // first ones timed out).
    let _host = host_to_itself();
    let app = Appliance::start(Some(&config()));
    let rss_before = rss_kib(app.pid());

    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for i in 0..IDLE_CONNECTIONS {
        let socket = TcpStream::connect(&app.http).unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        idle.push((socket, Instant::now()));
    }
    let opened = idle[0].1.elapsed();
    // The server holds them all (the metrics request itself is one more) well inside the
    // idle time-out: with a listen backlog of 128 the kernel dropped SYNs of this burst and
    // the connections took 9 s to open (`app::LISTEN_BACKLOG`). If it does not, the message
    // says how many it held and when.
    let mut held: Vec<(u128, u64)> = Vec::new();
    let waited = Instant::now();
    loop {
        let open = counter(&metrics(&app).0, "open");
        if open > IDLE_CONNECTIONS as u64 {
            break;
        }
        if held.last().is_none_or(|(_, last)| *last != open) {
            held.push((waited.elapsed().as_millis(), open));
        }
        assert!(waited.elapsed() < Duration::from_secs(10), "the server did not hold every idle connection within 10 s (connected in {opened:.2?}); it held (ms, open): {held:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_held = rss_kib(app.pid());

    let mut times: Vec<Duration> = (0..10)
        .map(|_| {
            let t0 = Instant::now();
            let (status, body) = raw_get(&app.http, "/time").expect("/time with idle connections open");
            assert_eq!(status, 200, "{body}");
            t0.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "{IDLE_CONNECTIONS} idle connections opened in {opened:.2?}; /time on a new connection: p50 {:.1?}, max {:.1?}; \
         appliance RSS {rss_before:?} KiB before, {rss_held:?} KiB with them open",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(times[times.len() - 1] < Duration::from_secs(1), "/time took {:?}", times[times.len() - 1]);

    // Over the cap: the server closes the newest connections at accept, and counts them.
    // First the server lets go of the /time connections (it holds the idle ones and the
    // metrics request), then of the metrics request (not observable without another one:
    // a short pause).
    let before = wait_until("the server to let go of the /time connections", Duration::from_secs(5), || {
        let (metrics, _) = metrics(&app);
        (counter(&metrics, "open") == IDLE_CONNECTIONS as u64 + 1).then_some(metrics)
    });
    std::thread::sleep(Duration::from_millis(300));
    let extra: Vec<TcpStream> = (0..EXTRA_CONNECTIONS)
        .map(|i| {
            let socket = TcpStream::connect(&app.http).unwrap_or_else(|e| panic!("extra connection {i}: {e}"));
            socket.set_nonblocking(true).unwrap();
            socket
        })
        .collect();
    let over = EXTRA_CONNECTIONS - (MAX_CONNECTIONS - IDLE_CONNECTIONS);
    let refused = wait_until("the connections over the cap to be closed", Duration::from_secs(5), || {
        let closed = extra.iter().filter(|s| closed_by_server(s)).count();
        (closed >= over).then_some(closed)
    });
    // Let any late refusal land before counting.
    std::thread::sleep(Duration::from_millis(300));
    let refused = refused.max(extra.iter().filter(|s| closed_by_server(s)).count());
    assert!(
        Instant::now() < idle[0].1 + IDLE_TIMEOUT,
        "the cap check ended after the first idle connection's time-out, so slots may have been freed: machine too loaded for this test's timing"
    );
    println!("{EXTRA_CONNECTIONS} connections over {IDLE_CONNECTIONS} idle with max_connections {MAX_CONNECTIONS}: {refused} closed at accept");
    assert!((over..=over + 1).contains(&refused), "{refused} refused, expected {over}");
    // Free slots so the counters can be read.
    drop(extra);
    let (after, refused_reads) = metrics(&app);
    assert_eq!(
        counter(&after, "refused") - counter(&before, "refused"),
        refused as u64 + refused_reads,
        "every refusal counted"
    );
    let open = counter(&after, "open");
    assert!(open <= MAX_CONNECTIONS as u64, "{open} open");
    app.wait_for_log("HTTP connection refused: at the connection cap", Duration::from_secs(2));

    // The idle connections are closed at the idle time-out, not before.
    for (socket, _) in &idle {
        socket.set_nonblocking(true).unwrap();
    }
    let deadline = idle[IDLE_CONNECTIONS - 1].1 + IDLE_TIMEOUT + Duration::from_secs(3);
    let mut open: Vec<(TcpStream, Instant)> = idle;
    let mut lifetimes = Vec::with_capacity(IDLE_CONNECTIONS);
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "{} idle connections still open {:?} after the idle time-out", open.len(), Duration::from_secs(3));
        open.retain(|(socket, connected)| {
            let closed = closed_by_server(socket);
            if closed {
                lifetimes.push(connected.elapsed());
            }
            !closed
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    lifetimes.sort();
    println!(
        "idle connections closed {:.2?} (first) to {:.2?} (last) after they were opened; idle_timeout {IDLE_TIMEOUT:?}",
        lifetimes[0],
        lifetimes[lifetimes.len() - 1]
    );
    assert!(lifetimes[0] >= IDLE_TIMEOUT - Duration::from_millis(100), "an idle connection was closed after {:?}", lifetimes[0]);
    let (end, _) = metrics(&app);
    let idle_closed = counter(&end, "idle_closed");
    assert!(idle_closed >= IDLE_CONNECTIONS as u64, "{idle_closed} idle connections closed");
    assert_eq!(counter(&end, "open"), 1, "only the metrics request is left");
}
