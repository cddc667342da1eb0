//! The values that cross the plugin boundary as JSON: what a plugin says about itself, the view of one job,
//! the outcome of processing it, and the plugin's configuration.
//!
//! They travel as JSON text inside `RString`s rather than as `#[repr(C)]` structs so that fields can be added
//! in either direction without an ABI break: an older reader ignores unknown fields, a newer reader fills
//! missing ones from serde defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// What a plugin provides, reported once at load time by `describe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginInfo {
    /// Short, unique name (`sms-notifications`); used in logs, metrics and configuration prefixes.
    pub name: String,
    /// The plugin's own version (semver), shown by `frostguard-worker plugins`.
    pub version: String,
    /// The queues this plugin consumes; one BullMQ worker is started per entry. (In the JSON `describe`
    /// returns across the ABI the field keeps its first name, `processors`.)
    #[serde(rename = "processors")]
    pub queues: Vec<QueueInfo>,
    /// Environment variable names the plugin reads unprefixed (e.g. `TELNYX_API_KEY`), so that existing
    /// deployments keep their variable names. `PLUGIN_<NAME>_<KEY>` overrides each of them.
    #[serde(default)]
    pub config_keys: Vec<String>,
}

/// One queue served by a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfo {
    /// BullMQ queue name, without prefix (`sms-notifications`).
    pub queue: String,
    /// Job names accepted on this queue; any other name fails unrecoverably without reaching the plugin.
    pub job_names: Vec<String>,
    /// Concurrency used when the operator sets none.
    #[serde(default = "one")]
    pub default_concurrency: u32,
    /// A provider limit the host applies as the worker's rate limiter unless the operator overrides it.
    #[serde(default)]
    pub rate_limit: Option<RateLimitHint>,
    /// Hand jobs whose name is not in `job_names` to the plugin anyway, which must then fail them itself
    /// (unrecoverably), for example to record the failure in its own store. By default the host fails such
    /// jobs without calling the plugin.
    #[serde(default)]
    pub handles_unknown_names: bool,
    /// The plugin's suggested per-job time budget in milliseconds: how long one `process` call may
    /// reasonably take, including the plugin's own timeouts (HTTP, SQL). The host turns it into the job's
    /// deadline (`JobView::deadline_ms`) and signals cancellation once it passes, unless the operator sets
    /// `QUEUE_<Q>_JOB_TIMEOUT_MS`. `None` means no time budget: the job runs as long as it takes.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Job names whose `process` call is quick and never waits: no network or disk I/O, no sleep, no lock
    /// another thread may hold, done in microseconds. The host may run such a job on the thread that
    /// fetched it instead of handing it to a job thread, which saves two thread wake-ups per job (most of
    /// what a very short job costs). Calls that nevertheless wait (sleep, do I/O, block on a lock for more
    /// than a moment) or compute for more than a couple of milliseconds, twice in a row, are logged and their
    /// job name is run on job threads from then on. Empty (the default): every job is handed
    /// to a job thread.
    #[serde(default)]
    pub inline_jobs: Vec<String>,
    /// Job names the plugin completes later instead of returning from `process`: the host calls
    /// [`crate::Plugin::start`] for them on the thread that received the job, which hands the work to the
    /// plugin's own threads (a timer, an async client) and returns at once; the plugin then completes the
    /// [`crate::PendingJob`] from whichever thread finishes it. No host thread is held while such a job waits,
    /// which is what a job that spends its time waiting for a provider should cost. Empty (the default): every
    /// job goes through `process`. A host older than this field ignores it and calls `process`.
    #[serde(default)]
    pub pending_jobs: Vec<String>,
}

impl PluginInfo {
    /// The description of `queue`, if this plugin serves it.
    pub fn queue(&self, queue: &str) -> Option<&QueueInfo> {
        self.queues.iter().find(|q| q.queue == queue)
    }
}

impl QueueInfo {
    /// Whether jobs named `name` are handed to the plugin.
    pub fn accepts(&self, name: &str) -> bool {
        self.handles_unknown_names || self.job_names.iter().any(|n| n == name)
    }

    /// The reason a job named `name` is refused, as stored in the job's `failedReason`.
    pub fn rejection(&self, name: &str) -> String {
        format!(
            "unknown job name {name:?} for queue {} (accepted: {})",
            self.queue,
            self.job_names.join(", ")
        )
    }
}

fn one() -> u32 {
    1
}

/// At most `max` jobs started per `duration_ms`, across all workers of the queue (BullMQ's limiter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitHint {
    /// Jobs per window.
    pub max: u64,
    /// Window length in milliseconds.
    pub duration_ms: u64,
}

/// The job options a processor may need to decide how to fail (BullMQ's stored `opts`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobOpts {
    /// Total attempts allowed (`0` means one attempt, as in BullMQ).
    #[serde(default)]
    pub attempts: u32,
    /// The backoff setting as the producer stored it (`{"type":"exponential","delay":2000}` or a number).
    #[serde(default)]
    pub backoff: Option<Value>,
    /// Delay in ms requested when the job was added.
    #[serde(default)]
    pub delay: Option<u64>,
    /// BullMQ priority (0 = none).
    #[serde(default)]
    pub priority: Option<u64>,
}

/// One job as a processor sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// BullMQ job id.
    pub id: String,
    /// Job name (`sms:send`).
    pub name: String,
    /// Queue the job came from.
    pub queue: String,
    /// The job data: the JSON value the producer stored, object keys in the producer's order (the host may
    /// re-serialise it, so number formatting and string escapes can differ from the producer's text).
    pub data: Box<RawValue>,
    /// Attempts already made before this one (BullMQ `attemptsMade`).
    pub attempts_made: u32,
    /// Attempts started, including this one (BullMQ `attemptsStarted`).
    #[serde(default)]
    pub attempts_started: u32,
    /// The job's options.
    #[serde(default)]
    pub opts: JobOpts,
    /// Creation time, ms since the Unix epoch.
    pub timestamp: u64,
    /// Unix time in ms after which the host cancels the job, if any.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

impl JobView {
    /// Parses the job data into the processor's own type.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }

    /// Attempts allowed in total; BullMQ treats `attempts: 0` as a single attempt.
    pub fn max_attempts(&self) -> u32 {
        self.opts.attempts.max(1)
    }

    /// True when a retryable failure now would be final, so side effects that mark "given up" belong here.
    pub fn is_last_attempt(&self) -> bool {
        self.attempts_made + 1 >= self.max_attempts()
    }

    /// Time left before the host's deadline, or `None` when the job has no deadline.
    pub fn time_left(&self) -> Option<Duration> {
        let deadline = self.deadline_ms?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Some(Duration::from_millis(deadline.saturating_sub(now)))
    }
}

/// Whom a [`Outcome::RetryLater`] pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryScope {
    /// Only this job waits (it is moved to delayed).
    Job,
    /// The whole queue waits: the provider is rate-limiting us or rejects our credentials.
    Queue,
}

/// What became of one job.
///
/// On the wire an object tagged by `status` (`{"status":"completed","result":…}`), `status` first. Its
/// reading is written out in `outcome_wire.rs` rather than derived: the derived reading of a tagged enum
/// buffers the whole object before looking at the tag, once per job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum Outcome {
    /// The work was done; `result` becomes the job's `returnvalue`.
    Completed {
        /// JSON result visible to Node as `job.returnvalue`.
        result: Value,
    },
    /// The work failed. Retryable failures consume an attempt and follow the job's backoff;
    /// unrecoverable ones fail the job now.
    Failed {
        /// Becomes the job's `failedReason`.
        message: String,
        /// Skip the remaining attempts.
        unrecoverable: bool,
        /// What else is known about the failure (error type, causes, panic location); the host writes it
        /// into the job's `stacktrace` entry for this attempt. Optional on the wire, so outcomes of plugins
        /// built before it existed still parse.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<FailureDetail>,
    },
    /// Not the job's fault: try again after `delay_ms` without consuming an attempt.
    #[serde(rename_all = "camelCase")]
    RetryLater {
        /// How long to wait.
        delay_ms: u64,
        /// This job only, or the whole queue.
        scope: RetryScope,
        /// Why; logged by the host.
        reason: String,
    },
}

impl Outcome {
    /// The job succeeded with `result`.
    pub fn completed(result: Value) -> Self {
        Outcome::Completed { result }
    }

    /// A failure worth retrying under the job's attempts and backoff.
    pub fn failed(message: impl Into<String>) -> Self {
        Outcome::Failed {
            message: message.into(),
            unrecoverable: false,
            detail: None,
        }
    }

    /// A failure no retry can fix (bad data, a permanent provider rejection).
    pub fn unrecoverable(message: impl Into<String>) -> Self {
        Outcome::Failed {
            message: message.into(),
            unrecoverable: true,
            detail: None,
        }
    }

    /// A retryable failure caused by `error`: its `Display` becomes the `failedReason`, and its type and
    /// source chain go into the job's stacktrace entry (Bull Board's Error tab).
    pub fn failed_with<E: std::error::Error + ?Sized>(error: &E) -> Self {
        Outcome::Failed {
            message: error.to_string(),
            unrecoverable: false,
            detail: Some(FailureDetail::of(error)),
        }
    }

    /// An unrecoverable failure caused by `error`, recorded like [`Outcome::failed_with`].
    pub fn unrecoverable_with<E: std::error::Error + ?Sized>(error: &E) -> Self {
        Outcome::Failed {
            message: error.to_string(),
            unrecoverable: true,
            detail: Some(FailureDetail::of(error)),
        }
    }

    /// Run this job again after `delay_ms`, without consuming an attempt.
    pub fn retry_job_later(delay_ms: u64, reason: impl Into<String>) -> Self {
        Outcome::RetryLater {
            delay_ms,
            scope: RetryScope::Job,
            reason: reason.into(),
        }
    }

    /// Pause the whole queue for `delay_ms` and put this job back, without consuming an attempt.
    pub fn retry_queue_later(delay_ms: u64, reason: impl Into<String>) -> Self {
        Outcome::RetryLater {
            delay_ms,
            scope: RetryScope::Queue,
            reason: reason.into(),
        }
    }
}

/// What is known about a failure besides its message. The host turns it into the attempt's entry in the
/// job's `stacktrace` (the list Node fills with `err.stack`, shown in Bull Board's Error tab).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureDetail {
    /// The error's type (`std::any::type_name`) or the plugin's own name for the case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The messages of the error's causes (`std::error::Error::source`), outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// True when the failure is a panic caught at the plugin boundary.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub panicked: bool,
    /// Where the panic happened (`file:line:column`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

impl FailureDetail {
    /// The type and source chain of `error` (the chain is cut after 16 causes, in case one loops).
    pub fn of<E: std::error::Error + ?Sized>(error: &E) -> Self {
        let mut sources = Vec::new();
        let mut next = error.source();
        while let Some(cause) = next {
            if sources.len() == 16 {
                break;
            }
            sources.push(cause.to_string());
            next = cause.source();
        }
        Self {
            kind: Some(std::any::type_name::<E>().to_owned()),
            sources,
            panicked: false,
            location: None,
        }
    }

    /// A caught panic, with its location when the panic hook recorded one.
    pub fn panic(location: Option<String>) -> Self {
        Self {
            panicked: true,
            location,
            ..Self::default()
        }
    }
}

/// A plugin's settings, resolved by the host (see the crate docs for where they come from).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PluginConfig(BTreeMap<String, String>);

impl PluginConfig {
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a configuration from key/value pairs (tests, the harness).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Sets one key.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    /// The value of `key`, if set and not blank.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// The value of `key`, or an init error naming the missing key.
    pub fn require(&self, key: &str) -> Result<&str, InitError> {
        self.get(key)
            .ok_or_else(|| InitError::new(format!("missing required setting {key}")))
    }

    /// A boolean switch: `true`, `1`, `yes` and `on` (any case) mean on; anything else or unset means off.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "true" | "1" | "yes" | "on"
            )
        })
    }

    /// Keys that are set, for diagnostics (never print the values: they hold secrets).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// Why a plugin refused to start; the host disables the plugin and logs this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitError(String);

impl InitError {
    /// An init error with a reason meant for an operator.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InitError {}

impl From<String> for InitError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for InitError {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcome_wire_format_is_tagged_by_status() {
        let v = serde_json::to_value(Outcome::retry_queue_later(5000, "429")).unwrap();
        assert_eq!(
            v,
            json!({"status": "retryLater", "delayMs": 5000, "scope": "queue", "reason": "429"})
        );
        let back: Outcome =
            serde_json::from_value(json!({"status": "completed", "result": {"a": 1}})).unwrap();
        assert_eq!(back, Outcome::completed(json!({"a": 1})));
    }

    /// `detail` is optional both ways: a plugin built before it existed sends none, and an older host reading
    /// a newer plugin's outcome ignores it (serde skips unknown fields).
    #[test]
    fn failure_detail_is_optional_on_the_wire() {
        let old: Outcome = serde_json::from_value(
            json!({"status": "failed", "message": "m", "unrecoverable": false}),
        )
        .unwrap();
        assert_eq!(old, Outcome::failed("m"));
        assert_eq!(
            serde_json::to_value(Outcome::failed("m")).unwrap(),
            json!({"status": "failed", "message": "m", "unrecoverable": false})
        );

        #[derive(Deserialize)]
        #[serde(tag = "status", rename_all = "camelCase")]
        enum OldOutcome {
            Failed {
                message: String,
                unrecoverable: bool,
            },
        }
        let new = serde_json::to_string(&Outcome::Failed {
            message: "boom".into(),
            unrecoverable: false,
            detail: Some(FailureDetail::panic(Some("src/lib.rs:3:5".into()))),
        })
        .unwrap();
        assert!(
            new.contains(r#""detail":{"panicked":true,"location":"src/lib.rs:3:5"}"#),
            "{new}"
        );
        let OldOutcome::Failed {
            message,
            unrecoverable,
        } = serde_json::from_str(&new).unwrap();
        assert_eq!((message.as_str(), unrecoverable), ("boom", false));
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1
                .as_deref()
                .map(|l| l as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn failed_with_records_the_type_and_the_source_chain() {
        let inner = Layer("connection refused", None);
        let err = Layer(
            "provider unreachable",
            Some(Box::new(Layer("send failed", Some(Box::new(inner))))),
        );
        match Outcome::failed_with(&err) {
            Outcome::Failed {
                message,
                unrecoverable,
                detail: Some(detail),
            } => {
                assert_eq!(message, "provider unreachable");
                assert!(!unrecoverable);
                assert_eq!(detail.kind.as_deref(), Some(std::any::type_name::<Layer>()));
                assert_eq!(detail.sources, ["send failed", "connection refused"]);
                assert!(!detail.panicked);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Outcome::unrecoverable_with(&inner_only()),
            Outcome::Failed { unrecoverable: true, detail: Some(FailureDetail { ref sources, .. }), .. } if sources.is_empty()
        ));
    }

    fn inner_only() -> Layer {
        Layer("bad number", None)
    }

    #[test]
    fn attempts_zero_means_one_attempt() {
        let job: JobView = serde_json::from_value(json!({
            "id": "1", "name": "n", "queue": "q", "data": {"x": 1}, "attemptsMade": 0, "timestamp": 1
        }))
        .unwrap();
        assert_eq!(job.max_attempts(), 1);
        assert!(job.is_last_attempt());
        assert_eq!(job.data.get(), r#"{"x":1}"#);
    }

    /// `timeoutMs` is optional on the wire, so plugins built before it existed still describe themselves.
    #[test]
    fn queue_timeout_hint_is_camel_case_and_optional() {
        let old: QueueInfo =
            serde_json::from_value(json!({"queue": "q", "jobNames": ["a"]})).unwrap();
        assert_eq!(old.timeout_ms, None);
        let hinted: QueueInfo =
            serde_json::from_value(json!({"queue": "q", "jobNames": ["a"], "timeoutMs": 60000}))
                .unwrap();
        assert_eq!(hinted.timeout_ms, Some(60_000));
        assert_eq!(
            serde_json::to_value(&hinted).unwrap()["timeoutMs"],
            json!(60000)
        );
    }

    /// Plugins built before the Rust field was named `queues` still describe themselves with `processors`.
    #[test]
    fn the_queues_cross_the_abi_as_processors() {
        let wire = json!({"name": "p", "version": "1.0.0", "processors": [{"queue": "q", "jobNames": ["a"]}]});
        let info: PluginInfo = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(info.queue("q").map(|q| q.job_names.len()), Some(1));
        let back = serde_json::to_value(&info).unwrap();
        assert_eq!(back["processors"][0]["queue"], "q");
        assert!(back.get("queues").is_none());
    }

    #[test]
    fn config_flag_and_blank_values() {
        let c = PluginConfig::from_pairs([("A", "Yes"), ("B", "  "), ("C", "0")]);
        assert!(c.flag("A"));
        assert!(!c.flag("C"));
        assert_eq!(c.get("B"), None);
        assert_eq!(
            c.require("B").unwrap_err().reason(),
            "missing required setting B"
        );
    }
}
