//! The email digest plugin, against a real PostgreSQL with FrostGuard's schema and seeded data ([`seed`]) and
//! a fake Resend (real HTTP, every request recorded, scripted answers). One test binary, one module per area:
//! * [`content`] — skip reasons, the window, site filters, the limit, the Resend request and both bodies,
//!   the unsubscribe token, time zones (plugin loaded through `plugin_api::harness`, as the host loads it);
//! * [`errors`] — what each Resend answer, a timeout or a database outage makes of the job;
//! * [`contract`] — the description, refusing to start without key/secret/database, dry-run mode;
//! * [`e2e`] — Redis + host + Node: a FrostGuard-style job scheduler (cron + time zone) consumed by the
//!   host with the next iteration created, and a retry that re-sends the same request.

mod content;
mod contract;
mod e2e;
mod errors;
mod seed;

use frostguard_tests::{
    json, plugin_lib, FakeHttp, Postgres, RecordedRequest, Reply, EMAIL_PLUGIN,
};
use plugin_api::harness::{Harness, HarnessRun, JobSpec};
use plugin_api::loader::{ForwardedLog, LogLevel};
use plugin_api::{JobOpts, Outcome, PluginConfig};
use serde_json::Value;

const QUEUE: &str = "email-digests";
const KEY: &str = "re_test_0123456789";
const SECRET: &str = "unsubscribe-test-secret";
const FROM: &str = "FrostGuard <digests@example.com>";
const APP: &str = "https://app.example.test";

fn config(resend: &FakeHttp, pg: &Postgres, extra: &[(&str, &str)]) -> PluginConfig {
    let mut c = PluginConfig::from_pairs([
        ("RESEND_API_KEY", KEY.to_owned()),
        ("EMAIL_FROM_ADDRESS", FROM.to_owned()),
        ("APP_URL", APP.to_owned()),
        ("UNSUBSCRIBE_SECRET", SECRET.to_owned()),
        ("DATABASE_URL", pg.url()),
        ("RESEND_API_BASE_URL", resend.url()),
        ("EMAIL_REQUEST_TIMEOUT_MS", "2000".to_owned()),
        ("EMAIL_AUTH_RETRY_DELAY_MS", "30000".to_owned()),
    ]);
    for (k, v) in extra {
        c.insert(*k, *v);
    }
    c
}

fn load(config: PluginConfig) -> Harness {
    Harness::load(&plugin_lib(EMAIL_PLUGIN), config).expect("email digest plugin loads")
}

/// A seeded PostgreSQL, a fake Resend answering `replies` in turn and then `then`, and the plugin.
struct Fixture {
    pg: Postgres,
    resend: FakeHttp,
    h: Harness,
}

impl Fixture {
    fn start(replies: Vec<Reply>, then: Reply) -> Fixture {
        let pg = Postgres::start().unwrap();
        seed::seed(&pg);
        let resend = FakeHttp::scripted(replies, then).unwrap();
        let h = load(config(&resend, &pg, &[]));
        Fixture { pg, resend, h }
    }

    /// Runs the digest of `user` in `org` for `period`, as FrostGuard's scheduler enqueues it.
    fn run(&self, org: &str, user: &str, period: &str) -> HarnessRun {
        self.h.run(job(org, user, period))
    }
}

fn data(org: &str, user: &str, period: &str) -> Value {
    json!({"organizationId": org, "userId": user, "period": period})
}

/// A job as the scheduler template makes it: attempts 3, exponential 2 s.
fn job(org: &str, user: &str, period: &str) -> JobSpec {
    let mut spec = JobSpec::new(QUEUE, "email:digest", data(org, user, period));
    spec.opts = JobOpts {
        attempts: 3,
        backoff: Some(json!({"type": "exponential", "delay": 2000})),
        ..JobOpts::default()
    };
    spec
}

fn accepted(id: &str) -> Reply {
    Reply::json(200, &json!({"id": id}))
}

/// Resend's error answer.
fn resend_error(status: u16, name: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"statusCode": status, "name": name, "message": message}),
    )
}

fn completed(run: &HarnessRun) -> &Value {
    match &run.outcome {
        Outcome::Completed { result } => result,
        other => panic!("expected completed, got {other:?}"),
    }
}

fn logged(logs: &[ForwardedLog], level: LogLevel, needle: &str) -> bool {
    logs.iter()
        .any(|l| l.level == level && l.message.contains(needle))
}

/// The parts of a Resend request every digest shares: method, path, auth, JSON, tags.
fn assert_resend_request(r: &RecordedRequest, to: &str) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/emails");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["from"], FROM);
    assert_eq!(body["to"], json!([to]));
    assert_eq!(body["tags"], json!([{"name": "type", "value": "digest"}]));
    assert_eq!(
        body["headers"]["List-Unsubscribe-Post"],
        "List-Unsubscribe=One-Click"
    );
}
