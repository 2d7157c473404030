//! Run-time selection of vector instruction sets for hot elementwise loops.
//!
//! The build targets baseline x86-64 (SSE2). [`simd_dispatch!`] compiles a loop a second and
//! third time for AVX2 and for AVX-512 and picks the widest the CPU supports. Vector width
//! never changes a result here: the loops use plain IEEE f32 operations and integer bit
//! manipulation, which Rust never contracts (no FMA) or reassociates, so every lane computes
//! exactly what the scalar code computes.

/// Defines `$vis fn $name<generics>(args)` that runs `$imp::<generics>(args)` (an
/// `#[inline(always)]` function, so its whole body is compiled for the chosen features).
macro_rules! simd_dispatch {
    (
        $(#[$doc:meta])* $vis:vis fn $name:ident<$($g:ident: $bound:path),*>($($arg:ident: $ty:ty),* $(,)?)
        => $imp:ident
    ) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$($g: $bound),*>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512dq")]
                fn avx512<$($g: $bound),*>($($arg: $ty),*) {
                    $imp::<$($g),*>($($arg),*)
                }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2")]
                fn avx2<$($g: $bound),*>($($arg: $ty),*) {
                    $imp::<$($g),*>($($arg),*)
                }
                if $crate::kernels::simd::has_avx512() {
                    // SAFETY: the CPU supports these features (checked by `has_avx512`).
                    return unsafe { avx512::<$($g),*>($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2::<$($g),*>($($arg),*) };
                }
            }
            $imp::<$($g),*>($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// Whether the CPU has the AVX-512 subsets the dispatched loops are compiled for.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
}
