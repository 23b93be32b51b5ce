//! Identifiers of the domain, validated when they are parsed so that the
//! rest of the code never sees a malformed one.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier was refused; the text is shown to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidIdentifier(pub String);

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// The JSON Schema of a newtype written as text: a string and the pattern
/// its parser accepts, so that an editor flags a bad value while typing
/// (the parser stays the authority; its message names the rule).
macro_rules! text_schema {
    ($name:ident, $pattern:expr) => {
        impl schemars::JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "pattern": $pattern })
            }
        }
    };
}
pub(crate) use text_schema;

/// A LeiKa service key ("Leistungsschlüssel"): 14 digits starting with `99`.
/// The URN form `urn:de:fim:leika:leistung:<key>` is accepted and stored as
/// the bare key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ServiceKey(String);

impl ServiceKey {
    pub fn parse(s: &str) -> Result<Self, InvalidIdentifier> {
        let key = s.strip_prefix("urn:de:fim:leika:leistung:").unwrap_or(s);
        if key.len() == 14 && all_digits(key) && key.starts_with("99") {
            Ok(Self(key.to_owned()))
        } else {
            Err(InvalidIdentifier(
                "must be a LeiKa service key: 14 digits starting with 99".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where an application is to be processed: an ARS (12 digits,
/// "Regionalschlüssel") or an AGS (8 digits, "Gemeindeschlüssel").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Region {
    Ars(String),
    Ags(String),
}

impl Region {
    pub fn parse(s: &str) -> Result<Self, InvalidIdentifier> {
        match (s.len(), all_digits(s)) {
            (12, true) => Ok(Self::Ars(s.to_owned())),
            (8, true) => Ok(Self::Ags(s.to_owned())),
            _ => Err(InvalidIdentifier(
                "must be an ARS (12 digits) or an AGS (8 digits)".into(),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Region::Ars(s) | Region::Ags(s) => s,
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Region {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The leading digits of an ARS that a route covers: `05` is a Land,
/// `05315` a Kreis or kreisfreie Stadt, the full 12 digits one
/// municipality; the empty prefix covers everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArsPrefix(String);

impl ArsPrefix {
    pub fn parse(s: &str) -> Result<Self, InvalidIdentifier> {
        if s.len() <= 12 && all_digits(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidIdentifier(format!(
                "region {s:?} must be an ARS prefix: up to 12 digits"
            )))
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether every region this prefix covers is also covered by `outer`.
    pub fn within(&self, outer: &ArsPrefix) -> bool {
        self.0.starts_with(&outer.0)
    }

    /// Whether this prefix covers `region`.
    ///
    /// An AGS lacks the four Gemeindeverband digits of the ARS, so it is
    /// matched by prefixes up to the Kreis (5 digits) and by a complete
    /// ARS that names the same municipality (same Kreis, same last three
    /// digits); the Gemeindeverband levels in between cannot be decided
    /// from an AGS and do not match it.
    pub fn covers(&self, region: &Region) -> bool {
        match region {
            Region::Ars(ars) => ars.starts_with(&self.0),
            Region::Ags(ags) => match self.0.len() {
                0..=5 => ags.starts_with(&self.0),
                12 => self.0[..5] == ags[..5] && self.0[9..] == ags[5..],
                _ => false,
            },
        }
    }
}

text_schema!(ArsPrefix, "^[0-9]{0,12}$");
text_schema!(ServiceKey, "^(urn:de:fim:leika:leistung:)?99[0-9]{12}$");

impl<'de> Deserialize<'de> for ArsPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ServiceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(|e| serde::de::Error::custom(format!("service {s:?} {e}")))
    }
}

/// Names of things in the configuration. They appear in queue names,
/// routing keys, metrics labels and the ledger, so they are restricted to
/// 1 to 48 lower-case letters, digits, `-` and `_`.
macro_rules! config_name {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = 48;

            pub fn parse(s: &str) -> Result<Self, InvalidIdentifier> {
                let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
                if !s.is_empty() && s.len() <= Self::MAX_LEN && ok_chars {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(InvalidIdentifier(format!(
                        concat!($what, " {:?} must be 1 to {} characters of a-z, 0-9, '-' and '_'"),
                        s,
                        Self::MAX_LEN
                    )))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        text_schema!($name, "^[a-z0-9_-]{1,48}$");
    };
}

config_name!(
    /// Name of a delivery target.
    TargetName,
    "target name"
);
config_name!(
    /// Name of a sender: an online service (or its operator) that hands in
    /// submissions; recorded with each submission.
    SenderName,
    "sender name"
);
config_name!(
    /// Name of a tenant: a municipality (or a Kreis, a Land) that owns
    /// regions and the targets that receive their submissions.
    TenantName,
    "tenant name"
);

/// Fixed width, UTC, milliseconds (`2026-11-24T09:14:02.125Z`).
const TIMESTAMP: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// A blob's name: the SHA-256 of its (decoded, unsealed) bytes, written
/// as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 32]);

impl BlobId {
    /// The name of the bytes whose SHA-256 digest this is.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    pub fn digest(&self) -> [u8; 32] {
        self.0
    }

    pub fn parse(text: &str) -> Option<Self> {
        // unhex32 trims and takes capitals; a name in a message is exact.
        if !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        unhex32(text).map(Self)
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

impl Serialize for BlobId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BlobId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("a blob is named by 64 lower-case hex digits"))
    }
}

/// A time as amtsbote writes it everywhere (messages, API, ledger): RFC
/// 3339 in UTC with milliseconds, so that times compare as text.
pub fn timestamp(at: time::OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC).format(TIMESTAMP).expect("a UTC time formats")
}

/// Now, cut to the milliseconds [`timestamp`] keeps, so that a time read
/// back equals the one written.
pub fn now_millis() -> time::OffsetDateTime {
    to_millis(time::OffsetDateTime::now_utc())
}

/// `at` cut to the milliseconds [`timestamp`] keeps.
pub fn to_millis(at: time::OffsetDateTime) -> time::OffsetDateTime {
    at.replace_millisecond(at.millisecond()).expect("a millisecond of a valid time is valid")
}

/// Lower-case hex SHA-256 of `bytes`: how the ledger and mapping versions
/// name content without keeping it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    text
}

/// The 32 bytes written as 64 hex digits in `text` (surrounding white
/// space ignored), as [`hex`] writes a SHA-256 or a key.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(bytes)
}

/// The delivery id for a (submission, target) pair: a name-based UUID, so
/// every attempt and every process derives the same one without storing it.
pub fn delivery_id(submission: uuid::Uuid, target: &TargetName) -> uuid::Uuid {
    uuid::Uuid::new_v5(&submission, target.as_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_writes_two_lower_case_digits_per_byte_and_unhex32_reads_them() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(unhex32(&hex(&bytes)), Some(bytes));
    }

    #[test]
    fn service_key_accepts_leika_and_urn() {
        assert_eq!(ServiceKey::parse("99050012104000").unwrap().as_str(), "99050012104000");
        assert_eq!(
            ServiceKey::parse("urn:de:fim:leika:leistung:99050012104000").unwrap().as_str(),
            "99050012104000"
        );
        for bad in ["", "9905001210400", "990500121040001", "10050012104000", "9905001210400x"] {
            assert!(ServiceKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn region_is_ars_or_ags() {
        assert_eq!(Region::parse("053150000000").unwrap(), Region::Ars("053150000000".into()));
        assert_eq!(Region::parse("05315000").unwrap(), Region::Ags("05315000".into()));
        for bad in ["0531500000", "05315000000a", "", "0531500000000"] {
            assert!(Region::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_covers_ars_and_what_an_ags_can_tell() {
        let koeln_ars = Region::parse("053150000000").unwrap();
        let koeln_ags = Region::parse("05315000").unwrap();
        let p = |s| ArsPrefix::parse(s).unwrap();
        assert!(p("").covers(&koeln_ars) && p("").covers(&koeln_ags));
        assert!(p("05315").covers(&koeln_ars) && p("05315").covers(&koeln_ags));
        assert!(p("053150000000").covers(&koeln_ags));
        assert!(!p("05316").covers(&koeln_ars));
        assert!(!p("0531500").covers(&koeln_ags), "Gemeindeverband level is unknown for an AGS");
        assert!(!p("053150000001").covers(&koeln_ags));
    }

    #[test]
    fn delivery_id_is_stable_per_target() {
        let s = uuid::Uuid::new_v4();
        let a = TargetName::parse("a").unwrap();
        let b = TargetName::parse("b").unwrap();
        assert_eq!(delivery_id(s, &a), delivery_id(s, &a));
        assert_ne!(delivery_id(s, &a), delivery_id(s, &b));
    }

    #[test]
    fn target_names_are_safe_for_queues_and_routing_keys() {
        assert!(TargetName::parse("gewerbe-koeln_2").is_ok());
        for bad in ["", "Gewerbe", "a.b", "a#", &"x".repeat(49)] {
            assert!(TargetName::parse(bad).is_err(), "{bad}");
        }
    }
}
