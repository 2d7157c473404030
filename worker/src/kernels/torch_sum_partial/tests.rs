//! Tests of [`super`]: combined partials equal torch's serial kernel bit for bit.

use super::super::torch_sum::{kernel, round_bf16};
use super::*;
use crate::kernels::test_vectors::mix;

const KINDS: [SumKind; 2] = [SumKind::F32, SumKind::Bf16];

/// Signed 24-bit mantissas over 16 binades (`gen_a` of the torch_sum tests) with one in 64 a
/// spike about 2^20 times larger (so partial sums round coarsely), rounded to bf16 for bfloat16
/// parts.
fn values(kind: SumKind, n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| mix(seed, i))
        .map(|z| {
            let spike = if (z >> 16) & 63 == 0 { 20 } else { 0 };
            let x = (z >> 40) as f32 * 2f32.powi(((z >> 8) & 15) as i32 - 40 + spike);
            let x = if z & 1 == 1 { -x } else { x };
            match kind {
                SumKind::F32 => x,
                SumKind::Bf16 => round_bf16(x),
            }
        })
        .collect()
}

fn width(kind: SumKind) -> usize {
    Geometry::new(kind, 0).width
}

fn one_shot(kind: SumKind, xs: &[f32]) -> f32 {
    match kind {
        SumKind::F32 => kernel::<F32Vec>(xs, &|x| x),
        SumKind::Bf16 => kernel::<Bf16Vec>(xs, &|x| x),
    }
}

/// The partial of `part[r]`, fed in pieces of 1 to 5000 elements.
fn partial(kind: SumKind, part: &[f32], r: Range<usize>, seed: u64) -> SumPartial {
    let mut s = PartialStream::new(kind, part.len(), r.start, r.len()).unwrap();
    let mut at = r.start;
    while at < r.end {
        let z = mix(seed, at);
        let max = if z & 3 == 0 { 64 } else { 5000 };
        let take = ((z >> 8) as usize % max + 1).min(r.end - at);
        s.feed(&part[at..at + take]);
        at += take;
    }
    s.finish().unwrap()
}

/// Ranges of `sizes[i % sizes.len()]` granules each, the last one ending the part.
fn split(kind: SumKind, n: usize, sizes: &[usize]) -> Vec<Range<usize>> {
    let gran = granule(kind, n);
    let mut out = Vec::new();
    let mut at = 0;
    for &s in sizes.iter().cycle() {
        let end = (at + s * gran).min(n);
        out.push(at..end);
        at = end;
        if at == n {
            return out;
        }
    }
    unreachable!()
}

fn check(kind: SumKind, part: &[f32], partition: &[Range<usize>], what: &str) {
    let want = one_shot(kind, part);
    let partials: Vec<SumPartial> = partition
        .iter()
        .map(|r| partial(kind, part, r.clone(), r.start as u64))
        .collect();
    let got = combine(kind, part.len(), &partials).unwrap();
    let n = part.len();
    assert_eq!(
        got.to_bits(),
        want.to_bits(),
        "{kind:?} n = {n} {what}: {got} vs {want}"
    );
    for p in &partials {
        let floats = p.to_floats();
        let back = SumPartial::from_floats(&floats).unwrap();
        assert_eq!(&back, p, "{kind:?} n = {n} {what}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.to_floats()), bits(&floats));
    }
}

/// Part lengths with every kind of tail: partial blocks, partial ILP rows, leftover vectors and
/// a scalar tail; the last one crosses two multiples of `S = 16 G` rows.
fn lengths(kind: SumKind) -> Vec<usize> {
    let (w, g) = (width(kind), granule(kind, 0));
    let r = ILP * w;
    let mut v = vec![
        0,
        1,
        7,
        8,
        15,
        16,
        17,
        63,
        64,
        65,
        1000,
        g - 1,
        g,
        g + 1,
        2 * g + 3,
        2 * g + w,
    ];
    v.extend([
        2 * g + 3 * w + 5,
        3 * g + 17 * r + 2 * w + 5,
        3 * g + 16 * r,
        4 * g + 5 * r + 7,
        6 * g,
    ]);
    v.push(35 * g + 300 * r + 3 * w + 7);
    v
}

#[test]
fn granules() {
    assert_eq!(granule(SumKind::F32, 0), 8192);
    assert_eq!(granule(SumKind::Bf16, 100), 16384);
    assert_eq!(granule(SumKind::F32, (1 << 19) * 32 + 31), 8192);
    assert_eq!(granule(SumKind::F32, (1 << 19) * 32 + 32), 1024 * 32);
    assert_eq!(granule(SumKind::Bf16, (1 << 23) * 64 + 64), 4096 * 64);
}

#[test]
fn every_partition_matches_the_kernel() {
    for kind in KINDS {
        for n in lengths(kind) {
            let xs = values(kind, n, n as u64 + 1);
            let abs: Vec<f32> = xs.iter().map(|x| x.abs()).collect();
            let g = granule(kind, n);
            let mut partitions = vec![
                ("whole", std::iter::once(0..n).collect()),
                ("planned", ranges(kind, n, 5 * g - 7)),
            ];
            if n > g {
                partitions.push(("granules", split(kind, n, &[1])));
                partitions.push(("uneven", split(kind, n, &[3, 1, 11, 18, 2])));
            }
            for (what, partition) in &partitions {
                check(kind, &xs, partition, what);
                check(kind, &abs, partition, &format!("{what} abs"));
            }
        }
    }
}

#[test]
fn crossing_ranges_carry_level_two() {
    let (kind, g) = (SumKind::F32, 8192);
    let n = 35 * g + 100;
    let layout = |s: usize, l: usize| Layout::of(kind, n, s * g, l * g).unwrap();
    assert_eq!(
        layout(0, 35),
        Layout {
            head: 16,
            done: Some(1),
            loads: None
        }
    );
    assert_eq!(
        layout(15, 1),
        Layout {
            head: 1,
            done: Some(0),
            loads: None
        }
    );
    assert_eq!(
        layout(16, 1),
        Layout {
            head: 1,
            done: None,
            loads: None
        }
    );
    assert_eq!(Layout::of(kind, n, 15 * g, 20 * g + 100).unwrap().done, Some(1));
    let p = partial(kind, &values(kind, n, 5), 0..n, 7);
    assert_eq!(p.carried.as_ref().map(|c| c.done.len()), Some(1));
    assert_eq!(p.end.as_ref().map(|e| e.loads.len()), Some(100 / 8 % 4));
}

#[test]
#[ignore = "cascade power 5: 17M and 34M elements (0.2 GB), ~1.5 s; run with --ignored"]
fn power_five_parts_match_the_kernel() {
    for kind in KINDS {
        let w = width(kind);
        let n = ((1 << 19) + 1) * ILP * w + 3 * w + 5;
        let g = granule(kind, n);
        assert_eq!(g, 1024 * ILP * w);
        let xs = values(kind, n, 11);
        check(kind, &xs, &ranges(kind, n, 45 * g), "45 granules");
        check(kind, &xs, &split(kind, n, &[1, 31, 2, 70]), "uneven");
    }
}

#[test]
fn ranges_are_aligned_and_tile_the_part() {
    for kind in KINDS {
        let g = granule(kind, 0);
        for n in [0, 1, g - 1, g, 5 * g + 3, 17 * g] {
            for target in [0, 1, g, g + 1, 3 * g, usize::MAX] {
                let rs = ranges(kind, n, target);
                let size = target.div_ceil(g).max(1).saturating_mul(g);
                assert_eq!(rs.len(), n.div_ceil(size).max(1), "{kind:?} {n} {target}");
                assert_eq!(rs[0].start, 0);
                assert_eq!(rs.last().unwrap().end, n);
                for (a, b) in rs.iter().zip(&rs[1..]) {
                    assert_eq!(a.end, b.start);
                }
                for r in rs {
                    assert!(r.len() <= size && (r.start < r.end || n == 0));
                    PartialStream::new(kind, n, r.start, r.len()).unwrap();
                }
            }
        }
    }
}

#[test]
fn rejects_unaligned_ranges() {
    let (kind, g) = (SumKind::F32, 8192);
    let n = 3 * g + 5;
    for (s, l) in [
        (100, g),
        (g, g + 1),
        (g, 3 * g),
        (3 * g, 0),
        (4 * g, 0),
        (usize::MAX, 2),
    ] {
        assert!(PartialStream::new(kind, n, s, l).is_err(), "{s}+{l}");
    }
    for (s, l) in [(0, n), (g, g), (g, 2 * g + 5), (3 * g, 5)] {
        assert!(PartialStream::new(kind, n, s, l).is_ok(), "{s}+{l}");
    }
    assert!(PartialStream::new(kind, 0, 0, 0).is_ok());
    assert!(PartialStream::new(kind, 0, 0, 1).is_err());
    assert!(PartialStream::new(SumKind::Bf16, n, g, g).is_err());
}

#[test]
fn rejects_wrong_fed_counts() {
    let (kind, n) = (SumKind::Bf16, 40_000);
    let xs = values(kind, n + 1, 3);
    let mut s = PartialStream::new(kind, n, 16384, n - 16384).unwrap();
    s.feed(&xs[16384..n - 1]);
    assert!(s.finish().is_err());
    let mut s = PartialStream::new(kind, n, 16384, n - 16384).unwrap();
    s.feed(&xs[16384..n]);
    s.feed(&xs[n..]);
    assert!(s.finish().is_err());
    let mut s = PartialStream::new(kind, n, 0, 16384).unwrap();
    s.feed(&xs[..16385]);
    assert!(s.finish().is_err());
}

#[test]
fn rejects_malformed_floats() {
    let (kind, g) = (SumKind::F32, 8192);
    let n = 35 * g + 100;
    let xs = values(kind, n, 4);
    let good = [partial(kind, &xs, 0..n, 1), partial(kind, &xs, 15 * g..33 * g, 2)];
    for p in &good {
        let v = p.to_floats();
        let edit = |i: usize, x: f32| {
            let mut v = v.clone();
            v[i] = x;
            v
        };
        let bad = [
            vec![],
            v[..HEADER - 1].to_vec(),
            v[..v.len() - 1].to_vec(),
            [&v[..], &[0.0]].concat(),
            edit(0, 2.0),
            edit(1, 2.0),
            edit(1, f32::NAN),
            edit(2, 0.5),
            edit(2, -1.0),
            edit(2, f32::NAN),
            edit(2, 16_777_216.0),
            edit(4, 65_536.0),
            edit(4, f32::INFINITY),
            edit(5, 1.0),
            edit(2, 100.0),
            edit(8, v[8] + 8.0),
        ];
        for (i, b) in bad.iter().enumerate() {
            assert!(SumPartial::from_floats(b).is_err(), "case {i}");
        }
        assert_eq!(&SumPartial::from_floats(&v).unwrap(), p);
    }
}

#[test]
fn rejects_partials_not_tiling_the_part() {
    let (kind, g) = (SumKind::Bf16, 16384);
    let n = 4 * g + 9;
    let xs = values(kind, n, 6);
    let ps: Vec<SumPartial> = split(kind, n, &[1])
        .into_iter()
        .map(|r| partial(kind, &xs, r, 0))
        .collect();
    assert_eq!(ps.len(), 5);
    assert!(combine(kind, n, &ps).is_ok());
    let pick = |idx: &[usize]| idx.iter().map(|&i| ps[i].clone()).collect::<Vec<_>>();
    for idx in [
        &[][..],
        &[1, 2, 3, 4],
        &[0, 1, 2, 3],
        &[0, 2, 3, 4],
        &[0, 1, 1, 2, 3, 4],
        &[1, 0, 2, 3, 4],
    ] {
        assert!(combine(kind, n, &pick(idx)).is_err(), "{idx:?}");
    }
    assert!(combine(kind, n, &pick(&[0, 1, 2, 3, 4, 4])).is_err());
    assert!(combine(SumKind::F32, n, &ps).is_err());
    assert!(combine(kind, n + 1, &ps).is_err());
    let empty = partial(kind, &[], 0..0, 0);
    assert_eq!(combine(kind, 0, std::slice::from_ref(&empty)), Ok(0.0));
    assert!(combine(kind, 0, &[empty.clone(), empty]).is_err());
}

#[test]
fn of_zeros_equals_feeding_zeros() {
    let bits = |p: &SumPartial| p.to_floats().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for kind in KINDS {
        for n in lengths(kind) {
            let g = granule(kind, n);
            let zeros = vec![0.0f32; n];
            let mut partitions = vec![std::iter::once(0..n).collect(), ranges(kind, n, 3 * g)];
            if n > g {
                partitions.push(split(kind, n, &[3, 1, 11, 18, 2]));
            }
            for r in partitions.into_iter().flatten() {
                let fed = partial(kind, &zeros, r.clone(), r.start as u64);
                let built = SumPartial::of_zeros(kind, n, r.clone()).unwrap();
                assert_eq!(built, fed, "{kind:?} n = {n} {r:?}");
                assert_eq!(bits(&built), bits(&fed), "{kind:?} n = {n} {r:?}");
                assert_eq!(SumPartial::from_floats(&built.to_floats()).as_ref(), Ok(&built));
            }
        }
    }
    // Cascade power 5 (parts of more than 2^19 rows, as a 405B model's): 1024-row granules.
    let kind = SumKind::F32;
    let n = ((1 << 19) + 1) * ILP * width(kind) + 3 * width(kind) + 5;
    let zeros = vec![0.0f32; n];
    for r in ranges(kind, n, 45 * granule(kind, n)) {
        let built = SumPartial::of_zeros(kind, n, r.clone()).unwrap();
        assert_eq!(
            bits(&built),
            bits(&partial(kind, &zeros, r.clone(), 1)),
            "power 5, {r:?}"
        );
    }
    let (kind, g) = (SumKind::F32, 8192);
    assert!(SumPartial::of_zeros(kind, 3 * g + 5, 100..g).is_err());
    assert!(SumPartial::of_zeros(kind, 3 * g + 5, g..2 * g + 1).is_err());
    assert!(SumPartial::of_zeros(kind, 3 * g + 5, Range { start: 2 * g, end: g }).is_err());
    assert!(SumPartial::of_zeros(kind, 0, 0..1).is_err());
}
