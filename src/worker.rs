//! Delivery workers: one consumer per target.
//!
//! Each target has its own connection, channel and queue, with prefetch =
//! the target's concurrency, so a slow or dead back office only ever holds
//! its own messages. For each message the worker renders the target's
//! mapping, hands the document to the connector, and acknowledges only
//! after the outcome is safe:
//!
//! * delivered;
//! * a transient failure: published (with confirm) to the delay queue the
//!   target's [`crate::retry::RetryPolicy`] picks, with the attempt count,
//!   first-attempt time and last error in the headers;
//! * a permanent failure, a message that cannot be read or mapped, or a
//!   transient failure past the policy's `max_age`: published (with
//!   confirm) to the target's parking queue with the [`ParkReason`].
//!
//! If that publish fails the message is returned to the queue instead.
//! The consumer loop reconnects with backon's exponential backoff after the
//! broker went away; unacknowledged messages return to the queue.
//!
//! Attachments in the blob store are read only for the delivery that needs
//! them, after the delivery has room in the shared delivery memory budget
//! (`blobs.delivery_memory_mib`): a zip package takes them as files (they
//! never pass through the mapping), a folder package as streams its
//! connector reads while it writes (no room needed); any other mapping
//! gets them as `content`, encoded in its sandbox process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use amtsbote_connector::{Delivery, FileContent, Outcome, Payload};
use bytes::Bytes;
use futures_lite::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::blobs::{BlobError, BlobStore};
use crate::domain::BlobId;
use crate::broker::{self, BrokerError, Outgoing, Topology};
use crate::budget::MemoryBudget;
use crate::domain::{delivery_id, hex, sha256_hex};
use crate::metrics::{AttemptOutcome, DropReason, Metrics, ParkLabels};
use crate::mapping::{Mapping, PackageFormat, Rendition};
use crate::mapping::sandbox::{EvalError, Sandbox};
use crate::pipeline::{MappingVersions, SharedPipeline, Target};
use crate::message::{self, History, ParkReason, ReplayTicket};
use crate::retry;
use crate::seal::Sealer;
use crate::store::{ActionClaim, Admission, RecentlyAccepted, UNDECIDED_AFTER, AttemptRecord, AttemptResult, Fingerprint, OperatorAction, OperatorRecord, Rendering, Store};

pub struct Worker {
    /// The target as the worker started; its name and concurrency hold
    /// for the worker's life. Mapping, connector and retry policy are taken
    /// from `pipeline` for each message, so that a reload applies.
    pub target: Arc<Target>,
    pub pipeline: SharedPipeline,
    pub topology: Topology,
    pub broker: crate::broker::Endpoint,
    pub store: Arc<dyn Store>,
    pub sandbox: Arc<Sandbox>,
    pub versions: Arc<MappingVersions>,
    pub metrics: Arc<Metrics>,
    pub blobs: BlobStore,
    /// Shared by all workers: bounds the attachments they hold at once.
    pub delivery_memory: MemoryBudget,
    /// What this process's intake accepted moments ago.
    pub recently_accepted: Arc<RecentlyAccepted>,
}

/// A connection that stayed up this long was healthy: the next loss starts
/// the reconnect backoff from the beginning.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// How long a worker waits for an unavailable ledger to take an attempt's
/// outcome before it gives the message back (see `Worker::record`): long
/// enough for a PostgreSQL restart or failover.
const LEDGER_PATIENCE: Duration = Duration::from_secs(120);

impl Worker {
    /// Consumes until `shutdown` turns true; then stops taking messages,
    /// lets deliveries in flight finish for up to `deadline`, and returns
    /// what is still unfinished to the broker by closing the connection.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, deadline: Duration) {
        let mut backoff = broker::reconnect_backoff();
        let mut after_loss = false;
        while !*shutdown.borrow() {
            let started = tokio::time::Instant::now();
            let error = match self.consume(&mut shutdown, deadline, after_loss).await {
                Ok(()) => break,
                Err(e) => e,
            };
            if started.elapsed() >= HEALTHY_SESSION {
                backoff = broker::reconnect_backoff();
            }
            let delay = backoff.next().unwrap_or(broker::MAX_RECONNECT_DELAY);
            tracing::warn!(event = "worker_disconnected", target = %self.target.name, error = %error,
                retry_in_ms = delay.as_millis() as u64, "worker lost the broker; reconnecting");
            after_loss = true;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => break,
            }
        }
    }

    async fn consume(self: &Arc<Self>, shutdown: &mut watch::Receiver<bool>, deadline: Duration, after_loss: bool) -> Result<(), BrokerError> {
        let name = format!("amtsbote-worker-{}", self.target.name);
        let connection = broker::connect(&self.broker, &name).await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&connection, &channel, [&self.target.name]).await?;
        self.topology.declare_delay_ladder(&connection, &channel, &retry::DELAY_LEVELS).await?;
        channel.basic_qos(self.target.concurrency, BasicQosOptions::default()).await?;
        // Retries and parking are published on their own confirm channel.
        let side = connection.create_channel().await?;
        side.confirm_select(ConfirmSelectOptions::default()).await?;
        // Shared by every delivery's task: a lapin `Channel` is a dozen
        // reference counts to clone, an `Arc` one.
        let side = Arc::new(side);
        let mut consumer = channel
            .basic_consume(
                self.topology.work_queue(&self.target.name).into(),
                name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        if after_loss {
            tracing::info!(event = "worker_reconnected", target = %self.target.name, "worker reached the broker again; consuming");
        } else {
            tracing::info!(event = "worker_started", target = %self.target.name, concurrency = self.target.concurrency, "worker consuming");
        }

        let mut in_flight = JoinSet::new();
        let result = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    // Without the side channel no outcome can be handed on;
                    // reconnect rather than requeue every message in a loop.
                    Some(Ok(_)) if !side.status().connected() => break Err(BrokerError::ChannelClosed),
                    Some(Ok(delivery)) => {
                        let worker = self.clone();
                        let side = side.clone();
                        in_flight.spawn(async move { worker.handle(delivery, &side).await });
                    }
                    Some(Err(e)) => break Err(e.into()),
                    None => break Err(BrokerError::ConsumerEnded),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = shutdown.changed() => break Ok(()),
            }
        };
        if result.is_ok() {
            // Shutdown: take no more, finish what is in flight within the
            // deadline, and leave the rest unacknowledged to the broker.
            let _ = channel.basic_cancel(name.as_str().into(), BasicCancelOptions::default()).await;
            let finished = tokio::time::timeout(deadline, async { while in_flight.join_next().await.is_some() {} }).await;
            if finished.is_err() {
                tracing::warn!(event = "shutdown_deadline", target = %self.target.name, unfinished = in_flight.len(),
                    "deliveries still running at the deadline go back to the queue");
                in_flight.abort_all();
            }
        } else {
            in_flight.abort_all();
        }
        close(&connection, &channel).await;
        result
    }

    /// Handles one message; every log line of it carries the submission,
    /// delivery and target (the `delivery` span).
    async fn handle(&self, message: AmqpDelivery, side: &Channel) {
        let id = broker::message_id(&message.properties);
        let delivery = id.parse::<Uuid>().map(|s| delivery_id(s, &self.target.name).to_string()).unwrap_or_default();
        let span = tracing::info_span!("delivery", submission = %id, delivery = %delivery, target = %self.target.name,
            attempt = tracing::field::Empty, outcome = tracing::field::Empty);
        if let Some(headers) = message.properties.headers() {
            crate::telemetry::continue_trace(&span, &message::trace_context(headers));
        }
        self.settle(&id, message, side).instrument(span).await
    }

    async fn settle(&self, id: &str, message: AmqpDelivery, side: &Channel) {
        let no_headers = FieldTable::default();
        let headers = message.properties.headers().as_ref().unwrap_or(&no_headers);
        let mut history = History::from_headers(headers);
        let stopped = match self.gate(id, headers, &history, &message, side).await {
            Gate::Deliver => None,
            Gate::Park(reason) => Some(reason),
            Gate::Settled => return,
        };
        let first_attempt = history.first_attempt.unwrap_or_else(OffsetDateTime::now_utc);
        history.attempts += 1;
        history.first_attempt = Some(first_attempt);
        let target = self.current_target();
        let mapping = self.mapping_for(&target, id, history.mapping_version.as_deref()).await;
        history.mapping_version = Some(mapping.version().to_owned());
        let policy = &target.retry;
        let region = message::region(headers).unwrap_or_default();
        let attempt = match stopped {
            Some(reason) => Attempt { rendering: Rendering::NotReached, duration: None, result: Err(Failure::Park(reason)) },
            None => self.deliver(&target, id, &region, &message.data, &mapping, history.attempts).await,
        };
        let name = &self.target.name;
        let outcome = match &attempt.result {
            Ok(_) => AttemptOutcome::delivered,
            Err(Failure::Transient { .. }) => AttemptOutcome::transient,
            Err(Failure::Park(ParkReason::Rejected(_) | ParkReason::OutsideTenant(_) | ParkReason::UnknownSubmission(_))) => {
                AttemptOutcome::permanent
            }
            Err(Failure::Park(_)) => AttemptOutcome::mapping_error,
        };
        self.metrics.attempt(name, outcome);
        let span = tracing::Span::current();
        span.record("attempt", history.attempts);
        span.record("outcome", tracing::field::debug(outcome));
        if let Some(duration) = attempt.duration {
            self.metrics.attempt_duration.get_or_create(&Metrics::for_target(name)).observe(duration.as_secs_f64());
        }
        let next = match attempt.result {
            Ok(delivered) => Next::Done(delivered),
            Err(Failure::Transient { reason, retry_after }) => {
                history.last_error = Some(reason.clone());
                if policy.exhausted(first_attempt, OffsetDateTime::now_utc()) {
                    Next::Park(ParkReason::RetriesExhausted(reason))
                } else {
                    Next::Retry { delay: policy.delay_after(history.attempts, retry_after), reason }
                }
            }
            Err(Failure::Park(reason)) => {
                history.last_error = Some(reason.to_string());
                Next::Park(reason)
            }
        };
        let settled = match next {
            Next::Done(Delivered { detail, receipt }) => {
                tracing::info!(event = "delivered", attempt = history.attempts, detail = %detail,
                    receipt = receipt.as_deref().unwrap_or(""), "delivered");
                if let Some(received_at) = message::received_at(headers) {
                    let latency = (OffsetDateTime::now_utc() - received_at).as_seconds_f64().max(0.0);
                    self.metrics.delivery_latency.get_or_create(&Metrics::for_target(name)).observe(latency);
                }
                Ok(AttemptResult::Delivered { detail, receipt })
            }
            Next::Retry { delay, reason } => self.hand_on(side, &message, &history, HandOff::Retry(delay)).await.map(|()| {
                tracing::info!(event = "retry_scheduled", attempt = history.attempts, delay = %message::delay_name(delay),
                    error = %reason, "delivery failed; retry scheduled");
                self.metrics.retries.get_or_create(&Metrics::for_target(name)).inc();
                AttemptResult::Retrying { error: reason, retry_in: delay }
            }),
            Next::Park(reason) => self.hand_on(side, &message, &history, HandOff::Park(&reason)).await.map(|()| {
                tracing::warn!(event = "parked", reason = reason.kind(), attempts = history.attempts, error = %reason,
                    "delivery parked");
                self.metrics.parked_total.get_or_create(&ParkLabels { target: name.to_string(), reason: reason.kind().into() }).inc();
                AttemptResult::Parked { reason: reason.kind(), error: reason.to_string() }
            }),
        };
        let result = match settled {
            Ok(result) => result,
            Err(e) => {
                // Neither retried nor parked: the message goes back to the
                // queue (its redelivery count grows, see DELIVERY_LIMIT).
                tracing::error!(event = "requeued", error = %e, "could not hand the message on; it returns to the queue");
                let _ = message.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                return;
            }
        };
        if let Ok(submission) = id.parse::<Uuid>() {
            let record = AttemptRecord {
                submission,
                target: name.clone(),
                attempt: history.attempts,
                mapping_version: mapping.version().to_owned(),
                rendering: attempt.rendering,
                duration: attempt.duration,
                result,
            };
            let delivered = matches!(record.result, AttemptResult::Delivered { .. });
            if !self.record(record).await && delivered {
                // The ledger stayed away: the message returns to the queue
                // unacknowledged, and its next attempt (which reaches the
                // target again, with the same delivery id) records the
                // outcome. A retry or a parking is not given back: its
                // message waits in the delay or parking queue already, and
                // a second copy would take a second path.
                let _ = message.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                return;
            }
        }
        if let Err(e) = message.ack(BasicAckOptions::default()).await {
            // The broker redelivers; the stable delivery id lets the target
            // recognise the repeat.
            tracing::warn!(event = "ack_failed", error = %e, "acknowledgement failed");
        }
    }

    /// Records an attempt's outcome, trying again while the ledger is
    /// unavailable (a PostgreSQL restart or failover) for up to
    /// [`LEDGER_PATIENCE`], so that the ledger keeps every delivery's
    /// true state; false if it stayed away. A write the ledger refuses is
    /// logged and not tried again.
    async fn record(&self, record: AttemptRecord) -> bool {
        use backon::BackoffBuilder as _;
        let mut pauses = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .with_total_delay(Some(LEDGER_PATIENCE))
            .without_max_times()
            .build();
        loop {
            match self.store.record_attempt(record.clone()).await {
                Ok(()) => return true,
                Err(e) if e.is_unavailable() => match pauses.next() {
                    Some(pause) => {
                        tracing::warn!(event = "store_failed", error = %e, "could not record the delivery attempt; trying again");
                        tokio::time::sleep(pause).await;
                    }
                    None => {
                        tracing::error!(event = "store_failed", error = %e, "could not record the delivery attempt; the message returns to the queue");
                        return false;
                    }
                },
                Err(e) => {
                    tracing::error!(event = "store_failed", error = %e, "could not record the delivery attempt");
                    return true;
                }
            }
        }
    }

    /// Whether this message may be delivered. A replayed message's first
    /// attempt records its replay (see [`Self::take_replay`]); the first
    /// copy of a submission from intake asks the ledger whether intake
    /// accepted it, since a 503 must mean "not accepted" even when the
    /// broker has the message (a confirm lost with the connection). Later
    /// attempts were admitted by the first.
    async fn gate(&self, id: &str, headers: &FieldTable, history: &History, message: &AmqpDelivery, side: &Channel) -> Gate {
        if let Some(ticket) = ReplayTicket::from_headers(headers) {
            if self.take_replay(id, history, ticket).await {
                return Gate::Deliver;
            }
            self.metrics.dropped(&self.target.name, DropReason::superseded_replay);
            return self.ack(message).await;
        }
        let first_copy = history.attempts == 0 && history.replays == 0;
        let Ok(submission) = id.parse::<Uuid>() else { return Gate::Deliver };
        if !first_copy || self.recently_accepted.contains(submission) {
            return Gate::Deliver;
        }
        // This process's intake published it and waits for the broker's
        // confirm: its decision arrives here sooner than in the ledger.
        if self.recently_accepted.is_deciding(submission)
            && self.recently_accepted.wait_for_decision(submission, DECISION_PAUSES.iter().sum()).await
        {
            return Gate::Deliver;
        }
        // The broker often hands the message over before intake has
        // recorded the broker's confirm: a young undecided submission is
        // asked about again after short pauses before it is held back.
        let mut pauses = DECISION_PAUSES.into_iter();
        let admission = loop {
            match self.store.admission(submission, self.target.name.as_str()).await {
                Ok(Admission::Undecided { received_at })
                    if OffsetDateTime::now_utc() - received_at < UNDECIDED_AFTER
                        && let Some(pause) = pauses.next() =>
                {
                    // Woken at once if this process's intake hears the confirm.
                    if self.recently_accepted.wait_for(submission, pause).await {
                        return Gate::Deliver;
                    }
                }
                Ok(admission) => break admission,
                Err(e) => {
                    tracing::error!(event = "store_failed", error = %e, "could not ask the ledger whether intake accepted the submission; holding it back");
                    return self.hold(message, side, history, HOLD_LONG).await;
                }
            }
        };
        match admission {
            Admission::Accepted { done: false } => Gate::Deliver,
            Admission::Accepted { done: true } => {
                tracing::info!(event = "duplicate_dropped", "dropped a second copy: the target has this submission already");
                self.metrics.dropped(&self.target.name, DropReason::duplicate);
                self.ack(message).await
            }
            Admission::Refused => {
                tracing::warn!(event = "refused_dropped", "dropped the message of a submission intake refused (answered with an error)");
                self.metrics.dropped(&self.target.name, DropReason::refused);
                if let Err(e) = self.store.record_refused_message(submission, self.target.name.as_str()).await {
                    tracing::error!(event = "store_failed", error = %e, "could not record the dropped message");
                }
                self.ack(message).await
            }
            Admission::Undecided { received_at } => {
                let age = OffsetDateTime::now_utc() - received_at;
                if age < UNDECIDED_AFTER {
                    let delay = if age < HOLD_LONG_AFTER { HOLD_SHORT } else { HOLD_LONG };
                    tracing::info!(event = "held_back", "intake has not decided on the submission yet; holding it back");
                    return self.hold(message, side, history, delay).await;
                }
                let received_before = OffsetDateTime::now_utc() - UNDECIDED_AFTER;
                match self.store.accept_undecided(submission, received_before).await {
                    Ok(true) => {
                        tracing::warn!(event = "undecided_accepted", after_s = UNDECIDED_AFTER.as_secs(),
                            "intake never answered for this submission (it stopped before the broker's confirm); accepted and delivered");
                        Gate::Deliver
                    }
                    // Refused or resumed meanwhile: ask again after a pause.
                    Ok(false) => self.hold(message, side, history, HOLD_SHORT).await,
                    Err(e) => {
                        tracing::error!(event = "store_failed", error = %e, "could not accept an undecided submission; holding it back");
                        self.hold(message, side, history, HOLD_LONG).await
                    }
                }
            }
            Admission::Unknown => Gate::Park(ParkReason::UnknownSubmission(
                "the ledger does not know this submission, so it cannot say that intake accepted it".into(),
            )),
        }
    }

    /// Puts a message aside for `delay` (through the delay ladder, its
    /// attempt history unchanged), then acknowledges it.
    async fn hold(&self, message: &AmqpDelivery, side: &Channel, history: &History, delay: Duration) -> Gate {
        match self.hand_on(side, message, history, HandOff::Retry(delay)).await {
            Ok(()) => self.ack(message).await,
            Err(e) => {
                tracing::error!(event = "requeued", error = %e, "could not hold the message back; it returns to the queue");
                let _ = message.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                Gate::Settled
            }
        }
    }

    async fn ack(&self, message: &AmqpDelivery) -> Gate {
        if let Err(e) = message.ack(BasicAckOptions::default()).await {
            tracing::warn!(event = "ack_failed", error = %e, "acknowledgement failed");
        }
        Gate::Settled
    }

    /// Records in the ledger the replay a replayed message's first attempt
    /// carries; false if another action took that parked copy first (the
    /// message is a leftover of an interrupted replay and must not be
    /// delivered). A ledger that cannot be written does not stop the
    /// delivery: nothing may be lost for want of an audit row.
    async fn take_replay(&self, id: &str, history: &History, ticket: ReplayTicket) -> bool {
        let record = OperatorRecord {
            operator: ticket.operator,
            action: OperatorAction::Replay,
            target: self.target.name.to_string(),
            submission_id: id.to_owned(),
            parked_reason: ticket.parked_reason,
            comment: None,
            generation: Some(history.replays.saturating_sub(1)),
            replay: Some(ticket.id),
        };
        match self.store.record_operator_action(record).await {
            Ok(ActionClaim::Recorded | ActionClaim::Repeated) => true,
            Ok(ActionClaim::Superseded) => {
                tracing::warn!(event = "replay_superseded", replay = %ticket.id,
                    "dropped a replayed message: another operator action took its parked delivery first");
                false
            }
            Err(e) => {
                tracing::error!(event = "store_failed", error = %e, "could not record the replay; delivering all the same");
                true
            }
        }
    }

    /// The target's settings in the pipeline in use.
    fn current_target(&self) -> Arc<Target> {
        self.pipeline.load().targets.get(&self.target.name).cloned().unwrap_or_else(|| self.target.clone())
    }

    /// The mapping a delivery uses: the version its first attempt used,
    /// else the target's current one.
    async fn mapping_for(&self, target: &Target, submission: &str, pinned: Option<&str>) -> Arc<Mapping> {
        let current = &target.mapping;
        match pinned {
            None => current.clone(),
            Some(v) if v == current.version() => current.clone(),
            Some(v) => match self.versions.get(v).await {
                Some(m) => m,
                None => {
                    tracing::warn!(event = "mapping_version_unknown", submission = %submission, target = %self.target.name,
                        pinned = v, current = current.version(), "the mapping version of this delivery is unknown; using the current one");
                    current.clone()
                }
            },
        }
    }

    /// Renders and delivers.
    async fn deliver(&self, target: &Target, message_id: &str, region: &str, body: &[u8], mapping: &Mapping, attempt: u32) -> Attempt {
        let stopped = |rendering, failure| Attempt { rendering, duration: None, result: Err(failure) };
        let refused = |reason| stopped(Rendering::NotReached, Failure::Park(reason));
        let Ok(id) = message_id.parse::<Uuid>() else {
            return refused(ParkReason::Undecodable("message has no submission id".into()));
        };
        if !target.admits(region) {
            tracing::error!(event = "outside_tenant", region, "a submission of another tenant's region reached this target; parked");
            return refused(ParkReason::OutsideTenant(format!("region {region:?} is not of the target's tenant")));
        }
        let sealer = self.pipeline.load().sealer.clone();
        let sealed = crate::seal::is_sealed(body);
        let body = match sealer.open(message_id, region, body) {
            Ok(body) => body,
            Err(e) => return refused(ParkReason::Undecodable(e.to_string())),
        };
        // A message that does not read is the mapping's to refuse.
        let stored: Vec<(usize, BlobId, u64)> =
            message::stored_attachments(&body).into_iter().map(|a| (a.index, a.blob, a.size)).collect();
        let package = mapping.package_format();
        // What the delivery will hold at most: nothing of a folder's files
        // (streamed to the target), the attachments and the zip made of
        // them, or their base64 in the document.
        let holds = match package {
            Some(PackageFormat::Folder) => 0,
            Some(PackageFormat::Zip) => 2,
            None => 3,
        };
        let _room = match stored.iter().map(|(_, _, size)| size).sum::<u64>().saturating_mul(holds) {
            0 => None,
            bytes => Some(self.delivery_memory.reserve(bytes).await),
        };
        // A package takes stored attachments as files; any other mapping
        // reads them as `content`.
        let attached = match package {
            Some(_) => Vec::new(),
            None => match self.read_stored(id, stored.iter().map(|(_, blob, _)| *blob).collect(), sealed, sealer.clone()).await {
                Ok(read) => stored.iter().map(|(index, blob, _)| (*index, read[blob].clone())).collect(),
                Err(failure) => return stopped(Rendering::NotReached, failure),
            },
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mapping_span = tracing::info_span!("mapping", version = mapping.version());
        let mapping_started = std::time::Instant::now();
        let rendition = self.sandbox.render(mapping, &body, &attached, now).instrument(mapping_span).await;
        self.metrics.mapping_duration.get_or_create(&Metrics::for_target(&target.name)).observe(mapping_started.elapsed().as_secs_f64());
        drop(attached);
        let rendition = match rendition {
            Ok(rendition) => rendition,
            Err(e) => {
                if matches!(e, EvalError::Mapping(_) | EvalError::Undecodable(_)) {
                    self.metrics.mapping_errors.get_or_create(&Metrics::for_target(&target.name)).inc();
                }
                return stopped(Rendering::Failed, match e {
                    EvalError::Mapping(e) => Failure::Park(ParkReason::Mapping(e.to_string())),
                    EvalError::Undecodable(e) => Failure::Park(ParkReason::Undecodable(format!("message is not JSON ({e})"))),
                    unavailable @ EvalError::Unavailable(_) => Failure::Transient { reason: unavailable.to_string(), retry_after: None },
                });
            }
        };
        let sizes: HashMap<BlobId, u64> = stored.iter().map(|(_, blob, size)| (*blob, *size)).collect();
        let payload = match self.finish(id, rendition, &sizes, sealed, sealer).await {
            Ok(payload) => payload,
            Err(failure) => return stopped(Rendering::Failed, failure),
        };
        let rendering = Rendering::Rendered(fingerprint(&payload));
        let delivery = Delivery {
            submission_id: id,
            delivery_id: delivery_id(id, &target.name),
            target: target.name.to_string(),
            payload,
            mapping_version: mapping.version().to_owned(),
            attempt,
        };
        let started = std::time::Instant::now();
        let outcome = target.connector.deliver(&delivery).instrument(tracing::info_span!("connector", attempt)).await;
        let duration = Some(started.elapsed());
        let result = match outcome {
            Outcome::Delivered { detail, receipt } => Ok(Delivered { detail, receipt }),
            Outcome::Transient { reason, retry_after } => Err(Failure::Transient { reason, retry_after }),
            Outcome::Permanent { reason } => Err(Failure::Park(ParkReason::Rejected(reason))),
        };
        Attempt { rendering, duration, result }
    }

    /// Reads `blobs` of `submission` from the blob store. A blob that is
    /// gone or does not open is parked; one that cannot be read now (the
    /// disk, the mount) is tried again.
    async fn read_stored(&self, submission: Uuid, blobs: Vec<BlobId>, sealed: bool, sealer: Arc<Sealer>) -> Result<HashMap<BlobId, Bytes>, Failure> {
        let mut read = HashMap::with_capacity(blobs.len());
        for blob in blobs {
            if read.contains_key(&blob) {
                continue;
            }
            match self.blobs.get(submission, blob, sealed, sealer.clone()).await {
                Ok(bytes) => {
                    read.insert(blob, bytes);
                }
                Err(e @ (BlobError::Missing(_) | BlobError::Damaged { .. })) => {
                    tracing::error!(event = "blob_unreadable", blob = %blob, error = %e, "an attachment of this delivery is gone or damaged");
                    return Err(Failure::Park(ParkReason::Undecodable(e.to_string())));
                }
                Err(e) => return Err(Failure::Transient { reason: e.to_string(), retry_after: None }),
            }
        }
        Ok(read)
    }

    /// The connector's payload: a zip's stored attachments read in and
    /// zipped (off the async threads: it copies every byte), a folder's
    /// streamed from the blob store as the connector writes them. `sizes`:
    /// of the submission's stored attachments, as its message says.
    async fn finish(&self, submission: Uuid, rendition: Rendition, sizes: &HashMap<BlobId, u64>, sealed: bool, sealer: Arc<Sealer>) -> Result<Payload, Failure> {
        let finished = match rendition {
            Rendition::Package { format: PackageFormat::Zip, .. } => {
                let stored = self.read_stored(submission, rendition.stored().collect(), sealed, sealer).await?;
                tokio::task::spawn_blocking(move || rendition.into_payload(|blob| stored.get(&blob).cloned().map(FileContent::Bytes)))
                    .await
                    .unwrap_or_else(|e| Err(format!("packing failed: {e}")))
            }
            rendition => rendition.into_payload(|blob| Some(self.blobs.streamed(submission, blob, *sizes.get(&blob)?, sealed, sealer.clone()))),
        };
        finished.map_err(|message| Failure::Park(ParkReason::Mapping(message)))
    }

    /// Publishes the message, with confirm, to the delay queue of a retry
    /// (the broker returns it to the work queue when the delay is over) or
    /// to the parking queue.
    async fn hand_on(&self, side: &Channel, message: &AmqpDelivery, history: &History, to: HandOff<'_>) -> Result<(), BrokerError> {
        let original = message.properties.headers().as_ref();
        let (exchange, routing_key, headers) = match to {
            HandOff::Retry(delay) => (
                self.topology.delay_exchange(),
                self.topology.work_queue(&self.target.name),
                message::for_retry(original, history, delay),
            ),
            HandOff::Park(reason) => (
                String::new(),
                self.topology.parking_queue(&self.target.name),
                message::for_parking(original, history, reason, &self.target.name),
            ),
        };
        let message_id = broker::message_id(&message.properties);
        broker::publish_confirmed(
            side,
            Outgoing { exchange: &exchange, routing_key: &routing_key, message_id: &message_id, headers, body: &message.data },
        )
        .await
    }
}

/// What [`Worker::gate`] lets happen to a message.
enum Gate {
    Deliver,
    /// Park it without an attempt.
    Park(ParkReason),
    /// Dropped or held back: acknowledged already.
    Settled,
}

/// How long a message of a submission intake has not decided on yet is
/// held back: briefly at first (intake usually decides within
/// milliseconds), longer once it waits for a slow broker confirm.
const HOLD_SHORT: Duration = Duration::from_secs(1);
const HOLD_LONG: Duration = Duration::from_secs(5);
const HOLD_LONG_AFTER: time::Duration = time::Duration::seconds(12);

/// Pauses between asking the ledger again about a submission intake has
/// not decided on yet, before the message is held back (about 0.2 s in
/// all): intake records the broker's confirm within milliseconds of it.
const DECISION_PAUSES: [Duration; 6] = [
    Duration::from_millis(2),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
];

/// One attempt: what the mapping made and what the target said.
struct Attempt {
    rendering: Rendering,
    /// How long the connector took; `None` when it was not called.
    duration: Option<Duration>,
    result: Result<Delivered, Failure>,
}

struct Delivered {
    detail: String,
    receipt: Option<String>,
}

/// Size and SHA-256 of a rendered payload, for the ledger. A package is
/// hashed as its files' paths, sizes and SHA-256s in order: a streamed
/// file's hash is its name in the blob store, so it need not be read.
fn fingerprint(payload: &Payload) -> Fingerprint {
    match payload {
        Payload::Document { body, .. } => Fingerprint { size: body.len(), sha256: sha256_hex(body) },
        Payload::Files(files) => {
            use sha2::Digest;
            let mut hash = sha2::Sha256::new();
            for file in files {
                hash.update(file.path.as_bytes());
                hash.update(file.content.len().to_be_bytes());
                hash.update(file.content.sha256());
            }
            Fingerprint { size: payload.len(), sha256: hex(&hash.finalize()) }
        }
    }
}

enum Next {
    Done(Delivered),
    Retry { delay: Duration, reason: String },
    Park(ParkReason),
}

/// Where a message that was not delivered goes next.
enum HandOff<'a> {
    Retry(Duration),
    Park(&'a ParkReason),
}

enum Failure {
    Transient { reason: String, retry_after: Option<Duration> },
    Park(ParkReason),
}

async fn close(connection: &Connection, channel: &Channel) {
    let _ = channel.close(200, "shutdown".into()).await;
    let _ = connection.close(200, "shutdown".into()).await;
}
