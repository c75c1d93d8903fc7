//! `/api/v1/keys`, `/tokens`, `/users`, `/audit`: stream keys (the secret is shown once,
//! at creation), API tokens (likewise), admin users (argon2id; passwords never returned)
//! and the audit log. Every change is audited.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::access::{Principal, PrincipalKind};
use super::{ApiError, ApiResult, ApiState, ErrorBody, blocking};
use crate::auth::admin::{AdminError, AdminStore, AuditEntry, Scope, TokenInfo, UserInfo};
use crate::auth::keys::{KeyInfo, KeyStore};
use crate::media::StreamId;

// ---- stream keys

#[utoipa::path(get, path = "/api/v1/keys", tag = "credentials",
    responses((status = 200, description = "OK", body = Vec<KeyInfo>), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody)))]
pub async fn list_keys(State(api): State<Arc<ApiState>>) -> ApiResult<Json<Vec<KeyInfo>>> {
    Ok(Json(blocking(&api.keys, KeyStore::list).await?))
}

#[derive(Deserialize, ToSchema)]
pub struct NewKeyRequest {
    /// The public stream name the key publishes.
    pub stream: String,
}

#[derive(Serialize, ToSchema)]
pub struct NewKeyAnswer {
    pub id: String,
    pub stream: String,
    /// The stream key, shown this once: the broadcaster's "stream key".
    pub key: String,
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "credentials", request_body = NewKeyRequest,
    responses((status = 201, description = "Created", body = NewKeyAnswer), (status = 400, description = "Bad request: the message says what is wrong", body = ErrorBody), (status = 403, description = "Not allowed: read-only token, CSRF token missing, cross-origin, or not loopback before an admin exists", body = ErrorBody)))]
pub async fn create_key(
    State(api): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Json(request): Json<NewKeyRequest>,
) -> ApiResult<(StatusCode, Json<NewKeyAnswer>)> {
    let stream = StreamId::parse(&request.stream)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{:?} is not a stream name: {e}", request.stream)))?;
    let for_stream = stream.clone();
    let Some(key) = blocking(&api.keys, move |keys| keys.create(&for_stream)).await? else {
        return Err(ApiError::new(StatusCode::INSUFFICIENT_STORAGE, format!("the store holds {} keys already", crate::auth::keys::MAX_KEYS)));
    };
    api.audit(&who, "key.create", &format!("{} ({stream})", key.id), "ok").await;
    Ok((StatusCode::CREATED, Json(NewKeyAnswer { id: key.id, stream: stream.to_string(), key: key.secret })))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "credentials", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked: new publishes with it are refused; a live stream goes on"),
        (status = 404, description = "Not found", body = ErrorBody), (status = 403, description = "Not allowed: read-only token, CSRF token missing, cross-origin, or not loopback before an admin exists", body = ErrorBody)))]
pub async fn revoke_key(State(api): State<Arc<ApiState>>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let key = id.clone();
    if !blocking(&api.keys, move |keys| keys.revoke(&key)).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no stream key {id:?} in force")));
    }
    api.audit(&who, "key.revoke", &id, "ok").await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- API tokens

#[utoipa::path(get, path = "/api/v1/tokens", tag = "credentials",
    responses((status = 200, description = "OK", body = Vec<TokenInfo>), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody)))]
pub async fn list_tokens(State(api): State<Arc<ApiState>>) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(blocking(&api.admin, AdminStore::tokens).await?))
}

#[derive(Deserialize, ToSchema)]
pub struct NewTokenRequest {
    /// What the token is for (shown in listings and the audit log).
    pub name: String,
    pub scope: Scope,
}

#[derive(Serialize, ToSchema)]
pub struct NewTokenAnswer {
    #[serde(flatten)]
    pub token: TokenInfo,
    /// Send as `Authorization: Bearer {secret}`; shown this once.
    pub secret: String,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "credentials", request_body = NewTokenRequest,
    responses((status = 201, description = "Created", body = NewTokenAnswer), (status = 400, description = "Bad request: the message says what is wrong", body = ErrorBody), (status = 403, description = "Not allowed: read-only token, CSRF token missing, cross-origin, or not loopback before an admin exists", body = ErrorBody)))]
pub async fn create_token(
    State(api): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Json(request): Json<NewTokenRequest>,
) -> ApiResult<(StatusCode, Json<NewTokenAnswer>)> {
    let name = request.name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "a token name is 1 to 100 printable characters"));
    }
    let (owned_name, scope, actor) = (name.to_owned(), request.scope, who.actor());
    let (token, secret) = blocking(&api.admin, move |admin| admin.create_token(&owned_name, scope, &actor)).await?;
    api.audit(&who, "token.create", &format!("{} ({name}, {:?})", token.id, request.scope), "ok").await;
    Ok((StatusCode::CREATED, Json(NewTokenAnswer { token, secret })))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "credentials", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked"), (status = 404, description = "Not found", body = ErrorBody), (status = 403, description = "Not allowed: read-only token, CSRF token missing, cross-origin, or not loopback before an admin exists", body = ErrorBody)))]
pub async fn revoke_token(State(api): State<Arc<ApiState>>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let token = id.clone();
    if !blocking(&api.admin, move |admin| admin.revoke_token(&token)).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no API token {id:?} in force")));
    }
    api.audit(&who, "token.revoke", &id, "ok").await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- users

#[utoipa::path(get, path = "/api/v1/users", tag = "credentials",
    responses((status = 200, description = "OK", body = Vec<UserInfo>), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody)))]
pub async fn list_users(State(api): State<Arc<ApiState>>) -> ApiResult<Json<Vec<UserInfo>>> {
    Ok(Json(blocking(&api.admin, AdminStore::users).await?))
}

#[derive(Deserialize, ToSchema)]
pub struct NewUserRequest {
    pub name: String,
    /// At least 10 characters; stored as an argon2id hash.
    pub password: String,
}

#[utoipa::path(post, path = "/api/v1/users", tag = "credentials", request_body = NewUserRequest,
    responses((status = 201, description = "Created", body = UserInfo), (status = 400, description = "Bad request: the message says what is wrong", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody), (status = 403, description = "Not allowed: read-only token, CSRF token missing, cross-origin, or not loopback before an admin exists", body = ErrorBody)))]
pub async fn create_user(
    State(api): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Json(request): Json<NewUserRequest>,
) -> ApiResult<(StatusCode, Json<UserInfo>)> {
    let name = request.name.clone();
    let added = blocking(&api.admin, move |admin| admin.add_user(&name, &request.password)).await;
    match added {
        Ok(()) => {}
        Err(AdminError::Store(e)) => return Err(e.into()),
        Err(e @ AdminError::UserExists(_)) => return Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
        Err(e) => return Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string())),
    }
    api.audit(&who, "user.create", &request.name, "ok").await;
    let user = blocking(&api.admin, AdminStore::users).await?.into_iter().find(|u| u.name == request.name);
    user.map(|u| (StatusCode::CREATED, Json(u))).ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "the user was deleted meanwhile"))
}

#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "credentials", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted, with its sessions"), (status = 404, description = "Not found", body = ErrorBody), (status = 403, description = "Not allowed: read-only token, CSRF token missing, cross-origin, or not loopback before an admin exists", body = ErrorBody)))]
pub async fn delete_user(State(api): State<Arc<ApiState>>, Extension(who): Extension<Principal>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    if matches!(&who.kind, PrincipalKind::User { name: me, .. } if *me == name) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "you cannot delete the user you are logged in as"));
    }
    let user = name.clone();
    if !blocking(&api.admin, move |admin| admin.delete_user(&user)).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no user {name:?}")));
    }
    api.audit(&who, "user.delete", &name, "ok").await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- audit log

#[derive(Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Entries to return (1 to 500, default 100).
    pub limit: Option<u32>,
    /// Only entries older than this id (for the next page).
    pub before: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "credentials", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>, description = "This node's, newest first"), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody)))]
pub async fn audit(State(api): State<Arc<ApiState>>, Query(query): Query<AuditQuery>) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(blocking(&api.admin, move |admin| admin.audit(query.limit.unwrap_or(100), query.before)).await?))
}

/// Where each node serves its own audit log to its peers (signed, `/cluster/*`).
pub const PEER_AUDIT_PATH: &str = "/cluster/audit";

/// A peer's request for this node's audit log (mounted behind the peer guard by app.rs).
pub async fn peer_audit(admin: Arc<AdminStore>, query: AuditQuery) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(blocking(&admin, move |admin| admin.audit(query.limit.unwrap_or(100), query.before)).await?))
}
/// How long the federation's audit log waits for one peer.
const PEER_AUDIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Most bytes read of one peer's audit page (500 entries of a few hundred bytes).
const PEER_AUDIT_MAX_BYTES: usize = 1 << 20;

#[derive(Deserialize, IntoParams)]
pub struct FederationAuditQuery {
    /// Entries to return (1 to 500, default 100): the newest of every node together.
    pub limit: Option<u32>,
}

/// An audit entry with the node that recorded it.
#[derive(Serialize, ToSchema)]
pub struct NodeAuditEntry {
    pub node: String,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

#[derive(Serialize, ToSchema)]
pub struct FederationAudit {
    /// Newest first, every node's entries merged by time.
    pub entries: Vec<NodeAuditEntry>,
    /// Members whose log could not be read now (down, or no answer within 3 s).
    pub unreachable: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/cluster/audit", tag = "credentials", params(FederationAuditQuery),
    responses((status = 200, body = FederationAudit, description = "Every node's audit log, newest first"), (status = 401, description = "No credentials, or unknown, revoked or expired ones", body = ErrorBody)))]
pub async fn federation_audit(State(api): State<Arc<ApiState>>, Query(query): Query<FederationAuditQuery>) -> ApiResult<Json<FederationAudit>> {
    let limit = query.limit.unwrap_or(100).clamp(1, crate::auth::admin::AUDIT_PAGE_MAX);
    let own = blocking(&api.admin, move |admin| admin.audit(limit, None)).await?;
    let node_id = &api.config.cluster.node_id;
    let mut entries: Vec<NodeAuditEntry> = own.into_iter().map(|entry| NodeAuditEntry { node: node_id.clone(), entry }).collect();
    let mut unreachable = Vec::new();
    if let (Some(membership), Some(client)) = (&api.membership, &api.peer_client) {
        let view = membership.view();
        let path = format!("{PEER_AUDIT_PATH}?limit={limit}");
        let mut peers = Vec::new();
        for member in view.members().iter().map(|m| &m.node).filter(|n| &n.id != node_id) {
            if view.is_up(&member.id) {
                peers.push((member.id.clone(), member.http));
            } else {
                unreachable.push(member.id.clone());
            }
        }
        let fetches = peers.into_iter().map(|(id, http)| {
            let path = &path;
            async move {
                let answer = tokio::time::timeout(PEER_AUDIT_TIMEOUT, client.get(&id, http, path, PEER_AUDIT_MAX_BYTES)).await;
                let page = match answer {
                    Err(_) => Err(format!("no answer within {PEER_AUDIT_TIMEOUT:?}")),
                    Ok(Err(e)) => Err(crate::cluster::membership::with_causes(&e)),
                    Ok(Ok(body)) => serde_json::from_slice::<Vec<AuditEntry>>(&body).map_err(|e| e.to_string()),
                };
                (id, page)
            }
        });
        for (id, page) in futures_util::future::join_all(fetches).await {
            match page {
                Ok(page) => entries.extend(page.into_iter().map(|entry| NodeAuditEntry { node: id.clone(), entry })),
                Err(reason) => {
                    tracing::warn!(peer = %id, %reason, "the federation's audit log: a peer's log could not be read");
                    unreachable.push(id);
                }
            }
        }
    }
    entries.sort_by(|a, b| b.entry.at.cmp(&a.entry.at).then_with(|| a.node.cmp(&b.node)).then_with(|| b.entry.id.cmp(&a.entry.id)));
    entries.truncate(limit as usize);
    Ok(Json(FederationAudit { entries, unreachable }))
}
