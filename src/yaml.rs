//! YAML files (config, mappings, code lists) read with bounded parsing,
//! and the error that names the file.

use std::path::Path;

/// A file (config, mapping, code list) that cannot be read or used; the
/// message names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The error is part of the message, not a source: printed as a chain,
    /// it would be said twice.
    #[error("{file}: cannot read: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

/// Parses YAML with the limits of serde-saphyr's defaults (aliases and
/// nesting are bounded, so a hostile file cannot exhaust memory).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_saphyr::from_str(text).map_err(|e| e.to_string())
}

/// Reads and parses the YAML file `path`; gives its text, too.
pub fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(String, T), FileError> {
    read_yaml_with(path, parse_yaml)
}

pub(crate) fn read_yaml_with<T>(path: &Path, parse: impl Fn(&str) -> Result<T, String>) -> Result<(String, T), FileError> {
    let file = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| FileError::Read { file: file(), error })?;
    let value = parse(&text).map_err(|message| FileError::Invalid { file: file(), message })?;
    Ok((text, value))
}
