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

/// A key as nodes of a federation exchange it: its digest, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub stream: String,
    /// SHA-256 of the secret, hex.
    pub digest: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Most keys a store holds (revoked ones included); creating or merging more is refused.
pub const MAX_KEYS: usize = 100_000;

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

    /// A new key for `stream`; `None` when the store holds [`MAX_KEYS`] already.
    pub fn create(&self, stream: &StreamId) -> Result<Option<NewKey>, KeyStoreError> {
        let secret = db::random_secret(KEY_PREFIX, KEY_BYTES);
        let id = db::random_secret("", 6);
        let db = self.db.lock();
        let count: i64 = db.connection.query_row("SELECT COUNT(*) FROM stream_keys", [], |r| r.get(0)).map_err(|e| db.fail(e))?;
        if count as usize >= MAX_KEYS {
            return Ok(None);
        }
        db.connection
            .execute(
                "INSERT INTO stream_keys (id, stream, digest, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, stream.as_str(), digest(&secret), now()],
            )
            .map_err(|e| db.fail(e))?;
        Ok(Some(NewKey { id, secret }))
    }

    /// Every key as federation peers exchange it, by id.
    pub fn export(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let db = self.db.lock();
        let mut statement =
            db.connection.prepare("SELECT id, stream, digest, created_at, revoked_at FROM stream_keys ORDER BY id").map_err(|e| db.fail(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(KeyRecord {
                    id: row.get(0)?,
                    stream: row.get(1)?,
                    digest: hex::encode(row.get::<_, Vec<u8>>(2)?),
                    created_at: row.get(3)?,
                    revoked_at: row.get(4)?,
                })
            })
            .map_err(|e| db.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| db.fail(e))
    }

    /// A digest of every key's id, stream, digest and revocation: two stores with the same
    /// fingerprint hold the same keys.
    pub fn fingerprint(&self) -> Result<String, KeyStoreError> {
        let lines = self.export()?.into_iter().map(|key| format!("{}\t{}\t{}\t{}", key.id, key.stream, key.digest, key.revoked_at.is_some()));
        Ok(super::replication::fingerprint(lines))
    }

    /// Merges a peer's records: keys not known here are added, keys revoked there are
    /// revoked here (a revocation is never undone). Records with a malformed digest or
    /// stream name are skipped, and so is everything beyond [`MAX_KEYS`]. Returns how
    /// many rows changed.
    pub fn merge(&self, records: &[KeyRecord]) -> Result<usize, KeyStoreError> {
        let mut db = self.db.lock();
        let path = db.path.clone();
        let fail = |source| KeyStoreError::Sqlite { path: path.clone(), source };
        let tx = db.connection.transaction().map_err(fail)?;
        let mut count: i64 = tx.query_row("SELECT COUNT(*) FROM stream_keys", [], |r| r.get(0)).map_err(fail)?;
        let mut changed = 0;
        for record in records {
            let Some(digest) = hex::decode(&record.digest).ok().filter(|d| d.len() == 32) else { continue };
            if StreamId::parse(&record.stream).is_err() {
                continue;
            }
            if (count as usize) < MAX_KEYS {
                let added = tx
                    .execute(
                        "INSERT OR IGNORE INTO stream_keys (id, stream, digest, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![record.id, record.stream, digest, record.created_at, record.revoked_at],
                    )
                    .map_err(fail)?;
                count += added as i64;
                changed += added;
            }
            if let Some(revoked_at) = record.revoked_at {
                changed += tx
                    .execute("UPDATE stream_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![record.id, revoked_at])
                    .map_err(fail)?;
            }
        }
        tx.commit().map_err(fail)?;
        Ok(changed)
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
        let key = store.create(&cam).unwrap().unwrap();
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

    #[test]
    fn two_stores_converge_by_merging_each_others_records() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (KeyStore::open(a_dir.path()).unwrap(), KeyStore::open(b_dir.path()).unwrap());
        let on_a = a.create(&StreamId::parse("cam").unwrap()).unwrap().unwrap();
        let on_b = b.create(&StreamId::parse("news").unwrap()).unwrap().unwrap();
        assert_ne!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
        assert_eq!(b.merge(&a.export().unwrap()).unwrap(), 1);
        assert_eq!(a.merge(&b.export().unwrap()).unwrap(), 1);
        assert_eq!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
        assert_eq!(b.lookup(&on_a.secret).unwrap().as_deref(), Some("cam"), "a key made on a publishes on b");
        // A revocation on one side wins on the other, and merging again changes nothing.
        assert!(b.revoke(&on_a.id).unwrap());
        assert_eq!(a.merge(&b.export().unwrap()).unwrap(), 1);
        assert_eq!(a.lookup(&on_a.secret).unwrap(), None);
        assert_eq!(a.merge(&b.export().unwrap()).unwrap(), 0);
        assert_eq!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
        // Junk is skipped.
        let junk = KeyRecord { id: "x".into(), stream: "../etc".into(), digest: "zz".into(), created_at: 0, revoked_at: None };
        assert_eq!(a.merge(&[junk]).unwrap(), 0);
        assert_eq!(a.lookup(&on_b.secret).unwrap().as_deref(), Some("news"));
    }
}
