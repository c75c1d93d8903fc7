//! The stream key store: one row per key in the state database ([`super::db`]). A key is a
//! random secret shown once, when it is created; the store keeps only its SHA-256 and the
//! public stream name it publishes, so a key cannot be read back from the store, and a
//! lookup by digest does not time the secret.

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::db::{self, Database, digest, now};
use crate::media::StreamId;

pub use super::db::{DATABASE_FILE, StoreError as KeyStoreError};
/// Random bytes in a key (160 bits), written as 40 hex digits behind [`KEY_PREFIX`].
const KEY_BYTES: usize = 20;
/// Marks a rackcast stream key, so a leaked one is recognisable (and greppable).
pub const KEY_PREFIX: &str = "rk_";

/// What is known of a key, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub stream: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub revoked_at: Option<u64>,
}

/// A key just created: the secret, shown once.
#[derive(Debug)]
pub struct NewKey {
    pub id: String,
    pub secret: String,
}

pub struct KeyStore {
    db: Mutex<Database>,
}

impl KeyStore {
    /// Opens (creating it when missing) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, KeyStoreError> {
        Ok(Self { db: Mutex::new(db::open(dir)?) })
    }

    /// A new key for `stream`.
    pub fn create(&self, stream: &StreamId) -> Result<NewKey, KeyStoreError> {
        let secret = db::random_secret(KEY_PREFIX, KEY_BYTES);
        let id = db::random_secret("", 6);
        let db = self.db.lock();
        db.connection
            .execute(
                "INSERT INTO stream_keys (id, stream, digest, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, stream.as_str(), digest(&secret), now()],
            )
            .map_err(|e| db.fail(e))?;
        Ok(NewKey { id, secret })
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Result<Vec<KeyInfo>, KeyStoreError> {
        let db = self.db.lock();
        let mut statement = db
            .connection
            .prepare("SELECT id, stream, created_at, revoked_at FROM stream_keys ORDER BY created_at, id")
            .map_err(|e| db.fail(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(KeyInfo {
                    id: row.get(0)?,
                    stream: row.get(1)?,
                    created_at: row.get::<_, i64>(2)? as u64,
                    revoked_at: row.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                })
            })
            .map_err(|e| db.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| db.fail(e))
    }

    /// Revokes key `id`; false when there is no such key or it was revoked already.
    pub fn revoke(&self, id: &str) -> Result<bool, KeyStoreError> {
        let db = self.db.lock();
        let changed = db
            .connection
            .execute("UPDATE stream_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![id, now()])
            .map_err(|e| db.fail(e))?;
        Ok(changed == 1)
    }

    /// The stream an unrevoked key publishes.
    pub fn lookup(&self, secret: &str) -> Result<Option<String>, KeyStoreError> {
        let db = self.db.lock();
        db.connection
            .query_row("SELECT stream FROM stream_keys WHERE digest = ?1 AND revoked_at IS NULL", params![digest(secret)], |row| row.get(0))
            .optional()
            .map_err(|e| db.fail(e))
    }

    /// True when any key is in force: then every publish needs one.
    pub fn any_active(&self) -> Result<bool, KeyStoreError> {
        let db = self.db.lock();
        db.connection
            .query_row("SELECT EXISTS (SELECT 1 FROM stream_keys WHERE revoked_at IS NULL)", [], |row| row.get(0))
            .map_err(|e| db.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_hashed_looked_up_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        assert!(!store.any_active().unwrap());
        let cam = StreamId::parse("cam").unwrap();
        let key = store.create(&cam).unwrap();
        assert!(key.secret.starts_with(KEY_PREFIX) && key.secret.len() == KEY_PREFIX.len() + 2 * KEY_BYTES);
        assert_eq!(store.lookup(&key.secret).unwrap().as_deref(), Some("cam"));
        assert_eq!(store.lookup("rk_wrong").unwrap(), None);
        assert!(store.any_active().unwrap());

        // A second handle (another process: `rackcast keys`) sees and changes the same keys.
        let other = KeyStore::open(dir.path()).unwrap();
        assert_eq!(other.list().unwrap()[0].id, key.id);
        assert!(other.revoke(&key.id).unwrap());
        assert!(!other.revoke(&key.id).unwrap(), "revoked once");
        assert_eq!(store.lookup(&key.secret).unwrap(), None);
        assert!(!store.any_active().unwrap());
        assert!(store.list().unwrap()[0].revoked_at.is_some());

        // Only the digest is on disk.
        let bytes = std::fs::read(dir.path().join(DATABASE_FILE)).unwrap();
        let wal = std::fs::read(dir.path().join(format!("{DATABASE_FILE}-wal"))).unwrap_or_default();
        for file in [&bytes, &wal] {
            assert!(!file.windows(key.secret.len()).any(|w| w == key.secret.as_bytes()), "the secret is not stored");
        }
    }
}
