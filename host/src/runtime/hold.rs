//! Holding one queue's worker for a while: what a plugin's queue-scope "retry later" asks for (a provider
//! rate-limits us or rejects our credentials).
//!
//! Node's worker sleeps its whole fetch loop after a `RateLimitError`; bullmq-official does not (docs/bullmq-official.md D3),
//! so the host pauses the queue's worker locally and resumes it when the latest hold expires, unless the
//! process is shutting down by then. The shared `limiter` key is also set (by the bridge), so other workers
//! that have a rate limiter — Node's included — hold as well, exactly as with Node's `Queue.rateLimit`.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bullmq::Worker;
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::shutdown::DrainState;

/// The hold of one queue: until when its worker stays paused.
pub struct QueueHold {
    worker: OnceLock<Weak<Worker>>,
    until: watch::Sender<u64>,
}

impl QueueHold {
    /// A hold with no worker attached yet and nothing held.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            worker: OnceLock::new(),
            until: watch::Sender::new(0),
        })
    }

    /// Attaches the queue's worker and starts the task that resumes it; call once, after the worker runs.
    pub fn attach(self: &Arc<Self>, worker: &Arc<Worker>, drain: Arc<DrainState>) {
        if self.worker.set(Arc::downgrade(worker)).is_ok() {
            tokio::spawn(resume_when_due(Arc::clone(self), drain));
        }
    }

    /// Pauses fetching for at least `ms` from now (a longer hold already in place is kept).
    pub fn hold_for(&self, ms: u64) {
        let until = now_ms().saturating_add(ms);
        self.until.send_modify(|u| *u = (*u).max(until));
        if let Some(worker) = self.worker.get().and_then(Weak::upgrade) {
            worker.pause();
        }
    }

    /// Unix ms until which the queue is held (0 or past when not held).
    #[cfg(test)]
    fn held_until(&self) -> u64 {
        *self.until.borrow()
    }
}

async fn resume_when_due(hold: Arc<QueueHold>, drain: Arc<DrainState>) {
    let mut changes = hold.until.subscribe();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        loop {
            let until = *changes.borrow_and_update();
            let now = now_ms();
            if now >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(until - now)).await;
        }
        if drain.is_stopping() {
            return;
        }
        match hold.worker.get().and_then(Weak::upgrade) {
            Some(worker) => worker.resume(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longer_hold_wins() {
        let hold = QueueHold::new();
        hold.hold_for(10_000);
        let long = hold.held_until();
        hold.hold_for(10);
        assert_eq!(hold.held_until(), long);
        assert!(long >= now_ms() + 9_000);
    }
}
