//! The contract between amtsbote and its connectors.
//!
//! A connector receives one [`Delivery`] (the rendered document for one
//! target) and reports an [`Outcome`]. It never acknowledges, retries or
//! parks anything itself: the worker that called it owns the message and
//! decides what happens next from the outcome. That keeps the delivery
//! guarantees in one place and lets a vendor write a connector without
//! knowing RabbitMQ.

use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

/// One rendered document on its way to one target.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The submission this document was rendered from.
    pub submission_id: Uuid,
    /// Stable for (submission, target): identical on every attempt and
    /// after a restart, so targets that deduplicate can do so.
    pub delivery_id: Uuid,
    /// The configured target name.
    pub target: String,
    /// What the mapping rendered.
    pub payload: Payload,
    /// Version (content hash) of the mapping that rendered the payload.
    pub mapping_version: String,
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
    pub content: Bytes,
}

impl Payload {
    /// Total size of the payload in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Document { body, .. } => body.len(),
            Payload::Files(files) => files.iter().map(|f| f.content.len()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What happened to a delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target confirmed it has the document.
    Delivered { detail: String },
    /// Worth trying again later: the target was unreachable, overloaded or
    /// failed on its side.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Trying again will not help: the target refused the document.
    Permanent { reason: String },
}

/// A way to hand documents to a back office.
///
/// Implementations must be cheap to share between tasks (`&self`), must
/// bound every network operation with a timeout, and must not put the
/// document body into logs or into the outcome's texts: bodies carry
/// personal data.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + 'static {
    async fn deliver(&self, delivery: &Delivery) -> Outcome;
}
