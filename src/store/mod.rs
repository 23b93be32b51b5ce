//! The store and delivery ledger: submission and delivery states, every
//! submission's timeline, idempotency keys and the operators' audit trail.
//!
//! The broker is the source of truth for what still has to be delivered;
//! the store answers "where is submission X, and what happened to it" and
//! makes a retried POST with the same `Idempotency-Key` return the first
//! answer. It holds ids, service keys, regions, references, target names,
//! states, sizes, SHA-256 hashes and connector outcomes (status codes,
//! fault codes, receipts) — never form data or attachments.
//!
//! [`Store`] is the seam: each implementation sits in a file of its own
//! beside this one and runs the same conformance suite
//! (`conformance.rs`, expanded by `store_conformance!` in the
//! implementation's tests). [`PostgresStore`] (`postgres/`) is the ledger
//! that the processes of several hosts share (see its module
//! documentation for how they meet); [`SqliteStore`] (`sqlite.rs`) is the
//! embedded one, the default for one host:
//!
//! * WAL and `synchronous=NORMAL`: a crash of the process loses nothing, a
//!   power loss may lose the last state changes but never a submission,
//!   which the broker holds.
//! * Group commit: all writes go to one writer thread, which runs what has
//!   queued up meanwhile (up to [`MAX_BATCH`] writes) in one transaction
//!   and answers each caller after the commit. A write that fails undoes
//!   only its own changes: the batch is then run again with each write in
//!   a savepoint of its own. Under load many writes share one fsync, so
//!   the ledger does not become the bottleneck; each caller still learns
//!   that its own write is durable. Under load the writer lingers for
//!   [`COMMIT_WINDOW`] so that more writes share a commit.
//! * Reads use their own connection and never wait for the writer.
//! * [`Store::prune`] removes finished submissions past the retention
//!   (see [`StoreSettings::retention`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{TargetName, timestamp};

/// A claim of an idempotency key that has not reached the broker's
/// confirm after this long belongs to a request that died.
const STALE_CLAIM: Duration = Duration::from_secs(15);

/// The state of a submission across its targets, from its deliveries, as
/// an SQL expression over a `submissions` row; `received` stays until the
/// broker confirmed. (A macro, so that `concat!` can build statements; the
/// same SQL on SQLite and PostgreSQL.)
macro_rules! submission_state {
    () => {
        concat!("CASE
    WHEN state IN ('received', 'refused') THEN state
    ", state_once_accepted!())
    };
}

/// The cases of [`submission_state`] once the broker has confirmed.
macro_rules! state_once_accepted {
    () => {
        "WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.submission_id = submissions.id AND d.state = 'parked') THEN 'parked'
    WHEN NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.submission_id = submissions.id AND d.state <> 'delivered') THEN 'delivered'
    WHEN NOT EXISTS (SELECT 1 FROM deliveries d
                     WHERE d.submission_id = submissions.id AND d.state NOT IN ('delivered', 'discarded')) THEN 'discarded'
    ELSE 'accepted' END"
    };
}

#[cfg(test)]
#[macro_use]
mod conformance;
mod postgres;
mod sqlite;
pub use postgres::{PostgresSettings, PostgresStore};
pub use sqlite::{MAX_BATCH, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: commit failed: {0}")]
    Commit(String),
    #[error("store: cannot create directory {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    #[error("store: the writer has stopped")]
    Closed,
    #[error("store: worker thread failed")]
    Join,
    #[error("store: cannot start the writer thread: {0}")]
    Thread(std::io::Error),
    #[error("store: {}", with_causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The server did not answer in time, or no connection was to be had.
    #[error("store: PostgreSQL is unavailable: {0}")]
    Unavailable(String),
    #[error("store: migrating the schema failed: {0}")]
    Migration(String),
    #[error("store: {0}")]
    Settings(String),
}

/// An error with what caused it: tokio-postgres names the step that failed
/// ("error performing TLS handshake") and keeps the reason (an unknown
/// issuer, a refused connection) as its source.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text = format!("{text}: {e}");
        cause = e.source();
    }
    text
}

impl StoreError {
    /// Whether the ledger could not be reached (rather than refusing the
    /// write): a server that is away, restarting or not answering in time,
    /// which a retry later may find back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            // No SQLSTATE: the connection failed, not the statement.
            // Class 08 is a connection exception; 57P01-03 a server
            // shutting down or starting.
            StoreError::Postgres(e) => match e.code() {
                None => true,
                Some(code) => code.code().starts_with("08") || ["57P01", "57P02", "57P03"].contains(&code.code()),
            },
            _ => false,
        }
    }
}

/// What intake records before it publishes.
#[derive(Debug, Clone)]
pub struct NewSubmission {
    pub id: Uuid,
    pub service: String,
    pub region: String,
    pub reference: Option<String>,
    pub received_at: OffsetDateTime,
    pub targets: Vec<TargetName>,
    /// Size of the request body in bytes.
    pub size: usize,
    /// Hex SHA-256 of the request body: proves later which bytes arrived
    /// without keeping them.
    pub sha256: String,
    /// The sender that handed it in.
    pub sender: String,
}

#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// SHA-256 of the request body: the same key with another body is a
    /// client error, not a retry.
    pub fingerprint: [u8; 32],
}

/// The result of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: the submission was recorded, go ahead and publish.
    Fresh,
    /// A retry of an accepted submission: answer with its id again.
    Replay { id: Uuid },
    /// The first request with this key never finished (its process
    /// died between recording and the broker's confirm). Publish again
    /// under the first request's id and receive time: the broker may
    /// already hold that message, and the stable delivery ids let targets
    /// recognise the repeat.
    Resume { id: Uuid, received_at: OffsetDateTime },
    /// The first request with this key is still being published.
    InProgress,
    /// The key was used for a different request body.
    Mismatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting in the target's queue (also after a replay).
    Queued,
    /// An attempt failed transiently; the next waits in a delay queue.
    Retrying,
    Delivered,
    /// In the parking queue, waiting for an operator.
    Parked,
    /// An operator discarded the parked delivery.
    Discarded,
    /// Intake refused the submission (answered with an error): this
    /// delivery never happens, unless a retry with the same idempotency
    /// key resumes it.
    Refused,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Parked => "parked",
            DeliveryState::Discarded => "discarded",
            DeliveryState::Refused => "refused",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "retrying" => DeliveryState::Retrying,
            "delivered" => DeliveryState::Delivered,
            "parked" => DeliveryState::Parked,
            "discarded" => DeliveryState::Discarded,
            "refused" => DeliveryState::Refused,
            _ => DeliveryState::Queued,
        }
    }
}

/// A submission's state across its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubmissionState {
    /// Recorded, not yet confirmed by the broker.
    Received,
    /// In the broker; some target does not have it yet.
    Accepted,
    /// Every target has it.
    Delivered,
    /// A target's delivery waits for an operator.
    Parked,
    /// An operator gave up a delivery; the other targets have it.
    Discarded,
    /// Intake answered with an error (the broker did not confirm, an
    /// attachment could not be stored, ...): nothing is delivered, unless
    /// a retry with the same idempotency key is accepted under this id.
    Refused,
}

impl SubmissionState {
    pub const ALL: [SubmissionState; 6] = [
        SubmissionState::Received,
        SubmissionState::Accepted,
        SubmissionState::Delivered,
        SubmissionState::Parked,
        SubmissionState::Discarded,
        SubmissionState::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubmissionState::Received => "received",
            SubmissionState::Accepted => "accepted",
            SubmissionState::Delivered => "delivered",
            SubmissionState::Parked => "parked",
            SubmissionState::Discarded => "discarded",
            SubmissionState::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// An operator's action on a parked delivery, kept for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorAction {
    Replay,
    Discard,
}

impl OperatorAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Replay => "replay",
            OperatorAction::Discard => "discard",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "discard" { OperatorAction::Discard } else { OperatorAction::Replay }
    }
}

/// What an operator did to a parked delivery.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorRecord {
    pub operator: String,
    pub action: OperatorAction,
    pub target: String,
    pub submission_id: String,
    /// Why the delivery had been parked.
    pub parked_reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Which parked copy the action took: the delivery's replay count when
    /// it was parked ([`crate::message::History::replays`]). One action per
    /// parked copy: the ledger refuses a second (see [`ActionClaim`]).
    /// `None` in records from before this was kept.
    #[serde(skip)]
    pub generation: Option<u32>,
    /// The replay's own id, which its message carries
    /// ([`crate::message::ReplayTicket`]): the replayer and the worker that
    /// takes the message both record it, and only the first one writes.
    #[serde(skip)]
    pub replay: Option<Uuid>,
}

/// How intake's refusal went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Refused: the client hears an error, nothing will be delivered.
    Refused,
    /// A worker had accepted it already (intake was slower than
    /// [`UNDECIDED_AFTER`]): the client must hear that it was accepted.
    AcceptedMeanwhile,
}

/// What the ledger says of a submission whose message a worker took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Intake accepted it; `done` if this target's delivery is finished
    /// (delivered or discarded) already, so that this is a second copy of
    /// the message (a resumed intake, a redelivery after a crash).
    Accepted { done: bool },
    /// Intake has not decided yet: it waits for the broker's confirm.
    Undecided { received_at: OffsetDateTime },
    /// Intake answered with an error: never deliver it.
    Refused,
    /// The ledger does not know it (a message from elsewhere, or a ledger
    /// that lost it).
    Unknown,
}

/// Submissions this process's intake saw the broker confirm, for a few
/// seconds: the worker of the same process takes their first copies as
/// accepted without asking the ledger, whose record of the confirm is
/// often a commit behind the broker's delivery. Other processes, and
/// copies that come later, ask the ledger ([`Store::admission`]).
///
/// It also knows the submissions this process's intake has published and
/// not decided on yet: the broker often hands a message to its consumer
/// before it confirms it to the publisher, and the worker that gets one of
/// these waits for intake's decision here instead of asking the ledger,
/// which cannot know more yet.
///
/// A hit also skips the ledger's duplicate check (`Accepted { done: true
/// }`): a second first copy within these seconds (a resumed publish under
/// the same id) is delivered again, with the same delivery id, as any
/// redelivery is, and a deduplicating back office takes it once.
#[derive(Debug, Default)]
pub struct RecentlyAccepted {
    generations: Mutex<Generations>,
    /// Wakes workers waiting for intake to hear the broker's confirm (or
    /// to give up on it).
    inserted: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Generations {
    current: std::collections::HashSet<Uuid>,
    previous: std::collections::HashSet<Uuid>,
    started: Option<std::time::Instant>,
    /// Published by this process's intake, not decided on yet.
    deciding: std::collections::HashSet<Uuid>,
}

/// How long an id stays in [`RecentlyAccepted`]: one to two of these.
const RECENT: Duration = Duration::from_secs(5);

/// Held by intake from just before it publishes a submission until it has
/// decided on it, however that ends (dropped with a cancelled request
/// too).
#[must_use]
pub struct Deciding<'a> {
    recent: &'a RecentlyAccepted,
    id: Uuid,
}

impl Drop for Deciding<'_> {
    fn drop(&mut self) {
        self.recent.generations.lock().expect("not poisoned").deciding.remove(&self.id);
        self.recent.inserted.notify_waiters();
    }
}

impl RecentlyAccepted {
    /// Intake is about to publish `id`.
    pub fn deciding(&self, id: Uuid) -> Deciding<'_> {
        self.generations.lock().expect("not poisoned").deciding.insert(id);
        Deciding { recent: self, id }
    }

    pub fn insert(&self, id: Uuid) {
        let mut generations = self.generations.lock().expect("not poisoned");
        generations.rotate();
        generations.current.insert(id);
        drop(generations);
        self.inserted.notify_waiters();
    }

    /// Whether `id` is accepted by this process's intake within `at_most`:
    /// the broker hands a message to its consumer about when it confirms it
    /// to the publisher, so a worker is often a moment ahead of intake.
    pub async fn wait_for(&self, id: Uuid, at_most: Duration) -> bool {
        tokio::time::timeout(at_most, async {
            loop {
                let inserted = self.inserted.notified();
                if self.contains(id) {
                    return;
                }
                inserted.await;
            }
        })
        .await
        .is_ok()
    }

    /// Whether this process's intake, deciding on `id` now, accepts it
    /// within `at_most`; false as soon as it has decided otherwise (or if
    /// it was not deciding).
    pub async fn wait_for_decision(&self, id: Uuid, at_most: Duration) -> bool {
        tokio::time::timeout(at_most, async {
            loop {
                let inserted = self.inserted.notified();
                match self.decision(id) {
                    Some(accepted) => return accepted,
                    None => inserted.await,
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Whether this process's intake is deciding on `id` right now.
    pub fn is_deciding(&self, id: Uuid) -> bool {
        self.generations.lock().expect("not poisoned").deciding.contains(&id)
    }

    pub fn contains(&self, id: Uuid) -> bool {
        let mut generations = self.generations.lock().expect("not poisoned");
        generations.rotate();
        generations.current.contains(&id) || generations.previous.contains(&id)
    }

    /// `Some(true)` if accepted, `Some(false)` if neither accepted nor
    /// being decided on, `None` while intake decides.
    fn decision(&self, id: Uuid) -> Option<bool> {
        let mut generations = self.generations.lock().expect("not poisoned");
        generations.rotate();
        if generations.current.contains(&id) || generations.previous.contains(&id) {
            Some(true)
        } else if generations.deciding.contains(&id) {
            None
        } else {
            Some(false)
        }
    }
}

impl Generations {
    fn rotate(&mut self) {
        let now = std::time::Instant::now();
        match self.started {
            Some(started) if now - started < RECENT => {}
            _ => {
                self.previous = std::mem::take(&mut self.current);
                self.started = Some(now);
            }
        }
    }
}

/// How long after its receipt a submission intake neither accepted nor
/// refused counts as left by an intake that died between the publish and
/// its answer. Intake waits at most [`crate::broker::CONFIRM_TIMEOUT`]
/// (10 s) for the broker, so a live intake has always decided by then.
pub const UNDECIDED_AFTER: Duration = Duration::from_secs(30);

/// Whether an operator's action took hold of the parked copy it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionClaim {
    /// Recorded now: the action stands.
    Recorded,
    /// This very action (the same replay id) was recorded before: it
    /// stands, nothing was written again.
    Repeated,
    /// Another action took this parked copy first (an interrupted replay
    /// whose message a worker took, a concurrent replay or discard): this
    /// one must not happen.
    Superseded,
}

/// One entry of the audit trail: the record and when the store took it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub at: String,
    #[serde(flatten)]
    pub record: OperatorRecord,
}

/// Size and hash of a rendered document or package.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    pub size: usize,
    pub sha256: String,
}

/// What one delivery attempt came to, as the worker records it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub submission: Uuid,
    pub target: TargetName,
    /// 1 for the first attempt (counted anew after a replay).
    pub attempt: u32,
    pub mapping_version: String,
    pub rendering: Rendering,
    /// How long the connector took; `None` when it was not called.
    pub duration: Option<Duration>,
    pub result: AttemptResult,
}

/// How far an attempt got with the mapping.
#[derive(Debug, Clone)]
pub enum Rendering {
    /// The mapping rendered this payload; the connector was called.
    Rendered(Fingerprint),
    /// The mapping failed, or its sandbox was unavailable.
    Failed,
    /// The attempt stopped before the mapping: the message could not be
    /// opened, or is not for this target.
    NotReached,
}

#[derive(Debug, Clone)]
pub enum AttemptResult {
    Delivered { detail: String, receipt: Option<String> },
    /// A transient failure; the next attempt follows after `retry_in`.
    Retrying { error: String, retry_in: Duration },
    /// Parked for an operator: `reason` is a [`crate::message::ParkReason`]
    /// kind, `error` what the mapping or the target said.
    Parked { reason: &'static str, error: String },
}

/// An event row of the timeline as every ledger writes it; fields not set
/// stay NULL.
#[derive(Default)]
struct NewEvent<'a> {
    kind: &'a str,
    target: Option<&'a str>,
    attempt: Option<u32>,
    mapping_version: Option<&'a str>,
    detail: Option<std::borrow::Cow<'a, str>>,
    receipt: Option<&'a str>,
    size: Option<i64>,
    sha256: Option<&'a str>,
    operator: Option<&'a str>,
    duration_ms: Option<i64>,
}

impl NewSubmission {
    /// Intake's one event row: `received`, carrying the targets routed to
    /// (the timeline shows it as `received` and `routed`, see
    /// [`Event::unfold`]).
    fn received_event(&self) -> NewEvent<'_> {
        let targets = self.targets.iter().map(TargetName::as_str).collect::<Vec<_>>().join(", ");
        NewEvent {
            kind: "received",
            size: Some(self.size as i64),
            sha256: Some(&self.sha256),
            detail: Some(targets.into()),
            ..NewEvent::default()
        }
    }
}

/// The `accepted` event's detail when a worker accepted what a dead
/// intake left undecided.
const ACCEPTED_BY_A_WORKER: &str = "by a worker: intake did not answer (it stopped between publish and answer)";
/// The `accepted` event's detail when an attempt is recorded for a
/// submission the ledger still holds as `received`: a worker delivers only
/// what intake accepted, so intake heard the broker's confirm, but its
/// record of it has not arrived (it was lost while the ledger was away,
/// or is still on its way) and must not be waited for.
const ACCEPTED_WITH_AN_ATTEMPT: &str = "recorded with the first attempt: intake's record of the broker's confirm had not reached the ledger";
/// The `dropped` event's detail.
const DROPPED_REFUSED: &str = "the broker had a message of this refused submission; it was dropped, not delivered";

/// What recording an attempt writes, in every ledger: its events in order,
/// and the delivery's new state, last outcome and receipt.
struct AttemptWrites<'a> {
    events: Vec<NewEvent<'a>>,
    state: DeliveryState,
    outcome: &'a str,
    receipt: Option<&'a str>,
}

impl AttemptRecord {
    fn writes(&self) -> AttemptWrites<'_> {
        let target = Some(self.target.as_str());
        let version = Some(self.mapping_version.as_str());
        let duration_ms = self.duration.map(|d| d.as_millis() as i64);
        let on = |kind| NewEvent { kind, target, attempt: Some(self.attempt), ..NewEvent::default() };
        let error = match &self.result {
            AttemptResult::Parked { error, .. } | AttemptResult::Retrying { error, .. } => Some(error.as_str()),
            AttemptResult::Delivered { .. } => None,
        };
        let rendered = matches!(self.rendering, Rendering::Rendered(_));
        // The connector's outcome carries what the mapping rendered: one
        // row, which the timeline shows as `mapped` and the outcome (see
        // [`Event::unfold`]).
        let called = |kind| match &self.rendering {
            Rendering::Rendered(mapped) => NewEvent {
                mapping_version: version,
                size: Some(mapped.size as i64),
                sha256: Some(&mapped.sha256),
                duration_ms,
                ..on(kind)
            },
            _ => NewEvent { duration_ms, ..on(kind) },
        };
        let mut events = Vec::with_capacity(2);
        if let Rendering::Failed = self.rendering {
            events.push(NewEvent { mapping_version: version, detail: error.map(Into::into), ..on("mapping-failed") });
        }
        // Not reached: the `parked` or `retry-scheduled` event below says why.
        let (state, outcome, receipt) = match &self.result {
            AttemptResult::Delivered { detail, receipt } => {
                events.push(NewEvent { detail: Some(detail.into()), receipt: receipt.as_deref(), ..called("delivered") });
                (DeliveryState::Delivered, detail.as_str(), receipt.as_deref())
            }
            AttemptResult::Retrying { error, retry_in } => {
                // Without a rendered payload the connector was not called:
                // `mapping-failed` above says what went wrong.
                if rendered {
                    events.push(NewEvent { detail: Some(error.into()), ..called("attempt-failed") });
                }
                let next = format!("next attempt in {}", humantime::format_duration(*retry_in));
                events.push(NewEvent { detail: Some(next.into()), ..on("retry-scheduled") });
                (DeliveryState::Retrying, error.as_str(), None)
            }
            AttemptResult::Parked { reason, error } => {
                if rendered {
                    events.push(NewEvent { detail: Some(error.into()), ..called("attempt-failed") });
                }
                // Stopped before the mapping, no other event carries the
                // error: the parking does.
                let why = match self.rendering {
                    Rendering::NotReached => format!("{reason}: {error}").into(),
                    _ => (*reason).into(),
                };
                events.push(NewEvent { detail: Some(why), ..on("parked") });
                (DeliveryState::Parked, error.as_str(), None)
            }
        };
        AttemptWrites { events, state, outcome, receipt }
    }
}

/// One entry of a submission's timeline.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at: String,
    /// `received`, `routed`, `accepted`, `mapped`, `mapping-failed`,
    /// `attempt-failed`, `delivered`, `retry-scheduled`, `parked`,
    /// `replayed` or `discarded`.
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping_version: Option<String>,
    /// The connector's outcome, the error, the parking reason, or the
    /// targets routed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The target's id for the delivered case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
}

/// A submission's timeline from its event rows, oldest first.
fn timeline(rows: impl IntoIterator<Item = Event>) -> Vec<Event> {
    let mut timeline = Vec::new();
    for row in rows {
        row.unfold(&mut timeline);
    }
    timeline
}

impl Event {
    /// Adds the timeline entries of one event row to `timeline`. The ledger
    /// writes a row per change of state, and two of them carry what the
    /// timeline shows as an entry of its own: intake's `received` the
    /// targets of `routed` (in its detail), and the connector's outcome
    /// (`delivered`, `attempt-failed`) what was `mapped` (its mapping
    /// version, size and hash). Rows written before they were joined have
    /// neither and stand alone.
    fn unfold(mut self, timeline: &mut Vec<Event>) {
        let bare = |event: &str, at: &str| Event { at: at.to_owned(), event: event.to_owned(), ..Event::default() };
        match self.event.as_str() {
            "received" if self.detail.is_some() => {
                let routed = Event { detail: self.detail.take(), ..bare("routed", &self.at) };
                timeline.extend([self, routed]);
            }
            "delivered" | "attempt-failed" if self.mapping_version.is_some() => {
                let mapped = Event {
                    target: self.target.clone(),
                    attempt: self.attempt,
                    mapping_version: self.mapping_version.take(),
                    size: self.size.take(),
                    sha256: self.sha256.take(),
                    ..bare("mapped", &self.at)
                };
                timeline.extend([mapped, self]);
            }
            _ => timeline.push(self),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmissionStatus {
    pub id: Uuid,
    pub status: SubmissionState,
    pub service: String,
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub received_at: String,
    /// Size in bytes and SHA-256 of the submission as received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The sender that handed it in (absent for submissions from before
    /// senders were recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Where FIT-Connect knows it, for a submission received from there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit_connect: Option<FitConnectIds>,
    pub targets: Vec<TargetStatus>,
    /// Everything that happened to the submission, oldest first.
    pub timeline: Vec<Event>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub target: String,
    pub state: DeliveryState,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
    /// The target's id for the delivered case, if it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
    pub updated_at: String,
    /// Version (content hash) of the mapping the last attempt used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping_version: Option<String>,
}

/// Which submissions a search finds; every given field must match.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub reference: Option<String>,
    pub service: Option<String>,
    /// An ARS prefix: `05315` finds every region of Köln.
    pub region: Option<String>,
    pub target: Option<String>,
    pub state: Option<SubmissionState>,
    /// Received at or after.
    pub from: Option<OffsetDateTime>,
    /// Received before.
    pub to: Option<OffsetDateTime>,
    pub limit: u32,
    /// Continue after this entry (from [`SearchPage::next`]).
    pub after: Option<Cursor>,
    /// Only submissions with a delivery to one of these targets (an
    /// operator's scope).
    pub within: Option<Vec<String>>,
}

/// A position in the search order (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub received_at: String,
    pub id: Uuid,
}

impl Cursor {
    /// The opaque text handed to clients.
    pub fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}|{}", self.received_at, self.id))
    }

    pub fn decode(text: &str) -> Option<Self> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (received_at, id) = text.split_once('|')?;
        Some(Self { received_at: received_at.to_owned(), id: id.parse().ok()? })
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmissionSummary {
    pub id: Uuid,
    pub status: SubmissionState,
    pub service: String,
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub received_at: String,
    pub targets: Vec<TargetState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetState {
    pub target: String,
    pub state: DeliveryState,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchPage {
    pub items: Vec<SubmissionSummary>,
    /// The cursor of the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl SearchPage {
    /// The page of `items`, fetched one beyond `limit` to tell whether
    /// another page follows.
    fn of(mut items: Vec<SubmissionSummary>, limit: usize) -> Self {
        let next = (items.len() > limit).then(|| {
            items.truncate(limit);
            let last = items.last().expect("a full page has a last entry");
            Cursor { received_at: last.received_at.clone(), id: last.id }.encode()
        });
        Self { items, next }
    }
}

/// The deliveries of a search result as the ledgers aggregate them:
/// `target state,target state,…`.
fn target_states(aggregated: &str) -> Vec<TargetState> {
    aggregated
        .split(',')
        .filter_map(|t| t.split_once(' '))
        .map(|(target, state)| TargetState { target: target.to_owned(), state: DeliveryState::parse(state) })
        .collect()
}

/// What happened at one target over a period, from the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetActivity {
    pub delivered: u64,
    /// Attempts that failed (transiently or permanently, mapping included).
    pub failed: u64,
    pub parked: u64,
}

/// A submission's ids at FIT-Connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FitConnectIds {
    pub submission_id: String,
    pub case_id: String,
    pub destination_id: String,
}

/// What amtsbote decided about a submission fetched from FIT-Connect
/// (see [`crate::fit_connect`]), recorded before the decision is sent, so
/// that a restart sends the same decision instead of deciding again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitConnectDecision {
    /// FIT-Connect's id of the submission.
    pub fit_submission: Uuid,
    pub case_id: Uuid,
    pub destination: Uuid,
    /// amtsbote's submission, for an acceptance.
    pub submission: Option<Uuid>,
    pub verdict: Verdict,
    /// What the decision's event carries: the authentication tags of an
    /// acceptance, the problems of a rejection (FIT-Connect's problem
    /// types and instances; nothing of the submission's content).
    pub payload: String,
    /// Set by the store.
    pub decided_at: String,
    /// When FIT-Connect took the decision (or said it had it already).
    pub sent_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Reject,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Reject => "reject",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "accept" { Verdict::Accept } else { Verdict::Reject }
    }
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a submission (state `received`, events `received` and
    /// `routed`) and claims its idempotency key, atomically.
    async fn begin_intake(&self, submission: NewSubmission, key: Option<IdempotencyKey>) -> Result<Claim, StoreError>;
    /// The broker confirmed the submission.
    async fn confirm_intake(&self, id: Uuid) -> Result<(), StoreError>;
    /// Intake answers the submission with an error (the broker did not
    /// confirm it, an attachment could not be stored, ...): it becomes
    /// `refused`, with `reason` in its timeline, and no worker delivers it,
    /// even if the broker has its message after all (a confirm lost with
    /// the connection). With an idempotency key the claim is released, so
    /// that the client's retry resumes under the same id. Unless a worker
    /// accepted the submission first (see [`Store::accept_undecided`]):
    /// then intake must answer that it was accepted.
    async fn refuse_intake(&self, id: Uuid, reason: &str) -> Result<Refusal, StoreError>;
    /// What a worker may do with the first copy of a submission's message
    /// it takes for `target`: the ledger, not the broker, says whether
    /// intake accepted it.
    async fn admission(&self, id: Uuid, target: &str) -> Result<Admission, StoreError>;
    /// Accepts a submission intake neither accepted nor refused, if it was
    /// received before `received_before`: its intake died between the
    /// publish and the answer, so nobody was told "no". True if the
    /// submission is accepted now (by this call or before).
    async fn accept_undecided(&self, id: Uuid, received_before: OffsetDateTime) -> Result<bool, StoreError>;
    /// A worker dropped the message of a refused submission for `target`.
    async fn record_refused_message(&self, id: Uuid, target: &str) -> Result<(), StoreError>;
    /// A delivery attempt ended; updates the target's state and adds the
    /// attempt's events to the timeline.
    async fn record_attempt(&self, attempt: AttemptRecord) -> Result<(), StoreError>;
    /// Keeps a mapping's source under its version, so that deliveries in
    /// flight map with it even after the file changed and amtsbote
    /// restarted.
    async fn keep_mapping_version(&self, version: &str, name: &str, source: &str) -> Result<(), StoreError>;
    /// The source kept under `version`.
    async fn mapping_version(&self, version: &str) -> Result<Option<String>, StoreError>;
    /// A submission with its targets and timeline.
    async fn status(&self, id: Uuid) -> Result<Option<SubmissionStatus>, StoreError>;
    /// Submissions matching `query`, newest first, one page.
    async fn search(&self, query: SearchQuery) -> Result<SearchPage, StoreError>;
    /// Records who replayed or discarded a parked delivery, and sets the
    /// delivery's state accordingly, unless another action took the same
    /// parked copy (`generation`) first: a unique constraint decides, so
    /// each parked copy is replayed or discarded at most once, whichever
    /// process asks.
    async fn record_operator_action(&self, record: OperatorRecord) -> Result<ActionClaim, StoreError>;
    /// The action that took the parked copy `generation` of a delivery, if
    /// one did: a copy still in the parking queue after that is left over
    /// from an interrupted replay or discard.
    async fn parked_action(&self, submission: &str, target: &str, generation: u32) -> Result<Option<OperatorAction>, StoreError>;
    /// The audit trail, newest first; only of the `within` targets if
    /// given.
    async fn audit_trail(&self, limit: u32, within: Option<Vec<String>>) -> Result<Vec<AuditEntry>, StoreError>;
    /// Per target: deliveries and failures since `since`. It counts every
    /// outcome in the period, so a dashboard page asks, a scrape does not.
    async fn activity(&self, since: OffsetDateTime) -> Result<std::collections::BTreeMap<String, TargetActivity>, StoreError>;
    /// Per target that has one: when the oldest submission it does not
    /// have yet (queued, retrying or parked) was received.
    async fn oldest_undelivered(&self) -> Result<std::collections::BTreeMap<String, OffsetDateTime>, StoreError>;
    /// Removes up to `limit` finished (delivered or discarded) submissions
    /// received before `before`, with their timelines and idempotency
    /// keys, and operator records older than that; returns how many
    /// submissions went.
    async fn prune(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError>;
    /// The submission claimed under idempotency key `key`, with the key's
    /// fingerprint, if the broker confirmed it (accepted, or further on).
    async fn accepted_under_key(&self, key: &str) -> Result<Option<(Uuid, [u8; 32])>, StoreError>;
    /// Records the decision about a FIT-Connect submission unless one is
    /// recorded already; returns the one recorded, which is the one to
    /// send (one decision per submission, whichever process asks).
    async fn decide_fit_connect(&self, decision: FitConnectDecision) -> Result<FitConnectDecision, StoreError>;
    /// The decision recorded about a FIT-Connect submission, if any.
    async fn fit_connect_decision(&self, fit_submission: Uuid) -> Result<Option<FitConnectDecision>, StoreError>;
    /// FIT-Connect has the decision.
    async fn fit_connect_decision_sent(&self, fit_submission: Uuid) -> Result<(), StoreError>;
    /// Proves the store takes writes (for `/readyz`).
    async fn check_writable(&self) -> Result<(), StoreError>;
    /// Of `ids`, the submissions no delivery needs any more: each of
    /// their deliveries delivered or discarded, the last before `before`,
    /// or unknown to the ledger (refused, or pruned). Their attachments
    /// may go (see [`crate::blobs`]).
    async fn finished_among(&self, ids: Vec<Uuid>, before: OffsetDateTime) -> Result<Vec<Uuid>, StoreError>;
    /// This ledger's name, made once when it was created: the blob store
    /// remembers whose blobs it keeps (see [`crate::blobs::BlobStore::claim`]).
    async fn ledger_id(&self) -> Result<String, StoreError>;
}

/// Submissions [`prune_periodically`] removes per write, so that pruning
/// never holds the writer for long.
const PRUNE_CHUNK: u32 = 500;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Removes what is past `retention` now and then every hour, until
/// `shutdown` turns true.
pub async fn prune_periodically(store: Arc<dyn Store>, retention: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let before = OffsetDateTime::now_utc() - retention;
        let mut pruned = 0;
        loop {
            match store.prune(before, PRUNE_CHUNK).await {
                Ok(removed) => {
                    pruned += removed;
                    if removed < u64::from(PRUNE_CHUNK) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(event = "store_failed", error = %e, "could not prune the ledger");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::info!(event = "ledger_pruned", submissions = pruned, before = %timestamp(before), "ledger pruned");
        }
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Where the ledger is: the embedded SQLite file for one host (the
/// default), or a PostgreSQL database that the processes of several hosts
/// share.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// SQLite file (default `var/amtsbote.sqlite`); created if missing.
    /// Not used when `postgres` is set.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// The ledger on PostgreSQL instead of the SQLite file: needed when
    /// amtsbote runs on several hosts (see the README, "Running on several
    /// hosts").
    #[serde(default)]
    pub postgres: Option<PostgresSettings>,
    /// How long the ledger keeps a finished (delivered or discarded)
    /// submission's timeline, and operator records (default `90d`).
    /// Submissions still on their way are kept whatever their age.
    #[serde(default = "default_retention", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retention: Duration,
}

/// Opens the ledger the settings name: the one place that picks the
/// `Store` implementation. `context` resolves secret references and
/// relative paths.
pub async fn open(settings: &StoreSettings, context: &amtsbote_connector::Context) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &settings.postgres {
        Some(postgres) => Arc::new(PostgresStore::open(postgres, context).await?),
        None => Arc::new(SqliteStore::open(&settings.path)?),
    })
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self { path: default_store_path(), postgres: None, retention: default_retention() }
    }
}

fn default_store_path() -> PathBuf {
    "var/amtsbote.sqlite".into()
}

fn default_retention() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_waiting_for_intake_hears_of_the_acceptance_at_once() {
        let recent = Arc::new(RecentlyAccepted::default());
        let (id, other) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(!recent.contains(id));
        let waiting = tokio::spawn({
            let recent = recent.clone();
            async move { recent.wait_for(id, Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        recent.insert(other);
        recent.insert(id);
        assert!(tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap(), "woken by the insert, long before 10 s");
        assert!(recent.contains(id));
        assert!(!recent.wait_for(Uuid::now_v7(), Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn a_worker_waiting_for_intake_hears_its_decision_either_way_at_once() {
        let recent = Arc::new(RecentlyAccepted::default());
        let (accepted, refused) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(!recent.is_deciding(accepted));
        assert!(!recent.wait_for_decision(accepted, Duration::from_secs(10)).await, "not deciding: false at once");
        let wait = |id| {
            let recent = recent.clone();
            tokio::spawn(async move { recent.wait_for_decision(id, Duration::from_secs(10)).await })
        };
        let deciding_accepted = recent.deciding(accepted);
        let deciding_refused = recent.deciding(refused);
        assert!(recent.is_deciding(accepted));
        let (waiting_accepted, waiting_refused) = (wait(accepted), wait(refused));
        tokio::time::sleep(Duration::from_millis(20)).await;
        recent.insert(accepted);
        drop(deciding_accepted);
        drop(deciding_refused);
        let heard = |waiting: tokio::task::JoinHandle<bool>| async { tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap() };
        assert!(heard(waiting_accepted).await, "accepted, heard long before 10 s");
        assert!(!heard(waiting_refused).await, "refused (intake gave up), heard long before 10 s");
        assert!(!recent.is_deciding(accepted) && !recent.is_deciding(refused));
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = Cursor { received_at: "2026-11-24T10:00:00.000Z".into(), id: Uuid::new_v4() };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not a cursor"), None);
    }
}
