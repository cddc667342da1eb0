//! Hostile job data and a poisoned plugin directory: each bad job fails with a reason that names the
//! problem, each bad file is rejected by name, and the good work goes on.

use std::time::Duration;

use frostguard_tests::{
    json, plugin_lib, serde_json::Value, wait_until, NodeQueue, RedisServer, TempDir, Worker,
    TEST_PLUGIN, TEST_QUEUE,
};

use frostguard_tests::http_get;

use crate::{metric, spawn_with_http, tally};

#[test]
fn hostile_job_data_fails_with_a_reason_and_loses_nothing() {
    let redis = RedisServer::start().expect("start redis-server");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let mut deep = json!({"leaf": true});
    for _ in 0..120 {
        deep = json!({ "d": deep });
    }
    let jobs = json!([
        {"name": "complete", "data": {"i": 0}},
        {"name": "complete", "data": {"not": "json yet"}},
        {"name": "no-such-job", "data": {}},
        {"name": "complete", "data": {"big": "x".repeat(100_000)}},
        {"name": "complete", "data": deep},
        {"name": "complete", "data": [1, 2, 3]},
        {"name": "complete", "data": "a bare string"},
        {"name": "complete", "data": {"emoji": "\u{1F9CA}\u{0000}", "ctrl": "\u{0007}"}},
    ]);
    let ids = q.add(jobs).expect("add jobs");
    // Job 2's stored data is replaced by text that is not JSON (a producer bug or a hand edit).
    let key = format!("bull:{TEST_QUEUE}:{}", ids[1]);
    redis
        .cmd(&["HSET", &key, "data", "{\"to\": +1555"])
        .expect("corrupt data");
    let _w = Worker::builder()
        .redis(&redis)
        .plugins(&[TEST_PLUGIN])
        .spawn_ready()
        .expect("host");
    // Node cannot read the corrupted job at all (its getJob throws on the data), so it is read from Redis.
    let not_json = wait_until(Duration::from_secs(60), "the non-JSON job failed", || {
        let failed = redis
            .cmd(&["ZSCORE", &format!("bull:{TEST_QUEUE}:failed"), &ids[1]])
            .ok()?;
        failed.as_str()?;
        redis
            .cmd(&["HGET", &key, "failedReason"])
            .ok()?
            .as_str()
            .map(str::to_owned)
    })
    .expect("non-JSON job failed");
    let readable: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, id)| id.clone())
        .collect();
    let t = tally(&q, &readable, Duration::from_secs(60));
    let snaps: std::collections::HashMap<String, _> = q
        .jobs(&readable, false)
        .expect("snapshots")
        .into_iter()
        .map(|j| (j.id.clone(), j))
        .collect();
    let state = |i: usize| {
        snaps
            .get(&ids[i])
            .map(|j| j.state.clone())
            .unwrap_or_default()
    };
    let reason = |i: usize| {
        snaps
            .get(&ids[i])
            .and_then(|j| j.failed_reason.clone())
            .unwrap_or_default()
    };
    eprintln!(
        "FAULT hostile data: jobs={} completed={} failed={} reasons: not-json={not_json:?} unknown-name={:?}",
        ids.len(),
        t.completed,
        t.failed + 1,
        reason(2)
    );
    assert!(
        t.unfinished.is_empty() && t.failed_without_reason.is_empty(),
        "{t:?}"
    );
    assert!(not_json.contains("job data is not JSON"), "{not_json}");
    assert!(
        !not_json.contains("+1555"),
        "the reason must not quote the data"
    );
    assert_eq!(state(2), "failed");
    assert!(reason(2).contains("no-such-job"), "{}", reason(2));
    for i in [0usize, 3, 4, 5, 6, 7] {
        assert_eq!(state(i), "completed", "job {i}");
    }
}

#[test]
fn a_poisoned_plugin_directory_disables_each_bad_file_by_name() {
    let redis = RedisServer::start().expect("start redis-server");
    let dir = TempDir::new("poisoned-plugins").expect("temp dir");
    let d = dir.path();
    std::fs::copy(plugin_lib(TEST_PLUGIN), d.join("libfg_test_outcomes.so")).unwrap();
    std::fs::copy(
        plugin_lib(TEST_PLUGIN),
        d.join("libfg_test_outcomes_copy.so"),
    )
    .unwrap();
    std::fs::copy(
        plugin_lib(TEST_PLUGIN),
        d.join("libfg_test_outcomes_copy2.so"),
    )
    .unwrap();
    std::fs::write(d.join("libgarbage.so"), b"\x7fELF not really a library").unwrap();
    std::fs::write(d.join("libempty.so"), b"").unwrap();
    std::fs::write(d.join(".so"), b"hidden").unwrap();
    std::fs::create_dir(d.join("dir.so")).unwrap();
    std::os::unix::fs::symlink(d.join("missing-target"), d.join("libdangling.so")).unwrap();
    let dir_path = d.to_owned();
    let (w, port) = spawn_with_http(|| {
        Worker::builder()
            .redis(&redis)
            .env("PLUGIN_DIR", dir_path.display().to_string())
    });
    let (_, readyz) = http_get(port, "/readyz").expect("readyz");
    let readyz: Value = frostguard_tests::serde_json::from_str(&readyz).expect("readyz JSON");
    let disabled: Vec<String> = readyz["disabled_plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["file"].as_str().unwrap_or_default().to_owned())
        .collect();
    let copies = [
        "libfg_test_outcomes_copy.so",
        "libfg_test_outcomes_copy2.so",
    ];
    let series: Vec<f64> = copies
        .iter()
        .map(|f| {
            metric(
                port,
                &format!("frostguard_plugin_disabled{{plugin=\"test-outcomes\",file=\"{f}\",stage=\"queue-conflict\"}}"),
            )
        })
        .collect();
    eprintln!("FAULT poisoned plugin dir: disabled files={disabled:?} duplicate series={series:?}");
    for f in copies
        .iter()
        .chain(&["libgarbage.so", "libempty.so", "libdangling.so", "dir.so"])
    {
        assert!(
            disabled.iter().any(|d| d == f),
            "{f} not in /readyz: {disabled:?}"
        );
    }
    assert_eq!(series, vec![1.0, 1.0], "one series per duplicate file");
    assert!(
        w.has_line("skipping a hidden file"),
        "the .so file is mentioned"
    );
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let id = q
        .add_one("complete", json!({"ok": 1}), json!({}))
        .expect("add");
    assert_eq!(q.wait_finished(&[id]).expect("done")[0].state, "completed");
}
