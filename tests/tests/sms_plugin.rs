//! The SMS plugin, loaded from its built `.so` exactly as the host loads it (through `plugin_api::harness`),
//! against a fake Telnyx (real HTTP, every request recorded, scripted answers) and a real PostgreSQL with
//! FrostGuard's schema. No Redis here: the end-to-end cases are in `sms_e2e.rs`.
//!
//! Each test asserts the exact request Telnyx got (or that none was made), the job outcome, and the
//! delivery row.

use std::time::{Duration, Instant};

use frostguard_tests::{json, plugin_lib, FakeHttp, Postgres, RecordedRequest, Reply, SMS_PLUGIN};
use plugin_api::harness::{Harness, HarnessRun, JobSpec};
use plugin_api::host::{ForwardedLog, LoadStage, LogLevel};
use plugin_api::{JobOpts, Outcome, PluginConfig, RetryScope};
use serde_json::Value;

const QUEUE: &str = "sms-notifications";
const PHONE: &str = "+15551234567";
const MASKED: &str = "+1555*****67";
const FROM: &str = "+15550009999";
const KEY: &str = "KEYtest0123456789";
const PROFILE: &str = "400174d2-7ba3-4d1e-8b02-3a0b8c1f6e55";
const TEXT: &str =
    "CRITICAL: Temperature alert for unit. Temperature excursion confirmed after delay period";

fn config(telnyx: &FakeHttp, pg: Option<&Postgres>, extra: &[(&str, &str)]) -> PluginConfig {
    let mut c = PluginConfig::from_pairs([
        ("TELNYX_API_KEY", KEY.to_owned()),
        ("TELNYX_PHONE_NUMBER", FROM.to_owned()),
        ("TELNYX_MESSAGING_PROFILE_ID", PROFILE.to_owned()),
        ("TELNYX_API_BASE_URL", telnyx.url()),
        ("SMS_REQUEST_TIMEOUT_MS", "1500".to_owned()),
        ("SMS_AUTH_RETRY_DELAY_MS", "30000".to_owned()),
    ]);
    if let Some(pg) = pg {
        c.insert("DATABASE_URL", pg.url());
    }
    for (k, v) in extra {
        c.insert(*k, *v);
    }
    c
}

fn load(config: PluginConfig) -> Harness {
    Harness::load(&plugin_lib(SMS_PLUGIN), config).expect("sms plugin loads")
}

/// A pending SMS delivery row (with the alert → unit → area → site → org chain it needs); returns its id.
fn insert_delivery(pg: &Postgres) -> String {
    let id = pg
        .query_scalar("SELECT gen_random_uuid()::text AS id")
        .expect("new uuid")
        .expect("a uuid");
    pg.execute(&format!(
        "WITH o AS (INSERT INTO organizations (name, slug) VALUES ('Org', 'org') RETURNING id), \
         s AS (INSERT INTO sites (organization_id, name) SELECT id, 'Site' FROM o RETURNING id), \
         a AS (INSERT INTO areas (site_id, name) SELECT id, 'Area' FROM s RETURNING id), \
         u AS (INSERT INTO units (area_id, name) SELECT id, 'Freezer 1' FROM a RETURNING id), \
         al AS (INSERT INTO alerts (unit_id, alert_type, severity) \
                SELECT id, 'alarm_active', 'critical' FROM u RETURNING id) \
         INSERT INTO notification_deliveries (id, alert_id, channel, recipient) \
         SELECT '{id}', id, 'sms', '{PHONE}' FROM al"
    ))
    .expect("insert delivery");
    id
}

fn row(pg: &Postgres, id: &str) -> Value {
    let rows = pg
        .query_json(&format!(
            "SELECT status::text, external_id, error_message, retry_count, sent_at IS NOT NULL AS has_sent_at, \
             failed_at IS NOT NULL AS has_failed_at, last_retry_at IS NOT NULL AS has_last_retry_at \
             FROM notification_deliveries WHERE id = '{id}'"
        ))
        .expect("read delivery");
    rows.into_iter().next().expect("delivery row exists")
}

fn data(delivery_id: Option<&str>) -> Value {
    let mut d = json!({
        "organizationId": "11111111-2222-3333-4444-555555555555",
        "phoneNumber": PHONE,
        "message": TEXT,
        "alertId": "a-1",
        "userId": "u-1",
        "alertType": "alarm_active",
    });
    if let Some(id) = delivery_id {
        d["deliveryId"] = json!(id);
    }
    d
}

/// A job as FrostGuard enqueues it (attempts 5, exponential 2 s), on attempt `attempts_made + 1`.
fn job(data: Value, attempts_made: u32) -> JobSpec {
    let mut spec = JobSpec::new(QUEUE, "sms:send", data);
    spec.attempts_made = attempts_made;
    spec.opts = JobOpts {
        attempts: 5,
        backoff: Some(json!({"type": "exponential", "delay": 2000})),
        ..JobOpts::default()
    };
    spec
}

fn accepted(id: &str) -> Reply {
    Reply::json(
        200,
        &json!({"data": {"record_type": "message", "id": id, "direction": "outbound", "type": "SMS",
                          "from": {"phone_number": FROM}, "to": [{"phone_number": PHONE, "status": "queued"}],
                          "text": TEXT, "parts": 2, "encoding": "GSM-7"}}),
    )
}

fn telnyx_error(status: u16, code: &str, title: &str, detail: &str) -> Reply {
    Reply::json(
        status,
        &json!({"errors": [{"code": code, "title": title, "detail": detail}]}),
    )
}

/// The request exactly as Telnyx must see it.
fn assert_telnyx_request(r: &RecordedRequest) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v2/messages");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("accept"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"from": FROM, "to": PHONE, "text": TEXT, "messaging_profile_id": PROFILE})
    );
}

fn record_text(l: &ForwardedLog) -> String {
    let fields: Vec<String> = l.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{:?} {} {} {}",
        l.level,
        l.target,
        l.message,
        fields.join(" ")
    )
}

/// No log line may carry the full number, the message body or the API key.
fn assert_no_personal_data(logs: &[ForwardedLog]) {
    for l in logs {
        let text = record_text(l);
        assert!(
            !text.contains(PHONE),
            "log line leaks the phone number: {text}"
        );
        assert!(
            !text.contains("Temperature excursion"),
            "log line leaks the message: {text}"
        );
        assert!(!text.contains(KEY), "log line leaks the API key: {text}");
    }
}

fn failed(run: &HarnessRun) -> (&str, bool) {
    match &run.outcome {
        Outcome::Failed {
            message,
            unrecoverable,
        } => (message.as_str(), *unrecoverable),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn describes_queue_concurrency_rate_limit_and_config_keys() {
    let telnyx = FakeHttp::scripted(vec![], Reply::status(500)).unwrap();
    let h = load(config(&telnyx, None, &[]));
    let info = h.info();
    assert_eq!(info.name, "sms-notifications");
    let p = info.processor(QUEUE).expect("serves sms-notifications");
    assert_eq!(p.job_names, vec!["sms:send".to_owned()]);
    assert_eq!(p.default_concurrency, 5);
    assert!(p.rate_limit.is_some());
    for key in [
        "TELNYX_API_KEY",
        "TELNYX_PHONE_NUMBER",
        "TELNYX_MESSAGING_PROFILE_ID",
        "DATABASE_URL",
        "TELNYX_API_BASE_URL",
        "SMS_DRY_RUN",
        "SMS_REQUEST_TIMEOUT_MS",
    ] {
        assert!(
            info.config_keys.iter().any(|k| k == key),
            "missing config key {key}"
        );
    }
}

#[test]
fn success_sends_the_exact_request_marks_the_row_and_never_sends_twice() {
    let pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(
        vec![accepted("msg-0001"), accepted("msg-0002")],
        Reply::status(500),
    )
    .unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let init_logs = h.take_logs();
    let delivery = insert_delivery(&pg);

    let run = h.run(job(data(Some(&delivery)), 0));
    assert_eq!(
        run.outcome,
        Outcome::completed(json!({"success": true, "messageId": "msg-0001"}))
    );
    let reqs = telnyx.requests();
    assert_eq!(reqs.len(), 1);
    assert_telnyx_request(&reqs[0]);
    let r = row(&pg, &delivery);
    assert_eq!(r["status"], "sent");
    assert_eq!(r["external_id"], "msg-0001");
    assert_eq!(r["has_sent_at"], true);
    assert_eq!(r["retry_count"], 0);
    assert_eq!(r["error_message"], Value::Null);
    // The masked number is what operators see.
    assert!(
        run.logs.iter().any(|l| record_text(l).contains(MASKED)),
        "{:?}",
        run.logs
    );
    assert_no_personal_data(&init_logs);
    assert_no_personal_data(&run.logs);

    // The same job again (a retry, or a stalled job run twice): no second SMS, the recorded id comes back.
    let again = h.run(job(data(Some(&delivery)), 1));
    assert_eq!(
        again.outcome,
        Outcome::completed(json!({"success": true, "messageId": "msg-0001", "alreadySent": true}))
    );
    assert_eq!(
        telnyx.requests().len(),
        1,
        "a sent delivery must not be sent again"
    );

    // Another delivery on the same plugin reuses the pooled connection.
    let second = insert_delivery(&pg);
    let run = h.run(job(data(Some(&second)), 0));
    assert_eq!(
        run.outcome,
        Outcome::completed(json!({"success": true, "messageId": "msg-0002"}))
    );
    let reqs = telnyx.requests();
    assert_eq!(reqs.len(), 2);
    assert_telnyx_request(&reqs[1]);
    assert_eq!(
        reqs[0].connection, reqs[1].connection,
        "the HTTP connection is reused across jobs"
    );
    assert_eq!(row(&pg, &second)["external_id"], "msg-0002");
}

#[test]
fn permanent_error_fails_unrecoverably_and_marks_the_row_failed() {
    let pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(
        vec![telnyx_error(
            422,
            "40310",
            "Invalid 'to' address",
            "The 'to' address is not a valid mobile number.",
        )],
        Reply::status(500),
    )
    .unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let delivery = insert_delivery(&pg);

    let run = h.run(job(data(Some(&delivery)), 0));
    assert_eq!(
        run.outcome,
        Outcome::unrecoverable(
            "Permanent SMS failure: 40310: The 'to' address is not a valid mobile number."
        )
    );
    assert_eq!(telnyx.requests().len(), 1);
    assert_telnyx_request(&telnyx.requests()[0]);
    let r = row(&pg, &delivery);
    assert_eq!(r["status"], "failed");
    assert_eq!(
        r["error_message"],
        "40310: The 'to' address is not a valid mobile number."
    );
    assert_eq!(r["has_failed_at"], true);
    assert_eq!(r["external_id"], Value::Null);
    assert_no_personal_data(&run.logs);
}

#[test]
fn opt_out_is_permanent_and_its_detail_is_scrubbed_of_the_number() {
    let pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(
        vec![telnyx_error(
            400,
            "40300",
            "Blocked due to STOP message",
            &format!("{PHONE} has opted out."),
        )],
        Reply::status(500),
    )
    .unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let delivery = insert_delivery(&pg);
    let run = h.run(job(data(Some(&delivery)), 0));
    assert_eq!(
        run.outcome,
        Outcome::unrecoverable(format!(
            "Permanent SMS failure: 40300: {MASKED} has opted out."
        ))
    );
    assert_eq!(
        row(&pg, &delivery)["error_message"],
        format!("40300: {MASKED} has opted out.")
    );
    assert_no_personal_data(&run.logs);
}

#[test]
fn rate_limit_pauses_the_queue_for_the_retry_after_hint_without_touching_the_row() {
    let pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(
        vec![
            telnyx_error(429, "10011", "Too many requests", "Rate limit exceeded")
                .header("Retry-After", "7"),
        ],
        accepted("msg-after-429"),
    )
    .unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let delivery = insert_delivery(&pg);

    let run = h.run(job(data(Some(&delivery)), 0));
    match &run.outcome {
        Outcome::RetryLater {
            delay_ms,
            scope,
            reason,
        } => {
            assert_eq!(*delay_ms, 7000);
            assert_eq!(*scope, RetryScope::Queue);
            assert!(reason.contains("10011"), "{reason}");
        }
        other => panic!("expected RetryLater, got {other:?}"),
    }
    let r = row(&pg, &delivery);
    assert_eq!(r["status"], "pending");
    assert_eq!(r["retry_count"], 0);
    assert_eq!(r["has_last_retry_at"], false);

    // No attempt was consumed: the host runs it again with the same attemptsMade, and it goes through.
    let run = h.run(job(data(Some(&delivery)), 0));
    assert_eq!(
        run.outcome,
        Outcome::completed(json!({"success": true, "messageId": "msg-after-429"}))
    );
    assert_eq!(telnyx.requests().len(), 2);
}

#[test]
fn server_error_is_retried_and_recorded_then_succeeds() {
    let pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(
        vec![
            telnyx_error(500, "50000", "Internal error", "Something went wrong"),
            accepted("msg-after-500"),
        ],
        Reply::status(500),
    )
    .unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let delivery = insert_delivery(&pg);

    let run = h.run(job(data(Some(&delivery)), 0));
    assert_eq!(
        failed(&run),
        ("SMS send failed: 50000: Something went wrong", false)
    );
    let r = row(&pg, &delivery);
    assert_eq!(r["status"], "pending");
    assert_eq!(r["retry_count"], 1);
    assert_eq!(r["has_last_retry_at"], true);

    let run = h.run(job(data(Some(&delivery)), 1));
    assert_eq!(
        run.outcome,
        Outcome::completed(json!({"success": true, "messageId": "msg-after-500"}))
    );
    let reqs = telnyx.requests();
    assert_eq!(reqs.len(), 2);
    assert_telnyx_request(&reqs[1]);
    let r = row(&pg, &delivery);
    assert_eq!(r["status"], "sent");
    assert_eq!(r["external_id"], "msg-after-500");
    assert_eq!(r["retry_count"], 1);
}

#[test]
fn transient_failure_on_the_last_attempt_marks_the_row_failed() {
    let pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(vec![], Reply::status(503)).unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let delivery = insert_delivery(&pg);

    let run = h.run(job(data(Some(&delivery)), 3));
    assert_eq!(failed(&run), ("SMS send failed: HTTP 503", false));
    assert_eq!(row(&pg, &delivery)["status"], "pending");
    assert_eq!(row(&pg, &delivery)["retry_count"], 4);

    let run = h.run(job(data(Some(&delivery)), 4));
    assert_eq!(failed(&run), ("SMS send failed: HTTP 503", false));
    let r = row(&pg, &delivery);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error_message"], "HTTP 503");
    assert_eq!(r["retry_count"], 5);
    assert_eq!(r["has_failed_at"], true);
}

#[test]
fn rejected_credentials_pause_the_queue_log_an_error_every_time_and_never_fail_the_job() {
    let pg = Postgres::start().unwrap();
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
    let h = load(config(&telnyx, Some(&pg), &[]));
    let delivery = insert_delivery(&pg);

    // Even on what would be the last attempt: auth failures are not the job's fault.
    for attempts_made in [0, 4] {
        let run = h.run(job(data(Some(&delivery)), attempts_made));
        match &run.outcome {
            Outcome::RetryLater {
                delay_ms,
                scope,
                reason,
            } => {
                assert_eq!(*delay_ms, 30000);
                assert_eq!(*scope, RetryScope::Queue);
                assert!(reason.contains("10009"), "{reason}");
            }
            other => panic!("expected RetryLater, got {other:?}"),
        }
        assert!(
            run.logs
                .iter()
                .any(|l| l.level == LogLevel::Error && l.message.contains("credentials")),
            "an error is logged on every auth failure: {:?}",
            run.logs
        );
        assert_no_personal_data(&run.logs);
    }
    assert_eq!(telnyx.requests().len(), 2);
    let r = row(&pg, &delivery);
    assert_eq!(r["status"], "pending");
    assert_eq!(r["retry_count"], 0);
}

#[test]
fn hanging_provider_times_out_as_a_retryable_failure() {
    let pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(vec![Reply::hang()], accepted("late")).unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let delivery = insert_delivery(&pg);

    let started = Instant::now();
    let run = h.run(job(data(Some(&delivery)), 0));
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
    assert_eq!(telnyx.requests().len(), 1);
    let r = row(&pg, &delivery);
    assert_eq!(r["status"], "pending");
    assert_eq!(r["retry_count"], 1);
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
    spec.timeout = Some(Duration::from_millis(800));
    let started = Instant::now();
    let run = h.run(spec);
    let took = started.elapsed();
    let (message, unrecoverable) = failed(&run);
    assert!(!unrecoverable);
    // The request timeout is cut to the time left before the host's deadline (minus a margin).
    assert!(
        message.starts_with("SMS send failed: no answer from Telnyx within")
            || message.contains("deadline")
            || message.contains("cancelled"),
        "{message}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// Turns valid job data into invalid data.
type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn invalid_data_fails_unrecoverably_without_http_and_marks_the_row() {
    let pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(vec![], accepted("never")).unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));

    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|d| d["phoneNumber"] = json!("5551234567")),
            "phoneNumber is not an E.164 number",
        ),
        (
            Box::new(|d| d["phoneNumber"] = json!(15551234567u64)),
            "phoneNumber must be a string, got a number",
        ),
        (
            Box::new(|d| {
                d.as_object_mut()
                    .unwrap()
                    .remove("message")
                    .map(drop)
                    .unwrap()
            }),
            "message is missing",
        ),
        (Box::new(|d| d["message"] = json!("")), "message is empty"),
        (
            Box::new(|d| d["message"] = json!("x".repeat(1601))),
            "message is too long",
        ),
        (
            Box::new(|d| {
                d.as_object_mut()
                    .unwrap()
                    .remove("organizationId")
                    .map(drop)
                    .unwrap()
            }),
            "organizationId is missing",
        ),
    ];
    for (mutate, want) in cases {
        let delivery = insert_delivery(&pg);
        let mut d = data(Some(&delivery));
        mutate(&mut d);
        let run = h.run(job(d, 0));
        let (message, unrecoverable) = failed(&run);
        assert!(unrecoverable, "{message}");
        assert!(
            message.starts_with("invalid sms:send job: ") && message.contains(want),
            "{message}"
        );
        let r = row(&pg, &delivery);
        assert_eq!(r["status"], "failed");
        assert_eq!(r["error_message"], message);
        assert_eq!(r["has_failed_at"], true);
        assert_no_personal_data(&run.logs);
    }
    assert!(
        telnyx.requests().is_empty(),
        "invalid jobs never reach Telnyx"
    );

    // The plugin asks for unknown job names too (`handles_unknown_names`), so that it can mark the delivery
    // row failed with the reason before failing the job unrecoverably.
    let delivery = insert_delivery(&pg);
    let run = h.run(JobSpec::new(QUEUE, "sms:bulk", data(Some(&delivery))));
    let (message, unrecoverable) = failed(&run);
    assert!(
        unrecoverable && message.contains("unknown job name \"sms:bulk\""),
        "{message}"
    );
    let r = row(&pg, &delivery);
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error_message"], message);
    assert!(telnyx.requests().is_empty());
}

#[test]
fn database_down_is_a_retryable_failure_and_nothing_is_sent() {
    let mut pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(vec![], accepted("msg-after-db")).unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let delivery = insert_delivery(&pg);

    pg.stop();
    let run = h.run(job(data(Some(&delivery)), 0));
    let (message, unrecoverable) = failed(&run);
    assert!(!unrecoverable);
    assert!(
        message.starts_with("delivery tracking database unavailable"),
        "{message}"
    );
    assert!(
        telnyx.requests().is_empty(),
        "no SMS while the idempotency record cannot be read"
    );

    pg.restart().unwrap();
    let run = h.run(job(data(Some(&delivery)), 1));
    assert_eq!(
        run.outcome,
        Outcome::completed(json!({"success": true, "messageId": "msg-after-db"}))
    );
    assert_eq!(row(&pg, &delivery)["status"], "sent");
}

#[test]
fn without_a_database_it_sends_untracked_and_says_so_once_at_init() {
    let telnyx = FakeHttp::scripted(vec![], accepted("msg-untracked")).unwrap();
    let h = load(config(&telnyx, None, &[]));
    let init_logs = h.take_logs();
    assert!(
        init_logs
            .iter()
            .any(|l| l.level == LogLevel::Warn && l.message.contains("DATABASE_URL not set")),
        "{init_logs:?}"
    );
    for _ in 0..2 {
        let run = h.run(job(data(Some("7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b")), 0));
        assert_eq!(
            run.outcome,
            Outcome::completed(json!({"success": true, "messageId": "msg-untracked"}))
        );
        assert!(
            !run.logs.iter().any(|l| l.message.contains("DATABASE_URL")),
            "logged once, at init"
        );
    }
    assert_eq!(telnyx.requests().len(), 2);
    assert_telnyx_request(&telnyx.requests()[1]);
}

#[test]
fn refuses_to_init_without_key_or_sender() {
    let telnyx = FakeHttp::scripted(vec![], Reply::status(500)).unwrap();
    for missing in ["TELNYX_API_KEY", "TELNYX_PHONE_NUMBER"] {
        let mut c = config(&telnyx, None, &[]);
        c.insert(missing, "");
        let err = match Harness::load(&plugin_lib(SMS_PLUGIN), c) {
            Ok(_) => panic!("init must fail without {missing}"),
            Err(e) => e,
        };
        assert_eq!(err.stage, LoadStage::Init);
        assert!(
            err.reason.contains(missing) && err.reason.contains("SMS_DRY_RUN"),
            "{}",
            err.reason
        );
        assert!(!err.reason.contains(KEY));
    }
}

#[test]
fn dry_run_completes_without_http_or_database_writes() {
    let pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(vec![], accepted("never")).unwrap();
    let c = PluginConfig::from_pairs([
        ("SMS_DRY_RUN", "true".to_owned()),
        ("TELNYX_API_BASE_URL", telnyx.url()),
        ("DATABASE_URL", pg.url()),
    ]);
    let h = load(c);
    let delivery = insert_delivery(&pg);
    let run = h.run(job(data(Some(&delivery)), 0));
    assert_eq!(
        run.outcome,
        Outcome::completed(json!({"success": true, "dryRun": true}))
    );
    assert!(
        run.logs.iter().any(|l| record_text(l).contains(MASKED)),
        "{:?}",
        run.logs
    );
    assert_no_personal_data(&run.logs);
    assert!(telnyx.requests().is_empty());
    assert_eq!(row(&pg, &delivery)["status"], "pending");

    // Invalid data is still rejected in dry-run mode.
    let mut bad = data(Some(&delivery));
    bad["phoneNumber"] = json!("12");
    let (_, unrecoverable) = failed(&h.run(job(bad, 0)));
    assert!(unrecoverable);
    assert_eq!(
        row(&pg, &delivery)["status"],
        "pending",
        "dry run writes nothing"
    );
}

#[test]
fn a_database_down_at_start_does_not_disable_sending_but_jobs_wait_for_it() {
    let telnyx = FakeHttp::scripted(vec![], accepted("never")).unwrap();
    let closed = frostguard_tests::free_port();
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
        init_logs
            .iter()
            .any(|l| l.level == LogLevel::Warn && l.message.contains("not reachable at start")),
        "{init_logs:?}"
    );
    let run = h.run(job(data(Some("7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b")), 0));
    let (message, unrecoverable) = failed(&run);
    assert!(
        !unrecoverable && message.starts_with("delivery tracking database unavailable"),
        "{message}"
    );
    assert!(telnyx.requests().is_empty());
}

#[test]
fn shutdown_stops_the_private_runtime_promptly_and_later_jobs_are_not_sent() {
    let telnyx = FakeHttp::scripted(vec![], accepted("msg-before-shutdown")).unwrap();
    let h = load(config(&telnyx, None, &[]));
    let run = h.run(job(data(None), 0));
    assert_eq!(
        run.outcome,
        Outcome::completed(json!({"success": true, "messageId": "msg-before-shutdown"}))
    );
    let started = Instant::now();
    h.shutdown(Duration::from_secs(2));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    // After shutdown a job fails retryably (plugin-api answers "not initialised"), and nothing is sent.
    let after = h.run(job(data(None), 0));
    let (message, unrecoverable) = failed(&after);
    assert!(!unrecoverable, "{message}");
    assert_eq!(telnyx.requests().len(), 1);
}

#[test]
fn a_missing_delivery_row_does_not_block_the_alert_but_is_reported() {
    let pg = Postgres::start().unwrap();
    let telnyx = FakeHttp::scripted(vec![], accepted("msg-no-row")).unwrap();
    let h = load(config(&telnyx, Some(&pg), &[]));
    let run = h.run(job(data(Some("7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b")), 0));
    assert_eq!(
        run.outcome,
        Outcome::completed(json!({"success": true, "messageId": "msg-no-row"}))
    );
    assert!(
        run.logs
            .iter()
            .any(|l| l.level == LogLevel::Warn && l.message.contains("delivery row not found")),
        "{:?}",
        run.logs
    );
    assert_eq!(telnyx.requests().len(), 1);
    let count = pg
        .query_scalar("SELECT count(*) AS n FROM notification_deliveries")
        .unwrap();
    assert_eq!(count.as_deref(), Some("0"), "no row is invented");
}
