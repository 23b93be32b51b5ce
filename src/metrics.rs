//! Prometheus metrics: the one place every metric is defined.
//!
//! Served at `/metrics` in the OpenMetrics text format. Labels are
//! bounded by the configuration: `service` (a routed LeiKa key), `target`
//! (a configured target), `outcome`, `reason` and `problem` (fixed sets).
//! No label ever carries a submission id, a reference or form data.
//! prometheus-client appends `_total` to counters.
//!
//! Counters and histograms are updated where things happen (intake,
//! worker); the gauges of queue depth, parked deliveries, the oldest
//! undelivered submission and the broker connection are set by the
//! [`crate::monitor`] every few seconds.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::domain::TargetName;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProblemLabel {
    /// The problem type of the answer (`invalid-submission`, `no-route`, …).
    pub problem: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

/// A FIT-Connect destination, by its configured name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FitConnectLabel {
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FitConnectRejectionLabels {
    pub destination: String,
    /// FIT-Connect's problem type, the last part of its URI
    /// (`incorrect-hash`, …).
    pub problem: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FitConnectErrorLabels {
    pub destination: String,
    /// What stopped a poll (`unavailable`, `unauthorized`, `ledger`,
    /// `admission`, `keys`), left a submission for later (`refused`,
    /// `malformed`, `too_large`, `skipped`, `no_route`), or a decision
    /// FIT-Connect held otherwise (`decided_otherwise`).
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub target: String,
    pub outcome: AttemptOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParkLabels {
    pub target: String,
    /// A [`crate::message::ParkReason`] kind.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub target: String,
    pub reason: DropReason,
}

/// Why a worker dropped a message without delivering it.
/// The variants are spelled as the label values.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DropReason {
    /// Its submission was refused at intake (answered with an error).
    refused,
    /// The target has the submission already (a second copy).
    duplicate,
    /// Another operator action took its parked delivery first.
    superseded_replay,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [DropReason::refused, DropReason::duplicate, DropReason::superseded_replay];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntakeStepLabel {
    pub step: IntakeStep,
}

/// A step of the admission path that waits for another party, timed by
/// `amtsbote_intake_step_duration_seconds`: where intake's answer (and a
/// delivery, which starts once the broker has the message) waits.
/// The variants are spelled as the label values.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum IntakeStep {
    /// Recording the submission in the ledger (claiming its idempotency key).
    ledger_record,
    /// Writing large attachments to the blob store (only submissions that
    /// have such attachments).
    attachments,
    /// Publishing the message until the broker confirmed it.
    broker_confirm,
    /// Recording the broker's confirm in the ledger.
    ledger_confirm,
}

impl IntakeStep {
    pub const ALL: [IntakeStep; 4] = [IntakeStep::ledger_record, IntakeStep::attachments, IntakeStep::broker_confirm, IntakeStep::ledger_confirm];
}

/// Buckets for steps that take from a tenth of a millisecond to about a
/// second: fine enough (a factor of 1.5) to read a p99 from, as
/// `scripts/bench` does.
fn step_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 1.5, 24)
}

/// How one delivery attempt ended.
/// The variants are spelled as the label values.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AttemptOutcome {
    delivered,
    /// The target failed in a way a retry may fix.
    transient,
    /// The target refused the document.
    permanent,
    /// The mapping failed, or the message could not be read.
    mapping_error,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 4] =
        [AttemptOutcome::delivered, AttemptOutcome::transient, AttemptOutcome::permanent, AttemptOutcome::mapping_error];
}

pub struct Metrics {
    registry: Registry,
    /// Submissions accepted (answered 202), by service.
    pub submissions_received: Family<ServiceLabel, Counter>,
    /// Submissions refused with a 4xx or 5xx, by problem type.
    pub submissions_refused: Family<ProblemLabel, Counter>,
    /// Delivery attempts by target and outcome.
    pub delivery_attempts: Family<AttemptLabels, Counter>,
    /// Retries scheduled after a transient failure.
    pub retries: Family<TargetLabel, Counter>,
    /// Deliveries parked, by target and reason.
    pub parked_total: Family<ParkLabels, Counter>,
    /// Mapping failures, by target.
    pub mapping_errors: Family<TargetLabel, Counter>,
    /// Messages dropped without delivery, by target and reason.
    pub dropped: Family<DropLabels, Counter>,
    /// How long the connector took for one attempt.
    pub attempt_duration: Family<TargetLabel, Histogram>,
    /// From receipt at intake to confirmed delivery, retries included.
    pub delivery_latency: Family<TargetLabel, Histogram>,
    /// Time the admission path waited for the ledger, the blob store and
    /// the broker, by step.
    pub intake_step_duration: Family<IntakeStepLabel, Histogram>,
    /// Time a delivery waited for its document from the mapping sandbox
    /// (a free sandbox process included), by target.
    pub mapping_duration: Family<TargetLabel, Histogram>,
    /// Messages waiting in the target's work queue.
    pub queue_depth: Family<TargetLabel, Gauge>,
    /// Messages in the target's parking queue.
    pub parked_deliveries: Family<TargetLabel, Gauge>,
    /// Age of the oldest submission the target does not have yet (0 when
    /// it has them all).
    pub oldest_undelivered_age: Family<TargetLabel, Gauge<f64, AtomicU64>>,
    /// 1 while the broker is reachable.
    pub broker_connected: Gauge,
    /// HTTP connections open now.
    pub http_connections: Gauge,
    /// Connections closed at once: the cap was full of busy connections.
    pub http_connections_refused: Counter,
    /// Connections without a request in progress closed to make room.
    pub http_connections_evicted: Counter,
    /// Connections closed because a request's headers came too slowly.
    pub http_header_timeouts: Counter,
    /// Submissions fetched from FIT-Connect, by destination.
    pub fit_connect_fetched: Family<FitConnectLabel, Counter>,
    /// FIT-Connect submissions accepted (the accept event sent).
    pub fit_connect_accepted: Family<FitConnectLabel, Counter>,
    /// FIT-Connect submissions rejected, by problem type.
    pub fit_connect_rejected: Family<FitConnectRejectionLabels, Counter>,
    /// Polls of a destination that stopped short, by kind.
    pub fit_connect_errors: Family<FitConnectErrorLabels, Counter>,
    /// Age of the oldest submission still waiting at FIT-Connect.
    pub fit_connect_oldest_waiting_age: Family<FitConnectLabel, Gauge<f64, AtomicU64>>,
    /// When the destination was last polled successfully (Unix seconds).
    pub fit_connect_last_poll: Family<FitConnectLabel, Gauge<f64, AtomicU64>>,
    /// 1 while the destination is usable and its last poll succeeded.
    pub fit_connect_up: Family<FitConnectLabel, Gauge>,
    /// Submissions waiting at FIT-Connect that were found to have no route
    /// (looked at again after each reload).
    pub fit_connect_unrouted: Family<FitConnectLabel, Gauge>,
}

impl Metrics {
    /// The metrics with a series for every target, so that rates and
    /// alerts see zeros rather than nothing before the first event.
    pub fn new<'a>(targets: impl IntoIterator<Item = &'a TargetName>) -> Self {
        let mut registry = Registry::with_prefix("amtsbote");
        let submissions_received = Family::<ServiceLabel, Counter>::default();
        registry.register("submissions_received", "Submissions accepted, by service (LeiKa key)", submissions_received.clone());
        let submissions_refused = Family::<ProblemLabel, Counter>::default();
        registry.register("submissions_refused", "Submissions refused, by problem type", submissions_refused.clone());
        let delivery_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register("delivery_attempts", "Delivery attempts, by target and outcome", delivery_attempts.clone());
        let retries = Family::<TargetLabel, Counter>::default();
        registry.register("retries", "Retries scheduled after a transient failure", retries.clone());
        let parked_total = Family::<ParkLabels, Counter>::default();
        registry.register("parked", "Deliveries parked, by target and reason", parked_total.clone());
        let mapping_errors = Family::<TargetLabel, Counter>::default();
        registry.register("mapping_errors", "Mapping failures, by target", mapping_errors.clone());
        let dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "messages_dropped",
            "Messages a worker dropped without delivering them: of a refused submission, a second copy, a superseded replay",
            dropped.clone(),
        );
        let attempt_duration =
            Family::<TargetLabel, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 14)));
        registry.register_with_unit(
            "delivery_attempt_duration",
            "Time the target took for one delivery attempt",
            Unit::Seconds,
            attempt_duration.clone(),
        );
        let delivery_latency = Family::<TargetLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 259200.0])
        });
        registry.register_with_unit(
            "delivery_latency",
            "Time from intake to confirmed delivery, retries included",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let intake_step_duration = Family::<IntakeStepLabel, Histogram>::new_with_constructor(|| Histogram::new(step_buckets()));
        registry.register_with_unit(
            "intake_step_duration",
            "Time the admission path waited for the ledger, the blob store and the broker, by step",
            Unit::Seconds,
            intake_step_duration.clone(),
        );
        for step in IntakeStep::ALL {
            let _ = intake_step_duration.get_or_create(&IntakeStepLabel { step });
        }
        let mapping_duration = Family::<TargetLabel, Histogram>::new_with_constructor(|| Histogram::new(step_buckets()));
        registry.register_with_unit(
            "mapping_duration",
            "Time a delivery waited for its document from the mapping sandbox, by target",
            Unit::Seconds,
            mapping_duration.clone(),
        );
        let queue_depth = Family::<TargetLabel, Gauge>::default();
        registry.register("queue_depth", "Messages waiting in the target's work queue", queue_depth.clone());
        let parked_deliveries = Family::<TargetLabel, Gauge>::default();
        registry.register("parked_deliveries", "Deliveries waiting in the target's parking queue", parked_deliveries.clone());
        let oldest_undelivered_age = Family::<TargetLabel, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "oldest_undelivered_age",
            "Age of the oldest submission the target does not have yet",
            Unit::Seconds,
            oldest_undelivered_age.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register("broker_connected", "1 while the message broker is reachable", broker_connected.clone());
        let http_connections = Gauge::default();
        registry.register("http_connections", "HTTP connections open now", http_connections.clone());
        let http_connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at once because http.max_connections were all busy",
            http_connections_refused.clone(),
        );
        let http_connections_evicted = Counter::default();
        registry.register(
            "http_connections_evicted",
            "Idle or slow HTTP connections closed to make room for a new one",
            http_connections_evicted.clone(),
        );
        let http_header_timeouts = Counter::default();
        registry.register(
            "http_header_timeouts",
            "HTTP connections closed because headers did not arrive within http.header_timeout",
            http_header_timeouts.clone(),
        );
        let fit_connect_fetched = Family::<FitConnectLabel, Counter>::default();
        registry.register("fit_connect_fetched", "Submissions fetched from FIT-Connect, by destination", fit_connect_fetched.clone());
        let fit_connect_accepted = Family::<FitConnectLabel, Counter>::default();
        registry.register("fit_connect_accepted", "FIT-Connect submissions accepted (accept event sent), by destination", fit_connect_accepted.clone());
        let fit_connect_rejected = Family::<FitConnectRejectionLabels, Counter>::default();
        registry.register("fit_connect_rejected", "FIT-Connect submissions rejected, by destination and problem type", fit_connect_rejected.clone());
        let fit_connect_errors = Family::<FitConnectErrorLabels, Counter>::default();
        registry.register("fit_connect_errors", "Polls of a FIT-Connect destination that stopped short, by kind", fit_connect_errors.clone());
        let fit_connect_oldest_waiting_age = Family::<FitConnectLabel, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "fit_connect_oldest_waiting_age",
            "Age of the oldest submission still waiting for the destination at FIT-Connect (0 when none waits)",
            Unit::Seconds,
            fit_connect_oldest_waiting_age.clone(),
        );
        let fit_connect_last_poll = Family::<FitConnectLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "fit_connect_last_poll_timestamp_seconds",
            "When the destination was last polled successfully (Unix time)",
            fit_connect_last_poll.clone(),
        );
        let fit_connect_up = Family::<FitConnectLabel, Gauge>::default();
        registry.register("fit_connect_up", "1 while the FIT-Connect destination is usable and its last poll succeeded", fit_connect_up.clone());
        let fit_connect_unrouted = Family::<FitConnectLabel, Gauge>::default();
        registry.register(
            "fit_connect_unrouted",
            "Submissions waiting at FIT-Connect found to have no route (looked at again after each reload)",
            fit_connect_unrouted.clone(),
        );
        registry.register(
            "build",
            "The running amtsbote version",
            prometheus_client::metrics::info::Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );

        for target in targets {
            let label = TargetLabel { target: target.to_string() };
            for outcome in AttemptOutcome::ALL {
                let _ = delivery_attempts.get_or_create(&AttemptLabels { target: label.target.clone(), outcome });
            }
            for reason in crate::message::ParkReason::KINDS {
                let _ = parked_total.get_or_create(&ParkLabels { target: label.target.clone(), reason: reason.into() });
            }
            for reason in DropReason::ALL {
                let _ = dropped.get_or_create(&DropLabels { target: label.target.clone(), reason });
            }
            let _ = retries.get_or_create(&label);
            let _ = mapping_errors.get_or_create(&label);
            let _ = attempt_duration.get_or_create(&label);
            let _ = delivery_latency.get_or_create(&label);
            let _ = mapping_duration.get_or_create(&label);
            let _ = queue_depth.get_or_create(&label);
            let _ = parked_deliveries.get_or_create(&label);
            let _ = oldest_undelivered_age.get_or_create(&label);
        }
        Self {
            registry,
            submissions_received,
            submissions_refused,
            delivery_attempts,
            retries,
            parked_total,
            mapping_errors,
            dropped,
            attempt_duration,
            delivery_latency,
            intake_step_duration,
            mapping_duration,
            queue_depth,
            parked_deliveries,
            oldest_undelivered_age,
            broker_connected,
            http_connections,
            http_connections_refused,
            http_connections_evicted,
            http_header_timeouts,
            fit_connect_fetched,
            fit_connect_accepted,
            fit_connect_rejected,
            fit_connect_errors,
            fit_connect_oldest_waiting_age,
            fit_connect_last_poll,
            fit_connect_up,
            fit_connect_unrouted,
        }
    }

    /// The series of a FIT-Connect destination, so that rates and alerts
    /// see zeros rather than nothing: down until its first poll succeeds;
    /// `problems`: the problem types a rejection may name.
    pub fn fit_connect_destination(&self, destination: &str, problems: &[&str]) {
        let label = FitConnectLabel { destination: destination.to_owned() };
        self.fit_connect_up.get_or_create(&label).set(0);
        let _ = self.fit_connect_fetched.get_or_create(&label);
        let _ = self.fit_connect_accepted.get_or_create(&label);
        let _ = self.fit_connect_oldest_waiting_age.get_or_create(&label);
        let _ = self.fit_connect_unrouted.get_or_create(&label);
        for problem in problems {
            let _ = self.fit_connect_rejected.get_or_create(&FitConnectRejectionLabels { destination: destination.to_owned(), problem: (*problem).to_owned() });
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    pub fn attempt(&self, target: &TargetName, outcome: AttemptOutcome) {
        self.delivery_attempts.get_or_create(&AttemptLabels { target: target.to_string(), outcome }).inc();
    }

    /// Observes that the admission path waited `waited` for `step`.
    pub fn intake_step(&self, step: IntakeStep, waited: std::time::Duration) {
        self.intake_step_duration.get_or_create(&IntakeStepLabel { step }).observe(waited.as_secs_f64());
    }

    pub fn dropped(&self, target: &TargetName, reason: DropReason) {
        self.dropped.get_or_create(&DropLabels { target: target.to_string(), reason }).inc();
    }

    pub fn for_target(target: &TargetName) -> TargetLabel {
        TargetLabel { target: target.to_string() }
    }
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_end_in_total_and_targets_start_at_zero() {
        let target = TargetName::parse("fv").unwrap();
        let metrics = Metrics::new([&target]);
        metrics.submissions_received.get_or_create(&ServiceLabel { service: "99050012104000".into() }).inc();
        let text = metrics.encode();
        assert!(text.contains("amtsbote_submissions_received_total{service=\"99050012104000\"} 1"), "{text}");
        assert!(text.contains("amtsbote_delivery_attempts_total{target=\"fv\",outcome=\"delivered\"} 0"), "{text}");
        assert!(text.contains("amtsbote_delivery_latency_seconds_bucket{"), "{text}");
        assert!(text.contains("amtsbote_intake_step_duration_seconds_count{step=\"ledger_record\"} 0"), "{text}");
        assert!(text.contains("amtsbote_mapping_duration_seconds_count{target=\"fv\"} 0"), "{text}");
        assert!(text.contains("amtsbote_build_info{version=\""), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
