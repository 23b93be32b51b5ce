//! The conformance suite: one set of tests every amtsbote connector passes.
//!
//! A connector's crate implements [`Harness`] for a real back office on
//! loopback (an HTTP server, an OpenSSH server, an SMTP server, a
//! directory) and expands [`conformance_suite!`] in a test file:
//!
//! ```ignore
//! // tests/conformance.rs
//! amtsbote_connector_conformance::conformance_suite!(MyHarness);
//! ```
//!
//! `cargo test -p <crate> --test conformance` then runs every case:
//!
//! | case | the connector must |
//! |---|---|
//! | `delivers_a_document` | deliver, and the target holds exactly the bytes sent |
//! | `delivers_a_package` | deliver a folder of files (if the connector takes packages) |
//! | `unavailable_target_is_transient` | answer `Transient` when the target is down or failing on its side |
//! | `refusing_target_is_permanent` | answer `Permanent` when the target refuses the document |
//! | `unresponsive_target_times_out` | give up after its timeout and answer `Transient` |
//! | `redelivery_creates_no_second_case` | deliver the same delivery twice into one case |
//! | `large_payload_arrives_whole` | carry 20 MB unchanged |
//! | `secrets_and_contents_stay_out_of_logs` | keep secrets and document contents out of every log line and outcome |
//!
//! Logs are captured at `TRACE` level for every crate, the connector's
//! dependencies included.

pub mod pki;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use amtsbote_connector::{Connector, Delivery, FileContent, FileReader, FileSource, Outcome, PackageFile, Payload};
use bytes::Bytes;
use uuid::Uuid;

/// What the back office does with the next delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Takes documents in.
    Accepting,
    /// Down or failing on its side: a closed port, a 503, a missing mount,
    /// an SMTP 451. Trying again later may help.
    Unavailable,
    /// Refuses this document for good: a 422, a SOAP client fault, a
    /// different case under the same name, an SMTP 550.
    Refusing,
    /// Takes the connection and never answers.
    Unresponsive,
}

/// What a connector can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    /// Single documents only (`Payload::Document`).
    Documents,
    /// Documents and folders of files (`Payload::Files`).
    DocumentsAndPackages,
}

/// One case as the back office holds it: the key it is filed under and its
/// files (a single document is one file, under any name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub key: String,
    pub files: BTreeMap<String, Bytes>,
}

impl Case {
    /// A case as a file or folder on the local disk (a transfer directory,
    /// the directory an SFTP server writes to): its files by relative path.
    pub fn from_path(key: impl Into<String>, path: &std::path::Path) -> Case {
        fn collect(path: &std::path::Path, relative: &str, files: &mut BTreeMap<String, Bytes>) {
            if path.is_dir() {
                for entry in std::fs::read_dir(path).unwrap() {
                    let entry = entry.unwrap();
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let relative = if relative.is_empty() { name } else { format!("{relative}/{name}") };
                    collect(&entry.path(), &relative, files);
                }
            } else {
                files.insert(relative.to_owned(), Bytes::from(std::fs::read(path).unwrap()));
            }
        }
        let mut files = BTreeMap::new();
        collect(path, "", &mut files);
        Case { key: key.into(), files }
    }
}

/// A real back office for the connector under test, and the connector
/// configured for it.
#[async_trait::async_trait]
pub trait Harness: Send + Sync + Sized + 'static {
    /// Starts a fresh back office that accepts, with no cases.
    async fn start() -> Self;

    /// A connector configured for this back office, with `timeout` as the
    /// bound of one attempt, built from a config the way amtsbote builds it
    /// (so secrets come from files or the environment).
    async fn connector(&self, timeout: Duration) -> Arc<dyn Connector>;

    /// Puts the back office into `condition` for the given delivery (some
    /// conditions, such as a name conflict, are about one delivery).
    async fn set(&mut self, condition: Condition, delivery: &Delivery);

    /// The cases the back office holds now.
    async fn cases(&self) -> Vec<Case>;

    /// The secret values the connector was configured with (passwords,
    /// tokens, private keys): none may appear in a log line or outcome.
    fn secrets(&self) -> Vec<String>;

    /// What the connector carries.
    fn carries(&self) -> Carries {
        Carries::DocumentsAndPackages
    }

    /// The name a package file (`anlagen/scan.pdf`) has at the back office,
    /// as [`Harness::cases`] reports it; the path itself by default.
    fn package_file_name(&self, path: &str) -> String {
        path.to_owned()
    }
}

/// Written into every document the suite sends; must never show up in a
/// log line or outcome, as it stands for personal data.
pub const CONTENT_MARKER: &str = "Erika-Mustermann-1964-08-12";

/// The bound the suite gives connectors in the timeout case.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// A delivery of an XML document of about `size` bytes.
pub fn document(size: usize) -> Delivery {
    let mut body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<antrag><name>{CONTENT_MARKER}</name><daten>");
    let filler = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    while body.len() + filler.len() + 20 < size {
        body.push_str(filler);
    }
    body.push_str("</daten></antrag>\n");
    delivery(Payload::Document { content_type: "application/xml".into(), body: Bytes::from(body) })
}

/// A delivery of a folder: a document, a PDF-like binary streamed as
/// amtsbote streams large attachments from its blob store, and a nested
/// file.
pub fn package() -> Delivery {
    let binary: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    delivery(Payload::Files(vec![
        PackageFile { path: "antrag.xml".into(), content: format!("<antrag><name>{CONTENT_MARKER}</name></antrag>").into_bytes().into() },
        PackageFile { path: "anlagen/scan.pdf".into(), content: FileContent::Stream(Arc::new(Streamed(Bytes::from(binary)))) },
        PackageFile { path: "anlagen/notiz.txt".into(), content: "Grüße\r\n".into() },
    ]))
}

/// A file read a few KiB at a time, as from the blob store.
struct Streamed(Bytes);

#[async_trait::async_trait]
impl FileSource for Streamed {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn sha256(&self) -> [u8; 32] {
        FileContent::Bytes(self.0.clone()).sha256()
    }

    async fn open(&self) -> std::io::Result<FileReader> {
        let (reader, mut writer) = tokio::io::duplex(8 * 1024);
        let bytes = self.0.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let _ = writer.write_all(&bytes).await;
        });
        Ok(Box::new(reader))
    }
}

fn delivery(payload: Payload) -> Delivery {
    Delivery {
        submission_id: Uuid::new_v4(),
        delivery_id: Uuid::new_v4(),
        target: "conformance".into(),
        payload,
        mapping_version: "sha256:conformance".into(),
        attempt: 1,
    }
}

/// Asserts that the back office holds exactly one case, and that it is the
/// payload: a document as its one file (under any name), a package as its
/// files under their names. Sizes, not contents, go into the message.
async fn assert_holds<H: Harness>(harness: &H, cases: &[Case], payload: &Payload, what: &str) {
    assert_eq!(cases.len(), 1, "{what}: the back office should hold one case: {:?}", cases.iter().map(|c| &c.key).collect::<Vec<_>>());
    let sizes = |files: &BTreeMap<String, Bytes>| files.iter().map(|(name, content)| (name.clone(), content.len())).collect::<Vec<_>>();
    let held = &cases[0].files;
    match payload {
        Payload::Document { body, .. } => {
            assert!(held.len() == 1 && held.values().next() == Some(body),
                "{what} arrived changed: {:?} arrived, {} bytes sent", sizes(held), body.len());
        }
        Payload::Files(files) => {
            let mut sent = BTreeMap::new();
            for file in files {
                sent.insert(harness.package_file_name(&file.path), file.content.read_all().await.unwrap());
            }
            assert!(held == &sent, "{what} arrived changed: {:?} arrived, {:?} sent", sizes(held), sizes(&sent));
        }
    }
}

/// Every outcome text the suite saw, checked for secrets at the end.
fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Delivered { receipt: Some(receipt), .. } => format!("{} {receipt}", outcome.text()),
        _ => outcome.text().to_owned(),
    }
}

async fn deliver(connector: &dyn Connector, delivery: &Delivery) -> Outcome {
    // A generous outer bound: a connector that ignores its own timeout
    // fails the suite instead of hanging it.
    match tokio::time::timeout(Duration::from_secs(120), connector.deliver(delivery)).await {
        Ok(outcome) => outcome,
        Err(_) => panic!("deliver() did not return within 120 s"),
    }
}

fn assert_delivered(outcome: &Outcome, what: &str) {
    assert!(matches!(outcome, Outcome::Delivered { .. }), "{what}: expected Delivered, got {outcome:?}");
}

pub async fn delivers_a_document<H: Harness>() {
    let harness = H::start().await;
    let connector = harness.connector(Duration::from_secs(30)).await;
    let delivery = document(4096);
    assert_delivered(&deliver(&*connector, &delivery).await, "a document");
    assert_holds(&harness, &harness.cases().await, &delivery.payload, "a document").await;
}

pub async fn delivers_a_package<H: Harness>() {
    let harness = H::start().await;
    if harness.carries() == Carries::Documents {
        eprintln!("this connector carries documents only; packages are refused by `amtsbote check`");
        return;
    }
    let connector = harness.connector(Duration::from_secs(30)).await;
    let delivery = package();
    assert_delivered(&deliver(&*connector, &delivery).await, "a package");
    assert_holds(&harness, &harness.cases().await, &delivery.payload, "a package").await;
}

pub async fn unavailable_target_is_transient<H: Harness>() {
    let mut harness = H::start().await;
    let connector = harness.connector(Duration::from_secs(30)).await;
    let delivery = document(1024);
    harness.set(Condition::Unavailable, &delivery).await;
    let outcome = deliver(&*connector, &delivery).await;
    assert!(matches!(outcome, Outcome::Transient { .. }), "an unavailable target: expected Transient, got {outcome:?}");

    harness.set(Condition::Accepting, &delivery).await;
    let retry = Delivery { attempt: 2, ..delivery.clone() };
    assert_delivered(&deliver(&*connector, &retry).await, "the retry once the target is back");
    assert_eq!(harness.cases().await.len(), 1);
}

pub async fn refusing_target_is_permanent<H: Harness>() {
    let mut harness = H::start().await;
    let connector = harness.connector(Duration::from_secs(30)).await;
    let delivery = document(1024);
    harness.set(Condition::Refusing, &delivery).await;
    let outcome = deliver(&*connector, &delivery).await;
    let Outcome::Permanent { reason } = &outcome else {
        panic!("a refusing target: expected Permanent, got {outcome:?}");
    };
    assert!(!reason.trim().is_empty(), "a permanent outcome must say why");
}

pub async fn unresponsive_target_times_out<H: Harness>() {
    let mut harness = H::start().await;
    let connector = harness.connector(TIMEOUT).await;
    let delivery = document(1024);
    harness.set(Condition::Unresponsive, &delivery).await;
    let started = Instant::now();
    let outcome = deliver(&*connector, &delivery).await;
    let took = started.elapsed();
    assert!(matches!(outcome, Outcome::Transient { .. }), "an unresponsive target: expected Transient, got {outcome:?}");
    assert!(took >= TIMEOUT / 2, "gave up after {took:?}, before the timeout of {TIMEOUT:?}: {outcome:?}");
    // Not a benchmark: a loose bound that still tells a bounded attempt
    // from one that waits on the operating system's defaults.
    assert!(took < TIMEOUT * 5, "an attempt with a timeout of {TIMEOUT:?} took {took:?}");
}

pub async fn redelivery_creates_no_second_case<H: Harness>() {
    let harness = H::start().await;
    let connector = harness.connector(Duration::from_secs(30)).await;
    let mut deliveries = vec![document(2048)];
    if harness.carries() == Carries::DocumentsAndPackages {
        deliveries.push(package());
    }
    for delivery in &deliveries {
        assert_delivered(&deliver(&*connector, delivery).await, "the first attempt");
        let again = Delivery { attempt: 2, ..delivery.clone() };
        assert_delivered(&deliver(&*connector, &again).await, "a redelivery of a delivered document");
    }
    let cases = harness.cases().await;
    assert_eq!(cases.len(), deliveries.len(), "each delivery should be one case, however often delivered: {:?}",
        cases.iter().map(|c| &c.key).collect::<Vec<_>>());
}

pub async fn large_payload_arrives_whole<H: Harness>() {
    let harness = H::start().await;
    let connector = harness.connector(Duration::from_secs(60)).await;
    let delivery = document(20 * 1024 * 1024);
    assert_delivered(&deliver(&*connector, &delivery).await, "a 20 MB document");
    assert_holds(&harness, &harness.cases().await, &delivery.payload, "a 20 MB document").await;
}

pub async fn secrets_and_contents_stay_out_of_logs<H: Harness>() {
    let logs = capture_logs();
    let mut harness = H::start().await;
    let secrets = harness.secrets();
    let connector = harness.connector(TIMEOUT).await;
    let mut texts = Vec::new();
    for condition in [Condition::Accepting, Condition::Unavailable, Condition::Refusing, Condition::Unresponsive] {
        let delivery = document(1024);
        harness.set(condition, &delivery).await;
        texts.push(outcome_text(&deliver(&*connector, &delivery).await));
    }
    harness.set(Condition::Accepting, &document(0)).await;
    if let Err(e) = connector.probe().await {
        texts.push(e.to_string());
    }
    tracing::info!(probe = "conformance-capture", "log capture works");
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains("conformance-capture"), "no log line was captured; is a global subscriber set elsewhere?");
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(!logs.contains(secret.as_str()), "a secret appears in the logs");
        for text in &texts {
            assert!(!text.contains(secret.as_str()), "a secret appears in an outcome: {text}");
        }
    }
    assert!(!logs.contains(CONTENT_MARKER), "document contents appear in the logs");
    for text in &texts {
        assert!(!text.contains(CONTENT_MARKER), "document contents appear in an outcome: {text}");
    }
}

/// Installs, once per test binary, a subscriber that records every event
/// of every crate at TRACE level.
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = Captured(logs.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the conformance suite sets the global subscriber");
        logs
    })
    .clone()
}

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs a case on a multi-threaded runtime with logs captured from the
/// start, so every case's log lines are checked, not only the last one's.
#[doc(hidden)]
pub fn run<F: std::future::Future<Output = ()>>(case: F) {
    capture_logs();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(case);
    // A connector that gave up on a hung file system leaves a blocked
    // thread behind; that must not hang the test binary.
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// Expands to one `#[test]` per conformance case for the given [`Harness`].
#[macro_export]
macro_rules! conformance_suite {
    ($harness:ty) => {
        mod conformance {
            use super::*;
            #[test]
            fn delivers_a_document() {
                $crate::run($crate::delivers_a_document::<$harness>())
            }
            #[test]
            fn delivers_a_package() {
                $crate::run($crate::delivers_a_package::<$harness>())
            }
            #[test]
            fn unavailable_target_is_transient() {
                $crate::run($crate::unavailable_target_is_transient::<$harness>())
            }
            #[test]
            fn refusing_target_is_permanent() {
                $crate::run($crate::refusing_target_is_permanent::<$harness>())
            }
            #[test]
            fn unresponsive_target_times_out() {
                $crate::run($crate::unresponsive_target_times_out::<$harness>())
            }
            #[test]
            fn redelivery_creates_no_second_case() {
                $crate::run($crate::redelivery_creates_no_second_case::<$harness>())
            }
            #[test]
            fn large_payload_arrives_whole() {
                $crate::run($crate::large_payload_arrives_whole::<$harness>())
            }
            #[test]
            fn secrets_and_contents_stay_out_of_logs() {
                $crate::run($crate::secrets_and_contents_stay_out_of_logs::<$harness>())
            }
        }
    };
}
