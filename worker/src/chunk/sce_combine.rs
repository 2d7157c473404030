//! sce's statistics passes folded over a tensor's chunks (see
//! [`crate::kernels::sce_chunk`]): the top-`K` variance selection, carried in `inputs[0]`,
//! then the mean squares' weights, carried as `coefficients`.

use super::combine::Partial;
use super::select::{Side, histogram};
use crate::error::KernelError;
use crate::execute::float;
use crate::kernels::WorkDType;
use crate::kernels::magnitude_select::{self, Histogram};
use crate::kernels::precision::Precision;
use crate::kernels::sce;
use crate::kernels::torch_sum::{torch_combine_f32, torch_parts};
use crate::kernels::torch_sum_partial::{self, SumPartial};
use crate::kernels::torch_sum_stream::SumKind;
use crate::with_precision;
use shardmerge_proto::v1::{CombinedStats, InputCombined, MergeTask};

fn bad(reason: impl Into<String>) -> KernelError {
    KernelError::Contract(format!("sce chunk statistics: {}", reason.into()))
}

/// The chunks' variance histograms (in `inputs[0]`).
fn histograms(partials: &[Partial<'_>]) -> Result<Vec<Histogram>, KernelError> {
    partials.iter().map(|(_, s)| histogram(s, 0, Side::Lower)).collect()
}

/// Folds pass `pass` of sce over the `n` elements of `task`'s tensor (see
/// [`super::combine()`]).
pub(super) fn combine(
    task: &MergeTask,
    pass: u32,
    n: u64,
    partials: &[Partial<'_>],
    received: Option<&[CombinedStats]>,
    next: usize,
) -> Result<Vec<CombinedStats>, KernelError> {
    if pass > 1 && next != partials.len() {
        return Err(bad("the apply partition of sce is its statistics partition"));
    }
    match pass {
        1 => {
            let topk = float(&task.shared_params, "select_topk")?;
            let mut c = InputCombined::default();
            // As the whole kernel: no selection unless `select_topk < 1` (so also for NaN).
            if topk.is_nan() || topk >= 1.0 {
                c.keep_all = true;
            } else if topk <= 0.0 {
                c.keep_none = true;
            } else {
                let hist = magnitude_select::merge(&histograms(partials)?).map_err(bad)?;
                let zeros: u64 = partials
                    .iter()
                    .filter_map(|(_, s)| s.inputs.first())
                    .map(|i| i.zeros)
                    .sum();
                let nonzero = n
                    .checked_sub(zeros)
                    .ok_or_else(|| bad("more zero variances than elements"))?;
                let k = sce::selected_count(nonzero as usize, topk) as u64;
                if k == 0 {
                    c.keep_none = true;
                } else {
                    let (high, above) = magnitude_select::select_high(k, &hist).map_err(bad)?;
                    c.high_bin = u32::from(high);
                    c.above = above;
                    c.selected = k;
                }
            }
            Ok(vec![
                CombinedStats {
                    inputs: vec![c],
                    ..Default::default()
                };
                next
            ])
        }
        2 => {
            let r = received
                .and_then(<[CombinedStats]>::first)
                .and_then(|c| c.inputs.first())
                .ok_or_else(|| bad("pass 2 without pass 1's selection"))?;
            let mut out = vec![
                CombinedStats {
                    inputs: vec![*r],
                    ..Default::default()
                };
                next
            ];
            if r.keep_all || r.keep_none {
                return Ok(out);
            }
            let high = u16::try_from(r.high_bin).map_err(|_| bad("high bin out of range"))?;
            let hists = histograms(partials)?;
            let merged = magnitude_select::merge(&hists).map_err(bad)?;
            let (threshold, keep) = magnitude_select::select_low(r.selected, high, r.above, &merged).map_err(bad)?;
            let ties: Vec<u64> = hists.iter().map(|h| h.count((threshold & 0xFFFF) as u16)).collect();
            for (c, keep_here) in out.iter_mut().zip(magnitude_select::ties_per_chunk(keep, &ties)) {
                c.inputs[0].threshold = threshold;
                c.inputs[0].keep_ties = keep_here;
            }
            Ok(out)
        }
        3 => {
            let received = received.ok_or_else(|| bad("pass 3 without the selection"))?;
            if received.len() != partials.len() {
                return Err(bad("pass 3 did not receive one selection per chunk"));
            }
            let others: Vec<usize> = (0..task.inputs.len()).filter(|&i| !task.inputs[i].is_base).collect();
            let threads = sce::mean_square_threads(others.len());
            let parts = torch_parts(n as usize, threads);
            let mut squares = Vec::new();
            for &i in &others {
                let mut part_sums = Vec::new();
                for part in &parts {
                    let ps = partials
                        .iter()
                        .filter(|(r, _)| r.start >= part.start as u64 && r.end <= part.end as u64)
                        .map(|(_, s)| {
                            let input = s.inputs.get(i).ok_or_else(|| bad("missing input"))?;
                            SumPartial::from_floats(&input.sums).map_err(bad)
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    part_sums.push(torch_sum_partial::combine(SumKind::F32, part.len(), &ps).map_err(bad)?);
                }
                squares.push(torch_combine_f32(n as usize, &part_sums, threads) / n as f32);
            }
            let work = WorkDType::try_from(task.working_dtype())?;
            let weights = with_precision!(work, P => {
                sce::weights::<P>(squares.into_iter().map(P::rnd).collect())
            });
            let mut out = received.to_vec();
            for c in &mut out {
                c.coefficients = weights.clone();
            }
            Ok(out)
        }
        _ => Err(bad(format!("sce has no statistics pass {pass}"))),
    }
}
