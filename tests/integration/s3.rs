//! The claim check with an S3-compatible bucket (`blobs.s3`) instead of a
//! directory: a real server that checks every request's signature.

use std::time::Duration;

use amtsbote::app::Application;
use amtsbote::config::Config;
use amtsbote::yaml::parse_yaml;
use amtsbote_sample_back_office::SampleBackOffice;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{S3Server, Setup, config_yaml, spawn_app, unique_prefix};

/// A submission's large attachments wait in the bucket, sealed, under the
/// configured prefix; the delivery reads them back intact; once it is
/// delivered, the sweep removes them from the bucket.
#[tokio::test]
async fn attachments_wait_in_an_s3_bucket_and_go_once_delivered() {
    let s3 = S3Server::start("amtsbote").await;
    let secrets = tempfile::tempdir().unwrap();
    let blob_settings = s3.blob_settings("amtsbote", "test/", S3Server::SECRET_KEY, secrets.path());
    let app = spawn_app(Setup {
        targets: &[("dms", "dms-json/akte.yaml")],
        routes: &[("99050012104000", "", &["dms"])],
        blob_settings: &blob_settings,
        ..Setup::default()
    })
    .await;
    // Slow enough to look into the bucket before the sweep may empty it.
    app.back_office.slow_down("/dms", Duration::from_secs(2));
    let plans: Vec<Vec<u8>> = (0..3u8).map(|i| (0..100_000u32).map(|n| (n % 251) as u8 ^ i).collect()).collect();
    let mut attachments: Vec<Value> = plans
        .iter()
        .enumerate()
        .map(|(i, bytes)| json!({ "name": format!("plan-{i}.pdf"), "mediaType": "application/pdf", "purpose": "attachment",
            "content": base64::engine::general_purpose::STANDARD.encode(bytes) }))
        .collect();
    attachments.push(json!({ "name": "note.txt", "mediaType": "text/plain", "purpose": "attachment",
        "content": base64::engine::general_purpose::STANDARD.encode("small: travels in the message") }));
    let submission = json!({
        "service": "99050012104000", "region": "053150000000", "reference": "BAU-S3",
        "data": { "vorhaben": "Carport" }, "attachments": attachments,
    });
    let response = app.submit(submission.to_string()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    let keys: Vec<String> = s3.keys("amtsbote").into_iter().filter(|k| k != "test/.ledger").collect();
    assert_eq!(keys.len(), 3, "the three large attachments are in the bucket: {keys:?}");
    for key in &keys {
        assert!(key.starts_with(&format!("test/{id}/")), "under the prefix and the submission: {key}");
        let stored = std::fs::read(s3.root.path().join("amtsbote").join(key)).unwrap();
        assert!(stored.starts_with(b"ASB2"), "sealed: {key}");
    }

    let received = app.back_office.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1, "delivered");
    let document: Value = serde_json::from_slice(&received[0].body).unwrap();
    let contents: Vec<Vec<u8>> = document["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| base64::engine::general_purpose::STANDARD.decode(d["contentBase64"].as_str().unwrap()).unwrap())
        .collect();
    for plan in &plans {
        assert!(contents.contains(plan), "every stored attachment arrived intact");
    }
    assert!(contents.contains(&b"small: travels in the message".to_vec()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while s3.keys("amtsbote") != ["test/.ledger"] {
        assert!(tokio::time::Instant::now() < deadline, "the delivered submission's blobs stay: {:?}", s3.keys("amtsbote"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An installation with a ledger of its own may not use the prefix: its
    // sweep would remove the blobs of submissions it does not know.
    let other = tempfile::tempdir().unwrap();
    let start_other = |prefix: &str| {
        let blob_settings = s3.blob_settings("amtsbote", prefix, S3Server::SECRET_KEY, other.path());
        let setup = Setup { blob_settings: &blob_settings, ..Setup::default() };
        let config: Config = parse_yaml(&config_yaml(&setup, &app.back_office, &unique_prefix(), other.path())).unwrap();
        async move { Application::build(&config).await.err().map(|e| e.to_string()) }
    };
    let refused = start_other("test/").await.expect("a second ledger on the prefix is refused");
    assert!(refused.contains("keeps the blobs of another ledger"), "{refused}");
    assert_eq!(start_other("other/").await, None, "a prefix of its own is fine");
}

/// A bucket that refuses the credentials stops the start with a message
/// that names the bucket and S3's error code, not the secret.
#[tokio::test]
async fn a_bucket_that_refuses_the_credentials_stops_the_start() {
    let s3 = S3Server::start("amtsbote").await;
    let dir = tempfile::tempdir().unwrap();
    let back_office = SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    for (bucket, secret, expected) in [
        ("amtsbote", "not-the-secret-access-key", "HTTP 403"),
        ("no-such-bucket", S3Server::SECRET_KEY, "HTTP 404"),
    ] {
        let blob_settings = s3.blob_settings(bucket, "", secret, dir.path());
        let setup = Setup { blob_settings: &blob_settings, ..Setup::default() };
        let config: Config = parse_yaml(&config_yaml(&setup, &back_office, &unique_prefix(), dir.path())).unwrap();
        let error = Application::build(&config).await.err().expect("the start fails").to_string();
        assert!(error.contains(expected) && error.contains(bucket), "{error}");
        assert!(!error.contains(secret), "{error}");
        eprintln!("{error}");
    }
}

/// A folder package (`package.format: folder`) for a transfer directory.
const FOLDER_MAPPING: &str = r#"
output: xml
root: akte
document:
  id: .id
  datei:
    - $each: attachments
      name: .file
package:
  format: folder
  document: '"nachricht.xml"'
  files:
    - each: attachments("attachment")
      path: '"anlagen/" + .file'
"#;

/// A folder package takes its large attachments from the bucket into the
/// transfer directory as it writes them, a chunk at a time: plans of 2 MB
/// each arrive intact. (That a folder reserves no delivery memory is the
/// worker's rule, not observed here: a budget lets a larger delivery take
/// all of it, so 1 MiB would not stop one that did.)
#[tokio::test]
async fn a_folder_package_streams_its_attachments_from_the_bucket_into_a_transfer_directory() {
    let s3 = S3Server::start("amtsbote").await;
    let dir = tempfile::tempdir().unwrap();
    let (mappings, inbox) = (dir.path().join("mappings"), dir.path().join("inbox"));
    std::fs::create_dir_all(&mappings).unwrap();
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(mappings.join("akte-ordner.yaml"), FOLDER_MAPPING).unwrap();
    let connector = format!("      directory:\n        path: {}\n        layout: {{ name: \"akte-{{delivery_id}}\" }}\n", inbox.display());
    let blob_settings = s3.blob_settings("amtsbote", "", S3Server::SECRET_KEY, dir.path()) + "  delivery_memory_mib: 1\n";
    let app = spawn_app(Setup {
        targets: &[("ordner", "akte-ordner.yaml")],
        routes: &[("99050012104000", "", &["ordner"])],
        mappings: Some(&mappings),
        connector: Some(&connector),
        blob_settings: &blob_settings,
        max_body_bytes: Some(8 << 20),
        ..Setup::default()
    })
    .await;
    let plans: Vec<Vec<u8>> = (0..2u8).map(|i| (0..2_000_000u32).map(|n| (n % 253) as u8 ^ i).collect()).collect();
    let attachments: Vec<Value> = plans
        .iter()
        .enumerate()
        .map(|(i, bytes)| json!({ "name": format!("plan-{i}.pdf"), "mediaType": "application/pdf", "purpose": "attachment",
            "content": base64::engine::general_purpose::STANDARD.encode(bytes) }))
        .collect();
    let submission = json!({
        "service": "99050012104000", "region": "053150000000", "data": { "vorhaben": "Anbau" }, "attachments": attachments,
    });
    let response = app.client.post(format!("{}/v1/submissions", app.base)).json(&submission).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let status = app.status_when(&id, |s| s["status"] == "delivered" || s["status"] == "parked").await;
    assert_eq!(status["status"], "delivered", "{status}");

    let case: Vec<_> = std::fs::read_dir(&inbox).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(case.len(), 1, "one case folder: {case:?}");
    for (i, plan) in plans.iter().enumerate() {
        let arrived = std::fs::read(case[0].join("anlagen").join(format!("plan-{i}.pdf"))).unwrap();
        assert!(arrived == *plan, "plan {i} arrived changed ({} bytes)", arrived.len());
    }
    assert!(std::fs::read_to_string(case[0].join("nachricht.xml")).unwrap().contains(&id));
}
