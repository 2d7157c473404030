//! The `magnitude_outliers` sparsifier of `breadcrumbs` and `breadcrumbs_ties` (semantics §4.7).
//!
//! With `n` elements, `keep = trunc(density * n)`, `top = trunc(gamma * n)` and
//! `bottom = max(0, n - keep - top)`, the magnitudes `|delta|` (ranked as f32) are sorted
//! ascending and the elements at sorted positions `bottom .. bottom + keep` survive (a Python
//! slice, so out-of-range bounds are clipped the way Python clips them). The rest are zeroed by
//! multiplication (`x * 0.0`, so signs of zeros follow torch) and, with `rescale`, the survivors
//! are rescaled to the original L1 norm in the working precision. `density >= 1` leaves the
//! delta untouched (no outlier removal, no rescale).
//!
//! Equal magnitudes at either end of the kept range are ordered lowest index first; torch's
//! unstable sort orders them arbitrarily, so only tie-free inputs (f32 data in practice) can be
//! byte-identical to mergekit. The kept range is found without a sort, by the radix select of
//! [`super::outlier_select`] that chunk tasks also run.

use super::magnitude_select::WHOLE_SEGMENT;
use super::outlier_select;
use super::precision::Precision;
use super::sparsify::{l1, rescale_l1};
use rayon::prelude::*;
use std::ops::Range;

/// Sorted positions (ascending magnitude) that survive in a tensor of `n` elements.
pub fn kept_positions(n: usize, density: f64, gamma: f64) -> Range<usize> {
    let nf = n as f64;
    let n = n as i64;
    let keep = (density * nf) as i64;
    let top = (gamma * nf) as i64;
    let bottom = (n - keep - top).max(0);
    py_slice(bottom, bottom + keep, n)
}

/// The elements `list[start:stop]` of a Python list of length `n` selects.
fn py_slice(start: i64, stop: i64, n: i64) -> Range<usize> {
    let clip = |i: i64| if i < 0 { (i + n).max(0) } else { i.min(n) };
    let (a, b) = (clip(start), clip(stop));
    a as usize..b.max(a) as usize
}

/// Keep-mask (1.0 kept, 0.0 dropped) of `delta`: the elements whose ascending magnitude rank
/// (ties lowest index first) lies in [`kept_positions`]. `density >= 1` keeps everything.
pub fn outliers_mask(delta: &[f32], density: f64, gamma: f64) -> Vec<f32> {
    let n = delta.len();
    let Some(window) = outlier_select::window(n as u64, density, gamma) else {
        return vec![1.0; n];
    };
    let mut mask = vec![0.0f32; n];
    mask.par_chunks_mut(WHOLE_SEGMENT)
        .zip(delta.par_chunks(WHOLE_SEGMENT))
        .zip(outlier_select::whole_tensor_masks(delta, window))
        .for_each(|((m, d), mut w)| w.mask(d, m));
    mask
}

/// Sparsifies `delta` (values in `P`) in place; see the module docs.
pub fn magnitude_outliers<P: Precision>(delta: &mut [f32], density: f64, gamma: f64, rescale: bool) {
    if density >= 1.0 {
        return;
    }
    let before = if rescale { l1::<P>(delta) } else { 0.0 };
    let mask = outliers_mask(delta, density, gamma);
    delta
        .par_chunks_mut(1 << 15)
        .zip(mask.par_chunks(1 << 15))
        .for_each(|(d, m)| d.iter_mut().zip(m).for_each(|(x, &m)| *x = P::rnd(*x * m)));
    if rescale {
        rescale_l1::<P>(delta, before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::F32;

    #[test]
    fn kept_range_drops_the_top_gamma_then_the_smallest() {
        assert_eq!(kept_positions(100, 0.5, 0.1), 40..90);
        // gamma * n < 1: nothing is removed at the top (0.1.5 fixed HEAD's empty slice).
        assert_eq!(kept_positions(10, 0.5, 0.01), 5..10);
        // Not enough room: the outlier cut shrinks so that `keep` elements survive.
        assert_eq!(kept_positions(10, 0.95, 0.1), 0..9);
        assert_eq!(kept_positions(10, 0.0, 0.1), 9..9);
        // Python slice clipping with a negative stop.
        assert_eq!(kept_positions(10, -0.1, 2.0), 0..9);
    }

    #[test]
    fn sparsifies_and_rescales() {
        let mut d = vec![0.1f32, -5.0, 0.3, -0.2, 0.4, 0.05];
        magnitude_outliers::<F32>(&mut d, 0.5, 0.2, false);
        // n = 6: keep 3, top 1, bottom 2: ascending |d| = 0.05 0.1 0.2 0.3 0.4 5.0 -> 0.2 0.3 0.4.
        assert_eq!(d, [0.0, -0.0, 0.3, -0.2, 0.4, 0.0]);
        let mut same = vec![1.0f32, 2.0];
        magnitude_outliers::<F32>(&mut same, 1.0, 0.5, true);
        assert_eq!(same, [1.0, 2.0]);
        let mut r = vec![1.0f32, 2.0, 3.0, 4.0];
        magnitude_outliers::<F32>(&mut r, 0.5, 0.0, true);
        // keeps 3 and 4 (L1 7), rescaled to L1 10.
        assert_eq!(r, [0.0, 0.0, 3.0 * (10.0 / 7.0), 4.0 * (10.0 / 7.0)]);
    }

    #[test]
    fn ties_are_kept_lowest_index_first() {
        let d = [1.0f32, 1.0, 1.0, 1.0];
        assert_eq!(outliers_mask(&d, 0.5, 0.25), [0.0, 1.0, 1.0, 0.0]);
    }
}
