//! Hostile clients on the ops port while jobs flow and Redis restarts: clients that send half a request
//! head are cut off after the header timeout, the connection cap holds (and is logged), `/healthz` keeps
//! answering, the worker reconnects to Redis, and every job completes. `HTTP_ADDR` picks the interface.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use frostguard_tests::{wait_until, NodeQueue, RedisServer, Worker, TEST_PLUGIN, TEST_QUEUE};

use frostguard_tests::http_get;

use crate::{sleep_jobs, spawn_with_http, tally};

#[test]
fn idle_and_slow_clients_cannot_exhaust_the_ops_port() {
    let mut redis =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"])
            .expect("start redis-server");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let url = redis.url();
    let (w, port) = spawn_with_http(|| {
        Worker::builder()
            .env("REDIS_URL", &url)
            .plugins(&[TEST_PLUGIN])
            .env("HTTP_ADDR", "127.0.0.1")
            .env("HTTP_MAX_CONNECTIONS", "40")
            .env("HTTP_HEADER_TIMEOUT_MS", "1000")
            .env("QUEUE_TEST_OUTCOMES_CONCURRENCY", "10")
    });
    assert!(
        w.has_line(&format!("addr=127.0.0.1:{port}")),
        "bound on HTTP_ADDR: {}",
        w.output_text()
    );
    let ids = q.add_bulk(sleep_jobs(300, 20)).expect("add jobs");
    // 400 clients that send half a head and wait, plus slow ones trickling a byte at a time.
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
            idle.push(s);
        }
    }
    let cap_logged = w
        .wait_for_line("at its connection cap", Duration::from_secs(10))
        .is_ok();
    let started = Instant::now();
    let answered = wait_until(
        Duration::from_secs(30),
        "/healthz answers under attack",
        || {
            http_get(port, "/healthz")
                .filter(|(s, _)| *s == 200)
                .map(|_| started.elapsed())
        },
    )
    .expect("healthz");
    // Redis restarts while the clients hold on: the worker must still be able to reconnect.
    redis.stop().expect("stop redis");
    std::thread::sleep(Duration::from_millis(500));
    redis.restart().expect("restart redis");
    // The first clients were accepted and then cut off by the server.
    let mut cut = 0;
    for s in idle.iter_mut().take(20) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        if matches!(s.read(&mut buf), Ok(0) | Err(_)) {
            cut += 1;
        }
    }
    let t = tally(&q, &ids, Duration::from_secs(90));
    eprintln!(
        "FAULT ops port: clients=400 half-open, cap=40, cap logged={cap_logged}, healthz answered after {answered:?}, \
         first 20 cut off={cut}, jobs={} completed={} duplicates={}",
        ids.len(),
        t.completed,
        t.ran_twice.len()
    );
    assert!(cap_logged, "reaching the connection cap is logged");
    assert_eq!(
        cut, 20,
        "idle clients are disconnected after the header timeout"
    );
    t.assert_all_completed_once("ops port under attack");
}
