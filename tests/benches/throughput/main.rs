//! The project's benchmark (`scripts/bench.sh`, `cargo bench` only; docs/benchmarks.md says what every figure
//! means). Node BullMQ Workers, a bare `bullmq-official` Worker, BullMQ's scripts driven with no library (the
//! floor) and `frostguard-worker` (test plugin in both isolation modes; SMS plugin in dry run) drain the same
//! Node-produced jobs, one fresh redis-server per measurement, in three phases per run:
//! * no-op jobs at each concurrency (`BENCH_CONCURRENCY`, default `1,5,50,200`; `BENCH_JOBS` jobs each);
//! * waiting jobs (`BENCH_IO_MS`, default 20 ms each) at `BENCH_IO_CONCURRENCY` (default 200);
//! * pickup latency: `BENCH_PICKUP_JOBS` jobs (default 200) added one at a time at `BENCH_PICKUP_RATE` a second
//!   (default 50) to an idle worker at concurrency 1.
//!
//! `BENCH_RUNS` (default 3) runs; every figure printed is the median over them. `BENCH_CONTENDERS` (comma
//! list of keys, default all) narrows the field. `BENCH_WRITE=1` writes docs/benchmarks.md and
//! docs/benchmarks.svg.

mod chart;
mod contenders;
mod machine;
mod measure;
mod report;
mod stats;

use std::collections::BTreeMap;

use anyhow::Context;
use frostguard_tests::{ensure_node_modules, RedisServer};

use contenders::{check_node5, node_output, run_node, Contender, Work};
use measure::{Pickup, RedisProbe, Sample};

/// What to run, from the environment.
pub struct Settings {
    pub jobs: u64,
    pub concurrencies: Vec<usize>,
    pub runs: usize,
    pub contenders: Vec<Contender>,
    pub io_ms: u64,
    /// `None`: no waiting-jobs phase (`BENCH_IO_CONCURRENCY=0`).
    pub io_concurrency: Option<usize>,
    pub pickup_jobs: u64,
    pub pickup_rate: u64,
    pub write: bool,
}

/// Every measurement, by phase, contender and concurrency; one entry per run.
#[derive(Default)]
pub struct Results {
    pub no_op: BTreeMap<(Contender, usize), Vec<Sample>>,
    pub waits: BTreeMap<Contender, Vec<Sample>>,
    pub pickup: BTreeMap<Contender, Vec<Pickup>>,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn number<T: std::str::FromStr>(key: &str, default: &str) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    env_or(key, default)
        .trim()
        .parse()
        .with_context(|| format!("{key} must be a number"))
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let concurrencies = env_or("BENCH_CONCURRENCY", "1,5,50,200")
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .context("BENCH_CONCURRENCY: a comma list of numbers")
            })
            .collect::<anyhow::Result<Vec<usize>>>()?;
        let contenders = match std::env::var("BENCH_CONTENDERS") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|k| {
                    Contender::from_key(k.trim()).with_context(|| {
                        let keys: Vec<_> = Contender::ALL.iter().map(|c| c.key()).collect();
                        format!("BENCH_CONTENDERS: unknown {k:?}; known: {}", keys.join(","))
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            _ => Contender::ALL.to_vec(),
        };
        let io_concurrency: usize = number("BENCH_IO_CONCURRENCY", "200")?;
        Ok(Settings {
            jobs: number("BENCH_JOBS", "20000")?,
            concurrencies,
            runs: number::<usize>("BENCH_RUNS", "3")?.max(1),
            contenders,
            io_ms: number("BENCH_IO_MS", "20")?,
            io_concurrency: (io_concurrency > 0).then_some(io_concurrency),
            pickup_jobs: number("BENCH_PICKUP_JOBS", "200")?,
            pickup_rate: number::<u64>("BENCH_PICKUP_RATE", "50")?.max(1),
            write: matches!(env_or("BENCH_WRITE", "0").as_str(), "1" | "true" | "yes"),
        })
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; the settings come from the environment only.
    let settings = Settings::from_env()?;
    ensure_node_modules()?;
    if settings.contenders.contains(&Contender::Node5) {
        check_node5()?;
    }
    let mut results = Results::default();
    for run in 1..=settings.runs {
        eprintln!("== run {run} of {}", settings.runs);
        for &c in &settings.concurrencies {
            for &contender in &settings.contenders {
                let sample = drain(contender, c, settings.jobs, Work::NoOp)
                    .with_context(|| format!("{} at concurrency {c}", contender.label()))?;
                progress(&format!("no-op c={c}"), contender, &sample);
                results
                    .no_op
                    .entry((contender, c))
                    .or_default()
                    .push(sample);
            }
        }
        if let Some(c) = settings.io_concurrency {
            for contender in settings
                .contenders
                .iter()
                .copied()
                .filter(|c| c.does_waits())
            {
                let sample = drain(contender, c, settings.jobs, Work::Wait(settings.io_ms))
                    .with_context(|| format!("{} waiting jobs", contender.label()))?;
                progress(&format!("{} ms c={c}", settings.io_ms), contender, &sample);
                results.waits.entry(contender).or_default().push(sample);
            }
        }
        if settings.pickup_jobs > 0 {
            for &contender in &settings.contenders {
                let pickup = pickup(contender, settings.pickup_jobs, settings.pickup_rate)
                    .with_context(|| format!("{} pickup latency", contender.label()))?;
                eprintln!(
                    "   pickup {:<24} p50 {:.1} ms, p99 {:.1} ms",
                    contender.label(),
                    pickup.p50_ms,
                    pickup.p99_ms
                );
                results.pickup.entry(contender).or_default().push(pickup);
            }
        }
    }
    let summary = report::Summary::new(&settings, &results);
    print!("{}", summary.text());
    if settings.write {
        summary.write_docs()?;
    }
    Ok(())
}

fn progress(phase: &str, contender: Contender, s: &Sample) {
    eprintln!(
        "   {phase:<12} {:<24} {:>8.0} jobs/s {:>6.0} µs/job cpu {:>6.0} µs/job redis {:>6.1} MiB",
        contender.label(),
        s.rate,
        s.cpu_us_per_job,
        s.redis_us_per_job,
        s.peak_rss_kib / 1024.0
    );
}

/// One drain: a fresh Redis, `jobs` jobs queued first, then the contender started and measured until the
/// last completes.
fn drain(
    contender: Contender,
    concurrency: usize,
    jobs: u64,
    work: Work,
) -> anyhow::Result<Sample> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let queue = contender.queue();
    let (kind, ms) = contender.job_kind(work);
    run_node(
        "add",
        &[&url, queue, &jobs.to_string(), kind, &ms.to_string()],
    )?;
    let mut probe = RedisProbe::connect(&url)?;
    let running = contender.start(&redis, concurrency)?;
    let sample = probe.drain(queue, jobs, running.pid());
    running.stop();
    sample
}

/// One low-load phase: a fresh Redis, the contender idle at concurrency 1 after one warm-up job, then
/// `jobs` jobs added one at a time at `rate` a second; percentiles of their pickup latency (measured by the
/// producer, `tests/node/bench.mjs trickle`).
fn pickup(contender: Contender, jobs: u64, rate: u64) -> anyhow::Result<Pickup> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    let queue = contender.queue();
    let (kind, _) = contender.job_kind(Work::NoOp);
    let mut probe = RedisProbe::connect(&url)?;
    let running = contender.start(&redis, 1)?;
    let pid = running.pid();
    let measured = (|| {
        // The warm-up job also proves the worker is consuming before the clock matters.
        run_node("add", &[&url, queue, "1", kind])?;
        probe.wait_completed(queue, 1, pid)?;
        let out = node_output(
            "trickle",
            &[&url, queue, &jobs.to_string(), &rate.to_string(), kind],
        )?;
        probe.wait_completed(queue, jobs + 1, pid)?;
        let latencies: Vec<f64> = serde_json::from_value(out["latencies"].clone())
            .context("trickle printed no latencies")?;
        anyhow::ensure!(
            latencies.len() as u64 == jobs,
            "{} latencies for {jobs} jobs",
            latencies.len()
        );
        Ok(latencies)
    })();
    running.stop();
    let mut latencies = measured?;
    latencies.sort_by(f64::total_cmp);
    Ok(Pickup {
        p50_ms: stats::percentile(&latencies, 50.0),
        p99_ms: stats::percentile(&latencies, 99.0),
    })
}
