//! Test-only plugin `test-reload` (queue `test-reload`) for the hot reload tests, built twice from this one
//! source: package `fg-test-reload-v1` (version 1.0.0) and `fg-test-reload-v2` (version 2.0.0). A job returns
//! `{"v": <major version>}`, so a test can tell from Redis which build ran it. Never shipped.
//!
//! Job names: `version` (returns at once) and `sleep` (`{"ms"}`: works that long, stopping early only when
//! cancelled, then returns like `version`; a cancelled job fails instead, so a drain that cuts it short
//! shows). `RELOAD_FAIL_INIT=<major>` makes `init` of that build refuse to start.

#![forbid(unsafe_code)]

use std::thread;
use std::time::{Duration, Instant};

use plugin_api::serde_json::{json, Map, Value};
use plugin_api::{
    export_plugin, InitError, JobContext, JobView, Outcome, Plugin, PluginConfig, PluginInfo,
    QueueInfo,
};

/// The queue this plugin serves.
pub const QUEUE: &str = "test-reload";

/// The build's major version (1 or 2).
fn major() -> u64 {
    env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0)
}

/// The plugin; it keeps no state between jobs.
pub struct TestReload;

impl Plugin for TestReload {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "test-reload".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            queues: vec![QueueInfo {
                queue: QUEUE.into(),
                job_names: vec!["version".into(), "sleep".into()],
                default_concurrency: 4,
                rate_limit: None,
                handles_unknown_names: false,
                timeout_ms: None,
                inline_jobs: vec![],
                pending_jobs: vec![],
            }],
            config_keys: vec!["RELOAD_FAIL_INIT".into()],
        }
    }

    fn init(config: &PluginConfig) -> Result<Self, InitError> {
        if config.get("RELOAD_FAIL_INIT") == Some(major().to_string().as_str()) {
            return Err(InitError::new(format!(
                "RELOAD_FAIL_INIT={} requested",
                major()
            )));
        }
        Ok(TestReload)
    }

    fn process(&self, job: &JobView, ctx: &JobContext<'_>) -> Outcome {
        let data: Map<String, Value> = job.data().unwrap_or_default();
        if job.name == "sleep" {
            let ms = data.get("ms").and_then(Value::as_u64).unwrap_or(0);
            let until = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < until {
                if ctx.is_cancelled() {
                    return Outcome::failed("cancelled before the work was done");
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
        Outcome::completed(json!({ "v": major() }))
    }
}

export_plugin!(TestReload);
