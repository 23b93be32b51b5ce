//! `amtsbote demo`: sample back offices on loopback, amtsbote with the
//! example config, the sample submissions; prints what arrived where.
//!
//! The back offices are `amtsbote-sample-back-office`
//! (`tests/back-office`), the same the integration tests deliver to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use amtsbote_sample_back_office::SampleBackOffice;
use axum::http::StatusCode;

use crate::app::Application;
use crate::config::Config;
use crate::fit_connect::settings::FitConnectSettings;

/// The API key of the demo config's sender (`examples/demo/amtsbote.yaml`
/// holds its hash). Demo only.
pub const DEMO_SENDER_KEY: &str = "demo-sender-key";

/// The demo config's operator token. Demo only.
const DEMO_OPERATOR_TOKEN: &str = "demo-operator-token";

/// The reference the demo's FIT-Connect submission carries, by which its
/// delivery is found.
const FIT_CONNECT_REFERENCE: &str = "FIT-CONNECT-DEMO";

/// Each demo run starts from nothing: a fresh ledger, so that its
/// idempotency keys do not replay the previous run's answers, and no
/// blobs, whose store remembers the ledger it served and would refuse the
/// new one.
fn reset_state(config: &Config) -> anyhow::Result<()> {
    let ledger = config.store.path.as_os_str();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = ledger.to_owned();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing the previous demo's ledger {}", Path::new(&file).display()));
            }
            _ => {}
        }
    }
    if config.blobs.s3.is_none() {
        match std::fs::remove_dir_all(&config.blobs.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing the previous demo's blobs {}", config.blobs.path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs the demo end to end and prints a report.
/// With `stay`, amtsbote keeps serving after the report until Ctrl-C, so
/// that the dashboard and metrics can be looked at.
pub async fn run(config_path: &Path, submissions: &Path, stay: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path).with_context(|| format!("loading {}", config_path.display()))?;
    reset_state(&config)?;
    let back_office = SampleBackOffice::start(([127, 0, 0, 1], 18090).into())
        .await
        .context("starting the sample back office on 127.0.0.1:18090")?;
    // The first delivery to Köln's trade office meets it briefly
    // unavailable: the report shows the retry (its policy retries after 1 s).
    back_office.script_for("/koeln/gewerbeamt", &[StatusCode::SERVICE_UNAVAILABLE]);
    let fit_connect = match &config.fit_connect {
        Some(settings) => Some(FitConnectLeg::start(settings, &config.base_dir).await?),
        None => None,
    };
    let app = Application::build(&config).await?;
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    println!("amtsbote demo: intake {base}, broker {}, back offices {}", config.broker.display_url(), back_office.url(""));
    let mut files: Vec<PathBuf> = std::fs::read_dir(submissions)
        .with_context(|| format!("reading {}", submissions.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();

    // The demo config's sender; it reads back its own submissions with the
    // same key.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {DEMO_SENDER_KEY}").parse().expect("an ASCII header"));
    let client = reqwest::Client::builder().default_headers(headers).build()?;
    let mut accepted = Vec::new();
    println!("\nSubmitting {} sample forms:", files.len());
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(file)?;
        let response = client
            .post(format!("{base}/v1/submissions"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("demo-{name}"))
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        match answer.get("id").and_then(|id| id.as_str()) {
            Some(id) if status == StatusCode::ACCEPTED => {
                println!("  {name:<28} {status} id {id}");
                accepted.push((name, id.to_owned()));
            }
            _ => println!("  {name:<28} {status} {}", answer["detail"].as_str().unwrap_or("")),
        }
    }

    // One more Gewerbeanmeldung for Köln, through FIT-Connect: encrypted by
    // the sender for Köln's destination, fetched, checked, delivered and
    // accepted by amtsbote.
    if let Some(leg) = &fit_connect {
        let sample = files.iter().find(|f| f.to_string_lossy().contains("gewerbe-koeln")).context("the Köln sample for FIT-Connect")?;
        let submitted = leg.submit(sample)?;
        println!("\nVia FIT-Connect (the double on 127.0.0.1:18091):");
        println!("  submission {} for destination {}", submitted.submission_id, leg.destination);
        let decision = leg.decision(&submitted, Duration::from_secs(30)).await;
        println!("  amtsbote fetched, decrypted and checked it, admitted it, and sent: {decision}");
        if let Some(id) = FitConnectLeg::admitted_as(&back_office, Duration::from_secs(30)).await {
            accepted.push(("via FIT-Connect".into(), id));
        }
        anyhow::ensure!(decision == "accept-submission", "the FIT-Connect submission was not accepted");
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut statuses = Vec::new();
    for (name, id) in &accepted {
        loop {
            // The demo's operator reads what came through FIT-Connect (its
            // sender is the destination, not the demo's online service).
            let request = client.get(format!("{base}/v1/submissions/{id}"));
            let request = if name.starts_with("via FIT-Connect") { request.bearer_auth(DEMO_OPERATOR_TOKEN) } else { request };
            let status: serde_json::Value = request.send().await?.json().await?;
            let settled = !matches!(status["status"].as_str(), Some("received" | "accepted"));
            if settled || tokio::time::Instant::now() >= deadline {
                statuses.push((name.clone(), status));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    println!("\nDelivery state (GET /v1/submissions/{{id}}):");
    for (name, status) in &statuses {
        println!("  {name:<28} {}", status["status"].as_str().unwrap_or("?"));
        for target in status["targets"].as_array().into_iter().flatten() {
            let attempts = target["attempts"].as_u64().unwrap_or(0);
            println!(
                "      → {:<22} {:<10} {} after {attempts} attempt{}",
                target["target"].as_str().unwrap_or("?"),
                target["state"].as_str().unwrap_or("?"),
                target["lastOutcome"].as_str().unwrap_or(""),
                if attempts == 1 { "" } else { "s" },
            );
        }
    }

    let out_dir = Path::new("target/demo/inbox");
    println!("\nWhat the back offices received (copies in {}):", out_dir.display());
    for (i, r) in back_office.received().iter().enumerate() {
        let ext = if r.content_type.as_deref().unwrap_or("").contains("json") { "json" } else { "xml" };
        let file = out_dir.join(format!("{}-{i}.{ext}", r.path.trim_start_matches('/').replace('/', "_")));
        std::fs::create_dir_all(out_dir)?;
        std::fs::write(&file, &r.body)?;
        println!(
            "  POST {:<32} {:<18} {:>6} bytes  Idempotency-Key {}",
            r.path,
            r.content_type.as_deref().unwrap_or("-"),
            r.body.len(),
            r.idempotency_key.as_deref().unwrap_or("-")
        );
    }
    if let Some(first) = back_office.received().iter().find(|r| r.path.ends_with("gewerbeamt")) {
        let text = String::from_utf8_lossy(&first.body);
        println!("\nFirst lines of the XGewerbeanzeige message sent to {}:", first.path);
        for line in text.lines().take(12) {
            println!("  {line}");
        }
    }

    if stay {
        println!("\nStill serving until Ctrl-C:");
        println!("  dashboard  {base}/dashboard  (operator token: demo-operator-token)");
        println!("  metrics    {base}/metrics");
        println!("  API        {base}/v1/openapi.json");
        crate::app::shutdown_signal().await;
    } else {
        println!("\nThe dashboard is at {base}/dashboard while amtsbote runs: scripts/demo --stay keeps it serving.");
    }
    let _ = stop.send(());
    server.await??;
    let all_delivered = statuses.iter().all(|(_, s)| s["status"] == "delivered");
    anyhow::ensure!(all_delivered, "not every accepted submission was delivered");
    println!("\nDemo finished: every accepted submission was delivered.");
    Ok(())
}

/// The FIT-Connect double in FITKO's place, with the demo config's first
/// destination registered (its public keys from the demo's private ones).
struct FitConnectLeg {
    double: amtsbote_fit_connect_double::Double,
    destination: uuid::Uuid,
}

impl FitConnectLeg {
    async fn start(settings: &FitConnectSettings, base_dir: &Path) -> anyhow::Result<Self> {
        let (_, destination) = settings.destinations.iter().next().context("fit_connect: the demo config names a destination")?;
        let double = amtsbote_fit_connect_double::Double::start_on(([127, 0, 0, 1], 18091).into())
            .await
            .context("starting the FIT-Connect double on 127.0.0.1:18091")?;
        let context = amtsbote_connector::Context::new(base_dir);
        let public = |secret| -> anyhow::Result<serde_json::Value> {
            let private: crate::jose::Jwk = serde_json::from_str(context.secret(secret)?.expose()).context("a demo key")?;
            Ok(serde_json::to_value(private.to_public())?)
        };
        double.register(amtsbote_fit_connect_double::Destination {
            id: destination.id,
            client_id: destination.client_id.clone(),
            client_secret: context.secret(&destination.client_secret)?.expose().to_owned(),
            encryption_key: public(destination.decryption_keys.first().context("a decryption key")?)?,
            signing_key: public(&destination.signing_key)?,
            callback: None,
        });
        Ok(Self { double, destination: destination.id })
    }

    /// Hands in the sample's form and attachments as an online service
    /// would through FIT-Connect.
    fn submit(&self, sample: &Path) -> anyhow::Result<amtsbote_fit_connect_double::Submitted> {
        use base64::Engine as _;
        let sample: serde_json::Value = serde_json::from_slice(&std::fs::read(sample)?)?;
        let mut outgoing = amtsbote_fit_connect_double::Outgoing::json(sample["service"].as_str().unwrap_or_default(), sample["data"].clone());
        for attachment in sample["attachments"].as_array().into_iter().flatten() {
            let content = base64::engine::general_purpose::STANDARD.decode(attachment["content"].as_str().unwrap_or_default())?;
            outgoing = outgoing.attach(
                attachment["name"].as_str().unwrap_or("anlage.pdf"),
                attachment["mediaType"].as_str().unwrap_or("application/octet-stream"),
                content,
            );
        }
        outgoing.sender_reference = Some(FIT_CONNECT_REFERENCE.into());
        Ok(self.double.submit(self.destination, outgoing))
    }

    /// The event amtsbote answered with, once it did.
    async fn decision(&self, submitted: &amtsbote_fit_connect_double::Submitted, within: Duration) -> String {
        use amtsbote_fit_connect_double::SubmissionState;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.double.state(submitted.submission_id) {
                Some(SubmissionState::Accepted) => return "accept-submission".into(),
                Some(SubmissionState::Rejected(problems)) => return format!("reject-submission {problems:?}"),
                _ if tokio::time::Instant::now() >= deadline => return "nothing yet".into(),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// amtsbote's id of the submission, from its DMS case file, once it
    /// arrived.
    async fn admitted_as(back_office: &SampleBackOffice, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let found = back_office.received().iter().find_map(|r| {
                let case: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                (case["reference"] == FIT_CONNECT_REFERENCE).then(|| case["caseId"].as_str().map(str::to_owned)).flatten()
            });
            if found.is_some() || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
