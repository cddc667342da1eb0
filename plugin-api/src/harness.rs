//! Runs a built plugin library without Redis (feature `harness`), for plugin tests and
//! `frostguard-worker plugins run`.
//!
//! It loads the file through [`LoadedPlugin`], the same code path as the host, and records everything the
//! plugin reports: the outcome, progress updates, job log lines and forwarded log records.
//!
//! Each [`Harness::load`] works on a private copy of the library. A library opened twice from one path in one
//! process is the *same* image (same statics, already initialised), so the copy is what lets a test suite load
//! one plugin several times with different configurations.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::loader::{ForwardedLog, HostLogger, JobCallbacks, LoadError, LoadStage, LoadedPlugin};
use crate::types::{JobOpts, JobView, Outcome, PluginConfig, PluginInfo};

/// A job to run through the harness.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Queue name; must be one the plugin serves.
    pub queue: String,
    /// Job name.
    pub name: String,
    /// Job data.
    pub data: Value,
    /// Attempts already made (to exercise last-attempt behaviour).
    pub attempts_made: u32,
    /// Times the job was started, this run included. `None` means `attempts_made + 1`, a job that never
    /// stalled nor waited; set it higher to play a job that was started again without using an attempt
    /// (retry-later, a stalled job run again, a shutdown that put it back).
    pub attempts_started: Option<u32>,
    /// Job options (attempts, backoff, …).
    pub opts: JobOpts,
    /// Cancel the job after this long (the host's deadline), if set.
    pub timeout: Option<Duration>,
}

impl JobSpec {
    /// A first attempt of `name` on `queue` with `data` and default options.
    pub fn new(queue: &str, name: &str, data: Value) -> Self {
        Self {
            queue: queue.to_owned(),
            name: name.to_owned(),
            data,
            attempts_made: 0,
            attempts_started: None,
            opts: JobOpts::default(),
            timeout: None,
        }
    }
}

/// Everything one job produced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HarnessRun {
    /// The outcome the host would map onto BullMQ.
    pub outcome: Outcome,
    /// Progress values, in order.
    pub progress: Vec<Value>,
    /// Job log lines, in order.
    pub job_logs: Vec<String>,
    /// Log records the plugin emitted while the job ran.
    pub logs: Vec<ForwardedLog>,
}

/// A plugin loaded and initialised for testing.
pub struct Harness {
    plugin: LoadedPlugin,
    logs: Arc<LogRecorder>,
    next_id: AtomicU64,
    _copy: TempCopy,
}

impl Harness {
    /// Loads and initialises the plugin at `path` with `config`.
    pub fn load(path: &Path, config: PluginConfig) -> Result<Self, LoadError> {
        Self::load_with(path, |_| config)
    }

    /// Like [`Harness::load`], with the configuration built from the plugin's own description (its
    /// `config_keys`), as the host does.
    pub fn load_with(
        path: &Path,
        config: impl FnOnce(&PluginInfo) -> PluginConfig,
    ) -> Result<Self, LoadError> {
        let copy = TempCopy::new(path)?;
        let plugin = LoadedPlugin::load(&copy.path).map_err(|mut e| {
            e.path = path.to_owned();
            e
        })?;
        let logs = Arc::new(LogRecorder::default());
        let config = config(plugin.info());
        plugin
            .init(&config, logs.clone())
            .map_err(|reason| LoadError::new(path, LoadStage::Init, reason))?;
        Ok(Self {
            plugin,
            logs,
            next_id: AtomicU64::new(1),
            _copy: copy,
        })
    }

    /// What the plugin said about itself.
    pub fn info(&self) -> &PluginInfo {
        self.plugin.info()
    }

    /// Log records emitted outside any job so far (during init, for example), drained.
    pub fn take_logs(&self) -> Vec<ForwardedLog> {
        self.logs.take()
    }

    /// Runs one job to its outcome, as the host would (minus Redis). A job name the plugin does not accept on
    /// the job's queue fails unrecoverably, exactly as in the host.
    pub fn run(&self, spec: JobSpec) -> HarnessRun {
        let _ = self.take_logs();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let rejection = match self.info().queue(&spec.queue) {
            None => Some(format!("queue {} is not served by this plugin", spec.queue)),
            Some(p) if !p.accepts(&spec.name) => Some(p.rejection(&spec.name)),
            Some(_) => None,
        };
        let callbacks = Arc::new(JobRecorder::new(spec.timeout));
        let outcome = match rejection {
            Some(reason) => Outcome::unrecoverable(reason),
            None => {
                let data = RawValue::from_string(spec.data.to_string())
                    .expect("serde_json::Value always serialises to valid JSON");
                let job = JobView {
                    id: format!("harness-{id}"),
                    name: spec.name,
                    queue: spec.queue,
                    data,
                    attempts_made: spec.attempts_made,
                    attempts_started: spec.attempts_started.unwrap_or(spec.attempts_made + 1),
                    opts: spec.opts,
                    timestamp: now,
                    deadline_ms: spec.timeout.map(|t| now + t.as_millis() as u64),
                };
                let deadline = spec.timeout.map(|t| std::time::Instant::now() + t);
                self.plugin.run_to_end(&job, callbacks.clone(), deadline)
            }
        };
        let (progress, job_logs) = callbacks.take();
        HarnessRun {
            outcome,
            progress,
            job_logs,
            logs: self.take_logs(),
        }
    }

    /// Calls the plugin's shutdown with `deadline`.
    pub fn shutdown(&self, deadline: Duration) {
        self.plugin.shutdown(deadline);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Collects the log records a plugin forwards, for a caller that runs a plugin outside the host's runtime
/// (this harness, `frostguard-worker plugins run`).
#[derive(Default)]
pub struct LogRecorder {
    records: Mutex<Vec<ForwardedLog>>,
}

impl LogRecorder {
    /// The records collected so far, drained.
    pub fn take(&self) -> Vec<ForwardedLog> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl HostLogger for LogRecorder {
    fn log(&self, record: ForwardedLog) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
    }
}

/// Collects one job's progress updates and job log lines, and turns `is_cancelled` true once the job's time
/// budget has passed, for a caller that runs a plugin outside the host's runtime.
pub struct JobRecorder {
    progress: Mutex<Vec<Value>>,
    lines: Mutex<Vec<String>>,
    deadline: Option<std::time::Instant>,
    cancelled: AtomicBool,
}

impl JobRecorder {
    /// A recorder for a job that may run for `timeout` (no limit when `None`).
    pub fn new(timeout: Option<Duration>) -> Self {
        Self {
            progress: Mutex::default(),
            lines: Mutex::default(),
            deadline: timeout.map(|t| std::time::Instant::now() + t),
            cancelled: AtomicBool::new(false),
        }
    }

    /// The progress values and job log lines collected so far, drained.
    pub fn take(&self) -> (Vec<Value>, Vec<String>) {
        let p = std::mem::take(&mut *self.progress.lock().unwrap_or_else(|p| p.into_inner()));
        let l = std::mem::take(&mut *self.lines.lock().unwrap_or_else(|p| p.into_inner()));
        (p, l)
    }
}

impl JobCallbacks for JobRecorder {
    fn progress(&self, json: &str) {
        let value = serde_json::from_str(json).unwrap_or_else(|_| Value::String(json.to_owned()));
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(value);
    }

    fn log(&self, line: &str) {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line.to_owned());
    }

    fn is_cancelled(&self) -> bool {
        if self
            .deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
        {
            self.cancelled.store(true, Ordering::Relaxed);
        }
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// A private copy of a plugin file, deleted when the harness goes away (the mapping stays valid).
struct TempCopy {
    path: PathBuf,
}

impl TempCopy {
    fn new(original: &Path) -> Result<Self, LoadError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let file_name = original
            .file_name()
            .ok_or_else(|| LoadError::new(original, LoadStage::File, "path has no file name"))?;
        let dir = std::env::temp_dir().join(format!(
            "fg-harness-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| LoadError::new(original, LoadStage::File, format!("temp dir: {e}")))?;
        let path = dir.join(file_name);
        std::fs::copy(original, &path)
            .map_err(|e| LoadError::new(original, LoadStage::File, format!("cannot read: {e}")))?;
        Ok(Self { path })
    }
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Builds the `cdylib` of workspace package `package` with cargo (same profile as the calling test) and
/// returns the library's path.
///
/// `cargo test` does not build the `cdylib`s of other packages, so a plugin test calls this first; cargo's
/// own up-to-date check makes repeated calls cheap. Uses `$CARGO` when run under cargo.
pub fn build_plugin(package: &str) -> Result<PathBuf, String> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Mutex::default);
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = built.get(package) {
        return Ok(path.clone());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--message-format=json-render-diagnostics",
        "-p",
        package,
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo build -p {package} failed ({})", out.status));
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| {
            f.extension()
                .is_some_and(|e| e == std::env::consts::DLL_EXTENSION)
        })
        .ok_or_else(|| format!("cargo built no cdylib for package {package}"))?;
    built.insert(package.to_owned(), path.clone());
    Ok(path)
}
