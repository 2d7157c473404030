//! Elementwise loops of the streamed whole-tensor methods ([`super::model_stock_stream`],
//! [`super::nuslerp_stream`]), each compiled for the widest vector instructions the CPU has
//! (see `kernels/simd.rs`), plus the norm and sum streams fed from such code. Every op rounds to
//! the working precision `P` exactly as the whole kernels do; only the instructions differ.

use super::gta_stream::{ChunkSource, Sink};
use super::precision::{Precision, widen_bf16 as widen};
use super::simd::simd_dispatch;
use super::torch_norm::NormStream;
use super::torch_sum_stream::TorchSumStream;

simd_dispatch! {
    /// `x[i] = rnd(x[i] - b[i])` (a task vector from a model and the base).
    pub(crate) fn sub_rnd<P: Precision>(x: &mut [f32], b: &[f32]) => sub_rnd_impl
}

#[inline(always)]
fn sub_rnd_impl<P: Precision>(x: &mut [f32], b: &[f32]) {
    for (x, &b) in x.iter_mut().zip(b) {
        *x = P::rnd(*x - b);
    }
}

simd_dispatch! {
    /// `d[i] = rnd(x[i] - b[i])` from stored bfloat16 elements: [`sub_rnd`] without decoding
    /// the inputs into buffers first.
    pub(crate) fn sub_bf16_rnd<P: Precision>(d: &mut [f32], x: &[[u8; 2]], b: &[[u8; 2]]) => sub_bf16_rnd_impl
}

#[inline(always)]
fn sub_bf16_rnd_impl<P: Precision>(d: &mut [f32], x: &[[u8; 2]], b: &[[u8; 2]]) {
    for ((d, &x), &b) in d.iter_mut().zip(x).zip(b) {
        *d = P::rnd(widen(x) - widen(b));
    }
}

simd_dispatch! {
    /// `x[i] = rnd(b[i] + x[i])` (a result added back to the base).
    pub(crate) fn add_base_rnd<P: Precision>(x: &mut [f32], b: &[f32]) => add_base_rnd_impl
}

#[inline(always)]
fn add_base_rnd_impl<P: Precision>(x: &mut [f32], b: &[f32]) {
    for (x, &b) in x.iter_mut().zip(b) {
        *x = P::rnd(b + *x);
    }
}

simd_dispatch! {
    /// `a[i] = rnd(a[i] + x[i])` (a running sum, left to right).
    pub(crate) fn add_rnd<P: Precision>(a: &mut [f32], x: &[f32]) => add_rnd_impl
}

#[inline(always)]
fn add_rnd_impl<P: Precision>(a: &mut [f32], x: &[f32]) {
    for (a, &x) in a.iter_mut().zip(x) {
        *a = P::rnd(*a + x);
    }
}

simd_dispatch! {
    /// `a[i] = rnd(a[i] / d)`.
    pub(crate) fn div_rnd<P: Precision>(a: &mut [f32], d: f32) => div_rnd_impl
}

#[inline(always)]
fn div_rnd_impl<P: Precision>(a: &mut [f32], d: f32) {
    for a in a.iter_mut() {
        *a = P::rnd(*a / d);
    }
}

simd_dispatch! {
    /// `out[i] = rnd(a[i] * b[i])`.
    pub(crate) fn mul_rnd<P: Precision>(out: &mut [f32], a: &[f32], b: &[f32]) => mul_rnd_impl
}

#[inline(always)]
fn mul_rnd_impl<P: Precision>(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = P::rnd(a * b);
    }
}

simd_dispatch! {
    /// `a[i] = rnd(rnd(a[i] / na) * rnd(b[i] / nb))` (the products of normalised vectors).
    pub(crate) fn normalized_products_rnd<P: Precision>(a: &mut [f32], b: &[f32], na: f32, nb: f32) => normalized_products_rnd_impl
}

#[inline(always)]
fn normalized_products_rnd_impl<P: Precision>(a: &mut [f32], b: &[f32], na: f32, nb: f32) {
    for (a, &b) in a.iter_mut().zip(b) {
        *a = P::rnd(P::rnd(*a / na) * P::rnd(b / nb));
    }
}

simd_dispatch! {
    /// [`normalized_products_rnd`] from stored bfloat16 elements, into `out`.
    pub(crate) fn normalized_products_bf16_rnd<P: Precision>(out: &mut [f32], a: &[[u8; 2]], b: &[[u8; 2]], na: f32, nb: f32) => normalized_products_bf16_rnd_impl
}

#[inline(always)]
fn normalized_products_bf16_rnd_impl<P: Precision>(out: &mut [f32], a: &[[u8; 2]], b: &[[u8; 2]], na: f32, nb: f32) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = P::rnd(P::rnd(widen(a) / na) * P::rnd(widen(b) / nb));
    }
}

simd_dispatch! {
    /// `w[i] = rnd(rnd(t * avg[i]) + rnd(keep * w[i]))` (Model Stock's interpolation).
    pub(crate) fn lerp_rnd<P: Precision>(w: &mut [f32], avg: &[f32], t: f32, keep: f32) => lerp_rnd_impl
}

#[inline(always)]
fn lerp_rnd_impl<P: Precision>(w: &mut [f32], avg: &[f32], t: f32, keep: f32) {
    for (w, &a) in w.iter_mut().zip(avg) {
        *w = P::rnd(P::rnd(t * a) + P::rnd(keep * *w));
    }
}

simd_dispatch! {
    /// `w[i] = rnd(rnd(t * avg) + rnd(keep * w[i]))` with `avg = rnd(rnd(a[i] + b[i]) / 2)`:
    /// Model Stock's average of two models and its interpolation in one loop, the same
    /// roundings as `add_rnd`, `div_rnd` and [`lerp_rnd`] one after the other.
    pub(crate) fn lerp_pair_rnd<P: Precision>(w: &mut [f32], a: &[f32], b: &[f32], t: f32, keep: f32) => lerp_pair_rnd_impl
}

#[inline(always)]
fn lerp_pair_rnd_impl<P: Precision>(w: &mut [f32], a: &[f32], b: &[f32], t: f32, keep: f32) {
    for ((w, &a), &b) in w.iter_mut().zip(a).zip(b) {
        let avg = P::rnd(P::rnd(a + b) / 2.0);
        *w = P::rnd(P::rnd(t * avg) + P::rnd(keep * *w));
    }
}

simd_dispatch! {
    /// [`lerp_pair_rnd`] from stored bfloat16 elements: `out[i]` is the interpolation of the
    /// base `w[i]` towards the average of `a[i]` and `b[i]`, with the same roundings, without
    /// decoding the inputs into buffers first.
    pub(crate) fn lerp_pair_bf16_rnd<P: Precision>(out: &mut [f32], w: &[[u8; 2]], a: &[[u8; 2]], b: &[[u8; 2]], t: f32, keep: f32) => lerp_pair_bf16_rnd_impl
}

#[inline(always)]
fn lerp_pair_bf16_rnd_impl<P: Precision>(
    out: &mut [f32],
    w: &[[u8; 2]],
    a: &[[u8; 2]],
    b: &[[u8; 2]],
    t: f32,
    keep: f32,
) {
    for (((o, &w), &a), &b) in out.iter_mut().zip(w).zip(a).zip(b) {
        let avg = P::rnd(P::rnd(widen(a) + widen(b)) / 2.0);
        *o = P::rnd(P::rnd(t * avg) + P::rnd(keep * widen(w)));
    }
}

simd_dispatch! {
    /// `a[i] = rnd(rnd(sa * a[i]) + rnd(sb * b[i]))`, then `/ div` rounded when `div` is set
    /// (nuslerp's spherical or collinear combination).
    pub(crate) fn combine_rnd<P: Precision>(a: &mut [f32], b: &[f32], sa: f32, sb: f32, div: Option<f32>) => combine_rnd_impl
}

#[inline(always)]
fn combine_rnd_impl<P: Precision>(a: &mut [f32], b: &[f32], sa: f32, sb: f32, div: Option<f32>) {
    match div {
        Some(d) => {
            for (a, &b) in a.iter_mut().zip(b) {
                *a = P::rnd(P::rnd(P::rnd(sa * *a) + P::rnd(sb * b)) / d);
            }
        }
        None => {
            for (a, &b) in a.iter_mut().zip(b) {
                *a = P::rnd(P::rnd(sa * *a) + P::rnd(sb * b));
            }
        }
    }
}

simd_dispatch! {
    /// [`combine_rnd`] from stored bfloat16 elements, into `out`.
    pub(crate) fn combine_bf16_rnd<P: Precision>(out: &mut [f32], a: &[[u8; 2]], b: &[[u8; 2]], sa: f32, sb: f32, div: Option<f32>) => combine_bf16_rnd_impl
}

#[inline(always)]
fn combine_bf16_rnd_impl<P: Precision>(
    out: &mut [f32],
    a: &[[u8; 2]],
    b: &[[u8; 2]],
    sa: f32,
    sb: f32,
    div: Option<f32>,
) {
    let pairs = out.iter_mut().zip(a).zip(b);
    match div {
        Some(d) => {
            for ((o, &a), &b) in pairs {
                *o = P::rnd(P::rnd(P::rnd(sa * widen(a)) + P::rnd(sb * widen(b))) / d);
            }
        }
        None => {
            for ((o, &a), &b) in pairs {
                *o = P::rnd(P::rnd(sa * widen(a)) + P::rnd(sb * widen(b)));
            }
        }
    }
}

/// Stored little-endian bfloat16 elements.
pub(crate) type Bf16Elems<'a> = &'a [[u8; 2]];

/// Elements `range` of `src` as stored bfloat16, when they are exactly its working-dtype
/// values (see [`ChunkSource::bf16_bytes`]).
pub(crate) fn stored_bf16<'a, E>(src: &'a dyn ChunkSource<E>, range: &std::ops::Range<usize>) -> Option<Bf16Elems<'a>> {
    let bytes = src.bf16_bytes()?.get(range.start * 2..range.end * 2)?;
    Some(bytes.as_chunks::<2>().0)
}

simd_dispatch! {
    /// Feeds stored bfloat16 elements `xs` to a norm stream (widened inside its loop).
    pub(crate) fn feed_norm_bf16<>(s: &mut NormStream, xs: &[[u8; 2]]) => feed_norm_bf16_impl
}

#[inline(always)]
fn feed_norm_bf16_impl(s: &mut NormStream, xs: &[[u8; 2]]) {
    s.feed_as(xs, widen);
}

simd_dispatch! {
    /// Feeds `xs` to a norm stream.
    pub(crate) fn feed_norm<>(s: &mut NormStream, xs: &[f32]) => feed_norm_impl
}

#[inline(always)]
fn feed_norm_impl(s: &mut NormStream, xs: &[f32]) {
    s.feed(xs);
}

simd_dispatch! {
    /// Feeds `xs` (as they are) to a sum stream.
    pub(crate) fn push_sum<>(s: &mut TorchSumStream, xs: &[f32]) => push_sum_impl
}

#[inline(always)]
fn push_sum_impl(s: &mut TorchSumStream, xs: &[f32]) {
    s.push(xs, &|x| x);
}

/// Hands `values` (element `start` onwards) to `sink` in pieces of at most `piece` elements.
pub(crate) fn emit<E>(sink: &Sink<'_, E>, start: usize, values: &[f32], piece: usize) -> Result<(), E> {
    for (i, p) in values.chunks(piece).enumerate() {
        sink(start + i * piece, p)?;
    }
    Ok(())
}

/// Test values of the streamed kernels: `rnd(around[i] + v)` with `v` uniform in
/// `[-scale / 2, scale / 2)` (xorshift from `seed`), exact in `P`.
#[cfg(test)]
pub(crate) fn test_values<P: Precision>(n: usize, seed: u64, scale: f32, around: Option<&[f32]>) -> Vec<f32> {
    let mut z = seed | 1;
    (0..n)
        .map(|i| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            let v = ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale;
            P::rnd(around.map_or(0.0, |a| a[i]) + v)
        })
        .collect()
}

/// A chunk-relative view (from element `.1`) of a tensor in memory (tests of chunk kernels).
#[cfg(test)]
pub(crate) struct SliceSource<'a>(pub &'a [f32], pub usize);

#[cfg(test)]
impl super::gta_stream::ChunkSource<String> for SliceSource<'_> {
    fn read(&self, start: usize, out: &mut [f32]) -> Result<(), String> {
        let v = self
            .0
            .get(self.1 + start..self.1 + start + out.len())
            .ok_or("out of range")?;
        out.copy_from_slice(v);
        Ok(())
    }
}

/// A tensor held in memory as a [`super::gta_stream::ChunkSource`] (tests of the streamed
/// kernels).
#[cfg(test)]
pub(crate) struct VecSource(pub Vec<f32>);

#[cfg(test)]
impl super::gta_stream::ChunkSource<String> for VecSource {
    fn read(&self, start: usize, out: &mut [f32]) -> Result<(), String> {
        let v = self.0.get(start..start + out.len()).ok_or("out of range")?;
        out.copy_from_slice(v);
        Ok(())
    }
}

/// A bf16-exact tensor that also offers its stored bfloat16 bytes (tests of the streamed
/// kernels' paths that widen stored elements themselves); counts the [`read`] calls, which
/// those paths avoid.
///
/// [`read`]: super::gta_stream::ChunkSource::read
#[cfg(test)]
pub(crate) struct StoredBf16 {
    values: Vec<f32>,
    raw: Vec<u8>,
    pub(crate) reads: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl StoredBf16 {
    pub(crate) fn new(values: Vec<f32>) -> Self {
        assert!(
            values.iter().all(|v| v.to_bits() & 0xffff == 0),
            "values must be bf16-exact"
        );
        let raw = values
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        StoredBf16 {
            values,
            raw,
            reads: Default::default(),
        }
    }
}

#[cfg(test)]
impl super::gta_stream::ChunkSource<String> for StoredBf16 {
    fn read(&self, start: usize, out: &mut [f32]) -> Result<(), String> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        VecSource(
            self.values
                .get(start..start + out.len())
                .ok_or("out of range")?
                .to_vec(),
        )
        .read(0, out)
    }

    fn bf16_bytes(&self) -> Option<&[u8]> {
        Some(&self.raw)
    }
}
