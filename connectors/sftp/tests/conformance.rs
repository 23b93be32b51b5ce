//! The SFTP connector against a real OpenSSH server (Debian's
//! openssh-server, installed by `scripts/install-test-deps`) started on
//! loopback, with key authentication and a pinned host key. A second test
//! logs in with a password.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amtsbote_connector::{Connector, ConnectorConfig, Context, Delivery, Outcome, SecretRef};
use amtsbote_connector_conformance::{Case, Condition, Harness, conformance_suite};
use amtsbote_connector_directory::layout::{Layout, LayoutConfig};
use amtsbote_connector_sftp::SftpConfig;

const SSHD: &str = "/usr/sbin/sshd";

/// A private sshd on a loopback port, serving SFTP only.
struct Sshd {
    dir: PathBuf,
    port: u16,
    process: Option<Child>,
    /// Holds the port without answering, for the unresponsive condition.
    black_hole: Option<TcpListener>,
}

fn ssh_keygen(path: &Path) {
    let status = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).status().unwrap();
    assert!(status.success(), "ssh-keygen failed");
}

impl Sshd {
    fn new(dir: &Path, password_login: bool) -> Sshd {
        assert!(Path::new(SSHD).exists(), "sshd is not installed: run scripts/install-test-deps");
        ssh_keygen(&dir.join("host_key"));
        ssh_keygen(&dir.join("client_key"));
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        // As root, sshd needs its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey {dir}/host_key\nPidFile none\nAuthorizedKeysFile {dir}/authorized_keys\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication {password}\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
            dir = dir.display(),
            password = if password_login { "yes" } else { "no" },
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let mut sshd = Sshd { dir: dir.to_path_buf(), port, process: None, black_hole: None };
        sshd.start();
        sshd
    }

    fn start(&mut self) {
        self.black_hole = None;
        // Its log goes to a file: the readiness check below makes it
        // complain about a connection without a handshake.
        let log = std::fs::File::options().create(true).append(true).open(self.dir.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn host_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("host_key.pub")).unwrap()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn whoami() -> String {
    let output = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

struct SftpHarness {
    dir: tempfile::TempDir,
    sshd: Sshd,
    layout: Layout,
}

impl SftpHarness {
    fn inbox(&self) -> PathBuf {
        self.dir.path().join("inbox")
    }
}

#[async_trait::async_trait]
impl Harness for SftpHarness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("inbox")).unwrap();
        let sshd = Sshd::new(dir.path(), false);
        SftpHarness { dir, sshd, layout: Layout::new(&LayoutConfig::default()).unwrap() }
    }

    async fn connector(&self, timeout: Duration) -> Arc<dyn Connector> {
        let config = SftpConfig {
            host: "127.0.0.1".into(),
            port: self.sshd.port,
            user: whoami(),
            host_key: self.sshd.host_key(),
            private_key: Some(SecretRef::File("client_key".into())),
            passphrase: None,
            password: None,
            path: self.inbox().display().to_string(),
            layout: LayoutConfig::default(),
            timeout,
        };
        Arc::new(config.build(&Context::new(self.dir.path())).unwrap())
    }

    async fn set(&mut self, condition: Condition, delivery: &Delivery) {
        if self.sshd.process.is_none() {
            self.sshd.start();
        }
        match condition {
            Condition::Accepting => {}
            Condition::Unavailable => self.sshd.stop(),
            Condition::Refusing => std::fs::write(self.inbox().join(self.layout.case_name(delivery)), "<anderer-fall/>").unwrap(),
            Condition::Unresponsive => {
                self.sshd.stop();
                self.sshd.black_hole = Some(TcpListener::bind(("127.0.0.1", self.sshd.port)).unwrap());
            }
        }
    }

    async fn cases(&self) -> Vec<Case> {
        let mut cases = Vec::new();
        for entry in std::fs::read_dir(self.inbox()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            cases.push(Case::from_path(name, &entry.path()));
        }
        cases
    }

    /// The private key's lines: none may be logged.
    fn secrets(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("client_key"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
            .map(str::to_owned)
            .collect()
    }
}

conformance_suite!(SftpHarness);

/// A wrong pinned host key is refused before anything is sent.
#[test]
fn a_server_with_another_host_key_is_refused() {
    amtsbote_connector_conformance::run(async {
        let harness = SftpHarness::start().await;
        let dir = tempfile::tempdir().unwrap();
        ssh_keygen(&dir.path().join("other"));
        let config = SftpConfig {
            host: "127.0.0.1".into(),
            port: harness.sshd.port,
            user: whoami(),
            host_key: std::fs::read_to_string(dir.path().join("other.pub")).unwrap(),
            private_key: Some(SecretRef::File(harness.dir.path().join("client_key"))),
            passphrase: None,
            password: None,
            path: harness.inbox().display().to_string(),
            layout: LayoutConfig::default(),
            timeout: Duration::from_secs(10),
        };
        let connector = config.build(&Context::new(".")).unwrap();
        let outcome = connector.deliver(&amtsbote_connector_conformance::document(100)).await;
        assert!(matches!(&outcome, Outcome::Permanent { reason } if reason.contains("host key")), "{outcome:?}");
        assert!(harness.cases().await.is_empty());
    });
}

/// Password login needs a system account sshd can check: the test makes
/// one (`amtsbote-sftp-test`, no shell, a new random password each run),
/// which needs root. Under CI=true it never skips.
#[test]
fn password_login_works() {
    if whoami() != "root" {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "the password test needs root (it creates a test account for sshd)");
        eprintln!("skipped: the password test needs root (it creates a test account for sshd)");
        return;
    }
    const USER: &str = "amtsbote-sftp-test";
    amtsbote_connector_conformance::run(async {
        let dir = tempfile::tempdir().unwrap();
        let exists = Command::new("id").arg(USER).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success();
        if !exists {
            let status = Command::new("useradd").args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER]).status().unwrap();
            assert!(status.success(), "useradd failed");
        }
        let password = format!("pw-{}-{:?}", std::process::id(), Instant::now());
        let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(chpasswd.stdin.as_mut().unwrap(), format!("{USER}:{password}\n").as_bytes()).unwrap();
        assert!(chpasswd.wait().unwrap().success(), "chpasswd failed");
        std::fs::write(dir.path().join("password"), &password).unwrap();

        let inbox = dir.path().join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        let chown = Command::new("chown").arg(USER).arg(&inbox).status().unwrap();
        assert!(chown.success());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sshd = Sshd::new(dir.path(), true);
        let config = SftpConfig {
            host: "127.0.0.1".into(),
            port: sshd.port,
            user: USER.into(),
            host_key: sshd.host_key(),
            private_key: None,
            passphrase: None,
            password: Some(SecretRef::File("password".into())),
            path: inbox.display().to_string(),
            layout: LayoutConfig::default(),
            timeout: Duration::from_secs(20),
        };
        let connector = config.build(&Context::new(dir.path())).unwrap();
        connector.probe().await.unwrap();
        let outcome = connector.deliver(&amtsbote_connector_conformance::document(1000)).await;
        assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
        assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 1);

        std::fs::write(dir.path().join("password"), "wrong").unwrap();
        let outcome = config.build(&Context::new(dir.path())).unwrap().deliver(&amtsbote_connector_conformance::document(10)).await;
        assert!(matches!(&outcome, Outcome::Permanent { reason } if reason.contains("refused the login")), "{outcome:?}");
        // Lock the account again until the next run sets a new password.
        let _ = Command::new("usermod").args(["--lock", USER]).status();
    });
}
