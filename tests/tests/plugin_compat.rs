//! A plugin built before jobs were lent across the plugin ABI (before the `frostguard_plugin_direct_v1`
//! export) still works with this host: the loader finds no lent-job export, and every job reaches the plugin
//! as JSON, in-process and in a plugin process (which writes the job it read out of its frame as JSON).
//!
//! Such a plugin is made from the test plugin's current build with that one export renamed in the library
//! file: its root module and its pending-job export are what they were then, so to a host's loader it is
//! exactly a plugin of that time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use frostguard_tests::*;
use plugin_api::harness::JobRecorder;
use plugin_api::loader::{ForwardedLog, HostLogger, LoadedPlugin};
use plugin_api::serde_json::value::RawValue;
use plugin_api::{JobOpts, JobView, Outcome, PluginConfig};

/// The test plugin as a plugin built before lent jobs, written into `dir`.
fn plugin_before_lent_jobs(dir: &Path) -> PathBuf {
    let library = std::fs::read(plugin_lib(TEST_PLUGIN)).expect("read the test plugin");
    let name = [plugin_api::abi::DIRECT_SYMBOL.as_bytes(), b"\0"].concat();
    // The same length, so the file keeps its layout; the dynamic linker no longer finds the name.
    let mut renamed = name.clone();
    let last = renamed.len() - 2;
    renamed[last] = b'_';
    let mut out = library;
    let mut found = 0;
    let mut at = 0;
    while let Some(i) = out[at..].windows(name.len()).position(|w| w == name) {
        out[at + i..at + i + name.len()].copy_from_slice(&renamed);
        at += i + name.len();
        found += 1;
    }
    assert!(
        found > 0,
        "the test plugin has no lent-job export to rename"
    );
    let path = dir.join("libfg_test_before_lent_jobs.so");
    std::fs::write(&path, out).expect("write the older plugin");
    path
}

struct NoLogs;

impl HostLogger for NoLogs {
    fn log(&self, _: ForwardedLog) {}
}

#[test]
fn the_loader_hands_a_plugin_built_before_lent_jobs_every_job_as_json() {
    let dir = TempDir::new("before-lent-jobs").expect("temp dir");
    let plugin = LoadedPlugin::load(&plugin_before_lent_jobs(dir.path()))
        .expect("a plugin without the lent-job export loads");
    plugin
        .init(&PluginConfig::new(), Arc::new(NoLogs))
        .expect("init");
    assert!(!plugin.lends_jobs());
    // The test plugin's `view` job returns the view it was given: every field must arrive.
    let view = JobView {
        id: "sms:ü-42".to_owned(),
        name: "view".to_owned(),
        queue: TEST_QUEUE.to_owned(),
        data: RawValue::from_string(r#"{"body":"Temp \"high\" ❄\n","n":[1,-3e2,null]}"#.to_owned())
            .unwrap(),
        attempts_made: 2,
        attempts_started: 3,
        opts: JobOpts {
            attempts: 5,
            backoff: Some(json!({"type": "exponential", "delay": 2000})),
            delay: Some(250),
            priority: Some(7),
        },
        timestamp: 1_764_000_000_123,
        deadline_ms: Some(1_764_000_060_000),
    };
    let given = serde_json::to_value(&view).unwrap();
    let outcome = plugin.process(&view, Arc::new(JobRecorder::new(None)));
    assert_eq!(outcome, Outcome::completed(given));
    // A pending job is started through the JSON entry point too, and completed from the plugin's thread.
    let sleep = JobView {
        name: "sleep".to_owned(),
        data: RawValue::from_string(r#"{"ms":5}"#.to_owned()).unwrap(),
        ..view
    };
    assert!(plugin.is_pending(&sleep.queue, &sleep.name));
    let (tx, rx) = std::sync::mpsc::channel();
    plugin.start(
        &sleep,
        Arc::new(JobRecorder::new(None)),
        Box::new(move |outcome| tx.send(outcome).unwrap()),
    );
    let outcome = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the pending job completes");
    assert_eq!(outcome, Outcome::completed(json!({"slept": 5})));
}

fn runs_jobs_of_a_plugin_built_before_lent_jobs(isolation: &str) {
    let dir = TempDir::new("before-lent-jobs").expect("temp dir");
    let redis = RedisServer::start().expect("start redis-server");
    let worker = Worker::builder()
        .redis(&redis)
        .plugin_file(plugin_before_lent_jobs(dir.path()))
        .env("PLUGIN_ISOLATION", isolation)
        .spawn_ready()
        .expect("the host gets ready");
    let q = NodeQueue::new(&redis, TEST_QUEUE);
    let data = json!({"to": "+15551234567", "body": "Temp \"high\" ❄ 8.5°C\n"});
    let backoff = json!({"type": "exponential", "delay": 2000});
    let ids = [
        q.add_one(
            "view",
            data.clone(),
            json!({"attempts": 5, "backoff": backoff}),
        )
        .expect("add view"),
        q.add_one("complete", json!({"result": 7}), json!({}))
            .expect("add complete"),
        q.add_one("sleep", json!({"ms": 5}), json!({}))
            .expect("add sleep"),
    ];
    let jobs = q.wait_finished(&ids).expect("the jobs finish");
    for job in &jobs {
        assert_eq!(
            job.state,
            "completed",
            "{isolation}: {job:?}\n{}",
            worker.output_text()
        );
    }
    let view = &jobs[0].returnvalue;
    assert_eq!(view["id"], json!(ids[0]), "{isolation}: {view}");
    assert_eq!(view["name"], json!("view"), "{isolation}: {view}");
    assert_eq!(view["queue"], json!(TEST_QUEUE), "{isolation}: {view}");
    assert_eq!(view["data"], data, "{isolation}: {view}");
    assert_eq!(view["opts"]["attempts"], json!(5), "{isolation}: {view}");
    assert_eq!(view["opts"]["backoff"], backoff, "{isolation}: {view}");
    assert_eq!(jobs[1].returnvalue, json!(7), "{isolation}");
    assert_eq!(jobs[2].returnvalue, json!({"slept": 5}), "{isolation}");
}

#[test]
fn a_plugin_built_before_lent_jobs_runs_jobs_in_process() {
    runs_jobs_of_a_plugin_built_before_lent_jobs("in-process");
}

#[test]
fn a_plugin_built_before_lent_jobs_runs_jobs_in_a_plugin_process() {
    runs_jobs_of_a_plugin_built_before_lent_jobs("process");
}
