//! Everything `frostguard-worker` reads from the environment, parsed and validated once at startup.
//!
//! Every variable is an entry of the table in [`vars`] (which `--help` renders) and is read only through
//! [`Env`] (`env.rs`), so the documentation and the code cannot drift apart. Where Redis is: `redis.rs`;
//! the per-queue overrides: `queues.rs`; Redis Cluster seed nodes and the one-slot rule: `cluster.rs`.
//! [`Config::from_env`] is called before any plugin is loaded, so a missing Redis setting or a malformed
//! number stops the process at once with a message naming the variable. Per-queue overrides
//! (`QUEUE_<Q>_*`) are collected here too; the queue names they refer to are only known after plugins load,
//! so they are kept by normalised queue name and looked up with [`Config::queue`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod cluster;
mod env;
mod queues;
mod redis;
#[cfg(test)]
pub(crate) mod tests;
pub mod vars;

pub use env::Env;
pub use queues::{queue_env_name, QueueOverrides};
pub use redis::{RedisSettings, RedisTarget};

/// Default plugin directory inside the container image.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/local/lib/frostguard-worker/plugins";

/// A configuration problem, reported before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Neither way of reaching Redis was configured.
    #[error(
        "no Redis configured: set REDIS_URL (redis:// or rediss://) or REDIS_HOST \
         (with REDIS_PORT, default 6379), or REDIS_CLUSTER_NODES for a Redis Cluster"
    )]
    NoRedis,
    /// A variable holds a value that cannot be used.
    #[error("{var}: {reason}")]
    Invalid {
        /// The environment variable.
        var: String,
        /// What is wrong with it (never the value itself when it may be a secret).
        reason: String,
    },
}

pub(crate) fn invalid(var: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var: var.to_owned(),
        reason: reason.into(),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (default).
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration of `frostguard-worker run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where Redis is.
    pub redis: RedisTarget,
    /// `PLUGIN_DIR`.
    pub plugin_dir: PathBuf,
    /// `BULLMQ_PREFIX` (hash tags such as `{bull}` are kept verbatim).
    pub prefix: String,
    /// Hot reload settings; `None` when `PLUGIN_WATCH=false`.
    pub watch: Option<WatchSettings>,
    /// `SHUTDOWN_TIMEOUT_MS`: how long in-flight jobs may take to finish after a signal.
    pub shutdown_timeout: Duration,
    /// `HTTP_PORT`; `None` when set to 0 (endpoint disabled).
    pub http_port: Option<u16>,
    /// `HTTP_ADDR`: the address the endpoint binds (all interfaces by default).
    pub http_addr: IpAddr,
    /// `HTTP_MAX_CONNECTIONS`: connections the endpoint serves at once.
    pub http_max_connections: usize,
    /// `HTTP_HEADER_TIMEOUT_MS`: time a client has to send a request head (also the keep-alive idle timeout).
    pub http_header_timeout: Duration,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `METRICS_QUEUE_DEPTH_INTERVAL_MS`; `None` when set to 0 (no depth gauges).
    pub depth_interval: Option<Duration>,
    /// Worker name shown in Node's `getWorkers` and as `processedBy` (from `HOSTNAME`).
    pub worker_name: Option<String>,
    /// `PLUGIN_ISOLATION`, `PLUGIN_ISOLATION_<NAME>`: where each plugin's code runs.
    pub isolation: crate::isolation::IsolationSettings,
    /// `STATE_DIR`: where the crash journal of in-process plugins is kept.
    pub state_dir: PathBuf,
    /// `JOB_CRASH_LIMIT`: crashes after which a job fails for good (at least 1).
    pub crash_limit: u32,
    queues: BTreeMap<String, QueueOverrides>,
}

/// How hot reload watches the plugin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSettings {
    /// `PLUGIN_WATCH_DEBOUNCE_MS`.
    pub debounce: Duration,
    /// `PLUGIN_CACHE_DIR`: the parent of this process's private copies.
    pub cache_dir: PathBuf,
    /// `PLUGIN_RETIRED_IMAGES_WARN`.
    pub retired_warn: usize,
}

/// How logs are written: read by every subcommand before anything else.
#[derive(Debug, Clone)]
pub struct Logging {
    /// `LOG_FORMAT`.
    pub format: LogFormat,
    /// `RUST_LOG`.
    pub filter: String,
}

impl Logging {
    /// Reads the process environment.
    pub fn from_env() -> Result<Logging, ConfigError> {
        Self::read(&Env::from_process())
    }

    /// Reads `LOG_FORMAT` and `RUST_LOG`.
    pub fn read(env: &Env) -> Result<Logging, ConfigError> {
        Ok(Logging {
            format: log_format(env)?,
            filter: env.get_or_default(&vars::RUST_LOG).unwrap_or_default(),
        })
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::read(&Env::from_process())
    }

    /// Reads everything `run` needs.
    pub fn read(env: &Env) -> Result<Config, ConfigError> {
        let RedisSettings { target, prefix } = RedisSettings::read(env)?;
        let plugin_dir = PathBuf::from(env.get_or_default(&vars::PLUGIN_DIR).unwrap_or_default());
        let shutdown_ms = parse_num::<u64>(env, &vars::SHUTDOWN_TIMEOUT_MS)?.unwrap_or_default();
        let watch = watch_settings(env)?;
        let http_port = match parse_num::<u16>(env, &vars::HTTP_PORT)? {
            Some(0) | None => None,
            Some(p) => Some(p),
        };
        let http_addr = match env.get_or_default(&vars::HTTP_ADDR) {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(raw) => raw.trim().parse::<IpAddr>().map_err(|_| {
                invalid(
                    vars::HTTP_ADDR.name,
                    format!(
                        "expected an IP address such as 127.0.0.1 or ::, got {:?}",
                        raw.trim()
                    ),
                )
            })?,
        };
        let http_max_connections =
            parse_num::<usize>(env, &vars::HTTP_MAX_CONNECTIONS)?.unwrap_or(64);
        if http_max_connections == 0 {
            return Err(invalid(
                vars::HTTP_MAX_CONNECTIONS.name,
                "must be at least 1",
            ));
        }
        let http_header_timeout_ms =
            parse_num::<u64>(env, &vars::HTTP_HEADER_TIMEOUT_MS)?.unwrap_or(5000);
        if http_header_timeout_ms == 0 {
            return Err(invalid(
                vars::HTTP_HEADER_TIMEOUT_MS.name,
                "must be at least 1",
            ));
        }
        let log_format = log_format(env)?;
        let depth_interval = parse_num::<u64>(env, &vars::METRICS_QUEUE_DEPTH_INTERVAL_MS)?
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        let worker_name = env
            .get(&vars::HOSTNAME)
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()));
        let queues = queues::queue_overrides(env)?;
        let isolation = crate::isolation::IsolationSettings::read(env)?;
        let state_dir = PathBuf::from(env.get_or_default(&vars::STATE_DIR).unwrap_or_default());
        let crash_limit = parse_num::<u32>(env, &vars::JOB_CRASH_LIMIT)?.unwrap_or(2);
        if crash_limit == 0 {
            return Err(invalid(vars::JOB_CRASH_LIMIT.name, "must be at least 1"));
        }
        Ok(Config {
            redis: target,
            plugin_dir,
            prefix,
            watch,
            shutdown_timeout: Duration::from_millis(shutdown_ms),
            http_port,
            http_addr,
            http_max_connections,
            http_header_timeout: Duration::from_millis(http_header_timeout_ms),
            log_format,
            depth_interval,
            worker_name,
            isolation,
            state_dir,
            crash_limit,
            queues,
        })
    }

    /// The operator's overrides for `queue` (all unset when none were given).
    pub fn queue(&self, queue: &str) -> QueueOverrides {
        self.queues
            .get(&queue_env_name(queue))
            .cloned()
            .unwrap_or_default()
    }

    /// Normalised names of the queues that have overrides, to warn about ones no plugin serves.
    pub fn overridden_queues(&self) -> impl Iterator<Item = &str> {
        self.queues.keys().map(String::as_str)
    }
}

fn watch_settings(env: &Env) -> Result<Option<WatchSettings>, ConfigError> {
    let on = match env
        .get_or_default(&vars::PLUGIN_WATCH)
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("true" | "1" | "yes" | "on") => true,
        Some("false" | "0" | "no" | "off") => false,
        Some(other) => {
            return Err(invalid(
                vars::PLUGIN_WATCH.name,
                format!("expected true or false, got {other:?}"),
            ))
        }
    };
    let debounce_ms = parse_num::<u64>(env, &vars::PLUGIN_WATCH_DEBOUNCE_MS)?.unwrap_or(500);
    if debounce_ms == 0 {
        return Err(invalid(
            vars::PLUGIN_WATCH_DEBOUNCE_MS.name,
            "must be at least 1",
        ));
    }
    let cache_dir = env
        .get(&vars::PLUGIN_CACHE_DIR)
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let retired_warn = parse_num::<usize>(env, &vars::PLUGIN_RETIRED_IMAGES_WARN)?.unwrap_or(20);
    Ok(on.then_some(WatchSettings {
        debounce: Duration::from_millis(debounce_ms),
        cache_dir,
        retired_warn,
    }))
}

fn log_format(env: &Env) -> Result<LogFormat, ConfigError> {
    match env
        .get_or_default(&vars::LOG_FORMAT)
        .as_deref()
        .map(str::trim)
    {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(invalid(
            vars::LOG_FORMAT.name,
            format!("expected text or json, got {other:?}"),
        )),
    }
}

/// The variable's value (or its default value) as a number; `None` when neither is there.
pub(crate) fn parse_num<T: std::str::FromStr>(
    env: &Env,
    var: &'static vars::Var,
) -> Result<Option<T>, ConfigError> {
    match env.get_or_default(var) {
        None => Ok(None),
        Some(raw) => raw.trim().parse::<T>().map(Some).map_err(|_| {
            invalid(
                var.name,
                format!(
                    "expected a non-negative integer in range, got {:?}",
                    raw.trim()
                ),
            )
        }),
    }
}
