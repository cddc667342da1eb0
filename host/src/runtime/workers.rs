//! Starts one bullmq-official `Worker` per served queue and keeps trying until it runs, and applies the
//! lifecycle of one queue at run time: start, stop fetching, drain, close ([`Fleet`]).
//!
//! Worker options come from the operator's `QUEUE_<Q>_*` overrides, then the plugin's hints, then BullMQ's
//! defaults. Construction needs Redis; when Redis is down at start [`start_worker`] retries with exponential
//! backoff for as long as it takes (the library itself only reconnects once a worker exists). Once running,
//! the library's fetch loop survives Redis restarts on its own (docs/bullmq-official.md §5).
//!
//! Each running queue has its own child of the process-wide drain state (`shutdown.rs`), so one plugin
//! version's queues can be retired (hot reload: replaced or removed) with exactly the phases of a shutdown —
//! stop fetching, let in-flight jobs finish within `SHUTDOWN_TIMEOUT_MS`, cancel, put the rest back in wait —
//! while every other queue keeps consuming.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bullmq::options::RedisConnectionOptions;
use bullmq::{QueueKeys, RateLimiterOptions, Worker, WorkerOptions};
use futures_util::future::join_all;
use plugin_api::QueueInfo;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::bridge::{processor, CallWatch, QueueBridge};
use super::completions::Completions;
use super::health::Health;
use super::hold::QueueHold;
use super::redis_admin::AdminRedis;
use super::{events, stalled};
use crate::config::{Config, QueueOverrides};
use crate::plugins::ActivePlugin;
use crate::shutdown::{self, DrainState};

/// Extra time a worker gets to close after the drain phases (its fetch loop leaves an idle BZPOPMIN within
/// the drain delay set here).
const WORKER_CLOSE_EXTRA: Duration = Duration::from_secs(3);

/// A queue whose worker is running.
pub struct Running {
    /// Queue name.
    pub queue: String,
    /// The plugin version serving it.
    pub plugin: Arc<ActivePlugin>,
    /// The library's worker.
    pub worker: Arc<Worker>,
    /// This queue's drain state (a child of the process-wide one).
    pub drain: Arc<DrainState>,
    events: JoinHandle<()>,
    stalled_check: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    completions: Arc<Completions>,
}

impl Running {
    /// Stops fetching and the queue's own stalled check (the first step of retiring or shutting down).
    pub fn stop_fetching(&self) {
        self.worker.pause();
        self.stalled_check.abort();
    }

    /// After the worker closed: stops the queue's tasks and warns about results Redis never recorded.
    pub fn finish(&self, health: &Health) {
        self.events.abort();
        self.sweeper.abort();
        health.set_consuming(&self.queue, false);
        let unrecorded = self.completions.unconfirmed();
        if unrecorded > 0 {
            tracing::warn!(
                queue = %self.queue,
                jobs = unrecorded,
                "completed jobs whose result Redis has not recorded (it was unreachable); they stay active and \
                 run again once their lock expires"
            );
        }
    }
}

/// Everything needed to start and retire queues while the process runs.
pub struct Fleet {
    /// The configuration.
    pub config: Config,
    /// Redis connection options for new workers.
    pub connection: RedisConnectionOptions,
    /// The host's own Redis connection.
    pub admin: AdminRedis,
    /// Health state.
    pub health: Arc<Health>,
    /// The process-wide drain state.
    pub drain: Arc<DrainState>,
    /// Queues running now.
    pub running: Arc<Mutex<Vec<Running>>>,
    /// Queues whose depth gauges are refreshed.
    pub depth_queues: Arc<std::sync::Mutex<Vec<QueueKeys>>>,
    /// Per queue, the completed results not yet recorded; kept across plugin versions of the queue.
    completions: std::sync::Mutex<HashMap<String, Arc<Completions>>>,
}

impl Fleet {
    /// A fleet with nothing running yet.
    pub fn new(
        config: Config,
        connection: RedisConnectionOptions,
        admin: AdminRedis,
        health: Arc<Health>,
        drain: Arc<DrainState>,
        running: Arc<Mutex<Vec<Running>>>,
        depth_queues: Arc<std::sync::Mutex<Vec<QueueKeys>>>,
    ) -> Self {
        Self {
            config,
            connection,
            admin,
            health,
            drain,
            running,
            depth_queues,
            completions: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn completions_of(&self, queue: &str) -> Arc<Completions> {
        let mut all = self.completions.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(all.entry(queue.to_owned()).or_insert_with(|| {
            Completions::new(
                queue,
                QueueKeys::new(queue, Some(&self.config.prefix)),
                self.admin.clone(),
            )
        }))
    }

    /// Starts `info.queue`'s worker for `plugin` (retrying until Redis lets it), registers it as running and
    /// logs `queue consuming`.
    pub async fn start_queue(&self, plugin: Arc<ActivePlugin>, info: QueueInfo) {
        let config = &self.config;
        let overrides = config.queue(&info.queue);
        let (concurrency, options) = worker_options(config, &self.connection, &info, &overrides);
        let keys = QueueKeys::new(&info.queue, Some(&config.prefix));
        let completions = self.completions_of(&info.queue);
        let drain = DrainState::child_of(&self.drain);
        let bridge = Arc::new(QueueBridge {
            queue: info.queue.clone(),
            keys: keys.clone(),
            plugin: Arc::clone(&plugin),
            queue_info: info.clone(),
            admin: self.admin.clone(),
            drain: Arc::clone(&drain),
            hold: QueueHold::new(),
            health: Arc::clone(&self.health),
            job_timeout: overrides.job_timeout(info.timeout_ms),
            metrics: Arc::clone(completions.metrics()),
            completions: Arc::clone(&completions),
            crash_limit: config.crash_limit,
            watch: CallWatch::new(Arc::clone(&drain)),
        });
        let stalled_check = stalled::StalledCheck {
            queue: info.queue.clone(),
            keys: keys.clone(),
            admin: self.admin.clone(),
            interval: Duration::from_millis(options.stalled_interval.max(1)),
            max_stalled: options.max_stalled_count,
        };
        let plan = QueuePlan {
            queue: info.queue.clone(),
            concurrency,
            options,
            bridge,
            stalled_check,
        };
        if let Ok(mut depth) = self.depth_queues.lock() {
            if !depth.iter().any(|k| k.name() == info.queue) {
                depth.push(keys);
            }
        }
        let worker = Arc::new(start_worker(&plan).await);
        plan.bridge.hold.attach(&worker, Arc::clone(&drain));
        let events = events::spawn_logger(
            plan.queue.clone(),
            Arc::clone(&worker),
            Arc::clone(&self.health),
            Arc::clone(&completions),
        );
        let stalled_check = plan.stalled_check.clone().spawn();
        let sweeper = completions.spawn_sweeper(Arc::clone(&worker));
        self.running.lock().await.push(Running {
            queue: plan.queue.clone(),
            plugin,
            worker,
            drain,
            events,
            stalled_check,
            sweeper,
            completions,
        });
        self.health.set_consuming(&plan.queue, true);
        // The time budget goes after the fields tests and operators grep for, and only when there is one.
        match plan.bridge.job_timeout {
            Some(t) => tracing::info!(
                queue = %plan.queue,
                concurrency = plan.concurrency,
                job_timeout_ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
                "queue consuming"
            ),
            None => {
                tracing::info!(queue = %plan.queue, concurrency = plan.concurrency, "queue consuming")
            }
        }
    }

    /// Starts every queue of `plugin`, concurrently.
    pub async fn start_plugin(&self, plugin: &Arc<ActivePlugin>) {
        let starts = plugin
            .info
            .queues
            .iter()
            .map(|p| self.start_queue(Arc::clone(plugin), p.clone()));
        join_all(starts).await;
    }

    /// Retires every queue `plugin` serves: stops fetching, drains its in-flight jobs within
    /// `SHUTDOWN_TIMEOUT_MS` (then cancels and puts back the rest, exactly as at shutdown) and closes the
    /// workers. Other queues are untouched. Returns the queues it served.
    pub async fn retire_plugin(&self, plugin: &Arc<ActivePlugin>) -> Vec<String> {
        let retiring: Vec<Running> = {
            let mut running = self.running.lock().await;
            let (mine, others): (Vec<Running>, Vec<Running>) = std::mem::take(&mut *running)
                .into_iter()
                .partition(|r| Arc::ptr_eq(&r.plugin, plugin));
            *running = others;
            mine
        };
        for r in &retiring {
            r.stop_fetching();
            self.health.set_consuming(&r.queue, false);
        }
        let what = format!(
            "retiring plugin {} {}",
            plugin.info.name, plugin.info.version
        );
        let timeout = self.config.shutdown_timeout;
        let mut closing = close_workers(&retiring, timeout);
        let drains = retiring
            .iter()
            .map(|r| shutdown::drain_phases(&r.drain, timeout, &what));
        let reports = join_all(drains).await;
        while closing.join_next().await.is_some() {}
        let put_back: usize = reports.iter().map(|r| r.cancelled).sum();
        if put_back > 0 {
            tracing::warn!(
                plugin = %plugin.info.name,
                version = %plugin.info.version,
                jobs = put_back,
                "jobs still running when the drain bound passed were cancelled; those that did not complete \
                 went back to wait"
            );
        }
        for r in &retiring {
            r.finish(&self.health);
        }
        retiring.into_iter().map(|r| r.queue).collect()
    }

    /// Stops refreshing the depth gauges of `queue` and stops reporting it (no plugin serves it any more).
    pub fn forget_queue(&self, queue: &str) {
        if let Ok(mut depth) = self.depth_queues.lock() {
            depth.retain(|k| k.name() != queue);
        }
        self.health.remove_queue(queue);
    }
}

/// Starts closing every worker concurrently; the caller joins the returned set. Closing runs alongside the
/// drain phases (`shutdown_timeout`, then cancel and abandon) and gets them all, plus the time a fetch loop
/// needs to leave its idle BZPOPMIN.
pub fn close_workers(running: &[Running], shutdown_timeout: Duration) -> tokio::task::JoinSet<()> {
    let budget =
        shutdown_timeout + shutdown::CANCEL_GRACE + shutdown::ABANDON_GRACE + WORKER_CLOSE_EXTRA;
    let mut closing = tokio::task::JoinSet::new();
    let budget_ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
    for r in running {
        let worker = Arc::clone(&r.worker);
        let queue = r.queue.clone();
        closing.spawn(async move {
            if let Err(e) = worker.close(budget_ms).await {
                tracing::warn!(queue = %queue, error = %e, "closing the worker failed");
            }
        });
    }
    closing
}

/// Fixed wait of the library's fetch loop after a Redis error (its default is 15 s; docs/bullmq-official.md D6).
const FETCH_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Idle BZPOPMIN timeout: bounds how long a closing worker's fetch loop takes to notice (Node: 5 s).
const DRAIN_DELAY: Duration = Duration::from_secs(2);

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

/// How many jobs of the queue run at once: the operator's `QUEUE_<Q>_CONCURRENCY`, else the plugin's
/// default, and never less than one.
pub fn effective_concurrency(overrides: &QueueOverrides, info: &QueueInfo) -> u32 {
    overrides
        .concurrency
        .unwrap_or(info.default_concurrency)
        .max(1)
}

/// Resolves the worker options of one queue.
pub fn worker_options(
    config: &Config,
    connection: &RedisConnectionOptions,
    info: &QueueInfo,
    overrides: &QueueOverrides,
) -> (u32, WorkerOptions) {
    let concurrency = effective_concurrency(overrides, info);
    let limiter = match (overrides.rate_limit_max, overrides.rate_limit_duration_ms) {
        (Some(0), _) => None,
        (Some(max), Some(duration)) => Some((max, duration)),
        _ => info
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
pub async fn start_worker(plan: &QueuePlan) -> Worker {
    super::reconnect::until_ok(
        || {
            let proc = processor(Arc::clone(&plan.bridge));
            Worker::with_options(&plan.queue, proc, plan.options.clone())
        },
        |attempt, e, wait| {
            tracing::warn!(
                queue = %plan.queue,
                attempt,
                retry_in_ms = wait.as_millis() as u64,
                error = %e,
                "cannot start the queue's worker yet"
            )
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::RateLimitHint;

    fn config() -> Config {
        Config::read(&crate::config::Env::from_vars([("REDIS_HOST", "r")])).unwrap()
    }

    fn queue_info(conc: u32, hint: Option<RateLimitHint>) -> QueueInfo {
        QueueInfo {
            queue: "q".into(),
            job_names: vec!["a".into()],
            default_concurrency: conc,
            rate_limit: hint,
            handles_unknown_names: false,
            timeout_ms: None,
            inline_jobs: vec![],
            pending_jobs: vec![],
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
        assert_eq!(worker_options(&c, &conn, &queue_info(4, None), &o).0, 9);
        let none = QueueOverrides::default();
        assert_eq!(worker_options(&c, &conn, &queue_info(4, None), &none).0, 4);
        assert_eq!(worker_options(&c, &conn, &queue_info(0, None), &none).0, 1);
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
        let (_, o) = worker_options(&c, &conn, &queue_info(1, hint), &none);
        let l = o.limiter.unwrap();
        assert_eq!((l.max, l.duration), (5, 1000));
        let over = QueueOverrides {
            rate_limit_max: Some(50),
            rate_limit_duration_ms: Some(2000),
            ..Default::default()
        };
        let (_, o) = worker_options(&c, &conn, &queue_info(1, hint), &over);
        let l = o.limiter.unwrap();
        assert_eq!((l.max, l.duration), (50, 2000));
        let off = QueueOverrides {
            rate_limit_max: Some(0),
            ..Default::default()
        };
        let (_, o) = worker_options(&c, &conn, &queue_info(1, hint), &off);
        assert!(o.limiter.is_none());
        assert_eq!(o.run_retry_delay, 1000);
        assert!(
            o.skip_stalled_check,
            "the host's own stalled check replaces the library's"
        );
        assert_eq!(o.prefix, "bull");
    }
}
