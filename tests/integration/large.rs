//! Large submissions: building applications of 25 MB pass through a broker
//! that refuses large messages, while the targets are slow, in bounded
//! memory, and their attachments go once nothing needs them any more.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use amtsbote_sample_back_office::SampleBackOffice;
use amtsbote_connector::Payload;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{AppProcess, OPERATOR_TOKEN, PrivateBroker, Setup, as_sender, expected_keys, free_port, wait_for_keys, write_config};

const SUBMISSIONS: usize = 4;
const ATTACHMENTS: usize = 15;
const ATTACHMENT_BYTES: usize = 25_000_000 / ATTACHMENTS;

/// Incompressible bytes, different for every (submission, attachment).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// A building application: the form PDF and 14 plans, 25 MB in all; and
/// the SHA-256 of each file by name.
fn building_application(number: usize) -> (String, HashMap<String, String>) {
    let mut hashes = HashMap::new();
    let attachments: Vec<Value> = (0..ATTACHMENTS)
        .map(|i| {
            let bytes = noise((number * 100 + i) as u64 + 1, ATTACHMENT_BYTES);
            let name = if i == 0 { "antrag.pdf".to_owned() } else { format!("plan-{i:02}.pdf") };
            hashes.insert(name.clone(), hex(&Sha256::digest(&bytes)));
            json!({
                "name": name,
                "mediaType": "application/pdf",
                "purpose": if i == 0 { "form" } else { "attachment" },
                "content": base64::engine::general_purpose::STANDARD.encode(&bytes),
            })
        })
        .collect();
    let body = json!({
        "service": "99050012104000",
        "region": "053150000000",
        "reference": format!("BAU-{number}"),
        "data": { "vorhaben": "Einfamilienhaus", "flurstueck": "123/4" },
        "attachments": attachments,
    });
    (body.to_string(), hashes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The submissions with blobs (not the store's `.ledger`).
fn blob_folders(blobs: &Path) -> Vec<String> {
    let names = std::fs::read_dir(blobs).map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect::<Vec<_>>());
    names.unwrap_or_default().into_iter().filter(|name| !name.starts_with('.')).collect()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Four building applications of 25 MB (15 attachments each) go to an
/// xdomea zip target and a JSON DMS that embeds the contents, both slow.
/// The broker refuses messages over 1 MiB (RabbitMQ 4 refuses those over
/// 16 MiB): the attachments wait in the blob store, sealed, and the
/// messages name them. Every file arrives intact; the process's peak
/// memory stays within its budgets; a parked delivery keeps its
/// submission's blobs until it is replayed, and then they go too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn building_applications_of_25_mb_pass_in_bounded_memory_while_the_targets_are_slow() {
    let broker = PrivateBroker::start_with("large", "max_message_size = 1048576").await;
    let back_office = SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    back_office.slow_down("/akte", Duration::from_secs(1));
    back_office.slow_down("/dms", Duration::from_secs(1));
    // The DMS refuses the first document: parked, it keeps its blobs.
    back_office.script_for("/dms", &[StatusCode::UNPROCESSABLE_ENTITY]);
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        targets: &[("akte", "xdomea-3.0.0/geschaeftsgang-0201.yaml"), ("dms", "dms-json/akte.yaml")],
        routes: &[("99050012104000", "", &["akte", "dms"])],
        broker_url: Some(broker.url()),
        broker_settings: "  max_message_bytes: 1048576\n",
        max_body_bytes: Some(40 << 20),
        // Two bodies at once; deliveries hold at most 96 MiB of attachments.
        http_settings: "  intake_memory_mib: 80\n",
        blob_settings: "  delivery_memory_mib: 96\n",
        ..Setup::default()
    };
    let config = write_config(&setup, &back_office, dir.path());
    let mut app = AppProcess::start(&config, free_port(), &dir.path().join("amtsbote.log")).await;
    app.wait_until_ready(Duration::from_secs(30)).await;
    let idle = app.peak_rss();

    let client = as_sender(reqwest::Client::builder()).build().unwrap();
    let mut sent = tokio::task::JoinSet::new();
    for number in 0..SUBMISSIONS {
        let (client, base) = (client.clone(), app.base.clone());
        sent.spawn(async move {
            let (body, hashes) = building_application(number);
            // As a client should: a busy intake says when to come back. It
            // answers before reading the body, so a client that sends the
            // body anyway (no `Expect: 100-continue`) may instead see the
            // connection closed; the idempotency key makes the retry safe.
            let key = uuid::Uuid::new_v4().to_string();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                assert!(tokio::time::Instant::now() < deadline, "submission {number} was not accepted within a minute");
                let sent = client
                    .post(format!("{base}/v1/submissions"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", &key)
                    .body(body.clone())
                    .send()
                    .await;
                let Ok(response) = sent else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                match response.status() {
                    StatusCode::ACCEPTED => {
                        let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
                        return (id, hashes);
                    }
                    StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(500)).await,
                    status => panic!("submission {number}: {status} {}", response.text().await.unwrap()),
                }
            }
        });
    }
    let started = std::time::Instant::now();
    let accepted: HashMap<String, HashMap<String, String>> = sent.join_all().await.into_iter().collect();
    eprintln!("accepted {SUBMISSIONS} in {:?}", started.elapsed());
    let ids: Vec<String> = accepted.keys().cloned().collect();

    // The blobs are on disk, sealed.
    let blobs = dir.path().join("blobs");
    let some = blobs.join(&ids[0]);
    let files: Vec<_> = std::fs::read_dir(&some).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), ATTACHMENTS, "one blob per attachment");
    let stored = std::fs::read(&files[0]).unwrap();
    assert!(stored.starts_with(b"ASB2"), "blobs are sealed");

    let akte = wait_for_keys(&back_office, "/akte", &expected_keys(ids.clone(), "akte"), Duration::from_secs(120)).await;
    assert_eq!(akte.len(), SUBMISSIONS, "every zip arrived; amtsbote's warnings and errors:\n{}", app.problems());
    eprintln!("delivered the zips after {:?}", started.elapsed());
    let replayed_later = ids.len() - 1;
    let dms = wait_for_keys(&back_office, "/dms", &expected_keys(ids.clone(), "dms"), Duration::from_secs(20)).await;
    assert_eq!(dms.len(), replayed_later, "all but the refused one reached the DMS");

    // Every file arrived as it was sent, in the zip and in the JSON.
    let by_key: HashMap<String, String> = ids.iter().flat_map(|id| {
        ["akte", "dms"].map(|t| (expected_keys([id.clone()], t).into_iter().next().unwrap(), id.clone()))
    }).collect();
    for received in back_office.received() {
        let id = &by_key[received.idempotency_key.as_ref().unwrap()];
        let expected = &accepted[id];
        let got: HashMap<String, String> = if received.path == "/akte" {
            let payload = Payload::Document { content_type: "application/zip".into(), body: received.body.clone() };
            amtsbote::mapping::fixtures::files_of(payload)
                .unwrap()
                .into_iter()
                .filter_map(|(name, bytes)| Some((name.split_once('_')?.1.to_owned(), hex(&Sha256::digest(&bytes)))))
                .filter(|(name, _)| name.ends_with(".pdf"))
                .collect()
        } else {
            let document: Value = serde_json::from_slice(&received.body).unwrap();
            document["documents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let bytes = base64::engine::general_purpose::STANDARD.decode(d["contentBase64"].as_str().unwrap()).unwrap();
                    (d["name"].as_str().unwrap().to_owned(), hex(&Sha256::digest(&bytes)))
                })
                .collect()
        };
        assert_eq!(&got, expected, "{} of {id}", received.path);
    }

    // The blobs of finished submissions go; the parked one's stay.
    let operator = reqwest::Client::new();
    let parked: Value = operator.get(format!("{}/v1/parked", app.base)).bearer_auth(OPERATOR_TOKEN).send().await.unwrap().json().await.unwrap();
    let parked_id = parked["parked"][0]["submissionId"].as_str().unwrap_or_else(|| panic!("one parked delivery: {parked}")).to_owned();
    wait_until("the sweep of finished submissions", Duration::from_secs(20), || blob_folders(&blobs) == [parked_id.clone()]).await;

    let replay = operator
        .post(format!("{}/v1/parked/replay", app.base))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({ "submission": parked_id }))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    let dms = wait_for_keys(&back_office, "/dms", &expected_keys(ids.clone(), "dms"), Duration::from_secs(30)).await;
    assert_eq!(dms.len(), SUBMISSIONS, "the replayed delivery found its attachments");
    wait_until("the sweep after the replay", Duration::from_secs(20), || blob_folders(&blobs).is_empty()).await;

    // The process at rest, bodies being read (80 MiB), attachments held by
    // deliveries (96 MiB), and what the allocator keeps of freed buffers
    // of many megabytes: 100 MB of submissions did not pile up on top.
    let peak = app.peak_rss();
    eprintln!("peak RSS: {} MiB (idle {} MiB)", peak >> 20, idle >> 20);
    assert!(peak < idle + ((80 + 96 + 128) << 20), "peak RSS {} MiB, idle {} MiB", peak >> 20, idle >> 20);

    // Form data too large for a message is refused, not left to the broker.
    let huge_form = json!({
        "service": "99050012104000", "region": "053150000000", "data": { "bemerkung": "x".repeat(1 << 20) },
    });
    let refused = client.post(format!("{}/v1/submissions", app.base)).json(&huge_form).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(refused.text().await.unwrap().contains("broker.max_message_bytes"));
    app.terminate(Duration::from_secs(15)).await.expect("stops on SIGTERM");
}
