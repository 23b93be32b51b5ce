//! FIT-Connect: receiving submissions from FITKO's national delivery
//! service, as the receiving system ("subscriber") of one or more
//! destinations.
//!
//! Per destination one task polls the Submission API (v2) for submissions
//! waiting for it, and a callback from FIT-Connect wakes it early. Each
//! submission is fetched, decrypted and checked ([`verify`]) as FITKO's
//! SDK checks before it accepts, and then either
//! - admitted through the same [`crate::admission`] path as HTTP intake
//!   (ledger, claim check, confirmed publish), with the FIT-Connect
//!   submission id as its idempotency key, and only then accepted; or
//! - rejected with FIT-Connect's problem types; nothing is queued.
//!
//! The decision is recorded in the ledger before it is sent
//! ([`crate::store::Store::decide_fit_connect`]), so a restart sends the
//! recorded decision again instead of deciding anew, and a `409` to a
//! decision whose answer was lost counts as sent. A submission admitted
//! before a crash is found again by its idempotency key and only
//! accepted. Nothing of a submission's content is logged.

mod api;
mod callback;
mod decision;
mod metadata;
mod problems;
mod receive;
mod verify;

use std::collections::BTreeMap;
use std::time::Duration;

use amtsbote_connector::SecretRef;
use amtsbote_connector_http::TlsConfig;
use serde::Deserialize;
use uuid::Uuid;

pub use api::ApiError;
pub use callback::{CallbackError, CALLBACK_MAX_AGE};
pub use receive::{DestinationHealth, FitConnect, FitConnectError, Shared};

use crate::domain::SenderName;

/// FITKO's test environment, the default: production is set explicitly.
pub const TEST_SUBMISSION_API: &str = "https://test.fit-connect.fitko.dev/submission-api";
pub const TEST_TOKEN_URL: &str = "https://auth-testing.fit-connect.fitko.dev/token";

/// Receiving submissions from FIT-Connect, FITKO's national delivery
/// service.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FitConnectSettings {
    /// The Submission API (default FITKO's test environment,
    /// `https://test.fit-connect.fitko.dev/submission-api`; production is
    /// `https://prod.fit-connect.fitko.net/submission-api`). amtsbote
    /// uses its version 2 paths (`/v2/...`).
    #[serde(default = "default_submission_api")]
    pub submission_api: String,
    /// The OAuth 2.0 token endpoint (default the test environment's,
    /// `https://auth-testing.fit-connect.fitko.dev/token`; production:
    /// `https://auth-prod.fit-connect.fitko.net/token`).
    #[serde(default = "default_token_url")]
    pub token_url: String,
    /// How often each destination is asked for waiting submissions
    /// (default `5m`). A callback from FIT-Connect wakes it at once.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    /// Longest one request to FIT-Connect may take (default `60s`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// TLS towards FIT-Connect: further CA certificates (`ca`), for a
    /// proxy that inspects TLS or a test service.
    #[serde(default)]
    pub tls: TlsConfig,
    /// The destinations (Zustellpunkte) whose submissions this amtsbote
    /// receives, by name. The name is recorded as the sender of their
    /// submissions and names their metrics; it is also the last part of
    /// the callback URL (`/v1/fit-connect/callbacks/<name>`).
    pub destinations: BTreeMap<SenderName, DestinationConfig>,
}

/// One destination, as registered in FITKO's self-service portal.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// The destination's id (a UUID).
    pub id: Uuid,
    /// The API client's id, from the self-service portal.
    pub client_id: String,
    /// The API client's secret.
    pub client_secret: SecretRef,
    /// The region (ARS, 12 digits, or AGS, 8 digits) this destination
    /// serves: its submissions are routed by it and by their service key.
    pub region: String,
    /// The private decryption keys (JWK, `RSA-OAEP-256`), as
    /// `amtsbote keys fit-connect` writes them. A submission's key is
    /// chosen by the `kid` its sender encrypted for, so during a key
    /// rollover list the new key and keep the old one until no submission
    /// encrypted for it waits.
    pub decryption_keys: Vec<SecretRef>,
    /// The private signing key (JWK, `PS512`) whose public half is the
    /// destination's signature key: it signs the accept and reject events.
    pub signing_key: SecretRef,
    /// The callback secret set in the self-service portal. With it,
    /// FIT-Connect's callbacks to `/v1/fit-connect/callbacks/<name>` are
    /// taken (and answered 401 without it); a callback only wakes the
    /// poller, it never carries a submission.
    #[serde(default)]
    pub callback_secret: Option<SecretRef>,
}

fn default_submission_api() -> String {
    TEST_SUBMISSION_API.into()
}
fn default_token_url() -> String {
    TEST_TOKEN_URL.into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

/// The files `amtsbote keys fit-connect` writes.
#[derive(Debug)]
pub struct KeyFiles {
    /// Configure as `decryption_keys` and `signing_key` (secrets: mode 0600).
    pub private: Vec<std::path::PathBuf>,
    /// Upload to the self-service portal: the encryption key and the
    /// signature key of the destination.
    pub public: Vec<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path}: exists already; keys are never overwritten")]
    Exists { path: String },
    #[error(transparent)]
    Jose(#[from] crate::jose::JoseError),
}

/// Makes a destination's two key pairs (RSA-4096: one to decrypt, one to
/// sign) in `dir`, as JWKs with a new UUID as `kid` each: the private
/// halves for amtsbote, the public halves for FITKO's self-service portal.
pub fn make_keys(dir: &std::path::Path) -> Result<KeyFiles, KeysError> {
    use crate::jose::{KeyPurpose, generate};
    let mut files = KeyFiles { private: Vec::new(), public: Vec::new() };
    let pairs = [("encryption", KeyPurpose::Encryption), ("signing", KeyPurpose::Signing)];
    let paths: Vec<_> = pairs
        .iter()
        .flat_map(|(name, _)| [dir.join(format!("{name}.private.jwk.json")), dir.join(format!("{name}.public.jwk.json"))])
        .collect();
    if let Some(existing) = paths.iter().find(|path| path.exists()) {
        return Err(KeysError::Exists { path: existing.display().to_string() });
    }
    std::fs::create_dir_all(dir).map_err(|source| KeysError::Write { path: dir.display().to_string(), source })?;
    for (name, purpose) in pairs {
        let (private, public) = generate(&Uuid::new_v4().to_string(), purpose)?;
        let private_path = dir.join(format!("{name}.private.jwk.json"));
        let public_path = dir.join(format!("{name}.public.jwk.json"));
        write_new(&private_path, &serde_json::to_string_pretty(&private).expect("a JWK serializes"), 0o600)?;
        write_new(&public_path, &serde_json::to_string_pretty(&public).expect("a JWK serializes"), 0o644)?;
        files.private.push(private_path);
        files.public.push(public_path);
    }
    Ok(files)
}

fn write_new(path: &std::path::Path, text: &str, mode: u32) -> Result<(), KeysError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let error = |source| KeysError::Write { path: path.display().to_string(), source };
    let mut file = options.open(path).map_err(error)?;
    file.write_all(text.as_bytes()).and_then(|()| file.write_all(b"\n")).map_err(error)
}
