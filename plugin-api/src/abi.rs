//! The binary interface itself: the root module a plugin exports and the callbacks the host lends it.
//!
//! Everything here is `#[repr(C)]` and checked by abi_stable when the library is loaded: the abi_stable
//! header, the interface version (this crate's version) and the recursive layout of [`PluginModule`].
//! Structured values cross as JSON text ([`crate::PluginInfo`], [`crate::JobView`], [`crate::Outcome`]), which
//! keeps this surface small; a job may also cross as a [`JobRef`] of borrowed fields ([`DirectModule`]).
//!
//! # Compatibility rule
//!
//! A plugin loads into a host when both were built against the **same `0.MINOR` of `frostguard-plugin-api`**
//! and the plugin's `0.MINOR.PATCH` is **at least the host's**. A new minor may change anything; a patch
//! release may only append functions after the last prefix field of [`PluginModule`] or methods at the end
//! of the callback traits. So upgrade plugins first (or together with the host); an older plugin in a newer
//! host is rejected at load with the reason, and its queues are simply not consumed. The host enforces this
//! through abi_stable's version and layout checks before it calls any plugin code.
//!
//! Nothing else about the build has to match: only `repr(C)` layouts, abi_stable's self-describing types
//! (each owned value carries its destructor) and JSON text cross the boundary, so a plugin may be built with
//! another rustc, another optimisation level and other versions of its own dependencies than the host.

// `#[sabi_trait]` expands to impls inside a generated const block, which rustc >= 1.80 flags; the code is
// abi_stable's and correct.
#![allow(non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, ROption, RResult, RStr, RString};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait, StableAbi};

/// Severity of a forwarded log record, in `tracing` order.
pub mod level {
    /// `tracing::Level::ERROR`
    pub const ERROR: u8 = 1;
    /// `tracing::Level::WARN`
    pub const WARN: u8 = 2;
    /// `tracing::Level::INFO`
    pub const INFO: u8 = 3;
    /// `tracing::Level::DEBUG`
    pub const DEBUG: u8 = 4;
    /// `tracing::Level::TRACE`
    pub const TRACE: u8 = 5;
}

/// Services the host lends a plugin for its whole life (given to `init`).
#[sabi_trait]
pub trait HostServices: Send + Sync {
    /// Re-emits a plugin log record on the host's subscriber. `fields` is a JSON object of the event's fields.
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>, fields: RStr<'_>);

    /// The most verbose level the host will print (one of [`level`]), so the plugin can skip the rest.
    #[sabi(last_prefix_field)]
    fn max_level(&self) -> u8;
}

/// Owned handle to the host services, as the plugin keeps it.
pub type HostServicesBox = HostServices_TO<'static, RBox<()>>;

/// Per-job services, valid only during one `process` call.
#[sabi_trait]
pub trait JobServices: Send + Sync {
    /// Records job progress (`job.updateProgress`); `json` is a number or an object as JSON text.
    fn progress(&self, json: RStr<'_>);

    /// Appends a line to the job's log (`job.log`, read by `Queue.getJobLogs`).
    fn log_line(&self, line: RStr<'_>);

    /// True once the host wants the job to stop (shutdown deadline or job timeout).
    #[sabi(last_prefix_field)]
    fn is_cancelled(&self) -> bool;
}

/// Owned handle to one job's services.
pub type JobServicesBox = JobServices_TO<'static, RBox<()>>;

/// Where a pending job's outcome goes (given to `start` with the job): the host awaits it without a thread.
#[sabi_trait]
pub trait JobCompletion: Send + Sync {
    /// Hands back the job's outcome (JSON of [`crate::Outcome`]), from any thread. Only the first call counts;
    /// it returns true, every later one false. Dropping the last handle without a call fails the job.
    #[sabi(last_prefix_field)]
    fn complete(&self, outcome_json: RStr<'_>) -> bool;
}

/// Owned handle to one pending job's completion.
pub type JobCompletionBox = JobCompletion_TO<'static, RBox<()>>;

/// The root module every plugin exports. Functions may only be appended (see the module docs).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// Describes the plugin: JSON of [`crate::PluginInfo`], or an error message.
    pub describe: extern "C" fn() -> RResult<RString, RString>,

    /// Starts the plugin with its configuration (JSON object of strings) and the host services.
    pub init: extern "C" fn(host: HostServicesBox, config_json: RStr<'_>) -> RResult<(), RString>,

    /// Processes one job (JSON of [`crate::JobView`]) and returns JSON of [`crate::Outcome`].
    /// Called on a host blocking thread (an inline job: on the thread that received it), possibly from
    /// several threads at once.
    pub process: extern "C" fn(job_json: RStr<'_>, job: JobServicesBox) -> RString,

    /// Stops the plugin, finishing within `deadline_ms` milliseconds.
    #[sabi(last_prefix_field)]
    pub shutdown: extern "C" fn(deadline_ms: u64),
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "frostguard_plugin";
    const NAME: &'static str = "frostguard job-processor plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The entry point of pending jobs, exported beside the root module under [`PENDING_SYMBOL`].
///
/// It is not a field of [`PluginModule`]: abi_stable refuses a library whose root module has fewer fields
/// than the host's, so a field appended there would turn away every plugin built before it. A plugin built
/// before pending jobs simply lacks the symbol, and its jobs all go through `process`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct PendingModule {
    /// Starts one job the plugin declared pending (`QueueInfo::pending_jobs`; JSON of [`crate::JobView`])
    /// and returns at once: the plugin completes it later through `done`, from any thread. Called on the
    /// thread that received the job.
    pub start: extern "C" fn(job_json: RStr<'_>, job: JobServicesBox, done: JobCompletionBox),
}

/// A job lent to the plugin for one call of a [`DirectModule`] entry point: the fields of
/// [`crate::JobView`] as borrowed strings and numbers, so that the host does not write the job as JSON and
/// the plugin does not parse it. Only the job's data (and a backoff setting) stay JSON text: they are the
/// producer's values, which the plugin reads into its own types.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct JobRef<'a> {
    /// BullMQ job id.
    pub id: RStr<'a>,
    /// Job name.
    pub name: RStr<'a>,
    /// Queue the job came from.
    pub queue: RStr<'a>,
    /// The job data, JSON text.
    pub data_json: RStr<'a>,
    /// Attempts already made before this one.
    pub attempts_made: u32,
    /// Attempts started, including this one.
    pub attempts_started: u32,
    /// Total attempts allowed (`opts.attempts`).
    pub attempts: u32,
    /// The backoff setting (`opts.backoff`) as JSON text; empty when the job has none.
    pub backoff_json: RStr<'a>,
    /// Delay in ms requested when the job was added (`opts.delay`).
    pub delay: ROption<u64>,
    /// BullMQ priority (`opts.priority`).
    pub priority: ROption<u64>,
    /// Creation time, ms since the Unix epoch.
    pub timestamp: u64,
    /// Unix time in ms after which the host cancels the job, if any.
    pub deadline_ms: ROption<u64>,
}

/// The entry points that take a job as a [`JobRef`] instead of JSON text, exported beside the root module
/// under [`DIRECT_SYMBOL`] for the reason [`PendingModule`] is. A host uses them when a plugin has them
/// (the job's JSON was most of what a call of a quick job cost) and the JSON ones otherwise; a plugin built
/// with them still has the JSON ones for a host from before them. Outcomes stay JSON text either way.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct DirectModule {
    /// `PluginModule::process` for a job lent as a [`JobRef`]: returns JSON of [`crate::Outcome`].
    pub process: extern "C" fn(job: JobRef<'_>, services: JobServicesBox) -> RString,
    /// `PendingModule::start` for a job lent as a [`JobRef`].
    pub start: extern "C" fn(job: JobRef<'_>, services: JobServicesBox, done: JobCompletionBox),
}

/// What an entry symbol beside the root module names: the layout of the module `M` the plugin was built
/// with, which the host checks against its own with abi_stable before it uses `module`, and the module.
#[repr(C)]
pub struct ExportedEntry<M: 'static> {
    /// `<M as StableAbi>::LAYOUT` in the plugin.
    pub layout: &'static abi_stable::type_layout::TypeLayout,
    /// The entry points.
    pub module: M,
}

impl<M: StableAbi> ExportedEntry<M> {
    /// The entry of `module`, with the layout of `M` as this build of the interface has it.
    pub const fn of(module: M) -> Self {
        Self {
            layout: <M as StableAbi>::LAYOUT,
            module,
        }
    }
}

/// What [`PENDING_SYMBOL`] names.
pub type PendingEntry = ExportedEntry<PendingModule>;

/// What [`DIRECT_SYMBOL`] names.
pub type DirectEntry = ExportedEntry<DirectModule>;

/// The symbol of a plugin's [`PendingEntry`] (the export macro defines it). A new version of the pending
/// interface would get a new name, so a host never reads an entry of a layout it does not expect.
pub const PENDING_SYMBOL: &str = "frostguard_plugin_pending_v1";

/// The symbol of a plugin's [`DirectEntry`] (the export macro defines it), versioned like
/// [`PENDING_SYMBOL`].
pub const DIRECT_SYMBOL: &str = "frostguard_plugin_direct_v1";

/// The symbol abi_stable looks up in every plugin library (the export macro defines it).
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

#[cfg(test)]
mod tests {
    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            super::ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
