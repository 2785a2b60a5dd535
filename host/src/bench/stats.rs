//! The benchmark's arithmetic: percentiles, a summary of samples, ratios.
//!
//! Percentiles use the nearest-rank method (the smallest sample with at least p% of
//! the samples at or below it): every reported figure is a latency that was actually
//! observed, and a single sample is its own p50, p90 and p99.

use std::time::Duration;

/// The p-th percentile (0 < p ≤ 100) of `samples` by nearest rank; `None` when there
/// are no samples. `samples` need not be sorted.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// What a row reports about its samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 90th percentile latency, ms.
    pub p90_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Calls completed per second of wall-clock time.
    pub calls_per_sec: f64,
}

/// Summarises latency samples (ms) taken over `wall`; `None` without samples.
pub fn summarize(samples_ms: &[f64], wall: Duration) -> Option<Summary> {
    let at = |p| percentile(samples_ms, p);
    // A wall time too short to measure would divide by zero: use the samples' sum,
    // which for sequential calls is the same thing.
    let secs = match wall.as_secs_f64() {
        s if s > 0.0 => s,
        _ => samples_ms.iter().sum::<f64>() / 1000.0,
    };
    Some(Summary {
        p50_ms: at(50.0)?,
        p90_ms: at(90.0)?,
        p99_ms: at(99.0)?,
        calls_per_sec: if secs > 0.0 {
            samples_ms.len() as f64 / secs
        } else {
            0.0
        },
    })
}

/// newt's latency as a multiple of a peer's: below 1 newt is faster. `None` when
/// either is missing or the peer's is not a positive number.
pub fn ratio(newt_ms: Option<f64>, peer_ms: Option<f64>) -> Option<f64> {
    match (newt_ms, peer_ms) {
        (Some(newt), Some(peer)) if peer > 0.0 && newt.is_finite() && peer.is_finite() => {
            Some(newt / peer)
        }
        _ => None,
    }
}

/// A ratio for people: `0.05×`, `1.3×`, `42×`, `0.004×`.
pub fn format_ratio(ratio: f64) -> String {
    if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else if ratio >= 1.0 {
        format!("{ratio:.1}×")
    } else if ratio >= 0.01 {
        format!("{ratio:.2}×")
    } else if ratio >= 0.001 {
        format!("{ratio:.3}×")
    } else {
        format!("{ratio:.1e}×")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_one_to_a_hundred() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 90.0), Some(90.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
    }

    #[test]
    fn nearest_rank_picks_an_observed_sample() {
        // n = 5: p50 is rank ceil(2.5) = 3, p90 rank ceil(4.5) = 5.
        let samples = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&samples, 50.0), Some(3.0));
        assert_eq!(percentile(&samples, 90.0), Some(5.0));
        assert_eq!(percentile(&samples, 1.0), Some(1.0));
    }

    #[test]
    fn one_sample_is_every_percentile() {
        for p in [1.0, 50.0, 90.0, 99.0, 100.0] {
            assert_eq!(percentile(&[7.5], p), Some(7.5));
        }
    }

    #[test]
    fn no_samples_no_percentile() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(summarize(&[], Duration::from_secs(1)), None);
        assert_eq!(percentile(&[1.0], 0.0), None);
        assert_eq!(percentile(&[1.0], 101.0), None);
    }

    #[test]
    fn summary_counts_calls_per_second_of_wall_time() {
        let s = summarize(&[2.0, 1.0, 3.0, 4.0], Duration::from_millis(500)).unwrap();
        assert_eq!((s.p50_ms, s.p90_ms, s.p99_ms), (2.0, 4.0, 4.0));
        assert!((s.calls_per_sec - 8.0).abs() < 1e-9);
        // No measurable wall time: fall back to the sum of the samples (10 ms).
        let s = summarize(&[2.0, 1.0, 3.0, 4.0], Duration::ZERO).unwrap();
        assert!((s.calls_per_sec - 400.0).abs() < 1e-9);
    }

    #[test]
    fn ratio_is_newt_over_peer() {
        assert_eq!(ratio(Some(1.0), Some(20.0)), Some(0.05));
        assert_eq!(ratio(Some(3.0), Some(1.5)), Some(2.0));
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }

    #[test]
    fn ratios_are_formatted_for_people() {
        assert_eq!(format_ratio(0.05), "0.05×");
        assert_eq!(format_ratio(0.004), "0.004×");
        assert_eq!(format_ratio(0.25), "0.25×");
        assert_eq!(format_ratio(1.34), "1.3×");
        assert_eq!(format_ratio(42.4), "42×");
        assert_eq!(format_ratio(0.00012), "1.2e-4×");
    }
}
