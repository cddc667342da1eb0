//! Test-only plugin (`test-outcomes` queue) whose job names exercise every processor outcome, so the harness,
//! the loader and the host runtime can be tested against a real `cdylib`. Never shipped in the image.
//!
//! Job names: `complete`, `fail`, `fail-unrecoverable`, `fail-until`, `fail-with-causes` (`{"message",
//! "causes": [..], "unrecoverable"}`: an error with that source chain), `retry-later`, `panic`, `sleep`
//! (`{"ms", "ignoreCancel", "report"}`), `progress`, `log`, `view` (returns the job as the plugin was
//! given it: the whole `JobView` as JSON), and `inline-sleep` (`{"ms"}`: sleeps although it
//! is declared inline, as a plugin that breaks its promise would; `{"us"}` naps microseconds instead, as
//! briefly as a lock handed over by another thread blocks). `sleep` is a pending job: its `start`
//! hands it to one timer thread for all of them (`timer.rs`; with `"report": true` the timer thread writes
//! progress 100 and the log line `woke` before completing it), and `block-sleep` (`{"ms"}`) is the same
//! wait on a job thread. Three more pending jobs play faulty plugins: `pending-never` is kept and never
//! completed, `pending-twice` is completed twice (the first `{"first": true}` counts; whether the second
//! was accepted is logged as `second completion accepted=…`), and `pending-drop` is dropped without an
//! outcome. Setting `FAIL_INIT=true` makes `init`
//! refuse to start. Any job whose data has `"logRun": true` writes one job log line per plugin call, so a
//! test can count how often a job ran; with `"reportThread": true` a `complete` or `inline-sleep` job
//! returns `{"thread": <the kernel's name of the thread it ran on>}`.

#![forbid(unsafe_code)]

use std::error::Error;
use std::fmt;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use plugin_api::serde_json::{json, Map, Value};
use plugin_api::{
    export_plugin, tracing, InitError, JobContext, JobView, Outcome, PendingJob, Plugin,
    PluginConfig, PluginInfo, QueueInfo,
};

/// The queue this plugin serves.
pub const QUEUE: &str = "test-outcomes";

const JOB_NAMES: &[&str] = &[
    "complete",
    "fail",
    "fail-unrecoverable",
    "fail-until",
    "fail-with-causes",
    "retry-later",
    "panic",
    "sleep",
    "progress",
    "log",
    "inline-sleep",
    "block-sleep",
    "pending-never",
    "pending-twice",
    "pending-drop",
    "view",
];

/// The job names the plugin completes later (`QueueInfo::pending_jobs`).
const PENDING_JOB_NAMES: &[&str] = &["sleep", "pending-never", "pending-twice", "pending-drop"];

/// The job names declared inline (`QueueInfo::inline_jobs`).
const INLINE_JOB_NAMES: &[&str] = &["complete", "inline-sleep"];

mod timer;

/// The plugin: the timer thread of its pending `sleep` jobs, and the `pending-never` jobs it holds.
pub struct TestOutcomes {
    timer: timer::Timer,
    never: Mutex<Vec<PendingJob>>,
}

impl Plugin for TestOutcomes {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "test-outcomes".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            queues: vec![QueueInfo {
                queue: QUEUE.into(),
                job_names: JOB_NAMES.iter().map(|s| s.to_string()).collect(),
                default_concurrency: 4,
                rate_limit: None,
                handles_unknown_names: false,
                // No budget of its own: timeout tests set QUEUE_TEST_OUTCOMES_JOB_TIMEOUT_MS instead.
                timeout_ms: None,
                // Pure computation: run where the job was fetched (`reportThread` shows where that was).
                inline_jobs: INLINE_JOB_NAMES.iter().map(|s| s.to_string()).collect(),
                pending_jobs: PENDING_JOB_NAMES.iter().map(|s| s.to_string()).collect(),
            }],
            config_keys: vec!["FAIL_INIT".into()],
        }
    }

    fn init(config: &PluginConfig) -> Result<Self, InitError> {
        if config.flag("FAIL_INIT") {
            return Err(InitError::new("FAIL_INIT requested"));
        }
        let timer = timer::Timer::start()
            .map_err(|e| InitError::new(format!("cannot start the timer thread: {e}")))?;
        tracing::info!("test-outcomes plugin initialised");
        Ok(TestOutcomes {
            timer,
            never: Mutex::default(),
        })
    }

    fn process(&self, job: &JobView, ctx: &JobContext<'_>) -> Outcome {
        let data: Map<String, Value> = job.data().unwrap_or_default();
        let text = |key: &str, default: &str| -> String {
            data.get(key)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        let number =
            |key: &str, default: u64| data.get(key).and_then(Value::as_u64).unwrap_or(default);
        let nap = || match data.get("us").and_then(Value::as_u64) {
            Some(us) => Duration::from_micros(us),
            None => Duration::from_millis(number("ms", 10)),
        };
        if data.get("logRun") == Some(&Value::Bool(true)) {
            // One job log line per plugin call: fault tests count runs with it.
            ctx.log("plugin run");
        }
        if data.get("reportThread") == Some(&Value::Bool(true))
            && INLINE_JOB_NAMES.contains(&job.name.as_str())
        {
            // Where inline jobs run is the host's choice; tests look at it through this.
            if job.name == "inline-sleep" {
                thread::sleep(nap());
            }
            // The kernel's name of the thread: this library's own copy of std does not know the names the
            // host gave its threads.
            let thread = std::fs::read_to_string("/proc/thread-self/comm")
                .map(|name| name.trim_end().to_owned())
                .unwrap_or_default();
            return Outcome::completed(json!({ "thread": thread }));
        }
        match job.name.as_str() {
            "inline-sleep" => {
                thread::sleep(nap());
                match data.get("us") {
                    Some(us) => Outcome::completed(json!({ "napped_us": us })),
                    None => Outcome::completed(json!({ "slept": number("ms", 10) })),
                }
            }
            "complete" => Outcome::completed(
                data.get("result")
                    .cloned()
                    .unwrap_or_else(|| json!({ "echo": Value::Object(data.clone()) })),
            ),
            "view" => match plugin_api::serde_json::to_value(job) {
                Ok(view) => Outcome::completed(view),
                Err(e) => Outcome::failed(format!("the job view does not serialise: {e}")),
            },
            "fail" => Outcome::failed(text("message", "requested failure")),
            "fail-unrecoverable" => {
                Outcome::unrecoverable(text("message", "requested unrecoverable failure"))
            }
            "fail-until" => {
                let attempt = job.attempts_made + 1;
                if u64::from(attempt) < number("succeedOnAttempt", 2) {
                    Outcome::failed(format!("attempt {attempt} failed"))
                } else {
                    Outcome::completed(json!({ "attempt": attempt }))
                }
            }
            "fail-with-causes" => {
                let causes = data
                    .get("causes")
                    .and_then(Value::as_array)
                    .map(|c| c.iter().filter_map(Value::as_str).collect::<Vec<_>>())
                    .unwrap_or_default();
                let error = Chained::new(&text("message", "requested failure"), &causes);
                match data.get("unrecoverable").and_then(Value::as_bool) {
                    Some(true) => Outcome::unrecoverable_with(&error),
                    _ => Outcome::failed_with(&error),
                }
            }
            "retry-later" => {
                if job.attempts_started <= 1 {
                    let delay = number("delayMs", 1000);
                    match text("scope", "job").as_str() {
                        "queue" => Outcome::retry_queue_later(delay, "requested retry later"),
                        _ => Outcome::retry_job_later(delay, "requested retry later"),
                    }
                } else {
                    Outcome::completed(json!({
                        "retriedAfterDelay": true,
                        "attemptsStarted": job.attempts_started
                    }))
                }
            }
            "panic" => panic!("test panic: {}", text("message", "boom")),
            "block-sleep" => sleep(
                number("ms", 1000),
                data.get("ignoreCancel").and_then(Value::as_bool) == Some(true),
                ctx,
            ),
            "progress" => {
                ctx.progress(json!(25));
                ctx.progress(json!({ "step": "half" }));
                ctx.log("line 1");
                ctx.log("line 2");
                ctx.progress(json!(100));
                Outcome::completed(json!({ "done": true }))
            }
            "log" => {
                tracing::info!(job_id = %job.id, "info from test plugin");
                tracing::warn!(job_id = %job.id, attempt = job.attempts_made + 1, "warning from test plugin");
                Outcome::completed(Value::Null)
            }
            other => Outcome::unrecoverable(format!("test-outcomes has no job {other:?}")),
        }
    }

    fn start(&self, job: &JobView, pending: PendingJob) {
        let data: Map<String, Value> = job.data().unwrap_or_default();
        let flag = |key: &str| data.get(key) == Some(&Value::Bool(true));
        if flag("logRun") {
            pending.log("plugin run");
        }
        match job.name.as_str() {
            "sleep" => {
                let ms = data.get("ms").and_then(Value::as_u64).unwrap_or(1000);
                self.timer.add(timer::Sleeper {
                    job: pending,
                    due: Instant::now() + Duration::from_millis(ms),
                    ms,
                    ignore_cancel: flag("ignoreCancel"),
                    report: flag("report"),
                });
            }
            "pending-never" => self
                .never
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(pending),
            "pending-twice" => {
                pending.complete(Outcome::completed(json!({ "first": true })));
                let accepted = pending.complete(Outcome::failed("second completion"));
                tracing::info!(job_id = %job.id, accepted, "second completion");
            }
            "pending-drop" => drop(pending),
            other => {
                pending.complete(Outcome::unrecoverable(format!(
                    "test-outcomes has no pending job {other:?}"
                )));
            }
        }
    }

    fn shutdown(&self, _deadline: Duration) {
        tracing::info!("test-outcomes plugin shut down");
    }
}

/// An error with a chain of causes, the way a plugin's errors wrap a client's.
#[derive(Debug)]
pub struct Chained {
    message: String,
    cause: Option<Box<Chained>>,
}

impl Chained {
    /// `message`, caused by `causes[0]`, caused by `causes[1]`, ...
    pub fn new(message: &str, causes: &[&str]) -> Self {
        Self {
            message: message.to_owned(),
            cause: causes
                .split_first()
                .map(|(first, rest)| Box::new(Chained::new(first, rest))),
        }
    }
}

impl fmt::Display for Chained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Chained {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause.as_deref().map(|c| c as &(dyn Error + 'static))
    }
}

/// Sleeps `ms`, checking for cancellation every 10 ms as a well-behaved long job must; with `ignore_cancel`
/// (job data `"ignoreCancel": true`) it plays a plugin that never looks, which the host's shutdown must
/// still get past.
fn sleep(ms: u64, ignore_cancel: bool, ctx: &JobContext<'_>) -> Outcome {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        if !ignore_cancel && ctx.is_cancelled() {
            return Outcome::failed("cancelled");
        }
        thread::sleep(Duration::from_millis(10));
    }
    Outcome::completed(json!({ "slept": ms }))
}

export_plugin!(TestOutcomes);
