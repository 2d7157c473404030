//! `linear`: weighted average with f32 fused multiply-add accumulation (mergekit 0.1.5).
//!
//! `acc = 0; acc = fma(x_i, f32(w_i), acc)` in input order; with `normalize`, divide by the
//! f32 sum of the weights (no zero guard: a zero sum gives inf/NaN, as upstream); round to `W`.

use super::precision::Precision;
use rayon::prelude::*;

const CHUNK: usize = 1 << 15;

/// Adds `x * f32(weight)` into `acc` with one fused multiply-add per element.
pub fn accumulate(acc: &mut [f32], x: &[f32], weight: f64) {
    let c = weight as f32;
    acc.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(a, x)| {
        for (acc, &v) in a.iter_mut().zip(x) {
            *acc = v.mul_add(c, *acc);
        }
    });
}

/// Finishes an accumulation: divides by the f32 sum of `weights` if `normalize`, rounds to `P`.
pub fn finish<P: Precision>(acc: &mut [f32], weights: &[f64], normalize: bool) {
    let mut denom = 0.0f32;
    for &w in weights {
        denom += w as f32;
    }
    acc.par_chunks_mut(CHUNK).for_each(|chunk| {
        if normalize {
            chunk.iter_mut().for_each(|a| *a = P::rnd(*a / denom));
        } else {
            chunk.iter_mut().for_each(|a| *a = P::rnd(*a));
        }
    });
}

/// Merges `inputs` (all the same length as `out`) with `weights` into `out`.
pub fn linear<P: Precision>(inputs: &[&[f32]], weights: &[f64], normalize: bool, out: &mut [f32]) {
    debug_assert_eq!(inputs.len(), weights.len());
    out.fill(0.0);
    for (x, &w) in inputs.iter().zip(weights) {
        accumulate(out, x, w);
    }
    finish::<P>(out, weights, normalize);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::{Bf16, F32};

    #[test]
    fn weights_one_zero_return_first_input() {
        let a = [1.5f32, -2.0, 3.25];
        let b = [7.0f32, 8.0, 9.0];
        let mut out = [0.0; 3];
        linear::<F32>(&[&a, &b], &[1.0, 0.0], true, &mut out);
        assert_eq!(out, a);
    }

    #[test]
    fn normalizes_by_weight_sum() {
        let a = [1.0f32, 2.0];
        let b = [3.0f32, 6.0];
        let mut out = [0.0; 2];
        linear::<F32>(&[&a, &b], &[1.0, 3.0], true, &mut out);
        assert_eq!(out, [2.5, 5.0]);
        linear::<F32>(&[&a, &b], &[1.0, 3.0], false, &mut out);
        assert_eq!(out, [10.0, 20.0]);
    }

    #[test]
    fn zero_weight_sum_gives_nan_without_guard() {
        let a = [1.0f32];
        let b = [1.0f32];
        let mut out = [0.0; 1];
        linear::<F32>(&[&a, &b], &[0.5, -0.5], true, &mut out);
        assert!(out[0].is_nan());
    }

    #[test]
    fn uses_fused_multiply_add() {
        // x*c is not representable in f32; a fused op keeps the low bits until the final add.
        let x = [1.0f32 + f32::EPSILON];
        let y = [-1.0f32];
        let mut out = [0.0; 1];
        linear::<F32>(&[&x, &y], &[(1.0 + f32::EPSILON) as f64, 1.0], false, &mut out);
        let fused = (1.0f32 + f32::EPSILON).mul_add(1.0 + f32::EPSILON, 0.0) - 1.0;
        assert_eq!(out[0], fused);
        assert!(out[0] > 0.0);
    }

    #[test]
    fn rounds_once_to_bf16() {
        let a = [1.0f32];
        let b = [1.0078125f32]; // 1 + 2^-7, one bf16 ulp above 1
        let mut out = [0.0; 1];
        linear::<Bf16>(&[&a, &b], &[0.5, 0.5], true, &mut out);
        // exact mean 1 + 2^-8 is a tie: rounds to even (1.0)
        assert_eq!(out[0], 1.0);
    }
}
