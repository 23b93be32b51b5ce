//! Receiving from FIT-Connect: amtsbote against the FIT-Connect double
//! (`tests/fit-connect-double`) and the real broker: fetched, decrypted,
//! checked, admitted, delivered, and decided once.

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use amtsbote::jose::{Jwk, KeyPurpose, generate};
use amtsbote_fit_connect_double::{Destination, Double, Faults, Outgoing, SubmissionState, Submitted, Tamper};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Setup, TestApp, metric, spawn_app};

/// One destination's key pairs for the whole test binary: RSA-4096 keys
/// take a while to make.
static KEYS: LazyLock<[(Jwk, Jwk); 2]> = LazyLock::new(|| {
    [generate("enc-test", KeyPurpose::Encryption).unwrap(), generate("sig-test", KeyPurpose::Signing).unwrap()]
});

const REGION: &str = "053150000000";
const GEWERBE: &str = "99050012104000";
pub const CALLBACK_SECRET: &str = "callback-secret-for-tests";

pub struct Receiving {
    pub double: Double,
    pub destination: Uuid,
    /// The `fit_connect:` section.
    pub yaml: String,
    _dir: tempfile::TempDir,
}

/// The double with one destination registered, and the config section
/// that receives for it.
pub async fn receiving(poll_interval: &str) -> Receiving {
    let double = Double::start().await.unwrap();
    let destination = Uuid::new_v4();
    let dir = tempfile::tempdir().unwrap();
    let [(encryption_private, encryption_public), (signing_private, signing_public)] = KEYS.clone();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let encryption = write("encryption.private.jwk.json", serde_json::to_string(&encryption_private).unwrap());
    let signing = write("signing.private.jwk.json", serde_json::to_string(&signing_private).unwrap());
    let client_secret = write("client-secret", "s3cret-client\n".into());
    let callback_secret = write("callback-secret", format!("{CALLBACK_SECRET}\n"));
    double.register(registered(destination, &encryption_public, &signing_public));
    let yaml = format!(
        "fit_connect:\n  submission_api: {}\n  token_url: {}\n  poll_interval: {poll_interval}\n  timeout: 10s\n  destinations:\n    stadt-test:\n      id: {destination}\n      client_id: client-{destination}\n      client_secret: {{ file: {} }}\n      region: \"{REGION}\"\n      decryption_keys: [{{ file: {} }}]\n      signing_key: {{ file: {} }}\n      callback_secret: {{ file: {} }}\n",
        double.submission_api(),
        double.token_url(),
        client_secret.display(),
        encryption.display(),
        signing.display(),
        callback_secret.display(),
    );
    Receiving { double, destination, yaml, _dir: dir }
}

/// The destination as FIT-Connect has it registered, with these public keys.
fn registered(destination: Uuid, encryption: &Jwk, signing: &Jwk) -> Destination {
    Destination {
        id: destination,
        client_id: format!("client-{destination}"),
        client_secret: "s3cret-client".into(),
        encryption_key: serde_json::to_value(encryption).unwrap(),
        signing_key: serde_json::to_value(signing).unwrap(),
        callback: None,
    }
}

/// `/metrics` once `done` holds for it, or after 10 s as it is then.
async fn metrics_when(app: &TestApp, done: impl Fn(&str) -> bool) -> String {
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = reqwest::get(format!("{}/metrics", app.base)).await.unwrap().text().await.unwrap();
        if done(&metrics) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    metrics
}

/// A Gewerbeanmeldung's form data, as the shipped fixture has it.
fn form() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/xgewerbeanzeige-2.2/fixtures/gewerbeanmeldung.input.json");
    let queued: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    queued["data"].clone()
}

fn pdf(label: &str, size: usize) -> Vec<u8> {
    let mut content = format!("%PDF-1.7\n% {label}\n").into_bytes();
    content.extend((0..size).map(|i| (i % 251) as u8));
    content.extend_from_slice(b"\n%%EOF\n");
    content
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn decided(double: &Double, submitted: &Submitted) -> SubmissionState {
    wait_for("a decision", Duration::from_secs(30), || double.state(submitted.submission_id) != Some(SubmissionState::Submitted)).await;
    double.state(submitted.submission_id).unwrap()
}

/// For amtsbote as a process of its own (to kill and restart): a back
/// office, a folder, and a config delivering Köln's Gewerbe to `dms`.
async fn process_setup(receiving: &Receiving) -> (amtsbote_sample_back_office::SampleBackOffice, tempfile::TempDir, std::path::PathBuf) {
    let back_office = amtsbote_sample_back_office::SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup { targets: &[("dms", "dms-json/akte.yaml")], routes: &[(GEWERBE, "05", &["dms"])], extra: &receiving.yaml, ..Setup::default() };
    let config = crate::helpers::write_config(&setup, &back_office, dir.path());
    (back_office, dir, config)
}

async fn app_for(receiving: &Receiving) -> TestApp {
    spawn_app(Setup {
        targets: &[("fv", "xgewerbeanzeige-2.2/gewerbeanmeldung.yaml"), ("dms", "dms-json/akte.yaml")],
        routes: &[(GEWERBE, "05", &["fv", "dms"])],
        extra: &receiving.yaml,
        ..Setup::default()
    })
    .await
}

#[tokio::test]
async fn an_encrypted_gewerbeanmeldung_is_fetched_delivered_byte_correct_and_accepted() {
    let receiving = receiving("1s").await;
    let app = app_for(&receiving).await;
    let (first, second) = (pdf("Antrag", 40_000), pdf("Gewerbeerlaubnis", 300_000));
    let mut outgoing = Outgoing::json(GEWERBE, form())
        .attach("antrag.pdf", "application/pdf", first.clone())
        .attach("erlaubnis.pdf", "application/pdf", second.clone());
    outgoing.reply_email = Some("antragsteller@example.org".into());
    outgoing.sender_reference = Some("OAA-2026-0815".into());
    let submitted = receiving.double.submit(receiving.destination, outgoing);

    assert_eq!(decided(&receiving.double, &submitted).await, SubmissionState::Accepted);
    wait_for("both deliveries", Duration::from_secs(30), || {
        let paths: Vec<String> = app.back_office.received().iter().map(|r| r.path.clone()).collect();
        paths.contains(&"/fv".to_owned()) && paths.contains(&"/dms".to_owned())
    })
    .await;
    let received = app.back_office.received();
    let case: Value = serde_json::from_slice(&received.iter().find(|r| r.path == "/dms").unwrap().body).unwrap();
    use base64::Engine as _;
    let contents: Vec<Vec<u8>> = case["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| base64::engine::general_purpose::STANDARD.decode(d["contentBase64"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(contents, vec![first, second], "attachments arrive byte for byte");
    assert_eq!(case["form"], form(), "the form data as the sender encrypted it");
    assert_eq!(case["reference"], "OAA-2026-0815");
    let xml = String::from_utf8(received.iter().find(|r| r.path == "/fv").unwrap().body.to_vec()).unwrap();
    assert!(xml.contains("<xga:nachrichtenUUID>"), "{xml}\n{case}");

    // The ledger knows where FIT-Connect has it.
    let id = case["caseId"].as_str().unwrap();
    // The destination, not a configured sender, handed it in: operators see it.
    let status: Value = app.operator(reqwest::Method::GET, &format!("/v1/submissions/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["fitConnect"]["submissionId"], submitted.submission_id.to_string(), "{status}");
    assert_eq!(status["fitConnect"]["caseId"], submitted.case_id.to_string());
    assert_eq!(status["sender"], "stadt-test");
    let decisions = receiving.double.decisions();
    assert_eq!(decisions.len(), 1, "one decision: {decisions:?}");
    let metrics = reqwest::get(format!("{}/metrics", app.base)).await.unwrap().text().await.unwrap();
    assert_eq!(metric(&metrics, "amtsbote_fit_connect_accepted_total{destination=\"stadt-test\"}"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "amtsbote_fit_connect_up{destination=\"stadt-test\"}"), Some(1.0));
    // The dashboard shows the destination's health.
    let cookie = crate::dashboard::sign_in(&app).await;
    let page = reqwest::Client::new().get(format!("{}/dashboard", app.base)).header("cookie", cookie).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("FIT-Connect destinations") && page.contains(r#"data-destination="stadt-test""#), "{page}");
    assert!(page.contains(&receiving.destination.to_string()) && page.contains("polling"), "{page}");
}

#[tokio::test]
async fn each_failed_check_rejects_with_its_problem_and_queues_nothing() {
    let receiving = receiving("1s").await;
    let app = app_for(&receiving).await;
    let with_attachment = || Outgoing::json(GEWERBE, form()).attach("antrag.pdf", "application/pdf", pdf("Antrag", 1000));
    let cases = [
        (Tamper::Ciphertext, "encryption-issue", "data"),
        (Tamper::UnknownKid, "encryption-issue", "data"),
        (Tamper::HashMismatch, "incorrect-hash", "data"),
        (Tamper::MissingAttachment, "missing-attachment", "attachment:"),
        (Tamper::MetadataSchema, "schema-violation", "metadata"),
        (Tamper::SwappedData, "authentication-tag-incorrect", "data"),
        (Tamper::ServiceMismatch, "service-mismatch", "metadata"),
    ];
    let submitted: Vec<_> = cases.iter().map(|(tamper, ..)| receiving.double.submit(receiving.destination, with_attachment().tampered(*tamper))).collect();
    for ((tamper, problem, instance), submitted) in cases.iter().zip(&submitted) {
        let SubmissionState::Rejected(problems) = decided(&receiving.double, submitted).await else {
            panic!("{tamper:?} must be rejected");
        };
        assert_eq!(problems[0]["type"], format!("https://schema.fitko.de/fit-connect/events/problems/{problem}"), "{tamper:?}: {problems:?}");
        assert!(problems[0]["instance"].as_str().unwrap().starts_with(instance), "{tamper:?}: {problems:?}");
    }
    // Rejected means nothing queued: a good one after them is the only delivery.
    let good = receiving.double.submit(receiving.destination, with_attachment());
    assert_eq!(decided(&receiving.double, &good).await, SubmissionState::Accepted);
    wait_for("the good one's deliveries", Duration::from_secs(30), || app.back_office.received().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.back_office.received().len(), 2, "only the accepted submission is delivered (to fv and dms)");
    assert!(receiving.double.decisions().iter().all(|d| d.refusal.is_none()), "every decision holds: {:?}", receiving.double.decisions());
    let metrics = reqwest::get(format!("{}/metrics", app.base)).await.unwrap().text().await.unwrap();
    assert_eq!(
        metric(&metrics, "amtsbote_fit_connect_rejected_total{destination=\"stadt-test\",problem=\"encryption-issue\"}"),
        Some(2.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_callback_wakes_the_poller_and_a_forged_or_stale_one_is_refused() {
    let receiving = receiving("1h").await;
    let app = app_for(&receiving).await;
    let url = format!("{}/v1/fit-connect/callbacks/stadt-test", app.base);
    receiving.double.set_callback(receiving.destination, &url, CALLBACK_SECRET);
    // The first poll, at start, found nothing; the next is an hour away.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let submitted = receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, form()));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let double = &receiving.double;
    assert_eq!(double.notify_with(receiving.destination, &url, "wrong-secret", now).await, 401);
    assert_eq!(double.notify_with(receiving.destination, &url, CALLBACK_SECRET, now - 400).await, 401, "older than five minutes");
    let unknown = format!("{}/v1/fit-connect/callbacks/elsewhere", app.base);
    assert_eq!(double.notify_with(receiving.destination, &unknown, CALLBACK_SECRET, now).await, 404);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(double.state(submitted.submission_id), Some(SubmissionState::Submitted), "refused callbacks wake nothing");
    assert_eq!(double.notify(receiving.destination).await, 200);
    assert_eq!(decided(double, &submitted).await, SubmissionState::Accepted);
}

#[tokio::test]
async fn a_hundred_submissions_through_503s_429s_expiring_tokens_and_lost_answers_are_each_accepted_and_delivered_once() {
    let receiving = receiving("200ms").await;
    // From the first request on: the first token, too, expires.
    receiving.double.set_faults(Faults {
        fail_every: Some(7),
        throttle: 3,
        token_lifetime: Some(Duration::from_secs(2)),
        lose_decision_answers: 5,
        ..Faults::default()
    });
    let app = spawn_app(Setup {
        targets: &[("dms", "dms-json/akte.yaml")],
        routes: &[(GEWERBE, "05", &["dms"])],
        extra: &receiving.yaml,
        ..Setup::default()
    })
    .await;
    let submitted: Vec<Submitted> =
        (0..100).map(|i| receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, json!({ "nummer": i })))).collect();
    wait_for("100 decisions", Duration::from_secs(120), || {
        submitted.iter().all(|s| receiving.double.state(s.submission_id) != Some(SubmissionState::Submitted))
    })
    .await;
    assert!(submitted.iter().all(|s| receiving.double.state(s.submission_id) == Some(SubmissionState::Accepted)));
    wait_for("100 deliveries", Duration::from_secs(60), || app.back_office.received().len() >= 100).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let numbers: std::collections::BTreeSet<i64> = app
        .back_office
        .received()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["form"]["nummer"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers.len(), 100, "each submission delivered");
    assert_eq!(app.back_office.answered().len(), 100, "none delivered twice");
    let taken = receiving.double.decisions().iter().filter(|d| d.status.is_success() || d.status == 503).count();
    assert!(taken <= 100 + 5, "one decision per submission, besides the resends of lost answers");
    assert!(receiving.double.token_requests() > 1, "expired tokens were renewed");
}

#[tokio::test]
async fn killed_after_admission_and_before_the_decision_it_delivers_once_and_accepts_once() {
    use crate::helpers::AppProcess;

    let receiving = receiving("500ms").await;
    let (back_office, dir, config) = process_setup(&receiving).await;
    let log = dir.path().join("amtsbote.log");
    let port = crate::helpers::free_port();
    receiving.double.set_faults(Faults { hold_decisions: true, ..Faults::default() });
    let mut app = AppProcess::start(&config, port, &log).await;

    let submitted = receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, json!({ "betrieb": { "name": "Kill GmbH" } })));
    // Admitted (it is delivered) and its decision sent, but not answered.
    wait_for("the delivery", Duration::from_secs(30), || !back_office.received().is_empty()).await;
    wait_for("the decision to arrive", Duration::from_secs(30), || receiving.double.held() > 0).await;
    app.kill_9().await;
    receiving.double.release();
    assert_eq!(receiving.double.state(submitted.submission_id), Some(SubmissionState::Submitted), "the held decision died with its sender");

    let _app = AppProcess::start(&config, port, &log).await;
    assert_eq!(decided(&receiving.double, &submitted).await, SubmissionState::Accepted);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(back_office.received().len(), 1, "delivered once");
    let taken: Vec<_> = receiving.double.decisions().into_iter().filter(|d| d.status.is_success()).collect();
    assert_eq!(taken.len(), 1, "accepted once: {:?}", receiving.double.decisions());
    assert!(receiving.double.decisions().iter().all(|d| d.refusal.is_none()), "{:?}", receiving.double.decisions());
}

#[tokio::test]
async fn a_destination_with_wrong_keys_is_down_and_decides_nothing_while_the_rest_works() {
    let receiving = receiving("200ms").await;
    // FIT-Connect has another encryption key registered under our kid.
    let (_, other_public) = generate("enc-test", KeyPurpose::Encryption).unwrap();
    let mut registered = registered(receiving.destination, &other_public, &KEYS[1].1);
    receiving.double.register(registered.clone());
    // And a second destination whose key file is not a key at all.
    let broken = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(broken.path(), "not a JWK").unwrap();
    let yaml = format!(
        "{}    stadt-kaputt:\n      id: {}\n      client_id: x\n      client_secret: {{ env: HOME }}\n      region: \"{REGION}\"\n      decryption_keys: [{{ file: {} }}]\n      signing_key: {{ file: {} }}\n",
        receiving.yaml,
        Uuid::new_v4(),
        broken.path().display(),
        broken.path().display()
    );
    let app = spawn_app(Setup { targets: &[("dms", "dms-json/akte.yaml")], routes: &[(GEWERBE, "", &["dms"])], extra: &yaml, ..Setup::default() }).await;
    let submitted = receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, form()));
    let metrics = metrics_when(&app, |m| metric(m, "amtsbote_fit_connect_errors_total{destination=\"stadt-test\",kind=\"keys\"}").is_some_and(|n| n >= 1.0)).await;
    assert!(metric(&metrics, "amtsbote_fit_connect_errors_total{destination=\"stadt-test\",kind=\"keys\"}").is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(metric(&metrics, "amtsbote_fit_connect_up{destination=\"stadt-test\"}"), Some(0.0));
    assert_eq!(metric(&metrics, "amtsbote_fit_connect_up{destination=\"stadt-kaputt\"}"), Some(0.0));
    assert_eq!(receiving.double.state(submitted.submission_id), Some(SubmissionState::Submitted), "nothing decided with wrong keys");
    assert!(receiving.double.decisions().is_empty());
    // amtsbote itself works: HTTP intake takes submissions.
    assert_eq!(app.submit(crate::helpers::gewerbeanmeldung(REGION).to_string()).await.status(), 202);

    // Fixed at FIT-Connect (our key registered), it goes on by itself: what
    // was encrypted for the other key cannot be read (the sender hears so),
    // what comes now is accepted.
    registered.encryption_key = serde_json::to_value(&KEYS[0].1).unwrap();
    receiving.double.register(registered);
    let SubmissionState::Rejected(problems) = decided(&receiving.double, &submitted).await else { panic!("not for our key") };
    assert_eq!(problems[0]["type"], "https://schema.fitko.de/fit-connect/events/problems/encryption-issue");
    let next = receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, form()));
    assert_eq!(decided(&receiving.double, &next).await, SubmissionState::Accepted);
}

#[tokio::test]
async fn a_decision_refused_for_its_signature_has_the_keys_checked_again_and_the_destination_down_until_they_match() {
    let receiving = receiving("200ms").await;
    let app = app_for(&receiving).await;
    let first = receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, form()));
    assert_eq!(decided(&receiving.double, &first).await, SubmissionState::Accepted);

    // The signing key is replaced in FIT-Connect's portal, not in amtsbote.
    let (_, other_signing) = generate("sig-test", KeyPurpose::Signing).unwrap();
    let mut registered = registered(receiving.destination, &KEYS[0].1, &other_signing);
    receiving.double.register(registered.clone());
    let second = receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, form()));
    let keys_errors = "amtsbote_fit_connect_errors_total{destination=\"stadt-test\",kind=\"keys\"}";
    let metrics = metrics_when(&app, |m| {
        metric(m, keys_errors).is_some_and(|n| n >= 1.0) && metric(m, "amtsbote_fit_connect_up{destination=\"stadt-test\"}") == Some(0.0)
    })
    .await;
    assert!(metric(&metrics, keys_errors).is_some_and(|n| n >= 1.0), "the keys were checked again and found wrong: {metrics}");
    assert_eq!(metric(&metrics, "amtsbote_fit_connect_up{destination=\"stadt-test\"}"), Some(0.0), "down: the alert fires");
    let refused = receiving.double.decisions().iter().filter(|d| d.status == reqwest::StatusCode::UNPROCESSABLE_ENTITY).count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiving.double.decisions().iter().filter(|d| d.status == reqwest::StatusCode::UNPROCESSABLE_ENTITY).count(),
        refused,
        "while down, nothing more is sent"
    );
    assert_eq!(receiving.double.state(second.submission_id), Some(SubmissionState::Submitted));

    // Put right in the portal: the decision recorded before is sent.
    registered.signing_key = serde_json::to_value(&KEYS[1].1).unwrap();
    receiving.double.register(registered);
    assert_eq!(decided(&receiving.double, &second).await, SubmissionState::Accepted);
    wait_for("both deliveries", Duration::from_secs(30), || app.back_office.received().iter().filter(|r| r.path == "/dms").count() == 2).await;
}

#[tokio::test]
async fn data_failing_the_route_schema_is_rejected_as_a_schema_violation_naming_the_field() {
    let receiving = receiving("200ms").await;
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/hundesteuer/antrag.schema.json");
    let route_settings = format!("    schema: {}\n", schema.display());
    let app = spawn_app(Setup {
        targets: &[("dms", "dms-json/akte.yaml")],
        routes: &[("99102013104000", "", &["dms"])],
        route_settings: &route_settings,
        extra: &receiving.yaml,
        ..Setup::default()
    })
    .await;
    let good: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/submissions/3-hundesteuer-koeln.json")).unwrap(),
    )
    .unwrap();
    let mut bad = good["data"].clone();
    bad["halter"]["anschrift"]["plz"] = json!("5066");
    let rejected = receiving.double.submit(receiving.destination, Outgoing::json("99102013104000", bad));
    let SubmissionState::Rejected(problems) = decided(&receiving.double, &rejected).await else { panic!("must be rejected") };
    assert_eq!(problems[0]["type"], "https://schema.fitko.de/fit-connect/events/problems/schema-violation", "{problems:?}");
    assert_eq!(problems[0]["instance"], "data");
    assert!(problems[0]["detail"].as_str().unwrap().contains("/halter/anschrift/plz"), "names the field: {problems:?}");
    let accepted = receiving.double.submit(receiving.destination, Outgoing::json("99102013104000", good["data"].clone()));
    assert_eq!(decided(&receiving.double, &accepted).await, SubmissionState::Accepted);
    drop(app);
}

#[tokio::test]
async fn xml_data_becomes_form_data_by_intakes_convention() {
    let receiving = receiving("200ms").await;
    let app = app_for(&receiving).await;
    let mut xml = Outgoing::json(GEWERBE, json!({}));
    xml.data = Some((br#"<f:antrag xmlns:f="urn:form" version="2"><f:betrieb>Pick e.K.</f:betrieb></f:antrag>"#.to_vec(), "application/xml"));
    let submitted = receiving.double.submit(receiving.destination, xml);
    assert_eq!(decided(&receiving.double, &submitted).await, SubmissionState::Accepted);
    wait_for("the dms delivery", Duration::from_secs(30), || app.back_office.received().iter().any(|r| r.path == "/dms")).await;
    let cases: Vec<Value> = app.back_office.received().iter().filter(|r| r.path == "/dms").map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
    assert!(cases.iter().any(|c| c["form"] == json!({ "antrag": { "@version": "2", "betrieb": "Pick e.K." } })), "{cases:?}");
}

#[tokio::test]
async fn a_submission_without_a_route_waits_unfetched_until_a_reload_brings_one() {
    let receiving = receiving("200ms").await;
    let app = spawn_app(Setup { targets: &[("dms", "dms-json/akte.yaml")], routes: &[(GEWERBE, "", &["dms"])], extra: &receiving.yaml, ..Setup::default() }).await;
    const UNROUTED: &str = "99102013104000";
    let waiting = receiving.double.submit(receiving.destination, Outgoing::json(UNROUTED, form()));
    wait_for("the first look", Duration::from_secs(30), || receiving.double.fetches(waiting.submission_id) == 1).await;
    // Ten rounds more; the rest of what waits is still taken.
    let routed = receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, form()));
    assert_eq!(decided(&receiving.double, &routed).await, SubmissionState::Accepted);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiving.double.fetches(waiting.submission_id), 1, "fetched, decrypted and checked once, not every round");
    assert_eq!(receiving.double.state(waiting.submission_id), Some(SubmissionState::Submitted), "it waits at FIT-Connect");
    let unrouted = "amtsbote_fit_connect_unrouted{destination=\"stadt-test\"}";
    let metrics = reqwest::get(format!("{}/metrics", app.base)).await.unwrap().text().await.unwrap();
    assert_eq!(metric(&metrics, unrouted), Some(1.0), "{metrics}");
    let cookie = crate::dashboard::sign_in(&app).await;
    let page = reqwest::Client::new().get(format!("{}/dashboard", app.base)).header("cookie", cookie).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Without route") && page.contains(r#"data-unrouted>1<"#), "{page}");

    let yaml = std::fs::read_to_string(&app.config_path).unwrap();
    let yaml = yaml.replacen("routes:\n", &format!("routes:\n  - service: \"{UNROUTED}\"\n    region: \"\"\n    targets: [dms]\n"), 1);
    std::fs::write(&app.config_path, yaml).unwrap();
    app.reloader.reload(&amtsbote::config::Config::load(&app.config_path).unwrap()).await.unwrap();
    assert_eq!(decided(&receiving.double, &waiting).await, SubmissionState::Accepted, "taken once a route is there");
    wait_for("both deliveries", Duration::from_secs(30), || app.back_office.received().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = reqwest::get(format!("{}/metrics", app.base)).await.unwrap().text().await.unwrap();
    assert_eq!(metric(&metrics, unrouted), Some(0.0), "{metrics}");
}

/// Several amtsbote may share a destination and a ledger: one without the
/// route must still send what another (with it) decided and recorded but
/// did not get to send.
#[tokio::test]
async fn an_unrouted_submission_decided_by_another_amtsbote_has_the_recorded_decision_sent() {
    let receiving = receiving("200ms").await;
    let app = spawn_app(Setup { targets: &[("dms", "dms-json/akte.yaml")], routes: &[(GEWERBE, "", &["dms"])], extra: &receiving.yaml, ..Setup::default() }).await;
    let waiting = receiving.double.submit(receiving.destination, Outgoing::json("99102013104000", form()));
    wait_for("the first look", Duration::from_secs(30), || receiving.double.fetches(waiting.submission_id) == 1).await;

    let ledger = rusqlite::Connection::open(app.config_path.with_file_name("store.sqlite")).unwrap();
    ledger.busy_timeout(Duration::from_secs(10)).unwrap();
    let problems = json!({ "problems": [{
        "type": "https://schema.fitko.de/fit-connect/events/problems/technical-error",
        "title": "Technischer Fehler", "detail": "decided elsewhere", "instance": "submission",
    }] });
    ledger
        .execute(
            "INSERT INTO fit_connect_decisions (fit_submission_id, case_id, destination_id, verdict, payload, decided_at)
             VALUES (?1, ?2, ?3, 'reject', ?4, '2026-12-04T12:00:00.000Z')",
            rusqlite::params![waiting.submission_id.to_string(), waiting.case_id.to_string(), receiving.destination.to_string(), problems.to_string()],
        )
        .unwrap();
    drop(ledger);
    let SubmissionState::Rejected(sent) = decided(&receiving.double, &waiting).await else { panic!("the recorded rejection is sent") };
    assert_eq!(sent[0]["detail"], "decided elsewhere");
    assert_eq!(receiving.double.fetches(waiting.submission_id), 1, "not fetched again for it");
}

#[tokio::test]
async fn keys_check_and_probe_from_the_command_line_and_no_secret_or_content_in_any_log() {
    use crate::helpers::{AppProcess, free_port, write_config};
    use amtsbote_sample_back_office::SampleBackOffice;
    // Asynchronously: the double and the back office answer on this
    // test's runtime.
    async fn run(args: &[&std::ffi::OsStr]) -> (bool, String) {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_amtsbote")).args(args).env("RUST_LOG", "warn").output().await.unwrap();
        (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    }

    // keys fit-connect: two pairs, private ones for amtsbote only, never overwritten.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (ok, text) = run(&["keys".as_ref(), "fit-connect".as_ref(), keys.as_os_str()]).await;
    assert!(ok, "{text}");
    for (file, alg, op) in [
        ("encryption.private.jwk.json", "RSA-OAEP-256", "unwrapKey"),
        ("encryption.public.jwk.json", "RSA-OAEP-256", "wrapKey"),
        ("signing.private.jwk.json", "PS512", "sign"),
        ("signing.public.jwk.json", "PS512", "verify"),
    ] {
        let jwk: Jwk = serde_json::from_slice(&std::fs::read(keys.join(file)).unwrap()).unwrap();
        assert_eq!((jwk.alg.as_deref(), jwk.key_ops.as_ref().map(|o| o[0].as_str())), (Some(alg), Some(op)), "{file}");
        assert_eq!(jwk.d.is_some(), file.contains("private"), "{file}");
        assert_eq!(jwk.bits().unwrap(), 4096);
        #[cfg(unix)]
        if file.contains("private") {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(keys.join(file)).unwrap().permissions().mode() & 0o777, 0o600, "{file}");
        }
    }
    let (ok, text) = run(&["keys".as_ref(), "fit-connect".as_ref(), keys.as_os_str()]).await;
    assert!(!ok && text.contains("exists already"), "{text}");

    // check: a key that is not a key is named, without its content.
    let receiving = receiving("200ms").await;
    let back_office = SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let not_a_key = dir.path().join("not-a-key.json");
    std::fs::write(&not_a_key, "{\"kty\":\"RSA\",\"n\":\"secret-looking-value\"}").unwrap();
    let bad_yaml = receiving.yaml.lines().map(|line| {
        if line.trim_start().starts_with("decryption_keys:") { format!("      decryption_keys: [{{ file: {} }}]", not_a_key.display()) } else { line.to_owned() }
    }).collect::<Vec<_>>().join("\n") + "\n";
    let setup = Setup { targets: &[("dms", "dms-json/akte.yaml")], routes: &[(GEWERBE, "", &["dms"])], extra: &bad_yaml, ..Setup::default() };
    let config = write_config(&setup, &back_office, dir.path());
    let (ok, text) = run(&["check".as_ref(), "--config".as_ref(), config.as_os_str()]).await;
    assert!(!ok && text.contains("fit_connect: destinations: stadt-test: decryption_keys[0]"), "{text}");
    assert!(!text.contains("secret-looking-value"), "{text}");

    // check --probe: logs in at the double.
    let setup = Setup { targets: &[("dms", "dms-json/akte.yaml")], routes: &[(GEWERBE, "", &["dms"])], extra: &receiving.yaml, ..Setup::default() };
    let config = write_config(&setup, &back_office, dir.path());
    let (ok, probe) = run(&["check".as_ref(), "--probe".as_ref(), "--config".as_ref(), config.as_os_str()]).await;
    assert!(ok && probe.contains("FIT-Connect destination stadt-test: reachable"), "{probe}");

    // A full run with every log on: no secret, no key, no content in the log.
    let log = dir.path().join("amtsbote.log");
    let port = free_port();
    let mut app = AppProcess::start_with(&config, port, &log, &[("RUST_LOG", "trace"), ("AMTSBOTE_LOG_FORMAT", "json")]).await;
    receiving.double.set_callback(receiving.destination, &format!("http://127.0.0.1:{port}/v1/fit-connect/callbacks/stadt-test"), CALLBACK_SECRET);
    let mut outgoing = Outgoing::json(GEWERBE, json!({ "antragsteller": "Erika Geheimnisträgerin" }))
        .attach("geheim.pdf", "application/pdf", b"%PDF-1.7 Inhalt-Vertraulich".to_vec());
    outgoing.reply_email = Some("erika@geheim.example".into());
    let submitted = receiving.double.submit(receiving.destination, outgoing);
    let url = format!("http://127.0.0.1:{port}/v1/fit-connect/callbacks/stadt-test");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert_eq!(receiving.double.notify_with(receiving.destination, &url, "not-the-secret", now).await, 401, "a forged callback is refused");
    assert_eq!(receiving.double.notify_with(receiving.destination, &url, CALLBACK_SECRET, now - 600).await, 401, "a stale one too");
    assert_eq!(receiving.double.notify(receiving.destination).await, 200);
    assert_eq!(decided(&receiving.double, &submitted).await, SubmissionState::Accepted);
    let rejected = receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, json!({ "antragsteller": "Erika Geheimnisträgerin" })).tampered(Tamper::HashMismatch));
    assert!(matches!(decided(&receiving.double, &rejected).await, SubmissionState::Rejected(_)));
    wait_for("the delivery", Duration::from_secs(30), || !back_office.received().is_empty()).await;
    app.terminate(Duration::from_secs(15)).await.expect("amtsbote stops on SIGTERM");
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("fit_connect_accepted") && logs.contains("fit_connect_rejected"), "the log is of a full run");
    assert_eq!(logs.matches("fit_connect_callback_refused").count(), 2, "refused callbacks are logged, with why");
    let [(encryption, _), (signing, _)] = &*KEYS;
    let secrets = [
        ("client secret", "s3cret-client"),
        ("callback secret", CALLBACK_SECRET),
        ("a forger's guess", "not-the-secret"),
        ("decryption key", encryption.d.as_deref().unwrap()),
        ("signing key", signing.p.as_deref().unwrap()),
        ("form data", "Geheimnisträgerin"),
        ("attachment", "Inhalt-Vertraulich"),
        ("reply channel", "erika@geheim.example"),
    ];
    for (what, secret) in secrets {
        for (place, text) in [("the log", &logs), ("amtsbote check --probe", &probe)] {
            assert!(!text.contains(secret), "the {what} appears in {place}");
        }
    }
}

#[tokio::test]
async fn with_metadata_schemas_provided_metadata_is_validated_against_its_version_and_an_unknown_version_is_unsupported() {
    let receiving = receiving("200ms").await;
    // Stand-ins for FITKO's files (which amtsbote does not ship): one
    // version that wants a reply channel, and another version.
    let schemas = tempfile::tempdir().unwrap();
    let stand_in = |version: &str, required: Value| {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": format!("https://schema.fitko.de/fit-connect/metadata/{version}/metadata.schema.json"),
            "type": "object",
            "required": required,
            "properties": { "contentStructure": { "type": "object", "required": ["attachments"] } }
        })
        .to_string()
    };
    std::fs::create_dir(schemas.path().join("2.0.0")).unwrap();
    std::fs::write(schemas.path().join("2.0.0/metadata.schema.json"), stand_in("2.0.0", json!(["$schema", "contentStructure", "replyChannel"]))).unwrap();
    std::fs::write(schemas.path().join("other.json"), stand_in("1.0.0", json!(["contentStructure"]))).unwrap();
    let yaml = receiving.yaml.replace("  poll_interval:", &format!("  metadata_schemas: {}\n  poll_interval:", schemas.path().display()));
    let _app = spawn_app(Setup { targets: &[("dms", "dms-json/akte.yaml")], routes: &[(GEWERBE, "", &["dms"])], extra: &yaml, ..Setup::default() }).await;

    let without_reply = receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, form()));
    let SubmissionState::Rejected(problems) = decided(&receiving.double, &without_reply).await else { panic!("must be rejected") };
    assert_eq!(problems[0]["type"], "https://schema.fitko.de/fit-connect/events/problems/schema-violation", "{problems:?}");
    assert_eq!(problems[0]["instance"], "metadata");
    assert!(problems[0]["detail"].as_str().unwrap().contains("replyChannel"), "{problems:?}");
    let mut with_reply = Outgoing::json(GEWERBE, form());
    with_reply.reply_email = Some("a@example.org".into());
    let with_reply = receiving.double.submit(receiving.destination, with_reply);
    assert_eq!(decided(&receiving.double, &with_reply).await, SubmissionState::Accepted);

    // Without 2.0.0 in the folder, 2.0.0 metadata is of a version this destination does not take.
    std::fs::remove_dir_all(schemas.path().join("2.0.0")).unwrap();
    let second = self::receiving("200ms").await;
    let yaml = second.yaml.replace("  poll_interval:", &format!("  metadata_schemas: {}\n  poll_interval:", schemas.path().display()));
    let _second_app = spawn_app(Setup { targets: &[("dms", "dms-json/akte.yaml")], routes: &[(GEWERBE, "", &["dms"])], extra: &yaml, ..Setup::default() }).await;
    let unknown = second.double.submit(second.destination, Outgoing::json(GEWERBE, form()));
    let SubmissionState::Rejected(problems) = decided(&second.double, &unknown).await else { panic!("must be rejected") };
    assert_eq!(problems[0]["type"], "https://schema.fitko.de/fit-connect/events/problems/unsupported-schema", "{problems:?}");
}

#[tokio::test]
async fn an_attachment_in_fragments_is_put_together_and_data_sent_as_an_attachment_is_the_data() {
    let receiving = receiving("200ms").await;
    let app = spawn_app(Setup { targets: &[("dms", "dms-json/akte.yaml")], routes: &[(GEWERBE, "", &["dms"])], extra: &receiving.yaml, ..Setup::default() }).await;
    let large = pdf("Bauplan", 200_000);
    // Both ways of sending data as an attachment: without `encryptedData`,
    // and with the empty-string placeholder FITKO specified.
    for (delivered, placeholder) in [false, true].into_iter().enumerate() {
        let mut outgoing = Outgoing::json(GEWERBE, form()).attach("bauplan.pdf", "application/pdf", large.clone());
        outgoing.attachments[0].fragments = 3;
        outgoing.data_as_attachment = true;
        outgoing.data_placeholder = placeholder;
        let submitted = receiving.double.submit(receiving.destination, outgoing);
        assert_eq!(decided(&receiving.double, &submitted).await, SubmissionState::Accepted, "placeholder: {placeholder}");
        wait_for("the delivery", Duration::from_secs(30), || app.back_office.received().len() > delivered).await;
        let case: Value = serde_json::from_slice(&app.back_office.received()[delivered].body).unwrap();
        assert_eq!(case["form"], form(), "the data came as an attachment of purpose data");
        let documents = case["documents"].as_array().unwrap();
        assert_eq!(documents.len(), 1, "the data is not also an attachment: {documents:?}");
        use base64::Engine as _;
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(documents[0]["contentBase64"].as_str().unwrap()).unwrap(), large);
    }
}

#[tokio::test]
async fn an_attachment_beyond_the_limits_is_rejected_as_a_technical_error_not_retried_for_ever() {
    let receiving = receiving("200ms").await;
    let _app = spawn_app(Setup {
        targets: &[("dms", "dms-json/akte.yaml")],
        routes: &[(GEWERBE, "", &["dms"])],
        http_settings: "  max_attachment_bytes: 20000\n",
        extra: &receiving.yaml,
        ..Setup::default()
    })
    .await;
    let submitted = receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, form()).attach("gross.pdf", "application/pdf", pdf("Gross", 100_000)));
    let SubmissionState::Rejected(problems) = decided(&receiving.double, &submitted).await else { panic!("must be rejected") };
    assert_eq!(problems[0]["type"], "https://schema.fitko.de/fit-connect/events/problems/technical-error", "{problems:?}");
    assert!(problems[0]["instance"].as_str().unwrap().starts_with("attachment:"), "{problems:?}");
}

#[tokio::test]
async fn admitted_before_a_crash_but_undecided_it_is_only_accepted_even_with_its_route_gone() {
    use crate::helpers::AppProcess;

    let receiving = receiving("300ms").await;
    let (back_office, dir, config) = process_setup(&receiving).await;
    let log = dir.path().join("amtsbote.log");
    let port = crate::helpers::free_port();
    let mut app = AppProcess::start(&config, port, &log).await;
    let submitted = receiving.double.submit(receiving.destination, Outgoing::json(GEWERBE, form()));
    assert_eq!(decided(&receiving.double, &submitted).await, SubmissionState::Accepted);
    wait_for("the delivery", Duration::from_secs(30), || !back_office.received().is_empty()).await;
    app.terminate(Duration::from_secs(15)).await.expect("amtsbote stops");

    // The state a crash between admission and decision leaves: admitted,
    // delivered, no decision in the ledger, none at FIT-Connect.
    let ledger = rusqlite::Connection::open(dir.path().join("store.sqlite")).unwrap();
    assert_eq!(ledger.execute("DELETE FROM fit_connect_decisions", []).unwrap(), 1);
    drop(ledger);
    receiving.double.undecide(submitted.submission_id);
    // And since then the route is gone: a new submission would wait.
    let yaml = std::fs::read_to_string(&config).unwrap().replace("region: \"05\"", "region: \"09\"");
    std::fs::write(&config, yaml).unwrap();

    let _app = AppProcess::start(&config, port, &log).await;
    assert_eq!(decided(&receiving.double, &submitted).await, SubmissionState::Accepted, "accepted, not rejected, not left waiting");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(back_office.received().len(), 1, "not queued again");
    let taken: Vec<_> = receiving.double.decisions().into_iter().filter(|d| d.status.is_success()).collect();
    assert_eq!(taken.len(), 2, "the first run's accept and, after the reset, one more: {:?}", receiving.double.decisions());
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(!logs.contains("fit_connect_no_route") && !logs.contains("fit_connect_rejecting"), "neither routed nor checked again: {logs}");
}
