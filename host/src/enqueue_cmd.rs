//! `frostguard-worker enqueue QUEUE NAME DATA [--opts JSON] [--wait]`: adds one BullMQ job the way Node's
//! `Queue.add(name, data, opts)` does, for demos, smoke tests after a deploy and manual re-sends; with
//! `--wait` it waits for the job to finish and prints the outcome.
//!
//! The job goes in through bullmq-official's `Queue::add` (BullMQ's own add scripts). That path stores only
//! some of Node's options, so the options are checked first: those it stores as Node does are accepted, any
//! other is refused with a message naming it rather than silently dropped (see docs/bullmq-official.md).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bullmq::options::{DeduplicationOptions, QueueOptions};
use bullmq::types::{BackoffStrategy, JobState, RemoveOnFinish};
use bullmq::{JobOptions, Queue};
use serde_json::{json, Map, Value};

use crate::cli::EnqueueArgs;
use crate::config::RedisSettings;
use crate::output::out;

/// Node's `PRIORITY_LIMIT` (2^21 − 1).
const PRIORITY_LIMIT: u64 = 2_097_151;
/// How often `--wait` looks at the job.
const POLL: Duration = Duration::from_millis(100);

/// The options `enqueue` accepts (Node's public names).
const SUPPORTED: [&str; 9] = [
    "attempts",
    "backoff",
    "delay",
    "priority",
    "lifo",
    "jobId",
    "removeOnComplete",
    "removeOnFail",
    "deduplication",
];

/// Turns Node-style job options into the library's, with Node's validation (pure, tested as a table).
/// Like Node's `Job`, `attempts` defaults to 0 so the stored options are the same.
pub fn job_options(opts: &Value) -> Result<JobOptions, String> {
    let empty = Map::new();
    let map = match opts {
        Value::Object(m) => m,
        Value::Null => &empty,
        _ => return Err("--opts must be a JSON object".to_owned()),
    };
    for key in map.keys() {
        if !SUPPORTED.contains(&key.as_str()) {
            return Err(format!(
                "option {key:?} is not supported by enqueue (supported: {})",
                SUPPORTED.join(", ")
            ));
        }
    }
    let uint = |key: &str| -> Result<Option<u64>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("option {key:?} must be a non-negative integer, got {v}")),
        }
    };
    let mut o = JobOptions {
        attempts: Some(
            u32::try_from(uint("attempts")?.unwrap_or(0))
                .map_err(|_| "option \"attempts\" is too large".to_owned())?,
        ),
        delay: uint("delay")?.filter(|d| *d > 0),
        ..JobOptions::default()
    };
    if let Some(p) = uint("priority")? {
        if p > PRIORITY_LIMIT {
            return Err(format!("Priority should be between 0 and {PRIORITY_LIMIT}"));
        }
        o.priority = Some(p as u32).filter(|p| *p > 0);
    }
    match map.get("lifo") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => o.lifo = Some(true),
        Some(v) => return Err(format!("option \"lifo\" must be true or false, got {v}")),
    }
    if let Some(id) = map.get("jobId").filter(|v| !v.is_null()) {
        let id = id
            .as_str()
            .ok_or_else(|| format!("option \"jobId\" must be a string, got {id}"))?;
        if id == "0" || id.starts_with("0:") {
            return Err("JobId cannot be '0' or start with '0:'".to_owned());
        }
        if id.parse::<i64>().is_ok_and(|n| n.to_string() == id) {
            return Err("Custom Id cannot be integers".to_owned());
        }
        if id.contains(':') && id.split(':').count() != 3 {
            return Err("Custom Id cannot contain :".to_owned());
        }
        o.job_id = Some(id.to_owned());
    }
    o.backoff = match map.get("backoff") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(BackoffStrategy::Fixed(
            n.as_u64()
                .ok_or("option \"backoff\" must be a non-negative integer or {type, delay}")?,
        )),
        Some(Value::Object(b)) => {
            if let Some(extra) = b.keys().find(|k| !matches!(k.as_str(), "type" | "delay")) {
                return Err(format!(
                    "backoff.{extra} is not supported by enqueue (only type and delay)"
                ));
            }
            let delay = b.get("delay").and_then(Value::as_u64).unwrap_or(0);
            match b.get("type").and_then(Value::as_str) {
                Some("fixed") => Some(BackoffStrategy::Fixed(delay)),
                Some("exponential") => Some(BackoffStrategy::Exponential(delay)),
                other => {
                    return Err(format!(
                    "backoff.type must be \"fixed\" or \"exponential\" for enqueue, got {other:?}"
                ))
                }
            }
        }
        Some(v) => {
            return Err(format!(
                "option \"backoff\" must be a number or an object, got {v}"
            ))
        }
    };
    let remove = |key: &str| -> Result<Option<RemoveOnFinish>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                if let Some(extra) = v.as_object().and_then(|m| {
                    m.keys()
                        .find(|k| !matches!(k.as_str(), "age" | "count" | "limit"))
                }) {
                    return Err(format!("{key}.{extra} is not a BullMQ retention setting"));
                }
                serde_json::from_value(v.clone())
                    .map(Some)
                    .map_err(|_| format!("option {key:?} must be true/false, a count or {{age, count, limit}}, got {v}"))
            }
        }
    };
    o.remove_on_complete = remove("removeOnComplete")?;
    o.remove_on_fail = remove("removeOnFail")?;
    if let Some(de) = map.get("deduplication").filter(|v| !v.is_null()) {
        if let Some(extra) = de.as_object().and_then(|m| {
            m.keys()
                .find(|k| !matches!(k.as_str(), "id" | "ttl" | "extend" | "replace"))
        }) {
            return Err(format!("deduplication.{extra} is not supported by enqueue"));
        }
        let de: DeduplicationOptions = serde_json::from_value(de.clone())
            .map_err(|e| format!("option \"deduplication\": {e}"))?;
        if de.id.is_empty() {
            return Err("Deduplication id must be provided".to_owned());
        }
        o.deduplication = Some(de);
    }
    Ok(o)
}

/// Runs `enqueue`.
pub fn main(args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let data: Value = serde_json::from_str(&args.data).context("DATA is not valid JSON")?;
    let opts_json: Value = match &args.opts {
        Some(text) => serde_json::from_str(text).context("--opts is not valid JSON")?,
        None => Value::Null,
    };
    let opts = job_options(&opts_json).map_err(anyhow::Error::msg)?;
    let settings = RedisSettings::from_env()?;
    if settings.target.is_cluster() {
        crate::config::cluster::require_one_slot(&settings.prefix, [args.queue.as_str()])?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the async runtime")?;
    rt.block_on(enqueue(&settings, &args, data, opts))
}

async fn enqueue(
    settings: &RedisSettings,
    args: &EnqueueArgs,
    data: Value,
    opts: JobOptions,
) -> anyhow::Result<ExitCode> {
    let queue_opts = QueueOptions {
        connection: settings.target.connection_options(),
        prefix: settings.prefix.clone(),
        ..QueueOptions::default()
    };
    let queue = tokio::time::timeout(
        Duration::from_secs(10),
        Queue::with_options(&args.queue, queue_opts),
    )
    .await
    .with_context(|| format!("Redis at {} did not answer", settings.target.redacted()))?
    .with_context(|| format!("connecting to Redis at {}", settings.target.redacted()))?;
    let job = queue
        .add(&args.name, data)
        .options(opts)
        .await
        .with_context(|| format!("adding the job to queue {}", args.queue))?;
    let id = job.id().to_owned();
    if !args.wait {
        out!("{}", json!({ "queue": args.queue, "id": id }));
        queue.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = args
        .timeout_ms
        .filter(|ms| *ms > 0)
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let outcome = loop {
        let state = queue
            .get_job_state(&id)
            .await
            .with_context(|| format!("reading the state of job {id}"))?;
        match state {
            JobState::Completed | JobState::Failed => {
                let job = queue.get_job(&id).await?;
                break outcome_json(&args.queue, &id, state, job.as_ref());
            }
            // Removed on completion or failure (removeOnComplete/removeOnFail) before we looked.
            JobState::Unknown => break json!({"queue": args.queue, "id": id, "state": "removed"}),
            _ => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            out!(
                "{}",
                json!({"queue": args.queue, "id": id, "state": state.to_string(), "timedOut": true})
            );
            queue.close().await;
            bail!("job {id} did not finish within --timeout-ms");
        }
        tokio::time::sleep(POLL).await;
    };
    queue.close().await;
    out!("{outcome}");
    Ok(if outcome["state"] == "failed" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The printed outcome: state, attempts made, and the return value or the failure reason.
fn outcome_json(queue: &str, id: &str, state: JobState, job: Option<&bullmq::Job>) -> Value {
    let mut out = json!({"queue": queue, "id": id, "state": state.to_string()});
    if let Some(job) = job {
        out["attemptsMade"] = json!(job.attempts_made());
        if state == JobState::Completed {
            out["returnvalue"] = serde_json::from_str(job.returnvalue())
                .unwrap_or_else(|_| json!(job.returnvalue()));
        } else {
            out["failedReason"] = json!(job.failed_reason());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_options_are_accepted_or_refused_by_name() {
        let ok = |v: Value| job_options(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
        let err = |v: Value| job_options(&v).expect_err(&v.to_string());
        // Like Node's Job, attempts defaults to 0.
        assert_eq!(ok(Value::Null).attempts, Some(0));
        let o = ok(
            json!({"attempts": 3, "backoff": 500, "delay": 0, "priority": 2, "lifo": true,
                          "jobId": "alarm-1", "removeOnComplete": {"count": 10}, "removeOnFail": true}),
        );
        assert_eq!(o.attempts, Some(3));
        assert!(matches!(o.backoff, Some(BackoffStrategy::Fixed(500))));
        assert_eq!(o.delay, None);
        assert_eq!(o.priority, Some(2));
        assert_eq!(o.lifo, Some(true));
        assert_eq!(o.job_id.as_deref(), Some("alarm-1"));
        let o = ok(
            json!({"backoff": {"type": "exponential", "delay": 2000}, "deduplication": {"id": "d"}}),
        );
        assert!(matches!(
            o.backoff,
            Some(BackoffStrategy::Exponential(2000))
        ));
        for (bad, says) in [
            (json!([1]), "JSON object"),
            (json!({"keepLogs": 5}), "\"keepLogs\" is not supported"),
            (json!({"atempts": 5}), "\"atempts\" is not supported"),
            (json!({"attempts": -1}), "non-negative integer"),
            (json!({"priority": 2_097_152}), "between 0 and 2097151"),
            (json!({"priority": 1.5}), "non-negative integer"),
            (json!({"jobId": "0"}), "cannot be '0'"),
            (json!({"jobId": "42"}), "cannot be integers"),
            (json!({"jobId": "a:b"}), "cannot contain :"),
            (
                json!({"backoff": {"type": "exponential", "delay": 1, "jitter": 0.5}}),
                "backoff.jitter",
            ),
            (json!({"backoff": {"type": "custom"}}), "backoff.type"),
            (
                json!({"removeOnComplete": {"keep": 1}}),
                "removeOnComplete.keep",
            ),
            (json!({"deduplication": {"id": ""}}), "id must be provided"),
        ] {
            let e = err(bad.clone());
            assert!(e.contains(says), "{bad}: {e}");
        }
        // Three parts are allowed (scheduler-style ids), as in Node.
        assert_eq!(
            ok(json!({"jobId": "a:b:c"})).job_id.as_deref(),
            Some("a:b:c")
        );
    }
}
