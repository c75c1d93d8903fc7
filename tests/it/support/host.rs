//! The host, shared by every test of this binary. libtest runs two tests at once (its
//! default on a 2-core machine), and in one binary any two areas can meet: an overload test
//! next to a five-node federation. So:
//!
//! - A test that measures the host (loads it until the appliance sheds, asserts real-time
//!   production with the CPU it was given) takes it to itself first: [`host_to_itself`].
//!   It waits until no other test runs an appliance, and none starts one until it is done.
//! - Every other test holds a share while it runs the binary: each [`Appliance`] takes one
//!   (`crate::support::Appliance`), a test that runs the binary otherwise takes one with
//!   [`host_shared`]. Shares of one test are counted, never waited for again: a test that
//!   holds one (or has the host to itself) starts its next appliance at once, so a test
//!   with several appliances cannot wait on itself.
//! - A test that asks for the host waits for the tests that hold shares now, and no test
//!   gets a first share meanwhile, so it is not starved; once it is done, the others go on.
//!
//! A test is its thread: start appliances on the test's own thread (one started on a
//! helper thread while the test holds a share would count as another test and could wait
//! for the test that waits on it).
//!
//! [`Appliance`]: super::Appliance

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, ThreadId};

struct State {
    /// Shares held, per test (a few tests at a time).
    shares: Vec<(ThreadId, usize)>,
    /// The test that has the host to itself.
    exclusive: Option<ThreadId>,
    /// Tests waiting for the host to themselves.
    waiting: usize,
}

static STATE: Mutex<State> = Mutex::new(State { shares: Vec::new(), exclusive: None, waiting: 0 });
static CHANGED: Condvar = Condvar::new();

fn state() -> MutexGuard<'static, State> {
    // A test that panicked released its guards while unwinding; the counts stay right.
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A share of the host, held by a test (or by its appliance) until dropped.
pub struct HostShare {
    /// The test counted, or none when it has the host to itself.
    holder: Option<ThreadId>,
}

/// A share of the host for this test: at once when it holds one already or has the host to
/// itself, else once no test has it or waits for it.
pub fn host_shared() -> HostShare {
    let me = thread::current().id();
    let mut state = state();
    if state.exclusive == Some(me) {
        return HostShare { holder: None };
    }
    if let Some((_, count)) = state.shares.iter_mut().find(|(holder, _)| *holder == me) {
        *count += 1;
        return HostShare { holder: Some(me) };
    }
    state = CHANGED.wait_while(state, |s| s.exclusive.is_some() || s.waiting > 0).unwrap_or_else(PoisonError::into_inner);
    state.shares.push((me, 1));
    HostShare { holder: Some(me) }
}

impl Drop for HostShare {
    fn drop(&mut self) {
        let Some(holder) = self.holder else { return };
        let mut state = state();
        let Some(at) = state.shares.iter().position(|(test, _)| *test == holder) else { return };
        state.shares[at].1 -= 1;
        if state.shares[at].1 == 0 {
            state.shares.swap_remove(at);
            CHANGED.notify_all();
        }
    }
}

/// The host to this test alone, until dropped.
pub struct HostToItself;

/// Waits until no other test holds a share of the host or has it, then holds it: take it
/// at the test's start, before its first appliance.
pub fn host_to_itself() -> HostToItself {
    let me = thread::current().id();
    let mut state = state();
    state.waiting += 1;
    state = CHANGED
        .wait_while(state, |s| s.exclusive.is_some() || s.shares.iter().any(|(holder, _)| *holder != me))
        .unwrap_or_else(PoisonError::into_inner);
    state.waiting -= 1;
    state.exclusive = Some(me);
    HostToItself
}

impl Drop for HostToItself {
    fn drop(&mut self) {
        state().exclusive = None;
        CHANGED.notify_all();
    }
}
