//! `sce` over one chunk of a tensor, for chunk tasks (see [`crate::chunk`]).
//!
//! The whole kernel ([`super::sce`]) needs three whole-tensor statistics, each a pass here:
//! 1. step 1's top-`K` variances, by TIES' radix select on the variance keys: the high 16-bit
//!    histogram and the count of zero variances (which fixes `K`), then
//! 2. the low 16-bit histogram in the threshold's high bin (the threshold, and each chunk's
//!    share of the threshold ties, kept lowest index first as the whole kernel keeps them);
//! 3. torch's f32 cascade partials of every selected task vector's squares, combined in torch's
//!    order into the mean squares and so the weights.
//!
//! Apply runs steps 2 and 4 (`sce::combine_range`) over the chunk with the weights,
//! at the chunk's place in the tensor (torch's dim-0 sum order depends on it).

use super::gta_stream::{ChunkSource, DRAW_CHUNK, Sink};
use super::magnitude_select::{ChunkMask, HighCounter, Histogram, LowCounter};
use super::precision::Precision;
use super::sce::{combine_range, variance};
use super::torch_sum_partial::{PartialStream, SumPartial};
use super::torch_sum_stream::SumKind;

/// Step 1's selection as one chunk applies it, in index order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// `select_topk >= 1`: no selection.
    All,
    /// `select_topk <= 0` or `K == 0`: every task vector is zeroed (`x * 0.0`).
    Nothing,
    /// The top-`K` variances (this chunk's threshold and tie share).
    TopK(ChunkMask),
}

/// A chunk's task vectors and variances, read a piece at a time.
struct Pieces<'a, E> {
    base: &'a dyn ChunkSource<E>,
    xs: &'a [&'a dyn ChunkSource<E>],
    b: Vec<f32>,
    tvs: Vec<Vec<f32>>,
    var: Vec<f32>,
    keep: Vec<f32>,
}

impl<'a, E> Pieces<'a, E> {
    fn new(n: usize, base: &'a dyn ChunkSource<E>, xs: &'a [&'a dyn ChunkSource<E>]) -> Self {
        let len = DRAW_CHUNK.min(n);
        Pieces {
            base,
            xs,
            b: vec![0.0; len],
            tvs: vec![vec![0.0; len]; xs.len()],
            var: vec![0.0; len],
            keep: vec![0.0; len],
        }
    }

    /// Reads the piece at `start` of `len` elements: the base, `tv_i = rnd(x_i - b)` and the
    /// variance keys' values `|rnd(var)|`.
    fn read<P: Precision>(&mut self, start: usize, len: usize) -> Result<(), E> {
        let b = &mut self.b[..len];
        self.base.read(start, b)?;
        for (x, tv) in self.xs.iter().zip(&mut self.tvs) {
            let tv = &mut tv[..len];
            x.read(start, tv)?;
            tv.iter_mut().zip(b.iter()).for_each(|(t, &b)| *t = P::rnd(*t - b));
        }
        let tvs = &self.tvs;
        for (j, v) in self.var[..len].iter_mut().enumerate() {
            *v = P::rnd(variance(tvs.iter().map(|t| t[j]))).abs();
        }
        Ok(())
    }

    /// Calls `f(start, len, self)` for every piece of the chunk's `n` elements, read and with
    /// step 1 applied, in order.
    fn for_each_selected<P: Precision>(
        &mut self,
        n: usize,
        mut select: Select,
        mut f: impl FnMut(usize, usize, &Self) -> Result<(), E>,
    ) -> Result<(), E> {
        for start in (0..n).step_by(DRAW_CHUNK) {
            let len = DRAW_CHUNK.min(n - start);
            self.read::<P>(start, len)?;
            self.select(&mut select, len);
            f(start, len, self)?;
        }
        Ok(())
    }

    /// Applies step 1 to the piece just read (of `len` elements).
    fn select(&mut self, select: &mut Select, len: usize) {
        let factor: &[f32] = match select {
            Select::All => return,
            Select::Nothing => {
                self.keep[..len].fill(0.0);
                &self.keep[..len]
            }
            Select::TopK(m) => {
                m.mask(&self.var[..len], &mut self.keep[..len]);
                &self.keep[..len]
            }
        };
        for tv in &mut self.tvs {
            tv[..len].iter_mut().zip(factor).for_each(|(x, &k)| *x *= k);
        }
    }
}

/// Passes 1 and 2 over a chunk of `n` elements: the histogram of the high 16 bits of the
/// variance keys (`high = None`) or of the low 16 bits of those in bin `high`, and the count
/// of zero variances.
pub fn histogram<P: Precision, E>(
    n: usize,
    base: &dyn ChunkSource<E>,
    xs: &[&dyn ChunkSource<E>],
    high: Option<u16>,
) -> Result<(Histogram, u64), E> {
    let mut p = Pieces::new(n, base, xs);
    let (mut hc, mut lc) = match high {
        None => (Some(HighCounter::new()), None),
        Some(h) => (None, Some(LowCounter::new(h))),
    };
    let mut zeros = 0u64;
    for start in (0..n).step_by(DRAW_CHUNK) {
        let len = DRAW_CHUNK.min(n - start);
        p.read::<P>(start, len)?;
        let var = &p.var[..len];
        zeros += var.iter().filter(|&&v| v == 0.0).count() as u64;
        if let Some(c) = hc.as_mut() {
            c.add(var);
        }
        if let Some(c) = lc.as_mut() {
            c.add(var);
        }
    }
    let h = match (hc, lc) {
        (Some(c), _) => c.finish(),
        (_, Some(c)) => c.finish(),
        _ => Histogram::default(),
    };
    Ok((h, zeros))
}

/// Pass 3 over a chunk of `n` elements, which is elements `range_start .. range_start + n` of
/// a torch summation part of `part_len` elements: every task vector's f32 cascade partial of
/// `rnd(tv^2)` after step 1 (an error for a range not aligned to torch's cascade).
pub fn mean_squares<P: Precision, E>(
    part_len: usize,
    range_start: usize,
    n: usize,
    base: &dyn ChunkSource<E>,
    xs: &[&dyn ChunkSource<E>],
    select: Select,
) -> Result<Result<Vec<SumPartial>, String>, E> {
    let mut streams = Vec::new();
    for _ in xs {
        match PartialStream::new(SumKind::F32, part_len, range_start, n) {
            Ok(s) => streams.push(s),
            Err(e) => return Ok(Err(e)),
        }
    }
    let mut sq = vec![0.0f32; DRAW_CHUNK.min(n)];
    Pieces::new(n, base, xs).for_each_selected::<P>(n, select, |_, len, p| {
        for (tv, s) in p.tvs.iter().zip(&mut streams) {
            sq[..len]
                .iter_mut()
                .zip(&tv[..len])
                .for_each(|(q, &x)| *q = P::rnd(x * x));
            s.feed(&sq[..len]);
        }
        Ok(())
    })?;
    Ok(streams.into_iter().map(PartialStream::finish).collect())
}

/// Apply over a chunk of `n` elements that starts at element `offset` of a tensor whose first
/// `grouped` elements take torch's grouped dim-0 order, with step 3's weights `s`: calls
/// `sink(start, values)` for every finished piece (chunk-relative).
#[allow(clippy::too_many_arguments)]
pub fn apply<P: Precision, E>(
    n: usize,
    offset: usize,
    grouped: usize,
    base: &dyn ChunkSource<E>,
    xs: &[&dyn ChunkSource<E>],
    select: Select,
    s: &[f32],
    sink: &Sink<'_, E>,
) -> Result<(), E> {
    let mut out = vec![0.0f32; DRAW_CHUNK.min(n)];
    Pieces::new(n, base, xs).for_each_selected::<P>(n, select, |start, len, p| {
        let out = &mut out[..len];
        out.copy_from_slice(&p.b[..len]);
        let tvs: Vec<&[f32]> = p.tvs.iter().map(|t| &t[..len]).collect();
        combine_range::<P>(out, &tvs, offset + start, grouped, s);
        sink(start, out)
    })
}
