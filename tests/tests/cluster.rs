//! Scale-out on Redis Cluster: a real 3-primary, 3-replica cluster started by the test, the Node producer on
//! ioredis' `Cluster` with the hash-tagged prefix `{bull}`, and three `frostguard-worker` hosts sharing two
//! queues (`test-outcomes` and `sms-notifications` in dry-run). Thousands of jobs are completed once each,
//! spread over all hosts; then the primary that serves the queues is killed mid-run, its replica takes over,
//! and the hosts carry on with nothing lost (a job cut short by the failover runs again, as BullMQ's
//! at-least-once promises). The operator commands (`stats`, `enqueue`) and the depth gauges work on the
//! cluster, and cluster mode without a hash tag is refused before anything starts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use frostguard_tests::{
    free_port, http_get_body, reserved_port, NodeQueue, RedisCluster, Worker, SMS_PLUGIN,
    TEST_PLUGIN, TEST_QUEUE,
};
use serde_json::{json, Value};

const PREFIX: &str = "{bull}";
const SMS_QUEUE: &str = "sms-notifications";
const HOSTS: [&str; 3] = ["host-a", "host-b", "host-c"];
/// Jobs per queue before the failover, and during it.
const STEADY_JOBS: usize = 1000;
const FAILOVER_JOBS: usize = 500;
const CONCURRENCY: usize = 8;

/// One host on the cluster, serving both queues; short lock and stalled intervals so that a job whose
/// worker lost track of it in the failover is recovered within seconds. The first host serves its HTTP
/// endpoint on `http_port`.
fn host(cluster: &RedisCluster, name: &str, http_port: Option<u16>) -> Worker {
    let mut builder = Worker::builder()
        .env("REDIS_CLUSTER_NODES", cluster.seed_list())
        .env("BULLMQ_PREFIX", PREFIX)
        .env("HOSTNAME", name)
        .env("RUST_LOG", "warn,frostguard_worker=info")
        .env("SMS_DRY_RUN", "true")
        .env("METRICS_QUEUE_DEPTH_INTERVAL_MS", "500")
        .plugins(&[TEST_PLUGIN, SMS_PLUGIN]);
    for q in ["TEST_OUTCOMES", "SMS_NOTIFICATIONS"] {
        builder = builder
            .env(format!("QUEUE_{q}_CONCURRENCY"), CONCURRENCY.to_string())
            .env(format!("QUEUE_{q}_LOCK_DURATION_MS"), "5000")
            .env(format!("QUEUE_{q}_STALLED_INTERVAL_MS"), "2000")
            // No rate limit (the SMS plugin hints Telnyx's): throughput is not what is tested here.
            .env(format!("QUEUE_{q}_RATE_LIMIT_MAX"), "0");
    }
    if let Some(port) = http_port {
        builder = builder.env("HTTP_PORT", port.to_string());
    }
    builder.spawn_ready().expect("host starts on the cluster")
}

fn sms_job() -> Value {
    json!({
        "name": "sms:send",
        "data": {
            "organizationId": "11111111-2222-3333-4444-555555555555",
            "phoneNumber": "+15555550167",
            "message": "CRITICAL: Temperature alert",
            "alertId": "a-1",
            "userId": "u-1",
            "alertType": "alarm_active",
        },
        "opts": {"attempts": 5, "backoff": {"type": "exponential", "delay": 100}},
    })
}

/// Adds `count` copies of `template` (`data.i` numbering them) with a long event stream: every job's events
/// are counted afterwards.
fn add(node: &NodeQueue, template: Value, count: usize) -> Vec<String> {
    let out = node
        .call(
            "add",
            json!({"template": template, "count": count, "eventsMaxLen": 1_000_000}),
        )
        .expect("Node adds through ioredis Cluster");
    out["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect()
}

/// Waits for every job to finish and reports as Node sees it (see drive.mjs `fleet-report`).
fn report(node: &NodeQueue, ids: &[String]) -> Value {
    let out = node
        .call("fleet-report", json!({"ids": ids, "timeoutMs": 120_000}))
        .expect("fleet-report");
    assert_eq!(out["timedOut"], json!(false), "{}: {out}", node.queue());
    out
}

fn count(states: &Value, state: &str) -> u64 {
    states[state].as_u64().unwrap_or(0)
}

#[test]
fn three_hosts_share_both_queues_on_a_cluster_and_survive_a_primary_failover() {
    let mut cluster = RedisCluster::start(3, 1).unwrap();
    let test_q = NodeQueue::on_cluster(&cluster, TEST_QUEUE, PREFIX);
    let sms_q = NodeQueue::on_cluster(&cluster, SMS_QUEUE, PREFIX);
    let http_port = free_port();
    let mut hosts: Vec<Worker> = HOSTS
        .iter()
        .enumerate()
        .map(|(i, name)| host(&cluster, name, (i == 0).then_some(http_port)))
        .collect();

    // Steady state: thousands of jobs over both queues, each completed exactly once, by every host.
    let test_ids = add(&test_q, json!({"name": "complete"}), STEADY_JOBS);
    let sms_ids = add(&sms_q, sms_job(), STEADY_JOBS);
    let mut took_part = BTreeSet::new();
    for (node, ids) in [(&test_q, &test_ids), (&sms_q, &sms_ids)] {
        let r = report(node, ids);
        assert_eq!(
            count(&r["states"], "completed"),
            STEADY_JOBS as u64,
            "{}: {r}",
            node.queue()
        );
        assert_eq!(
            r["completedNotOnce"],
            json!([]),
            "{}: a job completed other than once: {r}",
            node.queue()
        );
        assert_eq!(
            r["rerun"],
            json!([]),
            "{}: a job ran twice without any failure: {r}",
            node.queue()
        );
        assert_eq!(r["wrongValue"], json!([]), "{}: {r}", node.queue());
        took_part.extend(
            r["processedBy"]
                .as_object()
                .expect("processedBy")
                .keys()
                .cloned(),
        );
    }
    let all: BTreeSet<String> = HOSTS.iter().map(|h| h.to_string()).collect();
    assert_eq!(took_part, all, "every host takes part in the work");

    // The operator's view on the cluster: queues found by SCAN on every primary, workers by CLIENT LIST on
    // every primary, the counts by the host's own script; and the depth gauges of a host.
    let stats = Worker::builder()
        .env("REDIS_CLUSTER_NODES", cluster.seed_list())
        .env("BULLMQ_PREFIX", PREFIX)
        .env("RUST_LOG", "error")
        .args(["stats", "--json"])
        .output(Duration::from_secs(30))
        .unwrap();
    assert!(stats.status.success(), "{}", stats.text());
    let json_start = stats.text().find('{').expect("JSON report");
    let report_json: Value = serde_json::from_str(&stats.text()[json_start..]).expect("stats JSON");
    let queues = report_json["queues"].as_array().expect("queues");
    let names: Vec<&str> = queues.iter().filter_map(|q| q["queue"].as_str()).collect();
    assert_eq!(names, [SMS_QUEUE, TEST_QUEUE], "{report_json}");
    for q in queues {
        assert_eq!(q["counts"]["completed"], json!(STEADY_JOBS), "{q}");
        assert_eq!(q["workers"], json!(HOSTS.len()), "one worker per host: {q}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let series = format!(
        "frostguard_queue_jobs{{queue=\"{TEST_QUEUE}\",state=\"completed\"}} {STEADY_JOBS}"
    );
    while !http_get_body(http_port, "/metrics").is_some_and(|m| m.lines().any(|l| l == series)) {
        assert!(Instant::now() < deadline, "no {series} in /metrics");
        std::thread::sleep(Duration::from_millis(200));
    }
    let enqueued = Worker::builder()
        .env("REDIS_CLUSTER_NODES", cluster.seed_list())
        .env("BULLMQ_PREFIX", PREFIX)
        .args([
            "enqueue",
            TEST_QUEUE,
            "complete",
            r#"{"result":{"via":"enqueue"}}"#,
            "--wait",
            "--timeout-ms",
            "20000",
        ])
        .output(Duration::from_secs(30))
        .unwrap();
    assert!(enqueued.status.success(), "{}", enqueued.text());
    assert!(
        enqueued
            .text()
            .contains(r#""returnvalue":{"via":"enqueue"}"#),
        "{}",
        enqueued.text()
    );

    // Failed attempts on the cluster: the host records each attempt's failedReason (an atomic pipeline on
    // the job's slot) and schedules the jittered backoff itself.
    let retry_ids = add(
        &test_q,
        json!({"name": "fail-until", "data": {"succeedOnAttempt": 2},
               "opts": {"attempts": 3, "backoff": {"type": "fixed", "delay": 50, "jitter": 0.5}}}),
        10,
    );
    for job in test_q.wait_finished(&retry_ids).unwrap() {
        assert_eq!(job.state, "completed", "{job:?}");
        assert_eq!(job.attempts_made, 2, "{job:?}");
        assert_eq!(job.returnvalue, json!({"attempt": 2}), "{job:?}");
        assert_eq!(
            job.failed_reason.as_deref(),
            Some("attempt 1 failed"),
            "{job:?}"
        );
    }

    // Hosts leaving and joining, then a failover: more work is added (and replicated); while the hosts are
    // busy with it, one host dies (SIGKILL, its jobs still locked) and a new one joins, then the primary
    // serving the queues is killed and its replica takes over.
    let (primary, replicas) = cluster
        .owner_of(&format!("{PREFIX}:{TEST_QUEUE}:wait"))
        .unwrap();
    let sms_ids = add(&sms_q, sms_job(), FAILOVER_JOBS);
    let test_ids = add(
        &test_q,
        json!({"name": "sleep", "data": {"ms": 250}}),
        FAILOVER_JOBS,
    );
    cluster
        .wait_replicated(primary, replicas[0], Duration::from_secs(10))
        .unwrap();
    let completed_key = format!("{PREFIX}:{TEST_QUEUE}:completed");
    let before = STEADY_JOBS + 1 + 10; // and the enqueued job and the retried ones
    let wait_completed = |cluster: &mut RedisCluster, at_least: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = cluster
                .cmd(&["ZCARD", &completed_key])
                .unwrap()
                .as_int()
                .unwrap_or(0) as usize;
            if done >= before + at_least {
                assert!(
                    done < before + FAILOVER_JOBS,
                    "all jobs finished already; the fault would prove nothing"
                );
                return;
            }
            assert!(Instant::now() < deadline, "the hosts make no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_completed(&mut cluster, FAILOVER_JOBS / 10);
    let mut gone = hosts.pop().expect("host-c");
    gone.kill();
    hosts.push(host(&cluster, "host-d", None));
    wait_completed(&mut cluster, FAILOVER_JOBS / 4);
    cluster.kill(primary);
    let promoted = cluster
        .wait_failover(&completed_key, primary, Duration::from_secs(30))
        .unwrap();
    assert_ne!(promoted, primary);

    let mut reruns = Vec::new();
    for (node, ids) in [(&test_q, &test_ids), (&sms_q, &sms_ids)] {
        let r = report(node, ids);
        assert_eq!(
            count(&r["states"], "completed"),
            FAILOVER_JOBS as u64,
            "{}: {r}",
            node.queue()
        );
        assert_eq!(
            r["completedNotOnce"],
            json!([]),
            "{}: a completion recorded other than once: {r}",
            node.queue()
        );
        reruns.extend(r["rerun"].as_array().cloned().unwrap_or_default());
        if node.queue() == TEST_QUEUE {
            assert!(
                r["processedBy"]["host-d"].as_u64().unwrap_or(0) > 0,
                "the joining host works: {r}"
            );
        }
    }
    // The killed host's jobs were recovered by the stalled check of the others and ran again; at most the
    // jobs running at either fault run twice.
    assert!(
        !reruns.is_empty(),
        "the killed host's jobs were never run again"
    );
    assert!(
        reruns.len() <= 2 * HOSTS.len() * 2 * CONCURRENCY,
        "{} jobs ran again; only those running at a fault may: {reruns:?}",
        reruns.len()
    );
    eprintln!(
        "host-c killed, host-d joined; primary {primary} killed, {promoted} promoted; {} jobs ran again",
        reruns.len()
    );
    // Readiness follows Redis: the surviving first host is ready again once the replica took over.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = http_get_body(http_port, "/readyz").unwrap_or_default();
        if body.contains("\"ready\":true") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz after the failover: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for h in &mut hosts {
        assert!(
            h.is_running(),
            "a host died in the failover:\n{}",
            h.output_text()
        );
    }
}

#[test]
fn cluster_mode_without_a_hash_tag_is_refused_with_what_to_set() {
    // Nothing listens there: the refusal comes before any connection.
    let (port, _held) = reserved_port();
    let nodes = format!("127.0.0.1:{port}");
    let run = Worker::builder()
        .env("REDIS_CLUSTER_NODES", &nodes)
        .plugins(&[TEST_PLUGIN, SMS_PLUGIN])
        .env("SMS_DRY_RUN", "true")
        .output(Duration::from_secs(30))
        .unwrap();
    assert!(!run.status.success(), "{}", run.text());
    let text = run.text();
    assert!(
        text.contains("REDIS_CLUSTER_NODES selects Redis Cluster")
            && text.contains(&format!(
                "queues {SMS_QUEUE}, {TEST_QUEUE} under prefix \"bull\""
            ))
            && text.contains("BULLMQ_PREFIX={bull}"),
        "{text}"
    );
    assert!(!text.contains("worker ready"), "{text}");

    let enqueue = Worker::builder()
        .env("REDIS_CLUSTER_NODES", &nodes)
        .env("BULLMQ_PREFIX", "fg")
        .args(["enqueue", TEST_QUEUE, "complete", "{}"])
        .output(Duration::from_secs(30))
        .unwrap();
    assert!(!enqueue.status.success(), "{}", enqueue.text());
    assert!(
        enqueue
            .text()
            .contains(&format!("queue {TEST_QUEUE} under prefix \"fg\"")),
        "{}",
        enqueue.text()
    );

    // A queue name that carries its own hash tag is accepted (the process then only fails to connect).
    let tagged = Worker::builder()
        .env("REDIS_CLUSTER_NODES", &nodes)
        .args(["enqueue", "{alerts}", "complete", "{}"])
        .output(Duration::from_secs(30))
        .unwrap();
    assert!(!tagged.text().contains("hash tag"), "{}", tagged.text());
}
