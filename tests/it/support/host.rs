//! The host, shared by every test of this binary. libtest runs two tests at once (its
//! default on a 2-core machine), and in one binary any two areas can meet: an overload test
//! next to a five-node federation. So:
//!
//! - A test that measures the host (loads it until the appliance sheds, asserts real-time
//!   production with the CPU it was given) takes it to itself first: [`host_to_itself`].
//!   It waits until no other test runs an appliance, and none starts one until it is done.
//! - Every other test holds a share while it runs the binary: each [`Appliance`] takes one
//!   for as long as it runs, a test that runs the binary otherwise takes one with
//!   [`host_shared`]. Shares of one test are counted, never waited for again: a test that
//!   holds one (or has the host to itself) starts its next appliance at once, so a test
//!   with several appliances cannot wait on itself (a read-write lock, not re-entrant and
//!   writer-preferring, would deadlock there).
//! - A test that asks for the host to itself waits for the tests that hold shares now, and
//!   no test gets a first share meanwhile, so it is not starved; once it is done, the
//!   others go on. Such tests are few and end, so shares are not starved either.
//!
//! A test is its thread: start appliances on the test's own thread (one started on a
//! helper thread while the test holds a share would count as another test and could wait
//! for the test that waits on it). `cargo test` alone is enough: the gate is in the binary.
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

/// Who holds the host; one for the binary ([`HOST`]).
struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

static HOST: Gate = Gate::new();

/// A share of the host, held by a test (or by its appliance) until dropped.
pub struct HostShare {
    gate: &'static Gate,
    /// The test counted, or none when it has the host to itself.
    holder: Option<ThreadId>,
}

/// The host to this test alone, until dropped.
pub struct HostToItself {
    gate: &'static Gate,
}

/// A share of the host for this test: at once when it holds one already or has the host to
/// itself, else once no test has it or waits for it.
pub fn host_shared() -> HostShare {
    HOST.share()
}

/// Waits until no other test holds a share of the host or has it, then holds it: take it
/// at the test's start, before its first appliance.
pub fn host_to_itself() -> HostToItself {
    HOST.to_itself()
}

impl Gate {
    const fn new() -> Self {
        Self { state: Mutex::new(State { shares: Vec::new(), exclusive: None, waiting: 0 }), changed: Condvar::new() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked released its guards while unwinding; the counts stay right.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn share(&'static self) -> HostShare {
        let me = thread::current().id();
        let mut state = self.state();
        if state.exclusive == Some(me) {
            return HostShare { gate: self, holder: None };
        }
        if let Some((_, count)) = state.shares.iter_mut().find(|(holder, _)| *holder == me) {
            *count += 1;
            return HostShare { gate: self, holder: Some(me) };
        }
        state = self.changed.wait_while(state, |s| s.exclusive.is_some() || s.waiting > 0).unwrap_or_else(PoisonError::into_inner);
        state.shares.push((me, 1));
        HostShare { gate: self, holder: Some(me) }
    }

    fn to_itself(&'static self) -> HostToItself {
        let me = thread::current().id();
        let mut state = self.state();
        state.waiting += 1;
        state = self
            .changed
            .wait_while(state, |s| s.exclusive.is_some() || s.shares.iter().any(|(holder, _)| *holder != me))
            .unwrap_or_else(PoisonError::into_inner);
        state.waiting -= 1;
        state.exclusive = Some(me);
        HostToItself { gate: self }
    }
}

impl Drop for HostShare {
    fn drop(&mut self) {
        let Some(holder) = self.holder else { return };
        let mut state = self.gate.state();
        let Some(at) = state.shares.iter().position(|(test, _)| *test == holder) else { return };
        state.shares[at].1 -= 1;
        if state.shares[at].1 == 0 {
            state.shares.swap_remove(at);
            self.gate.changed.notify_all();
        }
    }
}

impl Drop for HostToItself {
    fn drop(&mut self) {
        self.gate.state().exclusive = None;
        self.gate.changed.notify_all();
    }
}

mod tests {
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::time::Duration;

    use super::*;

    /// Long enough to see that a thread waits.
    const BLOCKED: Duration = Duration::from_millis(300);
    const SOON: Duration = Duration::from_secs(5);

    /// A test on a thread of its own: takes what `take` gives and says so, once per message
    /// on the returned sender; lets everything go when that sender is dropped.
    fn test<T: 'static>(take: impl Fn() -> T + Send + 'static) -> (Sender<()>, Receiver<()>) {
        let (ask, asked) = channel::<()>();
        let (got, got_rx) = channel();
        thread::spawn(move || {
            let mut held = Vec::new();
            while asked.recv().is_ok() {
                held.push(take());
                got.send(()).unwrap();
            }
        });
        (ask, got_rx)
    }

    #[test]
    fn a_test_waiting_for_the_host_stops_new_tests_but_not_a_running_ones_next_appliance() {
        let gate: &'static Gate = Box::leak(Box::new(Gate::new()));
        let (running, running_got) = test(|| gate.share());
        running.send(()).unwrap();
        running_got.recv_timeout(SOON).expect("a share of a free host");

        let (measuring, measuring_got) = test(|| gate.to_itself());
        measuring.send(()).unwrap();
        assert!(measuring_got.recv_timeout(BLOCKED).is_err(), "the host to itself while another test holds a share");
        running.send(()).unwrap();
        running_got.recv_timeout(SOON).expect("a test holding a share starts its next appliance at once");
        let (new, new_got) = test(|| gate.share());
        new.send(()).unwrap();
        assert!(new_got.recv_timeout(BLOCKED).is_err(), "a new test's first share while a test waits for the host");

        drop(running);
        measuring_got.recv_timeout(SOON).expect("the host to itself once the running test ended");
        assert!(new_got.recv_timeout(BLOCKED).is_err(), "a share while a test has the host to itself");
        drop(measuring);
        new_got.recv_timeout(SOON).expect("a share once the measuring test ended");
    }
}
