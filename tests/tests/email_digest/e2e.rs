//! End to end: Redis, the host with the email digest plugin, PostgreSQL, a fake Resend and Node `bullmq`
//! as FrostGuard's API uses it.

use std::time::Duration;

use super::seed::*;
use super::*;
use chrono::{Days, NaiveTime, TimeZone, Utc};
use chrono_tz::America::New_York;
use frostguard_tests::{NodeQueue, RedisServer, Worker};

/// Redis, a seeded PostgreSQL, a fake Resend and the host consuming `email-digests`.
fn start(replies: Vec<Reply>, then: Reply) -> (RedisServer, Postgres, FakeHttp, Worker, NodeQueue) {
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    seed(&pg);
    let resend = FakeHttp::scripted(replies, then).unwrap();
    let worker = Worker::builder()
        .redis(&redis)
        .plugins(&[EMAIL_PLUGIN])
        .env("RESEND_API_KEY", KEY)
        .env("EMAIL_FROM_ADDRESS", FROM)
        .env("APP_URL", APP)
        .env("JWT_SECRET", SECRET)
        .env("DATABASE_URL", pg.url())
        .env("RESEND_API_BASE_URL", resend.url())
        .spawn_ready()
        .unwrap();
    worker
        .wait_for_line(
            "queue consuming queue=email-digests concurrency=2",
            Duration::from_secs(5),
        )
        .unwrap();
    let q = NodeQueue::new(&redis, QUEUE);
    (redis, pg, resend, worker, q)
}

/// The next 09:00 in New York after `after_ms`, in ms: when the scheduler's next iteration is due.
fn next_nine_in_new_york(after_ms: i64) -> i64 {
    let after = Utc
        .timestamp_millis_opt(after_ms)
        .unwrap()
        .with_timezone(&New_York);
    let nine = NaiveTime::from_hms_opt(9, 0, 0).unwrap();
    let today = New_York
        .from_local_datetime(&after.date_naive().and_time(nine))
        .earliest()
        .unwrap();
    let next = if today.timestamp_millis() > after_ms {
        today
    } else {
        let tomorrow = after.date_naive().checked_add_days(Days::new(1)).unwrap();
        New_York
            .from_local_datetime(&tomorrow.and_time(nine))
            .earliest()
            .unwrap()
    };
    next.timestamp_millis()
}

/// FrostGuard's scheduler for a user's daily digest at 09:00 in their zone (`digest-schedulers.ts`), with
/// `immediately` so that the first iteration runs now: the host sends it and schedules the next at 09:00
/// New York time, which stays delayed. scripts/test.sh runs this module with Node BullMQ 6.7 and again with
/// 5.67 (`FROSTGUARD_NODE_BULLMQ=5`), FrostGuard's pin; the test checks which one created the scheduler.
#[test]
fn a_node_job_scheduler_digest_is_sent_and_the_next_iteration_scheduled() {
    let version = frostguard_tests::node_bullmq_version().unwrap();
    let expected = if frostguard_tests::bullmq_project_dir().is_some() {
        "5.67."
    } else {
        "6.7."
    };
    assert!(
        version.starts_with(expected),
        "scheduler created by bullmq {version}, expected {expected}x"
    );
    let (_redis, _pg, resend, _worker, q) = start(vec![], accepted("em-scheduled"));
    let scheduler = format!("digest-daily-{USER_NY}");
    let created = q
        .call(
            "upsert-scheduler",
            json!({
                "id": scheduler,
                "repeat": {"pattern": "0 9 * * *", "tz": "America/New_York", "immediately": true},
                "template": {
                    "name": "email:digest",
                    "data": {"organizationId": ACME, "userId": USER_NY, "period": "daily"},
                    "opts": {"attempts": 3, "backoff": {"type": "exponential", "delay": 2000},
                             "removeOnComplete": 100, "removeOnFail": 500},
                },
            }),
        )
        .unwrap();
    let first = created["firstJobId"]
        .as_str()
        .expect("first iteration id")
        .to_owned();

    let job = q
        .wait_finished(std::slice::from_ref(&first))
        .unwrap()
        .remove(0);
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(
        job.returnvalue,
        json!({"success": true, "messageId": "em-scheduled"})
    );
    assert_eq!(job.attempts_made, 1);
    assert_eq!(job.repeat_job_key.as_deref(), Some(scheduler.as_str()));
    let due: i64 = first
        .strip_prefix(&format!("repeat:{scheduler}:"))
        .expect("a scheduler job id")
        .parse()
        .unwrap();

    let requests = resend.requests();
    assert_eq!(requests.len(), 1);
    assert_resend_request(&requests[0], NY_EMAIL);
    assert_eq!(
        requests[0].header("idempotency-key"),
        Some(format!("email-digest/{USER_NY}/daily/{due}").as_str())
    );
    assert_eq!(
        requests[0].json()["subject"],
        "Your daily alert digest - 9 alerts"
    );

    // The host created the next iteration from the cron pattern in the user's zone; nothing runs it yet.
    let next_id = format!("repeat:{scheduler}:{}", next_nine_in_new_york(due));
    let next = q
        .wait_states(
            std::slice::from_ref(&next_id),
            &["delayed"],
            Duration::from_secs(10),
        )
        .unwrap()
        .remove(0);
    assert_eq!(
        q.list(&["delayed", "wait", "active"]).unwrap(),
        std::slice::from_ref(&next_id),
        "one next iteration, nothing else queued"
    );
    assert_eq!(next.data, data(ACME, USER_NY, "daily"));
    assert_eq!(next.opts["attempts"], 3);
    let schedulers = q.call("schedulers", json!({})).unwrap();
    assert_eq!(
        schedulers["schedulers"][0]["key"],
        scheduler.as_str(),
        "{schedulers}"
    );
    assert_eq!(
        schedulers["schedulers"][0]["tz"], "America/New_York",
        "{schedulers}"
    );
    assert_eq!(resend.requests().len(), 1, "the next iteration is not due");
}

/// A digest whose first send failed with a 5xx is retried with the very same request (key and body), so
/// Resend can deduplicate it if the first one had in fact gone through.
#[test]
fn a_retried_digest_repeats_the_same_request() {
    let (_redis, _pg, resend, _worker, q) = start(
        vec![resend_error(
            500,
            "internal_server_error",
            "Unexpected error",
        )],
        accepted("em-retried"),
    );
    let id = q
        .add_one(
            "email:digest",
            data(ACME, USER_NY, "weekly"),
            json!({"attempts": 3, "backoff": {"type": "fixed", "delay": 200}}),
        )
        .unwrap();
    let job = q
        .wait_finished(std::slice::from_ref(&id))
        .unwrap()
        .remove(0);
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(
        job.attempts_made, 2,
        "one failed attempt, one that completed"
    );
    assert_eq!(
        job.returnvalue,
        json!({"success": true, "messageId": "em-retried"})
    );

    let requests = resend.requests();
    assert_eq!(requests.len(), 2);
    let key = format!("email-digest/{USER_NY}/weekly/job-{id}");
    for r in &requests {
        assert_resend_request(r, NY_EMAIL);
        assert_eq!(r.header("idempotency-key"), Some(key.as_str()));
    }
    assert_eq!(
        requests[0].json(),
        requests[1].json(),
        "the retry differs from the first request"
    );
}
