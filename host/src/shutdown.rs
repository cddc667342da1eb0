//! Signal handling and the bounded drain of in-flight jobs.
//!
//! The runtime stops fetching first (every BullMQ worker is paused), then [`drain_in_flight`] walks the
//! phases below against the [`DrainState`] that every running job registers with:
//!
//! 1. wait up to `SHUTDOWN_TIMEOUT_MS` for in-flight jobs to finish normally;
//! 2. **cancel**: `is_cancelled()` turns true for every running job; a job that now ends with anything but
//!    `Completed` is put back in the queue instead of being failed (the bridge does this);
//! 3. **abandon**: jobs still running after a short grace are put back in the queue without waiting for the
//!    plugin any longer. Their blocking threads are left behind; the process exits without joining them.
//!
//! Nothing here marks a job completed or failed.
//!
//! The same phases retire one plugin version at run time (hot reload): each running queue has a *child*
//! [`DrainState`] of the process-wide one ([`DrainState::child_of`]). A job registers with its queue's child,
//! which counts it in the parent too, and sees the flags of both: draining the child stops, cancels and puts
//! back that queue's jobs only, while a shutdown signal still reaches every job through the parent.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long jobs get after cancellation before they are abandoned.
pub const CANCEL_GRACE: Duration = Duration::from_millis(1500);
/// How long abandoned jobs get to be moved back to the queue.
pub const ABANDON_GRACE: Duration = Duration::from_millis(1000);

/// Shared shutdown state: the in-flight job count and the phase flags jobs consult.
#[derive(Debug, Default)]
pub struct DrainState {
    stopping: AtomicBool,
    cancelled: AtomicBool,
    abandoned: AtomicBool,
    in_flight: AtomicUsize,
    /// In-flight jobs whose plugin call has returned and whose outcome waits for Redis to record it.
    recording: AtomicUsize,
    idle: Notify,
    abandon: Notify,
    /// The process-wide state of a queue's child state (see the module docs).
    parent: Option<Arc<DrainState>>,
}

/// Held by one running job; dropping it unregisters the job.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<DrainState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for state in self.state.lineage() {
            if state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                state.idle.notify_waiters();
            }
        }
    }
}

/// Held while a job's plugin call has returned and its outcome is being written to Redis; the drain
/// counts such jobs apart from plugins that are still running.
#[derive(Debug)]
pub struct Recording {
    state: Arc<DrainState>,
}

impl Drop for Recording {
    fn drop(&mut self) {
        for state in self.state.lineage() {
            state.recording.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl DrainState {
    /// Marks one in-flight job as past its plugin call (until the guard is dropped).
    pub fn recording(self: &Arc<Self>) -> Recording {
        for state in self.lineage() {
            state.recording.fetch_add(1, Ordering::AcqRel);
        }
        Recording {
            state: Arc::clone(self),
        }
    }

    /// In-flight jobs split into (plugin still running, outcome waiting for Redis).
    pub fn split(&self) -> (usize, usize) {
        let recording = self.recording.load(Ordering::Acquire);
        (self.in_flight().saturating_sub(recording), recording)
    }

    /// A fresh state: running, nothing in flight.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A state for one queue's jobs under the process-wide `parent`: its jobs count in both, and every flag
    /// of the parent shows through.
    pub fn child_of(parent: &Arc<DrainState>) -> Arc<Self> {
        Arc::new(Self {
            parent: Some(Arc::clone(parent)),
            ..Self::default()
        })
    }

    /// This state, then its parent.
    fn lineage(&self) -> impl Iterator<Item = &DrainState> {
        std::iter::once(self).chain(self.parent.as_deref())
    }

    /// Registers a job that starts running now.
    pub fn job_started(self: &Arc<Self>) -> InFlight {
        for state in self.lineage() {
            state.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        InFlight {
            state: Arc::clone(self),
        }
    }

    /// Jobs currently running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// True once a shutdown signal was received.
    pub fn is_stopping(&self) -> bool {
        self.lineage().any(|s| s.stopping.load(Ordering::Acquire))
    }

    /// True once the drain timeout passed: running jobs should stop.
    pub fn is_cancelled(&self) -> bool {
        self.lineage().any(|s| s.cancelled.load(Ordering::Acquire))
    }

    /// True once running jobs are being given up on.
    pub fn is_abandoned(&self) -> bool {
        self.lineage().any(|s| s.abandoned.load(Ordering::Acquire))
    }

    /// Resolves when running jobs are to be abandoned (immediately if they already are), by this state or
    /// by its parent.
    pub async fn abandoned(&self) {
        let own = self.abandon.notified();
        tokio::pin!(own);
        own.as_mut().enable();
        let parent = self.parent.as_deref().map(|p| p.abandon.notified());
        tokio::pin!(parent);
        if let Some(p) = parent.as_mut().as_pin_mut() {
            p.enable();
        }
        if self.is_abandoned() {
            return;
        }
        let from_parent = async {
            match parent.as_pin_mut() {
                Some(p) => p.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = own => {}
            () = from_parent => {}
        }
    }

    /// Marks the start of shutdown.
    pub fn begin(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    fn abandon(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.abandoned.store(true, Ordering::Release);
        self.abandon.notify_waiters();
    }

    /// Waits until nothing is in flight or `until` passes; true when idle.
    pub async fn wait_idle(&self, until: Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

/// What the drain achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Jobs still running when the timeout passed (they were cancelled).
    pub cancelled: usize,
    /// Jobs still running after the cancel grace (they were abandoned).
    pub abandoned: usize,
    /// Jobs whose plugin call had not returned when the drain ended.
    pub left_running: usize,
}

/// Runs the drain phases described in the module docs. Fetching must already be stopped.
pub async fn drain_in_flight(state: &DrainState, timeout: Duration) -> DrainReport {
    drain_phases(state, timeout, "shutdown").await
}

/// The drain phases; `what` names the occasion in the log lines ("shutdown", or the retiring plugin).
pub async fn drain_phases(state: &DrainState, timeout: Duration, what: &str) -> DrainReport {
    state.begin();
    let start = Instant::now();
    if state.wait_idle(start + timeout).await {
        return DrainReport {
            cancelled: 0,
            abandoned: 0,
            left_running: 0,
        };
    }
    let cancelled = state.in_flight();
    let (running, recording) = state.split();
    if running > 0 {
        tracing::warn!(
            jobs = running,
            timeout_ms = timeout.as_millis() as u64,
            "{what}: timeout reached, cancelling running jobs"
        );
    }
    if recording > 0 {
        tracing::warn!(
            jobs = recording,
            "{what}: timeout reached while finished jobs wait for Redis to record their outcome"
        );
    }
    state.cancel();
    if state.wait_idle(Instant::now() + CANCEL_GRACE).await {
        return DrainReport {
            cancelled,
            abandoned: 0,
            left_running: 0,
        };
    }
    let abandoned = state.in_flight();
    let (running, recording) = state.split();
    if running > 0 {
        tracing::warn!(
            jobs = running,
            "{what}: jobs ignored cancellation, putting them back in their queues"
        );
    }
    if recording > 0 {
        tracing::warn!(
            jobs = recording,
            "{what}: Redis did not come back before the deadline: finished jobs stay active unrecorded and \
             are run again once their lock expires (stalled-job recovery)"
        );
    }
    state.abandon();
    state.wait_idle(Instant::now() + ABANDON_GRACE).await;
    DrainReport {
        cancelled,
        abandoned,
        left_running: state.in_flight(),
    }
}

/// Resolves with the signal's name on the first SIGTERM or SIGINT.
pub async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_drain_returns_at_once() {
        let state = DrainState::new();
        let report = drain_in_flight(&state, Duration::from_secs(5)).await;
        assert_eq!(report.cancelled, 0);
        assert!(state.is_stopping());
        assert!(!state.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn job_finishing_in_time_is_not_cancelled() {
        let state = DrainState::new();
        let guard = state.job_started();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(guard);
        });
        let report = drain_in_flight(&state, Duration::from_secs(5)).await;
        assert_eq!(report.cancelled, 0);
        assert!(!state.is_cancelled());
        assert_eq!(state.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn job_honouring_cancellation_ends_in_the_grace() {
        let state = DrainState::new();
        let guard = state.job_started();
        let s = Arc::clone(&state);
        tokio::spawn(async move {
            while !s.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drop(guard);
        });
        let report = drain_in_flight(&state, Duration::from_secs(2)).await;
        assert_eq!(report.cancelled, 1);
        assert_eq!(report.abandoned, 0);
        assert!(!state.is_abandoned());
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_waiting_for_redis_is_not_a_plugin_ignoring_cancellation() {
        let state = DrainState::new();
        let guard = state.job_started();
        let recording = state.recording();
        assert_eq!(state.split(), (0, 1));
        let s = Arc::clone(&state);
        let waiter = tokio::spawn(async move {
            s.abandoned().await;
            drop(recording);
            drop(guard);
        });
        let report = drain_in_flight(&state, Duration::from_secs(1)).await;
        assert_eq!(report.abandoned, 1);
        assert_eq!(state.split(), (0, 0));
        waiter.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stubborn_job_is_abandoned() {
        let state = DrainState::new();
        let guard = state.job_started();
        let s = Arc::clone(&state);
        let waiter = tokio::spawn(async move {
            s.abandoned().await;
            drop(guard);
        });
        let report = drain_in_flight(&state, Duration::from_secs(1)).await;
        assert_eq!(report.cancelled, 1);
        assert_eq!(report.abandoned, 1);
        assert_eq!(report.left_running, 0);
        waiter.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn draining_a_child_puts_back_its_own_jobs_only() {
        let process = DrainState::new();
        let old = DrainState::child_of(&process);
        let other = DrainState::child_of(&process);
        let old_job = old.job_started();
        let other_job = other.job_started();
        assert_eq!((process.in_flight(), old.in_flight()), (2, 1));
        let o = Arc::clone(&old);
        let waiter = tokio::spawn(async move {
            o.abandoned().await;
            drop(old_job);
        });
        let report = drain_phases(&old, Duration::from_secs(1), "plugin x 1.0.0").await;
        assert_eq!((report.cancelled, report.abandoned), (1, 1));
        waiter.await.unwrap();
        assert!(old.is_stopping() && old.is_abandoned());
        assert!(!other.is_stopping() && !other.is_cancelled() && !process.is_stopping());
        assert_eq!((process.in_flight(), other.in_flight()), (1, 1));
        drop(other_job);
        assert_eq!(process.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_reaches_every_child() {
        let process = DrainState::new();
        let child = DrainState::child_of(&process);
        let job = child.job_started();
        let c = Arc::clone(&child);
        let waiter = tokio::spawn(async move {
            c.abandoned().await;
            drop(job);
        });
        let report = drain_in_flight(&process, Duration::from_secs(1)).await;
        assert_eq!(report.abandoned, 1);
        assert!(child.is_stopping() && child.is_cancelled());
        waiter.await.unwrap();
        assert_eq!(child.in_flight(), 0);
    }
}
