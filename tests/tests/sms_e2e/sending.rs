//! What Telnyx gets and how each job ends: FreshTrack's scenarios as Node produces them, and numbers as
//! people type them.

use super::*;

#[test]
fn node_produced_sms_jobs_end_as_freshtrack_callers_expect() {
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start_with(Schema::Migrated, false).unwrap();
    let telnyx = fake_telnyx();
    let worker = sms_worker(&redis, &telnyx.url())
        .env("DATABASE_URL", pg.url())
        .env("SMS_REQUEST_TIMEOUT_MS", "5000")
        .env("SMS_AUTH_RETRY_DELAY_MS", "1000")
        .spawn_ready()
        .unwrap();
    assert!(
        worker.has_line("queue consuming queue=sms-notifications concurrency=5 job_timeout_ms=60000"),
        "the plugin's default concurrency (5) and time budget (60 s) on the queue's start line:\n{}",
        worker.output_text()
    );

    // A delivery that an earlier run already sent: the retry must not text the recipient again.
    let duplicate_row = insert_sms_delivery(&pg, PHONE);
    pg.execute(&format!(
        "UPDATE notification_deliveries SET status = 'sent', external_id = 'msg-earlier', sent_at = now() \
         WHERE id = '{duplicate_row}'"
    ))
    .unwrap();

    let scenarios = [
        "ok",
        "permanent",
        "flaky",
        "down",
        "throttled",
        "auth",
        "invalid",
        "duplicate",
    ];
    let rows: HashMap<&str, String> = scenarios
        .iter()
        .map(|s| {
            (
                *s,
                if *s == "duplicate" {
                    duplicate_row.clone()
                } else {
                    insert_sms_delivery(&pg, PHONE)
                },
            )
        })
        .collect();
    let node = NodeQueue::new(&redis, QUEUE);
    let jobs: Vec<Value> = scenarios
        .iter()
        .map(|s| {
            let phone = if *s == "invalid" { "5551234567" } else { PHONE };
            json!({"name": "sms:send", "data": job_data(s, phone, &rows[s]), "opts": sms_job_options()})
        })
        .collect();
    let ids = node.add(json!(jobs)).unwrap();
    let id: HashMap<&str, String> = scenarios.iter().copied().zip(ids.iter().cloned()).collect();
    let started = Instant::now();
    let done = node
        .wait_states(&ids, &["completed", "failed"], Duration::from_secs(90))
        .unwrap();
    let took = started.elapsed();
    let job = |s: &str| snapshot(&done, &id[s]).clone();
    let reqs = telnyx.requests();

    // Accepted at once.
    let j = job("ok");
    assert_state(&j, "completed", 1);
    assert_eq!(j.returnvalue, sms_sent("msg-ok"));
    let sent = by_scenario(&reqs, "ok");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].path, "/v2/messages");
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(sent[0].header("content-type"), Some("application/json"));
    assert_eq!(
        sent[0].json(),
        json!({"from": FROM, "to": PHONE, "text": "CRITICAL: Temperature alert (ok)"}),
        "no messaging_profile_id when none is configured"
    );
    assert_delivery(
        &pg,
        &rows["ok"],
        json!({"status": "sent", "external_id": "msg-ok", "has_sent_at": true}),
    );

    // Permanent rejection: failed after one attempt, no retry.
    let j = job("permanent");
    assert_state(&j, "failed", 1);
    assert_eq!(
        j.failed_reason.as_deref(),
        Some("Permanent SMS failure: 40310: The 'to' address is not a valid mobile number.")
    );
    assert_eq!(by_scenario(&reqs, "permanent").len(), 1);
    assert_delivery(
        &pg,
        &rows["permanent"],
        json!({
            "status": "failed",
            "error_message": "40310: The 'to' address is not a valid mobile number.",
            "has_failed_at": true,
        }),
    );

    // 500 then success: one retry under the job's backoff.
    let j = job("flaky");
    assert_state(&j, "completed", 2);
    assert_eq!(j.returnvalue, sms_sent("msg-flaky"));
    assert_eq!(by_scenario(&reqs, "flaky").len(), 2);
    assert_delivery(
        &pg,
        &rows["flaky"],
        json!({"status": "sent", "retry_count": 1}),
    );

    // Always 503: all five attempts used, then failed, and the row says so (the Node original left it pending).
    let j = job("down");
    assert_state(&j, "failed", 5);
    assert_eq!(
        j.failed_reason.as_deref(),
        Some("SMS send failed: HTTP 503")
    );
    assert_eq!(by_scenario(&reqs, "down").len(), 5);
    assert_delivery(
        &pg,
        &rows["down"],
        json!({"status": "failed", "retry_count": 5, "error_message": "HTTP 503"}),
    );

    // 429 with Retry-After: 1 → waited about a second, no attempt consumed.
    let j = job("throttled");
    assert_state(&j, "completed", 1);
    assert_eq!(j.returnvalue, sms_sent("msg-throttled"));
    assert_eq!(by_scenario(&reqs, "throttled").len(), 2);
    assert_delivery(
        &pg,
        &rows["throttled"],
        json!({"status": "sent", "retry_count": 0}),
    );

    // 401 twice: the queue pauses, no attempt consumed, an error logged each time; then it goes through.
    assert_state(&job("auth"), "completed", 1);
    assert_eq!(by_scenario(&reqs, "auth").len(), 3);
    let auth_errors = worker
        .lines()
        .iter()
        .filter(|l| l.contains("rejected our credentials"))
        .count();
    assert_eq!(
        auth_errors,
        2,
        "one error line per auth failure:\n{}",
        worker.output_text()
    );
    assert_delivery(
        &pg,
        &rows["auth"],
        json!({"status": "sent", "external_id": "msg-auth", "retry_count": 0}),
    );

    // Invalid number: unrecoverable, never sent, row failed with the reason.
    let j = job("invalid");
    assert_state(&j, "failed", 1);
    let reason = j.failed_reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("invalid sms:send job: phoneNumber has no country code"),
        "{reason}"
    );
    assert!(by_scenario(&reqs, "invalid").is_empty());
    assert_delivery(
        &pg,
        &rows["invalid"],
        json!({"status": "failed", "error_message": reason}),
    );

    // Already sent: completed with the recorded id, nothing sent.
    let j = job("duplicate");
    assert_state(&j, "completed", 1);
    assert_eq!(
        j.returnvalue,
        json!({"success": true, "messageId": "msg-earlier", "alreadySent": true})
    );
    assert!(by_scenario(&reqs, "duplicate").is_empty());

    assert_eq!(
        reqs.len(),
        14,
        "exactly the requests above: {:?}",
        reqs.iter().map(scenario_of).collect::<Vec<_>>()
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_no_secrets_in(&worker.lines());
}

/// FrostGuard stores numbers as users typed them; each typed form goes from a Node producer through the host
/// to Telnyx as E.164, and only a real non-number fails (for good, with the reason, row `failed`).
#[test]
fn numbers_as_people_type_them_reach_telnyx_as_e164() {
    let typed = [
        ("+1 555 123 4567", "+15551234567"),
        ("+1-555-123-4567", "+15551234567"),
        ("+1 (555) 123-4567", "+15551234567"),
        ("+44 (0)7911 123456", "+447911123456"),
        ("+15551234567 ", "+15551234567"),
        ("+1.555.123.4567", "+15551234567"),
    ];
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start_with(Schema::Migrated, false).unwrap();
    let telnyx = FakeHttp::start(|n, _| ok(&format!("msg-{n}"))).unwrap();
    let _worker = sms_worker(&redis, &telnyx.url())
        .env("DATABASE_URL", pg.url())
        .spawn_ready()
        .unwrap();
    let node = NodeQueue::new(&redis, QUEUE);

    let mut jobs = Vec::new();
    let mut rows = Vec::new();
    for (i, (number, _)) in typed.iter().chain([&("call me", "")]).enumerate() {
        let row = insert_sms_delivery(&pg, number);
        jobs.push(
            json!({"name": "sms:send", "data": job_data(&format!("typed-{i}"), number, &row),
                         "opts": sms_job_options()}),
        );
        rows.push(row);
    }
    let ids = node.add(Value::Array(jobs)).unwrap();
    let done = node.wait_finished(&ids).unwrap();

    let reqs = telnyx.requests();
    for (i, (number, e164)) in typed.iter().enumerate() {
        let j = snapshot(&done, &ids[i]);
        assert_state(j, "completed", 1);
        let sent_to: Vec<String> = by_scenario(&reqs, &format!("typed-{i}"))
            .iter()
            .map(|r| r.json()["to"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(sent_to, vec![e164.to_string()], "typed {number:?}");
        assert_delivery(&pg, &rows[i], json!({"status": "sent"}));
    }
    let not_a_number = snapshot(&done, &ids[typed.len()]);
    assert_state(not_a_number, "failed", 1);
    let reason = not_a_number.failed_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("phoneNumber has no country code"),
        "{reason}"
    );
    assert_delivery(
        &pg,
        &rows[typed.len()],
        json!({"status": "failed", "has_failed_at": true}),
    );
    assert_eq!(reqs.len(), typed.len(), "nothing sent for the non-number");
}
