//! amtsbote on several hosts: a RabbitMQ cluster, a PostgreSQL ledger, an
//! S3 bucket, and processes that share them (see the README, "Running on
//! several hosts").

use std::time::Duration;

use amtsbote::broker::{BrokerSettings, Endpoint, Topology};
use amtsbote::domain::TargetName;

use crate::helpers::{broker_url, unique_prefix};

/// Installations from before `quorum_group_size` declared their queues
/// without it; they declare them again on every connect, now with it,
/// which the broker would refuse for a queue that exists: such a queue is
/// left as it is.
#[tokio::test]
async fn queues_declared_without_a_group_size_are_declared_again_with_one() {
    let endpoint = Endpoint { url: broker_url().into(), nodes: Vec::new(), ca_file: None };
    let connection = amtsbote::broker::connect(&endpoint, "test-group-size").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let prefix = unique_prefix();
    let targets = [TargetName::parse("fv").unwrap()];
    Topology::new(&prefix).declare(&connection, &channel, &targets).await.unwrap();
    let settings = BrokerSettings { prefix: prefix.clone(), quorum_group_size: std::num::NonZeroU8::new(3), ..BrokerSettings::default() };
    Topology::of(&settings).declare(&connection, &channel, &targets).await.expect("declared again with a group size");
    Topology::of(&settings).declare_delay_ladder(&connection, &channel, &[Duration::from_secs(1)]).await.unwrap();
    Topology::of(&settings).declare_delay_ladder(&connection, &channel, &[Duration::from_secs(1)]).await.expect("and again");
    assert!(channel.status().connected(), "the probes' failures closed only their own channels");
    let topology = Topology::new(&prefix);
    for queue in [topology.work_queue(&targets[0]), topology.parking_queue(&targets[0]), topology.delay_queue(Duration::from_secs(1))] {
        channel.queue_delete(queue.as_str().into(), Default::default()).await.unwrap();
    }
}

/// Three ports in a row that are free, with the Erlang distribution ports
/// 20000 above them.
fn free_port_run() -> u16 {
    loop {
        let first = crate::helpers::free_port();
        let free = (0..3).flat_map(|n| [first + n, first + n + 20_000]).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if first < 44_990 && free {
            return first;
        }
    }
}

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

async fn run(command: &mut tokio::process::Command) {
    let status = command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().await.unwrap();
    assert!(status.success(), "{command:?} failed");
}

/// A three-node RabbitMQ cluster of its own (`scripts/rabbitmq-node
/// start-cluster`), whose nodes a test stops and starts.
struct RabbitCluster {
    dir: std::path::PathBuf,
    port: u16,
}

impl RabbitCluster {
    async fn start(name: &str) -> Self {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(format!("rabbitmq-{name}"));
        let cluster = Self { dir, port: free_port_run() };
        run(tokio::process::Command::new(script("rabbitmq-node")).arg("stop").arg(&cluster.dir)).await;
        let _ = std::fs::remove_dir_all(&cluster.dir);
        run(tokio::process::Command::new(script("rabbitmq-node")).arg("start-cluster").arg(&cluster.dir).arg(cluster.port.to_string())).await;
        cluster
    }

    /// YAML under `broker:`: every node.
    fn nodes(&self) -> String {
        format!("  nodes: [127.0.0.1:{}, 127.0.0.1:{}, 127.0.0.1:{}]\n", self.port, self.port + 1, self.port + 2)
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Node 1, 2 or 3.
    async fn stop_node(&self, node: u16) {
        run(tokio::process::Command::new(script("rabbitmq-node")).arg("stop").arg(self.dir.join(node.to_string()))).await;
    }

    /// The number of nodes holding `queue` (its quorum members), as node 1
    /// sees it.
    async fn members(&self, queue: &str) -> usize {
        let output = tokio::process::Command::new(script("rabbitmq-node"))
            .arg("ctl")
            .arg(self.dir.join("1"))
            .args(["list_queues", "name", "members", "--no-table-headers"])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().find(|line| line.split_whitespace().next() == Some(queue)).unwrap_or_else(|| panic!("{queue} not in {text}"));
        line.matches('@').count()
    }

    async fn start_node(&self, node: u16) {
        let port = (self.port + node - 1).to_string();
        run(tokio::process::Command::new(script("rabbitmq-node")).arg("start").arg(self.dir.join(node.to_string())).arg(port)).await;
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script("rabbitmq-node")).arg("stop").arg(&self.dir).status();
    }
}

/// A PostgreSQL server of its own (`scripts/postgres-node`), which a test
/// stops and starts without disturbing the shared one.
struct PrivatePostgres {
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivatePostgres {
    async fn start(name: &str) -> Self {
        Self::start_with(name, None).await
    }

    /// With `tls` (certificate and key files), TCP connections only over
    /// TLS.
    async fn start_with(name: &str, tls: Option<(&std::path::Path, &std::path::Path)>) -> Self {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(format!("postgres-{name}"));
        let server = Self { dir, port: crate::helpers::free_port() };
        server.stop().await;
        let _ = std::fs::remove_dir_all(&server.dir);
        let mut start = tokio::process::Command::new(script("postgres-node"));
        start.arg("start").arg(&server.dir).arg(server.port.to_string());
        if let Some((certificate, key)) = tls {
            start.env("AMTSBOTE_POSTGRES_TLS", format!("{} {}", certificate.display(), key.display()));
        }
        run(&mut start).await;
        server
    }

    fn url(&self) -> String {
        format!("postgres://amtsbote:amtsbote@127.0.0.1:{}/postgres", self.port)
    }

    async fn stop(&self) {
        run(tokio::process::Command::new(script("postgres-node")).arg("stop").arg(&self.dir)).await;
    }

    async fn start_again(&self) {
        run(tokio::process::Command::new(script("postgres-node")).arg("start").arg(&self.dir).arg(self.port.to_string())).await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script("postgres-node")).arg("stop").arg(&self.dir).status();
    }
}

/// Hands in the submission with idempotency key `key`, as a careful
/// client does: to the next process on connection errors and answers
/// other than 202, with the same key, until one answers 202; its id.
async fn hand_in(client: &reqwest::Client, bases: &[String], alive: &[std::sync::atomic::AtomicBool], key: &str, body: &str) -> String {
    use std::sync::atomic::Ordering;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for attempt in 0.. {
        let index = (key.len() + attempt) % bases.len();
        if alive[index].load(Ordering::Relaxed) {
            let response = client
                .post(format!("{}/v1/submissions", bases[index]))
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body.to_owned())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            if let Ok(response) = response
                && response.status() == reqwest::StatusCode::ACCEPTED
            {
                return response.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{key}: no process accepted it within 2 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

/// Three amtsbote processes ("hosts": each its own config folder and temp
/// directory) on a three-node RabbitMQ cluster, a PostgreSQL ledger and an
/// S3 bucket, under 1,000 submissions handed to all three: one process is
/// killed with SIGKILL, a broker node stops and comes back, PostgreSQL
/// restarts. Every submission answered 202 reaches the back office; a
/// second delivery happens only for deliveries in flight at a fault and
/// carries the same delivery id; the ledger shows each one delivered.
/// While PostgreSQL or a majority of the broker is away, intake answers
/// 503, and what it refused is never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hosts_survive_a_killed_process_a_lost_broker_node_and_a_database_restart() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const TOTAL: usize = 1000;
    const CONCURRENCY: usize = 4;
    let started = std::time::Instant::now();
    let (cluster, postgres, s3) =
        tokio::join!(RabbitCluster::start("cluster-test"), PrivatePostgres::start("cluster-test"), crate::helpers::S3Server::start("shared"));
    eprintln!("engines up after {:?}", started.elapsed());
    let back_office = amtsbote_sample_back_office::SampleBackOffice::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    back_office.keep_duplicates("fv");

    let hosts: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let prefix = unique_prefix();
    let broker_settings = cluster.nodes();
    let store_settings = format!("  postgres:\n    url: {}\n    pool_size: 4\n    timeout: 5s\n", postgres.url());
    let target_settings = format!("    concurrency: {CONCURRENCY}\n");
    let mut processes = Vec::new();
    for (n, host) in hosts.iter().enumerate() {
        let blob_settings = s3.blob_settings("shared", "", crate::helpers::S3Server::SECRET_KEY, host.path());
        let setup = crate::helpers::Setup {
            broker_url: Some(cluster.url()),
            broker_settings: &broker_settings,
            store_settings: &store_settings,
            blob_settings: &blob_settings,
            target_settings: &target_settings,
            ..crate::helpers::Setup::default()
        };
        let config = host.path().join("amtsbote.yaml");
        std::fs::write(&config, crate::helpers::config_yaml(&setup, &back_office, &prefix, host.path())).unwrap();
        let temp = host.path().join("tmp");
        std::fs::create_dir(&temp).unwrap();
        let log = host.path().join(format!("host-{n}.log"));
        let env = [("TMPDIR", temp.to_str().unwrap())];
        processes.push(crate::helpers::AppProcess::start_with(&config, crate::helpers::free_port(), &log, &env).await);
    }
    for process in &processes {
        process.wait_until_ready(Duration::from_secs(60)).await;
    }
    let work_queue = Topology::new(&prefix).work_queue(&TargetName::parse("fv").unwrap());
    assert_eq!(cluster.members(&work_queue).await, 3, "RabbitMQ's default: a replica on every node, up to three");
    let bases: Arc<Vec<String>> = Arc::new(processes.iter().map(|p| p.base.clone()).collect());
    let alive: Arc<[AtomicBool; 3]> = Arc::new([AtomicBool::new(true), AtomicBool::new(true), AtomicBool::new(true)]);
    // Each submission carries an attachment above `keep_above_kib`: it
    // waits in the bucket, where any host's worker finds it.
    let mut submission = crate::helpers::gewerbeanmeldung("053150000000");
    submission["attachments"][0]["content"] = base64_of(&[7u8; 3000]).into();
    let body = Arc::new(submission.to_string());
    let client = crate::helpers::as_sender(reqwest::Client::builder()).build().unwrap();

    let accepted = Arc::new(AtomicUsize::new(0));
    let load = {
        let (bases, alive, accepted, body, client) = (bases.clone(), alive.clone(), accepted.clone(), body.clone(), client.clone());
        tokio::spawn(async move {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(24));
            let mut submissions = tokio::task::JoinSet::new();
            // About 40 a second: the faults below fall among them.
            let mut pace = tokio::time::interval(Duration::from_millis(25));
            for i in 0..TOTAL {
                pace.tick().await;
                let permit = in_flight.clone().acquire_owned().await.unwrap();
                let (bases, alive, accepted, body, client) = (bases.clone(), alive.clone(), accepted.clone(), body.clone(), client.clone());
                submissions.spawn(async move {
                    let id = hand_in(&client, &bases, &*alive, &format!("load-{i}"), &body).await;
                    accepted.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    id
                });
            }
            submissions.join_all().await
        })
    };
    let reached = |count: usize| {
        let accepted = accepted.clone();
        async move {
            while accepted.load(Ordering::Relaxed) < count {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    reached(150).await;
    alive[0].store(false, Ordering::Relaxed);
    processes[0].kill_9().await;
    eprintln!("host 0 killed at {} accepted, {:?}", accepted.load(Ordering::Relaxed), started.elapsed());
    reached(350).await;
    cluster.stop_node(2).await;
    eprintln!("broker node 2 stopped at {} accepted, {:?}", accepted.load(Ordering::Relaxed), started.elapsed());
    reached(550).await;
    cluster.start_node(2).await;
    eprintln!("broker node 2 back at {} accepted, {:?}", accepted.load(Ordering::Relaxed), started.elapsed());
    reached(750).await;
    postgres.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.start_again().await;
    eprintln!("PostgreSQL restarted at {} accepted, {:?}", accepted.load(Ordering::Relaxed), started.elapsed());
    let ids: Vec<String> = load.await.unwrap();
    eprintln!("{TOTAL} accepted after {:?}", started.elapsed());

    // Intake while PostgreSQL is away, then while a majority of the broker
    // is: 503, never 202.
    let away = |label: &'static str, count: usize| {
        let (client, bases, body) = (client.clone(), bases.clone(), body.clone());
        async move {
            let mut posts = tokio::task::JoinSet::new();
            for i in 0..count {
                let (client, base, body) = (client.clone(), bases[1 + i % 2].clone(), body.clone());
                posts.spawn(async move {
                    let response = client
                        .post(format!("{base}/v1/submissions"))
                        .header("content-type", "application/json")
                        .header("idempotency-key", format!("{label}-{i}"))
                        .body(body.to_string())
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    let problem = response.text().await.unwrap();
                    (status, problem)
                });
            }
            for (status, problem) in posts.join_all().await {
                assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{label}: {problem}");
            }
        }
    };
    postgres.stop().await;
    away("no-database", 6).await;
    postgres.start_again().await;
    tokio::join!(cluster.stop_node(2), cluster.stop_node(3));
    away("no-broker-majority", 4).await;
    tokio::join!(cluster.start_node(2), cluster.start_node(3));
    eprintln!("503s checked after {:?}", started.elapsed());

    let keys = crate::helpers::expected_keys(ids.clone(), "fv");
    let got = crate::helpers::wait_for_keys(&back_office, "/fv", &keys, Duration::from_secs(120)).await;
    let missing = keys.difference(&got).count();
    assert_eq!(missing, 0, "submissions answered 202 and never delivered; hosts' problems:\n{}", processes[1].problems());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut times: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for request in back_office.received() {
        *times.entry(request.idempotency_key.unwrap()).or_default() += 1;
    }
    assert!(times.keys().all(|key| keys.contains(key)), "a delivery of something never accepted (a refusal must be final)");
    let repeated: usize = times.values().map(|n| n - 1).sum();
    eprintln!("{} delivered, {repeated} delivered again (same delivery id) after the faults, {:?}", times.len(), started.elapsed());
    // In flight at the kill (one process) and at the database restart
    // (every process): at most each worker's concurrency, twice over.
    assert!(repeated <= 2 * 3 * CONCURRENCY, "{repeated} second deliveries");

    // The ledger's final word on each.
    let (ledger, connection) = tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let uuids: Vec<uuid::Uuid> = ids.iter().map(|id| id.parse().unwrap()).collect();
        let rows = ledger.query("SELECT state, count(*) FROM submissions WHERE id = ANY($1) GROUP BY state", &[&uuids]).await.unwrap();
        let states: Vec<(String, i64)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        if states == [("delivered".to_owned(), TOTAL as i64)] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the ledger says {states:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused: Vec<(String, i64)> = ledger
        .query(
            "SELECT s.state, count(*) FROM submissions s JOIN idempotency_keys k ON k.submission_id = s.id
             WHERE k.key LIKE 'no-%' GROUP BY s.state",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(refused.iter().all(|(state, _)| state == "refused"), "what intake refused stays refused: {refused:?}");
    eprintln!("done after {:?}", started.elapsed());
    for process in &mut processes[1..] {
        process.terminate(Duration::from_secs(15)).await;
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The ledger over TLS: the server's certificate checked against
/// `ca_file` and the host name, the password from a secret file; a server
/// whose certificate another CA signed is refused.
#[tokio::test]
async fn the_ledger_talks_to_postgresql_over_tls_and_checks_the_server() {
    use amtsbote::store::{PostgresSettings, PostgresStore, Store};
    use amtsbote_connector_conformance::pki::Pki;

    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::create_dir_all(&theirs).unwrap();
    let (pki, stranger) = (Pki::generate(&ours), Pki::generate(&theirs));
    let postgres = PrivatePostgres::start_with("tls-test", Some((&pki.server_certificate, &pki.server_key))).await;
    std::fs::write(dir.path().join("password"), "amtsbote\n").unwrap();
    let settings = |sslmode: &str, ca: &std::path::Path| -> PostgresSettings {
        serde_saphyr::from_str(&format!(
            "url: postgres://amtsbote@localhost:{}/postgres?sslmode={sslmode}\npassword: {{ file: password }}\nca_file: {}\ntimeout: 5s\n",
            postgres.port,
            ca.display()
        ))
        .unwrap()
    };
    let context = amtsbote_connector::Context::new(dir.path());
    let store = PostgresStore::open(&settings("require", &pki.ca), &context).await.expect("TLS with our CA");
    store.check_writable().await.unwrap();
    assert_eq!(store.ledger_id().await.unwrap().len(), 32);

    let Err(refused) = PostgresStore::open(&settings("require", &stranger.ca), &context).await else {
        panic!("a server whose certificate another CA signed is refused")
    };
    assert!(refused.to_string().contains("certificate"), "{refused}");
    // The server takes no plain connection: what worked above was TLS.
    assert!(PostgresStore::open(&settings("disable", &pki.ca), &context).await.is_err());
}
