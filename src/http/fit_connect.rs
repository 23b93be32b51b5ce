//! FIT-Connect's callbacks: `POST /v1/fit-connect/callbacks/{destination}`.
//!
//! FIT-Connect calls it when new submissions wait for the destination;
//! the call only wakes the destination's poller. It is authenticated by
//! its HMAC (see [`crate::fit_connect`]), not as a sender: a refused
//! callback is logged with why, never with the secret or the body.

use std::sync::Arc;

use axum::{Json, Router};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use crate::fit_connect::{CallbackError, FitConnect};
use crate::http::problem::Problem;

/// A callback lists a few submission ids.
const MAX_CALLBACK_BYTES: usize = 64 * 1024;

pub fn router(fit_connect: Arc<FitConnect>) -> Router {
    Router::new()
        .route("/v1/fit-connect/callbacks/{destination}", post(callback))
        .layer(DefaultBodyLimit::max(MAX_CALLBACK_BYTES))
        .with_state(fit_connect)
}

async fn callback(
    State(fit_connect): State<Arc<FitConnect>>,
    Path(destination): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Problem> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    match fit_connect.callback(&destination, header("callback-timestamp"), header("callback-authentication"), &body) {
        Ok(()) => {
            tracing::debug!(event = "fit_connect_callback", destination = %destination, "FIT-Connect callback: polling now");
            Ok(Json(serde_json::json!({ "status": "polling" })))
        }
        Err(error) => {
            tracing::warn!(event = "fit_connect_callback_refused", destination = %destination, reason = %error, "FIT-Connect callback refused");
            Err(match error {
                CallbackError::UnknownDestination => Problem::new(StatusCode::NOT_FOUND, "not-found", "Not Found", "no destination of that name takes callbacks"),
                other => Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Unauthenticated", other.to_string()),
            })
        }
    }
}
