//! Inline jobs: the job names a plugin declares quick (`QueueInfo::inline_jobs`) run on the thread that
//! received them — the host's async thread in-process, the plugin process's reader thread in process mode —
//! instead of being handed to a job thread.
//!
//! A hand-off to a job thread costs two thread wake-ups per job, which for a job that takes microseconds is
//! most of what the job costs. Running a job inline is only safe while it really is quick: that thread also
//! renews locks, serves health and metrics and reads cancellations, and a call that waits holds all of that
//! up. So the promise is checked: a call that takes longer than [`INLINE_LIMIT`] is logged once and its job
//! name goes to job threads for the rest of the plugin's life.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use plugin_api::PluginInfo;

/// The longest an inline call may take before its job name is handed to job threads from then on.
pub const INLINE_LIMIT: Duration = Duration::from_millis(2);

/// The inline job names of one plugin, each with whether it is still run inline.
#[derive(Debug, Default)]
pub struct InlineJobs {
    names: Vec<InlineName>,
}

#[derive(Debug)]
struct InlineName {
    queue: String,
    name: String,
    /// Cleared when a call of this name overran [`INLINE_LIMIT`].
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
                    .filter(|name| q.accepts(name))
                    .map(|name| InlineName {
                        queue: q.queue.clone(),
                        name: name.clone(),
                        inline: AtomicBool::new(true),
                    })
            })
            .collect();
        InlineJobs { names }
    }

    /// Whether a job `name` of `queue` runs inline now.
    pub fn runs_inline(&self, queue: &str, name: &str) -> bool {
        self.find(queue, name)
            .is_some_and(|n| n.inline.load(Ordering::Relaxed))
    }

    /// Takes note that an inline call of `name` on `queue` took `elapsed`; when that broke the promise the
    /// name is handed to job threads from now on, and the first such call is logged.
    pub fn ran(&self, plugin: &str, queue: &str, name: &str, elapsed: Duration) {
        if !overran(elapsed) {
            return;
        }
        let Some(entry) = self.find(queue, name) else {
            return;
        };
        if entry.inline.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                %plugin, %queue, job_name = %name,
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                limit_ms = INLINE_LIMIT.as_millis() as u64,
                "an inline job took too long and held up the thread it ran on; jobs of this name now run on job threads"
            );
        }
    }

    fn find(&self, queue: &str, name: &str) -> Option<&InlineName> {
        self.names
            .iter()
            .find(|n| n.name == name && n.queue == queue)
    }
}

/// Whether an inline call that took `elapsed` broke the promise of being quick.
fn overran(elapsed: Duration) -> bool {
    elapsed > INLINE_LIMIT
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

    #[test]
    fn a_call_over_the_limit_sends_its_name_to_job_threads_for_good() {
        let inline = InlineJobs::of(&info());
        inline.ran("p", "a", "quick", INLINE_LIMIT);
        assert!(
            inline.runs_inline("a", "quick"),
            "at the limit is still quick"
        );
        inline.ran("p", "a", "quick", INLINE_LIMIT + Duration::from_micros(1));
        assert!(!inline.runs_inline("a", "quick"));
        inline.ran("p", "a", "quick", Duration::ZERO);
        assert!(
            !inline.runs_inline("a", "quick"),
            "a quick call later does not bring it back"
        );
        // Names nobody declared are ignored.
        inline.ran("p", "a", "slow", Duration::from_secs(1));
        inline.ran("p", "x", "y", Duration::from_secs(1));
    }

    #[test]
    fn overrun_is_strictly_above_the_limit() {
        // (elapsed, overran)
        let table = [
            (Duration::ZERO, false),
            (Duration::from_micros(50), false),
            (INLINE_LIMIT, false),
            (INLINE_LIMIT + Duration::from_nanos(1), true),
            (Duration::from_secs(30), true),
        ];
        for (elapsed, want) in table {
            assert_eq!(overran(elapsed), want, "{elapsed:?}");
        }
    }
}
