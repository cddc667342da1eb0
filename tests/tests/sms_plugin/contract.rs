//! What the host relies on besides sending: the plugin's description (queue, concurrency, rate limit, config
//! keys), refusing to start without credentials, dry-run mode, rejecting invalid jobs (and unknown job names)
//! with the reason on the delivery row, and a prompt shutdown.

use std::time::{Duration, Instant};

use crate::{
    accepted, assert_masked_number_logged, assert_no_personal_data, config, data, failed, job,
    load, record_text, sent, Tracked, KEY, PHONE, QUEUE,
};
use frostguard_tests::{
    assert_delivery, insert_sms_delivery, json, plugin_lib, FakeHttp, Postgres, Reply, Schema,
    SMS_PLUGIN,
};
use plugin_api::harness::{Harness, JobSpec};
use plugin_api::loader::LoadStage;
use plugin_api::{Outcome, PluginConfig, RateLimitHint};
use serde_json::Value;

#[test]
fn describes_queue_concurrency_rate_limit_and_config_keys() {
    let telnyx = FakeHttp::scripted(vec![], Reply::status(500)).unwrap();
    let h = load(config(&telnyx, None, &[]));
    let info = h.info();
    assert_eq!(info.name, "sms-notifications");
    let p = info.queue(QUEUE).expect("serves sms-notifications");
    assert_eq!(p.job_names, vec!["sms:send".to_owned()]);
    assert_eq!(p.default_concurrency, 5);
    // A burst ceiling of 10 sends per second (operators override it per queue), and a 60 s job budget.
    assert_eq!(
        p.rate_limit,
        Some(RateLimitHint {
            max: 10,
            duration_ms: 1000
        })
    );
    assert_eq!(p.timeout_ms, Some(60_000));
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
    let pg = Postgres::start_with(Schema::Migrated, false).unwrap();
    let telnyx = FakeHttp::scripted(vec![], accepted("never")).unwrap();
    let c = PluginConfig::from_pairs([
        ("SMS_DRY_RUN", "true".to_owned()),
        ("TELNYX_API_BASE_URL", telnyx.url()),
        ("DATABASE_URL", pg.url()),
    ]);
    let h = load(c);
    let delivery = insert_sms_delivery(&pg, PHONE);
    let run = h.run(job(data(Some(&delivery)), 0));
    assert_eq!(
        run.outcome,
        Outcome::completed(json!({"success": true, "dryRun": true}))
    );
    assert_masked_number_logged(&run.logs);
    assert_no_personal_data(&run.logs);
    assert!(telnyx.requests().is_empty());
    assert_delivery(&pg, &delivery, json!({"status": "pending"}));

    // Invalid data is still rejected in dry-run mode; dry run writes nothing.
    let mut bad = data(Some(&delivery));
    bad["phoneNumber"] = json!("12");
    let (_, unrecoverable) = failed(&h.run(job(bad, 0)));
    assert!(unrecoverable);
    assert_delivery(&pg, &delivery, json!({"status": "pending"}));
}

/// Turns valid job data into invalid data.
type Mutation = Box<dyn Fn(&mut Value)>;

/// A [`Mutation`] that removes the field `key`.
fn without(key: &'static str) -> Mutation {
    Box::new(move |d| d.as_object_mut().unwrap().remove(key).map(drop).unwrap())
}

#[test]
fn invalid_data_fails_unrecoverably_without_http_and_marks_the_row() {
    let t = Tracked::start(vec![], accepted("never"));

    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|d| d["phoneNumber"] = json!("5551234567")),
            "phoneNumber has no country code",
        ),
        (
            Box::new(|d| d["phoneNumber"] = json!("+1 call the manager")),
            "phoneNumber is not a phone number",
        ),
        (
            Box::new(|d| d["phoneNumber"] = json!(15551234567u64)),
            "phoneNumber must be a string, got a number",
        ),
        (without("message"), "message is missing"),
        (Box::new(|d| d["message"] = json!("")), "message is empty"),
        (
            Box::new(|d| d["message"] = json!("x".repeat(1601))),
            "message is too long",
        ),
        (without("organizationId"), "organizationId is missing"),
    ];
    for (mutate, want) in cases {
        let delivery = insert_sms_delivery(&t.pg, PHONE);
        let mut d = data(Some(&delivery));
        mutate(&mut d);
        let run = t.h.run(job(d.clone(), 0));
        let (message, unrecoverable) = failed(&run);
        assert!(unrecoverable, "{message}");
        assert!(
            message.starts_with("invalid sms:send job: ") && message.contains(want),
            "{message}"
        );
        assert_delivery(
            &t.pg,
            &delivery,
            json!({"status": "failed", "error_message": message, "has_failed_at": true}),
        );
        // The rejection is logged (so the check below is not passed by silence), with the reason and
        // without this job's number or text, whatever form they took.
        assert!(
            logs_mention(&run.logs, "rejecting sms:send job", want),
            "{:?}",
            run.logs
        );
        assert_no_personal_data(&run.logs);
        for field in ["phoneNumber", "message"] {
            let value = match &d[field] {
                Value::String(text) => text.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            if value.chars().count() >= 4 {
                assert!(
                    !run.logs.iter().any(|l| record_text(l).contains(&value)),
                    "a log record carries the job's {field}: {:?}",
                    run.logs
                );
            }
        }
    }
    assert!(
        t.telnyx.requests().is_empty(),
        "invalid jobs never reach Telnyx"
    );

    // The plugin asks for unknown job names too (`handles_unknown_names`), so that it can mark the delivery
    // row failed with the reason before failing the job unrecoverably.
    let run =
        t.h.run(JobSpec::new(QUEUE, "sms:bulk", data(Some(&t.delivery))));
    let (message, unrecoverable) = failed(&run);
    assert!(
        unrecoverable && message.contains("unknown job name \"sms:bulk\""),
        "{message}"
    );
    t.assert_row(json!({"status": "failed", "error_message": message}));
    assert!(t.telnyx.requests().is_empty());
}

#[test]
fn shutdown_stops_the_private_runtime_promptly_and_later_jobs_are_not_sent() {
    let telnyx = FakeHttp::scripted(vec![], accepted("msg-before-shutdown")).unwrap();
    let h = load(config(&telnyx, None, &[]));
    let run = h.run(job(data(None), 0));
    assert_eq!(run.outcome, sent("msg-before-shutdown"));
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

/// Whether one record's message contains `message` and the record (fields included) contains `detail`.
fn logs_mention(logs: &[plugin_api::loader::ForwardedLog], message: &str, detail: &str) -> bool {
    logs.iter()
        .any(|l| l.message.contains(message) && record_text(l).contains(detail))
}
