//! The host's own Redis connection, for the few things bullmq-official does not do for it: reading a job's
//! raw `data`/`opts`, recording a retry's `failedReason`, counting a host-managed retry, setting the queue
//! rate limit, and the readiness ping.
//!
//! It is a bullmq `RedisConnection`, so it reconnects in the background like the workers' connections.

use std::time::Duration;

use anyhow::Context as _;
use bullmq::options::RedisConnectionOptions;
use bullmq::redis_connection::RedisConnection;
use bullmq::QueueKeys;

/// Bound on every admin command, on top of the connection's own response timeout.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// `Number.MAX_SAFE_INTEGER`, the value Node's `Queue.rateLimit` stores in the limiter key.
pub const RATE_LIMIT_SENTINEL: u64 = 9_007_199_254_740_991;

/// A job's stored fields as the producer wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawJob {
    /// The `data` field, verbatim JSON text.
    pub data: Option<String>,
    /// The `opts` field, verbatim JSON text.
    pub opts: Option<String>,
}

/// A cheap-to-clone handle on the admin connection.
#[derive(Clone)]
pub struct AdminRedis {
    conn: RedisConnection,
}

impl AdminRedis {
    /// Connects once; fails if Redis cannot be reached within [`CONNECT_TIMEOUT`] (the caller retries, so an
    /// operator sees a warning every few seconds instead of the client's silent internal retries).
    pub async fn connect(opts: &RedisConnectionOptions) -> anyhow::Result<Self> {
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, RedisConnection::new_managed_only(opts))
            .await
            .context("connecting to Redis timed out")?
            .context("connecting to Redis")?;
        Ok(Self { conn })
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> anyhow::Result<T> {
        let mut conn = self.conn.connection();
        tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut conn))
            .await
            .context("Redis command timed out")?
            .context("Redis command failed")
    }

    /// `PING`.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    /// `HMGET <job> data opts`.
    pub async fn raw_job(&self, keys: &QueueKeys, job_id: &str) -> anyhow::Result<RawJob> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(keys.job_key(job_id)).arg("data").arg("opts");
        let (data, opts): (Option<String>, Option<String>) = self
            .query(&cmd)
            .await
            .with_context(|| format!("reading job {job_id}"))?;
        Ok(RawJob { data, opts })
    }

    /// Stores the reason of a failed attempt on the job, as Node does on every attempt; with
    /// `count_attempt` also increments `atm` (used when the host schedules the retry itself).
    pub async fn record_failed_attempt(
        &self,
        keys: &QueueKeys,
        job_id: &str,
        reason: &str,
        count_attempt: bool,
    ) -> anyhow::Result<()> {
        let key = keys.job_key(job_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HSET")
            .arg(&key)
            .arg("failedReason")
            .arg(reason)
            .ignore();
        if count_attempt {
            pipe.cmd("HINCRBY").arg(&key).arg("atm").arg(1).ignore();
        }
        let mut conn = self.conn.connection();
        tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut conn))
            .await
            .context("Redis command timed out")?
            .with_context(|| format!("recording the failed attempt of job {job_id}"))
    }

    /// Rate-limits the whole queue for `ms`, exactly like Node's `Queue.rateLimit(ms)`.
    pub async fn rate_limit(&self, keys: &QueueKeys, ms: u64) -> anyhow::Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(keys.limiter())
            .arg(RATE_LIMIT_SENTINEL)
            .arg("PX")
            .arg(ms.max(1));
        self.query::<()>(&cmd)
            .await
            .with_context(|| format!("rate-limiting queue {}", keys.name()))
    }
}

impl AdminRedis {
    /// One depth snapshot of a queue (see [`crate::queue_stats`]).
    pub async fn queue_snapshot(
        &self,
        reader: &crate::queue_stats::Reader,
        keys: &QueueKeys,
    ) -> anyhow::Result<crate::queue_stats::Snapshot> {
        let mut conn = self.conn.connection();
        tokio::time::timeout(COMMAND_TIMEOUT, reader.read(&mut conn, keys))
            .await
            .context("Redis command timed out")?
    }
}
