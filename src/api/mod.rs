//! The admin REST API under [`PREFIX`]: JSON resources for the node, its streams (stop,
//! kick), stream keys, API tokens, users, the federation, the caching tier, the config
//! (secrets redacted) and the audit log, described by an OpenAPI 3 document generated from
//! these handlers (utoipa) and served at `/api/v1/openapi.json`; `docs/openapi.json` is
//! the committed copy, kept equal by a test.
//!
//! Who may call what is decided in [`access`] before any handler runs; every change is
//! recorded in the audit log. Every read or write of the state store runs on the blocking
//! pool ([`blocking`], `auth::db::blocking`), never on a runtime worker. Handlers live by resource: [`session`] (login), [`node`]
//! (node, config, cluster, tiers), [`streams`], [`credentials`] (keys, tokens, users,
//! audit).

pub mod access;
pub mod credentials;
pub mod node;
pub mod session;
pub mod streams;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::admin::AdminStore;
pub use crate::auth::db::blocking;
use crate::auth::db::StoreError;
use crate::auth::keys::KeyStore;
use crate::auth::peer::PeerClient;
use crate::cluster::Membership;
use crate::config::Config;
use crate::metrics::Sources;
use access::Principal;

pub const PREFIX: &str = "/api/v1";
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// Everything the handlers read or change.
pub struct ApiState {
    pub config: Arc<Config>,
    pub admin: Arc<AdminStore>,
    pub keys: Arc<KeyStore>,
    pub sources: Sources,
    pub membership: Option<Membership>,
    /// Signed requests to peers (the federation's audit log), when federated.
    pub peer_client: Option<PeerClient>,
    pub started: Instant,
    pub login_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Login attempts so far (the limiter forgets quiet addresses every 256).
    pub login_attempts: std::sync::atomic::AtomicU64,
}

impl ApiState {
    pub fn new(
        config: Arc<Config>,
        sources: Sources,
        keys: Arc<KeyStore>,
        membership: Option<Membership>,
    ) -> Result<Self, StoreError> {
        let auth = &config.auth;
        let one = NonZeroU32::MIN;
        let quota = Quota::per_minute(NonZeroU32::new(auth.login_attempts_per_minute).unwrap_or(one))
            .allow_burst(NonZeroU32::new(auth.login_attempt_burst).unwrap_or(one));
        Ok(Self {
            admin: Arc::new(AdminStore::open(&auth.data_dir)?),
            keys,
            config,
            sources,
            membership,
            peer_client: None,
            started: Instant::now(),
            login_limiter: RateLimiter::keyed(quota),
            login_attempts: Default::default(),
        })
    }

    /// Records an admin action in the audit log (and the log, if the store fails).
    pub async fn audit(&self, who: &Principal, action: &str, target: &str, outcome: &str) {
        tracing::info!(actor = %who.actor(), address = ?who.address(), action, target, outcome, "admin action");
        let (actor, address) = (who.actor(), who.address());
        let entry = [action, target, outcome].map(str::to_owned);
        let written = blocking(&self.admin, move |admin| {
            let [action, target, outcome] = &entry;
            admin.record(&actor, address.as_deref(), action, target, outcome)
        });
        if let Err(e) = written.await {
            tracing::error!(action, target, "audit log not written: {e}");
        }
    }
}

/// An error answer: `{"error": "..."}` with its status, never cached.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, axum::Json(ErrorBody { error: self.1 })).into_response();
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("state store: {e}");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "the state store cannot be read or written right now")
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rackcast admin API",
        description = "Node, streams, stream keys, API tokens, users, federation, caching tier, config and audit log of a rackcast appliance. \
                       Authenticate with a session cookie (POST /api/v1/session; writes then need the X-CSRF-Token header) or an API token \
                       (Authorization: Bearer). Until an admin user exists, only loopback clients are answered.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    modifiers(&SecuritySchemes),
    security(("session" = []), ("token" = [])),
    tags(
        (name = "session", description = "Login and logout"),
        (name = "node", description = "This node, its config, the federation and its caching tier"),
        (name = "streams", description = "Live streams on this node"),
        (name = "credentials", description = "Stream keys, API tokens, users and the audit log"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("session", SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(access::SESSION_COOKIE))));
        components.add_security_scheme("token", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

fn api_router() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(session::whoami, session::login, session::logout))
        .routes(routes!(node::node))
        .routes(routes!(node::config))
        .routes(routes!(node::cluster))
        .routes(routes!(node::ring))
        .routes(routes!(node::tiers))
        .routes(routes!(streams::list))
        .routes(routes!(streams::detail))
        .routes(routes!(streams::kick))
        .routes(routes!(streams::stop, streams::resume))
        .routes(routes!(credentials::list_keys, credentials::create_key))
        .routes(routes!(credentials::revoke_key))
        .routes(routes!(credentials::list_tokens, credentials::create_token))
        .routes(routes!(credentials::revoke_token))
        .routes(routes!(credentials::list_users, credentials::create_user))
        .routes(routes!(credentials::delete_user))
        .routes(routes!(credentials::audit))
        .routes(routes!(credentials::federation_audit))
}

/// The OpenAPI document, as served and committed.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

/// `/api/v1/...`, access-checked, with the OpenAPI document.
pub fn router(state: Arc<ApiState>) -> Router {
    let (router, doc) = api_router().split_for_parts();
    let doc = Arc::new(doc.to_pretty_json().unwrap_or_default());
    router
        .route(OPENAPI_PATH, axum::routing::get(move || std::future::ready(([(header::CONTENT_TYPE, "application/json")], doc.to_string()))))
        .route("/api/v1/{*rest}", axum::routing::any(|| std::future::ready(ApiError::new(StatusCode::NOT_FOUND, "no such API resource"))))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), access::guard))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::PublishAuth;
    use crate::audience::Audience;
    use crate::package::Packager;

    fn state(data_dir: &std::path::Path) -> Arc<ApiState> {
        let mut config = Config::default();
        config.auth.data_dir = data_dir.to_owned();
        let timing = config.package.mpd_timing();
        crate::transcode::init().unwrap();
        let host = crate::host::HostTelemetry::start();
        let sources = Sources {
            tier: None,
            streams: crate::stream::StreamRegistry::new(),
            packager: Arc::new(Packager::new(Arc::new(crate::store::Store::new()), timing)),
            audience: Arc::new(Audience::default()),
            auth: Arc::new(PublishAuth::new(&config.auth, BTreeMap::new(), None, Arc::default())),
            transcode: Arc::new(crate::transcode::resources::Resources::start(&config.transcode, &host.snapshot()).unwrap()),
            host,
            logins: Arc::new(crate::auth::login::LoginGate::new(&config.auth)),
        };
        let keys = Arc::new(KeyStore::open(data_dir).unwrap());
        Arc::new(ApiState::new(Arc::new(config), sources, keys, None).unwrap())
    }

    async fn status_from(app: &Router, peer: &str) -> (StatusCode, String) {
        status_with(app, peer, None).await
    }

    async fn status_with(app: &Router, peer: &str, header: Option<(&str, &str)>) -> (StatusCode, String) {
        let mut request = Request::get("/api/v1/node").body(Body::empty()).unwrap();
        request.headers_mut().insert("host", "127.0.0.1:8080".parse().unwrap());
        if let Some((name, value)) = header {
            request.headers_mut().insert(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        request.extensions_mut().insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// On a one-thread runtime, an API write waiting for another connection's write lock
    /// (up to the store's 2 s busy time-out) leaves the thread free: store work runs on the
    /// blocking pool.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_waiting_on_the_database_does_not_hold_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(state(dir.path()));
        let holder = rusqlite::Connection::open(dir.path().join(crate::auth::db::DATABASE_FILE)).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut request = Request::post("/api/v1/tokens")
            .header("host", "127.0.0.1:8080")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"name":"ci","scope":"read"}"#))
            .unwrap();
        request.extensions_mut().insert(ConnectInfo("127.0.0.1:40000".parse::<SocketAddr>().unwrap()));
        let mut write = std::pin::pin!(app.oneshot(request));
        // Were the INSERT on this thread, the write would be answered (after the busy
        // time-out) before this timer could fire.
        tokio::select! {
            biased;
            answer = &mut write => panic!("the write was answered while the database was locked: {:?}", answer.map(|r| r.status())),
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
        holder.execute_batch("COMMIT").unwrap();
        assert_eq!(write.await.unwrap().status(), StatusCode::CREATED, "written once the lock was released");
    }

    #[tokio::test]
    async fn only_loopback_clients_are_answered_until_an_admin_exists() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let app = router(Arc::clone(&state));
        let (status, body) = status_from(&app, "192.0.2.1:40000").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("rackcast admin add-user") && body.contains("loopback"), "{body}");
        for local in ["127.0.0.1:40000", "[::1]:40000", "[::ffff:127.0.0.1]:40000"] {
            assert_eq!(status_from(&app, local).await.0, StatusCode::OK, "{local}");
        }
        // Through a proxy on this host: loopback address, but not this host's operator.
        for forwarded in [("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=203.0.113.9"), ("x-real-ip", "203.0.113.9"), ("host", "rebound.example:8080")] {
            assert_eq!(status_with(&app, "127.0.0.1:40000", Some(forwarded)).await.0, StatusCode::FORBIDDEN, "{forwarded:?}");
        }
        state.admin.add_user("alice", "correct horse battery").unwrap();
        for anyone in ["192.0.2.1:40000", "127.0.0.1:40000"] {
            assert_eq!(status_from(&app, anyone).await.0, StatusCode::UNAUTHORIZED, "{anyone}: credentials needed now");
        }
    }
}
