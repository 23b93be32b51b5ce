//! The receiving side at work: one poller per destination, and what it
//! does with each waiting submission.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amtsbote_connector::{Context, Secret};
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::api::{ApiError, Endpoint, Fetched, SubmissionApi, Waiting};
use super::callback::{self, CallbackError};
use super::decision::{self, Acceptance, Rejection};
use super::problems::{Kind, Part, Problem};
use super::verify::{self, AuthenticationTags, Keys, Verified};
use super::metadata::MetadataSchemas;
use super::{DestinationConfig, FitConnectSettings};
use crate::admission::{Admissions, Incoming, NotAdmitted};
use crate::domain::{Region, SenderName};
use crate::jose::{DecryptionKey, Jwk, SigningKey, VerifyingKey};
use crate::metrics::{FitConnectErrorLabels, FitConnectLabel, FitConnectRejectionLabels, Metrics};
use crate::pipeline::{Pipeline, SharedPipeline};
use crate::store::{FitConnectDecision, IdempotencyKey, Store, StoreError, Verdict};
use crate::submission::{InvalidSubmission, Submission};

/// A destination that cannot work as configured.
#[derive(Debug, Clone, thiserror::Error)]
#[error("fit_connect: destinations: {destination}: {problem}")]
pub struct FitConnectError {
    pub destination: String,
    pub problem: String,
}

/// FITKO requires RSA keys of 4096 bits; a smaller key is a mistake.
const MIN_KEY_BITS: usize = 4096;

/// The largest metadata document taken.
const MAX_METADATA_BYTES: usize = 1024 * 1024;

/// How often a destination's keys are compared with those registered at
/// FIT-Connect even when nothing suggests a change: a key replaced or
/// withdrawn in the portal is noticed within this time although no
/// submission names it.
const KEYS_RECHECKED_EVERY: Duration = Duration::from_secs(3600);

/// The receiving side: its destinations and what they share.
pub struct FitConnect {
    destinations: BTreeMap<SenderName, Arc<Destination>>,
    poll_interval: Duration,
}

/// What every destination reads with.
struct Common {
    metadata_schemas: MetadataSchemas,
}

/// What receiving needs from the rest of amtsbote.
pub struct Shared {
    pub pipeline: SharedPipeline,
    pub admissions: Arc<Admissions>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub limits: crate::submission::Limits,
    /// The most encrypted bytes one submission may bring, all parts
    /// together (from `http.max_body_bytes`, as its base64 would be).
    pub max_jwe_bytes: usize,
}

struct Destination {
    name: SenderName,
    id: Uuid,
    /// `Err`: the configuration could not be used (keys, credentials);
    /// the destination is down and says why.
    ready: Result<Ready, String>,
    wake: Notify,
    health: Mutex<DestinationHealth>,
    /// When each submission still waiting was first seen, for the age of
    /// the oldest.
    first_seen: Mutex<HashMap<Uuid, time::OffsetDateTime>>,
    /// Submissions found to have no route, with the pipeline that had
    /// none: not fetched and checked again until the configuration is
    /// reloaded (a `Weak` keeps the old pipeline's address from being
    /// taken by a new one). Kept until found routed, so that they count
    /// as unrouted across a reload.
    unrouted: Mutex<HashMap<Uuid, std::sync::Weak<Pipeline>>>,
}

struct Ready {
    common: Arc<Common>,
    region: Region,
    api: SubmissionApi,
    decryption: Vec<DecryptionKey>,
    signing: SigningKey,
    callback_secret: Option<Secret>,
    /// The delivery service's keys, fetched when an event names a key
    /// not among them.
    service_keys: tokio::sync::Mutex<Vec<VerifyingKey>>,
    /// When our keys were last found to be those registered at
    /// FIT-Connect; `None`: to be checked before the next round decides
    /// anything.
    keys_checked: Mutex<Option<std::time::Instant>>,
    /// The SET payload schema the delivery service's events last declared.
    set_schema: Mutex<Option<String>>,
}

/// How a destination is doing, for the dashboard and the status API.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationHealth {
    pub name: String,
    pub id: String,
    /// Configured and usable, and the last poll reached FIT-Connect.
    pub up: bool,
    /// Why not, if not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    /// Submissions FIT-Connect listed as waiting at the last poll.
    pub waiting: usize,
    /// Age of the oldest of them, in seconds, from when it was submitted
    /// (or first seen, before its event log was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_waiting_seconds: Option<u64>,
    /// Of them, those found to have no route (looked at again after each
    /// reload).
    pub unrouted: usize,
    pub accepted: u64,
    pub rejected: u64,
}

impl FitConnect {
    /// Reads every destination's keys and credentials. A destination that
    /// cannot work is kept, down, with its problem (also returned): one
    /// bad destination neither stops the others nor amtsbote.
    pub fn build(settings: &FitConnectSettings, context: &Context, max_content_bytes: usize) -> (Self, Vec<FitConnectError>) {
        let mut problems = Vec::new();
        let common = match &settings.metadata_schemas {
            None => Ok(Arc::new(Common { metadata_schemas: MetadataSchemas::default() })),
            Some(dir) => MetadataSchemas::load(&context.path(dir))
                .map(|metadata_schemas| Arc::new(Common { metadata_schemas }))
                .map_err(|problem| format!("metadata_schemas: {problem}")),
        };
        let mut ids = std::collections::HashSet::new();
        let destinations = settings
            .destinations
            .iter()
            .map(|(name, config)| {
                let ready = if ids.insert(config.id) {
                    common.clone().and_then(|common| ready(settings, config, context, max_content_bytes, common))
                } else {
                    Err(format!("id {} is another destination's too; one amtsbote polls a destination once", config.id))
                };
                if let Err(problem) = &ready {
                    problems.push(FitConnectError { destination: name.to_string(), problem: problem.clone() });
                }
                let health = DestinationHealth {
                    name: name.to_string(),
                    id: config.id.to_string(),
                    problem: ready.as_ref().err().cloned(),
                    ..DestinationHealth::default()
                };
                let destination = Destination {
                    name: name.clone(),
                    id: config.id,
                    ready,
                    wake: Notify::new(),
                    health: Mutex::new(health),
                    first_seen: Mutex::new(HashMap::new()),
                    unrouted: Mutex::new(HashMap::new()),
                };
                (name.clone(), Arc::new(destination))
            })
            .collect();
        (Self { destinations, poll_interval: settings.poll_interval }, problems)
    }

    pub fn health(&self) -> Vec<DestinationHealth> {
        self.destinations.values().map(|d| d.health.lock().expect("health lock").clone()).collect()
    }

    /// Takes a callback for the destination `name`: authenticated, it
    /// wakes the destination's poller.
    pub fn callback(&self, name: &str, timestamp: &str, authentication: &str, body: &[u8]) -> Result<(), CallbackError> {
        let destination = SenderName::parse(name).ok().and_then(|name| self.destinations.get(&name)).ok_or(CallbackError::UnknownDestination)?;
        let secret = destination.ready.as_ref().ok().and_then(|r| r.callback_secret.as_ref()).ok_or(CallbackError::UnknownDestination)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        callback::authenticate(secret.expose().as_bytes(), timestamp, authentication, body, now)?;
        destination.wake.notify_one();
        Ok(())
    }

    /// Whether each usable destination reaches FIT-Connect with its
    /// credentials (`check --probe`).
    pub async fn probe(&self) -> Vec<(String, Result<(), String>)> {
        let mut results = Vec::new();
        for destination in self.destinations.values() {
            let result = match &destination.ready {
                Ok(ready) => ready.api.probe(destination.id).await.map_err(|e| e.to_string()),
                Err(problem) => Err(problem.clone()),
            };
            results.push((destination.name.to_string(), result));
        }
        results
    }

    /// Starts one poller per usable destination; they stop when `shutdown`
    /// turns true, after the submission in hand.
    pub fn run(self: &Arc<Self>, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        if let Some(ready) = self.destinations.values().find_map(|d| d.ready.as_ref().ok()) {
            match ready.common.metadata_schemas.len() {
                0 => tracing::warn!(event = "fit_connect_metadata_unchecked",
                    "fit_connect.metadata_schemas is not set: metadata is held to what amtsbote reads of it, not validated against FITKO's schemas"),
                versions => tracing::info!(event = "fit_connect_metadata_schemas", versions, "FIT-Connect metadata schemas loaded"),
            }
        }
        for destination in self.destinations.values() {
            let up = destination.ready.is_ok();
            shared.metrics.fit_connect_destination(destination.name.as_str(), &Kind::ALL.map(Kind::slug));
            if !up {
                tracing::error!(event = "fit_connect_destination_unusable", destination = %destination.name,
                    problem = destination.health.lock().expect("health lock").problem.as_deref().unwrap_or_default(),
                    "the FIT-Connect destination cannot work as configured; its submissions wait at FIT-Connect");
                continue;
            }
            tasks.spawn(poll_loop(destination.clone(), shared.clone(), self.poll_interval, shutdown.clone()));
        }
        tasks
    }
}

fn label(name: &SenderName) -> FitConnectLabel {
    FitConnectLabel { destination: name.to_string() }
}

/// Reads a destination's keys and builds its API client.
fn ready(
    settings: &FitConnectSettings,
    config: &DestinationConfig,
    context: &Context,
    max_content_bytes: usize,
    common: Arc<Common>,
) -> Result<Ready, String> {
    let region = Region::parse(&config.region).map_err(|e| format!("region: {}", e.0))?;
    let jwk = |what: &str, secret: &amtsbote_connector::SecretRef| -> Result<Jwk, String> {
        let text = context.secret(secret).map_err(|e| format!("{what}: {e}"))?;
        // The parse error could quote the key: say only what it is not.
        serde_json::from_str(text.expose()).map_err(|_| format!("{what}: not a JSON Web Key"))
    };
    if config.decryption_keys.is_empty() {
        return Err("decryption_keys: at least one key is needed".into());
    }
    let mut decryption = Vec::new();
    for (index, secret) in config.decryption_keys.iter().enumerate() {
        let what = format!("decryption_keys[{index}]");
        let key = DecryptionKey::from_jwk(&jwk(&what, secret)?).map_err(|e| format!("{what}: {e}"))?;
        if key.kid().is_none() {
            return Err(format!("{what}: the key has no kid; senders name the key they encrypted for by it"));
        }
        if key.bits() < MIN_KEY_BITS {
            return Err(format!("{what}: {} bits; FIT-Connect requires {MIN_KEY_BITS}", key.bits()));
        }
        decryption.push(key);
    }
    let signing = SigningKey::from_jwk(&jwk("signing_key", &config.signing_key)?).map_err(|e| format!("signing_key: {e}"))?;
    if signing.bits() < MIN_KEY_BITS {
        return Err(format!("signing_key: {} bits; FIT-Connect requires {MIN_KEY_BITS}", signing.bits()));
    }
    let callback_secret = match &config.callback_secret {
        Some(secret) => Some(context.secret(secret).map_err(|e| format!("callback_secret: {e}"))?),
        None => None,
    };
    let api = SubmissionApi::new(
        Endpoint {
            submission_api: &settings.submission_api,
            token_url: &settings.token_url,
            client_id: &config.client_id,
            client_secret: &config.client_secret,
            tls: &settings.tls,
            timeout: settings.timeout,
            max_content_bytes,
        },
        context,
    )?;
    Ok(Ready {
        common,
        region,
        api,
        decryption,
        signing,
        callback_secret,
        service_keys: tokio::sync::Mutex::new(Vec::new()),
        keys_checked: Mutex::new(None),
        set_schema: Mutex::new(None),
    })
}

/// Why a poll stopped before it went through the list.
#[derive(Debug, thiserror::Error)]
enum Pause {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("ledger: {0}")]
    Ledger(#[from] StoreError),
    #[error("admission: {0}")]
    Admission(NotAdmitted),
    #[error("keys: {0}")]
    Keys(String),
    /// Trouble with one submission only.
    #[error("{0}")]
    Skip(String),
}

/// What became of a waiting submission.
enum Handled {
    /// Decided (now or before), or gone from FIT-Connect.
    Decided,
    /// Left waiting at FIT-Connect for want of a route: amtsbote's to fix.
    Unrouted,
}

impl Pause {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Pause::Api(ApiError::Transient { retry_after, .. }) => *retry_after,
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Pause::Api(e) => e.kind(),
            Pause::Ledger(_) => "ledger",
            Pause::Admission(_) => "admission",
            Pause::Keys(_) => "keys",
            Pause::Skip(_) => "skipped",
        }
    }

    /// Whether every submission of the destination would meet it (the
    /// service, the ledger, the broker, the keys are away or wrong), so the
    /// round stops; else only this submission is left for later.
    fn stops_the_round(&self) -> bool {
        match self {
            Pause::Api(e) => matches!(e, ApiError::Transient { .. } | ApiError::Unauthorized(_)),
            Pause::Ledger(_) | Pause::Keys(_) => true,
            Pause::Admission(not_admitted) => !matches!(not_admitted, NotAdmitted::KeyReused | NotAdmitted::Unroutable),
            Pause::Skip(_) => false,
        }
    }
}

async fn poll_loop(destination: Arc<Destination>, shared: Arc<Shared>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut backoff: Option<Box<dyn Iterator<Item = Duration> + Send>> = None;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = destination.wake.notified() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        match destination.poll(&shared, &shutdown).await {
            Ok(()) => {
                backoff = None;
                wait = interval;
            }
            Err((pause, progress)) => {
                // Pauses grow only while nothing moves: a fault now and
                // then among many submissions costs a short pause each.
                if progress {
                    backoff = None;
                }
                let pause_for = backoff.get_or_insert_with(|| Box::new(crate::broker::reconnect_backoff())).next().unwrap_or(interval);
                wait = pause.retry_after().map_or(pause_for, |after| after.max(Duration::from_secs(1)));
                shared.metrics.fit_connect_errors.get_or_create(&FitConnectErrorLabels {
                    destination: destination.name.to_string(),
                    kind: pause.kind().to_owned(),
                }).inc();
                tracing::warn!(event = "fit_connect_poll_paused", destination = %destination.name, error = %pause,
                    retry_in_ms = wait.as_millis() as u64, "FIT-Connect poll paused; trying again later");
                let mut health = destination.health.lock().expect("health lock");
                health.up = false;
                health.problem = Some(pause.to_string());
                shared.metrics.fit_connect_up.get_or_create(&label(&destination.name)).set(0);
            }
        }
    }
}

impl Destination {
    fn ready(&self) -> &Ready {
        self.ready.as_ref().expect("only usable destinations are polled")
    }

    /// Lists what waits and handles it, one submission after another.
    async fn poll(&self, shared: &Shared, shutdown: &watch::Receiver<bool>) -> Result<(), (Pause, bool)> {
        let mut progress = false;
        self.poll_round(shared, shutdown, &mut progress).await.map_err(|pause| (pause, progress))
    }

    /// `progress`: whether a submission was handled before a pause.
    async fn poll_round(&self, shared: &Shared, shutdown: &watch::Receiver<bool>, progress: &mut bool) -> Result<(), Pause> {
        let ready = self.ready();
        self.keys_checked_if_due().await?;
        let waiting = ready.api.waiting(self.id).await?;
        let now = time::OffsetDateTime::now_utc();
        {
            let still_waiting: std::collections::HashSet<Uuid> = waiting.iter().map(|w| w.submission_id).collect();
            let mut first_seen = self.first_seen.lock().expect("first-seen lock");
            first_seen.retain(|id, _| still_waiting.contains(id));
            for w in &waiting {
                first_seen.entry(w.submission_id).or_insert(now);
            }
            self.unrouted.lock().expect("unrouted lock").retain(|id, _| still_waiting.contains(id));
        }
        {
            let mut health = self.health.lock().expect("health lock");
            health.up = true;
            health.problem = None;
            health.last_success = Some(crate::domain::timestamp(now));
            health.waiting = waiting.len();
        }
        let metric = label(&self.name);
        shared.metrics.fit_connect_up.get_or_create(&metric).set(1);
        shared.metrics.fit_connect_last_poll.get_or_create(&metric).set(now.unix_timestamp() as f64);
        self.record_oldest(shared);
        for submission in &waiting {
            if *shutdown.borrow() {
                break;
            }
            if submission.destination_id != self.id {
                continue;
            }
            // A refused decision may have found our keys out of date.
            self.keys_checked_if_due().await?;
            match self.handle(shared, submission).await {
                Ok(Handled::Decided) => {
                    self.first_seen.lock().expect("first-seen lock").remove(&submission.submission_id);
                    self.unrouted.lock().expect("unrouted lock").remove(&submission.submission_id);
                    *progress = true;
                }
                Ok(Handled::Unrouted) => {}
                Err(pause) if pause.stops_the_round() => return Err(pause),
                // This submission's own trouble: the others go on, it is
                // tried again next round and ages towards the alert.
                Err(trouble) => {
                    tracing::warn!(event = "fit_connect_submission_skipped", destination = %self.name,
                        fit_connect_submission = %submission.submission_id, error = %trouble, "a FIT-Connect submission is left for the next round");
                    self.count_error(shared, trouble.kind());
                }
            }
        }
        self.record_oldest(shared);
        Ok(())
    }

    /// The age of the oldest waiting submission, and how many wait for
    /// want of a route.
    fn record_oldest(&self, shared: &Shared) {
        let oldest = self.first_seen.lock().expect("first-seen lock").values().min().copied();
        let age = oldest.map(|at| (time::OffsetDateTime::now_utc() - at).whole_seconds().max(0) as u64);
        let unrouted = self.unrouted.lock().expect("unrouted lock").len();
        {
            let mut health = self.health.lock().expect("health lock");
            health.oldest_waiting_seconds = age;
            health.unrouted = unrouted;
        }
        let metric = label(&self.name);
        shared.metrics.fit_connect_oldest_waiting_age.get_or_create(&metric).set(age.unwrap_or(0) as f64);
        shared.metrics.fit_connect_unrouted.get_or_create(&metric).set(unrouted as i64);
    }

    /// Compares our keys with FIT-Connect's if that is due: at first, every
    /// [`KEYS_RECHECKED_EVERY`], and after a hint that they changed.
    async fn keys_checked_if_due(&self) -> Result<(), Pause> {
        let ready = self.ready();
        let checked = *ready.keys_checked.lock().expect("keys-checked lock");
        if checked.is_none_or(|at| at.elapsed() >= KEYS_RECHECKED_EVERY) {
            self.check_keys().await?;
            *ready.keys_checked.lock().expect("keys-checked lock") = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// Whether our keys are the halves of those FIT-Connect has registered
    /// for the destination: with a wrong decryption key every submission
    /// would be rejected as undecryptable, with a wrong signing key every
    /// decision refused. Either way the destination stays down, deciding
    /// nothing, until the configuration is fixed.
    async fn check_keys(&self) -> Result<(), Pause> {
        let ready = self.ready();
        let mut registered_any = false;
        for key in &ready.decryption {
            let kid = key.kid().expect("checked at start");
            match ready.api.destination_key(self.id, kid).await? {
                Some(public) if !key.matches(&public) => return Err(Pause::Keys(format!("decryption key {kid}: FIT-Connect has another key under this kid"))),
                Some(_) => registered_any = true,
                // Retired at FIT-Connect, kept for what still waits.
                None => {}
            }
        }
        if !registered_any {
            return Err(Pause::Keys("none of the decryption keys is registered at FIT-Connect for the destination".into()));
        }
        let kid = ready.signing.kid();
        match ready.api.destination_key(self.id, kid).await? {
            Some(public) if ready.signing.matches(&public) => Ok(()),
            Some(_) => Err(Pause::Keys(format!("signing key {kid}: FIT-Connect has another key under this kid"))),
            None => Err(Pause::Keys(format!("signing key {kid}: not registered at FIT-Connect for the destination"))),
        }
    }

    /// One waiting submission: the decision recorded before, the
    /// acceptance of what was admitted before, or a new decision.
    async fn handle(&self, shared: &Shared, waiting: &Waiting) -> Result<Handled, Pause> {
        if let Some(recorded) = shared.store.fit_connect_decision(waiting.submission_id).await? {
            if recorded.sent_at.is_none() {
                self.send(shared, &recorded).await?;
            }
            return Ok(Handled::Decided);
        }
        // Admitted before a crash (or by another amtsbote), and not yet
        // decided: only accepted, whatever the configuration says now.
        if let Some((id, fingerprint)) = shared.store.accepted_under_key(&idempotency_key(waiting.submission_id)).await? {
            return self.accept_admitted(shared, waiting, id, fingerprint).await;
        }
        // Found without a route before, and the configuration is the same:
        // not fetched and checked again. (Asked after the ledger, where
        // another amtsbote may have decided it.)
        let pipeline = shared.pipeline.load_full();
        let had_no_route = self.unrouted.lock().expect("unrouted lock").get(&waiting.submission_id).cloned();
        if had_no_route.is_some_and(|had_no_route| std::ptr::eq(had_no_route.as_ptr(), Arc::as_ptr(&pipeline))) {
            return Ok(Handled::Unrouted);
        }
        let ready = self.ready();
        let fetched = match ready.api.submission(waiting.submission_id).await {
            Ok(fetched) => fetched,
            // Decided meanwhile (by another amtsbote of the destination).
            Err(ApiError::Refused { status: 404, .. }) => return Ok(Handled::Decided),
            Err(ApiError::TooLarge(limit)) => {
                let problem = Problem::new(Kind::TechnicalError, Part::Data, format!("the submission is larger than this receiver takes ({limit} bytes)"));
                return self.reject_about(shared, waiting.submission_id, waiting.case_id, problem).await;
            }
            Err(e) => return Err(e.into()),
        };
        shared.metrics.fit_connect_fetched.get_or_create(&label(&self.name)).inc();
        if fetched.submission_id != waiting.submission_id || fetched.destination_id != self.id {
            return Err(ApiError::Malformed("a submission other than the one asked for").into());
        }
        // Bounded before anything is fetched: the sender decides how much
        // comes, amtsbote how much it holds.
        if fetched.attachments.len() > shared.limits.attachments {
            let detail = format!("the submission has {} attachments; this receiver takes at most {}", fetched.attachments.len(), shared.limits.attachments);
            return self.reject(shared, &fetched, Problem::new(Kind::TechnicalError, Part::Submission, detail)).await;
        }
        let mut held = fetched.encrypted_metadata.len() + fetched.encrypted_data.as_ref().map_or(0, String::len);
        let mut attachments = Vec::with_capacity(fetched.attachments.len());
        for &attachment in &fetched.attachments {
            match ready.api.attachment(fetched.submission_id, attachment).await {
                Ok(jwe) => {
                    held += jwe.len();
                    if held > shared.max_jwe_bytes {
                        let detail = format!("the submission is larger than this receiver takes ({} bytes encrypted)", shared.max_jwe_bytes);
                        return self.reject(shared, &fetched, Problem::new(Kind::TechnicalError, Part::Attachment(attachment), detail)).await;
                    }
                    attachments.push((attachment, jwe));
                }
                // Announced but not there: the checks name it.
                Err(ApiError::Refused { status: 404, .. }) => {}
                Err(ApiError::TooLarge(limit)) => {
                    let detail = format!("the attachment is larger than this receiver takes ({limit} bytes encrypted)");
                    return self.reject(shared, &fetched, Problem::new(Kind::TechnicalError, Part::Attachment(attachment), detail)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Encrypted for a key FIT-Connect has registered but amtsbote lacks
        // (a rollover in the portal ahead of the configuration): ours to
        // fix, never a rejection.
        for kid in verify::unknown_kids(&fetched, &attachments, &ready.decryption) {
            if ready.api.destination_key(self.id, &kid).await?.is_some() {
                *ready.keys_checked.lock().expect("keys-checked lock") = None;
                return Err(Pause::Keys(format!("submissions are encrypted for key {kid}, registered at FIT-Connect, which decryption_keys lacks")));
            }
        }
        let event_log = ready.api.events(fetched.case_id).await?;
        let service_keys = self.service_keys(verify::submit_event_kid(fetched.submission_id, &event_log)).await?;
        let keys = Keys { decryption: &ready.decryption, service: &service_keys };
        let limits = verify::Limits { metadata_bytes: MAX_METADATA_BYTES, content_bytes: shared.limits.attachment_bytes };
        let verified = match verify::verify(&fetched, &attachments, &event_log, &keys, &limits, |metadata| ready.common.metadata_schemas.check(metadata)) {
            Ok(verified) => verified,
            Err(problem) => return self.reject(shared, &fetched, problem).await,
        };
        drop(attachments);
        self.learn(&verified.set_schema, verified.submitted_at, fetched.submission_id);
        match self.admit(shared, &pipeline, &fetched, &verified).await {
            Ok(id) => {
                let payload = serde_json::to_string(&Acceptance { authentication_tags: &verified.tags }).expect("tags serialize");
                self.decide(shared, &fetched, Some(id), Verdict::Accept, payload).await
            }
            Err(Admit::Reject(problem)) => self.reject(shared, &fetched, problem).await,
            Err(Admit::Later(not_admitted)) => match not_admitted {
                // Ours to fix, not the sender's: the submission waits at
                // FIT-Connect (the oldest-waiting alert fires), the others
                // go on, and it is looked at again after a reload.
                NotAdmitted::NoRoute { service, region } => {
                    tracing::error!(event = "fit_connect_no_route", destination = %self.name, fit_connect_submission = %fetched.submission_id,
                        service = %service, region = %region,
                        "no route for a FIT-Connect submission; it waits at FIT-Connect until one is configured and the configuration reloaded");
                    self.count_error(shared, "no_route");
                    self.unrouted.lock().expect("unrouted lock").insert(fetched.submission_id, Arc::downgrade(&pipeline));
                    Ok(Handled::Unrouted)
                }
                other => Err(Pause::Admission(other)),
            },
        }
    }

    /// A submission admitted before: accepted with the tags of the signed
    /// event, if they are those it was admitted with (the idempotency key's
    /// fingerprint).
    async fn accept_admitted(&self, shared: &Shared, waiting: &Waiting, id: Uuid, fingerprint: [u8; 32]) -> Result<Handled, Pause> {
        let ready = self.ready();
        let event_log = ready.api.events(waiting.case_id).await?;
        let service_keys = self.service_keys(verify::submit_event_kid(waiting.submission_id, &event_log)).await?;
        match verify::signed_submission(waiting.submission_id, waiting.case_id, &event_log, &service_keys) {
            Ok(signed) if content_fingerprint(&signed.tags) == fingerprint => {
                tracing::info!(event = "fit_connect_admitted_before", destination = %self.name, fit_connect_submission = %waiting.submission_id,
                    submission = %id, "a FIT-Connect submission admitted before is accepted");
                self.learn(&signed.set_schema, signed.submitted_at, waiting.submission_id);
                let payload = serde_json::to_string(&Acceptance { authentication_tags: &signed.tags }).expect("tags serialize");
                self.decide_about(shared, waiting.submission_id, waiting.case_id, Some(id), Verdict::Accept, payload).await
            }
            _ => Err(Pause::Skip("admitted before, but the event log no longer names what was admitted: left for an operator".into())),
        }
    }

    /// What a verified event tells beyond its submission: the SET payload
    /// schema to answer in, and when the submission was submitted (for
    /// the age of what waits).
    fn learn(&self, set_schema: &Option<String>, submitted_at: Option<i64>, submission: Uuid) {
        let ready = self.ready();
        if let Some(schema) = set_schema.as_ref().filter(|s| decision::is_set_payload_schema(s)) {
            *ready.set_schema.lock().expect("set-schema lock") = Some(schema.clone());
        }
        if let Some(at) = submitted_at.and_then(|at| time::OffsetDateTime::from_unix_timestamp(at).ok())
            && let Some(seen) = self.first_seen.lock().expect("first-seen lock").get_mut(&submission)
        {
            *seen = (*seen).min(at);
        }
    }

    fn count_error(&self, shared: &Shared, kind: &str) {
        shared.metrics.fit_connect_errors.get_or_create(&FitConnectErrorLabels { destination: self.name.to_string(), kind: kind.to_owned() }).inc();
    }

    /// The delivery service's keys: the cached set, fetched again when the
    /// event to check names a key not in it.
    async fn service_keys(&self, kid: Option<String>) -> Result<Vec<VerifyingKey>, ApiError> {
        let ready = self.ready();
        let mut cached = ready.service_keys.lock().await;
        let known = |keys: &[VerifyingKey]| kid.as_deref().is_none_or(|kid| keys.iter().any(|k| k.kid() == Some(kid)));
        if cached.is_empty() || !known(&cached) {
            let set = ready.api.service_keys().await?;
            *cached = set
                .keys
                .iter()
                .filter_map(|jwk| VerifyingKey::from_jwk(jwk).ok())
                .filter(|key| key.bits() >= MIN_KEY_BITS)
                .collect();
        }
        Ok(cached.clone())
    }

    async fn admit(&self, shared: &Shared, pipeline: &Pipeline, fetched: &Fetched, verified: &Verified) -> Result<Uuid, Admit> {
        let ready = self.ready();
        let body = Bytes::from(envelope(verified, &ready.region)?);
        let mut submission = Submission::parse(&body, &shared.limits).map_err(|e| Admit::Reject(problem_of(e, verified)))?;
        submission.fit_connect = Some(origin(fetched, verified));
        let idempotency = IdempotencyKey { key: idempotency_key(fetched.submission_id), fingerprint: content_fingerprint(&verified.tags) };
        let incoming = Incoming {
            submission,
            body: &body,
            body_sha256: Sha256::digest(&body).into(),
            sender: &self.name,
            idempotency: Some(idempotency),
        };
        shared.admissions.admit(pipeline, incoming).await.map_err(|e| match e {
            NotAdmitted::InvalidFormData(fields) => Admit::Reject(Problem::new(
                Kind::SchemaViolation,
                Part::Data,
                format!(
                    "the data does not match the submission schema: {}",
                    fields.iter().map(|f| format!("{} {}", f.pointer, f.detail)).collect::<Vec<_>>().join("; ")
                ),
            )),
            NotAdmitted::TooLarge => Admit::Reject(Problem::new(Kind::TechnicalError, Part::Data, "the data is larger than this receiver takes")),
            other => Admit::Later(other),
        })
    }

    async fn reject(&self, shared: &Shared, fetched: &Fetched, problem: Problem) -> Result<Handled, Pause> {
        self.reject_about(shared, fetched.submission_id, fetched.case_id, problem).await
    }

    async fn reject_about(&self, shared: &Shared, fit_submission: Uuid, case: Uuid, problem: Problem) -> Result<Handled, Pause> {
        tracing::warn!(event = "fit_connect_rejecting", destination = %self.name, fit_connect_submission = %fit_submission,
            problem = problem.kind.slug(), instance = %problem.part.instance(), detail = %problem.detail, "rejecting a FIT-Connect submission");
        self.decide_about(shared, fit_submission, case, None, Verdict::Reject, rejection(&problem)).await
    }

    /// Records the decision (or finds the one recorded before) and sends it.
    async fn decide(&self, shared: &Shared, fetched: &Fetched, id: Option<Uuid>, verdict: Verdict, payload: String) -> Result<Handled, Pause> {
        self.decide_about(shared, fetched.submission_id, fetched.case_id, id, verdict, payload).await
    }

    async fn decide_about(
        &self,
        shared: &Shared,
        fit_submission: Uuid,
        case: Uuid,
        id: Option<Uuid>,
        verdict: Verdict,
        payload: String,
    ) -> Result<Handled, Pause> {
        let decision = FitConnectDecision {
            fit_submission,
            case_id: case,
            destination: self.id,
            submission: id,
            verdict,
            payload,
            decided_at: String::new(),
            sent_at: None,
        };
        let recorded = shared.store.decide_fit_connect(decision).await?;
        if recorded.sent_at.is_none() {
            self.send(shared, &recorded).await?;
        }
        Ok(Handled::Decided)
    }

    /// FIT-Connect answered a decision with `409`: ours, sent before with
    /// its answer lost, or another one (FIT-Connect's own after 14 days,
    /// another receiving system's), which an operator must hear of.
    async fn known_decision(&self, shared: &Shared, decision: &FitConnectDecision) {
        let ours = match decision.verdict {
            Verdict::Accept => decision::ACCEPT_SUBMISSION,
            Verdict::Reject => decision::REJECT_SUBMISSION,
        };
        let subject = format!("submission:{}", decision.fit_submission);
        let events = self.ready().api.events(decision.case_id).await.unwrap_or_default();
        let decided: Vec<String> = events
            .iter()
            .filter_map(|compact| serde_json::from_slice::<serde_json::Value>(crate::jose::Jws::parse(compact).ok()?.payload()).ok())
            .filter(|claims| claims["sub"] == subject.as_str())
            .filter_map(|claims| claims["events"].as_object()?.keys().find(|e| e.ends_with("-submission") && !e.ends_with("/submit-submission")).cloned())
            .collect();
        if decided.is_empty() || decided.iter().any(|event| event == ours) {
            tracing::info!(event = "fit_connect_decision_known", destination = %self.name, fit_connect_submission = %decision.fit_submission,
                "FIT-Connect has this decision already (a lost answer); counted as sent");
        } else {
            tracing::error!(event = "fit_connect_decided_otherwise", destination = %self.name, fit_connect_submission = %decision.fit_submission,
                submission = ?decision.submission, ours = ours, theirs = ?decided,
                "FIT-Connect holds another decision for the submission than amtsbote's");
            self.count_error(shared, "decided_otherwise");
        }
    }

    async fn send(&self, shared: &Shared, decision: &FitConnectDecision) -> Result<(), Pause> {
        let ready = self.ready();
        let schema = ready.set_schema.lock().expect("set-schema lock").clone().unwrap_or_else(|| decision::SET_PAYLOAD_SCHEMA.to_owned());
        let event = decision::event(&schema, &ready.signing, self.id, decision.fit_submission, decision.case_id, decision.verdict, &decision.payload)
            .map_err(|e| Pause::Api(ApiError::Malformed(if matches!(e, crate::jose::JoseError::Malformed(_)) { "a recorded decision" } else { "a signature" })))?;
        match ready.api.decide(decision.case_id, &event).await {
            Ok(()) => {}
            Err(ApiError::AlreadyDecided) => self.known_decision(shared, decision).await,
            Err(e) => {
                // Perhaps our signing key is no longer the one registered
                // (replaced or withdrawn in the portal): checked before
                // the next round decides anything.
                if matches!(e, ApiError::Refused { status: 400 | 403 | 422, .. }) {
                    *ready.keys_checked.lock().expect("keys-checked lock") = None;
                }
                return Err(e.into());
            }
        }
        shared.store.fit_connect_decision_sent(decision.fit_submission).await?;
        let metric = label(&self.name);
        let mut health = self.health.lock().expect("health lock");
        match decision.verdict {
            Verdict::Accept => {
                health.accepted += 1;
                shared.metrics.fit_connect_accepted.get_or_create(&metric).inc();
                tracing::info!(event = "fit_connect_accepted", destination = %self.name, fit_connect_submission = %decision.fit_submission,
                    submission = ?decision.submission, "FIT-Connect submission accepted");
            }
            Verdict::Reject => {
                health.rejected += 1;
                let problem = serde_json::from_str::<serde_json::Value>(&decision.payload)
                    .ok()
                    .and_then(|p| p.pointer("/problems/0/type")?.as_str()?.rsplit('/').next().map(str::to_owned))
                    .unwrap_or_else(|| "unknown".into());
                shared.metrics.fit_connect_rejected.get_or_create(&FitConnectRejectionLabels { destination: self.name.to_string(), problem }).inc();
                tracing::info!(event = "fit_connect_rejected", destination = %self.name, fit_connect_submission = %decision.fit_submission,
                    "FIT-Connect submission rejected");
            }
        }
        Ok(())
    }
}

/// The idempotency key of a FIT-Connect submission. HTTP intake's keys are
/// `<sender>:<key>`, and no sender's name holds a `#`: the two never meet.
fn idempotency_key(fit_submission: Uuid) -> String {
    format!("#fit-connect:{fit_submission}")
}

/// What identifies a FIT-Connect submission's content, stable across
/// attempts: its authentication tags.
fn content_fingerprint(tags: &AuthenticationTags) -> [u8; 32] {
    Sha256::digest(serde_json::to_vec(tags).expect("tags serialize")).into()
}

/// What a rejection's event carries, as the ledger records it.
fn rejection(problem: &Problem) -> String {
    serde_json::to_string(&Rejection { problems: std::slice::from_ref(problem) }).expect("problems serialize")
}

/// Why a verified submission was not admitted.
enum Admit {
    /// Its content cannot be taken: reject it.
    Reject(Problem),
    /// Not now (the broker, the ledger, a missing route): it waits.
    Later(NotAdmitted),
}

impl From<Problem> for Admit {
    fn from(problem: Problem) -> Self {
        Admit::Reject(problem)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    service: &'a str,
    region: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    submitted_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_xml: Option<&'a str>,
    attachments: Vec<AttachmentOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentOut<'a> {
    name: String,
    media_type: &'a str,
    purpose: &'static str,
    content: String,
}

/// The verified submission as HTTP intake would have received it, so that
/// it takes the same checks and becomes the same message.
fn envelope(verified: &Verified, region: &Region) -> Result<Vec<u8>, Problem> {
    use base64::Engine as _;
    let (data, data_xml) = match &verified.data {
        None => (Some(empty_form()), None),
        Some(data) if data.xml => {
            let xml = std::str::from_utf8(&data.content).map_err(|_| Problem::new(Kind::SyntaxViolation, Part::Data, "the XML data is not UTF-8"))?;
            (None, Some(xml))
        }
        Some(data) => {
            let text = std::str::from_utf8(&data.content).map_err(|_| Problem::new(Kind::SyntaxViolation, Part::Data, "the JSON data is not UTF-8"))?;
            let raw: &RawValue = serde_json::from_str(text).map_err(|_| Problem::new(Kind::SyntaxViolation, Part::Data, "the data is not JSON"))?;
            if !raw.get().trim_start().starts_with('{') {
                return Err(Problem::new(Kind::SyntaxViolation, Part::Data, "the JSON data is not an object"));
            }
            (Some(raw), None)
        }
    };
    let reference = verified
        .metadata
        .pointer("/additionalReferenceInfo/senderReference")
        .and_then(|r| r.as_str())
        .filter(|r| !r.is_empty() && r.chars().count() <= 200 && !r.chars().any(char::is_control));
    let submitted_at = verified
        .submitted_at
        .and_then(|at| time::OffsetDateTime::from_unix_timestamp(at).ok())
        .map(crate::domain::timestamp);
    let attachments = verified
        .attachments
        .iter()
        .map(|a| AttachmentOut {
            name: a.filename.clone().filter(|name| crate::submission::is_safe_file_name(name)).unwrap_or_else(|| format!("anlage-{}", a.id)),
            media_type: a.media_type.as_deref().unwrap_or("application/octet-stream"),
            purpose: if a.purpose.as_deref() == Some("form") { "form" } else { "attachment" },
            content: base64::engine::general_purpose::STANDARD.encode(&a.content),
        })
        .collect();
    let envelope =
        Envelope { service: verified.service.as_str(), region: region.as_str(), reference, submitted_at, data, data_xml, attachments };
    Ok(serde_json::to_vec(&envelope).expect("an envelope serializes"))
}

/// A submission without data (only attachments) has an empty form.
fn empty_form() -> &'static RawValue {
    static EMPTY: std::sync::LazyLock<Box<RawValue>> = std::sync::LazyLock::new(|| RawValue::from_string("{}".into()).expect("JSON"));
    &EMPTY
}

/// What mappings see as `.fitConnect`.
fn origin(fetched: &Fetched, verified: &Verified) -> Box<RawValue> {
    let metadata = &verified.metadata;
    let origin = serde_json::json!({
        "submissionId": fetched.submission_id,
        "caseId": fetched.case_id,
        "destinationId": fetched.destination_id,
        "metadataSchema": metadata.get("$schema"),
        "publicService": fetched.public_service.as_ref().map(|s| serde_json::json!(s)).or_else(|| metadata.get("publicService").or_else(|| metadata.get("publicServiceType")).cloned()),
        "replyChannel": metadata.get("replyChannel"),
        "additionalReferenceInfo": metadata.get("additionalReferenceInfo"),
        "submissionSchema": verified.data.as_ref().and_then(|d| d.schema_uri.as_deref()),
    });
    RawValue::from_string(origin.to_string()).expect("JSON")
}

/// Intake's checks of the envelope, in FIT-Connect's terms.
fn problem_of(invalid: InvalidSubmission, verified: &Verified) -> Problem {
    let fields = match invalid {
        InvalidSubmission::Malformed(_) => return Problem::new(Kind::TechnicalError, Part::Submission, "the submission could not be read"),
        InvalidSubmission::Fields(fields) => fields,
    };
    let Some(first) = fields.first() else {
        return Problem::new(Kind::TechnicalError, Part::Submission, "the submission could not be read");
    };
    if first.pointer.starts_with("#/data") {
        return Problem::new(Kind::SyntaxViolation, Part::Data, first.detail.clone());
    }
    if let Some(rest) = first.pointer.strip_prefix("#/attachments/")
        && let Some(attachment) = rest.split('/').next().and_then(|i| i.parse::<usize>().ok()).and_then(|i| verified.attachments.get(i))
    {
        return Problem::new(Kind::TechnicalError, Part::Attachment(attachment.id), first.detail.clone());
    }
    Problem::new(Kind::TechnicalError, Part::Submission, format!("{} {}", first.pointer, first.detail))
}
