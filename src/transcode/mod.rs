//! Transcoding with GStreamer: one pipeline per publish session, built from the backend
//! templates in pipelines/ (`backend`), on a backend and device chosen per stream
//! (`capability` probes the host, `admission` counts sessions and cores, `resources` ties
//! them together at start-up). Packets from the stream actor enter through appsrcs; every rendition's
//! cmafmux output leaves through an appsink whose callback hands whole init and media
//! segments to the packager. Bus errors surface to the stream actor, which tears the
//! session down; other streams never share a pipeline with it.
//!
//! Inside: `io.rs` (what a session takes in and gives out), `pipeline.rs` (the running
//! [`Transcoder`]), `boundaries.rs` (where segments start), `sink.rs` with `fragment.rs`
//! (muxer output back into whole objects for the packager).

pub mod admission;
pub mod backend;
mod boundaries;
pub mod capability;
#[cfg(test)] mod chunks;
pub mod config;
pub mod file;
pub mod fragment;
mod io;
#[cfg(feature = "nvenc-sdk")]
pub mod nvenc_sdk;
mod pipeline;
pub mod resources;
mod sink;
mod silence;
pub mod source;
pub mod spec;


use std::sync::Once;

pub use io::{audio_rendition, avc_caps, SessionIo, SessionOutput, SinkBinding};
pub use pipeline::Transcoder;
pub use silence::silent_aac_frame;

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("GStreamer failed to initialise: {0}")]
    Init(String),
    #[error("pipeline template: {0}")]
    Template(#[from] backend::TemplateError),
    #[error("GStreamer element(s) missing: {0} (install the plugin packages: deploy/install-deps.sh)")]
    MissingElements(String),
    #[error("pipeline does not parse: {0}")]
    Parse(String),
    #[error("pipeline has no element named {0}")]
    NoElement(String),
    #[error("pipeline refused to start: {0}")]
    Start(String),
    #[error("pipeline stopped accepting data: {0}")]
    Push(String),
}

static INIT: Once = Once::new();

/// Initialises GStreamer once per process, registers the fMP4 muxers and routes
/// GStreamer's warnings and errors into `tracing`.
pub fn init() -> Result<(), TranscodeError> {
    gst::init().map_err(|e| TranscodeError::Init(e.to_string()))?;
    let mut result = Ok(());
    INIT.call_once(|| {
        result = gstfmp4::plugin_register_static().map_err(|e| TranscodeError::Init(e.to_string()));
        gst::log::remove_default_log_function();
        if std::env::var_os("GST_DEBUG").is_none() {
            gst::log::set_default_threshold(gst::DebugLevel::Warning);
        }
        gst::log::add_log_function(|category, level, file, function, line, object, message| {
            let object = object.map(|o| o.to_string()).unwrap_or_default();
            let text = message.get().map(|m| m.to_string()).unwrap_or_default();
            match level {
                gst::DebugLevel::Error => {
                    tracing::error!(target: "gstreamer", category = category.name(), %object, "{text} ({file}:{line} {function})")
                }
                gst::DebugLevel::Warning => {
                    tracing::warn!(target: "gstreamer", category = category.name(), %object, "{text} ({file}:{line} {function})")
                }
                _ => tracing::info!(target: "gstreamer", category = category.name(), %object, "{text}"),
            }
        });
    });
    result
}

