//! The safe side a plugin author implements: the [`Plugin`] trait and the [`JobContext`] handed to each job.

use std::time::Duration;

use abi_stable::std_types::RStr;

use crate::abi::JobServicesBox;
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
