//! Folding the statistics of one pass's chunks into what the next pass's chunks receive.
//!
//! Pure and deterministic: the runtime (embedded or the coordinator's scheduler) calls it once
//! every chunk of a pass has reported, with the partials in chunk order.

use super::{InputCombined, Pipeline, pipeline, sum_kind};
use crate::error::KernelError;
use crate::execute::float;
use crate::kernels::WorkDType;
use crate::kernels::gta_stream::rescale_factor;
use crate::kernels::magnitude_select::{self, Histogram};
use crate::kernels::slerp_stream::{coefficients, norm_of_blocks};
use crate::kernels::sparsify::magnitude_keep_count;
use crate::kernels::torch_sum::{DEFAULT_THREADS, torch_parts};
use crate::kernels::torch_sum_partial::{self, SumPartial};
use crate::with_precision;
use shardmerge_proto::v1::{ChunkStats, CombinedStats, MergeTask};
use std::ops::Range;

/// One reported chunk of a pass: its element range and its statistics.
pub type Partial<'a> = (Range<u64>, &'a ChunkStats);

fn bad(reason: impl Into<String>) -> KernelError {
    KernelError::Contract(format!("chunk statistics: {}", reason.into()))
}

/// Folds the statistics of every chunk of `pass` of the tensor of `task` (any chunk task of
/// it), given in chunk order, into the statistics each of the `next` chunks of the following
/// pass receives. `received` is what each chunk of `pass` received, in chunk order (none for
/// pass 1).
pub fn combine(
    task: &MergeTask,
    pass: u32,
    partials: &[Partial<'_>],
    received: Option<&[CombinedStats]>,
    next: usize,
) -> Result<Vec<CombinedStats>, KernelError> {
    let info = task.chunk.as_ref().ok_or_else(|| bad("not a chunk task"))?;
    let n = info.tensor_numel;
    let covered: u64 = partials.iter().map(|(r, _)| r.end - r.start).sum();
    let contiguous = partials.windows(2).all(|w| w[0].0.end == w[1].0.start);
    if covered != n || !contiguous || partials.first().is_some_and(|p| p.0.start != 0) {
        return Err(bad(format!(
            "pass {pass} does not cover the {n} elements of `{}`",
            task.tensor
        )));
    }
    let same = |c: CombinedStats| vec![c; next];
    match (pipeline(task)?, pass) {
        (Pipeline::Slerp, 1) => {
            let (base, other) = slerp_inputs(task)?;
            let blocks = |i: usize| -> Result<Vec<f32>, KernelError> {
                let mut v = Vec::new();
                for (_, s) in partials {
                    v.extend_from_slice(&s.inputs.get(i).ok_or_else(|| bad("missing input"))?.sums);
                }
                Ok(v)
            };
            let (pa, pb) = (blocks(base)?, blocks(other)?);
            let expect = n.div_ceil(crate::kernels::slerp::TORCH_CHUNK as u64) as usize;
            if pa.len() != expect || pb.len() != expect {
                return Err(bad(format!(
                    "expected {expect} block norms, got {} and {}",
                    pa.len(),
                    pb.len()
                )));
            }
            Ok(same(CombinedStats {
                slerp: vec![norm_of_blocks(&pa), norm_of_blocks(&pb)],
                inputs: Vec::new(),
            }))
        }
        (Pipeline::Slerp, 2) => {
            let dots: Vec<f32> = partials.iter().flat_map(|(_, s)| s.dots.iter().copied()).collect();
            let expect = n.div_ceil(crate::kernels::slerp::TORCH_CHUNK as u64) as usize;
            if dots.len() != expect {
                return Err(bad(format!("expected {expect} block dots, got {}", dots.len())));
            }
            let t = float(&task.shared_params, "t")?;
            let (ca, cb) = coefficients(&dots, t);
            Ok(same(CombinedStats {
                slerp: vec![ca, cb],
                inputs: Vec::new(),
            }))
        }
        (Pipeline::RandomRescale, 1) => {
            let dare = |i: usize| -> Result<bool, KernelError> {
                let input = &task.inputs[i];
                Ok(!input.is_base && float(&input.params, "density")? < 1.0)
            };
            let factors = rescale_factors(task, n, partials, dare)?;
            let inputs = factors
                .into_iter()
                .map(|rescale| InputCombined {
                    rescale,
                    ..Default::default()
                })
                .collect();
            Ok(same(CombinedStats {
                slerp: Vec::new(),
                inputs,
            }))
        }
        (Pipeline::Magnitude | Pipeline::MagnitudeRescale, 1) => {
            let mut inputs = Vec::new();
            for (i, input) in task.inputs.iter().enumerate() {
                let mut c = InputCombined::default();
                if let Some(k) = selection_k(task, i, n)? {
                    let hist = merged(partials, i)?;
                    let (high, above) = magnitude_select::select_high(k, &hist).map_err(bad)?;
                    c.high_bin = u32::from(high);
                    c.above = above;
                } else if !input.is_base {
                    set_trivial(&mut c, float(&input.params, "density")?);
                }
                inputs.push(c);
            }
            Ok(same(CombinedStats {
                slerp: Vec::new(),
                inputs,
            }))
        }
        (Pipeline::Magnitude | Pipeline::MagnitudeRescale, 2) => {
            let received = received
                .and_then(<[CombinedStats]>::first)
                .ok_or_else(|| bad("pass 2 without pass 1's selection"))?;
            if next != partials.len() {
                return Err(bad(
                    "the apply partition of a magnitude selection is its statistics partition",
                ));
            }
            let mut out = vec![
                CombinedStats {
                    slerp: Vec::new(),
                    inputs: received.inputs.clone(),
                };
                next
            ];
            for i in 0..task.inputs.len() {
                let Some(k) = selection_k(task, i, n)? else { continue };
                let r = received.inputs.get(i).ok_or_else(|| bad("missing input"))?;
                let high = u16::try_from(r.high_bin).map_err(|_| bad("high bin out of range"))?;
                let hist = merged(partials, i)?;
                let (threshold, keep) = magnitude_select::select_low(k, high, r.above, &hist).map_err(bad)?;
                let low = threshold & 0xFFFF;
                let mut ties = Vec::with_capacity(partials.len());
                for (_, s) in partials {
                    let h = histogram(s, i)?;
                    ties.push(h.bins.iter().position(|&b| b == low).map_or(0, |j| h.counts[j]));
                }
                for (c, keep_here) in out.iter_mut().zip(magnitude_select::ties_per_chunk(keep, &ties)) {
                    c.inputs[i].threshold = threshold;
                    c.inputs[i].keep_ties = keep_here;
                }
            }
            Ok(out)
        }
        (Pipeline::MagnitudeRescale, 3) => {
            let received = received.ok_or_else(|| bad("pass 3 without the selection"))?;
            if received.len() != partials.len() || next != partials.len() {
                return Err(bad(
                    "the apply partition of a magnitude selection is its statistics partition",
                ));
            }
            let selects = |i: usize| Ok(selection_k(task, i, n)?.is_some());
            let factors = rescale_factors(task, n, partials, selects)?;
            let mut out = received.to_vec();
            for c in &mut out {
                if c.inputs.len() != factors.len() {
                    return Err(bad("missing input"));
                }
                for (input, f) in c.inputs.iter_mut().zip(&factors) {
                    input.rescale = *f;
                }
            }
            Ok(out)
        }
        (p, pass) => Err(bad(format!("{p:?} has no statistics pass {pass}"))),
    }
}

/// Indices of SLERP's base and other input.
pub(crate) fn slerp_inputs(task: &MergeTask) -> Result<(usize, usize), KernelError> {
    let b = task
        .inputs
        .iter()
        .position(|i| i.is_base)
        .ok_or_else(|| KernelError::Contract("slerp needs a base input".into()))?;
    if task.inputs.len() != 2 {
        let msg = format!("slerp needs exactly 2 inputs, got {}", task.inputs.len());
        return Err(KernelError::Contract(msg));
    }
    Ok((b, 1 - b))
}

/// The number of elements the magnitude selection keeps for input `i`, when it selects (a
/// non-base input with `0 < density < 1`).
pub(crate) fn selection_k(task: &MergeTask, i: usize, n: u64) -> Result<Option<u64>, KernelError> {
    let input = &task.inputs[i];
    if input.is_base {
        return Ok(None);
    }
    let density = float(&input.params, "density")?;
    if density <= 0.0 || density >= 1.0 || n == 0 {
        return Ok(None);
    }
    Ok(Some(magnitude_keep_count(n as usize, density) as u64))
}

/// Marks a non-selecting magnitude input as keeping nothing or everything.
pub(crate) fn set_trivial(c: &mut InputCombined, density: f64) {
    if density <= 0.0 {
        c.keep_none = true;
    } else {
        c.keep_all = true;
    }
}

fn histogram(s: &ChunkStats, i: usize) -> Result<Histogram, KernelError> {
    let input = s.inputs.get(i).ok_or_else(|| bad("missing input"))?;
    if input.bins.len() != input.counts.len() {
        return Err(bad("histogram bins and counts differ in length"));
    }
    Ok(Histogram {
        bins: input.bins.clone(),
        counts: input.counts.clone(),
    })
}

fn merged(partials: &[Partial<'_>], i: usize) -> Result<Histogram, KernelError> {
    let hists = partials
        .iter()
        .map(|(_, s)| histogram(s, i))
        .collect::<Result<Vec<_>, _>>()?;
    magnitude_select::merge(&hists).map_err(bad)
}

/// The L1 rescale factor of every input that `rescales` (by index), from the cascade
/// partials of `|delta|` and of the masked `|delta|` of every chunk: DARE's after pass 1,
/// TIES' after pass 3. The chunks lie inside torch's summation parts.
fn rescale_factors(
    task: &MergeTask,
    n: u64,
    partials: &[Partial<'_>],
    rescales: impl Fn(usize) -> Result<bool, KernelError>,
) -> Result<Vec<Option<f32>>, KernelError> {
    let kind = sum_kind(task.working_dtype());
    let work = WorkDType::try_from(task.working_dtype())?;
    let parts = torch_parts(n as usize, DEFAULT_THREADS);
    let mut factors = Vec::new();
    for i in 0..task.inputs.len() {
        if !rescales(i)? {
            factors.push(None);
            continue;
        }
        let mut before = Vec::new();
        let mut after = Vec::new();
        for part in &parts {
            let of_part = |pick: fn(&shardmerge_proto::v1::InputStats) -> &Vec<f32>| {
                partials
                    .iter()
                    .filter(|(r, _)| r.start >= part.start as u64 && r.end <= part.end as u64)
                    .map(|(_, s)| {
                        let input = s.inputs.get(i).ok_or_else(|| bad("missing input"))?;
                        SumPartial::from_floats(pick(input)).map_err(bad)
                    })
                    .collect::<Result<Vec<_>, KernelError>>()
            };
            let sum = |ps: Vec<SumPartial>| torch_sum_partial::combine(kind, part.len(), &ps).map_err(bad);
            before.push(sum(of_part(|s| &s.sums)?)?);
            after.push(sum(of_part(|s| &s.masked_sums)?)?);
        }
        factors.push(with_precision!(work, P => rescale_factor::<P>(n as usize, &before, &after)));
    }
    Ok(factors)
}
