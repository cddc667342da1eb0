//! A fixed sample digest (two sites, a unit with more than five alerts, every severity, HTML-special
//! characters, a New York user) rendered by the `render_sample` example for review in a browser, and by the
//! snapshot test that keeps the committed `snapshots/` files in step with the templates.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::digest::{AlertRow, Digest};
use crate::job::Period;
use crate::render::{Recipient, Rendered, Renderer};
use crate::unsubscribe::{self, Signer};

pub const APP_URL: &str = "https://app.freshtrack.app";
pub const TIMEZONE: &str = "America/New_York";
pub const USER_NAME: &str = "Dana <O'Brien> & Co";
pub const USER_ID: &str = "5f0c2d1e-8a7b-4c3d-9e2f-1a0b9c8d7e6f";
/// The sample's secret: the token in the snapshots is signed with it.
pub const SECRET: &[u8] = b"sample-unsubscribe-secret";

/// The run the sample belongs to: Monday 5 January 2026, 09:00 in New York.
pub fn run_at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-05T14:00:00Z")
        .expect("valid date")
        .with_timezone(&Utc)
}

fn row(
    n: u128,
    minutes_ago: i64,
    severity: &str,
    status: &str,
    message: Option<&str>,
    unit: (u128, &str),
    site: (u128, &str),
) -> AlertRow {
    AlertRow {
        id: Uuid::from_u128(n),
        severity: severity.to_owned(),
        status: status.to_owned(),
        message: message.map(str::to_owned),
        triggered_at: run_at() - Duration::minutes(minutes_ago),
        unit_id: Uuid::from_u128(unit.0),
        unit_name: unit.1.to_owned(),
        site_id: Uuid::from_u128(site.0),
        site_name: site.1.to_owned(),
    }
}

/// The sample content, newest first as the database returns it.
pub fn digest() -> Digest {
    let downtown = (1, "Downtown <Kitchen> & Bar");
    let airport = (2, "Airport \"Terminal B\"");
    let walk_in = (11, "Walk-in Cooler #1");
    let freezer = (12, "Freezer <script>alert(1)</script>");
    let display = (21, "Display Case");
    let mut rows = vec![
        row(
            1,
            20,
            "critical",
            "active",
            Some("Temperature 9.4°C above limit (max 5°C)"),
            walk_in,
            downtown,
        ),
        row(
            2,
            45,
            "warning",
            "acknowledged",
            Some("Door open > 5 minutes"),
            freezer,
            downtown,
        ),
        row(3, 90, "info", "resolved", None, display, airport),
    ];
    for i in 0..7u128 {
        let severity = if i % 2 == 0 { "warning" } else { "critical" };
        let status = if i < 3 { "resolved" } else { "active" };
        rows.push(row(
            100 + i,
            120 + 60 * i as i64,
            severity,
            status,
            Some("Temperature excursion confirmed after delay period"),
            walk_in,
            downtown,
        ));
    }
    rows.sort_by_key(|a| std::cmp::Reverse(a.triggered_at));
    let total = rows.len();
    Digest::build(
        Some("Acme Foods & \"Cold\" Storage".to_owned()),
        rows,
        total,
    )
    .expect("the sample has alerts")
}

/// The sample rendered as the plugin would render it for `period`.
pub fn render(period: Period) -> Result<Rendered, String> {
    let token = Signer::new(SECRET).token(USER_ID, period, run_at())?;
    let unsubscribe_url = unsubscribe::link(APP_URL, &token);
    let dashboard_url = format!("{APP_URL}/alerts");
    Renderer::new()?.render(
        period,
        &digest(),
        &Recipient {
            name: Some(USER_NAME),
            timezone: TIMEZONE,
            dashboard_url: &dashboard_url,
            unsubscribe_url: &unsubscribe_url,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Compares the sample's rendering with `snapshots/<period>.{html,txt,subject}`; with
    /// `UPDATE_SNAPSHOTS=1` it rewrites them instead (review the diff before committing).
    #[test]
    fn rendered_sample_matches_the_committed_snapshots() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("snapshots");
        let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
        for period in [Period::Daily, Period::Weekly] {
            let r = render(period).unwrap();
            for (ext, actual) in [("html", &r.html), ("txt", &r.text), ("subject", &r.subject)] {
                let path = dir.join(format!("{}.{ext}", period.as_str()));
                if update {
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(&path, actual).unwrap();
                    continue;
                }
                let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it)",
                        path.display()
                    )
                });
                assert!(
                    *actual == expected,
                    "{} differs from the rendering; run `UPDATE_SNAPSHOTS=1 cargo test -p frostguard-email-digests` \
                     and review the diff\n--- rendered ---\n{actual}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn user_text_is_escaped_in_html_only() {
        let r = render(Period::Daily).unwrap();
        for raw in ["<script>", "<Kitchen>", "<O'Brien>", "\"Terminal B\""] {
            assert!(!r.html.contains(raw), "{raw} unescaped in HTML");
            assert!(r.text.contains(raw), "{raw} missing from text");
        }
        assert!(r
            .html
            .contains("Freezer &lt;script&gt;alert(1)&lt;&#x2f;script&gt;"));
        assert!(r.html.contains("Dana &lt;O&#x27;Brien&gt; &amp; Co"));
    }

    #[test]
    fn unit_rows_are_capped_at_five() {
        let r = render(Period::Weekly).unwrap();
        // Walk-in Cooler #1 has 8 alerts: 5 rows and "+ 3 more".
        assert!(
            r.html.contains("+ 3 more alerts from this unit"),
            "{}",
            r.html
        );
        assert!(r.text.contains("+ 3 more alerts from this unit"));
        assert_eq!(r.text.matches("] Walk-in Cooler #1 - ").count(), 5);
        assert!(r.text.contains("Jan 5, 8:40 AM EST"), "{}", r.text);
    }
}
