//! Relay authentication: a node that relays a publish to the stream's owner signs the
//! stream name and an expiry with the federation's shared secret (HMAC-SHA256), and puts
//! the token in the relayed stream key: `{stream}?exp={unix seconds}&sig={hex}`. The owner
//! checks the signature in constant time and the expiry against its own clock, so a key
//! seen once (in a capture, a log) is useless a minute later and the secret itself never
//! travels. Nodes' clocks must agree within [`CLOCK_SKEW`] (run NTP).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a relay token is valid after it is made.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// How far in the future a token's expiry may lie (clock differences between nodes).
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Bytes of the HMAC kept in the token (128 bits).
const SIGNATURE_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("relay key carries no token")]
    Missing,
    #[error("relay token is malformed")]
    Malformed,
    #[error("relay token expired {0} s ago")]
    Expired(u64),
    #[error("relay token expires too far in the future (clocks differ, or forged)")]
    TooFarAhead,
    #[error("relay token signature does not match")]
    BadSignature,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn mac(secret: &str, stream: &str, expires: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(b"rackcast-relay\0");
    mac.update(stream.as_bytes());
    mac.update(b"\0");
    mac.update(&expires.to_be_bytes());
    mac
}

/// The stream key a relay publishes `stream` with.
pub fn sign(stream: &str, secret: &str) -> String {
    sign_at(stream, secret, unix_now() + TOKEN_LIFETIME.as_secs())
}

fn sign_at(stream: &str, secret: &str, expires: u64) -> String {
    let tag = mac(secret, stream, expires).finalize().into_bytes();
    format!("{stream}?exp={expires}&sig={}", hex::encode(&tag[..SIGNATURE_BYTES]))
}

/// Checks a relayed stream key and returns the stream name it is valid for.
pub fn verify<'a>(key: &'a str, secret: &str) -> Result<&'a str, TokenError> {
    verify_at(key, secret, unix_now())
}

fn verify_at<'a>(key: &'a str, secret: &str, now: u64) -> Result<&'a str, TokenError> {
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
    mac(secret, stream, expires).verify_truncated_left(&signature).map_err(|_| TokenError::BadSignature)?;
    if expires < now {
        return Err(TokenError::Expired(now - expires));
    }
    if expires > now + TOKEN_LIFETIME.as_secs() + CLOCK_SKEW.as_secs() {
        return Err(TokenError::TooFarAhead);
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-federation-secret-of-some-length";

    #[test]
    fn a_signed_key_verifies_for_its_stream_only() {
        let key = sign("cam", SECRET);
        assert_eq!(verify(&key, SECRET), Ok("cam"));
        assert!(!key.contains(SECRET));
        assert_eq!(verify(&key.replacen("cam", "other", 1), SECRET), Err(TokenError::BadSignature));
        assert_eq!(verify(&key, "another-secret-entirely-different"), Err(TokenError::BadSignature));
    }

    #[test]
    fn expiry_and_form_are_checked() {
        let now = 1_900_000_000;
        let key = sign_at("cam", SECRET, now - 5);
        assert_eq!(verify_at(&key, SECRET, now), Err(TokenError::Expired(5)));
        let key = sign_at("cam", SECRET, now + 3600);
        assert_eq!(verify_at(&key, SECRET, now), Err(TokenError::TooFarAhead));
        assert_eq!(verify_at("cam", SECRET, now), Err(TokenError::Missing));
        assert_eq!(verify_at("cam?secret=x", SECRET, now), Err(TokenError::Malformed));
        assert_eq!(verify_at("cam?exp=1&sig=zz", SECRET, now), Err(TokenError::Malformed));
        assert_eq!(verify_at(&format!("cam?exp={now}&sig={}", "00".repeat(16)), SECRET, now), Err(TokenError::BadSignature));
    }
}
