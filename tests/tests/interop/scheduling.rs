//! When jobs run: `delay`, priority and LIFO order (compared with a Node worker's order), job schedulers
//! created by Node, and pause / resume from Node.

use crate::{events_of, setup, wait_finished_one};
use frostguard_tests::serde_json::Value;
use frostguard_tests::{json, wait_until, JobSnapshot, NodeQueue, RedisServer, Worker, TEST_QUEUE};
use std::time::Duration;

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
    let job = wait_finished_one(&q, &id);
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
    let delayed = events_of(&events, "delayed", &id);
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
    let (redis, _worker, q) = setup(&[]);
    q.pause().unwrap();
    let monitor = redis.monitor().unwrap();
    let ids = q
        .add(json!([
            {"name": "complete", "data": {"result": 1}},
            {"name": "complete", "data": {"result": 2}},
            {"name": "complete", "data": {"result": 3}},
        ]))
        .unwrap();
    // Not a pause long enough to hope the host would have acted: wait until it has looked for work after
    // the jobs were there. Its fetch loop blocks on the queue's marker (BZPOPMIN) after each fetch that
    // found nothing, so a BZPOPMIN run after this ECHO (which ran after the adds) follows such a fetch.
    let mark = format!("jobs-added-{}", ids.join("-"));
    redis.cmd(&["ECHO", &mark]).unwrap();
    let (after_add, _) = monitor
        .wait_for(0, Duration::from_secs(10), |l| l.contains(&mark))
        .unwrap();
    monitor
        .wait_for(after_add, Duration::from_secs(30), |l| {
            l.to_ascii_lowercase()
                .contains("\"bzpopmin\" \"bull:test-outcomes:marker\"")
        })
        .unwrap();
    let jobs = q.jobs(&ids, false).unwrap();
    for job in &jobs {
        assert_eq!(job.state, "waiting", "paused queue ran a job: {job:?}");
        assert_eq!(job.attempts_started, 0);
    }
    q.resume().unwrap();
    let jobs = q.wait_finished(&ids).unwrap();
    for job in &jobs {
        assert_eq!(job.state, "completed", "{job:?}");
    }
    // In the event stream's order: the `resumed` event comes before every start.
    let events = q.events().unwrap();
    let at = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred);
    let resumed = at(&|e| e["event"] == "resumed").expect("a resumed event");
    for id in &ids {
        let started = at(&|e| e["event"] == "active" && e["jobId"] == id.as_str())
            .unwrap_or_else(|| panic!("job {id} never started: {events:?}"));
        assert!(
            started > resumed,
            "job {id} started before the resume: {events:?}"
        );
    }
}
