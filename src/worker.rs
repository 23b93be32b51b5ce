//! Delivery workers: one consumer per target.
//!
//! Each target has its own connection, channel and queue, with prefetch =
//! the target's concurrency, so a slow or dead back office only ever holds
//! its own messages. For each message the worker renders the target's
//! mapping, hands the document to the connector, and acknowledges only
//! after the outcome is safe: delivered, or published (with confirm) to the
//! target's parking queue with the reason. Until retries with backoff
//! arrive, every failure is parked rather than retried in a loop.
//!
//! The consumer loop reconnects with capped exponential backoff after the
//! broker went away; unacknowledged messages return to the queue.

use std::sync::Arc;
use std::time::Duration;

use amtsbote_connector::{Delivery, Outcome};
use futures_lite::StreamExt;
use jaq_json::Val;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use secrecy::SecretString;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::broker::{self, BrokerError, Outgoing, Topology, long_string};
use crate::domain::delivery_id;
use crate::pipeline::Target;
use crate::store::{DeliveryState, Store};

pub struct Worker {
    pub target: Arc<Target>,
    pub topology: Topology,
    pub broker_url: SecretString,
    pub store: Arc<dyn Store>,
}

const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

impl Worker {
    /// Consumes until `shutdown` turns true, then lets in-flight deliveries
    /// finish (bounded by the caller's deadline).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut delay = Duration::from_millis(500);
        while !*shutdown.borrow() {
            match self.consume(&mut shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(event = "worker_disconnected", target = %self.target.name, error = %e,
                        retry_in_ms = delay.as_millis() as u64, "worker lost the broker; reconnecting");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => break,
            }
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    }

    async fn consume(self: &Arc<Self>, shutdown: &mut watch::Receiver<bool>) -> Result<(), BrokerError> {
        let name = format!("amtsbote-worker-{}", self.target.name);
        let connection = broker::connect(&self.broker_url, &name).await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel, [&self.target.name]).await?;
        channel.basic_qos(self.target.concurrency, BasicQosOptions::default()).await?;
        // Parking publishes go on their own confirm channel.
        let parking = connection.create_channel().await?;
        parking.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut consumer = channel
            .basic_consume(
                self.topology.work_queue(&self.target.name).into(),
                name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(event = "worker_started", target = %self.target.name, concurrency = self.target.concurrency, "worker consuming");

        let mut in_flight = JoinSet::new();
        let result = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let worker = self.clone();
                        let parking = parking.clone();
                        in_flight.spawn(async move { worker.handle(delivery, &parking).await });
                    }
                    Some(Err(e)) => break Err(e.into()),
                    None => break Err(BrokerError::ConsumerEnded),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = shutdown.changed() => break Ok(()),
            }
        };
        // Finish what is in flight; the caller bounds this with its deadline.
        while in_flight.join_next().await.is_some() {}
        close(&connection, &channel).await;
        result
    }

    async fn handle(&self, message: AmqpDelivery, parking: &Channel) {
        let submission_id = message
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| id.as_str().parse::<Uuid>().ok());
        let (state, outcome_text) = match self.deliver(submission_id, &message.data).await {
            Ok(detail) => (DeliveryState::Delivered, detail),
            Err(reason) => match self.park(parking, &message, &reason).await {
                Ok(()) => (DeliveryState::Parked, reason.to_string()),
                Err(e) => {
                    tracing::error!(event = "park_failed", target = %self.target.name, error = %e,
                        "could not park; message returns to the queue");
                    let _ = message.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                    return;
                }
            },
        };
        if let Some(id) = submission_id {
            if let Err(e) = self.store.record_attempt(id, &self.target.name, state, &outcome_text).await {
                tracing::error!(event = "store_failed", submission = %id, error = %e, "could not record delivery state");
            }
        }
        if let Err(e) = message.ack(BasicAckOptions::default()).await {
            // The broker redelivers; the stable delivery id lets the target
            // recognise the repeat.
            tracing::warn!(event = "ack_failed", target = %self.target.name, error = %e, "acknowledgement failed");
        }
    }

    /// Renders and delivers; `Err` is the reason to park.
    async fn deliver(&self, submission_id: Option<Uuid>, body: &[u8]) -> Result<String, ParkReason> {
        let target = &self.target;
        let id = submission_id.ok_or(ParkReason::Undecodable("message has no submission id".into()))?;
        let rendered = {
            // Parsed and rendered without an await in between: jaq values
            // are not `Send`.
            let submission: Val = serde_json::from_slice(body)
                .map_err(|e| ParkReason::Undecodable(format!("message is not JSON: {:?}", e.classify())))?;
            target.mapping.render(&submission).map_err(|e| ParkReason::Mapping(e.to_string()))?
        };
        let delivery = Delivery {
            submission_id: id,
            delivery_id: delivery_id(id, &target.name),
            target: target.name.to_string(),
            content_type: rendered.content_type,
            body: rendered.body.into(),
        };
        match target.connector.deliver(&delivery).await {
            Outcome::Delivered { detail } => {
                tracing::info!(event = "delivered", submission = %id, target = %target.name, detail = %detail, "delivered");
                Ok(detail)
            }
            Outcome::Transient { reason, .. } => Err(ParkReason::Transient(reason)),
            Outcome::Permanent { reason } => Err(ParkReason::Rejected(reason)),
        }
    }

    async fn park(&self, parking: &Channel, message: &AmqpDelivery, reason: &ParkReason) -> Result<(), BrokerError> {
        let mut headers = message.properties.headers().clone().unwrap_or_default();
        headers.insert("x-amtsbote-reason".into(), long_string(reason.kind()));
        headers.insert("x-amtsbote-error".into(), long_string(&reason.to_string()));
        headers.insert("x-amtsbote-target".into(), long_string(self.target.name.as_str()));
        headers.insert(
            "x-amtsbote-parked-at".into(),
            AMQPValue::LongLongInt(time::OffsetDateTime::now_utc().unix_timestamp()),
        );
        let message_id = message.properties.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default();
        let queue = self.topology.parking_queue(&self.target.name);
        broker::publish_confirmed(
            parking,
            Outgoing { exchange: "", routing_key: &queue, message_id: &message_id, headers, body: &message.data },
        )
        .await?;
        tracing::warn!(event = "parked", submission = %message_id, target = %self.target.name,
            reason = reason.kind(), error = %reason, "delivery parked");
        Ok(())
    }
}

/// Why a message was parked. Texts name the problem, never form data.
#[derive(Debug, thiserror::Error)]
enum ParkReason {
    #[error("{0}")]
    Undecodable(String),
    #[error("{0}")]
    Mapping(String),
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Rejected(String),
}

impl ParkReason {
    fn kind(&self) -> &'static str {
        match self {
            ParkReason::Undecodable(_) => "undecodable",
            ParkReason::Mapping(_) => "mapping-error",
            ParkReason::Transient(_) => "target-unavailable",
            ParkReason::Rejected(_) => "target-rejected",
        }
    }
}

async fn close(connection: &Connection, channel: &Channel) {
    let _ = channel.close(200, "shutdown".into()).await;
    let _ = connection.close(200, "shutdown".into()).await;
}
