//! Wires one appliance together in flow order and owns its lifetime: binds the listeners,
//! picks the encoder, starts federation membership (when peers are configured), ingest,
//! the admin API, HTTP for this node's roles (through the bounded edge in http/server.rs) and
//! housekeeping. On shutdown it first answers 503 on `/ready` (http/probes.rs); a live node
//! of a federation then says it drains and waits one probe round (cluster/handover.rs);
//! then it stops taking publishes, lets every stream drain its pipeline and waits for every
//! task, and for the next owners to take its suspended streams (all within
//! `cluster.drain_grace`), and only then closes HTTP, which serves until that point.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::api::{self, ApiState, credentials};
use crate::auth::PublishAuth;
use crate::auth::admin::AdminStore;
use crate::auth::keys::KeyStore;
use crate::auth::login::LoginGate;
use crate::auth::peer::{self, PeerClient, PeerGuard, PeerStats};
use crate::auth::replication::{self, ReplicaPeer, Replicas, ReplicationMetrics};
use crate::cluster::upstreams::{LiveUpstreams, OriginUpstreams};
use crate::cluster::config::{NodeConfig, DEFAULT_REGION};
use crate::cluster::discovery::DiscoveryMetrics;
use crate::cluster::handover::{self, Handover, HandoverMetrics};
use crate::cluster::{self, ClusterPlacement, MemberAddresses, Membership, HEALTH_PATH};
use crate::config::Config;
use crate::cluster::config::Role;
use crate::http::probes::{self, Readiness};
use crate::http::{self, HttpEdgeMetrics, HttpState, LiveMetrics};
use crate::ingest;
use crate::ingest::limits::IngestMetrics;
use crate::ingest::relay::{Placement, Standalone};
use crate::audience::Audience;
use crate::metrics::{self, HttpRequests};
use crate::package::Packager;
use crate::store::Store;
use crate::stream::{StreamConfig, StreamRegistry, StreamServices};
use crate::tier::{self, TierState, UpstreamResolver};
use crate::transcode::{self, resources::Resources};

/// Listeners bound before the appliance starts, so callers (and tests) can bind port 0.
pub struct Listeners {
    pub rtmp: TcpListener,
    pub http: TcpListener,
}

/// Connections the kernel completes for a listener before the appliance accepts them.
/// `TcpListener::bind` asks for 128 (the C library's `SOMAXCONN`): viewers arriving
/// together (a stream's start, an edge restart) overflowed it, and the kernel dropped their
/// SYNs, which clients resend after 1, 3, 7 s: 2,000 connections took 9 s to open on an
/// idle node. The kernel caps this at `net.core.somaxconn` (4096 on Debian 12).
const LISTEN_BACKLOG: u32 = 4096;

impl Listeners {
    pub fn bind(rtmp: SocketAddr, http: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            rtmp: listen(rtmp).with_context(|| format!("binding RTMP on {rtmp}"))?,
            http: listen(http).with_context(|| format!("binding HTTP on {http}"))?,
        })
    }
}

/// A listener on `address` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `bind` sets).
fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Runs the appliance until `stop` is cancelled, then drains and returns.
pub async fn run(mut config: Config, listeners: Listeners, stop: CancellationToken) -> anyhow::Result<()> {
    // Every task stops on `shutdown`, cancelled only after /ready turned 503; HTTP on
    // `http_stop`, after the other tasks.
    let shutdown = CancellationToken::new();
    let http_stop = CancellationToken::new();
    let readiness = Arc::new(Readiness::default());
    config.validate().context("invalid configuration")?;
    // The addresses actually bound (port 0 picks one), as the API reports them.
    config.ingest.listen = listeners.rtmp.local_addr().context("reading the RTMP address")?;
    config.http.listen = listeners.http.local_addr().context("reading the HTTP address")?;
    transcode::init().context("starting GStreamer")?;
    let host = crate::host::HostTelemetry::start();
    let resources = Arc::new(Resources::start(&config.transcode, &host.snapshot()).map_err(anyhow::Error::msg).context("choosing the transcode backends")?);

    let config = Arc::new(config);
    let store = Arc::new(Store::new());
    let timing = config.package.mpd_timing();
    // The node's one metrics registry: every part registers its own metrics below.
    let mut metrics_registry = Registry::with_prefix("rackcast");
    let audience = Arc::new(Audience::default());
    audience.register(&mut metrics_registry);
    let packager = Arc::new(
        Packager::new(Arc::clone(&store), timing).with_byte_caps(config.package.byte_caps()).with_reconnect_window(config.package.reconnect_window),
    );
    packager.metrics().register(&mut metrics_registry);
    let tracker = TaskTracker::new();
    let services = StreamServices {
        config: Arc::new(StreamConfig {
            cluster: config.cluster.clone(),
            ingest: config.ingest.clone(),
            transcode: config.transcode.clone(),
            ladder: config.ladder.clone(),
            package: config.package.clone(),
        }),
        packager: Arc::clone(&packager),
        transcode: Arc::clone(&resources),
        transcode_failures: Counter::default(),
        holds: Counter::default(),
        resumed_holds: Counter::default(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    };
    services.register(&mut metrics_registry);
    let registry = StreamRegistry::new();

    let roles = config.cluster.roles();
    // Node-to-node HTTP is signed both ways (auth/peer.rs); refusals are counted here.
    let peer_stats = Arc::new(PeerStats::default());
    peer_stats.register(&mut metrics_registry);
    let peer_client = PeerClient::new(
        cluster::peer_client(Some(config.http.listen.ip()).filter(|ip| !ip.is_unspecified())).context("building the peer HTTP client")?,
        &config.cluster.relay_secret,
        Arc::clone(&peer_stats),
    );
    // The members' addresses, which the peer-request guard admits: the static nodes', or
    // the discovered ones as membership learns them.
    let member_addresses = MemberAddresses::of(&config.cluster);
    let me = config.cluster.this_node().cloned().unwrap_or_else(|| NodeConfig {
        id: config.cluster.node_id.clone(),
        roles: roles.clone(),
        region: DEFAULT_REGION.to_owned(),
        rtmp: config.ingest.listen,
        http: config.http.listen,
    });
    let membership = config
        .cluster
        .federated()
        .then(|| cluster::spawn(&config.cluster, me, Arc::clone(&member_addresses), peer_client.clone(), &tracker, shutdown.clone()));
    if let (Some(m), Some(discovery)) = (&membership, &config.cluster.discovery) {
        let metrics = Arc::new(DiscoveryMetrics::default());
        metrics.register(&mut metrics_registry);
        tracker.spawn(cluster::discovery::run(discovery.clone(), m.clone(), metrics, shutdown.clone()));
    }
    let placement: Arc<dyn Placement> = match &membership {
        Some(m) => {
            let metrics = Arc::new(HandoverMetrics::default());
            metrics.register(&mut metrics_registry);
            let handover = Handover::new(m.clone(), peer_client.clone(), Arc::clone(&packager), config.package.max_stream_bytes, metrics);
            Arc::new(ClusterPlacement::new(m.clone(), config.cluster.relay_secret.clone(), Arc::new(handover), Arc::clone(&packager)))
        }
        None => Arc::new(Standalone),
    };
    tracing::info!(node = %config.cluster.node_id, ?roles, federated = membership.is_some(), "node starting");
    if roles.contains(&Role::Live) {
        match crate::host::cpu::CpuMeter::new(&host.cpu_share, host.cgroup.clone()) {
            Ok(meter) => {
                tracker.spawn(crate::stream::overload::run(Arc::clone(&registry), meter, Arc::clone(&resources), shutdown.clone()));
            }
            // Without CPU figures overload cannot be told apart from a slow source.
            Err(e) => tracing::error!("overload control and cost calibration disabled: {e}"),
        }
    }
    let ingest_metrics = Arc::new(IngestMetrics::default());
    ingest_metrics.register(&mut metrics_registry);
    // One stream key store for publish checks, the admin API, health answers and replication.
    let key_store = Arc::new(KeyStore::open(&config.auth.data_dir).context("opening the stream key store")?);
    let auth = Arc::new(PublishAuth::start(&config.auth, config.ingest.keys.clone(), &config.cluster, Arc::clone(&member_addresses), Arc::clone(&key_store)).await.context("starting publish authentication")?);
    auth.register(&mut metrics_registry);
    let http_edge_metrics = Arc::new(HttpEdgeMetrics::default());
    http_edge_metrics.register(&mut metrics_registry);
    let live_metrics = Arc::new(LiveMetrics::default());
    live_metrics.register(&mut metrics_registry);
    let peer_guard = PeerGuard::new(&config.cluster.node_id, &config.cluster.relay_secret, Arc::clone(&member_addresses), Arc::clone(&peer_stats));
    // What a federation shares (auth/replication.rs): stream keys and the admin side's
    // users, tokens and sessions (through its own connection to the state database).
    let replicas = Arc::new(Replicas::new(
        Arc::clone(&key_store),
        Arc::new(AdminStore::open(&config.auth.data_dir).context("opening the admin store")?),
    ));
    let (node, tier) = node_router(&config, &roles, membership.clone(), Arc::clone(&registry), store, &packager, live_metrics, &audience, &replicas, peer_guard)?;
    if let Some(tier) = &tier {
        tier.register(&mut metrics_registry);
    }
    if let Some(m) = &membership {
        let replication_metrics = Arc::new(ReplicationMetrics::default());
        replication_metrics.register(&mut metrics_registry);
        let peers = m.clone();
        let list = move || {
            peers.peer_key_fingerprints().into_iter().map(|(id, http, fingerprint)| ReplicaPeer { id, http, fingerprint }).collect()
        };
        tracker.spawn(replication::run(Arc::clone(&replicas), list, peer_client.clone(), replication_metrics, shutdown.clone()));
    }
    let logins = Arc::new(LoginGate::new(&config.auth));
    logins.register(&mut metrics_registry);
    let http_requests = HttpRequests::default();
    http_requests.register(&mut metrics_registry);
    let sources = metrics::Sources {
        tier,
        streams: Arc::clone(&registry),
        packager: Arc::clone(&packager),
        audience,
        auth: Arc::clone(&auth),
        transcode: resources,
        host,
        logins,
    };
    let mut api = ApiState::new(Arc::clone(&config), sources.clone(), Arc::clone(&key_store), membership.clone()).context("opening the admin store")?;
    api.peer_client = membership.is_some().then_some(peer_client);
    if !crate::auth::db::blocking(&api.admin, AdminStore::any_user).await.context("reading the admin store")? {
        tracing::warn!("no admin user exists: the API answers only loopback clients until `rackcast admin add-user NAME` creates one");
    }
    let app = node
        .merge(api::router(Arc::new(api)))
        .merge(crate::console::router())
        .merge(metrics::router(metrics_registry, sources))
        .merge(probes::router(Arc::clone(&readiness)))
        .layer(axum::middleware::from_fn_with_state(http_requests, metrics::count_requests));
    let live_streams = Arc::clone(&registry);
    tracker.spawn(ingest::serve(listeners.rtmp, registry, placement, services, ingest_metrics, auth, member_addresses));
    // Every role serves HTTP through the same bounded edge (connection cap, time-outs).
    let http = tokio::spawn(http::serve(listeners.http, app, config.http.clone(), http_edge_metrics, http_stop.clone()));
    // The MPD renderer and the sweep, supervised (see package/mod.rs).
    tracker.spawn(Arc::clone(&packager).run(shutdown.clone()));
    // Ready once serving, and in a federation once the first discovery round is in.
    match &membership {
        Some(m) => {
            let (m, readiness) = (m.clone(), Arc::clone(&readiness));
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                tokio::select! {
                    () = m.settled() => readiness.serving(),
                    () = shutdown.cancelled() => {}
                }
            });
        }
        None => readiness.serving(),
    }

    stop.cancelled().await;
    let grace = config.cluster.drain_grace;
    let deadline = tokio::time::Instant::now() + grace;
    readiness.draining();
    // A live node of a federation hands its streams over (cluster/handover.rs).
    let hand_over = membership.filter(|_| roles.contains(&Role::Live));
    if let Some(m) = &hand_over {
        m.drain();
        packager.hand_over_on_end();
        let streams = live_streams.streams().len();
        if streams > 0 {
            // Peers must see the drain before the streams end here, or a broadcaster that
            // reconnects could be relayed back to this node.
            let notice = (config.cluster.health_interval * 2 + config.cluster.health_timeout).min(grace / 3);
            tracing::info!(streams, ?notice, "draining: out of the ring; the streams end after one probe round and are handed over");
            tokio::time::sleep(notice).await;
        }
    }
    tracing::info!("shutting down: /ready answers 503; draining streams");
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
        tracing::warn!("tasks still running after cluster.drain_grace ({grace:?}); exiting anyway");
    }
    if hand_over.is_some() {
        // Origins read the draining node until they see the next owner report the stream.
        let settle = config.cluster.health_interval + config.cluster.health_timeout;
        handover::wait_until_taken(&packager, deadline, settle).await;
    }
    http_stop.cancel();
    // The HTTP edge bounds its own drain (http/server.rs).
    http.await.context("the HTTP server task")?;
    Ok(())
}

/// The HTTP side of this node, from its roles: a live node serves its own store; an origin
/// or edge serves through its caching tier; a node with both serves its own streams
/// locally and the rest through the tier. Every node answers its peers' health probes
/// (`/cluster/*` only to peers' signed requests: `peer_guard`). Also returns the tier, for
/// `/metrics`.
fn node_router(
    config: &Config,
    roles: &[Role],
    membership: Option<Membership>,
    registry: Arc<StreamRegistry>,
    store: Arc<Store>,
    packager: &Arc<Packager>,
    live_metrics: Arc<LiveMetrics>,
    audience: &Arc<Audience>,
    replicas: &Arc<Replicas>,
    peer_guard: Arc<PeerGuard>,
) -> anyhow::Result<(Router, Option<TierState>)> {
    let live = roles
        .contains(&Role::Live)
        .then(|| {
            http::router(HttpState {
                store: Arc::clone(&store),
                registry: Arc::clone(&registry),
                metrics: live_metrics,
                audience: Arc::clone(audience),
                next_segment_wait: http::next_segment_wait(config.package.segment_duration),
            })
        });
    let resolver: Option<Arc<dyn UpstreamResolver>> = match (&membership, roles) {
        (Some(m), r) if r.contains(&Role::Origin) => Some(Arc::new(LiveUpstreams { membership: m.clone() })),
        (Some(m), r) if r.contains(&Role::Edge) => {
            let region = config.cluster.this_node().map(|n| n.region.clone()).unwrap_or_default();
            Some(Arc::new(OriginUpstreams { membership: m.clone(), region, vnodes: config.cluster.vnodes }))
        }
        _ => None,
    };
    let tier_state = match resolver {
        Some(resolver) => Some(
            TierState::new(config.tier.clone(), resolver)
                .context("starting the caching tier")?
                .observed_by(Arc::clone(audience)),
        ),
        None => None,
    };
    let node_id = config.cluster.node_id.clone();
    let health_store = Arc::clone(&store);
    let health_membership = membership.clone();
    let health_tier = tier_state.clone();
    let health_replicas = Arc::clone(replicas);
    let federated = membership.is_some();
    let mut health = Router::new().route(
        HEALTH_PATH,
        get(move || {
            // The streams this node serves live: once their first Period is listed, and
            // while a drain holds them for the hand-over.
            let streams = health_store.streams().into_iter().filter(|s| s.live).map(|s| s.stream.to_string()).collect();
            let draining = health_membership.as_ref().is_some_and(Membership::draining);
            let mut body = cluster::health_body(&node_id, streams, draining);
            body.tier = health_tier.as_ref().and_then(|t| serde_json::to_value(t.counts()).ok());
            if federated {
                body.keys = health_replicas.reported();
            }
            async move { Json(body) }
        }),
    );
    if federated {
        let (keys, admin) = (Arc::clone(&replicas.keys), Arc::clone(&replicas.admin));
        health = health
            .route(
                replication::KEYS_PATH,
                get(move || {
                    let keys = Arc::clone(&keys);
                    async move { replication::serve(&keys).await }
                }),
            )
            .route(
                replication::ADMIN_PATH,
                get({
                    let admin = Arc::clone(&admin);
                    move || {
                        let admin = Arc::clone(&admin);
                        async move { replication::serve(&admin).await }
                    }
                }),
            )
            .route(
                credentials::PEER_AUDIT_PATH,
                get(move |Query(query): Query<credentials::AuditQuery>| credentials::peer_audit(Arc::clone(&admin), query)),
            );
    }
    if federated && live.is_some() {
        health = health.merge(handover::router(Arc::clone(packager)));
    }
    let health = health.route_layer(axum::middleware::from_fn_with_state(peer_guard, peer::guard));
    let tier = tier_state.clone().map(tier::router);
    let router = match (live, tier) {
        (Some(live), None) => health.merge(live),
        (None, Some(tier)) => health.merge(tier),
        (Some(live), Some(tier)) => health.merge(Router::new().fallback(dispatch).with_state(Dispatch { store, live, tier })),
        (None, None) => anyhow::bail!("node has no role that serves HTTP"),
    };
    Ok((router, tier_state))
}

#[derive(Clone)]
struct Dispatch {
    store: Arc<Store>,
    live: Router,
    tier: Router,
}

/// Streams this node holds are served from its store; anything else goes to the tier.
async fn dispatch(State(d): State<Dispatch>, request: Request) -> Response {
    let path = request.uri().path();
    let to_tier = path.starts_with("/tier/")
        || path
            .strip_prefix("/live/")
            .and_then(|rest| rest.split('/').next())
            .and_then(|s| crate::media::StreamId::parse(s).ok())
            .is_some_and(|s| !d.store.contains_stream(&s));
    let router = if to_tier { d.tier } else { d.live };
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
    .into_response()
}
