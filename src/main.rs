//! The `rackcast` command line: `rackcast run` starts the appliance (embedded defaults when
//! no config file is given). Logs go to stderr through `tracing`; one line on stdout says
//! where the appliance listens, for scripts and tests that bind port 0.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use rackcast::app::{self, Listeners};
use rackcast::cluster::config::Role;
use rackcast::config::Config;
use rackcast::transcode::backend::Backend;

#[derive(Parser)]
#[command(name = "rackcast", version, about = "Live-video appliance: RTMP in, adaptive DASH out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance.
    Run {
        /// TOML config file (see deploy/rackcast.toml); embedded defaults without it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override ingest.listen (RTMP), e.g. 127.0.0.1:0.
        #[arg(long)]
        rtmp: Option<SocketAddr>,
        /// Override http.listen, e.g. 127.0.0.1:0.
        #[arg(long)]
        http: Option<SocketAddr>,
        /// This node's id in the config's cluster.nodes (its listen addresses come from there).
        #[arg(long)]
        node: Option<String>,
        /// Override auth.data_dir (where the stream key store lives).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// This node's role (live, origin, edge); repeat for several. Overrides its
        /// entry's roles in cluster.nodes; with cluster.discovery, the node's roles
        /// (default: all three).
        #[arg(long = "role", value_parser = parse_role)]
        roles: Vec<Role>,
    },
    /// Create, list and revoke stream keys (works while the appliance runs). Once a key
    /// exists, every publish needs one.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Override auth.data_dir.
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Manage the admin users of the console and API (works while the appliance runs).
    /// Until one exists, the console and API answer only on loopback.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Override auth.data_dir.
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Print a signed publish key for STREAM (`STREAM?exp=...&sig=...`), valid for
    /// --valid; needs auth.publish_token_secret, the same on every node that takes it.
    Token {
        stream: String,
        /// How long the key publishes, e.g. 30m, 12h, 7d (at most 30 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        valid: std::time::Duration,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print a stream's live server and its fallback order on the cluster's ring.
    Ring {
        /// The stream id (public stream name).
        stream: String,
        /// Cluster config (one shared file for every node).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check the configuration as `run` would (for --node, in a cluster config), print it
    /// as TOML (secrets redacted) and exit; exits non-zero with the offending key.
    Config {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// This node's id in the config's cluster.nodes.
        #[arg(long)]
        node: Option<String>,
    },
    /// Print what this host can transcode with: GStreamer elements, device nodes, GPUs,
    /// every backend's state (or why it cannot run) and the admission budgets. Exits 0.
    Probe {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Transcode a file (H.264 + AAC in MP4, FLV, MKV or TS) through the live pipeline as
    /// fast as the host allows, and write a static DASH package (MPD + segments) to --out.
    Transcode {
        input: PathBuf,
        /// Directory for the package (created; existing files of the same names are replaced).
        #[arg(long)]
        out: PathBuf,
        /// Rungs as HEIGHTp=BITRATEk, best first (default: transcode.rungs of the config).
        #[arg(long)]
        ladder: Option<String>,
        /// x264 speed preset (software and nvdec-x264 backends).
        #[arg(long)]
        x264_preset: Option<String>,
        /// Use only this backend (nvenc, nvdec-x264, vaapi, software); default: the config's
        /// preference order.
        #[arg(long, value_parser = parse_backend)]
        backend: Option<Backend>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn parse_role(name: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| "one of live, origin, edge".to_owned())
}

fn parse_backend(name: &str) -> Result<Backend, String> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| "one of nvenc, nvdec-x264, vaapi, software".to_owned())
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key that publishes STREAM (its public name); prints the key, once.
    Add { stream: String },
    /// List the keys (id, stream, created, revoked); never the secrets.
    List,
    /// Revoke the key with this id: new publishes with it are refused.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Create admin user NAME; reads the password (at least 10 characters) from standard
    /// input, one line.
    AddUser { name: String },
    /// List the admin users.
    ListUsers,
    /// Delete admin user NAME and end its sessions.
    DeleteUser { name: String },
}

/// The command line's overrides of a node's config (`run`; `config` takes `node` alone).
#[derive(Default)]
struct Overrides {
    node: Option<String>,
    rtmp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    roles: Vec<Role>,
}

/// The configuration `run` (and `config`) uses: the file or the embedded default, this
/// node's entry of a cluster config, the command line's overrides, validated.
fn node_config(path: Option<&PathBuf>, overrides: Overrides) -> anyhow::Result<Config> {
    let Overrides { node, rtmp, http, data_dir, roles } = overrides;
    let mut config = with_data_dir(load(path)?, data_dir);
    if let Some(node) = node {
        config.cluster.node_id = node;
    }
    if config.cluster.discovery.is_some() && config.cluster.node_id == rackcast::cluster::config::DEFAULT_NODE_ID {
        // With discovery a node is its hostname (a pod's name), unless the config names it.
        config.cluster.node_id = hostname().context("reading the hostname for cluster.node_id (cluster.discovery)")?;
    }
    if !roles.is_empty() {
        config.cluster.set_roles(&roles);
    }
    if let Some(entry) = config.cluster.this_node() {
        config.ingest.listen = entry.rtmp;
        config.http.listen = entry.http;
    }
    if let Some(rtmp) = rtmp {
        config.ingest.listen = rtmp;
    }
    if let Some(http) = http {
        config.http.listen = http;
    }
    config.validate()?;
    Ok(config)
}

fn hostname() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_owned())
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    })
}

/// Most glibc malloc arenas per core. glibc gives each thread that contends for the heap
/// an arena of its own, up to 8 per core, and keeps what each grew: every GStreamer
/// pipeline brings its own streaming threads, so a node that starts and stops pipelines
/// (reconnecting encoders, refused publishes) kept growing by about 3 MiB a pipeline
/// (19 publishes cut at the RTMP guard: +54 MiB with glibc's default, +13 MiB with two
/// arenas on two cores). `MALLOC_ARENA_MAX` in the environment still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS_PER_CORE: usize = 1;

/// Bounds glibc's malloc arenas, before any thread starts.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = (cores * MALLOC_ARENAS_PER_CORE).max(2);
        // SAFETY: mallopt only sets a malloc tunable; it is called before any other thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, i32::try_from(arenas).unwrap_or(i32::MAX)) };
    }
}

fn main() -> anyhow::Result<()> {
    bound_malloc_arenas();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Ring { stream, config } => {
            let config = load(config.as_ref())?;
            let live: Vec<String> = config
                .cluster
                .nodes
                .iter()
                .filter(|n| n.roles.contains(&Role::Live))
                .map(|n| n.id.clone())
                .collect();
            anyhow::ensure!(!live.is_empty(), "the config lists no node with the live role (cluster.nodes)");
            let ring = rackcast::cluster::Ring::new(live, config.cluster.vnodes);
            let order = ring.order(&stream);
            println!("stream {stream}");
            println!("owner  {}", order[0]);
            for (i, node) in order.iter().enumerate().skip(1) {
                println!("then   {node} (when the {i} node(s) before it are down)");
            }
            Ok(())
        }
        Command::Probe { config, json } => probe(&load(config.as_ref())?, json),
        Command::Transcode { input, out, ladder, x264_preset, backend, config } => {
            let mut config = load(config.as_ref())?;
            if let Some(ladder) = ladder {
                config.transcode.rungs = rackcast::transcode::file::parse_ladder(&ladder).map_err(anyhow::Error::msg).context("--ladder")?;
            }
            if let Some(preset) = x264_preset {
                config.transcode.x264_preset = preset;
            }
            if let Some(backend) = backend {
                config.transcode.backends = vec![backend];
                config.transcode.fallback = rackcast::transcode::capability::Fallback::Refuse;
            }
            config.validate()?;
            transcode(&input, &out, config)
        }
        Command::Config { config, node } => {
            let config = node_config(config.as_ref(), Overrides { node, ..Overrides::default() })?;
            print!("{}", toml::to_string_pretty(&config.redacted())?);
            Ok(())
        }
        Command::Token { stream, valid, config } => {
            use rackcast::auth::token::{self, PUBLISH_MAX_LIFETIME, Purpose};
            let config = load(config.as_ref())?;
            config.validate()?;
            let secret = &config.auth.publish_token_secret;
            anyhow::ensure!(!secret.is_empty(), "auth.publish_token_secret is not set in the config");
            anyhow::ensure!(valid <= PUBLISH_MAX_LIFETIME, "a publish token is valid for at most {}", humantime::format_duration(PUBLISH_MAX_LIFETIME));
            rackcast::ingest::key::open_name(&stream).with_context(|| format!("{stream:?} is not a stream name"))?;
            println!("{}", token::sign(Purpose::Publish, &stream, secret, valid));
            Ok(())
        }
        Command::Keys { action, config, data_dir } => keys(action, &with_data_dir(load(config.as_ref())?, data_dir)),
        Command::Admin { action, config, data_dir } => admin(action, &with_data_dir(load(config.as_ref())?, data_dir)),
        Command::Run { config, rtmp, http, node, data_dir, roles } => {
            let config = node_config(config.as_ref(), Overrides { node, rtmp, http, data_dir, roles })?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async move {
                let listeners = Listeners::bind(config.ingest.listen, config.http.listen)?;
                println!(
                    "rackcast ready rtmp={} http={}",
                    listeners.rtmp.local_addr()?,
                    listeners.http.local_addr()?
                );
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                app::run(config, listeners, shutdown).await
            })
        }
    }
}

fn probe(config: &Config, json: bool) -> anyhow::Result<()> {
    use rackcast::transcode::capability::Capabilities;
    use rackcast::transcode::resources::checked_template;
    rackcast::transcode::init()?;
    let host = rackcast::host::HostTelemetry::start();
    let caps = Capabilities::probe(&host.snapshot());
    let budgets = rackcast::transcode::resources::budgets(&config.transcode, &caps);
    let backends: Vec<serde_json::Value> = Backend::ALL
        .iter()
        .map(|&backend| {
            let state = caps.devices(backend).and_then(|devices| {
                let template = checked_template(backend, &devices, &config.transcode, &caps.gstreamer).map_err(|e| e.to_string())?;
                Ok((devices, template.origin))
            });
            match state {
                Ok((devices, template)) => serde_json::json!({
                    "backend": backend.name(), "usable": true, "configured": config.transcode.backends.contains(&backend),
                    "devices": devices.iter().map(|d| d.to_string()).collect::<Vec<_>>(), "template": template,
                }),
                Err(why) => serde_json::json!({ "backend": backend.name(), "usable": false, "configured": config.transcode.backends.contains(&backend), "why": why }),
            }
        })
        .collect();
    // With the nvenc-sdk feature, NVENC's own account of each encoder.
    #[cfg(feature = "nvenc-sdk")]
    let nvenc: Vec<serde_json::Value> = caps
        .nvenc_gpus
        .iter()
        .map(|gpu| match rackcast::transcode::nvenc_sdk::encoder_caps(*gpu) {
            Ok(found) => serde_json::to_value(found).unwrap_or_default(),
            Err(why) => serde_json::json!({ "cuda_device": gpu, "error": why }),
        })
        .collect();
    #[cfg(not(feature = "nvenc-sdk"))]
    let nvenc: Vec<serde_json::Value> = Vec::new();
    if json {
        let report = serde_json::json!({
            "nvenc_sdk": if cfg!(feature = "nvenc-sdk") { serde_json::json!(nvenc) } else { serde_json::json!("not built (cargo feature nvenc-sdk)") },
            "capabilities": caps,
            "cpu_share": host.cpu_share,
            "backends": backends,
            "preference": config.transcode.backends.iter().map(|b| b.name()).collect::<Vec<_>>(),
            "fallback": config.transcode.fallback,
            "over_budget": config.transcode.over_budget,
            "budgets": budgets,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("GStreamer      {}", caps.gstreamer);
    let share = &host.cpu_share;
    let quota = share.quota_cores.map_or("no CPU quota".to_owned(), |q| format!("quota {q:.2} cores"));
    println!("CPU share      {:.2} cores ({quota}; {} CPUs in affinity; {})", share.cores, share.affinity, share.cgroup.as_deref().unwrap_or("no cpu cgroup found"));
    let present = |e: &str| if caps.elements.contains(e) { "registered" } else { "absent" };
    println!("elements       {}", rackcast::transcode::capability::ELEMENTS.iter().map(|e| format!("{e} {}", present(e))).collect::<Vec<_>>().join(", "));
    let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(" ") };
    println!("/dev/nvidia*   {}", list(&caps.nvidia_device_nodes));
    println!("/dev/dri       {}", list(&caps.render_nodes));
    match &caps.nvml {
        Some(why) => println!("NVIDIA GPUs    not present ({why})"),
        None => {
            for gpu in &caps.gpus {
                let memory = gpu.memory_total_bytes.map_or("?".to_owned(), |b| format!("{} MiB", b >> 20));
                println!("NVIDIA GPU {}   {} (driver {}, {memory})", gpu.index, gpu.name, gpu.driver.as_deref().unwrap_or("?"));
            }
        }
    }
    println!("NVDEC on CUDA devices {:?}, NVENC on {:?}; VA devices {}", caps.nvdec_gpus, caps.nvenc_gpus, caps.va_devices.len());
    if cfg!(feature = "nvenc-sdk") {
        for encoder in &nvenc {
            println!("NVENC (SDK)    {encoder}");
        }
    } else {
        println!("NVENC (SDK)    not built: the nvenc-sdk cargo feature reads each encoder's limits");
    }
    println!();
    println!("backends (preference: {}; fallback {:?}; over budget {:?})", config.transcode.backends.iter().map(|b| b.name()).collect::<Vec<_>>().join(", "), config.transcode.fallback, config.transcode.over_budget);
    for entry in &backends {
        let name = entry["backend"].as_str().unwrap_or_default();
        let configured = if entry["configured"] == true { "" } else { " (not in transcode.backends)" };
        if entry["usable"] == true {
            println!("  {name:<11} usable on {} (template {}){configured}", entry["devices"].as_array().map(|d| d.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default(), entry["template"].as_str().unwrap_or_default());
        } else {
            println!("  {name:<11} missing: {}{configured}", entry["why"].as_str().unwrap_or_default());
        }
    }
    println!();
    println!(
        "limits         NVENC {} sessions per GPU, NVDEC {} per GPU, VA-API {} per device, CPU budget {:.2} cores",
        budgets.nvenc_sessions, budgets.nvdec_sessions, budgets.vaapi_sessions, budgets.cpu_cores
    );
    Ok(())
}

/// CPU seconds this process has used (user + system), from /proc.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), in USER_HZ (100 on Linux).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn transcode(input: &std::path::Path, out: &std::path::Path, mut config: Config) -> anyhow::Result<()> {
    rackcast::transcode::init()?;
    // One file, as fast as it goes: the CPU budget that protects live streams does not apply.
    config.transcode.cpu_budget = Some(f64::MAX);
    let host = rackcast::host::HostTelemetry::start();
    let resources = rackcast::transcode::resources::Resources::start(&config.transcode, &host.snapshot()).map_err(anyhow::Error::msg)?;
    let report = rackcast::transcode::file::run(input, out, &config.transcode, &resources, config.package.segment_duration)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("transcoding {}", input.display()))?;
    let media = report.media.as_secs_f64();
    let wall = report.wall.as_secs_f64();
    let cpu = process_cpu_seconds().unwrap_or(f64::NAN);
    println!(
        "transcoded {media:.2} s of media in {wall:.2} s ({:.2}x real time), {cpu:.2} CPU-s ({:.3} CPU-s per media second); backend {}; rungs {}; {} segments; {}",
        media / wall,
        cpu / media,
        report.backend,
        report.rungs.join(", "),
        report.segments,
        report.manifest.display()
    );
    Ok(())
}

fn with_data_dir(mut config: Config, data_dir: Option<PathBuf>) -> Config {
    if let Some(dir) = data_dir {
        config.auth.data_dir = dir;
    }
    config
}

fn admin(action: AdminAction, config: &Config) -> anyhow::Result<()> {
    use rackcast::auth::admin::AdminStore;
    let store = AdminStore::open(&config.auth.data_dir)?;
    match action {
        AdminAction::AddUser { name } => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("password for {name} (input is shown; pipe it in to hide it): ");
            }
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            store.add_user(&name, password)?;
            store.record("cli", None, "user.create", &name, "ok")?;
            println!("added admin user {name}");
        }
        AdminAction::ListUsers => {
            for user in store.users()? {
                println!("{:<24} created {}", user.name, user.created_at);
            }
        }
        AdminAction::DeleteUser { name } => {
            anyhow::ensure!(store.delete_user(&name)?, "no user {name:?}");
            store.record("cli", None, "user.delete", &name, "ok")?;
            println!("deleted admin user {name}");
        }
    }
    Ok(())
}

fn keys(action: KeysAction, config: &Config) -> anyhow::Result<()> {
    use rackcast::auth::keys::KeyStore;
    let store = KeyStore::open(&config.auth.data_dir)?;
    let audit = rackcast::auth::admin::AdminStore::open(&config.auth.data_dir)?;
    match action {
        KeysAction::Add { stream } => {
            let stream = rackcast::media::StreamId::parse(&stream).with_context(|| format!("{stream:?} is not a stream name"))?;
            let key = store.create(&stream)?.with_context(|| format!("the store holds {} keys already", rackcast::auth::keys::MAX_KEYS))?;
            audit.record("cli", None, "key.create", &format!("{} ({stream})", key.id), "ok")?;
            println!("id      {}", key.id);
            println!("stream  {stream}");
            println!("key     {}", key.secret);
            eprintln!("Publish to rtmp://HOST:1935/live/{{key}}; viewers watch /live/{stream}/manifest.mpd. The key is not shown again.");
        }
        KeysAction::List => {
            println!("{:<14} {:<24} {:<12} revoked", "id", "stream", "created");
            for key in store.list()? {
                let revoked = key.revoked_at.map_or_else(|| "-".to_owned(), |t| t.to_string());
                println!("{:<14} {:<24} {:<12} {revoked}", key.id, key.stream, key.created_at);
            }
        }
        KeysAction::Revoke { id } => {
            anyhow::ensure!(store.revoke(&id)?, "no key {id:?} in force");
            audit.record("cli", None, "key.revoke", &id, "ok")?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn run_roles(args: &[&str]) -> Result<Vec<Role>, clap::Error> {
        let cli = Cli::try_parse_from(["rackcast", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run { roles, .. } => Ok(roles),
            _ => unreachable!("parsed as run"),
        }
    }

    #[test]
    fn role_is_repeatable_and_names_a_role() {
        assert_eq!(run_roles(&[]).unwrap(), []);
        assert_eq!(run_roles(&["--role", "edge"]).unwrap(), [Role::Edge]);
        assert_eq!(run_roles(&["--role", "live", "--role", "origin"]).unwrap(), [Role::Live, Role::Origin]);
        let err = run_roles(&["--role", "viewer"]).unwrap_err().to_string();
        assert!(err.contains("one of live, origin, edge"), "{err}");
    }

    #[test]
    fn role_overrides_this_nodes_entry() {
        let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/federation.toml"));
        let node = || Some("live-1".to_owned());
        let config = node_config(Some(&path), Overrides { node: node(), ..Overrides::default() }).unwrap();
        assert_eq!(config.cluster.roles(), [Role::Live]);
        let config = node_config(Some(&path), Overrides { node: node(), roles: vec![Role::Origin, Role::Live, Role::Origin], ..Overrides::default() }).unwrap();
        assert_eq!(config.cluster.roles(), [Role::Live, Role::Origin]);
        assert_eq!(config.cluster.this_node().unwrap().roles, [Role::Live, Role::Origin], "its own entry agrees");
        let alone = node_config(None, Overrides { roles: vec![Role::Edge], ..Overrides::default() }).unwrap();
        assert_eq!(alone.cluster.roles(), [Role::Edge]);
    }
}
