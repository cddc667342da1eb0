//! Interop with the real Node client: Node BullMQ 6.7.0 produces and observes, the host
//! (`frostguard-worker run` with the `test-outcomes` plugin) consumes, each test on its own redis-server.
//!
//! One test binary, one module per area:
//! * [`results`] — what Node sees of finished jobs: return values, failures, attempts, timestamps, events,
//!   progress and job logs, retention (`removeOnComplete` / `removeOnFail`).
//! * [`failures`] — the `stacktrace` of failed jobs (one entry per failed attempt, as a Node worker writes),
//!   and the key order of job data and return values.
//! * [`retries`] — backoff (exponential, fixed) and the plugin's retry-later (job and queue scope).
//! * [`scheduling`] — when jobs run: delays, priority and LIFO order, job schedulers, pause and resume.
//! * [`concurrency`] — how many jobs run at once: concurrency override, rate limit, a mixed fleet of a Node
//!   worker and the host.
//! * [`lifecycle`] — a Redis restart, SIGTERM / SIGINT during a job, a crashed worker's job recovered.
//! * [`connection`] — how the host finds Redis: `REDIS_HOST`/`REDIS_PORT`/`REDIS_PASSWORD`, a hash-tagged
//!   prefix, missing configuration.
//!
//! The helpers below are shared by the modules.

mod concurrency;
mod connection;
mod failures;
mod lifecycle;
mod results;
mod retries;
mod scheduling;

use frostguard_tests::now_ms;
use frostguard_tests::serde_json::Value;
use frostguard_tests::{JobSnapshot, NodeQueue, RedisServer, Worker, TEST_QUEUE};

/// A fresh Redis, the host consuming `test-outcomes` (ready), and Node's view of that queue.
fn setup(env: &[(&str, &str)]) -> (RedisServer, Worker, NodeQueue) {
    let redis = RedisServer::start().expect("start redis-server");
    let worker = Worker::start_test_outcomes(&redis, env).expect("host ready");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    (redis, worker, q)
}

/// Waits until job `id` is completed or failed and returns its snapshot.
fn wait_finished_one(q: &NodeQueue, id: &str) -> JobSnapshot {
    q.wait_finished(&[id.to_owned()]).unwrap().remove(0)
}

/// The job ids of a drive.mjs answer (`out["ids"]`), in the order the jobs were added.
fn ids_of(out: &Value) -> Vec<String> {
    out["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The events named `event` for job `id`, oldest first.
fn events_of<'a>(events: &'a [Value], event: &str, id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == event && e["jobId"] == id)
        .collect()
}

/// Redis times (ms) of the events named `event` for job `id`, oldest first.
fn event_times(events: &[Value], event: &str, id: &str) -> Vec<u64> {
    events_of(events, event, id)
        .iter()
        .map(|e| e["ms"].as_u64().expect("event ms"))
        .collect()
}

/// Asserts that each start in `actives` (ms, oldest first) came at least `min_gap_ms` after the one before,
/// allowing 20 ms for clock granularity; `what` names the gap in the failure message.
fn assert_starts_spaced(actives: &[u64], min_gap_ms: u64, what: &str) {
    for pair in actives.windows(2) {
        assert!(
            pair[1] - pair[0] + 20 >= min_gap_ms,
            "{what} not respected: {actives:?}"
        );
    }
}

/// Asserts that the worker logged a line containing `needle`.
fn assert_logged(worker: &Worker, needle: &str) {
    assert!(
        worker.has_line(needle),
        "no log line with {needle:?}:\n{}",
        worker.output_text()
    );
}

/// The matrix is real: drive.mjs runs with the Node BullMQ that `FROSTGUARD_NODE_BULLMQ` selects (6.7 by
/// default, 5.67 — FrostGuard's API's version — with `5`), so `scripts/test.sh` running this suite twice covers
/// both producer lines.
#[test]
fn node_producer_is_the_selected_bullmq_version() {
    let version = frostguard_tests::node_bullmq_version().unwrap();
    let expected = if frostguard_tests::bullmq_project_dir().is_some() {
        "5.67."
    } else {
        "6.7."
    };
    assert!(
        version.starts_with(expected),
        "{} selects {expected}x, drive.mjs runs bullmq {version}",
        frostguard_tests::NODE_BULLMQ_ENV
    );
}
