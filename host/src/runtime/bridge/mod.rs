//! The bridge between bullmq-official and a plugin: one BullMQ job in, one plugin call, one library result out.
//!
//! bullmq-official fetches a job, takes its lock and calls [`processor`]'s function; what that returns tells
//! the library how to finish the job (complete, fail, retry, or leave it alone because the host moved it). A
//! job goes through four steps, each in its own module:
//!
//! 1. **checks** (here): the job name is one the plugin accepts, a result kept from a run Redis failed to
//!    record is recorded instead of running again (`runtime/completions.rs`), the shutdown drain has not
//!    begun, and the plugin's [`JobView`] can be built (data that is not JSON is refused);
//! 2. **call** (`call.rs`): the plugin runs under `spawn_blocking` within the job's time budget while its
//!    progress and log writes are applied to Redis; → how the call ended, whether it overran, how long it took;
//! 3. **decide** (`decide.rs`, pure, tested as tables): how it ended × timed out × cancelled by shutdown
//!    → a verdict (complete, fail for good, a failed attempt, delay the job, hold the queue, put back), and for
//!    a failed attempt the job's retry policy → final, retried by the host, or retried by the library;
//! 4. **apply** (`apply.rs`): the verdict's Redis writes (failedReason and stacktrace of each failed attempt,
//!    delayed moves, the queue's rate-limit key) and the result handed back to the library.
//!
//! While Redis is unreachable the verdict waits (up to 15 s) rather than sending the finishing script into a
//! dead connection. docs/architecture.md follows one job along this path; docs/bullmq-official.md lists the
//! library's defects the bridge works around (D1–D4, D10, D15).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bullmq::worker::{CancellationToken, ProcessorFn};
use bullmq::{Job, QueueKeys};
use plugin_api::{JobOpts, JobView, QueueInfo};
use serde_json::value::RawValue;
use serde_json::Value;

use super::completions::Completions;
use super::health::Health;
use super::hold::QueueHold;
use super::metrics::QueueMetrics;
use super::redis_admin::{AdminRedis, RawJob};
use super::stacktrace::{Failure, FailureClass};
use crate::plugins::ActivePlugin;
use crate::shutdown::DrainState;
use decide::decide;

mod apply;
mod call;
mod decide;
mod watch;

pub use watch::CallWatch;

type LibResult = Result<Value, bullmq::Error>;

/// Everything the bridge needs for one queue.
pub struct QueueBridge {
    /// Queue name.
    pub queue: String,
    /// The queue's Redis keys.
    pub keys: QueueKeys,
    /// The plugin serving it.
    pub plugin: Arc<ActivePlugin>,
    /// The plugin's description of the queue (accepted job names).
    pub queue_info: QueueInfo,
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
    /// The queue's job metrics (shared with its completions).
    pub metrics: Arc<QueueMetrics>,
    /// The plugin calls in flight that the bridge waits for, and the one task that wakes them.
    pub watch: CallWatch,
}

/// Wraps a bridge into the processor function bullmq-official calls for every job.
///
/// The job (1,120 bytes) is boxed once, here: the bridge's future, which the library also boxes, then holds
/// a pointer wherever it keeps the job, instead of the job itself in three places (this block's capture, and
/// the argument and its binding in `run`, which an async function lays out separately).
pub fn processor(bridge: Arc<QueueBridge>) -> ProcessorFn {
    Arc::new(move |job: Job, token: CancellationToken| {
        let bridge = Arc::clone(&bridge);
        let job = Box::new(job);
        Box::pin(async move { bridge.run(job, token).await })
            as Pin<Box<dyn Future<Output = LibResult> + Send>>
    })
}

/// Decrements the active-jobs gauge when a job ends, however it ends.
struct ActiveGauge<'a>(&'a QueueMetrics);

impl Drop for ActiveGauge<'_> {
    fn drop(&mut self) {
        self.0.active(-1.0);
    }
}

impl QueueBridge {
    /// One job, start to end: the checks before any plugin code runs, the call, the verdict, its application.
    ///
    /// The rare paths' futures (refusals, put-backs, waiting for Redis, failures and their Redis writes) are
    /// boxed where they are awaited: unboxed, each would be laid out inside this future, which every job
    /// allocates and moves (7.9 KB with them inline, 6.5 KB boxed, 2.8 KB with the job boxed too).
    async fn run(&self, mut job: Box<Job>, token: CancellationToken) -> LibResult {
        let id = job.id().to_owned();
        if !self.queue_info.accepts(job.name()) {
            let reason = self.queue_info.rejection(job.name());
            tracing::warn!(queue = %self.queue, job_id = %id, "{reason}");
            self.metrics.job_rejected();
            return Box::pin(
                self.fail_for_good(&job, Failure::host(FailureClass::Rejected, reason)),
            )
            .await;
        }
        if let Some(result) = self.completions.replay(&job) {
            // Put back only because Redis failed to record this result: record it, do not run it again.
            tracing::info!(queue = %self.queue, job_id = %id, "recording the kept result of the job's earlier run");
            self.completions.handed(job, &result);
            return Ok(result);
        }
        let _in_flight = self.drain.job_started();
        if self.drain.is_stopping() {
            // Fetched while the workers were being paused: not ours to start any more.
            return Box::pin(self.put_back(&job, "shutting down before the job started")).await;
        }
        self.metrics.active(1.0);
        let _gauge = ActiveGauge(&self.metrics);

        let view = match self.view(&job).await {
            Ok(view) => view,
            Err(reason) => {
                // Nothing a plugin could do with it: failed for good, with the data kept for inspection.
                tracing::warn!(queue = %self.queue, job_id = %id, "{reason}");
                self.metrics.job_rejected();
                return self
                    .fail_for_good(&job, Failure::host(FailureClass::Rejected, reason))
                    .await;
            }
        };
        let called = self.call(&mut job, view, token).await;
        if !self.health.redis_up() {
            let _recording = self.drain.recording();
            Box::pin(self.wait_for_redis(&id)).await;
        }
        let ended = self.settle(&id, called.end).await;
        let verdict = decide(
            ended,
            called.timed_out,
            self.drain.is_cancelled(),
            self.job_timeout,
        );
        self.apply(job, verdict, called.elapsed).await
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
            None => match Box::pin(self.admin.raw_job(&self.keys, job.id())).await {
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
}

/// The job's stored `data` text as the plugin's JSON, or why it cannot be (the message gives the parser's
/// position, never the data: it may hold phone numbers).
fn stored_data(text: String) -> Result<Box<RawValue>, String> {
    RawValue::from_string(text)
        .map_err(|e| format!("job data is not JSON ({e}); the job cannot be processed"))
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
}
