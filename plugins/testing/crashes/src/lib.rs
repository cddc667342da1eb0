//! Test-only plugin (`test-crashes` queue) whose jobs end the process that runs them the ways a native
//! plugin can: a segmentation fault, `abort`, a stack overflow and `exit`, plus a job that completes. The
//! crash-isolation tests run it in both isolation modes. Never shipped in the image.
//!
//! Job names: `complete` (returns `{"ok": true}`), `segfault` (reads address 8), `abort`
//! (`std::process::abort`), `stack-overflow` (unbounded recursion), `exit` (`std::process::exit(3)`),
//! `sleep` (`{"ms"}`, honours cancellation, then completes).

use std::hint::black_box;
use std::time::{Duration, Instant};

use plugin_api::serde_json::{json, Map, Value};
use plugin_api::{
    export_plugin, JobContext, JobView, Outcome, Plugin, PluginConfig, PluginInfo, QueueInfo,
};

/// The queue this plugin serves.
pub const QUEUE: &str = "test-crashes";

const JOB_NAMES: &[&str] = &[
    "complete",
    "segfault",
    "abort",
    "stack-overflow",
    "exit",
    "sleep",
];

/// The plugin; it keeps no state between jobs.
pub struct TestCrashes;

impl Plugin for TestCrashes {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "test-crashes".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            queues: vec![QueueInfo {
                queue: QUEUE.into(),
                job_names: JOB_NAMES.iter().map(|s| s.to_string()).collect(),
                default_concurrency: 2,
                rate_limit: None,
                handles_unknown_names: false,
                timeout_ms: None,
                inline_jobs: vec![],
                pending_jobs: vec![],
            }],
            config_keys: vec![],
        }
    }

    fn init(_config: &PluginConfig) -> Result<Self, plugin_api::InitError> {
        Ok(TestCrashes)
    }

    fn process(&self, job: &JobView, ctx: &JobContext<'_>) -> Outcome {
        match job.name.as_str() {
            "complete" => Outcome::completed(json!({ "ok": true })),
            "segfault" => {
                // A read through a pointer no mapping backs: what a use-after-free or a bad FFI call does.
                let address = black_box(8usize) as *const u64;
                // SAFETY: deliberately unsound; the point of this job is the resulting SIGSEGV.
                let value = unsafe { std::ptr::read_volatile(address) };
                Outcome::completed(json!({ "unreachable": value }))
            }
            "abort" => std::process::abort(),
            "stack-overflow" => Outcome::completed(json!({ "depth": recurse(black_box(1)) })),
            "exit" => std::process::exit(3),
            "sleep" => {
                let data: Map<String, Value> = job.data().unwrap_or_default();
                let ms = data.get("ms").and_then(Value::as_u64).unwrap_or(1000);
                let end = Instant::now() + Duration::from_millis(ms);
                while Instant::now() < end {
                    if ctx.is_cancelled() {
                        return Outcome::failed("cancelled");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Outcome::completed(json!({ "slept": ms }))
            }
            other => Outcome::unrecoverable(format!("unknown job name {other}")),
        }
    }
}

/// Recursion that never ends, with a frame the optimiser cannot remove.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    recurse(frame[3] + 1) + frame[7]
}

export_plugin!(TestCrashes);
