use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amtsbote::app::Application;
use amtsbote::config::Config;
use amtsbote::yaml::parse_yaml;
use amtsbote_sample_back_office::SampleBackOffice;
use amtsbote::domain::{TargetName, delivery_id};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The broker `scripts/test` started. No broker is a failure, never a skip.
pub fn broker_url() -> String {
    std::env::var("AMTSBOTE_TEST_BROKER_URL").unwrap_or_else(|_| {
        panic!("AMTSBOTE_TEST_BROKER_URL is not set: run the tests with scripts/test, which starts a private RabbitMQ node")
    })
}

/// The bearer token of the operator `test-operator` in every test config.
pub const OPERATOR_TOKEN: &str = "0123456789abcdef-test-operator-token";
/// The API key of the sender `test-sender` (every region and service) in
/// every test config.
pub const SENDER_KEY: &str = "0123456789abcdef-test-sender-key";

/// The value of one series (`name{labels}`) in a `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// The hex SHA-256 of a key, as configs hold it.
pub fn key_hash(key: &str) -> String {
    amtsbote::domain::sha256_hex(key.as_bytes())
}

/// A client that sends as `test-sender`.
pub fn as_sender(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {SENDER_KEY}").parse().unwrap());
    builder.default_headers(headers)
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub back_office: SampleBackOffice,
    /// Queue names start with this.
    pub prefix: String,
    /// The config file the app runs with, for the `amtsbote` command.
    pub config_path: std::path::PathBuf,
    /// Applies a changed config, as SIGHUP does.
    pub reloader: amtsbote::app::Reloader,
    _store: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: Option<JoinHandle<std::io::Result<()>>>,
}

/// Targets (name, mapping) all delivering to one sample back office at
/// `/<name>`, and routes (service, region prefix, targets).
pub struct Setup<'a> {
    pub targets: &'a [(&'a str, &'a str)],
    pub routes: &'a [(&'a str, &'a str, &'a [&'a str])],
    pub broker_url: Option<String>,
    /// YAML added under `broker:`, indented by two spaces.
    pub broker_settings: &'a str,
    pub max_body_bytes: Option<usize>,
    /// YAML added under `http:`, indented by two spaces (e.g. limits).
    pub http_settings: &'a str,
    /// YAML added under `sandbox:`, indented by two spaces.
    pub sandbox_settings: &'a str,
    /// YAML added under `blobs:`, indented by two spaces.
    pub blob_settings: &'a str,
    /// YAML added under `store:`, indented by two spaces (e.g. `postgres:`).
    pub store_settings: &'a str,
    /// YAML added to every target, indented by four spaces (e.g. `retry:`).
    pub target_settings: &'a str,
    /// YAML added to every route, indented by four spaces (e.g. `schema:`).
    pub route_settings: &'a str,
    /// The mappings directory (default: the shipped `mappings/`).
    pub mappings: Option<&'a Path>,
    /// The `connector:` block of every target, indented by six spaces
    /// (default: `http` to the sample back office).
    pub connector: Option<&'a str>,
    /// Top-level YAML in place of the default `senders:` (`test-sender`)
    /// and `operators:` (`test-operator`), e.g. with `tenants:`.
    pub access: Option<&'a str>,
    /// (target, tenant) pairs.
    pub tenants_of: &'a [(&'a str, &'a str)],
    /// Top-level YAML appended as it is (e.g. `fit_connect:`).
    pub extra: &'a str,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Self {
            targets: &[("fv", "xgewerbeanzeige-2.2/gewerbeanmeldung.yaml")],
            routes: &[("99050012104000", "", &["fv"])],
            broker_url: None,
            broker_settings: "",
            max_body_bytes: None,
            http_settings: "",
            sandbox_settings: "",
            blob_settings: "",
            store_settings: "",
            target_settings: "",
            route_settings: "",
            mappings: None,
            connector: None,
            access: None,
            tenants_of: &[],
            extra: "",
        }
    }
}

/// A retry policy scaled down for tests: 100 ms, 200 ms, 500 ms, 1 s, …
pub const FAST_RETRY: &str = "    retry:\n      first_delay: 100ms\n      factor: 2\n      max_delay: 1s\n      max_age: 1m\n      jitter: false\n";

/// The config file for `setup`, delivering to `back_office`.
pub fn config_yaml(setup: &Setup<'_>, back_office: &SampleBackOffice, prefix: &str, store: &Path) -> String {
    // Every test app seals what it puts on the broker.
    let seal_key = store.join("seal.key");
    std::fs::write(&seal_key, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n").unwrap();
    let encryption = format!("encryption:\n  keys:\n    test: {{ file: {} }}\n  seal_with: test\n", seal_key.display());
    let access = setup.access.map(str::to_owned).unwrap_or_else(|| {
        format!(
            "senders:\n  - name: test-sender\n    api_keys_sha256: [{}]\n    regions: [\"\"]\noperators:\n  - name: test-operator\n    token_sha256: {}\n    role: operator\n",
            key_hash(SENDER_KEY),
            key_hash(OPERATOR_TOKEN)
        )
    });
    let mut yaml = format!(
        "http:\n  listen: 127.0.0.1:0\n  max_body_bytes: {}\n{}broker:\n  url: {}\n  prefix: {prefix}\n{}store:\n  path: {}\n{}blobs:\n  path: {}\n  sweep_every: 1s\n{}mappings: {}\nshutdown_deadline: 5s\nsandbox:\n  program: {}\n  processes: 2\n{}{encryption}{access}targets:\n",
        setup.max_body_bytes.unwrap_or(1 << 20),
        setup.http_settings,
        setup.broker_url.clone().unwrap_or_else(broker_url),
        setup.broker_settings,
        store.join("store.sqlite").display(),
        setup.store_settings,
        store.join("blobs").display(),
        setup.blob_settings,
        setup.mappings.map(Path::to_owned).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")).display(),
        env!("CARGO_BIN_EXE_amtsbote"),
        setup.sandbox_settings,
    );
    for (name, mapping) in setup.targets {
        let connector = match setup.connector {
            Some(connector) => connector.to_owned(),
            None => format!("      http:\n        url: {}\n        timeout: 30s\n", back_office.url(name)),
        };
        yaml += &format!("  {name}:\n    mapping: {mapping}\n    connector:\n{connector}{}", setup.target_settings);
        if let Some((_, tenant)) = setup.tenants_of.iter().find(|(target, _)| target == name) {
            yaml += &format!("    tenant: {tenant}\n");
        }
    }
    yaml += "routes:\n";
    for (service, region, targets) in setup.routes {
        yaml += &format!("  - service: \"{service}\"\n    region: \"{region}\"\n    targets: [{}]\n{}", targets.join(", "), setup.route_settings);
    }
    yaml += setup.extra;
    yaml
}

/// Writes the config for `setup`, with a queue prefix of its own, as
/// `amtsbote.yaml` in `dir` (the store and blobs go beside it); its path.
pub fn write_config(setup: &Setup<'_>, back_office: &SampleBackOffice, dir: &Path) -> std::path::PathBuf {
    let config = dir.join("amtsbote.yaml");
    std::fs::write(&config, config_yaml(setup, back_office, &unique_prefix(), dir)).unwrap();
    config
}

pub fn unique_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// Whether `/readyz` at `base` answers 200 (broker connected, store
/// writable) within `within`.
pub async fn ready_within(base: &str, within: Duration) -> bool {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts amtsbote on port 0 with its own queue prefix, store and back office.
pub async fn spawn_app(setup: Setup<'_>) -> TestApp {
    let back_office = SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let prefix = unique_prefix();
    let yaml = config_yaml(&setup, &back_office, &prefix, store.path());
    let config_path = store.path().join("amtsbote.yaml");
    std::fs::write(&config_path, &yaml).unwrap();
    let config: Config = parse_yaml(&yaml).unwrap();
    // What loads, the published schema must take (or editors would flag
    // a working config).
    assert_eq!(crate::config_schema::schema_problems(&yaml), Vec::<String>::new(), "{yaml}");
    let app = Application::build(&config).await.unwrap();
    let reloader = app.reloader();
    let base = format!("{}://{}", app.scheme(), app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    // Ready (broker connected, ledger writable) before the test's first
    // request: under the full suite's load a first connect can outlast
    // a submission's wait, which answered 503. (An app serving TLS is not
    // probed: the probe would need the test's certificates.)
    if base.starts_with("http://") {
        assert!(ready_within(&base, Duration::from_secs(60)).await, "amtsbote did not get ready within 60 s");
    }
    TestApp {
        base,
        client: as_sender(reqwest::Client::builder()).build().unwrap(),
        back_office,
        prefix,
        config_path,
        reloader,
        _store: store,
        stop: Some(stop),
        stopped: Some(running),
    }
}

impl TestApp {
    /// Starts a graceful shutdown, as SIGTERM does; returns a handle that
    /// resolves when the app has stopped.
    pub fn begin_shutdown(&mut self) -> JoinHandle<std::io::Result<()>> {
        let _ = self.stop.take().expect("not yet shut down").send(());
        self.stopped.take().expect("not yet shut down")
    }

    /// Runs `amtsbote parked <args>` against this app's config; its stdout.
    pub async fn parked_command(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_amtsbote"))
            .arg("parked")
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "amtsbote parked {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }

    /// A request to the operator API as `test-operator`.
    pub fn operator(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base)).bearer_auth(OPERATOR_TOKEN)
    }

    /// Polls the status until `done` holds for it (or 30 s passed).
    pub async fn status_when(&self, id: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status(id).await;
            if done(&status) || tokio::time::Instant::now() > deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn submit(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/submissions", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn submit_with_key(&self, body: &str, key: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/submissions", self.base))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    pub async fn status(&self, id: &str) -> serde_json::Value {
        self.client.get(format!("{}/v1/submissions/{id}", self.base)).send().await.unwrap().json().await.unwrap()
    }

    /// Polls the status until it leaves `received`/`accepted`.
    pub async fn settled_status(&self, id: &str) -> serde_json::Value {
        self.status_when(id, |s| !matches!(s["status"].as_str(), Some("received" | "accepted"))).await
    }
}

/// A submission envelope built from the shipped fixture's form data.
pub fn gewerbeanmeldung(region: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/xgewerbeanzeige-2.2/fixtures/gewerbeanmeldung.input.json");
    let mut queued: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let object = queued.as_object_mut().unwrap();
    object.remove("id");
    object.remove("receivedAt");
    for attachment in object["attachments"].as_array_mut().unwrap() {
        attachment.as_object_mut().unwrap().remove("size");
    }
    object.insert("region".into(), region.into());
    queued
}

/// A TCP proxy in front of the broker that a test can cut and restore, to
/// make the broker unreachable without stopping the shared node; and whose
/// replies from the broker it can hold back (the broker has what was sent,
/// the client hears nothing, e.g. no publisher confirm).
pub struct BrokerProxy {
    pub port: u16,
    upstream: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    holding: Arc<std::sync::atomic::AtomicBool>,
    to_broker: Arc<std::sync::atomic::AtomicU64>,
}

impl BrokerProxy {
    pub async fn start() -> Self {
        let upstream = broker_url();
        let upstream = upstream.split('@').nth(1).unwrap().split('/').next().unwrap().to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let proxy = Self { port, upstream, tasks: Arc::default(), holding: Arc::default(), to_broker: Arc::default() };
        proxy.restore().await;
        proxy
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Closes the listener and every connection through it.
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// From now on, what the broker sends waits in the proxy (until `cut`
    /// or `release`); what clients send goes on.
    pub fn hold_replies(&self) {
        self.holding.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.holding.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Bytes forwarded from clients to the broker so far.
    pub fn sent_to_broker(&self) -> u64 {
        self.to_broker.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Listens again (and stops holding replies); earlier connections stay cut.
    pub async fn restore(&self) {
        self.release();
        // A `cut` listener goes away with its task, which may take a moment.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the proxy cannot listen on {} again: {e}", self.port),
            }
        };
        let upstream = self.upstream.clone();
        let tasks = self.tasks.clone();
        let (holding, to_broker) = (self.holding.clone(), self.to_broker.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let upstream = upstream.clone();
                let (holding, to_broker) = (holding.clone(), to_broker.clone());
                let connection = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = async {
                        let mut buffer = vec![0u8; 64 * 1024];
                        while let Ok(n @ 1..) = tokio::io::AsyncReadExt::read(&mut client_read, &mut buffer).await {
                            if tokio::io::AsyncWriteExt::write_all(&mut server_write, &buffer[..n]).await.is_err() {
                                return;
                            }
                            to_broker.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                        }
                    };
                    let downstream = async {
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let Ok(n @ 1..) = tokio::io::AsyncReadExt::read(&mut server_read, &mut buffer).await else { return };
                            // Held once read, too: a reply that arrives
                            // while holding waits here.
                            while holding.load(std::sync::atomic::Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            if tokio::io::AsyncWriteExt::write_all(&mut client_write, &buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    // Either side closing ends both, as a real connection.
                    tokio::select! { _ = upstream => {}, _ = downstream => {} }
                });
                tasks.lock().unwrap().push(connection);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }
}

/// A port nobody listens on right now (below 45000, so that the broker's
/// distribution port, 20000 higher, is valid too).
pub fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < 45_000 {
            return port;
        }
    }
}

/// `amtsbote serve` as a child process, to be killed for real.
pub struct AppProcess {
    child: tokio::process::Child,
    pub base: String,
    log: std::path::PathBuf,
}

impl AppProcess {
    /// Starts the binary with `config` on `port` and waits until it answers.
    pub async fn start(config: &Path, port: u16, log: &Path) -> Self {
        Self::start_with(config, port, log, &[]).await
    }

    /// As [`start`](Self::start), with these environment variables.
    pub async fn start_with(config: &Path, port: u16, log_path: &Path, env: &[(&str, &str)]) -> Self {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_amtsbote"))
            .args(["serve", "--config"])
            .arg(config)
            .env("AMTSBOTE_HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "amtsbote did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, base, log: log_path.to_owned() }
    }

    /// Waits until `/readyz` answers 200 (broker connected, store
    /// writable); if it does not within `within`, fails with the warnings
    /// and errors of the process's log, which say why.
    pub async fn wait_until_ready(&self, within: Duration) {
        if !ready_within(&self.base, within).await {
            panic!("amtsbote was not ready within {within:?}; its warnings and errors:\n{}", self.problems());
        }
    }

    /// The warnings and errors in the process's log.
    pub fn problems(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect::<Vec<_>>().join("\n")
    }

    /// The most memory the process has held (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id().unwrap())).unwrap();
        let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches("kB").trim();
        kib.parse::<u64>().unwrap() * 1024
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill_9(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGHUP: reload the configuration.
    pub fn hang_up(&self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    }

    /// SIGTERM, then the exit status (or `None` if it did not exit in time).
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        tokio::time::timeout(within, self.child.wait()).await.ok().map(Result::unwrap)
    }
}

/// A RabbitMQ node of its own, for a test that stops and restarts it.
pub struct PrivateBroker {
    dir: std::path::PathBuf,
    port: u16,
    conf: String,
}

impl PrivateBroker {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, "").await
    }

    /// As [`start`](Self::start), with these lines in `rabbitmq.conf`.
    pub async fn start_with(name: &str, conf: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(format!("rabbitmq-{name}"));
        let broker = Self { dir, port: free_port(), conf: conf.to_owned() };
        broker.node("stop").await;
        let _ = std::fs::remove_dir_all(&broker.dir);
        broker.node("start").await;
        broker
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub async fn stop(&self) {
        self.node("stop").await;
    }

    /// Starts the stopped node again, with its data.
    pub async fn restart(&self) {
        self.node("start").await;
    }

    async fn node(&self, command: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-node");
        let mut invocation = tokio::process::Command::new(script);
        invocation.arg(command).arg(&self.dir).env("AMTSBOTE_RABBITMQ_CONF", &self.conf);
        if command == "start" {
            invocation.arg(self.port.to_string());
        }
        let status = invocation.status().await.unwrap();
        assert!(status.success(), "rabbitmq-node {command} failed");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-node");
        let _ = std::process::Command::new(script).arg("stop").arg(&self.dir).status();
    }
}

/// The delivery ids a target must have received for these submissions.
pub fn expected_keys(ids: impl IntoIterator<Item = String>, target: &str) -> HashSet<String> {
    let target = TargetName::parse(target).unwrap();
    ids.into_iter().map(|id| delivery_id(id.parse().unwrap(), &target).to_string()).collect()
}

/// Waits until `path` of `back_office` has received every key in `keys`.
pub async fn wait_for_keys(back_office: &SampleBackOffice, path: &str, keys: &HashSet<String>, timeout: Duration) -> HashSet<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got: HashSet<String> =
            back_office.received().into_iter().filter(|r| r.path == path).filter_map(|r| r.idempotency_key).collect();
        if keys.is_subset(&got) || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A private S3-compatible server (s3s-fs, which checks every request's
/// signature) on a loopback port, keeping an object `key` of a bucket as
/// the file `<root>/<bucket>/<key>`. `scripts/install-test-deps` installs
/// it into `target/test-tools/bin`.
pub struct S3Server {
    pub root: tempfile::TempDir,
    pub port: u16,
    process: std::process::Child,
}

impl S3Server {
    pub const ACCESS_KEY: &str = "amtsbote-test";
    pub const SECRET_KEY: &str = "amtsbote-test-secret-access-key";

    /// Starts the server with one (empty) bucket, and waits until it listens.
    pub async fn start(bucket: &str) -> Self {
        let program = std::env::var_os("AMTSBOTE_TEST_S3S_FS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/bin/s3s-fs"));
        assert!(program.exists(), "{} is not installed: run scripts/install-test-deps", program.display());
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(bucket)).unwrap();
        let port = free_port();
        let process = std::process::Command::new(program)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", Self::ACCESS_KEY, "--secret-key", Self::SECRET_KEY])
            .arg(root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "s3s-fs did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { root, port, process }
    }

    /// YAML under `blobs:` for this server's `bucket`, with every
    /// attachment from 1 KiB on stored, and the secret key `secret` (the
    /// right one is [`Self::SECRET_KEY`]) in a file in `dir`.
    pub fn blob_settings(&self, bucket: &str, prefix: &str, secret: &str, dir: &Path) -> String {
        let (id_file, secret_file) = (dir.join("s3-access-key-id"), dir.join("s3-secret-access-key"));
        std::fs::write(&id_file, Self::ACCESS_KEY).unwrap();
        std::fs::write(&secret_file, secret).unwrap();
        format!(
            "  keep_above_kib: 1\n  s3:\n    endpoint: http://127.0.0.1:{}\n    bucket: {bucket}\n    prefix: \"{prefix}\"\n    access_key_id: {{ file: {} }}\n    secret_access_key: {{ file: {} }}\n",
            self.port,
            id_file.display(),
            secret_file.display()
        )
    }

    /// The keys of `bucket`'s objects, sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, keys: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, base, keys);
                } else {
                    keys.push(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let base = self.root.path().join(bucket);
        let mut keys = Vec::new();
        walk(&base, &base, &mut keys);
        keys.sort();
        keys
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
