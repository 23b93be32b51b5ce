//! The `http:` connector block. The doc comments here are the user
//! documentation (README, "Connectors").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use amtsbote_connector::SecretRef;
use serde::Deserialize;

/// Deliver by HTTP request.
///
/// ```yaml
/// connector:
///   http:
///     url: https://fachverfahren.example.de/api/gewerbe
///     headers: { X-Verfahren: gewerbe }
///     timeout: 30s
///     auth:
///       oauth2:
///         token_url: https://login.example.de/oauth2/token
///         client_id: amtsbote
///         client_secret: { file: /run/secrets/fachverfahren-client-secret }
///     tls:
///       ca: /etc/amtsbote/kommunal-ca.pem
///     status_outcomes:
///       409: delivered   # "already exists": the back office has it
///       423: transient   # locked for maintenance: try again later
///     receipt: { json: /vorgangsnummer }
/// ```
///
/// Without `status_outcomes`: 2xx is delivered; 5xx, 408 and 429 are
/// transient (their `Retry-After` in seconds is honoured); every other
/// status is permanent, and so are redirects, which are not followed.
/// Every request carries `Idempotency-Key: <delivery id>` (the same on every
/// attempt) and `X-Amtsbote-Submission: <submission id>`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where documents are sent (`http` or `https`).
    pub url: String,
    /// HTTP method: `POST` (default), `PUT` or `PATCH`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Further request headers with fixed values. Secrets belong in `auth`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Overrides the content type that the mapping declares.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Upper bound for one attempt, connect to last byte of the answer
    /// (default `30s`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// How amtsbote authenticates; none by default.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// TLS settings for `https` URLs.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Overrides the outcome of single status codes: `delivered`,
    /// `transient` or `permanent`.
    #[serde(default)]
    pub status_outcomes: BTreeMap<u16, StatusOutcome>,
    /// Where the back office's reference for the new case is in its answer;
    /// it is recorded as the delivery's receipt.
    #[serde(default)]
    pub receipt: Option<ReceiptConfig>,
}

/// How amtsbote authenticates towards the back office. Every secret is a
/// reference: `{ file: PATH }` or `{ env: NAME }`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthConfig {
    /// HTTP Basic: `basic: { username: amtsbote, password: { env: DMS_PASSWORD } }`.
    Basic { username: String, password: SecretRef },
    /// A fixed bearer token: `bearer: { token: { file: /run/secrets/token } }`.
    Bearer { token: SecretRef },
    /// An API key in a header of its own:
    /// `header: { name: X-API-Key, value: { env: DMS_API_KEY } }`.
    Header { name: String, value: SecretRef },
    /// OAuth 2.0 client credentials (RFC 6749 §4.4). The token is fetched
    /// before the first delivery, shared by all deliveries, renewed shortly
    /// before it expires and once more when the back office answers 401.
    #[serde(rename = "oauth2")]
    OAuth2(OAuth2Config),
}

/// OAuth 2.0 client credentials.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// The authorization server's token endpoint.
    pub token_url: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    /// Space-separated scopes to ask for, if the server wants any.
    #[serde(default)]
    pub scope: Option<String>,
    /// How the client authenticates at the token endpoint: `basic`
    /// (default, `client_secret_basic`) or `post` (`client_secret_post`).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Basic,
    Post,
}

/// TLS for `https` URLs. Paths are relative to the config file.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of further CA certificates to trust (a municipal PKI),
    /// besides the public roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate (chain) for mutual TLS.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// The client certificate's private key (PEM), a secret reference.
    #[serde(default)]
    pub key: Option<SecretRef>,
}

/// What an HTTP status means for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusOutcome {
    Delivered,
    Transient,
    Permanent,
}

/// Where the receipt is: `{ header: Location }` or `{ json: /id }` (a JSON
/// pointer into the answer's body, read up to 64 KiB).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ReceiptConfig {
    Header(String),
    Json(String),
}

fn default_method() -> String {
    "POST".to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl HttpConfig {
    /// A config with the defaults, for code that builds one.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            method: default_method(),
            headers: BTreeMap::new(),
            content_type: None,
            timeout: default_timeout(),
            auth: None,
            tls: TlsConfig::default(),
            status_outcomes: BTreeMap::new(),
            receipt: None,
        }
    }
}
