//! How the host finds Redis: `REDIS_HOST` / `REDIS_PORT` / `REDIS_PASSWORD` against a protected Redis, a
//! hash-tagged `BULLMQ_PREFIX` for Redis Cluster layouts, and a clear error when nothing is configured.

use frostguard_tests::{json, NodeQueue, RedisServer, Worker, TEST_PLUGIN, TEST_QUEUE};
use std::time::Duration;

#[test]
fn redis_host_port_and_password_variables_connect_to_a_protected_redis() {
    let redis = RedisServer::start_with_args(&["--requirepass", "s3cr3t-p@ss"]).unwrap();
    let port = redis.port().to_string();
    let _worker = Worker::builder()
        .plugins(&[TEST_PLUGIN])
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", port)
        .env("REDIS_PASSWORD", "s3cr3t-p@ss")
        .spawn_ready()
        .unwrap();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let jobs = q
        .run(json!([{"name": "complete", "data": {"result": "authenticated"}}]))
        .unwrap();
    assert_eq!(jobs[0].state, "completed", "{:?}", jobs[0]);
    assert_eq!(jobs[0].returnvalue, json!("authenticated"));
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
