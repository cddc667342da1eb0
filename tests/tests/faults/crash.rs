//! A host killed with SIGKILL while running jobs: a second host, or a Node worker, takes the jobs over once
//! their locks expire, within about one stalled interval; each stalled job is logged and counted. SIGTERM
//! under load finishes what runs and loses nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use frostguard_tests::{json, wait_until, NodeQueue, RedisServer, Worker, TEST_PLUGIN, TEST_QUEUE};

use crate::{metric, short_intervals, sleep_jobs, spawn_with_http, tally, LOCK_MS, STALLED_MS};

fn host(redis: &RedisServer, name: &str) -> frostguard_tests::WorkerBuilder {
    short_intervals(Worker::builder().redis(redis).plugins(&[TEST_PLUGIN]))
        .env("HOSTNAME", name)
        .env("QUEUE_TEST_OUTCOMES_CONCURRENCY", "5")
}

/// Ids of the jobs `host_name` holds in `active` (read straight from Redis: quicker than a Node round trip).
fn active_on(redis: &RedisServer, host_name: &str) -> BTreeSet<String> {
    let active = redis
        .cmd(&["LRANGE", "bull:test-outcomes:active", "0", "-1"])
        .map(|r| r.strings())
        .unwrap_or_default();
    active
        .into_iter()
        .filter(|id| {
            redis
                .cmd(&["HGET", &format!("bull:test-outcomes:{id}"), "pb"])
                .ok()
                .is_some_and(|r| r.as_str() == Some(host_name))
        })
        .collect()
}

#[test]
fn a_killed_hosts_jobs_are_taken_over_by_a_second_host() {
    let redis = RedisServer::start().expect("start redis-server");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let mut a = host(&redis, "host-a").spawn_ready().expect("host a");
    let ids = q.add_bulk(sleep_jobs(40, 600)).expect("add jobs");
    let held = wait_until(Duration::from_secs(20), "host a running jobs", || {
        let held = active_on(&redis, "host-a");
        (held.len() >= 3).then_some(held)
    })
    .expect("host a took jobs");
    a.kill();
    let killed = Instant::now();
    let (b, port) = spawn_with_http(|| host(&redis, "host-b"));
    let recovered = wait_until(
        Duration::from_secs(30),
        "host a's jobs back in play",
        || {
            let still = active_on(&redis, "host-a");
            held.iter()
                .all(|id| !still.contains(id))
                .then(|| killed.elapsed())
        },
    )
    .expect("recovery");
    let t = tally(&q, &ids, Duration::from_secs(60));
    let stalled_logged = b
        .lines()
        .iter()
        .filter(|l| l.contains("stalled job moved back to wait"))
        .count();
    let stalled_events = q
        .events()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == "stalled")
        .count();
    let stalled_metric = metric(
        port,
        "frostguard_jobs_stalled_total{queue=\"test-outcomes\"}",
    ) as usize;
    eprintln!(
        "FAULT kill-9 + second host: jobs={} completed={} held_by_killed={} recovered_after={recovered:?} \
         (lock {LOCK_MS} ms, stalled interval {STALLED_MS} ms) stalled logged={stalled_logged} counted={stalled_metric} \
         node_events={stalled_events} duplicates={}",
        ids.len(),
        t.completed,
        held.len(),
        t.ran_twice.len()
    );
    t.assert_all_completed_once("kill -9, second host");
    assert!(stalled_logged >= held.len(), "each stalled job logged");
    assert_eq!(stalled_metric, stalled_logged, "each stalled job counted");
    assert_eq!(
        stalled_events, stalled_logged,
        "Node saw the same stalled jobs"
    );
    // Only the jobs the killed host was running may have run twice.
    assert!(
        t.ran_twice.iter().all(|id| held.contains(id)),
        "{:?} vs {held:?}",
        t.ran_twice
    );
}

#[test]
fn a_killed_hosts_jobs_are_taken_over_by_a_node_worker() {
    let redis = RedisServer::start().expect("start redis-server");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let mut a = host(&redis, "host-a").spawn_ready().expect("host a");
    let ids = q.add_bulk(sleep_jobs(40, 800)).expect("add jobs");
    wait_until(Duration::from_secs(20), "host a running jobs", || {
        (active_on(&redis, "host-a").len() >= 3).then_some(())
    })
    .expect("host a took jobs");
    a.kill();
    let killed = Instant::now();
    let left = q
        .jobs(&ids, false)
        .expect("snapshots")
        .iter()
        .filter(|j| j.state != "completed")
        .count();
    let out = q
        .call(
            "node-worker",
            json!({"count": left, "concurrency": 5, "timeoutMs": 60000, "stalledInterval": STALLED_MS}),
        )
        .expect("node worker");
    let t = tally(&q, &ids, Duration::from_secs(30));
    eprintln!(
        "FAULT kill-9 + Node worker: jobs={} completed={} taken_over_by_node={left} all_done_after={:?}",
        ids.len(),
        t.completed,
        killed.elapsed()
    );
    assert_eq!(out["timedOut"], false, "{out}");
    t.assert_all_completed_once("kill -9, Node worker");
}

#[test]
fn sigterm_under_load_finishes_running_jobs_and_loses_none() {
    let redis = RedisServer::start().expect("start redis-server");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let mut a = host(&redis, "host-a").spawn_ready().expect("host a");
    let ids = q.add_bulk(sleep_jobs(30, 300)).expect("add jobs");
    wait_until(Duration::from_secs(20), "host a running jobs", || {
        (active_on(&redis, "host-a").len() >= 3).then_some(())
    })
    .expect("host a took jobs");
    let status = a.terminate(Duration::from_secs(40)).expect("host a exits");
    assert!(status.success(), "graceful exit: {status:?}");
    let after_a = q.jobs(&ids, false).expect("snapshots");
    assert!(
        after_a.iter().all(|j| j.state != "active"),
        "nothing left active after SIGTERM"
    );
    let done_by_a = after_a.iter().filter(|j| j.state == "completed").count();
    let _b = host(&redis, "host-b").spawn_ready().expect("host b");
    let t = tally(&q, &ids, Duration::from_secs(60));
    eprintln!(
        "FAULT SIGTERM under load: jobs={} completed={} by_first_host={done_by_a} duplicates={}",
        ids.len(),
        t.completed,
        t.ran_twice.len()
    );
    t.assert_all_completed_once("SIGTERM");
    assert!(t.ran_twice.is_empty(), "{:?}", t.ran_twice);
}

/// The host's stalled check really runs every interval: the stalled-check key is set by each run, so its
/// successive values count the runs (bullmq-official's own check ran only every other interval).
#[test]
fn the_stalled_check_runs_every_interval() {
    let redis = RedisServer::start().expect("start redis-server");
    let _w = host(&redis, "host-a")
        .env("QUEUE_TEST_OUTCOMES_STALLED_INTERVAL_MS", "500")
        .spawn_ready()
        .expect("host");
    let mut runs = BTreeSet::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        if let Ok(v) = redis.cmd(&["GET", "bull:test-outcomes:stalled-check"]) {
            if let Some(s) = v.as_str() {
                runs.insert(s.to_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    eprintln!(
        "FAULT stalled-check cadence: {} runs in 6 s at a 500 ms interval",
        runs.len()
    );
    assert!(
        runs.len() >= 9,
        "only {} stalled checks in 6 s at a 500 ms interval",
        runs.len()
    );
}
