//! Sparsifiers of the task-arithmetic family: `magnitude` (TIES) and `random` (DARE).
//!
//! Both operate in place on one task vector `delta` whose values are already in the working
//! dtype. With `density >= 1` the delta is left untouched and no random words are consumed.

use super::magnitude_select::{self, Plan, WHOLE_SEGMENT};
use super::precision::{Precision, round_bf16};
use super::torch_sum::{DEFAULT_THREADS, torch_combine_bf16, torch_combine_f16, torch_combine_f32, torch_sum_rounded};
use crate::rng::{Mt19937, bernoulli_keep};
use rayon::prelude::*;

/// Which sparsifier a method uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsifier {
    /// Keep the `max(1, floor(density * n))` largest magnitudes (TIES); ties at the threshold
    /// are broken lowest index first (see [`super::magnitude_select`]).
    Magnitude,
    /// Keep each element with probability `density` (DARE), MT19937 Bernoulli draws.
    Random,
    /// Drop the `gamma` fraction of largest magnitudes and then the smallest ones, keeping
    /// `floor(density * n)` (breadcrumbs; [`super::breadcrumbs`]).
    MagnitudeOutliers,
    /// Keep each element with a probability that grows with its magnitude's rank in its row
    /// (DELLA; [`super::della`]), MT19937 Bernoulli draws.
    DellaMagprune,
}

impl Sparsifier {
    /// True when the sparsifier draws random words.
    pub fn is_random(self) -> bool {
        matches!(self, Sparsifier::Random | Sparsifier::DellaMagprune)
    }

    /// True when an input of this density consumes `numel` random words: DARE draws for every
    /// `density < 1` (even `<= 0`), DELLA only for `0 < density < 1`; the others never.
    pub fn draws(self, density: f64) -> bool {
        match self {
            Sparsifier::Random => density < 1.0,
            Sparsifier::DellaMagprune => super::della::draws(density),
            Sparsifier::Magnitude | Sparsifier::MagnitudeOutliers => false,
        }
    }
}

const RESCALE_EPS: f32 = 1e-7;

/// Number of elements the magnitude sparsifier keeps: `max(1, floor(density * n))`.
pub fn magnitude_keep_count(n: usize, density: f64) -> usize {
    ((density * n as f64) as usize).max(1).min(n)
}

/// Keep-mask (1.0 kept, 0.0 dropped) of the top-`k` magnitudes of `delta`, ranked as f32 by
/// [`magnitude_select::key`] (the bits of `|x|`, so every NaN ranks above `+inf`).
/// Ties at the threshold are broken **lowest index first**: among elements whose magnitude
/// equals the k-th largest, the ones with the smallest indices are kept. (torch breaks them
/// arbitrarily with an unstable sort; this rule is reproducible and is the one the chunked
/// selection of [`magnitude_select`] implements, with identical results.)
/// `density >= 1` keeps everything; `density <= 0` keeps nothing.
pub fn magnitude_mask(delta: &[f32], density: f64) -> Vec<f32> {
    let n = delta.len();
    match magnitude_select::plan(n as u64, density) {
        Plan::Unchanged => vec![1.0; n],
        Plan::Zeros => vec![0.0; n],
        Plan::TopK(k) => {
            let mut mask = vec![0.0f32; n];
            let masks = magnitude_select::whole_tensor_masks(delta, k);
            mask.par_chunks_mut(WHOLE_SEGMENT)
                .zip(delta.par_chunks(WHOLE_SEGMENT))
                .zip(masks)
                .for_each(|((m, d), mut cm)| cm.mask(d, m));
            mask
        }
    }
}

/// Keeps the top-`k` magnitudes of `delta` (`k = max(1, floor(density * n))`, ties at the
/// threshold broken lowest index first, as [`magnitude_mask`]) and drops the rest as torch's
/// `delta * mask` does (`x * 0.0`, so signs of zeros follow torch). With `rescale`, the L1
/// rescale of §4.7 follows in precision `P`. `density >= 1` leaves `delta` untouched (no
/// rescale); `density <= 0` or an empty tensor gives `+0.0` everywhere.
pub fn magnitude<P: Precision>(delta: &mut [f32], density: f64, rescale: bool) {
    let k = match magnitude_select::plan(delta.len() as u64, density) {
        Plan::Unchanged => return,
        Plan::Zeros => {
            delta.fill(0.0);
            return;
        }
        Plan::TopK(k) => k,
    };
    let before = if rescale { l1::<P>(delta) } else { 0.0 };
    let masks = magnitude_select::whole_tensor_masks(delta, k);
    delta
        .par_chunks_mut(WHOLE_SEGMENT)
        .zip(masks)
        .for_each(|(d, mut cm)| cm.apply(d));
    if rescale {
        rescale_l1::<P>(delta, before);
    }
}

/// Bernoulli-drops elements of `delta` with keep probability `density`, drawing one MT19937
/// word per element in row-major order from `rng`. The mask and rescale run in bf16 for bf16
/// deltas and in f32 otherwise (torch's CPU rule), then the result is rounded back to `W`.
pub fn random<P: Precision>(delta: &mut [f32], density: f64, rescale: bool, rng: &mut Mt19937) {
    if density >= 1.0 {
        return;
    }
    random_segmented::<P>(delta, density, rescale, rng, RNG_SEGMENT);
}

fn random_segmented<P: Precision>(delta: &mut [f32], density: f64, rescale: bool, rng: &mut Mt19937, segment: usize) {
    if P::DTYPE == super::WorkDType::Bf16 {
        random_in::<P>(delta, round_bf16(density as f32), rescale, rng, segment);
    } else {
        random_in::<super::precision::F32>(delta, density as f32, rescale, rng, segment);
        if P::DTYPE != super::WorkDType::F32 {
            delta.iter_mut().for_each(|d| *d = P::rnd(*d));
        }
    }
}

/// Sum of `|x|` over a tensor of precision `P`, in torch's CPU summation order, rounded to `P`.
pub(crate) fn l1<P: Precision>(xs: &[f32]) -> f32 {
    torch_sum_rounded::<P>(xs, f32::abs, DEFAULT_THREADS)
}

/// Elements per independently generated segment of the random stream. Segments after the
/// first reach their position by jump-ahead, so large tensors draw their mask in parallel.
const RNG_SEGMENT: usize = 1 << 24;

fn random_in<Q: Precision>(delta: &mut [f32], p: f32, rescale: bool, rng: &mut Mt19937, seg: usize) {
    let before = if rescale { l1::<Q>(delta) } else { 0.0 };
    let start = rng.clone();
    delta.par_chunks_mut(seg).enumerate().for_each(|(si, segment)| {
        let mut r = start.clone();
        if si > 0 {
            r.jump((si * seg) as u64);
        }
        let mut words = vec![0u32; 1 << 16];
        for chunk in segment.chunks_mut(1 << 16) {
            let w = &mut words[..chunk.len()];
            r.fill_u32(w);
            for (d, &word) in chunk.iter_mut().zip(w.iter()) {
                let m = if bernoulli_keep(word, p) { 1.0 } else { 0.0 };
                *d = Q::rnd(*d * m);
            }
        }
    });
    rng.jump(delta.len() as u64);
    if !rescale {
        return;
    }
    let after = l1::<Q>(delta);
    if before < RESCALE_EPS || after < RESCALE_EPS {
        return;
    }
    let scale = Q::rnd(before / after);
    delta
        .par_chunks_mut(1 << 15)
        .for_each(|c| c.iter_mut().for_each(|d| *d = Q::rnd(*d * scale)));
}

/// The L1 rescale of an already masked `delta` in precision `P`, given `before = rnd(sum|delta|)`
/// of the unmasked one: multiply by `rnd(before / rnd(sum|masked|))` unless either norm is
/// below 1e-7. (Masking by multiplication is exact for values already in `P`: kept values are
/// unchanged and dropped ones are signed zeros or NaN, so no rounding happens before this.)
pub(crate) fn rescale_l1<P: Precision>(delta: &mut [f32], before: f32) {
    let after = l1::<P>(delta);
    if before < RESCALE_EPS || after < RESCALE_EPS {
        return;
    }
    let scale = P::rnd(before / after);
    for d in delta.iter_mut() {
        *d = P::rnd(*d * scale);
    }
}

/// The factor of [`rescale_l1`] in precision `P` from the serial kernel values of the
/// [`super::torch_sum::torch_parts`] of `|delta|` (`before`) and of the masked `|delta|`
/// (`after`) over `n` elements: what a chunked TIES rescale combines its statistics into.
/// `None` when either norm is below 1e-7 (no rescale).
pub(crate) fn rescale_factor<P: Precision>(n: usize, before: &[f32], after: &[f32]) -> Option<f32> {
    let l1 = |partials: &[f32]| match P::DTYPE {
        super::WorkDType::F32 => torch_combine_f32(n, partials, DEFAULT_THREADS),
        super::WorkDType::Bf16 => P::rnd(torch_combine_bf16(n, partials, DEFAULT_THREADS)),
        super::WorkDType::F16 => P::rnd(torch_combine_f16(n, partials, DEFAULT_THREADS)),
    };
    let (before, after) = (l1(before), l1(after));
    if before < RESCALE_EPS || after < RESCALE_EPS {
        return None;
    }
    Some(P::rnd(before / after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::{Bf16, F32};

    #[test]
    fn magnitude_keeps_exactly_k_largest() {
        let mut d = vec![0.5f32, -3.0, 1.0, 2.0, -0.25, 0.75];
        magnitude::<F32>(&mut d, 0.5, false);
        assert_eq!(d, vec![0.0, -3.0, 1.0, 2.0, -0.0, 0.0]);
        assert!(d[4].is_sign_negative());
    }

    #[test]
    fn magnitude_keeps_at_least_one_and_handles_edges() {
        let mut d = vec![0.1f32, -0.2, 0.05];
        magnitude::<F32>(&mut d, 0.01, false);
        assert_eq!(d, vec![0.0, -0.2, 0.0]);
        let mut z = vec![1.0f32, 2.0];
        magnitude::<F32>(&mut z, 0.0, false);
        assert_eq!(z, vec![0.0, 0.0]);
        let mut same = vec![1.0f32, 2.0];
        magnitude::<F32>(&mut same, 1.0, true);
        assert_eq!(same, vec![1.0, 2.0]);
    }

    #[test]
    fn random_rescale_restores_l1_and_consumes_one_word_per_element() {
        let mut d: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0).collect();
        let l1: f32 = d.iter().map(|x| x.abs()).sum();
        let mut rng = Mt19937::new(42);
        random::<F32>(&mut d, 0.5, true, &mut rng);
        let l1_after: f32 = d.iter().map(|x| x.abs()).sum();
        assert!((l1 - l1_after).abs() / l1 < 1e-4, "{l1} vs {l1_after}");
        let mut reference = Mt19937::new(42);
        let mut skip = vec![0u32; 1000];
        reference.fill_u32(&mut skip);
        assert_eq!(rng.next_u32(), reference.next_u32());
        let zeros = d.iter().filter(|x| **x == 0.0).count();
        assert!(zeros > 350 && zeros < 650, "{zeros}");
    }

    #[test]
    fn segmented_draws_equal_one_sequential_stream() {
        let d: Vec<f32> = (0..10_007)
            .map(|i| ((i * 7919 % 2003) as f32 - 1000.0) / 512.0)
            .collect();
        let mut one = d.clone();
        let mut many = d.clone();
        let mut r1 = Mt19937::at_offset(11, 123_456);
        let mut r2 = r1.clone();
        random_segmented::<Bf16>(&mut one, 0.53, true, &mut r1, usize::MAX / 2);
        random_segmented::<Bf16>(&mut many, 0.53, true, &mut r2, 1000);
        assert_eq!(one, many);
        assert_eq!(r1.next_u32(), r2.next_u32(), "both streams end at the same position");
    }

    #[test]
    fn random_mask_follows_the_24_bit_rule() {
        let mut d = vec![1.0f32; 64];
        let mut rng = Mt19937::new(7);
        let mut words = vec![0u32; 64];
        Mt19937::new(7).fill_u32(&mut words);
        random::<Bf16>(&mut d, 0.53, false, &mut rng);
        for (x, w) in d.iter().zip(&words) {
            let keep = ((w & 0xFF_FFFF) as f32) * (1.0 / 16_777_216.0) < 0.53125;
            assert_eq!(*x == 1.0, keep);
        }
    }
}
