//! The plugin registry: every library in the plugin directory, loaded one guarded step at a time.
//!
//! Stages per file: file checks → open → ABI/layout check → describe (all in [`LoadedPlugin::load`]) → queue
//! conflicts → configuration → init. A failure at any stage disables that plugin only, with one ERROR line
//! naming the file, the stage and the reason; its queues are simply not consumed, so their jobs wait in Redis
//! until a fixed plugin is deployed. Libraries are never unloaded.

mod log_bridge;
pub mod settings;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plugin_api::host::{LoadStage, LoadedPlugin};
use plugin_api::{PluginConfig, PluginInfo, ProcessorInfo};
use serde::Serialize;

pub use log_bridge::TracingLogger;

use crate::isolation::{Isolation, IsolationSettings, PluginProcess};

/// Environment lookup, `std::env::var` in production; injectable for tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Result<String, std::env::VarError>;

/// A plugin that loaded, passed every check and was initialised: its queues are served.
#[derive(Debug)]
pub struct ActivePlugin {
    /// The loaded library.
    pub plugin: LoadedPlugin,
    /// Its description (a copy of `plugin.info()`, kept for convenience).
    pub info: PluginInfo,
    /// In process isolation, the child that runs its jobs (`plugin` is then loaded and described in the
    /// host but never initialised); `None` when it runs in-process.
    pub process: Option<crate::isolation::PluginProcess>,
}

/// A plugin file that will not be used, and why.
#[derive(Debug, Clone, Serialize)]
pub struct DisabledPlugin {
    /// The library file.
    pub path: PathBuf,
    /// The stage that rejected it.
    pub stage: LoadStage,
    /// A one-line reason.
    pub reason: String,
    /// Its name, when it got far enough to describe itself.
    pub name: Option<String>,
}

/// All plugins found in a directory.
#[derive(Debug, Default)]
pub struct Registry {
    /// Plugins whose queues are served.
    pub active: Vec<Arc<ActivePlugin>>,
    /// Plugins that were rejected.
    pub disabled: Vec<DisabledPlugin>,
    /// Set when the directory itself could not be read.
    pub dir_error: Option<String>,
}

/// A plugin that passed the checks up to configuration but has not been initialised.
struct Candidate {
    plugin: LoadedPlugin,
    config: PluginConfig,
}

impl Registry {
    /// Loads and initialises every plugin in `dir`, each in its isolation mode (in process mode `init` runs
    /// in the plugin's child). Never fails as a whole: see [`Registry::disabled`].
    pub fn load_dir(dir: &Path, env: EnvLookup<'_>, isolation: &IsolationSettings) -> Registry {
        let (candidates, mut registry) = discover(dir, env);
        for Candidate { plugin, config } in candidates {
            let logger = Arc::new(TracingLogger::new(&plugin.info().name));
            let mode = isolation.for_plugin(&plugin.info().name);
            let started = match mode {
                Isolation::InProcess => plugin.init(&config, logger).map(|()| None),
                Isolation::Process => {
                    PluginProcess::start(plugin.path(), &plugin.info().name, config, logger)
                        .map(Some)
                }
            };
            match started {
                Ok(process) => {
                    let info = plugin.info().clone();
                    tracing::info!(
                        plugin = %info.name,
                        version = %info.version,
                        file = %plugin.path().display(),
                        queues = %queue_list(&info),
                        isolation = %mode,
                        "plugin loaded"
                    );
                    registry.active.push(Arc::new(ActivePlugin {
                        plugin,
                        info,
                        process,
                    }));
                }
                Err(reason) => registry.disable(
                    plugin.path(),
                    LoadStage::Init,
                    reason,
                    Some(plugin.info().name.clone()),
                ),
            }
        }
        registry
    }

    /// Runs every stage except `init` (no plugin code beyond `describe`): what `frostguard-worker plugins`
    /// shows. Plugins that pass are listed in `active` but must not be given jobs.
    pub fn inspect_dir(dir: &Path, env: EnvLookup<'_>) -> Registry {
        let (candidates, mut registry) = discover(dir, env);
        registry.active = candidates
            .into_iter()
            .map(|c| {
                let info = c.plugin.info().clone();
                Arc::new(ActivePlugin {
                    plugin: c.plugin,
                    info,
                    process: None,
                })
            })
            .collect();
        registry
    }

    /// Every queue served, with the plugin serving it.
    pub fn processors(&self) -> Vec<(Arc<ActivePlugin>, ProcessorInfo)> {
        self.active
            .iter()
            .flat_map(|p| {
                p.info
                    .processors
                    .iter()
                    .map(move |proc| (p.clone(), proc.clone()))
            })
            .collect()
    }

    fn disable(&mut self, path: &Path, stage: LoadStage, reason: String, name: Option<String>) {
        tracing::error!(
            file = %path.display(),
            %stage,
            plugin = name.as_deref().unwrap_or("-"),
            "plugin disabled: {reason}"
        );
        self.disabled.push(DisabledPlugin {
            path: path.to_owned(),
            stage,
            reason,
            name,
        });
    }
}

fn queue_list(info: &PluginInfo) -> String {
    info.processors
        .iter()
        .map(|p| p.queue.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The plugin files of `dir`, sorted so that conflicts are decided the same way on every start.
fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read plugin directory {}: {e}", dir.display()))?;
    let suffix = std::env::consts::DLL_SUFFIX;
    let mut files: Vec<PathBuf> = Vec::new();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        match candidate(&name, suffix) {
            FileKind::Plugin => files.push(path),
            FileKind::Hidden => tracing::warn!(
                file = %path.display(),
                "skipping a hidden file in the plugin directory (names starting with '.' are never loaded)"
            ),
            FileKind::Other => {}
        }
    }
    files.sort();
    Ok(files)
}

/// What a directory entry is to the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// A `*.so` to load.
    Plugin,
    /// Looks like a library but is hidden (`.so`, `.old.so`): skipped, with a warning.
    Hidden,
    /// Not a library: ignored silently (READMEs, checksums, sub-directories' names).
    Other,
}

fn candidate(name: &str, suffix: &str) -> FileKind {
    if !name.ends_with(suffix) {
        FileKind::Other
    } else if name.starts_with('.') {
        FileKind::Hidden
    } else {
        FileKind::Plugin
    }
}

/// Runs the stages up to configuration for every file of `dir`.
fn discover(dir: &Path, env: EnvLookup<'_>) -> (Vec<Candidate>, Registry) {
    let mut registry = Registry::default();
    let files = match plugin_files(dir) {
        Ok(files) => files,
        Err(e) => {
            tracing::error!("{e}");
            registry.dir_error = Some(e);
            return (Vec::new(), registry);
        }
    };
    let mut candidates: Vec<Candidate> = Vec::new();
    // queue or plugin name → file of the plugin that claimed it first
    let mut queue_owner: HashMap<String, (String, PathBuf)> = HashMap::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for path in files {
        let plugin = match LoadedPlugin::load(&path) {
            Ok(p) => p,
            Err(e) => {
                registry.disable(&e.path, e.stage, e.reason, None);
                continue;
            }
        };
        let info = plugin.info().clone();
        if let Some(first) = names.get(&info.name) {
            let reason = format!(
                "another plugin named {} is already loaded from {}",
                info.name,
                first.display()
            );
            registry.disable(&path, LoadStage::QueueConflict, reason, Some(info.name));
            continue;
        }
        let taken = info.processors.iter().find_map(|p| {
            queue_owner
                .get(&p.queue)
                .map(|owner| (p.queue.clone(), owner.clone()))
        });
        if let Some((queue, (owner, owner_path))) = taken {
            let reason = format!(
                "queue {queue} is already served by plugin {owner} ({})",
                owner_path.display()
            );
            registry.disable(&path, LoadStage::QueueConflict, reason, Some(info.name));
            continue;
        }
        let config = match settings::resolve(&info, env) {
            Ok(c) => c,
            Err(reason) => {
                registry.disable(&path, LoadStage::Config, reason, Some(info.name));
                continue;
            }
        };
        names.insert(info.name.clone(), path.clone());
        for p in &info.processors {
            queue_owner.insert(p.queue.clone(), (info.name.clone(), path.clone()));
        }
        candidates.push(Candidate { plugin, config });
    }
    (candidates, registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_directory_entries_are_plugins() {
        let table = [
            ("libfg_sms.so", FileKind::Plugin),
            ("a.so", FileKind::Plugin),
            (".so", FileKind::Hidden),
            (".libfg_sms.so", FileKind::Hidden),
            ("README.md", FileKind::Other),
            ("libfg_sms.so.sha256", FileKind::Other),
            (".hidden", FileKind::Other),
        ];
        for (name, want) in table {
            assert_eq!(candidate(name, ".so"), want, "{name}");
        }
    }
}
