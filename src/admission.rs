//! The admission path: what every source of submissions does with a
//! submission once it has parsed one. The HTTP intake is the first source;
//! FIT-Connect joins the same path.
//!
//! The steps, in order: route (longest ARS prefix) → form data against
//! the route's schema → record in the ledger, claiming the idempotency key
//! → large attachments to the blob store → publish once, with mandatory
//! routing and a publisher confirm → record the outcome. [`Admissions::admit`]
//! returns `Ok` only once the broker confirmed the message and the ledger
//! holds the submission: only then may a source tell its sender
//! "accepted". Every `Err` after the ledger record leaves the submission
//! `refused` (so that no worker delivers a message the broker has after
//! all), except [`NotAdmitted::OutcomeUnknown`], which promises nothing.
//! Nothing from form data or attachments is logged.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use uuid::Uuid;

use crate::blobs::BlobStore;
use crate::broker::{BrokerError, Publisher};
use crate::domain::SenderName;
use crate::metrics::{IntakeStep, Metrics, ServiceLabel};
use crate::pipeline::Pipeline;
use crate::routing::Route;
use crate::store::{Claim, IdempotencyKey, NewSubmission, RecentlyAccepted, Refusal, Store, StoreError};
use crate::submission::{FieldError, Submission};

/// What the admission path needs, shared by every source.
pub struct Admissions {
    pub publisher: Arc<Publisher>,
    pub store: Arc<dyn Store>,
    /// Where attachments of at least `keep_above_bytes` wait instead of
    /// travelling in the message (the claim check).
    pub blobs: BlobStore,
    pub keep_above_bytes: usize,
    /// The largest message the broker takes (`broker.max_message_bytes`).
    pub max_message_bytes: usize,
    /// What was accepted moments ago, for this process's workers.
    pub recently_accepted: Arc<RecentlyAccepted>,
    pub metrics: Arc<Metrics>,
}

/// A parsed submission, as a source hands it in.
pub struct Incoming<'a> {
    pub submission: Submission<'a>,
    /// The body the submission was parsed from: attachments kept out of
    /// the message are sliced from it, and the ledger records its size.
    pub body: &'a Bytes,
    /// SHA-256 of `body`, for the ledger (and the idempotency key's
    /// fingerprint, which the source computed from the same hash).
    pub body_sha256: [u8; 32],
    pub sender: &'a SenderName,
    pub idempotency: Option<IdempotencyKey>,
}

/// Why a submission was not admitted. Every variant but `OutcomeUnknown`
/// means "not accepted": the sender may send it again.
#[derive(Debug, thiserror::Error)]
pub enum NotAdmitted {
    #[error("no route delivers service {service} for region {region}")]
    NoRoute { service: String, region: String },
    /// Pointers are relative to the form data (`/name`, not `#/data/name`).
    #[error("the form data does not match the service's schema")]
    InvalidFormData(Vec<FieldError>),
    #[error("a request with this idempotency key is still being processed")]
    KeyInUse,
    #[error("this idempotency key was used for a different submission")]
    KeyReused,
    #[error("the form data is larger than a broker message may be")]
    TooLarge,
    #[error("the attachments could not be stored")]
    AttachmentsNotStored,
    #[error("the broker has no queue for this route")]
    Unroutable,
    #[error("the message broker did not confirm the submission")]
    BrokerUnavailable,
    /// The broker may have the message and the ledger could not record
    /// the refusal: the sender must not hear "not accepted". Retried with
    /// the same idempotency key, the submission resumes under its id.
    #[error("the broker did not confirm the submission and the refusal could not be recorded")]
    OutcomeUnknown,
    #[error("the ledger failed")]
    Ledger(#[source] StoreError),
}

/// Where the ledger record left a submission.
enum Recorded {
    /// Newly recorded, or resumed under the id of an earlier refusal.
    Pending { id: Uuid, received_at: time::OffsetDateTime },
    /// The idempotency key's submission was accepted before.
    AcceptedBefore(Uuid),
}

impl Admissions {
    /// Takes `incoming` through the admission path with `pipeline`'s
    /// routes; the submission's id once it is durable in the broker and
    /// recorded in the ledger.
    pub async fn admit(&self, pipeline: &Pipeline, incoming: Incoming<'_>) -> Result<Uuid, NotAdmitted> {
        let Incoming { mut submission, body, body_sha256, sender, idempotency } = incoming;
        let keyed = idempotency.is_some();
        let route = route(pipeline, &submission)?;
        check_form_data(route, &submission)?;
        let recorded = self.timed(IntakeStep::ledger_record, self.record(&submission, route, body, body_sha256, sender, idempotency));
        let (id, received_at) = match recorded.await? {
            Recorded::AcceptedBefore(id) => return Ok(id),
            Recorded::Pending { id, received_at } => (id, received_at),
        };
        let span = tracing::Span::current();
        span.record("submission", tracing::field::display(id));
        span.record("service", submission.service.as_str());
        self.keep_attachments(pipeline, &mut submission, body, id, keyed).await?;
        let headers = crate::message::for_submission(&submission.service, &submission.region, received_at, crate::telemetry::trace_context());
        let message_id = id.to_string();
        let message = pipeline.sealer.seal(&message_id, submission.region.as_str(), submission.to_message(id, received_at));
        if message.len() > self.max_message_bytes {
            self.refuse(id, keyed, "the form data is larger than a broker message may be").await;
            return Err(NotAdmitted::TooLarge);
        }
        // Until intake has decided, this process's workers wait for its
        // decision rather than ask the ledger.
        let _deciding = self.recently_accepted.deciding(id);
        let published = self.timed(IntakeStep::broker_confirm, self.publisher.publish(&route.routing_key, &message_id, headers, &message));
        match published.await {
            Ok(()) => {
                self.timed(IntakeStep::ledger_confirm, self.confirm(id)).await;
                tracing::info!(event = "submission_accepted", submission = %id, service = submission.service.as_str(),
                    region = %submission.region, targets = %route.routing_key, "submission accepted");
                self.metrics.submissions_received.get_or_create(&ServiceLabel { service: submission.service.as_str().to_owned() }).inc();
                Ok(id)
            }
            Err(error) => self.unconfirmed(id, keyed, error).await,
        }
    }

    /// Waits for `step`, and observes how long it took.
    async fn timed<T>(&self, step: IntakeStep, step_done: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = step_done.await;
        self.metrics.intake_step(step, started.elapsed());
        result
    }

    /// Records the submission, claiming its idempotency key.
    async fn record(
        &self,
        submission: &Submission<'_>,
        route: &Route,
        body: &Bytes,
        body_sha256: [u8; 32],
        sender: &SenderName,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Recorded, NotAdmitted> {
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
            sender: sender.to_string(),
        };
        let fresh = Recorded::Pending { id: record.id, received_at: record.received_at };
        match self.store.begin_intake(record, idempotency).await.map_err(NotAdmitted::Ledger)? {
            Claim::Fresh => Ok(fresh),
            Claim::Replay { id } => Ok(Recorded::AcceptedBefore(id)),
            Claim::Resume { id, received_at } => {
                tracing::info!(event = "intake_resumed", submission = %id, "resuming a submission whose first request did not finish");
                Ok(Recorded::Pending { id, received_at })
            }
            Claim::InProgress => Err(NotAdmitted::KeyInUse),
            Claim::Mismatch => Err(NotAdmitted::KeyReused),
        }
    }

    /// Writes the large attachments to the blob store; the message names
    /// them instead of carrying them.
    async fn keep_attachments(
        &self,
        pipeline: &Pipeline,
        submission: &mut Submission<'_>,
        body: &Bytes,
        id: Uuid,
        keyed: bool,
    ) -> Result<(), NotAdmitted> {
        let storing = Instant::now();
        let mut stored = false;
        for (index, content) in submission.attachments_from(self.keep_above_bytes, body) {
            stored = true;
            match self.blobs.put(id, content, pipeline.sealer.clone()).await {
                Ok(blob) => submission.keep_out(index, blob),
                Err(error) => {
                    self.refuse(id, keyed, "an attachment could not be stored").await;
                    tracing::error!(event = "blob_store_failed", submission = %id, error = %error, "could not store an attachment");
                    return Err(NotAdmitted::AttachmentsNotStored);
                }
            }
        }
        if stored {
            self.metrics.intake_step(IntakeStep::attachments, storing.elapsed());
        }
        Ok(())
    }

    /// The broker confirmed: this process's workers hear it at once, the
    /// ledger records it.
    async fn confirm(&self, id: Uuid) {
        self.recently_accepted.insert(id);
        if let Err(e) = self.store.confirm_intake(id).await {
            // The broker has the submission; only the status view lags.
            tracing::error!(event = "store_failed", submission = %id, error = %e, "could not mark submission accepted");
        }
    }

    /// The broker did not confirm: the submission is refused, unless a
    /// worker accepted it meanwhile or the refusal cannot be recorded.
    async fn unconfirmed(&self, id: Uuid, keyed: bool, error: BrokerError) -> Result<Uuid, NotAdmitted> {
        match self.refuse(id, keyed, "the broker did not confirm the submission").await {
            Some(Refusal::Refused) => {}
            Some(Refusal::AcceptedMeanwhile) => {
                // A worker took it as left undecided (this answer came
                // later than UNDECIDED_AFTER): it is being delivered.
                tracing::warn!(event = "submission_accepted_late", submission = %id, error = %error,
                    "the broker's confirm failed, but a worker had accepted the submission already");
                return Ok(id);
            }
            None => return Err(NotAdmitted::OutcomeUnknown),
        }
        tracing::warn!(event = "submission_refused", submission = %id, error = %error, "broker did not take the submission");
        Err(match error {
            BrokerError::Unroutable(_) => NotAdmitted::Unroutable,
            _ => NotAdmitted::BrokerUnavailable,
        })
    }

    /// Records that the submission is not accepted: the ledger holds it
    /// `refused` (with `reason`), so that no worker delivers it even if the
    /// broker has its message after all (a confirm lost with the
    /// connection). Without an idempotency key its attachments go now;
    /// with one they stay for the sender's retry, which resumes under the
    /// same id. `None` if the ledger could not record it: the submission
    /// stays `received`, and a worker that meets its message holds it back
    /// and accepts it after [`crate::store::UNDECIDED_AFTER`], so the
    /// sender must not hear "not accepted".
    async fn refuse(&self, id: Uuid, keyed: bool, reason: &str) -> Option<Refusal> {
        let refusal = match self.store.refuse_intake(id, reason).await {
            Ok(refusal) => refusal,
            Err(e) => {
                tracing::error!(event = "store_failed", submission = %id, error = %e, "could not record the refusal");
                return None;
            }
        };
        if refusal == Refusal::Refused && !keyed && let Err(e) = self.blobs.remove(id).await {
            // The sweep removes them later: the submission is finished.
            tracing::warn!(event = "blob_store_failed", submission = %id, error = %e, "could not remove the attachments of a refused submission");
        }
        Some(refusal)
    }
}

/// The route for the submission's service and region.
fn route<'p>(pipeline: &'p Pipeline, submission: &Submission<'_>) -> Result<&'p Route, NotAdmitted> {
    pipeline.routes.resolve(&submission.service, &submission.region).ok_or_else(|| NotAdmitted::NoRoute {
        service: submission.service.as_str().to_owned(),
        region: submission.region.to_string(),
    })
}

/// The form data against the route's schema, if it names one.
fn check_form_data(route: &Route, submission: &Submission<'_>) -> Result<(), NotAdmitted> {
    let Some(schema) = &route.schema else { return Ok(()) };
    let problems = schema.problems(&submission.data_value());
    if problems.is_empty() {
        return Ok(());
    }
    Err(NotAdmitted::InvalidFormData(problems.into_iter().map(|(pointer, detail)| FieldError { pointer, detail }).collect()))
}
