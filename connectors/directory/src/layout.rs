//! How a delivery becomes a case in a directory, on a local disk or over
//! SFTP alike: the names, the atomic placement and the idempotence.
//!
//! A document becomes one file `<name>.<ext>`, a folder package a folder
//! `<name>/`. Each is first written under a hidden temporary name
//! (`.<name>.part`), synced to disk, then renamed: a back office polling
//! the directory sees a complete case or none. With `done_marker`, an
//! empty `<name>.done` beside the case follows, for back offices that wait
//! for one.
//!
//! A repeated delivery finds the case under its name: if the content is
//! the same it counts as delivered and nothing is written; if it differs
//! the delivery is refused (a name conflict no retry can solve). Every
//! other failure is transient: a share that is away, a full disk or a
//! missing permission gets fixed by someone, and the retries find it so.

use std::io;

use amtsbote_connector::{Delivery, FileReader, Outcome, PackageFile, Payload, extension_for};
use bytes::Bytes;
use serde::Deserialize;

/// How cases are named and marked.
///
/// ```yaml
/// layout:
///   name: "gewerbe-{submission_id}"   # default "{delivery_id}"
///   extension: xml                    # default: from the content type
///   done_marker: true                 # default false
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayoutConfig {
    /// Name of the file (before its extension) or folder of a case, with
    /// the placeholders `{delivery_id}`, `{submission_id}` and `{target}`.
    /// It must contain `{delivery_id}` or `{submission_id}`, so that two
    /// cases never share a name.
    #[serde(default = "default_name")]
    pub name: String,
    /// Extension of single files; by default derived from the content type
    /// (`xml`, `json`, `csv`, `zip`, `pdf`, else `bin`).
    #[serde(default)]
    pub extension: Option<String>,
    /// Writes an empty `<case name>.done` after the case, for back offices
    /// that pick up a case only when its marker is there.
    #[serde(default)]
    pub done_marker: bool,
}

impl Default for LayoutConfig {
    fn default() -> Self {
        Self { name: default_name(), extension: None, done_marker: false }
    }
}

fn default_name() -> String {
    "{delivery_id}".into()
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("layout: name {0:?} must contain {{delivery_id}} or {{submission_id}}")]
    NameNotUnique(String),
    #[error("layout: {0:?} may hold letters, digits, `-`, `_`, `.` and the placeholders only")]
    BadName(String),
}

/// A checked [`LayoutConfig`].
#[derive(Debug, Clone)]
pub struct Layout {
    name: String,
    extension: Option<String>,
    done_marker: bool,
}

impl Layout {
    pub fn new(config: &LayoutConfig) -> Result<Self, LayoutError> {
        let plain = config.name.replace("{delivery_id}", "").replace("{submission_id}", "").replace("{target}", "");
        if plain == config.name {
            return Err(LayoutError::NameNotUnique(config.name.clone()));
        }
        if !safe_name(&plain) || plain.starts_with('.') {
            return Err(LayoutError::BadName(config.name.clone()));
        }
        if let Some(extension) = &config.extension
            && (extension.is_empty() || !safe_name(extension) || extension.starts_with('.'))
        {
            return Err(LayoutError::BadName(extension.clone()));
        }
        Ok(Self { name: config.name.clone(), extension: config.extension.clone(), done_marker: config.done_marker })
    }

    /// The name of the case a delivery becomes (file or folder).
    pub fn case_name(&self, delivery: &Delivery) -> String {
        let name = self
            .name
            .replace("{delivery_id}", &delivery.delivery_id.to_string())
            .replace("{submission_id}", &delivery.submission_id.to_string())
            .replace("{target}", &delivery.target);
        match &delivery.payload {
            Payload::Document { content_type, .. } => {
                format!("{name}.{}", self.extension.as_deref().unwrap_or_else(|| extension_for(content_type)))
            }
            Payload::Files(_) => name,
        }
    }

    /// The temporary name a case is written under before its rename.
    pub fn part_name(case: &str) -> String {
        format!(".{case}.part")
    }

    pub fn marker_name(case: &str) -> String {
        format!("{case}.done")
    }
}

fn safe_name(name: &str) -> bool {
    name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What is at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    File,
    Folder,
}

/// A directory cases are placed in: the local file system or an SFTP
/// server. Paths are relative to the configured directory, with `/`.
#[async_trait::async_trait]
pub trait CaseDirectory: Send + Sync {
    /// Fails (transiently) if the directory itself is not there: a share
    /// that is not mounted must not be written to underneath.
    async fn check_root(&self) -> io::Result<()>;
    async fn entry(&self, path: &str) -> io::Result<Option<Entry>>;
    async fn read(&self, path: &str) -> io::Result<Bytes>;
    /// Creates or truncates, writes, and syncs the file to disk.
    async fn write(&self, path: &str, content: &Bytes) -> io::Result<()> {
        self.write_from(path, Box::new(io::Cursor::new(content.clone()))).await
    }
    /// As [`write`](Self::write), copying from `reader` through a small
    /// buffer; fails if the reader fails.
    async fn write_from(&self, path: &str, reader: FileReader) -> io::Result<()>;
    async fn create_folder(&self, path: &str) -> io::Result<()>;
    /// Renames; `to` does not exist.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file or a folder with its contents; absent is fine.
    async fn remove(&self, path: &str) -> io::Result<()>;
    /// Makes the renames in `folder` durable (fsync of the directory) where
    /// the protocol allows it.
    async fn sync_folder(&self, folder: &str) -> io::Result<()>;
}

/// Places the delivery's case in `directory` as [`Layout`] describes.
pub async fn place(directory: &dyn CaseDirectory, layout: &Layout, delivery: &Delivery) -> Outcome {
    let case = layout.case_name(delivery);
    match place_case(directory, layout, &case, &delivery.payload).await {
        Ok(Placed::Written) => Outcome::delivered(format!("placed {case}")).with_receipt(Some(case)),
        Ok(Placed::AlreadyThere) => Outcome::delivered(format!("{case} was already there")).with_receipt(Some(case)),
        Err(Failure::Conflict(path)) => Outcome::permanent(format!(
            "a different {path} is already in the directory; remove or rename it, then replay"
        )),
        Err(Failure::Io(step, path, error)) => Outcome::transient(format!("{step} {path}: {error}")),
    }
}

enum Placed {
    Written,
    AlreadyThere,
}

enum Failure {
    Conflict(String),
    Io(&'static str, String, io::Error),
}

fn io(step: &'static str, path: &str) -> impl FnOnce(io::Error) -> Failure {
    let path = path.to_owned();
    move |error| Failure::Io(step, path, error)
}

async fn place_case(directory: &dyn CaseDirectory, layout: &Layout, case: &str, payload: &Payload) -> Result<Placed, Failure> {
    directory.check_root().await.map_err(io("cannot reach the directory for", case))?;
    let placed = match directory.entry(case).await.map_err(io("cannot look up", case))? {
        Some(found) => {
            same_case(directory, case, found, payload).await?;
            Placed::AlreadyThere
        }
        None => {
            let part = Layout::part_name(case);
            directory.remove(&part).await.map_err(io("cannot remove the leftover", &part))?;
            match payload {
                Payload::Document { body, .. } => directory.write(&part, body).await.map_err(io("cannot write", &part))?,
                Payload::Files(files) => write_folder(directory, &part, files).await?,
            }
            directory.rename(&part, case).await.map_err(io("cannot rename to", case))?;
            Placed::Written
        }
    };
    if layout.done_marker {
        let marker = Layout::marker_name(case);
        if directory.entry(&marker).await.map_err(io("cannot look up", &marker))?.is_none() {
            let part = Layout::part_name(&marker);
            directory.write(&part, &Bytes::new()).await.map_err(io("cannot write", &part))?;
            directory.rename(&part, &marker).await.map_err(io("cannot rename to", &marker))?;
        }
    }
    directory.sync_folder("").await.map_err(io("cannot sync the directory of", case))?;
    Ok(placed)
}

async fn write_folder(directory: &dyn CaseDirectory, part: &str, files: &[PackageFile]) -> Result<(), Failure> {
    directory.create_folder(part).await.map_err(io("cannot create", part))?;
    let mut folders = std::collections::BTreeSet::new();
    for file in files {
        // Parents first; the mapping checked that paths stay inside.
        let mut parent = String::new();
        for segment in file.path.split('/').collect::<Vec<_>>().split_last().map(|(_, p)| p).unwrap_or(&[]) {
            parent = if parent.is_empty() { (*segment).to_owned() } else { format!("{parent}/{segment}") };
            if folders.insert(parent.clone()) {
                let path = format!("{part}/{parent}");
                directory.create_folder(&path).await.map_err(io("cannot create", &path))?;
            }
        }
        let path = format!("{part}/{}", file.path);
        // Large attachments come from the blob store as they are written:
        // the package is never in memory whole.
        let reader = file.content.open().await.map_err(io("cannot read the attachment for", &path))?;
        directory.write_from(&path, reader).await.map_err(io("cannot write", &path))?;
    }
    for folder in folders.iter().rev() {
        let path = format!("{part}/{folder}");
        directory.sync_folder(&path).await.map_err(io("cannot sync", &path))?;
    }
    directory.sync_folder(part).await.map_err(io("cannot sync", part))
}

/// Whether the case found under the name is this delivery's.
async fn same_case(directory: &dyn CaseDirectory, case: &str, found: Entry, payload: &Payload) -> Result<(), Failure> {
    match (payload, found) {
        (Payload::Document { body, .. }, Entry::File) => {
            let there = directory.read(case).await.map_err(io("cannot read", case))?;
            if there == body { Ok(()) } else { Err(Failure::Conflict(format!("file {case}"))) }
        }
        (Payload::Files(files), Entry::Folder) => {
            for file in files {
                let path = format!("{case}/{}", file.path);
                match directory.entry(&path).await.map_err(io("cannot look up", &path))? {
                    Some(Entry::File) if file.content.is(&directory.read(&path).await.map_err(io("cannot read", &path))?) => {}
                    _ => return Err(Failure::Conflict(format!("folder {case}"))),
                }
            }
            Ok(())
        }
        (_, Entry::File) => Err(Failure::Conflict(format!("file {case}"))),
        (_, Entry::Folder) => Err(Failure::Conflict(format!("folder {case}"))),
    }
}
