//! E-mail connector: sends each document as an attachment over SMTP.
//!
//! E-mail is the route of last resort. A message that bounces later (a full
//! mailbox, a changed address) comes back to the sender's mailbox, long
//! after the SMTP server said "250 OK": amtsbote counts the application as
//! delivered while it is lost. Transport encryption (STARTTLS, TLS) covers
//! only the hop to the next server; every mail server on the way, and the
//! mailbox, hold the application in plain text. Use it only where the back
//! office has no other way in, ideally to a server of the municipality's
//! own, and never for special categories of personal data (health, tax
//! secrets) without end-to-end encryption.

use std::time::Duration;

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery, Outcome, Payload, Secret, SecretRef, Unhealthy, extension_for, short_text};
use bytes::Bytes;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

/// Send documents by e-mail.
///
/// ```yaml
/// connector:
///   email:
///     host: mail.kreis.example.de
///     tls: starttls
///     username: amtsbote
///     password: { file: /run/secrets/smtp-password }
///     from: amtsbote@kreis.example.de
///     to: [gewerbeamt@gemeinde.example.de]
///     subject: "Gewerbeanmeldung {submission_id}"
/// ```
///
/// The message has a short text part naming the submission and the
/// document as an attachment `<delivery id>.<ext>` (each file of a folder
/// package as its own attachment, its folders joined with `_`). Its
/// `Message-ID` is `<delivery id@amtsbote>` on every attempt, so that a
/// mail importer can drop a repeat.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server.
    pub host: String,
    /// Its port; by default 587 for `starttls`, 465 for `tls`, 25 for `none`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default; the server must offer it), `tls` (TLS from the
    /// first byte) or `none` (plain text: only for a relay on the same
    /// host or network segment).
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file of a further CA certificate to trust (relative to the
    /// config file).
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// SMTP AUTH user; with `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// SMTP AUTH password, a secret reference.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// The sender address.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// Subject, with the placeholders `{submission_id}`, `{delivery_id}` and
    /// `{target}` (default `"Antrag {submission_id}"`). Never put form
    /// data in a subject: mail servers log subjects.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Upper bound for one attempt, from connecting to the server's answer
    /// to the message (default `60s`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Starttls,
    Tls,
    None,
}

fn default_subject() -> String {
    "Antrag {submission_id}".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

impl EmailConfig {
    pub fn new(host: impl Into<String>, from: impl Into<String>, to: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: None,
            tls: TlsMode::default(),
            ca: None,
            username: None,
            password: None,
            from: from.into(),
            to: vec![to.into()],
            subject: default_subject(),
            timeout: default_timeout(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmailConfigError {
    #[error("{0}")]
    Secret(#[from] amtsbote_connector::SecretError),
    #[error("{field}: {value:?} is not an e-mail address")]
    BadAddress { field: &'static str, value: String },
    #[error("to: at least one recipient is needed")]
    NoRecipient,
    #[error("`username` and `password` go together")]
    HalfCredentials,
    #[error("ca: {0}")]
    BadCa(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error(transparent)]
    BadTimeout(#[from] amtsbote_connector::BadTimeout),
}

impl ConnectorConfig for EmailConfig {
    type Connector = EmailConnector;
    type Error = EmailConfigError;

    fn build(&self, context: &Context) -> Result<EmailConnector, EmailConfigError> {
        amtsbote_connector::check_timeout(self.timeout)?;
        let address = |field: &'static str, value: &str| {
            value.parse::<Mailbox>().map_err(|_| EmailConfigError::BadAddress { field, value: value.to_owned() })
        };
        let from = address("from", &self.from)?;
        let to = self.to.iter().map(|t| address("to", t)).collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(EmailConfigError::NoRecipient);
        }
        let credentials = match (&self.username, &self.password) {
            (Some(user), Some(password)) => Some((user.clone(), context.secret(password)?)),
            (None, None) => None,
            _ => return Err(EmailConfigError::HalfCredentials),
        };
        let mut parameters = TlsParameters::builder(self.host.clone());
        if let Some(ca) = &self.ca {
            let pem = context.read(ca)?;
            parameters = parameters.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| EmailConfigError::BadCa(e.to_string()))?);
        }
        let parameters = parameters.build_rustls().map_err(|e| EmailConfigError::Tls(e.to_string()))?;
        let (tls, port) = match self.tls {
            TlsMode::Starttls => (Tls::Required(parameters), 587),
            TlsMode::Tls => (Tls::Wrapper(parameters), 465),
            TlsMode::None => (Tls::None, 25),
        };
        Ok(EmailConnector {
            host: self.host.clone(),
            port: self.port.unwrap_or(port),
            tls,
            credentials,
            timeout: self.timeout,
            from,
            to,
            subject: self.subject.clone(),
        })
    }
}

pub struct EmailConnector {
    host: String,
    port: u16,
    tls: Tls,
    credentials: Option<(String, Secret)>,
    timeout: Duration,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject: String,
}

impl EmailConnector {
    /// A transport per send: no pooled connection outlives a server restart
    /// or a rotated password.
    fn transport(&self) -> AsyncSmtpTransport<Tokio1Executor> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.host.clone())
            .port(self.port)
            .tls(self.tls.clone())
            .timeout(Some(self.timeout));
        if let Some((user, password)) = &self.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        builder.build()
    }

    /// `contents`: those of the package's files, in their order.
    fn message(&self, delivery: &Delivery, contents: &[Bytes]) -> Result<Message, String> {
        let fill = |text: &str| {
            text.replace("{submission_id}", &delivery.submission_id.to_string())
                .replace("{delivery_id}", &delivery.delivery_id.to_string())
                .replace("{target}", &delivery.target)
        };
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(fill(&self.subject))
            .message_id(Some(format!("<{}@amtsbote>", delivery.delivery_id)));
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let text = SinglePart::plain(format!(
            "Ein Antrag ist eingegangen (Einreichung {}). Die Unterlagen sind angehängt.\r\n\r\n\
             An application has arrived (submission {}). The documents are attached.\r\n",
            delivery.submission_id, delivery.submission_id
        ));
        let mut parts = MultiPart::mixed().singlepart(text);
        match &delivery.payload {
            Payload::Document { content_type, body } => {
                let name = format!("{}.{}", delivery.delivery_id, extension_for(content_type));
                let content_type = ContentType::parse(content_type).unwrap_or(ContentType::parse("application/octet-stream").expect("valid"));
                parts = parts.singlepart(Attachment::new(name).body(body.to_vec(), content_type));
            }
            Payload::Files(files) => {
                for (file, content) in files.iter().zip(contents) {
                    let name = file.path.replace('/', "_");
                    let content_type = ContentType::parse("application/octet-stream").expect("valid");
                    parts = parts.singlepart(Attachment::new(name).body(content.to_vec(), content_type));
                }
            }
        }
        builder.multipart(parts).map_err(|e| format!("cannot build the message: {e}"))
    }
}

#[async_trait::async_trait]
impl Connector for EmailConnector {
    async fn deliver(&self, delivery: &Delivery) -> Outcome {
        // A mail carries its attachments whole.
        let mut contents = Vec::new();
        if let Payload::Files(files) = &delivery.payload {
            for file in files {
                match file.content.read_all().await {
                    Ok(content) => contents.push(content),
                    Err(e) => return Outcome::transient(format!("cannot read {} of the package: {e}", file.path)),
                }
            }
        }
        let message = match self.message(delivery, &contents) {
            Ok(message) => message,
            Err(reason) => return Outcome::permanent(reason),
        };
        // lettre bounds connecting and some reads; the server's answer to
        // the message is bounded here.
        let sent = match tokio::time::timeout(self.timeout, self.transport().send(message)).await {
            Ok(sent) => sent,
            Err(_) => return Outcome::transient(format!("timeout: {}:{} did not answer within {:?}", self.host, self.port, self.timeout)),
        };
        match sent {
            Ok(response) => {
                let text = short_text(&response.message().collect::<Vec<_>>().join(" "), 120);
                Outcome::delivered(format!("SMTP {}", response.code())).with_receipt((!text.is_empty()).then_some(text))
            }
            Err(error) => classify(&error),
        }
    }

    /// Connects, says EHLO, starts TLS and logs in; sends nothing.
    async fn probe(&self) -> Result<(), Unhealthy> {
        let tested = tokio::time::timeout(self.timeout, self.transport().test_connection())
            .await
            .map_err(|_| Unhealthy(format!("{}:{} did not answer within {:?}", self.host, self.port, self.timeout)))?;
        match tested {
            Ok(true) => Ok(()),
            Ok(false) => Err(Unhealthy(format!("{}:{} did not answer NOOP", self.host, self.port))),
            Err(error) => Err(Unhealthy(classify(&error).text().to_owned())),
        }
    }
}

/// 5xx replies are permanent; 4xx replies, timeouts, refused connections
/// and TLS failures transient. The reply text is kept (servers name the
/// rule, not the message); lettre's own texts say what failed.
fn classify(error: &lettre::transport::smtp::Error) -> Outcome {
    let text = short_text(&error.to_string(), 300);
    if error.is_permanent() {
        Outcome::permanent(format!("SMTP {text}"))
    } else if error.is_timeout() {
        Outcome::transient(format!("timeout: {text}"))
    } else {
        Outcome::transient(format!("SMTP {text}"))
    }
}
