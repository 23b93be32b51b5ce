//! SOAP connector: wraps each XML document in a SOAP 1.1 or 1.2 envelope
//! and posts it, with the HTTP connector's TLS and authentication.
//!
//! Faults decide the outcome: a client fault (`Client` in 1.1, `Sender` in
//! 1.2) says the message is wrong and is permanent; a server fault
//! (`Server`, `Receiver`) says the service failed and is transient. Only the
//! fault's codes are kept, not its text: fault strings of back offices
//! often quote the values they refused.

use std::time::Duration;

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery, Outcome, Payload, Unhealthy, extension_for, short_text};
use amtsbote_connector_http::{AuthConfig, Client, ClientError, TlsConfig, http_url, read_limited, retry_after};
use bytes::{BufMut, Bytes, BytesMut};
use quick_xml::events::Event;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Deserialize;

/// Call a SOAP web service.
///
/// ```yaml
/// connector:
///   soap:
///     url: https://verfahren.example.de/services/GewerbeService
///     version: "1.2"
///     action: urn:xoev-de:xgewerbeanzeige:gewerbeanmeldung
///     ws_addressing: true
///     receipt_element: vorgangsnummer
///     auth:
///       basic: { username: amtsbote, password: { file: /run/secrets/gewerbe-soap } }
/// ```
///
/// The mapping renders the Body's content (an XML document; its XML
/// declaration is dropped). `auth` and `tls` are those of the `http`
/// connector.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SoapConfig {
    /// The service endpoint (`http` or `https`).
    pub url: String,
    /// SOAP version: `"1.1"` (default; `text/xml` and a `SOAPAction`
    /// header) or `"1.2"` (`application/soap+xml` with an `action`
    /// parameter).
    #[serde(default)]
    pub version: SoapVersion,
    /// The operation's action URI, if the service wants one.
    #[serde(default)]
    pub action: Option<String>,
    /// Adds WS-Addressing headers: `To`, `Action` and `MessageID` (from the
    /// delivery id, the same on every attempt, for services that drop
    /// repeats).
    #[serde(default)]
    pub ws_addressing: bool,
    /// Local name of the element in the answer's Body whose text is the
    /// service's reference for the case; recorded as the receipt.
    #[serde(default)]
    pub receipt_element: Option<String>,
    /// Upper bound for one call (default `30s`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// As for the `http` connector.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// As for the `http` connector.
    #[serde(default)]
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
pub enum SoapVersion {
    #[default]
    #[serde(rename = "1.1")]
    V1_1,
    #[serde(rename = "1.2")]
    V1_2,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl SoapConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            version: SoapVersion::default(),
            action: None,
            ws_addressing: false,
            receipt_element: None,
            timeout: default_timeout(),
            auth: None,
            tls: TlsConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SoapConfigError {
    #[error("url {0:?} is not an absolute http(s) URL")]
    BadUrl(String),
    #[error("action {0:?} may not contain quotes or control characters")]
    BadAction(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl ConnectorConfig for SoapConfig {
    type Connector = SoapConnector;
    type Error = SoapConfigError;

    fn build(&self, context: &Context) -> Result<SoapConnector, SoapConfigError> {
        let url = http_url(&self.url).ok_or_else(|| SoapConfigError::BadUrl(self.url.clone()))?;
        if let Some(action) = &self.action
            && action.chars().any(|c| c == '"' || c.is_control())
        {
            return Err(SoapConfigError::BadAction(action.clone()));
        }
        let content_type = match self.version {
            SoapVersion::V1_1 => "text/xml; charset=utf-8".to_owned(),
            SoapVersion::V1_2 => match &self.action {
                Some(action) => format!("application/soap+xml; charset=utf-8; action=\"{action}\""),
                None => "application/soap+xml; charset=utf-8".to_owned(),
            },
        };
        Ok(SoapConnector {
            client: Client::new(self.timeout, &self.tls, self.auth.as_ref(), context)?,
            url,
            content_type: HeaderValue::from_str(&content_type).map_err(|_| SoapConfigError::BadAction(content_type))?,
            version: self.version,
            action: self.action.clone(),
            ws_addressing: self.ws_addressing,
            receipt_element: self.receipt_element.clone(),
        })
    }
}

pub struct SoapConnector {
    client: Client,
    url: reqwest::Url,
    content_type: HeaderValue,
    version: SoapVersion,
    action: Option<String>,
    ws_addressing: bool,
    receipt_element: Option<String>,
}

const SOAP_1_1: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const SOAP_1_2: &str = "http://www.w3.org/2003/05/soap-envelope";
const WS_ADDRESSING: &str = "http://www.w3.org/2005/08/addressing";

impl SoapConnector {
    /// The envelope around `document` (without its XML declaration).
    fn envelope(&self, delivery: &Delivery, document: &[u8]) -> Bytes {
        let namespace = match self.version {
            SoapVersion::V1_1 => SOAP_1_1,
            SoapVersion::V1_2 => SOAP_1_2,
        };
        let mut out = BytesMut::with_capacity(document.len() + 1024);
        out.put_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.put_slice(format!("<soap:Envelope xmlns:soap=\"{namespace}\"").as_bytes());
        if self.ws_addressing {
            out.put_slice(format!(" xmlns:wsa=\"{WS_ADDRESSING}\"").as_bytes());
        }
        out.put_slice(b">");
        if self.ws_addressing {
            out.put_slice(b"<soap:Header>");
            out.put_slice(format!("<wsa:To>{}</wsa:To>", escape(self.url.as_str())).as_bytes());
            if let Some(action) = &self.action {
                out.put_slice(format!("<wsa:Action>{}</wsa:Action>", escape(action)).as_bytes());
            }
            out.put_slice(format!("<wsa:MessageID>urn:uuid:{}</wsa:MessageID>", delivery.delivery_id).as_bytes());
            out.put_slice(b"</soap:Header>");
        }
        out.put_slice(b"<soap:Body>");
        out.put_slice(without_declaration(document));
        out.put_slice(b"</soap:Body></soap:Envelope>");
        out.freeze()
    }
}

fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

/// The document without a byte order mark and XML declaration, which
/// cannot stand inside the envelope.
pub fn without_declaration(document: &[u8]) -> &[u8] {
    let document = document.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(document);
    let trimmed = document.trim_ascii_start();
    if trimmed.starts_with(b"<?xml")
        && let Some(end) = trimmed.windows(2).position(|w| w == b"?>")
    {
        return trimmed[end + 2..].trim_ascii_start();
    }
    document
}

#[async_trait::async_trait]
impl Connector for SoapConnector {
    async fn deliver(&self, delivery: &Delivery) -> Outcome {
        let Payload::Document { content_type, body } = &delivery.payload else {
            return Outcome::permanent("the soap connector sends one XML document; the mapping packs a folder");
        };
        if extension_for(content_type) != "xml" {
            return Outcome::permanent(format!("the soap connector sends XML; the mapping renders {}", short_text(content_type, 80)));
        }
        let envelope = self.envelope(delivery, body);
        let id = HeaderValue::from_str(&delivery.delivery_id.to_string()).expect("a UUID is a valid header value");
        let sent = self
            .client
            .send(|http| {
                let mut request = http
                    .post(self.url.clone())
                    .header(CONTENT_TYPE, self.content_type.clone())
                    .header("idempotency-key", id.clone())
                    .body(envelope.clone());
                if self.version == SoapVersion::V1_1 {
                    request = request.header("SOAPAction", format!("\"{}\"", self.action.as_deref().unwrap_or("")));
                }
                request
            })
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(outcome) => return outcome,
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let answer = match read_limited(response, MAX_ANSWER).await {
            Some(body) => read_answer(&body, self.receipt_element.as_deref()),
            None => Answer::default(),
        };
        let code = status.as_u16();
        match answer.fault {
            Some(fault) => {
                let text = format!("HTTP {code}: SOAP fault {}", fault.describe());
                if fault.is_server_side() { Outcome::Transient { reason: text, retry_after } } else { Outcome::permanent(text) }
            }
            None if status.is_success() => Outcome::delivered(format!("HTTP {code}")).with_receipt(answer.receipt),
            None if status.is_server_error() || code == 408 || code == 429 => {
                Outcome::Transient { reason: format!("HTTP {code}"), retry_after }
            }
            None => Outcome::permanent(format!("HTTP {code}")),
        }
    }

    async fn probe(&self) -> Result<(), Unhealthy> {
        self.client.probe(&self.url).await
    }
}

/// The largest answer read for a fault or receipt; beyond it the status
/// alone decides.
const MAX_ANSWER: usize = 1024 * 1024;

/// What amtsbote takes from a SOAP answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub fault: Option<Fault>,
    pub receipt: Option<String>,
}

/// A SOAP fault's codes, as written (`soap:Client`, `env:Sender`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fault {
    pub code: String,
    /// SOAP 1.2 subcodes, outermost first.
    pub subcodes: Vec<String>,
}

impl Fault {
    /// `Server` and `Receiver` faults (also `Server.Busy` and the like) are
    /// the service's own failures; all others blame the message.
    pub fn is_server_side(&self) -> bool {
        let local = self.code.rsplit(':').next().unwrap_or("");
        let class = local.split('.').next().unwrap_or("");
        matches!(class, "Server" | "Receiver")
    }

    fn describe(&self) -> String {
        let mut text = short_text(self.code.trim(), 80);
        for subcode in &self.subcodes {
            text.push_str(" / ");
            text.push_str(&short_text(subcode.trim(), 80));
        }
        text
    }
}

/// Reads the fault codes and the receipt from a SOAP answer. Anything that
/// is not well-formed yields what was read up to there.
pub fn read_answer(body: &[u8], receipt_element: Option<&str>) -> Answer {
    use quick_xml::reader::Reader;
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut path: Vec<String> = Vec::new();
    let mut answer = Answer::default();
    let mut fault: Option<Fault> = None;
    let mut receipt: Option<String> = None;
    let mut receipt_depth: Option<usize> = None;
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let event = match reader.read_event_into(&mut buffer) {
            Ok(event) => event,
            Err(_) => break,
        };
        match event {
            Event::Start(start) => {
                let name = start.local_name().into_inner().to_owned();
                if path.len() >= 64 {
                    break;
                }
                path.push(name);
                let in_body = path.len() >= 3 && path[0] == "Envelope" && path[1] == "Body";
                if in_body && path.len() == 3 && path[2] == "Fault" {
                    fault = Some(Fault::default());
                }
                if in_body && receipt_depth.is_none() && receipt.is_none() && receipt_element == Some(path.last().unwrap().as_str()) {
                    receipt_depth = Some(path.len());
                    receipt = Some(String::new());
                }
            }
            Event::End(_) => {
                if receipt_depth == Some(path.len()) {
                    receipt_depth = None;
                }
                path.pop();
            }
            Event::Text(text) => append_text(&path, &mut fault, receipt_depth.and(receipt.as_mut()), &text.xml10_content()),
            Event::CData(data) => append_text(&path, &mut fault, receipt_depth.and(receipt.as_mut()), &data.xml10_content()),
            Event::Eof => break,
            _ => {}
        }
    }
    answer.fault = fault.filter(|f| !f.code.is_empty());
    answer.receipt = receipt.map(|r| short_text(r.trim(), 200)).filter(|r| !r.is_empty());
    answer
}

fn append_text(path: &[String], fault: &mut Option<Fault>, receipt: Option<&mut String>, text: &str) {
    if let Some(receipt) = receipt {
        receipt.push_str(text);
    }
    let Some(fault) = fault else { return };
    // Below Envelope/Body/Fault.
    let inner: Vec<&str> = path.iter().skip(3).map(String::as_str).collect();
    match inner.as_slice() {
        ["faultcode"] | ["Code", "Value"] => fault.code.push_str(text),
        ["Code", rest @ ..] if rest.len() >= 2 && rest.last() == Some(&"Value") && rest[..rest.len() - 1].iter().all(|s| *s == "Subcode") => {
            let depth = rest.len() - 1;
            if fault.subcodes.len() < depth {
                fault.subcodes.resize(depth, String::new());
            }
            fault.subcodes[depth - 1].push_str(text);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
