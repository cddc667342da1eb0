//! Crash isolation: where plugin code runs, and what happens when it takes its process down.
//!
//! - [`settings`]: the mode of each plugin (`PLUGIN_ISOLATION`, `PLUGIN_ISOLATION_<NAME>`).
//! - process mode: [`process`] supervises one child per plugin (the host's own binary, subcommand
//!   `plugin-process`, whose side is [`child`]) speaking [`protocol`]; a dead child fails the jobs it held
//!   retryably and is restarted with backoff.
//! - in-process mode: [`journal`] records each job entering plugin code in `STATE_DIR`; [`orphans`] settles
//!   the journals of dead runs at the next start.
//! - both: [`inline`] runs the job names a plugin declares quick on the thread that received them;
//!   [`crashnote`] writes which job's thread crashed and with which signal; [`cause`] turns endings
//!   into reasons; a job that crashed its process `JOB_CRASH_LIMIT` times fails for good.

// A signal stack mapped and installed by hand (`mmap`, `mprotect`, `sigaltstack`): libc only, each block with
// its `SAFETY:` reason.
#[allow(unsafe_code)]
mod altstack;
pub mod cause;
// The plugin process takes its protocol descriptors over from stdin/stdout and ignores SIGINT/SIGTERM: raw
// descriptor and signal calls, each block with its `SAFETY:` reason.
#[allow(unsafe_code)]
pub mod child;
// Signal handlers that must stay async-signal-safe (no allocation, raw `write`): libc only.
#[allow(unsafe_code)]
pub mod crashnote;
pub mod inline;
pub mod journal;
pub mod orphans;
// Spawning a plugin process hands it the crash-note pipe on a fixed descriptor (`pipe2`, `dup2` between fork
// and exec), and a child that ignores shutdown is killed by pid: raw libc calls, each block with its
// `SAFETY:` reason.
#[allow(unsafe_code)]
pub mod process;
pub mod protocol;
pub mod settings;
// The calling thread's CPU time (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`) and, where the kernel keeps no
// schedstat, its voluntary context switches (`getrusage(RUSAGE_THREAD)`): two libc calls with their
// `SAFETY:` reason.
#[allow(unsafe_code)]
mod thread_cost;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use plugin_api::loader::JobCallbacks;
use plugin_api::{JobView, Outcome};

pub use inline::InlineJobs;
pub use process::{ChildJob, Crash, PluginProcess, Reply};
pub use settings::{Isolation, IsolationSettings};

use crate::plugins::ActivePlugin;

/// This run's crash journal (in-process mode), once opened.
static JOURNAL: OnceLock<journal::Journal> = OnceLock::new();

/// Opens this run's crash journal in `dir` and installs the crash-note handlers writing to it. Without a
/// usable directory the host still runs (with a warning): a crash is then still named on stderr, but the
/// next start cannot tell which job caused it.
pub fn open_journal(dir: &Path, identity: &str) -> Option<&'static journal::Journal> {
    match journal::Journal::create(dir, identity) {
        Ok(j) => {
            let j = JOURNAL.get_or_init(|| j);
            crashnote::install(crashnote::Sink::FileStart(j.note_fd()));
            Some(j)
        }
        Err(e) => {
            tracing::warn!(
                state_dir = %dir.display(), error = %e,
                "cannot open the crash journal; a job that crashes the worker in-process cannot be recognised \
                 after the restart (set STATE_DIR to a writable directory)"
            );
            crashnote::install(crashnote::Sink::StderrOnly);
            None
        }
    }
}

impl ActivePlugin {
    /// Runs one job through the plugin in its isolation mode. Blocks: call it from a blocking thread.
    pub fn run(&self, job: &JobView, callbacks: Arc<dyn JobCallbacks>) -> Reply {
        if let Some(child) = &self.process {
            let pending = self.is_pending(&job.queue, &job.name);
            return child.process(job, callbacks, pending);
        }
        Reply::Outcome(self.in_process(job, callbacks, false))
    }

    /// Runs `job` in this process (journal entry and crash note around the plugin's call); for an inline
    /// job the plugin's call alone is measured against its promise.
    fn in_process(&self, job: &JobView, callbacks: Arc<dyn JobCallbacks>, inline: bool) -> Outcome {
        let _call = self.enter_call(job);
        if !inline {
            return self.library.process(job, callbacks);
        }
        let probe = self.inline.probe(&job.queue, &job.name);
        let outcome = self.library.process(job, callbacks);
        self.inline.ran(&job.queue, &job.name, &probe.finish());
        outcome
    }

    /// The journal entry and the crash note that cover a plugin call for `job` on this thread.
    fn enter_call<'j>(&'j self, job: &'j JobView) -> CallCover<'j> {
        let entry = JOURNAL
            .get()
            .and_then(|j| j.begin(&job.queue, &job.id, &self.info.name));
        let slot = entry.as_ref().map_or(u32::MAX, journal::Entry::slot);
        CallCover {
            _entered: crashnote::enter_job(slot, &job.id, &job.queue, &self.info.name),
            _entry: entry,
        }
    }

    /// Runs `job` on this thread when it is an inline job of an in-process plugin (see [`inline`]), noting
    /// how long it took; `None` when it must be handed to a job thread (or to the plugin's child) instead.
    pub fn run_inline(&self, job: &JobView, callbacks: Arc<dyn JobCallbacks>) -> Option<Reply> {
        if self.process.is_some() || !self.inline.runs_inline(&job.queue, &job.name) {
            return None;
        }
        Some(Reply::Outcome(self.in_process(job, callbacks, true)))
    }

    /// Whether a job `name` of `queue` is one the plugin completes later (declared pending, and the
    /// library has the entry point): no thread holds it while it waits, in either mode.
    pub fn is_pending(&self, queue: &str, name: &str) -> bool {
        self.library.is_pending(queue, name)
    }

    /// Starts `job` on this thread when it is a pending job of an in-process plugin: the plugin's `start`
    /// takes it and returns, and its outcome arrives on the returned channel from whichever thread of the
    /// plugin completes it. `None` for a plugin process (its child starts pending jobs itself) and for a job
    /// that goes through `process`. The journal entry and the crash note cover the `start` call alone: the
    /// job then runs on the plugin's threads, which no job can be told apart on. `start` is held to the
    /// promise of an inline call (it runs on the async thread) and a breach is logged.
    pub fn start_pending(
        &self,
        job: &JobView,
        callbacks: Arc<dyn JobCallbacks>,
    ) -> Option<tokio::sync::oneshot::Receiver<Outcome>> {
        if self.process.is_some() || !self.is_pending(&job.queue, &job.name) {
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _call = self.enter_call(job);
        let probe = self.inline.start_probe();
        self.library.start(
            job,
            callbacks,
            Box::new(move |outcome| drop(tx.send(outcome))),
        );
        self.inline.started(&job.queue, &job.name, &probe.finish());
        Some(rx)
    }

    /// Starts one job in the plugin's child without blocking (see [`PluginProcess::start_job`]); `None` for
    /// an in-process plugin and whenever the job must go through [`Self::run`] on a blocking thread.
    pub fn start_in_child(
        &self,
        job: &JobView,
        callbacks: Arc<dyn JobCallbacks>,
    ) -> Option<ChildJob> {
        self.process.as_ref()?.start_job(job, callbacks)
    }

    /// Asks the plugin to stop within `budget` (in its child, or in-process). Blocks.
    pub fn shutdown(&self, budget: std::time::Duration) {
        match &self.process {
            Some(child) => child.shutdown(budget),
            None => self.library.shutdown(budget),
        }
    }

    /// The plugin's isolation mode.
    pub fn isolation(&self) -> Isolation {
        if self.process.is_some() {
            Isolation::Process
        } else {
            Isolation::InProcess
        }
    }
}

/// Covers one plugin call in this process: its crash note, then (dropped after it) its journal entry.
struct CallCover<'j> {
    _entered: crashnote::Entered<'j>,
    _entry: Option<journal::Entry<'j>>,
}
