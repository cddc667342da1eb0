//! The configuration's tests across modules: what each subcommand reads, defaults, Redis targets, overrides.

use super::*;
use std::collections::BTreeSet;

fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::read(&Env::from_vars(vars.iter().copied()))
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
                "PLUGIN_DIR" | "HOSTNAME" | "REDIS_HOST" | "REDIS_USERNAME" | "REDIS_PASSWORD"
                | "BULLMQ_PREFIX" | "STATE_DIR" => "x",
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
fn consulted_by(read: impl Fn(&Env)) -> BTreeSet<&'static str> {
    let mut seen = BTreeSet::new();
    for via in [RedisVia::Cluster, RedisVia::Url, RedisVia::Host] {
        let all = full_env(via);
        let env = Env::from_vars(all);
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
    let c = Config::read(&Env::from_vars(all)).unwrap();
    let q = c.queue("q");
    // One field per family (`queues.rs` checks the table of fields against the variable table).
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
