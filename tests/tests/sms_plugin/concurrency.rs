//! Two runs of one delivery at the same time: a job whose BullMQ lock was lost while Telnyx was slow is
//! recovered as stalled and started again (by another worker, or another slot of this one) while the first
//! run is still waiting for Telnyx. Both would read the row as `pending`; the claim on the delivery row lets
//! only one of them send, and the other comes back later (no attempt used) to find the row `sent`.
//!
//! Proven on a direct connection and through a real PgBouncer in transaction mode with one server connection
//! (so both workers' statements share one PostgreSQL session, as a transaction pooler does), where a session
//! advisory lock would let both runs send. Telnyx answers slowly here (1.5 s), so the second run starts while
//! the first holds the claim. Also here: a claim left by an attempt that never finished (a crash) is taken
//! over once abandoned, and that re-run is logged and counted as possibly sent.

use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use crate::{accepted, assert_telnyx_request, config, data, job, load, retried_later, sent, PHONE};
use frostguard_tests::{
    assert_delivery, insert_sms_delivery, json, FakeHttp, PgBouncer, Postgres, Reply, Schema,
};
use plugin_api::harness::{Harness, HarnessRun};
use plugin_api::loader::LogLevel;
use plugin_api::{Outcome, PluginConfig, RetryScope};

const MESSAGE_ID: &str = "msg-only-once";
/// Long enough for the second run to start (and find the claim taken) while the first waits for Telnyx.
const SLOW_TELNYX: Duration = Duration::from_millis(1500);

/// PostgreSQL (FrostGuard's migrated tables) with one pending delivery, and a Telnyx that accepts every
/// message after [`SLOW_TELNYX`].
fn slow_telnyx_and_delivery() -> (Postgres, FakeHttp, String) {
    let pg = Postgres::start_with(Schema::Migrated, false).unwrap();
    let telnyx = FakeHttp::scripted(vec![], accepted(MESSAGE_ID).delay(SLOW_TELNYX)).unwrap();
    let delivery = insert_sms_delivery(&pg, PHONE);
    (pg, telnyx, delivery)
}

/// The plugin with `DATABASE_URL` = `database_url` and a request timeout well above [`SLOW_TELNYX`].
fn plugin(telnyx: &FakeHttp, pg: &Postgres, database_url: &str) -> Harness {
    let mut c: PluginConfig = config(telnyx, Some(pg), &[("SMS_REQUEST_TIMEOUT_MS", "10000")]);
    c.insert("DATABASE_URL", database_url);
    load(c)
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

/// Two plugin instances (two workers, each with its own pool) run the same delivery at once through
/// `database_url`: one SMS; the deferred run completes idempotently when it comes back.
fn two_workers_send_one_sms(pg: &Postgres, telnyx: &FakeHttp, delivery: &str, database_url: &str) {
    let first = plugin(telnyx, pg, database_url);
    let second = plugin(telnyx, pg, database_url);

    let runs = race(&first, &second, delivery);
    assert_one_sent_one_deferred(&runs, telnyx, delivery);
    let deferred_on = if matches!(runs[0].outcome, Outcome::RetryLater { .. }) {
        &first
    } else {
        &second
    };
    assert_rerun_completes_idempotently(deferred_on, pg, telnyx, delivery);
    // The claim ended with the send: nothing is left claimed (sent_at is the send time of a sent row).
    assert_delivery(pg, delivery, json!({"status": "sent", "has_sent_at": true}));
}

#[test]
fn two_runs_in_one_worker_send_one_sms() {
    let (pg, telnyx, delivery) = slow_telnyx_and_delivery();
    let h = plugin(&telnyx, &pg, &pg.url());

    let runs = race(&h, &h, &delivery);
    assert_one_sent_one_deferred(&runs, &telnyx, &delivery);
    assert_delivery(
        &pg,
        &delivery,
        json!({"status": "sent", "external_id": MESSAGE_ID}),
    );
    assert_rerun_completes_idempotently(&h, &pg, &telnyx, &delivery);
}

#[test]
fn two_workers_running_the_same_delivery_send_one_sms() {
    let (pg, telnyx, delivery) = slow_telnyx_and_delivery();
    two_workers_send_one_sms(&pg, &telnyx, &delivery, &pg.url());
}

#[test]
fn two_workers_behind_pgbouncer_in_transaction_mode_send_one_sms() {
    let (pg, telnyx, delivery) = slow_telnyx_and_delivery();
    let bouncer = PgBouncer::start(&pg, 1).unwrap();
    two_workers_send_one_sms(&pg, &telnyx, &delivery, &bouncer.url());
    // Every statement went through the pooler's one server connection.
    let through = pg
        .query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'frostguard' \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .unwrap();
    assert_eq!(through.as_deref(), Some("1"), "{:?}", bouncer.log_lines());
}

/// A claim left by an attempt that never recorded an outcome (the worker crashed while Telnyx answered):
/// while younger than the claim timeout, nobody sends; once older, the next run sends again, warning and
/// counting it as possibly sent (at-least-once), and the row ends `sent`.
#[test]
fn an_abandoned_claim_is_taken_over_and_the_rerun_counted_as_possibly_sent() {
    let pg = Postgres::start_with(Schema::Migrated, false).unwrap();
    let telnyx = FakeHttp::scripted(vec![], accepted("msg-again")).unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let delivery = insert_sms_delivery(&pg, PHONE);
    let claim = |age: &str| {
        pg.execute(&format!(
            "UPDATE notification_deliveries SET sent_at = now() - interval '{age}' WHERE id = '{delivery}'"
        ))
        .unwrap()
    };

    // A crash one second ago: that run may still be sending.
    claim("1 second");
    let run = h.run(job(data(Some(&delivery)), 1));
    let (_, scope, reason) = retried_later(&run);
    assert_eq!(scope, RetryScope::Job);
    assert!(reason.contains("is being sent by another run"), "{reason}");
    assert!(telnyx.requests().is_empty());

    // Ten minutes ago: abandoned. Sent again, and said so.
    claim("10 minutes");
    let run = h.run(job(data(Some(&delivery)), 1));
    assert_eq!(run.outcome, sent("msg-again"));
    assert_eq!(telnyx.requests().len(), 1);
    let warning = run
        .logs
        .iter()
        .find(|l| l.level == LogLevel::Warn && l.message.contains("may already have gone out"))
        .unwrap_or_else(|| panic!("no possibly-sent warning: {:?}", run.logs));
    assert!(
        warning
            .fields
            .iter()
            .any(|(k, v)| k == "event" && v == "possibly_sent"),
        "the warning carries the event the host counts: {warning:?}"
    );
    assert_delivery(
        &pg,
        &delivery,
        json!({"status": "sent", "external_id": "msg-again"}),
    );
}

/// An attempt whose outcome is unknown (Telnyx never answered) keeps its claim, so no second run sends until
/// the claim is abandoned; an attempt Telnyx answered with an error ends it, and the retry sends at once.
#[test]
fn the_attempt_is_recorded_before_the_call_and_only_an_answer_ends_it() {
    let pg = Postgres::start_with(Schema::Migrated, false).unwrap();
    let telnyx = FakeHttp::scripted(
        vec![Reply::hang(), Reply::status(503)],
        accepted("msg-after-503"),
    )
    .unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let timed_out = insert_sms_delivery(&pg, PHONE);
    let answered = insert_sms_delivery(&pg, PHONE);

    // The claim is on the row while the request is out, before any answer.
    thread::scope(|s| {
        let run = s.spawn(|| h.run(job(data(Some(&timed_out)), 0)));
        telnyx
            .wait_for_requests(1, Duration::from_secs(10))
            .unwrap();
        assert_delivery(
            &pg,
            &timed_out,
            json!({"status": "pending", "has_sent_at": true}),
        );
        let run = run.join().unwrap();
        assert!(
            matches!(
                run.outcome,
                Outcome::Failed {
                    unrecoverable: false,
                    ..
                }
            ),
            "{:?}",
            run.outcome
        );
    });
    assert_delivery(
        &pg,
        &timed_out,
        json!({"status": "pending", "retry_count": 1, "has_sent_at": true, "has_last_retry_at": true}),
    );
    let run = h.run(job(data(Some(&timed_out)), 1));
    assert!(
        matches!(run.outcome, Outcome::RetryLater { .. }),
        "{:?}",
        run.outcome
    );
    assert_eq!(
        telnyx.requests().len(),
        1,
        "no second send while the first may be in flight"
    );

    // Telnyx answered 503: nothing went out, the claim ends, the retry sends.
    let run = h.run(job(data(Some(&answered)), 0));
    assert!(
        matches!(
            run.outcome,
            Outcome::Failed {
                unrecoverable: false,
                ..
            }
        ),
        "{:?}",
        run.outcome
    );
    assert_delivery(
        &pg,
        &answered,
        json!({"status": "pending", "retry_count": 1, "has_sent_at": false}),
    );
    let run = h.run(job(data(Some(&answered)), 1));
    assert_eq!(run.outcome, sent("msg-after-503"));
    assert_delivery(
        &pg,
        &answered,
        json!({"status": "sent", "external_id": "msg-after-503"}),
    );
}
