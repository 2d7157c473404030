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
    let eps = P::rnd(epsilon as f32);
    let n = base.len();
    let k = xs.len();
    let tv = |i: usize, e: usize| P::rnd(xs[i][e] - base[e]);
    let counts: Vec<u32> = (0..n)
        .into_par_iter()
        .map(|e| (0..k).map(|i| u32::from(tv(i, e).abs() > eps)).sum())
        .collect();
    let (mut shared, mut unique) = (vec![0u64; k], vec![0u64; k]);
    for i in 0..k {
        for (e, &c) in counts.iter().enumerate() {
            if tv(i, e).abs() > eps {
                shared[i] += u64::from(c > 1);
                unique[i] += u64::from(c == 1);
            }
        }
    }
    let lambda: Vec<f32> = (0..k)
        .map(|i| {
            let rho = shared[i] as f32 / (unique[i] as f32).max(epsilon as f32);
            1.0 + r as f32 * rho.clamp(0.0, alpha as f32)
        })
        .collect();
    let grouped = n / OUTER_GROUP * OUTER_GROUP;
    let merged: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|e| {
            let c = counts[e];
            let (u, o) = (if c == 1 { 1.0 } else { 0.0 }, if c > 1 { 1.0 } else { 0.0 });
            let terms: Vec<f32> = (0..k)
                .map(|i| {
                    let t = tv(i, e);
                    let z = P::rnd(t * if t.abs() > eps { 1.0 } else { 0.0 });
                    P::rnd(z * u) * lambda[i] + P::rnd(P::rnd(z * o) / c.max(1) as f32)
                })
                .collect();
            if e < grouped {
                outer_cascade(&terms)
            } else {
                interleaved_cascade(&terms)
            }
        })
        .collect();
    base.par_iter_mut().zip(merged.par_iter()).for_each(|(b, &m)| *b += m);
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
