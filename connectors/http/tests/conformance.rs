//! The HTTP connector against a real HTTP back office on loopback, which
//! files cases by `Idempotency-Key` and wants an OAuth2 token.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery, SecretRef};
use amtsbote_connector_conformance::{Case, Condition, Harness, conformance_suite};
use amtsbote_connector_http::{AuthConfig, ClientAuth, HttpConfig, OAuth2Config};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;

const CLIENT_SECRET: &str = "conformance-client-secret-9f3a";
const TOKEN: &str = "conformance-access-token-77c1";

#[derive(Default)]
struct BackOffice {
    condition: Option<Condition>,
    cases: BTreeMap<String, Bytes>,
}

type Shared = Arc<Mutex<BackOffice>>;

struct HttpHarness {
    base: String,
    state: Shared,
    dir: tempfile::TempDir,
}

async fn token() -> (StatusCode, String) {
    (StatusCode::OK, format!(r#"{{"access_token":"{TOKEN}","expires_in":300}}"#))
}

async fn inbox(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if headers.get("authorization").is_none_or(|v| v != format!("Bearer {TOKEN}").as_str()) {
        return StatusCode::UNAUTHORIZED;
    }
    let condition = state.lock().unwrap().condition.unwrap_or(Condition::Accepting);
    match condition {
        Condition::Accepting => {}
        Condition::Unavailable => return StatusCode::SERVICE_UNAVAILABLE,
        Condition::Refusing => return StatusCode::UNPROCESSABLE_ENTITY,
        Condition::Unresponsive => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut state = state.lock().unwrap();
    if state.cases.contains_key(key) {
        return StatusCode::OK;
    }
    state.cases.insert(key.to_owned(), body);
    StatusCode::CREATED
}

#[async_trait::async_trait]
impl Harness for HttpHarness {
    async fn start() -> Self {
        let state = Shared::default();
        let app = Router::new()
            .route("/token", post(token))
            .route("/inbox", post(inbox))
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("client-secret"), CLIENT_SECRET).unwrap();
        HttpHarness { base, state, dir }
    }

    async fn connector(&self, timeout: Duration) -> Arc<dyn Connector> {
        let mut config = HttpConfig::new(format!("{}/inbox", self.base));
        config.timeout = timeout;
        config.auth = Some(AuthConfig::OAuth2(OAuth2Config {
            token_url: format!("{}/token", self.base),
            client_id: "amtsbote".into(),
            client_secret: SecretRef::File("client-secret".into()),
            scope: None,
            client_auth: ClientAuth::Post,
        }));
        Arc::new(config.build(&Context::new(self.dir.path())).unwrap())
    }

    async fn set(&mut self, condition: Condition, _: &Delivery) {
        self.state.lock().unwrap().condition = Some(condition);
    }

    async fn cases(&self) -> Vec<Case> {
        let state = self.state.lock().unwrap();
        state
            .cases
            .iter()
            .map(|(key, body)| Case { key: key.clone(), files: BTreeMap::from([("body".to_owned(), body.clone())]) })
            .collect()
    }

    fn secrets(&self) -> Vec<String> {
        vec![CLIENT_SECRET.into(), TOKEN.into()]
    }

    fn carries(&self) -> amtsbote_connector_conformance::Carries {
        amtsbote_connector_conformance::Carries::Documents
    }
}

conformance_suite!(HttpHarness);

/// `check --probe` sends `HEAD`: a back office that implements none (501)
/// or allows none (405) is reachable all the same; one that is down (503)
/// is not.
#[tokio::test]
async fn a_probe_counts_501_to_head_as_reachable_and_503_as_not() {
    let app = Router::new()
        .route("/no-head", axum::routing::any(|| async { StatusCode::NOT_IMPLEMENTED }))
        .route("/post-only", post(|| async { StatusCode::CREATED }))
        .route("/down", axum::routing::any(|| async { StatusCode::SERVICE_UNAVAILABLE }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let probe = |path: &str| {
        let connector = HttpConfig::new(format!("{base}{path}")).build(&Context::new(dir.path())).unwrap();
        async move { connector.probe().await }
    };
    probe("/no-head").await.expect("501 to HEAD is reachable");
    probe("/post-only").await.expect("405 to HEAD is reachable");
    let down = probe("/down").await.expect_err("503 is not reachable");
    assert!(down.to_string().contains("503"), "{down}");
}
