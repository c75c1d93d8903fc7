//! The player matrix ("every real client works"): real players read a live
//! stream of the real binary through a recording HTTP proxy each, so the test knows which
//! segments each one fetched and when.
//!
//! Players: ffmpeg (`-re`, decoding to null), GStreamer `playbin` (dashdemux) and
//! `playbin3` (dashdemux2) into synchronised fakesinks, VLC (`--vout stats`), streamlink
//! piped into ffmpeg, and dash.js and Shaka Player in one headless Chromium page. The
//! browser players read `manifest.mpd` (SegmentTimeline), the others `manifest-number.mpd`
//! (SegmentTemplate@duration), as the README tells their users to;
//! RACKCAST_PLAYERS_FORM=timeline|number|ll gives every DASH player one form (on
//! `manifest-ll.mpd`, dash.js and Shaka each ask once or twice for the next segment of the
//! old Period across the re-plan, 404: see docs/low-latency.md; the low-latency browser
//! test in low_latency.rs plays that form without a Period change). On HLS
//! (`master.m3u8`, the same segments): ffmpeg, `playbin3` (hlsdemux2), VLC and hls.js (in
//! the same page), where a Period change is an `EXT-X-DISCONTINUITY`.
//!
//! A three-node federation (live, origin, edge) with a short DVR window and a cheap
//! 320x180 ladder. Phases, players of a phase run concurrently:
//! (a) straight from the live node, once the stream is older than the DVR window;
//! (b)+(c) through the edge, during which the stream re-plans: the ladder catalogue's
//!     180p rung wants more than the 300 kbit/s source carries, so the first measured plan
//!     (delayed to `REPLAN_AFTER` by `ladder.initial_measurement`) drops it, and the live
//!     node cuts a new Period at the next keyframe.
//!
//! Each player, each phase (`Check`): frames decoded for at least 10 s of playback, no error
//! lines, no 4xx/5xx answers, and the first media segment it fetched within 3 segments of
//! the newest one the MPD listed at that moment; in (c), it went on into the new Period.
//! A check that a player's Debian 12 version (ffmpeg 5.1, GStreamer 1.22.0, VLC 3.0,
//! streamlink 5.2) cannot pass, whatever rackcast serves, is listed in `CANNOT_PASS` with
//! the reason from its source (src/package/mod.rs keeps the same list for users): it is
//! not run for that player, and a player with no check left in a phase is not started in
//! it. Every check that runs can fail the test; each run prints what was not checked.
//! Every MPD poll (live node and edge): each SegmentTimeline contiguous, no listed segment
//! ever changes, audio and video segment N start within one AAC frame of each other; every
//! MPD served validates against tests/schema/DASH-MPD.xsd when that file exists.
//!
//! RACKCAST_PLAYER_LOGS=DIR keeps every player's output, requests and manifests; with
//! RACKCAST_PLAYERS_MPD_FILTER=CMD every MPD a player gets is piped through CMD first
//! (tests/players/mpd_form.py rewrites it into candidate forms), to try an MPD form on every
//! player without changing the appliance.
//!
//! The players must be installed (tests/run.sh does it); without them the test is skipped
//! with a loud message, unless RACKCAST_REQUIRE_PLAYERS is set. The npm modules come from
//! tests/players/package-lock.json (`npm ci`, run here when node_modules is not current).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::players::*;
use crate::support::*;

const STREAM: &str = "matrix";
const FPS: u64 = 30;
/// Playback every player must show, in frames (10 s).
const MIN_FRAMES: u64 = 10 * FPS;
const DVR: &str = "8s";
/// How long the players of a phase run: with the HLS players beside the DASH ones, a
/// browser player on the 2-core test machine can take 5 s to start.
const PHASE: Duration = Duration::from_secs(25);
/// When the first measured ladder plan (the re-plan) is made, after the publish starts.
const REPLAN_AFTER: Duration = Duration::from_secs(49);
/// How close to the newest listed segment a player's first segment must be.
const EDGE_SLACK: u64 = 3;

/// What the matrix checks of a player in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Frames decoded for at least `MIN_FRAMES`.
    Plays,
    /// No error lines in its output.
    NoErrors,
    /// No 4xx/5xx answers to its requests.
    NoFailedRequests,
    /// Its first media segment was listed, within `EDGE_SLACK` of the newest one then.
    StartsAtTheLiveEdge,
    /// It fetched media of the new Period (a phase across a Period change only).
    FollowsPeriodChange,
}

const CHECKS: [Check; 5] = [Check::Plays, Check::NoErrors, Check::NoFailedRequests, Check::StartsAtTheLiveEdge, Check::FollowsPeriodChange];

/// The phases a limit shows in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    EveryPhase,
    /// Phases across a Period change.
    PeriodChange,
}

/// Checks a player's Debian 12 version cannot pass, whatever form of rackcast's MPD it is
/// given (player, where, check, why): not run for that player there. Remove an entry when
/// the player's version changes, and see whether it passes.
const CANNOT_PASS: &[(Player, Scope, Check, &str)] = &[
    // ffmpeg 5.1 dashdec cannot follow a live Period change: the refresh fails when the
    // Representation count changes, and it asks for numbers past the old Period's end (404)
    // for as long as it runs.
    (Player::Ffmpeg, Scope::PeriodChange, Check::NoErrors, "dashdec cannot follow a live Period change"),
    (Player::Ffmpeg, Scope::PeriodChange, Check::NoFailedRequests, "dashdec cannot follow a live Period change"),
    (Player::Ffmpeg, Scope::PeriodChange, Check::FollowsPeriodChange, "dashdec cannot follow a live Period change"),
    // ffmpeg 5.1's HLS reader follows the discontinuity but keeps its timestamps: the new
    // Period's media starts at 0 and it warns "DTS ... out of order" once per stream.
    (Player::FfmpegHls, Scope::PeriodChange, Check::NoErrors, "ffmpeg 5.1's HLS reader warns where a discontinuity resets timestamps"),
    // dashdemux (GStreamer 1.22.0) stays in the first Period of a live MPD, asking for the
    // number after its end; where it does reach the next Period (the first one's
    // Period@duration ends where the next starts), a new ladder's caps fail to negotiate
    // ("Internal data stream error ... not-negotiated") and playback ends there.
    (Player::Playbin, Scope::PeriodChange, Check::NoErrors, "dashdemux 1.22 cannot renegotiate at a live Period change"),
    (Player::Playbin, Scope::PeriodChange, Check::NoFailedRequests, "dashdemux 1.22 stays in the first Period of a live MPD"),
    (Player::Playbin, Scope::PeriodChange, Check::FollowsPeriodChange, "dashdemux 1.22 stays in the first Period of a live MPD"),
    // dashdemux2 (1.22.0): a DASH stream recommends no buffering threshold, so it buffers up
    // to its 30 s high watermark before it plays (the 25 s phases end first),
    // and starts a segment or two further back; it asserts on a manifest update across the
    // Period change and stays in the old Period.
    (Player::Playbin3, Scope::EveryPhase, Check::Plays, "dashdemux2 1.22 buffers 30 s before it plays"),
    (Player::Playbin3, Scope::EveryPhase, Check::StartsAtTheLiveEdge, "dashdemux2 1.22 buffers 30 s before it plays"),
    (Player::Playbin3, Scope::PeriodChange, Check::NoErrors, "dashdemux2 1.22 asserts on a manifest update across a Period change"),
    (Player::Playbin3, Scope::PeriodChange, Check::NoFailedRequests, "dashdemux2 1.22 stays in the first Period of a live MPD"),
    (Player::Playbin3, Scope::PeriodChange, Check::FollowsPeriodChange, "dashdemux2 1.22 stays in the first Period of a live MPD"),
    // VLC 3.0: live delay is max(suggestedPresentationDelay, 6 s, minBufferTime)
    // (BufferingLogic::getLiveDelay); it never leaves the first Period of a live MPD.
    (Player::Vlc, Scope::EveryPhase, Check::StartsAtTheLiveEdge, "VLC 3.0 starts at least 6 s behind live"),
    (Player::VlcHls, Scope::EveryPhase, Check::StartsAtTheLiveEdge, "VLC 3.0 starts at least 6 s behind live"),
    (Player::Vlc, Scope::EveryPhase, Check::NoErrors, "VLC 3.0 reports its own buffering adjustments as errors"),
    (Player::VlcHls, Scope::EveryPhase, Check::NoErrors, "VLC 3.0 reports its own buffering adjustments as errors"),
    (Player::Vlc, Scope::PeriodChange, Check::NoFailedRequests, "VLC 3.0 never leaves the first Period of a live MPD"),
    (Player::Vlc, Scope::PeriodChange, Check::FollowsPeriodChange, "VLC 3.0 never leaves the first Period of a live MPD"),
    // streamlink 5.2 reads periods[0] only (stream/dash.py), so its playback ends where the
    // first Period does, however late the re-plan came.
    (Player::Streamlink, Scope::PeriodChange, Check::Plays, "streamlink 5.2 reads only the first Period"),
    (Player::Streamlink, Scope::PeriodChange, Check::NoErrors, "streamlink 5.2 reads only the first Period"),
    (Player::Streamlink, Scope::PeriodChange, Check::NoFailedRequests, "streamlink 5.2 reads only the first Period"),
    (Player::Streamlink, Scope::PeriodChange, Check::FollowsPeriodChange, "streamlink 5.2 reads only the first Period"),
];

/// Why `player` cannot pass `check` in a phase (across a Period change or not), if it cannot.
fn cannot_pass(player: Player, check: Check, period_change: bool) -> Option<&'static str> {
    CANNOT_PASS
        .iter()
        .find(|(p, scope, c, _)| *p == player && *c == check && (*scope == Scope::EveryPhase || period_change))
        .map(|(.., why)| *why)
}

/// The checks run on `player` in a phase (across a Period change or not).
fn checks(player: Player, period_change: bool) -> Vec<Check> {
    CHECKS
        .into_iter()
        .filter(|&c| (c != Check::FollowsPeriodChange || period_change) && cannot_pass(player, c, period_change).is_none())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Player {
    Ffmpeg,
    Playbin,
    Playbin3,
    Vlc,
    Streamlink,
    DashJs,
    Shaka,
    /// The same programs on the HLS playlists (`master.m3u8`).
    FfmpegHls,
    PlaybinHls,
    VlcHls,
    HlsJs,
}

const PLAYERS: [Player; 11] = [
    Player::Ffmpeg,
    Player::Playbin,
    Player::Playbin3,
    Player::Vlc,
    Player::Streamlink,
    Player::DashJs,
    Player::Shaka,
    Player::FfmpegHls,
    Player::PlaybinHls,
    Player::VlcHls,
    Player::HlsJs,
];

impl Player {
    fn name(self) -> &'static str {
        match self {
            Player::Ffmpeg => "ffmpeg",
            Player::Playbin => "gst-playbin",
            Player::Playbin3 => "gst-playbin3",
            Player::Vlc => "vlc",
            Player::Streamlink => "streamlink",
            Player::DashJs => "dash.js",
            Player::Shaka => "shaka",
            Player::FfmpegHls => "ffmpeg-hls",
            Player::PlaybinHls => "gst-playbin3-hls",
            Player::VlcHls => "vlc-hls",
            Player::HlsJs => "hls.js",
        }
    }

    /// Its name in the browser page (tests/players/player.html: the query parameter that
    /// gives it its MPD, and the `player` of its reports), for the players played there.
    fn page_name(self) -> Option<&'static str> {
        match self {
            Player::DashJs => Some("dashjs"),
            Player::Shaka => Some("shaka"),
            Player::HlsJs => Some("hlsjs"),
            _ => None,
        }
    }
}

impl Player {
    /// The manifest this player is given. HLS players get the multivariant playlist.
    /// DASH players that compute segment numbers from the clock and cannot use a sliding
    /// SegmentTimeline (ffmpeg's dashdec, GStreamer 1.22's dashdemux, VLC 3.0, streamlink
    /// 5.2) get the Number form; the browser players the Timeline form.
    /// RACKCAST_PLAYERS_FORM=timeline|number|ll gives every DASH player one form.
    fn manifest(self) -> &'static str {
        if self.hls() {
            return "master.m3u8";
        }
        match std::env::var("RACKCAST_PLAYERS_FORM").as_deref() {
            Ok("timeline") => return "manifest.mpd",
            Ok("number") => return "manifest-number.mpd",
            Ok("ll") => return "manifest-ll.mpd",
            _ => {}
        }
        match self {
            Player::DashJs | Player::Shaka => "manifest.mpd",
            _ => "manifest-number.mpd",
        }
    }

    fn hls(self) -> bool {
        matches!(self, Player::FfmpegHls | Player::PlaybinHls | Player::VlcHls | Player::HlsJs)
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn have(program: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().is_ok_and(|o| o.status.success())
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|p| have(p))
}

/// What is missing to run the matrix.
fn missing_tools() -> Vec<String> {
    let mut missing: Vec<String> = ["ffmpeg", "gst-launch-1.0", "vlc", "streamlink", "npm"]
        .into_iter()
        .filter(|p| !have(p))
        .map(str::to_owned)
        .collect();
    if chromium().is_none() {
        missing.push("chromium".into());
    }
    if is_root() && !have("setpriv") {
        missing.push("setpriv (VLC refuses to run as root)".into());
    }
    if schema().is_some() && !have("xmllint") {
        missing.push("xmllint (tests/schema/DASH-MPD.xsd is present)".into());
    }
    missing
}

fn schema() -> Option<std::path::PathBuf> {
    Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schema/DASH-MPD.xsd")).filter(|p| p.exists())
}

fn config(nodes: &[ClusterNode]) -> String {
    let mut text = format!(
        "[package]\ndvr_window = \"{DVR}\"\n\n[transcode]\nx264_preset = \"ultrafast\"\n\
         rungs = [{{ height = 180, bitrate_kbps = 1000 }}, {{ height = 120, bitrate_kbps = 150 }}]\n\n\
         [ladder]\ninitial_measurement = \"{}s\"\n\n\
         [cluster]\nhealth_interval = \"200ms\"\nhealth_timeout = \"150ms\"\nrelay_secret = \"player-matrix-secret-0123\"\n",
        REPLAN_AFTER.as_secs()
    );
    for n in nodes {
        text += &n.toml();
    }
    text
}

/// 320x180 at 30 fps, a keyframe every second, ~300 kbit/s video (below the 180p rung's
/// 1000 kbit/s, so the first measured plan drops that rung), AAC-LC 48 kHz.
fn publisher(url: &str) -> PlayerProcess {
    let mut ffmpeg = player_command("ffmpeg");
    ffmpeg
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", &format!("testsrc2=size=320x180:rate={FPS}")])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "300"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", &FPS.to_string()])
        .args(["-pix_fmt", "yuv420p", "-b:v", "300k", "-maxrate", "300k", "-bufsize", "300k"])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "flv", url]);
    PlayerProcess::start("publisher", vec![ffmpeg])
}

/// The players of one phase, each behind its own recording proxy.
struct Phase {
    name: &'static str,
    /// Whether the phase runs across a Period change.
    period_change: bool,
    proxies: Vec<(Player, RecordingProxy)>,
    processes: Vec<(Vec<Player>, PlayerProcess)>,
    started: Instant,
    _dirs: Vec<tempfile::TempDir>,
}

/// Starts the players that have a check to run in this phase (across a Period change or
/// not), each behind its own recording proxy.
fn start_phase(name: &'static str, upstream: &str, page: &PageServer, period_change: bool) -> Phase {
    let players: Vec<Player> = PLAYERS.into_iter().filter(|&p| !checks(p, period_change).is_empty()).collect();
    let runs = |player: Player| players.contains(&player);
    let proxies: Vec<(Player, RecordingProxy)> = players.iter().map(|&p| (p, RecordingProxy::start(upstream))).collect();
    let mpd = |player: Player| {
        proxies.iter().find(|(p, _)| *p == player).unwrap().1.url(&format!("/live/{STREAM}/{}", player.manifest()))
    };
    let mut processes = Vec::new();
    let mut dirs = Vec::new();

    for player in [Player::Ffmpeg, Player::FfmpegHls].into_iter().filter(|&p| runs(p)) {
        let mut ffmpeg = player_command("ffmpeg");
        ffmpeg
            .args(["-hide_banner", "-nostdin", "-loglevel", "level+warning", "-re", "-i", &mpd(player)])
            .args(["-map", "0:v:0", "-map", "0:a:0", "-f", "null", "-progress", "pipe:1", "-nostats", "-"]);
        processes.push((vec![player], PlayerProcess::start(player.name(), vec![ffmpeg])));
    }

    // On HLS, playbin3 with hlsdemux2: playbin falls back to the legacy hlsdemux (hlsdemux2
    // refuses a context that is not streams-aware), which stops fetching segments through
    // the re-plan phase (not yet understood).
    let gst_players = [(Player::Playbin, "playbin"), (Player::Playbin3, "playbin3"), (Player::PlaybinHls, "playbin3")];
    for (player, element) in gst_players.into_iter().filter(|(p, _)| runs(*p)) {
        let mut gst = player_command("gst-launch-1.0");
        if player == Player::Playbin {
            // playbin (not playbin3) works with the legacy dashdemux only: GStreamer 1.22
            // ranks dashdemux2 higher, and it refuses a context that is not streams-aware.
            gst.env("GST_PLUGIN_FEATURE_RANK", "dashdemux2:NONE");
        }
        gst.env("GST_DEBUG", "2").env("GST_DEBUG_NO_COLOR", "1").args([
            "-v".to_owned(),
            element.to_owned(),
            format!("uri={}", mpd(player)),
            "video-sink=fakesink name=vsink sync=true silent=false".to_owned(),
            "audio-sink=fakesink name=asink sync=true".to_owned(),
        ]);
        processes.push((vec![player], PlayerProcess::start(player.name(), vec![gst])));
    }

    for player in [Player::Vlc, Player::VlcHls].into_iter().filter(|&p| runs(p)) {
        // VLC refuses to run as root (a compile-time check in its main); the supported way
        // is an unprivileged user, so as root it runs as nobody, with its own HOME.
        let home = tempfile::tempdir().unwrap();
        let mut vlc = if is_root() {
            let _ = Command::new("chown").args(["nobody", home.path().to_str().unwrap()]).status();
            let mut c = player_command("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "vlc"]);
            c
        } else {
            player_command("vlc")
        };
        vlc.env("HOME", home.path())
            .args(["-I", "dummy", "-vv", "--no-dbus", "--vout", "stats", "--aout", "adummy", "--no-video-title-show"])
            .arg(mpd(player));
        dirs.push(home);
        processes.push((vec![player], PlayerProcess::start(player.name(), vec![vlc])));
    }

    if runs(Player::Streamlink) {
        let mut streamlink = player_command("streamlink");
        streamlink.args(["--loglevel", "info", "--stdout", &format!("dash://{}", mpd(Player::Streamlink)), "best"]);
        // The decoder keeps the demuxer's 1 ms time base (`-enc_time_base -1`): streamlink's
        // Matroska carries the RTMP source's millisecond timestamps (33 and 34 ms apart),
        // from which ffmpeg may guess 10000/333 fps and then round two frames onto one tick
        // of that rate ("non monotonically increasing dts" from its own null muxer, with
        // the packets it read in order).
        let mut decode = player_command("ffmpeg");
        decode
            .args(["-hide_banner", "-nostdin", "-loglevel", "level+warning", "-i", "-", "-map", "0:v:0", "-enc_time_base:v", "-1"])
            .args(["-f", "null", "-progress", "pipe:1", "-nostats", "-"]);
        processes.push((vec![Player::Streamlink], PlayerProcess::start("streamlink", vec![streamlink, decode])));
    }

    // dash.js, Shaka and hls.js in one Chromium page, each through its own proxy (its own
    // host and port, so none waits for another's connections).
    let in_browser: Vec<(Player, &str)> = players.iter().filter_map(|&p| Some((p, p.page_name()?))).collect();
    if !in_browser.is_empty() {
        let profile = tempfile::tempdir().unwrap();
        let query: Vec<String> = in_browser.iter().map(|&(p, name)| format!("{name}={}", mpd(p))).collect();
        let page_url = format!("http://127.0.0.1:{}/player.html?{}", page.port, query.join("&"));
        let browser = headless_chromium(chromium().unwrap(), profile.path(), "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", &page_url);
        dirs.push(profile);
        processes.push((in_browser.into_iter().map(|(p, _)| p).collect(), PlayerProcess::start("chromium", vec![browser])));
    }

    Phase { name, period_change, proxies, processes, started: Instant::now(), _dirs: dirs }
}

impl Phase {
    fn stop(&mut self) {
        for (_, process) in &mut self.processes {
            process.stop(Duration::from_secs(3));
        }
    }
}

/// One player's outcome in one phase.
struct Verdict {
    phase: &'static str,
    player: Player,
    frames: u64,
    first: String,
    segments: usize,
    failures: Vec<String>,
    notes: Vec<String>,
}

fn last_number(lines: &[String], key: &str) -> u64 {
    lines.iter().rev().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// Frames decoded and error lines, from what the player printed.
fn judge_output(player: Player, lines: &[String], page: &[Report], since: Instant, until: Instant) -> (u64, Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let frames = match player {
        Player::Ffmpeg | Player::FfmpegHls | Player::Streamlink => {
            for l in lines {
                // ffmpeg 5.1's HLS reader opens the init section again after every playlist
                // reload (hls.c compares the parsed playlist's init-section pointers, which
                // each reload replaces) and the mp4 demuxer warns about the moov it has seen.
                let init_again = player == Player::FfmpegHls && l.contains("Found duplicated MOOV Atom");
                let error = (l.contains("[error]") || l.contains("[fatal]") || l.contains("[warning]")) && !init_again;
                let streamlink_error = l.contains("[error]")
                    || l.starts_with("error:")
                    || l.contains("][warning]")
                    || l.starts_with("Traceback")
                    || l.starts_with("Exception in thread");
                if error || (player == Player::Streamlink && (streamlink_error || l.contains("Stream ended"))) {
                    errors.push(l.clone());
                }
            }
            last_number(lines, "frame=")
        }
        Player::Playbin | Player::Playbin3 | Player::PlaybinHls => {
            for l in lines {
                if l.starts_with("ERROR:") || l.starts_with("WARNING:") || l.contains(" ERROR ") {
                    errors.push(l.clone());
                } else if l.contains(" WARN ") {
                    notes.push(l.clone());
                }
            }
            lines.iter().filter(|l| l.contains("vsink: last-message = chain")).count() as u64
        }
        Player::Vlc | Player::VlcHls => {
            for l in lines {
                // Environment, not stream: no D-Bus session or hotkey interface here.
                let environment = l.contains("interface error: no suitable interface module")
                    || l.contains("initialization failed") && l.contains("interface");
                if (l.contains(" error: ") || l.contains("] error") || l.ends_with(" error") || l.contains("EOF reached"))
                    && !environment
                {
                    errors.push(l.clone());
                }
            }
            lines.iter().filter(|l| l.contains("VOUT got")).count() as u64
        }
        Player::DashJs | Player::Shaka | Player::HlsJs => {
            let name = player.page_name();
            let mine: Vec<&Report> = page.iter().filter(|r| r.at >= since && r.at <= until && r.value["player"].as_str() == name).collect();
            for r in &mine {
                if r.value["ev"] == "error" {
                    errors.push(format!("{}", r.value["detail"].as_str().unwrap_or("?")));
                }
                if r.value["ev"] == "loaded" {
                    notes.push(format!("version {}", r.value["version"]));
                }
            }
            if mine.is_empty() {
                errors.push("the page never reported (did Chromium start?)".into());
            }
            mine.iter().filter_map(|r| r.value["frames"].as_u64()).max().unwrap_or(0)
        }
    };
    (frames, errors, notes)
}

fn judge(phase: &Phase, page: &PageServer, watcher: &MpdWatcher, new_period: Option<&str>) -> Vec<Verdict> {
    let reports = page.reports();
    let mut verdicts = Vec::new();
    for (players, process) in &phase.processes {
        let lines = process.lines();
        for &player in players {
            let until = process.stopped.unwrap_or_else(Instant::now);
            let (frames, errors, notes) = judge_output(player, &lines, &reports, phase.started, until);
            let checked = checks(player, phase.period_change);
            let mut failures = Vec::new();
            let mut failed = |check: Check, failure: String| {
                if checked.contains(&check) {
                    failures.push(failure);
                }
            };
            if frames < MIN_FRAMES {
                failed(Check::Plays, format!("decoded {frames} frames in {PHASE:?}, under {MIN_FRAMES} (10 s)"));
            }
            if !errors.is_empty() {
                let shown: Vec<_> = errors.iter().take(4).cloned().collect();
                failed(Check::NoErrors, format!("{} error line(s), first: {}", errors.len(), shown.join(" || ")));
            }
            let hits = phase.proxies.iter().find(|(p, _)| *p == player).unwrap().1.hits();
            let media: Vec<(&Hit, SegmentPath)> =
                hits.iter().filter_map(|h| parse_segment_path(&h.path).map(|s| (h, s))).collect();
            let bad: Vec<String> = hits.iter().filter(|h| h.status >= 400).map(|h| format!("{} {} -> {}", h.method, h.path, h.status)).collect();
            if !bad.is_empty() {
                failed(Check::NoFailedRequests, format!("{} request(s) failed, first: {}", bad.len(), bad.iter().take(3).cloned().collect::<Vec<_>>().join(", ")));
            }
            let first = media.iter().find(|(_, s)| s.rendition != "audio").or(media.first());
            let first_text = match first {
                None => {
                    failed(Check::StartsAtTheLiveEdge, "fetched no media segment".into());
                    "-".into()
                }
                Some((hit, seg)) => {
                    let after = hit.at.duration_since(phase.started).as_secs_f64();
                    match watcher.newest_at(hit.at, &seg.session, &seg.rendition) {
                        None => {
                            failed(Check::StartsAtTheLiveEdge, format!("first segment {} was in no MPD polled before it", hit.path));
                            format!("{}/{} (unlisted)", seg.rendition, seg.number)
                        }
                        Some(newest) => {
                            let behind = newest as i64 - seg.number as i64;
                            if behind > EDGE_SLACK as i64 {
                                failed(
                                    Check::StartsAtTheLiveEdge,
                                    format!("first segment {} is {behind} behind the newest listed ({newest}) at {after:.1} s", hit.path),
                                );
                            }
                            format!("{}/{} newest {newest} ({behind:+}) at {after:.1}s", seg.rendition, seg.number)
                        }
                    }
                }
            };
            if let Some(session) = new_period {
                // 206: ffmpeg asks for every object with a Range header.
                let followed = media.iter().filter(|(h, s)| s.session == session && matches!(h.status, 200 | 206)).count();
                if followed == 0 {
                    failed(Check::FollowsPeriodChange, format!("fetched nothing from the new Period {session} (did not follow the Period change)"));
                }
            }
            verdicts.push(Verdict { phase: phase.name, player, frames, first: first_text, segments: media.len(), failures, notes });
        }
    }
    verdicts.sort_by_key(|v| v.player);
    verdicts
}

#[test]
fn every_real_client_plays_live_through_an_edge_and_across_a_period_change() {
    let missing = missing_tools();
    let required = std::env::var_os("RACKCAST_REQUIRE_PLAYERS").is_some();
    if !missing.is_empty() {
        assert!(!required, "RACKCAST_REQUIRE_PLAYERS is set but these are missing: {missing:?}");
        not_run(&format!("the player matrix needs {missing:?} (tests/run.sh installs them)"));
        return;
    }
    if let Err(e) = ensure_npm_modules(&players_dir(), &["dashjs", "shaka-player", "hls.js"]) {
        assert!(!required, "RACKCAST_REQUIRE_PLAYERS is set but the npm modules cannot be installed: {e}");
        not_run(&format!("the player matrix cannot install its npm modules: {e}"));
        return;
    }
    // Where each player starts and how much it decodes depend on the stream keeping real
    // time: no other test's appliances beside it (a rolling restart's five nodes and four
    // encoders starved it once).
    let _host = host_to_itself();
    let test_started = Instant::now();

    let node = ClusterNode::new;
    let nodes = [node("live-1", r#"["live"]"#), node("origin-1", r#"["origin"]"#), node("edge-1", r#"["edge"]"#)];
    let config = config(&nodes);
    let _running: Vec<Appliance> = nodes.iter().map(|n| Appliance::start_node(&config, n.id)).collect();
    for n in &nodes {
        wait_serving(&format!("127.0.0.1:{}", n.http), Duration::from_secs(10));
    }
    let live = format!("127.0.0.1:{}", nodes[0].http);
    let edge = format!("127.0.0.1:{}", nodes[2].http);
    let mpd_path = format!("/live/{STREAM}/manifest.mpd");

    let mut publish = publisher(&format!("rtmp://127.0.0.1:{}/live/{STREAM}", nodes[0].rtmp));
    let published = Instant::now();
    let number_path = format!("/live/{STREAM}/manifest-number.mpd");
    let mut live_watch = MpdWatcher::start("live MPD", format!("http://{live}{mpd_path}"));
    let mut edge_watch = MpdWatcher::start("edge MPD", format!("http://{edge}{mpd_path}"));
    let mut live_number = MpdWatcher::start("live number MPD", format!("http://{live}{number_path}"));
    let mut edge_number = MpdWatcher::start("edge number MPD", format!("http://{edge}{number_path}"));
    let page = PageServer::start();

    // Older than the DVR window: the first segments have been evicted.
    wait_until("a stream older than the DVR window", Duration::from_secs(30), || {
        let mpd = fetch_mpd_at(&live, &mpd_path)?;
        let reps = listings(&mpd).ok()?;
        let video = reps.iter().find(|r| r.video)?;
        (video.segments.first()?.0 > 2 && video.segments.len() >= 6).then_some(())
    });
    println!("stream older than the DVR window {:.1} s after the publish started", published.elapsed().as_secs_f64());

    // (a) straight from the live node.
    let mut a = start_phase("a: live node", &live, &page, false);
    thread::sleep(PHASE);
    a.stop();
    let periods_before: BTreeSet<String> = live_watch.polls().iter().flat_map(|p| p.periods.clone()).collect();

    // (b) + (c): through the edge, across the re-plan.
    let mut b = start_phase("b+c: edge, re-plan", &edge, &page, true);
    let b_start = Instant::now();
    let change = wait_until_or_none(PHASE + Duration::from_secs(15), || {
        edge_watch.polls().iter().find(|p| p.periods.iter().any(|id| !periods_before.contains(id))).map(|p| (p.at, p.periods.clone()))
    });
    let end = match &change {
        Some((at, _)) => (b_start + PHASE).max(*at + Duration::from_secs(10)),
        None => b_start + PHASE,
    };
    thread::sleep(end.saturating_duration_since(Instant::now()));
    b.stop();
    // The watchers stop while the stream is live: once media stops, the Number form goes
    // on announcing segments by the clock that will never exist, until the stream ends.
    for watch in [&mut live_watch, &mut edge_watch, &mut live_number, &mut edge_number] {
        watch.stop();
    }
    publish.stop(Duration::from_secs(2));

    let mut failures: Vec<String> = Vec::new();
    let new_period = change.as_ref().and_then(|(_, ids)| ids.iter().find(|id| !periods_before.contains(*id)).cloned());
    match &change {
        None => failures.push(format!(
            "(c) no new Period appeared at the edge while its players ran (re-plan expected {REPLAN_AFTER:?} after the publish, phase b started {:.1} s after it)",
            b_start.duration_since(published).as_secs_f64()
        )),
        Some((at, _)) => {
            let into = at.duration_since(b_start).as_secs_f64();
            println!("(c) new Period {} at the edge {into:.1} s into phase b", new_period.as_deref().unwrap_or("?"));
            if into < 3.0 {
                failures.push(format!("(c) the Period change came {into:.1} s into phase b, before the players were playing"));
            }
        }
    }
    let mut verdicts = judge(&a, &page, &live_watch, None);
    verdicts.extend(judge(&b, &page, &edge_watch, new_period.as_deref()));
    if let Some(dir) = std::env::var_os("RACKCAST_PLAYER_LOGS") {
        dump(Path::new(&dir), &[&a, &b], &page);
    }

    println!("\nplayer matrix (frames: decoded, at least {MIN_FRAMES}; first: first video segment fetched vs the newest listed then)");
    for v in &verdicts {
        println!(
            "  {:<20} {:<13} {:>5} frames  {:>4} segs  first {:<40} {}",
            v.phase,
            v.player.name(),
            v.frames,
            v.segments,
            v.first,
            if v.failures.is_empty() { "ok".to_owned() } else { format!("FAIL ({})", v.failures.len()) }
        );
        for f in &v.failures {
            println!("      - {f}");
            failures.push(format!("{} / {}: {f}", v.phase, v.player.name()));
        }
        for n in v.notes.iter().take(3) {
            println!("      . {}", n.chars().take(240).collect::<String>());
        }
    }

    let players_ok = verdicts.iter().filter(|v| v.failures.is_empty()).count();
    println!("{players_ok} of {} player runs without a failure", verdicts.len());
    println!("not checked (what the players' Debian 12 versions cannot pass):");
    for phase in [&a, &b] {
        for player in PLAYERS {
            let started = phase.proxies.iter().any(|(p, _)| *p == player);
            for check in CHECKS {
                if let Some(why) = cannot_pass(player, check, phase.period_change) {
                    let run = if started { "" } else { " (not started: no check left)" };
                    println!("  {:<20} {:<13} {check:?}: {why}{run}", phase.name, player.name());
                }
            }
        }
    }

    // The MPD's shape, on every poll.
    for watch in [&live_watch, &edge_watch, &live_number, &edge_number] {
        let lag = watch.listing_lag().map(|(lo, hi)| format!("{lo:+.3} s to {hi:+.3} s")).unwrap_or_else(|| "-".into());
        println!("{}: {} polls; new video segments listed {lag} after AST + Period@start + their end", watch.name, watch.polls().len());
        for (kind, (count, examples)) in watch.problems().0 {
            let line = format!("{kind}: {count} time(s), e.g. {}", examples.join(" || "));
            println!("  - {line}");
            failures.push(line);
        }
    }
    // The Number form never announces a segment by the clock before the Timeline form
    // lists it (number_form_delay covers the transcoder's lag).
    for (number, timeline) in [(&live_number, &live_watch), (&edge_number, &edge_watch)] {
        let (judged, early) = announced_before_listed(number, timeline);
        println!("{}: {judged} polls compared with {}, {} announced a segment not listed yet", number.name, timeline.name, early.len());
        if judged == 0 {
            failures.push(format!("{}: no poll could be compared with {}", number.name, timeline.name));
        }
        if let Some(first) = early.first() {
            failures.push(format!("{}: {} poll(s) announced a segment before {} listed it, e.g. {first}", number.name, early.len(), timeline.name));
        }
    }
    // Every MPD served (to the players and to the watchers) against the schema.
    match schema() {
        None => println!("tests/schema/DASH-MPD.xsd absent: schema check skipped"),
        Some(xsd) => {
            let mut texts: BTreeSet<String> =
                [&live_watch, &edge_watch, &live_number, &edge_number].iter().flat_map(|w| w.texts()).collect();
            for phase in [&a, &b] {
                for (_, proxy) in &phase.proxies {
                    texts.extend(proxy.hits().into_iter().filter_map(|h| h.mpd));
                }
            }
            let texts: Vec<String> = texts.into_iter().collect();
            let bad = schema_failures(&xsd, &texts);
            println!("schema: {} of {} distinct MPDs do not validate", bad.len(), texts.len());
            if !bad.is_empty() {
                failures.push(format!("{} of {} MPDs do not validate against DASH-MPD.xsd, e.g. {}", bad.len(), texts.len(), bad[0]));
            }
        }
    }
    // Every media playlist served to an HLS player: a media sequence number names one
    // segment (URI and discontinuity sequence) in every playlist it appears in (RFC 8216bis
    // 6.2.2; hls.js stops with a playlist error otherwise).
    let (mut playlists, mut deltas) = (0, 0);
    for phase in [&a, &b] {
        for (_, proxy) in phase.proxies.iter().filter(|(player, _)| player.hls()) {
            let served: Vec<(String, String)> = proxy.hits().into_iter().filter_map(|h| Some((h.path, h.playlist?))).filter(|(path, _)| path.ends_with("/media.m3u8")).collect();
            playlists += served.len();
            deltas += served.iter().filter(|(_, text)| text.contains("\n#EXT-X-SKIP:")).count();
            if let Some(conflict) = sequence_conflict(&served) {
                failures.push(format!("{}: {conflict}", phase.name));
            }
        }
    }
    println!("HLS: {playlists} media playlists served to the HLS players ({deltas} delta updates), each sequence number one segment in all of them");
    let misses = page.misses.lock().unwrap().clone();
    if !misses.is_empty() {
        println!("page server 404s (requests the browser players sent to the page's origin): {misses:?}");
    }
    println!("player matrix wall time {:.1} s", test_started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} check(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// Compares every poll of a Number-form watcher with the Timeline-form watcher's poll
/// before it: (polls compared, one line per poll whose newest segment by the clock was not
/// listed yet).
fn announced_before_listed(number: &MpdWatcher, timeline: &MpdWatcher) -> (usize, Vec<String>) {
    let (mut judged, mut early) = (0, Vec::new());
    for poll in number.polls() {
        for ((period, rendition), &announced) in &poll.newest {
            let Some(listed) = timeline.newest_at(poll.at, period, rendition) else { continue };
            judged += 1;
            if announced > listed {
                early.push(format!("{rendition} {announced} in Period {period} (listed: {listed})"));
            }
        }
    }
    (judged, early)
}

/// With RACKCAST_PLAYER_LOGS=DIR: every player's output and requests, one file each.
fn dump(dir: &Path, phases: &[&Phase], page: &PageServer) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, phase) in phases.iter().enumerate() {
        for (_, process) in &phase.processes {
            std::fs::write(dir.join(format!("{i}-{}.log", process.name)), process.all_lines().join("\n")).unwrap();
        }
        for (player, proxy) in &phase.proxies {
            let lines: Vec<String> = proxy
                .hits()
                .iter()
                .map(|h| format!("{:7.3} {} {} {}", h.at.duration_since(phase.started).as_secs_f64(), h.status, h.method, h.path))
                .collect();
            std::fs::write(dir.join(format!("{i}-{}.hits", player.name())), lines.join("\n")).unwrap();
            let manifests: Vec<String> = proxy
                .hits()
                .iter()
                .filter_map(|h| Some(format!("--- {:7.3} {}\n{}", h.at.duration_since(phase.started).as_secs_f64(), h.path, h.mpd.as_ref().or(h.playlist.as_ref())?)))
                .collect();
            std::fs::write(dir.join(format!("{i}-{}.manifests", player.name())), manifests.join("\n")).unwrap();
        }
    }
    let reports: Vec<String> = page.reports().iter().map(|r| r.value.to_string()).collect();
    std::fs::write(dir.join("page-reports.jsonl"), reports.join("\n")).unwrap();
}

/// The first media sequence number that two of the `(path, text)` playlists give to
/// different segments (another URI or discontinuity sequence), with both playlists. A
/// delta update (hls.js asks for them) names its segments' URIs; their discontinuity
/// sequence depends on the skipped segments, so only full playlists compare it.
fn sequence_conflict(served: &[(String, String)]) -> Option<String> {
    use std::collections::HashMap;
    let mut named: HashMap<(&str, u64), (String, Option<u64>, usize)> = HashMap::new();
    for (index, (path, text)) in served.iter().enumerate() {
        let mut parts = path.rsplitn(3, '/');
        let (_, rendition, stream_dir) = (parts.next(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let stream = stream_dir.rsplit('/').next().unwrap_or_default();
        let playlist = crate::hls::parse_media_of(stream, text, rendition);
        let full = playlist.skipped == 0;
        let last = playlist.segments.last().map(|s| s.discontinuity_sequence).unwrap_or_default();
        // The segment being encoded, listed by its parts after the last complete one.
        let growing = playlist.parts.last().filter(|p| playlist.segments.last().is_none_or(|s| p.msn > s.sequence)).map(|p| (p.msn, p.url.clone(), last));
        let listed = playlist.segments.iter().map(|s| (s.sequence, s.url.clone(), s.discontinuity_sequence)).chain(growing);
        for (msn, url, discontinuity) in listed {
            let discontinuity = full.then_some(discontinuity);
            match named.get_mut(&(path.as_str(), msn)) {
                Some((seen, seen_discontinuity, at)) if *seen != url || seen_discontinuity.zip(discontinuity).is_some_and(|(a, b)| a != b) => {
                    return Some(format!(
                        "{path}: sequence number {msn} is {seen} (discontinuity {seen_discontinuity:?}) in one playlist and {url} (discontinuity {discontinuity:?}) in another:\n{}\n---\n{text}",
                        served[*at].1
                    ));
                }
                Some((_, seen_discontinuity, at)) => {
                    if seen_discontinuity.is_none() && discontinuity.is_some() {
                        (*seen_discontinuity, *at) = (discontinuity, index);
                    }
                }
                None => {
                    named.insert((path.as_str(), msn), (url, discontinuity, index));
                }
            }
        }
    }
    None
}

fn fetch_mpd_at(host: &str, path: &str) -> Option<String> {
    let response = get(&format!("http://{host}{path}"));
    (response.status() == 200).then(|| response.text().ok()).flatten()
}

/// Like `wait_until`, but yields `None` at the deadline.
fn wait_until_or_none<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(200));
    }
}
