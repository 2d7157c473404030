//! Bit-exact emulation of torch's CPU `sum()` of a contiguous float32 or bfloat16 tensor.
//!
//! mergekit's DARE rescale compares `delta.abs().sum()` with `masked.abs().sum()`; an f64 sum
//! rounded to f32 differs from torch in the last bits often enough to break bit-exactness, so this
//! module replays torch's summation order (ATen `cascade_sum`, `SumKernel.cpp`, torch 2.15.0).
//!
//! The order, as established against torch 2.15.0 on this AVX512 x86-64 host (ATen registers no
//! AVX512 `sum_stub`, so the AVX2 build runs and vectors hold **8 f32 lanes**):
//!
//! * **Vector loads.** A float32 "vector" is 8 consecutive elements. A bfloat16 vector covers 16
//!   elements: it is widened to two 8-lane f32 halves that are added lane-wise, so lane `l` of
//!   vector `m` is `x[16m + l] + x[16m + 8 + l]`. Inputs shorter than one vector (8 resp. 16
//!   elements) skip the vector path and are summed as scalars by the same cascade below.
//! * **ILP rows.** The `n / width` whole vectors are viewed as rows of 4 vectors; 4 independent
//!   accumulators (one per column) receive the rows. Vectors left over after the last full row
//!   are added to accumulator 0, then the result is `((a0 + a1) + a2) + a3` lane-wise.
//! * **Cascade levels.** For `rows` rows, `p = max(4, ceil_log2(rows) / 4)` (`ceil_log2(x) = 1`
//!   for `x <= 2`). Rows are added into a level-0 accumulator in blocks of `2^p`; after each block,
//!   level 0 is added into level 1 and cleared; if the block count is a multiple of `2^p`, level 1
//!   is then carried into level 2 and cleared, and if it is a multiple of `2^2p`, level 2 into
//!   level 3 (never cleared). Rows after the last full block go into level 0, and finally level 0
//!   gets `+ l1`, `+ l2`, `+ l3`. (`p` is 4 up to 2^19 rows, 5 up to 2^23, 6 up to 2^27.)
//! * **Scalar tail and lane fold.** A fresh f32 accumulator (starting at 0) first adds the
//!   `n % width` trailing elements in order, then the 8 lanes from lane 0 up. The output (a zero
//!   tensor of the input dtype) receives `0 + acc`, rounded to bf16 for bfloat16 tensors.
//! * **Threads.** With `T > 1` threads and `n >= 32768` (ATen's `GRAIN_SIZE`), torch uses a
//!   two-pass reduction: `k = min(T, ceil(n / 32768))` threads each sum a contiguous chunk of
//!   `ceil(n / k)` elements (the last one shorter) into a buffer of `T` zeros **of the input dtype**
//!   (so bf16 partials are rounded to bf16), then the buffer is summed with the same cascade. With
//!   the default `T = 2` on a 2-core machine, any `n > 32768` is split in two halves at
//!   `ceil(n / 2)`; `n == 32768` still runs on one thread (identical f32 result; for bf16 the
//!   returned pre-rounding value is then already bf16-rounded, which rounds to the same bf16).
//!   Below 32768 elements the thread count does not matter.
//!
//! All additions are plain IEEE f32 adds, which Rust never reassociates or fuses, so the order
//! above is reproduced exactly (the lane arrays still auto-vectorise).

/// Lanes in torch's `Vectorized<float>` for the sum kernel on this machine (AVX2 build).
pub(super) const LANES: usize = 8;
/// Independent accumulators per row (`ilp_factor` in ATen).
pub(super) const ILP: usize = 4;
/// Cascade depth (`num_levels` in ATen).
pub(super) const LEVELS: usize = 4;
/// `at::internal::GRAIN_SIZE`: reductions of at least this many elements go through the
/// two-pass (per-thread buffer) reduction when more than one thread is available.
pub const GRAIN_SIZE: usize = 32768;
/// Thread count the plain entry points emulate (`torch.get_num_threads()` on the 2-core host).
pub const DEFAULT_THREADS: usize = 2;

pub(super) type V = [f32; LANES];

/// An accumulator: either one f32 or one vector of lanes.
pub(super) trait Acc: Copy {
    const ZERO: Self;
    fn add(self, o: Self) -> Self;
}

impl Acc for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
}

impl Acc for V {
    const ZERO: Self = [0.0; LANES];
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        std::array::from_fn(|l| self[l] + o[l])
    }
}

/// How one accumulator value is loaded from the input: `WIDTH` elements become one `A`.
pub(super) trait Load {
    type A: Acc;
    const WIDTH: usize;
    fn load(s: &[f32], f: &impl Fn(f32) -> f32) -> Self::A;
}

/// Scalar loads (inputs shorter than one vector, and the scalar tail).
pub(super) struct Scalar;
impl Load for Scalar {
    type A = f32;
    const WIDTH: usize = 1;
    #[inline(always)]
    fn load(s: &[f32], f: &impl Fn(f32) -> f32) -> f32 {
        f(s[0])
    }
}

/// float32 vector loads: 8 consecutive elements.
pub(super) struct F32Vec;
impl Load for F32Vec {
    type A = V;
    const WIDTH: usize = LANES;
    #[inline(always)]
    fn load(s: &[f32], f: &impl Fn(f32) -> f32) -> V {
        std::array::from_fn(|l| f(s[l]))
    }
}

/// bfloat16 vector loads: 16 elements widened to two 8-lane halves, added lane-wise.
pub(super) struct Bf16Vec;
impl Load for Bf16Vec {
    type A = V;
    const WIDTH: usize = 2 * LANES;
    #[inline(always)]
    fn load(s: &[f32], f: &impl Fn(f32) -> f32) -> V {
        std::array::from_fn(|l| f(s[l]) + f(s[LANES + l]))
    }
}

/// `utils::CeilLog2`: ceil(log2(x)), but 1 for x <= 2.
pub(super) fn ceil_log2(x: usize) -> u32 {
    if x <= 2 {
        1
    } else {
        usize::BITS - (x - 1).leading_zeros()
    }
}

/// Adds the 4 loads of one ILP row (`ILP * L::WIDTH` elements) into `acc`.
#[inline(always)]
pub(super) fn add_row<L: Load>(acc: &mut [L::A; ILP], row: &[f32], f: &impl Fn(f32) -> f32) {
    for (k, a) in acc.iter_mut().enumerate() {
        *a = a.add(L::load(&row[k * L::WIDTH..(k + 1) * L::WIDTH], f));
    }
}

/// ATen `multi_row_sum` with 4 rows: cascade sum over `data.len() / (ILP * WIDTH)` ILP rows.
fn multi_row_sum<L: Load>(data: &[f32], f: &impl Fn(f32) -> f32) -> [L::A; ILP] {
    let row_len = ILP * L::WIDTH;
    let rows = data.len() / row_len;
    let power = (ceil_log2(rows) / LEVELS as u32).max(4);
    let step = 1usize << power;
    let mask = step - 1;
    let mut acc = [[L::A::ZERO; ILP]; LEVELS];
    let mut i = 0;
    while i + step <= rows {
        for row in data[i * row_len..(i + step) * row_len].chunks_exact(row_len) {
            add_row::<L>(&mut acc[0], row, f);
        }
        i += step;
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (hi, lo) in upper[0].iter_mut().zip(&mut lower[j - 1]) {
                *hi = hi.add(*lo);
                *lo = L::A::ZERO;
            }
            if i & (mask << (j as u32 * power)) != 0 {
                break;
            }
        }
    }
    for row in data[i * row_len..rows * row_len].chunks_exact(row_len) {
        add_row::<L>(&mut acc[0], row, f);
    }
    let mut out = acc[0];
    for level in &acc[1..] {
        for (o, &l) in out.iter_mut().zip(level) {
            *o = o.add(l);
        }
    }
    out
}

/// ATen `row_sum`: sums the `data.len() / WIDTH` loads of `data` (whole loads only).
pub(super) fn row_sum<L: Load>(data: &[f32], f: &impl Fn(f32) -> f32) -> L::A {
    let loads = data.len() / L::WIDTH;
    let ilp_elems = loads / ILP * ILP * L::WIDTH;
    let mut p = multi_row_sum::<L>(&data[..ilp_elems], f);
    for s in data[ilp_elems..loads * L::WIDTH].chunks_exact(L::WIDTH) {
        p[0] = p[0].add(L::load(s, f));
    }
    p[1..].iter().fold(p[0], |a, &b| a.add(b))
}

/// One serial kernel call over `xs`: the f32 value that gets added to the (zero) output.
pub(super) fn kernel<L: Load<A = V>>(xs: &[f32], f: &impl Fn(f32) -> f32) -> f32 {
    if xs.len() < L::WIDTH {
        return row_sum::<Scalar>(xs, f);
    }
    let vec_elems = xs.len() / L::WIDTH * L::WIDTH;
    let lanes = row_sum::<L>(&xs[..vec_elems], f);
    let tail = xs[vec_elems..].iter().fold(0.0f32, |a, &x| a + f(x));
    lanes.iter().fold(tail, |a, &l| a + l)
}

/// Round to nearest bf16, ties to even (c10::BFloat16's conversion), as f32.
pub(super) fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return f32::from_bits(0x7FC0_0000);
    }
    let b = x.to_bits();
    f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
}

/// The contiguous element ranges torch sums independently for `n` elements with `threads`
/// threads (one range unless the two-pass reduction applies); see the module docs.
pub fn torch_parts(n: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    if n < GRAIN_SIZE || threads <= 1 {
        return std::iter::once(0..n).collect();
    }
    let used = threads.min(n.div_ceil(GRAIN_SIZE));
    let chunk = n.div_ceil(used);
    (0..n).step_by(chunk).map(|s| s..(s + chunk).min(n)).collect()
}

/// Combines the serial kernel values of the [`torch_parts`] of `n` elements into the f32 value
/// torch adds to the zero output; `store` rounds a value stored into the input dtype.
fn combine<L: Load<A = V>>(n: usize, partials: &[f32], threads: usize, store: fn(f32) -> f32) -> f32 {
    if n < GRAIN_SIZE || threads <= 1 {
        return 0.0 + partials[0];
    }
    let mut buffer = vec![0.0f32; threads];
    for (slot, &p) in buffer.iter_mut().zip(partials) {
        *slot = store(0.0 + p);
    }
    0.0 + kernel::<L>(&buffer, &|x| x)
}

/// [`torch_sum_f32_threads`] from the serial kernel values of its [`torch_parts`] (as returned
/// by [`super::torch_sum_stream::TorchSumStream::finish`]).
pub fn torch_combine_f32(n: usize, partials: &[f32], threads: usize) -> f32 {
    combine::<F32Vec>(n, partials, threads, |x| x)
}

/// [`torch_sum_bf16_threads`] from the serial kernel values of its [`torch_parts`].
pub fn torch_combine_bf16(n: usize, partials: &[f32], threads: usize) -> f32 {
    combine::<Bf16Vec>(n, partials, threads, round_bf16)
}

/// `cascade_sum` under `parallel_reduce` with `threads` threads; `store` rounds a value stored
/// into a tensor of the input dtype. Returns the f32 value last added to the zero output.
/// torch's per-thread partial sums are independent, so they are computed in parallel here too.
fn reduce<L: Load<A = V>>(xs: &[f32], f: &(impl Fn(f32) -> f32 + Sync), threads: usize, store: fn(f32) -> f32) -> f32 {
    let parts = torch_parts(xs.len(), threads);
    let partials: Vec<f32> = if let [a, b] = &parts[..] {
        let (pa, pb) = rayon::join(|| kernel::<L>(&xs[a.clone()], f), || kernel::<L>(&xs[b.clone()], f));
        vec![pa, pb]
    } else {
        parts.iter().map(|r| kernel::<L>(&xs[r.clone()], f)).collect()
    };
    combine::<L>(xs.len(), &partials, threads, store)
}

/// f32 sum of `f(x)` over `xs` in exactly torch's CPU order for a contiguous float32 tensor
/// (`torch.get_num_threads() == 2`, see [`torch_sum_f32_threads`]).
pub fn torch_sum_f32(xs: &[f32], f: impl Fn(f32) -> f32 + Sync) -> f32 {
    torch_sum_f32_threads(xs, f, DEFAULT_THREADS)
}

/// The f32 accumulator value torch produces when summing a contiguous bfloat16 tensor (values
/// given as f32), before the final rounding to bf16 (`torch.get_num_threads() == 2`).
///
/// `f(x)` must be exactly representable in bf16 (e.g. `f32::abs` of a bf16 value), as torch
/// applies it in bf16 before summing. Rounding the result to bf16 (ties to even) gives torch's
/// bf16 `sum()`. For more than 32768 elements the value is `bf16(s0) + bf16(s1)`: torch rounds
/// each thread's partial sum to bf16 before adding them.
pub fn torch_sum_bf16(xs: &[f32], f: impl Fn(f32) -> f32 + Sync) -> f32 {
    torch_sum_bf16_threads(xs, f, DEFAULT_THREADS)
}

/// [`torch_sum_f32`] for a torch process running `threads` intra-op threads (0 acts as 1).
pub fn torch_sum_f32_threads(xs: &[f32], f: impl Fn(f32) -> f32 + Sync, threads: usize) -> f32 {
    reduce::<F32Vec>(xs, &f, threads, |x| x)
}

/// [`torch_sum_bf16`] for a torch process running `threads` intra-op threads.
pub fn torch_sum_bf16_threads(xs: &[f32], f: impl Fn(f32) -> f32 + Sync, threads: usize) -> f32 {
    reduce::<Bf16Vec>(xs, &f, threads, round_bf16)
}

/// The f32 accumulator value torch produces when summing a contiguous float16 tensor (values
/// given as f32), before the final rounding to f16. torch loads float16 vectors exactly as
/// bfloat16 ones (16 elements widened to two f32 halves added lane-wise); only the per-thread
/// partials are stored as f16 instead of bf16 (`torch.get_num_threads() == threads`).
pub fn torch_sum_f16_threads(xs: &[f32], f: impl Fn(f32) -> f32 + Sync, threads: usize) -> f32 {
    reduce::<Bf16Vec>(xs, &f, threads, super::precision::round_f16)
}

/// torch's `sum(f(x))` of a contiguous tensor of working precision `P` with `threads` intra-op
/// threads, rounded to `P` (the value torch returns): the float32, bfloat16 or float16 path.
pub fn torch_sum_rounded<P: super::precision::Precision>(
    xs: &[f32],
    f: impl Fn(f32) -> f32 + Sync,
    threads: usize,
) -> f32 {
    match P::DTYPE {
        super::WorkDType::F32 => torch_sum_f32_threads(xs, f, threads),
        super::WorkDType::Bf16 => P::rnd(torch_sum_bf16_threads(xs, f, threads)),
        super::WorkDType::F16 => P::rnd(torch_sum_f16_threads(xs, f, threads)),
    }
}

/// [`torch_sum_rounded`] from the serial kernel values of the [`torch_parts`] of `n` elements
/// (each part summed with the load of `P`'s dtype, e.g. by a
/// [`super::torch_sum_stream::TorchSumStream`]).
pub fn torch_combine_rounded<P: super::precision::Precision>(n: usize, partials: &[f32], threads: usize) -> f32 {
    match P::DTYPE {
        super::WorkDType::F32 => torch_combine_f32(n, partials, threads),
        super::WorkDType::Bf16 => P::rnd(torch_combine_bf16(n, partials, threads)),
        super::WorkDType::F16 => P::rnd(torch_combine_f16(n, partials, threads)),
    }
}

/// [`torch_sum_f16_threads`] from the serial kernel values of its [`torch_parts`] (which are
/// the bf16 load's kernel values: the loads are the same).
pub fn torch_combine_f16(n: usize, partials: &[f32], threads: usize) -> f32 {
    combine::<Bf16Vec>(n, partials, threads, super::precision::round_f16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_vectors::{gen_a, gen_b, mix, signed};

    /// f32 bits of gen_a.sum(), gen_a.abs().sum(), gen_b.sum(), gen_b.abs().sum(); then bf16 bits
    /// of the same two sums of gen_b cast to bfloat16.
    type Row = [u32; 6];

    fn check(n: usize, threads: usize, want: Row) {
        let (a, b) = (gen_a(n), gen_b(n));
        let fs: [fn(f32) -> f32; 2] = [|x| x, f32::abs];
        let mut got = Vec::new();
        for (xs, f) in [(&a, fs[0]), (&a, fs[1]), (&b, fs[0]), (&b, fs[1])] {
            got.push(torch_sum_f32_threads(xs, f, threads).to_bits());
        }
        for f in fs {
            got.push(round_bf16(torch_sum_bf16_threads(&b, f, threads)).to_bits() >> 16);
        }
        assert_eq!(got, want, "n = {n}, threads = {threads}");
    }

    // Expected values: torch 2.15.0 on this machine (CPU capability AVX512, 2 threads, OpenMP),
    // printed by `tests/golden/torch_sum_vectors.py` (`--large` for LARGE); columns as in `Row`.
    #[rustfmt::skip]
    const DEFAULT: &[(usize, Row)] = &[
        (0, [0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x0000, 0x0000]),
        (1, [0xbd110a2d, 0x3d110a2d, 0x46170000, 0x46170000, 0x4617, 0x4617]),
        (7, [0xbe0f6254, 0x3e107352, 0x4714c800, 0x4725f800, 0x4715, 0x4726]),
        (8, [0xbe0fa548, 0x3e10b646, 0x46fa5000, 0x473d9800, 0x46fa, 0x473e]),
        (9, [0xbdd6337a, 0x3e3541d2, 0x46f25000, 0x47419800, 0x46f2, 0x4742]),
        (15, [0xbe69ec39, 0x3eea2364, 0x46842000, 0x477ba000, 0x4684, 0x477c]),
        (16, [0xbe6c9867, 0x3eeb7979, 0x46828000, 0x477c7000, 0x4682, 0x477c]),
        (17, [0xbe809f7d, 0x3ef5ccc3, 0x46b58000, 0x478af800, 0x46b6, 0x478b]),
        (31, [0xbf035923, 0x3f42064d, 0x47befe80, 0x4f00023a, 0x47bf, 0x4f00]),
        (32, [0xbf022ccd, 0x3f4332a3, 0x47bdbc00, 0x4f00023d, 0x47be, 0x4f00]),
        (33, [0xbf08879b, 0x3f498d72, 0x47bd7c00, 0x4f00023e, 0x47bd, 0x4f00]),
        (63, [0x3f7228e8, 0x401abe39, 0x47d8e300, 0x4f8001f6, 0x47d8, 0x4f80]),
        (64, [0x3f7226c6, 0x401abec2, 0x47d8b600, 0x4f8001f6, 0x47d9, 0x4f80]),
        (65, [0x3f77ea2c, 0x401c2f9c, 0x47d8b600, 0x4f8001f6, 0x47d9, 0x4f80]),
        (127, [0xbe36dc0e, 0x409f0ba4, 0x47ebac80, 0x5020024f, 0x47ec, 0x5020]),
        (128, [0xbe2a377a, 0x409f70c9, 0x47e38c80, 0x50200252, 0x47e4, 0x5020]),
        (129, [0xbe2a3f1a, 0x409f7106, 0x47e58c80, 0x50200253, 0x47e6, 0x5020]),
        (255, [0xbf3f391c, 0x4114673a, 0x47fe4000, 0x50b00211, 0x47fd, 0x50b0]),
        (256, [0xbf3f3713, 0x41146759, 0x47f7c000, 0x50b00213, 0x47f7, 0x50b0]),
        (257, [0xbf3f93af, 0x41146d23, 0x47f7c000, 0x50b00213, 0x47f7, 0x50b0]),
        (1000, [0xbfb7c1d7, 0x42186bff, 0x4870e000, 0x518c01e8, 0x4871, 0x518c]),
        (2048, [0xbf91b560, 0x428cf8b2, 0xc7474000, 0x520601e4, 0xc749, 0x5206]),
        (4099, [0xbf91dfa6, 0x430620f0, 0x46d80000, 0x528501ea, 0x46dc, 0x5285]),
        (8191, [0xc0a3b4bf, 0x43828154, 0xc8ac8000, 0x52fd03be, 0xc8ac, 0x52fd]),
        (32767, [0xc12c6b4c, 0x447f0760, 0xca17a000, 0x540361df, 0xca18, 0x5403]),
        (32768, [0xc12c6afb, 0x447f0760, 0xca17e000, 0x540361df, 0xca18, 0x5403]),
        (32769, [0xc12c8f87, 0x447f07f4, 0xca17d000, 0x540361e0, 0xca18, 0x5404]),
        (65536, [0xc195166a, 0x45006c0f, 0xca5ec000, 0x548161e0, 0xca80, 0x5481]),
        (65541, [0xc1950b14, 0x45006c32, 0xca5de000, 0x548161e0, 0xca80, 0x5481]),
        (100003, [0xc0e8d2f4, 0x454347c0, 0xcaa1a000, 0x54c512da, 0xca80, 0x54c6]),
        (1048593, [0xc284156e, 0x47000393, 0x4a22e000, 0x568004dc, 0x0000, 0x5680]),
    ];

    /// Same columns under `torch.set_num_threads(threads)`: `(n, threads, row)`.
    #[rustfmt::skip]
    const THREADED: &[(usize, usize, Row)] = &[
        (32769, 1, [0xc12c8f89, 0x447f07f2, 0xca17e000, 0x540361df, 0xca18, 0x5403]),
        (100003, 1, [0xc0e8d2f0, 0x454347c1, 0xcaa12000, 0x54c512db, 0xcaa1, 0x54c5]),
        (65541, 3, [0xc1950b15, 0x45006c32, 0xca5dc800, 0x548161e0, 0xca31, 0x5481]),
        (100003, 3, [0xc0e8d2f4, 0x454347c0, 0xcaa1be00, 0x54c512db, 0xca1b, 0x54c5]),
        (1048593, 4, [0xc284156e, 0x47000392, 0x4a22d000, 0x568004dd, 0x4ab4, 0x5680]),
    ];

    /// Sizes whose per-thread chunks reach cascade level power 5 (0.3 GB and 0.5 GB inputs).
    #[rustfmt::skip]
    const LARGE: &[(usize, Row)] = &[
        (68157443, [0x43ac6f2f, 0x4a01faf2, 0xcad28000, 0x59821194, 0xcb00, 0x5982]),
        (136314885, [0xc32198b6, 0x4a81fbcc, 0xca500000, 0x5a020580, 0xca80, 0x5a02]),
    ];

    #[test]
    fn matches_torch_with_default_threads() {
        for &(n, want) in DEFAULT {
            check(n, DEFAULT_THREADS, want);
        }
    }

    #[test]
    fn matches_torch_with_other_thread_counts() {
        for &(n, threads, want) in THREADED {
            check(n, threads, want);
        }
    }

    /// float16-exact inputs below 2^-6 (`gen_c` in the script): `(m >> 53) * 2^(e - 24)`.
    fn gen_c(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| mix(3, i))
            .map(|z| signed(z, (z >> 53) as f32, ((z >> 8) & 7) as i32 - 24))
            .collect()
    }

    /// torch 2.15.0's float16 `c.sum()` and `c.abs().sum()` (f16 bits) for `(n, threads)`,
    /// printed by `tests/golden/torch_sum_vectors.py --f16`.
    #[rustfmt::skip]
    const F16: &[(usize, usize, [u16; 2])] = &[
        (1, 2, [0x9740, 0x1740]), (7, 2, [0xa305, 0x239c]), (16, 2, [0xa159, 0x275f]),
        (17, 2, [0xa0bd, 0x27ad]), (129, 2, [0xa8e9, 0x341c]), (1000, 2, [0x9499, 0x3f94]),
        (4099, 2, [0xb4a8, 0x47b3]), (32767, 2, [0x3a99, 0x53e8]), (32768, 2, [0x3a94, 0x53e8]),
        (32769, 2, [0x3a97, 0x53e8]), (65536, 2, [0x3bcd, 0x57ed]), (65541, 2, [0x3bce, 0x57ed]),
        (100003, 2, [0x3e5c, 0x5a0f]), (1048593, 2, [0x443b, 0x67fa]),
        (32769, 1, [0x3a96, 0x53e8]), (100003, 1, [0x3e5b, 0x5a0f]), (65541, 3, [0x3bce, 0x57ee]),
        (100003, 3, [0x3e5c, 0x5a10]), (1048593, 4, [0x443c, 0x67f9]),
    ];

    #[test]
    fn float16_sums_match_torch() {
        let to_f16 = |x: f32| half::f16::from_f32(x).to_bits();
        for &(n, threads, want) in F16 {
            let c = gen_c(n);
            assert!(c.iter().all(|&x| half::f16::from_f32(x).to_f32() == x));
            let got = [
                to_f16(torch_sum_f16_threads(&c, |x| x, threads)),
                to_f16(torch_sum_f16_threads(&c, f32::abs, threads)),
            ];
            assert_eq!(got, want, "n = {n}, threads = {threads}");
            let parts = torch_parts(n, threads);
            let partials: Vec<f32> = parts
                .iter()
                .map(|r| kernel::<Bf16Vec>(&c[r.clone()], &f32::abs))
                .collect();
            assert_eq!(to_f16(torch_combine_f16(n, &partials, threads)), want[1]);
        }
    }

    #[test]
    #[ignore = "needs ~1 GB and a few seconds in release; run with --ignored --release"]
    fn matches_torch_on_large_inputs() {
        for &(n, want) in LARGE {
            check(n, DEFAULT_THREADS, want);
        }
    }

    #[test]
    fn below_grain_size_threads_do_not_matter() {
        let a = gen_a(GRAIN_SIZE - 1);
        let one = torch_sum_f32_threads(&a, f32::abs, 1);
        assert_eq!(one.to_bits(), torch_sum_f32_threads(&a, f32::abs, 8).to_bits());
        let b = gen_b(GRAIN_SIZE - 1);
        assert_eq!(
            torch_sum_bf16_threads(&b, |x| x, 1),
            torch_sum_bf16_threads(&b, |x| x, 8)
        );
    }

    #[test]
    fn negative_zeros_sum_to_positive_zero() {
        for n in [1, 9, 40_000] {
            assert_eq!(torch_sum_f32(&vec![-0.0; n], |x| x).to_bits(), 0);
            assert_eq!(torch_sum_bf16(&vec![-0.0; n], |x| x).to_bits(), 0);
        }
    }

    #[test]
    fn close_to_an_f64_sum() {
        for n in [0, 5, 100, 4099, 100_003, (1 << 20) + 17] {
            let a = gen_a(n);
            let exact: f64 = a.iter().map(|&x| f64::from(x.abs())).sum();
            let got = f64::from(torch_sum_f32(&a, f32::abs));
            assert!((got - exact).abs() <= 1e-6 * exact, "n = {n}: {got} vs {exact}");
            let bf: Vec<f32> = a.iter().map(|&x| round_bf16(x)).collect();
            let exact: f64 = bf.iter().map(|&x| f64::from(x.abs())).sum();
            let got = f64::from(torch_sum_bf16_threads(&bf, f32::abs, 1));
            assert!((got - exact).abs() <= 1e-6 * exact, "bf16 n = {n}: {got} vs {exact}");
            // With two threads the two partial sums are rounded to bf16 first.
            let got = f64::from(torch_sum_bf16(&bf, f32::abs));
            assert!((got - exact).abs() <= exact / 256.0, "bf16 n = {n}: {got} vs {exact}");
        }
    }
}
