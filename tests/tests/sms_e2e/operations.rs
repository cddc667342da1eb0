//! What an operator meets: a plugin without credentials, the log at debug level and as JSON, dry run,
//! and refused credentials holding the queue.

use super::*;

#[test]
fn without_credentials_the_plugin_is_disabled_and_sms_jobs_wait() {
    let redis = RedisServer::start().unwrap();
    let telnyx = fake_telnyx();
    let worker = Worker::builder()
        .redis(&redis)
        .plugins(&[SMS_PLUGIN, TEST_PLUGIN])
        .env("TELNYX_API_BASE_URL", telnyx.url())
        .spawn_ready()
        .unwrap();
    let line = worker
        .wait_for_line("plugin disabled", Duration::from_secs(5))
        .unwrap();
    assert!(
        line.contains("TELNYX_API_KEY") && line.contains("SMS_DRY_RUN"),
        "{line}"
    );

    let node = NodeQueue::new(&redis, QUEUE);
    let id = node
        .add_one(
            "sms:send",
            job_data("ok", PHONE, "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b"),
            sms_job_options(),
        )
        .unwrap();
    // Not a matter of waiting long enough: the worker runs (a job of the other plugin's queue goes through
    // after the SMS job was added) and has a BullMQ worker connection (named `bull:` + base64 of the queue)
    // for that queue only; none for `sms-notifications`.
    let other = NodeQueue::new(&redis, "test-outcomes")
        .run(json!([{"name": "complete", "data": {"result": "other queue"}}]))
        .unwrap();
    assert_eq!(other[0].state, "completed", "{:?}", other[0]);
    let clients = redis.cmd(&["CLIENT", "LIST"]).unwrap();
    let clients = clients.as_str().unwrap_or_default();
    assert!(
        clients.contains("name=bull:dGVzdC1vdXRjb21lcw== "),
        "{clients}"
    );
    assert!(
        !clients.contains("name=bull:c21zLW5vdGlmaWNhdGlvbnM="),
        "{clients}"
    );
    let j = node.job(&id).unwrap();
    assert_state(&j, "waiting", 0);
    assert_eq!(j.attempts_started, 0, "{j:?}");
    assert!(telnyx.requests().is_empty());
}

/// Personal data stays out of the log however the host is configured: at debug level (the host's and its
/// libraries' debug lines included) and as JSON, the number shows only masked, and neither the full number,
/// the message text nor the API key appear.
#[test]
fn at_debug_level_and_as_json_the_log_carries_the_number_only_masked() {
    let redis = RedisServer::start().unwrap();
    let telnyx = fake_telnyx();
    let worker = sms_worker(&redis, &telnyx.url())
        .env("RUST_LOG", "debug")
        .env("LOG_FORMAT", "json")
        .spawn_ready()
        .unwrap();
    let node = NodeQueue::new(&redis, QUEUE);
    let ids = node
        .add(json!([
            {"name": "sms:send", "data": job_data("ok", PHONE, "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b"), "opts": sms_job_options()},
            {"name": "sms:send", "data": job_data("permanent", PHONE, "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6c"), "opts": sms_job_options()},
        ]))
        .unwrap();
    let done = node.wait_finished(&ids).unwrap();
    assert_state(&done[0], "completed", 1);
    assert_state(&done[1], "failed", 1);
    // The line that names the number is there, as JSON, with the number masked.
    let sending = worker
        .wait_for_line(
            "Telnyx rejected the SMS permanently",
            Duration::from_secs(10),
        )
        .unwrap();
    let record: Value = serde_json::from_str(&sending).expect("a JSON log line");
    assert!(record.to_string().contains("+1555*****67"), "{record}");
    let lines = worker.lines();
    assert!(
        lines.iter().any(|l| l.contains("DEBUG")),
        "debug lines are on"
    );
    assert_no_secrets_in(&lines);
}

#[test]
fn dry_run_completes_jobs_without_calling_telnyx() {
    let redis = RedisServer::start().unwrap();
    let telnyx = fake_telnyx();
    let worker = Worker::builder()
        .redis(&redis)
        .plugins(&[SMS_PLUGIN])
        .env("SMS_DRY_RUN", "true")
        .env("TELNYX_API_BASE_URL", telnyx.url())
        .spawn_ready()
        .unwrap();
    let node = NodeQueue::new(&redis, QUEUE);
    let ids = node
        .add(json!([{"name": "sms:send", "data": job_data("ok", PHONE, "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b"),
                      "opts": sms_job_options()}]))
        .unwrap();
    let done = node.wait_finished(&ids).unwrap();
    assert_eq!(done[0].state, "completed", "{:?}", done[0]);
    assert_eq!(
        done[0].returnvalue,
        json!({"success": true, "dryRun": true})
    );
    wait_until(Duration::from_secs(5), "dry-run log line", || {
        worker
            .lines()
            .into_iter()
            .find(|l| l.contains("dry run: SMS not sent") && l.contains("+1555*****67"))
    })
    .unwrap();
    assert!(telnyx.requests().is_empty());
}

/// Refused credentials hold the queue — and say so: an error line, `/readyz` naming the held queue, the
/// plugin and the reason, and the metrics; a job waits without using an attempt.
#[test]
fn refused_credentials_hold_the_queue_visibly() {
    let redis = RedisServer::start().unwrap();
    let telnyx = FakeHttp::scripted(
        vec![],
        telnyx_error(
            401,
            "10009",
            "Authentication failed",
            "The API key is invalid.",
        ),
    )
    .unwrap();
    let mut started = None;
    for _ in 0..5 {
        let port = frostguard_tests::free_port();
        let spawned = sms_worker(&redis, &telnyx.url())
            .env("SMS_AUTH_RETRY_DELAY_MS", "60000")
            .env("HTTP_PORT", port.to_string())
            .spawn_ready();
        match spawned {
            Ok(worker) => {
                started = Some((worker, port));
                break;
            }
            Err(e) if format!("{e:#}").contains("HTTP_PORT") => continue,
            Err(e) => panic!("host did not get ready: {e:#}"),
        }
    }
    let (worker, port) = started.expect("a free HTTP port within 5 tries");
    let node = NodeQueue::new(&redis, QUEUE);
    let id = node
        .add_one(
            "sms:send",
            job_data("auth", PHONE, "7a1c3f2e-5b8d-4e6f-9a0b-1c2d3e4f5a6b"),
            sms_job_options(),
        )
        .unwrap();

    let line = worker
        .wait_for_line("Telnyx rejected our credentials", Duration::from_secs(20))
        .unwrap();
    assert!(line.contains("ERROR") && line.contains("10009"), "{line}");
    let ready: Value = wait_until(Duration::from_secs(10), "the hold on /readyz", || {
        let body: Value = serde_json::from_str(&http_get_body(port, "/readyz")?).ok()?;
        (!body["held_queues"].as_array()?.is_empty()).then_some(body)
    })
    .unwrap();
    let held = &ready["held_queues"][0];
    assert_eq!(held["queue"], QUEUE, "{ready}");
    assert_eq!(held["plugin"], "sms-notifications", "{ready}");
    assert!(
        held["reason"].as_str().unwrap().contains("10009"),
        "{ready}"
    );
    let metrics = http_get_body(port, "/metrics").unwrap();
    let sample = |name: &str, label: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(label) && l.contains("sms-notifications"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(
        sample("frostguard_queue_held{", "queue=\"sms-notifications\""),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(
            "frostguard_plugin_events_total{",
            "event=\"credentials_rejected\""
        ) >= Some(1.0),
        "{metrics}"
    );

    // The job waits for the operator, with no attempt used; one request, not a retry storm.
    let j = node.job(&id).unwrap();
    assert_eq!(j.attempts_made, 0, "{j:?}");
    assert!(
        matches!(j.state.as_str(), "waiting" | "prioritized" | "delayed"),
        "{j:?}"
    );
    assert_eq!(telnyx.requests().len(), 1);
}
