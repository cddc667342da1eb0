//! The Redis calls of the raw worker, independent of how they are sent: BullMQ's own `moveToActive` and
//! `moveToFinished` scripts (the text Node BullMQ 6.7 ships, read from its package) with the keys and packed
//! options a Node `Worker` passes, the `BZPOPMIN` on the queue's marker, and the replies turned into jobs.
//! Both drivers (blocking and async, `main.rs`) build their commands and read their replies here, so they
//! make the same calls.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use redis::{Cmd, Value};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A lock of 30 s, Node's default `lockDuration`: far longer than any drain this worker is used for, which
/// is why it never renews one (see the module comment of `main.rs`).
const LOCK_DURATION_MS: u64 = 30_000;

/// Where Node BullMQ keeps its scripts with their includes resolved: `RAW_WORKER_SCRIPTS`, else the copy
/// installed in tests/node (the Node 6.7 the benchmark compares against).
fn scripts_dir() -> PathBuf {
    match std::env::var_os("RAW_WORKER_SCRIPTS") {
        Some(dir) => PathBuf::from(dir),
        None => frostguard_tests::node_dir().join("node_modules/bullmq/dist/cjs/scripts"),
    }
}

/// The Lua text of one of Node BullMQ's scripts, taken from its compiled module `<file>.js`, where it is the
/// template literal assigned to `content`. Scripts that need JavaScript's escapes to read are refused rather
/// than guessed at (the two used here have none).
fn script_text(dir: &Path, file: &str) -> anyhow::Result<String> {
    let path = dir.join(format!("{file}.js"));
    let module =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let start = module
        .find("const content = `")
        .with_context(|| format!("{} holds no script", path.display()))?
        + "const content = `".len();
    let len = module[start..]
        .find('`')
        .with_context(|| format!("{}: unterminated script", path.display()))?;
    let text = &module[start..start + len];
    if text.contains('\\') || text.contains("${") {
        bail!("{}: the script uses template escapes", path.display());
    }
    Ok(text.to_owned())
}

/// `SCRIPT LOAD` of the two scripts: their SHA1s, for `EVALSHA`.
pub fn load_commands() -> anyhow::Result<[Cmd; 2]> {
    let dir = scripts_dir();
    let load = |file: &str| -> anyhow::Result<Cmd> {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(script_text(&dir, file)?);
        Ok(cmd)
    };
    Ok([load("moveToActive-11")?, load("moveToFinished-14")?])
}

/// Milliseconds since the epoch, as `Date.now()`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One queue's keys and the loaded scripts; builds every command the worker sends.
pub struct Queue {
    /// `bull:<queue>:`
    prefix: String,
    /// `moveToActive`'s eleven keys, in its order.
    active_keys: [String; 11],
    completed: String,
    metrics: String,
    marker: String,
    move_to_active: String,
    move_to_finished: String,
    /// Lock tokens are `<worker id>:<n>`, as Node's are.
    worker_id: String,
    next_token: u64,
}

impl Queue {
    /// `shas`: the replies to [`load_commands`], in its order.
    pub fn new(queue: &str, shas: [String; 2]) -> Queue {
        let prefix = format!("bull:{queue}:");
        let key = |name: &str| format!("{prefix}{name}");
        let [move_to_active, move_to_finished] = shas;
        Queue {
            active_keys: [
                "wait",
                "active",
                "prioritized",
                "events",
                "stalled",
                "limiter",
                "delayed",
                "paused",
                "meta",
                "pc",
                "marker",
            ]
            .map(key),
            completed: key("completed"),
            metrics: key("metrics:completed"),
            marker: key("marker"),
            prefix,
            move_to_active,
            move_to_finished,
            worker_id: format!("raw-{}-{:x}", std::process::id(), now_ms()),
            next_token: 0,
        }
    }

    /// A fresh lock token for the next fetch.
    pub fn token(&mut self) -> String {
        self.next_token += 1;
        format!("{}:{}", self.worker_id, self.next_token)
    }

    /// `moveToActive`: takes the next waiting job into active under `token`'s lock.
    pub fn move_to_active(&self, token: &str) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.move_to_active).arg(11);
        for key in &self.active_keys {
            cmd.arg(key);
        }
        // Node packs `{token, lockDuration, limiter, name}`; the last two are undefined for a worker without
        // a limiter or a name, which msgpack carries as nil and the script reads as absent.
        let mut opts = Vec::with_capacity(64);
        rmp::encode::write_map_len(&mut opts, 2).expect("a Vec grows");
        pack_str(&mut opts, "token");
        pack_str(&mut opts, token);
        pack_str(&mut opts, "lockDuration");
        rmp::encode::write_uint(&mut opts, LOCK_DURATION_MS).expect("a Vec grows");
        cmd.arg(&self.prefix).arg(now_ms()).arg(opts);
        cmd
    }

    /// `moveToFinished` to `completed` with `job`'s return value; with `fetch_next`, the same script also
    /// takes the next job (the reply then carries it, as `moveToActive`'s does).
    pub fn move_to_completed(&self, job: &Job, returnvalue: &str, fetch_next: bool) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.move_to_finished).arg(14);
        // The first ten keys are moveToActive's, then the target set, the job, its metrics and the marker.
        for key in &self.active_keys[..10] {
            cmd.arg(key);
        }
        cmd.arg(&self.completed)
            .arg(format!("{}{}", self.prefix, job.id))
            .arg(&self.metrics)
            .arg(&self.marker);
        cmd.arg(&job.id)
            .arg(now_ms())
            .arg("returnvalue")
            .arg(returnvalue)
            .arg("completed")
            .arg(if fetch_next { "1" } else { "0" })
            .arg(&self.prefix)
            .arg(self.finished_opts(job));
        cmd
    }

    /// The packed options of `moveToFinished`, as Node's `moveToFinishedArgs` builds them for a worker with
    /// default options: the lock token, which finished jobs to keep (the job's own `removeOnComplete`),
    /// the lock duration for the next job, the job's `attempts`, metrics off, and the four parent flags
    /// (which this script version does not read). Undefined fields (name, limiter) are left out.
    fn finished_opts(&self, job: &Job) -> Vec<u8> {
        use rmp::encode::{write_bool, write_map_len, write_sint, write_uint};
        let mut buf = Vec::with_capacity(160);
        let fields = 8 + u32::from(job.attempts.is_some());
        write_map_len(&mut buf, fields).expect("a Vec grows");
        pack_str(&mut buf, "token");
        pack_str(&mut buf, &job.token);
        pack_str(&mut buf, "keepJobs");
        match &job.keep {
            Keep::Count(count) => {
                write_map_len(&mut buf, 1).expect("a Vec grows");
                pack_str(&mut buf, "count");
                write_sint(&mut buf, *count).expect("a Vec grows");
            }
            Keep::Fields(fields) => {
                write_map_len(&mut buf, fields.len() as u32).expect("a Vec grows");
                for (name, value) in fields {
                    pack_str(&mut buf, name);
                    write_sint(&mut buf, *value).expect("a Vec grows");
                }
            }
        }
        pack_str(&mut buf, "lockDuration");
        write_uint(&mut buf, LOCK_DURATION_MS).expect("a Vec grows");
        if let Some(attempts) = job.attempts {
            pack_str(&mut buf, "attempts");
            write_uint(&mut buf, attempts).expect("a Vec grows");
        }
        pack_str(&mut buf, "maxMetricsSize");
        pack_str(&mut buf, "");
        for flag in ["fpof", "cpof", "idof", "rdof"] {
            pack_str(&mut buf, flag);
            write_bool(&mut buf, false).expect("a Vec grows");
        }
        buf
    }

    /// `BZPOPMIN` on the marker for up to `seconds` (Node's fetch loop when the queue is drained).
    pub fn wait_for_marker(&self, seconds: f64) -> Cmd {
        let mut cmd = redis::cmd("BZPOPMIN");
        cmd.arg(&self.marker).arg(seconds);
        cmd
    }
}

fn pack_str(buf: &mut Vec<u8>, s: &str) {
    rmp::encode::write_str(buf, s).expect("a Vec grows");
}

/// Which finished jobs `moveToFinished` keeps (`keepJobs`), from the job's `removeOnComplete`.
#[derive(Debug)]
pub enum Keep {
    /// `{count: n}`: -1 keeps all (no `removeOnComplete`, or `false`), 0 keeps none (`true`).
    Count(i64),
    /// `{age, count, limit}` as the producer gave them.
    Fields(Vec<(String, i64)>),
}

/// A job taken into active, with what its processing and completion need.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub token: String,
    pub work: Work,
    attempts: Option<u64>,
    keep: Keep,
}

/// What a job asks for: `sleep` waits `data.ms`; any other name returns `data.result` (JSON text).
#[derive(Debug)]
pub enum Work {
    Sleep(u64),
    Complete(String),
}

/// A fetch's reply: a job, or none with how long the queue is rate limited and when its next delayed job
/// is due (ms since the epoch; 0 for none), as the scripts return them.
pub enum Fetched {
    Job(Job),
    Empty {
        rate_limited_ms: u64,
        next_delayed: u64,
    },
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Opts {
    #[serde(default)]
    attempts: Option<u64>,
    #[serde(default)]
    remove_on_complete: Option<serde_json::Value>,
}

fn keep_of(remove_on_complete: Option<serde_json::Value>) -> Keep {
    use serde_json::Value as J;
    match remove_on_complete {
        Some(J::Bool(true)) => Keep::Count(0),
        Some(J::Number(n)) => Keep::Count(n.as_i64().unwrap_or(-1)),
        Some(J::Object(fields)) => Keep::Fields(
            fields
                .into_iter()
                .filter_map(|(k, v)| v.as_i64().map(|v| (k, v)))
                .collect(),
        ),
        _ => Keep::Count(-1),
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn int(value: &Value) -> u64 {
    match value {
        Value::Int(n) => (*n).max(0) as u64,
        other => text(other).and_then(|s| s.parse().ok()).unwrap_or(0),
    }
}

/// Reads the reply of `moveToActive` or of `moveToFinished` with fetch-next: `[fields, id, limit, delay]`,
/// or a negative code when `moveToFinished` could not finish the job (its lock or state was lost).
pub fn fetched(reply: Value, token: String) -> anyhow::Result<Fetched> {
    let Value::Array(parts) = reply else {
        return match reply {
            Value::Int(code) if code < 0 => bail!("moveToFinished answered {code}"),
            _ => Ok(Fetched::Empty {
                rate_limited_ms: 0,
                next_delayed: 0,
            }),
        };
    };
    let [fields, id, limit, delay] = parts.as_slice() else {
        bail!("a fetch answered {} parts", parts.len());
    };
    let (Value::Array(fields), Some(id)) = (fields, text(id)) else {
        return Ok(Fetched::Empty {
            rate_limited_ms: int(limit),
            next_delayed: int(delay),
        });
    };
    let (mut name, mut data, mut opts) = ("", "{}", "{}");
    for pair in fields.chunks_exact(2) {
        match (text(&pair[0]), text(&pair[1])) {
            (Some("name"), Some(v)) => name = v,
            (Some("data"), Some(v)) => data = v,
            (Some("opts"), Some(v)) => opts = v,
            _ => {}
        }
    }
    // Data that is not a JSON object is processed as empty data, as the bare worker's processor would
    // read it (`data.result` is then null).
    let data: Data = serde_json::from_str(data).unwrap_or(Data {
        result: None,
        ms: None,
    });
    let work = if name == "sleep" {
        Work::Sleep(data.ms.unwrap_or(0))
    } else {
        Work::Complete(data.result.map_or("null", RawValue::get).to_owned())
    };
    let opts: Opts = serde_json::from_str(opts).unwrap_or(Opts {
        attempts: None,
        remove_on_complete: None,
    });
    Ok(Fetched::Job(Job {
        id: id.to_owned(),
        token,
        work,
        attempts: opts.attempts,
        keep: keep_of(opts.remove_on_complete),
    }))
}

/// `BZPOPMIN`'s reply: the marker's score (when the next delayed job is due; 0 for a plain marker), or
/// `None` when it timed out.
pub fn marker(reply: &Value) -> Option<u64> {
    match reply {
        Value::Array(parts) if parts.len() == 3 => Some(int(&parts[2])),
        _ => None,
    }
}

/// How long to block on the marker, in seconds, as Node's `getBlockTimeout` computes it from the next
/// delayed job's due time (`block_until`, 0 for none): the drain delay of 5 s when nothing is due, otherwise
/// the time until it is due, at least 1 ms and at most 10 s. `None` when it is already due.
pub fn block_timeout(block_until: u64) -> Option<f64> {
    if block_until == 0 {
        return Some(5.0);
    }
    let delay = block_until as i64 - now_ms() as i64;
    if delay <= 0 {
        None
    } else {
        Some((delay as f64 / 1000.0).clamp(0.001, 10.0))
    }
}
