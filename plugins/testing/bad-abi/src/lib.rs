//! Test fixture: a library that exports a plugin root module under the right name and interface version but
//! with a different layout, as a plugin built against a diverged copy of the plugin API would. The host must
//! reject it at the ABI stage, before calling any of its code. Never shipped.

#![forbid(unsafe_code)]

use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::RString;
use abi_stable::{declare_root_module_statics, export_root_module, StableAbi};

/// The diverged root module: `process` takes a job id number and there is no `init`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// Describes the plugin.
    pub describe: extern "C" fn() -> RString,
    /// Processes a job by number.
    #[sabi(last_prefix_field)]
    pub process: extern "C" fn(job_id: u64) -> RString,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "frostguard_plugin";
    const NAME: &'static str = "frostguard job-processor plugin";
    // The same interface version the real API has, so only the layout check can tell them apart.
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("0.1.0");
}

extern "C" fn describe() -> RString {
    RString::from(r#"{"name":"bad-abi","version":"0.1.0","processors":[]}"#)
}

extern "C" fn process(job_id: u64) -> RString {
    RString::from(format!("job {job_id}"))
}

/// The exported root module.
#[export_root_module]
pub fn root_module() -> PluginModuleRef {
    PluginModule { describe, process }.leak_into_prefix()
}
