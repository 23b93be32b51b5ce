//! Against a real PostgreSQL server: `AMTSBOTE_TEST_POSTGRES_URL`, set by
//! `scripts/test`, which starts a private one (`scripts/postgres-node`).
//! Each test gets a database of its own.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{PostgresSettings, PostgresStore};
use crate::store::conformance;
use crate::store::{AttemptResult, Claim, IdempotencyKey, Store, SubmissionState};

fn server_url() -> String {
    std::env::var("AMTSBOTE_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!("AMTSBOTE_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts a private PostgreSQL server")
    })
}

/// A new, empty database on the test server; its connection settings.
async fn fresh_database() -> tokio_postgres::Config {
    let mut config: tokio_postgres::Config = server_url().parse().expect("a PostgreSQL URL");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("the test server answers");
    tokio::spawn(connection);
    let name = format!("amtsbote_test_{}", Uuid::new_v4().simple());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    config.dbname(&name);
    config
}

async fn open(config: tokio_postgres::Config) -> PostgresStore {
    PostgresStore::connect(config, None, 8, Duration::from_secs(10)).await.unwrap()
}

store_conformance!(|| async { ((), Arc::new(open(fresh_database().await).await) as Arc<dyn Store>) });

#[tokio::test]
async fn processes_starting_at_once_migrate_once_and_all_start() {
    let config = fresh_database().await;
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let config = config.clone();
        starting.spawn(async move { PostgresStore::connect(config, None, 2, Duration::from_secs(20)).await.map(drop) });
    }
    for started in starting.join_all().await {
        started.expect("every process starts");
    }
    let store = open(config).await;
    let client = store.client().await.unwrap();
    let applied: i64 = client.query_one("SELECT count(*) FROM refinery_schema_history", &[]).await.unwrap().get(0);
    assert_eq!(applied, super::migrations::runner().get_migrations().len() as i64);
}

#[tokio::test]
async fn two_processes_claiming_one_key_at_once_get_one_fresh_claim() {
    let config = fresh_database().await;
    let (first, second) = (open(config.clone()).await, open(config).await);
    for round in 0..20 {
        let key = || Some(IdempotencyKey { key: format!("key-{round}"), fingerprint: [1; 32] });
        let (a, b) = tokio::join!(
            first.begin_intake(conformance::submission(Uuid::now_v7()), key()),
            second.begin_intake(conformance::submission(Uuid::now_v7()), key()),
        );
        let mut claims = [a.unwrap(), b.unwrap()];
        claims.sort_by_key(|claim| claim != &Claim::Fresh);
        assert_eq!(claims, [Claim::Fresh, Claim::InProgress], "round {round}");
    }
}

#[tokio::test]
async fn deliveries_recorded_by_two_processes_at_once_give_the_true_state() {
    let config = fresh_database().await;
    let (first, second) = (open(config.clone()).await, open(config).await);
    for _ in 0..20 {
        let id = conformance::accepted(&first, conformance::submission(Uuid::now_v7())).await;
        let delivered = |target: &str| crate::store::AttemptRecord {
            submission: id,
            target: crate::domain::TargetName::parse(target).unwrap(),
            attempt: 1,
            mapping_version: "sha256:test".into(),
            rendering: crate::store::Rendering::NotReached,
            duration: None,
            result: AttemptResult::Delivered { detail: "HTTP 200".into(), receipt: None },
        };
        let (a, b) = tokio::join!(first.record_attempt(delivered("a")), second.record_attempt(delivered("b")));
        a.unwrap();
        b.unwrap();
        assert_eq!(first.status(id).await.unwrap().unwrap().status, SubmissionState::Delivered);
    }
}

#[tokio::test]
async fn processes_pruning_at_once_remove_each_submission_once() {
    let config = fresh_database().await;
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(open(config.clone()).await);
    }
    let old = OffsetDateTime::now_utc() - time::Duration::days(100);
    for _ in 0..60 {
        let mut submission = conformance::submission(Uuid::now_v7());
        submission.received_at = old;
        let id = submission.id;
        stores[0].begin_intake(submission, None).await.unwrap();
        stores[0].refuse_intake(id, "test").await.unwrap();
    }
    let before = OffsetDateTime::now_utc() - time::Duration::days(90);
    let (a, b, c) = tokio::join!(stores[0].prune(before, 25), stores[1].prune(before, 25), stores[2].prune(before, 25));
    let first_round = a.unwrap() + b.unwrap() + c.unwrap();
    let rest = stores[0].prune(before, 100).await.unwrap();
    assert_eq!(first_round + rest, 60, "each submission pruned once, none left");
}

#[tokio::test]
async fn the_password_comes_from_a_secret_reference_and_stays_out_of_debug_output() {
    let config = fresh_database().await;
    let url = server_url();
    let password = match config.get_password() {
        Some(password) => String::from_utf8(password.to_vec()).unwrap(),
        None => return, // a server that trusts loopback: nothing to prove here
    };
    let without_password = url.replacen(&format!(":{password}@"), "@", 1);
    assert_ne!(without_password, url, "the test URL carries the password");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pg-password"), format!("{password}\n")).unwrap();
    let settings: PostgresSettings = serde_saphyr::from_str(&format!(
        "url: {without_password}\npassword: {{ file: pg-password }}\npool_size: 2\n"
    ))
    .unwrap();
    let store = PostgresStore::open(&settings, &amtsbote_connector::Context::new(dir.path())).await.unwrap();
    store.check_writable().await.unwrap();
    let shown = format!("{settings:?}");
    assert!(!shown.contains(&password) && !shown.contains("127.0.0.1"), "{shown}");
}

#[tokio::test]
async fn a_server_that_is_not_there_fails_the_start_within_the_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config: tokio_postgres::Config = format!("postgres://amtsbote@127.0.0.1:{port}/amtsbote").parse().unwrap();
    let started = std::time::Instant::now();
    let Err(error) = PostgresStore::connect(config, None, 2, Duration::from_secs(2)).await else { panic!("no server, no store") };
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(error.to_string().starts_with("store:"), "{error}");
}
