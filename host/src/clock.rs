//! The wall clock as BullMQ keeps time: milliseconds since the Unix epoch, the unit of a job's `timestamp`,
//! `processedOn`, a delayed job's score and a queue's hold.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch on this host's clock (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The instant on this host's monotonic clock at which its wall clock reads `epoch_ms` (now, for a time
/// already past): how a job's deadline, given in epoch milliseconds, is waited for.
pub fn instant_at(epoch_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(epoch_ms.saturating_sub(now_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_time_becomes_the_instant_it_falls_at_and_a_past_one_now() {
        let now = Instant::now();
        let ahead = instant_at(now_ms() + 5_000).duration_since(now);
        assert!(
            ahead > Duration::from_millis(4_900) && ahead < Duration::from_millis(5_100),
            "{ahead:?}"
        );
        let past = instant_at(now_ms().saturating_sub(60_000)).duration_since(now);
        assert!(past < Duration::from_millis(100), "{past:?}");
    }
}
