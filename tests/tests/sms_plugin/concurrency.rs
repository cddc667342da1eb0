//! Two runs of one delivery at the same time: a job whose BullMQ lock was lost while Telnyx was slow is
//! recovered as stalled and started again (by another worker, or another slot of this one) while the first
//! run is still waiting for Telnyx. Both would read the row as `pending`; the delivery's advisory lock lets
//! only one of them send, and the other comes back later (no attempt used) to find the row `sent`.
//!
//! Telnyx answers slowly here (1.5 s), so the second run starts while the first holds the lock.

use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use crate::{accepted, assert_telnyx_request, config, data, job, load, retried_later, sent, PHONE};
use frostguard_tests::{assert_delivery, insert_sms_delivery, json, FakeHttp, Postgres};
use plugin_api::harness::{Harness, HarnessRun};
use plugin_api::{Outcome, RetryScope};

const MESSAGE_ID: &str = "msg-only-once";
/// Long enough for the second run to start (and find the lock taken) while the first waits for Telnyx.
const SLOW_TELNYX: Duration = Duration::from_millis(1500);

/// PostgreSQL with one pending delivery, and a Telnyx that accepts every message after [`SLOW_TELNYX`].
fn slow_telnyx_and_delivery() -> (Postgres, FakeHttp, String) {
    let pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(vec![], accepted(MESSAGE_ID).delay(SLOW_TELNYX)).unwrap();
    let delivery = insert_sms_delivery(&pg, PHONE);
    (pg, telnyx, delivery)
}

/// The plugin with a request timeout well above [`SLOW_TELNYX`].
fn plugin(telnyx: &FakeHttp, pg: &Postgres) -> Harness {
    load(config(
        telnyx,
        Some(pg),
        &[("SMS_REQUEST_TIMEOUT_MS", "10000")],
    ))
}

/// Runs the delivery's job on `first` and `second` from two threads released together; the outcomes in
/// the order the runs were started.
fn race(first: &Harness, second: &Harness, delivery: &str) -> [HarnessRun; 2] {
    let start = Barrier::new(2);
    thread::scope(|s| {
        let runs = [first, second].map(|h| {
            let start = &start;
            s.spawn(move || {
                start.wait();
                h.run(job(data(Some(delivery)), 0))
            })
        });
        runs.map(|run| run.join().expect("run thread"))
    })
}

/// Exactly one run sent (and completed with the message id); the other sent nothing and is retried later,
/// job-scoped, without using an attempt.
fn assert_one_sent_one_deferred(runs: &[HarnessRun; 2], telnyx: &FakeHttp, delivery: &str) {
    let (completed, deferred): (Vec<_>, Vec<_>) = runs
        .iter()
        .partition(|run| matches!(run.outcome, Outcome::Completed { .. }));
    assert_eq!(
        (completed.len(), deferred.len()),
        (1, 1),
        "outcomes: {:?}",
        runs.iter().map(|r| &r.outcome).collect::<Vec<_>>()
    );
    assert_eq!(completed[0].outcome, sent(MESSAGE_ID));
    let (delay_ms, scope, reason) = retried_later(deferred[0]);
    assert_eq!(scope, RetryScope::Job);
    assert!((1000..=10_000).contains(&delay_ms), "{delay_ms}");
    assert_eq!(
        reason,
        format!("delivery {delivery} is being sent by another run")
    );

    let requests = telnyx.requests();
    assert_eq!(requests.len(), 1, "one SMS for one delivery");
    assert_telnyx_request(&requests[0]);
}

/// What the deferred run finds when it comes back: the row `sent`, nothing sent again.
fn assert_rerun_completes_idempotently(
    h: &Harness,
    pg: &Postgres,
    telnyx: &FakeHttp,
    delivery: &str,
) {
    let again = h.run(job(data(Some(delivery)), 0));
    assert_eq!(
        again.outcome,
        Outcome::completed(json!({"success": true, "messageId": MESSAGE_ID, "alreadySent": true}))
    );
    assert_eq!(telnyx.requests().len(), 1);
    assert_delivery(
        pg,
        delivery,
        json!({"status": "sent", "external_id": MESSAGE_ID, "retry_count": 0}),
    );
}

/// No session (the pooled connections are still open) holds an advisory lock once the runs are over.
fn assert_no_lock_left(pg: &Postgres) {
    let held = pg
        .query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        .unwrap();
    assert_eq!(held.as_deref(), Some("0"));
}

#[test]
fn two_runs_in_one_worker_send_one_sms() {
    let (pg, telnyx, delivery) = slow_telnyx_and_delivery();
    let h = plugin(&telnyx, &pg);

    let runs = race(&h, &h, &delivery);
    assert_one_sent_one_deferred(&runs, &telnyx, &delivery);
    assert_delivery(
        &pg,
        &delivery,
        json!({"status": "sent", "external_id": MESSAGE_ID}),
    );
    assert_no_lock_left(&pg);

    assert_rerun_completes_idempotently(&h, &pg, &telnyx, &delivery);
    assert_no_lock_left(&pg);
}

#[test]
fn two_workers_running_the_same_delivery_send_one_sms() {
    let (pg, telnyx, delivery) = slow_telnyx_and_delivery();
    // Each load is a private copy of the .so: two plugin instances with their own pools, as two workers.
    let first = plugin(&telnyx, &pg);
    let second = plugin(&telnyx, &pg);

    let runs = race(&first, &second, &delivery);
    assert_one_sent_one_deferred(&runs, &telnyx, &delivery);
    assert_no_lock_left(&pg);

    let deferred_on = if matches!(runs[0].outcome, Outcome::RetryLater { .. }) {
        &first
    } else {
        &second
    };
    assert_rerun_completes_idempotently(deferred_on, &pg, &telnyx, &delivery);
    assert_no_lock_left(&pg);
}
