//! Interop with the real Node client (issue 3): Node BullMQ 6.7.0 produces and observes, the host
//! (`frostguard-worker run` with the `test-outcomes` plugin) consumes, each test on its own redis-server.

use frostguard_tests::serde_json::Value;
use frostguard_tests::{
    json, wait_until, JobSnapshot, NodeQueue, RedisServer, Worker, TEST_PLUGIN, TEST_QUEUE,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A fresh Redis, the host consuming `test-outcomes` (ready), and Node's view of that queue.
fn setup(env: &[(&str, &str)]) -> (RedisServer, Worker, NodeQueue) {
    let redis = RedisServer::start().expect("start redis-server");
    let worker = Worker::start_test_outcomes(&redis, env).expect("host ready");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    (redis, worker, q)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Redis times (ms) of the events named `event` for job `id`, oldest first.
fn event_times(events: &[Value], event: &str, id: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["event"] == event && e["jobId"] == id)
        .map(|e| e["ms"].as_u64().expect("event ms"))
        .collect()
}

/// Job ids in the order they became active.
fn active_order(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "active")
        .map(|e| e["jobId"].as_str().expect("jobId").to_string())
        .collect()
}

fn by_id<'a>(jobs: &'a [JobSnapshot], id: &str) -> &'a JobSnapshot {
    jobs.iter().find(|j| j.id == id).expect("job present")
}

#[test]
fn add_and_add_bulk_are_completed_with_returnvalue_attempts_and_timestamps() {
    let (_redis, worker, q) = setup(&[]);
    assert!(
        worker.has_line("queue consuming queue=test-outcomes concurrency=4"),
        "start line per queue with the plugin's default concurrency:\n{}",
        worker.output_text()
    );
    let before = now_ms();
    let mut ids = q
        .add(json!([
            {"name": "complete", "data": {"result": {"sent": true, "n": 1}}},
            {"name": "complete", "data": {"orgId": "o-1"}},
        ]))
        .unwrap();
    ids.extend(
        q.add_bulk(json!([
            {"name": "complete", "data": {"result": "plain string"}},
            {"name": "complete", "data": {"result": 42}},
            {"name": "complete", "data": {"result": null}},
        ]))
        .unwrap(),
    );
    let jobs = q.wait_finished(&ids).unwrap();
    let expected = [
        json!({"sent": true, "n": 1}),
        json!({"echo": {"orgId": "o-1"}}),
        json!("plain string"),
        json!(42),
        Value::Null,
    ];
    for (job, want) in jobs.iter().zip(expected.iter()) {
        assert_eq!(job.state, "completed", "{job:?}");
        assert_eq!(&job.returnvalue, want, "returnvalue of {}", job.id);
        assert_eq!(job.attempts_made, 1, "{job:?}");
        assert_eq!(job.attempts_started, 1, "{job:?}");
        assert_eq!(job.failed_reason, None);
        let processed = job.processed_on.expect("processedOn");
        let finished = job.finished_on.expect("finishedOn");
        assert!(job.timestamp >= before - 1000, "{job:?}");
        assert!(
            processed >= job.timestamp,
            "processedOn before timestamp: {job:?}"
        );
        assert!(
            finished >= processed,
            "finishedOn before processedOn: {job:?}"
        );
    }
    let counts = q.counts().unwrap();
    assert_eq!(counts["completed"], 5, "{counts}");
    assert_eq!(counts["failed"], 0, "{counts}");
}

#[test]
fn queue_events_and_wait_until_finished_see_results_and_failures() {
    let (_redis, _worker, q) = setup(&[]);
    let out = q
        .call(
            "events-flow",
            json!({
                "jobs": [
                    {"name": "complete", "data": {"result": {"value": 7}}},
                    {"name": "complete", "data": {"x": "y"}},
                    {"name": "fail", "data": {"message": "provider said no"}, "opts": {"attempts": 1}},
                ],
                "timeoutMs": 30000,
            }),
        )
        .unwrap();
    let ids: Vec<String> = out["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let results = out["results"].as_array().unwrap();
    assert_eq!(results[0]["ok"], true, "{out}");
    assert_eq!(results[0]["value"], json!({"value": 7}));
    assert_eq!(results[1]["ok"], true, "{out}");
    assert_eq!(results[1]["value"], json!({"echo": {"x": "y"}}));
    assert_eq!(results[2]["ok"], false, "{out}");
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .contains("provider said no"),
        "{out}"
    );

    let events = out["events"].as_array().unwrap();
    let completed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "completed")
        .collect();
    assert_eq!(
        completed.len(),
        2,
        "one completed event per job: {events:?}"
    );
    let rv0 = completed
        .iter()
        .find(|e| e["jobId"] == ids[0].as_str())
        .expect("completed event of job 1");
    assert_eq!(rv0["returnvalue"], json!({"value": 7}));
    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0]["jobId"], ids[2].as_str());
    assert_eq!(failed[0]["failedReason"], "provider said no");
}

#[test]
fn exponential_backoff_retries_with_growing_delays_then_fails_with_attempts_made_3() {
    let (_redis, _worker, q) = setup(&[]);
    let delay = 400;
    let id = q
        .add_one(
            "fail",
            json!({"message": "flaky provider"}),
            json!({"attempts": 3, "backoff": {"type": "exponential", "delay": delay}}),
        )
        .unwrap();
    let job = q
        .wait_finished(std::slice::from_ref(&id))
        .unwrap()
        .remove(0);
    assert_eq!(job.state, "failed", "{job:?}");
    assert_eq!(job.failed_reason.as_deref(), Some("flaky provider"));
    assert_eq!(job.attempts_made, 3, "{job:?}");
    assert_eq!(job.attempts_started, 3, "{job:?}");

    let events = q.events().unwrap();
    let actives = event_times(&events, "active", &id);
    assert_eq!(actives.len(), 3, "three attempts: {events:?}");
    // Attempt n+1 starts no earlier than the backoff after attempt n: delay * 2^(n-1).
    for (n, pair) in actives.windows(2).enumerate() {
        let wanted = delay << n;
        let gap = pair[1] - pair[0];
        assert!(
            gap + 20 >= wanted,
            "gap before attempt {} is {gap} ms, backoff is {wanted} ms",
            n + 2
        );
    }
    // The `delayed` events carry the due time: the host's failure time + the exponential backoff. The event's
    // own (Redis) time is a little later than the host's clock reading, so allow for that latency.
    let delayed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "delayed" && e["jobId"] == id.as_str())
        .collect();
    assert_eq!(delayed.len(), 2, "two retries were scheduled: {events:?}");
    for (n, ev) in delayed.iter().enumerate() {
        let due: u64 = ev["delay"].as_str().unwrap().parse().unwrap();
        let scheduled_at = ev["ms"].as_u64().unwrap();
        let backoff = due as i64 - scheduled_at as i64;
        let wanted = (delay << n) as i64;
        assert!(
            (wanted - 250..=wanted + 250).contains(&backoff),
            "retry {} scheduled {backoff} ms ahead, want {wanted} ms",
            n + 1
        );
    }
}

#[test]
fn fixed_backoff_retries_until_success() {
    let (_redis, _worker, q) = setup(&[]);
    let id = q
        .add_one(
            "fail-until",
            json!({"succeedOnAttempt": 3}),
            json!({"attempts": 5, "backoff": {"type": "fixed", "delay": 300}}),
        )
        .unwrap();
    let job = q
        .wait_finished(std::slice::from_ref(&id))
        .unwrap()
        .remove(0);
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(job.returnvalue, json!({"attempt": 3}));
    assert_eq!(job.attempts_made, 3, "{job:?}");
    let actives = event_times(&q.events().unwrap(), "active", &id);
    assert_eq!(actives.len(), 3);
    for pair in actives.windows(2) {
        assert!(
            pair[1] - pair[0] + 20 >= 300,
            "fixed backoff not respected: {actives:?}"
        );
    }
}

#[test]
fn unrecoverable_failures_panics_and_unknown_names_fail_after_one_attempt() {
    let (_redis, worker, q) = setup(&[]);
    let opts = json!({"attempts": 5, "backoff": {"type": "fixed", "delay": 100}});
    let ids = q
        .add(json!([
            {"name": "fail-unrecoverable", "data": {"message": "number opted out"}, "opts": opts},
            {"name": "no-such-job", "data": {}, "opts": opts},
            {"name": "panic", "data": {"message": "kaboom"}, "opts": {"attempts": 2}},
        ]))
        .unwrap();
    let jobs = q.wait_finished(&ids).unwrap();

    assert_eq!(jobs[0].state, "failed");
    assert_eq!(jobs[0].failed_reason.as_deref(), Some("number opted out"));
    assert_eq!(jobs[0].attempts_made, 1, "{:?}", jobs[0]);

    assert_eq!(jobs[1].state, "failed");
    assert_eq!(jobs[1].attempts_made, 1, "{:?}", jobs[1]);
    let reason = jobs[1].failed_reason.clone().unwrap_or_default();
    assert!(
        reason.to_lowercase().contains("unknown job name") && reason.contains("no-such-job"),
        "reason names the problem and the job name: {reason:?}"
    );

    // A panic is a normal (retryable) failure carrying the panic message; the worker lives on.
    assert_eq!(jobs[2].state, "failed");
    assert_eq!(jobs[2].attempts_made, 2, "{:?}", jobs[2]);
    let reason = jobs[2].failed_reason.clone().unwrap_or_default();
    assert!(reason.contains("test panic: kaboom"), "{reason:?}");
    let after = q
        .run(json!([{"name": "complete", "data": {"result": "still alive"}}]))
        .unwrap();
    assert_eq!(after[0].returnvalue, json!("still alive"));
    assert!(after[0].state == "completed");
    let mut worker = worker;
    assert!(worker.is_running());
}

#[test]
fn delayed_jobs_run_after_their_delay() {
    let (_redis, _worker, q) = setup(&[]);
    let id = q
        .add_one(
            "complete",
            json!({"result": "late"}),
            json!({"delay": 1500}),
        )
        .unwrap();
    let job = q
        .wait_finished(std::slice::from_ref(&id))
        .unwrap()
        .remove(0);
    assert_eq!(job.state, "completed");
    assert_eq!(job.returnvalue, json!("late"));
    assert_eq!(job.opts["delay"], 1500, "{:?}", job.opts);
    let processed = job.processed_on.unwrap();
    assert!(
        processed >= job.timestamp + 1500,
        "processed {} ms after creation, delay was 1500",
        processed - job.timestamp
    );
    // It went through the delayed set (not straight to wait), due at timestamp + delay.
    let events = q.events().unwrap();
    let delayed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "delayed" && e["jobId"] == id.as_str())
        .collect();
    assert_eq!(delayed.len(), 1, "{events:?}");
    assert_eq!(
        delayed[0]["delay"]
            .as_str()
            .and_then(|d| d.parse::<u64>().ok()),
        Some(job.timestamp + 1500)
    );
}

/// The jobs of the ordering test: labels in the order of adding.
fn ordering_jobs() -> Value {
    json!([
        {"name": "complete", "data": {"result": "a1"}},
        {"name": "complete", "data": {"result": "a2"}},
        {"name": "complete", "data": {"result": "p3"}, "opts": {"priority": 3}},
        {"name": "complete", "data": {"result": "p1"}, "opts": {"priority": 1}},
        {"name": "complete", "data": {"result": "p2"}, "opts": {"priority": 2}},
        {"name": "complete", "data": {"result": "l"}, "opts": {"lifo": true}},
    ])
}

fn labels_in_active_order(q: &NodeQueue, ids: &[String]) -> Vec<String> {
    let jobs = q.jobs(ids, false).unwrap();
    active_order(&q.events().unwrap())
        .iter()
        .map(|id| {
            by_id(&jobs, id).data["result"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn priority_and_lifo_order_is_the_order_a_node_worker_uses() {
    let redis = RedisServer::start().unwrap();

    // Ground truth: a Node worker (concurrency 1) on a queue filled the same way.
    let reference = NodeQueue::new(&redis, "order-reference");
    let ref_ids = reference.add(ordering_jobs()).unwrap();
    let out = reference
        .call("node-worker", json!({"count": 6, "concurrency": 1}))
        .unwrap();
    assert_eq!(out["timedOut"], false);
    let node_order = labels_in_active_order(&reference, &ref_ids);

    // The host, concurrency 1, started after the jobs were added.
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let ids = q.add(ordering_jobs()).unwrap();
    let _worker =
        Worker::start_test_outcomes(&redis, &[("QUEUE_TEST_OUTCOMES_CONCURRENCY", "1")]).unwrap();
    q.wait_finished(&ids).unwrap();
    let host_order = labels_in_active_order(&q, &ids);

    assert_eq!(host_order, node_order, "host vs Node worker order");
    assert_eq!(host_order, ["l", "a1", "a2", "p1", "p2", "p3"]);
}

#[test]
fn remove_on_complete_and_remove_on_fail_keep_the_newest_n() {
    let (_redis, _worker, q) = setup(&[]);
    // FrostGuard's producers use removeOnComplete: 100, removeOnFail: 500; the same semantics with small counts.
    // One job at a time, so that finish times (the retention order) are distinct.
    let mut jobs = Vec::new();
    for i in 0..6 {
        jobs.push(
            json!({"name": "complete", "data": {"result": i}, "opts": {"removeOnComplete": 2}}),
        );
        jobs.push(json!({
            "name": "fail",
            "data": {"message": format!("f{i}")},
            "opts": {"attempts": 1, "removeOnFail": {"count": 3}},
        }));
    }
    let out = q
        .call(
            "run",
            json!({"jobs": jobs, "sequential": true, "timeoutMs": 30000}),
        )
        .unwrap();
    assert_eq!(out["timedOut"], false, "{out}");
    let ids: Vec<String> = out["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    // Added (and finished) in this order: complete, fail, complete, fail, ...
    let completed_order: Vec<String> = ids.iter().step_by(2).cloned().collect();
    let failed_order: Vec<String> = ids.iter().skip(1).step_by(2).cloned().collect();

    let mut kept_completed = q.list(&["completed"]).unwrap();
    let mut kept_failed = q.list(&["failed"]).unwrap();
    kept_completed.sort();
    kept_failed.sort();
    let mut want_completed = completed_order[4..].to_vec();
    let mut want_failed = failed_order[3..].to_vec();
    want_completed.sort();
    want_failed.sort();
    assert_eq!(
        kept_completed, want_completed,
        "the 2 newest completed jobs are kept"
    );
    assert_eq!(
        kept_failed, want_failed,
        "the 3 newest failed jobs are kept"
    );

    // The others are gone entirely (hash removed), not just unlisted; every job did run.
    let snaps = q.jobs(&ids, false).unwrap();
    let missing = snaps.iter().filter(|j| j.state == "missing").count();
    assert_eq!(missing, 4 + 3, "{snaps:?}");
    let events = q.events().unwrap();
    for (id, kind) in completed_order
        .iter()
        .map(|id| (id, "completed"))
        .chain(failed_order.iter().map(|id| (id, "failed")))
    {
        assert_eq!(
            event_times(&events, kind, id).len(),
            1,
            "job {id} {kind} once"
        );
    }
}

#[test]
fn a_job_scheduler_created_by_node_keeps_producing_with_only_the_host_consuming() {
    let (_redis, _worker, q) = setup(&[]);
    q.call(
        "upsert-scheduler",
        json!({
            "id": "digest-every-400ms",
            "repeat": {"every": 400},
            "template": {"name": "complete", "data": {"from": "scheduler"}},
        }),
    )
    .unwrap();
    // No Node process stays behind: only the host consumes, so only it can create the next iterations.
    let done = wait_until(
        Duration::from_secs(60),
        "5 scheduled jobs completed",
        || {
            let ids: Vec<String> = q
                .events()
                .ok()?
                .iter()
                .filter(|e| e["event"] == "completed")
                .map(|e| e["jobId"].as_str().unwrap().to_string())
                .collect();
            (ids.len() >= 5).then_some(ids)
        },
    )
    .unwrap();
    let jobs = q.jobs(&done, false).unwrap();
    for job in &jobs {
        assert_eq!(job.state, "completed", "{job:?}");
        assert_eq!(job.returnvalue, json!({"echo": {"from": "scheduler"}}));
        assert_eq!(job.repeat_job_key.as_deref(), Some("digest-every-400ms"));
    }
    let mut distinct = done.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), done.len(), "each iteration is a new job");
    let schedulers = q.call("schedulers", json!({})).unwrap();
    assert_eq!(
        schedulers["schedulers"][0]["key"], "digest-every-400ms",
        "{schedulers}"
    );
    let removed = q
        .call("remove-scheduler", json!({"id": "digest-every-400ms"}))
        .unwrap();
    assert_eq!(removed["removed"], true);
}

#[test]
fn pause_and_resume_from_node_are_honoured() {
    let (_redis, _worker, q) = setup(&[]);
    q.pause().unwrap();
    let ids = q
        .add(json!([
            {"name": "complete", "data": {"result": 1}},
            {"name": "complete", "data": {"result": 2}},
            {"name": "complete", "data": {"result": 3}},
        ]))
        .unwrap();
    // Observe the paused queue for a while: nothing may start.
    std::thread::sleep(Duration::from_millis(1500));
    let jobs = q.jobs(&ids, false).unwrap();
    for job in &jobs {
        assert_eq!(job.state, "waiting", "paused queue ran a job: {job:?}");
        assert_eq!(job.attempts_started, 0);
    }
    let resumed_at = now_ms();
    q.resume().unwrap();
    let jobs = q.wait_finished(&ids).unwrap();
    for job in &jobs {
        assert_eq!(job.state, "completed", "{job:?}");
        assert!(job.processed_on.unwrap() + 50 >= resumed_at, "{job:?}");
    }
}

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
    assert!(
        worker.has_line("queue consuming queue=test-outcomes concurrency=2"),
        "{}",
        worker.output_text()
    );
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
    let (_redis, _worker, q) = setup(&[]);
    let count = 3000;
    let out = q
        .call(
            "mixed-fleet",
            json!({"count": count, "concurrency": 4, "timeoutMs": 240000}),
        )
        .unwrap();
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

#[test]
fn progress_and_job_logs_are_visible_from_node() {
    let (_redis, _worker, q) = setup(&[]);
    let out = q
        .call(
            "events-flow",
            json!({"jobs": [{"name": "progress", "data": {}}], "timeoutMs": 30000}),
        )
        .unwrap();
    assert_eq!(out["results"][0]["ok"], true, "{out}");
    assert_eq!(out["results"][0]["value"], json!({"done": true}));
    let progress: Vec<Value> = out["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(
        progress,
        vec![json!(25), json!({"step": "half"}), json!(100)]
    );
    let id = out["ids"][0].as_str().unwrap();
    let job = q.job(id).unwrap();
    assert_eq!(job.progress, json!(100));
    assert_eq!(job.logs, ["line 1", "line 2"]);
}

#[test]
fn retry_later_with_job_scope_delays_the_job_without_consuming_an_attempt() {
    let (_redis, _worker, q) = setup(&[]);
    let id = q
        .add_one(
            "retry-later",
            json!({"delayMs": 1500, "scope": "job"}),
            json!({"attempts": 1}),
        )
        .unwrap();
    let delayed = q
        .wait_states(
            std::slice::from_ref(&id),
            &["delayed"],
            Duration::from_secs(20),
        )
        .unwrap()
        .remove(0);
    assert_eq!(delayed.attempts_made, 0, "no attempt consumed: {delayed:?}");
    assert_eq!(delayed.attempts_started, 1);
    let job = q
        .wait_finished(std::slice::from_ref(&id))
        .unwrap()
        .remove(0);
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(
        job.returnvalue,
        json!({"retriedAfterDelay": true, "attemptsStarted": 2})
    );
    assert_eq!(job.attempts_made, 1, "{job:?}");
    let actives = event_times(&q.events().unwrap(), "active", &id);
    assert_eq!(actives.len(), 2);
    assert!(
        actives[1] - actives[0] + 20 >= 1500,
        "second start after the requested delay: {actives:?}"
    );
}

#[test]
fn retry_later_with_queue_scope_returns_the_job_to_wait_and_holds_the_queue() {
    let (_redis, worker, q) = setup(&[]);
    let hold = 3000;
    let id = q
        .add_one(
            "retry-later",
            json!({"delayMs": hold, "scope": "queue"}),
            json!({"attempts": 1}),
        )
        .unwrap();
    // Back in wait (not delayed), with one start and no attempt made.
    let out = q
        .call(
            "wait",
            json!({"ids": [id], "states": ["waiting"], "minStarted": 1, "timeoutMs": 20000}),
        )
        .unwrap();
    assert_eq!(
        out["timedOut"],
        false,
        "job not back in wait: {out}\n{}",
        worker.output_text()
    );
    let back: JobSnapshot =
        frostguard_tests::serde_json::from_value(out["jobs"][0].clone()).unwrap();
    assert_eq!(back.attempts_made, 0);
    // Another job added while the queue is held must wait too.
    let other = q
        .add_one("complete", json!({"result": "other"}), json!({}))
        .unwrap();
    let jobs = q.wait_finished(&[id.clone(), other.clone()]).unwrap();
    let (rl, other_job) = (&jobs[0], &jobs[1]);
    assert_eq!(rl.state, "completed", "{rl:?}");
    assert_eq!(
        rl.returnvalue,
        json!({"retriedAfterDelay": true, "attemptsStarted": 2})
    );
    assert_eq!(rl.attempts_made, 1);
    assert_eq!(other_job.state, "completed");
    let events = q.events().unwrap();
    let first_start = event_times(&events, "active", &id)[0];
    assert!(
        rl.processed_on.unwrap() + 50 >= first_start + hold,
        "job restarted {} ms after its first start; queue hold {hold} ms",
        rl.processed_on.unwrap() - first_start
    );
    assert!(
        other_job.processed_on.unwrap() + 50 >= first_start + hold,
        "another job ran {} ms after the hold began ({hold} ms)",
        other_job.processed_on.unwrap() - first_start
    );
    assert!(
        event_times(&events, "delayed", &id).is_empty(),
        "queue scope must not delay the job itself"
    );
}

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

/// Short locks and stall checks, so that a job abandoned by one host is recovered by the next in seconds.
const QUICK_RECOVERY: [(&str, &str); 2] = [
    ("QUEUE_TEST_OUTCOMES_LOCK_DURATION_MS", "2000"),
    ("QUEUE_TEST_OUTCOMES_STALLED_INTERVAL_MS", "1000"),
];

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
    q.wait_states(
        std::slice::from_ref(&id),
        &["active"],
        Duration::from_secs(20),
    )
    .unwrap();
    let status = worker.terminate(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", worker.output_text());
    assert!(
        worker.has_line("shutdown begin"),
        "{}",
        worker.output_text()
    );
    assert!(
        worker.has_line("shutdown complete"),
        "{}",
        worker.output_text()
    );
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
    let job = q
        .wait_finished(std::slice::from_ref(&id))
        .unwrap()
        .remove(0);
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
    q.wait_states(
        std::slice::from_ref(&id),
        &["active"],
        Duration::from_secs(20),
    )
    .unwrap();
    crashed.kill();

    let _next = Worker::start_test_outcomes(&redis, &QUICK_RECOVERY).unwrap();
    let job = q
        .wait_finished(std::slice::from_ref(&id))
        .unwrap()
        .remove(0);
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(job.returnvalue, json!({"slept": 3000}));
    assert_eq!(job.attempts_started, 2, "{job:?}");
    assert_eq!(job.stalled_counter, 1, "{job:?}");
    let events = q.events().unwrap();
    assert_eq!(event_times(&events, "stalled", &id).len(), 1, "{events:?}");
    assert_eq!(event_times(&events, "completed", &id).len(), 1);
}

#[test]
fn redis_host_port_and_password_variables_connect_to_a_protected_redis() {
    let redis = RedisServer::start_with_args(&["--requirepass", "s3cr3t-p@ss"]).unwrap();
    let port = redis.port().to_string();
    let _worker = Worker::builder()
        .plugins(&[TEST_PLUGIN])
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", port)
        .env("REDIS_PASSWORD", "s3cr3t-p@ss")
        .spawn()
        .and_then(|w| w.wait_ready().map(|_| w))
        .unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let jobs = q
        .run(json!([{"name": "complete", "data": {"result": "authenticated"}}]))
        .unwrap();
    assert_eq!(jobs[0].state, "completed", "{:?}", jobs[0]);
    assert_eq!(jobs[0].returnvalue, json!("authenticated"));
}

#[test]
fn sigint_lets_a_short_in_flight_job_finish_before_exit() {
    let (_redis, mut worker, q) = setup(&[]);
    let id = q.add_one("sleep", json!({"ms": 1500}), json!({})).unwrap();
    q.wait_states(
        std::slice::from_ref(&id),
        &["active"],
        Duration::from_secs(20),
    )
    .unwrap();
    worker.sigint().unwrap();
    let status = worker.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", worker.output_text());
    let job = q.job(&id).unwrap();
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(job.returnvalue, json!({"slept": 1500}));
}

#[test]
fn hash_tagged_prefix_works_for_redis_cluster_layouts() {
    let redis = RedisServer::start().unwrap();
    let _worker = Worker::start_test_outcomes(&redis, &[("BULLMQ_PREFIX", "{bull}")]).unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE).with_prefix("{bull}");
    let jobs = q
        .run(json!([{"name": "complete", "data": {"result": "tagged"}}]))
        .unwrap();
    assert_eq!(jobs[0].state, "completed", "{:?}", jobs[0]);
    assert_eq!(jobs[0].returnvalue, json!("tagged"));
    let keys = redis.cmd(&["KEYS", "*"]).unwrap().strings();
    assert!(keys.iter().all(|k| k.starts_with("{bull}:")), "{keys:?}");
}

#[test]
fn missing_redis_configuration_exits_non_zero_naming_both_variables() {
    let out = Worker::builder()
        .plugins(&[TEST_PLUGIN])
        .output(Duration::from_secs(30))
        .unwrap();
    assert!(
        !out.status.success(),
        "must fail without Redis config:\n{}",
        out.text()
    );
    let text = out.text();
    assert!(
        text.contains("REDIS_URL") && text.contains("REDIS_HOST"),
        "{text}"
    );
}
