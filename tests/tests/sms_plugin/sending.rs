//! Sending: the exact request Telnyx gets, and what each of its answers (accepted, permanent error, opt-out,
//! rate limit, server error, rejected credentials, no answer) makes of the job outcome and the delivery row.

use std::time::{Duration, Instant};

use crate::{
    accepted, assert_masked_number_logged, assert_no_personal_data,
    assert_number_logged_only_masked, assert_telnyx_request, config, data, failed, job, load,
    logged, retried_later, sent, Tracked, MASKED, PHONE,
};
use frostguard_tests::{assert_delivery, insert_sms_delivery, json, telnyx_error, FakeHttp, Reply};
use plugin_api::loader::LogLevel;
use plugin_api::{Outcome, RetryScope};

#[test]
fn success_sends_the_exact_request_marks_the_row_and_never_sends_twice() {
    let t = Tracked::start(
        vec![accepted("msg-0001"), accepted("msg-0002")],
        Reply::status(500),
    );
    let init_logs = t.h.take_logs();

    let run = t.run(0);
    assert_eq!(run.outcome, sent("msg-0001"));
    let reqs = t.telnyx.requests();
    assert_eq!(reqs.len(), 1);
    assert_telnyx_request(&reqs[0]);
    t.assert_row(json!({
        "status": "sent",
        "external_id": "msg-0001",
        "has_sent_at": true,
        "retry_count": 0,
        "error_message": null,
    }));
    // The masked number is what operators see.
    assert_masked_number_logged(&run.logs);
    assert_no_personal_data(&init_logs);
    assert_no_personal_data(&run.logs);

    // The same job again (a retry, or a stalled job run twice): no second SMS, the recorded id comes back.
    let again = t.run(1);
    assert_eq!(
        again.outcome,
        Outcome::completed(json!({"success": true, "messageId": "msg-0001", "alreadySent": true}))
    );
    assert_eq!(
        t.telnyx.requests().len(),
        1,
        "a sent delivery must not be sent again"
    );

    // Another delivery on the same plugin reuses the pooled connection.
    let second = insert_sms_delivery(&t.pg, PHONE);
    let run = t.h.run(job(data(Some(&second)), 0));
    assert_eq!(run.outcome, sent("msg-0002"));
    let reqs = t.telnyx.requests();
    assert_eq!(reqs.len(), 2);
    assert_telnyx_request(&reqs[1]);
    assert_eq!(
        reqs[0].connection, reqs[1].connection,
        "the HTTP connection is reused across jobs"
    );
    assert_delivery(&t.pg, &second, json!({"external_id": "msg-0002"}));
}

#[test]
fn permanent_error_fails_unrecoverably_and_marks_the_row_failed() {
    let t = Tracked::start(
        vec![telnyx_error(
            422,
            "40310",
            "Invalid 'to' address",
            "The 'to' address is not a valid mobile number.",
        )],
        Reply::status(500),
    );

    let run = t.run(0);
    assert_eq!(
        run.outcome,
        Outcome::unrecoverable(
            "Permanent SMS failure: 40310: The 'to' address is not a valid mobile number."
        )
    );
    assert_eq!(t.telnyx.requests().len(), 1);
    assert_telnyx_request(&t.telnyx.requests()[0]);
    t.assert_row(json!({
        "status": "failed",
        "error_message": "40310: The 'to' address is not a valid mobile number.",
        "has_failed_at": true,
        "external_id": null,
    }));
    assert_number_logged_only_masked(&run.logs);
}

#[test]
fn opt_out_is_permanent_and_its_detail_is_scrubbed_of_the_number() {
    let t = Tracked::start(
        vec![telnyx_error(
            400,
            "40300",
            "Blocked due to STOP message",
            &format!("{PHONE} has opted out."),
        )],
        Reply::status(500),
    );
    let run = t.run(0);
    assert_eq!(
        run.outcome,
        Outcome::unrecoverable(format!(
            "Permanent SMS failure: 40300: {MASKED} has opted out."
        ))
    );
    t.assert_row(json!({"error_message": format!("40300: {MASKED} has opted out.")}));
    assert_number_logged_only_masked(&run.logs);
}

#[test]
fn rate_limit_pauses_the_queue_for_the_retry_after_hint_without_touching_the_row() {
    let t = Tracked::start(
        vec![
            telnyx_error(429, "10011", "Too many requests", "Rate limit exceeded")
                .header("Retry-After", "7"),
        ],
        accepted("msg-after-429"),
    );

    let run = t.run(0);
    let (delay_ms, scope, reason) = retried_later(&run);
    assert_eq!(delay_ms, 7000);
    assert_eq!(scope, RetryScope::Queue);
    assert!(reason.contains("10011"), "{reason}");
    t.assert_row(json!({"status": "pending", "retry_count": 0, "has_last_retry_at": false}));

    // No attempt was consumed: the host runs it again with the same attemptsMade, and it goes through.
    let run = t.run(0);
    assert_eq!(run.outcome, sent("msg-after-429"));
    assert_eq!(t.telnyx.requests().len(), 2);
}

#[test]
fn server_error_is_retried_and_recorded_then_succeeds() {
    let t = Tracked::start(
        vec![
            telnyx_error(500, "50000", "Internal error", "Something went wrong"),
            accepted("msg-after-500"),
        ],
        Reply::status(500),
    );

    let run = t.run(0);
    assert_eq!(
        failed(&run),
        ("SMS send failed: 50000: Something went wrong", false)
    );
    t.assert_row(json!({"status": "pending", "retry_count": 1, "has_last_retry_at": true}));

    let run = t.run(1);
    assert_eq!(run.outcome, sent("msg-after-500"));
    let reqs = t.telnyx.requests();
    assert_eq!(reqs.len(), 2);
    assert_telnyx_request(&reqs[1]);
    t.assert_row(json!({"status": "sent", "external_id": "msg-after-500", "retry_count": 1}));
}

#[test]
fn transient_failure_on_the_last_attempt_marks_the_row_failed() {
    let t = Tracked::start(vec![], Reply::status(503));

    let run = t.run(3);
    assert_eq!(failed(&run), ("SMS send failed: HTTP 503", false));
    t.assert_row(json!({"status": "pending", "retry_count": 4}));

    let run = t.run(4);
    assert_eq!(failed(&run), ("SMS send failed: HTTP 503", false));
    t.assert_row(json!({
        "status": "failed",
        "error_message": "HTTP 503",
        "retry_count": 5,
        "has_failed_at": true,
    }));
}

#[test]
fn rejected_credentials_pause_the_queue_log_an_error_every_time_and_never_fail_the_job() {
    let t = Tracked::start(
        vec![],
        telnyx_error(
            401,
            "10009",
            "Authentication failed",
            "The API key is invalid.",
        ),
    );

    // Even on what would be the last attempt: auth failures are not the job's fault.
    for attempts_made in [0, 4] {
        let run = t.run(attempts_made);
        let (delay_ms, scope, reason) = retried_later(&run);
        assert_eq!(delay_ms, 30000);
        assert_eq!(scope, RetryScope::Queue);
        assert!(reason.contains("10009"), "{reason}");
        assert!(
            logged(&run.logs, LogLevel::Error, "credentials"),
            "an error is logged on every auth failure: {:?}",
            run.logs
        );
        assert_number_logged_only_masked(&run.logs);
    }
    assert_eq!(t.telnyx.requests().len(), 2);
    t.assert_row(json!({"status": "pending", "retry_count": 0}));
}

#[test]
fn hanging_provider_times_out_as_a_retryable_failure() {
    let t = Tracked::start(vec![Reply::hang()], accepted("late"));

    let started = Instant::now();
    let run = t.run(0);
    let took = started.elapsed();
    assert_eq!(
        failed(&run),
        (
            "SMS send failed: no answer from Telnyx within 1500 ms",
            false
        )
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(6),
        "took {took:?}"
    );
    assert_eq!(t.telnyx.requests().len(), 1);
    t.assert_row(json!({"status": "pending", "retry_count": 1}));
}

#[test]
fn the_job_deadline_bounds_a_hanging_send() {
    let telnyx = FakeHttp::scripted(vec![Reply::hang()], Reply::status(500)).unwrap();
    let h = load(config(
        &telnyx,
        None,
        &[("SMS_REQUEST_TIMEOUT_MS", "30000")],
    ));
    let mut spec = job(data(None), 0);
    spec.timeout = Some(Duration::from_millis(2000));
    let started = Instant::now();
    let run = h.run(spec);
    let took = started.elapsed();
    let (message, unrecoverable) = failed(&run);
    assert!(!unrecoverable);
    // The request timeout is cut to the time left before the host's deadline minus the plugin's 500 ms
    // margin: at most 1500 ms here, and well above 1000 ms unless the machine stalled half a second between
    // building the job and sending it.
    let cut_ms: u64 = message
        .strip_prefix("SMS send failed: no answer from Telnyx within ")
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not the request timeout cut to the deadline: {message}"));
    assert!((1000..=1500).contains(&cut_ms), "{message}");
    assert!(
        took >= Duration::from_millis(cut_ms) && took < Duration::from_secs(10),
        "took {took:?}, far below the 30 s request timeout"
    );
}

/// Only credential failures hold the queue. A 403 without Telnyx's authentication codes is about this message:
/// the job fails by its code (or its status when there is none) and the row records it; nothing is held.
#[test]
fn a_403_that_is_not_about_credentials_fails_the_job_by_its_code() {
    let t = Tracked::start(vec![Reply::status(403)], Reply::status(403));
    let run = t.run(0);
    assert_eq!(failed(&run), ("Permanent SMS failure: HTTP 403", true));
    t.assert_row(json!({"status": "failed", "error_message": "HTTP 403", "has_failed_at": true}));
    assert!(
        !logged(&run.logs, LogLevel::Error, "credentials"),
        "{:?}",
        run.logs
    );

    let t = Tracked::start(
        vec![telnyx_error(
            403,
            "40305",
            "Invalid 'from' address",
            "The 'from' number is not enabled for messaging.",
        )],
        Reply::status(500),
    );
    let run = t.run(0);
    assert_eq!(
        failed(&run),
        (
            "Permanent SMS failure: 40305: The 'from' number is not enabled for messaging.",
            true
        )
    );

    // The authorisation code on a 403 is credentials: held, not failed.
    let t = Tracked::start(
        vec![telnyx_error(
            403,
            "10010",
            "Authorization failed",
            "Not permitted.",
        )],
        Reply::status(500),
    );
    let run = t.run(0);
    let (_, scope, reason) = retried_later(&run);
    assert_eq!(scope, RetryScope::Queue);
    assert!(reason.contains("10010"), "{reason}");
}
