//! Every stage in links of any length, then apply in chunks, gives the whole kernel's bytes.

use super::*;
use crate::kernels::karcher::{merge, sdot};
use crate::kernels::precision::{Bf16, F16, F32};

use crate::kernels::stream_ops::{SliceSource as Narrow, test_values};

fn values<P: Precision>(n: usize, seed: u64, scale: f32, around: &[f32]) -> Vec<f32> {
    test_values::<P>(n, seed, scale, (!around.is_empty()).then_some(around))
}

/// Runs every stage in links of `chunk` elements (skipping those that do not run), then
/// apply in chunks of `chunk`.
fn staged<P: Precision>(inputs: &[Vec<f32>], max_iter: i64, tol: f64, chunk: usize) -> Vec<f32> {
    let n = inputs[0].len();
    let params = Params { k: inputs.len(), tol };
    let links: Vec<std::ops::Range<usize>> = (0..n).step_by(chunk).map(|s| s..(s + chunk).min(n)).collect();
    let mut stats = Stats::default();
    for s in 0..Stage::count(max_iter) {
        let stage = Stage::of(s);
        if !params.runs(stage, &stats) {
            continue;
        }
        let valid = params.valid(&stats).len();
        let mut feeds = match stage {
            Stage::Norms => Feeds::Norms((0..params.k).map(|_| NormStream::new(n)).collect()),
            Stage::Dots(_) => Feeds::Dots((0..valid).map(|_| DotStream::new::<P>(n)).collect()),
            _ => Feeds::Norms(vec![NormStream::new(n)]),
        };
        for l in &links {
            // Each link resumes from the state the one before left (as chunk tasks do).
            feeds = match feeds {
                Feeds::Norms(ns) => Feeds::Norms(
                    ns.iter()
                        .map(|m| {
                            let (fed, acc, tail) = m.state();
                            NormStream::resume(n, fed, acc, tail).unwrap()
                        })
                        .collect(),
                ),
                Feeds::Dots(ds) => Feeds::Dots(
                    ds.iter()
                        .map(|d| {
                            let (fed, lanes, sum) = d.state();
                            DotStream::resume::<P>(n, fed, &lanes, sum).unwrap()
                        })
                        .collect(),
                ),
            };
            let views: Vec<Narrow<'_>> = inputs.iter().map(|x| Narrow(x, l.start)).collect();
            let xs: Vec<&dyn ChunkSource<String>> = views.iter().map(|v| v as &dyn ChunkSource<String>).collect();
            link::<P, String>(stage, l.len(), &xs, params, &stats, &mut feeds).unwrap();
        }
        match (stage, feeds) {
            (Stage::Norms, Feeds::Norms(ns)) => stats.norms = ns.into_iter().map(NormStream::finish).collect(),
            (Stage::MeanNorm, Feeds::Norms(ns)) => stats.mean_norm = ns.into_iter().next().map(NormStream::finish),
            (Stage::Dots(_), Feeds::Dots(ds)) => stats.iters.push(Iteration {
                dots: ds.into_iter().map(|d| d.finish::<P>().clamp(-1.0, 1.0)).collect(),
                ..Default::default()
            }),
            (Stage::TangentNorm(j), Feeds::Norms(ns)) => {
                stats.iters[j].tangent_norm = ns.into_iter().next().map(NormStream::finish)
            }
            (Stage::UpdateNorm(j), Feeds::Norms(ns)) => {
                stats.iters[j].update_norm = ns.into_iter().next().map(NormStream::finish)
            }
            _ => unreachable!(),
        }
        let wire = stats.to_floats();
        assert_eq!(
            Stats::from_floats(params, &wire).map(|s| s.to_floats()),
            Some(wire.clone())
        );
    }
    let out = std::sync::Mutex::new(vec![f32::NAN; n]);
    for l in &links {
        let views: Vec<Narrow<'_>> = inputs.iter().map(|x| Narrow(x, l.start)).collect();
        let xs: Vec<&dyn ChunkSource<String>> = views.iter().map(|v| v as &dyn ChunkSource<String>).collect();
        let sink = |start: usize, v: &[f32]| -> Result<(), String> {
            out.lock().unwrap()[l.start + start..l.start + start + v.len()].copy_from_slice(v);
            Ok(())
        };
        apply::<P, String>(l.len(), &xs, params, &stats, &sink).unwrap();
    }
    out.into_inner().unwrap()
}

fn check<P: Precision>(inputs: &[Vec<f32>], max_iter: i64, tol: f64, chunk: usize, what: &str) {
    let mut want = inputs.to_vec();
    let mut refs: Vec<&mut [f32]> = want.iter_mut().map(|x| &mut x[..]).collect();
    merge::<P>(&mut refs, max_iter, tol);
    let got = staged::<P>(inputs, max_iter, tol, chunk);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&got) == bits(&want[0]),
        "{:?} {what}: n = {}, k = {}, max_iter {max_iter}, chunks of {chunk}",
        P::DTYPE,
        inputs[0].len(),
        inputs.len()
    );
}

fn family<P: Precision>(n: usize, k: usize) -> Vec<Vec<f32>> {
    let base = values::<P>(n, 5, 1.0, &[]);
    (0..k)
        .map(|i| values::<P>(n, 21 + i as u64 + n as u64, 0.3, &base))
        .collect()
}

#[test]
fn stages_in_links_equal_the_whole_kernel() {
    for (n, chunk) in [
        (1, 1),
        (3, 2),
        (37, 5),
        (4099, 1000),
        (3 * PIECE + 77, PIECE + 3),
        (100_003, 30_000),
    ] {
        for k in [2, 3] {
            for max_iter in [0, 1, 10] {
                check::<F32>(&family::<F32>(n, k), max_iter, 1e-5, chunk, "family");
                check::<Bf16>(&family::<Bf16>(n, k), max_iter, 1e-5, chunk, "family");
                check::<F16>(&family::<F16>(n, k), max_iter, 1e-5, chunk, "family");
            }
        }
    }
}

#[test]
fn edge_cases_equal_the_whole_kernel() {
    let n = 1000;
    let x = values::<F32>(n, 3, 1.0, &[]);
    let neg: Vec<f32> = x.iter().map(|v| -v).collect();
    let zeros = vec![0.0f32; n];
    // Identical inputs converge at once; an antipodal pair has a vanishing mean; a zero input
    // is invalid; all-zero inputs give zeros.
    let cases: [(&str, Vec<Vec<f32>>); 4] = [
        ("identical", vec![x.clone(), x.clone()]),
        ("antipodal", vec![x.clone(), neg.clone()]),
        (
            "a zero input",
            vec![zeros.clone(), x.clone(), neg.iter().map(|v| v * 0.5 + 0.1).collect()],
        ),
        ("all zero", vec![zeros.clone(), zeros.clone()]),
    ];
    for (what, inputs) in &cases {
        for chunk in [7, 333, n] {
            check::<F32>(inputs, 10, 1e-5, chunk, what);
            let b: Vec<Vec<f32>> = inputs
                .iter()
                .map(|v| v.iter().map(|&x| Bf16::rnd(x)).collect())
                .collect();
            check::<Bf16>(&b, 10, 1e-5, chunk, what);
        }
    }
}

#[test]
fn the_dot_stream_is_sdot_in_pieces() {
    for n in [1, 3, 4, 5, 15, 16, 17, 31, 47, 63, 100, 1021] {
        let a = values::<F32>(n, 9, 1.0, &[]);
        let b = values::<F32>(n, 11, 1.0, &[]);
        for piece in [1, 3, 16, 64] {
            let mut d = DotStream::new::<F32>(n);
            for (x, y) in a.chunks(piece).zip(b.chunks(piece)) {
                let (fed, lanes, sum) = d.state();
                d = DotStream::resume::<F32>(n, fed, &lanes, sum).unwrap();
                d.feed(x, y);
            }
            assert_eq!(
                d.finish::<F32>().to_bits(),
                sdot(&a, &b).to_bits(),
                "n = {n}, pieces of {piece}"
            );
        }
    }
}
