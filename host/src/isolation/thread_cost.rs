//! What a call cost the thread it ran on, from the kernel's accounting of that thread: its CPU time and
//! how long it was blocked (off the CPU of its own accord: asleep, in I/O, on a lock), as opposed to
//! preempted. `isolation::inline` holds inline calls and pending starts to their promise with it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// How one inline call used its thread.
#[derive(Debug, Clone, Copy)]
pub struct CallUsage {
    /// Wall-clock time (logged, and what makes an unaudited call suspect: preemption inflates it).
    pub elapsed: Duration,
    /// What the thread itself did, for an audited call.
    pub cost: Option<ThreadCost>,
}

/// The thread's own accounting of one audited call.
#[derive(Debug, Clone, Copy)]
pub struct ThreadCost {
    /// CPU time of the thread (user and system).
    pub cpu: Duration,
    /// Time the thread was off the CPU of its own accord (asleep, in I/O, on a lock), not waiting for it.
    pub blocked: Duration,
}

/// The calling thread's accounting at the start of an inline call.
pub struct CallProbe {
    started: Instant,
    /// `None` for a call that is only timed; `Some(None)` when the kernel did not say.
    at_start: Option<Option<ThreadUsage>>,
}

impl CallProbe {
    /// Reads the thread's accounting now: the call is audited.
    pub fn audited() -> CallProbe {
        CallProbe {
            started: Instant::now(),
            at_start: Some(ThreadUsage::now()),
        }
    }

    /// Reads the wall clock only: the call is timed, not audited.
    pub fn timed() -> CallProbe {
        CallProbe {
            started: Instant::now(),
            at_start: None,
        }
    }

    /// What the thread did since the probe was taken (on the same thread). Should the kernel not say, the
    /// wall-clock time stands in for the CPU time of an audited call.
    pub fn finish(self) -> CallUsage {
        let elapsed = self.started.elapsed();
        let cost = self
            .at_start
            .map(|at_start| match (at_start, ThreadUsage::now()) {
                (Some(a), Some(b)) => b.cost_since(&a, elapsed),
                _ => ThreadCost {
                    cpu: elapsed,
                    blocked: Duration::ZERO,
                },
            });
        CallUsage { elapsed, cost }
    }
}

/// A thread's accounting at one moment.
#[derive(Debug, Clone, Copy)]
struct ThreadUsage {
    /// CPU time so far.
    cpu: Duration,
    /// What tells its time off the CPU apart.
    off_cpu: OffCpu,
}

#[derive(Debug, Clone, Copy)]
enum OffCpu {
    /// The time it sat runnable, waiting for a CPU (schedstat's run delay): the rest is blocked time.
    Queued(Duration),
    /// Where the kernel keeps no schedstat: its voluntary context switches (rusage); after one, all of
    /// its time off the CPU counts as blocked.
    Switches(i64),
}

impl ThreadUsage {
    /// What the calling thread did since `start`, over a call that took `elapsed` by the wall clock.
    fn cost_since(&self, start: &ThreadUsage, elapsed: Duration) -> ThreadCost {
        let cpu = self.cpu.saturating_sub(start.cpu);
        let off = elapsed.saturating_sub(cpu);
        let blocked = match (start.off_cpu, self.off_cpu) {
            (OffCpu::Queued(a), OffCpu::Queued(b)) => off.saturating_sub(b.saturating_sub(a)),
            (OffCpu::Switches(a), OffCpu::Switches(b)) if b > a => off,
            _ => Duration::ZERO,
        };
        ThreadCost { cpu, blocked }
    }

    /// The calling thread's accounting now: its CPU time from its CPU clock, the scheduler's exact count
    /// (rusage's, and schedstat's too, are brought up to date for a running thread only at the next tick,
    /// so a short call could be charged the milliseconds before it), and its run delay from its schedstat,
    /// or its voluntary context switches from rusage where the kernel keeps no schedstat.
    fn now() -> Option<ThreadUsage> {
        // SAFETY: clock_gettime writes one `timespec` into the zeroed value it is given.
        let cpu = unsafe {
            let mut cpu: libc::timespec = std::mem::zeroed();
            if libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut cpu) != 0 {
                return None;
            }
            cpu
        };
        let cpu = Duration::new(
            cpu.tv_sec.max(0) as u64,
            cpu.tv_nsec.clamp(0, 999_999_999) as u32,
        );
        let off_cpu = SCHEDSTAT
            .with(|file| file.as_ref().and_then(run_delay))
            .map(OffCpu::Queued)
            .or_else(voluntary_switches)?;
        Some(ThreadUsage { cpu, off_cpu })
    }
}

/// The calling thread's voluntary context switches so far (rusage).
fn voluntary_switches() -> Option<OffCpu> {
    // SAFETY: getrusage writes one `rusage` into the zeroed value it is given; RUSAGE_THREAD reads the
    // calling thread's counters only.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_THREAD, &mut usage) == 0)
            .then_some(OffCpu::Switches(usage.ru_nvcsw))
    }
}

thread_local! {
    /// This thread's `/proc/thread-self/schedstat`, opened by the thread itself on its first audited call
    /// (the path names the thread that opens it) and read again from its start each time (one `pread`).
    /// `None` where the kernel keeps none.
    static SCHEDSTAT: Option<File> = File::open("/proc/thread-self/schedstat").ok();
}

/// The thread's run delay so far from its schedstat (`<ns on the CPU> <ns runnable, waiting> <slices>`).
fn run_delay(file: &File) -> Option<Duration> {
    let mut buf = [0u8; 96];
    let n = file.read_at(&mut buf, 0).ok()?;
    parse_run_delay(std::str::from_utf8(&buf[..n]).ok()?).map(Duration::from_nanos)
}

/// The run delay, the second number of a schedstat line.
fn parse_run_delay(line: &str) -> Option<u64> {
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::inline::BLOCKED_LIMIT;

    #[test]
    fn blocked_time_is_the_time_off_the_cpu_not_spent_waiting_for_it() {
        let at = |cpu_us: u64, off_cpu: OffCpu| ThreadUsage {
            cpu: Duration::from_micros(cpu_us),
            off_cpu,
        };
        let queued = |us: u64| OffCpu::Queued(Duration::from_micros(us));
        let us = Duration::from_micros;
        // (start, end, wall-clock time of the call, CPU time, blocked time)
        let table = [
            // Computing, then preempted for 3 ms: nothing blocked.
            (
                at(0, queued(0)),
                at(100, queued(3_000)),
                us(3_100),
                us(100),
                us(0),
            ),
            // A 5 ms sleep with a little queueing after it.
            (
                at(0, queued(10)),
                at(20, queued(60)),
                us(5_070),
                us(20),
                us(5_000),
            ),
            // Clocks read a little apart never make negative time.
            (
                at(0, queued(0)),
                at(120, queued(50)),
                us(150),
                us(120),
                us(0),
            ),
            // Without schedstat: no voluntary switch, nothing blocked; one, and all time off the CPU was.
            (
                at(0, OffCpu::Switches(4)),
                at(100, OffCpu::Switches(4)),
                us(3_100),
                us(100),
                us(0),
            ),
            (
                at(0, OffCpu::Switches(4)),
                at(100, OffCpu::Switches(5)),
                us(3_100),
                us(100),
                us(3_000),
            ),
        ];
        for (start, end, elapsed, cpu, blocked) in table {
            let cost = end.cost_since(&start, elapsed);
            assert_eq!(
                (cost.cpu, cost.blocked),
                (cpu, blocked),
                "{start:?} {end:?}"
            );
        }
    }

    #[test]
    fn a_schedstat_line_gives_its_run_delay() {
        assert_eq!(parse_run_delay("44362107 301303 37\n"), Some(301_303));
        assert_eq!(parse_run_delay("12"), None);
        assert_eq!(parse_run_delay("1 x 2"), None);
        assert_eq!(parse_run_delay(""), None);
    }

    #[test]
    fn the_probe_sees_a_sleep_as_blocked_and_neither_a_computation_nor_a_nap_as_more_than_the_limit(
    ) {
        let probe = CallProbe::audited();
        std::thread::sleep(Duration::from_millis(5));
        let slept = probe.finish();
        assert!(slept.cost.unwrap().blocked > BLOCKED_LIMIT, "{slept:?}");
        assert!(slept.elapsed >= Duration::from_millis(5), "{slept:?}");
        let probe = CallProbe::audited();
        let sum: u64 = (0..10_000u64).map(std::hint::black_box).sum();
        let computed = probe.finish();
        assert_eq!(sum, 49_995_000);
        assert!(
            computed.cost.unwrap().blocked <= BLOCKED_LIMIT,
            "{computed:?}"
        );
        // A nap of a microsecond is a voluntary context switch, the kind a lock handed over by another
        // thread makes; it holds nothing up. (A call can be unlucky once: the best of five counts.)
        let naps: Vec<CallUsage> = (0..5)
            .map(|_| {
                let probe = CallProbe::audited();
                std::thread::sleep(Duration::from_micros(1));
                probe.finish()
            })
            .collect();
        assert!(
            naps.iter()
                .any(|nap| nap.cost.unwrap().blocked <= BLOCKED_LIMIT),
            "{naps:?}"
        );
        let timed = CallProbe::timed();
        std::thread::sleep(Duration::from_millis(1));
        let timed = timed.finish();
        assert!(timed.cost.is_none() && timed.elapsed >= Duration::from_millis(1));
    }

    #[test]
    fn the_probe_never_counts_more_cpu_than_the_call_took() {
        // A thread cannot use more CPU than wall-clock time. The kernel's rusage of a running thread lags
        // behind (it is brought up to date at the next tick), so a probe read from it could charge a short
        // call with the milliseconds that ran before it whenever a tick fell inside the call, and demote
        // a quick job name for good. 400 calls of ~50 µs meet several ticks.
        for _ in 0..400 {
            let probe = CallProbe::audited();
            let until = Instant::now() + Duration::from_micros(50);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            let call = probe.finish();
            let cpu = call.cost.unwrap().cpu;
            assert!(
                cpu <= call.elapsed + Duration::from_micros(100),
                "a {:?} call was charged {cpu:?} of CPU",
                call.elapsed,
            );
        }
    }
}
