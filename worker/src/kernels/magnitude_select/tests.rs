use super::*;
use crate::kernels::precision::{Bf16, F32, Precision, round_bf16};
use crate::kernels::sparsify::{magnitude, magnitude_keep_count, magnitude_mask};
use crate::kernels::torch_sum::{torch_sum_bf16, torch_sum_f32};
use std::ops::Range;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Random f32 magnitudes over several binades: (almost) no ties.
    Distinct,
    /// Values from a small set, signed zeros included: ties everywhere.
    SmallSet,
    /// bf16-rounded values in a narrow range: many ties.
    Bf16,
    /// Small set plus ±inf, NaNs of both signs and subnormals.
    Specials,
}

const KINDS: [Kind; 4] = [Kind::Distinct, Kind::SmallSet, Kind::Bf16, Kind::Specials];

fn data(kind: Kind, n: usize, rng: &mut Rng) -> Vec<f32> {
    let set = [0.0f32, -0.0, 0.25, -0.25, 0.5, -1.0, 1.0, 2.0, -2.0];
    (0..n)
        .map(|_| {
            let sign = if rng.next() & 1 == 0 { 1.0 } else { -1.0 };
            match kind {
                Kind::Distinct => sign * (rng.unit() + 0.5) * 2f32.powi(rng.range(0, 12) as i32 - 6),
                Kind::SmallSet => set[rng.range(0, set.len() - 1)],
                Kind::Bf16 => round_bf16(sign * (rng.unit() * 0.01 + 0.02)),
                Kind::Specials => match rng.range(0, 19) {
                    0 => f32::INFINITY,
                    1 => f32::NEG_INFINITY,
                    2 => f32::NAN,
                    3 => -f32::NAN,
                    4 => sign * f32::from_bits(rng.range(1, 5) as u32),
                    _ => set[rng.range(0, set.len() - 1)],
                },
            }
        })
        .collect()
}

/// Chunk ranges covering `0..n`: 1-element chunks, random uneven chunks, or one chunk.
fn partitions(n: usize, rng: &mut Rng) -> Vec<Vec<Range<usize>>> {
    let cut = |lens: Vec<usize>| {
        let mut s = 0;
        lens.into_iter()
            .map(|l| {
                s += l;
                s - l..s
            })
            .collect::<Vec<_>>()
    };
    let mut out = vec![cut(vec![n])];
    if n <= 1000 {
        out.push(cut(vec![1; n]));
    }
    let mut lens = Vec::new();
    let mut left = n;
    while left > 0 {
        let l = if rng.next().is_multiple_of(3) {
            rng.range(1, 9)
        } else {
            rng.range(1, (n / 4).max(1))
        };
        let l = l.min(left);
        lens.push(l);
        left -= l;
    }
    out.push(cut(lens));
    out
}

/// Random piece lengths covering `len`; with `bytes`, all but the last are multiples of 8.
fn pieces(len: usize, bytes: bool, rng: &mut Rng) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut s = 0;
    while s < len {
        let l = if bytes { 8 * rng.range(1, 40) } else { rng.range(1, 300) };
        let e = (s + l).min(len);
        out.push(s..e);
        s = e;
    }
    out
}

/// The chunked pipeline: returns the masked tensor (from [`ChunkMask::apply`]) and the keep
/// flags (from [`ChunkMask::bits`]).
fn chunked(deltas: &[f32], k: u64, chunks: &[Range<usize>], rng: &mut Rng) -> (Vec<f32>, Vec<bool>) {
    let highs: Vec<Histogram> = chunks
        .iter()
        .map(|r| {
            let mut c = HighCounter::new();
            for p in pieces(r.len(), false, rng) {
                c.add(&deltas[r.start + p.start..r.start + p.end]);
            }
            c.finish()
        })
        .collect();
    let (hb, above) = select_high(k, &merge(&highs).unwrap()).unwrap();
    let lows: Vec<Histogram> = chunks
        .iter()
        .map(|r| {
            let mut c = LowCounter::new(hb);
            for p in pieces(r.len(), false, rng) {
                c.add(&deltas[r.start + p.start..r.start + p.end]);
            }
            c.finish()
        })
        .collect();
    let (threshold, keep_ties) = select_low(k, hb, above, &merge(&lows).unwrap()).unwrap();
    assert_eq!(threshold >> 16, u32::from(hb));
    let ties: Vec<u64> = lows.iter().map(|h| h.count(threshold as u16)).collect();
    let per = ties_per_chunk(keep_ties, &ties);
    let mut masked = deltas.to_vec();
    let mut keep = vec![false; deltas.len()];
    for (r, &t) in chunks.iter().zip(&per) {
        let mut m = ChunkMask::new(threshold, t);
        for p in pieces(r.len(), false, rng) {
            m.apply(&mut masked[r.start + p.start..r.start + p.end]);
        }
        assert_eq!(m.ties_left, 0);
        let mut m = ChunkMask::new(threshold, t);
        let mut bits = vec![0xAAu8; 64];
        for p in pieces(r.len(), true, rng) {
            let piece = &deltas[r.start + p.start..r.start + p.end];
            m.bits(piece, &mut bits);
            for i in 0..piece.len() {
                keep[r.start + p.start + i] = bits[i / 8] >> (i % 8) & 1 == 1;
            }
            if !piece.len().is_multiple_of(8) {
                assert_eq!(bits[piece.len() / 8] >> (piece.len() % 8), 0, "unused bits are 0");
            }
        }
    }
    (masked, keep)
}

/// Stable sort of indices by key descending, then index ascending; keep the first k.
fn brute_force(deltas: &[f32], k: usize) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..deltas.len()).collect();
    idx.sort_by_key(|&i| std::cmp::Reverse(key(deltas[i])));
    let mut keep = vec![false; deltas.len()];
    for &i in &idx[..k] {
        keep[i] = true;
    }
    keep
}

fn check_invariants(deltas: &[f32], keep: &[bool], k: usize) {
    assert_eq!(keep.iter().filter(|&&b| b).count(), k, "kept count");
    let min_kept = deltas
        .iter()
        .zip(keep)
        .filter(|p| *p.1)
        .map(|p| key(*p.0))
        .min()
        .unwrap();
    let dropped = deltas.iter().zip(keep).filter(|p| !*p.1).map(|p| key(*p.0));
    if let Some(max_dropped) = dropped.max() {
        assert!(min_kept >= max_dropped, "kept {min_kept:#x} < dropped {max_dropped:#x}");
    }
    // Among keys equal to the threshold, kept ones come first.
    let tied = (0..deltas.len()).filter(|&i| key(deltas[i]) == min_kept);
    let mut seen_dropped = false;
    for i in tied {
        assert!(!(seen_dropped && keep[i]), "tie at {i} kept after a dropped tie");
        seen_dropped |= !keep[i];
    }
}

fn bits_of(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn chunked_equals_whole_and_brute_force() {
    let mut rng = Rng(0x5EED);
    let mut cases = 0;
    for kind in KINDS {
        for n in [1usize, 2, 7, 100, 1000, 70_000] {
            let deltas = data(kind, n, &mut rng);
            let parts = partitions(n, &mut rng);
            for density in [0.01, 0.1, 0.5, 0.53, 0.999] {
                let k = magnitude_keep_count(n, density);
                assert_eq!(plan(n as u64, density), Plan::TopK(k as u64));
                let mask = magnitude_mask(&deltas, density);
                assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0));
                let whole_keep: Vec<bool> = mask.iter().map(|&m| m == 1.0).collect();
                assert_eq!(whole_keep, brute_force(&deltas, k), "{kind:?} n={n} density={density}");
                check_invariants(&deltas, &whole_keep, k);
                let mut whole = deltas.clone();
                magnitude::<F32>(&mut whole, density, false);
                let expected: Vec<f32> = deltas.iter().zip(&mask).map(|(d, m)| d * m).collect();
                assert_eq!(bits_of(&whole), bits_of(&expected), "torch's delta * mask");
                for chunks in &parts {
                    let (masked, keep) = chunked(&deltas, k as u64, chunks, &mut rng);
                    let what = format!("{kind:?} n={n} density={density} {} chunks", chunks.len());
                    assert_eq!(bits_of(&masked), bits_of(&whole), "{what}");
                    assert_eq!(keep, whole_keep, "{what}");
                    cases += 1;
                }
            }
        }
    }
    assert!(cases > 300, "{cases}");
}

#[test]
fn whole_tensor_spanning_segments_equals_chunked() {
    let mut rng = Rng(77);
    let n = 2 * WHOLE_SEGMENT + 12_345;
    let deltas = data(Kind::SmallSet, n, &mut rng);
    // 2.0 and 1.0 each make up 2/9 of the set: the threshold is 1.0 and its kept ties
    // (~18% of n) outnumber the ~22% of one segment.
    let density = 0.4;
    let k = magnitude_keep_count(n, density);
    let masks = whole_tensor_masks(&deltas, k as u64);
    assert_eq!(masks.len(), 3);
    // The threshold's ties span all segments; the first segments keep all of theirs.
    assert!(masks[0].ties_left > 0 && masks[1].ties_left > 0);
    let mut whole = deltas.clone();
    magnitude::<F32>(&mut whole, density, false);
    let chunks = &partitions(n, &mut rng)[1];
    let (masked, keep) = chunked(&deltas, k as u64, chunks, &mut rng);
    assert_eq!(bits_of(&masked), bits_of(&whole));
    check_invariants(&deltas, &keep, k);
}

#[test]
fn rescale_is_the_l1_rescale_of_the_masked_delta() {
    fn reference<P: Precision>(deltas: &[f32], keep: &[bool]) -> Vec<f32> {
        let l1 = |xs: &[f32]| match P::DTYPE {
            crate::kernels::WorkDType::F32 => torch_sum_f32(xs, f32::abs),
            _ => P::rnd(torch_sum_bf16(xs, f32::abs)),
        };
        let before = l1(deltas);
        let mut d: Vec<f32> = deltas
            .iter()
            .zip(keep)
            .map(|(&x, &k)| P::rnd(x * if k { 1.0 } else { 0.0 }))
            .collect();
        let after = l1(&d);
        if before >= 1e-7 && after >= 1e-7 {
            let scale = P::rnd(before / after);
            d.iter_mut().for_each(|x| *x = P::rnd(*x * scale));
        }
        d
    }
    let mut rng = Rng(3);
    for kind in [Kind::Distinct, Kind::SmallSet, Kind::Bf16] {
        for n in [1usize, 7, 1000, 70_000] {
            let deltas: Vec<f32> = data(kind, n, &mut rng).into_iter().map(round_bf16).collect();
            for density in [0.1, 0.53] {
                let keep = brute_force(&deltas, magnitude_keep_count(n, density));
                let mut f = deltas.clone();
                magnitude::<F32>(&mut f, density, true);
                assert_eq!(bits_of(&f), bits_of(&reference::<F32>(&deltas, &keep)));
                let mut b = deltas.clone();
                magnitude::<Bf16>(&mut b, density, true);
                assert_eq!(bits_of(&b), bits_of(&reference::<Bf16>(&deltas, &keep)));
            }
        }
    }
}

#[test]
fn plan_and_edges() {
    assert_eq!(plan(10, 1.0), Plan::Unchanged);
    assert_eq!(plan(0, 1.0), Plan::Unchanged);
    assert_eq!(plan(10, 0.0), Plan::Zeros);
    assert_eq!(plan(10, -0.5), Plan::Zeros);
    assert_eq!(plan(0, 0.5), Plan::Zeros);
    assert_eq!(plan(10, 0.01), Plan::TopK(1));
    assert_eq!(plan(10, 0.55), Plan::TopK(5));
    assert_eq!(plan(10, f64::NAN), Plan::TopK(1));
    assert_eq!(magnitude_mask(&[1.0, 2.0], 0.0), vec![0.0, 0.0]);
    assert_eq!(magnitude_mask(&[1.0, 2.0], 1.0), vec![1.0, 1.0]);
    assert!(magnitude_mask(&[], 0.5).is_empty());
    // Lowest index first among ties; NaN ranks above inf.
    assert_eq!(
        magnitude_mask(&[1.0, -2.0, 2.0, 2.0, 0.5], 0.4),
        vec![0.0, 1.0, 1.0, 0.0, 0.0]
    );
    assert_eq!(
        magnitude_mask(&[f32::INFINITY, -f32::NAN, 1.0], 0.34),
        vec![0.0, 1.0, 0.0]
    );
    assert!(key(-f32::NAN) > key(f32::INFINITY) && key(-0.0) == key(0.0));
}

#[test]
fn counters_ties_and_masks() {
    let mut h = HighCounter::new();
    h.add(&[1.0, -1.0]);
    h.add(&[]);
    h.add(&[0.0, 2.0]);
    let one = key(1.0) >> 16;
    let two = key(2.0) >> 16;
    assert_eq!(
        h.finish(),
        Histogram {
            bins: vec![0, one, two],
            counts: vec![1, 2, 1]
        }
    );
    assert_eq!(HighCounter::new().finish(), Histogram::default());
    let mut l = LowCounter::new(one as u16);
    let near = f32::from_bits(0x3F80_0008); // same high 16 bits as 1.0
    l.add(&[1.0, -near, 1.5, 2.0, -1.0]);
    let h = l.finish();
    assert_eq!(h.bins, vec![0, 8]);
    assert_eq!(h.counts, vec![2, 1]);
    assert_eq!(h.count(key(1.0) as u16), 2);
    assert_eq!(h.count(7), 0);
    assert_eq!(h.total(), 3);
    assert_eq!(ties_per_chunk(5, &[2, 0, 4, 3]), vec![2, 0, 3, 0]);
    assert_eq!(ties_per_chunk(0, &[2, 1]), vec![0, 0]);
    assert_eq!(ties_per_chunk(9, &[2, 1]), vec![2, 1]);
    let mut m = ChunkMask::new(key(1.0), 1);
    let mut d = [-1.0f32, 3.0, -1.0, -0.5, f32::NEG_INFINITY, 1.0];
    let mut bits = [0xFFu8; 2];
    let mut copy = m;
    copy.bits(&d, &mut bits);
    assert_eq!(bits, [0b0001_0011, 0xFF]);
    m.apply(&mut d);
    assert_eq!(m.ties_left, 0);
    assert_eq!(bits_of(&d[..5]), bits_of(&[-1.0, 3.0, -0.0, -0.0, f32::NEG_INFINITY]));
    assert!(d[5] == 0.0 && d[5].is_sign_positive());
    let mut mask = [9.0f32; 3];
    ChunkMask::new(key(1.0), 0).mask(&[2.0, 1.0, f32::NAN], &mut mask);
    assert_eq!(mask, [1.0, 0.0, 1.0]);
}

#[test]
#[should_panic(expected = "keep bits need")]
fn bits_checks_the_buffer() {
    ChunkMask::new(0, 0).bits(&[1.0; 9], &mut [0u8; 1]);
}

#[test]
fn malformed_histograms_and_k_out_of_range() {
    let h = |bins: Vec<u32>, counts: Vec<u64>| Histogram { bins, counts };
    let good = h(vec![1, 5], vec![2, 3]);
    for bad in [
        h(vec![1, 2], vec![1]),
        h(vec![3, 2], vec![1, 1]),
        h(vec![2, 2], vec![1, 1]),
        h(vec![65_536], vec![1]),
        h(vec![1, 2], vec![u64::MAX, 1]),
    ] {
        assert!(merge(&[good.clone(), bad.clone()]).is_err(), "{bad:?}");
        assert!(select_high(1, &bad).is_err(), "{bad:?}");
        assert!(select_low(1, 0, 0, &bad).is_err(), "{bad:?}");
    }
    let e = merge(&[good.clone(), h(vec![1, 2], vec![1])]).unwrap_err();
    assert!(e.starts_with("histogram 1:"), "{e}");
    assert!(merge(&[h(vec![7], vec![u64::MAX]), h(vec![7], vec![1])]).is_err());
    assert_eq!(merge(&[]).unwrap(), Histogram::default());
    assert_eq!(
        merge(&[good.clone(), h(vec![0, 5, 65_535], vec![1, 0, 4])]).unwrap(),
        h(vec![0, 1, 5, 65_535], vec![1, 2, 3, 4])
    );
    assert!(select_high(0, &good).is_err());
    assert!(select_high(6, &good).is_err());
    assert!(select_high(1, &Histogram::default()).is_err());
    assert_eq!(select_high(1, &good), Ok((5, 0)));
    assert_eq!(select_high(3, &good), Ok((5, 0)));
    assert_eq!(select_high(4, &good), Ok((1, 3)));
    assert_eq!(select_high(5, &good), Ok((1, 3)));
    // k = 4, 3 keys above bin 1: the 1st largest of bin 1's lows.
    assert_eq!(select_low(4, 1, 3, &h(vec![9, 10], vec![1, 1])), Ok((0x1_000A, 1)));
    assert_eq!(select_low(5, 1, 3, &h(vec![9], vec![2])), Ok((0x1_0009, 2)));
    assert_eq!(select_low(5, 1, 3, &h(vec![9, 10], vec![4, 1])), Ok((0x1_0009, 1)));
    assert!(select_low(3, 1, 3, &good).is_err(), "k must exceed the count above");
    assert!(select_low(9, 1, 3, &good).is_err(), "the bin holds too few keys");
}
