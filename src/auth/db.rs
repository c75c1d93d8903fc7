//! The appliance's state database: one SQLite file (`rackcast.sqlite3` under the data
//! directory) in WAL mode, so the CLI (`rackcast keys`, `rackcast admin`) works while the
//! appliance runs. Owns the schema of every table; [`super::keys`] and [`super::admin`]
//! each open their own connection to it.
//!
//! A file made by an older version is brought up to date when opened: [`SCHEMA`] creates
//! what is missing, then each of [`MIGRATIONS`] past the file's `user_version` runs once
//! (in one write transaction, so two processes opening the file at once migrate it once).
//!
//! The stores' methods are synchronous (the CLI calls them as they are). Async code (API
//! handlers, publish checks, health answers, replication) calls them through
//! [`blocking`], on tokio's blocking pool: a query waiting up to [`BUSY_TIMEOUT`] for
//! another connection's write, a slow disk or an argon2 hash then holds a pool thread,
//! never a runtime worker serving viewers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DATABASE_FILE: &str = "rackcast.sqlite3";
/// Longest a writer waits for another connection's write.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stream_keys (
    id TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    digest BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    digest BLOB PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    digest BLOB NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
-- The tokens each user or token made: a deletion or revocation revokes them (admin.rs).
CREATE INDEX IF NOT EXISTS api_tokens_by_maker ON api_tokens (created_by);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    address TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL
);
";

/// Schema changes since the first version, in order; the file's `user_version` counts those
/// applied. Columns are only ever added, with defaults, so older rows stay valid.
const MIGRATIONS: &[&str] = &[
    // Federation-wide admin identity (`super::replication`): a user's last write (creation,
    // deletion) for last-write-wins, deletions kept as tombstones, logouts kept as closures.
    "ALTER TABLE users ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
     UPDATE users SET updated_at = created_at;
     ALTER TABLE users ADD COLUMN deleted_at INTEGER;
     ALTER TABLE sessions ADD COLUMN closed_at INTEGER;",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error("state store {path}: {source}")]
    Sqlite { path: String, source: rusqlite::Error },
    #[error("state store work did not finish: {0}")]
    Worker(String),
}

/// Runs `work` on `store` on tokio's blocking pool and waits for it (see the module
/// header). Work that panicked, or that the runtime dropped while shutting down, is a
/// [`StoreError::Worker`].
pub async fn blocking<S, T, E>(store: &Arc<S>, work: impl FnOnce(&S) -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    S: Send + Sync + 'static,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || work(&store)).await {
        Ok(result) => result,
        Err(e) => Err(StoreError::Worker(if e.is_panic() { "it panicked".to_owned() } else { "cancelled".to_owned() }).into()),
    }
}

/// An open connection with the schema in place, and the file's path for error messages.
pub struct Database {
    pub path: String,
    pub connection: rusqlite::Connection,
}

impl Database {
    pub fn fail(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.clone(), source }
    }
}

/// Opens (creating the directory, the file and the tables when missing) the database under `dir`.
pub fn open(dir: &Path) -> Result<Database, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir { dir: dir.display().to_string(), source })?;
    let path = dir.join(DATABASE_FILE).display().to_string();
    let fail = |source| StoreError::Sqlite { path: path.clone(), source };
    let mut connection = rusqlite::Connection::open(&path).map_err(fail)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    connection.pragma_update(None, "journal_mode", "WAL").map_err(fail)?;
    connection.pragma_update(None, "foreign_keys", "ON").map_err(fail)?;
    connection.execute_batch(SCHEMA).map_err(fail)?;
    migrate(&mut connection).map_err(fail)?;
    Ok(Database { path, connection })
}

/// Applies the [`MIGRATIONS`] the file has not had yet (taking the write lock only then).
fn migrate(connection: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    let version = |c: &rusqlite::Connection| c.query_row("PRAGMA user_version", [], |r| r.get::<_, usize>(0));
    if version(connection)? >= MIGRATIONS.len() {
        return Ok(());
    }
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Read again under the lock: another process may have migrated meanwhile.
    for migration in MIGRATIONS.iter().skip(version(&tx)?) {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()
}

/// Seconds since the Unix epoch, as stored.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

/// A random secret: `prefix` + `bytes` random bytes in hex.
pub fn random_secret(prefix: &str, bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    format!("{prefix}{}", hex::encode(buf))
}

/// What the store keeps of a secret: its SHA-256.
pub fn digest(secret: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).to_vec()
}
