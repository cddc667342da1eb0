//! Hot reload at run time: applies changes of the plugin directory while every other queue keeps serving.
//!
//! The task waits for a debounced batch from the directory watch (`plugins/watch.rs`), rescans the directory,
//! waits until each changed file is completely written (closed after writing, then the same size and time
//! for two more debounce periods), loads each new build from a private copy up to its self-description, asks
//! `plugins/reload.rs` what the change means, and applies it with the queue lifecycle of
//! `runtime/workers.rs`:
//!
//! - **new plugin**: configuration, `init`, then its queues start;
//! - **replaced plugin**: the new build is configured and initialised first; only then are the old version's
//!   queues retired (stop fetching, in-flight jobs finish within `SHUTDOWN_TIMEOUT_MS`, the rest are put
//!   back in wait as at shutdown), the old version's `shutdown` called, and the new version's queues started.
//!   A new build failing any stage leaves the old version serving, and the refusal is shown on `/readyz`;
//! - **removed plugin**: its queues are retired the same way; their jobs wait in Redis.
//!
//! Each applied or refused change is one log line (`plugin change applied` / `plugin change refused`, with
//! the plugin, the old and the new version) and one count in `frostguard_plugin_reloads_total`. Libraries are
//! never unloaded, so every replaced, removed or refused build stays mapped; the mapped size is measured from
//! `/proc/self/maps` and a warning is logged past `PLUGIN_RETIRED_IMAGES_WARN` images.
//!
//! This module applies changes; `report.rs` is what each change shows operators (`/readyz`, metrics, logs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plugin_api::loader::LoadStage;
use tokio::sync::{mpsc, watch as signal, Mutex};
use tokio::task::JoinHandle;

use super::metrics;
use super::workers::Fleet;
use super::PLUGIN_SHUTDOWN_BUDGET;
use crate::config::WatchSettings;
use crate::isolation::IsolationSettings;
use crate::plugins::reload::{decide, file_name, Decision, FileChange, Serving};
use crate::plugins::watch::{self as dir, Batch, DirWatch, Fingerprint, PrivateCopies, Writing};
use crate::plugins::{load_build, start_build, ActivePlugin, Build, Registry};

mod report;
pub use report::serving_entry;

/// The plugins serving now, shared with the shutdown (which calls their `shutdown`).
pub type ServingSet = Arc<std::sync::Mutex<Vec<Arc<ActivePlugin>>>>;

/// The running reloader, as the shutdown sees it.
pub struct ReloaderHandle {
    stop: signal::Sender<bool>,
    busy: Arc<Mutex<()>>,
    task: JoinHandle<()>,
}

impl ReloaderHandle {
    /// Stops watching; waits for a change being applied to finish (it is bounded by the drain timeouts).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _applying = self.busy.lock().await;
        self.task.abort();
    }
}

/// The reloader's state.
struct Reloader {
    fleet: Arc<Fleet>,
    dir: PathBuf,
    settings: WatchSettings,
    copies: Arc<PrivateCopies>,
    serving: ServingSet,
    /// Last fingerprint seen per file (a file whose fingerprint changes is looked at again).
    known: BTreeMap<PathBuf, Fingerprint>,
    writing: Writing,
    /// Builds refused for a conflict that a later removal may resolve.
    parked: BTreeMap<PathBuf, Build>,
    /// Whether the directory could not be read on the last scan (logged once).
    scan_failing: bool,
}

/// Starts watching `registry`'s directory. `None` (logged) when the watch cannot be set up: the plugins
/// loaded at start keep serving, and changes need a restart.
pub fn spawn(
    fleet: Arc<Fleet>,
    registry_files: BTreeSet<PathBuf>,
    settings: WatchSettings,
    copies: Arc<PrivateCopies>,
    serving: ServingSet,
) -> Option<ReloaderHandle> {
    let dir = fleet.config.plugin_dir.clone();
    let (dir_watch, batches) = match DirWatch::start(&dir, settings.debounce) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("{e}; plugin changes need a restart");
            return None;
        }
    };
    tracing::info!(
        plugin_dir = %dir.display(),
        debounce_ms = u64::try_from(settings.debounce.as_millis()).unwrap_or(u64::MAX),
        "watching the plugin directory (hot reload)"
    );
    let (stop, stopped) = signal::channel(false);
    let busy = Arc::new(Mutex::new(()));
    let mut reloader = Reloader {
        fleet,
        dir,
        settings,
        copies,
        serving,
        known: BTreeMap::new(),
        writing: Writing::default(),
        parked: BTreeMap::new(),
        scan_failing: false,
    };
    let task_busy = Arc::clone(&busy);
    let task = tokio::spawn(async move {
        let _dir_watch = dir_watch;
        reloader.adopt(&registry_files);
        reloader.run(batches, stopped, task_busy).await;
    });
    Some(ReloaderHandle { stop, busy, task })
}

impl Reloader {
    /// Takes the files the start-up load saw as known, except a serving file whose content changed since.
    fn adopt(&mut self, registry_files: &BTreeSet<PathBuf>) {
        let Ok(now) = dir::scan(&self.dir) else {
            return;
        };
        let serving = self.serving_now();
        for (path, fingerprint) in now {
            if !registry_files.contains(&path) {
                continue;
            }
            let changed = serving
                .iter()
                .filter(|p| p.source == path)
                .any(|p| p.digest.as_deref() != dir::digest_of(&path).ok().as_deref());
            if !changed {
                self.known.insert(path, fingerprint);
            }
        }
    }

    async fn run(
        &mut self,
        mut batches: mpsc::UnboundedReceiver<Batch>,
        mut stopped: signal::Receiver<bool>,
        busy: Arc<Mutex<()>>,
    ) {
        // A first look catches what changed between the start-up load and the watch.
        let mut look = true;
        loop {
            if look {
                let _applying = busy.lock().await;
                if *stopped.borrow() {
                    return;
                }
                look = self.round(&mut batches).await;
            }
            let recheck = async {
                if look {
                    tokio::time::sleep(self.settings.debounce).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                batch = batches.recv() => match batch {
                    Some(batch) => {
                        tracing::debug!(written = ?batch.written, closed = ?batch.closed, "plugin directory changed");
                        self.writing.update(&batch);
                        self.take_batches(&mut batches);
                        look = true;
                    }
                    None => return,
                },
                () = recheck => look = true,
                _ = stopped.changed() => return,
            }
        }
    }

    fn serving_now(&self) -> Vec<Arc<ActivePlugin>> {
        self.serving.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Takes in the batches that arrived meanwhile.
    fn take_batches(&mut self, batches: &mut mpsc::UnboundedReceiver<Batch>) {
        while let Ok(batch) = batches.try_recv() {
            tracing::debug!(written = ?batch.written, closed = ?batch.closed, "plugin directory changed");
            self.writing.update(&batch);
        }
    }

    /// One look at the directory; true when a file still being written needs another look.
    async fn round(&mut self, batches: &mut mpsc::UnboundedReceiver<Batch>) -> bool {
        let now = match dir::scan(&self.dir) {
            Ok(now) => {
                if self.scan_failing {
                    tracing::info!(plugin_dir = %self.dir.display(), "plugin directory readable again");
                    self.scan_failing = false;
                }
                now
            }
            Err(e) => {
                if !self.scan_failing {
                    tracing::warn!("{e}; the plugins serving keep serving");
                    self.scan_failing = true;
                }
                return false;
            }
        };
        let present: BTreeSet<&PathBuf> = now.keys().collect();
        self.writing.retain_existing(&present);
        let mut again = false;
        let mut candidates: Vec<(PathBuf, Fingerprint)> = Vec::new();
        for (path, fingerprint) in &now {
            if self.known.get(path) == Some(fingerprint) {
                continue;
            }
            if self.writing.is_writing(path) {
                tracing::debug!(file = %path.display(), "plugin file still being written");
                again = true;
                continue;
            }
            candidates.push((path.clone(), *fingerprint));
        }
        let removed: Vec<PathBuf> = self
            .known
            .keys()
            .filter(|p| !now.contains_key(*p))
            .cloned()
            .collect();
        if candidates.is_empty() && removed.is_empty() {
            return again;
        }
        // Size and time must hold still for two more debounce periods: a write is reported only after one
        // quiet period, so by then any write that moved them has been reported too.
        if !candidates.is_empty() {
            tokio::time::sleep(self.settings.debounce * 2).await;
            self.take_batches(batches);
        }
        let mut changes: BTreeMap<PathBuf, FileChange> = BTreeMap::new();
        let mut builds: BTreeMap<PathBuf, Build> = BTreeMap::new();
        let serving = self.serving_now();
        for (path, fingerprint) in candidates {
            match Fingerprint::of(&path) {
                Ok(f) if f == fingerprint => {}
                Ok(_) => {
                    again = true;
                    continue;
                }
                Err(_) => continue, // gone again: the next scan sees it removed
            }
            if self.writing.is_writing(&path) {
                again = true;
                continue;
            }
            self.known.insert(path.clone(), fingerprint);
            if let Some(stale) = self.parked.remove(&path) {
                stale.discard_copy();
            }
            let same_build = serving.iter().any(|p| {
                p.source == path
                    && p.digest.is_some()
                    && p.digest.as_deref() == dir::digest_of(&path).ok().as_deref()
            });
            if same_build {
                continue; // touched or copied again, same content
            }
            let copies = Arc::clone(&self.copies);
            let source = path.clone();
            let loaded =
                tokio::task::spawn_blocking(move || load_build(&source, Some(&copies))).await;
            let change = match loaded {
                Ok(Ok(build)) => {
                    let info = build.library.info();
                    let change = FileChange::Built {
                        name: info.name.clone(),
                        version: info.version.clone(),
                        queues: info.queues.iter().map(|p| p.queue.clone()).collect(),
                    };
                    builds.insert(path.clone(), build);
                    change
                }
                Ok(Err(e)) => FileChange::Broken {
                    stage: e.stage,
                    reason: e.reason,
                },
                Err(e) => FileChange::Broken {
                    stage: LoadStage::Open,
                    reason: format!("loading crashed: {e}"),
                },
            };
            changes.insert(path, change);
        }
        for path in removed {
            self.known.remove(&path);
            if let Some(stale) = self.parked.remove(&path) {
                stale.discard_copy();
            }
            changes.insert(path, FileChange::Removed);
        }
        if changes.values().any(|c| *c == FileChange::Removed) {
            // A removal may resolve an earlier conflict: offer parked builds again.
            for (path, build) in std::mem::take(&mut self.parked) {
                let info = build.library.info();
                changes.entry(path.clone()).or_insert(FileChange::Built {
                    name: info.name.clone(),
                    version: info.version.clone(),
                    queues: info.queues.iter().map(|p| p.queue.clone()).collect(),
                });
                builds.entry(path).or_insert(build);
            }
        }
        if changes.is_empty() {
            return again;
        }
        let summary: Vec<Serving> = serving
            .iter()
            .map(|p| Serving {
                name: p.info.name.clone(),
                version: p.info.version.clone(),
                file: p.source.clone(),
                queues: p.info.queues.iter().map(|q| q.queue.clone()).collect(),
            })
            .collect();
        for decision in decide(&summary, &changes) {
            self.apply(decision, &mut builds).await;
        }
        self.report_images();
        again
    }

    fn serving_named(&self, name: &str) -> Option<Arc<ActivePlugin>> {
        self.serving_now().into_iter().find(|p| p.info.name == name)
    }

    async fn apply(&mut self, decision: Decision, builds: &mut BTreeMap<PathBuf, Build>) {
        match decision {
            Decision::Stop { name } => {
                let Some(old) = self.serving_named(&name) else {
                    return;
                };
                self.retire(&old).await;
                for q in old.info.queues.iter().map(|p| &p.queue) {
                    self.fleet.forget_queue(q);
                }
                self.fleet.health.remove_serving(&name);
                tracing::info!(
                    change = %"removed",
                    plugin = %name,
                    old_version = %old.info.version,
                    new_version = %"-",
                    file = %file_name(&old.source),
                    "plugin change applied"
                );
                metrics::plugin_change(&name, "removed", true);
            }
            Decision::Replace { file, name } => {
                let (Some(build), Some(old)) = (builds.remove(&file), self.serving_named(&name))
                else {
                    return;
                };
                let new_version = build.library.info().version.clone();
                if let Err(reason) = self.cluster_slot(&build) {
                    build.discard_copy();
                    let stage = LoadStage::QueueConflict;
                    self.refused_replacement(&old, &file, Some(new_version), stage, reason);
                    return;
                }
                let new = match initialise(build, &self.fleet.config.isolation).await {
                    Ok(new) => new,
                    Err((stage, reason)) => {
                        self.refused_replacement(&old, &file, Some(new_version), stage, reason);
                        return;
                    }
                };
                self.retire(&old).await;
                self.fleet.start_plugin(&new).await;
                for q in old.info.queues.iter().map(|p| &p.queue) {
                    if !new.info.queues.iter().any(|p| &p.queue == q) {
                        self.fleet.forget_queue(q);
                    }
                }
                self.now_serving(&new);
                tracing::info!(
                    change = %"replaced",
                    plugin = %name,
                    old_version = %old.info.version,
                    new_version = %new.info.version,
                    file = %file_name(&file),
                    "plugin change applied"
                );
                metrics::plugin_change(&name, "replaced", true);
            }
            Decision::Start { file, name } => {
                let Some(build) = builds.remove(&file) else {
                    return;
                };
                let version = build.library.info().version.clone();
                if let Err(reason) = self.cluster_slot(&build) {
                    build.discard_copy();
                    let stage = LoadStage::QueueConflict;
                    self.disabled(&file, Some(name), Some(version), stage, reason);
                    return;
                }
                match initialise(build, &self.fleet.config.isolation).await {
                    Ok(new) => {
                        self.fleet.start_plugin(&new).await;
                        self.now_serving(&new);
                        self.enabled_again(&file);
                        tracing::info!(
                            change = %"new",
                            plugin = %name,
                            old_version = %"-",
                            new_version = %new.info.version,
                            file = %file_name(&file),
                            "plugin change applied"
                        );
                        metrics::plugin_change(&name, "new", true);
                    }
                    Err((stage, reason)) => {
                        self.disabled(&file, Some(name), Some(version), stage, reason)
                    }
                }
            }
            Decision::Refuse {
                file,
                name,
                version,
                replacing,
                stage,
                reason,
                retry_on_removal,
            } => {
                if let Some(build) = builds.remove(&file) {
                    if retry_on_removal {
                        self.parked.insert(file.clone(), build);
                    } else {
                        build.discard_copy();
                    }
                }
                match replacing.and_then(|r| self.serving_named(&r)) {
                    Some(old) => self.refused_replacement(&old, &file, version, stage, reason),
                    None => self.disabled(&file, name, version, stage, reason),
                }
            }
            Decision::Forget { file } => self.enabled_again(&file),
        }
    }

    /// On Redis Cluster, every queue served must live in the one slot of the others (as checked at start).
    fn cluster_slot(&self, build: &Build) -> Result<(), String> {
        let config = &self.fleet.config;
        if !config.redis.is_cluster() {
            return Ok(());
        }
        let serving = self.serving_now();
        let queues: Vec<String> = serving
            .iter()
            .filter(|p| p.info.name != build.library.info().name)
            .flat_map(|p| p.info.queues.iter().map(|q| q.queue.clone()))
            .chain(build.library.info().queues.iter().map(|q| q.queue.clone()))
            .collect();
        crate::config::cluster::require_one_slot(&config.prefix, queues.iter().map(String::as_str))
            .map_err(|e| e.to_string())
    }

    /// Retires `old`'s queues, calls its `shutdown` and drops it from the serving set.
    async fn retire(&self, old: &Arc<ActivePlugin>) {
        self.fleet.retire_plugin(old).await;
        let plugin = Arc::clone(old);
        let call = tokio::task::spawn_blocking(move || plugin.shutdown(PLUGIN_SHUTDOWN_BUDGET));
        if tokio::time::timeout(PLUGIN_SHUTDOWN_BUDGET + Duration::from_millis(500), call)
            .await
            .is_err()
        {
            tracing::warn!(plugin = %old.info.name, version = %old.info.version,
                "the retired plugin's shutdown overran its budget; not waiting for it");
        }
        if let Ok(mut serving) = self.serving.lock() {
            serving.retain(|p| !Arc::ptr_eq(p, old));
        }
        if old.digest.is_some() {
            // Its image stays mapped; the file is no longer needed (no child will load it again).
            let _ = std::fs::remove_file(old.library.path());
        }
        metrics::plugin_serving(&old.info.name, &old.info.version, false);
        self.publish_counts();
    }
}

/// Configuration and `init` of a new build (in its isolation mode), on a blocking thread.
async fn initialise(
    build: Build,
    isolation: &IsolationSettings,
) -> Result<Arc<ActivePlugin>, (LoadStage, String)> {
    let isolation = isolation.clone();
    let started = tokio::task::spawn_blocking(move || {
        start_build(build, &crate::config::Env::from_process(), &isolation)
    })
    .await;
    match started {
        Ok(Ok(active)) => Ok(Arc::new(active)),
        Ok(Err(e)) => Err(e),
        Err(e) => Err((LoadStage::Init, format!("init crashed: {e}"))),
    }
}

/// The files the start-up load looked at (serving and disabled).
pub fn registry_files(registry: &Registry) -> BTreeSet<PathBuf> {
    registry
        .active
        .iter()
        .map(|p| p.source.clone())
        .chain(registry.disabled.iter().map(|d| d.path.clone()))
        .collect()
}
