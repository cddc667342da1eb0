//! The wall clock as BullMQ keeps time: milliseconds since the Unix epoch, the unit of a job's `timestamp`,
//! `processedOn`, a delayed job's score and a queue's hold.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch on this host's clock (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
