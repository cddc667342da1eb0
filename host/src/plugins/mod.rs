//! The plugin registry: every library in the plugin directory, loaded one guarded step at a time.
//!
//! Stages per file: file checks → open → ABI/layout check → describe (all in [`LoadedPlugin::load`]) → queue
//! conflicts → configuration → init. A failure at any stage disables that plugin only, with one ERROR line
//! naming the file, the stage and the reason; its queues are simply not consumed, so their jobs wait in Redis
//! until a fixed plugin is deployed. Libraries are never unloaded.
//!
//! With hot reload on, every file is loaded from a private copy (`watch.rs`) and the same stages run again
//! at run time for each new build (`reload.rs` decides, `runtime/reloader/` applies).

mod log_bridge;
pub mod reload;
pub mod settings;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plugin_api::loader::{LoadError, LoadStage, LoadedPlugin};
use plugin_api::{PluginConfig, PluginInfo, QueueInfo};
use serde::Serialize;

pub use log_bridge::TracingLogger;

use crate::config::Env;
use crate::isolation::{Isolation, IsolationSettings, PluginProcess};

/// A plugin that loaded, passed every check and was initialised: its queues are served.
#[derive(Debug)]
pub struct ActivePlugin {
    /// The loaded library.
    pub library: LoadedPlugin,
    /// Its description (a copy of `library.info()`, kept for convenience).
    pub info: PluginInfo,
    /// In process isolation, the child that runs its jobs (`library` is then loaded and described in the
    /// host but never initialised); `None` when it runs in-process.
    pub process: Option<crate::isolation::PluginProcess>,
    /// The file in the plugin directory it came from (`library.path()` is its private copy under hot reload).
    pub source: PathBuf,
    /// SHA-256 of the build, when it was loaded from a private copy.
    pub digest: Option<String>,
    /// The job names it declares quick, run without a hand-off to a job thread while they stay quick.
    pub inline: crate::isolation::InlineJobs,
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

impl DisabledPlugin {
    /// The library's file name (two copies of one plugin differ only here).
    pub fn file(&self) -> String {
        reload::file_name(&self.path)
    }

    /// The plugin's name when known, else its file name.
    pub fn plugin(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.file())
    }
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

/// A plugin build that passed the load stages up to its description: not initialised, serving nothing.
#[derive(Debug)]
pub struct Build {
    /// The loaded library.
    pub library: LoadedPlugin,
    /// The file in the plugin directory.
    pub source: PathBuf,
    /// SHA-256 of the build, when loaded from a private copy.
    pub digest: Option<String>,
}

impl Build {
    /// Removes the build's private copy (when it has one): a build that will not serve, or serves no more.
    /// Its image stays mapped (never unloaded); only the file goes.
    pub fn discard_copy(&self) {
        if self.digest.is_some() {
            let _ = std::fs::remove_file(self.library.path());
        }
    }
}

/// A build that passed the checks up to configuration but has not been initialised.
struct Candidate {
    build: Build,
    config: PluginConfig,
}

/// Runs the load stages up to `describe` on `source`, from a private copy when `copies` is given. Errors
/// name `source`, not the copy. The copy stays on disk while the build may serve (a plugin's child process
/// loads it, and loads it again after a crash).
pub fn load_build(
    source: &Path,
    copies: Option<&watch::PrivateCopies>,
) -> Result<Build, LoadError> {
    let Some(copies) = copies else {
        return LoadedPlugin::load(source).map(|library| Build {
            library,
            source: source.to_owned(),
            digest: None,
        });
    };
    let copied = copies
        .copy(source)
        .map_err(|e| LoadError::new(source, LoadStage::File, format!("cannot copy: {e}")))?;
    match LoadedPlugin::load(&copied.path) {
        Ok(library) => Ok(Build {
            library,
            source: source.to_owned(),
            digest: Some(copied.digest),
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&copied.path);
            Err(LoadError {
                path: source.to_owned(),
                ..e
            })
        }
    }
}

/// Resolves the configuration of `build` and starts it in its isolation mode: the last two load stages.
/// Blocks while the plugin's `init` runs. A build that fails has its private copy removed.
pub fn start_build(
    build: Build,
    env: &Env,
    isolation: &IsolationSettings,
) -> Result<ActivePlugin, (LoadStage, String)> {
    let info = build.library.info().clone();
    let config = match settings::resolve(&info, env) {
        Ok(c) => c,
        Err(reason) => {
            build.discard_copy();
            return Err((LoadStage::Config, reason));
        }
    };
    init_build(build, config, isolation).map_err(|r| (LoadStage::Init, r))
}

/// Starts `build` in its isolation mode (in process mode `init` runs in the plugin's child).
fn init_build(
    build: Build,
    config: PluginConfig,
    isolation: &IsolationSettings,
) -> Result<ActivePlugin, String> {
    let library = &build.library;
    let logger = Arc::new(TracingLogger::new(&library.info().name));
    let mode = isolation.for_plugin(&library.info().name);
    let started = match mode {
        Isolation::InProcess => library.init(&config, logger).map(|()| None),
        Isolation::Process => {
            PluginProcess::start(library.path(), &library.info().name, config, logger).map(Some)
        }
    };
    let process = match started {
        Ok(process) => process,
        Err(reason) => {
            build.discard_copy();
            return Err(reason);
        }
    };
    let Build {
        library,
        source,
        digest,
    } = build;
    let info = library.info().clone();
    tracing::info!(
        plugin = %info.name,
        version = %info.version,
        file = %source.display(),
        queues = %queue_list(&info),
        isolation = %mode,
        "plugin loaded"
    );
    Ok(ActivePlugin {
        library,
        inline: crate::isolation::InlineJobs::of(&info),
        info,
        process,
        source,
        digest,
    })
}

impl Registry {
    /// Loads and initialises every plugin in `dir`, each in its isolation mode (in process mode `init` runs
    /// in the plugin's child). Never fails as a whole: see [`Registry::disabled`].
    pub fn load_dir(dir: &Path, env: &Env, isolation: &IsolationSettings) -> Registry {
        Self::load_dir_with(dir, env, isolation, None)
    }

    /// [`Registry::load_dir`], loading each file from a private copy when `copies` is given (hot reload).
    pub fn load_dir_with(
        dir: &Path,
        env: &Env,
        isolation: &IsolationSettings,
        copies: Option<&watch::PrivateCopies>,
    ) -> Registry {
        let (candidates, mut registry) = discover(dir, env, copies);
        for Candidate { build, config } in candidates {
            let name = build.library.info().name.clone();
            let source = build.source.clone();
            match init_build(build, config, isolation) {
                Ok(active) => registry.active.push(Arc::new(active)),
                Err(reason) => registry.disable(&source, LoadStage::Init, reason, Some(name)),
            }
        }
        registry
    }

    /// Runs every stage except `init` (no plugin code beyond `describe`): what `frostguard-worker plugins`
    /// shows. Plugins that pass are listed in `active` but must not be given jobs.
    pub fn inspect_dir(dir: &Path, env: &Env) -> Registry {
        let (candidates, mut registry) = discover(dir, env, None);
        registry.active = candidates
            .into_iter()
            .map(|c| {
                let info = c.build.library.info().clone();
                Arc::new(ActivePlugin {
                    library: c.build.library,
                    inline: crate::isolation::InlineJobs::of(&info),
                    info,
                    process: None,
                    source: c.build.source,
                    digest: c.build.digest,
                })
            })
            .collect();
        registry
    }

    /// Every queue served, with the plugin serving it.
    pub fn queues(&self) -> Vec<(Arc<ActivePlugin>, QueueInfo)> {
        self.active
            .iter()
            .flat_map(|p| {
                p.info
                    .queues
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
    info.queues
        .iter()
        .map(|p| p.queue.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The plugin files of `dir`, sorted so that conflicts are decided the same way on every start.
fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    plugin_files_with(dir, true)
}

/// [`plugin_files`] without the warning about hidden files (the reloader rescans often).
fn plugin_files_quiet(dir: &Path) -> Result<Vec<PathBuf>, String> {
    plugin_files_with(dir, false)
}

fn plugin_files_with(dir: &Path, warn_hidden: bool) -> Result<Vec<PathBuf>, String> {
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
            FileKind::Hidden if !warn_hidden => {}
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
fn discover(
    dir: &Path,
    env: &Env,
    copies: Option<&watch::PrivateCopies>,
) -> (Vec<Candidate>, Registry) {
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
        let build = match load_build(&path, copies) {
            Ok(b) => b,
            Err(e) => {
                registry.disable(&e.path, e.stage, e.reason, None);
                continue;
            }
        };
        let info = build.library.info().clone();
        let refuse = |build: &Build| build.discard_copy();
        if let Some(first) = names.get(&info.name) {
            let reason = format!(
                "another plugin named {} is already loaded from {}",
                info.name,
                first.display()
            );
            refuse(&build);
            registry.disable(&path, LoadStage::QueueConflict, reason, Some(info.name));
            continue;
        }
        let taken = info.queues.iter().find_map(|p| {
            queue_owner
                .get(&p.queue)
                .map(|owner| (p.queue.clone(), owner.clone()))
        });
        if let Some((queue, (owner, owner_path))) = taken {
            let reason = format!(
                "queue {queue} is already served by plugin {owner} ({})",
                owner_path.display()
            );
            refuse(&build);
            registry.disable(&path, LoadStage::QueueConflict, reason, Some(info.name));
            continue;
        }
        let config = match settings::resolve(&info, env) {
            Ok(c) => c,
            Err(reason) => {
                refuse(&build);
                registry.disable(&path, LoadStage::Config, reason, Some(info.name));
                continue;
            }
        };
        names.insert(info.name.clone(), path.clone());
        for p in &info.queues {
            queue_owner.insert(p.queue.clone(), (info.name.clone(), path.clone()));
        }
        candidates.push(Candidate { build, config });
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
