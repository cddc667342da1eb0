//! Throughput benchmark: the same no-op jobs (Node-produced `complete` jobs returning `data.result`) drained
//! from one queue by a Node BullMQ 6.7 Worker, by a bare `bullmq-official` Worker, and by `frostguard-worker`
//! running the `test-outcomes` plugin in both isolation modes (in-process, and a plugin process), at several
//! concurrencies, each on a fresh Redis. Prints jobs/s, the host's ratios, and the CPU time per job of the
//! Node worker and of the host (with its plugin process). Run with `scripts/bench.sh` (it builds the release
//! binaries first).
//!
//! The rate is measured from the first completed job to the last, read from Redis itself (`ZCARD` of the
//! completed set), so start-up time is excluded for every contender alike. Environment: `BENCH_JOBS`
//! (default 20000), `BENCH_CONCURRENCY` (default `1,10,100`). CPU time is read from `/proc` (user + system
//! of the process and its children still running) over the same interval.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use frostguard_tests::{ensure_node_modules, node_dir, RedisServer, Worker, TEST_PLUGIN};

const QUEUE: &str = "test-outcomes";

#[derive(Clone, Copy, Debug)]
enum Contender {
    Node,
    Bare,
    /// `PLUGIN_ISOLATION=in-process`.
    HostInProcess,
    /// `PLUGIN_ISOLATION=process`.
    HostProcess,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Node => "node bullmq 6.7",
            Contender::Bare => "bare bullmq-official",
            Contender::HostInProcess => "frostguard in-process",
            Contender::HostProcess => "frostguard process",
        }
    }
}

/// One run's figures: jobs/s, and CPU microseconds per job when measured.
struct Figures {
    rate: f64,
    cpu_us_per_job: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let jobs: u64 = env_or("BENCH_JOBS", "20000")
        .parse()
        .context("BENCH_JOBS")?;
    let concurrencies: Vec<usize> = env_or("BENCH_CONCURRENCY", "1,10,100")
        .split(',')
        .map(|c| c.trim().parse().context("BENCH_CONCURRENCY"))
        .collect::<anyhow::Result<_>>()?;
    ensure_node_modules()?;
    println!("throughput, {jobs} no-op jobs per run, one fresh redis-server per run (jobs/s; CPU µs per job)");
    println!(
        "{:>11} | {:>15} | {:>15} | {:>21} | {:>18} | {:>8} | {:>8} | {:>11} | {:>11} | {:>11}",
        "concurrency",
        "node bullmq 6.7",
        "bare bullmq-off.",
        "frostguard in-process",
        "frostguard process",
        "vs node",
        "proc/in",
        "cpu node",
        "cpu in-proc",
        "cpu process"
    );
    let contenders = [
        Contender::Node,
        Contender::Bare,
        Contender::HostInProcess,
        Contender::HostProcess,
    ];
    for c in concurrencies {
        let mut runs = Vec::new();
        for contender in contenders {
            let figures = run_one(contender, c, jobs)
                .with_context(|| format!("{} at concurrency {c}", contender.label()))?;
            runs.push(figures);
        }
        let cpu = |f: &Figures| {
            f.cpu_us_per_job
                .map(|us| format!("{us:.0}"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:>11} | {:>15.0} | {:>15.0} | {:>21.0} | {:>18.0} | {:>7.2}x | {:>7.2}x | {:>11} | {:>11} | {:>11}",
            c,
            runs[0].rate,
            runs[1].rate,
            runs[2].rate,
            runs[3].rate,
            runs[3].rate / runs[0].rate,
            runs[3].rate / runs[2].rate,
            cpu(&runs[0]),
            cpu(&runs[2]),
            cpu(&runs[3]),
        );
    }
    Ok(())
}

/// CPU seconds (user + system) used so far by `pid` and its live children.
fn cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = |pid: &str| -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces): state is field 3.
        let rest = text.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u64 = fields.get(1)?.parse().ok()?;
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((ppid, utime + stime))
    };
    let mut total = stat(&pid.to_string()).map(|(_, t)| t).unwrap_or(0);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.bytes().all(|b| b.is_ascii_digit()) {
                if let Some((ppid, t)) = stat(&name) {
                    if ppid == u64::from(pid) {
                        total += t;
                    }
                }
            }
        }
    }
    total as f64 / ticks
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn run_one(contender: Contender, concurrency: usize, jobs: u64) -> anyhow::Result<Figures> {
    let redis = RedisServer::start()?;
    let status = Command::new("node")
        .current_dir(node_dir())
        .args(["bench.mjs", "add", &redis.url(), QUEUE, &jobs.to_string()])
        .status()
        .context("node bench.mjs add")?;
    if !status.success() {
        bail!("enqueueing failed: {status}");
    }
    let running = Running::start(contender, &redis, concurrency)?;
    let pid = running.pid();
    let figures = measure(&redis, jobs, pid);
    running.stop();
    figures
}

/// A contender processing the queue until dropped.
enum Running {
    Node(Child),
    Bare(
        std::thread::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    ),
    Host(Box<Worker>),
}

impl Running {
    fn start(
        contender: Contender,
        redis: &RedisServer,
        concurrency: usize,
    ) -> anyhow::Result<Running> {
        Ok(match contender {
            Contender::Node => Running::Node(
                Command::new("node")
                    .current_dir(node_dir())
                    .args([
                        "bench.mjs",
                        "worker",
                        &redis.url(),
                        QUEUE,
                        &concurrency.to_string(),
                    ])
                    .stdout(Stdio::null())
                    .spawn()
                    .context("node bench.mjs worker")?,
            ),
            Contender::Bare => {
                let (stop, stopped) = tokio::sync::oneshot::channel();
                let url = redis.url();
                let thread = std::thread::spawn(move || bare_worker(url, concurrency, stopped));
                Running::Bare(thread, stop)
            }
            Contender::HostInProcess | Contender::HostProcess => Running::Host(Box::new(
                Worker::builder()
                    .redis(redis)
                    .plugins(&[TEST_PLUGIN])
                    .env("QUEUE_TEST_OUTCOMES_CONCURRENCY", concurrency.to_string())
                    .env(
                        "PLUGIN_ISOLATION",
                        match contender {
                            Contender::HostProcess => "process",
                            _ => "in-process",
                        },
                    )
                    .env("RUST_LOG", "warn")
                    .spawn()?,
            )),
        })
    }

    /// The process whose CPU time is measured (none for the bare worker, which runs in this process).
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Node(child) => Some(child.id()),
            Running::Bare(..) => None,
            Running::Host(worker) => Some(worker.pid()),
        }
    }

    fn stop(self) {
        match self {
            Running::Node(mut child) => {
                // SIGTERM lets the Node worker close its connections.
                // SAFETY: kill of our own child's pid, not yet reaped (`wait` follows).
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let _ = child.wait();
            }
            Running::Bare(thread, stop) => {
                let _ = stop.send(());
                let _ = thread.join();
            }
            Running::Host(mut worker) => {
                let _ = worker.terminate(Duration::from_secs(30));
            }
        }
    }
}

/// A plain `bullmq-official` Worker with the same processor, on its own runtime.
fn bare_worker(url: String, concurrency: usize, stopped: tokio::sync::oneshot::Receiver<()>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let mut options = bullmq::WorkerOptions::default();
        options.connection.url = url;
        options.concurrency = concurrency;
        let worker = bullmq::Worker::with_options(
            QUEUE,
            |job: bullmq::Job, _token| async move { Ok(job.data()["result"].clone()) },
            options,
        )
        .await
        .expect("bare worker starts");
        tokio::select! {
            _ = stopped => {}
            _ = async { while worker.next_event().await.is_some() {} } => {}
        }
        let _ = worker.close(5_000).await;
    });
}

/// Jobs per second between the first and the last completion seen in Redis, and `pid`'s CPU time per job
/// over the same interval.
fn measure(redis: &RedisServer, jobs: u64, pid: Option<u32>) -> anyhow::Result<Figures> {
    let key = format!("bull:{QUEUE}:completed");
    let completed =
        || -> anyhow::Result<u64> { Ok(redis.cmd(&["ZCARD", &key])?.as_int().unwrap_or(0) as u64) };
    let deadline = Instant::now() + Duration::from_secs(300);
    let (first_at, first_count) = loop {
        let n = completed()?;
        if n > 0 {
            break (Instant::now(), n);
        }
        if Instant::now() > deadline {
            bail!("no job completed");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let cpu_at_first = pid.map(cpu_seconds);
    loop {
        let n = completed()?;
        if n >= jobs {
            let secs = first_at.elapsed().as_secs_f64();
            let done = (jobs - first_count) as f64;
            let cpu_us_per_job = pid
                .zip(cpu_at_first)
                .map(|(pid, first)| (cpu_seconds(pid) - first) * 1e6 / done);
            return Ok(Figures {
                rate: done / secs,
                cpu_us_per_job,
            });
        }
        if Instant::now() > deadline {
            bail!("only {n} of {jobs} jobs completed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
