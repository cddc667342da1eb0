//! The safe side a plugin author implements: the [`Plugin`] trait, the [`JobContext`] handed to each job and
//! the [`PendingJob`] handed to a job the plugin completes later.

use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::RStr;

use crate::abi::{JobCompletionBox, JobServicesBox};
use crate::types::{InitError, JobView, Outcome, PluginConfig, PluginInfo};

/// A job-processor plugin. Implement it and export the type with [`crate::export_plugin!`].
///
/// One instance is created by [`Plugin::init`] and shared by every job, so `process` takes `&self` and may run
/// on several host threads at once (up to the queue's concurrency).
pub trait Plugin: Sized + Send + Sync + 'static {
    /// Name, version and the queues served. Called before `init`; must not do I/O.
    fn describe() -> PluginInfo;

    /// Builds the plugin from its configuration: clients, pools, a private async runtime if needed.
    /// Returning an error disables the plugin (its queues are not consumed and their jobs wait).
    fn init(config: &PluginConfig) -> Result<Self, InitError>;

    /// Does the work of one job. Runs on a host blocking thread: blocking here is expected, but honour
    /// [`JobContext::is_cancelled`] and the job's deadline in anything long. A panic becomes a retryable
    /// failure of this job only. Jobs named in [`crate::QueueInfo::inline_jobs`] run on the thread that
    /// received them instead, and must not block at all.
    fn process(&self, job: &JobView, ctx: &JobContext<'_>) -> Outcome;

    /// Starts a job whose name is in [`crate::QueueInfo::pending_jobs`], instead of `process`: hand the
    /// work to the plugin's own threads (a timer, an async client's runtime) and return at once, then
    /// [`PendingJob::complete`] it from whichever thread finishes it. No host thread waits meanwhile. Runs
    /// on the thread that received the job (the host's async thread in-process), so it must not block: no
    /// I/O, no sleep, no lock another thread holds for long. A panic here fails the job retryably, as in
    /// `process`. The default completes the job with an unrecoverable failure: declaring pending jobs
    /// without implementing this is a plugin bug.
    fn start(&self, job: &JobView, pending: PendingJob) {
        pending.complete(Outcome::unrecoverable(format!(
            "job {:?} is declared pending but the plugin does not implement start",
            job.name
        )));
    }

    /// Releases resources before the host exits; return within `deadline`.
    fn shutdown(&self, _deadline: Duration) {}
}

/// What a job can tell the host while it runs.
pub struct JobContext<'a> {
    services: &'a JobServicesBox,
}

impl<'a> JobContext<'a> {
    pub(crate) fn new(services: &'a JobServicesBox) -> Self {
        Self { services }
    }

    /// Reports progress, visible to Node as `job.progress` (a number such as `42`, or an object).
    pub fn progress(&self, value: serde_json::Value) {
        let json = value.to_string();
        self.services.progress(RStr::from_str(&json));
    }

    /// Appends a line to the job's own log (Node `Queue.getJobLogs`). Never put personal data here.
    pub fn log(&self, line: &str) {
        self.services.log_line(RStr::from_str(line));
    }

    /// True once the host wants this job to stop (shutdown or timeout); return promptly when it is.
    pub fn is_cancelled(&self) -> bool {
        self.services.is_cancelled()
    }
}

/// How long past its deadline a pending job is still waited for: the plugin learns of the deadline through
/// [`PendingJob::is_cancelled`] and should complete the job within this; a job still pending then is ended
/// by the host (as timed out), since no thread of the host holds it and nothing else would end it.
pub const PENDING_GRACE: Duration = Duration::from_secs(2);

/// A job started with [`Plugin::start`], to be completed later from any thread.
///
/// Clones share the job: give one to each party that may finish it (the work itself, a cancellation
/// watcher); the first [`PendingJob::complete`] decides the outcome and the later ones are ignored. Progress
/// and log lines written before the completion reach the job before its result, in order. Dropping every
/// clone without completing fails the job retryably (`... dropped without an outcome`). The host ends a job
/// still pending a short grace after its deadline, and at the shutdown deadline, whatever the plugin does.
#[derive(Clone)]
pub struct PendingJob {
    shared: Arc<PendingShared>,
}

struct PendingShared {
    services: JobServicesBox,
    done: JobCompletionBox,
}

impl PendingJob {
    pub(crate) fn new(services: JobServicesBox, done: JobCompletionBox) -> Self {
        Self {
            shared: Arc::new(PendingShared { services, done }),
        }
    }

    /// Hands back the job's outcome. Returns true for the call that counted, false when the job was already
    /// completed (by another clone, or ended by the host) and this outcome was dropped.
    pub fn complete(&self, outcome: Outcome) -> bool {
        let json = crate::export::outcome_json(&outcome);
        self.shared.done.complete(RStr::from_str(&json))
    }

    /// The job's progress, log and cancellation, as [`Plugin::process`] gets them.
    pub fn context(&self) -> JobContext<'_> {
        JobContext::new(&self.shared.services)
    }

    /// Reports progress (see [`JobContext::progress`]).
    pub fn progress(&self, value: serde_json::Value) {
        self.context().progress(value);
    }

    /// Appends a line to the job's log (see [`JobContext::log`]).
    pub fn log(&self, line: &str) {
        self.context().log(line);
    }

    /// True once the host wants this job to stop (shutdown, its deadline); complete it promptly then.
    pub fn is_cancelled(&self) -> bool {
        self.shared.services.is_cancelled()
    }
}
