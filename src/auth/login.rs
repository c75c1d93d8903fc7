//! Bounds on the work logins cost (`POST /api/v1/session`, `api::session`). Each password
//! check is an argon2id hash: 19 MiB of memory and tens of milliseconds of a core, by
//! design. The per-address limit (`auth.login_attempts_per_minute`) does not stop a flood
//! from many addresses (a botnet, or one IPv6 /64), so [`LoginGate`] also bounds the whole
//! node:
//!
//! - **Hash slots**: at most `auth.login_hash_concurrency` password checks run at once
//!   (default: one per core). An attempt waits up to [`HASH_SLOT_WAIT`] for a slot, then
//!   is answered 503 with `Retry-After` ([`BUSY_RETRY_AFTER`]) without hashing. Each slot
//!   keeps its 19 MiB argon2 working area for the next check ([`HashSlot`]), so logins
//!   cost at most that much memory per slot, however many come.
//! - **A global failure budget**: `auth.failed_logins_per_minute` failed logins from all
//!   addresses together (burst `auth.failed_login_burst`). While it is spent, every login
//!   is answered 429 with `Retry-After` before any hashing, whoever sends it; sessions and
//!   API tokens keep working.
//!
//! Each refusal is counted ([`LoginMetrics`], in `/metrics`) and logged at most once
//! a second per kind, so the flood costs neither memory nor the log.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AuthConfig;
use super::admin::HashMemory;
use crate::metrics::common::Reason;
use crate::warn_limiter::WarnLimiter;

/// How long a login waits for a hash slot before it is answered 503.
pub const HASH_SLOT_WAIT: Duration = Duration::from_secs(1);
/// What a login refused for want of a hash slot is told to wait.
pub const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most password checks at once that `auth.login_hash_concurrency` may ask for (19 MiB each).
pub const MAX_HASH_CONCURRENCY: u32 = 64;

/// Why a login was refused before its password was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    #[error("every password check slot is busy")]
    Busy,
    #[error("too many failed logins on this node")]
    BudgetSpent { retry_after: Duration },
}

impl LoginRefusal {
    /// What the client is told to wait, in whole seconds (at least 1).
    pub fn retry_after_secs(self) -> u64 {
        match self {
            LoginRefusal::Busy => BUSY_RETRY_AFTER.as_secs(),
            LoginRefusal::BudgetSpent { retry_after } => retry_after.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

/// See the module header.
pub struct LoginGate {
    slots: Arc<Semaphore>,
    concurrency: usize,
    /// The slots' argon2 working areas, kept between checks (at most one per slot).
    memory: Arc<Mutex<Vec<HashMemory>>>,
    failures: DefaultDirectRateLimiter,
    /// Until when the failure budget is spent (set when a failure finds it empty).
    spent_until: Mutex<Option<Instant>>,
    metrics: LoginMetrics,
    busy_warnings: WarnLimiter,
    budget_warnings: WarnLimiter,
}

/// Held while one password is checked: a place among the hash slots and that slot's
/// argon2 working area ([`HashMemory`]), given back for the next check when dropped.
pub struct HashSlot {
    _permit: OwnedSemaphorePermit,
    memory: HashMemory,
    pool: Arc<Mutex<Vec<HashMemory>>>,
    /// The gate's count of checks running, lowered when the slot is given back.
    hashing: Gauge,
}

impl HashSlot {
    pub fn memory(&mut self) -> &mut HashMemory {
        &mut self.memory
    }
}

impl std::fmt::Debug for HashSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashSlot").field("memory_blocks", &self.memory.len()).finish()
    }
}

impl Drop for HashSlot {
    fn drop(&mut self) {
        self.pool.lock().push(std::mem::take(&mut self.memory));
        self.hashing.dec();
    }
}

/// The gate's metrics (`rackcast_login_*`).
#[derive(Debug, Default)]
pub struct LoginMetrics {
    /// Logins with a wrong username or password.
    pub failed: Counter,
    /// Logins refused before the password was checked, by limit: `per_address`,
    /// `failure_budget`, `busy`.
    pub refused: Family<Reason, Counter>,
    /// Password checks running.
    pub hashing: Gauge,
}

impl LoginMetrics {
    fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }
}

/// Password checks at once for `auth.login_hash_concurrency` (0: one per core).
pub fn hash_concurrency(configured: u32) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

impl LoginGate {
    pub fn new(config: &AuthConfig) -> Self {
        let one = NonZeroU32::MIN;
        let quota = Quota::per_minute(NonZeroU32::new(config.failed_logins_per_minute).unwrap_or(one))
            .allow_burst(NonZeroU32::new(config.failed_login_burst).unwrap_or(one));
        let concurrency = hash_concurrency(config.login_hash_concurrency);
        Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            memory: Arc::default(),
            failures: RateLimiter::direct(quota),
            spent_until: Mutex::new(None),
            metrics: LoginMetrics::default(),
            busy_warnings: WarnLimiter::default(),
            budget_warnings: WarnLimiter::default(),
        }
    }

    /// A slot to check one password in (hold it until the hash is done), or why not: the
    /// failure budget is spent (checked before and after waiting), or no slot freed up
    /// within [`HASH_SLOT_WAIT`]. Refusals are counted and logged here.
    pub async fn slot(&self) -> Result<HashSlot, LoginRefusal> {
        self.budget_left()?;
        let Ok(Ok(permit)) = tokio::time::timeout(HASH_SLOT_WAIT, Arc::clone(&self.slots).acquire_owned()).await else {
            self.metrics.refuse("busy");
            if let Some(held_back) = self.busy_warnings.allow() {
                tracing::warn!(slots = self.concurrency, held_back, "login refused: every password check slot stayed busy for {HASH_SLOT_WAIT:?} (auth.login_hash_concurrency; at most one such line a second)");
            }
            return Err(LoginRefusal::Busy);
        };
        self.budget_left()?;
        let memory = self.memory.lock().pop().unwrap_or_default();
        self.metrics.hashing.inc();
        Ok(HashSlot { _permit: permit, memory, pool: Arc::clone(&self.memory), hashing: self.metrics.hashing.clone() })
    }

    fn budget_left(&self) -> Result<(), LoginRefusal> {
        let now = Instant::now();
        let Some(until) = *self.spent_until.lock() else { return Ok(()) };
        if until <= now {
            return Ok(());
        }
        self.metrics.refuse("failure_budget");
        if let Some(held_back) = self.budget_warnings.allow() {
            tracing::warn!(held_back, "login refused: the node's failed-login budget is spent (auth.failed_logins_per_minute; at most one such line a second)");
        }
        Err(LoginRefusal::BudgetSpent { retry_after: until - now })
    }

    /// Counts a failed login against the global budget; when the budget is empty, logins
    /// are refused until it has room for one more.
    pub fn record_failure(&self) {
        self.metrics.failed.inc();
        if let Err(not_until) = self.failures.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut spent = self.spent_until.lock();
            let until = Instant::now() + wait;
            if spent.is_none_or(|s| s < until) {
                *spent = Some(until);
            }
        }
    }

    /// Counts a login refused by the per-address limit (`api::session`).
    pub fn record_per_address_refusal(&self) {
        self.metrics.refuse("per_address");
    }

    /// Registers the gate's metrics (`rackcast_login_*`).
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("login");
        registry.register("failures", "Logins with a wrong username or password", self.metrics.failed.clone());
        registry.register("refused", "Logins refused before the password was checked, by limit", self.metrics.refused.clone());
        registry.register("password_checks", "Password checks running (at most auth.login_hash_concurrency)", self.metrics.hashing.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(gate: &LoginGate, reason: &'static str) -> u64 {
        gate.metrics.refused.get_or_create(&Reason { reason }).get()
    }

    fn gate(concurrency: u32, per_minute: u32, burst: u32) -> LoginGate {
        LoginGate::new(&AuthConfig { login_hash_concurrency: concurrency, failed_logins_per_minute: per_minute, failed_login_burst: burst, ..AuthConfig::default() })
    }

    #[tokio::test]
    async fn no_more_hashes_than_slots_and_the_rest_are_refused_in_time() {
        let gate = gate(2, 600, 100);
        let (a, b) = (gate.slot().await.unwrap(), gate.slot().await.unwrap());
        assert_eq!(gate.metrics.hashing.get(), 2);
        let started = std::time::Instant::now();
        assert_eq!(gate.slot().await.unwrap_err(), LoginRefusal::Busy);
        assert!(started.elapsed() >= HASH_SLOT_WAIT, "it waited for a slot first");
        assert_eq!(LoginRefusal::Busy.retry_after_secs(), 1);
        drop(a);
        let _c = gate.slot().await.expect("a freed slot is taken");
        drop(b);
        assert_eq!((gate.concurrency, gate.metrics.hashing.get(), refused(&gate, "busy")), (2, 1, 1));
    }

    #[tokio::test]
    async fn each_slot_keeps_its_working_memory_for_the_next_check() {
        let gate = gate(2, 600, 100);
        let mut a = gate.slot().await.unwrap();
        a.memory().resize(8, argon2::Block::new());
        let pointer = a.memory().as_ptr();
        drop(a);
        let mut again = gate.slot().await.unwrap();
        assert_eq!((again.memory().len(), again.memory().as_ptr()), (8, pointer), "the same area, not a new one");
        let mut other = gate.slot().await.unwrap();
        assert!(other.memory().is_empty(), "a second slot at once gets its own");
        drop((again, other));
        assert_eq!(gate.memory.lock().len(), 2, "at most one area per slot");
    }

    #[tokio::test]
    async fn a_waiting_login_gets_the_next_free_slot() {
        let gate = Arc::new(gate(1, 600, 100));
        let held = gate.slot().await.unwrap();
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.slot().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn the_global_failure_budget_refuses_everyone_once_spent() {
        let gate = gate(4, 1, 3);
        for _ in 0..3 {
            drop(gate.slot().await.unwrap());
            gate.record_failure();
        }
        assert!(gate.slot().await.is_ok(), "three failures fit the burst");
        gate.record_failure();
        match gate.slot().await {
            Err(refusal @ LoginRefusal::BudgetSpent { retry_after }) => {
                assert!(retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60), "{retry_after:?}");
                assert!((50..=60).contains(&refusal.retry_after_secs()));
            }
            other => panic!("expected the budget to be spent, got {other:?}"),
        }
        assert_eq!((gate.metrics.failed.get(), refused(&gate, "failure_budget"), gate.metrics.hashing.get()), (4, 1, 0));
    }

    #[test]
    fn concurrency_defaults_to_the_cores() {
        assert_eq!(hash_concurrency(3), 3);
        assert!(hash_concurrency(0) >= 1);
    }
}
