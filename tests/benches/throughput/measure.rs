//! What the benchmark reads while a contender works: CPU time and peak RSS of a process and its descendants
//! from `/proc`, the redis-server's own CPU time, and the drain of a queue (jobs/s from the first completed
//! job to the last).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use frostguard_tests::process_tree;

/// Figures of one drain of a queue by one contender.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Jobs completed per second between the first and the last completion seen.
    pub rate: f64,
    /// User + system CPU of the worker process and its descendants, per job, over the same interval.
    pub cpu_us_per_job: f64,
    /// User + system CPU of the redis-server process, per job, over the same interval.
    pub redis_us_per_job: f64,
    /// Redis CPU seconds per wall second over the interval (1.0 = one core busy all the time).
    pub redis_busy: f64,
    /// Peak resident set (VmHWM), summed over the worker process and its descendants, in KiB.
    pub peak_rss_kib: f64,
}

/// Pickup latency of one low-load phase, in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pickup {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// How often the completed count is read while a queue drains. One `ZCARD` on a kept connection costs Redis a
/// few microseconds: well under 1 % of its CPU at any measured rate.
const POLL: Duration = Duration::from_millis(2);
/// A drain with no completion for this long has failed (a contender that stopped working).
const STALL: Duration = Duration::from_secs(60);

/// `/proc/<pid>/stat`: user + system CPU in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: the fields after it start at the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Whether `pid` is running (exists and is not a zombie waiting to be reaped).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| {
            text.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// CPU seconds (user + system, all threads) used so far by `pids` together.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter().filter_map(|p| cpu_ticks(*p)).sum::<u64>() as f64 / ticks
}

/// Peak resident set (VmHWM) of `pids` summed, in KiB. The kernel keeps the high-water mark per process, so
/// no sampling is needed while the processes live.
pub fn peak_rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// A kept connection to the benchmark's Redis.
pub struct RedisProbe {
    conn: redis::Connection,
    /// The redis-server's pid (from `INFO server`), whose CPU is read from `/proc`.
    pub pid: u32,
}

impl RedisProbe {
    pub fn connect(url: &str) -> anyhow::Result<RedisProbe> {
        let mut conn = redis::Client::open(url)?
            .get_connection()
            .context("connect to the benchmark's redis-server")?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut conn)?;
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
            .context("INFO server has no process_id")?;
        Ok(RedisProbe { conn, pid })
    }

    /// Number of jobs in the queue's completed set (prefix `bull`).
    pub fn completed(&mut self, queue: &str) -> anyhow::Result<u64> {
        Ok(redis::cmd("ZCARD")
            .arg(format!("bull:{queue}:completed"))
            .query(&mut self.conn)?)
    }

    /// Waits until `count` jobs of `queue` have completed; fails if the worker `pid` exits first or no job
    /// completes for [`STALL`].
    pub fn wait_completed(&mut self, queue: &str, count: u64, pid: u32) -> anyhow::Result<u64> {
        let mut last = (u64::MAX, Instant::now());
        loop {
            let n = self.completed(queue)?;
            if n >= count {
                return Ok(n);
            }
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(1) && !is_running(pid) {
                bail!("the worker exited after {n} of {count} jobs");
            } else if last.1.elapsed() > STALL {
                bail!("only {n} of {count} jobs completed; none for {STALL:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Measures the drain of `jobs` queued jobs by the worker process `worker_pid` (and its descendants):
    /// from the first completion seen to the last, with CPU read at both ends and peak RSS at the end.
    pub fn drain(&mut self, queue: &str, jobs: u64, worker_pid: u32) -> anyhow::Result<Sample> {
        let first_count = self.wait_completed(queue, 1, worker_pid)?;
        let started = Instant::now();
        let worker_cpu = cpu_seconds(&process_tree(worker_pid));
        let redis_cpu = cpu_seconds(&[self.pid]);
        self.wait_completed(queue, jobs, worker_pid)?;
        let wall = started.elapsed().as_secs_f64();
        let tree = process_tree(worker_pid);
        let worker_cpu = cpu_seconds(&tree) - worker_cpu;
        let redis_cpu = cpu_seconds(&[self.pid]) - redis_cpu;
        let done = jobs.saturating_sub(first_count);
        if done == 0 {
            bail!("all {jobs} jobs completed before the first poll: raise BENCH_JOBS");
        }
        let done = done as f64;
        Ok(Sample {
            rate: done / wall,
            cpu_us_per_job: worker_cpu * 1e6 / done,
            redis_us_per_job: redis_cpu * 1e6 / done,
            redis_busy: redis_cpu / wall,
            peak_rss_kib: peak_rss_kib(&tree) as f64,
        })
    }
}
