//! The `stacktrace` entries the host writes on a failed job, in place of the JavaScript stacks Node writes.
//!
//! Node's worker pushes `err.stack` onto the job's `stacktrace` list for every failed attempt (retried or
//! final), trims the list to the job's `opts.stackTraceLimit` and stores it as JSON with the failure; Bull
//! Board's Error tab shows the list, newest first. bullmq-official writes no stacktrace at all, so the bridge
//! stores it itself (docs/bullmq-official.md, D15) with the list semantics of Node and an entry that holds
//! what an operator needs from a Rust plugin instead of frames:
//!
//! ```text
//! PluginError: Telnyx answered 503
//!     error type: sms_notifications::telnyx::SendError
//!     caused by: connection reset by peer
//!     at sms-notifications 0.1.0 (queue sms-notifications, job sms:send, attempt 2 of 5)
//! ```
//!
//! The first line is `<class>: <message>` like a JavaScript stack's (Bull Board highlights a leading
//! `…Error:`), the `at` line is indented like a frame. A panic adds `panicked at <file:line:column>`.
//! Everything here is pure: the bridge reads the stored list and options and writes the result.

use plugin_api::FailureDetail;
use serde_json::Value;

/// What kind of failure ended an attempt; names the entry's first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The plugin returned a retryable failure.
    Plugin,
    /// The plugin returned an unrecoverable failure.
    Unrecoverable,
    /// The plugin panicked (caught at the boundary).
    Panic,
    /// The attempt overran its time budget.
    Timeout,
    /// The host's call into the plugin failed (the blocking task died, or the plugin's answer was unusable).
    Call,
    /// The host refused the job before any plugin code ran (unknown job name, data not JSON).
    Rejected,
}

impl FailureClass {
    /// The class name shown first in the entry, in the style of a JavaScript error class.
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Plugin => "PluginError",
            FailureClass::Unrecoverable => "UnrecoverableError",
            FailureClass::Panic => "PanicError",
            FailureClass::Timeout => "TimeoutError",
            FailureClass::Call => "PluginCallError",
            FailureClass::Rejected => "RejectedJobError",
        }
    }
}

/// One failed attempt: its class, the message that becomes `failedReason`, and the plugin's detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// What kind of failure.
    pub class: FailureClass,
    /// The `failedReason`.
    pub message: String,
    /// Error type, causes and panic location, as far as known.
    pub detail: FailureDetail,
}

impl Failure {
    /// A failure the host itself produced (no plugin detail).
    pub fn host(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            detail: FailureDetail::default(),
        }
    }

    /// A failure the plugin returned; a panic is classed as such whatever else it says.
    pub fn from_plugin(
        message: String,
        unrecoverable: bool,
        detail: Option<FailureDetail>,
    ) -> Self {
        let detail = detail.unwrap_or_default();
        let class = match (detail.panicked, unrecoverable) {
            (true, _) => FailureClass::Panic,
            (false, true) => FailureClass::Unrecoverable,
            (false, false) => FailureClass::Plugin,
        };
        Self {
            class,
            message,
            detail,
        }
    }
}

/// Where the attempt ran: the plugin, the job and the attempt's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptSite<'a> {
    /// Plugin name.
    pub plugin: &'a str,
    /// Plugin version.
    pub version: &'a str,
    /// Queue name.
    pub queue: &'a str,
    /// Job name.
    pub job_name: &'a str,
    /// This attempt's number, from 1 (`attemptsMade + 1`).
    pub attempt: u32,
    /// Attempts the job is allowed (`opts.attempts`, at least 1).
    pub attempts: u32,
}

/// The text of one `stacktrace` entry.
pub fn entry(failure: &Failure, site: &AttemptSite<'_>) -> String {
    let mut text = format!("{}: {}", failure.class.name(), failure.message);
    let mut line = |l: String| {
        text.push_str("\n    ");
        text.push_str(&l);
    };
    if let Some(kind) = &failure.detail.kind {
        line(format!("error type: {kind}"));
    }
    for cause in &failure.detail.sources {
        line(format!("caused by: {cause}"));
    }
    if failure.detail.panicked {
        line(match &failure.detail.location {
            Some(at) => format!("panicked at {at}"),
            None => "panicked (location unknown)".to_owned(),
        });
    }
    line(format!(
        "at {} {} (queue {}, job {}, attempt {} of {})",
        site.plugin,
        site.version,
        site.queue,
        site.job_name,
        site.attempt,
        site.attempts.max(1).max(site.attempt),
    ));
    text
}

/// The job's `opts.stackTraceLimit` as Node reads it: a number, truncated towards zero like an array index
/// (`slice(-2.5)` is `slice(-2)`); anything else, or none, is no limit.
pub fn stack_trace_limit(opts: Option<&Value>) -> Option<i64> {
    let limit = opts?.get("stackTraceLimit")?;
    limit
        .as_i64()
        .or_else(|| limit.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

/// The new `stacktrace` JSON after a failed attempt: the stored list (Node's `getTraces`: missing, not JSON
/// or not an array counts as empty) plus `entry`, then Node's trim: a limit of 0 empties the list, any other
/// limit is `slice(-limit)` (the last `limit` entries; a negative one drops the first `-limit`).
pub fn append(stored: Option<&str>, entry: String, limit: Option<i64>) -> String {
    let mut list = match stored.map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Array(list))) => list,
        _ => Vec::new(),
    };
    list.push(Value::String(entry));
    let list = match limit {
        None => list,
        Some(0) => Vec::new(),
        Some(n) if n > 0 => {
            let keep = usize::try_from(n).unwrap_or(usize::MAX);
            let skip = list.len().saturating_sub(keep);
            list.into_iter().skip(skip).collect()
        }
        Some(n) => {
            let skip = usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX);
            list.into_iter().skip(skip).collect()
        }
    };
    Value::Array(list).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn site(attempt: u32, attempts: u32) -> AttemptSite<'static> {
        AttemptSite {
            plugin: "sms-notifications",
            version: "0.3.1",
            queue: "sms-notifications",
            job_name: "sms:send",
            attempt,
            attempts,
        }
    }

    #[test]
    fn entries_name_the_class_the_causes_and_the_attempt() {
        let detail = |kind: Option<&str>, sources: &[&str]| FailureDetail {
            kind: kind.map(str::to_owned),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            ..FailureDetail::default()
        };
        // (failure, attempt, attempts, expected entry)
        let table = [
            (
                Failure::from_plugin("Telnyx answered 503".into(), false, None),
                2,
                5,
                "PluginError: Telnyx answered 503\n    \
                 at sms-notifications 0.3.1 (queue sms-notifications, job sms:send, attempt 2 of 5)",
            ),
            (
                Failure::from_plugin(
                    "provider unreachable".into(),
                    false,
                    Some(detail(Some("sms::SendError"), &["send failed", "connection refused"])),
                ),
                1,
                3,
                "PluginError: provider unreachable\n    \
                 error type: sms::SendError\n    \
                 caused by: send failed\n    \
                 caused by: connection refused\n    \
                 at sms-notifications 0.3.1 (queue sms-notifications, job sms:send, attempt 1 of 3)",
            ),
            (
                Failure::from_plugin("invalid number".into(), true, Some(detail(None, &[]))),
                1,
                0,
                "UnrecoverableError: invalid number\n    \
                 at sms-notifications 0.3.1 (queue sms-notifications, job sms:send, attempt 1 of 1)",
            ),
            (
                Failure::from_plugin(
                    "test panic: boom".into(),
                    false,
                    Some(FailureDetail::panic(Some("src/lib.rs:105:24".into()))),
                ),
                3,
                3,
                "PanicError: test panic: boom\n    \
                 panicked at src/lib.rs:105:24\n    \
                 at sms-notifications 0.3.1 (queue sms-notifications, job sms:send, attempt 3 of 3)",
            ),
            (
                // Panics are never unrecoverable in practice, but the class follows the panic either way.
                Failure::from_plugin("p".into(), true, Some(FailureDetail::panic(None))),
                1,
                1,
                "PanicError: p\n    \
                 panicked (location unknown)\n    \
                 at sms-notifications 0.3.1 (queue sms-notifications, job sms:send, attempt 1 of 1)",
            ),
            (
                Failure::host(FailureClass::Timeout, "job timed out after 300 ms"),
                1,
                2,
                "TimeoutError: job timed out after 300 ms\n    \
                 at sms-notifications 0.3.1 (queue sms-notifications, job sms:send, attempt 1 of 2)",
            ),
            (
                // More attempts made than allowed (the allowance was lowered): never "attempt 4 of 2".
                Failure::host(FailureClass::Rejected, "unknown job name"),
                4,
                2,
                "RejectedJobError: unknown job name\n    \
                 at sms-notifications 0.3.1 (queue sms-notifications, job sms:send, attempt 4 of 4)",
            ),
        ];
        for (failure, attempt, attempts, want) in table {
            assert_eq!(
                entry(&failure, &site(attempt, attempts)),
                want,
                "{failure:?}"
            );
        }
        assert_eq!(FailureClass::Call.name(), "PluginCallError");
    }

    #[test]
    fn the_list_grows_and_is_trimmed_as_node_trims_it() {
        let e = |s: &str| s.to_owned();
        // (stored list, stackTraceLimit, expected list)
        let table: [(Option<&str>, Option<i64>, Value); 10] = [
            (None, None, json!(["new"])),
            (Some("[]"), None, json!(["new"])),
            (Some(r#"["a","b"]"#), None, json!(["a", "b", "new"])),
            (Some(r#"["a","b"]"#), Some(2), json!(["b", "new"])),
            (Some(r#"["a","b"]"#), Some(5), json!(["a", "b", "new"])),
            (Some(r#"["a","b"]"#), Some(0), json!([])),
            (Some(r#"["a","b","c"]"#), Some(-1), json!(["b", "c", "new"])),
            // getTraces: what is not a JSON array counts as no list.
            (Some("not json"), None, json!(["new"])),
            (Some(r#"{"a":1}"#), None, json!(["new"])),
            // Whatever the list held is kept as it was.
            (
                Some(r#"[null,{"x":1}]"#),
                None,
                json!([null, {"x": 1}, "new"]),
            ),
        ];
        for (stored, limit, want) in table {
            let got = append(stored, e("new"), limit);
            assert_eq!(
                serde_json::from_str::<Value>(&got).unwrap(),
                want,
                "{stored:?} {limit:?}"
            );
        }
    }

    #[test]
    fn the_limit_is_read_as_node_reads_it() {
        let table = [
            (json!({"stackTraceLimit": 3}), Some(3)),
            (json!({"stackTraceLimit": 0}), Some(0)),
            (json!({"stackTraceLimit": 2.7}), Some(2)),
            (json!({"stackTraceLimit": -2}), Some(-2)),
            (json!({"stackTraceLimit": "3"}), None),
            (json!({"stackTraceLimit": null}), None),
            (json!({"attempts": 3}), None),
        ];
        for (opts, want) in table {
            assert_eq!(stack_trace_limit(Some(&opts)), want, "{opts}");
        }
        assert_eq!(stack_trace_limit(None), None);
    }
}
