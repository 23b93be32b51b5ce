use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use amtsbote_connector::SecretRef;
use amtsbote_connector_conformance::pki::Pki;
use axum::Router;
use axum::http::{HeaderMap as AxumHeaders, StatusCode};
use axum::routing::{any, post};
use bytes::Bytes;
use uuid::Uuid;

use super::*;

type Seen = Arc<Mutex<Vec<(AxumHeaders, Bytes)>>>;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// A real back office on loopback that answers every request with `status`.
async fn back_office(status: StatusCode) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/inbox",
        any(move |headers: AxumHeaders, body: Bytes| async move {
            record.lock().unwrap().push((headers, body));
            status
        }),
    );
    (format!("http://{}/inbox", serve(app).await), seen)
}

fn delivery() -> Delivery {
    Delivery {
        submission_id: Uuid::new_v4(),
        delivery_id: Uuid::new_v4(),
        target: "t".into(),
        payload: Payload::Document { content_type: "application/xml".into(), body: Bytes::from_static(b"<a/>") },
        mapping_version: "test".into(),
        attempt: 1,
    }
}

fn context() -> Context {
    Context::new(".")
}

fn connector(url: &str) -> HttpConnector {
    HttpConnector::new(&HttpConfig::new(url), &context()).unwrap()
}

#[tokio::test]
async fn posts_body_with_content_type_headers_and_stable_idempotency_key() {
    let (url, seen) = back_office(StatusCode::CREATED).await;
    let d = delivery();
    let mut config = HttpConfig::new(&url);
    config.headers.insert("X-Verfahren".into(), "gewerbe".into());
    let outcome = HttpConnector::new(&config, &context()).unwrap().deliver(&d).await;
    assert_eq!(outcome, Outcome::delivered("HTTP 201"));
    let seen = seen.lock().unwrap();
    let (headers, body) = &seen[0];
    assert_eq!(body.as_ref(), b"<a/>");
    assert_eq!(headers["content-type"], "application/xml");
    assert_eq!(headers["x-verfahren"], "gewerbe");
    assert_eq!(headers["idempotency-key"], d.delivery_id.to_string().as_str());
}

#[tokio::test]
async fn server_errors_are_transient_and_client_errors_permanent() {
    let (url, _) = back_office(StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(matches!(connector(&url).deliver(&delivery()).await, Outcome::Transient { .. }));
    let (url, _) = back_office(StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(connector(&url).deliver(&delivery()).await, Outcome::permanent("HTTP 422"));
}

#[tokio::test]
async fn configured_status_outcomes_override_the_defaults() {
    let (url, _) = back_office(StatusCode::CONFLICT).await;
    let mut config = HttpConfig::new(url);
    assert!(matches!(HttpConnector::new(&config, &context()).unwrap().deliver(&delivery()).await, Outcome::Permanent { .. }));
    config.status_outcomes.insert(409, StatusOutcome::Delivered);
    assert_eq!(
        HttpConnector::new(&config, &context()).unwrap().deliver(&delivery()).await,
        Outcome::delivered("HTTP 409 (counted as delivered)")
    );
    config.status_outcomes.insert(1000, StatusOutcome::Delivered);
    assert!(matches!(HttpConnector::new(&config, &context()), Err(HttpConfigError::BadStatus(1000))));
}

#[tokio::test]
async fn a_rejection_keeps_the_problem_title_and_nothing_else() {
    let app = Router::new().route(
        "/inbox",
        post(|| async {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                [("content-type", "application/problem+json")],
                r#"{"title":"Ungültige Gewerbeanzeige","detail":"Erika Mustermann, geb. 1.1.1970"}"#,
            )
        }),
    );
    let url = format!("http://{}/inbox", serve(app).await);
    assert_eq!(connector(&url).deliver(&delivery()).await, Outcome::permanent("HTTP 422: Ungültige Gewerbeanzeige"));
}

#[tokio::test]
async fn the_receipt_comes_from_a_header_or_a_json_field() {
    let app = Router::new().route(
        "/inbox",
        post(|| async {
            (StatusCode::CREATED, [("location", "/vorgaenge/4711")], r#"{"vorgang":{"nummer":"GEW-2026-0815"},"name":"Erika"}"#)
        }),
    );
    let url = format!("http://{}/inbox", serve(app).await);
    let mut config = HttpConfig::new(&url);
    config.receipt = Some(ReceiptConfig::Header("Location".into()));
    let outcome = HttpConnector::new(&config, &context()).unwrap().deliver(&delivery()).await;
    assert_eq!(outcome, Outcome::delivered("HTTP 201").with_receipt(Some("/vorgaenge/4711".into())));
    config.receipt = Some(ReceiptConfig::Json("/vorgang/nummer".into()));
    let outcome = HttpConnector::new(&config, &context()).unwrap().deliver(&delivery()).await;
    assert_eq!(outcome, Outcome::delivered("HTTP 201").with_receipt(Some("GEW-2026-0815".into())));
    config.receipt = Some(ReceiptConfig::Json("vorgang".into()));
    assert!(matches!(HttpConnector::new(&config, &context()), Err(HttpConfigError::BadReceipt(_))));
}

#[tokio::test]
async fn unreachable_target_is_transient_and_its_query_stays_out_of_the_reason() {
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let outcome = connector(&format!("http://127.0.0.1:{port}/intake?apikey=s3cr3t")).deliver(&delivery()).await;
    assert!(matches!(outcome, Outcome::Transient { ref reason, .. } if reason.starts_with("connection failed")), "{outcome:?}");
    let reason = outcome.text();
    assert!(reason.contains(&format!("127.0.0.1:{port}/intake")) && !reason.contains("s3cr3t"), "{reason}");
}

#[test]
fn rejects_bad_config() {
    let mut config = HttpConfig::new("ftp://x/");
    assert!(matches!(HttpConnector::new(&config, &context()), Err(HttpConfigError::BadUrl(_))));
    config.url = "http://x/".into();
    config.method = "DELETE".into();
    assert!(matches!(HttpConnector::new(&config, &context()), Err(HttpConfigError::BadMethod(_))));
    config.method = "PUT".into();
    config.timeout = Duration::ZERO;
    assert!(matches!(HttpConnector::new(&config, &context()), Err(HttpConfigError::Client(ClientError::BadTimeout(_)))));
    config.timeout = Duration::from_secs(5);
    config.auth = Some(AuthConfig::Bearer { token: SecretRef::Env("AMTSBOTE_TEST_SURELY_UNSET".into()) });
    let error = HttpConnector::new(&config, &context()).err().unwrap().to_string();
    assert_eq!(error, "secret variable AMTSBOTE_TEST_SURELY_UNSET is not set");
}

/// Writes `value` to a file in `dir` and returns a reference to it.
fn secret_file(dir: &std::path::Path, name: &str, value: &str) -> SecretRef {
    std::fs::write(dir.join(name), format!("{value}\n")).unwrap();
    SecretRef::File(dir.join(name))
}

#[tokio::test]
async fn basic_bearer_and_header_auth_send_the_secret_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen) = back_office(StatusCode::OK).await;
    let mut config = HttpConfig::new(&url);
    for auth in [
        AuthConfig::Basic { username: "amtsbote".into(), password: secret_file(dir.path(), "pw", "s3cret") },
        AuthConfig::Bearer { token: secret_file(dir.path(), "token", "t0ken") },
        AuthConfig::Header { name: "X-API-Key".into(), value: secret_file(dir.path(), "key", "k3y") },
    ] {
        config.auth = Some(auth);
        let connector = HttpConnector::new(&config, &context()).unwrap();
        assert!(matches!(connector.deliver(&delivery()).await, Outcome::Delivered { .. }));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0["authorization"], "Basic YW10c2JvdGU6czNjcmV0"); // amtsbote:s3cret
    assert_eq!(seen[1].0["authorization"], "Bearer t0ken");
    assert_eq!(seen[2].0["x-api-key"], "k3y");
}

/// An authorization server and a back office that accepts only the newest
/// token it issued.
struct OAuthServers {
    token_url: String,
    url: String,
    issued: Arc<AtomicUsize>,
}

async fn oauth_servers(expires_in: u64) -> OAuthServers {
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let auth = Router::new().route(
        "/token",
        post(move |headers: AxumHeaders, body: String| {
            let counter = counter.clone();
            async move {
                // client_secret_basic with amtsbote:cl13nt
                if headers.get("authorization").is_none_or(|v| v != "Basic YW10c2JvdGU6Y2wxM250")
                    || !body.contains("grant_type=client_credentials")
                    || !body.contains("scope=gewerbe.write")
                {
                    return (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client","error_description":"no"}"#.to_owned());
                }
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                (StatusCode::OK, format!(r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":{expires_in}}}"#))
            }
        }),
    );
    let token_url = format!("http://{}/token", serve(auth).await);
    let current = issued.clone();
    let back_office = Router::new().route(
        "/inbox",
        post(move |headers: AxumHeaders| {
            let current = current.clone();
            async move {
                let expected = format!("Bearer tok-{}", current.load(Ordering::SeqCst));
                if headers.get("authorization").is_some_and(|v| v == expected.as_str()) { StatusCode::CREATED } else { StatusCode::UNAUTHORIZED }
            }
        }),
    );
    let url = format!("http://{}/inbox", serve(back_office).await);
    OAuthServers { token_url, url, issued }
}

fn oauth_config(servers: &OAuthServers, secret: SecretRef) -> HttpConfig {
    let mut config = HttpConfig::new(&servers.url);
    config.auth = Some(AuthConfig::OAuth2(OAuth2Config {
        token_url: servers.token_url.clone(),
        client_id: "amtsbote".into(),
        client_secret: secret,
        scope: Some("gewerbe.write".into()),
        client_auth: ClientAuth::Basic,
    }));
    config
}

#[tokio::test]
async fn oauth2_tokens_are_cached_renewed_before_expiry_and_after_a_401() {
    let dir = tempfile::tempdir().unwrap();
    let servers = oauth_servers(3600).await;
    let connector = HttpConnector::new(&oauth_config(&servers, secret_file(dir.path(), "cs", "cl13nt")), &context()).unwrap();
    for _ in 0..3 {
        assert_eq!(connector.deliver(&delivery()).await, Outcome::delivered("HTTP 201"));
    }
    assert_eq!(servers.issued.load(Ordering::SeqCst), 1, "one token serves all deliveries while it is fresh");

    // The back office forgets the token (a key rotation on its side): the
    // next delivery gets a 401, renews the token and succeeds.
    servers.issued.fetch_add(1, Ordering::SeqCst);
    assert_eq!(connector.deliver(&delivery()).await, Outcome::delivered("HTTP 201"));
    assert_eq!(servers.issued.load(Ordering::SeqCst), 3);

    // A token that lives one second is renewed before it is used again.
    let short = oauth_servers(1).await;
    let connector = HttpConnector::new(&oauth_config(&short, secret_file(dir.path(), "cs", "cl13nt")), &context()).unwrap();
    assert_eq!(connector.deliver(&delivery()).await, Outcome::delivered("HTTP 201"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(connector.deliver(&delivery()).await, Outcome::delivered("HTTP 201"));
    assert_eq!(short.issued.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_client_secret_is_permanent_and_named_by_its_error_code_only() {
    let dir = tempfile::tempdir().unwrap();
    let servers = oauth_servers(3600).await;
    let connector = HttpConnector::new(&oauth_config(&servers, secret_file(dir.path(), "cs", "wrong")), &context()).unwrap();
    assert_eq!(
        connector.deliver(&delivery()).await,
        Outcome::permanent("OAuth2 token endpoint: HTTP 401 (invalid_client)")
    );
}

fn tls_server_config(pki: &Pki, require_client_certificate: bool) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = if require_client_certificate {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&pki.ca).unwrap()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    builder
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&pki.server_certificate).unwrap()],
            PrivateKeyDer::from_pem_file(&pki.server_key).unwrap(),
        )
        .unwrap()
}

async fn serve_tls(app: Router, config: rustls::ServerConfig) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
    tokio::spawn(async move { axum_server::from_tcp_rustls(listener, config).unwrap().serve(app.into_make_service()).await.unwrap() });
    address
}

#[tokio::test]
async fn a_custom_ca_and_a_client_certificate_make_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let app = Router::new().route("/inbox", post(|| async { StatusCode::CREATED }));
    let address = serve_tls(app, tls_server_config(&pki, true)).await;
    let url = format!("https://localhost:{}/inbox", address.port());

    // Without the CA the server is not trusted.
    let mut config = HttpConfig::new(&url);
    let outcome = HttpConnector::new(&config, &context()).unwrap().deliver(&delivery()).await;
    assert!(matches!(outcome, Outcome::Transient { .. }), "{outcome:?}");

    // With the CA but without a client certificate the server refuses us.
    config.tls.ca = Some(pki.ca.clone());
    let outcome = HttpConnector::new(&config, &context()).unwrap().deliver(&delivery()).await;
    assert!(matches!(outcome, Outcome::Transient { .. }), "{outcome:?}");

    config.tls.certificate = Some(pki.client_certificate.clone());
    config.tls.key = Some(SecretRef::File(pki.client_key.clone()));
    let connector = HttpConnector::new(&config, &context()).unwrap();
    assert_eq!(connector.deliver(&delivery()).await, Outcome::delivered("HTTP 201"));
    connector.probe().await.unwrap();

    config.tls.key = None;
    assert!(matches!(HttpConnector::new(&config, &context()), Err(HttpConfigError::Client(ClientError::HalfIdentity))));
}
