//! `enqueue`: a job added by the CLI is processed by the host (and `--wait` prints the outcome), reads back in
//! Node exactly like a twin added with Node's `Queue.add`, and is run by a Node Worker.

use frostguard_tests::{json, NodeQueue, RedisServer, Worker, TEST_QUEUE};
use serde_json::Value;

use super::run_cli;

/// The last line of the command's output parsed as JSON (the outcome; logs are limited to errors).
fn outcome(text: &str) -> Value {
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("no JSON outcome ({e}):\n{text}"))
}

#[test]
fn enqueued_jobs_run_on_the_host_and_wait_prints_the_outcome() {
    let redis = RedisServer::start().expect("start redis-server");
    let _worker = Worker::start_test_outcomes(&redis, &[]).expect("host ready");

    let (code, text) = run_cli(
        &redis,
        &[
            "enqueue",
            TEST_QUEUE,
            "complete",
            r#"{"result": {"sent": 7}}"#,
            "--wait",
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    let done = outcome(&text);
    assert_eq!(done["state"], json!("completed"), "{done}");
    assert_eq!(done["returnvalue"], json!({"sent": 7}), "{done}");
    assert_eq!(done["attemptsMade"], json!(1), "{done}");

    let (code, text) = run_cli(
        &redis,
        &[
            "enqueue",
            TEST_QUEUE,
            "fail",
            r#"{"message": "provider said no"}"#,
            "--opts",
            r#"{"attempts": 2, "backoff": 10}"#,
            "--wait",
        ],
    );
    assert_eq!(code, Some(1), "a failed job is a non-zero exit:\n{text}");
    let failed = outcome(&text);
    assert_eq!(failed["state"], json!("failed"), "{failed}");
    assert_eq!(
        failed["failedReason"],
        json!("provider said no"),
        "{failed}"
    );
    assert_eq!(failed["attemptsMade"], json!(2), "{failed}");

    // Without --wait the id is printed at once; Node sees the job the host then completes.
    let (code, text) = run_cli(
        &redis,
        &["enqueue", TEST_QUEUE, "complete", r#"{"result": 1}"#],
    );
    assert_eq!(code, Some(0), "{text}");
    let id = outcome(&text)["id"].as_str().expect("an id").to_owned();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let jobs = q.wait_finished(&[id]).expect("finished");
    assert_eq!(jobs[0].state, "completed");
    assert_eq!(jobs[0].returnvalue, json!(1));

    // Bad input is refused before anything is added.
    for (args, says) in [
        (
            &["enqueue", TEST_QUEUE, "complete", "{not json"][..],
            "DATA is not valid JSON",
        ),
        (
            &[
                "enqueue",
                TEST_QUEUE,
                "complete",
                "{}",
                "--opts",
                r#"{"keepLogs": 3}"#,
            ][..],
            "\"keepLogs\" is not supported",
        ),
    ] {
        let (code, text) = run_cli(&redis, args);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains(says), "{text}");
    }
    assert_eq!(
        q.counts().unwrap()["completed"],
        json!(2),
        "nothing else was added"
    );
}

#[test]
fn an_enqueued_job_reads_back_in_node_like_a_node_added_twin_and_a_node_worker_runs_it() {
    let redis = RedisServer::start().expect("start redis-server");
    let queue = "ops-enqueue";
    let q = NodeQueue::new(&redis, queue);
    let data = json!({"to": "+15551234567", "body": "Freezer 3 at -4 °C", "meta": {"site": 7, "tags": ["a", "b"]}});
    let cases = [
        json!({}),
        json!({"attempts": 5, "backoff": {"type": "exponential", "delay": 2000},
               "removeOnComplete": {"count": 100}, "removeOnFail": 50}),
        json!({"priority": 4, "attempts": 2, "backoff": 1000}),
        json!({"delay": 600_000, "jobId": "resend-42"}),
        json!({"lifo": true, "removeOnComplete": true}),
    ];
    let mut ours = Vec::new();
    let mut twins = Vec::new();
    for opts in &cases {
        let (code, text) = run_cli(
            &redis,
            &[
                "enqueue",
                queue,
                "sms:send",
                &data.to_string(),
                "--opts",
                &opts.to_string(),
            ],
        );
        assert_eq!(code, Some(0), "{opts}: {text}");
        ours.push(outcome(&text)["id"].as_str().expect("an id").to_owned());
        let mut twin_opts = opts.clone();
        if let Some(id) = twin_opts.get_mut("jobId") {
            *id = json!("resend-43");
        }
        twins.push(json!({"name": "sms:send", "data": data, "opts": twin_opts}));
    }
    // Node adds the twins (one Node process), then reads all jobs back.
    let twin_ids = q.add(json!(twins)).expect("Node adds the twins");
    let mut ids = ours.clone();
    ids.extend(twin_ids);
    let jobs = q.jobs(&ids, false).expect("read all in Node");
    let (ours_jobs, node_jobs) = jobs.split_at(cases.len());
    for ((opts, a), b) in cases.iter().zip(ours_jobs).zip(node_jobs) {
        assert_eq!(a.state, b.state, "{opts}");
        assert_eq!(a.name, b.name, "{opts}");
        assert_eq!(a.data, b.data, "{opts}");
        assert_eq!((a.delay, a.priority), (b.delay, b.priority), "{opts}");
        let mut ours_opts = a.opts.clone();
        let mut node_opts = b.opts.clone();
        for o in [&mut ours_opts, &mut node_opts] {
            if let Some(m) = o.as_object_mut() {
                m.remove("jobId");
            }
        }
        assert_eq!(ours_opts, node_opts, "stored options for {opts}");
    }
    assert_eq!(ours[3], "resend-42");
    assert_eq!(ours_jobs[3].opts["jobId"], json!("resend-42"));

    // A Node Worker runs what enqueue added (the delayed pair stays delayed).
    let (code, text) = run_cli(&redis, &["enqueue", queue, "complete", r#"{"n": 1}"#]);
    assert_eq!(code, Some(0), "{text}");
    let id = outcome(&text)["id"].as_str().unwrap().to_owned();
    let run = q
        .call("node-worker", json!({"count": 9}))
        .expect("Node worker runs");
    assert_eq!(run["timedOut"], json!(false), "{run}");
    let job = q.job(&id).expect("job");
    assert_eq!(job.state, "completed");
    assert_eq!(job.returnvalue["echo"], json!({"n": 1}));
    assert_eq!(job.returnvalue["processedBy"], json!("node"));
}
