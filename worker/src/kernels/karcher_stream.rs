//! [`super::karcher`] over element ranges, for chunk tasks (see [`crate::chunk`]): the same
//! values, bit for bit.
//!
//! Every whole-tensor statistic of the kernel is a serial reduction (torch's f32 norm, MKL's
//! `sdot`, an f64 dot), so each is a *chain* of one-chunk links in element order, and each
//! needs the one before. The stages: the inputs' norms; the norm of the weighted mean of the
//! unit vectors; then per iteration the dots of the mean with every unit vector, the tangent's
//! norm, and the updated mean's norm. The mean at an element after `j` iterations follows
//! from the inputs there and the statistics so far, so every chunk replays it ([`Replay`]).
//! Stages after convergence (or with no valid input) are skipped.

use super::WorkDType;
use super::gta_stream::{ChunkSource, Sink};
use super::karcher::{acos, sin};
use super::karcher_ops::{add_tangent_rnd, add_weighted_rnd, rotate_rnd, scale_rnd};
use super::precision::Precision;
use super::stream_ops::div_rnd;
use super::torch_norm::NormStream;
use super::torch_trig::torch_sin_f32;
use rayon::prelude::*;

/// Elements per piece read from every input.
pub const PIECE: usize = 1 << 14;

/// MKL's `sdot` (f32) or an f64 dot (bf16, f16) fed in order, in pieces of any length
/// ([`super::karcher::sdot`]'s order: 16-element blocks into 4 accumulators of 4 lanes, 1 to 3
/// leftover vectors into accumulators 0, 1, 0, the rest into lane 0 of accumulator 0).
#[derive(Debug, Clone)]
pub struct DotStream {
    total: usize,
    fed: usize,
    acc: [[f32; 4]; 4],
    sum: f64,
    f32_path: bool,
}

impl DotStream {
    /// A dot over `total` elements in working precision `P`.
    pub fn new<P: Precision>(total: usize) -> Self {
        DotStream {
            total,
            fed: 0,
            acc: [[0.0; 4]; 4],
            // The identity Rust's `f64` sum starts from.
            sum: std::iter::empty::<f64>().sum(),
            f32_path: P::DTYPE == WorkDType::F32,
        }
    }

    /// Continues from [`DotStream::state`]; `None` if it does not fit.
    pub fn resume<P: Precision>(total: usize, fed: usize, lanes: &[f32], sum: f64) -> Option<Self> {
        let mut s = DotStream::new::<P>(total);
        if fed > total || lanes.len() != 16 {
            return None;
        }
        s.fed = fed;
        for (j, a) in s.acc.iter_mut().enumerate() {
            a.copy_from_slice(&lanes[4 * j..4 * j + 4]);
        }
        s.sum = sum;
        Some(s)
    }

    /// Elements fed, sdot's 16 lanes, the f64 sum.
    pub fn state(&self) -> (usize, Vec<f32>, f64) {
        (self.fed, self.acc.concat(), self.sum)
    }

    /// Adds the next `a.len()` products `a[i] * b[i]`.
    pub fn feed(&mut self, a: &[f32], b: &[f32]) {
        assert!(self.fed + a.len() <= self.total, "fed past the end of the vector");
        if !self.f32_path {
            for (&x, &y) in a.iter().zip(b) {
                self.sum += f64::from(x) * f64::from(y);
            }
            self.fed += a.len();
            return;
        }
        let blocks = self.total / 16 * 16;
        let vectors = self.total / 4 * 4;
        let mut i = 0;
        if self.fed.is_multiple_of(16) {
            let whole = blocks.saturating_sub(self.fed).min(a.len()) / 16 * 16;
            for (x, y) in a[..whole].chunks_exact(16).zip(b[..whole].chunks_exact(16)) {
                for (j, lanes) in self.acc.iter_mut().enumerate() {
                    for (l, v) in lanes.iter_mut().enumerate() {
                        *v += x[4 * j + l] * y[4 * j + l];
                    }
                }
            }
            i = whole;
            self.fed += whole;
        }
        for (&x, &y) in a[i..].iter().zip(&b[i..]) {
            let p = self.fed;
            let (j, l) = if p < blocks {
                ((p % 16) / 4, p % 4)
            } else if p < vectors {
                ([0, 1, 0][(p - blocks) / 4], p % 4)
            } else {
                (0, 0)
            };
            self.acc[j][l] += x * y;
            self.fed += 1;
        }
    }

    /// The dot as the whole kernel has it (rounded to `P` off the f32 path).
    pub fn finish<P: Precision>(self) -> f32 {
        assert_eq!(self.fed, self.total, "vector not fully fed");
        if !self.f32_path {
            return P::rnd(self.sum as f32);
        }
        if self.total < 4 {
            return self.acc[0][0];
        }
        let mut v = self.acc[0];
        for lanes in &self.acc[1..] {
            for (v, &x) in v.iter_mut().zip(lanes) {
                *v += x;
            }
        }
        (v[0] + v[2]) + (v[1] + v[3])
    }
}

/// The parameters and the whole-tensor statistics known so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Every input's f32 norm (stage 1).
    pub norms: Vec<f32>,
    /// The norm of the unit vectors' weighted mean (stage 2).
    pub mean_norm: Option<f32>,
    /// The iterations' statistics so far.
    pub iters: Vec<Iteration>,
}

/// One iteration's statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Iteration {
    /// The clamped dots of the mean with every valid unit vector.
    pub dots: Vec<f32>,
    /// The tangent's norm.
    pub tangent_norm: Option<f32>,
    /// The updated mean's norm (absent when the tangent ended the iterations).
    pub update_norm: Option<f32>,
}

/// What a stage computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The inputs' norms.
    Norms,
    /// The norm of the weighted mean.
    MeanNorm,
    /// Iteration `j`'s dots.
    Dots(usize),
    /// Iteration `j`'s tangent norm.
    TangentNorm(usize),
    /// Iteration `j`'s updated mean's norm.
    UpdateNorm(usize),
}

impl Stage {
    /// Stage `s` (0-based) of the chain of stages.
    pub fn of(s: usize) -> Stage {
        match s {
            0 => Stage::Norms,
            1 => Stage::MeanNorm,
            s => match (s - 2) % 3 {
                0 => Stage::Dots((s - 2) / 3),
                1 => Stage::TangentNorm((s - 2) / 3),
                _ => Stage::UpdateNorm((s - 2) / 3),
            },
        }
    }

    /// Stages of a tensor with `max_iter` iterations.
    pub fn count(max_iter: i64) -> usize {
        2 + 3 * max_iter.max(0) as usize
    }
}

/// karcher's parameters for `k` inputs.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Inputs (all of them: the base is one more input).
    pub k: usize,
    /// `tol`.
    pub tol: f64,
}

impl Params {
    /// The inputs whose norm exceeds `tol`.
    pub fn valid(&self, stats: &Stats) -> Vec<usize> {
        (0..self.k)
            .filter(|&i| stats.norms.get(i).is_some_and(|&n| f64::from(n) > self.tol))
            .collect()
    }

    /// Whether the iterations ended before iteration `j` (a tangent norm below `tol`).
    fn ended_before(&self, stats: &Stats, j: usize) -> bool {
        stats.iters[..j.min(stats.iters.len())]
            .iter()
            .any(|it| it.tangent_norm.is_some_and(|t| f64::from(t) < self.tol))
    }

    /// Whether `stage` runs, given the statistics before it: nothing after the norms without a
    /// valid input, nothing after a tangent norm below `tol`.
    pub fn runs(&self, stage: Stage, stats: &Stats) -> bool {
        match stage {
            Stage::Norms => true,
            _ if self.valid(stats).is_empty() => false,
            Stage::MeanNorm => true,
            Stage::Dots(j) | Stage::TangentNorm(j) => !self.ended_before(stats, j),
            Stage::UpdateNorm(j) => !self.ended_before(stats, j + 1),
        }
    }
}

/// One iteration's scalars for every valid input: the dot `d` and the coefficient `c`, or
/// `None` when the angle is below `tol` (the input is skipped).
fn coefficients<P: Precision>(dots: &[f32], weight: f32, tol: f64) -> Vec<Option<(f32, f32)>> {
    dots.iter()
        .map(|&d| {
            let theta = acos::<P>(d);
            (f64::from(theta) >= tol).then(|| (d, P::rnd(P::rnd(theta / sin::<P>(theta)) * weight)))
        })
        .collect()
}

/// The mean at the elements of a piece, replayed from the valid unit vectors there.
pub struct Replay<'s> {
    params: Params,
    stats: &'s Stats,
    valid: Vec<usize>,
    weight: f32,
}

impl<'s> Replay<'s> {
    /// A replay of `stats` (the norms must be known and some input valid).
    pub fn new(params: Params, stats: &'s Stats) -> Self {
        let valid = params.valid(stats);
        let alpha = 1.0 / params.k as f64;
        let alpha_sum = valid.iter().fold(0.0f64, |s, _| s + alpha);
        Replay {
            params,
            stats,
            weight: (alpha / alpha_sum) as f32,
            valid,
        }
    }

    /// The valid inputs.
    pub fn valid(&self) -> &[usize] {
        &self.valid
    }

    /// Turns the valid inputs' values (`xs[v]` for each valid `v`, in order) into unit vectors.
    pub fn units<P: Precision>(&self, xs: &mut [Vec<f32>], len: usize) {
        for (x, &i) in xs.iter_mut().zip(&self.valid) {
            div_rnd::<P>(&mut x[..len], self.stats.norms[i]);
        }
    }

    /// The unnormalised weighted mean of the units into `m`.
    pub fn raw_mean<P: Precision>(&self, units: &[Vec<f32>], m: &mut [f32]) {
        m.fill(0.0);
        for u in units {
            add_weighted_rnd::<P>(m, u, self.weight);
        }
    }

    /// The tangent of iteration `j` at mean `m` into `t` (from its dots).
    fn tangent<P: Precision>(&self, j: usize, units: &[Vec<f32>], m: &[f32], t: &mut [f32]) {
        t.fill(0.0);
        let coef = coefficients::<P>(&self.stats.iters[j].dots, self.weight, self.params.tol);
        for (u, c) in units.iter().zip(coef) {
            let Some((d, c)) = c else { continue };
            add_tangent_rnd::<P>(t, u, m, d, c);
        }
    }

    /// The starting mean `m_0` into `m`.
    pub fn start<P: Precision>(&self, units: &[Vec<f32>], m: &mut [f32]) {
        self.raw_mean::<P>(units, m);
        let mean_norm = self.stats.mean_norm.unwrap_or(0.0);
        if f64::from(mean_norm) < self.params.tol {
            m.copy_from_slice(&units[0][..m.len()]);
        } else {
            div_rnd::<P>(m, mean_norm);
        }
    }

    /// Iteration `j`'s tangent into `t`, and unless the iterations end there, its updated
    /// mean into `m` (`normalize`: divided by its norm, which must then be known). Returns
    /// whether the mean moved.
    pub fn step<P: Precision>(
        &self,
        j: usize,
        units: &[Vec<f32>],
        m: &mut [f32],
        t: &mut [f32],
        normalize: bool,
    ) -> bool {
        self.tangent::<P>(j, units, m, t);
        let tol = self.params.tol;
        let Some(tn) = self.stats.iters[j].tangent_norm.filter(|&tn| f64::from(tn) >= tol) else {
            return false;
        };
        let (c, s) = (P::rnd(f64::from(tn).cos() as f32), P::rnd(torch_sin_f32(tn)));
        rotate_rnd::<P>(m, t, c, s, tn);
        let un = self.stats.iters[j].update_norm.unwrap_or(0.0);
        if normalize && f64::from(un) > tol {
            div_rnd::<P>(m, un);
        }
        true
    }

    /// The mean after the first `iters` iterations (fewer if they ended) into `m`.
    pub fn mean<P: Precision>(&self, units: &[Vec<f32>], iters: usize, m: &mut [f32], t: &mut [f32]) {
        self.start::<P>(units, m);
        for j in 0..iters {
            if !self.step::<P>(j, units, m, t, true) {
                return;
            }
        }
    }

    /// The tangent of iteration `j` at mean `m` into `t`.
    pub fn tangent_at<P: Precision>(&self, j: usize, units: &[Vec<f32>], m: &[f32], t: &mut [f32]) {
        self.tangent::<P>(j, units, m, t);
    }

    /// The scale `rnd(sum_i f32(alpha) n_i)` over all inputs.
    pub fn scale<P: Precision>(&self) -> f32 {
        let alpha = (1.0 / self.params.k as f64) as f32;
        P::rnd(self.stats.norms.iter().fold(0.0f32, |s, &n| s + alpha * n))
    }
}

impl Stats {
    /// The norms, the mean's norm, then per iteration its dots, tangent norm and update norm,
    /// as far as known.
    pub fn to_floats(&self) -> Vec<f32> {
        let mut v = self.norms.clone();
        v.extend(self.mean_norm);
        for it in &self.iters {
            v.extend_from_slice(&it.dots);
            v.extend(it.tangent_norm);
            v.extend(it.update_norm);
        }
        v
    }

    /// The statistics from [`Stats::to_floats`]; `None` if malformed.
    pub fn from_floats(params: Params, v: &[f32]) -> Option<Stats> {
        let mut s = Stats::default();
        if v.is_empty() {
            return Some(s);
        }
        s.norms = v.get(..params.k)?.to_vec();
        let valid = params.valid(&s).len();
        let rest = &v[params.k..];
        if valid == 0 {
            return rest.is_empty().then_some(s);
        }
        let mut at = 0;
        let next = |at: &mut usize| {
            *at += 1;
            rest.get(*at - 1).copied()
        };
        s.mean_norm = next(&mut at);
        while rest.len() > at {
            let dots = rest.get(at..at + valid)?.to_vec();
            at += valid;
            let mut it = Iteration {
                dots,
                ..Default::default()
            };
            it.tangent_norm = next(&mut at);
            if it.tangent_norm.is_some_and(|t| f64::from(t) < params.tol) {
                s.iters.push(it);
                return (rest.len() == at).then_some(s);
            }
            it.update_norm = next(&mut at);
            s.iters.push(it);
        }
        Some(s)
    }
}

/// What a link of a chain feeds: norms, or the dots of the valid inputs.
pub enum Feeds {
    /// The norm streams of a norm stage (one per input for [`Stage::Norms`], else one).
    Norms(Vec<NormStream>),
    /// One dot stream per valid input.
    Dots(Vec<DotStream>),
}

/// Per-piece scratch: the inputs' values (the valid ones' units), the mean and the tangent.
struct Scratch {
    xs: Vec<Vec<f32>>,
    m: Vec<f32>,
    t: Vec<f32>,
}

impl Scratch {
    fn new(k: usize, len: usize) -> Self {
        Scratch {
            xs: vec![vec![0.0; len]; k],
            m: vec![0.0; len],
            t: vec![0.0; len],
        }
    }
}

/// Reads the valid inputs' unit vectors over `range` (chunk-relative).
fn read_units<P: Precision, E>(
    xs: &[&dyn ChunkSource<E>],
    replay: &Replay<'_>,
    range: std::ops::Range<usize>,
    s: &mut Scratch,
) -> Result<(), E> {
    let len = range.len();
    for (v, &i) in s.xs.iter_mut().zip(replay.valid()) {
        xs[i].read(range.start, &mut v[..len])?;
    }
    replay.units::<P>(&mut s.xs, len);
    Ok(())
}

/// One link of `stage` over `len` elements (chunk-relative sources `xs`, every input in
/// order), fed to `feeds`. The stage must run ([`Params::runs`]).
pub fn link<P: Precision, E>(
    stage: Stage,
    len: usize,
    xs: &[&dyn ChunkSource<E>],
    params: Params,
    stats: &Stats,
    feeds: &mut Feeds,
) -> Result<(), E> {
    let mut s = Scratch::new(params.k, PIECE.min(len));
    let replay = Replay::new(params, stats);
    for start in (0..len).step_by(PIECE) {
        let range = start..(start + PIECE).min(len);
        let l = range.len();
        match (stage, &mut *feeds) {
            (Stage::Norms, Feeds::Norms(norms)) => {
                for ((x, v), norm) in xs.iter().zip(&mut s.xs).zip(norms.iter_mut()) {
                    x.read(range.start, &mut v[..l])?;
                    super::stream_ops::feed_norm(norm, &v[..l]);
                }
            }
            (Stage::Dots(j), Feeds::Dots(dots)) => {
                read_units::<P, E>(xs, &replay, range, &mut s)?;
                replay.mean::<P>(&s.xs, j, &mut s.m[..l], &mut s.t[..l]);
                for (d, u) in dots.iter_mut().zip(&s.xs) {
                    d.feed(&s.m[..l], &u[..l]);
                }
            }
            (stage, Feeds::Norms(norms)) => {
                read_units::<P, E>(xs, &replay, range, &mut s)?;
                let Scratch { xs: units, m, t } = &mut s;
                let (m, t) = (&mut m[..l], &mut t[..l]);
                match stage {
                    Stage::TangentNorm(j) => {
                        replay.mean::<P>(units, j, m, t);
                        replay.tangent_at::<P>(j, units, m, t);
                        super::stream_ops::feed_norm(&mut norms[0], t);
                    }
                    Stage::UpdateNorm(j) => {
                        replay.mean::<P>(units, j, m, t);
                        replay.step::<P>(j, units, m, t, false);
                        super::stream_ops::feed_norm(&mut norms[0], m);
                    }
                    _ => {
                        replay.raw_mean::<P>(units, m);
                        super::stream_ops::feed_norm(&mut norms[0], m);
                    }
                }
            }
            (_, Feeds::Dots(_)) => unreachable!("only the dots stage feeds dots"),
        }
    }
    Ok(())
}

/// Apply over `len` elements (chunk-relative) from the complete statistics, piece by piece in
/// parallel.
pub fn apply<P: Precision, E: Send>(
    len: usize,
    xs: &[&dyn ChunkSource<E>],
    params: Params,
    stats: &Stats,
    sink: &Sink<'_, E>,
) -> Result<(), E> {
    let replay = Replay::new(params, stats);
    let pieces: Vec<std::ops::Range<usize>> = (0..len).step_by(PIECE).map(|s| s..(s + PIECE).min(len)).collect();
    pieces.into_par_iter().try_for_each_init(
        || Scratch::new(params.k, PIECE.min(len)),
        |s, range| {
            let l = range.len();
            if replay.valid().is_empty() {
                s.m[..l].fill(0.0);
                return sink(range.start, &s.m[..l]);
            }
            read_units::<P, E>(xs, &replay, range.clone(), s)?;
            let Scratch { xs: units, m, t } = s;
            replay.mean::<P>(units, stats.iters.len(), &mut m[..l], &mut t[..l]);
            let scale = replay.scale::<P>();
            scale_rnd::<P>(&mut m[..l], scale);
            sink(range.start, &m[..l])
        },
    )
}

#[cfg(test)]
mod tests;
