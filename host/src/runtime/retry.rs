//! The retry policy of a job as Node BullMQ applies it, for the cases bullmq-official gets wrong.
//!
//! bullmq-official drops the backoff's `jitter` and resets all options to defaults when any stored option
//! fails to parse (see docs/bullmq-official.md, D2 and D10). The bridge reads the stored `opts`
//! itself; when they carry a jitter, or when the library's view of `attempts` differs from what is stored,
//! the host schedules the retry itself with Node's formulas instead of letting the library do it.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use serde_json::Value;

/// `attempts` and `backoff` as stored in the job's `opts`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts (0 and 1 both mean a single attempt).
    pub attempts: u32,
    /// The stored backoff: a number (fixed delay) or `{type, delay, jitter?}`.
    pub backoff: Option<Value>,
}

impl RetryPolicy {
    /// Reads the policy from the stored `opts` JSON; `None` when it is not a JSON object.
    pub fn from_opts(opts: &Value) -> Option<Self> {
        let obj = opts.as_object()?;
        let attempts = obj
            .get("attempts")
            .and_then(Value::as_f64)
            .map(|a| a.max(0.0).min(f64::from(u32::MAX)) as u32)
            .unwrap_or(0);
        let backoff = obj.get("backoff").filter(|b| !b.is_null()).cloned();
        Some(Self { attempts, backoff })
    }

    /// Whether a retryable failure of an attempt, made after `attempts_made` earlier ones, is the last.
    pub fn is_final(&self, attempts_made: u32) -> bool {
        !(self.attempts > 0 && attempts_made.saturating_add(1) < self.attempts)
    }

    /// The backoff's jitter, when it has a positive one.
    pub fn jitter(&self) -> Option<f64> {
        self.backoff
            .as_ref()?
            .get("jitter")?
            .as_f64()
            .filter(|j| *j > 0.0)
    }

    /// Node's `Backoffs.calculate` for the retry after `attempts_made` earlier attempts, with `random` in
    /// `[0, 1)`. `None` means no usable backoff: retry at once.
    pub fn delay_ms(&self, attempts_made: u32, random: f64) -> Option<u64> {
        let backoff = self.backoff.as_ref()?;
        if let Some(fixed) = backoff.as_f64() {
            return Some(fixed.max(0.0) as u64);
        }
        let delay = backoff
            .get("delay")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
            .max(0.0);
        let jitter = self.jitter().unwrap_or(0.0).min(1.0);
        let max = match backoff.get("type").and_then(Value::as_str)? {
            "fixed" => delay,
            "exponential" => {
                let k = f64::from(attempts_made) + 1.0;
                (2f64.powf(k - 1.0) * delay).round()
            }
            _ => return None,
        };
        let value = if jitter > 0.0 {
            (random * max * jitter + max * (1.0 - jitter)).floor()
        } else {
            max
        };
        Some(value as u64)
    }
}

/// A uniform value in `[0, 1)`, from the standard library's randomly keyed hasher.
pub fn random_unit() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(opts: Value) -> RetryPolicy {
        RetryPolicy::from_opts(&opts).unwrap()
    }

    #[test]
    fn attempts_decide_finality_like_node() {
        let p = policy(json!({"attempts": 3}));
        assert!(!p.is_final(0));
        assert!(!p.is_final(1));
        assert!(p.is_final(2));
        assert!(policy(json!({"attempts": 0})).is_final(0));
        assert!(policy(json!({})).is_final(0));
        assert!(policy(json!({"attempts": 1})).is_final(0));
    }

    #[test]
    fn exponential_and_fixed_without_jitter() {
        let p = policy(json!({"attempts": 5, "backoff": {"type": "exponential", "delay": 200}}));
        assert_eq!(p.delay_ms(0, 0.3), Some(200));
        assert_eq!(p.delay_ms(1, 0.3), Some(400));
        assert_eq!(p.delay_ms(2, 0.3), Some(800));
        assert_eq!(p.jitter(), None);
        let p = policy(json!({"backoff": {"type": "fixed", "delay": 1000}}));
        assert_eq!(p.delay_ms(4, 0.9), Some(1000));
        let p = policy(json!({"backoff": 750}));
        assert_eq!(p.delay_ms(0, 0.5), Some(750));
        let p = policy(json!({"backoff": {"type": "custom-thing", "delay": 10}}));
        assert_eq!(p.delay_ms(0, 0.5), None);
    }

    #[test]
    fn jitter_stays_within_node_bounds() {
        let p = policy(json!({"backoff": {"type": "exponential", "delay": 1000, "jitter": 0.5}}));
        assert_eq!(p.jitter(), Some(0.5));
        // max for the third try is 4000; jitter 0.5 keeps it in [2000, 4000].
        assert_eq!(p.delay_ms(2, 0.0), Some(2000));
        assert_eq!(p.delay_ms(2, 0.999_999), Some(3999));
        let p = policy(json!({"backoff": {"type": "fixed", "delay": 100, "jitter": 1}}));
        assert_eq!(p.delay_ms(0, 0.25), Some(25));
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..1000 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r), "{r}");
        }
    }
}
