//! PEM files of certificates, and the fingerprint that names a
//! certificate (a sender's client certificate, `amtsbote keys
//! fingerprint`).

use std::fmt;
use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{field}: cannot read {path}: {reason}")]
    Read { field: &'static str, path: String, reason: String },
    #[error("{field}: {path} holds no PEM certificate")]
    NoCertificate { field: &'static str, path: String },
}

/// The SHA-256 of a certificate (its DER bytes), as `openssl x509
/// -noout -fingerprint -sha256` and `amtsbote keys fingerprint` print it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertificateFingerprint([u8; 32]);

impl CertificateFingerprint {
    pub fn of(certificate: &[u8]) -> Self {
        Self(Sha256::digest(certificate).into())
    }

    /// 64 hex digits, upper or lower case, with or without `:` between
    /// the bytes.
    pub fn parse(text: &str) -> Option<Self> {
        let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
        crate::domain::unhex32(&digits.to_ascii_lowercase()).map(Self)
    }

    /// The fingerprint of each certificate in a PEM file.
    pub fn of_pem_file(path: &Path) -> Result<Vec<Self>, PemError> {
        Ok(read_certificates("certificate file", path)?.iter().map(|c| Self::of(c)).collect())
    }
}

impl fmt::Display for CertificateFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::domain::hex(&self.0))
    }
}

impl fmt::Debug for CertificateFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertificateFingerprint({self})")
    }
}

crate::domain::text_schema!(CertificateFingerprint, "^\\s*([0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2}\\s*$");

impl<'de> Deserialize<'de> for CertificateFingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(
                "must be a certificate's SHA-256 fingerprint as 64 hex digits (amtsbote keys fingerprint client.pem)",
            )
        })
    }
}

/// The certificates of a PEM file; `field` names the setting in errors.
pub fn read_certificates(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let unreadable = |reason: String| PemError::Read { field, path: path.display().to_string(), reason };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    if certificates.is_empty() {
        return Err(PemError::NoCertificate { field, path: path.display().to_string() });
    }
    Ok(certificates)
}

