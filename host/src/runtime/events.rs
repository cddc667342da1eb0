//! Drains a BullMQ worker's event channel (unbounded in bullmq-official, so it must be read) and turns the
//! events into log lines tagged with the queue and job id. Job data and return values are never logged:
//! they may hold phone numbers and e-mail addresses.
//!
//! A `Completed` event is the library's word that Redis recorded a completion: it confirms the kept result
//! (runtime/completions.rs) and counts the job.
//!
//! A worker error (typically its blocking connection dropping) also marks Redis as down at once, ahead of
//! the periodic ping, so the bridge holds job results until Redis answers again.

use std::sync::Arc;

use bullmq::worker::WorkerEvent;
use bullmq::Worker;
use tokio::task::JoinHandle;

use super::completions::Completions;
use super::health::Health;

/// Events taken from the library per read: a fetch reply of Redis brings several jobs, and each sends its
/// events, so one read (one lock of the library's receiver) usually takes all that are waiting.
const EVENTS_PER_READ: usize = 64;

/// Spawns the task that reads `worker`'s events until the worker is dropped or the task is aborted.
pub fn spawn_logger(
    queue: String,
    worker: Arc<Worker>,
    health: Arc<Health>,
    completions: Arc<Completions>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = Vec::with_capacity(EVENTS_PER_READ);
        while worker.next_events(&mut events, EVENTS_PER_READ).await > 0 {
            for event in events.drain(..) {
                match &event {
                    WorkerEvent::Error(_) => {
                        health.set_redis_up(false);
                    }
                    WorkerEvent::Completed { job_id, .. } => completions.confirmed(job_id),
                    _ => {}
                }
                log_event(&queue, event);
            }
        }
    })
}

fn log_event(queue: &str, event: WorkerEvent) {
    match event {
        WorkerEvent::Completed { job_id, .. } => {
            tracing::info!(queue = %queue, job_id = %job_id, "job completed")
        }
        WorkerEvent::Failed { job_id, error } => {
            tracing::warn!(queue = %queue, job_id = %job_id, reason = %error, "job attempt failed")
        }
        WorkerEvent::Stalled { job_id } => {
            tracing::warn!(queue = %queue, job_id = %job_id, "stalled job moved back to wait")
        }
        WorkerEvent::Error(error) => tracing::warn!(queue = %queue, error = %error, "worker error"),
        WorkerEvent::Active { job_id } => {
            tracing::debug!(queue = %queue, job_id = %job_id, "job active")
        }
        WorkerEvent::Progress { job_id, .. } => {
            tracing::trace!(queue = %queue, job_id = %job_id, "job progress")
        }
        WorkerEvent::Drained => tracing::trace!(queue = %queue, "queue drained"),
        WorkerEvent::Ready => tracing::debug!(queue = %queue, "worker running"),
        WorkerEvent::Closed => tracing::debug!(queue = %queue, "worker closed"),
        WorkerEvent::Paused => tracing::debug!(queue = %queue, "worker paused"),
        WorkerEvent::Resumed => tracing::debug!(queue = %queue, "worker resumed"),
    }
}
