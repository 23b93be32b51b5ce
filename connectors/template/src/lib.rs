//! Template connector for "Beispiel-Akte", a fictional case management
//! system with a JSON API: `POST {base_url}/vorgaenge` with
//! `{"id", "contentType", "document"}` (the document in base64) and an API
//! key; it answers 201 with `{"aktenzeichen": "…"}`, 200 or 409 when it
//! already has the case, 422 when it refuses it, 503 when it is busy.
//!
//! Copy this crate to `connectors/<your-product>/`, rename it, and replace
//! the protocol; keep the structure. `connectors/README.md` walks through
//! every step.

use std::time::Duration;

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery, Outcome, Payload, Secret, SecretRef, Unhealthy, short_text};
use base64::Engine as _;
use serde::Deserialize;

// 1. The configuration. Its doc comments are the user documentation: the
//    README's config example is taken from here. `deny_unknown_fields`
//    turns a typo into an error at `amtsbote check` instead of a silently
//    ignored setting. Secrets are `SecretRef`s, never strings.

/// Deliver to a Beispiel-Akte server.
///
/// ```yaml
/// connector:
///   beispiel-akte:
///     base_url: https://akte.example.de/api/v1
///     api_key: { file: /run/secrets/beispiel-akte-key }
///     timeout: 30s
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BeispielAkteConfig {
    /// The API's base URL (`http` or `https`).
    pub base_url: String,
    /// The API key Beispiel-Akte issued for amtsbote.
    pub api_key: SecretRef,
    /// Upper bound for one attempt (default `30s`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

// 2. Configuration errors: one `thiserror` enum, messages that name the
//    setting and never a secret's value.

#[derive(Debug, thiserror::Error)]
pub enum BeispielAkteConfigError {
    #[error("base_url {0:?} is not an absolute http(s) URL")]
    BadUrl(String),
    #[error("api_key: {0}")]
    Secret(#[from] amtsbote_connector::SecretError),
    #[error("could not build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

// 3. Building: check everything, read secrets, touch no network.

impl ConnectorConfig for BeispielAkteConfig {
    type Connector = BeispielAkteConnector;
    type Error = BeispielAkteConfigError;

    fn build(&self, context: &Context) -> Result<BeispielAkteConnector, BeispielAkteConfigError> {
        let base = reqwest::Url::parse(self.base_url.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| BeispielAkteConfigError::BadUrl(self.base_url.clone()))?;
        let client = reqwest::Client::builder().timeout(self.timeout).redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(BeispielAkteConnector { client, base, api_key: context.secret(&self.api_key)? })
    }
}

pub struct BeispielAkteConnector {
    client: reqwest::Client,
    base: reqwest::Url,
    api_key: Secret,
}

// 4. Delivering: one attempt, bounded by the timeout, answered with an
//    outcome. Transient when trying again may help, permanent when it will
//    not; texts name the problem, never the document or the key.

#[async_trait::async_trait]
impl Connector for BeispielAkteConnector {
    async fn deliver(&self, delivery: &Delivery) -> Outcome {
        let Payload::Document { content_type, body } = &delivery.payload else {
            return Outcome::permanent("Beispiel-Akte takes one document; map to a zip instead of a folder");
        };
        let request = serde_json::json!({
            // The delivery id is the same on every attempt: Beispiel-Akte
            // keeps one case per id, so a repeat creates nothing new.
            "id": delivery.delivery_id,
            "contentType": content_type,
            "document": base64::engine::general_purpose::STANDARD.encode(body),
        });
        let sent = self
            .client
            .post(format!("{}/vorgaenge", self.base))
            .bearer_auth(self.api_key.expose())
            .json(&request)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return Outcome::transient("timeout: Beispiel-Akte did not answer in time"),
            Err(e) => return Outcome::transient(format!("request failed: {}", short_text(&e.to_string(), 200))),
        };
        match response.status().as_u16() {
            201 | 200 | 409 => {
                #[derive(Deserialize)]
                struct Created {
                    aktenzeichen: Option<String>,
                }
                let status = response.status().as_u16();
                let receipt = response.json::<Created>().await.ok().and_then(|c| c.aktenzeichen).map(|a| short_text(&a, 100));
                Outcome::delivered(format!("HTTP {status}")).with_receipt(receipt)
            }
            code @ (429 | 500..=599) => Outcome::transient(format!("HTTP {code}")),
            code => Outcome::permanent(format!("HTTP {code}")),
        }
    }

    async fn probe(&self) -> Result<(), Unhealthy> {
        let response = self
            .client
            .get(format!("{}/status", self.base))
            .bearer_auth(self.api_key.expose())
            .send()
            .await
            .map_err(|e| Unhealthy(short_text(&e.to_string(), 200)))?;
        if response.status().is_success() { Ok(()) } else { Err(Unhealthy(format!("HTTP {}", response.status().as_u16()))) }
    }
}
