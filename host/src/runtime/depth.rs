//! Queue depth gauges for `/metrics`, the signal an autoscaler (KEDA, HPA) scales on: per queue the job
//! counts exactly as Node's `getJobCounts()` reports them, the paused flag, and the age of the oldest
//! waiting job, refreshed from Redis every `METRICS_QUEUE_DEPTH_INTERVAL_MS`.
//!
//! The refresher is its own task on the admin connection (one script call per queue per period); it never
//! sits in the path of job processing. When Redis does not answer, the gauges keep their last values and
//! one warning is logged until a read succeeds again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bullmq::QueueKeys;

use super::metrics;
use super::redis_admin::AdminRedis;
use crate::clock::now_ms;
use crate::queue_stats::Reader;

/// Reads the depth of every queue in `queues` (served queues change with hot reload) each `period` until the
/// process ends.
pub async fn refresh(admin: AdminRedis, queues: Arc<Mutex<Vec<QueueKeys>>>, period: Duration) {
    let reader = Reader::default();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let now: Vec<QueueKeys> = queues.lock().map(|q| q.clone()).unwrap_or_default();
        for keys in &now {
            match admin.queue_snapshot(&reader, keys).await {
                Ok(snapshot) => {
                    metrics::queue_depth(keys.name(), &snapshot, now_ms());
                    if failing {
                        tracing::info!("queue depth readable again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(queue = keys.name(), error = %format!("{e:#}"), "cannot read queue depth; the gauges keep their last values");
                        failing = true;
                    }
                }
            }
        }
    }
}
