//! Crash isolation: a plugin whose job segfaults, aborts, overflows its stack or calls `exit`.
//!
//! In process mode the host stays up, the other queue's jobs all complete, each crashing job fails with the
//! crash reason (retryably, then for good once it crashed its process `JOB_CRASH_LIMIT` times) and the
//! plugin's child is restarted. In in-process mode the host dies with the plugin; after a restart the job
//! that crashed it is recognised from the crash journal and, at the limit, failed instead of run again.
//! `plugins run` reports a crash with its signal in both modes, and in process mode (no async runtime there)
//! a job's progress and log lines before its outcome.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use frostguard_tests::*;

const LONG: Duration = Duration::from_secs(90);

/// The worker's `/metrics` page.
fn metrics_text(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// `complete` jobs on the test-outcomes queue, as a second queue flowing through the same host.
fn other_queue_jobs(n: usize) -> serde_json::Value {
    let jobs: Vec<serde_json::Value> = (0..n)
        .map(|i| json!({"name": "complete", "data": {"result": i}}))
        .collect();
    json!(jobs)
}

#[test]
fn process_mode_fails_crashing_jobs_restarts_the_plugin_and_keeps_every_queue_going() {
    let redis = RedisServer::start().unwrap();
    let (port, _held) = reserved_port();
    let mut worker = Worker::builder()
        .redis(&redis)
        .plugins(&[TEST_PLUGIN, CRASH_PLUGIN])
        .env("PLUGIN_ISOLATION", "process")
        .env("HTTP_PORT", port.to_string())
        // One job at a time in the crashing plugin, so each crash is one job's doing.
        .env("QUEUE_TEST_CRASHES_CONCURRENCY", "1")
        .spawn_ready()
        .unwrap();
    let crashes = NodeQueue::new(&redis, CRASH_QUEUE);
    let others = NodeQueue::new(&redis, TEST_QUEUE);

    let opts = json!({"attempts": 5});
    let kinds = [
        ("segfault", "SIGSEGV"),
        ("abort", "SIGABRT"),
        ("stack-overflow", "SIGSEGV"),
        ("exit", "exit status 3"),
    ];
    let mut crash_jobs: Vec<serde_json::Value> = kinds
        .iter()
        .map(|(name, _)| json!({"name": name, "data": {}, "opts": opts}))
        .collect();
    crash_jobs.push(json!({"name": "complete", "data": {}}));
    let crash_ids = crashes.add(json!(crash_jobs)).unwrap();
    let other_ids = others.add(other_queue_jobs(40)).unwrap();

    let other_done = others
        .wait_states(&other_ids, &["completed", "failed"], LONG)
        .unwrap();
    assert!(
        other_done.iter().all(|j| j.state == "completed"),
        "the other queue's jobs all complete: {other_done:?}"
    );
    let done = crashes
        .wait_states(&crash_ids, &["completed", "failed"], LONG)
        .unwrap();
    for ((name, cause), job) in kinds.iter().zip(&done) {
        assert_eq!(job.state, "failed", "{name}: {job:?}");
        let reason = job.failed_reason.as_deref().unwrap_or_default();
        let what = if cause.starts_with("SIG") {
            format!("signal {cause}")
        } else {
            cause.to_string()
        };
        let want =
            format!("crashed the worker ({what}) 2 times (plugin test-crashes); not run again");
        assert_eq!(reason, want, "{name}: {job:?}");
        // Two runs, two crashes: the first failed retryably, the second for good (attempts were 5).
        assert_eq!(job.attempts_made, 2, "{name}: {job:?}");
        assert!(
            worker.has_line(&format!(
                "plugin process crashed: {cause} (plugin test-crashes)"
            )),
            "{name}: the first attempt's reason names the plugin and the cause"
        );
    }
    let last = done.last().unwrap();
    assert_eq!(
        last.state, "completed",
        "the plugin's child was restarted: {last:?}"
    );

    for (_, cause) in kinds {
        assert!(
            worker.has_line(&format!("cause={cause}"))
                || worker.has_line(&format!("cause=\"{cause}\"")),
            "crash of {cause} logged"
        );
    }
    assert!(worker.has_line("plugin process restarted"));
    // Four kinds of crash, two runs each.
    let metrics = metrics_text(port);
    assert!(
        metrics
            .lines()
            .any(|l| l == "frostguard_plugin_crashes_total{plugin=\"test-crashes\"} 8"),
        "{metrics}"
    );
    // The host itself never went down.
    assert!(worker.is_running(), "the host is still running");
    let status = worker.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "graceful exit after crashes: {status:?}");
}

#[test]
fn in_process_mode_dies_with_the_plugin_and_fails_the_poison_job_after_restarts() {
    let redis = RedisServer::start().unwrap();
    let state = TempDir::new("crash-state").unwrap();
    let start = || {
        Worker::builder()
            .redis(&redis)
            .plugins(&[TEST_PLUGIN, CRASH_PLUGIN])
            .env("PLUGIN_ISOLATION", "in-process")
            .env("STATE_DIR", state.path().display().to_string())
            .env("QUEUE_TEST_CRASHES_CONCURRENCY", "1")
            // A dead run's jobs come back within about a second.
            .env("QUEUE_TEST_CRASHES_LOCK_DURATION_MS", "1000")
            .env("QUEUE_TEST_CRASHES_STALLED_INTERVAL_MS", "500")
            .env("QUEUE_TEST_OUTCOMES_LOCK_DURATION_MS", "1000")
            .env("QUEUE_TEST_OUTCOMES_STALLED_INTERVAL_MS", "500")
            // Jobs of the other queue that a crash interrupts are run again, however often that happens.
            .env("QUEUE_TEST_OUTCOMES_MAX_STALLED_COUNT", "100")
            .spawn()
            .unwrap()
    };
    let crashes = NodeQueue::new(&redis, CRASH_QUEUE);
    let others = NodeQueue::new(&redis, TEST_QUEUE);
    let poison = crashes
        .add_one("segfault", json!({}), json!({"attempts": 3}))
        .unwrap();
    let other_ids = others.add(other_queue_jobs(20)).unwrap();

    // Runs 1 and 2: the host dies of the plugin's SIGSEGV, and says which job did it.
    for run in 1..=2 {
        let mut worker = start();
        let status = worker.wait_exit(LONG).unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGSEGV),
            "run {run}: {status:?}"
        );
        assert!(
            worker.has_line(&format!(
                "plugin code crashed with SIGSEGV while running job {poison} of queue test-crashes (plugin test-crashes)"
            )),
            "run {run}: the crash names the job:\n{}",
            worker.output_text()
        );
        if run == 2 {
            assert!(
                worker.has_line("job crashed an earlier run of the worker; stalled-job recovery will run it again"),
                "run 2 recognised the first crash:\n{}",
                worker.output_text()
            );
        }
    }

    // Run 3: the crash journal names the job a second time: it fails for good, unrun, and everything else
    // completes on a host that stays up.
    let mut worker = start();
    worker
        .wait_for_line("job crashed the worker 2 times", LONG)
        .unwrap();
    let job = crashes
        .wait_states(std::slice::from_ref(&poison), &["failed"], LONG)
        .unwrap()
        .remove(0);
    assert_eq!(
        job.failed_reason.as_deref(),
        Some("crashed the worker (signal SIGSEGV) 2 times (plugin test-crashes); not run again"),
        "{job:?}"
    );
    let after = crashes
        .run(json!([{"name": "complete", "data": {}}]))
        .unwrap();
    assert_eq!(after[0].state, "completed", "{after:?}");
    let others_done = others
        .wait_states(&other_ids, &["completed", "failed"], LONG)
        .unwrap();
    assert!(
        others_done.iter().all(|j| j.state == "completed"),
        "{others_done:?}"
    );
    assert!(
        worker.is_running(),
        "run 3 did not crash: the poison job was not run again"
    );
    assert!(
        !worker.has_line("plugin code crashed"),
        "{}",
        worker.output_text()
    );
    let status = worker.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn plugins_run_reports_a_crash_with_its_signal_in_both_modes() {
    let plugin = plugin_lib(CRASH_PLUGIN).display().to_string();
    // stdout (the JSON report) and stderr (logs, the crash line) apart.
    let run = |name: &str, mode: &str| {
        let out = std::process::Command::new(worker_bin())
            .args([
                "plugins",
                "run",
                "--plugin",
                &plugin,
                "--queue",
                CRASH_QUEUE,
            ])
            .args(["--name", name, "--isolation", mode])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status, stdout, stderr)
    };
    // (job, cause reported, signal the in-process command dies of: Rust turns a stack overflow's SIGSEGV
    // into an abort after its report)
    for (name, cause, signal) in [
        ("segfault", "SIGSEGV", libc::SIGSEGV),
        ("abort", "SIGABRT", libc::SIGABRT),
        ("stack-overflow", "SIGSEGV", libc::SIGABRT),
        ("exit", "exit status 3", 0),
    ] {
        // Process mode: the crash is reported as such, with its cause, and the command exits 1.
        let (status, stdout, stderr) = run(name, "process");
        assert_eq!(status.code(), Some(1), "{name}: {stdout}{stderr}");
        let report: serde_json::Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{name}: {e}: {stdout}"));
        assert_eq!(report["crash"]["cause"], cause, "{name}: {report}");
        assert_eq!(
            report["crash"]["reason"],
            format!("plugin process crashed: {cause} (plugin test-crashes)"),
            "{name}"
        );
        assert!(report.get("outcome").is_none(), "{name}: {report}");

        // In-process: the command dies of the plugin's signal (or exit status), and says so first.
        let (status, stdout, stderr) = run(name, "in-process");
        if signal == 0 {
            assert_eq!(status.code(), Some(3), "{name}: {stdout}{stderr}");
            assert!(
                stderr.contains("plugin code called exit while running job exit"),
                "{stderr}"
            );
        } else {
            assert_eq!(status.signal(), Some(signal), "{name}: {stdout}{stderr}");
            assert!(
                stderr.contains(&format!(
                    "plugin code crashed with {cause} while running job {name}"
                )),
                "{name}: {stderr}"
            );
        }
    }
    // A job that completes still completes in a plugin process.
    let (status, stdout, stderr) = run("complete", "process");
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"]["result"], json!({"ok": true}), "{report}");
}

#[test]
fn plugins_run_in_a_plugin_process_reports_progress_and_log_lines_before_the_outcome() {
    // `plugins run` has no async runtime: the plugin process's output is read on its supervisor thread.
    let out = std::process::Command::new(worker_bin())
        .args(["plugins", "run", "--plugin"])
        .arg(plugin_lib(TEST_PLUGIN))
        .args(["--queue", TEST_QUEUE, "--name", "progress"])
        .args(["--isolation", "process"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["progress"],
        json!([25, {"step": "half"}, 100]),
        "{report}"
    );
    assert_eq!(report["jobLogs"], json!(["line 1", "line 2"]), "{report}");
    assert_eq!(
        report["outcome"],
        json!({"status": "completed", "result": {"done": true}}),
        "{report}"
    );
}

/// The plugin processes of the worker with pid `host` (children running `plugin-process`).
fn plugin_processes(host: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(host) && String::from_utf8_lossy(&cmdline).contains("plugin-process") {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn plugin_processes_leave_sigint_and_sigterm_to_the_host() {
    // A terminal's Ctrl-C reaches the whole process group, and a service manager may signal every process
    // of the service: the plugin processes must stay up so the host can drain their jobs.
    let redis = RedisServer::start().unwrap();
    let mut worker = Worker::builder()
        .redis(&redis)
        .plugins(&[CRASH_PLUGIN])
        .env("PLUGIN_ISOLATION", "process")
        .spawn_ready()
        .unwrap();
    let children = plugin_processes(worker.pid());
    assert_eq!(children.len(), 1, "one plugin process: {children:?}");
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: kill of a process this test's worker started.
        assert_eq!(unsafe { libc::kill(children[0], sig) }, 0);
    }
    let q = NodeQueue::new(&redis, CRASH_QUEUE);
    let done = q.run(json!([{"name": "complete", "data": {}}])).unwrap();
    assert_eq!(done[0].state, "completed", "{done:?}");
    assert!(
        !worker.has_line("plugin process crashed"),
        "{}",
        worker.output_text()
    );
    assert_eq!(
        plugin_processes(worker.pid()),
        children,
        "the same plugin process"
    );
    let status = worker.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_plugin_process_that_stops_reading_does_not_stall_the_host() {
    // A plugin process that stops reading its jobs (frozen, stopped in a debugger) lets the pipe to it fill
    // up. The jobs sent after that wait on blocking threads; the host's async side (Redis, the HTTP
    // endpoint, shutdown) must go on, and every job completes once the process runs again.
    stopped_plugin_process(None);
}

#[test]
fn cancelling_jobs_of_a_plugin_process_that_stopped_reading_does_not_stall_the_host() {
    // The same, with a time budget that passes while the process is stopped: the cancel messages for the
    // overrunning jobs must not wait on the full pipe either.
    stopped_plugin_process(Some(Duration::from_millis(500)));
}

/// Stops the plugin process, fills the pipe to it with 40 jobs, checks `/healthz` (after the jobs' time
/// budget, when there is one, has passed), lets the process run again and waits for every job to finish.
fn stopped_plugin_process(budget: Option<Duration>) {
    let redis = RedisServer::start().unwrap();
    let port = free_port();
    let mut builder = Worker::builder()
        .redis(&redis)
        .plugins(&[TEST_PLUGIN])
        .env("PLUGIN_ISOLATION", "process")
        .env("QUEUE_TEST_OUTCOMES_CONCURRENCY", "40")
        .env("HTTP_PORT", port.to_string());
    if let Some(budget) = budget {
        builder = builder.env(
            "QUEUE_TEST_OUTCOMES_JOB_TIMEOUT_MS",
            budget.as_millis().to_string(),
        );
    }
    let mut worker = builder.spawn_ready().unwrap();
    let children = plugin_processes(worker.pid());
    assert_eq!(children.len(), 1, "one plugin process: {children:?}");
    // SAFETY: kill of a process this test's worker started.
    assert_eq!(unsafe { libc::kill(children[0], libc::SIGSTOP) }, 0);
    // 40 jobs of 8 KiB each: five times what a pipe holds (added ten at a time: they travel on a command
    // line).
    let pad = "x".repeat(8 << 10);
    let q = NodeQueue::new(&redis, "test-outcomes");
    let mut ids = Vec::new();
    for _ in 0..4 {
        let jobs: Vec<_> = (0..10)
            .map(|_| json!({"name": "complete", "data": {"result": 1, "pad": pad}}))
            .collect();
        ids.extend(q.add_bulk(json!(jobs)).unwrap());
    }
    wait_until(Duration::from_secs(30), "the host takes every job", || {
        let active = q.counts().ok()?["active"].as_u64()?;
        (active == 40).then_some(())
    })
    .unwrap();
    if let Some(budget) = budget {
        // Past every deadline and a few cancel polls: the host has tried to cancel the jobs by now.
        std::thread::sleep(budget + Duration::from_millis(500));
    }
    let answer = http_get(port, "/healthz");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(children[0], libc::SIGCONT) }, 0);
    assert_eq!(
        answer.map(|(status, _)| status),
        Some(200),
        "the HTTP endpoint answers while the plugin process is stopped\n{}",
        worker.output_text()
    );
    let done = q.wait_finished(&ids).unwrap();
    // A no-op job completes even past its deadline (completed work is kept).
    assert!(done.iter().all(|j| j.state == "completed"), "{done:?}");
    let status = worker.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status:?}");
}
