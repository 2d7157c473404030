//! The MT19937 generator itself (Matsumoto & Nishimura's `mt19937ar`).

use super::jump;
use crate::kernels::simd::simd_dispatch;

/// Number of 32-bit words in the state.
pub(crate) const N: usize = 624;
/// Middle-word offset of the recurrence.
pub(crate) const M: usize = 397;
const MATRIX_A: u32 = 0x9908_B0DF;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7FFF_FFFF;

/// The twist of the recurrence for a pair of consecutive words: the upper bit
/// of `a` joined with the lower 31 bits of `b`, multiplied by the matrix `A`.
#[inline(always)]
pub(crate) fn mix(a: u32, b: u32) -> u32 {
    let y = (a & UPPER_MASK) | (b & LOWER_MASK);
    (y >> 1) ^ ((b & 1).wrapping_neg() & MATRIX_A)
}

/// MT19937 output tempering.
#[inline(always)]
pub(crate) fn temper(mut y: u32) -> u32 {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9D2C_5680;
    y ^= (y << 15) & 0xEFC6_0000;
    y ^ (y >> 18)
}

/// Replaces the block `w_j .. w_{j+623}` by the next block `w_{j+624} .. w_{j+1247}`.
///
/// Written as fixed-size chunks so the compiler can vectorize: in the first
/// part (`k < 227`) every read of `mt[k + 1]` / `mt[k + 397]` sees an old word;
/// in the second part `mt[k - 227]` is already a new word, and 227 is far
/// larger than the chunk width, so each chunk only reads finished words.
#[inline(always)]
pub(crate) fn twist_block(mt: &mut [u32; N]) {
    const C: usize = 16;
    // k in 0..227 (N - M = 227 = 28 * 8 + 3)
    let mut k = 0;
    while k + C <= N - M {
        let cur: [u32; C + 1] = mt[k..k + C + 1].try_into().unwrap();
        let far: [u32; C] = mt[k + M..k + M + C].try_into().unwrap();
        let mut out = [0u32; C];
        for j in 0..C {
            out[j] = far[j] ^ mix(cur[j], cur[j + 1]);
        }
        mt[k..k + C].copy_from_slice(&out);
        k += C;
    }
    while k < N - M {
        mt[k] = mt[k + M] ^ mix(mt[k], mt[k + 1]);
        k += 1;
    }
    // k in 227..623 (396 = 49 * 8 + 4)
    while k + C < N {
        let cur: [u32; C + 1] = mt[k..k + C + 1].try_into().unwrap();
        let far: [u32; C] = mt[k + M - N..k + M - N + C].try_into().unwrap();
        let mut out = [0u32; C];
        for j in 0..C {
            out[j] = far[j] ^ mix(cur[j], cur[j + 1]);
        }
        mt[k..k + C].copy_from_slice(&out);
        k += C;
    }
    while k < N - 1 {
        mt[k] = mt[k + M - N] ^ mix(mt[k], mt[k + 1]);
        k += 1;
    }
    mt[N - 1] = mt[M - 1] ^ mix(mt[N - 1], mt[0]);
}

/// Tempers `src` into `dst` (equal lengths).
#[inline(always)]
fn temper_into(src: &[u32], dst: &mut [u32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = temper(s);
    }
}

simd_dispatch! {
    /// Twists and tempers whole blocks into `out` (a multiple of [`N`] words), compiled for the
    /// widest vector instructions the CPU has (same integer results on every path).
    fn fill_blocks<>(mt: &mut [u32; N], out: &mut [u32]) => fill_blocks_impl
}

#[inline(always)]
fn fill_blocks_impl(mt: &mut [u32; N], out: &mut [u32]) {
    for block in out.chunks_exact_mut(N) {
        twist_block(mt);
        temper_into(mt, block);
    }
}

/// torch/NumPy-compatible MT19937 (`mt19937ar`), seeded with `init_genrand`.
///
/// The output stream equals NumPy's
/// `np.random.RandomState(seed).randint(0, 2**32, dtype=np.uint32, size=n)`
/// and the raw 32-bit words of torch's CPU generator after
/// `torch.manual_seed(seed)` (torch seeds with `seed & 0xFFFF_FFFF`).
///
/// State: `mt` holds a block of 624 words and `index` the position of the next
/// word to temper and output; `index == 624` means the block is used up and
/// the next call twists a fresh block (this is also the state right after
/// seeding). After [`jump`](Self::jump) the lower 31 bits of `mt[0]` may
/// differ from the sequential generator's (they never influence any output).
#[derive(Clone)]
pub struct Mt19937 {
    pub(crate) mt: [u32; N],
    pub(crate) index: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Mt19937 {
    /// Seeds with `init_genrand(seed)`:
    /// `mt[0] = seed; mt[i] = 1812433253 * (mt[i-1] ^ (mt[i-1] >> 30)) + i`, `index = 624`.
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            let prev = mt[i - 1];
            mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { mt, index: N }
    }

    /// The generator seeded with `seed` and advanced by `offset` outputs:
    /// identical to `new(seed)` followed by [`jump(offset)`](Self::jump).
    pub fn at_offset(seed: u32, offset: u64) -> Self {
        let mut g = Self::new(seed);
        g.jump(offset);
        g
    }

    /// Next 32-bit output (`genrand_int32`).
    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            twist_block(&mut self.mt);
            self.index = 0;
        }
        let y = self.mt[self.index];
        self.index += 1;
        temper(y)
    }

    /// Fills `out` with the next `out.len()` outputs, exactly as repeated
    /// [`next_u32`](Self::next_u32) would, but a whole block at a time.
    pub fn fill_u32(&mut self, out: &mut [u32]) {
        // Drain what is left of the current block.
        let take = (N - self.index).min(out.len());
        temper_into(&self.mt[self.index..self.index + take], &mut out[..take]);
        self.index += take;
        let whole = (out.len() - take) / N * N;
        fill_blocks(&mut self.mt, &mut out[take..take + whole]);
        let rest = &mut out[take + whole..];
        if !rest.is_empty() {
            twist_block(&mut self.mt);
            let n = rest.len();
            temper_into(&self.mt[..n], rest);
            self.index = n;
        }
    }

    /// Advances the generator by `n` outputs, as if `n` words had been drawn
    /// and discarded, for any current state.
    ///
    /// Uses polynomial jump-ahead: `g = x^e mod phi(x)` by square-and-multiply,
    /// then the state window is replaced by `g(T) window` (see the module
    /// docs). It never generates and discards outputs: evaluating `g(T)`
    /// runs the word recurrence at most `deg g < 19937` steps, whatever `n`.
    /// If the target stays inside the current block only `index` moves. Cost:
    /// 1–3 ms in release builds for any `n`; the first call per process also
    /// computes `phi` (Berlekamp–Massey, ~15 ms).
    pub fn jump(&mut self, n: u64) {
        jump::jump(self, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Textbook `genrand_int32` (one word at a time, no chunking), used to
    /// cross-check `twist_block` and `fill_u32`.
    fn reference_stream(seed: u32, n: usize) -> Vec<u32> {
        let mut mt = Mt19937::new(seed).mt;
        let mut idx = N;
        (0..n)
            .map(|_| {
                if idx >= N {
                    for k in 0..N {
                        let y = (mt[k] & UPPER_MASK) | (mt[(k + 1) % N] & LOWER_MASK);
                        let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
                        mt[k] = mt[(k + M) % N] ^ (y >> 1) ^ mag;
                    }
                    idx = 0;
                }
                idx += 1;
                temper(mt[idx - 1])
            })
            .collect()
    }

    #[test]
    fn classic_mt19937ar_first_output() {
        assert_eq!(Mt19937::new(5489).next_u32(), 3_499_211_612);
    }

    #[test]
    fn next_u32_matches_textbook_loop() {
        for seed in [0, 1, 42, 5489, u32::MAX] {
            let r = reference_stream(seed, 3000);
            let mut g = Mt19937::new(seed);
            let v: Vec<u32> = (0..3000).map(|_| g.next_u32()).collect();
            assert_eq!(v, r, "seed {seed}");
        }
    }

    #[test]
    fn fill_u32_matches_next_u32_for_all_split_patterns() {
        let r = reference_stream(1234, 5000);
        for &pre in &[0usize, 1, 5, 623, 624, 625, 1000] {
            for &len in &[0usize, 1, 2, 623, 624, 625, 1247, 1248, 1249, 3000] {
                let mut g = Mt19937::new(1234);
                for _ in 0..pre {
                    g.next_u32();
                }
                let mut buf = vec![0u32; len];
                g.fill_u32(&mut buf);
                assert_eq!(buf, r[pre..pre + len], "pre={pre} len={len}");
                // The state must continue correctly afterwards, too.
                assert_eq!(g.next_u32(), r[pre + len], "pre={pre} len={len} (next)");
                let mut tail = [0u32; 700];
                g.fill_u32(&mut tail);
                assert_eq!(tail[..], r[pre + len + 1..pre + len + 701]);
            }
        }
    }
}
