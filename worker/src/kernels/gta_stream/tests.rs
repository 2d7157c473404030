//! [`merge_streamed`] against the whole-tensor [`gta::merge`], bit for bit.

use super::*;
use crate::kernels::gta::{self, Consensus, GtaInput};
use crate::kernels::precision::{Bf16, F16, F32};

/// An in-memory input; `raw` additionally offers its values as bf16 bytes.
struct Src {
    values: Vec<f32>,
    raw: Option<Vec<u8>>,
}

impl ChunkSource<()> for Src {
    fn read(&self, start: usize, out: &mut [f32]) -> Result<(), ()> {
        out.copy_from_slice(&self.values[start..start + out.len()]);
        Ok(())
    }

    fn bf16_bytes(&self) -> Option<&[u8]> {
        self.raw.as_deref()
    }
}

fn src(values: Vec<f32>, raw: bool) -> Src {
    let raw = raw.then(|| {
        values
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect()
    });
    Src { values, raw }
}

/// Values of precision `P` (bf16-exact when `bf16`), with zeros of both signs, infinities,
/// NaNs and subnormals sprinkled in when `specials`.
fn values<P: Precision>(n: usize, seed: u64, bf16: bool, specials: bool) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let special = [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40, -3e-39];
            let v = if specials && (s >> 58) == 0 {
                special[(s >> 20) as usize % special.len()]
            } else {
                ((s >> 40) as f32 / 16_777_216.0 - 0.5) * 2f32.powi(((s >> 8) % 9) as i32 - 6)
            };
            // Near-equal inputs give small deltas, as fine-tunes do.
            let v = if i % 3 == 0 { v } else { v * 0.01 + 0.25 };
            let v = P::rnd(v);
            if bf16 { round_bf16(v) } else { v }
        })
        .collect()
}

fn same(a: &[f32], b: &[f32]) -> Result<(), String> {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        // NaN payloads are unspecified in Rust (and in torch); NaN-ness must agree.
        if x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()) {
            return Err(format!(
                "element {i}: {x:e} ({:#x}) vs {y:e} ({:#x})",
                x.to_bits(),
                y.to_bits()
            ));
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
struct Case {
    variant: GtaVariant,
    opts: GtaOptions,
    k: usize,
    n: usize,
    weights: [f64; 3],
    densities: [f64; 3],
    specials: bool,
}

fn check<P: Precision>(case: Case, raw: bool) {
    let Case {
        variant, opts, k, n, ..
    } = case;
    let base = values::<P>(n, 1, raw, case.specials);
    let xs: Vec<Vec<f32>> = (0..k)
        .map(|m| {
            let d = values::<P>(n, 10 + m as u64, raw, case.specials);
            base.iter()
                .zip(d)
                .map(|(&b, d)| if m == 1 { d } else { P::rnd(b + d * 0.05) })
                .collect()
        })
        .collect();
    let xs: Vec<Vec<f32>> = xs
        .into_iter()
        .map(|x| {
            if raw {
                x.iter().map(|&v| round_bf16(v)).collect()
            } else {
                x
            }
        })
        .collect();
    let rng = |m: usize| Some(Mt19937::at_offset(7, (m * n + 13) as u64));
    let mut want = base.clone();
    let mut copies = xs.clone();
    let inputs = copies
        .iter_mut()
        .enumerate()
        .map(|(m, data)| GtaInput {
            data,
            weight: case.weights[m],
            density: case.densities[m],
            gamma: 0.0,
            epsilon: 0.0,
            rng: rng(m),
        })
        .collect();
    gta::merge::<P>(variant, opts, &mut want, inputs).expect("reference merge");

    let base_src = src(base, raw);
    let srcs: Vec<Src> = xs.into_iter().map(|x| src(x, raw)).collect();
    let inputs = srcs
        .iter()
        .enumerate()
        .map(|(m, s)| StreamInput {
            source: s as &dyn ChunkSource<()>,
            weight: case.weights[m],
            density: case.densities[m],
            rng: rng(m),
        })
        .collect();
    let got = std::sync::Mutex::new(vec![f32::NAN; n]);
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let sink = |start: usize, values: &[f32]| {
        got.lock().unwrap()[start..start + values.len()].copy_from_slice(values);
        seen.fetch_add(values.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    };
    assert!(merge_streamed::<P, ()>(variant, opts, n, &base_src, inputs, &sink).is_ok());
    assert_eq!(seen.into_inner(), n, "every element written once");
    if let Err(e) = same(&got.into_inner().unwrap(), &want) {
        panic!("{:?} raw={raw} {case:?}: {e}", P::DTYPE);
    }
}

const DARE_TIES: GtaVariant = GtaVariant {
    consensus: Some(Consensus::Sum),
    sparsifier: Some(Sparsifier::Random),
    default_normalize: true,
    default_rescale: true,
};
const DARE_LINEAR: GtaVariant = GtaVariant {
    consensus: None,
    ..DARE_TIES
};
const TASK_ARITHMETIC: GtaVariant = GtaVariant {
    consensus: None,
    sparsifier: None,
    default_normalize: false,
    default_rescale: false,
};

fn opts(normalize: bool, rescale: bool, lambda: f64) -> GtaOptions {
    GtaOptions {
        normalize,
        rescale,
        lambda,
        rows: crate::kernels::della::RankRows::of_shape(&[1]),
    }
}

fn all_precisions(case: Case) {
    check::<Bf16>(case, false);
    check::<Bf16>(case, true);
    check::<F32>(case, false);
    check::<F32>(case, true);
    check::<F16>(case, false);
}

#[test]
fn streamed_equals_whole_tensor_merge() {
    let base = Case {
        variant: DARE_TIES,
        opts: opts(true, true, 1.0),
        k: 1,
        n: 40_003,
        weights: [0.6, 0.3, -0.2],
        densities: [0.53, 0.3, 1.0],
        specials: false,
    };
    for variant in [DARE_TIES, DARE_LINEAR, TASK_ARITHMETIC] {
        for k in 0..=3 {
            for (normalize, rescale, lambda) in [(true, true, 1.0), (false, true, 0.5), (true, false, 1.5)] {
                all_precisions(Case {
                    variant,
                    k,
                    opts: opts(normalize, rescale, lambda),
                    ..base
                });
            }
        }
    }
}

#[test]
fn streamed_handles_sizes_densities_and_special_values() {
    let base = Case {
        variant: DARE_TIES,
        opts: opts(true, true, 1.0),
        k: 2,
        n: 1,
        weights: [0.5, -0.5, 0.25],
        densities: [0.0, 0.7, 0.5],
        specials: true,
    };
    for n in [0, 1, 5, 17, 100, 4097, 32_768, 32_769] {
        for variant in [DARE_TIES, DARE_LINEAR] {
            all_precisions(Case { variant, n, ..base });
        }
    }
    // Several draw and combine chunks per summation part.
    check::<Bf16>(Case { n: 140_001, ..base }, true);
    check::<Bf16>(
        Case {
            n: 140_001,
            specials: false,
            ..base
        },
        false,
    );
}

#[test]
fn streamed_reports_missing_streams_and_refuses_magnitude() {
    let s = src(vec![1.0; 10], false);
    let input = |rng| StreamInput {
        source: &s as &dyn ChunkSource<()>,
        weight: 1.0,
        density: 0.5,
        rng,
    };
    let sink = |_: usize, _: &[f32]| Ok(());
    let o = opts(true, true, 1.0);
    let r = merge_streamed::<F32, ()>(DARE_TIES, o, 10, &s, vec![input(None)], &sink);
    assert!(matches!(r, Err(StreamError::Gta(GtaError::MissingRng(0)))));
    let ties = GtaVariant {
        sparsifier: Some(Sparsifier::Magnitude),
        ..DARE_TIES
    };
    assert!(!supports(ties));
    let r = merge_streamed::<F32, ()>(ties, o, 10, &s, vec![input(Some(Mt19937::new(1)))], &sink);
    assert!(matches!(r, Err(StreamError::Gta(GtaError::Unsupported))));
}
