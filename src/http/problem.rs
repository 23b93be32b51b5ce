//! Problem details (RFC 9457) for every error answer of the API.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::submission::FieldError;

/// An error answer. `type` URIs are stable and documented in the README.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    #[serde(serialize_with = "as_u16")]
    pub status: StatusCode,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// The `WWW-Authenticate` challenge of a 401.
    #[serde(skip)]
    pub challenge: Option<&'static str>,
}

fn as_u16<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://amtsbote.dev/problems/{slug}"),
            title,
            status,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            challenge: None,
        }
    }

    /// A problem with fields: `detail` is `lead` followed by the fields'
    /// pointers, and `errors` says what is wrong with each.
    pub fn fields(status: StatusCode, slug: &str, title: &'static str, lead: &str, errors: Vec<FieldError>) -> Self {
        let fields: Vec<&str> = errors.iter().map(|e| e.pointer.trim_start_matches("#/")).collect();
        let detail = format!("{lead}: {}", fields.join(", "));
        Self::new(status, slug, title, detail).with_errors(errors)
    }

    /// The last part of the type URI (`invalid-submission`).
    pub fn slug(&self) -> &str {
        self.kind.rsplit('/').next().unwrap_or_default()
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn challenge(mut self, scheme: &'static str) -> Self {
        self.challenge = Some(scheme);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).expect("a problem serializes");
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(scheme) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        response
    }
}
