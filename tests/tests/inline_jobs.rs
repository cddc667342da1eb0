//! Inline jobs: the job names a plugin declares quick (`QueueInfo::inline_jobs`; the test plugin declares
//! `complete` and `inline-sleep`) run on the thread that received the job — the host's async thread
//! in-process, the plugin process's reader thread in process mode, both the process's main thread, which the kernel names after the binary
//! (`frostguard-work`) — and
//! not on a job thread. A declared-inline call that waits (here: sleeps) is logged once and its name
//! goes to job threads from then on, while the other inline names stay inline.

use std::time::Duration;

use frostguard_tests::*;

/// The kernel's name of a process's main thread: the binary's name, cut to 15 bytes.
const MAIN: &str = "frostguard-work";

/// The name of the thread a `complete` or `inline-sleep` job of the test plugin ran on.
fn thread_of(q: &NodeQueue, name: &str, data: serde_json::Value) -> String {
    let id = q.add_one(name, data, json!({})).expect("add the job");
    let job = q
        .wait_finished(std::slice::from_ref(&id))
        .expect("the job finishes")
        .remove(0);
    assert_eq!(job.state, "completed", "{job:?}");
    job.returnvalue["thread"]
        .as_str()
        .unwrap_or_else(|| panic!("no thread in the result: {job:?}"))
        .to_owned()
}

fn inline_jobs_run_where_they_were_received(isolation: &str, job_thread: &str) {
    let redis = RedisServer::start().expect("start redis-server");
    let worker = Worker::builder()
        .redis(&redis)
        .plugins(&[TEST_PLUGIN])
        .env("PLUGIN_ISOLATION", isolation)
        .env("QUEUE_TEST_OUTCOMES_CONCURRENCY", "1")
        .spawn_ready()
        .expect("the host gets ready");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let report = |ms: u64| json!({"reportThread": true, "ms": ms});

    assert_eq!(thread_of(&q, "complete", report(0)), MAIN, "{isolation}");
    // Declared inline but slow: it still runs inline this once, is logged, and is not trusted again.
    assert_eq!(
        thread_of(&q, "inline-sleep", report(50)),
        MAIN,
        "{isolation}"
    );
    worker
        .wait_for_line(
            "an inline job waited or computed too long",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{isolation}: {e:#}\n{}", worker.output_text()));
    assert!(
        worker.has_line("job_name=inline-sleep"),
        "the warning names the job: {}",
        worker.output_text()
    );
    assert_eq!(
        thread_of(&q, "inline-sleep", report(50)),
        job_thread,
        "{isolation}: a name that broke its promise goes to job threads"
    );
    assert_eq!(
        thread_of(&q, "complete", report(0)),
        MAIN,
        "{isolation}: the other inline names stay inline"
    );
    let warnings = worker
        .lines()
        .iter()
        .filter(|l| l.contains("an inline job waited or computed too long"))
        .count();
    assert_eq!(warnings, 1, "logged once: {}", worker.output_text());
}

#[test]
fn in_process_inline_jobs_run_on_the_async_thread_until_one_is_slow() {
    inline_jobs_run_where_they_were_received("in-process", "frostguard-rt");
}

#[test]
fn process_mode_inline_jobs_run_on_the_reader_thread_until_one_is_slow() {
    inline_jobs_run_where_they_were_received("process", "job");
}
