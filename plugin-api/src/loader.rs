//! The loading side of the ABI (feature `loader`): opens one plugin library, checks it, and calls it safely.
//!
//! The host's directory loader and the [`crate::harness`] both go through [`LoadedPlugin`], so a plugin that
//! passes the harness loads in the host the same way. Each file is opened with its own `LibHeader` and root
//! module: abi_stable's `RootModule::load_from*` helpers cache one module per interface type per process and
//! could not hold a directory of plugins. Libraries are never unloaded (plugin threads and thread-locals may
//! outlive any call, so `dlclose` would be unsound).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::library::lib_header_from_path;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString};
use serde::{Deserialize, Serialize};

use crate::abi::{
    DirectModule, HostServices, HostServices_TO, JobCompletion, JobCompletion_TO, JobRef,
    JobServices, JobServices_TO, PendingModule, PluginModuleRef, DIRECT_SYMBOL, PENDING_SYMBOL,
};
use crate::entry_symbol;
pub use crate::log_level::LogLevel;
use crate::types::{JobView, Outcome, PluginConfig, PluginInfo};

mod rejection;
mod text;
use rejection::{check_file, describe, library_error};
pub use rejection::{LoadError, LoadStage};
pub use text::OutcomeJson;

/// One log record emitted inside a plugin (also sent over the wire by a plugin process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedLog {
    /// Severity.
    pub level: LogLevel,
    /// The `tracing` target (module path) inside the plugin.
    pub target: String,
    /// The message.
    pub message: String,
    /// The event's other fields, as text.
    pub fields: Vec<(String, String)>,
}

/// Where a plugin's log records go (the host's subscriber, or the harness's recorder).
pub trait HostLogger: Send + Sync {
    /// Handles one record.
    fn log(&self, record: ForwardedLog);
    /// The most verbose level worth sending.
    fn max_level(&self) -> LogLevel {
        LogLevel::Trace
    }
}

/// What a running job can call back into (progress, job log, cancellation).
pub trait JobCallbacks: Send + Sync {
    /// `json` is the progress value as JSON text.
    fn progress(&self, json: &str);
    /// One line for the job's log.
    fn log(&self, line: &str);
    /// Whether the job should stop.
    fn is_cancelled(&self) -> bool;
}

/// A plugin library that passed the ABI checks and described itself.
pub struct LoadedPlugin {
    path: PathBuf,
    module: PluginModuleRef,
    info: PluginInfo,
    /// 0 = not initialised, 1 = initialised; guards `process` against a plugin that never started.
    state: AtomicU8,
    /// Its pending-job entry point, when it was built with one.
    pending: Option<PendingModule>,
    /// Its entry points that take a job as a [`JobRef`], when it was built with them.
    direct: Option<DirectModule>,
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish()
    }
}

impl LoadedPlugin {
    /// Opens `path`, checks its ABI and layout, and asks it to describe itself. Calls no other plugin code.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        check_file(path)?;
        let header = lib_header_from_path(path).map_err(|e| library_error(path, e))?;
        let module = header
            .init_root_module::<PluginModuleRef>()
            .map_err(|e| library_error(path, e))?;
        let info = describe(path, module)?;
        let abi_refusal = |reason| LoadError::new(path, LoadStage::Abi, reason);
        let pending = entry_symbol::find(path, PENDING_SYMBOL, "pending-job interface")
            .map_err(abi_refusal)?;
        let direct =
            entry_symbol::find(path, DIRECT_SYMBOL, "direct job interface").map_err(abi_refusal)?;
        Ok(Self {
            path: path.to_owned(),
            module,
            info,
            state: AtomicU8::new(0),
            pending,
            direct,
        })
    }

    /// The library file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the plugin said about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Starts the plugin. Its `tracing` output is forwarded to `logger` from now on.
    pub fn init(&self, config: &PluginConfig, logger: Arc<dyn HostLogger>) -> Result<(), String> {
        let config_json =
            serde_json::to_string(config).map_err(|e| format!("configuration: {e}"))?;
        let max = logger.max_level().code();
        let services = HostServices_TO::from_value(HostServicesImpl { logger, max }, TD_Opaque);
        match (self.module.init())(services, RStr::from_str(&config_json)) {
            RResult::ROk(()) => {
                self.state.store(1, Ordering::Release);
                Ok(())
            }
            RResult::RErr(reason) => Err(reason.into_string()),
        }
    }

    /// Runs one job to its outcome. Blocks for as long as the plugin works: call it from a blocking thread.
    /// Never panics; a plugin fault becomes a retryable failure. (A caller holding the job as JSON already
    /// and passing the outcome on as JSON calls [`Self::process_json`] instead.)
    pub fn process(&self, job: &JobView, callbacks: Arc<dyn JobCallbacks>) -> Outcome {
        match self.call_with(job, callbacks) {
            Ok(raw) => serde_json::from_str(raw.as_str())
                .unwrap_or_else(|e| Outcome::failed(self.malformed_outcome(&e))),
            Err(refusal) => refusal,
        }
    }

    /// Whether the plugin takes jobs lent as a [`JobRef`] (built with those entry points), so that a caller
    /// holding a job's JSON does better to parse it into a [`JobView`] than to hand the text on.
    pub fn lends_jobs(&self) -> bool {
        self.direct.is_some()
    }

    /// Calls the plugin's `process` for `job`, lent when the plugin takes jobs lent and written as JSON
    /// otherwise: the outcome's JSON text as the plugin returned it, or the failure that kept the call from
    /// being made.
    fn call_with(
        &self,
        job: &JobView,
        callbacks: Arc<dyn JobCallbacks>,
    ) -> Result<RString, Outcome> {
        if !self.is_initialised() {
            return Err(Outcome::failed(self.not_initialised()));
        }
        let Some(direct) = self.direct else {
            let json = job_json(job).map_err(|e| Outcome::failed(not_encoded(job, &e)))?;
            return Ok(self.call_process(&json, callbacks));
        };
        let lent = lent(job).map_err(|e| Outcome::failed(not_encoded(job, &e)))?;
        let services = JobServices_TO::from_value(JobServicesImpl(callbacks), TD_Opaque);
        Ok((direct.process)(lent.job_ref(), services))
    }

    /// The plugin's `process` entry point itself: the outcome's JSON text as the plugin returned it.
    fn call_process(&self, job_json: &str, callbacks: Arc<dyn JobCallbacks>) -> RString {
        let services = JobServices_TO::from_value(JobServicesImpl(callbacks), TD_Opaque);
        (self.module.process())(RStr::from_str(job_json), services)
    }

    fn is_initialised(&self) -> bool {
        self.state.load(Ordering::Acquire) == 1
    }

    fn not_initialised(&self) -> String {
        format!("plugin {} is not initialised", self.info.name)
    }

    /// The failure of a job whose plugin returned text that is not an [`Outcome`] (retryable: the plugin may
    /// be fixed and the job run again).
    fn malformed_outcome(&self, error: &serde_json::Error) -> String {
        format!(
            "plugin {} returned a malformed outcome ({error})",
            self.info.name
        )
    }

    /// Whether the plugin can complete jobs later ([`Self::start`]): built against an interface that has it.
    pub fn supports_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether a job `name` of `queue` is started with [`Self::start`] rather than run with
    /// [`Self::process`]: the plugin declares it pending and has the entry point.
    pub fn is_pending(&self, queue: &str, name: &str) -> bool {
        self.supports_pending()
            && self
                .info
                .queue(queue)
                .is_some_and(|q| q.pending_jobs.iter().any(|n| n == name) && q.accepts(name))
    }

    /// Starts one pending job and returns as soon as the plugin has taken it (the plugin's `start` must not
    /// block). `done` is called exactly once, from whichever thread completes the job (possibly this one,
    /// before `start` returns): with the plugin's outcome, or with a retryable failure when the plugin
    /// dropped the job without one, could not be called, or sent a malformed outcome. Never panics.
    pub fn start(&self, job: &JobView, callbacks: Arc<dyn JobCallbacks>, done: Done) {
        let Some(direct) = self.direct.filter(|_| self.is_initialised()) else {
            // Built before jobs were lent, or not started (`start_json` says so).
            match job_json(job) {
                Ok(json) => self.start_json(&json, callbacks, done),
                Err(e) => done(Outcome::failed(not_encoded(job, &e))),
            }
            return;
        };
        match lent(job) {
            Ok(lent) => {
                let services = JobServices_TO::from_value(JobServicesImpl(callbacks), TD_Opaque);
                let done = JobCompletion_TO::from_value(self.completion(done), TD_Opaque);
                (direct.start)(lent.job_ref(), services, done);
            }
            Err(e) => done(Outcome::failed(not_encoded(job, &e))),
        }
    }

    /// [`Self::start`] for a job given as JSON of [`JobView`] (the plugin process holds it as it arrived).
    pub fn start_json(&self, job_json: &str, callbacks: Arc<dyn JobCallbacks>, done: Done) {
        let completion = self.completion(done);
        if !self.is_initialised() {
            completion.finish(Outcome::failed(self.not_initialised()));
            return;
        }
        let Some(PendingModule { start }) = self.pending else {
            let reason = format!("plugin {} cannot complete jobs later", self.info.name);
            completion.finish(Outcome::failed(reason));
            return;
        };
        let services = JobServices_TO::from_value(JobServicesImpl(callbacks), TD_Opaque);
        let done = JobCompletion_TO::from_value(completion, TD_Opaque);
        start(RStr::from_str(job_json), services, done);
    }

    /// Where a pending job's outcome goes: to `done`, once.
    fn completion(&self, done: Done) -> CompletionImpl {
        CompletionImpl {
            plugin: self.info.name.clone(),
            done: Mutex::new(Some(done)),
        }
    }

    /// Runs one job to its outcome on this thread whichever way the plugin takes it: `process`, or `start`
    /// and a wait for the completion, given up [`PENDING_GRACE`] after `deadline` (a plugin that never
    /// completes a job must not hold its caller forever). Blocks: for callers without an async runtime (the
    /// harness, `plugins run`).
    pub fn run_to_end(
        &self,
        job: &JobView,
        callbacks: Arc<dyn JobCallbacks>,
        deadline: Option<Instant>,
    ) -> Outcome {
        if !self.is_pending(&job.queue, &job.name) {
            return self.process(job, callbacks);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.start(
            job,
            callbacks,
            Box::new(move |outcome| drop(tx.send(outcome))),
        );
        let outcome = match deadline {
            Some(d) => rx
                .recv_timeout((d + PENDING_GRACE).saturating_duration_since(Instant::now()))
                .ok(),
            None => rx.recv().ok(),
        };
        outcome.unwrap_or_else(|| Outcome::failed(not_completed(&self.info.name)))
    }

    /// Asks the plugin to stop within `deadline`. Blocks: call it from a blocking thread.
    pub fn shutdown(&self, deadline: Duration) {
        if self.state.swap(0, Ordering::AcqRel) == 1 {
            let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
            (self.module.shutdown())(ms);
        }
    }
}

pub use crate::plugin::PENDING_GRACE;

/// Room for a job's JSON besides its data and strings: the field names and numbers (about 190 bytes for a
/// job without options, 310 with every number at its largest and a backoff setting with jitter).
const JOB_JSON_ROOM: usize = 384;

/// The JSON of `job` as it crosses the boundary, written into a buffer sized for it from the start rather
/// than one grown (and copied) from serde_json's default of 128 bytes as the text comes.
fn job_json(job: &JobView) -> serde_json::Result<String> {
    let size =
        JOB_JSON_ROOM + job.id.len() + job.name.len() + job.queue.len() + job.data.get().len();
    let mut json = Vec::with_capacity(size);
    serde_json::to_writer(&mut json, job)?;
    String::from_utf8(json).map_err(serde::ser::Error::custom)
}

/// A job ready to be lent as a [`JobRef`]: the view, and its backoff setting written as JSON (rare).
struct Lent<'a> {
    job: &'a JobView,
    backoff_json: Option<String>,
}

impl Lent<'_> {
    fn job_ref(&self) -> JobRef<'_> {
        let job = self.job;
        JobRef {
            id: RStr::from_str(&job.id),
            name: RStr::from_str(&job.name),
            queue: RStr::from_str(&job.queue),
            data_json: RStr::from_str(job.data.get()),
            attempts_made: job.attempts_made,
            attempts_started: job.attempts_started,
            attempts: job.opts.attempts,
            backoff_json: RStr::from_str(self.backoff_json.as_deref().unwrap_or("")),
            delay: job.opts.delay.into(),
            priority: job.opts.priority.into(),
            timestamp: job.timestamp,
            deadline_ms: job.deadline_ms.into(),
        }
    }
}

/// The failure of a job the host could not hand to its plugin.
fn not_encoded(job: &JobView, error: &serde_json::Error) -> String {
    format!("job {} could not be encoded: {error}", job.id)
}

/// `job` ready to be lent; an error only when its backoff setting cannot be written as JSON.
fn lent(job: &JobView) -> serde_json::Result<Lent<'_>> {
    let backoff_json = job
        .opts
        .backoff
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    Ok(Lent { job, backoff_json })
}

/// The failure of a pending job its plugin did not complete by its deadline and [`PENDING_GRACE`].
pub fn not_completed(plugin: &str) -> String {
    format!(
        "plugin {plugin} did not complete the pending job within {} ms after its deadline",
        PENDING_GRACE.as_millis()
    )
}

struct HostServicesImpl {
    logger: Arc<dyn HostLogger>,
    max: u8,
}

impl HostServices for HostServicesImpl {
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>, fields: RStr<'_>) {
        let fields: Vec<(String, String)> =
            serde_json::from_str::<std::collections::BTreeMap<String, String>>(fields.as_str())
                .map(|m| m.into_iter().collect())
                .unwrap_or_default();
        self.logger.log(ForwardedLog {
            level: LogLevel::from_code(level),
            target: target.as_str().to_owned(),
            message: message.as_str().to_owned(),
            fields,
        });
    }

    fn max_level(&self) -> u8 {
        self.max
    }
}

/// What receives a pending job's outcome (see [`LoadedPlugin::start`]).
pub type Done = Box<dyn FnOnce(Outcome) + Send>;

/// The host's end of a pending job: the first outcome goes to `done`, later ones are refused; dropped
/// without one (every handle of the plugin gone), it fails the job so nothing waits for it forever.
struct CompletionImpl {
    plugin: String,
    done: Mutex<Option<Done>>,
}

impl CompletionImpl {
    /// Hands `outcome` on unless an outcome already was; returns whether it did.
    fn finish(&self, outcome: Outcome) -> bool {
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        match done {
            Some(done) => {
                done(outcome);
                true
            }
            None => false,
        }
    }
}

impl JobCompletion for CompletionImpl {
    fn complete(&self, outcome_json: RStr<'_>) -> bool {
        if self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return false;
        }
        let outcome = serde_json::from_str(outcome_json.as_str()).unwrap_or_else(|e| {
            Outcome::failed(format!(
                "plugin {} completed a job with a malformed outcome ({e})",
                self.plugin
            ))
        });
        self.finish(outcome)
    }
}

impl Drop for CompletionImpl {
    fn drop(&mut self) {
        let reason = format!(
            "plugin {} dropped a pending job without an outcome",
            self.plugin
        );
        self.finish(Outcome::failed(reason));
    }
}

struct JobServicesImpl(Arc<dyn JobCallbacks>);

impl JobServices for JobServicesImpl {
    fn progress(&self, json: RStr<'_>) {
        self.0.progress(json.as_str());
    }

    fn log_line(&self, line: RStr<'_>) {
        self.0.log(line.as_str());
    }

    fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job's JSON is what serde_json writes for it, into a buffer that did not have to grow, for a job
    /// with every option set and for one with large data.
    #[test]
    fn job_json_is_serde_json_in_a_buffer_sized_up_front() {
        use serde_json::json;
        let view = |data: String| JobView {
            id: "1844674407370955161".into(),
            name: "email:digest".into(),
            queue: "email-digests".into(),
            data: serde_json::value::RawValue::from_string(data).unwrap(),
            attempts_made: u32::MAX,
            attempts_started: u32::MAX,
            opts: crate::types::JobOpts {
                attempts: u32::MAX,
                backoff: Some(json!({"type": "exponential", "delay": 2000, "jitter": 0.5})),
                delay: Some(u64::MAX),
                priority: Some(u64::MAX),
            },
            timestamp: u64::MAX,
            deadline_ms: Some(u64::MAX),
        };
        for data in [
            r#"{"to":"+15550100"}"#.to_owned(),
            format!(r#"["{}"]"#, "x".repeat(20_000)),
        ] {
            let job = view(data);
            let json = job_json(&job).unwrap();
            assert_eq!(json, serde_json::to_string(&job).unwrap());
            let sized = JOB_JSON_ROOM + 19 + 12 + 13 + job.data.get().len();
            assert_eq!(
                json.capacity(),
                sized,
                "the buffer grew: {} bytes",
                json.len()
            );
        }
    }

    #[test]
    fn non_elf_file_is_rejected_at_file_stage() {
        let dir = std::env::temp_dir().join(format!("fg-plugin-api-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("libnot.so");
        std::fs::write(&f, b"hello, not a library").unwrap();
        let err = LoadedPlugin::load(&f).unwrap_err();
        assert_eq!(err.stage, LoadStage::File);
        assert!(err.to_string().contains("libnot.so"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
