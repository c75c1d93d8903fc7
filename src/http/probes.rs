//! The process probes every node answers on its HTTP port, without authentication, for
//! orchestrators and load balancers (docs/kubernetes.md): `GET /healthz` is 200 while the
//! process runs; `GET /ready` is 200 once the node serves and 503 while it starts or
//! drains. Both read one atomic and never wait on anything else. The app (app.rs) owns the
//! [`Readiness`]: it marks the node serving once its listeners are bound and, in a
//! federation, its membership has a view, and draining at the very start of the shutdown,
//! before any stream drains its pipeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Liveness: 200 while the process runs.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness: 200 while the node serves, 503 while it starts or drains.
pub const READY_PATH: &str = "/ready";

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const DRAINING: u8 = 2;

/// Whether this node takes new work. Starts out starting; draining is final.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

impl Readiness {
    /// The node serves (no effect once it drains).
    pub fn serving(&self) {
        let _ = self.0.compare_exchange(STARTING, SERVING, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The node drains: /ready answers 503 from now on.
    pub fn draining(&self) {
        self.0.store(DRAINING, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst) == SERVING
    }

    fn state(&self) -> &'static str {
        match self.0.load(Ordering::SeqCst) {
            STARTING => "starting",
            SERVING => "ready",
            _ => "draining",
        }
    }
}

/// `/healthz` and `/ready`.
pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route(HEALTHZ_PATH, get(|| async { ([(header::CACHE_CONTROL, "no-store")], "ok\n") }))
        .route(READY_PATH, get(ready))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> impl IntoResponse {
    let status = if readiness.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CACHE_CONTROL, "no-store")], format!("{}\n", readiness.state()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_goes_starting_serving_draining_and_stays_draining() {
        let r = Readiness::default();
        assert_eq!((r.is_ready(), r.state()), (false, "starting"));
        r.serving();
        assert_eq!((r.is_ready(), r.state()), (true, "ready"));
        r.draining();
        r.serving();
        assert_eq!((r.is_ready(), r.state()), (false, "draining"), "draining is final");
    }
}
