//! The host's stalled-job check, run instead of bullmq-official's (docs/bullmq-official.md D8, D14).
//!
//! A job whose worker died keeps its place in `active` until a stalled check finds it unlocked and moves it
//! back to wait. The library's check ticks every `stalledInterval` and sets a skip key that expires after
//! the same time, so every other tick finds the key still there and does nothing (recovery took ~3× the
//! interval), and it reads the script's flat reply as a nested array, so it never reports a stalled job.
//!
//! This check runs the protocol's two passes in one script of the host's own (`lua/stalled_check.lua`),
//! then sleeps the interval *after* the run, as Node does: the skip key, set when the run started, has
//! always expired by the next run, so a check really happens every interval. A job whose lock expired is
//! thus back in wait within about one interval. Every job moved is logged and counted
//! (`frostguard_jobs_stalled_total`).

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bullmq::QueueKeys;
use tokio::task::JoinHandle;

use super::metrics;
use super::redis_admin::AdminRedis;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/stalled_check.lua")));

/// What one run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Another worker checked within the interval; nothing done.
    Skipped,
    /// The check ran; these jobs went back to wait.
    Moved(Vec<String>),
}

/// Reads the script's reply: nil when skipped, else a flat array of job ids.
pub fn parse_reply(reply: &redis::Value) -> Checked {
    match reply {
        redis::Value::Array(ids) | redis::Value::Set(ids) => Checked::Moved(
            ids.iter()
                .filter_map(|v| match v {
                    redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    redis::Value::SimpleString(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => Checked::Skipped,
    }
}

/// One queue's check settings.
#[derive(Clone)]
pub struct StalledCheck {
    /// Queue name (for logs and metrics).
    pub queue: String,
    /// The queue's keys.
    pub keys: QueueKeys,
    /// The host's Redis connection.
    pub admin: AdminRedis,
    /// `stalledInterval`.
    pub interval: Duration,
    /// `maxStalledCount`.
    pub max_stalled: u32,
}

impl StalledCheck {
    /// Runs the check once.
    pub async fn run_once(&self) -> anyhow::Result<Checked> {
        let k = &self.keys;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut invocation = SCRIPT.prepare_invoke();
        invocation
            .key(k.stalled())
            .key(k.wait())
            .key(k.active())
            .key(k.stalled_check())
            .key(k.meta())
            .key(k.marker())
            .key(k.events())
            .key(k.repeat())
            .arg(self.max_stalled)
            .arg(k.key_prefix())
            .arg(now)
            .arg(
                u64::try_from(self.interval.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            );
        let reply = self.admin.invoke(&invocation).await?;
        Ok(parse_reply(&reply))
    }

    /// Checks now and then every interval until the task is aborted; logs and counts every job moved.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                match self.run_once().await {
                    Ok(Checked::Moved(ids)) => {
                        failing = false;
                        for job_id in ids {
                            tracing::warn!(
                                queue = %self.queue, %job_id,
                                "stalled job moved back to wait (its worker stopped renewing the lock)"
                            );
                            metrics::job_stalled(&self.queue);
                        }
                    }
                    Ok(Checked::Skipped) => failing = false,
                    Err(e) => {
                        if !failing {
                            tracing::warn!(queue = %self.queue, error = %format!("{e:#}"), "stalled-job check failed; retrying every interval");
                        }
                        failing = true;
                    }
                }
                tokio::time::sleep(self.interval).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn replies_are_read_as_a_flat_list() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let table = [
            (Value::Nil, Checked::Skipped),
            (Value::Array(vec![]), Checked::Moved(vec![])),
            (
                Value::Array(vec![bulk("7"), bulk("12")]),
                Checked::Moved(vec!["7".into(), "12".into()]),
            ),
            // The library's reading (a nested first element) would see no job here.
            (
                Value::Array(vec![bulk("a:b")]),
                Checked::Moved(vec!["a:b".into()]),
            ),
        ];
        for (reply, want) in table {
            assert_eq!(parse_reply(&reply), want, "{reply:?}");
        }
    }
}
