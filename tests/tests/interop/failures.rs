//! What Node sees of a failed job's `stacktrace` (one entry per failed attempt, Node's list semantics and
//! `stackTraceLimit`, compared with a Node worker failing the same jobs), and the key order of job data and
//! return values, byte for byte as Node's `job.data` / `job.returnvalue` serialise.

use super::*;
use frostguard_tests::json;

/// The first line of each entry (`<Class>: <message>`), oldest first.
fn first_lines(job: &JobSnapshot) -> Vec<String> {
    job.stacktrace
        .iter()
        .map(|e| e.lines().next().unwrap_or_default().to_owned())
        .collect()
}

/// The `at` line every host entry ends with.
fn at_line(job: &str, attempt: u32, of: u32) -> String {
    format!(
        "    at test-outcomes 0.1.0 (queue test-outcomes, job {job}, attempt {attempt} of {of})"
    )
}

#[test]
fn failed_attempts_leave_one_stacktrace_entry_each_as_a_node_worker_does() {
    let (redis, _worker, q) = setup(&[]);
    let jobs = json!([
        {"name": "fail", "data": {"message": "gateway down"}, "opts": {"attempts": 3}},
        {"name": "fail", "data": {"message": "gateway down"}, "opts": {"attempts": 4, "stackTraceLimit": 2}},
        {"name": "fail", "data": {"message": "gateway down"}, "opts": {"attempts": 2, "stackTraceLimit": 0}},
        {"name": "fail-with-causes",
         "data": {"message": "invalid number", "causes": ["parse failed", "empty input"], "unrecoverable": true},
         "opts": {"attempts": 3}},
        {"name": "panic", "data": {"message": "kaboom"}, "opts": {"attempts": 2}},
        {"name": "fail-until", "data": {"succeedOnAttempt": 2}, "opts": {"attempts": 3}},
    ]);
    let ids = q.add(jobs).unwrap();
    let done = q.wait_finished(&ids).unwrap();
    let states: Vec<&str> = done.iter().map(|j| j.state.as_str()).collect();
    assert_eq!(
        states,
        [
            "failed",
            "failed",
            "failed",
            "failed",
            "failed",
            "completed"
        ],
        "{done:?}"
    );

    // One failure, three attempts: three entries, oldest first, each naming its attempt.
    let three = &done[0];
    assert_eq!(three.stacktrace.len(), 3, "{three:?}");
    for (k, entry) in three.stacktrace.iter().enumerate() {
        let want = format!(
            "PluginError: gateway down\n{}",
            at_line("fail", k as u32 + 1, 3)
        );
        assert_eq!(entry, &want, "{three:?}");
    }
    // stackTraceLimit 2 keeps the last two attempts; 0 keeps none.
    let limited = &done[1];
    assert_eq!(limited.stacktrace.len(), 2, "{limited:?}");
    assert!(
        limited.stacktrace[0].ends_with(&at_line("fail", 3, 4)),
        "{limited:?}"
    );
    assert!(
        limited.stacktrace[1].ends_with(&at_line("fail", 4, 4)),
        "{limited:?}"
    );
    assert_eq!(done[2].stacktrace, Vec::<String>::new(), "{:?}", done[2]);
    assert_eq!(done[2].failed_reason.as_deref(), Some("gateway down"));

    // Unrecoverable, from an error value: its type and its causes, one attempt only.
    let unrecoverable = &done[3];
    assert_eq!(unrecoverable.attempts_made, 1, "{unrecoverable:?}");
    assert_eq!(
        unrecoverable.stacktrace,
        [format!(
            "UnrecoverableError: invalid number\n    error type: fg_test_outcomes::Chained\n    \
             caused by: parse failed\n    caused by: empty input\n{}",
            at_line("fail-with-causes", 1, 3)
        )],
        "{unrecoverable:?}"
    );
    assert_eq!(
        unrecoverable.failed_reason.as_deref(),
        Some("invalid number")
    );

    // A panic: the panic's own message as failedReason (as Node shows a thrown error's message), "panicked"
    // and where in each attempt's entry.
    let panicked = &done[4];
    assert_eq!(
        panicked.failed_reason.as_deref(),
        Some("test panic: kaboom"),
        "{panicked:?}"
    );
    assert_eq!(panicked.stacktrace.len(), 2, "{panicked:?}");
    for (k, entry) in panicked.stacktrace.iter().enumerate() {
        let lines: Vec<&str> = entry.lines().collect();
        assert_eq!(lines.len(), 3, "{entry}");
        assert_eq!(lines[0], "PanicError: test panic: kaboom");
        let at = lines[1]
            .strip_prefix("    panicked at plugins/testing/outcomes/src/lib.rs:")
            .unwrap_or_else(|| panic!("no panic location: {entry}"));
        assert!(
            at.split(':').all(|n| n.parse::<u32>().is_ok()),
            "line:column expected, got {at:?}"
        );
        assert_eq!(lines[2], at_line("panic", k as u32 + 1, 2));
    }

    // A job that failed once and then completed keeps the failed attempt's entry, as with Node.
    let recovered = &done[5];
    assert_eq!(
        first_lines(recovered),
        ["PluginError: attempt 1 failed"],
        "{recovered:?}"
    );

    // A Node 6.7 worker failing the same jobs on another queue: the same number of entries per job (its
    // entries are JavaScript stacks of the same message).
    let node = NodeQueue::new(&redis, "node-outcomes");
    let node_ids = node
        .add(json!([
            {"name": "fail", "data": {"message": "gateway down"}, "opts": {"attempts": 3}},
            {"name": "fail", "data": {"message": "gateway down"}, "opts": {"attempts": 4, "stackTraceLimit": 2}},
            {"name": "fail", "data": {"message": "gateway down"}, "opts": {"attempts": 2, "stackTraceLimit": 0}},
        ]))
        .unwrap();
    let ran = node
        .call("node-worker", json!({"count": 9, "timeoutMs": 30000}))
        .unwrap();
    assert_eq!(ran["timedOut"], json!(false), "{ran}");
    let node_done = node.wait_finished(&node_ids).unwrap();
    for (host_job, node_job) in done.iter().zip(&node_done) {
        assert_eq!(node_job.state, "failed", "{node_job:?}");
        assert_eq!(
            host_job.stacktrace.len(),
            node_job.stacktrace.len(),
            "host {host_job:?}\nnode {node_job:?}"
        );
        for (h, n) in first_lines(host_job).iter().zip(first_lines(node_job)) {
            assert_eq!(
                h.strip_prefix("PluginError"),
                n.strip_prefix("Error"),
                "{h} / {n}"
            );
        }
        assert_eq!(host_job.failed_reason, node_job.failed_reason);
        assert_eq!(host_job.attempts_made, node_job.attempts_made);
    }
}

#[test]
fn data_and_return_values_keep_their_key_order_as_node_sees_them() {
    let (_redis, _worker, q) = setup(&[]);
    let result =
        r#"{"ok":true,"n":42,"tags":["z","a"],"nested":{"zeta":1,"alpha":[{"y":2,"b":3}]}}"#;
    let data = format!(
        r#"{{"zulu":"last first","result":{result},"alpha":{{"z":null,"a":1.5}},"mid":"é"}}"#
    );
    let echoed = r#"{"zulu":"last first","alpha":{"z":null,"a":1.5},"mid":"é"}"#;
    let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap();
    let ids = q
        .add(json!([
            {"name": "complete", "data": parse(&data)},
            {"name": "complete", "data": parse(echoed)},
        ]))
        .unwrap();
    let done = q.wait_finished(&ids).unwrap();
    assert!(done.iter().all(|j| j.state == "completed"), "{done:?}");

    let texts = q.call("texts", json!({"ids": ids})).unwrap();
    let text = |i: usize, field: &str| texts["jobs"][i][field].as_str().unwrap().to_owned();
    // What the producer stored, as Node reads it back (the test's own JSON keeps the order it was written in).
    assert_eq!(text(0, "data"), data);
    // The plugin's return value, written in the order the plugin built it (here: the order it was given).
    assert_eq!(text(0, "returnvalue"), result);
    // The whole data as the plugin saw it, echoed back.
    assert_eq!(text(1, "returnvalue"), format!(r#"{{"echo":{echoed}}}"#));
}
