//! `ram` (Reinforced Agent Merging, semantics §4.9), elementwise in the working dtype `W`.
//!
//! Per element, with `tv_i = rnd(x_i - b)` for the non-base models in order: `tv_i` is active
//! when `|tv_i| > rnd_W(epsilon)` (torch compares a bf16 tensor with a Python scalar as bf16),
//! `c` counts the active models; each model contributes
//! `rnd(rnd(z_i * [c == 1]) + rnd(rnd(z_i * [c > 1]) / max(c, 1)))` with `z_i = rnd(tv_i * active_i)`,
//! the contributions are summed over the models as torch reduces dim 0 of the stacked
//! `[k, n]` tensor (ATen's outer cascade for outputs in full groups of 32, its interleaved
//! `row_sum` for the rest; plain left folds for fewer than 4 models), rounded, and added to the
//! base. Inactive elements keep the base; unique ones are added; shared ones are averaged.

use super::nuslerp::{OUTER_GROUP, interleaved_cascade, outer_cascade};
use super::precision::Precision;
use rayon::prelude::*;

/// Merges the non-base `xs` onto `base` (overwritten with the result). `start` is the index of
/// `base[0]` in the whole flattened tensor and `numel` the tensor's element count (the
/// reduction order of an output depends on its column).
pub fn merge<P: Precision>(base: &mut [f32], xs: &[&[f32]], epsilon: f64, start: usize, numel: usize) {
    if xs.is_empty() {
        return;
    }
    let eps = P::rnd(epsilon as f32);
    let grouped = numel / OUTER_GROUP * OUTER_GROUP;
    base.par_chunks_mut(1 << 12).enumerate().for_each(|(ci, out)| {
        let mut tv = vec![0.0f32; xs.len()];
        let mut terms = vec![0.0f32; xs.len()];
        for (e, b) in out.iter_mut().enumerate() {
            let idx = ci * (1 << 12) + e;
            let mut count = 0u32;
            for (t, x) in tv.iter_mut().zip(xs) {
                *t = P::rnd(x[idx] - *b);
                count += u32::from(t.abs() > eps);
            }
            let unique = if count == 1 { 1.0 } else { 0.0 };
            let overlap = if count > 1 { 1.0 } else { 0.0 };
            let divisor = count.max(1) as f32;
            for (term, &t) in terms.iter_mut().zip(&tv) {
                let active = if t.abs() > eps { 1.0 } else { 0.0 };
                let z = P::rnd(t * active);
                *term = P::rnd(P::rnd(z * unique) + P::rnd(P::rnd(z * overlap) / divisor));
            }
            let sum = if start + idx < grouped {
                outer_cascade(&terms)
            } else {
                interleaved_cascade(&terms)
            };
            *b = P::rnd(*b + P::rnd(sum));
        }
    });
}

/// `ramplus_tl` (RAM+, tensor-local): like [`merge`], but each model's unique contributions are
/// scaled by `lambda_i = 1 + r * clamp(shared_i / max(unique_i, epsilon), 0, alpha)` (f32), where
/// `shared_i` and `unique_i` count the model's active elements that are shared or unique over
/// the whole tensor. The f32 `lambda` promotes the result: the output is f32 for every working
/// dtype (`rnd_W` only on the shared half), `f32(b) + sum`.
pub fn merge_plus<P: Precision>(base: &mut [f32], xs: &[&[f32]], epsilon: f64, r: f64, alpha: f64) {
    if xs.is_empty() {
        return;
    }
    let n = base.len();
    let counts = plus_counts::<P>(base, xs, epsilon);
    let lambda = plus_lambdas(&counts, epsilon, r, alpha);
    plus_apply::<P>(base, xs, epsilon, &lambda, 0, n);
}

/// Each model's count of active elements that are `(shared, unique)` over `base`'s elements
/// (any range of the tensor: the counts of ranges add up).
pub fn plus_counts<P: Precision>(base: &[f32], xs: &[&[f32]], epsilon: f64) -> Vec<(u64, u64)> {
    let eps = P::rnd(epsilon as f32);
    let k = xs.len();
    base.par_chunks(1 << 12)
        .enumerate()
        .fold(
            || vec![(0u64, 0u64); k],
            |mut acc, (ci, b)| {
                let mut active = vec![false; k];
                for (j, &bv) in b.iter().enumerate() {
                    let e = ci * (1 << 12) + j;
                    for (a, x) in active.iter_mut().zip(xs) {
                        *a = P::rnd(x[e] - bv).abs() > eps;
                    }
                    let c = active.iter().filter(|&&a| a).count();
                    for (acc, _) in acc.iter_mut().zip(&active).filter(|(_, a)| **a) {
                        acc.0 += u64::from(c > 1);
                        acc.1 += u64::from(c == 1);
                    }
                }
                acc
            },
        )
        .reduce(
            || vec![(0, 0); k],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a = (a.0 + b.0, a.1 + b.1));
                a
            },
        )
}

/// Every model's `lambda` from its whole-tensor `(shared, unique)` counts.
pub fn plus_lambdas(counts: &[(u64, u64)], epsilon: f64, r: f64, alpha: f64) -> Vec<f32> {
    counts
        .iter()
        .map(|&(shared, unique)| {
            let rho = shared as f32 / (unique as f32).max(epsilon as f32);
            1.0 + r as f32 * rho.clamp(0.0, alpha as f32)
        })
        .collect()
}

/// Merges the non-base `xs` onto `base` (overwritten with the f32 result) with the models'
/// `lambda`; `start` is the index of `base[0]` in the tensor of `numel` elements.
pub fn plus_apply<P: Precision>(
    base: &mut [f32],
    xs: &[&[f32]],
    epsilon: f64,
    lambda: &[f32],
    start: usize,
    numel: usize,
) {
    let eps = P::rnd(epsilon as f32);
    let k = xs.len();
    let grouped = numel / OUTER_GROUP * OUTER_GROUP;
    base.par_chunks_mut(1 << 12).enumerate().for_each(|(ci, out)| {
        let mut tv = vec![0.0f32; k];
        let mut terms = vec![0.0f32; k];
        for (j, b) in out.iter_mut().enumerate() {
            let e = ci * (1 << 12) + j;
            for (t, x) in tv.iter_mut().zip(xs) {
                *t = P::rnd(x[e] - *b);
            }
            let c = tv.iter().filter(|t| t.abs() > eps).count() as u32;
            let (u, o) = (if c == 1 { 1.0 } else { 0.0 }, if c > 1 { 1.0 } else { 0.0 });
            for ((term, &t), &l) in terms.iter_mut().zip(&tv).zip(lambda) {
                let z = P::rnd(t * if t.abs() > eps { 1.0 } else { 0.0 });
                *term = P::rnd(z * u) * l + P::rnd(P::rnd(z * o) / c.max(1) as f32);
            }
            let sum = if start + e < grouped {
                outer_cascade(&terms)
            } else {
                interleaved_cascade(&terms)
            };
            *b += sum;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::F32;

    #[test]
    fn unique_deltas_add_shared_ones_average_and_small_ones_vanish() {
        let mut b = vec![0.0f32; 4];
        let x = [1.0f32, 2.0, 1e-6, 0.0];
        let y = [0.0f32, 4.0, 0.0, -3.0];
        merge::<F32>(&mut b, &[&x, &y], 1e-5, 0, 4);
        assert_eq!(b, [1.0, 3.0, 0.0, -3.0]);
    }
}
