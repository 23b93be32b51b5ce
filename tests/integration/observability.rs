//! What operators see: the ledger's timeline and search, metrics, health,
//! and logs — and that none of it holds form data.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{
    AppProcess, FAST_RETRY, Setup, as_sender, free_port, gewerbeanmeldung, metric, spawn_app, write_config,
};

async fn accepted_id(response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

fn events(status: &Value) -> Vec<String> {
    status["timeline"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn the_timeline_tells_where_a_submission_is_and_search_finds_it() {
    let app = spawn_app(Setup { target_settings: FAST_RETRY, ..Setup::default() }).await;
    app.back_office.script(&[StatusCode::SERVICE_UNAVAILABLE]);
    let mut submission = gewerbeanmeldung("053150000000");
    let reference = format!("OAA-{}", uuid::Uuid::new_v4().simple());
    submission["reference"] = reference.clone().into();
    let id = accepted_id(app.submit(submission.to_string()).await).await;
    let status = app.status_when(&id, |s| s["status"] == "delivered").await;

    assert_eq!(
        events(&status),
        ["received", "routed", "accepted", "mapped", "attempt-failed", "retry-scheduled", "mapped", "delivered"],
        "{status}"
    );
    let timeline = status["timeline"].as_array().unwrap();
    assert_eq!(timeline[0]["size"].as_u64(), Some(submission.to_string().len() as u64));
    assert_eq!(timeline[0]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(timeline[1]["detail"], "fv");
    assert_eq!(timeline[4]["detail"], "HTTP 503");
    assert_eq!(timeline[7]["attempt"], 2);
    assert!(timeline[6]["mappingVersion"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(timeline[6]["sha256"].as_str().map(str::len), Some(64), "the rendered document's hash");
    assert!(timeline[7]["durationMs"].is_u64());

    // Search: by reference (operators only), by state, by region prefix.
    let search = |query: String| app.operator(Method::GET, &format!("/v1/submissions?{query}")).send();
    let found: Value = search(format!("reference={reference}")).await.unwrap().json().await.unwrap();
    assert_eq!(found["items"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["items"][0]["id"], id.as_str());
    assert_eq!(found["items"][0]["targets"][0]["state"], "delivered");
    let by_region: Value = search(format!("reference={reference}&region=05315&state=delivered")).await.unwrap().json().await.unwrap();
    assert_eq!(by_region["items"].as_array().unwrap().len(), 1, "{by_region}");
    let elsewhere: Value = search(format!("reference={reference}&region=09")).await.unwrap().json().await.unwrap();
    assert_eq!(elsewhere["items"].as_array().unwrap().len(), 0, "{elsewhere}");

    let anonymous = app.client.get(format!("{}/v1/submissions?reference={reference}", app.base)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let bad = search("state=lost".into()).await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "#/state", "{problem}");
}

#[tokio::test]
async fn search_pages_through_every_submission_once() {
    let app = spawn_app(Setup::default()).await;
    let reference = format!("OAA-{}", uuid::Uuid::new_v4().simple());
    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut submission = gewerbeanmeldung("053150000000");
        submission["reference"] = reference.clone().into();
        ids.push(accepted_id(app.submit(submission.to_string()).await).await);
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = app
            .operator(Method::GET, &format!("/v1/submissions?reference={reference}&limit=2&cursor={cursor}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(page["items"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");
}

#[tokio::test]
async fn metrics_count_deliveries_and_parked_per_target_without_ids() {
    let app = spawn_app(Setup::default()).await;
    let delivered = accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await;
    app.status_when(&delivered, |s| s["status"] == "delivered").await;
    app.back_office.answer_with(StatusCode::UNPROCESSABLE_ENTITY);
    let parked = accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await;
    app.status_when(&parked, |s| s["status"] == "parked").await;
    let refused = app.submit("{}").await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);

    let response = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = response.text().await.unwrap();
    let value = |series: &str| metric(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
    assert_eq!(value("amtsbote_submissions_received_total{service=\"99050012104000\"}"), 2.0);
    assert_eq!(value("amtsbote_submissions_refused_total{problem=\"invalid-submission\"}"), 1.0);
    assert_eq!(value("amtsbote_delivery_attempts_total{target=\"fv\",outcome=\"delivered\"}"), 1.0);
    assert_eq!(value("amtsbote_delivery_attempts_total{target=\"fv\",outcome=\"permanent\"}"), 1.0);
    assert_eq!(value("amtsbote_parked_total{target=\"fv\",reason=\"target-rejected\"}"), 1.0);
    assert_eq!(value("amtsbote_parked_deliveries{target=\"fv\"}"), 1.0);
    assert_eq!(value("amtsbote_queue_depth{target=\"fv\"}"), 0.0);
    assert_eq!(value("amtsbote_delivery_latency_seconds_count{target=\"fv\"}"), 1.0);
    assert_eq!(value("amtsbote_delivery_attempt_duration_seconds_count{target=\"fv\"}"), 2.0);
    // Both accepted submissions waited for each step; the refused one
    // never reached the ledger. No attachment was large enough to keep.
    for step in ["ledger_record", "broker_confirm", "ledger_confirm"] {
        assert_eq!(value(&format!("amtsbote_intake_step_duration_seconds_count{{step=\"{step}\"}}")), 2.0, "{step}");
    }
    assert_eq!(value("amtsbote_intake_step_duration_seconds_count{step=\"attachments\"}"), 0.0);
    assert_eq!(value("amtsbote_mapping_duration_seconds_count{target=\"fv\"}"), 2.0);
    assert!(value("amtsbote_oldest_undelivered_age_seconds{target=\"fv\"}") >= 0.0);
    assert_eq!(value("amtsbote_broker_connected"), 1.0);
    assert!(text.contains("amtsbote_build_info{version=\""), "{text}");
    for id in [&delivered, &parked] {
        assert!(!text.contains(id.as_str()), "no submission ids in metrics");
    }
}

#[tokio::test]
async fn healthz_is_alive_and_readyz_checks_broker_store_and_intake() {
    let mut app = spawn_app(Setup::default()).await;
    let alive = app.client.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(alive.status(), StatusCode::OK);
    let ready = app.client.get(format!("{}/readyz", app.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"], serde_json::json!({ "broker": "ok", "store": "ok", "intake": "ok" }), "{body}");

    // A delivery in flight keeps the server up while it drains.
    app.back_office.slow_down("fv", Duration::from_secs(2));
    accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await;
    assert_eq!(app.back_office.wait_for_arrivals(1, Duration::from_secs(15)).await, 1);
    let stopped = app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let draining = app.client.get(format!("{}/readyz", app.base)).send().await.unwrap();
    assert_eq!(draining.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(draining.json::<Value>().await.unwrap()["status"], "draining");
    stopped.await.unwrap().unwrap();
}

/// Every string of the form data (5 characters or more, so that the
/// search cannot hit by chance) and the attachment's content.
pub(crate) fn form_values(submission: &Value) -> Vec<String> {
    fn leaves(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => map.values().for_each(|v| leaves(v, out)),
            Value::Array(items) => items.iter().for_each(|v| leaves(v, out)),
            Value::String(s) if s.chars().count() >= 5 => out.push(s.clone()),
            _ => {}
        }
    }
    let mut values = Vec::new();
    leaves(&submission["data"], &mut values);
    for attachment in submission["attachments"].as_array().unwrap() {
        values.push(attachment["content"].as_str().unwrap().to_owned());
    }
    values.push("%PDF-1.4".into());
    values
}

#[tokio::test]
async fn the_ledger_holds_no_value_of_the_submitted_form() {
    let app = spawn_app(Setup::default()).await;
    let submission = gewerbeanmeldung("053150000000");
    let delivered = accepted_id(app.submit(submission.to_string()).await).await;
    app.status_when(&delivered, |s| s["status"] == "delivered").await;
    app.back_office.answer_with(StatusCode::UNPROCESSABLE_ENTITY);
    let parked = accepted_id(app.submit(submission.to_string()).await).await;
    app.status_when(&parked, |s| s["status"] == "parked").await;
    let replay = app.operator(Method::POST, "/v1/parked/discard").json(&serde_json::json!({ "submission": parked })).send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::OK);

    // Every table, every column, as text.
    let store = app.config_path.with_file_name("store.sqlite");
    let conn = rusqlite::Connection::open(&store).unwrap();
    // Code values the mapping itself spells out (`handwerk`) are in the
    // kept mapping sources; they are configuration, not form data.
    let sources: Vec<String> =
        conn.prepare("SELECT source FROM mapping_versions").unwrap().query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap();
    let values: Vec<String> = form_values(&submission).into_iter().filter(|v| !sources.iter().any(|s| s.contains(v.as_str()))).collect();
    assert!(values.len() > 15, "{values:?}");
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut rows = 0;
    for table in &tables {
        if table == "mapping_versions" {
            // Mapping sources, not submissions.
            continue;
        }
        let mut statement = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = statement.column_count();
        let mut query = statement.query([]).unwrap();
        while let Some(row) = query.next().unwrap() {
            rows += 1;
            for column in 0..columns {
                let text = match row.get_ref(column).unwrap() {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
                    other => format!("{other:?}"),
                };
                for value in &values {
                    assert!(!text.contains(value.as_str()), "{table} holds the form value {value:?}: {text}");
                }
            }
        }
    }
    assert!(rows > 12, "the ledger has the two timelines ({rows} rows)");
    // And the files as they lie on disk, write-ahead log included.
    for file in ["store.sqlite", "store.sqlite-wal"] {
        let bytes = std::fs::read(app.config_path.with_file_name(file)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for value in &values {
            assert!(!text.contains(value.as_str()), "{file} holds the form value {value:?}");
        }
    }
}

/// The real binary, run with `env`, delivers one submission whose first
/// attempt gets a 503, and stops on SIGTERM; the submission, its id and
/// the process's log.
async fn one_retried_delivery_by_the_binary(env: &[(&str, &str)]) -> (Value, String, String) {
    let back_office = amtsbote_sample_back_office::SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    back_office.script(&[StatusCode::SERVICE_UNAVAILABLE]);
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup { target_settings: FAST_RETRY, ..Setup::default() };
    let config = write_config(&setup, &back_office, dir.path());
    let log = dir.path().join("amtsbote.log");
    let mut app = AppProcess::start_with(&config, free_port(), &log, env).await;
    let submission = gewerbeanmeldung("053150000000");
    let response = as_sender(reqwest::Client::builder())
        .build()
        .unwrap()
        .post(format!("{}/v1/submissions", app.base))
        .header("content-type", "application/json")
        .body(submission.to_string())
        .send()
        .await
        .unwrap();
    let id = accepted_id(response).await;
    back_office.wait_for(1, Duration::from_secs(20)).await;
    app.terminate(Duration::from_secs(15)).await.expect("amtsbote stops on SIGTERM");
    (submission, id, std::fs::read_to_string(&log).unwrap())
}

#[tokio::test]
async fn json_logs_carry_submission_and_delivery_id_on_every_line_of_a_delivery() {
    let (submission, id, text) = one_retried_delivery_by_the_binary(&[("AMTSBOTE_LOG_FORMAT", "json"), ("RUST_LOG", "info")]).await;
    let delivery = amtsbote::domain::delivery_id(id.parse().unwrap(), &amtsbote::domain::TargetName::parse("fv").unwrap()).to_string();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
    let of_delivery: Vec<&Value> = lines.iter().filter(|l| l["span"]["name"] == "delivery").collect();
    let kinds: Vec<&str> = of_delivery.iter().filter_map(|l| l["fields"]["event"].as_str()).collect();
    assert!(kinds.contains(&"retry_scheduled") && kinds.contains(&"delivered"), "{kinds:?}\n{text}");
    for line in &of_delivery {
        assert_eq!(line["span"]["submission"], id.as_str(), "{line}");
        assert_eq!(line["span"]["delivery"], delivery.as_str(), "{line}");
        assert_eq!(line["span"]["target"], "fv", "{line}");
    }
    for value in form_values(&submission) {
        assert!(!text.contains(&value), "the log holds the form value {value:?}");
    }
}

/// An OTLP/HTTP collector on loopback that keeps every export request's
/// body as it arrived.
struct Collector {
    base: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<axum::body::Bytes>>>,
}

impl Collector {
    async fn start() -> Self {
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                kept.lock().unwrap().push(body);
                StatusCode::OK
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, bodies }
    }

    fn spans(&self) -> Vec<(opentelemetry_proto::tonic::resource::v1::Resource, opentelemetry_proto::tonic::trace::v1::Span)> {
        use prost::Message;
        let mut spans = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body.as_ref())
                .expect("an OTLP/HTTP protobuf export");
            for resource_spans in request.resource_spans {
                let resource = resource_spans.resource.unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    spans.extend(scope.spans.into_iter().map(|span| (resource.clone(), span)));
                }
            }
        }
        spans
    }
}

/// A span attribute as text, whatever its OTLP type.
fn attribute(attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.as_ref()).map(|value| match value {
        Any::StringValue(s) => s.clone(),
        Any::IntValue(i) => i.to_string(),
        Any::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test]
async fn a_submission_is_one_trace_from_intake_through_each_attempt_and_no_span_holds_form_data() {
    let collector = Collector::start().await;
    // The spans still buffered are sent on the way out, after SIGTERM.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", collector.base.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100"), ("RUST_LOG", "info")];
    let (submission, id, log_text) = one_retried_delivery_by_the_binary(&env).await;

    let spans = collector.spans();
    let named = |name: &str| spans.iter().filter(|(_, s)| s.name == name).map(|(_, s)| s).collect::<Vec<_>>();
    let intake = named("submission");
    assert_eq!(intake.len(), 1, "one intake span: {:?}\n{log_text}", spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>());
    let intake = intake[0];
    assert_eq!(attribute(&intake.attributes, "submission").as_deref(), Some(id.as_str()));
    assert_eq!(attribute(&intake.attributes, "status").as_deref(), Some("202"));
    assert_eq!(attribute(&intake.attributes, "service").as_deref(), submission["service"].as_str());

    // Both attempts, the failed one and the delivery, continue the
    // intake's trace across the broker and the delay queue.
    let deliveries = named("delivery");
    let outcomes: Vec<_> = deliveries.iter().map(|s| attribute(&s.attributes, "outcome").unwrap_or_default()).collect();
    assert_eq!(outcomes, ["transient", "delivered"], "{log_text}");
    for delivery in &deliveries {
        assert_eq!(delivery.trace_id, intake.trace_id, "a delivery span in another trace");
        assert_eq!(delivery.parent_span_id, intake.span_id, "a delivery span that is not the intake's child");
        assert_eq!(attribute(&delivery.attributes, "submission").as_deref(), Some(id.as_str()));
        assert_eq!(attribute(&delivery.attributes, "target").as_deref(), Some("fv"));
    }
    for name in ["mapping", "connector"] {
        let inner = named(name);
        assert_eq!(inner.len(), 2, "{name} once per attempt");
        assert!(inner.iter().all(|s| deliveries.iter().any(|d| d.span_id == s.parent_span_id)), "{name} inside a delivery");
    }
    // Only amtsbote's own spans are exported, under its service name.
    let names: std::collections::BTreeSet<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names, ["connector", "delivery", "mapping", "submission"].into(), "only amtsbote's spans");
    let (resource, _) = &spans[0];
    assert_eq!(attribute(&resource.attributes, "service.name").as_deref(), Some("amtsbote"));

    let exported: Vec<u8> = collector.bodies.lock().unwrap().iter().flat_map(|b| b.to_vec()).collect();
    let exported = String::from_utf8_lossy(&exported);
    for value in form_values(&submission) {
        assert!(!exported.contains(&value), "an exported span holds the form value {value:?}");
    }
}

/// `amtsbote_…` metric names in `text`, histogram suffixes removed.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("amtsbote_") {
        let name: String = rest[start..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        rest = &rest[start + name.len()..];
        let name = ["_bucket", "_count", "_sum"].iter().fold(name, |n, suffix| n.strip_suffix(suffix).map(str::to_owned).unwrap_or(n));
        names.insert(name);
    }
    names
}

#[tokio::test]
async fn alert_rules_and_grafana_panels_use_metrics_amtsbote_exports() {
    // With a FIT-Connect destination, whose series appear once it is polled.
    let receiving = crate::fit_connect::receiving("1h").await;
    let app = spawn_app(Setup { extra: &receiving.yaml, ..Setup::default() }).await;
    // Series by service and problem type appear with the first of each.
    accepted_id(app.submit(gewerbeanmeldung("053150000000").to_string()).await).await;
    assert_eq!(app.submit("{}").await.status(), StatusCode::BAD_REQUEST);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let exported = loop {
        let exported = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
        if exported.contains("amtsbote_fit_connect_last_poll_timestamp_seconds{") || tokio::time::Instant::now() > deadline {
            break exported;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let exported_names = metric_names(&exported.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n"));
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for file in ["prometheus/alerts.yml", "prometheus/alerts.test.yml", "grafana/dashboards/amtsbote.json"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} uses no metric");
        let unknown: Vec<_> = used.difference(&exported_names).collect();
        assert!(unknown.is_empty(), "{file} uses metrics amtsbote does not export: {unknown:?}");
    }
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(deploy.join("grafana/dashboards/amtsbote.json")).unwrap()).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);

    // promtool: the rules load and their unit tests pass.
    match which("promtool") {
        Some(promtool) => {
            for args in [&["check", "rules", "alerts.yml"][..], &["test", "rules", "alerts.test.yml"][..]] {
                let output = std::process::Command::new(&promtool).args(args).current_dir(deploy.join("prometheus")).output().unwrap();
                assert!(output.status.success(), "promtool {args:?}:\n{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            }
        }
        None => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "promtool is missing: run scripts/install-test-deps");
            eprintln!("promtool is missing: the alert rules were not unit-tested (run scripts/install-test-deps)");
        }
    }

    // Every file docker-compose.yml mounts from the checkout exists.
    let compose = std::fs::read_to_string(deploy.with_file_name("docker-compose.yml")).unwrap();
    let mounts: Vec<&str> =
        compose.lines().filter_map(|l| l.trim().strip_prefix("- ./")).map(|m| m.split(':').next().unwrap()).collect();
    assert!(mounts.len() >= 4, "{mounts:?}");
    for mount in mounts {
        assert!(deploy.with_file_name(mount).exists(), "docker-compose.yml mounts ./{mount}, which does not exist");
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|path| path.is_file())
}
