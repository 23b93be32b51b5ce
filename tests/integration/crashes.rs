//! Crashes and outages: amtsbote killed with SIGKILL mid-load, the broker
//! restarted mid-load. Nothing accepted may be lost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amtsbote_sample_back_office::SampleBackOffice;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::helpers::{
    AppProcess, FAST_RETRY, PrivateBroker, Setup, as_sender, expected_keys, free_port, gewerbeanmeldung, spawn_app,
    wait_for_keys, write_config,
};

const SERVICE: &str = "99050012104000";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_the_middle_of_1000_submissions_loses_none() {
    const TOTAL: usize = 1000;
    let back_office = SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    back_office.keep_duplicates("plain");
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        targets: &[("dedup", "dms-json/akte.yaml"), ("plain", "dms-json/akte.yaml")],
        routes: &[(SERVICE, "", &["dedup", "plain"])],
        target_settings: FAST_RETRY,
        ..Setup::default()
    };
    let config = write_config(&setup, &back_office, dir.path());
    let log = dir.path().join("amtsbote.log");
    let port = free_port();
    let mut app = AppProcess::start(&config, port, &log).await;

    // Clients that keep retrying with their Idempotency-Key until they get
    // a 202, as a well-behaved online service does.
    let accepted: Arc<Mutex<HashMap<usize, String>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(16));
    let body = gewerbeanmeldung("053150000000").to_string();
    let client = as_sender(reqwest::Client::builder().timeout(Duration::from_secs(15))).build().unwrap();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..TOTAL {
        let (accepted, permits, body, client, base) = (accepted.clone(), permits.clone(), body.clone(), client.clone(), app.base.clone());
        clients.spawn(async move {
            let _permit = permits.acquire().await.unwrap();
            loop {
                let response = client
                    .post(format!("{base}/v1/submissions"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("kill-test-{i}"))
                    .body(body.clone())
                    .send()
                    .await;
                if let Ok(response) = response
                    && response.status() == StatusCode::ACCEPTED {
                        let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
                        accepted.lock().unwrap().insert(i, id);
                        return;
                    }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    while accepted.lock().unwrap().len() < TOTAL * 3 / 10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.kill_9().await;
    let at_kill = accepted.lock().unwrap().len();
    let mut app = AppProcess::start(&config, port, &log).await;
    let all_answered = tokio::time::timeout(Duration::from_secs(180), async { while clients.join_next().await.is_some() {} }).await;
    assert!(all_answered.is_ok(), "every client got its 202 after the restart");

    let ids: Vec<String> = accepted.lock().unwrap().values().cloned().collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), TOTAL, "one submission per Idempotency-Key");
    let dedup_keys = expected_keys(ids.clone(), "dedup");
    let plain_keys = expected_keys(ids, "plain");
    let at_dedup = wait_for_keys(&back_office, "/dedup", &dedup_keys, Duration::from_secs(120)).await;
    let at_plain = wait_for_keys(&back_office, "/plain", &plain_keys, Duration::from_secs(120)).await;
    assert_eq!(dedup_keys.difference(&at_dedup).count(), 0, "lost at the deduplicating target");
    assert_eq!(plain_keys.difference(&at_plain).count(), 0, "lost at the plain target");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = back_office.received();
    let dedup_documents = received.iter().filter(|r| r.path == "/dedup").count();
    let plain_documents = received.iter().filter(|r| r.path == "/plain").count();
    println!(
        "killed after {at_kill} accepted; {TOTAL} delivered to each target; duplicates: {} at the deduplicating target, {} at the plain one",
        dedup_documents - TOTAL,
        plain_documents - TOTAL
    );
    assert_eq!(dedup_documents, TOTAL, "no duplicate at a deduplicating target");

    // A graceful stop ends within the deadline (5 s in the test config).
    let exit = app.terminate(Duration::from_secs(15)).await;
    assert!(exit.is_some_and(|status| status.success()), "SIGTERM ends amtsbote cleanly: {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_load_loses_nothing_and_intake_never_says_202_while_it_is_down() {
    let broker = PrivateBroker::start("restart").await;
    let app = Arc::new(
        spawn_app(Setup {
            targets: &[("dms", "dms-json/akte.yaml")],
            routes: &[(SERVICE, "", &["dms"])],
            broker_url: Some(broker.url()),
            target_settings: FAST_RETRY,
            ..Setup::default()
        })
        .await,
    );

    // (sent, answered, status, id)
    type Log = Arc<Mutex<Vec<(Instant, Instant, StatusCode, Option<String>)>>>;
    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let body = gewerbeanmeldung("053150000000").to_string();
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (app, log, stop, body) = (app.clone(), log.clone(), stop.clone(), body.clone());
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let response = app.submit(body.clone()).await;
                let status = response.status();
                let id = if status == StatusCode::ACCEPTED {
                    Some(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned())
                } else {
                    None
                };
                log.lock().unwrap().push((sent, Instant::now(), status, id));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.stop().await;
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up = Instant::now();
    broker.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}

    let log = log.lock().unwrap().clone();
    let while_down: Vec<_> = log.iter().filter(|(sent, answered, ..)| *sent >= down && *answered <= up).collect();
    assert!(!while_down.is_empty(), "requests were made while the broker was down");
    assert!(
        while_down.iter().all(|(.., status, _)| *status == StatusCode::SERVICE_UNAVAILABLE),
        "only 503 while the broker was down: {:?}",
        while_down.iter().map(|(.., s, _)| s.as_u16()).collect::<Vec<_>>()
    );
    let ids: Vec<String> = log.iter().filter_map(|(.., id)| id.clone()).collect();
    let after_restart = log.iter().filter(|(sent, _, status, _)| *sent > up && *status == StatusCode::ACCEPTED).count();
    assert!(after_restart > 0, "intake accepts again after the restart");
    let keys = expected_keys(ids.clone(), "dms");
    let got = wait_for_keys(&app.back_office, "/dms", &keys, Duration::from_secs(90)).await;
    let lost = keys.difference(&got).count();
    println!(
        "{} accepted ({} before the stop), {} answered 503 while down, {} lost",
        ids.len(),
        log.iter().filter(|(sent, _, status, _)| *sent < down && *status == StatusCode::ACCEPTED).count(),
        while_down.len(),
        lost
    );
    assert_eq!(lost, 0, "every accepted submission was delivered");
    // And nothing else: what intake answered with an error (a 503, also
    // one whose confirm was lost while the broker went away) never arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let arrived: std::collections::HashSet<String> =
        app.back_office.received().into_iter().filter(|r| r.path == "/dms").filter_map(|r| r.idempotency_key).collect();
    let unexpected: Vec<_> = arrived.difference(&keys).collect();
    assert!(unexpected.is_empty(), "submissions answered with an error reached the back office: {unexpected:?}");
}
