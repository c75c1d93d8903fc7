//! Test harness: the real `rackcast` binary on 127.0.0.1 ports, real ffmpeg publishers,
//! real HTTP, and ffprobe to decode what comes out. Every wait has a deadline and says
//! what it waited for.

pub mod dns;
pub mod flv;
pub mod host;
pub mod players;
pub mod rtmp;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dash_mpd_core as dash;
pub use host::{host_shared, host_to_itself};

pub struct Appliance {
    child: Child,
    pub rtmp: String,
    pub http: String,
    logs: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    /// The cgroup it runs in, when started under a CPU quota.
    procs: Option<std::path::PathBuf>,
    /// This test's share of the host while the appliance runs.
    _host: host::HostShare,
}

impl Appliance {
    /// Starts the binary with an optional TOML config; RTMP and HTTP on free loopback ports.
    pub fn start(config: Option<&str>) -> Self {
        Self::launch(config, &["--rtmp", "127.0.0.1:0", "--http", "127.0.0.1:0"])
    }

    /// Starts one node of a cluster config (its addresses come from its entry).
    pub fn start_node(config: &str, node: &str) -> Self {
        Self::launch(Some(config), &["--node", node])
    }

    /// Starts the binary with a config and these arguments after `run`.
    pub fn start_with_args(config: &str, args: &[&str]) -> Self {
        Self::launch(Some(config), args)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Starts the binary on loopback ports inside `quota`'s cgroup (from its first
    /// instruction on, so every thread it makes is limited).
    pub fn start_in(quota: &CpuQuota, config: Option<&str>) -> Self {
        let args = ["--rtmp", "127.0.0.1:0", "--http", "127.0.0.1:0"].map(String::from).to_vec();
        Self::launch_in(tempfile::tempdir().unwrap(), config, args, Some(quota.procs()))
    }

    fn launch(config: Option<&str>, args: &[&str]) -> Self {
        Self::launch_in(tempfile::tempdir().unwrap(), config, args.iter().map(|a| a.to_string()).collect(), None)
    }

    /// Stops the appliance (SIGTERM) and starts it again with the same arguments, config
    /// and data directory (new ports when they were 0), as after a reboot.
    pub fn restart(mut self) -> Self {
        signal(self.child.id(), "TERM");
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let config = std::fs::read_to_string(dir.path().join("rackcast.toml")).ok();
        let procs = self.procs.take();
        Self::launch_in(dir, config.as_deref(), std::mem::take(&mut self.args), procs)
    }

    fn launch_in(dir: tempfile::TempDir, config: Option<&str>, args: Vec<String>, procs: Option<std::path::PathBuf>) -> Self {
        let host = host_shared();
        let mut command = match &procs {
            // The shell moves itself into the cgroup, then becomes rackcast (same PID).
            Some(procs) => {
                let mut c = Command::new("sh");
                c.args(["-c", "echo $$ > \"$1\" && shift && exec \"$@\"", "sh"]).arg(procs).arg(env!("CARGO_BIN_EXE_rackcast"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_rackcast")),
        };
        // Every appliance keeps its own state (the stream key store): no test sees another's keys.
        command.arg("run").args(&args).arg("--data-dir").arg(dir.path().join("data"));
        if let Some(text) = config {
            let path = dir.path().join("rackcast.toml");
            std::fs::write(&path, text).unwrap();
            command.arg("--config").arg(path);
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rackcast binary starts");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("RACKCAST_TEST_LOGS").is_some() {
                    eprintln!("[rackcast] {line}");
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert!(ready.starts_with("rackcast ready"), "no ready line, got {ready:?}; logs:\n{}", logs.lock().unwrap());
        let field = |name: &str| {
            ready.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).unwrap().to_owned()
        };
        Self { rtmp: field("rtmp"), http: field("http"), child, logs, dir, args, procs, _host: host }
    }

    /// The appliance's data directory (its stream key store), for `rackcast keys`.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn publish_url(&self, app: &str, key: &str) -> String {
        format!("rtmp://{}/{}/{}", self.rtmp, app, key)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let logs = Arc::clone(&self.logs);
        wait_until(&format!("log line containing {needle:?}"), within, || logs.lock().unwrap().contains(needle).then_some(()));
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the appliance process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Peak resident memory of the appliance process (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Resets the peak (VmHWM) to the current resident memory; false where the kernel
    /// does not let us.
    pub fn reset_peak_rss(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").is_ok()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        signal(self.child.id(), "TERM");
        self.wait_exit(within)
    }

    /// Waits for the process to exit (after a signal sent with [`signal`]).
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "rackcast did not exit within {within:?} of SIGTERM; logs:\n{}", self.logs());
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Says, loudly, that a test could not run what it checks here and why. tests/run.sh lists
/// every such line before its totals (through RACKCAST_TEST_NOT_RUN), so a suite that
/// passes says what it did not check.
pub fn not_run(what: &str) {
    eprintln!("\n!!!!!!!! NOT RUN: {what} !!!!!!!!\n");
    if let Some(path) = std::env::var_os("RACKCAST_TEST_NOT_RUN") {
        let test = thread::current().name().unwrap_or("?").to_owned();
        if let Ok(mut file) = std::fs::OpenOptions::new().append(true).create(true).open(path) {
            let _ = writeln!(file, "{test}: {what}");
        }
    }
}

/// A child cgroup of the cpu controller with a CPU quota, so a test can run the appliance
/// on a known share of the CPU whatever the machine. Needs root and a writable cpu
/// controller (cgroup v1 `/sys/fs/cgroup/cpu`, or v2 with `cpu` delegable at the root);
/// removed when dropped (drop the appliances in it first).
pub struct CpuQuota {
    dir: std::path::PathBuf,
}

impl CpuQuota {
    /// A cgroup limited to `cores`, or why none can be made here.
    pub fn new(name: &str, cores: f64) -> Result<Self, String> {
        use std::path::Path;
        let period = 100_000u64;
        let quota = (cores * period as f64).round() as u64;
        let leaf = format!("rackcast-test-{name}-{}", std::process::id());
        let write = |path: &Path, text: &str| std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()));
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let dir = if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(&leaf);
            std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let made = Self { dir: dir.clone() };
            write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            return Ok(made);
        } else if std::fs::read_to_string(v2.join("cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu")) {
            // Children get the cpu controller only where the parent delegates it.
            write(&v2.join("cgroup.subtree_control"), "+cpu")?;
            v2.join(&leaf)
        } else {
            return Err("no cpu cgroup controller is mounted (neither v1 /sys/fs/cgroup/cpu nor v2 with cpu)".into());
        };
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let made = Self { dir: dir.clone() };
        write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
        Ok(made)
    }

    /// The file a process writes its PID to, to move into the cgroup.
    pub fn procs(&self) -> std::path::PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // A process that just exited may still be listed for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Held by a test that transcodes a whole ladder: two such tests at once on a 2-core host
/// fall behind real time, and the appliance rightly sheds rungs, which is not what they test.
/// Take it before the test's first appliance. A test with the host to itself
/// ([`host_to_itself`]) has no other ladder beside it and does not take this.
pub fn one_ladder_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LADDER: Mutex<()> = Mutex::new(());
    LADDER.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A port that was free a moment ago (cluster configs must name every node's ports). It is
/// below the kernel's ephemeral range, where connections' local ports and `:0` binds come
/// from, so no test's connection takes it before its node binds it (or while a node is
/// down before a restart); and it is handed out once in this binary.
/// One node of a test federation on 127.0.0.1: its id, its roles (a TOML array such as
/// `["live"]`) and free ports.
pub struct ClusterNode {
    pub id: &'static str,
    pub roles: &'static str,
    pub rtmp: u16,
    pub http: u16,
}

impl ClusterNode {
    pub fn new(id: &'static str, roles: &'static str) -> Self {
        Self { id, roles, rtmp: free_port(), http: free_port() }
    }

    /// Its `[[cluster.nodes]]` entry (region "eu").
    pub fn toml(&self) -> String {
        format!(
            "\n[[cluster.nodes]]\nid = \"{}\"\nroles = {}\nregion = \"eu\"\nrtmp = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\n",
            self.id, self.roles, self.rtmp, self.http
        )
    }
}

pub fn free_port() -> u16 {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768u16);
    let first = ephemeral.saturating_sub(FREE_PORTS);
    let mut next = NEXT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Test runs side by side on one machine start at different ports.
    let mut port = next.unwrap_or(first + (std::process::id() % u32::from(FREE_PORTS)) as u16);
    for _ in 0..FREE_PORTS {
        let candidate = port;
        port = if port + 1 >= ephemeral { first } else { port + 1 };
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            *next = Some(port);
            return candidate;
        }
    }
    panic!("no free port in {first}..{ephemeral}");
}

/// How many ports below the ephemeral range `free_port` hands out.
const FREE_PORTS: u16 = 10_000;

/// Waits until the node whose HTTP address is `http` (host:port) answers HTTP requests
/// (its `/metrics`, which every role serves to anyone; `/cluster/health` answers only
/// peers' signed requests).
pub fn wait_serving(http: &str, within: Duration) {
    let url = format!("http://{http}/metrics");
    wait_until(&format!("{http} answering HTTP"), within, || client().get(&url).send().ok().filter(|r| r.status() == 200).map(drop));
}

/// One scrape of a node's `/metrics`, parsed as a Prometheus server parses it
/// (prometheus-parse): (metric name, labels sorted) -> value; a histogram gives its
/// `_count` and `_sum` samples.
pub struct Metrics {
    pub content_type: String,
    samples: std::collections::HashMap<(String, Vec<(String, String)>), f64>,
}

impl Metrics {
    /// `GET {base}/metrics`, where `base` is `http://host:port`.
    pub fn scrape(base: &str) -> Self {
        let response = get(&format!("{base}/metrics"));
        assert_eq!(response.status(), 200, "{base}/metrics");
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        Self { content_type, ..Self::parse(&response.text().unwrap()) }
    }

    pub fn parse(text: &str) -> Self {
        use prometheus_parse::{Scrape, Value};
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap_or_else(|e| panic!("not a Prometheus text document: {e}\n{text}"));
        let mut samples = std::collections::HashMap::new();
        for sample in scrape.samples {
            let mut labels: Vec<(String, String)> = sample.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            labels.sort();
            let value = match sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                Value::Histogram(_) | Value::Summary(_) => continue,
            };
            samples.insert((sample.metric, labels), value);
        }
        Self { content_type: String::new(), samples }
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        labels.sort();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// The sample `name{labels}`; panics if the scrape has none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in /metrics"))
    }

    /// Every metric name sampled (a histogram's as its `_count` and `_sum`).
    pub fn names(&self) -> std::collections::BTreeSet<&str> {
        self.samples.keys().map(|(name, _)| name.as_str()).collect()
    }

    /// Whether the scrape has `name` (a histogram's `_bucket` series by its `_count`).
    pub fn has_series(&self, name: &str) -> bool {
        let name = name.strip_suffix("_bucket").map_or_else(|| name.to_owned(), |histogram| format!("{histogram}_count"));
        self.names().contains(name.as_str())
    }

    /// An unlabelled counter or gauge as a count; panics if the scrape has none.
    pub fn count(&self, name: &str) -> u64 {
        self.value(name, &[]) as u64
    }
}

/// Every series the shipped Grafana dashboard (deploy/monitoring) plots.
pub fn dashboard_series() -> std::collections::BTreeSet<String> {
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/monitoring/grafana-dashboard.json")).unwrap();
    dashboard
        .match_indices("rackcast_")
        .map(|(i, _)| &dashboard[i..i + dashboard[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap()])
        .filter(|name| *name != "rackcast_")
        .map(str::to_owned)
        .collect()
}

impl Appliance {
    pub fn metrics(&self) -> Metrics {
        Metrics::scrape(&self.url(""))
    }
}

/// What a child started with `stderr(Stdio::piped())` prints there, gathered as it comes.
pub fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&stderr);
    let pipe = child.stderr.take().expect("stderr piped");
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    stderr
}

/// Runs `command` to its end, its output captured; kills it and fails the test if it runs
/// past `within` (a reader stuck on a live stream never ends on its own).
pub fn output_within(command: &mut Command, within: Duration) -> std::process::Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the program starts");
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut bytes);
        bytes
    });
    let err = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut bytes);
        bytes
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still ran after {within:?}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    std::process::Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// JSON from a GET.
pub fn get_json(url: &str) -> serde_json::Value {
    serde_json::from_str(&get(url).text().unwrap()).unwrap_or_else(|e| panic!("{url}: {e}"))
}

pub fn signal(pid: u32, name: &str) {
    Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().unwrap();
}

/// A real ffmpeg broadcaster: test pattern + tone, x264 with a keyframe every second, AAC.
pub struct Publisher {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Publisher {
    pub fn start(url: &str, seconds: u32, size: &str) -> Self {
        Self::start_with_audio(url, seconds, size, "aac_low")
    }

    /// Like `start`, with ffmpeg's AAC encoder in another profile (`aac_main`, `aac_ltp`).
    pub fn start_with_audio(url: &str, seconds: u32, size: &str, aac_profile: &str) -> Self {
        Self::launch(url, seconds, size, aac_profile, true)
    }

    /// Like `start`, without `-re`: ffmpeg sends as fast as it encodes.
    pub fn start_unpaced(url: &str, seconds: u32, size: &str) -> Self {
        Self::launch(url, seconds, size, "aac_low", false)
    }

    fn launch(url: &str, seconds: u32, size: &str, aac_profile: &str, real_time: bool) -> Self {
        let duration = seconds.to_string();
        let video = format!("testsrc2=size={size}:rate=30");
        let mut args: Vec<&str> = if real_time { vec!["-re"] } else { vec![] };
        args.extend(["-f", "lavfi", "-i", &video, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]);
        args.extend(["-t", &duration, "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "30"]);
        args.extend(["-pix_fmt", "yuv420p", "-b:v", "2500k", "-c:a", "aac", "-profile:a", aac_profile, "-b:a", "128k"]);
        Self::with_args(url, &args)
    }

    /// A real-time audio-only broadcaster (as radio stations send): a tone in AAC-LC.
    pub fn audio_only(url: &str, seconds: u32) -> Self {
        let duration = seconds.to_string();
        Self::with_args(url, &["-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", &duration, "-c:a", "aac", "-b:a", "96k"])
    }

    /// ffmpeg with these input and encoder arguments, publishing FLV to `url`.
    pub fn with_args(url: &str, args: &[&str]) -> Self {
        let mut child = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error"])
            .args(args)
            .args(["-f", "flv", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ffmpeg starts");
        let stderr = collect_stderr(&mut child);
        Self { child, stderr }
    }

    /// Waits for ffmpeg to exit; returns its status and what it printed.
    pub fn wait(mut self, within: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                thread::sleep(Duration::from_millis(50));
                return (status, self.stderr.lock().unwrap().clone());
            }
            assert!(Instant::now() < deadline, "ffmpeg did not exit within {within:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The ffmpeg process id (to signal it: `signal(pid, "STOP")`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `npm ci` in `dir` (a folder of tests/ with a package-lock.json) unless its node_modules
/// already holds the locked versions of `modules`.
pub fn ensure_npm_modules(dir: &std::path::Path, modules: &[&str]) -> Result<(), String> {
    // Two tests of this binary may need the same modules at once: one `npm ci` at a time.
    static NPM: Mutex<()> = Mutex::new(());
    let _one_at_a_time = NPM.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("package-lock.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let current = modules.iter().all(|m| {
        let want = &lock["packages"][format!("node_modules/{m}")]["version"];
        let have = std::fs::read_to_string(dir.join(format!("node_modules/{m}/package.json")))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|v| v["version"].clone());
        have.as_ref() == Some(want)
    });
    if current {
        return Ok(());
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("npm: {e}"))?;
    if !out.status.success() {
        return Err(format!("npm ci failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// Polls `check` every 50 ms until it yields a value; panics with `what` at the deadline.
pub fn wait_until<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap()
}

pub fn get(url: &str) -> reqwest::blocking::Response {
    client().get(url).send().unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub fn get_bytes(url: &str) -> Vec<u8> {
    let response = get(url);
    assert_eq!(response.status(), 200, "GET {url}");
    response.bytes().unwrap().to_vec()
}

/// The stream's MPD, when it is served.
pub fn fetch_mpd(app: &Appliance, stream: &str) -> Option<dash::MPD> {
    let response = get(&app.url(&format!("/live/{stream}/manifest.mpd")));
    if response.status() != 200 {
        return None;
    }
    let text = response.text().unwrap();
    Some(dash::parse(&text).unwrap_or_else(|e| panic!("MPD does not parse: {e:?}\n{text}")))
}

/// One segment as the MPD addresses it.
#[derive(Debug, Clone)]
pub struct SegmentRef {
    pub number: u64,
    pub time: u64,
    pub duration: u64,
    pub timescale: u64,
    pub url: String,
}

/// Init URL and listed segments of a Representation, resolved against the stream's base.
pub fn segments(stream: &str, rep: &dash::Representation) -> (String, Vec<SegmentRef>) {
    let template = rep.SegmentTemplate.as_ref().expect("SegmentTemplate on the Representation");
    let id = rep.id.as_deref().unwrap();
    let base = format!("/live/{stream}/");
    let init = base.clone() + &template.initialization.as_ref().unwrap().replace("$RepresentationID$", id);
    let media = template.media.as_ref().unwrap().replace("$RepresentationID$", id);
    let timescale = template.timescale.unwrap();
    let mut number = template.startNumber.unwrap();
    let mut time = 0;
    let mut list = Vec::new();
    for s in &template.SegmentTimeline.as_ref().unwrap().segments {
        if let Some(t) = s.t {
            time = t;
        }
        for _ in 0..=s.r.unwrap_or(0) {
            let url = base.clone() + &media.replace("$Number$", &number.to_string());
            list.push(SegmentRef { number, time, duration: s.d, timescale, url });
            number += 1;
            time += s.d;
        }
    }
    (init, list)
}

/// Decodes init+segment with ffprobe: (codec, width, height, frames as (pts s, keyframe)).
pub fn probe(init: &[u8], segment: &[u8]) -> (String, u32, u32, Vec<(f64, bool)>) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(init).unwrap();
    file.write_all(segment).unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let stream = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0", &path])
        .output()
        .unwrap();
    assert!(stream.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&stream.stderr));
    let line = String::from_utf8(stream.stdout).unwrap();
    let fields: Vec<&str> = line.trim().split(',').collect();
    let frames = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "frame=pts_time,key_frame", "-of", "csv=p=0", &path])
        .output()
        .unwrap();
    assert!(frames.status.success(), "ffprobe could not decode frames: {}", String::from_utf8_lossy(&frames.stderr));
    let frames = String::from_utf8(frames.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(',');
            let key = parts.next()? == "1";
            let pts: f64 = parts.next()?.parse().ok()?;
            Some((pts, key))
        })
        .collect();
    let number = |i: usize| fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
    (fields[0].to_owned(), number(1), number(2), frames)
}
