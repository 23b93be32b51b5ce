use std::sync::{Arc, Mutex};

use axum::{Router, extract::State, http::HeaderMap as AxumHeaders, http::StatusCode, routing::post};
use bytes::Bytes;
use uuid::Uuid;

use super::*;

type Seen = Arc<Mutex<Vec<(AxumHeaders, Bytes)>>>;

/// A real back office on loopback that answers every request with `status`.
async fn back_office(status: StatusCode) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/inbox",
            post(move |State(seen): State<Seen>, headers: AxumHeaders, body: Bytes| async move {
                seen.lock().unwrap().push((headers, body));
                status
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/inbox", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn delivery() -> Delivery {
    Delivery {
        submission_id: Uuid::new_v4(),
        delivery_id: Uuid::new_v4(),
        target: "t".into(),
        payload: Payload::Document { content_type: "application/xml".into(), body: Bytes::from_static(b"<a/>") },
        mapping_version: "test".into(),
    }
}

fn connector(url: &str) -> HttpConnector {
    HttpConnector::new(&HttpConfig {
        url: url.into(),
        method: "POST".into(),
        content_type: None,
        timeout_secs: 5,
        status_outcomes: BTreeMap::new(),
    })
    .unwrap()
}

#[tokio::test]
async fn posts_body_with_content_type_and_stable_idempotency_key() {
    let (url, seen) = back_office(StatusCode::CREATED).await;
    let d = delivery();
    let outcome = connector(&url).deliver(&d).await;
    assert_eq!(outcome, Outcome::Delivered { detail: "HTTP 201".into() });
    let seen = seen.lock().unwrap();
    let (headers, body) = &seen[0];
    assert_eq!(body.as_ref(), b"<a/>");
    assert_eq!(headers["content-type"], "application/xml");
    assert_eq!(headers["idempotency-key"], d.delivery_id.to_string().as_str());
}

#[tokio::test]
async fn server_errors_are_transient_and_client_errors_permanent() {
    let (url, _) = back_office(StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(matches!(connector(&url).deliver(&delivery()).await, Outcome::Transient { .. }));
    let (url, _) = back_office(StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        connector(&url).deliver(&delivery()).await,
        Outcome::Permanent { reason: "HTTP 422".into() }
    );
}

#[tokio::test]
async fn configured_status_outcomes_override_the_defaults() {
    let (url, _) = back_office(StatusCode::CONFLICT).await;
    let mut config = HttpConfig { url, method: "POST".into(), content_type: None, timeout_secs: 5, status_outcomes: BTreeMap::new() };
    assert!(matches!(HttpConnector::new(&config).unwrap().deliver(&delivery()).await, Outcome::Permanent { .. }));
    config.status_outcomes.insert(409, StatusOutcome::Delivered);
    assert_eq!(
        HttpConnector::new(&config).unwrap().deliver(&delivery()).await,
        Outcome::Delivered { detail: "HTTP 409 (counted as delivered)".into() }
    );
    config.status_outcomes.insert(1000, StatusOutcome::Delivered);
    assert!(matches!(HttpConnector::new(&config), Err(HttpConfigError::BadStatus(1000))));
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/inbox", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    assert_eq!(
        connector(&url).deliver(&delivery()).await,
        Outcome::Permanent { reason: "HTTP 422: Ungültige Gewerbeanzeige".into() }
    );
}

#[tokio::test]
async fn unreachable_target_is_transient() {
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let outcome = connector(&format!("http://127.0.0.1:{port}/")).deliver(&delivery()).await;
    assert!(matches!(outcome, Outcome::Transient { ref reason, .. } if reason.starts_with("connection failed")));
}

#[test]
fn rejects_bad_config() {
    let mut config = HttpConfig {
        url: "ftp://x/".into(),
        method: "POST".into(),
        content_type: None,
        timeout_secs: 5,
        status_outcomes: BTreeMap::new(),
    };
    assert!(matches!(HttpConnector::new(&config), Err(HttpConfigError::BadUrl(_))));
    config.url = "http://x/".into();
    config.method = "DELETE".into();
    assert!(matches!(HttpConnector::new(&config), Err(HttpConfigError::BadMethod(_))));
}
