//! HTTP connector: sends each document to a configured URL.
//!
//! Every request carries an `Idempotency-Key` header with the delivery id,
//! which stays the same for a (submission, target) pair across attempts and
//! restarts, so a back office that deduplicates never books an application
//! twice.
//!
//! [`Client`] (TLS, authentication, OAuth2 token cache) is shared with the
//! SOAP connector.

mod client;
mod config;

use std::collections::BTreeMap;
use std::time::Duration;

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery, Outcome, Payload, Unhealthy, short_text};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Deserialize;

pub use client::{Client, ClientError, read_limited};
pub use config::{AuthConfig, ClientAuth, HttpConfig, OAuth2Config, ReceiptConfig, StatusOutcome, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    #[error("url {0:?} is not an absolute http(s) URL")]
    BadUrl(String),
    #[error("method {0:?} is not supported (use POST, PUT or PATCH)")]
    BadMethod(String),
    #[error("status_outcomes: {0} is not an HTTP status code")]
    BadStatus(u16),
    #[error("content_type {0:?} is not a valid header value")]
    BadContentType(String),
    #[error("headers: {0:?} is not a valid header")]
    BadHeader(String),
    #[error("receipt: {0}")]
    BadReceipt(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl ConnectorConfig for HttpConfig {
    type Connector = HttpConnector;
    type Error = HttpConfigError;

    fn build(&self, context: &Context) -> Result<HttpConnector, HttpConfigError> {
        HttpConnector::new(self, context)
    }
}

/// Parses an absolute `http(s)` URL.
pub fn http_url(url: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

pub struct HttpConnector {
    client: Client,
    url: reqwest::Url,
    method: reqwest::Method,
    headers: HeaderMap,
    content_type: Option<HeaderValue>,
    status_outcomes: BTreeMap<u16, StatusOutcome>,
    receipt: Option<ReceiptConfig>,
}

impl HttpConnector {
    pub fn new(config: &HttpConfig, context: &Context) -> Result<Self, HttpConfigError> {
        let url = http_url(&config.url).ok_or_else(|| HttpConfigError::BadUrl(config.url.clone()))?;
        let method = match config.method.to_ascii_uppercase().as_str() {
            "POST" => reqwest::Method::POST,
            "PUT" => reqwest::Method::PUT,
            "PATCH" => reqwest::Method::PATCH,
            _ => return Err(HttpConfigError::BadMethod(config.method.clone())),
        };
        let content_type = config
            .content_type
            .as_deref()
            .map(|ct| HeaderValue::from_str(ct).map_err(|_| HttpConfigError::BadContentType(ct.to_owned())))
            .transpose()?;
        if let Some(bad) = config.status_outcomes.keys().find(|code| !(100..=599).contains(*code)) {
            return Err(HttpConfigError::BadStatus(*bad));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let bad = || HttpConfigError::BadHeader(name.clone());
            headers.insert(HeaderName::try_from(name.as_str()).map_err(|_| bad())?, HeaderValue::from_str(value).map_err(|_| bad())?);
        }
        match &config.receipt {
            Some(ReceiptConfig::Header(name)) if HeaderName::try_from(name.as_str()).is_err() => {
                return Err(HttpConfigError::BadReceipt(format!("{name:?} is not a header name")));
            }
            Some(ReceiptConfig::Json(pointer)) if !(pointer.is_empty() || pointer.starts_with('/')) => {
                return Err(HttpConfigError::BadReceipt(format!("{pointer:?} is not a JSON pointer such as /id")));
            }
            _ => {}
        }
        let client = Client::new(config.timeout, &config.tls, config.auth.as_ref(), context)?;
        Ok(Self {
            client,
            url,
            method,
            headers,
            content_type,
            status_outcomes: config.status_outcomes.clone(),
            receipt: config.receipt.clone(),
        })
    }

    fn headers(&self, delivery: &Delivery, content_type: &str) -> HeaderMap {
        let mut headers = self.headers.clone();
        let content_type = self.content_type.clone().unwrap_or_else(|| {
            HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"))
        });
        headers.insert(CONTENT_TYPE, content_type);
        let id = HeaderValue::from_str(&delivery.delivery_id.to_string()).expect("a UUID is a valid header value");
        headers.insert(HeaderName::from_static("idempotency-key"), id);
        let submission = HeaderValue::from_str(&delivery.submission_id.to_string()).expect("a UUID is a valid header value");
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
            return Outcome::permanent("the http connector sends one document; map to a zip instead of a folder");
        };
        let headers = self.headers(delivery, content_type);
        let sent = self
            .client
            .send(|http| http.request(self.method.clone(), self.url.clone()).headers(headers.clone()).body(body.clone()))
            .await;
        match sent {
            Ok(response) => self.classify(response).await,
            Err(outcome) => outcome,
        }
    }

    async fn probe(&self) -> Result<(), Unhealthy> {
        self.client.probe(&self.url).await
    }
}

impl HttpConnector {
    /// Maps an HTTP answer onto an outcome. Of the answer's body only the
    /// receipt and the `title` of an RFC 9457 problem document are kept:
    /// titles name the kind of problem, while other fields and error pages
    /// of back offices echo personal data.
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
            StatusOutcome::Delivered => {
                let receipt = receipt(&self.receipt, response).await;
                Outcome::delivered(text).with_receipt(receipt)
            }
            StatusOutcome::Transient => Outcome::Transient { reason: text, retry_after: retry_after(response.headers()) },
            StatusOutcome::Permanent => {
                if let Some(title) = problem_title(response).await {
                    text = format!("{text}: {title}");
                }
                Outcome::permanent(text)
            }
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare and ignored).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs)
}

/// The longest receipt kept: case numbers and URLs, not documents.
const MAX_RECEIPT: usize = 200;

async fn receipt(config: &Option<ReceiptConfig>, response: reqwest::Response) -> Option<String> {
    let value = match config.as_ref()? {
        ReceiptConfig::Header(name) => response.headers().get(name.as_str())?.to_str().ok()?.to_owned(),
        ReceiptConfig::Json(pointer) => {
            let body = read_limited(response, 64 * 1024).await?;
            match serde_json::from_slice::<serde_json::Value>(&body).ok()?.pointer(pointer)? {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return None,
            }
        }
    };
    let value = short_text(value.trim(), MAX_RECEIPT);
    (!value.is_empty()).then_some(value)
}

/// The `title` of a problem+json answer, shortened; `None` for any other
/// answer.
async fn problem_title(response: reqwest::Response) -> Option<String> {
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/problem+json"));
    if !is_problem {
        return None;
    }
    let body = read_limited(response, 16 * 1024).await?;
    #[derive(Deserialize)]
    struct Problem {
        title: Option<String>,
    }
    let title = short_text(&serde_json::from_slice::<Problem>(&body).ok()?.title?, 200);
    (!title.is_empty()).then_some(title)
}

#[cfg(test)]
mod tests;
