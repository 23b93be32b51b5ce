//! HTTP connector: POSTs each document to a configured URL.
//!
//! Every request carries an `Idempotency-Key` header with the delivery id,
//! which stays the same for a (submission, target) pair across attempts and
//! restarts, so a back office that deduplicates never books an application
//! twice.

use std::collections::BTreeMap;
use std::time::Duration;

use amtsbote_connector::{Connector, Delivery, Outcome, Payload};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Deserialize;

/// Deliver by HTTP request.
///
/// ```yaml
/// connector:
///   http:
///     url: https://fachverfahren.example.de/api/gewerbe
///     timeout_secs: 30
///     status_outcomes:
///       409: delivered   # "already exists": the back office has it
///       423: transient   # locked for maintenance: try again later
/// ```
///
/// Without `status_outcomes`: 2xx is delivered; 5xx, 408 and 429 are
/// transient (their `Retry-After` in seconds is honoured); every other
/// status is permanent, and so are redirects, which are not followed.
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
    /// Overrides the outcome of single status codes: `delivered`,
    /// `transient` or `permanent`.
    #[serde(default)]
    pub status_outcomes: BTreeMap<u16, StatusOutcome>,
}

/// What an HTTP status means for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusOutcome {
    Delivered,
    Transient,
    Permanent,
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
    #[error("status_outcomes: {0} is not an HTTP status code")]
    BadStatus(u16),
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
    status_outcomes: BTreeMap<u16, StatusOutcome>,
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
        if let Some(bad) = config.status_outcomes.keys().find(|code| !(100..=599).contains(*code)) {
            return Err(HttpConfigError::BadStatus(*bad));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .connect_timeout(Duration::from_secs(config.timeout_secs.min(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, url, method, content_type, status_outcomes: config.status_outcomes.clone() })
    }

    fn headers(&self, delivery: &Delivery, content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let content_type = self.content_type.clone().unwrap_or_else(|| {
            HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"))
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
        let Payload::Document { content_type, body } = &delivery.payload else {
            // `amtsbote check` refuses such a configuration; this guards
            // against a parked folder package replayed to a changed target.
            return Outcome::Permanent { reason: "the http connector sends one document; map to a zip instead of a folder".into() };
        };
        let request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers(delivery, content_type))
            .body(body.clone());
        match request.send().await {
            Ok(response) => self.classify(response).await,
            Err(error) => Outcome::Transient { reason: describe(&error), retry_after: None },
        }
    }
}

impl HttpConnector {
    /// Maps an HTTP answer onto an outcome. Of the answer's body only the
    /// `title` of an RFC 9457 problem document is kept: titles name the
    /// kind of problem, while other fields and error pages of back offices
    /// echo personal data.
    async fn classify(&self, response: reqwest::Response) -> Outcome {
        let status = response.status();
        let code = status.as_u16();
        let default = if status.is_success() {
            StatusOutcome::Delivered
        } else if status.is_server_error() || code == 408 || code == 429 {
            StatusOutcome::Transient
        } else {
            StatusOutcome::Permanent
        };
        let configured = self.status_outcomes.get(&code).copied();
        let outcome = configured.unwrap_or(default);
        let mut text = format!("HTTP {code}");
        if configured.is_some_and(|c| c != default) {
            text.push_str(match outcome {
                StatusOutcome::Delivered => " (counted as delivered)",
                StatusOutcome::Transient => " (counted as transient)",
                StatusOutcome::Permanent => " (counted as permanent)",
            });
        }
        match outcome {
            StatusOutcome::Delivered => Outcome::Delivered { detail: text },
            StatusOutcome::Transient => {
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Outcome::Transient { reason: text, retry_after }
            }
            StatusOutcome::Permanent => {
                if let Some(title) = problem_title(response).await {
                    text = format!("{text}: {title}");
                }
                Outcome::Permanent { reason: text }
            }
        }
    }
}

/// The `title` of a problem+json answer, shortened; `None` for any other
/// answer.
async fn problem_title(mut response: reqwest::Response) -> Option<String> {
    const MAX_BODY: usize = 16 * 1024;
    const MAX_TITLE: usize = 200;
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/problem+json"));
    if !is_problem {
        return None;
    }
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return None;
        }
    }
    #[derive(Deserialize)]
    struct Problem {
        title: Option<String>,
    }
    let title = serde_json::from_slice::<Problem>(&body).ok()?.title?;
    let title: String = title.chars().filter(|c| !c.is_control()).take(MAX_TITLE).collect();
    (!title.is_empty()).then_some(title)
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
