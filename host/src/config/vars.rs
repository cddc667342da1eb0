//! The one table of environment variables the host reads: name, meaning, default and the subcommands that
//! read it.
//!
//! The configuration code reads variables only through [`super::Env::get`] / [`super::Env::matching`], which take an entry
//! of this table, and `--help` renders the same table per subcommand. A test records what the configuration
//! code actually reads and compares it with the table and with the rendered help, so the documentation
//! cannot drift from the code. To add a variable: add a `pub const` entry here, list it in [`ALL`], read it
//! through [`super::Env`].

/// A subcommand that reads the environment (the help of each lists its variables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Command {
    /// `run` (the default).
    Run,
    /// `plugins` and `plugins run`.
    Plugins,
    /// `stats`.
    Stats,
    /// `enqueue`.
    Enqueue,
    /// `healthcheck`.
    Healthcheck,
}

impl Command {
    /// Every subcommand, in help order.
    pub const ALL: [Command; 5] = [
        Command::Run,
        Command::Plugins,
        Command::Stats,
        Command::Enqueue,
        Command::Healthcheck,
    ];

    /// The subcommand's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Command::Run => "run",
            Command::Plugins => "plugins",
            Command::Stats => "stats",
            Command::Enqueue => "enqueue",
            Command::Healthcheck => "healthcheck",
        }
    }
}

/// What happens when a variable is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// Nothing: the setting is off or another variable decides.
    None,
    /// This value is used; the configuration code parses it exactly like a value from the environment.
    Value(&'static str),
    /// Described, not a literal value (e.g. "the plugin's hint").
    Note(&'static str),
}

/// One environment variable (or a family of them, such as `QUEUE_<Q>_CONCURRENCY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    /// The name; a family has one placeholder in angle brackets (`<Q>`, `<NAME>`).
    pub name: &'static str,
    /// What it does, one sentence for `--help`.
    pub meaning: &'static str,
    /// The default.
    pub default: Default,
    /// The subcommands that read it.
    pub commands: &'static [Command],
}

impl Var {
    /// For a family `QUEUE_<Q>_SUFFIX`, the part after the placeholder (`_SUFFIX`).
    pub fn queue_suffix(&self) -> Option<&'static str> {
        self.name.strip_prefix("QUEUE_<Q>")
    }

    /// Whether `command` reads this variable.
    pub fn read_by(&self, command: Command) -> bool {
        self.commands.contains(&command)
    }
}

use Command::{Enqueue, Healthcheck, Plugins, Run, Stats};

const REDIS_USERS: &[Command] = &[Run, Stats, Enqueue];
const EVERYONE: &[Command] = &[Run, Plugins, Stats, Enqueue, Healthcheck];

/// `REDIS_URL`.
pub const REDIS_URL: Var = Var {
    name: "REDIS_URL",
    meaning: "Redis as a redis:// or rediss:// URL (may carry user, password and database); \
              wins over REDIS_HOST",
    default: Default::None,
    commands: REDIS_USERS,
};
/// `REDIS_CLUSTER_NODES`.
pub const REDIS_CLUSTER_NODES: Var = Var {
    name: "REDIS_CLUSTER_NODES",
    meaning: "Redis Cluster seed nodes, comma-separated (host:port or redis://, rediss:// URLs); \
              switches to cluster mode, wins over REDIS_URL and REDIS_HOST, and needs a hash-tagged \
              BULLMQ_PREFIX such as {bull}",
    default: Default::None,
    commands: REDIS_USERS,
};
/// `REDIS_HOST`.
pub const REDIS_HOST: Var = Var {
    name: "REDIS_HOST",
    meaning: "Redis host name, when REDIS_URL is not set (one of the two is required)",
    default: Default::None,
    commands: REDIS_USERS,
};
/// `REDIS_PORT`.
pub const REDIS_PORT: Var = Var {
    name: "REDIS_PORT",
    meaning: "Redis port, with REDIS_HOST",
    default: Default::Value("6379"),
    commands: REDIS_USERS,
};
/// `REDIS_USERNAME`.
pub const REDIS_USERNAME: Var = Var {
    name: "REDIS_USERNAME",
    meaning: "Redis ACL user name, with REDIS_HOST or REDIS_CLUSTER_NODES",
    default: Default::None,
    commands: REDIS_USERS,
};
/// `REDIS_PASSWORD`.
pub const REDIS_PASSWORD: Var = Var {
    name: "REDIS_PASSWORD",
    meaning: "Redis password, with REDIS_HOST or REDIS_CLUSTER_NODES",
    default: Default::None,
    commands: REDIS_USERS,
};
/// `REDIS_DB`.
pub const REDIS_DB: Var = Var {
    name: "REDIS_DB",
    meaning: "Redis database index, with REDIS_HOST",
    default: Default::Note("0"),
    commands: REDIS_USERS,
};
/// `BULLMQ_PREFIX`.
pub const BULLMQ_PREFIX: Var = Var {
    name: "BULLMQ_PREFIX",
    meaning:
        "BullMQ key prefix, as the producers use it; a hash tag such as {bull} for Redis Cluster",
    default: Default::Value("bull"),
    commands: REDIS_USERS,
};
/// `PLUGIN_DIR`.
pub const PLUGIN_DIR: Var = Var {
    name: "PLUGIN_DIR",
    meaning: "directory of plugin .so files (or --plugin-dir)",
    default: Default::Value(super::DEFAULT_PLUGIN_DIR),
    commands: &[Run, Plugins],
};
/// `PLUGIN_WATCH`.
pub const PLUGIN_WATCH: Var = Var {
    name: "PLUGIN_WATCH",
    meaning: "hot reload: watch the plugin directory and start new plugins, replace rebuilt ones and stop \
              removed ones while the worker runs (true or false)",
    default: Default::Value("true"),
    commands: &[Run],
};
/// `PLUGIN_WATCH_DEBOUNCE_MS`.
pub const PLUGIN_WATCH_DEBOUNCE_MS: Var = Var {
    name: "PLUGIN_WATCH_DEBOUNCE_MS",
    meaning: "quiet time after the last change in the plugin directory before it is looked at; a new file's \
              size must also stay the same for this long",
    default: Default::Value("500"),
    commands: &[Run],
};
/// `PLUGIN_CACHE_DIR`.
pub const PLUGIN_CACHE_DIR: Var = Var {
    name: "PLUGIN_CACHE_DIR",
    meaning:
        "where hot reload keeps the private copy each plugin build is loaded from (a writable \
              directory; a copy is removed once its build serves no more)",
    default: Default::Note("the system temporary directory (TMPDIR, else /tmp)"),
    commands: &[Run],
};
/// `PLUGIN_RETIRED_IMAGES_WARN`.
pub const PLUGIN_RETIRED_IMAGES_WARN: Var = Var {
    name: "PLUGIN_RETIRED_IMAGES_WARN",
    meaning: "replaced or removed plugin libraries that may stay mapped (they are never unloaded) before \
              each further reload logs a warning to restart the worker",
    default: Default::Value("20"),
    commands: &[Run],
};
/// `SHUTDOWN_TIMEOUT_MS`.
pub const SHUTDOWN_TIMEOUT_MS: Var = Var {
    name: "SHUTDOWN_TIMEOUT_MS",
    meaning: "how long in-flight jobs may finish after SIGTERM or SIGINT",
    // Below docker's 30 s stop grace period.
    default: Default::Value("25000"),
    commands: &[Run],
};
/// `HTTP_PORT`'s default, also `healthcheck --port`'s.
pub const DEFAULT_HTTP_PORT: &str = "9090";
/// `HTTP_PORT`.
pub const HTTP_PORT: Var = Var {
    name: "HTTP_PORT",
    meaning: "port of /healthz, /readyz and /metrics; 0 disables the endpoint \
              (healthcheck, plugins --running: the port they ask, or --port)",
    default: Default::Value(DEFAULT_HTTP_PORT),
    commands: &[Run, Plugins, Healthcheck],
};
/// `METRICS_QUEUE_DEPTH_INTERVAL_MS`.
pub const METRICS_QUEUE_DEPTH_INTERVAL_MS: Var = Var {
    name: "METRICS_QUEUE_DEPTH_INTERVAL_MS",
    meaning: "how often the queue depth gauges of /metrics are read from Redis (one script call per queue); \
              0 turns them off",
    default: Default::Value("5000"),
    commands: &[Run],
};
/// Default of `HTTP_ADDR`: every IPv4 interface, so a container's published port reaches it.
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0";
/// `HTTP_ADDR`.
pub const HTTP_ADDR: Var = Var {
    name: "HTTP_ADDR",
    meaning: "IP address the endpoint binds (127.0.0.1 keeps it local, :: for IPv6); \
              healthcheck, plugins --running: the address they ask (loopback when the worker binds all \
              interfaces), or --addr",
    default: Default::Value(DEFAULT_HTTP_ADDR),
    commands: &[Run, Plugins, Healthcheck],
};
/// `HTTP_MAX_CONNECTIONS`.
pub const HTTP_MAX_CONNECTIONS: Var = Var {
    name: "HTTP_MAX_CONNECTIONS",
    meaning:
        "connections the endpoint serves at once (lowered to keep 256 file descriptors free); \
              further clients wait until one closes",
    default: Default::Value("64"),
    commands: &[Run],
};
/// `HTTP_HEADER_TIMEOUT_MS`.
pub const HTTP_HEADER_TIMEOUT_MS: Var = Var {
    name: "HTTP_HEADER_TIMEOUT_MS",
    meaning:
        "time a client has to send a request head; also the idle timeout of a keep-alive connection",
    default: Default::Value("5000"),
    commands: &[Run],
};
/// `HOSTNAME`.
pub const HOSTNAME: Var = Var {
    name: "HOSTNAME",
    meaning: "worker name shown in BullMQ's worker list and as a job's processedBy",
    default: Default::None,
    commands: &[Run],
};
/// `LOG_FORMAT`.
pub const LOG_FORMAT: Var = Var {
    name: "LOG_FORMAT",
    meaning: "log lines on stderr as text or json",
    default: Default::Value("text"),
    commands: EVERYONE,
};
/// `RUST_LOG`.
pub const RUST_LOG: Var = Var {
    name: "RUST_LOG",
    meaning: "log filter (tracing EnvFilter syntax, e.g. info,frostguard_worker=debug)",
    default: Default::Value("info"),
    commands: EVERYONE,
};
/// `QUEUE_<Q>_CONCURRENCY`.
pub const QUEUE_CONCURRENCY: Var = Var {
    name: "QUEUE_<Q>_CONCURRENCY",
    meaning: "jobs at once on queue <Q> (at least 1)",
    default: Default::Note("the plugin's default, else 1"),
    commands: &[Run],
};
/// `QUEUE_<Q>_RATE_LIMIT_MAX`.
pub const QUEUE_RATE_LIMIT_MAX: Var = Var {
    name: "QUEUE_<Q>_RATE_LIMIT_MAX",
    meaning: "at most this many jobs per QUEUE_<Q>_RATE_LIMIT_DURATION_MS (set both); 0 lifts the plugin's hint",
    default: Default::Note("the plugin's hint, else no limit"),
    commands: &[Run],
};
/// `QUEUE_<Q>_RATE_LIMIT_DURATION_MS`.
pub const QUEUE_RATE_LIMIT_DURATION_MS: Var = Var {
    name: "QUEUE_<Q>_RATE_LIMIT_DURATION_MS",
    meaning: "the rate limit's window",
    default: Default::Note("the plugin's hint"),
    commands: &[Run],
};
/// `QUEUE_<Q>_LOCK_DURATION_MS`.
pub const QUEUE_LOCK_DURATION_MS: Var = Var {
    name: "QUEUE_<Q>_LOCK_DURATION_MS",
    meaning: "BullMQ job lock duration",
    default: Default::Note("30000"),
    commands: &[Run],
};
/// `QUEUE_<Q>_STALLED_INTERVAL_MS`.
pub const QUEUE_STALLED_INTERVAL_MS: Var = Var {
    name: "QUEUE_<Q>_STALLED_INTERVAL_MS",
    meaning: "how often stalled jobs are looked for",
    default: Default::Note("30000"),
    commands: &[Run],
};
/// `QUEUE_<Q>_MAX_STALLED_COUNT`.
pub const QUEUE_MAX_STALLED_COUNT: Var = Var {
    name: "QUEUE_<Q>_MAX_STALLED_COUNT",
    meaning: "how often a job may stall before it fails",
    default: Default::Note("1"),
    commands: &[Run],
};
/// `QUEUE_<Q>_JOB_TIMEOUT_MS`.
pub const QUEUE_JOB_TIMEOUT_MS: Var = Var {
    name: "QUEUE_<Q>_JOB_TIMEOUT_MS",
    meaning: "time budget of one attempt; an overrun fails the attempt retryably; 0 = no timeout",
    default: Default::Note("the plugin's hint, else none"),
    commands: &[Run],
};
/// `PLUGIN_<NAME>_<KEY>`.
pub const PLUGIN_SETTING: Var = Var {
    name: "PLUGIN_<NAME>_<KEY>",
    meaning:
        "a setting <KEY> a plugin declares (see `frostguard-worker plugins`); wins over plain <KEY>",
    default: Default::Note("the plain <KEY> variable"),
    commands: &[Run, Plugins],
};

/// `PLUGIN_ISOLATION`.
pub const PLUGIN_ISOLATION: Var = Var {
    name: "PLUGIN_ISOLATION",
    meaning: "where plugin code runs: process (a child process per plugin; a crash fails only the jobs it \
              held and the child restarts) or in-process (cheaper; a crash ends the whole worker)",
    default: Default::Value("process"),
    commands: &[Run, Plugins],
};
/// `PLUGIN_ISOLATION_<NAME>`.
pub const PLUGIN_ISOLATION_NAME: Var = Var {
    name: "PLUGIN_ISOLATION_<NAME>",
    meaning: "PLUGIN_ISOLATION for the plugin <NAME> only",
    default: Default::Note("PLUGIN_ISOLATION"),
    commands: &[Run, Plugins],
};
/// `STATE_DIR`.
pub const STATE_DIR: Var = Var {
    name: "STATE_DIR",
    meaning: "directory of the crash journal of in-process plugins (must outlive the process; replicas may \
              share it)",
    default: Default::Value("/tmp/frostguard-worker"),
    commands: &[Run],
};
/// `JOB_CRASH_LIMIT`.
pub const JOB_CRASH_LIMIT: Var = Var {
    name: "JOB_CRASH_LIMIT",
    meaning:
        "crashes of its process (segfault, abort, exit) after which a job fails for good with \
              'crashed the worker (signal ...)' instead of running again",
    default: Default::Value("2"),
    commands: &[Run],
};

/// Every variable, in help order.
pub const ALL: &[&Var] = &[
    &REDIS_URL,
    &REDIS_CLUSTER_NODES,
    &REDIS_HOST,
    &REDIS_PORT,
    &REDIS_USERNAME,
    &REDIS_PASSWORD,
    &REDIS_DB,
    &BULLMQ_PREFIX,
    &PLUGIN_DIR,
    &PLUGIN_WATCH,
    &PLUGIN_WATCH_DEBOUNCE_MS,
    &PLUGIN_CACHE_DIR,
    &PLUGIN_RETIRED_IMAGES_WARN,
    &SHUTDOWN_TIMEOUT_MS,
    &HTTP_PORT,
    &METRICS_QUEUE_DEPTH_INTERVAL_MS,
    &HTTP_ADDR,
    &HTTP_MAX_CONNECTIONS,
    &HTTP_HEADER_TIMEOUT_MS,
    &HOSTNAME,
    &LOG_FORMAT,
    &RUST_LOG,
    &QUEUE_CONCURRENCY,
    &QUEUE_RATE_LIMIT_MAX,
    &QUEUE_RATE_LIMIT_DURATION_MS,
    &QUEUE_LOCK_DURATION_MS,
    &QUEUE_STALLED_INTERVAL_MS,
    &QUEUE_MAX_STALLED_COUNT,
    &QUEUE_JOB_TIMEOUT_MS,
    &PLUGIN_SETTING,
    &PLUGIN_ISOLATION,
    &PLUGIN_ISOLATION_NAME,
    &STATE_DIR,
    &JOB_CRASH_LIMIT,
];

/// The `QUEUE_<Q>_*` families.
#[cfg(test)]
pub fn queue_families() -> impl Iterator<Item = &'static Var> {
    ALL.iter().copied().filter(|v| v.queue_suffix().is_some())
}

/// The variables `command` reads, in help order.
pub fn for_command(command: Command) -> impl Iterator<Item = &'static Var> {
    ALL.iter().copied().filter(move |v| v.read_by(command))
}

/// The "Environment:" section of a subcommand's `--help`.
pub fn help_section(command: Command) -> String {
    let vars: Vec<&Var> = for_command(command).collect();
    let width = vars.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut out = String::from("Environment:\n");
    for v in vars {
        let default = match v.default {
            Default::None => String::new(),
            Default::Value(d) | Default::Note(d) => format!(" [default: {d}]"),
        };
        out.push_str(&format!("  {:width$}  {}{}\n", v.name, v.meaning, default));
    }
    if command == Command::Run {
        out.push_str(
            "\n<Q> is the queue name upper-cased with every other character as _ \
             (sms-notifications -> SMS_NOTIFICATIONS); <NAME> is the plugin name in the same form.\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_are_unique_and_every_entry_serves_a_command() {
        let names: BTreeSet<_> = ALL.iter().map(|v| v.name).collect();
        assert_eq!(names.len(), ALL.len());
        for v in ALL {
            assert!(!v.commands.is_empty(), "{} is read by nobody", v.name);
            assert!(!v.meaning.is_empty(), "{} has no meaning", v.name);
        }
    }

    #[test]
    fn no_queue_suffix_ends_another() {
        // A variable must belong to one family only.
        for a in queue_families() {
            for b in queue_families() {
                if a.name != b.name {
                    let (a, b) = (a.queue_suffix().unwrap(), b.queue_suffix().unwrap());
                    assert!(!a.ends_with(b), "{a} ends with {b}");
                }
            }
        }
    }

    #[test]
    fn help_section_lists_defaults() {
        let help = help_section(Command::Run);
        assert!(help.contains("SHUTDOWN_TIMEOUT_MS"), "{help}");
        assert!(help.contains("[default: 25000]"), "{help}");
        assert!(!help_section(Command::Plugins).contains("SHUTDOWN_TIMEOUT_MS"));
    }
}
