//! Delivery tracking in PostgreSQL when it is not all there: the database down during a job or unreachable at
//! start (jobs wait for it, nothing is sent), no database configured (sent untracked), and a job whose delivery
//! row does not exist (sent, and reported).

use crate::{
    accepted, assert_telnyx_request, config, data, failed, job, load, logged, sent, Tracked,
    UNKNOWN_DELIVERY,
};
use frostguard_tests::{json, FakeHttp, Postgres, Schema};
use plugin_api::loader::LogLevel;

#[test]
fn database_down_is_a_retryable_failure_and_nothing_is_sent() {
    let mut t = Tracked::start(vec![], accepted("msg-after-db"));

    t.pg.stop();
    let run = t.run(0);
    let (message, unrecoverable) = failed(&run);
    assert!(!unrecoverable);
    assert!(
        message.starts_with("delivery tracking database unavailable"),
        "{message}"
    );
    assert!(
        t.telnyx.requests().is_empty(),
        "no SMS while the idempotency record cannot be read"
    );

    t.pg.restart().unwrap();
    let run = t.run(1);
    assert_eq!(run.outcome, sent("msg-after-db"));
    t.assert_row(json!({"status": "sent"}));
}

#[test]
fn without_a_database_it_sends_untracked_and_says_so_once_at_init() {
    let telnyx = FakeHttp::scripted(vec![], accepted("msg-untracked")).unwrap();
    let h = load(config(&telnyx, None, &[]));
    let init_logs = h.take_logs();
    assert!(
        logged(&init_logs, LogLevel::Warn, "DATABASE_URL not set"),
        "{init_logs:?}"
    );
    for _ in 0..2 {
        let run = h.run(job(data(Some(UNKNOWN_DELIVERY)), 0));
        assert_eq!(run.outcome, sent("msg-untracked"));
        assert!(
            !run.logs.iter().any(|l| l.message.contains("DATABASE_URL")),
            "logged once, at init"
        );
    }
    assert_eq!(telnyx.requests().len(), 2);
    assert_telnyx_request(&telnyx.requests()[1]);
}

#[test]
fn a_database_down_at_start_does_not_disable_sending_but_jobs_wait_for_it() {
    let telnyx = FakeHttp::scripted(vec![], accepted("never")).unwrap();
    // Held for this test, with nothing listening: no other test's server can appear there.
    let (closed, _held) = frostguard_tests::reserved_port();
    let h = load(config(
        &telnyx,
        None,
        &[(
            "DATABASE_URL",
            &format!("postgres://postgres@127.0.0.1:{closed}/frostguard"),
        )],
    ));
    let init_logs = h.take_logs();
    assert!(
        logged(&init_logs, LogLevel::Warn, "not reachable at start"),
        "{init_logs:?}"
    );
    let run = h.run(job(data(Some(UNKNOWN_DELIVERY)), 0));
    let (message, unrecoverable) = failed(&run);
    assert!(
        !unrecoverable && message.starts_with("delivery tracking database unavailable"),
        "{message}"
    );
    assert!(telnyx.requests().is_empty());
}

#[test]
fn a_missing_delivery_row_does_not_block_the_alert_but_is_reported() {
    let pg = Postgres::start_with(Schema::Migrated, false).unwrap();
    let telnyx = FakeHttp::scripted(vec![], accepted("msg-no-row")).unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let run = h.run(job(data(Some(UNKNOWN_DELIVERY)), 0));
    assert_eq!(run.outcome, sent("msg-no-row"));
    assert!(
        logged(&run.logs, LogLevel::Warn, "delivery row not found"),
        "{:?}",
        run.logs
    );
    assert_eq!(telnyx.requests().len(), 1);
    let count = pg
        .query_scalar("SELECT count(*) AS n FROM notification_deliveries")
        .unwrap();
    assert_eq!(count.as_deref(), Some("0"), "no row is invented");
}
