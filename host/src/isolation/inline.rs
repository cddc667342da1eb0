//! Inline jobs: the job names a plugin declares quick (`QueueInfo::inline_jobs`) run on the thread that
//! received them — the host's async thread in-process, the plugin process's reader thread in process mode —
//! instead of being handed to a job thread.
//!
//! A hand-off to a job thread costs two thread wake-ups per job, which for a job that takes microseconds is
//! most of what the job costs. Running a job inline is only safe while it really is quick: that thread also
//! renews locks, serves health and metrics and reads cancellations, and a call that waits holds all of that
//! up. So the promise is checked, from the kernel's accounting of the thread during the call: a call that
//! waited (the thread gave up the CPU of its own accord: a sleep, I/O, a lock held elsewhere) or computed
//! for longer than [`INLINE_LIMIT`] breaks the promise; two audited calls in a row that broke it are logged
//! once, and the job name goes to job threads for the rest of the plugin's life. Wall-clock time is not the
//! test: on a busy machine (or a container at its CPU quota) a quick call is often preempted for
//! milliseconds, which says nothing about the plugin.
//!
//! "Waited" means blocked for longer than [`BLOCKED_LIMIT`]: the call's wall-clock time less its CPU time
//! and less the time it sat runnable in the scheduler's queue (`/proc/thread-self/schedstat`). A lock
//! handed over by another thread or a timer's slack blocks a thread for microseconds, and a plugin that
//! does that holds nothing up; counting every voluntary context switch as a wait demoted correct plugins
//! (the test plugin's pending `start`, which pushes onto a list its timer thread also locks, was reported
//! in most 20 ms benchmark runs). Where the kernel keeps no schedstat, any voluntary context switch makes
//! the whole time off the CPU count as blocked, as before. One call can still be unlucky (the thread
//! holding a lock it needed was preempted), so a breach takes a second one in the next audited call to
//! count; a plugin that really blocks does so again at once.
//!
//! Reading the thread's accounting (`isolation::thread_cost`) takes two system calls before the call and
//! two after, which for a job of a few microseconds was a tenth of the host's CPU. So not every call is
//! audited (see [`Audit`]): a name's first calls are, then a random one in [`AUDIT_ONE_IN`], and every call
//! for a while after one that held the thread longer than [`SUSPECT_AFTER`] by the wall clock (which is
//! read on every call: it costs no system call) or broke the promise once. Only audited calls can send a
//! name to job threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use plugin_api::PluginInfo;

use super::thread_cost::{CallProbe, CallUsage, ThreadCost};

/// The most CPU time an inline call may use before its job name is handed to job threads from then on.
pub const INLINE_LIMIT: Duration = Duration::from_millis(2);

/// The longest an inline call may be blocked (off the CPU of its own accord, not waiting for it) and still
/// count as not having waited: above a lock handed over by another thread and a timer's default slack
/// (50 µs), far below any network or disk I/O worth the name.
pub const BLOCKED_LIMIT: Duration = Duration::from_micros(200);

/// How many first calls of a name are all audited.
pub const AUDIT_FIRST: u64 = 100;
/// After its first calls, a name's calls are audited one in this many, at random.
pub const AUDIT_ONE_IN: u64 = 32;
/// An unaudited call that held the thread this long by the wall clock puts the name's next
/// [`AUDIT_AFTER_SUSPECT`] calls under audit: it either was preempted or waited, and only an audit tells.
pub const SUSPECT_AFTER: Duration = Duration::from_micros(500);
/// How many calls are audited after a suspect one.
pub const AUDIT_AFTER_SUSPECT: u64 = 32;

/// Which calls of one job name (or of a plugin's pending starts) are audited: numbers the calls and says,
/// for each, whether the thread's accounting is read around it.
#[derive(Debug)]
pub struct Audit {
    /// Calls numbered so far.
    calls: AtomicU64,
    /// Every call numbered below this is audited.
    audit_until: AtomicU64,
    /// Whether the last audited call broke the promise.
    struck: AtomicBool,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            calls: AtomicU64::new(0),
            audit_until: AtomicU64::new(AUDIT_FIRST),
            struck: AtomicBool::new(false),
        }
    }
}

impl Audit {
    /// Numbers the next call and says whether it is audited.
    fn next_call(&self) -> bool {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        n < self.audit_until.load(Ordering::Relaxed) || sampled(n)
    }

    /// Takes note of a call that was not audited; a suspect one puts the next calls under audit.
    fn unaudited(&self, elapsed: Duration) {
        if elapsed > SUSPECT_AFTER {
            self.audit_next();
        }
    }

    /// Puts the next [`AUDIT_AFTER_SUSPECT`] calls under audit.
    fn audit_next(&self) {
        let next = self.calls.load(Ordering::Relaxed);
        self.audit_until
            .fetch_max(next.saturating_add(AUDIT_AFTER_SUSPECT), Ordering::Relaxed);
    }

    /// Takes note of an audited call that did or did not break the promise; true when the audited call
    /// before it broke it too. A first breach puts the next calls under audit, so
    /// the second look comes at once.
    fn audited(&self, breached: bool) -> bool {
        let twice = self.struck.swap(breached, Ordering::Relaxed) && breached;
        if breached && !twice {
            self.audit_next();
        }
        twice
    }

    /// The probe for the next call: audited or only timed.
    pub fn probe(&self) -> CallProbe {
        if self.next_call() {
            CallProbe::audited()
        } else {
            CallProbe::timed()
        }
    }
}

/// Whether call number `n` is one of the random one in [`AUDIT_ONE_IN`]: the call number scrambled
/// (splitmix64's finaliser), so that a plugin that waits every k-th call is met as often as any other.
fn sampled(n: u64) -> bool {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % AUDIT_ONE_IN == 0
}

/// The inline job names of one plugin, each with whether it is still run inline.
#[derive(Debug, Default)]
pub struct InlineJobs {
    /// The plugin's name, for the log line.
    plugin: String,
    names: Vec<InlineName>,
    /// Which pending starts are audited (they run under the same promise).
    starts: Audit,
    /// Set once a pending job's `start` broke the promise (logged once).
    start_breached: AtomicBool,
}

#[derive(Debug)]
struct InlineName {
    queue: String,
    name: String,
    /// Cleared when a call of this name broke the promise (see [`broke_promise`]).
    inline: AtomicBool,
    audit: Audit,
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
                        audit: Audit::default(),
                    })
            })
            .collect();
        InlineJobs {
            plugin: info.name.clone(),
            names,
            starts: Audit::default(),
            start_breached: AtomicBool::new(false),
        }
    }

    /// The probe for the next inline call of `name` on `queue` (audited or only timed, see [`Audit`]).
    pub fn probe(&self, queue: &str, name: &str) -> CallProbe {
        match self.find(queue, name) {
            Some(n) => n.audit.probe(),
            None => CallProbe::timed(),
        }
    }

    /// The probe for the next pending job's `start`.
    pub fn start_probe(&self) -> CallProbe {
        self.starts.probe()
    }

    /// Whether a job `name` of `queue` runs inline now.
    pub fn runs_inline(&self, queue: &str, name: &str) -> bool {
        self.find(queue, name)
            .is_some_and(|n| n.inline.load(Ordering::Relaxed))
    }

    /// Takes note of how an inline call of `name` on `queue` went; when it broke the promise in two audited
    /// calls in a row the name is handed to job threads from now on, and that is logged once.
    pub fn ran(&self, queue: &str, name: &str, call: &CallUsage) {
        let Some(entry) = self.find(queue, name) else {
            return;
        };
        let Some(cost) = call.cost else {
            entry.audit.unaudited(call.elapsed);
            return;
        };
        if !entry.audit.audited(broke_promise(cost)) {
            return;
        }
        if entry.inline.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                plugin = %self.plugin, %queue, job_name = %name,
                elapsed_ms = call.elapsed.as_secs_f64() * 1000.0,
                cpu_ms = cost.cpu.as_secs_f64() * 1000.0,
                blocked_ms = cost.blocked.as_secs_f64() * 1000.0,
                limit_ms = INLINE_LIMIT.as_millis() as u64,
                "an inline job waited or computed too long and held up the thread it ran on; jobs of this name now run on job threads"
            );
        }
    }

    /// Takes note of how a pending job's `start` call went (it runs on the same thread as an inline job,
    /// under the same promise); two audited starts in a row that broke it are logged, once per plugin, and
    /// the job stays pending: there is no thread to hand a `start` to that would make its waiting any
    /// cheaper.
    pub fn started(&self, queue: &str, name: &str, call: &CallUsage) {
        let Some(cost) = call.cost else {
            self.starts.unaudited(call.elapsed);
            return;
        };
        if self.starts.audited(broke_promise(cost))
            && !self.start_breached.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                plugin = %self.plugin, %queue, job_name = %name,
                cpu_ms = cost.cpu.as_secs_f64() * 1000.0,
                blocked_ms = cost.blocked.as_secs_f64() * 1000.0,
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

/// Whether an inline call that cost its thread `cost` broke the promise of being quick and never waiting.
fn broke_promise(cost: ThreadCost) -> bool {
    cost.cpu > INLINE_LIMIT || cost.blocked > BLOCKED_LIMIT
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

    fn usage(elapsed_ms: u64, cpu: Duration, blocked: Duration) -> CallUsage {
        CallUsage {
            elapsed: Duration::from_millis(elapsed_ms),
            cost: Some(ThreadCost { cpu, blocked }),
        }
    }

    fn timed(elapsed: Duration) -> CallUsage {
        CallUsage {
            elapsed,
            cost: None,
        }
    }

    const SLEPT: Duration = Duration::from_millis(50);

    #[test]
    fn two_audited_calls_in_a_row_that_broke_the_promise_send_the_name_to_job_threads_for_good() {
        let inline = InlineJobs::of(&info());
        let ran = |cpu, blocked| inline.ran("a", "quick", &usage(50, cpu, blocked));
        // Preempted for 50 ms but quick on the CPU and never blocked: still inline.
        ran(INLINE_LIMIT, Duration::ZERO);
        assert!(
            inline.runs_inline("a", "quick"),
            "preemption is not the plugin's doing"
        );
        // One breach alone, then a call that kept the promise: still inline.
        ran(Duration::ZERO, SLEPT);
        ran(Duration::ZERO, Duration::ZERO);
        assert!(inline.runs_inline("a", "quick"));
        ran(Duration::ZERO, SLEPT);
        assert!(
            inline.runs_inline("a", "quick"),
            "one breach may be bad luck"
        );
        ran(Duration::from_secs(1), Duration::ZERO);
        assert!(!inline.runs_inline("a", "quick"), "two in a row are not");
        ran(Duration::ZERO, Duration::ZERO);
        assert!(
            !inline.runs_inline("a", "quick"),
            "a quick call later does not bring it back"
        );
        // Names nobody declared are ignored.
        inline.ran("a", "slow", &usage(1000, Duration::from_secs(1), SLEPT));
        inline.ran("x", "y", &usage(1000, Duration::from_secs(1), SLEPT));
    }

    #[test]
    fn the_promise_is_broken_by_blocking_or_computing_past_the_limits() {
        // (CPU time, blocked time, broke the promise)
        let table = [
            (Duration::ZERO, Duration::ZERO, false),
            (Duration::from_micros(50), Duration::from_micros(60), false),
            (INLINE_LIMIT, BLOCKED_LIMIT, false),
            (INLINE_LIMIT + Duration::from_nanos(1), Duration::ZERO, true),
            (Duration::from_secs(30), Duration::ZERO, true),
            (
                Duration::ZERO,
                BLOCKED_LIMIT + Duration::from_nanos(1),
                true,
            ),
            (Duration::from_micros(50), Duration::from_millis(20), true),
        ];
        for (cpu, blocked, want) in table {
            assert_eq!(
                broke_promise(ThreadCost { cpu, blocked }),
                want,
                "{cpu:?} {blocked:?}"
            );
        }
    }

    /// Whether the next `n` calls of `audit` are audited.
    fn audited_calls(audit: &Audit, n: u64) -> Vec<bool> {
        (0..n).map(|_| audit.next_call()).collect()
    }

    #[test]
    fn the_first_calls_are_all_audited_then_about_one_in_32() {
        let audit = Audit::default();
        assert!(audited_calls(&audit, AUDIT_FIRST).iter().all(|a| *a));
        let later = audited_calls(&audit, 32_000);
        let share = later.iter().filter(|a| **a).count();
        assert!((700..1300).contains(&share), "{share} of 32000 audited");
        // Not every 32nd call: a plugin that waits on a fixed period is met like any other.
        let first = later.iter().position(|a| *a).unwrap();
        let gaps: std::collections::BTreeSet<usize> = later
            .iter()
            .enumerate()
            .skip(first)
            .filter(|(_, a)| **a)
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect();
        assert!(gaps.len() > 10, "gaps between audits: {gaps:?}");
    }

    #[test]
    fn a_suspect_call_puts_the_next_calls_under_audit() {
        let audit = Audit::default();
        audited_calls(&audit, AUDIT_FIRST + 1000);
        // (wall time of an unaudited call, whether the next AUDIT_AFTER_SUSPECT calls are all audited)
        let table = [
            (SUSPECT_AFTER, false),
            (SUSPECT_AFTER + Duration::from_nanos(1), true),
            (Duration::from_millis(40), true),
        ];
        for (elapsed, all_audited) in table {
            audited_calls(&audit, 1000);
            audit.unaudited(elapsed);
            let next = audited_calls(&audit, AUDIT_AFTER_SUSPECT);
            assert_eq!(next.iter().all(|a| *a), all_audited, "{elapsed:?}");
        }
    }

    #[test]
    fn only_audited_calls_send_a_name_to_job_threads() {
        let inline = InlineJobs::of(&info());
        // Past its first calls, a slow call that was only timed makes the name suspect, not demoted.
        for _ in 0..AUDIT_FIRST {
            inline.probe("a", "quick").finish();
        }
        inline.ran("a", "quick", &timed(Duration::from_millis(30)));
        assert!(inline.runs_inline("a", "quick"));
        // Its next calls are audited; two in a row that slept send the name to job threads.
        for _ in 0..2 {
            let probe = inline.probe("a", "quick");
            std::thread::sleep(Duration::from_millis(2));
            let call = probe.finish();
            assert!(
                call.cost.is_some(),
                "the calls after a suspect one are audited"
            );
            inline.ran("a", "quick", &call);
        }
        assert!(!inline.runs_inline("a", "quick"));
    }

    #[test]
    fn a_pending_start_is_reported_after_two_audited_breaches_in_a_row() {
        let inline = InlineJobs::of(&info());
        let started = |blocked| inline.started("a", "wait", &usage(1, Duration::ZERO, blocked));
        let reported = || inline.start_breached.load(Ordering::Relaxed);
        started(SLEPT);
        started(Duration::from_micros(60));
        started(SLEPT);
        assert!(
            !reported(),
            "breaches apart, and a start blocked only briefly"
        );
        started(SLEPT);
        assert!(reported());
    }

    #[test]
    fn a_breach_puts_the_next_calls_under_audit() {
        let audit = Audit::default();
        audited_calls(&audit, AUDIT_FIRST + 1000);
        assert!(!audit.audited(true), "a first breach");
        assert!(audited_calls(&audit, AUDIT_AFTER_SUSPECT)
            .iter()
            .all(|a| *a));
        assert!(
            !audit.audited(false),
            "kept the promise: the strike is gone"
        );
        assert!(!audit.audited(true));
        assert!(audit.audited(true), "a second breach in a row");
    }
}
