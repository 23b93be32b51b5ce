//! The embedded ledger: one SQLite file, written by one thread with group
//! commit (see the module documentation of [`crate::store`]).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::*;
use crate::domain::timestamp;

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

/// A write as the writer thread runs it.
trait Write: Send {
    /// Runs the work in the batch's transaction; false if it failed. May
    /// run again after the transaction was rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Records an error of the write's own savepoint.
    fn fail(&mut self, error: rusqlite::Error);
    /// Tells the caller the write's outcome, given the commit's.
    fn complete(self: Box<Self>, committed: Result<(), String>);
}

/// The work of [`SqliteStore::write`] with its caller's answer.
struct Queued<F, T> {
    work: F,
    result: Option<Result<T, rusqlite::Error>>,
    answer: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> Write for Queued<F, T>
where
    F: FnMut(&Connection) -> Result<T, rusqlite::Error> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.work)(conn);
        let ran = result.is_ok();
        self.result = Some(result);
        ran
    }

    fn fail(&mut self, error: rusqlite::Error) {
        self.result = Some(Err(error));
    }

    fn complete(self: Box<Self>, committed: Result<(), String>) {
        let result = self.result.expect("a write runs before it completes");
        let _ = self.answer.send(match (result, committed) {
            (Err(e), _) => Err(StoreError::Sqlite(e)),
            (Ok(_), Err(e)) => Err(StoreError::Commit(e)),
            (Ok(value), Ok(())) => Ok(value),
        });
    }
}

pub struct SqliteStore {
    jobs: mpsc::Sender<Box<dyn Write>>,
    reader: Arc<Mutex<Connection>>,
}

/// `temp_store`: a write that fails in its batch runs again in a savepoint
/// (see [`write_batches`]), whose journal would otherwise go to a
/// temporary file, as would a statement's.
const PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
PRAGMA temp_store = MEMORY;
";

/// Schema versions in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: [&str; 8] = [
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
    // What was decided about each submission fetched from FIT-Connect,
    // before the decision is sent: one row per FIT-Connect submission.
    "
CREATE TABLE fit_connect_decisions (
    fit_submission_id TEXT PRIMARY KEY,
    case_id           TEXT NOT NULL,
    destination_id    TEXT NOT NULL,
    submission_id     TEXT,
    verdict           TEXT NOT NULL,
    payload           TEXT NOT NULL,
    decided_at        TEXT NOT NULL,
    sent_at           TEXT
);
CREATE INDEX fit_connect_decisions_submission ON fit_connect_decisions (submission_id) WHERE submission_id IS NOT NULL;
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

/// Adds an event of a submission the ledger knows (see [`known`]).
fn add_event(conn: &Connection, submission: &str, at: &str, e: NewEvent<'_>) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (submission_id, at, kind, target, attempt, mapping_version, detail, receipt, size, sha256, operator, duration_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        submission, at, e.kind, e.target, e.attempt, e.mapping_version, e.detail.as_deref(), e.receipt, e.size, e.sha256, e.operator, e.duration_ms
    ])?;
    Ok(())
}

/// Whether the ledger knows the submission: what happens to one that
/// retention removed (a late attempt, an operator's action on an old
/// parked message) is not recorded against it.
fn known(conn: &Connection, submission: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM submissions WHERE id = ?1)")?.query_row([submission], |r| r.get(0))
}

/// SQLite counts every allocation it makes under a global mutex, for
/// statistics amtsbote never reads; the profile of the writer thread
/// showed the locking. Turning the counting off is only possible before
/// SQLite's first use in the process, so it is done once, before the
/// first connection; later attempts are refused by SQLite and change
/// nothing.
fn without_memory_statistics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int; sqlite3_config
        // is documented as callable before sqlite3_initialize, and answers
        // SQLITE_MISUSE (ignored) after it.
        unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int);
        }
    });
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        without_memory_statistics();
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
    /// An error in `work` undoes only `work`'s own changes; `work` may run
    /// twice, the first time in a transaction that is rolled back.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnMut(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.jobs.send(Box::new(Queued { work, result: None, answer })).await.map_err(|_| StoreError::Closed)?;
        answered.await.map_err(|_| StoreError::Closed)?
    }
}

/// Runs `write` in a savepoint, so that its error undoes its own changes
/// and nothing else of the batch. The statements are prepared once:
/// rusqlite's `Connection::savepoint` parses them anew for every write.
fn in_savepoint(conn: &Connection, write: &mut dyn Write) {
    if let Err(e) = conn.prepare_cached("SAVEPOINT write").and_then(|mut s| s.execute([])) {
        return write.fail(e);
    }
    if write.run(conn) {
        if let Err(e) = conn.prepare_cached("RELEASE write").and_then(|mut s| s.execute([])) {
            write.fail(e);
        }
    } else {
        // As rusqlite's savepoint does when dropped: the write's own
        // error is the one its caller needs to hear.
        let _ = conn.prepare_cached("ROLLBACK TO write").and_then(|mut s| s.execute([]));
        let _ = conn.prepare_cached("RELEASE write").and_then(|mut s| s.execute([]));
    }
}

/// The writer thread: one transaction per batch of queued writes. Ends
/// when the store is dropped.
///
/// A batch runs first without a savepoint per write: a savepoint copies
/// every page its write changes to a journal of its own, and the writes of
/// a batch change the same pages at the ends of the indexes over and over
/// (the profile of the writer showed the copying as an eighth of its
/// time). Writes fail rarely; when one does, the batch is rolled back and
/// run again with each write in its savepoint, so that the failure undoes
/// that write only.
fn write_batches(conn: Connection, mut queue: mpsc::Receiver<Box<dyn Write>>) {
    let mut batch: Vec<Box<dyn Write>> = Vec::with_capacity(MAX_BATCH);
    let mut busy = false;
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        if busy {
            std::thread::sleep(COMMIT_WINDOW);
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        busy = batch.len() > 1;
        let committed = commit_batch(&conn, &mut batch);
        for write in batch.drain(..) {
            write.complete(committed.clone());
        }
    }
}

/// Runs `batch` in one transaction; the commit's outcome.
fn commit_batch(conn: &Connection, batch: &mut [Box<dyn Write>]) -> Result<(), String> {
    let mut in_transaction = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
    if !(in_transaction && batch.iter_mut().all(|write| write.run(conn))) {
        if in_transaction {
            let _ = conn.execute_batch("ROLLBACK");
            in_transaction = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
        }
        // Without the batch's transaction each write's savepoint is a
        // transaction of its own: its result is the write's result.
        for write in batch.iter_mut() {
            in_savepoint(conn, &mut **write);
        }
        if !in_transaction {
            return Ok(());
        }
    }
    let committed = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    committed
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
            add_event(tx, &id, &received_at, s.received_event())?;
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
            add_event(conn, &id, &at, NewEvent { kind: "refused", detail: Some(reason.as_str().into()), ..NewEvent::default() })?;
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
                    detail: Some(ACCEPTED_BY_A_WORKER.into()),
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
                    detail: Some(DROPPED_REFUSED.into()),
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
            if conn.prepare_cached("UPDATE submissions SET state = 'accepted' WHERE id = ?1 AND state = 'received'")?.execute([&id])? > 0 {
                add_event(conn, &id, &at, NewEvent { kind: "accepted", detail: Some(ACCEPTED_WITH_AN_ATTEMPT.into()), ..NewEvent::default() })?;
            }
            let writes = a.writes();
            for event in writes.events {
                add_event(conn, &id, &at, event)?;
            }
            conn.prepare_cached(
                "INSERT INTO deliveries (submission_id, target, state, attempts, last_outcome, updated_at, mapping_version, receipt)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7)
                 ON CONFLICT (submission_id, target) DO UPDATE SET
                   state = excluded.state, attempts = attempts + 1, last_outcome = excluded.last_outcome,
                   updated_at = excluded.updated_at, mapping_version = excluded.mapping_version,
                   receipt = coalesce(excluded.receipt, receipt)",
            )?
            .execute(params![id, target, writes.state.as_str(), writes.outcome, at, a.mapping_version, writes.receipt])?;
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
                    detail: Some(r.parked_reason.as_str().into()),
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
                            fit_connect: None,
                            targets: Vec::new(),
                            timeline: Vec::new(),
                        })
                    },
                )
                .optional()?
            else {
                return Ok(None);
            };
            status.fit_connect = conn
                .prepare_cached(
                    "SELECT fit_submission_id, case_id, destination_id FROM fit_connect_decisions WHERE submission_id = ?1",
                )?
                .query_row([&key], |r| Ok(FitConnectIds { submission_id: r.get(0)?, case_id: r.get(1)?, destination_id: r.get(2)? }))
                .optional()?;
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
            let rows = conn
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
                .collect::<Result<Vec<_>, _>>()?;
            status.timeline = timeline(rows);
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
            let items = statement
                .query_map(rusqlite::params_from_iter(values.iter().map(|v| v.as_ref() as &dyn ToSql)), |r| {
                    let targets = r.get::<_, Option<String>>(6)?.unwrap_or_default();
                    Ok(SubmissionSummary {
                        id: r.get::<_, String>(0)?.parse().expect("stored ids are UUIDs"),
                        status: SubmissionState::parse(&r.get::<_, String>(1)?).unwrap_or(SubmissionState::Accepted),
                        service: r.get(2)?,
                        region: r.get(3)?,
                        reference: r.get(4)?,
                        received_at: r.get(5)?,
                        targets: target_states(&targets),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(SearchPage::of(items, limit))
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
            Ok(activity)
        })
        .await
    }

    async fn oldest_undelivered(&self) -> Result<std::collections::BTreeMap<String, OffsetDateTime>, StoreError> {
        self.read(move |conn| {
            let mut oldest = conn.prepare_cached(
                "SELECT d.target, min(s.received_at) FROM deliveries d JOIN submissions s ON s.id = d.submission_id
                 WHERE d.state IN ('queued', 'retrying', 'parked') AND s.state NOT IN ('received', 'refused') GROUP BY d.target",
            )?;
            let rows = oldest.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut by_target = std::collections::BTreeMap::new();
            for row in rows {
                let (target, at) = row?;
                match OffsetDateTime::parse(&at, &Rfc3339) {
                    Ok(at) => {
                        by_target.insert(target, at);
                    }
                    // Written by amtsbote, so never expected; but a target
                    // left out would read as having nothing undelivered.
                    Err(_) => tracing::error!(event = "store_failed", target = %target, "a submission's receipt time in the ledger does not read"),
                }
            }
            Ok(by_target)
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
            // A sent decision is kept as long as its submission: a
            // rejection (no submission) for the retention period.
            conn.execute(
                "DELETE FROM fit_connect_decisions WHERE sent_at < ?1
                   AND (submission_id IS NULL OR submission_id NOT IN (SELECT id FROM submissions))",
                [&before],
            )?;
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

    async fn accepted_under_key(&self, key: &str) -> Result<Option<(Uuid, [u8; 32])>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| {
            let found: Option<(String, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT k.submission_id, k.fingerprint FROM idempotency_keys k JOIN submissions s ON s.id = k.submission_id
                     WHERE k.key = ?1 AND s.state NOT IN ('received', 'refused')",
                )?
                .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(found.and_then(|(id, fingerprint)| Some((Uuid::parse_str(&id).ok()?, fingerprint.try_into().ok()?))))
        })
        .await
    }

    async fn decide_fit_connect(&self, decision: FitConnectDecision) -> Result<FitConnectDecision, StoreError> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO fit_connect_decisions
                   (fit_submission_id, case_id, destination_id, submission_id, verdict, payload, decided_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (fit_submission_id) DO NOTHING",
                params![
                    decision.fit_submission.to_string(),
                    decision.case_id.to_string(),
                    decision.destination.to_string(),
                    decision.submission.map(|id| id.to_string()),
                    decision.verdict.as_str(),
                    decision.payload,
                    now()
                ],
            )?;
            read_fit_connect_decision(conn, decision.fit_submission).map(|recorded| recorded.expect("inserted or there before"))
        })
        .await
    }

    async fn fit_connect_decision(&self, fit_submission: Uuid) -> Result<Option<FitConnectDecision>, StoreError> {
        self.read(move |conn| read_fit_connect_decision(conn, fit_submission)).await
    }

    async fn fit_connect_decision_sent(&self, fit_submission: Uuid) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE fit_connect_decisions SET sent_at = ?2 WHERE fit_submission_id = ?1 AND sent_at IS NULL",
                params![fit_submission.to_string(), now()],
            )?;
            Ok(())
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

fn read_fit_connect_decision(conn: &Connection, fit_submission: Uuid) -> Result<Option<FitConnectDecision>, rusqlite::Error> {
    conn.prepare_cached(
        "SELECT case_id, destination_id, submission_id, verdict, payload, decided_at, sent_at
         FROM fit_connect_decisions WHERE fit_submission_id = ?1",
    )?
    .query_row([fit_submission.to_string()], |r| {
        let uuid = |text: String| Uuid::parse_str(&text).map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)));
        Ok(FitConnectDecision {
            fit_submission,
            case_id: uuid(r.get(0)?)?,
            destination: uuid(r.get(1)?)?,
            submission: r.get::<_, Option<String>>(2)?.map(uuid).transpose()?,
            verdict: Verdict::parse(&r.get::<_, String>(3)?),
            payload: r.get(4)?,
            decided_at: r.get(5)?,
            sent_at: r.get(6)?,
        })
    })
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        (dir, store)
    }

    store_conformance!(|| async {
        let (dir, store) = temp_store();
        (dir, Arc::new(store) as Arc<dyn Store>)
    });

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
    async fn a_timeline_written_one_row_per_entry_reads_as_before() {
        let (_dir, store) = temp_store();
        let id = Uuid::new_v4();
        store.begin_intake(super::super::conformance::submission(id), None).await.unwrap();
        let sid = id.to_string();
        store
            .write(move |c| {
                c.execute("DELETE FROM events WHERE submission_id = ?1", [&sid])?;
                let at = "2026-11-30T10:00:00.000Z";
                c.execute("INSERT INTO events (submission_id, at, kind, size, sha256) VALUES (?1, ?2, 'received', 1234, 'ab')", [&sid, at])?;
                c.execute("INSERT INTO events (submission_id, at, kind, detail) VALUES (?1, ?2, 'routed', 'a, b')", [&sid, at])?;
                c.execute(
                    "INSERT INTO events (submission_id, at, kind, target, attempt, mapping_version, size, sha256)
                     VALUES (?1, ?2, 'mapped', 'a', 1, 'sha256:old', 99, 'cd')",
                    [&sid, at],
                )?;
                c.execute(
                    "INSERT INTO events (submission_id, at, kind, target, attempt, detail, duration_ms)
                     VALUES (?1, ?2, 'delivered', 'a', 1, 'HTTP 200', 12)",
                    [&sid, at],
                )
            })
            .await
            .unwrap();
        let timeline = store.status(id).await.unwrap().unwrap().timeline;
        let entries: Vec<_> = timeline.iter().map(|e| (e.event.as_str(), e.detail.as_deref(), e.mapping_version.as_deref())).collect();
        assert_eq!(entries, [
            ("received", None, None),
            ("routed", Some("a, b"), None),
            ("mapped", None, Some("sha256:old")),
            ("delivered", Some("HTTP 200"), None)
        ]);
    }

    #[tokio::test]
    async fn a_failing_write_is_undone_alone_and_the_rest_of_its_batch_commits() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        // Holds the writer, so that the three writes below queue up for
        // one batch.
        let holder = store.clone();
        let held = tokio::spawn(async move {
            holder
                .write(|_| {
                    std::thread::sleep(Duration::from_millis(300));
                    Ok(())
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let insert = |versions: &'static [&'static str]| {
            store.write(move |c| {
                for version in versions {
                    c.execute("INSERT INTO mapping_versions (version, name, source, first_seen) VALUES (?1, 'm', '', '')", [version])?;
                }
                Ok(())
            })
        };
        let (first, failing, last) = tokio::join!(insert(&["v1"]), insert(&["v2", "v1"]), insert(&["v3"]));
        held.await.unwrap().unwrap();
        assert!(first.is_ok() && failing.is_err() && last.is_ok(), "{first:?} {failing:?} {last:?}");
        let kept: Vec<String> = store
            .read(|c| c.prepare("SELECT version FROM mapping_versions ORDER BY version")?.query_map([], |r| r.get(0))?.collect())
            .await
            .unwrap();
        assert_eq!(kept, ["v1", "v3"]);
    }

    #[tokio::test]
    async fn pruning_takes_the_timeline_along() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let finished = super::super::conformance::pruning_removes_finished_submissions_past_retention_only(store.clone()).await;
        let orphans: i64 = store
            .read(move |c| c.query_row("SELECT count(*) FROM events WHERE submission_id = ?1", [finished.to_string()], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(orphans, 0, "the timeline goes with the submission");
    }
}
