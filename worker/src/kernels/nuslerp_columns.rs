//! nuslerp with `nuslerp_row_wise` ([`super::nuslerp::Vectors::Columns`]: every column along dim 0 is a
//! vector) over ranges of whole rows, for chunk tasks: the same values as
//! [`super::nuslerp::merge`], bit for bit.
//!
//! torch reduces each column serially along dim 0, so a column's statistics are carried from
//! row range to row range: its two sums of squares (the norms, `s + x * x` unfused), then its
//! dot's cascade state (ATen's outer cascade for columns in full groups of
//! `OUTER_GROUP` (32), four interleaved cascades for the columns after them). Apply interpolates
//! each element with its column's cosine.

use super::nuslerp::{Coefficients, OUTER_GROUP};
use super::precision::Precision;
use super::torch_sum::ceil_log2;

/// Levels of ATen's outer cascade.
const LEVELS: usize = 4;
/// Floats of one column's dot state: four lanes of 4 cascade levels, three leftovers.
pub const DOT_STATE: usize = 4 * LEVELS + 3;

/// Adds element `p` (0-based) of a cascade over `len` elements to `acc`, in order.
#[inline]
fn cascade_push(acc: &mut [f32], p: usize, x: f32, len: usize) {
    let power = 4.max(ceil_log2(len) as usize / LEVELS);
    let step = 1usize << power;
    let mask = step - 1;
    acc[0] += x;
    let i = p + 1;
    if i <= len / step * step && i.is_multiple_of(step) {
        for j in 1..LEVELS {
            acc[j] += acc[j - 1];
            acc[j - 1] = 0.0;
            if i & (mask << (j * power)) != 0 {
                break;
            }
        }
    }
}

/// The cascade's value once every element was pushed.
fn cascade_finish(acc: &[f32]) -> f32 {
    let mut s = acc[0];
    for &a in &acc[1..LEVELS] {
        s += a;
    }
    s
}

/// A `[len, stride]` tensor's columns.
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    /// Rows (each column's length).
    pub len: usize,
    /// Columns (elements per row).
    pub stride: usize,
}

impl Columns {
    fn grouped(&self) -> usize {
        self.stride / OUTER_GROUP * OUTER_GROUP
    }

    /// Stage 1: adds whole rows of the task vectors `a` and `b` (row-major, a multiple of
    /// `stride` elements) to the columns' sums of squares (`sq`: `a`'s columns, then `b`'s).
    pub fn feed_squares(&self, a: &[f32], b: &[f32], sq: &mut [f32]) {
        let (sa, sb) = sq.split_at_mut(self.stride);
        for (ra, rb) in a.chunks_exact(self.stride).zip(b.chunks_exact(self.stride)) {
            for ((s, &x), (t, &y)) in sa.iter_mut().zip(ra).zip(sb.iter_mut().zip(rb)) {
                *s += x * x;
                *t += y * y;
            }
        }
    }

    /// The columns' norms from their sums of squares, rounded and floored as the kernel has them.
    pub fn norms<P: Precision>(&self, sq: &[f32]) -> Vec<f32> {
        let floor = P::rnd(1e-7);
        sq.iter().map(|&s| P::rnd(s.sqrt()).max(floor)).collect()
    }

    /// Stage 2: adds whole rows, the first being row `row0`, of `a` and `b` to the columns'
    /// dot states (`DOT_STATE` floats per column), given the norms.
    pub fn feed_dots<P: Precision>(&self, row0: usize, a: &[f32], b: &[f32], norms: &[f32], state: &mut [f32]) {
        let (n0, n1) = norms.split_at(self.stride);
        let grouped = self.grouped();
        let lane_len = self.len / 4;
        for (r, (ra, rb)) in a.chunks_exact(self.stride).zip(b.chunks_exact(self.stride)).enumerate() {
            let i = row0 + r;
            for (j, (&x, &y)) in ra.iter().zip(rb).enumerate() {
                let prod = P::rnd(P::rnd(x / n0[j]) * P::rnd(y / n1[j]));
                let s = &mut state[j * DOT_STATE..(j + 1) * DOT_STATE];
                if j < grouped {
                    cascade_push(&mut s[..LEVELS], i, prod, self.len);
                } else if i < 4 * lane_len {
                    let k = i % 4;
                    cascade_push(&mut s[k * LEVELS..(k + 1) * LEVELS], i / 4, prod, lane_len);
                } else {
                    s[4 * LEVELS + i - 4 * lane_len] = prod;
                }
            }
        }
    }

    /// The columns' clamped cosines from their finished dot states.
    pub fn cosines<P: Precision>(&self, state: &[f32]) -> Vec<f32> {
        let grouped = self.grouped();
        let left = self.len - self.len / 4 * 4;
        state
            .chunks_exact(DOT_STATE)
            .enumerate()
            .map(|(j, s)| {
                let v = if j < grouped {
                    cascade_finish(&s[..LEVELS])
                } else {
                    let mut acc = cascade_finish(&s[..LEVELS]);
                    for &x in &s[4 * LEVELS..4 * LEVELS + left] {
                        acc += x;
                    }
                    for k in 1..4 {
                        acc += cascade_finish(&s[k * LEVELS..(k + 1) * LEVELS]);
                    }
                    acc
                };
                P::rnd(v).clamp(-1.0, 1.0)
            })
            .collect()
    }

    /// Apply: interpolates whole rows of `a` with `b` (results into `a`) by the columns'
    /// cosines at `t`.
    pub fn apply<P: Precision>(&self, a: &mut [f32], b: &[f32], cosines: &[f32], t: f64) {
        let coefs: Vec<Coefficients> = cosines.iter().map(|&c| Coefficients::of::<P>(c, t)).collect();
        for (ra, rb) in a.chunks_exact_mut(self.stride).zip(b.chunks_exact(self.stride)) {
            for (j, c) in coefs.iter().enumerate() {
                c.apply::<P>(&mut ra[j..=j], &rb[j..=j]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::nuslerp::{Vectors, merge};
    use crate::kernels::precision::{Bf16, F32};

    fn values<P: Precision>(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        crate::kernels::stream_ops::test_values::<P>(n, seed, scale, None)
    }

    fn check<P: Precision>(len: usize, stride: usize, rows_per_link: usize) {
        let n = len * stride;
        let x0 = values::<P>(n, 3 + n as u64, 1.0);
        let x1 = values::<P>(n, 5 + n as u64, 1.0);
        let (mut want, mut w1) = (x0.clone(), x1.clone());
        merge::<P>(&mut want, &mut w1, None, 0.3, Vectors::Columns { len, stride });
        let c = Columns { len, stride };
        let links: Vec<std::ops::Range<usize>> = (0..len)
            .step_by(rows_per_link)
            .map(|r| r * stride..((r + rows_per_link).min(len)) * stride)
            .collect();
        let mut sq = vec![0.0f32; 2 * stride];
        for l in &links {
            c.feed_squares(&x0[l.clone()], &x1[l.clone()], &mut sq);
        }
        let norms = c.norms::<P>(&sq);
        let mut state = vec![0.0f32; DOT_STATE * stride];
        for l in &links {
            c.feed_dots::<P>(l.start / stride, &x0[l.clone()], &x1[l.clone()], &norms, &mut state);
        }
        let cos = c.cosines::<P>(&state);
        let mut got = x0.clone();
        for l in &links {
            c.apply::<P>(&mut got[l.clone()], &x1[l.clone()], &cos, 0.3);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&got) == bits(&want),
            "{:?} [{len}, {stride}] in links of {rows_per_link} rows",
            P::DTYPE
        );
    }

    #[test]
    fn columns_over_row_ranges_equal_the_whole_kernel() {
        // Full groups of 32 columns and a tail; lengths around the cascade's steps and the
        // interleaved lanes' leftovers.
        for (len, stride) in [(1, 40), (3, 33), (7, 70), (17, 64), (70, 35), (301, 37), (1030, 9)] {
            for rows in [1, 2, 5, len] {
                check::<F32>(len, stride, rows);
                check::<Bf16>(len, stride, rows);
            }
        }
    }
}
