//! FrostGuard's delivery table as deployments really have it: `retry_count varchar(10) DEFAULT '0'` (what its
//! journaled migrations leave) and, after the unjournaled change, an integer. Every write the plugin makes
//! works on both, and each retried attempt records `retry_count` and `last_retry_at`.

use crate::{accepted, config, data, failed, job, load, sent, PHONE};
use frostguard_tests::{
    assert_delivery, insert_sms_delivery, json, FakeHttp, Postgres, Reply, Schema,
};

/// Two retryable failures, then the last attempt fails too, on a fresh database of `schema`; then a second
/// delivery goes through after one retry. Checks the column type first, so the variant is the one named.
fn retries_are_recorded_on(schema: Schema, column_type: &str) {
    let pg = Postgres::start_with(schema, false).unwrap();
    assert_eq!(
        pg.query_scalar(
            "SELECT data_type FROM information_schema.columns \
             WHERE table_name = 'notification_deliveries' AND column_name = 'retry_count'"
        )
        .unwrap()
        .as_deref(),
        Some(column_type)
    );
    let telnyx = FakeHttp::scripted(
        vec![
            Reply::status(503),
            Reply::status(502),
            Reply::status(500),
            Reply::status(503),
        ],
        accepted("msg-retried"),
    )
    .unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let exhausted = insert_sms_delivery(&pg, PHONE);
    let retried = insert_sms_delivery(&pg, PHONE);
    assert_delivery(
        &pg,
        &exhausted,
        json!({"status": "pending", "retry_count": 0}),
    );

    // Attempts 1 and 2 of 3 fail retryably: each records the count and the time.
    let job3 = |attempts_made| {
        let mut spec = job(data(Some(&exhausted)), attempts_made);
        spec.opts.attempts = 3;
        h.run(spec)
    };
    assert_eq!(failed(&job3(0)), ("SMS send failed: HTTP 503", false));
    assert_delivery(
        &pg,
        &exhausted,
        json!({"status": "pending", "retry_count": 1, "has_last_retry_at": true}),
    );
    pg.execute(&format!(
        "UPDATE notification_deliveries SET last_retry_at = NULL WHERE id = '{exhausted}'"
    ))
    .unwrap();
    assert_eq!(failed(&job3(1)), ("SMS send failed: HTTP 502", false));
    assert_delivery(
        &pg,
        &exhausted,
        json!({"status": "pending", "retry_count": 2, "has_last_retry_at": true}),
    );
    // The last attempt: the row is final.
    assert_eq!(failed(&job3(2)), ("SMS send failed: HTTP 500", false));
    assert_delivery(
        &pg,
        &exhausted,
        json!({"status": "failed", "retry_count": 3, "error_message": "HTTP 500", "has_failed_at": true}),
    );

    // Another delivery: one retry, then sent; the count stays.
    assert_eq!(
        failed(&h.run(job(data(Some(&retried)), 0))),
        ("SMS send failed: HTTP 503", false)
    );
    assert_eq!(
        h.run(job(data(Some(&retried)), 1)).outcome,
        sent("msg-retried")
    );
    assert_delivery(
        &pg,
        &retried,
        json!({"status": "sent", "external_id": "msg-retried", "retry_count": 1, "has_last_retry_at": true}),
    );
    // The stored text of a varchar column is the plain number.
    assert_eq!(
        pg.query_scalar(&format!(
            "SELECT retry_count::text FROM notification_deliveries WHERE id = '{exhausted}'"
        ))
        .unwrap()
        .as_deref(),
        Some("3")
    );
}

#[test]
fn retries_are_recorded_with_retry_count_as_frostguards_migrations_leave_it_varchar() {
    retries_are_recorded_on(Schema::Migrated, "character varying");
}

#[test]
fn retries_are_recorded_with_retry_count_as_an_integer() {
    retries_are_recorded_on(Schema::MigratedIntegerRetryCount, "integer");
}
