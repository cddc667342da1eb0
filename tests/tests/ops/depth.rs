//! Depth gauges and `stats --json` equal Node's `getJobCounts()` with jobs waiting, delayed, prioritized, on
//! a paused queue, and after some completed and failed.

use std::time::Duration;

use frostguard_tests::{json, now_ms, wait_until, NodeQueue, RedisServer, TEST_QUEUE};
use serde_json::Value;

use frostguard_tests::http_get_body;

use super::{metric, run_cli, start_with_http_port, stats_json};

const STATES: [&str; 7] = [
    "active",
    "completed",
    "delayed",
    "failed",
    "prioritized",
    "waiting",
    "waiting-children",
];

/// The `frostguard_queue_jobs` gauges of the test queue as a counts object, once all are present.
fn gauges(port: u16) -> Option<Value> {
    let body = http_get_body(port, "/metrics")?;
    let mut counts = serde_json::Map::new();
    for state in STATES {
        let series = format!("frostguard_queue_jobs{{queue=\"{TEST_QUEUE}\",state=\"{state}\"}}");
        counts.insert(state.to_owned(), json!(metric(&body, &series)? as u64));
    }
    Some(Value::Object(counts))
}

fn paused_gauge(port: u16) -> Option<f64> {
    metric(
        &http_get_body(port, "/metrics")?,
        &format!("frostguard_queue_paused{{queue=\"{TEST_QUEUE}\"}}"),
    )
}

/// Asserts that Node, `stats --json` and (once refreshed) the gauges report the same counts; returns the
/// test queue's `stats` entry.
fn assert_all_agree(redis: &RedisServer, q: &NodeQueue, port: u16, paused: bool) -> Value {
    let node = q.counts().expect("Node getJobCounts");
    let stats = stats_json(redis, &[TEST_QUEUE]);
    let entry = stats["queues"][0].clone();
    assert_eq!(entry["queue"], json!(TEST_QUEUE), "{stats}");
    assert_eq!(entry["counts"], node, "stats --json vs Node getJobCounts");
    assert_eq!(entry["paused"], json!(paused), "{entry}");
    assert_eq!(entry["exists"], json!(true), "{entry}");
    wait_until(
        Duration::from_secs(20),
        "depth gauges equal Node's counts",
        || {
            (gauges(port).as_ref() == Some(&node)
                && paused_gauge(port) == Some(if paused { 1.0 } else { 0.0 }))
            .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}: Node {node}, gauges {:?}", gauges(port)));
    entry
}

#[test]
fn depth_gauges_and_stats_equal_node_get_job_counts() {
    let redis = RedisServer::start().expect("start redis-server");
    let (worker, port) =
        start_with_http_port(&redis, &[("METRICS_QUEUE_DEPTH_INTERVAL_MS", "100")]);
    let q = NodeQueue::new(&redis, TEST_QUEUE);

    // Paused: the host takes nothing, so jobs pile up in each waiting state.
    q.pause().expect("pause");
    let waiting = q
        .add(json!([
            {"name": "complete", "data": {"result": 1}, "opts": {}},
            {"name": "fail", "data": {"message": "no"}, "opts": {"attempts": 1}},
            {"name": "complete", "data": {"result": 2}, "opts": {}},
        ]))
        .expect("add waiting jobs");
    let prioritized = q
        .add(json!([
            {"name": "complete", "data": {}, "opts": {"priority": 3}},
            {"name": "fail", "data": {}, "opts": {"priority": 1}},
        ]))
        .expect("add prioritized jobs");
    q.add(json!([
        {"name": "complete", "data": {}, "opts": {"delay": 600_000}},
        {"name": "complete", "data": {}, "opts": {"delay": 900_000}},
    ]))
    .expect("add delayed jobs");
    let first = q.job(&waiting[0]).expect("first job");
    let before_ms = now_ms();
    let entry = assert_all_agree(&redis, &q, port, true);
    let after_ms = now_ms();
    assert_eq!(entry["counts"]["waiting"], json!(3), "{entry}");
    assert_eq!(entry["counts"]["prioritized"], json!(2), "{entry}");
    assert_eq!(entry["counts"]["delayed"], json!(2), "{entry}");
    // The oldest waiting job is the first one added: its age lies between the clock readings around `stats`.
    let oldest = entry["oldestWaitingMs"].as_u64().expect("a job waits");
    assert!(
        oldest + 1 >= before_ms.saturating_sub(first.timestamp)
            && oldest <= after_ms - first.timestamp,
        "oldest waiting {oldest} ms, first job added at {} (clock {before_ms}..{after_ms})",
        first.timestamp
    );
    assert!(
        entry["workers"].as_u64().unwrap_or(0) >= 1,
        "the host's worker is listed: {entry}"
    );

    // Resumed: the host completes and fails what waits; the delayed jobs stay.
    q.resume().expect("resume");
    let mut ids = waiting.clone();
    ids.extend(prioritized);
    q.wait_finished(&ids).expect("jobs finish");
    let entry = assert_all_agree(&redis, &q, port, false);
    assert_eq!(entry["counts"]["completed"], json!(3), "{entry}");
    assert_eq!(entry["counts"]["failed"], json!(2), "{entry}");
    assert_eq!(entry["counts"]["delayed"], json!(2), "{entry}");
    assert_eq!(
        entry["oldestWaitingMs"],
        Value::Null,
        "nothing waits: {entry}"
    );

    // Without a queue argument every queue under the prefix is listed; the table names the columns.
    let all = stats_json(&redis, &[]);
    let names: Vec<&str> = all["queues"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["queue"].as_str())
        .collect();
    assert_eq!(names, [TEST_QUEUE], "{all}");
    let (code, table) = run_cli(&redis, &["stats"]);
    assert_eq!(code, Some(0), "{table}");
    let mut lines = table.lines();
    assert!(lines.next().unwrap_or("").starts_with("QUEUE"), "{table}");
    let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        row,
        [TEST_QUEUE, "0", "0", "2", "0", "3", "2", "0", "no", "1", "-"],
        "{table}"
    );
    drop(worker);
}
