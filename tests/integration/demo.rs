//! The demo as a newcomer runs it: twice in a row, each run from nothing.

use std::path::Path;

use crate::helpers::{broker_url, free_port};

#[tokio::test]
async fn the_demo_runs_twice_in_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    for run in 1..=2 {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_amtsbote"))
            .arg("demo")
            .arg("-c")
            .arg(project.join("examples/demo/amtsbote.yaml"))
            .arg("--submissions")
            .arg(project.join("examples/demo/submissions"))
            .current_dir(dir.path())
            .env("AMTSBOTE_BROKER_URL", broker_url())
            .env("AMTSBOTE_HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
            // The demo's own state, where a second run finds the first's.
            .env("AMTSBOTE_STORE_PATH", dir.path().join("demo.sqlite"))
            .env("AMTSBOTE_BLOBS_PATH", dir.path().join("blobs"))
            .env("RUST_LOG", "warn")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "demo run {run} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("every accepted submission was delivered"), "demo run {run}:\n{stdout}");
        assert!(stdout.contains("Via FIT-Connect") && stdout.contains("sent: accept-submission"), "demo run {run}:\n{stdout}");
    }
    assert!(dir.path().join("blobs").is_dir(), "the runs kept attachments in the blob store, which the second run reset");
}
