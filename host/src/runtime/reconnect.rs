//! Waiting for Redis before the library's own reconnection can take over: building a queue's worker and the
//! host's admin connection both need Redis to answer once, and both retry with this one backoff.

use std::future::Future;
use std::time::Duration;

/// The first wait after a failure; each further failure doubles it.
const FIRST_WAIT: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Calls `attempt` until it succeeds, for as long as it takes. After each failure `failed` gets the attempt's
/// number (from 1), the error and the wait before the next attempt (250 ms, doubling, at most 10 s), to log.
pub async fn until_ok<T, E, Fut>(
    mut attempt: impl FnMut() -> Fut,
    mut failed: impl FnMut(u32, &E, Duration),
) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = FIRST_WAIT;
    let mut number: u32 = 0;
    loop {
        number = number.saturating_add(1);
        match attempt().await {
            Ok(done) => return done,
            Err(e) => {
                failed(number, &e, wait);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_WAIT);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_ten_seconds_then_the_result_returns() {
        let mut calls = 0u32;
        let mut waits = Vec::new();
        let done = until_ok(
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 9 {
                        Err(n)
                    } else {
                        Ok("up")
                    }
                }
            },
            |number, e: &u32, wait| {
                assert_eq!(number, *e);
                waits.push(wait.as_millis());
            },
        )
        .await;
        assert_eq!(done, "up");
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    }
}
