//! DELLA's `magprune` sparsifier (`della`, `della_linear`; semantics §4.7).
//!
//! Each element of a task vector is kept with a probability that grows with the rank of its
//! magnitude within its row, then the kept ones are (optionally) rescaled to the original L1
//! norm. Step by step, as mergekit 0.1.5 runs it on CPU, in the mask precision `Q` (bf16 for
//! bf16 deltas, else f32), rounding after every op:
//!
//! 1. rows: a tensor of rank < 2 is one row; otherwise ranking runs along **dim 1**;
//! 2. `r = rnd(rnd(rank0) + 1)`, `rank0` the 0-based ascending rank of `|delta|` in its row
//!    (ties: lowest index first; torch's unstable argsort breaks them arbitrarily);
//! 3. `rn = clamp(rnd(rnd(r - min r) / rnd(max r - min r)), 0, 1)`;
//! 4. `p = rnd(rnd_Q(density - epsilon) + rnd(rnd(rn * 2) * f32(epsilon)))` (torch adds a Python
//!    scalar to a bf16 tensor as a bf16 value, but multiplies by it in f32);
//! 5. one MT19937 word per element in row-major order, kept iff `u24 < p` (as DARE);
//! 6. `masked = delta * keep`, the L1 rescale of §4.7 in `Q`, then rounding back to `W`.
//!
//! `density >= 1` returns the delta unchanged and draws nothing; `density <= 0` gives zeros and
//! draws nothing; otherwise `density ± epsilon` must lie in `(0, 1)`.

use super::precision::{Bf16, F32, Precision};
use super::sparsify::rescale_l1;
use super::{WorkDType, sparsify};
use crate::rng::{Mt19937, bernoulli_keep};
use rayon::prelude::*;

/// How a tensor is cut into the rows DELLA ranks within: `outer` blocks of `len` ranked
/// positions, each position `inner` elements apart (dim 1 of `[outer, len, inner...]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankRows {
    /// Product of the dims before dim 1 (dim 0).
    pub outer: usize,
    /// Length of dim 1: the elements ranked together.
    pub len: usize,
    /// Product of the dims after dim 1.
    pub inner: usize,
}

impl RankRows {
    /// The rows of a tensor of `shape` (rank < 2: one row of every element).
    pub fn of_shape(shape: &[u64]) -> RankRows {
        let n: u64 = shape.iter().product();
        match shape {
            [_, len, rest @ ..] => RankRows {
                outer: shape[0] as usize,
                len: *len as usize,
                inner: rest.iter().product::<u64>() as usize,
            },
            _ => RankRows {
                outer: 1,
                len: n as usize,
                inner: 1,
            },
        }
    }

    fn numel(self) -> usize {
        self.outer * self.len * self.inner
    }
}

/// Why DELLA cannot sparsify a tensor.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum DellaError {
    /// `density ± epsilon` leaves `(0, 1)` (mergekit raises the same).
    #[error(
        "della: density {density} and epsilon {epsilon} must satisfy 0 < density - epsilon and density + epsilon < 1"
    )]
    Epsilon {
        /// Density.
        density: f64,
        /// Epsilon.
        epsilon: f64,
    },
    /// Rows of one element give `0/0` probabilities (torch's Bernoulli rejects them).
    #[error("della: dim 1 has a single element, so the rank probabilities are undefined")]
    SingleElementRows,
    /// The rows do not cover the tensor.
    #[error("della: {rows:?} does not cover {n} elements")]
    Shape {
        /// The rows.
        rows: RankRows,
        /// Element count of the delta.
        n: usize,
    },
}

/// True when `density ± epsilon` is inside `(0, 1)`, the condition mergekit checks once
/// `0 < density < 1`.
pub fn epsilon_ok(density: f64, epsilon: f64) -> bool {
    !(density + epsilon >= 1.0 || density - epsilon <= 0.0)
}

/// True when DELLA draws random words for an input of this density (`0 < density < 1`).
pub fn draws(density: f64) -> bool {
    density > 0.0 && density < 1.0
}

/// Sparsifies `delta` (values in `W = P`) in place. `rng` is positioned at this input's first
/// draw; it is used only when [`draws`] is true.
pub fn magprune<P: Precision>(
    delta: &mut [f32],
    rows: RankRows,
    density: f64,
    epsilon: f64,
    rescale: bool,
    rng: &Mt19937,
) -> Result<(), DellaError> {
    if density >= 1.0 {
        return Ok(());
    }
    if density <= 0.0 {
        delta.fill(0.0);
        return Ok(());
    }
    if !epsilon_ok(density, epsilon) {
        return Err(DellaError::Epsilon { density, epsilon });
    }
    if rows.numel() != delta.len() {
        return Err(DellaError::Shape { rows, n: delta.len() });
    }
    if rows.len == 1 {
        return Err(DellaError::SingleElementRows);
    }
    if P::DTYPE == WorkDType::Bf16 {
        magprune_in::<Bf16>(delta, rows, density, epsilon, rescale, rng);
    } else {
        magprune_in::<F32>(delta, rows, density, epsilon, rescale, rng);
        if P::DTYPE != WorkDType::F32 {
            delta.iter_mut().for_each(|d| *d = P::rnd(*d));
        }
    }
    Ok(())
}

/// Keep probabilities of every element, row-major, in precision `Q`.
pub fn probabilities<Q: Precision>(delta: &[f32], rows: RankRows, density: f64, epsilon: f64) -> Vec<f32> {
    let mut p = vec![0.0f32; delta.len()];
    // torch adds a Python scalar to a bf16 tensor as a bf16 value (it multiplies by one in f32).
    let base = Q::rnd((density - epsilon) as f32);
    let eps = epsilon as f32;
    // `max r - min r`: the largest rank, rounded like every rank, minus 1.
    let top = Q::rnd(Q::rnd(rows.len as f32 - 1.0) + 1.0);
    let span = Q::rnd(top - 1.0);
    // The probability depends on the rank alone: one table for every row.
    let of_rank: Vec<f32> = (0..rows.len)
        .map(|rank0| {
            let r = Q::rnd(Q::rnd(rank0 as f32) + 1.0);
            let rn = Q::rnd(Q::rnd(r - 1.0) / span).clamp(0.0, 1.0);
            let scaled = Q::rnd(Q::rnd(rn * 2.0) * eps);
            Q::rnd(base + scaled)
        })
        .collect();
    let block = rows.len * rows.inner;
    p.par_chunks_mut(block).zip(delta.par_chunks(block)).for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(keys, order, tmp), (pb, db)| {
            for i in 0..rows.inner {
                keys.clear();
                keys.extend((0..rows.len).map(|j| magnitude_key(db[j * rows.inner + i])));
                ascending_order(keys, order, tmp);
                for (&j, &p) in order.iter().zip(&of_rank) {
                    pb[j as usize * rows.inner + i] = p;
                }
            }
        },
    );
    p
}

/// A key whose unsigned order is the order of `|x|` under `f32::total_cmp` (for `|x|`, with
/// the sign cleared, that is the order of the bit patterns).
#[inline(always)]
fn magnitude_key(x: f32) -> u32 {
    x.to_bits() & 0x7FFF_FFFF
}

/// The indices of `keys` in ascending key order, equal keys lowest index first: an LSD radix
/// sort over the key bytes (stable, so ties keep index order), skipping bytes every key shares
/// (bf16 magnitudes have two zero low bytes).
fn ascending_order(keys: &[u32], order: &mut Vec<u32>, tmp: &mut Vec<u32>) {
    let n = keys.len();
    order.clear();
    order.extend(0..n as u32);
    tmp.resize(n, 0);
    for shift in [0u32, 8, 16, 24] {
        let mut count = [0usize; 256];
        for &k in keys {
            count[((k >> shift) & 0xFF) as usize] += 1;
        }
        if count.contains(&n) {
            continue;
        }
        let mut next = [0usize; 256];
        let mut sum = 0;
        for (nx, &c) in next.iter_mut().zip(&count) {
            *nx = sum;
            sum += c;
        }
        for &j in order.iter() {
            let d = ((keys[j as usize] >> shift) & 0xFF) as usize;
            tmp[next[d]] = j;
            next[d] += 1;
        }
        std::mem::swap(order, tmp);
    }
}

/// Words per independently drawn segment (later segments jump ahead to their position),
/// rounded down to whole ranking blocks.
const RNG_SEGMENT: usize = 1 << 22;

fn magprune_in<Q: Precision>(
    delta: &mut [f32],
    rows: RankRows,
    density: f64,
    epsilon: f64,
    rescale: bool,
    rng: &Mt19937,
) {
    let before = if rescale { sparsify::l1::<Q>(delta) } else { 0.0 };
    // Segments of whole ranking blocks: each ranks its own rows (so no whole-tensor table of
    // probabilities) and draws from its position in the stream.
    let block = rows.len * rows.inner;
    let segment = (RNG_SEGMENT / block).max(1) * block;
    delta.par_chunks_mut(segment).enumerate().for_each(|(si, d)| {
        let own = RankRows {
            outer: d.len() / block,
            ..rows
        };
        let p = probabilities::<Q>(d, own, density, epsilon);
        let mut r = rng.clone();
        if si > 0 {
            r.jump((si * segment) as u64);
        }
        let mut words = vec![0u32; 1 << 16];
        for (d, p) in d.chunks_mut(1 << 16).zip(p.chunks(1 << 16)) {
            let w = &mut words[..d.len()];
            r.fill_u32(w);
            for ((x, &pi), &word) in d.iter_mut().zip(p).zip(w.iter()) {
                let keep = if bernoulli_keep(word, pi) { 1.0 } else { 0.0 };
                *x = Q::rnd(*x * keep);
            }
        }
    });
    if rescale {
        rescale_l1::<Q>(delta, before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::{Bf16, F32};

    #[test]
    fn rows_follow_dim_one() {
        assert_eq!(
            RankRows::of_shape(&[5]),
            RankRows {
                outer: 1,
                len: 5,
                inner: 1
            }
        );
        assert_eq!(
            RankRows::of_shape(&[3, 4]),
            RankRows {
                outer: 3,
                len: 4,
                inner: 1
            }
        );
        assert_eq!(
            RankRows::of_shape(&[2, 3, 4, 5]),
            RankRows {
                outer: 2,
                len: 3,
                inner: 20
            }
        );
    }

    #[test]
    fn radix_order_is_the_stable_magnitude_order() {
        // Magnitudes with many ties (bf16-like and f32), signed zeros, infinities and NaN.
        let mut z = 0x1234_5678_9ABC_DEF0u64;
        let mut next = || {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            z
        };
        for n in [0usize, 1, 2, 300, 2048, 5000] {
            for bf16_like in [true, false] {
                let mut xs: Vec<f32> = (0..n)
                    .map(|_| {
                        let v = ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
                        if bf16_like {
                            crate::kernels::precision::round_bf16(v)
                        } else {
                            v
                        }
                    })
                    .collect();
                if n > 10 {
                    xs[3] = -0.0;
                    xs[4] = 0.0;
                    xs[5] = f32::INFINITY;
                    xs[6] = f32::NAN;
                    xs[7] = -xs[8];
                }
                let mut want: Vec<u32> = (0..n as u32).collect();
                want.sort_by(|&a, &b| xs[a as usize].abs().total_cmp(&xs[b as usize].abs()).then(a.cmp(&b)));
                let keys: Vec<u32> = xs.iter().map(|&x| magnitude_key(x)).collect();
                let (mut order, mut tmp) = (Vec::new(), Vec::new());
                ascending_order(&keys, &mut order, &mut tmp);
                assert_eq!(order, want, "n = {n}, bf16-like {bf16_like}");
            }
        }
    }

    #[test]
    fn probabilities_run_linearly_over_ranks_within_each_row() {
        // Row 0 ascending magnitudes at indices 2,0,1; row 1 at 1,2,0.
        let d = [0.5f32, -0.9, 0.1, 3.0, 0.2, -0.7];
        let rows = RankRows::of_shape(&[2, 3]);
        let p = probabilities::<F32>(&d, rows, 0.5, 0.25);
        assert_eq!(p, vec![0.5, 0.75, 0.25, 0.75, 0.25, 0.5]);
    }

    #[test]
    fn bf16_ranks_are_rounded() {
        // 600 elements: ranks above 256 round to bf16, so some probabilities repeat.
        let d: Vec<f32> = (0..600).map(|i| i as f32).collect();
        let p = probabilities::<Bf16>(&d, RankRows::of_shape(&[600]), 0.5, 0.1);
        let mut distinct = p.clone();
        distinct.dedup();
        assert!(distinct.len() < 600);
        assert_eq!(p[0], Bf16::rnd(0.4));
    }

    #[test]
    fn edges_draw_nothing_and_bad_epsilon_is_an_error() {
        let rng = Mt19937::new(1);
        let rows = RankRows::of_shape(&[4]);
        let mut d = vec![1.0f32, -2.0, 3.0, 4.0];
        magprune::<F32>(&mut d, rows, 1.0, 0.9, true, &rng).unwrap();
        assert_eq!(d, [1.0, -2.0, 3.0, 4.0]);
        magprune::<F32>(&mut d, rows, 0.0, 0.9, true, &rng).unwrap();
        assert_eq!(d, [0.0; 4]);
        let mut d = vec![1.0f32; 4];
        assert_eq!(
            magprune::<F32>(&mut d, rows, 0.5, 0.5, true, &rng),
            Err(DellaError::Epsilon {
                density: 0.5,
                epsilon: 0.5
            })
        );
        assert!(!epsilon_ok(0.9, 0.1) && epsilon_ok(0.5, 0.15) && !epsilon_ok(0.1, 0.1));
    }

    #[test]
    fn keeps_follow_the_words_and_rescale_restores_l1() {
        let d: Vec<f32> = (0..4096).map(|i| ((i * 37 % 101) as f32 - 50.5) / 64.0).collect();
        let rows = RankRows::of_shape(&[64, 64]);
        let rng = Mt19937::at_offset(5, 1000);
        let p = probabilities::<F32>(&d, rows, 0.4, 0.2);
        let mut words = vec![0u32; d.len()];
        rng.clone().fill_u32(&mut words);
        let mut plain = d.clone();
        magprune::<F32>(&mut plain, rows, 0.4, 0.2, false, &rng).unwrap();
        for i in 0..d.len() {
            let keep = bernoulli_keep(words[i], p[i]);
            assert_eq!(plain[i], if keep { d[i] } else { d[i] * 0.0 }, "element {i}");
        }
        let mut scaled = d.clone();
        magprune::<F32>(&mut scaled, rows, 0.4, 0.2, true, &rng).unwrap();
        let l1 = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
        assert!((l1(&scaled) - l1(&d)).abs() / l1(&d) < 1e-5);
    }

    #[test]
    fn segments_of_whole_rows_draw_the_one_sequential_stream() {
        // Three segments whose length (whole rows of 3001) is not RNG_SEGMENT.
        let rows = RankRows::of_shape(&[3000, 3001]);
        let n = 3000 * 3001;
        assert!(n > 2 * RNG_SEGMENT);
        let d: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 512.0).collect();
        let rng = Mt19937::at_offset(11, 77);
        let p = probabilities::<F32>(&d, rows, 0.5, 0.1);
        let mut words = vec![0u32; n];
        rng.clone().fill_u32(&mut words);
        let mut got = d.clone();
        magprune::<F32>(&mut got, rows, 0.5, 0.1, false, &rng).unwrap();
        for i in 0..n {
            let want = if bernoulli_keep(words[i], p[i]) {
                d[i]
            } else {
                d[i] * 0.0
            };
            assert_eq!(got[i].to_bits(), want.to_bits(), "element {i}");
        }
    }
}
