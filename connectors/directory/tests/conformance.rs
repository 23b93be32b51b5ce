//! The directory connector against a real directory on the local disk.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery};
use amtsbote_connector_conformance::{Case, Condition, Harness, conformance_suite};
use amtsbote_connector_directory::DirectoryConfig;
use amtsbote_connector_directory::layout::{Layout, LayoutConfig};

struct DirectoryHarness {
    dir: tempfile::TempDir,
    layout: Layout,
}

impl DirectoryHarness {
    fn inbox(&self) -> PathBuf {
        self.dir.path().join("inbox")
    }
    fn away(&self) -> PathBuf {
        self.dir.path().join("unmounted")
    }
}

fn layout_config() -> LayoutConfig {
    LayoutConfig { done_marker: true, ..LayoutConfig::default() }
}

#[async_trait::async_trait]
impl Harness for DirectoryHarness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("inbox")).unwrap();
        DirectoryHarness { dir, layout: Layout::new(&layout_config()).unwrap() }
    }

    async fn connector(&self, timeout: Duration) -> Arc<dyn Connector> {
        let config = DirectoryConfig { path: "inbox".into(), layout: layout_config(), timeout };
        Arc::new(config.build(&Context::new(self.dir.path())).unwrap())
    }

    async fn set(&mut self, condition: Condition, delivery: &Delivery) {
        if self.away().exists() {
            std::fs::rename(self.away(), self.inbox()).unwrap();
        }
        let case = self.inbox().join(self.layout.case_name(delivery));
        match condition {
            Condition::Accepting => {}
            // The share is not mounted.
            Condition::Unavailable => std::fs::rename(self.inbox(), self.away()).unwrap(),
            // Another case already has the name.
            Condition::Refusing => std::fs::write(case, "<anderer-fall/>").unwrap(),
            // Reading the existing "file" blocks, as on a hung mount.
            Condition::Unresponsive => {
                let path = CString::new(case.as_os_str().as_bytes()).unwrap();
                assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
            }
        }
    }

    async fn cases(&self) -> Vec<Case> {
        let mut cases = Vec::new();
        for entry in std::fs::read_dir(self.inbox()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".done") {
                continue;
            }
            assert!(self.inbox().join(format!("{name}.done")).exists(), "{name} has no done marker");
            cases.push(Case::from_path(name, &entry.path()));
        }
        cases
    }

    fn secrets(&self) -> Vec<String> {
        Vec::new()
    }
}

conformance_suite!(DirectoryHarness);
