//! A 503 means "not accepted", also when the broker has the message: the
//! publisher confirm lost with the connection, the ledger holds the
//! submission `refused`, and no worker delivers it. An intake killed
//! between publish and answer told nobody "no": its submission is
//! delivered once, after `UNDECIDED_AFTER`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{AppProcess, BrokerProxy, Setup, TestApp, as_sender, free_port, gewerbeanmeldung, spawn_app};

/// Posts a submission (with `key` as its Idempotency-Key, if given) while
/// the proxy holds the broker's replies; once the publish went through the
/// proxy, cuts every connection, so that the confirm is lost. Returns
/// intake's answer.
async fn post_and_lose_the_confirm(app: &TestApp, proxy: &BrokerProxy, key: Option<&str>) -> reqwest::Response {
    proxy.hold_replies();
    let sent_before = proxy.sent_to_broker();
    let mut request = app
        .client
        .post(format!("{}/v1/submissions", app.base))
        .header("content-type", "application/json")
        .body(gewerbeanmeldung("053150000000").to_string());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let answer = tokio::spawn(request.send());
    wait_until_published(proxy, sent_before).await;
    proxy.cut();
    let response = answer.await.unwrap().unwrap();
    proxy.restore().await;
    response
}

/// Waits until a message's worth of bytes went to the broker, and a moment
/// more for the broker to route it.
async fn wait_until_published(proxy: &BrokerProxy, sent_before: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while proxy.sent_to_broker() < sent_before + 1000 {
        assert!(tokio::time::Instant::now() < deadline, "nothing was published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The ids of the submissions the ledger holds in `state`.
async fn in_state(app: &TestApp, state: &str) -> Vec<String> {
    let found: Value = app.operator(Method::GET, &format!("/v1/submissions?state={state}")).send().await.unwrap().json().await.unwrap();
    found["items"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
}

/// Polls the timeline of `id` until it has `event` (or 30 s passed).
async fn wait_for_event(app: &TestApp, id: &str, event: &str) -> Value {
    app.status_when(id, |s| s["timeline"].as_array().is_some_and(|t| t.iter().any(|e| e["event"] == event))).await
}

#[tokio::test]
async fn a_submission_answered_503_after_a_lost_confirm_is_never_delivered() {
    let proxy = BrokerProxy::start().await;
    let app = spawn_app(Setup { broker_url: Some(proxy.url()), ..Setup::default() }).await;
    // Connections up, topology declared.
    let warm = app.submit(gewerbeanmeldung("053150000000").to_string()).await;
    assert_eq!(warm.status(), StatusCode::ACCEPTED);
    app.back_office.wait_for(1, Duration::from_secs(30)).await;

    let response = post_and_lose_the_confirm(&app, &proxy, None).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let refused = in_state(&app, "refused").await;
    assert_eq!(refused.len(), 1, "the ledger keeps the refused submission: {refused:?}");

    // The broker has the message; the workers reconnect and meet it.
    let status = wait_for_event(&app, &refused[0], "dropped").await;
    assert_eq!(status["status"], "refused", "{status}");
    let timeline = status["timeline"].as_array().unwrap();
    let reason = timeline.iter().find(|e| e["event"] == "refused").unwrap();
    assert_eq!(reason["detail"], "the broker did not confirm the submission", "{status}");
    assert!(timeline.iter().any(|e| e["event"] == "dropped" && e["target"] == "fv"), "the worker dropped its message: {status}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.back_office.received().len(), 1, "only the warm-up submission arrived");
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(crate::helpers::metric(&metrics, r#"amtsbote_messages_dropped_total{target="fv",reason="refused"}"#), Some(1.0));
}

#[tokio::test]
async fn a_refused_submission_retried_with_its_key_is_delivered_once_under_the_first_id() {
    let proxy = BrokerProxy::start().await;
    let app = spawn_app(Setup { broker_url: Some(proxy.url()), ..Setup::default() }).await;
    let warm = app.submit(gewerbeanmeldung("053150000000").to_string()).await;
    assert_eq!(warm.status(), StatusCode::ACCEPTED);
    app.back_office.wait_for(1, Duration::from_secs(30)).await;

    let response = post_and_lose_the_confirm(&app, &proxy, Some("form-4711")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let refused = in_state(&app, "refused").await;
    assert_eq!(refused.len(), 1);

    // The online service retries with the same key: accepted under the first id.
    let retried = app.submit_with_key(&gewerbeanmeldung("053150000000").to_string(), "form-4711").await;
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    let id = retried.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(id, refused[0], "the retry resumes the refused submission");
    assert_eq!(app.settled_status(&id).await["status"], "delivered");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let key = crate::helpers::expected_keys([id.clone()], "fv").into_iter().next().unwrap();
    let copies = app.back_office.received().iter().filter(|r| r.idempotency_key.as_deref() == Some(key.as_str())).count();
    assert_eq!(copies, 1, "delivered exactly once");
    let events: Vec<String> =
        app.status(&id).await["timeline"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap().to_owned()).collect();
    assert!(events.contains(&"refused".to_owned()) && events.contains(&"resumed".to_owned()), "{events:?}");
}

#[tokio::test]
async fn an_intake_killed_between_publish_and_answer_is_delivered_once_after_the_bound() {
    let proxy = BrokerProxy::start().await;
    let app = spawn_app(Setup { broker_url: Some(proxy.url()), ..Setup::default() }).await;
    let config = app.config_path.clone();
    // Only the process below serves this config.
    let mut app = app;
    app.begin_shutdown().await.unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("amtsbote.log");
    let mut server = AppProcess::start(&config, free_port(), &log).await;
    server.wait_until_ready(Duration::from_secs(30)).await;
    let client = as_sender(reqwest::Client::builder()).build().unwrap();

    proxy.hold_replies();
    let sent_before = proxy.sent_to_broker();
    let request = client
        .post(format!("{}/v1/submissions", server.base))
        .header("content-type", "application/json")
        .body(gewerbeanmeldung("053150000000").to_string())
        .send();
    let answer = tokio::spawn(request);
    wait_until_published(&proxy, sent_before).await;
    let started = std::time::Instant::now();
    server.kill_9().await;
    assert!(answer.await.unwrap().is_err(), "the client got no answer");
    proxy.cut();
    proxy.restore().await;

    let mut server = AppProcess::start(&config, free_port(), &log).await;
    server.wait_until_ready(Duration::from_secs(30)).await;
    let delivered = app.back_office.wait_for(1, Duration::from_secs(90)).await;
    assert_eq!(delivered.len(), 1, "nobody was told no: delivered after the bound");
    assert!(
        started.elapsed() >= amtsbote::store::UNDECIDED_AFTER - Duration::from_secs(2),
        "not before the bound: intake might still have answered 503 ({:?})",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.back_office.received().len(), 1, "delivered once");
    let operator = reqwest::Client::new();
    let found: Value = operator
        .get(format!("{}/v1/submissions?state=delivered", server.base))
        .bearer_auth(crate::helpers::OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = found["items"][0]["id"].as_str().unwrap();
    let status: Value = client.get(format!("{}/v1/submissions/{id}", server.base)).send().await.unwrap().json().await.unwrap();
    let accepted = status["timeline"].as_array().unwrap().iter().find(|e| e["event"] == "accepted").unwrap();
    assert!(accepted["detail"].as_str().unwrap().contains("by a worker"), "{status}");
    server.terminate(Duration::from_secs(15)).await;
}
