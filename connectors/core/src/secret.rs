//! Secrets in connector configuration.
//!
//! A config file names where a secret is, never the secret itself:
//!
//! ```yaml
//! password: { file: /run/secrets/dms-password }   # Docker/Kubernetes secrets
//! token: { env: DMS_TOKEN }                       # the process environment
//! ```
//!
//! [`Context::secret`] reads it when the connector is built (so a reload
//! picks up a rotated secret) into a [`Secret`], whose `Debug` shows
//! `Secret(***)` and which has neither `Display` nor `Serialize`: it cannot
//! reach a log line or an error message by accident.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Where a secret is: `{ file: PATH }` (relative to the config file; one
/// trailing newline is dropped) or `{ env: NAME }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    File(PathBuf),
    Env(String),
}

/// By hand, as the deserializer is: exactly one of `file` and `env`.
impl schemars::JsonSchema for SecretRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretRef".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Where a secret is: `{ file: PATH }` (relative to the config file; one trailing newline is dropped) or `{ env: NAME }`. Secrets are never written into the config.",
            "oneOf": [
                {
                    "type": "object",
                    "properties": { "file": { "type": "string", "description": "A file holding the secret, relative to the config file." } },
                    "required": ["file"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": { "env": { "type": "string", "description": "An environment variable holding the secret." } },
                    "required": ["env"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// By hand rather than derived: serde's own messages quote the value they
/// did not expect, and a value written where a reference belongs is most
/// likely the secret itself.
impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        const EXPECTED: &str = "{ file: PATH } or { env: NAME } (secrets are never written into the config)";
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SecretRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            // Every scalar is refused without repeating it.
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(format!("expected {EXPECTED}")))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretRef, E> {
                Err(E::custom(format!("expected {EXPECTED}")))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretRef, E> {
                Err(E::custom(format!("expected {EXPECTED}")))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretRef, E> {
                Err(E::custom(format!("expected {EXPECTED}")))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretRef, E> {
                Err(E::custom(format!("expected {EXPECTED}")))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(serde::de::Error::custom(format!("expected {EXPECTED}")));
                };
                let value = match key.as_str() {
                    "file" => SecretRef::File(map.next_value()?),
                    "env" => SecretRef::Env(map.next_value()?),
                    _ => return Err(serde::de::Error::custom(format!("expected {EXPECTED}"))),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(serde::de::Error::custom(format!("expected {EXPECTED}, one of the two")));
                }
                Ok(value)
            }
        }
        // Any other shape (a sequence, bytes) is described by serde without
        // its content.
        deserializer.deserialize_any(Visitor)
    }
}

/// A secret value, read from a [`SecretRef`].
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// For tests and for values that do not come from configuration.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The value, to hand to the protocol that needs it. Never format it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A secret could not be read. Names where it was looked for, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret file {file}: {source}")]
    File { file: String, source: std::io::Error },
    #[error("secret variable {0} is not set")]
    EnvMissing(String),
    #[error("secret {0} is empty")]
    Empty(String),
}

/// What a connector needs from its surroundings while it is built.
#[derive(Debug, Clone)]
pub struct Context {
    base_dir: PathBuf,
}

impl Context {
    /// `base_dir`: the directory of the config file; relative paths in the
    /// connector's config are relative to it.
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Self { base_dir: base_dir.into() }
    }

    /// A configured path, resolved against the config file's directory.
    pub fn path(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// Reads a secret.
    pub fn secret(&self, secret: &SecretRef) -> Result<Secret, SecretError> {
        match secret {
            SecretRef::File(path) => {
                let path = self.path(path);
                let file = path.display().to_string();
                let mut text = std::fs::read_to_string(&path).map_err(|source| SecretError::File { file: file.clone(), source })?;
                // `echo secret > file` leaves a newline no protocol wants.
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                if text.is_empty() {
                    return Err(SecretError::Empty(file));
                }
                Ok(Secret::new(text))
            }
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(value) if value.is_empty() => Err(SecretError::Empty(name.clone())),
                Ok(value) => Ok(Secret::new(value)),
                Err(_) => Err(SecretError::EnvMissing(name.clone())),
            },
        }
    }

    /// Reads a file the connector needs (a CA certificate, a known host key).
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, SecretError> {
        let path = self.path(path);
        std::fs::read(&path).map_err(|source| SecretError::File { file: path.display().to_string(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_files_and_the_environment_and_are_never_printed() {
        let dir = std::env::temp_dir().join(format!("amtsbote-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "hunter2\n").unwrap();
        let context = Context::new(&dir);
        let secret = context.secret(&SecretRef::File("pw".into())).unwrap();
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");

        let missing = context.secret(&SecretRef::File("nope".into())).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
        let unset = context.secret(&SecretRef::Env("AMTSBOTE_TEST_SURELY_UNSET".into())).unwrap_err().to_string();
        assert_eq!(unset, "secret variable AMTSBOTE_TEST_SURELY_UNSET is not set");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn secrets_are_references_not_values() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Config {
            password: SecretRef,
        }
        let ok: Config = serde_json::from_str(r#"{"password": {"env": "PW"}}"#).unwrap();
        assert_eq!(ok.password, SecretRef::Env("PW".into()));
        let inline = serde_json::from_str::<Config>(r#"{"password": "hunter2"}"#).unwrap_err().to_string();
        assert!(!inline.contains("hunter2") && inline.contains("{ file: PATH }"), "{inline}");
        let bad_key = serde_json::from_str::<Config>(r#"{"password": {"value": "hunter2"}}"#).unwrap_err().to_string();
        assert!(!bad_key.contains("hunter2"), "{bad_key}");
    }
}
