//! rackcast: a live-video appliance. RTMP in, an adaptive H.264 ladder out as live
//! 1-second MPEG-DASH. Modules in data-flow order:
//! ingest (auth: who may publish) -> stream -> (ladder, transcode) -> package -> store -> http; `metrics` reads them
//! all for `/metrics`, and `api` (the admin REST API, access-checked against `auth`'s users
//! and tokens) reads and steers them; `console` is the web page that drives `api`.

pub mod api;
pub mod app;
pub mod audience;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod console;
pub mod host;
pub mod http;
pub mod ingest;
pub mod ladder;
pub mod media;
pub mod metrics;
pub mod package;
pub mod probe;
pub mod section;
pub mod store;
pub mod stream;
pub mod tier;
pub mod transcode;
pub mod warn_limiter;
