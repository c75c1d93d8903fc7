//! The admin side's records in the state database ([`super::db`]): users (argon2id
//! password hashes), their sessions (the cookie's secret stored as a digest, with its CSRF
//! token and expiry), API tokens for scripts (digest, scope, revocation) and the audit log
//! of every admin action. Passwords and secrets are never stored or returned in clear,
//! except a new token's or session's secret, once, to its creator.

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
        let inserted = self.run(|c| {
            c.execute("INSERT OR IGNORE INTO users (name, password_hash, created_at) VALUES (?1, ?2, ?3)", params![name, hash, now()])
        })?;
        if inserted == 0 {
            return Err(AdminError::UserExists(name.to_owned()));
        }
        Ok(())
    }

    /// Whether `password` is user `name`'s; an unknown user costs the same work, so the
    /// answer's time does not tell which (the caller must not tell either). Slow by
    /// design: call it off the async runtime, bounded (`auth::login`). `memory` is the
    /// argon2 working area, kept by the caller from check to check ([`HashMemory`]).
    pub fn check_password(&self, name: &str, password: &str, memory: &mut HashMemory) -> Result<PasswordCheck, StoreError> {
        let stored: Option<String> =
            self.run(|c| c.query_row("SELECT password_hash FROM users WHERE name = ?1", params![name], |r| r.get(0)).optional())?;
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
        let exists: bool = self.run(|c| c.query_row("SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)", params![name], |r| r.get(0)))?;
        Ok(if exists { name.to_owned() } else { UNKNOWN_USER.to_owned() })
    }

    pub fn users(&self) -> Result<Vec<UserInfo>, StoreError> {
        self.run(|c| {
            let mut statement = c.prepare("SELECT name, created_at FROM users ORDER BY name")?;
            let rows = statement.query_map([], |r| Ok(UserInfo { name: r.get(0)?, created_at: r.get(1)? }))?;
            rows.collect()
        })
    }

    pub fn any_user(&self) -> Result<bool, StoreError> {
        self.run(|c| c.query_row("SELECT EXISTS (SELECT 1 FROM users)", [], |r| r.get(0)))
    }

    /// Deletes user `name` and ends its sessions; false when there is no such user.
    pub fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        self.run(|c| {
            c.execute("DELETE FROM sessions WHERE user = ?1", params![name])?;
            Ok(c.execute("DELETE FROM users WHERE name = ?1", params![name])? == 1)
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
            c.execute(
                "DELETE FROM sessions WHERE user = ?1 AND digest NOT IN
                     (SELECT digest FROM sessions WHERE user = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2)",
                params![user, SESSIONS_PER_USER],
            )
        })?;
        Ok(NewSession { secret, csrf, expires_at })
    }

    pub fn session(&self, secret: &str) -> Result<SessionLookup, StoreError> {
        let row: Option<(String, String, i64)> = self.run(|c| {
            c.query_row("SELECT user, csrf, expires_at FROM sessions WHERE digest = ?1", params![digest(secret)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })?;
        Ok(match row {
            None => SessionLookup::Unknown,
            Some((_, _, expires_at)) if expires_at <= now() => SessionLookup::Expired,
            Some((user, csrf, expires_at)) => SessionLookup::Valid { user, csrf, expires_at },
        })
    }

    pub fn close_session(&self, secret: &str) -> Result<(), StoreError> {
        self.run(|c| c.execute("DELETE FROM sessions WHERE digest = ?1", params![digest(secret)])).map(drop)
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

    /// Revokes token `id`; false when there is no such token in force.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.run(|c| c.execute("UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![id, now()]))
            .map(|n| n == 1)
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
}
