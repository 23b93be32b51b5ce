//! A package file's bytes: in memory, or streamed from where they wait.
//!
//! A folder package (a case for a transfer directory) of a building
//! application holds plans of many megabytes. Those wait in amtsbote's
//! blob store; a connector that writes files one after the other (a
//! directory, SFTP) copies each from there through a small buffer
//! ([`FileContent::open`]) instead of holding the package in memory.
//! Connectors that need the bytes at once (a mail attachment) read them
//! whole ([`FileContent::read_all`]).

use std::fmt;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A reader of a file's bytes.
pub type FileReader = Box<dyn AsyncRead + Send + Unpin>;

/// Where a streamed file's bytes come from (amtsbote's blob store).
#[async_trait::async_trait]
pub trait FileSource: Send + Sync {
    /// The file's length in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The SHA-256 of the bytes, known without reading them.
    fn sha256(&self) -> [u8; 32];
    /// Reads the bytes from the start, each call anew. The reader checks
    /// them against [`sha256`](Self::sha256) and fails, rather than ends,
    /// if they are damaged: write to a temporary name and give the file
    /// its name only after the reader ended.
    async fn open(&self) -> io::Result<FileReader>;
}

/// A package file's bytes.
#[derive(Clone)]
pub enum FileContent {
    Bytes(Bytes),
    Stream(Arc<dyn FileSource>),
}

impl FileContent {
    pub fn len(&self) -> u64 {
        match self {
            FileContent::Bytes(bytes) => bytes.len() as u64,
            FileContent::Stream(source) => source.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, if they are in memory.
    pub fn in_memory(&self) -> Option<&Bytes> {
        match self {
            FileContent::Bytes(bytes) => Some(bytes),
            FileContent::Stream(_) => None,
        }
    }

    /// Reads the bytes from the start (see [`FileSource::open`]).
    pub async fn open(&self) -> io::Result<FileReader> {
        match self {
            FileContent::Bytes(bytes) => Ok(Box::new(io::Cursor::new(bytes.clone()))),
            FileContent::Stream(source) => source.open().await,
        }
    }

    /// All the bytes in memory.
    pub async fn read_all(&self) -> io::Result<Bytes> {
        match self {
            FileContent::Bytes(bytes) => Ok(bytes.clone()),
            FileContent::Stream(source) => {
                let mut bytes = Vec::with_capacity(usize::try_from(source.len()).unwrap_or(0));
                source.open().await?.read_to_end(&mut bytes).await?;
                Ok(bytes.into())
            }
        }
    }

    /// The SHA-256 of the bytes.
    pub fn sha256(&self) -> [u8; 32] {
        match self {
            FileContent::Bytes(bytes) => Sha256::digest(bytes).into(),
            FileContent::Stream(source) => source.sha256(),
        }
    }

    /// Whether `bytes` are these bytes (a streamed file compares by hash).
    pub fn is(&self, bytes: &[u8]) -> bool {
        match self {
            FileContent::Bytes(own) => own == bytes,
            FileContent::Stream(source) => source.len() == bytes.len() as u64 && source.sha256() == <[u8; 32]>::from(Sha256::digest(bytes)),
        }
    }
}

impl From<Bytes> for FileContent {
    fn from(bytes: Bytes) -> Self {
        FileContent::Bytes(bytes)
    }
}

impl From<Vec<u8>> for FileContent {
    fn from(bytes: Vec<u8>) -> Self {
        FileContent::Bytes(bytes.into())
    }
}

impl From<&'static str> for FileContent {
    fn from(text: &'static str) -> Self {
        FileContent::Bytes(Bytes::from_static(text.as_bytes()))
    }
}

/// Equal bytes, or the same source.
impl PartialEq for FileContent {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (FileContent::Bytes(a), FileContent::Bytes(b)) => a == b,
            (FileContent::Stream(a), FileContent::Stream(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for FileContent {}

/// Never the bytes: they are a citizen's documents.
impl fmt::Debug for FileContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileContent::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            FileContent::Stream(source) => write!(f, "Stream({} bytes)", source.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_read_and_compare_and_are_never_shown() {
        let content = FileContent::from("Erika Mustermann");
        assert_eq!(content.len(), 16);
        assert_eq!(content.read_all().await.unwrap(), "Erika Mustermann");
        let mut read = String::new();
        content.open().await.unwrap().read_to_string(&mut read).await.unwrap();
        assert_eq!(read, "Erika Mustermann");
        assert!(content.is(b"Erika Mustermann") && !content.is(b"Erika"));
        assert_eq!(format!("{content:?}"), "Bytes(16 bytes)");
    }
}
