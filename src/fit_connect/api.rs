//! The Submission API, version 2: the requests a subscriber makes. Every
//! path is in this file, so that a change of FIT-Connect's API is one edit
//! here.
//!
//! Authentication is OAuth 2.0 client credentials sent in the form body
//! (`client_secret_post`, as FITKO's SDKs do), without a scope (FITKO
//! advises against requesting one); the token is renewed before it
//! expires and once more on a 401 (the HTTP connector's client does both).

use std::time::Duration;

use amtsbote_connector::{Context, Outcome};
use amtsbote_connector_http::{AuthConfig, Client, ClientAuth, OAuth2Config, TlsConfig, read_limited, retry_after};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use uuid::Uuid;

/// Why a request did not get the answer it asked for.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer, a 5xx or a 429: worth trying again, after `retry_after`
    /// if the service said.
    #[error("{message}")]
    Transient { message: String, retry_after: Option<Duration> },
    /// The token endpoint refused the credentials, or the API refused the
    /// token it gave: the destination's configuration is wrong.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// The decision was refused because the submission has one already
    /// (`409`): after a lost answer, ours.
    #[error("the submission has a decision already (HTTP 409)")]
    AlreadyDecided,
    /// Any other refusal, with FIT-Connect's problem type if it sent one.
    #[error("HTTP {status}{}", problem.as_deref().map(|p| format!(" ({p})")).unwrap_or_default())]
    Refused { status: u16, problem: Option<String> },
    #[error("the answer is not what the Submission API sends: {0}")]
    Malformed(&'static str),
    /// The answer is longer than this receiver takes (it says so in
    /// advance): no retry will make it shorter.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

impl ApiError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Transient { .. } => "unavailable",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::AlreadyDecided => "already_decided",
            ApiError::Refused { .. } => "refused",
            ApiError::Malformed(_) => "malformed",
            ApiError::TooLarge(_) => "too_large",
        }
    }
}

/// A submission waiting for the destination, as the list names it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    pub submission_id: Uuid,
    pub case_id: Uuid,
    pub destination_id: Uuid,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    submissions: Vec<Waiting>,
    total_count: u64,
}

/// A submission as fetched: still encrypted.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fetched {
    pub submission_id: Uuid,
    pub case_id: Uuid,
    pub destination_id: Uuid,
    pub encrypted_metadata: String,
    /// `None` also for the empty string, which FIT-Connect sends in its
    /// place when the data comes as an attachment of purpose `data`.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub encrypted_data: Option<String>,
    /// The attachments announced at creation, by id.
    #[serde(default)]
    pub attachments: Vec<Uuid>,
    /// The public service the sender named when it created the
    /// submission (`publicService` in v2, `serviceType` in v1).
    #[serde(default, alias = "serviceType")]
    pub public_service: Option<PublicService>,
}

fn empty_as_none<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.is_empty()))
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct PublicService {
    pub identifier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventLog {
    event_log: Vec<String>,
    #[serde(default)]
    total_count: Option<u64>,
}

/// Most submissions one list request asks for.
pub const PAGE_SIZE: u32 = 100;

/// Most waiting submissions one round takes on.
pub const MAX_WAITING: usize = 10_000;

/// Most events one event-log request asks for (the API's maximum).
const EVENT_PAGE_SIZE: u32 = 500;

/// The longest answer that is not content: lists, event logs, key sets.
const MAX_INDEX_BYTES: usize = 4 * 1024 * 1024;

pub struct SubmissionApi {
    base: Url,
    client: Client,
    /// The longest JWE taken for metadata, data or an attachment.
    max_jwe_bytes: usize,
}

/// Where the API lives and how to reach it.
pub struct Endpoint<'a> {
    pub submission_api: &'a str,
    pub token_url: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a amtsbote_connector::SecretRef,
    pub tls: &'a TlsConfig,
    pub timeout: Duration,
    pub max_content_bytes: usize,
}

impl SubmissionApi {
    pub fn new(endpoint: Endpoint<'_>, context: &Context) -> Result<Self, String> {
        let base = Url::parse(endpoint.submission_api.trim_end_matches('/'))
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| format!("submission_api {:?} is not an absolute http(s) URL", endpoint.submission_api))?;
        let auth = AuthConfig::OAuth2(OAuth2Config {
            token_url: endpoint.token_url.to_owned(),
            client_id: endpoint.client_id.to_owned(),
            client_secret: endpoint.client_secret.clone(),
            scope: None,
            client_auth: ClientAuth::Post,
        });
        let client = Client::new(endpoint.timeout, endpoint.tls, Some(&auth), context).map_err(|e| e.to_string())?;
        // A compact JWE is base64url: four characters for three bytes, plus
        // its header, key and tag.
        let max_jwe_bytes = endpoint.max_content_bytes.saturating_mul(4) / 3 + 64 * 1024;
        Ok(Self { base, client, max_jwe_bytes })
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// One page of the submissions waiting for `destination`.
    async fn page(&self, destination: Uuid, offset: u64) -> Result<Page, ApiError> {
        let mut url = self.url("/v2/submissions");
        url.query_pairs_mut()
            .append_pair("destinationId", &destination.to_string())
            .append_pair("offset", &offset.to_string())
            .append_pair("limit", &PAGE_SIZE.to_string());
        let body = self.get(url, "application/json", MAX_INDEX_BYTES).await?;
        serde_json::from_slice(&body).map_err(|_| ApiError::Malformed("a list of submissions"))
    }

    /// The submissions waiting for `destination`, page by page, at most
    /// [`MAX_WAITING`] at a time (the rest come in the next round).
    pub async fn waiting(&self, destination: Uuid) -> Result<Vec<Waiting>, ApiError> {
        let mut all = Vec::new();
        loop {
            let page = self.page(destination, all.len() as u64).await?;
            let got = page.submissions.len();
            all.extend(page.submissions);
            if got == 0 || all.len() as u64 >= page.total_count || all.len() >= MAX_WAITING {
                return Ok(all);
            }
        }
    }

    pub async fn submission(&self, id: Uuid) -> Result<Fetched, ApiError> {
        let body = self.get(self.url(&format!("/v2/submissions/{id}")), "application/json", MAX_INDEX_BYTES + self.max_jwe_bytes).await?;
        serde_json::from_slice(&body).map_err(|_| ApiError::Malformed("a submission"))
    }

    /// The attachment as a compact JWE.
    pub async fn attachment(&self, submission: Uuid, attachment: Uuid) -> Result<String, ApiError> {
        let body = self
            .get(self.url(&format!("/v2/submissions/{submission}/attachments/{attachment}")), "application/jose", self.max_jwe_bytes)
            .await?;
        String::from_utf8(body).map_err(|_| ApiError::Malformed("an attachment (compact JWE)"))
    }

    /// The case's event log: compact JWS, oldest first, page by page.
    pub async fn events(&self, case: Uuid) -> Result<Vec<String>, ApiError> {
        let mut events = Vec::new();
        loop {
            let mut url = self.url(&format!("/v2/cases/{case}/events"));
            url.query_pairs_mut().append_pair("offset", &events.len().to_string()).append_pair("limit", &EVENT_PAGE_SIZE.to_string());
            let body = self.get(url, "application/json", MAX_INDEX_BYTES).await?;
            let page: EventLog = serde_json::from_slice(&body).map_err(|_| ApiError::Malformed("an event log"))?;
            let got = page.event_log.len();
            events.extend(page.event_log);
            // Without `totalCount` (or with a short page) this was all.
            if got == 0 || got < EVENT_PAGE_SIZE as usize || page.total_count.is_none_or(|total| events.len() as u64 >= total) {
                return Ok(events);
            }
        }
    }

    /// The delivery service's signing keys.
    pub async fn service_keys(&self) -> Result<crate::jose::JwkSet, ApiError> {
        let body = self.get(self.url("/.well-known/jwks.json"), "application/json", MAX_INDEX_BYTES).await?;
        serde_json::from_slice(&body).map_err(|_| ApiError::Malformed("a JSON Web Key Set"))
    }

    /// A public key of the destination as FIT-Connect has it registered;
    /// `None` if FIT-Connect has no key of that `kid`.
    pub async fn destination_key(&self, destination: Uuid, kid: &str) -> Result<Option<crate::jose::Jwk>, ApiError> {
        let mut url = self.url(&format!("/v2/destinations/{destination}/keys/"));
        url.path_segments_mut().expect("an http(s) URL").pop_if_empty().push(kid);
        match self.get(url, "application/json", MAX_INDEX_BYTES).await {
            Ok(body) => serde_json::from_slice(&body).map(Some).map_err(|_| ApiError::Malformed("a JSON Web Key")),
            Err(ApiError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends a decision (a signed event) for the case. A resend after a
    /// lost answer meets `409`: [`ApiError::AlreadyDecided`].
    pub async fn decide(&self, case: Uuid, event: &str) -> Result<(), ApiError> {
        let mut retries = Retries::new();
        loop {
            match self.decide_once(case, event).await {
                Err(error) if retries.again(&error).await => {}
                outcome => return outcome,
            }
        }
    }

    async fn decide_once(&self, case: Uuid, event: &str) -> Result<(), ApiError> {
        let url = self.url(&format!("/v2/cases/{case}/events"));
        let response = self
            .client
            .send(|http| http.post(url.clone()).header(reqwest::header::CONTENT_TYPE, "application/jose").body(event.to_owned()))
            .await
            .map_err(from_outcome)?;
        match response.status() {
            status if status.is_success() => Ok(()),
            StatusCode::CONFLICT => Err(ApiError::AlreadyDecided),
            _ => Err(refusal(response).await),
        }
    }

    async fn get(&self, url: Url, accept: &'static str, limit: usize) -> Result<Vec<u8>, ApiError> {
        let mut retries = Retries::new();
        loop {
            match self.get_once(url.clone(), accept, limit).await {
                Err(error) if retries.again(&error).await => {}
                outcome => return outcome,
            }
        }
    }

    async fn get_once(&self, url: Url, accept: &'static str, limit: usize) -> Result<Vec<u8>, ApiError> {
        let response = self
            .client
            .send(|http| http.get(url.clone()).header(reqwest::header::ACCEPT, accept))
            .await
            .map_err(from_outcome)?;
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        if response.content_length().is_some_and(|length| length > limit as u64) {
            return Err(ApiError::TooLarge(limit));
        }
        let mut response = response;
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    // Announced or not, a longer answer is refused the same.
                    if body.len() > limit {
                        return Err(ApiError::TooLarge(limit));
                    }
                }
                Ok(None) => return Ok(body),
                Err(_) => return Err(ApiError::Transient { message: "the answer broke off".into(), retry_after: None }),
            }
        }
    }

    /// Reachable, and the credentials accepted (for `check --probe`).
    pub async fn probe(&self, destination: Uuid) -> Result<(), ApiError> {
        self.page(destination, 0).await.map(drop)
    }
}

/// Tries a request again after a transient failure (a 5xx, a 429, no
/// answer), a few times within seconds: after `Retry-After` if the service
/// named one, else with exponential backoff and jitter. What still fails
/// is the poller's to pause for.
struct Retries(Box<dyn Iterator<Item = Duration> + Send>);

impl Retries {
    fn new() -> Self {
        use backon::BackoffBuilder as _;
        Self(Box::new(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .with_max_times(4)
                .build(),
        ))
    }

    /// Whether to send again after `error`, having waited.
    async fn again(&mut self, error: &ApiError) -> bool {
        let ApiError::Transient { retry_after, .. } = error else { return false };
        let Some(delay) = self.0.next() else { return false };
        tokio::time::sleep(retry_after.map_or(delay, |after| after.min(MAX_RETRY_AFTER))).await;
        true
    }
}

/// The longest `Retry-After` waited for within one request; a longer one
/// pauses the poller instead.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

fn from_outcome(outcome: Outcome) -> ApiError {
    match outcome {
        Outcome::Permanent { reason } => ApiError::Unauthorized(reason),
        other => ApiError::Transient { message: other.text().to_owned(), retry_after: None },
    }
}

/// What a refusal means: 5xx and 429 pass, 401 and 403 are the
/// configuration's; the problem type is kept (RFC 9457 bodies), never the
/// detail, which may quote what we sent.
async fn refusal(response: reqwest::Response) -> ApiError {
    let status = response.status();
    let after = retry_after(response.headers());
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return ApiError::Transient { message: format!("HTTP {}", status.as_u16()), retry_after: after };
    }
    let body = read_limited(response, 64 * 1024).await.unwrap_or_default();
    #[derive(Deserialize)]
    struct ProblemType {
        #[serde(rename = "type")]
        kind: String,
    }
    let problem = serde_json::from_slice::<ProblemType>(&body).ok().map(|p| p.kind).filter(|kind| kind.len() <= 200);
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::Unauthorized(format!("HTTP {}", status.as_u16())),
        _ => ApiError::Refused { status: status.as_u16(), problem },
    }
}
