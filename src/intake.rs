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
use crate::blobs::BlobStore;
use crate::budget::{MemoryBudget, Reserved};
use crate::broker::{BrokerError, Publisher};
use crate::domain::SenderName;
use crate::metrics::{Metrics, ProblemLabel, ServiceLabel};
use crate::problem::Problem;
use crate::pipeline::SharedPipeline;
use crate::store::{Claim, IdempotencyKey, NewSubmission, RecentlyAccepted, Refusal, Store};
use crate::submission::{FieldError, InvalidSubmission, Submission};
use crate::access::Sender;
use crate::pipeline::Pipeline;
use crate::tls::ClientCertificate;

/// The OpenAPI 3.1 description of every endpoint, served at
/// `/v1/openapi.json`; `tests/integration/openapi.rs` holds the running
/// server to it.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECS: u64 = 5;

pub struct Intake {
    /// Routes come from the pipeline in use (see [`SharedPipeline`]).
    pub pipeline: SharedPipeline,
    pub publisher: Arc<Publisher>,
    pub store: Arc<dyn Store>,
    /// Set when shutdown begins: new submissions get 503.
    pub draining: AtomicBool,
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
    /// Where attachments of at least `keep_above_bytes` wait instead of
    /// travelling in the message (the claim check).
    pub blobs: BlobStore,
    pub keep_above_bytes: usize,
    /// The largest message the broker takes (`broker.max_message_bytes`).
    pub max_message_bytes: usize,
    /// What this intake accepted moments ago, for this process's workers.
    pub recently_accepted: Arc<RecentlyAccepted>,
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
    // One hash of the body serves the ledger and the idempotency check.
    let body_sha256: [u8; 32] = Sha256::digest(&body).into();
    let idempotency = idempotency_key(headers, body_sha256, &sender.name)?;
    let keyed = idempotency.is_some();

    let mut submission = Submission::parse(&body, &intake.limits).map_err(|invalid| match invalid {
        InvalidSubmission::Malformed(reason) => Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            format!("the body is not valid JSON: {reason}"),
        ),
        InvalidSubmission::Fields(errors) => {
            Problem::fields(StatusCode::BAD_REQUEST, "invalid-submission", "Invalid Submission", "invalid field(s)", errors)
        }
    })?;

    let refused = sender.refusals(&submission.service, &submission.region);
    if !refused.is_empty() {
        tracing::warn!(event = "submission_forbidden", sender = %sender.name, service = submission.service.as_str(),
            region = %submission.region, "a sender submitted outside what it is allowed");
        return Err(Problem::fields(StatusCode::FORBIDDEN, "forbidden", "Forbidden", "the sender may not submit this", refused));
    }
    let Some(route) = pipeline.routes.resolve(&submission.service, &submission.region) else {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-route",
            "No Route",
            format!(
                "no route delivers service {} for region {}",
                submission.service.as_str(),
                submission.region
            ),
        )
        .with_errors(vec![
            FieldError { pointer: "#/service".into(), detail: "no route for this service and region".into() },
            FieldError { pointer: "#/region".into(), detail: "no route for this service and region".into() },
        ]));
    };

    if let Some(schema) = &route.schema {
        let problems = schema.problems(&submission.data_value());
        if !problems.is_empty() {
            let errors: Vec<FieldError> = problems
                .into_iter()
                .map(|(pointer, detail)| FieldError { pointer: format!("#/data{pointer}"), detail })
                .collect();
            return Err(Problem::fields(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-form-data",
                "Invalid Form Data",
                "the form data does not match the service's schema at",
                errors,
            ));
        }
    }

    let record = NewSubmission {
        // Time-ordered (UUIDv7): the ledger's indexes take new ids at
        // their end instead of at random pages, which under load is most
        // of the ledger's write cost.
        id: Uuid::now_v7(),
        service: submission.service.as_str().to_owned(),
        region: submission.region.as_str().to_owned(),
        reference: submission.reference.clone(),
        received_at: crate::domain::now_millis(),
        targets: route.targets.clone(),
        size: body.len(),
        sha256: crate::domain::hex(&body_sha256),
        sender: sender.name.to_string(),
    };
    let fresh = (record.id, record.received_at);
    let (id, received_at) = match intake.store.begin_intake(record, idempotency).await.map_err(internal)? {
        Claim::Fresh => fresh,
        Claim::Replay { id } => return Ok(accepted(id)),
        Claim::Resume { id, received_at } => {
            tracing::info!(event = "intake_resumed", submission = %id, "resuming a submission whose first request did not finish");
            (id, received_at)
        }
        Claim::InProgress => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "idempotency-key-in-use",
                "Request In Progress",
                "a request with this Idempotency-Key is still being processed; retry shortly",
            )
            .retry_after(1));
        }
        Claim::Mismatch => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key Reused",
                "this Idempotency-Key was used for a different request body",
            ));
        }
    };

    let span = tracing::Span::current();
    span.record("submission", tracing::field::display(id));
    span.record("service", submission.service.as_str());
    for (index, content) in submission.attachments_from(intake.keep_above_bytes, &body) {
        match intake.blobs.put(id, content, pipeline.sealer.clone()).await {
            Ok(blob) => submission.keep_out(index, blob),
            Err(error) => {
                refuse(intake, id, keyed, "an attachment could not be stored").await;
                tracing::error!(event = "blob_store_failed", submission = %id, error = %error, "could not store an attachment");
                return Err(unavailable("the attachments could not be stored; nothing was accepted"));
            }
        }
    }
    let headers = crate::message::for_submission(&submission.service, &submission.region, received_at, crate::telemetry::trace_context());
    let message_id = id.to_string();
    let message = pipeline.sealer.seal(&message_id, submission.region.as_str(), submission.to_message(id, received_at));
    if message.len() > intake.max_message_bytes {
        refuse(intake, id, keyed, "the form data is larger than a broker message may be").await;
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Submission Too Large",
            "the form data is larger than a broker message may be (broker.max_message_bytes); large attachments are fine",
        ));
    }
    match intake.publisher.publish(&route.routing_key, &message_id, headers, &message).await {
        Ok(()) => {
            intake.recently_accepted.insert(id);
            if let Err(e) = intake.store.confirm_intake(id).await {
                // The broker has the submission; only the status view lags.
                tracing::error!(event = "store_failed", submission = %id, error = %e, "could not mark submission accepted");
            }
            tracing::info!(event = "submission_accepted", submission = %id, service = submission.service.as_str(),
                region = %submission.region, targets = %route.routing_key, "submission accepted");
            intake.metrics.submissions_received.get_or_create(&ServiceLabel { service: submission.service.as_str().to_owned() }).inc();
            Ok(accepted(id))
        }
        Err(error) => {
            match refuse(intake, id, keyed, "the broker did not confirm the submission").await {
                Some(Refusal::Refused) => {}
                Some(Refusal::AcceptedMeanwhile) => {
                    // A worker took it as left undecided (this answer came
                    // later than UNDECIDED_AFTER): it is being delivered.
                    tracing::warn!(event = "submission_accepted_late", submission = %id, error = %error,
                        "the broker's confirm failed, but a worker had accepted the submission already");
                    return Ok(accepted(id));
                }
                // The broker may have the message and the ledger could not
                // record the refusal: a 503 would promise what nobody can.
                None => {
                    return Err(Problem::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "outcome-unknown",
                        "Outcome Unknown",
                        "the broker did not confirm the submission and the refusal could not be recorded; \
                         it may still be delivered: retry with the same Idempotency-Key",
                    ));
                }
            }
            tracing::warn!(event = "submission_refused", submission = %id, error = %error, "broker did not take the submission");
            Err(match error {
                BrokerError::Unroutable(_) => unavailable("the broker has no queue for this route; an operator must check the topology"),
                _ => unavailable("the message broker is unavailable; nothing was accepted"),
            })
        }
    }
}

/// Records that intake answers the submission with an error: the ledger
/// holds it `refused` (with `reason`), so that no worker delivers it even
/// if the broker has its message after all (a confirm lost with the
/// connection). Without an idempotency key its attachments go now; with
/// one they stay for the client's retry, which resumes under the same id.
/// `None` if the ledger could not record it: the submission stays
/// `received`, and a worker that meets its message holds it back and
/// accepts it after [`crate::store::UNDECIDED_AFTER`], so the client must
/// not hear "not accepted".
async fn refuse(intake: &Intake, id: Uuid, keyed: bool, reason: &str) -> Option<Refusal> {
    let refusal = match intake.store.refuse_intake(id, reason).await {
        Ok(refusal) => refusal,
        Err(e) => {
            tracing::error!(event = "store_failed", submission = %id, error = %e, "could not record the refusal");
            return None;
        }
    };
    if refusal == Refusal::Refused && !keyed && let Err(e) = intake.blobs.remove(id).await {
        // The sweep removes them later: the submission is finished.
        tracing::warn!(event = "blob_store_failed", submission = %id, error = %e, "could not remove the attachments of a refused submission");
    }
    Some(refusal)
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
    let status = match intake.store.status(id).await {
        Ok(Some(status)) => status,
        Ok(None) => return not_found(),
        Err(e) => return internal(e).into_response(),
    };
    let visible = match reader {
        Ok(sender) => Some(status).filter(|s| s.sender.as_deref() == Some(sender.name.as_str())),
        Err(operator) => crate::operator::scoped_status(status, &operator.scope),
    };
    visible.map_or_else(not_found, |status| Json(status).into_response())
}

