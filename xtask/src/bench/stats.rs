//! Summaries of repeated measurements: the one quantile every benchmark
//! reports through, so medians and percentiles agree across tables.

/// The value at quantile `q` (0 to 1) of `v`: the sorted sample nearest to
/// rank `(len - 1) * q`, rounded half away from zero (an upper median for an
/// even count). NaN for no samples.
pub(super) fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// [`quantile`] 0.5.
pub(super) fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_upper_middle() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(&[2.0, 1.0]), 2.0);
        assert_eq!(median(&[7.0]), 7.0);
    }

    #[test]
    fn quantiles_round_to_the_nearest_rank() {
        let v: Vec<f64> = (0..11).map(f64::from).rev().collect();
        assert_eq!(quantile(&v, 0.0), 0.0);
        assert_eq!(quantile(&v, 0.25), 3.0);
        assert_eq!(quantile(&v, 0.75), 8.0);
        assert_eq!(quantile(&v, 0.99), 10.0);
        assert_eq!(quantile(&v, 1.0), 10.0);
    }

    #[test]
    fn no_samples_is_nan() {
        assert!(quantile(&[], 0.5).is_nan());
    }
}
