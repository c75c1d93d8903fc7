//! What several modules' metrics share: label sets, and registering a table of counters.
//! Imports nothing from the crate, so any module can use it for its own metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Why something was refused: one label, from a fixed set each metric documents.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// Registers each (name, help, counter) of `counters` in `registry`.
pub fn register_counters(registry: &mut Registry, counters: &[(&str, &str, &Counter)]) {
    for (name, help, counter) in counters {
        registry.register(*name, *help, (*counter).clone());
    }
}
