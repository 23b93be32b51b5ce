//! Retries: the per-target policy and the broker's delay levels (the
//! delivery history that travels with each message is in
//! [`crate::message`]).
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
use serde::Deserialize;
use time::OffsetDateTime;

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
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt (default `30s`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub first_delay: Duration,
    /// Growth of the delay per attempt (default `2`).
    pub factor: f32,
    /// Longest delay between two attempts (default `1h`). A `Retry-After`
    /// of the target is honoured up to this length.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_delay: Duration,
    /// A delivery still failing this long after its first attempt is parked
    /// (default `4d`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::delay_name as level_name;

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
    fn a_policy_that_cannot_work_is_reported() {
        let bad = RetryPolicy { factor: 0.5, max_delay: Duration::from_millis(150), ..RetryPolicy::default() };
        assert_eq!(bad.problems().len(), 2);
        assert!(RetryPolicy::default().problems().is_empty());
    }
}
