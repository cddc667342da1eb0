//! Everything `frostguard-worker` reads from the environment, parsed and validated once at startup.
//!
//! Every variable is an entry of the table in [`vars`] (which `--help` renders) and is read only through
//! [`Env`], so the documentation and the code cannot drift apart.
//! [`Config::from_env`] is called before any plugin is loaded, so a missing Redis setting or a malformed
//! number stops the process at once with a message naming the variable. Per-queue overrides
//! (`QUEUE_<Q>_*`) are collected here too; the queue names they refer to are only known after plugins load,
//! so they are kept by normalised queue name and looked up with [`Config::queue`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use bullmq::options::RedisConnectionOptions;

pub mod cluster;
pub mod vars;

pub use vars::Env;

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

fn invalid(var: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var: var.to_owned(),
        reason: reason.into(),
    }
}

/// How to reach Redis.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `REDIS_URL` as given (may carry credentials and a database).
    Url(String),
    /// `REDIS_CLUSTER_NODES`: a Redis Cluster, reached through these seed nodes (the client learns the
    /// rest of the topology from them and follows MOVED/ASK redirects and failovers).
    Cluster {
        /// Seed node URLs (`redis://` or `rediss://`, possibly with credentials).
        nodes: Vec<String>,
        /// `REDIS_USERNAME`, for every node.
        username: Option<String>,
        /// `REDIS_PASSWORD`, for every node.
        password: Option<String>,
    },
    /// `REDIS_HOST` and friends.
    Host {
        /// Host name or address.
        host: String,
        /// Port (default 6379).
        port: u16,
        /// ACL user name.
        username: Option<String>,
        /// Password.
        password: Option<String>,
        /// Database index.
        db: Option<u8>,
    },
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl RedisTarget {
    /// A description safe for logs: credentials are replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            RedisTarget::Url(url) => redact_url(url),
            RedisTarget::Cluster { nodes, .. } => format!(
                "Redis Cluster {}",
                nodes
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            RedisTarget::Host { host, port, db, .. } => {
                let db = db.map(|d| format!("/{d}")).unwrap_or_default();
                format!("redis://{host}:{port}{db}")
            }
        }
    }

    /// Whether this is a Redis Cluster (every key of a queue must then hash to one slot, see [`cluster`]).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster { .. })
    }

    /// The connection options handed to bullmq (which reconnects on its own once connected; in cluster
    /// mode it also refreshes the slot map on MOVED/ASK and after a failover).
    pub fn connection_options(&self) -> RedisConnectionOptions {
        let opts = RedisConnectionOptions::new();
        match self {
            RedisTarget::Url(url) => opts.url(url.clone()),
            RedisTarget::Cluster {
                nodes,
                username,
                password,
            } => {
                let mut opts = opts.cluster_nodes(nodes.iter().cloned());
                if let Some(u) = username {
                    opts = opts.username(u.clone());
                }
                if let Some(p) = password {
                    opts = opts.password(p.clone());
                }
                opts
            }
            RedisTarget::Host {
                host,
                port,
                username,
                password,
                db,
            } => {
                let mut opts = opts.host(host.clone()).port(*port);
                if let Some(u) = username {
                    opts = opts.username(u.clone());
                }
                if let Some(p) = password {
                    opts = opts.password(p.clone());
                }
                if let Some(db) = db {
                    opts = opts.db(*db);
                }
                opts
            }
        }
    }
}

fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparseable url>".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{tail}"),
        None => url.to_owned(),
    }
}

/// Operator overrides for one queue (`QUEUE_<Q>_*`); unset fields fall back to the plugin's hints and then
/// to BullMQ's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueOverrides {
    /// `QUEUE_<Q>_CONCURRENCY` (at least 1).
    pub concurrency: Option<u32>,
    /// `QUEUE_<Q>_RATE_LIMIT_MAX` (0 turns off a plugin's rate-limit hint).
    pub rate_limit_max: Option<u64>,
    /// `QUEUE_<Q>_RATE_LIMIT_DURATION_MS`.
    pub rate_limit_duration_ms: Option<u64>,
    /// `QUEUE_<Q>_LOCK_DURATION_MS`.
    pub lock_duration_ms: Option<u64>,
    /// `QUEUE_<Q>_STALLED_INTERVAL_MS`.
    pub stalled_interval_ms: Option<u64>,
    /// `QUEUE_<Q>_MAX_STALLED_COUNT`.
    pub max_stalled_count: Option<u32>,
    /// `QUEUE_<Q>_JOB_TIMEOUT_MS` (0 turns off a plugin's time budget).
    pub job_timeout_ms: Option<u64>,
}

impl QueueOverrides {
    /// The time budget of one job on this queue: the operator's override, else the plugin's hint
    /// (`ProcessorInfo::timeout_ms`), else none. An override of 0 means "no timeout", so an operator can
    /// lift a plugin's budget without inventing a large number; a hint of 0 is read the same way.
    pub fn job_timeout(&self, plugin_hint: Option<u64>) -> Option<Duration> {
        match self.job_timeout_ms {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
            None => plugin_hint.filter(|ms| *ms > 0).map(Duration::from_millis),
        }
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

/// Environment lookup: `std::env::var` in production, a map in tests.
#[cfg(test)]
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Where Redis is and which key prefix the queues use: what every subcommand that talks to Redis reads.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Where Redis is.
    pub target: RedisTarget,
    /// `BULLMQ_PREFIX`.
    pub prefix: String,
}

impl RedisSettings {
    /// Reads the process environment.
    pub fn from_env() -> Result<RedisSettings, ConfigError> {
        let (get, all) = process_env();
        Self::read(&Env::new(&get, all))
    }

    /// Reads `REDIS_*` and `BULLMQ_PREFIX`.
    pub fn read(env: &Env<'_>) -> Result<RedisSettings, ConfigError> {
        let target = redis_target(env)?;
        let prefix = env.get_or_default(&vars::BULLMQ_PREFIX).unwrap_or_default();
        if prefix.contains(':') {
            return Err(invalid(vars::BULLMQ_PREFIX.name, "must not contain ':'"));
        }
        Ok(RedisSettings { target, prefix })
    }
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
        let (get, all) = process_env();
        Self::read(&Env::new(&get, all))
    }

    /// Reads `LOG_FORMAT` and `RUST_LOG`.
    pub fn read(env: &Env<'_>) -> Result<Logging, ConfigError> {
        Ok(Logging {
            format: log_format(env)?,
            filter: env.get_or_default(&vars::RUST_LOG).unwrap_or_default(),
        })
    }
}

/// The process environment as a look-up and a list (non-UTF-8 variables count as unset).
fn process_env() -> (impl Fn(&str) -> Option<String>, Vec<(String, String)>) {
    let all: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    (|k: &str| std::env::var(k).ok(), all)
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let (get, all) = process_env();
        Self::read(&Env::new(&get, all))
    }

    /// Builds the configuration from a lookup function and the full list of variables (the latter is
    /// scanned for `QUEUE_*` overrides).
    #[cfg(test)]
    pub fn from_parts<'v>(
        get: Lookup<'_>,
        all: impl IntoIterator<Item = (&'v str, &'v str)>,
    ) -> Result<Config, ConfigError> {
        let all = all.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned()));
        Self::read(&Env::new(get, all))
    }

    /// Reads everything `run` needs.
    pub fn read(env: &Env<'_>) -> Result<Config, ConfigError> {
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
        let queues = queue_overrides(env)?;
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

fn watch_settings(env: &Env<'_>) -> Result<Option<WatchSettings>, ConfigError> {
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

fn log_format(env: &Env<'_>) -> Result<LogFormat, ConfigError> {
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

/// The `<Q>` part of `QUEUE_<Q>_*`: upper case, every non-alphanumeric character replaced by `_`.
pub fn queue_env_name(queue: &str) -> String {
    queue
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn redis_target(env: &Env<'_>) -> Result<RedisTarget, ConfigError> {
    if let Some(raw) = env.get(&vars::REDIS_CLUSTER_NODES) {
        let nodes = cluster::parse_nodes(&raw)?;
        if parse_num::<u8>(env, &vars::REDIS_DB)?.is_some_and(|db| db != 0) {
            return Err(invalid(
                vars::REDIS_DB.name,
                "Redis Cluster has only database 0; unset REDIS_DB or set it to 0",
            ));
        }
        return Ok(RedisTarget::Cluster {
            nodes,
            username: env.get(&vars::REDIS_USERNAME),
            password: env.get(&vars::REDIS_PASSWORD),
        });
    }
    if let Some(url) = env.get(&vars::REDIS_URL) {
        let url = url.trim().to_owned();
        let scheme = url.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("redis" | "rediss")) {
            return Err(invalid(
                vars::REDIS_URL.name,
                "must start with redis:// or rediss://",
            ));
        }
        check_redis_url(&url)?;
        return Ok(RedisTarget::Url(url));
    }
    let Some(host) = env.get(&vars::REDIS_HOST) else {
        return Err(ConfigError::NoRedis);
    };
    let port = parse_num::<u16>(env, &vars::REDIS_PORT)?.unwrap_or_default();
    if port == 0 {
        return Err(invalid(
            vars::REDIS_PORT.name,
            "must be between 1 and 65535",
        ));
    }
    Ok(RedisTarget::Host {
        host: host.trim().to_owned(),
        port,
        username: env.get(&vars::REDIS_USERNAME),
        password: env.get(&vars::REDIS_PASSWORD),
        db: parse_num::<u8>(env, &vars::REDIS_DB)?,
    })
}

/// Rejects a `REDIS_URL` that can never connect (no host, a port outside 1..=65535, a database that is not a
/// number), so the process stops at start with the reason instead of retrying for ever. The reason never
/// repeats the URL: it may carry a password.
fn check_redis_url(url: &str) -> Result<(), ConfigError> {
    use redis::IntoConnectionInfo as _;
    let info = url
        .into_connection_info()
        .map_err(|_| {
            invalid(
                vars::REDIS_URL.name,
                "not a usable Redis URL (check the host, a port between 1 and 65535 and the database number)",
            )
        })?;
    let port = match info.addr() {
        redis::ConnectionAddr::Tcp(_, port) => Some(*port),
        redis::ConnectionAddr::TcpTls { port, .. } => Some(*port),
        _ => None,
    };
    if port == Some(0) {
        return Err(invalid(
            vars::REDIS_URL.name,
            "port must be between 1 and 65535",
        ));
    }
    Ok(())
}

/// The variable's value (or its default value) as a number; `None` when neither is there.
fn parse_num<T: std::str::FromStr>(
    env: &Env<'_>,
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

fn queue_overrides(env: &Env<'_>) -> Result<BTreeMap<String, QueueOverrides>, ConfigError> {
    let mut queues: BTreeMap<String, QueueOverrides> = BTreeMap::new();
    for family in vars::queue_families() {
        for (var, queue, value) in env.matching(family) {
            let var = var.as_str();
            let value = value.trim();
            let entry = queues.entry(queue).or_default();
            let number = |min: u64| -> Result<u64, ConfigError> {
                match value.parse::<u64>() {
                    Ok(n) if n >= min => Ok(n),
                    _ => Err(invalid(
                        var,
                        format!("expected an integer >= {min}, got {value:?}"),
                    )),
                }
            };
            match family.name {
                n if n == vars::QUEUE_CONCURRENCY.name => {
                    let n = number(1)?;
                    entry.concurrency = Some(
                        u32::try_from(n).map_err(|_| invalid(var, "concurrency is too large"))?,
                    );
                }
                n if n == vars::QUEUE_RATE_LIMIT_MAX.name => {
                    entry.rate_limit_max = Some(number(0)?)
                }
                n if n == vars::QUEUE_RATE_LIMIT_DURATION_MS.name => {
                    entry.rate_limit_duration_ms = Some(number(1)?)
                }
                n if n == vars::QUEUE_LOCK_DURATION_MS.name => {
                    entry.lock_duration_ms = Some(number(1)?)
                }
                n if n == vars::QUEUE_STALLED_INTERVAL_MS.name => {
                    entry.stalled_interval_ms = Some(number(1)?)
                }
                n if n == vars::QUEUE_JOB_TIMEOUT_MS.name => {
                    entry.job_timeout_ms = Some(number(0)?)
                }
                n if n == vars::QUEUE_MAX_STALLED_COUNT.name => {
                    entry.max_stalled_count = Some(
                        u32::try_from(number(0)?)
                            .map_err(|_| invalid(var, "max stalled count is too large"))?,
                    )
                }
                other => unreachable!("{other} has no field in QueueOverrides"),
            }
        }
    }
    for (queue, o) in &queues {
        let enabled_max = o.rate_limit_max.filter(|m| *m > 0);
        if enabled_max.is_some() != o.rate_limit_duration_ms.is_some() {
            return Err(invalid(
                &format!("QUEUE_{queue}_RATE_LIMIT_MAX"),
                format!(
                    "QUEUE_{queue}_RATE_LIMIT_MAX and QUEUE_{queue}_RATE_LIMIT_DURATION_MS must be set together"
                ),
            ));
        }
    }
    Ok(queues)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |k: &str| map.get(k).cloned();
        Config::from_parts(&get, vars.iter().copied())
    }

    #[test]
    fn hot_reload_is_on_unless_switched_off() {
        /// Variables set → (debounce ms, cache dir or "" for the default), `None` when watching is off.
        type Row<'a> = (&'a [(&'a str, &'a str)], Option<(u64, &'a str)>);
        let table: [Row; 5] = [
            (&[], Some((500, ""))),
            (&[("PLUGIN_WATCH", "false")], None),
            (&[("PLUGIN_WATCH", "0")], None),
            (
                &[
                    ("PLUGIN_WATCH", "TRUE"),
                    ("PLUGIN_WATCH_DEBOUNCE_MS", "250"),
                ],
                Some((250, "")),
            ),
            (
                &[("PLUGIN_CACHE_DIR", "/var/cache/fw")],
                Some((500, "/var/cache/fw")),
            ),
        ];
        for (vars, want) in table {
            let mut all = vec![("REDIS_HOST", "r")];
            all.extend_from_slice(vars);
            let watch = config(&all).unwrap().watch;
            let got = watch.as_ref().map(|w| {
                let dir = w.cache_dir.to_str().unwrap();
                (w.debounce.as_millis() as u64, dir)
            });
            let want = want.map(|(ms, dir)| {
                let default = std::env::temp_dir();
                let dir = if dir.is_empty() {
                    default.to_str().unwrap().to_owned()
                } else {
                    dir.to_owned()
                };
                (ms, dir)
            });
            assert_eq!(got.map(|(ms, d)| (ms, d.to_owned())), want, "{vars:?}");
        }
        for bad in [("PLUGIN_WATCH", "maybe"), ("PLUGIN_WATCH_DEBOUNCE_MS", "0")] {
            let err = config(&[("REDIS_HOST", "r"), bad]).unwrap_err().to_string();
            assert!(err.contains(bad.0), "{err}");
        }
    }

    #[test]
    fn no_redis_names_both_variables() {
        let err = config(&[]).unwrap_err();
        assert_eq!(err, ConfigError::NoRedis);
        let msg = err.to_string();
        assert!(
            msg.contains("REDIS_URL") && msg.contains("REDIS_HOST"),
            "{msg}"
        );
        // A port alone is not a Redis location either.
        assert_eq!(
            config(&[("REDIS_PORT", "6380")]).unwrap_err(),
            ConfigError::NoRedis
        );
    }

    #[test]
    fn defaults() {
        let c = config(&[("REDIS_URL", "redis://localhost:6379")]).unwrap();
        assert_eq!(c.prefix, "bull");
        assert_eq!(c.plugin_dir, PathBuf::from(DEFAULT_PLUGIN_DIR));
        assert_eq!(c.shutdown_timeout, Duration::from_millis(25_000));
        assert_eq!(c.http_port, Some(9090));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.queue("anything"), QueueOverrides::default());
    }

    #[test]
    fn url_schemes_and_redaction() {
        let c = config(&[("REDIS_URL", "rediss://user:s3cret@cache.example:6380/2")]).unwrap();
        assert_eq!(c.redis.redacted(), "rediss://***@cache.example:6380/2");
        assert!(!format!("{c:?}").contains("s3cret"));
        let err = config(&[("REDIS_URL", "http://x")]).unwrap_err();
        assert!(err.to_string().starts_with("REDIS_URL"), "{err}");
    }

    #[test]
    fn host_port_and_credentials() {
        let c = config(&[
            ("REDIS_HOST", "redis"),
            ("REDIS_PORT", "6380"),
            ("REDIS_PASSWORD", "p@ss"),
            ("REDIS_USERNAME", "worker"),
            ("REDIS_DB", "3"),
        ])
        .unwrap();
        let opts = c.redis.connection_options();
        assert_eq!(opts.effective_url(), "redis://worker:p%40ss@redis:6380/3");
        assert_eq!(c.redis.redacted(), "redis://redis:6380/3");
        let c = config(&[("REDIS_HOST", "redis")]).unwrap();
        assert_eq!(
            c.redis.connection_options().effective_url(),
            "redis://redis:6379"
        );
        assert!(config(&[("REDIS_HOST", "r"), ("REDIS_PORT", "x")]).is_err());
        assert!(config(&[("REDIS_HOST", "r"), ("REDIS_DB", "300")]).is_err());
    }

    #[test]
    fn queue_overrides_are_parsed_by_normalised_name() {
        let c = config(&[
            ("REDIS_HOST", "r"),
            ("QUEUE_SMS_NOTIFICATIONS_CONCURRENCY", "7"),
            ("QUEUE_SMS_NOTIFICATIONS_RATE_LIMIT_MAX", "10"),
            ("QUEUE_SMS_NOTIFICATIONS_RATE_LIMIT_DURATION_MS", "1000"),
            ("QUEUE_SMS_NOTIFICATIONS_LOCK_DURATION_MS", "60000"),
            ("QUEUE_SMS_NOTIFICATIONS_STALLED_INTERVAL_MS", "5000"),
            ("QUEUE_SMS_NOTIFICATIONS_MAX_STALLED_COUNT", "2"),
            ("QUEUE_SMS_NOTIFICATIONS_JOB_TIMEOUT_MS", "45000"),
        ])
        .unwrap();
        let q = c.queue("sms-notifications");
        assert_eq!(q.concurrency, Some(7));
        assert_eq!(q.rate_limit_max, Some(10));
        assert_eq!(q.rate_limit_duration_ms, Some(1000));
        assert_eq!(q.lock_duration_ms, Some(60000));
        assert_eq!(q.stalled_interval_ms, Some(5000));
        assert_eq!(q.max_stalled_count, Some(2));
        assert_eq!(q.job_timeout_ms, Some(45000));
        assert_eq!(queue_env_name("email.digests v2"), "EMAIL_DIGESTS_V2");
    }

    #[test]
    fn queue_override_errors_name_the_variable() {
        let err = config(&[("REDIS_HOST", "r"), ("QUEUE_Q_CONCURRENCY", "0")]).unwrap_err();
        assert!(err.to_string().starts_with("QUEUE_Q_CONCURRENCY"), "{err}");
        let err = config(&[("REDIS_HOST", "r"), ("QUEUE_Q_RATE_LIMIT_MAX", "5")]).unwrap_err();
        assert!(err.to_string().contains("must be set together"), "{err}");
        // 0 switches a plugin's hint off and needs no duration.
        let c = config(&[("REDIS_HOST", "r"), ("QUEUE_Q_RATE_LIMIT_MAX", "0")]).unwrap();
        assert_eq!(c.queue("q").rate_limit_max, Some(0));
    }

    #[test]
    fn job_timeout_is_override_then_plugin_hint_then_none() {
        let c = config(&[
            ("REDIS_HOST", "r"),
            ("QUEUE_A_JOB_TIMEOUT_MS", "300"),
            ("QUEUE_B_JOB_TIMEOUT_MS", " 0 "),
        ])
        .unwrap();
        let ms = Duration::from_millis;
        // The operator's value wins over the plugin's hint, and 0 lifts the hint altogether.
        assert_eq!(c.queue("a").job_timeout(Some(60_000)), Some(ms(300)));
        assert_eq!(c.queue("b").job_timeout(Some(60_000)), None);
        // Without an override the plugin's hint applies; without either there is no timeout.
        assert_eq!(c.queue("c").job_timeout(Some(60_000)), Some(ms(60_000)));
        assert_eq!(c.queue("c").job_timeout(Some(0)), None);
        assert_eq!(c.queue("c").job_timeout(None), None);
        for bad in ["-1", "1.5", "30s", "18446744073709551616"] {
            let err = config(&[("REDIS_HOST", "r"), ("QUEUE_A_JOB_TIMEOUT_MS", bad)]).unwrap_err();
            assert!(
                err.to_string().starts_with("QUEUE_A_JOB_TIMEOUT_MS"),
                "{bad}: {err}"
            );
        }
    }

    /// How a full environment reaches Redis.
    #[derive(Clone, Copy, PartialEq)]
    enum RedisVia {
        /// Everything set: `REDIS_CLUSTER_NODES` wins.
        Cluster,
        /// No cluster nodes: `REDIS_URL` wins.
        Url,
        /// Neither: `REDIS_HOST` and friends.
        Host,
    }

    /// Every variable of the table set to a valid value, for one way of reaching Redis.
    fn full_env(via: RedisVia) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = vars::ALL
            .iter()
            .filter(|v| !v.name.contains('<'))
            .map(|v| {
                let value = match v.name {
                    "REDIS_URL" => "redis://localhost:6379",
                    "REDIS_CLUSTER_NODES" => "127.0.0.1:7000,127.0.0.1:7001",
                    "REDIS_DB" => "0",
                    "LOG_FORMAT" => "json",
                    "RUST_LOG" => "debug",
                    "HTTP_ADDR" => "127.0.0.1",
                    "PLUGIN_ISOLATION" => "in-process",
                    "PLUGIN_DIR" | "HOSTNAME" | "REDIS_HOST" | "REDIS_USERNAME"
                    | "REDIS_PASSWORD" | "BULLMQ_PREFIX" | "STATE_DIR" => "x",
                    _ => "1",
                };
                (v.name.to_owned(), value.to_owned())
            })
            .filter(|(k, _)| via == RedisVia::Cluster || k != "REDIS_CLUSTER_NODES")
            .filter(|(k, _)| via != RedisVia::Host || k != "REDIS_URL")
            .collect();
        for family in vars::queue_families() {
            let name = family.name.replace("<Q>", "Q");
            vars.push((name, "1".to_owned()));
        }
        vars
    }

    /// What `read` consults from a full environment, over every way of reaching Redis.
    fn consulted_by(read: impl Fn(&Env<'_>)) -> BTreeSet<&'static str> {
        let mut seen = BTreeSet::new();
        for via in [RedisVia::Cluster, RedisVia::Url, RedisVia::Host] {
            let all = full_env(via);
            let map: HashMap<String, String> = all.iter().cloned().collect();
            let get = |k: &str| map.get(k).cloned();
            let env = Env::new(&get, all);
            read(&env);
            seen.extend(env.consulted());
        }
        seen
    }

    /// The variables each subcommand's configuration code reads, as recorded (the plugin settings family is
    /// read per declared key by `plugins::settings`, and `plugins` takes `PLUGIN_DIR` through clap).
    pub(crate) fn read_by(command: vars::Command) -> BTreeSet<&'static str> {
        let mut seen = match command {
            vars::Command::Run => consulted_by(|env| {
                Logging::read(env).unwrap();
                Config::read(env).unwrap();
            }),
            vars::Command::Plugins => consulted_by(|env| {
                Logging::read(env).unwrap();
                crate::isolation::IsolationSettings::read(env).unwrap();
            }),
            vars::Command::Healthcheck => consulted_by(|env| {
                Logging::read(env).unwrap();
            }),
            vars::Command::Stats | vars::Command::Enqueue => consulted_by(|env| {
                Logging::read(env).unwrap();
                RedisSettings::read(env).unwrap();
            }),
        };
        if matches!(command, vars::Command::Run | vars::Command::Plugins) {
            seen.insert(vars::PLUGIN_SETTING.name);
        }
        if command == vars::Command::Plugins {
            seen.insert(vars::PLUGIN_DIR.name);
        }
        if command == vars::Command::Healthcheck {
            seen.insert(vars::HTTP_ADDR.name);
            seen.insert(vars::HTTP_PORT.name);
        }
        // `plugins --running` takes the address and port through clap, as `healthcheck` does.
        if command == vars::Command::Plugins {
            seen.insert(vars::HTTP_ADDR.name);
            seen.insert(vars::HTTP_PORT.name);
        }
        seen
    }

    #[test]
    fn each_command_reads_exactly_its_table_entries() {
        for command in vars::Command::ALL {
            let table: BTreeSet<&str> = vars::for_command(command).map(|v| v.name).collect();
            assert_eq!(read_by(command), table, "{command:?}");
        }
    }

    #[test]
    fn a_full_environment_sets_every_queue_override() {
        let all = full_env(RedisVia::Host);
        let map: HashMap<String, String> = all.iter().cloned().collect();
        let get = |k: &str| map.get(k).cloned();
        let c = Config::read(&Env::new(&get, all)).unwrap();
        let q = c.queue("q");
        // One field per family: a family added to the table without a field fails in `queue_overrides`.
        assert_eq!(
            q,
            QueueOverrides {
                concurrency: Some(1),
                rate_limit_max: Some(1),
                rate_limit_duration_ms: Some(1),
                lock_duration_ms: Some(1),
                stalled_interval_ms: Some(1),
                max_stalled_count: Some(1),
                job_timeout_ms: Some(1),
            }
        );
    }

    #[test]
    fn defaults_come_from_the_table() {
        let c = config(&[("REDIS_HOST", "r")]).unwrap();
        let value = |v: &vars::Var| match v.default {
            vars::Default::Value(d) => d,
            other => panic!("{} has no default value: {other:?}", v.name),
        };
        assert_eq!(
            c.shutdown_timeout.as_millis().to_string(),
            value(&vars::SHUTDOWN_TIMEOUT_MS)
        );
        assert_eq!(c.http_port.unwrap().to_string(), value(&vars::HTTP_PORT));
        assert_eq!(c.prefix, value(&vars::BULLMQ_PREFIX));
        assert_eq!(
            c.depth_interval.unwrap().as_millis().to_string(),
            value(&vars::METRICS_QUEUE_DEPTH_INTERVAL_MS)
        );
        assert_eq!(c.plugin_dir, PathBuf::from(value(&vars::PLUGIN_DIR)));
        assert_eq!(c.state_dir, PathBuf::from(value(&vars::STATE_DIR)));
        assert_eq!(c.crash_limit.to_string(), value(&vars::JOB_CRASH_LIMIT));
        assert_eq!(
            c.isolation.for_plugin("any-plugin").to_string(),
            value(&vars::PLUGIN_ISOLATION)
        );
        let err = config(&[("REDIS_HOST", "r"), ("JOB_CRASH_LIMIT", "0")]).unwrap_err();
        assert!(err.to_string().starts_with("JOB_CRASH_LIMIT"), "{err}");
        assert!(c
            .redis
            .redacted()
            .ends_with(&format!(":{}", value(&vars::REDIS_PORT))));
    }

    #[test]
    fn http_port_zero_disables_and_prefix_is_checked() {
        let c = config(&[
            ("REDIS_HOST", "r"),
            ("HTTP_PORT", "0"),
            ("BULLMQ_PREFIX", "{bull}"),
        ])
        .unwrap();
        assert_eq!(c.http_port, None);
        assert_eq!(c.prefix, "{bull}");
        assert!(config(&[("REDIS_HOST", "r"), ("BULLMQ_PREFIX", "a:b")]).is_err());
        assert!(config(&[("REDIS_HOST", "r"), ("LOG_FORMAT", "xml")]).is_err());
    }

    #[test]
    fn cluster_nodes_win_over_url_and_host_and_carry_the_credentials() {
        let c = config(&[
            (
                "REDIS_CLUSTER_NODES",
                "127.0.0.1:7000, redis://:pw@127.0.0.1:7001",
            ),
            ("REDIS_URL", "redis://elsewhere:6379"),
            ("REDIS_HOST", "elsewhere"),
            ("REDIS_PASSWORD", "s3cret"),
            ("BULLMQ_PREFIX", "{bull}"),
        ])
        .unwrap();
        assert!(c.redis.is_cluster());
        assert_eq!(
            c.redis.redacted(),
            "Redis Cluster redis://127.0.0.1:7000,redis://***@127.0.0.1:7001"
        );
        let opts = c.redis.connection_options();
        assert_eq!(
            opts.cluster_nodes,
            ["redis://127.0.0.1:7000", "redis://:pw@127.0.0.1:7001"]
        );
        assert_eq!(opts.password.as_deref(), Some("s3cret"));
        let err = config(&[("REDIS_CLUSTER_NODES", "a:7000"), ("REDIS_DB", "2")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("REDIS_DB: Redis Cluster has only database 0"),
            "{err}"
        );
        assert!(config(&[("REDIS_CLUSTER_NODES", "a:7000"), ("REDIS_DB", "0")]).is_ok());
        assert!(config(&[("REDIS_CLUSTER_NODES", " , ")]).is_err());
    }
}
