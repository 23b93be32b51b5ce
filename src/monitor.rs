//! What operators watch: the per-target overview that `/metrics` and the
//! dashboard show (served by [`crate::http::health`] and
//! [`crate::http::dashboard`]).
//!
//! The [`Monitor`] samples what no request passes by — queue depths and
//! parked counts from the broker, per-target activity and the oldest
//! undelivered submission from the ledger — when someone asks (a scrape
//! reuses a sample younger than [`FRESH_FOR`]; a dashboard page, which a
//! person reads, always gets a new one), and bounded by
//! [`SAMPLE_TIMEOUT`] so that a hanging broker cannot hang `/metrics`.
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
    latest: Option<(Instant, Arc<Overview>)>,
}

impl Monitor {
    pub fn new(broker: crate::broker::Endpoint, topology: Topology, targets: Vec<TargetName>, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { broker, topology, targets, store, metrics, state: tokio::sync::Mutex::new(Sampled::default()) }
    }

    /// The latest overview, sampled anew if older than `max_age`.
    pub async fn overview(&self, max_age: Duration) -> Arc<Overview> {
        let mut state = self.state.lock().await;
        if let Some((at, overview)) = &state.latest
            && at.elapsed() < max_age
        {
            return overview.clone();
        }
        let overview = Arc::new(self.sample(&mut state.connection).await);
        state.latest = Some((Instant::now(), overview.clone()));
        overview
    }

    async fn sample(&self, connection: &mut Option<(Connection, Channel)>) -> Overview {
        let now = OffsetDateTime::now_utc();
        let depths = tokio::time::timeout(SAMPLE_TIMEOUT, self.queue_depths(connection)).await.ok().flatten();
        if depths.is_none() {
            // A timed-out or failed sample starts from a new connection.
            close(connection).await;
        }
        let broker_connected = depths.is_some();
        self.metrics.broker_connected.set(i64::from(broker_connected));
        let mut activity = match self.store.activity(now - ACTIVITY_WINDOW).await {
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
            .map(|(index, target)| {
                let label = Metrics::for_target(target);
                let activity = activity.remove(target.as_str()).unwrap_or_default();
                let oldest = activity
                    .oldest_undelivered
                    .as_deref()
                    .and_then(|at| OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok())
                    .map(|at| (now - at).whole_seconds().max(0));
                self.metrics.oldest_undelivered_age.get_or_create(&label).set(oldest.unwrap_or(0) as f64);
                let (queue_depth, parked) = match &depths {
                    Some(depths) => (Some(depths[index].0), Some(depths[index].1)),
                    None => (None, None),
                };
                if let (Some(depth), Some(parked)) = (queue_depth, parked) {
                    self.metrics.queue_depth.get_or_create(&label).set(depth as i64);
                    self.metrics.parked_deliveries.get_or_create(&label).set(parked as i64);
                }
                TargetOverview { target: target.to_string(), queue_depth, parked, activity, oldest_undelivered_seconds: oldest }
            })
            .collect();
        Overview { sampled_at: timestamp(now), broker_connected, targets }
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

/// Closes the monitor's connection, if any, without waiting long for a
/// broker that does not answer.
async fn close(connection: &mut Option<(Connection, Channel)>) {
    if let Some((stale, _)) = connection.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), stale.close(200, "reconnecting".into())).await;
    }
}
