//! The benchmark's pure arithmetic: percentiles and medians, the ideal rate of waiting jobs, the goals'
//! throughput factors and the chart's axis scale. Tested by tests/tests/bench_stats.rs, which includes this
//! file (a `harness = false` bench runs no tests of its own).

/// Nearest-rank percentile `p` (0–100) of `sorted` (ascending); 0 for an empty slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of `values` (mean of the middle two for an even count).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The rate a worker can reach with jobs that each wait `wait_ms` at `concurrency`: every slot busy all the
/// time, but never more than the same worker's rate with no-op jobs (when measured).
pub fn waits_ideal(concurrency: usize, wait_ms: u64, no_op_rate: Option<f64>) -> f64 {
    let slots = concurrency as f64 * 1000.0 / wait_ms.max(1) as f64;
    no_op_rate.map_or(slots, |r| slots.min(r))
}

/// The throughput the goals ask of the host against Node at `concurrency`: 1.5× at low concurrency, 1.2× at
/// high.
pub fn throughput_goal(concurrency: usize) -> f64 {
    if concurrency <= 5 {
        1.5
    } else {
        1.2
    }
}

/// A round axis maximum at or above `max`: 1, 2, 3, 4, 5, 6 or 8 times a power of ten (each splits into four
/// round grid steps).
pub fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * power)
}
