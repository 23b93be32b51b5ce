//! The store: submission and delivery states, and idempotency keys.
//!
//! The broker is the source of truth for what still has to be delivered;
//! the store answers "where is submission X" and makes a retried POST with
//! the same `Idempotency-Key` return the first answer. It holds ids,
//! service keys, regions, references, states and connector outcomes —
//! never form data or attachments.
//!
//! [`Store`] is the seam; [`SqliteStore`] the embedded implementation
//! (WAL, `synchronous=NORMAL`: a crash of the process loses nothing, a
//! power loss may lose the last state changes but never a submission,
//! which the broker holds).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::domain::TargetName;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: cannot create directory {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    #[error("store: worker thread failed")]
    Join,
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
}

impl DeliveryState {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Parked => "parked",
            DeliveryState::Discarded => "discarded",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "retrying" => DeliveryState::Retrying,
            "delivered" => DeliveryState::Delivered,
            "parked" => DeliveryState::Parked,
            "discarded" => DeliveryState::Discarded,
            _ => DeliveryState::Queued,
        }
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
}

/// One entry of the audit trail: the record and when the store took it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub at: String,
    #[serde(flatten)]
    pub record: OperatorRecord,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmissionStatus {
    pub id: Uuid,
    /// `received` (not yet confirmed by the broker), `accepted`,
    /// `delivered` (every target has it), `parked` (a target needs an
    /// operator) or `discarded` (an operator gave up a delivery; the other
    /// targets have it).
    pub status: &'static str,
    pub service: String,
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub received_at: String,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub target: String,
    pub state: DeliveryState,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
    pub updated_at: String,
    /// Version (content hash) of the mapping the last attempt used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping_version: Option<String>,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a submission (state `received`) and claims its idempotency
    /// key, atomically.
    async fn begin_intake(&self, submission: NewSubmission, key: Option<IdempotencyKey>) -> Result<Claim, StoreError>;
    /// The broker confirmed the submission.
    async fn confirm_intake(&self, id: Uuid) -> Result<(), StoreError>;
    /// The broker did not confirm the submission. Without an idempotency
    /// key it is forgotten. With one, the claim is released but the id
    /// kept: the broker may have the message after all (a confirm lost with
    /// the connection), so the client's retry resumes under the same id.
    async fn abandon_intake(&self, id: Uuid) -> Result<(), StoreError>;
    /// A delivery attempt for one target, mapped with `mapping_version`,
    /// ended in `state`.
    async fn record_attempt(&self, id: Uuid, target: &TargetName, mapping_version: &str, state: DeliveryState, outcome: &str) -> Result<(), StoreError>;
    /// Keeps a mapping's source under its version, so that deliveries in
    /// flight map with it even after the file changed and amtsbote
    /// restarted.
    async fn keep_mapping_version(&self, version: &str, name: &str, source: &str) -> Result<(), StoreError>;
    /// The source kept under `version`.
    async fn mapping_version(&self, version: &str) -> Result<Option<String>, StoreError>;
    async fn status(&self, id: Uuid) -> Result<Option<SubmissionStatus>, StoreError>;
    /// Records who replayed or discarded a parked delivery, and sets the
    /// delivery's state accordingly.
    async fn record_operator_action(&self, record: OperatorRecord) -> Result<(), StoreError>;
    /// The audit trail, newest first.
    async fn audit_trail(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
}

/// A claim of an idempotency key that has not reached the broker's
/// confirm after this long belongs to a request that died.
const STALE_CLAIM: std::time::Duration = std::time::Duration::from_secs(15);

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

const PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
";

/// Schema versions in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: [&str; 3] = [
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
];

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).expect("now formats")
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::Directory { path: dir.display().to_string(), source })?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(PRAGMAS)?;
        migrate(&mut conn)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|_| StoreError::Join)?
        .map_err(StoreError::from)
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
        self.with(move |conn| {
            let tx = conn.transaction()?;
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
                    tx.commit()?;
                    let received_at = OffsetDateTime::parse(&received_at, &Rfc3339).expect("stored times are RFC 3339");
                    return Ok(Claim::Resume { id, received_at });
                }
            }
            let id = s.id.to_string();
            let received_at = s.received_at.format(&Rfc3339).expect("now formats");
            tx.execute(
                "INSERT INTO submissions (id, service, region, reference, state, received_at) VALUES (?1, ?2, ?3, ?4, 'received', ?5)",
                params![id, s.service, s.region, s.reference, received_at],
            )?;
            for target in &s.targets {
                tx.execute(
                    "INSERT INTO deliveries (submission_id, target, state, updated_at) VALUES (?1, ?2, 'queued', ?3)",
                    params![id, target.as_str(), received_at],
                )?;
            }
            if let Some(k) = &key {
                tx.execute(
                    "INSERT INTO idempotency_keys (key, fingerprint, submission_id, created_at, claimed_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![k.key, k.fingerprint.as_slice(), id, received_at],
                )?;
            }
            tx.commit()?;
            Ok(Claim::Fresh)
        })
        .await
    }

    async fn confirm_intake(&self, id: Uuid) -> Result<(), StoreError> {
        self.with(move |conn| {
            conn.execute("UPDATE submissions SET state = 'accepted' WHERE id = ?1", [id.to_string()])?;
            Ok(())
        })
        .await
    }

    async fn abandon_intake(&self, id: Uuid) -> Result<(), StoreError> {
        self.with(move |conn| {
            let id = id.to_string();
            let released =
                conn.execute("UPDATE idempotency_keys SET claimed_at = '1970-01-01T00:00:00Z' WHERE submission_id = ?1", [&id])?;
            if released == 0 {
                conn.execute("DELETE FROM submissions WHERE id = ?1", [&id])?;
            }
            Ok(())
        })
        .await
    }

    async fn record_attempt(&self, id: Uuid, target: &TargetName, mapping_version: &str, state: DeliveryState, outcome: &str) -> Result<(), StoreError> {
        let (target, version, outcome) = (target.as_str().to_owned(), mapping_version.to_owned(), outcome.to_owned());
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO deliveries (submission_id, target, state, attempts, last_outcome, updated_at, mapping_version)
                 SELECT ?1, ?2, ?3, 1, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM submissions WHERE id = ?1)
                 ON CONFLICT (submission_id, target) DO UPDATE SET
                   state = excluded.state, attempts = attempts + 1, last_outcome = excluded.last_outcome,
                   updated_at = excluded.updated_at, mapping_version = excluded.mapping_version",
                params![id.to_string(), target, state.as_str(), outcome, now(), version],
            )?;
            Ok(())
        })
        .await
    }

    async fn keep_mapping_version(&self, version: &str, name: &str, source: &str) -> Result<(), StoreError> {
        let (version, name, source) = (version.to_owned(), name.to_owned(), source.to_owned());
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO mapping_versions (version, name, source, first_seen) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (version) DO NOTHING",
                params![version, name, source, now()],
            )?;
            Ok(())
        })
        .await
    }

    async fn mapping_version(&self, version: &str) -> Result<Option<String>, StoreError> {
        let version = version.to_owned();
        self.with(move |conn| {
            Ok(conn
                .query_row("SELECT source FROM mapping_versions WHERE version = ?1", [&version], |r| r.get::<_, String>(0))
                .optional()?)
        })
        .await
    }

    async fn record_operator_action(&self, r: OperatorRecord) -> Result<(), StoreError> {
        self.with(move |conn| {
            let at = now();
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO operator_actions (at, operator, action, target, submission_id, parked_reason, comment)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![at, r.operator, r.action.as_str(), r.target, r.submission_id, r.parked_reason, r.comment],
            )?;
            let (state, outcome) = match r.action {
                OperatorAction::Replay => (DeliveryState::Queued, format!("replayed by {}", r.operator)),
                OperatorAction::Discard => (DeliveryState::Discarded, format!("discarded by {}", r.operator)),
            };
            tx.execute(
                "UPDATE deliveries SET state = ?3, last_outcome = ?4, updated_at = ?5 WHERE submission_id = ?1 AND target = ?2",
                params![r.submission_id, r.target, state.as_str(), outcome, at],
            )?;
            tx.commit()
        })
        .await
    }

    async fn audit_trail(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(move |conn| {
            let mut statement = conn.prepare(
                "SELECT at, operator, action, target, submission_id, parked_reason, comment
                 FROM operator_actions ORDER BY at DESC, rowid DESC LIMIT ?1",
            )?;
            statement
                .query_map([limit], |r| {
                    Ok(AuditEntry {
                        at: r.get(0)?,
                        record: OperatorRecord {
                            operator: r.get(1)?,
                            action: OperatorAction::parse(&r.get::<_, String>(2)?),
                            target: r.get(3)?,
                            submission_id: r.get(4)?,
                            parked_reason: r.get(5)?,
                            comment: r.get(6)?,
                        },
                    })
                })?
                .collect()
        })
        .await
    }

    async fn status(&self, id: Uuid) -> Result<Option<SubmissionStatus>, StoreError> {
        self.with(move |conn| {
            let key = id.to_string();
            let Some((service, region, reference, state, received_at)) = conn
                .query_row(
                    "SELECT service, region, reference, state, received_at FROM submissions WHERE id = ?1",
                    [&key],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?)),
                )
                .optional()?
            else {
                return Ok(None);
            };
            let mut statement = conn.prepare(
                "SELECT target, state, attempts, last_outcome, updated_at, mapping_version FROM deliveries WHERE submission_id = ?1 ORDER BY target",
            )?;
            let targets = statement
                .query_map([&key], |r| {
                    Ok(TargetStatus {
                        target: r.get(0)?,
                        state: DeliveryState::parse(&r.get::<_, String>(1)?),
                        attempts: r.get(2)?,
                        last_outcome: r.get(3)?,
                        updated_at: r.get(4)?,
                        mapping_version: r.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let status = if state == "received" {
                "received"
            } else if targets.iter().any(|t| t.state == DeliveryState::Parked) {
                "parked"
            } else if targets.iter().all(|t| t.state == DeliveryState::Delivered) {
                "delivered"
            } else if targets.iter().all(|t| matches!(t.state, DeliveryState::Delivered | DeliveryState::Discarded)) {
                "discarded"
            } else {
                "accepted"
            };
            Ok(Some(SubmissionStatus { id, status, service, region, reference, received_at, targets }))
        })
        .await
    }
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
    async fn an_abandoned_key_resumes_under_the_same_id() {
        let (_dir, store) = temp_store();
        let first = submission(Uuid::new_v4());
        store.begin_intake(first.clone(), key("k", 1)).await.unwrap();
        store.abandon_intake(first.id).await.unwrap();
        match store.begin_intake(submission(Uuid::new_v4()), key("k", 1)).await.unwrap() {
            Claim::Resume { id, received_at } => {
                assert_eq!(id, first.id);
                assert_eq!(received_at.unix_timestamp(), first.received_at.unix_timestamp());
            }
            other => panic!("expected a resume, got {other:?}"),
        }
        // The resumed claim is fresh again for a concurrent request.
        assert_eq!(store.begin_intake(submission(Uuid::new_v4()), key("k", 1)).await.unwrap(), Claim::InProgress);
    }

    #[tokio::test]
    async fn an_abandoned_submission_without_key_is_forgotten() {
        let (_dir, store) = temp_store();
        let id = Uuid::new_v4();
        store.begin_intake(submission(id), None).await.unwrap();
        store.abandon_intake(id).await.unwrap();
        assert!(store.status(id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn operator_actions_are_recorded_and_change_the_state() {
        let (_dir, store) = temp_store();
        let id = Uuid::new_v4();
        store.begin_intake(submission(id), None).await.unwrap();
        store.confirm_intake(id).await.unwrap();
        let a = TargetName::parse("a").unwrap();
        store.record_attempt(id, &a, "sha256:test", DeliveryState::Parked, "HTTP 422").await.unwrap();
        let record = OperatorRecord {
            operator: "alice".into(),
            action: OperatorAction::Discard,
            target: "a".into(),
            submission_id: id.to_string(),
            parked_reason: "target-rejected".into(),
            comment: Some("duplicate of R-1".into()),
        };
        store.record_operator_action(record).await.unwrap();
        let trail = store.audit_trail(10).await.unwrap();
        assert_eq!((trail[0].record.operator.as_str(), trail[0].record.action), ("alice", OperatorAction::Discard));
        let status = store.status(id).await.unwrap().unwrap();
        assert_eq!(status.targets[0].state, DeliveryState::Discarded);
        assert_eq!(status.targets[0].last_outcome.as_deref(), Some("discarded by alice"));
    }

    #[test]
    fn a_store_of_the_first_schema_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        SqliteStore::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        SqliteStore::open(&path).unwrap();
    }

    #[tokio::test]
    async fn status_follows_deliveries() {
        let (_dir, store) = temp_store();
        let id = Uuid::new_v4();
        store.begin_intake(submission(id), None).await.unwrap();
        assert_eq!(store.status(id).await.unwrap().unwrap().status, "received");
        store.confirm_intake(id).await.unwrap();
        let a = TargetName::parse("a").unwrap();
        let b = TargetName::parse("b").unwrap();
        store.record_attempt(id, &a, "sha256:test", DeliveryState::Delivered, "HTTP 200").await.unwrap();
        assert_eq!(store.status(id).await.unwrap().unwrap().status, "accepted");
        store.record_attempt(id, &b, "sha256:test", DeliveryState::Delivered, "HTTP 201").await.unwrap();
        let status = store.status(id).await.unwrap().unwrap();
        assert_eq!(status.status, "delivered");
        assert_eq!(status.targets[1].attempts, 1);
        assert_eq!(status.targets[1].last_outcome.as_deref(), Some("HTTP 201"));
    }
}
