//! torch's CPU random generator (MT19937) with fast polynomial jump-ahead.
//!
//! [`Mt19937`] reproduces the raw 32-bit word stream of torch's CPU generator
//! after `torch.manual_seed(seed)` and of NumPy's legacy
//! `np.random.RandomState(seed)` (both are Matsumoto & Nishimura's
//! `mt19937ar` seeded with `init_genrand`). [`bernoulli_keep`] turns one word
//! into a Bernoulli draw the way torch's CPU kernel does, so dropout-style
//! masks (DARE, etc.) can be regenerated bit-exactly.
//!
//! # Jump-ahead
//!
//! A merge task that needs words `n, n+1, ...` of a stream calls
//! [`Mt19937::at_offset`] or [`Mt19937::jump`] instead of generating `n`
//! words. The state is viewed as the sliding window `w_k .. w_{k+623}` of the
//! MT recurrence; one output shifts the window by one word, a linear map `T`
//! over GF(2). With `phi` the degree-19937 characteristic polynomial of MT19937
//! (computed once per process with Berlekamp–Massey, ~15 ms in release, cached), the jump
//! computes `g(x) = x^e mod phi(x)` by square-and-multiply and sets the window
//! to `g(T) window`, see `jump.rs` for why this is exact for every output.
//! A jump costs 1–3 ms in release builds for any `n` up to `u64::MAX`.
//! [`init_jump_tables`] precomputes `phi` eagerly if the first jump's latency
//! matters.

mod gf2poly;
mod jump;
mod mt19937;

pub use jump::MT19937_DEGREE;
pub use mt19937::Mt19937;

/// Precomputes the characteristic polynomial used by [`Mt19937::jump`].
///
/// Optional: the first jump does it lazily. Thread-safe and idempotent.
pub fn init_jump_tables() {
    let _ = jump::phi();
}

/// One Bernoulli draw as torch's CPU kernel does it: keep iff
/// `((word & 0xFFFFFF) as f32 * 2^-24) < p`.
///
/// The low 24 bits give a uniform `u` in `[0, 1)` exactly representable in
/// `f32`; the upper 8 bits of the word are ignored. `p` is the keep
/// probability (`p <= 0` never keeps, `p >= 1` always keeps).
#[inline]
pub fn bernoulli_keep(word: u32, p: f32) -> bool {
    const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
    ((word & 0x00FF_FFFF) as f32 * SCALE) < p
}

/// SplitMix64: a small seeded source of test inputs (offsets, polynomials) for the rng tests;
/// not related to torch's generator.
#[cfg(test)]
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference words produced by NumPy 2.4.6 (an independent MT19937
    /// implementation), with
    /// `a = np.random.RandomState(seed).randint(0, 2**32, dtype=np.uint32, size=100003)`
    /// and printing `a[0:4]`, `a[620:628]` and `a[99998:100003]`.
    /// Rows: (seed, a[0:4], a[620:628], a[99998:100003]).
    #[allow(clippy::type_complexity)]
    const NUMPY: [(u32, [u32; 4], [u32; 8], [u32; 5]); 4] = [
        (
            42,
            [1608637542, 3421126067, 4083286876, 787846414],
            [
                1885367899, 3195638841, 336967606, 1077437785, 108880612, 791707097, 4134543476, 347346749,
            ],
            [3701002115, 3756924365, 3638853384, 2306006371, 2123934533],
        ),
        (
            0,
            [2357136044, 2546248239, 3071714933, 3626093760],
            [
                3309619115, 1308169859, 631131020, 3791854820, 341544762, 1076416385, 384842097, 2909461632,
            ],
            [2367892162, 538810357, 1321326701, 3486686887, 266310355],
        ),
        (
            5489,
            [3499211612, 581869302, 3890346734, 3586334585],
            [
                2832983005, 1813414171, 2227348307, 4020325887, 4178893912, 610818241, 2787397224, 2762441380,
            ],
            [805221800, 1529728722, 2685883880, 448000921, 121973383],
        ),
        (
            4294967295,
            [419326371, 479346978, 3918654476, 2416749639],
            [
                194249753, 2027836416, 1222270187, 1027084080, 3860652269, 657474326, 948840071, 4178390586,
            ],
            [1084058487, 3879034074, 2458556048, 2356713220, 3359563331],
        ),
    ];

    #[test]
    fn matches_numpy_sequentially() {
        for (seed, head, mid, far) in NUMPY {
            let mut g = Mt19937::new(seed);
            let mut all = vec![0u32; 100_003];
            g.fill_u32(&mut all);
            assert_eq!(all[0..4], head, "seed {seed}");
            assert_eq!(all[620..628], mid, "seed {seed}");
            assert_eq!(all[99_998..100_003], far, "seed {seed}");
            let mut g = Mt19937::new(seed);
            let first: Vec<u32> = (0..4).map(|_| g.next_u32()).collect();
            assert_eq!(first, head, "seed {seed} next_u32");
        }
    }

    #[test]
    fn matches_numpy_via_jump() {
        for (seed, head, mid, far) in NUMPY {
            let mut g = Mt19937::at_offset(seed, 620);
            let mut v = [0u32; 8];
            g.fill_u32(&mut v);
            assert_eq!(v, mid, "seed {seed}");
            let mut g = Mt19937::at_offset(seed, 99_998);
            let mut v = [0u32; 5];
            g.fill_u32(&mut v);
            assert_eq!(v, far, "seed {seed}");
            // jump(0) is a no-op
            let mut g = Mt19937::at_offset(seed, 0);
            assert_eq!(g.next_u32(), head[0]);
        }
    }

    #[test]
    fn bernoulli_keep_boundaries() {
        // p = 17/32: u = k / 2^24 < p  <=>  k < 0x88_0000.
        let p = 0.53125f32;
        assert!(bernoulli_keep(0x0087_FFFF, p));
        assert!(!bernoulli_keep(0x0088_0000, p)); // u == p is not < p
        assert!(!bernoulli_keep(0x0088_0001, p));
        // upper 8 bits are ignored
        assert!(bernoulli_keep(0xFF87_FFFF, p));
        assert!(!bernoulli_keep(0xAB88_0000, p));
        assert!(!bernoulli_keep(0x0188_0001, p));
        // extremes
        assert!(bernoulli_keep(0, p));
        assert!(!bernoulli_keep(0x00FF_FFFF, p));
        assert!(!bernoulli_keep(0, 0.0));
        assert!(bernoulli_keep(0xFFFF_FFFF, 1.0));
    }
}
