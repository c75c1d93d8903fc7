//! One admin identity across a federation, against two real nodes on 127.0.0.1: a user
//! made on live-a logs in there, and that session cookie and CSRF token work on live-b's
//! API (no sticky sessions behind a load balancer); an API token made on live-b works on
//! live-a; a revocation on live-a and a logout on live-b apply on the other node; a user
//! deleted on live-b cannot log in on live-a. Each wait is bounded (a few replication
//! intervals) and its time printed; `/cluster/admin` answers only signed peer requests,
//! and no secret reaches a log.

use std::time::{Duration, Instant};

use reqwest::blocking::RequestBuilder;
use serde_json::{Value, json};
use crate::support::*;

const PASSWORD: &str = "correct horse battery staple";
/// Replication compares every second; this is several rounds.
const CONVERGE: Duration = Duration::from_secs(15);

fn config(nodes: &[(&str, u16, u16)]) -> String {
    let mut text = "[cluster]\nhealth_interval = \"200ms\"\nhealth_timeout = \"150ms\"\nrelay_secret = \"admin-federation-secret-0123\"\n".to_owned();
    for (id, rtmp, http) in nodes {
        text += &format!("\n[[cluster.nodes]]\nid = \"{id}\"\nroles = [\"live\"]\nrtmp = \"127.0.0.1:{rtmp}\"\nhttp = \"127.0.0.1:{http}\"\n");
    }
    text
}

/// How a request authenticates: a session (cookie and CSRF token), a bearer token, or nothing.
#[derive(Clone, Copy)]
enum As<'a> {
    Nobody,
    Session { cookie: &'a str, csrf: &'a str },
    Bearer(&'a str),
}

fn call(app: &Appliance, who: As, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request: RequestBuilder = client().request(method.parse().unwrap(), app.url(path));
    request = match who {
        As::Nobody => request,
        As::Session { cookie, csrf } => request.header("cookie", cookie).header("x-csrf-token", csrf),
        As::Bearer(token) => request.bearer_auth(token),
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Waits until `path` on `app` answers `status` to `who`; how long it took.
fn until_status(app: &Appliance, who: As, path: &str, status: u16, what: &str) -> Duration {
    let started = Instant::now();
    wait_until(what, CONVERGE, || (call(app, who, "GET", path, None).0 == status).then_some(()));
    let took = started.elapsed();
    eprintln!("{what}: {took:?}");
    took
}

/// Logs `user` in on `app`: the cookie (`name=value`) and the CSRF token.
fn login(app: &Appliance, user: &str) -> (String, String) {
    let response = client().post(app.url("/api/v1/session")).json(&json!({"username": user, "password": PASSWORD})).send().unwrap();
    assert_eq!(response.status(), 200, "login on {}", app.http);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let body: Value = response.json().unwrap();
    (cookie, body["csrf_token"].as_str().unwrap().to_owned())
}

#[test]
fn users_sessions_and_tokens_are_one_across_the_federation() {
    let (a_ports, b_ports) = ((free_port(), free_port()), (free_port(), free_port()));
    let config = config(&[("live-a", a_ports.0, a_ports.1), ("live-b", b_ports.0, b_ports.1)]);
    let a = Appliance::start_node(&config, "live-a");
    let b = Appliance::start_node(&config, "live-b");
    for app in [&a, &b] {
        wait_serving(&app.http, Duration::from_secs(10));
    }

    // The first admin, made on live-a from loopback: live-b then wants credentials too.
    assert_eq!(call(&a, As::Nobody, "POST", "/api/v1/users", Some(json!({"name": "alice", "password": PASSWORD}))).0, 201);
    let user_took = until_status(&b, As::Nobody, "/api/v1/node", 401, "the user at live-b");

    // Logged in on live-a; the same cookie and CSRF token work on live-b.
    let (cookie, csrf) = login(&a, "alice");
    let session = As::Session { cookie: &cookie, csrf: &csrf };
    let session_took = until_status(&b, session, "/api/v1/node", 200, "the session at live-b");
    assert_eq!(call(&b, session, "GET", "/api/v1/session", None).1["actor"], "user:alice");
    // A second admin (while none is left, a node answers loopback clients as before one existed).
    assert_eq!(call(&a, session, "POST", "/api/v1/users", Some(json!({"name": "bob", "password": PASSWORD}))).0, 201);
    let no_csrf = As::Session { cookie: &cookie, csrf: "wrong" };
    assert_eq!(call(&b, no_csrf, "POST", "/api/v1/tokens", Some(json!({"name": "ci", "scope": "admin"}))).0, 403, "the CSRF token is checked on live-b");

    // An API token made on live-b works on live-a.
    let (status, made) = call(&b, session, "POST", "/api/v1/tokens", Some(json!({"name": "ci", "scope": "admin"})));
    assert_eq!(status, 201, "{made}");
    let (token_id, token) = (made["id"].as_str().unwrap().to_owned(), made["secret"].as_str().unwrap().to_owned());
    let token_took = until_status(&a, As::Bearer(&token), "/api/v1/node", 200, "the token at live-a");

    // Revoked on live-a: live-b refuses it.
    assert_eq!(call(&a, As::Bearer(&token), "DELETE", &format!("/api/v1/tokens/{token_id}"), None).0, 204);
    let revoke_took = until_status(&b, As::Bearer(&token), "/api/v1/node", 401, "the revocation at live-b");

    // A logout on live-b ends the session on live-a.
    let (second_cookie, second_csrf) = login(&a, "alice");
    let second = As::Session { cookie: &second_cookie, csrf: &second_csrf };
    until_status(&b, second, "/api/v1/node", 200, "the second session at live-b");
    assert_eq!(call(&b, second, "DELETE", "/api/v1/session", None).0, 204);
    let logout_took = until_status(&a, second, "/api/v1/node", 401, "the logout at live-a");

    // Deleted on live-b (by a token: a session cannot delete its own user): live-a
    // ends alice's session and refuses her login.
    let (status, made) = call(&b, session, "POST", "/api/v1/tokens", Some(json!({"name": "ops", "scope": "admin"})));
    assert_eq!(status, 201, "{made}");
    let ops = made["secret"].as_str().unwrap().to_owned();
    assert_eq!(call(&b, As::Bearer(&ops), "DELETE", "/api/v1/users/alice", None).0, 204);
    let delete_took = until_status(&a, session, "/api/v1/node", 401, "the deletion at live-a");
    let refused = client().post(a.url("/api/v1/session")).json(&json!({"username": "alice", "password": PASSWORD})).send().unwrap();
    assert_eq!(refused.status(), 401, "a user deleted on live-b cannot log in on live-a");
    // The ops token goes with alice, who made it: revoked on live-b by the deletion, and on
    // live-a once the deletion reached it.
    assert_eq!(call(&b, As::Bearer(&ops), "GET", "/api/v1/node", None).0, 401, "a deleted user's token at live-b");
    until_status(&a, As::Bearer(&ops), "/api/v1/node", 401, "a deleted user's token at live-a");
    let (bob_cookie, bob_csrf) = login(&a, "bob");
    let bob = As::Session { cookie: &bob_cookie, csrf: &bob_csrf };
    let users = call(&a, bob, "GET", "/api/v1/users", None);
    assert_eq!(users.0, 200);
    let names: Vec<&str> = users.1.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bob"]);

    eprintln!(
        "converged: user {user_took:?}, session {session_took:?}, token {token_took:?}, revocation {revoke_took:?}, logout {logout_took:?}, deletion {delete_took:?}"
    );

    // Either node's API reads the whole federation's audit log: each node's entries, by
    // the node that recorded them (alice's deletion on live-b, bob's creation on live-a).
    let (status, audit) = call(&a, bob, "GET", "/api/v1/cluster/audit?limit=500", None);
    assert_eq!(status, 200, "{audit}");
    let recorded = |node: &str, action: &str, target: &str| {
        audit["entries"].as_array().unwrap().iter().any(|e| e["node"] == node && e["action"] == action && e["target"] == target && e["outcome"] == "ok")
    };
    assert!(recorded("live-b", "user.delete", "alice") && recorded("live-a", "user.create", "bob"), "{audit}");
    assert_eq!(audit["unreachable"], json!([]), "{audit}");
    let times: Vec<i64> = audit["entries"].as_array().unwrap().iter().map(|e| e["at"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    // The node's own log stays its own.
    let own = call(&a, bob, "GET", "/api/v1/audit?limit=500", None).1;
    assert!(!own.as_array().unwrap().iter().any(|e| e["action"] == "user.delete"), "{own}");

    // The records and audit routes answer peers' signed requests only; nothing secret in a log.
    assert_eq!(get(&a.url("/cluster/admin")).status(), 401, "unsigned, from a peer's address");
    assert_eq!(get(&a.url("/cluster/audit")).status(), 401, "unsigned, from a peer's address");
    let session_secret = cookie.split_once('=').unwrap().1;
    for app in [&a, &b] {
        let logs = app.logs();
        for secret in [PASSWORD, session_secret, &token, &ops, &csrf] {
            assert!(!logs.contains(secret), "a secret is in {}'s log", app.http);
        }
        assert!(logs.contains("admin users, tokens and sessions merged from a peer"), "{logs}");
        let failures = app.metrics().get("rackcast_auth_replication_failures_total", &[("kind", "admin")]);
        eprintln!("{}: admin replication failures {failures:?}", app.http);
    }
}
