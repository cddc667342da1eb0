//! Inline jobs: the job names a plugin declares quick (`QueueInfo::inline_jobs`; the test plugin declares
//! `complete` and `inline-sleep`) run on the thread that received the job — the host's async thread
//! in-process, the plugin process's reader thread in process mode, both the process's main thread, which the kernel names after the binary
//! (`frostguard-work`) — and
//! not on a job thread. A call that only naps for microseconds (as a lock handed over by another thread
//! blocks it) keeps its name inline; two declared-inline calls in a row that wait (here: sleep 50 ms) are
//! logged once and their name goes to job threads from then on, while the other inline names stay inline.

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
    let warning = "an inline job waited or computed too long";

    assert_eq!(thread_of(&q, "complete", report(0)), MAIN, "{isolation}");
    // Naps of a few microseconds, each a voluntary context switch, hold nothing up: the name stays inline
    // (all of a name's first 100 calls are audited).
    for _ in 0..20 {
        assert_eq!(
            thread_of(&q, "inline-sleep", json!({"reportThread": true, "us": 2})),
            MAIN,
            "{isolation}: a nap is not a wait\n{}",
            worker.output_text()
        );
    }
    // Declared inline but slow: once may be bad luck, so it still runs inline the next time.
    assert_eq!(
        thread_of(&q, "inline-sleep", report(50)),
        MAIN,
        "{isolation}"
    );
    assert!(
        !worker.has_line(warning),
        "{isolation}: one breach alone is not logged: {}",
        worker.output_text()
    );
    // The second in a row is logged, and the name is not trusted again.
    assert_eq!(
        thread_of(&q, "inline-sleep", report(50)),
        MAIN,
        "{isolation}"
    );
    worker
        .wait_for_line(warning, Duration::from_secs(10))
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
        .filter(|l| l.contains(warning))
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
