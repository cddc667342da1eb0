//! The host's life around its jobs: a Redis restart under it, SIGTERM during a long job (the next worker runs
//! it), SIGINT letting a short job finish, and a crashed worker's job recovered by stall detection.

use crate::{assert_logged, event_times, setup, wait_finished_one, wait_state};
use frostguard_tests::{json, NodeQueue, RedisServer, Worker, TEST_QUEUE};
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

    redis.kill();
    // Let the host notice the outage (its connections fail) before Redis comes back, empty.
    std::thread::sleep(Duration::from_secs(2));
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
fn sigterm_during_a_long_job_exits_0_leaves_the_job_unfinished_and_the_next_worker_runs_it() {
    let redis = RedisServer::start().unwrap();
    let mut env = QUICK_RECOVERY.to_vec();
    env.push(("SHUTDOWN_TIMEOUT_MS", "500"));
    let mut worker = Worker::start_test_outcomes(&redis, &env).unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let id = q
        .add_one("sleep", json!({"ms": 4000}), json!({"attempts": 1}))
        .unwrap();
    wait_state(&q, &id, "active");
    let status = worker.terminate(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", worker.output_text());
    assert_logged(&worker, "shutdown begin");
    assert_logged(&worker, "shutdown complete");
    let job = q.job(&id).unwrap();
    assert!(
        job.state == "active" || job.state == "waiting",
        "an interrupted job is neither completed nor failed: {job:?}"
    );
    assert_eq!(job.attempts_made, 0, "{job:?}");
    assert_eq!(job.failed_reason, None, "{job:?}");
    assert!(job.finished_on.is_none(), "{job:?}");

    // Another worker takes it over and runs it in full (with attempts: 1 it was not failed on the way).
    let _next = Worker::start_test_outcomes(&redis, &QUICK_RECOVERY).unwrap();
    let job = wait_finished_one(&q, &id);
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(job.returnvalue, json!({"slept": 4000}));
    assert_eq!(job.attempts_made, 1, "{job:?}");
}

#[test]
fn a_crashed_workers_job_is_recovered_by_stall_detection_and_completed_once() {
    let redis = RedisServer::start().unwrap();
    let mut crashed = Worker::start_test_outcomes(&redis, &QUICK_RECOVERY).unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let id = q
        .add_one("sleep", json!({"ms": 3000}), json!({"attempts": 1}))
        .unwrap();
    wait_state(&q, &id, "active");
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
    let (_redis, mut worker, q) = setup(&[]);
    let id = q.add_one("sleep", json!({"ms": 1500}), json!({})).unwrap();
    wait_state(&q, &id, "active");
    worker.sigint().unwrap();
    let status = worker.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", worker.output_text());
    let job = q.job(&id).unwrap();
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(job.returnvalue, json!({"slept": 1500}));
}
