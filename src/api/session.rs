//! `/api/v1/session`: log in (username and password, rate-limited per address, password
//! checks bounded node-wide by `auth::login`; sets the session cookie and returns the CSRF
//! token), see who is logged in, log out. A failed login is audited under the typed name
//! only when that user exists, else as [`UNKNOWN_USER`]. The cookie
//! lives until the browser closes; the store ends the session after
//! `auth.session_lifetime` whatever the browser keeps.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::access::{Principal, PrincipalKind, SESSION_COOKIE};
use super::{ApiError, ApiResult, ApiState, ErrorBody, blocking};
use crate::auth::admin::{PasswordCheck, Scope, UNKNOWN_USER};
use crate::auth::login::LoginRefusal;

/// An error answer that tells the client when to try again.
fn retry_after(status: StatusCode, message: &str, seconds: u64) -> Response {
    let mut response = ApiError::new(status, message).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    response
}

#[derive(Deserialize, ToSchema)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// The caller: a user's session (with the CSRF token writes must send), an API token, or a
/// loopback client before any admin exists.
#[derive(Serialize, ToSchema)]
pub struct SessionInfo {
    /// `user:NAME`, `token:ID` or `loopback`.
    pub actor: String,
    pub user: Option<String>,
    /// Send it as `X-CSRF-Token` with every write made with the session cookie.
    pub csrf_token: Option<String>,
    /// When the session ends (seconds since the Unix epoch).
    pub expires_at: Option<i64>,
    pub scope: Option<Scope>,
    /// False when the API answers only loopback clients because no admin user exists.
    pub admin_exists: bool,
}

fn info(who: &Principal) -> SessionInfo {
    let (user, csrf_token, expires_at, scope) = match &who.kind {
        PrincipalKind::User { name, csrf, expires_at } => (Some(name.clone()), Some(csrf.clone()), Some(*expires_at), Some(Scope::Admin)),
        PrincipalKind::Token { scope, .. } => (None, None, None, Some(*scope)),
        PrincipalKind::Loopback => (None, None, None, Some(Scope::Admin)),
        PrincipalKind::Anonymous => (None, None, None, None),
    };
    SessionInfo { actor: who.actor(), user, csrf_token, expires_at, scope, admin_exists: !matches!(who.kind, PrincipalKind::Loopback) }
}

#[utoipa::path(get, path = "/api/v1/session", tag = "session",
    responses((status = 200, description = "OK", body = SessionInfo), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody)))]
pub async fn whoami(Extension(who): Extension<Principal>) -> ApiResult<Json<SessionInfo>> {
    if who.kind == PrincipalKind::Anonymous {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "not logged in"));
    }
    Ok(Json(info(&who)))
}

#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body = Login, security(()),
    responses(
        (status = 200, body = SessionInfo, description = "Logged in; the session cookie is set"),
        (status = 401, body = ErrorBody, description = "Wrong username or password"),
        (status = 429, body = ErrorBody, description = "Too many login attempts from this address, or too many failed logins on this node (see Retry-After)"),
        (status = 503, body = ErrorBody, description = "Every password check slot is busy (see Retry-After)"),
    ))]
pub async fn login(
    State(api): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    jar: CookieJar,
    Json(login): Json<Login>,
) -> Result<Response, ApiError> {
    if api.login_attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 256 == 0 {
        api.login_limiter.retain_recent();
    }
    let gate = &api.sources.logins;
    if let Some(address) = who.address
        && api.login_limiter.check_key(&address).is_err()
    {
        gate.record_per_address_refusal();
        tracing::warn!(%address, "login refused: too many attempts from this address");
        // What the audit log may name: a name typed at a failed login is recorded only
        // when such a user exists (otherwise it may be a password typed in the wrong field).
        let name = login.username.clone();
        let target = blocking(&api.admin, move |admin| admin.login_target(&name)).await?;
        api.audit(&who, "session.login", &target, "refused: too many attempts").await;
        return Ok(retry_after(StatusCode::TOO_MANY_REQUESTS, "too many login attempts from this address; wait a minute", 60));
    }
    // At most a few password checks at once on the whole node, and a node-wide budget of
    // failures (auth/login.rs); the slot is held until the hash is done, even if the
    // client has gone. These refusals are counted and logged there, not audited one by
    // one: a flood must not cost a database write per attempt, nor push the audit log's
    // history out.
    let slot = match gate.slot().await {
        Ok(slot) => slot,
        Err(refusal) => {
            let (status, message) = match refusal {
                LoginRefusal::Busy => (StatusCode::SERVICE_UNAVAILABLE, "too many logins at once; try again shortly"),
                LoginRefusal::BudgetSpent { .. } => (StatusCode::TOO_MANY_REQUESTS, "too many failed logins on this node; try again later"),
            };
            return Ok(retry_after(status, message, refusal.retry_after_secs()));
        }
    };
    let check = Arc::clone(&api);
    let (name, password) = (login.username.clone(), login.password);
    let checked = tokio::task::spawn_blocking(move || {
        let mut slot = slot;
        check.admin.check_password(&name, &password, slot.memory())
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("password check failed: {e}")))??;
    if checked != PasswordCheck::Valid {
        gate.record_failure();
        let target = if checked == PasswordCheck::Wrong { login.username.clone() } else { UNKNOWN_USER.to_owned() };
        api.audit(&who, "session.login", &target, "refused: wrong username or password").await;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong username or password"));
    }
    let lifetime = api.config.auth.session_lifetime;
    let user = login.username.clone();
    let session = blocking(&api.admin, move |admin| admin.open_session(&user, lifetime)).await?;
    let user = Principal {
        kind: PrincipalKind::User { name: login.username.clone(), csrf: session.csrf.clone(), expires_at: session.expires_at },
        address: who.address,
    };
    api.audit(&user, "session.login", &login.username, "ok").await;
    let tls = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = Cookie::build((SESSION_COOKIE, session.secret))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(tls)
        .build();
    Ok((jar.add(cookie), Json(info(&user))).into_response())
}

#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    responses((status = 204, description = "Logged out; the cookie is cleared"), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody), (status = 403, description = "Not allowed: read-only token, CSRF token missing, cross-origin, or not loopback before an admin exists", body = ErrorBody)))]
pub async fn logout(State(api): State<Arc<ApiState>>, Extension(who): Extension<Principal>, jar: CookieJar) -> ApiResult<Response> {
    if let Some(secret) = jar.get(SESSION_COOKIE).map(|c| c.value().to_owned()) {
        blocking(&api.admin, move |admin| admin.close_session(&secret)).await?;
    }
    api.audit(&who, "session.logout", &who.actor(), "ok").await;
    let cleared = Cookie::build((SESSION_COOKIE, "")).path("/").build();
    Ok((jar.remove(cleared), StatusCode::NO_CONTENT).into_response())
}
