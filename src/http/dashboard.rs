//! The operators' dashboard: server-rendered HTML (maud), no JavaScript.
//!
//! * `/dashboard`: per target throughput, success rate, backlog, age of
//!   the oldest undelivered submission and parked count (from the
//!   [`Monitor`]); the search form.
//! * `/dashboard/submissions?…`: ledger search (the parameters of
//!   [`SearchParams`]); `/dashboard/submissions/{id}`: one submission's
//!   targets and timeline.
//! * `/dashboard/parked`: parked deliveries with their reasons; replay and
//!   discard go through a confirmation page and are recorded in the
//!   ledger and audit trail under the operator's name.
//!
//! Operators sign in with their operator token; the session lives in
//! memory (a restart signs everyone out) in an `HttpOnly`,
//! `SameSite=Strict` cookie, and every form that changes something
//! carries the session's CSRF token. Pages are sent with a strict
//! Content-Security-Policy and `Cache-Control: no-store`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::TargetName;
use crate::monitor::{ACTIVITY_WINDOW, Monitor, Overview};
use crate::access::{Operator, Role, Scope, constant_time_eq, random_hex32};
use crate::access::scoped_status;
use crate::http::search::SearchParams;
use crate::parking::ParkingLot;
use crate::pipeline::SharedPipeline;
use crate::parking::{Action, ParkedDelivery, Selection};
use crate::store::{SubmissionState, SubmissionStatus};

const COOKIE: &str = "amtsbote_session";
/// A session ends this long after sign-in.
const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

pub struct Dashboard {
    pub parking: Arc<ParkingLot>,
    /// Operators come from the pipeline in use, so a reload rotates
    /// tokens and changes roles.
    pub pipeline: SharedPipeline,
    pub monitor: Arc<Monitor>,
    sessions: Mutex<HashMap<String, Session>>,
    /// Served over HTTPS itself (`http.tls`): the session cookie is
    /// `Secure`, so a browser never sends it over plain HTTP.
    https: bool,
    /// The FIT-Connect destinations, if amtsbote receives from there.
    pub fit_connect: Option<Arc<crate::fit_connect::FitConnect>>,
}

#[derive(Clone)]
struct Session {
    /// As of sign-in: a changed role or scope applies from the next one.
    operator: Operator,
    csrf: String,
    expires: Instant,
}

impl Dashboard {
    pub fn new(parking: Arc<ParkingLot>, pipeline: SharedPipeline, monitor: Arc<Monitor>, https: bool) -> Self {
        Self { parking, pipeline, monitor, sessions: Mutex::new(HashMap::new()), https, fit_connect: None }
    }

    /// `; Secure` when the browser reached us over HTTPS: served so, or
    /// behind a TLS proxy that says so.
    fn secure(&self, headers: &HeaderMap) -> &'static str {
        let proxied_https = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
        if self.https || proxied_https { "; Secure" } else { "" }
    }

    /// The signed-in operator's session, or the way to the sign-in page.
    fn session(&self, headers: &HeaderMap) -> Result<Session, Response> {
        let id = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .map(|(_, value)| value.to_owned());
        let mut sessions = self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        id.and_then(|id| sessions.get(&id).cloned()).ok_or_else(|| Redirect::to("/dashboard/login").into_response())
    }

    fn sign_in(&self, operator: Operator) -> String {
        let id = random_hex32();
        let session = Session { operator, csrf: random_hex32(), expires: Instant::now() + SESSION_LIFETIME };
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id.clone(), session);
        id
    }

    fn sign_out(&self, session: &Session) {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).retain(|_, s| s.csrf != session.csrf);
    }
}

pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/dashboard", get(overview))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", axum::routing::post(logout))
        .route("/dashboard/submissions", get(search))
        .route("/dashboard/submissions/{id}", get(submission))
        .route("/dashboard/parked", get(parked))
        .route("/dashboard/parked/{target}/{submission}/{action}", get(confirm).post(act))
        .route("/dashboard/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE) }))
        .with_state(dashboard)
}

/// A page with the navigation, as every dashboard page looks.
fn page(title: &str, session: Option<&Session>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · amtsbote" }
                link rel="stylesheet" href="/dashboard/style.css";
            }
            body {
                header {
                    a.brand href="/dashboard" { "amtsbote" }
                    @if let Some(session) = session {
                        nav {
                            a href="/dashboard" { "Targets" }
                            a href="/dashboard/submissions" { "Submissions" }
                            a href="/dashboard/parked" { "Parked" }
                        }
                        form.signout method="post" action="/dashboard/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            span.operator { (session.operator.name) @if session.operator.role == Role::Viewer { " (viewer)" } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn error_page(status: StatusCode, session: Option<&Session>, message: &str) -> Response {
    let mut response = page("Something went wrong", session, html! { p.error { (message) } });
    *response.status_mut() = status;
    response
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login_page(State(dashboard): State<Arc<Dashboard>>) -> Response {
    login_form(&dashboard, None)
}

fn login_form(dashboard: &Dashboard, problem: Option<&str>) -> Response {
    let body = html! {
        @if dashboard.pipeline.load().operators.is_empty() {
            p.error { "No operators are configured (operators: in the config file), so nobody can sign in." }
        }
        @if let Some(problem) = problem { p.error { (problem) } }
        form.login method="post" action="/dashboard/login" {
            label for="token" { "Operator token" }
            input #token type="password" name="token" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
    };
    page("Sign in", None, body)
}

async fn login(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let Some(operator) = dashboard.pipeline.load().operators.find(&form.token).cloned() else {
        tracing::warn!(event = "dashboard_sign_in_refused", "dashboard sign-in with an unknown token");
        let mut response = login_form(&dashboard, Some("Unknown operator token."));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    };
    tracing::info!(event = "dashboard_signed_in", operator = %operator.name, "operator signed in to the dashboard");
    let id = dashboard.sign_in(operator);
    let cookie = format!(
        "{COOKIE}={id}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_LIFETIME.as_secs(),
        dashboard.secure(&headers)
    );
    let mut response = Redirect::to("/dashboard").into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("the cookie is ASCII"));
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
    #[serde(default)]
    comment: Option<String>,
}

async fn logout(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if let Ok(session) = dashboard.session(&headers)
        && form.csrf == session.csrf
    {
        dashboard.sign_out(&session);
    }
    let mut response = Redirect::to("/dashboard/login").into_response();
    let expired = format!("{COOKIE}=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0{}", dashboard.secure(&headers));
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&expired).expect("the cookie is ASCII"));
    response
}

async fn overview(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let session = match dashboard.session(&headers) {
        Ok(session) => session,
        Err(sign_in) => return sign_in,
    };
    let overview = dashboard.monitor.overview().await;
    // Destinations belong to no tenant: operators limited to targets do
    // not see them.
    let destinations = match (&dashboard.fit_connect, &session.operator.scope) {
        (Some(fit_connect), Scope::Everything) => fit_connect.health(),
        _ => Vec::new(),
    };
    page(
        "Targets",
        Some(&session),
        html! { (targets_table(&overview, &session.operator.scope)) (destinations_table(&destinations)) (search_form(&SearchParams::default())) },
    )
}

/// How each FIT-Connect destination is doing.
fn destinations_table(destinations: &[crate::fit_connect::DestinationHealth]) -> Markup {
    html! {
        @if !destinations.is_empty() {
            h2 { "FIT-Connect destinations" }
            table #destinations {
                thead { tr {
                    th { "Destination" }
                    th { "State" }
                    th { "Last poll" }
                    th.num { "Waiting" }
                    th.num { "Oldest waiting" }
                    th.num { "Without route" }
                    th.num { "Accepted" }
                    th.num { "Rejected" }
                } }
                tbody {
                    @for destination in destinations {
                        tr data-destination=(destination.name) {
                            td { (destination.name) br; small { (destination.id) } }
                            td {
                                @if destination.up { span.state data-state="ok" { "polling" } }
                                @else { span.state data-state="failing" { "down" } }
                                @if let Some(problem) = &destination.problem { br; small { (problem) } }
                            }
                            td { (destination.last_success.as_deref().unwrap_or("never")) }
                            td.num { (destination.waiting) }
                            td.num {
                                @match destination.oldest_waiting_seconds {
                                    Some(seconds) => span data-old[seconds > 2 * 24 * 3600] { (age(seconds as i64)) },
                                    None => "–",
                                }
                            }
                            td.num data-unrouted[destination.unrouted > 0] { (destination.unrouted) }
                            td.num { (destination.accepted) }
                            td.num { (destination.rejected) }
                        }
                    }
                }
            }
        }
    }
}

fn targets_table(overview: &Overview, scope: &Scope) -> Markup {
    let window_hours = ACTIVITY_WINDOW.as_secs() / 3600;
    html! {
        p.status {
            "Broker: "
            @if overview.broker_connected { span.state data-state="ok" { "connected" } }
            @else { span.state data-state="failing" { "unreachable" } }
            " · as of " (overview.sampled_at)
        }
        table #targets {
            thead { tr {
                th { "Target" }
                th.num { "Delivered (" (window_hours) " h)" }
                th.num { "Success rate" }
                th.num { "Backlog" }
                th.num { "Oldest undelivered" }
                th.num { "Parked" }
            } }
            tbody {
                @for target in overview.targets.iter().filter(|t| scope.sees_name(&t.target)) {
                    tr data-target=(target.target) {
                        td { a href={ "/dashboard/submissions?target=" (target.target) } { (target.target) } }
                        td.num { (target.activity.delivered) }
                        td.num {
                            @match target.success_rate() {
                                Some(rate) => span.rate data-low[rate < 0.9] { (format!("{:.1} %", rate * 100.0)) },
                                None => "–",
                            }
                        }
                        td.num { (count(target.queue_depth)) }
                        td.num {
                            @match target.oldest_undelivered_seconds {
                                Some(seconds) => span data-old[seconds > 24 * 3600] { (age(seconds)) },
                                None => "–",
                            }
                        }
                        td.num {
                            a href={ "/dashboard/parked?target=" (target.target) } { (count(target.parked)) }
                        }
                    }
                }
            }
        }
    }
}

fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "?".into(), |v| v.to_string())
}

/// `3 d 4 h`, `5 h 12 min`, `42 s`.
fn age(seconds: i64) -> String {
    let (d, h, m) = (seconds / 86400, seconds % 86400 / 3600, seconds % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{seconds} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

fn search_form(params: &SearchParams) -> Markup {
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    html! {
        form.search method="get" action="/dashboard/submissions" {
            label { "Reference" input name="reference" value=(value(&params.reference)); }
            label { "Service (LeiKa)" input name="service" value=(value(&params.service)); }
            label { "Region (ARS prefix)" input name="region" value=(value(&params.region)); }
            label { "Target" input name="target" value=(value(&params.target)); }
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for state in SubmissionState::ALL {
                        option value=(state.as_str()) selected[params.state.as_deref() == Some(state.as_str())] { (state.as_str()) }
                    }
                }
            }
            label { "Received from (UTC)" input name="from" type="date" value=(value(&params.from)); }
            label { "to (UTC, excl.)" input name="to" type="date" value=(value(&params.to)); }
            button type="submit" { "Search" }
        }
    }
}

async fn search(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap, query: Result<Query<SearchParams>, QueryRejection>) -> Response {
    let session = match dashboard.session(&headers) {
        Ok(session) => session,
        Err(sign_in) => return sign_in,
    };
    let params = query.map(|Query(params)| params).unwrap_or_default();
    let scope = &session.operator.scope;
    let page_of = match params.scoped(scope) {
        Ok(query) => dashboard.parking.store.search(query).await.map_err(|e| {
            tracing::error!(event = "store_failed", error = %e, "dashboard search failed");
            "The ledger could not be searched; see the log.".to_owned()
        }),
        Err(problem) => Err(format!("{} ({})", problem.detail, problem.errors.iter().map(|e| e.detail.as_str()).collect::<Vec<_>>().join("; "))),
    };
    let body = html! {
        (search_form(&params))
        @match &page_of {
            Err(message) => p.error { (message) },
            Ok(found) => {
                @if found.items.is_empty() { p #no-results { "No submission matches." } }
                @else {
                    table #results {
                        thead { tr { th { "Received (UTC)" } th { "Submission" } th { "Reference" } th { "Service" } th { "Region" } th { "State" } th { "Targets" } } }
                        tbody {
                            @for item in &found.items {
                                tr {
                                    td { (item.received_at) }
                                    td { a.submission href={ "/dashboard/submissions/" (item.id) } { (item.id) } }
                                    td { (item.reference.as_deref().unwrap_or("–")) }
                                    td { (item.service) }
                                    td { (item.region) }
                                    td { span.state data-state=(item.status.as_str()) { (item.status.as_str()) } }
                                    td { @for t in item.targets.iter().filter(|t| scope.sees_name(&t.target)) { span.target { (t.target) ": " (t.state.as_str()) } " " } }
                                }
                            }
                        }
                    }
                    @if let Some(next) = &found.next {
                        @let link = SearchParams { cursor: Some(next.clone()), ..params.clone() };
                        a.next href={ "/dashboard/submissions?" (serde_urlencoded::to_string(&link).unwrap_or_default()) } { "Older submissions →" }
                    }
                }
            }
        }
    };
    page("Submissions", Some(&session), body)
}

#[derive(Deserialize)]
struct Done {
    done: Option<String>,
}

async fn submission(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    done: Result<Query<Done>, QueryRejection>,
) -> Response {
    let session = match dashboard.session(&headers) {
        Ok(session) => session,
        Err(sign_in) => return sign_in,
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(StatusCode::NOT_FOUND, Some(&session), "No submission with this id.");
    };
    let status = match dashboard.parking.store.status(id).await {
        Ok(Some(status)) => match scoped_status(status, &session.operator.scope) {
            Some(status) => status,
            None => return error_page(StatusCode::NOT_FOUND, Some(&session), "No submission with this id."),
        },
        Ok(None) => return error_page(StatusCode::NOT_FOUND, Some(&session), "No submission with this id."),
        Err(e) => {
            tracing::error!(event = "store_failed", error = %e, "dashboard could not read a submission");
            return error_page(StatusCode::INTERNAL_SERVER_ERROR, Some(&session), "The ledger could not be read; see the log.");
        }
    };
    let done = done.ok().and_then(|Query(d)| d.done);
    let may_act = session.operator.role == Role::Operator;
    page(&format!("Submission {id}"), Some(&session), timeline(&status, done.as_deref(), may_act))
}

fn timeline(status: &SubmissionStatus, done: Option<&str>, may_act: bool) -> Markup {
    html! {
        @match done {
            Some("replay") => p.notice #done { "Replayed: the delivery is queued again." },
            Some("discard") => p.notice #done { "Discarded: the delivery will not be attempted again." },
            _ => {},
        }
        dl.facts {
            dt { "State" } dd { span.state #submission-state data-state=(status.status.as_str()) { (status.status.as_str()) } }
            dt { "Reference" } dd { (status.reference.as_deref().unwrap_or("–")) }
            dt { "Service" } dd { (status.service) }
            dt { "Region" } dd { (status.region) }
            dt { "Received (UTC)" } dd { (status.received_at) }
            dt { "Size" } dd { (status.size.map_or_else(|| "–".into(), |s| format!("{s} bytes"))) }
            dt { "SHA-256" } dd.hash { (status.sha256.as_deref().unwrap_or("–")) }
        }
        h2 { "Targets" }
        table #deliveries {
            thead { tr { th { "Target" } th { "State" } th.num { "Attempts" } th { "Last outcome" } th { "Receipt" } th { "Mapping" } th {} } }
            tbody {
                @for t in &status.targets {
                    tr data-target=(t.target) {
                        td { (t.target) }
                        td { span.state data-state=(t.state.as_str()) { (t.state.as_str()) } }
                        td.num { (t.attempts) }
                        td { (t.last_outcome.as_deref().unwrap_or("–")) }
                        td { (t.receipt.as_deref().unwrap_or("–")) }
                        td.hash { (t.mapping_version.as_deref().unwrap_or("–")) }
                        td {
                            @if may_act && t.state == crate::store::DeliveryState::Parked {
                                a.button href={ "/dashboard/parked/" (t.target) "/" (status.id) "/replay" } { "Replay" }
                                " "
                                a.button.danger href={ "/dashboard/parked/" (t.target) "/" (status.id) "/discard" } { "Discard" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Timeline" }
        table #timeline {
            thead { tr { th { "Time (UTC)" } th { "Event" } th { "Target" } th.num { "Attempt" } th { "Detail" } th.num { "Took" } } }
            tbody {
                @for e in &status.timeline {
                    tr data-event=(e.event) {
                        td { (e.at) }
                        td { (e.event) }
                        td { (e.target.as_deref().unwrap_or("")) }
                        td.num { (e.attempt.map(|a| a.to_string()).unwrap_or_default()) }
                        td { (event_detail(e)) }
                        td.num { (e.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

/// What an event says beyond its name, the parts joined by ` · `.
fn event_detail(e: &crate::store::Event) -> Markup {
    let mut parts: Vec<Markup> = Vec::new();
    if let Some(detail) = &e.detail {
        parts.push(html! { (detail) });
    }
    if let Some(receipt) = &e.receipt {
        parts.push(html! { "receipt " strong { (receipt) } });
    }
    if let Some(operator) = &e.operator {
        parts.push(html! { "by " (operator) });
    }
    if let Some(version) = &e.mapping_version {
        parts.push(html! { "mapping " span.hash { (version) } });
    }
    if let Some(size) = e.size {
        parts.push(html! { (size) " bytes" });
    }
    html! {
        @for (i, part) in parts.iter().enumerate() {
            @if i > 0 { " · " }
            (part)
        }
    }
}

#[derive(Deserialize)]
struct ParkedQuery {
    target: Option<String>,
}

async fn parked(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap, query: Result<Query<ParkedQuery>, QueryRejection>) -> Response {
    let session = match dashboard.session(&headers) {
        Ok(session) => session,
        Err(sign_in) => return sign_in,
    };
    let target = query.ok().and_then(|Query(q)| q.target).filter(|t| !t.is_empty());
    let scope = &session.operator.scope;
    let target = match target.map(|t| TargetName::parse(&t)).transpose() {
        Ok(target) if target.as_ref().is_none_or(|t| scope.sees(t)) => target,
        _ => return error_page(StatusCode::BAD_REQUEST, Some(&session), "No such target."),
    };
    let selection = Selection { target: target.clone(), ..Selection::default() }.within(scope);
    let list = match dashboard.parking.list(&selection).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(event = "dashboard_parked_failed", error = %e, "dashboard could not list parked deliveries");
            return error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&session), &format!("The parked deliveries could not be listed: {e}"));
        }
    };
    let title = match &target {
        Some(target) => format!("Parked at {target}"),
        None => "Parked".to_owned(),
    };
    page(&title, Some(&session), parked_table(&list, session.operator.role == Role::Operator))
}

fn parked_table(list: &[ParkedDelivery], may_act: bool) -> Markup {
    html! {
        @if list.is_empty() { p #no-parked { "Nothing is parked." } }
        @else {
            table #parked {
                thead { tr { th { "Parked at (UTC)" } th { "Target" } th { "Submission" } th { "Reason" } th { "Last error" } th.num { "Attempts" } th {} } }
                tbody {
                    @for p in list {
                        tr data-submission=(p.submission_id) {
                            td { (p.parked_at.as_deref().unwrap_or("–")) }
                            td { (p.target) }
                            td { a href={ "/dashboard/submissions/" (p.submission_id) } { (p.submission_id) } }
                            td { (p.reason) }
                            td { (p.last_error.as_deref().unwrap_or("–")) }
                            td.num { (p.attempts) }
                            td {
                                @if may_act {
                                    a.button href={ "/dashboard/parked/" (p.target) "/" (p.submission_id) "/replay" } { "Replay" }
                                    " "
                                    a.button.danger href={ "/dashboard/parked/" (p.target) "/" (p.submission_id) "/discard" } { "Discard" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The parked delivery an action page is about, checked.
fn not_parked(session: &Session) -> Response {
    error_page(StatusCode::NOT_FOUND, Some(session), "This delivery is not parked (any more).")
}

/// The target and submission of an action page's path, checked: the
/// operator may act, and on this target.
fn action_path(session: &Session, target: &str, submission: &str, action: &str) -> Result<(TargetName, Uuid), Response> {
    if let Err(problem) = session.operator.may_act() {
        return Err(error_page(StatusCode::FORBIDDEN, Some(session), &problem.detail));
    }
    match (action, TargetName::parse(target), submission.parse::<Uuid>()) {
        ("replay" | "discard", Ok(target), Ok(submission)) if session.operator.scope.sees(&target) => Ok((target, submission)),
        _ => Err(not_parked(session)),
    }
}

/// The parked delivery an action page is about.
async fn parked_delivery(dashboard: &Dashboard, session: &Session, target: &str, submission: &str, action: &str) -> Result<ParkedDelivery, Response> {
    let (target, submission) = action_path(session, target, submission, action)?;
    match dashboard.parking.find(target, submission).await {
        Ok(Some(parked)) => Ok(parked),
        Ok(None) => Err(not_parked(session)),
        Err(e) => Err(error_page(StatusCode::SERVICE_UNAVAILABLE, Some(session), &format!("The parked deliveries could not be read: {e}"))),
    }
}

async fn confirm(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path((target, submission, action)): Path<(String, String, String)>,
) -> Response {
    let session = match dashboard.session(&headers) {
        Ok(session) => session,
        Err(sign_in) => return sign_in,
    };
    let parked = match parked_delivery(&dashboard, &session, &target, &submission, &action).await {
        Ok(parked) => parked,
        Err(response) => return response,
    };
    let replay = action == "replay";
    let body = html! {
        dl.facts {
            dt { "Submission" } dd { a href={ "/dashboard/submissions/" (parked.submission_id) } { (parked.submission_id) } }
            dt { "Target" } dd { (parked.target) }
            dt { "Reason" } dd { (parked.reason) }
            dt { "Last error" } dd { (parked.last_error.as_deref().unwrap_or("–")) }
            dt { "Attempts" } dd { (parked.attempts) }
        }
        @if replay {
            p { "The delivery goes back to " strong { (parked.target) } "'s queue with a fresh retry budget. Fix the cause first, or it will be parked again." }
        } @else {
            p { "The delivery will not be attempted again. The submission stays in the ledger as discarded for this target." }
        }
        form.confirm method="post" {
            input type="hidden" name="csrf" value=(session.csrf);
            @if !replay {
                label { "Comment (recorded in the audit trail)" input name="comment"; }
            }
            button.danger[!replay] #confirm type="submit" { @if replay { "Confirm replay" } @else { "Confirm discard" } }
            " "
            a href="/dashboard/parked" { "Cancel" }
        }
    };
    page(if replay { "Replay this delivery?" } else { "Discard this delivery?" }, Some(&session), body)
}

async fn act(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path((target, submission, action)): Path<(String, String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match dashboard.session(&headers) {
        Ok(session) => session,
        Err(sign_in) => return sign_in,
    };
    if !constant_time_eq(form.csrf.as_bytes(), session.csrf.as_bytes()) {
        tracing::warn!(event = "dashboard_csrf_refused", operator = %session.operator.name, "dashboard action without a valid CSRF token");
        return error_page(StatusCode::FORBIDDEN, Some(&session), "This form has expired; open the page again.");
    }
    let (target, submission) = match action_path(&session, &target, &submission, &action) {
        Ok(path) => path,
        Err(response) => return response,
    };
    let operator = session.operator.name.clone();
    let action_of = if action == "replay" {
        Action::Replay { operator }
    } else {
        Action::Discard { operator, comment: form.comment.filter(|c| !c.trim().is_empty()) }
    };
    // One sweep: applying to a delivery that is no longer parked selects nothing.
    let selection = Selection { target: Some(target), submission: Some(submission), ..Selection::default() }.within(&session.operator.scope);
    match dashboard.parking.apply(&selection, &action_of).await {
        Ok(done) if !done.is_empty() => Redirect::to(&format!("/dashboard/submissions/{submission}?done={action}")).into_response(),
        Ok(_) => error_page(StatusCode::CONFLICT, Some(&session), "This delivery is not parked any more; someone else acted on it."),
        Err(e) => error_page(StatusCode::SERVICE_UNAVAILABLE, Some(&session), &format!("The action failed and nothing changed: {e}")),
    }
}

const STYLE: &str = r#"
:root { --fg: #1d2733; --muted: #5b6776; --line: #d9dee5; --accent: #0b5cad; --bad: #b42318; --ok: #067647; --warn: #b54708; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: #f6f7f9; }
header { display: flex; gap: 1.5rem; align-items: center; padding: .6rem 1.5rem; background: #12263f; color: #fff; }
header a { color: #fff; text-decoration: none; }
header nav { display: flex; gap: 1rem; }
.brand { font-weight: 700; letter-spacing: .02em; }
.signout { margin-left: auto; display: flex; gap: .6rem; align-items: center; }
main { padding: 1rem 1.5rem 3rem; max-width: 1200px; }
h1 { font-size: 1.35rem; margin: .4rem 0 1rem; }
h2 { font-size: 1.1rem; margin-top: 1.6rem; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; padding: .4rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f5; font-weight: 600; font-size: .9em; }
.num { text-align: right; }
.hash { font-family: ui-monospace, monospace; font-size: .85em; word-break: break-all; }
.state { padding: .05rem .45rem; border-radius: .6rem; background: #eef1f5; font-size: .9em; }
.state[data-state=delivered], .state[data-state=ok] { background: #dcfae6; color: var(--ok); }
.state[data-state=parked], .state[data-state=failing] { background: #fee4e2; color: var(--bad); }
.state[data-state=retrying], .state[data-state=accepted], .state[data-state=queued] { background: #fef0c7; color: var(--warn); }
[data-low], [data-old], [data-unrouted] { color: var(--bad); font-weight: 600; }
.error { color: var(--bad); }
.notice { background: #dcfae6; padding: .5rem .8rem; border-radius: .3rem; }
.status { color: var(--muted); }
form.search { display: flex; flex-wrap: wrap; gap: .6rem 1rem; align-items: end; margin: 1.4rem 0 1rem; padding: .8rem; background: #fff; border: 1px solid var(--line); }
form.search label, form.login label, form.confirm label { display: flex; flex-direction: column; font-size: .85em; color: var(--muted); gap: .2rem; }
input, select { font: inherit; padding: .3rem .4rem; border: 1px solid var(--line); border-radius: .25rem; }
button, .button { font: inherit; padding: .3rem .8rem; border: 1px solid var(--accent); border-radius: .25rem; background: var(--accent); color: #fff; cursor: pointer; text-decoration: none; display: inline-block; }
.danger { background: var(--bad); border-color: var(--bad); }
header button { background: transparent; border-color: #fff; }
form.login { display: flex; flex-direction: column; gap: .8rem; max-width: 22rem; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; background: #fff; padding: .8rem; border: 1px solid var(--line); }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
.next { display: inline-block; margin-top: .8rem; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(age(42), "42 s");
        assert_eq!(age(5 * 60), "5 min");
        assert_eq!(age(3 * 3600 + 12 * 60), "3 h 12 min");
        assert_eq!(age(3 * 86400 + 4 * 3600), "3 d 4 h");
    }

    #[test]
    fn pages_escape_what_they_show() {
        let status = SubmissionStatus {
            id: Uuid::nil(),
            status: SubmissionState::Parked,
            service: "99050012104000".into(),
            region: "053150000000".into(),
            reference: Some("<script>alert(1)</script>".into()),
            received_at: "2026-11-24T09:00:00.000Z".into(),
            size: None,
            sha256: None,
            sender: None,
            fit_connect: None,
            targets: vec![],
            timeline: vec![],
        };
        let html = timeline(&status, None, true).into_string();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"), "{html}");
    }
}
