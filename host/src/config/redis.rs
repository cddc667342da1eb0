//! Where Redis is: `REDIS_CLUSTER_NODES`, else `REDIS_URL`, else `REDIS_HOST` and its companions, checked
//! so that a target that can never connect stops the process at start; and the key prefix of the queues.

use std::fmt;

use bullmq::options::RedisConnectionOptions;

use super::{cluster, invalid, parse_num, vars, ConfigError, Env};

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
        Self::read(&Env::from_process())
    }

    /// Reads `REDIS_*` and `BULLMQ_PREFIX`.
    pub fn read(env: &Env) -> Result<RedisSettings, ConfigError> {
        let target = redis_target(env)?;
        let prefix = env.get_or_default(&vars::BULLMQ_PREFIX).unwrap_or_default();
        if prefix.contains(':') {
            return Err(invalid(vars::BULLMQ_PREFIX.name, "must not contain ':'"));
        }
        Ok(RedisSettings { target, prefix })
    }
}

fn redis_target(env: &Env) -> Result<RedisTarget, ConfigError> {
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
