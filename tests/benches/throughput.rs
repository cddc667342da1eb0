//! Throughput benchmark: the same no-op jobs (Node-produced `complete` jobs returning `data.result`) drained
//! from one queue by a Node BullMQ 6.7 Worker, by a bare `bullmq-official` Worker, and by `frostguard-worker`
//! running the `test-outcomes` plugin, at several concurrencies, each on a fresh Redis. Prints jobs/s and the
//! host's ratio to both. Run with `scripts/bench.sh` (it builds the release binaries first).
//!
//! The rate is measured from the first completed job to the last, read from Redis itself (`ZCARD` of the
//! completed set), so start-up time is excluded for every contender alike. Environment: `BENCH_JOBS`
//! (default 20000), `BENCH_CONCURRENCY` (default `1,10,100`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use frostguard_tests::{ensure_node_modules, node_dir, RedisServer, Worker, TEST_PLUGIN};

const QUEUE: &str = "test-outcomes";

#[derive(Clone, Copy, Debug)]
enum Contender {
    Node,
    Bare,
    Host,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Node => "node bullmq 6.7",
            Contender::Bare => "bare bullmq-official",
            Contender::Host => "frostguard-worker",
        }
    }
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
    println!("throughput, {jobs} no-op jobs per run, one fresh redis-server per run (jobs/s)");
    println!(
        "{:>11} | {:>16} | {:>20} | {:>17} | {:>9} | {:>9}",
        "concurrency",
        "node bullmq 6.7",
        "bare bullmq-official",
        "frostguard-worker",
        "vs node",
        "vs bare"
    );
    for c in concurrencies {
        let mut rates = Vec::new();
        for contender in [Contender::Node, Contender::Bare, Contender::Host] {
            let rate = run_one(contender, c, jobs)
                .with_context(|| format!("{} at concurrency {c}", contender.label()))?;
            rates.push(rate);
        }
        println!(
            "{:>11} | {:>16.0} | {:>20.0} | {:>17.0} | {:>8.2}x | {:>8.2}x",
            c,
            rates[0],
            rates[1],
            rates[2],
            rates[2] / rates[0],
            rates[2] / rates[1]
        );
    }
    Ok(())
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn run_one(contender: Contender, concurrency: usize, jobs: u64) -> anyhow::Result<f64> {
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
    let rate = measure(&redis, jobs);
    running.stop();
    rate
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
            Contender::Host => Running::Host(Box::new(
                Worker::builder()
                    .redis(redis)
                    .plugins(&[TEST_PLUGIN])
                    .env("QUEUE_TEST_OUTCOMES_CONCURRENCY", concurrency.to_string())
                    .env("RUST_LOG", "warn")
                    .spawn()?,
            )),
        })
    }

    fn stop(self) {
        match self {
            Running::Node(mut child) => {
                // SIGTERM lets the Node worker close its connections.
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

/// Jobs per second between the first and the last completion seen in Redis.
fn measure(redis: &RedisServer, jobs: u64) -> anyhow::Result<f64> {
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
    loop {
        let n = completed()?;
        if n >= jobs {
            let secs = first_at.elapsed().as_secs_f64();
            return Ok((jobs - first_count) as f64 / secs);
        }
        if Instant::now() > deadline {
            bail!("only {n} of {jobs} jobs completed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
