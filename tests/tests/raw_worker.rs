//! The benchmark's floor (examples/raw_worker: BullMQ's scripts driven with no library) leaves what a Node
//! worker leaves: jobs a Node producer adds are completed with their `returnvalue`, the completed set holds
//! every one, Node's getters read them, the event stream has each job's `active` and `completed` events, a
//! job's own `removeOnComplete` is honoured, and a job added to the idle worker (blocked on the marker) is
//! still picked up. Both of its drivers are covered: the blocking loop (concurrency 1) and the slot tasks
//! (above 1). Build it first: `cargo build -p frostguard-tests --example raw-worker` (scripts/test.sh does).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use frostguard_tests::*;

/// The raw worker on `redis`, consuming `queue` at `concurrency`, once it printed `ready`.
fn start_raw(redis: &RedisServer, queue: &str, concurrency: usize) -> Child {
    let bin = build_dir().join("examples").join("raw-worker");
    assert!(
        bin.is_file(),
        "{} is not built: cargo build -p frostguard-tests --example raw-worker",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .args([&redis.url(), queue, &concurrency.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn raw-worker");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read raw-worker's first line");
    assert_eq!(line.trim(), "ready", "raw-worker did not start");
    child
}

/// SIGTERM, then the worker must exit on its own, successfully.
fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait for raw-worker") {
            assert!(status.success(), "raw-worker exited with {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "raw-worker did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Jobs as Node's producer adds them: `complete` jobs whose results are numbers, text, objects or missing,
/// and one `sleep` job.
fn jobs(count: usize) -> serde_json::Value {
    let mut jobs: Vec<serde_json::Value> = (0..count)
        .map(|i| match i % 4 {
            0 => json!({"name": "complete", "data": {"result": i}}),
            1 => json!({"name": "complete", "data": {"result": format!("r{i}")}}),
            2 => json!({"name": "complete", "data": {"result": {"i": i, "nested": [1, 2]}}}),
            _ => json!({"name": "complete", "data": {"other": i}}),
        })
        .collect();
    jobs.push(json!({"name": "sleep", "data": {"ms": 30}}));
    serde_json::Value::Array(jobs)
}

fn expected_returnvalue(job: &JobSnapshot) -> serde_json::Value {
    if job.name == "sleep" {
        return json!({"slept": job.data["ms"]});
    }
    job.data
        .get("result")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

fn drains_like_a_node_worker(concurrency: usize) {
    let redis = RedisServer::start().expect("start redis-server");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let ids = q.add_bulk(jobs(40)).expect("add the jobs");
    let worker = start_raw(&redis, TEST_QUEUE, concurrency);

    let done = q.wait_finished(&ids).expect("every job finishes");
    for job in &done {
        assert_eq!(job.state, "completed", "c={concurrency}: {job:?}");
        assert_eq!(
            job.returnvalue,
            expected_returnvalue(job),
            "c={concurrency}: {job:?}"
        );
        assert_eq!(job.attempts_made, 1, "c={concurrency}: {job:?}");
        assert!(
            job.processed_on.is_some() && job.finished_on.is_some(),
            "c={concurrency}: {job:?}"
        );
    }
    let completed = redis
        .cmd(&["ZCARD", "bull:test-outcomes:completed"])
        .expect("ZCARD");
    assert_eq!(
        completed.as_int(),
        Some(ids.len() as i64),
        "c={concurrency}"
    );
    let active = redis
        .cmd(&["LLEN", "bull:test-outcomes:active"])
        .expect("LLEN");
    assert_eq!(
        active.as_int(),
        Some(0),
        "c={concurrency}: nothing left active"
    );

    // The worker now waits on the marker; a job added to the empty queue is picked up, and its own
    // `removeOnComplete` is applied when it completes.
    let kept = q
        .add_one("complete", json!({"result": "late"}), json!({}))
        .expect("add a job to the idle worker");
    let removed = q
        .add_one(
            "complete",
            json!({"result": "gone"}),
            json!({"removeOnComplete": true}),
        )
        .expect("add a job removed on completion");
    let late = q
        .wait_states(
            std::slice::from_ref(&kept),
            &["completed"],
            Duration::from_secs(30),
        )
        .expect("the late job completes")
        .remove(0);
    assert_eq!(late.returnvalue, json!("late"), "c={concurrency}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while q.job(&removed).expect("snapshot").state != "missing" {
        assert!(
            Instant::now() < deadline,
            "c={concurrency}: a removeOnComplete job was not removed"
        );
        std::thread::sleep(Duration::from_millis(25));
    }

    let events = queue_events(&redis, "bull", TEST_QUEUE).expect("read the events");
    for id in ids.iter().chain([&kept, &removed]) {
        for event in ["active", "completed"] {
            assert!(
                events
                    .iter()
                    .any(|e| e["event"] == event && e["jobId"] == id.as_str()),
                "c={concurrency}: no {event} event for job {id}"
            );
        }
    }
    assert!(
        events.iter().any(|e| e["event"] == "drained"),
        "c={concurrency}: no drained event"
    );
    stop(worker);
}

#[test]
fn blocking_driver_drains_like_a_node_worker() {
    drains_like_a_node_worker(1);
}

#[test]
fn slot_tasks_drain_like_a_node_worker() {
    drains_like_a_node_worker(4);
}
