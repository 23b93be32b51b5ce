//! The behaviour every [`Store`] must have, whatever keeps the ledger.
//! An implementation's tests expand [`store_conformance!`] with an async
//! function that opens a fresh, empty store (and whatever must live as
//! long as it), so each implementation runs the same suite:
//!
//! ```ignore
//! store_conformance!(|| async { let dir = tempdir(); (dir, Arc::new(SqliteStore::open(..)) as Arc<dyn Store>) });
//! ```

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::*;
use crate::domain::TargetName;

/// Expands one `#[tokio::test]` per conformance test, each on a fresh
/// store from `$open` (a closure whose future gives `(guard, Arc<dyn
/// Store>)`).
macro_rules! store_conformance {
    ($open:expr) => {
        store_conformance!(@tests $open; idempotency_key_lifecycle, a_refused_key_resumes_under_the_same_id, a_refused_submission_is_kept_as_refused_never_admitted_and_pruned_like_a_finished_one, a_worker_admits_what_intake_accepted_and_accepts_what_a_dead_intake_left_undecided, a_submission_is_finished_with_once_every_delivery_is_delivered_or_discarded, operator_actions_are_recorded_and_change_the_state, a_replay_recorded_after_its_delivery_leaves_the_delivery_standing, each_parked_copy_takes_one_action_whoever_records_it, status_and_timeline_follow_the_deliveries, a_failed_mapping_is_in_the_timeline_without_an_attempt, a_message_stopped_before_the_mapping_is_parked_with_its_reason_and_no_mapping_event, search_filters_and_pages_newest_first, many_concurrent_writes_all_land, a_failing_write_leaves_the_others_of_its_batch, pruning_removes_finished_submissions_past_retention_only, activity_counts_per_target_and_finds_the_oldest_undelivered, each_ledger_has_its_own_id, a_fit_connect_submission_is_decided_once_and_its_ids_shown, an_attempt_on_a_submission_whose_confirm_was_not_recorded_accepts_it);
    };
    (@tests $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_guard, store) = ($open)().await;
                $crate::store::conformance::$name(store).await;
            }
        )*
    };
}

pub fn submission(id: Uuid) -> NewSubmission {
    NewSubmission {
        id,
        service: "99050012104000".into(),
        region: "053150000000".into(),
        reference: Some("R-1".into()),
        received_at: OffsetDateTime::now_utc(),
        targets: vec![TargetName::parse("a").unwrap(), TargetName::parse("b").unwrap()],
        size: 1234,
        sha256: "ab".repeat(32),
        sender: "oaa".into(),
    }
}

fn key(k: &str, body: u8) -> Option<IdempotencyKey> {
    Some(IdempotencyKey { key: k.into(), fingerprint: [body; 32] })
}

fn attempt(id: Uuid, target: &str, result: AttemptResult) -> AttemptRecord {
    AttemptRecord {
        submission: id,
        target: TargetName::parse(target).unwrap(),
        attempt: 1,
        mapping_version: "sha256:test".into(),
        rendering: Rendering::Rendered(Fingerprint { size: 99, sha256: "cd".repeat(32) }),
        duration: Some(Duration::from_millis(12)),
        result,
    }
}

fn delivered(detail: &str) -> AttemptResult {
    AttemptResult::Delivered { detail: detail.into(), receipt: None }
}

/// alice's `action` on the parked delivery of `id` to `target`.
fn by_alice(action: OperatorAction, id: Uuid, target: &str, parked_reason: &str) -> OperatorRecord {
    OperatorRecord {
        operator: "alice".into(),
        action,
        target: target.into(),
        submission_id: id.to_string(),
        parked_reason: parked_reason.into(),
        comment: None,
        generation: Some(0),
        replay: None,
    }
}

pub async fn accepted(store: &dyn Store, s: NewSubmission) -> Uuid {
    let id = s.id;
    store.begin_intake(s, None).await.unwrap();
    store.confirm_intake(id).await.unwrap();
    id
}

pub async fn idempotency_key_lifecycle(store: Arc<dyn Store>) {
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(store.begin_intake(submission(first), key("k", 1)).await.unwrap(), Claim::Fresh);
    assert_eq!(store.begin_intake(submission(second), key("k", 1)).await.unwrap(), Claim::InProgress);
    store.confirm_intake(first).await.unwrap();
    assert_eq!(store.begin_intake(submission(second), key("k", 1)).await.unwrap(), Claim::Replay { id: first });
    assert_eq!(store.begin_intake(submission(second), key("k", 2)).await.unwrap(), Claim::Mismatch);
}

pub async fn a_refused_key_resumes_under_the_same_id(store: Arc<dyn Store>) {
    let first = submission(Uuid::new_v4());
    store.begin_intake(first.clone(), key("k", 1)).await.unwrap();
    assert_eq!(store.refuse_intake(first.id, "broker unavailable").await.unwrap(), Refusal::Refused);
    assert_eq!(store.admission(first.id, "a").await.unwrap(), Admission::Refused);
    match store.begin_intake(submission(Uuid::new_v4()), key("k", 1)).await.unwrap() {
        Claim::Resume { id, received_at } => {
            assert_eq!(id, first.id);
            assert_eq!(received_at.unix_timestamp(), first.received_at.unix_timestamp());
        }
        other => panic!("expected a resume, got {other:?}"),
    }
    // The resumed claim is fresh again for a concurrent request.
    assert_eq!(store.begin_intake(submission(Uuid::new_v4()), key("k", 1)).await.unwrap(), Claim::InProgress);
    assert!(matches!(store.admission(first.id, "a").await.unwrap(), Admission::Undecided { .. }));
    store.confirm_intake(first.id).await.unwrap();
    assert_eq!(store.admission(first.id, "a").await.unwrap(), Admission::Accepted { done: false });
    let status = store.status(first.id).await.unwrap().unwrap();
    assert_eq!(status.status, SubmissionState::Accepted);
    let events: Vec<&str> = status.timeline.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["received", "routed", "refused", "resumed", "accepted"]);
}

pub async fn a_refused_submission_is_kept_as_refused_never_admitted_and_pruned_like_a_finished_one(store: Arc<dyn Store>) {
    let id = Uuid::new_v4();
    store.begin_intake(submission(id), None).await.unwrap();
    assert_eq!(store.refuse_intake(id, "the broker did not confirm").await.unwrap(), Refusal::Refused);
    let status = store.status(id).await.unwrap().unwrap();
    assert_eq!(status.status, SubmissionState::Refused);
    assert!(status.targets.iter().all(|t| t.state == DeliveryState::Refused), "{:?}", status.targets);
    let refused = status.timeline.iter().find(|e| e.event == "refused").unwrap();
    assert_eq!(refused.detail.as_deref(), Some("the broker did not confirm"));
    assert_eq!(store.admission(id, "a").await.unwrap(), Admission::Refused);
    // A worker that meets its message drops it, and says so.
    store.record_refused_message(id, "a").await.unwrap();
    assert!(store.status(id).await.unwrap().unwrap().timeline.iter().any(|e| e.event == "dropped"));
    assert_eq!(store.status(id).await.unwrap().unwrap().status, SubmissionState::Refused);
    // Refused is final: a worker cannot accept it as undecided.
    assert!(!store.accept_undecided(id, OffsetDateTime::now_utc() + time::Duration::hours(1)).await.unwrap());
    assert!(store.oldest_undelivered().await.unwrap().is_empty(), "a refused submission waits for nobody");
    let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
    assert_eq!(store.finished_among(vec![id], later).await.unwrap(), vec![id], "its blobs may go");
    assert_eq!(store.prune(later, 10).await.unwrap(), 1);
    assert!(store.status(id).await.unwrap().is_none());
}

pub async fn a_worker_admits_what_intake_accepted_and_accepts_what_a_dead_intake_left_undecided(store: Arc<dyn Store>) {
    assert_eq!(store.admission(Uuid::new_v4(), "a").await.unwrap(), Admission::Unknown);
    let mut undecided = submission(Uuid::new_v4());
    undecided.received_at = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let id = undecided.id;
    store.begin_intake(undecided, None).await.unwrap();
    assert!(matches!(store.admission(id, "a").await.unwrap(), Admission::Undecided { .. }));
    // Too young: intake may still decide.
    assert!(!store.accept_undecided(id, OffsetDateTime::now_utc() - time::Duration::hours(1)).await.unwrap());
    assert!(store.accept_undecided(id, OffsetDateTime::now_utc()).await.unwrap());
    assert_eq!(store.admission(id, "a").await.unwrap(), Admission::Accepted { done: false });
    // An intake that answers this late must say "accepted".
    assert_eq!(store.refuse_intake(id, "too late").await.unwrap(), Refusal::AcceptedMeanwhile);
    store.record_attempt(attempt(id, "a", delivered("HTTP 201"))).await.unwrap();
    assert_eq!(store.admission(id, "a").await.unwrap(), Admission::Accepted { done: true });
    assert_eq!(store.admission(id, "b").await.unwrap(), Admission::Accepted { done: false });
}

pub async fn a_submission_is_finished_with_once_every_delivery_is_delivered_or_discarded(store: Arc<dyn Store>) {
    let (done, half, unknown) = (accepted(&*store, submission(Uuid::new_v4())).await, accepted(&*store, submission(Uuid::new_v4())).await, Uuid::new_v4());
    let parked = AttemptResult::Parked { reason: "target-rejected", error: "HTTP 422".into() };
    store.record_attempt(attempt(done, "a", delivered("HTTP 201"))).await.unwrap();
    store.record_attempt(attempt(done, "b", parked.clone())).await.unwrap();
    store.record_attempt(attempt(half, "a", delivered("HTTP 201"))).await.unwrap();
    let finished = |before: OffsetDateTime| store.finished_among(vec![done, half, unknown], before);
    let later = OffsetDateTime::now_utc() + Duration::from_secs(60);
    assert_eq!(finished(later).await.unwrap(), vec![unknown], "parked and queued deliveries still need their submission");
    store.record_operator_action(by_alice(OperatorAction::Discard, done, "b", "target-rejected")).await.unwrap();
    assert_eq!(finished(later).await.unwrap(), vec![done, unknown]);
    assert_eq!(finished(OffsetDateTime::now_utc() - Duration::from_secs(60)).await.unwrap(), vec![unknown], "not finished long enough");
}

pub async fn operator_actions_are_recorded_and_change_the_state(store: Arc<dyn Store>) {
    let id = accepted(&*store, submission(Uuid::new_v4())).await;
    let parked = AttemptResult::Parked { reason: "target-rejected", error: "HTTP 422".into() };
    store.record_attempt(attempt(id, "a", parked)).await.unwrap();
    assert_eq!(store.status(id).await.unwrap().unwrap().status, SubmissionState::Parked);
    let record = OperatorRecord {
        comment: Some("duplicate of R-1".into()),
        ..by_alice(OperatorAction::Discard, id, "a", "target-rejected")
    };
    store.record_operator_action(record).await.unwrap();
    let trail = store.audit_trail(10, None).await.unwrap();
    assert_eq!((trail[0].record.operator.as_str(), trail[0].record.action), ("alice", OperatorAction::Discard));
    assert_eq!(store.audit_trail(10, Some(vec!["a".into()])).await.unwrap().len(), 1);
    assert!(store.audit_trail(10, Some(vec!["b".into()])).await.unwrap().is_empty(), "only the targets within");
    assert_eq!(store.status(id).await.unwrap().unwrap().sender.as_deref(), Some("oaa"));
    let status = store.status(id).await.unwrap().unwrap();
    assert_eq!(status.targets[0].state, DeliveryState::Discarded);
    assert_eq!(status.targets[0].last_outcome.as_deref(), Some("discarded by alice"));
    let last = status.timeline.last().unwrap();
    assert_eq!((last.event.as_str(), last.operator.as_deref()), ("discarded", Some("alice")));
    // Target b still waits: the submission is not finished.
    assert_eq!(status.status, SubmissionState::Accepted);
}

pub async fn a_replay_recorded_after_its_delivery_leaves_the_delivery_standing(store: Arc<dyn Store>) {
    let id = accepted(&*store, submission(Uuid::new_v4())).await;
    let parked = AttemptResult::Parked { reason: "retries-exhausted", error: "HTTP 503".into() };
    store.record_attempt(attempt(id, "a", parked)).await.unwrap();
    // The replayed message was delivered before the replay was recorded.
    store.record_attempt(attempt(id, "a", delivered("HTTP 201"))).await.unwrap();
    store.record_operator_action(by_alice(OperatorAction::Replay, id, "a", "retries-exhausted")).await.unwrap();
    let status = store.status(id).await.unwrap().unwrap();
    assert_eq!(status.targets[0].state, DeliveryState::Delivered);
    assert!(status.timeline.iter().any(|e| e.event == "replayed"), "the replay is in the timeline all the same");
}

pub async fn each_parked_copy_takes_one_action_whoever_records_it(store: Arc<dyn Store>) {
    let id = accepted(&*store, submission(Uuid::new_v4())).await;
    let parked = AttemptResult::Parked { reason: "target-rejected", error: "HTTP 400".into() };
    store.record_attempt(attempt(id, "a", parked)).await.unwrap();
    let replay = |replay: Uuid| OperatorRecord { replay: Some(replay), ..by_alice(OperatorAction::Replay, id, "a", "target-rejected") };
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(store.parked_action(&id.to_string(), "a", 0).await.unwrap(), None);
    assert_eq!(store.record_operator_action(replay(first)).await.unwrap(), ActionClaim::Recorded);
    // The worker that takes the replayed message records the same replay.
    assert_eq!(store.record_operator_action(replay(first)).await.unwrap(), ActionClaim::Repeated);
    // A second replay (or a discard) of the same parked copy loses.
    assert_eq!(store.record_operator_action(replay(second)).await.unwrap(), ActionClaim::Superseded);
    let discard = by_alice(OperatorAction::Discard, id, "a", "target-rejected");
    assert_eq!(store.record_operator_action(discard.clone()).await.unwrap(), ActionClaim::Superseded);
    assert_eq!(store.parked_action(&id.to_string(), "a", 0).await.unwrap(), Some(OperatorAction::Replay));
    assert_eq!(store.audit_trail(10, None).await.unwrap().len(), 1, "one audit row");
    // The next parked copy (after one replay) is free again.
    let next = OperatorRecord { generation: Some(1), ..discard };
    assert_eq!(store.record_operator_action(next).await.unwrap(), ActionClaim::Recorded);
}

pub async fn status_and_timeline_follow_the_deliveries(store: Arc<dyn Store>) {
    let id = Uuid::new_v4();
    store.begin_intake(submission(id), None).await.unwrap();
    assert_eq!(store.status(id).await.unwrap().unwrap().status, SubmissionState::Received);
    store.confirm_intake(id).await.unwrap();
    let retrying = AttemptResult::Retrying { error: "HTTP 503".into(), retry_in: Duration::from_secs(2) };
    store.record_attempt(attempt(id, "a", retrying)).await.unwrap();
    store.record_attempt(AttemptRecord { attempt: 2, ..attempt(id, "a", delivered("HTTP 200")) }).await.unwrap();
    assert_eq!(store.status(id).await.unwrap().unwrap().status, SubmissionState::Accepted);
    let with_receipt = AttemptResult::Delivered { detail: "HTTP 201".into(), receipt: Some("GEW-2026-0815".into()) };
    store.record_attempt(attempt(id, "b", with_receipt)).await.unwrap();

    let status = store.status(id).await.unwrap().unwrap();
    assert_eq!(status.status, SubmissionState::Delivered);
    assert_eq!((status.size, status.sha256.as_deref()), (Some(1234), Some("ab".repeat(32).as_str())));
    assert_eq!(status.targets[0].attempts, 2);
    assert_eq!(status.targets[1].last_outcome.as_deref(), Some("HTTP 201"));
    assert_eq!(status.targets[1].receipt.as_deref(), Some("GEW-2026-0815"));
    let events: Vec<(&str, Option<&str>)> =
        status.timeline.iter().map(|e| (e.event.as_str(), e.target.as_deref())).collect();
    assert_eq!(
        events,
        [
            ("received", None),
            ("routed", None),
            ("accepted", None),
            ("mapped", Some("a")),
            ("attempt-failed", Some("a")),
            ("retry-scheduled", Some("a")),
            ("mapped", Some("a")),
            ("delivered", Some("a")),
            ("mapped", Some("b")),
            ("delivered", Some("b")),
        ]
    );
    assert_eq!(status.timeline[1].detail.as_deref(), Some("a, b"));
    assert_eq!(status.timeline[5].detail.as_deref(), Some("next attempt in 2s"));
    assert_eq!(status.timeline[9].receipt.as_deref(), Some("GEW-2026-0815"));
    assert_eq!(status.timeline[9].duration_ms, Some(12));
    assert_eq!(status.timeline[3].mapping_version.as_deref(), Some("sha256:test"));
    // Each entry holds its own fields only, whether the ledger keeps it in
    // a row of its own or shares the row with another.
    let fields = |e: &Event| {
        let json = serde_json::to_value(e).unwrap();
        let mut fields = json.as_object().unwrap().keys().filter(|k| *k != "at").cloned().collect::<Vec<_>>();
        fields.sort();
        fields
    };
    assert_eq!(fields(&status.timeline[0]), ["event", "sha256", "size"]);
    assert_eq!(fields(&status.timeline[1]), ["detail", "event"]);
    assert_eq!(fields(&status.timeline[3]), ["attempt", "event", "mappingVersion", "sha256", "size", "target"]);
    assert_eq!(fields(&status.timeline[4]), ["attempt", "detail", "durationMs", "event", "target"]);
    assert_eq!(fields(&status.timeline[9]), ["attempt", "detail", "durationMs", "event", "receipt", "target"]);
    assert_eq!((status.timeline[3].size, status.timeline[3].sha256.as_deref()), (Some(99), Some("cd".repeat(32).as_str())));
    assert_eq!(status.timeline[0].at, status.timeline[1].at);
    assert_eq!(status.timeline[8].at, status.timeline[9].at);
}

pub async fn a_failed_mapping_is_in_the_timeline_without_an_attempt(store: Arc<dyn Store>) {
    let id = accepted(&*store, submission(Uuid::new_v4())).await;
    let parked = AttemptResult::Parked { reason: "mapping-error", error: "line 3: no such field".into() };
    store.record_attempt(AttemptRecord { rendering: Rendering::Failed, duration: None, ..attempt(id, "a", parked) }).await.unwrap();
    let status = store.status(id).await.unwrap().unwrap();
    let events: Vec<&str> = status.timeline.iter().skip(3).map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["mapping-failed", "parked"]);
    assert_eq!(status.timeline[4].detail.as_deref(), Some("mapping-error"));
}

pub async fn a_message_stopped_before_the_mapping_is_parked_with_its_reason_and_no_mapping_event(store: Arc<dyn Store>) {
    let id = accepted(&*store, submission(Uuid::new_v4())).await;
    let parked = AttemptResult::Parked { reason: "outside-tenant", error: "region \"053140000000\" is not of the target's tenant".into() };
    store.record_attempt(AttemptRecord { rendering: Rendering::NotReached, duration: None, ..attempt(id, "a", parked) }).await.unwrap();
    let status = store.status(id).await.unwrap().unwrap();
    let events: Vec<(&str, Option<&str>)> = status.timeline.iter().skip(3).map(|e| (e.event.as_str(), e.detail.as_deref())).collect();
    assert_eq!(events, [("parked", Some("outside-tenant: region \"053140000000\" is not of the target's tenant"))]);
}

pub async fn search_filters_and_pages_newest_first(store: Arc<dyn Store>) {
    let start = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let mut ids = Vec::new();
    for i in 0..7i64 {
        let mut s = submission(Uuid::new_v4());
        s.received_at = start + time::Duration::minutes(i);
        s.reference = Some(format!("R-{}", i % 2));
        s.region = if i < 5 { "053150000000".into() } else { "091620000000".into() };
        ids.push(accepted(&*store, s).await);
    }
    store.record_attempt(attempt(ids[6], "a", delivered("HTTP 200"))).await.unwrap();
    store.record_attempt(attempt(ids[6], "b", delivered("HTTP 200"))).await.unwrap();

    let query = |q: SearchQuery| async { store.search(q).await.unwrap() };
    let all = query(SearchQuery { limit: 3, ..SearchQuery::default() }).await;
    assert_eq!(all.items.iter().map(|s| s.id).collect::<Vec<_>>(), [ids[6], ids[5], ids[4]]);
    let after = Cursor::decode(all.next.as_deref().unwrap()).unwrap();
    let second = query(SearchQuery { limit: 3, after: Some(after), ..SearchQuery::default() }).await;
    assert_eq!(second.items.iter().map(|s| s.id).collect::<Vec<_>>(), [ids[3], ids[2], ids[1]]);
    let third = query(SearchQuery { limit: 3, after: Cursor::decode(&second.next.unwrap()), ..SearchQuery::default() }).await;
    assert_eq!((third.items.len(), third.next), (1, None));

    let koeln = query(SearchQuery { region: Some("05315".into()), limit: 50, ..SearchQuery::default() }).await;
    assert_eq!(koeln.items.len(), 5);
    let reference = query(SearchQuery { reference: Some("R-1".into()), limit: 50, ..SearchQuery::default() }).await;
    assert_eq!(reference.items.len(), 3);
    let delivered = query(SearchQuery { state: Some(SubmissionState::Delivered), limit: 50, ..SearchQuery::default() }).await;
    assert_eq!(delivered.items.iter().map(|s| s.id).collect::<Vec<_>>(), [ids[6]]);
    assert_eq!(delivered.items[0].targets.len(), 2);
    let window = SearchQuery {
        from: Some(start + time::Duration::minutes(2)),
        to: Some(start + time::Duration::minutes(4)),
        limit: 50,
        ..SearchQuery::default()
    };
    assert_eq!(query(window).await.items.iter().map(|s| s.id).collect::<Vec<_>>(), [ids[3], ids[2]]);
    let nowhere = query(SearchQuery { target: Some("c".into()), limit: 50, ..SearchQuery::default() }).await;
    assert!(nowhere.items.is_empty());
    // An operator's scope: only submissions that went to its targets.
    let outside = query(SearchQuery { within: Some(vec!["c".into(), "d".into()]), limit: 50, ..SearchQuery::default() }).await;
    assert!(outside.items.is_empty());
    let inside = query(SearchQuery { within: Some(vec!["c".into(), "b".into()]), limit: 50, ..SearchQuery::default() }).await;
    assert_eq!(inside.items.len(), ids.len());
}

pub async fn many_concurrent_writes_all_land(store: Arc<dyn Store>) {
    let mut writes = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let store = store.clone();
        writes.spawn(async move { accepted(&*store, submission(Uuid::new_v4())).await });
    }
    let ids: Vec<Uuid> = writes.join_all().await;
    for id in ids {
        assert_eq!(store.status(id).await.unwrap().unwrap().status, SubmissionState::Accepted);
    }
}

pub async fn a_failing_write_leaves_the_others_of_its_batch(store: Arc<dyn Store>) {
    let id = Uuid::new_v4();
    let (first, twin) = tokio::join!(store.begin_intake(submission(id), None), store.begin_intake(submission(id), None));
    // The same id twice: one insert fails on the primary key, the other
    // stands, whether or not they shared a transaction.
    assert!(first.is_ok() != twin.is_ok(), "{first:?} {twin:?}");
    assert!(store.status(id).await.unwrap().is_some());
    store.check_writable().await.unwrap();
}

/// Gives the pruned submission's id, for an implementation's own check
/// that nothing of it is left.
pub async fn pruning_removes_finished_submissions_past_retention_only(store: Arc<dyn Store>) -> Uuid {
    let old = OffsetDateTime::now_utc() - time::Duration::days(100);
    let mut finished = submission(Uuid::new_v4());
    finished.received_at = old;
    let finished = accepted(&*store, finished).await;
    store.record_attempt(attempt(finished, "a", delivered("HTTP 200"))).await.unwrap();
    store.record_attempt(attempt(finished, "b", delivered("HTTP 200"))).await.unwrap();
    let mut open = submission(Uuid::new_v4());
    open.received_at = old;
    let open = accepted(&*store, open).await;
    let recent = accepted(&*store, submission(Uuid::new_v4())).await;
    store.record_attempt(attempt(recent, "a", delivered("HTTP 200"))).await.unwrap();
    store.record_attempt(attempt(recent, "b", delivered("HTTP 200"))).await.unwrap();

    let removed = store.prune(OffsetDateTime::now_utc() - time::Duration::days(90), 10).await.unwrap();
    assert_eq!(removed, 1);
    assert!(store.status(finished).await.unwrap().is_none());
    assert!(store.status(open).await.unwrap().is_some(), "still on its way: kept");
    assert!(store.status(recent).await.unwrap().is_some());
    finished
}

pub async fn activity_counts_per_target_and_finds_the_oldest_undelivered(store: Arc<dyn Store>) {
    let mut early = submission(Uuid::new_v4());
    early.received_at = crate::domain::now_millis() - time::Duration::hours(5);
    let received_at = early.received_at;
    let early = accepted(&*store, early).await;
    store.record_attempt(attempt(early, "a", delivered("HTTP 200"))).await.unwrap();
    let retrying = AttemptResult::Retrying { error: "HTTP 503".into(), retry_in: Duration::from_secs(1) };
    store.record_attempt(attempt(early, "b", retrying)).await.unwrap();
    let activity = store.activity(OffsetDateTime::now_utc() - time::Duration::hours(1)).await.unwrap();
    assert_eq!((activity["a"].delivered, activity["a"].failed), (1, 0));
    assert_eq!((activity["b"].delivered, activity["b"].failed), (0, 1));
    let oldest = store.oldest_undelivered().await.unwrap();
    assert_eq!(oldest.keys().collect::<Vec<_>>(), ["b"], "a has it");
    assert_eq!(oldest["b"], received_at, "received 5 hours ago");
}

pub async fn each_ledger_has_its_own_id(store: Arc<dyn Store>) {
    let name = store.ledger_id().await.unwrap();
    assert!(!name.is_empty());
    assert_eq!(store.ledger_id().await.unwrap(), name, "a ledger keeps its id");
}

pub async fn a_fit_connect_submission_is_decided_once_and_its_ids_shown(store: Arc<dyn Store>) {
    let fit = Uuid::new_v4();
    let id = Uuid::now_v7();
    assert_eq!(store.fit_connect_decision(fit).await.unwrap(), None);
    let claimed = key("#fit-connect:x", 7);
    store.begin_intake(submission(id), claimed).await.unwrap();
    assert_eq!(store.accepted_under_key("#fit-connect:x").await.unwrap(), None, "not before the broker confirmed it");
    store.confirm_intake(id).await.unwrap();
    assert_eq!(store.accepted_under_key("#fit-connect:x").await.unwrap(), Some((id, [7; 32])));
    assert_eq!(store.accepted_under_key("#fit-connect:y").await.unwrap(), None);
    let accept = FitConnectDecision {
        fit_submission: fit,
        case_id: Uuid::new_v4(),
        destination: Uuid::new_v4(),
        submission: Some(id),
        verdict: Verdict::Accept,
        payload: r#"{"authenticationTags":{}}"#.into(),
        decided_at: String::new(),
        sent_at: None,
    };
    let recorded = store.decide_fit_connect(accept.clone()).await.unwrap();
    assert_eq!((recorded.verdict, recorded.submission, recorded.sent_at.clone()), (Verdict::Accept, Some(id), None));
    // Whoever decides second gets the first decision back.
    let reject = FitConnectDecision { submission: None, verdict: Verdict::Reject, payload: "[]".into(), ..accept.clone() };
    assert_eq!(store.decide_fit_connect(reject).await.unwrap(), recorded);
    store.fit_connect_decision_sent(fit).await.unwrap();
    let sent = store.fit_connect_decision(fit).await.unwrap().unwrap();
    assert!(sent.sent_at.is_some());
    store.fit_connect_decision_sent(fit).await.unwrap();
    assert_eq!(store.fit_connect_decision(fit).await.unwrap().unwrap().sent_at, sent.sent_at, "sent once, the first time kept");
    let status = store.status(id).await.unwrap().unwrap();
    assert_eq!(
        status.fit_connect,
        Some(FitConnectIds {
            submission_id: fit.to_string(),
            case_id: accept.case_id.to_string(),
            destination_id: accept.destination.to_string()
        })
    );
    // A sent rejection goes with the retention period.
    let rejected = Uuid::new_v4();
    store
        .decide_fit_connect(FitConnectDecision { fit_submission: rejected, submission: None, verdict: Verdict::Reject, ..accept.clone() })
        .await
        .unwrap();
    store.fit_connect_decision_sent(rejected).await.unwrap();
    store.prune(OffsetDateTime::now_utc() - Duration::from_secs(3600), 100).await.unwrap();
    assert!(store.fit_connect_decision(rejected).await.unwrap().is_some(), "within the retention period");
    store.prune(OffsetDateTime::now_utc() + Duration::from_secs(1), 100).await.unwrap();
    assert!(store.fit_connect_decision(rejected).await.unwrap().is_none(), "past it");
    assert!(store.fit_connect_decision(fit).await.unwrap().is_some(), "kept while its submission is");
}

/// Intake heard the broker's confirm but could not record it (the ledger
/// was away), and its own worker delivered: the attempt's record accepts
/// the submission, so the ledger ends with its true state.
pub async fn an_attempt_on_a_submission_whose_confirm_was_not_recorded_accepts_it(store: Arc<dyn Store>) {
    let id = Uuid::now_v7();
    store.begin_intake(submission(id), None).await.unwrap();
    store.record_attempt(attempt(id, "a", delivered("HTTP 200"))).await.unwrap();
    store.record_attempt(attempt(id, "b", delivered("HTTP 200"))).await.unwrap();
    let status = store.status(id).await.unwrap().unwrap();
    assert_eq!(status.status, SubmissionState::Delivered);
    let accepted: Vec<&Event> = status.timeline.iter().filter(|e| e.event == "accepted").collect();
    assert_eq!(accepted.len(), 1, "accepted once, with the first attempt");
    assert_eq!(store.refuse_intake(id, "late").await.unwrap(), Refusal::AcceptedMeanwhile, "and no longer refusable");
}
