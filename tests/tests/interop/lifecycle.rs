//! The host's life around its jobs: a Redis restart under it, SIGTERM during a long job (the next worker runs
//! it), SIGINT letting a short job finish, and a crashed worker's job recovered by stall detection.

use crate::{assert_logged, event_times, setup, wait_finished_one};
use frostguard_tests::{json, wait_for_event, NodeQueue, RedisServer, Worker, TEST_QUEUE};
use std::time::Duration;

/// Short locks and stall checks, so that a job abandoned by one host is recovered by the next in seconds.
const QUICK_RECOVERY: [(&str, &str); 2] = [
    ("QUEUE_TEST_OUTCOMES_LOCK_DURATION_MS", "2000"),
    ("QUEUE_TEST_OUTCOMES_STALLED_INTERVAL_MS", "1000"),
];

#[test]
fn host_reconnects_after_a_redis_restart_and_processes_new_jobs() {
    let (mut redis, mut worker, q) = setup(&[]);
    let before = q
        .run(json!([{"name": "complete", "data": {"result": "before"}}]))
        .unwrap();
    assert_eq!(before[0].state, "completed");

    let from = worker.line_count();
    redis.kill();
    // The host has noticed the outage (its worker's connection failed) before Redis comes back, empty.
    worker
        .wait_for_line_after(
            from,
            "worker error queue=test-outcomes",
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(
        worker.is_running(),
        "a Redis outage must not stop the worker"
    );
    redis.restart().unwrap();

    let ids = q
        .add(json!([{"name": "complete", "data": {"result": "after"}}]))
        .unwrap();
    let after = q
        .wait_states(&ids, &["completed", "failed"], Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", worker.output_text()));
    assert_eq!(after[0].state, "completed");
    assert_eq!(after[0].returnvalue, json!("after"));
    assert!(worker.is_running());
}

#[test]
fn sigterm_during_a_long_job_exits_0_puts_the_job_back_and_the_next_worker_runs_it() {
    let redis = RedisServer::start().unwrap();
    let mut env = QUICK_RECOVERY.to_vec();
    env.push(("SHUTDOWN_TIMEOUT_MS", "500"));
    env.push(("QUEUE_TEST_OUTCOMES_CONCURRENCY", "1"));
    let mut worker = Worker::start_test_outcomes(&redis, &env).unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let ids = q
        .add(json!([
            {"name": "sleep", "data": {"ms": 4000}, "opts": {"attempts": 1}},
            {"name": "complete", "data": {"result": "queued behind"}},
        ]))
        .unwrap();
    let (id, queued) = (ids[0].clone(), ids[1].clone());
    wait_for_event(&redis, TEST_QUEUE, "active", &id, Duration::from_secs(30)).unwrap();
    let status = worker.terminate(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", worker.output_text());
    assert_logged(&worker, "shutdown begin");
    assert_logged(&worker, "shutdown complete");
    // Put back by the drain itself (no other worker runs, so stalled-job recovery cannot have done it).
    let job = q.job(&id).unwrap();
    assert_eq!(
        job.state, "waiting",
        "neither completed nor failed: {job:?}"
    );
    assert_eq!(job.stalled_counter, 0, "not a stalled job: {job:?}");
    assert_eq!(job.attempts_made, 0, "{job:?}");
    assert_eq!(job.failed_reason, None, "{job:?}");
    assert!(job.finished_on.is_none(), "{job:?}");
    // The job waiting behind it was never started by the stopping worker.
    let behind = q.job(&queued).unwrap();
    assert_eq!(behind.state, "waiting", "{behind:?}");
    assert_eq!(behind.attempts_started, 0, "{behind:?}");
    let events = q.events().unwrap();
    assert!(
        event_times(&events, "active", &queued).is_empty(),
        "{events:?}"
    );

    // Another worker takes both over and runs the long one in full (with attempts: 1 it was not failed on
    // the way), as a fresh start rather than a stalled one.
    let _next = Worker::start_test_outcomes(&redis, &QUICK_RECOVERY).unwrap();
    let jobs = q.wait_finished(&ids).unwrap();
    let job = &jobs[0];
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(job.returnvalue, json!({"slept": 4000}));
    assert_eq!(job.attempts_made, 1, "{job:?}");
    assert_eq!(
        job.attempts_started, 2,
        "started twice, one attempt used: {job:?}"
    );
    assert_eq!(job.stalled_counter, 0, "{job:?}");
    assert_eq!(jobs[1].state, "completed", "{:?}", jobs[1]);
    let events = q.events().unwrap();
    assert_eq!(event_times(&events, "active", &id).len(), 2, "{events:?}");
    assert!(
        event_times(&events, "stalled", &id).is_empty(),
        "{events:?}"
    );
}

#[test]
fn a_crashed_workers_job_is_recovered_by_stall_detection_and_completed_once() {
    let redis = RedisServer::start().unwrap();
    let mut crashed = Worker::start_test_outcomes(&redis, &QUICK_RECOVERY).unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let id = q
        .add_one("sleep", json!({"ms": 3000}), json!({"attempts": 1}))
        .unwrap();
    wait_for_event(&redis, TEST_QUEUE, "active", &id, Duration::from_secs(30)).unwrap();
    crashed.kill();

    let _next = Worker::start_test_outcomes(&redis, &QUICK_RECOVERY).unwrap();
    let job = wait_finished_one(&q, &id);
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(job.returnvalue, json!({"slept": 3000}));
    assert_eq!(job.attempts_started, 2, "{job:?}");
    assert_eq!(job.stalled_counter, 1, "{job:?}");
    let events = q.events().unwrap();
    assert_eq!(event_times(&events, "stalled", &id).len(), 1, "{events:?}");
    assert_eq!(event_times(&events, "completed", &id).len(), 1);
}

#[test]
fn sigint_lets_a_short_in_flight_job_finish_before_exit() {
    let (redis, mut worker, q) = setup(&[]);
    let id = q.add_one("sleep", json!({"ms": 1500}), json!({})).unwrap();
    wait_for_event(&redis, TEST_QUEUE, "active", &id, Duration::from_secs(30)).unwrap();
    worker.sigint().unwrap();
    let status = worker.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", worker.output_text());
    let job = q.job(&id).unwrap();
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(job.returnvalue, json!({"slept": 1500}));
}
