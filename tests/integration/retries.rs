//! Retries, parking, replay and isolation against the real broker.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{FAST_RETRY, Setup, broker_url, gewerbeanmeldung, spawn_app};

async fn accepted_id(response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_target_failing_three_times_gets_it_once_after_four_attempts_with_growing_delays() {
    let app = spawn_app(Setup { target_settings: FAST_RETRY, ..Setup::default() }).await;
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    app.back_office.script(&[unavailable, unavailable, unavailable]);
    let id = accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await;

    let status = app.settled_status(&id).await;
    assert_eq!(status["status"], "delivered", "{status}");
    assert_eq!(status["targets"][0]["attempts"], 4);
    assert_eq!(app.back_office.received().len(), 1, "delivered once");

    let answered = app.back_office.answered();
    let statuses: Vec<u16> = answered.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(statuses, [503, 503, 503, 201]);
    let keys: std::collections::HashSet<_> = answered.iter().map(|a| a.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), 1, "every attempt carries the same delivery id");
    // Policy 100 ms × 2 on the delay ladder: 100 ms, 200 ms, 500 ms.
    let gaps: Vec<Duration> = answered.windows(2).map(|w| w[1].at - w[0].at).collect();
    println!("gaps between attempts: {gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[0] < gaps[1] && gaps[1] < gaps[2], "delays grow: {gaps:?}");
}

#[tokio::test]
async fn a_target_down_past_the_maximum_age_is_parked_and_a_replay_delivers_once() {
    let retry = "    retry:\n      first_delay: 100ms\n      factor: 2\n      max_delay: 500ms\n      max_age: 2s\n      jitter: false\n";
    let app = spawn_app(Setup { target_settings: retry, ..Setup::default() }).await;
    app.back_office.answer_with(StatusCode::SERVICE_UNAVAILABLE);
    let id = accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await;

    let status = app.status_when(&id, |s| s["status"] == "parked").await;
    assert_eq!(status["status"], "parked", "{status}");
    let attempts = status["targets"][0]["attempts"].as_u64().unwrap();
    assert!(attempts >= 4, "retried until the maximum age: {status}");
    assert!(app.back_office.received().is_empty());

    let listed: Value = app.operator(Method::GET, "/v1/parked?reason=retries-exhausted").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["count"], 1, "{listed}");
    let parked = &listed["parked"][0];
    assert_eq!(parked["submissionId"], id.as_str());
    assert_eq!(parked["target"], "fv");
    assert_eq!(parked["lastError"], "HTTP 503");
    assert_eq!(parked["attempts"].as_u64(), Some(attempts));

    // The back office is back; an operator replays.
    app.back_office.answer_with(StatusCode::CREATED);
    let replayed = app
        .operator(Method::POST, "/v1/parked/replay")
        .json(&json!({ "submission": id }))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), StatusCode::OK);
    assert_eq!(replayed.json::<Value>().await.unwrap()["count"], 1);

    let status = app.status_when(&id, |s| s["status"] == "delivered").await;
    assert_eq!(status["status"], "delivered", "{status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.back_office.received().len(), 1, "delivered exactly once");
    let listed: Value = app.operator(Method::GET, "/v1/parked").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["count"], 0, "the parking queue is empty: {listed}");

    let audit: Value = app.operator(Method::GET, "/v1/audit").send().await.unwrap().json().await.unwrap();
    let entry = &audit["entries"][0];
    assert_eq!((entry["action"].as_str(), entry["operator"].as_str()), (Some("replay"), Some("test-operator")));
    assert_eq!(entry["submissionId"], id.as_str());
    assert_eq!(entry["parkedReason"], "retries-exhausted");
}

#[tokio::test]
async fn a_permanent_rejection_is_parked_after_one_attempt_and_can_be_discarded() {
    let app = spawn_app(Setup { target_settings: FAST_RETRY, ..Setup::default() }).await;
    app.back_office.answer_with(StatusCode::UNPROCESSABLE_ENTITY);
    let id = accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await;
    let status = app.status_when(&id, |s| s["status"] == "parked").await;
    assert_eq!(status["targets"][0]["attempts"], 1, "{status}");
    assert_eq!(status["targets"][0]["lastOutcome"], "HTTP 422");
    assert_eq!(app.back_office.answered().len(), 1);

    let show = app.operator(Method::GET, &format!("/v1/parked/fv/{id}")).send().await.unwrap();
    assert_eq!(show.status(), StatusCode::OK);
    let parked: Value = show.json().await.unwrap();
    assert_eq!(parked["reason"], "target-rejected");
    assert_eq!(parked["lastError"], "HTTP 422");

    // An empty selection is refused unless `all` is said.
    let refused = app.operator(Method::POST, "/v1/parked/discard").json(&json!({})).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    // Without a token nothing happens.
    let anonymous = app.client.post(format!("{}/v1/parked/discard", app.base)).json(&json!({ "all": true })).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let discarded: Value = app
        .operator(Method::POST, "/v1/parked/discard")
        .json(&json!({ "target": "fv", "reason": "target-rejected", "comment": "sent on paper" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discarded["count"], 1, "{discarded}");
    let status = app.status(&id).await;
    assert_eq!(status["status"], "discarded", "{status}");
    assert_eq!(status["targets"][0]["lastOutcome"], "discarded by test-operator");
    let audit: Value = app.operator(Method::GET, "/v1/audit").send().await.unwrap().json().await.unwrap();
    assert_eq!(audit["entries"][0]["comment"], "sent on paper");
}

#[tokio::test]
async fn a_poison_message_is_parked_and_the_messages_behind_it_are_delivered() {
    let app = spawn_app(Setup { target_settings: FAST_RETRY, ..Setup::default() }).await;
    // Make sure the topology exists, then put poison at the head of the queue.
    let first = accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await;
    assert_eq!(app.settled_status(&first).await["status"], "delivered");
    let connection = Connection::connect(&broker_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("{}.target.fv", app.prefix);
    // Sealed as intake seals, so that it is the content that poisons.
    let mut attempted = lapin::types::FieldTable::default();
    attempted.insert(amtsbote::message::header::ATTEMPTS.into(), lapin::types::AMQPValue::LongLongInt(1));
    let config = amtsbote::config::Config::load(&app.config_path).unwrap();
    let sealer = amtsbote::pipeline::Pipeline::build(&config).unwrap().sealer;
    for (id, body) in [("5b0d5d4e-0000-4000-8000-000000000001", &b"not json at all"[..]), ("no-uuid", &b"{}"[..])] {
        let body = sealer.seal(id, "", body.to_vec());
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                // Mid-retry (one attempt made): past the ledger's admission,
                // which a first copy meets, so that it is the content that
                // poisons.
                BasicProperties::default().with_message_id(id.into()).with_delivery_mode(2).with_headers(attempted.clone()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut behind = Vec::new();
    for _ in 0..3 {
        behind.push(accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await);
    }
    for id in &behind {
        assert_eq!(app.settled_status(id).await["status"], "delivered");
    }
    // The poison is parked in parallel with those deliveries; wait for it.
    let mut listed = Value::Null;
    for _ in 0..50 {
        listed = app.operator(Method::GET, "/v1/parked?reason=undecodable").send().await.unwrap().json().await.unwrap();
        if listed["count"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(listed["count"], 2, "{listed}");
    let errors: Vec<&str> = listed["parked"].as_array().unwrap().iter().map(|p| p["lastError"].as_str().unwrap()).collect();
    assert!(errors.iter().any(|e| e.contains("not JSON")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("no submission id")), "{errors:?}");
    assert!(!errors.iter().any(|e| e.contains("not json at all")), "no payload in the reason");
    connection.close(200, "".into()).await.unwrap();
}

#[tokio::test]
async fn a_target_taking_ten_seconds_per_request_does_not_slow_another() {
    let app = spawn_app(Setup {
        targets: &[("slow", "dms-json/akte.yaml"), ("fast", "dms-json/akte.yaml")],
        routes: &[("99050012104000", "", &["slow", "fast"])],
        ..Setup::default()
    })
    .await;
    app.back_office.slow_down("slow", Duration::from_secs(10));
    for _ in 0..20 {
        accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await;
    }
    let received = app.back_office.wait_for(20, Duration::from_secs(8)).await;
    let fast = received.iter().filter(|r| r.path == "/fast").count();
    assert_eq!(fast, 20, "the fast target got everything while the slow one was still busy");
    assert_eq!(received.iter().filter(|r| r.path == "/slow").count(), 0, "no slow request has finished yet");
}

#[tokio::test]
async fn the_parked_command_lists_replays_and_records_the_operator() {
    let app = spawn_app(Setup { target_settings: FAST_RETRY, ..Setup::default() }).await;
    app.back_office.answer_with(StatusCode::BAD_REQUEST);
    let id = accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await;
    assert_eq!(app.status_when(&id, |s| s["status"] == "parked").await["status"], "parked");

    let listed: Value = serde_json::from_str(&app.parked_command(&["list", "--json", "--target", "fv"]).await).unwrap();
    assert_eq!(listed[0]["submissionId"], id.as_str());
    assert_eq!(listed[0]["reason"], "target-rejected");
    let table = app.parked_command(&["list"]).await;
    assert!(table.contains(&id) && table.contains("1 parked"), "{table}");

    app.back_office.answer_with(StatusCode::CREATED);
    let replayed = app.parked_command(&["replay", "--submission", &id, "--operator", "carol"]).await;
    assert!(replayed.contains("1 replayed"), "{replayed}");
    assert_eq!(app.status_when(&id, |s| s["status"] == "delivered").await["status"], "delivered");
    let audit = app.parked_command(&["audit"]).await;
    assert!(audit.contains("replay") && audit.contains("carol") && audit.contains(&id), "{audit}");
}

#[tokio::test]
async fn a_graceful_shutdown_answers_503_and_finishes_the_delivery_in_flight() {
    let mut app = spawn_app(Setup::default()).await;
    app.back_office.slow_down("fv", Duration::from_secs(2));
    let id = accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await;
    // The delivery is under way: the back office holds the request.
    assert_eq!(app.back_office.wait_for_arrivals(1, Duration::from_secs(15)).await, 1);
    let stopped = app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let refused = app.submit(gewerbeanmeldung("053150000000").to_string()).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let ready = app.client.get(format!("{}/readyz", app.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Within the deadline (5 s in the test config) the delivery finishes.
    let result = tokio::time::timeout(Duration::from_secs(15), stopped).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "stopped cleanly: {result:?}");
    assert_eq!(app.back_office.received().len(), 1);
    // Recorded as delivered before the process let go.
    use amtsbote::store::Store;
    let store = amtsbote::store::SqliteStore::open(&app.config_path.with_file_name("store.sqlite")).unwrap();
    let status = store.status(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(status.status, amtsbote::store::SubmissionState::Delivered);
}
