//! Exact distributed top-k selection for the `magnitude` (TIES) sparsifier.
//!
//! One delta tensor of `n` elements keeps its `k` largest magnitudes (see [`plan`] and
//! semantics §4.7). Elements are ranked by [`key`], the bit pattern of `|x|` as f32, which
//! orders non-negative floats by value and puts every NaN above `+inf`. Ties at the threshold
//! are broken **lowest index first** (torch's unstable sort breaks them arbitrarily, so any
//! rule is faithful; this one is reproducible and splits over chunks).
//!
//! A tensor split into contiguous chunks (each seen by a different task) is selected by a
//! radix select on the keys:
//! 1. every chunk returns a [`HighCounter`] histogram of the high 16 bits of its keys; the
//!    planner [`merge`]s them and [`select_high`] gives the high bin holding the k-th largest
//!    key and the count of keys in higher bins;
//! 2. every chunk returns a [`LowCounter`] histogram of the low 16 bits of its keys in that
//!    high bin; [`merge`] and [`select_low`] give the exact threshold key and how many
//!    threshold-equal elements are kept in total;
//! 3. each chunk's count of threshold-equal elements ([`Histogram::count`] of the threshold's
//!    low 16 bits in its pass-2 histogram), in chunk order, goes through [`ties_per_chunk`];
//!    each chunk then applies a [`ChunkMask`] with its share of the ties (its first ones in
//!    index order).
//!
//! The whole-tensor kernel ([`super::sparsify::magnitude`]) runs the same steps in one process
//! over fixed segments ([`whole_tensor_masks`]), so chunked and whole results are identical by
//! construction.

use rayon::prelude::*;

/// Number of bins of either pass.
pub const BINS: usize = 1 << 16;

/// Ranking key of `x`: the bits of `|x|` as f32. Orders non-negative floats by value (`-0.0`
/// and `0.0` are equal), and every NaN (whatever its sign) above `+inf`.
#[inline(always)]
pub fn key(x: f32) -> u32 {
    x.abs().to_bits()
}

/// What the magnitude sparsifier does to a tensor of `n` elements at `density`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// `density >= 1`: the tensor is returned unchanged (and not rescaled).
    Unchanged,
    /// `density <= 0` or `n == 0`: every element becomes `+0.0`.
    Zeros,
    /// Keep the top `k = max(1, floor(density * n))` keys (`1 <= k <= n`).
    TopK(u64),
}

/// The magnitude sparsifier's decision for `n` elements at `density` (a NaN density keeps 1).
pub fn plan(n: u64, density: f64) -> Plan {
    if density >= 1.0 {
        Plan::Unchanged
    } else if density <= 0.0 || n == 0 {
        Plan::Zeros
    } else {
        Plan::TopK(((density * n as f64) as u64).clamp(1, n))
    }
}

/// A sparse histogram: bins ascending, counts > 0 (the wire form is two parallel repeated
/// fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Bins (each < 65536), strictly ascending.
    pub bins: Vec<u32>,
    /// Count of each bin, parallel to `bins`.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// Count of `bin` (0 if absent). Assumes ascending bins.
    pub fn count(&self, bin: u16) -> u64 {
        match self.bins.binary_search(&u32::from(bin)) {
            Ok(i) => self.counts.get(i).copied().unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Sum of the counts (saturating).
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.saturating_add(c))
    }
}

/// Checks a histogram's shape and returns its total count.
fn validate(h: &Histogram) -> Result<u64, String> {
    if h.bins.len() != h.counts.len() {
        return Err(format!(
            "histogram has {} bins but {} counts",
            h.bins.len(),
            h.counts.len()
        ));
    }
    let mut total = 0u64;
    for (i, (&b, &c)) in h.bins.iter().zip(&h.counts).enumerate() {
        if b as usize >= BINS {
            return Err(format!("histogram bin {b} is out of range (>= {BINS})"));
        }
        if i > 0 && h.bins[i - 1] >= b {
            return Err(format!(
                "histogram bins are not strictly ascending ({} then {b})",
                h.bins[i - 1]
            ));
        }
        total = total
            .checked_add(c)
            .ok_or_else(|| "histogram total overflows u64".to_string())?;
    }
    Ok(total)
}

/// Dense 65536-bin accumulator with the range of touched bins (so sparse output of a small
/// chunk does not scan every bin).
struct Dense {
    counts: Box<[u64; BINS]>,
    lo: usize,
    hi: usize,
}

impl Dense {
    fn new() -> Self {
        let counts: Box<[u64; BINS]> = vec![0u64; BINS].into_boxed_slice().try_into().expect("BINS elements");
        Dense {
            counts,
            lo: BINS,
            hi: 0,
        }
    }

    fn absorb(&mut self, other: &Dense) {
        if other.lo > other.hi {
            return;
        }
        for b in other.lo..=other.hi {
            self.counts[b] += other.counts[b];
        }
        self.lo = self.lo.min(other.lo);
        self.hi = self.hi.max(other.hi);
    }

    fn finish(&self) -> Histogram {
        let mut h = Histogram::default();
        if self.lo > self.hi {
            return h;
        }
        for b in self.lo..=self.hi {
            let c = self.counts[b];
            if c > 0 {
                h.bins.push(b as u32);
                h.counts.push(c);
            }
        }
        h
    }
}

/// Pass 1 accumulator: histogram of the high 16 bits of the keys, fed piece by piece.
pub struct HighCounter {
    dense: Dense,
}

impl Default for HighCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl HighCounter {
    /// An empty counter.
    pub fn new() -> Self {
        HighCounter { dense: Dense::new() }
    }

    /// Counts the keys of `deltas`.
    pub fn add(&mut self, deltas: &[f32]) {
        let d = &mut self.dense;
        let (mut lo, mut hi) = (d.lo, d.hi);
        for &x in deltas {
            let b = (key(x) >> 16) as usize;
            d.counts[b] += 1;
            lo = lo.min(b);
            hi = hi.max(b);
        }
        d.lo = lo;
        d.hi = hi;
    }

    /// Adds another counter's counts (as [`merge`] does for histograms).
    pub fn absorb(&mut self, other: &HighCounter) {
        self.dense.absorb(&other.dense);
    }

    /// The sparse histogram of everything added.
    pub fn finish(self) -> Histogram {
        self.dense.finish()
    }
}

/// Pass 2 accumulator: histogram of the low 16 bits of the keys whose high 16 bits equal
/// `high`, fed piece by piece.
pub struct LowCounter {
    high: u16,
    dense: Dense,
}

impl LowCounter {
    /// An empty counter of the keys in high bin `high`.
    pub fn new(high: u16) -> Self {
        LowCounter {
            high,
            dense: Dense::new(),
        }
    }

    /// Counts the keys of `deltas` in the high bin.
    pub fn add(&mut self, deltas: &[f32]) {
        let high = u32::from(self.high);
        let d = &mut self.dense;
        let (mut lo, mut hi) = (d.lo, d.hi);
        for &x in deltas {
            let k = key(x);
            if k >> 16 == high {
                let b = (k & 0xFFFF) as usize;
                d.counts[b] += 1;
                lo = lo.min(b);
                hi = hi.max(b);
            }
        }
        d.lo = lo;
        d.hi = hi;
    }

    /// Adds another counter's counts; both must count the same high bin.
    pub fn absorb(&mut self, other: &LowCounter) {
        assert_eq!(self.high, other.high, "low counters of different high bins");
        self.dense.absorb(&other.dense);
    }

    /// The sparse histogram (bins are the keys' low 16 bits) of everything added.
    pub fn finish(self) -> Histogram {
        self.dense.finish()
    }
}

/// Sums histograms. Each must have equal-length arrays and strictly ascending bins below
/// 65536. Zero counts are accepted and omitted from the result.
pub fn merge(hists: &[Histogram]) -> Result<Histogram, String> {
    let mut dense = vec![0u64; BINS];
    for (i, h) in hists.iter().enumerate() {
        validate(h).map_err(|e| format!("histogram {i}: {e}"))?;
        for (&b, &c) in h.bins.iter().zip(&h.counts) {
            let slot = &mut dense[b as usize];
            *slot = slot
                .checked_add(c)
                .ok_or_else(|| format!("merged count of bin {b} overflows u64"))?;
        }
    }
    let mut out = Histogram::default();
    for (b, &c) in dense.iter().enumerate() {
        if c > 0 {
            out.bins.push(b as u32);
            out.counts.push(c);
        }
    }
    Ok(out)
}

/// Pass-1 result: the high bin holding the k-th largest key and the count of keys in higher
/// bins. Errors if `merged` is malformed, `k == 0` or `k` exceeds its total.
pub fn select_high(k: u64, merged: &Histogram) -> Result<(u16, u64), String> {
    let total = validate(merged)?;
    if k == 0 || k > total {
        return Err(format!("k = {k} is out of range 1..={total}"));
    }
    let mut above = 0u64;
    for (&b, &c) in merged.bins.iter().zip(&merged.counts).rev() {
        if above + c >= k {
            return Ok((b as u16, above));
        }
        above += c;
    }
    unreachable!("k <= total")
}

/// Pass-2 result from the high bin, the count of keys above it and the merged low histogram:
/// `(threshold key, number of threshold-equal elements to keep in total)`. Errors if
/// `merged_low` is malformed, `k <= above`, or it holds fewer than `k - above` keys.
pub fn select_low(k: u64, high: u16, above: u64, merged_low: &Histogram) -> Result<(u32, u64), String> {
    let total = validate(merged_low)?;
    if k <= above {
        return Err(format!("k = {k} is not above the {above} keys of higher bins"));
    }
    let need = k - above;
    if need > total {
        return Err(format!(
            "high bin {high} holds {total} keys, fewer than the {need} still needed"
        ));
    }
    let mut cum = 0u64;
    for (&b, &c) in merged_low.bins.iter().zip(&merged_low.counts).rev() {
        if cum + c >= need {
            return Ok(((u32::from(high) << 16) | b, need - cum));
        }
        cum += c;
    }
    unreachable!("need <= total")
}

/// How many threshold-equal elements each chunk keeps, lowest index first, from each chunk's
/// count of them in chunk order: earlier chunks keep all of theirs until `keep_ties` is used
/// up. (If the counts sum to less than `keep_ties`, which consistent inputs never do, every
/// tie is kept.)
pub fn ties_per_chunk(keep_ties: u64, ties_in_chunk: &[u64]) -> Vec<u64> {
    let mut left = keep_ties;
    ties_in_chunk
        .iter()
        .map(|&t| {
            let take = t.min(left);
            left -= take;
            take
        })
        .collect()
}

/// The selection applied to one chunk, piece by piece in index order: keys above `threshold`
/// are kept, and so are the first `ties_left` keys equal to it; everything else is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMask {
    /// The threshold key (from [`select_low`]).
    pub threshold: u32,
    /// Threshold-equal elements still to keep in this chunk (from [`ties_per_chunk`]).
    pub ties_left: u64,
}

impl ChunkMask {
    /// The mask of a chunk that keeps `ties_left` threshold-equal elements.
    pub fn new(threshold: u32, ties_left: u64) -> Self {
        ChunkMask { threshold, ties_left }
    }

    /// Whether the next element (in index order) is kept.
    #[inline(always)]
    fn keep(&mut self, x: f32) -> bool {
        let k = key(x);
        if k > self.threshold {
            true
        } else if k == self.threshold && self.ties_left > 0 {
            self.ties_left -= 1;
            true
        } else {
            false
        }
    }

    /// Masks `deltas` in place: kept elements are untouched, dropped ones become `x * 0.0`
    /// (torch's `delta * mask`: a signed zero, NaN for a dropped ±inf or NaN).
    pub fn apply(&mut self, deltas: &mut [f32]) {
        for d in deltas {
            if !self.keep(*d) {
                *d *= 0.0;
            }
        }
    }

    /// Writes the keep bits of `deltas` (bit `i % 8` of byte `i / 8`, from byte 0 of `bits`;
    /// unused high bits of the last byte are 0). Only pieces whose length is a multiple of 8
    /// can be followed by another piece. Panics if `bits` is shorter than `ceil(len / 8)`.
    pub fn bits(&mut self, deltas: &[f32], bits: &mut [u8]) {
        write_bits(deltas, bits, |x| self.keep(x));
    }

    /// Writes the keep mask of `deltas` as 1.0 (kept) or 0.0 (dropped) into `mask[..len]`.
    pub fn mask(&mut self, deltas: &[f32], mask: &mut [f32]) {
        write_mask(deltas, mask, |x| self.keep(x));
    }
}

/// Writes `keep(x)` of every element of `deltas`, in order, as bits (bit `i % 8` of byte
/// `i / 8`; unused high bits of the last byte are 0). Panics if `bits` is too short.
pub(super) fn write_bits(deltas: &[f32], bits: &mut [u8], mut keep: impl FnMut(f32) -> bool) {
    let bytes = deltas.len().div_ceil(8);
    assert!(
        bits.len() >= bytes,
        "{} keep bits need {bytes} bytes, got {}",
        deltas.len(),
        bits.len()
    );
    for (byte, group) in bits.iter_mut().zip(deltas.chunks(8)) {
        let mut b = 0u8;
        for (j, &x) in group.iter().enumerate() {
            b |= u8::from(keep(x)) << j;
        }
        *byte = b;
    }
}

/// Writes `keep(x)` of every element of `deltas`, in order, as 1.0 or 0.0 into `mask`.
pub(super) fn write_mask(deltas: &[f32], mask: &mut [f32], mut keep: impl FnMut(f32) -> bool) {
    assert!(mask.len() >= deltas.len(), "mask shorter than the piece");
    for (m, &x) in mask.iter_mut().zip(deltas) {
        *m = if keep(x) { 1.0 } else { 0.0 };
    }
}

/// A counter made by `new` fed every segment (in parallel, then merged by `absorb`).
pub(super) fn histogram_of<C: Send>(
    segments: &[&[f32]],
    new: impl Fn() -> C + Sync + Send,
    add: impl Fn(&mut C, &[f32]) + Sync + Send,
    absorb: impl Fn(&mut C, &C) + Sync + Send,
) -> C {
    if let [one] = segments {
        // One segment (most tensors): no parallel counters to allocate and merge.
        let mut c = new();
        add(&mut c, one);
        return c;
    }
    segments
        .par_iter()
        .fold(&new, |mut c, s| {
            add(&mut c, s);
            c
        })
        .reduce(&new, |mut a, b| {
            absorb(&mut a, &b);
            a
        })
}

/// Segment length of [`whole_tensor_masks`].
pub const WHOLE_SEGMENT: usize = 1 << 20;

/// The chunked pipeline run in one process on a whole tensor, with its
/// [`WHOLE_SEGMENT`]-element segments as the chunks (in parallel): one [`ChunkMask`] per
/// segment, in order. `k` must be in `1..=deltas.len()`.
pub fn whole_tensor_masks(deltas: &[f32], k: u64) -> Vec<ChunkMask> {
    let segments: Vec<&[f32]> = deltas.chunks(WHOLE_SEGMENT).collect();
    let high = histogram_of(&segments, HighCounter::new, HighCounter::add, HighCounter::absorb);
    let (hb, above) = select_high(k, &high.finish()).expect("1 <= k <= n");
    let low = histogram_of(&segments, || LowCounter::new(hb), LowCounter::add, LowCounter::absorb);
    let (threshold, keep_ties) = select_low(k, hb, above, &low.finish()).expect("consistent passes");
    let ties: Vec<u64> = deltas
        .par_chunks(WHOLE_SEGMENT)
        .map(|s| s.iter().filter(|&&x| key(x) == threshold).count() as u64)
        .collect();
    ties_per_chunk(keep_ties, &ties)
        .into_iter()
        .map(|t| ChunkMask::new(threshold, t))
        .collect()
}

#[cfg(test)]
mod tests;
