//! FIT-Connect's callbacks: a `POST` that says "new submissions wait",
//! authenticated with `callback-authentication`, the hex HMAC-SHA512 with
//! the destination's callback secret over `{callback-timestamp}.{body}`.
//! A callback only wakes the destination's poller; what it lists is never
//! taken as a submission.

use std::time::Duration;

use aws_lc_rs::hmac;

/// Older callbacks are refused (FITKO: not older than five minutes); so
/// are those dated further ahead than this, which no clock skew explains.
pub const CALLBACK_MAX_AGE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallbackError {
    #[error("no destination of that name takes callbacks")]
    UnknownDestination,
    #[error("the callback-timestamp or callback-authentication header is missing or malformed")]
    MissingHeaders,
    #[error("the callback-timestamp is more than five minutes off")]
    Stale,
    #[error("the callback-authentication does not match")]
    BadSignature,
}

/// Checks a callback's headers against the body with `secret`, at `now`
/// (Unix seconds). The comparison is constant-time (aws-lc's HMAC
/// verification).
pub fn authenticate(secret: &[u8], timestamp: &str, authentication: &str, body: &[u8], now: i64) -> Result<(), CallbackError> {
    let at: i64 = timestamp.trim().parse().map_err(|_| CallbackError::MissingHeaders)?;
    let tag = hex_decode(authentication.trim()).ok_or(CallbackError::MissingHeaders)?;
    if now.abs_diff(at) > CALLBACK_MAX_AGE.as_secs() {
        return Err(CallbackError::Stale);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA512, secret);
    let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
    message.extend_from_slice(timestamp.trim().as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    hmac::verify(&key, &message, &tag).map_err(|_| CallbackError::BadSignature)
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() != 128 || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA512, secret);
        let mut message = format!("{timestamp}.").into_bytes();
        message.extend_from_slice(body);
        crate::domain::hex(hmac::sign(&key, &message).as_ref())
    }

    #[test]
    fn a_callback_is_taken_only_with_its_hmac_and_a_fresh_timestamp() {
        let body = br#"{"type":"https://schema.fitko.de/fit-connect/submission-api/callbacks/new-submissions","submissions":[]}"#;
        let now = 1_700_000_000;
        let good = sign(b"secret", now, body);
        assert_eq!(authenticate(b"secret", &now.to_string(), &good, body, now + 10), Ok(()));
        assert_eq!(authenticate(b"secret", &now.to_string(), &good.to_uppercase(), body, now), Ok(()), "hex in either case");
        assert_eq!(authenticate(b"other", &now.to_string(), &good, body, now), Err(CallbackError::BadSignature));
        assert_eq!(authenticate(b"secret", &now.to_string(), &good, b"{}", now), Err(CallbackError::BadSignature));
        assert_eq!(authenticate(b"secret", &now.to_string(), &good, body, now + 301), Err(CallbackError::Stale));
        assert_eq!(authenticate(b"secret", &now.to_string(), &good, body, now - 301), Err(CallbackError::Stale));
        assert_eq!(authenticate(b"secret", "yesterday", &good, body, now), Err(CallbackError::MissingHeaders));
        assert_eq!(authenticate(b"secret", &now.to_string(), "abc", body, now), Err(CallbackError::MissingHeaders));
    }
}
