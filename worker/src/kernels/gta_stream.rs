//! Streaming form of the task-arithmetic family for the `random` (DARE) sparsifier and for no
//! sparsifier: the same values as [`super::gta::merge`], bit for bit, in two cache-sized passes
//! instead of a dozen tensor-sized ones.
//!
//! * **Draw** (only for inputs with `density < 1`): per torch summation part (see
//!   [`super::torch_sum::torch_parts`]; with 2 threads the two halves, which are independent
//!   in torch too and run in parallel here), chunk by chunk in order: `delta = rnd(x - b)`,
//!   the L1 norm of `delta`, the Bernoulli keep bits, the L1 norm of the masked delta. Only the
//!   keep bits (1 bit per element) and the two norms are kept.
//! * **Combine**, in parallel over chunks: recompute `delta`, apply the keep bit and the
//!   rescale factor, then weight, elect, normalise and add to the base exactly as
//!   [`super::gta::merge`] does, and hand each finished chunk to a sink.
//!
//! Inputs come from [`ChunkSource`]s (values already in the working dtype), so the kernel stays
//! free of I/O and storage formats.

use super::gta::{GtaError, GtaOptions, GtaVariant};
use super::gta_chunk::{Bf16Le, Block, Combine, RowSpec, combine_chunk, draw_bits, draw_chunk, q_rnd};
use super::precision::{Precision, WorkDType, round_bf16};
use super::sparsify::Sparsifier;
use super::torch_sum::{DEFAULT_THREADS, torch_combine_bf16, torch_combine_f32, torch_parts};
use super::torch_sum_stream::{SumKind, TorchSumStream};
use crate::rng::Mt19937;
use rayon::prelude::*;
use std::ops::Range;

/// Elements per chunk of the draw pass (a multiple of 8: one mask byte per 8 elements).
pub(crate) const DRAW_CHUNK: usize = 1 << 14;
/// Elements per chunk of the combine pass (a multiple of 8).
const COMBINE_CHUNK: usize = 1 << 16;
const RESCALE_EPS: f32 = 1e-7;

/// Produces elements of one input tensor on demand.
pub trait ChunkSource<E>: Sync {
    /// Writes elements `start .. start + out.len()` into `out`, as f32 values exactly
    /// representable in the working dtype.
    fn read(&self, start: usize, out: &mut [f32]) -> Result<(), E>;

    /// The whole tensor as little-endian bfloat16 bytes, when its values are exactly the
    /// stored bf16 values (nothing to round). The kernel then widens elements inside its own
    /// loops, which overlaps reading the input with the arithmetic.
    fn bf16_bytes(&self) -> Option<&[u8]> {
        None
    }
}

/// `bytes` as `n` bf16 elements.
fn as_bf16(bytes: &[u8], n: usize) -> Option<Bf16Le<'_>> {
    let (pairs, rest) = bytes.as_chunks::<2>();
    (pairs.len() == n && rest.is_empty()).then_some(Bf16Le(pairs))
}

/// Receives finished chunks: `sink(start, values)` for elements `start .. start + len`.
pub type Sink<'a, E> = dyn Fn(usize, &[f32]) -> Result<(), E> + Sync + 'a;

/// One non-base input of [`merge_streamed`].
pub struct StreamInput<'a, E> {
    /// The input tensor.
    pub source: &'a dyn ChunkSource<E>,
    /// Per-model weight.
    pub weight: f64,
    /// Per-model density (1.0 disables sparsification).
    pub density: f64,
    /// Random stream positioned at this input's first draw (needed when `density < 1`).
    pub rng: Option<Mt19937>,
}

/// Why [`merge_streamed`] failed.
#[derive(Debug)]
pub enum StreamError<E> {
    /// The kernel's contract was broken.
    Gta(GtaError),
    /// A source or the sink failed.
    Io(E),
}

impl<E> From<E> for StreamError<E> {
    fn from(e: E) -> Self {
        StreamError::Io(e)
    }
}

/// Whether [`merge_streamed`] implements `variant` (the magnitude sparsifier needs a global
/// ranking and is not streamed).
pub fn supports(variant: GtaVariant) -> bool {
    matches!(variant.sparsifier, None | Some(Sparsifier::Random))
}

/// What the draw pass leaves for the combine pass, for one sparsified input.
pub(crate) struct Drawn {
    /// Keep bits per summation part, bit `i % 8` of byte `i / 8` for part-local element `i`.
    pub(crate) bits: Vec<Vec<u8>>,
    /// `rnd(L1 before / L1 after)` when the rescale applies.
    pub(crate) scale: Option<f32>,
    /// Every element dropped, as `+0.0` (the magnitude sparsifier at `density <= 0`).
    pub(crate) zeros: bool,
}

/// Merges `inputs` onto `base` (`n` elements each) like [`super::gta::merge`] and calls `sink`
/// with every finished chunk: `sink(start, values)` for elements `start .. start + len`, each
/// element exactly once, in any order and from any thread.
pub fn merge_streamed<P: Precision, E: Send>(
    variant: GtaVariant,
    opts: GtaOptions,
    n: usize,
    base: &dyn ChunkSource<E>,
    inputs: Vec<StreamInput<'_, E>>,
    sink: &Sink<'_, E>,
) -> Result<(), StreamError<E>> {
    if !supports(variant) {
        return Err(StreamError::Gta(GtaError::Unsupported));
    }
    let parts = torch_parts(n, DEFAULT_THREADS);
    let raw: Option<(Bf16Le<'_>, Vec<Bf16Le<'_>>)> = (|| {
        let b = as_bf16(base.bf16_bytes()?, n)?;
        let xs = inputs
            .iter()
            .map(|i| as_bf16(i.source.bf16_bytes()?, n))
            .collect::<Option<Vec<_>>>()?;
        Some((b, xs))
    })();
    let random = variant.sparsifier == Some(Sparsifier::Random);
    let mut jobs = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        if random && input.density < 1.0 {
            let rng = input.rng.as_ref().ok_or(StreamError::Gta(GtaError::MissingRng(i)))?;
            for (pi, part) in parts.iter().enumerate() {
                jobs.push((i, pi, part.clone(), rng));
            }
        }
    }
    let drawn_parts = jobs
        .into_par_iter()
        .map(|(i, pi, part, rng)| {
            let x = inputs[i].source;
            let p = keep_probability::<P>(inputs[i].density);
            let mut rng = rng.clone();
            if part.start > 0 {
                rng.jump(part.start as u64);
            }
            let raw = raw.as_ref().map(|(b, xs)| (*b, xs[i]));
            let drawn = draw_part::<P, E>(base, x, raw, part, p, opts.rescale, rng)?;
            Ok((i, pi, drawn))
        })
        .collect::<Result<Vec<_>, E>>()?;
    let mut drawn: Vec<Option<Drawn>> = (0..inputs.len()).map(|_| None).collect();
    let mut sums: Vec<(Vec<f32>, Vec<f32>)> = vec![(vec![0.0; parts.len()], vec![0.0; parts.len()]); inputs.len()];
    for (i, pi, (bits, before, after)) in drawn_parts {
        let d = drawn[i].get_or_insert_with(|| Drawn {
            bits: vec![Vec::new(); parts.len()],
            scale: None,
            zeros: false,
        });
        d.bits[pi] = bits;
        sums[i].0[pi] = before;
        sums[i].1[pi] = after;
    }
    for (d, (before, after)) in drawn.iter_mut().zip(&sums) {
        if let Some(d) = d
            && opts.rescale
        {
            d.scale = rescale_factor::<P>(n, before, after);
        }
    }
    let sources: Vec<(&dyn ChunkSource<E>, f64)> = inputs.iter().map(|i| (i.source, i.weight)).collect();
    combine_pass::<P, E>(variant, opts, &parts, base, &sources, &drawn, sink).map_err(StreamError::Io)
}

/// The combine pass over `parts` (ranges of the `n` elements of `base`), with each input's
/// keep bits per part and rescale factor (`None`: not sparsified).
pub(crate) fn combine_pass<P: Precision, E: Send>(
    variant: GtaVariant,
    opts: GtaOptions,
    parts: &[Range<usize>],
    base: &dyn ChunkSource<E>,
    inputs: &[(&dyn ChunkSource<E>, f64)],
    drawn: &[Option<Drawn>],
    sink: &Sink<'_, E>,
) -> Result<(), E> {
    let n = parts.last().map_or(0, |p| p.end);
    let raw: Option<(Bf16Le<'_>, Vec<Bf16Le<'_>>)> = (|| {
        let b = as_bf16(base.bf16_bytes()?, n)?;
        let xs = inputs
            .iter()
            .map(|i| as_bf16(i.0.bf16_bytes()?, n))
            .collect::<Option<Vec<_>>>()?;
        Some((b, xs))
    })();
    let weights: Vec<f32> = inputs.iter().map(|i| P::DTYPE.from_f64(i.1)).collect();
    let combine = Combine {
        plain_divisor: plain_divisor::<P>(&weights),
        weights,
        normalize: opts.normalize,
        lambda: (opts.lambda != 1.0).then_some(opts.lambda as f32),
        consensus: variant.consensus.is_some(),
    };
    let chunks: Vec<(usize, Range<usize>)> = parts
        .iter()
        .enumerate()
        .flat_map(|(pi, part)| {
            (part.start..part.end)
                .step_by(COMBINE_CHUNK)
                .map(move |s| (pi, s..(s + COMBINE_CHUNK).min(part.end)))
        })
        .collect();
    let k = inputs.len();
    chunks.into_par_iter().try_for_each_init(
        || Scratch::new(k, raw.is_none()),
        |sc, (pi, range)| {
            let len = range.len();
            // Part-local offsets of chunks are multiples of COMBINE_CHUNK, so of 8.
            let byte = (range.start - parts[pi].start) / 8;
            let specs: Vec<RowSpec<'_>> = (0..k)
                .map(|m| RowSpec {
                    weight: combine.weights[m],
                    bits: drawn[m].as_ref().map(|d| &d.bits[pi][byte..]),
                    scale: drawn[m].as_ref().and_then(|d| d.scale),
                    zeros: drawn[m].as_ref().is_some_and(|d| d.zeros),
                })
                .collect();
            let out = &mut sc.out[..len];
            if let Some((b, xs)) = &raw {
                combine_chunk::<P, Bf16Le<'_>>(&combine, &specs, *b, xs, range.start, out, &mut sc.block);
            } else {
                base.read(range.start, &mut sc.b[..len])?;
                for (m, input) in inputs.iter().enumerate() {
                    input
                        .0
                        .read(range.start, &mut sc.xs[m * COMBINE_CHUNK..m * COMBINE_CHUNK + len])?;
                }
                let xs: Vec<&[f32]> = sc.xs.chunks(COMBINE_CHUNK).collect();
                combine_chunk::<P, &[f32]>(&combine, &specs, &sc.b[..], &xs, 0, out, &mut sc.block);
            }
            sink(range.start, out)?;
            Ok(())
        },
    )
}

/// Per-thread buffers of the combine pass.
struct Scratch {
    out: Vec<f32>,
    block: Block,
    /// Decoded base and inputs (unless the kernel reads bf16 bytes directly).
    b: Vec<f32>,
    xs: Vec<f32>,
}

impl Scratch {
    fn new(k: usize, decoded: bool) -> Self {
        let d = if decoded { COMBINE_CHUNK } else { 0 };
        Scratch {
            out: vec![0.0; COMBINE_CHUNK],
            block: Block::new(k),
            b: vec![0.0; d],
            xs: vec![0.0; k * d],
        }
    }
}

/// The keep probability as torch holds it: the density rounded to bf16 for bf16 deltas, else
/// to f32 (the mask is drawn in f32 for f16 deltas).
pub(crate) fn keep_probability<P: Precision>(density: f64) -> f32 {
    if P::DTYPE == WorkDType::Bf16 {
        round_bf16(density as f32)
    } else {
        density as f32
    }
}

/// `rnd(L1 before / L1 after)` from the per-part kernel values, unless either norm is below
/// 1e-7 (as `sparsify::random`).
pub(crate) fn rescale_factor<P: Precision>(n: usize, before: &[f32], after: &[f32]) -> Option<f32> {
    let l1 = |partials: &[f32]| {
        if P::DTYPE == WorkDType::Bf16 {
            round_bf16(torch_combine_bf16(n, partials, DEFAULT_THREADS))
        } else {
            torch_combine_f32(n, partials, DEFAULT_THREADS)
        }
    };
    let (before, after) = (l1(before), l1(after));
    if before < RESCALE_EPS || after < RESCALE_EPS {
        return None;
    }
    Some(q_rnd::<P>(before / after))
}

/// The draw pass over one part: keep bits and the kernel values of both L1 norms.
fn draw_part<P: Precision, E>(
    base: &dyn ChunkSource<E>,
    x: &dyn ChunkSource<E>,
    raw: Option<(Bf16Le<'_>, Bf16Le<'_>)>,
    part: Range<usize>,
    p: f32,
    rescale: bool,
    mut rng: Mt19937,
) -> Result<(Vec<u8>, f32, f32), E> {
    let kind = if P::DTYPE == WorkDType::Bf16 {
        SumKind::Bf16
    } else {
        SumKind::F32
    };
    let mut before = TorchSumStream::new(kind, part.len());
    let mut after = TorchSumStream::new(kind, part.len());
    let mut bits = vec![0u8; part.len().div_ceil(8)];
    let mut b = vec![0.0f32; if raw.is_some() { 0 } else { DRAW_CHUNK }];
    let mut d = vec![0.0f32; DRAW_CHUNK];
    let mut xv = vec![0.0f32; if raw.is_some() { 0 } else { DRAW_CHUNK }];
    let mut words = vec![0u32; DRAW_CHUNK];
    for (ci, start) in part.clone().step_by(DRAW_CHUNK).enumerate() {
        let len = DRAW_CHUNK.min(part.end - start);
        let words = &mut words[..len];
        rng.fill_u32(words);
        let out = &mut bits[ci * (DRAW_CHUNK / 8)..];
        if !rescale {
            draw_bits(words, p, out);
            continue;
        }
        let d = &mut d[..len];
        if let Some((rb, rx)) = raw {
            draw_chunk::<P, Bf16Le<'_>>(rb, rx, start, d, words, p, out, &mut before, &mut after);
        } else {
            let (b, xv) = (&mut b[..len], &mut xv[..len]);
            base.read(start, b)?;
            x.read(start, xv)?;
            draw_chunk::<P, &[f32]>(b, xv, 0, d, words, p, out, &mut before, &mut after);
        }
    }
    if !rescale {
        // No norms needed; the streams were never fed.
        return Ok((bits, 0.0, 0.0));
    }
    Ok((bits, before.finish(), after.finish()))
}

/// The no-consensus divisor: `rnd(sum of weights)`, or 1 when it is (nearly) zero.
fn plain_divisor<P: Precision>(weights: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &w in weights {
        s += w;
    }
    let s = P::rnd(s);
    if s.abs() < 1e-8 { 1.0 } else { s }
}

#[cfg(test)]
mod tests;
