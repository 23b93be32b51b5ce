//! Configuration: one YAML file, then environment overrides.
//!
//! Layering: built-in defaults < the config file < `AMTSBOTE_*` variables
//! (`AMTSBOTE_BROKER_URL`, `AMTSBOTE_HTTP_LISTEN`, `AMTSBOTE_STORE_PATH`,
//! `AMTSBOTE_BLOBS_PATH`).
//! Secrets (the broker URL carries a password) are held as
//! [`SecretString`] and never printed. Relative paths in the file are
//! relative to the file's directory, so a config works from any working
//! directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub use crate::connectors::ConnectorConfig;
use crate::access::{KeyHash, Role};
use crate::domain::{ArsPrefix, SenderName, ServiceKey, TargetName, TenantName};
use crate::mapping::sandbox::SandboxSettings;
use crate::retry::RetryPolicy;
use crate::routing::RouteConfig;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
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
    /// How mapping evaluations are bounded in time and memory; see
    /// [`SandboxSettings`].
    #[serde(default)]
    pub sandbox: SandboxSettings,
    /// The directory of the config file: connectors resolve their relative
    /// paths and secret files against it.
    #[serde(skip, default = "default_base_dir")]
    pub base_dir: PathBuf,
}

/// An operator of the HTTP API and the dashboard, identified by a bearer
/// token of which only the SHA-256 is configured: `amtsbote keys new`
/// makes a token and prints its hash.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// The name recorded with every replay and discard.
    pub name: String,
    /// Hex SHA-256 of the operator's token.
    pub token_sha256: KeyHash,
    /// `viewer` looks; `operator` may also replay and discard.
    pub role: Role,
    /// The tenants whose targets and submissions the operator sees.
    /// Omitted: every tenant (the platform's own operators).
    #[serde(default)]
    pub tenants: Option<Vec<TenantName>>,
}

/// An online service that hands in submissions.
///
/// ```yaml
/// senders:
///   - name: oaa-gewerbe-nrw
///     api_keys_sha256: ["9f86d0…"]   # several while a key is rotated
///     regions: ["05"]                # ARS prefixes; "" allows every region
///     services: ["99050012104000"]   # LeiKa keys; omitted: every service
/// ```
///
/// A sender authenticates with an API key (`Authorization: Bearer <key>`)
/// or, over `http.tls` with a `client_ca`, with a client certificate; it
/// needs at least one of the two. A request carrying both must name the
/// same sender with each.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderConfig {
    /// Recorded with each submission; a sender reads back only its own.
    pub name: SenderName,
    /// Hex SHA-256 of each API key the sender may use (`amtsbote keys
    /// new` makes one). To rotate, add the new key's hash, reload
    /// (SIGHUP), switch the sender over, then remove the old one.
    #[serde(default)]
    pub api_keys_sha256: Vec<KeyHash>,
    /// SHA-256 fingerprints of the client certificates the sender may
    /// present instead of an API key (`amtsbote keys fingerprint
    /// client.pem`, or `openssl x509 -noout -fingerprint -sha256`). Needs
    /// `http.tls.client_ca`, to which the certificates must chain. Rotate
    /// as keys: add the new one, reload, switch, remove the old one.
    #[serde(default)]
    pub client_certificates_sha256: Vec<crate::tls::CertificateFingerprint>,
    /// ARS prefixes of the regions the sender may submit for.
    pub regions: Vec<ArsPrefix>,
    /// LeiKa keys of the services the sender may submit; omitted: every
    /// service.
    #[serde(default)]
    pub services: Option<Vec<ServiceKey>>,
}

/// A tenant: the regions it owns.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// ARS prefixes (`05315` is Köln). Routes may send a tenant's targets
    /// only regions within these.
    pub regions: Vec<ArsPrefix>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address the intake API listens on (default `127.0.0.1:8080`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes (default 40 MiB, enough for
    /// a building application with 25 MiB of attachments in base64).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most attachments in one submission (default 100).
    #[serde(default = "default_max_attachments")]
    pub max_attachments: usize,
    /// Largest attachment in bytes, decoded (default 25 MiB).
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: usize,
    /// Deepest nesting of arrays and objects in JSON form data (default
    /// 32, at most 100; forms rarely go past 6).
    #[serde(default = "default_max_json_depth", deserialize_with = "json_depth_limit")]
    pub max_json_depth: usize,
    /// Memory for request bodies that intake holds at once, in MiB
    /// (default 128; at least `max_body_bytes`). A submission whose
    /// declared size does not fit gets `503 busy` with `Retry-After`
    /// before its body is read: a burst of large uploads waits at the
    /// senders, not in amtsbote's memory.
    #[serde(default = "default_intake_memory_mib")]
    pub intake_memory_mib: usize,
    /// Longest a submission's body may take to arrive, in all (default
    /// `5m`: 40 MiB at a little over 1 Mbit/s). A slower upload gets `408` and
    /// gives its room back.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Longest a client may take to send a request's headers (default
    /// `10s`), counted from the connection's start or the end of its
    /// previous response: so it is also how long an idle keep-alive
    /// connection stays open. A slower client's connection is closed.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Most connections the listener keeps open at once (default 1000,
    /// at least 16). One more is taken by closing the longest-open
    /// connection that has no request in progress (idle, or still sending
    /// its headers); with every connection busy, a new one is closed at
    /// once. amtsbote raises its open-file limit at start and lowers this
    /// if the limit leaves too little room for the broker, the ledger, the
    /// blob store and the connectors (see [`crate::connections`]).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTPS instead of plain HTTP, optionally with client certificates
    /// for senders; see [`TlsSettings`]. Without it, put amtsbote behind a
    /// proxy that terminates TLS.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

/// HTTPS for every endpoint (`http.tls`).
///
/// ```yaml
/// http:
///   listen: 0.0.0.0:8443
///   tls:
///     certificate: tls/amtsbote.pem   # the chain, server certificate first
///     key: tls/amtsbote.key
///     client_ca: tls/senders-ca.pem   # optional: senders may present certificates
/// ```
///
/// The files are relative to the config file, read at start and on every
/// reload (SIGHUP): a renewed certificate needs no restart. Connections
/// already open keep the certificate they began with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the server's certificate chain, the server's own
    /// certificate first.
    pub certificate: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificates that issue senders' client
    /// certificates. With it, a client may present a certificate, which
    /// must chain to one of these CAs and whose fingerprint must be listed
    /// under a sender's `client_certificates_sha256`. Clients without a
    /// certificate still use API keys (senders) and tokens (operators).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl HttpSettings {
    /// The limits intake holds each submission to.
    pub fn submission_limits(&self) -> crate::submission::Limits {
        crate::submission::Limits {
            attachments: self.max_attachments,
            attachment_bytes: self.max_attachment_bytes,
            json_depth: self.max_json_depth,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// AMQP URL with credentials; prefer `AMTSBOTE_BROKER_URL` over the file.
    #[serde(default = "default_broker_url")]
    pub url: SecretString,
    /// Prefix of every exchange and queue amtsbote declares (default
    /// `amtsbote`), so several installations can share a vhost.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// PEM file of the CA that signed the broker's certificate, for
    /// `amqps://` to a broker with a private CA; the system's roots are
    /// trusted as well. Relative to the config file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The largest message the broker takes, in bytes (default 16 MiB,
    /// RabbitMQ 4's `max_message_size`; RabbitMQ 3 takes 128 MiB). A
    /// submission whose message would be larger (form data of many
    /// megabytes: large attachments travel outside it, see `blobs`) gets
    /// `413` instead of being refused by the broker.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// SQLite file (default `var/amtsbote.sqlite`); created if missing.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// How long the ledger keeps a finished (delivered or discarded)
    /// submission's timeline, and operator records (default `90d`).
    /// Submissions still on their way are kept whatever their age.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
}

/// The claim check (`blobs:`): attachments from `keep_above_kib` on are
/// written, decoded, to a blob store when the submission is accepted, and
/// the message on the broker names them by their SHA-256 instead of
/// carrying them. Messages stay small (RabbitMQ 4 refuses messages over
/// 16 MiB by default), and workers read an attachment only when a delivery
/// needs it.
///
/// ```yaml
/// blobs:
///   path: /var/lib/amtsbote/blobs
///   keep_above_kib: 64
///   delivery_memory_mib: 256
/// ```
///
/// With `encryption:` configured, blobs are sealed as messages are. A
/// submission's blobs are removed once each of its deliveries is
/// delivered or discarded; a parked delivery keeps them for its replay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobSettings {
    /// The directory (default `var/blobs`, relative to the config file).
    /// Every amtsbote process of an installation must see the same one,
    /// as they share the ledger.
    #[serde(default = "default_blobs_path")]
    pub path: PathBuf,
    /// Attachments of at least this many KiB, decoded, go to the blob
    /// store; smaller ones travel in the message (default 64).
    #[serde(default = "default_keep_above_kib")]
    pub keep_above_kib: usize,
    /// Memory for attachments read back from the blob store for
    /// deliveries in flight, across all targets, in MiB (default 256). A
    /// delivery waits for room before it reads its attachments, so slow
    /// targets and large submissions cannot add up beyond it.
    #[serde(default = "default_delivery_memory_mib")]
    pub delivery_memory_mib: usize,
    /// How often blobs of finished submissions are looked for and removed
    /// (default `1m`). A submission's blobs go at the first look at least
    /// this long after its last delivery finished.
    #[serde(default = "default_sweep_every", with = "humantime_serde")]
    pub sweep_every: Duration,
    /// An S3-compatible bucket instead of the directory `path` (see
    /// [`crate::blobs::s3::S3Settings`]), for processes that share no disk.
    #[serde(default)]
    pub s3: Option<crate::blobs::s3::S3Settings>,
}

impl Default for BlobSettings {
    fn default() -> Self {
        Self {
            path: default_blobs_path(),
            keep_above_kib: default_keep_above_kib(),
            delivery_memory_mib: default_delivery_memory_mib(),
            sweep_every: default_sweep_every(),
            s3: None,
        }
    }
}

fn default_blobs_path() -> PathBuf {
    "var/blobs".into()
}
fn default_keep_above_kib() -> usize {
    64
}
fn default_delivery_memory_mib() -> usize {
    256
}
fn default_sweep_every() -> Duration {
    Duration::from_secs(60)
}

/// One back office that receives documents.
#[derive(Debug, Deserialize)]
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
fn default_listen() -> SocketAddr {
    ([127, 0, 0, 1], 8080).into()
}
fn default_intake_memory_mib() -> usize {
    128
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    1000
}
fn default_max_body_bytes() -> usize {
    40 * 1024 * 1024
}
fn default_max_attachments() -> usize {
    crate::submission::Limits::default().attachments
}
fn default_max_attachment_bytes() -> usize {
    crate::submission::Limits::default().attachment_bytes
}
fn default_max_json_depth() -> usize {
    crate::submission::Limits::default().json_depth
}
/// serde_json reads at most 128 levels; the queued message nests the form
/// one level deeper than intake sees it, and the limit leaves room.
fn json_depth_limit<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let depth = usize::deserialize(deserializer)?;
    if !(1..=100).contains(&depth) {
        return Err(serde::de::Error::custom(format!("max_json_depth must be 1 to 100, not {depth}")));
    }
    Ok(depth)
}
fn default_broker_url() -> SecretString {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}
fn default_max_message_bytes() -> usize {
    16 << 20
}
fn default_prefix() -> String {
    "amtsbote".into()
}
fn default_store_path() -> PathBuf {
    "var/amtsbote.sqlite".into()
}
fn default_retention() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}
fn default_concurrency() -> u16 {
    8
}
fn default_shutdown_deadline() -> Duration {
    Duration::from_secs(20)
}

impl Default for HttpSettings {
    fn default() -> Self {
        let limits = crate::submission::Limits::default();
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_attachments: limits.attachments,
            max_attachment_bytes: limits.attachment_bytes,
            max_json_depth: limits.json_depth,
            intake_memory_mib: default_intake_memory_mib(),
            body_timeout: default_body_timeout(),
            header_timeout: default_header_timeout(),
            max_connections: default_max_connections(),
            tls: None,
        }
    }
}
impl Default for BrokerSettings {
    fn default() -> Self {
        Self { url: default_broker_url(), prefix: default_prefix(), ca_file: None, max_message_bytes: default_max_message_bytes() }
    }
}
impl Default for StoreSettings {
    fn default() -> Self {
        Self { path: default_store_path(), retention: default_retention() }
    }
}

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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
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

fn read_yaml_with<T>(path: &Path, parse: impl Fn(&str) -> Result<T, String>) -> Result<(String, T), FileError> {
    let file = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| FileError::Read { file: file(), error })?;
    let value = parse(&text).map_err(|message| FileError::Invalid { file: file(), message })?;
    Ok((text, value))
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
        if let Some(path) = var("AMTSBOTE_BLOBS_PATH") {
            self.blobs.path = path.into();
        }
        Ok(())
    }
}

impl BrokerSettings {
    /// The URL without credentials, for logs and messages.
    pub fn display_url(&self) -> String {
        redact_url(self.url.expose_secret())
    }

    pub fn endpoint(&self) -> crate::broker::Endpoint {
        crate::broker::Endpoint { url: self.url.clone(), ca_file: self.ca_file.clone() }
    }
}

/// `amqp://user:pass@host:5672/vhost` → `amqp://host:5672/vhost`.
pub fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.http.listen, default_listen());
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
