//! A FIT-Connect delivery service on loopback, for amtsbote's demo and
//! tests (FITKO publishes no mock): the OAuth 2.0 token endpoint, the
//! Submission API v2 endpoints a receiving system uses, each case's event
//! log with the service's signed `submit-submission` events, the
//! service's JWKS, and callbacks. It plays the sender too: [`Double::submit`]
//! encrypts a submission for the destination's public key as an online
//! service would.
//!
//! It checks a decision as the real service does — signature with the
//! destination's registered key, header, claims, authentication tags,
//! state (a second decision is refused with 409) — and injects faults:
//! tampered content, unknown keys, wrong hashes, missing attachments,
//! content swapped against the signed tags, 503s, 429s, expiring tokens,
//! a decision taken but its answer lost.
//!
//! Its JOSE is written here on aws-lc-rs, apart from amtsbote's
//! (`src/jose`): the two meet only on the wire, as a real sender and
//! receiver do.

mod jose;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};
use uuid::Uuid;

const EVENTS: &str = "https://schema.fitko.de/fit-connect/events/";
const PROBLEMS: &str = "https://schema.fitko.de/fit-connect/submission-api/problems/";

/// A destination as registered in the self-service portal.
#[derive(Debug, Clone)]
pub struct Destination {
    pub id: Uuid,
    pub client_id: String,
    pub client_secret: String,
    /// The public encryption key (JWK with `kid`, `n`, `e`).
    pub encryption_key: Value,
    /// The public signature key (JWK with `kid`, `n`, `e`).
    pub signing_key: Value,
    /// Where to send callbacks, and the secret to sign them with.
    pub callback: Option<(String, String)>,
}

/// A submission as an online service hands it in.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `urn:de:fim:leika:leistung:<key>`.
    pub service: String,
    /// The form data and its media type (`application/json` or
    /// `application/xml`); `None` for attachments only.
    pub data: Option<(Vec<u8>, &'static str)>,
    pub attachments: Vec<OutgoingAttachment>,
    pub reply_email: Option<String>,
    pub sender_reference: Option<String>,
    pub tamper: Tamper,
    /// The data goes as an attachment of purpose `data` (metadata 2.x,
    /// for data too large for the submission).
    pub data_as_attachment: bool,
    /// With `data_as_attachment`: as FITKO specified it, `encryptedData`
    /// is the empty string and the data entry's hash that of no bytes
    /// (without: no `encryptedData`, the data's own hash).
    pub data_placeholder: bool,
}

#[derive(Debug, Clone)]
pub struct OutgoingAttachment {
    pub filename: String,
    pub media_type: String,
    /// `form`, `attachment`, `report` (or `data`).
    pub purpose: &'static str,
    pub content: Vec<u8>,
    /// Sent in this many fragments (metadata 2.x), each a JWE of its own;
    /// 0 or 1: whole.
    pub fragments: usize,
}

/// What goes wrong with a submission, on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tamper {
    #[default]
    None,
    /// The data's ciphertext is changed after encryption.
    Ciphertext,
    /// The data is encrypted for a key the destination does not have.
    UnknownKid,
    /// The metadata announces another SHA-512 for the data.
    HashMismatch,
    /// The first attachment is announced but never uploaded.
    MissingAttachment,
    /// The metadata violates FIT-Connect's metadata schema (no
    /// `contentStructure`).
    MetadataSchema,
    /// The data is replaced by other data encrypted for the destination
    /// after the signed event named the first one's tag.
    SwappedData,
    /// The metadata (1.x style) names another service than the submission.
    ServiceMismatch,
}

impl Outgoing {
    /// A Gewerbeanmeldung (LeiKa 99050012104000) with JSON data.
    pub fn json(service: &str, data: Value) -> Self {
        Self {
            service: format!("urn:de:fim:leika:leistung:{service}"),
            data: Some((serde_json::to_vec(&data).expect("JSON"), "application/json")),
            attachments: Vec::new(),
            reply_email: None,
            sender_reference: None,
            tamper: Tamper::None,
            data_as_attachment: false,
            data_placeholder: false,
        }
    }

    pub fn attach(mut self, filename: &str, media_type: &str, content: Vec<u8>) -> Self {
        self.attachments.push(OutgoingAttachment { filename: filename.into(), media_type: media_type.into(), purpose: "attachment", content, fragments: 0 });
        self
    }

    pub fn tampered(mut self, tamper: Tamper) -> Self {
        self.tamper = tamper;
        self
    }
}

/// A submission's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub submission_id: Uuid,
    pub case_id: Uuid,
    pub destination_id: Uuid,
}

/// Where a submission stands.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmissionState {
    Submitted,
    Accepted,
    /// With the problems of the reject event.
    Rejected(Vec<Value>),
}

/// A decision that reached the service, taken or refused.
#[derive(Debug, Clone)]
pub struct DecisionSeen {
    pub submission_id: Option<Uuid>,
    pub status: StatusCode,
    /// Why it was refused, if it was.
    pub refusal: Option<String>,
}

/// Faults to inject; each counter counts down as it strikes.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every n-th request to the Submission API is answered 503.
    pub fail_every: Option<u32>,
    /// The next n requests are answered 429 with `Retry-After: 1`.
    pub throttle: u32,
    /// Tokens expire after this long (default one hour).
    pub token_lifetime: Option<Duration>,
    /// The next n decisions are taken, but answered 503 as if the answer
    /// was lost.
    pub lose_decision_answers: u32,
    /// Decisions wait unanswered (and untaken) until [`Double::release`]:
    /// a receiver can be killed while it waits.
    pub hold_decisions: bool,
}

struct Stored {
    destination: Uuid,
    service: String,
    case_id: Uuid,
    metadata: String,
    data: Option<String>,
    /// Announced attachment ids, and the JWEs uploaded.
    announced: Vec<Uuid>,
    uploaded: HashMap<Uuid, String>,
    tags: Value,
    state: SubmissionState,
}

#[derive(Default)]
struct Inner {
    /// Whom a held decision waits for.
    released: Arc<tokio::sync::Notify>,
    /// Decisions that arrived while held.
    held: u32,
    destinations: HashMap<Uuid, Destination>,
    submissions: BTreeMap<Uuid, Stored>,
    event_logs: HashMap<Uuid, Vec<String>>,
    tokens: HashMap<String, (Uuid, Instant)>,
    faults: Faults,
    requests: u32,
    decisions: Vec<DecisionSeen>,
    token_requests: u32,
    /// How often each submission was fetched.
    fetches: HashMap<Uuid, u32>,
}

/// The delivery service on loopback.
#[derive(Clone)]
pub struct Double {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    service_key: Arc<jose::SigningKey>,
}

impl Double {
    /// On a port of its own.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(([127, 0, 0, 1], 0).into()).await
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        // One RSA-4096 key per process: making one takes a second of CPU,
        // which many doubles in one test run would spend again and again.
        static SERVICE_KEY: std::sync::LazyLock<Arc<jose::SigningKey>> = std::sync::LazyLock::new(|| Arc::new(jose::SigningKey::generate()));
        let service_key = SERVICE_KEY.clone();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let double = Self { addr, inner, service_key };
        let app = Router::new()
            .route("/token", post(token))
            .route("/submission-api/.well-known/jwks.json", get(jwks))
            .route("/submission-api/v2/submissions", get(list))
            .route("/submission-api/v2/submissions/{id}", get(submission))
            .route("/submission-api/v2/submissions/{id}/attachments/{attachment}", get(attachment))
            .route("/submission-api/v2/cases/{case}/events", get(event_log).post(decide))
            .route("/submission-api/v2/destinations/{destination}/keys/{kid}", get(destination_key))
            .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
            .with_state(double.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(double)
    }

    pub fn submission_api(&self) -> String {
        format!("http://{}/submission-api", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn register(&self, destination: Destination) {
        self.lock().destinations.insert(destination.id, destination);
    }

    /// Where the destination's callbacks go (the receiver's URL is known
    /// once it runs).
    pub fn set_callback(&self, destination: Uuid, url: &str, secret: &str) {
        self.lock().destinations.get_mut(&destination).expect("a registered destination").callback = Some((url.into(), secret.into()));
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Puts a decided submission back to `submitted` (its decision event
    /// stays in the log), as if the decision had never reached the service.
    pub fn undecide(&self, submission: Uuid) {
        let mut inner = self.lock();
        let stored = inner.submissions.get_mut(&submission).expect("a submission");
        stored.state = SubmissionState::Submitted;
        let case = stored.case_id;
        let subject = format!("submission:{submission}");
        // Only the submit event stays: the decision never happened.
        if let Some(log) = inner.event_logs.get_mut(&case) {
            log.retain(|event| {
                jose::parse_jws(event).is_some_and(|(_, claims, _)| claims["sub"] != json!(subject) || claims["events"].get(format!("{EVENTS}submit-submission")).is_some())
            });
        }
    }

    /// Lets held decisions go on, and holds no more.
    pub fn release(&self) {
        let mut inner = self.lock();
        inner.faults.hold_decisions = false;
        inner.released.notify_waiters();
    }

    /// Decisions that arrived while decisions were held.
    pub fn held(&self) -> u32 {
        self.lock().held
    }

    pub fn state(&self, submission: Uuid) -> Option<SubmissionState> {
        self.lock().submissions.get(&submission).map(|s| s.state.clone())
    }

    pub fn decisions(&self) -> Vec<DecisionSeen> {
        self.lock().decisions.clone()
    }

    /// How often the submission was fetched (`GET /v2/submissions/{id}`).
    pub fn fetches(&self, submission: Uuid) -> u32 {
        self.lock().fetches.get(&submission).copied().unwrap_or(0)
    }

    /// How many tokens were handed out.
    pub fn token_requests(&self) -> u32 {
        self.lock().token_requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("double lock")
    }

    /// Hands in a submission for `destination`, encrypted for its key, with
    /// the service's signed `submit-submission` event in the case's log.
    pub fn submit(&self, destination: Uuid, outgoing: Outgoing) -> Submitted {
        let registered = self.lock().destinations.get(&destination).cloned().expect("a registered destination");
        let key = jose::EncryptionKey::from_jwk(&registered.encryption_key);
        let other_key = (outgoing.tamper == Tamper::UnknownKid).then(|| jose::EncryptionKey::with_unknown_kid(&registered.encryption_key));
        let (submission_id, case_id) = (Uuid::new_v4(), Uuid::new_v4());

        let mut attachments_meta = Vec::new();
        let mut uploaded = HashMap::new();
        let mut announced = Vec::new();
        let mut attachment_tags = serde_json::Map::new();
        let mut attachments = outgoing.attachments.clone();
        if outgoing.data_as_attachment {
            let (data, media_type) = outgoing.data.clone().expect("data to send as an attachment");
            attachments.push(OutgoingAttachment { filename: "fachdaten".into(), media_type: media_type.into(), purpose: "data", content: data, fragments: 0 });
        }
        for (index, attachment) in attachments.iter().enumerate() {
            let id = Uuid::new_v4();
            let mut entry = json!({
                "attachmentId": id,
                "hash": { "type": "sha512", "content": hex(&Sha512::digest(&attachment.content)) },
                "purpose": attachment.purpose,
                "filename": attachment.filename,
                "mimeType": attachment.media_type,
            });
            // Whole, or as fragments with ids of their own.
            let pieces: Vec<(Uuid, &[u8])> = if attachment.fragments > 1 {
                let size = attachment.content.len().div_ceil(attachment.fragments).max(1);
                let pieces: Vec<(Uuid, &[u8])> = attachment.content.chunks(size).map(|chunk| (Uuid::new_v4(), chunk)).collect();
                entry["fragments"] = json!(pieces.iter().map(|(id, _)| id).collect::<Vec<_>>());
                pieces
            } else {
                vec![(id, &attachment.content[..])]
            };
            for (piece, content) in pieces {
                announced.push(piece);
                let jwe = key.encrypt(content, &attachment.media_type);
                attachment_tags.insert(piece.to_string(), json!(jose::tag(&jwe)));
                if !(outgoing.tamper == Tamper::MissingAttachment && index == 0) {
                    uploaded.insert(piece, jwe);
                }
            }
            attachments_meta.push(entry);
        }
        let mut content_structure = json!({ "attachments": attachments_meta });
        let mut data_jwe = None;
        if let Some((data, media_type)) = &outgoing.data {
            let mut hash = hex(&Sha512::digest(data));
            if outgoing.data_as_attachment && outgoing.data_placeholder {
                hash = hex(&Sha512::digest(b""));
                data_jwe = Some(String::new());
            }
            if outgoing.tamper == Tamper::HashMismatch {
                hash = hex(&Sha512::digest(b"something else"));
            }
            content_structure["data"] = json!({
                "hash": { "type": "sha512", "content": hash },
                "submissionSchema": { "schemaUri": "https://schema.fitko.de/fim/s00000000_1.0.schema.json", "mimeType": media_type },
            });
            if !outgoing.data_as_attachment {
                let encrypted = match &other_key {
                    Some(other) => other.encrypt(data, media_type),
                    None => key.encrypt(data, media_type),
                };
                data_jwe = Some(encrypted);
            }
        }
        // Metadata 2.0.0: the service is the submission's (`publicService`
        // in the API), not the metadata's.
        let mut metadata = json!({
            "$schema": "https://schema.fitko.de/fit-connect/metadata/2.0.0/metadata.schema.json",
            "contentStructure": content_structure,
        });
        if let Some(email) = &outgoing.reply_email {
            metadata["replyChannel"] = json!({ "eMail": { "address": email } });
        }
        if let Some(reference) = &outgoing.sender_reference {
            metadata["additionalReferenceInfo"] = json!({ "senderReference": reference });
        }
        if outgoing.tamper == Tamper::ServiceMismatch {
            metadata["publicServiceType"] = json!({ "identifier": "urn:de:fim:leika:leistung:99000000000000", "name": "Andere Leistung" });
        }
        if outgoing.tamper == Tamper::MetadataSchema {
            metadata.as_object_mut().expect("an object").remove("contentStructure");
        }
        let metadata_jwe = key.encrypt(&serde_json::to_vec(&metadata).expect("JSON"), "application/json");
        let mut tags = json!({ "metadata": jose::tag(&metadata_jwe), "attachments": attachment_tags });
        if let Some(jwe) = data_jwe.as_ref().filter(|jwe| !jwe.is_empty()) {
            tags["data"] = json!(jose::tag(jwe));
        }
        if let Some(jwe) = &mut data_jwe {
            match outgoing.tamper {
                Tamper::Ciphertext => *jwe = jose::flip_ciphertext(jwe),
                Tamper::SwappedData => {
                    let (data, media_type) = outgoing.data.as_ref().expect("data to swap");
                    *jwe = key.encrypt(data, media_type);
                }
                _ => {}
            }
        }
        let submit = self.service_event(submission_id, case_id, "submit-submission", json!({ "authenticationTags": tags.clone() }));
        let mut inner = self.lock();
        inner.event_logs.entry(case_id).or_default().push(submit);
        inner.submissions.insert(
            submission_id,
            Stored { destination, service: outgoing.service.clone(), case_id, metadata: metadata_jwe, data: data_jwe, announced, uploaded, tags, state: SubmissionState::Submitted },
        );
        Submitted { submission_id, case_id, destination_id: destination }
    }

    fn service_event(&self, submission: Uuid, case: Uuid, event: &str, payload: Value) -> String {
        let claims = json!({
            "$schema": "https://schema.fitko.de/fit-connect/set-payload/1.2.2/set-payload.schema.json",
            "jti": Uuid::new_v4(),
            "iss": format!("http://{}/submission-api", self.addr),
            "iat": unix_now(),
            "sub": format!("submission:{submission}"),
            "txn": format!("case:{case}"),
            "events": { format!("{EVENTS}{event}"): payload },
        });
        self.service_key.sign(&claims)
    }

    /// Sends the destination a callback naming what waits for it; with
    /// `secret` and `timestamp` other than the registered, to test refusal.
    pub async fn notify(&self, destination: Uuid) -> reqwest::StatusCode {
        let (url, secret) = self.lock().destinations[&destination].callback.clone().expect("a callback");
        self.notify_with(destination, &url, &secret, unix_now()).await
    }

    pub async fn notify_with(&self, destination: Uuid, url: &str, secret: &str, timestamp: i64) -> reqwest::StatusCode {
        let waiting: Vec<Value> = {
            let inner = self.lock();
            inner
                .submissions
                .iter()
                .filter(|(_, s)| s.destination == destination && s.state == SubmissionState::Submitted)
                .map(|(id, s)| json!({ "destinationId": destination, "submissionId": id, "caseId": s.case_id }))
                .collect()
        };
        let body = json!({
            "type": "https://schema.fitko.de/fit-connect/submission-api/callbacks/new-submissions",
            "submissionIds": waiting.iter().map(|w| w["submissionId"].clone()).collect::<Vec<_>>(),
            "submissions": waiting,
        })
        .to_string();
        let authentication = jose::hmac_sha512_hex(secret.as_bytes(), format!("{timestamp}.{body}").as_bytes());
        reqwest::Client::new()
            .post(url)
            .header("callback-timestamp", timestamp.to_string())
            .header("callback-authentication", authentication)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map(|r| r.status())
            .unwrap_or(reqwest::StatusCode::BAD_GATEWAY)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() as i64
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn problem(status: StatusCode, name: &str, detail: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/problem+json")], json!({ "type": format!("{PROBLEMS}{name}"), "title": name, "detail": detail }).to_string())
        .into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
}

async fn token(State(double): State<Double>, Form(request): Form<TokenRequest>) -> Response {
    let mut inner = double.lock();
    inner.token_requests += 1;
    let destination = inner
        .destinations
        .values()
        .find(|d| Some(&d.client_id) == request.client_id.as_ref() && Some(&d.client_secret) == request.client_secret.as_ref())
        .map(|d| d.id);
    let (Some(destination), "client_credentials") = (destination, request.grant_type.as_str()) else {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({ "error": "invalid_client" }))).into_response();
    };
    let lifetime = inner.faults.token_lifetime.unwrap_or(Duration::from_secs(3600));
    let token = Uuid::new_v4().simple().to_string();
    inner.tokens.insert(token.clone(), (destination, Instant::now() + lifetime));
    axum::Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": lifetime.as_secs() })).into_response()
}

/// The destination the request's token belongs to, after the faults had
/// their turn.
#[allow(clippy::result_large_err, reason = "the refusal is the answer, as axum builds it")]
fn authorize(double: &Double, headers: &HeaderMap) -> Result<Uuid, Response> {
    let mut inner = double.lock();
    inner.requests += 1;
    if let Some(every) = inner.faults.fail_every
        && inner.requests.is_multiple_of(every) {
            return Err(problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "injected"));
        }
    if inner.faults.throttle > 0 {
        inner.faults.throttle -= 1;
        return Err((StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")], "slow down").into_response());
    }
    let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match token.and_then(|t| inner.tokens.get(t)) {
        Some((destination, until)) if Instant::now() < *until => Ok(*destination),
        _ => Err((StatusCode::UNAUTHORIZED, "token missing, unknown or expired").into_response()),
    }
}

/// A destination's registered public key, by `kid`.
async fn destination_key(State(double): State<Double>, headers: HeaderMap, Path((destination, kid)): Path<(Uuid, String)>) -> Response {
    if let Err(response) = authorize(&double, &headers) {
        return response;
    }
    let inner = double.lock();
    let key = inner
        .destinations
        .get(&destination)
        .and_then(|d| [&d.encryption_key, &d.signing_key].into_iter().find(|key| key["kid"] == kid.as_str()).cloned());
    match key {
        Some(key) => axum::Json(key).into_response(),
        None => problem(StatusCode::NOT_FOUND, "key-not-found", "no key of this kid"),
    }
}

async fn jwks(State(double): State<Double>) -> Response {
    axum::Json(json!({ "keys": [double.service_key.public_jwk()] })).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    destination_id: Uuid,
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

async fn list(State(double): State<Double>, headers: HeaderMap, Query(query): Query<ListQuery>) -> Response {
    let caller = match authorize(&double, &headers) {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    if caller != query.destination_id {
        return problem(StatusCode::FORBIDDEN, "forbidden", "not this client's destination");
    }
    if query.limit == 0 || query.limit > 500 {
        return problem(StatusCode::BAD_REQUEST, "invalid-request", "limit must be 1 to 500");
    }
    let inner = double.lock();
    let waiting: Vec<Value> = inner
        .submissions
        .iter()
        .filter(|(_, s)| s.destination == caller && s.state == SubmissionState::Submitted)
        .map(|(id, s)| json!({ "destinationId": s.destination, "submissionId": id, "caseId": s.case_id }))
        .collect();
    let page: Vec<Value> = waiting.iter().skip(query.offset).take(query.limit).cloned().collect();
    axum::Json(json!({ "count": page.len(), "offset": query.offset, "totalCount": waiting.len(), "submissions": page })).into_response()
}

async fn submission(State(double): State<Double>, headers: HeaderMap, Path(id): Path<Uuid>) -> Response {
    let caller = match authorize(&double, &headers) {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let mut inner = double.lock();
    *inner.fetches.entry(id).or_default() += 1;
    let Some(stored) = inner.submissions.get(&id).filter(|s| s.destination == caller && s.state == SubmissionState::Submitted) else {
        return problem(StatusCode::NOT_FOUND, "submission-not-found", "no such submission waits for this destination");
    };
    let mut body = json!({
        "submissionId": id,
        "caseId": stored.case_id,
        "destinationId": stored.destination,
        "encryptedMetadata": stored.metadata,
        "attachments": stored.announced,
        "publicService": { "identifier": stored.service, "name": "Leistung" },
    });
    if let Some(data) = &stored.data {
        body["encryptedData"] = json!(data);
    }
    axum::Json(body).into_response()
}

async fn attachment(State(double): State<Double>, headers: HeaderMap, Path((id, attachment)): Path<(Uuid, Uuid)>) -> Response {
    let caller = match authorize(&double, &headers) {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let inner = double.lock();
    match inner.submissions.get(&id).filter(|s| s.destination == caller).and_then(|s| s.uploaded.get(&attachment)) {
        Some(jwe) => ([(header::CONTENT_TYPE, "application/jose")], jwe.clone()).into_response(),
        None => problem(StatusCode::NOT_FOUND, "attachment-not-found", "no such attachment"),
    }
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
}

async fn event_log(State(double): State<Double>, headers: HeaderMap, Path(case): Path<Uuid>, Query(page): Query<Page>) -> Response {
    if let Err(response) = authorize(&double, &headers) {
        return response;
    }
    if page.limit == 0 || page.limit > 500 {
        return problem(StatusCode::BAD_REQUEST, "invalid-request", "limit must be 1 to 500");
    }
    let inner = double.lock();
    let log = inner.event_logs.get(&case).cloned().unwrap_or_default();
    let events: Vec<String> = log.iter().skip(page.offset).take(page.limit).cloned().collect();
    axum::Json(json!({ "count": events.len(), "offset": page.offset, "totalCount": log.len(), "eventLog": events })).into_response()
}

/// Takes a decision if it holds as the real service checks it.
async fn decide(State(double): State<Double>, headers: HeaderMap, Path(case): Path<Uuid>, body: Bytes) -> Response {
    let caller = match authorize(&double, &headers) {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    if headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) != Some("application/jose") {
        return problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "a decision is application/jose");
    }
    let released = {
        let mut inner = double.lock();
        let released = inner.released.clone();
        inner.faults.hold_decisions.then(|| {
            inner.held += 1;
            released
        })
    };
    if let Some(released) = released {
        // A receiver that dies meanwhile drops this request: nothing is taken.
        released.notified().await;
    }
    let mut inner = double.lock();
    let outcome = check_decision(&inner, caller, case, &body);
    let (submission, status, refusal) = match outcome {
        Ok((submission, state, compact)) => {
            let stored = inner.submissions.get_mut(&submission).expect("checked");
            if stored.state != SubmissionState::Submitted {
                (Some(submission), StatusCode::CONFLICT, Some("the submission has a decision already".to_owned()))
            } else {
                stored.state = state;
                inner.event_logs.entry(case).or_default().push(compact);
                if inner.faults.lose_decision_answers > 0 {
                    inner.faults.lose_decision_answers -= 1;
                    (Some(submission), StatusCode::SERVICE_UNAVAILABLE, None)
                } else {
                    (Some(submission), StatusCode::NO_CONTENT, None)
                }
            }
        }
        Err((submission, status, why)) => (submission, status, Some(why)),
    };
    inner.decisions.push(DecisionSeen { submission_id: submission, status, refusal: refusal.clone() });
    match (status, refusal) {
        (StatusCode::NO_CONTENT, _) => StatusCode::NO_CONTENT.into_response(),
        (StatusCode::SERVICE_UNAVAILABLE, None) => problem(status, "unavailable", "the answer was lost (injected)"),
        (StatusCode::CONFLICT, Some(why)) => problem(status, "submission-state-conflict", &why),
        (status, why) => problem(status, "invalid-event", why.as_deref().unwrap_or_default()),
    }
}

type Checked = (Uuid, SubmissionState, String);

fn check_decision(inner: &Inner, caller: Uuid, case: Uuid, body: &[u8]) -> Result<Checked, (Option<Uuid>, StatusCode, String)> {
    let invalid = |submission: Option<Uuid>, why: &str| (submission, StatusCode::UNPROCESSABLE_ENTITY, why.to_owned());
    let compact = std::str::from_utf8(body).map_err(|_| invalid(None, "not a compact JWS"))?.trim().to_owned();
    let (header, claims, verify) = jose::parse_jws(&compact).ok_or_else(|| invalid(None, "not a compact JWS"))?;
    let subject = claims["sub"].as_str().and_then(|s| s.strip_prefix("submission:")).and_then(|s| s.parse::<Uuid>().ok());
    let Some(submission) = subject else { return Err(invalid(None, "sub is not submission:<id>")) };
    let stored = inner.submissions.get(&submission).ok_or((None, StatusCode::NOT_FOUND, "no such submission".to_owned()))?;
    let destination = &inner.destinations[&stored.destination];
    if stored.destination != caller {
        return Err((Some(submission), StatusCode::FORBIDDEN, "not this client's submission".into()));
    }
    if stored.case_id != case || claims["txn"] != json!(format!("case:{case}")) {
        return Err(invalid(Some(submission), "txn is not the case of the submission"));
    }
    if header["alg"] != "PS512" || header["typ"] != "secevent+jwt" {
        return Err(invalid(Some(submission), "header: alg must be PS512, typ secevent+jwt"));
    }
    if header["kid"] != destination.signing_key["kid"] {
        return Err(invalid(Some(submission), "kid is not the destination's signature key"));
    }
    if !verify(&destination.signing_key) {
        return Err(invalid(Some(submission), "the signature does not verify with the destination's key"));
    }
    if claims["iss"] != json!(stored.destination.to_string()) {
        return Err(invalid(Some(submission), "iss is not the destination"));
    }
    if claims["jti"].as_str().and_then(|j| j.parse::<Uuid>().ok()).is_none() || !claims["iat"].is_i64() {
        return Err(invalid(Some(submission), "jti and iat are required"));
    }
    let events = claims["events"].as_object().filter(|e| e.len() == 1).ok_or_else(|| invalid(Some(submission), "exactly one event"))?;
    let (event, payload) = events.iter().next().expect("one");
    let state = match event.strip_prefix(EVENTS) {
        Some("accept-submission") => {
            if payload["authenticationTags"] != stored.tags {
                return Err(invalid(Some(submission), "the authentication tags are not the submission's"));
            }
            SubmissionState::Accepted
        }
        Some("reject-submission") => {
            let problems = payload["problems"].as_array().filter(|p| !p.is_empty()).ok_or_else(|| invalid(Some(submission), "a rejection names its problems"))?;
            if problems.iter().any(|p| !p["type"].as_str().is_some_and(|t| t.starts_with("https://schema.fitko.de/fit-connect/events/problems/")) || !p["instance"].is_string()) {
                return Err(invalid(Some(submission), "each problem has a FIT-Connect type and an instance"));
            }
            SubmissionState::Rejected(problems.clone())
        }
        _ => return Err(invalid(Some(submission), "the event is neither accept- nor reject-submission")),
    };
    drop(verify);
    Ok((submission, state, compact))
}
