//! Calling the plugin for one job: the I/O half of the bridge before the decision.
//!
//! An in-process plugin runs under `spawn_blocking` (its call blocks) while this side applies the progress
//! and log writes it queues, in order, to the job in Redis; a job name the plugin declares inline runs on
//! this thread instead (`isolation::inline`), its writes applied once it returned. A plugin process is
//! handed the job from this task and its reply awaited here (no blocking thread per job), except while its
//! child is being restarted or its input pipe lacks room. The call is waited for to the end — a blocking
//! call cannot be stopped from outside, and leaving it running would break the queue's concurrency bound
//! while the library renews a lock for a job nobody tracks; only the shutdown drain's abandon phase stops
//! waiting.
//! When the job's deadline passes, the overrun is logged (so a plugin that ignores cancellation shows up
//! while it still holds a slot); the plugin itself learns it from `is_cancelled()`. What wakes a waiting
//! call for those (and for the drain's abandon, a cancellation to forward to a plugin process, a pending
//! job's grace) is the queue's one watcher of calls in flight (`watch.rs`), not a timer of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bullmq::worker::CancellationToken;
use bullmq::Job;
use plugin_api::{JobView, Outcome};

use super::decide::{millis, Ended};
use super::watch::Due;
use super::QueueBridge;
use plugin_api::loader::{not_completed, JobCallbacks as _, PENDING_GRACE};

use crate::isolation::{cause, ChildJob, Crash, Reply};
use crate::runtime::callbacks::{apply, deadline_passed, Callbacks, Writes};

/// A plugin call in flight.
enum Call {
    /// On a blocking thread (in-process, or a process-mode job that must wait for its child).
    Thread(tokio::task::JoinHandle<Reply>),
    /// A pending job of an in-process plugin: started on this task, completed from the plugin's threads.
    Pending(tokio::sync::oneshot::Receiver<Outcome>),
    /// Written to the plugin's child from this task; cancellation is forwarded from here.
    Child {
        child: ChildJob,
        callbacks: Arc<Callbacks>,
        cancel_sent: bool,
    },
}

impl Call {
    /// The call's reply; cancel-safe (select! polls it again after a write is applied).
    async fn ended(&mut self) -> Result<Reply, String> {
        match self {
            Call::Thread(handle) => handle.await.map_err(|e| e.to_string()),
            // The loader answers a job its plugin dropped, so the sender goes only with the host's own end.
            Call::Pending(outcome) => (&mut *outcome)
                .await
                .map(Reply::Outcome)
                .map_err(|_| "the pending job's completion was lost".to_owned()),
            Call::Child { child, .. } => (&mut child.reply)
                .await
                .map_err(|_| "the plugin process's reply was lost".to_owned()),
        }
    }

    /// Tells the plugin's child, once, that a job in it was cancelled, as a blocking call would see from
    /// `is_cancelled()` (queued behind the job's own frame: `isolation/process/outbox.rs`). Calls on this
    /// host's threads and pending jobs ask `is_cancelled()` themselves.
    fn forward_cancel(&mut self) {
        if let Call::Child {
            child,
            callbacks,
            cancel_sent,
        } = self
        {
            if !*cancel_sent && callbacks.is_cancelled() {
                *cancel_sent = child.try_cancel();
            }
        }
    }

    /// Whether a cancellation must be told to the plugin (it runs in a plugin process).
    fn forwards_cancel(&self) -> bool {
        matches!(self, Call::Child { .. })
    }
}

/// How the call ended, before a crash is settled into the job's failure.
pub(super) enum CallEnd {
    /// The plugin returned.
    Returned(Outcome),
    /// The host's blocking task failed (a host bug, not plugin code: plugin panics are caught at the ABI).
    TaskFailed(String),
    /// The plugin's process died while running the job (process isolation).
    ProcessCrashed(Crash),
    /// The shutdown deadline passed first.
    Abandoned,
}

/// One finished plugin call.
pub(super) struct Called {
    /// How it ended.
    pub end: CallEnd,
    /// Whether the job's deadline had passed when the plugin returned.
    pub timed_out: bool,
    /// From the call's start to its end, writes applied.
    pub elapsed: Duration,
}

impl QueueBridge {
    /// Runs the plugin on `view` (its deadline filled in here, from the queue's time budget), applying its
    /// writes to `job` as they come and the rest once it returns, so Node sees every progress value and
    /// log line before the job's result.
    pub(super) async fn call(
        &self,
        job: &mut Job,
        mut view: JobView,
        token: CancellationToken,
    ) -> Called {
        let started = Instant::now();
        let (deadline, deadline_ms) =
            deadline_of(started, crate::clock::now_ms(), self.job_timeout);
        view.deadline_ms = deadline_ms;
        let (callbacks, mut writes) =
            Callbacks::new(&self.queue, job.id(), self.drain.clone(), token, deadline);
        let pending = self.plugin.is_pending(&view.queue, &view.name);
        let end = match self.plugin.run_inline(&view, callbacks.clone()) {
            // An inline job of an in-process plugin ran right here; its writes are applied below.
            Some(reply) => call_end(Ok(reply)),
            None => {
                let call = self.start_call(view, callbacks.clone());
                self.wait(job, call, &callbacks, &mut writes, deadline, pending)
                    .await
            }
        };
        // Judged when the plugin returned, before the remaining writes are applied.
        let timed_out = deadline_passed(deadline);
        while let Some(w) = writes.try_next() {
            apply(job, &self.queue, w).await;
        }
        Called {
            end,
            timed_out,
            elapsed: started.elapsed(),
        }
    }

    /// Starts the plugin call of a job that does not run inline. A pending job of an in-process plugin is
    /// started right here and awaited without a thread. A plugin process takes any job straight from this
    /// task when its child is ready (and starts a pending one itself); otherwise the call runs on a blocking
    /// thread.
    fn start_call(&self, view: JobView, callbacks: Arc<Callbacks>) -> Call {
        if let Some(outcome) = self.plugin.start_pending(&view, callbacks.clone()) {
            return Call::Pending(outcome);
        }
        if let Some(child) = self.plugin.start_in_child(&view, callbacks.clone()) {
            return Call::Child {
                child,
                callbacks,
                cancel_sent: false,
            };
        }
        let active = self.plugin.clone();
        Call::Thread(tokio::task::spawn_blocking(move || {
            active.run(&view, callbacks)
        }))
    }

    /// Waits for `call` to end, applying the plugin's writes to `job` meanwhile and logging the overrun
    /// when the job's `deadline` passes first. A `pending` job (one the plugin completes later) is ended
    /// here [`PENDING_GRACE`] after its deadline: no thread of ours runs it, so nothing else would. The
    /// queue's watch rings `callbacks` when any of that, a cancellation or the drain's abandon needs a look.
    async fn wait(
        &self,
        job: &mut Job,
        mut call: Call,
        callbacks: &Arc<Callbacks>,
        writes: &mut Writes,
        deadline: Option<Instant>,
        pending: bool,
    ) -> CallEnd {
        let due = Due::of(deadline, pending, call.forwards_cancel());
        let _slot = self.watch.watch(callbacks, due);
        let mut expired = false;
        loop {
            if self.drain.is_abandoned() {
                break CallEnd::Abandoned;
            }
            // Reads the clock only for a call with a deadline (a queue without a time budget has none).
            if !expired && deadline_passed(due.deadline) {
                expired = true;
                tracing::warn!(
                    queue = %self.queue, job_id = %job.id(),
                    timeout_ms = self.job_timeout.map(millis).unwrap_or(0),
                    "job overran its time budget; asking the plugin to stop and waiting for it to return"
                );
            }
            if deadline_passed(due.grace_end) {
                tracing::warn!(
                    queue = %self.queue, job_id = %job.id(),
                    grace_ms = millis(PENDING_GRACE),
                    "a pending job was not completed by its plugin within the grace after its deadline; ending it"
                );
                break CallEnd::Returned(Outcome::failed(not_completed(&self.plugin.info.name)));
            }
            call.forward_cancel();
            tokio::select! {
                biased;
                joined = call.ended() => break call_end(joined),
                write = writes.next() => {
                    if let Some(w) = write {
                        apply(job, &self.queue, w).await;
                    }
                }
            }
        }
    }

    /// How the call ended, as the decision takes it: a broken call becomes the failure the job gets for it
    /// (for a process crash this counts the crash on the job, so Redis should be reachable by now).
    pub(super) async fn settle(&self, id: &str, end: CallEnd) -> Ended {
        match end {
            CallEnd::Returned(outcome) => Ended::Returned(outcome),
            CallEnd::TaskFailed(e) => {
                Ended::Crashed(Outcome::failed(format!("plugin call crashed: {e}")))
            }
            CallEnd::ProcessCrashed(crash) => {
                Ended::Crashed(Box::pin(self.crash_outcome(id, crash)).await)
            }
            CallEnd::Abandoned => Ended::Abandoned,
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
}

/// How a call that returned (or whose blocking task failed) ended.
fn call_end(joined: Result<Reply, String>) -> CallEnd {
    match joined {
        Ok(Reply::Outcome(outcome)) => CallEnd::Returned(outcome),
        Ok(Reply::Crashed(crash)) => CallEnd::ProcessCrashed(crash),
        Err(e) => CallEnd::TaskFailed(e),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
