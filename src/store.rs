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
//! [`Store`] is the seam (a PostgreSQL store for several nodes would be a
//! second implementation); [`SqliteStore`] the embedded one:
//!
//! * WAL and `synchronous=NORMAL`: a crash of the process loses nothing, a
//!   power loss may lose the last state changes but never a submission,
//!   which the broker holds.
//! * Group commit: all writes go to one writer thread, which runs what has
//!   queued up meanwhile (up to [`MAX_BATCH`] writes) in one transaction,
//!   each write in its own savepoint, and answers each caller after the
//!   commit. Under load many writes share one fsync, so the ledger does
//!   not become the bottleneck; each caller still learns that its own
//!   write is durable. Under load the writer lingers for
//!   [`COMMIT_WINDOW`] so that more writes share a commit.
//! * Reads use their own connection and never wait for the writer.
//! * [`Store::prune`] removes finished submissions past the retention
//!   (see [`StoreSettings::retention`]).

use std::path::PathBuf;
use serde::Deserialize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::domain::{TargetName, timestamp};

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
#[derive(Debug, Default)]
pub struct RecentlyAccepted {
    generations: Mutex<Generations>,
    /// Wakes workers waiting for intake to hear the broker's confirm.
    inserted: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Generations {
    current: std::collections::HashSet<Uuid>,
    previous: std::collections::HashSet<Uuid>,
    started: Option<std::time::Instant>,
}

/// How long an id stays in [`RecentlyAccepted`]: one to two of these.
const RECENT: Duration = Duration::from_secs(5);

impl RecentlyAccepted {
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

    pub fn contains(&self, id: Uuid) -> bool {
        let mut generations = self.generations.lock().expect("not poisoned");
        generations.rotate();
        generations.current.contains(&id) || generations.previous.contains(&id)
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

/// One entry of a submission's timeline.
#[derive(Debug, Clone, Serialize)]
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

/// What happened at one target over a period, from the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetActivity {
    pub delivered: u64,
    /// Attempts that failed (transiently or permanently, mapping included).
    pub failed: u64,
    pub parked: u64,
    /// When the oldest submission this target does not have yet (queued,
    /// retrying or parked) was received.
    pub oldest_undelivered: Option<String>,
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
    /// Per target: deliveries and failures since `since`, and the oldest
    /// undelivered submission.
    async fn activity(&self, since: OffsetDateTime) -> Result<std::collections::BTreeMap<String, TargetActivity>, StoreError>;
    /// Removes up to `limit` finished (delivered or discarded) submissions
    /// received before `before`, with their timelines and idempotency
    /// keys, and operator records older than that; returns how many
    /// submissions went.
    async fn prune(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError>;
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

/// A claim of an idempotency key that has not reached the broker's
/// confirm after this long belongs to a request that died.
const STALE_CLAIM: Duration = Duration::from_secs(15);

/// The most writes one transaction of the writer takes.
pub const MAX_BATCH: usize = 512;

/// Under load (the last batch held more than one write) the writer waits
/// this long after the first write of a batch for others to join it. Each
/// commit writes every page it changed to the WAL, and the writes of a
/// submission's life touch the same few pages at the ends of the indexes,
/// so thirty writes in one commit cost little more than three. Measured
/// with `scripts/bench` at saturation: amtsbote's CPU per submission fell
/// from about 296 to 254 µs, for at most this much latency per write.
/// Alone, a write is committed at once.
const COMMIT_WINDOW: Duration = Duration::from_millis(1);

/// Writes waiting for the writer; a full queue makes callers wait.
const WRITE_QUEUE: usize = 4096;

/// A write as the writer thread runs it: the work (in a savepoint of the
/// batch's transaction) returns what to tell its caller once the commit's
/// outcome is known.
type Job = Box<dyn FnOnce(&mut Connection) -> Completion + Send>;
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;

pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
}

/// `temp_store`: each write of a batch runs in a savepoint, whose journal
/// would otherwise go to a temporary file.
const PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
PRAGMA temp_store = MEMORY;
";

/// The state of a submission across its targets, from its deliveries, as
/// an SQL expression over a `submissions` row; `received` stays until the
/// broker confirmed. (A macro, so that `concat!` can build statements.)
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

/// Schema versions in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: [&str; 7] = [
    "
CREATE TABLE IF NOT EXISTS submissions (
    id          TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    region      TEXT NOT NULL,
    reference   TEXT,
    state       TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    submission_id TEXT NOT NULL REFERENCES submissions(id) ON DELETE CASCADE,
    target        TEXT NOT NULL,
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_outcome  TEXT,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (submission_id, target)
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key           TEXT PRIMARY KEY,
    fingerprint   BLOB NOT NULL,
    submission_id TEXT NOT NULL REFERENCES submissions(id) ON DELETE CASCADE,
    created_at    TEXT NOT NULL
);
",
    "
ALTER TABLE idempotency_keys ADD COLUMN claimed_at TEXT;
CREATE TABLE operator_actions (
    at            TEXT NOT NULL,
    operator      TEXT NOT NULL,
    action        TEXT NOT NULL,
    target        TEXT NOT NULL,
    submission_id TEXT NOT NULL,
    parked_reason TEXT NOT NULL,
    comment       TEXT
);
CREATE INDEX operator_actions_at ON operator_actions (at);
",
    "
ALTER TABLE deliveries ADD COLUMN mapping_version TEXT;
CREATE TABLE mapping_versions (
    version    TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    source     TEXT NOT NULL,
    first_seen TEXT NOT NULL
);
",
    // The ledger. Times become fixed-width (milliseconds, `Z`) so that
    // they compare as text; `submissions.state` becomes the state across
    // targets, kept by UPDATE_SUBMISSION_STATE.
    concat!("
ALTER TABLE submissions ADD COLUMN size INTEGER;
ALTER TABLE submissions ADD COLUMN sha256 TEXT;
ALTER TABLE deliveries ADD COLUMN receipt TEXT;
CREATE TABLE events (
    submission_id   TEXT NOT NULL REFERENCES submissions(id) ON DELETE CASCADE,
    at              TEXT NOT NULL,
    kind            TEXT NOT NULL,
    target          TEXT,
    attempt         INTEGER,
    mapping_version TEXT,
    detail          TEXT,
    receipt         TEXT,
    size            INTEGER,
    sha256          TEXT,
    operator        TEXT,
    duration_ms     INTEGER
);
CREATE INDEX events_submission ON events (submission_id);
CREATE INDEX events_at ON events (at, target);
CREATE INDEX submissions_received ON submissions (received_at, id);
CREATE INDEX submissions_reference ON submissions (reference);
CREATE INDEX deliveries_open ON deliveries (state, target);
CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT NOT NULL);
UPDATE submissions SET received_at = strftime('%Y-%m-%dT%H:%M:%fZ', received_at);
UPDATE deliveries SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', updated_at);
UPDATE operator_actions SET at = strftime('%Y-%m-%dT%H:%M:%fZ', at);
UPDATE submissions SET state = ", submission_state!(), ";
"),
    // Who handed the submission in (a configured sender's name).
    "
ALTER TABLE submissions ADD COLUMN sender TEXT;
",
    // The ledger's own name, which a blob store remembers (see
    // `Store::ledger_id`).
    "
CREATE TABLE ledger (id INTEGER PRIMARY KEY CHECK (id = 1), ledger_id TEXT NOT NULL);
INSERT INTO ledger (id, ledger_id) VALUES (1, lower(hex(randomblob(16))));
",
    // One operator action per parked copy of a delivery (its replay
    // count when parked): an interrupted replay cannot happen twice.
    "
ALTER TABLE operator_actions ADD COLUMN generation INTEGER;
ALTER TABLE operator_actions ADD COLUMN replay_id TEXT;
CREATE UNIQUE INDEX operator_actions_once ON operator_actions (submission_id, target, generation)
    WHERE generation IS NOT NULL;
",
];

/// Sets the state of the submission `?1` across its targets after a change
/// of its deliveries.
const UPDATE_SUBMISSION_STATE: &str = concat!("UPDATE submissions SET state = ", submission_state!(), " WHERE id = ?1");

/// Marks the submission `?1` confirmed by the broker: its state across
/// its targets, which a fast worker may have moved on already.
const CONFIRM_SUBMISSION: &str =
    concat!("UPDATE submissions SET state = CASE ", state_once_accepted!(), " WHERE id = ?1 AND state = 'received'");

fn now() -> String {
    timestamp(OffsetDateTime::now_utc())
}

/// An event row; fields not set stay NULL.
#[derive(Default)]
struct NewEvent<'a> {
    kind: &'a str,
    target: Option<&'a str>,
    attempt: Option<u32>,
    mapping_version: Option<&'a str>,
    detail: Option<&'a str>,
    receipt: Option<&'a str>,
    size: Option<i64>,
    sha256: Option<&'a str>,
    operator: Option<&'a str>,
    duration_ms: Option<i64>,
}

/// Adds an event of a submission the ledger knows (see [`known`]).
fn add_event(conn: &Connection, submission: &str, at: &str, e: NewEvent<'_>) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (submission_id, at, kind, target, attempt, mapping_version, detail, receipt, size, sha256, operator, duration_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        submission, at, e.kind, e.target, e.attempt, e.mapping_version, e.detail, e.receipt, e.size, e.sha256, e.operator, e.duration_ms
    ])?;
    Ok(())
}

/// Whether the ledger knows the submission: what happens to one that
/// retention removed (a late attempt, an operator's action on an old
/// parked message) is not recorded against it.
fn known(conn: &Connection, submission: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM submissions WHERE id = ?1)")?.query_row([submission], |r| r.get(0))
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::Directory { path: dir.display().to_string(), source })?;
        }
        let open = || -> Result<Connection, rusqlite::Error> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.execute_batch(PRAGMAS)?;
            Ok(conn)
        };
        let mut writer = open()?;
        migrate(&mut writer)?;
        let reader = open()?;
        let (jobs, queue) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("amtsbote-store-writer".into())
            .spawn(move || write_batches(writer, queue))
            .map_err(StoreError::Thread)?;
        Ok(Self { jobs, reader: Arc::new(Mutex::new(reader)) })
    }

    /// Runs `work` on the reading connection.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&conn)
        })
        .await
        .map_err(|_| StoreError::Join)?
        .map_err(StoreError::from)
    }

    /// Runs `work` in the writer's next batch; answers after the commit.
    /// An error in `work` undoes only `work`'s own changes.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            let result = conn.savepoint().and_then(|savepoint| {
                let value = work(&savepoint)?;
                savepoint.commit()?;
                Ok(value)
            });
            Box::new(move |committed: Result<(), String>| {
                let _ = answer.send(match (result, committed) {
                    (Err(e), _) => Err(StoreError::Sqlite(e)),
                    (Ok(_), Err(e)) => Err(StoreError::Commit(e)),
                    (Ok(value), Ok(())) => Ok(value),
                });
            })
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        answered.await.map_err(|_| StoreError::Closed)?
    }
}

/// The writer thread: one transaction per batch of queued writes. Ends
/// when the store is dropped.
fn write_batches(mut conn: Connection, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut busy = false;
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        if busy {
            std::thread::sleep(COMMIT_WINDOW);
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if conn.execute_batch("BEGIN IMMEDIATE").is_err() {
            // Without the batch's transaction each write's savepoint is a
            // transaction of its own: its result is the write's result.
            for job in batch.drain(..) {
                job(&mut conn)(Ok(()));
            }
            continue;
        }
        busy = batch.len() > 1;
        let completions: Vec<Completion> = batch.drain(..).map(|job| job(&mut conn)).collect();
        let committed = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for complete in completions {
            complete(committed.clone());
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    let applied: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (version, migration) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
    }
    tx.commit()
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn begin_intake(&self, s: NewSubmission, key: Option<IdempotencyKey>) -> Result<Claim, StoreError> {
        self.write(move |tx| {
            if let Some(k) = &key {
                let existing: Option<(Vec<u8>, String, String, String, Option<String>)> = tx
                    .query_row(
                        "SELECT k.fingerprint, k.submission_id, s.state, s.received_at, k.claimed_at FROM idempotency_keys k
                         JOIN submissions s ON s.id = k.submission_id WHERE k.key = ?1",
                        [&k.key],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                    )
                    .optional()?;
                if let Some((fingerprint, id, state, received_at, claimed_at)) = existing {
                    let id: Uuid = id.parse().expect("stored ids are UUIDs");
                    if fingerprint != k.fingerprint {
                        return Ok(Claim::Mismatch);
                    }
                    if state == "refused" {
                        // Refused before: this retry is accepted or refused
                        // afresh, under the same id.
                        let at = now();
                        let sid = id.to_string();
                        tx.execute("UPDATE submissions SET state = 'received' WHERE id = ?1", [&sid])?;
                        tx.execute(
                            "UPDATE deliveries SET state = 'queued', last_outcome = NULL, updated_at = ?2 WHERE submission_id = ?1",
                            params![sid, at],
                        )?;
                        tx.execute("UPDATE idempotency_keys SET claimed_at = ?2 WHERE key = ?1", params![k.key, at])?;
                        add_event(tx, &sid, &at, NewEvent { kind: "resumed", ..NewEvent::default() })?;
                        let received_at = OffsetDateTime::parse(&received_at, &Rfc3339).expect("stored times are RFC 3339");
                        return Ok(Claim::Resume { id, received_at });
                    }
                    if state != "received" {
                        return Ok(Claim::Replay { id });
                    }
                    let claimed = claimed_at.as_deref().unwrap_or(&received_at);
                    let stale = OffsetDateTime::parse(claimed, &Rfc3339)
                        .map(|at| OffsetDateTime::now_utc() - at > STALE_CLAIM)
                        .unwrap_or(true);
                    if !stale {
                        return Ok(Claim::InProgress);
                    }
                    tx.execute("UPDATE idempotency_keys SET claimed_at = ?2 WHERE key = ?1", params![k.key, now()])?;
                    let received_at = OffsetDateTime::parse(&received_at, &Rfc3339).expect("stored times are RFC 3339");
                    return Ok(Claim::Resume { id, received_at });
                }
            }
            let id = s.id.to_string();
            let received_at = timestamp(s.received_at);
            tx.prepare_cached(
                "INSERT INTO submissions (id, service, region, reference, state, received_at, size, sha256, sender)
                 VALUES (?1, ?2, ?3, ?4, 'received', ?5, ?6, ?7, ?8)",
            )?
            .execute(params![id, s.service, s.region, s.reference, received_at, s.size as i64, s.sha256, s.sender])?;
            for target in &s.targets {
                tx.prepare_cached("INSERT INTO deliveries (submission_id, target, state, updated_at) VALUES (?1, ?2, 'queued', ?3)")?
                    .execute(params![id, target.as_str(), received_at])?;
            }
            let size = Some(s.size as i64);
            add_event(tx, &id, &received_at, NewEvent { kind: "received", size, sha256: Some(&s.sha256), ..NewEvent::default() })?;
            let targets = s.targets.iter().map(TargetName::as_str).collect::<Vec<_>>().join(", ");
            add_event(tx, &id, &received_at, NewEvent { kind: "routed", detail: Some(&targets), ..NewEvent::default() })?;
            if let Some(k) = &key {
                tx.prepare_cached(
                    "INSERT INTO idempotency_keys (key, fingerprint, submission_id, created_at, claimed_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                )?
                .execute(params![k.key, k.fingerprint.as_slice(), id, received_at])?;
            }
            Ok(Claim::Fresh)
        })
        .await
    }

    async fn confirm_intake(&self, id: Uuid) -> Result<(), StoreError> {
        self.write(move |conn| {
            let id = id.to_string();
            if conn.prepare_cached(CONFIRM_SUBMISSION)?.execute([&id])? > 0 {
                add_event(conn, &id, &now(), NewEvent { kind: "accepted", ..NewEvent::default() })?;
            }
            Ok(())
        })
        .await
    }

    async fn refuse_intake(&self, id: Uuid, reason: &str) -> Result<Refusal, StoreError> {
        let reason = reason.to_owned();
        self.write(move |conn| {
            let (id, at) = (id.to_string(), now());
            let refused = conn.execute("UPDATE submissions SET state = 'refused' WHERE id = ?1 AND state = 'received'", [&id])?;
            if refused == 0 {
                let state: Option<String> =
                    conn.query_row("SELECT state FROM submissions WHERE id = ?1", [&id], |r| r.get(0)).optional()?;
                // Unknown or refused already: nothing changes. Anything else
                // was accepted by a worker meanwhile.
                return Ok(match state.as_deref() {
                    None | Some("refused") => Refusal::Refused,
                    Some(_) => Refusal::AcceptedMeanwhile,
                });
            }
            conn.execute(
                "UPDATE deliveries SET state = 'refused', last_outcome = ?2, updated_at = ?3 WHERE submission_id = ?1",
                params![id, reason, at],
            )?;
            // The claim is released: a retry with the key resumes at once.
            conn.execute("UPDATE idempotency_keys SET claimed_at = '1970-01-01T00:00:00Z' WHERE submission_id = ?1", [&id])?;
            add_event(conn, &id, &at, NewEvent { kind: "refused", detail: Some(&reason), ..NewEvent::default() })?;
            Ok(Refusal::Refused)
        })
        .await
    }

    async fn admission(&self, id: Uuid, target: &str) -> Result<Admission, StoreError> {
        let target = target.to_owned();
        self.read(move |conn| {
            let row: Option<(String, String, Option<String>)> = conn
                .prepare_cached(
                    "SELECT s.state, s.received_at, d.state FROM submissions s
                     LEFT JOIN deliveries d ON d.submission_id = s.id AND d.target = ?2 WHERE s.id = ?1",
                )?
                .query_row(params![id.to_string(), target], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            Ok(match row {
                None => Admission::Unknown,
                Some((state, _, _)) if state == "refused" => Admission::Refused,
                Some((state, received_at, _)) if state == "received" => Admission::Undecided {
                    received_at: OffsetDateTime::parse(&received_at, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH),
                },
                Some((_, _, delivery)) => Admission::Accepted { done: matches!(delivery.as_deref(), Some("delivered" | "discarded")) },
            })
        })
        .await
    }

    async fn accept_undecided(&self, id: Uuid, received_before: OffsetDateTime) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let id = id.to_string();
            let accepted = conn.execute(
                concat!("UPDATE submissions SET state = CASE ", state_once_accepted!(), " WHERE id = ?1 AND state = 'received' AND received_at < ?2"),
                params![id, timestamp(received_before)],
            )?;
            if accepted > 0 {
                add_event(conn, &id, &now(), NewEvent {
                    kind: "accepted",
                    detail: Some("by a worker: intake did not answer (it stopped between publish and answer)"),
                    ..NewEvent::default()
                })?;
            }
            let state: Option<String> = conn.query_row("SELECT state FROM submissions WHERE id = ?1", [&id], |r| r.get(0)).optional()?;
            Ok(state.is_some_and(|state| state != "received" && state != "refused"))
        })
        .await
    }

    async fn record_refused_message(&self, id: Uuid, target: &str) -> Result<(), StoreError> {
        let target = target.to_owned();
        self.write(move |conn| {
            let id = id.to_string();
            if known(conn, &id)? {
                add_event(conn, &id, &now(), NewEvent {
                    kind: "dropped",
                    target: Some(&target),
                    detail: Some("the broker had a message of this refused submission; it was dropped, not delivered"),
                    ..NewEvent::default()
                })?;
            }
            Ok(())
        })
        .await
    }

    async fn record_attempt(&self, a: AttemptRecord) -> Result<(), StoreError> {
        self.write(move |conn| {
            let (id, target, at) = (a.submission.to_string(), a.target.as_str(), now());
            if !known(conn, &id)? {
                return Ok(());
            }
            let version = Some(a.mapping_version.as_str());
            let attempt = Some(a.attempt);
            let duration_ms = a.duration.map(|d| d.as_millis() as i64);
            let on = |kind| NewEvent { kind, target: Some(target), attempt, ..NewEvent::default() };
            let error = match &a.result {
                AttemptResult::Parked { error, .. } | AttemptResult::Retrying { error, .. } => Some(error.as_str()),
                AttemptResult::Delivered { .. } => None,
            };
            let rendered = matches!(a.rendering, Rendering::Rendered(_));
            match &a.rendering {
                Rendering::Rendered(mapped) => add_event(conn, &id, &at, NewEvent {
                    mapping_version: version,
                    size: Some(mapped.size as i64),
                    sha256: Some(&mapped.sha256),
                    ..on("mapped")
                })?,
                Rendering::Failed => {
                    add_event(conn, &id, &at, NewEvent { mapping_version: version, detail: error, ..on("mapping-failed") })?;
                }
                // The `parked` or `retry-scheduled` event below says why.
                Rendering::NotReached => {}
            }
            let (state, outcome, receipt) = match &a.result {
                AttemptResult::Delivered { detail, receipt } => {
                    add_event(conn, &id, &at, NewEvent { detail: Some(detail), receipt: receipt.as_deref(), duration_ms, ..on("delivered") })?;
                    (DeliveryState::Delivered, detail.clone(), receipt.clone())
                }
                AttemptResult::Retrying { error, retry_in } => {
                    // Without a rendered payload the connector was not
                    // called: `mapping-failed` above says what went wrong.
                    if rendered {
                        add_event(conn, &id, &at, NewEvent { detail: Some(error), duration_ms, ..on("attempt-failed") })?;
                    }
                    let next = format!("next attempt in {}", humantime::format_duration(*retry_in));
                    add_event(conn, &id, &at, NewEvent { detail: Some(&next), ..on("retry-scheduled") })?;
                    (DeliveryState::Retrying, error.clone(), None)
                }
                AttemptResult::Parked { reason, error } => {
                    if rendered {
                        add_event(conn, &id, &at, NewEvent { detail: Some(error), duration_ms, ..on("attempt-failed") })?;
                    }
                    // Stopped before the mapping, no other event carries the
                    // error: the parking does.
                    let why = match a.rendering {
                        Rendering::NotReached => format!("{reason}: {error}"),
                        _ => (*reason).to_owned(),
                    };
                    add_event(conn, &id, &at, NewEvent { detail: Some(&why), ..on("parked") })?;
                    (DeliveryState::Parked, error.clone(), None)
                }
            };
            conn.prepare_cached(
                "INSERT INTO deliveries (submission_id, target, state, attempts, last_outcome, updated_at, mapping_version, receipt)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7)
                 ON CONFLICT (submission_id, target) DO UPDATE SET
                   state = excluded.state, attempts = attempts + 1, last_outcome = excluded.last_outcome,
                   updated_at = excluded.updated_at, mapping_version = excluded.mapping_version,
                   receipt = coalesce(excluded.receipt, receipt)",
            )?
            .execute(params![id, target, state.as_str(), outcome, at, a.mapping_version, receipt])?;
            conn.prepare_cached(UPDATE_SUBMISSION_STATE)?.execute([&id])?;
            Ok(())
        })
        .await
    }

    async fn keep_mapping_version(&self, version: &str, name: &str, source: &str) -> Result<(), StoreError> {
        let (version, name, source) = (version.to_owned(), name.to_owned(), source.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO mapping_versions (version, name, source, first_seen) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (version) DO NOTHING",
                params![version, name, source, now()],
            )?;
            Ok(())
        })
        .await
    }

    async fn ledger_id(&self) -> Result<String, StoreError> {
        self.read(|conn| conn.query_row("SELECT ledger_id FROM ledger WHERE id = 1", [], |r| r.get(0))).await
    }

    async fn mapping_version(&self, version: &str) -> Result<Option<String>, StoreError> {
        let version = version.to_owned();
        self.read(move |conn| {
            conn.query_row("SELECT source FROM mapping_versions WHERE version = ?1", [&version], |r| r.get::<_, String>(0))
                .optional()
        })
        .await
    }

    async fn record_operator_action(&self, r: OperatorRecord) -> Result<ActionClaim, StoreError> {
        self.write(move |conn| {
            let at = now();
            let replay = r.replay.map(|id| id.to_string());
            let inserted = conn.execute(
                "INSERT INTO operator_actions (at, operator, action, target, submission_id, parked_reason, comment, generation, replay_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
                params![at, r.operator, r.action.as_str(), r.target, r.submission_id, r.parked_reason, r.comment, r.generation, replay],
            )?;
            if inserted == 0 {
                let (action, replay_id): (String, Option<String>) = conn.query_row(
                    "SELECT action, replay_id FROM operator_actions WHERE submission_id = ?1 AND target = ?2 AND generation = ?3",
                    params![r.submission_id, r.target, r.generation],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                let same = OperatorAction::parse(&action) == r.action && replay_id == replay;
                return Ok(if same { ActionClaim::Repeated } else { ActionClaim::Superseded });
            }
            let (state, kind, outcome) = match r.action {
                OperatorAction::Replay => (DeliveryState::Queued, "replayed", format!("replayed by {}", r.operator)),
                OperatorAction::Discard => (DeliveryState::Discarded, "discarded", format!("discarded by {}", r.operator)),
            };
            // Only a parked delivery changes state here: a replayed one is
            // published before this is recorded, and its worker may have
            // recorded the outcome already, which must stand.
            conn.execute(
                "UPDATE deliveries SET state = ?3, last_outcome = ?4, updated_at = ?5
                 WHERE submission_id = ?1 AND target = ?2 AND state = 'parked'",
                params![r.submission_id, r.target, state.as_str(), outcome, at],
            )?;
            conn.execute(UPDATE_SUBMISSION_STATE, [&r.submission_id])?;
            if known(conn, &r.submission_id)? {
                add_event(conn, &r.submission_id, &at, NewEvent {
                    kind,
                    target: Some(&r.target),
                    operator: Some(&r.operator),
                    detail: Some(&r.parked_reason),
                    ..NewEvent::default()
                })?;
            }
            Ok(ActionClaim::Recorded)
        })
        .await
    }

    async fn parked_action(&self, submission: &str, target: &str, generation: u32) -> Result<Option<OperatorAction>, StoreError> {
        let (submission, target) = (submission.to_owned(), target.to_owned());
        self.read(move |conn| {
            conn.query_row(
                "SELECT action FROM operator_actions WHERE submission_id = ?1 AND target = ?2 AND generation = ?3",
                params![submission, target, generation],
                |row| row.get::<_, String>(0),
            )
            .optional()
            .map(|action| action.as_deref().map(OperatorAction::parse))
        })
        .await
    }

    async fn audit_trail(&self, limit: u32, within: Option<Vec<String>>) -> Result<Vec<AuditEntry>, StoreError> {
        let within = within.map(|targets| serde_json::to_string(&targets).expect("names serialize"));
        self.read(move |conn| {
            let mut statement = conn.prepare(
                "SELECT at, operator, action, target, submission_id, parked_reason, comment
                 FROM operator_actions WHERE ?2 IS NULL OR target IN (SELECT value FROM json_each(?2))
                 ORDER BY at DESC, rowid DESC LIMIT ?1",
            )?;
            statement
                .query_map(params![limit, within], |r| {
                    Ok(AuditEntry {
                        at: r.get(0)?,
                        record: OperatorRecord {
                            operator: r.get(1)?,
                            action: OperatorAction::parse(&r.get::<_, String>(2)?),
                            target: r.get(3)?,
                            submission_id: r.get(4)?,
                            parked_reason: r.get(5)?,
                            comment: r.get(6)?,
                            generation: None,
                            replay: None,
                        },
                    })
                })?
                .collect()
        })
        .await
    }

    async fn status(&self, id: Uuid) -> Result<Option<SubmissionStatus>, StoreError> {
        self.read(move |conn| {
            let key = id.to_string();
            let Some(mut status) = conn
                .query_row(
                    "SELECT service, region, reference, state, received_at, size, sha256, sender FROM submissions WHERE id = ?1",
                    [&key],
                    |r| {
                        Ok(SubmissionStatus {
                            id,
                            service: r.get(0)?,
                            region: r.get(1)?,
                            reference: r.get(2)?,
                            status: SubmissionState::parse(&r.get::<_, String>(3)?).unwrap_or(SubmissionState::Accepted),
                            received_at: r.get(4)?,
                            size: r.get(5)?,
                            sha256: r.get(6)?,
                            sender: r.get(7)?,
                            targets: Vec::new(),
                            timeline: Vec::new(),
                        })
                    },
                )
                .optional()?
            else {
                return Ok(None);
            };
            status.targets = conn
                .prepare(
                    "SELECT target, state, attempts, last_outcome, updated_at, mapping_version, receipt
                     FROM deliveries WHERE submission_id = ?1 ORDER BY target",
                )?
                .query_map([&key], |r| {
                    Ok(TargetStatus {
                        target: r.get(0)?,
                        state: DeliveryState::parse(&r.get::<_, String>(1)?),
                        attempts: r.get(2)?,
                        last_outcome: r.get(3)?,
                        updated_at: r.get(4)?,
                        mapping_version: r.get(5)?,
                        receipt: r.get(6)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            status.timeline = conn
                .prepare(
                    "SELECT at, kind, target, attempt, mapping_version, detail, receipt, size, sha256, operator, duration_ms
                     FROM events WHERE submission_id = ?1 ORDER BY at, rowid",
                )?
                .query_map([&key], |r| {
                    Ok(Event {
                        at: r.get(0)?,
                        event: r.get(1)?,
                        target: r.get(2)?,
                        attempt: r.get(3)?,
                        mapping_version: r.get(4)?,
                        detail: r.get(5)?,
                        receipt: r.get(6)?,
                        size: r.get(7)?,
                        sha256: r.get(8)?,
                        operator: r.get(9)?,
                        duration_ms: r.get(10)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(Some(status))
        })
        .await
    }

    async fn search(&self, q: SearchQuery) -> Result<SearchPage, StoreError> {
        self.read(move |conn| {
            let mut conditions: Vec<&str> = Vec::new();
            let mut values: Vec<Box<dyn ToSql>> = Vec::new();
            if let Some(reference) = q.reference {
                conditions.push("s.reference = ?");
                values.push(Box::new(reference));
            }
            if let Some(service) = q.service {
                conditions.push("s.service = ?");
                values.push(Box::new(service));
            }
            if let Some(region) = q.region {
                conditions.push("substr(s.region, 1, length(?)) = ?");
                values.push(Box::new(region.clone()));
                values.push(Box::new(region));
            }
            if let Some(target) = q.target {
                conditions.push("EXISTS (SELECT 1 FROM deliveries t WHERE t.submission_id = s.id AND t.target = ?)");
                values.push(Box::new(target));
            }
            if let Some(within) = q.within {
                conditions.push(
                    "EXISTS (SELECT 1 FROM deliveries w WHERE w.submission_id = s.id AND w.target IN (SELECT value FROM json_each(?)))",
                );
                values.push(Box::new(serde_json::to_string(&within).expect("names serialize")));
            }
            if let Some(state) = q.state {
                conditions.push("s.state = ?");
                values.push(Box::new(state.as_str()));
            }
            if let Some(from) = q.from {
                conditions.push("s.received_at >= ?");
                values.push(Box::new(timestamp(from)));
            }
            if let Some(to) = q.to {
                conditions.push("s.received_at < ?");
                values.push(Box::new(timestamp(to)));
            }
            if let Some(after) = &q.after {
                conditions.push("(s.received_at, s.id) < (?, ?)");
                values.push(Box::new(after.received_at.clone()));
                values.push(Box::new(after.id.to_string()));
            }
            let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
            let limit = q.limit.clamp(1, 500) as usize;
            let sql = format!(
                "SELECT s.id, s.state, s.service, s.region, s.reference, s.received_at,
                   (SELECT group_concat(d.target || ' ' || d.state, ',') FROM deliveries d WHERE d.submission_id = s.id)
                 FROM submissions s {filter} ORDER BY s.received_at DESC, s.id DESC LIMIT {}",
                limit + 1
            );
            let mut statement = conn.prepare(&sql)?;
            let mut items = statement
                .query_map(rusqlite::params_from_iter(values.iter().map(|v| v.as_ref() as &dyn ToSql)), |r| {
                    let targets = r.get::<_, Option<String>>(6)?.unwrap_or_default();
                    Ok(SubmissionSummary {
                        id: r.get::<_, String>(0)?.parse().expect("stored ids are UUIDs"),
                        status: SubmissionState::parse(&r.get::<_, String>(1)?).unwrap_or(SubmissionState::Accepted),
                        service: r.get(2)?,
                        region: r.get(3)?,
                        reference: r.get(4)?,
                        received_at: r.get(5)?,
                        targets: targets
                            .split(',')
                            .filter_map(|t| t.split_once(' '))
                            .map(|(target, state)| TargetState { target: target.to_owned(), state: DeliveryState::parse(state) })
                            .collect(),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let next = (items.len() > limit).then(|| {
                items.truncate(limit);
                let last = items.last().expect("a full page has a last entry");
                Cursor { received_at: last.received_at.clone(), id: last.id }.encode()
            });
            Ok(SearchPage { items, next })
        })
        .await
    }

    async fn activity(&self, since: OffsetDateTime) -> Result<std::collections::BTreeMap<String, TargetActivity>, StoreError> {
        self.read(move |conn| {
            let mut activity: std::collections::BTreeMap<String, TargetActivity> = std::collections::BTreeMap::new();
            let mut counts = conn.prepare(
                "SELECT target, kind, count(*) FROM events
                 WHERE at >= ?1 AND kind IN ('delivered', 'attempt-failed', 'mapping-failed', 'parked') GROUP BY target, kind",
            )?;
            for row in counts.query_map([timestamp(since)], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))? {
                let (target, kind, count) = row?;
                let entry = activity.entry(target).or_default();
                match kind.as_str() {
                    "delivered" => entry.delivered = count as u64,
                    "parked" => entry.parked = count as u64,
                    _ => entry.failed += count as u64,
                }
            }
            let mut oldest = conn.prepare(
                "SELECT d.target, min(s.received_at) FROM deliveries d JOIN submissions s ON s.id = d.submission_id
                 WHERE d.state IN ('queued', 'retrying', 'parked') AND s.state NOT IN ('received', 'refused') GROUP BY d.target",
            )?;
            for row in oldest.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
                let (target, at) = row?;
                activity.entry(target).or_default().oldest_undelivered = Some(at);
            }
            Ok(activity)
        })
        .await
    }

    async fn prune(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let before = timestamp(before);
            let removed = conn.execute(
                "DELETE FROM submissions WHERE id IN (
                   SELECT id FROM submissions WHERE received_at < ?1 AND state IN ('delivered', 'discarded', 'refused') LIMIT ?2)",
                params![before, limit],
            )?;
            conn.execute("DELETE FROM operator_actions WHERE at < ?1", [&before])?;
            Ok(removed as u64)
        })
        .await
    }

    async fn finished_among(&self, ids: Vec<Uuid>, before: OffsetDateTime) -> Result<Vec<Uuid>, StoreError> {
        self.read(move |conn| {
            let before = timestamp(before);
            let mut open = conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM deliveries WHERE submission_id = ?1
                                AND (state NOT IN ('delivered', 'discarded', 'refused') OR updated_at >= ?2))",
            )?;
            let mut finished = Vec::new();
            for id in ids {
                if !open.query_row(params![id.to_string(), before], |r| r.get::<_, bool>(0))? {
                    finished.push(id);
                }
            }
            Ok(finished)
        })
        .await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute("INSERT INTO health (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at", [now()])?;
            Ok(())
        })
        .await
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// SQLite file (default `var/amtsbote.sqlite`); created if missing.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// How long the ledger keeps a finished (delivered or discarded)
    /// submission's timeline, and operator records (default `90d`).
    /// Submissions still on their way are kept whatever their age.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self { path: default_store_path(), retention: default_retention() }
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

    fn submission(id: Uuid) -> NewSubmission {
        NewSubmission {
            id,
            service: "99050012104000".into(),
            region: "053150000000".into(),
            reference: Some("R-1".into()),
            received_at: OffsetDateTime::now_utc(),
            targets: vec![TargetName::parse("a").unwrap(), TargetName::parse("b").unwrap()],
            size: 1234,
            sha256: "ab".repeat(32),
            sender: "oaa".into(),
        }
    }

    fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        (dir, store)
    }

    fn key(k: &str, body: u8) -> Option<IdempotencyKey> {
        Some(IdempotencyKey { key: k.into(), fingerprint: [body; 32] })
    }

    fn attempt(id: Uuid, target: &str, result: AttemptResult) -> AttemptRecord {
        AttemptRecord {
            submission: id,
            target: TargetName::parse(target).unwrap(),
            attempt: 1,
            mapping_version: "sha256:test".into(),
            rendering: Rendering::Rendered(Fingerprint { size: 99, sha256: "cd".repeat(32) }),
            duration: Some(Duration::from_millis(12)),
            result,
        }
    }

    fn delivered(detail: &str) -> AttemptResult {
        AttemptResult::Delivered { detail: detail.into(), receipt: None }
    }

    /// alice's `action` on the parked delivery of `id` to `target`.
    fn by_alice(action: OperatorAction, id: Uuid, target: &str, parked_reason: &str) -> OperatorRecord {
        OperatorRecord {
            operator: "alice".into(),
            action,
            target: target.into(),
            submission_id: id.to_string(),
            parked_reason: parked_reason.into(),
            comment: None,
            generation: Some(0),
            replay: None,
        }
    }

    async fn accepted(store: &SqliteStore, s: NewSubmission) -> Uuid {
        let id = s.id;
        store.begin_intake(s, None).await.unwrap();
        store.confirm_intake(id).await.unwrap();
        id
    }

    #[tokio::test]
    async fn idempotency_key_lifecycle() {
        let (_dir, store) = temp_store();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(store.begin_intake(submission(first), key("k", 1)).await.unwrap(), Claim::Fresh);
        assert_eq!(store.begin_intake(submission(second), key("k", 1)).await.unwrap(), Claim::InProgress);
        store.confirm_intake(first).await.unwrap();
        assert_eq!(store.begin_intake(submission(second), key("k", 1)).await.unwrap(), Claim::Replay { id: first });
        assert_eq!(store.begin_intake(submission(second), key("k", 2)).await.unwrap(), Claim::Mismatch);
    }

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
    async fn a_refused_key_resumes_under_the_same_id() {
        let (_dir, store) = temp_store();
        let first = submission(Uuid::new_v4());
        store.begin_intake(first.clone(), key("k", 1)).await.unwrap();
        assert_eq!(store.refuse_intake(first.id, "broker unavailable").await.unwrap(), Refusal::Refused);
        assert_eq!(store.admission(first.id, "a").await.unwrap(), Admission::Refused);
        match store.begin_intake(submission(Uuid::new_v4()), key("k", 1)).await.unwrap() {
            Claim::Resume { id, received_at } => {
                assert_eq!(id, first.id);
                assert_eq!(received_at.unix_timestamp(), first.received_at.unix_timestamp());
            }
            other => panic!("expected a resume, got {other:?}"),
        }
        // The resumed claim is fresh again for a concurrent request.
        assert_eq!(store.begin_intake(submission(Uuid::new_v4()), key("k", 1)).await.unwrap(), Claim::InProgress);
        assert!(matches!(store.admission(first.id, "a").await.unwrap(), Admission::Undecided { .. }));
        store.confirm_intake(first.id).await.unwrap();
        assert_eq!(store.admission(first.id, "a").await.unwrap(), Admission::Accepted { done: false });
        let status = store.status(first.id).await.unwrap().unwrap();
        assert_eq!(status.status, SubmissionState::Accepted);
        let events: Vec<&str> = status.timeline.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["received", "routed", "refused", "resumed", "accepted"]);
    }

    #[tokio::test]
    async fn a_refused_submission_is_kept_as_refused_never_admitted_and_pruned_like_a_finished_one() {
        let (_dir, store) = temp_store();
        let id = Uuid::new_v4();
        store.begin_intake(submission(id), None).await.unwrap();
        assert_eq!(store.refuse_intake(id, "the broker did not confirm").await.unwrap(), Refusal::Refused);
        let status = store.status(id).await.unwrap().unwrap();
        assert_eq!(status.status, SubmissionState::Refused);
        assert!(status.targets.iter().all(|t| t.state == DeliveryState::Refused), "{:?}", status.targets);
        let refused = status.timeline.iter().find(|e| e.event == "refused").unwrap();
        assert_eq!(refused.detail.as_deref(), Some("the broker did not confirm"));
        assert_eq!(store.admission(id, "a").await.unwrap(), Admission::Refused);
        // A worker that meets its message drops it, and says so.
        store.record_refused_message(id, "a").await.unwrap();
        assert!(store.status(id).await.unwrap().unwrap().timeline.iter().any(|e| e.event == "dropped"));
        assert_eq!(store.status(id).await.unwrap().unwrap().status, SubmissionState::Refused);
        // Refused is final: a worker cannot accept it as undecided.
        assert!(!store.accept_undecided(id, OffsetDateTime::now_utc() + time::Duration::hours(1)).await.unwrap());
        let activity = store.activity(OffsetDateTime::now_utc() - time::Duration::hours(1)).await.unwrap();
        assert!(activity.values().all(|a| a.oldest_undelivered.is_none()), "a refused submission waits for nobody");
        let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
        assert_eq!(store.finished_among(vec![id], later).await.unwrap(), vec![id], "its blobs may go");
        assert_eq!(store.prune(later, 10).await.unwrap(), 1);
        assert!(store.status(id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_worker_admits_what_intake_accepted_and_accepts_what_a_dead_intake_left_undecided() {
        let (_dir, store) = temp_store();
        assert_eq!(store.admission(Uuid::new_v4(), "a").await.unwrap(), Admission::Unknown);
        let mut undecided = submission(Uuid::new_v4());
        undecided.received_at = OffsetDateTime::now_utc() - time::Duration::minutes(1);
        let id = undecided.id;
        store.begin_intake(undecided, None).await.unwrap();
        assert!(matches!(store.admission(id, "a").await.unwrap(), Admission::Undecided { .. }));
        // Too young: intake may still decide.
        assert!(!store.accept_undecided(id, OffsetDateTime::now_utc() - time::Duration::hours(1)).await.unwrap());
        assert!(store.accept_undecided(id, OffsetDateTime::now_utc()).await.unwrap());
        assert_eq!(store.admission(id, "a").await.unwrap(), Admission::Accepted { done: false });
        // An intake that answers this late must say "accepted".
        assert_eq!(store.refuse_intake(id, "too late").await.unwrap(), Refusal::AcceptedMeanwhile);
        store.record_attempt(attempt(id, "a", delivered("HTTP 201"))).await.unwrap();
        assert_eq!(store.admission(id, "a").await.unwrap(), Admission::Accepted { done: true });
        assert_eq!(store.admission(id, "b").await.unwrap(), Admission::Accepted { done: false });
    }

    #[tokio::test]
    async fn a_submission_is_finished_with_once_every_delivery_is_delivered_or_discarded() {
        let (_dir, store) = temp_store();
        let (done, half, unknown) = (accepted(&store, submission(Uuid::new_v4())).await, accepted(&store, submission(Uuid::new_v4())).await, Uuid::new_v4());
        let parked = AttemptResult::Parked { reason: "target-rejected", error: "HTTP 422".into() };
        store.record_attempt(attempt(done, "a", delivered("HTTP 201"))).await.unwrap();
        store.record_attempt(attempt(done, "b", parked.clone())).await.unwrap();
        store.record_attempt(attempt(half, "a", delivered("HTTP 201"))).await.unwrap();
        let finished = |before: OffsetDateTime| store.finished_among(vec![done, half, unknown], before);
        let later = OffsetDateTime::now_utc() + Duration::from_secs(60);
        assert_eq!(finished(later).await.unwrap(), vec![unknown], "parked and queued deliveries still need their submission");
        store.record_operator_action(by_alice(OperatorAction::Discard, done, "b", "target-rejected")).await.unwrap();
        assert_eq!(finished(later).await.unwrap(), vec![done, unknown]);
        assert_eq!(finished(OffsetDateTime::now_utc() - Duration::from_secs(60)).await.unwrap(), vec![unknown], "not finished long enough");
    }

    #[tokio::test]
    async fn operator_actions_are_recorded_and_change_the_state() {
        let (_dir, store) = temp_store();
        let id = accepted(&store, submission(Uuid::new_v4())).await;
        let parked = AttemptResult::Parked { reason: "target-rejected", error: "HTTP 422".into() };
        store.record_attempt(attempt(id, "a", parked)).await.unwrap();
        assert_eq!(store.status(id).await.unwrap().unwrap().status, SubmissionState::Parked);
        let record = OperatorRecord {
            comment: Some("duplicate of R-1".into()),
            ..by_alice(OperatorAction::Discard, id, "a", "target-rejected")
        };
        store.record_operator_action(record).await.unwrap();
        let trail = store.audit_trail(10, None).await.unwrap();
        assert_eq!((trail[0].record.operator.as_str(), trail[0].record.action), ("alice", OperatorAction::Discard));
        assert_eq!(store.audit_trail(10, Some(vec!["a".into()])).await.unwrap().len(), 1);
        assert!(store.audit_trail(10, Some(vec!["b".into()])).await.unwrap().is_empty(), "only the targets within");
        assert_eq!(store.status(id).await.unwrap().unwrap().sender.as_deref(), Some("oaa"));
        let status = store.status(id).await.unwrap().unwrap();
        assert_eq!(status.targets[0].state, DeliveryState::Discarded);
        assert_eq!(status.targets[0].last_outcome.as_deref(), Some("discarded by alice"));
        let last = status.timeline.last().unwrap();
        assert_eq!((last.event.as_str(), last.operator.as_deref()), ("discarded", Some("alice")));
        // Target b still waits: the submission is not finished.
        assert_eq!(status.status, SubmissionState::Accepted);
    }

    #[tokio::test]
    async fn a_replay_recorded_after_its_delivery_leaves_the_delivery_standing() {
        let (_dir, store) = temp_store();
        let id = accepted(&store, submission(Uuid::new_v4())).await;
        let parked = AttemptResult::Parked { reason: "retries-exhausted", error: "HTTP 503".into() };
        store.record_attempt(attempt(id, "a", parked)).await.unwrap();
        // The replayed message was delivered before the replay was recorded.
        store.record_attempt(attempt(id, "a", delivered("HTTP 201"))).await.unwrap();
        store.record_operator_action(by_alice(OperatorAction::Replay, id, "a", "retries-exhausted")).await.unwrap();
        let status = store.status(id).await.unwrap().unwrap();
        assert_eq!(status.targets[0].state, DeliveryState::Delivered);
        assert!(status.timeline.iter().any(|e| e.event == "replayed"), "the replay is in the timeline all the same");
    }

    #[tokio::test]
    async fn each_parked_copy_takes_one_action_whoever_records_it() {
        let (_dir, store) = temp_store();
        let id = accepted(&store, submission(Uuid::new_v4())).await;
        let parked = AttemptResult::Parked { reason: "target-rejected", error: "HTTP 400".into() };
        store.record_attempt(attempt(id, "a", parked)).await.unwrap();
        let replay = |replay: Uuid| OperatorRecord { replay: Some(replay), ..by_alice(OperatorAction::Replay, id, "a", "target-rejected") };
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(store.parked_action(&id.to_string(), "a", 0).await.unwrap(), None);
        assert_eq!(store.record_operator_action(replay(first)).await.unwrap(), ActionClaim::Recorded);
        // The worker that takes the replayed message records the same replay.
        assert_eq!(store.record_operator_action(replay(first)).await.unwrap(), ActionClaim::Repeated);
        // A second replay (or a discard) of the same parked copy loses.
        assert_eq!(store.record_operator_action(replay(second)).await.unwrap(), ActionClaim::Superseded);
        let discard = by_alice(OperatorAction::Discard, id, "a", "target-rejected");
        assert_eq!(store.record_operator_action(discard.clone()).await.unwrap(), ActionClaim::Superseded);
        assert_eq!(store.parked_action(&id.to_string(), "a", 0).await.unwrap(), Some(OperatorAction::Replay));
        assert_eq!(store.audit_trail(10, None).await.unwrap().len(), 1, "one audit row");
        // The next parked copy (after one replay) is free again.
        let next = OperatorRecord { generation: Some(1), ..discard };
        assert_eq!(store.record_operator_action(next).await.unwrap(), ActionClaim::Recorded);
    }

    #[test]
    fn a_store_of_an_earlier_schema_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..3] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute_batch(
                "INSERT INTO submissions (id, service, region, state, received_at) VALUES
                   ('00000000-0000-4000-8000-000000000001', '99050012104000', '053150000000', 'accepted', '2026-01-02T03:04:05.5Z');
                 INSERT INTO deliveries (submission_id, target, state, updated_at) VALUES
                   ('00000000-0000-4000-8000-000000000001', 'a', 'delivered', '2026-01-02T03:04:06Z');",
            )
            .unwrap();
        }
        SqliteStore::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let (state, at): (String, String) = conn.query_row("SELECT state, received_at FROM submissions", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((state.as_str(), at.as_str()), ("delivered", "2026-01-02T03:04:05.500Z"));
        SqliteStore::open(&path).unwrap();
    }

    #[tokio::test]
    async fn a_ledger_keeps_its_name_and_another_has_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let name = SqliteStore::open(&path).unwrap().ledger_id().await.unwrap();
        assert_eq!(name.len(), 32);
        assert_eq!(SqliteStore::open(&path).unwrap().ledger_id().await.unwrap(), name);
        let (_other_dir, other) = temp_store();
        assert_ne!(other.ledger_id().await.unwrap(), name);
    }

    #[tokio::test]
    async fn status_and_timeline_follow_the_deliveries() {
        let (_dir, store) = temp_store();
        let id = Uuid::new_v4();
        store.begin_intake(submission(id), None).await.unwrap();
        assert_eq!(store.status(id).await.unwrap().unwrap().status, SubmissionState::Received);
        store.confirm_intake(id).await.unwrap();
        let retrying = AttemptResult::Retrying { error: "HTTP 503".into(), retry_in: Duration::from_secs(2) };
        store.record_attempt(attempt(id, "a", retrying)).await.unwrap();
        store.record_attempt(AttemptRecord { attempt: 2, ..attempt(id, "a", delivered("HTTP 200")) }).await.unwrap();
        assert_eq!(store.status(id).await.unwrap().unwrap().status, SubmissionState::Accepted);
        let with_receipt = AttemptResult::Delivered { detail: "HTTP 201".into(), receipt: Some("GEW-2026-0815".into()) };
        store.record_attempt(attempt(id, "b", with_receipt)).await.unwrap();

        let status = store.status(id).await.unwrap().unwrap();
        assert_eq!(status.status, SubmissionState::Delivered);
        assert_eq!((status.size, status.sha256.as_deref()), (Some(1234), Some("ab".repeat(32).as_str())));
        assert_eq!(status.targets[0].attempts, 2);
        assert_eq!(status.targets[1].last_outcome.as_deref(), Some("HTTP 201"));
        assert_eq!(status.targets[1].receipt.as_deref(), Some("GEW-2026-0815"));
        let events: Vec<(&str, Option<&str>)> =
            status.timeline.iter().map(|e| (e.event.as_str(), e.target.as_deref())).collect();
        assert_eq!(
            events,
            [
                ("received", None),
                ("routed", None),
                ("accepted", None),
                ("mapped", Some("a")),
                ("attempt-failed", Some("a")),
                ("retry-scheduled", Some("a")),
                ("mapped", Some("a")),
                ("delivered", Some("a")),
                ("mapped", Some("b")),
                ("delivered", Some("b")),
            ]
        );
        assert_eq!(status.timeline[1].detail.as_deref(), Some("a, b"));
        assert_eq!(status.timeline[5].detail.as_deref(), Some("next attempt in 2s"));
        assert_eq!(status.timeline[9].receipt.as_deref(), Some("GEW-2026-0815"));
        assert_eq!(status.timeline[9].duration_ms, Some(12));
        assert_eq!(status.timeline[3].mapping_version.as_deref(), Some("sha256:test"));
    }

    #[tokio::test]
    async fn a_failed_mapping_is_in_the_timeline_without_an_attempt() {
        let (_dir, store) = temp_store();
        let id = accepted(&store, submission(Uuid::new_v4())).await;
        let parked = AttemptResult::Parked { reason: "mapping-error", error: "line 3: no such field".into() };
        store.record_attempt(AttemptRecord { rendering: Rendering::Failed, duration: None, ..attempt(id, "a", parked) }).await.unwrap();
        let status = store.status(id).await.unwrap().unwrap();
        let events: Vec<&str> = status.timeline.iter().skip(3).map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["mapping-failed", "parked"]);
        assert_eq!(status.timeline[4].detail.as_deref(), Some("mapping-error"));
    }

    #[tokio::test]
    async fn a_message_stopped_before_the_mapping_is_parked_with_its_reason_and_no_mapping_event() {
        let (_dir, store) = temp_store();
        let id = accepted(&store, submission(Uuid::new_v4())).await;
        let parked = AttemptResult::Parked { reason: "outside-tenant", error: "region \"053140000000\" is not of the target's tenant".into() };
        store.record_attempt(AttemptRecord { rendering: Rendering::NotReached, duration: None, ..attempt(id, "a", parked) }).await.unwrap();
        let status = store.status(id).await.unwrap().unwrap();
        let events: Vec<(&str, Option<&str>)> = status.timeline.iter().skip(3).map(|e| (e.event.as_str(), e.detail.as_deref())).collect();
        assert_eq!(events, [("parked", Some("outside-tenant: region \"053140000000\" is not of the target's tenant"))]);
    }

    #[tokio::test]
    async fn search_filters_and_pages_newest_first() {
        let (_dir, store) = temp_store();
        let start = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let mut ids = Vec::new();
        for i in 0..7i64 {
            let mut s = submission(Uuid::new_v4());
            s.received_at = start + time::Duration::minutes(i);
            s.reference = Some(format!("R-{}", i % 2));
            s.region = if i < 5 { "053150000000".into() } else { "091620000000".into() };
            ids.push(accepted(&store, s).await);
        }
        store.record_attempt(attempt(ids[6], "a", delivered("HTTP 200"))).await.unwrap();
        store.record_attempt(attempt(ids[6], "b", delivered("HTTP 200"))).await.unwrap();

        let query = |q: SearchQuery| async { store.search(q).await.unwrap() };
        let all = query(SearchQuery { limit: 3, ..SearchQuery::default() }).await;
        assert_eq!(all.items.iter().map(|s| s.id).collect::<Vec<_>>(), [ids[6], ids[5], ids[4]]);
        let after = Cursor::decode(all.next.as_deref().unwrap()).unwrap();
        let second = query(SearchQuery { limit: 3, after: Some(after), ..SearchQuery::default() }).await;
        assert_eq!(second.items.iter().map(|s| s.id).collect::<Vec<_>>(), [ids[3], ids[2], ids[1]]);
        let third = query(SearchQuery { limit: 3, after: Cursor::decode(&second.next.unwrap()), ..SearchQuery::default() }).await;
        assert_eq!((third.items.len(), third.next), (1, None));

        let koeln = query(SearchQuery { region: Some("05315".into()), limit: 50, ..SearchQuery::default() }).await;
        assert_eq!(koeln.items.len(), 5);
        let reference = query(SearchQuery { reference: Some("R-1".into()), limit: 50, ..SearchQuery::default() }).await;
        assert_eq!(reference.items.len(), 3);
        let delivered = query(SearchQuery { state: Some(SubmissionState::Delivered), limit: 50, ..SearchQuery::default() }).await;
        assert_eq!(delivered.items.iter().map(|s| s.id).collect::<Vec<_>>(), [ids[6]]);
        assert_eq!(delivered.items[0].targets.len(), 2);
        let window = SearchQuery {
            from: Some(start + time::Duration::minutes(2)),
            to: Some(start + time::Duration::minutes(4)),
            limit: 50,
            ..SearchQuery::default()
        };
        assert_eq!(query(window).await.items.iter().map(|s| s.id).collect::<Vec<_>>(), [ids[3], ids[2]]);
        let nowhere = query(SearchQuery { target: Some("c".into()), limit: 50, ..SearchQuery::default() }).await;
        assert!(nowhere.items.is_empty());
        // An operator's scope: only submissions that went to its targets.
        let outside = query(SearchQuery { within: Some(vec!["c".into(), "d".into()]), limit: 50, ..SearchQuery::default() }).await;
        assert!(outside.items.is_empty());
        let inside = query(SearchQuery { within: Some(vec!["c".into(), "b".into()]), limit: 50, ..SearchQuery::default() }).await;
        assert_eq!(inside.items.len(), ids.len());
    }

    #[tokio::test]
    async fn many_concurrent_writes_all_land() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let mut writes = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let store = store.clone();
            writes.spawn(async move { accepted(&store, submission(Uuid::new_v4())).await });
        }
        let ids: Vec<Uuid> = writes.join_all().await;
        for id in ids {
            assert_eq!(store.status(id).await.unwrap().unwrap().status, SubmissionState::Accepted);
        }
    }

    #[tokio::test]
    async fn a_failing_write_leaves_the_others_of_its_batch() {
        let (_dir, store) = temp_store();
        let id = Uuid::new_v4();
        let (first, twin) = tokio::join!(store.begin_intake(submission(id), None), store.begin_intake(submission(id), None));
        // The same id twice: one insert fails on the primary key, the other
        // stands, whether or not they shared a transaction.
        assert!(first.is_ok() != twin.is_ok(), "{first:?} {twin:?}");
        assert!(store.status(id).await.unwrap().is_some());
        store.check_writable().await.unwrap();
    }

    #[tokio::test]
    async fn pruning_removes_finished_submissions_past_retention_only() {
        let (_dir, store) = temp_store();
        let old = OffsetDateTime::now_utc() - time::Duration::days(100);
        let mut finished = submission(Uuid::new_v4());
        finished.received_at = old;
        let finished = accepted(&store, finished).await;
        store.record_attempt(attempt(finished, "a", delivered("HTTP 200"))).await.unwrap();
        store.record_attempt(attempt(finished, "b", delivered("HTTP 200"))).await.unwrap();
        let mut open = submission(Uuid::new_v4());
        open.received_at = old;
        let open = accepted(&store, open).await;
        let recent = accepted(&store, submission(Uuid::new_v4())).await;
        store.record_attempt(attempt(recent, "a", delivered("HTTP 200"))).await.unwrap();
        store.record_attempt(attempt(recent, "b", delivered("HTTP 200"))).await.unwrap();

        let removed = store.prune(OffsetDateTime::now_utc() - time::Duration::days(90), 10).await.unwrap();
        assert_eq!(removed, 1);
        assert!(store.status(finished).await.unwrap().is_none());
        assert!(store.status(open).await.unwrap().is_some(), "still on its way: kept");
        assert!(store.status(recent).await.unwrap().is_some());
        let orphans: i64 = store
            .read(move |c| c.query_row("SELECT count(*) FROM events WHERE submission_id = ?1", [finished.to_string()], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(orphans, 0, "the timeline goes with the submission");
    }

    #[tokio::test]
    async fn activity_counts_per_target_and_finds_the_oldest_undelivered() {
        let (_dir, store) = temp_store();
        let mut early = submission(Uuid::new_v4());
        early.received_at = OffsetDateTime::now_utc() - time::Duration::hours(5);
        let early = accepted(&store, early).await;
        store.record_attempt(attempt(early, "a", delivered("HTTP 200"))).await.unwrap();
        let retrying = AttemptResult::Retrying { error: "HTTP 503".into(), retry_in: Duration::from_secs(1) };
        store.record_attempt(attempt(early, "b", retrying)).await.unwrap();
        let activity = store.activity(OffsetDateTime::now_utc() - time::Duration::hours(1)).await.unwrap();
        assert_eq!((activity["a"].delivered, activity["a"].failed, activity["a"].oldest_undelivered.as_deref()), (1, 0, None));
        assert_eq!((activity["b"].delivered, activity["b"].failed), (0, 1));
        assert!(activity["b"].oldest_undelivered.is_some());
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = Cursor { received_at: "2026-11-24T10:00:00.000Z".into(), id: Uuid::new_v4() };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not a cursor"), None);
    }
}
