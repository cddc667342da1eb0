//! The one mapping between the severities a plugin's log records cross the boundary with: `tracing`'s
//! levels and filters (both sides), the ABI's one-byte codes ([`crate::abi::level`]) and [`LogLevel`] (the
//! loader's records, also sent over a plugin process's pipe). Every conversion goes through here.

use serde::{Deserialize, Serialize};
use tracing::Level;
use tracing_subscriber::filter::LevelFilter;

use crate::abi::level;

/// Severity of a forwarded plugin log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors.
    Error,
    /// Warnings.
    Warn,
    /// Information.
    Info,
    /// Debugging detail.
    Debug,
    /// Tracing detail.
    Trace,
}

impl LogLevel {
    /// The level of an ABI code; an unknown code is the most verbose level.
    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            level::ERROR => LogLevel::Error,
            level::WARN => LogLevel::Warn,
            level::INFO => LogLevel::Info,
            level::DEBUG => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }

    /// The ABI code of this level.
    pub(crate) fn code(self) -> u8 {
        match self {
            LogLevel::Error => level::ERROR,
            LogLevel::Warn => level::WARN,
            LogLevel::Info => level::INFO,
            LogLevel::Debug => level::DEBUG,
            LogLevel::Trace => level::TRACE,
        }
    }

    /// The `tracing` level of the same name.
    pub fn to_tracing(self) -> Level {
        match self {
            LogLevel::Error => Level::ERROR,
            LogLevel::Warn => Level::WARN,
            LogLevel::Info => Level::INFO,
            LogLevel::Debug => Level::DEBUG,
            LogLevel::Trace => Level::TRACE,
        }
    }

    /// The level of the same name as a `tracing` level.
    pub fn from_tracing(level: Level) -> Self {
        match level {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            Level::DEBUG => LogLevel::Debug,
            Level::TRACE => LogLevel::Trace,
        }
    }

    /// The most verbose level `filter` lets through, `None` when it lets nothing through.
    pub fn most_verbose_in(filter: LevelFilter) -> Option<Self> {
        filter.into_level().map(Self::from_tracing)
    }
}

/// The `tracing` filter a plugin applies for the host's "most verbose level" code (0: nothing).
pub(crate) fn filter_of_code(code: u8) -> LevelFilter {
    match code {
        0 => LevelFilter::OFF,
        code => LevelFilter::from_level(LogLevel::from_code(code).to_tracing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_round_trips_through_its_code_and_tracing() {
        for l in [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ] {
            assert_eq!(LogLevel::from_code(l.code()), l);
            assert_eq!(LogLevel::from_tracing(l.to_tracing()), l);
            assert_eq!(
                filter_of_code(l.code()),
                LevelFilter::from_level(l.to_tracing())
            );
        }
        assert_eq!(filter_of_code(0), LevelFilter::OFF);
        assert_eq!(LogLevel::from_code(99), LogLevel::Trace);
        assert_eq!(LogLevel::most_verbose_in(LevelFilter::OFF), None);
        assert_eq!(
            LogLevel::most_verbose_in(LevelFilter::INFO),
            Some(LogLevel::Info)
        );
    }
}
