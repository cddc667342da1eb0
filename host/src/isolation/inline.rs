//! Inline jobs: the job names a plugin declares quick (`QueueInfo::inline_jobs`) run on the thread that
//! received them — the host's async thread in-process, the plugin process's reader thread in process mode —
//! instead of being handed to a job thread.
//!
//! A hand-off to a job thread costs two thread wake-ups per job, which for a job that takes microseconds is
//! most of what the job costs. Running a job inline is only safe while it really is quick: that thread also
//! renews locks, serves health and metrics and reads cancellations, and a call that waits holds all of that
//! up. So the promise is checked, from the kernel's accounting of the thread during the call: a call that
//! waited (the thread gave up the CPU of its own accord: a sleep, I/O, a lock held elsewhere) or computed
//! for longer than [`INLINE_LIMIT`] is logged once, and its job name goes to job threads for the rest of the
//! plugin's life. Wall-clock time is not the test: on a busy machine (or a container at its CPU quota) a
//! quick call is often preempted for milliseconds, which says nothing about the plugin.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plugin_api::PluginInfo;

/// The most CPU time an inline call may use before its job name is handed to job threads from then on.
pub const INLINE_LIMIT: Duration = Duration::from_millis(2);

/// The inline job names of one plugin, each with whether it is still run inline.
#[derive(Debug, Default)]
pub struct InlineJobs {
    /// The plugin's name, for the log line.
    plugin: String,
    names: Vec<InlineName>,
    /// Set once a pending job's `start` broke the promise (logged once).
    start_breached: AtomicBool,
}

#[derive(Debug)]
struct InlineName {
    queue: String,
    name: String,
    /// Cleared when a call of this name broke the promise (see [`broke_promise`]).
    inline: AtomicBool,
}

impl InlineJobs {
    /// The inline job names `info` declares (per queue; a name only counts on the queue that declares it,
    /// and only when the queue accepts it).
    pub fn of(info: &PluginInfo) -> InlineJobs {
        let names = info
            .queues
            .iter()
            .flat_map(|q| {
                q.inline_jobs
                    .iter()
                    // A name also declared pending is started, not run inline.
                    .filter(|name| q.accepts(name) && !q.pending_jobs.contains(name))
                    .map(|name| InlineName {
                        queue: q.queue.clone(),
                        name: name.clone(),
                        inline: AtomicBool::new(true),
                    })
            })
            .collect();
        InlineJobs {
            plugin: info.name.clone(),
            names,
            start_breached: AtomicBool::new(false),
        }
    }

    /// Whether a job `name` of `queue` runs inline now.
    pub fn runs_inline(&self, queue: &str, name: &str) -> bool {
        self.find(queue, name)
            .is_some_and(|n| n.inline.load(Ordering::Relaxed))
    }

    /// Takes note of how an inline call of `name` on `queue` went; when it broke the promise the name is
    /// handed to job threads from now on, and the first such call is logged.
    pub fn ran(&self, queue: &str, name: &str, call: &CallUsage) {
        if !broke_promise(call.cpu, call.waits) {
            return;
        }
        let Some(entry) = self.find(queue, name) else {
            return;
        };
        if entry.inline.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                plugin = %self.plugin, %queue, job_name = %name,
                elapsed_ms = call.elapsed.as_secs_f64() * 1000.0,
                cpu_ms = call.cpu.as_secs_f64() * 1000.0,
                waits = call.waits,
                limit_ms = INLINE_LIMIT.as_millis() as u64,
                "an inline job waited or computed too long and held up the thread it ran on; jobs of this name now run on job threads"
            );
        }
    }

    /// Takes note of how a pending job's `start` call went (it runs on the same thread as an inline job,
    /// under the same promise); a breach is logged once per plugin, and the job stays pending: there is no
    /// thread to hand a `start` to that would make its waiting any cheaper.
    pub fn started(&self, queue: &str, name: &str, call: &CallUsage) {
        if broke_promise(call.cpu, call.waits) && !self.start_breached.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                plugin = %self.plugin, %queue, job_name = %name,
                cpu_ms = call.cpu.as_secs_f64() * 1000.0,
                waits = call.waits,
                limit_ms = INLINE_LIMIT.as_millis() as u64,
                "a pending job's start waited or computed too long and held up the thread it ran on; start must hand the work off and return"
            );
        }
    }

    fn find(&self, queue: &str, name: &str) -> Option<&InlineName> {
        self.names
            .iter()
            .find(|n| n.name == name && n.queue == queue)
    }
}

/// Whether an inline call that used `cpu` and gave up the CPU `waits` times broke the promise of being
/// quick and never waiting.
fn broke_promise(cpu: Duration, waits: i64) -> bool {
    waits > 0 || cpu > INLINE_LIMIT
}

/// How one inline call used its thread.
#[derive(Debug, Clone, Copy)]
pub struct CallUsage {
    /// Wall-clock time (logged only: preemption inflates it).
    pub elapsed: Duration,
    /// CPU time of the thread (user and system).
    pub cpu: Duration,
    /// Voluntary context switches of the thread: the times it waited.
    pub waits: i64,
}

/// The calling thread's accounting at the start of an inline call.
pub struct CallProbe {
    started: Instant,
    at_start: Option<ThreadUsage>,
}

impl CallProbe {
    /// Reads the thread's accounting now.
    pub fn start() -> CallProbe {
        CallProbe {
            started: Instant::now(),
            at_start: ThreadUsage::now(),
        }
    }

    /// What the thread did since [`Self::start`] (on the same thread). Should the kernel not say, the
    /// wall-clock time stands in for the CPU time.
    pub fn finish(self) -> CallUsage {
        let elapsed = self.started.elapsed();
        match (self.at_start, ThreadUsage::now()) {
            (Some(a), Some(b)) => CallUsage {
                elapsed,
                cpu: b.cpu.saturating_sub(a.cpu),
                waits: b.voluntary_switches - a.voluntary_switches,
            },
            _ => CallUsage {
                elapsed,
                cpu: elapsed,
                waits: 0,
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ThreadUsage {
    cpu: Duration,
    voluntary_switches: i64,
}

impl ThreadUsage {
    /// The calling thread's CPU time and voluntary context switches so far. The CPU time is the scheduler's
    /// exact count (`CLOCK_THREAD_CPUTIME_ID`), not rusage's: for a running thread that one is brought up
    /// to date only at the next tick, so a short call could be charged the milliseconds before it.
    fn now() -> Option<ThreadUsage> {
        // SAFETY: getrusage writes one `rusage` into the zeroed value it is given; RUSAGE_THREAD reads the
        // calling thread's counters only. clock_gettime writes one `timespec`.
        let (usage, cpu) = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            if libc::getrusage(libc::RUSAGE_THREAD, &mut usage) != 0 {
                return None;
            }
            let mut cpu: libc::timespec = std::mem::zeroed();
            if libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut cpu) != 0 {
                return None;
            }
            (usage, cpu)
        };
        Some(ThreadUsage {
            cpu: Duration::new(
                cpu.tv_sec.max(0) as u64,
                cpu.tv_nsec.clamp(0, 999_999_999) as u32,
            ),
            voluntary_switches: usage.ru_nvcsw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::QueueInfo;

    fn info() -> PluginInfo {
        let queue = |queue: &str, names: &[&str], inline: &[&str]| QueueInfo {
            queue: queue.into(),
            job_names: names.iter().map(|s| s.to_string()).collect(),
            default_concurrency: 1,
            rate_limit: None,
            handles_unknown_names: false,
            timeout_ms: None,
            inline_jobs: inline.iter().map(|s| s.to_string()).collect(),
            pending_jobs: vec![],
        };
        PluginInfo {
            name: "p".into(),
            version: "1".into(),
            queues: vec![
                queue("a", &["quick", "slow"], &["quick", "not-accepted"]),
                queue("b", &["quick"], &[]),
            ],
            config_keys: vec![],
        }
    }

    #[test]
    fn only_declared_and_accepted_names_of_their_own_queue_run_inline() {
        let inline = InlineJobs::of(&info());
        // (queue, job name, runs inline)
        let table = [
            ("a", "quick", true),
            ("a", "slow", false),
            ("a", "not-accepted", false),
            ("b", "quick", false),
            ("c", "quick", false),
        ];
        for (queue, name, want) in table {
            assert_eq!(inline.runs_inline(queue, name), want, "{queue}/{name}");
        }
    }

    fn usage(elapsed_ms: u64, cpu: Duration, waits: i64) -> CallUsage {
        CallUsage {
            elapsed: Duration::from_millis(elapsed_ms),
            cpu,
            waits,
        }
    }

    #[test]
    fn a_call_that_broke_the_promise_sends_its_name_to_job_threads_for_good() {
        let inline = InlineJobs::of(&info());
        // Preempted for 50 ms but quick on the CPU and never waiting: still inline.
        inline.ran("a", "quick", &usage(50, INLINE_LIMIT, 0));
        assert!(
            inline.runs_inline("a", "quick"),
            "preemption is not the plugin's doing"
        );
        inline.ran("a", "quick", &usage(0, Duration::ZERO, 1));
        assert!(!inline.runs_inline("a", "quick"));
        inline.ran("a", "quick", &usage(0, Duration::ZERO, 0));
        assert!(
            !inline.runs_inline("a", "quick"),
            "a quick call later does not bring it back"
        );
        // Names nobody declared are ignored.
        inline.ran("a", "slow", &usage(1000, Duration::from_secs(1), 3));
        inline.ran("x", "y", &usage(1000, Duration::from_secs(1), 3));
    }

    #[test]
    fn the_promise_is_broken_by_waiting_once_or_computing_past_the_limit() {
        // (CPU time, voluntary context switches, broke the promise)
        let table = [
            (Duration::ZERO, 0, false),
            (Duration::from_micros(50), 0, false),
            (INLINE_LIMIT, 0, false),
            (INLINE_LIMIT + Duration::from_nanos(1), 0, true),
            (Duration::from_secs(30), 0, true),
            (Duration::ZERO, 1, true),
            (Duration::from_micros(50), 12, true),
        ];
        for (cpu, waits, want) in table {
            assert_eq!(broke_promise(cpu, waits), want, "{cpu:?} {waits}");
        }
    }

    #[test]
    fn the_probe_sees_a_sleep_as_a_wait_and_a_computation_as_none() {
        let probe = CallProbe::start();
        std::thread::sleep(Duration::from_millis(5));
        let slept = probe.finish();
        assert!(slept.waits >= 1, "{slept:?}");
        assert!(slept.elapsed >= Duration::from_millis(5), "{slept:?}");
        let probe = CallProbe::start();
        let sum: u64 = (0..10_000u64).map(std::hint::black_box).sum();
        let computed = probe.finish();
        assert_eq!(sum, 49_995_000);
        assert_eq!(computed.waits, 0, "{computed:?}");
    }

    #[test]
    fn the_probe_never_counts_more_cpu_than_the_call_took() {
        // A thread cannot use more CPU than wall-clock time. The kernel's rusage of a running thread lags
        // behind (it is brought up to date at the next tick), so a probe read from it could charge a short
        // call with the milliseconds that ran before it whenever a tick fell inside the call, and demote
        // a quick job name for good. 400 calls of ~50 µs meet several ticks.
        for _ in 0..400 {
            let probe = CallProbe::start();
            let until = Instant::now() + Duration::from_micros(50);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            let call = probe.finish();
            assert!(
                call.cpu <= call.elapsed + Duration::from_micros(100),
                "a {:?} call was charged {:?} of CPU",
                call.elapsed,
                call.cpu
            );
        }
    }
}
