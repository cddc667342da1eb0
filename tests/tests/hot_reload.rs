//! Hot reload against a running `frostguard-worker`, real Redis and Node BullMQ: the test plugin
//! `test-reload` in two builds (version 1 returns `{"v":1}`, version 2 `{"v":2}`) swapped under a steady
//! stream of jobs (in both isolation modes); broken replacements (cut short, incompatible ABI, failing init) that leave version 1
//! serving; a file written slowly; a plugin added and one removed at run time; twenty reloads in a row with
//! the memory they cost.
//!
//! Files are deployed as docs/plugins.md says (copy to a hidden temporary name in the directory, then rename
//! onto the final name), except where a test writes in place on purpose.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use frostguard_tests::serde_json::Value;
use frostguard_tests::{
    free_port, http_get, json, plugin_lib, queue_events, wait_until, NodeQueue, RedisServer,
    Worker, WorkerBuilder, BAD_ABI_PLUGIN, RELOAD_V1_PLUGIN, RELOAD_V2_PLUGIN, TEST_PLUGIN,
    TEST_QUEUE,
};

const QUEUE: &str = "test-reload";
/// The file name the test plugin is deployed under (both builds).
const FILE: &str = "libtest_reload.so";

fn readyz(port: u16) -> Value {
    let (_, body) = http_get(port, "/readyz").expect("/readyz answers");
    frostguard_tests::serde_json::from_str(&body).expect("/readyz is JSON")
}

/// A metric's value in `/metrics` (the first series whose line starts with `prefix`).
fn metric(port: u16, prefix: &str) -> Option<f64> {
    let (_, text) = http_get(port, "/metrics")?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A worker serving the version-1 build as [`FILE`], with its HTTP endpoint, a short debounce and the
/// given extra environment.
fn start(extra: &[(&str, &str)]) -> (RedisServer, Worker, u16) {
    let redis = RedisServer::start().unwrap();
    let dir = frostguard_tests::TempDir::new("reload-v1").unwrap();
    let v1 = dir.path().join(FILE);
    std::fs::copy(plugin_lib(RELOAD_V1_PLUGIN), &v1).unwrap();
    let builder = |port: u16| -> WorkerBuilder {
        let mut b = Worker::builder()
            .redis(&redis)
            .plugin_file(&v1)
            .env("HTTP_PORT", port.to_string())
            .env("PLUGIN_WATCH_DEBOUNCE_MS", "300")
            .env("SHUTDOWN_TIMEOUT_MS", "5000");
        for (k, v) in extra {
            b = b.env(*k, *v);
        }
        b
    };
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port();
        let worker = builder(port).spawn().unwrap();
        match worker.wait_ready() {
            Ok(()) => {
                worker
                    .wait_for_line("watching the plugin directory", Duration::from_secs(10))
                    .unwrap();
                return (redis, worker, port);
            }
            Err(e) if format!("{e:#}").contains("HTTP_PORT") => last = format!("{e:#}"),
            Err(e) => panic!("{e:#}\n{}", worker.output_text()),
        }
    }
    panic!("no free HTTP port: {last}");
}

/// Deploys `src` as `name` in `dir` the atomic way: a hidden temporary copy, then a rename.
fn deploy(dir: &Path, src: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Deploys raw `bytes` as `name` the atomic way.
fn deploy_bytes(dir: &Path, bytes: &[u8], name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn plugin_dir(worker: &Worker) -> PathBuf {
    worker.plugin_dir().expect("a plugin directory").to_owned()
}

/// Adds one `version` job and returns what it completed with.
fn run_one(queue: &NodeQueue) -> Value {
    let id = queue.add_one("version", json!({}), json!({})).unwrap();
    let job = queue.wait_finished(&[id]).unwrap().remove(0);
    assert_eq!(job.state, "completed", "{job:?}");
    job.returnvalue
}

/// Waits for the `n`-th log line (counted from `after`) containing all of `needles`.
fn wait_change(worker: &Worker, after: usize, needles: &[&str]) -> String {
    wait_until(Duration::from_secs(60), &needles.join(" "), || {
        worker.lines()[after..]
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.output_text()))
}

#[test]
fn a_replacement_under_a_steady_stream_completes_every_job_once_by_v1_then_v2() {
    swap_under_a_steady_stream(&[]);
}

/// The same with the plugin inside the host (`PLUGIN_ISOLATION=in-process`): the new build must be a new
/// library image in the host's own process (the dynamic loader returns the old code for a path it loaded).
#[test]
fn a_replacement_in_process_under_a_steady_stream_completes_every_job_once_by_v1_then_v2() {
    swap_under_a_steady_stream(&[("PLUGIN_ISOLATION", "in-process")]);
}

/// Sets its flag when dropped, unwinding included.
struct StopWhenDropped<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopWhenDropped<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Swaps v1 for v2 while a Node producer keeps adding jobs; checks every job completed exactly once, by v1
/// before the switch and by v2 after.
fn swap_under_a_steady_stream(extra: &[(&str, &str)]) {
    let (redis, worker, _port) = start(extra);
    let dir = plugin_dir(&worker);
    let queue = NodeQueue::new(&redis, QUEUE);
    // A steady stream from the Node producer: batches of 10 jobs, each becoming ready 40 ms after the previous
    // one and working 150 ms (about four in flight at any time), added until two seconds after the switch.
    let switched = std::sync::atomic::AtomicBool::new(false);
    let ids: Vec<String> = std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let mut ids = Vec::new();
            let mut after_switch = 0;
            while after_switch < 5 {
                if switched.load(std::sync::atomic::Ordering::Acquire) {
                    after_switch += 1;
                }
                let batch: Vec<Value> = (0..10)
                    .map(|i| json!({"name": "sleep", "data": {"ms": 150}, "opts": {"delay": i * 40}}))
                    .collect();
                ids.extend(queue.add(Value::Array(batch)).unwrap());
                std::thread::sleep(Duration::from_millis(400));
            }
            ids
        });
        // However this side ends (a failed wait panics), the producer stops after its last batches, so the
        // test fails instead of waiting for it forever.
        let _stop = StopWhenDropped(&switched);
        // Swap once the stream has run a while (counted in Redis).
        wait_until(Duration::from_secs(60), "40 jobs completed", || {
            let done = redis
                .cmd(&["ZCARD", &format!("bull:{QUEUE}:completed")])
                .ok()?
                .as_int()?;
            (done >= 40).then_some(())
        })
        .unwrap();
        let before = worker.line_count();
        deploy(&dir, &plugin_lib(RELOAD_V2_PLUGIN), FILE);
        let line = wait_change(
            &worker,
            before,
            &["plugin change applied", "change=replaced"],
        );
        assert!(
            line.contains("old_version=1.0.0") && line.contains("new_version=2.0.0"),
            "{line}"
        );
        switched.store(true, std::sync::atomic::Ordering::Release);
        producer.join().unwrap()
    });
    let finished = queue.wait_finished(&ids).unwrap();
    let mut last_v1_finish = 0;
    let mut first_v2_start = u64::MAX;
    let mut by_version: BTreeMap<u64, usize> = BTreeMap::new();
    for job in &finished {
        assert_eq!(job.state, "completed", "{job:?}");
        assert_eq!(job.failed_reason, None, "{job:?}");
        let v = job.returnvalue["v"].as_u64().expect("{\"v\": n}");
        *by_version.entry(v).or_default() += 1;
        match v {
            1 => last_v1_finish = last_v1_finish.max(job.finished_on.unwrap()),
            2 => first_v2_start = first_v2_start.min(job.processed_on.unwrap()),
            other => panic!("version {other}: {job:?}"),
        }
    }
    assert!(
        by_version.get(&1) > Some(&0) && by_version.get(&2) > Some(&0),
        "{by_version:?}; last: {:?}",
        finished.last()
    );
    assert!(
        last_v1_finish <= first_v2_start,
        "a v1 job finished at {last_v1_finish} after v2 started one at {first_v2_start}"
    );
    // Exactly once, from the queue's own event stream: one completion per job, no failure.
    let events = queue_events(&redis, "bull", QUEUE).unwrap();
    let mut completions: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        assert_ne!(e["event"], "failed", "{e}");
        if e["event"] == "completed" {
            *completions
                .entry(e["jobId"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(completions.len(), ids.len());
    assert!(completions.values().all(|n| *n == 1), "{completions:?}");
    eprintln!("jobs by version: {by_version:?}");
}

/// A build loaded at run time starts its plugin process from one of the host's blocking threads, which exits
/// once idle (after the runtime's 10 s keep-alive): the plugin process must outlive that thread.
#[test]
fn a_replacement_plugin_process_outlives_the_thread_that_loaded_it() {
    let (redis, worker, _port) = start(&[]);
    let dir = plugin_dir(&worker);
    let queue = NodeQueue::new(&redis, QUEUE);
    assert_eq!(run_one(&queue), json!({"v": 1}));
    let before = worker.line_count();
    deploy(&dir, &plugin_lib(RELOAD_V2_PLUGIN), FILE);
    wait_change(
        &worker,
        before,
        &["plugin change applied", "new_version=2.0.0"],
    );
    // Longer than the blocking pool keeps an idle thread.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(run_one(&queue), json!({"v": 2}));
    assert!(
        !worker.has_line("plugin process crashed"),
        "{}",
        worker.output_text()
    );
}

#[test]
fn broken_replacements_leave_v1_serving() {
    let (redis, worker, port) = start(&[("RELOAD_FAIL_INIT", "2")]);
    let dir = plugin_dir(&worker);
    let queue = NodeQueue::new(&redis, QUEUE);
    assert_eq!(run_one(&queue), json!({"v": 1}));
    let v2 = std::fs::read(plugin_lib(RELOAD_V2_PLUGIN)).unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("cut short", v2[..v2.len() / 2].to_vec(), "stage=file"),
        (
            "incompatible ABI",
            std::fs::read(plugin_lib(BAD_ABI_PLUGIN)).unwrap(),
            "stage=abi",
        ),
        ("failing init", v2.clone(), "stage=init"),
    ];
    for (case, bytes, stage) in cases {
        let before = worker.line_count();
        deploy_bytes(&dir, &bytes, FILE);
        let line = wait_change(&worker, before, &["plugin change refused", stage]);
        assert!(
            line.contains("plugin=test-reload") && line.contains("old_version=1.0.0"),
            "{case}: {line}"
        );
        assert_eq!(run_one(&queue), json!({"v": 1}), "{case}");
        let ready = readyz(port);
        let plugin = &ready["plugins"][0];
        assert_eq!(plugin["plugin"], "test-reload", "{ready}");
        assert_eq!(plugin["version"], "1.0.0", "{case}: {ready}");
        assert_eq!(
            plugin["refused_replacement"]["stage"],
            stage.trim_start_matches("stage="),
            "{case}: {ready}"
        );
        assert_eq!(ready["ready"], true, "{case}: {ready}");
    }
    assert_eq!(
        metric(
            port,
            "frostguard_plugin_reloads_total{plugin=\"test-reload\",change=\"replaced\",result=\"refused\"}"
        ),
        Some(3.0)
    );
    // A second file of the serving plugin is refused with its reason; v1 still serves.
    let before = worker.line_count();
    deploy(
        &dir,
        &plugin_lib(RELOAD_V1_PLUGIN),
        "libtest_reload_copy.so",
    );
    let line = wait_change(
        &worker,
        before,
        &["plugin change refused", "already served"],
    );
    assert!(line.contains("libtest_reload_copy.so"), "{line}");
    assert_eq!(run_one(&queue), json!({"v": 1}));
    let disabled = readyz(port)["disabled_plugins"].clone();
    assert_eq!(disabled[0]["file"], "libtest_reload_copy.so", "{disabled}");
    assert_eq!(disabled[0]["stage"], "queue-conflict", "{disabled}");
}

#[test]
fn a_slowly_written_file_is_loaded_only_once_complete() {
    let (redis, worker, port) = start(&[(
        "RUST_LOG",
        "info,frostguard_worker::runtime::reloader=debug",
    )]);
    let dir = plugin_dir(&worker);
    let queue = NodeQueue::new(&redis, QUEUE);
    assert_eq!(run_one(&queue), json!({"v": 1}));
    let v2 = std::fs::read(plugin_lib(RELOAD_V2_PLUGIN)).unwrap();
    let before = worker.line_count();
    // Written in place, in four parts with pauses longer than the debounce period between them.
    {
        let mut file = std::fs::File::create(dir.join(FILE)).unwrap();
        for part in v2.chunks(v2.len().div_ceil(4)) {
            file.write_all(part).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(700));
        }
    }
    let line = wait_change(
        &worker,
        before,
        &["plugin change applied", "change=replaced"],
    );
    assert!(line.contains("new_version=2.0.0"), "{line}");
    let refused = worker.lines()[before..]
        .iter()
        .filter(|l| l.contains("plugin change refused"))
        .cloned()
        .collect::<Vec<_>>();
    assert!(refused.is_empty(), "loaded half-written: {refused:?}");
    assert_eq!(run_one(&queue), json!({"v": 2}));
    assert_eq!(readyz(port)["plugins"][0]["version"], "2.0.0");
}

#[test]
fn a_plugin_added_at_run_time_consumes_and_a_removed_one_leaves_its_jobs_waiting() {
    let (redis, worker, port) = start(&[]);
    let dir = plugin_dir(&worker);
    // Jobs for a queue no plugin serves yet wait; adding the plugin starts consuming them.
    let outcomes = NodeQueue::new(&redis, TEST_QUEUE);
    let early = outcomes
        .add_one("complete", json!({"result": {"early": true}}), json!({}))
        .unwrap();
    let before = worker.line_count();
    deploy(&dir, &plugin_lib(TEST_PLUGIN), "libfg_test_outcomes.so");
    let line = wait_change(&worker, before, &["plugin change applied", "change=new"]);
    assert!(
        line.contains("plugin=test-outcomes") && line.contains("old_version=-"),
        "{line}"
    );
    let job = outcomes.wait_finished(&[early]).unwrap().remove(0);
    assert_eq!(job.returnvalue, json!({"early": true}), "{job:?}");
    assert_eq!(readyz(port)["queues"][TEST_QUEUE], true);

    // Removing test-reload stops its queue; a job added afterwards waits untouched.
    let before = worker.line_count();
    std::fs::remove_file(dir.join(FILE)).unwrap();
    let line = wait_change(
        &worker,
        before,
        &["plugin change applied", "change=removed"],
    );
    assert!(line.contains("old_version=1.0.0"), "{line}");
    let queue = NodeQueue::new(&redis, QUEUE);
    let waiting = queue.add_one("version", json!({}), json!({})).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let job = queue.job(&waiting).unwrap();
    assert_eq!(job.state, "waiting", "{job:?}");
    assert_eq!(job.attempts_started, 0, "{job:?}");
    let ready = readyz(port);
    assert!(ready["queues"].get(QUEUE).is_none(), "{ready}");
    assert_eq!(
        ready["ready"], true,
        "the other queue still serves: {ready}"
    );

    // Deploying the plugin again (as version 2) picks the waiting job up.
    deploy(&dir, &plugin_lib(RELOAD_V2_PLUGIN), FILE);
    let job = queue.wait_finished(&[waiting]).unwrap().remove(0);
    assert_eq!(job.returnvalue, json!({"v": 2}), "{job:?}");
}

/// VmRSS of `pid` in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn twenty_reloads_keep_the_host_healthy_and_report_their_memory() {
    let (redis, worker, port) = start(&[]);
    let dir = plugin_dir(&worker);
    let queue = NodeQueue::new(&redis, QUEUE);
    assert_eq!(run_one(&queue), json!({"v": 1}));
    let rss_before = rss_kb(worker.pid());
    for i in 1..=20u64 {
        let (lib, v) = if i % 2 == 1 {
            (RELOAD_V2_PLUGIN, 2)
        } else {
            (RELOAD_V1_PLUGIN, 1)
        };
        let before = worker.line_count();
        deploy(&dir, &plugin_lib(lib), FILE);
        wait_change(
            &worker,
            before,
            &["plugin change applied", "change=replaced"],
        );
        assert_eq!(run_one(&queue), json!({"v": v}), "reload {i}");
    }
    let rss_after = rss_kb(worker.pid());
    assert_eq!(http_get(port, "/healthz").map(|(s, _)| s), Some(200));
    let ready = readyz(port);
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["plugins"][0]["version"], "1.0.0", "{ready}");
    assert_eq!(
        metric(port, "frostguard_plugin_retired_images "),
        Some(20.0)
    );
    let mapped = metric(port, "frostguard_plugin_retired_image_bytes ").unwrap();
    let lib_size = std::fs::metadata(plugin_lib(RELOAD_V1_PLUGIN))
        .unwrap()
        .len();
    eprintln!(
        "20 reloads: RSS {rss_before} kB -> {rss_after} kB ({:+} kB, {:+.0} kB per reload); retired images map \
         {:.1} MB ({:.0} kB each; the library file is {} kB)",
        rss_after as i64 - rss_before as i64,
        (rss_after as f64 - rss_before as f64) / 20.0,
        mapped / 1e6,
        mapped / 20.0 / 1024.0,
        lib_size / 1024
    );
}
