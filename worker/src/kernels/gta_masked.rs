//! The task-arithmetic family over one chunk of a tensor whose statistics are already known:
//! the statistics passes (DARE's L1 partials, the magnitude histograms of TIES and breadcrumbs
//! and, with rescale, their L1 partials; DELLA's are in [`super::della_chunk`]) and the apply pass, which merges with
//! given masks and rescale factors.
//!
//! Together with [`crate::chunk::combine()`] these give exactly the bytes of [`super::gta::merge`]
//! and [`super::gta_stream::merge_streamed`] on the whole tensor: the same deltas, the same
//! keep bits (DARE's from the random stream at the chunk's own offset; TIES' from the exact
//! threshold with ties kept lowest index first), the same rescale factors, and the same
//! combine loop (`gta_stream::combine_pass`).

use super::della_chunk::{self, DellaMask};
use super::gta::{GtaOptions, GtaVariant};
use super::gta_chunk::q_rnd;
use super::gta_stream::{ChunkSource, DRAW_CHUNK, Drawn, Sink, combine_pass, keep_probability};
use super::magnitude_select::{HighCounter, Histogram, LowCounter};
use super::outlier_select::SelectMask;
use super::precision::Precision;
use super::torch_sum_partial::{PartialStream, SumPartial};
use super::torch_sum_stream::SumKind;
use crate::rng::{Mt19937, bernoulli_keep};
use rayon::prelude::*;

/// How one input's delta is masked in a chunk.
#[derive(Debug, Clone)]
pub enum Mask {
    /// Not sparsified.
    Keep,
    /// Dropped entirely (`+0.0`, the magnitude sparsifier at `density <= 0`).
    Drop,
    /// DARE: Bernoulli keep bits from `rng` (positioned at the chunk's first element).
    Random {
        /// The stream at the chunk's first draw.
        rng: Box<Mt19937>,
        /// Keep probability as configured.
        density: f64,
    },
    /// TIES (keys above a threshold, and the first so many equal to it) or breadcrumbs (a
    /// window of ascending ranks).
    Select(SelectMask),
    /// DELLA: keep bits from each element's rank in its row and its random word (the chunk is
    /// made of whole ranking blocks).
    Della(Box<DellaMask>),
}

/// One non-base input of [`merge_masked`].
pub struct MaskedInput<'a, E> {
    /// The input's elements over the chunk.
    pub source: &'a dyn ChunkSource<E>,
    /// Per-model weight.
    pub weight: f64,
    /// Mask.
    pub mask: Mask,
    /// Rescale factor of the masked delta, if the rescale applies.
    pub scale: Option<f32>,
}

/// Calls `f(start, base, x)` for consecutive pieces of `n` elements, in order.
fn pieces<E>(
    n: usize,
    base: &dyn ChunkSource<E>,
    x: &dyn ChunkSource<E>,
    mut f: impl FnMut(usize, &[f32], &[f32]),
) -> Result<(), E> {
    let mut b = vec![0.0f32; DRAW_CHUNK.min(n)];
    let mut xv = vec![0.0f32; DRAW_CHUNK.min(n)];
    for start in (0..n).step_by(DRAW_CHUNK) {
        let len = DRAW_CHUNK.min(n - start);
        base.read(start, &mut b[..len])?;
        x.read(start, &mut xv[..len])?;
        f(start, &b[..len], &xv[..len]);
    }
    Ok(())
}

/// `d = rnd_P(x - b)` elementwise.
fn deltas<P: Precision>(b: &[f32], x: &[f32], d: &mut Vec<f32>) {
    d.clear();
    d.extend(x.iter().zip(b).map(|(&x, &b)| P::rnd(x - b)));
}

/// Merges the `n` elements of one chunk with the given masks, calling `sink(start, values)` for
/// every finished piece (chunk-relative), as the combine pass of the whole tensor would.
pub fn merge_masked<P: Precision, E: Send>(
    variant: GtaVariant,
    opts: GtaOptions,
    n: usize,
    base: &dyn ChunkSource<E>,
    inputs: Vec<MaskedInput<'_, E>>,
    sink: &Sink<'_, E>,
) -> Result<(), E> {
    let drawn = inputs
        .par_iter()
        .map(|input| mask_bits::<P, E>(n, base, input))
        .collect::<Result<Vec<_>, E>>()?;
    let sources: Vec<(&dyn ChunkSource<E>, f64)> = inputs.iter().map(|i| (i.source, i.weight)).collect();
    // The chunk is one part of the combine pass (its keep bits start at its first element).
    let parts: Vec<std::ops::Range<usize>> = (n > 0).then_some(0..n).into_iter().collect();
    combine_pass::<P, E>(variant, opts, &parts, base, &sources, &drawn, sink)
}

/// The keep bits of one input over the chunk.
fn mask_bits<P: Precision, E>(
    n: usize,
    base: &dyn ChunkSource<E>,
    input: &MaskedInput<'_, E>,
) -> Result<Option<Drawn>, E> {
    let mut bits = vec![0u8; n.div_ceil(8)];
    match &input.mask {
        Mask::Keep => return Ok(None),
        Mask::Drop => {
            return Ok(Some(Drawn {
                bits: vec![bits],
                scale: None,
                zeros: true,
            }));
        }
        Mask::Random { rng, density } => {
            let p = keep_probability::<P>(*density);
            let mut rng = (**rng).clone();
            let mut words = vec![0u32; DRAW_CHUNK.min(n)];
            for start in (0..n).step_by(DRAW_CHUNK) {
                let words = &mut words[..DRAW_CHUNK.min(n - start)];
                rng.fill_u32(words);
                for (j, &w) in words.iter().enumerate() {
                    let i = start + j;
                    bits[i / 8] |= u8::from(bernoulli_keep(w, p)) << (i % 8);
                }
            }
        }
        Mask::Della(mask) => bits = della_chunk::keep_bits::<P, E>(n, base, input.source, mask)?,
        Mask::Select(mask) => {
            let mut m = *mask;
            let mut d = Vec::new();
            // Pieces are multiples of 8 long (but the last), so they start on a byte boundary.
            pieces(n, base, input.source, |start, b, x| {
                deltas::<P>(b, x, &mut d);
                m.bits(&d, &mut bits[start / 8..]);
            })?;
        }
    }
    Ok(Some(Drawn {
        bits: vec![bits],
        scale: input.scale,
        zeros: false,
    }))
}

/// The L1 cascade partials of `|delta|` and of `|rnd_P(delta * keep)|` over a range of
/// elements fed in order: the rescale statistics of every sparsifier's chunks.
pub(crate) struct L1Pair {
    before: PartialStream,
    after: PartialStream,
    vals: Vec<f32>,
}

impl L1Pair {
    /// Over elements `range_start .. range_start + n` of a torch part of `part_len` elements;
    /// an error for a range not aligned to torch's cascade.
    pub(crate) fn new(kind: SumKind, part_len: usize, range_start: usize, n: usize) -> Result<Self, String> {
        Ok(L1Pair {
            before: PartialStream::new(kind, part_len, range_start, n)?,
            after: PartialStream::new(kind, part_len, range_start, n)?,
            vals: Vec::new(),
        })
    }

    /// Feeds the next deltas and their 1.0/0.0 keep factors.
    pub(crate) fn feed<P: Precision>(&mut self, d: &[f32], keep: &[f32]) {
        self.vals.clear();
        self.vals.extend(d.iter().map(|v| v.abs()));
        self.before.feed(&self.vals);
        self.vals.clear();
        self.vals
            .extend(d.iter().zip(keep).map(|(&v, &k)| q_rnd::<P>(v * k).abs()));
        self.after.feed(&self.vals);
    }

    /// Both partials (an error if the range was not fed exactly).
    pub(crate) fn finish(self) -> Result<(SumPartial, SumPartial), String> {
        Ok((self.before.finish()?, self.after.finish()?))
    }
}

/// [`L1Pair`] over one chunk, which is elements `range_start .. range_start + n` of a torch
/// part of `part_len` elements. `keep(delta, mask)` writes the 1.0/0.0 keep factor of every
/// element of a piece, in order.
#[allow(clippy::too_many_arguments)]
fn l1_sums<P: Precision, E>(
    kind: SumKind,
    part_len: usize,
    range_start: usize,
    n: usize,
    base: &dyn ChunkSource<E>,
    x: &dyn ChunkSource<E>,
    mut keep: impl FnMut(&[f32], &mut [f32]),
) -> Result<Result<(SumPartial, SumPartial), String>, E> {
    let mut sums = match L1Pair::new(kind, part_len, range_start, n) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let (mut d, mut m) = (Vec::new(), Vec::new());
    pieces(n, base, x, |_, b, xv| {
        deltas::<P>(b, xv, &mut d);
        m.resize(d.len(), 0.0);
        keep(&d, &mut m);
        sums.feed::<P>(&d, &m);
    })?;
    Ok(sums.finish())
}

/// DARE's statistics pass over one chunk: the L1 cascade partials of `delta` and of the masked
/// delta. The chunk is elements `range_start .. range_start + n` of a torch part of `part_len`
/// elements; `rng` is positioned at the chunk's first draw.
#[allow(clippy::too_many_arguments)]
pub fn random_sums<P: Precision, E>(
    kind: SumKind,
    part_len: usize,
    range_start: usize,
    n: usize,
    base: &dyn ChunkSource<E>,
    x: &dyn ChunkSource<E>,
    density: f64,
    mut rng: Mt19937,
) -> Result<Result<(SumPartial, SumPartial), String>, E> {
    let p = keep_probability::<P>(density);
    let mut words = vec![0u32; DRAW_CHUNK.min(n)];
    l1_sums::<P, E>(kind, part_len, range_start, n, base, x, |d, m| {
        let words = &mut words[..d.len()];
        rng.fill_u32(words);
        for (k, &w) in m.iter_mut().zip(words.iter()) {
            *k = if bernoulli_keep(w, p) { 1.0 } else { 0.0 };
        }
    })
}

/// The rescale statistics of TIES and breadcrumbs over one chunk (pass 3): the L1 cascade
/// partials of `|delta|` and of `|delta|` masked by `mask` (the chunk's thresholds and tie
/// shares), placed in a torch part as for [`random_sums`].
pub fn selection_sums<P: Precision, E>(
    kind: SumKind,
    part_len: usize,
    range_start: usize,
    n: usize,
    base: &dyn ChunkSource<E>,
    x: &dyn ChunkSource<E>,
    mut mask: SelectMask,
) -> Result<Result<(SumPartial, SumPartial), String>, E> {
    l1_sums::<P, E>(kind, part_len, range_start, n, base, x, |d, m| mask.mask(d, m))
}

/// The selection statistics of TIES and breadcrumbs over one chunk: the histogram of the high
/// 16 bits of the `|delta|` keys (`high = None`, pass 1) or of the low 16 bits of the keys in
/// bin `high` (pass 2).
pub fn magnitude_histogram<P: Precision, E>(
    n: usize,
    base: &dyn ChunkSource<E>,
    x: &dyn ChunkSource<E>,
    high: Option<u16>,
) -> Result<Histogram, E> {
    let mut d = Vec::new();
    match high {
        None => {
            let mut c = HighCounter::new();
            pieces(n, base, x, |_, b, xv| {
                deltas::<P>(b, xv, &mut d);
                c.add(&d);
            })?;
            Ok(c.finish())
        }
        Some(h) => {
            let mut c = LowCounter::new(h);
            pieces(n, base, x, |_, b, xv| {
                deltas::<P>(b, xv, &mut d);
                c.add(&d);
            })?;
            Ok(c.finish())
        }
    }
}
