//! The generalized task-arithmetic family: `task_arithmetic`, `ties`, `dare_ties`, `dare_linear`,
//! `breadcrumbs`, `breadcrumbs_ties`, `della`, `della_linear`.
//!
//! All arithmetic happens in the working dtype `W` with torch's per-op rounding:
//! `delta_i = rnd(x_i - b)`, optional sparsification, `D_i = rnd(rnd_W(w_i) * delta_i)`,
//! optional sign consensus on the weighted deltas, optional normalisation by the (surviving)
//! weight sum, optional `lambda` scaling, and `rnd(b + mixed)`.

use super::breadcrumbs;
use super::della::{self, DellaError, RankRows};
use super::precision::Precision;
use super::sparsify::{self, Sparsifier};
use crate::rng::Mt19937;
use rayon::prelude::*;

const CHUNK: usize = 1 << 12;

/// Sign-consensus rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consensus {
    /// TIES: the elected sign is the sign of the sum of weighted deltas.
    Sum,
}

/// Static shape of one family member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GtaVariant {
    /// Sign consensus, if any.
    pub consensus: Option<Consensus>,
    /// Sparsifier, if any.
    pub sparsifier: Option<Sparsifier>,
    /// Default of the `normalize` parameter.
    pub default_normalize: bool,
    /// Default of the `rescale` parameter.
    pub default_rescale: bool,
}

/// Resolved shared parameters of one tensor.
#[derive(Debug, Clone, Copy)]
pub struct GtaOptions {
    /// Divide by the sum of (surviving) weights.
    pub normalize: bool,
    /// Rescale sparsified deltas to the original L1 norm.
    pub rescale: bool,
    /// Final scale of the merged task vector.
    pub lambda: f64,
    /// Rows DELLA ranks magnitudes within (dim 1 of the tensor's shape).
    pub rows: RankRows,
}

/// One non-base input.
pub struct GtaInput<'a> {
    /// The input tensor, values in `W`; overwritten with its task vector.
    pub data: &'a mut [f32],
    /// Per-model weight.
    pub weight: f64,
    /// Per-model density (1.0 disables sparsification).
    pub density: f64,
    /// Fraction of largest magnitudes breadcrumbs removes (`gamma`).
    pub gamma: f64,
    /// DELLA's spread of keep probabilities around the density (`epsilon`).
    pub epsilon: f64,
    /// Random stream positioned at this input's first draw (random sparsifiers only).
    pub rng: Option<Mt19937>,
}

/// Errors from the family kernel.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GtaError {
    /// A random sparsifier was configured but no random stream was supplied.
    #[error("random sparsification needs a random stream for input {0}")]
    MissingRng(usize),
    /// The streaming kernel was asked for a sparsifier that needs a global rank.
    #[error("this sparsifier cannot be streamed")]
    Unsupported,
    /// DELLA rejected its parameters or the tensor.
    #[error(transparent)]
    Della(#[from] DellaError),
}

/// TIES' mask for one weighted delta: 1 when the sign of `v` (0 for zero) equals the elected
/// sign `elected` (±1), else 0.
#[inline(always)]
pub(super) fn agrees(v: f32, elected: f32) -> f32 {
    let sg = if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    };
    if sg == elected { 1.0 } else { 0.0 }
}

/// Merges `inputs` onto `base`, writing the result over `base`. Each input's buffer is reused
/// for its task vector, so memory stays at one buffer per input.
pub fn merge<P: Precision>(
    variant: GtaVariant,
    opts: GtaOptions,
    base: &mut [f32],
    inputs: Vec<GtaInput<'_>>,
) -> Result<(), GtaError> {
    if inputs.is_empty() {
        return Ok(());
    }
    let mut deltas: Vec<&mut [f32]> = Vec::with_capacity(inputs.len());
    let mut weights: Vec<f32> = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        let d = input.data;
        d.par_chunks_mut(CHUNK).zip(base.par_chunks(CHUNK)).for_each(|(d, b)| {
            for (x, &b) in d.iter_mut().zip(b) {
                *x = P::rnd(*x - b);
            }
        });
        match variant.sparsifier {
            None => {}
            Some(Sparsifier::Magnitude) => sparsify::magnitude::<P>(d, input.density, opts.rescale),
            Some(Sparsifier::Random) if input.density < 1.0 => {
                let mut rng = input.rng.ok_or(GtaError::MissingRng(i))?;
                sparsify::random::<P>(d, input.density, opts.rescale, &mut rng);
            }
            Some(Sparsifier::Random) => {}
            Some(Sparsifier::MagnitudeOutliers) => {
                breadcrumbs::magnitude_outliers::<P>(d, input.density, input.gamma, opts.rescale)
            }
            Some(Sparsifier::DellaMagprune) if della::draws(input.density) => {
                let rng = input.rng.ok_or(GtaError::MissingRng(i))?;
                della::magprune::<P>(d, opts.rows, input.density, input.epsilon, opts.rescale, &rng)?;
            }
            Some(Sparsifier::DellaMagprune) => {
                della::magprune::<P>(
                    d,
                    opts.rows,
                    input.density,
                    input.epsilon,
                    opts.rescale,
                    &Mt19937::new(0),
                )?;
            }
        }
        deltas.push(d);
        weights.push(P::DTYPE.from_f64(input.weight));
    }
    // No-consensus divisor is one scalar.
    let plain_divisor = {
        let mut s = 0.0f32;
        for &w in &weights {
            s += w;
        }
        let s = P::rnd(s);
        if s.abs() < 1e-8 { 1.0 } else { s }
    };
    let lambda = opts.lambda as f32;
    let scale_lambda = opts.lambda != 1.0;
    let consensus = variant.consensus.is_some();
    let k = deltas.len();
    base.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, out)| {
        let s = ci * CHUNK;
        let n = out.len();
        // Weighted deltas D_m = rnd(delta_m * w_m), one row per model.
        let mut wd = vec![0.0f32; k * n];
        for (m, d) in deltas.iter().enumerate() {
            let w = weights[m];
            for (o, &x) in wd[m * n..(m + 1) * n].iter_mut().zip(&d[s..s + n]) {
                *o = P::rnd(x * w);
            }
        }
        let mut num = vec![0.0f32; n];
        let mut den = vec![0.0f32; n];
        if consensus {
            // Elected sign: sign of rnd(sum_m D_m), with 0 counting as +.
            let mut total = vec![0.0f32; n];
            for m in 0..k {
                for (t, &v) in total.iter_mut().zip(&wd[m * n..(m + 1) * n]) {
                    *t += v;
                }
            }
            for (t, _) in total.iter_mut().zip(0..n) {
                *t = if P::rnd(*t) >= 0.0 { 1.0 } else { -1.0 };
            }
            for m in 0..k {
                let w = weights[m];
                let row = &wd[m * n..(m + 1) * n];
                for e in 0..n {
                    let v = row[e];
                    let mk = agrees(v, total[e]);
                    num[e] += v * mk;
                    den[e] += w * mk;
                }
            }
            for e in 0..n {
                num[e] = P::rnd(num[e]);
                let d = P::rnd(den[e]);
                den[e] = if d == 0.0 { 1.0 } else { d };
            }
        } else {
            for m in 0..k {
                for (acc, &v) in num.iter_mut().zip(&wd[m * n..(m + 1) * n]) {
                    *acc += v;
                }
            }
            for e in 0..n {
                num[e] = P::rnd(num[e]);
                den[e] = plain_divisor;
            }
        }
        for e in 0..n {
            let mut mixed = num[e];
            if opts.normalize {
                mixed = P::rnd(mixed / den[e]);
            }
            if scale_lambda {
                mixed = P::rnd(mixed * lambda);
            }
            out[e] = P::rnd(out[e] + mixed);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::{Bf16, F32};

    const TA: GtaVariant = GtaVariant {
        consensus: None,
        sparsifier: None,
        default_normalize: false,
        default_rescale: false,
    };
    const TIES: GtaVariant = GtaVariant {
        consensus: Some(Consensus::Sum),
        sparsifier: Some(Sparsifier::Magnitude),
        default_normalize: true,
        default_rescale: false,
    };

    fn input(data: &[f32], weight: f64, density: f64) -> (Vec<f32>, f64, f64) {
        (data.to_vec(), weight, density)
    }

    fn run<P: Precision>(
        v: GtaVariant,
        o: GtaOptions,
        b: &[f32],
        mut inputs: Vec<(Vec<f32>, f64, f64)>,
    ) -> Result<Vec<f32>, GtaError> {
        let mut out = b.to_vec();
        let inputs = inputs
            .iter_mut()
            .map(|(data, weight, density)| GtaInput {
                data,
                weight: *weight,
                density: *density,
                gamma: 0.0,
                epsilon: 0.0,
                rng: None,
            })
            .collect();
        merge::<P>(v, o, &mut out, inputs)?;
        Ok(out)
    }

    #[test]
    fn task_arithmetic_adds_weighted_deltas() {
        let b = [1.0f32, 2.0];
        let x = [2.0f32, 2.5];
        let y = [0.0f32, 3.0];
        let opts = GtaOptions {
            normalize: false,
            rescale: false,
            lambda: 1.0,
            rows: crate::kernels::della::RankRows::of_shape(&[1]),
        };
        let out = run::<F32>(TA, opts, &b, vec![input(&x, 0.5, 1.0), input(&y, 1.0, 1.0)]).unwrap();
        assert_eq!(out, [1.0 + 0.5 - 1.0, 2.0 + 0.25 + 1.0]);
    }

    #[test]
    fn ties_drops_disagreeing_signs_and_normalizes_by_survivors() {
        let b = [0.0f32];
        let x = [1.0f32];
        let y = [-0.5f32];
        let opts = GtaOptions {
            normalize: true,
            rescale: false,
            lambda: 1.0,
            rows: crate::kernels::della::RankRows::of_shape(&[1]),
        };
        let out = run::<F32>(TIES, opts, &b, vec![input(&x, 1.0, 1.0), input(&y, 1.0, 1.0)]).unwrap();
        // elected sign +; only x survives; divided by its weight
        assert_eq!(out, [1.0]);
    }

    #[test]
    fn bf16_weights_are_rounded_before_use() {
        let b = [0.0f32];
        let x = [1.0f32];
        let opts = GtaOptions {
            normalize: false,
            rescale: false,
            lambda: 1.0,
            rows: crate::kernels::della::RankRows::of_shape(&[1]),
        };
        let out = run::<Bf16>(TA, opts, &b, vec![input(&x, 0.6, 1.0)]).unwrap();
        assert_eq!(out, [0.601_562_5]);
    }

    #[test]
    fn lambda_scales_and_no_inputs_returns_base() {
        let b = [1.0f32];
        let x = [3.0f32];
        let opts = GtaOptions {
            normalize: false,
            rescale: false,
            lambda: 0.5,
            rows: crate::kernels::della::RankRows::of_shape(&[1]),
        };
        let out = run::<F32>(TA, opts, &b, vec![input(&x, 1.0, 1.0)]).unwrap();
        assert_eq!(out, [2.0]);
        let out = run::<F32>(TA, opts, &b, vec![]).unwrap();
        assert_eq!(out, [1.0]);
    }

    #[test]
    fn random_sparsifier_requires_a_stream() {
        let v = GtaVariant {
            sparsifier: Some(Sparsifier::Random),
            ..TA
        };
        let opts = GtaOptions {
            normalize: false,
            rescale: true,
            lambda: 1.0,
            rows: crate::kernels::della::RankRows::of_shape(&[1]),
        };
        let err = run::<F32>(v, opts, &[0.0], vec![input(&[1.0], 1.0, 0.5)]);
        assert_eq!(err, Err(GtaError::MissingRng(0)));
    }
}
