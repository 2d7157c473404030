//! `model_stock` (semantics §4.10): interpolate between the base `w0` and the average of the
//! `N >= 2` fine-tuned models by a ratio derived from the mean pairwise cosine of their task
//! vectors.
//!
//! Everything runs in the working dtype `W` with torch's per-op rounding. With
//! `filter_wise: false` the tensor is one vector; with `filter_wise: true` every row along the
//! **last** dim gets its own ratio (a 1-D tensor is one row). Per row:
//! 1. `d_i = rnd(w_i - w0)`;
//! 2. for every pair `i < j`, in order: `cos = clamp(rnd(rnd(sum rnd(d_i d_j)) /
//!    max(rnd(|d_i| |d_j|), rnd(1e-6))), -1, 1)` (torch's cascade sum; norms are torch's f32 norm
//!    rounded to `W`, which is what torch's bf16 norm gives);
//! 3. `c = rnd(sum of the pair cosines / P)` (mean over the `P` pairs, summed in f32);
//! 4. `D = rnd(1 + rnd((N - 1) c))`; `t = 0` where `|D| < 1e-6`, else `rnd(rnd(N c) / D)`;
//! 5. output `rnd(rnd(t * avg) + rnd(rnd(1 - t) * w0))`, with `avg = rnd(rnd(w1 + w2 + ...) / N)`
//!    accumulated left to right, rounding after every add.

use super::precision::Precision;
use super::torch_norm::torch_vector_norm_f32;
use super::torch_sum::DEFAULT_THREADS;
use super::torch_sum::{torch_sum_f32_threads, torch_sum_rounded};
use rayon::prelude::*;

/// Why model_stock cannot merge.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ModelStockError {
    /// Fewer than two fine-tuned models.
    #[error("model_stock needs at least 2 models besides the base, got {0}")]
    TooFew(usize),
    /// Inputs of different lengths.
    #[error("model_stock inputs have different element counts")]
    Length,
}

/// `sum(x)` of a contiguous tensor of precision `P`, rounded to `P`, as torch sums it with
/// `threads` threads.
fn sum<P: Precision>(xs: &[f32], threads: usize) -> f32 {
    torch_sum_rounded::<P>(xs, |x| x, threads)
}

/// The interpolation ratio `t` of one row of task vectors `d` (`d[i]` the row of model `i`).
pub(crate) fn ratio<P: Precision>(d: &[&[f32]], threads: usize, outer_mean: bool) -> f32 {
    let n = d.len();
    let norms: Vec<f32> = d.iter().map(|x| P::rnd(torch_vector_norm_f32(x))).collect();
    let mut dots = Vec::with_capacity(n * (n - 1) / 2);
    let mut prod = vec![0.0f32; d[0].len()];
    for i in 0..n {
        for j in i + 1..n {
            for ((p, &a), &b) in prod.iter_mut().zip(d[i]).zip(d[j]) {
                *p = P::rnd(a * b);
            }
            dots.push(sum::<P>(&prod, threads));
        }
    }
    ratio_from::<P>(&norms, &dots, outer_mean)
}

/// The ratio `t` from the task vectors' norms (rounded to `P`) and the dot products
/// `rnd(sum rnd(d_i d_j))` of every pair `i < j`, in order.
pub(crate) fn ratio_from<P: Precision>(norms: &[f32], dots: &[f32], outer_mean: bool) -> f32 {
    let n = norms.len();
    let floor = P::rnd(1e-6);
    let mut cos = Vec::with_capacity(dots.len());
    let mut pair = 0;
    for i in 0..n {
        for j in i + 1..n {
            let np = P::rnd(norms[i] * norms[j]).max(floor);
            cos.push(P::rnd(dots[pair] / np).clamp(-1.0, 1.0));
            pair += 1;
        }
    }
    // The mean over the stacked pairs: a 1-D sum for one vector, a serial reduction along dim 0
    // for a stack of rows.
    let total = if outer_mean {
        cos.iter().fold(0.0f32, |s, &c| s + c)
    } else {
        torch_sum_f32_threads(&cos, |x| x, 1)
    };
    let c = P::rnd(total / cos.len() as f32);
    let denom = P::rnd(1.0 + P::rnd((n - 1) as f32 * c));
    if denom.abs() < 1e-6 {
        0.0
    } else {
        P::rnd(P::rnd(n as f32 * c) / denom)
    }
}

/// Merges: `base` (`w0`, overwritten with the result) and the fine-tuned `others` (overwritten
/// with scratch). `row` is the length of the last dim (used only with `filter_wise`).
pub fn merge<P: Precision>(
    base: &mut [f32],
    others: &mut [&mut [f32]],
    row: usize,
    filter_wise: bool,
) -> Result<(), ModelStockError> {
    let n = others.len();
    if n < 2 {
        return Err(ModelStockError::TooFew(n));
    }
    if others.iter().any(|o| o.len() != base.len()) {
        return Err(ModelStockError::Length);
    }
    let len = base.len();
    // avg = rnd(rnd(w1 + w2 + ...) / N), left to right.
    let mut avg = others[0].to_vec();
    for o in others[1..].iter() {
        avg.par_iter_mut()
            .zip(o.par_iter())
            .for_each(|(a, &x)| *a = P::rnd(*a + x));
    }
    avg.par_iter_mut().for_each(|a| *a = P::rnd(*a / n as f32));
    for o in others.iter_mut() {
        o.par_iter_mut()
            .zip(base.par_iter())
            .for_each(|(x, &b)| *x = P::rnd(*x - b));
    }
    let row = if filter_wise && row > 0 { row } else { len.max(1) };
    let threads = if filter_wise { 1 } else { DEFAULT_THREADS };
    let ts: Vec<f32> = (0..len.div_ceil(row))
        .into_par_iter()
        .map(|r| {
            let span = r * row..((r + 1) * row).min(len);
            let d: Vec<&[f32]> = others.iter().map(|o| &o[span.clone()]).collect();
            ratio::<P>(&d, threads, filter_wise)
        })
        .collect();
    base.par_chunks_mut(row)
        .zip(avg.par_chunks(row))
        .zip(ts.par_iter())
        .for_each(|((w0, avg), &t)| {
            let keep = P::rnd(1.0 - t);
            for (w, &a) in w0.iter_mut().zip(avg) {
                *w = P::rnd(P::rnd(t * a) + P::rnd(keep * *w));
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::F32;

    fn run(base: &[f32], others: &[&[f32]], row: usize, filter_wise: bool) -> Vec<f32> {
        let mut b = base.to_vec();
        let mut os: Vec<Vec<f32>> = others.iter().map(|o| o.to_vec()).collect();
        let mut refs: Vec<&mut [f32]> = os.iter_mut().map(|o| &mut o[..]).collect();
        merge::<F32>(&mut b, &mut refs, row, filter_wise).unwrap();
        b
    }

    #[test]
    fn parallel_task_vectors_give_the_average_and_orthogonal_ones_the_base_side() {
        // cos = 1: t = 2 * 1 / (1 + 1) = 1, the average.
        let out = run(&[0.0, 0.0], &[&[1.0, 2.0], &[2.0, 4.0]], 2, false);
        assert_eq!(out, [1.5, 3.0]);
        // cos = 0: t = 0, the base.
        let out = run(&[1.0, 1.0], &[&[2.0, 1.0], &[1.0, 2.0]], 2, false);
        assert_eq!(out, [1.0, 1.0]);
    }

    #[test]
    fn filter_wise_rows_get_their_own_ratio_and_singular_rows_keep_the_base() {
        // Row 0 parallel (t = 1), row 1 anti-parallel: D = 1 + (-1) = 0, so t = 0.
        let out = run(&[0.0; 4], &[&[1.0, 1.0, 1.0, 0.0], &[3.0, 3.0, -1.0, 0.0]], 2, true);
        assert_eq!(out, [2.0, 2.0, 0.0, 0.0]);
        let err = merge::<F32>(&mut [0.0], &mut [&mut [1.0][..]], 1, false);
        assert_eq!(err, Err(ModelStockError::TooFew(1)));
    }
}
