//! Several amtsbote processes against one broker: they share the work as
//! competing consumers, and nothing is delivered twice.

use std::collections::HashMap;
use std::time::Duration;

use amtsbote_sample_back_office::SampleBackOffice;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{AppProcess, OPERATOR_TOKEN, Setup, as_sender, expected_keys, free_port, gewerbeanmeldung, metric, wait_for_keys, write_config};

/// Two processes with one config (one queue prefix, one ledger file on
/// one host), submissions handed to either: each is delivered exactly
/// once, both processes deliver, and either answers for any submission.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_share_the_queues_and_deliver_each_submission_once() {
    const TOTAL: usize = 300;
    let back_office = SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    // Record every request, duplicates too, so that a second delivery shows.
    back_office.keep_duplicates("fv");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&Setup::default(), &back_office, dir.path());
    let mut first = AppProcess::start(&config, free_port(), &dir.path().join("first.log")).await;
    let mut second = AppProcess::start(&config, free_port(), &dir.path().join("second.log")).await;
    first.wait_until_ready(Duration::from_secs(30)).await;
    second.wait_until_ready(Duration::from_secs(30)).await;

    let client = as_sender(reqwest::Client::builder()).build().unwrap();
    let body = gewerbeanmeldung("053150000000").to_string();
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..TOTAL {
        let base = if i % 2 == 0 { first.base.clone() } else { second.base.clone() };
        let (client, body) = (client.clone(), body.clone());
        posts.spawn(async move {
            let response = client.post(format!("{base}/v1/submissions")).header("content-type", "application/json").body(body).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
        });
    }
    let ids: Vec<String> = posts.join_all().await;
    let keys = expected_keys(ids.clone(), "fv");
    let got = wait_for_keys(&back_office, "/fv", &keys, Duration::from_secs(120)).await;
    assert_eq!(got.len(), TOTAL, "every submission arrived");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut times: HashMap<String, usize> = HashMap::new();
    for request in back_office.received() {
        *times.entry(request.idempotency_key.unwrap()).or_default() += 1;
    }
    assert!(times.values().all(|&n| n == 1), "a submission was delivered twice: {:?}", times.values().filter(|&&n| n > 1).count());
    assert_eq!(times.len(), TOTAL);

    let operator = reqwest::Client::new();
    for app in [&first, &second] {
        let metrics = operator.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
        let delivered = metric(&metrics, "amtsbote_delivery_attempts_total{target=\"fv\",outcome=\"delivered\"}").unwrap_or(0.0);
        assert!(delivered > 0.0, "{} delivered nothing: the work was not shared", app.base);
    }
    // One ledger: the first process answers for a submission the second
    // took in, and tells where it is.
    let status = operator.get(format!("{}/v1/submissions/{}", first.base, ids[1])).bearer_auth(OPERATOR_TOKEN).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::OK);
    assert_eq!(status.json::<Value>().await.unwrap()["status"], "delivered");

    first.terminate(Duration::from_secs(15)).await.expect("the first stops on SIGTERM");
    second.terminate(Duration::from_secs(15)).await.expect("the second stops on SIGTERM");
}
