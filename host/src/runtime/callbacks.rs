//! What a running plugin can call back into: progress, job log lines, and "should I stop?".
//!
//! The plugin runs on a blocking thread and must never wait on Redis, so progress and log calls only queue
//! a write; the bridge's async side applies the writes to Redis in order while the plugin runs, and drains
//! the rest before it reports the outcome, so Node sees every progress value and log line before the job
//! completes. The queue is capped so a runaway plugin cannot grow the host's memory without bound.
//!
//! The queue is a locked `VecDeque` with a [`Notify`], not a channel: most jobs write nothing, and a tokio
//! channel allocated its shared state (cache-line aligned) and a first block of slots for every job, memory
//! that went back to the allocator, and often to the kernel, as the job ended. An empty `VecDeque`
//! allocates nothing, so a job that writes nothing costs one small allocation here.
//!
//! "Should I stop?" turns true on shutdown (the drain's cancel phase), when the library cancels the job, and
//! once the job's deadline (its time budget, `QUEUE_<Q>_JOB_TIMEOUT_MS` or the plugin's hint) has passed.
//! The deadline is checked against the clock on every call rather than set by a timer, so it holds even if
//! the host's async side is busy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bullmq::types::JobProgress;
use bullmq::worker::CancellationToken;
use bullmq::Job;
use plugin_api::loader::JobCallbacks;
use serde_json::Value;
use tokio::sync::Notify;

use crate::shutdown::DrainState;

/// Writes a single job may have queued and not yet applied.
pub const MAX_PENDING_WRITES: usize = 10_000;

/// One queued write to the job in Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum JobWrite {
    /// `job.updateProgress(value)`.
    Progress(Value),
    /// `job.log(line)`.
    Log(String),
}

/// The writes a job has queued and the bridge has not taken yet, shared by the two sides.
#[derive(Default)]
struct Queued {
    writes: Mutex<VecDeque<JobWrite>>,
    /// Rung after every write; a ring with nobody waiting is kept for the next wait.
    arrived: Notify,
}

impl Queued {
    fn writes(&self) -> std::sync::MutexGuard<'_, VecDeque<JobWrite>> {
        // A panic while the lock is held cannot leave the deque half-changed (push and pop are whole).
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The callbacks handed to `LoadedPlugin::process` for one job.
pub struct Callbacks {
    queued: Arc<Queued>,
    dropped: AtomicUsize,
    drain: Arc<DrainState>,
    token: CancellationToken,
    deadline: Option<Instant>,
    job_id: String,
    queue: String,
}

/// The receiving side, owned by the bridge.
///
/// The plugin dropping its callbacks as its call returns wakes nobody: that would wake the bridge's task
/// from the plugin's thread, one more wake-up of the runtime thread per job (an `eventfd` write, often a
/// context switch) on top of the call's completion, which the bridge waits for anyway. [`Writes::next`]
/// therefore does not return for it; the bridge stops reading when the call has ended and takes what is
/// left with [`Writes::try_next`].
pub struct Writes {
    queued: Arc<Queued>,
}

impl Callbacks {
    /// Callbacks for one job; `drain` is the shutdown state, `token` the library's per-job token and
    /// `deadline` the end of the job's time budget, if it has one.
    pub fn new(
        queue: &str,
        job_id: &str,
        drain: Arc<DrainState>,
        token: CancellationToken,
        deadline: Option<Instant>,
    ) -> (Arc<Self>, Writes) {
        let queued = Arc::new(Queued::default());
        let callbacks = Arc::new(Self {
            queued: Arc::clone(&queued),
            dropped: AtomicUsize::new(0),
            drain,
            token,
            deadline,
            job_id: job_id.to_owned(),
            queue: queue.to_owned(),
        });
        (callbacks, Writes { queued })
    }

    /// Wakes the bridge waiting for this job's call ([`Writes::next`] returns), without a write: the one
    /// watcher of the queue's calls rings when the call has something else to look at.
    pub fn ring(&self) {
        self.queued.arrived.notify_one();
    }

    fn queue_write(&self, write: JobWrite) {
        let mut writes = self.queued.writes();
        if writes.len() >= MAX_PENDING_WRITES {
            drop(writes);
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    queue = %self.queue,
                    job_id = %self.job_id,
                    "plugin writes progress/log lines faster than Redis takes them; dropping some"
                );
            }
            return;
        }
        writes.push_back(write);
        drop(writes);
        self.queued.arrived.notify_one();
    }
}

impl JobCallbacks for Callbacks {
    fn progress(&self, json: &str) {
        match serde_json::from_str::<Value>(json) {
            Ok(value) => self.queue_write(JobWrite::Progress(value)),
            Err(e) => tracing::warn!(
                queue = %self.queue,
                job_id = %self.job_id,
                error = %e,
                "plugin reported progress that is not JSON; ignored"
            ),
        }
    }

    fn log(&self, line: &str) {
        self.queue_write(JobWrite::Log(line.to_owned()));
    }

    fn is_cancelled(&self) -> bool {
        self.drain.is_cancelled() || self.token.is_cancelled() || deadline_passed(self.deadline)
    }
}

impl Writes {
    /// The next queued write, or `None` when the job's bell was rung without one ([`Callbacks::ring`]: the
    /// call has something else to look at); waits as long as the bridge reads (see the type's comment).
    /// Safe to drop unfinished (as `select!` does): a write stays queued until it is returned, and a ring
    /// that arrives meanwhile is kept for the next wait.
    pub async fn next(&mut self) -> Option<JobWrite> {
        if let Some(write) = self.try_next() {
            return Some(write);
        }
        self.queued.arrived.notified().await;
        self.try_next()
    }

    /// A queued write if one is ready now.
    pub fn try_next(&mut self) -> Option<JobWrite> {
        self.queued.writes().pop_front()
    }
}

/// True once `deadline` (if any) is now or in the past.
pub fn deadline_passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Applies one write to the job in Redis; failures are logged, never fatal to the job.
pub async fn apply(job: &mut Job, queue: &str, write: JobWrite) {
    let result = match write {
        JobWrite::Progress(value) => job.update_progress(JobProgress::Object(value)).await,
        JobWrite::Log(line) => job.log(&line).await.map(|_| ()),
    };
    if let Err(e) = result {
        tracing::warn!(queue = %queue, job_id = %job.id(), error = %e, "could not write job progress/log to Redis");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_arrive_in_order_and_cancellation_combines_flags() {
        let drain = DrainState::new();
        let token = CancellationToken::new();
        let (cb, mut writes) = Callbacks::new("q", "1", drain, token.clone(), None);
        cb.progress("25");
        cb.progress("not json");
        cb.log("line 1");
        cb.progress(r#"{"step":"half"}"#);
        assert_eq!(
            writes.next().await,
            Some(JobWrite::Progress(serde_json::json!(25)))
        );
        assert_eq!(writes.next().await, Some(JobWrite::Log("line 1".into())));
        assert_eq!(
            writes.try_next(),
            Some(JobWrite::Progress(serde_json::json!({"step": "half"})))
        );
        assert_eq!(writes.try_next(), None);
        assert!(!cb.is_cancelled());
        token.cancel();
        assert!(cb.is_cancelled());
    }

    /// Counts the wake-ups of a task.
    struct Wakes(AtomicUsize);

    impl futures_util::task::ArcWake for Wakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_plugin_dropping_its_callbacks_does_not_wake_the_bridge() {
        use std::future::Future as _;
        use std::task::{Context, Poll};
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = futures_util::task::waker(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let (cb, mut writes) =
            Callbacks::new("q", "1", DrainState::new(), CancellationToken::new(), None);
        {
            let next = writes.next();
            tokio::pin!(next);
            assert!(next.as_mut().poll(&mut cx).is_pending());
            cb.log("line");
            assert_eq!(
                wakes.0.load(Ordering::SeqCst),
                1,
                "a write wakes the reader"
            );
            assert_eq!(
                next.as_mut().poll(&mut cx),
                Poll::Ready(Some(JobWrite::Log("line".into())))
            );
        }
        let next = writes.next();
        tokio::pin!(next);
        assert!(next.as_mut().poll(&mut cx).is_pending());
        // The call returned: the plugin drops its callbacks. The bridge learns of the end from the call.
        drop(cb);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "no wake-up for the drop");
        assert!(next.as_mut().poll(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn a_ring_wakes_the_reader_without_a_write_and_is_kept_when_nobody_waits() {
        let (cb, mut writes) =
            Callbacks::new("q", "1", DrainState::new(), CancellationToken::new(), None);
        cb.ring();
        assert_eq!(writes.next().await, None, "kept for the next wait");
        let reader = tokio::spawn(async move { writes.next().await });
        tokio::task::yield_now().await;
        cb.ring();
        assert_eq!(reader.await.unwrap(), None);
    }

    #[test]
    fn writes_beyond_the_cap_are_dropped() {
        let (cb, writes) =
            Callbacks::new("q", "1", DrainState::new(), CancellationToken::new(), None);
        for i in 0..MAX_PENDING_WRITES + 5 {
            cb.log(&format!("l{i}"));
        }
        assert_eq!(writes.queued.writes().len(), MAX_PENDING_WRITES);
        assert_eq!(cb.dropped.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn cancellation_turns_true_at_the_deadline() {
        // Stated as ordering, not as a race against a short timer: a deadline still a minute away has not
        // passed however slow the machine, one already behind us has.
        let callbacks_with = |deadline| {
            Callbacks::new(
                "q",
                "1",
                DrainState::new(),
                CancellationToken::new(),
                Some(deadline),
            )
            .0
        };
        let ahead = callbacks_with(Instant::now() + std::time::Duration::from_secs(60));
        assert!(!ahead.is_cancelled(), "budget not used up yet");
        let behind = callbacks_with(Instant::now());
        assert!(behind.is_cancelled(), "deadline passed");
        assert!(!deadline_passed(None), "no deadline never expires");
    }
}
