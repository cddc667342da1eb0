//! Retries as Node's producers configure them (`attempts` + `backoff`, exponential and fixed), and the plugin's
//! retry-later outcome, which delays the job (job scope) or holds the whole queue (queue scope) without
//! consuming an attempt.

use crate::{assert_starts_spaced, event_times, events_of, setup, wait_finished_one, wait_state};
use frostguard_tests::{json, JobSnapshot};

#[test]
fn exponential_backoff_retries_with_growing_delays_then_fails_with_attempts_made_3() {
    let (_redis, _worker, q) = setup(&[]);
    let delay = 400;
    let id = q
        .add_one(
            "fail",
            json!({"message": "flaky provider"}),
            json!({"attempts": 3, "backoff": {"type": "exponential", "delay": delay}}),
        )
        .unwrap();
    let job = wait_finished_one(&q, &id);
    assert_eq!(job.state, "failed", "{job:?}");
    assert_eq!(job.failed_reason.as_deref(), Some("flaky provider"));
    assert_eq!(job.attempts_made, 3, "{job:?}");
    assert_eq!(job.attempts_started, 3, "{job:?}");

    let events = q.events().unwrap();
    let actives = event_times(&events, "active", &id);
    assert_eq!(actives.len(), 3, "three attempts: {events:?}");
    // Attempt n+1 starts no earlier than the backoff after attempt n: delay * 2^(n-1).
    for (n, pair) in actives.windows(2).enumerate() {
        let wanted = delay << n;
        let gap = pair[1] - pair[0];
        assert!(
            gap + 20 >= wanted,
            "gap before attempt {} is {gap} ms, backoff is {wanted} ms",
            n + 2
        );
    }
    // The `delayed` events carry the due time: the host's failure time + the exponential backoff. The event's
    // own (Redis) time is a little later than the host's clock reading, so allow for that latency.
    let delayed = events_of(&events, "delayed", &id);
    assert_eq!(delayed.len(), 2, "two retries were scheduled: {events:?}");
    for (n, ev) in delayed.iter().enumerate() {
        let due: u64 = ev["delay"].as_str().unwrap().parse().unwrap();
        let scheduled_at = ev["ms"].as_u64().unwrap();
        let backoff = due as i64 - scheduled_at as i64;
        let wanted = (delay << n) as i64;
        assert!(
            (wanted - 250..=wanted + 250).contains(&backoff),
            "retry {} scheduled {backoff} ms ahead, want {wanted} ms",
            n + 1
        );
    }
}

#[test]
fn fixed_backoff_retries_until_success() {
    let (_redis, _worker, q) = setup(&[]);
    let id = q
        .add_one(
            "fail-until",
            json!({"succeedOnAttempt": 3}),
            json!({"attempts": 5, "backoff": {"type": "fixed", "delay": 300}}),
        )
        .unwrap();
    let job = wait_finished_one(&q, &id);
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(job.returnvalue, json!({"attempt": 3}));
    assert_eq!(job.attempts_made, 3, "{job:?}");
    let actives = event_times(&q.events().unwrap(), "active", &id);
    assert_eq!(actives.len(), 3);
    assert_starts_spaced(&actives, 300, "fixed backoff");
}

#[test]
fn retry_later_with_job_scope_delays_the_job_without_consuming_an_attempt() {
    let (_redis, _worker, q) = setup(&[]);
    let id = q
        .add_one(
            "retry-later",
            json!({"delayMs": 1500, "scope": "job"}),
            json!({"attempts": 1}),
        )
        .unwrap();
    let delayed = wait_state(&q, &id, "delayed");
    assert_eq!(delayed.attempts_made, 0, "no attempt consumed: {delayed:?}");
    assert_eq!(delayed.attempts_started, 1);
    let job = wait_finished_one(&q, &id);
    assert_eq!(job.state, "completed", "{job:?}");
    assert_eq!(
        job.returnvalue,
        json!({"retriedAfterDelay": true, "attemptsStarted": 2})
    );
    assert_eq!(job.attempts_made, 1, "{job:?}");
    let actives = event_times(&q.events().unwrap(), "active", &id);
    assert_eq!(actives.len(), 2);
    assert_starts_spaced(&actives, 1500, "second start after the requested delay");
}

#[test]
fn retry_later_with_queue_scope_returns_the_job_to_wait_and_holds_the_queue() {
    let (_redis, worker, q) = setup(&[]);
    let hold = 3000;
    let id = q
        .add_one(
            "retry-later",
            json!({"delayMs": hold, "scope": "queue"}),
            json!({"attempts": 1}),
        )
        .unwrap();
    // Back in wait (not delayed), with one start and no attempt made.
    let out = q
        .call(
            "wait",
            json!({"ids": [id], "states": ["waiting"], "minStarted": 1, "timeoutMs": 20000}),
        )
        .unwrap();
    assert_eq!(
        out["timedOut"],
        false,
        "job not back in wait: {out}\n{}",
        worker.output_text()
    );
    let back: JobSnapshot =
        frostguard_tests::serde_json::from_value(out["jobs"][0].clone()).unwrap();
    assert_eq!(back.attempts_made, 0);
    // Another job added while the queue is held must wait too.
    let other = q
        .add_one("complete", json!({"result": "other"}), json!({}))
        .unwrap();
    let jobs = q.wait_finished(&[id.clone(), other.clone()]).unwrap();
    let (rl, other_job) = (&jobs[0], &jobs[1]);
    assert_eq!(rl.state, "completed", "{rl:?}");
    assert_eq!(
        rl.returnvalue,
        json!({"retriedAfterDelay": true, "attemptsStarted": 2})
    );
    assert_eq!(rl.attempts_made, 1);
    assert_eq!(other_job.state, "completed");
    let events = q.events().unwrap();
    let first_start = event_times(&events, "active", &id)[0];
    assert!(
        rl.processed_on.unwrap() + 50 >= first_start + hold,
        "job restarted {} ms after its first start; queue hold {hold} ms",
        rl.processed_on.unwrap() - first_start
    );
    assert!(
        other_job.processed_on.unwrap() + 50 >= first_start + hold,
        "another job ran {} ms after the hold began ({hold} ms)",
        other_job.processed_on.unwrap() - first_start
    );
    assert!(
        event_times(&events, "delayed", &id).is_empty(),
        "queue scope must not delay the job itself"
    );
}
