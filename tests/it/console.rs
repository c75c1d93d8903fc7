//! The web console in real browsers: Chromium (CDP) and Firefox ESR (WebDriver BiDi),
//! driven by puppeteer-core (tests/console/drive.mjs) against the real binary with a live
//! ffmpeg publish, the way an admin uses it: log in (a wrong password first), watch the
//! dashboard and its live preview play, open the stream page (ladder, plan history,
//! charts), the cluster ring, the host page (GPU "not present"), create and revoke a
//! stream key, create an API token, see an API error as a readable message, read the audit
//! log, log out. Screenshots of every page land in target/tmp/console-screenshots/.
//! Skipped (loudly) without the browsers or npm, unless RACKCAST_REQUIRE_PLAYERS is set
//! (tests/run.sh, the README's test command, sets it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery";

fn have(program: &str) -> Option<PathBuf> {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

#[test]
fn an_admin_runs_the_appliance_from_the_console_in_chromium_and_firefox() {
    let required = std::env::var_os("RACKCAST_REQUIRE_PLAYERS").is_some();
    let browsers: Vec<(&str, Option<PathBuf>)> =
        vec![("chrome", have("chromium").or_else(|| have("google-chrome"))), ("firefox", have("firefox-esr").or_else(|| have("firefox")))];
    let mut missing: Vec<String> = browsers.iter().filter(|(_, path)| path.is_none()).map(|(name, _)| name.to_string()).collect();
    if have("node").is_none() {
        missing.push("node".into());
    }
    let npm = if missing.is_empty() { ensure_npm_modules(&console_dir(), &["puppeteer-core"]) } else { Ok(()) };
    if !missing.is_empty() || npm.is_err() {
        assert!(!required, "RACKCAST_REQUIRE_PLAYERS is set but the console test cannot run: missing {missing:?}, npm: {npm:?}");
        not_run(&format!("the console test needs {missing:?} and its npm modules ({npm:?}); tests/run.sh installs them"));
        return;
    }

    let _one = one_ladder_at_a_time();
    let app = Appliance::start(Some("[transcode]\nx264_preset = \"ultrafast\"\n"));
    let mut add = Command::new(env!("CARGO_BIN_EXE_rackcast"))
        .args(["admin", "add-user", USER, "--data-dir"])
        .arg(app.data_dir())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut add.stdin.take().unwrap(), format!("{PASSWORD}\n").as_bytes()).unwrap();
    assert!(add.wait().unwrap().success());
    let _publisher = Publisher::start(&app.publish_url("live", "cam"), 300, "640x360");
    wait_until("cam live", Duration::from_secs(30), || fetch_mpd(&app, "cam"));

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    for (browser, executable) in &browsers {
        let started = std::time::Instant::now();
        let output = Command::new("node")
            .arg(console_dir().join("drive.mjs"))
            .arg(format!("http://{}", app.http))
            .arg(browser)
            .arg(executable.as_ref().unwrap())
            .arg(&shots)
            .args([USER, PASSWORD, "cam"])
            .current_dir(console_dir())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{browser}: no report ({e}); stdout {stdout}; stderr {}", String::from_utf8_lossy(&output.stderr)));
        eprintln!("{browser}: {} in {:.0?}; screenshots in {}", report["checks"], started.elapsed(), shots.display());
        let checks = report["checks"].as_object().unwrap();
        assert!(checks.len() >= 14, "{browser}: the driver stopped early: {report}");
        let failed: Vec<String> = checks.iter().filter(|(_, v)| **v != true).map(|(k, v)| format!("{k}: {v}")).collect();
        assert!(failed.is_empty(), "{browser}: {failed:#?}");
        // Script errors fail the test; "failed to load resource" lines are the 401/404/400
        // answers the steps provoke on purpose.
        let script_errors: Vec<&str> =
            report["page_errors"].as_array().unwrap().iter().filter_map(|e| e.as_str()).filter(|e| !e.contains("Failed to load resource")).collect();
        assert!(script_errors.is_empty(), "{browser}: {script_errors:#?}");
        assert!(report["screenshots"].as_array().unwrap().len() >= 8, "{browser}: {report}");
    }
    // No stream key (rk_ + 40 hex digits) leaked into the log while the console was used.
    let logs = app.logs();
    let leaked = logs.match_indices("rk_").any(|(i, _)| logs[i + 3..].chars().take(40).filter(char::is_ascii_hexdigit).count() == 40);
    assert!(!leaked, "a stream key is in the log");
}
