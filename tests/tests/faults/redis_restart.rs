//! Redis stopped (SIGTERM, data kept on disk) and started again while 20 jobs at a time are finishing:
//! every completion reaches Redis once Redis is back, no plugin runs twice, and the completed counter equals
//! what Redis recorded. Repeated with varied downtime and timing.

use std::time::{Duration, Instant};

use frostguard_tests::{NodeQueue, Worker, TEST_PLUGIN, TEST_QUEUE};

use crate::{metric, persistent_redis, sleep_jobs, spawn_with_http, tally};

#[test]
fn redis_restarts_under_load_record_every_completion_once() {
    let mut redis = persistent_redis();
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let url = redis.url();
    let (worker, port) = spawn_with_http(|| {
        Worker::builder()
            .env("REDIS_URL", &url)
            .plugins(&[TEST_PLUGIN])
            .env("QUEUE_TEST_OUTCOMES_CONCURRENCY", "20")
            // The lock must outlast the outage for the result to be ours to record.
            .env("QUEUE_TEST_OUTCOMES_LOCK_DURATION_MS", "15000")
            .env("QUEUE_TEST_OUTCOMES_STALLED_INTERVAL_MS", "2000")
    });
    let mut ids = Vec::new();
    // (wait before stopping, downtime) per round
    let rounds = [(150u64, 400u64), (400, 1500), (50, 3000), (250, 800)];
    for (round, (before, down)) in rounds.iter().enumerate() {
        ids.extend(q.add_bulk(sleep_jobs(150, 20)).expect("add jobs"));
        std::thread::sleep(Duration::from_millis(*before));
        redis.stop().expect("stop redis");
        std::thread::sleep(Duration::from_millis(*down));
        let restarted = Instant::now();
        redis.restart().expect("start redis again");
        eprintln!(
            "round {round}: down {down} ms, back after {:?}",
            restarted.elapsed()
        );
    }
    let t = tally(&q, &ids, Duration::from_secs(120));
    let replayed = worker
        .lines()
        .iter()
        .filter(|l| l.contains("back at the head of its queue"))
        .count();
    let failed_calls = worker
        .lines()
        .iter()
        .filter(|l| l.contains("failed to move job to completed"))
        .count();
    eprintln!(
        "FAULT redis-restart: jobs={} completed={} failed={} unfinished={} ran_twice={} outages={} \
         (down 0.4/1.5/3.0/0.8 s) finishing_calls_failed={failed_calls} replayed={replayed}",
        ids.len(),
        t.completed,
        t.failed,
        t.unfinished.len(),
        t.ran_twice.len(),
        rounds.len()
    );
    t.assert_all_completed_once("redis restarts");
    assert!(
        t.ran_twice.is_empty(),
        "plugin ran twice for {:?}",
        t.ran_twice
    );
    let counted = metric(
        port,
        "frostguard_jobs_completed_total{queue=\"test-outcomes\"}",
    );
    assert_eq!(counted as usize, ids.len(), "completed counter vs Redis");
}
