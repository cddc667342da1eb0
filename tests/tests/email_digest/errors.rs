//! What each Resend answer, a timeout or a database outage makes of a digest job.

use super::seed::*;
use super::*;
use plugin_api::loader::LogLevel;
use plugin_api::RetryScope;

fn unrecoverable(message: &str) -> Outcome {
    Outcome::Failed {
        message: message.to_owned(),
        unrecoverable: true,
        detail: None,
    }
}

fn retryable(message: &str) -> Outcome {
    Outcome::Failed {
        message: message.to_owned(),
        unrecoverable: false,
        detail: None,
    }
}

fn later(delay_ms: u64, scope: RetryScope, reason: &str) -> Outcome {
    Outcome::RetryLater {
        delay_ms,
        scope,
        reason: reason.to_owned(),
    }
}

#[test]
fn resend_answers_map_to_job_outcomes() {
    let cases = [
        (
            resend_error(422, "invalid_parameter", "Invalid `to` field."),
            unrecoverable("Resend rejected the digest: invalid_parameter: Invalid `to` field. (HTTP 422)"),
        ),
        (
            resend_error(400, "validation_error", "The `from` field is invalid."),
            unrecoverable("Resend rejected the digest: validation_error: The `from` field is invalid. (HTTP 400)"),
        ),
        (
            resend_error(401, "missing_api_key", "Missing API key in the authorization header"),
            later(30_000, RetryScope::Queue, "Resend refused the API key or sender (missing_api_key: Missing API key in the authorization header (HTTP 401)); retrying in 30000 ms"),
        ),
        (
            resend_error(403, "invalid_api_key", "API key is invalid"),
            later(30_000, RetryScope::Queue, "Resend refused the API key or sender (invalid_api_key: API key is invalid (HTTP 403)); retrying in 30000 ms"),
        ),
        (
            resend_error(429, "rate_limit_exceeded", "Too many requests").header("Retry-After", "7"),
            later(7_000, RetryScope::Queue, "Resend rate limit (rate_limit_exceeded: Too many requests (HTTP 429)); retrying in 7000 ms"),
        ),
        (
            resend_error(409, "concurrent_idempotent_requests", "Same idempotency key used while original request is still in progress"),
            later(5_000, RetryScope::Job, &format!(
                "Resend is still processing a request with idempotency key email-digest/{USER_NY}/daily/job-harness-6 \
                 (concurrent_idempotent_requests: Same idempotency key used while original request is still in progress (HTTP 409))")),
        ),
        (
            resend_error(409, "invalid_idempotent_request", "Same idempotency key used with a different request payload"),
            unrecoverable("Resend rejected the digest: invalid_idempotent_request: Same idempotency key used with a different request payload (HTTP 409)"),
        ),
        (
            resend_error(500, "internal_server_error", "Unexpected error"),
            retryable("digest send failed: internal_server_error: Unexpected error (HTTP 500)"),
        ),
        (
            Reply::json(200, &json!({})),
            retryable("digest send failed: Resend answered HTTP 200 without an email id"),
        ),
    ];
    let (replies, expected): (Vec<Reply>, Vec<Outcome>) = cases.into_iter().unzip();
    let f = Fixture::start(replies, accepted("em-last"));
    for (i, want) in expected.iter().enumerate() {
        let run = f.run(ACME, USER_NY, "daily");
        assert_eq!(&run.outcome, want, "answer {i}");
        if matches!(i, 2 | 3) {
            assert!(
                logged(&run.logs, LogLevel::Error, "Resend refused our credentials"),
                "{:?}",
                run.logs
            );
        }
    }
    // Every answer was to a complete request; the next one succeeds.
    let requests = f.resend.requests();
    assert_eq!(requests.len(), expected.len());
    for r in &requests {
        assert_resend_request(r, NY_EMAIL);
    }
    let run = f.run(ACME, USER_NY, "daily");
    assert_eq!(
        completed(&run),
        &json!({"success": true, "messageId": "em-last"})
    );
}

#[test]
fn timeouts_and_database_outages_are_retryable() {
    let mut f = Fixture::start(vec![Reply::hang()], accepted("em-after"));
    let run = f.run(ACME, USER_NY, "daily");
    assert_eq!(
        run.outcome,
        retryable("digest send failed: no answer from Resend within 2000 ms")
    );
    f.pg.stop();
    let run = f.run(ACME, USER_NY, "daily");
    match &run.outcome {
        Outcome::Failed {
            message,
            unrecoverable: false,
            ..
        } => assert!(
            message.starts_with("digest database unavailable: "),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        f.resend.requests().len(),
        1,
        "nothing sent without the database"
    );
    f.pg.restart().unwrap();
    let run = f.run(ACME, USER_NY, "daily");
    assert_eq!(
        completed(&run),
        &json!({"success": true, "messageId": "em-after"})
    );
}
