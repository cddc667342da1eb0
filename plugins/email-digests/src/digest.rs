//! What goes into a digest, decided without I/O: whether a profile gets one at all (the skip reasons), which
//! sites it covers, and the alerts read from the database turned into a summary and site → unit groups.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::job::Period;

/// Alerts per digest, newest first (FrostGuard's limit); the summary says when there were more.
pub const MAX_ALERTS: i64 = 50;
/// Shown when the organization row has no name (or is gone).
pub const FALLBACK_ORGANIZATION: &str = "Your Organization";

/// The `profiles` columns a digest needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub organization_id: Uuid,
    pub email: String,
    pub full_name: Option<String>,
    pub email_enabled: bool,
    pub digest_daily: bool,
    pub digest_weekly: bool,
    /// JSON text: an array of site UUIDs, or NULL for every site.
    pub digest_site_ids: Option<String>,
    pub timezone: String,
}

/// Why a job completes without sending, as `{"success": false, "reason": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    UserNotFound,
    UserDisabledEmails,
    DailyDigestDisabled,
    WeeklyDigestDisabled,
    /// The profile now belongs to another organization than the scheduler was created for: its alerts
    /// are not this user's to read.
    UserNotInOrganization,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::UserNotFound => "user_not_found",
            Skip::UserDisabledEmails => "user_disabled_emails",
            Skip::DailyDigestDisabled => "daily_digest_disabled",
            Skip::WeeklyDigestDisabled => "weekly_digest_disabled",
            Skip::UserNotInOrganization => "user_not_in_organization",
        }
    }
}

/// The skip rules, in FrostGuard's order, then the organization check.
pub fn skip(profile: Option<&Profile>, period: Period, organization_id: Uuid) -> Option<Skip> {
    let Some(p) = profile else {
        return Some(Skip::UserNotFound);
    };
    if !p.email_enabled {
        return Some(Skip::UserDisabledEmails);
    }
    match period {
        Period::Daily if !p.digest_daily => return Some(Skip::DailyDigestDisabled),
        Period::Weekly if !p.digest_weekly => return Some(Skip::WeeklyDigestDisabled),
        _ => {}
    }
    if p.organization_id != organization_id {
        return Some(Skip::UserNotInOrganization);
    }
    None
}

/// The sites a digest is restricted to: `Ok(None)` means every site of the organization (no filter, or an
/// empty list); `Err` carries why the text could not be used, and the caller then covers every site.
pub fn site_filter(digest_site_ids: Option<&str>) -> Result<Option<Vec<Uuid>>, String> {
    let Some(text) = digest_site_ids.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let serde_json::Value::Array(items) = value else {
        return match value {
            serde_json::Value::Null => Ok(None),
            other => Err(format!("not a JSON array: {other}")),
        };
    };
    let ids = items
        .iter()
        .map(|item| {
            item.as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| format!("not a site UUID: {item}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((!ids.is_empty()).then_some(ids))
}

/// One alert row as read (alerts → units → areas → sites).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    pub id: Uuid,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// `active`, `acknowledged`, `resolved` or `escalated`.
    pub status: String,
    pub message: Option<String>,
    pub triggered_at: DateTime<Utc>,
    pub unit_id: Uuid,
    pub unit_name: String,
    pub site_id: Uuid,
    pub site_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub total: usize,
    pub critical: usize,
    pub warning: usize,
    pub info: usize,
    pub resolved: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitGroup {
    pub unit_id: Uuid,
    pub unit_name: String,
    /// Newest first.
    pub alerts: Vec<AlertRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteGroup {
    pub site_id: Uuid,
    pub site_name: String,
    pub units: Vec<UnitGroup>,
}

/// The content of one digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub organization_name: String,
    /// Counted over the listed alerts (at most [`MAX_ALERTS`]).
    pub summary: Summary,
    /// Every alert in the window, also those past the limit.
    pub alerts_in_window: usize,
    /// In order of first appearance in the newest-first list.
    pub sites: Vec<SiteGroup>,
}

impl Digest {
    /// Groups newest-first `rows` site → unit → alerts. `None` when there is nothing to send.
    pub fn build(
        organization_name: Option<String>,
        rows: Vec<AlertRow>,
        alerts_in_window: usize,
    ) -> Option<Digest> {
        if rows.is_empty() {
            return None;
        }
        let mut summary = Summary {
            total: rows.len(),
            ..Summary::default()
        };
        let mut sites: Vec<SiteGroup> = Vec::new();
        for row in rows {
            match row.severity.as_str() {
                "critical" => summary.critical += 1,
                "warning" => summary.warning += 1,
                "info" => summary.info += 1,
                _ => {}
            }
            if row.status == "resolved" {
                summary.resolved += 1;
            }
            let site = match sites.iter().position(|s| s.site_id == row.site_id) {
                Some(i) => &mut sites[i],
                None => {
                    sites.push(SiteGroup {
                        site_id: row.site_id,
                        site_name: row.site_name.clone(),
                        units: Vec::new(),
                    });
                    sites.last_mut().expect("just pushed")
                }
            };
            match site.units.iter_mut().find(|u| u.unit_id == row.unit_id) {
                Some(unit) => unit.alerts.push(row),
                None => site.units.push(UnitGroup {
                    unit_id: row.unit_id,
                    unit_name: row.unit_name.clone(),
                    alerts: vec![row],
                }),
            }
        }
        let organization_name = organization_name
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| FALLBACK_ORGANIZATION.to_owned());
        Some(Digest {
            organization_name,
            alerts_in_window: alerts_in_window.max(summary.total),
            summary,
            sites,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn profile() -> Profile {
        Profile {
            organization_id: id(1),
            email: "a@example.com".into(),
            full_name: None,
            email_enabled: true,
            digest_daily: true,
            digest_weekly: true,
            digest_site_ids: None,
            timezone: "UTC".into(),
        }
    }

    #[test]
    fn skip_rules_in_order() {
        let p = profile();
        let with = |f: fn(&mut Profile)| {
            let mut p = profile();
            f(&mut p);
            p
        };
        let cases: Vec<(Option<Profile>, Period, Option<&str>)> = vec![
            (None, Period::Daily, Some("user_not_found")),
            (
                Some(with(|p| {
                    p.email_enabled = false;
                    p.digest_daily = false
                })),
                Period::Daily,
                Some("user_disabled_emails"),
            ),
            (
                Some(with(|p| p.digest_daily = false)),
                Period::Daily,
                Some("daily_digest_disabled"),
            ),
            (Some(with(|p| p.digest_daily = false)), Period::Weekly, None),
            (
                Some(with(|p| p.digest_weekly = false)),
                Period::Weekly,
                Some("weekly_digest_disabled"),
            ),
            (
                Some(with(|p| p.organization_id = id(2))),
                Period::Daily,
                Some("user_not_in_organization"),
            ),
            (Some(p), Period::Weekly, None),
        ];
        for (profile, period, expected) in cases {
            assert_eq!(
                skip(profile.as_ref(), period, id(1)).map(Skip::reason),
                expected,
                "{profile:?} {period:?}"
            );
        }
    }

    #[test]
    fn site_filters() {
        let a = "00000000-0000-0000-0000-00000000000a";
        assert_eq!(site_filter(None), Ok(None));
        assert_eq!(site_filter(Some("  ")), Ok(None));
        assert_eq!(site_filter(Some("null")), Ok(None));
        assert_eq!(site_filter(Some("[]")), Ok(None));
        assert_eq!(
            site_filter(Some(&format!("[\"{a}\"]"))),
            Ok(Some(vec![id(10)]))
        );
        assert!(site_filter(Some("{oops"))
            .unwrap_err()
            .starts_with("not JSON"));
        assert!(site_filter(Some("{}"))
            .unwrap_err()
            .starts_with("not a JSON array"));
        assert!(site_filter(Some("[\"x\"]"))
            .unwrap_err()
            .starts_with("not a site UUID"));
    }

    fn row(n: u128, site: u128, unit: u128, severity: &str, status: &str) -> AlertRow {
        AlertRow {
            id: id(n),
            severity: severity.into(),
            status: status.into(),
            message: None,
            triggered_at: DateTime::from_timestamp(1_700_000_000 - n as i64, 0).unwrap(),
            unit_id: id(unit),
            unit_name: format!("unit {unit}"),
            site_id: id(site),
            site_name: format!("site {site}"),
        }
    }

    #[test]
    fn summary_and_grouping_keep_first_appearance_order() {
        let rows = vec![
            row(1, 200, 21, "critical", "active"),
            row(2, 100, 11, "warning", "resolved"),
            row(3, 200, 22, "info", "acknowledged"),
            row(4, 200, 21, "warning", "resolved"),
            row(5, 100, 11, "critical", "escalated"),
        ];
        let d = Digest::build(Some(" Acme ".into()), rows, 5).unwrap();
        assert_eq!(d.organization_name, "Acme");
        assert_eq!(
            d.summary,
            Summary {
                total: 5,
                critical: 2,
                warning: 2,
                info: 1,
                resolved: 2
            }
        );
        /// (site, [(unit, [alert])]) by the last digits of their ids.
        type Shape = Vec<(u128, Vec<(u128, Vec<u128>)>)>;
        let shape: Shape = d
            .sites
            .iter()
            .map(|s| {
                (
                    s.site_id.as_u128(),
                    s.units
                        .iter()
                        .map(|u| {
                            (
                                u.unit_id.as_u128(),
                                u.alerts.iter().map(|a| a.id.as_u128()).collect(),
                            )
                        })
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (200, vec![(21, vec![1, 4]), (22, vec![3])]),
                (100, vec![(11, vec![2, 5])])
            ]
        );
    }

    #[test]
    fn empty_and_fallbacks() {
        assert_eq!(Digest::build(Some("Acme".into()), vec![], 0), None);
        let d = Digest::build(None, vec![row(1, 1, 1, "info", "active")], 0).unwrap();
        assert_eq!(d.organization_name, FALLBACK_ORGANIZATION);
        assert_eq!(d.alerts_in_window, 1);
        let d = Digest::build(Some("".into()), vec![row(1, 1, 1, "info", "active")], 80).unwrap();
        assert_eq!(d.organization_name, FALLBACK_ORGANIZATION);
        assert_eq!(d.alerts_in_window, 80);
    }
}
