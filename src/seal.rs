//! Sealing: what amtsbote puts on the broker is encrypted and
//! authenticated (AES-256-GCM, from aws-lc-rs), so queues, parked messages,
//! the broker's disks and its management UI never show an application.
//!
//! A sealed message body is
//!
//! ```text
//! "ASB1" | key id length (1 byte) | key id | nonce (12 bytes) | ciphertext and tag
//! ```
//!
//! The key id travels in the body, so keys can rotate while messages
//! sealed with the old one are still queued or parked. The associated data
//! binds the ciphertext to its message id and region: a sealed body moved
//! into another message, or a message whose region header was changed
//! (the worker checks the region against the target's tenant), does not
//! open. Nonces are random; at 2^32 messages per key (decades at a
//! state-wide platform's rate) rotate the key.

use std::collections::BTreeMap;

use amtsbote_connector::{Context, SecretRef};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::Deserialize;

use crate::domain::unhex32;

const MAGIC: &[u8; 4] = b"ASB1";

/// What `check` and `serve` say when no `encryption:` is configured.
pub const PLAINTEXT_WARNING: &str = "no encryption: is configured, so submissions lie on the broker in plaintext";

/// `encryption:` in the config.
///
/// ```yaml
/// encryption:
///   keys:
///     k2026-11: { file: /run/secrets/amtsbote-key-2026-11 }
///     k2026-05: { env: AMTSBOTE_KEY_2026_05 }
///   seal_with: k2026-11
/// ```
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The keys by id (1 to 32 of `a-z`, `0-9`, `-`, `_`, `.`): each 32
    /// random bytes written as 64 hex digits, from a file or the
    /// environment (`amtsbote keys new` makes one; use its `key:` line).
    /// Keep every key that may still have sealed a queued or parked
    /// message.
    pub keys: BTreeMap<String, SecretRef>,
    /// The key that seals new messages; the others only open. To rotate:
    /// add a key, reload every amtsbote, then switch `seal_with` to it;
    /// remove the old key once nothing sealed with it is left
    /// (`amtsbote parked list` shows parked ones).
    pub seal_with: String,
    /// Also deliver messages that are not sealed, e.g. those queued before
    /// sealing was switched on (default `false`: they are parked as
    /// `undecodable`, since anyone who can publish to the broker could
    /// have put them there).
    #[serde(default)]
    pub accept_unsealed: bool,
}

/// Why a sealed body does not open. Never carries any of the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the message is not sealed, and encryption.accept_unsealed is off")]
    NotSealed,
    #[error("the message is sealed with key {0:?}, which is not among encryption.keys")]
    UnknownKey(String),
    #[error("the sealed message is damaged, or belongs to another message or region (authentication failed)")]
    Damaged,
}

/// The configured keys, ready to seal and open.
pub struct Sealer {
    /// `None`: sealing is off; messages travel in plaintext.
    sealing: Option<(String, LessSafeKey)>,
    keys: BTreeMap<String, LessSafeKey>,
    accept_unsealed: bool,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("seal_with", &self.sealing.as_ref().map(|(id, _)| id))
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Sealer {
    /// Sealing off.
    fn default() -> Self {
        Self { sealing: None, keys: BTreeMap::new(), accept_unsealed: true }
    }
}

impl Sealer {
    /// Reads the keys (a reload reads them again, so it rotates them);
    /// returns every problem, none quoting a key.
    pub fn new(config: Option<&EncryptionConfig>, context: &Context) -> Result<Self, Vec<String>> {
        let Some(config) = config else { return Ok(Self::default()) };
        let mut problems = Vec::new();
        let mut keys = BTreeMap::new();
        for (id, secret) in &config.keys {
            let valid_id = (1..=32).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !valid_id {
                problems.push(format!("encryption: key id {id:?} must be 1 to 32 of a-z, 0-9, '-', '_' and '.'"));
                continue;
            }
            let key = context
                .secret(secret)
                .map_err(|e| e.to_string())
                .and_then(|secret| unhex32(secret.expose()).ok_or_else(|| "must be 64 hex digits (32 random bytes)".to_owned()))
                .and_then(|bytes| UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "is not an AES-256 key".to_owned()));
            match key {
                Ok(key) => {
                    keys.insert(id.clone(), LessSafeKey::new(key));
                }
                Err(e) => problems.push(format!("encryption: key {id}: {e}")),
            }
        }
        if !config.keys.contains_key(&config.seal_with) {
            problems.push(format!("encryption: seal_with {:?} is not one of the keys", config.seal_with));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let sealing = keys.remove(&config.seal_with).map(|key| (config.seal_with.clone(), key));
        Ok(Self { sealing, keys, accept_unsealed: config.accept_unsealed })
    }

    pub fn is_sealing(&self) -> bool {
        self.sealing.is_some()
    }

    /// `plaintext` sealed for the message `message_id` of `region`; as it
    /// is if sealing is off.
    pub fn seal(&self, message_id: &str, region: &str, plaintext: Vec<u8>) -> Vec<u8> {
        let Some((id, key)) = &self.sealing else { return plaintext };
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system's random source works");
        // Header, then the plaintext encrypted where it lies, then the tag:
        // one copy of a body that can be many megabytes.
        let tag_len = AES_256_GCM.tag_len();
        let mut sealed = Vec::with_capacity(MAGIC.len() + 1 + id.len() + NONCE_LEN + plaintext.len() + tag_len);
        sealed.extend_from_slice(MAGIC);
        sealed.push(id.len() as u8);
        sealed.extend_from_slice(id.as_bytes());
        sealed.extend_from_slice(&nonce);
        let header = sealed.len();
        sealed.extend_from_slice(&plaintext);
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad(id, message_id, region)), &mut sealed[header..])
            .expect("AES-GCM seals any message amtsbote accepts");
        sealed.extend_from_slice(tag.as_ref());
        sealed
    }

    /// The plaintext of a message body.
    pub fn open(&self, message_id: &str, region: &str, body: &[u8]) -> Result<Vec<u8>, SealError> {
        let Some(rest) = body.strip_prefix(MAGIC.as_slice()) else {
            return if self.accept_unsealed { Ok(body.to_vec()) } else { Err(SealError::NotSealed) };
        };
        let (&id_len, rest) = rest.split_first().ok_or(SealError::Damaged)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN {
            return Err(SealError::Damaged);
        }
        let (id, rest) = rest.split_at(id_len);
        let id = std::str::from_utf8(id).map_err(|_| SealError::Damaged)?;
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let key = match &self.sealing {
            Some((current, key)) if current == id => key,
            _ => self.keys.get(id).ok_or_else(|| SealError::UnknownKey(id.to_owned()))?,
        };
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Damaged)?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = key.open_in_place(nonce, Aad::from(aad(id, message_id, region)), &mut in_out).map_err(|_| SealError::Damaged)?;
        let len = plaintext.len();
        in_out.truncate(len);
        Ok(in_out)
    }
}

/// Attachments in the blob store (see [`crate::blobs`]) are sealed in
/// chunks, so that a file of many megabytes is sealed and opened a chunk at
/// a time, never as one buffer (the STREAM construction of Hoang,
/// Reyhanitabar, Rogaway and Vizár, as in age and Tink):
///
/// ```text
/// "ASB2" | key id length (1 byte) | key id | nonce prefix (7 bytes) | chunk ... | last chunk
/// chunk i: up to 64 KiB of ciphertext and its tag, nonce = prefix | i (4 bytes BE) | 1 if last else 0
/// ```
///
/// The last-chunk flag in the nonce makes a truncated file fail to open;
/// the chunk number, a reordered one. The associated data binds the blob
/// to its submission; the blob store checks the plaintext's SHA-256 (its
/// name) on reading, so blobs of one submission cannot be swapped either.
const BLOB_MAGIC: &[u8; 4] = b"ASB2";
pub const BLOB_CHUNK: usize = 64 * 1024;
const BLOB_NONCE_PREFIX: usize = 7;

/// Seals one blob, chunk by chunk; made by [`Sealer::seal_blob`].
pub struct BlobSealer<'k> {
    key: &'k LessSafeKey,
    aad: Vec<u8>,
    prefix: [u8; BLOB_NONCE_PREFIX],
    counter: u32,
}

impl BlobSealer<'_> {
    /// Seals `chunk` (at most [`BLOB_CHUNK`] bytes; only the last may be
    /// shorter) where it lies and appends its tag.
    pub fn seal_chunk(&mut self, chunk: &mut Vec<u8>, last: bool) {
        assert!(chunk.len() <= BLOB_CHUNK, "blob chunks are at most BLOB_CHUNK bytes");
        let nonce = blob_nonce(&self.prefix, self.counter, last);
        self.counter = self.counter.checked_add(1).expect("a blob has fewer than 2^32 chunks (256 TiB)");
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(self.aad.as_slice()), chunk)
            .expect("AES-GCM seals any chunk");
        chunk.extend_from_slice(tag.as_ref());
    }
}

fn blob_nonce(prefix: &[u8; BLOB_NONCE_PREFIX], counter: u32, last: bool) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..BLOB_NONCE_PREFIX].copy_from_slice(prefix);
    nonce[BLOB_NONCE_PREFIX..NONCE_LEN - 1].copy_from_slice(&counter.to_be_bytes());
    nonce[NONCE_LEN - 1] = u8::from(last);
    Nonce::assume_unique_for_key(nonce)
}

fn blob_aad(key_id: &str, submission: &str) -> Vec<u8> {
    [BLOB_MAGIC.as_slice(), key_id.as_bytes(), b"\0", submission.as_bytes()].concat()
}

impl Sealer {
    /// Starts sealing a blob of `submission`: the header to write before
    /// the chunks, and their sealer. `None` when sealing is off.
    pub fn seal_blob(&self, submission: &str) -> Option<(Vec<u8>, BlobSealer<'_>)> {
        let (id, key) = self.sealing.as_ref()?;
        let mut prefix = [0u8; BLOB_NONCE_PREFIX];
        aws_lc_rs::rand::fill(&mut prefix).expect("the system's random source works");
        let header = [BLOB_MAGIC.as_slice(), &[id.len() as u8], id.as_bytes(), &prefix].concat();
        Some((header, BlobSealer { key, aad: blob_aad(id, submission), prefix, counter: 0 }))
    }

    /// Reads a sealed blob's header from `stored` (which is left at the
    /// first chunk) and returns the opener of its chunks.
    fn blob_opener(&self, submission: &str, stored: &mut impl std::io::Read) -> Result<BlobOpener<'_>, SealError> {
        let mut start = [0u8; 5];
        stored.read_exact(&mut start).map_err(|_| SealError::NotSealed)?;
        if start[..4] != BLOB_MAGIC[..] {
            return Err(SealError::NotSealed);
        }
        let mut rest = vec![0u8; usize::from(start[4]) + BLOB_NONCE_PREFIX];
        stored.read_exact(&mut rest).map_err(|_| SealError::Damaged)?;
        let (id, prefix) = rest.split_at(rest.len() - BLOB_NONCE_PREFIX);
        let id = std::str::from_utf8(id).map_err(|_| SealError::Damaged)?.to_owned();
        let key = match &self.sealing {
            Some((current, key)) if *current == id => key,
            _ => self.keys.get(&id).ok_or_else(|| SealError::UnknownKey(id.clone()))?,
        };
        Ok(BlobOpener { key, aad: blob_aad(&id, submission), prefix: prefix.try_into().expect("7 bytes"), counter: 0 })
    }

    /// Opens a sealed blob of `submission` as it is read from `stored`, a
    /// chunk at a time, and hands each chunk's plaintext to `each` in
    /// order. Memory stays at two chunks whatever the size.
    pub fn open_blob(
        &self,
        submission: &str,
        stored: &mut impl std::io::Read,
        mut each: impl FnMut(Vec<u8>) -> std::io::Result<()>,
    ) -> Result<(), OpenBlobError> {
        let mut opener = self.blob_opener(submission, stored)?;
        let mut current = read_up_to(stored, BLOB_SEALED_CHUNK)?;
        loop {
            // A full chunk is the last only if nothing follows it.
            let next = if current.len() == BLOB_SEALED_CHUNK { read_up_to(stored, BLOB_SEALED_CHUNK)? } else { Vec::new() };
            let last = next.is_empty();
            let plain = opener.open_chunk(&mut current, last)?;
            current.truncate(plain);
            each(current)?;
            if last {
                return Ok(());
            }
            current = next;
        }
    }
}

/// Why a stored blob did not open: it could not be read (or taken), or
/// it is not what was sealed.
#[derive(Debug, thiserror::Error)]
pub enum OpenBlobError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Up to `len` bytes of `source`; fewer only at its end.
pub fn read_up_to(source: &mut impl std::io::Read, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buffer = Vec::with_capacity(len);
    source.take(len as u64).read_to_end(&mut buffer)?;
    Ok(buffer)
}

/// A sealed chunk as stored: up to [`BLOB_CHUNK`] bytes and the tag.
const BLOB_SEALED_CHUNK: usize = BLOB_CHUNK + 16;

/// Opens one blob's chunks in order; made by [`Sealer::blob_opener`].
struct BlobOpener<'k> {
    key: &'k LessSafeKey,
    aad: Vec<u8>,
    prefix: [u8; BLOB_NONCE_PREFIX],
    counter: u32,
}

impl BlobOpener<'_> {
    /// Opens the next chunk (at most [`BLOB_SEALED_CHUNK`] bytes; only the
    /// `last` may be shorter) where it lies; the plaintext's length.
    fn open_chunk(&mut self, sealed: &mut [u8], last: bool) -> Result<usize, SealError> {
        if sealed.len() < AES_256_GCM.tag_len() {
            return Err(SealError::Damaged);
        }
        let nonce = blob_nonce(&self.prefix, self.counter, last);
        let plain = self.key.open_in_place(nonce, Aad::from(self.aad.as_slice()), sealed).map_err(|_| SealError::Damaged)?.len();
        self.counter = self.counter.checked_add(1).ok_or(SealError::Damaged)?;
        Ok(plain)
    }
}

/// Whether a message body is sealed (or claims to be).
pub fn is_sealed(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// What a sealed body is bound to besides its own bytes.
fn aad(key_id: &str, message_id: &str, region: &str) -> Vec<u8> {
    [MAGIC.as_slice(), key_id.as_bytes(), b"\0", message_id.as_bytes(), b"\0", region.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(dir: &std::path::Path, keys: &[(&str, &str)], seal_with: &str) -> Sealer {
        let mut config = EncryptionConfig { keys: BTreeMap::new(), seal_with: seal_with.into(), accept_unsealed: false };
        for (id, key) in keys {
            std::fs::write(dir.join(id), format!("{key}\n")).unwrap();
            config.keys.insert((*id).into(), SecretRef::File(id.into()));
        }
        Sealer::new(Some(&config), &Context::new(dir)).unwrap()
    }

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn a_sealed_body_opens_only_for_its_message_and_region_and_shows_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = sealer(dir.path(), &[("a", KEY_A)], "a");
        let plaintext = br#"{"data":{"name":"Erika Mustermann"}}"#.to_vec();
        let sealed = sealer.seal("m1", "053150000000", plaintext.clone());
        assert!(sealed.starts_with(b"ASB1\x01a"));
        assert!(!String::from_utf8_lossy(&sealed).contains("Mustermann"), "no plaintext in the sealed body");
        assert_eq!(sealer.open("m1", "053150000000", &sealed).unwrap(), plaintext);
        assert_eq!(sealer.open("m2", "053150000000", &sealed), Err(SealError::Damaged), "moved to another message");
        assert_eq!(sealer.open("m1", "053140000000", &sealed), Err(SealError::Damaged), "region changed");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(sealer.open("m1", "053150000000", &flipped), Err(SealError::Damaged));
        assert_eq!(sealer.open("m1", "053150000000", &sealed[..8]), Err(SealError::Damaged), "truncated");
        assert_eq!(sealer.open("m1", "053150000000", &plaintext), Err(SealError::NotSealed));
        assert_ne!(sealer.seal("m1", "053150000000", plaintext.clone()), sealed, "a fresh nonce each time");
    }

    #[test]
    fn keys_rotate_old_messages_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let old = sealer(dir.path(), &[("a", KEY_A)], "a");
        let sealed_old = old.seal("m", "r", b"x".to_vec());
        let rotated = sealer(dir.path(), &[("a", KEY_A), ("b", KEY_B)], "b");
        let sealed_new = rotated.seal("m", "r", b"y".to_vec());
        assert!(sealed_new.starts_with(b"ASB1\x01b"));
        assert_eq!(rotated.open("m", "r", &sealed_old).unwrap(), b"x");
        assert_eq!(rotated.open("m", "r", &sealed_new).unwrap(), b"y");
        assert_eq!(old.open("m", "r", &sealed_new), Err(SealError::UnknownKey("b".into())));
    }

    #[test]
    fn bad_keys_are_refused_without_being_quoted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("short"), "abcdef").unwrap();
        let config = EncryptionConfig {
            keys: [("short".to_owned(), SecretRef::File("short".into()))].into(),
            seal_with: "other".into(),
            accept_unsealed: false,
        };
        let problems = Sealer::new(Some(&config), &Context::new(dir.path())).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|p| !p.contains("abcdef")), "{problems:?}");
    }

    /// The plaintext of a sealed blob held in memory.
    fn open(sealer: &Sealer, submission: &str, stored: Vec<u8>) -> Result<Vec<u8>, SealError> {
        let mut plain = Vec::new();
        match sealer.open_blob(submission, &mut stored.as_slice(), |chunk| {
            plain.extend_from_slice(&chunk);
            Ok(())
        }) {
            Ok(()) => Ok(plain),
            Err(OpenBlobError::Seal(e)) => Err(e),
            Err(OpenBlobError::Io(e)) => panic!("a slice reads: {e}"),
        }
    }

    #[test]
    fn a_sealed_blob_opens_only_whole_and_for_its_submission() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = sealer(dir.path(), &[("a", KEY_A)], "a");
        for len in [0, 1, BLOB_CHUNK - 1, BLOB_CHUNK, BLOB_CHUNK + 1, 3 * BLOB_CHUNK + 17] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (mut stored, mut chunks) = sealer.seal_blob("s1").unwrap();
            let pieces: Vec<&[u8]> = if len == 0 { vec![&[]] } else { plaintext.chunks(BLOB_CHUNK).collect() };
            for (i, piece) in pieces.iter().enumerate() {
                let mut chunk = piece.to_vec();
                chunks.seal_chunk(&mut chunk, i + 1 == pieces.len());
                stored.extend_from_slice(&chunk);
            }
            assert!(stored.starts_with(b"ASB2\x01a"));
            assert_eq!(open(&sealer, "s1", stored.clone()).unwrap(), plaintext, "{len} bytes");
            assert_eq!(open(&sealer, "s2", stored.clone()), Err(SealError::Damaged), "another submission's");
            if len > BLOB_CHUNK {
                let header = 4 + 1 + 1 + 7;
                let cut = stored.len() - (stored.len() - header) % (BLOB_CHUNK + 16);
                assert_eq!(open(&sealer, "s1", stored[..cut].to_vec()), Err(SealError::Damaged), "the last chunk cut off");
            }
            let mut flipped = stored.clone();
            *flipped.last_mut().unwrap() ^= 1;
            assert_eq!(open(&sealer, "s1", flipped), Err(SealError::Damaged));
        }
        assert!(Sealer::default().seal_blob("s1").is_none(), "sealing off");
        assert_eq!(open(&sealer, "s1", b"%PDF-1.7".to_vec()), Err(SealError::NotSealed));
    }

    #[test]
    fn without_encryption_messages_pass_as_they_are() {
        let sealer = Sealer::default();
        assert!(!sealer.is_sealing());
        assert_eq!(sealer.seal("m", "r", b"{}".to_vec()), b"{}");
        assert_eq!(sealer.open("m", "r", b"{}").unwrap(), b"{}");
    }
}
