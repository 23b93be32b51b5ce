//! The connector kinds amtsbote knows: the one place a new connector is
//! added (a variant, its `build` arm, whether it carries packages).

use std::sync::Arc;

use amtsbote_connector::{Connector, Context};
use amtsbote_connector_directory::DirectoryConfig;
use amtsbote_connector_email::EmailConfig;
use amtsbote_connector_http::HttpConfig;
use amtsbote_connector_sftp::SftpConfig;
use amtsbote_connector_soap::SoapConfig;
use serde::Deserialize;

/// The connector of a target, by kind: exactly one of the keys below.
/// Each kind's settings are described in the README ("Connectors").
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ConnectorConfig {
    /// REST and other HTTP APIs.
    Http(HttpConfig),
    /// A local or mounted transfer directory.
    Directory(DirectoryConfig),
    /// SOAP 1.1 and 1.2 web services.
    Soap(SoapConfig),
    /// An SFTP server.
    Sftp(SftpConfig),
    /// E-mail over SMTP: the route of last resort.
    Email(EmailConfig),
}

/// Why a connector could not be built from its settings: the connector
/// crate's own error (each names the setting it is about).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ConnectorBuildError(Box<dyn std::error::Error + Send + Sync>);

impl ConnectorConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectorConfig::Http(_) => "http",
            ConnectorConfig::Directory(_) => "directory",
            ConnectorConfig::Soap(_) => "soap",
            ConnectorConfig::Sftp(_) => "sftp",
            ConnectorConfig::Email(_) => "email",
        }
    }

    /// Whether the connector can deliver a folder package
    /// (`package: { format: folder }`); the others take one document.
    pub fn carries_folders(&self) -> bool {
        match self {
            ConnectorConfig::Http(_) => false,
            ConnectorConfig::Directory(_) => true,
            ConnectorConfig::Soap(_) => false,
            ConnectorConfig::Sftp(_) => true,
            ConnectorConfig::Email(_) => true,
        }
    }

    /// Builds the connector; relative paths and secret files are resolved
    /// against `context`'s directory (the config file's).
    pub fn build(&self, context: &Context) -> Result<Arc<dyn Connector>, ConnectorBuildError> {
        fn built<C: amtsbote_connector::ConnectorConfig>(config: &C, context: &Context) -> Result<Arc<dyn Connector>, ConnectorBuildError> {
            config.build(context).map(|c| Arc::new(c) as Arc<dyn Connector>).map_err(|e| ConnectorBuildError(Box::new(e)))
        }
        match self {
            ConnectorConfig::Http(config) => built(config, context),
            ConnectorConfig::Directory(config) => built(config, context),
            ConnectorConfig::Soap(config) => built(config, context),
            ConnectorConfig::Sftp(config) => built(config, context),
            ConnectorConfig::Email(config) => built(config, context),
        }
    }
}
