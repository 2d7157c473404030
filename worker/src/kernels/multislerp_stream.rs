//! [`super::multislerp`] over element ranges, for chunk tasks (see [`crate::chunk`]): the same
//! values, bit for bit, read piece by piece from the inputs.
//!
//! The whole kernel needs four whole-tensor statistics, each from the one before:
//! 1. the task vectors' norms `n_i` (serial norms: a chain of links in element order);
//! 2. the norm of the weighted mean `m` of the unit vectors (again a chain);
//! 3. the dots `d_i = sum rnd(u_i m̂)` (one summation part, as torch sums each row of the
//!    stacked `[k, n]` tensor on one thread: cascade partials of granule-aligned ranges);
//! 4. the norm of the tangent `T` (a chain);
//!
//! then every element of the result follows from its inputs and those scalars ([`apply`]).

use super::gta_stream::{ChunkSource, Sink};
use super::multislerp::{Ending, MultislerpError};
use super::precision::Precision;
use super::stream_ops::{add_base_rnd, div_rnd, feed_norm, mul_rnd, sub_rnd};
use super::torch_norm::NormStream;
use super::torch_sum::torch_combine_rounded;
use super::torch_sum_partial::{PartialStream, SumPartial, combine};
use super::torch_sum_stream::SumKind;
use rayon::prelude::*;
use std::ops::Range;

/// Elements per piece read from every input.
pub const PIECE: usize = 1 << 15;

/// The inputs: the non-base models in config order and the optional base.
pub struct Inputs<'a, E> {
    /// The models (at least two).
    pub xs: Vec<&'a dyn ChunkSource<E>>,
    /// The base model, if any (task vectors are `rnd(x - base)`).
    pub base: Option<&'a dyn ChunkSource<E>>,
}

/// The weights and `eps` as the kernel uses them.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The weights, rounded (and normalised when configured).
    pub w: Vec<f32>,
    /// `eps` as added to a norm: rounded to the working dtype.
    pub eps_add: f32,
    /// `eps` as compared with the mean's norm.
    pub eps: f64,
}

impl Setup {
    /// The setup for working precision `P`.
    pub fn new<P: Precision>(weights: &[f64], normalize_weights: bool, eps: f64) -> Setup {
        Setup {
            w: super::multislerp::rounded_weights::<P>(weights, normalize_weights),
            eps_add: P::rnd(eps as f32),
            eps,
        }
    }
}

/// The whole-tensor statistics known so far (the wire form is [`Stats::to_floats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// `n_i`: every task vector's norm, rounded.
    pub norms: Vec<f32>,
    /// `|m|`, rounded.
    pub mean_norm: Option<f32>,
    /// `d_i`, rounded.
    pub dots: Vec<f32>,
    /// `|T|`, rounded.
    pub tangent_norm: Option<f32>,
}

impl Stats {
    /// `n_i`, then `|m|`, then `d_i`, then `|T|`, as far as known.
    pub fn to_floats(&self) -> Vec<f32> {
        let mut v = self.norms.clone();
        v.extend(self.mean_norm);
        v.extend_from_slice(&self.dots);
        v.extend(self.tangent_norm);
        v
    }

    /// The statistics of `k` models from [`Stats::to_floats`] (any prefix of whole stages).
    pub fn from_floats(k: usize, v: &[f32]) -> Option<Stats> {
        let mut s = Stats::default();
        let mut rest = v;
        let mut take = |len: usize| -> Option<Vec<f32>> {
            if rest.is_empty() {
                return Some(Vec::new());
            }
            let (head, tail) = rest.split_at_checked(len)?;
            rest = tail;
            Some(head.to_vec())
        };
        s.norms = take(k)?;
        s.mean_norm = take(1)?.first().copied();
        s.dots = take(k)?;
        s.tangent_norm = take(1)?.first().copied();
        rest.is_empty().then_some(s)
    }

    /// Whether the mean vanishes, so two inputs fall back to their weighted sum (more fail).
    pub fn vanishing_mean(&self, setup: &Setup) -> bool {
        self.mean_norm.is_some_and(|m| (m as f64) < setup.eps)
    }
}

/// Per-thread scratch: every model's values, the base, the mean and the tangent.
struct Scratch {
    xs: Vec<Vec<f32>>,
    base: Vec<f32>,
    mean: Vec<f32>,
    tangent: Vec<f32>,
}

impl Scratch {
    fn new(k: usize, len: usize) -> Self {
        Scratch {
            xs: vec![vec![0.0; len]; k],
            base: vec![0.0; len],
            mean: vec![0.0; len],
            tangent: vec![0.0; len],
        }
    }
}

impl<E> Inputs<'_, E> {
    /// The task vectors over `range` (chunk-relative) into the scratch.
    fn read<P: Precision>(&self, range: Range<usize>, s: &mut Scratch) -> Result<(), E> {
        let len = range.len();
        for (x, v) in self.xs.iter().zip(&mut s.xs) {
            x.read(range.start, &mut v[..len])?;
        }
        if let Some(b) = self.base {
            b.read(range.start, &mut s.base[..len])?;
            for v in &mut s.xs {
                sub_rnd::<P>(&mut v[..len], &s.base[..len]);
            }
        }
        Ok(())
    }
}

/// `out[e] = rnd(sum_i rnd(vs[i][e] * w[i]))` over `out`'s length, the models summed in
/// order in f32.
fn weighted_sum<P: Precision>(vs: &[Vec<f32>], w: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for (v, &wi) in vs.iter().zip(w) {
        for (o, &x) in out.iter_mut().zip(&v[..]) {
            *o += P::rnd(x * wi);
        }
    }
    out.iter_mut().for_each(|o| *o = P::rnd(*o));
}

/// The unit vectors `u_i = rnd(X_i / rnd(n_i + eps))` in place, and their weighted mean.
fn units_and_mean<P: Precision>(s: &mut Scratch, len: usize, setup: &Setup, norms: &[f32]) {
    for (v, &n) in s.xs.iter_mut().zip(norms) {
        div_rnd::<P>(&mut v[..len], P::rnd(n + setup.eps_add));
    }
    weighted_sum::<P>(&s.xs, &setup.w, &mut s.mean[..len]);
}

/// As [`units_and_mean`], then the normalised mean `m̂ = rnd(m / |m|)`.
fn units_and_direction<P: Precision>(s: &mut Scratch, len: usize, setup: &Setup, stats: &Stats, mean_norm: f32) {
    units_and_mean::<P>(s, len, setup, &stats.norms);
    div_rnd::<P>(&mut s.mean[..len], mean_norm);
}

/// The tangent `T = rnd(sum_i rnd(rnd(u_i - rnd(d_i m̂)) w_i))`, from units and direction.
fn tangent<P: Precision>(s: &mut Scratch, len: usize, setup: &Setup, dots: &[f32]) {
    let Scratch { xs, mean, tangent, .. } = s;
    for (v, &d) in xs.iter_mut().zip(dots) {
        for (u, &m) in v[..len].iter_mut().zip(&mean[..len]) {
            *u = P::rnd(*u - P::rnd(d * m));
        }
    }
    weighted_sum::<P>(xs, &setup.w, &mut tangent[..len]);
}

/// Pieces of `0..len` in order.
fn pieces(len: usize) -> impl Iterator<Item = Range<usize>> {
    (0..len).step_by(PIECE).map(move |s| s..(s + PIECE).min(len))
}

/// Stage 1, one link of `len` elements: feeds every task vector to its norm, in order.
pub fn link_norms<P: Precision, E>(len: usize, inputs: &Inputs<'_, E>, norms: &mut [NormStream]) -> Result<(), E> {
    let mut s = Scratch::new(inputs.xs.len(), PIECE.min(len));
    for piece in pieces(len) {
        let l = piece.len();
        inputs.read::<P>(piece, &mut s)?;
        for (norm, v) in norms.iter_mut().zip(&s.xs) {
            feed_norm(norm, &v[..l]);
        }
    }
    Ok(())
}

/// Stage 2, one link: feeds the weighted mean of the unit vectors to its norm.
pub fn link_mean_norm<P: Precision, E>(
    len: usize,
    inputs: &Inputs<'_, E>,
    setup: &Setup,
    stats: &Stats,
    norm: &mut NormStream,
) -> Result<(), E> {
    let mut s = Scratch::new(inputs.xs.len(), PIECE.min(len));
    for piece in pieces(len) {
        let l = piece.len();
        inputs.read::<P>(piece, &mut s)?;
        units_and_mean::<P>(&mut s, l, setup, &stats.norms);
        feed_norm(norm, &s.mean[..l]);
    }
    Ok(())
}

/// Stage 3, one chunk: the cascade partials of every `rnd(u_i m̂)` over `range` of the one
/// summation part of `total` elements. The inner error is a misaligned range.
pub fn dot_partials<P: Precision, E>(
    total: usize,
    range: Range<usize>,
    inputs: &Inputs<'_, E>,
    setup: &Setup,
    stats: &Stats,
) -> Result<Result<Vec<SumPartial>, String>, E> {
    let Some(mean_norm) = stats.mean_norm else {
        return Ok(Err("the dot pass needs the mean's norm".into()));
    };
    let len = range.len();
    let kind = SumKind::of(P::DTYPE);
    let mut sums = Vec::new();
    for _ in &inputs.xs {
        match PartialStream::new(kind, total, range.start, len) {
            Ok(p) => sums.push(p),
            Err(e) => return Ok(Err(e)),
        }
    }
    let mut s = Scratch::new(inputs.xs.len(), PIECE.min(len));
    let mut product = vec![0.0f32; PIECE.min(len)];
    for piece in pieces(len) {
        let l = piece.len();
        inputs.read::<P>(piece, &mut s)?;
        units_and_direction::<P>(&mut s, l, setup, stats, mean_norm);
        for (sum, v) in sums.iter_mut().zip(&s.xs) {
            mul_rnd::<P>(&mut product[..l], &v[..l], &s.mean[..l]);
            sum.feed(&product[..l]);
        }
    }
    Ok(sums.into_iter().map(PartialStream::finish).collect())
}

/// The dots `d_i` (rounded, as the whole kernel has them) from every stage-3 chunk's partials,
/// chunks in element order, each chunk's partials in model order.
pub fn dots<P: Precision>(total: usize, k: usize, chunks: &[Vec<SumPartial>]) -> Result<Vec<f32>, String> {
    let kind = SumKind::of(P::DTYPE);
    (0..k)
        .map(|i| {
            let of_model = chunks
                .iter()
                .map(|c| c.get(i).cloned().ok_or_else(|| format!("a dot chunk lacks model {i}")))
                .collect::<Result<Vec<_>, _>>()?;
            let value = combine(kind, total, &of_model)?;
            Ok(torch_combine_rounded::<P>(total, &[value], 1))
        })
        .collect()
}

/// Stage 4, one link: feeds the tangent to its norm.
pub fn link_tangent_norm<P: Precision, E>(
    len: usize,
    inputs: &Inputs<'_, E>,
    setup: &Setup,
    stats: &Stats,
    norm: &mut NormStream,
) -> Result<Result<(), String>, E> {
    let Some(mean_norm) = stats.mean_norm else {
        return Ok(Err("the tangent needs the mean's norm".into()));
    };
    let mut s = Scratch::new(inputs.xs.len(), PIECE.min(len));
    for piece in pieces(len) {
        let l = piece.len();
        inputs.read::<P>(piece, &mut s)?;
        units_and_direction::<P>(&mut s, l, setup, stats, mean_norm);
        tangent::<P>(&mut s, l, setup, &stats.dots);
        feed_norm(norm, &s.tangent[..l]);
    }
    Ok(Ok(()))
}

/// Apply: the result over `len` elements (chunk-relative) from the complete statistics,
/// piece by piece in parallel. The inner error is what the whole kernel reports, or
/// incomplete statistics.
pub fn apply<P: Precision, E: Send>(
    len: usize,
    inputs: &Inputs<'_, E>,
    setup: &Setup,
    stats: &Stats,
    sink: &Sink<'_, E>,
) -> Result<Result<(), String>, E> {
    let k = inputs.xs.len();
    let fallback = stats.vanishing_mean(setup);
    if fallback && k != 2 {
        return Ok(Err(MultislerpError::ZeroMean.to_string()));
    }
    let (Some(mean_norm), Some(tangent_norm)) = (stats.mean_norm, stats.tangent_norm) else {
        return Ok(Err("multislerp apply needs every statistic".into()));
    };
    let end = Ending::of::<P>(tangent_norm, setup.eps_add, &stats.norms, &setup.w);
    let pieces: Vec<Range<usize>> = pieces(len).collect();
    pieces
        .into_par_iter()
        .try_for_each_init(
            || Scratch::new(k, PIECE.min(len)),
            |s, piece| {
                let l = piece.len();
                inputs.read::<P>(piece.clone(), s)?;
                if fallback {
                    let (w0, w1) = (setup.w[0], setup.w[1]);
                    let (a, b) = s.xs.split_at_mut(1);
                    for (x, &y) in a[0][..l].iter_mut().zip(&b[0][..l]) {
                        *x = P::rnd(P::rnd(*x * w0) + P::rnd(y * w1));
                    }
                } else {
                    units_and_direction::<P>(s, l, setup, stats, mean_norm);
                    tangent::<P>(s, l, setup, &stats.dots);
                    let Scratch { xs, mean, tangent, .. } = s;
                    for ((x, &m), &t) in xs[0][..l].iter_mut().zip(&mean[..l]).zip(&tangent[..l]) {
                        *x = end.value::<P>(m, t);
                    }
                }
                if inputs.base.is_some() {
                    add_base_rnd::<P>(&mut s.xs[0][..l], &s.base[..l]);
                }
                sink(piece.start, &s.xs[0][..l])
            },
        )
        .map(Ok)
}

#[cfg(test)]
mod tests;
