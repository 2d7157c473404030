//! DELLA's `magprune` over one chunk of a tensor (see [`crate::chunk`]): the keep bits of a
//! range of elements and, with rescale, the L1 cascade partials of its delta before and after
//! the mask.
//!
//! A keep bit depends on the element's rank within its ranking block (the elements of one
//! `[outer]` index, `len * inner` of [`RankRows`]) and on the element's own word of the random
//! stream. So a chunk reads the whole blocks its range touches (its *window*, which starts on a
//! block boundary), ranks them exactly as [`super::della::probabilities`] does for the whole
//! tensor, and draws words only for its own elements, from the stream positioned at its first
//! element. Apply chunks are made of whole blocks, so their window is their range; statistics
//! chunks must lie in torch's summation parts and may start and end inside a block.

use super::della::{RankRows, probabilities};
use super::gta_masked::L1Pair;
use super::gta_stream::ChunkSource;
use super::precision::{Bf16, F32, Precision, WorkDType};
use super::torch_sum_partial::SumPartial;
use super::torch_sum_stream::SumKind;
use crate::rng::{Mt19937, bernoulli_keep};

/// Elements ranked at once (rounded up to whole blocks).
const GROUP: usize = 1 << 16;

/// DELLA's mask parameters for one input.
#[derive(Debug, Clone)]
pub struct DellaMask {
    /// The stream at the first element of the range (not the window).
    pub rng: Mt19937,
    /// Density.
    pub density: f64,
    /// Epsilon.
    pub epsilon: f64,
    /// The tensor's ranking rows (`outer` is ignored: a window holds its own count of blocks).
    pub rows: RankRows,
}

/// Calls `f(offset, delta, keep)` for consecutive pieces of the elements `skip .. skip + n` of
/// a window of `window` elements that starts on a ranking block boundary (`offset` relative to
/// `skip`; `delta = rnd_P(x - base)`, `keep` 1.0 or 0.0). Draws one word per element of the
/// range when DELLA draws for `density`; otherwise keeps everything (`density >= 1`) or
/// nothing.
#[allow(clippy::too_many_arguments)]
pub fn for_each_keep<P: Precision, E>(
    base: &dyn ChunkSource<E>,
    x: &dyn ChunkSource<E>,
    window: usize,
    skip: usize,
    n: usize,
    mask: &DellaMask,
    mut f: impl FnMut(usize, &[f32], &[f32]),
) -> Result<(), E> {
    let block = (mask.rows.len * mask.rows.inner).max(1);
    let group = GROUP.div_ceil(block) * block;
    let draws = super::della::draws(mask.density);
    let mut rng = mask.rng.clone();
    let (mut b, mut xv, mut d) = (Vec::new(), Vec::new(), Vec::new());
    let (mut words, mut keep) = (Vec::new(), Vec::new());
    let end = skip + n;
    let mut g = skip / block * block;
    while g < end {
        let len = group.min(window - g);
        b.resize(len, 0.0);
        xv.resize(len, 0.0);
        base.read(g, &mut b)?;
        x.read(g, &mut xv)?;
        d.clear();
        d.extend(xv.iter().zip(&b).map(|(&x, &b)| P::rnd(x - b)));
        let (lo, hi) = (skip.max(g), end.min(g + len));
        keep.clear();
        if draws {
            let own = RankRows {
                outer: len / block,
                ..mask.rows
            };
            let p = if P::DTYPE == WorkDType::Bf16 {
                probabilities::<Bf16>(&d, own, mask.density, mask.epsilon)
            } else {
                probabilities::<F32>(&d, own, mask.density, mask.epsilon)
            };
            words.resize(hi - lo, 0);
            rng.fill_u32(&mut words);
            keep.extend(
                words
                    .iter()
                    .zip(&p[lo - g..hi - g])
                    .map(|(&w, &p)| if bernoulli_keep(w, p) { 1.0 } else { 0.0 }),
            );
        } else {
            keep.resize(hi - lo, if mask.density >= 1.0 { 1.0 } else { 0.0 });
        }
        f(lo - skip, &d[lo - g..hi - g], &keep);
        g += len;
    }
    Ok(())
}

/// The keep bits of the `n` elements of an apply chunk made of whole ranking blocks.
pub fn keep_bits<P: Precision, E>(
    n: usize,
    base: &dyn ChunkSource<E>,
    x: &dyn ChunkSource<E>,
    mask: &DellaMask,
) -> Result<Vec<u8>, E> {
    let mut bits = vec![0u8; n.div_ceil(8)];
    for_each_keep::<P, E>(base, x, n, 0, n, mask, |start, _, keep| {
        for (j, &k) in keep.iter().enumerate() {
            let i = start + j;
            bits[i / 8] |= u8::from(k != 0.0) << (i % 8);
        }
    })?;
    Ok(bits)
}

/// DELLA's statistics over one chunk: the L1 cascade partials of `|delta|` and of
/// `|rnd(delta * keep)|` over elements `skip .. skip + n` of a window of `window` elements
/// (see [`for_each_keep`]). The range is `range_start .. range_start + n` of a torch part of
/// `part_len` elements. The outer error is the inputs'; the inner one a misaligned range.
#[allow(clippy::too_many_arguments)]
pub fn sums<P: Precision, E>(
    kind: SumKind,
    part_len: usize,
    range_start: usize,
    base: &dyn ChunkSource<E>,
    x: &dyn ChunkSource<E>,
    window: usize,
    skip: usize,
    n: usize,
    mask: &DellaMask,
) -> Result<Result<(SumPartial, SumPartial), String>, E> {
    let mut sums = match L1Pair::new(kind, part_len, range_start, n) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    for_each_keep::<P, E>(base, x, window, skip, n, mask, |_, d, keep| sums.feed::<P>(d, keep))?;
    Ok(sums.finish())
}
