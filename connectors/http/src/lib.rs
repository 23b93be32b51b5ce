//! HTTP connector: POSTs each document to a configured URL.
//!
//! Every request carries an `Idempotency-Key` header with the delivery id,
//! which stays the same for a (submission, target) pair across attempts and
//! restarts, so a back office that deduplicates never books an application
//! twice.

use std::time::Duration;

use amtsbote_connector::{Connector, Delivery, Outcome};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Deserialize;

/// Deliver by HTTP request.
///
/// ```yaml
/// connector:
///   http:
///     url: https://fachverfahren.example.de/api/gewerbe
///     timeout_secs: 30
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where documents are sent (`http` or `https`).
    pub url: String,
    /// HTTP method: `POST` (default) or `PUT`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Overrides the content type that the mapping declares.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Upper bound for one attempt, connect to last byte of the answer.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_method() -> String {
    "POST".to_owned()
}

fn default_timeout_secs() -> u64 {
    30
}

#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    #[error("url {0:?} is not an absolute http(s) URL")]
    BadUrl(String),
    #[error("method {0:?} is not supported (use POST or PUT)")]
    BadMethod(String),
    #[error("timeout_secs must be between 1 and 3600")]
    BadTimeout,
    #[error("content_type {0:?} is not a valid header value")]
    BadContentType(String),
    #[error("could not build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

pub struct HttpConnector {
    client: reqwest::Client,
    url: reqwest::Url,
    method: reqwest::Method,
    content_type: Option<HeaderValue>,
}

impl HttpConnector {
    pub fn new(config: &HttpConfig) -> Result<Self, HttpConfigError> {
        let url = reqwest::Url::parse(&config.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| HttpConfigError::BadUrl(config.url.clone()))?;
        let method = match config.method.to_ascii_uppercase().as_str() {
            "POST" => reqwest::Method::POST,
            "PUT" => reqwest::Method::PUT,
            _ => return Err(HttpConfigError::BadMethod(config.method.clone())),
        };
        if !(1..=3600).contains(&config.timeout_secs) {
            return Err(HttpConfigError::BadTimeout);
        }
        let content_type = config
            .content_type
            .as_deref()
            .map(|ct| {
                HeaderValue::from_str(ct).map_err(|_| HttpConfigError::BadContentType(ct.to_owned()))
            })
            .transpose()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .connect_timeout(Duration::from_secs(config.timeout_secs.min(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, url, method, content_type })
    }

    fn headers(&self, delivery: &Delivery) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let content_type = self.content_type.clone().unwrap_or_else(|| {
            HeaderValue::from_str(&delivery.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"))
        });
        headers.insert(CONTENT_TYPE, content_type);
        let id = HeaderValue::from_str(&delivery.delivery_id.to_string())
            .expect("a UUID is a valid header value");
        headers.insert(HeaderName::from_static("idempotency-key"), id);
        let submission = HeaderValue::from_str(&delivery.submission_id.to_string())
            .expect("a UUID is a valid header value");
        headers.insert(HeaderName::from_static("x-amtsbote-submission"), submission);
        headers
    }
}

#[async_trait::async_trait]
impl Connector for HttpConnector {
    async fn deliver(&self, delivery: &Delivery) -> Outcome {
        let request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers(delivery))
            .body(delivery.body.clone());
        match request.send().await {
            Ok(response) => classify(response.status(), response.headers()),
            Err(error) => Outcome::Transient { reason: describe(&error), retry_after: None },
        }
    }
}

/// Maps an HTTP answer onto an outcome; the body of the answer is not read
/// into the outcome because back offices echo personal data in error pages.
fn classify(status: reqwest::StatusCode, headers: &HeaderMap) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        return Outcome::Delivered { detail: format!("HTTP {code}") };
    }
    let transient = status.is_server_error() || code == 408 || code == 429;
    if transient {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Outcome::Transient { reason: format!("HTTP {code}"), retry_after }
    } else {
        Outcome::Permanent { reason: format!("HTTP {code}") }
    }
}

fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The URL is configuration, not personal data; the error chain may hold
    // OS details that help the operator.
    let mut text = format!("{kind}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests;
