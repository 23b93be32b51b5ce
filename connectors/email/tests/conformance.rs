//! The e-mail connector against a real SMTP server on loopback (aiosmtpd,
//! installed by `scripts/install-test-deps`), with STARTTLS and AUTH.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery, SecretRef};
use amtsbote_connector_conformance::pki::Pki;
use amtsbote_connector_conformance::{Case, Condition, Harness, conformance_suite};
use amtsbote_connector_email::EmailConfig;
use bytes::Bytes;
use mail_parser::MimeHeaders as _;
use tokio::io::AsyncBufReadExt;

const PASSWORD: &str = "conformance-smtp-password-5d81";

/// The Python with aiosmtpd: `AMTSBOTE_TEST_PYTHON`, else the virtual
/// environment `scripts/install-test-deps` makes.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("AMTSBOTE_TEST_PYTHON") {
        return python.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools/venv/bin/python");
    assert!(venv.exists(), "aiosmtpd is not installed: run scripts/install-test-deps (or set AMTSBOTE_TEST_PYTHON)");
    venv
}

struct EmailHarness {
    dir: tempfile::TempDir,
    port: u16,
    _server: tokio::process::Child,
}

#[async_trait::async_trait]
impl Harness for EmailHarness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path());
        std::fs::write(dir.path().join("password"), PASSWORD).unwrap();
        let mut server = tokio::process::Command::new(python())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py"))
            .arg(dir.path())
            .arg(&pki.server_certificate)
            .arg(&pki.server_key)
            .arg("amtsbote")
            .arg(dir.path().join("password"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the SMTP server");
        let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the SMTP server did not start within 30 s")
            .unwrap()
            .expect("the SMTP server ended")
            .parse()
            .unwrap();
        EmailHarness { dir, port, _server: server }
    }

    async fn connector(&self, timeout: Duration) -> Arc<dyn Connector> {
        let mut config = EmailConfig::new("localhost", "amtsbote@kreis.example", "gewerbeamt@gemeinde.example");
        config.port = Some(self.port);
        config.ca = Some("ca.pem".into());
        config.username = Some("amtsbote".into());
        config.password = Some(SecretRef::File("password".into()));
        config.timeout = timeout;
        Arc::new(config.build(&Context::new(self.dir.path())).unwrap())
    }

    async fn set(&mut self, condition: Condition, _: &Delivery) {
        let name = match condition {
            Condition::Accepting => "accepting",
            Condition::Unavailable => "unavailable",
            Condition::Refusing => "refusing",
            Condition::Unresponsive => "unresponsive",
        };
        std::fs::write(self.dir.path().join("condition"), name).unwrap();
    }

    /// Messages by Message-ID (the key a mail importer drops repeats by),
    /// with their attachments decoded.
    async fn cases(&self) -> Vec<Case> {
        let mut cases: BTreeMap<String, Case> = BTreeMap::new();
        for entry in std::fs::read_dir(self.dir.path().join("messages")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "eml") {
                continue;
            }
            let raw = std::fs::read(&path).unwrap();
            let message = mail_parser::MessageParser::default().parse(&raw).expect("a MIME message");
            let key = message.message_id().expect("a Message-ID").to_owned();
            let files = message
                .attachments()
                .map(|a| (a.attachment_name().unwrap_or("").to_owned(), Bytes::from(a.contents().to_vec())))
                .collect();
            cases.entry(key.clone()).or_insert(Case { key, files });
        }
        cases.into_values().collect()
    }

    fn secrets(&self) -> Vec<String> {
        vec![PASSWORD.into()]
    }

    /// Attachments have no folders: the connector joins them with `_`.
    fn package_file_name(&self, path: &str) -> String {
        path.replace('/', "_")
    }
}

conformance_suite!(EmailHarness);
