//! Bit-exact emulation of torch's CPU f32 L2 norm, `torch.linalg.vector_norm(x, dim=d)`.
//!
//! mergekit's SLERP takes per-chunk norms and then the norm of the stacked chunk norms; torch
//! accumulates the squares in f32 (reading slightly high on long vectors), so an accurate sum of
//! squares is not close enough. This module replays torch 2.15.0's order on this AVX512 x86-64
//! host, established by testing against torch (see `tests/golden/torch_norm_vectors.py`).
//!
//! **Reductions along a contiguous last dimension** (`vector_norm(a, dim=1)` of a `[rows, n]`
//! tensor with unit inner stride, including a `[k, 1, 1]` stack reduced along dim 0, which
//! TensorIterator collapses to one contiguous run) use ATen's `binary_kernel_reduce_lastdim`
//! specialisation for p = 2. Each row is one serial kernel call:
//!
//! * **One 8-lane accumulator.** The first `8 * floor(n / 8)` elements are read as 8-element
//!   vectors and lane `l` accumulates `acc[l] += x * x` over elements `8m + l` in order; the
//!   square is rounded before the add (no fused multiply-add). There is a single accumulator
//!   vector: no ILP columns, no cascade (unlike `sum`), hence the upward drift on long vectors.
//! * **Lane fold.** `s = acc[0]`, then `s += acc[l]` for `l = 1..8` in order.
//! * **Scalar tail.** The `n % 8` remaining elements are added in order. When there are at least
//!   4 of them, the first 4 are added as `s += round(x * x)`, and the rest with a fused
//!   multiply-add `s = fma(x, x, s)` (one rounding); with 1 to 3 tail elements all use fma. (This
//!   is how the compiled scalar loop `s += x * x` behaves: a 4-wide multiply block, then a
//!   contracted epilogue.)
//! * **Result** `sqrt(s)`, correctly rounded in f32. An empty row gives `+0.0`.
//!
//! The kernel never splits a row across threads: `binary_kernel_reduce_lastdim` parallelises over
//! rows only, so the value does not depend on `torch.get_num_threads()` nor on the row count, and
//! no `_threads` variants are needed (checked against torch with 1 to 4 threads).
//!
//! **Reductions along an outer dimension** (`vector_norm(torch.stack(parts), dim=0)` where each
//! part has more than one element, e.g. `[k, rows, 1]` with `rows > 1`) are not last-dim
//! reductions; ATen's generic `binary_kernel_reduce` with `NormTwoOps` reduces each output
//! serially over `k` as `s = s + round(x * x)` from `s = 0` (no fma), then `sqrt(s)`. Each
//! output's reduction is serial whatever the thread count (threads split the outputs).
//!
//! All additions are plain IEEE f32 operations, which Rust never reassociates or contracts; the
//! lane loop auto-vectorises, and `f32::mul_add` is a correctly rounded fma.

/// Lanes of torch's `Vectorized<float>` in the norm kernel on this machine (AVX2 build).
const LANES: usize = 8;
/// Tail elements whose squares torch rounds separately before adding (a 4-wide block).
const TAIL_BLOCK: usize = 4;

/// The f32 sum of squares torch's last-dimension norm kernel takes the square root of.
fn lastdim_sum_of_squares(xs: &[f32]) -> f32 {
    let vec_elems = xs.len() / LANES * LANES;
    let (body, tail) = xs.split_at(vec_elems);
    let mut acc = [0.0f32; LANES];
    for v in body.chunks_exact(LANES) {
        for (a, &x) in acc.iter_mut().zip(v) {
            *a += x * x;
        }
    }
    finish_sum_of_squares(acc, tail)
}

/// Folds the lane accumulators and adds the `tail` (fewer than 8 elements) as torch does.
fn finish_sum_of_squares(acc: [f32; LANES], tail: &[f32]) -> f32 {
    let mut s = acc[1..].iter().fold(acc[0], |s, &a| s + a);
    let unfused = if tail.len() >= TAIL_BLOCK { TAIL_BLOCK } else { 0 };
    let (block, rest) = tail.split_at(unfused);
    for &x in block {
        s += x * x;
    }
    for &x in rest {
        s = x.mul_add(x, s);
    }
    s
}

/// f32 L2 norm of a contiguous float32 vector exactly as torch 2.15 CPU computes
/// `vector_norm(x.reshape(1, -1), dim=1)` with the default thread count of this machine (2).
///
/// The same value is what torch returns for each row of `vector_norm(a, dim=1)` when `a` is a
/// `[rows, n]` float32 tensor whose rows are contiguous (any row stride, e.g. a column slice of a
/// larger matrix), for any thread count.
pub fn torch_vector_norm_f32(xs: &[f32]) -> f32 {
    lastdim_sum_of_squares(xs).sqrt()
}

/// [`torch_vector_norm_f32`] of a vector of known length fed in order, in pieces of any
/// length: the same single 8-lane accumulator, lane fold and tail, so a kernel can take the
/// norm of a whole tensor while reading it piece by piece.
pub struct NormStream {
    /// Elements read as 8-lane vectors (`8 * floor(total / 8)`).
    body: usize,
    total: usize,
    fed: usize,
    acc: [f32; LANES],
    tail: [f32; LANES],
}

impl NormStream {
    /// A stream over a vector of `total` elements.
    pub fn new(total: usize) -> Self {
        NormStream {
            body: total / LANES * LANES,
            total,
            fed: 0,
            acc: [0.0; LANES],
            tail: [0.0; LANES],
        }
    }

    /// A stream over a vector of `total` elements that continues from [`NormStream::state`]
    /// (a chain of statistics passes takes one norm across chunk tasks this way). `None` if
    /// the state does not fit the vector.
    pub fn resume(total: usize, fed: usize, acc: &[f32], tail: &[f32]) -> Option<Self> {
        let mut s = NormStream::new(total);
        let kept = fed.saturating_sub(s.body);
        if fed > total || acc.len() != LANES || tail.len() != kept {
            return None;
        }
        s.fed = fed;
        s.acc.copy_from_slice(acc);
        s.tail[..kept].copy_from_slice(tail);
        Some(s)
    }

    /// Elements fed so far, the lane accumulators, and the tail elements fed so far.
    pub fn state(&self) -> (usize, &[f32], &[f32]) {
        (self.fed, &self.acc, &self.tail[..self.fed.saturating_sub(self.body)])
    }

    /// Adds the next `xs.len()` elements.
    ///
    /// # Panics
    /// If more than `total` elements are fed.
    #[inline(always)]
    pub fn feed(&mut self, xs: &[f32]) {
        self.feed_as(xs, |x| x);
    }

    /// [`Self::feed`] of the values `value(x)` of the elements `xs` (for example stored
    /// bfloat16 elements, widened inside the loop).
    #[inline(always)]
    pub fn feed_as<T: Copy>(&mut self, xs: &[T], value: impl Fn(T) -> f32) {
        assert!(self.fed + xs.len() <= self.total, "fed past the end of the vector");
        let mut i = 0;
        // Whole vectors when aligned (the usual case: pieces are multiples of 8).
        if self.fed.is_multiple_of(LANES) {
            let whole = (self.body.saturating_sub(self.fed)).min(xs.len()) / LANES * LANES;
            for v in xs[..whole].chunks_exact(LANES) {
                for (a, &x) in self.acc.iter_mut().zip(v) {
                    let x = value(x);
                    *a += x * x;
                }
            }
            i = whole;
            self.fed += whole;
        }
        for &x in &xs[i..] {
            let x = value(x);
            if self.fed < self.body {
                self.acc[self.fed % LANES] += x * x;
            } else {
                self.tail[self.fed - self.body] = x;
            }
            self.fed += 1;
        }
    }

    /// The norm of the whole vector.
    ///
    /// # Panics
    /// If fewer than `total` elements were fed.
    pub fn finish(self) -> f32 {
        assert_eq!(self.fed, self.total, "vector not fully fed");
        finish_sum_of_squares(self.acc, &self.tail[..self.total - self.body]).sqrt()
    }
}

/// The second stage: norm over the per-chunk norms stacked along dim 0 (shape `[k, 1, 1]`).
///
/// torch reduces a `[k, 1, 1]` stack as one contiguous run, so this is
/// [`torch_vector_norm_f32`] of `parts`. For a `[k, rows, 1]` stack with `rows > 1` use
/// [`torch_norm_of_parts_batched_f32`] on each row's `k` parts.
pub fn torch_norm_of_parts_f32(parts: &[f32]) -> f32 {
    torch_vector_norm_f32(parts)
}

/// One output of `vector_norm(torch.stack(parts), dim=0)` when the stacked tensors have more than
/// one element (`[k, rows, 1]` with `rows > 1`): the serial, unfused reduction of that output's
/// `k` parts, in stack order.
pub fn torch_norm_of_parts_batched_f32(parts: &[f32]) -> f32 {
    parts.iter().fold(0.0f32, |s, &x| s + x * x).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_vectors::{gen_a, gen_b, mix, signed};

    /// 24-bit mantissas within 4 binades (`gen_c` of torch_norm_vectors.py).
    fn gen_c(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| mix(3, i))
            .map(|z| signed(z, (z >> 40) as f32, ((z >> 8) & 3) as i32 - 23))
            .collect()
    }

    // Expected values: torch 2.15.0 on this machine (CPU capability AVX512, 2 threads; identical
    // with 1, 3 and 4), printed by `tests/golden/torch_norm_vectors.py`; f32 bit patterns.

    /// `(n, [norm of gen_a(n), gen_b(n), gen_c(n)])` as `[1, n]` tensors reduced along dim 1.
    #[rustfmt::skip]
    const VECTORS: &[(usize, [u32; 3])] = &[
        (0, [0x00000000, 0x00000000, 0x00000000]),
        (1, [0x3d110a2d, 0x46170000, 0x3fe858a0]),
        (7, [0x3da46c42, 0x46a30eec, 0x4130a7e4]),
        (8, [0x3da46c79, 0x46a9c426, 0x41521d11]),
        (9, [0x3db3efe2, 0x46a9f461, 0x415b505a]),
        (15, [0x3e69d67c, 0x46b95d49, 0x41aaab37]),
        (16, [0x3e69da64, 0x46b95f1c, 0x41c6f567]),
        (17, [0x3e6ac35b, 0x46c0425b, 0x41c73313]),
        (31, [0x3ead12ab, 0x4eb504f3, 0x421e93f2]),
        (32, [0x3ead16bd, 0x4eb504f3, 0x422043a1]),
        (33, [0x3ead8e07, 0x4eb504f3, 0x4220b856]),
        (63, [0x3f3809d5, 0x4f000000, 0x424cf525]),
        (64, [0x3f3809d5, 0x4f000000, 0x424d6355]),
        (65, [0x3f3820ee, 0x4f000000, 0x424ff496]),
        (127, [0x3f860b8d, 0x4f4a62c2, 0x42731893]),
        (128, [0x3f860df0, 0x4f4a62c2, 0x427323aa]),
        (129, [0x3f860df0, 0x4f4a62c2, 0x427343bc]),
        (255, [0x3fb4cf5d, 0x4f9617e3, 0x42a9dcf7]),
        (256, [0x3fb4cf5d, 0x4f9617e3, 0x42aa52ea]),
        (257, [0x3fb4cf63, 0x4f9617e3, 0x42ac7adf]),
        (1000, [0x403d9f8a, 0x5005dd98, 0x432d640f]),
        (4099, [0x40ae9fb4, 0x508279df, 0x43a8eb28]),
        (32767, [0x416fc084, 0x513763ea, 0x4470c24f]),
        (32768, [0x416fc083, 0x513763ea, 0x4470c28c]),
        (32769, [0x416fc086, 0x513763ea, 0x4470c29c]),
        (65541, [0x41ab639e, 0x5180af88, 0x44aa4a93]),
        (100003, [0x41d2f735, 0x519ed216, 0x44d27164]),
        (1048576, [0x42aa9c82, 0x52800180, 0x45aa5ad4]),
        (1048593, [0x42aa9c86, 0x52800180, 0x45aa5aea]),
    ];

    /// `(w, [4 row norms])` of `gen_c(4 * w)` as a `[4, w]` tensor reduced along dim 1.
    #[rustfmt::skip]
    const ROWS: &[(usize, [u32; 4])] = &[
        (1, [0x3fe858a0, 0x4033466f, 0x401cebe8, 0x3e953b20]),
        (2, [0x4055a013, 0x401e06bf, 0x412375fd, 0x40e42b2b]),
        (3, [0x4084887b, 0x41238704, 0x41024106, 0x417575ed]),
        (4, [0x4084dc65, 0x414755ec, 0x417d6178, 0x415f94d2]),
        (5, [0x4087b7f8, 0x419a4cac, 0x41011fdf, 0x417fbd9e]),
        (6, [0x413071a7, 0x418af094, 0x41608944, 0x4188e726]),
        (7, [0x4130a7e4, 0x41919520, 0x41a5c83d, 0x41947e31]),
        (8, [0x41521d11, 0x41a8f5da, 0x41894b06, 0x41d27c83]),
        (9, [0x415b505a, 0x41a65565, 0x41c510b7, 0x41c3f908]),
        (10, [0x419dfc66, 0x418f3eb4, 0x41d93c79, 0x41b225c0]),
        (11, [0x41a43015, 0x41ae68e0, 0x41d65a79, 0x41ac76f4]),
        (12, [0x41a4951a, 0x41b10cae, 0x41f1dce5, 0x41902fb2]),
        (13, [0x41a4c2fb, 0x41e0fb67, 0x41d7e3d2, 0x41936df8]),
        (14, [0x41aa484b, 0x41de8fe5, 0x41d6dd13, 0x41ab4561]),
        (15, [0x41aaab37, 0x41fc1380, 0x41c90e3c, 0x41931f80]),
        (16, [0x41c6f567, 0x41fb4ded, 0x41bb0977, 0x41b01cdb]),
        (17, [0x41c73313, 0x420aa2ad, 0x4192f0fb, 0x41bf914c]),
        (18, [0x41c73a2e, 0x420af5e2, 0x41b83145, 0x41b927dd]),
        (19, [0x41c788e7, 0x42115ccb, 0x41ac943c, 0x41b38a10]),
        (20, [0x41d541dd, 0x420c7881, 0x41ae2932, 0x41b6b737]),
        (21, [0x41eda7a4, 0x42029769, 0x41d02b26, 0x41b51d01]),
        (22, [0x41ef889e, 0x42098f75, 0x41c939e7, 0x41b28a91]),
        (23, [0x41f07d81, 0x420a62ea, 0x41dd5264, 0x41a44e9c]),
        (24, [0x41f1bb27, 0x420cca40, 0x41d9c2ca, 0x41af9736]),
    ];

    /// `(k, [p, q0, q1])`: `p` of `|gen_c(k)|` stacked as `[k, 1, 1]`, `q` of `|gen_c(2k)|`
    /// stacked as `[k, 2, 1]` (output `j` reduces elements `2i + j`), both along dim 0.
    #[rustfmt::skip]
    const PARTS: &[(usize, [u32; 3])] = &[
        (1, [0x3fe858a0, 0x3fe858a0, 0x4033466f]), (2, [0x4055a013, 0x40433eae, 0x40343e35]),
        (3, [0x4084887b, 0x404af46b, 0x4128fdc5]), (4, [0x4084dc65, 0x404de1ed, 0x414bb635]),
        (5, [0x4087b7f8, 0x40a27b65, 0x4198acb2]), (6, [0x413071a7, 0x40f19928, 0x41991950]),
        (7, [0x4130a7e4, 0x40f38b7a, 0x419f0669]), (8, [0x41521d11, 0x40f7d5b1, 0x41bd10b1]),
        (9, [0x415b505a, 0x40fae96b, 0x41bd182d]), (10, [0x419dfc66, 0x40fecaa2, 0x41cb85a8]),
        (11, [0x41a43015, 0x41756d44, 0x41cdb67f]), (12, [0x41a4951a, 0x41792402, 0x41cf2981]),
        (13, [0x41a4c2fb, 0x4193de8e, 0x41ec6d71]), (14, [0x41aa484b, 0x41966d4c, 0x41ec6f78]),
        (15, [0x41aaab37, 0x419bec9d, 0x4202ba08]), (16, [0x41c6f567, 0x41b386eb, 0x4204c464]),
        (17, [0x41c73313, 0x41b5265f, 0x4210b16c]), (18, [0x41c73a2e, 0x41b5aaec, 0x4210da1d]),
        (19, [0x41c788e7, 0x41b5d355, 0x42170ef6]), (20, [0x41d541dd, 0x41b5ed20, 0x4217165f]),
        (21, [0x41eda7a4, 0x41b5feee, 0x42174e4d]), (22, [0x41ef889e, 0x41cb3d47, 0x421775fb]),
        (23, [0x41f07d81, 0x41cb4d83, 0x42189124]), (24, [0x41f1bb27, 0x41d335bc, 0x4218922d]),
        (25, [0x41fe85a7, 0x41d3edb1, 0x42189378]), (26, [0x420b6e2d, 0x41d4360c, 0x421ef5e0]),
        (27, [0x420c1cd7, 0x41def511, 0x421f04ed]), (28, [0x420c1db2, 0x41df5a7b, 0x42215b32]),
        (29, [0x420d9c47, 0x41df8d35, 0x422171e1]), (30, [0x4218357d, 0x41e05e17, 0x42218dab]),
        (31, [0x421e93f2, 0x41e16c25, 0x42219570]), (32, [0x422043a1, 0x41fc2d53, 0x4222211c]),
        (33, [0x4220b856, 0x42023a91, 0x42229308]), (34, [0x422ab442, 0x420345e9, 0x4222b9db]),
        (35, [0x422ad776, 0x420b3267, 0x4222e11a]), (36, [0x422af9ee, 0x420c8aae, 0x4222e3f4]),
        (37, [0x422b04ab, 0x420cd3c3, 0x42238bd2]), (38, [0x42304e51, 0x420cda2d, 0x42238d08]),
        (39, [0x423054f8, 0x420dd20c, 0x42238f66]), (40, [0x42305b52, 0x420ddb2e, 0x42240932]),
    ];

    #[test]
    fn vectors_match_torch() {
        for &(n, want) in VECTORS {
            let got = [gen_a(n), gen_b(n), gen_c(n)].map(|xs| torch_vector_norm_f32(&xs).to_bits());
            assert_eq!(got, want, "n = {n}");
        }
    }

    #[test]
    fn rows_of_a_matrix_match_torch() {
        for &(w, want) in ROWS {
            let xs = gen_c(4 * w);
            let got: Vec<u32> = xs.chunks_exact(w).map(|r| torch_vector_norm_f32(r).to_bits()).collect();
            assert_eq!(got, want, "w = {w}");
        }
    }

    #[test]
    fn norms_of_parts_match_torch() {
        for &(k, want) in PARTS {
            let p: Vec<f32> = gen_c(k).iter().map(|x| x.abs()).collect();
            let q: Vec<f32> = gen_c(2 * k).iter().map(|x| x.abs()).collect();
            let col = |j: usize| q.iter().skip(j).step_by(2).copied().collect::<Vec<f32>>();
            let got = [
                torch_norm_of_parts_f32(&p).to_bits(),
                torch_norm_of_parts_batched_f32(&col(0)).to_bits(),
                torch_norm_of_parts_batched_f32(&col(1)).to_bits(),
            ];
            assert_eq!(got, want, "k = {k}");
        }
    }

    #[test]
    fn tail_rounding_is_observable() {
        // The tables above would catch a wrong tail order: for these widths an all-fma or an
        // all-unfused tail gives different bits for at least one ROWS entry.
        let all = |xs: &[f32], fused: bool| {
            let m = xs.len() / LANES * LANES;
            let mut s = lastdim_sum_of_squares(&xs[..m]);
            for &x in &xs[m..] {
                s = if fused { x.mul_add(x, s) } else { s + x * x };
            }
            s.sqrt().to_bits()
        };
        for fused in [false, true] {
            let differs = ROWS.iter().any(|&(w, want)| {
                let xs = gen_c(4 * w);
                xs.chunks_exact(w).zip(want).any(|(r, b)| all(r, fused) != b)
            });
            assert!(differs, "fused = {fused}");
        }
    }

    #[test]
    fn close_to_an_f64_norm() {
        for n in [0, 5, 100, 4099, 100_003, (1 << 20) + 17] {
            let a = gen_a(n);
            let exact = a.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
            let got = f64::from(torch_vector_norm_f32(&a));
            assert!((got - exact).abs() <= 1e-4 * exact, "n = {n}: {got} vs {exact}");
        }
    }

    #[test]
    fn special_values() {
        assert_eq!(torch_vector_norm_f32(&[]).to_bits(), 0);
        assert_eq!(torch_vector_norm_f32(&[-0.0; 9]).to_bits(), 0);
        assert_eq!(torch_vector_norm_f32(&[-3.0, 4.0]), 5.0);
        assert!(torch_vector_norm_f32(&[1.0, f32::NAN, 2.0]).is_nan());
        assert_eq!(torch_vector_norm_f32(&[1e30; 10]), f32::INFINITY);
        assert_eq!(torch_norm_of_parts_batched_f32(&[]).to_bits(), 0);
    }

    #[test]
    fn a_norm_fed_in_pieces_equals_the_one_shot_norm() {
        for n in [0, 3, 8, 13, 4099, 100_003] {
            let a = gen_a(n);
            let want = torch_vector_norm_f32(&a).to_bits();
            // Aligned pieces, odd pieces (lanes continue across pieces) and one at a time.
            for piece in [1usize << 12, 7, 1] {
                let mut s = NormStream::new(n);
                for p in a.chunks(piece) {
                    s.feed(p);
                }
                assert_eq!(s.finish().to_bits(), want, "n = {n}, pieces of {piece}");
            }
        }
    }
}
