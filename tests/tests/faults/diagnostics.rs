//! Diagnostics an operator can act on: a wrong Redis password is named as such, a refused connection as
//! refused, an impossible `REDIS_URL` stops the process at once, and a shutdown while Redis is down does not
//! blame the plugin.

use std::time::Duration;

use frostguard_tests::{
    free_port, json, wait_until, NodeQueue, RedisServer, Worker, TEST_PLUGIN, TEST_QUEUE,
};

#[test]
fn a_wrong_redis_password_is_reported_as_an_authentication_failure() {
    let redis = RedisServer::start_with_args(&["--requirepass", "right"]).expect("redis");
    let w = Worker::builder()
        .env(
            "REDIS_URL",
            format!("redis://:wrong@127.0.0.1:{}", redis.port()),
        )
        .plugins(&[TEST_PLUGIN])
        .spawn()
        .expect("spawn");
    let line = w
        .wait_for_line("Redis not reachable yet", Duration::from_secs(20))
        .expect("warned");
    assert!(line.contains("authentication failed"), "{line}");
    assert!(
        !line.contains("timed out") && !line.contains("wrong"),
        "{line}"
    );
}

#[test]
fn a_refused_connection_is_reported_as_refused() {
    let port = free_port();
    let w = Worker::builder()
        .env("REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .plugins(&[TEST_PLUGIN])
        .spawn()
        .expect("spawn");
    let line = w
        .wait_for_line("Redis not reachable yet", Duration::from_secs(20))
        .expect("warned");
    assert!(line.contains("connection refused"), "{line}");
}

#[test]
fn an_impossible_redis_url_stops_the_process_at_once() {
    for url in [
        "redis://127.0.0.1:0",
        "redis://127.0.0.1:99999",
        "redis://:pw@127.0.0.1:70000/0",
    ] {
        let out = Worker::builder()
            .env("REDIS_URL", url)
            .plugins(&[TEST_PLUGIN])
            .output(Duration::from_secs(20))
            .expect("runs");
        assert_ne!(out.status.code(), Some(0), "{url}: {}", out.text());
        assert!(out.text().contains("REDIS_URL"), "{url}: {}", out.text());
        assert!(
            !out.text().contains(":pw@"),
            "password leaked: {}",
            out.text()
        );
    }
}

/// SIGTERM while Redis is down and the plugin has already finished: the drain says the results wait for
/// Redis, not that the plugin ignored cancellation.
#[test]
fn shutdown_while_redis_is_down_does_not_blame_the_plugin() {
    let mut redis = RedisServer::start().expect("redis");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let mut w = Worker::builder()
        .redis(&redis)
        .plugins(&[TEST_PLUGIN])
        .env("SHUTDOWN_TIMEOUT_MS", "1000")
        .spawn_ready()
        .expect("host");
    let ids = q
        .add(json!([{"name": "sleep", "data": {"ms": 1500}}]))
        .expect("add");
    let active_key = format!("bull:{TEST_QUEUE}:active");
    wait_until(Duration::from_secs(10), "job active", || {
        let n = redis.cmd(&["LLEN", &active_key]).ok()?.as_int()?;
        (n == 1).then_some(())
    })
    .expect("active");
    drop(ids);
    redis.kill();
    // The plugin returns while Redis is away (its job takes 1.5 s).
    std::thread::sleep(Duration::from_millis(2000));
    let status = w.terminate(Duration::from_secs(30)).expect("exits");
    let text = w.output_text();
    assert!(status.success(), "{text}");
    assert!(!text.contains("ignored cancellation"), "{text}");
    assert!(
        text.contains("wait for Redis") || text.contains("Redis has not recorded"),
        "the unrecorded result is named: {text}"
    );
}
