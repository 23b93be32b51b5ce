//! Transfer-directory connector: places each case in a local or mounted
//! directory (an SMB or NFS share the back office polls).
//!
//! [`layout`] holds how a case is named, written atomically and recognised
//! on redelivery; the SFTP connector places its cases the same way.

pub mod layout;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery, FileReader, Outcome, Unhealthy};
use bytes::Bytes;
use serde::Deserialize;

use layout::{CaseDirectory, Entry, Layout, LayoutConfig, LayoutError};

/// Place cases in a directory.
///
/// ```yaml
/// connector:
///   directory:
///     path: /mnt/fachverfahren/eingang
///     layout: { name: "{delivery_id}", done_marker: true }
///     timeout: 60s
/// ```
///
/// A document becomes `<name>.<ext>`, a folder package (`package: { format:
/// folder }` in the mapping) a folder `<name>/`. The directory must exist:
/// amtsbote never creates it, so that an unmounted share is noticed (a
/// transient failure) instead of filled underneath.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The directory cases are placed in (relative to the config file).
    pub path: PathBuf,
    /// Names and markers of cases; see [`LayoutConfig`].
    #[serde(default)]
    pub layout: LayoutConfig,
    /// Upper bound for placing one case (default `60s`). A file system that
    /// hangs (a stale NFS mount) cannot be interrupted: the attempt is given
    /// up as transient, and the blocked thread is left to the kernel.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryConfigError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    BadTimeout(#[from] amtsbote_connector::BadTimeout),
}

impl ConnectorConfig for DirectoryConfig {
    type Connector = DirectoryConnector;
    type Error = DirectoryConfigError;

    fn build(&self, context: &Context) -> Result<DirectoryConnector, DirectoryConfigError> {
        amtsbote_connector::check_timeout(self.timeout)?;
        Ok(DirectoryConnector {
            directory: Arc::new(LocalDirectory { root: context.path(&self.path) }),
            layout: Layout::new(&self.layout)?,
            timeout: self.timeout,
        })
    }
}

pub struct DirectoryConnector {
    directory: Arc<LocalDirectory>,
    layout: Layout,
    timeout: Duration,
}

#[async_trait::async_trait]
impl Connector for DirectoryConnector {
    async fn deliver(&self, delivery: &Delivery) -> Outcome {
        match tokio::time::timeout(self.timeout, layout::place(&*self.directory, &self.layout, delivery)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::transient(format!("timeout: the directory did not answer within {:?}", self.timeout)),
        }
    }

    /// The directory is there and takes a file.
    async fn probe(&self) -> Result<(), Unhealthy> {
        let directory = self.directory.clone();
        let probe = async move {
            directory.check_root().await?;
            let name = format!(".amtsbote-probe-{}", std::process::id());
            directory.write(&name, &Bytes::new()).await?;
            directory.remove(&name).await
        };
        match tokio::time::timeout(self.timeout, probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Unhealthy(format!("{}: {e}", self.directory.root.display()))),
            Err(_) => Err(Unhealthy(format!("{}: no answer within {:?}", self.directory.root.display(), self.timeout))),
        }
    }
}

/// The local file system; every call runs on the blocking pool.
struct LocalDirectory {
    root: PathBuf,
}

impl LocalDirectory {
    async fn run<T: Send + 'static>(&self, path: &str, f: impl FnOnce(PathBuf) -> io::Result<T> + Send + 'static) -> io::Result<T> {
        let full = self.root.join(path);
        tokio::task::spawn_blocking(move || f(full)).await.map_err(io::Error::other)?
    }
}

#[async_trait::async_trait]
impl CaseDirectory for LocalDirectory {
    async fn check_root(&self) -> io::Result<()> {
        self.run("", |root| {
            if std::fs::metadata(&root)?.is_dir() {
                Ok(())
            } else {
                Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"))
            }
        })
        .await
    }

    async fn entry(&self, path: &str) -> io::Result<Option<Entry>> {
        self.run(path, |path| match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => Ok(Some(Entry::Folder)),
            Ok(_) => Ok(Some(Entry::File)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn read(&self, path: &str) -> io::Result<Bytes> {
        self.run(path, |path| std::fs::read(path).map(Bytes::from)).await
    }

    async fn write_from(&self, path: &str, mut reader: FileReader) -> io::Result<()> {
        let mut file = tokio::fs::File::create(self.root.join(path)).await?;
        tokio::io::copy(&mut reader, &mut file).await?;
        file.sync_all().await
    }

    async fn create_folder(&self, path: &str) -> io::Result<()> {
        self.run(path, std::fs::create_dir).await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let to = self.root.join(to);
        self.run(from, move |from| std::fs::rename(from, to)).await
    }

    async fn remove(&self, path: &str) -> io::Result<()> {
        self.run(path, |path| {
            let removed = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(e) => Err(e),
            };
            match removed {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        })
        .await
    }

    async fn sync_folder(&self, folder: &str) -> io::Result<()> {
        self.run(folder, |folder| std::fs::File::open(&folder)?.sync_all()).await
    }
}

#[cfg(test)]
mod tests {
    use amtsbote_connector::Payload;
    use uuid::Uuid;

    use super::*;

    fn delivery(body: &'static str) -> Delivery {
        Delivery {
            submission_id: Uuid::new_v4(),
            delivery_id: Uuid::new_v4(),
            target: "t".into(),
            payload: Payload::Document { content_type: "application/xml".into(), body: Bytes::from_static(body.as_bytes()) },
            mapping_version: "test".into(),
            attempt: 1,
        }
    }

    fn connector(dir: &std::path::Path, layout: LayoutConfig) -> DirectoryConnector {
        DirectoryConfig { path: "inbox".into(), layout, timeout: Duration::from_secs(5) }.build(&Context::new(dir)).unwrap()
    }

    #[tokio::test]
    async fn a_crashed_attempt_leaves_a_part_file_that_the_next_attempt_replaces() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("inbox")).unwrap();
        let d = delivery("<ganz/>");
        let case = format!("gewerbe-{}.xml", d.delivery_id);
        let part = dir.path().join("inbox").join(Layout::part_name(&case));
        std::fs::write(&part, "<halb").unwrap();
        let layout = LayoutConfig { name: "gewerbe-{delivery_id}".into(), ..LayoutConfig::default() };
        let outcome = connector(dir.path(), layout).deliver(&d).await;
        assert!(!part.exists());
        assert_eq!(outcome, Outcome::delivered(format!("placed {case}")).with_receipt(Some(case.clone())));
        assert_eq!(std::fs::read(dir.path().join("inbox").join(&case)).unwrap(), b"<ganz/>");
    }

    #[tokio::test]
    async fn a_case_without_its_marker_gets_the_marker_on_redelivery() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("inbox")).unwrap();
        let d = delivery("<a/>");
        let case = format!("{}.xml", d.delivery_id);
        std::fs::write(dir.path().join("inbox").join(&case), "<a/>").unwrap();
        let outcome = connector(dir.path(), LayoutConfig { done_marker: true, ..LayoutConfig::default() }).deliver(&d).await;
        assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
        assert!(dir.path().join("inbox").join(format!("{case}.done")).exists());
    }

    #[tokio::test]
    async fn a_missing_directory_is_transient_and_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let connector = connector(dir.path(), LayoutConfig::default());
        let outcome = connector.deliver(&delivery("<a/>")).await;
        assert!(matches!(&outcome, Outcome::Transient { reason, .. } if reason.contains("No such file")), "{outcome:?}");
        assert!(!dir.path().join("inbox").exists());
        assert!(connector.probe().await.is_err());
    }

    #[test]
    fn names_must_be_unique_and_plain() {
        let layout = |name: &str| Layout::new(&LayoutConfig { name: name.into(), ..LayoutConfig::default() });
        assert!(matches!(layout("fall"), Err(LayoutError::NameNotUnique(_))));
        assert!(matches!(layout("../{delivery_id}"), Err(LayoutError::BadName(_))));
        assert!(matches!(layout(".{delivery_id}"), Err(LayoutError::BadName(_))));
        assert!(layout("{target}_{submission_id}").is_ok());
    }
}
