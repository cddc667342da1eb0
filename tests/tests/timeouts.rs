//! Job time budgets: `QUEUE_<Q>_JOB_TIMEOUT_MS` turns
//! into each attempt's deadline, the plugin's `is_cancelled()` turns true when it passes, and an attempt that
//! overran fails retryably with `job timed out after <N> ms`, as Node BullMQ sees it. The test plugin's
//! `sleep` job polls `is_cancelled()` every 10 ms and returns a retryable "cancelled" failure when asked to
//! stop, which is how a well-behaved plugin reacts.

use std::time::{Duration, Instant};

use frostguard_tests::{
    free_port, http_get_body, json, wait_until, NodeQueue, RedisServer, Worker, TEST_QUEUE,
};

const BUDGET_VAR: &str = "QUEUE_TEST_OUTCOMES_JOB_TIMEOUT_MS";

/// The value of the sample line starting with `series` (`name{labels}`) in a Prometheus text body.
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Starts the host with a 300 ms budget and its HTTP endpoint on a free port. A port that was free when
/// picked can be taken by a server another test starts in the meantime; the host then exits at once naming
/// HTTP_PORT, and another port is tried.
fn start_with_http_port(redis: &RedisServer) -> (Worker, u16) {
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = free_port();
        match Worker::start_test_outcomes(
            redis,
            &[(BUDGET_VAR, "300"), ("HTTP_PORT", &port.to_string())],
        ) {
            Ok(worker) => return (worker, port),
            Err(e) if format!("{e:#}").contains("HTTP_PORT") => last_error = format!("{e:#}"),
            Err(e) => panic!("host did not get ready: {e:#}"),
        }
    }
    panic!("no free HTTP port for the host after 5 tries: {last_error}");
}

#[test]
fn an_overrunning_job_times_out_per_attempt_and_a_quick_one_completes() {
    let redis = RedisServer::start().expect("start redis-server");
    let (worker, http_port) = start_with_http_port(&redis);
    assert!(
        worker.has_line("queue consuming queue=test-outcomes concurrency=4 job_timeout_ms=300"),
        "the start line shows the budget after the usual fields:\n{}",
        worker.output_text()
    );
    let q = NodeQueue::new(&redis, TEST_QUEUE);

    let started = Instant::now();
    let slow = q
        .add_one("sleep", json!({"ms": 30_000}), json!({"attempts": 2}))
        .expect("add the slow job");
    let quick = q
        .add_one("sleep", json!({"ms": 50}), json!({"attempts": 2}))
        .expect("add the quick job");
    let jobs = q
        .wait_finished(&[slow.clone(), quick.clone()])
        .expect("both jobs finish");
    let took = started.elapsed();
    // Two attempts of 300 ms each plus scheduling and Node start-ups, against two full 30 s sleeps (60 s)
    // if the budget were ignored: a bound wide enough for a loaded machine that still tells them apart.
    assert!(
        took < Duration::from_secs(45),
        "timed-out attempts must not run their 30 s: took {took:?}"
    );

    let slow_job = jobs.iter().find(|j| j.id == slow).expect("slow job");
    assert_eq!(slow_job.state, "failed", "{slow_job:?}");
    assert_eq!(
        slow_job.failed_reason.as_deref(),
        Some("job timed out after 300 ms"),
        "{slow_job:?}"
    );
    assert_eq!(
        slow_job.attempts_made, 2,
        "the timeout is a retryable failure: both attempts are used"
    );
    let (processed, finished) = (
        slow_job.processed_on.expect("processedOn"),
        slow_job.finished_on.expect("finishedOn"),
    );
    let last_attempt = finished.saturating_sub(processed);
    assert!(
        (300..10_000).contains(&last_attempt),
        "the last attempt ran for its budget, then stopped: {last_attempt} ms"
    );

    let quick_job = jobs.iter().find(|j| j.id == quick).expect("quick job");
    assert_eq!(quick_job.state, "completed", "{quick_job:?}");
    assert_eq!(quick_job.returnvalue, json!({"slept": 50}));
    assert_eq!(quick_job.attempts_made, 1, "{quick_job:?}");

    // A WARN names the queue and job with the reason. (The "overran its time budget" line comes only when
    // the deadline timer fires before the plugin returns, which a prompt plugin can win: not asserted.)
    let warned = worker
        .wait_for_line(
            &format!("job_id={slow} reason=job timed out after 300 ms"),
            Duration::from_secs(10),
        )
        .expect("a WARN per timed-out attempt");
    assert!(
        warned.contains("WARN") && warned.contains("queue=test-outcomes"),
        "{warned}"
    );

    // The host counts a timed-out attempt before it hands the outcome to Redis, so once Node sees both jobs
    // finished the count is final: read it once, no waiting for a threshold that a late extra count would
    // pass unseen. Then read it again after one more job has gone through the same worker.
    let series = format!("frostguard_jobs_timed_out_total{{queue=\"{TEST_QUEUE}\"}}");
    let timed_out = || {
        let body = wait_until(Duration::from_secs(10), "/metrics answering", || {
            http_get_body(http_port, "/metrics")
        })
        .expect("the worker serves /metrics");
        metric(&body, &series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
    };
    assert_eq!(
        timed_out(),
        2.0,
        "one per timed-out attempt, none for the quick job"
    );
    let later = q
        .add_one("sleep", json!({"ms": 10}), json!({"attempts": 1}))
        .expect("add a later job");
    let later = q.wait_finished(&[later]).expect("the later job finishes");
    assert_eq!(later[0].state, "completed", "{:?}", later[0]);
    assert_eq!(timed_out(), 2.0, "no count arrives after the jobs finished");
}

#[test]
fn a_budget_of_zero_means_no_timeout() {
    let redis = RedisServer::start().expect("start redis-server");
    let worker = Worker::start_test_outcomes(&redis, &[(BUDGET_VAR, "0")]).expect("host ready");
    let start_line = worker
        .lines()
        .into_iter()
        .find(|l| l.contains("queue consuming queue=test-outcomes"))
        .expect("per-queue start line");
    assert!(
        !start_line.contains("job_timeout_ms"),
        "no budget, none shown: {start_line}"
    );
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    // Longer than any budget a test would set, short enough to keep the suite quick.
    let id = q
        .add_one("sleep", json!({"ms": 800}), json!({"attempts": 1}))
        .expect("add the job");
    let jobs = q.wait_finished(&[id]).expect("the job finishes");
    assert_eq!(jobs[0].state, "completed", "{:?}", jobs[0]);
    assert_eq!(jobs[0].returnvalue, json!({"slept": 800}));
}
