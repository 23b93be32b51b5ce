//! The contract between amtsbote and its connectors.
//!
//! A connector receives one [`Delivery`] (the rendered document for one
//! target) and reports an [`Outcome`]. It never acknowledges, retries or
//! parks anything itself: the worker that called it owns the message and
//! decides what happens next from the outcome. That keeps the delivery
//! guarantees in one place and lets a vendor write a connector without
//! knowing RabbitMQ.
//!
//! A connector comes as three parts, each in the connector's own crate:
//! - a config type ([`ConnectorConfig`]) with `#[serde(deny_unknown_fields)]`
//!   whose doc comments are the user documentation;
//! - the connector itself ([`Connector`]), built from the config with a
//!   [`Context`] that resolves relative paths and reads [`SecretRef`]s;
//! - its tests, among them the shared conformance suite
//!   (`amtsbote-connector-conformance`).
//!
//! See `connectors/README.md` for the vendor guide.

mod file;
mod secret;

use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

pub use file::{FileContent, FileReader, FileSource};
pub use secret::{Context, Secret, SecretError, SecretRef};

/// One rendered document on its way to one target.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The submission this document was rendered from.
    pub submission_id: Uuid,
    /// Stable for (submission, target): identical on every attempt and
    /// after a restart, so targets that deduplicate can do so. Use it (or
    /// a name derived from it) as the idempotency key towards the target.
    pub delivery_id: Uuid,
    /// The configured target name.
    pub target: String,
    /// What the mapping rendered.
    pub payload: Payload,
    /// Version (content hash) of the mapping that rendered the payload.
    pub mapping_version: String,
    /// 1 on the first attempt; counts on across retries and restarts. A
    /// delivery with `attempt > 1` may already have reached the target.
    pub attempt: u32,
}

/// A rendered document, or a package of files that belong together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// One document (XML, JSON, CSV, or a zip package) with its media type.
    Document { content_type: String, body: Bytes },
    /// A folder of files (a case for a transfer directory): relative paths
    /// with `/` between folders, checked to stay inside the folder.
    Files(Vec<PackageFile>),
}

/// One file of a [`Payload::Files`] package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    pub path: String,
    /// In memory, or (a large attachment) read from the blob store while
    /// the connector writes it: see [`FileContent`].
    pub content: FileContent,
}

impl Payload {
    /// Total size of the payload in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Document { body, .. } => body.len(),
            Payload::Files(files) => files.iter().map(|f| f.content.len() as usize).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What happened to a delivery attempt. Its texts reach the ledger, logs
/// and the operator's screen: they name the problem (status, fault code,
/// OS error), never the document's content nor a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target confirmed it has the document.
    Delivered {
        /// What the target answered, for the operator (`HTTP 201`).
        detail: String,
        /// The target's own reference for the case (a case number, a file
        /// name, a message id), when it gives one.
        receipt: Option<String>,
    },
    /// Worth trying again later: the target was unreachable, overloaded or
    /// failed on its side.
    Transient {
        reason: String,
        /// How long the target asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// Trying again will not help: the target refused the document. The
    /// delivery is parked with this reason until an operator replays it.
    Permanent { reason: String },
}

impl Outcome {
    pub fn delivered(detail: impl Into<String>) -> Self {
        Outcome::Delivered { detail: detail.into(), receipt: None }
    }

    pub fn transient(reason: impl Into<String>) -> Self {
        Outcome::Transient { reason: reason.into(), retry_after: None }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Outcome::Permanent { reason: reason.into() }
    }

    /// What the outcome says: the detail of a delivery, the reason of a
    /// failure.
    pub fn text(&self) -> &str {
        match self {
            Outcome::Delivered { detail, .. } => detail,
            Outcome::Transient { reason, .. } | Outcome::Permanent { reason } => reason,
        }
    }

    /// Adds the target's reference to a `Delivered` outcome.
    pub fn with_receipt(self, receipt: Option<String>) -> Self {
        match self {
            Outcome::Delivered { detail, .. } => Outcome::Delivered { detail, receipt },
            other => other,
        }
    }
}

/// Why a health probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unhealthy(pub String);

/// A way to hand documents to a back office.
///
/// Implementations must be cheap to share between tasks (`&self`), must
/// bound every operation with the configured timeout, and must not put the
/// document body or a secret into logs or into the outcome's texts.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Delivers one document. Called again with the same `delivery_id`
    /// after a transient outcome, a restart or a replay: the target must
    /// end up with one case, not several.
    async fn deliver(&self, delivery: &Delivery) -> Outcome;

    /// Checks that the target is reachable and accepts our credentials,
    /// without delivering anything (`amtsbote check --probe`).
    async fn probe(&self) -> Result<(), Unhealthy>;
}

/// A connector's configuration: the part of a target's `connector:` block
/// under the connector's name. Its JSON Schema (derived, doc comments and
/// all) becomes part of the config file's schema (`amtsbote config
/// schema`), so the doc comments are the user documentation.
pub trait ConnectorConfig: serde::de::DeserializeOwned + schemars::JsonSchema + std::fmt::Debug {
    type Connector: Connector;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Checks the configuration, reads its files and secrets and builds the
    /// connector. Nothing here touches the network: a target that is down
    /// must not stop amtsbote from starting.
    fn build(&self, context: &Context) -> Result<Self::Connector, Self::Error>;
}

/// A connector's `timeout` is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timeout must be between 1s and 1h")]
pub struct BadTimeout;

/// Checks a connector's `timeout`: at least a second (less cannot carry a
/// document), at most an hour (more holds a delivery slot for nothing).
pub fn check_timeout(timeout: Duration) -> Result<(), BadTimeout> {
    if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&timeout) { Ok(()) } else { Err(BadTimeout) }
}

/// The usual file extension for a media type: `xml`, `json`, `csv`, `zip`,
/// `pdf`, `txt`, else `bin`.
pub fn extension_for(content_type: &str) -> &'static str {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/xml" | "text/xml" => "xml",
        "application/json" => "json",
        "text/csv" => "csv",
        "application/zip" => "zip",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        e if e.ends_with("+xml") => "xml",
        e if e.ends_with("+json") => "json",
        e if e.ends_with("+zip") => "zip",
        _ => "bin",
    }
}

/// Truncates a text from a target (a status line, a fault code) for an
/// outcome, dropping control characters so it cannot forge log lines.
pub fn short_text(text: &str, max_chars: usize) -> String {
    let mut kept = text.chars().filter(|c| !c.is_control());
    let mut out: String = kept.by_ref().take(max_chars).collect();
    if kept.next().is_some() {
        out.push('…');
    }
    out
}
