//! Starts one bullmq-official `Worker` per served queue and keeps trying until it runs.
//!
//! Worker options come from the operator's `QUEUE_<Q>_*` overrides, then the plugin's hints, then BullMQ's
//! defaults. Construction needs Redis; when Redis is down at start the supervisor retries with exponential
//! backoff for as long as it takes (the library itself only reconnects once a worker exists). Once running,
//! the library's fetch loop survives Redis restarts on its own (docs/bullmq-official.md §5).

use std::sync::Arc;
use std::time::Duration;

use bullmq::options::RedisConnectionOptions;
use bullmq::{RateLimiterOptions, Worker, WorkerOptions};
use plugin_api::ProcessorInfo;

use super::bridge::{processor, QueueBridge};
use crate::config::{Config, QueueOverrides};

/// Fixed wait of the library's fetch loop after a Redis error (its default is 15 s; docs/bullmq-official.md D6).
const FETCH_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Idle BZPOPMIN timeout: bounds how long a closing worker's fetch loop takes to notice (Node: 5 s).
const DRAIN_DELAY: Duration = Duration::from_secs(2);
/// Backoff bounds for starting a worker while Redis is unreachable.
const START_BACKOFF_MIN: Duration = Duration::from_millis(250);
const START_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A queue ready to be started.
pub struct QueuePlan {
    /// Queue name.
    pub queue: String,
    /// Effective concurrency.
    pub concurrency: u32,
    /// Effective worker options.
    pub options: WorkerOptions,
    /// The bridge its jobs go through.
    pub bridge: Arc<QueueBridge>,
    /// The queue's stalled-job check, started with the worker.
    pub stalled_check: super::stalled::StalledCheck,
}

/// Resolves the worker options of one queue.
pub fn worker_options(
    config: &Config,
    connection: &RedisConnectionOptions,
    processor: &ProcessorInfo,
    overrides: &QueueOverrides,
) -> (u32, WorkerOptions) {
    let concurrency = overrides
        .concurrency
        .unwrap_or(processor.default_concurrency)
        .max(1);
    let limiter = match (overrides.rate_limit_max, overrides.rate_limit_duration_ms) {
        (Some(0), _) => None,
        (Some(max), Some(duration)) => Some((max, duration)),
        _ => processor
            .rate_limit
            .filter(|h| h.max > 0 && h.duration_ms > 0)
            .map(|h| (h.max, h.duration_ms)),
    };
    let mut opts = WorkerOptions::new()
        .connection(connection.clone())
        .prefix(config.prefix.clone())
        .concurrency(concurrency as usize)
        .run_retry_delay(FETCH_RETRY_DELAY)
        .drain_delay(DRAIN_DELAY)
        // The host runs its own stalled check (runtime/stalled.rs; docs/bullmq-official.md D8, D14).
        .skip_stalled_check();
    if let Some((max, duration)) = limiter {
        opts = opts.limiter(RateLimiterOptions::new(
            max,
            Duration::from_millis(duration),
        ));
    }
    if let Some(name) = &config.worker_name {
        opts = opts.name(name.clone());
    }
    if let Some(ms) = overrides.lock_duration_ms {
        opts = opts.lock_duration(Duration::from_millis(ms));
    }
    if let Some(ms) = overrides.stalled_interval_ms {
        opts = opts.stalled_interval(Duration::from_millis(ms));
    }
    if let Some(n) = overrides.max_stalled_count {
        opts = opts.max_stalled_count(n);
    }
    (concurrency, opts)
}

/// Builds and starts the queue's worker, retrying until it runs (the caller aborts the task on shutdown).
pub async fn start(plan: &QueuePlan) -> Worker {
    let mut backoff = START_BACKOFF_MIN;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let proc = processor(Arc::clone(&plan.bridge));
        match Worker::with_options(&plan.queue, proc, plan.options.clone()).await {
            Ok(worker) => return worker,
            Err(e) => {
                tracing::warn!(
                    queue = %plan.queue,
                    attempt,
                    retry_in_ms = backoff.as_millis() as u64,
                    error = %e,
                    "cannot start the queue's worker yet"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(START_BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::RateLimitHint;

    fn config() -> Config {
        let get = |k: &str| (k == "REDIS_HOST").then(|| "r".to_owned());
        Config::from_parts(&get, []).unwrap()
    }

    fn processor_info(conc: u32, hint: Option<RateLimitHint>) -> ProcessorInfo {
        ProcessorInfo {
            queue: "q".into(),
            job_names: vec!["a".into()],
            default_concurrency: conc,
            rate_limit: hint,
            handles_unknown_names: false,
            timeout_ms: None,
        }
    }

    #[test]
    fn concurrency_override_then_default_then_one() {
        let c = config();
        let conn = RedisConnectionOptions::new();
        let o = QueueOverrides {
            concurrency: Some(9),
            ..Default::default()
        };
        assert_eq!(worker_options(&c, &conn, &processor_info(4, None), &o).0, 9);
        let none = QueueOverrides::default();
        assert_eq!(
            worker_options(&c, &conn, &processor_info(4, None), &none).0,
            4
        );
        assert_eq!(
            worker_options(&c, &conn, &processor_info(0, None), &none).0,
            1
        );
    }

    #[test]
    fn limiter_resolution() {
        let c = config();
        let conn = RedisConnectionOptions::new();
        let hint = Some(RateLimitHint {
            max: 5,
            duration_ms: 1000,
        });
        let none = QueueOverrides::default();
        let (_, o) = worker_options(&c, &conn, &processor_info(1, hint), &none);
        let l = o.limiter.unwrap();
        assert_eq!((l.max, l.duration), (5, 1000));
        let over = QueueOverrides {
            rate_limit_max: Some(50),
            rate_limit_duration_ms: Some(2000),
            ..Default::default()
        };
        let (_, o) = worker_options(&c, &conn, &processor_info(1, hint), &over);
        let l = o.limiter.unwrap();
        assert_eq!((l.max, l.duration), (50, 2000));
        let off = QueueOverrides {
            rate_limit_max: Some(0),
            ..Default::default()
        };
        let (_, o) = worker_options(&c, &conn, &processor_info(1, hint), &off);
        assert!(o.limiter.is_none());
        assert_eq!(o.run_retry_delay, 1000);
        assert!(
            o.skip_stalled_check,
            "the host's own stalled check replaces the library's"
        );
        assert_eq!(o.prefix, "bull");
    }
}
