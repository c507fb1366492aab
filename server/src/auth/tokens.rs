//! API tokens and worker sessions: random secrets shown once, stored only as
//! their sha256 (a leaked table gives no usable token).

use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// What a token's text starts with: `camp_` for API tokens, `camps_` for worker sessions.
const TOKEN_PREFIX: &str = "camp_";
const SESSION_PREFIX: &str = "camps_";

pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// A new API token (256 random bits).
pub fn new_token() -> String {
    secret(TOKEN_PREFIX)
}

/// A new worker session secret (256 random bits).
pub fn new_session() -> String {
    secret(SESSION_PREFIX)
}

#[derive(Debug, thiserror::Error)]
#[error("--expires: '{text}' is not a duration such as 90d, 12h or 30m ({source})")]
pub struct ExpiryError {
    text: String,
    source: humantime::DurationError,
}

/// `90d`, `12h`, `1w 2d`: how long a new token stays valid.
pub fn parse_expiry(text: &str) -> Result<Duration, ExpiryError> {
    humantime::parse_duration(text.trim()).map_err(|source| ExpiryError { text: text.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("camp_") && a.len() == 5 + 64);
        assert!(new_session().starts_with("camps_"));
        assert_eq!(token_sha256(&a).len(), 64);
        assert_ne!(token_sha256(&a), token_sha256(&b));
    }

    #[test]
    fn expiries_read_as_durations() {
        assert_eq!(parse_expiry("90d").unwrap(), Duration::from_secs(90 * 86_400));
        assert_eq!(parse_expiry("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert!(parse_expiry("soon").is_err());
    }
}
