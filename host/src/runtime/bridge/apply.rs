//! Carrying out the bridge's verdict on a job: the Redis writes and the result handed to bullmq-official.
//!
//! The library does the finishing itself from the result it gets back (complete, fail, retry with its
//! backoff). The host writes only what the library would get wrong or not write at all: each failed
//! attempt's `failedReason` and `stacktrace` entry (docs/bullmq-official.md D15), retries it schedules itself
//! when the library would misread the job's policy (D2, D10), the delayed move of a job-scope "retry later",
//! the queue's rate-limit key for a queue-scope one, and putting a job back on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bullmq::Job;
use serde_json::Value;

use super::decide::{millis, retry, Retry, Verdict};
use super::{LibResult, QueueBridge};
use crate::clock::now_ms;
use crate::runtime::health::{Health, HeldQueue};
use crate::runtime::redis_admin::FailureFields;
use crate::runtime::retry::{random_unit, RetryPolicy};
use crate::runtime::stacktrace::{self, AttemptSite, Failure};

/// Longest wait for Redis before handing an outcome to the library (kept below the default lock duration so
/// the job's lock is normally still ours when the result is written).
const REDIS_WAIT_MAX: Duration = Duration::from_secs(15);

impl QueueBridge {
    /// Does what `verdict` says with `job`, whose plugin call took `elapsed`.
    pub(super) async fn apply(
        &self,
        mut job: Box<Job>,
        verdict: Verdict,
        elapsed: Duration,
    ) -> LibResult {
        let id = job.id().to_owned();
        if let Some(result) = verdict.result() {
            self.metrics.job_finished(result, elapsed);
        }
        match verdict {
            Verdict::Complete { result, late } => {
                if late {
                    tracing::info!(
                        queue = %self.queue, job_id = %id, elapsed_ms = millis(elapsed),
                        "job completed after its deadline; keeping the completed work"
                    );
                }
                self.completions.handed(job, &result);
                Ok(result)
            }
            Verdict::FailForGood(failure) => Box::pin(self.fail_for_good(&job, failure)).await,
            Verdict::FailAttempt(failure) => {
                Box::pin(self.failed_attempt(&mut job, failure, elapsed)).await
            }
            Verdict::TimedOut { failure, replaced } => {
                self.metrics.job_timed_out();
                tracing::debug!(
                    queue = %self.queue, job_id = %id, elapsed_ms = millis(elapsed),
                    plugin_outcome = %replaced,
                    "the plugin's outcome after the deadline is recorded as a timeout"
                );
                Box::pin(self.failed_attempt(&mut job, failure, elapsed)).await
            }
            Verdict::DelayJob { delay_ms, reason } => {
                tracing::info!(queue = %self.queue, job_id = %id, delay_ms, %reason, "job retried later");
                Box::pin(self.delay(&mut job, delay_ms, "")).await
            }
            Verdict::HoldQueue { delay_ms, reason } => {
                tracing::warn!(
                    queue = %self.queue, job_id = %id, delay_ms, %reason,
                    "queue paused by the plugin, job back to wait"
                );
                self.hold.hold_for(delay_ms);
                self.report_hold(delay_ms, reason);
                if let Err(e) = Box::pin(self.admin.rate_limit(&self.keys, delay_ms)).await {
                    tracing::warn!(queue = %self.queue, error = %e, "could not rate-limit the queue");
                }
                Err(bullmq::Error::RateLimited { delay_ms })
            }
            Verdict::PutBack { why } => Box::pin(self.put_back(&job, why)).await,
        }
    }

    /// A failed attempt with attempts possibly left: recorded, then retried by the library, by the host, or
    /// failed for good when it was the last ([`retry`] decides).
    async fn failed_attempt(
        &self,
        job: &mut Job,
        failure: Failure,
        elapsed: Duration,
    ) -> LibResult {
        let (policy, stacktrace) = self.attempt_record(job, &failure).await;
        let made = job.attempts_made();
        let decision = retry(&policy, &library_policy(job), made, random_unit());
        self.metrics.job_finished(decision.result(), elapsed);
        let message = failure.message;
        match decision {
            Retry::Final { forced } => {
                self.record(job, &message, &stacktrace).await;
                Err(match forced {
                    true => bullmq::Error::Unrecoverable(message),
                    false => bullmq::Error::ProcessingError(message),
                })
            }
            Retry::ByLibrary => {
                self.record(job, &message, &stacktrace).await;
                Err(bullmq::Error::ProcessingError(message))
            }
            Retry::ByHost { delay_ms } => {
                match self
                    .admin
                    .record_failed_attempt(&self.keys, job.id(), &message, &stacktrace, true)
                    .await
                {
                    Ok(()) => {
                        tracing::warn!(
                            queue = %self.queue, job_id = %job.id(), reason = %message, retry_in_ms = delay_ms,
                            "job attempt failed"
                        );
                        self.delay(job, delay_ms, " for its retry").await
                    }
                    Err(e) => {
                        tracing::warn!(
                            queue = %self.queue, job_id = %job.id(), error = %e,
                            "could not schedule the retry in the host; leaving it to the library"
                        );
                        Err(bullmq::Error::ProcessingError(message))
                    }
                }
            }
        }
    }

    /// Moves the job to the delayed set for `delay_ms` (`purpose` completes the log line if that fails).
    async fn delay(&self, job: &mut Job, delay_ms: u64, purpose: &str) -> LibResult {
        if let Err(e) = job.move_to_delayed(now_ms().saturating_add(delay_ms)).await {
            tracing::warn!(
                queue = %self.queue, job_id = %job.id(), error = %e,
                "could not move the job to delayed{purpose}; stalled-job recovery will requeue it"
            );
        }
        Err(bullmq::Error::Delayed)
    }

    /// A failure that ends the job now: recorded with its stacktrace entry, then failed for good.
    pub(super) async fn fail_for_good(&self, job: &Job, failure: Failure) -> LibResult {
        let (_, stacktrace) = self.attempt_record(job, &failure).await;
        self.record(job, &failure.message, &stacktrace).await;
        Err(bullmq::Error::Unrecoverable(failure.message))
    }

    /// What a failed attempt is recorded with: the job's retry policy as stored by the producer (the library
    /// drops `jitter` and may have lost `attempts`; docs/bullmq-official.md D2/D10), else as the library parsed
    /// it, and the job's `stacktrace` with this attempt's entry added (D15). One read, on failures only.
    async fn attempt_record(&self, job: &Job, failure: &Failure) -> (RetryPolicy, String) {
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

    /// Shows the hold on `/readyz` and in the metrics until it expires.
    fn report_hold(&self, delay_ms: u64, reason: String) {
        let until_ms = now_ms().saturating_add(delay_ms);
        self.health.set_held(HeldQueue {
            queue: self.queue.clone(),
            plugin: self.plugin.info.name.clone(),
            reason,
            until_ms,
        });
        let (health, queue): (Arc<Health>, String) = (Arc::clone(&self.health), self.queue.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            health.clear_expired_hold(&queue, now_ms());
        });
    }

    /// Holds the outcome while Redis is unreachable, so that the library's finishing script is not sent into
    /// a dead connection (which would leave the job to stalled recovery and a second run).
    pub(super) async fn wait_for_redis(&self, id: &str) {
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
    pub(super) async fn put_back(&self, job: &Job, why: &str) -> LibResult {
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
