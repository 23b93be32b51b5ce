//! The checks a receiving system makes before it accepts, in the order
//! FITKO's SDK makes them: the delivery service's signed
//! `submit-submission` event; the metadata (decrypts, parses, valid
//! against its schema, a known service); the data (announced and
//! delivered, decrypts, its SHA-512); the attachments (announced equal
//! delivered, each decrypts, its SHA-512; one sent in fragments put
//! together first, data sent as an attachment of purpose `data` taken as
//! the data); and every JWE's
//! authentication tag equal to the one in the signed event, which catches
//! content swapped for other content the destination could decrypt.
//!
//! Pure: what is verified was fetched before. The first failing check
//! decides; its problem is what the rejection names.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};
use uuid::Uuid;

use super::api::Fetched;
use super::problems::{Kind, Part, Problem};
use crate::domain::ServiceKey;
use crate::jose::{DecryptionKey, Jwe, JoseError, Jws, VerifyingKey};

pub const SUBMIT_SUBMISSION: &str = "https://schema.fitko.de/fit-connect/events/submit-submission";

/// The authentication tags of a submission's JWEs, as events carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticationTags {
    pub metadata: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default)]
    pub attachments: BTreeMap<Uuid, String>,
}

/// What the checks found: the submission in plaintext.
#[derive(Debug)]
pub struct Verified {
    pub metadata: serde_json::Value,
    pub service: ServiceKey,
    pub data: Option<Data>,
    pub attachments: Vec<VerifiedAttachment>,
    pub tags: AuthenticationTags,
    /// When the sender submitted it (the signed event's `iat`).
    pub submitted_at: Option<i64>,
    /// The SET payload schema the delivery service's event declares: the
    /// one its decisions are answered in.
    pub set_schema: Option<String>,
}

#[derive(Debug)]
pub struct Data {
    pub content: Vec<u8>,
    /// `application/xml` (else JSON), by the metadata's submission schema.
    pub xml: bool,
    /// The submission schema's URI, as the metadata names it.
    pub schema_uri: Option<String>,
}

#[derive(Debug)]
pub struct VerifiedAttachment {
    pub id: Uuid,
    pub filename: Option<String>,
    pub media_type: Option<String>,
    pub purpose: Option<String>,
    pub content: Vec<u8>,
}

/// What the checks need besides the submission.
pub struct Keys<'a> {
    /// The destination's decryption keys, chosen by the JWE's `kid`.
    pub decryption: &'a [DecryptionKey],
    /// The delivery service's signing keys (its JWKS), chosen by `kid`.
    pub service: &'a [VerifyingKey],
}

/// The largest plaintext taken for metadata, data and one attachment.
pub struct Limits {
    pub metadata_bytes: usize,
    pub content_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    public_service: Option<PublicService>,
    /// Metadata 1.x named it so; 2.x `publicService`.
    #[serde(default)]
    public_service_type: Option<PublicService>,
    content_structure: ContentStructure,
}

#[derive(Debug, Deserialize)]
struct PublicService {
    identifier: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContentStructure {
    #[serde(default)]
    data: Option<DataEntry>,
    #[serde(default)]
    attachments: Vec<AttachmentEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataEntry {
    hash: Hash,
    submission_schema: SubmissionSchema,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubmissionSchema {
    #[serde(default)]
    schema_uri: Option<String>,
    mime_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentEntry {
    attachment_id: Uuid,
    hash: Hash,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    purpose: Option<String>,
    /// Metadata 2.x: the attachment comes as these fragments, in order.
    #[serde(default)]
    fragments: Option<Vec<Uuid>>,
}

#[derive(Debug, Deserialize)]
struct Hash {
    #[serde(rename = "type")]
    kind: String,
    content: String,
}

/// The checks, with the attachments fetched (`attachments`: id and JWE)
/// and the case's event log.
pub fn verify(
    fetched: &Fetched,
    attachments: &[(Uuid, String)],
    event_log: &[String],
    keys: &Keys<'_>,
    limits: &Limits,
    metadata_schema: impl Fn(&serde_json::Value) -> Result<(), Problem>,
) -> Result<Verified, Problem> {
    let SignedSubmission { tags: signed_tags, submitted_at, set_schema } =
        signed_submission(fetched.submission_id, fetched.case_id, event_log, keys.service)?;

    let metadata_jwe = parse_jwe(&fetched.encrypted_metadata, Part::Metadata)?;
    let metadata_bytes = decrypt(&metadata_jwe, keys.decryption, limits.metadata_bytes, Part::Metadata)?;
    let metadata_value: serde_json::Value = serde_json::from_slice(&metadata_bytes)
        .map_err(|_| Problem::new(Kind::SyntaxViolation, Part::Metadata, "the metadata is not JSON"))?;
    metadata_schema(&metadata_value)?;
    // serde's message would quote the metadata: say only where.
    let metadata: Metadata = serde_path_to_error::deserialize(metadata_value.clone()).map_err(|e| {
        Problem::new(Kind::SchemaViolation, Part::Metadata, format!("the metadata does not have the fields amtsbote reads, at {}", e.path()))
    })?;
    // The service the sender named to FIT-Connect; metadata 1.x repeats it
    // (`publicServiceType`), and where it does, the two must agree.
    let in_metadata = metadata.public_service.as_ref().or(metadata.public_service_type.as_ref()).map(|s| s.identifier.as_str());
    let announced = fetched.public_service.as_ref().map(|s| s.identifier.as_str());
    let identifier = announced
        .or(in_metadata)
        .ok_or_else(|| Problem::new(Kind::ServiceMismatch, Part::Metadata, "neither the submission nor its metadata names a public service"))?;
    if let (Some(announced), Some(in_metadata)) = (announced, in_metadata)
        && announced != in_metadata {
            return Err(Problem::new(Kind::ServiceMismatch, Part::Metadata, "the metadata names another public service than the submission"));
        }
    let service = ServiceKey::parse(identifier).map_err(|_| {
        Problem::new(Kind::ServiceMismatch, Part::Metadata, "the public service is not identified by a LeiKa key")
    })?;
    check_tag(&signed_tags.metadata, metadata_jwe.authentication_tag(), Part::Metadata)?;

    let data = match (&metadata.content_structure.data, &fetched.encrypted_data) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(Problem::new(Kind::SchemaViolation, Part::Metadata, "data was delivered that the metadata does not announce"));
        }
        // Perhaps as an attachment of purpose `data`: decided below.
        (Some(_), None) => None,
        (Some(entry), Some(encrypted)) => {
            let jwe = parse_jwe(encrypted, Part::Data)?;
            let content = decrypt(&jwe, keys.decryption, limits.content_bytes, Part::Data)?;
            check_hash(&entry.hash, &content, Part::Data)?;
            let signed = signed_tags.data.as_deref().ok_or_else(|| {
                Problem::new(Kind::MissingAuthenticationTags, Part::Data, "the submit-submission event names no tag for the data")
            })?;
            check_tag(signed, jwe.authentication_tag(), Part::Data)?;
            Some(Data { content, xml: data_is_xml(&entry.submission_schema)?, schema_uri: entry.submission_schema.schema_uri.clone() })
        }
    };

    // An attachment sent in fragments (metadata 2.x: `fragments`) is
    // delivered as its fragments, each a JWE of its own with its own tag;
    // the metadata's hash is of the whole.
    let pieces = |entry: &AttachmentEntry| -> Vec<Uuid> {
        match &entry.fragments {
            Some(fragments) if !fragments.is_empty() => fragments.clone(),
            _ => vec![entry.attachment_id],
        }
    };
    let expected: BTreeSet<Uuid> = metadata.content_structure.attachments.iter().flat_map(pieces).collect();
    let fragmented: BTreeSet<Uuid> =
        metadata.content_structure.attachments.iter().filter(|e| e.fragments.as_ref().is_some_and(|f| !f.is_empty())).map(|e| e.attachment_id).collect();
    let delivered: BTreeSet<Uuid> = fetched.attachments.iter().copied().filter(|id| !fragmented.contains(id)).collect();
    if let Some(&id) = expected.symmetric_difference(&delivered).next() {
        let detail = if expected.contains(&id) {
            "the metadata announces this attachment (or fragment); the submission does not have it"
        } else {
            "the submission has this attachment; the metadata does not announce it"
        };
        return Err(Problem::new(Kind::MissingAttachment, Part::Attachment(id), detail));
    }
    let listed: usize = metadata.content_structure.attachments.iter().map(|e| pieces(e).len()).sum();
    if expected.len() != listed {
        return Err(Problem::new(Kind::SchemaViolation, Part::Metadata, "the metadata announces an attachment or fragment twice"));
    }
    let mut verified_attachments = Vec::with_capacity(attachments.len());
    for entry in &metadata.content_structure.attachments {
        let part = Part::Attachment(entry.attachment_id);
        let mut content = Vec::new();
        for piece in pieces(entry) {
            let piece_part = Part::Attachment(piece);
            let encrypted = attachments
                .iter()
                .find(|(id, _)| *id == piece)
                .map(|(_, jwe)| jwe)
                .ok_or_else(|| Problem::new(Kind::MissingAttachment, piece_part, "the attachment could not be fetched"))?;
            let jwe = parse_jwe(encrypted, piece_part)?;
            let room = limits.content_bytes.checked_sub(content.len()).ok_or_else(|| {
                Problem::new(Kind::TechnicalError, part, format!("the attachment is larger than {} bytes", limits.content_bytes))
            })?;
            content.extend(decrypt(&jwe, keys.decryption, room, piece_part)?);
            let signed = signed_tags.attachments.get(&piece).ok_or_else(|| {
                Problem::new(Kind::MissingAuthenticationTags, piece_part, "the submit-submission event names no tag for this attachment")
            })?;
            check_tag(signed, jwe.authentication_tag(), piece_part)?;
        }
        check_hash(&entry.hash, &content, part)?;
        verified_attachments.push(VerifiedAttachment {
            id: entry.attachment_id,
            filename: entry.filename.clone(),
            media_type: entry.mime_type.clone(),
            purpose: entry.purpose.clone(),
            content,
        });
    }
    // Data too large for the submission comes as an attachment of purpose
    // `data` (metadata 2.x); it is the data, not an attachment. Its own
    // entry's hash was checked above; the data entry's hash is either the
    // same or, as FITKO specified the placeholder (an empty
    // `encryptedData`), that of no bytes.
    let mut data = data;
    if data.is_none()
        && let Some(entry) = &metadata.content_structure.data
        && let Some(index) = verified_attachments.iter().position(|a| a.purpose.as_deref() == Some("data"))
    {
        let attachment = verified_attachments.remove(index);
        if check_hash(&entry.hash, &[], Part::Data).is_err() {
            check_hash(&entry.hash, &attachment.content, Part::Data)?;
        }
        data = Some(Data {
            content: attachment.content,
            xml: data_is_xml(&entry.submission_schema)?,
            schema_uri: entry.submission_schema.schema_uri.clone(),
        });
    }
    if data.is_none() && metadata.content_structure.data.is_some() {
        return Err(Problem::new(Kind::MissingData, Part::Data, "the metadata announces data, none was delivered"));
    }
    Ok(Verified { metadata: metadata_value, service, data, attachments: verified_attachments, tags: signed_tags, submitted_at, set_schema })
}

#[derive(Debug, Deserialize)]
struct SetClaims {
    #[serde(default, rename = "$schema")]
    schema: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    txn: Option<String>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    events: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubmitPayload {
    #[serde(default)]
    authentication_tags: Option<AuthenticationTags>,
}

/// What the delivery service's signed `submit-submission` event says.
#[derive(Debug)]
pub struct SignedSubmission {
    pub tags: AuthenticationTags,
    /// When the sender submitted it (`iat`).
    pub submitted_at: Option<i64>,
    /// The SET payload schema the event declares.
    pub set_schema: Option<String>,
}

/// The submission's `submit-submission` event among `event_log`, parsed
/// but not verified; `None` if there is none.
fn find_submit_event(submission: Uuid, event_log: &[String]) -> Result<Option<(Jws<'_>, SetClaims)>, Problem> {
    let subject = format!("submission:{submission}");
    let mut found = None;
    for compact in event_log {
        // Events of other submissions of the case, and the decisions of
        // others, are signed with keys we do not hold: only this
        // submission's `submit-submission` event is ours to check.
        let Ok(jws) = Jws::parse(compact) else { continue };
        let Ok(claims) = serde_json::from_slice::<SetClaims>(jws.payload()) else { continue };
        if claims.sub.as_deref() != Some(subject.as_str()) || !claims.events.contains_key(SUBMIT_SUBMISSION) {
            continue;
        }
        if found.is_some() {
            return Err(Problem::new(Kind::InvalidEventLog, Part::Submission, "the event log holds more than one submit-submission event for the submission"));
        }
        found = Some((jws, claims));
    }
    Ok(found)
}

/// The `kid` that signed the submission's `submit-submission` event: the
/// delivery service's key to have at hand.
pub fn submit_event_kid(submission: Uuid, event_log: &[String]) -> Option<String> {
    find_submit_event(submission, event_log).ok().flatten().and_then(|(jws, _)| jws.header.kid)
}

/// The one `submit-submission` event of the submission: its signature
/// checked with the delivery service's keys, its claims with the
/// submission; its authentication tags.
pub fn signed_submission(submission: Uuid, case: Uuid, event_log: &[String], service_keys: &[VerifyingKey]) -> Result<SignedSubmission, Problem> {
    let invalid = |detail: &str| Problem::new(Kind::InvalidEventLog, Part::Submission, detail);
    let Some((jws, claims)) = find_submit_event(submission, event_log)? else {
        return Err(invalid("the event log holds no submit-submission event for the submission"));
    };
    if jws.header.typ.as_deref() != Some("secevent+jwt") {
        return Err(invalid("the submit-submission event is not a security event token (typ)"));
    }
    let kid = jws.header.kid.as_deref().ok_or_else(|| invalid("the submit-submission event names no key (kid)"))?;
    let key = service_keys
        .iter()
        .find(|key| key.kid() == Some(kid))
        .ok_or_else(|| invalid("the submit-submission event is signed with a key the delivery service does not publish"))?;
    jws.verify(key).map_err(|_| invalid("the submit-submission event's signature does not verify"))?;
    if claims.txn.as_deref() != Some(format!("case:{case}").as_str()) {
        return Err(invalid("the submit-submission event belongs to another case (txn)"));
    }
    if claims.events.len() != 1 {
        return Err(invalid("the submit-submission event carries more than one event"));
    }
    let payload: SubmitPayload = serde_json::from_value(claims.events[SUBMIT_SUBMISSION].clone())
        .map_err(|_| Problem::new(Kind::MissingAuthenticationTags, Part::Submission, "the submit-submission event's authentication tags do not read"))?;
    let tags = payload.authentication_tags.ok_or_else(|| {
        Problem::new(Kind::MissingAuthenticationTags, Part::Submission, "the submit-submission event names no authentication tags")
    })?;
    Ok(SignedSubmission { tags, submitted_at: claims.iat, set_schema: claims.schema })
}

/// The `kid`s the submission's JWEs name that none of `keys` has.
pub fn unknown_kids<'a>(fetched: &'a Fetched, attachments: &'a [(Uuid, String)], keys: &[DecryptionKey]) -> Vec<String> {
    let mut jwes = vec![fetched.encrypted_metadata.as_str()];
    jwes.extend(fetched.encrypted_data.as_deref());
    jwes.extend(attachments.iter().map(|(_, jwe)| jwe.as_str()));
    let mut unknown: Vec<String> = jwes
        .into_iter()
        .filter_map(|compact| Jwe::parse(compact).ok()?.kid().map(str::to_owned))
        .filter(|kid| !keys.iter().any(|key| key.kid() == Some(kid.as_str())))
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
}

/// Whether the data is XML (else JSON), by its submission schema.
fn data_is_xml(schema: &SubmissionSchema) -> Result<bool, Problem> {
    match schema.mime_type.as_str() {
        "application/json" => Ok(false),
        "application/xml" => Ok(true),
        _ => Err(Problem::new(Kind::UnsupportedSchema, Part::Data, "the data is neither application/json nor application/xml")),
    }
}

fn parse_jwe(compact: &str, part: Part) -> Result<Jwe<'_>, Problem> {
    Jwe::parse(compact).map_err(|e| Problem::new(Kind::EncryptionIssue, part, e.to_string()))
}

fn decrypt(jwe: &Jwe<'_>, keys: &[DecryptionKey], limit: usize, part: Part) -> Result<Vec<u8>, Problem> {
    let kid = jwe.kid().ok_or_else(|| Problem::new(Kind::EncryptionIssue, part, "the JWE names no key (kid)"))?;
    let key = keys
        .iter()
        .find(|key| key.kid() == Some(kid))
        .ok_or_else(|| Problem::new(Kind::EncryptionIssue, part, "the JWE is encrypted for a key the destination does not have (kid)"))?;
    jwe.decrypt(key, limit).map_err(|e| match e {
        JoseError::TooLarge(_) => Problem::new(Kind::TechnicalError, part, e.to_string()),
        _ => Problem::new(Kind::EncryptionIssue, part, e.to_string()),
    })
}

fn check_hash(hash: &Hash, content: &[u8], part: Part) -> Result<(), Problem> {
    if !hash.kind.eq_ignore_ascii_case("sha512") {
        return Err(Problem::new(Kind::SchemaViolation, Part::Metadata, "the metadata's hash is not of type sha512"));
    }
    let actual = crate::domain::hex(&Sha512::digest(content));
    if !actual.eq_ignore_ascii_case(hash.content.trim()) {
        return Err(Problem::new(Kind::IncorrectHash, part, "the SHA-512 of the content differs from the metadata's"));
    }
    Ok(())
}

fn check_tag(signed: &str, actual: &str, part: Part) -> Result<(), Problem> {
    if signed != actual {
        return Err(Problem::new(
            Kind::IncorrectAuthenticationTag,
            part,
            "the authentication tag differs from the one in the submit-submission event",
        ));
    }
    Ok(())
}
