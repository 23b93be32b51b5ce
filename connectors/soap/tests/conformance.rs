//! The SOAP connector against a real SOAP 1.2 service on loopback, which
//! files cases by WS-Addressing MessageID and wants HTTP Basic auth.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery, SecretRef};
use amtsbote_connector_conformance::{Carries, Case, Condition, Harness, conformance_suite};
use amtsbote_connector_http::AuthConfig;
use amtsbote_connector_soap::{SoapConfig, SoapVersion};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;

const PASSWORD: &str = "conformance-soap-password-4b2e";
const DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

#[derive(Default)]
struct Service {
    condition: Option<Condition>,
    cases: BTreeMap<String, Bytes>,
}

type Shared = Arc<Mutex<Service>>;

fn fault(code: &str) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [("content-type", "application/soap+xml")],
        format!(
            r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault><env:Code><env:Value>env:{code}</env:Value></env:Code><env:Reason><env:Text xml:lang="de">nein</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#
        ),
    )
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = from + text[from..].rfind(end)?;
    Some(&text[from..to])
}

async fn service(State(state): State<Shared>, headers: HeaderMap, body: String) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let basic = format!("Basic {}", base64_of(&format!("amtsbote:{PASSWORD}")));
    if headers.get("authorization").is_none_or(|v| v != basic.as_str()) {
        return (StatusCode::UNAUTHORIZED, [("content-type", "text/plain")], String::new());
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(content_type.starts_with("application/soap+xml") && content_type.contains("action=\"urn:test:einreichen\""), "{content_type}");
    let condition = state.lock().unwrap().condition.unwrap_or(Condition::Accepting);
    match condition {
        Condition::Accepting => {}
        Condition::Unavailable => return fault("Receiver"),
        Condition::Refusing => return fault("Sender"),
        Condition::Unresponsive => tokio::time::sleep(Duration::from_secs(3600)).await,
    }
    let (Some(id), Some(document)) = (between(&body, "<wsa:MessageID>", "</wsa:MessageID>"), between(&body, "<soap:Body>", "</soap:Body>")) else {
        return fault("Sender");
    };
    let mut state = state.lock().unwrap();
    let number = state.cases.len() + 1;
    state.cases.entry(id.to_owned()).or_insert_with(|| Bytes::from(format!("{DECLARATION}{document}")));
    (
        StatusCode::OK,
        [("content-type", "application/soap+xml")],
        format!(r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><quittung><vorgangsnummer>V-{number}</vorgangsnummer></quittung></env:Body></env:Envelope>"#),
    )
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

struct SoapHarness {
    url: String,
    state: Shared,
    dir: tempfile::TempDir,
}

#[async_trait::async_trait]
impl Harness for SoapHarness {
    async fn start() -> Self {
        let state = Shared::default();
        let app = Router::new().route("/svc", post(service)).layer(DefaultBodyLimit::disable()).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/svc", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("password"), format!("{PASSWORD}\n")).unwrap();
        SoapHarness { url, state, dir }
    }

    async fn connector(&self, timeout: Duration) -> Arc<dyn Connector> {
        let mut config = SoapConfig::new(&self.url);
        config.version = SoapVersion::V1_2;
        config.action = Some("urn:test:einreichen".into());
        config.ws_addressing = true;
        config.receipt_element = Some("vorgangsnummer".into());
        config.timeout = timeout;
        config.auth = Some(AuthConfig::Basic { username: "amtsbote".into(), password: SecretRef::File("password".into()) });
        Arc::new(config.build(&Context::new(self.dir.path())).unwrap())
    }

    async fn set(&mut self, condition: Condition, _: &Delivery) {
        self.state.lock().unwrap().condition = Some(condition);
    }

    async fn cases(&self) -> Vec<Case> {
        let state = self.state.lock().unwrap();
        state.cases.iter().map(|(key, body)| Case { key: key.clone(), files: BTreeMap::from([("body".to_owned(), body.clone())]) }).collect()
    }

    fn secrets(&self) -> Vec<String> {
        vec![PASSWORD.into(), base64_of(&format!("amtsbote:{PASSWORD}"))]
    }

    fn carries(&self) -> Carries {
        Carries::Documents
    }
}

conformance_suite!(SoapHarness);
