//! The `fit_connect:` section of the configuration. Apart from the
//! source, so that the configuration's root can name it without reaching
//! up into a source (ARCHITECTURE.md, "Layers").

use std::collections::BTreeMap;
use std::time::Duration;

use amtsbote_connector::SecretRef;
use amtsbote_connector_http::TlsConfig;
use serde::Deserialize;
use uuid::Uuid;

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
    /// A folder with FIT-Connect's metadata schemas
    /// (`https://schema.fitko.de/fit-connect/metadata/<version>/metadata.schema.json`),
    /// one file per version the destinations accept, found by their `$id`;
    /// relative to the config file. With it, metadata is validated against
    /// the version it names and a version not in the folder is rejected
    /// (`unsupported-schema`); without it, metadata is held to what
    /// amtsbote reads of it.
    #[serde(default)]
    pub metadata_schemas: Option<std::path::PathBuf>,
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
    /// taken (without it that URL answers 404); a callback only wakes the
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


/// The destinations whose names a sender has too: the ledger records both
/// as the sender, and a sender could read the destination's submissions.
pub fn names_taken_by_senders<'a>(settings: &'a FitConnectSettings, senders: impl IntoIterator<Item = &'a SenderName>) -> Vec<String> {
    let senders: Vec<&SenderName> = senders.into_iter().collect();
    settings
        .destinations
        .keys()
        .filter(|name| senders.contains(name))
        .map(|name| format!("fit_connect: destinations: {name}: a sender has this name too; give the destination another"))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::domain::SenderName;
    use super::{FitConnectSettings, names_taken_by_senders};

    #[test]
    fn a_destination_may_not_share_its_name_with_a_sender() {
        let yaml = "destinations:\n  stadt-a:\n    id: 5b0f6e43-3c1e-4d9a-9b0e-6f2d8c1a7e55\n    client_id: c\n    client_secret: { env: X }\n    region: \"053150000000\"\n    decryption_keys: [{ env: Y }]\n    signing_key: { env: Z }\n";
        let settings: FitConnectSettings = crate::yaml::parse_yaml(yaml).unwrap();
        let senders = [SenderName::parse("oaa").unwrap(), SenderName::parse("stadt-a").unwrap()];
        let clashes = names_taken_by_senders(&settings, senders.iter());
        assert_eq!(clashes.len(), 1);
        assert!(clashes[0].contains("stadt-a"), "{clashes:?}");
        assert!(names_taken_by_senders(&settings, senders[..1].iter()).is_empty());
    }
}
