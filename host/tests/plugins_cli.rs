//! `frostguard-worker plugins` and `plugins run` against real plugin libraries: the loader keeps good plugins
//! and rejects bad files one by one, each with its file, stage and reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use plugin_api::harness::build_plugin;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_frostguard-worker");

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fg-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn put(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn outcomes() -> Vec<u8> {
    std::fs::read(build_plugin("fg-test-outcomes").unwrap()).unwrap()
}

fn system_library() -> &'static Path {
    [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libm.so.6",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.exists())
    .expect("a system shared library")
}

fn plugins(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("plugins").args(args).env_remove("PLUGIN_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run frostguard-worker")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bad_files_are_disabled_one_by_one_while_the_good_plugin_loads() {
    let dir = Scratch::new("mixed");
    let good = outcomes();
    dir.put("libfg_test_outcomes.so", &good);
    dir.put("libtruncated.so", &good[..good.len() / 3]);
    dir.put("libsystem.so", &std::fs::read(system_library()).unwrap());
    dir.put(
        "libbad_abi.so",
        &std::fs::read(build_plugin("fg-test-bad-abi").unwrap()).unwrap(),
    );
    dir.put("libz_second_copy.so", &good);
    dir.put("README.txt", b"not a plugin, not even looked at");

    let out = plugins(&["--plugin-dir", dir.0.to_str().unwrap(), "--json"], &[]);
    assert_eq!(out.status.code(), Some(1), "a disabled plugin means exit 1");
    let report: Value = serde_json::from_str(&stdout(&out)).expect("JSON report");
    let loaded = report["loaded"].as_array().unwrap();
    assert_eq!(loaded.len(), 1, "{report:#}");
    assert_eq!(loaded[0]["plugin"]["name"], "test-outcomes");
    assert_eq!(
        loaded[0]["plugin"]["processors"][0]["queue"],
        "test-outcomes"
    );

    let disabled = report["disabled"].as_array().unwrap();
    let find = |file: &str| {
        disabled
            .iter()
            .find(|d| d["path"].as_str().unwrap().ends_with(file))
            .unwrap_or_else(|| panic!("{file} not reported: {report:#}"))
    };
    assert_eq!(find("libtruncated.so")["stage"], "file");
    assert!(find("libtruncated.so")["reason"]
        .as_str()
        .unwrap()
        .contains("truncated"));
    assert_eq!(find("libsystem.so")["stage"], "abi");
    assert!(find("libsystem.so")["reason"]
        .as_str()
        .unwrap()
        .contains("not a frostguard plugin"));
    assert_eq!(find("libbad_abi.so")["stage"], "abi");
    assert!(find("libbad_abi.so")["reason"]
        .as_str()
        .unwrap()
        .contains("incompatible plugin ABI layout"));
    assert_eq!(find("libz_second_copy.so")["stage"], "queue-conflict");
    assert_eq!(disabled.len(), 4, "{report:#}");

    // One ERROR log line per disabled plugin, naming the file and the stage.
    let logs = String::from_utf8_lossy(&out.stderr);
    for (file, stage) in [
        ("libtruncated.so", "stage=file"),
        ("libsystem.so", "stage=abi"),
        ("libbad_abi.so", "stage=abi"),
        ("libz_second_copy.so", "stage=queue-conflict"),
    ] {
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains(file)).collect();
        assert_eq!(lines.len(), 1, "{file}: {logs}");
        assert!(
            lines[0].contains("ERROR") && lines[0].contains(stage),
            "{}",
            lines[0]
        );
    }
}

#[test]
fn text_listing_shows_queues_job_names_and_concurrency_and_exits_zero_when_all_load() {
    let dir = Scratch::new("good");
    dir.put("libfg_test_outcomes.so", &outcomes());
    let out = plugins(&["--plugin-dir", dir.0.to_str().unwrap()], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("test-outcomes 0.1.0"), "{text}");
    assert!(
        text.contains("queue test-outcomes: concurrency 4"),
        "{text}"
    );
    assert!(text.contains("fail-unrecoverable"), "{text}");
}

#[test]
fn init_failures_are_reported_with_init() {
    let dir = Scratch::new("init");
    dir.put("libfg_test_outcomes.so", &outcomes());
    let args = ["--plugin-dir", dir.0.to_str().unwrap(), "--init"];
    let ok = plugins(&args, &[]);
    let text = stdout(&ok);
    assert_eq!(ok.status.code(), Some(0), "{text}");
    assert!(
        text.contains("libfg_test_outcomes.so: test-outcomes 0.1.0 — ok")
            && text.contains("queue test-outcomes: concurrency 4")
            && !text.contains("DISABLED"),
        "{text}"
    );
    // --init really ran the plugin's init (and its shutdown): the plugin's own log lines say so, and a
    // listing without --init has neither.
    let log = String::from_utf8_lossy(&ok.stderr);
    assert!(
        log.contains("test-outcomes plugin initialised")
            && log.contains("test-outcomes plugin shut down"),
        "{log}"
    );
    let listed = plugins(&args[..2], &[]);
    assert!(
        !String::from_utf8_lossy(&listed.stderr).contains("plugin initialised"),
        "a listing without --init must not init plugins"
    );
    let out = plugins(&args, &[("PLUGIN_TEST_OUTCOMES_FAIL_INIT", "true")]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("DISABLED at stage init: FAIL_INIT requested"),
        "{text}"
    );
}

#[test]
fn missing_directory_is_an_error() {
    let out = plugins(&["--plugin-dir", "/nonexistent/fg-plugins"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("cannot read plugin directory"));
}

#[test]
fn plugins_run_prints_the_outcome_as_json() {
    let lib = build_plugin("fg-test-outcomes").unwrap();
    let run = |name: &str, data: &str| {
        let out = Command::new(BIN)
            .args(["plugins", "run", "--plugin", lib.to_str().unwrap()])
            .args(["--queue", "test-outcomes", "--name", name, "--data", data])
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        (out.status.code(), json)
    };
    let (code, json) = run("progress", "{}");
    assert_eq!(code, Some(0));
    assert_eq!(
        json["outcome"],
        serde_json::json!({"status": "completed", "result": {"done": true}})
    );
    assert_eq!(
        json["progress"],
        serde_json::json!([25, {"step": "half"}, 100])
    );
    assert_eq!(json["jobLogs"], serde_json::json!(["line 1", "line 2"]));

    let (code, json) = run("panic", r#"{"message":"cli"}"#);
    assert_eq!(code, Some(1));
    assert_eq!(json["outcome"]["status"], "failed");
    assert_eq!(json["outcome"]["unrecoverable"], false);
    assert!(json["outcome"]["message"]
        .as_str()
        .unwrap()
        .contains("test panic: cli"));

    let (code, json) = run("no-such-job", "{}");
    assert_eq!(code, Some(1));
    assert_eq!(json["outcome"]["unrecoverable"], true);
}

/// `plugins run` takes a pending job the way the host does, in both modes: started, completed from the
/// plugin's timer thread with its writes before the outcome; and one the plugin never completes ends a
/// grace after its deadline instead of holding the command forever.
#[test]
fn plugins_run_waits_for_a_pending_job_and_gives_up_on_one_never_completed() {
    let lib = build_plugin("fg-test-outcomes").unwrap();
    let run = |isolation: &str, name: &str, data: &str, extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["plugins", "run", "--plugin", lib.to_str().unwrap()])
            .args(["--queue", "test-outcomes", "--name", name, "--data", data])
            .args(["--isolation", isolation])
            .args(extra)
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        (out.status.code(), json)
    };
    for isolation in ["in-process", "process"] {
        let (code, json) = run(isolation, "sleep", r#"{"ms":20,"report":true}"#, &[]);
        assert_eq!(code, Some(0), "{isolation}: {json}");
        assert_eq!(
            json["outcome"],
            serde_json::json!({"status": "completed", "result": {"slept": 20}}),
            "{isolation}"
        );
        assert_eq!(json["progress"], serde_json::json!([100]), "{isolation}");
        assert_eq!(json["jobLogs"], serde_json::json!(["woke"]), "{isolation}");
    }
    let (code, json) = run(
        "in-process",
        "pending-never",
        "{}",
        &["--timeout-ms", "100"],
    );
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["outcome"]["status"], "failed");
    assert_eq!(
        json["outcome"]["message"],
        "plugin test-outcomes did not complete the pending job within 2000 ms after its deadline"
    );
}
