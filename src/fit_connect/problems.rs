//! Why a submission is rejected, in FIT-Connect's words: the problem types
//! a `reject-submission` event carries. `type` and `instance` are taken
//! over exactly as FIT-Connect defines them, the title as documented;
//! the detail is ours and never quotes the submission's content.

use serde::Serialize;
use uuid::Uuid;

const PREFIX: &str = "https://schema.fitko.de/fit-connect/events/problems/";

/// The checks a receiving system makes before it accepts, by what failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JWE does not decrypt: unknown key, wrong algorithm, tampered.
    EncryptionIssue,
    /// No valid `submit-submission` event for the submission.
    InvalidEventLog,
    /// The `submit-submission` event names no authentication tags.
    MissingAuthenticationTags,
    /// A JWE's authentication tag differs from the signed event's.
    IncorrectAuthenticationTag,
    /// Metadata or data is not well-formed JSON or XML.
    SyntaxViolation,
    /// The metadata names a schema (version) this receiver does not know.
    UnsupportedSchema,
    /// Metadata or data violates its schema.
    SchemaViolation,
    /// The metadata announces data that did not come.
    MissingData,
    /// The SHA-512 of the data or an attachment differs from the metadata's.
    IncorrectHash,
    /// An attachment the metadata announces did not come (or the other
    /// way round).
    MissingAttachment,
    /// The public service is not one this destination can process.
    ServiceMismatch,
    /// Anything else on the receiver's side that makes the submission
    /// impossible to take (a limit, say).
    TechnicalError,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::EncryptionIssue,
        Kind::InvalidEventLog,
        Kind::MissingAuthenticationTags,
        Kind::IncorrectAuthenticationTag,
        Kind::SyntaxViolation,
        Kind::UnsupportedSchema,
        Kind::SchemaViolation,
        Kind::MissingData,
        Kind::IncorrectHash,
        Kind::MissingAttachment,
        Kind::ServiceMismatch,
        Kind::TechnicalError,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            Kind::EncryptionIssue => "encryption-issue",
            Kind::InvalidEventLog => "invalid-event-log",
            Kind::MissingAuthenticationTags => "missing-authentication-tags",
            Kind::IncorrectAuthenticationTag => "authentication-tag-incorrect",
            Kind::SyntaxViolation => "syntax-violation",
            Kind::UnsupportedSchema => "unsupported-schema",
            Kind::SchemaViolation => "schema-violation",
            Kind::MissingData => "missing-data",
            Kind::IncorrectHash => "incorrect-hash",
            Kind::MissingAttachment => "missing-attachment",
            Kind::ServiceMismatch => "service-mismatch",
            Kind::TechnicalError => "technical-error",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::EncryptionIssue => "Entschlüsselungs-Fehler",
            Kind::InvalidEventLog => "Inkonsistenter Event-Log",
            Kind::MissingAuthenticationTags => "Authentication-Tags fehlen",
            Kind::IncorrectAuthenticationTag => "Das Authentication Tag ist ungültig",
            Kind::SyntaxViolation => "Syntax-Fehler",
            Kind::UnsupportedSchema => "Schema nicht unterstützt",
            Kind::SchemaViolation => "Schema-Fehler",
            Kind::MissingData => "Fachdatensatz fehlt",
            Kind::IncorrectHash => "Prüfsumme stimmt nicht",
            Kind::MissingAttachment => "Anlage fehlt",
            Kind::ServiceMismatch => "Verwaltungsleistung stimmt nicht überein",
            Kind::TechnicalError => "Technischer Fehler",
        }
    }
}

/// Which part of the submission a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Submission,
    Metadata,
    Data,
    Attachment(Uuid),
}

impl Part {
    pub fn instance(self) -> String {
        match self {
            Part::Submission => "submission".into(),
            Part::Metadata => "metadata".into(),
            Part::Data => "data".into(),
            Part::Attachment(id) => format!("attachment:{id}"),
        }
    }
}

/// One problem of a rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: Kind,
    pub part: Part,
    /// What failed, in our words: never content of the submission.
    pub detail: String,
}

impl Problem {
    pub fn new(kind: Kind, part: Part, detail: impl Into<String>) -> Self {
        Self { kind, part, detail: detail.into() }
    }
}

/// As the event and the ledger carry it.
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    detail: &'a str,
    instance: String,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // FITKO's title for a wrong tag names the part.
        let title = match (self.kind, self.part) {
            (Kind::IncorrectAuthenticationTag, Part::Metadata) => "Das Authentication Tag des Metadatensatzes ist ungültig",
            (Kind::IncorrectAuthenticationTag, Part::Data) => "Das Authentication Tag des Fachdatensatzes ist ungültig",
            (Kind::IncorrectAuthenticationTag, Part::Attachment(_)) => "Das Authentication Tag einer Anlage ist ungültig",
            (kind, _) => kind.title(),
        };
        Wire { kind: format!("{PREFIX}{}", self.kind.slug()), title, detail: &self.detail, instance: self.part.instance() }.serialize(serializer)
    }
}
