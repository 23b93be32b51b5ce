//! Parked deliveries: list, show, replay and discard.
//!
//! The parking queues in the broker are the truth: a parked message stays
//! there until an operator replays or discards it. To look at them, the
//! [`ParkingLot`] takes every message of a parking queue without
//! acknowledging it, acts on the ones the [`Selection`] matches, and
//! returns the others to the queue. Were the process to die half-way, the
//! broker would return every unacknowledged message; nothing is lost.
//!
//! * replay: republish (with confirm) to the target's work queue with a
//!   fresh attempt history and a [`ReplayTicket`], record the action, then
//!   acknowledge the parked copy.
//! * discard: record the action, then acknowledge.
//!
//! One command acts on each delivery at most once: a replayed delivery
//! that fails again is parked anew while the sweep still runs, and that
//! copy waits for the next command. Each parked copy takes at most one
//! action, whoever asks: the ledger holds one action per parked copy (the
//! delivery's replay count when parked, see
//! [`crate::store::ActionClaim`]). A replay interrupted between its
//! publish and the acknowledgement leaves its message in the work queue
//! and the parked copy back in the parking queue; whichever is acted on
//! first (the worker recording the replay from the ticket, or another
//! replay or discard) takes the parked copy, the other is dropped, and a
//! sweep that meets a parked copy already taken removes it. So each
//! delivery ends up parked once or replayed once, never both.
//!
//! Every replay and discard is written to the store's audit trail with
//! the operator and the time. Nothing here reads the message body beyond
//! its size: bodies carry personal data.

use crate::broker::BrokerSettings;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::broker::{self, BrokerError, Outgoing, Topology};
use crate::domain::{TargetName, delivery_id};
use crate::message::{self, History, ReplayTicket};
use crate::store::{ActionClaim, OperatorAction, OperatorRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ParkingError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no target named {0} is configured")]
    UnknownTarget(String),
}

/// One parked delivery, as operators see it: ids, reason and history,
/// never the content.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedDelivery {
    pub target: String,
    pub submission_id: String,
    pub delivery_id: Option<String>,
    /// `target-rejected`, `retries-exhausted`, `mapping-error`,
    /// `undecodable`, or `redelivery-limit` (the broker parked it after
    /// repeated deliveries without an outcome, e.g. worker crashes).
    pub reason: String,
    /// The last failure: the target's answer (`HTTP 422`) or the error.
    pub last_error: Option<String>,
    pub attempts: u32,
    pub first_attempt_at: Option<String>,
    pub parked_at: Option<String>,
    pub replays: u32,
    /// Size of the queued submission in bytes.
    pub size: usize,
}

/// Which parked deliveries an operation applies to. Every given field must
/// match; an empty selection matches everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selection {
    pub target: Option<TargetName>,
    /// A parking reason such as `target-rejected`.
    pub reason: Option<String>,
    /// Parked at least this long ago (`30m`, `2h`, `3d`).
    #[serde(default, with = "humantime_serde")]
    pub older_than: Option<Duration>,
    pub submission: Option<Uuid>,
    /// Only these targets (an operator's scope); set by the server, never
    /// taken from a request.
    #[serde(skip)]
    pub within: Option<std::collections::BTreeSet<TargetName>>,
}

impl Selection {
    /// This selection, limited to what an operator of `scope` sees.
    pub fn within(self, scope: &crate::access::Scope) -> Self {
        Self { within: scope.targets().cloned(), ..self }
    }

    pub fn is_everything(&self) -> bool {
        self.target.is_none() && self.reason.is_none() && self.older_than.is_none() && self.submission.is_none()
    }

    fn matches(&self, parked: &ParkedDelivery, parked_at: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == parked.reason)
            && self.submission.is_none_or(|s| s.to_string() == parked.submission_id)
            && self.older_than.is_none_or(|age| parked_at.is_some_and(|at| now - at >= age))
    }
}

/// What to do with the selected deliveries.
#[derive(Debug, Clone)]
pub enum Action {
    Replay { operator: String },
    Discard { operator: String, comment: Option<String> },
}

pub struct ParkingLot {
    pub broker: crate::broker::Endpoint,
    pub topology: Topology,
    pub targets: Vec<TargetName>,
    pub store: Arc<dyn Store>,
    /// One sweep at a time: a sweep holds the messages it took, so a
    /// second one running alongside would see an incomplete queue.
    sweeping: tokio::sync::Mutex<()>,
}

impl ParkingLot {
    pub fn new(broker: &BrokerSettings, targets: Vec<TargetName>, store: Arc<dyn Store>) -> Self {
        Self {
            broker: broker.endpoint(),
            topology: Topology::of(broker),
            targets,
            store,
            sweeping: tokio::sync::Mutex::new(()),
        }
    }

    /// The selected parked deliveries, oldest first per target.
    pub async fn list(&self, selection: &Selection) -> Result<Vec<ParkedDelivery>, ParkingError> {
        self.sweep(selection, None).await
    }

    /// One parked delivery.
    pub async fn find(&self, target: TargetName, submission: Uuid) -> Result<Option<ParkedDelivery>, ParkingError> {
        let selection = Selection { target: Some(target), submission: Some(submission), ..Selection::default() };
        Ok(self.list(&selection).await?.into_iter().next())
    }

    /// Applies `action` to the selected deliveries; returns them.
    pub async fn apply(&self, selection: &Selection, action: &Action) -> Result<Vec<ParkedDelivery>, ParkingError> {
        self.sweep(selection, Some(action)).await
    }

    async fn sweep(&self, selection: &Selection, action: Option<&Action>) -> Result<Vec<ParkedDelivery>, ParkingError> {
        let seen = |target: &TargetName| selection.within.as_ref().is_none_or(|within| within.contains(target));
        let targets: Vec<TargetName> = match &selection.target {
            // Out of scope is answered as unknown: it tells nothing.
            Some(wanted) if !self.targets.contains(wanted) || !seen(wanted) => {
                return Err(ParkingError::UnknownTarget(wanted.to_string()));
            }
            Some(wanted) => vec![wanted.clone()],
            None => self.targets.iter().filter(|t| seen(t)).cloned().collect(),
        };
        let _one_at_a_time = self.sweeping.lock().await;
        let connection = broker::connect(&self.broker, "amtsbote-parking").await?;
        let channel = connection.create_channel().await.map_err(BrokerError::from)?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(BrokerError::from)?;
        self.topology.declare(&connection, &channel, &targets).await?;
        let mut selected = Vec::new();
        let mut result = Ok(());
        for target in &targets {
            if let Err(e) = self.sweep_target(&channel, target, selection, action, &mut selected).await {
                result = Err(e);
                break;
            }
        }
        // Closing returns whatever is still unacknowledged to the queue.
        let _ = channel.close(200, "done".into()).await;
        let _ = connection.close(200, "done".into()).await;
        result.map(|()| selected)
    }

    async fn sweep_target(
        &self,
        channel: &Channel,
        target: &TargetName,
        selection: &Selection,
        action: Option<&Action>,
        selected: &mut Vec<ParkedDelivery>,
    ) -> Result<(), ParkingError> {
        let queue = self.topology.parking_queue(target);
        let now = OffsetDateTime::now_utc();
        // Returned to the queue only at the end (what was not selected, and
        // all of a listing): returned earlier, they would be taken again.
        let mut to_return = Vec::new();
        // A delivery replayed by this sweep may fail again and be parked
        // anew before the sweep ends: that copy waits for the next command.
        let mut acted_on = std::collections::HashSet::new();
        while let Some(taken) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(BrokerError::from)?
        {
            let message = taken.delivery;
            let (parked, parked_at) = describe(target, &message.properties, message.data.len());
            if acted_on.contains(&parked.submission_id) {
                to_return.push(message.delivery_tag);
                continue;
            }
            if let Some(taken_by) = self.store.parked_action(&parked.submission_id, target.as_str(), parked.replays).await? {
                channel.basic_ack(message.delivery_tag, BasicAckOptions::default()).await.map_err(BrokerError::from)?;
                tracing::warn!(event = "parked_copy_removed", submission = %parked.submission_id, target = %target,
                    action = taken_by.as_str(), "removed a parked copy whose delivery was replayed or discarded already (an interrupted operator action)");
                continue;
            }
            if !selection.matches(&parked, parked_at, now) {
                to_return.push(message.delivery_tag);
                continue;
            }
            let (claim, event, operator) = match action {
                None => {
                    to_return.push(message.delivery_tag);
                    selected.push(parked);
                    continue;
                }
                Some(Action::Replay { operator }) => {
                    let ticket = ReplayTicket { id: Uuid::now_v7(), operator: operator.clone(), parked_reason: parked.reason.clone() };
                    self.replay(channel, target, &parked, &ticket, message.properties.headers().as_ref(), &message.data).await?;
                    (self.record(&parked, operator, None, OperatorAction::Replay, Some(ticket.id)).await?, "parked_replayed", operator)
                }
                Some(Action::Discard { operator, comment }) => {
                    let claim = self.record(&parked, operator, comment.clone(), OperatorAction::Discard, None).await?;
                    (claim, "parked_discarded", operator)
                }
            };
            channel.basic_ack(message.delivery_tag, BasicAckOptions::default()).await.map_err(BrokerError::from)?;
            acted_on.insert(parked.submission_id.clone());
            if claim == ActionClaim::Superseded {
                // Another replay or discard took this parked copy while we
                // worked (a worker that took an interrupted replay's
                // message): that one stands, and our replayed message is
                // dropped by its worker.
                tracing::warn!(event = "parked_action_superseded", submission = %parked.submission_id, target = %target,
                    "another operator action took this parked delivery first; it stands");
                continue;
            }
            tracing::info!(event, submission = %parked.submission_id, target = %target, operator = %operator,
                "operator action on a parked delivery");
            selected.push(parked);
        }
        for tag in to_return {
            channel
                .basic_nack(tag, BasicNackOptions { requeue: true, ..Default::default() })
                .await
                .map_err(BrokerError::from)?;
        }
        Ok(())
    }

    /// Republishes a parked message to its work queue with a fresh attempt
    /// history, so that its `max_age` starts again.
    async fn replay(
        &self,
        channel: &Channel,
        target: &TargetName,
        parked: &ParkedDelivery,
        ticket: &ReplayTicket,
        headers: Option<&FieldTable>,
        body: &[u8],
    ) -> Result<(), ParkingError> {
        let fresh = message::for_replay(headers, parked.replays + 1, ticket);
        let queue = self.topology.work_queue(target);
        broker::publish_confirmed(
            channel,
            Outgoing { exchange: "", routing_key: &queue, message_id: &parked.submission_id, headers: fresh, body },
        )
        .await?;
        Ok(())
    }

    async fn record(
        &self,
        parked: &ParkedDelivery,
        operator: &str,
        comment: Option<String>,
        action: OperatorAction,
        replay: Option<Uuid>,
    ) -> Result<ActionClaim, ParkingError> {
        let record = OperatorRecord {
            operator: operator.to_owned(),
            action,
            target: parked.target.clone(),
            submission_id: parked.submission_id.clone(),
            parked_reason: parked.reason.clone(),
            comment,
            generation: Some(parked.replays),
            replay,
        };
        Ok(self.store.record_operator_action(record).await?)
    }
}

fn describe(target: &TargetName, properties: &BasicProperties, size: usize) -> (ParkedDelivery, Option<OffsetDateTime>) {
    let no_headers = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&no_headers);
    let history = History::from_headers(headers);
    let submission_id = broker::message_id(properties);
    let reason = message::parked_reason(headers);
    let parked_at = message::parked_at(headers);
    let rfc3339 = |at: OffsetDateTime| at.format(&Rfc3339).ok();
    let parked = ParkedDelivery {
        target: target.to_string(),
        delivery_id: submission_id.parse::<Uuid>().ok().map(|id| delivery_id(id, target).to_string()),
        submission_id,
        reason,
        last_error: history.last_error,
        attempts: history.attempts,
        first_attempt_at: history.first_attempt.and_then(rfc3339),
        parked_at: parked_at.and_then(rfc3339),
        replays: history.replays,
        size,
    };
    (parked, parked_at)
}

/// A plain-text table of parked deliveries, for the command line.
pub fn table(parked: &[ParkedDelivery]) -> String {
    let mut out = format!("{:<24} {:<36} {:<18} {:>8} {:<20} {}\n", "TARGET", "SUBMISSION", "REASON", "ATTEMPTS", "PARKED AT", "LAST ERROR");
    for p in parked {
        out += &format!(
            "{:<24} {:<36} {:<18} {:>8} {:<20} {}\n",
            p.target,
            p.submission_id,
            p.reason,
            p.attempts,
            p.parked_at.as_deref().map(|t| t.get(..19).unwrap_or(t)).unwrap_or("-"),
            shorten(p.last_error.as_deref().unwrap_or("-"), 60),
        );
    }
    out
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max { text.to_owned() } else { format!("{}…", text.chars().take(max - 1).collect::<String>()) }
}
