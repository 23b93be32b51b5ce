//! The operator API: parked deliveries and the audit trail over HTTP.
//!
//! * `GET /v1/parked?target=&reason=&olderThan=&submission=`: list.
//! * `GET /v1/parked/{target}/{submission}`: one parked delivery.
//! * `POST /v1/parked/replay`, `POST /v1/parked/discard`: act on a
//!   selection (`{"target": …, "reason": …, "olderThan": "2h",
//!   "submission": …}`; `{"all": true}` for everything; `comment` for a
//!   discard).
//! * `GET /v1/audit?limit=`: who replayed or discarded what, and when.
//! * `GET /v1/submissions?reference=&service=&region=&target=&state=&from=&to=&limit=&cursor=`:
//!   search the ledger, newest first, one page at a time (see
//!   [`SearchParams`]).
//!
//! Every request needs `Authorization: Bearer <token>` of a configured
//! operator ([`crate::access::OperatorConfig`]); the operator's name is
//! what the audit trail records.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::access::{Operator, within};
use crate::domain::TargetName;
use crate::http::search::SearchParams;
use crate::pipeline::SharedPipeline;
use crate::parking::{Action, ParkingError, ParkingLot, Selection};
use crate::http::problem::Problem;
use crate::store::StoreError;

pub struct OperatorApi {
    pub parking: Arc<ParkingLot>,
    /// Operators come from the pipeline in use, so a reload rotates
    /// tokens and changes roles.
    pub pipeline: SharedPipeline,
}

impl OperatorApi {
    /// The operator the request authenticates as.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Operator, Problem> {
        self.pipeline.load().operators.authenticate(headers)
    }
}

pub fn router(api: Arc<OperatorApi>) -> Router {
    Router::new()
        .route("/v1/parked", get(list))
        .route("/v1/parked/{target}/{submission}", get(show))
        .route("/v1/parked/replay", post(replay))
        .route("/v1/parked/discard", post(discard))
        .route("/v1/audit", get(audit))
        .route("/v1/submissions", get(search))
        .with_state(api)
}

async fn list(State(api): State<Arc<OperatorApi>>, headers: HeaderMap, query: Result<Query<Selection>, QueryRejection>) -> Response {
    respond(async {
        let operator = api.authenticate(&headers)?;
        let Query(selection) = query.map_err(|e| bad_request(e.body_text()))?;
        let parked = api.parking.list(&selection.within(&operator.scope)).await.map_err(parking_problem)?;
        Ok(Json(json!({ "count": parked.len(), "parked": parked })).into_response())
    })
    .await
}

async fn show(State(api): State<Arc<OperatorApi>>, headers: HeaderMap, Path((target, submission)): Path<(String, String)>) -> Response {
    respond(async {
        let operator = api.authenticate(&headers)?;
        let not_found = || Problem::new(StatusCode::NOT_FOUND, "not-parked", "Not Parked", "no such parked delivery");
        let target = TargetName::parse(&target).ok().filter(|t| operator.scope.sees(t)).ok_or_else(not_found)?;
        let submission = submission.parse::<Uuid>().map_err(|_| not_found())?;
        let parked = api.parking.find(target, submission).await.map_err(parking_problem)?;
        Ok(Json(parked.ok_or_else(not_found)?).into_response())
    })
    .await
}

/// The body of a replay or discard.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Bulk {
    target: Option<TargetName>,
    reason: Option<String>,
    #[serde(default, with = "humantime_serde")]
    older_than: Option<std::time::Duration>,
    submission: Option<Uuid>,
    /// Must be `true` to act on every parked delivery (an empty selection).
    #[serde(default)]
    all: bool,
    /// Recorded with a discard.
    comment: Option<String>,
}

impl Bulk {
    fn selection(&self) -> Result<Selection, Problem> {
        let selection = Selection {
            target: self.target.clone(),
            reason: self.reason.clone(),
            older_than: self.older_than,
            submission: self.submission,
            within: None,
        };
        if selection.is_everything() && !self.all {
            return Err(bad_request(
                "the selection is empty: name a target, reason, olderThan or submission, or send \"all\": true".into(),
            ));
        }
        Ok(selection)
    }
}

async fn replay(State(api): State<Arc<OperatorApi>>, headers: HeaderMap, body: Result<Json<Bulk>, JsonRejection>) -> Response {
    respond(async {
        let operator = api.authenticate(&headers)?;
        operator.may_act()?;
        let Json(bulk) = body.map_err(|e| bad_request(e.body_text()))?;
        let selection = bulk.selection()?.within(&operator.scope);
        let done = api.parking.apply(&selection, &Action::Replay { operator: operator.name }).await.map_err(parking_problem)?;
        Ok(Json(json!({ "count": done.len(), "replayed": done })).into_response())
    })
    .await
}

async fn discard(State(api): State<Arc<OperatorApi>>, headers: HeaderMap, body: Result<Json<Bulk>, JsonRejection>) -> Response {
    respond(async {
        let operator = api.authenticate(&headers)?;
        operator.may_act()?;
        let Json(bulk) = body.map_err(|e| bad_request(e.body_text()))?;
        let action = Action::Discard { operator: operator.name, comment: bulk.comment.clone() };
        let done = api.parking.apply(&bulk.selection()?.within(&operator.scope), &action).await.map_err(parking_problem)?;
        Ok(Json(json!({ "count": done.len(), "discarded": done })).into_response())
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn audit(State(api): State<Arc<OperatorApi>>, headers: HeaderMap, query: Result<Query<AuditQuery>, QueryRejection>) -> Response {
    respond(async {
        let operator = api.authenticate(&headers)?;
        let Query(query) = query.map_err(|e| bad_request(e.body_text()))?;
        let trail = api
            .parking
            .store
            .audit_trail(query.limit.unwrap_or(100).min(10_000), within(&operator.scope))
            .await
            .map_err(|e| store_problem(e, "the audit trail could not be read"))?;
        Ok(Json(json!({ "entries": trail })).into_response())
    })
    .await
}

async fn search(State(api): State<Arc<OperatorApi>>, headers: HeaderMap, query: Result<Query<SearchParams>, QueryRejection>) -> Response {
    respond(async {
        let operator = api.authenticate(&headers)?;
        let Query(params) = query.map_err(|e| bad_request(e.body_text()))?;
        let mut page = api.parking.store.search(params.scoped(&operator.scope)?).await.map_err(|e| store_problem(e, "the ledger could not be searched"))?;
        for item in &mut page.items {
            item.targets.retain(|t| operator.scope.sees_name(&t.target));
        }
        Ok(Json(page).into_response())
    })
    .await
}

fn store_problem(error: StoreError, detail: &'static str) -> Problem {
    tracing::error!(event = "store_failed", error = %error, "{detail}");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal Error", detail)
}

async fn respond(work: impl Future<Output = Result<Response, Problem>>) -> Response {
    work.await.unwrap_or_else(IntoResponse::into_response)
}

fn bad_request(detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid-request", "Invalid Request", detail)
}

fn parking_problem(error: ParkingError) -> Problem {
    match error {
        ParkingError::UnknownTarget(_) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown-target", "Unknown Target", error.to_string())
        }
        ParkingError::Broker(e) => {
            tracing::warn!(event = "broker_unreachable", role = "operator", error = %e, "operator request failed");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service Unavailable", "the message broker is unavailable")
                .retry_after(5)
        }
        ParkingError::Store(e) => store_problem(e, "the store failed; see the log"),
    }
}
