//! Mappings as integrators use them: the sandbox's limits, the shipped
//! xdomea package against the shipped official XSDs, `amtsbote mappings test` and
//! `check`, form-data schemas and XML form data at intake, invalid output
//! parked, and reloads that leave deliveries in flight alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use amtsbote::mapping::fixtures;
use amtsbote::mapping::sandbox::{EvalError, Sandbox, SandboxSettings};
use amtsbote::mapping::schema::{OutputSchema, SchemaSource};
use amtsbote::mapping::{Mapping, Rendition};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use amtsbote_sample_back_office::SampleBackOffice;

use crate::helpers::{AppProcess, Setup, as_sender, free_port, gewerbeanmeldung, spawn_app, write_config};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")
}

fn sandbox(time_limit: Duration, memory_limit_mib: u64) -> std::sync::Arc<Sandbox> {
    Sandbox::new(SandboxSettings {
        processes: Some(1),
        requests_per_process: 4,
        time_limit,
        memory_limit_mib,
        output_limit_mib: 1,
        program: Some(env!("CARGO_BIN_EXE_amtsbote").into()),
    })
    .unwrap()
}

#[tokio::test]
async fn the_xdomea_package_validates_against_the_shipped_xsds() {
    let mapping = Mapping::load(&shipped(), Path::new("xdomea-3.0.0/geschaeftsgang-0201.yaml")).unwrap();
    let input: Value = serde_json::from_slice(
        &std::fs::read(shipped().join("xdomea-3.0.0/fixtures/geschaeftsgang-0201.input.json")).unwrap(),
    )
    .unwrap();
    let input = fixtures::prepare_input(input).unwrap();
    let payload = sandbox(Duration::from_secs(10), 1024)
        .render(&mapping, &serde_json::to_vec(&input).unwrap(), &[], 0)
        .await
        .unwrap()
        .into_payload(|_| None)
        .unwrap();
    let files = fixtures::files_of(payload).unwrap();
    let (name, xml) = files.iter().find(|(n, _)| n.ends_with("_Geschaeftsgang.Geschaeftsgang.0201.xml")).expect("the message");
    // The mapping validated it already; once more here, so that a mapping
    // that lost its `schema` line cannot pass unnoticed.
    assert!(mapping.source().schema.is_some(), "the shipped xdomea mapping names its schema");
    let xsd = shipped().join("xdomea-3.0.0/schema/xdomea/xdomea.xsd");
    let schema = OutputSchema::compile(&SchemaSource::load(&xsd).unwrap()).unwrap();
    schema.validate(xml).unwrap_or_else(|e| panic!("{name}: {e}"));
    // Every primary document the message names is in the zip.
    let text = String::from_utf8_lossy(xml);
    for (file, _) in files.iter().filter(|(n, _)| n != name) {
        assert!(text.contains(&format!("<xdomea:Dateiname>{file}</xdomea:Dateiname>")), "{file} not named in the message");
    }
    assert_eq!(files.len(), 5, "message, form and three uploads");
}

fn hostile(expression: &str) -> Mapping {
    Mapping::parse(&format!("output: json\ndocument:\n  x: '{expression}'\n"), "hostile.yaml").unwrap()
}

#[tokio::test]
async fn hostile_mappings_are_stopped_and_the_sandbox_keeps_serving() {
    // Each case meets one limit only: the stack and memory cases crash in
    // milliseconds, the loop never ends.
    let sandbox = sandbox(Duration::from_secs(5), 256);
    let fine = hostile(".a");
    let input = br#"{"a": 1}"#;
    let cases = [
        // Runs forever: stopped at the time limit.
        ("last(range(1e15))", "time limit"),
        // Allocates far past the memory limit (in one piece, so that a busy
        // machine does not reach the time limit first).
        ("\"x\" * 1000000000 | length", "crashed"),
        // Nests a value a million deep: it overflows the evaluation's fixed
        // stack a few thousand levels in, long before the time limit.
        ("reduce range(1000000) as $i (null; [.]) | tojson | length", "crashed"),
        // Output larger than the 1 MiB limit.
        ("\"x\" * 2000000", "larger than the limit"),
    ];
    for (expression, expected) in cases {
        let started = std::time::Instant::now();
        let err = sandbox.render(&hostile(expression), input, &[], 0).await.unwrap_err();
        let EvalError::Mapping(err) = err else { panic!("{expression}: {err}") };
        assert!(err.message.contains(expected), "{expression}: {err}");
        assert!(started.elapsed() < Duration::from_secs(20), "{expression} took {:?}", started.elapsed());
        // The next evaluation gets a working process.
        let Rendition::Document { body, .. } = sandbox.render(&fine, input, &[], 0).await.unwrap() else { panic!() };
        assert_eq!(body.as_ref(), b"{\n  \"x\": 1\n}\n");
    }
    // No environment reaches a mapping.
    assert!(Mapping::parse("output: json\ndocument:\n  x: $ENV.HOME\n", "m.yaml").is_err());
}

/// Requests queued in one process behind one that crashes it or outruns
/// the time limit were never started there: they are sent again and
/// answered, and only the culprit fails; the request answered before it
/// keeps its answer.
#[tokio::test]
async fn requests_queued_behind_a_crash_or_time_out_are_answered_all_the_same() {
    let sandbox = sandbox(Duration::from_secs(2), 256);
    let fine = hostile(".a");
    let input = br#"{"a": 1}"#;
    for (expression, expected) in [("last(range(1e15))", "time limit"), ("\"x\" * 1000000000 | length", "crashed")] {
        let culprit = hostile(expression);
        // Polled in this order, so queued in this order in the one process.
        let (before, bad, after_1, after_2) = tokio::join!(
            sandbox.render(&fine, input, &[], 0),
            sandbox.render(&culprit, input, &[], 0),
            sandbox.render(&fine, input, &[], 0),
            sandbox.render(&fine, input, &[], 0),
        );
        let Err(EvalError::Mapping(err)) = bad else { panic!("{expression}: {:?}", bad.map(|_| ())) };
        assert!(err.message.contains(expected), "{expression}: {err}");
        for answer in [before, after_1, after_2] {
            let Rendition::Document { body, .. } = answer.unwrap_or_else(|e| panic!("{expression}: {e}")) else { panic!() };
            assert_eq!(body.as_ref(), b"{\n  \"x\": 1\n}\n");
        }
    }
}

fn amtsbote(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_amtsbote")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

#[test]
fn mappings_test_passes_on_the_shipped_mappings_and_fails_with_a_diff() {
    let shipped = shipped();
    let out = amtsbote(&["mappings", "test", shipped.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(" 0 failed,") && text.contains(" 0 mappings without fixtures"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("fixtures")).unwrap();
    std::fs::write(dir.path().join("m.yaml"), "output: xml\nroot: r\ndocument:\n  name: .data.name\n  city: .data.city\n").unwrap();
    std::fs::write(dir.path().join("fixtures/m.input.json"), r#"{"id":"i","data":{"name":"Anna","city":"Köln"}}"#).unwrap();
    std::fs::write(
        dir.path().join("fixtures/m.expected.xml"),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<r>\n  <name>Anna</name>\n  <city>Bonn</city>\n</r>\n",
    )
    .unwrap();
    let out = amtsbote(&["mappings", "test", dir.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("-  <city>Bonn</city>") && text.contains("+  <city>Köln</city>"), "{text}");
    assert!(text.contains("1 failed"), "{text}");
}

#[test]
fn check_names_a_missing_code_list_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mappings = dir.path().join("mappings");
    std::fs::create_dir(&mappings).unwrap();
    std::fs::write(mappings.join("a.yaml"), "output: json\ndocument:\n  x: '.x | lookup(\"rechtsform\")'\n").unwrap();
    std::fs::write(mappings.join("b.yaml"), "output: json\nschema: gone.json\ndocument:\n  x: .x\n").unwrap();
    std::fs::write(
        dir.path().join("amtsbote.yaml"),
        "targets:\n  t:\n    mapping: a.yaml\n    connector:\n      http:\n        url: http://127.0.0.1:9/\nroutes:\n  - service: \"99050012104000\"\n    region: \"\"\n    targets: [t]\n    schema: nowhere.json\n",
    )
    .unwrap();
    let out = amtsbote(&["check", "--config", dir.path().join("amtsbote.yaml").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("code list \"rechtsform\""), "{text}");
    assert!(text.contains("gone.json"), "{text}");
    assert!(text.contains("nowhere.json"), "{text}");
}

#[tokio::test]
async fn form_data_failing_the_route_schema_gets_422_naming_the_fields_and_nothing_is_queued() {
    let schema = shipped().join("hundesteuer/antrag.schema.json");
    let route_settings = format!("    schema: {}\n", schema.display());
    let app = spawn_app(Setup {
        targets: &[("steuer", "hundesteuer/steuer-csv.yaml")],
        routes: &[("99102013104000", "", &["steuer"])],
        route_settings: &route_settings,
        ..Setup::default()
    })
    .await;
    let good: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/submissions/3-hundesteuer-koeln.json")).unwrap())
            .unwrap();
    let mut bad = good.clone();
    bad["data"]["halter"]["anschrift"]["plz"] = json!("5066");
    bad["data"]["hunde"][0]["gefaehrlich"] = json!("nein");
    bad["data"]["halter"].as_object_mut().unwrap().remove("vorname");
    let response = app.submit(bad.to_string()).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    let pointers: Vec<&str> = problem["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert!(pointers.contains(&"#/data/halter/anschrift/plz"), "{problem}");
    assert!(pointers.contains(&"#/data/hunde/0/gefaehrlich"), "{problem}");
    assert!(pointers.contains(&"#/data/halter"), "{problem}");
    assert!(!problem.to_string().contains("5066"), "no values in the problem: {problem}");

    let response = app.submit(good.to_string()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.settled_status(&id).await["status"], "delivered");
    assert_eq!(app.back_office.received().len(), 1, "only the valid submission was delivered");
}

#[tokio::test]
async fn xml_form_data_reaches_the_mapping_as_the_documented_tree() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tree.yaml"),
        "output: json\ndocument:\n  tree: .data\n  hunde: '[.data.antrag.hund | items | .name]'\n  raw: '.dataXml | length > 0'\n",
    )
    .unwrap();
    let app = spawn_app(Setup {
        targets: &[("t", "tree.yaml")],
        routes: &[("99102013104000", "", &["t"])],
        mappings: Some(dir.path()),
        ..Setup::default()
    })
    .await;
    let xml = r#"<?xml version="1.0"?><f:antrag xmlns:f="urn:form" version="2"><f:halter art="privat">Erika &amp; Max</f:halter><f:hund><f:name>Bello</f:name></f:hund><f:hund><f:name>Rex</f:name><f:leer/></f:hund></f:antrag>"#;
    let body = json!({"service": "99102013104000", "region": "053150000000", "dataXml": xml});
    let response = app.submit(body.to_string()).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.settled_status(&id).await["status"], "delivered");
    let delivered: Value = serde_json::from_slice(&app.back_office.received()[0].body).unwrap();
    assert_eq!(
        delivered,
        json!({
            "tree": {"antrag": {"@version": "2", "halter": {"@art": "privat", "#text": "Erika & Max"},
                "hund": [{"name": "Bello"}, {"name": "Rex", "leer": ""}]}},
            "hunde": ["Bello", "Rex"],
            "raw": true
        })
    );
    // A DOCTYPE (and with it any entity trick) is refused at intake.
    let evil = json!({"service": "99102013104000", "region": "053150000000",
        "dataXml": "<!DOCTYPE a [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><a>&x;</a>"});
    let response = app.submit(evil.to_string()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "#/dataXml", "{problem}");
}

#[tokio::test]
async fn output_failing_its_schema_is_parked_as_a_mapping_error_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.json"), r#"{"type":"object","required":["plz"],"properties":{"plz":{"pattern":"^[0-9]{5}$"}}}"#).unwrap();
    std::fs::write(dir.path().join("m.yaml"), "output: json\nschema: s.json\ndocument:\n  plz: .data.betriebsstaette.plz\n").unwrap();
    let app = spawn_app(Setup { targets: &[("fv", "m.yaml")], mappings: Some(dir.path()), ..Setup::default() }).await;
    let mut submission = gewerbeanmeldung("053150000000");
    submission["data"]["betriebsstaette"]["plz"] = json!("0304");
    let response = app.submit(submission.to_string()).await;
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let status = app.status_when(&id, |s| s["status"] == "parked").await;
    assert_eq!(status["status"], "parked", "{status}");
    let parked: Value = app.operator(Method::GET, &format!("/v1/parked/fv/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(parked["reason"], "mapping-error", "{parked}");
    assert!(parked["lastError"].as_str().unwrap().contains("does not match its schema"), "{parked}");
    assert!(!parked.to_string().contains("0304"), "no form data in the reason: {parked}");
    assert!(app.back_office.received().is_empty());
}

#[tokio::test]
async fn a_reload_applies_a_new_mapping_to_new_submissions_only_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("m.yaml");
    std::fs::write(&mapping, "output: json\ndocument:\n  version: 1\n").unwrap();
    let retry = "    retry:\n      first_delay: 2s\n      max_age: 1m\n      jitter: false\n";
    let app = spawn_app(Setup { targets: &[("fv", "m.yaml")], mappings: Some(dir.path()), target_settings: retry, ..Setup::default() }).await;
    app.back_office.script(&[StatusCode::SERVICE_UNAVAILABLE]);

    // In flight: its first attempt (mapping version 1) fails.
    let response = app.submit(gewerbeanmeldung("053150000000").to_string()).await;
    let in_flight = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let status = app.status_when(&in_flight, |s| s["targets"][0]["state"] == "retrying").await;
    let first_version = status["targets"][0]["mappingVersion"].as_str().unwrap().to_owned();

    // The mapping changes and the config is reloaded before the retry.
    std::fs::write(&mapping, "output: json\ndocument:\n  version: 2\n").unwrap();
    let config = amtsbote::config::Config::load(&app.config_path).unwrap();
    app.reloader.reload(&config).await.unwrap();

    // A broken mapping is refused; version 2 stays in use.
    std::fs::write(&mapping, "output: json\ndocument:\n  version: '.x |'\n").unwrap();
    let problems = app.reloader.reload(&amtsbote::config::Config::load(&app.config_path).unwrap()).await.unwrap_err();
    assert!(problems.iter().any(|p| p.contains("m.yaml") && p.contains("line 3")), "{problems:?}");

    let response = app.submit(gewerbeanmeldung("053150000000").to_string()).await;
    let fresh = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let fresh_status = app.settled_status(&fresh).await;
    let in_flight_status = app.settled_status(&in_flight).await;
    assert_eq!(in_flight_status["status"], "delivered", "{in_flight_status}");

    // What the back office accepted for each submission (it records only
    // successful requests).
    let versions_of = |id: &str| -> Vec<i64> {
        let key = amtsbote::domain::delivery_id(id.parse().unwrap(), &amtsbote::domain::TargetName::parse("fv").unwrap()).to_string();
        app.back_office
            .received()
            .iter()
            .filter(|r| r.idempotency_key.as_deref() == Some(key.as_str()))
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["version"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(versions_of(&in_flight), [1], "the delivery in flight keeps the mapping it started with");
    assert_eq!(versions_of(&fresh), [2], "a new submission gets the new mapping");
    assert_eq!(in_flight_status["targets"][0]["mappingVersion"], first_version.as_str());
    assert_ne!(fresh_status["targets"][0]["mappingVersion"], first_version.as_str());
}

#[tokio::test]
async fn sighup_reloads_the_running_binary_and_a_broken_config_is_refused() {
    let back_office = SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("m.yaml");
    std::fs::write(&mapping, "output: json\ndocument:\n  version: 1\n").unwrap();
    let setup = Setup { targets: &[("fv", "m.yaml")], mappings: Some(dir.path()), ..Setup::default() };
    let config = write_config(&setup, &back_office, dir.path());
    let log = dir.path().join("amtsbote.log");
    let app = AppProcess::start(&config, free_port(), &log).await;
    let client = as_sender(reqwest::Client::builder()).build().unwrap();
    let submit = || async {
        let response = client
            .post(format!("{}/v1/submissions", app.base))
            .header("content-type", "application/json")
            .body(gewerbeanmeldung("053150000000").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    };
    let office = &back_office;
    let last_version = |count: usize| async move {
        let received = office.wait_for(count, Duration::from_secs(20)).await;
        assert_eq!(received.len(), count);
        serde_json::from_slice::<Value>(&received[count - 1].body).unwrap()["version"].as_i64().unwrap()
    };
    submit().await;
    assert_eq!(last_version(1).await, 1);

    std::fs::write(&mapping, "output: json\ndocument:\n  version: 2\n").unwrap();
    app.hang_up();
    // The reload is asynchronous; the first submission after it that
    // arrives with version 2 shows it applied.
    let mut seen = 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        submit().await;
        seen += 1;
        if last_version(seen).await == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    std::fs::write(&mapping, "output: json\ndocument:\n  version: '.x |'\n").unwrap();
    app.hang_up();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).unwrap().contains("reload_refused") {
        assert!(tokio::time::Instant::now() < deadline, "the broken config was not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    submit().await;
    assert_eq!(last_version(seen + 1).await, 2, "the running configuration stays");
}

/// A 2 MiB transparent huge page is resident whole once a byte of it is
/// touched; mimalloc asks for them, amtsbote turns them off for itself and
/// the sandboxes it starts.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_sandbox_process_runs_without_transparent_huge_pages() {
    let mut sandbox = tokio::process::Command::new(env!("CARGO_BIN_EXE_amtsbote"))
        .args(["mapping-sandbox", "--memory-limit-mib", "256", "--output-limit-mib", "1"])
        // As `Sandbox` starts it: within its address-space limit.
        .env("MIMALLOC_ARENA_RESERVE", "16MiB")
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", sandbox.id().unwrap());
    let field = |status: &str, name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
    // Until the process has come as far as its `main`, they are enabled.
    let started = std::time::Instant::now();
    let mut status = std::fs::read_to_string(&status_file).unwrap();
    while field(&status, "THP_enabled:").as_deref() == Some("1") && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = std::fs::read_to_string(&status_file).unwrap();
    }
    drop(sandbox.stdin.take());
    sandbox.wait().await.unwrap();
    let state = field(&status, "State:").unwrap();
    assert!(state.starts_with('S') || state.starts_with('R'), "the sandbox waits for requests: {state}");
    // Kernels without the field are not asked.
    let enabled = field(&status, "THP_enabled:");
    assert!(enabled.as_deref().is_none_or(|v| v == "0"), "THP_enabled: {enabled:?}");
}
