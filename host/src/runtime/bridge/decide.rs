//! What happens to a job once its plugin call has ended, decided without touching Redis: the pure half of
//! the bridge, tested as tables.
//!
//! Two decisions, in the order the bridge takes them:
//!
//! 1. [`decide`]: how the call ended (the plugin's [`Outcome`], a crash, or abandoned by the shutdown drain)
//!    × whether its deadline had passed × whether the shutdown drain is cancelling jobs → a [`Verdict`]:
//!    complete, fail for good, a failed attempt, delay the job, hold the queue, or put it back.
//! 2. [`retry`], for a failed attempt only (it needs the job's stored retry policy, one Redis read that
//!    completed jobs never pay): the policy × the library's view of it × attempts made → a [`Retry`]: the
//!    final failure, a retry the host schedules, or a retry left to the library.
//!
//! The rules, in precedence order:
//! - a call abandoned at the shutdown deadline, or anything but completed work while the drain cancels,
//!   goes back to the queue (neither completed nor failed; the next worker runs it);
//! - past its deadline, completed work is kept and anything else becomes a retryable timeout, so a job
//!   that always hangs consumes its attempts;
//! - otherwise the plugin's outcome stands; a failure from a crashed call is classed as a call failure.

use std::time::Duration;

use plugin_api::{Outcome, RetryScope};
use serde_json::Value;

use super::super::metrics::JobResult;
use super::super::retry::RetryPolicy;
use super::super::stacktrace::{Failure, FailureClass};

/// How the plugin call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The plugin returned this outcome.
    Returned(Outcome),
    /// The call broke instead of returning: the host's blocking task died, or the plugin's process died
    /// under the job. The outcome is the failure the host gives the job for it.
    Crashed(Outcome),
    /// The shutdown deadline passed while the plugin was still running.
    Abandoned,
}

/// What the bridge does with the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The work was done: the library records `result` as the job's `returnvalue`. `late` when the
    /// deadline had passed (logged: the work is kept all the same).
    Complete { result: Value, late: bool },
    /// The job fails now, whatever attempts it has left.
    FailForGood(Failure),
    /// A failed attempt: attempts and backoff decide whether it is retried ([`retry`]).
    FailAttempt(Failure),
    /// The attempt overran its budget: a failed attempt, counted as a timeout. `replaced` is what the
    /// plugin returned instead, for the log.
    TimedOut { failure: Failure, replaced: String },
    /// Not the job's fault: the job waits `delay_ms` in the delayed set without consuming an attempt.
    DelayJob { delay_ms: u64, reason: String },
    /// Not the job's fault: the whole queue pauses for `delay_ms`; the job goes back to wait.
    HoldQueue { delay_ms: u64, reason: String },
    /// Back to the queue, neither completed nor failed (shutdown).
    PutBack { why: &'static str },
}

impl Verdict {
    /// The `outcome` label the job's run is recorded under; `None` for a failed attempt, whose label
    /// ([`JobResult::Retried`] or [`JobResult::Failed`]) depends on the [`retry`] decision.
    pub fn result(&self) -> Option<JobResult> {
        match self {
            Verdict::Complete { .. } => Some(JobResult::Completed),
            Verdict::FailForGood(_) => Some(JobResult::Failed),
            Verdict::FailAttempt(_) | Verdict::TimedOut { .. } => None,
            Verdict::DelayJob { .. } => Some(JobResult::LaterJob),
            Verdict::HoldQueue { .. } => Some(JobResult::LaterQueue),
            Verdict::PutBack { .. } => Some(JobResult::Shutdown),
        }
    }
}

/// The verdict on a job whose call `ended` so; `timed_out` when its deadline had passed when the plugin
/// returned, `cancelled` when the shutdown drain is cancelling running jobs, `budget` the job's time budget.
pub fn decide(ended: Ended, timed_out: bool, cancelled: bool, budget: Option<Duration>) -> Verdict {
    let (outcome, crashed) = match ended {
        Ended::Abandoned => {
            return Verdict::PutBack {
                why: "plugin still running at the shutdown deadline",
            }
        }
        Ended::Returned(outcome) => (outcome, false),
        Ended::Crashed(outcome) => (outcome, true),
    };
    let completed = matches!(outcome, Outcome::Completed { .. });
    if cancelled && !completed {
        return Verdict::PutBack {
            why: "cancelled by shutdown",
        };
    }
    if timed_out && !completed {
        let budget_ms = budget.map(millis).unwrap_or(0);
        return Verdict::TimedOut {
            failure: Failure::host(
                FailureClass::Timeout,
                format!("job timed out after {budget_ms} ms"),
            ),
            replaced: outcome_summary(&outcome),
        };
    }
    match outcome {
        Outcome::Completed { result } => Verdict::Complete {
            result,
            late: timed_out,
        },
        Outcome::Failed {
            message,
            unrecoverable: true,
            detail,
        } => Verdict::FailForGood(Failure::from_plugin(message, true, detail)),
        Outcome::Failed {
            message, detail, ..
        } => Verdict::FailAttempt(match crashed {
            true => Failure::host(FailureClass::Call, message),
            false => Failure::from_plugin(message, false, detail),
        }),
        Outcome::RetryLater {
            delay_ms,
            scope: RetryScope::Job,
            reason,
        } => Verdict::DelayJob { delay_ms, reason },
        Outcome::RetryLater {
            delay_ms,
            scope: RetryScope::Queue,
            reason,
        } => Verdict::HoldQueue { delay_ms, reason },
    }
}

/// What becomes of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// No attempts left: the job fails. `forced` when the library, reading the policy wrongly, would retry
    /// it, so the failure must be handed over as unrecoverable.
    Final { forced: bool },
    /// The host schedules the retry itself (the library would get it wrong: a jitter it drops, or attempts
    /// it mis-parsed): the job is delayed by `delay_ms`.
    ByHost { delay_ms: u64 },
    /// The library applies attempts and backoff as Node would.
    ByLibrary,
}

impl Retry {
    /// The `outcome` label of the run.
    pub fn result(self) -> JobResult {
        match self {
            Retry::Final { .. } => JobResult::Failed,
            Retry::ByHost { .. } | Retry::ByLibrary => JobResult::Retried,
        }
    }
}

/// The fate of a failed attempt made after `attempts_made` earlier ones, under the job's stored retry
/// `policy` and the `library`'s parse of it; `random` is a uniform draw in [0, 1) for the jitter.
pub fn retry(
    policy: &RetryPolicy,
    library: &RetryPolicy,
    attempts_made: u32,
    random: f64,
) -> Retry {
    if policy.is_final(attempts_made) {
        return Retry::Final {
            forced: !library.is_final(attempts_made),
        };
    }
    if policy.jitter().is_some() || policy.attempts != library.attempts {
        Retry::ByHost {
            delay_ms: policy.delay_ms(attempts_made, random).unwrap_or(0),
        }
    } else {
        Retry::ByLibrary
    }
}

/// Whole milliseconds of `d`, saturating (budgets come from u64 milliseconds, so this is exact for them).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A one-line description of an outcome for logs (the plugin's own message, never job data).
fn outcome_summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Completed { .. } => "completed".to_owned(),
        Outcome::Failed {
            message,
            unrecoverable,
            ..
        } => {
            let kind = if *unrecoverable {
                "unrecoverable"
            } else {
                "failed"
            };
            format!("{kind}: {message}")
        }
        Outcome::RetryLater {
            delay_ms,
            scope,
            reason,
        } => format!("retry later ({scope:?}, {delay_ms} ms): {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::FailureDetail;
    use serde_json::json;

    const BUDGET: Option<Duration> = Some(Duration::from_millis(300));

    fn panicked(message: &str) -> Outcome {
        Outcome::Failed {
            message: message.to_owned(),
            unrecoverable: false,
            detail: Some(FailureDetail {
                panicked: true,
                ..FailureDetail::default()
            }),
        }
    }

    fn attempt(class: FailureClass, message: &str) -> Verdict {
        Verdict::FailAttempt(Failure::host(class, message))
    }

    fn timed_out(replaced: &str) -> Verdict {
        Verdict::TimedOut {
            failure: Failure::host(FailureClass::Timeout, "job timed out after 300 ms"),
            replaced: replaced.to_owned(),
        }
    }

    fn back(why: &'static str) -> Verdict {
        Verdict::PutBack { why }
    }

    #[test]
    fn every_way_a_call_ends_has_one_verdict() {
        let done = || Outcome::completed(json!({"sent": 1}));
        let complete = |late| Verdict::Complete {
            result: json!({"sent": 1}),
            late,
        };
        let shutdown = back("cancelled by shutdown");
        let abandoned = back("plugin still running at the shutdown deadline");
        // (how the call ended, timed out, cancelled by shutdown) → verdict
        let table: Vec<(Ended, bool, bool, Verdict)> = vec![
            // The plugin's outcome stands while nothing else happened.
            (Ended::Returned(done()), false, false, complete(false)),
            (
                Ended::Returned(Outcome::failed("busy")),
                false,
                false,
                attempt(FailureClass::Plugin, "busy"),
            ),
            (
                Ended::Returned(panicked("boom")),
                false,
                false,
                Verdict::FailAttempt(Failure::from_plugin(
                    "boom".into(),
                    false,
                    Some(FailureDetail {
                        panicked: true,
                        ..FailureDetail::default()
                    }),
                )),
            ),
            (
                Ended::Returned(Outcome::unrecoverable("bad number")),
                false,
                false,
                Verdict::FailForGood(Failure::host(FailureClass::Unrecoverable, "bad number")),
            ),
            (
                Ended::Returned(Outcome::retry_job_later(1000, "quiet hours")),
                false,
                false,
                Verdict::DelayJob {
                    delay_ms: 1000,
                    reason: "quiet hours".into(),
                },
            ),
            (
                Ended::Returned(Outcome::retry_queue_later(5000, "429")),
                false,
                false,
                Verdict::HoldQueue {
                    delay_ms: 5000,
                    reason: "429".into(),
                },
            ),
            // A crashed call is a call failure; a poison job's crash ends it for good.
            (
                Ended::Crashed(Outcome::failed("plugin call crashed: task panicked")),
                false,
                false,
                attempt(FailureClass::Call, "plugin call crashed: task panicked"),
            ),
            (
                Ended::Crashed(Outcome::unrecoverable("crashed the worker (signal 11)")),
                false,
                false,
                Verdict::FailForGood(Failure::host(
                    FailureClass::Unrecoverable,
                    "crashed the worker (signal 11)",
                )),
            ),
            // Past the deadline only completed work survives.
            (Ended::Returned(done()), true, false, complete(true)),
            (
                Ended::Returned(Outcome::failed("cancelled")),
                true,
                false,
                timed_out("failed: cancelled"),
            ),
            (
                Ended::Returned(Outcome::unrecoverable("gave up")),
                true,
                false,
                timed_out("unrecoverable: gave up"),
            ),
            (
                Ended::Returned(Outcome::retry_queue_later(5, "429")),
                true,
                false,
                timed_out("retry later (Queue, 5 ms): 429"),
            ),
            (
                Ended::Crashed(Outcome::failed("crashed")),
                true,
                false,
                timed_out("failed: crashed"),
            ),
            // Shutdown: only completed work is recorded, the rest goes back, deadline or not.
            (Ended::Returned(done()), false, true, complete(false)),
            (Ended::Returned(done()), true, true, complete(true)),
            (
                Ended::Returned(Outcome::failed("cancelled")),
                false,
                true,
                shutdown.clone(),
            ),
            (
                Ended::Returned(Outcome::unrecoverable("x")),
                true,
                true,
                shutdown.clone(),
            ),
            (
                Ended::Returned(Outcome::retry_job_later(1, "x")),
                false,
                true,
                shutdown.clone(),
            ),
            (
                Ended::Crashed(Outcome::failed("crashed")),
                false,
                true,
                shutdown,
            ),
            (Ended::Abandoned, false, false, abandoned.clone()),
            (Ended::Abandoned, true, true, abandoned),
        ];
        for (ended, late, cancelled, want) in table {
            let row = format!("{ended:?} timed_out={late} cancelled={cancelled}");
            assert_eq!(decide(ended, late, cancelled, BUDGET), want, "{row}");
        }
    }

    #[test]
    fn a_timeout_names_the_budget() {
        let verdict = decide(Ended::Returned(Outcome::failed("x")), true, false, None);
        let Verdict::TimedOut { failure, .. } = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(failure.message, "job timed out after 0 ms");
    }

    #[test]
    fn each_verdict_is_recorded_under_its_outcome_label() {
        let failure = Failure::host(FailureClass::Plugin, "x");
        let table = [
            (
                Verdict::Complete {
                    result: Value::Null,
                    late: false,
                },
                Some(JobResult::Completed),
            ),
            (
                Verdict::FailForGood(failure.clone()),
                Some(JobResult::Failed),
            ),
            (Verdict::FailAttempt(failure.clone()), None),
            (
                Verdict::TimedOut {
                    failure,
                    replaced: String::new(),
                },
                None,
            ),
            (
                Verdict::DelayJob {
                    delay_ms: 1,
                    reason: String::new(),
                },
                Some(JobResult::LaterJob),
            ),
            (
                Verdict::HoldQueue {
                    delay_ms: 1,
                    reason: String::new(),
                },
                Some(JobResult::LaterQueue),
            ),
            (back("x"), Some(JobResult::Shutdown)),
        ];
        for (verdict, want) in table {
            assert_eq!(verdict.result(), want, "{verdict:?}");
        }
    }

    fn policy(attempts: u32, backoff: Option<Value>) -> RetryPolicy {
        RetryPolicy { attempts, backoff }
    }

    #[test]
    fn a_failed_attempt_is_retried_by_whoever_gets_the_policy_right() {
        let fixed = || Some(json!({"type": "fixed", "delay": 1000}));
        let jittered = || Some(json!({"type": "fixed", "delay": 1000, "jitter": 0.5}));
        // (stored policy, the library's parse, attempts made, random draw) → what becomes of the attempt
        let table = [
            // Attempts left, the library reads the policy right: it retries.
            (
                policy(3, fixed()),
                policy(3, fixed()),
                0,
                0.0,
                Retry::ByLibrary,
            ),
            (
                policy(3, fixed()),
                policy(3, fixed()),
                1,
                0.0,
                Retry::ByLibrary,
            ),
            // The last attempt fails the job; forced when the library thinks attempts remain.
            (
                policy(3, fixed()),
                policy(3, fixed()),
                2,
                0.0,
                Retry::Final { forced: false },
            ),
            (
                policy(1, None),
                policy(1, None),
                0,
                0.0,
                Retry::Final { forced: false },
            ),
            (
                policy(0, None),
                policy(0, None),
                0,
                0.0,
                Retry::Final { forced: false },
            ),
            (
                policy(2, None),
                policy(5, None),
                1,
                0.0,
                Retry::Final { forced: true },
            ),
            // A jitter the library drops: the host schedules the retry, delay within the jitter's range.
            (
                policy(3, jittered()),
                policy(3, fixed()),
                0,
                0.0,
                Retry::ByHost { delay_ms: 500 },
            ),
            (
                policy(3, jittered()),
                policy(3, fixed()),
                0,
                0.999,
                Retry::ByHost { delay_ms: 999 },
            ),
            // Attempts the library lost (it reset the options): the host retries.
            (
                policy(4, fixed()),
                policy(0, None),
                0,
                0.0,
                Retry::ByHost { delay_ms: 1000 },
            ),
            (
                policy(2, None),
                policy(0, None),
                0,
                0.0,
                Retry::ByHost { delay_ms: 0 },
            ),
        ];
        for (stored, library, made, random, want) in table {
            let row = format!("{stored:?} vs {library:?}, {made} made, draw {random}");
            assert_eq!(retry(&stored, &library, made, random), want, "{row}");
        }
    }

    #[test]
    fn each_retry_is_recorded_under_its_outcome_label() {
        assert_eq!(Retry::Final { forced: true }.result(), JobResult::Failed);
        assert_eq!(Retry::Final { forced: false }.result(), JobResult::Failed);
        assert_eq!(Retry::ByHost { delay_ms: 5 }.result(), JobResult::Retried);
        assert_eq!(Retry::ByLibrary.result(), JobResult::Retried);
    }
}
