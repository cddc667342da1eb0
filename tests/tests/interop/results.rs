//! What Node sees of the jobs the host finished: return values, failure reasons, attempts and timestamps,
//! the QueueEvents stream, progress and job logs, and retention (`removeOnComplete` / `removeOnFail`).

use crate::{event_times, ids_of, now_ms, setup};
use frostguard_tests::json;
use frostguard_tests::serde_json::Value;

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
        // processedOn is the worker's clock when it sent the fetch (with fetch-next, when it finished the
        // previous job), which can precede a job added while that fetch was on its way: Node's worker does
        // the same. On a loaded machine that can be more than a few ms, so the bound is wide; the order
        // that matters is asserted from the event stream below.
        assert!(
            processed + 1000 >= job.timestamp,
            "processedOn long before timestamp: {job:?}"
        );
        assert!(
            finished >= processed,
            "finishedOn before processedOn: {job:?}"
        );
    }
    // Each job was added (`waiting`), then started, then completed, in the stream's own order.
    let events = q.events().unwrap();
    for id in &ids {
        let at = |name: &str| {
            events
                .iter()
                .position(|e| e["event"] == name && e["jobId"] == id.as_str())
                .unwrap_or_else(|| panic!("no {name} event for job {id}: {events:?}"))
        };
        assert!(
            at("waiting") < at("active") && at("active") < at("completed"),
            "job {id}: {events:?}"
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
    let ids = ids_of(&out);
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
    let ids = ids_of(&out);
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
