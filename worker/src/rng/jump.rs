//! The characteristic polynomial of MT19937 and polynomial jump-ahead.
//!
//! Window view: the state is the run of words `w_k .. w_{k+623}` with
//! `w_{j+624} = w_{j+397} ^ mix(w_j, w_{j+1})`; advancing by one word is the
//! GF(2)-linear shift `T`. `T` acts on 624 * 32 = 19968 bits, but the lower 31
//! bits of the oldest word `w_k` are never read by `mix` (only its upper bit
//! is), so they span `ker T` (and `ker T^2 = ker T`). Hence the minimal
//! polynomial of `T` is `x * phi(x)` with `phi` of degree 19968 - 31 = 19937,
//! and for `x^e = q(x) phi(x) + g(x)`, `T^e v - g(T) v` lies in `ker T`: the
//! window `g(T) v` is correct except possibly for those 31 never-read bits.

use std::sync::OnceLock;

use super::gf2poly::{self, Modulus};
use super::mt19937::{M, Mt19937, N, mix};

/// Degree of MT19937's characteristic polynomial (its period is `2^19937 - 1`).
pub const MT19937_DEGREE: usize = 19937;

static PHI: OnceLock<Modulus> = OnceLock::new();

/// The characteristic polynomial `phi` (computed on first use, then cached).
pub(crate) fn phi() -> &'static Modulus {
    PHI.get_or_init(compute_phi)
}

/// Berlekamp–Massey on bit 0 of the first `2 * 19937` outputs of seed 5489.
///
/// Each output bit is a linear functional of the state that ignores
/// `ker T`, so the bit sequence is annihilated by `phi`; since `phi` is
/// irreducible (primitive) and the sequence is nonzero, its minimal polynomial
/// is `phi` itself, and `2 * deg` bits determine it uniquely.
fn compute_phi() -> Modulus {
    let n = 2 * MT19937_DEGREE;
    let mut words = vec![0u32; n];
    Mt19937::new(5489).fill_u32(&mut words);
    let mut bits = vec![0u64; n / 64 + 1];
    for (i, &w) in words.iter().enumerate() {
        bits[i / 64] |= u64::from(w & 1) << (i % 64);
    }
    let m = Modulus::new(&gf2poly::berlekamp_massey(&bits, n));
    assert_eq!(m.degree(), MT19937_DEGREE, "MT19937 characteristic polynomial");
    m
}

/// Returns `g(T) window`: the XOR over all `i` with `g_i = 1` of the window
/// advanced by `i` words.
///
/// The words `w_0 .. w_{deg g + 623}` are generated once into a linear buffer
/// (so `T^i window` is simply `seq[i .. i + 624]`, no ring buffer needed) and
/// every selected slice is XORed into a 624-word accumulator; the XOR loop is
/// auto-vectorized.
pub(crate) fn apply_poly(window: &[u32; N], g: &[u64]) -> [u32; N] {
    let mut acc = [0u32; N];
    let Some(dg) = gf2poly::degree(g) else {
        return acc;
    };
    let mut seq = Vec::with_capacity(N + dg);
    seq.extend_from_slice(window);
    for j in 0..dg {
        let w = seq[j + M] ^ mix(seq[j], seq[j + 1]);
        seq.push(w);
    }
    for (wi, &word) in g.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let i = wi * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            for (a, &s) in acc.iter_mut().zip(&seq[i..i + N]) {
                *a ^= s;
            }
        }
    }
    acc
}

/// Advances `g` by `n` outputs (see [`Mt19937::jump`]).
///
/// With `index = i`, the block `mt` is the window `w_C .. w_{C+623}` and the
/// next output is `temper(w_{C+i})`. The target state's next output is
/// `temper(w_{C+i+n})`; if `i + n <= 624` that is just `index = i + n`.
/// Otherwise the window is shifted by `e = i + n - 624` words and `index` set
/// to 624, so the next call twists it into the block starting at
/// `w_{C+e+624} = w_{C+i+n}`.
pub(crate) fn jump(g: &mut Mt19937, n: u64) {
    let left = (N - g.index) as u64;
    if n <= left {
        g.index += n as usize;
        return;
    }
    let e = n - left;
    let poly = phi().pow_x(e);
    g.mt = apply_poly(&g.mt, &poly);
    g.index = N;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::splitmix;

    /// Advances sequentially (generate and discard), the reference for jumps.
    fn advance_sequential(g: &mut Mt19937, mut n: u64) {
        let mut buf = vec![0u32; 1 << 16];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            g.fill_u32(&mut buf[..k]);
            n -= k as u64;
        }
    }

    fn take(g: &mut Mt19937, n: usize) -> Vec<u32> {
        let mut v = vec![0u32; n];
        g.fill_u32(&mut v);
        v
    }

    #[test]
    fn phi_has_degree_19937() {
        let phi = phi();
        assert_eq!(phi.degree(), MT19937_DEGREE);
        assert!(gf2poly::bit(phi.poly(), 0), "phi(0) = 1 (T invertible on the state)");
        // Published fact (e.g. Panneton, L'Ecuyer & Matsumoto 2006, the WELL
        // paper): MT19937's characteristic polynomial has 135 nonzero terms.
        assert_eq!(phi.weight(), 135);
    }

    #[test]
    fn phi_is_irreducible() {
        // 2^19937 - 1 is prime, so phi is irreducible (indeed primitive) iff
        // x^(2^19937) = x mod phi: 19937 squarings.
        let phi = phi();
        let mut g = phi.pow_x(1);
        for _ in 0..MT19937_DEGREE {
            g = phi.square(&g);
        }
        assert_eq!(g, phi.pow_x(1));
    }

    #[test]
    fn jump_equals_sequential_at_many_offsets() {
        let mut offsets: Vec<u64> = vec![
            0, 1, 2, 396, 397, 623, 624, 625, 1247, 1248, 1249, 10_000, 19_936, 19_937, 19_938, 123_457, 1_000_003,
            50_000_013,
        ];
        let mut st = 99u64;
        offsets.extend((0..8).map(|_| splitmix(&mut st) % 60_000_000));
        offsets.sort_unstable();
        for seed in [5489u32, 42] {
            let mut seq = Mt19937::new(seed);
            let mut pos = 0u64;
            for &off in &offsets {
                advance_sequential(&mut seq, off - pos);
                pos = off;
                let expected = take(&mut seq.clone(), 1300);
                let mut j = Mt19937::new(seed);
                j.jump(off);
                assert_eq!(take(&mut j, 1300), expected, "seed {seed} offset {off}");
                let mut a = Mt19937::at_offset(seed, off);
                assert_eq!(a.next_u32(), expected[0], "at_offset seed {seed} offset {off}");
            }
        }
    }

    #[test]
    fn jump_equals_sequential_around_3e8() {
        // ~1 s of sequential generation in the dev/test profile (opt-level 1).
        let off = 300_000_017u64;
        let mut seq = Mt19937::new(2024);
        advance_sequential(&mut seq, off);
        let expected = take(&mut seq, 1300);
        assert_eq!(take(&mut Mt19937::at_offset(2024, off), 1300), expected);
    }

    #[test]
    fn jump_from_partially_consumed_state() {
        let mut st = 5u64;
        for pre in [1u64, 100, 396, 623, 624, 625, 1000, 1248] {
            let mut offs = vec![0u64, 1, 523, 524, 525, 1000, 30_011];
            offs.extend((0..3).map(|_| splitmix(&mut st) % 2_000_000));
            for off in offs {
                let mut seq = Mt19937::new(7);
                advance_sequential(&mut seq, pre + off);
                let expected = take(&mut seq, 1000);
                let mut j = Mt19937::new(7);
                // consume with next_u32 so the index is mid-block
                for _ in 0..pre {
                    j.next_u32();
                }
                j.jump(off);
                assert_eq!(take(&mut j, 1000), expected, "pre {pre} offset {off}");
            }
        }
    }

    #[test]
    fn large_jumps_compose() {
        let a = 300_000_000_007u64;
        let b = (1u64 << 33) + 5;
        let mut ab = Mt19937::new(1);
        ab.jump(a);
        ab.jump(b);
        let mut direct = Mt19937::at_offset(1, a + b);
        assert_eq!(take(&mut ab, 2000), take(&mut direct, 2000));
        // Chained partially-consumed jumps: a, 17 words, b-17 words.
        let mut c = Mt19937::at_offset(1, a);
        take(&mut c, 17);
        c.jump(b - 17);
        let mut direct = Mt19937::at_offset(1, a + b);
        assert_eq!(take(&mut c, 700), take(&mut direct, 700));
    }

    #[test]
    fn large_jump_overlaps_sequential_tail() {
        let mut before = Mt19937::at_offset(3, (1u64 << 32) - 1000);
        let tail = take(&mut before, 1010);
        let mut at = Mt19937::at_offset(3, 1u64 << 32);
        assert_eq!(take(&mut at, 10), tail[1000..]);
        // The same via u64::MAX-sized exponents: no overflow, composition holds.
        let mut x = Mt19937::new(3);
        x.jump(u64::MAX);
        x.jump(1);
        let mut y = Mt19937::new(3);
        y.jump(1 << 63);
        y.jump(1 << 63);
        assert_eq!(take(&mut x, 1300), take(&mut y, 1300));
    }

    #[test]
    fn apply_zero_and_one() {
        let w = Mt19937::new(9).mt;
        assert_eq!(apply_poly(&w, &[0, 0]), [0u32; N]);
        assert_eq!(apply_poly(&w, &[1]), w);
    }
}
