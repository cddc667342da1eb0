//! What a digest holds and how it is sent: skip reasons, windows, site filters, the 50-alert limit, the
//! Resend request, both bodies, the unsubscribe token and times in the user's zone.

use super::seed::*;
use super::*;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use plugin_api::loader::LogLevel;

/// A trigger time as the digest shows it in `zone`.
fn local_time(ms: i64, zone: &str) -> String {
    let tz: Tz = zone.parse().unwrap();
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .with_timezone(&tz)
        .format("%b %-d, %-I:%M %p %Z")
        .to_string()
}

/// The unsubscribe token inside `url` (`…/unsubscribe?token=<jwt>`).
fn token_of(url: &str) -> &str {
    url.split_once("/unsubscribe?token=")
        .map(|(_, t)| t.trim_end_matches('>'))
        .expect("an unsubscribe link")
}

#[test]
fn skip_reasons_complete_the_job_and_send_nothing() {
    let f = Fixture::start(vec![], accepted("never"));
    let cases = [
        (
            ACME,
            USER_UNKNOWN,
            "daily",
            json!({"success": false, "reason": "user_not_found"}),
        ),
        (
            ACME,
            USER_EMAIL_OFF,
            "daily",
            json!({"success": false, "reason": "user_disabled_emails"}),
        ),
        (
            ACME,
            USER_DAILY_OFF,
            "daily",
            json!({"success": false, "reason": "daily_digest_disabled"}),
        ),
        (
            ACME,
            USER_WEEKLY_OFF,
            "weekly",
            json!({"success": false, "reason": "weekly_digest_disabled"}),
        ),
        // The profile moved to another organization: the scheduler's organization is not theirs to read.
        (
            ACME,
            USER_MOVED,
            "daily",
            json!({"success": false, "reason": "user_not_in_organization"}),
        ),
        (
            QUIET,
            USER_QUIET,
            "daily",
            json!({"success": true, "reason": "no_content"}),
        ),
        (
            QUIET,
            USER_QUIET,
            "weekly",
            json!({"success": true, "reason": "no_content"}),
        ),
    ];
    for (org, user, period, expected) in cases {
        let run = f.run(org, user, period);
        assert_eq!(completed(&run), &expected, "{user} {period}");
    }
    assert!(f.resend.requests().is_empty(), "{:?}", f.resend.requests());
}

#[test]
fn daily_digest_request_bodies_token_and_local_times() {
    let f = Fixture::start(vec![accepted("em-daily-1")], accepted("unexpected"));
    let run = f.run(ACME, USER_NY, "daily");
    assert_eq!(
        completed(&run),
        &json!({"success": true, "messageId": "em-daily-1"})
    );
    let requests = f.resend.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_resend_request(r, NY_EMAIL);
    assert_eq!(
        r.header("idempotency-key"),
        Some(format!("email-digest/{USER_NY}/daily/job-harness-1").as_str())
    );
    let body = r.json();
    // 7 cooler alerts, the freezer's and the airport's of the last 24 hours; none older, none of OTHER.
    assert_eq!(body["subject"], "Your daily alert digest - 9 alerts");
    let html = body["html"].as_str().unwrap();
    let text = body["text"].as_str().unwrap();

    // Layout of the daily variant.
    assert!(html.contains("Daily Alert Digest") && html.contains("#0d6efd"));
    assert!(
        text.starts_with("DAILY ALERT DIGEST - FreshTrack Pro"),
        "{text}"
    );
    // Summary: critical 10m/30m/60m/airport; warning markup/40m/70m; info 50m/freezer; resolved 30m/40m/freezer.
    assert!(
        text.contains("9 alerts | 4 critical | 3 warning | 2 info | 3 resolved"),
        "{text}"
    );
    assert!(html.contains("<strong>9</strong> alerts"));
    // Per unit at most 5 rows, newest first, then "+ N more".
    for shown in &COOLER_DAILY[..5] {
        assert!(text.contains(shown), "{shown} missing:\n{text}");
    }
    for hidden in &COOLER_DAILY[5..] {
        assert!(
            !text.contains(hidden) && !html.contains(hidden),
            "{hidden} shown"
        );
    }
    assert!(html.contains("+ 2 more alerts from this unit"));
    assert!(text.contains("+ 2 more alerts from this unit"));
    assert!(text.contains(AIRPORT_DAILY) && text.contains("Alert triggered"));
    for outside in [COOLER_25H, AIRPORT_3D, AIRPORT_8D, OTHER_ORG_ALERT] {
        assert!(
            !text.contains(outside) && !html.contains(outside),
            "{outside} shown"
        );
    }
    // Sites in order of their newest alert, units under them.
    let downtown = text.find(&format!("== {DOWNTOWN_NAME} ==")).unwrap();
    let airport = text.find("== Airport ==").unwrap();
    assert!(downtown < airport, "{text}");

    // User-controlled text: escaped in HTML, as is in text.
    for (raw, escaped) in [
        (ACME_NAME, "Acme &lt;Cold&gt; &amp; &quot;Co&quot;"),
        (NY_NAME, "Dana &lt;D&gt; &amp; Co"),
        (DOWNTOWN_NAME, "Downtown &lt;Kitchen&gt;"),
        (COOLER_NAME, "Walk-in &lt;Cooler&gt; #1"),
        (
            MARKUP_MESSAGE,
            "&lt;b&gt;Door&lt;&#x2f;b&gt; open &amp; &quot;propped&quot;",
        ),
    ] {
        assert!(!html.contains(raw), "{raw} unescaped in HTML");
        assert!(html.contains(escaped), "{escaped} missing from HTML");
        assert!(text.contains(raw), "{raw} missing from text");
    }
    assert!(text.contains(&format!("Hi {NY_NAME},")));

    // Times in the user's zone, named.
    for message in [AIRPORT_DAILY, "cooler-10m"] {
        let at = local_time(triggered_ms(&f.pg, message), "America/New_York");
        assert!(at.ends_with(" EST") || at.ends_with(" EDT"), "{at}");
        assert!(
            text.contains(&at) && html.contains(&at),
            "{at} missing:\n{text}"
        );
    }
    assert!(text.contains("Times are shown in America/New_York."));

    // Links: dashboard, unsubscribe in both bodies and in the List-Unsubscribe header.
    assert!(html.contains(&format!("href=\"{APP}/alerts\"")));
    assert!(text.contains(&format!("View All Alerts: {APP}/alerts")));
    let header = body["headers"]["List-Unsubscribe"].as_str().unwrap();
    assert!(header.starts_with(&format!("<{APP}/unsubscribe?token=")) && header.ends_with('>'));
    let token = token_of(header);
    assert!(html.contains(&format!("{APP}/unsubscribe?token={token}")));
    assert!(text.contains(&format!("{APP}/unsubscribe?token={token}")));

    // The token verifies with the secret (signature and expiry), as the API's verifier does.
    let verified = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .expect("token verifies with UNSUBSCRIBE_SECRET");
    let claims = verified.claims;
    assert_eq!(claims["userId"], USER_NY);
    assert_eq!(claims["type"], "daily");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 30 * 86_400);
    assert!((Utc::now().timestamp() - iat).abs() < 600, "iat {iat}");
    assert!(jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(b"another secret"),
        &Validation::new(Algorithm::HS256)
    )
    .is_err());
}

#[test]
fn weekly_window_site_filters_zones_and_the_limit() {
    let f = Fixture::start(vec![], accepted("em-any"));

    // Weekly: 25-hour-old and 3-day-old alerts join; the 8-day-old one stays out.
    f.run(ACME, USER_NY, "weekly");
    // Only the airport site, in India's zone; one alert, so "alert".
    f.run(ACME, USER_FILTERED, "daily");
    // Unparsable site list and unknown zone: every site, UTC, and warnings.
    let bad = f.run(ACME, USER_BAD_FILTER, "daily");
    // 60 alerts in the window: 50 listed, the rest said; organization without a name.
    f.run(BUSY, USER_BUSY, "daily");

    let requests = f.resend.requests();
    assert_eq!(requests.len(), 4);
    let bodies: Vec<Value> = requests.iter().map(RecordedRequest::json).collect();
    let text = |i: usize| bodies[i]["text"].as_str().unwrap().to_owned();
    let html = |i: usize| bodies[i]["html"].as_str().unwrap().to_owned();

    assert_eq!(bodies[0]["subject"], "Your weekly alert digest - 11 alerts");
    assert!(html(0).contains("Weekly Alert Digest") && html(0).contains("#6f42c1"));
    assert!(text(0).contains(AIRPORT_3D) && !text(0).contains(AIRPORT_8D));
    assert!(
        text(0).contains("+ 3 more alerts from this unit"),
        "{}",
        text(0)
    );
    assert!(text(0).contains("Unsubscribe from weekly digest emails"));
    assert!(requests[0]
        .header("idempotency-key")
        .unwrap()
        .starts_with(&format!("email-digest/{USER_NY}/weekly/")));
    let weekly_token = token_of(bodies[0]["headers"]["List-Unsubscribe"].as_str().unwrap());
    let claims = jsonwebtoken::decode::<Value>(
        weekly_token,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .unwrap()
    .claims;
    assert_eq!(claims["type"], "weekly");

    assert_resend_request(&requests[1], "filtered@example.com");
    assert_eq!(bodies[1]["subject"], "Your daily alert digest - 1 alert");
    assert!(text(1).contains(AIRPORT_DAILY) && !text(1).contains(DOWNTOWN_NAME));
    let at = local_time(triggered_ms(&f.pg, AIRPORT_DAILY), "Asia/Kolkata");
    assert!(
        at.ends_with(" IST") && text(1).contains(&at),
        "{at}\n{}",
        text(1)
    );

    assert_eq!(bodies[2]["subject"], "Your daily alert digest - 9 alerts");
    assert!(text(2).contains("Hi User,") && text(2).contains("Times are shown in UTC."));
    let at = local_time(triggered_ms(&f.pg, AIRPORT_DAILY), "UTC");
    assert!(text(2).contains(&at), "{at}");
    assert!(
        logged(&bad.logs, LogLevel::Warn, "digest_site_ids is unusable"),
        "{:?}",
        bad.logs
    );
    assert!(logged(&bad.logs, LogLevel::Warn, "not a known IANA zone"));

    assert_eq!(bodies[3]["subject"], "Your daily alert digest - 60 alerts");
    assert!(
        text(3).contains("50 alerts | 0 critical | 50 warning"),
        "{}",
        text(3)
    );
    assert!(text(3).contains("Showing the 50 most recent of 60 alerts in the last 24 hours."));
    assert!(text(3).contains("summary for Your Organization:"));
    assert!(text(3).contains("+ 45 more alerts from this unit"));
    for n in 1..=5 {
        assert!(text(3).contains(&format!("busy-{n}\n")), "busy-{n}");
    }
    assert!(!text(3).contains("busy-6\n") && !html(3).contains("busy-51<"));
}
