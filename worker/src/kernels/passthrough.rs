//! `passthrough` (semantics §4.13): one input per tensor, copied, or multiplied by its
//! per-input `scale` when one resolves (`rnd(x * f32(scale))` in the working dtype). Used for
//! frankenmerges that stack layer ranges of different models with `slices`.

use super::precision::Precision;
use rayon::prelude::*;

/// Scales `x` in place by `scale` (nothing to do without one).
pub fn apply<P: Precision>(x: &mut [f32], scale: Option<f64>) {
    if let Some(s) = scale {
        let s = s as f32;
        x.par_iter_mut().for_each(|v| *v = P::rnd(*v * s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::precision::Bf16;

    #[test]
    fn scale_rounds_to_the_working_dtype_and_none_copies() {
        let mut x = vec![1.0f32, -3.0];
        apply::<Bf16>(&mut x, None);
        assert_eq!(x, [1.0, -3.0]);
        apply::<Bf16>(&mut x, Some(0.3));
        assert_eq!(x, [Bf16::rnd(0.3), Bf16::rnd(-0.9)]);
    }
}
