//! What operators watch: the per-target overview that `/metrics` and the
//! dashboard show (served by [`crate::http::health`] and
//! [`crate::http::dashboard`]).
//!
//! The [`Monitor`] samples what no request passes by — queue depths and
//! parked counts from the broker, the oldest undelivered submission and
//! (for a dashboard page only) per-target activity from the ledger — when
//! someone asks (a scrape reuses a sample younger than [`FRESH_FOR`]; a
//! dashboard page, which a person reads, always gets a new one), and
//! bounded by [`SAMPLE_TIMEOUT`] so that a hanging broker or ledger cannot
//! hang `/metrics`.
//! It keeps one broker connection of its own for that, whose state is the
//! `amtsbote_broker_connected` gauge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde::Serialize;
use time::OffsetDateTime;

use crate::broker::{self, Topology};
use crate::domain::TargetName;
use crate::metrics::Metrics;
use crate::domain::timestamp;
use crate::store::{Store, TargetActivity};

/// A sample younger than this is served as is.
pub const FRESH_FOR: Duration = Duration::from_secs(2);
/// How long one sample may take before its broker part counts as failed.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(3);
/// The period the overview's activity counts cover.
pub const ACTIVITY_WINDOW: Duration = Duration::from_secs(3600);

/// The state of every target, as of one sample.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub sampled_at: String,
    pub broker_connected: bool,
    pub targets: Vec<TargetOverview>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetOverview {
    pub target: String,
    /// Messages waiting in the work queue; `None` when the broker did not
    /// answer.
    pub queue_depth: Option<u64>,
    /// Messages in the parking queue.
    pub parked: Option<u64>,
    /// Delivered, failed attempts and parked over [`ACTIVITY_WINDOW`].
    pub activity: TargetActivity,
    /// Age of the oldest submission the target does not have yet.
    pub oldest_undelivered_seconds: Option<i64>,
}

impl TargetOverview {
    /// Delivered out of all attempts in the window; `None` without attempts.
    pub fn success_rate(&self) -> Option<f64> {
        let attempts = self.activity.delivered + self.activity.failed;
        (attempts > 0).then(|| self.activity.delivered as f64 / attempts as f64)
    }
}

pub struct Monitor {
    broker: crate::broker::Endpoint,
    topology: Topology,
    targets: Vec<TargetName>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    state: tokio::sync::Mutex<Sampled>,
}

#[derive(Default)]
struct Sampled {
    connection: Option<(Connection, Channel)>,
    /// When the gauges were last set.
    at: Option<Instant>,
}

/// What the gauges show, as of one sample.
struct Sample {
    now: OffsetDateTime,
    /// Per target, in the order of `Monitor::targets`: (ready in the work
    /// queue, in the parking queue); `None` if the broker did not answer.
    depths: Option<Vec<(u64, u64)>>,
    oldest_undelivered: std::collections::BTreeMap<String, OffsetDateTime>,
}

impl Monitor {
    pub fn new(broker: crate::broker::Endpoint, topology: Topology, targets: Vec<TargetName>, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { broker, topology, targets, store, metrics, state: tokio::sync::Mutex::new(Sampled::default()) }
    }

    /// Sets the gauges anew unless they are younger than [`FRESH_FOR`]:
    /// what a scrape asks. It leaves out the activity counts, whose query
    /// grows with the traffic of the last hour.
    pub async fn refresh(&self) {
        let mut state = self.state.lock().await;
        if state.at.is_some_and(|at| at.elapsed() < FRESH_FOR) {
            return;
        }
        self.sample(&mut state).await;
    }

    /// A new overview with the activity counts, for a person to read; it
    /// sets the gauges on the way.
    pub async fn overview(&self) -> Overview {
        let sample = self.sample(&mut *self.state.lock().await).await;
        let mut activity = match self.store.activity(sample.now - ACTIVITY_WINDOW).await {
            Ok(activity) => activity,
            Err(e) => {
                tracing::error!(event = "store_failed", error = %e, "could not read the ledger's activity");
                Default::default()
            }
        };
        let targets = self
            .targets
            .iter()
            .enumerate()
            .map(|(index, target)| TargetOverview {
                target: target.to_string(),
                queue_depth: sample.depths.as_ref().map(|depths| depths[index].0),
                parked: sample.depths.as_ref().map(|depths| depths[index].1),
                activity: activity.remove(target.as_str()).unwrap_or_default(),
                oldest_undelivered_seconds: sample.oldest_undelivered_seconds(target),
            })
            .collect();
        Overview { sampled_at: timestamp(sample.now), broker_connected: sample.depths.is_some(), targets }
    }

    async fn sample(&self, state: &mut Sampled) -> Sample {
        let now = OffsetDateTime::now_utc();
        let depths = tokio::time::timeout(SAMPLE_TIMEOUT, self.queue_depths(&mut state.connection)).await.ok().flatten();
        if depths.is_none() {
            // A timed-out or failed sample starts from a new connection.
            close(&mut state.connection).await;
        }
        self.metrics.broker_connected.set(i64::from(depths.is_some()));
        // Bounded like the broker's part: a ledger that hangs must not
        // hang `/metrics` (nor the next scrape, which waits for the lock).
        let oldest_undelivered = match tokio::time::timeout(SAMPLE_TIMEOUT, self.store.oldest_undelivered()).await {
            Ok(Ok(oldest)) => oldest,
            Ok(Err(e)) => {
                tracing::error!(event = "store_failed", error = %e, "could not read the ledger's oldest undelivered submissions");
                Default::default()
            }
            Err(_) => {
                tracing::error!(event = "store_failed", timeout_ms = SAMPLE_TIMEOUT.as_millis() as u64,
                    "the ledger did not say in time which submissions are oldest undelivered");
                Default::default()
            }
        };
        let sample = Sample { now, depths, oldest_undelivered };
        for (index, target) in self.targets.iter().enumerate() {
            let label = Metrics::for_target(target);
            self.metrics.oldest_undelivered_age.get_or_create(&label).set(sample.oldest_undelivered_seconds(target).unwrap_or(0) as f64);
            if let Some(depths) = &sample.depths {
                self.metrics.queue_depth.get_or_create(&label).set(depths[index].0 as i64);
                self.metrics.parked_deliveries.get_or_create(&label).set(depths[index].1 as i64);
            }
        }
        state.at = Some(Instant::now());
        sample
    }

    /// (ready in the work queue, in the parking queue) per target, in the
    /// order of `self.targets`; `None` if the broker did not answer.
    async fn queue_depths(&self, connection: &mut Option<(Connection, Channel)>) -> Option<Vec<(u64, u64)>> {
        let usable = connection.as_ref().is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
        if !usable {
            close(connection).await;
            let fresh = broker::connect(&self.broker, "amtsbote-monitor").await.ok()?;
            let channel = fresh.create_channel().await.ok()?;
            // Declaring (idempotent) rather than checking passively: a
            // passive check of a queue no worker declared yet would close
            // the channel.
            self.topology.declare(&fresh, &channel, &self.targets).await.ok()?;
            *connection = Some((fresh, channel));
        }
        let (_, channel) = connection.as_ref()?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let mut depths = Vec::with_capacity(self.targets.len());
        for target in &self.targets {
            let count = |queue: String| async move {
                channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await.map(|q| u64::from(q.message_count()))
            };
            let work = count(self.topology.work_queue(target)).await.ok()?;
            let parked = count(self.topology.parking_queue(target)).await.ok()?;
            depths.push((work, parked));
        }
        Some(depths)
    }
}

impl Sample {
    fn oldest_undelivered_seconds(&self, target: &TargetName) -> Option<i64> {
        self.oldest_undelivered.get(target.as_str()).map(|at| (self.now - *at).whole_seconds().max(0))
    }
}

/// Closes the monitor's connection, if any, without waiting long for a
/// broker that does not answer.
async fn close(connection: &mut Option<(Connection, Channel)>) {
    if let Some((stale, _)) = connection.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), stale.close(200, "reconnecting".into())).await;
    }
}
