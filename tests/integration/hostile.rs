//! Hostile input: each gets its own clear answer (a 4xx naming the field,
//! or a parked reason for a mapping that runs away), and a valid load sent
//! at the same time is delivered in full.

use std::time::Duration;

use futures_lite::future::zip;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::{Setup, TestApp, as_sender, expected_keys, gewerbeanmeldung, spawn_app, wait_for_keys};

const GEWERBE: &str = "99050012104000";
/// A service routed to mappings that run away.
const RUNAWAY: &str = "99102013104000";
const KOELN: &str = "053150000000";
const VALID_LOAD: usize = 200;

/// A hostile request and what it must get: status, problem slug, pointer.
struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: &'static str,
    status: StatusCode,
    slug: &'static str,
    pointer: Option<&'static str>,
}

fn with_data(data: Value) -> Vec<u8> {
    let mut body = gewerbeanmeldung(KOELN);
    body["data"] = data;
    body.to_string().into_bytes()
}

fn with_xml(xml: &str) -> Vec<u8> {
    let mut body = gewerbeanmeldung(KOELN);
    body.as_object_mut().unwrap().remove("data");
    body["dataXml"] = json!(xml);
    body.to_string().into_bytes()
}

fn with_attachments(count: usize, bytes: usize) -> Vec<u8> {
    use base64::Engine;
    let content = base64::engine::general_purpose::STANDARD.encode(vec![b'%'; bytes]);
    let mut body = gewerbeanmeldung(KOELN);
    body["attachments"] = (0..count)
        .map(|i| json!({"name": format!("scan-{i}.pdf"), "mediaType": "application/pdf", "purpose": "attachment", "content": content}))
        .collect();
    body.to_string().into_bytes()
}

/// Form data with `\ude00` alone: JSON text that reads as no character.
fn lone_surrogate() -> Vec<u8> {
    let body = String::from_utf8(with_data(json!({ "familienname": "SURROGATE" }))).unwrap();
    body.replace("SURROGATE", r"Rodr\ude00guez").into_bytes()
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!("x"), |inner, _| json!({ "a": inner }))
}

fn cases() -> Vec<Case> {
    let case = |name, body, status, slug, pointer| Case { name, body, content_type: "application/json", status, slug, pointer };
    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    let billion_laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">{}]><lolz>&lol9;</lolz>",
        (1..10).map(|i| format!("<!ENTITY lol{i} \"{}\">", format!("&lol{};", i - 1).repeat(10))).collect::<String>()
    );
    vec![
        case("a body over http.max_body_bytes", vec![b' '; 2 << 20], StatusCode::PAYLOAD_TOO_LARGE, "too-large", None),
        case("more attachments than allowed", with_attachments(4, 10), BAD, "invalid-submission", Some("#/attachments")),
        case("an attachment over its limit", with_attachments(1, 5000), BAD, "invalid-submission", Some("#/attachments/0/content")),
        case("form data nested too deep", with_data(nested(40)), BAD, "invalid-submission", Some("#/data")),
        case("half a surrogate pair in the form data", lone_surrogate(), BAD, "invalid-submission", Some("#/data")),
        case(
            "JSON nested past serde_json's recursion limit",
            format!("{{\"service\":\"{GEWERBE}\",\"region\":\"{KOELN}\",\"data\":{}", "[".repeat(100_000)).into_bytes(),
            BAD,
            "malformed-json",
            None,
        ),
        case("not UTF-8", b"{\"service\":\"\xff\xfe\"}".to_vec(), BAD, "malformed-json", None),
        case("an entity expansion bomb", with_xml(&billion_laughs), BAD, "invalid-submission", Some("#/dataXml")),
        case(
            "an external entity (XXE)",
            with_xml("<!DOCTYPE a [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><a>&x;</a>"),
            BAD,
            "invalid-submission",
            Some("#/dataXml"),
        ),
        case("an undeclared entity", with_xml("<a>&x;</a>"), BAD, "invalid-submission", Some("#/dataXml")),
        case("XML nested 10000 deep", with_xml(&format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000))), BAD, "invalid-submission", Some("#/dataXml")),
        Case { content_type: "application/xml", ..case("not JSON", b"<a/>".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", None) },
    ]
}

async fn send_case(app: &TestApp, case: &Case) -> (StatusCode, Value) {
    // A client of its own: the server closes the connection after a 413
    // (the rest of the body is never read), which a pooled connection
    // would carry into the next case.
    let client = as_sender(reqwest::Client::builder()).build().unwrap();
    let response = client
        .post(format!("{}/v1/submissions", app.base))
        .header("content-type", case.content_type)
        .body(case.body.clone())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: no answer: {e}", case.name));
    let status = response.status();
    assert_eq!(response.headers()["content-type"], "application/problem+json", "{}", case.name);
    (status, response.json().await.unwrap())
}

async fn valid_load(app: &TestApp) -> Vec<String> {
    let mut load = JoinSet::new();
    let body = gewerbeanmeldung(KOELN).to_string();
    for _ in 0..8 {
        let (client, url, body) = (app.client.clone(), format!("{}/v1/submissions", app.base), body.clone());
        load.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..VALID_LOAD / 8 {
                let response = client.post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
                assert_eq!(response.status(), StatusCode::ACCEPTED, "a valid submission was refused");
                ids.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
            }
            ids
        });
    }
    load.join_all().await.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_hostile_input_gets_its_error_while_a_parallel_valid_load_is_delivered_in_full() {
    let runaway = tempfile::tempdir().unwrap();
    let mapping = |name: &str, expression: &str| {
        let path = runaway.path().join(name);
        std::fs::write(&path, format!("output: json\ndocument:\n  x: '{expression}'\n")).unwrap();
        path.display().to_string()
    };
    // Mapping paths outside the mappings directory are taken as given.
    let endless = mapping("endless.yaml", "last(range(1e15))");
    // Past the 4 MiB output limit below, quickly on any machine: the
    // test is about the size limit, not a race with the time limit.
    let huge = mapping("huge.yaml", "\"x\" * 10000000");
    let targets = [("fv", "xgewerbeanzeige-2.2/gewerbeanmeldung.yaml"), ("endless", endless.as_str()), ("huge", huge.as_str())];
    let app = spawn_app(Setup {
        targets: &targets,
        routes: &[(GEWERBE, "", &["fv"]), (RUNAWAY, "", &["endless", "huge"])],
        http_settings: "  max_attachments: 3\n  max_attachment_bytes: 4096\n",
        sandbox_settings: "  output_limit_mib: 4\n",
        ..Setup::default()
    })
    .await;

    let hostile = async {
        let mut answers = Vec::new();
        for case in cases() {
            answers.push((case.name, send_case(&app, &case).await, case));
        }
        let mut runaway_form = gewerbeanmeldung(KOELN);
        runaway_form["service"] = json!(RUNAWAY);
        let response = app.submit(runaway_form.to_string()).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        (answers, response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned())
    };
    let (ids, (answers, runaway_id)) = zip(valid_load(&app), hostile).await;

    for (name, (status, problem), case) in answers {
        assert_eq!(status, case.status, "{name}: {problem}");
        assert_eq!(problem["type"], format!("https://amtsbote.dev/problems/{}", case.slug), "{name}: {problem}");
        let pointers: Vec<&str> = problem["errors"].as_array().map(|e| e.iter().map(|e| e["pointer"].as_str().unwrap()).collect()).unwrap_or_default();
        assert_eq!(pointers, case.pointer.into_iter().collect::<Vec<_>>(), "{name}: {problem}");
    }

    // Every valid submission arrived, each once.
    let keys = expected_keys(ids, "fv");
    let got = wait_for_keys(&app.back_office, "/fv", &keys, Duration::from_secs(120)).await;
    assert_eq!(keys.difference(&got).count(), 0, "valid submissions not delivered");
    assert_eq!(app.back_office.received().iter().filter(|r| r.path == "/fv").count(), VALID_LOAD);

    // The runaway mappings were stopped and parked with their reason.
    for (target, why) in [("endless", "time limit"), ("huge", "larger than the limit")] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let parked = loop {
            let response = app.operator(Method::GET, &format!("/v1/parked/{target}/{runaway_id}")).send().await.unwrap();
            if response.status() == StatusCode::OK || tokio::time::Instant::now() > deadline {
                break response.json::<Value>().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(parked["reason"], "mapping-error", "{parked}");
        assert!(parked["lastError"].as_str().unwrap().contains(why), "{target}: {parked}");
    }
    assert!(!app.back_office.received().iter().any(|r| r.path != "/fv"), "a runaway mapping delivered something");
    let health = app.client.get(format!("{}/readyz", app.base)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "amtsbote still serves");
}

/// Uploads that would take intake past `http.intake_memory_mib` are turned
/// away with `503 busy` before their bodies are read, small ones that fit
/// still go through, the room comes back when an upload ends, however it
/// ends (an upload slower than `http.body_timeout` ends with 408), and a
/// client without a key takes none.
#[tokio::test]
async fn uploads_past_the_memory_budget_get_503_busy_until_room_is_free() {
    use base64::Engine;
    use tokio::io::AsyncWriteExt;

    let app = spawn_app(Setup { max_body_bytes: Some(700 * 1024), http_settings: "  intake_memory_mib: 1\n  body_timeout: 2s\n", ..Setup::default() }).await;
    let post = |body: String| {
        app.client.post(format!("{}/v1/submissions", app.base)).header("content-type", "application/json").body(body).send()
    };
    let mut large = gewerbeanmeldung(KOELN);
    large["attachments"][0]["content"] = base64::engine::general_purpose::STANDARD.encode(vec![b'%'; 300 * 1024]).into();
    let large = large.to_string();
    let address = app.base.trim_start_matches("http://").to_owned();
    // Someone without a key is answered from the headers alone and takes
    // no room, however large an upload it announces.
    let mut anonymous = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!("POST /v1/submissions HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", 700 * 1024);
    anonymous.write_all(head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut anonymous, &mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");
    // A slow upload that declares 700 KiB and sends a little of it.
    let slow_upload = async || {
        let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /v1/submissions HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{{\"service\":",
            crate::helpers::SENDER_KEY,
            700 * 1024
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        slow
    };
    let mut slow = slow_upload().await;
    let busy = post(large.clone()).await.unwrap();
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE, "400 KiB more do not fit beside 700 KiB in 1 MiB");
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_eq!(busy.headers()["content-type"], "application/problem+json");
    let problem: Value = busy.json().await.unwrap();
    assert_eq!(problem["type"], "https://amtsbote.dev/problems/busy", "{problem}");
    let small = post(gewerbeanmeldung(KOELN).to_string()).await.unwrap();
    assert_eq!(small.status(), StatusCode::ACCEPTED, "a small submission still fits");

    // The slow upload runs out of time (http.body_timeout): 408, and its
    // room is free again.
    let mut answer = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut slow, &mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 408");
    assert_eq!(post(large.clone()).await.unwrap().status(), StatusCode::ACCEPTED);

    // Another one's client gives up: its room is free again too.
    let slow = slow_upload().await;
    assert_eq!(post(large.clone()).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(slow);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let response = post(large.clone()).await.unwrap();
        if response.status() == StatusCode::ACCEPTED {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {}", response.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(crate::helpers::metric(&metrics, "amtsbote_submissions_refused_total{problem=\"busy\"}"), Some(2.0), "{metrics}");
}

/// A network client without a key: idle connections past the cap and
/// requests whose headers come one byte at a time. Valid submissions still
/// get 202 within a second, a delivery that reads a stored attachment
/// succeeds, and the slow connections are closed by the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_cannot_keep_submissions_or_deliveries_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CAP: usize = 16;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    let app = spawn_app(Setup {
        targets: &[("dms", "dms-json/akte.yaml")],
        routes: &[(GEWERBE, "", &["dms"])],
        http_settings: "  max_connections: 16\n  header_timeout: 2s\n",
        // Every attachment waits in the blob store: delivering reads it.
        blob_settings: "  keep_above_kib: 1\n",
        ..Setup::default()
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    // Each hostile connection reports how long it stayed open.
    let mut hostile = JoinSet::new();
    for _ in 0..3 * CAP {
        let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
        hostile.spawn(async move {
            let opened = std::time::Instant::now();
            let _ = idle.read(&mut [0u8; 1]).await;
            ("idle", opened.elapsed())
        });
    }
    for _ in 0..CAP / 2 {
        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        hostile.spawn(async move {
            let opened = std::time::Instant::now();
            for byte in b"POST /v1/submissions HTTP/1.1\r\nHost: amtsbote\r\nX-Padding: ".iter().cycle() {
                if slow.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if opened.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            ("slow", opened.elapsed())
        });
    }

    // Meanwhile, valid submissions on fresh connections.
    let mut ids = Vec::new();
    for _ in 0..5 {
        let client = as_sender(reqwest::Client::builder().pool_max_idle_per_host(0)).build().unwrap();
        let started = std::time::Instant::now();
        let response = client
            .post(format!("{}/v1/submissions", app.base))
            .header("content-type", "application/json")
            .body(gewerbeanmeldung(KOELN).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert!(started.elapsed() < Duration::from_secs(1), "202 took {:?}", started.elapsed());
        ids.push(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    let keys = expected_keys(ids, "dms");
    let delivered = wait_for_keys(&app.back_office, "/dms", &keys, Duration::from_secs(30)).await;
    assert!(keys.is_subset(&delivered), "every submission delivered, its stored attachments read");

    let all_closed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(closed) = hostile.join_next().await {
            let (kind, open_for) = closed.unwrap();
            assert!(open_for <= HEADER_TIMEOUT + Duration::from_secs(3), "a {kind} connection stayed open for {open_for:?}");
        }
    })
    .await;
    assert!(all_closed.is_ok(), "{} hostile connections were still open after 20 s", hostile.len());
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    let counted = |name: &str| crate::helpers::metric(&metrics, name).unwrap_or_default();
    assert!(counted("amtsbote_http_connections_evicted_total") >= (2 * CAP) as f64, "{metrics}");
    assert!(counted("amtsbote_http_header_timeouts_total") >= 1.0, "{metrics}");
    assert!(counted("amtsbote_http_connections") <= 2.0, "only the scrape's own connection is open: {metrics}");
}
