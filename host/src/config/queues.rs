//! The operator's per-queue overrides (`QUEUE_<Q>_*`): one table of (variable family, field), so a value is
//! stored in the field its variable names and nowhere else.
//!
//! The queue names the variables refer to are only known after plugins load, so overrides are kept by
//! normalised queue name ([`queue_env_name`]) and looked up with [`super::Config::queue`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::{invalid, vars, ConfigError, Env};

/// Operator overrides for one queue (`QUEUE_<Q>_*`); unset fields fall back to the plugin's hints and then
/// to BullMQ's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueOverrides {
    /// `QUEUE_<Q>_CONCURRENCY` (at least 1).
    pub concurrency: Option<u32>,
    /// `QUEUE_<Q>_RATE_LIMIT_MAX` (0 turns off a plugin's rate-limit hint).
    pub rate_limit_max: Option<u64>,
    /// `QUEUE_<Q>_RATE_LIMIT_DURATION_MS`.
    pub rate_limit_duration_ms: Option<u64>,
    /// `QUEUE_<Q>_LOCK_DURATION_MS`.
    pub lock_duration_ms: Option<u64>,
    /// `QUEUE_<Q>_STALLED_INTERVAL_MS`.
    pub stalled_interval_ms: Option<u64>,
    /// `QUEUE_<Q>_MAX_STALLED_COUNT`.
    pub max_stalled_count: Option<u32>,
    /// `QUEUE_<Q>_JOB_TIMEOUT_MS` (0 turns off a plugin's time budget).
    pub job_timeout_ms: Option<u64>,
}

impl QueueOverrides {
    /// The time budget of one job on this queue: the operator's override, else the plugin's hint
    /// (`QueueInfo::timeout_ms`), else none. An override of 0 means "no timeout", so an operator can
    /// lift a plugin's budget without inventing a large number; a hint of 0 is read the same way.
    pub fn job_timeout(&self, plugin_hint: Option<u64>) -> Option<Duration> {
        match self.job_timeout_ms {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
            None => plugin_hint.filter(|ms| *ms > 0).map(Duration::from_millis),
        }
    }
}

/// One field of [`QueueOverrides`]: what a `QUEUE_<Q>_*` variable sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueField {
    Concurrency,
    RateLimitMax,
    RateLimitDurationMs,
    LockDurationMs,
    StalledIntervalMs,
    MaxStalledCount,
    JobTimeoutMs,
}

/// Every `QUEUE_<Q>_*` family of the variable table and the field it sets, in the table's order. A test
/// checks that the families here are exactly the table's.
const QUEUE_FIELDS: [(&vars::Var, QueueField); 7] = [
    (&vars::QUEUE_CONCURRENCY, QueueField::Concurrency),
    (&vars::QUEUE_RATE_LIMIT_MAX, QueueField::RateLimitMax),
    (
        &vars::QUEUE_RATE_LIMIT_DURATION_MS,
        QueueField::RateLimitDurationMs,
    ),
    (&vars::QUEUE_LOCK_DURATION_MS, QueueField::LockDurationMs),
    (
        &vars::QUEUE_STALLED_INTERVAL_MS,
        QueueField::StalledIntervalMs,
    ),
    (&vars::QUEUE_MAX_STALLED_COUNT, QueueField::MaxStalledCount),
    (&vars::QUEUE_JOB_TIMEOUT_MS, QueueField::JobTimeoutMs),
];

impl QueueField {
    /// The smallest value the field takes (0 switches a plugin's rate limit or time budget off; a stalled
    /// count of 0 fails a stalled job at once).
    fn min(self) -> u64 {
        match self {
            QueueField::RateLimitMax | QueueField::MaxStalledCount | QueueField::JobTimeoutMs => 0,
            QueueField::Concurrency
            | QueueField::RateLimitDurationMs
            | QueueField::LockDurationMs
            | QueueField::StalledIntervalMs => 1,
        }
    }

    /// Stores `n` (already at least [`Self::min`]) in this field of `o`; the reason when it does not fit.
    fn set(self, o: &mut QueueOverrides, n: u64) -> Result<(), &'static str> {
        match self {
            QueueField::Concurrency => {
                o.concurrency = Some(u32::try_from(n).map_err(|_| "concurrency is too large")?)
            }
            QueueField::RateLimitMax => o.rate_limit_max = Some(n),
            QueueField::RateLimitDurationMs => o.rate_limit_duration_ms = Some(n),
            QueueField::LockDurationMs => o.lock_duration_ms = Some(n),
            QueueField::StalledIntervalMs => o.stalled_interval_ms = Some(n),
            QueueField::MaxStalledCount => {
                o.max_stalled_count =
                    Some(u32::try_from(n).map_err(|_| "max stalled count is too large")?)
            }
            QueueField::JobTimeoutMs => o.job_timeout_ms = Some(n),
        }
        Ok(())
    }

    /// The value of this field in `o`.
    #[cfg(test)]
    fn get(self, o: &QueueOverrides) -> Option<u64> {
        match self {
            QueueField::Concurrency => o.concurrency.map(u64::from),
            QueueField::RateLimitMax => o.rate_limit_max,
            QueueField::RateLimitDurationMs => o.rate_limit_duration_ms,
            QueueField::LockDurationMs => o.lock_duration_ms,
            QueueField::StalledIntervalMs => o.stalled_interval_ms,
            QueueField::MaxStalledCount => o.max_stalled_count.map(u64::from),
            QueueField::JobTimeoutMs => o.job_timeout_ms,
        }
    }
}

/// The `<Q>` part of `QUEUE_<Q>_*`: upper case, every non-alphanumeric character replaced by `_`.
pub fn queue_env_name(queue: &str) -> String {
    queue
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads every `QUEUE_<Q>_*` variable, by normalised queue name.
pub(super) fn queue_overrides(env: &Env) -> Result<BTreeMap<String, QueueOverrides>, ConfigError> {
    let mut queues: BTreeMap<String, QueueOverrides> = BTreeMap::new();
    for (family, field) in QUEUE_FIELDS {
        for (var, queue, value) in env.matching(family) {
            let var = var.as_str();
            let value = value.trim();
            let min = field.min();
            let n = match value.parse::<u64>() {
                Ok(n) if n >= min => n,
                _ => {
                    return Err(invalid(
                        var,
                        format!("expected an integer >= {min}, got {value:?}"),
                    ))
                }
            };
            field
                .set(queues.entry(queue).or_default(), n)
                .map_err(|reason| invalid(var, reason))?;
        }
    }
    for (queue, o) in &queues {
        let enabled_max = o.rate_limit_max.filter(|m| *m > 0);
        if enabled_max.is_some() != o.rate_limit_duration_ms.is_some() {
            return Err(invalid(
                &format!("QUEUE_{queue}_RATE_LIMIT_MAX"),
                format!(
                    "QUEUE_{queue}_RATE_LIMIT_MAX and QUEUE_{queue}_RATE_LIMIT_DURATION_MS must be set together"
                ),
            ));
        }
    }
    Ok(queues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_table_has_exactly_the_queue_families_of_the_variable_table() {
        let table: Vec<&str> = vars::queue_families().map(|v| v.name).collect();
        let fields: Vec<&str> = QUEUE_FIELDS.iter().map(|(v, _)| v.name).collect();
        assert_eq!(fields, table);
    }

    #[test]
    fn each_suffix_sets_its_own_field_and_no_other() {
        for (family, field) in QUEUE_FIELDS {
            let var = family.name.replace("<Q>", "Q");
            // A value no other field would take by accident, and a companion the rate limit needs.
            let mut vars = vec![(var.clone(), "7".to_owned())];
            if field == QueueField::RateLimitMax {
                vars.push(("QUEUE_Q_RATE_LIMIT_DURATION_MS".into(), "1000".into()));
            }
            if field == QueueField::RateLimitDurationMs {
                vars.push(("QUEUE_Q_RATE_LIMIT_MAX".into(), "3".into()));
            }
            let queues = queue_overrides(&Env::from_vars(vars)).unwrap();
            let o = &queues["Q"];
            for (_, other) in QUEUE_FIELDS {
                let want = if other == field {
                    Some(7)
                } else if (field, other)
                    == (QueueField::RateLimitMax, QueueField::RateLimitDurationMs)
                {
                    Some(1000)
                } else if (field, other)
                    == (QueueField::RateLimitDurationMs, QueueField::RateLimitMax)
                {
                    Some(3)
                } else {
                    None
                };
                assert_eq!(other.get(o), want, "{var} and {other:?}");
            }
        }
    }
}
