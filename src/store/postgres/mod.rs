//! The ledger on PostgreSQL, shared by every amtsbote process of an
//! installation on any number of hosts (see the module documentation of
//! [`crate::store`] for what the ledger holds).
//!
//! * Client: tokio-postgres (rust-postgres, the maintained async client
//!   the ecosystem builds on) with a deadpool pool: plain SQL with bound
//!   parameters and cached prepared statements, no compile-time database
//!   and no second SQLite driver in the tree (as sqlx would bring).
//! * Schema: refinery's migrations (`migrations/`), applied at startup
//!   under a PostgreSQL advisory lock, so that processes starting at once
//!   apply each migration once and wait for each other.
//! * Concurrency: every write is one transaction at `READ COMMITTED`. Two
//!   processes claiming one idempotency key meet in its unique constraint
//!   (one inserts, the other waits and then finds it); a write that
//!   changes a submission's deliveries locks the submission's row first,
//!   so that the state across targets it computes sees every other
//!   process's committed change. Deadlocks and serialization failures are
//!   retried. Pruning skips rows another process holds, so every process
//!   may prune at once.
//! * Each call has [`PostgresSettings::timeout`]: a server that does not
//!   answer makes intake answer `503`, never hang.

mod tls;

use std::path::PathBuf;
use std::time::Duration;

use amtsbote_connector::{Context, SecretRef};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use uuid::Uuid;

use super::*;
use crate::domain::{timestamp, to_millis};

type PgError = tokio_postgres::Error;

refinery::embed_migrations!("src/store/postgres/migrations");

/// Any number that is amtsbote's own among the advisory locks of the
/// database: it serializes the migrations of processes starting at once.
const MIGRATION_LOCK: i64 = 0x616d_7473_626f_7465; // "amtsbote"

/// How often a transaction that lost a deadlock or a serialization
/// conflict is tried again.
const CONFLICT_RETRIES: u32 = 5;

/// The ledger on a PostgreSQL server (13 or newer).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// The server and database: `postgres://USER@HOST:PORT/DATABASE`
    /// (libpq's URL form, e.g. `?sslmode=require`). A password in the URL
    /// works but belongs in `password`; `AMTSBOTE_STORE_POSTGRES_URL`
    /// overrides this. Several hosts (`HOST1,HOST2`) are tried in order,
    /// for a standby promoted by the operator's failover.
    #[schemars(with = "String")]
    pub url: SecretString,
    /// The password, a secret reference (`{ env: NAME }` or
    /// `{ file: PATH }`), unless the URL carries it.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Connections this process keeps at most (default 16). Every process
    /// has its own pool: the server's `max_connections` must exceed the
    /// sum.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// PEM file of the CA that signed the server's certificate, for TLS
    /// (`sslmode=require` in the URL, or the default `prefer` against a
    /// server that offers TLS); without it the system's roots are
    /// trusted. The host name is always checked. Relative to the config
    /// file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one ledger call (a connection from the pool included) may
    /// take (default `10s`): past it the call fails (intake answers
    /// `503`, a worker retries), instead of waiting for a server that does
    /// not answer.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

impl PostgresSettings {
    /// The defaults for the database at `url`.
    pub fn at(url: SecretString) -> Self {
        Self { url, password: None, pool_size: default_pool_size(), ca_file: None, timeout: default_timeout() }
    }
}

fn default_pool_size() -> usize {
    16
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

pub struct PostgresStore {
    pool: Pool,
    timeout: Duration,
}

impl PostgresStore {
    /// Connects, applies the migrations this build has and the database
    /// does not (waiting for another process that applies them), and
    /// checks the server is reachable.
    pub async fn open(settings: &PostgresSettings, context: &Context) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            settings.url.expose_secret().parse().map_err(|e: PgError| StoreError::Settings(format!("store.postgres.url: {e}")))?;
        if let Some(password) = &settings.password {
            let password = context.secret(password).map_err(|e| StoreError::Settings(format!("store.postgres.password: {e}")))?;
            config.password(password.expose());
        }
        let ca_file = settings.ca_file.as_ref().map(|file| context.path(file));
        Self::connect(config, ca_file.as_deref(), settings.pool_size, settings.timeout).await
    }

    async fn connect(
        mut config: tokio_postgres::Config,
        ca_file: Option<&std::path::Path>,
        pool_size: usize,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        if config.get_application_name().is_none() {
            config.application_name("amtsbote");
        }
        config.connect_timeout(timeout);
        // A server gone without a word (a host lost) is noticed.
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let tls = tls::RustlsConnector::new(ca_file).map_err(StoreError::Settings)?;
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| StoreError::Settings(e.to_string()))?;
        let store = Self { pool, timeout };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
        let applied = migrations::runner().run_async(&mut **client).await;
        // The lock ends with the session too, should this process die.
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
        applied.map(drop).map_err(|e| StoreError::Migration(e.to_string()))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Unavailable(other.to_string()),
        })
    }

    /// Runs `call` within [`PostgresSettings::timeout`].
    async fn timed<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call).await.map_err(|_| StoreError::Unavailable(format!("no answer within {:?}", self.timeout)))?
    }
}

/// Runs `$work` (an expression of a future over `$tx: &Transaction`) in a
/// transaction of its own and commits it, trying again after a deadlock
/// or serialization conflict. A macro, because the future borrows the
/// transaction it is given.
macro_rules! in_transaction {
    ($store:expr, |$tx:ident| $work:expr) => {{
        let store = $store;
        store
            .timed(async {
                let mut tries = 0;
                loop {
                    let mut client = store.client().await?;
                    let result: Result<_, PgError> = async {
                        let transaction = client.transaction().await?;
                        let value = {
                            let $tx = &transaction;
                            $work.await?
                        };
                        transaction.commit().await?;
                        Ok(value)
                    }
                    .await;
                    match result {
                        Err(e) if is_conflict(&e) && tries < CONFLICT_RETRIES => tries += 1,
                        result => break result.map_err(StoreError::from),
                    }
                }
            })
            .await
    }};
}

fn is_conflict(e: &PgError) -> bool {
    matches!(e.code(), Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// Sets the state of the submission `$1` across its targets after a change
/// of its deliveries (under its row lock, see [`lock_submission`]).
const UPDATE_SUBMISSION_STATE: &str = concat!("UPDATE submissions SET state = ", submission_state!(), " WHERE id = $1");

/// Marks the submission `$1` confirmed by the broker.
const CONFIRM_SUBMISSION: &str =
    concat!("UPDATE submissions SET state = CASE ", state_once_accepted!(), " WHERE id = $1 AND state = 'received'");

/// Runs one statement, prepared once per connection: every write's
/// statements are fixed texts, and a statement not prepared costs the
/// server a parse and plan each time.
async fn exec(tx: &Transaction<'_>, sql: &str, parameters: &[&(dyn ToSql + Sync)]) -> Result<u64, PgError> {
    let statement = tx.prepare_cached(sql).await?;
    tx.execute(&statement, parameters).await
}

/// Locks the submission's row for the rest of the transaction, so that
/// writes to one submission from several processes follow each other;
/// its state, or `None` if the ledger does not know it (what happens to a
/// submission that retention removed is not recorded against it).
async fn lock_submission(tx: &Transaction<'_>, id: Uuid) -> Result<Option<String>, PgError> {
    let statement = tx.prepare_cached("SELECT state FROM submissions WHERE id = $1 FOR UPDATE").await?;
    Ok(tx.query_opt(&statement, &[&id]).await?.map(|row| row.get(0)))
}

// Every time a call is given is cut to milliseconds as the stored ones
// are, so that comparisons agree with the SQLite ledger's (which compares
// the times' text).

async fn add_event(tx: &Transaction<'_>, submission: Uuid, at: OffsetDateTime, e: NewEvent<'_>) -> Result<(), PgError> {
    let sql = "INSERT INTO events (submission_id, at, kind, target, attempt, mapping_version, detail, receipt, size, sha256, operator, duration_ms)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
    exec(tx, sql, &[
        &submission,
        &at,
        &e.kind,
        &e.target,
        &e.attempt.map(|n| n as i32),
        &e.mapping_version,
        &e.detail.as_deref(),
        &e.receipt,
        &e.size,
        &e.sha256,
        &e.operator,
        &e.duration_ms,
    ])
    .await?;
    Ok(())
}

fn now() -> OffsetDateTime {
    crate::domain::now_millis()
}

async fn begin_intake(tx: &Transaction<'_>, s: &NewSubmission, key: Option<&IdempotencyKey>) -> Result<Claim, PgError> {
    let received_at = to_millis(s.received_at);
    if let Some(k) = key {
        loop {
            // The unique key decides; a concurrent claim of the same key
            // waits here for the first one's commit, then finds it.
            let claimed = exec(
                tx,
                "INSERT INTO idempotency_keys (key, fingerprint, submission_id, created_at, claimed_at)
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (key) DO NOTHING",
                &[&k.key, &k.fingerprint.as_slice(), &s.id, &received_at],
            )
            .await?
            == 1;
            if claimed {
                break;
            }
            if let Some(claim) = existing_claim(tx, k).await? {
                return Ok(claim);
            }
            // Pruned between the two statements: claim it afresh.
        }
    }
    let size = s.size as i64;
    exec(
        tx,
        "INSERT INTO submissions (id, service, region, reference, state, received_at, size, sha256, sender)
         VALUES ($1, $2, $3, $4, 'received', $5, $6, $7, $8)",
        &[&s.id, &s.service, &s.region, &s.reference, &received_at, &size, &s.sha256, &s.sender],
    )
    .await?;
    for target in &s.targets {
        exec(tx, "INSERT INTO deliveries (submission_id, target, state, updated_at) VALUES ($1, $2, 'queued', $3)", &[
            &s.id,
            &target.as_str(),
            &received_at,
        ])
        .await?;
    }
    add_event(tx, s.id, received_at, s.received_event()).await?;
    Ok(Claim::Fresh)
}

/// The claim of a key used before, under the locks of its row and its
/// submission's; `None` if it is gone meanwhile.
async fn existing_claim(tx: &Transaction<'_>, k: &IdempotencyKey) -> Result<Option<Claim>, PgError> {
    let Some(row) = tx
        .query_opt(
            "SELECT k.fingerprint, k.submission_id, s.state, s.received_at, k.claimed_at FROM idempotency_keys k
             JOIN submissions s ON s.id = k.submission_id WHERE k.key = $1 FOR UPDATE",
            &[&k.key],
        )
        .await?
    else {
        return Ok(None);
    };
    let (fingerprint, id, state, received_at, claimed_at): (Vec<u8>, Uuid, String, OffsetDateTime, Option<OffsetDateTime>) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    if fingerprint != k.fingerprint {
        return Ok(Some(Claim::Mismatch));
    }
    if state == "refused" {
        // Refused before: this retry is accepted or refused afresh, under
        // the same id.
        let at = now();
        exec(tx, "UPDATE submissions SET state = 'received' WHERE id = $1", &[&id]).await?;
        exec(
            tx,
            "UPDATE deliveries SET state = 'queued', last_outcome = NULL, updated_at = $2 WHERE submission_id = $1",
            &[&id, &at],
        )
        .await?;
        exec(tx, "UPDATE idempotency_keys SET claimed_at = $2 WHERE key = $1", &[&k.key, &at]).await?;
        add_event(tx, id, at, NewEvent { kind: "resumed", ..NewEvent::default() }).await?;
        return Ok(Some(Claim::Resume { id, received_at }));
    }
    if state != "received" {
        return Ok(Some(Claim::Replay { id }));
    }
    if OffsetDateTime::now_utc() - claimed_at.unwrap_or(received_at) <= STALE_CLAIM {
        return Ok(Some(Claim::InProgress));
    }
    exec(tx, "UPDATE idempotency_keys SET claimed_at = $2 WHERE key = $1", &[&k.key, &now()]).await?;
    Ok(Some(Claim::Resume { id, received_at }))
}

async fn refuse_intake(tx: &Transaction<'_>, id: Uuid, reason: &str) -> Result<Refusal, PgError> {
    match lock_submission(tx, id).await?.as_deref() {
        // Unknown or refused already: nothing changes.
        None | Some("refused") => return Ok(Refusal::Refused),
        Some("received") => {}
        // A worker accepted it meanwhile.
        Some(_) => return Ok(Refusal::AcceptedMeanwhile),
    }
    let at = now();
    exec(tx, "UPDATE submissions SET state = 'refused' WHERE id = $1", &[&id]).await?;
    exec(tx, "UPDATE deliveries SET state = 'refused', last_outcome = $2, updated_at = $3 WHERE submission_id = $1", &[
        &id, &reason, &at,
    ])
    .await?;
    // The claim is released: a retry with the key resumes at once.
    exec(tx, "UPDATE idempotency_keys SET claimed_at = 'epoch' WHERE submission_id = $1", &[&id]).await?;
    add_event(tx, id, at, NewEvent { kind: "refused", detail: Some(reason.into()), ..NewEvent::default() }).await?;
    Ok(Refusal::Refused)
}

async fn accept_undecided(tx: &Transaction<'_>, id: Uuid, received_before: OffsetDateTime) -> Result<bool, PgError> {
    match lock_submission(tx, id).await?.as_deref() {
        None | Some("refused") => return Ok(false),
        Some("received") => {}
        Some(_) => return Ok(true),
    }
    let accepted = tx
        .execute(
            concat!("UPDATE submissions SET state = CASE ", state_once_accepted!(), " WHERE id = $1 AND state = 'received' AND received_at < $2"),
            &[&id, &received_before],
        )
        .await?;
    if accepted > 0 {
        add_event(tx, id, now(), NewEvent {
            kind: "accepted",
            detail: Some(ACCEPTED_BY_A_WORKER.into()),
            ..NewEvent::default()
        })
        .await?;
    }
    Ok(accepted > 0)
}

async fn record_attempt(tx: &Transaction<'_>, a: &AttemptRecord) -> Result<(), PgError> {
    let (id, target, at) = (a.submission, a.target.as_str(), now());
    match lock_submission(tx, id).await?.as_deref() {
        None => return Ok(()),
        Some("received") => {
            exec(tx, "UPDATE submissions SET state = 'accepted' WHERE id = $1", &[&id]).await?;
            add_event(tx, id, at, NewEvent { kind: "accepted", detail: Some(ACCEPTED_WITH_AN_ATTEMPT.into()), ..NewEvent::default() }).await?;
        }
        Some(_) => {}
    }
    let writes = a.writes();
    for event in writes.events {
        add_event(tx, id, at, event).await?;
    }
    let upsert = "INSERT INTO deliveries AS d (submission_id, target, state, attempts, last_outcome, updated_at, mapping_version, receipt)
                  VALUES ($1, $2, $3, 1, $4, $5, $6, $7)
                  ON CONFLICT (submission_id, target) DO UPDATE SET
                    state = excluded.state, attempts = d.attempts + 1, last_outcome = excluded.last_outcome,
                    updated_at = excluded.updated_at, mapping_version = excluded.mapping_version,
                    receipt = coalesce(excluded.receipt, d.receipt)";
    exec(tx, upsert, &[&id, &target, &writes.state.as_str(), &writes.outcome, &at, &a.mapping_version, &writes.receipt]).await?;
    exec(tx, UPDATE_SUBMISSION_STATE, &[&id]).await?;
    Ok(())
}

async fn record_operator_action(tx: &Transaction<'_>, r: &OperatorRecord) -> Result<ActionClaim, PgError> {
    // An id that is no UUID names no submission the ledger knows.
    let submission = Uuid::parse_str(&r.submission_id).ok();
    let known = match submission {
        Some(id) => lock_submission(tx, id).await?.is_some(),
        None => false,
    };
    let at = now();
    let generation = r.generation.map(|g| g as i32);
    let inserted = exec(
        tx,
        "INSERT INTO operator_actions (at, operator, action, target, submission_id, parked_reason, comment, generation, replay_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        &[&at, &r.operator, &r.action.as_str(), &r.target, &r.submission_id, &r.parked_reason, &r.comment, &generation, &r.replay],
    )
    .await?;
    if inserted == 0 {
        let row = tx
            .query_one(
                "SELECT action, replay_id FROM operator_actions WHERE submission_id = $1 AND target = $2 AND generation = $3",
                &[&r.submission_id, &r.target, &generation],
            )
            .await?;
        let same = OperatorAction::parse(row.get(0)) == r.action && row.get::<_, Option<Uuid>>(1) == r.replay;
        return Ok(if same { ActionClaim::Repeated } else { ActionClaim::Superseded });
    }
    let (Some(id), true) = (submission, known) else {
        return Ok(ActionClaim::Recorded);
    };
    let (state, kind, outcome) = match r.action {
        OperatorAction::Replay => (DeliveryState::Queued, "replayed", format!("replayed by {}", r.operator)),
        OperatorAction::Discard => (DeliveryState::Discarded, "discarded", format!("discarded by {}", r.operator)),
    };
    // Only a parked delivery changes state here: a replayed one is
    // published before this is recorded, and its worker may have recorded
    // the outcome already, which must stand.
    exec(
        tx,
        "UPDATE deliveries SET state = $3, last_outcome = $4, updated_at = $5 WHERE submission_id = $1 AND target = $2 AND state = 'parked'",
        &[&id, &r.target, &state.as_str(), &outcome, &at],
    )
    .await?;
    exec(tx, UPDATE_SUBMISSION_STATE, &[&id]).await?;
    let event = NewEvent { kind, target: Some(&r.target), operator: Some(&r.operator), detail: Some(r.parked_reason.as_str().into()), ..NewEvent::default() };
    add_event(tx, id, at, event).await?;
    Ok(ActionClaim::Recorded)
}

async fn prune(tx: &Transaction<'_>, before: OffsetDateTime, limit: u32) -> Result<u64, PgError> {
    // SKIP LOCKED: a row another process prunes (or writes) now is left to
    // it, so processes pruning at once neither wait for nor block each
    // other.
    let removed = exec(
        tx,
        "DELETE FROM submissions WHERE id IN (
           SELECT id FROM submissions WHERE received_at < $1 AND state IN ('delivered', 'discarded', 'refused')
           LIMIT $2 FOR UPDATE SKIP LOCKED)",
        &[&before, &i64::from(limit)],
    )
    .await?;
    exec(tx, "DELETE FROM operator_actions WHERE at < $1", &[&before]).await?;
    // A sent decision is kept as long as its submission: a rejection (no
    // submission) for the retention period.
    exec(
        tx,
        "DELETE FROM fit_connect_decisions f WHERE sent_at < $1
           AND (submission_id IS NULL OR NOT EXISTS (SELECT 1 FROM submissions s WHERE s.id = f.submission_id))",
        &[&before],
    )
    .await?;
    Ok(removed)
}

fn decision_of(row: &Row) -> FitConnectDecision {
    FitConnectDecision {
        fit_submission: row.get("fit_submission_id"),
        case_id: row.get("case_id"),
        destination: row.get("destination_id"),
        submission: row.get("submission_id"),
        verdict: Verdict::parse(row.get("verdict")),
        payload: row.get("payload"),
        decided_at: timestamp(row.get("decided_at")),
        sent_at: row.get::<_, Option<OffsetDateTime>>("sent_at").map(timestamp),
    }
}

const DECISION_COLUMNS: &str = "fit_submission_id, case_id, destination_id, submission_id, verdict, payload, decided_at, sent_at";

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn begin_intake(&self, s: NewSubmission, key: Option<IdempotencyKey>) -> Result<Claim, StoreError> {
        in_transaction!(self, |tx| begin_intake(tx, &s, key.as_ref()))
    }

    async fn confirm_intake(&self, id: Uuid) -> Result<(), StoreError> {
        in_transaction!(self, |tx| async move {
            lock_submission(tx, id).await?;
            if exec(tx, CONFIRM_SUBMISSION, &[&id]).await? > 0 {
                add_event(tx, id, now(), NewEvent { kind: "accepted", ..NewEvent::default() }).await?;
            }
            Ok::<_, PgError>(())
        })
    }

    async fn refuse_intake(&self, id: Uuid, reason: &str) -> Result<Refusal, StoreError> {
        in_transaction!(self, |tx| refuse_intake(tx, id, reason))
    }

    async fn admission(&self, id: Uuid, target: &str) -> Result<Admission, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT s.state, s.received_at, d.state FROM submissions s
                     LEFT JOIN deliveries d ON d.submission_id = s.id AND d.target = $2 WHERE s.id = $1",
                )
                .await?;
            let row = client.query_opt(&statement, &[&id, &target]).await?;
            Ok(match row {
                None => Admission::Unknown,
                Some(row) => match row.get::<_, &str>(0) {
                    "refused" => Admission::Refused,
                    "received" => Admission::Undecided { received_at: row.get(1) },
                    _ => Admission::Accepted { done: matches!(row.get::<_, Option<&str>>(2), Some("delivered" | "discarded")) },
                },
            })
        })
        .await
    }

    async fn accept_undecided(&self, id: Uuid, received_before: OffsetDateTime) -> Result<bool, StoreError> {
        in_transaction!(self, |tx| accept_undecided(tx, id, to_millis(received_before)))
    }

    async fn record_refused_message(&self, id: Uuid, target: &str) -> Result<(), StoreError> {
        in_transaction!(self, |tx| async move {
            if lock_submission(tx, id).await?.is_some() {
                add_event(tx, id, now(), NewEvent {
                    kind: "dropped",
                    target: Some(target),
                    detail: Some(DROPPED_REFUSED.into()),
                    ..NewEvent::default()
                })
                .await?;
            }
            Ok::<_, PgError>(())
        })
    }

    async fn record_attempt(&self, attempt: AttemptRecord) -> Result<(), StoreError> {
        in_transaction!(self, |tx| record_attempt(tx, &attempt))
    }

    async fn keep_mapping_version(&self, version: &str, name: &str, source: &str) -> Result<(), StoreError> {
        in_transaction!(self, |tx| async move {
            exec(
                tx,
                "INSERT INTO mapping_versions (version, name, source, first_seen) VALUES ($1, $2, $3, $4) ON CONFLICT (version) DO NOTHING",
                &[&version, &name, &source, &now()],
            )
            .await
        })
        .map(drop)
    }

    async fn mapping_version(&self, version: &str) -> Result<Option<String>, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            Ok(client.query_opt("SELECT source FROM mapping_versions WHERE version = $1", &[&version]).await?.map(|row| row.get(0)))
        })
        .await
    }

    async fn status(&self, id: Uuid) -> Result<Option<SubmissionStatus>, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let Some(row) = client
                .query_opt(
                    "SELECT service, region, reference, state, received_at, size, sha256, sender FROM submissions WHERE id = $1",
                    &[&id],
                )
                .await?
            else {
                return Ok(None);
            };
            let mut status = SubmissionStatus {
                id,
                service: row.get(0),
                region: row.get(1),
                reference: row.get(2),
                status: SubmissionState::parse(row.get(3)).unwrap_or(SubmissionState::Accepted),
                received_at: timestamp(row.get(4)),
                size: row.get(5),
                sha256: row.get(6),
                sender: row.get(7),
                fit_connect: None,
                targets: Vec::new(),
                timeline: Vec::new(),
            };
            status.fit_connect = client
                .query_opt("SELECT fit_submission_id, case_id, destination_id FROM fit_connect_decisions WHERE submission_id = $1", &[&id])
                .await?
                .map(|row| FitConnectIds {
                    submission_id: row.get::<_, Uuid>(0).to_string(),
                    case_id: row.get::<_, Uuid>(1).to_string(),
                    destination_id: row.get::<_, Uuid>(2).to_string(),
                });
            status.targets = client
                .query(
                    "SELECT target, state, attempts, last_outcome, updated_at, mapping_version, receipt
                     FROM deliveries WHERE submission_id = $1 ORDER BY target",
                    &[&id],
                )
                .await?
                .iter()
                .map(|row| TargetStatus {
                    target: row.get(0),
                    state: DeliveryState::parse(row.get(1)),
                    attempts: row.get::<_, i32>(2) as u32,
                    last_outcome: row.get(3),
                    updated_at: timestamp(row.get(4)),
                    mapping_version: row.get(5),
                    receipt: row.get(6),
                })
                .collect();
            let rows = client
                .query(
                    "SELECT at, kind, target, attempt, mapping_version, detail, receipt, size, sha256, operator, duration_ms
                     FROM events WHERE submission_id = $1 ORDER BY at, seq",
                    &[&id],
                )
                .await?
                .iter()
                .map(|row| Event {
                    at: timestamp(row.get(0)),
                    event: row.get(1),
                    target: row.get(2),
                    attempt: row.get::<_, Option<i32>>(3).map(|n| n as u32),
                    mapping_version: row.get(4),
                    detail: row.get(5),
                    receipt: row.get(6),
                    size: row.get(7),
                    sha256: row.get(8),
                    operator: row.get(9),
                    duration_ms: row.get(10),
                })
                .collect::<Vec<_>>();
            status.timeline = timeline(rows);
            Ok(Some(status))
        })
        .await
    }

    async fn search(&self, q: SearchQuery) -> Result<SearchPage, StoreError> {
        let mut conditions: Vec<String> = Vec::new();
        let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut bind = |condition: &str, value: Box<dyn ToSql + Sync + Send>| {
            values.push(value);
            conditions.push(condition.replace('?', &format!("${}", values.len())));
        };
        if let Some(reference) = q.reference {
            bind("s.reference = ?", Box::new(reference));
        }
        if let Some(service) = q.service {
            bind("s.service = ?", Box::new(service));
        }
        if let Some(region) = q.region {
            bind("starts_with(s.region, ?)", Box::new(region));
        }
        if let Some(target) = q.target {
            bind("EXISTS (SELECT 1 FROM deliveries t WHERE t.submission_id = s.id AND t.target = ?)", Box::new(target));
        }
        if let Some(within) = q.within {
            bind("EXISTS (SELECT 1 FROM deliveries w WHERE w.submission_id = s.id AND w.target = ANY(?))", Box::new(within));
        }
        if let Some(state) = q.state {
            bind("s.state = ?", Box::new(state.as_str()));
        }
        if let Some(from) = q.from {
            bind("s.received_at >= ?", Box::new(to_millis(from)));
        }
        if let Some(to) = q.to {
            bind("s.received_at < ?", Box::new(to_millis(to)));
        }
        if let Some(after) = &q.after {
            // A cursor is made of a time this ledger wrote; one that is not
            // a time continues nowhere.
            let Ok(received_at) = OffsetDateTime::parse(&after.received_at, &time::format_description::well_known::Rfc3339) else {
                return Ok(SearchPage { items: Vec::new(), next: None });
            };
            bind("(s.received_at, s.id) < (?, ", Box::new(received_at));
            let last = conditions.pop().expect("just bound");
            values.push(Box::new(after.id));
            conditions.push(format!("{last}${})", values.len()));
        }
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let limit = q.limit.clamp(1, 500) as usize;
        let sql = format!(
            "SELECT s.id, s.state, s.service, s.region, s.reference, s.received_at,
               (SELECT string_agg(d.target || ' ' || d.state, ',' ORDER BY d.target) FROM deliveries d WHERE d.submission_id = s.id)
             FROM submissions s {filter} ORDER BY s.received_at DESC, s.id DESC LIMIT {}",
            limit + 1
        );
        self.timed(async {
            let client = self.client().await?;
            let parameters: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect();
            let rows = client.query(&sql, &parameters).await?;
            let items: Vec<SubmissionSummary> = rows
                .iter()
                .map(|row| SubmissionSummary {
                    id: row.get(0),
                    status: SubmissionState::parse(row.get(1)).unwrap_or(SubmissionState::Accepted),
                    service: row.get(2),
                    region: row.get(3),
                    reference: row.get(4),
                    received_at: timestamp(row.get(5)),
                    targets: target_states(row.get::<_, Option<&str>>(6).unwrap_or_default()),
                })
                .collect();
            Ok(SearchPage::of(items, limit))
        })
        .await
    }

    async fn record_operator_action(&self, record: OperatorRecord) -> Result<ActionClaim, StoreError> {
        in_transaction!(self, |tx| record_operator_action(tx, &record))
    }

    async fn parked_action(&self, submission: &str, target: &str, generation: u32) -> Result<Option<OperatorAction>, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT action FROM operator_actions WHERE submission_id = $1 AND target = $2 AND generation = $3",
                    &[&submission, &target, &(generation as i32)],
                )
                .await?;
            Ok(row.map(|row| OperatorAction::parse(row.get(0))))
        })
        .await
    }

    async fn audit_trail(&self, limit: u32, within: Option<Vec<String>>) -> Result<Vec<AuditEntry>, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT at, operator, action, target, submission_id, parked_reason, comment FROM operator_actions
                     WHERE $2::text[] IS NULL OR target = ANY($2) ORDER BY at DESC, seq DESC LIMIT $1",
                    &[&i64::from(limit), &within],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| AuditEntry {
                    at: timestamp(row.get(0)),
                    record: OperatorRecord {
                        operator: row.get(1),
                        action: OperatorAction::parse(row.get(2)),
                        target: row.get(3),
                        submission_id: row.get(4),
                        parked_reason: row.get(5),
                        comment: row.get(6),
                        generation: None,
                        replay: None,
                    },
                })
                .collect())
        })
        .await
    }

    async fn activity(&self, since: OffsetDateTime) -> Result<std::collections::BTreeMap<String, TargetActivity>, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let mut activity: std::collections::BTreeMap<String, TargetActivity> = std::collections::BTreeMap::new();
            let counts = client
                .query(
                    "SELECT target, kind, count(*) FROM events
                     WHERE at >= $1 AND kind IN ('delivered', 'attempt-failed', 'mapping-failed', 'parked') GROUP BY target, kind",
                    &[&to_millis(since)],
                )
                .await?;
            for row in &counts {
                let (target, kind, count): (String, &str, i64) = (row.get(0), row.get(1), row.get(2));
                let entry = activity.entry(target).or_default();
                match kind {
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
        self.timed(async {
            let client = self.client().await?;
            let oldest = client
                .query(
                    "SELECT d.target, min(s.received_at) FROM deliveries d JOIN submissions s ON s.id = d.submission_id
                     WHERE d.state IN ('queued', 'retrying', 'parked') AND s.state NOT IN ('received', 'refused') GROUP BY d.target",
                    &[],
                )
                .await?;
            Ok(oldest.iter().map(|row| (row.get(0), row.get(1))).collect())
        })
        .await
    }

    async fn prune(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        in_transaction!(self, |tx| prune(tx, to_millis(before), limit))
    }

    async fn accepted_under_key(&self, key: &str) -> Result<Option<(Uuid, [u8; 32])>, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT k.submission_id, k.fingerprint FROM idempotency_keys k JOIN submissions s ON s.id = k.submission_id
                     WHERE k.key = $1 AND s.state NOT IN ('received', 'refused')",
                    &[&key],
                )
                .await?;
            Ok(row.and_then(|row| Some((row.get(0), row.get::<_, Vec<u8>>(1).try_into().ok()?))))
        })
        .await
    }

    async fn decide_fit_connect(&self, decision: FitConnectDecision) -> Result<FitConnectDecision, StoreError> {
        in_transaction!(self, |tx| async {
            exec(
                tx,
                "INSERT INTO fit_connect_decisions (fit_submission_id, case_id, destination_id, submission_id, verdict, payload, decided_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (fit_submission_id) DO NOTHING",
                &[
                    &decision.fit_submission,
                    &decision.case_id,
                    &decision.destination,
                    &decision.submission,
                    &decision.verdict.as_str(),
                    &decision.payload,
                    &now(),
                ],
            )
            .await?;
            let sql = format!("SELECT {DECISION_COLUMNS} FROM fit_connect_decisions WHERE fit_submission_id = $1");
            Ok::<_, PgError>(decision_of(&tx.query_one(&sql, &[&decision.fit_submission]).await?))
        })
    }

    async fn fit_connect_decision(&self, fit_submission: Uuid) -> Result<Option<FitConnectDecision>, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let sql = format!("SELECT {DECISION_COLUMNS} FROM fit_connect_decisions WHERE fit_submission_id = $1");
            Ok(client.query_opt(&sql, &[&fit_submission]).await?.as_ref().map(decision_of))
        })
        .await
    }

    async fn fit_connect_decision_sent(&self, fit_submission: Uuid) -> Result<(), StoreError> {
        in_transaction!(self, |tx| exec(
            tx,
            "UPDATE fit_connect_decisions SET sent_at = $2 WHERE fit_submission_id = $1 AND sent_at IS NULL",
            &[&fit_submission, &now()]
        ))
        .map(drop)
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        in_transaction!(self, |tx| exec(
            tx,
            "INSERT INTO health (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            &[&now()]
        ))
        .map(drop)
    }

    async fn finished_among(&self, ids: Vec<Uuid>, before: OffsetDateTime) -> Result<Vec<Uuid>, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT id FROM unnest($1::uuid[]) AS given (id) WHERE NOT EXISTS (
                       SELECT 1 FROM deliveries WHERE submission_id = given.id
                         AND (state NOT IN ('delivered', 'discarded', 'refused') OR updated_at >= $2))",
                    &[&ids, &to_millis(before)],
                )
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
        .await
    }

    async fn ledger_id(&self) -> Result<String, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            Ok(client.query_one("SELECT ledger_id FROM ledger WHERE id = 1", &[]).await?.get(0))
        })
        .await
    }
}

#[cfg(test)]
mod tests;
