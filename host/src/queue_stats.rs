//! A queue's depth as an operator needs it: the job counts exactly as Node's `Queue.getJobCounts()` reports
//! them, whether the queue is paused, how long the oldest waiting job has waited, and the workers BullMQ
//! lists for it. Read by the `/metrics` depth refresher and by `frostguard-worker stats`.
//!
//! Counts, paused flag and the oldest waiting job come from one read-only Lua script: one round trip per
//! queue and one consistent snapshot, as cheap on an idle queue as a handful of `LLEN`/`ZCARD`s.

use std::collections::BTreeMap;

use anyhow::Context as _;
use bullmq::QueueKeys;
use serde::Serialize;

/// The states Node's `getJobCounts()` reports by default (BullMQ 6: `paused` is no longer a job state; a
/// paused queue keeps its jobs in `waiting`), in Node's order.
pub const STATES: [&str; 7] = [
    "active",
    "completed",
    "delayed",
    "failed",
    "prioritized",
    "waiting",
    "waiting-children",
];

/// Counts as `LLEN`/`ZCARD` of each state (the `getCounts` script's rules, including its skip of a
/// pre-v5 `0:` marker at the head of `wait`), the `paused` flag in the queue's meta hash, and the time the
/// longest-waiting job became ready to run.
///
/// The candidates for "oldest waiting" are the next job of the wait list (its right end, where workers
/// take from, so the oldest FIFO job) and the first prioritized job. A job was ready from its `timestamp`
/// plus its `opts.delay` (a delayed add), or from the start of its last attempt (`processedOn`) when it is
/// back in wait after a failed or stalled attempt, whichever is later.
const SCRIPT: &str = r#"
local rcall = redis.call
local prefix = ARGV[1]
local counts = {}
local waitLen = rcall("LLEN", KEYS[6])
local head = nil
if waitLen > 0 then
  head = rcall("LINDEX", KEYS[6], -1)
  if string.sub(head, 1, 2) == "0:" then
    waitLen = waitLen - 1
    head = nil
    if waitLen > 0 then head = rcall("LINDEX", KEYS[6], -2) end
  end
end
counts[1] = rcall("LLEN", KEYS[1])
counts[2] = rcall("ZCARD", KEYS[2])
counts[3] = rcall("ZCARD", KEYS[3])
counts[4] = rcall("ZCARD", KEYS[4])
counts[5] = rcall("ZCARD", KEYS[5])
counts[6] = waitLen
counts[7] = rcall("ZCARD", KEYS[7])
counts[8] = rcall("HEXISTS", KEYS[8], "paused")
local oldest = -1
local candidates = {}
if head then candidates[#candidates + 1] = head end
local firstPrioritized = rcall("ZRANGE", KEYS[5], 0, 0)[1]
if firstPrioritized then candidates[#candidates + 1] = firstPrioritized end
for _, id in ipairs(candidates) do
  local f = rcall("HMGET", prefix .. id, "timestamp", "opts", "processedOn")
  local ready = tonumber(f[1])
  if ready then
    if f[2] then
      local ok, opts = pcall(cjson.decode, f[2])
      if ok and type(opts) == "table" and tonumber(opts["delay"]) then
        ready = ready + tonumber(opts["delay"])
      end
    end
    local processedOn = tonumber(f[3])
    if processedOn and processedOn > ready then ready = processedOn end
    if oldest < 0 or ready < oldest then oldest = ready end
  end
end
counts[9] = oldest
return counts
"#;

/// Job counts per state, named as Node names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobCounts {
    /// `active`.
    pub active: u64,
    /// `completed`.
    pub completed: u64,
    /// `delayed`.
    pub delayed: u64,
    /// `failed`.
    pub failed: u64,
    /// `prioritized`.
    pub prioritized: u64,
    /// `waiting`.
    pub waiting: u64,
    /// `waiting-children`.
    #[serde(rename = "waiting-children")]
    pub waiting_children: u64,
}

impl JobCounts {
    /// `(state, count)` in [`STATES`] order.
    pub fn by_state(&self) -> [(&'static str, u64); 7] {
        [
            (STATES[0], self.active),
            (STATES[1], self.completed),
            (STATES[2], self.delayed),
            (STATES[3], self.failed),
            (STATES[4], self.prioritized),
            (STATES[5], self.waiting),
            (STATES[6], self.waiting_children),
        ]
    }
}

/// One snapshot of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Job counts.
    pub counts: JobCounts,
    /// The queue is paused (`meta.paused` exists).
    pub paused: bool,
    /// When the longest-waiting job became ready (ms since the epoch); `None` when nothing waits.
    pub oldest_ready_ms: Option<u64>,
}

impl Snapshot {
    /// Age of the oldest waiting job at `now_ms` (0 when nothing waits; never negative, so a producer whose
    /// clock runs ahead does not show a negative wait).
    pub fn oldest_waiting_ms(&self, now_ms: u64) -> u64 {
        self.oldest_ready_ms
            .map(|ready| now_ms.saturating_sub(ready))
            .unwrap_or(0)
    }
}

/// Builds a snapshot from the script's reply (pure, for tests).
fn snapshot_from(reply: &[i64]) -> anyhow::Result<Snapshot> {
    let [active, completed, delayed, failed, prioritized, waiting, waiting_children, paused, oldest] =
        <[i64; 9]>::try_from(reply).map_err(|_| {
            anyhow::anyhow!("queue snapshot: expected 9 values, got {}", reply.len())
        })?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Snapshot {
        counts: JobCounts {
            active: n(active),
            completed: n(completed),
            delayed: n(delayed),
            failed: n(failed),
            prioritized: n(prioritized),
            waiting: n(waiting),
            waiting_children: n(waiting_children),
        },
        paused: paused == 1,
        oldest_ready_ms: u64::try_from(oldest).ok(),
    })
}

/// The reusable script handle (`EVALSHA`, loading the script on first use or after a Redis restart).
pub struct Reader {
    script: redis::Script,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            script: redis::Script::new(SCRIPT),
        }
    }
}

impl Reader {
    /// Reads one snapshot of the queue `keys` names.
    pub async fn read<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        keys: &QueueKeys,
    ) -> anyhow::Result<Snapshot> {
        let reply: Vec<i64> = self
            .script
            .key(keys.active())
            .key(keys.completed())
            .key(keys.delayed())
            .key(keys.failed())
            .key(keys.prioritized())
            .key(keys.wait())
            .key(keys.waiting_children())
            .key(keys.meta())
            .arg(keys.key_prefix())
            .invoke_async(conn)
            .await
            .with_context(|| format!("reading the counts of queue {}", keys.name()))?;
        snapshot_from(&reply)
    }
}

/// The workers of a queue in a `CLIENT LIST` reply, as Node's `getWorkers()` matches them (pure). BullMQ
/// names a worker's blocking connection `<prefix>:<base64(queue)>`, optionally followed by
/// `:w:<worker name>`; Node lists the clients whose name is exactly the first form or starts with the
/// second.
pub fn workers_in_client_list(
    client_list: &str,
    keys: &QueueKeys,
) -> Vec<BTreeMap<String, String>> {
    let bare = keys.client_name("");
    let named = format!("{bare}:w:");
    client_list
        .lines()
        .filter_map(|line| {
            let fields: BTreeMap<String, String> = line
                .split(' ')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let name = fields.get("name")?;
            (!name.is_empty() && (*name == bare || name.starts_with(&named))).then_some(fields)
        })
        .collect()
}

/// The workers of a queue over the `CLIENT LIST` replies of every node (pure): the most found on one node, as
/// Node's `getWorkers()` counts on a cluster (a worker's blocking cluster connection is named on every node
/// it reaches, so a sum would count it once per node).
pub fn workers_in_client_lists(lists: &[String], keys: &QueueKeys) -> usize {
    lists
        .iter()
        .map(|list| workers_in_client_list(list, keys).len())
        .max()
        .unwrap_or(0)
}

/// The names of the queues under `prefix`: every `<prefix>:<queue>:meta` key (BullMQ writes the meta hash
/// when a queue is created and on every add), found with `SCAN` on the server or on every primary of a
/// cluster, sorted.
pub async fn discover_queues(
    conn: &bullmq::redis_connection::AnyConnection,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let pattern = format!("{}:*:meta", glob_escape(prefix));
    let keys = crate::redis_nodes::scan_keys(conn, &pattern)
        .await
        .context("SCAN for queues")?;
    let queues: std::collections::BTreeSet<String> = keys
        .iter()
        .filter_map(|k| queue_of_meta_key(k, prefix))
        .collect();
    Ok(queues.into_iter().collect())
}

/// `<prefix>:<queue>:meta` → `<queue>`; `None` for keys that only look like one (a job id ending in
/// `:meta`: queue names cannot contain `:`).
fn queue_of_meta_key(key: &str, prefix: &str) -> Option<String> {
    let queue = key
        .strip_prefix(prefix)?
        .strip_prefix(':')?
        .strip_suffix(":meta")?;
    (!queue.is_empty() && !queue.contains(':')).then(|| queue.to_owned())
}

/// Escapes Redis glob characters so that a prefix such as `{bull}` or `a[1]` matches literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_from_script_reply() {
        let s = snapshot_from(&[1, 2, 3, 4, 5, 6, 7, 1, 1_000]).unwrap();
        assert_eq!(
            s.counts.by_state(),
            [
                ("active", 1),
                ("completed", 2),
                ("delayed", 3),
                ("failed", 4),
                ("prioritized", 5),
                ("waiting", 6),
                ("waiting-children", 7),
            ]
        );
        assert!(s.paused);
        assert_eq!(s.oldest_waiting_ms(1_500), 500);
        // A producer clock ahead of ours never gives a negative age.
        assert_eq!(s.oldest_waiting_ms(900), 0);
        let idle = snapshot_from(&[0, 0, 0, 0, 0, 0, 0, 0, -1]).unwrap();
        assert_eq!(idle.oldest_ready_ms, None);
        assert_eq!(idle.oldest_waiting_ms(1_500), 0);
        assert!(!idle.paused);
        assert!(snapshot_from(&[1, 2]).is_err());
    }

    #[test]
    fn workers_are_matched_like_node_get_workers() {
        // base64("sms-notifications") = c21zLW5vdGlmaWNhdGlvbnM=
        let list = "id=1 addr=x name=bull:c21zLW5vdGlmaWNhdGlvbnM= cmd=bzpopmin\n\
                    id=2 addr=y name=bull:c21zLW5vdGlmaWNhdGlvbnM=:w:host-a cmd=bzpopmin\n\
                    id=3 addr=z name=bull:c21zLW5vdGlmaWNhdGlvbnM=x cmd=get\n\
                    id=4 addr=w name= cmd=client\n\
                    id=5 addr=v name={bull}:c21zLW5vdGlmaWNhdGlvbnM= cmd=get\n";
        let ids = |prefix: &str| -> Vec<String> {
            workers_in_client_list(list, &QueueKeys::new("sms-notifications", Some(prefix)))
                .into_iter()
                .map(|w| w["id"].clone())
                .collect()
        };
        assert_eq!(ids("bull"), ["1", "2"]);
        assert_eq!(ids("{bull}"), ["5"]);
        // On a cluster every node lists the same named worker: counted once, as the most on one node.
        let keys = QueueKeys::new("sms-notifications", Some("bull"));
        let node_b = "id=7 addr=x name=bull:c21zLW5vdGlmaWNhdGlvbnM=:w:host-a cmd=get\n".to_owned();
        assert_eq!(
            workers_in_client_lists(&[list.to_owned(), node_b.clone(), node_b], &keys),
            2
        );
        assert_eq!(workers_in_client_lists(&[], &keys), 0);
    }

    #[test]
    fn meta_keys_name_queues() {
        let table = [
            ("bull:sms-notifications:meta", Some("sms-notifications")),
            ("{bull}:q:meta", None), // other prefix
            ("bull:q:repeat:x:meta", None),
            ("bull::meta", None),
            ("bull:q:metadata", None),
        ];
        for (key, want) in table {
            assert_eq!(queue_of_meta_key(key, "bull").as_deref(), want, "{key}");
        }
        assert_eq!(
            queue_of_meta_key("{bull}:q:meta", "{bull}").as_deref(),
            Some("q")
        );
        assert_eq!(glob_escape("a[1]*?\\"), "a\\[1\\]\\*\\?\\\\");
        assert_eq!(glob_escape("{bull}"), "{bull}");
    }
}
