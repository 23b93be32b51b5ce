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

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{hex, unhex32};
use crate::seal::{BLOB_CHUNK, SealError, Sealer};
use crate::store::Store;

/// A blob's name: the SHA-256 of its (decoded, unsealed) bytes, written
/// as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 32]);

impl BlobId {
    pub fn parse(text: &str) -> Option<Self> {
        // unhex32 trims and takes capitals; a name in a message is exact.
        if !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        unhex32(text).map(Self)
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

impl Serialize for BlobId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BlobId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("a blob is named by 64 lower-case hex digits"))
    }
}

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
}

/// The blob store on local disk (`blobs.path`).
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: Arc<Path>,
}

impl BlobStore {
    /// Opens (and creates) the store's directory.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root).map_err(|e| BlobError::Io(format!("cannot create {}: {e}", root.display())))?;
        Ok(Self { root: root.into() })
    }

    fn folder(&self, submission: Uuid) -> PathBuf {
        self.root.join(submission.to_string())
    }

    /// Decodes `base64` (validated at intake: canonical, padded), seals
    /// it if `sealer` seals, and stores it durably under `submission`.
    pub async fn put(&self, submission: Uuid, base64: Bytes, sealer: Arc<Sealer>) -> Result<BlobId, BlobError> {
        let store = self.clone();
        blocking(move || store.put_blocking(submission, &base64, &sealer)).await
    }

    fn put_blocking(&self, submission: Uuid, base64: &[u8], sealer: &Sealer) -> Result<BlobId, BlobError> {
        let io = |what: &str, e: std::io::Error| BlobError::Io(format!("cannot {what} a blob of submission {submission}: {e}"));
        let folder = self.folder(submission);
        match std::fs::create_dir(&folder) {
            Ok(()) => sync_dir(&self.root).map_err(|e| io("sync the folder of", e))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create the folder of", e)),
        }
        let mut nonce = [0u8; 8];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system's random source works");
        let temporary = folder.join(format!(".partial-{}", hex(&nonce)));
        let mut file = std::fs::File::create_new(&temporary).map_err(|e| io("create", e))?;
        let written = write_blob(&mut file, submission, base64, sealer).map_err(|e| io("write", e));
        let id = match written.and_then(|id| file.sync_all().map(|()| id).map_err(|e| io("sync", e))) {
            Ok(id) => id,
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                return Err(e);
            }
        };
        std::fs::rename(&temporary, folder.join(id.to_string())).map_err(|e| io("name", e))?;
        sync_dir(&folder).map_err(|e| io("sync the folder of", e))?;
        Ok(id)
    }

    /// The bytes of `blob` of `submission`, checked against its hash;
    /// `sealed` says whether intake sealed it (it did if it sealed the
    /// message naming it).
    pub async fn get(&self, submission: Uuid, blob: BlobId, sealed: bool, sealer: Arc<Sealer>) -> Result<Bytes, BlobError> {
        let path = self.folder(submission).join(blob.to_string());
        blocking(move || {
            let stored = std::fs::read(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => BlobError::Missing(blob),
                _ => BlobError::Io(format!("cannot read attachment {blob}: {e}")),
            })?;
            let damaged = |reason: String| BlobError::Damaged { blob, reason };
            let bytes = if sealed {
                sealer.open_blob(&submission.to_string(), stored).map_err(|e: SealError| damaged(e.to_string()))?
            } else {
                stored
            };
            if Sha256::digest(&bytes).as_slice() != blob.0 {
                return Err(damaged("its bytes do not match its hash".into()));
            }
            Ok(Bytes::from(bytes))
        })
        .await
    }

    /// Removes every blob of `submission`; none is fine.
    pub async fn remove(&self, submission: Uuid) -> Result<(), BlobError> {
        let folder = self.folder(submission);
        blocking(move || match std::fs::remove_dir_all(&folder) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::Io(format!("cannot remove the blobs of submission {submission}: {e}"))),
        })
        .await
    }

    /// The submissions that have blobs.
    pub async fn submissions(&self) -> Result<Vec<Uuid>, BlobError> {
        let root = self.root.clone();
        blocking(move || {
            let entries = std::fs::read_dir(&root).map_err(|e| BlobError::Io(format!("cannot list {}: {e}", root.display())))?;
            Ok(entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<Uuid>().ok()).collect())
        })
        .await
    }
}

/// Writes the decoded (and maybe sealed) bytes, hashing them on the way,
/// a chunk at a time: memory stays at a chunk whatever the size.
fn write_blob(file: &mut std::fs::File, submission: Uuid, base64: &[u8], sealer: &Sealer) -> std::io::Result<BlobId> {
    let mut hash = Sha256::new();
    let mut sealing = sealer.seal_blob(&submission.to_string());
    if let Some((header, _)) = &sealing {
        file.write_all(header)?;
    }
    let mut pending: Vec<u8> = Vec::with_capacity(2 * BLOB_CHUNK);
    let mut emit = |chunk: &[u8], last: bool, file: &mut std::fs::File| -> std::io::Result<()> {
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
    Ok(BlobId(hash.finalize().into()))
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
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

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn blobs_round_trip_plain_and_sealed_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let submission = Uuid::now_v7();
        let plain = Arc::new(Sealer::default());
        let sealing = sealer(dir.path());
        for len in [0, 5, BLOB_CHUNK, 3 * BLOB_CHUNK + 1, 1_000_003] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let expected = BlobId(Sha256::digest(&bytes).into());
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

    #[test]
    fn blob_ids_are_exact_hex() {
        let hex = "ab".repeat(32);
        assert_eq!(BlobId::parse(&hex).unwrap().to_string(), hex);
        for bad in [&"AB".repeat(32), &format!(" {}", &hex[1..]), &hex[..62], "../../etc/passwd"] {
            assert!(BlobId::parse(bad).is_none(), "{bad}");
        }
    }
}
