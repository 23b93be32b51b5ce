use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{BrokerProxy, Setup, gewerbeanmeldung, spawn_app};

async fn problem(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    assert_eq!(response.headers()["content-type"], "application/problem+json", "status {status}");
    (status, response.json().await.unwrap())
}

fn pointers(problem: &Value) -> Vec<&str> {
    problem["errors"].as_array().map(|e| e.iter().map(|e| e["pointer"].as_str().unwrap()).collect()).unwrap_or_default()
}

#[tokio::test]
async fn accepted_submission_answers_202_with_id_and_location() {
    let app = spawn_app(Setup::default()).await;
    let response = app.submit(gewerbeanmeldung("053150000000").to_string()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    assert_eq!(location, format!("/v1/submissions/{}", body["id"].as_str().unwrap()));
}

#[tokio::test]
async fn each_bad_input_gets_its_status_and_a_problem_naming_the_field() {
    let app = spawn_app(Setup { max_body_bytes: Some(64 * 1024), ..Setup::default() }).await;
    let valid = gewerbeanmeldung("053150000000");
    let with = |pointer: &str, value: Value| {
        let mut v = valid.clone();
        *v.pointer_mut(pointer).unwrap() = value;
        v.to_string()
    };
    let without = |field: &str| {
        let mut v = valid.clone();
        v.as_object_mut().unwrap().remove(field);
        v.to_string()
    };
    let cases: Vec<(&str, String, StatusCode, Vec<&str>)> = vec![
        ("malformed JSON", "{\"service\": ".into(), StatusCode::BAD_REQUEST, vec![]),
        ("missing service", without("service"), StatusCode::BAD_REQUEST, vec!["#/service"]),
        ("invalid service", with("/service", json!("12345")), StatusCode::BAD_REQUEST, vec!["#/service"]),
        ("missing region", without("region"), StatusCode::BAD_REQUEST, vec!["#/region"]),
        ("invalid region", with("/region", json!("Köln")), StatusCode::BAD_REQUEST, vec!["#/region"]),
        ("wrong type", with("/service", json!(99050012104000u64)), StatusCode::BAD_REQUEST, vec!["#/service"]),
        ("bad base64", with("/attachments/0/content", json!("%%%")), StatusCode::BAD_REQUEST, vec!["#/attachments/0/content"]),
        ("data not an object", with("/data", json!("x")), StatusCode::BAD_REQUEST, vec!["#/data"]),
        ("no route", with("/service", json!("99102013104000")), StatusCode::UNPROCESSABLE_ENTITY, vec!["#/service", "#/region"]),
    ];
    for (case, body, status, expected) in cases {
        let (actual, problem) = problem(app.submit(body).await).await;
        assert_eq!(actual, status, "{case}: {problem}");
        assert_eq!(problem["status"], status.as_u16(), "{case}");
        assert_eq!(pointers(&problem), expected, "{case}: {problem}");
        assert!(problem["type"].as_str().unwrap().starts_with("https://"), "{case}");
    }
    let (status, no_route) = problem(app.submit(with("/service", json!("99102013104000"))).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = no_route["detail"].as_str().unwrap();
    assert!(detail.contains("99102013104000") && detail.contains("053150000000"), "{detail}");

    let too_large = "x".repeat(65 * 1024);
    let (status, _) = problem(app.submit(too_large).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let form = app.client.post(format!("{}/v1/submissions", app.base)).header("content-type", "text/plain").body("x").send().await.unwrap();
    assert_eq!(problem(form).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let unknown = app.client.get(format!("{}/v1/submissions/{}", app.base, uuid::Uuid::new_v4())).send().await.unwrap();
    assert_eq!(problem(unknown).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn idempotency_key_returns_the_first_answer_and_refuses_another_body() {
    let app = spawn_app(Setup::default()).await;
    let body = gewerbeanmeldung("053150000000").to_string();
    let first: Value = app.submit_with_key(&body, "form-42").await.json().await.unwrap();
    let again = app.submit_with_key(&body, "form-42").await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);

    let other = gewerbeanmeldung("053150000001").to_string();
    let (status, _) = problem(app.submit_with_key(&other, "form-42").await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    app.back_office.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.back_office.received().len(), 1, "one submission, one delivery");
}

#[tokio::test]
async fn broker_outage_gives_503_with_retry_after_and_recovers() {
    let proxy = BrokerProxy::start().await;
    let app = spawn_app(Setup { broker_url: Some(proxy.url()), ..Setup::default() }).await;
    let body = gewerbeanmeldung("053150000000").to_string();
    assert_eq!(app.submit(body.clone()).await.status(), StatusCode::ACCEPTED);

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, problem_doc) = {
        let response = app.submit(body.clone()).await;
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() > 0), "Retry-After missing");
        problem(response).await
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem_doc}");

    proxy.restore().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = app.submit(body.clone()).await.status();
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "only 503 while reconnecting");
        assert!(tokio::time::Instant::now() < deadline, "intake did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
