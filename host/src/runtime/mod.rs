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
mod reconnect;
pub(crate) mod redis_admin;
mod reloader;
mod retry;
mod stacktrace;
mod stalled;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bullmq::QueueKeys;
use tokio::sync::Mutex;

use self::health::Health;
use self::redis_admin::AdminRedis;
use self::reloader::{ReloaderHandle, ServingSet};
use self::workers::{Fleet, Running};
use crate::config::Config;
use crate::plugins::watch::PrivateCopies;
use crate::plugins::{ActivePlugin, Registry};
use crate::shutdown::{self, DrainState};

/// How often the host pings Redis for readiness.
const REDIS_PING_PERIOD: Duration = Duration::from_secs(2);
/// Budget handed to each plugin's `shutdown` (at shutdown, and when hot reload retires a version).
const PLUGIN_SHUTDOWN_BUDGET: Duration = Duration::from_millis(1500);

/// Blocking threads the runtime needs: one per concurrent job of every queue, plus room for plugin
/// shutdown calls and the library's own blocking work. Use it for tokio's `max_blocking_threads`.
pub fn blocking_threads_needed(config: &Config, registry: &Registry) -> usize {
    let jobs: usize = registry
        .queues()
        .iter()
        .map(|(_, p)| workers::effective_concurrency(&config.queue(&p.queue), p) as usize)
        .sum();
    jobs + registry.active.len() + 16
}

/// Runs the worker until a shutdown signal, then drains. Errors only for problems that make running
/// impossible (the HTTP port cannot be bound, signal handlers cannot be installed). `copies` is set when hot
/// reload is on (the registry was loaded from private copies made there).
pub async fn run(
    config: Config,
    registry: Registry,
    copies: Option<Arc<PrivateCopies>>,
) -> anyhow::Result<()> {
    tracing::info!(
        prefix = %config.prefix,
        shutdown_timeout_ms = config.shutdown_timeout.as_millis() as u64,
        http_port = config.http_port.unwrap_or(0),
        log_format = ?config.log_format,
        plugins = registry.active.len(),
        disabled = registry.disabled.len(),
        "starting"
    );
    // Plugin processes started before the runtime had their output read by their supervisor threads; from
    // here on it is read on this runtime, so a job's reply wakes the task awaiting it directly.
    for process in registry.active.iter().filter_map(|p| p.process.as_ref()) {
        process.read_output_on(tokio::runtime::Handle::current());
    }
    let prometheus = metrics::install()?;
    tokio::spawn(metrics::upkeep(prometheus.clone()));
    metrics::plugins(
        registry.active.len(),
        &registry
            .disabled
            .iter()
            .map(|d| (d.plugin(), d.file(), d.stage.to_string()))
            .collect::<Vec<_>>(),
    );
    let served = registry.queues();
    if served.is_empty() {
        tracing::warn!(
            plugin_dir = %config.plugin_dir.display(),
            "no plugin serves any queue; nothing will be consumed"
        );
    }
    for queue in config.overridden_queues() {
        if !served
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
        served.iter().map(|(_, p)| p.queue.clone()),
        registry.disabled.clone(),
        registry.dir_error.clone(),
    );
    for p in &registry.active {
        health.set_serving(reloader::serving_entry(p));
        metrics::plugin_serving(&p.info.name, &p.info.version, true);
    }
    let serving: ServingSet = Arc::new(std::sync::Mutex::new(registry.active.clone()));
    let reload_slot: Arc<std::sync::Mutex<Option<ReloaderHandle>>> = Arc::default();
    let watching = match (&config.watch, copies) {
        (Some(settings), Some(copies)) => Some(Watching {
            settings: settings.clone(),
            copies,
            files: reloader::registry_files(&registry),
            serving: Arc::clone(&serving),
            slot: Arc::clone(&reload_slot),
        }),
        _ => None,
    };
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

    let mut signal = Box::pin(shutdown::wait_for_signal());
    let drain = DrainState::new();
    let running: Arc<Mutex<Vec<Running>>> = Arc::new(Mutex::new(Vec::new()));
    // The crash journal, when any plugin runs in-process (process-mode plugins cannot take the host down).
    let identity = crate::isolation::journal::identity(&config.redis.redacted(), &config.prefix);
    let journal = registry
        .active
        .iter()
        .any(|p| p.isolation() == crate::isolation::Isolation::InProcess)
        .then(|| crate::isolation::open_journal(&config.state_dir, &identity))
        .flatten()
        .map(|j| j.path().to_owned());

    let copies_dir = watching.as_ref().map(|w| Arc::clone(&w.copies));
    let startup = tokio::spawn(start_all(
        config.clone(),
        journal,
        served,
        Arc::clone(&health),
        Arc::clone(&drain),
        Arc::clone(&running),
        watching,
    ));

    let signal_name = signal.as_mut().await?;
    // Not ready from the moment the shutdown is announced: readiness turns first, then the log line.
    health.set_shutting_down();
    tracing::info!(signal = signal_name, "shutdown begin");
    startup.abort();
    // Wait for the abort to land so that no worker can be registered after the list is taken.
    let _ = startup.await;
    let reloading = reload_slot.lock().ok().and_then(|mut slot| slot.take());
    if let Some(reloader) = reloading {
        // A change being applied finishes first (bounded by the drain timeouts); then nothing changes.
        reloader.stop().await;
    }
    let running = std::mem::take(&mut *running.lock().await);
    for r in &running {
        r.stop_fetching();
    }
    // Closing runs alongside the drain: it waits for the library's active jobs (which the drain ends) and
    // for the fetch loop to leave its idle BZPOPMIN (at most the drain delay).
    let mut closing = workers::close_workers(&running, config.shutdown_timeout);
    let report = shutdown::drain_in_flight(&drain, config.shutdown_timeout).await;
    while closing.join_next().await.is_some() {}
    for r in &running {
        r.finish(&health);
    }
    let serving_now = serving.lock().map(|s| s.clone()).unwrap_or_default();
    shutdown_plugins(&serving_now).await;
    if let Some(copies) = copies_dir {
        copies.remove();
    }
    tracing::info!(
        cancelled = report.cancelled,
        abandoned = report.abandoned,
        left_running = report.left_running,
        "shutdown complete"
    );
    Ok(())
}

/// What hot reload needs once the queues run.
struct Watching {
    settings: crate::config::WatchSettings,
    copies: Arc<PrivateCopies>,
    files: std::collections::BTreeSet<std::path::PathBuf>,
    serving: ServingSet,
    slot: Arc<std::sync::Mutex<Option<ReloaderHandle>>>,
}

/// Connects the admin connection, then starts every queue's worker; logs `worker ready` when all consume,
/// then starts watching the plugin directory when hot reload is on.
async fn start_all(
    config: Config,
    journal: Option<std::path::PathBuf>,
    served: Vec<(Arc<ActivePlugin>, plugin_api::QueueInfo)>,
    health: Arc<Health>,
    drain: Arc<DrainState>,
    running: Arc<Mutex<Vec<Running>>>,
    watching: Option<Watching>,
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

    let depth_queues: Arc<std::sync::Mutex<Vec<QueueKeys>>> = Arc::default();
    if let (Some(_), Some(period)) = (config.http_port, config.depth_interval) {
        tokio::spawn(depth::refresh(
            admin.clone(),
            Arc::clone(&depth_queues),
            period,
        ));
    }
    let fleet = Arc::new(Fleet::new(
        config,
        connection,
        admin,
        health,
        drain,
        running,
        depth_queues,
    ));

    let mut starting = tokio::task::JoinSet::new();
    for (plugin, info) in served {
        let fleet = Arc::clone(&fleet);
        starting.spawn(async move { fleet.start_queue(plugin, info).await });
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
    if let Some(w) = watching {
        let handle = reloader::spawn(fleet, w.files, w.settings, w.copies, w.serving);
        if let Ok(mut slot) = w.slot.lock() {
            *slot = handle;
        }
    }
}

/// The admin connection, retried with backoff until Redis answers.
async fn connect_admin(connection: &bullmq::options::RedisConnectionOptions) -> AdminRedis {
    reconnect::until_ok(
        || AdminRedis::connect(connection),
        |_, e, wait| {
            tracing::warn!(
                error = %format!("{e:#}"),
                retry_in_ms = wait.as_millis() as u64,
                "Redis not reachable yet"
            )
        },
    )
    .await
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
///
/// All async work (the library's fetch loops, the bridges, Redis I/O, events, HTTP) runs on one thread, as
/// Node's worker does: per job it is a few short steps between Redis round trips, and on a multi-thread
/// runtime its tasks woke each other across worker threads (more context switches and CPU per job for
/// the same throughput; figures in docs/performance.md). Plugin calls keep their blocking threads.
pub fn build_tokio(blocking_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads.max(512))
        .thread_name("frostguard-rt")
        .build()
        .context("building the async runtime")
}
