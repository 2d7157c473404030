//! The four stages over chunk-relative sources, in links and aligned chunks, give the whole
//! kernel's bytes.

use super::*;
use crate::kernels::multislerp::merge;
use crate::kernels::precision::{Bf16, F16, F32};
use crate::kernels::torch_sum_partial;
use std::sync::Mutex;

use crate::kernels::stream_ops::{SliceSource as Narrow, test_values as values};

fn view<'a>(xs: &'a [Narrow<'a>], b: &'a Option<Narrow<'a>>) -> Inputs<'a, String> {
    Inputs {
        xs: xs.iter().map(|x| x as &dyn ChunkSource<String>).collect(),
        base: b.as_ref().map(|b| b as &dyn ChunkSource<String>),
    }
}

/// Runs the stages over `links` (contiguous ranges) and aligned dot chunks of `chunk`
/// elements, then apply in chunks of `chunk`.
fn staged<P: Precision>(
    models: &[Vec<f32>],
    base: Option<&[f32]>,
    setup: &Setup,
    chunk: usize,
) -> Result<Vec<f32>, String> {
    let n = models[0].len();
    let k = models.len();
    let links: Vec<Range<usize>> = (0..n).step_by(chunk).map(|s| s..(s + chunk).min(n)).collect();
    let inputs_at = |at: usize| -> (Vec<Narrow<'_>>, Option<Narrow<'_>>) {
        (
            models.iter().map(|m| Narrow(m, at)).collect(),
            base.map(|b| Narrow(b, at)),
        )
    };
    let mut stats = Stats::default();
    // Stage 1.
    let mut norms: Vec<NormStream> = (0..k).map(|_| NormStream::new(n)).collect();
    for l in &links {
        let (xs, b) = inputs_at(l.start);
        let inputs = view(&xs, &b);
        link_norms::<P, String>(l.len(), &inputs, &mut norms)?;
    }
    stats.norms = norms.into_iter().map(|m| P::rnd(m.finish())).collect();
    // Stage 2.
    let mut norm = NormStream::new(n);
    for l in &links {
        let (xs, b) = inputs_at(l.start);
        let inputs = view(&xs, &b);
        link_mean_norm::<P, String>(l.len(), &inputs, setup, &stats, &mut norm)?;
    }
    stats.mean_norm = Some(P::rnd(norm.finish()));
    // Stage 3.
    let mut chunks = Vec::new();
    for r in torch_sum_partial::ranges(SumKind::of(P::DTYPE), n, chunk) {
        let (xs, b) = inputs_at(r.start);
        let inputs = view(&xs, &b);
        chunks.push(dot_partials::<P, String>(n, r, &inputs, setup, &stats)??);
    }
    stats.dots = dots::<P>(n, k, &chunks)?;
    // Stage 4.
    let mut norm = NormStream::new(n);
    for l in &links {
        let (xs, b) = inputs_at(l.start);
        let inputs = view(&xs, &b);
        link_tangent_norm::<P, String>(l.len(), &inputs, setup, &stats, &mut norm)??;
    }
    stats.tangent_norm = Some(P::rnd(norm.finish()));
    let wire = stats.to_floats();
    let back = Stats::from_floats(k, &wire).expect("the wire form reads back");
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(back.to_floats()), bits(wire));
    // Apply.
    let out = Mutex::new(vec![f32::NAN; n]);
    for l in &links {
        let (xs, b) = inputs_at(l.start);
        let inputs = view(&xs, &b);
        let sink = |start: usize, v: &[f32]| -> Result<(), String> {
            out.lock().unwrap()[l.start + start..l.start + start + v.len()].copy_from_slice(v);
            Ok(())
        };
        apply::<P, String>(l.len(), &inputs, setup, &stats, &sink)??;
    }
    Ok(out.into_inner().unwrap())
}

fn check<P: Precision>(n: usize, k: usize, with_base: bool, chunk: usize) {
    let base = values::<P>(n, 7, 1.0, None);
    let around = with_base.then_some(&base[..]);
    let models: Vec<Vec<f32>> = (0..k)
        .map(|i| values::<P>(n, 11 + i as u64 + n as u64, 0.02, around))
        .collect();
    let weights: Vec<f64> = (0..k).map(|i| 0.3 + 0.2 * i as f64).collect();
    let mut want = models.clone();
    let mut refs: Vec<&mut [f32]> = want.iter_mut().map(|x| &mut x[..]).collect();
    merge::<P>(&mut refs, &weights, around, true, 1e-8).unwrap();
    let setup = Setup::new::<P>(&weights, true, 1e-8);
    let got = staged::<P>(&models, around, &setup, chunk).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&got) == bits(&want[0]),
        "{:?} n = {n}, k = {k}, base {with_base}, chunks of {chunk}",
        P::DTYPE
    );
}

#[test]
fn stages_in_chunks_equal_the_whole_kernel() {
    for (n, chunk) in [
        (1, 1),
        (37, 5),
        (4099, 1000),
        (3 * PIECE + 77, PIECE),
        (300_007, 70_000),
    ] {
        for (k, with_base) in [(2, true), (3, false), (4, true)] {
            check::<F32>(n, k, with_base, chunk);
            check::<Bf16>(n, k, with_base, chunk);
            check::<F16>(n, k, with_base, chunk);
        }
    }
}

#[test]
fn a_vanishing_mean_falls_back_for_two_inputs_and_fails_for_three() {
    let a = vec![1.0f32, 0.0, 2.0, -1.0];
    let b: Vec<f32> = a.iter().map(|x| -x).collect();
    let setup = Setup::new::<F32>(&[1.0, 1.0], true, 1e-8);
    let got = staged::<F32>(&[a.clone(), b.clone()], None, &setup, 3).unwrap();
    let mut want = [a.clone(), b.clone()];
    let (x, y) = want.split_at_mut(1);
    merge::<F32>(&mut [&mut x[0][..], &mut y[0][..]], &[1.0, 1.0], None, true, 1e-8).unwrap();
    assert_eq!(got, want[0]);
    let setup = Setup::new::<F32>(&[1.0, 1.0, 1.0], true, 1e-8);
    let err = staged::<F32>(&[a.clone(), b, vec![0.0; 4]], None, &setup, 3).unwrap_err();
    assert_eq!(err, MultislerpError::ZeroMean.to_string());
}
