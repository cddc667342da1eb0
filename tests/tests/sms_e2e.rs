//! The SMS plugin end to end: Node BullMQ produces `sms:send` jobs with FrostGuard's options, the real host
//! (`frostguard-worker run`) consumes them with the built plugin, the plugin talks to a fake Telnyx over real
//! HTTP and to a real PostgreSQL. Asserted as Node sees the jobs (state, attemptsMade, failedReason,
//! returnvalue), plus the requests Telnyx got and the delivery rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use frostguard_tests::{
    assert_delivery, http_get_body, insert_sms_delivery, json, sms_sent, telnyx_error, wait_until,
    FakeHttp, JobSnapshot, NodeQueue, Postgres, RecordedRequest, RedisServer, Reply, Schema,
    Worker, SMS_PLUGIN, TEST_PLUGIN,
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

/// Asserts job `j`'s state and the attempts it has used.
fn assert_state(j: &JobSnapshot, state: &str, attempts_made: u32) {
    assert_eq!(
        (j.state.as_str(), j.attempts_made),
        (state, attempts_made),
        "{j:?}"
    );
}

#[test]
fn node_produced_sms_jobs_end_as_freshtrack_callers_expect() {
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start_with(Schema::Migrated, false).unwrap();
    let telnyx = fake_telnyx();
    let worker = Worker::builder()
        .redis(&redis)
        .plugins(&[SMS_PLUGIN])
        .env("TELNYX_API_KEY", KEY)
        .env("TELNYX_PHONE_NUMBER", FROM)
        .env("TELNYX_API_BASE_URL", telnyx.url())
        .env("DATABASE_URL", pg.url())
        .env("SMS_REQUEST_TIMEOUT_MS", "5000")
        .env("SMS_AUTH_RETRY_DELAY_MS", "1000")
        .spawn_ready()
        .unwrap();
    assert!(
        worker.has_line("queue consuming queue=sms-notifications concurrency=5 job_timeout_ms=60000"),
        "the plugin's default concurrency (5) and time budget (60 s) on the queue's start line:\n{}",
        worker.output_text()
    );

    // A delivery that an earlier run already sent: the retry must not text the recipient again.
    let duplicate_row = insert_sms_delivery(&pg, PHONE);
    pg.execute(&format!(
        "UPDATE notification_deliveries SET status = 'sent', external_id = 'msg-earlier', sent_at = now() \
         WHERE id = '{duplicate_row}'"
    ))
    .unwrap();

    let scenarios = [
        "ok",
        "permanent",
        "flaky",
        "down",
        "throttled",
        "auth",
        "invalid",
        "duplicate",
    ];
    let rows: HashMap<&str, String> = scenarios
        .iter()
        .map(|s| {
            (
                *s,
                if *s == "duplicate" {
                    duplicate_row.clone()
                } else {
                    insert_sms_delivery(&pg, PHONE)
                },
            )
        })
        .collect();
    let node = NodeQueue::new(&redis, QUEUE);
    let jobs: Vec<Value> = scenarios
        .iter()
        .map(|s| {
            let phone = if *s == "invalid" { "5551234567" } else { PHONE };
            json!({"name": "sms:send", "data": job_data(s, phone, &rows[s]), "opts": sms_job_options()})
        })
        .collect();
    let ids = node.add(json!(jobs)).unwrap();
    let id: HashMap<&str, String> = scenarios.iter().copied().zip(ids.iter().cloned()).collect();
    let started = Instant::now();
    let done = node
        .wait_states(&ids, &["completed", "failed"], Duration::from_secs(90))
        .unwrap();
    let took = started.elapsed();
    let job = |s: &str| snapshot(&done, &id[s]).clone();
    let reqs = telnyx.requests();

    // Accepted at once.
    let j = job("ok");
    assert_state(&j, "completed", 1);
    assert_eq!(j.returnvalue, sms_sent("msg-ok"));
    let sent = by_scenario(&reqs, "ok");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].path, "/v2/messages");
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(sent[0].header("content-type"), Some("application/json"));
    assert_eq!(
        sent[0].json(),
        json!({"from": FROM, "to": PHONE, "text": "CRITICAL: Temperature alert (ok)"}),
        "no messaging_profile_id when none is configured"
    );
    assert_delivery(
        &pg,
        &rows["ok"],
        json!({"status": "sent", "external_id": "msg-ok", "has_sent_at": true}),
    );

    // Permanent rejection: failed after one attempt, no retry.
    let j = job("permanent");
    assert_state(&j, "failed", 1);
    assert_eq!(
        j.failed_reason.as_deref(),
        Some("Permanent SMS failure: 40310: The 'to' address is not a valid mobile number.")
    );
    assert_eq!(by_scenario(&reqs, "permanent").len(), 1);
    assert_delivery(
        &pg,
        &rows["permanent"],
        json!({
            "status": "failed",
            "error_message": "40310: The 'to' address is not a valid mobile number.",
            "has_failed_at": true,
        }),
    );

    // 500 then success: one retry under the job's backoff.
    let j = job("flaky");
    assert_state(&j, "completed", 2);
    assert_eq!(j.returnvalue, sms_sent("msg-flaky"));
    assert_eq!(by_scenario(&reqs, "flaky").len(), 2);
    assert_delivery(
        &pg,
        &rows["flaky"],
        json!({"status": "sent", "retry_count": 1}),
    );

    // Always 503: all five attempts used, then failed, and the row says so (the Node original left it pending).
    let j = job("down");
    assert_state(&j, "failed", 5);
    assert_eq!(
        j.failed_reason.as_deref(),
        Some("SMS send failed: HTTP 503")
    );
    assert_eq!(by_scenario(&reqs, "down").len(), 5);
    assert_delivery(
        &pg,
        &rows["down"],
        json!({"status": "failed", "retry_count": 5, "error_message": "HTTP 503"}),
    );

    // 429 with Retry-After: 1 → waited about a second, no attempt consumed.
    let j = job("throttled");
    assert_state(&j, "completed", 1);
    assert_eq!(j.returnvalue, sms_sent("msg-throttled"));
    assert_eq!(by_scenario(&reqs, "throttled").len(), 2);
    assert_delivery(
        &pg,
        &rows["throttled"],
        json!({"status": "sent", "retry_count": 0}),
    );

    // 401 twice: the queue pauses, no attempt consumed, an error logged each time; then it goes through.
    assert_state(&job("auth"), "completed", 1);
    assert_eq!(by_scenario(&reqs, "auth").len(), 3);
    let auth_errors = worker
        .lines()
        .iter()
        .filter(|l| l.contains("rejected our credentials"))
        .count();
    assert_eq!(
        auth_errors,
        2,
        "one error line per auth failure:\n{}",
        worker.output_text()
    );
    assert_delivery(
        &pg,
        &rows["auth"],
        json!({"status": "sent", "external_id": "msg-auth", "retry_count": 0}),
    );

    // Invalid number: unrecoverable, never sent, row failed with the reason.
    let j = job("invalid");
    assert_state(&j, "failed", 1);
    let reason = j.failed_reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("invalid sms:send job: phoneNumber has no country code"),
        "{reason}"
    );
    assert!(by_scenario(&reqs, "invalid").is_empty());
    assert_delivery(
        &pg,
        &rows["invalid"],
        json!({"status": "failed", "error_message": reason}),
    );

    // Already sent: completed with the recorded id, nothing sent.
    let j = job("duplicate");
    assert_state(&j, "completed", 1);
    assert_eq!(
        j.returnvalue,
        json!({"success": true, "messageId": "msg-earlier", "alreadySent": true})
    );
    assert!(by_scenario(&reqs, "duplicate").is_empty());

    assert_eq!(
        reqs.len(),
        14,
        "exactly the requests above: {:?}",
        reqs.iter().map(scenario_of).collect::<Vec<_>>()
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    for line in worker.lines() {
        assert!(
            !line.contains(PHONE),
            "a log line carries the full phone number: {line}"
        );
        assert!(
            !line.contains(KEY),
            "a log line carries the API key: {line}"
        );
        assert!(
            !line.contains("Temperature alert"),
            "a log line carries the message body: {line}"
        );
    }
}

#[test]
fn without_credentials_the_plugin_is_disabled_and_sms_jobs_wait() {
    let redis = RedisServer::start().unwrap();
    let telnyx = fake_telnyx();
    let worker = Worker::builder()
        .redis(&redis)
        .plugins(&[SMS_PLUGIN, TEST_PLUGIN])
        .env("TELNYX_API_BASE_URL", telnyx.url())
        .spawn_ready()
        .unwrap();
    let line = worker
        .wait_for_line("plugin disabled", Duration::from_secs(5))
        .unwrap();
    assert!(
        line.contains("TELNYX_API_KEY") && line.contains("SMS_DRY_RUN"),
        "{line}"
    );

    let node = NodeQueue::new(&redis, QUEUE);
    let id = node
        .add_one(
            "sms:send",
            job_data("ok", PHONE, "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b"),
            sms_job_options(),
        )
        .unwrap();
    // Not a matter of waiting long enough: the worker runs (a job of the other plugin's queue goes through
    // after the SMS job was added) and has a BullMQ worker connection (named `bull:` + base64 of the queue)
    // for that queue only; none for `sms-notifications`.
    let other = NodeQueue::new(&redis, "test-outcomes")
        .run(json!([{"name": "complete", "data": {"result": "other queue"}}]))
        .unwrap();
    assert_eq!(other[0].state, "completed", "{:?}", other[0]);
    let clients = redis.cmd(&["CLIENT", "LIST"]).unwrap();
    let clients = clients.as_str().unwrap_or_default();
    assert!(
        clients.contains("name=bull:dGVzdC1vdXRjb21lcw== "),
        "{clients}"
    );
    assert!(
        !clients.contains("name=bull:c21zLW5vdGlmaWNhdGlvbnM="),
        "{clients}"
    );
    let j = node.job(&id).unwrap();
    assert_state(&j, "waiting", 0);
    assert_eq!(j.attempts_started, 0, "{j:?}");
    assert!(telnyx.requests().is_empty());
}

/// Personal data stays out of the log however the host is configured: at debug level (the host's and its
/// libraries' debug lines included) and as JSON, the number shows only masked, and neither the full number,
/// the message text nor the API key appear.
#[test]
fn at_debug_level_and_as_json_the_log_carries_the_number_only_masked() {
    let redis = RedisServer::start().unwrap();
    let telnyx = fake_telnyx();
    let worker = Worker::builder()
        .redis(&redis)
        .plugins(&[SMS_PLUGIN])
        .env("TELNYX_API_KEY", KEY)
        .env("TELNYX_PHONE_NUMBER", FROM)
        .env("TELNYX_API_BASE_URL", telnyx.url())
        .env("RUST_LOG", "debug")
        .env("LOG_FORMAT", "json")
        .spawn_ready()
        .unwrap();
    let node = NodeQueue::new(&redis, QUEUE);
    let ids = node
        .add(json!([
            {"name": "sms:send", "data": job_data("ok", PHONE, "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b"), "opts": sms_job_options()},
            {"name": "sms:send", "data": job_data("permanent", PHONE, "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6c"), "opts": sms_job_options()},
        ]))
        .unwrap();
    let done = node.wait_finished(&ids).unwrap();
    assert_state(&done[0], "completed", 1);
    assert_state(&done[1], "failed", 1);
    // The line that names the number is there, as JSON, with the number masked.
    let sending = worker
        .wait_for_line(
            "Telnyx rejected the SMS permanently",
            Duration::from_secs(10),
        )
        .unwrap();
    let record: Value = serde_json::from_str(&sending).expect("a JSON log line");
    assert!(record.to_string().contains("+1555*****67"), "{record}");
    let lines = worker.lines();
    assert!(
        lines.iter().any(|l| l.contains("DEBUG")),
        "debug lines are on"
    );
    for line in &lines {
        assert!(
            !line.contains(PHONE),
            "a log line carries the full phone number: {line}"
        );
        assert!(
            !line.contains(KEY),
            "a log line carries the API key: {line}"
        );
        assert!(
            !line.contains("Temperature alert"),
            "a log line carries the message body: {line}"
        );
    }
}

#[test]
fn dry_run_completes_jobs_without_calling_telnyx() {
    let redis = RedisServer::start().unwrap();
    let telnyx = fake_telnyx();
    let worker = Worker::builder()
        .redis(&redis)
        .plugins(&[SMS_PLUGIN])
        .env("SMS_DRY_RUN", "true")
        .env("TELNYX_API_BASE_URL", telnyx.url())
        .spawn_ready()
        .unwrap();
    let node = NodeQueue::new(&redis, QUEUE);
    let ids = node
        .add(json!([{"name": "sms:send", "data": job_data("ok", PHONE, "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b"),
                      "opts": sms_job_options()}]))
        .unwrap();
    let done = node.wait_finished(&ids).unwrap();
    assert_eq!(done[0].state, "completed", "{:?}", done[0]);
    assert_eq!(
        done[0].returnvalue,
        json!({"success": true, "dryRun": true})
    );
    wait_until(Duration::from_secs(5), "dry-run log line", || {
        worker
            .lines()
            .into_iter()
            .find(|l| l.contains("dry run: SMS not sent") && l.contains("+1555*****67"))
    })
    .unwrap();
    assert!(telnyx.requests().is_empty());
}

/// FrostGuard stores numbers as users typed them; each typed form goes from a Node producer through the host
/// to Telnyx as E.164, and only a real non-number fails (for good, with the reason, row `failed`).
#[test]
fn numbers_as_people_type_them_reach_telnyx_as_e164() {
    let typed = [
        ("+1 555 123 4567", "+15551234567"),
        ("+1-555-123-4567", "+15551234567"),
        ("+1 (555) 123-4567", "+15551234567"),
        ("+44 (0)7911 123456", "+447911123456"),
        ("+15551234567 ", "+15551234567"),
        ("+1.555.123.4567", "+15551234567"),
    ];
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start_with(Schema::Migrated, false).unwrap();
    let telnyx = FakeHttp::start(|n, _| ok(&format!("msg-{n}"))).unwrap();
    let _worker = Worker::builder()
        .redis(&redis)
        .plugins(&[SMS_PLUGIN])
        .env("TELNYX_API_KEY", KEY)
        .env("TELNYX_PHONE_NUMBER", FROM)
        .env("TELNYX_API_BASE_URL", telnyx.url())
        .env("DATABASE_URL", pg.url())
        .spawn_ready()
        .unwrap();
    let node = NodeQueue::new(&redis, QUEUE);

    let mut jobs = Vec::new();
    let mut rows = Vec::new();
    for (i, (number, _)) in typed.iter().chain([&("call me", "")]).enumerate() {
        let row = insert_sms_delivery(&pg, number);
        jobs.push(
            json!({"name": "sms:send", "data": job_data(&format!("typed-{i}"), number, &row),
                         "opts": sms_job_options()}),
        );
        rows.push(row);
    }
    let ids = node.add(Value::Array(jobs)).unwrap();
    let done = node.wait_finished(&ids).unwrap();

    let reqs = telnyx.requests();
    for (i, (number, e164)) in typed.iter().enumerate() {
        let j = snapshot(&done, &ids[i]);
        assert_state(j, "completed", 1);
        let sent_to: Vec<String> = by_scenario(&reqs, &format!("typed-{i}"))
            .iter()
            .map(|r| r.json()["to"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(sent_to, vec![e164.to_string()], "typed {number:?}");
        assert_delivery(&pg, &rows[i], json!({"status": "sent"}));
    }
    let not_a_number = snapshot(&done, &ids[typed.len()]);
    assert_state(not_a_number, "failed", 1);
    let reason = not_a_number.failed_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("phoneNumber has no country code"),
        "{reason}"
    );
    assert_delivery(
        &pg,
        &rows[typed.len()],
        json!({"status": "failed", "has_failed_at": true}),
    );
    assert_eq!(reqs.len(), typed.len(), "nothing sent for the non-number");
}

/// Refused credentials hold the queue — and say so: an error line, `/readyz` naming the held queue, the
/// plugin and the reason, and the metrics; a job waits without using an attempt.
#[test]
fn refused_credentials_hold_the_queue_visibly() {
    let redis = RedisServer::start().unwrap();
    let telnyx = FakeHttp::scripted(
        vec![],
        telnyx_error(
            401,
            "10009",
            "Authentication failed",
            "The API key is invalid.",
        ),
    )
    .unwrap();
    let mut started = None;
    for _ in 0..5 {
        let port = frostguard_tests::free_port();
        let spawned = Worker::builder()
            .redis(&redis)
            .plugins(&[SMS_PLUGIN])
            .env("TELNYX_API_KEY", KEY)
            .env("TELNYX_PHONE_NUMBER", FROM)
            .env("TELNYX_API_BASE_URL", telnyx.url())
            .env("SMS_AUTH_RETRY_DELAY_MS", "60000")
            .env("HTTP_PORT", port.to_string())
            .spawn_ready();
        match spawned {
            Ok(worker) => {
                started = Some((worker, port));
                break;
            }
            Err(e) if format!("{e:#}").contains("HTTP_PORT") => continue,
            Err(e) => panic!("host did not get ready: {e:#}"),
        }
    }
    let (worker, port) = started.expect("a free HTTP port within 5 tries");
    let node = NodeQueue::new(&redis, QUEUE);
    let id = node
        .add_one(
            "sms:send",
            job_data("auth", PHONE, "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b"),
            sms_job_options(),
        )
        .unwrap();

    let line = worker
        .wait_for_line("Telnyx rejected our credentials", Duration::from_secs(20))
        .unwrap();
    assert!(line.contains("ERROR") && line.contains("10009"), "{line}");
    let ready: Value = wait_until(Duration::from_secs(10), "the hold on /readyz", || {
        let body: Value = serde_json::from_str(&http_get_body(port, "/readyz")?).ok()?;
        (!body["held_queues"].as_array()?.is_empty()).then_some(body)
    })
    .unwrap();
    let held = &ready["held_queues"][0];
    assert_eq!(held["queue"], QUEUE, "{ready}");
    assert_eq!(held["plugin"], "sms-notifications", "{ready}");
    assert!(
        held["reason"].as_str().unwrap().contains("10009"),
        "{ready}"
    );
    let metrics = http_get_body(port, "/metrics").unwrap();
    let sample = |name: &str, label: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(label) && l.contains("sms-notifications"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(
        sample("frostguard_queue_held{", "queue=\"sms-notifications\""),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(
            "frostguard_plugin_events_total{",
            "event=\"credentials_rejected\""
        ) >= Some(1.0),
        "{metrics}"
    );

    // The job waits for the operator, with no attempt used; one request, not a retry storm.
    let j = node.job(&id).unwrap();
    assert_eq!(j.attempts_made, 0, "{j:?}");
    assert!(
        matches!(j.state.as_str(), "waiting" | "prioritized" | "delayed"),
        "{j:?}"
    );
    assert_eq!(telnyx.requests().len(), 1);
}
