//! `sce` (Select, Calculate, Erase; semantics §4.8): TIES-style sign election over unweighted
//! task vectors, optionally restricted to the positions where the models disagree most, with
//! per-model weights from the task vectors' mean squares.
//!
//! Everything runs in the working dtype `W` with torch's per-op rounding. With the non-base
//! inputs `x_1..x_k` in config order and `tv_i = rnd(x_i - b)`:
//! 1. `select_topk < 1`: `select_topk <= 0` zeroes every task vector; otherwise the population
//!    variance over the models `v` (torch's Welford in f64, rounded to f32 and then to `W`) picks
//!    `K = trunc(f32(count_nonzero(v)) * f32(select_topk))` positions, the largest `|v|` (equal
//!    values lowest index first: torch's `topk` order is unspecified, see the golden README), and
//!    every task vector is zeroed elsewhere (`K = 0` zeroes everything);
//! 2. the elected sign per element is `+` where `rnd(sum_i tv_i) >= 0`, else `-`; `M_i` is 1 where
//!    `sign(tv_i)` equals it (a zero never does);
//! 3. `s_i = rnd(rnd(sum rnd(tv_i^2)) / n)` (torch's f32 cascade of one row), `S = rnd(sum_i s_i)`;
//!    `s_i = rnd(1 / k)` if `|S| < 1e-6`, else `rnd(s_i / S)`;
//! 4. output `rnd(b + rnd(rnd(sum_i rnd(tv_i * s_i M_i)) / max(rnd(sum_i s_i M_i), rnd_W(1e-6))))`,
//!    the sums over the models in torch's dim-0 reduction order (as [`super::ram`]).
//!
//! `int8_mask` only changes the dtype of mergekit's 0/1 masks, never a value.

use super::nuslerp::{OUTER_GROUP, interleaved_cascade, outer_cascade};
use super::precision::Precision;
use super::torch_sum::{DEFAULT_THREADS, torch_sum_f32_threads};
use rayon::prelude::*;

const CHUNK: usize = 1 << 12;

/// torch's sum over dim 0 of the stacked `[k, numel]` tensor, for output `e`.
#[inline]
fn dim0_sum(terms: &[f32], e: usize, grouped: usize) -> f32 {
    if e < grouped {
        outer_cascade(terms)
    } else {
        interleaved_cascade(terms)
    }
}

/// Population variance over the models at one position, as torch's `var(dim=0,
/// unbiased=False)`: Welford's update in f64, rounded to f32.
pub(crate) fn variance(values: impl Iterator<Item = f32>) -> f32 {
    let (mut mean, mut m2, mut n) = (0.0f64, 0.0f64, 0.0f64);
    for x in values {
        let x = f64::from(x);
        n += 1.0;
        let d = x - mean;
        mean += d / n;
        m2 += d * (x - mean);
    }
    (m2 / n) as f32
}

/// `|v|` for every position: the population variance over the models, rounded to `W`.
pub fn variances<P: Precision>(tvs: &[&[f32]]) -> Vec<f32> {
    (0..tvs[0].len())
        .into_par_iter()
        .map(|e| P::rnd(variance(tvs.iter().map(|t| t[e]))).abs())
        .collect()
}

/// `K`, the number of positions step 1 keeps out of `nonzero` nonzero variances.
pub fn selected_count(nonzero: usize, select_topk: f64) -> usize {
    (nonzero as f32 * select_topk as f32) as usize
}

/// The selection mask of step 1: `true` at the `K` positions of largest variance.
pub fn select_mask<P: Precision>(tvs: &[&[f32]], select_topk: f64) -> Vec<bool> {
    let n = tvs[0].len();
    if select_topk <= 0.0 {
        return vec![false; n];
    }
    let var = variances::<P>(tvs);
    let k = selected_count(var.iter().filter(|&&v| v != 0.0).count(), select_topk);
    let mut mask = vec![false; n];
    if k == 0 {
        return mask;
    }
    let mut order: Vec<usize> = (0..n).collect();
    let by_rank = |&a: &usize, &b: &usize| var[b].total_cmp(&var[a]).then(a.cmp(&b));
    if k < n {
        order.select_nth_unstable_by(k - 1, by_rank);
    }
    for &i in &order[..k.min(n)] {
        mask[i] = true;
    }
    mask
}

/// Mean of `rnd(x^2)` over one task vector as torch's `mean(dim=1)` of the `[k, n]` stack
/// (with `k == 1` the only row may be split over threads).
fn mean_square<P: Precision>(tv: &[f32], k: usize) -> f32 {
    let threads = mean_square_threads(k);
    // A bf16 tensor is cast to f32 before torch sums it into the f32 mean.
    let s = torch_sum_f32_threads(tv, |x| P::rnd(x * x), threads);
    P::rnd(s / tv.len() as f32)
}

/// Merges the non-base `xs` onto `base` (overwritten with the result); the `xs` are
/// overwritten with scratch.
pub fn merge<P: Precision>(base: &mut [f32], xs: &mut [&mut [f32]], select_topk: f64) {
    merge_selected::<P>(base, xs, select_topk, None);
}

/// [`merge`] with the positions step 1 keeps given (`selection`, used when `select_topk < 1`)
/// instead of chosen here: with torch's choice among equal variances, the rest is exact.
pub fn merge_selected<P: Precision>(
    base: &mut [f32],
    xs: &mut [&mut [f32]],
    select_topk: f64,
    selection: Option<&[bool]>,
) {
    let k = xs.len();
    if k == 0 {
        return;
    }
    let n = base.len();
    for x in xs.iter_mut() {
        x.par_iter_mut()
            .zip(base.par_iter())
            .for_each(|(x, &b)| *x = P::rnd(*x - b));
    }
    if select_topk < 1.0 {
        let mask = match selection {
            Some(m) => m.to_vec(),
            None => {
                let tvs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
                select_mask::<P>(&tvs, select_topk)
            }
        };
        for x in xs.iter_mut() {
            x.par_iter_mut().zip(mask.par_iter()).for_each(|(x, &m)| {
                *x *= if m { 1.0 } else { 0.0 };
            });
        }
    }
    let s = weights::<P>(xs.iter().map(|x| mean_square::<P>(x, k)).collect());
    let grouped = n / OUTER_GROUP * OUTER_GROUP;
    let tvs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
    base.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, out)| {
        let start = ci * CHUNK;
        let tvs: Vec<&[f32]> = tvs.iter().map(|t| &t[start..start + out.len()]).collect();
        combine_range::<P>(out, &tvs, start, grouped, &s);
    });
}

/// Intra-op threads of torch's mean squares: `mean(dim=1)` of the `[k, n]` stack runs each
/// row on one thread, unless there is one row.
pub fn mean_square_threads(k: usize) -> usize {
    if k == 1 { DEFAULT_THREADS } else { 1 }
}

/// Step 3's weights from the mean squares `s_i`.
pub(crate) fn weights<P: Precision>(mut s: Vec<f32>) -> Vec<f32> {
    let k = s.len();
    let total = P::rnd(torch_sum_f32_threads(&s, |x| x, 1));
    if f64::from(total).abs() < 1e-6 {
        s.iter_mut().for_each(|w| *w = P::rnd(1.0 / k as f32));
    } else {
        s.iter_mut().for_each(|w| *w = P::rnd(*w / total));
    }
    s
}

/// Steps 2 and 4 over the output elements `start .. start + out.len()` of a tensor whose
/// first `grouped` elements take torch's grouped dim-0 order: `out` holds the base on entry and
/// the result on return, `tvs[i][j]` is task vector `i` (after step 1) at element `start + j`,
/// `s` the weights.
pub(crate) fn combine_range<P: Precision>(out: &mut [f32], tvs: &[&[f32]], start: usize, grouped: usize, s: &[f32]) {
    let k = tvs.len();
    let floor = P::DTYPE.from_f64(1e-6);
    let mut terms = vec![0.0f32; k];
    let mut weights = vec![0.0f32; k];
    for (j, b) in out.iter_mut().enumerate() {
        let e = start + j;
        for (t, tv) in terms.iter_mut().zip(tvs) {
            *t = tv[j];
        }
        let elected = if P::rnd(dim0_sum(&terms, e, grouped)) >= 0.0 {
            1.0
        } else {
            -1.0
        };
        for ((w, t), &si) in weights.iter_mut().zip(terms.iter_mut()).zip(s) {
            let sign = if *t > 0.0 {
                1.0
            } else if *t < 0.0 {
                -1.0
            } else {
                0.0
            };
            *w = if sign == elected { si } else { 0.0 };
            *t = P::rnd(*t * *w);
        }
        let num = P::rnd(dim0_sum(&terms, e, grouped));
        let den = P::rnd(dim0_sum(&weights, e, grouped)).max(floor);
        *b = P::rnd(*b + P::rnd(num / den));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::{Bf16, F32};

    #[test]
    fn agreeing_task_vectors_average_by_mean_square() {
        let mut base = vec![1.0f32, 1.0, 1.0, 1.0];
        let mut a = vec![2.0f32, 1.0, 1.0, 3.0];
        let mut b = vec![3.0f32, 1.0, 0.0, 3.0];
        let mut xs: Vec<&mut [f32]> = vec![&mut a, &mut b];
        merge::<F32>(&mut base, &mut xs, 1.0);
        // tv_a = [1, 0, 0, 2], tv_b = [2, 0, -1, 2]; s_a = 5/4, s_b = 9/4 -> 5/14, 9/14.
        let (sa, sb) = (1.25f32 / 3.5, 2.25f32 / 3.5);
        assert_eq!(base[0], 1.0 + (1.0 * sa + 2.0 * sb) / (sa + sb));
        assert_eq!(base[1], 1.0);
        // Elected sign of -1 is `-`: only b counts.
        assert_eq!(base[2], 0.0);
        assert_eq!(base[3], 3.0);
    }

    #[test]
    fn select_topk_keeps_the_largest_variances_and_zero_keeps_the_base() {
        let a = [0.0f32, 1.0, 0.0, 4.0, 0.0];
        let b = [0.0f32, -1.0, 0.5, 0.0, 0.0];
        let tvs: Vec<&[f32]> = vec![&a, &b];
        // Variances 0, 1, 1/16, 4, 0: 3 nonzero, K = trunc(3 * 0.7) = 2.
        assert_eq!(select_mask::<F32>(&tvs, 0.7), [false, true, false, true, false]);
        assert_eq!(select_mask::<F32>(&tvs, 0.3), [false; 5]);
        assert_eq!(select_mask::<F32>(&tvs, -1.0), [false; 5]);
        let mut base = vec![0.5f32, -0.25];
        let mut x = vec![3.0f32, 7.0];
        let mut y = vec![-2.0f32, 1.0];
        let mut xs: Vec<&mut [f32]> = vec![&mut x, &mut y];
        merge::<Bf16>(&mut base, &mut xs, 0.0);
        assert_eq!(base, [0.5, -0.25]);
    }

    #[test]
    fn equal_variances_are_selected_lowest_index_first() {
        let a = [1.0f32, -1.0, 1.0, 2.0];
        let b = [-1.0f32, 1.0, -1.0, 0.0];
        let tvs: Vec<&[f32]> = vec![&a, &b];
        assert_eq!(select_mask::<F32>(&tvs, 0.5), [true, true, false, false]);
    }

    #[test]
    fn zero_task_vectors_weigh_equally_and_keep_the_base() {
        let mut base = vec![0.25f32, 2.0];
        let mut x = base.clone();
        let mut xs: Vec<&mut [f32]> = vec![&mut x];
        merge::<F32>(&mut base, &mut xs, 1.0);
        assert_eq!(base, [0.25, 2.0]);
    }
}
