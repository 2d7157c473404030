//! `nearswap` (semantics §4.11): take the other model where it is within `t` of the base,
//! interpolate towards the base where it is farther. Elementwise in the working dtype `W`:
//!
//! `w = clamp(rnd(rnd(1 / max(rnd(|a - y|), rnd(1e-6))) * f32(t)), 0, 1)` and
//! output `rnd(rnd(w * y) + rnd(rnd(1 - w) * a))`, with `a` the base and `y` the other model.
//! (torch evaluates `t / x` as `reciprocal(x) * t`, and `1 - w` as `rsub`.)

use super::precision::Precision;
use rayon::prelude::*;

/// Merges base `a` (overwritten with the result) and the other model `y`.
pub fn merge<P: Precision>(a: &mut [f32], y: &[f32], t: f64) {
    let t = t as f32;
    let floor = P::rnd(1e-6);
    a.par_chunks_mut(1 << 15).zip(y.par_chunks(1 << 15)).for_each(|(a, y)| {
        for (a, &y) in a.iter_mut().zip(y) {
            let diff = P::rnd((*a - y).abs()).max(floor);
            let w = P::rnd(P::rnd(1.0 / diff) * t).clamp(0.0, 1.0);
            *a = P::rnd(P::rnd(w * y) + P::rnd(P::rnd(1.0 - w) * *a));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::F32;

    #[test]
    fn close_elements_swap_and_far_ones_interpolate() {
        let mut a = vec![0.0f32, 0.0, 1.0];
        merge::<F32>(&mut a, &[0.1, 1.0, 1.0], 0.25);
        // |diff| 0.1 <= t: w = 1 (take y); 1.0: w = 0.25; equal: w = 1.
        assert_eq!(a, [0.1, 0.25, 1.0]);
        let mut z = vec![2.0f32];
        merge::<F32>(&mut z, &[4.0], 0.0);
        assert_eq!(z, [2.0]);
    }
}
