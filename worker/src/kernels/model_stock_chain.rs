//! model_stock of one vector (`filter_wise: false`) as chunk tasks (see [`crate::chunk`]).
//!
//! The ratio `t` needs each task vector's norm over the whole tensor, which torch takes with
//! one serial 8-lane accumulator ([`NormStream`]), and every pair's dot product, which torch
//! sums per thread part with its cascade. So the statistics run as a *chain*: links of the
//! tensor in element order, one chunk task each, every link continuing the norms where the
//! previous one stopped and returning the cascade partials of its dots
//! ([`super::torch_sum_partial`]; links lie inside torch's parts at its cascade granule). The
//! last link's norms and all the partials give `t` ([`ratio`]), and the apply chunks then run
//! `model_stock_stream::apply_pass` on their range in parallel.

use super::gta_stream::ChunkSource;
use super::model_stock::ratio_from;
use super::model_stock_stream::{PIECE, Scratch};
use super::precision::Precision;
use super::torch_norm::NormStream;
use super::torch_sum::{DEFAULT_THREADS, torch_combine_rounded, torch_parts};
use super::torch_sum_partial::{self, PartialStream, SumPartial};
use super::torch_sum_stream::SumKind;
use std::ops::Range;

/// The pairs `(i, j)`, `i < j`, of `models` task vectors whose dots the ratio takes, in order.
pub fn pairs(models: usize) -> Vec<(usize, usize)> {
    (0..models).flat_map(|i| (i + 1..models).map(move |j| (i, j))).collect()
}

/// One link of the chain: elements `range` of a tensor of `total` elements, lying in the torch
/// part `part`, read from `base` and `others` as chunk-relative sources (element 0 is
/// `range.start`). Continues each task vector's norm in `norms` and returns the cascade
/// partial of every pair's dot over the link, in [`pairs`] order. The outer error is the
/// inputs'; the inner one a range that is not aligned to torch's cascade.
pub fn link<P: Precision, E>(
    part: Range<usize>,
    range: Range<usize>,
    base: &dyn ChunkSource<E>,
    others: &[&dyn ChunkSource<E>],
    norms: &mut [NormStream],
) -> Result<Result<Vec<SumPartial>, String>, E> {
    let kind = SumKind::of(P::DTYPE);
    let n = range.len();
    let pairs = pairs(others.len());
    let mut dots = Vec::with_capacity(pairs.len());
    for _ in &pairs {
        match PartialStream::new(kind, part.len(), range.start - part.start, n) {
            Ok(d) => dots.push(d),
            Err(e) => return Ok(Err(e)),
        }
    }
    let mut s = Scratch::new(others.len(), PIECE.min(n));
    for start in (0..n).step_by(PIECE) {
        let len = PIECE.min(n - start);
        s.statistics::<P, E>(start, len, (base, others), &pairs, norms, |q, prod| dots[q].feed(prod))?;
    }
    Ok(dots.into_iter().map(PartialStream::finish).collect())
}

/// The ratio `t` of a tensor of `total` elements from the chain's finished norms and every
/// link's dot partials: `links[l]` is link `l`'s first element and its partials in [`pairs`]
/// order, links in element order.
pub fn ratio<P: Precision>(
    total: usize,
    norms: Vec<NormStream>,
    links: &[(usize, Vec<SumPartial>)],
) -> Result<f32, String> {
    let norms: Vec<f32> = norms.into_iter().map(|n| P::rnd(n.finish())).collect();
    let kind = SumKind::of(P::DTYPE);
    let parts = torch_parts(total, DEFAULT_THREADS);
    let mut dots = Vec::new();
    for q in 0..pairs(norms.len()).len() {
        let mut of_parts = Vec::with_capacity(parts.len());
        for part in &parts {
            let ps: Vec<SumPartial> = links
                .iter()
                .filter(|(start, _)| part.contains(start))
                .map(|(_, p)| p.get(q).cloned().ok_or("a link lacks a dot partial"))
                .collect::<Result<_, _>>()?;
            of_parts.push(torch_sum_partial::combine(kind, part.len(), &ps)?);
        }
        dots.push(torch_combine_rounded::<P>(total, &of_parts, DEFAULT_THREADS));
    }
    Ok(ratio_from::<P>(&norms, &dots, false))
}
