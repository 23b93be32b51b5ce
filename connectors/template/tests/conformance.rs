//! The conformance suite against a real Beispiel-Akte stand-in on
//! loopback. A vendor's harness starts their product's test server (or a
//! faithful stand-in like this one) and lets the suite do the rest:
//!
//!     cargo test -p amtsbote-connector-template --test conformance

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery, SecretRef};
use amtsbote_connector_conformance::{Carries, Case, Condition, Harness, conformance_suite};
use amtsbote_connector_template::BeispielAkteConfig;
use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use bytes::Bytes;

const API_KEY: &str = "beispiel-akte-api-key-0c3d";

#[derive(Default)]
struct Akte {
    condition: Option<Condition>,
    cases: BTreeMap<String, Bytes>,
}

type Shared = Arc<Mutex<Akte>>;

#[derive(serde::Deserialize)]
struct Vorgang {
    id: String,
    document: String,
}

async fn vorgaenge(State(akte): State<Shared>, headers: HeaderMap, Json(vorgang): Json<Vorgang>) -> (StatusCode, String) {
    if headers.get("authorization").is_none_or(|v| v != format!("Bearer {API_KEY}").as_str()) {
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    let condition = akte.lock().unwrap().condition.unwrap_or(Condition::Accepting);
    match condition {
        Condition::Accepting => {}
        Condition::Unavailable => return (StatusCode::SERVICE_UNAVAILABLE, String::new()),
        Condition::Refusing => return (StatusCode::UNPROCESSABLE_ENTITY, String::new()),
        Condition::Unresponsive => tokio::time::sleep(Duration::from_secs(3600)).await,
    }
    let document = base64::engine::general_purpose::STANDARD.decode(vorgang.document).unwrap();
    let mut akte = akte.lock().unwrap();
    if akte.cases.contains_key(&vorgang.id) {
        return (StatusCode::CONFLICT, String::new());
    }
    akte.cases.insert(vorgang.id, Bytes::from(document));
    (StatusCode::CREATED, format!(r#"{{"aktenzeichen":"AZ-{}"}}"#, akte.cases.len()))
}

struct BeispielAkteHarness {
    base_url: String,
    akte: Shared,
    dir: tempfile::TempDir,
}

#[async_trait::async_trait]
impl Harness for BeispielAkteHarness {
    async fn start() -> Self {
        let akte = Shared::default();
        let app = axum::Router::new()
            .route("/api/v1/vorgaenge", post(vorgaenge))
            .layer(DefaultBodyLimit::disable())
            .with_state(akte.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/api/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api-key"), API_KEY).unwrap();
        BeispielAkteHarness { base_url, akte, dir }
    }

    async fn connector(&self, timeout: Duration) -> Arc<dyn Connector> {
        let config = BeispielAkteConfig { base_url: self.base_url.clone(), api_key: SecretRef::File("api-key".into()), timeout };
        Arc::new(config.build(&Context::new(self.dir.path())).unwrap())
    }

    async fn set(&mut self, condition: Condition, _: &Delivery) {
        self.akte.lock().unwrap().condition = Some(condition);
    }

    async fn cases(&self) -> Vec<Case> {
        let akte = self.akte.lock().unwrap();
        akte.cases.iter().map(|(id, document)| Case { key: id.clone(), files: BTreeMap::from([("document".to_owned(), document.clone())]) }).collect()
    }

    fn secrets(&self) -> Vec<String> {
        vec![API_KEY.into()]
    }

    fn carries(&self) -> Carries {
        Carries::Documents
    }
}

conformance_suite!(BeispielAkteHarness);
