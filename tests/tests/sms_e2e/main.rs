//! The SMS plugin end to end: Node BullMQ produces `sms:send` jobs with FrostGuard's options, the real host
//! (`frostguard-worker run`) consumes them with the built plugin, the plugin talks to a fake Telnyx over real
//! HTTP and to a real PostgreSQL. Asserted as Node sees the jobs (state, attemptsMade, failedReason,
//! returnvalue), plus the requests Telnyx got and the delivery rows.

mod operations;
mod sending;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use frostguard_tests::{
    assert_delivery, assert_no_secrets, http_get_body, insert_sms_delivery, json, sms_sent,
    telnyx_error, wait_until, FakeHttp, JobSnapshot, NodeQueue, Postgres, RecordedRequest,
    RedisServer, Reply, Schema, Worker, WorkerBuilder, SMS_PLUGIN, TEST_PLUGIN,
};
use serde_json::Value;

const QUEUE: &str = "sms-notifications";
const PHONE: &str = "+15551234567";
const FROM: &str = "+15550009999";
const KEY: &str = "KEYe2e0123456789";

/// FrostGuard's `smsJobOptions`, with the backoff delay shortened from 2000 ms so the test runs in seconds.
fn sms_job_options() -> Value {
    json!({
        "attempts": 5,
        "backoff": {"type": "exponential", "delay": 100},
        "removeOnComplete": 100,
        "removeOnFail": 500,
    })
}

fn job_data(scenario: &str, phone: &str, delivery_id: &str) -> Value {
    json!({
        "organizationId": "11111111-2222-3333-4444-555555555555",
        "phoneNumber": phone,
        "message": format!("CRITICAL: Temperature alert ({scenario})"),
        "alertId": "a-1",
        "deliveryId": delivery_id,
        "userId": "u-1",
        "alertType": "alarm_active",
    })
}

fn ok(id: &str) -> Reply {
    Reply::json(
        200,
        &json!({"data": {"id": id, "to": [{"phone_number": PHONE, "status": "queued"}]}}),
    )
}

/// The scenario a request belongs to, read back from the message text.
fn scenario_of(r: &RecordedRequest) -> String {
    let text = r.json()["text"].as_str().unwrap_or_default().to_owned();
    text.rsplit_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or("?")
        .to_owned()
}

/// A fake Telnyx answering each scenario from its own script (the n-th request *of that scenario*), so jobs
/// can run concurrently in any order.
fn fake_telnyx() -> FakeHttp {
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    FakeHttp::start(move |_, req| {
        let scenario = scenario_of(req);
        let n = {
            let mut seen = seen.lock().unwrap();
            let n = seen.entry(scenario.clone()).or_default();
            *n += 1;
            *n - 1
        };
        match (scenario.as_str(), n) {
            ("ok", _) => ok("msg-ok"),
            ("permanent", _) => telnyx_error(
                422,
                "40310",
                "Invalid 'to' address",
                "The 'to' address is not a valid mobile number.",
            ),
            ("flaky", 0) => telnyx_error(500, "50000", "Internal error", "Something went wrong"),
            ("flaky", _) => ok("msg-flaky"),
            ("down", _) => Reply::status(503),
            ("throttled", 0) => {
                telnyx_error(429, "10011", "Too many requests", "Rate limit exceeded")
                    .header("Retry-After", "1")
            }
            ("throttled", _) => ok("msg-throttled"),
            ("auth", 0 | 1) => telnyx_error(
                401,
                "10009",
                "Authentication failed",
                "The API key is invalid.",
            ),
            ("auth", _) => ok("msg-auth"),
            _ => Reply::status(418),
        }
    })
    .expect("fake telnyx starts")
}

fn by_scenario(reqs: &[RecordedRequest], scenario: &str) -> Vec<RecordedRequest> {
    reqs.iter()
        .filter(|r| scenario_of(r) == scenario)
        .cloned()
        .collect()
}

fn snapshot<'a>(jobs: &'a [JobSnapshot], id: &str) -> &'a JobSnapshot {
    jobs.iter().find(|j| j.id == id).expect("job snapshot")
}

/// A host on `redis` with the SMS plugin, sending as [`FROM`] with [`KEY`] to the fake Telnyx at `telnyx_url`.
fn sms_worker(redis: &RedisServer, telnyx_url: &str) -> WorkerBuilder {
    Worker::builder()
        .redis(redis)
        .plugins(&[SMS_PLUGIN])
        .env("TELNYX_API_KEY", KEY)
        .env("TELNYX_PHONE_NUMBER", FROM)
        .env("TELNYX_API_BASE_URL", telnyx_url)
}

/// Asserts that no log line carries the full phone number, the API key or the message body.
fn assert_no_secrets_in(lines: &[String]) {
    assert_no_secrets(
        lines,
        &[
            (PHONE, "the full phone number"),
            (KEY, "the API key"),
            ("Temperature alert", "the message body"),
        ],
    );
}

/// Asserts job `j`'s state and the attempts it has used.
fn assert_state(j: &JobSnapshot, state: &str, attempts_made: u32) {
    assert_eq!(
        (j.state.as_str(), j.attempts_made),
        (state, attempts_made),
        "{j:?}"
    );
}
