//! The claim check: large attachments wait in a blob store, not in the
//! broker's messages.
//!
//! Intake writes each attachment of at least `blobs.keep_above_kib`,
//! decoded, under `<submission id>/<sha256 of the bytes>` before it
//! publishes, and the message names the attachment by that hash
//! ([`BlobId`]). Workers read it back only for a delivery that needs it,
//! within the delivery memory budget ([`crate::worker`]). Blobs are
//! content-addressed within their submission, never shared between
//! submissions: two tenants' identical uploads stay apart, and removing a
//! finished submission's blobs needs no reference counting.
//!
//! A blob is written to a temporary file, synced, renamed into place and
//! its directory synced, so a blob the message names survives a crash.
//! With sealing on, it is sealed chunk by chunk ([`Sealer::seal_blob`]);
//! whether a blob is sealed follows from its message, which intake sealed
//! with the same keys. Reading checks the bytes against their hash.
//!
//! [`sweep_periodically`] removes the blobs of submissions the ledger has
//! finished with (every delivery delivered or discarded) or does not know
//! (refused, or pruned).
//!
//! Two backends keep the blobs: a directory ([`disk`], the default), and an
//! S3-compatible bucket ([`s3`]) for processes that share no disk. Either
//! serves one ledger ([`BlobStore::claim`]), as the ledger decides when
//! blobs go. A folder package streams its blobs to the connector
//! ([`BlobStore::streamed`]); other deliveries read them whole.

mod disk;
pub mod s3;

use std::path::PathBuf;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use amtsbote_connector::{Context, FileContent, FileReader, FileSource};

use crate::domain::BlobId;
use crate::seal::{BLOB_CHUNK, OpenBlobError, Sealer, read_up_to};
use crate::store::Store;

use disk::DiskBlobs;
use s3::S3Blobs;

/// Why a blob could not be stored or read. Names blobs by hash, never
/// quotes their bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("attachment {0} is not in the blob store")]
    Missing(BlobId),
    #[error("attachment {blob} in the blob store does not open: {reason}")]
    Damaged { blob: BlobId, reason: String },
    #[error("blob store: {0}")]
    Io(String),
    #[error("{0}")]
    Config(String),
}

/// Where blobs are kept: `blobs.path`, or `blobs.s3`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    backend: Arc<Backend>,
}

#[derive(Debug)]
enum Backend {
    Disk(DiskBlobs),
    S3(Box<S3Blobs>),
}

impl BlobStore {
    /// Opens the configured store: creates the directory, or reads the
    /// bucket's credentials (and checks nothing over the network yet; see
    /// [`BlobStore::check`]).
    pub fn open(settings: &BlobSettings, context: &Context) -> Result<Self, BlobError> {
        let backend = match &settings.s3 {
            Some(s3) => Backend::S3(Box::new(S3Blobs::new(s3, context)?)),
            None => Backend::Disk(DiskBlobs::open(&settings.path)?),
        };
        Ok(Self { backend: Arc::new(backend) })
    }

    /// Whether the store can be used: the bucket answers and takes our
    /// credentials. A directory was checked when it was opened.
    pub async fn check(&self) -> Result<(), BlobError> {
        match &*self.backend {
            Backend::Disk(_) => Ok(()),
            Backend::S3(s3) => s3.check().await,
        }
    }

    /// Makes sure this store keeps the blobs of `ledger` only, and claims
    /// it if nobody has. The ledger decides when blobs go, and a sweep
    /// removes the blobs of submissions its ledger does not know: processes
    /// with two ledgers on one store would remove each other's blobs.
    pub async fn claim(&self, ledger: &str) -> Result<(), BlobError> {
        let (place, theirs) = match &*self.backend {
            Backend::Disk(disk) => {
                let (disk, ours) = (disk.clone(), ledger.to_owned());
                (disk.describe(), blocking(move || disk.claim(&ours)).await?)
            }
            Backend::S3(s3) => (s3.describe(), s3.claim(ledger).await?),
        };
        if theirs == ledger {
            return Ok(());
        }
        Err(BlobError::Config(format!(
            "{place} keeps the blobs of another ledger ({theirs}; this one is {ledger}). Processes that share a blob store must \
             share the ledger: its records decide when blobs go, and each would remove the other's. Give this installation a blob \
             store of its own; or, if that ledger is gone for good and its blobs may go, remove the store's `{LEDGER_MARKER}`"
        )))
    }

    /// Decodes `base64` (validated at intake: canonical, padded), seals
    /// it if `sealer` seals, and stores it durably under `submission`.
    pub async fn put(&self, submission: Uuid, base64: Bytes, sealer: Arc<Sealer>) -> Result<BlobId, BlobError> {
        match &*self.backend {
            Backend::Disk(disk) => {
                let disk = disk.clone();
                blocking(move || disk.put(submission, &base64, &sealer)).await
            }
            Backend::S3(s3) => {
                // Decoded and sealed in memory, then sent with its length:
                // S3 takes an object whole or not at all.
                let (id, stored) = blocking(move || {
                    let mut stored = Vec::with_capacity(base64.len() / 4 * 3 + sealing_overhead(base64.len()));
                    write_blob(&mut stored, submission, &base64, &sealer).map(|id| (id, stored)).map_err(|e| {
                        BlobError::Io(format!("cannot write a blob of submission {submission}: {e}"))
                    })
                })
                .await?;
                s3.put(submission, id, Bytes::from(stored)).await?;
                Ok(id)
            }
        }
    }

    /// The bytes of `blob` of `submission`, checked against its hash;
    /// `sealed` says whether intake sealed it (it did if it sealed the
    /// message naming it).
    pub async fn get(&self, submission: Uuid, blob: BlobId, sealed: bool, sealer: Arc<Sealer>) -> Result<Bytes, BlobError> {
        let source = self.reader(submission, blob).await?;
        blocking(move || {
            let mut bytes = Vec::new();
            pump(source, submission, blob, sealed, &sealer, |chunk| {
                bytes.extend_from_slice(&chunk);
                Ok(())
            })?;
            Ok(Bytes::from(bytes))
        })
        .await
    }

    /// The blob as stored (sealed or not), to be read off the async threads.
    async fn reader(&self, submission: Uuid, blob: BlobId) -> Result<Box<dyn Read + Send>, BlobError> {
        Ok(match &*self.backend {
            Backend::Disk(disk) => {
                let disk = disk.clone();
                Box::new(blocking(move || disk.reader(submission, blob)).await?)
            }
            Backend::S3(s3) => Box::new(s3.reader(submission, blob).await?),
        })
    }

    /// `blob` of `submission` as a package file that is read from the
    /// store while the connector writes it, a chunk at a time, and checked
    /// against its hash at the end (see [`FileSource::open`]). `len` is
    /// the attachment's size, as the message says.
    pub fn streamed(&self, submission: Uuid, blob: BlobId, len: u64, sealed: bool, sealer: Arc<Sealer>) -> FileContent {
        FileContent::Stream(Arc::new(StoredFile { store: self.clone(), submission, blob, len, sealed, sealer }))
    }

    /// Removes every blob of `submission`; none is fine.
    pub async fn remove(&self, submission: Uuid) -> Result<(), BlobError> {
        match &*self.backend {
            Backend::Disk(disk) => {
                let disk = disk.clone();
                blocking(move || disk.remove(submission)).await
            }
            Backend::S3(s3) => s3.remove(submission).await,
        }
    }

    /// The submissions that have blobs.
    pub async fn submissions(&self) -> Result<Vec<Uuid>, BlobError> {
        match &*self.backend {
            Backend::Disk(disk) => {
                let disk = disk.clone();
                blocking(move || disk.submissions()).await
            }
            Backend::S3(s3) => s3.submissions().await,
        }
    }
}

/// A blob as a package file (see [`BlobStore::streamed`]).
struct StoredFile {
    store: BlobStore,
    submission: Uuid,
    blob: BlobId,
    len: u64,
    sealed: bool,
    sealer: Arc<Sealer>,
}

#[async_trait::async_trait]
impl FileSource for StoredFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn sha256(&self) -> [u8; 32] {
        self.blob.digest()
    }

    async fn open(&self) -> std::io::Result<FileReader> {
        let (submission, blob) = (self.submission, self.blob);
        // Missing and damaged blobs keep their meaning through the reader.
        let as_io = |e: BlobError| {
            let kind = match e {
                BlobError::Missing(_) => std::io::ErrorKind::NotFound,
                BlobError::Damaged { .. } => std::io::ErrorKind::InvalidData,
                _ => std::io::ErrorKind::Other,
            };
            std::io::Error::new(kind, e.to_string())
        };
        let source = self.store.reader(submission, blob).await.map_err(as_io)?;
        // Two chunks in flight: the copy to the target sets the pace.
        let (chunks, received) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
        let (sealed, sealer) = (self.sealed, self.sealer.clone());
        tokio::task::spawn_blocking(move || {
            let send = |chunk: Vec<u8>| {
                chunks.blocking_send(Ok(chunk.into())).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader is gone"))
            };
            if let Err(e) = pump(source, submission, blob, sealed, &sealer, send) {
                let _ = chunks.blocking_send(Err(as_io(e)));
            }
        });
        let stream = futures_lite::stream::unfold(received, |mut received| async move { received.recv().await.map(|chunk| (chunk, received)) });
        Ok(Box::new(tokio_util::io::StreamReader::new(Box::pin(stream))))
    }
}

/// The one way a stored blob is read: from `source`, opened chunk by
/// chunk if it is sealed, each chunk's plaintext handed to `each`; fails
/// at the end if the bytes do not match the blob's hash. A blob that does
/// not open or match is damaged; one that cannot be read (or whose chunks
/// `each` cannot take) is an I/O error.
fn pump(
    mut source: Box<dyn Read + Send>,
    submission: Uuid,
    blob: BlobId,
    sealed: bool,
    sealer: &Sealer,
    mut each: impl FnMut(Vec<u8>) -> std::io::Result<()>,
) -> Result<(), BlobError> {
    let damaged = |reason: String| BlobError::Damaged { blob, reason };
    let io = |e: std::io::Error| BlobError::Io(format!("cannot read attachment {blob}: {e}"));
    let mut hash = Sha256::new();
    let mut hashed = |chunk: Vec<u8>| {
        hash.update(&chunk);
        each(chunk)
    };
    if sealed {
        sealer.open_blob(&submission.to_string(), &mut source, &mut hashed).map_err(|e| match e {
            OpenBlobError::Io(e) => io(e),
            OpenBlobError::Seal(e) => damaged(e.to_string()),
        })?;
    } else {
        loop {
            let chunk = read_up_to(&mut source, BLOB_CHUNK).map_err(io)?;
            if chunk.is_empty() {
                break;
            }
            hashed(chunk).map_err(io)?;
        }
    }
    if hash.finalize().as_slice() != blob.digest() {
        return Err(damaged("its bytes do not match its hash".into()));
    }
    Ok(())
}

/// The file or object in a store that names the ledger it keeps blobs for.
const LEDGER_MARKER: &str = ".ledger";

/// What sealing adds to `len` bytes at most: a header (with the key's
/// name), and a tag per chunk.
fn sealing_overhead(len: usize) -> usize {
    4 + 1 + 255 + 7 + (len / BLOB_CHUNK + 1) * 16
}

/// Writes the decoded (and maybe sealed) bytes, hashing them on the way,
/// a chunk at a time: memory stays at a chunk whatever the size.
fn write_blob<W: Write>(file: &mut W, submission: Uuid, base64: &[u8], sealer: &Sealer) -> std::io::Result<BlobId> {
    let mut hash = Sha256::new();
    let mut sealing = sealer.seal_blob(&submission.to_string());
    if let Some((header, _)) = &sealing {
        file.write_all(header)?;
    }
    let mut pending: Vec<u8> = Vec::with_capacity(2 * BLOB_CHUNK);
    let mut emit = |chunk: &[u8], last: bool, file: &mut W| -> std::io::Result<()> {
        hash.update(chunk);
        match &mut sealing {
            Some((_, sealer)) => {
                let mut sealed = Vec::with_capacity(chunk.len() + 16);
                sealed.extend_from_slice(chunk);
                sealer.seal_chunk(&mut sealed, last);
                file.write_all(&sealed)
            }
            None => file.write_all(chunk),
        }
    };
    // Base64 decodes in independent groups of 4 symbols.
    const PIECE: usize = BLOB_CHUNK / 3 * 4;
    for piece in base64.chunks(PIECE) {
        let start = pending.len();
        pending.resize(start + piece.len() / 4 * 3, 0);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode_slice(piece, &mut pending[start..])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not base64: {e}")))?;
        pending.truncate(start + decoded);
        // A chunk is sealed as the last only at the end, so keep at least
        // one back until then.
        while pending.len() > BLOB_CHUNK {
            emit(&pending[..BLOB_CHUNK], false, file)?;
            pending.drain(..BLOB_CHUNK);
        }
    }
    emit(&pending, true, file)?;
    Ok(BlobId::from_digest(hash.finalize().into()))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, BlobError> + Send + 'static) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| BlobError::Io(format!("blob task failed: {e}")))?
}

/// Submissions whose blobs one sweep asks the ledger about at once.
const SWEEP_BATCH: usize = 500;

/// Every `every`, removes the blobs of submissions the ledger has finished
/// with at least `every` ago (see [`Store::finished_among`]), until
/// `shutdown` turns true.
pub async fn sweep_periodically(blobs: BlobStore, store: Arc<dyn Store>, every: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        match sweep(&blobs, store.as_ref(), every).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(event = "blobs_removed", submissions = removed, "attachments of finished submissions removed"),
            Err(e) => tracing::error!(event = "blob_sweep_failed", error = %e, "could not remove the attachments of finished submissions"),
        }
    }
}

/// One sweep; returns how many submissions' blobs went.
pub async fn sweep(blobs: &BlobStore, store: &dyn Store, grace: Duration) -> Result<usize, String> {
    let before = OffsetDateTime::now_utc() - grace;
    let mut removed = 0;
    for batch in blobs.submissions().await.map_err(|e| e.to_string())?.chunks(SWEEP_BATCH) {
        for submission in store.finished_among(batch.to_vec(), before).await.map_err(|e| e.to_string())? {
            blobs.remove(submission).await.map_err(|e| e.to_string())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The claim check (`blobs:`): attachments from `keep_above_kib` on are
/// written, decoded, to a blob store when the submission is accepted, and
/// the message on the broker names them by their SHA-256 instead of
/// carrying them. Messages stay small (RabbitMQ 4 refuses messages over
/// 16 MiB by default), and workers read an attachment only when a delivery
/// needs it.
///
/// ```yaml
/// blobs:
///   path: /var/lib/amtsbote/blobs
///   keep_above_kib: 64
///   delivery_memory_mib: 256
/// ```
///
/// With `encryption:` configured, blobs are sealed as messages are. A
/// submission's blobs are removed once each of its deliveries is
/// delivered or discarded; a parked delivery keeps them for its replay.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlobSettings {
    /// The directory (default `var/blobs`, relative to the config file).
    /// Every amtsbote process of an installation must see the same one,
    /// as they share the ledger.
    #[serde(default = "default_blobs_path")]
    pub path: PathBuf,
    /// Attachments of at least this many KiB, decoded, go to the blob
    /// store; smaller ones travel in the message (default 64).
    #[serde(default = "default_keep_above_kib")]
    pub keep_above_kib: usize,
    /// Memory for attachments read back from the blob store for
    /// deliveries in flight, across all targets, in MiB (default 256). A
    /// delivery waits for room before it reads its attachments, so slow
    /// targets and large submissions cannot add up beyond it.
    #[serde(default = "default_delivery_memory_mib")]
    pub delivery_memory_mib: usize,
    /// How often blobs of finished submissions are looked for and removed
    /// (default `1m`). A submission's blobs go at the first look at least
    /// this long after its last delivery finished.
    #[serde(default = "default_sweep_every", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub sweep_every: Duration,
    /// An S3-compatible bucket instead of the directory `path` (see
    /// [`crate::blobs::s3::S3Settings`]), for processes that share no disk.
    #[serde(default)]
    pub s3: Option<crate::blobs::s3::S3Settings>,
}

impl Default for BlobSettings {
    fn default() -> Self {
        Self {
            path: default_blobs_path(),
            keep_above_kib: default_keep_above_kib(),
            delivery_memory_mib: default_delivery_memory_mib(),
            sweep_every: default_sweep_every(),
            s3: None,
        }
    }
}

fn default_blobs_path() -> PathBuf {
    "var/blobs".into()
}

fn default_keep_above_kib() -> usize {
    64
}

fn default_delivery_memory_mib() -> usize {
    256
}

fn default_sweep_every() -> Duration {
    Duration::from_secs(60)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn base64(bytes: &[u8]) -> Bytes {
        base64::engine::general_purpose::STANDARD.encode(bytes).into()
    }

    fn sealer(dir: &Path) -> Arc<Sealer> {
        std::fs::write(dir.join("key"), "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f").unwrap();
        let config: crate::seal::EncryptionConfig = serde_json::from_value(serde_json::json!({
            "keys": { "k": { "file": "key" } }, "seal_with": "k"
        }))
        .unwrap();
        Arc::new(Sealer::new(Some(&config), &amtsbote_connector::Context::new(dir)).unwrap())
    }

    /// A store in `dir/blobs`.
    fn disk_store(dir: &Path) -> BlobStore {
        BlobStore::open(&BlobSettings { path: dir.join("blobs"), ..BlobSettings::default() }, &Context::new(dir)).unwrap()
    }

    #[tokio::test]
    async fn blobs_round_trip_plain_and_sealed_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = disk_store(dir.path());
        let submission = Uuid::now_v7();
        let plain = Arc::new(Sealer::default());
        let sealing = sealer(dir.path());
        for len in [0, 5, BLOB_CHUNK, 3 * BLOB_CHUNK + 1, 1_000_003] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let expected = BlobId::from_digest(Sha256::digest(&bytes).into());
            for (sealer, sealed) in [(&plain, false), (&sealing, true)] {
                let id = store.put(submission, base64(&bytes), sealer.clone()).await.unwrap();
                assert_eq!(id, expected);
                let on_disk = std::fs::read(dir.path().join("blobs").join(submission.to_string()).join(id.to_string())).unwrap();
                assert_eq!(on_disk == bytes, !sealed, "sealed on disk only when sealing");
                assert_eq!(store.get(submission, id, sealed, sealer.clone()).await.unwrap(), bytes);
            }
        }
        let id = store.put(submission, base64(b"%PDF-1.7 Erika"), plain.clone()).await.unwrap();
        let path = dir.path().join("blobs").join(submission.to_string()).join(id.to_string());
        std::fs::write(&path, b"%PDF-1.7 Erikb").unwrap();
        let damaged = store.get(submission, id, false, plain.clone()).await.unwrap_err();
        assert!(matches!(damaged, BlobError::Damaged { .. }), "{damaged:?}");
        assert!(!damaged.to_string().contains("Erik"), "no content in errors");
        assert_eq!(store.get(Uuid::now_v7(), id, false, plain.clone()).await, Err(BlobError::Missing(id)));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(leftovers.iter().all(|n| !n.to_string_lossy().starts_with(".partial")), "{leftovers:?}");

        assert_eq!(store.submissions().await.unwrap(), vec![submission]);
        store.remove(submission).await.unwrap();
        store.remove(submission).await.unwrap();
        assert!(store.submissions().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn streamed_blobs_read_back_chunk_by_chunk_and_fail_when_damaged() {
        use tokio::io::AsyncReadExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = disk_store(dir.path());
        let submission = Uuid::now_v7();
        let (plain, sealing) = (Arc::new(Sealer::default()), sealer(dir.path()));
        for len in [0, 5, BLOB_CHUNK, 2 * BLOB_CHUNK, 3 * BLOB_CHUNK + 1] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
            for (sealer, sealed) in [(&plain, false), (&sealing, true)] {
                let id = store.put(submission, base64(&bytes), sealer.clone()).await.unwrap();
                let file = store.streamed(submission, id, len as u64, sealed, sealer.clone());
                assert_eq!(file.read_all().await.unwrap(), bytes, "{len} bytes, sealed: {sealed}");
                assert!(file.is(&bytes));
            }
        }
        // A blob whose bytes changed fails at the end, with its hash only.
        let id = store.put(submission, base64(&vec![b'E'; 3 * BLOB_CHUNK]), plain.clone()).await.unwrap();
        let path = dir.path().join("blobs").join(submission.to_string()).join(id.to_string());
        let mut stored = std::fs::read(&path).unwrap();
        stored[2 * BLOB_CHUNK] = b'F';
        std::fs::write(&path, stored).unwrap();
        let mut reader = store.streamed(submission, id, 3 * BLOB_CHUNK as u64, false, plain.clone()).open().await.unwrap();
        let error = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(error.to_string().contains(&id.to_string()) && error.to_string().contains("hash"), "{error}");
        // A sealed blob cut short does not open.
        let id = store.put(submission, base64(&vec![7; 2 * BLOB_CHUNK + 9]), sealing.clone()).await.unwrap();
        let path = dir.path().join("blobs").join(submission.to_string()).join(id.to_string());
        let stored = std::fs::read(&path).unwrap();
        std::fs::write(&path, &stored[..stored.len() - 30]).unwrap();
        let file = store.streamed(submission, id, 2 * BLOB_CHUNK as u64 + 9, true, sealing.clone());
        assert_eq!(file.read_all().await.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
        // A missing one says so when it is opened.
        let missing = store.streamed(Uuid::now_v7(), id, 1, false, plain.clone()).open().await.err().unwrap();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_store_keeps_the_blobs_of_the_first_ledger_that_claims_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = disk_store(dir.path());
        store.claim("ledger-a").await.unwrap();
        store.claim("ledger-a").await.unwrap();
        let refused = store.claim("ledger-b").await.unwrap_err().to_string();
        assert!(refused.contains("another ledger (ledger-a; this one is ledger-b)") && refused.contains(".ledger"), "{refused}");
        assert!(store.submissions().await.unwrap().is_empty(), "the marker is no submission");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("blobs")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, [".ledger"], "no temporary file is left");
    }

    #[test]
    fn blob_ids_are_exact_hex() {
        let hex = "ab".repeat(32);
        assert_eq!(BlobId::parse(&hex).unwrap().to_string(), hex);
        for bad in [&"AB".repeat(32), &format!(" {}", &hex[1..]), &hex[..62], "../../etc/passwd"] {
            assert!(BlobId::parse(bad).is_none(), "{bad}");
        }
    }
}
