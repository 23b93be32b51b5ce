//! What operators and orchestrators poll: `/healthz` (alive),
//! `/readyz` (ready to take submissions) and `/metrics` (Prometheus, with
//! the [`Monitor`]'s fresh sample of queue depths and ledger activity).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::connections::ListenerHealth;
use crate::broker::Publisher;
use crate::metrics::{self, Metrics};
use crate::monitor::{Monitor, SAMPLE_TIMEOUT};
use crate::store::Store;

/// What `/readyz` checks, handed in by the application: the same draining
/// flag, publisher, ledger and listener that intake uses.
pub struct Readiness {
    /// Set when shutdown begins.
    pub draining: Arc<AtomicBool>,
    pub publisher: Arc<Publisher>,
    pub store: Arc<dyn Store>,
    /// Whether the HTTP listener takes connections.
    pub listener: Arc<ListenerHealth>,
}

/// What the health and metrics endpoints need.
pub struct Observed {
    pub readiness: Readiness,
    pub monitor: Arc<Monitor>,
    pub metrics: Arc<Metrics>,
}

pub fn router(observed: Arc<Observed>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "alive" })) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(scrape))
        .with_state(observed)
}

/// Ready: not draining, the broker takes connections, the store writes,
/// and the listener takes connections (no failing accept, a cap not full
/// of busy connections).
async fn ready(State(observed): State<Arc<Observed>>) -> Response {
    let readiness = &observed.readiness;
    if readiness.draining.load(Ordering::Relaxed) {
        let body = json!({ "status": "draining" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let broker = tokio::time::timeout(SAMPLE_TIMEOUT, readiness.publisher.ensure_connected()).await.is_ok_and(|r| r.is_ok());
    let store = tokio::time::timeout(SAMPLE_TIMEOUT, readiness.store.check_writable()).await.is_ok_and(|r| r.is_ok());
    let accepting = readiness.listener.accepting();
    let word = |ok: bool| if ok { "ok" } else { "failing" };
    let ready = broker && store && accepting;
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": { "broker": word(broker), "store": word(store), "intake": word(accepting) },
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn scrape(State(observed): State<Arc<Observed>>) -> Response {
    observed.monitor.refresh().await;
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], observed.metrics.encode()).into_response()
}
