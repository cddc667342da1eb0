//! How many jobs run at once: the per-queue concurrency override, the worker rate limit, and a mixed fleet (a
//! Node worker and the host on one queue) completing every job exactly once.

use crate::{assert_logged, setup};
use frostguard_tests::serde_json::Value;
use frostguard_tests::{json, wait_until, NodeQueue, RedisServer, Worker, TEST_QUEUE};
use std::time::Duration;

#[test]
fn worker_rate_limit_is_honoured() {
    let (_redis, worker, q) = setup(&[
        ("QUEUE_TEST_OUTCOMES_RATE_LIMIT_MAX", "2"),
        ("QUEUE_TEST_OUTCOMES_RATE_LIMIT_DURATION_MS", "1000"),
    ]);
    let jobs: Vec<Value> = (0..8)
        .map(|i| json!({"name": "complete", "data": {"result": i}}))
        .collect();
    let ids = q.add_bulk(Value::Array(jobs)).unwrap();
    let jobs = q.wait_finished(&ids).unwrap();
    assert!(jobs.iter().all(|j| j.state == "completed"), "{jobs:?}");
    let mut started: Vec<u64> = jobs.iter().map(|j| j.processed_on.unwrap()).collect();
    started.sort();
    // At most 2 jobs per 1000 ms window: job 2k cannot start before k windows have passed since job 0.
    for k in 1..4 {
        let gap = started[2 * k] - started[0];
        assert!(
            gap + 50 >= 1000 * k as u64,
            "job {} started {gap} ms after job 0 (limit 2/s): {started:?}\n{}",
            2 * k,
            worker.output_text()
        );
    }
}

#[test]
fn concurrency_override_bounds_parallel_jobs() {
    let (_redis, worker, q) = setup(&[("QUEUE_TEST_OUTCOMES_CONCURRENCY", "2")]);
    assert_logged(&worker, "queue consuming queue=test-outcomes concurrency=2");
    let jobs: Vec<Value> = (0..6)
        .map(|_| json!({"name": "sleep", "data": {"ms": 700}}))
        .collect();
    let ids = q.add_bulk(Value::Array(jobs)).unwrap();
    let jobs = q.wait_finished(&ids).unwrap();
    assert!(jobs.iter().all(|j| j.state == "completed"), "{jobs:?}");
    // Most jobs running at once, from [processedOn, finishedOn) intervals.
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for j in &jobs {
        edges.push((j.processed_on.unwrap(), 1));
        edges.push((j.finished_on.unwrap(), -1));
    }
    edges.sort();
    let (mut running, mut most) = (0, 0);
    for (_, d) in edges {
        running += d;
        most = most.max(running);
    }
    assert_eq!(
        most, 2,
        "concurrency 2: at most 2 at once, and 6 sleeping jobs do overlap"
    );
}

#[test]
fn mixed_fleet_of_node_worker_and_host_completes_each_job_exactly_once() {
    let redis = RedisServer::start().unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let count = 3000;
    let gate = "fleet-gate";
    // The Node worker starts first and holds the jobs it takes until the gate opens; the host starts once
    // Node has taken one, and the gate opens once the host has completed one. So both take part for sure
    // (not by the odds of 3,000 jobs), and from then on they compete for the rest.
    let fleet = q
        .spawn(
            "mixed-fleet",
            json!({"count": count, "concurrency": 4, "timeoutMs": 240000, "gateKey": gate}),
        )
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the Node worker took a job",
        || {
            let runs = redis.cmd(&["HLEN", "bull:test-outcomes:node-runs"]).ok()?;
            (runs.as_int()? > 0).then_some(())
        },
    )
    .unwrap();
    let worker = Worker::start_test_outcomes(&redis, &[]).unwrap();
    wait_until(Duration::from_secs(60), "the host completed a job", || {
        let done = redis.cmd(&["ZCARD", "bull:test-outcomes:completed"]).ok()?;
        (done.as_int()? > 0).then_some(())
    })
    .unwrap();
    redis.cmd(&["SET", gate, "open"]).unwrap();
    let out = fleet
        .join(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}\n{}", worker.output_text()));
    assert_eq!(out["timedOut"], false, "states: {}", out["states"]);
    assert_eq!(
        out["states"],
        json!({"completed": count}),
        "every job completed"
    );
    let by_node = out["byNode"].as_u64().unwrap();
    let by_host = out["byOther"].as_u64().unwrap();
    assert_eq!(by_node + by_host, count);
    assert!(
        by_node > 0 && by_host > 0,
        "both workers took jobs: node {by_node}, host {by_host}"
    );
    assert_eq!(
        out["wrongValue"],
        json!([]),
        "returnvalue belongs to its job"
    );

    assert_eq!(out["jobs"], count);
    // Exactly once, as the event stream records it: one `active` and one `completed` per job.
    assert_eq!(out["activeNotOnce"], json!([]), "[job id, times active]");
    assert_eq!(
        out["completedNotOnce"],
        json!([]),
        "[job id, times completed]"
    );
    assert_eq!(out["nodeRanTwice"], json!([]), "node ran these jobs twice");
    assert_eq!(
        out["nodeRunsTotal"], by_node,
        "node's own run count matches the jobs it completed"
    );
}
