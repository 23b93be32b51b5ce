//! Retries: the per-target policy, the broker's delay levels, and the
//! delivery history that travels with each message.
//!
//! A delivery that failed transiently is not slept on. The worker
//! republishes it (with a publisher confirm) to one of the broker's delay
//! queues and acknowledges the original; when the delay queue's TTL runs
//! out the broker dead-letters the message back into the target's work
//! queue. A process restart therefore loses no retry, and a back office
//! that is down for a weekend holds no memory in amtsbote.
//!
//! The policy (backon's exponential backoff with jitter) computes the
//! wanted delay; the broker has a fixed ladder of delay queues
//! ([`DELAY_LEVELS`]), so the wanted delay is rounded to the nearest level.
//! Every queue of the ladder has one TTL for all its messages, which keeps
//! them expiring in order (a per-message TTL would wait behind the head of
//! the queue).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::types::{AMQPValue, FieldTable};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::broker::long_string;

/// How a target's transient failures are retried.
///
/// ```yaml
/// retry:
///   first_delay: 30s   # delay after the first failed attempt
///   factor: 2          # each further delay is this much longer ...
///   max_delay: 1h      # ... up to this
///   max_age: 4d        # then park what still fails this long after its first attempt
///   jitter: true       # spread retries of messages that failed together
/// ```
///
/// The defaults ride out a back office that is down from Friday evening
/// to Tuesday morning and notice its return within the hour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt (default `30s`).
    #[serde(with = "humantime_serde")]
    pub first_delay: Duration,
    /// Growth of the delay per attempt (default `2`).
    pub factor: f32,
    /// Longest delay between two attempts (default `1h`). A `Retry-After`
    /// of the target is honoured up to this length.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// A delivery still failing this long after its first attempt is parked
    /// (default `4d`).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Randomise each delay between 1× and 2× (default `true`).
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(30),
            factor: 2.0,
            max_delay: Duration::from_secs(3600),
            max_age: Duration::from_secs(4 * 24 * 3600),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Problems with the values, for `amtsbote check`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.factor >= 1.0 && self.factor <= 10.0) {
            problems.push(format!("retry.factor {} must be between 1 and 10", self.factor));
        }
        if self.first_delay < DELAY_LEVELS[0] {
            problems.push(format!("retry.first_delay must be at least {:?}", DELAY_LEVELS[0]));
        }
        if self.max_delay < self.first_delay {
            problems.push("retry.max_delay must not be shorter than retry.first_delay".into());
        }
        problems
    }

    /// The delay level after attempt number `attempt` (1 = the first) failed,
    /// at least as long as the target's `Retry-After` (up to `max_delay`).
    /// Never a level above `max_delay`: the wish is rounded to the nearest
    /// level, then down to the longest level within `max_delay` (the
    /// shortest level if `max_delay` is shorter still).
    pub fn delay_after(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_factor(self.factor)
            .with_max_delay(self.max_delay)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        let wanted = builder.build().nth(attempt.saturating_sub(1) as usize).unwrap_or(self.max_delay);
        let level = nearest_level(wanted);
        let level = match retry_after.map(|r| r.min(self.max_delay)) {
            Some(floor) if floor > level => level_at_least(floor),
            _ => level,
        };
        let ceiling = DELAY_LEVELS.iter().copied().rfind(|l| *l <= self.max_delay).unwrap_or(DELAY_LEVELS[0]);
        level.min(ceiling)
    }

    /// Whether a delivery first tried at `first_attempt` has run out of time.
    pub fn exhausted(&self, first_attempt: OffsetDateTime, now: OffsetDateTime) -> bool {
        now - first_attempt >= self.max_age
    }
}

/// The broker's delay queues, shortest first. One quorum queue each,
/// shared by all targets.
pub const DELAY_LEVELS: [Duration; 20] = [
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(2 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(12 * 3600),
];

/// The level closest to `wanted` on a logarithmic scale (a 40 s wish
/// becomes 30 s, a 50 s wish 60 s).
fn nearest_level(wanted: Duration) -> Duration {
    let wanted = wanted.as_secs_f64().max(1e-3).ln();
    *DELAY_LEVELS
        .iter()
        .min_by(|a, b| {
            let da = (a.as_secs_f64().ln() - wanted).abs();
            let db = (b.as_secs_f64().ln() - wanted).abs();
            da.total_cmp(&db)
        })
        .expect("the ladder is not empty")
}

fn level_at_least(floor: Duration) -> Duration {
    DELAY_LEVELS.iter().copied().find(|level| *level >= floor).unwrap_or(DELAY_LEVELS[DELAY_LEVELS.len() - 1])
}

/// The name of a delay level, as used in queue names and headers (`500ms`,
/// `30s`, `2h`).
pub fn level_name(level: Duration) -> String {
    let ms = level.as_millis();
    match ms {
        ms if ms < 1000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{}s", ms / 1000),
        ms if ms < 3_600_000 => format!("{}m", ms / 60_000),
        ms => format!("{}h", ms / 3_600_000),
    }
}

/// Message headers amtsbote reads and writes; defined once here. All but
/// [`header::DELAY`] start with `x-amtsbote-`.
pub mod header {
    /// The submission's LeiKa service key, set by intake.
    pub const SERVICE: &str = "service";
    /// The submission's region (ARS or AGS), set by intake; a worker checks
    /// it against its target's tenant before delivering.
    pub const REGION: &str = "region";
    /// Unix milliseconds of the submission's receipt at intake, for the
    /// end-to-end latency. Set by intake and carried along unchanged
    /// (not `x-amtsbote-` prefixed: those are rewritten per attempt).
    pub const RECEIVED_AT: &str = "received-at";
    /// Attempts made so far (integer).
    pub const ATTEMPTS: &str = "x-amtsbote-attempts";
    /// Unix milliseconds of the first attempt.
    pub const FIRST_ATTEMPT: &str = "x-amtsbote-first-attempt";
    /// The outcome of the last failed attempt (a connector's reason, e.g.
    /// `HTTP 503`, or a mapping error); never form data.
    pub const LAST_ERROR: &str = "x-amtsbote-last-error";
    /// How often an operator replayed the message from the parking queue.
    pub const REPLAYS: &str = "x-amtsbote-replays";
    /// On a replayed message, until its first attempt: the replay's id
    /// (see [`super::ReplayTicket`]).
    pub const REPLAY: &str = "x-amtsbote-replay";
    /// On a replayed message: the operator who replayed it.
    pub const REPLAYED_BY: &str = "x-amtsbote-replayed-by";
    /// On a replayed message: why it had been parked.
    pub const PARKED_REASON: &str = "x-amtsbote-parked-reason";
    /// Why the message was parked (a [`crate::worker::ParkReason`] kind).
    pub const REASON: &str = "x-amtsbote-reason";
    /// The target the message was parked for.
    pub const TARGET: &str = "x-amtsbote-target";
    /// Unix milliseconds of parking.
    pub const PARKED_AT: &str = "x-amtsbote-parked-at";
    /// Version (content hash) of the mapping the first attempt used; later
    /// attempts map with the same version, whatever changed meanwhile.
    pub const MAPPING: &str = "x-amtsbote-mapping";
    /// Selects the delay queue in the delay (headers) exchange. Not `x-`
    /// prefixed: a headers exchange ignores binding arguments that are.
    pub const DELAY: &str = "amtsbote-delay";
    /// The W3C trace context of the submission's intake, set by intake
    /// when traces are exported and carried along unchanged.
    pub const TRACE_CONTEXT: [&str; 2] = ["traceparent", "tracestate"];
    /// Headers RabbitMQ adds on dead-lettering and redelivery.
    pub const BROKER_ADDED: [&str; 6] =
        ["x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason", "x-delivery-count", "x-last-death-reason"];
}

/// The headers that travel on when a message is republished: the
/// publisher's own (`service`, `region`), without amtsbote's delivery
/// state, which the republisher writes afresh, and without what the broker
/// added on the way (`x-death`, ...).
pub fn carry_headers(original: Option<&FieldTable>) -> FieldTable {
    let mut headers = FieldTable::default();
    for (name, value) in original.map(FieldTable::inner).into_iter().flatten() {
        let name_str = name.as_str();
        let ours = name_str.starts_with("x-amtsbote-") || name_str == header::DELAY;
        if !ours && !header::BROKER_ADDED.contains(&name_str) {
            headers.insert(name.clone(), value.clone());
        }
    }
    headers
}

/// What is known about earlier attempts of a delivery; carried in the
/// message headers so that it survives restarts and redeliveries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub attempts: u32,
    pub first_attempt: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    pub replays: u32,
    pub mapping_version: Option<String>,
}

impl History {
    pub fn from_headers(headers: &FieldTable) -> Self {
        Self {
            attempts: integer(headers, header::ATTEMPTS).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            first_attempt: integer(headers, header::FIRST_ATTEMPT).and_then(from_millis),
            last_error: text(headers, header::LAST_ERROR),
            replays: integer(headers, header::REPLAYS).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            mapping_version: text(headers, header::MAPPING),
        }
    }

    pub fn write(&self, headers: &mut FieldTable) {
        headers.insert(header::ATTEMPTS.into(), AMQPValue::LongLongInt(self.attempts.into()));
        if let Some(first) = self.first_attempt {
            headers.insert(header::FIRST_ATTEMPT.into(), AMQPValue::LongLongInt(to_millis(first)));
        }
        if let Some(error) = &self.last_error {
            headers.insert(header::LAST_ERROR.into(), long_string(error));
        }
        headers.insert(header::REPLAYS.into(), AMQPValue::LongLongInt(self.replays.into()));
        if let Some(version) = &self.mapping_version {
            headers.insert(header::MAPPING.into(), long_string(version));
        }
    }
}

/// What a replayed message carries to its first attempt: which replay it
/// is, so that the worker can record the replay in the ledger before it
/// delivers. Of two copies of one parked delivery (a replay interrupted
/// after its publish, then replayed again) only the one whose replay the
/// ledger holds is delivered; the other is dropped (see
/// [`crate::store::ActionClaim`]). A retry does not carry it on: the
/// first attempt recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayTicket {
    pub id: uuid::Uuid,
    pub operator: String,
    pub parked_reason: String,
}

impl ReplayTicket {
    pub fn from_headers(headers: &FieldTable) -> Option<Self> {
        Some(Self {
            id: text(headers, header::REPLAY)?.parse().ok()?,
            operator: text(headers, header::REPLAYED_BY).unwrap_or_default(),
            parked_reason: text(headers, header::PARKED_REASON).unwrap_or_default(),
        })
    }

    pub fn write(&self, headers: &mut FieldTable) {
        headers.insert(header::REPLAY.into(), long_string(&self.id.to_string()));
        headers.insert(header::REPLAYED_BY.into(), long_string(&self.operator));
        headers.insert(header::PARKED_REASON.into(), long_string(&self.parked_reason));
    }
}

pub fn integer(headers: &FieldTable, name: &str) -> Option<i64> {
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

pub fn text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub fn to_millis(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn from_millis(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: bool) -> RetryPolicy {
        RetryPolicy { jitter, ..RetryPolicy::default() }
    }

    #[test]
    fn delays_grow_to_the_maximum_on_the_ladder() {
        let p = policy(false);
        let delays: Vec<_> = (1..=10).map(|n| level_name(p.delay_after(n, None))).collect();
        assert_eq!(delays, ["30s", "1m", "2m", "5m", "10m", "15m", "30m", "1h", "1h", "1h"]);
    }

    #[test]
    fn jitter_stays_within_one_to_two_times() {
        let p = policy(true);
        for _ in 0..100 {
            let d = p.delay_after(2, None);
            assert!((Duration::from_secs(60)..=Duration::from_secs(120)).contains(&d), "{d:?}");
        }
    }

    #[test]
    fn no_delay_exceeds_the_maximum_delay() {
        for (max_delay, longest) in [(60, 60), (45, 30), (90, 60), (3600, 3600)] {
            let policy = RetryPolicy { max_delay: Duration::from_secs(max_delay), ..policy(true) };
            for attempt in 1..30 {
                for retry_after in [None, Some(Duration::from_secs(max_delay)), Some(Duration::from_secs(86400))] {
                    let delay = policy.delay_after(attempt, retry_after);
                    assert!(delay <= Duration::from_secs(longest), "max_delay {max_delay}s, attempt {attempt}: {delay:?}");
                }
            }
        }
        let tiny = RetryPolicy { max_delay: Duration::from_millis(10), ..policy(false) };
        assert_eq!(tiny.delay_after(5, None), DELAY_LEVELS[0], "the shortest level when max_delay is shorter still");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_maximum_delay() {
        let p = policy(false);
        assert_eq!(p.delay_after(1, Some(Duration::from_secs(100))), Duration::from_secs(120));
        assert_eq!(p.delay_after(1, Some(Duration::from_secs(10))), Duration::from_secs(30));
        assert_eq!(p.delay_after(1, Some(Duration::from_secs(86_400))), Duration::from_secs(3600));
    }

    #[test]
    fn a_replay_ticket_round_trips_and_is_not_carried_on() {
        let ticket = ReplayTicket { id: uuid::Uuid::now_v7(), operator: "carol".into(), parked_reason: "target-rejected".into() };
        let mut headers = FieldTable::default();
        ticket.write(&mut headers);
        assert_eq!(ReplayTicket::from_headers(&headers), Some(ticket));
        assert_eq!(ReplayTicket::from_headers(&carry_headers(Some(&headers))), None);
    }

    #[test]
    fn history_round_trips_through_headers() {
        let history = History {
            attempts: 3,
            first_attempt: from_millis(1_700_000_000_123),
            last_error: Some("HTTP 503".into()),
            replays: 1,
            mapping_version: Some("sha256:0123456789abcdef".into()),
        };
        let mut headers = FieldTable::default();
        history.write(&mut headers);
        assert_eq!(History::from_headers(&headers), history);
        assert_eq!(History::from_headers(&FieldTable::default()), History::default());
    }

    #[test]
    fn a_policy_that_cannot_work_is_reported() {
        let bad = RetryPolicy { factor: 0.5, max_delay: Duration::from_millis(150), ..RetryPolicy::default() };
        assert_eq!(bad.problems().len(), 2);
        assert!(RetryPolicy::default().problems().is_empty());
    }
}
