//! The test plugin's pending `sleep` jobs: one timer thread waits for all of them, so a job that only waits
//! holds no thread of its own — as a plugin whose jobs wait on a provider's answer would use one async
//! client for all of them.
//!
//! The thread sleeps until the earliest job is due (or a new job arrives), completes every job that is due,
//! and every [`CANCEL_POLL`] looks at whether the host cancelled any job that honours cancellation, which it
//! then completes with the same "cancelled" failure the blocking `sleep` returns.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
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

/// The handle jobs are given to the timer thread through.
pub struct Timer {
    jobs: Sender<Sleeper>,
}

impl Timer {
    /// Starts the timer thread.
    pub fn start() -> std::io::Result<Timer> {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("sleep-timer".into())
            .spawn(move || run(&rx))?;
        Ok(Timer { jobs: tx })
    }

    /// Hands `sleeper` to the timer thread (never waits: the channel is unbounded).
    pub fn add(&self, sleeper: Sleeper) {
        if let Err(mpsc::SendError(sleeper)) = self.jobs.send(sleeper) {
            sleeper
                .job
                .complete(Outcome::failed("the sleep timer thread is gone"));
        }
    }
}

/// The timer thread: until every sender is gone, waits for the next due job, a new job, or the next look at
/// cancellations.
fn run(rx: &Receiver<Sleeper>) {
    let mut waiting: Vec<Sleeper> = Vec::new();
    let mut last_poll = Instant::now();
    loop {
        let now = Instant::now();
        let next_due = waiting.iter().map(|s| s.due).min();
        let watches_cancel = waiting.iter().any(|s| !s.ignore_cancel);
        let next_poll = watches_cancel.then(|| last_poll + CANCEL_POLL);
        let wake = match (next_due, next_poll) {
            (Some(d), Some(p)) => Some(d.min(p)),
            (d, p) => d.or(p),
        };
        let received = match wake {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(sleeper) => waiting.push(sleeper),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(sleeper) = rx.try_recv() {
            waiting.push(sleeper);
        }
        let now = Instant::now();
        let poll = now >= last_poll + CANCEL_POLL;
        if poll {
            last_poll = now;
        }
        let mut i = 0;
        while i < waiting.len() {
            let s = &waiting[i];
            let outcome = if s.due <= now {
                if s.report {
                    s.job.progress(json!(100));
                    s.job.log("woke");
                }
                Some(Outcome::completed(json!({ "slept": s.ms })))
            } else if poll && !s.ignore_cancel && s.job.is_cancelled() {
                Some(Outcome::failed("cancelled"))
            } else {
                None
            };
            match outcome {
                Some(outcome) => {
                    waiting.swap_remove(i).job.complete(outcome);
                }
                None => i += 1,
            }
        }
    }
}
