//! Blobs in an S3-compatible bucket (`blobs.s3`): AWS S3, MinIO, Ceph RGW
//! and the like, for amtsbote processes that share no disk (and, once the
//! ledger can be shared, run on several hosts). An object is
//! `<prefix><submission>/<sha256>`, as a file is on disk.
//!
//! Requests are signed with AWS Signature Version 4 by rusty-s3 (which
//! does no I/O itself) and sent by the HTTP connectors' client, so TLS
//! settings read as they do for an HTTP target. A PUT that S3 answered
//! with 200 is stored whole and durably; S3 never shows half an object.
//! Nothing is retried here: intake answers `503` to a failed put, and a
//! delivery whose read fails is tried again by its retry policy.

use std::time::Duration;

use amtsbote_connector::{Context, SecretRef};
use amtsbote_connector_http::{Client, TlsConfig, read_limited};
use bytes::Bytes;
use reqwest::StatusCode;
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use serde::Deserialize;
use uuid::Uuid;

use super::{BlobError, LEDGER_MARKER};
use crate::domain::BlobId;

/// `blobs.s3`: keep blobs in an S3-compatible bucket instead of the
/// directory `blobs.path`: for processes that share no disk, or a host
/// without room for attachments. Like the directory, a bucket prefix
/// serves the processes of one ledger; a process with another ledger
/// refuses to start on it. The bucket must exist; amtsbote checks at
/// startup that it answers and takes the credentials.
///
/// ```yaml
/// blobs:
///   s3:
///     endpoint: https://s3.example.de
///     bucket: amtsbote-blobs
///     access_key_id: { env: AMTSBOTE_S3_ACCESS_KEY_ID }
///     secret_access_key: { file: /run/secrets/s3-secret-access-key }
/// ```
///
/// Give the bucket no lifecycle rule that expires objects sooner than
/// the longest a delivery may stay parked: amtsbote removes a
/// submission's blobs itself once its deliveries are finished.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The service's base URL: `https://…`, or `http://…` on a private
    /// network.
    pub endpoint: String,
    /// The bucket's name.
    pub bucket: String,
    /// The bucket's region (default `us-east-1`, what MinIO and Ceph
    /// expect unless set up otherwise).
    #[serde(default = "default_region")]
    pub region: String,
    /// Put before every key (default none; if set, it ends in `/`), so
    /// that installations can share a bucket: with `prod/`, blobs are
    /// `prod/<submission>/<sha256>`.
    #[serde(default)]
    pub prefix: String,
    /// How a bucket is addressed: `path` (`<endpoint>/<bucket>/<key>`,
    /// the default, which MinIO and Ceph need) or `virtual_host`
    /// (`<bucket>.<endpoint host>/<key>`, what AWS prefers).
    #[serde(default)]
    pub addressing: Addressing,
    /// The access key's id, a secret reference (`{ env: NAME }` or
    /// `{ file: PATH }`).
    pub access_key_id: SecretRef,
    /// The secret access key, a secret reference.
    pub secret_access_key: SecretRef,
    /// Timeout of one request, body included (default `60s`): the largest
    /// attachment must fit through in it.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// TLS as for HTTP targets: `ca` (a private CA), and `certificate`
    /// with `key` for mutual TLS.
    #[serde(default)]
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Addressing {
    #[default]
    Path,
    VirtualHost,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

/// How long a signed request stays valid: long enough for a slow upload to
/// start, short enough to be worthless when logged by a proxy.
const SIGNED_FOR: Duration = Duration::from_secs(5 * 60);

/// The most an error answer or a listing page is read.
const ANSWER_LIMIT: usize = 4 << 20;

pub(super) struct S3Blobs {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    client: Client,
}

impl std::fmt::Debug for S3Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Blobs").field("bucket", &self.bucket.base_url().as_str()).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl S3Blobs {
    pub(super) fn new(settings: &S3Settings, context: &Context) -> Result<Self, BlobError> {
        let bad = |message: String| BlobError::Config(format!("blobs.s3: {message}"));
        let endpoint = amtsbote_connector_http::http_url(&settings.endpoint)
            .ok_or_else(|| bad("endpoint is not an absolute http(s) URL".into()))?;
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err(bad("endpoint: credentials go in access_key_id and secret_access_key, not in the URL".into()));
        }
        let style = match settings.addressing {
            Addressing::Path => UrlStyle::Path,
            Addressing::VirtualHost => UrlStyle::VirtualHost,
        };
        let bucket = Bucket::new(endpoint, style, settings.bucket.clone(), settings.region.clone())
            .map_err(|e| bad(format!("bucket {:?}: {e}", settings.bucket)))?;
        if !(settings.prefix.is_empty() || settings.prefix.ends_with('/')) || settings.prefix.starts_with('/') {
            return Err(bad(format!("prefix {:?} must end in / and not start with it", settings.prefix)));
        }
        let secret = |reference| context.secret(reference).map_err(|e| bad(e.to_string()));
        let credentials = Credentials::new(secret(&settings.access_key_id)?.expose(), secret(&settings.secret_access_key)?.expose());
        let client = Client::new(settings.timeout, &settings.tls, None, context).map_err(|e| bad(e.to_string()))?;
        Ok(Self { bucket, credentials, prefix: settings.prefix.clone(), client })
    }

    pub(super) fn describe(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("the bucket {}", self.bucket.name()),
            prefix => format!("the bucket {} (prefix {prefix})", self.bucket.name()),
        }
    }

    /// The ledger the bucket (under the prefix) keeps blobs for; `ledger`
    /// if none did yet.
    pub(super) async fn claim(&self, ledger: &str) -> Result<String, BlobError> {
        let key = format!("{}{LEDGER_MARKER}", self.prefix);
        let what = format!("claim {}", self.describe());
        if let Some(theirs) = self.read_marker(&key, &what).await? {
            return Ok(theirs);
        }
        // `If-None-Match: *`: the first claim stands where S3 writes
        // conditionally (AWS, MinIO); reading back tells the loser anyway.
        let url = self.bucket.put_object(Some(&self.credentials), &key).sign(SIGNED_FOR);
        let marker = Bytes::from(format!("{ledger}\n"));
        let response = self.send(|http| http.put(url.clone()).header("if-none-match", "*").body(marker.clone()), &what).await?;
        if !(response.status().is_success() || response.status() == StatusCode::PRECONDITION_FAILED) {
            return Err(self.failed(&what, response).await);
        }
        self.read_marker(&key, &what).await?.ok_or_else(|| BlobError::Io(format!("cannot {what}: the claim is not there after writing it")))
    }

    async fn read_marker(&self, key: &str, what: &str) -> Result<Option<String>, BlobError> {
        let url = self.bucket.get_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        let response = self.send(|http| http.get(url.clone()), what).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => {
                let marker = read_limited(response, 1024).await.ok_or_else(|| BlobError::Io(format!("cannot {what}: the marker does not read")))?;
                Ok(Some(String::from_utf8_lossy(&marker).trim().to_owned()))
            }
            _ => Err(self.failed(what, response).await),
        }
    }

    fn key(&self, submission: Uuid, blob: BlobId) -> String {
        format!("{}{submission}/{blob}", self.prefix)
    }

    pub(super) async fn check(&self) -> Result<(), BlobError> {
        let url = self.bucket.head_bucket(Some(&self.credentials)).sign(SIGNED_FOR);
        let response = self.send(|http| http.head(url.clone()), "reach the bucket").await?;
        // An answer to HEAD has no body to read S3's error code from.
        let hint = match response.status() {
            status if status.is_success() => return Ok(()),
            StatusCode::FORBIDDEN => Some("the credentials are refused"),
            StatusCode::NOT_FOUND => Some("no such bucket"),
            _ => None,
        };
        Err(self.refused("reach the bucket", response.status(), hint.map(str::to_owned)))
    }

    pub(super) async fn put(&self, submission: Uuid, blob: BlobId, stored: Bytes) -> Result<(), BlobError> {
        let key = self.key(submission, blob);
        let url = self.bucket.put_object(Some(&self.credentials), &key).sign(SIGNED_FOR);
        let what = format!("store attachment {blob} of submission {submission}");
        let response = self.send(|http| http.put(url.clone()).body(stored.clone()), &what).await?;
        if !response.status().is_success() {
            return Err(self.failed(&what, response).await);
        }
        Ok(())
    }

    /// The blob as stored, to be read off the async threads as it arrives.
    pub(super) async fn reader(&self, submission: Uuid, blob: BlobId) -> Result<impl std::io::Read + Send + 'static, BlobError> {
        let key = self.key(submission, blob);
        let url = self.bucket.get_object(Some(&self.credentials), &key).sign(SIGNED_FOR);
        let what = format!("read attachment {blob}");
        let response = self.send(|http| http.get(url.clone()), &what).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Err(BlobError::Missing(blob)),
            status if status.is_success() => {
                // Without the URL: its query is the request's signature.
                let body = futures_lite::StreamExt::map(response.bytes_stream(), |chunk| chunk.map_err(|e| std::io::Error::other(e.without_url())));
                Ok(tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(body)))
            }
            _ => Err(self.failed(&what, response).await),
        }
    }

    pub(super) async fn remove(&self, submission: Uuid) -> Result<(), BlobError> {
        let what = format!("remove the blobs of submission {submission}");
        // Plain DELETEs: not every S3-compatible service has DeleteObjects,
        // and a submission has a handful of blobs.
        for key in self.list(&format!("{}{submission}/", self.prefix), false).await? {
            let url = self.bucket.delete_object(Some(&self.credentials), &key).sign(SIGNED_FOR);
            let response = self.send(|http| http.delete(url.clone()), &what).await?;
            if !(response.status().is_success() || response.status() == StatusCode::NOT_FOUND) {
                return Err(self.failed(&what, response).await);
            }
        }
        Ok(())
    }

    pub(super) async fn submissions(&self) -> Result<Vec<Uuid>, BlobError> {
        let folders = self.list(&self.prefix, true).await?;
        Ok(folders
            .iter()
            .filter_map(|folder| folder.strip_prefix(&self.prefix)?.strip_suffix('/')?.parse::<Uuid>().ok())
            .collect())
    }

    /// The keys under `prefix`, or with `folders` the common prefixes one
    /// `/` further down, page by page.
    async fn list(&self, prefix: &str, folders: bool) -> Result<Vec<String>, BlobError> {
        let what = "list the bucket";
        let mut found = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            action.with_prefix(prefix);
            if folders {
                action.with_delimiter("/");
            }
            if let Some(token) = &continuation {
                action.with_continuation_token(token.as_str());
            }
            let url = action.sign(SIGNED_FOR);
            let response = self.send(|http| http.get(url.clone()), what).await?;
            if !response.status().is_success() {
                return Err(self.failed(what, response).await);
            }
            let page = read_limited(response, ANSWER_LIMIT).await.ok_or_else(|| BlobError::Io(format!("cannot {what}: the answer broke off or is too long")))?;
            let page = String::from_utf8(page).map_err(|_| BlobError::Io(format!("cannot {what}: the answer is not UTF-8")))?;
            let page = ListObjectsV2::parse_response(&page).map_err(|e| BlobError::Io(format!("cannot {what}: the answer does not read: {e}")))?;
            if folders {
                found.extend(page.common_prefixes.into_iter().map(|p| p.prefix));
            } else {
                found.extend(page.contents.into_iter().map(|o| o.key));
            }
            match page.next_continuation_token {
                Some(token) => continuation = Some(token),
                None => return Ok(found),
            }
        }
    }

    async fn send(&self, build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response, BlobError> {
        self.client.send(build).await.map_err(|outcome| BlobError::Io(format!("cannot {what}: {}", outcome.text())))
    }

    /// The error for a refusal, with S3's error code (such as
    /// `AccessDenied` or `NoSuchBucket`) when the answer has one.
    async fn failed(&self, what: &str, response: reqwest::Response) -> BlobError {
        let status = response.status();
        let body = read_limited(response, 64 * 1024).await.unwrap_or_default();
        self.refused(what, status, error_code(&body))
    }

    /// `why`: S3's error code, or what the status means.
    fn refused(&self, what: &str, status: StatusCode, why: Option<String>) -> BlobError {
        let code = why.map(|c| format!(" ({c})")).unwrap_or_default();
        BlobError::Io(format!("cannot {what}: bucket {} answered HTTP {}{code}", self.bucket.name(), status.as_u16()))
    }
}

/// The `<Code>` of an S3 error answer, if it is a plain word; its message
/// and the rest are left out.
fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let code = text.split_once("<Code>")?.1.split_once("</Code>")?.0;
    (!code.is_empty() && code.len() <= 64 && code.chars().all(|c| c.is_ascii_alphanumeric())).then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(settings: serde_json::Value) -> Result<S3Blobs, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("id"), "AKIDTEST\n").unwrap();
        std::fs::write(dir.path().join("secret"), "s3cr3t-access-key\n").unwrap();
        let mut settings = settings;
        settings["access_key_id"] = serde_json::json!({ "file": "id" });
        settings["secret_access_key"] = serde_json::json!({ "file": "secret" });
        let settings: S3Settings = serde_json::from_value(settings).map_err(|e| e.to_string())?;
        S3Blobs::new(&settings, &Context::new(dir.path())).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_are_checked_when_opened_and_secrets_never_shown() {
        let ok = opened(serde_json::json!({ "endpoint": "https://s3.example.de", "bucket": "blobs", "prefix": "prod/" })).unwrap();
        assert_eq!(ok.key(Uuid::nil(), BlobId::from_digest([0xab; 32])), format!("prod/{}/{}", Uuid::nil(), "ab".repeat(32)));
        assert!(!format!("{ok:?}").contains("s3cr3t"), "{ok:?}");
        for (settings, expected) in [
            (serde_json::json!({ "endpoint": "https://s3.example.de", "bucket": "b", "prefix": "prod" }), "must end in /"),
            (serde_json::json!({ "endpoint": "https://s3.example.de", "bucket": "b", "prefix": "/prod/" }), "must end in /"),
            (serde_json::json!({ "endpoint": "s3.example.de", "bucket": "b" }), "not an absolute http(s) URL"),
            (serde_json::json!({ "endpoint": "https://u:pw@s3.example.de", "bucket": "b" }), "not in the URL"),
            (serde_json::json!({ "endpoint": "https://10.0.0.1", "bucket": "b", "addressing": "virtual_host" }), "bucket \"b\""),
            (serde_json::json!({ "endpoint": "https://s3.example.de", "bucket": "b", "region": "eu", "acl": "x" }), "unknown field"),
        ] {
            let error = opened(settings.clone()).err().unwrap_or_else(|| panic!("{settings} opened"));
            assert!(error.contains(expected), "{settings}: {error}");
            assert!(!error.contains("pw@") && !error.contains("s3cr3t"), "{error}");
        }
    }

    #[test]
    fn error_codes_are_read_and_nothing_else() {
        let answer = b"<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The bucket does not exist</Message></Error>";
        assert_eq!(error_code(answer).as_deref(), Some("NoSuchBucket"));
        assert_eq!(error_code(b"<Error><Code>a b</Code></Error>"), None);
        assert_eq!(error_code(b"Bad Gateway"), None);
    }
}
