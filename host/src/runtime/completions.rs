//! Completed work that bullmq-official has not yet recorded in Redis, and getting it recorded after a
//! Redis outage (docs/bullmq-official.md D12).
//!
//! The library writes a job's completion (`moveToFinished`) right after the processor returns. When Redis
//! drops at that moment the call fails, the library only logs it, and the job stays `active` under our lock
//! until the lock expires and a stalled check hands it out again: the plugin would run a second time (an
//! alarm SMS sent twice). The library offers no way to re-send its finishing call, so the host arranges for
//! the library to make it again:
//!
//! 1. the bridge registers every completed result it hands to the library ([`Completions::handed`]);
//! 2. the library's `Completed` event confirms it ([`Completions::confirmed`]; only then is the job counted
//!    in `frostguard_jobs_completed_total`, so the counter holds what Redis recorded). A finishing call can
//!    also fail after Redis ran it (the reply was lost): the sweep finds such a job recorded and counts it;
//! 3. a sweep looks at results still unconfirmed: once the library is done with the job (it is no longer in
//!    its active list) and Redis answers, a job whose lock still holds our token was not recorded. The sweep
//!    puts it back at the head of its queue with that token (`moveJobFromActiveToWait`, so only while the
//!    lock is still ours) and marks the result for replay;
//! 4. when the job is fetched again, the bridge hands the library the kept result without calling the
//!    plugin ([`Completions::replay`]), and the library records it.
//!
//! The job's `attemptsStarted` grows by one for the replay; the plugin ran once. If the lock was lost before
//! Redis came back (the outage outlasted the lock), the job runs again — BullMQ's at-least-once — and that is
//! logged. A job replayed by another worker of the queue (which has no kept result) also runs again.

use foldhash::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bullmq::{Job, QueueKeys, Worker};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::metrics::QueueMetrics;
use super::redis_admin::AdminRedis;

/// How often unconfirmed results are looked at (only while there are some).
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// A result is only looked at once it is this old: the library normally confirms within milliseconds.
const SWEEP_AFTER: Duration = Duration::from_millis(500);
/// A result kept for replay is dropped after this (another worker must have taken the job).
const REPLAY_KEEP: Duration = Duration::from_secs(600);

/// Where a kept result stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Handed to the library; its finishing call is running or has failed.
    WithLibrary,
    /// The job was put back in the queue; the result waits for the job to be fetched again.
    AwaitingReplay,
}

struct Kept {
    job: Box<Job>,
    token: String,
    result: Value,
    since: Instant,
    stage: Stage,
}

/// What the sweep decides for one unconfirmed result, from what Redis says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The library still handles the job: look again later.
    Wait,
    /// Not recorded and the lock is ours: put the job back for a replay.
    Replay,
    /// Recorded (the `Completed` event is on its way): forget it.
    Recorded,
    /// Not recorded and the lock is gone: the job will run again.
    Lost,
}

/// Decides from: is the library still handling the job, the lock's current holder, is the job in the
/// completed set.
pub fn verdict(library_busy: bool, lock: Option<&str>, token: &str, completed: bool) -> Verdict {
    if library_busy {
        Verdict::Wait
    } else if lock == Some(token) {
        Verdict::Replay
    } else if completed {
        Verdict::Recorded
    } else {
        Verdict::Lost
    }
}

/// One queue's unconfirmed completions.
pub struct Completions {
    queue: String,
    keys: QueueKeys,
    admin: AdminRedis,
    kept: Mutex<HashMap<String, Kept>>,
    metrics: Arc<QueueMetrics>,
}

impl Completions {
    /// An empty registry for `queue`.
    pub fn new(queue: &str, keys: QueueKeys, admin: AdminRedis) -> Arc<Self> {
        Arc::new(Self {
            queue: queue.to_owned(),
            keys,
            admin,
            kept: Mutex::default(),
            metrics: Arc::new(QueueMetrics::new(queue)),
        })
    }

    /// The queue's job metrics (the bridge counts its jobs in them).
    pub fn metrics(&self) -> &Arc<QueueMetrics> {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a completed result about to be handed to the library. Takes the bridge's `job`, which it
    /// has no more use for: kept as is, not cloned (data and options included) on every completion.
    pub fn handed(&self, job: Box<Job>, result: &Value) {
        let Some(token) = job.token().map(str::to_owned) else {
            return;
        };
        self.lock().insert(
            job.id().to_owned(),
            Kept {
                job,
                token,
                result: result.clone(),
                since: Instant::now(),
                stage: Stage::WithLibrary,
            },
        );
    }

    /// The kept result of `job` if it was put back for a replay (same job: same id and creation time).
    pub fn replay(&self, job: &Job) -> Option<Value> {
        let kept = self.lock();
        let k = kept.get(job.id())?;
        (k.stage == Stage::AwaitingReplay && k.job.timestamp() == job.timestamp())
            .then(|| k.result.clone())
    }

    /// The library recorded `job_id`'s completion. Counted here unless the sweep found it recorded first
    /// (a finishing call whose reply was lost still recorded the job; the sweep counts those).
    pub fn confirmed(&self, job_id: &str) {
        if self.lock().remove(job_id).is_some() {
            self.metrics.job_completed();
        }
    }

    /// Results handed over and not confirmed yet (for the shutdown report).
    pub fn unconfirmed(&self) -> usize {
        self.lock().len()
    }

    /// Sweeps every [`SWEEP_EVERY`] while results are unconfirmed, until aborted.
    pub fn spawn_sweeper(self: &Arc<Self>, worker: Arc<Worker>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                this.sweep(&worker).await;
            }
        })
    }

    async fn sweep(&self, worker: &Worker) {
        let due: Vec<(String, Job, String)> = {
            let mut kept = self.lock();
            kept.retain(|_, k| k.stage == Stage::WithLibrary || k.since.elapsed() < REPLAY_KEEP);
            kept.iter()
                .filter(|(_, k)| k.stage == Stage::WithLibrary && k.since.elapsed() >= SWEEP_AFTER)
                .map(|(id, k)| (id.clone(), (*k.job).clone(), k.token.clone()))
                .collect()
        };
        for (id, job, token) in due {
            // `cancel_job` only answers whether the library still lists the job as active; the plugin call
            // has returned, so the cancellation itself changes nothing.
            let busy = worker.cancel_job(&id).await;
            let verdict = if busy {
                Verdict::Wait
            } else {
                match self.admin.lock_and_completed(&self.keys, &id).await {
                    Ok((lock, completed)) => verdict(false, lock.as_deref(), &token, completed),
                    Err(_) => Verdict::Wait, // Redis still away
                }
            };
            match verdict {
                Verdict::Wait => {}
                Verdict::Recorded => {
                    // Recorded although the library's call reported a failure (the reply was lost), or
                    // its `Completed` event is still queued: whoever removes the entry counts it.
                    if self.lock().remove(&id).is_some() {
                        self.metrics.job_completed();
                    }
                }
                Verdict::Lost => {
                    self.lock().remove(&id);
                    tracing::warn!(
                        queue = %self.queue, job_id = %id,
                        "a completed job's result could not be recorded before its lock expired; the job will run again"
                    );
                }
                Verdict::Replay => {
                    // Marked before the move: once in wait the job can be fetched again at once, and the
                    // bridge must find the kept result then. Kept whatever the answer: a move whose reply was
                    // lost did happen, and a job that did not move comes back through the stalled check once
                    // its lock expires; either way it is fetched again and its result recorded, not re-run.
                    if let Some(k) = self.lock().get_mut(&id) {
                        k.stage = Stage::AwaitingReplay;
                        k.since = Instant::now();
                    }
                    match job.move_to_wait(Some(&token)).await {
                        Ok(_) => tracing::warn!(
                            queue = %self.queue, job_id = %id,
                            "a completed job's result was not recorded (Redis failed during the finishing call); \
                             the job is back at the head of its queue to record the kept result without running \
                             the plugin again"
                        ),
                        Err(e) => tracing::warn!(
                            queue = %self.queue, job_id = %id, error = %e,
                            "a completed job's result was not recorded and the job could not be put back yet; \
                             the kept result is recorded when the job is fetched again"
                        ),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_happens_to_an_unconfirmed_result() {
        // (library busy, lock holder, completed set has it) -> verdict
        let table = [
            (true, Some("t1"), false, Verdict::Wait),
            (true, None, true, Verdict::Wait),
            (false, Some("t1"), false, Verdict::Replay),
            (false, None, true, Verdict::Recorded),
            (false, None, false, Verdict::Lost),
            (false, Some("other"), false, Verdict::Lost),
            (false, Some("other"), true, Verdict::Recorded),
        ];
        for (busy, lock, completed, want) in table {
            assert_eq!(
                verdict(busy, lock, "t1", completed),
                want,
                "{busy} {lock:?} {completed}"
            );
        }
    }
}
