//! Driving the Node BullMQ client (`tests/node/drive.mjs`) with JSON in and out.

use crate::process::{ChildGuard, LineLog};
use crate::redis::RedisServer;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `tests/node`: drive.mjs and the default Node BullMQ (6.x).
pub fn node_dir() -> PathBuf {
    crate::workspace_root().join("tests").join("node")
}

/// Selects the Node BullMQ that drive.mjs runs with: `6` (default, `tests/node`) or `5`
/// (`tests/node-bullmq5`, the 5.67 line FrostGuard's API pins). Read once from this variable, so a whole test
/// run (e.g. `FROSTGUARD_NODE_BULLMQ=5 cargo nextest run --test interop`) uses one producer version.
pub const NODE_BULLMQ_ENV: &str = "FROSTGUARD_NODE_BULLMQ";

/// The Node project whose `bullmq` drive.mjs loads, from [`NODE_BULLMQ_ENV`]; `None` for the default
/// (`tests/node` itself). Panics on a value other than 5 or 6, naming the variable.
pub fn bullmq_project_dir() -> Option<PathBuf> {
    match std::env::var(NODE_BULLMQ_ENV)
        .ok()
        .as_deref()
        .map(str::trim)
    {
        None | Some("") | Some("6") => None,
        Some("5") => Some(crate::workspace_root().join("tests").join("node-bullmq5")),
        Some(other) => panic!("{NODE_BULLMQ_ENV} must be 5 or 6, got {other:?}"),
    }
}

/// Runs `npm ci` in `tests/node` (and in the selected BullMQ project, [`bullmq_project_dir`]) where
/// `node_modules` lacks bullmq. Safe to call from parallel test processes: each install runs under `flock`
/// on `<dir>/.npm-ci.lock`, and at most once per test process.
pub fn ensure_node_modules() -> anyhow::Result<()> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().expect("npm ci lock");
    if *done {
        return Ok(());
    }
    for dir in std::iter::once(node_dir()).chain(bullmq_project_dir()) {
        if dir.join("node_modules/bullmq/package.json").is_file() {
            continue;
        }
        let status = Command::new("flock")
            .arg(dir.join(".npm-ci.lock"))
            .args([
                "sh",
                "-c",
                "[ -f node_modules/bullmq/package.json ] || npm ci --no-audit --no-fund",
            ])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| {
                anyhow::anyhow!("cannot run flock/npm ({e}); install util-linux and npm")
            })?;
        anyhow::ensure!(
            status.success(),
            "npm ci in {} failed: {status}",
            dir.display()
        );
    }
    *done = true;
    Ok(())
}

/// The version of the Node BullMQ that drive.mjs runs with (e.g. `6.7.0`, `5.67.0`).
pub fn node_bullmq_version() -> anyhow::Result<String> {
    let out = drive("bullmqVersion", &json!({}))?;
    out["version"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("bullmqVersion printed no version: {out}"))
}

/// A running `node drive.mjs <command> <json>`.
#[derive(Debug)]
pub struct NodeTask {
    command: String,
    child: ChildGuard,
    stdout: Arc<LineLog>,
    stderr: Arc<LineLog>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl NodeTask {
    /// Starts the command in the background.
    pub fn spawn(command: &str, input: &Value) -> anyhow::Result<NodeTask> {
        ensure_node_modules()?;
        let dir = node_dir();
        let child = Command::new("node")
            .arg(dir.join("drive.mjs"))
            .arg(command)
            .arg(input.to_string())
            .envs(bullmq_project_dir().map(|d| ("FROSTGUARD_BULLMQ_DIR", d)))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run node ({e}); install Node.js 20+"))?;
        let mut child = ChildGuard::new(child);
        let stdout = LineLog::new();
        let stderr = LineLog::new();
        let tag = format!("node {command}");
        let readers = vec![
            stdout.follow(&tag, child.child_mut().stdout.take().expect("piped"), false),
            stderr.follow(&tag, child.child_mut().stderr.take().expect("piped"), true),
        ];
        Ok(NodeTask {
            command: command.to_string(),
            child,
            stdout,
            stderr,
            readers,
        })
    }

    /// Waits for the command to finish (killing it after `timeout`) and parses its JSON output.
    pub fn join(mut self, timeout: Duration) -> anyhow::Result<Value> {
        let status = self.child.wait_timeout(timeout).map_err(|e| {
            anyhow::anyhow!(
                "node drive.mjs {}: {e}\nstderr:\n{}",
                self.command,
                self.stderr.snapshot().join("\n")
            )
        })?;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = self.stdout.snapshot().join("\n");
        anyhow::ensure!(
            status.success(),
            "node drive.mjs {} exited with {status}\nstderr:\n{}",
            self.command,
            self.stderr.snapshot().join("\n")
        );
        serde_json::from_str(out.trim()).map_err(|e| {
            anyhow::anyhow!(
                "node drive.mjs {} printed no JSON ({e}): {out}",
                self.command
            )
        })
    }
}

/// Runs a drive.mjs command to completion (at most 5 minutes) and returns its JSON output.
pub fn drive(command: &str, input: &Value) -> anyhow::Result<Value> {
    NodeTask::spawn(command, input)?.join(Duration::from_secs(300))
}

/// A job as Node's `Queue.getJob` + `job.getState()` see it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSnapshot {
    pub id: String,
    /// `completed`, `failed`, `delayed`, `active`, `waiting`, `prioritized`, … or `missing` (no such job).
    pub state: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub opts: Value,
    #[serde(default)]
    pub returnvalue: Value,
    #[serde(default)]
    pub failed_reason: Option<String>,
    #[serde(default)]
    pub attempts_made: u32,
    #[serde(default)]
    pub attempts_started: u32,
    #[serde(default)]
    pub stalled_counter: u32,
    #[serde(default)]
    pub timestamp: u64,
    #[serde(default)]
    pub processed_on: Option<u64>,
    #[serde(default)]
    pub finished_on: Option<u64>,
    #[serde(default)]
    pub delay: u64,
    #[serde(default)]
    pub priority: u64,
    #[serde(default)]
    pub progress: Value,
    #[serde(default)]
    pub processed_by: Option<String>,
    #[serde(default)]
    pub repeat_job_key: Option<String>,
    #[serde(default)]
    pub stacktrace: Vec<String>,
    /// Only filled when logs were requested.
    #[serde(default)]
    pub logs: Vec<String>,
}

/// One queue as seen from Node BullMQ (prefix `bull` unless changed with [`NodeQueue::with_prefix`]).
#[derive(Debug, Clone)]
pub struct NodeQueue {
    redis_url: String,
    /// Seed node URLs when the queue lives on a Redis Cluster (drive.mjs then uses ioredis' `Cluster`).
    cluster: Option<Vec<String>>,
    queue: String,
    prefix: String,
}

/// How long Node waits for jobs to finish unless a call says otherwise.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

impl NodeQueue {
    pub fn new(redis: &RedisServer, queue: &str) -> NodeQueue {
        NodeQueue {
            redis_url: redis.url(),
            cluster: None,
            queue: queue.to_string(),
            prefix: "bull".to_string(),
        }
    }

    /// A queue on a Redis Cluster, under `prefix` (which must carry a hash tag such as `{bull}`), reached
    /// through ioredis' `Cluster` as a producer on a cluster is.
    pub fn on_cluster(cluster: &crate::RedisCluster, queue: &str, prefix: &str) -> NodeQueue {
        let urls = cluster.urls();
        NodeQueue {
            redis_url: urls[0].clone(),
            cluster: Some(urls),
            queue: queue.to_string(),
            prefix: prefix.to_string(),
        }
    }

    pub fn with_prefix(mut self, prefix: &str) -> NodeQueue {
        self.prefix = prefix.to_string();
        self
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The drive.mjs input for this queue merged with `extra` (an object).
    pub fn input(&self, extra: Value) -> Value {
        let mut v = json!({"redis": self.redis_url, "queue": self.queue, "prefix": self.prefix});
        if let Some(urls) = &self.cluster {
            v["cluster"] = json!(urls);
        }
        if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
            obj.extend(more);
        }
        v
    }

    /// Runs any drive.mjs command against this queue.
    pub fn call(&self, command: &str, extra: Value) -> anyhow::Result<Value> {
        drive(command, &self.input(extra))
    }

    /// Starts any drive.mjs command against this queue in the background.
    pub fn spawn(&self, command: &str, extra: Value) -> anyhow::Result<NodeTask> {
        NodeTask::spawn(command, &self.input(extra))
    }

    /// `Queue.add` for each job (`[{name, data, opts}]`); returns the job ids.
    pub fn add(&self, jobs: Value) -> anyhow::Result<Vec<String>> {
        ids(self.call("add", json!({ "jobs": jobs }))?)
    }

    /// `Queue.addBulk`; returns the job ids.
    pub fn add_bulk(&self, jobs: Value) -> anyhow::Result<Vec<String>> {
        ids(self.call("add", json!({ "jobs": jobs, "bulk": true }))?)
    }

    /// Adds one job and returns its id.
    pub fn add_one(&self, name: &str, data: Value, opts: Value) -> anyhow::Result<String> {
        let ids = self.add(json!([{ "name": name, "data": data, "opts": opts }]))?;
        Ok(ids.into_iter().next().expect("one id"))
    }

    /// Snapshots of the given jobs (with job logs when `with_logs`).
    pub fn jobs(&self, ids: &[String], with_logs: bool) -> anyhow::Result<Vec<JobSnapshot>> {
        let out = self.call("jobs", json!({ "ids": ids, "withLogs": with_logs }))?;
        Ok(serde_json::from_value(out["jobs"].clone())?)
    }

    pub fn job(&self, id: &str) -> anyhow::Result<JobSnapshot> {
        Ok(self
            .jobs(&[id.to_string()], true)?
            .pop()
            .expect("one snapshot"))
    }

    /// Waits until every job is completed or failed (fails on timeout, showing the states).
    pub fn wait_finished(&self, ids: &[String]) -> anyhow::Result<Vec<JobSnapshot>> {
        self.wait_states(ids, &["completed", "failed"], DEFAULT_WAIT)
    }

    /// Waits until every job is in one of `states` (polling from Node); returns the snapshots with logs.
    pub fn wait_states(
        &self,
        ids: &[String],
        states: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Vec<JobSnapshot>> {
        let out = self.call(
            "wait",
            json!({
                "ids": ids,
                "states": states,
                "timeoutMs": timeout.as_millis() as u64,
                "withLogs": true,
            }),
        )?;
        let jobs: Vec<JobSnapshot> = serde_json::from_value(out["jobs"].clone())?;
        if out["timedOut"].as_bool() == Some(true) {
            let summary: Vec<String> = jobs
                .iter()
                .map(|j| {
                    format!(
                        "{}={} (attemptsMade {}, failedReason {:?})",
                        j.id, j.state, j.attempts_made, j.failed_reason
                    )
                })
                .collect();
            anyhow::bail!(
                "jobs did not reach {states:?} within {timeout:?}: {}",
                summary.join(", ")
            );
        }
        Ok(jobs)
    }

    /// Adds the jobs and waits until all are completed or failed.
    pub fn run(&self, jobs: Value) -> anyhow::Result<Vec<JobSnapshot>> {
        let ids = self.add(jobs)?;
        self.wait_finished(&ids)
    }

    /// `Queue.getJobCounts()`.
    pub fn counts(&self) -> anyhow::Result<Value> {
        self.call("counts", json!({}))
    }

    /// Ids of jobs in the given states (`Queue.getJobs`, oldest first).
    pub fn list(&self, states: &[&str]) -> anyhow::Result<Vec<String>> {
        ids(self.call("list", json!({ "states": states }))?)
    }

    /// The raw event stream (`bull:<queue>:events`), oldest first; each event has `event`, `jobId`, `ms` (the
    /// stream entry's Redis time) and the event's own fields.
    pub fn events(&self) -> anyhow::Result<Vec<Value>> {
        let out = self.call("events", json!({}))?;
        Ok(out["events"].as_array().cloned().unwrap_or_default())
    }

    /// `Queue.pause()`.
    pub fn pause(&self) -> anyhow::Result<()> {
        let out = self.call("pause", json!({}))?;
        anyhow::ensure!(out["paused"] == json!(true), "queue not paused: {out}");
        Ok(())
    }

    /// `Queue.resume()`.
    pub fn resume(&self) -> anyhow::Result<()> {
        let out = self.call("resume", json!({}))?;
        anyhow::ensure!(out["paused"] == json!(false), "queue still paused: {out}");
        Ok(())
    }
}

fn ids(out: Value) -> anyhow::Result<Vec<String>> {
    let ids = out["ids"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no ids in {out}"))?;
    Ok(ids
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect())
}
