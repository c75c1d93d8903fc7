//! Wires one appliance together in flow order and owns its lifetime: binds the listeners,
//! picks the encoder, starts ingest, HTTP and housekeeping, and on shutdown stops accepting,
//! lets every stream drain its pipeline, and waits for every task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http::{self, HttpState};
use crate::ingest;
use crate::ingest::relay::{Placement, Standalone};
use crate::package::mpd::MpdTiming;
use crate::package::Packager;
use crate::store::Store;
use crate::stream::{StreamRegistry, StreamServices};
use crate::transcode::{self, encoder};

/// How often out-of-window segments and ended streams are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for tasks to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Listeners bound before the appliance starts, so callers (and tests) can bind port 0.
pub struct Listeners {
    pub rtmp: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(rtmp: SocketAddr, http: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            rtmp: TcpListener::bind(rtmp).await.with_context(|| format!("binding RTMP on {rtmp}"))?,
            http: TcpListener::bind(http).await.with_context(|| format!("binding HTTP on {http}"))?,
        })
    }
}

/// Runs the appliance until `shutdown` is cancelled.
pub async fn run(config: Config, listeners: Listeners, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate().context("invalid configuration")?;
    transcode::init().context("starting GStreamer")?;
    let choice = encoder::select(&config.transcode.encoders, |name| gst::ElementFactory::find(name).is_some())
        .context("choosing a video encoder")?;
    for skipped in &choice.skipped {
        tracing::warn!("encoder skipped: {skipped}");
    }
    tracing::info!(encoder = ?choice.kind, hardware = choice.kind.is_hardware(), "video encoder selected");

    let config = Arc::new(config);
    let store = Arc::new(Store::new());
    let timing = MpdTiming {
        segment_duration: config.package.segment_duration,
        dvr_window: config.package.dvr_window,
        presentation_delay: config.package.presentation_delay,
    };
    let packager = Arc::new(Packager::new(Arc::clone(&store), timing));
    let tracker = TaskTracker::new();
    let services = StreamServices {
        config: Arc::clone(&config),
        packager: Arc::clone(&packager),
        encoder: choice.kind,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    };
    let registry = StreamRegistry::new();

    let placement: Arc<dyn Placement> = Arc::new(Standalone);
    tracker.spawn(ingest::serve(listeners.rtmp, registry, placement, services));
    let http_shutdown = shutdown.clone();
    tracker.spawn(async move {
        if let Err(e) = http::serve(listeners.http, HttpState::new(store), http_shutdown).await {
            tracing::error!("HTTP server failed: {e}");
        }
    });
    let sweep_shutdown = shutdown.clone();
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => packager.sweep(),
                _ = sweep_shutdown.cancelled() => break,
            }
        }
    });

    shutdown.cancelled().await;
    tracing::info!("shutting down: draining streams");
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("tasks still running after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    Ok(())
}
