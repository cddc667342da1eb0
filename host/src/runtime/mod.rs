//! The host runtime: one bullmq-official worker per served queue, the bridge to the plugins, worker events,
//! health, metrics and the graceful shutdown.
//!
//! [`run`] is the whole life of `frostguard-worker run` after configuration and plugin loading: it starts the
//! HTTP endpoint, connects to Redis (retrying for as long as it takes), starts every queue's worker, logs
//! `worker ready` once all consume, and on SIGTERM/SIGINT drains and returns `Ok(())`.

mod bridge;
mod callbacks;
mod completions;
mod depth;
mod events;
pub mod health;
mod hold;
pub(crate) mod metrics;
pub(crate) mod redis_admin;
mod retry;
mod stacktrace;
mod stalled;
mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bullmq::{QueueKeys, Worker};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use self::bridge::QueueBridge;
use self::health::{DisabledEntry, Health};
use self::hold::QueueHold;
use self::redis_admin::AdminRedis;
use self::supervisor::QueuePlan;
use crate::config::Config;
use crate::plugins::{ActivePlugin, Registry};
use crate::shutdown::{self, DrainState};

/// How often the host pings Redis for readiness.
const REDIS_PING_PERIOD: Duration = Duration::from_secs(2);
/// Budget handed to each plugin's `shutdown`.
const PLUGIN_SHUTDOWN_BUDGET: Duration = Duration::from_millis(1500);
/// Extra time a worker gets to close after the drain phases (its fetch loop leaves an idle BZPOPMIN within
/// the drain delay set in the supervisor).
const WORKER_CLOSE_EXTRA: Duration = Duration::from_secs(3);

/// A queue whose worker is running.
struct Running {
    queue: String,
    worker: Arc<Worker>,
    events: JoinHandle<()>,
    stalled_check: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    completions: Arc<completions::Completions>,
}

/// Blocking threads the runtime needs: one per concurrent job of every queue, plus room for plugin
/// shutdown calls and the library's own blocking work. Use it for tokio's `max_blocking_threads`.
pub fn blocking_threads_needed(config: &Config, registry: &Registry) -> usize {
    let jobs: usize = registry
        .processors()
        .iter()
        .map(|(_, p)| {
            config
                .queue(&p.queue)
                .concurrency
                .unwrap_or(p.default_concurrency)
                .max(1) as usize
        })
        .sum();
    jobs + registry.active.len() + 16
}

/// Runs the worker until a shutdown signal, then drains. Errors only for problems that make running
/// impossible (the HTTP port cannot be bound, signal handlers cannot be installed).
pub async fn run(config: Config, registry: Registry) -> anyhow::Result<()> {
    tracing::info!(
        prefix = %config.prefix,
        shutdown_timeout_ms = config.shutdown_timeout.as_millis() as u64,
        http_port = config.http_port.unwrap_or(0),
        log_format = ?config.log_format,
        plugins = registry.active.len(),
        disabled = registry.disabled.len(),
        "starting"
    );
    let prometheus = metrics::install()?;
    tokio::spawn(metrics::upkeep(prometheus.clone()));
    let disabled: Vec<DisabledEntry> = registry
        .disabled
        .iter()
        .map(|d| {
            let file = d
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| d.path.display().to_string());
            DisabledEntry {
                plugin: d.name.clone().unwrap_or_else(|| file.clone()),
                file,
                stage: d.stage.to_string(),
                reason: d.reason.clone(),
            }
        })
        .collect();
    metrics::plugins(
        registry.active.len(),
        &disabled
            .iter()
            .map(|d| (d.plugin.clone(), d.file.clone(), d.stage.clone()))
            .collect::<Vec<_>>(),
    );
    let processors = registry.processors();
    if processors.is_empty() {
        tracing::warn!(
            plugin_dir = %config.plugin_dir.display(),
            "no plugin serves any queue; nothing will be consumed"
        );
    }
    for queue in config.overridden_queues() {
        if !processors
            .iter()
            .any(|(_, p)| crate::config::queue_env_name(&p.queue) == queue)
        {
            tracing::warn!(
                queue,
                "QUEUE_{queue}_* is set but no loaded plugin serves that queue"
            );
        }
    }
    let health = Health::new(
        processors.iter().map(|(_, p)| p.queue.clone()),
        disabled,
        registry.dir_error.clone(),
    );
    if let Some(port) = config.http_port {
        let nofile = crate::http::raise_descriptor_limit();
        let (max_connections, lowered) =
            crate::http::connection_cap(config.http_max_connections, nofile);
        if lowered {
            tracing::warn!(
                configured = config.http_max_connections,
                max_connections,
                descriptor_limit = nofile.unwrap_or(0),
                reserve = crate::http::FD_RESERVE,
                "HTTP_MAX_CONNECTIONS lowered to keep file descriptors free for Redis and the plugins"
            );
        }
        let listener = crate::http::bind(std::net::SocketAddr::new(config.http_addr, port)).await?;
        tokio::spawn(crate::http::serve(
            listener,
            Arc::clone(&health),
            prometheus,
            crate::http::Limits {
                max_connections,
                header_timeout: config.http_header_timeout,
            },
        ));
    }

    // The crash journal, when any plugin runs in-process (process-mode plugins cannot take the host down).
    let identity = crate::isolation::journal::identity(&config.redis.redacted(), &config.prefix);
    let journal = registry
        .active
        .iter()
        .any(|p| p.isolation() == crate::isolation::Isolation::InProcess)
        .then(|| crate::isolation::open_journal(&config.state_dir, &identity))
        .flatten()
        .map(|j| j.path().to_owned());

    let mut signal = Box::pin(shutdown::wait_for_signal());
    let drain = DrainState::new();
    let running: Arc<Mutex<Vec<Running>>> = Arc::new(Mutex::new(Vec::new()));
    let startup = tokio::spawn(start_all(
        config.clone(),
        journal,
        processors,
        Arc::clone(&health),
        Arc::clone(&drain),
        Arc::clone(&running),
    ));

    let signal_name = signal.as_mut().await?;
    // Not ready from the moment the shutdown is announced: readiness turns first, then the log line.
    health.set_shutting_down();
    tracing::info!(signal = signal_name, "shutdown begin");
    startup.abort();
    // Wait for the abort to land so that no worker can be registered after the list is taken.
    let _ = startup.await;
    let running = std::mem::take(&mut *running.lock().await);
    for r in &running {
        r.worker.pause();
        r.stalled_check.abort();
    }
    // Closing runs alongside the drain: it waits for the library's active jobs (which the drain ends) and
    // for the fetch loop to leave its idle BZPOPMIN (at most the drain delay).
    let close_budget = config.shutdown_timeout
        + shutdown::CANCEL_GRACE
        + shutdown::ABANDON_GRACE
        + WORKER_CLOSE_EXTRA;
    let mut closing = close_all(&running, close_budget);
    let report = shutdown::drain_in_flight(&drain, config.shutdown_timeout).await;
    while closing.join_next().await.is_some() {}
    for r in &running {
        r.events.abort();
        r.sweeper.abort();
        health.set_consuming(&r.queue, false);
        let unrecorded = r.completions.unconfirmed();
        if unrecorded > 0 {
            tracing::warn!(
                queue = %r.queue,
                jobs = unrecorded,
                "completed jobs whose result Redis has not recorded (it was unreachable); they stay active and \
                 run again once their lock expires"
            );
        }
    }
    shutdown_plugins(&registry.active).await;
    tracing::info!(
        cancelled = report.cancelled,
        abandoned = report.abandoned,
        left_running = report.left_running,
        "shutdown complete"
    );
    Ok(())
}

/// Connects the admin connection, then starts every queue's worker; logs `worker ready` when all consume.
async fn start_all(
    config: Config,
    journal: Option<std::path::PathBuf>,
    processors: Vec<(Arc<ActivePlugin>, plugin_api::ProcessorInfo)>,
    health: Arc<Health>,
    drain: Arc<DrainState>,
    running: Arc<Mutex<Vec<Running>>>,
) {
    tracing::info!(redis = %config.redis.redacted(), prefix = %config.prefix, "connecting to Redis");
    let connection = config.redis.connection_options();
    let admin = connect_admin(&connection).await;
    health.set_redis_up(true);
    // Jobs a dead in-process run was running: the one that crashed it is counted (and failed for good at
    // the limit) before any queue is consumed again.
    crate::isolation::orphans::settle(
        &admin,
        &config.prefix,
        &config.state_dir,
        &crate::isolation::journal::identity(&config.redis.redacted(), &config.prefix),
        journal.as_deref().unwrap_or(std::path::Path::new("")),
        config.crash_limit,
    )
    .await;
    tokio::spawn(health::monitor_redis(
        Arc::clone(&health),
        admin.clone(),
        REDIS_PING_PERIOD,
    ));

    if let (Some(_), Some(period)) = (config.http_port, config.depth_interval) {
        let queues = processors
            .iter()
            .map(|(_, info)| QueueKeys::new(&info.queue, Some(&config.prefix)))
            .collect();
        tokio::spawn(depth::refresh(admin.clone(), queues, period));
    }

    let mut starting = tokio::task::JoinSet::new();
    for (plugin, info) in processors {
        let overrides = config.queue(&info.queue);
        let (concurrency, options) =
            supervisor::worker_options(&config, &connection, &info, &overrides);
        let completions = completions::Completions::new(
            &info.queue,
            QueueKeys::new(&info.queue, Some(&config.prefix)),
            admin.clone(),
        );
        let bridge = Arc::new(QueueBridge {
            queue: info.queue.clone(),
            keys: QueueKeys::new(&info.queue, Some(&config.prefix)),
            plugin,
            processor: info.clone(),
            admin: admin.clone(),
            drain: Arc::clone(&drain),
            hold: QueueHold::new(),
            health: Arc::clone(&health),
            job_timeout: overrides.job_timeout(info.timeout_ms),
            completions: Arc::clone(&completions),
            crash_limit: config.crash_limit,
        });
        let stalled_check = stalled::StalledCheck {
            queue: info.queue.clone(),
            keys: QueueKeys::new(&info.queue, Some(&config.prefix)),
            admin: admin.clone(),
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
        let health = Arc::clone(&health);
        let running = Arc::clone(&running);
        let drain = Arc::clone(&drain);
        starting.spawn(async move {
            let worker = Arc::new(supervisor::start(&plan).await);
            plan.bridge.hold.attach(&worker, drain);
            let completions = Arc::clone(&plan.bridge.completions);
            let events = events::spawn_logger(
                plan.queue.clone(),
                Arc::clone(&worker),
                Arc::clone(&health),
                Arc::clone(&completions),
            );
            let stalled_check = plan.stalled_check.clone().spawn();
            let sweeper = completions.spawn_sweeper(Arc::clone(&worker));
            running.lock().await.push(Running {
                queue: plan.queue.clone(),
                worker,
                events,
                stalled_check,
                sweeper,
                completions,
            });
            health.set_consuming(&plan.queue, true);
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
        });
    }
    let mut any = false;
    while let Some(joined) = starting.join_next().await {
        if let Err(e) = joined {
            if e.is_panic() {
                tracing::error!(error = %e, "starting a queue's worker panicked");
                return;
            }
        }
        any = true;
    }
    if any {
        tracing::info!("worker ready");
    }
}

/// The admin connection, retried with backoff until Redis answers.
async fn connect_admin(connection: &bullmq::options::RedisConnectionOptions) -> AdminRedis {
    let mut backoff = Duration::from_millis(250);
    loop {
        match AdminRedis::connect(connection).await {
            Ok(admin) => return admin,
            Err(e) => {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "Redis not reachable yet"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Starts closing every worker concurrently; the caller joins the returned set.
fn close_all(running: &[Running], budget: Duration) -> tokio::task::JoinSet<()> {
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

/// Calls every plugin's `shutdown` on blocking threads, bounded by the shutdown budget.
async fn shutdown_plugins(active: &[Arc<ActivePlugin>]) {
    let mut calls = tokio::task::JoinSet::new();
    for plugin in active {
        let plugin = Arc::clone(plugin);
        calls.spawn_blocking(move || plugin.shutdown(PLUGIN_SHUTDOWN_BUDGET));
    }
    let all = async { while calls.join_next().await.is_some() {} };
    if tokio::time::timeout(PLUGIN_SHUTDOWN_BUDGET + Duration::from_millis(500), all)
        .await
        .is_err()
    {
        tracing::warn!("a plugin's shutdown overran its budget; not waiting for it");
    }
}

/// Builds the tokio runtime for `run`, sized for the plugins' blocking calls.
pub fn build_tokio(blocking_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads.max(512))
        .thread_name("frostguard-rt")
        .build()
        .context("building the async runtime")
}
