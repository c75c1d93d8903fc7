//! Who may call the API, decided before any handler runs ([`guard`]):
//!
//! - Until an admin user exists, only loopback clients are answered (as `loopback`, with
//!   every right): the host's own operator creates the first user. A request carrying a
//!   proxy's forwarding header (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) does not count
//!   as loopback, so a TLS terminator on the same host does not open the API to the world;
//!   nor does one whose Host header names anything but loopback (DNS rebinding).
//! - Then a request needs an API token (`Authorization: Bearer rat_...`; a `read` token
//!   may only read) or a session cookie from `POST /api/v1/session`, which expires.
//! - A state-changing request (anything but GET and HEAD) made with a session cookie must
//!   carry the session's CSRF token in `X-CSRF-Token`; every state-changing request whose
//!   `Origin` (or `Sec-Fetch-Site`) shows another site is refused, whatever it carries.
//! - Login itself and the OpenAPI document need no credentials (login is rate-limited in
//!   [`super::session`]).
//!
//! The answers are 401 (no or bad credentials, expired session), 403 (known but not
//! allowed: read-only token, CSRF, cross-origin, not loopback before an admin exists).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::CookieJar;

use super::{ApiError, ApiState, OPENAPI_PATH, blocking};
use crate::auth::admin::AdminStore;
use crate::auth::admin::{Scope, SessionLookup};
use crate::http::{Peer, viewer_origin};

pub const SESSION_COOKIE: &str = "rackcast_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const SESSION_PATH: &str = "/api/v1/session";

/// Who is calling, once [`guard`] has let the request through.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub address: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    User { name: String, csrf: String, expires_at: i64 },
    Token { id: String, scope: Scope },
    /// A loopback client while no admin user exists.
    Loopback,
    /// No credentials: only login and the OpenAPI document.
    Anonymous,
}

impl Principal {
    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        match &self.kind {
            PrincipalKind::User { name, .. } => format!("user:{name}"),
            PrincipalKind::Token { id, .. } => format!("token:{id}"),
            PrincipalKind::Loopback => "loopback".to_owned(),
            PrincipalKind::Anonymous => "anonymous".to_owned(),
        }
    }

    pub fn address(&self) -> Option<String> {
        self.address.map(|a| a.to_string())
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    ApiError::new(status, message).into_response()
}

/// A refused request, logged with its address (never its credentials).
fn refused(status: StatusCode, message: &str, method: &Method, path: &str, address: Option<IpAddr>) -> Response {
    tracing::warn!(%method, path, address = ?address, status = status.as_u16(), "API request refused: {message}");
    refuse(status, message)
}

/// True when the request says it comes from another site than the one it addresses.
fn cross_origin(headers: &HeaderMap) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ours = viewer_origin(headers);
        // Behind a TLS terminator the scheme may be reported either way: compare hosts too.
        let host_of = |o: &str| o.split_once("://").map(|(_, h)| h.to_owned());
        let theirs = origin.to_str().ok();
        return match (theirs, ours) {
            (Some(theirs), Some(ours)) => theirs != ours && host_of(theirs) != host_of(&ours),
            _ => true,
        };
    }
    headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|site| !matches!(site, "same-origin" | "none"))
}

/// True when the Host header names this machine's loopback (`localhost`, 127.0.0.0/8,
/// `[::1]`): a page on another site that re-points its own name at 127.0.0.1 (DNS
/// rebinding) sends its own name, and so never counts as the host's operator.
fn addressed_to_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The access check in front of every API route; see the module header.
pub async fn guard(State(api): State<Arc<ApiState>>, peer: Peer, jar: CookieJar, mut request: Request, next: Next) -> Response {
    let address = peer.as_ref().map(|p| p.0.0.ip());
    // Owned: the request (whose body is not Sync) is not borrowed across the store's awaits.
    let headers = &request.headers().clone();
    let method = request.method().clone();
    let path = &request.uri().path().to_owned();
    let write = !matches!(method, Method::GET | Method::HEAD);
    if write && cross_origin(headers) {
        return refused(StatusCode::FORBIDDEN, "cross-origin request refused", &method, path, address);
    }
    let open_route = path == OPENAPI_PATH || (path == SESSION_PATH && method == Method::POST);
    let any_user = match blocking(&api.admin, AdminStore::any_user).await {
        Ok(any) => any,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let kind = if !any_user {
        // A request a proxy on this host forwarded comes from loopback but not from this host.
        let proxied = ["forwarded", "x-forwarded-for", "x-forwarded-proto", "x-real-ip"].iter().any(|h| headers.contains_key(*h));
        let from_loopback = address.is_some_and(|a| a.is_loopback() || a.to_canonical().is_loopback());
        if proxied || !from_loopback || !addressed_to_loopback(headers) {
            return refused(
                StatusCode::FORBIDDEN,
                "no admin user exists yet: until `rackcast admin add-user NAME` creates one, the console and API answer only on the appliance itself (loopback)",
                &method,
                path,
                address,
            );
        }
        PrincipalKind::Loopback
    } else if let Some(secret) = bearer(headers).map(str::to_owned) {
        match blocking(&api.admin, move |admin| admin.token(&secret)).await {
            Ok(Some(token)) => PrincipalKind::Token { id: token.id, scope: token.scope },
            Ok(None) => return refused(StatusCode::UNAUTHORIZED, "unknown or revoked API token", &method, path, address),
            Err(e) => return ApiError::from(e).into_response(),
        }
    } else if let Some(cookie) = jar.get(SESSION_COOKIE).map(|c| c.value().to_owned()) {
        match blocking(&api.admin, move |admin| admin.session(&cookie)).await {
            Ok(SessionLookup::Valid { user, csrf, expires_at }) => PrincipalKind::User { name: user, csrf, expires_at },
            Ok(SessionLookup::Expired) if !open_route => return refuse(StatusCode::UNAUTHORIZED, "session expired: log in again"),
            Ok(SessionLookup::Unknown) if !open_route => return refuse(StatusCode::UNAUTHORIZED, "not logged in (unknown session)"),
            Ok(_) => PrincipalKind::Anonymous,
            Err(e) => return ApiError::from(e).into_response(),
        }
    } else if open_route {
        PrincipalKind::Anonymous
    } else {
        return refuse(StatusCode::UNAUTHORIZED, "log in (POST /api/v1/session) or send an API token (Authorization: Bearer)");
    };
    if write {
        match &kind {
            PrincipalKind::Token { scope: Scope::Read, .. } => {
                return refused(StatusCode::FORBIDDEN, "this API token is read-only", &method, path, address);
            }
            PrincipalKind::User { csrf, .. } => {
                let sent = headers.get(CSRF_HEADER).map(|v| v.as_bytes());
                if sent.is_none_or(|sent| !constant_time_eq(sent, csrf.as_bytes())) {
                    return refused(StatusCode::FORBIDDEN, "CSRF token missing or wrong (send the session's csrf_token in X-CSRF-Token)", &method, path, address);
                }
            }
            _ => {}
        }
    }
    request.extensions_mut().insert(Principal { kind, address });
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn origin_checks() {
        assert!(!cross_origin(&headers(&[("host", "rack1:8080")])), "no Origin: a script, not a browser");
        assert!(!cross_origin(&headers(&[("host", "rack1:8080"), ("origin", "http://rack1:8080")])));
        assert!(!cross_origin(&headers(&[("host", "rack1:8080"), ("origin", "https://rack1:8080")])), "behind TLS");
        assert!(cross_origin(&headers(&[("host", "rack1:8080"), ("origin", "http://evil.example")])));
        assert!(cross_origin(&headers(&[("host", "rack1:8080"), ("origin", "null")])));
        assert!(cross_origin(&headers(&[("host", "rack1:8080"), ("sec-fetch-site", "cross-site")])));
        assert!(!cross_origin(&headers(&[("host", "rack1:8080"), ("sec-fetch-site", "same-origin")])));
    }

    #[test]
    fn only_loopback_host_names_count_as_this_host() {
        for host in ["localhost", "localhost:8080", "127.0.0.1:8080", "127.0.0.2", "[::1]:8080", "[::1]"] {
            assert!(addressed_to_loopback(&headers(&[("host", host)])), "{host}");
        }
        for host in ["evil.example:8080", "rack1", "192.0.2.1:8080", "[2001:db8::1]:80", "localhost.evil.example"] {
            assert!(!addressed_to_loopback(&headers(&[("host", host)])), "{host}");
        }
        assert!(!addressed_to_loopback(&HeaderMap::new()));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        assert_eq!(bearer(&headers(&[("authorization", "Bearer rat_abc")])), Some("rat_abc"));
        assert_eq!(bearer(&headers(&[("authorization", "bearer  rat_abc ")])), Some("rat_abc"));
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
    }
}
