//! `frostguard-worker healthcheck`, the container health check: its exit status against a real worker that
//! is up, draining (SIGTERM with a long job still running) and gone, and against a port where something
//! other than a live worker listens.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use frostguard_tests::{
    free_port, json, FakeHttp, Finished, NodeQueue, RedisServer, Reply, Worker, TEST_QUEUE,
};

/// Runs `frostguard-worker healthcheck` with `HTTP_PORT=port`.
fn healthcheck(port: u16) -> Finished {
    Worker::builder()
        .args(["healthcheck"])
        .env("HTTP_PORT", port.to_string())
        .output(Duration::from_secs(30))
        .expect("run frostguard-worker healthcheck")
}

fn assert_exit(out: &Finished, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", out.text());
    assert!(
        out.text().contains(needle),
        "expected {needle:?} in: {}",
        out.text()
    );
}

/// Runs `frostguard-worker healthcheck` with `HTTP_ADDR=addr` and `HTTP_PORT=port`.
fn healthcheck_at(addr: &str, port: u16) -> Finished {
    Worker::builder()
        .args(["healthcheck"])
        .env("HTTP_ADDR", addr)
        .env("HTTP_PORT", port.to_string())
        .output(Duration::from_secs(30))
        .expect("run frostguard-worker healthcheck")
}

/// Starts the host with its HTTP endpoint on a free port and a long drain budget. A port picked as free can
/// be taken by another test's server before the host binds it; the host then exits naming HTTP_PORT, and
/// another port is tried.
fn start_with_http_port(redis: &RedisServer) -> (Worker, u16) {
    start_with_http_endpoint(redis, "0.0.0.0")
}

/// As [`start_with_http_port`], with the endpoint bound to `addr` (`HTTP_ADDR`).
fn start_with_http_endpoint(redis: &RedisServer, addr: &str) -> (Worker, u16) {
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = free_port();
        match Worker::start_test_outcomes(
            redis,
            &[
                ("HTTP_ADDR", addr),
                ("HTTP_PORT", &port.to_string()),
                ("SHUTDOWN_TIMEOUT_MS", "120000"),
            ],
        ) {
            Ok(worker) => return (worker, port),
            Err(e) if format!("{e:#}").contains("HTTP_PORT") => last_error = format!("{e:#}"),
            Err(e) => panic!("host did not get ready: {e:#}"),
        }
    }
    panic!("no free HTTP port for the host after 5 tries: {last_error}");
}

#[test]
fn healthy_while_up_and_while_draining_unhealthy_once_gone() {
    let redis = RedisServer::start().expect("start redis-server");
    let (mut worker, port) = start_with_http_port(&redis);

    assert_exit(&healthcheck(port), 0, "healthy");

    // A job far longer than the test: the drain after SIGTERM waits for it.
    let queue = NodeQueue::new(&redis, TEST_QUEUE);
    let id = queue
        .add_one("sleep", json!({ "ms": 600_000 }), json!({}))
        .expect("enqueue a long job");
    queue
        .wait_states(&[id], &["active"], Duration::from_secs(30))
        .expect("the long job starts");
    worker.sigterm().expect("SIGTERM");
    worker
        .wait_for_line("shutdown begin", Duration::from_secs(30))
        .expect("the worker begins its shutdown");

    // Draining: alive and finishing its work, so still healthy (an orchestrator must not restart it now).
    assert_exit(&healthcheck(port), 0, "healthy");
    assert!(worker.is_running(), "the worker is still draining");
    assert!(
        !worker.has_line("shutdown complete"),
        "the drain is not over"
    );

    worker.kill();
    worker
        .wait_exit(Duration::from_secs(30))
        .expect("worker gone");
    assert_exit(&healthcheck(port), 1, "nothing accepts connections");
}

/// A worker told to listen on one address (`HTTP_ADDR`, e.g. a pod IP) is not on 127.0.0.1: the check reads
/// the same variable and asks it there.
#[test]
fn asks_the_address_the_worker_binds() {
    let redis = RedisServer::start().expect("start redis-server");
    // 127.0.0.2 is loopback on Linux but not 127.0.0.1: nothing of the worker answers on 127.0.0.1.
    let (mut worker, port) = start_with_http_endpoint(&redis, "127.0.0.2");

    let out = healthcheck_at("127.0.0.2", port);
    assert_exit(&out, 0, "healthy: /healthz on 127.0.0.2");
    // Left at its default (every interface), the check asks the loopback address, where no worker listens.
    assert_exit(&healthcheck(port), 1, "nothing accepts connections");

    worker
        .terminate(Duration::from_secs(30))
        .expect("worker stops");
}

#[test]
fn unhealthy_when_the_port_is_silent_answers_something_else_or_is_disabled() {
    // Accepts connections and never answers: the check gives up within its 2 s budget.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().take(1) {
            held.push(stream);
            std::thread::sleep(Duration::from_secs(30));
        }
    });
    let started = Instant::now();
    let out = healthcheck(silent_port);
    assert_exit(&out, 1, "no answer from /healthz within 2 s");
    // Generous bound: the point is that the check does not hang, not how fast the machine is.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    drop(holder);

    // Another program answering 200 on the port is not a live worker.
    let other =
        FakeHttp::start(|_, _| Reply::json(200, &json!({ "status": "welcome" }))).expect("fake");
    assert_exit(&healthcheck(other.port()), 1, "another program");

    let not_found = FakeHttp::start(|_, _| Reply::status(503)).expect("fake");
    assert_exit(&healthcheck(not_found.port()), 1, "answered HTTP 503");

    assert_exit(&healthcheck(0), 1, "HTTP_PORT is 0");
}
