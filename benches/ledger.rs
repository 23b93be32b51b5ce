//! The SQLite ledger alone: what one submission's life costs it.
//!
//!     cargo bench --bench ledger
//!
//! Each submission takes the three writes it takes in amtsbote (intake's
//! claim, intake's record of the broker's confirm, the worker's delivered
//! attempt), from `BENCH_LEDGER_CONCURRENCY` tasks at once (default 64, as
//! many as the e2e benchmark's connections) for `BENCH_LEDGER_SUBMISSIONS`
//! submissions (default 30000). Printed: submissions per second, this
//! process's CPU per submission (the writer thread and the tasks that wait
//! for it, nothing else runs here), and the bytes the WAL received per
//! submission. Then it times what a `/metrics` scrape asks of the ledger
//! (`Store::oldest_undelivered`) and what a dashboard page asks
//! (`Store::activity` over the last hour, which now holds all of the
//! run's submissions), each the median of a few samples.
//! `scripts/bench` shows the ledger in its place; this shows it alone,
//! quickly enough to try a change.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use amtsbote::domain::TargetName;
use amtsbote::store::{AttemptRecord, AttemptResult, Fingerprint, NewSubmission, Rendering, SqliteStore, Store};
use time::OffsetDateTime;
use uuid::Uuid;

fn main() {
    let number = |name: &str, default: usize| {
        std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number"))).unwrap_or(default)
    };
    let submissions = number("BENCH_LEDGER_SUBMISSIONS", 30_000);
    let concurrency = number("BENCH_LEDGER_CONCURRENCY", 64);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        // A first round warms the caches and grows the file as a running
        // ledger's is.
        run(&store, submissions / 10, concurrency).await;
        let wal_before = wal_bytes_written();
        let cpu_before = process_cpu();
        let started = Instant::now();
        run(&store, submissions, concurrency).await;
        let elapsed = started.elapsed();
        let cpu = process_cpu() - cpu_before;
        let written = wal_bytes_written() - wal_before;
        println!(
            "ledger (SQLite), {submissions} submissions from {concurrency} tasks: {:.0}/s, CPU {:.1} µs/submission, {:.1} KiB written/submission",
            submissions as f64 / elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / submissions as f64,
            written as f64 / 1024.0 / submissions as f64,
        );
        let in_the_hour = submissions + submissions / 10;
        let scrape = median_of(7, || async {
            assert!(store.oldest_undelivered().await.unwrap().is_empty(), "everything was delivered");
        })
        .await;
        let page = median_of(7, || async {
            let activity = store.activity(OffsetDateTime::now_utc() - time::Duration::hours(1)).await.unwrap();
            assert_eq!(activity["fv"].delivered as usize, in_the_hour);
        })
        .await;
        println!(
            "with {in_the_hour} submissions in the last hour, the ledger's part of a scrape: {:.2} ms; of a dashboard page: {:.1} ms",
            scrape.as_secs_f64() * 1e3,
            page.as_secs_f64() * 1e3
        );
    });
}

async fn run(store: &Arc<dyn Store>, submissions: usize, concurrency: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < submissions {
                    life(&*store).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// The median time of `times` runs of `f`.
async fn median_of<F: std::future::Future<Output = ()>>(times: usize, f: impl Fn() -> F) -> Duration {
    let mut samples = Vec::with_capacity(times);
    for _ in 0..times {
        let started = Instant::now();
        f().await;
        samples.push(started.elapsed());
    }
    samples.sort();
    samples[times / 2]
}

/// A submission's writes as intake and a worker make them.
async fn life(store: &dyn Store) {
    let id = Uuid::now_v7();
    let target = TargetName::parse("fv").unwrap();
    let submission = NewSubmission {
        id,
        service: "99050012104000".into(),
        region: "053150000000".into(),
        reference: Some(format!("BENCH-{}", id.simple())),
        received_at: OffsetDateTime::now_utc(),
        targets: vec![target.clone()],
        size: 1100,
        sha256: "ab".repeat(32),
        sender: "bench".into(),
    };
    store.begin_intake(submission, None).await.unwrap();
    store.confirm_intake(id).await.unwrap();
    store
        .record_attempt(AttemptRecord {
            submission: id,
            target,
            attempt: 1,
            mapping_version: format!("sha256:{}", "cd".repeat(32)),
            rendering: Rendering::Rendered(Fingerprint { size: 2400, sha256: "ef".repeat(32) }),
            duration: Some(Duration::from_millis(3)),
            result: AttemptResult::Delivered { detail: "HTTP 200".into(), receipt: None },
        })
        .await
        .unwrap();
}

/// User and system CPU of this process so far (/proc/self/stat, in clock
/// ticks of 10 ms; the runs are long enough for that).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Bytes this process wrote to files so far (/proc/self/io `wchar`).
fn wal_bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).unwrap().trim().parse().unwrap()
}
