//! The `email:digest` job: its data, checked, and the scheduled run it belongs to.
//!
//! FrostGuard's job schedulers (`digest-daily-<userId>` / `digest-weekly-<userId>`) produce jobs with data
//! `{organizationId, userId, period}`, where `userId` is the auth user id (`profiles.user_id`), and ids of
//! the form `repeat:<schedulerId>:<dueMillis>`. The due time identifies the run: every attempt of one run
//! derives the same window, token and `Idempotency-Key` from it, so a retry sends the very same request.

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub const JOB_NAME: &str = "email:digest";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Daily,
    Weekly,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
        }
    }

    /// The window the digest covers, ending at the run.
    pub fn window(self) -> chrono::Duration {
        match self {
            Period::Daily => chrono::Duration::hours(24),
            Period::Weekly => chrono::Duration::days(7),
        }
    }
}

/// A checked `email:digest` job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestJob {
    pub organization_id: Uuid,
    /// The auth user id (`profiles.user_id`), not `profiles.id`.
    pub user_id: Uuid,
    pub period: Period,
}

/// Parses job data; the error is the job's `failedReason` (unrecoverable: the data will not change).
pub fn parse(name: &str, data: &str) -> Result<DigestJob, String> {
    let fail = |why: String| format!("invalid {JOB_NAME} job: {why}");
    if name != JOB_NAME {
        return Err(format!(
            "unknown job name {name:?} on queue email-digests (expected {JOB_NAME:?})"
        ));
    }
    let value: serde_json::Value =
        serde_json::from_str(data).map_err(|e| fail(format!("data is not JSON ({e})")))?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err(fail(format!("data is not a JSON object: {value}")));
    };
    let uuid_field = |field: &str, v: Option<serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => Err(fail(format!("{field} is missing"))),
        Some(serde_json::Value::String(s)) => {
            Uuid::parse_str(s.trim()).map_err(|_| fail(format!("{field} is not a UUID: {s:?}")))
        }
        Some(other) => Err(fail(format!("{field} must be a string, got {other}"))),
    };
    let organization_id = uuid_field("organizationId", fields.remove("organizationId"))?;
    let user_id = uuid_field("userId", fields.remove("userId"))?;
    let period = match fields.remove("period") {
        Some(serde_json::Value::String(p)) if p == "daily" => Period::Daily,
        Some(serde_json::Value::String(p)) if p == "weekly" => Period::Weekly,
        None | Some(serde_json::Value::Null) => return Err(fail("period is missing".into())),
        Some(other) => {
            return Err(fail(format!(
                "period must be \"daily\" or \"weekly\", got {other}"
            )))
        }
    };
    Ok(DigestJob {
        organization_id,
        user_id,
        period,
    })
}

/// The run a job belongs to: the due time of a scheduler's job (from its id), otherwise the time the job
/// was meant to run (`timestamp + delay`) with the job id as the run's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub due: DateTime<Utc>,
    /// Unique per run and stable across its attempts.
    pub id: String,
}

impl Run {
    pub fn of(job_id: &str, timestamp_ms: u64, delay_ms: Option<u64>) -> Run {
        if let Some(due_ms) = scheduler_due_ms(job_id) {
            return Run {
                due: millis(due_ms),
                id: due_ms.to_string(),
            };
        }
        Run {
            due: millis(timestamp_ms.saturating_add(delay_ms.unwrap_or(0))),
            id: format!("job-{job_id}"),
        }
    }

    /// The `Idempotency-Key` of this run's email (Resend allows 256 characters and remembers a key 24 h,
    /// longer than a job's retries last).
    pub fn idempotency_key(&self, job: &DigestJob) -> String {
        let key = format!(
            "email-digest/{}/{}/{}",
            job.user_id,
            job.period.as_str(),
            self.id
        );
        key.chars().take(256).collect()
    }
}

/// `repeat:<schedulerId>:<dueMillis>` → `dueMillis` (BullMQ job schedulers, 5.x and 6.x).
fn scheduler_due_ms(job_id: &str) -> Option<u64> {
    let rest = job_id.strip_prefix("repeat:")?;
    let (_, due) = rest.rsplit_once(':')?;
    due.parse().ok().filter(|ms| *ms > 0)
}

fn millis(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "11111111-2222-3333-4444-555555555555";
    const USER: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

    #[test]
    fn parses_what_the_scheduler_produces() {
        let data = format!(r#"{{"organizationId":"{ORG}","userId":"{USER}","period":"weekly"}}"#);
        let job = parse(JOB_NAME, &data).unwrap();
        assert_eq!(job.period, Period::Weekly);
        assert_eq!(job.user_id.to_string(), USER);
    }

    #[test]
    fn rejects_bad_data_with_a_reason() {
        let cases = [
            ("[]", "data is not a JSON object: []"),
            (r#"{"userId":"x"}"#, "organizationId is missing"),
            (
                &format!(r#"{{"organizationId":"{ORG}","userId":"nope","period":"daily"}}"#),
                "userId is not a UUID: \"nope\"",
            ),
            (
                &format!(r#"{{"organizationId":"{ORG}","userId":7,"period":"daily"}}"#),
                "userId must be a string, got 7",
            ),
            (
                &format!(r#"{{"organizationId":"{ORG}","userId":"{USER}","period":"monthly"}}"#),
                "period must be \"daily\" or \"weekly\", got \"monthly\"",
            ),
            (
                &format!(r#"{{"organizationId":"{ORG}","userId":"{USER}"}}"#),
                "period is missing",
            ),
        ];
        for (data, why) in cases {
            let err = parse(JOB_NAME, data).unwrap_err();
            assert_eq!(err, format!("invalid email:digest job: {why}"), "{data}");
        }
        assert!(parse("email:other", "{}")
            .unwrap_err()
            .contains("unknown job name"));
    }

    #[test]
    fn run_of_a_scheduler_job_is_its_due_time() {
        let r = Run::of(
            &format!("repeat:digest-daily-{USER}:1767254400000"),
            1767254300000,
            Some(100000),
        );
        assert_eq!(r.due.timestamp_millis(), 1767254400000);
        assert_eq!(r.id, "1767254400000");
        // Retries and re-runs keep the same id, whatever the delay field says now.
        assert_eq!(
            Run::of(
                &format!("repeat:digest-daily-{USER}:1767254400000"),
                1,
                None
            ),
            r
        );
    }

    #[test]
    fn run_of_another_job_is_its_intended_start() {
        let r = Run::of("42", 1_000_000, Some(5_000));
        assert_eq!(r.due.timestamp_millis(), 1_005_000);
        assert_eq!(r.id, "job-42");
        for id in ["repeat:x:notanumber", "repeat:only", "repeat:x:0"] {
            assert_eq!(Run::of(id, 7, None).id, format!("job-{id}"));
        }
    }

    #[test]
    fn idempotency_key_names_user_period_and_run() {
        let job = parse(
            JOB_NAME,
            &format!(r#"{{"organizationId":"{ORG}","userId":"{USER}","period":"daily"}}"#),
        )
        .unwrap();
        let run = Run::of(
            &format!("repeat:digest-daily-{USER}:1767254400000"),
            0,
            None,
        );
        assert_eq!(
            run.idempotency_key(&job),
            format!("email-digest/{USER}/daily/1767254400000")
        );
        let long = Run::of(&"x".repeat(400), 0, None);
        assert_eq!(long.idempotency_key(&job).chars().count(), 256);
    }
}
