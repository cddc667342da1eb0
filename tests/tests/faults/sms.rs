//! SMS during a PostgreSQL outage, a provider outage and a slow provider (the SMS plugin as shipped): every
//! alarm SMS is requested and its delivery row ends `sent`, every job completes once, none is lost; and
//! jobs waiting on the provider hold no thread.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use frostguard_tests::{
    delivery_row, insert_sms_delivery, json, serde_json::Value, thread_count, FakeHttp, NodeQueue,
    Postgres, RecordedRequest, RedisServer, Reply, Worker, SMS_PLUGIN,
};

use crate::tally;

const QUEUE: &str = "sms-notifications";
const PHONE: &str = "+15551234567";

fn sms_jobs(deliveries: &[String]) -> Value {
    Value::Array(
        deliveries
            .iter()
            .enumerate()
            .map(|(i, d)| {
                json!({"name": "sms:send", "data": {
                    "organizationId": "11111111-2222-3333-4444-555555555555",
                    "phoneNumber": PHONE,
                    "message": format!("CRITICAL: Temperature alert (d{i})"),
                    "alertId": "a-1", "deliveryId": d, "userId": "u-1", "alertType": "alarm_active",
                }, "opts": {"attempts": 10, "backoff": {"type": "exponential", "delay": 200}}})
            })
            .collect(),
    )
}

fn worker(redis: &RedisServer, pg: &Postgres, telnyx: &FakeHttp) -> Worker {
    worker_with(redis, pg, telnyx, &[])
}

fn worker_with(
    redis: &RedisServer,
    pg: &Postgres,
    telnyx: &FakeHttp,
    env: &[(&str, &str)],
) -> Worker {
    let mut b = Worker::builder()
        .redis(redis)
        .plugins(&[SMS_PLUGIN])
        .env("TELNYX_API_KEY", "KEYfault0123456789")
        .env("TELNYX_PHONE_NUMBER", "+15550009999")
        .env("TELNYX_API_BASE_URL", telnyx.url())
        .env("DATABASE_URL", pg.url())
        .env("SMS_REQUEST_TIMEOUT_MS", "3000")
        .env("SMS_AUTH_RETRY_DELAY_MS", "500");
    for (k, v) in env {
        b = b.env(*k, *v);
    }
    b.spawn_ready().expect("host")
}

/// Requests per message text (one text per delivery).
fn requests_per_delivery(requests: &[RecordedRequest]) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for r in requests {
        *per.entry(r.json()["text"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    per
}

fn check(
    scenario: &str,
    q: &NodeQueue,
    ids: &[String],
    pg: &Postgres,
    deliveries: &[String],
    telnyx: &FakeHttp,
    outage: Duration,
) {
    let t = tally(q, ids, Duration::from_secs(90));
    let per = requests_per_delivery(&telnyx.requests());
    let sent = deliveries
        .iter()
        .filter(|d| delivery_row(pg, d)["status"] == "sent")
        .count();
    let twice = per.values().filter(|n| **n > 1).count();
    eprintln!(
        "FAULT {scenario}: jobs={} completed={} failed={} outage={outage:?} rows sent={sent} provider requests={} \
         deliveries requested more than once={twice}",
        ids.len(),
        t.completed,
        t.failed,
        per.values().sum::<usize>()
    );
    t.assert_all_completed_once(scenario);
    assert_eq!(sent, deliveries.len(), "every delivery row sent");
    assert_eq!(per.len(), deliveries.len(), "every SMS requested: {per:?}");
}

#[test]
fn a_postgres_outage_during_sms_delays_but_loses_nothing() {
    let redis = RedisServer::start().expect("redis");
    let mut pg = Postgres::start().expect("postgres");
    let telnyx =
        FakeHttp::start(|n, _| Reply::json(200, &json!({"data": {"id": format!("msg-{n}")}})))
            .expect("fake telnyx");
    let deliveries: Vec<String> = (0..8).map(|_| insert_sms_delivery(&pg, PHONE)).collect();
    let _w = worker(&redis, &pg, &telnyx);
    let q = NodeQueue::new(&redis, QUEUE);
    pg.stop();
    let down = Instant::now();
    let ids = q.add(sms_jobs(&deliveries)).expect("add");
    std::thread::sleep(Duration::from_secs(2));
    pg.restart().expect("postgres back");
    check(
        "postgres outage during SMS",
        &q,
        &ids,
        &pg,
        &deliveries,
        &telnyx,
        down.elapsed(),
    );
}

#[test]
fn a_provider_outage_during_sms_delays_but_loses_nothing() {
    let redis = RedisServer::start().expect("redis");
    let pg = Postgres::start().expect("postgres");
    let start = Instant::now();
    let outage = Duration::from_secs(3);
    let telnyx = FakeHttp::start(move |n, _| {
        if start.elapsed() < outage {
            Reply::status(503)
        } else {
            Reply::json(200, &json!({"data": {"id": format!("msg-{n}")}}))
        }
    })
    .expect("fake telnyx");
    let deliveries: Vec<String> = (0..8).map(|_| insert_sms_delivery(&pg, PHONE)).collect();
    let _w = worker(&redis, &pg, &telnyx);
    let q = NodeQueue::new(&redis, QUEUE);
    let ids = q.add(sms_jobs(&deliveries)).expect("add");
    check(
        "provider outage during SMS",
        &q,
        &ids,
        &pg,
        &deliveries,
        &telnyx,
        outage,
    );
}

#[test]
fn sms_waiting_on_a_slow_provider_hold_no_thread() {
    let redis = RedisServer::start().expect("redis");
    let pg = Postgres::start().expect("postgres");
    let answer_after = Duration::from_millis(2000);
    let telnyx = FakeHttp::start(move |n, _| {
        Reply::json(200, &json!({"data": {"id": format!("msg-{n}")}})).delay(answer_after)
    })
    .expect("fake telnyx");
    let deliveries: Vec<String> = (0..16).map(|_| insert_sms_delivery(&pg, PHONE)).collect();
    let w = worker_with(
        &redis,
        &pg,
        &telnyx,
        &[
            ("QUEUE_SMS_NOTIFICATIONS_CONCURRENCY", "16"),
            ("QUEUE_SMS_NOTIFICATIONS_RATE_LIMIT_MAX", "0"),
        ],
    );
    let before = thread_count(w.pid());
    let q = NodeQueue::new(&redis, QUEUE);
    let ids = q.add(sms_jobs(&deliveries)).expect("add");
    // Sixteen requests waiting on the provider at once: a send held on a thread would add one thread each
    // (the plugin process's job threads); awaited on the plugin's runtime, none.
    telnyx
        .wait_for_requests(16, Duration::from_secs(30))
        .expect("sixteen SMS requested together");
    let during = thread_count(w.pid());
    assert!(
        during < before + 8,
        "{during} threads with sixteen SMS waiting on the provider, {before} before"
    );
    check(
        "slow provider",
        &q,
        &ids,
        &pg,
        &deliveries,
        &telnyx,
        answer_after,
    );
}
