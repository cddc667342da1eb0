//! A queue's event stream (`<prefix>:<queue>:events`) read straight from Redis, so that a test can assert
//! short-lived states after the fact (a job was `delayed`, `active`, `stalled`) instead of trying to catch
//! them live.

use crate::redis::{RedisServer, Resp};
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

/// Every event of `queue` (key prefix `prefix`), oldest first, as the Node driver's `events` command shows
/// them: `{streamId, ms, event, jobId, ...the event's own fields}` (`ms` is the entry's Redis time).
pub fn queue_events(redis: &RedisServer, prefix: &str, queue: &str) -> anyhow::Result<Vec<Value>> {
    let key = format!("{prefix}:{queue}:events");
    let reply = redis.cmd(&["XRANGE", &key, "-", "+"])?;
    let entries = reply
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("XRANGE {key} answered {reply:?}"))?;
    entries.iter().map(event_of).collect()
}

fn event_of(entry: &Resp) -> anyhow::Result<Value> {
    let parts = entry.as_array().unwrap_or(&[]);
    let (Some(id), Some(fields)) = (parts.first().and_then(Resp::as_str), parts.get(1)) else {
        anyhow::bail!("not a stream entry: {entry:?}");
    };
    let mut event = Map::new();
    event.insert("streamId".into(), Value::from(id));
    let ms: u64 = id.split('-').next().unwrap_or_default().parse()?;
    event.insert("ms".into(), Value::from(ms));
    for pair in fields.strings().chunks(2) {
        if let [name, value] = pair {
            event.insert(name.clone(), Value::from(value.as_str()));
        }
    }
    Ok(Value::Object(event))
}

/// Waits until the event stream of `queue` (prefix `bull`) holds an event named `event` for job `job_id`;
/// returns the whole stream at that moment.
pub fn wait_for_event(
    redis: &RedisServer,
    queue: &str,
    event: &str,
    job_id: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let events = queue_events(redis, "bull", queue)?;
        if events
            .iter()
            .any(|e| e["event"] == event && e["jobId"] == job_id)
        {
            return Ok(events);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "no {event:?} event for job {job_id} within {timeout:?}; events: {events:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
