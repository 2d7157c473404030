//! Polynomials over GF(2), bit-packed into `u64` words.
//!
//! Bit `i` of a word vector (bit `i % 64` of word `i / 64`) is the
//! coefficient of `x^i`. Provides the Berlekamp–Massey algorithm (to find the
//! minimal polynomial of a bit sequence) and fast arithmetic modulo a fixed
//! polynomial: squaring, multiplication by `x`, and `x^n mod phi`.

/// Coefficient of `x^i` (false beyond the end of `words`).
pub(crate) fn bit(words: &[u64], i: usize) -> bool {
    words.get(i / 64).is_some_and(|w| (w >> (i % 64)) & 1 == 1)
}

/// Degree of the polynomial, `None` for the zero polynomial.
pub(crate) fn degree(words: &[u64]) -> Option<usize> {
    let top = words.iter().rposition(|&w| w != 0)?;
    Some(top * 64 + 63 - words[top].leading_zeros() as usize)
}

/// The 64 bits starting at bit `pos` (bits beyond the slice read as zero).
#[inline(always)]
fn get_bits64(words: &[u64], pos: usize) -> u64 {
    let (q, sh) = (pos / 64, pos % 64);
    let lo = words.get(q).copied().unwrap_or(0);
    if sh == 0 {
        lo
    } else {
        let hi = words.get(q + 1).copied().unwrap_or(0);
        (lo >> sh) | (hi << (64 - sh))
    }
}

/// XOR the 64-bit value `v` into the bits starting at bit `pos`.
///
/// Bits of `v` that would land beyond the slice must be zero.
#[inline(always)]
fn xor_bits64(words: &mut [u64], pos: usize, v: u64) {
    let (q, sh) = (pos / 64, pos % 64);
    words[q] ^= v << sh;
    if sh != 0 {
        let hi = v >> (64 - sh);
        if let Some(w) = words.get_mut(q + 1) {
            *w ^= hi;
        } else {
            debug_assert_eq!(hi, 0, "bits shifted past the end of the polynomial");
        }
    }
}

/// `dst ^= src * x^shift`, where `src` has degree at most `src_deg`.
fn xor_shifted(dst: &mut [u64], src: &[u64], src_deg: usize, shift: usize) {
    for (k, &w) in src[..src_deg / 64 + 1].iter().enumerate() {
        if w != 0 {
            xor_bits64(dst, shift + 64 * k, w);
        }
    }
}

/// Squares a 32-bit polynomial: bit `i` of `x` moves to bit `2i` of the result
/// (over GF(2), `(sum a_i x^i)^2 = sum a_i x^(2i)`).
#[inline(always)]
fn spread32(x: u32) -> u64 {
    let mut x = u64::from(x);
    x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x << 2)) & 0x3333_3333_3333_3333;
    (x | (x << 1)) & 0x5555_5555_5555_5555
}

/// Berlekamp–Massey over GF(2).
///
/// `seq` holds the bits `s_0 .. s_{n-1}` (bit `i` = `s_i`). Returns the
/// minimal polynomial `phi(x) = x^L + c_1 x^(L-1) + ... + c_L` of the sequence
/// (the reciprocal of the connection polynomial), so that
/// `s_{k+L} = c_1 s_{k+L-1} + ... + c_L s_k` for all valid `k`. It is unique
/// when `n >= 2L`.
pub(crate) fn berlekamp_massey(seq: &[u64], n: usize) -> Vec<u64> {
    assert!(seq.len() * 64 >= n, "sequence shorter than n bits");
    let nw = n / 64 + 2;
    // Reversed sequence, r_j = s_{n-1-j}, zero padded: the discrepancy at step
    // i is then the parity of C AND r[(n-1-i)..], a word-aligned dot product.
    let mut r = vec![0u64; (2 * n) / 64 + 4];
    for j in 0..n {
        if bit(seq, n - 1 - j) {
            r[j / 64] |= 1 << (j % 64);
        }
    }
    let mut c = vec![0u64; nw]; // connection polynomial, c_0 = 1
    let mut b = vec![0u64; nw];
    let mut t = vec![0u64; nw];
    c[0] = 1;
    b[0] = 1;
    let (mut c_deg, mut b_deg) = (0usize, 0usize);
    let (mut l, mut m) = (0usize, 1usize);
    for i in 0..n {
        let o = n - 1 - i;
        let (q, sh) = (o / 64, o % 64);
        let cw = c_deg / 64 + 1;
        let mut acc = 0u64;
        if sh == 0 {
            for (k, &ck) in c[..cw].iter().enumerate() {
                acc ^= ck & r[q + k];
            }
        } else {
            let window = &r[q..q + cw + 1];
            for (k, &ck) in c[..cw].iter().enumerate() {
                acc ^= ck & ((window[k] >> sh) | (window[k + 1] << (64 - sh)));
            }
        }
        if acc.count_ones() & 1 == 0 {
            m += 1;
            continue;
        }
        if 2 * l <= i {
            let tw = c_deg / 64 + 1;
            t[..tw].copy_from_slice(&c[..tw]);
            t[tw..].fill(0);
            let t_deg = c_deg;
            xor_shifted(&mut c, &b, b_deg, m);
            c_deg = c_deg.max(b_deg + m);
            l = i + 1 - l;
            std::mem::swap(&mut b, &mut t);
            b_deg = t_deg;
            m = 1;
        } else {
            xor_shifted(&mut c, &b, b_deg, m);
            c_deg = c_deg.max(b_deg + m);
            m += 1;
        }
    }
    // deg C <= L is a BM invariant; reverse C into the monic minimal polynomial.
    assert!(degree(&c).unwrap_or(0) <= l);
    let mut phi = vec![0u64; l / 64 + 1];
    for k in 0..=l {
        if bit(&c, k) {
            phi[(l - k) / 64] |= 1 << ((l - k) % 64);
        }
    }
    phi
}

/// Arithmetic modulo a fixed polynomial `phi` of degree `D >= 1`.
///
/// Reduction uses the sparse form `x^D = r(x) (mod phi)`, `r = phi - x^D`:
/// bits at or above `D` are folded down in chunks of up to 64 bits, each
/// chunk XORed (word-unaligned, two word XORs) at every exponent of `r`. The
/// chunk width is capped by the gap `D - deg r` so a folded chunk never lands
/// on bits that are still to be reduced. For MT19937's `phi` (135 terms, gap
/// well above 64) a full reduction costs about 312 * 134 shifted XORs.
#[derive(Clone, Debug)]
pub(crate) struct Modulus {
    /// Full modulus polynomial (bit-packed).
    poly: Vec<u64>,
    /// Degree `D` of the modulus.
    degree: usize,
    /// Exponents of the nonzero terms of `r = phi - x^D`, descending.
    low_exps: Vec<usize>,
    /// Bits folded per reduction step, `min(64, D - deg r)`.
    chunk: usize,
    /// Words in a reduced polynomial: `D / 64 + 1`.
    words: usize,
}

impl Modulus {
    /// Builds the modulus from a bit-packed polynomial of degree >= 1.
    pub(crate) fn new(poly: &[u64]) -> Self {
        let degree = degree(poly).expect("modulus must be nonzero");
        assert!(degree >= 1, "modulus must have degree >= 1");
        let low_exps: Vec<usize> = (0..degree).rev().filter(|&e| bit(poly, e)).collect();
        let gap = degree - low_exps.first().copied().unwrap_or(0);
        let words = degree / 64 + 1;
        let mut p = poly.to_vec();
        p.resize(words, 0);
        Modulus {
            poly: p,
            degree,
            low_exps,
            chunk: gap.min(64),
            words,
        }
    }

    /// Degree `D` of the modulus.
    pub(crate) fn degree(&self) -> usize {
        self.degree
    }

    #[cfg(test)]
    /// The modulus polynomial itself (bit-packed, `D / 64 + 1` words).
    pub(crate) fn poly(&self) -> &[u64] {
        &self.poly
    }

    #[cfg(test)]
    /// Number of nonzero coefficients of the modulus.
    pub(crate) fn weight(&self) -> usize {
        self.low_exps.len() + 1
    }

    /// Reduces `p` modulo `phi` in place and truncates it to `D / 64 + 1` words.
    pub(crate) fn reduce(&self, p: &mut Vec<u64>) {
        let d = self.degree;
        if p.len() * 64 > d {
            let mut top = p.len() * 64 - 1;
            while top >= d {
                let lo = d.max(top + 1 - self.chunk);
                let width = top - lo + 1;
                let mask = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
                let h = get_bits64(p, lo) & mask;
                if h != 0 {
                    xor_bits64(p, lo, h); // clear the chunk
                    for &e in &self.low_exps {
                        // lands on bits [e + lo - d, e + lo - d + width), all < lo
                        xor_bits64(p, e + lo - d, h);
                    }
                }
                top = lo - 1;
            }
        }
        p.resize(self.words, 0);
    }

    /// `p^2 mod phi` for a reduced `p`.
    pub(crate) fn square(&self, p: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; 2 * p.len()];
        for (pair, &w) in out.chunks_exact_mut(2).zip(p) {
            pair[0] = spread32(w as u32);
            pair[1] = spread32((w >> 32) as u32);
        }
        self.reduce(&mut out);
        out
    }

    /// `p = p * x mod phi` for a reduced `p` of `D / 64 + 1` words.
    pub(crate) fn mul_x(&self, p: &mut [u64]) {
        debug_assert_eq!(p.len(), self.words);
        let mut carry = 0u64;
        for w in p.iter_mut() {
            let next = *w >> 63;
            *w = (*w << 1) | carry;
            carry = next;
        }
        debug_assert_eq!(carry, 0);
        if bit(p, self.degree) {
            // x^D = r(x): clear bit D and add r, i.e. add phi.
            for (w, &m) in p.iter_mut().zip(&self.poly) {
                *w ^= m;
            }
        }
    }

    /// `x^n mod phi`, by left-to-right square-and-multiply.
    ///
    /// Leading exponent bits are consumed without any arithmetic while the
    /// running exponent stays below `D` (the result is then a monomial).
    pub(crate) fn pow_x(&self, n: u64) -> Vec<u64> {
        let bits = 64 - n.leading_zeros() as usize;
        let mut e = 0u64;
        let mut i = bits;
        while i > 0 {
            let next = 2 * e + ((n >> (i - 1)) & 1);
            if next >= self.degree as u64 {
                break;
            }
            e = next;
            i -= 1;
        }
        let mut g = vec![0u64; self.words];
        g[e as usize / 64] = 1 << (e % 64);
        while i > 0 {
            g = self.square(&g);
            if (n >> (i - 1)) & 1 == 1 {
                self.mul_x(&mut g);
            }
            i -= 1;
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::splitmix;

    /// Schoolbook `x^n mod phi`, one multiplication by `x` at a time.
    fn naive_pow_x(phi: &[u64], n: u64) -> Vec<u64> {
        let d = degree(phi).unwrap();
        let mut g = vec![0u64; d / 64 + 1];
        g[0] = 1;
        for _ in 0..n {
            let mut carry = 0;
            for w in g.iter_mut() {
                let nx = *w >> 63;
                *w = (*w << 1) | carry;
                carry = nx;
            }
            if bit(&g, d) {
                for (w, &m) in g.iter_mut().zip(phi) {
                    *w ^= m;
                }
            }
        }
        g
    }

    #[test]
    fn degree_and_bit() {
        assert_eq!(degree(&[0, 0]), None);
        assert_eq!(degree(&[1]), Some(0));
        assert_eq!(degree(&[0, 1 << 5, 0]), Some(69));
        assert!(bit(&[0, 2], 65));
        assert!(!bit(&[0, 2], 64));
        assert!(!bit(&[0, 2], 1000));
    }

    #[test]
    fn spread_squares() {
        assert_eq!(spread32(0b1011), 0b1000101);
        assert_eq!(spread32(u32::MAX), 0x5555_5555_5555_5555);
    }

    #[test]
    fn berlekamp_massey_finds_small_lfsr() {
        // s_{k+5} = s_{k+2} + s_k  <=>  phi = x^5 + x^2 + 1 (primitive).
        let mut s = vec![1u64, 0, 0, 1, 0];
        while s.len() < 40 {
            let k = s.len() - 5;
            s.push(s[k + 2] ^ s[k]);
        }
        let mut packed = [0u64; 1];
        for (i, &b) in s.iter().enumerate() {
            packed[0] |= b << i;
        }
        assert_eq!(berlekamp_massey(&packed, 40), vec![0b100101]);
    }

    #[test]
    fn berlekamp_massey_random_lfsr_across_words() {
        // A random degree-150 recurrence; BM must find a polynomial that
        // generates the whole sequence and has degree <= 150.
        let mut st = 7u64;
        let taps: Vec<usize> = (0..150).filter(|_| splitmix(&mut st) & 1 == 1).collect();
        let n = 400;
        let mut s: Vec<u64> = (0..150).map(|_| splitmix(&mut st) & 1).collect();
        while s.len() < n {
            let k = s.len() - 150;
            s.push(taps.iter().fold(0, |a, &t| a ^ s[k + t]));
        }
        let mut packed = vec![0u64; n / 64 + 1];
        for (i, &b) in s.iter().enumerate() {
            packed[i / 64] |= b << (i % 64);
        }
        let phi = berlekamp_massey(&packed, n);
        let l = degree(&phi).unwrap();
        assert!(l <= 150 && l > 0);
        for k in 0..n - l {
            let v = (0..=l).filter(|&j| bit(&phi, j)).fold(0, |a, j| a ^ s[k + j]);
            assert_eq!(v, 0, "recurrence fails at k={k}");
        }
    }

    #[test]
    fn pow_x_matches_naive_for_various_moduli() {
        let mut st = 12345u64;
        let mut moduli: Vec<Vec<u64>> = vec![
            vec![0b100101],                       // x^5 + x^2 + 1
            vec![1 | (1 << 1), 1 << 63, 0, 1],    // gap large, D = 192
            vec![1, 0, 1 << 7 | 1 << 6 | 1 << 3], // gap 1, D = 135
        ];
        for &d in &[64usize, 100, 200, 300] {
            // random dense polynomial of degree d
            let mut p: Vec<u64> = (0..=d / 64).map(|_| splitmix(&mut st)).collect();
            p[d / 64] &= u64::MAX >> (63 - d % 64);
            p[d / 64] |= 1 << (d % 64);
            moduli.push(p);
        }
        for phi in &moduli {
            let m = Modulus::new(phi);
            for n in [0u64, 1, 2, 63, 64, 65, 134, 135, 136, 191, 192, 1000, 4321] {
                assert_eq!(m.pow_x(n), naive_pow_x(phi, n), "n={n} phi={phi:x?}");
            }
            assert_eq!(m.pow_x(24_690), m.square(&m.pow_x(12_345)));
        }
    }

    #[test]
    fn primitive_trinomial_has_full_period() {
        // x^31 + x^3 + 1 is primitive; as 2^31 - 1 is prime, x^(2^31 - 1) = 1 says so.
        let m = Modulus::new(&[(1 << 31) | (1 << 3) | 1]);
        assert_eq!(m.pow_x((1 << 31) - 1), vec![1]);
        assert_eq!(m.pow_x((1 << 31) + 7), m.pow_x(8));
    }
}
