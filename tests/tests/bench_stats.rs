//! Tests of the benchmark's pure arithmetic (tests/benches/throughput/stats.rs: percentiles, medians, the
//! ideal rate of waiting jobs, goal factors, axis scale). The bench itself is `harness = false` and runs no
//! tests, so its file is included here and tested with the suite.

#[path = "../benches/throughput/stats.rs"]
mod stats;
use stats::{median, nice_ceiling, percentile, throughput_goal, waits_ideal};

#[test]
fn percentiles_are_nearest_rank() {
    let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
    let cases: &[(&[f64], f64, f64)] = &[
        (&[], 50.0, 0.0),
        (&[7.0], 50.0, 7.0),
        (&[7.0], 99.0, 7.0),
        (&[1.0, 2.0], 50.0, 1.0),
        (&[1.0, 2.0], 99.0, 2.0),
        (&[1.0, 2.0, 3.0], 0.0, 1.0),
        (&hundred, 50.0, 50.0),
        (&hundred, 99.0, 99.0),
        (&hundred, 100.0, 100.0),
    ];
    for (sorted, p, want) in cases {
        assert_eq!(percentile(sorted, *p), *want, "p{p} of {sorted:?}");
    }
}

#[test]
fn medians_take_the_middle_or_the_mean_of_the_two_middles() {
    let cases: &[(&[f64], f64)] = &[
        (&[], 0.0),
        (&[3.0], 3.0),
        (&[9.0, 1.0, 5.0], 5.0),
        (&[4.0, 1.0, 3.0, 2.0], 2.5),
        (&[1.0, 1000.0, 2.0], 2.0),
    ];
    for (values, want) in cases {
        assert_eq!(median(values.iter().copied()), *want, "{values:?}");
    }
}

#[test]
fn the_ideal_rate_of_waiting_jobs_is_capped_by_the_no_op_rate() {
    let cases = [
        (200, 20, None, 10_000.0),
        (200, 20, Some(25_000.0), 10_000.0),
        (200, 20, Some(6_000.0), 6_000.0),
        (1, 20, None, 50.0),
        (10, 0, None, 10_000.0),
    ];
    for (c, ms, no_op, want) in cases {
        assert_eq!(
            waits_ideal(c, ms, no_op),
            want,
            "c={c} {ms} ms no-op {no_op:?}"
        );
    }
}

#[test]
fn throughput_goals_are_higher_at_low_concurrency() {
    for (c, want) in [(1, 1.5), (5, 1.5), (6, 1.2), (50, 1.2), (200, 1.2)] {
        assert_eq!(throughput_goal(c), want, "c={c}");
    }
}

#[test]
fn axis_maxima_are_round() {
    let cases = [
        (0.0, 1.0),
        (-3.0, 1.0),
        (1.0, 1.0),
        (1.2, 2.0),
        (3.0, 3.0),
        (4.5, 5.0),
        (7.5, 8.0),
        (9.0, 10.0),
        (180.0, 200.0),
        (244.0, 300.0),
        (18_400.0, 20_000.0),
        (23_120.0, 30_000.0),
    ];
    for (max, want) in cases {
        assert_eq!(nice_ceiling(max), want, "{max}");
    }
}
