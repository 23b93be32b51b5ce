//! SFTP connector: places cases on an SFTP server, in the layout of the
//! transfer-directory connector (atomic: written under a part name, then
//! renamed; idempotent by name).
//!
//! The server is recognised by its pinned host key only: there is no
//! trust on first use. Each delivery opens its own SSH connection, so a
//! restarted server or a rotated key needs nothing but a reload.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery, FileReader, Outcome, Secret, SecretRef, Unhealthy};
use amtsbote_connector_directory::layout::{self, CaseDirectory, Entry, Layout, LayoutConfig, LayoutError};
use bytes::Bytes;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::StatusCode;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// Place cases on an SFTP server.
///
/// ```yaml
/// connector:
///   sftp:
///     host: sftp.verfahren.example.de
///     user: amtsbote
///     host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI…"   # ssh-keyscan -t ed25519 HOST
///     private_key: { file: /run/secrets/sftp-key }
///     path: /eingang/gewerbe
///     layout: { done_marker: true }
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    pub host: String,
    /// Default 22.
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    /// The server's public host key as in `known_hosts` or
    /// `ssh-keyscan` output (`ssh-ed25519 AAAA…`; a host name before it
    /// and a comment after it are ignored). Connections to a server with
    /// another key are refused.
    pub host_key: String,
    /// An OpenSSH private key (secret reference); or use `password`.
    #[serde(default)]
    pub private_key: Option<SecretRef>,
    /// The private key's passphrase, if it has one.
    #[serde(default)]
    pub passphrase: Option<SecretRef>,
    /// A password (secret reference), where keys are not offered.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// The directory on the server cases are placed in; it must exist.
    pub path: String,
    /// Names and markers of cases, as for the `directory` connector.
    #[serde(default)]
    pub layout: LayoutConfig,
    /// Upper bound for one delivery, connection included (default `60s`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

fn default_port() -> u16 {
    22
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, thiserror::Error)]
pub enum SftpConfigError {
    #[error("{0}")]
    Secret(#[from] amtsbote_connector::SecretError),
    #[error("host_key: not a public key such as \"ssh-ed25519 AAAA…\"")]
    BadHostKey,
    #[error("private_key: not an OpenSSH private key, or the passphrase does not fit")]
    BadPrivateKey,
    #[error("give either `private_key` or `password`")]
    Credentials,
    #[error("path must be absolute")]
    RelativePath,
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    BadTimeout(#[from] amtsbote_connector::BadTimeout),
}

/// How we log in.
enum Login {
    Key(Arc<russh::keys::PrivateKey>),
    Password(Secret),
}

impl ConnectorConfig for SftpConfig {
    type Connector = SftpConnector;
    type Error = SftpConfigError;

    fn build(&self, context: &Context) -> Result<SftpConnector, SftpConfigError> {
        amtsbote_connector::check_timeout(self.timeout)?;
        if !self.path.starts_with('/') {
            return Err(SftpConfigError::RelativePath);
        }
        let host_key = parse_host_key(&self.host_key).ok_or(SftpConfigError::BadHostKey)?;
        let login = match (&self.private_key, &self.password) {
            (Some(key), None) => {
                let key = context.secret(key)?;
                let passphrase = self.passphrase.as_ref().map(|p| context.secret(p)).transpose()?;
                let key = russh::keys::decode_secret_key(key.expose(), passphrase.as_ref().map(Secret::expose))
                    .map_err(|_| SftpConfigError::BadPrivateKey)?;
                Login::Key(Arc::new(key))
            }
            (None, Some(password)) => Login::Password(context.secret(password)?),
            _ => return Err(SftpConfigError::Credentials),
        };
        Ok(SftpConnector {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            host_key,
            login,
            root: self.path.trim_end_matches('/').to_owned(),
            layout: Layout::new(&self.layout)?,
            timeout: self.timeout,
        })
    }
}

/// The key of a `known_hosts` or `ssh-keyscan` line: the field after the
/// algorithm name.
fn parse_host_key(line: &str) -> Option<PublicKey> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let at = fields.iter().position(|f| f.starts_with("ssh-") || f.starts_with("ecdsa-"))?;
    russh::keys::parse_public_key_base64(fields.get(at + 1)?).ok()
}

pub struct SftpConnector {
    host: String,
    port: u16,
    user: String,
    host_key: PublicKey,
    login: Login,
    root: String,
    layout: Layout,
    timeout: Duration,
}

/// Accepts the server only with the pinned key.
struct PinnedHostKey(PublicKey);

impl russh::client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(matches!(key, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.0.key_data()))
    }
}

/// Why a connection could not be used.
enum ConnectError {
    /// The server is not reachable or broke off: worth retrying.
    Transient(String),
    /// Wrong host key or refused credentials: needs an operator.
    Refused(String),
}

impl SftpConnector {
    async fn connect(&self) -> Result<(russh::client::Handle<PinnedHostKey>, SftpSession), ConnectError> {
        let config = Arc::new(russh::client::Config { inactivity_timeout: Some(self.timeout), ..Default::default() });
        let mut session = russh::client::connect(config, (self.host.as_str(), self.port), PinnedHostKey(self.host_key.clone()))
            .await
            .map_err(|e| match e {
                russh::Error::UnknownKey => ConnectError::Refused(format!(
                    "{}:{}: the server's host key is not the pinned `host_key`; if the server was re-keyed, update it",
                    self.host, self.port
                )),
                other => ConnectError::Transient(format!("{}:{}: {other}", self.host, self.port)),
            })?;
        let authenticated = match &self.login {
            Login::Key(key) => {
                let hash = session.best_supported_rsa_hash().await.ok().flatten().flatten();
                session.authenticate_publickey(&self.user, PrivateKeyWithHashAlg::new(key.clone(), hash)).await
            }
            Login::Password(password) => session.authenticate_password(&self.user, password.expose()).await,
        }
        .map_err(|e| ConnectError::Transient(format!("{}:{}: authentication broke off: {e}", self.host, self.port)))?;
        if !authenticated.success() {
            return Err(ConnectError::Refused(format!("{}:{}: the server refused the login of {}", self.host, self.port, self.user)));
        }
        let channel = session.channel_open_session().await.map_err(|e| ConnectError::Transient(format!("SSH channel: {e}")))?;
        channel.request_subsystem(true, "sftp").await.map_err(|e| ConnectError::Transient(format!("SFTP subsystem: {e}")))?;
        let sftp = SftpSession::new(channel.into_stream()).await.map_err(|e| ConnectError::Transient(format!("SFTP: {e}")))?;
        sftp.set_timeout(self.timeout.as_secs().max(1));
        Ok((session, sftp))
    }

    async fn attempt(&self, delivery: &Delivery) -> Outcome {
        let (session, sftp) = match self.connect().await {
            Ok(connected) => connected,
            Err(ConnectError::Transient(reason)) => return Outcome::transient(reason),
            Err(ConnectError::Refused(reason)) => return Outcome::permanent(reason),
        };
        let directory = RemoteDirectory { sftp, root: self.root.clone() };
        let outcome = layout::place(&directory, &self.layout, delivery).await;
        let _ = directory.sftp.close().await;
        let _ = session.disconnect(russh::Disconnect::ByApplication, "", "").await;
        outcome
    }
}

#[async_trait::async_trait]
impl Connector for SftpConnector {
    async fn deliver(&self, delivery: &Delivery) -> Outcome {
        match tokio::time::timeout(self.timeout, self.attempt(delivery)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::transient(format!("timeout: {}:{} did not finish within {:?}", self.host, self.port, self.timeout)),
        }
    }

    /// Logs in and finds the directory.
    async fn probe(&self) -> Result<(), Unhealthy> {
        let probe = async {
            let (session, sftp) = self.connect().await.map_err(|(ConnectError::Transient(e) | ConnectError::Refused(e))| Unhealthy(e))?;
            let directory = RemoteDirectory { sftp, root: self.root.clone() };
            let found = directory.check_root().await.map_err(|e| Unhealthy(format!("{}: {e}", self.root)));
            let _ = session.disconnect(russh::Disconnect::ByApplication, "", "").await;
            found
        };
        tokio::time::timeout(self.timeout, probe)
            .await
            .unwrap_or_else(|_| Err(Unhealthy(format!("{}:{} did not answer within {:?}", self.host, self.port, self.timeout))))
    }
}

struct RemoteDirectory {
    sftp: SftpSession,
    root: String,
}

impl RemoteDirectory {
    fn path(&self, relative: &str) -> String {
        if relative.is_empty() { self.root.clone() } else { format!("{}/{relative}", self.root) }
    }
}

fn io_error(error: russh_sftp::client::error::Error) -> io::Error {
    use russh_sftp::client::error::Error;
    match &error {
        Error::Status(status) if status.status_code == StatusCode::NoSuchFile => io::Error::new(io::ErrorKind::NotFound, "no such file"),
        Error::Status(status) if status.status_code == StatusCode::PermissionDenied => {
            io::Error::new(io::ErrorKind::PermissionDenied, "permission denied")
        }
        Error::Timeout => io::Error::new(io::ErrorKind::TimedOut, "the server did not answer"),
        _ => io::Error::other(error.to_string()),
    }
}

#[async_trait::async_trait]
impl CaseDirectory for RemoteDirectory {
    async fn check_root(&self) -> io::Result<()> {
        let metadata = self.sftp.metadata(self.root.clone()).await.map_err(io_error)?;
        if metadata.is_dir() { Ok(()) } else { Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory")) }
    }

    async fn entry(&self, path: &str) -> io::Result<Option<Entry>> {
        match self.sftp.symlink_metadata(self.path(path)).await.map_err(io_error) {
            Ok(m) if m.is_dir() => Ok(Some(Entry::Folder)),
            Ok(_) => Ok(Some(Entry::File)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read(&self, path: &str) -> io::Result<Bytes> {
        self.sftp.read(self.path(path)).await.map(Bytes::from).map_err(io_error)
    }

    async fn write_from(&self, path: &str, mut reader: FileReader) -> io::Result<()> {
        let mut file = self.sftp.create(self.path(path)).await.map_err(io_error)?;
        tokio::io::copy(&mut reader, &mut file).await?;
        file.flush().await?;
        // fsync@openssh.com; servers without the extension get none.
        if let Err(e) = file.sync_all().await {
            tracing::debug!(event = "sftp_fsync_unsupported", error = %e, "the SFTP server does not sync files");
        }
        file.shutdown().await
    }

    async fn create_folder(&self, path: &str) -> io::Result<()> {
        self.sftp.create_dir(self.path(path)).await.map_err(io_error)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.sftp.rename(self.path(from), self.path(to)).await.map_err(io_error)
    }

    async fn remove(&self, path: &str) -> io::Result<()> {
        let full = self.path(path);
        match self.entry(path).await? {
            None => Ok(()),
            Some(Entry::File) => self.sftp.remove_file(full).await.map_err(io_error),
            Some(Entry::Folder) => {
                let entries: Vec<String> =
                    self.sftp.read_dir(full.clone()).await.map_err(io_error)?.map(|e| e.file_name()).collect();
                for name in entries.into_iter().filter(|n| n != "." && n != "..") {
                    Box::pin(self.remove(&format!("{path}/{name}"))).await?;
                }
                self.sftp.remove_dir(full).await.map_err(io_error)
            }
        }
    }

    /// SFTP has no directory sync; the server's file system orders the
    /// rename after the synced file.
    async fn sync_folder(&self, _: &str) -> io::Result<()> {
        Ok(())
    }
}
