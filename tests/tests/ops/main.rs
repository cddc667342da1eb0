//! The operators' surface end to end: queue-depth gauges on `/metrics` and `frostguard-worker stats`
//! against Node's `getJobCounts()`, and the `--help` environment sections.

mod depth;
mod enqueue;

use std::time::Duration;

use frostguard_tests::{free_port, RedisServer, Worker};
use serde_json::Value;

/// The value of the sample line starting with `series` (`name{labels}`) in a Prometheus text body.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Starts the host (test plugin) with its HTTP endpoint on a free port and extra variables; another port is
/// tried when the picked one was taken before the host bound it.
pub fn start_with_http_port(redis: &RedisServer, env: &[(&str, &str)]) -> (Worker, u16) {
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = free_port();
        let port_text = port.to_string();
        let mut vars = env.to_vec();
        vars.push(("HTTP_PORT", &port_text));
        match Worker::start_test_outcomes(redis, &vars) {
            Ok(worker) => return (worker, port),
            Err(e) if format!("{e:#}").contains("HTTP_PORT") => last_error = format!("{e:#}"),
            Err(e) => panic!("host did not get ready: {e:#}"),
        }
    }
    panic!("no free HTTP port for the host after 5 tries: {last_error}");
}

/// Runs `frostguard-worker <args>` against `redis` with logs limited to errors; exit code and stdout.
pub fn run_cli(redis: &RedisServer, args: &[&str]) -> (Option<i32>, String) {
    let out = Worker::builder()
        .redis(redis)
        .env("RUST_LOG", "error")
        .args(args.iter().copied())
        .output(Duration::from_secs(60))
        .expect("run the command");
    (out.status.code(), out.text())
}

/// `stats --json [queues]` parsed.
pub fn stats_json(redis: &RedisServer, queues: &[&str]) -> Value {
    let mut args = vec!["stats", "--json"];
    args.extend_from_slice(queues);
    let (code, text) = run_cli(redis, &args);
    assert_eq!(code, Some(0), "stats failed:\n{text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("stats --json printed no JSON ({e}):\n{text}"))
}

#[test]
fn help_of_each_command_documents_its_environment() {
    for (command, must, must_not) in [
        (
            "run",
            &[
                "REDIS_URL",
                "METRICS_QUEUE_DEPTH_INTERVAL_MS",
                "QUEUE_<Q>_CONCURRENCY",
            ][..],
            "—",
        ),
        (
            "stats",
            &["REDIS_URL", "REDIS_HOST", "BULLMQ_PREFIX", "LOG_FORMAT"][..],
            "SHUTDOWN_TIMEOUT_MS",
        ),
        (
            "plugins",
            &["PLUGIN_DIR", "PLUGIN_<NAME>_<KEY>"][..],
            "REDIS_URL",
        ),
    ] {
        let out = Worker::builder()
            .args([command, "--help"])
            .output(Duration::from_secs(30))
            .expect("run --help");
        let text = out.text();
        assert_eq!(out.status.code(), Some(0), "{text}");
        let env = text
            .split_once("Environment:")
            .unwrap_or_else(|| panic!("{command} --help has no Environment section:\n{text}"))
            .1;
        for var in must {
            assert!(env.contains(var), "{command} --help lacks {var}:\n{text}");
        }
        assert!(
            !env.contains(must_not),
            "{command} --help lists {must_not}:\n{text}"
        );
    }
}
