//! Publish authentication: which stream a publish may write, from its stream key.
//!
//! Keys come from two places: `[ingest.keys]` in the config (fixed, for provisioning) and
//! the key store ([`keys`]: `rackcast keys add|list|revoke`, the API or the console;
//! stored hashed; in a federation, replicated to every node by [`replication`]). While neither
//! holds a key in force, publishing is open: a key is its stream's name
//! (`ingest::key::open_name`), and the start-up log says so. Otherwise every publish needs
//! a key in force, looked up as sent and then percent-decoded, and publishes the public
//! name the key maps to; the `?query` is never part of a key. A refusal never names the
//! key. While keys are required, each address may make `publish_attempts_per_minute`
//! attempts (burst `publish_attempt_burst`; governor), federation nodes exempt.
//!
//! With `auth.publish_token_secret`, a signed, expiring key ([`token`], purpose Publish)
//! also publishes: `{stream}?exp=...&sig=...` (`rackcast token STREAM`), for automation
//! that should not hold a long-lived key. A key with a bad or expired signature is refused
//! with the reason.
//!
//! With `auth.publish_webhook`, a publish whose key was accepted is also put to the
//! admin's service ([`webhook`], [`PublishAuth::admit`]).
//!
//! The admin side's users, sessions, API tokens and audit log live in [`admin`], in the
//! same database ([`db`]); in a federation all but the audit log replicate like stream keys
//! ([`replication`]). The HTTP API enforces them (`api::access`), and [`login`] bounds the
//! password checks of logins. Node-to-node HTTP is signed and checked in [`peer`].

pub mod admin;
pub mod config;
pub mod db;
pub mod keys;
pub mod login;
pub mod peer;
pub mod replication;
pub mod token;
pub mod webhook;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::cluster::MemberAddresses;
use crate::ingest::key::{self, KeyError};
use crate::media::StreamId;
pub use config::AuthConfig;
use keys::{KeyStore, KeyStoreError};

/// How often (in attempts) the limiter forgets addresses that are back under their quota.
const LIMITER_SWEEP_EVERY: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("publish token refused: {0}")]
    Token(#[from] token::TokenError),
    #[error("too many publish attempts from this address; try again in a minute")]
    RateLimited,
    #[error("stream keys cannot be checked right now")]
    Store(#[from] KeyStoreError),
}

pub struct PublishAuth {
    config_keys: BTreeMap<String, String>,
    token_secret: Option<String>,
    store: Option<Arc<KeyStore>>,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    exempt: Arc<MemberAddresses>,
    attempts: AtomicU64,
    /// Attempts refused by the rate limit.
    pub rate_limited: Counter,
    pub webhook: Option<webhook::PublishWebhook>,
    node_id: String,
}

impl PublishAuth {
    /// The node's publish authentication: the config's keys and token secret, the node's
    /// key store, federation nodes exempt from the attempt limit. Logs whether publishing
    /// is open.
    pub async fn start(
        config: &AuthConfig,
        config_keys: BTreeMap<String, String>,
        cluster: &crate::cluster::config::ClusterConfig,
        members: Arc<MemberAddresses>,
        store: Arc<KeyStore>,
    ) -> anyhow::Result<Self> {
        let mut auth = Self::new(config, config_keys, Some(store), members);
        auth.node_id = cluster.node_id.clone();
        if !config.publish_webhook.is_empty() {
            let hook = webhook::PublishWebhook::new(&config.publish_webhook, config.publish_webhook_timeout, config.publish_webhook_cache)
                .map_err(|e| anyhow::anyhow!("building the publish webhook's HTTP client: {e}"))?;
            tracing::info!(timeout = ?config.publish_webhook_timeout, "every publish is also put to the publish webhook");
            auth.webhook = Some(hook);
        }
        if auth.is_open().await? {
            tracing::warn!(
                "publishing is open: no stream key is in force, so whoever reaches the RTMP port may publish any stream name \
                 (`rackcast keys add STREAM` creates a key)"
            );
        } else {
            tracing::info!(data_dir = %config.data_dir.display(), "publishing needs a stream key or a signed publish key");
        }
        Ok(auth)
    }

    /// Registers the publish checks' metrics: refusals by the attempt limit and, with a
    /// webhook, its calls and verdicts.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("ingest_publish_rate_limited", "Publish attempts refused by the per-address limit", self.rate_limited.clone());
        if let Some(hook) = &self.webhook {
            hook.register(registry);
        }
    }

    /// `store` is `None` only where no data directory is wanted (tests of other parts).
    pub fn new(config: &AuthConfig, config_keys: BTreeMap<String, String>, store: Option<Arc<KeyStore>>, exempt: Arc<MemberAddresses>) -> Self {
        let one = NonZeroU32::MIN;
        let quota = Quota::per_minute(NonZeroU32::new(config.publish_attempts_per_minute).unwrap_or(one))
            .allow_burst(NonZeroU32::new(config.publish_attempt_burst).unwrap_or(one));
        Self {
            config_keys,
            token_secret: Some(config.publish_token_secret.clone()).filter(|s| !s.is_empty()),
            store,
            limiter: RateLimiter::keyed(quota),
            exempt,
            attempts: AtomicU64::new(0),
            rate_limited: Counter::default(),
            webhook: None,
            node_id: String::new(),
        }
    }

    /// True while no key is in force: anyone may publish any name. The key store is read
    /// on the blocking pool ([`db::blocking`]).
    pub async fn is_open(&self) -> Result<bool, KeyStoreError> {
        if !self.config_keys.is_empty() || self.token_secret.is_some() {
            return Ok(false);
        }
        match &self.store {
            Some(store) => Ok(!db::blocking(store, KeyStore::any_active).await?),
            None => Ok(true),
        }
    }

    /// Puts an accepted publish of `stream` from `peer` to the publish webhook, if one is
    /// configured (relayed publishes were put to it by the node that took them).
    pub async fn admit(&self, stream: &StreamId, peer: IpAddr) -> Result<(), webhook::WebhookRefusal> {
        match &self.webhook {
            Some(hook) => hook.admit(stream, peer, &self.node_id).await,
            None => Ok(()),
        }
    }

    /// The stream a publish name (`key` or `key?query`, after the application instance)
    /// from `peer` publishes.
    pub async fn resolve(&self, name: &str, peer: IpAddr) -> Result<StreamId, Refusal> {
        let (key, query) = key::split_query(name);
        if self.is_open().await? {
            return Ok(key::open_name(key)?);
        }
        if !self.exempt.contains(peer) {
            if self.attempts.fetch_add(1, Ordering::Relaxed) % LIMITER_SWEEP_EVERY == 0 {
                self.limiter.retain_recent();
            }
            if self.limiter.check_key(&peer).is_err() {
                self.rate_limited.inc();
                return Err(Refusal::RateLimited);
            }
        }
        if let Some(secret) = &self.token_secret
            && query.is_some_and(|q| q.contains("sig="))
        {
            let stream = token::verify(token::Purpose::Publish, name, secret)?;
            return Ok(key::open_name(stream)?);
        }
        if !self.config_keys.is_empty()
            && let Ok(stream) = key::resolve(name, &self.config_keys)
        {
            return Ok(stream);
        }
        if let Some(store) = &self.store {
            let decoded = key::percent_decode(key).ok().filter(|d| d != key);
            let candidates: Vec<String> = std::iter::once(key.to_owned()).chain(decoded).collect();
            let found = db::blocking(store, move |store| {
                for candidate in &candidates {
                    if let Some(stream) = store.lookup(candidate)? {
                        return Ok(Some(stream));
                    }
                }
                Ok::<_, KeyStoreError>(None)
            })
            .await?;
            if let Some(stream) = found {
                // Stored names were validated when the key was made; a bad one refuses.
                return StreamId::parse(&stream).map_err(|_| Refusal::Key(KeyError::Unknown));
            }
        }
        Err(Refusal::Key(KeyError::Unknown))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn auth(config_keys: &[(&str, &str)], store: Option<Arc<KeyStore>>, per_minute: u32, burst: u32) -> PublishAuth {
        let config = AuthConfig { publish_attempts_per_minute: per_minute, publish_attempt_burst: burst, ..AuthConfig::default() };
        let keys = config_keys.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        PublishAuth::new(&config, keys, store, Arc::new(MemberAddresses::from(HashSet::from(["10.0.0.9".parse().unwrap()]))))
    }

    const PEER: &str = "192.0.2.1";

    #[tokio::test]
    async fn open_until_a_key_exists_then_only_keys_publish() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(&[], Some(Arc::new(KeyStore::open(dir.path()).unwrap())), 60, 20);
        let peer: IpAddr = PEER.parse().unwrap();
        assert!(a.is_open().await.unwrap());
        assert_eq!(a.resolve("room/cam?token=x", peer).await.unwrap().as_str(), "room~cam");

        let key = KeyStore::open(dir.path()).unwrap().create(&StreamId::parse("studio").unwrap()).unwrap().unwrap();
        assert!(!a.is_open().await.unwrap());
        assert_eq!(a.resolve(&format!("{}?via=obs", key.secret), peer).await.unwrap().as_str(), "studio");
        assert!(matches!(a.resolve("cam", peer).await, Err(Refusal::Key(KeyError::Unknown))));
        // A refusal never carries the key.
        let refusal = a.resolve("rk_0000000000000000000000000000000000000000", peer).await.unwrap_err().to_string();
        assert!(!refusal.contains("rk_"), "{refusal}");
    }

    #[tokio::test]
    async fn config_keys_and_stored_keys_both_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let stored = store.create(&StreamId::parse("two").unwrap()).unwrap().unwrap();
        let a = auth(&[("fixed-secret", "one")], Some(Arc::new(store)), 60, 20);
        let peer: IpAddr = PEER.parse().unwrap();
        assert_eq!(a.resolve("fixed-secret", peer).await.unwrap().as_str(), "one");
        assert_eq!(a.resolve(&stored.secret, peer).await.unwrap().as_str(), "two");
    }

    #[tokio::test]
    async fn signed_publish_keys_publish_until_they_expire() {
        let secret = "a-publish-token-secret";
        let config = AuthConfig { publish_token_secret: secret.into(), ..AuthConfig::default() };
        let a = PublishAuth::new(&config, BTreeMap::new(), None, Arc::default());
        let peer: IpAddr = PEER.parse().unwrap();
        assert!(!a.is_open().await.unwrap(), "a token secret requires a key or token");
        let key = token::sign(token::Purpose::Publish, "room/cam", secret, std::time::Duration::from_secs(60));
        assert_eq!(a.resolve(&key, peer).await.unwrap().as_str(), "room~cam");
        let forged = key.replace("room/cam", "room/other");
        assert!(matches!(a.resolve(&forged, peer).await, Err(Refusal::Token(token::TokenError::BadSignature))));
        let relay = token::sign(token::Purpose::Relay, "room/cam", secret, token::RELAY_LIFETIME);
        assert!(matches!(a.resolve(&relay, peer).await, Err(Refusal::Token(_))), "a relay token does not publish");
        assert!(matches!(a.resolve("room/cam", peer).await, Err(Refusal::Key(KeyError::Unknown))));
    }

    #[tokio::test]
    async fn attempts_are_limited_per_address_while_keys_are_required() {
        let a = auth(&[("s3cret", "cam")], None, 1, 3);
        let (peer, other, node): (IpAddr, IpAddr, IpAddr) = (PEER.parse().unwrap(), "192.0.2.2".parse().unwrap(), "10.0.0.9".parse().unwrap());
        for _ in 0..3 {
            assert!(matches!(a.resolve("guess", peer).await, Err(Refusal::Key(_))));
        }
        // The burst is spent: even the right key waits.
        assert!(matches!(a.resolve("s3cret", peer).await, Err(Refusal::RateLimited)));
        assert_eq!(a.resolve("s3cret", other).await.unwrap().as_str(), "cam", "another address is not affected");
        for _ in 0..10 {
            assert!(a.resolve("s3cret", node).await.is_ok(), "federation nodes are exempt");
        }
        assert_eq!(a.rate_limited.get(), 1);
    }
}
