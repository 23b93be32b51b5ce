//! Blobs in a directory (`blobs.path`): `<submission>/<sha256>`, written
//! to a temporary file, synced, renamed into place and the folder synced,
//! so a blob a message names survives a crash. Blocking: the
//! [`super::BlobStore`] calls it off the async threads.
//!
//! Folders are made `0700` and files `0600`: the contents are sealed when
//! encryption is on, but names (submission ids) and sizes are not, and no
//! other local user has reason to see them.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

use super::{BlobError, LEDGER_MARKER, write_blob};
use crate::domain::BlobId;
use crate::domain::hex;
use crate::seal::Sealer;

#[derive(Debug, Clone)]
pub(super) struct DiskBlobs {
    root: Arc<Path>,
}

impl DiskBlobs {
    /// Opens (and creates) the store's directory.
    pub(super) fn open(root: &Path) -> Result<Self, BlobError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(root)
            .map_err(|e| BlobError::Io(format!("cannot create {}: {e}", root.display())))?;
        Ok(Self { root: root.into() })
    }

    pub(super) fn describe(&self) -> String {
        format!("the blob directory {}", self.root.display())
    }

    /// The ledger the directory keeps blobs for; `ledger` if none did yet.
    pub(super) fn claim(&self, ledger: &str) -> Result<String, BlobError> {
        let io = |e: std::io::Error| BlobError::Io(format!("cannot claim {}: {e}", self.describe()));
        let marker = self.root.join(LEDGER_MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(theirs) => return Ok(theirs.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        // Written whole under another name and linked into place, which
        // fails if another process got there first: nobody reads half a
        // marker, and the first claim stands.
        let temporary = self.root.join(format!("{LEDGER_MARKER}.{}", Uuid::new_v4().simple()));
        private_file(&temporary)
            .and_then(|mut file| std::io::Write::write_all(&mut file, format!("{ledger}\n").as_bytes()).and_then(|()| file.sync_all()))
            .map_err(io)?;
        let linked = std::fs::hard_link(&temporary, &marker);
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => sync_dir(&self.root).map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        Ok(std::fs::read_to_string(&marker).map_err(io)?.trim().to_owned())
    }

    fn folder(&self, submission: Uuid) -> PathBuf {
        self.root.join(submission.to_string())
    }

    pub(super) fn put(&self, submission: Uuid, base64: &[u8], sealer: &Sealer) -> Result<BlobId, BlobError> {
        let io = |what: &str, e: std::io::Error| BlobError::Io(format!("cannot {what} a blob of submission {submission}: {e}"));
        let folder = self.folder(submission);
        match std::fs::DirBuilder::new().mode(PRIVATE_DIR).create(&folder) {
            Ok(()) => sync_dir(&self.root).map_err(|e| io("sync the folder of", e))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create the folder of", e)),
        }
        let mut nonce = [0u8; 8];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system's random source works");
        let temporary = folder.join(format!(".partial-{}", hex(&nonce)));
        let mut file = private_file(&temporary).map_err(|e| io("create", e))?;
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

    /// The blob as stored, to be read.
    pub(super) fn reader(&self, submission: Uuid, blob: BlobId) -> Result<std::fs::File, BlobError> {
        std::fs::File::open(self.folder(submission).join(blob.to_string())).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BlobError::Missing(blob),
            _ => BlobError::Io(format!("cannot read attachment {blob}: {e}")),
        })
    }

    pub(super) fn remove(&self, submission: Uuid) -> Result<(), BlobError> {
        match std::fs::remove_dir_all(self.folder(submission)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::Io(format!("cannot remove the blobs of submission {submission}: {e}"))),
        }
    }

    pub(super) fn submissions(&self) -> Result<Vec<Uuid>, BlobError> {
        let entries = std::fs::read_dir(&self.root).map_err(|e| BlobError::Io(format!("cannot list {}: {e}", self.root.display())))?;
        Ok(entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<Uuid>().ok()).collect())
    }
}

const PRIVATE_DIR: u32 = 0o700;

/// A new file only its owner may read and write.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn folders_and_files_are_private_to_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        let blobs = DiskBlobs::open(&root).unwrap();
        blobs.claim("ledger-a").unwrap();
        let submission = Uuid::now_v7();
        let id = blobs.put(submission, b"JVBERi0xLjc=", &Sealer::default()).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join(submission.to_string())), 0o700);
        assert_eq!(mode(&root.join(submission.to_string()).join(id.to_string())), 0o600);
        assert_eq!(mode(&root.join(LEDGER_MARKER)), 0o600);
    }
}
