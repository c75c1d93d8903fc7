//! Node-to-node HTTP against the real binary on 127.0.0.1: `/cluster/*` answers only the
//! configured nodes' addresses (a client bound to 127.0.0.2 is refused), only signed
//! requests, each once (a captured request replayed is refused and logged); every answer
//! is signed for the request it answers; a node refuses a peer's answer that is unsigned
//! or changed on the way and merges nothing from it (a fake peer in the test plays the
//! tampered node), and merges the same records once they come signed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use rackcast::auth::peer::{self, NONCE_HEADER};
use sha2::Digest as _;
use crate::support::*;

const SECRET: &str = "cluster-auth-test-secret-0123";

fn config(nodes: &[(&str, u16, u16)]) -> String {
    let mut text = format!("[cluster]\nhealth_interval = \"200ms\"\nhealth_timeout = \"150ms\"\nrelay_secret = \"{SECRET}\"\n");
    for (id, rtmp, http) in nodes {
        text += &format!("\n[[cluster.nodes]]\nid = \"{id}\"\nroles = [\"live\"]\nrtmp = \"127.0.0.1:{rtmp}\"\nhttp = \"127.0.0.1:{http}\"\n");
    }
    text
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A blocking client whose connections come from `source` (an address on 127.0.0.0/8).
fn client_from(source: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(Some(source.parse().unwrap()))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// One sample of a node's `/metrics` (0 when the series is absent).
fn metric(app: &Appliance, series: &str) -> f64 {
    let text = get(&app.url("/metrics")).text().unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

#[test]
fn cluster_routes_answer_only_peers_signed_requests_and_each_only_once() {
    let (a_ports, b_ports) = ((free_port(), free_port()), (free_port(), free_port()));
    let config = config(&[("live-a", a_ports.0, a_ports.1), ("live-b", b_ports.0, b_ports.1)]);
    let a = Appliance::start_node(&config, "live-a");
    let b = Appliance::start_node(&config, "live-b");
    let b_http = format!("127.0.0.1:{}", b_ports.1);
    wait_serving(&b_http, Duration::from_secs(10));
    let health = format!("http://{b_http}/cluster/health");
    let peer_client = client_from("127.0.0.1");

    // A genuine signed request from a peer's address: answered, and the answer is signed
    // by live-b for exactly this request.
    let (headers, nonce) = peer::sign_request(SECRET, "live-b", "GET", "/cluster/health", b"");
    let answer = peer_client.get(&health).headers(headers.clone()).send().unwrap();
    assert_eq!(answer.status(), 200);
    let answer_headers = answer.headers().clone();
    let body = answer.bytes().unwrap();
    assert_eq!(peer::verify_response(SECRET, "live-b", &nonce, 200, &answer_headers, &body, now()), Ok(()));
    assert!(peer::verify_response(SECRET, "live-a", &nonce, 200, &answer_headers, &body, now()).is_err(), "bound to the node");
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(report["id"], "live-b");

    // The same request again (captured on the wire and replayed): refused and logged.
    let replayed = peer_client.get(&health).headers(headers.clone()).send().unwrap();
    assert_eq!(replayed.status(), 401, "a replay is refused");
    b.wait_for_log("nonce already used: a replay", Duration::from_secs(5));

    // Unsigned, signed with another secret, signed for another node or path: refused.
    assert_eq!(peer_client.get(&health).send().unwrap().status(), 401, "unsigned");
    let (forged, _) = peer::sign_request("not-the-federation-secret", "live-b", "GET", "/cluster/health", b"");
    assert_eq!(peer_client.get(&health).headers(forged).send().unwrap().status(), 401, "another secret");
    let (for_a, _) = peer::sign_request(SECRET, "live-a", "GET", "/cluster/health", b"");
    assert_eq!(peer_client.get(&health).headers(for_a).send().unwrap().status(), 401, "signed for live-a");
    let (for_health, _) = peer::sign_request(SECRET, "live-b", "GET", "/cluster/health", b"");
    let keys = format!("http://{b_http}/cluster/keys");
    assert_eq!(peer_client.get(&keys).headers(for_health).send().unwrap().status(), 401, "signed for another path");
    // Its time changed (to pass a stale capture off as fresh): the signature covers it.
    let mut retimed = peer::sign_request(SECRET, "live-b", "GET", "/cluster/health", b"").0;
    retimed.insert(peer::TIME_HEADER, (now() + 1).into());
    assert_eq!(peer_client.get(&health).headers(retimed).send().unwrap().status(), 401, "time changed");

    // From an address that is no configured node's: refused, even when correctly signed.
    let stranger = client_from("127.0.0.2");
    for path in ["/cluster/health", "/cluster/keys"] {
        let (signed, _) = peer::sign_request(SECRET, "live-b", "GET", path, b"");
        let response = stranger.get(format!("http://{b_http}{path}")).headers(signed).send().unwrap();
        assert_eq!(response.status(), 403, "{path} from 127.0.0.2");
    }
    b.wait_for_log("not from a federation node's address", Duration::from_secs(5));
    let refused = |reason: &str| metric(&b, &format!("rackcast_cluster_requests_refused_total{{reason=\"{reason}\"}}"));
    assert_eq!(refused("replayed"), 1.0);
    assert_eq!(refused("not_peer"), 2.0);
    assert_eq!(refused("bad_signature"), 5.0);

    // The nodes themselves still probe each other (signed both ways) and stay up.
    std::thread::sleep(Duration::from_secs(1));
    for node in [&a, &b] {
        let cluster = get_json(&node.url("/api/v1/cluster"));
        let members = cluster["members"].as_array().unwrap();
        assert!(members.len() == 2 && members.iter().all(|m| m["up"] == true), "{cluster}");
        assert!(!node.logs().contains("peer down"), "{}", node.logs());
        assert_eq!(metric(node, "rackcast_cluster_answers_refused_total"), 0.0);
    }
    assert!(!a.logs().contains(SECRET) && !b.logs().contains(SECRET), "the secret is in a log");
}

/// How the fake peer answers `/cluster/keys`.
const SIGNED: u8 = 0;
const TAMPERED: u8 = 1;
const UNSIGNED: u8 = 2;

/// A fake node "fake-b" on 127.0.0.1: its health answers are correctly signed and report
/// a key store that differs from live-a's; its key records carry one injected key, and
/// are signed, tampered (signed, then changed) or unsigned as `keys_mode` says.
struct FakePeer {
    keys_mode: AtomicU8,
    /// Requests from live-a that carried a valid signature.
    signed_requests: AtomicU32,
    records: String,
}

fn answer(fake: &FakePeer, headers: &HeaderMap, path: &str, body: String, mode: u8) -> Response {
    if peer::verify_request(SECRET, "fake-b", "GET", path, headers, b"", now()).is_ok() {
        fake.signed_requests.fetch_add(1, Ordering::SeqCst);
    }
    let nonce: [u8; peer::NONCE_BYTES] = hex::decode(headers[NONCE_HEADER].to_str().unwrap()).unwrap().try_into().unwrap();
    let signature = peer::sign_response(SECRET, "fake-b", &nonce, 200, body.as_bytes());
    match mode {
        SIGNED => (signature, body).into_response(),
        // What a machine between the nodes would do: keep the headers, change the body.
        TAMPERED => (signature, body.replace("\"revoked_at\":1", "\"revoked_at\":null")).into_response(),
        _ => body.into_response(),
    }
}

async fn fake_health(State(fake): State<Arc<FakePeer>>, headers: HeaderMap) -> Response {
    let body = r#"{"id":"fake-b","streams":[],"keys":"a-fingerprint-live-a-does-not-have"}"#.to_owned();
    answer(&fake, &headers, "/cluster/health", body, SIGNED)
}

async fn fake_keys(State(fake): State<Arc<FakePeer>>, headers: HeaderMap) -> Response {
    let mode = fake.keys_mode.load(Ordering::SeqCst);
    answer(&fake, &headers, "/cluster/keys", fake.records.clone(), mode)
}

#[test]
fn a_peer_answer_that_is_unsigned_or_changed_on_the_way_is_refused() {
    let (a_ports, fake_ports) = ((free_port(), free_port()), (free_port(), free_port()));
    let config = config(&[("live-a", a_ports.0, a_ports.1), ("fake-b", fake_ports.0, fake_ports.1)]);
    // The injected key: the tampered answer turns its revocation into an active key.
    let digest = hex::encode(sha2::Sha256::digest(b"rk_injected-key-of-the-attacker"));
    let records = format!(r#"[{{"id":"injected1","stream":"studio","digest":"{digest}","created_at":1,"revoked_at":1}}]"#);
    let fake = Arc::new(FakePeer { keys_mode: AtomicU8::new(TAMPERED), signed_requests: AtomicU32::new(0), records });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", fake_ports.1))).unwrap();
    let router = axum::Router::new()
        .route("/cluster/health", axum::routing::get(fake_health))
        .route("/cluster/keys", axum::routing::get(fake_keys))
        .with_state(Arc::clone(&fake));
    runtime.spawn(async move { axum::serve(listener, router).await });

    let a = Appliance::start_node(&config, "live-a");
    let keys = || get_json(&a.url("/api/v1/keys"));

    // Tampered: live-a pulls (the fingerprints differ), refuses the answer, merges nothing.
    a.wait_for_log("answer from a peer refused: signature does not match", Duration::from_secs(10));
    a.wait_for_log("reading a peer's stream keys failed", Duration::from_secs(5));
    assert!(fake.signed_requests.load(Ordering::SeqCst) >= 2, "live-a signs its probes and pulls");
    assert!(metric(&a, "rackcast_cluster_answers_refused_total") >= 1.0);
    assert_eq!(keys(), serde_json::json!([]), "nothing merged from a tampered answer");

    // Unsigned: the same.
    fake.keys_mode.store(UNSIGNED, Ordering::SeqCst);
    a.wait_for_log("answer from a peer refused: not signed", Duration::from_secs(10));
    assert_eq!(keys(), serde_json::json!([]), "nothing merged from an unsigned answer");

    // The same records, signed by the peer: merged (the refusals were the signature's).
    fake.keys_mode.store(SIGNED, Ordering::SeqCst);
    let merged = wait_until("the signed records merged", Duration::from_secs(10), || {
        keys().as_array().filter(|k| !k.is_empty()).cloned()
    });
    assert_eq!(merged[0]["id"], "injected1");
    assert!(!merged[0]["revoked_at"].is_null(), "merged as the peer sent it: revoked");
    let cluster = get_json(&a.url("/api/v1/cluster"));
    let member = cluster["members"].as_array().unwrap().iter().find(|m| m["id"] == "fake-b").cloned().unwrap();
    assert_eq!(member["up"], true, "signed health answers keep the peer up: {cluster}");
}

/// A peer whose health answers are not signed with the federation's secret is down.
#[test]
fn a_peer_whose_health_answers_are_forged_is_down() {
    let (a_ports, fake_ports) = ((free_port(), free_port()), (free_port(), free_port()));
    let config = config(&[("live-a", a_ports.0, a_ports.1), ("fake-b", fake_ports.0, fake_ports.1)]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", fake_ports.1))).unwrap();
    // Answers as fake-b would, signed with a guessed secret.
    let router = axum::Router::new().route(
        "/cluster/health",
        axum::routing::get(|headers: HeaderMap| async move {
            let body = r#"{"id":"fake-b","streams":["stolen"]}"#;
            let nonce: [u8; peer::NONCE_BYTES] = hex::decode(headers[NONCE_HEADER].to_str().unwrap()).unwrap().try_into().unwrap();
            (peer::sign_response("a-guessed-secret-0123456789", "fake-b", &nonce, 200, body.as_bytes()), body).into_response()
        }),
    );
    runtime.spawn(async move { axum::serve(listener, router).await });
    let a = Appliance::start_node(&config, "live-a");
    a.wait_for_log("peer down", Duration::from_secs(10));
    let cluster = get_json(&a.url("/api/v1/cluster"));
    let member = cluster["members"].as_array().unwrap().iter().find(|m| m["id"] == "fake-b").cloned().unwrap();
    assert_eq!(member["up"], false, "{cluster}");
    assert!(!cluster.to_string().contains("stolen"), "nothing from the forged answer is used: {cluster}");
    assert!(metric(&a, "rackcast_cluster_answers_refused_total") >= 2.0);
}
