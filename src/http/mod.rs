//! The HTTP wing: every surface amtsbote serves over HTTP, side by side.
//!
//! * [`intake`]: the submission API, the HTTP source of the
//!   [`crate::admission`] path, and the OpenAPI document.
//! * [`operator`]: the operator API (parked deliveries, audit, search).
//! * [`dashboard`]: the operators' dashboard.
//! * [`health`]: `/healthz`, `/readyz` and `/metrics`.
//!
//! No surface imports another. What they share is here, below them:
//! [`connections`] (the accept loop that bounds every connection),
//! [`tls`] (HTTPS and client certificates), [`search`] (the ledger search
//! parameters), [`problem`] (RFC 9457 problem documents) and
//! [`HttpSettings`]; or further down: who may see what
//! ([`crate::access`]).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

pub mod connections;
pub mod dashboard;
pub mod fit_connect;
pub mod health;
pub mod intake;
pub mod operator;
pub mod problem;
pub mod search;
pub mod tls;

use tls::TlsSettings;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address the intake API listens on (default `127.0.0.1:8080`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes (default 40 MiB, enough for
    /// a building application with 25 MiB of attachments in base64).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most attachments in one submission (default 100).
    #[serde(default = "default_max_attachments")]
    pub max_attachments: usize,
    /// Largest attachment in bytes, decoded (default 25 MiB).
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: usize,
    /// Deepest nesting of arrays and objects in JSON form data (default
    /// 32, at most 100; forms rarely go past 6).
    #[serde(default = "default_max_json_depth", deserialize_with = "json_depth_limit")]
    pub max_json_depth: usize,
    /// Memory for request bodies that intake holds at once, in MiB
    /// (default 128; at least `max_body_bytes`). A submission whose
    /// declared size does not fit gets `503 busy` with `Retry-After`
    /// before its body is read: a burst of large uploads waits at the
    /// senders, not in amtsbote's memory.
    #[serde(default = "default_intake_memory_mib")]
    pub intake_memory_mib: usize,
    /// Longest a submission's body may take to arrive, in all (default
    /// `5m`: 40 MiB at a little over 1 Mbit/s). A slower upload gets `408` and
    /// gives its room back.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub body_timeout: Duration,
    /// Longest a client may take to send a request's headers (default
    /// `10s`), counted from the connection's start or the end of its
    /// previous response: so it is also how long an idle keep-alive
    /// connection stays open. A slower client's connection is closed.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub header_timeout: Duration,
    /// Most connections the listener keeps open at once (default 1000,
    /// at least 16). One more is taken by closing the longest-open
    /// connection that has no request in progress (idle, or still sending
    /// its headers); with every connection busy, a new one is closed at
    /// once. amtsbote raises its open-file limit at start and lowers this
    /// if the limit leaves too little room for the broker, the ledger, the
    /// blob store and the connectors (see [`connections`]).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTPS instead of plain HTTP, optionally with client certificates
    /// for senders; see [`TlsSettings`]. Without it, put amtsbote behind a
    /// proxy that terminates TLS.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}


impl HttpSettings {
    /// The limits intake holds each submission to.
    pub fn submission_limits(&self) -> crate::submission::Limits {
        crate::submission::Limits {
            attachments: self.max_attachments,
            attachment_bytes: self.max_attachment_bytes,
            json_depth: self.max_json_depth,
        }
    }
}


impl Default for HttpSettings {
    fn default() -> Self {
        let limits = crate::submission::Limits::default();
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_attachments: limits.attachments,
            max_attachment_bytes: limits.attachment_bytes,
            max_json_depth: limits.json_depth,
            intake_memory_mib: default_intake_memory_mib(),
            body_timeout: default_body_timeout(),
            header_timeout: default_header_timeout(),
            max_connections: default_max_connections(),
            tls: None,
        }
    }
}


fn default_listen() -> SocketAddr {
    ([127, 0, 0, 1], 8080).into()
}

fn default_intake_memory_mib() -> usize {
    128
}

fn default_body_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_connections() -> usize {
    1000
}

fn default_max_body_bytes() -> usize {
    40 * 1024 * 1024
}

fn default_max_attachments() -> usize {
    crate::submission::Limits::default().attachments
}

fn default_max_attachment_bytes() -> usize {
    crate::submission::Limits::default().attachment_bytes
}

fn default_max_json_depth() -> usize {
    crate::submission::Limits::default().json_depth
}

/// serde_json reads at most 128 levels; the queued message nests the form
/// one level deeper than intake sees it, and the limit leaves room.
fn json_depth_limit<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let depth = usize::deserialize(deserializer)?;
    if !(1..=100).contains(&depth) {
        return Err(serde::de::Error::custom(format!("max_json_depth must be 1 to 100, not {depth}")));
    }
    Ok(depth)
}
