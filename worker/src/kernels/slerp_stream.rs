//! Streaming form of [`super::slerp`]: the same values, bit for bit, read from the inputs chunk
//! by chunk in three passes (norms, dot product, interpolation) instead of decoding both whole
//! tensors into memory first.
//!
//! torch reduces in chunks of 2^20 elements (see [`super::slerp`]), so the norm and dot passes
//! decode one such chunk of each input at a time into a pooled scratch buffer, and the
//! interpolation pass hands each finished piece to a sink. Memory is a few chunks per thread,
//! whatever the tensor size.

use super::gta_stream::{ChunkSource, Sink};
use super::precision::Precision;
use super::simd::simd_dispatch;
use super::slerp::{TORCH_CHUNK, coefficients_from, norm_from_parts};
use super::torch_norm::torch_vector_norm_f32;
use super::torch_sum::torch_sum_f32;
use crate::buffers::{Buffer, BufferPool};
use rayon::prelude::*;

/// Elements per piece handed to the sink.
pub const OUT_CHUNK: usize = 1 << 16;

/// Scratch for two input chunks: a pooled buffer (repeated tasks reuse memory that is
/// already mapped), or a plain vector if the pool cannot allocate.
enum Scratch {
    Pooled(Buffer),
    Plain(Vec<f32>),
}

impl Scratch {
    /// Room for two chunks of up to `cap` elements.
    fn new(cap: usize) -> Self {
        match BufferPool::global().take(2 * cap) {
            Ok(b) => Scratch::Pooled(b),
            Err(_) => Scratch::Plain(vec![0.0; 2 * cap]),
        }
    }

    /// Two disjoint rows of `len` elements.
    fn pair(&mut self, len: usize) -> (&mut [f32], &mut [f32]) {
        let all: &mut [f32] = match self {
            Scratch::Pooled(b) => &mut b[..],
            Scratch::Plain(v) => v,
        };
        let half = all.len() / 2;
        let (x, y) = all.split_at_mut(half);
        (&mut x[..len], &mut y[..len])
    }
}

simd_dispatch! {
    /// `x[i] = (x[i] / na) * (y[i] / nb)`.
    fn normalized_products<>(x: &mut [f32], y: &[f32], na: f32, nb: f32) => normalized_products_impl
}

#[inline(always)]
fn normalized_products_impl(x: &mut [f32], y: &[f32], na: f32, nb: f32) {
    for (x, &y) in x.iter_mut().zip(y) {
        *x = (*x / na) * (y / nb);
    }
}

simd_dispatch! {
    /// `x[i] = rnd_P(ca * x[i] + cb * y[i])`, both products rounded to f32 first (no FMA).
    fn interpolate<P: Precision>(x: &mut [f32], y: &[f32], ca: f32, cb: f32) => interpolate_impl
}

#[inline(always)]
fn interpolate_impl<P: Precision>(x: &mut [f32], y: &[f32], ca: f32, cb: f32) {
    for (x, &y) in x.iter_mut().zip(y) {
        let l = ca * *x;
        let r = cb * y;
        *x = P::rnd(l + r);
    }
}

/// Interpolates base `a` and other `b` (`n` elements each, values in the working dtype `P`) at
/// `t`, exactly as [`super::slerp::slerp`], calling `sink(start, values)` once for every piece
/// of at most [`OUT_CHUNK`] elements, in any order and from any thread.
pub fn slerp_streamed<P: Precision, E: Send>(
    n: usize,
    a: &dyn ChunkSource<E>,
    b: &dyn ChunkSource<E>,
    t: f64,
    sink: &Sink<'_, E>,
) -> Result<(), E> {
    if n == 0 {
        return Ok(());
    }
    let (pa, pb) = block_norms(n, a, b)?;
    let (na, nb) = (norm_from_parts(&pa), norm_from_parts(&pb));
    let dots = block_dots(n, a, b, na, nb)?;
    let (ca, cb) = coefficients(&dots, t);
    interpolate_streamed::<P, E>(n, a, b, ca, cb, sink)
}

/// Pass 1: the norm of every block of [`TORCH_CHUNK`] elements of `a` and of `b`, in order.
/// A chunk task starting at a multiple of [`TORCH_CHUNK`] returns exactly its blocks' norms.
pub fn block_norms<E: Send>(
    n: usize,
    a: &dyn ChunkSource<E>,
    b: &dyn ChunkSource<E>,
) -> Result<(Vec<f32>, Vec<f32>), E> {
    let norms = over_chunks(n, TORCH_CHUNK, a, b, |_, x, y| {
        Ok((torch_vector_norm_f32(x), torch_vector_norm_f32(y)))
    })?;
    Ok(norms.into_iter().unzip())
}

/// The norm of the whole tensor from the norms of all its blocks, in order.
pub fn norm_of_blocks(blocks: &[f32]) -> f32 {
    norm_from_parts(blocks)
}

/// Pass 2: the dot product of every block of the inputs normalised by `na` and `nb`.
pub fn block_dots<E: Send>(
    n: usize,
    a: &dyn ChunkSource<E>,
    b: &dyn ChunkSource<E>,
    na: f32,
    nb: f32,
) -> Result<Vec<f32>, E> {
    over_chunks(n, TORCH_CHUNK, a, b, |_, x, y| {
        normalized_products(x, y, na, nb);
        Ok(torch_sum_f32(x, |p| p))
    })
}

/// The interpolation coefficients `(c_a, c_b)` from the dot products of all blocks, in order.
pub fn coefficients(dots: &[f32], t: f64) -> (f32, f32) {
    coefficients_from(torch_sum_f32(dots, |p| p), t)
}

/// Pass 3: `rnd_P(c_a * a + c_b * b)` piece by piece into the sink (elementwise, so any range
/// of the tensor can be interpolated on its own).
pub fn interpolate_streamed<P: Precision, E: Send>(
    n: usize,
    a: &dyn ChunkSource<E>,
    b: &dyn ChunkSource<E>,
    ca: f32,
    cb: f32,
    sink: &Sink<'_, E>,
) -> Result<(), E> {
    over_chunks(n, OUT_CHUNK, a, b, |s, x, y| {
        interpolate::<P>(x, y, ca, cb);
        sink(s, x)
    })?;
    Ok(())
}

/// Runs `f(start, a_chunk, b_chunk)` on every chunk of `size` elements of `a` and `b` (read
/// into per-job scratch), in parallel; results in chunk order.
fn over_chunks<E: Send, R: Send>(
    n: usize,
    size: usize,
    a: &dyn ChunkSource<E>,
    b: &dyn ChunkSource<E>,
    f: impl Fn(usize, &mut [f32], &mut [f32]) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    (0..n.div_ceil(size))
        .into_par_iter()
        .map_init(
            || Scratch::new(size),
            |scratch, i| {
                let (s, len) = (i * size, size.min(n - i * size));
                let (x, y) = scratch.pair(len);
                a.read(s, x)?;
                b.read(s, y)?;
                f(s, x, y)
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::{Bf16, F32};
    use crate::kernels::slerp::slerp;
    use std::sync::Mutex;

    use crate::kernels::stream_ops::VecSource as Src;

    /// Deterministic pseudo-random values of precision `P`, `b` correlated with `a` by `mix`.
    fn inputs<P: Precision>(n: usize, mix: f32) -> (Vec<f32>, Vec<f32>) {
        let mut z = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        };
        let a: Vec<f32> = (0..n).map(|_| P::rnd(next())).collect();
        let b = a.iter().map(|&x| P::rnd(mix * x + next())).collect();
        (a, b)
    }

    fn check<P: Precision>(n: usize, mix: f32, t: f64) {
        let (a, b) = inputs::<P>(n, mix);
        check_values::<P>(a, b, t);
    }

    fn check_values<P: Precision>(a: Vec<f32>, b: Vec<f32>, t: f64) {
        let (n, mix) = (a.len(), "given");
        let mut want = vec![0.0; n];
        slerp::<P>(&a, &b, t, &mut want);
        let got = Mutex::new(vec![f32::NAN; n]);
        let calls = Mutex::new(Vec::new());
        let sink = |s: usize, v: &[f32]| -> Result<(), String> {
            got.lock().unwrap()[s..s + v.len()].copy_from_slice(v);
            calls.lock().unwrap().push((s, v.len()));
            Ok(())
        };
        slerp_streamed::<P, String>(n, &Src(a), &Src(b), t, &sink).unwrap();
        let got = got.into_inner().unwrap();
        let mismatch = got.iter().zip(&want).position(|(g, w)| g.to_bits() != w.to_bits());
        assert_eq!(mismatch, None, "n={n} mix={mix} t={t}");
        let mut calls = calls.into_inner().unwrap();
        calls.sort_unstable();
        let covered: usize = calls.iter().map(|c| c.1).sum();
        assert_eq!(covered, n, "every element written exactly once");
        assert!(calls.iter().all(|c| c.1 <= OUT_CHUNK));
    }

    #[test]
    fn streamed_equals_whole_tensor_slerp() {
        // One partial chunk, exact chunk multiples, and several torch chunks plus a remainder.
        for n in [1, 7, 1000, OUT_CHUNK + 3, TORCH_CHUNK, 2 * TORCH_CHUNK + 4097] {
            check::<Bf16>(n, 0.3, 0.4);
            check::<F32>(n, 0.3, 0.7);
        }
        // Nearly parallel inputs take the linear fallback.
        check::<F32>(5000, 1.0, 0.25);
        check::<Bf16>(3 * TORCH_CHUNK / 2, 1.0, 0.25);
    }

    #[test]
    fn zero_inputs_and_errors() {
        check_values::<F32>(vec![0.0; 300], vec![0.0; 300], 0.5);
        check_values::<Bf16>(vec![0.0; 300], inputs::<Bf16>(300, 0.0).1, 0.3);
        let sink = |_: usize, _: &[f32]| -> Result<(), String> { Err("sink full".into()) };
        let err = slerp_streamed::<F32, String>(10, &Src(vec![1.0; 10]), &Src(vec![2.0; 10]), 0.5, &sink);
        assert_eq!(err, Err("sink full".into()));
        let short = slerp_streamed::<F32, String>(10, &Src(vec![1.0; 10]), &Src(vec![2.0; 4]), 0.5, &sink);
        assert_eq!(short, Err("out of range".into()));
        let sink_ok = |_: usize, _: &[f32]| -> Result<(), String> { panic!("no elements, no calls") };
        assert_eq!(
            slerp_streamed::<F32, String>(0, &Src(vec![]), &Src(vec![]), 0.5, &sink_ok),
            Ok(())
        );
    }
}
