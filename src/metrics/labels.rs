//! Label sets shared by several modules' metrics. Imports nothing from the crate, so any
//! module can record into its own metrics with them.

use prometheus_client::encoding::EncodeLabelSet;

/// Why something was refused: one label, from a fixed set each metric documents.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}
