//! `karcher` (semantics §4.5): the Karcher (Riemannian) mean of all inputs on the unit
//! hypersphere, with equal weights `alpha = 1/N`, scaled back by the mean norm.
//!
//! torch's operations, replayed in the working dtype `W` (norms in f32): with `n_i` torch's f32
//! norm of input `i` and `u_i = rnd(x_i / n_i)` (zero when `n_i = 0`), the inputs with
//! `n_i > tol` are valid, with `a_i = alpha / sum(valid alpha)` (f64).
//! * Start: `m = rnd(sum_i rnd(u_i * f32(a_i)))` accumulated in order; if its f32 norm is below
//!   `tol`, `m` is the first valid unit vector, else `m = rnd(m / |m|)`.
//! * Up to `max_iter` times: for every valid `i`, `d = clamp(rnd(dot(m, u_i)), -1, 1)`,
//!   `theta = rnd(acos d)`, skipped when `theta < tol`, else
//!   `T = rnd(T + rnd(c * rnd(u_i - rnd(d m))))` with `c = rnd(f32(a_i) * rnd(theta / rnd(sin theta)))`;
//!   stop when `|T| < tol`; else `m = rnd(rnd(rnd(cos|T|) m) + rnd(rnd(sin|T|) rnd(T / |T|)))`
//!   and `m = rnd(m / |m|)` when `|m| > tol`.
//! * Result `rnd(rnd(s) * m)` with `s = sum_i f32(alpha) n_i` (f32, over all inputs).
//!
//! In bf16 torch takes an f32 0-dim operand at full precision when it is the second operand
//! of `*` or `/` and rounds it to bf16 when it is the first (hence `rnd(cos|T|)`, `rnd(s)`).
//! f32 `acos`/`sin` are torch's ([`torch_acos_f32`], [`torch_sin_f32`]), `cos` f64's rounded
//! (within 1 ulp of MKL's). The f32 `dot` is MKL's `sdot` ([`sdot`], pinned against torch for every length residue);
//! the bf16 one is an f64 dot rounded to bf16. See `tests/golden/README.md` for what is exact.

use super::WorkDType;
use super::karcher_ops::{add_tangent_rnd, add_weighted_rnd, rotate_rnd, scale_rnd};
use super::precision::Precision;
use super::stream_ops::div_rnd;
use super::torch_norm::torch_vector_norm_f32;
use super::torch_trig::{torch_acos_f32, torch_sin_f32};
use rayon::prelude::*;

/// MKL's single-precision dot product as torch 2.15 calls it on this host (measured against
/// `torch.dot`, see `tests/golden/torch_sdot_vectors.py`): products rounded to f32 and added
/// into 4 accumulators of 4 lanes, one per vector of each block of 16 elements; 1 to 3 leftover
/// whole vectors go into accumulators 0, 1, 0 (an 8-element step, then a 4-element one); the
/// last `n mod 4` elements are added one after another into lane 0 of accumulator 0; then the
/// accumulators are added in order and the lanes as `(l0 + l2) + (l1 + l3)`. Fewer than 4
/// elements are added serially.
pub fn sdot(a: &[f32], b: &[f32]) -> f32 {
    if a.len() < 4 {
        return a.iter().zip(b).fold(0.0f32, |s, (&x, &y)| s + x * y);
    }
    let mut acc = [[0.0f32; 4]; 4];
    let blocks = a.len() / 16 * 16;
    for (x, y) in a[..blocks].chunks_exact(16).zip(b[..blocks].chunks_exact(16)) {
        for (j, lanes) in acc.iter_mut().enumerate() {
            for (l, v) in lanes.iter_mut().enumerate() {
                *v += x[4 * j + l] * y[4 * j + l];
            }
        }
    }
    let vectors = a.len() / 4 * 4;
    let leftover = a[blocks..vectors]
        .chunks_exact(4)
        .zip(b[blocks..vectors].chunks_exact(4));
    for ((x, y), j) in leftover.zip([0, 1, 0]) {
        for (l, v) in acc[j].iter_mut().enumerate() {
            *v += x[l] * y[l];
        }
    }
    for (&x, &y) in a[vectors..].iter().zip(&b[vectors..]) {
        acc[0][0] += x * y;
    }
    let mut v = acc[0];
    for lanes in &acc[1..] {
        for (v, &x) in v.iter_mut().zip(lanes) {
            *v += x;
        }
    }
    (v[0] + v[2]) + (v[1] + v[3])
}

fn dot<P: Precision>(a: &[f32], b: &[f32]) -> f32 {
    if P::DTYPE == WorkDType::F32 {
        sdot(a, b)
    } else {
        // The order chunk tasks replay (an f64 sum in element order).
        let mut d = super::karcher_stream::DotStream::new::<P>(a.len());
        d.feed(a, b);
        d.finish::<P>()
    }
}

pub(crate) fn acos<P: Precision>(x: f32) -> f32 {
    if P::DTYPE == WorkDType::F32 {
        torch_acos_f32(x)
    } else {
        P::rnd(f64::from(x).acos() as f32)
    }
}

pub(crate) fn sin<P: Precision>(x: f32) -> f32 {
    if P::DTYPE == WorkDType::F32 {
        torch_sin_f32(x)
    } else {
        P::rnd(f64::from(x).sin() as f32)
    }
}

/// `rnd(x / s)` for every element (an f32 0-dim divisor is used at full precision).
pub(crate) fn divide<P: Precision>(x: &mut [f32], s: f32) {
    x.par_chunks_mut(PIECE).for_each(|x| div_rnd::<P>(x, s));
}

/// Elements per parallel piece of the elementwise loops.
const PIECE: usize = 1 << 14;

/// The Karcher mean of `xs` (at least two inputs, in mergekit's order; the first is
/// overwritten with the result, the others with scratch).
pub fn merge<P: Precision>(xs: &mut [&mut [f32]], max_iter: i64, tol: f64) {
    let count = xs.len();
    let n = xs[0].len();
    let alpha = 1.0 / count as f64;
    let norms: Vec<f32> = xs.iter().map(|x| torch_vector_norm_f32(x)).collect();
    let valid: Vec<usize> = (0..count).filter(|&i| f64::from(norms[i]) > tol).collect();
    let scale = norms.iter().fold(0.0f32, |s, &nrm| s + alpha as f32 * nrm);
    if valid.is_empty() {
        xs[0].fill(0.0);
        return;
    }
    // Unit vectors, in place (invalid ones are never read again).
    for &i in &valid {
        divide::<P>(xs[i], norms[i]);
    }
    let alpha_sum = valid.iter().fold(0.0f64, |s, _| s + alpha);
    let weight = (alpha / alpha_sum) as f32;
    let units: Vec<&[f32]> = valid.iter().map(|&i| &xs[i][..]).collect();
    let mut mean = vec![0.0f32; n];
    for u in &units {
        mean.par_chunks_mut(PIECE)
            .zip(u.par_chunks(PIECE))
            .for_each(|(m, u)| add_weighted_rnd::<P>(m, u, weight));
    }
    let mean_norm = torch_vector_norm_f32(&mean);
    if f64::from(mean_norm) < tol {
        mean.copy_from_slice(units[0]);
    } else {
        divide::<P>(&mut mean, mean_norm);
    }
    let mut tangent = vec![0.0f32; n];
    for _ in 0..max_iter.max(0) {
        tangent.fill(0.0);
        for u in &units {
            let d = dot::<P>(&mean, u).clamp(-1.0, 1.0);
            let theta = acos::<P>(d);
            if f64::from(theta) < tol {
                continue;
            }
            let c = P::rnd(P::rnd(theta / sin::<P>(theta)) * weight);
            tangent
                .par_chunks_mut(PIECE)
                .zip(u.par_chunks(PIECE).zip(mean.par_chunks(PIECE)))
                .for_each(|(t, (u, m))| add_tangent_rnd::<P>(t, u, m, d, c));
        }
        let tn = torch_vector_norm_f32(&tangent);
        if f64::from(tn) < tol {
            break;
        }
        let (c, s) = (P::rnd(f64::from(tn).cos() as f32), P::rnd(torch_sin_f32(tn)));
        mean.par_chunks_mut(PIECE)
            .zip(tangent.par_chunks(PIECE))
            .for_each(|(m, t)| rotate_rnd::<P>(m, t, c, s, tn));
        let un = torch_vector_norm_f32(&mean);
        if f64::from(un) > tol {
            divide::<P>(&mut mean, un);
        }
    }
    let s = P::rnd(scale);
    xs[0]
        .par_chunks_mut(PIECE)
        .zip(mean.par_chunks(PIECE))
        .for_each(|(x, m)| {
            x.copy_from_slice(m);
            scale_rnd::<P>(x, s);
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::{Bf16, F32};
    use crate::kernels::test_vectors::mix;

    #[test]
    fn orthogonal_vectors_meet_on_the_sphere_at_their_mean_norm() {
        let mut a = vec![2.0f32, 0.0];
        let mut b = vec![0.0f32, 4.0];
        let mut xs: Vec<&mut [f32]> = vec![&mut a, &mut b];
        merge::<F32>(&mut xs, 10, 1e-5);
        let h = 3.0 * std::f32::consts::FRAC_1_SQRT_2;
        assert!((a[0] - h).abs() < 1e-5 && (a[1] - h).abs() < 1e-5, "{a:?}");
    }

    #[test]
    fn zero_iterations_give_the_normalized_euclidean_mean() {
        let mut a = vec![1.0f32, 0.0, 0.0];
        let mut b = vec![0.0f32, 3.0, 0.0];
        let mut c = vec![0.0f32; 3];
        let mut xs: Vec<&mut [f32]> = vec![&mut a, &mut b, &mut c];
        merge::<F32>(&mut xs, 0, 1e-5);
        // Valid: a and b (unit vectors e0, e1, weights 1/2); c's zero norm still counts in the
        // scale (4/3).
        let s = 1.0f32 / 3.0 + 1.0 / 3.0 * 3.0;
        let m = 0.5f32 / (0.5f32 * 0.5 + 0.5 * 0.5).sqrt();
        assert_eq!(a, [s * m, s * m, 0.0]);
    }

    #[test]
    fn all_zero_inputs_give_zeros() {
        let mut a = vec![0.0f32, -0.0];
        let mut b = vec![0.0f32, 0.0];
        let mut xs: Vec<&mut [f32]> = vec![&mut a, &mut b];
        merge::<Bf16>(&mut xs, 10, 1e-5);
        assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), [0, 0]);
    }

    /// `gen_a` (seed 1) and `gen_c` (seed 3) of torch_sum_vectors.py.
    fn vector(n: usize, seed: u64) -> Vec<f32> {
        let (shift, mask, bias) = if seed == 1 { (40, 15, 40) } else { (53, 7, 24) };
        (0..n)
            .map(|i| mix(seed, i))
            .map(|z| {
                let x = (z >> shift) as f32 * 2f32.powi(((z >> 8) & mask) as i32 - bias);
                if z & 1 == 1 { -x } else { x }
            })
            .collect()
    }

    /// torch 2.15.0's `torch.dot(gen_a(n), gen_c(n))` (f32 bits), printed by
    /// `tests/golden/torch_sdot_vectors.py`.
    #[rustfmt::skip]
    const SDOT: &[(usize, u32)] = &[
        (1, 0x38837139),
        (2, 0x38942707),
        (3, 0x3891c5b9),
        (4, 0x3891e6d4),
        (5, 0x3891e0ae),
        (6, 0x3890e85c),
        (7, 0x3828bdbe),
        (8, 0x382846be),
        (9, 0x39398985),
        (10, 0x393af297),
        (11, 0x38e56a16),
        (12, 0x38e1f7fd),
        (13, 0x3928e284),
        (14, 0x3928b4ee),
        (15, 0x3929f526),
        (16, 0x3927d29b),
        (17, 0x390e92ef),
        (18, 0x390ee95d),
        (19, 0x391673f3),
        (20, 0x39124b3a),
        (21, 0x391266e6),
        (22, 0x3912681e),
        (23, 0x393ce5be),
        (24, 0x393c8577),
        (25, 0x3925ad11),
        (26, 0x3925b7fb),
        (27, 0x3925b717),
        (28, 0x39260f3f),
        (29, 0x3942c7c1),
        (30, 0x395e9bad),
        (31, 0x395e9a03),
        (32, 0x395ce70d),
        (33, 0x3961b4af),
        (34, 0x3961cded),
        (35, 0x39638a2b),
        (36, 0x3a2bd7a0),
        (37, 0x3a2bd7a8),
        (38, 0x3a2bd3a6),
        (39, 0x3a2d103a),
        (40, 0x3a2d142e),
        (41, 0x3a246f02),
        (42, 0x3a2440fa),
        (43, 0x3a244652),
        (44, 0x3a9a0940),
        (45, 0x3a9a093c),
        (46, 0x3a925829),
        (47, 0x3a912efb),
        (48, 0x3a8e65dd),
        (49, 0x3a8e65cd),
        (61, 0x3a47e7d0),
        (62, 0x3a47e762),
        (63, 0xbb910b1e),
        (100, 0xbbb6ca72),
        (1021, 0xbc8e53c8),
        (1022, 0xbc8e5484),
        (1023, 0xbc8df510),
        (4099, 0xbcd9c7c6),
    ];

    #[test]
    fn sdot_matches_torch_for_every_length_residue() {
        for &(n, want) in SDOT {
            let got = sdot(&vector(n, 1), &vector(n, 3));
            assert_eq!(got.to_bits(), want, "n = {n}: {got} vs {}", f32::from_bits(want));
        }
    }

    #[test]
    fn sdot_adds_four_lanes_pairwise() {
        let a = [1.0f32, 1e8, 1.0, -1e8, 0.5];
        let b = [1.0f32; 5];
        // lanes: 1 + 0.5, 1e8, 1, -1e8 -> (1.5 + 1) + (1e8 - 1e8)
        assert_eq!(sdot(&a, &b), 2.5);
        // Two vectors of a 16-element block go to different accumulators, added before the
        // lanes: (1e8 + 1 - 1e8) in lane 0 loses the 1, lane sums 0 + 0 + 0 + 0.
        let mut a = [0.0f32; 16];
        a[0] = 1e8;
        a[4] = 1.0;
        a[8] = -1e8;
        assert_eq!(sdot(&a, &[1.0; 16]), 0.0);
        // Serial below 4 elements: (1e8 + 1) - 1e8 = 0 (lanes would give 1).
        assert_eq!(sdot(&[1e8, 1.0, -1e8], &[1.0; 3]), 0.0);
    }
}
