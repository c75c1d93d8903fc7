//! Every config the repository ships (deploy/, the Kubernetes ones included, bench/) starts
//! every node it names: a config that `rackcast run` refuses would leave a user, or a
//! benchmark, with nothing running. `rackcast config --node` runs the same checks and
//! agrees.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

/// The committed rackcast configs: TOML files under deploy/ and bench/, and bench
/// templates (`*.toml.in`, whose `@NAME_PORT@` placeholders the benchmarks fill in).
fn shipped() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    let mut dirs = vec![root.join("deploy"), root.join("bench")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() && name != "node_modules" && name != "results" {
                dirs.push(path);
            } else if name.ends_with(".toml") || name.ends_with(".toml.in") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The config's text with every `@NAME@` placeholder replaced by a free port.
fn filled(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('@') {
        let Some(len) = rest[start + 1..].find('@') else { break };
        let name = &rest[start + 1..start + 1 + len];
        assert!(name.ends_with("_PORT"), "unknown placeholder @{name}@");
        out.push_str(&rest[..start]);
        out.push_str(&free_port().to_string());
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Where the Kubernetes configs read their secrets: files that exist only in a pod (the
/// Secret's mount).
const POD_SECRETS: &str = "/etc/rackcast/secrets/";

/// The config's text with every file under [`POD_SECRETS`] replaced by a stand-in in `dir`
/// (a random-looking secret, mode 0600, as make-secrets.sh writes).
fn with_stand_in_secrets(text: &str, dir: &Path) -> String {
    let mut out = text.to_owned();
    while let Some(start) = out.find(POD_SECRETS) {
        let len = out[start..].find('"').expect("a quoted secret path");
        let name = out[start + POD_SECRETS.len()..start + len].to_owned();
        let file = dir.join(&name);
        std::fs::write(&file, format!("stand-in-{name}-0123456789abcdef0123456789")).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        out.replace_range(start..start + len, file.to_str().unwrap());
    }
    out
}

/// The node ids of a cluster config, or none for a single node.
fn nodes(text: &str) -> Vec<String> {
    let value: toml::Value = toml::from_str(text).unwrap();
    value.get("cluster").and_then(|c| c.get("nodes")).and_then(|n| n.as_array()).map_or_else(Vec::new, |nodes| {
        nodes.iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect()
    })
}

#[test]
fn every_shipped_config_starts_every_node_it_names() {
    let configs = shipped();
    let names: Vec<String> = configs.iter().map(|p| p.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().display().to_string()).collect();
    for expected in ["deploy/rackcast.toml", "deploy/federation.toml", "deploy/kubernetes/base/rackcast.toml", "bench/tier/rackcast-cluster.toml.in"] {
        assert!(names.iter().any(|n| n == expected), "{expected} is found: {names:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    for (path, name) in configs.iter().zip(&names) {
        let text = with_stand_in_secrets(&filled(&std::fs::read_to_string(path).unwrap()), dir.path());
        let file = dir.path().join("config.toml");
        std::fs::write(&file, &text).unwrap();
        let ids = nodes(&text);
        let runs: Vec<Option<&str>> = if ids.is_empty() { vec![None] } else { ids.iter().map(|id| Some(id.as_str())).collect() };
        for node in runs {
            // `rackcast config` checks what `run` checks.
            let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_rackcast"));
            check.args(["config", "--config"]).arg(&file);
            if let Some(node) = node {
                check.args(["--node", node]);
            }
            let out = check.output().unwrap();
            assert!(out.status.success(), "rackcast config refuses {name} (node {node:?}): {}", String::from_utf8_lossy(&out.stderr));

            // Loopback ports of its own, whatever the file names.
            let mut args = vec!["--rtmp", "127.0.0.1:0", "--http", "127.0.0.1:0"];
            if let Some(node) = node {
                args.extend(["--node", node]);
            }
            let mut app = Appliance::start_with_args(&text, &args);
            let info = get_json(&app.url("/api/v1/node"));
            if let Some(node) = node {
                assert_eq!(info["id"], node, "{name}: {info}");
            }
            std::thread::sleep(Duration::from_millis(500));
            assert!(app.is_running(), "{name} (node {node:?}) exited after starting; logs:\n{}", app.logs());
            let status = app.terminate(Duration::from_secs(15));
            assert!(status.success(), "{name} (node {node:?}) exits cleanly on SIGTERM: {status:?}");
            eprintln!("{name}: node {} started and stopped", node.unwrap_or("(single)"));
        }
    }

    // And `rackcast config` refuses what `run` refuses, naming the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[tier]\nnegative_ttl = \"1s\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rackcast")).args(["config", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tier.negative_ttl"), "{}", String::from_utf8_lossy(&out.stderr));
}
