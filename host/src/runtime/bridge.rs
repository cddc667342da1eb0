//! The processor bridge: one BullMQ job in, one plugin call on a blocking thread, one library result out.
//!
//! For each job the bridge checks the job name, builds the plugin's [`JobView`] (data from the library's parse),
//! runs `LoadedPlugin::process` under `spawn_blocking` while applying the plugin's progress and log writes,
//! and maps the [`Outcome`] to what bullmq-official must do (architecture.md, "Outcome mapping"). It also
//! applies the host's workarounds for bullmq-official gaps (docs/bullmq-official.md: D1–D4, D10, D15) and honours the
//! shutdown drain: jobs whose plugin call is cut short by shutdown go back to their queue instead of failing.
//! Every failed attempt is recorded with its `failedReason` and a `stacktrace` entry (`runtime/stacktrace.rs`).
//!
//! **Time budget.** When the queue has a job timeout (`QUEUE_<Q>_JOB_TIMEOUT_MS`, else the plugin's
//! `ProcessorInfo::timeout_ms`), the job's deadline is its start plus that budget: the plugin sees it as
//! `JobView::deadline_ms`, and its `is_cancelled()` turns true once it passes. The bridge still waits for the
//! plugin call to return (a blocking call cannot be stopped from outside, and leaving it running would break
//! the queue's concurrency bound while the library renews a lock for a job nobody tracks); only the shutdown
//! drain ever stops waiting. An attempt whose deadline passed and whose outcome is anything but `Completed`
//! fails retryably with `job timed out after <N> ms`, so the job's attempts and backoff apply and a job that
//! always hangs cannot loop forever without consuming attempts; work that did finish still completes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bullmq::worker::{CancellationToken, ProcessorFn};
use bullmq::{Job, QueueKeys};
use plugin_api::{JobOpts, JobView, Outcome, ProcessorInfo, RetryScope};
use serde_json::value::RawValue;
use serde_json::Value;

use super::callbacks::{apply, deadline_passed, Callbacks};
use super::completions::Completions;
use super::health::Health;
use super::hold::QueueHold;
use super::metrics::{self, JobResult};
use super::redis_admin::{AdminRedis, FailureFields, RawJob};
use super::retry::{random_unit, RetryPolicy};
use super::stacktrace::{self, AttemptSite, Failure, FailureClass};
use crate::isolation::{cause, Crash, Reply};
use crate::plugins::ActivePlugin;
use crate::shutdown::DrainState;

type LibResult = Result<Value, bullmq::Error>;

/// Everything the bridge needs for one queue.
pub struct QueueBridge {
    /// Queue name.
    pub queue: String,
    /// The queue's Redis keys.
    pub keys: QueueKeys,
    /// The plugin serving it.
    pub plugin: Arc<ActivePlugin>,
    /// The processor description (accepted job names).
    pub processor: ProcessorInfo,
    /// The host's own Redis connection.
    pub admin: AdminRedis,
    /// Shutdown state.
    pub drain: Arc<DrainState>,
    /// Local pause of the queue's worker for queue-scope "retry later".
    pub hold: Arc<QueueHold>,
    /// Health state (whether Redis answered the last ping).
    pub health: Arc<Health>,
    /// The time budget of one job, if the queue has one (`QueueOverrides::job_timeout`).
    pub job_timeout: Option<Duration>,
    /// Completed results handed to the library and not yet recorded by it.
    pub completions: Arc<Completions>,
    /// `JOB_CRASH_LIMIT`: crashes of its plugin process after which a job fails for good.
    pub crash_limit: u32,
}

/// Longest wait for Redis before handing an outcome to the library (kept below the default lock duration so
/// the job's lock is normally still ours when the result is written).
const REDIS_WAIT_MAX: Duration = Duration::from_secs(15);

/// Wraps a bridge into the processor function bullmq-official calls for every job.
pub fn processor(bridge: Arc<QueueBridge>) -> ProcessorFn {
    Arc::new(move |job: Job, token: CancellationToken| {
        let bridge = Arc::clone(&bridge);
        Box::pin(async move { bridge.run(job, token).await })
            as Pin<Box<dyn Future<Output = LibResult> + Send>>
    })
}

/// Whole milliseconds of `d`, saturating (budgets come from u64 milliseconds, so this is exact for them).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How the plugin call ended.
enum Ended {
    Outcome(Outcome),
    /// The host's blocking task failed (a host bug, not plugin code: plugin panics are caught at the ABI).
    Crashed(String),
    /// The plugin's process died while running the job (process isolation).
    ProcessCrashed(Crash),
    Abandoned,
}

/// Decrements the active-jobs gauge when a job ends, however it ends.
struct ActiveGauge<'a>(&'a str);

impl Drop for ActiveGauge<'_> {
    fn drop(&mut self) {
        metrics::active(self.0, -1.0);
    }
}

impl QueueBridge {
    async fn run(&self, mut job: Job, token: CancellationToken) -> LibResult {
        let id = job.id().to_owned();
        if !self.processor.accepts(job.name()) {
            let reason = self.processor.rejection(job.name());
            tracing::warn!(queue = %self.queue, job_id = %id, "{reason}");
            metrics::job_rejected(&self.queue);
            return self
                .fail_for_good(&job, Failure::host(FailureClass::Rejected, reason))
                .await;
        }
        if let Some(result) = self.completions.replay(&job) {
            // Put back only because Redis failed to record this result: record it, do not run it again.
            tracing::info!(queue = %self.queue, job_id = %id, "recording the kept result of the job's earlier run");
            self.completions.handed(&job, &result);
            return Ok(result);
        }
        let _in_flight = self.drain.job_started();
        if self.drain.is_stopping() {
            // Fetched while the workers were being paused: not ours to start any more.
            return self
                .put_back(&job, "shutting down before the job started")
                .await;
        }
        metrics::active(&self.queue, 1.0);
        let _gauge = ActiveGauge(&self.queue);

        let mut view = match self.view(&job).await {
            Ok(view) => view,
            Err(reason) => {
                // Nothing a plugin could do with it: failed for good, with the data kept for inspection.
                tracing::warn!(queue = %self.queue, job_id = %id, "{reason}");
                metrics::job_rejected(&self.queue);
                return self
                    .fail_for_good(&job, Failure::host(FailureClass::Rejected, reason))
                    .await;
            }
        };
        let started = Instant::now();
        let (deadline, deadline_ms) = deadline_of(started, now_ms(), self.job_timeout);
        view.deadline_ms = deadline_ms;
        let (callbacks, mut writes) =
            Callbacks::new(&self.queue, &id, Arc::clone(&self.drain), token, deadline);
        let active = Arc::clone(&self.plugin);
        let mut call = tokio::task::spawn_blocking(move || active.run(&view, callbacks));
        let expiry = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let mut expired = false;
        let mut writes_open = true;
        let ended = loop {
            tokio::select! {
                write = writes.next(), if writes_open => match write {
                    Some(w) => apply(&mut job, &self.queue, w).await,
                    None => writes_open = false,
                },
                joined = &mut call => break match joined {
                    Ok(Reply::Outcome(outcome)) => Ended::Outcome(outcome),
                    Ok(Reply::Crashed(crash)) => Ended::ProcessCrashed(crash),
                    Err(e) => Ended::Crashed(e.to_string()),
                },
                () = &mut expiry, if !expired => {
                    // Said when it happens, not when the plugin returns, so a plugin that ignores
                    // cancellation shows up in the logs while it still holds a slot.
                    expired = true;
                    tracing::warn!(
                        queue = %self.queue, job_id = %id,
                        timeout_ms = self.job_timeout.map(millis).unwrap_or(0),
                        "job overran its time budget; asking the plugin to stop and waiting for it to return"
                    );
                }
                _ = self.drain.abandoned() => break Ended::Abandoned,
            }
        };
        // Judged when the plugin returned, before the remaining writes are applied.
        let timed_out = deadline_passed(deadline);
        while let Some(w) = writes.try_next() {
            apply(&mut job, &self.queue, w).await;
        }
        let elapsed = started.elapsed();
        if !self.health.redis_up() {
            let _recording = self.drain.recording();
            self.wait_for_redis(&id).await;
        }

        let call_crashed = matches!(ended, Ended::Crashed(_) | Ended::ProcessCrashed(_));
        let outcome = match ended {
            Ended::Abandoned => {
                metrics::job_finished(&self.queue, JobResult::Shutdown, elapsed);
                return self
                    .put_back(&job, "plugin still running at the shutdown deadline")
                    .await;
            }
            Ended::Crashed(e) => Outcome::failed(format!("plugin call crashed: {e}")),
            Ended::ProcessCrashed(crash) => self.crash_outcome(&id, crash).await,
            Ended::Outcome(o) => o,
        };
        if self.drain.is_cancelled() && !matches!(outcome, Outcome::Completed { .. }) {
            metrics::job_finished(&self.queue, JobResult::Shutdown, elapsed);
            return self.put_back(&job, "cancelled by shutdown").await;
        }
        if timed_out {
            if let Some(reason) = timeout_failure(self.job_timeout, &outcome) {
                metrics::job_timed_out(&self.queue);
                tracing::debug!(
                    queue = %self.queue, job_id = %id, elapsed_ms = millis(elapsed),
                    plugin_outcome = %outcome_summary(&outcome),
                    "the plugin's outcome after the deadline is recorded as a timeout"
                );
                let failure = Failure::host(FailureClass::Timeout, reason);
                return self.retryable_failure(&job, failure, elapsed).await;
            }
            tracing::info!(
                queue = %self.queue, job_id = %id, elapsed_ms = millis(elapsed),
                "job completed after its deadline; keeping the completed work"
            );
        }
        match outcome {
            Outcome::Completed { result } => {
                metrics::job_finished(&self.queue, JobResult::Completed, elapsed);
                self.completions.handed(&job, &result);
                Ok(result)
            }
            Outcome::Failed {
                message,
                unrecoverable: true,
                detail,
            } => {
                metrics::job_finished(&self.queue, JobResult::Failed, elapsed);
                let failure = Failure::from_plugin(message, true, detail);
                self.fail_for_good(&job, failure).await
            }
            Outcome::Failed {
                message, detail, ..
            } => {
                let failure = match call_crashed {
                    true => Failure::host(FailureClass::Call, message),
                    false => Failure::from_plugin(message, false, detail),
                };
                self.retryable_failure(&job, failure, elapsed).await
            }
            Outcome::RetryLater {
                delay_ms,
                scope: RetryScope::Job,
                reason,
            } => {
                tracing::info!(queue = %self.queue, job_id = %id, delay_ms, %reason, "job retried later");
                metrics::job_finished(&self.queue, JobResult::LaterJob, elapsed);
                if let Err(e) = job.move_to_delayed(now_ms().saturating_add(delay_ms)).await {
                    tracing::warn!(
                        queue = %self.queue, job_id = %id, error = %e,
                        "could not move the job to delayed; stalled-job recovery will requeue it"
                    );
                }
                Err(bullmq::Error::Delayed)
            }
            Outcome::RetryLater {
                delay_ms,
                scope: RetryScope::Queue,
                reason,
            } => {
                tracing::warn!(
                    queue = %self.queue, job_id = %id, delay_ms, %reason,
                    "queue paused by the plugin, job back to wait"
                );
                metrics::job_finished(&self.queue, JobResult::LaterQueue, elapsed);
                self.hold.hold_for(delay_ms);
                self.report_hold(delay_ms, reason);
                if let Err(e) = self.admin.rate_limit(&self.keys, delay_ms).await {
                    tracing::warn!(queue = %self.queue, error = %e, "could not rate-limit the queue");
                }
                Err(bullmq::Error::RateLimited { delay_ms })
            }
        }
    }

    /// The outcome of a job whose plugin process died under it: a retryable failure naming the plugin and
    /// the signal, or — for the job whose thread crashed, once it has crashed the process `crash_limit`
    /// times — a failure for good (`crashed the worker (signal …)`).
    async fn crash_outcome(&self, id: &str, crash: Crash) -> Outcome {
        let plugin = &self.plugin.info.name;
        let retryable = cause::process_crash_reason(plugin, crash.ending);
        if !crash.blamed {
            tracing::warn!(queue = %self.queue, job_id = %id, %plugin, cause = %crash.ending, "job failed: its plugin process crashed in another job");
            return Outcome::failed(retryable);
        }
        let limit = self.crash_limit;
        let poison = cause::poison_reason(plugin, crash.ending, u64::from(limit));
        match self
            .admin
            .count_crash(&self.keys, id, limit, &poison, false)
            .await
        {
            Ok(Some(crashes)) if crashes >= u64::from(limit) => {
                tracing::error!(queue = %self.queue, job_id = %id, %plugin, cause = %crash.ending, crashes, "job crashed its plugin process {crashes} times; failing it for good");
                Outcome::unrecoverable(poison)
            }
            Ok(crashes) => {
                tracing::error!(queue = %self.queue, job_id = %id, %plugin, cause = %crash.ending, crashes = crashes.unwrap_or(0), limit, "job crashed its plugin process");
                Outcome::failed(retryable)
            }
            Err(e) => {
                tracing::warn!(queue = %self.queue, job_id = %id, error = %format!("{e:#}"), "could not count the crash of the job");
                Outcome::failed(retryable)
            }
        }
    }

    /// Shows the hold on `/readyz` and in the metrics until it expires.
    fn report_hold(&self, delay_ms: u64, reason: String) {
        let until_ms = now_ms().saturating_add(delay_ms);
        self.health.set_held(super::health::HeldQueue {
            queue: self.queue.clone(),
            plugin: self.plugin.info.name.clone(),
            reason,
            until_ms,
        });
        let (health, queue) = (Arc::clone(&self.health), self.queue.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            health.clear_expired_hold(&queue, now_ms());
        });
    }

    /// The plugin's view of `job`, from the library's parse. Only when the library could not parse the data
    /// (it then holds `null`) is the stored text read back, so the plugin still gets the producer's JSON; when
    /// that text is not JSON at all the job cannot be processed and the error says so (the library's `null`
    /// would otherwise reach the plugin and be reported as a wrong type).
    async fn view(&self, job: &Job) -> Result<JobView, String> {
        let parsed = match job.data() {
            Value::Null => None,
            data => serde_json::value::to_raw_value(data).ok(),
        };
        let null = || RawValue::from_string("null".to_owned()).expect("null is JSON");
        let data = match parsed {
            Some(data) => data,
            None => match self.admin.raw_job(&self.keys, job.id()).await {
                Ok(RawJob {
                    data: Some(text), ..
                }) => stored_data(text)?,
                _ => null(),
            },
        };
        Ok(JobView {
            id: job.id().to_owned(),
            name: job.name().to_owned(),
            queue: self.queue.clone(),
            data,
            attempts_made: job.attempts_made(),
            attempts_started: job.attempts_started(),
            opts: library_opts(job),
            timestamp: job.timestamp(),
            deadline_ms: None,
        })
    }

    /// What a failed attempt is recorded with: the job's retry policy as stored by the producer (the library
    /// drops `jitter` and may have lost `attempts`; docs/bullmq-official.md D2/D10), else as the library parsed
    /// it, and the job's `stacktrace` with this attempt's entry added (D15). One read, on failures only.
    async fn failed_attempt(&self, job: &Job, failure: &Failure) -> (RetryPolicy, String) {
        let fields = match self.admin.failure_fields(&self.keys, job.id()).await {
            Ok(fields) => fields,
            Err(e) => {
                tracing::debug!(queue = %self.queue, job_id = %job.id(), error = %e, "using the library's retry policy");
                FailureFields::default()
            }
        };
        let opts = fields
            .opts
            .and_then(|o| serde_json::from_str::<Value>(&o).ok());
        let policy = opts
            .as_ref()
            .and_then(RetryPolicy::from_opts)
            .unwrap_or_else(|| library_policy(job));
        let site = AttemptSite {
            plugin: &self.plugin.info.name,
            version: &self.plugin.info.version,
            queue: &self.queue,
            job_name: job.name(),
            attempt: job.attempts_made().saturating_add(1),
            attempts: policy.attempts,
        };
        let entry = stacktrace::entry(failure, &site);
        let limit = stacktrace::stack_trace_limit(opts.as_ref());
        let list = stacktrace::append(fields.stacktrace.as_deref(), entry, limit);
        (policy, list)
    }

    /// A failure that ends the job now: recorded with its stacktrace entry, then failed for good.
    async fn fail_for_good(&self, job: &Job, failure: Failure) -> LibResult {
        let (_, stacktrace) = self.failed_attempt(job, &failure).await;
        self.record(job, &failure.message, &stacktrace).await;
        Err(bullmq::Error::Unrecoverable(failure.message))
    }

    /// Writes a failed attempt's `failedReason` and `stacktrace` (the library writes neither on retries and
    /// no stacktrace at all); a write that fails is logged, the failure itself still goes to the library.
    async fn record(&self, job: &Job, reason: &str, stacktrace: &str) {
        if let Err(e) = self
            .admin
            .record_failed_attempt(&self.keys, job.id(), reason, stacktrace, false)
            .await
        {
            tracing::debug!(queue = %self.queue, job_id = %job.id(), error = %e, "could not record the failed attempt");
        }
    }

    /// A retryable failure: the library applies attempts and backoff, unless it would get them wrong.
    async fn retryable_failure(&self, job: &Job, failure: Failure, elapsed: Duration) -> LibResult {
        let id = job.id();
        let (policy, stacktrace) = self.failed_attempt(job, &failure).await;
        let message = failure.message;
        let made = job.attempts_made();
        let lib = library_policy(job);
        if policy.is_final(made) {
            metrics::job_finished(&self.queue, JobResult::Failed, elapsed);
            self.record(job, &message, &stacktrace).await;
            // Force the final failure when the library's (mis-parsed) attempts would retry.
            return Err(if lib.is_final(made) {
                bullmq::Error::ProcessingError(message)
            } else {
                bullmq::Error::Unrecoverable(message)
            });
        }
        metrics::job_finished(&self.queue, JobResult::Retried, elapsed);
        let host_managed = policy.jitter().is_some() || policy.attempts != lib.attempts;
        if host_managed {
            let delay = policy.delay_ms(made, random_unit()).unwrap_or(0);
            match self
                .admin
                .record_failed_attempt(&self.keys, id, &message, &stacktrace, true)
                .await
            {
                Ok(()) => {
                    tracing::warn!(
                        queue = %self.queue, job_id = %id, reason = %message, retry_in_ms = delay,
                        "job attempt failed"
                    );
                    if let Err(e) = job.move_to_delayed(now_ms().saturating_add(delay)).await {
                        tracing::warn!(
                            queue = %self.queue, job_id = %id, error = %e,
                            "could not move the job to delayed for its retry; stalled-job recovery will requeue it"
                        );
                    }
                    return Err(bullmq::Error::Delayed);
                }
                Err(e) => tracing::warn!(
                    queue = %self.queue, job_id = %id, error = %e,
                    "could not schedule the retry in the host; leaving it to the library"
                ),
            }
        } else {
            self.record(job, &message, &stacktrace).await;
        }
        Err(bullmq::Error::ProcessingError(message))
    }

    /// Holds the outcome while Redis is unreachable, so that the library's finishing script is not sent into
    /// a dead connection (which would leave the job to stalled recovery and a second run).
    async fn wait_for_redis(&self, id: &str) {
        let start = Instant::now();
        tracing::info!(queue = %self.queue, job_id = %id, "Redis unreachable; holding the job's result until it is back");
        while start.elapsed() < REDIS_WAIT_MAX && !self.drain.is_abandoned() {
            if self.admin.ping().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Returns the job to the front of its queue, neither completed nor failed.
    async fn put_back(&self, job: &Job, why: &str) -> LibResult {
        match job.move_to_wait(None).await {
            Ok(_) => {
                tracing::info!(queue = %self.queue, job_id = %job.id(), "job returned to the queue: {why}")
            }
            Err(e) => tracing::warn!(
                queue = %self.queue, job_id = %job.id(), error = %e,
                "could not return the job to the queue ({why}); stalled-job recovery will requeue it"
            ),
        }
        Err(bullmq::Error::Delayed)
    }
}

/// The job's stored `data` text as the plugin's JSON, or why it cannot be (the message gives the parser's
/// position, never the data: it may hold phone numbers).
fn stored_data(text: String) -> Result<Box<RawValue>, String> {
    RawValue::from_string(text)
        .map_err(|e| format!("job data is not JSON ({e}); the job cannot be processed"))
}

/// The deadline of an attempt that starts at `started` (wall clock `wall_ms`) with time budget `budget`:
/// the monotonic instant the host checks and the Unix milliseconds the plugin sees. A budget too large to
/// add to the clock is treated as no budget rather than a panic.
fn deadline_of(
    started: Instant,
    wall_ms: u64,
    budget: Option<Duration>,
) -> (Option<Instant>, Option<u64>) {
    match budget.and_then(|b| started.checked_add(b).map(|deadline| (b, deadline))) {
        Some((b, deadline)) => (Some(deadline), Some(wall_ms.saturating_add(millis(b)))),
        None => (None, None),
    }
}

/// The failure reason for an attempt that overran its budget, or `None` when its outcome stands: a job
/// that completed its work despite the deadline is completed, whatever else it returned becomes a
/// retryable timeout (attempts and backoff apply).
fn timeout_failure(budget: Option<Duration>, outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Completed { .. } => None,
        _ => Some(format!(
            "job timed out after {} ms",
            budget.map(millis).unwrap_or(0)
        )),
    }
}

/// A one-line description of an outcome for logs (the plugin's own message, never job data).
fn outcome_summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Completed { .. } => "completed".to_owned(),
        Outcome::Failed {
            message,
            unrecoverable,
            ..
        } => {
            let kind = if *unrecoverable {
                "unrecoverable"
            } else {
                "failed"
            };
            format!("{kind}: {message}")
        }
        Outcome::RetryLater {
            delay_ms,
            scope,
            reason,
        } => format!("retry later ({scope:?}, {delay_ms} ms): {reason}"),
    }
}

/// The retry policy as the library parsed it.
fn library_policy(job: &Job) -> RetryPolicy {
    RetryPolicy {
        attempts: job.opts().attempts.unwrap_or(0),
        backoff: job
            .opts()
            .backoff
            .as_ref()
            .and_then(|b| serde_json::to_value(b).ok()),
    }
}

/// The plugin-facing options from the library's parse (used when the raw `opts` could not be read).
fn library_opts(job: &Job) -> JobOpts {
    let o = job.opts();
    JobOpts {
        attempts: o.attempts.unwrap_or(0),
        backoff: o
            .backoff
            .as_ref()
            .and_then(|b| serde_json::to_value(b).ok()),
        delay: o.delay,
        priority: o.priority.map(u64::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stored_data_that_is_not_json_is_named_as_such() {
        // (stored text, Ok(passed through) or Err(message part))
        let table: [(&str, Result<&str, &str>); 5] = [
            (r#"{"to":"+1"}"#, Ok(r#"{"to":"+1"}"#)),
            ("null", Ok("null")),
            ("[1,2]", Ok("[1,2]")),
            ("{not json", Err("job data is not JSON")),
            ("", Err("job data is not JSON")),
        ];
        for (text, want) in table {
            match (stored_data(text.to_owned()), want) {
                (Ok(raw), Ok(json)) => assert_eq!(raw.get(), json),
                (Err(msg), Err(part)) => {
                    assert!(msg.contains(part), "{msg}");
                    assert!(!msg.contains(text) || text.is_empty(), "data leaked: {msg}");
                }
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_deadline_is_the_start_plus_the_budget() {
        let started = Instant::now();
        let budget = Duration::from_millis(300);
        let (deadline, wall) = deadline_of(started, 1_000_000, Some(budget));
        assert_eq!(deadline, Some(started + budget));
        assert_eq!(wall, Some(1_000_300));
        assert_eq!(deadline_of(started, 1_000_000, None), (None, None));
        // Absurd budgets neither panic nor wrap around into the past.
        assert_eq!(
            deadline_of(started, u64::MAX - 5, Some(Duration::from_millis(300))).1,
            Some(u64::MAX)
        );
        assert_eq!(deadline_of(started, 0, Some(Duration::MAX)), (None, None));
    }

    #[test]
    fn only_completed_work_survives_the_deadline() {
        let budget = Some(Duration::from_millis(300));
        assert_eq!(
            timeout_failure(budget, &Outcome::completed(json!({"done": true}))),
            None
        );
        let timed_out = Some("job timed out after 300 ms".to_owned());
        // Whatever else the plugin said once cancelled, the attempt is a retryable timeout.
        for outcome in [
            Outcome::failed("cancelled"),
            Outcome::unrecoverable("gave up"),
            Outcome::retry_job_later(1000, "busy"),
            Outcome::retry_queue_later(1000, "429"),
        ] {
            assert_eq!(timeout_failure(budget, &outcome), timed_out, "{outcome:?}");
        }
    }

    #[test]
    fn outcome_summaries_carry_the_plugins_message_only() {
        assert_eq!(
            outcome_summary(&Outcome::completed(json!({"phone": "+15550100"}))),
            "completed"
        );
        assert_eq!(
            outcome_summary(&Outcome::unrecoverable("bad number")),
            "unrecoverable: bad number"
        );
        assert_eq!(
            outcome_summary(&Outcome::retry_queue_later(5, "429")),
            "retry later (Queue, 5 ms): 429"
        );
    }
}
