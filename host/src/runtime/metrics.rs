//! Prometheus metrics: names, help texts, and the recorder behind `/metrics`.
//!
//! Jobs are counted by the bridge (it knows the outcome and whether a failure is final) through the queue's
//! [`QueueMetrics`]; plugin load results by the runtime at start; Redis and queue health by the queue
//! workers (`workers.rs`) and the health monitor.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const COMPLETED: &str = "frostguard_jobs_completed_total";
const FAILED: &str = "frostguard_jobs_failed_total";
const RETRIED: &str = "frostguard_jobs_retried_total";
const TIMED_OUT: &str = "frostguard_jobs_timed_out_total";
const STALLED: &str = "frostguard_jobs_stalled_total";
const DURATION: &str = "frostguard_job_duration_seconds";
const ACTIVE: &str = "frostguard_jobs_active";
const PLUGINS_LOADED: &str = "frostguard_plugins_loaded";
const PLUGINS_DISABLED: &str = "frostguard_plugins_disabled";
const PLUGIN_DISABLED: &str = "frostguard_plugin_disabled";
const QUEUE_CONSUMING: &str = "frostguard_queue_consuming";
const REDIS_UP: &str = "frostguard_redis_up";
const QUEUE_JOBS: &str = "frostguard_queue_jobs";
const QUEUE_PAUSED: &str = "frostguard_queue_paused";
const QUEUE_OLDEST_WAITING: &str = "frostguard_queue_oldest_waiting_seconds";
const QUEUE_HELD: &str = "frostguard_queue_held";
const QUEUE_HOLDS: &str = "frostguard_queue_holds_total";
const PLUGIN_EVENTS: &str = "frostguard_plugin_events_total";
const PLUGIN_CRASHES: &str = "frostguard_plugin_crashes_total";
const PLUGIN_RELOADS: &str = "frostguard_plugin_reloads_total";
const PLUGIN_SERVING: &str = "frostguard_plugin_serving";
const RETIRED_IMAGES: &str = "frostguard_plugin_retired_images";
const RETIRED_IMAGE_BYTES: &str = "frostguard_plugin_retired_image_bytes";

/// Job duration buckets in seconds: from a fast no-op to a slow provider call.
const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process-wide recorder and returns the handle `/metrics` renders.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), &DURATION_BUCKETS)
        .context("configuring histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe_counter!(COMPLETED, "Jobs whose completion Redis recorded, per queue");
    describe_counter!(
        FAILED,
        "Jobs failed for good (no attempt left or unrecoverable), per queue"
    );
    describe_counter!(
        RETRIED,
        "Jobs handed back for another run, per queue and kind (backoff, later_job, later_queue, shutdown)"
    );
    describe_counter!(
        TIMED_OUT,
        "Job attempts failed because they overran their time budget (QUEUE_<Q>_JOB_TIMEOUT_MS or the \
         plugin's hint), per queue; each is also counted as retried or failed"
    );
    describe_counter!(
        STALLED,
        "Jobs this worker's stalled check found abandoned (lock expired) and moved back to wait, per queue"
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "Time spent in the plugin per job, per queue and outcome"
    );
    describe_gauge!(ACTIVE, "Jobs running now, per queue");
    describe_gauge!(PLUGINS_LOADED, "Plugins loaded and initialised");
    describe_gauge!(PLUGINS_DISABLED, "Plugins that could not be used");
    describe_gauge!(
        PLUGIN_DISABLED,
        "1 for each disabled plugin file, labelled with the plugin, the file and the stage it failed at"
    );
    describe_gauge!(
        QUEUE_CONSUMING,
        "1 while the queue's BullMQ worker is consuming"
    );
    describe_gauge!(REDIS_UP, "1 while Redis answers the host's ping");
    describe_gauge!(
        QUEUE_JOBS,
        "Jobs in the queue per state, as Node's Queue.getJobCounts() reports them (a paused queue keeps its \
         jobs in waiting)"
    );
    describe_gauge!(QUEUE_PAUSED, "1 while the queue is paused");
    describe_gauge!(
        QUEUE_OLDEST_WAITING,
        Unit::Seconds,
        "How long the job waiting longest for a worker has been ready to run (0 when none waits)"
    );
    describe_gauge!(
        QUEUE_HELD,
        "1 while the queue is held by its plugin (e.g. rejected provider credentials), per queue and plugin"
    );
    describe_counter!(
        QUEUE_HOLDS,
        "Times a plugin held its whole queue (retry the queue later), per queue and plugin"
    );
    describe_counter!(
        PLUGIN_EVENTS,
        "Events a plugin reported by logging them with an `event` field (e.g. sms-notifications: \
         possibly_sent, credentials_rejected), per plugin and event"
    );
    describe_counter!(
        PLUGIN_CRASHES,
        "Crashes of plugin code (segfault, abort, exit): a plugin process that died, or, in in-process \
         mode, a crash of an earlier run recognised at start, per plugin"
    );
    describe_counter!(
        PLUGIN_RELOADS,
        "Plugin directory changes handled at run time, per plugin, change (new, replaced, removed) and result \
         (applied, refused)"
    );
    describe_gauge!(
        PLUGIN_SERVING,
        "1 for the version of each plugin serving its queues (0 once replaced or removed)"
    );
    describe_gauge!(
        RETIRED_IMAGES,
        "Replaced or removed plugin libraries still mapped (libraries are never unloaded)"
    );
    describe_gauge!(
        RETIRED_IMAGE_BYTES,
        Unit::Bytes,
        "Address space the retired plugin libraries keep mapped"
    );
    Ok(handle)
}

/// Counts one plugin directory change handled at run time.
pub fn plugin_change(plugin: &str, change: &'static str, applied: bool) {
    let result = if applied { "applied" } else { "refused" };
    counter!(PLUGIN_RELOADS, "plugin" => plugin.to_owned(), "change" => change, "result" => result)
        .increment(1);
}

/// Sets whether `version` of `plugin` serves.
pub fn plugin_serving(plugin: &str, version: &str, serving: bool) {
    gauge!(PLUGIN_SERVING, "plugin" => plugin.to_owned(), "version" => version.to_owned())
        .set(if serving { 1.0 } else { 0.0 });
}

/// Sets the retired-image gauges.
pub fn retired_images(count: usize, bytes: u64) {
    gauge!(RETIRED_IMAGES).set(count as f64);
    gauge!(RETIRED_IMAGE_BYTES).set(bytes as f64);
}

/// Clears the disabled gauge of one file (a fixed or removed plugin file).
pub fn plugin_enabled_again(plugin: &str, file: &str, stage: &str) {
    gauge!(PLUGIN_DISABLED, "plugin" => plugin.to_owned(), "file" => file.to_owned(), "stage" => stage.to_owned())
        .set(0.0);
}

/// Drains histogram buckets periodically so the recorder's memory stays bounded.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// How a job run ended, as the `outcome` label of the duration histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobResult {
    /// Completed.
    Completed,
    /// Failed for good.
    Failed,
    /// A retryable failure with attempts left.
    Retried,
    /// RetryLater, this job.
    LaterJob,
    /// RetryLater, the whole queue.
    LaterQueue,
    /// Put back in the queue by the shutdown drain.
    Shutdown,
}

/// Every [`JobResult`], in the order of their handles in [`QueueMetrics`].
const JOB_RESULTS: usize = 6;

impl JobResult {
    fn label(self) -> &'static str {
        match self {
            JobResult::Completed => "completed",
            JobResult::Failed => "failed",
            JobResult::Retried => "backoff",
            JobResult::LaterJob => "later_job",
            JobResult::LaterQueue => "later_queue",
            JobResult::Shutdown => "shutdown",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One queue's job metrics. Every job touches them, so each labelled series is looked up in the recorder
/// once (on its first use, so that a series appears in `/metrics` only once it has happened, as with a
/// keyed look-up) and the handle kept: a job then only adds to atomics, with no key built or hashed.
#[derive(Debug)]
pub struct QueueMetrics {
    queue: String,
    completed: OnceLock<Counter>,
    failed: OnceLock<Counter>,
    timed_out: OnceLock<Counter>,
    active: OnceLock<Gauge>,
    /// `frostguard_jobs_retried_total` per [`JobResult`] (its `kind` label); unused for completed and failed.
    retried: [OnceLock<Counter>; JOB_RESULTS],
    /// `frostguard_job_duration_seconds` per [`JobResult`] (its `outcome` label).
    duration: [OnceLock<Histogram>; JOB_RESULTS],
}

impl QueueMetrics {
    /// The metrics of `queue`, none looked up yet.
    pub fn new(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            completed: OnceLock::new(),
            failed: OnceLock::new(),
            timed_out: OnceLock::new(),
            active: OnceLock::new(),
            retried: Default::default(),
            duration: Default::default(),
        }
    }

    fn failed(&self) -> &Counter {
        self.failed
            .get_or_init(|| counter!(FAILED, "queue" => self.queue.clone()))
    }

    /// Records one finished plugin call.
    pub fn job_finished(&self, result: JobResult, elapsed: Duration) {
        match result {
            // Counted when Redis has recorded it (`job_completed`), not when the plugin returns.
            JobResult::Completed => {}
            JobResult::Failed => self.failed().increment(1),
            other => self.retried[other.index()]
                .get_or_init(
                    || counter!(RETRIED, "queue" => self.queue.clone(), "kind" => other.label()),
                )
                .increment(1),
        }
        self.duration[result.index()]
            .get_or_init(
                || histogram!(DURATION, "queue" => self.queue.clone(), "outcome" => result.label()),
            )
            .record(elapsed.as_secs_f64());
    }

    /// Records an attempt failed for overrunning its time budget (on top of its [`Self::job_finished`]
    /// record).
    pub fn job_timed_out(&self) {
        self.timed_out
            .get_or_init(|| counter!(TIMED_OUT, "queue" => self.queue.clone()))
            .increment(1);
    }

    /// Records a completion Redis has recorded (the library's `Completed` event).
    pub fn job_completed(&self) {
        self.completed
            .get_or_init(|| counter!(COMPLETED, "queue" => self.queue.clone()))
            .increment(1);
    }

    /// Records a job that failed before reaching the plugin (unknown job name, data not JSON).
    pub fn job_rejected(&self) {
        self.failed().increment(1);
    }

    /// Adjusts the running-jobs gauge.
    pub fn active(&self, delta: f64) {
        self.active
            .get_or_init(|| gauge!(ACTIVE, "queue" => self.queue.clone()))
            .increment(delta);
    }
}

/// Records a job moved back to wait by the stalled check.
pub fn job_stalled(queue: &str) {
    counter!(STALLED, "queue" => queue.to_owned()).increment(1);
}

/// Sets the plugin load gauges; `disabled` holds (plugin, file, stage) per disabled file, so two copies of
/// one plugin stay two series.
pub fn plugins(loaded: usize, disabled: &[(String, String, String)]) {
    gauge!(PLUGINS_LOADED).set(loaded as f64);
    gauge!(PLUGINS_DISABLED).set(disabled.len() as f64);
    for (plugin, file, stage) in disabled {
        gauge!(PLUGIN_DISABLED, "plugin" => plugin.clone(), "file" => file.clone(), "stage" => stage.clone())
            .set(1.0);
    }
}

/// Sets whether `queue` is consuming.
pub fn queue_consuming(queue: &str, consuming: bool) {
    gauge!(QUEUE_CONSUMING, "queue" => queue.to_owned()).set(if consuming { 1.0 } else { 0.0 });
}

/// Sets whether Redis answers.
pub fn redis_up(up: bool) {
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

/// Sets a queue's depth gauges from one snapshot.
pub fn queue_depth(queue: &str, snapshot: &crate::queue_stats::Snapshot, now_ms: u64) {
    for (state, count) in snapshot.counts.by_state() {
        gauge!(QUEUE_JOBS, "queue" => queue.to_owned(), "state" => state).set(count as f64);
    }
    gauge!(QUEUE_PAUSED, "queue" => queue.to_owned()).set(if snapshot.paused { 1.0 } else { 0.0 });
    gauge!(QUEUE_OLDEST_WAITING, "queue" => queue.to_owned())
        .set(snapshot.oldest_waiting_ms(now_ms) as f64 / 1000.0);
}

/// Sets whether `queue` is held by `plugin`; a new hold is also counted.
pub fn queue_held(queue: &str, plugin: &str, held: bool) {
    let labels = [("queue", queue.to_owned()), ("plugin", plugin.to_owned())];
    gauge!(QUEUE_HELD, &labels).set(if held { 1.0 } else { 0.0 });
    if held {
        counter!(QUEUE_HOLDS, &labels).increment(1);
    }
}

/// Counts an event a plugin reported (a forwarded log record with an `event` field).
pub fn plugin_event(plugin: &str, event: &str) {
    counter!(PLUGIN_EVENTS, "plugin" => plugin.to_owned(), "event" => event.to_owned())
        .increment(1);
}

/// Counts a crash of the plugin's code (its process died, or an earlier in-process run died in it).
pub fn plugin_crash(plugin: &str) {
    counter!(PLUGIN_CRASHES, "plugin" => plugin.to_owned()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusRecorder;

    fn recorder() -> PrometheusRecorder {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), &DURATION_BUCKETS)
            .unwrap()
            .build_recorder()
    }

    /// `/metrics` as a sorted list of lines (the exporter's order of series is not part of the format).
    fn rendered(recorder: &PrometheusRecorder) -> Vec<String> {
        let mut lines: Vec<String> = recorder
            .handle()
            .render()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    const RESULTS: [(JobResult, u64); 6] = [
        (JobResult::Completed, 3),
        (JobResult::Failed, 2_000),
        (JobResult::Retried, 20),
        (JobResult::LaterJob, 7),
        (JobResult::LaterQueue, 70),
        (JobResult::Shutdown, 40_000),
    ];

    #[test]
    fn queue_handles_render_the_series_a_lookup_by_key_did() {
        // What the bridge recorded per job before the handles: a look-up by name and labels each time.
        let keyed = recorder();
        metrics::with_local_recorder(&keyed, || {
            for (result, ms) in RESULTS {
                let q = "a".to_owned();
                gauge!(ACTIVE, "queue" => q.clone()).increment(1.0);
                match result {
                    JobResult::Completed => {}
                    JobResult::Failed => counter!(FAILED, "queue" => q.clone()).increment(1),
                    other => counter!(RETRIED, "queue" => q.clone(), "kind" => other.label())
                        .increment(1),
                }
                histogram!(DURATION, "queue" => q.clone(), "outcome" => result.label())
                    .record(Duration::from_millis(ms).as_secs_f64());
                gauge!(ACTIVE, "queue" => q).increment(-1.0);
            }
            counter!(TIMED_OUT, "queue" => "a".to_owned()).increment(1);
            counter!(COMPLETED, "queue" => "a".to_owned()).increment(1);
            counter!(FAILED, "queue" => "a".to_owned()).increment(1);
            gauge!(ACTIVE, "queue" => "b".to_owned()).increment(1.0);
        });
        let handles = recorder();
        metrics::with_local_recorder(&handles, || {
            let (a, b, unused) = (
                QueueMetrics::new("a"),
                QueueMetrics::new("b"),
                QueueMetrics::new("c"),
            );
            for (result, ms) in RESULTS {
                a.active(1.0);
                a.job_finished(result, Duration::from_millis(ms));
                a.active(-1.0);
            }
            a.job_timed_out();
            a.job_completed();
            a.job_rejected();
            b.active(1.0);
            drop(unused);
        });
        let (keyed, handles) = (rendered(&keyed), rendered(&handles));
        assert_eq!(handles, keyed);
        for line in [
            "frostguard_jobs_completed_total{queue=\"a\"} 1",
            "frostguard_jobs_failed_total{queue=\"a\"} 2",
            "frostguard_jobs_retried_total{queue=\"a\",kind=\"backoff\"} 1",
            "frostguard_jobs_retried_total{queue=\"a\",kind=\"shutdown\"} 1",
            "frostguard_jobs_timed_out_total{queue=\"a\"} 1",
            "frostguard_jobs_active{queue=\"a\"} 0",
            "frostguard_jobs_active{queue=\"b\"} 1",
            "frostguard_job_duration_seconds_count{queue=\"a\",outcome=\"later_queue\"} 1",
        ] {
            assert!(handles.iter().any(|l| l == line), "{line} in {handles:#?}");
        }
        // A series shows once it has happened, not when its queue starts.
        assert!(!handles.iter().any(|l| l.contains("queue=\"c\"")));
        assert!(!handles
            .iter()
            .any(|l| l.starts_with("frostguard_jobs_completed_total{queue=\"b\"")));
    }
}
