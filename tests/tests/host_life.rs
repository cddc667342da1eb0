//! What an operator relies on around the jobs, against a running `frostguard-worker`: `/healthz` and `/readyz`
//! through a Redis outage and a shutdown, a worker started before its Redis exists, broken plugin files next to
//! a good one, a plugin that ignores the shutdown's cancellation, `QUEUE_<Q>_MAX_STALLED_COUNT`, a cron job
//! scheduler, backoff jitter and the failure reason of a job waiting for its retry. Short-lived states are
//! asserted from the queue's event stream after the fact, never caught live.

use std::time::{Duration, Instant};

use frostguard_tests::serde_json::Value;
use frostguard_tests::{
    free_port, http_get, json, plugin_lib, queue_events, wait_for_event, wait_until, NodeQueue,
    RedisServer, TempDir, Worker, WorkerBuilder, TEST_PLUGIN, TEST_QUEUE,
};

/// `/readyz` as status and JSON body.
fn readyz(port: u16) -> Option<(u16, Value)> {
    let (status, body) = http_get(port, "/readyz")?;
    Some((status, frostguard_tests::serde_json::from_str(&body).ok()?))
}

/// Waits until `/readyz` answers `status`; returns the body.
fn wait_readyz(worker: &Worker, port: u16, status: u16, what: &str) -> Value {
    wait_until(Duration::from_secs(30), what, || {
        readyz(port).filter(|(s, _)| *s == status).map(|(_, b)| b)
    })
    .unwrap_or_else(|e| panic!("{e}: last {:?}\n{}", readyz(port), worker.output_text()))
}

/// Spawns the worker built by `builder` with its HTTP endpoint on a free port and waits until the endpoint
/// listens. A port taken between picking and binding makes the host exit naming HTTP_PORT: another is tried.
fn spawn_with_http(builder: impl Fn() -> WorkerBuilder) -> (Worker, u16) {
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port();
        let worker = builder()
            .env("HTTP_PORT", port.to_string())
            .spawn()
            .expect("spawn the worker");
        match worker.wait_for_line("endpoint listening", Duration::from_secs(60)) {
            Ok(_) => return (worker, port),
            Err(e) if format!("{e:#}").contains("HTTP_PORT") => last = format!("{e:#}"),
            Err(e) => panic!("{e:#}"),
        }
    }
    panic!("no free HTTP port after 5 tries: {last}");
}

/// A file that ends in `.so` but is no library (the first bytes of a real plugin).
fn corrupt_plugin(dir: &TempDir) -> std::path::PathBuf {
    let good = std::fs::read(plugin_lib(TEST_PLUGIN)).expect("read the built test plugin");
    let path = dir.path().join("libcorrupt.so");
    std::fs::write(&path, &good[..good.len() / 3]).expect("write the corrupt plugin");
    path
}

/// The `/readyz` entry of the disabled plugin whose entry mentions `file`.
fn disabled_entry<'a>(ready: &'a Value, file: &str) -> &'a Value {
    ready["disabled_plugins"]
        .as_array()
        .and_then(|list| list.iter().find(|e| e.to_string().contains(file)))
        .unwrap_or_else(|| panic!("{file} not listed as disabled: {ready}"))
}

#[test]
fn readyz_and_healthz_follow_redis_and_shutdown_and_list_a_corrupt_plugin() {
    let mut redis = RedisServer::start().unwrap();
    let scratch = TempDir::new("corrupt").unwrap();
    let corrupt = corrupt_plugin(&scratch);
    let url = redis.url();
    let (mut worker, port) = spawn_with_http(|| {
        Worker::builder()
            .env("REDIS_URL", &url)
            .plugins(&[TEST_PLUGIN])
            .plugin_file(&corrupt)
            .env("SHUTDOWN_TIMEOUT_MS", "20000")
    });
    worker.wait_ready().unwrap();

    assert_eq!(http_get(port, "/healthz"), Some((200, "ok\n".to_owned())));
    let ready = wait_readyz(&worker, port, 200, "/readyz 200 once ready");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["redis"], true, "{ready}");
    assert_eq!(ready["queues"], json!({"test-outcomes": true}), "{ready}");
    let corrupt_entry = disabled_entry(&ready, "libcorrupt.so");
    assert!(
        !corrupt_entry["stage"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
            && !corrupt_entry["reason"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
        "stage and reason given: {corrupt_entry}"
    );
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    for sample in [
        "frostguard_redis_up 1",
        "frostguard_plugins_loaded 1",
        "frostguard_plugins_disabled 1",
        "frostguard_queue_consuming{queue=\"test-outcomes\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == sample),
            "no {sample:?} in /metrics:\n{metrics}"
        );
    }

    // Redis goes away: not ready (alive all the same), then ready again once it is back.
    redis.kill();
    let down = wait_readyz(&worker, port, 503, "/readyz 503 while Redis is down");
    assert_eq!(down["redis"], false, "{down}");
    assert_eq!(down["ready"], false, "{down}");
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    assert!(worker.is_running());
    redis.restart().unwrap();
    let back = wait_readyz(&worker, port, 200, "/readyz 200 once Redis is back");
    assert_eq!(back["redis"], true, "{back}");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let job = q
        .run(json!([{"name": "complete", "data": {"result": "after the outage"}}]))
        .unwrap();
    assert_eq!(job[0].state, "completed", "{:?}", job[0]);

    // SIGTERM while a job runs: not ready from the start of the shutdown, alive until the exit.
    let id = q
        .add_one("sleep", json!({"ms": 3000}), json!({"attempts": 1}))
        .unwrap();
    wait_for_event(&redis, TEST_QUEUE, "active", &id, Duration::from_secs(30)).unwrap();
    let from = worker.line_count();
    worker.sigterm().unwrap();
    worker
        .wait_for_line_after(from, "shutdown begin", Duration::from_secs(10))
        .unwrap();
    let (status, stopping) = readyz(port).expect("/readyz answers during the drain");
    assert_eq!(status, 503, "{stopping}");
    assert_eq!(stopping["shutting_down"], true, "{stopping}");
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    let status = worker.wait_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", worker.output_text());
    assert_eq!(
        q.job(&id).unwrap().state,
        "completed",
        "the drain let it finish"
    );
}

#[test]
fn a_corrupt_library_and_a_bad_abi_plugin_next_to_a_good_one_under_run() {
    let redis = RedisServer::start().unwrap();
    let scratch = TempDir::new("corrupt").unwrap();
    let corrupt = corrupt_plugin(&scratch);
    let worker = Worker::builder()
        .redis(&redis)
        .plugins(&[TEST_PLUGIN, "fg_test_bad_abi"])
        .plugin_file(&corrupt)
        .spawn_ready()
        .unwrap();
    // One ERROR line per broken file, naming the file and the stage; the good plugin runs.
    for (file, stage) in [
        ("libcorrupt.so", ""),
        ("libfg_test_bad_abi.so", "stage=abi"),
    ] {
        let lines: Vec<String> = worker
            .lines()
            .into_iter()
            .filter(|l| l.contains("plugin disabled") && l.contains(file))
            .collect();
        assert_eq!(lines.len(), 1, "{file}:\n{}", worker.output_text());
        assert!(
            lines[0].contains("ERROR") && lines[0].contains("stage=") && lines[0].contains(stage),
            "{}",
            lines[0]
        );
    }
    assert!(worker.has_line("queue consuming queue=test-outcomes concurrency=4"));
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let jobs = q
        .run(json!([{"name": "complete", "data": {"result": "good plugin"}}]))
        .unwrap();
    assert_eq!(jobs[0].state, "completed", "{:?}", jobs[0]);
    assert_eq!(jobs[0].returnvalue, json!("good plugin"));
}

#[test]
fn a_worker_started_before_redis_exists_waits_for_it_then_consumes() {
    let mut redis = RedisServer::reserve().unwrap();
    let url = redis.url();
    let (worker, port) = spawn_with_http(|| {
        Worker::builder()
            .env("REDIS_URL", &url)
            .plugins(&[TEST_PLUGIN])
    });
    worker
        .wait_for_line("Redis not reachable yet", Duration::from_secs(30))
        .unwrap();
    let (status, waiting) = readyz(port).expect("/readyz answers before Redis exists");
    assert_eq!(status, 503, "{waiting}");
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    assert!(!worker.has_line("worker ready"));

    redis.launch().unwrap();
    worker.wait_ready().unwrap();
    wait_readyz(&worker, port, 200, "/readyz 200 once Redis exists");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let jobs = q
        .run(json!([{"name": "complete", "data": {"result": "late redis"}}]))
        .unwrap();
    assert_eq!(jobs[0].state, "completed", "{:?}", jobs[0]);
}

#[test]
fn a_plugin_ignoring_cancellation_is_abandoned_at_shutdown_and_its_job_put_back() {
    let redis = RedisServer::start().unwrap();
    let mut worker = Worker::start_test_outcomes(
        &redis,
        &[
            ("SHUTDOWN_TIMEOUT_MS", "300"),
            ("QUEUE_TEST_OUTCOMES_CONCURRENCY", "1"),
        ],
    )
    .unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let id = q
        .add_one(
            "sleep",
            json!({"ms": 60000, "ignoreCancel": true}),
            json!({"attempts": 1}),
        )
        .unwrap();
    wait_for_event(&redis, TEST_QUEUE, "active", &id, Duration::from_secs(30)).unwrap();
    let signalled = Instant::now();
    let status = worker.terminate(Duration::from_secs(45)).unwrap();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", worker.output_text());
    // Bounded by the drain's phases (timeout, cancel grace, abandon grace), not by the 60 s job.
    assert!(took < Duration::from_secs(30), "shutdown took {took:?}");
    assert!(
        worker.has_line("plugin still running at the shutdown deadline"),
        "{}",
        worker.output_text()
    );
    let job = q.job(&id).unwrap();
    assert_eq!(
        job.state, "waiting",
        "put back, neither completed nor failed: {job:?}"
    );
    assert_eq!(job.attempts_made, 0, "{job:?}");
    assert_eq!(job.failed_reason, None, "{job:?}");
}

#[test]
fn max_stalled_count_zero_fails_a_job_at_its_first_stall() {
    let redis = RedisServer::start().unwrap();
    let env = [
        ("QUEUE_TEST_OUTCOMES_LOCK_DURATION_MS", "2000"),
        ("QUEUE_TEST_OUTCOMES_STALLED_INTERVAL_MS", "1000"),
        ("QUEUE_TEST_OUTCOMES_MAX_STALLED_COUNT", "0"),
    ];
    let mut crashed = Worker::start_test_outcomes(&redis, &env).unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let id = q
        .add_one("sleep", json!({"ms": 3000}), json!({"attempts": 3}))
        .unwrap();
    wait_for_event(&redis, TEST_QUEUE, "active", &id, Duration::from_secs(30)).unwrap();
    crashed.kill();

    // With the default (1) the next worker would run it again (see the interop lifecycle tests); with 0 the
    // first stall fails it for good, whatever attempts are left.
    let _next = Worker::start_test_outcomes(&redis, &env).unwrap();
    let job = q
        .wait_finished(std::slice::from_ref(&id))
        .unwrap()
        .remove(0);
    assert_eq!(job.state, "failed", "{job:?}");
    assert_eq!(
        job.failed_reason.as_deref(),
        Some("job stalled more than allowable limit"),
        "{job:?}"
    );
    assert_eq!(
        job.returnvalue,
        Value::Null,
        "never run again to its end: {job:?}"
    );
    // As in BullMQ 6, the stall check marks the job and moves it to wait, and the next fetch fails it
    // without handing it to the plugin: one `stalled` event, then the failure.
    let events = queue_events(&redis, "bull", TEST_QUEUE).unwrap();
    let of = |name: &str| {
        events
            .iter()
            .filter(|e| e["event"] == name && e["jobId"] == id.as_str())
            .count()
    };
    assert_eq!(
        (of("stalled"), of("failed"), of("completed")),
        (1, 1, 0),
        "{events:?}"
    );
}

/// The library renews the lock of every job in flight (every half of the lock's duration) while jobs start
/// and finish around it: jobs that outlive their lock several times over complete on their first run, and
/// no stall check ever finds one of them without its lock (with a stall limit of 0, one such finding would
/// fail the job for good).
#[test]
fn jobs_outliving_their_lock_keep_it_and_complete_once() {
    let redis = RedisServer::start().unwrap();
    let env = [
        ("QUEUE_TEST_OUTCOMES_LOCK_DURATION_MS", "1000"),
        ("QUEUE_TEST_OUTCOMES_STALLED_INTERVAL_MS", "300"),
        ("QUEUE_TEST_OUTCOMES_MAX_STALLED_COUNT", "0"),
        ("QUEUE_TEST_OUTCOMES_CONCURRENCY", "4"),
    ];
    let _worker = Worker::start_test_outcomes(&redis, &env).unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    // Staggered lengths, so that runs finish (and their entries leave the list) while others are renewed.
    let ids: Vec<String> = [3500, 3000, 2500, 4000, 100, 100]
        .iter()
        .map(|ms| q.add_one("sleep", json!({ "ms": ms }), json!({})).unwrap())
        .collect();
    let jobs = q.wait_finished(&ids).unwrap();
    for job in &jobs {
        assert_eq!(job.state, "completed", "{job:?}");
        assert_eq!(job.attempts_made, 1, "{job:?}");
    }
    let events = queue_events(&redis, "bull", TEST_QUEUE).unwrap();
    let count = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    assert_eq!(
        (count("stalled"), count("active"), count("completed")),
        (0, ids.len(), ids.len()),
        "{events:?}"
    );
}

#[test]
fn a_cron_job_scheduler_created_by_node_produces_on_the_pattern() {
    let redis = RedisServer::start().unwrap();
    let _worker = Worker::start_test_outcomes(&redis, &[]).unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    q.call(
        "upsert-scheduler",
        json!({
            "id": "digest-every-second",
            "repeat": {"pattern": "* * * * * *"},
            "template": {"name": "complete", "data": {"from": "cron"}},
        }),
    )
    .unwrap();
    // Only the host consumes, so only it can schedule the iterations after the first.
    let done = wait_until(Duration::from_secs(60), "4 cron jobs completed", || {
        let ids: Vec<String> = queue_events(&redis, "bull", TEST_QUEUE)
            .ok()?
            .iter()
            .filter(|e| e["event"] == "completed")
            .map(|e| e["jobId"].as_str().unwrap_or_default().to_owned())
            .collect();
        (ids.len() >= 4).then_some(ids)
    })
    .unwrap();
    let jobs = q.jobs(&done, false).unwrap();
    let mut due: Vec<u64> = Vec::new();
    for job in &jobs {
        assert_eq!(job.state, "completed", "{job:?}");
        assert_eq!(job.returnvalue, json!({"echo": {"from": "cron"}}));
        assert_eq!(job.repeat_job_key.as_deref(), Some("digest-every-second"));
        // Each iteration's id ends with its tick (`repeat:<scheduler>:<millis>`): on this pattern, a whole
        // second; it ran no earlier.
        let at: u64 = job
            .id
            .strip_prefix("repeat:digest-every-second:")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("not a scheduler iteration id: {job:?}"));
        assert_eq!(at % 1000, 0, "not on the pattern's second: {job:?}");
        assert!(
            job.processed_on.unwrap() >= at,
            "ran before its tick: {job:?}"
        );
        due.push(at);
    }
    due.sort();
    due.dedup();
    assert_eq!(due.len(), jobs.len(), "one job per tick: {due:?}");
    for pair in due.windows(2) {
        assert!(pair[1] - pair[0] >= 1000, "ticks a second apart: {due:?}");
    }
    let removed = q
        .call("remove-scheduler", json!({"id": "digest-every-second"}))
        .unwrap();
    assert_eq!(removed["removed"], true);
}

#[test]
fn backoff_jitter_keeps_each_retry_within_half_and_all_of_the_backoff() {
    let redis = RedisServer::start().unwrap();
    let _worker = Worker::start_test_outcomes(&redis, &[]).unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let max = 800;
    let id = q
        .add_one(
            "fail",
            json!({"message": "flaky"}),
            json!({"attempts": 5, "backoff": {"type": "fixed", "delay": max, "jitter": 0.5}}),
        )
        .unwrap();
    let job = q
        .wait_finished(std::slice::from_ref(&id))
        .unwrap()
        .remove(0);
    assert_eq!(job.state, "failed", "{job:?}");
    assert_eq!(job.attempts_made, 5, "{job:?}");
    let events = queue_events(&redis, "bull", TEST_QUEUE).unwrap();
    let of = |name: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["event"] == name && e["jobId"] == id.as_str())
            .collect()
    };
    let (actives, delayed) = (of("active"), of("delayed"));
    assert_eq!((actives.len(), delayed.len()), (5, 4), "{events:?}");
    for (n, retry) in delayed.iter().enumerate() {
        let due: u64 = retry["delay"].as_str().unwrap().parse().unwrap();
        // The host picked the delay after the attempt started (its `active` event) and before the `delayed`
        // event was written: due - start >= delay >= max/2, and due - written <= delay <= max. Both hold
        // however slow the machine is.
        let started = actives[n]["ms"].as_u64().unwrap();
        let written = retry["ms"].as_u64().unwrap();
        assert!(
            due >= started + max / 2,
            "retry {} due {} ms after its attempt started: below half the backoff",
            n + 1,
            due - started
        );
        assert!(
            due <= written + max,
            "retry {} due {} ms after it was scheduled: above the backoff",
            n + 1,
            due - written
        );
    }
}

#[test]
fn the_failure_reason_is_visible_while_the_job_waits_for_its_retry() {
    let redis = RedisServer::start().unwrap();
    let _worker = Worker::start_test_outcomes(&redis, &[]).unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    // A long backoff, so that the job is still waiting when it is read.
    let id = q
        .add_one(
            "fail",
            json!({"message": "provider said no, try later"}),
            json!({"attempts": 3, "backoff": {"type": "fixed", "delay": 60000}}),
        )
        .unwrap();
    wait_for_event(&redis, TEST_QUEUE, "delayed", &id, Duration::from_secs(30)).unwrap();
    let job = q.job(&id).unwrap();
    assert_eq!(job.state, "delayed", "{job:?}");
    assert_eq!(job.attempts_made, 1, "{job:?}");
    assert_eq!(
        job.failed_reason.as_deref(),
        Some("provider said no, try later"),
        "{job:?}"
    );
    assert!(job.finished_on.is_none(), "{job:?}");
}
