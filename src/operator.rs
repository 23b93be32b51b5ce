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
use time::OffsetDateTime;
use uuid::Uuid;

use crate::access::{Operator, Scope};
use crate::domain::{ArsPrefix, ServiceKey, TargetName};
use crate::pipeline::SharedPipeline;
use crate::parking::{Action, ParkingError, ParkingLot, Selection};
use crate::problem::Problem;
use crate::store::{Cursor, SearchQuery, StoreError, SubmissionState, SubmissionStatus};
use crate::submission::FieldError;

pub struct OperatorApi {
    pub parking: ParkingLot,
    /// Operators come from the pipeline in use, so a reload rotates
    /// tokens and changes roles.
    pub pipeline: SharedPipeline,
}

impl OperatorApi {
    /// The operator whose token this is (the dashboard's sign-in).
    pub fn operator_for(&self, token: &str) -> Option<Operator> {
        self.pipeline.load().operators.find(token).cloned()
    }

    pub fn has_operators(&self) -> bool {
        !self.pipeline.load().operators.is_empty()
    }

    /// The operator the request authenticates as.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Operator, Problem> {
        self.pipeline.load().operators.authenticate(headers)
    }
}

/// The names of the targets in `scope`, as the store filters by them.
pub fn within(scope: &Scope) -> Option<Vec<String>> {
    scope.targets().map(|targets| targets.iter().map(|t| t.as_str().to_owned()).collect())
}

/// A submission's status as an operator of `scope` may see it: only the
/// targets in scope, and only the events about them or about the
/// submission as a whole. `None` if it went to none of them.
pub fn scoped_status(mut status: SubmissionStatus, scope: &Scope) -> Option<SubmissionStatus> {
    if !status.targets.iter().any(|t| scope.sees_name(&t.target)) {
        return None;
    }
    status.targets.retain(|t| scope.sees_name(&t.target));
    // `routed` names the targets in its detail; those out of scope are
    // not shown either.
    status.timeline.retain(|e| e.target.as_deref().is_none_or(|t| scope.sees_name(t)));
    for event in &mut status.timeline {
        if event.event == "routed"
            && let Some(detail) = &event.detail
        {
            let seen: Vec<&str> = detail.split(", ").filter(|t| scope.sees_name(t)).collect();
            event.detail = Some(seen.join(", "));
        }
    }
    Some(status)
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

/// A ledger search as the API and the dashboard take it. Every given
/// parameter must match; empty ones are ignored (as HTML forms send them).
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchParams {
    /// The sender's reference (`Aktenzeichen` of the online service).
    pub reference: Option<String>,
    /// LeiKa service key.
    pub service: Option<String>,
    /// ARS prefix: `05315` finds all of Köln.
    pub region: Option<String>,
    pub target: Option<String>,
    /// `received`, `accepted`, `delivered`, `parked`, `discarded` or `refused`.
    pub state: Option<String>,
    /// Received at or after: RFC 3339, or a date (`2026-11-24`, UTC).
    pub from: Option<String>,
    /// Received before; as `from`.
    pub to: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
}

impl SearchParams {
    /// The query within what an operator of `scope` sees.
    pub fn scoped(&self, scope: &Scope) -> Result<SearchQuery, Problem> {
        Ok(SearchQuery { within: within(scope), ..self.query()? })
    }

    fn query(&self) -> Result<SearchQuery, Problem> {
        let given = |value: &Option<String>| value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        let invalid = |parameter: &str, detail: String| {
            Problem::fields(StatusCode::BAD_REQUEST, "invalid-search", "Invalid Search", "invalid query parameter(s)", vec![
                FieldError { pointer: format!("#/{parameter}"), detail },
            ])
        };
        let service = given(&self.service)
            .map(|s| ServiceKey::parse(&s).map(|k| k.as_str().to_owned()).map_err(|e| invalid("service", e.0)))
            .transpose()?;
        let region = given(&self.region).map(|r| ArsPrefix::parse(&r).map(|_| r).map_err(|e| invalid("region", e.0))).transpose()?;
        let target = given(&self.target)
            .map(|t| TargetName::parse(&t).map(|_| t).map_err(|e| invalid("target", e.to_string())))
            .transpose()?;
        let state = given(&self.state)
            .map(|s| {
                SubmissionState::parse(&s).ok_or_else(|| {
                    invalid("state", "must be received, accepted, delivered, parked, discarded or refused".into())
                })
            })
            .transpose()?;
        let from = given(&self.from).map(|t| parse_time(&t).ok_or_else(|| invalid("from", TIME_HINT.into()))).transpose()?;
        let to = given(&self.to).map(|t| parse_time(&t).ok_or_else(|| invalid("to", TIME_HINT.into()))).transpose()?;
        let limit = self.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(invalid("limit", "must be 1 to 500".into()));
        }
        let after = given(&self.cursor)
            .map(|c| Cursor::decode(&c).ok_or_else(|| invalid("cursor", "not a cursor this API handed out".into())))
            .transpose()?;
        Ok(SearchQuery { reference: given(&self.reference), service, region, target, state, from, to, limit, after, within: None })
    }
}

const TIME_HINT: &str = "must be an RFC 3339 time (2026-11-24T09:00:00Z) or a date (2026-11-24, UTC)";

/// RFC 3339, `YYYY-MM-DDTHH:MM` (UTC, as an HTML `datetime-local`) or a
/// date (its start, UTC).
fn parse_time(text: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(at);
    }
    if let Ok(at) = time::PrimitiveDateTime::parse(text, time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]")) {
        return Some(at.assume_utc());
    }
    time::Date::parse(text, time::macros::format_description!("[year]-[month]-[day]"))
        .ok()
        .map(|date| date.midnight().assume_utc())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DeliveryState, Event, TargetStatus};

    fn event(kind: &str, target: Option<&str>, detail: Option<&str>) -> Event {
        Event {
            at: "2026-11-24T09:00:00.000Z".into(),
            event: kind.into(),
            target: target.map(str::to_owned),
            attempt: None,
            mapping_version: None,
            detail: detail.map(str::to_owned),
            receipt: None,
            size: None,
            sha256: None,
            operator: None,
            duration_ms: None,
        }
    }

    fn target(name: &str) -> TargetStatus {
        TargetStatus {
            target: name.into(),
            state: DeliveryState::Delivered,
            attempts: 1,
            last_outcome: None,
            updated_at: "2026-11-24T09:00:01.000Z".into(),
            mapping_version: None,
            receipt: None,
        }
    }

    #[test]
    fn an_operator_sees_only_its_targets_of_a_submission() {
        let status = SubmissionStatus {
            id: Uuid::nil(),
            status: SubmissionState::Delivered,
            service: "99050012104000".into(),
            region: "053150000000".into(),
            reference: None,
            received_at: "2026-11-24T09:00:00.000Z".into(),
            size: None,
            sha256: None,
            sender: Some("oaa".into()),
            targets: vec![target("dms-land"), target("koeln-fv")],
            timeline: vec![
                event("received", None, None),
                event("routed", None, Some("dms-land, koeln-fv")),
                event("delivered", Some("dms-land"), Some("HTTP 201")),
                event("delivered", Some("koeln-fv"), Some("HTTP 201")),
            ],
        };
        let koeln = Scope::Targets([TargetName::parse("koeln-fv").unwrap()].into());
        let seen = scoped_status(status.clone(), &koeln).expect("it went to Köln");
        assert_eq!(seen.targets.iter().map(|t| t.target.as_str()).collect::<Vec<_>>(), ["koeln-fv"]);
        let events: Vec<(&str, Option<&str>)> = seen.timeline.iter().map(|e| (e.event.as_str(), e.detail.as_deref())).collect();
        assert_eq!(events, [("received", None), ("routed", Some("koeln-fv")), ("delivered", Some("HTTP 201"))]);
        let bonn = Scope::Targets([TargetName::parse("bonn-fv").unwrap()].into());
        assert!(scoped_status(status.clone(), &bonn).is_none(), "it did not go to Bonn");
        assert_eq!(scoped_status(status, &Scope::Everything).unwrap().timeline.len(), 4);
    }
}
