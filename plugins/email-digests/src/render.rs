//! Turns a [`Digest`] into the email: subject, HTML and plain text, from the templates in `templates/`
//! (embedded at build time, so the `.so` needs no files at run time) through minijinja.
//!
//! HTML templates are auto-escaped (everything from the database — names, messages — is user-controlled);
//! the text templates are not escaped, being text. Times are shown in the profile's time zone.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::Environment;
use serde::Serialize;

use crate::digest::Digest;
use crate::job::Period;

/// Alert rows shown per unit; the rest are summed up as "+ N more alerts from this unit".
pub const ROWS_PER_UNIT: usize = 5;
/// The product name under the header.
pub const BRAND: &str = "FreshTrack Pro";

const TEMPLATES: [(&str, &str); 6] = [
    ("digest.html", include_str!("../templates/digest.html")),
    ("daily.html", include_str!("../templates/daily.html")),
    ("weekly.html", include_str!("../templates/weekly.html")),
    ("digest.txt", include_str!("../templates/digest.txt")),
    ("daily.txt", include_str!("../templates/daily.txt")),
    ("weekly.txt", include_str!("../templates/weekly.txt")),
];

/// The rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// Who the digest is for and where its links point.
#[derive(Debug, Clone)]
pub struct Recipient<'a> {
    /// `full_name`; "User" when empty.
    pub name: Option<&'a str>,
    /// `profiles.timezone` (IANA name).
    pub timezone: &'a str,
    pub dashboard_url: &'a str,
    pub unsubscribe_url: &'a str,
}

pub struct Renderer {
    env: Environment<'static>,
}

impl Renderer {
    pub fn new() -> Result<Renderer, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.add_filter("href", href);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .map_err(|e| format!("template {name} does not compile: {e}"))?;
        }
        Ok(Renderer { env })
    }

    pub fn render(
        &self,
        period: Period,
        digest: &Digest,
        to: &Recipient<'_>,
    ) -> Result<Rendered, String> {
        let (tz, tz_name) = zone(to.timezone);
        let view = View::new(period, digest, to, tz, tz_name);
        let render = |name: String| {
            self.env
                .get_template(&name)
                .and_then(|t| t.render(&view))
                .map_err(|e| format!("cannot render {name}: {e:#}"))
        };
        Ok(Rendered {
            subject: subject(period, digest.alerts_in_window),
            html: render(format!("{}.html", period.as_str()))?,
            text: render(format!("{}.txt", period.as_str()))?,
        })
    }
}

/// A URL for an HTML attribute: `&`, `<`, `>`, `"` and `'` escaped, `/` kept. The default HTML escaping also
/// writes `/` as `&#x2f;`, which is valid but leaves links unreadable in the source and trips naive link
/// scanners; our URLs come from `APP_URL` (parsed, so already percent-encoded) and a base64url token.
fn href(url: String) -> minijinja::Value {
    let mut out = String::with_capacity(url.len());
    for c in url.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    minijinja::Value::from_safe_string(out)
}

/// "Your daily alert digest - 3 alerts" (FrostGuard's wording), counting every alert in the window.
pub fn subject(period: Period, alerts: usize) -> String {
    format!(
        "Your {} alert digest - {alerts} alert{}",
        period.as_str(),
        plural(alerts)
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The profile's zone, or UTC when the name is not a known IANA zone (then the name shown says UTC).
pub fn zone(name: &str) -> (Tz, String) {
    match name.trim().parse::<Tz>() {
        Ok(tz) => (tz, tz.name().to_owned()),
        Err(_) => (Tz::UTC, "UTC".to_owned()),
    }
}

/// "Jan 5, 3:04 PM EST": FrostGuard's `en-US` month/day/time, in the user's zone, with the zone named.
pub fn format_time(at: DateTime<Utc>, tz: Tz) -> String {
    at.with_timezone(&tz)
        .format("%b %-d, %-I:%M %p %Z")
        .to_string()
}

fn severity_color(severity: &str) -> &'static str {
    match severity {
        "critical" => "#dc3545",
        "warning" => "#ffc107",
        "info" => "#17a2b8",
        _ => "#6c757d",
    }
}

/// The template context.
#[derive(Serialize)]
struct View<'a> {
    period: &'static str,
    title: &'static str,
    accent: &'static str,
    accent_light: &'static str,
    window_label: &'static str,
    brand: &'static str,
    preview: String,
    user_name: &'a str,
    organization_name: &'a str,
    summary: SummaryView,
    alerts_in_window: usize,
    limited: bool,
    sites: Vec<SiteView<'a>>,
    timezone: String,
    dashboard_url: &'a str,
    unsubscribe_url: &'a str,
}

#[derive(Serialize)]
struct SummaryView {
    total: usize,
    critical: usize,
    warning: usize,
    info: usize,
    resolved: usize,
}

#[derive(Serialize)]
struct SiteView<'a> {
    name: &'a str,
    units: Vec<UnitView<'a>>,
}

#[derive(Serialize)]
struct UnitView<'a> {
    name: &'a str,
    alerts: Vec<AlertView<'a>>,
    more: usize,
}

#[derive(Serialize)]
struct AlertView<'a> {
    severity: &'a str,
    color: &'static str,
    message: &'a str,
    time: String,
    resolved: bool,
}

impl<'a> View<'a> {
    fn new(period: Period, d: &'a Digest, to: &Recipient<'a>, tz: Tz, tz_name: String) -> View<'a> {
        let (title, accent, accent_light, window_label) = match period {
            Period::Daily => (
                "Daily Alert Digest",
                "#0d6efd",
                "#e3f2fd",
                "in the last 24 hours",
            ),
            Period::Weekly => (
                "Weekly Alert Digest",
                "#6f42c1",
                "#ede7f6",
                "in the last 7 days",
            ),
        };
        let n = d.alerts_in_window;
        let sites = d
            .sites
            .iter()
            .map(|s| SiteView {
                name: &s.site_name,
                units: s
                    .units
                    .iter()
                    .map(|u| UnitView {
                        name: &u.unit_name,
                        alerts: u
                            .alerts
                            .iter()
                            .take(ROWS_PER_UNIT)
                            .map(|a| AlertView {
                                severity: &a.severity,
                                color: severity_color(&a.severity),
                                message: a
                                    .message
                                    .as_deref()
                                    .filter(|m| !m.trim().is_empty())
                                    .unwrap_or("Alert triggered"),
                                time: format_time(a.triggered_at, tz),
                                resolved: a.status == "resolved",
                            })
                            .collect(),
                        more: u.alerts.len().saturating_sub(ROWS_PER_UNIT),
                    })
                    .collect(),
            })
            .collect();
        View {
            period: period.as_str(),
            title,
            accent,
            accent_light,
            window_label,
            brand: BRAND,
            preview: format!(
                "Your {} alert summary - {n} alert{} {window_label}",
                period.as_str(),
                plural(n)
            ),
            user_name: to
                .name
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .unwrap_or("User"),
            organization_name: &d.organization_name,
            summary: SummaryView {
                total: d.summary.total,
                critical: d.summary.critical,
                warning: d.summary.warning,
                info: d.summary.info,
                resolved: d.summary.resolved,
            },
            alerts_in_window: n,
            limited: n > d.summary.total,
            sites,
            timezone: tz_name,
            dashboard_url: to.dashboard_url,
            unsubscribe_url: to.unsubscribe_url,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hrefs_escape_attribute_characters_but_keep_slashes() {
        assert_eq!(
            href("https://app.example.com/unsubscribe?token=a.b-c_d".into()).to_string(),
            "https://app.example.com/unsubscribe?token=a.b-c_d"
        );
        assert_eq!(
            href("https://x/?a=\"1\"&b=<2>'".into()).to_string(),
            "https://x/?a=&quot;1&quot;&amp;b=&lt;2&gt;&#x27;"
        );
    }

    #[test]
    fn subjects() {
        assert_eq!(
            subject(Period::Daily, 3),
            "Your daily alert digest - 3 alerts"
        );
        assert_eq!(
            subject(Period::Weekly, 1),
            "Your weekly alert digest - 1 alert"
        );
    }

    #[test]
    fn times_in_the_users_zone() {
        let at = DateTime::parse_from_rfc3339("2026-01-05T20:04:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let cases = [
            ("UTC", "Jan 5, 8:04 PM UTC"),
            ("America/New_York", "Jan 5, 3:04 PM EST"),
            ("Asia/Tokyo", "Jan 6, 5:04 AM JST"),
            ("Mars/Olympus", "Jan 5, 8:04 PM UTC"),
        ];
        for (name, expected) in cases {
            let (tz, _) = zone(name);
            assert_eq!(format_time(at, tz), expected, "{name}");
        }
        assert_eq!(zone(" Europe/Berlin ").1, "Europe/Berlin");
        assert_eq!(zone("Mars/Olympus").1, "UTC");
    }
}
