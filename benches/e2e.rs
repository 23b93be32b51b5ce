//! amtsbote end to end, measured against the physical limit in one run.
//!
//!     scripts/bench
//!
//! (starts a private RabbitMQ, then `cargo bench --bench e2e`; set
//! `AMTSBOTE_BENCH_BROKER_URL` to run this against a broker of your own).
//!
//! 1. **Broker limit**: persistent 1 KiB messages with publisher confirms
//!    into a durable quorum queue, published and consumed at once with
//!    manual acks and a window of 256, as `brokerlimit ... quorum 256 pipe`
//!    does. Nothing is faster through this broker on this machine. It is
//!    measured before amtsbote's runs and again after them, and the ratio
//!    is to the mean of both: the limit moves between runs (14,200 to
//!    23,800/s on this project's machine, up to a fifth within one run)
//!    by more than amtsbote does.
//! 2. **Saturation**: the release binary of amtsbote with a demo-like
//!    config (sealing on, ledger on) takes 1 KiB Gewerbeanmeldung
//!    submissions over HTTP from `BENCH_CLIENTS` connections, maps each to
//!    XGewerbeanzeige 2.2 XML and POSTs it to a local HTTP back office.
//!    The rate counts from the first request to the last document the
//!    back office received.
//! 3. **Half load**: submissions at a fixed rate of half the saturated
//!    rate (open loop: each at its time, whether or not earlier ones were
//!    answered), for `BENCH_HALF_LOAD_SECONDS`; latency is from the
//!    scheduled send to the back office's receipt. Where amtsbote waited
//!    meanwhile comes from its own histograms (`/metrics` read before and
//!    after the run): the ledger's record, the broker's confirm, the
//!    ledger's record of it, the mapping sandbox; p50 and p99 are
//!    interpolated within their buckets as `histogram_quantile` does.
//!    For comparison, the broker alone at the same rate: 1 KiB messages
//!    published with confirms into a quorum queue, latency to the
//!    consumer's receipt (the floor any pipeline through it has).
//! 4. **Memory**: peak resident memory (VmHWM) of the amtsbote process and
//!    of its mapping sandbox processes, over the whole run; and the peak of
//!    their proportional set sizes together (PSS, sampled twice a second
//!    during the saturated run, where memory peaks), which counts the pages of
//!    the executable they share once instead of in every process.
//! 5. **CPU per submission** in the saturated run, from /proc: amtsbote's
//!    server and its sandbox processes, the broker's own process (the one
//!    listening on the broker URL's port, found in /proc/net/tcp), this
//!    process's (the load generator and the back office), the rest and the
//!    whole machine's. The headline is amtsbote's CPU per submission
//!    (server and sandboxes) divided by the broker's in the same run: at
//!    1.0 or less, amtsbote is never the part a platform adds hosts for.
//! 6. **The PostgreSQL ledger**, when `AMTSBOTE_BENCH_POSTGRES_URL` names a
//!    server (`scripts/bench` starts a private one): amtsbote saturated
//!    again, with its ledger in a fresh database there, and the CPU per
//!    submission of the PostgreSQL server's processes besides.
//!
//! Settings, from the environment: `BENCH_MESSAGES` (default 20000, per
//! measurement), `BENCH_CLIENTS` (64), `BENCH_HALF_LOAD_SECONDS` (10),
//! `BENCH_TARGET_CONCURRENCY` (the target's `concurrency`, 64),
//! `BENCH_RUST_LOG` (amtsbote's `RUST_LOG`, `warn`; it logs in JSON to a
//! file in the run's folder).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Notify;
use uuid::Uuid;

const TARGET: &str = "fv";
const SENDER_KEY: &str = "bench-sender-key";

struct Settings {
    broker_url: String,
    postgres_url: Option<String>,
    messages: usize,
    clients: usize,
    half_load: Duration,
    target_concurrency: u16,
    /// amtsbote's `RUST_LOG`: `warn` by default, so that the figures are
    /// amtsbote's work, not its log's; `info` (its own default) adds two
    /// JSON lines per submission.
    log: String,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str, default: usize| {
            std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number"))).unwrap_or(default)
        };
        Self {
            broker_url: std::env::var("AMTSBOTE_BENCH_BROKER_URL")
                .expect("AMTSBOTE_BENCH_BROKER_URL names the broker (scripts/bench starts one)"),
            postgres_url: std::env::var("AMTSBOTE_BENCH_POSTGRES_URL").ok(),
            messages: number("BENCH_MESSAGES", 20_000),
            clients: number("BENCH_CLIENTS", 64),
            half_load: Duration::from_secs(number("BENCH_HALF_LOAD_SECONDS", 10) as u64),
            target_concurrency: number("BENCH_TARGET_CONCURRENCY", 64) as u16,
            log: std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; this binary takes no arguments.
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(settings));
}

async fn run(settings: Settings) {
    println!(
        "machine: {} CPUs, {}; amtsbote logs at {} (BENCH_RUST_LOG), in JSON, to a file",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_total(),
        settings.log
    );
    let broker = BrokerProcess::find(&settings.broker_url);
    let broker_before = broker.cpu_seconds();
    let limit_before = broker_limit(&settings.broker_url, settings.messages, 256).await;
    let broker_per_message = (broker.cpu_seconds() - broker_before) / settings.messages as f64;
    println!(
        "broker limit (quorum, persistent 1 KiB, confirms, window 256, pipe): {limit_before:.0}/s, the broker's CPU {}/message",
        micros(broker_per_message)
    );

    let back_office = BackOffice::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("store:\n  path: {}\n", dir.path().join("ledger.sqlite").display());
    let mut amtsbote = Amtsbote::start(&settings, dir.path(), &back_office, &sqlite, &broker).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(settings.clients).build().unwrap();
    let submission = Submission::load();

    // Warm-up: connections, the ledger's pages, the sandbox processes.
    saturate(&client, &amtsbote.base, &submission, &back_office, settings.messages / 10, settings.clients).await;
    let before = amtsbote.cpu();
    let shared_once = PssSampler::start(amtsbote.child.id().unwrap());
    let saturated = saturate(&client, &amtsbote.base, &submission, &back_office, settings.messages, settings.clients).await;
    let cpu = amtsbote.cpu().since(&before, settings.messages);
    // Before the half-load run: reading a process's smaps takes its memory
    // map's lock, which would show in the latencies measured there.
    let pss = shared_once.peak_kib();
    println!(
        "amtsbote saturated: {:.0}/s end to end ({:.0}/s accepted at intake), {} submissions from {} connections",
        saturated.delivered_rate, saturated.accepted_rate, settings.messages, settings.clients
    );
    println!("CPU per submission, saturated: {cpu}");
    let rate = saturated.delivered_rate / 2.0;
    let histograms_before = Histograms::scrape(&client, &amtsbote.base).await;
    let paced = paced(&client, &amtsbote.base, &submission, &back_office, rate, settings.half_load).await;
    let waits = Histograms::scrape(&client, &amtsbote.base).await.since(&histograms_before).waits();
    let rss = amtsbote.peak_rss_kib();
    amtsbote.stop().await;
    // Measured again (see the module documentation); the broker is idle
    // again, amtsbote stopped.
    let limit_after = broker_limit(&settings.broker_url, settings.messages, 256).await;
    let limit = (limit_before + limit_after) / 2.0;
    println!("broker limit measured again after amtsbote's runs: {limit_after:.0}/s; the ratio to the limit is to the mean of both, {limit:.0}/s");

    println!("amtsbote at half load ({rate:.0}/s for {}s): {}", settings.half_load.as_secs(), paced.summary());
    println!("where it waited at half load (amtsbote's own histograms), p50 / p99: {waits}");
    let broker_alone = broker_paced(&settings.broker_url, rate, settings.half_load).await;
    println!("the broker alone at the same rate (publish to consumer, quorum, confirms): latency p50 / p99 / max {}", percentiles(&broker_alone));
    println!(
        "peak RSS: all amtsbote processes {} MiB (server {} MiB, {} sandbox processes {} MiB)",
        (rss.main + rss.sandboxes) / 1024,
        rss.main / 1024,
        rss.sandbox_count,
        rss.sandboxes / 1024
    );
    println!("peak memory of all amtsbote processes with shared pages counted once (PSS): {} MiB", pss / 1024);
    println!();
    println!("{}", cpu.headline());
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| **amtsbote ÷ broker, CPU per submission** | **{:.2}** ({} ÷ {}) |", cpu.ratio(), micros(cpu.main + cpu.sandboxes), micros(cpu.broker));
    println!("| broker limit (quorum, 1 KiB, confirms, pipe) | {limit:.0} msg/s (before amtsbote's runs {limit_before:.0}, after {limit_after:.0}) |");
    println!("| amtsbote end to end, saturated | {:.0} submissions/s |", saturated.delivered_rate);
    println!("| ratio to the broker limit | {:.2} |", saturated.delivered_rate / limit);
    println!("| latency at half load, p50 / p99 / max | {} |", paced.percentiles());
    println!("| the broker alone at that rate (publish to consumer), p50 / p99 / max | {} |", percentiles(&broker_alone));
    println!("| where amtsbote waited at half load, p50 / p99 | {waits} |");
    println!("| CPU per submission: amtsbote server / sandboxes / broker / load and back office / rest / machine | {cpu} |");
    println!("| the broker's CPU per message at its limit (lean client) | {} |", micros(broker_per_message));
    println!(
        "| peak RSS, all amtsbote processes (server + sandboxes) | {} MiB ({} + {} MiB) |",
        (rss.main + rss.sandboxes) / 1024,
        rss.main / 1024,
        rss.sandboxes / 1024
    );
    println!("| peak memory, all amtsbote processes, shared pages once (PSS) | {} MiB |", pss / 1024);

    if let Some(url) = &settings.postgres_url {
        let ledger = fresh_database(url).await;
        let dir = tempfile::tempdir().unwrap();
        let store = format!("store:\n  postgres:\n    url: {ledger}\n    pool_size: 32\n");
        let mut amtsbote = Amtsbote::start(&settings, dir.path(), &back_office, &store, &broker).await;
        saturate(&client, &amtsbote.base, &submission, &back_office, settings.messages / 10, settings.clients).await;
        let before = (amtsbote.cpu(), postgres_cpu_seconds());
        let saturated = saturate(&client, &amtsbote.base, &submission, &back_office, settings.messages, settings.clients).await;
        let database = (postgres_cpu_seconds() - before.1).max(0.0) / settings.messages as f64;
        let cpu = amtsbote.cpu().since(&before.0, settings.messages);
        amtsbote.stop().await;
        println!();
        println!(
            "amtsbote saturated, PostgreSQL ledger: {:.0}/s end to end ({:.0}/s accepted at intake); CPU per submission: {cpu}; the PostgreSQL server (in the rest) {:.0} µs",
            saturated.delivered_rate,
            saturated.accepted_rate,
            database * 1e6
        );
        println!("| amtsbote end to end, saturated, PostgreSQL ledger | {:.0} submissions/s |", saturated.delivered_rate);
        println!("| ratio to the broker limit, PostgreSQL ledger | {:.2} |", saturated.delivered_rate / limit);
        println!("| CPU per submission, PostgreSQL ledger: amtsbote server / sandboxes / broker / load and back office / rest (PostgreSQL) / machine | {cpu} |");
        println!("| amtsbote ÷ broker, CPU per submission, PostgreSQL ledger | {:.2} |", cpu.ratio());
        println!("| CPU per submission of the PostgreSQL server | {:.0} µs |", database * 1e6);
    }
}

/// A new database on the server at `url`; the URL that names it.
async fn fresh_database(url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("the PostgreSQL server answers");
    tokio::spawn(connection);
    let name = format!("amtsbote_bench_{}", Uuid::new_v4().simple());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{name}")
}

/// User and system time of every PostgreSQL server process, in seconds
/// (its backends come and go with the pool's connections; those that
/// ended between two readings are missed, which a warmed-up pool makes
/// rare).
fn postgres_cpu_seconds() -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|name| name.trim() == "postgres"))
        .map(cpu_seconds)
        .sum()
}

/// What `brokerlimit ... quorum <window> pipe` measures: messages per
/// second through one queue that is fed and drained at once.
async fn broker_limit(url: &str, messages: usize, window: usize) -> f64 {
    let QuorumQueue { connection, publishing, queue, mut consumer, _consuming } = QuorumQueue::open(url, "limit", window as u16).await;
    let body = vec![b'x'; 1024];
    let started = Instant::now();
    let drain = tokio::spawn(async move {
        let mut got = 0;
        while let Some(delivery) = consumer.next().await {
            delivery.unwrap().ack(BasicAckOptions::default()).await.unwrap();
            got += 1;
            if got == messages {
                break;
            }
        }
    });
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..messages {
        let properties = BasicProperties::default().with_delivery_mode(2);
        let confirm = publishing.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, properties);
        pending.push_back(confirm.await.unwrap());
        if pending.len() >= window {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    while let Some(confirm) = pending.pop_front() {
        confirm.await.unwrap();
    }
    drain.await.unwrap();
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let _ = publishing.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = connection.close(200, "measured".into()).await;
    rate
}

/// A fresh durable quorum queue with a publishing channel in confirm mode
/// and a consumer (manual acks, `window` unacknowledged at most), on a
/// connection of their own.
struct QuorumQueue {
    connection: Connection,
    publishing: lapin::Channel,
    queue: String,
    consumer: lapin::Consumer,
    /// Kept open for as long as the consumer is used.
    _consuming: lapin::Channel,
}

impl QuorumQueue {
    async fn open(url: &str, purpose: &str, window: u16) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("the broker is reachable");
        let publishing = connection.create_channel().await.unwrap();
        let queue = format!("amtsbote-bench.{purpose}.{}", Uuid::new_v4().simple());
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        publishing
            .queue_declare(queue.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, arguments)
            .await
            .unwrap();
        publishing.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let consuming = connection.create_channel().await.unwrap();
        consuming.basic_qos(window, BasicQosOptions::default()).await.unwrap();
        let consumer = consuming
            .basic_consume(queue.as_str().into(), purpose.into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap();
        Self { connection, publishing, queue, consumer, _consuming: consuming }
    }
}

/// The latency floor the broker sets: 1 KiB persistent messages into a
/// durable quorum queue at `rate` for `duration`, each published at its
/// scheduled time with a publisher confirm, consumed with manual acks;
/// sorted latencies from the scheduled time to the consumer's receipt.
async fn broker_paced(url: &str, rate: f64, duration: Duration) -> Vec<Duration> {
    let QuorumQueue { connection, publishing, queue, mut consumer, _consuming } = QuorumQueue::open(url, "paced", 64).await;
    let count = (rate * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let drain = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(count);
        while latencies.len() < count {
            let delivery = consumer.next().await.expect("the consumer runs").unwrap();
            let number = u64::from_le_bytes(delivery.data[..8].try_into().unwrap());
            latencies.push((started + interval.mul_f64(number as f64)).elapsed());
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        latencies
    });
    let mut confirms = tokio::task::JoinSet::new();
    for number in 0..count as u64 {
        tokio::time::sleep_until((started + interval.mul_f64(number as f64)).into()).await;
        let mut body = vec![b'x'; 1024];
        body[..8].copy_from_slice(&number.to_le_bytes());
        let properties = BasicProperties::default().with_delivery_mode(2);
        let confirm =
            publishing.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, properties).await.unwrap();
        confirms.spawn(async move { confirm.await.unwrap() });
    }
    confirms.join_all().await;
    let mut latencies = drain.await.unwrap();
    latencies.sort();
    let _ = publishing.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = connection.close(200, "measured".into()).await;
    latencies
}

/// The back office: answers every POST at once and notes when each
/// delivery id arrived.
struct BackOffice {
    url: String,
    arrivals: Arc<Mutex<HashMap<Uuid, Instant>>>,
    count: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
}

impl BackOffice {
    async fn start() -> Self {
        let arrivals: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(Notify::new());
        let (noted, counted, told) = (arrivals.clone(), count.clone(), arrived.clone());
        let app = axum::Router::new().route(
            "/{path}",
            axum::routing::post(move |headers: HeaderMap, _body: axum::body::Bytes| {
                let (noted, counted, told) = (noted.clone(), counted.clone(), told.clone());
                async move {
                    let at = Instant::now();
                    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
                    if let Some(key) = key
                        && noted.lock().unwrap().insert(key, at).is_none()
                    {
                        counted.fetch_add(1, Ordering::Relaxed);
                        told.notify_one();
                    }
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/{TARGET}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, arrivals, count, arrived }
    }

    /// Forgets what arrived so far.
    fn reset(&self) {
        self.arrivals.lock().unwrap().clear();
        self.count.store(0, Ordering::Relaxed);
    }

    async fn wait_for(&self, count: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.count.load(Ordering::Relaxed) < count {
            let waited = tokio::time::timeout_at(deadline, self.arrived.notified()).await;
            assert!(
                waited.is_ok() || self.count.load(Ordering::Relaxed) >= count,
                "the back office got {} of {count} documents in {within:?}",
                self.count.load(Ordering::Relaxed)
            );
        }
    }
}

/// The release binary, serving a config of its own.
struct Amtsbote {
    child: tokio::process::Child,
    base: String,
    broker: BrokerProcess,
}

impl Amtsbote {
    /// `store`: the config's `store:` section.
    async fn start(settings: &Settings, dir: &Path, back_office: &BackOffice, store: &str, broker: &BrokerProcess) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let hash = amtsbote::domain::hex(&<sha2::Sha256 as sha2::Digest>::digest(SENDER_KEY));
        let seal_key = dir.join("seal.key");
        std::fs::write(&seal_key, amtsbote::access::random_hex32()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = format!(
            "http:\n  listen: 127.0.0.1:{port}\nbroker:\n  url: {url}\n  prefix: amtsbote-bench-{prefix}\n{store}mappings: {mappings}\n\
             encryption:\n  keys:\n    bench: {{ file: {seal} }}\n  seal_with: bench\n\
             senders:\n  - name: bench\n    api_keys_sha256: [{hash}]\n    regions: [\"\"]\n\
             targets:\n  {TARGET}:\n    mapping: xgewerbeanzeige-2.2/gewerbeanmeldung.yaml\n    concurrency: {concurrency}\n    connector:\n      http:\n        url: {back_office}\n\
             routes:\n  - service: \"99050012104000\"\n    region: \"\"\n    targets: [{TARGET}]\n",
            url = settings.broker_url,
            prefix = Uuid::new_v4().simple(),
            mappings = root.join("mappings").display(),
            seal = seal_key.display(),
            concurrency = settings.target_concurrency,
            back_office = back_office.url,
        );
        let path = dir.join("amtsbote.yaml");
        std::fs::write(&path, config).unwrap();
        // Its log goes to a file, in JSON, as under a service manager.
        let log = dir.join("amtsbote.log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_amtsbote"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", &settings.log)
            .env("AMTSBOTE_LOG_FORMAT", "json")
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "amtsbote did not get ready; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, base, broker: broker.clone() }
    }

    /// CPU time used so far by amtsbote, by its sandbox processes and by
    /// the whole machine (the broker, this load generator and the back
    /// office included).
    fn cpu(&self) -> Cpu {
        let pid = self.child.id().unwrap();
        Cpu {
            main: cpu_seconds(pid),
            sandboxes: children_of(pid).into_iter().map(cpu_seconds).sum(),
            broker: self.broker.cpu_seconds(),
            load: cpu_seconds(std::process::id()),
            machine: machine_busy_seconds(),
        }
    }

    fn peak_rss_kib(&self) -> Rss {
        let pid = self.child.id().unwrap();
        let sandboxes: Vec<u32> = children_of(pid);
        Rss {
            main: vm_hwm_kib(pid),
            sandboxes: sandboxes.iter().map(|&child| vm_hwm_kib(child)).sum(),
            sandbox_count: sandboxes.len(),
        }
    }

    async fn stop(&mut self) {
        let pid = self.child.id().unwrap().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// Samples the proportional set size (PSS) of amtsbote and its sandbox
/// processes twice a second and keeps the peak of their sum: the memory
/// they take together, the executable's pages they share counted once
/// (peak RSS counts them in every process).
struct PssSampler {
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl PssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        std::thread::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let pss: u64 = std::iter::once(pid)
                        .chain(children_of(pid))
                        .map(|p| kib_field(&format!("/proc/{p}/smaps_rollup"), "Pss:"))
                        .sum();
                    peak.fetch_max(pss, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        });
        Self { peak, stop }
    }

    fn peak_kib(&self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

struct Rss {
    main: u64,
    sandboxes: u64,
    sandbox_count: usize,
}

struct Cpu {
    main: f64,
    sandboxes: f64,
    /// The broker's own process (and its children).
    broker: f64,
    /// This process: the load generator and the back office.
    load: f64,
    machine: f64,
}

impl Cpu {
    /// Per submission, the CPU used since `before` (a sandbox process
    /// started in between counts whole, as it should).
    fn since(&self, before: &Cpu, submissions: usize) -> CpuPerSubmission {
        let per = |now: f64, then: f64| (now - then).max(0.0) / submissions as f64;
        CpuPerSubmission {
            main: per(self.main, before.main),
            sandboxes: per(self.sandboxes, before.sandboxes),
            broker: per(self.broker, before.broker),
            load: per(self.load, before.load),
            machine: per(self.machine, before.machine),
        }
    }
}

struct CpuPerSubmission {
    main: f64,
    sandboxes: f64,
    broker: f64,
    load: f64,
    machine: f64,
}

impl CpuPerSubmission {
    /// amtsbote's CPU per submission (server and sandboxes) over the
    /// broker's per submission, in the same run.
    fn ratio(&self) -> f64 {
        (self.main + self.sandboxes) / self.broker.max(f64::MIN_POSITIVE)
    }

    fn headline(&self) -> String {
        format!(
            "amtsbote ÷ broker, CPU per submission: {:.2} (amtsbote {} = server {} + sandboxes {}; broker {})",
            self.ratio(),
            micros(self.main + self.sandboxes),
            micros(self.main),
            micros(self.sandboxes),
            micros(self.broker)
        )
    }
}

impl std::fmt::Display for CpuPerSubmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rest = self.machine - self.main - self.sandboxes - self.broker - self.load;
        write!(
            f,
            "amtsbote server {} / sandboxes {} / broker {} / load generator and back office {} / rest {} / machine {}",
            micros(self.main),
            micros(self.sandboxes),
            micros(self.broker),
            micros(self.load),
            micros(rest),
            micros(self.machine)
        )
    }
}

fn micros(seconds: f64) -> String {
    format!("{:.0} µs", seconds * 1e6)
}

/// The broker's own process: the one that listens on the broker URL's
/// port (for the private node, RabbitMQ's `beam.smp`).
#[derive(Clone)]
struct BrokerProcess {
    pid: Option<u32>,
}

impl BrokerProcess {
    fn find(url: &str) -> Self {
        let port = url
            .split_once("://")
            .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(""))
            .and_then(|authority| authority.rsplit('@').next())
            .and_then(|host_port| host_port.rsplit_once(':'))
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .unwrap_or(5672);
        let pid = listening_process(port);
        if pid.is_none() {
            println!("(the broker's process was not found on port {port}: a broker elsewhere; its CPU counts as 0)");
        }
        Self { pid }
    }

    /// Its CPU time and its children's (Erlang's port programs), in seconds.
    fn cpu_seconds(&self) -> f64 {
        self.pid.map_or(0.0, |pid| cpu_seconds(pid) + children_of(pid).into_iter().map(cpu_seconds).sum::<f64>())
    }
}

/// The process with a socket listening on TCP `port`, from
/// /proc/net/tcp{,6} and the processes' descriptors.
fn listening_process(port: u16) -> Option<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|table| std::fs::read_to_string(table).unwrap_or_default().lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            // State 0A: LISTEN.
            (local_port == port && *fields.get(3)? == "0A").then(|| fields.get(9).map(|inode| format!("socket:[{inode}]")))?
        })
        .collect();
    std::fs::read_dir("/proc").ok()?.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| inodes.iter().any(|inode| target.to_str() == Some(inode.as_str())))
        })
    })
}

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User and system time of a process, all its threads, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; fields after it count from its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / TICKS_PER_SECOND
}

/// Busy time of all CPUs (everything but idle and iowait), in seconds.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let all: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (all - idle) / TICKS_PER_SECOND
}

fn vm_hwm_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmHWM:")
}

/// A `<name> <n> kB` line of a /proc file, in KiB (0 if missing).
fn kib_field(file: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| {
            let status = std::fs::read_to_string(format!("/proc/{candidate}/status")).unwrap_or_default();
            status.lines().any(|line| line.strip_prefix("PPid:").is_some_and(|ppid| ppid.trim() == pid.to_string()))
        })
        .collect()
}

fn memory_total() -> String {
    format!("{} GiB RAM", kib_field("/proc/meminfo", "MemTotal:") / 1024 / 1024)
}

/// The demo's Gewerbeanmeldung, compact (about 1.1 KiB), with a reference
/// of its own for each copy.
struct Submission(serde_json::Value);

impl Submission {
    fn load() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/submissions/1-gewerbe-koeln.json");
        Self(serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
    }

    fn numbered(&self, number: usize) -> String {
        let mut copy = self.0.clone();
        copy["reference"] = format!("BENCH-{number:08}").into();
        serde_json::to_string(&copy).unwrap()
    }
}

/// Posts one submission; the id amtsbote gave it.
async fn post(client: &reqwest::Client, base: &str, body: String) -> Uuid {
    let response = client
        .post(format!("{base}/v1/submissions"))
        .bearer_auth(SENDER_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("amtsbote answers");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED, "{}", response.text().await.unwrap_or_default());
    let answer: serde_json::Value = response.json().await.unwrap();
    answer["id"].as_str().unwrap().parse().unwrap()
}

struct Saturated {
    accepted_rate: f64,
    delivered_rate: f64,
}

/// `count` submissions from `clients` connections, each posting as soon
/// as its last one was accepted.
async fn saturate(
    client: &reqwest::Client,
    base: &str,
    submission: &Submission,
    back_office: &BackOffice,
    count: usize,
    clients: usize,
) -> Saturated {
    back_office.reset();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, base, next) = (client.clone(), base.to_owned(), next.clone());
        let submission = Submission(submission.0.clone());
        senders.spawn(async move {
            loop {
                let number = next.fetch_add(1, Ordering::Relaxed);
                if number >= count {
                    break;
                }
                post(&client, &base, submission.numbered(number)).await;
            }
        });
    }
    while senders.join_next().await.is_some() {}
    let accepted = started.elapsed();
    back_office.wait_for(count, Duration::from_secs(600)).await;
    let delivered = started.elapsed();
    Saturated { accepted_rate: count as f64 / accepted.as_secs_f64(), delivered_rate: count as f64 / delivered.as_secs_f64() }
}

struct Paced {
    /// From the scheduled send to the back office's receipt, sorted.
    latencies: Vec<Duration>,
    /// From the scheduled send to intake's answer (202), sorted: what of
    /// the latency is intake's.
    answers: Vec<Duration>,
    late_sends: usize,
}

impl Paced {
    fn percentiles(&self) -> String {
        percentiles(&self.latencies)
    }

    fn summary(&self) -> String {
        format!(
            "latency p50 / p99 / max {} ({} submissions, {} sent late; intake's answer {})",
            self.percentiles(),
            self.latencies.len(),
            self.late_sends,
            percentiles(&self.answers)
        )
    }
}

/// The bucket counts of amtsbote's duration histograms, as `/metrics`
/// has them: by series (the name and labels without `le`), the upper
/// bounds with their cumulative counts.
struct Histograms(HashMap<String, Vec<(f64, f64)>>);

impl Histograms {
    async fn scrape(client: &reqwest::Client, base: &str) -> Self {
        let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let mut series: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        for line in text.lines() {
            let Some((name, rest)) = line.split_once("_bucket{") else { continue };
            let Some((labels, count)) = rest.split_once("} ") else { continue };
            // Label values here hold no commas: the configured names and
            // fixed words.
            let (le, labels): (Vec<&str>, Vec<&str>) = labels.split(',').partition(|label| label.starts_with("le=\""));
            let bound = le[0].trim_start_matches("le=\"").trim_end_matches('"');
            let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().unwrap() };
            let count: f64 = count.split_whitespace().next().unwrap().parse().unwrap();
            series.entry(format!("{name}{{{}}}", labels.join(","))).or_default().push((bound, count));
        }
        Self(series)
    }

    /// What was observed since `earlier`.
    fn since(mut self, earlier: &Histograms) -> Self {
        for (name, buckets) in &mut self.0 {
            if let Some(before) = earlier.0.get(name) {
                for ((_, count), (_, earlier)) in buckets.iter_mut().zip(before) {
                    *count -= earlier;
                }
            }
        }
        self
    }

    /// The `q` quantile of a series, interpolated within its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without observations.
    fn quantile(&self, series: &str, q: f64) -> Option<Duration> {
        let buckets = self.0.get(series)?;
        let total = buckets.last()?.1;
        if total == 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(bound, count) in buckets {
            if count >= rank {
                let seconds = if bound.is_infinite() { lower.0 } else { lower.0 + (bound - lower.0) * (rank - lower.1) / (count - lower.1) };
                return Some(Duration::from_secs_f64(seconds));
            }
            lower = (bound, count);
        }
        None
    }

    /// p50 / p99 of each step intake and the worker wait for.
    fn waits(&self) -> String {
        let steps = [
            ("ledger record", "amtsbote_intake_step_duration_seconds{step=\"ledger_record\"}"),
            ("broker confirm", "amtsbote_intake_step_duration_seconds{step=\"broker_confirm\"}"),
            ("ledger confirm", "amtsbote_intake_step_duration_seconds{step=\"ledger_confirm\"}"),
            ("mapping", &format!("amtsbote_mapping_duration_seconds{{target=\"{TARGET}\"}}")),
        ];
        let ms = |d: Option<Duration>| d.map_or("–".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0));
        let waits: Vec<String> = steps
            .iter()
            .map(|(step, series)| format!("{step} {} / {} ms", ms(self.quantile(series, 0.5)), ms(self.quantile(series, 0.99))))
            .collect();
        waits.join(", ")
    }
}

/// p50 / p99 / max of sorted durations.
fn percentiles(sorted: &[Duration]) -> String {
    let percentile = |p: f64| sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1];
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    format!("{} / {} / {}", ms(percentile(0.5)), ms(percentile(0.99)), ms(*sorted.last().unwrap()))
}

/// Submissions at `rate` per second for `duration`, each sent at its
/// scheduled time by a task of its own; latency counts from that time.
async fn paced(
    client: &reqwest::Client,
    base: &str,
    submission: &Submission,
    back_office: &BackOffice,
    rate: f64,
    duration: Duration,
) -> Paced {
    back_office.reset();
    let count = (rate * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut sent = tokio::task::JoinSet::new();
    let mut late_sends = 0;
    for number in 0..count {
        let scheduled = started + interval.mul_f64(number as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        if scheduled.elapsed() > Duration::from_millis(5) {
            late_sends += 1;
        }
        let (client, base, body) = (client.clone(), base.to_owned(), submission.numbered(1_000_000 + number));
        sent.spawn(async move {
            let id = post(&client, &base, body).await;
            (scheduled, scheduled.elapsed(), id)
        });
    }
    let mut scheduled_of = HashMap::new();
    let mut answers = Vec::with_capacity(count);
    let target = amtsbote::domain::TargetName::parse(TARGET).unwrap();
    while let Some(result) = sent.join_next().await {
        let (scheduled, answered, id) = result.unwrap();
        scheduled_of.insert(amtsbote::domain::delivery_id(id, &target), scheduled);
        answers.push(answered);
    }
    answers.sort();
    back_office.wait_for(count, Duration::from_secs(600)).await;
    let arrivals = back_office.arrivals.lock().unwrap();
    let mut latencies: Vec<Duration> =
        scheduled_of.iter().map(|(delivery, scheduled)| arrivals[delivery].saturating_duration_since(*scheduled)).collect();
    latencies.sort();
    Paced { latencies, answers, late_sends }
}
