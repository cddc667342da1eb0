//! The contenders of the benchmark and how each is started and stopped: Node BullMQ Workers (6.7, the
//! reference, and 5.67, FrostGuard's own line), the bare `bullmq-official` Worker (examples/bare_worker.rs),
//! the floor: BullMQ's scripts driven with no library (examples/raw_worker), and `frostguard-worker` with the no-op test plugin in both isolation modes or with the SMS plugin in dry
//! run. Every contender is a process of its own, so its CPU and RSS are read the same way.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use frostguard_tests::{
    build_dir, node_dir, workspace_root, RedisServer, Worker, SMS_PLUGIN, TEST_PLUGIN, TEST_QUEUE,
};

/// The SMS plugin's queue.
const SMS_QUEUE: &str = "sms-notifications";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Contender {
    /// Node BullMQ 6.7 (tests/node): the reference every ratio is taken against.
    Node,
    /// Node BullMQ 5.67 (tests/node-bullmq5), the line FrostGuard's Node worker runs.
    Node5,
    /// A plain `bullmq-official` Worker, no host.
    Bare,
    /// BullMQ's own scripts driven with no library: the fastest worker found on the same Redis calls.
    Raw,
    /// `frostguard-worker`, test plugin, `PLUGIN_ISOLATION=in-process`.
    HostInProcess,
    /// `frostguard-worker`, test plugin, `PLUGIN_ISOLATION=process`.
    HostProcess,
    /// `frostguard-worker`, SMS plugin with `SMS_DRY_RUN=true` and its rate limit lifted (default isolation,
    /// `process`).
    HostSms,
}

/// What each job of a phase does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Return `data.result` (the test plugin's `complete`); `sms:send` jobs for [`Contender::HostSms`].
    NoOp,
    /// Wait this many milliseconds (the test plugin's pending `sleep`, on its timer thread; a timer in Node
    /// and in the bare worker).
    Wait(u64),
}

impl Contender {
    pub const ALL: [Contender; 7] = [
        Contender::Node,
        Contender::Node5,
        Contender::Bare,
        Contender::Raw,
        Contender::HostInProcess,
        Contender::HostProcess,
        Contender::HostSms,
    ];

    /// The name used in tables, the chart and `BENCH_CONTENDERS`.
    pub fn key(self) -> &'static str {
        match self {
            Contender::Node => "node",
            Contender::Node5 => "node5",
            Contender::Bare => "bare",
            Contender::Raw => "raw",
            Contender::HostInProcess => "host-in-process",
            Contender::HostProcess => "host-process",
            Contender::HostSms => "host-sms",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Contender::Node => "Node BullMQ 6.7",
            Contender::Node5 => "Node BullMQ 5.67",
            Contender::Bare => "bare bullmq-official",
            Contender::Raw => "raw scripts (no library)",
            Contender::HostInProcess => "frostguard in-process",
            Contender::HostProcess => "frostguard process",
            Contender::HostSms => "frostguard SMS dry-run",
        }
    }

    pub fn from_key(key: &str) -> Option<Contender> {
        Contender::ALL.into_iter().find(|c| c.key() == key)
    }

    /// Whether the contender takes part in the waiting-jobs phase (the SMS plugin has no waiting job).
    pub fn does_waits(self) -> bool {
        self != Contender::HostSms
    }

    pub fn queue(self) -> &'static str {
        match self {
            Contender::HostSms => SMS_QUEUE,
            _ => TEST_QUEUE,
        }
    }

    /// The job kind `tests/node/bench.mjs` adds for `work`, and its argument.
    pub fn job_kind(self, work: Work) -> (&'static str, u64) {
        match (self, work) {
            (Contender::HostSms, _) => ("sms", 0),
            (_, Work::NoOp) => ("complete", 0),
            (_, Work::Wait(ms)) => ("sleep", ms),
        }
    }

    /// Starts the contender on `redis` at `concurrency`; it consumes the queue until stopped.
    pub fn start(self, redis: &RedisServer, concurrency: usize) -> anyhow::Result<Running> {
        let url = redis.url();
        let queue = self.queue();
        let concurrency = concurrency.to_string();
        Ok(match self {
            Contender::Node | Contender::Node5 => {
                let mut cmd = node("worker", &[&url, queue, &concurrency]);
                if self == Contender::Node5 {
                    cmd.env("FROSTGUARD_BULLMQ_DIR", node5_dir());
                }
                Running::Process(spawn_until_ready(cmd)?)
            }
            Contender::Bare | Contender::Raw => {
                let name = match self {
                    Contender::Bare => "bare-worker",
                    _ => "raw-worker",
                };
                let bin = build_dir().join("examples").join(name);
                if !bin.is_file() {
                    bail!(
                        "{} is not built (scripts/bench.sh builds it)",
                        bin.display()
                    );
                }
                let mut cmd = Command::new(bin);
                cmd.args([&url, queue, &concurrency]);
                Running::Process(spawn_until_ready(cmd)?)
            }
            Contender::HostInProcess | Contender::HostProcess => {
                let isolation = match self {
                    Contender::HostInProcess => "in-process",
                    _ => "process",
                };
                Running::Host(Box::new(
                    host()
                        .redis(redis)
                        .plugins(&[TEST_PLUGIN])
                        .env("QUEUE_TEST_OUTCOMES_CONCURRENCY", concurrency)
                        .env("PLUGIN_ISOLATION", isolation)
                        .spawn()?,
                ))
            }
            Contender::HostSms => Running::Host(Box::new(
                host()
                    .redis(redis)
                    .plugins(&[SMS_PLUGIN])
                    .env("SMS_DRY_RUN", "true")
                    .env("QUEUE_SMS_NOTIFICATIONS_CONCURRENCY", concurrency)
                    // The plugin's hint (10 jobs/s) protects Telnyx; no provider is called in dry run.
                    .env("QUEUE_SMS_NOTIFICATIONS_RATE_LIMIT_MAX", "0")
                    .env("PLUGIN_ISOLATION", "process")
                    .spawn()?,
            )),
        })
    }
}

/// `frostguard-worker` with the bench's log level: `BENCH_HOST_LOG` (default `warn`, so that the host, like
/// the Node and bare workers, writes no line per job).
fn host() -> frostguard_tests::WorkerBuilder {
    let log = std::env::var("BENCH_HOST_LOG").unwrap_or_else(|_| "warn".into());
    Worker::builder().env("RUST_LOG", log)
}

fn node5_dir() -> PathBuf {
    workspace_root().join("tests").join("node-bullmq5")
}

/// `node bench.mjs <command> <args>` in tests/node.
pub fn node(command: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("node");
    cmd.current_dir(node_dir())
        .arg("bench.mjs")
        .arg(command)
        .args(args);
    cmd
}

/// Runs `node bench.mjs <command> <args>` to completion.
pub fn run_node(command: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = node(command, args)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("node bench.mjs {command}"))?;
    if !status.success() {
        bail!("node bench.mjs {command} {}: {status}", args.join(" "));
    }
    Ok(())
}

/// Runs `node bench.mjs <command> <args>` to completion and parses the JSON it prints.
pub fn node_output(command: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = node(command, args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("node bench.mjs {command}"))?;
    if !out.status.success() {
        bail!(
            "node bench.mjs {command} {}: {}",
            args.join(" "),
            out.status
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "node bench.mjs {command} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Checks that the Node projects the Node contenders need are installed.
pub fn check_node5() -> anyhow::Result<()> {
    if !node5_dir()
        .join("node_modules/bullmq/package.json")
        .is_file()
    {
        bail!("tests/node-bullmq5 has no node_modules: run `npm ci` there (scripts/bench.sh does)");
    }
    Ok(())
}

/// Spawns a worker that prints `ready` once started, and waits for that line.
fn spawn_until_ready(mut cmd: Command) -> anyhow::Result<Child> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{:?} did not start: {line:?}", cmd.get_program());
    }
    Ok(child)
}

/// A contender consuming its queue until [`Running::stop`].
pub enum Running {
    Process(Child),
    Host(Box<Worker>),
}

impl Running {
    /// The worker's process (its descendants are found from it).
    pub fn pid(&self) -> u32 {
        match self {
            Running::Process(child) => child.id(),
            Running::Host(worker) => worker.pid(),
        }
    }

    /// SIGTERM, then up to 30 s for the worker to close; SIGKILL after that.
    pub fn stop(self) {
        match self {
            Running::Process(mut child) => {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::Host(mut worker) => {
                let _ = worker.terminate(Duration::from_secs(30));
            }
        }
    }
}
