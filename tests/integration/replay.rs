//! Replaying parked deliveries: one command replays each at most once,
//! and a replay killed half-way leaves each delivery parked once or
//! replayed once, never both.

use std::collections::HashMap;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{AppProcess, FAST_RETRY, Setup, TestApp, broker_url, free_port, gewerbeanmeldung, spawn_app};

const DELIVERIES: usize = 10;

/// Ten submissions whose target refuses them (400): each parked after one attempt.
async fn park_ten(app: &TestApp) -> Vec<String> {
    app.back_office.answer_with(StatusCode::BAD_REQUEST);
    let mut ids = Vec::new();
    for _ in 0..DELIVERIES {
        let response = app.submit(gewerbeanmeldung("053150000000").to_string()).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        ids.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(app.status_when(id, |s| s["status"] == "parked").await["status"], "parked");
    }
    ids
}

async fn parked_count(app: &TestApp) -> u64 {
    let listed: Value = app.operator(Method::GET, "/v1/parked").send().await.unwrap().json().await.unwrap();
    listed["count"].as_u64().unwrap()
}

async fn replays_audited(app: &TestApp) -> Vec<String> {
    let audit: Value = app.operator(Method::GET, "/v1/audit").send().await.unwrap().json().await.unwrap();
    audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["action"] == "replay")
        .map(|entry| entry["submissionId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn one_replay_command_replays_each_parked_delivery_once_while_the_target_still_refuses() {
    let app = spawn_app(Setup { target_settings: FAST_RETRY, ..Setup::default() }).await;
    park_ten(&app).await;
    assert_eq!(app.back_office.answered().len(), DELIVERIES);

    // The back office still answers 400: every replayed delivery is parked
    // again while the command runs, and must wait for the next command.
    let replayed: Value =
        app.operator(Method::POST, "/v1/parked/replay").json(&json!({ "target": "fv" })).send().await.unwrap().json().await.unwrap();
    assert_eq!(replayed["count"], DELIVERIES, "{replayed}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (app.back_office.answered().len() < 2 * DELIVERIES || parked_count(&app).await < DELIVERIES as u64)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.back_office.answered().len(), 2 * DELIVERIES, "each delivery replayed exactly once");
    assert_eq!(parked_count(&app).await, DELIVERIES as u64, "each parked again, once");
    assert_eq!(replays_audited(&app).await.len(), DELIVERIES, "one audit row per replay");
}

#[tokio::test]
async fn a_replay_killed_half_way_leaves_each_delivery_parked_once_or_replayed_once() {
    let mut app = spawn_app(Setup { target_settings: FAST_RETRY, ..Setup::default() }).await;
    let ids = park_ten(&app).await;
    // Nothing consumes the work queue now: what the replay publishes stays there.
    app.begin_shutdown().await.unwrap().unwrap();

    // The ledger's write lock, held: the replay command publishes its first
    // message, then waits to record the replay, and is killed there.
    let store = app.config_path.parent().unwrap().join("store.sqlite");
    let lock = rusqlite::Connection::open(&store).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut replay = tokio::process::Command::new(env!("CARGO_BIN_EXE_amtsbote"))
        .args(["parked", "--config"])
        .arg(&app.config_path)
        .args(["replay", "--target", "fv", "--operator", "carol"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let broker = Connection::connect(&broker_url(), ConnectionProperties::default()).await.unwrap();
    let channel = broker.create_channel().await.unwrap();
    let work_queue = format!("{}.target.fv", app.prefix);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = channel.queue_declare(work_queue.as_str().into(), passive, FieldTable::default()).await.unwrap();
        if queue.message_count() >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the replay command published nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replay.kill().await.unwrap();
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);

    // amtsbote again, and the back office takes deliveries now. The
    // replayed message of the killed command is delivered; its parked copy,
    // back in the parking queue, must not be delivered a second time.
    app.back_office.answer_with(StatusCode::CREATED);
    let dir = tempfile::tempdir().unwrap();
    let server = AppProcess::start(&app.config_path, free_port(), &dir.path().join("amtsbote.log")).await;
    server.wait_until_ready(Duration::from_secs(30)).await;
    app.back_office.wait_for(1, Duration::from_secs(30)).await;
    let listed: Value = serde_json::from_str(&app.parked_command(&["list", "--json"]).await).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), DELIVERIES - 1, "the replayed one is no longer parked: {listed}");

    let replayed = app.parked_command(&["replay", "--target", "fv", "--operator", "carol"]).await;
    assert!(replayed.contains(&format!("{} replayed", DELIVERIES - 1)), "{replayed}");
    app.back_office.wait_for(DELIVERIES, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    // A deduplicating back office answers a repeat 200: count every success.
    for answered in app.back_office.answered().iter().filter(|a| a.status.is_success()) {
        *deliveries.entry(answered.idempotency_key.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(deliveries.len(), DELIVERIES, "every delivery arrived: {deliveries:?}");
    assert!(deliveries.values().all(|&n| n == 1), "none twice: {deliveries:?}");
    let listed: Value = serde_json::from_str(&app.parked_command(&["list", "--json"]).await).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 0, "{listed}");
    let audit = app.parked_command(&["audit"]).await;
    for id in &ids {
        assert_eq!(audit.matches(id.as_str()).count(), 1, "one replay recorded per delivery: {audit}");
    }
}
