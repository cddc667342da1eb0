//! Runs the real `test-outcomes` plugin library through the harness and checks every outcome, plus the
//! rejection of libraries that are not (compatible) plugins.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plugin_api::harness::{build_plugin, Harness, JobRecorder, JobSpec};
use plugin_api::loader::{ForwardedLog, HostLogger, LoadStage, LoadedPlugin, LogLevel};
use plugin_api::serde_json::value::RawValue;
use plugin_api::serde_json::{json, Value};
use plugin_api::{JobOpts, JobView, Outcome, PluginConfig, RetryScope};

fn outcomes_plugin() -> PathBuf {
    build_plugin("fg-test-outcomes").expect("build the test-outcomes plugin")
}

fn harness() -> Harness {
    Harness::load(&outcomes_plugin(), PluginConfig::new()).expect("test-outcomes loads")
}

fn job(name: &str, data: plugin_api::serde_json::Value) -> JobSpec {
    JobSpec::new("test-outcomes", name, data)
}

#[test]
fn describes_itself() {
    let h = harness();
    assert_eq!(h.info().name, "test-outcomes");
    assert_eq!(h.info().queues[0].queue, "test-outcomes");
    assert_eq!(h.info().queues[0].default_concurrency, 4);
    assert!(h.info().queues[0].accepts("panic"));
}

#[test]
fn completes_with_a_result() {
    let run = harness().run(job("complete", json!({"result": {"ok": 1}})));
    assert_eq!(run.outcome, Outcome::completed(json!({"ok": 1})));
    let run = harness().run(job("complete", json!({"x": "y"})));
    assert_eq!(run.outcome, Outcome::completed(json!({"echo": {"x": "y"}})));
}

#[test]
fn fails_retryable_and_unrecoverable() {
    let h = harness();
    assert_eq!(
        h.run(job("fail", json!({"message": "nope"}))).outcome,
        Outcome::failed("nope")
    );
    assert_eq!(
        h.run(job("fail-unrecoverable", json!({}))).outcome,
        Outcome::unrecoverable("requested unrecoverable failure")
    );
    let mut spec = job("fail-until", json!({"succeedOnAttempt": 3}));
    spec.attempts_made = 1;
    assert_eq!(
        h.run(spec.clone()).outcome,
        Outcome::failed("attempt 2 failed")
    );
    spec.attempts_made = 2;
    assert_eq!(
        h.run(spec).outcome,
        Outcome::completed(json!({"attempt": 3}))
    );
}

#[test]
fn retry_later_carries_delay_and_scope() {
    let h = harness();
    let run = h.run(job(
        "retry-later",
        json!({"delayMs": 1500, "scope": "queue"}),
    ));
    match run.outcome {
        Outcome::RetryLater {
            delay_ms, scope, ..
        } => {
            assert_eq!(delay_ms, 1500);
            assert_eq!(scope, RetryScope::Queue);
        }
        other => panic!("expected retry later, got {other:?}"),
    }
}

/// A job started again without using an attempt (after retry-later, a stall or a shutdown) has
/// `attemptsStarted` above `attemptsMade + 1`; the harness lets a test play that run.
#[test]
fn attempts_started_is_set_apart_from_attempts_made() {
    let h = harness();
    let mut spec = job("retry-later", json!({"delayMs": 10}));
    assert!(
        matches!(h.run(spec.clone()).outcome, Outcome::RetryLater { .. }),
        "first start (attemptsStarted defaults to attemptsMade + 1 = 1) asks to retry later"
    );
    spec.attempts_started = Some(2);
    assert_eq!(
        h.run(spec.clone()).outcome,
        Outcome::completed(json!({"retriedAfterDelay": true, "attemptsStarted": 2}))
    );
    spec.attempts_made = 3;
    spec.attempts_started = Some(7);
    assert_eq!(
        h.run(spec).outcome,
        Outcome::completed(json!({"retriedAfterDelay": true, "attemptsStarted": 7})),
        "attemptsStarted is passed as set, not derived from attemptsMade"
    );
}

#[test]
fn a_panicking_job_fails_and_the_next_job_still_works() {
    let h = harness();
    let run = h.run(job("panic", json!({"message": "kaboom"})));
    match &run.outcome {
        Outcome::Failed {
            message,
            unrecoverable,
            detail,
        } => {
            assert!(!unrecoverable);
            // The panic's own message, as Node shows a thrown error's; "panicked" and where are in the detail.
            assert_eq!(message, "test panic: kaboom");
            let detail = detail.as_ref().expect("a panic carries its detail");
            assert!(detail.panicked, "{detail:?}");
            let at = detail.location.as_deref().unwrap_or_default();
            assert!(
                at.starts_with("plugins/testing/outcomes/src/lib.rs:"),
                "{detail:?}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // The panic message reached the host log instead of the plugin's stderr.
    assert!(
        run.logs
            .iter()
            .any(|l| l.level == LogLevel::Error && l.message.contains("kaboom")),
        "{:?}",
        run.logs
    );
    let next = h.run(job("complete", json!({"result": 7})));
    assert_eq!(next.outcome, Outcome::completed(json!(7)));
}

#[test]
fn a_long_job_honours_cancellation_at_its_deadline() {
    let h = harness();
    let mut spec = job("sleep", json!({"ms": 30_000}));
    spec.timeout = Some(Duration::from_millis(200));
    let started = Instant::now();
    let run = h.run(spec);
    assert_eq!(run.outcome, Outcome::failed("cancelled"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancellation was ignored"
    );
    let run = h.run(job("sleep", json!({"ms": 20})));
    assert_eq!(run.outcome, Outcome::completed(json!({"slept": 20})));
}

#[test]
fn progress_job_logs_and_forwarded_logs_are_recorded() {
    let h = harness();
    let run = h.run(job("progress", json!({})));
    assert_eq!(
        run.progress,
        vec![json!(25), json!({"step": "half"}), json!(100)]
    );
    assert_eq!(run.job_logs, vec!["line 1", "line 2"]);
    let run = h.run(job("log", json!({})));
    let warn = run
        .logs
        .iter()
        .find(|l| l.level == LogLevel::Warn)
        .expect("a forwarded warning");
    assert_eq!(warn.message, "warning from test plugin");
    assert!(
        warn.fields.iter().any(|(k, v)| k == "attempt" && v == "1"),
        "{warn:?}"
    );
    assert!(run.logs.iter().any(|l| l.level == LogLevel::Info));
}

#[test]
fn unknown_job_names_fail_unrecoverably_without_reaching_the_plugin() {
    let run = harness().run(job("send-fax", json!({})));
    match run.outcome {
        Outcome::Failed {
            message,
            unrecoverable: true,
            ..
        } => {
            assert!(
                message.contains("unknown job name \"send-fax\""),
                "{message}"
            )
        }
        other => panic!("expected unrecoverable failure, got {other:?}"),
    }
}

#[test]
fn job_opts_reach_the_plugin() {
    let h = harness();
    let mut spec = job("fail-until", json!({"succeedOnAttempt": 5}));
    spec.opts = JobOpts {
        attempts: 5,
        ..JobOpts::default()
    };
    spec.attempts_made = 4;
    assert_eq!(
        h.run(spec).outcome,
        Outcome::completed(json!({"attempt": 5}))
    );
}

/// Log records of the plugin, dropped (the test looks at outcomes).
struct NoLogs;

impl HostLogger for NoLogs {
    fn log(&self, _: ForwardedLog) {}
}

/// A host from before pending jobs calls the plugin's `process` for every job, pending ones included, with
/// the job as JSON; the plugin's glue then starts such a job itself and waits for its completion (up to the
/// grace past its deadline), so the older host gets the same outcomes the pending entry point gives.
#[test]
fn a_host_without_pending_jobs_gets_them_through_process() {
    let (dir, plugin) = started_copy("older-host");
    let view = |name: &str, data: Value, deadline_ms: Option<u64>| JobView {
        id: name.to_owned(),
        name: name.to_owned(),
        queue: "test-outcomes".to_owned(),
        data: RawValue::from_string(data.to_string()).unwrap(),
        attempts_made: 0,
        attempts_started: 1,
        opts: JobOpts::default(),
        timestamp: 1,
        deadline_ms,
    };
    // The JSON entry point, as an older host calls it.
    let process = |view: &JobView, recorder: Arc<JobRecorder>| {
        let json = plugin_api::serde_json::to_string(view).unwrap();
        plugin.process_json(&json, recorder).outcome()
    };
    let recorder = Arc::new(JobRecorder::new(None));
    let slept = process(
        &view("sleep", json!({"ms": 20, "report": true}), None),
        recorder.clone(),
    );
    assert_eq!(slept, Outcome::completed(json!({"slept": 20})));
    assert_eq!(
        recorder.take(),
        (vec![json!(100)], vec!["woke".to_owned()]),
        "progress and log lines of the timer thread reach the job"
    );
    let twice = process(&view("pending-twice", json!({}), None), recorder.clone());
    assert_eq!(twice, Outcome::completed(json!({"first": true})));
    let not_completed = Outcome::failed(
        "the pending job was not completed (dropped, or past its deadline and the grace)",
    );
    let dropped = process(&view("pending-drop", json!({}), None), recorder.clone());
    assert_eq!(dropped, not_completed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let never = process(
        &view("pending-never", json!({}), Some(now)),
        recorder.clone(),
    );
    assert_eq!(
        never, not_completed,
        "given up the grace after its deadline"
    );
    // A job not declared pending still goes through the plugin's `process`.
    let completed = process(&view("complete", json!({"result": 3}), None), recorder);
    assert_eq!(completed, Outcome::completed(json!(3)));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A job reaches the plugin alike whether the host lends it (a `JobRef`: the entry points a plugin built
/// with them has, which a host uses when it finds them) or writes it as JSON (the entry point every plugin
/// has, which an older host calls): every field, data with escapes and non-ASCII text, options with and
/// without a backoff setting, a deadline or none.
#[test]
fn a_lent_job_and_a_job_written_as_json_reach_the_plugin_alike() {
    let (dir, plugin) = started_copy("lent-job");
    assert!(plugin.lends_jobs());
    let view = |id: &str, data: &str, opts: JobOpts, deadline_ms: Option<u64>| JobView {
        id: id.to_owned(),
        name: "view".to_owned(),
        queue: "test-outcomes".to_owned(),
        data: RawValue::from_string(data.to_owned()).unwrap(),
        attempts_made: 2,
        attempts_started: 3,
        opts,
        timestamp: 1_764_000_000_123,
        deadline_ms,
    };
    let backoff = |backoff: Value| JobOpts {
        attempts: 5,
        backoff: Some(backoff),
        delay: Some(250),
        priority: Some(7),
    };
    let views = [
        view("1", r#"{"result":1}"#, JobOpts::default(), None),
        view(
            "sms:ü-42",
            r#"{"to":"+15551234567","body":"Temp \"high\" ❄ 8.5°C\n\u0001","n":[1,2.5,-3e2,null,true]}"#,
            backoff(json!({"type": "exponential", "delay": 2000})),
            Some(1_764_000_060_000),
        ),
        view(
            "repeat:abc:1",
            "\"a string\"",
            backoff(json!(1000)),
            Some(0),
        ),
        view("", "[]", JobOpts::default(), Some(u64::MAX)),
    ];
    for job in views {
        let given = plugin_api::serde_json::to_value(&job).unwrap();
        let lent = plugin.process(&job, Arc::new(JobRecorder::new(None)));
        assert_eq!(lent, Outcome::completed(given.clone()), "lent: {given}");
        let json = plugin_api::serde_json::to_string(&job).unwrap();
        let written = plugin
            .process_json(&json, Arc::new(JobRecorder::new(None)))
            .outcome();
        assert_eq!(written, lent, "written as JSON: {given}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn failing_init_is_reported_at_the_init_stage() {
    let err = Harness::load(
        &outcomes_plugin(),
        PluginConfig::from_pairs([("FAIL_INIT", "true")]),
    )
    .err()
    .expect("init must fail");
    assert_eq!(err.stage, LoadStage::Init);
    assert_eq!(err.reason, "FAIL_INIT requested");
}

/// A started copy of the test-outcomes library in a scratch directory of its own (removed by the caller):
/// the harness's copies of the same file are other images, this one is called directly.
fn started_copy(name: &str) -> (PathBuf, LoadedPlugin) {
    let dir = scratch(name);
    let lib = dir.join(format!("lib{}.so", name.replace('-', "_")));
    std::fs::copy(outcomes_plugin(), &lib).unwrap();
    let plugin = LoadedPlugin::load(&lib).expect("test-outcomes loads");
    plugin.init(&PluginConfig::new(), Arc::new(NoLogs)).unwrap();
    (dir, plugin)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fg-api-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_rejected(path: &Path, stage: LoadStage, needle: &str) {
    let err = LoadedPlugin::load(path).expect_err("must be rejected");
    assert_eq!(err.stage, stage, "{err}");
    assert!(
        err.reason.contains(needle),
        "reason {:?} lacks {needle:?}",
        err.reason
    );
    let line = err.to_string();
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(!line.contains('\n'), "one line expected: {line}");
}

#[test]
fn a_truncated_library_is_rejected() {
    let dir = scratch("truncated");
    let bytes = std::fs::read(outcomes_plugin()).unwrap();
    let cut = dir.join("libtruncated.so");
    std::fs::write(&cut, &bytes[..4096]).unwrap();
    assert_rejected(&cut, LoadStage::File, "truncated");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_system_library_is_not_a_plugin() {
    let candidates = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libm.so.6",
    ];
    let lib = candidates
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("a system shared library such as libz.so.1");
    assert_rejected(lib, LoadStage::Abi, "not a frostguard plugin");
}

#[test]
fn a_plugin_built_against_an_incompatible_abi_is_rejected() {
    let lib = build_plugin("fg-test-bad-abi").expect("build the bad-abi fixture");
    assert_rejected(&lib, LoadStage::Abi, "incompatible plugin ABI layout");
}
