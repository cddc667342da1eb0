//! Pending jobs: the job names a plugin completes later (`QueueInfo::pending_jobs`; the test plugin's
//! `sleep` and its `pending-*` fault jobs). The plugin's `start` takes the job on the thread that received it
//! and returns; its timer thread completes it. No thread of the host (in-process) or of the plugin process
//! waits for such a job, its progress and log lines still reach Redis before its result, and the host ends
//! every pending job the plugin mishandles: never completed (at its deadline plus the grace, and at the
//! shutdown deadline), completed twice (the first outcome counts), dropped (a retryable failure), or held
//! by a plugin process that dies. `plugins run` gives up a pending job never completed, in both modes.

use std::time::Duration;

use frostguard_tests::*;

const MODES: [&str; 2] = ["in-process", "process"];

fn host(redis: &RedisServer, isolation: &str, env: &[(&str, &str)]) -> Worker {
    let mut b = Worker::builder()
        .redis(redis)
        .plugins(&[TEST_PLUGIN])
        .env("PLUGIN_ISOLATION", isolation);
    for (k, v) in env {
        b = b.env(*k, *v);
    }
    b.spawn_ready()
        .unwrap_or_else(|e| panic!("{isolation}: the host gets ready: {e:#}"))
}

fn pending_jobs_hold_no_thread_and_write_before_their_result(isolation: &str) {
    let redis = RedisServer::start().expect("start redis-server");
    let worker = host(
        &redis,
        isolation,
        &[("QUEUE_TEST_OUTCOMES_CONCURRENCY", "16")],
    );
    let q = NodeQueue::new(&redis, TEST_QUEUE);

    // One job first: its progress and log line, written from the plugin's timer thread, come before its
    // result.
    let first = q
        .run(json!([{"name": "sleep", "data": {"ms": 20, "report": true, "logRun": true}}]))
        .expect("the job finishes")
        .remove(0);
    assert_eq!(first.state, "completed", "{isolation}: {first:?}");
    assert_eq!(first.returnvalue, json!({"slept": 20}), "{isolation}");
    assert_eq!(first.progress, json!(100), "{isolation}: {first:?}");
    assert_eq!(first.logs, vec!["plugin run", "woke"], "{isolation}");

    // Sixteen jobs waiting at once: the thread count stays where it was, where a blocking call would hold
    // one thread per job.
    let before = thread_count(worker.pid());
    let jobs: Vec<_> = (0..16)
        .map(|i| json!({"name": "sleep", "data": {"ms": 4000, "i": i}}))
        .collect();
    let ids = q.add(json!(jobs)).expect("add the jobs");
    q.wait_states(&ids, &["active"], Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{isolation}: all sixteen run at once: {e:#}"));
    let during = thread_count(worker.pid());
    assert!(
        during < before + 4,
        "{isolation}: {during} threads with sixteen jobs waiting, {before} before"
    );
    let done = q.wait_finished(&ids).expect("the jobs finish");
    assert!(
        done.iter().all(|j| j.state == "completed"),
        "{isolation}: {done:?}"
    );
}

#[test]
fn in_process_pending_jobs_hold_no_thread_and_write_before_their_result() {
    pending_jobs_hold_no_thread_and_write_before_their_result("in-process");
}

#[test]
fn process_mode_pending_jobs_hold_no_thread_and_write_before_their_result() {
    pending_jobs_hold_no_thread_and_write_before_their_result("process");
}

#[test]
fn a_pending_job_never_completed_times_out_and_one_cancelled_fails_as_cancelled() {
    for isolation in MODES {
        let redis = RedisServer::start().expect("start redis-server");
        let worker = host(
            &redis,
            isolation,
            &[("QUEUE_TEST_OUTCOMES_JOB_TIMEOUT_MS", "300")],
        );
        let q = NodeQueue::new(&redis, TEST_QUEUE);
        let never = q
            .add_one("pending-never", json!({}), json!({"attempts": 1}))
            .expect("add the job");
        let slow = q
            .add_one("sleep", json!({"ms": 60_000}), json!({"attempts": 1}))
            .expect("add the job");
        let jobs = q.wait_finished(&[never.clone(), slow.clone()]).unwrap();
        for job in &jobs {
            assert_eq!(job.state, "failed", "{isolation}: {job:?}");
            assert_eq!(
                job.failed_reason.as_deref(),
                Some("job timed out after 300 ms"),
                "{isolation}: {job:?}"
            );
        }
        let ended_by_host = |id: &str| {
            worker.lines().iter().any(|l| {
                l.contains("a pending job was not completed by its plugin")
                    && l.contains(&format!("job_id={id} "))
            })
        };
        assert!(
            ended_by_host(&never),
            "{isolation}: the host ended the job the plugin kept: {}",
            worker.output_text()
        );
        // The other worked as a well-behaved plugin does: it saw the cancellation and completed the job.
        assert!(
            !ended_by_host(&slow),
            "{isolation}: {}",
            worker.output_text()
        );
    }
}

#[test]
fn a_pending_job_never_completed_is_put_back_at_the_shutdown_deadline() {
    for isolation in MODES {
        let redis = RedisServer::start().expect("start redis-server");
        let mut worker = host(&redis, isolation, &[("SHUTDOWN_TIMEOUT_MS", "300")]);
        let q = NodeQueue::new(&redis, TEST_QUEUE);
        let id = q
            .add_one("pending-never", json!({}), json!({"attempts": 1}))
            .expect("add the job");
        wait_for_event(&redis, TEST_QUEUE, "active", &id, Duration::from_secs(30)).unwrap();
        let status = worker.terminate(Duration::from_secs(45)).unwrap();
        assert_eq!(status.code(), Some(0), "{}", worker.output_text());
        let job = q.job(&id).unwrap();
        assert_eq!(
            job.state, "waiting",
            "{isolation}: put back, neither completed nor failed: {job:?}"
        );
        assert_eq!(job.failed_reason, None, "{isolation}: {job:?}");
    }
}

#[test]
fn a_pending_job_completed_twice_keeps_the_first_outcome_and_one_dropped_fails() {
    for isolation in MODES {
        let redis = RedisServer::start().expect("start redis-server");
        let worker = host(&redis, isolation, &[]);
        let q = NodeQueue::new(&redis, TEST_QUEUE);
        let jobs = q
            .run(json!([
                {"name": "pending-twice", "data": {}, "opts": {"attempts": 1}},
                {"name": "pending-drop", "data": {}, "opts": {"attempts": 1}},
                {"name": "sleep", "data": {"ms": 10}},
            ]))
            .expect("the jobs finish");
        assert_eq!(jobs[0].state, "completed", "{isolation}: {:?}", jobs[0]);
        assert_eq!(jobs[0].returnvalue, json!({"first": true}), "{isolation}");
        worker
            .wait_for_line("second completion", Duration::from_secs(10))
            .unwrap();
        assert!(
            worker.has_line("accepted=false"),
            "{isolation}: the second completion is refused: {}",
            worker.output_text()
        );
        assert_eq!(jobs[1].state, "failed", "{isolation}: {:?}", jobs[1]);
        assert_eq!(
            jobs[1].failed_reason.as_deref(),
            Some("plugin test-outcomes dropped a pending job without an outcome"),
            "{isolation}"
        );
        assert_eq!(jobs[2].state, "completed", "{isolation}: {:?}", jobs[2]);
    }
}

#[test]
fn pending_jobs_of_a_plugin_process_that_dies_fail_retryably_and_the_next_ones_run() {
    let redis = RedisServer::start().expect("start redis-server");
    let worker = host(
        &redis,
        "process",
        &[("QUEUE_TEST_OUTCOMES_CONCURRENCY", "4")],
    );
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let held: Vec<_> = (0..4)
        .map(|i| json!({"name": "sleep", "data": {"ms": 60_000, "i": i}, "opts": {"attempts": 1}}))
        .collect();
    let ids = q.add(json!(held)).expect("add the jobs");
    q.wait_states(&ids, &["active"], Duration::from_secs(30))
        .expect("all four run");
    let tree = process_tree(worker.pid());
    let child = *tree.get(1).expect("the plugin process");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &child.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let jobs = q.wait_finished(&ids).expect("the held jobs finish");
    for job in &jobs {
        assert_eq!(job.state, "failed", "{job:?}");
        assert_eq!(
            job.failed_reason.as_deref(),
            Some("plugin process crashed: SIGKILL (plugin test-outcomes)"),
            "{job:?}"
        );
    }
    let next = q
        .run(json!([{"name": "sleep", "data": {"ms": 10}}]))
        .expect("a job after the restart finishes")
        .remove(0);
    assert_eq!(next.state, "completed", "{next:?}");
}

#[test]
fn plugins_run_gives_up_a_pending_job_never_completed_in_both_modes() {
    // `plugins run` waits for a pending job as the host does: until its deadline and the grace, no longer.
    let plugin = plugin_lib(TEST_PLUGIN).display().to_string();
    for isolation in MODES {
        let finished = Worker::builder()
            .env("RUST_LOG", "warn")
            .args([
                "plugins",
                "run",
                "--plugin",
                &plugin,
                "--queue",
                TEST_QUEUE,
                "--name",
                "pending-never",
                "--timeout-ms",
                "300",
                "--isolation",
                isolation,
            ])
            .output(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{isolation}: plugins run ends: {e:#}"));
        let text = finished.text();
        assert_eq!(finished.status.code(), Some(1), "{isolation}: {text}");
        assert!(
            text.contains("\"failed\"") && text.contains("did not complete the pending job"),
            "{isolation}: {text}"
        );
    }
}
