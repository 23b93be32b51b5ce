//! An HTTP client with TLS settings and authentication, shared by the HTTP
//! and SOAP connectors.

use std::time::{Duration, Instant};

use amtsbote_connector::{Context, Outcome, Secret, SecretError, Unhealthy, short_text};
use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use crate::config::{AuthConfig, ClientAuth, OAuth2Config, TlsConfig};

/// A client that could not be built. Names files and settings, never a
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("{what}: {message}")]
    Tls { what: &'static str, message: String },
    #[error("tls: `certificate` and `key` go together")]
    HalfIdentity,
    #[error("auth: header name {0:?} is not valid")]
    BadHeaderName(String),
    #[error("auth: the secret is not a valid header value")]
    BadSecretValue,
    #[error("auth: oauth2: token_url {0:?} is not an absolute http(s) URL")]
    BadTokenUrl(String),
    #[error(transparent)]
    BadTimeout(#[from] amtsbote_connector::BadTimeout),
    #[error("could not build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

pub struct Client {
    http: reqwest::Client,
    auth: Option<Auth>,
    timeout: Duration,
}

enum Auth {
    /// A header whose whole value is secret (`Basic …`, `Bearer …`, a key).
    Header(HeaderName, HeaderValue),
    OAuth2(OAuth2),
}

impl Client {
    pub fn new(timeout: Duration, tls: &TlsConfig, auth: Option<&AuthConfig>, context: &Context) -> Result<Self, ClientError> {
        amtsbote_connector::check_timeout(timeout)?;
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .use_rustls_tls();
        if let Some(ca) = &tls.ca {
            let pem = context.read(ca)?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ClientError::Tls { what: "tls: ca", message: e.to_string() })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        match (&tls.certificate, &tls.key) {
            (Some(certificate), Some(key)) => {
                let mut pem = context.read(certificate)?;
                pem.push(b'\n');
                pem.extend_from_slice(context.secret(key)?.expose().as_bytes());
                // The key's own parse errors could quote it; say only where.
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|_| ClientError::Tls { what: "tls: certificate/key", message: "not a PEM certificate and private key".into() })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => return Err(ClientError::HalfIdentity),
        }
        let auth = match auth {
            None => None,
            Some(AuthConfig::Basic { username, password }) => {
                let password = context.secret(password)?;
                let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
                Some(Auth::Header(AUTHORIZATION, sensitive(&format!("Basic {encoded}"))?))
            }
            Some(AuthConfig::Bearer { token }) => {
                Some(Auth::Header(AUTHORIZATION, sensitive(&format!("Bearer {}", context.secret(token)?.expose()))?))
            }
            Some(AuthConfig::Header { name, value }) => {
                let name = HeaderName::try_from(name.as_str()).map_err(|_| ClientError::BadHeaderName(name.clone()))?;
                Some(Auth::Header(name, sensitive(context.secret(value)?.expose())?))
            }
            Some(AuthConfig::OAuth2(config)) => Some(Auth::OAuth2(OAuth2::new(config, context)?)),
        };
        Ok(Self { http: builder.build()?, auth, timeout })
    }

    /// Sends the request `build` makes, authenticated. With OAuth2, a 401
    /// answer renews the token and sends once more. `Err` is the outcome
    /// when no answer came (or no token could be had). Token request,
    /// request and resend share the timeout; reading the answer's body is
    /// bounded by the same timeout on the request.
    pub async fn send(&self, build: impl Fn(&reqwest::Client) -> RequestBuilder) -> Result<Response, Outcome> {
        let exchange = async {
            let response = self.send_once(&build, false).await?;
            if response.status() == StatusCode::UNAUTHORIZED && matches!(self.auth, Some(Auth::OAuth2(_))) {
                tracing::debug!(event = "oauth2_token_refused", "the back office refused the token; renewing it");
                return self.send_once(&build, true).await;
            }
            Ok(response)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(Outcome::transient(format!("timeout: no answer within {:?}", self.timeout))))
    }

    async fn send_once(&self, build: &impl Fn(&reqwest::Client) -> RequestBuilder, renew: bool) -> Result<Response, Outcome> {
        let mut request = build(&self.http);
        match &self.auth {
            None => {}
            Some(Auth::Header(name, value)) => request = request.header(name, value.clone()),
            Some(Auth::OAuth2(oauth)) => {
                let token = oauth.token(&self.http, renew).await?;
                request = request.header(AUTHORIZATION, token);
            }
        }
        request.send().await.map_err(|e| Outcome::transient(describe(e)))
    }

    /// Reachable, and our credentials accepted: any answer but a 5xx, 401,
    /// 403 or 407 to a `HEAD` request (404, 405 and 501 still prove both:
    /// many back offices implement no `HEAD`, and 501 says just that).
    pub async fn probe(&self, url: &reqwest::Url) -> Result<(), Unhealthy> {
        let response = self.send(|http| http.head(url.clone())).await.map_err(|outcome| Unhealthy(outcome.text().to_owned()))?;
        let status = response.status();
        let head_not_implemented = status == reqwest::StatusCode::NOT_IMPLEMENTED;
        if (status.is_server_error() && !head_not_implemented) || matches!(status.as_u16(), 401 | 403 | 407) {
            return Err(Unhealthy(format!("HTTP {}", status.as_u16())));
        }
        Ok(())
    }
}

/// A header value that HTTP libraries leave out of their debug output.
fn sensitive(value: &str) -> Result<HeaderValue, ClientError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| ClientError::BadSecretValue)?;
    value.set_sensitive(true);
    Ok(value)
}

/// OAuth 2.0 client credentials with a cached token.
struct OAuth2 {
    token_url: reqwest::Url,
    client_id: String,
    client_secret: Secret,
    scope: Option<String>,
    client_auth: ClientAuth,
    /// One lock for fetching, so that deliveries starting together wait for
    /// one token request instead of sending one each.
    cached: tokio::sync::Mutex<Option<Token>>,
}

struct Token {
    header: HeaderValue,
    renew_at: Instant,
}

/// No `Debug`: it holds the token.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

impl OAuth2 {
    fn new(config: &OAuth2Config, context: &Context) -> Result<Self, ClientError> {
        let token_url = crate::http_url(&config.token_url).ok_or_else(|| ClientError::BadTokenUrl(config.token_url.clone()))?;
        Ok(Self {
            token_url,
            client_id: config.client_id.clone(),
            client_secret: context.secret(&config.client_secret)?,
            scope: config.scope.clone(),
            client_auth: config.client_auth,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The `Authorization` value: the cached token while it is fresh, else a
    /// new one. `renew` drops the cached token first (the target refused it).
    async fn token(&self, http: &reqwest::Client, renew: bool) -> Result<HeaderValue, Outcome> {
        let mut cached = self.cached.lock().await;
        if renew {
            *cached = None;
        }
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.header.clone());
        }
        let token = self.fetch(http).await?;
        let header = token.header.clone();
        *cached = Some(token);
        Ok(header)
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<Token, Outcome> {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        let mut request = http.post(self.token_url.clone());
        match self.client_auth {
            ClientAuth::Basic => request = request.basic_auth(&self.client_id, Some(self.client_secret.expose())),
            ClientAuth::Post => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", self.client_secret.expose()));
            }
        }
        let fetched_at = Instant::now();
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| Outcome::transient(format!("OAuth2 token endpoint: {}", describe(e))))?;
        let status = response.status();
        let body = read_limited(response, 64 * 1024).await.unwrap_or_default();
        if !status.is_success() {
            let text = format!("OAuth2 token endpoint: HTTP {}{}", status.as_u16(), oauth_error_code(&body).map(|c| format!(" ({c})")).unwrap_or_default());
            return Err(if status.is_server_error() || status.as_u16() == 429 { Outcome::transient(text) } else { Outcome::permanent(text) });
        }
        // Parse errors of a token answer could quote the token: say only that.
        let answer: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| Outcome::transient("OAuth2 token endpoint: the answer is not a token response"))?;
        let header = sensitive(&format!("Bearer {}", answer.access_token))
            .map_err(|_| Outcome::transient("OAuth2 token endpoint: the token is not a valid header value"))?;
        // Renew a little early, so a token does not expire in flight.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        let renew_at = fetched_at + lifetime - (lifetime / 10).min(Duration::from_secs(60));
        tracing::debug!(event = "oauth2_token_fetched", lifetime_secs = lifetime.as_secs(), "OAuth2 token fetched");
        Ok(Token { header, renew_at })
    }
}

/// The RFC 6749 §5.2 `error` code, if the answer has one of the plain
/// shape the RFC allows; descriptions are left out.
fn oauth_error_code(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ErrorAnswer {
        error: String,
    }
    let code = serde_json::from_slice::<ErrorAnswer>(body).ok()?.error;
    (code.len() <= 40 && code.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then_some(code)
}

/// Reads at most `limit` bytes of a body; `None` if it is longer or breaks.
pub async fn read_limited(mut response: Response, limit: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return None;
        }
    }
    Some(body)
}

/// Describes a failed request: its kind and the error chain (OS details
/// help the operator; the URL is configuration).
fn describe(mut error: reqwest::Error) -> String {
    // A query may carry a credential (`?apikey=`, a presigned request's
    // signature); the host and path say which request it was.
    if let Some(url) = error.url_mut() {
        url.set_query(None);
    }
    let error = &error;
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut text = format!("{kind}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    short_text(&text, 500)
}
