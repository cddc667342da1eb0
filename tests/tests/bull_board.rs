//! Bull Board, the dashboard FrostGuard's operators use, shows the host's work as it shows a Node worker's:
//! the host processes a mix of jobs, then `tests/board/board.mjs` serves `@bull-board/api` +
//! `@bull-board/express` against the test Redis, opens it in headless Chromium (one browser launch) and reports
//! what the rendered pages show; the assertions below compare that with what the jobs did.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use frostguard_tests::{
    build_dir, json, workspace_root, NodeQueue, RedisServer, Worker, TEST_QUEUE,
};
use serde_json::Value;

/// `tests/board`: the Bull Board project and its page reader.
fn board_dir() -> PathBuf {
    workspace_root().join("tests").join("board")
}

/// Runs `npm ci` in `tests/board` when its packages are missing (under `flock`, as parallel tests may race).
fn ensure_board_modules() {
    let dir = board_dir();
    if dir
        .join("node_modules/@bull-board/api/package.json")
        .is_file()
    {
        return;
    }
    let status = Command::new("flock")
        .arg(dir.join(".npm-ci.lock"))
        .args([
            "sh",
            "-c",
            "[ -f node_modules/@bull-board/api/package.json ] || npm ci --no-audit --no-fund",
        ])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .status()
        .expect("run flock and npm (install util-linux and npm)");
    assert!(
        status.success(),
        "npm ci in {} failed: {status}",
        dir.display()
    );
}

/// Runs board.mjs with `input` (queues, jobs to open, screenshot path); the page report it prints.
fn read_board(input: &Value) -> Value {
    ensure_board_modules();
    let out = Command::new("node")
        .arg(board_dir().join("board.mjs"))
        .arg(input.to_string())
        .current_dir(board_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run node (install Node.js 20+)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "board.mjs failed ({}); is Chromium installed (/usr/bin/chromium, Debian package `chromium`)?\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("board.mjs printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// Rendered JSON views (`{\n jobData:{…},\n returnValue:…}`) without white space, for substring checks.
fn compact(text: &Value) -> String {
    text.as_str()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// The ids of the job cards a status tab lists.
fn listed_ids(queue: &Value, status: &str) -> Vec<String> {
    queue["lists"][status]
        .as_array()
        .map(|cards| {
            cards
                .iter()
                .filter_map(|c| c["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path)
        .is_ok_and(|bytes| bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000)
}

#[test]
fn bull_board_shows_the_hosts_jobs_in_a_real_browser() {
    let redis = RedisServer::start().expect("start redis-server");
    let worker = Worker::start_test_outcomes(&redis, &[]).expect("start the host");
    let q = NodeQueue::new(&redis, TEST_QUEUE);

    // Ids longer than eight characters: only then does Bull Board's job heading show "attempt #N".
    let finished = q
        .add(json!([
            {"name": "complete", "data": {"result": {"unit": "C", "reading": 4.5}},
             "opts": {"jobId": "reading-accepted"}},
            {"name": "fail", "data": {"message": "sensor gateway unreachable"},
             "opts": {"jobId": "gateway-down", "attempts": 2}},
            {"name": "panic", "data": {"message": "boom"}, "opts": {"jobId": "plugin-panicked"}},
            {"name": "fail-until", "data": {"succeedOnAttempt": 3},
             "opts": {"jobId": "retried-then-done", "attempts": 3}},
            {"name": "progress", "data": {}, "opts": {"jobId": "with-progress"}},
        ]))
        .expect("add jobs");
    let snapshots = q
        .wait_finished(&finished)
        .expect("the host finishes the jobs");
    let states: Vec<&str> = snapshots.iter().map(|j| j.state.as_str()).collect();
    assert_eq!(
        states,
        ["completed", "failed", "failed", "completed", "completed"],
        "{snapshots:?}"
    );

    // Paused: what is added now stays waiting, prioritized or delayed for the board to show.
    q.pause().expect("pause the queue");
    q.add(json!([
        {"name": "complete", "data": {}, "opts": {"jobId": "held-by-pause"}},
        {"name": "complete", "data": {}, "opts": {"jobId": "urgent-alarm", "priority": 5}},
        {"name": "complete", "data": {}, "opts": {"jobId": "later-digest", "delay": 3_600_000}},
    ]))
    .expect("add held jobs");
    let node_counts = q.counts().expect("Node getJobCounts");

    let screenshot = build_dir().join("bull-board.png");
    let _ = std::fs::remove_file(&screenshot);
    let jobs: Vec<Value> = [
        "reading-accepted",
        "gateway-down",
        "plugin-panicked",
        "retried-then-done",
        "with-progress",
    ]
    .iter()
    .map(|id| json!({"queue": TEST_QUEUE, "id": id}))
    .collect();
    let board = read_board(&json!({
        "redis": redis.url(),
        "prefix": "bull",
        "queues": [TEST_QUEUE],
        "jobs": jobs,
        "screenshot": screenshot,
    }));
    let queue = &board["queues"][TEST_QUEUE];
    let job = |id: &str| &board["jobs"][format!("{TEST_QUEUE}/{id}")];

    // The status tabs' counts are Node's getJobCounts, and the queue is marked paused.
    assert_eq!(queue["listed"], json!(true), "{board}");
    assert_eq!(queue["paused"], json!(true), "paused badge: {board}");
    for (state, expected) in [
        ("completed", 3),
        ("failed", 2),
        ("waiting", 1),
        ("prioritized", 1),
        ("delayed", 1),
        ("active", 0),
    ] {
        assert_eq!(
            queue["counts"][state],
            json!(expected),
            "{state} badge: {board}"
        );
        assert_eq!(
            queue["counts"][state], node_counts[state],
            "{state}: board vs Node {node_counts}"
        );
    }

    // Each state's list shows its jobs: the delayed one with its run time, the prioritized one with its priority.
    assert_eq!(listed_ids(queue, "waiting"), ["held-by-pause"], "{board}");
    assert_eq!(
        listed_ids(queue, "prioritized"),
        ["urgent-alarm"],
        "{board}"
    );
    assert_eq!(listed_ids(queue, "delayed"), ["later-digest"], "{board}");
    let mut failed_ids = listed_ids(queue, "failed");
    failed_ids.sort();
    assert_eq!(failed_ids, ["gateway-down", "plugin-panicked"], "{board}");
    let mut completed = listed_ids(queue, "completed");
    completed.sort();
    assert_eq!(
        completed,
        ["reading-accepted", "retried-then-done", "with-progress"],
        "{board}"
    );
    let card_text = |status: &str| {
        queue["lists"][status][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(card_text("delayed").contains("Will run at"), "{board}");
    assert!(card_text("prioritized").contains("priority 5"), "{board}");

    // A completed job's return value, as the host stored it, keys in the plugin's order (not sorted).
    let done = job("reading-accepted");
    assert!(
        compact(&done["tabs"]["Data"]).contains(r#"returnValue:{unit:"C",reading:4.5}"#),
        "completed job's Data tab: {done}"
    );
    assert!(
        done["timeline"]
            .as_str()
            .unwrap_or_default()
            .contains("Finished at"),
        "{done}"
    );

    // A failed job: the Error tab shows one stacktrace entry per attempt, newest first, each with the error's
    // class and message, the plugin and version, and the attempt; two attempts made, the attempts option it
    // was added with.
    let failed = job("gateway-down");
    let entry = |attempt: u32| {
        format!(
            "PluginError: sensor gateway unreachable\n    \
             at test-outcomes 0.1.0 (queue test-outcomes, job fail, attempt {attempt} of 2)"
        )
    };
    assert_eq!(
        failed["tabs"]["Error"],
        json!(format!("{}\n{}", entry(2), entry(1))),
        "failed job's Error tab: {failed}"
    );
    assert_eq!(
        failed["attempt"],
        json!(2),
        "failed job's attempts: {failed}"
    );
    assert!(
        compact(&failed["tabs"]["Options"]).contains("attempts:2"),
        "{failed}"
    );
    assert!(
        failed["timeline"]
            .as_str()
            .unwrap_or_default()
            .contains("Failed at"),
        "{failed}"
    );

    // A panic: the panic's own message first, then where it happened.
    let panicked = job("plugin-panicked");
    let error_tab = panicked["tabs"]["Error"].as_str().unwrap_or_default();
    assert!(
        error_tab.starts_with(
            "PanicError: test panic: boom\n    panicked at plugins/testing/outcomes/src/lib.rs:"
        ),
        "panicked job's Error tab: {panicked}"
    );
    assert!(
        error_tab
            .ends_with("at test-outcomes 0.1.0 (queue test-outcomes, job panic, attempt 1 of 1)"),
        "panicked job's Error tab: {panicked}"
    );

    // A job retried twice before it completed: attempt #3 and the value of the third attempt.
    let retried = job("retried-then-done");
    assert_eq!(
        retried["attempt"],
        json!(3),
        "retried job's attempts: {retried}"
    );
    assert!(
        compact(&retried["tabs"]["Data"]).contains("returnValue:{attempt:3}"),
        "{retried}"
    );

    // Progress reported by the plugin (last value 100) and its job log lines.
    let progress = job("with-progress");
    assert_eq!(
        progress["progress"],
        json!("100%"),
        "progress bar: {progress}"
    );
    assert_eq!(
        progress["tabs"]["Logs"],
        json!("line 1\nline 2"),
        "job logs: {progress}"
    );

    assert!(
        is_png(&screenshot),
        "no screenshot at {}",
        screenshot.display()
    );
    drop(worker);
}
