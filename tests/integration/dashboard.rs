//! The dashboard: sign-in and CSRF over plain HTTP, and the operator's
//! whole way through it in headless Chromium (tests/browser/dashboard.mjs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{OPERATOR_TOKEN, Setup, TestApp, gewerbeanmeldung, spawn_app};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs in as `test-operator`; the session cookie.
pub async fn sign_in(app: &TestApp) -> String {
    let response = no_redirects().post(format!("{}/dashboard/login", app.base)).form(&[("token", OPERATOR_TOKEN)]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    cookie.split(';').next().unwrap().to_owned()
}

async fn parked_submission(app: &TestApp, reference: &str) -> String {
    app.back_office.answer_with(StatusCode::UNPROCESSABLE_ENTITY);
    let mut submission = gewerbeanmeldung("053150000000");
    submission["reference"] = reference.into();
    let response = app.submit(submission.to_string()).await;
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.status_when(&id, |s| s["status"] == "parked").await["status"], "parked");
    id
}

#[tokio::test]
async fn the_dashboard_needs_a_sign_in_and_refuses_a_forged_action() {
    let app = spawn_app(Setup::default()).await;
    let client = no_redirects();
    let anonymous = client.get(format!("{}/dashboard", app.base)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers()["location"], "/dashboard/login");
    let wrong = client.post(format!("{}/dashboard/login", app.base)).form(&[("token", "guess")]).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let cookie = sign_in(&app).await;
    let overview = client.get(format!("{}/dashboard", app.base)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(overview.status(), StatusCode::OK);
    let csp = overview.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
    assert!(overview.text().await.unwrap().contains("data-target=\"fv\""));

    // A cross-site form post carries the cookie only if the browser
    // ignores SameSite; without the session's CSRF token it changes nothing.
    let id = parked_submission(&app, "OAA-CSRF").await;
    let forged = client
        .post(format!("{}/dashboard/parked/fv/{id}/discard", app.base))
        .header("cookie", &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let parked: Value = app.operator(Method::GET, "/v1/parked").send().await.unwrap().json().await.unwrap();
    assert_eq!(parked["count"], 1, "still parked: {parked}");
}

/// Node.js, Debian's Chromium and playwright-core (installed by
/// `scripts/install-test-deps`); `None` outside CI when missing.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.mjs");
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/playwright-core");
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let node = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("node")).find(|node| node.is_file()));
    match node {
        Some(node) if chromium.is_file() && module.is_dir() => Some((node, script)),
        _ => {
            let missing = "node, /usr/bin/chromium and tests/browser/node_modules (run scripts/install-test-deps)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "the browser test needs {missing}");
            eprintln!("skipping the browser test outside CI: it needs {missing}");
            None
        }
    }
}

#[tokio::test]
async fn an_operator_finds_a_parked_submission_and_replays_it_in_chromium() {
    let Some((node, script)) = browser_tools() else { return };
    let app = spawn_app(Setup::default()).await;
    // Some traffic for the overview.
    for _ in 0..3 {
        let response = app.submit(gewerbeanmeldung("053150000000").to_string()).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    app.back_office.wait_for(3, Duration::from_secs(20)).await;
    let reference = format!("OAA-{}", uuid::Uuid::new_v4().simple());
    let id = parked_submission(&app, &reference).await;
    app.back_office.answer_with(StatusCode::CREATED);

    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(node)
            .arg(&script)
            .env("AMTSBOTE_URL", &app.base)
            .env("AMTSBOTE_TOKEN", OPERATOR_TOKEN)
            .env("AMTSBOTE_REFERENCE", &reference)
            .env("AMTSBOTE_SUBMISSION", &id)
            .env("AMTSBOTE_SCREENSHOT", &screenshot)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run ends within 2 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser run failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("step: done"), "{stdout}");

    // What the browser saw is what happened.
    assert_eq!(app.back_office.received().len(), 4, "the replayed delivery arrived once");
    assert_eq!(app.status(&id).await["status"], "delivered");
    let audit: Value = app.operator(Method::GET, "/v1/audit").send().await.unwrap().json().await.unwrap();
    assert_eq!(audit["entries"][0]["operator"], "test-operator", "{audit}");
    assert_eq!(audit["entries"][0]["action"], "replay", "{audit}");
    assert!(screenshot.is_file());
}
