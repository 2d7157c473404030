//! `slerp`: spherical interpolation of the whole tensor as one flat vector (mergekit 0.1.5).
//!
//! Norms, dot product and coefficients are computed in f32 (norms and the dot use torch's
//! per-chunk f32 summation and norm order; `acos`/`sin` reproduce torch's MKL results). Inputs that are
//! (anti-)parallel (`|cos| > 0.9995`) fall back to linear interpolation. Output `rnd_W(c_a a + c_b b)`.

use super::precision::Precision;
use super::torch_norm::{torch_norm_of_parts_f32, torch_vector_norm_f32};
use super::torch_sum::torch_sum_f32;
use super::torch_trig::{torch_acos_f32, torch_sin_f32};
use rayon::prelude::*;

const CHUNK: usize = 1 << 15;
/// torch's reduction chunk for a flattened tensor (elements).
pub const TORCH_CHUNK: usize = 1 << 20;
const DOT_THRESHOLD: f32 = 0.9995;
const EPS: f32 = 1e-8;

/// Interpolation coefficients `(c_a, c_b)` for base `a` and other `b` at position `t`.
pub fn slerp_coefficients(a: &[f32], b: &[f32], t: f64) -> (f32, f32) {
    if a.is_empty() {
        return (1.0 - t as f32, t as f32);
    }
    // torch: per chunk of 2^20 elements, f32 reductions; then a norm (or sum) over the stacked
    // chunk results, which torch computes even when there is a single chunk.
    let norm = |v: &[f32]| -> f32 {
        let parts: Vec<f32> = v.par_chunks(TORCH_CHUNK).map(torch_vector_norm_f32).collect();
        norm_from_parts(&parts)
    };
    let na = norm(a);
    let nb = norm(b);
    let parts: Vec<f32> = a
        .par_chunks(TORCH_CHUNK)
        .zip(b.par_chunks(TORCH_CHUNK))
        .map(|(x, y)| {
            let prod: Vec<f32> = x.iter().zip(y).map(|(&x, &y)| (x / na) * (y / nb)).collect();
            torch_sum_f32(&prod, |p| p)
        })
        .collect();
    coefficients_from(torch_sum_f32(&parts, |p| p), t)
}

/// A tensor's norm from its per-chunk norms, or 1 when it is (nearly) zero.
pub(crate) fn norm_from_parts(parts: &[f32]) -> f32 {
    let n = torch_norm_of_parts_f32(parts);
    if n > EPS { n } else { 1.0 }
}

/// Coefficients `(c_a, c_b)` from the dot product of the normalised inputs.
pub(crate) fn coefficients_from(dot: f32, t: f64) -> (f32, f32) {
    let t = t as f32;
    let dot = dot.clamp(-1.0, 1.0);
    if dot.abs() > DOT_THRESHOLD {
        return (1.0 - t, t);
    }
    let theta = torch_acos_f32(dot);
    let sin_theta = torch_sin_f32(theta);
    (
        torch_sin_f32((1.0 - t) * theta) / sin_theta,
        torch_sin_f32(t * theta) / sin_theta,
    )
}

/// Merges base `a` and other `b`, writing the result over `a`.
pub fn slerp_in_place<P: Precision>(a: &mut [f32], b: &[f32], t: f64) {
    let (ca, cb) = slerp_coefficients(a, b, t);
    a.par_chunks_mut(CHUNK).zip(b.par_chunks(CHUNK)).for_each(|(x, y)| {
        for (x, &y) in x.iter_mut().zip(y) {
            let l = ca * *x;
            let r = cb * y;
            *x = P::rnd(l + r);
        }
    });
}

/// Merges base `a` and other `b` into `out`.
pub fn slerp<P: Precision>(a: &[f32], b: &[f32], t: f64, out: &mut [f32]) {
    out.copy_from_slice(a);
    slerp_in_place::<P>(out, b, t);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::F32;

    fn run(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
        let mut out = vec![0.0; a.len()];
        slerp::<F32>(a, b, t, &mut out);
        out
    }

    #[test]
    fn endpoints_return_inputs() {
        let a = [1.0f32, 0.0, 0.5];
        let b = [0.0f32, 1.0, -0.25];
        assert_eq!(run(&a, &b, 0.0), a);
        let r = run(&a, &b, 1.0);
        for (x, y) in r.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn orthogonal_unit_vectors_stay_on_the_circle() {
        let r = run(&[1.0, 0.0], &[0.0, 1.0], 0.5);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((r[0] - h).abs() < 1e-6 && (r[1] - h).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn parallel_and_antiparallel_fall_back_to_lerp() {
        assert_eq!(run(&[1.0, 0.0], &[2.0, 0.0], 0.25), [1.25, 0.0]);
        assert_eq!(run(&[1.0, 0.0], &[-1.0, 0.0], 0.25), [0.5, 0.0]);
    }

    #[test]
    fn zero_vectors_do_not_divide_by_zero() {
        let r = run(&[0.0, 0.0], &[0.0, 0.0], 0.3);
        assert_eq!(r, [0.0, 0.0]);
    }
}
