//! The message body: the submission as workers and mappings see it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::domain::BlobId;
use crate::domain::{Region, ServiceKey};

/// The message on the queue: what workers and mappings see. Form data
/// and attachment contents are copied through as received (no
/// re-encoding of base64, no re-serialization of the form data).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Queued<'s, 'a> {
    pub id: Uuid,
    pub service: &'s ServiceKey,
    pub region: &'s Region,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: &'s Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submitted_at: &'s Option<String>,
    pub received_at: String,
    pub data: &'s RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_xml: Option<&'s str>,
    pub attachments: &'s [Attachment<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit_connect: Option<&'s RawValue>,
}

/// One attachment as the message carries it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment<'a> {
    pub name: String,
    pub media_type: String,
    pub purpose: Purpose,
    /// Decoded size in bytes.
    pub size: usize,
    /// A file name for packages: the name, made unique among the
    /// submission's attachments (`scan.pdf`, `scan (2).pdf`).
    pub file: String,
    /// Base64, as received; `None` once the attachment is kept in the
    /// blob store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Cow<'a, str>>,
    /// The attachment in the blob store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobId>,
}


/// What an attachment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// The PDF rendering of the filled-in form.
    Form,
    /// An upload of the applicant.
    Attachment,
}


impl Queued<'_, '_> {
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a submission serializes")
    }
}

/// An attachment of a message that is kept in the blob store, with its
/// position among the message's attachments and its decoded size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredAttachment {
    pub index: usize,
    pub blob: BlobId,
    pub size: u64,
}

/// The attachments of `body` that are kept in the blob store. A body that
/// does not read has none: it is the mapping's to refuse.
pub fn stored_attachments(body: &[u8]) -> Vec<StoredAttachment> {
    #[derive(Default, Deserialize)]
    struct Attachments {
        #[serde(default)]
        attachments: Vec<AttachmentRef>,
    }
    #[derive(Deserialize)]
    struct AttachmentRef {
        #[serde(default)]
        blob: Option<BlobId>,
        #[serde(default)]
        size: u64,
    }
    let Attachments { attachments } = serde_json::from_slice(body).unwrap_or_default();
    attachments
        .iter()
        .enumerate()
        .filter_map(|(index, a)| Some(StoredAttachment { index, blob: a.blob?, size: a.size }))
        .collect()
}
