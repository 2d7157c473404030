//! `arcee_fusion` (semantics §4.12): keep the other model's change only where its importance
//! (change magnitude times the KL divergence of the row softmaxes) is an upper outlier.
//!
//! With the base `b` and the other model `y`, in the working dtype `W` (torch's per-op
//! rounding), per row along the last dim (a 1-D tensor is one row):
//! 1. `p = rnd(softmax(y) + e)`, `q = rnd(softmax(b) + e)`, `e = 1e-8` (as a `W` value);
//! 2. `kl = rnd(sum rnd(p * rnd(log rnd(p / q))))` (torch's row cascade);
//! 3. importance `I = rnd(rnd(|y - b|) * kl)`.
//!
//! Over the flattened `I` (for more than 10^6 elements, 10^6 samples `I[w mod n]` with `w` the
//! next MT19937 words, as `torch.randint` draws them), sorted ascending: `Q_q = sorted[trunc(f32(q)
//! * f32(m - 1))]`, `thr = rnd(Q_.5 + rnd(rnd(Q_.75 - Q_.25) * 1.5))`. The output is f32 for every
//! `W`: `f32(b) + f32(rnd(y - b)) * [I >= thr]`.
//!
//! torch's f32 softmax is replayed exactly (SLEEF's `expf`, `reduce_all`'s 16-lane order, a
//! multiplication by `1 / sum`); `log` is f64's rounded to f32 (torch calls MKL's). The output
//! depends on them only through the mask (see `tests/golden/README.md`).

use super::precision::Precision;
use super::torch_sum::{DEFAULT_THREADS, torch_sum_rounded};
use crate::rng::Mt19937;
use rayon::prelude::*;

/// Importances above this many elements are sampled for the quantiles.
pub const SAMPLE_SIZE: usize = 1_000_000;

/// Lanes of torch's `Vectorized<float>` in the softmax kernel (AVX-512 build on this host).
const LANES: usize = 16;

/// Why arcee_fusion cannot merge.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ArceeFusionError {
    /// A tensor larger than the sample size without its planned random stream.
    #[error("arcee_fusion samples tensors of more than 10^6 elements and needs a random stream")]
    MissingRng,
}

/// Whether a tensor of `numel` elements consumes random words (10^6 of them).
pub fn draws(numel: u64) -> bool {
    numel > SAMPLE_SIZE as u64
}

/// `vec::reduce_all` of a row with `+`: lane-wise over whole vectors, the tail into the first
/// lanes, then the lanes halved pairwise.
fn reduce_sum(xs: &[f32]) -> f32 {
    if xs.len() < LANES {
        return xs.iter().skip(1).fold(xs[0], |s, &x| s + x);
    }
    let mut acc = [0.0f32; LANES];
    acc.copy_from_slice(&xs[..LANES]);
    let mut chunks = xs[LANES..].chunks(LANES);
    for c in chunks.by_ref() {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// SLEEF's `expf` (u10), which torch's vectorized softmax calls: `q = rint(x / ln 2)`,
/// a degree-6 polynomial of the reduced argument with fused multiply-adds, scaled by `2^q`.
pub fn sleef_expf(d: f32) -> f32 {
    const R_LN2: f32 = std::f32::consts::LOG2_E;
    const L2U: f32 = f32::from_bits(0x3f31_7200);
    const L2L: f32 = f32::from_bits(0x35bf_be8e);
    const POLY: [u32; 5] = [0x3ab6_96c9, 0x3c08_88a6, 0x3d2a_aa7a, 0x3e2a_aaab, 0x3f00_0000];
    let q = (d * R_LN2).round_ties_even() as i32;
    let qf = q as f32;
    let s = qf.mul_add(-L2U, d);
    let s = qf.mul_add(-L2L, s);
    let mut u = f32::from_bits(0x3950_2bda);
    for c in POLY {
        u = u.mul_add(s, f32::from_bits(c));
    }
    let u = 1.0 + (s * s).mul_add(u, s);
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    let (a, b) = (q >> 1, q - (q >> 1));
    if d < -104.0 {
        0.0
    } else if d > 100.0 {
        f32::INFINITY
    } else {
        u * pow2(a) * pow2(b)
    }
}

/// `rnd(softmax(row) + e)`.
fn softmax_eps<P: Precision>(row: &[f32], out: &mut [f32], eps: f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (o, &x) in out.iter_mut().zip(row) {
        *o = sleef_expf(x - max);
    }
    let sum = reduce_sum(out);
    // Reduced-precision rows are computed in f32 the same way and rounded once.
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o = P::rnd(P::rnd(*o * inv) + eps));
}

/// Row sum of a `[rows, len]` tensor along the last dim (`single`: the tensor is one row).
fn row_sum<P: Precision>(xs: &[f32], single: bool) -> f32 {
    let threads = if single { DEFAULT_THREADS } else { 1 };
    torch_sum_rounded::<P>(xs, |x| x, threads)
}

/// The importance of every element (`row` elements per row of the last dim).
pub fn importance<P: Precision>(y: &[f32], b: &[f32], row: usize) -> Vec<f32> {
    importance_of_rows::<P>(y, b, row, row == y.len())
}

/// The importance of every element of whole rows of `row` elements (part of a tensor, or all
/// of it); `single`: the tensor is one row (its row sum then runs on torch's threads).
pub fn importance_of_rows<P: Precision>(y: &[f32], b: &[f32], row: usize, single: bool) -> Vec<f32> {
    let eps = P::DTYPE.from_f64(1e-8);
    let mut out = vec![0.0f32; y.len()];
    out.par_chunks_mut(row)
        .zip(y.par_chunks(row).zip(b.par_chunks(row)))
        .for_each(|(imp, (y, b))| {
            let (mut p, mut q) = (vec![0.0f32; row], vec![0.0f32; row]);
            softmax_eps::<P>(y, &mut p, eps);
            softmax_eps::<P>(b, &mut q, eps);
            let terms: Vec<f32> = p
                .iter()
                .zip(&q)
                .map(|(&p, &q)| P::rnd(p * P::rnd(f64::from(P::rnd(p / q)).ln() as f32)))
                .collect();
            let kl = row_sum::<P>(&terms, single);
            for ((i, &y), &b) in imp.iter_mut().zip(y).zip(b) {
                *i = P::rnd(P::rnd((y - b).abs()) * kl);
            }
        });
    out
}

/// The sampled indices of a tensor of `n > 10^6` elements, in draw order, as
/// `torch.randint(n, (10^6,))` draws them from `rng`.
pub fn sample_indices(n: u64, mut rng: Mt19937) -> impl Iterator<Item = u64> {
    (0..SAMPLE_SIZE).map(move |_| u64::from(rng.next_u32()) % n)
}

/// The positions in ascending order of the lower quartile, the median and the upper quartile
/// among `m >= 1` sorted values.
pub fn quantile_ranks(m: usize) -> [usize; 3] {
    let last = (m - 1) as f32;
    [0.25f32, 0.5, 0.75].map(|q| (q * last) as usize)
}

/// `Q_.5 + 1.5 (Q_.75 - Q_.25)` from the three quantiles.
pub fn threshold_of<P: Precision>([q1, median, q3]: [f32; 3]) -> f32 {
    P::rnd(median + P::rnd(P::rnd(q3 - q1) * 1.5))
}

/// The threshold `Q_.5 + 1.5 (Q_.75 - Q_.25)` of the importances.
pub fn threshold<P: Precision>(imp: &[f32], rng: Option<Mt19937>) -> Result<f32, ArceeFusionError> {
    let mut sorted: Vec<f32> = if draws(imp.len() as u64) {
        let rng = rng.ok_or(ArceeFusionError::MissingRng)?;
        sample_indices(imp.len() as u64, rng).map(|i| imp[i as usize]).collect()
    } else {
        imp.to_vec()
    };
    sorted.par_sort_unstable_by(f32::total_cmp);
    Ok(threshold_of::<P>(quantile_ranks(sorted.len()).map(|r| sorted[r])))
}

/// Merges `y` onto `base` (overwritten with the f32 result); `row` is the last-dim length and
/// `rng` the stream at this tensor's first draw (only read for more than 10^6 elements).
pub fn merge<P: Precision>(
    base: &mut [f32],
    y: &[f32],
    row: usize,
    rng: Option<Mt19937>,
) -> Result<(), ArceeFusionError> {
    if base.is_empty() {
        return Ok(());
    }
    let imp = importance::<P>(y, base, row.max(1));
    let thr = threshold::<P>(&imp, rng)?;
    apply::<P>(base, y, &imp, thr);
    Ok(())
}

/// `base += rnd(y - base) * [imp >= thr]` in f32 (overwrites `base` with the result).
pub fn apply<P: Precision>(base: &mut [f32], y: &[f32], imp: &[f32], thr: f32) {
    base.par_iter_mut()
        .zip(y.par_iter().zip(imp.par_iter()))
        .for_each(|(b, (&y, &i))| {
            let mask = if i >= thr { 1.0 } else { 0.0 };
            *b += P::rnd(y - *b) * mask;
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::{Bf16, F32};

    #[test]
    fn mostly_unchanged_tensors_keep_every_change_in_f32() {
        // One changed element: 31 of 32 importances are 0, so the threshold is 0 and every
        // element is kept; with bf16 inputs the sum is an f32 value (not rounded to bf16).
        let base: Vec<f32> = (0..32).map(|i| (i % 4) as f32 * 0.25 + 0.00390625).collect();
        let mut y = base.clone();
        y[5] = 258.0;
        let imp = importance::<Bf16>(&y, &base, 4);
        assert!(imp[5] > 0.0 && imp.iter().enumerate().all(|(i, &v)| i == 5 || v == 0.0));
        let mut out = base.clone();
        merge::<Bf16>(&mut out, &y, 4, None).unwrap();
        assert_eq!(out[5], 258.0 + 0.25 + 0.00390625);
        assert_eq!(&out[..5], &base[..5]);
    }

    #[test]
    fn changes_below_the_threshold_are_dropped() {
        // Rows of 2, each with one small change and one row with a large one: 8 zero and 7
        // equal importances put the threshold at 1.5 times the small ones; only the outlier
        // is kept.
        let base = vec![0.0f32; 16];
        let mut y: Vec<f32> = (0..16).map(|i| if i % 2 == 0 { 0.01 } else { 0.0 }).collect();
        y[14] = 4.0;
        let imp = importance::<F32>(&y, &base, 2);
        let thr = threshold::<F32>(&imp, None).unwrap();
        assert!(imp[14] >= thr && imp[12] < thr, "{imp:?} {thr}");
        let mut out = base.clone();
        merge::<F32>(&mut out, &y, 2, None).unwrap();
        let want: Vec<f32> = (0..16).map(|i| if imp[i] >= thr { y[i] } else { 0.0 }).collect();
        assert_eq!(out, want);
        assert_eq!(out[14], 4.0);
        assert_eq!(out[12], 0.0);
    }

    #[test]
    fn quantiles_are_lower_order_statistics() {
        let imp: Vec<f32> = (0..10).map(|i| i as f32).collect();
        // m - 1 = 9: indices 2, 4, 6 -> 4 + 1.5 * (6 - 2) = 10.
        assert_eq!(threshold::<F32>(&imp, None).unwrap(), 10.0);
    }

    #[test]
    fn large_tensors_sample_with_torch_randint() {
        // torch.manual_seed(1234); torch.randint(1_000_003, (1_000_000,)) starts with these.
        let mut rng = Mt19937::new(1234);
        let first: Vec<u64> = (0..6).map(|_| u64::from(rng.next_u32()) % 1_000_003).collect();
        assert_eq!(first, [567309, 442760, 928793, 578829, 20676, 992680]);
        let imp = vec![0.0f32; SAMPLE_SIZE + 3];
        assert_eq!(threshold::<F32>(&imp, None), Err(ArceeFusionError::MissingRng));
        assert_eq!(threshold::<F32>(&imp, Some(Mt19937::new(1))), Ok(0.0));
    }
}
