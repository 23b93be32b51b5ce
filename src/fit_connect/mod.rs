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
pub mod settings;
mod verify;

use uuid::Uuid;

pub use api::ApiError;
pub use callback::{CallbackError, CALLBACK_MAX_AGE};
pub use receive::{DestinationHealth, FitConnect, FitConnectError, Shared};
pub use settings::{DestinationConfig, FitConnectSettings};

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
