//! The integration tests: one test binary (linking GStreamer, SQLite and axum once, not
//! once per area), one module per area. Each starts the real `rackcast` binary on
//! 127.0.0.1 with real ffmpeg publishers and HTTP (the harness is `support`). Run one area
//! with `cargo test --test it AREA::`, e.g. `cargo test --test it overload::`.

mod support;

mod admin_api;
mod admin_federation;
mod admission;
mod bad_input;
mod cluster_auth;
mod console;
mod discovery;
mod federation;
mod hostile_audio;
mod hostile_rtmp;
mod hls;
mod hold;
mod ll_hls;
mod http_edge;
mod ingest_quirks;
mod live_dash;
mod low_latency;
mod media_time;
mod metrics;
mod overload;
mod players;
mod publish_auth;
mod rolling_restart;
mod shipped_configs;
mod transcode_cli;
mod uplink_ladder;
