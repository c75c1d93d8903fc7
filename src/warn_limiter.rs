//! One warning a second out of a flood: the edges log refused and timed-out connections
//! through a [`WarnLimiter`], so hostile traffic costs a log line a second, not one per
//! connection, and the line says how many it stands for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a limited warning may be logged.
pub const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Lets one warning through per [`WARN_INTERVAL`] and counts the ones it holds back, so a
/// flood of hostile connections costs one log line a second, not one per connection.
#[derive(Debug)]
pub struct WarnLimiter {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last warning let through, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self { epoch: Instant::now(), last: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }
}

impl WarnLimiter {
    /// `Some(held back since the last one)` when a warning may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now >= last + WARN_INTERVAL.as_millis() as u64;
        if due && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_held_back() {
        let limiter = WarnLimiter::default();
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        std::thread::sleep(WARN_INTERVAL + Duration::from_millis(20));
        assert_eq!(limiter.allow(), Some(2));
        assert_eq!(limiter.allow(), None);
    }
}
