//! The per-chunk loops of [`super::gta_stream`]: the draw step (delta, L1 norms, keep bits) and
//! the combine step (sparsified weighted deltas, sign election, normalisation).
//!
//! Every loop is a plain elementwise loop over cache-resident rows, so it vectorises, and is
//! compiled for the widest vector instructions the CPU has (see [`super::simd`]). Inputs are
//! read through [`Elems`]: f32 rows, or stored bf16 bytes widened in the loop itself, so that
//! reading the mapped input overlaps the arithmetic instead of being a pass of its own.

use super::precision::{Precision, WorkDType, round_bf16};
use super::simd::simd_dispatch;
use super::torch_sum_stream::TorchSumStream;
use crate::rng::bernoulli_keep;

/// Elements per block of the row-wise combination (a few L1-resident rows).
const BLOCK: usize = 1 << 12;

/// Rounding of the precision the mask and rescale run in (bf16 for bf16, else f32).
#[inline(always)]
pub(super) fn q_rnd<P: Precision>(x: f32) -> f32 {
    if P::DTYPE == WorkDType::Bf16 { round_bf16(x) } else { x }
}

/// Read access to a run of input elements (values in the working dtype).
pub(super) trait Elems: Copy + Sync {
    /// Element `i` (`i < len`).
    fn at(self, i: usize) -> f32;
    /// Elements `start .. start + len`.
    fn slice(self, start: usize, len: usize) -> Self;
}

impl Elems for &[f32] {
    #[inline(always)]
    fn at(self, i: usize) -> f32 {
        self[i]
    }
    #[inline(always)]
    fn slice(self, start: usize, len: usize) -> Self {
        &self[start..start + len]
    }
}

/// Little-endian bfloat16 elements, widened to f32 on access (a 16-bit shift, exact).
#[derive(Clone, Copy)]
pub(super) struct Bf16Le<'a>(pub &'a [[u8; 2]]);

impl Elems for Bf16Le<'_> {
    #[inline(always)]
    fn at(self, i: usize) -> f32 {
        super::precision::widen_bf16(self.0[i])
    }
    #[inline(always)]
    fn slice(self, start: usize, len: usize) -> Self {
        Bf16Le(&self.0[start..start + len])
    }
}

simd_dispatch! {
    /// One chunk of the draw step: `d = rnd(x - b)`, the L1 norm of `d` into `before`, keep
    /// bits from `words` into `bits` (bit `j % 8` of byte `j / 8` for element `j`), masked
    /// values into `d` and their L1 norm into `after`, for elements `start .. start + d.len()`
    /// of `b` and `x`.
    pub(super) fn draw_chunk<P: Precision, E: Elems>(
        b: E,
        x: E,
        start: usize,
        d: &mut [f32],
        words: &[u32],
        p: f32,
        bits: &mut [u8],
        before: &mut TorchSumStream,
        after: &mut TorchSumStream,
    ) => draw_chunk_impl
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn draw_chunk_impl<P: Precision, E: Elems>(
    b: E,
    x: E,
    start: usize,
    d: &mut [f32],
    words: &[u32],
    p: f32,
    bits: &mut [u8],
    before: &mut TorchSumStream,
    after: &mut TorchSumStream,
) {
    let (b, x) = (b.slice(start, d.len()), x.slice(start, d.len()));
    for (i, dv) in d.iter_mut().enumerate() {
        *dv = P::rnd(x.at(i) - b.at(i));
    }
    before.push(d, &f32::abs);
    let mask = |dv: &mut f32, w: u32| {
        let keep = bernoulli_keep(w, p);
        *dv = q_rnd::<P>(*dv * if keep { 1.0 } else { 0.0 });
        u8::from(keep)
    };
    let (dg, dr) = d.as_chunks_mut::<8>();
    let (wg, wr) = words.as_chunks::<8>();
    for ((d8, w8), o) in dg.iter_mut().zip(wg).zip(bits.iter_mut()) {
        let mut byte = 0u8;
        for l in 0..8 {
            byte |= mask(&mut d8[l], w8[l]) << l;
        }
        *o = byte;
    }
    if !dr.is_empty() {
        let mut byte = 0u8;
        for (l, (dv, &w)) in dr.iter_mut().zip(wr).enumerate() {
            byte |= mask(dv, w) << l;
        }
        bits[dg.len()] = byte;
    }
    after.push(d, &f32::abs);
}

simd_dispatch! {
    /// Keep bits only (no rescale, so no norms), laid out as in [`draw_chunk`].
    pub(super) fn draw_bits<>(words: &[u32], p: f32, bits: &mut [u8]) => draw_bits_impl
}

#[inline(always)]
fn draw_bits_impl(words: &[u32], p: f32, bits: &mut [u8]) {
    for (w8, o) in words.chunks(8).zip(bits.iter_mut()) {
        let mut byte = 0u8;
        for (l, &w) in w8.iter().enumerate() {
            byte |= u8::from(bernoulli_keep(w, p)) << l;
        }
        *o = byte;
    }
}

/// How one input enters the combine step.
pub(super) struct RowSpec<'a> {
    /// `rnd_W(weight)`.
    pub weight: f32,
    /// Keep bits from the chunk's first element on, as in [`draw_chunk`] (`None`: not
    /// sparsified).
    pub bits: Option<&'a [u8]>,
    /// Rescale factor, if the rescale applies.
    pub scale: Option<f32>,
    /// The sparsifier dropped the whole delta (`+0.0` everywhere, as a zero-filled tensor).
    pub zeros: bool,
}

/// The combination of weighted deltas, as in [`super::gta::merge`].
pub(super) struct Combine {
    /// `rnd_W(weight)` of every input.
    pub weights: Vec<f32>,
    /// Divisor without sign consensus.
    pub plain_divisor: f32,
    /// Divide by the (surviving) weight sum.
    pub normalize: bool,
    /// Final scale, when not 1.
    pub lambda: Option<f32>,
    /// TIES sign election.
    pub consensus: bool,
}

/// Scratch of one block of the combination.
pub(super) struct Block {
    /// Weighted deltas, one row of `BLOCK` per input.
    rows: Vec<f32>,
    total: Vec<f32>,
    num: Vec<f32>,
    den: Vec<f32>,
}

impl Block {
    /// Fresh scratch for `k` inputs.
    pub(super) fn new(k: usize) -> Self {
        Block {
            rows: vec![0.0; k * BLOCK],
            total: vec![0.0; BLOCK],
            num: vec![0.0; BLOCK],
            den: vec![0.0; BLOCK],
        }
    }
}

simd_dispatch! {
    /// One chunk of the combine step: `out = rnd(b + mixed)` for elements
    /// `start .. start + out.len()` of the base `b` and the inputs `xs`, block by block.
    pub(super) fn combine_chunk<P: Precision, E: Elems>(
        c: &Combine,
        specs: &[RowSpec<'_>],
        b: E,
        xs: &[E],
        start: usize,
        out: &mut [f32],
        t: &mut Block,
    ) => combine_chunk_impl
}

#[inline(always)]
fn combine_chunk_impl<P: Precision, E: Elems>(
    c: &Combine,
    specs: &[RowSpec<'_>],
    b: E,
    xs: &[E],
    start: usize,
    out: &mut [f32],
    t: &mut Block,
) {
    let b = b.slice(start, out.len());
    if specs.is_empty() {
        // No task vectors: the base unchanged, as `gta::merge`.
        for (i, o) in out.iter_mut().enumerate() {
            *o = b.at(i);
        }
        return;
    }
    let k = specs.len();
    for (bi, out) in out.chunks_mut(BLOCK).enumerate() {
        let (s, n) = (bi * BLOCK, out.len());
        let b = b.slice(s, n);
        for ((spec, &x), row) in specs.iter().zip(xs).zip(t.rows.chunks_mut(BLOCK)) {
            let (row, x) = (&mut row[..n], x.slice(start + s, n));
            match spec.bits {
                _ if spec.zeros => row.fill(P::rnd(0.0 * spec.weight)),
                None => {
                    for (i, r) in row.iter_mut().enumerate() {
                        *r = P::rnd(P::rnd(x.at(i) - b.at(i)) * spec.weight);
                    }
                }
                Some(bits) => weighted_sparse::<P, E>(row, x, b, &bits[s / 8..], spec.scale, spec.weight),
            }
        }
        match (c.normalize, c.lambda.is_some()) {
            (true, false) => mix_block::<P, E, true, false>(c, out, b, k, t),
            (true, true) => mix_block::<P, E, true, true>(c, out, b, k, t),
            (false, false) => mix_block::<P, E, false, false>(c, out, b, k, t),
            (false, true) => mix_block::<P, E, false, true>(c, out, b, k, t),
        }
    }
}

/// `row = rnd(sparse(rnd(x - b)) * w)` where `sparse` applies the keep bit and rescale in the
/// mask precision, then rounds to `P` (as `sparsify::random`).
#[inline(always)]
fn weighted_sparse<P: Precision, E: Elems>(row: &mut [f32], x: E, b: E, bits: &[u8], scale: Option<f32>, w: f32) {
    let (has_scale, s) = (scale.is_some(), scale.unwrap_or(1.0));
    let elem = |i: usize, keep: bool| {
        let d = P::rnd(x.at(i) - b.at(i));
        let mut v = q_rnd::<P>(d * if keep { 1.0 } else { 0.0 });
        let scaled = q_rnd::<P>(v * s);
        v = if has_scale { scaled } else { v };
        if P::DTYPE == WorkDType::F16 {
            v = P::rnd(v);
        }
        P::rnd(v * w)
    };
    let (rg, rr) = row.as_chunks_mut::<8>();
    for (g, (r8, &byte)) in rg.iter_mut().zip(bits).enumerate() {
        for (l, r) in r8.iter_mut().enumerate() {
            *r = elem(8 * g + l, byte & (1 << l) != 0);
        }
    }
    let g = rg.len();
    if let Some(&byte) = bits.get(g) {
        for (l, r) in rr.iter_mut().enumerate() {
            *r = elem(8 * g + l, byte & (1 << l) != 0);
        }
    }
}

/// `out[e] = rnd(b[e] + mixed[e])` from the block's weighted deltas in `t.rows`, in the order
/// of [`super::gta::merge`]: simple loops over the block, the last input's loop
/// also finishing the element. `N`: normalise; `L`: scale by `c.lambda`.
#[inline(always)]
fn mix_block<P: Precision, E: Elems, const N: bool, const L: bool>(
    c: &Combine,
    out: &mut [f32],
    b: E,
    k: usize,
    t: &mut Block,
) {
    let n = out.len();
    let Block { rows, total, num, den } = t;
    let row = |m: usize| &rows[m * BLOCK..m * BLOCK + n];
    let lambda = c.lambda.unwrap_or(1.0);
    let fin = |nu: f32, de: f32, bv: f32| {
        let mut mixed = nu;
        if N {
            mixed = P::rnd(mixed / de);
        }
        if L {
            mixed = P::rnd(mixed * lambda);
        }
        P::rnd(bv + mixed)
    };
    let (total, num, den) = (&mut total[..n], &mut num[..n], &mut den[..n]);
    // Sums start from 0.0 (`0.0 + x`, which turns -0.0 into +0.0) exactly as the zero-filled
    // accumulators of `gta::merge`.
    if !c.consensus {
        let d = c.plain_divisor;
        for m in 0..k {
            let r = row(m);
            match (m == 0, m + 1 == k) {
                (true, true) => {
                    for (i, (o, &v)) in out.iter_mut().zip(r).enumerate() {
                        *o = fin(P::rnd(0.0 + v), d, b.at(i));
                    }
                }
                (true, false) => num.iter_mut().zip(r).for_each(|(nu, &v)| *nu = 0.0 + v),
                (false, true) => {
                    for (i, ((o, &nu), &v)) in out.iter_mut().zip(num.iter()).zip(r).enumerate() {
                        *o = fin(P::rnd(nu + v), d, b.at(i));
                    }
                }
                (false, false) => num.iter_mut().zip(r).for_each(|(nu, &v)| *nu += v),
            }
        }
        return;
    }
    // Elected sign: sign of rnd(sum_m D_m), with 0 counting as +; a delta counts iff its sign
    // (0 for zero) equals it.
    let sign = |x: f32| if P::rnd(x) >= 0.0 { 1.0 } else { -1.0 };
    let keep = super::gta::agrees;
    let den_of = |de: f32| {
        let d = P::rnd(de);
        if d == 0.0 { 1.0 } else { d }
    };
    if k == 1 {
        let w = c.weights[0];
        for (i, (o, &v)) in out.iter_mut().zip(row(0)).enumerate() {
            let mk = keep(v, sign(0.0 + v));
            *o = fin(P::rnd(0.0 + v * mk), den_of(0.0 + w * mk), b.at(i));
        }
        return;
    }
    for m in 0..k {
        let r = row(m);
        match (m == 0, m + 1 == k) {
            (true, _) => total.iter_mut().zip(r).for_each(|(t, &v)| *t = 0.0 + v),
            (false, true) => total.iter_mut().zip(r).for_each(|(t, &v)| *t = sign(*t + v)),
            (false, false) => total.iter_mut().zip(r).for_each(|(t, &v)| *t += v),
        }
    }
    for (m, &w) in c.weights.iter().enumerate().take(k) {
        let acc = num.iter_mut().zip(den.iter_mut()).zip(row(m)).zip(total.iter());
        if m == 0 {
            acc.for_each(|(((nu, de), &v), &sign)| {
                let mk = keep(v, sign);
                *nu = 0.0 + v * mk;
                *de = 0.0 + w * mk;
            });
        } else if m + 1 < k {
            acc.for_each(|(((nu, de), &v), &sign)| {
                let mk = keep(v, sign);
                *nu += v * mk;
                *de += w * mk;
            });
        } else {
            for (i, (o, (((&nu, &de), &v), &sign))) in out
                .iter_mut()
                .zip(num.iter().zip(den.iter()).zip(row(m)).zip(total.iter()))
                .enumerate()
            {
                let mk = keep(v, sign);
                *o = fin(P::rnd(nu + v * mk), den_of(de + w * mk), b.at(i));
            }
        }
    }
}
