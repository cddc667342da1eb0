//! The host's own Redis connection, for the few things bullmq-official does not do for it: reading a job's
//! raw `data`/`opts`, recording a failed attempt's `failedReason` and `stacktrace`, counting a host-managed retry, setting the queue
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

/// What a failed attempt needs from the job's hash: the stored options (retry policy, `stackTraceLimit`) and
/// the stacktrace list so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureFields {
    /// The `opts` field, verbatim JSON text.
    pub opts: Option<String>,
    /// The `stacktrace` field, verbatim JSON text.
    pub stacktrace: Option<String>,
}

/// A cheap-to-clone handle on the admin connection.
#[derive(Clone)]
pub struct AdminRedis {
    conn: RedisConnection,
}

impl AdminRedis {
    /// Connects once; fails if Redis cannot be reached within [`CONNECT_TIMEOUT`] (the caller retries, so an
    /// operator sees a warning every few seconds instead of the client's silent internal retries).
    ///
    /// The managed client retries internally, so when it gives up the cause is found with one plain
    /// connection attempt ([`probe`]): a wrong password or a refused connection is named as such rather than
    /// reported as a timeout.
    pub async fn connect(opts: &RedisConnectionOptions) -> anyhow::Result<Self> {
        match tokio::time::timeout(CONNECT_TIMEOUT, RedisConnection::new_managed_only(opts)).await {
            Ok(Ok(conn)) => Ok(Self { conn }),
            Ok(Err(e)) => Err(anyhow::anyhow!(
                "{}",
                probe(opts).await.unwrap_or_else(|| e.to_string())
            ))
            .context("connecting to Redis"),
            Err(_) => Err(anyhow::anyhow!(
                "{}",
                probe(opts).await.unwrap_or_else(|| "timed out".to_owned())
            ))
            .context("connecting to Redis"),
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> anyhow::Result<T> {
        let mut conn = self.conn.connection();
        tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut conn))
            .await
            .context("Redis command timed out")?
            .context("Redis command failed")
    }

    /// Runs a script of the host's own (EVALSHA, loading it on NOSCRIPT, e.g. after a Redis restart).
    pub async fn invoke(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> anyhow::Result<redis::Value> {
        let mut conn = self.conn.connection();
        tokio::time::timeout(
            COMMAND_TIMEOUT,
            invocation.invoke_async::<redis::Value>(&mut conn),
        )
        .await
        .context("Redis script timed out")?
        .context("Redis script failed")
    }

    /// Who holds the job's lock (its token), and whether its completion is recorded: the job is in the
    /// completed set, or gone altogether (removed on completion).
    pub async fn lock_and_completed(
        &self,
        keys: &QueueKeys,
        job_id: &str,
    ) -> anyhow::Result<(Option<String>, bool)> {
        let job_key = keys.job_key(job_id);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(format!("{job_key}:lock"));
        pipe.cmd("ZSCORE").arg(keys.completed()).arg(job_id);
        pipe.cmd("EXISTS").arg(&job_key);
        let mut conn = self.conn.connection();
        let (lock, score, exists): (Option<String>, Option<f64>, i64) =
            tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async(&mut conn))
                .await
                .context("Redis command timed out")?
                .with_context(|| format!("reading the lock of job {job_id}"))?;
        Ok((lock, score.is_some() || exists == 0))
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

    /// `HMGET <job> opts stacktrace`, read when an attempt failed.
    pub async fn failure_fields(
        &self,
        keys: &QueueKeys,
        job_id: &str,
    ) -> anyhow::Result<FailureFields> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(keys.job_key(job_id)).arg("opts").arg("stacktrace");
        let (opts, stacktrace): (Option<String>, Option<String>) = self
            .query(&cmd)
            .await
            .with_context(|| format!("reading job {job_id}"))?;
        Ok(FailureFields { opts, stacktrace })
    }

    /// Stores the reason and the stacktrace list (JSON text) of a failed attempt on the job, as Node does on
    /// every attempt; with `count_attempt` also increments `atm` (used when the host schedules the retry
    /// itself).
    pub async fn record_failed_attempt(
        &self,
        keys: &QueueKeys,
        job_id: &str,
        reason: &str,
        stacktrace: &str,
        count_attempt: bool,
    ) -> anyhow::Result<()> {
        let key = keys.job_key(job_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HSET")
            .arg(&key)
            .arg("failedReason")
            .arg(reason)
            .arg("stacktrace")
            .arg(stacktrace)
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

    /// Counts one crash of its process against job `job_id` (the `fgCrashes` field of its hash) and returns
    /// the new count, or `None` when the job no longer exists. With `defer`, a count at `limit` also sets
    /// BullMQ's deferred failure (`defa`) to `reason`, so whichever worker fetches the job next fails it for
    /// good without running it (used when the job's lock belongs to a dead run).
    pub async fn count_crash(
        &self,
        keys: &QueueKeys,
        job_id: &str,
        limit: u32,
        reason: &str,
        defer: bool,
    ) -> anyhow::Result<Option<u64>> {
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r#"
if redis.call("EXISTS", KEYS[1]) == 0 then return -1 end
local n = redis.call("HINCRBY", KEYS[1], "fgCrashes", 1)
if ARGV[3] == "1" and n >= tonumber(ARGV[1]) then redis.call("HSET", KEYS[1], "defa", ARGV[2]) end
return n
"#,
            )
        });
        let mut invocation = SCRIPT.prepare_invoke();
        invocation
            .key(keys.job_key(job_id))
            .arg(limit)
            .arg(reason)
            .arg(if defer { "1" } else { "0" });
        let reply = self
            .invoke(&invocation)
            .await
            .with_context(|| format!("counting a crash of job {job_id}"))?;
        Ok(match reply {
            redis::Value::Int(n) if n >= 0 => Some(n as u64),
            _ => None,
        })
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

/// Why a connection attempt failed, in the operator's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectProblem {
    /// The server rejected the credentials (or wants some and got none).
    AuthFailed,
    /// Nothing listens on that address and port.
    Refused,
    /// No answer in time (host down, firewall, wrong address).
    TimedOut,
    /// Anything else, with the client's message.
    Other(String),
}

impl std::fmt::Display for ConnectProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectProblem::AuthFailed => f.write_str(
                "authentication failed (check REDIS_PASSWORD / REDIS_USERNAME or the credentials in REDIS_URL)",
            ),
            ConnectProblem::Refused => f.write_str("connection refused (is Redis running on that host and port?)"),
            ConnectProblem::TimedOut => f.write_str("timed out (no answer from that host and port)"),
            ConnectProblem::Other(m) => f.write_str(m),
        }
    }
}

/// Classifies a client error from a connection attempt or its first command.
pub fn classify(e: &redis::RedisError) -> ConnectProblem {
    let code = e.code().unwrap_or_default();
    if e.kind() == redis::ErrorKind::AuthenticationFailed || matches!(code, "NOAUTH" | "WRONGPASS")
    {
        ConnectProblem::AuthFailed
    } else if e.is_connection_refusal() {
        ConnectProblem::Refused
    } else if e.is_timeout() {
        ConnectProblem::TimedOut
    } else {
        ConnectProblem::Other(e.to_string())
    }
}

/// One plain connection attempt and a `PING`, to name why the managed client could not connect. `None`
/// when the attempt succeeded (the failure was transient) or the options cannot form a client. On a Redis
/// Cluster the first seed node is asked, with the credentials given apart from the node URLs.
pub async fn probe(opts: &RedisConnectionOptions) -> Option<String> {
    use redis::IntoConnectionInfo as _;
    let info = if opts.is_cluster() {
        let info = opts
            .cluster_nodes
            .first()?
            .as_str()
            .into_connection_info()
            .ok()?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &opts.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &opts.password {
            settings = settings.set_password(password);
        }
        info.set_redis_settings(settings)
    } else {
        opts.effective_url().into_connection_info().ok()?
    };
    let client = redis::Client::open(info).ok()?;
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(classify(&e).to_string()),
        Err(_) => Some(ConnectProblem::TimedOut.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_named_for_the_operator() {
        let io = |kind| redis::RedisError::from(std::io::Error::from(kind));
        let table: Vec<(redis::RedisError, ConnectProblem)> = vec![
            (
                (
                    redis::ErrorKind::AuthenticationFailed,
                    "Password authentication failed",
                )
                    .into(),
                ConnectProblem::AuthFailed,
            ),
            (
                io(std::io::ErrorKind::ConnectionRefused),
                ConnectProblem::Refused,
            ),
            (io(std::io::ErrorKind::TimedOut), ConnectProblem::TimedOut),
        ];
        for (err, want) in table {
            assert_eq!(classify(&err), want, "{err}");
        }
        assert!(matches!(
            classify(&io(std::io::ErrorKind::PermissionDenied)),
            ConnectProblem::Other(_)
        ));
    }
}
