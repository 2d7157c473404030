//! `nuslerp` (semantics §4.3): spherical interpolation of two task vectors (or two models when
//! there is no base), per vector, in the working dtype `W` with torch's per-op rounding.
//!
//! `t = w2 / (w1 + w2)` in f64 (0.5 when `|w1 + w2| < 1e-6`). The vectors are the whole
//! flattened tensor (`nuslerp_flatten`, default), its rows along the last dim, or, with
//! `nuslerp_row_wise`, its vectors along **dim 0** (the columns of a 2-D weight). Per vector:
//! `u_i = rnd(v_i / max(rnd(|v_i|), rnd(1e-7)))`, `c = clamp(rnd(sum rnd(u_1 u_2)), -1, 1)`,
//! collinear iff `rnd(1 - rnd(c^2)) == 0`, `theta = rnd(acos(collinear ? 0 : c))`, and the
//! result `rnd(rnd(rnd(sin((1-t) theta) v_1) + rnd(sin(t theta) v_2)) / rnd(sin theta))`, or
//! `rnd(rnd((1-t) v_1) + rnd(t v_2))` for collinear vectors; then `rnd(b + result)`.
//!
//! Reductions follow torch: along a contiguous run, the f32 norm of [`torch_vector_norm_f32`]
//! and the cascade sum (the two-thread split only for the flattened tensor, which is torch's one
//! full reduction); along dim 0 (strided), the serial unfused norm and, for the sum, ATen's
//! outer cascade for outputs in full groups of 32 and its 4-way interleaved `row_sum` for the
//! rest (established against torch 2.15 on [32, 48] and other shapes). `acos`/`sin` are torch's f32 (MKL) functions; for bf16 they are
//! rounded from f32 (torch computes bf16 trig in f32 too).

use super::precision::Precision;
use super::stream_ops::{combine_bf16_rnd, combine_rnd};
use super::torch_norm::{torch_norm_of_parts_batched_f32, torch_vector_norm_f32};
use super::torch_sum::{DEFAULT_THREADS, torch_sum_rounded};
use super::torch_trig::{torch_acos_f32, torch_sin_f32};
use rayon::prelude::*;

/// How the tensor is cut into the vectors that are interpolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vectors {
    /// The whole tensor is one vector.
    Flat,
    /// Contiguous rows of this length (the last dim).
    Rows(usize),
    /// Vectors along dim 0: `len` elements, `stride` apart (`stride` vectors).
    Columns {
        /// Length of dim 0.
        len: usize,
        /// Elements per index of dim 0.
        stride: usize,
    },
}

impl Vectors {
    /// The layout mergekit uses for a tensor of `shape`.
    pub fn of(shape: &[u64], flatten: bool, row_wise: bool) -> Vectors {
        let n: u64 = shape.iter().product();
        match shape {
            _ if flatten => Vectors::Flat,
            [] | [_] => Vectors::Rows(n as usize),
            [first, ..] if row_wise => Vectors::Columns {
                len: *first as usize,
                stride: (n / first.max(&1)) as usize,
            },
            [.., last] => Vectors::Rows(*last as usize),
        }
    }
}

/// `t` from the two weights, as mergekit computes it.
pub fn interpolation_t(w1: f64, w2: f64) -> f64 {
    let total = 0.0 + w1 + w2;
    if total.abs() < 1e-6 { 0.5 } else { w2 / total }
}

/// ATen's cascade over a reduced outer dim (`multi_row_sum` for one output), in f32.
pub(crate) fn outer_cascade(xs: &[f32]) -> f32 {
    const LEVELS: usize = 4;
    let power = 4.max(super::torch_sum::ceil_log2(xs.len()) as usize / LEVELS);
    let step = 1usize << power;
    let mask = step - 1;
    let mut acc = [0.0f32; LEVELS];
    let mut i = 0;
    while i + step <= xs.len() {
        for &x in &xs[i..i + step] {
            acc[0] += x;
        }
        i += step;
        for j in 1..LEVELS {
            acc[j] += acc[j - 1];
            acc[j - 1] = 0.0;
            if i & (mask << (j * power)) != 0 {
                break;
            }
        }
    }
    for &x in &xs[i..] {
        acc[0] += x;
    }
    for j in 1..LEVELS {
        acc[0] += acc[j];
    }
    acc[0]
}

/// ATen's `row_sum` over a strided run: 4 interleaved accumulators (elements `4m + k`), each
/// a cascade, the leftover elements added to the first, then the 4 added in order.
pub(crate) fn interleaved_cascade(xs: &[f32]) -> f32 {
    let m = xs.len() / 4;
    let lane = |k: usize| -> Vec<f32> { (0..m).map(|i| xs[4 * i + k]).collect() };
    let mut acc = outer_cascade(&lane(0));
    for &x in &xs[4 * m..] {
        acc += x;
    }
    for k in 1..4 {
        acc += outer_cascade(&lane(k));
    }
    acc
}

/// Outputs of a strided (outer) sum handled together in ATen's vectorized path: 4 vectors of
/// 8 f32 lanes; the outputs after the last full group are summed by `row_sum`.
pub(crate) const OUTER_GROUP: usize = 32;

pub(crate) struct Reduce {
    pub(crate) strided: bool,
    /// For a strided run: this output is past the last full [`OUTER_GROUP`].
    pub(crate) tail: bool,
    pub(crate) threads: usize,
}

/// A contiguous row of its own (no strided reduction, one thread).
pub(crate) const ROW: Reduce = Reduce {
    strided: false,
    tail: false,
    threads: 1,
};

/// How a pair of vectors is combined once their cosine is known.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Coefficients {
    /// `rnd(rnd(sf a) + rnd(tf b))`.
    Collinear { sf: f32, tf: f32 },
    /// `rnd(rnd(rnd(ca a) + rnd(cb b)) / sin_theta)`.
    Spherical { ca: f32, cb: f32, sin_theta: f32 },
}

impl Coefficients {
    /// The coefficients for cosine `c` (already clamped) at `t`.
    pub(crate) fn of<P: Precision>(c: f32, t: f64) -> Coefficients {
        let collinear = P::rnd(1.0 - P::rnd(c * c)) <= 1e-16;
        let (tf, sf) = (t as f32, (1.0 - t) as f32);
        if collinear {
            return Coefficients::Collinear { sf, tf };
        }
        let theta = P::rnd(torch_acos_f32(c));
        Coefficients::Spherical {
            sin_theta: P::rnd(torch_sin_f32(theta)),
            ca: P::rnd(torch_sin_f32(P::rnd(sf * theta))),
            cb: P::rnd(torch_sin_f32(P::rnd(tf * theta))),
        }
    }

    /// The wire form chunk tasks receive: `[0, sf, tf]` or `[1, sin_theta, ca, cb]`.
    pub(crate) fn to_floats(self) -> Vec<f32> {
        match self {
            Coefficients::Collinear { sf, tf } => vec![0.0, sf, tf],
            Coefficients::Spherical { ca, cb, sin_theta } => vec![1.0, sin_theta, ca, cb],
        }
    }

    /// The coefficients from [`Coefficients::to_floats`]; `None` for another shape.
    pub(crate) fn from_floats(v: &[f32]) -> Option<Coefficients> {
        match *v {
            [0.0, sf, tf] => Some(Coefficients::Collinear { sf, tf }),
            [1.0, sin_theta, ca, cb] => Some(Coefficients::Spherical { ca, cb, sin_theta }),
            _ => None,
        }
    }

    /// `a = combine(a, b)` elementwise.
    pub(crate) fn apply<P: Precision>(self, a: &mut [f32], b: &[f32]) {
        match self {
            Coefficients::Collinear { sf, tf } => combine_rnd::<P>(a, b, sf, tf, None),
            Coefficients::Spherical { ca, cb, sin_theta } => combine_rnd::<P>(a, b, ca, cb, Some(sin_theta)),
        }
    }

    /// [`Self::apply`] to stored bfloat16 vectors `a` and `b`, into `out`.
    pub(crate) fn apply_bf16<P: Precision>(self, out: &mut [f32], a: &[[u8; 2]], b: &[[u8; 2]]) {
        match self {
            Coefficients::Collinear { sf, tf } => combine_bf16_rnd::<P>(out, a, b, sf, tf, None),
            Coefficients::Spherical { ca, cb, sin_theta } => combine_bf16_rnd::<P>(out, a, b, ca, cb, Some(sin_theta)),
        }
    }
}

impl Reduce {
    fn norm<P: Precision>(&self, v: &[f32]) -> f32 {
        P::rnd(if self.strided {
            torch_norm_of_parts_batched_f32(v)
        } else {
            torch_vector_norm_f32(v)
        })
    }

    fn sum<P: Precision>(&self, v: &[f32]) -> f32 {
        P::rnd(if self.strided && self.tail {
            interleaved_cascade(v)
        } else if self.strided {
            outer_cascade(v)
        } else {
            torch_sum_rounded::<P>(v, |x| x, self.threads)
        })
    }
}

/// Interpolates one pair of vectors `v0`, `v1` (overwriting `v0` with the result).
pub(crate) fn slerp_vector<P: Precision>(v0: &mut [f32], v1: &[f32], t: f64, red: &Reduce) {
    let floor = P::rnd(1e-7);
    let n0 = red.norm::<P>(v0).max(floor);
    let n1 = red.norm::<P>(v1).max(floor);
    let prod: Vec<f32> = v0
        .iter()
        .zip(v1)
        .map(|(&a, &b)| P::rnd(P::rnd(a / n0) * P::rnd(b / n1)))
        .collect();
    let c = red.sum::<P>(&prod).clamp(-1.0, 1.0);
    Coefficients::of::<P>(c, t).apply::<P>(v0, v1);
}

/// Merges: `x0`, `x1` the two non-base inputs (config order; `x0` is overwritten with the
/// result), `base` the optional base.
pub fn merge<P: Precision>(x0: &mut [f32], x1: &mut [f32], base: Option<&[f32]>, t: f64, vectors: Vectors) {
    if let Some(b) = base {
        for x in [&mut *x0, &mut *x1] {
            x.par_iter_mut()
                .zip(b.par_iter())
                .for_each(|(x, &b)| *x = P::rnd(*x - b));
        }
    }
    let n = x0.len();
    match vectors {
        Vectors::Flat => slerp_vector::<P>(
            x0,
            x1,
            t,
            &Reduce {
                strided: false,
                tail: false,
                threads: DEFAULT_THREADS,
            },
        ),
        Vectors::Rows(len) => {
            let red = Reduce {
                strided: false,
                tail: false,
                threads: 1,
            };
            x0.par_chunks_mut(len.max(1))
                .zip(x1.par_chunks(len.max(1)))
                .for_each(|(a, b)| slerp_vector::<P>(a, b, t, &red));
        }
        Vectors::Columns { len, stride } => {
            let grouped = stride / OUTER_GROUP * OUTER_GROUP;
            let cols: Vec<(usize, Vec<f32>)> = (0..stride)
                .into_par_iter()
                .map(|j| {
                    let red = Reduce {
                        strided: true,
                        tail: j >= grouped,
                        threads: 1,
                    };
                    let mut a: Vec<f32> = (0..len).map(|i| x0[i * stride + j]).collect();
                    let b: Vec<f32> = (0..len).map(|i| x1[i * stride + j]).collect();
                    slerp_vector::<P>(&mut a, &b, t, &red);
                    (j, a)
                })
                .collect();
            for (j, col) in cols {
                for (i, v) in col.into_iter().enumerate() {
                    x0[i * stride + j] = v;
                }
            }
        }
    }
    if let Some(b) = base {
        x0[..n]
            .par_iter_mut()
            .zip(b.par_iter())
            .for_each(|(x, &b)| *x = P::rnd(b + *x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::F32;

    #[test]
    fn layouts_follow_mergekit() {
        assert_eq!(Vectors::of(&[4, 6], true, true), Vectors::Flat);
        assert_eq!(Vectors::of(&[4, 6], false, false), Vectors::Rows(6));
        assert_eq!(
            Vectors::of(&[4, 6], false, true),
            Vectors::Columns { len: 4, stride: 6 }
        );
        assert_eq!(Vectors::of(&[5], false, true), Vectors::Rows(5));
        assert_eq!(interpolation_t(1.0, 3.0), 0.75);
        assert_eq!(interpolation_t(1.0, -1.0), 0.5);
    }

    #[test]
    fn orthogonal_halfway_and_collinear_lerp() {
        let mut a = vec![1.0f32, 0.0];
        let mut b = vec![0.0f32, 1.0];
        merge::<F32>(&mut a, &mut b, None, 0.5, Vectors::Flat);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((a[0] - h).abs() < 1e-6 && (a[1] - h).abs() < 1e-6, "{a:?}");
        let mut a = vec![1.0f32, 2.0];
        let mut b = vec![2.0f32, 4.0];
        merge::<F32>(&mut a, &mut b, None, 0.25, Vectors::Flat);
        assert_eq!(a, [1.25, 2.5]);
    }

    #[test]
    fn outer_cascade_adds_blocks_of_sixteen() {
        let xs: Vec<f32> = (0..40).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let blocks = xs[..16].iter().sum::<f32>() + xs[16..32].iter().sum::<f32>();
        let want = xs[32..].iter().fold(0.0f32, |s, &x| s + x) + blocks;
        let mut acc0 = 0.0f32;
        for &x in &xs[32..] {
            acc0 += x;
        }
        assert_eq!(outer_cascade(&xs), acc0 + blocks);
        assert!((outer_cascade(&xs) - want).abs() < 1e-4);
    }
}
