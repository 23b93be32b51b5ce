//! The OpenAPI document is true: every documented operation is called on
//! the running server, and every answer has a documented status, content
//! type and a body that its schema accepts — with no undocumented fields.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{OPERATOR_TOKEN, SENDER_KEY, Setup, TestApp, gewerbeanmeldung, key_hash, spawn_app};

/// Objects that list their properties accept no others, for the test: an
/// answer with a field the document does not name fails.
fn strict(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(strict);
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

/// The document's path template that `path` matches.
fn template<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    let segments: Vec<&str> = path.split('?').next().unwrap().split('/').collect();
    doc["paths"].as_object().unwrap().keys().map(String::as_str).find(|template| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == segments.len() && parts.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s)
    })
}

struct Checker {
    doc: Value,
    exercised: BTreeSet<(String, String)>,
}

impl Checker {
    /// Sends the request and holds its answer to the document.
    async fn check(&mut self, app: &TestApp, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let request = request.build().unwrap();
        let (method, path) = (request.method().as_str().to_lowercase(), request.url().path().to_owned());
        let template = template(&self.doc, &path).unwrap_or_else(|| panic!("{path} is not documented")).to_owned();
        let operation = self.doc["paths"][&template][&method].clone();
        assert!(operation.is_object(), "{method} {template} is not documented");
        self.exercised.insert((method.clone(), template.clone()));

        let response = app.client.execute(request).await.unwrap();
        let status = response.status();
        let documented = &operation["responses"][status.as_str()];
        assert!(documented.is_object(), "{method} {path} answered {status}, which is not documented");
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let essence = content_type.split(';').next().unwrap().trim().to_owned();
        let text = response.text().await.unwrap();
        let Some(media) = documented["content"].get(&essence) else {
            panic!("{method} {path} {status}: content type {content_type:?} is not documented");
        };
        if !essence.ends_with("json") {
            return (status, Value::String(text));
        }
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        let mut schema = media["schema"].clone();
        schema["components"] = self.doc["components"].clone();
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema".into();
        let validator = jsonschema::options().should_validate_formats(true).build(&schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(&body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{method} {path} {status} does not match the document:\n{}\n{body}", errors.join("\n"));
        (status, body)
    }
}

#[tokio::test]
async fn the_running_server_answers_as_its_openapi_document_says() {
    // Besides test-sender and test-operator: a sender for Köln only and a
    // viewer, for the 403s.
    let access = format!(
        "senders:\n  - name: test-sender\n    api_keys_sha256: [{}]\n    regions: [\"\"]\n  - name: koeln-only\n    api_keys_sha256: [{}]\n    regions: [\"05315\"]\noperators:\n  - name: test-operator\n    token_sha256: {}\n    role: operator\n  - name: test-viewer\n    token_sha256: {}\n    role: viewer\n",
        key_hash(SENDER_KEY),
        key_hash("koeln-only-key"),
        key_hash(OPERATOR_TOKEN),
        key_hash("viewer-token")
    );
    let receiving = crate::fit_connect::receiving("1h").await;
    let app = spawn_app(Setup { access: Some(&access), extra: &receiving.yaml, ..Setup::default() }).await;
    let served = app.client.get(format!("{}/v1/openapi.json", app.base)).send().await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let mut doc: Value = served.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    strict(&mut doc["components"]);
    strict(&mut doc["paths"]);
    let mut checker = Checker { doc, exercised: BTreeSet::new() };
    let base = &app.base;
    let client = &app.client;
    let json_post = |path: &str, body: String| client.post(format!("{base}{path}")).header("content-type", "application/json").body(body);
    let operator = |method: Method, path: &str| client.request(method, format!("{base}{path}")).bearer_auth(OPERATOR_TOKEN);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let callback = |destination: &str, secret: &str, at: i64| {
        let body = r#"{"type":"https://schema.fitko.de/fit-connect/submission-api/callbacks/new-submissions","submissions":[]}"#;
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA512, secret.as_bytes());
        let tag = aws_lc_rs::hmac::sign(&key, format!("{at}.{body}").as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        reqwest::Client::new()
            .post(format!("{base}/v1/fit-connect/callbacks/{destination}"))
            .header("content-type", "application/json")
            .header("callback-timestamp", at.to_string())
            .header("callback-authentication", hex)
            .body(body)
    };

    // Intake: accepted, then each refusal.
    let mut submission = gewerbeanmeldung("053150000000");
    submission["reference"] = "OAA-OPENAPI".into();
    let (status, accepted) = checker.check(&app, json_post("/v1/submissions", submission.to_string())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let delivered = accepted["id"].as_str().unwrap().to_owned();
    app.status_when(&delivered, |s| s["status"] == "delivered").await;
    let refusals = [
        (json_post("/v1/submissions", "{".into()), StatusCode::BAD_REQUEST),
        (client.post(format!("{base}/v1/submissions")).header("content-type", "text/plain").body("x"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (json_post("/v1/submissions", gewerbeanmeldung("053150000000").to_string().replace("99050012104000", "99000000000000")), StatusCode::UNPROCESSABLE_ENTITY),
        (json_post("/v1/submissions", "x".repeat(2 << 20)), StatusCode::PAYLOAD_TOO_LARGE),
        (json_post("/v1/submissions", submission.to_string()).header("authorization", "Bearer nope"), StatusCode::UNAUTHORIZED),
        (
            json_post("/v1/submissions", gewerbeanmeldung("091620000000").to_string()).bearer_auth("koeln-only-key"),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (request, expected) in refusals {
        assert_eq!(checker.check(&app, request).await.0, expected);
    }

    app.back_office.answer_with(StatusCode::UNPROCESSABLE_ENTITY);
    let (_, parked) = checker.check(&app, json_post("/v1/submissions", gewerbeanmeldung("053150000000").to_string())).await;
    let parked = parked["id"].as_str().unwrap().to_owned();
    app.status_when(&parked, |s| s["status"] == "parked").await;

    // The ledger.
    let calls = [
        (client.get(format!("{base}/v1/submissions/{delivered}")), StatusCode::OK),
        (client.get(format!("{base}/v1/submissions/{parked}")), StatusCode::OK),
        (client.get(format!("{base}/v1/submissions/{}", uuid::Uuid::new_v4())), StatusCode::NOT_FOUND),
        (client.get(format!("{base}/v1/submissions/{delivered}")).bearer_auth("nope"), StatusCode::UNAUTHORIZED),
        (client.get(format!("{base}/v1/submissions/{delivered}")).bearer_auth("koeln-only-key"), StatusCode::NOT_FOUND),
        (operator(Method::GET, &format!("/v1/submissions/{delivered}")), StatusCode::OK),
        (operator(Method::GET, "/v1/submissions?reference=OAA-OPENAPI"), StatusCode::OK),
        (operator(Method::GET, "/v1/submissions?limit=1"), StatusCode::OK),
        (operator(Method::GET, "/v1/submissions?state=lost"), StatusCode::BAD_REQUEST),
        (client.get(format!("{base}/v1/submissions")), StatusCode::UNAUTHORIZED),
        // Parked deliveries and the audit trail.
        (operator(Method::GET, "/v1/parked"), StatusCode::OK),
        (operator(Method::GET, "/v1/parked?target=nowhere"), StatusCode::UNPROCESSABLE_ENTITY),
        (operator(Method::GET, &format!("/v1/parked/fv/{parked}")), StatusCode::OK),
        (operator(Method::GET, &format!("/v1/parked/fv/{delivered}")), StatusCode::NOT_FOUND),
        (operator(Method::POST, "/v1/parked/replay").json(&json!({})), StatusCode::BAD_REQUEST),
        (operator(Method::POST, "/v1/parked/discard").json(&json!({ "submission": parked, "comment": "test" })), StatusCode::OK),
        (operator(Method::POST, "/v1/parked/replay").json(&json!({ "submission": parked })), StatusCode::OK),
        (operator(Method::GET, "/v1/audit?limit=5"), StatusCode::OK),
        (client.post(format!("{base}/v1/parked/replay")).bearer_auth("viewer-token").json(&json!({ "all": true })), StatusCode::FORBIDDEN),
        (client.get(format!("{base}/v1/audit")), StatusCode::UNAUTHORIZED),
        // FIT-Connect's callbacks.
        (callback("stadt-test", crate::fit_connect::CALLBACK_SECRET, now), StatusCode::OK),
        (callback("stadt-test", "a guess", now), StatusCode::UNAUTHORIZED),
        (callback("stadt-test", crate::fit_connect::CALLBACK_SECRET, now - 3600), StatusCode::UNAUTHORIZED),
        (callback("elsewhere", crate::fit_connect::CALLBACK_SECRET, now), StatusCode::NOT_FOUND),
        // Operations.
        (client.get(format!("{base}/healthz")), StatusCode::OK),
        (client.get(format!("{base}/readyz")), StatusCode::OK),
        (client.get(format!("{base}/metrics")), StatusCode::OK),
        (client.get(format!("{base}/v1/openapi.json")), StatusCode::OK),
    ];
    for (request, expected) in calls {
        let described = format!("{request:?}");
        assert_eq!(checker.check(&app, request).await.0, expected, "{described}");
    }

    let documented: BTreeSet<(String, String)> = checker.doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, operations)| operations.as_object().unwrap().keys().map(move |method| (method.clone(), path.clone())))
        .collect();
    let untested: Vec<_> = documented.difference(&checker.exercised).collect();
    assert!(untested.is_empty(), "documented but not called: {untested:?}");
}

/// schemathesis (from `target/test-tools/venv`, see
/// `scripts/install-test-deps`) drives every operation of the served
/// document with generated valid and invalid input, once as a sender and
/// once as an operator: no answer may be a 5xx, or have a status, content
/// type or body the document does not describe; the server stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_or_undocumented_answer_on_any_operation() {
    let schemathesis = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/venv/bin/schemathesis");
    assert!(schemathesis.exists(), "schemathesis is not installed: run scripts/install-test-deps");
    let app = spawn_app(Setup::default()).await;
    let reports = tempfile::tempdir().unwrap();
    for (who, credential) in [("sender", SENDER_KEY), ("operator", OPERATOR_TOKEN)] {
        let output = tokio::process::Command::new(&schemathesis)
            .arg("run")
            .arg(format!("{}/v1/openapi.json", app.base))
            .args(["--url", &app.base])
            .args(["--header", &format!("Authorization: Bearer {credential}")])
            .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance", "--mode", "all", "--max-examples", "40", "--seed", "1"])
            // One worker: with two, a run once died inside hypothesis with
            // CPython 3.11's "AST constructor recursion depth mismatch"
            // (its shared AST bookkeeping, gh-106905), a tool error.
            .args(["--phases", "examples,coverage,fuzzing", "--workers", "1", "--request-timeout", "20"])
            .args(["--generation-database", "none", "--no-color", "--warnings", "off"])
            .arg("--report-dir")
            .arg(reports.path())
            .env("SCHEMATHESIS_HOOKS", "")
            .current_dir(reports.path())
            .output()
            .await
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "schemathesis as {who} found a problem:\n{text}");
        assert!(text.contains("passed"), "schemathesis as {who} tested nothing:\n{text}");
    }
    let health = reqwest::get(format!("{}/healthz", app.base)).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}
