//! # frostguard-plugin-api
//!
//! The contract between the `frostguard-worker` host and its job processors. A processor is a Rust `cdylib`
//! that the host loads from its plugin directory at startup; the host owns Redis, BullMQ, concurrency, rate
//! limits, retries and shutdown, and hands the plugin one job at a time.
//!
//! A plugin author implements the safe [`Plugin`] trait and calls [`export_plugin!`]; the macro produces the
//! stable-ABI glue (abi_stable root module), catches every panic on the plugin side of the boundary (a panic
//! becomes a failed job, never an aborted host), and forwards the plugin's `tracing` events to the host's log.
//! No unsafe code is needed.
//!
//! ## A complete minimal plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "hello-plugin"
//! version = "0.1.0"
//! edition = "2021"
//!
//! [lib]
//! crate-type = ["cdylib", "rlib"]   # rlib too, so the logic can be unit-tested without dlopen
//!
//! [dependencies]
//! frostguard-plugin-api = { path = "../../plugin-api" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use plugin_api::{
//!     export_plugin, InitError, JobContext, JobView, Outcome, Plugin, PluginConfig, PluginInfo,
//!     QueueInfo,
//! };
//! use plugin_api::serde_json::json;
//!
//! #[derive(serde::Deserialize)]
//! struct Greeting {
//!     name: String,
//! }
//!
//! pub struct Hello {
//!     greeting: String,
//! }
//!
//! impl Plugin for Hello {
//!     fn describe() -> PluginInfo {
//!         PluginInfo {
//!             name: "hello".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             queues: vec![QueueInfo {
//!                 queue: "greetings".into(),
//!                 job_names: vec!["greet".into()],
//!                 default_concurrency: 2,
//!                 rate_limit: None,
//!                 handles_unknown_names: false,
//!                 timeout_ms: Some(10_000),
//!                 inline_jobs: vec![],
//!                 pending_jobs: vec![],
//!             }],
//!             config_keys: vec!["GREETING".into()],
//!         }
//!     }
//!
//!     fn init(config: &PluginConfig) -> Result<Self, InitError> {
//!         Ok(Hello { greeting: config.get("GREETING").unwrap_or("Hello").to_owned() })
//!     }
//!
//!     fn process(&self, job: &JobView, ctx: &JobContext<'_>) -> Outcome {
//!         let data: Greeting = match job.data() {
//!             Ok(d) => d,
//!             Err(e) => return Outcome::unrecoverable(format!("invalid job data: {e}")),
//!         };
//!         ctx.progress(json!(50));
//!         plugin_api::tracing::info!(job_id = %job.id, "greeting someone");
//!         Outcome::completed(json!({ "text": format!("{}, {}!", self.greeting, data.name) }))
//!     }
//! }
//!
//! export_plugin!(Hello);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release` and copy `target/release/libhello_plugin.so` into the host's plugin
//! directory; `frostguard-worker plugins` shows whether it loads, and
//! `frostguard-worker plugins run --plugin FILE --queue greetings --name greet --data '{"name":"Ada"}'`
//! runs one job through it without Redis.
//!
//! ## Outcomes
//!
//! * [`Outcome::completed`]: the job's `returnvalue` in BullMQ.
//! * [`Outcome::failed`]: a retryable failure; the job's `attempts` and `backoff` apply.
//! * [`Outcome::unrecoverable`]: fails the job now (BullMQ `UnrecoverableError`).
//! * [`Outcome::failed_with`] / [`Outcome::unrecoverable_with`]: the same from a `std::error::Error`; its type
//!   and source chain are recorded in the job's `stacktrace` too (Bull Board's Error tab).
//! * [`Outcome::retry_job_later`]: this job runs again after a delay, without consuming an attempt.
//! * [`Outcome::retry_queue_later`]: the whole queue pauses (provider rate limit, rejected credentials) and
//!   the job goes back to wait, without consuming an attempt.
//!
//! ## Threads and async
//!
//! `process` runs on a host blocking thread and may run on several at once (jobs named in
//! [`QueueInfo::inline_jobs`], which must not block, run on the thread that received them). A plugin that
//! needs async I/O
//! builds its own tokio runtime in `init` and `block_on`s it in `process`; it must never expect the host's
//! runtime (a `cdylib` has its own copy of tokio's thread-locals). Poll [`JobContext::is_cancelled`] in
//! long work: the host sets it at shutdown and at the job's deadline ([`JobView::time_left`]).
//!
//! A job that mostly waits (an HTTP call) need not hold a thread: list its name in
//! [`QueueInfo::pending_jobs`] and implement [`Plugin::start`], which hands the job to the plugin's own
//! runtime and returns; that runtime completes the [`PendingJob`] when the answer comes. The host ends a job
//! still pending [`PENDING_GRACE`] after its deadline. `docs/plugins.md` has the whole contract.
//!
//! ## Configuration
//!
//! The host gives each plugin a [`PluginConfig`]. For every key the plugin lists in
//! [`PluginInfo::config_keys`], the value comes from the environment variable `PLUGIN_<NAME>_<KEY>` if set
//! (`<NAME>` is the plugin name upper-cased with `-` as `_`), else from `<KEY>` itself, so existing
//! deployments keep their variable names. Tests pass a `PluginConfig` directly.
//!
//! ## Compatibility
//!
//! See [`abi`] for the rule the host enforces at load time: same `0.MINOR` of this crate, plugin at least as
//! new as the host. The plugin must also be built for the host's target, against a glibc no newer than the
//! host's, and with `panic = "unwind"` (the default; a plugin built with `panic = "abort"` is refused, since
//! one panic would kill the host). The compiler version, the optimisation level and the plugin's other
//! dependencies (its own tokio or serde included) do not matter. The repository's `docs/plugins.md` is the
//! plugin author's guide, and `frostguard-worker plugins new NAME` writes a starting crate.

#![warn(missing_docs)]
// No hand-written `unsafe` in this crate but the loader's symbol lookup (`entry_symbol.rs`); abi_stable's
// `sabi_trait` expands to `unsafe` impls inside `abi.rs`, which allows it for that. (`export_plugin!` has one `unsafe` block, expanded in the plugin, with its
// `SAFETY:` reason.)
#![deny(unsafe_code)]

#[allow(unsafe_code)] // generated by abi_stable's `sabi_trait` only; no hand-written `unsafe` there
pub mod abi;
#[cfg(feature = "loader")]
mod elf_check;
mod export;
mod forward;
pub mod log_level;
mod outcome_wire;
// Reads an entry point's symbol beside the root module as its type: one `unsafe` call with its `SAFETY:`
// reason.
#[cfg(feature = "loader")]
#[allow(unsafe_code)]
mod entry_symbol;
mod plugin;
mod types;

#[cfg(feature = "harness")]
pub mod harness;
#[cfg(feature = "loader")]
pub mod loader;

pub use plugin::{JobContext, PendingJob, Plugin, PENDING_GRACE};
pub use types::{
    FailureDetail, InitError, JobOpts, JobView, Outcome, PluginConfig, PluginInfo, QueueInfo,
    RateLimitHint, RetryScope,
};

/// The name [`QueueInfo`] had before 0.1 settled on one meaning for "processor" (the code that processes
/// jobs); kept so plugin sources written against it still build. The ABI never saw the rename.
#[deprecated(
    note = "renamed QueueInfo (same type); PluginInfo::processors is now PluginInfo::queues"
)]
pub type ProcessorInfo = QueueInfo;

pub use serde_json;
pub use tracing;

/// Used by [`export_plugin!`]; not part of the public API.
#[doc(hidden)]
pub mod __export {
    pub use crate::export::*;
}
