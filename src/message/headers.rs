//! The message headers amtsbote reads and writes, defined once here, and
//! the field tables built from them. All but [`header::DELAY`] and the
//! publisher's own (`service`, `region`, `received-at`, the trace
//! context) start with `x-amtsbote-`.

use std::collections::HashMap;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};
use time::OffsetDateTime;

use super::ParkReason;
use crate::domain::{Region, ServiceKey, TargetName};

/// The header names.
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
    /// (see [`ReplayTicket`]).
    pub const REPLAY: &str = "x-amtsbote-replay";
    /// On a replayed message: the operator who replayed it.
    pub const REPLAYED_BY: &str = "x-amtsbote-replayed-by";
    /// On a replayed message: why it had been parked.
    pub const PARKED_REASON: &str = "x-amtsbote-parked-reason";
    /// Why the message was parked (a [`super::ParkReason`] kind).
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

/// The name of a delay level, as used in queue names and headers (`500ms`,
/// `30s`, `2h`).
pub fn delay_name(level: Duration) -> String {
    let ms = level.as_millis();
    match ms {
        ms if ms < 1000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{}s", ms / 1000),
        ms if ms < 3_600_000 => format!("{}m", ms / 60_000),
        ms => format!("{}h", ms / 3_600_000),
    }
}

/// The headers intake publishes a submission with: its service, region
/// and receive time, and the trace context of the intake's span (empty
/// while no trace is exported).
pub fn for_submission(
    service: &ServiceKey,
    region: &Region,
    received_at: OffsetDateTime,
    trace_context: impl IntoIterator<Item = (String, String)>,
) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(header::SERVICE.into(), long_string(service.as_str()));
    headers.insert(header::REGION.into(), long_string(region.as_str()));
    headers.insert(header::RECEIVED_AT.into(), AMQPValue::LongLongInt(to_millis(received_at)));
    for (name, value) in trace_context {
        if header::TRACE_CONTEXT.contains(&name.as_str()) {
            headers.insert(name.into(), long_string(&value));
        }
    }
    headers
}

/// The headers of a retry: what travels on, the history, and the delay
/// queue that holds the message until its next attempt.
pub fn for_retry(original: Option<&FieldTable>, history: &History, delay: Duration) -> FieldTable {
    let mut headers = carry_headers(original);
    history.write(&mut headers);
    headers.insert(header::DELAY.into(), long_string(&delay_name(delay)));
    headers
}

/// The headers of a parked message: what travels on, the history, and
/// why, for which target and when it was parked.
pub fn for_parking(original: Option<&FieldTable>, history: &History, reason: &ParkReason, target: &TargetName) -> FieldTable {
    let mut headers = carry_headers(original);
    history.write(&mut headers);
    headers.insert(header::REASON.into(), long_string(reason.kind()));
    headers.insert(header::TARGET.into(), long_string(target.as_str()));
    headers.insert(header::PARKED_AT.into(), AMQPValue::LongLongInt(to_millis(OffsetDateTime::now_utc())));
    headers
}

/// The headers of a replayed message: what travels on, a fresh history
/// (so that its `max_age` starts again) counting the replay, and the
/// replay's ticket.
pub fn for_replay(original: Option<&FieldTable>, replays: u32, ticket: &ReplayTicket) -> FieldTable {
    let mut headers = carry_headers(original);
    History { replays, ..History::default() }.write(&mut headers);
    ticket.write(&mut headers);
    headers
}

/// The binding of a delay queue in the delay (headers) exchange: messages
/// whose [`header::DELAY`] names `level`.
pub fn delay_binding(level: Duration) -> FieldTable {
    let mut binding = FieldTable::default();
    binding.insert("x-match".into(), long_string("all"));
    binding.insert(header::DELAY.into(), long_string(&delay_name(level)));
    binding
}

/// The submission's region as intake published it.
pub fn region(headers: &FieldTable) -> Option<String> {
    text(headers, header::REGION)
}

/// When intake received the submission.
pub fn received_at(headers: &FieldTable) -> Option<OffsetDateTime> {
    integer(headers, header::RECEIVED_AT).and_then(from_millis)
}

/// The trace context the message carries (W3C `traceparent`,
/// `tracestate`).
pub fn trace_context(headers: &FieldTable) -> HashMap<String, String> {
    header::TRACE_CONTEXT.iter().filter_map(|name| Some(((*name).to_owned(), text(headers, name)?))).collect()
}

/// Why a parked message was parked: amtsbote's reason, or the broker's
/// when the broker dead-lettered it (`redelivery-limit`).
pub fn parked_reason(headers: &FieldTable) -> String {
    text(headers, header::REASON).unwrap_or_else(|| match text(headers, "x-first-death-reason").as_deref() {
        Some("delivery_limit") => "redelivery-limit".into(),
        Some(other) => other.replace('_', "-"),
        None => "unknown".into(),
    })
}

/// When the message was parked: amtsbote's time, or when the broker
/// dead-lettered it (the newest `x-death` entry).
pub fn parked_at(headers: &FieldTable) -> Option<OffsetDateTime> {
    integer(headers, header::PARKED_AT).and_then(from_millis).or_else(|| death_time(headers))
}

fn death_time(headers: &FieldTable) -> Option<OffsetDateTime> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else { return None };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else { return None };
    match latest.inner().get("time")? {
        AMQPValue::Timestamp(seconds) => OffsetDateTime::from_unix_timestamp(i64::try_from(*seconds).ok()?).ok(),
        _ => None,
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
