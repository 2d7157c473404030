//! Exact distributed selection for the `magnitude_outliers` sparsifier (breadcrumbs).
//!
//! breadcrumbs keeps the elements whose rank in the ascending order of `|delta|` lies in a
//! window `lower .. upper` ([`super::breadcrumbs::kept_positions`]): it drops the `gamma`
//! largest magnitudes and the smallest ones. Elements are ranked by
//! [`key`] with ties **lowest index first** (torch's unstable
//! sort orders them arbitrarily, so only tie-free inputs are byte-identical to mergekit).
//!
//! Each side of the window is a *cut* of the rank order at an ascending rank `r`: the elements
//! at or above it are those of the `n - r` largest keys, that is keys above the threshold key
//! of rank `r`, and of the keys equal to it all but the first `skip` in index order. The cut is
//! found with TIES' radix select ([`super::magnitude_select`]):
//! 1. the high 16-bit histogram of every chunk's keys (shared by both cuts) gives each cut's
//!    high bin ([`cut_high`]);
//! 2. each chunk's low 16-bit histogram in each cut's high bin gives the threshold key and how
//!    many threshold-equal elements rank below the cut ([`cut_low`]); each chunk's count of
//!    them, in chunk order, goes through [`ties_per_chunk`] (the first chunks take the first
//!    ties) to give the chunk's own `skip`;
//! 3. each chunk applies a [`WindowMask`]: at or above the lower cut and not at or above the
//!    upper one.
//!
//! The whole-tensor kernel runs the same steps over fixed segments ([`whole_tensor_masks`]),
//! so chunked and whole results are identical by construction.

use super::breadcrumbs::kept_positions;
use super::magnitude_select::{self, ChunkMask, HighCounter, Histogram, LowCounter, WHOLE_SEGMENT, histogram_of, key};
use rayon::prelude::*;

pub use magnitude_select::ties_per_chunk;

/// The ascending ranks of a window's cuts (`None`: no cut on that side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Rank of the first kept element (`None`: from the smallest).
    pub lower: Option<u64>,
    /// Rank of the first dropped element above the window (`None`: up to the largest).
    pub upper: Option<u64>,
}

/// The window breadcrumbs keeps of `n > 0` elements, or `None` when `density >= 1` (the delta
/// is returned unchanged). An empty window is an upper cut at rank 0 (every element is at or
/// above it, so none is kept).
pub fn window(n: u64, density: f64, gamma: f64) -> Option<Window> {
    if density >= 1.0 || n == 0 {
        return None;
    }
    let kept = kept_positions(n as usize, density, gamma);
    let (lo, hi) = (kept.start as u64, kept.end as u64);
    if lo >= hi {
        return Some(Window {
            lower: None,
            upper: Some(0),
        });
    }
    Some(Window {
        lower: (lo > 0).then_some(lo),
        upper: (hi < n).then_some(hi),
    })
}

/// Pass-1 result of the cut at `rank` (`rank < n`): the high bin of its threshold key and the
/// count of keys in higher bins.
pub fn cut_high(n: u64, rank: u64, merged_high: &Histogram) -> Result<(u16, u64), String> {
    if rank >= n {
        return Err(format!("cut rank {rank} is not below the {n} elements"));
    }
    magnitude_select::select_high(n - rank, merged_high)
}

/// Pass-2 result of the cut at `rank`: `(threshold key, threshold-equal elements below the
/// cut in total)`, from its high bin, the keys above that bin and the merged low histogram.
pub fn cut_low(n: u64, rank: u64, high: u16, above: u64, merged_low: &Histogram) -> Result<(u32, u64), String> {
    if rank >= n {
        return Err(format!("cut rank {rank} is not below the {n} elements"));
    }
    let (threshold, at_or_above) = magnitude_select::select_low(n - rank, high, above, merged_low)?;
    let equal = merged_low.count((threshold & 0xFFFF) as u16);
    Ok((threshold, equal - at_or_above))
}

/// One cut as a chunk applies it: keys above `threshold`, and threshold-equal keys after the
/// first `skip` of this chunk, are at or above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The threshold key.
    pub threshold: u32,
    /// Threshold-equal elements of this chunk (the first ones) that rank below the cut.
    pub skip: u64,
}

impl Cut {
    /// Whether the next element (in index order) with key `k` is at or above the cut.
    #[inline(always)]
    fn at_or_above(&mut self, k: u32) -> bool {
        if k != self.threshold {
            return k > self.threshold;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }
}

/// The window selection applied to one chunk, piece by piece in index order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowMask {
    /// The lower cut (`None`: every element is at or above it).
    pub lower: Option<Cut>,
    /// The upper cut (`None`: no element is at or above it).
    pub upper: Option<Cut>,
}

impl WindowMask {
    /// Whether the next element (in index order) is kept; both cuts see every element.
    #[inline(always)]
    fn keep(&mut self, x: f32) -> bool {
        let k = key(x);
        let above_lower = self.lower.as_mut().is_none_or(|c| c.at_or_above(k));
        let above_upper = self.upper.as_mut().is_some_and(|c| c.at_or_above(k));
        above_lower && !above_upper
    }

    /// Writes the keep mask of `deltas` as 1.0 (kept) or 0.0 (dropped) into `mask[..len]`.
    pub fn mask(&mut self, deltas: &[f32], mask: &mut [f32]) {
        magnitude_select::write_mask(deltas, mask, |x| self.keep(x));
    }

    /// Writes the keep bits of `deltas` as [`magnitude_select::ChunkMask::bits`] does.
    pub fn bits(&mut self, deltas: &[f32], bits: &mut [u8]) {
        magnitude_select::write_bits(deltas, bits, |x| self.keep(x));
    }
}

/// The magnitude selection one chunk applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectMask {
    /// TIES' top-k.
    TopK(ChunkMask),
    /// breadcrumbs' window.
    Window(WindowMask),
}

impl SelectMask {
    /// Writes the keep mask of the next `deltas` as 1.0 or 0.0 into `mask`.
    pub fn mask(&mut self, deltas: &[f32], mask: &mut [f32]) {
        match self {
            SelectMask::TopK(m) => m.mask(deltas, mask),
            SelectMask::Window(m) => m.mask(deltas, mask),
        }
    }

    /// Writes the keep bits of the next `deltas`.
    pub fn bits(&mut self, deltas: &[f32], bits: &mut [u8]) {
        match self {
            SelectMask::TopK(m) => m.bits(deltas, bits),
            SelectMask::Window(m) => m.bits(deltas, bits),
        }
    }
}

/// The chunked pipeline run in one process on a whole tensor (`deltas` non-empty), with its
/// [`WHOLE_SEGMENT`]-element segments as the chunks: one [`WindowMask`] per segment, in order.
pub fn whole_tensor_masks(deltas: &[f32], window: Window) -> Vec<WindowMask> {
    let n = deltas.len() as u64;
    let segments: Vec<&[f32]> = deltas.chunks(WHOLE_SEGMENT).collect();
    let high = histogram_of(&segments, HighCounter::new, HighCounter::add, HighCounter::absorb).finish();
    // One cut's threshold and each segment's skip.
    let cut = |rank: u64| -> Vec<Cut> {
        let (hb, above) = cut_high(n, rank, &high).expect("rank < n");
        let low = histogram_of(&segments, || LowCounter::new(hb), LowCounter::add, LowCounter::absorb).finish();
        let (threshold, skip) = cut_low(n, rank, hb, above, &low).expect("consistent passes");
        let ties: Vec<u64> = segments
            .par_iter()
            .map(|s| s.iter().filter(|&&x| key(x) == threshold).count() as u64)
            .collect();
        ties_per_chunk(skip, &ties)
            .into_iter()
            .map(|skip| Cut { threshold, skip })
            .collect()
    };
    let lower = window.lower.map(cut);
    let upper = window.upper.map(cut);
    (0..segments.len())
        .map(|i| WindowMask {
            lower: lower.as_ref().map(|c| c[i]),
            upper: upper.as_ref().map(|c| c[i]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window by sorting `(key, index)` pairs: the definition.
    fn by_sort(d: &[f32], density: f64, gamma: f64) -> Vec<bool> {
        let mut order: Vec<(u32, usize)> = d.iter().enumerate().map(|(i, &x)| (key(x), i)).collect();
        order.sort_unstable();
        let mut keep = vec![false; d.len()];
        for &(_, i) in &order[kept_positions(d.len(), density, gamma)] {
            keep[i] = true;
        }
        keep
    }

    fn by_masks(d: &[f32], density: f64, gamma: f64, segment: usize) -> Vec<bool> {
        let Some(w) = window(d.len() as u64, density, gamma) else {
            return vec![true; d.len()];
        };
        // Chunks of `segment` elements, as the chunk tasks would see them.
        let n = d.len() as u64;
        let chunks: Vec<&[f32]> = d.chunks(segment).collect();
        let mut high = HighCounter::new();
        chunks.iter().for_each(|c| high.add(c));
        let high = high.finish();
        let cut = |rank: u64| -> Vec<Cut> {
            let (hb, above) = cut_high(n, rank, &high).unwrap();
            let lows: Vec<Histogram> = chunks
                .iter()
                .map(|c| {
                    let mut l = LowCounter::new(hb);
                    l.add(c);
                    l.finish()
                })
                .collect();
            let merged = magnitude_select::merge(&lows).unwrap();
            let (threshold, skip) = cut_low(n, rank, hb, above, &merged).unwrap();
            let ties: Vec<u64> = lows.iter().map(|h| h.count((threshold & 0xFFFF) as u16)).collect();
            ties_per_chunk(skip, &ties)
                .into_iter()
                .map(|skip| Cut { threshold, skip })
                .collect()
        };
        let (lower, upper) = (w.lower.map(cut), w.upper.map(cut));
        let mut keep = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut m = WindowMask {
                lower: lower.as_ref().map(|l| l[i]),
                upper: upper.as_ref().map(|u| u[i]),
            };
            let mut out = vec![0.0; c.len()];
            m.mask(c, &mut out);
            keep.extend(out.iter().map(|&v| v == 1.0));
        }
        keep
    }

    #[test]
    fn chunked_cuts_equal_the_sorted_window_with_many_ties() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as i32
        };
        for n in [1usize, 2, 7, 100, 1000, 4099] {
            // Few distinct magnitudes (many ties), both signs, and a NaN.
            let mut d: Vec<f32> = (0..n).map(|_| ((next() % 9) - 4) as f32 * 0.25).collect();
            if n > 10 {
                d[3] = f32::NAN;
            }
            for (density, gamma) in [
                (0.5, 0.1),
                (0.9, 0.01),
                (0.1, 0.5),
                (0.0, 0.1),
                (0.99, 0.2),
                (-0.1, 2.0),
            ] {
                let want = by_sort(&d, density, gamma);
                for segment in [1, 3, 64, n] {
                    assert_eq!(
                        by_masks(&d, density, gamma, segment),
                        want,
                        "n {n} density {density} gamma {gamma} segment {segment}"
                    );
                }
            }
        }
    }

    #[test]
    fn windows_name_their_cuts() {
        assert_eq!(window(100, 1.0, 0.1), None);
        let w = window(100, 0.5, 0.1).unwrap();
        assert_eq!((w.lower, w.upper), (Some(40), Some(90)));
        // No top cut when gamma * n < 1: the window reaches the largest element.
        assert_eq!(window(10, 0.5, 0.01).unwrap().upper, None);
        // Nothing kept: an upper cut at rank 0.
        assert_eq!(
            window(10, 0.0, 0.1).unwrap(),
            Window {
                lower: None,
                upper: Some(0)
            }
        );
    }
}
