//! The intake API (axum).
//!
//! * `POST /v1/submissions`: validate, route, record, publish with
//!   confirm, and only then answer `202 Accepted`.
//! * `GET /v1/submissions/{id}`: the submission's state per target and
//!   its timeline from the ledger.
//! * `GET /v1/openapi.json`: the OpenAPI 3.1 document of the whole API.
//!
//! Every error is `application/problem+json` naming the field; nothing from
//! the form data reaches a log line.

use std::sync::Arc;
use std::time::Duration;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Bytes;
use bytes::BytesMut;
use futures_lite::StreamExt;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tracing::Instrument;
use tracing::field::Empty;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::access;
use crate::admission::{Admissions, Incoming, NotAdmitted};
use crate::budget::{MemoryBudget, Reserved};
use crate::domain::SenderName;
use crate::metrics::{Metrics, ProblemLabel};
use crate::http::problem::Problem;
use crate::pipeline::SharedPipeline;
use crate::store::IdempotencyKey;
use crate::submission::{FieldError, InvalidSubmission, Submission};
use crate::access::Sender;
use crate::pipeline::Pipeline;
use crate::http::tls::ClientCertificate;

/// The OpenAPI 3.1 description of every endpoint, served at
/// `/v1/openapi.json`; `tests/integration/openapi.rs` holds the running
/// server to it.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECS: u64 = 5;

pub struct Intake {
    /// Routes come from the pipeline in use (see [`SharedPipeline`]).
    pub pipeline: SharedPipeline,
    /// The path every source takes once it parsed a submission.
    pub admissions: Arc<Admissions>,
    /// Set when shutdown begins: new submissions get 503.
    pub draining: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// What a submission may hold beyond the body size.
    pub limits: crate::submission::Limits,
    /// Intake's memory for request bodies (`http.intake_memory_mib`); see
    /// [`Admitted`].
    pub room: MemoryBudget,
    /// The largest body (`http.max_body_bytes`): what a request without a
    /// declared length may still send.
    pub max_body_bytes: usize,
    /// Longest a body may take to arrive (`http.body_timeout`), so that a
    /// slow upload cannot hold its room for ever.
    pub body_timeout: Duration,
}

/// A submission request let in before its body is read: its sender,
/// authenticated by the headers and the connection's client certificate
/// (so that no one unknown can take intake's memory), the pipeline it was
/// judged by (one for the whole request: who may send, and where to), and
/// its share of intake's memory for bodies: its declared `Content-Length`,
/// or the largest body if it declares none. Without room the request gets
/// `503 busy` at once: waiting would hold the connection and, across many
/// connections, the memory the budget is there to bound.
pub struct Admitted {
    pipeline: Arc<Pipeline>,
    sender: Arc<Sender>,
    _room: Reserved,
}

impl FromRequestParts<Arc<Intake>> for Admitted {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, intake: &Arc<Intake>) -> Result<Self, Problem> {
        let pipeline = intake.pipeline.load_full();
        let Ok(ClientCertificate(certificate)) = ClientCertificate::from_request_parts(parts, intake).await;
        let sender = pipeline.senders.authenticate(&parts.headers, certificate.as_ref())?;
        let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        // A body over the limit is refused by the body limit with 413; it
        // needs no more room than the largest body to be read that far.
        let bytes = declared.unwrap_or(intake.max_body_bytes).min(intake.max_body_bytes);
        let room = intake.room.try_reserve(bytes as u64).ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Busy",
                "intake holds as many submissions as its memory allows (http.intake_memory_mib); retry shortly",
            )
            .retry_after(1)
        })?;
        Ok(Self { pipeline, sender, _room: room })
    }
}

pub fn router(intake: Arc<Intake>) -> Router {
    Router::new()
        .route("/v1/submissions", post(submit))
        .route("/v1/submissions/{id}", get(status))
        .route("/v1/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "Not Found", "no such resource") })
        .with_state(intake)
}

async fn submit(
    State(intake): State<Arc<Intake>>,
    admitted: Result<Admitted, Problem>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    // The trace of a submission starts here (see `telemetry`); the span's
    // fields are filled in as they become known.
    let span = tracing::info_span!("submission", submission = Empty, service = Empty, status = Empty);
    let response = match accept(&intake, admitted, &headers, request).instrument(span.clone()).await {
        Ok(response) => response,
        Err(problem) => {
            intake.metrics.submissions_refused.get_or_create(&ProblemLabel { problem: problem.slug().to_owned() }).inc();
            problem.into_response()
        }
    };
    span.record("status", response.status().as_u16());
    response
}

async fn accept(
    intake: &Intake,
    admitted: Result<Admitted, Problem>,
    headers: &HeaderMap,
    request: Request,
) -> Result<Response, Problem> {
    if intake.draining.load(Ordering::Relaxed) {
        return Err(unavailable("amtsbote is shutting down"));
    }
    let Admitted { pipeline, sender, _room } = admitted?;
    // Read only now that the sender is known and has room (see `Admitted`).
    let body = tokio::time::timeout(intake.body_timeout, read_body(request, intake.max_body_bytes)).await.map_err(|_| {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request Timeout",
            "the request body did not arrive in time (http.body_timeout)",
        )
    })??;
    check_content_type(headers)?;
    // One hash of the body serves the ledger and the idempotency check.
    let body_sha256: [u8; 32] = Sha256::digest(&body).into();
    let idempotency = idempotency_key(headers, body_sha256, &sender.name)?;
    let submission = parse(&body, &intake.limits)?;
    authorize(&sender, &submission)?;
    let incoming = Incoming { submission, body: &body, body_sha256, sender: &sender.name, idempotency };
    match intake.admissions.admit(&pipeline, incoming).await {
        Ok(id) => Ok(accepted(id)),
        Err(not_admitted) => Err(problem_of(not_admitted)),
    }
}

/// Submissions are JSON; a request that says otherwise is refused.
fn check_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let essence = content_type.to_str().unwrap_or("").split(';').next().unwrap_or("").trim();
        if !(essence.eq_ignore_ascii_case("application/json") || essence.to_ascii_lowercase().ends_with("+json")) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported Media Type",
                "submissions are JSON: send Content-Type: application/json",
            ));
        }
    }
    Ok(())
}

/// The sender may submit this service for this region.
fn authorize(sender: &Sender, submission: &Submission<'_>) -> Result<(), Problem> {
    let refused = sender.refusals(&submission.service, &submission.region);
    if refused.is_empty() {
        return Ok(());
    }
    tracing::warn!(event = "submission_forbidden", sender = %sender.name, service = submission.service.as_str(),
        region = %submission.region, "a sender submitted outside what it is allowed");
    Err(Problem::fields(StatusCode::FORBIDDEN, "forbidden", "Forbidden", "the sender may not submit this", refused))
}

/// Parses and validates the body.
fn parse<'b>(body: &'b Bytes, limits: &crate::submission::Limits) -> Result<Submission<'b>, Problem> {
    Submission::parse(body, limits).map_err(|invalid| match invalid {
        InvalidSubmission::Malformed(reason) => Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            format!("the body is not valid JSON: {reason}"),
        ),
        InvalidSubmission::Fields(errors) => {
            Problem::fields(StatusCode::BAD_REQUEST, "invalid-submission", "Invalid Submission", "invalid field(s)", errors)
        }
    })
}

/// The answer to a submission the admission path did not accept.
fn problem_of(not_admitted: NotAdmitted) -> Problem {
    match not_admitted {
        NotAdmitted::NoRoute { service, region } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-route",
            "No Route",
            format!("no route delivers service {service} for region {region}"),
        )
        .with_errors(vec![
            FieldError { pointer: "#/service".into(), detail: "no route for this service and region".into() },
            FieldError { pointer: "#/region".into(), detail: "no route for this service and region".into() },
        ]),
        NotAdmitted::InvalidFormData(errors) => Problem::fields(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-form-data",
            "Invalid Form Data",
            "the form data does not match the service's schema at",
            errors.into_iter().map(|e| FieldError { pointer: format!("#/data{}", e.pointer), detail: e.detail }).collect(),
        ),
        NotAdmitted::KeyInUse => Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-use",
            "Request In Progress",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        )
        .retry_after(1),
        NotAdmitted::KeyReused => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key Reused",
            "this Idempotency-Key was used for a different request body",
        ),
        NotAdmitted::TooLarge => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Submission Too Large",
            "the form data is larger than a broker message may be (broker.max_message_bytes); large attachments are fine",
        ),
        NotAdmitted::AttachmentsNotStored => unavailable("the attachments could not be stored; nothing was accepted"),
        NotAdmitted::Unroutable => unavailable("the broker has no queue for this route; an operator must check the topology"),
        NotAdmitted::BrokerUnavailable => unavailable("the message broker is unavailable; nothing was accepted"),
        // The broker may have the message and the ledger could not record
        // the refusal: a 503 would promise what nobody can.
        NotAdmitted::OutcomeUnknown => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "outcome-unknown",
            "Outcome Unknown",
            "the broker did not confirm the submission and the refusal could not be recorded; \
             it may still be delivered: retry with the same Idempotency-Key",
        ),
        NotAdmitted::Ledger(e) if e.is_unavailable() => {
            tracing::warn!(event = "store_failed", error = %e, "the ledger is unavailable; the submission was not accepted");
            unavailable("the ledger is unavailable; nothing was accepted")
        }
        NotAdmitted::Ledger(e) => internal(e),
    }
}

/// Reads a request body of at most `limit` bytes into one buffer, sized
/// by its declared length: a 40 MiB body takes 40 MiB, not twice that, as
/// collecting its frames and joining them would.
async fn read_body(request: Request, limit: usize) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Submission Too Large",
            "the request body exceeds the configured limit (http.max_body_bytes)",
        )
    };
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    let mut frames = request.into_body().into_data_stream();
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "unreadable-body", "Unreadable Body", e.to_string()))?;
        if body.len() + frame.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&frame);
    }
    Ok(body.freeze())
}

fn accepted(id: Uuid) -> Response {
    let location = format!("/v1/submissions/{id}");
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(json!({ "id": id, "status": "accepted" })),
    )
        .into_response()
}

fn unavailable(detail: &str) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service Unavailable", detail).retry_after(RETRY_AFTER_SECS)
}

fn internal(error: impl std::fmt::Display) -> Problem {
    tracing::error!(event = "internal_error", error = %error, "intake failed");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal Error", "the submission was not accepted")
}

/// The request's idempotency key, kept per sender: two senders may use the
/// same key without meeting.
fn idempotency_key(headers: &HeaderMap, body_sha256: [u8; 32], sender: &SenderName) -> Result<Option<IdempotencyKey>, Problem> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .map(|k| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-idempotency-key",
                "Invalid Idempotency-Key",
                "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(IdempotencyKey { key: format!("{sender}:{key}"), fingerprint: body_sha256 }))
}

/// A submission's status, for the sender that handed it in or an operator
/// whose scope it reached; anyone else hears it does not exist.
async fn status(
    State(intake): State<Arc<Intake>>,
    ClientCertificate(certificate): ClientCertificate,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let not_found = || Problem::new(StatusCode::NOT_FOUND, "unknown-submission", "Unknown Submission", "no submission with this id").into_response();
    let pipeline = intake.pipeline.load_full();
    let reader = match pipeline.senders.authenticate(&headers, certificate.as_ref()) {
        Ok(sender) => Ok(sender),
        Err(refused) => match access::bearer(&headers).and_then(|token| pipeline.operators.find(token)) {
            Some(operator) => Err(operator.clone()),
            None => return refused.into_response(),
        },
    };
    let Ok(id) = id.parse::<Uuid>() else { return not_found() };
    let status = match intake.admissions.store.status(id).await {
        Ok(Some(status)) => status,
        Ok(None) => return not_found(),
        Err(e) => return internal(e).into_response(),
    };
    let visible = match reader {
        Ok(sender) => Some(status).filter(|s| s.sender.as_deref() == Some(sender.name.as_str())),
        Err(operator) => access::scoped_status(status, &operator.scope),
    };
    visible.map_or_else(not_found, |status| Json(status).into_response())
}

