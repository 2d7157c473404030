//! [`super::arcee_fusion`] over chunks of whole rows (see [`crate::chunk`]).
//!
//! A row's importance needs only that row, so a chunk of whole rows computes its own. The
//! threshold needs three order statistics of the importances that enter the quantiles (all of
//! them, or the 10^6 sampled with replacement: each chunk replays the draws and keeps those in
//! its range, with multiplicity). They are found exactly as TIES finds its threshold, by radix
//! selection on 32-bit keys in `f32::total_cmp` order: pass 1 returns a histogram of the keys'
//! high 16 bits, pass 2 one histogram of the low 16 bits per quantile's high bin. The order
//! statistic is the same value the whole kernel's sort puts at that rank.

use super::arcee_fusion::{ArceeFusionError, SAMPLE_SIZE, draws, quantile_ranks, sample_indices};
use super::magnitude_select::{BINS, Histogram, select_high, select_low};
use crate::rng::Mt19937;
use std::borrow::Cow;

/// Ascending key of `x` in `f32::total_cmp`'s order (negative NaN lowest, `-0.0` below `0.0`,
/// positive NaN highest).
#[inline]
pub fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
}

/// The value of an [`order_key`].
#[inline]
pub fn from_order_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7fff_ffff } else { !k })
}

/// How many values enter the quantiles of a tensor of `n` elements.
pub fn sample_count(n: u64) -> u64 {
    if draws(n) { SAMPLE_SIZE as u64 } else { n }
}

/// The importances of a chunk (elements `start..start + imp.len()` of a tensor of `n`) that
/// enter the quantiles, with multiplicity: all of them, or for more than 10^6 elements those
/// that `rng` (the tensor's stream at its first draw) samples.
pub fn sampled(imp: &[f32], start: u64, n: u64, rng: Option<Mt19937>) -> Result<Cow<'_, [f32]>, ArceeFusionError> {
    if !draws(n) {
        return Ok(Cow::Borrowed(imp));
    }
    let rng = rng.ok_or(ArceeFusionError::MissingRng)?;
    let range = start..start + imp.len() as u64;
    Ok(Cow::Owned(
        sample_indices(n, rng)
            .filter(|i| range.contains(i))
            .map(|i| imp[(i - start) as usize])
            .collect(),
    ))
}

fn sparse(dense: &[u64]) -> Histogram {
    let mut h = Histogram::default();
    for (b, &c) in dense.iter().enumerate().filter(|(_, c)| **c > 0) {
        h.bins.push(b as u32);
        h.counts.push(c);
    }
    h
}

/// Pass 1: the histogram of the keys' high 16 bits.
pub fn high_histogram(values: &[f32]) -> Histogram {
    let mut dense = vec![0u64; BINS];
    for &v in values {
        dense[(order_key(v) >> 16) as usize] += 1;
    }
    sparse(&dense)
}

/// Pass 2: the histogram of the low 16 bits of the keys in high bin `high`.
pub fn low_histogram(values: &[f32], high: u16) -> Histogram {
    let mut dense = vec![0u64; BINS];
    for &v in values {
        let k = order_key(v);
        if k >> 16 == u32::from(high) {
            dense[(k & 0xFFFF) as usize] += 1;
        }
    }
    sparse(&dense)
}

/// One quantile's place after pass 1: it is the `k`-th largest key, in high bin `high`, above
/// which `above` keys lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantile {
    /// Rank from the top, 1-based.
    pub k: u64,
    /// High 16 bits of its key.
    pub high: u16,
    /// Keys in higher bins.
    pub above: u64,
}

/// The `k` of the three quantiles of `m` values.
pub fn quantile_ks(m: u64) -> [u64; 3] {
    quantile_ranks(m as usize).map(|r| m - r as u64)
}

/// Pass 1's result: the high bin of each quantile from the merged high histogram of the tensor
/// of `n` elements (which must count exactly its sampled values).
pub fn select_bins(n: u64, merged_high: &Histogram) -> Result<[Quantile; 3], String> {
    let m = sample_count(n);
    if m == 0 || merged_high.total() != m {
        return Err(format!("{} importances counted, {m} expected", merged_high.total()));
    }
    let mut out = [Quantile {
        k: 0,
        high: 0,
        above: 0,
    }; 3];
    for (q, k) in out.iter_mut().zip(quantile_ks(m)) {
        let (high, above) = select_high(k, merged_high)?;
        *q = Quantile { k, high, above };
    }
    Ok(out)
}

/// Pass 2's result for one quantile: its value, from the merged low histogram of its bin.
pub fn quantile_value(q: Quantile, merged_low: &Histogram) -> Result<f32, String> {
    let (key, _) = select_low(q.k, q.high, q.above, merged_low)?;
    Ok(from_order_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::magnitude_select::merge;

    #[test]
    fn keys_order_floats_as_total_cmp_and_invert() {
        let mut v = vec![
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1.5,
            -1.5,
            f32::MIN_POSITIVE,
            -f32::from_bits(1),
            3e38,
        ];
        for &x in &v {
            assert_eq!(from_order_key(order_key(x)).to_bits(), x.to_bits());
        }
        let mut by_key = v.clone();
        by_key.sort_by_key(|&x| order_key(x));
        v.sort_by(f32::total_cmp);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&by_key), bits(&v));
    }

    /// The quantiles found over chunks equal the sorted values at the whole kernel's ranks.
    #[test]
    fn quantiles_over_chunks_equal_the_sorted_values() {
        let mut z = 99u64;
        let values: Vec<f32> = (0..5003)
            .map(|i| {
                z = z.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                // Few distinct values (many ties), some negative, one NaN.
                if i == 77 {
                    f32::NAN
                } else {
                    ((z >> 59) as f32 - 8.0) * 0.125
                }
            })
            .collect();
        let n = values.len() as u64;
        let mut sorted = values.clone();
        sorted.sort_by(f32::total_cmp);
        let want = quantile_ranks(values.len()).map(|r| sorted[r]);
        for chunk in [1, 7, 1000, 5003] {
            let highs: Vec<Histogram> = values.chunks(chunk).map(high_histogram).collect();
            let qs = select_bins(n, &merge(&highs).unwrap()).unwrap();
            for (q, w) in qs.into_iter().zip(want) {
                let lows: Vec<Histogram> = values.chunks(chunk).map(|c| low_histogram(c, q.high)).collect();
                let got = quantile_value(q, &merge(&lows).unwrap()).unwrap();
                assert_eq!(got.to_bits(), w.to_bits(), "chunks of {chunk}");
            }
        }
        assert!(
            select_bins(n + 1, &high_histogram(&values)).is_err(),
            "a missing count is an error"
        );
    }

    #[test]
    fn chunks_keep_the_draws_in_their_range_with_multiplicity() {
        let n = SAMPLE_SIZE as u64 + 5;
        let imp: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let rng = Mt19937::new(3);
        let mut all: Vec<f32> = Vec::new();
        for start in (0..n).step_by(300_007) {
            let end = (start + 300_007).min(n);
            all.extend(
                sampled(&imp[start as usize..end as usize], start, n, Some(rng.clone()))
                    .unwrap()
                    .iter(),
            );
        }
        let mut want: Vec<f32> = sample_indices(n, rng).map(|i| imp[i as usize]).collect();
        want.sort_by(f32::total_cmp);
        all.sort_by(f32::total_cmp);
        assert_eq!(all, want);
        assert_eq!(sampled(&imp[..10], 0, n, None), Err(ArceeFusionError::MissingRng));
        assert!(
            matches!(sampled(&imp[..10], 0, 10, None), Ok(Cow::Borrowed(_))),
            "no copy"
        );
    }
}
