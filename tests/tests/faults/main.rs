//! The fault suite: the worker under the failures an operator meets — Redis restarts under load, a host
//! killed with SIGKILL (a second host or a Node worker takes over), SIGTERM under load, hostile clients on the
//! ops port, hostile job data, a poisoned plugin directory, database and provider outages during SMS — and the
//! misleading diagnostics fixed with them.
//!
//! Every scenario starts its own Redis (and PostgreSQL, fake provider) and counts every job at the end: each
//! completed exactly once (one plugin run, one `completed` event) or failed with a reason; none missing,
//! none left in `active`. Lock and stalled intervals are shortened through `QUEUE_<Q>_*` so crashes recover
//! in seconds. Each scenario prints its figures (`FAULT <scenario>: ...`) for the record.

mod crash;
mod diagnostics;
mod hostile;
mod ops_port;
mod redis_restart;
mod sms;

use std::collections::BTreeMap;
use std::time::Duration;

use frostguard_tests::{
    free_port, http_get, json, serde_json::Value, NodeQueue, RedisServer, Worker, WorkerBuilder,
};

/// Short lock and stalled intervals for the test queue, so a crashed host's jobs come back in seconds.
pub const LOCK_MS: u64 = 3000;
pub const STALLED_MS: u64 = 1000;

pub fn short_intervals(b: WorkerBuilder) -> WorkerBuilder {
    b.env("QUEUE_TEST_OUTCOMES_LOCK_DURATION_MS", LOCK_MS.to_string())
        .env(
            "QUEUE_TEST_OUTCOMES_STALLED_INTERVAL_MS",
            STALLED_MS.to_string(),
        )
        .env("QUEUE_TEST_OUTCOMES_MAX_STALLED_COUNT", "5")
}

/// Spawns a worker with its ops endpoint on a free port (another port is tried when the free one was
/// taken before the host bound it); waits until ready.
pub fn spawn_with_http(build: impl Fn() -> WorkerBuilder) -> (Worker, u16) {
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port();
        match build().env("HTTP_PORT", port.to_string()).spawn_ready() {
            Ok(w) => return (w, port),
            Err(e) if format!("{e:#}").contains("HTTP_PORT") => last = format!("{e:#}"),
            Err(e) => panic!("host did not get ready: {e:#}"),
        }
    }
    panic!("no free HTTP port after 5 tries: {last}");
}

/// The value of Prometheus series `series` (`name{labels}` exactly as rendered), 0 when absent.
pub fn metric(port: u16, series: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").expect("/metrics answers");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `n` jobs of the test plugin that sleep `ms` and log each plugin run.
pub fn sleep_jobs(n: usize, ms: u64) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"name": "sleep", "data": {"ms": ms, "i": i, "logRun": true}, "opts": {"attempts": 3}}))
            .collect(),
    )
}

/// How every job of a scenario ended.
#[derive(Debug, Default)]
pub struct Tally {
    pub completed: usize,
    pub failed: usize,
    /// Jobs neither completed nor failed, with their state.
    pub unfinished: Vec<(String, String)>,
    /// Failed jobs without a reason.
    pub failed_without_reason: Vec<String>,
    /// Jobs whose plugin ran more than once (job log lines from `logRun`).
    pub ran_twice: Vec<String>,
    /// Jobs with other than exactly one `completed` event (completed jobs only).
    pub completed_not_once: Vec<String>,
}

impl Tally {
    /// Every job completed exactly once, run once.
    pub fn assert_all_completed_once(&self, what: &str) {
        assert!(
            self.unfinished.is_empty() && self.failed == 0,
            "{what}: not all completed: {self:?}"
        );
        assert!(
            self.completed_not_once.is_empty(),
            "{what}: completion recorded other than once: {self:?}"
        );
    }
}

/// Waits (up to `timeout`) for `ids` to finish, then counts them from Node's view and the event stream.
pub fn tally(q: &NodeQueue, ids: &[String], timeout: Duration) -> Tally {
    let out = q
        .call(
            "wait",
            json!({"ids": ids, "states": ["completed", "failed"], "timeoutMs": timeout.as_millis() as u64, "withLogs": true}),
        )
        .expect("wait for jobs");
    let jobs = out["jobs"].as_array().cloned().unwrap_or_default();
    let mut completed_events: BTreeMap<String, usize> = BTreeMap::new();
    for ev in q.events().expect("read events") {
        if ev["event"] == "completed" {
            *completed_events
                .entry(ev["jobId"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    let mut t = Tally::default();
    for job in jobs {
        let id = job["id"].as_str().unwrap_or_default().to_owned();
        let runs = job["logs"]
            .as_array()
            .map_or(0, |l| l.iter().filter(|x| *x == "plugin run").count());
        if runs > 1 {
            t.ran_twice.push(id.clone());
        }
        match job["state"].as_str().unwrap_or_default() {
            "completed" => {
                t.completed += 1;
                if completed_events.get(&id).copied().unwrap_or(0) != 1 {
                    t.completed_not_once.push(id);
                }
            }
            "failed" => {
                t.failed += 1;
                if job["failedReason"].as_str().unwrap_or_default().is_empty() {
                    t.failed_without_reason.push(id);
                }
            }
            other => t.unfinished.push((id, other.to_owned())),
        }
    }
    t
}

/// A Redis that keeps its data across a graceful restart (AOF, fsync on every write).
pub fn persistent_redis() -> RedisServer {
    RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"])
        .expect("start redis-server")
}
