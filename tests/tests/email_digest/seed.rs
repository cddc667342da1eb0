//! The seeded FrostGuard data every digest test reads: organizations, sites, areas, units, alerts at times
//! relative to `now()` (inside and outside the daily and weekly windows), and one profile per case.
//!
//! Organization `ACME` (name with HTML-special characters) has two sites; its walk-in cooler has 7 alerts in
//! the last 24 hours (5 rows + "+ 2 more"), one of them with markup in its message, and one 25 hours old
//! (weekly only); its airport site has alerts 3 hours, 3 days and 8 days old. `OTHER` has an alert in the
//! window that no ACME digest may show. `QUIET` has no alerts. `BUSY` has 60 alerts in the last 24 hours.
//! `USER_NY` also has a profile in `OTHER` (with the lowest id, digests off): an ACME digest must use the ACME
//! profile.

use frostguard_tests::Postgres;

pub const ACME: &str = "a0000000-0000-4000-8000-000000000001";
pub const OTHER: &str = "a0000000-0000-4000-8000-000000000002";
pub const QUIET: &str = "a0000000-0000-4000-8000-000000000003";
pub const BUSY: &str = "a0000000-0000-4000-8000-000000000004";

pub const SITE_DOWNTOWN: &str = "b0000000-0000-4000-8000-000000000001";
pub const SITE_AIRPORT: &str = "b0000000-0000-4000-8000-000000000002";

pub const ACME_NAME: &str = "Acme <Cold> & \"Co\"";
pub const DOWNTOWN_NAME: &str = "Downtown <Kitchen>";
pub const COOLER_NAME: &str = "Walk-in <Cooler> #1";
pub const MARKUP_MESSAGE: &str = "<b>Door</b> open & \"propped\"";

/// Profiles, by auth user id (`profiles.user_id`).
pub const USER_NY: &str = "c0000000-0000-4000-8000-000000000001";
pub const USER_FILTERED: &str = "c0000000-0000-4000-8000-000000000002";
pub const USER_BAD_FILTER: &str = "c0000000-0000-4000-8000-000000000003";
pub const USER_EMAIL_OFF: &str = "c0000000-0000-4000-8000-000000000004";
pub const USER_DAILY_OFF: &str = "c0000000-0000-4000-8000-000000000005";
pub const USER_WEEKLY_OFF: &str = "c0000000-0000-4000-8000-000000000006";
pub const USER_MOVED: &str = "c0000000-0000-4000-8000-000000000007";
pub const USER_QUIET: &str = "c0000000-0000-4000-8000-000000000008";
pub const USER_BUSY: &str = "c0000000-0000-4000-8000-000000000009";
/// No profile has this user id.
pub const USER_UNKNOWN: &str = "c0000000-0000-4000-8000-0000000000ff";

pub const NY_EMAIL: &str = "dana@example.com";
pub const NY_NAME: &str = "Dana <D> & Co";

/// Messages of the ACME alerts, to find them in the bodies: in the daily window…
pub const COOLER_DAILY: [&str; 7] = [
    "cooler-10m",
    MARKUP_MESSAGE,
    "cooler-30m",
    "cooler-40m",
    "cooler-50m",
    "cooler-60m",
    "cooler-70m",
];
pub const AIRPORT_DAILY: &str = "airport-3h";
/// …only in the weekly window…
pub const COOLER_25H: &str = "cooler-25h";
pub const AIRPORT_3D: &str = "airport-3d";
/// …and in neither.
pub const AIRPORT_8D: &str = "airport-8d";
pub const OTHER_ORG_ALERT: &str = "other-org-1h";

pub fn seed(pg: &Postgres) {
    let sql = format!(
        "INSERT INTO organizations (id, name, slug) VALUES \
           ('{ACME}', '{acme}', 'acme'), ('{OTHER}', 'Other Org', 'other'), \
           ('{QUIET}', 'Quiet Org', 'quiet'), ('{BUSY}', '', 'busy'); \
         INSERT INTO sites (id, organization_id, name) VALUES \
           ('{SITE_DOWNTOWN}', '{ACME}', '{downtown}'), ('{SITE_AIRPORT}', '{ACME}', 'Airport'), \
           ('b0000000-0000-4000-8000-000000000003', '{OTHER}', 'Other Site'), \
           ('b0000000-0000-4000-8000-000000000004', '{BUSY}', 'Busy Site'); \
         INSERT INTO areas (id, site_id, name) VALUES \
           ('d0000000-0000-4000-8000-000000000001', '{SITE_DOWNTOWN}', 'Back'), \
           ('d0000000-0000-4000-8000-000000000002', '{SITE_AIRPORT}', 'Front'), \
           ('d0000000-0000-4000-8000-000000000003', 'b0000000-0000-4000-8000-000000000003', 'Area'), \
           ('d0000000-0000-4000-8000-000000000004', 'b0000000-0000-4000-8000-000000000004', 'Area'); \
         INSERT INTO units (id, area_id, name) VALUES \
           ('e0000000-0000-4000-8000-000000000001', 'd0000000-0000-4000-8000-000000000001', '{cooler}'), \
           ('e0000000-0000-4000-8000-000000000002', 'd0000000-0000-4000-8000-000000000001', 'Freezer'), \
           ('e0000000-0000-4000-8000-000000000003', 'd0000000-0000-4000-8000-000000000002', 'Display'), \
           ('e0000000-0000-4000-8000-000000000004', 'd0000000-0000-4000-8000-000000000003', 'Other Unit'), \
           ('e0000000-0000-4000-8000-000000000005', 'd0000000-0000-4000-8000-000000000004', 'Busy Unit'); \
         INSERT INTO alerts (unit_id, alert_type, severity, status, message, triggered_at) VALUES \
           ('e0000000-0000-4000-8000-000000000001', 'alarm_active', 'critical', 'active', 'cooler-10m', now() - interval '10 minutes'), \
           ('e0000000-0000-4000-8000-000000000001', 'door_open', 'warning', 'acknowledged', '{markup}', now() - interval '20 minutes'), \
           ('e0000000-0000-4000-8000-000000000001', 'alarm_active', 'critical', 'resolved', 'cooler-30m', now() - interval '30 minutes'), \
           ('e0000000-0000-4000-8000-000000000001', 'alarm_active', 'warning', 'resolved', 'cooler-40m', now() - interval '40 minutes'), \
           ('e0000000-0000-4000-8000-000000000001', 'alarm_active', 'info', 'active', 'cooler-50m', now() - interval '50 minutes'), \
           ('e0000000-0000-4000-8000-000000000001', 'alarm_active', 'critical', 'escalated', 'cooler-60m', now() - interval '60 minutes'), \
           ('e0000000-0000-4000-8000-000000000001', 'alarm_active', 'warning', 'active', 'cooler-70m', now() - interval '70 minutes'), \
           ('e0000000-0000-4000-8000-000000000001', 'alarm_active', 'warning', 'active', 'cooler-25h', now() - interval '25 hours'), \
           ('e0000000-0000-4000-8000-000000000002', 'low_battery', 'info', 'resolved', NULL, now() - interval '2 hours'), \
           ('e0000000-0000-4000-8000-000000000003', 'alarm_active', 'critical', 'active', 'airport-3h', now() - interval '3 hours'), \
           ('e0000000-0000-4000-8000-000000000003', 'alarm_active', 'warning', 'resolved', 'airport-3d', now() - interval '3 days'), \
           ('e0000000-0000-4000-8000-000000000003', 'alarm_active', 'critical', 'active', 'airport-8d', now() - interval '8 days'), \
           ('e0000000-0000-4000-8000-000000000004', 'alarm_active', 'critical', 'active', 'other-org-1h', now() - interval '1 hour'); \
         INSERT INTO alerts (unit_id, alert_type, severity, message, triggered_at) \
           SELECT 'e0000000-0000-4000-8000-000000000005', 'alarm_active', 'warning', 'busy-' || n, \
                  now() - n * interval '10 minutes' FROM generate_series(1, 60) AS n; \
         INSERT INTO profiles (user_id, organization_id, email, full_name, email_enabled, digest_daily, \
                               digest_weekly, digest_site_ids, timezone) VALUES \
           ('{USER_NY}', '{ACME}', '{NY_EMAIL}', '{ny_name}', true, true, true, NULL, 'America/New_York'), \
           ('{USER_FILTERED}', '{ACME}', 'filtered@example.com', 'Filtered', true, true, true, \
            '[\"{SITE_AIRPORT}\"]', 'Asia/Kolkata'), \
           ('{USER_BAD_FILTER}', '{ACME}', 'bad@example.com', NULL, true, true, true, 'not json', 'Not/AZone'), \
           ('{USER_EMAIL_OFF}', '{ACME}', 'off@example.com', NULL, false, true, true, NULL, 'UTC'), \
           ('{USER_DAILY_OFF}', '{ACME}', 'weekly@example.com', NULL, true, false, true, NULL, 'UTC'), \
           ('{USER_WEEKLY_OFF}', '{ACME}', 'daily@example.com', NULL, true, true, false, NULL, 'UTC'), \
           ('{USER_MOVED}', '{OTHER}', 'moved@example.com', NULL, true, true, true, NULL, 'UTC'), \
           ('{USER_QUIET}', '{QUIET}', 'quiet@example.com', NULL, true, true, true, NULL, 'UTC'), \
           ('{USER_BUSY}', '{BUSY}', 'busy@example.com', 'Busy', true, true, true, NULL, 'UTC'); \
         INSERT INTO profiles (id, user_id, organization_id, email, email_enabled, digest_daily, timezone) VALUES \
           ('00000000-0000-4000-8000-000000000001', '{USER_NY}', '{OTHER}', 'dana@other.example', true, false, 'UTC');",
        acme = sql_text(ACME_NAME),
        downtown = sql_text(DOWNTOWN_NAME),
        cooler = sql_text(COOLER_NAME),
        markup = sql_text(MARKUP_MESSAGE),
        ny_name = sql_text(NY_NAME),
    );
    pg.execute(&sql).expect("seed the digest data");
}

fn sql_text(s: &str) -> String {
    s.replace('\'', "''")
}

/// When the alert with `message` was triggered, in ms since the epoch.
pub fn triggered_ms(pg: &Postgres, message: &str) -> i64 {
    pg.query_scalar(&format!(
        "SELECT (extract(epoch FROM triggered_at) * 1000)::bigint FROM alerts WHERE message = '{}'",
        sql_text(message)
    ))
    .expect("read alert time")
    .expect("alert exists")
    .parse()
    .expect("a number")
}
