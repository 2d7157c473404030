//! The elementwise loops of karcher ([`super::karcher`] whole, [`super::karcher_stream`] per
//! piece), each compiled for the widest vector instructions the CPU has (see
//! `kernels/simd.rs`). Every op rounds to the working precision `P` in the same order as the
//! scalar formula it replaces; only the instructions differ.

use super::precision::Precision;
use super::simd::simd_dispatch;

simd_dispatch! {
    /// `m[i] = rnd(m[i] + rnd(u[i] w))` (one unit vector's share of the weighted mean).
    pub(crate) fn add_weighted_rnd<P: Precision>(m: &mut [f32], u: &[f32], w: f32) => add_weighted_rnd_impl
}

#[inline(always)]
fn add_weighted_rnd_impl<P: Precision>(m: &mut [f32], u: &[f32], w: f32) {
    for (m, &u) in m.iter_mut().zip(u) {
        *m = P::rnd(*m + P::rnd(u * w));
    }
}

simd_dispatch! {
    /// `t[i] = rnd(t[i] + rnd(c rnd(u[i] - rnd(d m[i]))))` (one unit vector's share of the
    /// tangent at the mean `m`, `d` its cosine with the mean).
    pub(crate) fn add_tangent_rnd<P: Precision>(t: &mut [f32], u: &[f32], m: &[f32], d: f32, c: f32) => add_tangent_rnd_impl
}

#[inline(always)]
fn add_tangent_rnd_impl<P: Precision>(t: &mut [f32], u: &[f32], m: &[f32], d: f32, c: f32) {
    for ((t, &u), &m) in t.iter_mut().zip(u).zip(m) {
        *t = P::rnd(*t + P::rnd(c * P::rnd(u - P::rnd(d * m))));
    }
}

simd_dispatch! {
    /// `m[i] = rnd(rnd(c m[i]) + rnd(s rnd(t[i] / tn)))` (the mean moved along the tangent `t`
    /// of norm `tn`; `c`, `s` the rounded cosine and sine of `tn`).
    pub(crate) fn rotate_rnd<P: Precision>(m: &mut [f32], t: &[f32], c: f32, s: f32, tn: f32) => rotate_rnd_impl
}

#[inline(always)]
fn rotate_rnd_impl<P: Precision>(m: &mut [f32], t: &[f32], c: f32, s: f32, tn: f32) {
    for (m, &t) in m.iter_mut().zip(t) {
        *m = P::rnd(P::rnd(c * *m) + P::rnd(s * P::rnd(t / tn)));
    }
}

simd_dispatch! {
    /// `x[i] = rnd(s x[i])`.
    pub(crate) fn scale_rnd<P: Precision>(x: &mut [f32], s: f32) => scale_rnd_impl
}

#[inline(always)]
fn scale_rnd_impl<P: Precision>(x: &mut [f32], s: f32) {
    for x in x.iter_mut() {
        *x = P::rnd(s * *x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::{Bf16, F16, F32};
    use crate::kernels::test_vectors::mix;

    /// Values of every magnitude and sign, with some exact zeros.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| mix(seed, i))
            .map(|z| match z % 17 {
                0 => 0.0,
                _ => ((z >> 11) as f32 / (1u64 << 53) as f32 - 0.5) * 2f32.powi((z % 9) as i32 - 4),
            })
            .collect()
    }

    /// Every dispatched loop gives, bit for bit, its scalar formula (the one the kernels used
    /// before): the vector instructions may not change a rounding.
    fn same_as_scalar<P: Precision>() {
        let n = 1000;
        let (u, m0, t0) = (values(n, 1), values(n, 2), values(n, 3));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (w, d, c, s, tn) = (P::rnd(0.37), P::rnd(0.81), P::rnd(1.3), P::rnd(0.42), 0.77f32);

        let mut m = m0.clone();
        add_weighted_rnd::<P>(&mut m, &u, w);
        let want: Vec<f32> = m0.iter().zip(&u).map(|(&m, &u)| P::rnd(m + P::rnd(u * w))).collect();
        assert_eq!(bits(&m), bits(&want));

        let mut t = t0.clone();
        add_tangent_rnd::<P>(&mut t, &u, &m0, d, c);
        let want: Vec<f32> = (0..n)
            .map(|i| P::rnd(t0[i] + P::rnd(c * P::rnd(u[i] - P::rnd(d * m0[i])))))
            .collect();
        assert_eq!(bits(&t), bits(&want));

        let mut m = m0.clone();
        rotate_rnd::<P>(&mut m, &t0, c, s, tn);
        let want: Vec<f32> = (0..n)
            .map(|i| P::rnd(P::rnd(c * m0[i]) + P::rnd(s * P::rnd(t0[i] / tn))))
            .collect();
        assert_eq!(bits(&m), bits(&want));

        let mut x = m0.clone();
        scale_rnd::<P>(&mut x, s);
        let want: Vec<f32> = m0.iter().map(|&x| P::rnd(s * x)).collect();
        assert_eq!(bits(&x), bits(&want));
    }

    #[test]
    fn dispatched_loops_round_as_the_scalar_formulas() {
        same_as_scalar::<F32>();
        same_as_scalar::<Bf16>();
        same_as_scalar::<F16>();
    }
}
