//! The glue [`crate::export_plugin!`] generates calls into: the `extern "C"` entry points of the root module.
//!
//! Every entry point runs the author's code inside `catch_unwind`. A panic unwinding out of an `extern "C"`
//! function aborts the whole process, and only the plugin's own copy of std can catch the plugin's panics,
//! so this must happen here, on the plugin side of the boundary. Not part of the public API.
//!
//! A caught panic becomes a retryable failure whose `failedReason` is the panic's own message and whose
//! [`FailureDetail`] says it panicked and where: the payload carries no location, so a panic hook (installed
//! once, in front of whatever hook the plugin's copy of std already had, which still runs and prints the
//! usual message) notes the location in a thread-local that the job's `catch_unwind` reads.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock};
use std::time::Duration;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString};

pub use abi_stable;

use crate::abi::{
    level, HostServicesBox, JobCompletion, JobCompletionBox, JobCompletion_TO, JobRef,
    JobServicesBox, PluginModule, PluginModuleRef,
};
use crate::forward;
use crate::plugin::{JobContext, PendingJob, Plugin};
use crate::types::{FailureDetail, JobOpts, JobView, Outcome, PluginConfig};
use serde_json::value::RawValue;

/// Gives the entry points access to the one instance of a plugin; implemented by the export macro.
pub trait PluginInstance: Plugin {
    /// The cell holding the instance built by `init`.
    fn instance_cell() -> &'static OnceLock<Self>;

    /// The cell holding the (queue, job name) pairs the plugin declares pending, filled at the first job.
    fn pending_cell() -> &'static OnceLock<Vec<(String, String)>>;
}

/// Builds the root module for `P`; called once per library by abi_stable's loader.
pub fn root_module<P: PluginInstance>() -> PluginModuleRef {
    PluginModule {
        describe: describe::<P>,
        init: init::<P>,
        process: process::<P>,
        shutdown: shutdown::<P>,
    }
    .leak_into_prefix()
}

/// Best-effort text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Why a plugin built with `panic = "abort"` is refused: this crate is compiled with the plugin's panic
/// strategy (cargo applies a profile's `panic` to the whole build), so the check sees the plugin's setting.
pub const PANIC_ABORT_REFUSAL: &str =
    "built with panic = \"abort\": a panic would abort the host instead of \
     failing the job; build the plugin with panic = \"unwind\" (the default)";

extern "C" fn describe<P: PluginInstance>() -> RResult<RString, RString> {
    // `catch_unwind` below, and every entry point's, only works when panics unwind.
    if cfg!(panic = "abort") {
        return RResult::RErr(PANIC_ABORT_REFUSAL.into());
    }
    let described = catch_unwind(|| serde_json::to_string(&P::describe()));
    match described {
        Ok(Ok(json)) => RResult::ROk(json.into()),
        Ok(Err(e)) => RResult::RErr(format!("describe produced invalid JSON: {e}").into()),
        Err(p) => RResult::RErr(format!("describe panicked: {}", panic_message(&*p)).into()),
    }
}

extern "C" fn init<P: PluginInstance>(
    host: HostServicesBox,
    config_json: RStr<'_>,
) -> RResult<(), RString> {
    forward::install(host);
    let config: PluginConfig = match serde_json::from_str(config_json.as_str()) {
        Ok(c) => c,
        Err(e) => {
            return RResult::RErr(
                format!("configuration is not a JSON object of strings: {e}").into(),
            )
        }
    };
    let cell = P::instance_cell();
    if cell.get().is_some() {
        return RResult::RErr("plugin is already initialised in this process".into());
    }
    match catch_unwind(AssertUnwindSafe(|| P::init(&config))) {
        Ok(Ok(instance)) => match cell.set(instance) {
            Ok(()) => RResult::ROk(()),
            Err(_) => RResult::RErr("plugin was initialised twice concurrently".into()),
        },
        Ok(Err(e)) => RResult::RErr(e.reason().into()),
        Err(p) => RResult::RErr(format!("init panicked: {}", panic_message(&*p)).into()),
    }
}

thread_local! {
    /// Where the last panic on this thread happened (`file:line:column`), noted by the hook below.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Puts the location-noting hook in front of the current panic hook, once per plugin library. Done at the
/// first job rather than at load, so a hook the plugin sets in `init` is kept (and still runs).
fn note_panic_locations() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(at) = info.location() {
                let at = format!("{}:{}:{}", at.file(), at.line(), at.column());
                // `try_with`: a panic while the thread-local is being torn down must not panic again.
                let _ = PANIC_LOCATION.try_with(|cell| {
                    if let Ok(mut slot) = cell.try_borrow_mut() {
                        *slot = Some(at);
                    }
                });
            }
            previous(info);
        }));
    });
}

/// The outcome of a job whose plugin code panicked: the panic's message as the `failedReason`, the rest in
/// the detail (the host writes it into the job's stacktrace entry).
pub fn panic_outcome(payload: &(dyn Any + Send), location: Option<String>) -> Outcome {
    Outcome::Failed {
        message: panic_message(payload),
        unrecoverable: false,
        detail: Some(FailureDetail::panic(location)),
    }
}

extern "C" fn process<P: PluginInstance>(job_json: RStr<'_>, services: JobServicesBox) -> RString {
    // The job is parsed once, here; whether it is pending is decided from the parsed view.
    process_read(|| read_job::<P>(job_json.as_str()), services)
}

/// The direct entry point of `process` (see [`crate::abi::DirectModule`]): the job lent, not written.
pub extern "C" fn process_direct<P: PluginInstance>(
    job: JobRef<'_>,
    services: JobServicesBox,
) -> RString {
    process_read(|| take_job::<P>(&job), services)
}

/// Both `process` entry points once they know how to `read` their job: the outcome's JSON, or the failure
/// that kept the job from the plugin.
fn process_read<P: PluginInstance>(
    read: impl FnOnce() -> Result<(&'static P, JobView), Outcome>,
    services: JobServicesBox,
) -> RString {
    begin_call();
    match read() {
        Ok((plugin, job)) => run_job(plugin, &job, services).into(),
        Err(refusal) => outcome_json(&refusal).into(),
    }
}

/// What every job's entry point does first: make sure panics note their location, and forget the last one.
fn begin_call() {
    note_panic_locations();
    PANIC_LOCATION.with(|cell| cell.borrow_mut().take());
}

/// Runs `job` through the plugin's `process` (or, for a host that called `process` with a job the plugin
/// declares pending, starts it and waits): the outcome's JSON.
fn run_job<P: PluginInstance>(
    plugin: &'static P,
    job: &JobView,
    services: JobServicesBox,
) -> String {
    if is_declared_pending::<P>(job) {
        return wait_for_pending::<P>(plugin, job, services);
    }
    let outcome = match catch_unwind(AssertUnwindSafe(|| {
        plugin.process(job, &JobContext::new(&services))
    })) {
        Ok(outcome) => outcome,
        Err(p) => panic_outcome(&*p, PANIC_LOCATION.with(|cell| cell.borrow_mut().take())),
    };
    outcome_json(&outcome)
}

/// The initialised plugin and the job lent as `job`, or the failure that ends the job without them.
fn take_job<P: PluginInstance>(job: &JobRef<'_>) -> Result<(&'static P, JobView), Outcome> {
    let plugin = instance::<P>()?;
    let refused = |what: &str, e: serde_json::Error| {
        Outcome::failed(format!(
            "host sent a job whose {what} the plugin cannot read: {e}"
        ))
    };
    let data =
        RawValue::from_string(job.data_json.as_str().to_owned()).map_err(|e| refused("data", e))?;
    let backoff = match job.backoff_json.as_str() {
        "" => None,
        text => Some(serde_json::from_str(text).map_err(|e| refused("backoff", e))?),
    };
    let view = JobView {
        id: job.id.as_str().to_owned(),
        name: job.name.as_str().to_owned(),
        queue: job.queue.as_str().to_owned(),
        data,
        attempts_made: job.attempts_made,
        attempts_started: job.attempts_started,
        opts: JobOpts {
            attempts: job.attempts,
            backoff,
            delay: job.delay.into(),
            priority: job.priority.into(),
        },
        timestamp: job.timestamp,
        deadline_ms: job.deadline_ms.into(),
    };
    Ok((plugin, view))
}

/// The initialised plugin and the job `job_json` describes, or the failure that ends the job without them.
fn read_job<P: PluginInstance>(job_json: &str) -> Result<(&'static P, JobView), Outcome> {
    let plugin = instance::<P>()?;
    match serde_json::from_str::<JobView>(job_json) {
        Ok(job) => Ok((plugin, job)),
        Err(e) => Err(Outcome::failed(format!(
            "host sent a job the plugin cannot read: {e}"
        ))),
    }
}

/// The plugin `init` built, or the failure of a job that came before it.
fn instance<P: PluginInstance>() -> Result<&'static P, Outcome> {
    P::instance_cell()
        .get()
        .ok_or_else(|| Outcome::failed("plugin received a job before init succeeded"))
}

/// The JSON of `outcome` as it crosses the boundary (a failure saying why, should it not serialise).
pub fn outcome_json(outcome: &Outcome) -> String {
    serde_json::to_string(outcome).unwrap_or_else(|e| {
        format!(
            r#"{{"status":"failed","message":"outcome not serialisable: {}","unrecoverable":false}}"#,
            e.to_string().replace(['"', '\\'], "'")
        )
    })
}

/// The pending-job entry point for `P` (see [`crate::abi::PendingModule`]).
pub extern "C" fn start<P: PluginInstance>(
    job_json: RStr<'_>,
    services: JobServicesBox,
    done: JobCompletionBox,
) {
    start_read(|| read_job::<P>(job_json.as_str()), services, done);
}

/// The direct entry point of `start` (see [`crate::abi::DirectModule`]): the job lent, not written.
pub extern "C" fn start_direct<P: PluginInstance>(
    job: JobRef<'_>,
    services: JobServicesBox,
    done: JobCompletionBox,
) {
    start_read(|| take_job::<P>(&job), services, done);
}

/// Both `start` entry points once they know how to `read` their job: a job that cannot be read is completed
/// at once with the failure that says why.
fn start_read<P: PluginInstance>(
    read: impl FnOnce() -> Result<(&'static P, JobView), Outcome>,
    services: JobServicesBox,
    done: JobCompletionBox,
) {
    begin_call();
    let pending = PendingJob::new(services, done);
    match read() {
        Ok((plugin, job)) => start_job(plugin, &job, pending),
        Err(refusal) => {
            pending.complete(refusal);
        }
    }
}

/// Hands `job` to the plugin's `start`; a panic in it completes the job with the panic's failure (ignored if
/// the plugin already completed it).
fn start_job<P: Plugin>(plugin: &P, job: &JobView, pending: PendingJob) {
    let kept = pending.clone();
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| plugin.start(job, pending))) {
        kept.complete(panic_outcome(
            &*p,
            PANIC_LOCATION.with(|cell| cell.borrow_mut().take()),
        ));
    }
}

/// Whether the plugin declares `job` pending: a host from before pending jobs calls `process` for every job,
/// and such a job is then started and waited for here ([`wait_for_pending`]).
fn is_declared_pending<P: PluginInstance>(job: &JobView) -> bool {
    let pending = P::pending_cell().get_or_init(|| {
        P::describe()
            .queues
            .iter()
            .flat_map(|q| q.pending_jobs.iter().map(|n| (q.queue.clone(), n.clone())))
            .collect()
    });
    pending
        .iter()
        .any(|(q, n)| *q == job.queue && *n == job.name)
}

/// Runs a pending job for a caller that waits (a host from before pending jobs, on its blocking thread):
/// starts it, then waits for its completion, up to [`crate::PENDING_GRACE`] past its deadline.
fn wait_for_pending<P: PluginInstance>(
    plugin: &P,
    job: &JobView,
    services: JobServicesBox,
) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let done =
        JobCompletion_TO::from_value(LocalCompletion(std::sync::Mutex::new(Some(tx))), TD_Opaque);
    start_job(plugin, job, PendingJob::new(services, done));
    let outcome = match job.deadline_ms {
        Some(ms) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let left = Duration::from_millis(ms.saturating_sub(now)) + crate::PENDING_GRACE;
            rx.recv_timeout(left).ok()
        }
        None => rx.recv().ok(),
    };
    outcome.unwrap_or_else(|| {
        outcome_json(&Outcome::failed(
            "the pending job was not completed (dropped, or past its deadline and the grace)",
        ))
    })
}

/// The completion of a pending job run by [`wait_for_pending`]: the first outcome goes to the waiting thread.
struct LocalCompletion(std::sync::Mutex<Option<std::sync::mpsc::Sender<String>>>);

impl JobCompletion for LocalCompletion {
    fn complete(&self, outcome_json: RStr<'_>) -> bool {
        let tx = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        tx.is_some_and(|tx| tx.send(outcome_json.as_str().to_owned()).is_ok())
    }
}

extern "C" fn shutdown<P: PluginInstance>(deadline_ms: u64) {
    let result = catch_unwind(|| {
        if let Some(plugin) = P::instance_cell().get() {
            plugin.shutdown(Duration::from_millis(deadline_ms));
        }
    });
    if let Err(p) = result {
        let message = format!("shutdown panicked: {}", panic_message(&*p));
        forward::forward(level::ERROR, "plugin::shutdown", &message, "{}");
    }
}

/// Exports a [`Plugin`] implementation as this library's plugin root module.
///
/// Use it exactly once, in a crate built with `crate-type = ["cdylib"]`:
///
/// ```text
/// plugin_api::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            static INSTANCE: ::std::sync::OnceLock<$plugin> = ::std::sync::OnceLock::new();
            static PENDING: ::std::sync::OnceLock<::std::vec::Vec<(String, String)>> =
                ::std::sync::OnceLock::new();

            impl $crate::__export::PluginInstance for $plugin {
                fn instance_cell() -> &'static ::std::sync::OnceLock<Self> {
                    &INSTANCE
                }

                fn pending_cell() -> &'static ::std::sync::OnceLock<Vec<(String, String)>> {
                    &PENDING
                }
            }

            fn root_module() -> $crate::abi::PluginModuleRef {
                $crate::__export::root_module::<$plugin>()
            }

            extern "C" fn construct() -> $crate::__export::abi_stable::library::RootModuleResult {
                $crate::__export::abi_stable::library::__call_root_module_loader(root_module)
            }

            // The entry point of pending jobs, looked up by name beside the root module; its symbol name is
            // `abi::PENDING_SYMBOL`.
            #[export_name = "frostguard_plugin_pending_v1"]
            pub static PENDING_ENTRY: $crate::abi::PendingEntry =
                $crate::abi::PendingEntry::of($crate::abi::PendingModule {
                    start: $crate::__export::start::<$plugin>,
                });

            // The entry points that take a job lent as a `JobRef`, looked up by name beside the root module;
            // its symbol name is `abi::DIRECT_SYMBOL`.
            #[export_name = "frostguard_plugin_direct_v1"]
            pub static DIRECT_ENTRY: $crate::abi::DirectEntry =
                $crate::abi::DirectEntry::of($crate::abi::DirectModule {
                    process: $crate::__export::process_direct::<$plugin>,
                    start: $crate::__export::start_direct::<$plugin>,
                });

            // The header abi_stable's loader looks up; its symbol name is `abi::ROOT_MODULE_SYMBOL`.
            // SAFETY: `from_constructor::<M>` requires the module `construct` returns to be an erased `M`:
            // `__call_root_module_loader` erases exactly the `PluginModuleRef` that `root_module` builds, and
            // `M` is `PluginModuleRef`. `CheckTypeLayout::Yes` also makes the loader compare its layout with
            // the host's before any function of it is called.
            #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
            pub static LIB_HEADER: $crate::__export::abi_stable::library::LibHeader = unsafe {
                $crate::__export::abi_stable::library::LibHeader::from_constructor::<
                    $crate::abi::PluginModuleRef,
                >(
                    construct,
                    $crate::__export::abi_stable::library::CheckTypeLayout::Yes,
                )
            };
        };
    };
}
