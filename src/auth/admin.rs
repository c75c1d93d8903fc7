//! The admin side's records in the state database ([`super::db`]): users (argon2id
//! password hashes), their sessions (the cookie's secret stored as a digest, with its CSRF
//! token and expiry), API tokens for scripts (digest, scope, revocation) and the audit log
//! of every admin action. Passwords and secrets are never stored or returned in clear,
//! except a new token's or session's secret, once, to its creator.
//!
//! In a federation, users, API tokens and sessions are one across the nodes
//! ([`super::replication`] pulls a peer's [`AdminRecords`] and [`AdminStore::merge`]s them):
//! - **users**: last write wins per name. Every write (creation, deletion) stamps the row
//!   with `write_stamp`: this node's clock, but always past the row's last stamp, so a
//!   user re-created after a deletion wins over the deletion's tombstone everywhere. Ties
//!   go to the deletion, then to the greater hash. A deleted user stays as a tombstone
//!   (name and stamps, no hash), so a peer that still has the user cannot bring it back.
//! - **API tokens**: union, a revocation wins (as stream keys). A token goes with whoever
//!   made it: deleting a user revokes the tokens that user made, revoking a token revokes
//!   the tokens made with it, and so on down ([`revoke_orphaned_tokens`], after every
//!   deletion, revocation and merge, so the nodes agree whatever order the records came in).
//! - **sessions**: union of those not expired, a logout (closure) wins; the oldest beyond
//!   [`SESSIONS_PER_USER`] are closed, not deleted, so the closure replicates. Expired
//!   ones are neither exported nor imported, and are pruned on every node.
//!
//! The audit log is per node: it is not replicated.

use std::path::Path;
use std::time::Duration;

use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::Output;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use parking_lot::Mutex;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::db::{self, Database, StoreError, digest, now};

/// Marks a rackcast API token (greppable when leaked).
pub const TOKEN_PREFIX: &str = "rat_";
/// Random bytes in session secrets, API tokens and CSRF tokens (256 bits).
const SECRET_BYTES: usize = 32;
/// Shortest password `add_user` accepts.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted (argon2 hashes any length; this bounds the work per login).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Most audit entries one listing returns.
pub const AUDIT_PAGE_MAX: u32 = 500;
/// Audit entries kept; older ones are deleted as new ones arrive.
pub const AUDIT_KEPT: i64 = 100_000;
/// Sessions one user may hold; logging in again ends the oldest beyond it.
pub const SESSIONS_PER_USER: i64 = 20;
/// How the audit log and the log name the user of a login for a name no user has: what
/// was typed there may be a password typed in the wrong field.
pub const UNKNOWN_USER: &str = "unknown user";
/// Most user rows a store holds (deleted users' tombstones included); creating or merging
/// more is refused.
pub const MAX_USERS: i64 = 10_000;
/// Most API tokens a store holds (revoked ones included), and most sessions; merging more
/// is refused.
pub const MAX_TOKENS: i64 = 100_000;
pub const MAX_SESSIONS: i64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a user name is 1 to 64 letters, digits, '.', '_' or '-'")]
    BadUserName,
    #[error("a password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} characters long")]
    BadPassword,
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("hashing the password failed: {0}")]
    Hash(String),
    #[error("the store holds {MAX_USERS} users (deleted ones included) already")]
    Full,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GET only.
    Read,
    /// Everything an admin user may do.
    Admin,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "admin" { Scope::Admin } else { Scope::Read }
    }

    fn is_valid(s: &str) -> bool {
        matches!(s, "read" | "admin")
    }
}

/// What a password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    Valid,
    /// The user exists; the password is not theirs.
    Wrong,
    /// No user has this name.
    UnknownUser,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserInfo {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub created_by: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A session just opened: the cookie's secret and the CSRF token, given to the client once.
#[derive(Debug)]
pub struct NewSession {
    pub secret: String,
    pub csrf: String,
    pub expires_at: i64,
}

/// What a session cookie names.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionLookup {
    Valid { user: String, csrf: String, expires_at: i64 },
    Expired,
    Unknown,
}

/// One admin action, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// Seconds since the Unix epoch.
    pub at: i64,
    /// `user:NAME`, `token:ID`, `loopback` (before an admin exists) or `cli`.
    pub actor: String,
    pub address: Option<String>,
    /// e.g. `key.create`, `session.login`.
    pub action: String,
    /// What it acted on (never a secret).
    pub target: String,
    /// `ok`, or why it was refused.
    pub outcome: String,
}

/// A user as nodes of a federation exchange it: the argon2id hash, never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// PHC string; empty for a deleted user.
    pub password_hash: String,
    pub created_at: i64,
    /// The last write's stamp (`write_stamp`): last write wins.
    pub updated_at: i64,
    /// Set on a deleted user (a tombstone).
    pub deleted_at: Option<i64>,
}

/// An API token as nodes exchange it: its digest, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub scope: String,
    /// SHA-256 of the secret, hex.
    pub digest: String,
    pub created_by: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A console session as nodes exchange it: the cookie's digest, never the cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// SHA-256 of the cookie's secret, hex.
    pub digest: String,
    pub user: String,
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// Set once logged out (or ended by a deletion or the per-user limit).
    pub closed_at: Option<i64>,
}

/// Everything of the admin side that a federation shares (the audit log is per node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecords {
    pub users: Vec<UserRecord>,
    pub tokens: Vec<TokenRecord>,
    pub sessions: Vec<SessionRecord>,
}

/// The stamp of a local write to a row last stamped `last`: now, or one past `last` when
/// this node's clock is behind it, so the write wins over everything this node has seen.
fn write_stamp(last: Option<i64>) -> i64 {
    now().max(last.map_or(i64::MIN, |l| l + 1))
}

/// Whether user record `a` wins over `b` (same name): the later stamp; on a tie the
/// deletion, then the greater hash. A total order, so every node picks the same.
fn user_wins(a: &UserRecord, b: &UserRecord) -> bool {
    (a.updated_at, a.deleted_at.is_some(), &a.password_hash) > (b.updated_at, b.deleted_at.is_some(), &b.password_hash)
}

/// A 32-byte digest from its hex form.
fn digest_from_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok().filter(|d| d.len() == 32)
}

pub struct AdminStore {
    db: Mutex<Database>,
}

/// The argon2 working area of one password check (19 MiB with the default parameters).
/// Reused from check to check: glibc's heap grows by a fresh 19 MiB aligned allocation
/// each time instead of reusing the last one (measured: +19 MiB resident per login), so
/// each hash slot keeps its own (`auth::login`).
pub type HashMemory = Vec<Block>;

/// Salt of the stand-in check made for a login of an unknown user.
const UNKNOWN_USER_SALT: &[u8] = b"rackcast-unknown-user";

/// `memory`'s first `blocks` blocks, growing it if needed.
fn grown(memory: &mut HashMemory, blocks: usize) -> &mut [Block] {
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    &mut memory[..blocks]
}

/// Whether `password` matches the PHC string `phc`, hashed in `memory` (as argon2's own
/// verifier does, with the constant-time comparison of [`Output`], minus its allocation).
fn verify_with(password: &[u8], phc: &str, memory: &mut HashMemory) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else { return false };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(hash.algorithm.as_str()), Params::try_from(&hash)) else { return false };
    let Ok(version) = hash.version.map(Version::try_from).transpose() else { return false };
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    let blocks = grown(memory, params.block_count());
    Argon2::new(algorithm, version.unwrap_or_default(), params).hash_password_into_with_memory(password, salt, out, blocks).is_ok()
        && Output::new(out).is_ok_and(|computed| computed == *expected)
}

fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl AdminStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self { db: Mutex::new(db::open(dir)?) })
    }

    fn run<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let db = self.db.lock();
        f(&db.connection).map_err(|e| db.fail(e))
    }

    // ---- users

    /// Creates user `name`; the password is hashed with argon2id (slow by design: call it
    /// off the async runtime).
    pub fn add_user(&self, name: &str, password: &str) -> Result<(), AdminError> {
        if !valid_user_name(name) {
            return Err(AdminError::BadUserName);
        }
        if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
            return Err(AdminError::BadPassword);
        }
        let hash = Argon2::default().hash_password(password.as_bytes()).map_err(|e| AdminError::Hash(e.to_string()))?.to_string();
        let db = self.db.lock();
        let fail = |e| AdminError::Store(db.fail(e));
        let row: Option<(i64, bool)> = db
            .connection
            .query_row("SELECT updated_at, deleted_at IS NOT NULL FROM users WHERE name = ?1", params![name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(fail)?;
        match row {
            Some((_, false)) => return Err(AdminError::UserExists(name.to_owned())),
            // A deleted user's name: the new user replaces the tombstone, stamped past it.
            Some((last, true)) => {
                db.connection
                    .execute(
                        "UPDATE users SET password_hash = ?2, created_at = ?3, updated_at = ?4, deleted_at = NULL WHERE name = ?1",
                        params![name, hash, now(), write_stamp(Some(last))],
                    )
                    .map_err(fail)?;
            }
            None => {
                let count: i64 = db.connection.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0)).map_err(fail)?;
                if count >= MAX_USERS {
                    return Err(AdminError::Full);
                }
                let stamp = write_stamp(None);
                db.connection
                    .execute(
                        "INSERT INTO users (name, password_hash, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                        params![name, hash, stamp],
                    )
                    .map_err(fail)?;
            }
        }
        Ok(())
    }

    /// Whether `password` is user `name`'s; an unknown user costs the same work, so the
    /// answer's time does not tell which (the caller must not tell either). Slow by
    /// design: call it off the async runtime, bounded (`auth::login`). `memory` is the
    /// argon2 working area, kept by the caller from check to check ([`HashMemory`]).
    pub fn check_password(&self, name: &str, password: &str, memory: &mut HashMemory) -> Result<PasswordCheck, StoreError> {
        let stored: Option<String> =
            self.run(|c| c.query_row("SELECT password_hash FROM users WHERE name = ?1 AND deleted_at IS NULL", params![name], |r| r.get(0)).optional())?;
        Ok(match stored {
            None => {
                // The work of checking a password hashed with the defaults, for nobody.
                if password.len() <= MAX_PASSWORD_BYTES {
                    let mut out = [0u8; 32];
                    let blocks = grown(memory, Params::default().block_count());
                    let _ = Argon2::default().hash_password_into_with_memory(password.as_bytes(), UNKNOWN_USER_SALT, &mut out, blocks);
                }
                PasswordCheck::UnknownUser
            }
            Some(_) if password.len() > MAX_PASSWORD_BYTES => PasswordCheck::Wrong,
            Some(hash) if verify_with(password.as_bytes(), &hash, memory) => PasswordCheck::Valid,
            Some(_) => PasswordCheck::Wrong,
        })
    }

    /// `name` as the audit log may record it for a login: the name when such a user
    /// exists, else [`UNKNOWN_USER`] (what was typed may be a password).
    pub fn login_target(&self, name: &str) -> Result<String, StoreError> {
        if !valid_user_name(name) {
            return Ok(UNKNOWN_USER.to_owned());
        }
        let exists: bool = self.run(|c| c.query_row("SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1 AND deleted_at IS NULL)", params![name], |r| r.get(0)))?;
        Ok(if exists { name.to_owned() } else { UNKNOWN_USER.to_owned() })
    }

    pub fn users(&self) -> Result<Vec<UserInfo>, StoreError> {
        self.run(|c| {
            let mut statement = c.prepare("SELECT name, created_at FROM users WHERE deleted_at IS NULL ORDER BY name")?;
            let rows = statement.query_map([], |r| Ok(UserInfo { name: r.get(0)?, created_at: r.get(1)? }))?;
            rows.collect()
        })
    }

    pub fn any_user(&self) -> Result<bool, StoreError> {
        self.run(|c| c.query_row("SELECT EXISTS (SELECT 1 FROM users WHERE deleted_at IS NULL)", [], |r| r.get(0)))
    }

    /// Deletes user `name` (leaving a tombstone: see the module header), ends its sessions
    /// and revokes the tokens it made; false when there is no such user.
    pub fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        self.run(|c| {
            let last: Option<i64> =
                c.query_row("SELECT updated_at FROM users WHERE name = ?1 AND deleted_at IS NULL", params![name], |r| r.get(0)).optional()?;
            let Some(last) = last else { return Ok(false) };
            let stamp = write_stamp(Some(last));
            c.execute("UPDATE users SET password_hash = '', updated_at = ?2, deleted_at = ?2 WHERE name = ?1", params![name, stamp])?;
            c.execute("UPDATE sessions SET closed_at = ?2 WHERE user = ?1 AND closed_at IS NULL", params![name, now()])?;
            revoke_orphaned_tokens(c)?;
            Ok(true)
        })
    }

    // ---- sessions

    /// Opens a session for `user`, valid for `lifetime`; expired sessions are swept.
    pub fn open_session(&self, user: &str, lifetime: Duration) -> Result<NewSession, StoreError> {
        let secret = db::random_secret("", SECRET_BYTES);
        let csrf = db::random_secret("", SECRET_BYTES);
        let now = now();
        let expires_at = now + lifetime.as_secs() as i64;
        self.run(|c| {
            c.execute("DELETE FROM sessions WHERE expires_at <= ?1", params![now])?;
            c.execute(
                "INSERT INTO sessions (digest, user, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![digest(&secret), user, csrf, now, expires_at],
            )?;
            close_beyond_limit(c, user, now, NEWEST_HERE)
        })?;
        Ok(NewSession { secret, csrf, expires_at })
    }

    /// What the session with this cookie secret is: valid while open, unexpired, and its
    /// user exists and is the one it was opened for (not a later user of the same name).
    pub fn session(&self, secret: &str) -> Result<SessionLookup, StoreError> {
        let row: Option<(String, String, i64)> = self.run(|c| {
            c.query_row(
                "SELECT s.user, s.csrf, s.expires_at FROM sessions s JOIN users u ON u.name = s.user
                 WHERE s.digest = ?1 AND s.closed_at IS NULL AND u.deleted_at IS NULL AND s.created_at >= u.created_at",
                params![digest(secret)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        Ok(match row {
            None => SessionLookup::Unknown,
            Some((_, _, expires_at)) if expires_at <= now() => SessionLookup::Expired,
            Some((user, csrf, expires_at)) => SessionLookup::Valid { user, csrf, expires_at },
        })
    }

    /// Logs the session out (kept, closed, until it expires, so the logout replicates).
    pub fn close_session(&self, secret: &str) -> Result<(), StoreError> {
        self.run(|c| c.execute("UPDATE sessions SET closed_at = ?2 WHERE digest = ?1 AND closed_at IS NULL", params![digest(secret), now()]))
            .map(drop)
    }

    /// For tests of expiry: moves every session of `user` to expire at `at`.
    #[cfg(test)]
    pub fn expire_sessions_at(&self, user: &str, at: i64) -> Result<(), StoreError> {
        self.run(|c| c.execute("UPDATE sessions SET expires_at = ?2 WHERE user = ?1", params![user, at])).map(drop)
    }

    // ---- API tokens

    /// A new token; returns its record and the secret (shown once).
    pub fn create_token(&self, name: &str, scope: Scope, created_by: &str) -> Result<(TokenInfo, String), StoreError> {
        let secret = db::random_secret(TOKEN_PREFIX, SECRET_BYTES);
        let info = TokenInfo {
            id: db::random_secret("", 6),
            name: name.to_owned(),
            scope,
            created_by: created_by.to_owned(),
            created_at: now(),
            revoked_at: None,
        };
        self.run(|c| {
            c.execute(
                "INSERT INTO api_tokens (id, name, scope, digest, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![info.id, info.name, scope.as_str(), digest(&secret), info.created_by, info.created_at],
            )
        })?;
        Ok((info, secret))
    }

    pub fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        self.run(|c| {
            let mut statement =
                c.prepare("SELECT id, name, scope, created_by, created_at, revoked_at FROM api_tokens ORDER BY created_at, id")?;
            let rows = statement.query_map([], token_row)?;
            rows.collect()
        })
    }

    /// The unrevoked token with this secret.
    pub fn token(&self, secret: &str) -> Result<Option<TokenInfo>, StoreError> {
        self.run(|c| {
            c.query_row(
                "SELECT id, name, scope, created_by, created_at, revoked_at FROM api_tokens WHERE digest = ?1 AND revoked_at IS NULL",
                params![digest(secret)],
                token_row,
            )
            .optional()
        })
    }

    /// Revokes token `id` and the tokens made with it; false when there is no such token in
    /// force.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.run(|c| {
            let revoked = c.execute("UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![id, now()])?;
            revoke_orphaned_tokens(c)?;
            Ok(revoked == 1)
        })
    }

    // ---- federation

    /// Every user (tombstones included), API token and unexpired session, as federation
    /// peers exchange them: hashes and digests, never a secret.
    pub fn export(&self) -> Result<AdminRecords, StoreError> {
        self.run(|c| {
            let users = c
                .prepare("SELECT name, password_hash, created_at, updated_at, deleted_at FROM users ORDER BY name")?
                .query_map([], |r| {
                    Ok(UserRecord { name: r.get(0)?, password_hash: r.get(1)?, created_at: r.get(2)?, updated_at: r.get(3)?, deleted_at: r.get(4)? })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let tokens = c
                .prepare("SELECT id, name, scope, digest, created_by, created_at, revoked_at FROM api_tokens ORDER BY id")?
                .query_map([], |r| {
                    Ok(TokenRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        scope: r.get(2)?,
                        digest: hex::encode(r.get::<_, Vec<u8>>(3)?),
                        created_by: r.get(4)?,
                        created_at: r.get(5)?,
                        revoked_at: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let sessions = c
                .prepare("SELECT digest, user, csrf, created_at, expires_at, closed_at FROM sessions WHERE expires_at > ?1 ORDER BY digest")?
                .query_map(params![now()], |r| {
                    Ok(SessionRecord {
                        digest: hex::encode(r.get::<_, Vec<u8>>(0)?),
                        user: r.get(1)?,
                        csrf: r.get(2)?,
                        created_at: r.get(3)?,
                        expires_at: r.get(4)?,
                        closed_at: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(AdminRecords { users, tokens, sessions })
        })
    }

    /// A digest of what [`Self::export`] returns (revocations and closures as flags): two
    /// stores with the same fingerprint share the same users, tokens and sessions.
    pub fn fingerprint(&self) -> Result<String, StoreError> {
        let records = self.export()?;
        let users = records.users.iter().map(|u| {
            format!("u\t{}\t{}\t{}\t{}\t{}", u.name, u.password_hash, u.created_at, u.updated_at, u.deleted_at.is_some())
        });
        let tokens = records.tokens.iter().map(|t| {
            format!("t\t{}\t{}\t{}\t{}\t{}\t{}\t{}", t.id, t.name, t.scope, t.digest, t.created_by, t.created_at, t.revoked_at.is_some())
        });
        let sessions = records.sessions.iter().map(|s| {
            format!("s\t{}\t{}\t{}\t{}\t{}\t{}", s.digest, s.user, s.csrf, s.created_at, s.expires_at, s.closed_at.is_some())
        });
        Ok(super::replication::fingerprint(users.chain(tokens).chain(sessions)))
    }

    /// Merges a peer's records by the rules of the module header, users first (sessions
    /// name them). Malformed records are skipped, and so are new ones beyond
    /// [`MAX_USERS`], [`MAX_TOKENS`] or [`MAX_SESSIONS`]. Returns how many rows changed.
    pub fn merge(&self, records: &AdminRecords) -> Result<usize, StoreError> {
        let mut db = self.db.lock();
        let path = db.path.clone();
        let fail = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = db.connection.transaction().map_err(fail)?;
        let changed = merge_users(&tx, &records.users).map_err(fail)?
            + merge_tokens(&tx, &records.tokens).map_err(fail)?
            + merge_sessions(&tx, &records.sessions).map_err(fail)?
            + revoke_orphaned_tokens(&tx).map_err(fail)?;
        tx.commit().map_err(fail)?;
        Ok(changed)
    }

    // ---- audit log

    /// Appends an entry; beyond [`AUDIT_KEPT`] entries the oldest go.
    pub fn record(&self, actor: &str, address: Option<&str>, action: &str, target: &str, outcome: &str) -> Result<(), StoreError> {
        self.run(|c| {
            c.execute(
                "INSERT INTO audit_log (at, actor, address, action, target, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![now(), actor, address, action, target, outcome],
            )?;
            let id = c.last_insert_rowid();
            if id % 1000 == 0 {
                c.execute("DELETE FROM audit_log WHERE id <= ?1", params![id - AUDIT_KEPT])?;
            }
            Ok(())
        })
    }

    /// The newest `limit` entries (at most [`AUDIT_PAGE_MAX`]) older than entry `before`, newest first.
    pub fn audit(&self, limit: u32, before: Option<i64>) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = limit.clamp(1, AUDIT_PAGE_MAX);
        self.run(|c| {
            let mut statement = c.prepare(
                "SELECT id, at, actor, address, action, target, outcome FROM audit_log WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![before.unwrap_or(i64::MAX), limit], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    address: r.get(3)?,
                    action: r.get(4)?,
                    target: r.get(5)?,
                    outcome: r.get(6)?,
                })
            })?;
            rows.collect()
        })
    }
}

fn count(c: &rusqlite::Connection, table: &str) -> rusqlite::Result<i64> {
    c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
}

/// Users: last write wins (`user_wins`); a winning tombstone closes the user's sessions.
fn merge_users(c: &rusqlite::Connection, users: &[UserRecord]) -> rusqlite::Result<usize> {
    let mut rows = count(c, "users")?;
    let mut changed = 0;
    for theirs in users {
        let well_formed = match theirs.deleted_at {
            Some(_) => theirs.password_hash.is_empty(),
            None => PasswordHash::new(&theirs.password_hash).is_ok(),
        };
        if !valid_user_name(&theirs.name) || !well_formed {
            continue;
        }
        let ours: Option<UserRecord> = c
            .query_row("SELECT name, password_hash, created_at, updated_at, deleted_at FROM users WHERE name = ?1", params![theirs.name], |r| {
                Ok(UserRecord { name: r.get(0)?, password_hash: r.get(1)?, created_at: r.get(2)?, updated_at: r.get(3)?, deleted_at: r.get(4)? })
            })
            .optional()?;
        match &ours {
            Some(ours) if !user_wins(theirs, ours) => continue,
            None if rows >= MAX_USERS => continue,
            None => rows += 1,
            Some(_) => {}
        }
        changed += c.execute(
            "INSERT INTO users (name, password_hash, created_at, updated_at, deleted_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (name) DO UPDATE SET password_hash = ?2, created_at = ?3, updated_at = ?4, deleted_at = ?5",
            params![theirs.name, theirs.password_hash, theirs.created_at, theirs.updated_at, theirs.deleted_at],
        )?;
        if let Some(deleted_at) = theirs.deleted_at {
            changed += c.execute("UPDATE sessions SET closed_at = ?2 WHERE user = ?1 AND closed_at IS NULL", params![theirs.name, deleted_at])?;
        }
    }
    Ok(changed)
}

/// API tokens: union, a revocation wins.
fn merge_tokens(c: &rusqlite::Connection, tokens: &[TokenRecord]) -> rusqlite::Result<usize> {
    let mut rows = count(c, "api_tokens")?;
    let mut changed = 0;
    for token in tokens {
        let Some(digest) = digest_from_hex(&token.digest) else { continue };
        if !Scope::is_valid(&token.scope) {
            continue;
        }
        if rows < MAX_TOKENS {
            let added = c.execute(
                "INSERT OR IGNORE INTO api_tokens (id, name, scope, digest, created_by, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![token.id, token.name, token.scope, digest, token.created_by, token.created_at, token.revoked_at],
            )?;
            rows += added as i64;
            changed += added;
        }
        if let Some(revoked_at) = token.revoked_at {
            changed += c.execute("UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![token.id, revoked_at])?;
        }
    }
    Ok(changed)
}

/// Revokes every token in force whose maker is gone: a deleted user (a token made before
/// the deletion) or a revoked token, down the chain of tokens made with tokens; each is
/// stamped with its maker's earliest deletion or revocation time, so every node writes the
/// same. The makers that are gone are found through the `created_by` index and joined
/// once, grouped: a correlated `MIN` over them per token was quadratic (minutes on a store
/// at `MAX_TOKENS`, blocking the admin store's connection).
fn revoke_orphaned_tokens(c: &rusqlite::Connection) -> rusqlite::Result<usize> {
    c.execute(
        "WITH RECURSIVE gone(actor, at) AS (
             SELECT 'user:' || name, deleted_at FROM users WHERE deleted_at IS NOT NULL
             UNION
             SELECT 'token:' || id, revoked_at FROM api_tokens WHERE revoked_at IS NOT NULL
             UNION
             SELECT 'token:' || t.id, gone.at FROM gone JOIN api_tokens t ON t.created_by = gone.actor AND t.created_at <= gone.at
         ),
         first_gone(actor, at) AS (SELECT actor, MIN(at) FROM gone GROUP BY actor)
         UPDATE api_tokens SET revoked_at = first_gone.at FROM first_gone
         WHERE api_tokens.created_by = first_gone.actor AND api_tokens.revoked_at IS NULL AND api_tokens.created_at <= first_gone.at",
        [],
    )
}

/// Sessions: union of the unexpired ones of known users, a closure wins, at most
/// [`SESSIONS_PER_USER`] open per user; expired ones are pruned.
fn merge_sessions(c: &rusqlite::Connection, sessions: &[SessionRecord]) -> rusqlite::Result<usize> {
    let now = now();
    c.execute("DELETE FROM sessions WHERE expires_at <= ?1", params![now])?;
    let mut rows = count(c, "sessions")?;
    let mut changed = 0;
    let mut added_for = std::collections::BTreeSet::new();
    for session in sessions {
        let Some(digest) = digest_from_hex(&session.digest) else { continue };
        if session.expires_at <= now {
            continue;
        }
        if rows < MAX_SESSIONS {
            // Only for a user this node has (tombstones included: the row closes).
            let added = c.execute(
                "INSERT OR IGNORE INTO sessions (digest, user, csrf, created_at, expires_at, closed_at)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM users WHERE name = ?2)",
                params![digest, session.user, session.csrf, session.created_at, session.expires_at, session.closed_at],
            )?;
            rows += added as i64;
            changed += added;
            if added > 0 {
                added_for.insert(session.user.as_str());
            }
        }
        if let Some(closed_at) = session.closed_at {
            changed += c.execute("UPDATE sessions SET closed_at = ?2 WHERE digest = ?1 AND closed_at IS NULL", params![digest, closed_at])?;
        }
    }
    for user in added_for {
        changed += close_beyond_limit(c, user, now, NEWEST_ANYWHERE)?;
        // A session of a user deleted here closes (its peer had not seen the deletion).
        changed += c.execute(
            "UPDATE sessions SET closed_at = (SELECT deleted_at FROM users WHERE name = ?1)
             WHERE user = ?1 AND closed_at IS NULL AND EXISTS (SELECT 1 FROM users WHERE name = ?1 AND deleted_at IS NOT NULL)",
            params![user],
        )?;
    }
    Ok(changed)
}

/// Newest first, as this node made them (a login closes the oldest here).
const NEWEST_HERE: &str = "created_at DESC, rowid DESC";
/// Newest first in an order every node agrees on (a merge closes the same ones everywhere).
const NEWEST_ANYWHERE: &str = "created_at DESC, digest DESC";

/// Closes `user`'s open sessions beyond the newest [`SESSIONS_PER_USER`] in `order`.
fn close_beyond_limit(c: &rusqlite::Connection, user: &str, now: i64, order: &str) -> rusqlite::Result<usize> {
    c.execute(
        &format!(
            "UPDATE sessions SET closed_at = ?3 WHERE user = ?1 AND closed_at IS NULL AND digest NOT IN
                 (SELECT digest FROM sessions WHERE user = ?1 AND closed_at IS NULL ORDER BY {order} LIMIT ?2)"
        ),
        params![user, SESSIONS_PER_USER, now],
    )
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: r.get(0)?,
        name: r.get(1)?,
        scope: Scope::parse(&r.get::<_, String>(2)?),
        created_by: r.get(3)?,
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_sessions_tokens_and_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = AdminStore::open(dir.path()).unwrap();
        assert!(!store.any_user().unwrap());
        assert!(matches!(store.add_user("alice", "short"), Err(AdminError::BadPassword)));
        assert!(matches!(store.add_user("al ice", "long enough pw"), Err(AdminError::BadUserName)));
        store.add_user("alice", "correct horse battery").unwrap();
        assert!(matches!(store.add_user("alice", "another password"), Err(AdminError::UserExists(_))));
        assert!(store.any_user().unwrap());
        let memory = &mut HashMemory::new();
        assert_eq!(store.check_password("alice", "correct horse battery", memory).unwrap(), PasswordCheck::Valid);
        assert_eq!(memory.len(), Params::default().block_count(), "the working area is the caller's, for the next check");
        assert_eq!(store.check_password("alice", "wrong horse battery", memory).unwrap(), PasswordCheck::Wrong);
        assert_eq!(store.check_password("alice", "correct horse batter", memory).unwrap(), PasswordCheck::Wrong);
        assert_eq!(store.check_password("bob", "correct horse battery", memory).unwrap(), PasswordCheck::UnknownUser);
        assert_eq!(store.check_password("alice", &"x".repeat(MAX_PASSWORD_BYTES + 1), memory).unwrap(), PasswordCheck::Wrong);
        // Hashes made elsewhere with other parameters verify too (the area grows to fit).
        let other = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(32 * 1024, 2, 1, None).unwrap())
            .hash_password(b"from another tool")
            .unwrap()
            .to_string();
        store.run(|c| c.execute("UPDATE users SET password_hash = ?1 WHERE name = 'alice'", params![other])).unwrap();
        assert_eq!(store.check_password("alice", "from another tool", memory).unwrap(), PasswordCheck::Valid);
        assert_eq!(memory.len(), 32 * 1024);
        assert_eq!(store.check_password("alice", "correct horse battery", memory).unwrap(), PasswordCheck::Wrong);
        assert_eq!(store.login_target("alice").unwrap(), "alice");
        assert_eq!(store.login_target("correct horse battery").unwrap(), UNKNOWN_USER, "a password typed as the name");
        assert_eq!(store.login_target("bob").unwrap(), UNKNOWN_USER);

        let session = store.open_session("alice", Duration::from_secs(60)).unwrap();
        assert!(matches!(store.session(&session.secret).unwrap(), SessionLookup::Valid { ref user, ref csrf, .. } if user == "alice" && *csrf == session.csrf));
        assert_eq!(store.session("nope").unwrap(), SessionLookup::Unknown);
        store.expire_sessions_at("alice", now() - 1).unwrap();
        assert_eq!(store.session(&session.secret).unwrap(), SessionLookup::Expired);

        // Logging in again and again keeps only the newest sessions.
        let many: Vec<NewSession> = (0..SESSIONS_PER_USER + 2).map(|_| store.open_session("alice", Duration::from_secs(60)).unwrap()).collect();
        assert_eq!(store.session(&many[0].secret).unwrap(), SessionLookup::Unknown, "the oldest ended");
        assert!(matches!(store.session(&many.last().unwrap().secret).unwrap(), SessionLookup::Valid { .. }));

        let (token, secret) = store.create_token("ci", Scope::Read, "user:alice").unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        assert_eq!(store.token(&secret).unwrap().unwrap().scope, Scope::Read);
        assert!(store.revoke_token(&token.id).unwrap());
        assert!(!store.revoke_token(&token.id).unwrap());
        assert_eq!(store.token(&secret).unwrap(), None);

        for i in 0..3 {
            store.record("user:alice", Some("127.0.0.1"), "key.create", &format!("cam{i}"), "ok").unwrap();
        }
        let page = store.audit(2, None).unwrap();
        assert_eq!(page.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(), ["cam2", "cam1"]);
        assert_eq!(store.audit(10, Some(page[1].id)).unwrap()[0].target, "cam0");

        assert!(store.delete_user("alice").unwrap());
        assert!(!store.any_user().unwrap());

        // Neither the password nor a secret is on disk.
        let mut bytes = std::fs::read(dir.path().join(db::DATABASE_FILE)).unwrap();
        bytes.extend(std::fs::read(dir.path().join(format!("{}-wal", db::DATABASE_FILE))).unwrap_or_default());
        for needle in ["correct horse battery", secret.as_str(), session.secret.as_str()] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} is stored");
        }
    }

    fn pair() -> (tempfile::TempDir, AdminStore, tempfile::TempDir, AdminStore) {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (AdminStore::open(a_dir.path()).unwrap(), AdminStore::open(b_dir.path()).unwrap());
        (a_dir, a, b_dir, b)
    }

    /// Merges each side's records into the other (as two pulls do).
    fn exchange(a: &AdminStore, b: &AdminStore) -> usize {
        b.merge(&a.export().unwrap()).unwrap() + a.merge(&b.export().unwrap()).unwrap()
    }

    fn check(store: &AdminStore, name: &str, password: &str) -> PasswordCheck {
        store.check_password(name, password, &mut HashMemory::new()).unwrap()
    }

    #[test]
    fn a_deleted_user_stays_deleted_and_a_re_created_one_wins_over_the_tombstone() {
        let (_a_dir, a, _b_dir, b) = pair();
        a.add_user("alice", "first password").unwrap();
        assert_ne!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
        assert_eq!(exchange(&a, &b), 1);
        assert_eq!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
        assert_eq!(check(&b, "alice", "first password"), PasswordCheck::Valid, "a user made on a logs in on b");
        // A third node that saw alice and then nothing more.
        let c_dir = tempfile::tempdir().unwrap();
        let c = AdminStore::open(c_dir.path()).unwrap();
        c.merge(&a.export().unwrap()).unwrap();

        assert!(b.delete_user("alice").unwrap());
        assert_eq!(a.merge(&b.export().unwrap()).unwrap(), 1);
        assert_eq!(check(&a, "alice", "first password"), PasswordCheck::UnknownUser);
        assert!(!a.any_user().unwrap() && a.users().unwrap().is_empty());
        assert_eq!(a.merge(&c.export().unwrap()).unwrap(), 0, "a node that still has alice does not bring her back");
        assert_eq!(c.merge(&a.export().unwrap()).unwrap(), 1, "it learns of the deletion instead");
        assert_eq!(check(&c, "alice", "first password"), PasswordCheck::UnknownUser);
        let tombstone = &a.export().unwrap().users[0];
        assert!(tombstone.deleted_at.is_some() && tombstone.password_hash.is_empty(), "no hash kept for a deleted user");

        // Re-created (in the same second, even): the new user is stamped past the tombstone.
        a.add_user("alice", "second password").unwrap();
        assert_eq!(exchange(&a, &b) + exchange(&a, &c), 2);
        for store in [&a, &b, &c] {
            assert_eq!(check(store, "alice", "second password"), PasswordCheck::Valid);
            assert_eq!(check(store, "alice", "first password"), PasswordCheck::Wrong);
            assert_eq!(store.fingerprint().unwrap(), a.fingerprint().unwrap());
        }
        assert_eq!(exchange(&a, &b), 0, "merging again changes nothing");
    }

    #[test]
    fn concurrent_user_writes_resolve_the_same_way_on_every_node() {
        let user = |stamp, deleted: bool, hash: &str| UserRecord {
            name: "alice".into(),
            password_hash: hash.into(),
            created_at: 1,
            updated_at: stamp,
            deleted_at: deleted.then_some(stamp),
        };
        let (live, gone) = (user(10, false, "$argon2id$x"), user(10, true, ""));
        assert!(user_wins(&gone, &live) && !user_wins(&live, &gone), "a tie goes to the deletion");
        assert!(user_wins(&user(11, false, "$a"), &gone), "the later write wins");
        assert!(user_wins(&user(10, false, "$b"), &user(10, false, "$a")) && !user_wins(&user(10, false, "$a"), &user(10, false, "$b")));
        assert!(!user_wins(&live, &live), "a record does not replace itself");
        // Clocks behind: a local write is still stamped past what the node has seen.
        assert_eq!(write_stamp(Some(now() + 100)), now() + 101);
        assert!(write_stamp(Some(5)) >= now());
    }

    #[test]
    fn tokens_replicate_and_a_revocation_wins() {
        let (_a_dir, a, _b_dir, b) = pair();
        let (token, secret) = a.create_token("ci", Scope::Admin, "user:alice").unwrap();
        assert_eq!(exchange(&a, &b), 1);
        assert_eq!(b.token(&secret).unwrap().unwrap().id, token.id, "a token made on a is accepted on b");
        assert!(b.revoke_token(&token.id).unwrap());
        assert_eq!(a.merge(&b.export().unwrap()).unwrap(), 1);
        assert_eq!(a.token(&secret).unwrap(), None);
        // A stale copy of the token in force does not undo the revocation.
        let mut stale = a.export().unwrap();
        stale.tokens[0].revoked_at = None;
        assert_eq!(a.merge(&stale).unwrap(), 0);
        assert_eq!(a.token(&secret).unwrap(), None);
        assert_eq!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
        // Malformed records are skipped.
        let junk = TokenRecord { id: "x".into(), name: "x".into(), scope: "root".into(), digest: "zz".into(), created_by: "x".into(), created_at: 0, revoked_at: None };
        assert_eq!(a.merge(&AdminRecords { tokens: vec![junk], ..AdminRecords::default() }).unwrap(), 0);
    }

    #[test]
    fn a_token_goes_with_the_user_or_token_that_made_it_on_every_node() {
        let (_a_dir, a, _b_dir, b) = pair();
        a.add_user("alice", "correct horse battery").unwrap();
        a.add_user("bob", "correct horse battery").unwrap();
        let (alices, alices_secret) = a.create_token("alice's", Scope::Admin, "user:alice").unwrap();
        let (_, made_with_it_secret) = a.create_token("made with alice's", Scope::Read, &format!("token:{}", alices.id)).unwrap();
        let (_, bobs_secret) = a.create_token("bob's", Scope::Admin, "user:bob").unwrap();
        let (_, loopbacks_secret) = a.create_token("first", Scope::Admin, "loopback").unwrap();
        exchange(&a, &b);
        // Deleted on b: alice's token goes, and the one made with it.
        assert!(b.delete_user("alice").unwrap());
        for secret in [&alices_secret, &made_with_it_secret] {
            assert_eq!(b.token(secret).unwrap(), None);
        }
        // a learns of the deletion by merging: the same tokens go there, stamped alike.
        a.merge(&b.export().unwrap()).unwrap();
        for secret in [&alices_secret, &made_with_it_secret] {
            assert_eq!(a.token(secret).unwrap(), None);
        }
        for secret in [&bobs_secret, &loopbacks_secret] {
            assert!(a.token(secret).unwrap().is_some() && b.token(secret).unwrap().is_some(), "other makers' tokens stay");
        }
        assert_eq!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
        // A token made with a revoked token goes with it.
        let (bobs_child, bobs_child_secret) = a.create_token("made with bob's", Scope::Read, "user:bob").unwrap();
        let (grandchild, grandchild_secret) = a.create_token("made with that", Scope::Read, &format!("token:{}", bobs_child.id)).unwrap();
        assert!(a.revoke_token(&bobs_child.id).unwrap());
        assert_eq!(a.token(&grandchild_secret).unwrap(), None, "{grandchild:?}");
        assert_eq!(a.token(&bobs_child_secret).unwrap(), None);
        assert!(a.token(&bobs_secret).unwrap().is_some());
        // alice re-created: a new user, whose new tokens are in force; the old ones stay revoked.
        a.add_user("alice", "correct horse battery").unwrap();
        let (_, new_secret) = a.create_token("alice's new", Scope::Read, "user:alice").unwrap();
        a.merge(&b.export().unwrap()).unwrap();
        assert!(a.token(&new_secret).unwrap().is_some());
        assert_eq!(a.token(&alices_secret).unwrap(), None);
    }

    #[test]
    fn sessions_work_on_every_node_until_closed_or_expired() {
        let (_a_dir, a, _b_dir, b) = pair();
        a.add_user("alice", "correct horse battery").unwrap();
        let session = a.open_session("alice", Duration::from_secs(600)).unwrap();
        assert_eq!(exchange(&a, &b), 2, "the user and the session");
        assert_eq!(
            b.session(&session.secret).unwrap(),
            SessionLookup::Valid { user: "alice".into(), csrf: session.csrf.clone(), expires_at: session.expires_at },
            "a session opened on a is valid on b, with its CSRF token"
        );
        assert!(!serde_json::to_string(&a.export().unwrap()).unwrap().contains(&session.secret), "records carry digests only");

        // A logout on b ends the session on a; an open copy does not reopen it.
        let stale = a.export().unwrap();
        b.close_session(&session.secret).unwrap();
        assert_eq!(a.merge(&b.export().unwrap()).unwrap(), 1);
        assert_eq!(a.session(&session.secret).unwrap(), SessionLookup::Unknown);
        assert_eq!(a.merge(&stale).unwrap(), 0);
        assert_eq!(b.merge(&stale).unwrap(), 0);
        assert_eq!(b.session(&session.secret).unwrap(), SessionLookup::Unknown);
        assert_eq!(a.fingerprint().unwrap(), b.fingerprint().unwrap());

        // Expired sessions are neither exported nor imported.
        let other = a.open_session("alice", Duration::from_secs(600)).unwrap();
        let mut expired = a.export().unwrap();
        expired.sessions.retain(|s| s.closed_at.is_none());
        expired.sessions[0].expires_at = now() - 1;
        assert_eq!(b.merge(&expired).unwrap(), 0);
        a.expire_sessions_at("alice", now() - 1).unwrap();
        assert!(a.export().unwrap().sessions.is_empty());
        assert_eq!(a.session(&other.secret).unwrap(), SessionLookup::Expired);

        // A session of a user unknown here is skipped; of a user deleted there, closed.
        let fresh = a.open_session("alice", Duration::from_secs(600)).unwrap();
        let c_dir = tempfile::tempdir().unwrap();
        let c = AdminStore::open(c_dir.path()).unwrap();
        let mut orphan = a.export().unwrap();
        orphan.users.clear();
        assert_eq!(c.merge(&orphan).unwrap(), 0);
        let before_deletion = a.export().unwrap();
        assert_eq!(b.merge(&before_deletion).unwrap(), 1);
        assert!(b.delete_user("alice").unwrap());
        assert!(a.merge(&b.export().unwrap()).unwrap() >= 2, "the tombstone, and the session it closes");
        assert_eq!(a.session(&fresh.secret).unwrap(), SessionLookup::Unknown);
        assert_eq!(a.merge(&before_deletion).unwrap(), 0);
        assert_eq!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
    }

    #[test]
    fn the_per_user_session_limit_closes_the_same_sessions_on_every_node() {
        let (_a_dir, a, _b_dir, b) = pair();
        a.add_user("alice", "correct horse battery").unwrap();
        exchange(&a, &b);
        let on_a: Vec<NewSession> = (0..SESSIONS_PER_USER).map(|_| a.open_session("alice", Duration::from_secs(600)).unwrap()).collect();
        let on_b = b.open_session("alice", Duration::from_secs(600)).unwrap();
        exchange(&a, &b);
        exchange(&a, &b);
        assert_eq!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
        let open = |s: &AdminStore| s.export().unwrap().sessions.iter().filter(|s| s.closed_at.is_none()).count() as i64;
        assert_eq!((open(&a), open(&b)), (SESSIONS_PER_USER, SESSIONS_PER_USER));
        let valid = on_a.iter().chain([&on_b]).filter(|s| matches!(a.session(&s.secret).unwrap(), SessionLookup::Valid { .. })).count();
        assert_eq!(valid as i64, SESSIONS_PER_USER);
    }

    /// The tables as the first version made them, with a user and a session in them.
    const FIRST_SCHEMA: &str = "
        CREATE TABLE users (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created_at INTEGER NOT NULL);
        CREATE TABLE sessions (digest BLOB PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            csrf TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);";

    #[test]
    fn a_database_of_the_first_version_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let hash = Argon2::default().hash_password(b"correct horse battery").unwrap().to_string();
        {
            let old = rusqlite::Connection::open(dir.path().join(db::DATABASE_FILE)).unwrap();
            old.execute_batch(FIRST_SCHEMA).unwrap();
            old.execute("INSERT INTO users VALUES ('alice', ?1, 1000)", params![hash]).unwrap();
            old.execute("INSERT INTO sessions VALUES (?1, 'alice', 'csrf', 1000, ?2)", params![digest("cookie"), now() + 600]).unwrap();
        }
        let store = AdminStore::open(dir.path()).unwrap();
        assert_eq!(check(&store, "alice", "correct horse battery"), PasswordCheck::Valid);
        assert!(matches!(store.session("cookie").unwrap(), SessionLookup::Valid { .. }), "sessions survive");
        assert_eq!(store.export().unwrap().users[0].updated_at, 1000, "a user's first stamp is its creation");
        // Opening again (another process: the CLI) migrates nothing twice.
        let again = AdminStore::open(dir.path()).unwrap();
        assert!(again.delete_user("alice").unwrap());
        assert_eq!(store.session("cookie").unwrap(), SessionLookup::Unknown);
        let version: i64 = again.run(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0))).unwrap();
        assert_eq!(version, 1);
    }
}
