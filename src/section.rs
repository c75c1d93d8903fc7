//! What every config section shares: [`InvalidKey`], the error its `validate()` returns,
//! which names the offending key as it is written in the config file
//! (`ingest.max_audio_message`, `transcode.rungs[1].height`). Each section's type, defaults,
//! documentation and checks live in the module that owns it (`cluster/config.rs`,
//! `ingest/config.rs`, `http/config.rs`, `transcode/config.rs`, `ladder/config.rs`,
//! `package/config.rs`, `auth/config.rs`, `tier`); src/config.rs assembles the sections and
//! runs the checks that span several. A leaf: it uses nothing else of the crate, so every
//! section can use it without importing src/config.rs.

/// A config value that cannot work: `{section}.{key}: {reason}`, or `{section}: {reason}`
/// when the reason concerns the section as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{section}{}{key}: {reason}", if .key.is_empty() { "" } else { "." })]
pub struct InvalidKey {
    /// The section's table (`http`, `cluster`, ...).
    pub section: &'static str,
    /// The key inside the section (`idle_timeout`, `nodes[2].roles`); empty: the section.
    pub key: String,
    pub reason: String,
}

impl InvalidKey {
    pub fn new(section: &'static str, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { section, key: key.into(), reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_key_or_the_section() {
        assert_eq!(InvalidKey::new("http", "idle_timeout", "must be within 100ms..=1h").to_string(), "http.idle_timeout: must be within 100ms..=1h");
        assert_eq!(InvalidKey::new("transcode", "", "session budgets must be at least 1").to_string(), "transcode: session budgets must be at least 1");
    }
}
