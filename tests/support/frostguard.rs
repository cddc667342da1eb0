//! FrostGuard fixtures shared by the SMS tests (`sms_plugin`, `sms_e2e`): delivery rows in the FrostGuard schema
//! (insert, read, assert), the result an SMS job returns when it sent, Telnyx's error answer, and the check that
//! no log line carries personal data or credentials.

use crate::{Postgres, Reply};
use serde_json::{json, Value};

/// Inserts a pending SMS delivery row to `recipient`, with the alert → unit → area → site → organisation chain it
/// needs (a fresh chain per call), and returns the delivery's id (a new UUID).
pub fn insert_sms_delivery(pg: &Postgres, recipient: &str) -> String {
    let id = pg
        .query_scalar("SELECT gen_random_uuid()::text AS id")
        .expect("new uuid")
        .expect("a uuid");
    // The migrated schema's units need a type and a temperature range; slugs are unique there.
    let migrated = pg
        .query_scalar(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_name = 'units' AND column_name = 'unit_type'",
        )
        .expect("read the units columns")
        .as_deref()
        == Some("1");
    let unit = if migrated {
        "INSERT INTO units (area_id, name, unit_type, temp_min, temp_max) \
         SELECT id, 'Freezer 1', 'freezer', -250, -150 FROM a RETURNING id"
    } else {
        "INSERT INTO units (area_id, name) SELECT id, 'Freezer 1' FROM a RETURNING id"
    };
    pg.execute(&format!(
        "WITH o AS (INSERT INTO organizations (name, slug) VALUES ('Org', 'org-{id}') RETURNING id), \
         s AS (INSERT INTO sites (organization_id, name) SELECT id, 'Site' FROM o RETURNING id), \
         a AS (INSERT INTO areas (site_id, name) SELECT id, 'Area' FROM s RETURNING id), \
         u AS ({unit}), \
         al AS (INSERT INTO alerts (unit_id, alert_type, severity) \
                SELECT id, 'alarm_active', 'critical' FROM u RETURNING id) \
         INSERT INTO notification_deliveries (id, alert_id, channel, recipient) \
         SELECT '{id}', id, 'sms', '{recipient}' FROM al"
    ))
    .expect("insert delivery");
    id
}

/// The delivery row `id` as a JSON object with `status` (text), `external_id`, `error_message`, `retry_count` (a
/// number, whether the column is FrostGuard's `varchar(10)` or an integer)
/// and the flags `has_sent_at`, `has_failed_at`, `has_last_retry_at` (whether those timestamps are set).
/// Panics if the row does not exist.
pub fn delivery_row(pg: &Postgres, id: &str) -> Value {
    pg.query_json(&format!(
        "SELECT status::text, external_id, error_message, retry_count::text::int AS retry_count, \
         sent_at IS NOT NULL AS has_sent_at, \
         failed_at IS NOT NULL AS has_failed_at, last_retry_at IS NOT NULL AS has_last_retry_at \
         FROM notification_deliveries WHERE id = '{id}'"
    ))
    .expect("read delivery")
    .into_iter()
    .next()
    .expect("delivery row exists")
}

/// Asserts that delivery row `id` ([`delivery_row`]) has every column of `expected` (a JSON object, e.g.
/// `json!({"status": "sent", "retry_count": 0})`) with that value; other columns are not checked.
pub fn assert_delivery(pg: &Postgres, id: &str, expected: Value) {
    let row = delivery_row(pg, id);
    let expected = expected
        .as_object()
        .expect("expected columns as a JSON object");
    for (column, want) in expected {
        assert_eq!(
            &row[column], want,
            "column {column} of delivery {id}: {row}"
        );
    }
}

/// What an `sms:send` job returns when the message went out: `{"success": true, "messageId": <id>}`.
pub fn sms_sent(message_id: &str) -> Value {
    json!({"success": true, "messageId": message_id})
}

/// Telnyx's error answer: HTTP `status` with `{"errors": [{"code", "title", "detail"}]}`.
pub fn telnyx_error(status: u16, code: &str, title: &str, detail: &str) -> Reply {
    Reply::json(
        status,
        &json!({"errors": [{"code": code, "title": title, "detail": detail}]}),
    )
}

/// Asserts that none of `lines` carries any of `secrets`, each given with what it is (`(PHONE, "the full phone
/// number")`): logs may hold neither personal data nor credentials.
pub fn assert_no_secrets<S: AsRef<str>>(
    lines: impl IntoIterator<Item = S>,
    secrets: &[(&str, &str)],
) {
    for line in lines {
        let line = line.as_ref();
        for (secret, what) in secrets {
            assert!(!line.contains(secret), "a log line carries {what}: {line}");
        }
    }
}
