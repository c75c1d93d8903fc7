//! Signed, expiring stream keys: `{stream}?exp={unix seconds}&sig={hex}`, an HMAC-SHA256
//! over the purpose, the stream name and the expiry, keyed with a shared secret. The
//! receiver checks the signature in constant time, then the expiry against its own clock,
//! so the secret itself never travels and a key seen once (in a capture, a log) is useless
//! after it expires. The node signs for three purposes, each in its own signing domain, so
//! a signature made for one is never valid for another; two of them share a secret:
//!
//! - **Relay** (here): a node that relays a publish to the stream's owner signs it with the
//!   federation's `cluster.relay_secret`; valid for [`RELAY_LIFETIME`].
//! - **Node-to-node HTTP** (`peer.rs`): each request and answer is signed with the same
//!   `cluster.relay_secret`, per request rather than as a token.
//! - **Publish** (here): automation gets a publish key for one stream, valid up to
//!   [`PUBLISH_MAX_LIFETIME`], made with its own secret, `auth.publish_token_secret`
//!   (`rackcast token`); it fits in an RTMP URL (about 90 characters with the stream name).
//!
//! Clocks must agree within [`CLOCK_SKEW`] (run NTP).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a relay token is valid after it is made.
pub const RELAY_LIFETIME: Duration = Duration::from_secs(60);
/// The longest a publish token may be valid for.
pub const PUBLISH_MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How far in the future a token's expiry may lie (clock differences between nodes).
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Bytes of the HMAC kept in the token (128 bits).
const SIGNATURE_BYTES: usize = 16;

/// What a token is for: each purpose signs in its own domain, so a token of one is never
/// valid as the other even under the same secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Relay,
    Publish,
}

impl Purpose {
    fn domain(self) -> &'static [u8] {
        match self {
            Purpose::Relay => b"rackcast-relay\0",
            Purpose::Publish => b"rackcast-publish\0",
        }
    }

    fn max_lifetime(self) -> Duration {
        match self {
            Purpose::Relay => RELAY_LIFETIME,
            Purpose::Publish => PUBLISH_MAX_LIFETIME,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("key carries no token")]
    Missing,
    #[error("token is malformed")]
    Malformed,
    #[error("token expired {0} s ago")]
    Expired(u64),
    #[error("token expires too far in the future (clocks differ, or forged)")]
    TooFarAhead,
    #[error("token signature does not match")]
    BadSignature,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn mac(purpose: Purpose, secret: &str, stream: &str, expires: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(purpose.domain());
    mac.update(stream.as_bytes());
    mac.update(b"\0");
    mac.update(&expires.to_be_bytes());
    mac
}

/// A key for `stream`, valid for `lifetime` (at most the purpose's longest).
pub fn sign(purpose: Purpose, stream: &str, secret: &str, lifetime: Duration) -> String {
    sign_at(purpose, stream, secret, unix_now() + lifetime.min(purpose.max_lifetime()).as_secs())
}

fn sign_at(purpose: Purpose, stream: &str, secret: &str, expires: u64) -> String {
    let tag = mac(purpose, secret, stream, expires).finalize().into_bytes();
    format!("{stream}?exp={expires}&sig={}", hex::encode(&tag[..SIGNATURE_BYTES]))
}

/// Checks a signed key and returns the stream name it is valid for.
pub fn verify<'a>(purpose: Purpose, key: &'a str, secret: &str) -> Result<&'a str, TokenError> {
    verify_at(purpose, key, secret, unix_now())
}

fn verify_at<'a>(purpose: Purpose, key: &'a str, secret: &str, now: u64) -> Result<&'a str, TokenError> {
    let (stream, query) = key.split_once('?').ok_or(TokenError::Missing)?;
    let (exp, sig) = query
        .strip_prefix("exp=")
        .and_then(|q| q.split_once("&sig="))
        .ok_or(TokenError::Malformed)?;
    let expires: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
    let signature = hex::decode(sig).map_err(|_| TokenError::Malformed)?;
    if signature.len() != SIGNATURE_BYTES {
        return Err(TokenError::Malformed);
    }
    // The signature first, so that a forged key learns nothing from the expiry checks.
    mac(purpose, secret, stream, expires).verify_truncated_left(&signature).map_err(|_| TokenError::BadSignature)?;
    if expires < now {
        return Err(TokenError::Expired(now - expires));
    }
    if expires > now + purpose.max_lifetime().as_secs() + CLOCK_SKEW.as_secs() {
        return Err(TokenError::TooFarAhead);
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-federation-secret-of-some-length";

    const RELAY: Purpose = Purpose::Relay;

    #[test]
    fn a_signed_key_verifies_for_its_stream_and_purpose_only() {
        let key = sign(RELAY, "cam", SECRET, RELAY_LIFETIME);
        assert_eq!(verify(RELAY, &key, SECRET), Ok("cam"));
        assert!(!key.contains(SECRET));
        assert_eq!(verify(RELAY, &key.replacen("cam", "other", 1), SECRET), Err(TokenError::BadSignature));
        assert_eq!(verify(RELAY, &key, "another-secret-entirely-different"), Err(TokenError::BadSignature));
        assert_eq!(verify(Purpose::Publish, &key, SECRET), Err(TokenError::BadSignature), "a relay token never publishes");
        let publish = sign(Purpose::Publish, "cam", SECRET, Duration::from_secs(3600));
        assert_eq!(verify(Purpose::Publish, &publish, SECRET), Ok("cam"));
        assert_eq!(verify(RELAY, &publish, SECRET), Err(TokenError::BadSignature), "a publish token never relays");
        // A relay token's lifetime is capped at a minute, whatever is asked.
        let long = sign(RELAY, "cam", SECRET, Duration::from_secs(3600));
        let expires: u64 = long.split("exp=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
        assert!(expires <= unix_now() + RELAY_LIFETIME.as_secs());
        assert!(publish.len() < 100, "fits an RTMP URL: {publish}");
    }

    #[test]
    fn expiry_and_form_are_checked() {
        let now = 1_900_000_000;
        let key = sign_at(RELAY, "cam", SECRET, now - 5);
        assert_eq!(verify_at(RELAY, &key, SECRET, now), Err(TokenError::Expired(5)));
        let key = sign_at(RELAY, "cam", SECRET, now + 3600);
        assert_eq!(verify_at(RELAY, &key, SECRET, now), Err(TokenError::TooFarAhead));
        assert_eq!(verify_at(RELAY, "cam", SECRET, now), Err(TokenError::Missing));
        assert_eq!(verify_at(RELAY, "cam?secret=x", SECRET, now), Err(TokenError::Malformed));
        assert_eq!(verify_at(RELAY, "cam?exp=1&sig=zz", SECRET, now), Err(TokenError::Malformed));
        assert_eq!(verify_at(RELAY, &format!("cam?exp={now}&sig={}", "00".repeat(16)), SECRET, now), Err(TokenError::BadSignature));
    }
}
