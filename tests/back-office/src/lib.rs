//! A back office on loopback for the demo and the tests: it accepts any
//! POST or PUT, remembers what arrived, answers with a status that a test
//! sets or scripts, can be slowed down, and deduplicates by
//! `Idempotency-Key` as a careful back office would.
//!
//! A crate of its own so that amtsbote's library holds no test double:
//! `amtsbote demo` uses it, the integration tests and benchmarks too.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

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

