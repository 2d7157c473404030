//! `multislerp` (semantics §4.4): barycentric interpolation of `k >= 2` task vectors (or
//! models) on the hypersphere, each whole tensor one flat vector, in the working dtype `W` with
//! torch's per-op rounding (a Python scalar is added as a `W` value, multiplied as f32).
//!
//! With one non-base input the kernel is not called (mergekit returns that input unchanged).
//! Otherwise, with `X_i = rnd(x_i - b)` (or `x_i`) and `w = rnd_W(weights)` (divided by their
//! sum when `normalize_weights`):
//! 1. `n_i = rnd(|X_i|)`, `u_i = rnd(X_i / rnd(n_i + eps))`;
//! 2. `m = rnd(sum_i rnd(u_i w_i))` (summed over the models in order, per element);
//! 3. `|m| < eps`: two inputs fall back to `rnd(rnd(X_1 w_1) + rnd(X_2 w_2))`, more are an error;
//! 4. `m = rnd(m / |m|)`, `d_i = rnd(sum rnd(u_i m))`, `T = rnd(sum_i rnd(rnd(u_i - rnd(d_i m)) w_i))`;
//! 5. `nu = rnd(rnd(|T|) + eps)`, `r = rnd(rnd(m cos nu) + rnd(T rnd(rnd(sin nu) / nu)))`;
//! 6. output `rnd(r * rnd(sum_i rnd(n_i w_i)))`, then `rnd(+ b)`.
//!
//! `cos` is f64's rounded to f32 (torch uses MKL's; within 1 ulp, see the module tests), `sin`
//! torch's f32 [`torch_sin_f32`].

use super::precision::Precision;
use super::torch_norm::torch_vector_norm_f32;
use super::torch_sum::torch_sum_rounded;
use super::torch_trig::torch_sin_f32;
use rayon::prelude::*;

/// Why multislerp cannot merge.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MultislerpError {
    /// The weighted mean of the unit vectors vanishes with more than two inputs.
    #[error(
        "multislerp: the weighted sum of the input tensors is zero (antipodal inputs with balancing weights); use different weights"
    )]
    ZeroMean,
}

/// A short 1-D sum (a handful of weights): torch's cascade of scalars is a plain left fold.
fn sum_small<P: Precision>(v: &[f32]) -> f32 {
    torch_sum_rounded::<P>(v, |x| x, 1)
}

/// The weights as the kernel uses them: rounded to `P`, divided by their sum when
/// `normalize_weights`.
pub fn rounded_weights<P: Precision>(weights: &[f64], normalize_weights: bool) -> Vec<f32> {
    let mut w: Vec<f32> = weights.iter().map(|&w| P::rnd(w as f32)).collect();
    if normalize_weights {
        let total = sum_small::<P>(&w);
        w.iter_mut().for_each(|x| *x = P::rnd(*x / total));
    }
    w
}

/// The scalars of step 5 and 6: from the tangent's norm `|T|` (rounded), the inputs' norms
/// and the weights.
#[derive(Debug, Clone, Copy)]
pub struct Ending {
    cos_nu: f32,
    factor: f32,
    avg_norm: f32,
}

impl Ending {
    /// The scalars for tangent norm `tangent_norm`, `eps` rounded to `P` (`eps_add`), the
    /// inputs' norms and weights.
    pub fn of<P: Precision>(tangent_norm: f32, eps_add: f32, norms: &[f32], w: &[f32]) -> Ending {
        let nu = P::rnd(tangent_norm + eps_add);
        let scaled: Vec<f32> = norms.iter().zip(w).map(|(&a, &b)| P::rnd(a * b)).collect();
        Ending {
            cos_nu: P::rnd((nu as f64).cos() as f32),
            factor: P::rnd(P::rnd(torch_sin_f32(nu)) / nu),
            avg_norm: sum_small::<P>(&scaled),
        }
    }

    /// The result at one element from the normalised mean `m` and the tangent `t` there
    /// (before the base is added back).
    #[inline]
    pub fn value<P: Precision>(&self, m: f32, t: f32) -> f32 {
        let r = P::rnd(P::rnd(m * self.cos_nu) + P::rnd(t * self.factor));
        P::rnd(r * self.avg_norm)
    }
}

/// Merges the non-base inputs `xs` (at least two; `xs[0]` is overwritten with the result, the
/// others with scratch) with their `weights`, onto the optional `base`.
pub fn merge<P: Precision>(
    xs: &mut [&mut [f32]],
    weights: &[f64],
    base: Option<&[f32]>,
    normalize_weights: bool,
    eps: f64,
) -> Result<(), MultislerpError> {
    let k = xs.len();
    let n = xs[0].len();
    if let Some(b) = base {
        for x in xs.iter_mut() {
            x.par_iter_mut()
                .zip(b.par_iter())
                .for_each(|(x, &b)| *x = P::rnd(*x - b));
        }
    }
    let w = rounded_weights::<P>(weights, normalize_weights);
    let eps_add = P::rnd(eps as f32);
    let norms: Vec<f32> = xs.iter().map(|x| P::rnd(torch_vector_norm_f32(x))).collect();
    // Keep the task vectors for the fallback; work on unit vectors.
    let mut units: Vec<Vec<f32>> = xs
        .iter()
        .zip(&norms)
        .map(|(x, &nrm)| {
            let d = P::rnd(nrm + eps_add);
            x.par_iter().map(|&v| P::rnd(v / d)).collect()
        })
        .collect();
    let weighted_sum = |vs: &[Vec<f32>], out: &mut [f32]| {
        out.par_iter_mut().enumerate().for_each(|(e, o)| {
            let mut s = 0.0f32;
            for (v, &wi) in vs.iter().zip(&w) {
                s += P::rnd(v[e] * wi);
            }
            *o = P::rnd(s);
        })
    };
    let mut mean = vec![0.0f32; n];
    weighted_sum(&units, &mut mean);
    let mean_norm = P::rnd(torch_vector_norm_f32(&mean));
    if (mean_norm as f64) < eps {
        if k != 2 {
            return Err(MultislerpError::ZeroMean);
        }
        let (a, rest) = xs.split_at_mut(1);
        let (w0, w1) = (w[0], w[1]);
        a[0].par_iter_mut().zip(rest[0].par_iter()).for_each(|(x, &y)| {
            *x = P::rnd(P::rnd(*x * w0) + P::rnd(y * w1));
        });
    } else {
        mean.par_iter_mut().for_each(|m| *m = P::rnd(*m / mean_norm));
        for u in units.iter_mut() {
            let prod: Vec<f32> = u
                .par_iter()
                .zip(mean.par_iter())
                .map(|(&a, &m)| P::rnd(a * m))
                .collect();
            let dot = sum_rows::<P>(&prod);
            u.par_iter_mut()
                .zip(mean.par_iter())
                .for_each(|(a, &m)| *a = P::rnd(*a - P::rnd(dot * m)));
        }
        let mut tangent = vec![0.0f32; n];
        weighted_sum(&units, &mut tangent);
        let end = Ending::of::<P>(P::rnd(torch_vector_norm_f32(&tangent)), eps_add, &norms, &w);
        xs[0]
            .par_iter_mut()
            .zip(mean.par_iter().zip(tangent.par_iter()))
            .for_each(|(x, (&m, &t))| *x = end.value::<P>(m, t));
    }
    if let Some(b) = base {
        xs[0]
            .par_iter_mut()
            .zip(b.par_iter())
            .for_each(|(x, &b)| *x = P::rnd(*x + b));
    }
    Ok(())
}

/// Sum along the last dim of one row of the stacked `[k, n]` tensor (one of several outputs:
/// torch parallelises over the rows, so each row is one serial cascade).
fn sum_rows<P: Precision>(v: &[f32]) -> f32 {
    torch_sum_rounded::<P>(v, |x| x, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::F32;

    #[test]
    fn two_orthogonal_unit_vectors_meet_halfway_on_the_sphere() {
        let mut a = vec![1.0f32, 0.0];
        let mut b = vec![0.0f32, 1.0];
        let mut xs: Vec<&mut [f32]> = vec![&mut a, &mut b];
        merge::<F32>(&mut xs, &[1.0, 1.0], None, true, 1e-8).unwrap();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((a[0] - h).abs() < 1e-5 && (a[1] - h).abs() < 1e-5, "{a:?}");
    }

    #[test]
    fn antipodal_inputs_fall_back_to_lerp_for_two_and_fail_for_three() {
        let mut a = vec![1.0f32, 0.0];
        let mut b = vec![-1.0f32, 0.0];
        let mut xs: Vec<&mut [f32]> = vec![&mut a, &mut b];
        merge::<F32>(&mut xs, &[1.0, 1.0], None, true, 1e-8).unwrap();
        assert_eq!(a, [0.0, 0.0]);
        let mut a = vec![1.0f32, 0.0];
        let mut b = vec![-1.0f32, 0.0];
        let mut c = vec![0.0f32, 0.0];
        let mut xs: Vec<&mut [f32]> = vec![&mut a, &mut b, &mut c];
        assert_eq!(
            merge::<F32>(&mut xs, &[1.0, 1.0, 1.0], None, true, 1e-8),
            Err(MultislerpError::ZeroMean)
        );
    }
}
