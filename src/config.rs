//! Configuration: one YAML file, then environment overrides.
//!
//! Layering: built-in defaults < the config file < `AMTSBOTE_*` variables
//! (`AMTSBOTE_BROKER_URL`, `AMTSBOTE_HTTP_LISTEN`, `AMTSBOTE_STORE_PATH`,
//! `AMTSBOTE_STORE_POSTGRES_URL`, `AMTSBOTE_BLOBS_PATH`).
//! Secrets (the broker URL carries a password) are held as
//! [`SecretString`] and never printed. Relative paths in the file are
//! relative to the file's directory, so a config works from any working
//! directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::connectors::ConnectorConfig;
use crate::access::{OperatorConfig, SenderConfig, TenantConfig};
use crate::blobs::BlobSettings;
use crate::broker::BrokerSettings;
use crate::domain::{TargetName, TenantName};
use crate::mapping::sandbox::SandboxSettings;
use crate::retry::RetryPolicy;
use crate::routing::RouteConfig;
use crate::store::StoreSettings;
use crate::http::HttpSettings;
use crate::yaml::{FileError, read_yaml_with};

/// The whole configuration file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The intake API.
    #[serde(default)]
    pub http: HttpSettings,
    /// The RabbitMQ broker.
    #[serde(default)]
    pub broker: BrokerSettings,
    /// The embedded store: the delivery ledger and idempotency keys.
    #[serde(default)]
    pub store: StoreSettings,
    /// Where large attachments wait for their deliveries, out of the
    /// broker's messages; see [`BlobSettings`].
    #[serde(default)]
    pub blobs: BlobSettings,
    /// Directory of the mapping files (default `mappings`).
    #[serde(default = "default_mappings_dir")]
    pub mappings: PathBuf,
    /// Delivery targets by name (`a-z`, `0-9`, `-`, `_`).
    pub targets: BTreeMap<TargetName, TargetConfig>,
    /// Which targets get which submissions; see [`RouteConfig`].
    pub routes: Vec<RouteConfig>,
    /// How long a stopping amtsbote waits for deliveries in flight (default
    /// `20s`). What is still running then goes back to the broker and is
    /// delivered again after the restart.
    #[serde(default = "default_shutdown_deadline", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_deadline: Duration,
    /// Keys that seal submissions on the broker; see
    /// [`crate::seal::EncryptionConfig`]. Without, they travel in
    /// plaintext (and `check` and `serve` say so).
    #[serde(default)]
    pub encryption: Option<crate::seal::EncryptionConfig>,
    /// Who may hand in submissions. Without entries intake takes nothing
    /// (401): there is no built-in credential.
    #[serde(default)]
    pub senders: Vec<SenderConfig>,
    /// Municipalities (or Kreise, Länder) by name, each owning regions.
    /// With tenants defined, every target names its tenant and receives
    /// only submissions of the tenant's regions; operators can be limited
    /// to tenants. Without, one organisation runs everything.
    #[serde(default)]
    pub tenants: BTreeMap<TenantName, TenantConfig>,
    /// Who may use the operator API (`/v1/parked`, search) and the
    /// dashboard. Without entries the operator API answers 403; the
    /// `amtsbote parked` command works regardless, as it talks to the
    /// broker and store directly.
    #[serde(default)]
    pub operators: Vec<OperatorConfig>,
    /// Receiving submissions from FIT-Connect, FITKO's national delivery
    /// service; see [`crate::fit_connect::settings::FitConnectSettings`].
    #[serde(default)]
    pub fit_connect: Option<crate::fit_connect::settings::FitConnectSettings>,
    /// How mapping evaluations are bounded in time and memory; see
    /// [`SandboxSettings`].
    #[serde(default)]
    pub sandbox: SandboxSettings,
    /// The directory of the config file: connectors resolve their relative
    /// paths and secret files against it.
    #[serde(skip, default = "default_base_dir")]
    pub base_dir: PathBuf,
}

/// One back office that receives documents.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Mapping file, relative to the mappings directory.
    pub mapping: PathBuf,
    /// Deliveries in flight at once for this target (default 8).
    #[serde(default = "default_concurrency")]
    pub concurrency: u16,
    /// How documents reach the target.
    pub connector: ConnectorConfig,
    /// How transient failures are retried; see [`RetryPolicy`].
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The tenant the target belongs to (required once tenants are
    /// defined); it receives only submissions of the tenant's regions.
    #[serde(default)]
    pub tenant: Option<TenantName>,
}

fn default_base_dir() -> PathBuf {
    ".".into()
}
fn default_mappings_dir() -> PathBuf {
    "mappings".into()
}
fn default_concurrency() -> u16 {
    8
}
fn default_shutdown_deadline() -> Duration {
    Duration::from_secs(20)
}

/// Doc comments are written for rustdoc; in an editor's tooltip a link
/// such as ``[`crate::seal::EncryptionConfig`]`` reads better as
/// `` `EncryptionConfig` ``.
fn plain_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                match value {
                    serde_json::Value::String(text) if key == "description" => *text = without_doc_links(text),
                    _ => plain_descriptions(value),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(plain_descriptions),
        _ => {}
    }
}

fn without_doc_links(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[`") {
        let Some(end) = rest[start + 2..].find("`]").map(|end| start + 2 + end) else { break };
        let path = &rest[start + 2..end];
        let name = path.rsplit("::").next().unwrap_or(path);
        plain.push_str(&rest[..start]);
        plain.push('`');
        plain.push_str(name);
        plain.push('`');
        rest = &rest[end + 2..];
    }
    plain.push_str(rest);
    plain
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
}

/// Parses the config file. Its errors give line and column but no excerpt
/// of the file: the lines around an error may hold a password (a broker
/// URL, or a secret written inline by mistake), and errors reach logs.
fn parse_config(text: &str) -> Result<Config, String> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| e.to_string())
}

impl Config {
    /// The JSON Schema of the config file, generated from these structs and
    /// their doc comments: what `amtsbote config schema` prints and
    /// `amtsbote.schema.json` holds, for editors to complete and check
    /// while an integrator types.
    pub fn json_schema() -> serde_json::Value {
        let mut schema = schemars::generate::SchemaSettings::draft2020_12().into_generator().into_root_schema_for::<Config>();
        schema.insert("title".into(), "amtsbote configuration".into());
        let mut schema = schema.to_value();
        plain_descriptions(&mut schema);
        schema
    }

    /// Reads `path`, applies the environment, resolves relative paths.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (_, mut config) = read_yaml_with(path, parse_config)?;
        config.apply_env(|name| std::env::var(name).ok())?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.base_dir = base.to_path_buf();
        config.mappings = base.join(&config.mappings);
        config.store.path = base.join(&config.store.path);
        config.blobs.path = base.join(&config.blobs.path);
        if let Some(ca_file) = &mut config.broker.ca_file {
            *ca_file = base.join(&*ca_file);
        }
        if let Some(tls) = &mut config.http.tls {
            tls.certificate = base.join(&tls.certificate);
            tls.key = base.join(&tls.key);
            if let Some(client_ca) = &mut tls.client_ca {
                *client_ca = base.join(&*client_ca);
            }
        }
        for route in &mut config.routes {
            if let Some(schema) = &mut route.schema {
                *schema = base.join(&*schema);
            }
        }
        Ok(config)
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(url) = var("AMTSBOTE_BROKER_URL") {
            self.broker.url = url.into();
        }
        if let Some(listen) = var("AMTSBOTE_HTTP_LISTEN") {
            self.http.listen = listen.parse().map_err(|_| ConfigError::Env {
                name: "AMTSBOTE_HTTP_LISTEN",
                message: format!("{listen:?} is not an address such as 127.0.0.1:8080"),
            })?;
        }
        if let Some(path) = var("AMTSBOTE_STORE_PATH") {
            self.store.path = path.into();
        }
        if let Some(url) = var("AMTSBOTE_STORE_POSTGRES_URL") {
            match &mut self.store.postgres {
                Some(postgres) => postgres.url = url.into(),
                None => self.store.postgres = Some(crate::store::PostgresSettings::at(url.into())),
            }
        }
        if let Some(path) = var("AMTSBOTE_BLOBS_PATH") {
            self.blobs.path = path.into();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_yaml;

    const MINIMAL: &str = r#"
targets:
  fv:
    mapping: m.yaml
    connector:
      http:
        url: http://127.0.0.1:9/x
routes:
  - service: "99050012104000"
    region: "05"
    targets: [fv]
"#;

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let c: Config = parse_yaml(MINIMAL).unwrap();
        assert_eq!(c.http.listen, HttpSettings::default().listen);
        assert_eq!(c.broker.prefix, "amtsbote");
        assert_eq!(c.targets.values().next().unwrap().concurrency, 8);
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c: Config = parse_yaml(MINIMAL).unwrap();
        c.apply_env(|n| match n {
            "AMTSBOTE_BROKER_URL" => Some("amqp://u:p@broker:5672/%2f".into()),
            "AMTSBOTE_HTTP_LISTEN" => Some("0.0.0.0:9000".into()),
            "AMTSBOTE_BLOBS_PATH" => Some("/data/blobs".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.broker.display_url(), "amqp://broker:5672/%2f");
        assert_eq!(c.http.listen.port(), 9000);
        assert_eq!(c.blobs.path, Path::new("/data/blobs"));
        assert!(c.apply_env(|n| (n == "AMTSBOTE_HTTP_LISTEN").then(|| "nonsense".into())).is_err());
    }

    #[test]
    fn unknown_fields_and_bad_names_are_refused() {
        let typo = MINIMAL.replace("mapping:", "mappping:");
        assert!(parse_yaml::<Config>(&typo).unwrap_err().contains("mappping"));
        let bad_name = MINIMAL.replace("  fv:", "  Fv.1:");
        assert!(parse_yaml::<Config>(&bad_name).is_err());
        let bad_region = MINIMAL.replace("region: \"05\"", "region: \"Köln\"");
        assert!(parse_yaml::<Config>(&bad_region).unwrap_err().contains("ARS prefix"));
    }

    #[test]
    fn secrets_are_not_printed() {
        let c: Config = parse_yaml(&MINIMAL.replacen("targets:", "broker:\n  url: amqp://u:hunter2@h/%2f\ntargets:", 1)).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn config_errors_quote_no_line_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("amtsbote.yaml");
        // A secret written inline, next to the broker URL's password.
        let text = MINIMAL.replacen("targets:", "broker:\n  url: amqp://u:hunter2@h/%2f\ntargets:", 1).replacen(
            "        url: http://127.0.0.1:9/x\n",
            "        url: http://127.0.0.1:9/x\n        auth: { bearer: { token: s3cr3t-inline } }\n",
            1,
        );
        assert!(text.contains("s3cr3t-inline"), "the fixture must put the secret in: {text}");
        std::fs::write(&path, text).unwrap();
        let error = Config::load(&path).unwrap_err().to_string();
        assert!(error.contains("{ file: PATH }"), "{error}");
        assert!(!error.contains("s3cr3t-inline") && !error.contains("hunter2"), "{error}");
    }
}
