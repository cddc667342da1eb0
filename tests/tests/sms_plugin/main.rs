//! The SMS plugin, loaded from its built `.so` exactly as the host loads it (through `plugin_api::harness`),
//! against a fake Telnyx (real HTTP, every request recorded, scripted answers) and a real PostgreSQL with
//! FrostGuard's schema. No Redis here: the end-to-end cases are in `sms_e2e/`.
//!
//! Each test asserts the exact request Telnyx got (or that none was made), the job outcome, and the
//! delivery row. One test binary, one module per area:
//! * [`sending`] — what each Telnyx answer (accepted, permanent and transient errors, rate limit, rejected
//!   credentials, no answer) makes of the job and the delivery row.
//! * [`tracking`] — delivery tracking when the database is down, unreachable at start, not configured, or has
//!   no row for the job.
//! * [`concurrency`] — two runs of one delivery at the same time (a stalled job started again while its first
//!   run waits for Telnyx) send one SMS, directly and through PgBouncer in transaction mode; abandoned claims.
//! * [`schema`] — FrostGuard's delivery table as its journaled migrations leave it (`retry_count varchar(10)`)
//!   and with `retry_count` an integer: retried attempts are recorded on both.
//! * [`tls`] — `DATABASE_URL` with `sslmode` / `sslrootcert` against a PostgreSQL that accepts only TLS.
//! * [`contract`] — the rest of what the host relies on: the plugin's description, refusing to start without
//!   credentials, dry-run mode, rejecting invalid jobs, shutdown.
//!
//! The fixtures below are shared by the modules.

mod concurrency;
mod contract;
mod schema;
mod sending;
mod tls;
mod tracking;

use frostguard_tests::{
    assert_delivery, assert_no_secrets, insert_sms_delivery, json, plugin_lib, sms_sent, FakeHttp,
    Postgres, RecordedRequest, Reply, Schema, SMS_PLUGIN,
};
use plugin_api::harness::{Harness, HarnessRun, JobSpec};
use plugin_api::loader::{ForwardedLog, LogLevel};
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
/// A delivery id with no row behind it.
const UNKNOWN_DELIVERY: &str = "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b";

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

/// A PostgreSQL with one pending delivery row, a fake Telnyx answering `replies` in turn and then `then`, and
/// the plugin configured for both ([`config`] without extras).
struct Tracked {
    pg: Postgres,
    telnyx: FakeHttp,
    h: Harness,
    delivery: String,
}

impl Tracked {
    fn start(replies: Vec<Reply>, then: Reply) -> Tracked {
        let pg = Postgres::start_with(Schema::Migrated, false).unwrap();
        let telnyx = FakeHttp::scripted(replies, then).unwrap();
        let h = load(config(&telnyx, Some(&pg), &[]));
        let delivery = insert_sms_delivery(&pg, PHONE);
        Tracked {
            pg,
            telnyx,
            h,
            delivery,
        }
    }

    /// Runs the SMS job for the delivery, on attempt `attempts_made + 1`.
    fn run(&self, attempts_made: u32) -> HarnessRun {
        self.h.run(job(data(Some(&self.delivery)), attempts_made))
    }

    /// Asserts the delivery row's columns named in `expected` ([`assert_delivery`]).
    fn assert_row(&self, expected: Value) {
        assert_delivery(&self.pg, &self.delivery, expected);
    }
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

/// The outcome of a job whose message Telnyx accepted with `message_id`.
fn sent(message_id: &str) -> Outcome {
    Outcome::completed(sms_sent(message_id))
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

/// Whether a record at `level` has a message containing `needle`.
fn logged(logs: &[ForwardedLog], level: LogLevel, needle: &str) -> bool {
    logs.iter()
        .any(|l| l.level == level && l.message.contains(needle))
}

/// Asserts that some record (level, target, message or a field) shows the masked number: what operators see.
fn assert_masked_number_logged(logs: &[ForwardedLog]) {
    assert!(
        logs.iter().any(|l| record_text(l).contains(MASKED)),
        "{logs:?}"
    );
}

/// For a run that handled the number: it is logged, and only masked ([`assert_masked_number_logged`] and
/// [`assert_no_personal_data`]). A run that logged nothing fails here, where [`assert_no_personal_data`]
/// alone would pass.
fn assert_number_logged_only_masked(logs: &[ForwardedLog]) {
    assert_masked_number_logged(logs);
    assert_no_personal_data(logs);
}

/// No log line may carry the full number, the message body or the API key.
fn assert_no_personal_data(logs: &[ForwardedLog]) {
    assert_no_secrets(
        logs.iter().map(record_text),
        &[
            (PHONE, "the full phone number"),
            ("Temperature excursion", "the message body"),
            (KEY, "the API key"),
        ],
    );
}

/// The message and `unrecoverable` flag of a failed run; panics on any other outcome.
fn failed(run: &HarnessRun) -> (&str, bool) {
    match &run.outcome {
        Outcome::Failed {
            message,
            unrecoverable,
            ..
        } => (message.as_str(), *unrecoverable),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// The delay, scope and reason of a retry-later run; panics on any other outcome.
fn retried_later(run: &HarnessRun) -> (u64, RetryScope, &str) {
    match &run.outcome {
        Outcome::RetryLater {
            delay_ms,
            scope,
            reason,
        } => (*delay_ms, *scope, reason.as_str()),
        other => panic!("expected RetryLater, got {other:?}"),
    }
}
