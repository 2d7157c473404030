//! torch's serial CPU summation order (see [`super::torch_sum`]) fed incrementally.
//!
//! A [`TorchSumStream`] consumes the elements of one of torch's independent parts
//! ([`super::torch_sum::torch_parts`]) in order, in pieces of any length, and returns exactly
//! the value the one-shot kernel returns for the whole part. Streaming lets a kernel sum values
//! while it produces them chunk by chunk, without keeping the whole tensor in memory.

use super::torch_sum::{Acc, Bf16Vec, F32Vec, ILP, LEVELS, Load, Scalar, V, add_row, ceil_log2, row_sum};

/// Which of torch's vector loads the summed tensor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumKind {
    /// A float32 tensor (8-element vectors).
    F32,
    /// A bfloat16 tensor (16 elements per vector, two halves added lane-wise).
    Bf16,
}

impl SumKind {
    /// The load torch uses to sum a tensor of working dtype `work` (f16 loads as bf16 does).
    pub fn of(work: super::WorkDType) -> SumKind {
        if work == super::WorkDType::F32 {
            SumKind::F32
        } else {
            SumKind::Bf16
        }
    }
}

/// Longest ILP row of any load kind (bf16: 4 vectors of 16 elements).
const MAX_ROW: usize = 64;

/// Incremental form of torch's serial `cascade_sum` over one part of known length.
pub struct TorchSumStream {
    kind: SumKind,
    total: usize,
    fed: usize,
    /// Whole ILP rows in the part, and how many have been added.
    rows: usize,
    rows_done: usize,
    power: u32,
    acc: [[V; ILP]; LEVELS],
    /// `f` already applied: a started row, or (after the last whole row) the trailing elements.
    rest: [f32; MAX_ROW],
    rest_len: usize,
}

impl TorchSumStream {
    /// A stream over a part of `total` elements of a tensor of kind `kind`.
    pub fn new(kind: SumKind, total: usize) -> Self {
        let rows = total / Self::row_len(kind);
        TorchSumStream {
            kind,
            total,
            fed: 0,
            rows,
            rows_done: 0,
            power: (ceil_log2(rows) / LEVELS as u32).max(4),
            acc: [[[0.0; 8]; ILP]; LEVELS],
            rest: [0.0; MAX_ROW],
            rest_len: 0,
        }
    }

    fn row_len(kind: SumKind) -> usize {
        match kind {
            SumKind::F32 => ILP * F32Vec::WIDTH,
            SumKind::Bf16 => ILP * Bf16Vec::WIDTH,
        }
    }

    /// Adds the next `xs.len()` elements of the part, as `f(x)`.
    ///
    /// # Panics
    /// If more than the part's `total` elements are pushed.
    #[inline(always)]
    pub fn push(&mut self, xs: &[f32], f: &impl Fn(f32) -> f32) {
        assert!(self.fed + xs.len() <= self.total, "pushed past the end of the part");
        self.fed += xs.len();
        match self.kind {
            SumKind::F32 => self.push_l::<F32Vec>(xs, f),
            SumKind::Bf16 => self.push_l::<Bf16Vec>(xs, f),
        }
    }

    #[inline(always)]
    fn stash(&mut self, xs: &[f32], f: &impl Fn(f32) -> f32) {
        for (r, &x) in self.rest[self.rest_len..].iter_mut().zip(xs) {
            *r = f(x);
        }
        self.rest_len += xs.len();
    }

    #[inline(always)]
    fn push_l<L: Load<A = V>>(&mut self, mut xs: &[f32], f: &impl Fn(f32) -> f32) {
        let row_len = ILP * L::WIDTH;
        if self.rows_done < self.rows && self.rest_len > 0 {
            let take = (row_len - self.rest_len).min(xs.len());
            self.stash(&xs[..take], f);
            xs = &xs[take..];
            if self.rest_len < row_len {
                return;
            }
            let row = self.rest;
            self.rest_len = 0;
            self.add_rows::<L>(&row[..row_len], &|x| x);
        }
        let whole = (xs.len() / row_len).min(self.rows - self.rows_done);
        self.add_rows::<L>(&xs[..whole * row_len], f);
        self.stash(&xs[whole * row_len..], f);
    }

    /// Adds whole rows, carrying up the cascade after every block of `2^power` rows exactly
    /// as `multi_row_sum` does.
    #[inline(always)]
    fn add_rows<L: Load<A = V>>(&mut self, data: &[f32], f: &impl Fn(f32) -> f32) {
        let row_len = ILP * L::WIDTH;
        let step = 1usize << self.power;
        let mask = step - 1;
        let mut rows = data.chunks_exact(row_len);
        let mut left = data.len() / row_len;
        while left > 0 {
            let take = (step - (self.rows_done & mask)).min(left);
            let mut a0 = self.acc[0];
            for row in rows.by_ref().take(take) {
                add_row::<L>(&mut a0, row, f);
            }
            self.acc[0] = a0;
            left -= take;
            self.rows_done += take;
            if self.rows_done & mask == 0 {
                let i = self.rows_done;
                for j in 1..LEVELS {
                    let (lower, upper) = self.acc.split_at_mut(j);
                    for (hi, lo) in upper[0].iter_mut().zip(&mut lower[j - 1]) {
                        *hi = hi.add(*lo);
                        *lo = V::ZERO;
                    }
                    if i & (mask << (j as u32 * self.power)) != 0 {
                        break;
                    }
                }
            }
        }
    }

    /// The serial kernel's value for the whole part (what the one-shot sum of this part
    /// returns before the parts are combined).
    ///
    /// # Panics
    /// If fewer than the part's `total` elements were pushed.
    pub fn finish(self) -> f32 {
        assert_eq!(self.fed, self.total, "part not fully pushed");
        match self.kind {
            SumKind::F32 => self.finish_l::<F32Vec>(),
            SumKind::Bf16 => self.finish_l::<Bf16Vec>(),
        }
    }

    fn finish_l<L: Load<A = V>>(self) -> f32 {
        let id = |x: f32| x;
        let tail = &self.rest[..self.rest_len];
        if self.total < L::WIDTH {
            return row_sum::<Scalar>(tail, &id);
        }
        let mut p = self.acc[0];
        for level in &self.acc[1..] {
            for (o, &l) in p.iter_mut().zip(level) {
                *o = o.add(l);
            }
        }
        let loads = tail.len() / L::WIDTH;
        for s in tail[..loads * L::WIDTH].chunks_exact(L::WIDTH) {
            p[0] = p[0].add(L::load(s, &id));
        }
        let lanes = p[1..].iter().fold(p[0], |a, &b| a.add(b));
        let scalar = tail[loads * L::WIDTH..].iter().fold(0.0f32, |a, &x| a + x);
        lanes.iter().fold(scalar, |a, &l| a + l)
    }
}

#[cfg(test)]
mod tests {
    use super::super::torch_sum::kernel;
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let m = (s >> 40) as f32 / 16_777_216.0 - 0.5;
                let e = ((s >> 20) & 15) as i32 - 8;
                // bf16-exact, so the same values serve both kinds.
                f32::from_bits((m * 2f32.powi(e)).to_bits() & 0xFFFF_0000)
            })
            .collect()
    }

    fn one_shot(kind: SumKind, xs: &[f32]) -> f32 {
        match kind {
            SumKind::F32 => kernel::<F32Vec>(xs, &f32::abs),
            SumKind::Bf16 => kernel::<Bf16Vec>(xs, &f32::abs),
        }
    }

    #[test]
    fn any_chunking_equals_the_one_shot_kernel() {
        let sizes = [
            0, 1, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 100, 1000, 1023, 4099, 70_001, 300_000,
        ];
        for kind in [SumKind::F32, SumKind::Bf16] {
            for &n in &sizes {
                let xs = values(n, n as u64 + 3);
                let want = one_shot(kind, &xs).to_bits();
                for chunk in [1, 3, 16, 64, 100, 4096, 16_384, usize::MAX] {
                    let mut s = TorchSumStream::new(kind, n);
                    for c in xs.chunks(chunk.min(n.max(1))) {
                        s.push(c, &f32::abs);
                    }
                    assert_eq!(s.finish().to_bits(), want, "{kind:?} n = {n} chunk = {chunk}");
                }
            }
        }
    }

    #[test]
    fn cascade_carries_match_at_large_sizes() {
        // 2^19 + a few rows: power switches from 4 to 5 above 2^19 rows per part.
        for kind in [SumKind::F32, SumKind::Bf16] {
            let n = (1 << 19) * TorchSumStream::row_len(kind) + 1234;
            let xs = values(n, 9);
            let mut s = TorchSumStream::new(kind, n);
            for c in xs.chunks(16_384) {
                s.push(c, &f32::abs);
            }
            assert_eq!(s.finish().to_bits(), one_shot(kind, &xs).to_bits(), "{kind:?}");
        }
    }
}
