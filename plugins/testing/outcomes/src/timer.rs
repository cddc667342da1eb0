//! The test plugin's pending `sleep` jobs: one timer thread waits for all of them, so a job that only waits
//! holds no thread of its own — as a plugin whose jobs wait on a provider's answer would use one async
//! client for all of them.
//!
//! The thread sleeps until the earliest job is due, completes every job that is due, and every
//! [`CANCEL_POLL`] looks at whether the host cancelled any job that honours cancellation, which it then
//! completes with the same "cancelled" failure the blocking `sleep` returns. A new job wakes the thread only
//! when it is due before the thread would wake anyway (as a timer wheel or an async runtime's timer does):
//! jobs of one length arrive in the order they are due, so in a steady stream the thread wakes for due jobs
//! alone, not once more for every arrival.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use plugin_api::serde_json::json;
use plugin_api::{Outcome, PendingJob};

/// How often pending jobs are asked whether they were cancelled (the blocking `sleep` looks as often).
const CANCEL_POLL: Duration = Duration::from_millis(10);

/// One `sleep` job waiting for its time.
pub struct Sleeper {
    /// The job.
    pub job: PendingJob,
    /// When it is done.
    pub due: Instant,
    /// How long it sleeps, for its result.
    pub ms: u64,
    /// Whether it ignores cancellation (job data `"ignoreCancel": true`).
    pub ignore_cancel: bool,
    /// Whether it reports progress and a log line from the timer thread before completing.
    pub report: bool,
}

/// What the adding threads and the timer thread share.
#[derive(Default)]
struct Waiting {
    sleepers: Vec<Sleeper>,
    /// When the timer thread wakes next on its own (`None`: it waits for a job).
    wakes_at: Option<Instant>,
    /// Set when the timer is dropped: the thread ends.
    closed: bool,
    /// Set when the thread has ended: no job can be taken any more.
    gone: bool,
}

struct Shared {
    waiting: Mutex<Waiting>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The handle jobs are given to the timer thread through.
pub struct Timer {
    shared: Arc<Shared>,
}

impl Timer {
    /// Starts the timer thread.
    pub fn start() -> std::io::Result<Timer> {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting::default()),
            wake: Condvar::new(),
        });
        let thread_side = Arc::clone(&shared);
        thread::Builder::new()
            .name("sleep-timer".into())
            .spawn(move || {
                // Marks the thread gone however it ends, a panic included.
                struct Gone<'a>(&'a Shared);
                impl Drop for Gone<'_> {
                    fn drop(&mut self) {
                        self.0.lock().gone = true;
                    }
                }
                let _gone = Gone(&thread_side);
                run(&thread_side);
            })?;
        Ok(Timer { shared })
    }

    /// Hands `sleeper` to the timer thread (never waits on it), waking it only when the job is due before
    /// the thread would wake anyway.
    pub fn add(&self, sleeper: Sleeper) {
        let mut waiting = self.shared.lock();
        if waiting.gone {
            drop(waiting);
            sleeper
                .job
                .complete(Outcome::failed("the sleep timer thread is gone"));
            return;
        }
        let wake = waiting.wakes_at.is_none_or(|at| sleeper.due < at);
        waiting.sleepers.push(sleeper);
        drop(waiting);
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// The timer thread: until the timer is dropped, waits for the next due job or the next look at
/// cancellations, and completes what is due (outside the lock: completing calls into the host).
fn run(shared: &Shared) {
    let mut last_poll = Instant::now();
    // Jobs to complete once the lock is let go, with whether they report first.
    let mut done: Vec<(PendingJob, Outcome, bool)> = Vec::new();
    let mut waiting = shared.lock();
    loop {
        if waiting.closed {
            return;
        }
        let now = Instant::now();
        let poll = now >= last_poll + CANCEL_POLL;
        if poll {
            last_poll = now;
        }
        let mut i = 0;
        while i < waiting.sleepers.len() {
            let s = &waiting.sleepers[i];
            if s.due <= now {
                let s = waiting.sleepers.swap_remove(i);
                let outcome = Outcome::completed(json!({ "slept": s.ms }));
                done.push((s.job, outcome, s.report));
            } else if poll && !s.ignore_cancel && s.job.is_cancelled() {
                let s = waiting.sleepers.swap_remove(i);
                done.push((s.job, Outcome::failed("cancelled"), false));
            } else {
                i += 1;
            }
        }
        let next_due = waiting.sleepers.iter().map(|s| s.due).min();
        let watches_cancel = waiting.sleepers.iter().any(|s| !s.ignore_cancel);
        let next_poll = watches_cancel.then(|| last_poll + CANCEL_POLL);
        waiting.wakes_at = match (next_due, next_poll) {
            (Some(d), Some(p)) => Some(d.min(p)),
            (d, p) => d.or(p),
        };
        if !done.is_empty() {
            drop(waiting);
            for (job, outcome, report) in done.drain(..) {
                if report {
                    job.progress(json!(100));
                    job.log("woke");
                }
                job.complete(outcome);
            }
            waiting = shared.lock();
            // Jobs added meanwhile saw the new wake time; look again before sleeping.
            continue;
        }
        waiting = match waiting.wakes_at {
            Some(at) => {
                let timeout = at.saturating_duration_since(Instant::now());
                shared
                    .wake
                    .wait_timeout(waiting, timeout)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => shared.wake.wait(waiting).unwrap_or_else(|p| p.into_inner()),
        };
    }
}
