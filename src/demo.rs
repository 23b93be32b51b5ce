//! `amtsbote demo`: sample back offices on loopback, amtsbote with the
//! example config, the sample submissions; prints what arrived where.
//!
//! [`SampleBackOffice`] is also what the integration tests deliver to.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{State, Path as UrlPath};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use crate::app::Application;
use crate::config::Config;

/// The API key of the demo config's sender (`examples/demo/amtsbote.yaml`
/// holds its hash). Demo only.
pub const DEMO_SENDER_KEY: &str = "demo-sender-key";

/// One document a back office accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
    /// The `Authorization` header, to test that a connector sent its
    /// credentials.
    pub authorization: Option<String>,
    pub body: Bytes,
}

/// One request a back office answered, accepted or not.
#[derive(Debug, Clone)]
pub struct Answered {
    /// When the request arrived.
    pub at: std::time::Instant,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub status: StatusCode,
}

/// A back office on loopback that accepts any POST/PUT, remembers it, and
/// answers with a configurable status. Repeats of an `Idempotency-Key` it
/// already accepted are answered `200` and not stored twice, as a
/// deduplicating back office would, unless deduplication is switched off
/// for the path.
#[derive(Clone)]
pub struct SampleBackOffice {
    pub addr: SocketAddr,
    state: Arc<BackOfficeState>,
}

#[derive(Default)]
struct BackOfficeState {
    received: Mutex<Vec<Received>>,
    answered: Mutex<Vec<Answered>>,
    status: Mutex<Option<StatusCode>>,
    /// Statuses to answer first, one per request, before `status`.
    script: Mutex<VecDeque<StatusCode>>,
    /// The same for requests to one path; these go first.
    path_scripts: Mutex<HashMap<String, VecDeque<StatusCode>>>,
    delays: Mutex<HashMap<String, Duration>>,
    keeps_duplicates: Mutex<HashSet<String>>,
    seen_keys: Mutex<HashSet<String>>,
    /// Requests that reached the handler, answered or not yet.
    arrivals: std::sync::atomic::AtomicUsize,
}

impl SampleBackOffice {
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let state = Arc::new(BackOfficeState::default());
        let app = Router::new()
            .route("/{*path}", post(receive).put(receive))
            // Packages of building applications are larger than axum's
            // default limit of 2 MB.
            .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { addr, state })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Answers every following request with `status` (default `201`).
    pub fn answer_with(&self, status: StatusCode) {
        *self.state.status.lock().unwrap() = Some(status);
    }

    /// Answers the next requests with these statuses, in order.
    pub fn script(&self, statuses: &[StatusCode]) {
        self.state.script.lock().unwrap().extend(statuses);
    }

    /// Answers the next requests to `path` with these statuses, in order.
    pub fn script_for(&self, path: &str, statuses: &[StatusCode]) {
        let path = format!("/{}", path.trim_start_matches('/'));
        self.state.path_scripts.lock().unwrap().entry(path).or_default().extend(statuses);
    }

    /// Takes `delay` to answer requests to `path`.
    pub fn slow_down(&self, path: &str, delay: Duration) {
        self.state.delays.lock().unwrap().insert(format!("/{}", path.trim_start_matches('/')), delay);
    }

    /// Stores every request to `path`, repeats included, as a back office
    /// that does not deduplicate would.
    pub fn keep_duplicates(&self, path: &str) {
        self.state.keeps_duplicates.lock().unwrap().insert(format!("/{}", path.trim_start_matches('/')));
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn answered(&self) -> Vec<Answered> {
        self.state.answered.lock().unwrap().clone()
    }

    /// Waits until `count` requests reached the back office, answered or
    /// still held by [`slow_down`](Self::slow_down) (or the timeout passed).
    pub async fn wait_for_arrivals(&self, count: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.state.arrivals.load(std::sync::atomic::Ordering::SeqCst);
            if arrived >= count || tokio::time::Instant::now() >= deadline {
                return arrived;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `count` documents arrived (or the timeout passed).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count || tokio::time::Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(State(state): State<Arc<BackOfficeState>>, UrlPath(path): UrlPath<String>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = std::time::Instant::now();
    state.arrivals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = format!("/{path}");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let key = header("idempotency-key");
    let delay = state.delays.lock().unwrap().get(&path).copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let for_path = state.path_scripts.lock().unwrap().get_mut(&path).and_then(VecDeque::pop_front);
    let scripted = for_path.or_else(|| state.script.lock().unwrap().pop_front());
    let mut status = scripted.or(*state.status.lock().unwrap()).unwrap_or(StatusCode::CREATED);
    if status.is_success() {
        let deduplicates = !state.keeps_duplicates.lock().unwrap().contains(&path);
        let repeat = key.as_ref().is_some_and(|key| !state.seen_keys.lock().unwrap().insert(format!("{path} {key}")));
        if repeat && deduplicates {
            status = StatusCode::OK;
        } else {
            state.received.lock().unwrap().push(Received {
                path: path.clone(),
                idempotency_key: key.clone(),
                content_type: header("content-type"),
                authorization: header("authorization"),
                body,
            });
        }
    }
    state.answered.lock().unwrap().push(Answered { at, path, idempotency_key: key, status });
    status
}

/// Each demo run starts from nothing: a fresh ledger, so that its
/// idempotency keys do not replay the previous run's answers, and no
/// blobs, whose store remembers the ledger it served and would refuse the
/// new one.
fn reset_state(config: &Config) -> anyhow::Result<()> {
    let ledger = config.store.path.as_os_str();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = ledger.to_owned();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing the previous demo's ledger {}", Path::new(&file).display()));
            }
            _ => {}
        }
    }
    if config.blobs.s3.is_none() {
        match std::fs::remove_dir_all(&config.blobs.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing the previous demo's blobs {}", config.blobs.path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs the demo end to end and prints a report.
/// With `stay`, amtsbote keeps serving after the report until Ctrl-C, so
/// that the dashboard and metrics can be looked at.
pub async fn run(config_path: &Path, submissions: &Path, stay: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path).with_context(|| format!("loading {}", config_path.display()))?;
    reset_state(&config)?;
    let back_office = SampleBackOffice::start(([127, 0, 0, 1], 18090).into())
        .await
        .context("starting the sample back office on 127.0.0.1:18090")?;
    // The first delivery to Köln's trade office meets it briefly
    // unavailable: the report shows the retry (its policy retries after 1 s).
    back_office.script_for("/koeln/gewerbeamt", &[StatusCode::SERVICE_UNAVAILABLE]);
    let app = Application::build(&config).await?;
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    println!("amtsbote demo: intake {base}, broker {}, back offices {}", config.broker.display_url(), back_office.url(""));
    let mut files: Vec<PathBuf> = std::fs::read_dir(submissions)
        .with_context(|| format!("reading {}", submissions.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();

    // The demo config's sender; it reads back its own submissions with the
    // same key.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {DEMO_SENDER_KEY}").parse().expect("an ASCII header"));
    let client = reqwest::Client::builder().default_headers(headers).build()?;
    let mut accepted = Vec::new();
    println!("\nSubmitting {} sample forms:", files.len());
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(file)?;
        let response = client
            .post(format!("{base}/v1/submissions"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("demo-{name}"))
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        match answer.get("id").and_then(|id| id.as_str()) {
            Some(id) if status == StatusCode::ACCEPTED => {
                println!("  {name:<28} {status} id {id}");
                accepted.push((name, id.to_owned()));
            }
            _ => println!("  {name:<28} {status} {}", answer["detail"].as_str().unwrap_or("")),
        }
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut statuses = Vec::new();
    for (name, id) in &accepted {
        loop {
            let status: serde_json::Value = client.get(format!("{base}/v1/submissions/{id}")).send().await?.json().await?;
            let settled = !matches!(status["status"].as_str(), Some("received" | "accepted"));
            if settled || tokio::time::Instant::now() >= deadline {
                statuses.push((name.clone(), status));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    println!("\nDelivery state (GET /v1/submissions/{{id}}):");
    for (name, status) in &statuses {
        println!("  {name:<28} {}", status["status"].as_str().unwrap_or("?"));
        for target in status["targets"].as_array().into_iter().flatten() {
            let attempts = target["attempts"].as_u64().unwrap_or(0);
            println!(
                "      → {:<22} {:<10} {} after {attempts} attempt{}",
                target["target"].as_str().unwrap_or("?"),
                target["state"].as_str().unwrap_or("?"),
                target["lastOutcome"].as_str().unwrap_or(""),
                if attempts == 1 { "" } else { "s" },
            );
        }
    }

    let out_dir = Path::new("target/demo/inbox");
    println!("\nWhat the back offices received (copies in {}):", out_dir.display());
    for (i, r) in back_office.received().iter().enumerate() {
        let ext = if r.content_type.as_deref().unwrap_or("").contains("json") { "json" } else { "xml" };
        let file = out_dir.join(format!("{}-{i}.{ext}", r.path.trim_start_matches('/').replace('/', "_")));
        std::fs::create_dir_all(out_dir)?;
        std::fs::write(&file, &r.body)?;
        println!(
            "  POST {:<32} {:<18} {:>6} bytes  Idempotency-Key {}",
            r.path,
            r.content_type.as_deref().unwrap_or("-"),
            r.body.len(),
            r.idempotency_key.as_deref().unwrap_or("-")
        );
    }
    if let Some(first) = back_office.received().iter().find(|r| r.path.ends_with("gewerbeamt")) {
        let text = String::from_utf8_lossy(&first.body);
        println!("\nFirst lines of the XGewerbeanzeige message sent to {}:", first.path);
        for line in text.lines().take(12) {
            println!("  {line}");
        }
    }

    if stay {
        println!("\nStill serving until Ctrl-C:");
        println!("  dashboard  {base}/dashboard  (operator token: demo-operator-token)");
        println!("  metrics    {base}/metrics");
        println!("  API        {base}/v1/openapi.json");
        crate::app::shutdown_signal().await;
    } else {
        println!("\nThe dashboard is at {base}/dashboard while amtsbote runs: scripts/demo --stay keeps it serving.");
    }
    let _ = stop.send(());
    server.await??;
    let all_delivered = statuses.iter().all(|(_, s)| s["status"] == "delivered");
    anyhow::ensure!(all_delivered, "not every accepted submission was delivered");
    println!("\nDemo finished: every accepted submission was delivered.");
    Ok(())
}
