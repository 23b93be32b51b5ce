//! Who may send what, and who sees what: sender keys and their rights,
//! tenants whose submissions never cross, operator roles and scopes.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{OPERATOR_TOKEN, SENDER_KEY, Setup, gewerbeanmeldung, key_hash, metric, spawn_app};

const GEWERBE: &str = "99050012104000";
const KOELN: &str = "053150000000";
const BONN: &str = "053140000000";

async fn problem(response: reqwest::Response) -> (StatusCode, Option<String>, Value) {
    let status = response.status();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    (status, challenge, response.json().await.unwrap())
}

fn pointers(problem: &Value) -> Vec<&str> {
    problem["errors"].as_array().map(|e| e.iter().map(|e| e["pointer"].as_str().unwrap()).collect()).unwrap_or_default()
}

/// A submission posted to the amtsbote at `base` with `key`, if any.
async fn post_as(base: &str, key: Option<&str>, body: String) -> reqwest::Response {
    try_post(&reqwest::Client::new(), base, key, body).await.unwrap()
}

/// As [`post_as`], through `client` (which may present a certificate).
async fn try_post(client: &reqwest::Client, base: &str, key: Option<&str>, body: String) -> reqwest::Result<reqwest::Response> {
    let mut request = client.post(format!("{base}/v1/submissions")).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.body(body).send().await
}

#[tokio::test]
async fn a_sender_without_rights_gets_403_naming_the_field_and_nothing_is_queued() {
    let access = format!(
        "senders:\n  - name: koeln-gewerbe\n    api_keys_sha256: [{}]\n    regions: [\"05315\"]\n    services: [\"{GEWERBE}\"]\noperators:\n  - name: test-operator\n    token_sha256: {}\n    role: operator\n",
        key_hash("koeln-key"),
        key_hash(OPERATOR_TOKEN)
    );
    let app = spawn_app(Setup { access: Some(&access), ..Setup::default() }).await;

    let (status, challenge, body) = problem(post_as(&app.base, None, gewerbeanmeldung(KOELN).to_string()).await).await;
    assert_eq!((status, challenge.as_deref()), (StatusCode::UNAUTHORIZED, Some("Bearer")), "{body}");
    let (status, _, _) = problem(post_as(&app.base, Some("not-a-key"), gewerbeanmeldung(KOELN).to_string()).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _, body) = problem(post_as(&app.base, Some("koeln-key"), gewerbeanmeldung(BONN).to_string()).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["type"], "https://amtsbote.dev/problems/forbidden");
    assert_eq!(pointers(&body), ["#/region"], "{body}");
    let other_service = gewerbeanmeldung(KOELN).to_string().replace(GEWERBE, "99102013104000");
    let (status, _, body) = problem(post_as(&app.base, Some("koeln-key"), other_service).await).await;
    assert_eq!((status, pointers(&body)), (StatusCode::FORBIDDEN, vec!["#/service"]), "{body}");

    // Nothing of the refused requests was queued, recorded or delivered.
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&metrics, "amtsbote_queue_depth{target=\"fv\"}"), Some(0.0), "{metrics}");
    assert_eq!(metric(&metrics, "amtsbote_submissions_refused_total{problem=\"forbidden\"}"), Some(2.0));
    assert_eq!(metric(&metrics, "amtsbote_submissions_refused_total{problem=\"unauthorized\"}"), Some(2.0));
    let found: Value = app.operator(Method::GET, "/v1/submissions").send().await.unwrap().json().await.unwrap();
    assert_eq!(found["items"].as_array().unwrap().len(), 0, "{found}");

    // What it may send goes through, and only it reads the status back.
    let response = post_as(&app.base, Some("koeln-key"), gewerbeanmeldung(KOELN).to_string()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    app.back_office.wait_for(1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.back_office.received().len(), 1, "only the allowed submission arrived");
    let status_of = |key: &'static str| {
        let url = format!("{}/v1/submissions/{id}", app.base);
        async move { reqwest::Client::new().get(url).bearer_auth(key).send().await.unwrap().status() }
    };
    assert_eq!(status_of("koeln-key").await, StatusCode::OK);
    assert_eq!(status_of(OPERATOR_TOKEN).await, StatusCode::OK);
    assert_eq!(status_of("not-a-key").await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_rotated_key_works_alongside_the_old_one_until_the_old_one_is_removed() {
    let access = |keys: &[&str]| {
        let hashes: Vec<String> = keys.iter().map(|k| key_hash(k)).collect();
        format!("senders:\n  - name: oaa\n    api_keys_sha256: [{}]\n    regions: [\"\"]\n", hashes.join(", "))
    };
    let old = access(&["old-key"]);
    let app = spawn_app(Setup { access: Some(&old), ..Setup::default() }).await;
    let accepts = |key: &'static str| {
        let app = &app;
        async move { post_as(&app.base, Some(key), gewerbeanmeldung(KOELN).to_string()).await.status() }
    };
    assert_eq!(accepts("old-key").await, StatusCode::ACCEPTED);
    assert_eq!(accepts("new-key").await, StatusCode::UNAUTHORIZED);

    let reload = |yaml: String| {
        let app = &app;
        async move {
            let text = std::fs::read_to_string(&app.config_path).unwrap();
            let start = text.find("senders:").unwrap();
            let end = text.find("targets:").unwrap();
            let config = format!("{}{yaml}{}", &text[..start], &text[end..]);
            app.reloader.reload(&amtsbote::yaml::parse_yaml(&config).unwrap()).await.unwrap();
        }
    };
    reload(access(&["old-key", "new-key"])).await;
    assert_eq!(accepts("old-key").await, StatusCode::ACCEPTED);
    assert_eq!(accepts("new-key").await, StatusCode::ACCEPTED);
    reload(access(&["new-key"])).await;
    assert_eq!(accepts("old-key").await, StatusCode::UNAUTHORIZED);
    assert_eq!(accepts("new-key").await, StatusCode::ACCEPTED);
}

/// Köln and Bonn, each with its trade office; one sender serves both; a
/// viewer for Köln.
fn two_tenants() -> String {
    format!(
        "senders:\n  - name: oaa-nrw\n    api_keys_sha256: [{}]\n    regions: [\"05\"]\noperators:\n  - name: platform\n    token_sha256: {}\n    role: operator\n  - name: koeln-viewer\n    token_sha256: {}\n    role: viewer\n    tenants: [koeln]\ntenants:\n  koeln:\n    regions: [\"05315\"]\n  bonn:\n    regions: [\"05314\"]\n",
        key_hash(SENDER_KEY),
        key_hash(OPERATOR_TOKEN),
        key_hash("koeln-viewer-token")
    )
}

const TWO_TENANTS_TARGETS: &[(&str, &str)] =
    &[("koeln-fv", "xgewerbeanzeige-2.2/gewerbeanmeldung.yaml"), ("bonn-fv", "xgewerbeanzeige-2.2/gewerbeanmeldung.yaml")];

#[tokio::test]
async fn two_tenants_submissions_never_cross_and_each_operator_sees_only_its_own() {
    let access = two_tenants();
    let app = spawn_app(Setup {
        targets: TWO_TENANTS_TARGETS,
        routes: &[(GEWERBE, "05315", &["koeln-fv"]), (GEWERBE, "05314", &["bonn-fv"])],
        access: Some(&access),
        tenants_of: &[("koeln-fv", "koeln"), ("bonn-fv", "bonn")],
        ..Setup::default()
    })
    .await;

    // Interleaved and concurrent, as a shared online service sends them.
    const EACH: usize = 20;
    let mut sent = tokio::task::JoinSet::new();
    for i in 0..2 * EACH {
        let base = app.base.clone();
        let region = if i % 2 == 0 { KOELN } else { BONN };
        sent.spawn(async move {
            let response = post_as(&base, Some(SENDER_KEY), gewerbeanmeldung(region).to_string()).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            (region, response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned())
        });
    }
    let ids: Vec<(&str, String)> = sent.join_all().await;
    let received = app.back_office.wait_for(2 * EACH, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 2 * EACH);
    for (path, own, other) in [("/koeln-fv", "05315000", "05314000"), ("/bonn-fv", "05314000", "05315000")] {
        let arrived: Vec<String> =
            received.iter().filter(|r| r.path == path).map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
        assert_eq!(arrived.len(), EACH, "{path}");
        for body in &arrived {
            assert!(body.contains(own) && !body.contains(other), "{path} received another tenant's submission");
        }
    }

    // The Köln viewer finds Köln's submissions only; Bonn's do not exist
    // for it, neither in search nor by id.
    let viewer = |method: Method, path: &str| app.client.request(method, format!("{}{path}", app.base)).bearer_auth("koeln-viewer-token");
    let found: Value = viewer(Method::GET, "/v1/submissions?limit=500").send().await.unwrap().json().await.unwrap();
    let regions: Vec<&str> = found["items"].as_array().unwrap().iter().map(|i| i["region"].as_str().unwrap()).collect();
    assert_eq!(regions.len(), EACH, "{found}");
    assert!(regions.iter().all(|r| *r == KOELN), "{regions:?}");
    for (region, id) in &ids {
        let status = viewer(Method::GET, &format!("/v1/submissions/{id}")).send().await.unwrap().status();
        assert_eq!(status, if *region == KOELN { StatusCode::OK } else { StatusCode::NOT_FOUND }, "{region}");
    }
    // ... and may look but not act.
    let replay = viewer(Method::POST, "/v1/parked/replay").json(&serde_json::json!({ "all": true })).send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::FORBIDDEN);
    let parked = viewer(Method::GET, "/v1/parked?target=bonn-fv").send().await.unwrap();
    assert_eq!(parked.status(), StatusCode::UNPROCESSABLE_ENTITY, "another tenant's target is unknown to it");
    // The platform operator sees both.
    let all: Value = app.operator(Method::GET, "/v1/submissions?limit=500").send().await.unwrap().json().await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 2 * EACH);
}

#[tokio::test]
async fn a_route_sending_a_region_to_another_tenants_target_is_refused_at_load() {
    let access = two_tenants();
    let back_office = amtsbote_sample_back_office::SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup {
        targets: TWO_TENANTS_TARGETS,
        // Köln's route also names Bonn's office.
        routes: &[(GEWERBE, "05315", &["koeln-fv", "bonn-fv"])],
        access: Some(&access),
        tenants_of: &[("koeln-fv", "koeln"), ("bonn-fv", "bonn")],
        ..Setup::default()
    };
    let yaml = crate::helpers::config_yaml(&setup, &back_office, "unused", dir.path());
    let problems = amtsbote::pipeline::Pipeline::build(&amtsbote::yaml::parse_yaml(&yaml).unwrap()).err().expect("refused");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("bonn-fv of tenant bonn") && problems[0].contains("\"05315\""), "{problems:?}");

    // A target without a tenant, once tenants exist, is refused too.
    setup.routes = &[(GEWERBE, "05315", &["koeln-fv"])];
    setup.tenants_of = &[("koeln-fv", "koeln")];
    let yaml = crate::helpers::config_yaml(&setup, &back_office, "unused", dir.path());
    let problems = amtsbote::pipeline::Pipeline::build(&amtsbote::yaml::parse_yaml(&yaml).unwrap()).err().expect("refused");
    assert!(problems.iter().any(|p| p.contains("bonn-fv: name its tenant")), "{problems:?}");
}

/// The bodies of the messages in `queue`, left in the queue.
async fn peek(queue: &str) -> Vec<Vec<u8>> {
    use lapin::options::BasicGetOptions;
    let connection = amtsbote::broker::connect(&amtsbote::broker::Endpoint { url: crate::helpers::broker_url().into(), nodes: Vec::new(), ca_file: None }, "test-peek").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut bodies = Vec::new();
    while let Some(message) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: false }).await.unwrap() {
        bodies.push(message.delivery.data.clone());
    }
    // Closing returns them all.
    channel.close(200, "peeked".into()).await.unwrap();
    connection.close(200, "peeked".into()).await.unwrap();
    bodies
}

#[tokio::test]
async fn the_broker_holds_no_plaintext_form_field_in_waiting_or_parked_messages() {
    let app = spawn_app(Setup {
        targets: &[("waiting", "xgewerbeanzeige-2.2/gewerbeanmeldung.yaml"), ("refusing", "xgewerbeanzeige-2.2/gewerbeanmeldung.yaml")],
        routes: &[(GEWERBE, "", &["waiting", "refusing"])],
        // The retry waits a minute in the broker's delay queue.
        target_settings: "    retry:\n      first_delay: 1m\n      jitter: false\n",
        ..Setup::default()
    })
    .await;
    app.back_office.script_for("/waiting", &[StatusCode::SERVICE_UNAVAILABLE]);
    app.back_office.script_for("/refusing", &[StatusCode::UNPROCESSABLE_ENTITY]);
    let submission = gewerbeanmeldung(KOELN);
    let response = app.submit(submission.to_string()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let status = app
        .status_when(&id, |s| {
            let states: Vec<&str> = s["targets"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap()).collect();
            states == ["parked", "retrying"]
        })
        .await;
    assert_eq!(status["targets"][0]["state"], "parked", "{status}");

    let topology = amtsbote::broker::Topology::new(&app.prefix);
    let parked = peek(&topology.parking_queue(&amtsbote::domain::TargetName::parse("refusing").unwrap())).await;
    let waiting = peek(&topology.delay_queue(Duration::from_secs(60))).await;
    assert_eq!((parked.len(), waiting.len()), (1, 1), "one message each");
    let values = crate::observability::form_values(&submission);
    assert!(values.len() > 15, "{values:?}");
    for body in parked.iter().chain(&waiting) {
        assert!(body.starts_with(b"ASB1"), "sealed");
        let text = String::from_utf8_lossy(body);
        for value in &values {
            assert!(!text.contains(value.as_str()), "the broker holds the form value {value:?}");
        }
    }
}

/// Every secret a full run handles: broker password, sender key, operator
/// token, sealing key, a back office's token, and a wrong key a client
/// tried. None may appear in a log line, an HTTP answer, the metrics or
/// `amtsbote check`'s output.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqps_with_a_private_ca_works_and_no_secret_reaches_logs_answers_or_metrics() {
    use crate::helpers::{AppProcess, FAST_RETRY, PrivateBroker, config_yaml, free_port, unique_prefix};
    use amtsbote_connector_conformance::pki::Pki;

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let password = format!("broker-password-{}", uuid::Uuid::new_v4().simple());
    let tls_port = free_port();
    let conf = format!(
        "default_user = amtsbote\ndefault_pass = {password}\nlisteners.ssl.default = {tls_port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false",
        pki.ca.display(),
        pki.server_certificate.display(),
        pki.server_key.display()
    );
    // Stopped when dropped, at the end of the test.
    let _broker = PrivateBroker::start_with("tls", &conf).await;

    let back_office = amtsbote_sample_back_office::SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    back_office.script(&[StatusCode::SERVICE_UNAVAILABLE]);
    let back_office_token = format!("back-office-token-{}", uuid::Uuid::new_v4().simple());
    let token_file = dir.path().join("fv.token");
    std::fs::write(&token_file, &back_office_token).unwrap();
    let connector = format!(
        "      http:\n        url: {}\n        auth:\n          bearer:\n            token: {{ file: {} }}\n",
        back_office.url("fv"),
        token_file.display()
    );
    let url = format!("amqps://amtsbote:{password}@127.0.0.1:{tls_port}/%2f");
    let setup = Setup { broker_url: Some(url.clone()), connector: Some(&connector), target_settings: FAST_RETRY, ..Setup::default() };
    let yaml = config_yaml(&setup, &back_office, &unique_prefix(), dir.path());
    let yaml = yaml.replacen("broker:\n", &format!("broker:\n  ca_file: {}\n", pki.ca.display()), 1);
    let config = dir.path().join("amtsbote.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let seal_key = std::fs::read_to_string(dir.path().join("seal.key")).unwrap().trim().to_owned();

    let log = dir.path().join("amtsbote.log");
    let mut app = AppProcess::start_with(&config, free_port(), &log, &[("RUST_LOG", "trace"), ("AMTSBOTE_LOG_FORMAT", "json")]).await;
    // The first connect to a broker that has just booted may fail on a
    // loaded machine (CI once answered 503 here); a client, like a load
    // balancer, waits for readiness. If it never comes, the log says why.
    app.wait_until_ready(Duration::from_secs(30)).await;
    let operator = reqwest::Client::new();
    let wrong_key = format!("wrong-key-{}", uuid::Uuid::new_v4().simple());
    let mut answers = String::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let response = post_as(&app.base, Some(SENDER_KEY), gewerbeanmeldung(KOELN).to_string()).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "accepted through amqps");
        let text = response.text().await.unwrap();
        ids.push(serde_json::from_str::<Value>(&text).unwrap()["id"].as_str().unwrap().to_owned());
        answers += &text;
    }
    let refused = post_as(&app.base, Some(&wrong_key), gewerbeanmeldung(KOELN).to_string()).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    answers += &refused.text().await.unwrap();
    let delivered = back_office.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(delivered.len(), 3, "delivered through amqps after a retry");
    app.hang_up();
    for path in ["/v1/submissions", &format!("/v1/submissions/{}", ids[0]), "/v1/parked", "/readyz", "/metrics", "/dashboard"] {
        let response = operator.get(format!("{}{path}", app.base)).bearer_auth(OPERATOR_TOKEN).send().await.unwrap();
        answers += &response.text().await.unwrap();
    }
    let wrong_operator = operator.get(format!("{}/v1/parked", app.base)).bearer_auth(&wrong_key).send().await.unwrap();
    answers += &wrong_operator.text().await.unwrap();
    app.terminate(Duration::from_secs(15)).await.expect("amtsbote stops on SIGTERM");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_amtsbote")).args(["check", "--probe", "--config"]).arg(&config).output().unwrap();
    let check = format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(check.contains(&format!("broker amqps://127.0.0.1:{tls_port}/%2f: reachable")), "{check}");

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("\"event\":\"delivered\""), "the log is of a full run");
    assert!(logs.lines().count() > 100, "trace logs of every crate were on");
    let secrets = [
        ("broker password", password.as_str()),
        ("sender key", SENDER_KEY),
        ("operator token", OPERATOR_TOKEN),
        ("sealing key", seal_key.as_str()),
        ("back office token", back_office_token.as_str()),
        ("a wrong key a client tried", wrong_key.as_str()),
    ];
    for (what, secret) in secrets {
        for (place, text) in [("the logs", &logs), ("an HTTP answer", &answers), ("amtsbote check", &check)] {
            assert!(!text.contains(secret), "the {what} appears in {place}");
        }
    }
    // The back office did get its token: the test would pass for nothing
    // if the token were never sent.
    assert!(back_office.received().iter().all(|r| r.authorization.as_deref() == Some(&format!("Bearer {back_office_token}"))));
}

/// mTLS: over `http.tls` with a `client_ca`, a sender may present a client
/// certificate instead of an API key; its rights are the same.
#[tokio::test]
async fn a_sender_with_a_registered_client_certificate_needs_no_key_and_keeps_to_its_rights() {
    use amtsbote::pem::CertificateFingerprint;
    use amtsbote_connector_conformance::pki::Pki;

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let stranger = Pki::generate(&elsewhere);
    let fingerprint = &CertificateFingerprint::of_pem_file(&pki.client_certificate).unwrap()[0];
    let http = format!(
        "  tls:\n    certificate: {}\n    key: {}\n    client_ca: {}\n",
        pki.server_certificate.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let access = format!(
        "senders:\n  - name: koeln-by-certificate\n    client_certificates_sha256: [\"{fingerprint}\"]\n    regions: [\"05315\"]\n  - name: by-key\n    api_keys_sha256: [{}]\n    regions: [\"\"]\noperators:\n  - name: test-operator\n    token_sha256: {}\n    role: operator\n",
        key_hash(SENDER_KEY),
        key_hash(OPERATOR_TOKEN)
    );
    let app = spawn_app(Setup { http_settings: &http, access: Some(&access), ..Setup::default() }).await;
    assert!(app.base.starts_with("https://"), "{}", app.base);
    // A client trusting `ca`, presenting `identity` (certificate, key).
    let client_of = |ca: &std::path::Path, identity: Option<(&std::path::Path, &std::path::Path)>| {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
        let mut builder = reqwest::Client::builder().add_root_certificate(ca);
        if let Some((certificate, key)) = identity {
            let pem = [std::fs::read(certificate).unwrap(), std::fs::read(key).unwrap()].concat();
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    };
    let client = |identity| client_of(&pki.ca, identity);
    let registered = client(Some((&pki.client_certificate, &pki.client_key)));
    // Issued by the same CA, but registered for no sender.
    let unregistered = client(Some((&pki.server_certificate, &pki.server_key)));
    let foreign = client(Some((&stranger.client_certificate, &stranger.client_key)));
    let anonymous = client(None);
    let post = async |client: &reqwest::Client, key: Option<&str>, region: &str| {
        try_post(client, &app.base, key, gewerbeanmeldung(region).to_string()).await
    };

    let accepted = post(&registered, None, KOELN).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED, "the certificate alone is a credential");
    let id = accepted.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let own = registered.get(format!("{}/v1/submissions/{id}", app.base)).send().await.unwrap();
    assert_eq!(own.status(), StatusCode::OK, "the sender reads back its own submission");
    let by_key = anonymous.get(format!("{}/v1/submissions/{id}", app.base)).bearer_auth(SENDER_KEY).send().await.unwrap();
    assert_eq!(by_key.status(), StatusCode::NOT_FOUND, "another sender does not see it");

    let (status, _, body) = problem(post(&registered, None, BONN).await.unwrap()).await;
    assert_eq!((status, pointers(&body)), (StatusCode::FORBIDDEN, vec!["#/region"]), "the certificate's sender keeps to its regions");
    let (status, challenge, body) = problem(post(&anonymous, None, KOELN).await.unwrap()).await;
    assert_eq!((status, challenge.as_deref()), (StatusCode::UNAUTHORIZED, Some("Bearer")), "{body}");
    let (status, _, body) = problem(post(&unregistered, None, KOELN).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("not registered"), "{body}");
    let (status, _, body) = problem(post(&registered, Some(SENDER_KEY), KOELN).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a key and a certificate of two senders: {body}");
    let refused = post(&foreign, None, KOELN).await;
    assert!(refused.is_err(), "a certificate from another CA fails the handshake: {refused:?}");
    let plain = reqwest::Client::new().get(app.base.replacen("https", "http", 1) + "/healthz").send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "no plain HTTP on the TLS port");

    let accepted = post(&anonymous, Some(SENDER_KEY), KOELN).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED, "API keys still work over TLS");
    // Served over HTTPS, the dashboard's session cookie is never sent over plain HTTP.
    let no_redirects = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = no_redirects.post(format!("{}/dashboard/login", app.base)).form(&[("token", OPERATOR_TOKEN)]).send().await.unwrap();
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.ends_with("; Secure"), "{cookie}");
    let delivered = app.back_office.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(delivered.len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.back_office.received().len(), 2, "nothing refused was delivered");

    // A renewed server certificate takes effect on reload; a broken one is
    // refused and the running one stays.
    let reload = async || app.reloader.reload(&amtsbote::config::Config::load(&app.config_path).unwrap()).await;
    let renewed_dir = dir.path().join("renewed");
    std::fs::create_dir(&renewed_dir).unwrap();
    let renewed = Pki::generate(&renewed_dir);
    std::fs::write(&pki.server_certificate, "not a certificate").unwrap();
    let problems = reload().await.unwrap_err();
    assert!(problems[0].contains("http.tls.certificate"), "{problems:?}");
    let new_connection = client(Some((&pki.client_certificate, &pki.client_key)));
    assert_eq!(post(&new_connection, None, KOELN).await.unwrap().status(), StatusCode::ACCEPTED, "still serving");
    std::fs::copy(&renewed.server_certificate, &pki.server_certificate).unwrap();
    std::fs::copy(&renewed.server_key, &pki.server_key).unwrap();
    reload().await.unwrap();
    let trusts_renewed = client_of(&renewed.ca, Some((&pki.client_certificate, &pki.client_key)));
    assert_eq!(post(&trusts_renewed, None, KOELN).await.unwrap().status(), StatusCode::ACCEPTED, "the renewed certificate is served");
    assert!(post(&client(None), Some(SENDER_KEY), KOELN).await.is_err(), "the old one is not");
}
