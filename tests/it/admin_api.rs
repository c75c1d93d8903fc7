//! The admin API against the real binary over HTTP on 127.0.0.1: the whole access matrix
//! with exact statuses (loopback-only before an admin exists, login, wrong password,
//! expired session, CSRF token missing or wrong, cross-origin writes, unknown and revoked
//! API tokens, read-only tokens on writes, the login rate limit), persistence across a
//! restart, the audit log (a failed login's name recorded only when the user exists),
//! secrets kept out of logs and listings; a storm of 200 concurrent wrong logins from 200
//! addresses bounded in memory while a viewer's MPD fetches stay fast; the stream levers (kick,
//! stop, resume) with an ffmpeg publisher; and the OpenAPI document: valid against the
//! OpenAPI 3.1 JSON Schema (python3-jsonschema), every `$ref` resolvable, equal to the
//! committed docs/openapi.json and to what the binary serves.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use crate::support::*;

const PASSWORD: &str = "correct horse battery staple";
/// A password typed into the name field of the login form (valid as a user name).
const TYPED_NAME: &str = "Tr0ub4dor-and-3-typed-as-the-name";
const COMMITTED_OPENAPI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

/// One API caller: optional session cookie, CSRF token and bearer token.
#[derive(Default, Clone)]
struct Caller {
    cookie: Option<String>,
    csrf: Option<String>,
    bearer: Option<String>,
    origin: Option<String>,
}

impl Caller {
    fn request(&self, client: &Client, method: reqwest::Method, url: &str) -> RequestBuilder {
        let mut r = client.request(method, url);
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        if let Some(t) = &self.csrf {
            r = r.header("x-csrf-token", t);
        }
        if let Some(b) = &self.bearer {
            r = r.header("authorization", format!("Bearer {b}"));
        }
        if let Some(o) = &self.origin {
            r = r.header("origin", o);
        }
        r
    }
}

struct Api<'a> {
    app: &'a Appliance,
    client: Client,
}

impl Api<'_> {
    fn call(&self, who: &Caller, method: &str, path: &str, body: Option<Value>) -> Response {
        let method: reqwest::Method = method.parse().unwrap();
        let mut r = who.request(&self.client, method.clone(), &self.app.url(path));
        if let Some(body) = body {
            r = r.json(&body);
        }
        r.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Asserts the status; returns the JSON body (Null when empty).
    fn expect(&self, who: &Caller, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let response = self.call(who, method, path, body);
        let got = response.status().as_u16();
        let text = response.text().unwrap();
        assert_eq!(got, status, "{method} {path} answered {got}: {text}");
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) }
    }

    /// Logs in; the caller with the session cookie and CSRF token.
    fn login(&self, user: &str, password: &str) -> Caller {
        let response = self.call(&Caller::default(), "POST", "/api/v1/session", Some(json!({"username": user, "password": password})));
        assert_eq!(response.status(), 200, "login");
        let set_cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set_cookie.contains(attribute), "{set_cookie} lacks {attribute}");
        }
        assert!(!set_cookie.contains("Secure"), "plain HTTP: no Secure flag");
        let body: Value = response.json().unwrap();
        assert_eq!(body["user"], user);
        Caller {
            cookie: Some(set_cookie.split(';').next().unwrap().to_owned()),
            csrf: Some(body["csrf_token"].as_str().unwrap().to_owned()),
            ..Caller::default()
        }
    }
}

fn rackcast(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rackcast"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "rackcast {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_access_matrix_with_exact_statuses_and_persistence() {
    let app = Appliance::start(None);
    let api = Api { app: &app, client: client() };
    let anyone = Caller::default();
    let data_dir = app.data_dir().display().to_string();

    // Before an admin exists: loopback clients may do everything; cross-origin writes never.
    app.wait_for_log("no admin user exists", Duration::from_secs(5));
    let me = api.expect(&anyone, "GET", "/api/v1/session", None, 200);
    assert_eq!((me["actor"].as_str(), me["admin_exists"].as_bool()), (Some("loopback"), Some(false)));
    assert_eq!(api.expect(&anyone, "GET", "/api/v1/node", None, 200)["publishing_open"], true);
    let evil = Caller { origin: Some("http://evil.example".into()), ..Caller::default() };
    api.expect(&evil, "POST", "/api/v1/keys", Some(json!({"stream": "cam"})), 403);
    api.expect(&anyone, "POST", "/api/v1/users", Some(json!({"name": "alice", "password": "short"})), 400);
    api.expect(&anyone, "POST", "/api/v1/users", Some(json!({"name": "alice", "password": PASSWORD})), 201);
    // The CLI adds users too (password on standard input), while the appliance runs.
    rackcast(&["admin", "add-user", "bob", "--data-dir", &data_dir], &format!("{PASSWORD}-bob\n"));

    // Now credentials are needed.
    for path in ["/api/v1/node", "/api/v1/streams", "/api/v1/keys", "/api/v1/audit", "/api/v1/cluster", "/api/v1/config"] {
        api.expect(&anyone, "GET", path, None, 401);
    }
    api.expect(&anyone, "POST", "/api/v1/keys", Some(json!({"stream": "cam"})), 401);
    let refused = api.call(&anyone, "POST", "/api/v1/session", Some(json!({"username": "alice", "password": "wrong password!"})));
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("set-cookie").is_none());
    // A password typed into the name field: no such user, so the name is not recorded.
    api.expect(&anyone, "POST", "/api/v1/session", Some(json!({"username": TYPED_NAME, "password": PASSWORD})), 401);

    // A session: reads; writes need the CSRF token and the same origin.
    let alice = api.login("alice", PASSWORD);
    let me = api.expect(&alice, "GET", "/api/v1/session", None, 200);
    assert_eq!((me["actor"].as_str(), me["admin_exists"].as_bool()), (Some("user:alice"), Some(true)));
    let node = api.expect(&alice, "GET", "/api/v1/node", None, 200);
    assert_eq!((node["backends"][0].as_str(), node["live_streams"].as_u64()), (Some("software"), Some(0)));
    assert_eq!(node["transcode_usage"]["cpu_cores_used"].as_f64(), Some(0.0), "{node}");
    assert!(node["host"]["memory_total_bytes"].as_u64().unwrap() > 0);
    // GPUs are listed, or the reason none is ("not present", never an error).
    let gpus = node["host"]["gpus"].as_array().unwrap();
    assert_eq!(gpus.is_empty(), node["host"]["gpus_absent"].is_string(), "{node}");
    let no_csrf = Caller { csrf: None, ..alice.clone() };
    api.expect(&no_csrf, "POST", "/api/v1/keys", Some(json!({"stream": "cam"})), 403);
    let wrong_csrf = Caller { csrf: Some("0".repeat(64)), ..alice.clone() };
    api.expect(&wrong_csrf, "POST", "/api/v1/keys", Some(json!({"stream": "cam"})), 403);
    let cross = Caller { origin: Some("http://evil.example".into()), ..alice.clone() };
    api.expect(&cross, "POST", "/api/v1/keys", Some(json!({"stream": "cam"})), 403);
    let same = Caller { origin: Some(format!("http://{}", app.http)), ..alice.clone() };
    let key = api.expect(&same, "POST", "/api/v1/keys", Some(json!({"stream": "cam"})), 201);
    let key_secret = key["key"].as_str().unwrap().to_owned();
    assert!(key_secret.starts_with("rk_"));
    api.expect(&alice, "POST", "/api/v1/keys", Some(json!({"stream": "../etc"})), 400);
    api.expect(&alice, "POST", "/api/v1/keys", Some(json!({"nope": 1})), 422);

    // API tokens: read-only and admin scope; unknown and revoked ones are refused.
    let read = api.expect(&alice, "POST", "/api/v1/tokens", Some(json!({"name": "grafana", "scope": "read"})), 201);
    let admin = api.expect(&alice, "POST", "/api/v1/tokens", Some(json!({"name": "ci", "scope": "admin"})), 201);
    let reader = Caller { bearer: Some(read["secret"].as_str().unwrap().into()), ..Caller::default() };
    let script = Caller { bearer: Some(admin["secret"].as_str().unwrap().into()), ..Caller::default() };
    assert_eq!(api.expect(&reader, "GET", "/api/v1/keys", None, 200).as_array().unwrap().len(), 1);
    api.expect(&reader, "POST", "/api/v1/keys", Some(json!({"stream": "cam2"})), 403);
    api.expect(&reader, "DELETE", &format!("/api/v1/keys/{}", key["id"].as_str().unwrap()), None, 403);
    api.expect(&script, "POST", "/api/v1/keys", Some(json!({"stream": "cam2"})), 201);
    let forged = Caller { bearer: Some(format!("rat_{}", "0".repeat(64))), ..Caller::default() };
    api.expect(&forged, "GET", "/api/v1/node", None, 401);
    api.expect(&alice, "DELETE", &format!("/api/v1/tokens/{}", admin["id"].as_str().unwrap()), None, 204);
    api.expect(&script, "GET", "/api/v1/node", None, 401);
    api.expect(&alice, "DELETE", &format!("/api/v1/tokens/{}", admin["id"].as_str().unwrap()), None, 404);
    let tokens = api.expect(&alice, "GET", "/api/v1/tokens", None, 200);
    assert_eq!(tokens.as_array().unwrap().len(), 2);
    assert!(tokens.to_string().find("rat_").is_none(), "listings never carry a token secret: {tokens}");

    // Users: list, and no self-deletion; bob's session dies with bob.
    let users = api.expect(&alice, "GET", "/api/v1/users", None, 200);
    assert_eq!(users.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect::<Vec<_>>(), ["alice", "bob"]);
    assert!(!users.to_string().contains("argon2"), "no password hashes in listings");
    api.expect(&alice, "DELETE", "/api/v1/users/alice", None, 400);
    let bob = api.login("bob", &format!("{PASSWORD}-bob"));
    api.expect(&alice, "DELETE", "/api/v1/users/bob", None, 204);
    api.expect(&bob, "GET", "/api/v1/node", None, 401);

    // The other resources answer.
    let cluster = api.expect(&reader, "GET", "/api/v1/cluster", None, 200);
    assert_eq!((cluster["federated"].as_bool(), cluster["members"][0]["up"].as_bool()), (Some(false), Some(true)));
    assert_eq!(api.expect(&reader, "GET", "/api/v1/cluster/ring/cam", None, 200)["owner"], "local");
    api.expect(&reader, "GET", "/api/v1/tiers", None, 404);
    api.expect(&reader, "GET", "/api/v1/streams/cam", None, 404);
    api.expect(&reader, "GET", "/api/v1/streams/a%20b", None, 400);
    api.expect(&reader, "GET", "/api/v1/nothing-here", None, 404);
    let config = api.expect(&reader, "GET", "/api/v1/config", None, 200);
    assert_eq!(config["auth"]["login_attempt_burst"], 5);

    // An expired session is refused as such; logging out ends a session.
    let carol_dir = app.data_dir();
    // As the clock would: every session of alice's ends in the past (the store's own file).
    let db = rusqlite::Connection::open(carol_dir.join(rackcast::auth::db::DATABASE_FILE)).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute("UPDATE sessions SET expires_at = 1 WHERE user = 'alice'", []).unwrap();
    let expired = api.expect(&alice, "GET", "/api/v1/node", None, 401);
    assert!(expired["error"].as_str().unwrap().contains("expired"), "{expired}");
    let alice = api.login("alice", PASSWORD);
    api.expect(&Caller { csrf: None, ..alice.clone() }, "DELETE", "/api/v1/session", None, 403);
    api.expect(&alice, "DELETE", "/api/v1/session", None, 204);
    api.expect(&alice, "GET", "/api/v1/node", None, 401);

    // Login attempts per address are limited (burst 5; 5 made above).
    let wrong = json!({"username": "alice", "password": "still the wrong one"});
    let limited = api.call(&anyone, "POST", "/api/v1/session", Some(wrong.clone()));
    assert_eq!(limited.status(), 429, "{}", limited.text().unwrap());
    let response = api.call(&anyone, "POST", "/api/v1/session", Some(json!({"username": "alice", "password": PASSWORD})));
    assert_eq!(response.status(), 429, "even the right password waits");
    assert_eq!(response.headers()["retry-after"], "60");

    // Every change is in the audit log, with its actor.
    let audit = api.expect(&reader, "GET", "/api/v1/audit?limit=500", None, 200);
    let entries: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {} {}", e["actor"].as_str().unwrap(), e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    for expected in [
        "loopback user.create ok",
        "cli user.create ok",
        "user:alice key.create ok",
        "user:alice token.create ok",
        "user:alice token.revoke ok",
        "user:alice user.delete ok",
        "user:alice session.login ok",
        "user:alice session.logout ok",
        "anonymous session.login refused: wrong username or password",
        "anonymous session.login refused: too many attempts",
    ] {
        assert!(entries.iter().any(|e| e == expected), "no audit entry {expected:?} in {entries:#?}");
    }
    assert!(entries.iter().any(|e| e.starts_with("token:") && e.ends_with("key.create ok")), "{entries:#?}");
    // Failed logins name the user only when it exists; what was typed otherwise is nowhere.
    let failed_logins: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "session.login" && e["outcome"] == "refused: wrong username or password")
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(failed_logins, ["unknown user", "alice"], "newest first");
    assert!(!audit.to_string().contains(TYPED_NAME), "the typed name is in the audit log");
    let mut database = std::fs::read(app.data_dir().join("rackcast.sqlite3")).unwrap();
    database.extend(std::fs::read(app.data_dir().join("rackcast.sqlite3-wal")).unwrap_or_default());
    assert!(!database.windows(TYPED_NAME.len()).any(|w| w == TYPED_NAME.as_bytes()), "the typed name is in the database");

    // Secrets appear in no log line.
    let logs = app.logs();
    for secret in [key_secret.as_str(), read["secret"].as_str().unwrap(), PASSWORD, TYPED_NAME, alice.cookie.as_deref().unwrap().split('=').nth(1).unwrap()] {
        assert!(!logs.contains(secret), "a secret is in the log");
    }

    // Everything persists across a restart.
    let app = app.restart();
    let api = Api { app: &app, client: client() };
    assert_eq!(api.expect(&reader, "GET", "/api/v1/keys", None, 200).as_array().unwrap().len(), 2);
    assert_eq!(api.expect(&reader, "GET", "/api/v1/users", None, 200).as_array().unwrap().len(), 1);
    api.expect(&anyone, "GET", "/api/v1/node", None, 401);
    api.login("alice", PASSWORD);
}

#[test]
fn an_admin_kicks_stops_and_resumes_a_stream() {
    let _one = one_ladder_at_a_time();
    let app = Appliance::start(Some("[transcode]\nx264_preset = \"ultrafast\"\n"));
    let api = Api { app: &app, client: client() };
    let loopback = Caller::default();
    let publisher = Publisher::start(&app.publish_url("live", "cam"), 60, "320x180");
    let live = wait_until("cam in /api/v1/streams", Duration::from_secs(30), || {
        let list = api.expect(&loopback, "GET", "/api/v1/streams", None, 200);
        list.as_array().unwrap().iter().find(|s| s["stream"] == "cam" && s["segments"].as_u64() > Some(0)).cloned()
    });
    assert_eq!(live["backend"], "software");
    let cores = api.expect(&loopback, "GET", "/api/v1/node", None, 200)["transcode_usage"]["cpu_cores_used"].as_f64().unwrap();
    assert!(cores > 0.0, "the stream is counted against the CPU budget");
    assert!(!live["rungs"].as_array().unwrap().is_empty(), "{live}");
    let detail = api.expect(&loopback, "GET", "/api/v1/streams/cam", None, 200);
    assert!(detail["status"]["plan_history"].as_array().is_some_and(|h| !h.is_empty()), "{detail}");

    // Kick: the publisher is disconnected and told why.
    api.expect(&loopback, "POST", "/api/v1/streams/cam/kick", None, 200);
    let (status, _) = publisher.wait(Duration::from_secs(10));
    assert!(!status.success(), "ffmpeg lost its connection");
    app.wait_for_log("disconnected by an admin", Duration::from_secs(5));
    api.expect(&loopback, "POST", "/api/v1/streams/cam/kick", None, 404);

    // Stop: publishes are refused for the hold, then accepted again after resume.
    api.expect(&loopback, "POST", "/api/v1/streams/cam/stop", Some(json!({"hold_seconds": 0})), 400);
    let stopped = api.expect(&loopback, "POST", "/api/v1/streams/cam/stop", Some(json!({"hold_seconds": 600})), 200);
    assert!(stopped["result"].as_str().unwrap().contains("600 s"), "{stopped}");
    let (status, _) = Publisher::start(&app.publish_url("live", "cam"), 5, "320x180").wait(Duration::from_secs(20));
    assert!(!status.success(), "a stopped stream refuses publishes");
    app.wait_for_log("was stopped by an admin", Duration::from_secs(5));
    api.expect(&loopback, "DELETE", "/api/v1/streams/cam/stop", None, 200);
    api.expect(&loopback, "DELETE", "/api/v1/streams/cam/stop", None, 404);
    let _again = Publisher::start(&app.publish_url("live", "cam"), 60, "320x180");
    wait_until("cam live again", Duration::from_secs(30), || {
        let list = api.expect(&loopback, "GET", "/api/v1/streams", None, 200);
        list.as_array().unwrap().iter().any(|s| s["stream"] == "cam").then_some(())
    });
    let audit = api.expect(&loopback, "GET", "/api/v1/audit", None, 200).to_string();
    for action in ["stream.kick", "stream.stop", "stream.resume"] {
        assert!(audit.contains(action), "{action} not audited: {audit}");
    }
}

/// `$ref`s that name no component.
fn dangling_refs(node: &Value, doc: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let pointer = r.strip_prefix('#').unwrap_or(r);
                if doc.pointer(pointer).is_none() {
                    out.push(r.clone());
                }
            }
            map.values().for_each(|v| dangling_refs(v, doc, out));
        }
        Value::Array(items) => items.iter().for_each(|v| dangling_refs(v, doc, out)),
        _ => {}
    }
}

#[test]
fn the_openapi_document_is_valid_and_matches_the_committed_copy() {
    let generated = rackcast::api::openapi().to_pretty_json().unwrap();
    if std::env::var_os("RACKCAST_UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED_OPENAPI, format!("{generated}\n")).unwrap();
    }
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", doc["openapi"]);
    // The OpenAPI Initiative's schema for 3.1 documents, with an independent validator.
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schema/openapi-3.1.schema.json");
    let check = "import json, sys, jsonschema
v = jsonschema.Draft202012Validator(json.load(open(sys.argv[1])))
errors = [f'{\"/\".join(map(str, e.path))}: {e.message[:160]}' for e in v.iter_errors(json.load(sys.stdin))]
print(len(errors)); print(chr(10).join(errors[:20]))";
    let mut python = Command::new("python3").args(["-c", check, schema]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    python.stdin.take().unwrap().write_all(generated.as_bytes()).unwrap();
    let out = python.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python3-jsonschema: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report.lines().next(), Some("0"), "the OpenAPI document does not validate:\n{report}");
    let mut dangling = Vec::new();
    dangling_refs(&doc, &doc, &mut dangling);
    assert!(dangling.is_empty(), "unresolvable $refs: {dangling:?}");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 14, "{:?}", paths.keys());
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} documents no response");
        }
    }

    let committed = std::fs::read_to_string(COMMITTED_OPENAPI).unwrap_or_default();
    assert!(
        committed.trim_end() == generated,
        "docs/openapi.json differs from the API's handlers: run `RACKCAST_UPDATE_OPENAPI=1 cargo test --test it admin_api::the_openapi` and commit it"
    );

    // The binary serves the same document, without credentials.
    let app = Appliance::start(None);
    let served = get(&app.url("/api/v1/openapi.json"));
    assert_eq!(served.status(), 200);
    assert_eq!(served.text().unwrap(), generated);
}

/// 200 wrong-password logins at once from 200 loopback addresses (past the per-address
/// limit), with the default limits: at most a few password checks run at once and the
/// node's failure budget refuses the rest before hashing, so the appliance's memory barely
/// grows and a viewer of a live stream notices nothing. Every attempt is answered 401, 429
/// or 503 (the refusals with Retry-After).
#[test]
fn a_login_storm_from_200_addresses_is_bounded_in_memory_and_spares_viewers() {
    let storm = login_storm("");
    // Hashed: the failure budget's burst (10), plus the failure that found it empty (it was
    // hashed before it was counted), plus those already holding a slot then (one per
    // core), plus what it regains during the storm (one each 2 s).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let regained = (storm.took.as_secs_f64() / 2.0).ceil() as usize;
    assert!(storm.checked >= 1 && storm.checked <= 10 + 1 + cores + regained, "{} passwords checked", storm.checked);
}

/// The same storm with the failure budget opened wide: only the hash slots bound the work
/// (the rest wait a second, then get 503), and memory stays as bounded.
#[test]
fn a_login_storm_past_a_wide_failure_budget_is_bounded_by_the_hash_slots() {
    let storm = login_storm("[auth]\nfailed_logins_per_minute = 100000\nfailed_login_burst = 100000\n");
    assert_eq!(storm.limited, 0, "the failure budget was not reached");
}

struct Storm {
    checked: usize,
    limited: usize,
    took: Duration,
}

/// Runs the storm against an appliance with `config` (plus the ultrafast preset) while a
/// stream publishes and a viewer fetches its MPD; asserts what holds for every config.
fn login_storm(config: &str) -> Storm {
    const ATTEMPTS: usize = 200;
    let _one = one_ladder_at_a_time();
    let app = Appliance::start(Some(&format!("[transcode]\nx264_preset = \"ultrafast\"\n{config}")));
    let api = Api { app: &app, client: client() };
    api.expect(&Caller::default(), "POST", "/api/v1/users", Some(json!({"name": "alice", "password": PASSWORD})), 201);
    let _publisher = Publisher::start(&app.publish_url("live", "cam"), 60, "320x180");
    wait_until("cam's MPD listing segments", Duration::from_secs(30), || {
        let mpd = fetch_mpd(&app, "cam")?;
        (mpd.periods.last()?.adaptations.iter().flat_map(|a| &a.representations).count() > 0).then_some(())
    });

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = |stop: &std::sync::Arc<std::sync::atomic::AtomicBool>| !stop.load(std::sync::atomic::Ordering::Relaxed);
    // A viewer fetching the MPD every 50 ms throughout.
    let viewer = {
        let (stop, url) = (stop.clone(), app.url("/live/cam/manifest.mpd"));
        std::thread::spawn(move || {
            let client = client();
            let mut fetches = Vec::new();
            while running(&stop) {
                let started = std::time::Instant::now();
                let status = client.get(&url).send().map(|r| r.status().as_u16()).unwrap_or(0);
                fetches.push((status, started.elapsed()));
                std::thread::sleep(Duration::from_millis(50));
            }
            fetches
        })
    };
    // The appliance's resident memory, sampled every 10 ms (and its peak, where the kernel
    // lets the test reset it).
    let rss_before = app.rss_kib();
    let peak_reset = app.reset_peak_rss();
    let sampler = {
        let (stop, pid) = (stop.clone(), app.pid());
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while running(&stop) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
                peak = peak.max(rss.unwrap_or(0));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    let url = app.url("/api/v1/session");
    let storm_started = std::time::Instant::now();
    let answers: Vec<(u16, bool)> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(ATTEMPTS));
        let tasks: Vec<_> = (0..ATTEMPTS)
            .map(|i| {
                let source: std::net::IpAddr = format!("127.0.{}.{}", 1 + i / 250, 1 + i % 250).parse().unwrap();
                let client = reqwest::Client::builder().local_address(source).timeout(Duration::from_secs(30)).build().unwrap();
                let (barrier, url) = (barrier.clone(), url.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let body = json!({"username": "alice", "password": format!("wrong password number {i}")});
                    let response = client.post(&url).json(&body).send().await.unwrap_or_else(|e| panic!("login from {source}: {e}"));
                    (response.status().as_u16(), response.headers().contains_key("retry-after"))
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    });
    let storm = storm_started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let fetches = viewer.join().unwrap();
    let sampled_peak = sampler.join().unwrap();
    let peak = if peak_reset { sampled_peak.max(app.peak_rss_kib()) } else { sampled_peak };
    let growth_mib = peak.saturating_sub(rss_before) as f64 / 1024.0;

    let count = |status: u16| answers.iter().filter(|a| a.0 == status).count();
    let (checked, limited, busy) = (count(401), count(429), count(503));
    let mut latencies: Vec<Duration> = fetches.iter().map(|f| f.1).collect();
    latencies.sort();
    let p95 = latencies[(latencies.len() * 95).div_ceil(100) - 1];
    println!(
        "login storm: {ATTEMPTS} attempts in {:.2} s: {checked} checked (401), {limited} refused by the failure budget (429), {busy} busy (503); \
         RSS {} MiB before, growth {growth_mib:.1} MiB (peak {}); viewer: {} MPD fetches, p95 {p95:?}, max {:?}",
        storm.as_secs_f64(),
        rss_before / 1024,
        if peak_reset { "VmHWM and samples" } else { "samples" },
        fetches.len(),
        latencies.last().unwrap(),
    );
    assert_eq!(checked + limited + busy, ATTEMPTS, "every attempt is answered 401, 429 or 503: {answers:?}");
    assert!(answers.iter().all(|&(status, retry)| status == 401 || retry), "every refusal says when to retry");
    assert!(checked >= 1, "some passwords were checked");
    assert!(growth_mib < 200.0, "a login storm grew the appliance's memory by {growth_mib:.1} MiB");
    assert!(fetches.len() >= 10 && fetches.iter().all(|f| f.0 == 200), "the viewer's MPD fetches: {fetches:?}");
    assert!(p95 < Duration::from_millis(200), "the viewer's MPD fetches took {p95:?} at p95 during the storm");

    // Counted in /metrics, and logged once a second at most.
    let metrics = get(&app.url("/metrics")).text().unwrap();
    let sample = |series: &str| metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok()).unwrap_or(0.0);
    assert_eq!(sample("rackcast_login_failures_total") as usize, checked);
    let refused = sample("rackcast_login_refused_total{reason=\"failure_budget\"}") + sample("rackcast_login_refused_total{reason=\"busy\"}");
    assert_eq!(refused as usize, limited + busy, "{metrics}");
    let logged = app.logs().lines().filter(|l| l.contains("login refused")).count();
    assert!(logged <= 2 * (storm.as_secs() as usize + 2), "{logged} log lines for the refusals");
    Storm { checked, limited, took: storm }
}
